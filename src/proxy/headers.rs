//! The request fields pingora's HTTP/2 path edits in its `RequestHeader`: the forwarding
//! plan of `proxy::forwarding` (the same fields the HTTP/1 engine writes), and the sticky
//! cookie, which is removed before the request goes upstream.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{ErrorType, OrErr, Result};

use crate::config::HeaderSet;
use crate::sticky::cookie;

use super::forwarding::{self, Forwarding};

/// Every X-Forwarded-For line as one list. A proxy in front may add a line of its own
/// instead of extending the client's (HAProxy's `option forwardfor` does): reading only
/// the first line would take a client-written address for the client's.
pub fn forwarded_for(headers: &HeaderMap) -> Option<Cow<'_, [u8]>> {
    let mut lines = headers.get_all("x-forwarded-for").iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    Some(Cow::Owned(joined))
}

/// The forwarding fields a client sent, copied out of the header map they are replaced in.
struct SentCopy {
    forwarded_for: Vec<Vec<u8>>,
    forwarded: Vec<Vec<u8>>,
    proto: bool,
    host: bool,
}

impl SentCopy {
    fn of(headers: &HeaderMap) -> SentCopy {
        let all = |name: &str| headers.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect();
        SentCopy {
            forwarded_for: all("x-forwarded-for"),
            forwarded: all("forwarded"),
            proto: headers.contains_key("x-forwarded-proto"),
            host: headers.contains_key("x-forwarded-host"),
        }
    }
}

impl forwarding::Sent for SentCopy {
    fn forwarded_for(&self) -> impl Iterator<Item = &[u8]> {
        self.forwarded_for.iter().map(Vec::as_slice)
    }
    fn forwarded(&self) -> impl Iterator<Item = &[u8]> {
        self.forwarded.iter().map(Vec::as_slice)
    }
    fn has_proto(&self) -> bool {
        self.proto
    }
    fn has_host(&self) -> bool {
        self.host
    }
}

/// The plan's fields, inserted into pingora's request header.
struct Inserted<'r> {
    req: &'r mut RequestHeader,
    failed: Option<Box<pingora::Error>>,
}

impl forwarding::Fields for Inserted<'_> {
    fn field(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        let mut v = Vec::with_capacity(64);
        value(&mut v);
        let inserted = HeaderValue::from_bytes(&v)
            .or_err(ErrorType::InvalidHTTPHeader, "forwarding field value")
            .and_then(|v| self.req.insert_header(name, v));
        if let Err(e) = inserted {
            self.failed.get_or_insert(e);
        }
    }
}

/// Set the forwarding fields on the upstream request (`host`: the request's host as
/// received) and remove the client fields that do not pass.
pub fn set_forwarded(
    req: &mut RequestHeader,
    fwd: &Forwarding<'_>,
    host: Option<&str>,
    strip: &HeaderSet,
) -> Result<()> {
    let sent = SentCopy::of(&req.headers);
    let gone: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|k| !forwarding::passes(k.as_str().as_bytes(), fwd.peer_trusted, strip))
        .cloned()
        .collect();
    for name in gone {
        req.remove_header(&name);
    }
    let mut out = Inserted { req, failed: None };
    forwarding::write_fields(fwd, host.map(str::as_bytes), &sent, &mut out);
    out.failed.map_or(Ok(()), Err)
}

/// The sticky cookie's value in the request, if any.
pub fn sticky_cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all("cookie")
        .iter()
        .find_map(|v| cookie::find(v.as_bytes(), name))
}

/// Remove the sticky cookie from every Cookie header (HAProxy's `indirect`).
pub fn strip_sticky_cookie(req: &mut RequestHeader, name: &str) -> Result<()> {
    let values: Vec<Vec<u8>> = req
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    if !values.iter().any(|v| cookie::find(v, name).is_some()) {
        return Ok(());
    }
    req.remove_header("cookie");
    for v in values {
        if let Some(kept) = cookie::strip(&v, name) {
            req.append_header("cookie", kept)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn strip() -> HeaderSet {
        HeaderSet::new(crate::config::STRIP_FROM_UNTRUSTED.iter().map(|n| n.as_bytes().into()))
    }

    fn fwd(peer: &str, text: &'static str, client: &str, trusted: bool, tls: bool) -> Forwarding<'static> {
        Forwarding {
            peer: peer.parse::<IpAddr>().ok(),
            peer_text: text.as_bytes(),
            client: client.parse::<IpAddr>().ok(),
            peer_trusted: trusted,
            tls,
        }
    }

    #[test]
    fn every_xff_line_counts_when_a_trusted_proxy_adds_its_own() {
        // The client wrote the first line; the trusted proxy added the second.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.append_header("x-forwarded-for", "1.2.3.4").unwrap();
        let xff = forwarded_for(&req.headers);
        assert_eq!(xff.as_deref(), Some(&b"6.6.6.6, 1.2.3.4"[..]));
        let f = fwd("10.0.0.2", "10.0.0.2", "1.2.3.4", true, false);
        set_forwarded(&mut req, &f, None, &strip()).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "6.6.6.6, 1.2.3.4, 10.0.0.2");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(req.headers["x-real-ip"], "1.2.3.4");
    }

    #[test]
    fn forwarded_headers_replace_client_values_from_untrusted_peers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in [
            ("host", "example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "gopher"),
            ("x-client-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x_forwarded_for", "6.6.6.6"),
            ("accept", "*/*"),
        ] {
            req.insert_header(k, v).unwrap();
        }
        let f = fwd("127.0.0.9", "127.0.0.9", "127.0.0.9", false, true);
        set_forwarded(&mut req, &f, Some("example.com"), &strip()).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "127.0.0.9");
        assert_eq!(req.headers["x-real-ip"], "127.0.0.9");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "example.com");
        assert_eq!(
            req.headers["forwarded"],
            "for=127.0.0.9;proto=https;host=\"example.com\""
        );
        for gone in ["x-client-ip", "x-original-url", "x_forwarded_for"] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(req.headers["accept"], "*/*");
    }

    #[test]
    fn a_trusted_proxy_keeps_its_proto_and_host() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        let f = fwd("10.0.0.2", "10.0.0.2", "1.2.3.4", true, false);
        set_forwarded(&mut req, &f, Some("h2.example"), &strip()).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(req.headers["x-forwarded-proto"], "https", "kept from the trusted proxy");
        assert_eq!(req.headers["x-forwarded-host"], "h2.example");
    }

    #[test]
    fn sticky_cookie_is_found_and_stripped() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("cookie", "a=1; EDGEPIN=abc").unwrap();
        req.append_header("cookie", "b=2").unwrap();
        assert_eq!(sticky_cookie(&req, "EDGEPIN"), Some(&b"abc"[..]));
        strip_sticky_cookie(&mut req, "EDGEPIN").unwrap();
        let all: Vec<&str> = req
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all, vec!["a=1", "b=2"]);
    }
}
