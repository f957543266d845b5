//! Reading a server's response head and writing it on to the client: parse (httparse),
//! decide how its body is delimited and whether the server connection can be reused,
//! check a `101` against the WebSocket handshake it answers, and rewrite the head
//! (hop-by-hop headers out; the sticky cookie, `Connection` and HSTS in) straight into
//! the client's write buffer.

use std::io::Write;

use super::head::tokens;

/// Most headers a response may have.
const MAX_HEADERS: usize = 100;

/// The WebSocket GUID of RFC 6455 §1.3.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A response the proxy will not pass on (502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespBody {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes.
    Close,
}

/// What the proxy needs to know of a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Length of the head in the input.
    pub len: usize,
    pub status: u16,
    pub body: RespBody,
    /// The server keeps the connection open after this response.
    pub keep_alive: bool,
}

/// What the request asked that shapes the response.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub head_request: bool,
    /// `Sec-WebSocket-Key` of a WebSocket upgrade request.
    pub websocket_key: Option<&'a [u8]>,
}

/// Parse a response head at the start of `input` into `headers` (reused, so a
/// keep-alive connection does not allocate); `Ok(None)`: incomplete.
pub fn parse(input: &[u8], asked: Asked<'_>, headers: &mut Vec<Header>) -> Result<Option<Parsed>, BadResponse> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(BadResponse("malformed status line"));
    };
    if !(100..=599).contains(&status) {
        return Err(BadResponse("status out of range"));
    }
    let base = input.as_ptr() as usize;
    headers.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = minor == 0;
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut accept = None;
    for h in resp.headers.iter() {
        let kind = RespKind::of(h.name);
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        match kind {
            RespKind::ContentLength => {
                let v = h.value.trim_ascii();
                let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten()
                    .ok_or(BadResponse("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse("conflicting Content-Length"));
                }
                length = Some(n);
            }
            RespKind::TransferEncoding => {
                let last = tokens(h.value).last().unwrap_or_default();
                if last.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    other_coding = true;
                }
            }
            RespKind::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                        close = false;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    }
                }
            }
            RespKind::Upgrade => upgrade_ws |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"websocket")),
            RespKind::WebSocketAccept => accept = Some(h.value),
            _ => {}
        }
        headers.push(Header {
            name: name..name + h.name.len(),
            value: value..value + h.value.len(),
            kind,
        });
    }
    if (chunked || other_coding) && length.is_some() {
        return Err(BadResponse("both Content-Length and Transfer-Encoding"));
    }
    if status == 101 {
        let Some(key) = asked.websocket_key else {
            return Err(BadResponse("101 to a request that asked no upgrade"));
        };
        let expected = websocket_accept(key);
        if !upgrade_ws || !connection_upgrade || accept.map(<[u8]>::trim_ascii) != Some(expected.as_bytes()) {
            return Err(BadResponse("101 is not a valid WebSocket handshake answer"));
        }
    }
    let body = if asked.head_request || status < 200 || status == 204 || status == 304 {
        RespBody::None
    } else if chunked && !other_coding {
        RespBody::Chunked
    } else if other_coding {
        RespBody::Close
    } else {
        match length {
            Some(0) => RespBody::None,
            Some(n) => RespBody::Length(n),
            None => RespBody::Close,
        }
    };
    let keep_alive = !close && body != RespBody::Close && status != 101;
    Ok(Some(Parsed {
        len,
        status,
        body,
        keep_alive,
    }))
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim_ascii());
    ctx.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespKind {
    Plain,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    WebSocketAccept,
    /// Keep-Alive, Proxy-Connection, TE: this hop's only.
    HopByHop,
}

impl RespKind {
    fn of(name: &str) -> RespKind {
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        match name.len() {
            2 if is("te") => RespKind::HopByHop,
            7 if is("upgrade") => RespKind::Upgrade,
            10 if is("connection") => RespKind::Connection,
            10 if is("keep-alive") => RespKind::HopByHop,
            14 if is("content-length") => RespKind::ContentLength,
            16 if is("proxy-connection") => RespKind::HopByHop,
            17 if is("transfer-encoding") => RespKind::TransferEncoding,
            20 if is("sec-websocket-accept") => RespKind::WebSocketAccept,
            _ => RespKind::Plain,
        }
    }
}

/// A response header: ranges into the input it was parsed from.
#[derive(Debug, Clone)]
pub struct Header {
    pub name: std::ops::Range<usize>,
    pub value: std::ops::Range<usize>,
    pub kind: RespKind,
}

/// How the head goes on to the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite<'a> {
    /// The client connection closes after this response.
    pub close: bool,
    /// An HTTP/1.0 client kept alive: say so.
    pub keep_alive_1_0: bool,
    /// The body is decoded from chunked for an HTTP/1.0 client: drop Transfer-Encoding.
    pub dechunk: bool,
    pub set_cookie: Option<&'a str>,
    pub hsts: Option<&'a [u8]>,
}

/// Write the response head parsed from `input` to `out`, rewritten for the client.
pub fn write_head(out: &mut Vec<u8>, input: &[u8], parsed: &Parsed, headers: &[Header], rw: Rewrite<'_>) {
    let reason = status_reason(input);
    let _ = write!(out, "HTTP/1.1 {} ", parsed.status);
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    // Headers the server named in Connection are this hop's only.
    let named: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.kind == RespKind::Connection)
        .flat_map(|h| tokens(&input[h.value.clone()]))
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"upgrade")
        })
        .collect();
    for h in headers {
        let keep = match h.kind {
            RespKind::Plain | RespKind::ContentLength | RespKind::WebSocketAccept => true,
            RespKind::TransferEncoding => !rw.dechunk,
            RespKind::Upgrade => parsed.status == 101,
            RespKind::Connection | RespKind::HopByHop => false,
        };
        let name = &input[h.name.clone()];
        // The framing headers stay: the body is framed by them, whatever the server names.
        let framing = matches!(h.kind, RespKind::ContentLength | RespKind::TransferEncoding);
        if !keep || (!framing && named.iter().any(|n| n.eq_ignore_ascii_case(name))) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&input[h.value.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(cookie) = rw.set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(cookie.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(hsts) = rw.hsts {
        out.extend_from_slice(b"strict-transport-security: ");
        out.extend_from_slice(hsts);
        out.extend_from_slice(b"\r\n");
    }
    if parsed.status == 101 {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if rw.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if rw.keep_alive_1_0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase of the status line at the start of `input` (may be empty).
fn status_reason(input: &[u8]) -> &[u8] {
    let line = input.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // "HTTP/1.1 200 OK"
    line.get(13..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Asked<'static> = Asked {
        head_request: false,
        websocket_key: None,
    };

    fn parsed(text: &str, asked: Asked<'_>) -> Result<Parsed, BadResponse> {
        parse(text.as_bytes(), asked, &mut Vec::new()).map(|p| p.expect("complete"))
    }

    #[test]
    fn bodies_are_delimited_as_rfc_9112_says() {
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", GET).unwrap();
        assert_eq!((p.body, p.keep_alive), (RespBody::Length(12), true));
        let p = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", GET).unwrap();
        assert_eq!(p.body, RespBody::Chunked);
        let p = parsed("HTTP/1.1 200 OK\r\n\r\n", GET).unwrap();
        assert_eq!((p.body, p.keep_alive), (RespBody::Close, false));
        let p = parsed("HTTP/1.1 204 No Content\r\n\r\n", GET).unwrap();
        assert_eq!(p.body, RespBody::None);
        let head = Asked {
            head_request: true,
            websocket_key: None,
        };
        assert_eq!(
            parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head)
                .unwrap()
                .body,
            RespBody::None
        );
        let p = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", GET).unwrap();
        assert!(!p.keep_alive, "1.0 closes unless it says keep-alive");
        let p = parsed("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", GET).unwrap();
        assert!(!p.keep_alive);
        assert!(
            parsed(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET
            )
            .is_err()
        );
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", GET).is_err());
    }

    #[test]
    fn a_101_must_answer_the_websocket_key() {
        // The example of RFC 6455 §1.3.
        let key = b"dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(websocket_accept(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ws = Asked {
            head_request: false,
            websocket_key: Some(key),
        };
        let good = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(parsed(good, ws).unwrap().status, 101);
        assert!(parsed(&good.replace("s3pP", "xxxx"), ws).is_err(), "wrong accept");
        assert!(
            parsed(&good.replace("Upgrade: websocket\r\n", ""), ws).is_err(),
            "no Upgrade"
        );
        assert!(parsed(good, GET).is_err(), "nobody asked");
    }

    #[test]
    fn the_head_is_rewritten_for_the_client() {
        let text = "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                    Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut headers = Vec::new();
        let p = parse(text.as_bytes(), GET, &mut headers).unwrap().unwrap();
        let mut out = Vec::new();
        let rw = Rewrite {
            close: true,
            set_cookie: Some("EDGEPIN=abc; Path=/"),
            ..Rewrite::default()
        };
        write_head(&mut out, text.as_bytes(), &p, &headers, rw);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
             set-cookie: EDGEPIN=abc; Path=/\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        let rw = Rewrite {
            dechunk: true,
            close: true,
            ..Rewrite::default()
        };
        write_head(&mut out, text.as_bytes(), &p, &headers, rw);
        assert!(!String::from_utf8(out).unwrap().contains("Transfer-Encoding"));
    }

    #[test]
    fn framing_headers_stay_whatever_connection_names() {
        let text = "HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding, Content-Length\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        let mut headers = Vec::new();
        let p = parse(text.as_bytes(), GET, &mut headers).unwrap().unwrap();
        assert_eq!(p.body, RespBody::Chunked);
        let mut out = Vec::new();
        write_head(&mut out, text.as_bytes(), &p, &headers, Rewrite::default());
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Transfer-Encoding: chunked\r\n"),
            "the client reads the body as it is framed"
        );
    }
}
