//! Request headers the proxy owns: the client address (trusting X-Forwarded-For only
//! from configured proxies), X-Forwarded-*, X-Real-IP, Forwarded, and the sticky cookie,
//! which is removed before the request goes upstream. The HTTP/2 engine edits pingora's
//! `RequestHeader` with these; the HTTP/1 engine writes the same headers itself
//! (`h1::request`) and shares [`forwarded_element`].

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{ErrorType, OrErr, Result};

use crate::config::Network;
use crate::sticky::cookie;

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

/// The client address: the TCP peer, unless the peer is a trusted proxy, then the
/// rightmost X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, xff: Option<&[u8]>, trusted: &[Network]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| Network::any_contains(trusted, ip);
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(list) = xff.and_then(|x| std::str::from_utf8(x).ok()) else {
        return Some(peer);
    };
    for entry in list.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(peer)
}

/// Set the forwarding headers on the upstream request. Client-sent values are replaced,
/// unless the peer is a trusted proxy, whose X-Forwarded-For is extended.
///
/// Runs on every request: the peer's address is formatted once (it is X-Forwarded-For and
/// usually X-Real-IP), and X-Forwarded-Host reuses the received Host value without a copy.
pub fn set_forwarded(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    tls: bool,
    host: Option<&str>,
) -> Result<()> {
    let peer_value = peer.map(ip_value).transpose()?;
    let extended = match (peer_trusted, peer) {
        (true, Some(peer)) => forwarded_for(&req.headers).and_then(|list| {
            std::str::from_utf8(&list)
                .ok()
                .map(|existing| format!("{existing}, {peer}"))
        }),
        _ => None,
    };
    match (extended, &peer_value) {
        (Some(list), _) => req.insert_header("x-forwarded-for", list)?,
        (None, Some(v)) => req.insert_header("x-forwarded-for", v.clone())?,
        (None, None) => {
            req.remove_header("x-forwarded-for");
        }
    }
    match (client, &peer_value) {
        (Some(ip), Some(v)) if Some(ip) == peer => req.insert_header("x-real-ip", v.clone())?,
        (Some(ip), _) => req.insert_header("x-real-ip", ip_value(ip)?)?,
        (None, _) => {
            req.remove_header("x-real-ip");
        }
    }
    if !(peer_trusted && req.headers.contains_key("x-forwarded-proto")) {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        req.insert_header("x-forwarded-proto", proto)?;
    }
    match host {
        Some(h) if !(peer_trusted && req.headers.contains_key("x-forwarded-host")) => {
            match req.headers.get("host").filter(|v| v.to_str().is_ok()).cloned() {
                Some(original) => req.insert_header("x-forwarded-host", original)?,
                None => req.insert_header("x-forwarded-host", h.to_string())?,
            }
        }
        Some(_) => {}
        None => {
            req.remove_header("x-forwarded-host");
        }
    }
    // Forwarded (RFC 7239): a trusted proxy's elements, then this hop's.
    let mut forwarded = Vec::with_capacity(64);
    if peer_trusted {
        for v in req.headers.get_all("forwarded") {
            forwarded.extend_from_slice(v.as_bytes().trim_ascii());
            forwarded.extend_from_slice(b", ");
        }
    } else {
        for claim in CLAIMS {
            req.remove_header(claim);
        }
    }
    let peer_text = peer.map(|p| p.to_string()).unwrap_or_default();
    let proto: &[u8] = if tls { b"https" } else { b"http" };
    forwarded_element(
        &mut forwarded,
        peer,
        peer_text.as_bytes(),
        proto,
        host.map(str::as_bytes),
    );
    req.insert_header(
        "forwarded",
        HeaderValue::from_bytes(&forwarded).or_err(ErrorType::InvalidHTTPHeader, "Forwarded value")?,
    )?;
    // Names with `_` are dropped, as nginx does: never read as their `-` twins.
    let underscored: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in underscored {
        req.remove_header(&name);
    }
    Ok(())
}

/// `for=…;proto=…;host=…` for this hop (RFC 7239 §4; IPv6 and hosts with a port quoted).
pub fn forwarded_element(out: &mut Vec<u8>, peer: Option<IpAddr>, peer_text: &[u8], proto: &[u8], host: Option<&[u8]>) {
    match peer {
        Some(IpAddr::V6(_)) => {
            out.extend_from_slice(b"for=\"[");
            out.extend_from_slice(peer_text);
            out.extend_from_slice(b"]\"");
        }
        Some(_) => {
            out.extend_from_slice(b"for=");
            out.extend_from_slice(peer_text);
        }
        None => out.extend_from_slice(b"for=unknown"),
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto);
    // A host value is a token or a quoted string; anything else is left out.
    if let Some(h) =
        host.filter(|h| !h.is_empty() && h.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.push(b'"');
    }
}

/// Client-sent headers that claim an address, kept only from trusted proxies.
const CLAIMS: [&str; 3] = ["x-client-ip", "true-client-ip", "cf-connecting-ip"];

/// An address as a header value.
fn ip_value(ip: IpAddr) -> Result<HeaderValue> {
    HeaderValue::try_from(ip.to_string()).or_err(ErrorType::InvalidHTTPHeader, "address as a header value")
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

    fn net(s: &str) -> Network {
        let (a, p) = s.split_once('/').unwrap();
        Network {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    #[test]
    fn xff_is_trusted_only_from_trusted_peers() {
        let peer: IpAddr = "127.0.0.5".parse().unwrap();
        let xff = Some(&b"1.2.3.4, 10.0.0.2"[..]);
        assert_eq!(client_ip(Some(peer), xff, &[]), Some(peer), "not trusted: the peer");
        let trusted = [net("127.0.0.0/8"), net("10.0.0.0/8")];
        assert_eq!(client_ip(Some(peer), xff, &trusted), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(client_ip(Some(peer), Some(b"garbage"), &trusted), Some(peer));
    }

    #[test]
    fn every_xff_line_counts_when_a_trusted_proxy_adds_its_own() {
        // The client wrote the first line; the trusted proxy added the second.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.append_header("x-forwarded-for", "1.2.3.4").unwrap();
        let trusted = [net("10.0.0.0/8")];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let xff = forwarded_for(&req.headers);
        assert_eq!(xff.as_deref(), Some(&b"6.6.6.6, 1.2.3.4"[..]));
        let client = client_ip(Some(peer), xff.as_deref(), &trusted);
        assert_eq!(client, Some("1.2.3.4".parse().unwrap()), "the address the proxy saw");
        set_forwarded(&mut req, client, Some(peer), true, false, None).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "6.6.6.6, 1.2.3.4, 10.0.0.2");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(req.headers["x-real-ip"], "1.2.3.4");
    }

    #[test]
    fn forwarded_headers_replace_client_values() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "example.com").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("x-forwarded-proto", "gopher").unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        set_forwarded(&mut req, Some(ip), Some(ip), false, true, Some("example.com")).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "127.0.0.9");
        assert_eq!(req.headers["x-real-ip"], "127.0.0.9");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "example.com");
    }

    #[test]
    fn a_trusted_proxy_extends_the_forwarding_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let client: IpAddr = "1.2.3.4".parse().unwrap();
        set_forwarded(&mut req, Some(client), Some(peer), true, false, Some("h2.example")).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(req.headers["x-real-ip"], "1.2.3.4");
        assert_eq!(req.headers["x-forwarded-proto"], "https", "kept from the trusted proxy");
        assert_eq!(
            req.headers["x-forwarded-host"], "h2.example",
            "no Host header: the authority"
        );
        set_forwarded(&mut req, None, None, false, false, None).unwrap();
        for gone in ["x-forwarded-for", "x-real-ip", "x-forwarded-host"] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
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
