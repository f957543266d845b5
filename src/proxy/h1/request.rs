//! Writing the request head a server receives, straight into the upstream write buffer:
//! the client's head minus what is this hop's (Connection, Keep-Alive, a non-WebSocket
//! Upgrade, headers named in Connection, names with `_`), minus the sticky cookie, with
//! the forwarding fields of `proxy::forwarding`'s plan (which client fields pass, and
//! edgepin's own).

use std::io::Write;

use crate::config::HeaderSet;
use crate::proxy::forwarding::{self, Forwarding};
use crate::sticky::cookie;

use super::head::{Head, Kind};

/// What else shapes the upstream head.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// The sticky cookie's name, removed from Cookie.
    pub strip_cookie: Option<&'a str>,
    /// The server's address: the Host of a request that has none (HTTP/1.0 may omit it;
    /// what goes upstream is HTTP/1.1, which must have one).
    pub server: Option<std::net::SocketAddr>,
    /// `strip_from_untrusted`.
    pub strip: &'a HeaderSet,
}

/// Write the upstream request head for `head` to `out`.
pub fn write_head(out: &mut Vec<u8>, head: &Head, fwd: &Forwarding<'_>, up: Upstream<'_>) {
    out.extend_from_slice(head.method_str().as_bytes());
    out.push(b' ');
    let origin = head.origin_str();
    if !origin.starts_with('/') && origin != "*" {
        // `http://host` or `http://host?q` in absolute form: the path is `/`.
        out.push(b'/');
    }
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if head.absolute
        && let Some(host) = head.host_bytes()
    {
        field(out, b"host", host);
    } else if head.host_bytes().is_none()
        && let Some(server) = up.server
    {
        let _ = write!(out, "host: {server}\r\n");
    }
    let trusted = fwd.peer_trusted;
    for f in &head.fields {
        let (name, value) = (head.bytes(&f.name), head.bytes(&f.value));
        match f.kind {
            Kind::ContentLength | Kind::TransferEncoding | Kind::SecWebSocketKey => {}
            // Answered by edgepin itself (`100 Continue`), not the server's to see.
            Kind::Expect => continue,
            Kind::Host if head.absolute => continue,
            Kind::Host => {}
            Kind::Cookie => {
                if let Some(name) = up.strip_cookie
                    && cookie::find(value, name).is_some()
                {
                    if let Some(kept) = cookie::strip(value, name) {
                        field(out, b"cookie", &kept);
                    }
                    continue;
                }
            }
            // The kinds stand for the names `forwarding::passes` knows, classified once
            // when the head was parsed.
            Kind::ForwardedInfo if trusted => {}
            Kind::Plain | Kind::ClientIp if trusted || !up.strip.contains(name) => {
                if f.kind == Kind::ClientIp && name.eq_ignore_ascii_case(b"x-real-ip") {
                    continue;
                }
            }
            Kind::Plain
            | Kind::ClientIp
            | Kind::ForwardedInfo
            | Kind::ForwardedFor
            | Kind::Forwarded
            | Kind::Connection
            | Kind::Upgrade
            | Kind::HopByHop
            | Kind::Underscore => continue,
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    forwarding::write_fields(fwd, head.host_bytes(), &SentIn(head), &mut forwarding::Lines(out));
    if head.websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The forwarding fields a parsed head carries.
struct SentIn<'h>(&'h Head);

impl forwarding::Sent for SentIn<'_> {
    fn forwarded_for(&self) -> impl Iterator<Item = &[u8]> {
        self.0.values(Kind::ForwardedFor)
    }
    fn forwarded(&self) -> impl Iterator<Item = &[u8]> {
        self.0.values(Kind::Forwarded)
    }
    fn has_proto(&self) -> bool {
        self.named(b"x-forwarded-proto")
    }
    fn has_host(&self) -> bool {
        self.named(b"x-forwarded-host")
    }
}

impl SentIn<'_> {
    fn named(&self, name: &[u8]) -> bool {
        let h = self.0;
        h.fields
            .iter()
            .any(|f| f.kind == Kind::ForwardedInfo && h.bytes(&f.name).eq_ignore_ascii_case(name))
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        let mut h = Head::default();
        h.parse(text.as_bytes(), 16384).unwrap().unwrap();
        h
    }

    fn write(text: &str, fwd: Forwarding<'_>, up: Upstream<'_>) -> String {
        let mut out = Vec::new();
        write_head(&mut out, &head(text), &fwd, up);
        String::from_utf8(out).unwrap()
    }

    static STRIP: std::sync::LazyLock<HeaderSet> = std::sync::LazyLock::new(|| {
        HeaderSet::new(crate::config::STRIP_FROM_UNTRUSTED.iter().map(|n| n.as_bytes().into()))
    });

    fn up() -> Upstream<'static> {
        Upstream {
            strip_cookie: None,
            server: None,
            strip: &STRIP,
        }
    }

    fn untrusted(ip: &'static str) -> Forwarding<'static> {
        let parsed = ip.parse().ok();
        Forwarding {
            peer: parsed,
            peer_text: ip.as_bytes(),
            client: parsed,
            peer_trusted: false,
            tls: true,
        }
    }

    #[test]
    fn client_forwarding_headers_are_replaced_from_untrusted_peers() {
        let out = write(
            "GET /a?b HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
             X-Client-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
             X-Forwarded-Proto: gopher\r\nX_Forwarded_For: 6.6.6.6\r\nAccept: */*\r\n\r\n",
            untrusted("127.0.0.9"),
            up(),
        );
        assert!(!out.contains("6.6.6.6"), "{out}");
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: app.example\r\nAccept: */*\r\nx-forwarded-for: 127.0.0.9\r\n\
             x-real-ip: 127.0.0.9\r\nx-forwarded-proto: https\r\nx-forwarded-host: app.example\r\n\
             forwarded: for=127.0.0.9;proto=https;host=\"app.example\"\r\n\r\n"
        );
    }

    #[test]
    fn headers_backends_trust_for_the_client_or_the_url_are_stripped_from_untrusted_peers() {
        let text = "GET / HTTP/1.1\r\nHost: h\r\nX-Cluster-Client-IP: 6.6.6.6\r\nFastly-Client-IP: 6.6.6.6\r\n\
                    X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Other: kept\r\n\r\n";
        let out = write(text, untrusted("127.0.0.1"), up());
        assert!(!out.contains("6.6.6.6") && !out.contains("/admin"), "{out}");
        assert!(out.contains("X-Other: kept\r\n"), "{out}");
        let trusted = Forwarding {
            peer_trusted: true,
            ..untrusted("127.0.0.1")
        };
        let out = write(text, trusted, up());
        assert!(
            out.contains("X-Original-URL: /admin\r\n"),
            "a trusted proxy's pass: {out}"
        );
        let own = HeaderSet::new([b"x-other"[..].into()]);
        let out = write(text, untrusted("127.0.0.1"), Upstream { strip: &own, ..up() });
        assert!(
            out.contains("X-Original-URL: /admin\r\n") && !out.contains("X-Other"),
            "{out}"
        );
    }

    #[test]
    fn a_trusted_peer_extends_the_chain() {
        let fwd = Forwarding {
            peer: "10.0.0.2".parse().ok(),
            peer_text: b"10.0.0.2",
            client: "1.2.3.4".parse().ok(),
            peer_trusted: true,
            tls: false,
        };
        let out = write(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\
             Forwarded: for=1.2.3.4\r\nCF-Connecting-IP: 1.2.3.4\r\n\r\n",
            fwd,
            up(),
        );
        assert!(out.contains("x-forwarded-for: 1.2.3.4, 10.0.0.2\r\n"), "{out}");
        assert!(
            out.contains("X-Forwarded-Proto: https\r\n") && !out.contains("x-forwarded-proto"),
            "{out}"
        );
        assert!(
            out.contains("forwarded: for=1.2.3.4, for=10.0.0.2;proto=http;host=\"h\"\r\n"),
            "{out}"
        );
        assert!(out.contains("CF-Connecting-IP: 1.2.3.4\r\n"), "{out}");
        assert!(out.contains("x-real-ip: 1.2.3.4\r\n"), "{out}");
    }

    #[test]
    fn hop_by_hop_headers_and_other_upgrades_stay_here() {
        let out = write(
            "GET /socket.io/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, keep-alive, X-Secret\r\nUpgrade: foo\r\n\
             Keep-Alive: 5\r\nX-Secret: s\r\nTE: trailers\r\n\r\n",
            untrusted("127.0.0.1"),
            up(),
        );
        for gone in ["Upgrade", "Connection", "Keep-Alive", "X-Secret", "TE:"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        let out = write(
            "GET /socket.io/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: k\r\n\r\n",
            untrusted("127.0.0.1"),
            up(),
        );
        assert!(
            out.ends_with("connection: upgrade\r\nupgrade: websocket\r\n\r\n"),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Key: k\r\n"));
    }

    #[test]
    fn the_sticky_cookie_is_removed_and_absolute_form_becomes_origin_form() {
        let out = write(
            "GET http://App.example:8080 HTTP/1.1\r\nHost: ignored\r\nCookie: a=1; EDGEPIN=x; b=2\r\n\r\n",
            untrusted("::1"),
            Upstream {
                strip_cookie: Some("EDGEPIN"),
                ..up()
            },
        );
        assert!(out.starts_with("GET / HTTP/1.1\r\nhost: App.example:8080\r\n"), "{out}");
        assert!(!out.contains("ignored"), "{out}");
        assert!(out.contains("cookie: a=1; b=2\r\n"), "{out}");
        assert!(
            out.contains("forwarded: for=\"[::1]\";proto=https;host=\"App.example:8080\""),
            "{out}"
        );
    }

    #[test]
    fn a_request_without_host_gets_the_servers_and_expect_stays_here() {
        let server = Some("127.0.0.1:3001".parse().unwrap());
        let out = write(
            "POST /x HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
            untrusted("127.0.0.1"),
            Upstream { server, ..up() },
        );
        assert!(out.starts_with("POST /x HTTP/1.1\r\nhost: 127.0.0.1:3001\r\n"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("expect"), "{out}");
        let out = write(
            "GET / HTTP/1.1\r\nHost: app\r\n\r\n",
            untrusted("127.0.0.1"),
            Upstream { server, ..up() },
        );
        assert!(out.contains("Host: app\r\n") && !out.contains("3001"), "{out}");
    }
}
