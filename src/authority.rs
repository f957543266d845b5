//! Whether a `Host` value (or the authority of an absolute-form target, or HTTP/2's
//! `:authority`) names a host: a registered name, an IPv4 address or a bracketed IPv6
//! address, with an optional port (RFC 9112 §3.2, RFC 3986 §3.2.2-3.2.3). Anything else
//! — a path (`evil.example/foo`), user information (`a@evil.example`), a space, a
//! percent-encoding, an empty value — is refused with 400 by the engines and the stats
//! listener alike, before it can become part of a redirect's `Location`, a route's
//! host, or the `Host` and `X-Forwarded-Host` a server receives. A decision only: one
//! function, no I/O.
//!
//! Stricter than RFC 3986 in two places, as nginx is: no percent-encoded octets in a
//! registered name (a browser decodes them, so `a%2Fb` would become a path), and no
//! IPvFuture or IPv6 zone. An empty port (`host:`) is allowed, as the RFC allows it.

use std::net::Ipv6Addr;

/// A value that is not a host with an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid host: {0}")]
pub struct InvalidHost(pub &'static str);

/// The parts of a valid authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authority<'a> {
    /// The host as sent (a name, an IPv4 address, or `[v6]` with its brackets).
    pub host: &'a str,
    pub port: Option<u16>,
}

/// Check `value` (optional whitespace around it is ignored) as `host [ ":" port ]`.
pub fn parse(value: &[u8]) -> Result<Authority<'_>, InvalidHost> {
    let value = value.trim_ascii();
    let text = std::str::from_utf8(value).map_err(|_| InvalidHost("not ASCII"))?;
    if text.is_empty() {
        return Err(InvalidHost("empty"));
    }
    let (host, port) = if text.starts_with('[') {
        let close = text.find(']').ok_or(InvalidHost("unclosed IPv6 literal"))?;
        let (literal, rest) = text.split_at(close + 1);
        literal[1..close]
            .parse::<Ipv6Addr>()
            .map_err(|_| InvalidHost("bad IPv6 literal"))?;
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or(InvalidHost("junk after IPv6 literal"))?),
        };
        (literal, port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if host.is_empty() {
            return Err(InvalidHost("empty host"));
        }
        if !host.bytes().all(is_reg_name_byte) {
            return Err(InvalidHost("character not allowed in a host name"));
        }
        (host, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| InvalidHost("port out of range"))?)
        }
        Some(_) => return Err(InvalidHost("bad port")),
    };
    Ok(Authority { host, port })
}

/// unreserved / sub-delims (RFC 3986 §3.2.2), without `%`.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || b"!$&'()*+,;=".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> (String, Option<u16>) {
        let a = parse(v.as_bytes()).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        (a.host.to_string(), a.port)
    }

    #[test]
    fn names_addresses_and_ports_pass() {
        assert_eq!(ok("example.com"), ("example.com".into(), None));
        assert_eq!(ok("App.Example.COM:8443"), ("App.Example.COM".into(), Some(8443)));
        assert_eq!(ok("localhost."), ("localhost.".into(), None));
        assert_eq!(ok("127.0.0.1:80"), ("127.0.0.1".into(), Some(80)));
        assert_eq!(ok("[::1]"), ("[::1]".into(), None));
        assert_eq!(ok("[2001:db8::7]:443"), ("[2001:db8::7]".into(), Some(443)));
        assert_eq!(ok(" x_y-z~1 "), ("x_y-z~1".into(), None), "optional whitespace");
        assert_eq!(ok("a:"), ("a".into(), None), "empty port (RFC 3986)");
        assert_eq!(ok("a:65535"), ("a".into(), Some(65535)));
    }

    #[test]
    fn paths_userinfo_and_junk_are_refused() {
        for bad in [
            "",
            "   ",
            ":80",
            "evil.example/foo",
            "evil.example/foo:80",
            "a@evil.example",
            "user:pass@evil.example",
            "evil.example?x",
            "evil.example#x",
            "evil example",
            "evil.example\\foo",
            "a%2Fb",
            "a:65536",
            "a:123456",
            "a:8o",
            "a:-1",
            "a:1:2",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[fe80::1%eth0]",
            "[v1.fe]",
            "[127.0.0.1]",
            "a\u{e9}.example",
            "a\"b",
            "<a>",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse(b"a\x00b").is_err());
        assert!(parse(b"a\xffb").is_err());
    }
}
