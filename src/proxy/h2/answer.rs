//! A server's HTTP/1.1 answer head as the HTTP/2 response a client gets: the status, the
//! server's fields minus what was that hop's (`Connection` and what it names,
//! `Keep-Alive`, `Transfer-Encoding`, `Upgrade`...), plus the sticky cookie and HSTS. The
//! field values are copied out of the server's bytes: the read buffer is not held by the
//! response (the connection keeps its last frames a while). A `101` that
//! accepted a WebSocket becomes the `200` that accepts an extended CONNECT (RFC 8441
//! §5), without the handshake's own fields. Nothing here does I/O.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::super::local_answer::LocalAnswer;
use super::super::upstream::head::{Header, Parsed, RespKind};
use crate::proxy::fields;

const SEC_WEBSOCKET_ACCEPT: &[u8] = b"sec-websocket-accept";

/// What edgepin adds to the server's answer.
#[derive(Debug, Clone, Default)]
pub struct Added {
    pub set_cookie: Option<String>,
    pub hsts: Option<HeaderValue>,
}

/// The response head for the answer parsed from `head` (the server's head bytes).
/// `None`: a field no HTTP/2 response can carry (the answer is then the server's fault).
pub fn response(head: &[u8], parsed: &Parsed, fields: &[Header], added: Added) -> Option<Response<()>> {
    let websocket = parsed.status == 101;
    let status = if websocket { 200 } else { parsed.status };
    let mut headers = HeaderMap::with_capacity(fields.len() + 2);
    // Fields the server named in Connection are this hop's only.
    let named: Vec<&[u8]> = fields
        .iter()
        .filter(|h| h.kind == RespKind::Connection)
        .flat_map(|h| fields::names(&head[h.value.clone()]))
        .collect();
    for h in fields {
        let keep = match h.kind {
            RespKind::Plain => true,
            // One `content-length` is written below (the server may have sent duplicates).
            RespKind::ContentLength
            | RespKind::WebSocketAccept
            | RespKind::TransferEncoding
            | RespKind::Upgrade
            | RespKind::Connection
            | RespKind::HopByHop => false,
        };
        let name = &head[h.name.clone()];
        if !keep || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        if websocket && name.eq_ignore_ascii_case(SEC_WEBSOCKET_ACCEPT) {
            continue;
        }
        let name = HeaderName::from_bytes(name).ok()?;
        let value = HeaderValue::from_bytes(&head[h.value.clone()]).ok()?;
        headers.append(name, value);
    }
    // An answer to a CONNECT carries no body length (RFC 9110 §9.3.6).
    if let Some(n) = parsed.length.filter(|_| !websocket) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(cookie) = added.set_cookie {
        headers.append(http::header::SET_COOKIE, HeaderValue::try_from(cookie).ok()?);
    }
    if let Some(hsts) = added.hsts {
        headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(status).ok()?;
    *resp.headers_mut() = headers;
    Some(resp)
}

/// The response head of an answer edgepin makes itself (`local_answer`).
pub fn local(a: &LocalAnswer<'_>) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(a.body.len()));
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some((name, value)) = &a.field
        && let Ok(v) = HeaderValue::try_from(value.as_ref())
    {
        headers.append(HeaderName::from_static(name), v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::head::{Asked, parse};

    fn convert(text: &str, asked: Asked<'_>, added: Added) -> Response<()> {
        let head = text.as_bytes();
        let mut fields = Vec::new();
        let parsed = parse(head, asked, &mut fields).unwrap().unwrap();
        response(head, &parsed, &fields, added).unwrap()
    }

    const GET: Asked<'static> = Asked {
        head_request: false,
        websocket_key: None,
    };

    #[test]
    fn hop_by_hop_fields_stay_behind_and_ours_are_added() {
        let resp = convert(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: 5\r\nX-Hop: 1\r\n\
             Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n\r\n",
            GET,
            Added {
                set_cookie: Some("EDGEPIN=x; Path=/".into()),
                hsts: Some(HeaderValue::from_static("max-age=60")),
            },
        );
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "set-cookie", "strict-transport-security"]);
        let cookies: Vec<&[u8]> = h.get_all("set-cookie").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(cookies, [&b"a=1"[..], b"EDGEPIN=x; Path=/"]);
    }

    #[test]
    fn a_websocket_101_becomes_a_200_without_the_handshake() {
        let key = b"dGhlIHNhbXBsZSBub25jZQ==";
        let asked = Asked {
            head_request: false,
            websocket_key: Some(key),
        };
        let resp = convert(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
            asked,
            Added::default(),
        );
        assert_eq!(resp.status(), 200);
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["sec-websocket-protocol"]);
    }

    #[test]
    fn a_local_answer_has_the_head_the_http_1_engine_writes() {
        let a = LocalAnswer::refusal(&crate::failure::Refusal::NoServer);
        let resp = local(&a);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-length"], a.body.len().to_string());
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.headers()["retry-after"], "5");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let resp = local(&LocalAnswer::redirect("https://a.example/x"));
        assert_eq!(resp.status(), 308);
        assert_eq!(resp.headers()["location"], "https://a.example/x");
    }
}
