//! An HTTP/2 request as the HTTP/1.1 request a server receives: the request line from
//! the pseudo-headers, `Host` from `:authority`, the client's fields minus what is this
//! hop's, `cookie` fields joined into one line with `"; "` (RFC 9113 §8.2.3: HTTP/2 may
//! split them, HTTP/1.1 must not get them split) minus the sticky cookie, how the body
//! is framed, and edgepin's forwarding headers, written straight into a buffer. An
//! extended CONNECT (RFC 8441, `:protocol websocket`) becomes a WebSocket upgrade with a
//! key edgepin chose. Also what the engine reads of the request before routing it.
//! Nothing here does I/O.

use std::borrow::Cow;
use std::io::Write;

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;

use crate::config::HeaderSet;
use crate::proxy::forwarding::{self, Forwarding, Lines};
use crate::sticky::cookie;

/// How the request's body reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None (END_STREAM on the headers).
    None,
    /// As many bytes as the client's `content-length` says.
    Length(u64),
    /// Of unknown length: chunked upstream.
    Chunked,
}

/// The body the request declares: `end_stream` is END_STREAM on its headers.
pub fn body(parts: &Parts, end_stream: bool) -> Body {
    if end_stream {
        return Body::None;
    }
    match declared_length(&parts.headers) {
        Some(n) => Body::Length(n),
        None => Body::Chunked,
    }
}

/// `content-length`, when the client sent one (the h2 crate holds the stream to it).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The request's size as limits count it (`limits.max_header_bytes`): as its HTTP/1.1
/// head would be, request line and fields.
pub fn head_size(parts: &Parts) -> usize {
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let authority = parts.uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = parts.method.as_str().len() + target + 12 + authority;
    parts
        .headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The request's authority: `:authority`, else a `host` field.
pub fn authority(parts: &Parts) -> Option<&[u8]> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => parts.headers.get(header::HOST).map(|h| h.as_bytes()),
    }
}

/// Every `cookie` field as one value (RFC 9113 §8.2.3), borrowed when there is one.
pub fn cookies(headers: &HeaderMap) -> Option<Cow<'_, [u8]>> {
    let mut all = headers.get_all(header::COOKIE).iter();
    let first = all.next()?;
    let Some(second) = all.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(all) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    Some(Cow::Owned(joined))
}

/// Every X-Forwarded-For field as one list (a trusted proxy may have added a line).
pub fn forwarded_for(headers: &HeaderMap) -> Vec<u8> {
    let mut list = Vec::new();
    for v in headers.get_all(X_FORWARDED_FOR) {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(v);
        }
    }
    list
}

/// What else shapes the upstream head.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    pub body: Body,
    /// The sticky cookie's name, removed from Cookie.
    pub strip_cookie: Option<&'a str>,
    /// The server's address: the Host of a request without an authority.
    pub server: std::net::SocketAddr,
    /// An extended CONNECT: the `Sec-WebSocket-Key` of the upgrade edgepin asks for.
    pub websocket_key: Option<&'a str>,
    /// `strip_from_untrusted`.
    pub strip: &'a HeaderSet,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A field the upstream head never copies from the client: edgepin writes it itself
/// (Host, Cookie, the body's framing, the upgrade) or it is this hop's only.
fn own_or_hop(name: &HeaderName) -> bool {
    use header::*;
    [
        HOST,
        COOKIE,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        UPGRADE,
        TE,
        TRAILER,
        EXPECT,
        SEC_WEBSOCKET_KEY,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
    .contains(name)
}

/// The forwarding fields an HTTP/2 request carries, as `forwarding`'s plan reads them.
struct SentFields<'h>(&'h HeaderMap);

impl forwarding::Sent for SentFields<'_> {
    fn forwarded_for(&self) -> impl Iterator<Item = &[u8]> {
        self.0.get_all(X_FORWARDED_FOR).iter().map(|v| v.as_bytes())
    }
    fn forwarded(&self) -> impl Iterator<Item = &[u8]> {
        self.0.get_all(header::FORWARDED).iter().map(|v| v.as_bytes())
    }
    fn has_proto(&self) -> bool {
        self.0.contains_key(X_FORWARDED_PROTO)
    }
    fn has_host(&self) -> bool {
        self.0.contains_key(X_FORWARDED_HOST)
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Write the HTTP/1.1 request head for `parts` to `out`.
pub fn write_head(out: &mut Vec<u8>, parts: &Parts, fwd: &Forwarding<'_>, up: &Upstream<'_>) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if up.websocket_key.is_some() {
        out.extend_from_slice(b"GET ");
    } else {
        out.extend_from_slice(parts.method.as_str().as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = authority(parts);
    match host {
        Some(h) => line(out, b"host", h),
        None => {
            let _ = write!(out, "host: {}\r\n", up.server);
        }
    }
    for (name, value) in &parts.headers {
        if own_or_hop(name) || !forwarding::passes(name.as_str().as_bytes(), fwd.peer_trusted, up.strip) {
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(all) = cookies(&parts.headers) {
        match up.strip_cookie.filter(|name| cookie::find(&all, name).is_some()) {
            Some(name) => {
                if let Some(kept) = cookie::strip(&all, name) {
                    line(out, b"cookie", &kept);
                }
            }
            None => line(out, b"cookie", &all),
        }
    }
    forwarding::write_fields(fwd, host, &SentFields(&parts.headers), &mut Lines(out));
    match up.body {
        Body::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Body::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Body::None => {}
    }
    if let Some(key) = up.websocket_key {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
        line(out, b"sec-websocket-key", key.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, fields: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    static STRIP: std::sync::LazyLock<HeaderSet> = std::sync::LazyLock::new(|| {
        HeaderSet::new(crate::config::STRIP_FROM_UNTRUSTED.iter().map(|n| n.as_bytes().into()))
    });

    fn untrusted() -> Forwarding<'static> {
        Forwarding {
            peer: "127.0.0.9".parse().ok(),
            peer_text: b"127.0.0.9",
            client: "127.0.0.9".parse().ok(),
            peer_trusted: false,
            tls: true,
        }
    }

    fn upstream(body: Body) -> Upstream<'static> {
        Upstream {
            body,
            strip_cookie: Some("EDGEPIN"),
            server: "127.0.0.1:3001".parse().unwrap(),
            websocket_key: None,
            strip: &STRIP,
        }
    }

    fn write(p: &Parts, up: Upstream<'_>) -> String {
        let mut out = Vec::new();
        write_head(&mut out, p, &untrusted(), &up);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn split_cookies_reach_the_server_as_one_line_without_the_sticky_one() {
        let p = parts(
            "https://app.example/a?b=1",
            &[("cookie", "a=1"), ("cookie", "EDGEPIN=w1"), ("cookie", "b=2")],
        );
        let out = write(&p, upstream(Body::None));
        assert!(out.starts_with("GET /a?b=1 HTTP/1.1\r\nhost: app.example\r\n"), "{out}");
        assert_eq!(out.matches("cookie").count(), 1, "{out}");
        assert!(out.contains("cookie: a=1; b=2\r\n"), "{out}");
        let p = parts("https://h/", &[("cookie", "a=1"), ("cookie", "b=2")]);
        assert!(write(&p, upstream(Body::None)).contains("cookie: a=1; b=2\r\n"));
    }

    #[test]
    fn client_forwarding_headers_are_replaced_and_the_body_framed() {
        let p = parts(
            "https://app.example/up",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
                ("cf-connecting-ip", "6.6.6.6"),
                ("x-forwarded-proto", "gopher"),
                ("x_forwarded_for", "6.6.6.6"),
                ("te", "trailers"),
                ("accept", "*/*"),
            ],
        );
        let out = write(&p, upstream(Body::Chunked));
        assert!(
            !out.contains("6.6.6.6") && !out.contains("gopher") && !out.contains("te:"),
            "{out}"
        );
        assert!(out.contains("accept: */*\r\n"), "{out}");
        assert!(
            out.contains("x-forwarded-for: 127.0.0.9\r\nx-real-ip: 127.0.0.9\r\n"),
            "{out}"
        );
        assert!(
            out.contains("forwarded: for=127.0.0.9;proto=https;host=\"app.example\"\r\n"),
            "{out}"
        );
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        let out = write(&p, upstream(Body::Length(12)));
        assert!(out.ends_with("content-length: 12\r\n\r\n"), "{out}");
    }

    #[test]
    fn fields_some_servers_trust_are_stripped_from_untrusted_clients_as_over_http_1() {
        // `strip_from_untrusted` (README "Security and limits") applies to HTTP/2 too:
        // before, only a fixed list of three client-address fields was dropped here.
        let p = parts(
            "https://app.example/a",
            &[
                ("x-original-url", "/admin"),
                ("x-rewrite-url", "/admin"),
                ("x-cluster-client-ip", "6.6.6.6"),
                ("fastly-client-ip", "6.6.6.6"),
                ("true-client-ip", "6.6.6.6"),
                ("x-custom", "kept"),
            ],
        );
        let out = write(&p, upstream(Body::None));
        assert!(!out.contains("/admin") && !out.contains("6.6.6.6"), "{out}");
        assert!(out.contains("x-custom: kept\r\n"), "{out}");
        // The list is the config's: an operator can strip another field, or keep one.
        let strip = HeaderSet::new([b"x-custom".as_slice().into()]);
        let up = Upstream {
            strip: &strip,
            ..upstream(Body::None)
        };
        let out = write(&p, up);
        assert!(
            out.contains("x-original-url: /admin\r\n") && !out.contains("x-custom"),
            "{out}"
        );
    }

    #[test]
    fn an_extended_connect_becomes_a_websocket_upgrade_with_our_key() {
        let mut p = parts(
            "https://app.example/socket.io/?EIO=4&transport=websocket",
            &[("sec-websocket-version", "13"), ("sec-websocket-key", "theirs")],
        );
        p.method = http::Method::CONNECT;
        let up = Upstream {
            websocket_key: Some("ours=="),
            ..upstream(Body::None)
        };
        let out = write(&p, up);
        assert!(
            out.starts_with("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"),
            "{out}"
        );
        assert!(
            out.contains("sec-websocket-version: 13\r\n") && !out.contains("theirs"),
            "{out}"
        );
        assert!(
            out.ends_with("connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: ours==\r\n\r\n"),
            "{out}"
        );
    }

    #[test]
    fn the_head_size_counts_fields_as_http_1_would() {
        let p = parts("https://h/abc", &[("x-a", "1234")]);
        assert_eq!(head_size(&p), 3 + 4 + 12 + 1 + 8 + (3 + 4 + 4));
    }
}
