//! Reading an HTTP/1 request head: parse it (httparse), then hold it to RFC 9112 before
//! anything is forwarded. What a request may not be is decided here, once, for the
//! engine; nothing here does I/O.
//!
//! Refused with the status HAProxy or nginx would give: a head over the size limits (431,
//! 414), an unparsable or ambiguous one (400: both Content-Length and Transfer-Encoding,
//! `Content-Length: 5, 5`, HTTP/1.1 without Host, a target that is neither origin-form,
//! absolute-form nor `*` for OPTIONS), a transfer coding other than chunked (501), and
//! CONNECT (405). Header names with an underscore are dropped unread, as nginx does, so
//! `Transfer_Encoding` can never be taken for `Transfer-Encoding` upstream.

use std::ops::Range;

use super::fields::{self, content_length, tokens};

/// Most headers a request may have (HAProxy's default is 101).
pub const MAX_HEADERS: usize = 100;
/// Longest request line (nginx's large header buffer): longer gets 414.
pub const MAX_REQUEST_LINE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Other,
}

impl Method {
    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    /// Safe to send again (RFC 9110 §9.2.2).
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace
        )
    }
}

/// What a header is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Forwarded as it is.
    Plain,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Cookie,
    /// `X-Forwarded-For`: extended from trusted peers, replaced otherwise.
    ForwardedFor,
    /// X-Forwarded-Proto/-Host: kept from trusted peers, replaced otherwise.
    ForwardedInfo,
    /// `Forwarded` (RFC 7239): extended from trusted peers, replaced otherwise.
    Forwarded,
    /// Headers clients use to claim an address (X-Real-IP, X-Client-IP, True-Client-IP,
    /// CF-Connecting-IP): kept from trusted peers only.
    ClientIp,
    SecWebSocketKey,
    Expect,
    /// Hop-by-hop: Keep-Alive, Proxy-Connection, TE, Trailer, or named in Connection.
    HopByHop,
    /// A name with `_`: dropped.
    Underscore,
}

fn kind_of(name: &str) -> Kind {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 if is("host") => Kind::Host,
        6 if is("cookie") => Kind::Cookie,
        6 if is("expect") => Kind::Expect,
        2 if is("te") => Kind::HopByHop,
        7 if is("upgrade") => Kind::Upgrade,
        7 if is("trailer") => Kind::HopByHop,
        9 if is("forwarded") => Kind::Forwarded,
        9 if is("x-real-ip") => Kind::ClientIp,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        11 if is("x-client-ip") => Kind::ClientIp,
        14 if is("content-length") => Kind::ContentLength,
        14 if is("true-client-ip") => Kind::ClientIp,
        15 if is("x-forwarded-for") => Kind::ForwardedFor,
        16 if is("x-forwarded-host") => Kind::ForwardedInfo,
        16 if is("proxy-connection") => Kind::HopByHop,
        16 if is("cf-connecting-ip") => Kind::ClientIp,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::ForwardedInfo,
        17 if is("sec-websocket-key") => Kind::SecWebSocketKey,
        _ if name.contains('_') => Kind::Underscore,
        _ => Kind::Plain,
    }
}

/// One header line: where its name and value are in [`Head::raw`].
#[derive(Debug, Clone)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: Kind,
}

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A parsed and checked request head. Kept per connection and refilled for each request,
/// so a keep-alive connection parses without allocating.
#[derive(Debug, Default)]
pub struct Head {
    /// The head's bytes as received.
    pub raw: Vec<u8>,
    pub fields: Vec<Field>,
    method_end: usize,
    pub method: Option<Method>,
    /// The request target as sent.
    pub target: Range<usize>,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// The host to route by: Host, or the authority of an absolute-form target.
    pub host: Option<Range<usize>>,
    /// Origin-form path and query of the target (for absolute-form, the part after the
    /// authority; `*` for OPTIONS *).
    pub origin: Range<usize>,
    /// The target was absolute-form (`http://host/path`).
    pub absolute: bool,
    pub body: Option<Body>,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
    /// `Upgrade: websocket` with `Connection: upgrade` (any other Upgrade is dropped).
    pub websocket: bool,
    pub expect_continue: bool,
}

/// A request that is refused before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub why: &'static str,
}

const fn refused(status: u16, why: &'static str) -> Refused {
    Refused { status, why }
}

impl Head {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    pub fn method_str(&self) -> &str {
        std::str::from_utf8(&self.raw[..self.method_end]).unwrap_or("-")
    }

    pub fn bytes(&self, r: &Range<usize>) -> &[u8] {
        &self.raw[r.clone()]
    }

    pub fn str(&self, r: &Range<usize>) -> &str {
        std::str::from_utf8(&self.raw[r.clone()]).unwrap_or("")
    }

    /// Path and query, origin-form.
    pub fn origin_str(&self) -> &str {
        self.str(&self.origin)
    }

    /// The path of the target (no query).
    pub fn path(&self) -> &str {
        let o = self.origin_str();
        o.split_once('?').map_or(o, |(p, _)| p)
    }

    pub fn query(&self) -> Option<&str> {
        self.origin_str().split_once('?').map(|(_, q)| q)
    }

    pub fn host_bytes(&self) -> Option<&[u8]> {
        self.host.as_ref().map(|r| self.bytes(r))
    }

    pub fn body(&self) -> Body {
        self.body.unwrap_or(Body::None)
    }

    /// Values of every header of `kind`.
    pub fn values(&self, kind: Kind) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(move |f| f.kind == kind)
            .map(|f| &self.raw[f.value.clone()])
    }

    pub fn value(&self, kind: Kind) -> Option<&[u8]> {
        self.values(kind).next()
    }

    /// Parse a head from the start of `input`. `Ok(None)`: incomplete, read more (the
    /// caller bounds how much with [`head_limit`]). `Ok(Some(n))`: the head is the first
    /// `n` bytes.
    pub fn parse(&mut self, input: &[u8], max_header_bytes: usize) -> Result<Option<usize>, Refused> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut storage);
        let len = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(refused(431, "too many request headers")),
            Err(httparse::Error::Version) if names_an_http_version(input) => {
                return Err(refused(505, "HTTP version not supported"));
            }
            Err(_) => return Err(refused(400, "malformed request head")),
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(refused(400, "malformed request line"));
        };
        // Offsets: httparse slices borrow `input`; the head is copied once and the fields
        // are kept as ranges into the copy.
        let base = input.as_ptr() as usize;
        let at = |s: &[u8]| s.as_ptr() as usize - base;
        let leading = at(method.as_bytes());
        let line_end = at(path.as_bytes()) + path.len() + " HTTP/1.x".len();
        if line_end - leading > MAX_REQUEST_LINE {
            return Err(refused(414, "request line too long"));
        }
        if len - line_end > max_header_bytes {
            return Err(refused(431, "request headers too large"));
        }
        self.raw.clear();
        self.raw.extend_from_slice(&input[leading..len]);
        self.fields.clear();
        for h in req.headers.iter() {
            let name = at(h.name.as_bytes()) - leading;
            let value = at(h.value) - leading;
            self.fields.push(Field {
                name: name..name + h.name.len(),
                value: value..value + h.value.len(),
                kind: kind_of(h.name),
            });
        }
        self.method_end = method.len();
        self.method = Some(Method::parse(method));
        let target = at(path.as_bytes()) - leading;
        self.target = target..target + path.len();
        self.minor = minor;
        self.check()?;
        Ok(Some(len))
    }

    /// RFC 9112 rules for what was parsed; fills in the derived facts.
    fn check(&mut self) -> Result<(), Refused> {
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

/// The request line ends with a well-formed `HTTP/d.d` (then an unsupported version is
/// 505; anything else there is a malformed request, 400).
fn names_an_http_version(input: &[u8]) -> bool {
    let line = input
        .split(|&b| b == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")
        .unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}

/// Bytes that may be read for a head before it is refused with 431.
pub fn head_limit(max_header_bytes: usize) -> usize {
    max_header_bytes + MAX_REQUEST_LINE
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
    use super::*;

    fn parse(text: &str) -> Result<Head, Refused> {
        let mut head = Head::default();
        match head.parse(text.as_bytes(), 16384)? {
            Some(n) => {
                assert_eq!(n, text.find("\r\n\r\n").unwrap() + 4, "head length");
                Ok(head)
            }
            None => panic!("incomplete: {text:?}"),
        }
    }

    fn status(text: &str) -> u16 {
        parse(text).err().map_or(200, |r| r.status)
    }

    #[test]
    fn an_ordinary_get_is_parsed_with_its_facts() {
        let h = parse("GET /api/x?a=1 HTTP/1.1\r\nHost: Example.com\r\nCookie: a=1\r\n\r\n").unwrap();
        assert_eq!(h.method(), Method::Get);
        assert_eq!(h.path(), "/api/x");
        assert_eq!(h.query(), Some("a=1"));
        assert_eq!(h.host_bytes(), Some(&b"Example.com"[..]));
        assert_eq!(h.body(), Body::None);
        assert!(h.keep_alive && !h.websocket && !h.absolute);
        assert_eq!(h.value(Kind::Cookie), Some(&b"a=1"[..]));
    }

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
    fn an_incomplete_head_asks_for_more() {
        let mut h = Head::default();
        assert_eq!(h.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 16384), Ok(None));
        assert_eq!(
            h.parse(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 16384),
            Ok(Some(31))
        );
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

    #[test]
    fn headers_are_classified_and_underscores_dropped() {
        let h = parse(
            "GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\nTransfer_Encoding: chunked\r\n\
             True-Client-IP: 6.6.6.6\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\r\n",
        )
        .unwrap();
        let kinds: Vec<Kind> = h.fields.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Host,
                Kind::Underscore,
                Kind::Underscore,
                Kind::ClientIp,
                Kind::Connection,
                Kind::HopByHop
            ]
        );
        assert_eq!(h.body(), Body::None, "Transfer_Encoding is not Transfer-Encoding");
    }

    #[test]
    fn sizes_are_bounded() {
        let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(status(&long_line), 414);
        let mut h = Head::default();
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(2000));
        assert_eq!(h.parse(big.as_bytes(), 1024).unwrap_err().status, 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")), 431);
    }
}
