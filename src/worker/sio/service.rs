//! The HTTP side of Engine.IO: which request under `/socket.io/` opens a session, polls,
//! posts or upgrades to WebSocket, and the refusals Node's `engine.io` gives for the rest
//! (400 with `{"code":N,"message":…}`: an unknown protocol version or transport, a
//! session id this worker does not know, a handshake that is not a GET).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use super::eio::Refusal;
use super::session::{Session, Transport};
use super::{Io, polling, ws};

/// What the query of an Engine.IO request names.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Query<'a> {
        let mut q = Query::default();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("EIO", v)) => q.eio = Some(v),
                Some(("transport", v)) => q.transport = Some(v),
                Some(("sid", v)) => q.sid = Some(v),
                _ => {}
            }
        }
        q
    }
}

pub async fn serve(io: Arc<Io>, req: Request) -> Response {
    if !tracing::enabled!(tracing::Level::TRACE) {
        return route(io, req).await;
    }
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let response = route(io, req).await;
    tracing::trace!(%method, query, status = response.status().as_u16(), "engine.io request");
    response
}

async fn route(io: Arc<Io>, req: Request) -> Response {
    let query = Query::parse(req.uri().query().unwrap_or_default());
    if query.eio != Some("4") {
        return refuse(Refusal::UnsupportedProtocolVersion);
    }
    let websocket = match query.transport {
        Some("polling") => false,
        Some("websocket") => true,
        _ => return refuse(Refusal::TransportUnknown),
    };
    let Some(sid) = query.sid else {
        return match (req.method(), websocket) {
            (&Method::GET, false) => polling::open(&io),
            (&Method::GET, true) => upgrade(io, req, None),
            _ => refuse(Refusal::BadHandshakeMethod),
        };
    };
    let Some(session) = sid.parse().ok().and_then(|sid| io.session(sid)) else {
        return refuse(Refusal::SessionIdUnknown);
    };
    match (req.method().clone(), websocket) {
        (Method::GET, true) => upgrade(io, req, Some(session)),
        (Method::GET, false) => polling::get(io, session).await,
        (Method::POST, false) => polling::post(io, session, req.into_body()).await,
        _ => refuse(Refusal::BadRequest),
    }
}

/// Whether the headers ask for a WebSocket (version 13); its key.
fn websocket_key(headers: &HeaderMap) -> Option<&[u8]> {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version = headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes());
    if has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade") && version == Some(b"13") {
        headers.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes())
    } else {
        None
    }
}

/// Answer a WebSocket upgrade: a new session, or `session` (polling) upgrading.
fn upgrade(io: Arc<Io>, mut req: Request, session: Option<Arc<Session>>) -> Response {
    let Some(key) = websocket_key(req.headers()) else {
        return refuse(Refusal::BadRequest);
    };
    if let Some(s) = &session {
        let state = s.state();
        if state.transport == Transport::WebSocket || state.upgrading {
            return refuse(Refusal::BadRequest);
        }
    }
    let accept = accept_key(key);
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let conn = match upgraded.await {
            Ok(conn) => TokioIo::new(conn),
            Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
        };
        match session {
            Some(session) => ws::run(io, session, conn, true).await,
            None => {
                let session = Arc::new(Session::new(Transport::WebSocket));
                io.register(&session);
                ws::run(io, session, conn, false).await
            }
        }
    });
    let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

pub fn plain(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
}

/// Node's 400: `{"code":N,"message":"…"}`.
pub fn refuse(why: Refusal) -> Response {
    let mut response = Response::new(Body::from(why.body()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_upgrade_headers_are_read() {
        assert_eq!(
            Query::parse("EIO=4&transport=polling&t=abc&sid=x"),
            Query {
                eio: Some("4"),
                transport: Some("polling"),
                sid: Some("x")
            }
        );
        assert_eq!(Query::parse(""), Query::default());
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        assert_eq!(websocket_key(&h), None, "no key");
        h.insert(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
        assert_eq!(websocket_key(&h), Some(&b"dGhlIHNhbXBsZSBub25jZQ=="[..]));
        h.insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert_eq!(websocket_key(&h), None, "only version 13");
        // RFC 6455's example.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
