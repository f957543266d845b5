//! A server's answer head: parsed (httparse) into ranges of the bytes read, with how its
//! body is delimited, whether the server connection can be reused after it, and a `101`
//! checked against the WebSocket handshake it answers. How the head then goes on to a
//! client is the engine's (`h1::response` writes it for HTTP/1). No I/O here.

use crate::proxy::fields::{self, tokens};

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
    /// `Content-Length`, when the server sent one (also where the body has none: a
    /// `HEAD` or `304`).
    pub length: Option<u64>,
    /// The length came as duplicate fields or a list of one value (`5, 5`): it goes on as
    /// one `Content-Length` field.
    pub merged_length: bool,
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
    let mut merged_length = false;
    let mut chunked = false;
    let mut other_coding = false;
    let mut connection = fields::Connection::default();
    let mut upgrade_ws = false;
    let mut accept = None;
    for h in resp.headers.iter() {
        let kind = RespKind::of(h.name);
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        match kind {
            RespKind::ContentLength => {
                let n = fields::content_length_list(h.value).ok_or(BadResponse("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse("conflicting Content-Length"));
                }
                merged_length |= length.is_some() || h.value.contains(&b',');
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
            RespKind::Connection => connection.read(h.value),
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
        if !upgrade_ws || !connection.upgrade || accept.map(<[u8]>::trim_ascii) != Some(expected.as_bytes()) {
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
    // HTTP/1.0 closes unless it says keep-alive; HTTP/1.1 stays open unless it says close.
    let close = connection.close || (minor == 0 && !connection.keep_alive);
    let keep_alive = !close && body != RespBody::Close && status != 101;
    Ok(Some(Parsed {
        len,
        status,
        body,
        keep_alive,
        length,
        merged_length,
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
            7 if is("upgrade") => RespKind::Upgrade,
            10 if is("connection") => RespKind::Connection,
            14 if is("content-length") => RespKind::ContentLength,
            17 if is("transfer-encoding") => RespKind::TransferEncoding,
            20 if is("sec-websocket-accept") => RespKind::WebSocketAccept,
            _ if fields::hop_by_hop(name.as_bytes()) => RespKind::HopByHop,
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
    fn identical_lengths_from_a_server_are_one_length() {
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", GET).unwrap();
        assert_eq!((p.body, p.merged_length), (RespBody::Length(3), true));
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", GET).unwrap();
        assert_eq!((p.body, p.merged_length), (RespBody::Length(3), true));
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", GET).unwrap();
        assert!(!p.merged_length);
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n", GET).is_err());
    }
}
