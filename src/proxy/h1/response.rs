//! Writing a server's answer head on to an HTTP/1 client, rewritten straight into the
//! client's write buffer: hop-by-hop fields out (and what the server's `Connection`
//! names), one `Content-Length` where the server sent the same one twice, the sticky
//! cookie, `Connection` and HSTS in.

use std::io::Write;

use crate::proxy::fields;
use crate::proxy::upstream::head::{Header, Parsed, RespKind};

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
        .flat_map(|h| fields::names(&input[h.value.clone()]))
        .collect();
    for h in headers {
        let keep = match h.kind {
            RespKind::Plain | RespKind::WebSocketAccept => true,
            // Written once below when the server repeated it.
            RespKind::ContentLength => !parsed.merged_length,
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
    if parsed.merged_length
        && let Some(n) = parsed.length
    {
        let _ = write!(out, "content-length: {n}\r\n");
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
    use crate::proxy::upstream::head::{Asked, RespBody, parse};

    const GET: Asked<'static> = Asked {
        head_request: false,
        websocket_key: None,
    };

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

    #[test]
    fn a_length_the_server_repeated_goes_on_once() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nContent-Length: 2\r\n\r\n";
        let mut headers = Vec::new();
        let p = parse(text.as_bytes(), GET, &mut headers).unwrap().unwrap();
        let mut out = Vec::new();
        write_head(&mut out, text.as_bytes(), &p, &headers, Rewrite::default());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\n"
        );
    }
}
