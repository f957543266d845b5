//! Reading an HTTP/1 request head: parse it (httparse) into ranges of one copy of its
//! bytes, then hold it to RFC 9112 (`rules`) before anything is forwarded; `end` finds
//! where a head ends as it arrives. What a request may not be is decided here, once, for
//! the engine; nothing here does I/O.
//!
//! Refused with the status HAProxy or nginx would give: a head over the size limits (431,
//! 414), an unparsable or ambiguous one (400: both Content-Length and Transfer-Encoding,
//! `Content-Length: 5, 5`, HTTP/1.1 without Host, a Host or target authority that is not
//! a host (`crate::authority`), a target that is neither origin-form, absolute-form nor
//! `*` for OPTIONS), a transfer coding other than chunked (501), and
//! CONNECT (405). Header names with an underscore are dropped unread, as nginx does, so
//! `Transfer_Encoding` can never be taken for `Transfer-Encoding` upstream.

use std::ops::Range;

mod end;
mod rules;

pub use end::{HeadEnd, head_limit};

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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Head, Refused> {
        let mut head = Head::default();
        match head.parse(text.as_bytes(), 16384)? {
            Some(n) => {
                assert_eq!(n, text.find("\r\n\r\n").unwrap() + 4, "head length");
                Ok(head)
            }
            None => panic!("incomplete: {text:?}"),
        }
    }

    pub(super) fn status(text: &str) -> u16 {
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
    fn an_incomplete_head_asks_for_more() {
        let mut h = Head::default();
        assert_eq!(h.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 16384), Ok(None));
        assert_eq!(
            h.parse(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 16384),
            Ok(Some(31))
        );
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
