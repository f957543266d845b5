//! Writing the request head a server receives, straight into the upstream write buffer:
//! the client's head minus what is this hop's (Connection, Keep-Alive, a non-WebSocket
//! Upgrade, headers named in Connection, names with `_`), minus the sticky cookie, with
//! the forwarding headers edgepin owns.
//!
//! Forwarding headers: from a peer in `trusted_proxies`, X-Forwarded-For and `Forwarded`
//! are extended with the peer and X-Forwarded-Proto/-Host kept; from anyone else every
//! client-sent forwarding header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
//! `X-Client-IP`, `True-Client-IP`, `CF-Connecting-IP`) is removed and edgepin's own are
//! set. `X-Real-IP` is always edgepin's: the client address it decided on.

use std::io::Write;
use std::net::IpAddr;

use crate::sticky::cookie;

use super::head::{Head, Kind};

/// Who sent the request, as far as the forwarding headers go.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The TCP peer (after a PROXY header).
    pub peer: Option<IpAddr>,
    /// The peer as text, formatted once per connection (it is in three headers of every
    /// request).
    pub peer_text: &'a [u8],
    /// The client address edgepin decided on (X-Forwarded-For of a trusted peer).
    pub client: Option<IpAddr>,
    pub peer_trusted: bool,
    pub tls: bool,
}

/// What else shapes the upstream head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Upstream<'a> {
    /// The sticky cookie's name, removed from Cookie.
    pub strip_cookie: Option<&'a str>,
    /// The server's address: the Host of a request that has none (HTTP/1.0 may omit it;
    /// what goes upstream is HTTP/1.1, which must have one).
    pub server: Option<std::net::SocketAddr>,
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
    let (mut have_proto, mut have_host) = (false, false);
    for f in &head.fields {
        let (name, value) = (head.bytes(&f.name), head.bytes(&f.value));
        match f.kind {
            Kind::Plain | Kind::ContentLength | Kind::TransferEncoding | Kind::SecWebSocketKey => {}
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
            Kind::ForwardedInfo if trusted => {
                if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                    have_proto = true;
                } else {
                    have_host = true;
                }
            }
            Kind::ClientIp if trusted && !name.eq_ignore_ascii_case(b"x-real-ip") => {}
            // Extended below (trusted) or replaced (not).
            Kind::ForwardedFor | Kind::Forwarded => continue,
            Kind::ForwardedInfo
            | Kind::ClientIp
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
    // X-Forwarded-For: the trusted chain, then the peer.
    out.extend_from_slice(b"x-forwarded-for: ");
    let mut first = true;
    if trusted {
        for v in head.values(Kind::ForwardedFor) {
            let v = v.trim_ascii();
            if !v.is_empty() {
                if !first {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(v);
                first = false;
            }
        }
    }
    if fwd.peer.is_some() {
        if !first {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(fwd.peer_text);
    }
    out.extend_from_slice(b"\r\n");
    match fwd.client {
        Some(client) if Some(client) == fwd.peer => field(out, b"x-real-ip", fwd.peer_text),
        Some(client) => {
            let _ = write!(out, "x-real-ip: {client}\r\n");
        }
        None => {}
    }
    let proto: &[u8] = if fwd.tls { b"https" } else { b"http" };
    if !have_proto {
        field(out, b"x-forwarded-proto", proto);
    }
    let host = head.host_bytes();
    if !have_host && let Some(h) = host {
        field(out, b"x-forwarded-host", h);
    }
    // Forwarded (RFC 7239): the trusted elements, then ours.
    out.extend_from_slice(b"forwarded: ");
    if trusted {
        for v in head.values(Kind::Forwarded) {
            let v = v.trim_ascii();
            if !v.is_empty() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    super::super::headers::forwarded_element(out, fwd.peer, fwd.peer_text, proto, host);
    out.extend_from_slice(b"\r\n");
    if head.websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    out.extend_from_slice(b"\r\n");
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
            Upstream::default(),
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
            Upstream::default(),
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
            Upstream::default(),
        );
        for gone in ["Upgrade", "Connection", "Keep-Alive", "X-Secret", "TE:"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        let out = write(
            "GET /socket.io/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: k\r\n\r\n",
            untrusted("127.0.0.1"),
            Upstream::default(),
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
                server: None,
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
            Upstream {
                server,
                ..Upstream::default()
            },
        );
        assert!(out.starts_with("POST /x HTTP/1.1\r\nhost: 127.0.0.1:3001\r\n"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("expect"), "{out}");
        let out = write(
            "GET / HTTP/1.1\r\nHost: app\r\n\r\n",
            untrusted("127.0.0.1"),
            Upstream {
                server,
                ..Upstream::default()
            },
        );
        assert!(out.contains("Host: app\r\n") && !out.contains("3001"), "{out}");
    }
}
