//! The worker's HTTP side, beside Socket.IO on `/socket.io/`:
//!
//! - `GET /health`: 200 `{id, redis}` while this worker can serve its own clients, even
//!   with Redis down (a Redis outage must not make the proxy take every worker out at
//!   once); 503 only while the worker is stopping.
//! - `GET /ready`: 503 while Redis is down (rooms stop at this worker) or it is stopping.
//! - `GET /metrics`: Prometheus text.
//! - `GET /api/whoami` → `{id}`; `GET /api/rooms/{room}` → `{room, members}` counted on
//!   every worker; `POST /api/rooms/{room}/emit` `{event, data}` → emit to the room on
//!   every worker (how backend services push to clients); with `ack_timeout_ms`, also wait
//!   for the members' acknowledgements and return them as `acks`.
//! - Who may call the emit, `/metrics` and the member count is `access`'s decision (not
//!   through a proxy, or with `EDGEPIN_EMIT_TOKEN`).
//! - `GET /`: a small chat page (two tabs, one room) using the Socket.IO client bundled in
//!   the binary at `/assets/socket.io.min.js`.
//!
//! Errors are JSON `{error}` with a 4xx/5xx status; nothing here panics on bad input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};

use super::access::{self, Caller};
use super::events::{count_members, room_name, to_room};
use super::redis_link::LinkError;
use super::sio::packet;
use super::{MAX_PAYLOAD, WorkerState};

/// Longest event name accepted by the REST emit.
const MAX_EVENT_LEN: usize = 64;
/// Longest wait for acknowledgements a REST emit may ask for.
const MAX_ACK_TIMEOUT_MS: u64 = 30_000;

static DEMO_PAGE: &str = include_str!("assets/demo.html");
/// socket.io-client 4.8.1, the version in integration/node/package-lock.json (MIT, see
/// assets/socket.io-client.LICENSE), so the binary serves its demo with nothing fetched.
static CLIENT_JS: &str = include_str!("assets/socket.io.min.js");

#[derive(Clone)]
struct Api {
    worker: Arc<WorkerState>,
}

pub fn router(worker: Arc<WorkerState>) -> Router {
    Router::new()
        .route("/socket.io", any(socket_io))
        .route("/socket.io/", any(socket_io))
        .route("/socket.io/{*rest}", any(socket_io))
        .route("/", get(demo_page))
        .route("/assets/socket.io.min.js", get(client_js))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/whoami", get(whoami))
        .route("/api/rooms/{room}", get(room_members))
        .route("/api/rooms/{room}/emit", post(emit))
        .fallback(async || error(StatusCode::NOT_FOUND, "not found"))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD as usize))
        .with_state(Api { worker })
}

/// Engine.IO and Socket.IO (`sio`).
async fn socket_io(State(api): State<Api>, req: axum::extract::Request) -> Response {
    Arc::clone(&api.worker.io).serve(req).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn redis_state(worker: &WorkerState) -> &'static str {
    if worker.link.is_up() { "up" } else { "down" }
}

async fn demo_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DEMO_PAGE,
    )
        .into_response()
}

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

async fn health(State(api): State<Api>) -> Response {
    let w = &api.worker;
    let body = json!({ "id": w.id, "redis": redis_state(w) });
    let status = if w.is_stopping() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

async fn ready(State(api): State<Api>) -> Response {
    let w = &api.worker;
    let body = json!({ "id": w.id, "redis": redis_state(w) });
    let status = if w.is_stopping() || !w.link.is_up() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

/// The answer for this caller if `access`'s `rule` keeps it out.
fn refused(
    rule: fn(Option<&access::EmitToken>, Caller, &HeaderMap) -> Result<(), access::Refusal>,
    worker: &WorkerState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Option<Response> {
    let caller = Caller::of(peer, headers);
    rule(worker.emit_token.as_ref(), caller, headers)
        .err()
        .map(|(status, why)| error(status, why))
}

async fn metrics(State(api): State<Api>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(access::ops, &api.worker, peer, &headers) {
        return refusal;
    }
    // Every socket is in the room named by its id; those are not rooms to a reader.
    let named = api.worker.io.joined_rooms();
    api.worker.metrics.rooms.set(named as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        api.worker.metrics.render(),
    )
        .into_response()
}

async fn whoami(State(api): State<Api>) -> Response {
    axum::Json(json!({ "id": api.worker.id })).into_response()
}

async fn room_members(
    State(api): State<Api>,
    Path(room): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refused(access::ops, &api.worker, peer, &headers) {
        return refusal;
    }
    if let Err(e) = room_name(&Json::String(room.clone())) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    match count_members(&api.worker, &room).await {
        Ok(members) => axum::Json(json!({ "room": room, "members": members })).into_response(),
        Err((e, local)) => {
            let status = match e {
                LinkError::Incomplete { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = json!({
                "room": room,
                "error": format!("cannot count members on other workers: {e}"),
                "local_members": local,
            });
            (status, axum::Json(body)).into_response()
        }
    }
}

async fn emit(
    State(api): State<Api>,
    Path(room): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = refused(access::emit, &api.worker, peer, &headers) {
        return refusal;
    }
    if let Err(e) = room_name(&Json::String(room.clone())) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let emit = match parse_emit(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut reply = json!({ "ok": true, "redis": redis_state(&api.worker) });
    let (adapter, to) = (&api.worker.adapter, to_room(&room));
    let packet = packet::event(&json!([emit.event, emit.data]), None, None);
    match emit.ack_timeout {
        None => adapter.broadcast(&packet, &to),
        Some(timeout) => {
            let acks = adapter.broadcast_with_ack(&packet, &to, timeout).await;
            let acks: Vec<Json> = acks
                .filter_map(|(_, ack)| async move { ack.ok().as_ref().and_then(packet::first_arg) })
                .collect()
                .await;
            reply["acks"] = acks.into();
        }
    }
    axum::Json(reply).into_response()
}

/// A checked emit request.
#[derive(Debug, PartialEq)]
struct Emit {
    event: String,
    data: Json,
    /// Wait this long for the members' acks and return them.
    ack_timeout: Option<Duration>,
}

/// `{event, data, ack_timeout_ms}`: the event name is a non-reserved string of 1 to 64
/// bytes; `data` may be any JSON value (null when absent); `ack_timeout_ms` (1 to 30,000)
/// asks for the members' acknowledgements.
fn parse_emit(body: &[u8]) -> Result<Emit, String> {
    let mut v: Json = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let data = v.get_mut("data").map(Json::take).unwrap_or(Json::Null);
    let event = match v.get("event").and_then(Json::as_str) {
        None => return Err("body needs an \"event\" string".into()),
        Some("") => return Err("event must not be empty".into()),
        Some(e) if e.len() > MAX_EVENT_LEN => return Err(format!("event is longer than {MAX_EVENT_LEN} bytes")),
        // Events the client keeps for itself are refused, as Node does.
        Some(e) if super::sio::packet::RESERVED_EVENTS.contains(&e) => {
            return Err(format!("{e:?} is a reserved event name"));
        }
        Some(e) => e.to_string(),
    };
    let ack_timeout = match v.get("ack_timeout_ms") {
        None | Some(Json::Null) => None,
        Some(ms) => match ms.as_u64() {
            Some(ms @ 1..=MAX_ACK_TIMEOUT_MS) => Some(Duration::from_millis(ms)),
            _ => return Err(format!("ack_timeout_ms must be 1 to {MAX_ACK_TIMEOUT_MS}")),
        },
    };
    Ok(Emit {
        event,
        data,
        ack_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_bodies_are_checked() {
        let emit = |event: &str, data: Json, ack_ms: Option<u64>| Emit {
            event: event.into(),
            data,
            ack_timeout: ack_ms.map(Duration::from_millis),
        };
        assert_eq!(
            parse_emit(br#"{"event":"news","data":{"a":1}}"#),
            Ok(emit("news", json!({"a": 1}), None))
        );
        assert_eq!(parse_emit(br#"{"event":"ping"}"#), Ok(emit("ping", Json::Null, None)));
        assert_eq!(
            parse_emit(br#"{"event":"poll","ack_timeout_ms":500}"#),
            Ok(emit("poll", Json::Null, Some(500)))
        );
        for bad in [
            &br#"{"data":1}"#[..],
            br#"{"event":""}"#,
            br#"{"event":"disconnect"}"#,
            br#"{"event":7}"#,
            br#"{"event":"e","ack_timeout_ms":0}"#,
            br#"{"event":"e","ack_timeout_ms":"1s"}"#,
            br#"{"event":"e","ack_timeout_ms":30001}"#,
            b"not json",
            b"[]",
        ] {
            assert!(parse_emit(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_emit(format!(r#"{{"event":"{}"}}"#, "e".repeat(65)).as_bytes()).is_err());
    }
}
