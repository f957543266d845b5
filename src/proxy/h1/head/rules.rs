//! The RFC 9112 rules a parsed request head is held to before anything is forwarded:
//! the target's form, one Host that is a host, unambiguous framing (one Content-Length,
//! chunked alone, never both), keep-alive by version and `Connection`, what counts as a
//! WebSocket upgrade, and the headers `Connection` makes this hop's only. Decisions only:
//! no I/O, no parsing of the head's bytes into fields (that is `head`'s).

use std::ops::Range;

use super::{Body, Head, Kind, Method, Refused, refused};
use crate::proxy::fields::{self, content_length, tokens};

impl Head {
    /// RFC 9112 rules for what was parsed; fills in the derived facts.
    pub(super) fn check(&mut self) -> Result<(), Refused> {
        let method = self.method();
        if self.method_str() == "CONNECT" {
            return Err(refused(405, "CONNECT is not supported"));
        }
        // The target's form (RFC 9112 §3.2).
        let target = self.target.clone();
        let t = &self.raw[target.clone()];
        let mut authority = None;
        if t.starts_with(b"/") || (t == b"*" && method == Method::Options) {
            self.origin = target.clone();
            self.absolute = false;
        } else if let Some((auth, origin)) = absolute_form(t) {
            authority = Some(target.start + auth.start..target.start + auth.end);
            self.origin = target.start + origin.start..target.start + origin.end;
            self.absolute = true;
        } else {
            return Err(refused(400, "invalid request target"));
        }
        let mut host = None;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut connection = fields::Connection::default();
        let mut expect_continue = false;
        for f in &self.fields {
            let value = &self.raw[f.value.clone()];
            match f.kind {
                Kind::Host => {
                    if host.is_some() {
                        return Err(refused(400, "more than one Host header"));
                    }
                    host = Some(f.value.clone());
                }
                Kind::ContentLength => {
                    let n = content_length(value).ok_or(refused(400, "invalid Content-Length"))?;
                    if length.is_some() {
                        return Err(refused(400, "more than one Content-Length"));
                    }
                    length = Some(n);
                }
                Kind::TransferEncoding => {
                    if chunked || !is_chunked(value) {
                        return Err(refused(501, "transfer coding not implemented (only chunked)"));
                    }
                    chunked = true;
                }
                Kind::Connection => connection.read(value),
                Kind::Expect => expect_continue |= value.eq_ignore_ascii_case(b"100-continue"),
                _ => {}
            }
        }
        // Of this request only; HTTP/1.0 clients are never sent a 100 (RFC 9110 §10.1.1).
        self.expect_continue = expect_continue && self.minor == 1;
        if chunked && length.is_some() {
            return Err(refused(400, "both Content-Length and Transfer-Encoding"));
        }
        if chunked && self.minor == 0 {
            return Err(refused(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        self.body = Some(match (chunked, length) {
            (true, _) => Body::Chunked,
            (false, Some(0) | None) => Body::None,
            (false, Some(n)) => Body::Length(n),
        });
        // Host and the target's authority must each be a host (RFC 9112 §3.2).
        for range in [&host, &authority].into_iter().flatten() {
            if crate::authority::parse(&self.raw[range.clone()]).is_err() {
                return Err(refused(400, "invalid Host"));
            }
        }
        // An absolute-form target names the host; a Host header beside it is ignored.
        self.host = match authority {
            Some(a) => Some(a),
            None if host.is_none() && self.minor == 1 => return Err(refused(400, "HTTP/1.1 request without Host")),
            None => host,
        };
        self.keep_alive = if self.minor == 1 {
            !connection.close
        } else {
            connection.keep_alive && !connection.close
        };
        self.websocket = connection.upgrade
            && self.minor == 1
            && self
                .values(Kind::Upgrade)
                .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"websocket")));
        if connection.names_fields {
            self.mark_named_hop_by_hop();
        }
        Ok(())
    }

    /// Headers named in `Connection` are this hop's only (RFC 9110 §7.6.1).
    fn mark_named_hop_by_hop(&mut self) {
        let named: Vec<Vec<u8>> = self
            .values(Kind::Connection)
            .flat_map(fields::names)
            .map(<[u8]>::to_ascii_lowercase)
            .collect();
        for f in &mut self.fields {
            let name = &self.raw[f.name.clone()];
            // The framing headers stay the proxy's to read, whatever the client names.
            let protected = matches!(
                f.kind,
                Kind::Host | Kind::ContentLength | Kind::TransferEncoding | Kind::Connection
            );
            if !protected && named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                f.kind = Kind::HopByHop;
            }
        }
    }
}

/// `http://authority/path?query` → (authority, path-and-query) ranges within `t`.
fn absolute_form(t: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
    let scheme = if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if t.len() > 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &t[scheme..];
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains(&b'@') {
        return None;
    }
    // `http://host` or `http://host?q` has no path bytes of its own: the origin then
    // starts at the query (or is empty) and the upstream head gets a `/`.
    Some((scheme..scheme + end, scheme + end..t.len()))
}

/// `chunked`, alone (any other coding, or a list, is not implemented).
fn is_chunked(v: &[u8]) -> bool {
    v.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, status};
    use super::super::*;

    #[test]
    fn expect_continue_belongs_to_one_http_1_1_request() {
        let mut h = Head::default();
        let with = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n";
        assert!(h.parse(with, 16384).unwrap().is_some());
        assert!(h.expect_continue);
        let without = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n";
        assert!(h.parse(without, 16384).unwrap().is_some());
        assert!(!h.expect_continue, "the next request on the connection did not ask");
        let old = b"POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n";
        assert!(h.parse(old, 16384).unwrap().is_some());
        assert!(!h.expect_continue, "no 100 for HTTP/1.0");
    }

    #[test]
    fn framing_that_could_smuggle_is_refused() {
        let both = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(both), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            400
        );
        assert_eq!(status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nFoo: bar\r\n baz\r\n\r\n"),
            400,
            "obs-fold"
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nFoo : bar\r\n\r\n"),
            400,
            "space before colon"
        );
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n").unwrap();
        assert_eq!(h.body(), Body::Chunked);
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(h.body(), Body::Length(12));
    }

    #[test]
    fn host_and_target_forms_follow_rfc_9112() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400, "1.1 without Host");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200, "1.0 may omit Host");
        assert_eq!(status("GET x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status("PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n\r\n"), 400);
        let h = parse("GET http://App.Example:8080/p?q=1 HTTP/1.1\r\n\r\n").unwrap();
        assert!(h.absolute);
        assert_eq!(
            h.host_bytes(),
            Some(&b"App.Example:8080"[..]),
            "routed by the URI's host"
        );
        assert_eq!(h.origin_str(), "/p?q=1");
        let h = parse("GET http://a.example HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        assert_eq!(h.host_bytes(), Some(&b"a.example"[..]));
        assert_eq!(h.path(), "");
        assert_eq!(status("GET http://user@a/ HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn a_host_that_is_not_a_host_is_refused() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: evil.example/foo\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a@evil.example\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: x/y\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nHost: b/c\r\n\r\n",
            "GET http://a.example:x/ HTTP/1.1\r\n\r\n",
            "GET http://a%2Fb/ HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
        assert_eq!(status("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 200);
        assert_eq!(status("GET http://[::1]/ HTTP/1.1\r\n\r\n"), 200);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().keep_alive);
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let ws = "GET /socket.io/ HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
        assert!(parse(ws).unwrap().websocket);
        let foo = "GET /socket.io/ HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n";
        assert!(!parse(foo).unwrap().websocket);
        let no_token = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        assert!(!parse(no_token).unwrap().websocket);
    }
}
