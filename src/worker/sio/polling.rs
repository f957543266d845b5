//! A session on HTTP long-polling: the handshake GET opens it, each GET waits until
//! something is queued (or the session ends, or has moved to WebSocket) and takes it all,
//! each POST brings packets. One GET and one POST at a time, as in Node (an overlap ends
//! the session). Heartbeats are a small task per polling session, which ends once the
//! session upgrades to WebSocket.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::Instant;

use super::eio::{self, Outgoing, Refusal};
use super::receive::receive;
use super::session::{Closed, Session, Transport};
use super::{Io, service};

/// Open a polling session: the open packet.
pub fn open(io: &Arc<Io>) -> Response {
    let session = Arc::new(Session::new(Transport::Polling));
    io.register(&session);
    tokio::spawn(heartbeat(Arc::clone(io), Arc::clone(&session)));
    let c = &io.config;
    let open = eio::open_packet(
        session.sid.as_str(),
        true,
        c.ping_interval,
        c.ping_timeout,
        c.max_payload as u64,
    );
    packets(open)
}

/// Which request of a session is in progress.
#[derive(Clone, Copy)]
enum Kind {
    Get,
    Post,
}

/// Marks a GET or POST in progress for as long as it lives (a client that goes away mid-poll
/// frees the slot).
struct InProgress<'a>(&'a Session, Kind);

impl<'a> InProgress<'a> {
    /// None if one is already in progress, or the session has moved to WebSocket.
    fn start(session: &'a Session, kind: Kind) -> Result<InProgress<'a>, Closed> {
        let mut state = session.state();
        if state.transport == Transport::WebSocket {
            return Err(Closed::TransportError);
        }
        let busy = match kind {
            Kind::Get => &mut state.polling_get,
            Kind::Post => &mut state.polling_post,
        };
        if *busy {
            return Err(Closed::ProtocolError);
        }
        *busy = true;
        Ok(InProgress(session, kind))
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        match self.1 {
            Kind::Get => state.polling_get = false,
            Kind::Post => state.polling_post = false,
        }
    }
}

/// A long-poll: everything queued, as soon as there is something.
pub async fn get(io: Arc<Io>, session: Arc<Session>) -> Response {
    let _poll = match InProgress::start(&session, Kind::Get) {
        Ok(p) => p,
        Err(why) => return overlap(&io, &session, why),
    };
    let taken = poll_fn(|cx| {
        session.waker.register(cx.waker());
        let mut state = session.state();
        if !state.outbox.is_empty() {
            let mut packets = std::mem::take(&mut state.outbox);
            if state.closed.is_some() {
                packets.push_back(Outgoing::text("1"));
            }
            Poll::Ready(packets)
        } else if state.closed.is_some() {
            Poll::Ready([Outgoing::text("1")].into())
        } else if state.transport == Transport::WebSocket || state.upgrading {
            // During an upgrade every long-poll ends with a noop, as Node's check does
            // (every 100 ms there): the client may poll again before the probe's answer
            // reaches it, and then pauses polling only once that poll completes.
            Poll::Ready([Outgoing::text("6")].into())
        } else {
            Poll::Pending
        }
    })
    .await;
    tracing::trace!(sid = %session.id, packets = taken.len(), "long-poll answered");
    packets(eio::encode_payload(&taken))
}

/// Packets from the client.
pub async fn post(io: Arc<Io>, session: Arc<Session>, body: Body) -> Response {
    let _post = match InProgress::start(&session, Kind::Post) {
        Ok(p) => p,
        Err(why) => return overlap(&io, &session, why),
    };
    let body = match Limited::new(body, io.config.max_payload).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return service::plain(StatusCode::PAYLOAD_TOO_LARGE, "");
        }
        Err(_) => return service::refuse(Refusal::BadRequest),
    };
    match eio::decode_payload(&body) {
        Ok(incoming) => {
            for packet in incoming {
                if let Err(why) = receive(&io, &session, packet) {
                    io.close(&session, why);
                    break;
                }
            }
        }
        Err(_) => io.close(&session, Closed::ProtocolError),
    }
    let mut ok = service::plain(StatusCode::OK, "ok");
    ok.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html"));
    ok
}

/// A second GET or POST at once ends the session (Node: "overlap from client"); a request
/// of the polling transport after the upgrade is refused.
fn overlap(io: &Arc<Io>, session: &Arc<Session>, why: Closed) -> Response {
    if why == Closed::ProtocolError {
        io.close(session, why);
    }
    service::refuse(Refusal::BadRequest)
}

fn packets(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// Ping a polling session and close it when a pong, or the CONNECT, does not come in
/// time; hand over to the WebSocket task once the session upgrades.
async fn heartbeat(io: Arc<Io>, session: Arc<Session>) {
    let c = io.config.clone();
    let started = Instant::now();
    let over = |s: &Session| {
        let state = s.state();
        state.closed.is_some() || state.transport == Transport::WebSocket
    };
    loop {
        tokio::time::sleep(c.ping_interval).await;
        if over(&session) {
            return;
        }
        if !session.is_connected() && started.elapsed() >= c.connect_timeout {
            return io.close(&session, Closed::ConnectTimeout);
        }
        session.state().awaiting_pong = true;
        if let Err(why) = session.push(Outgoing::text("2")) {
            return io.close(&session, why);
        }
        tokio::time::sleep(c.ping_timeout).await;
        if over(&session) {
            return;
        }
        if session.state().awaiting_pong {
            return io.close(&session, Closed::PingTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use axum::extract::Request;

    use super::super::testing::server;
    use super::*;

    async fn call(io: &Arc<Io>, method: &str, query: &str, body: impl Into<Body>) -> (StatusCode, String, Response) {
        let req = Request::builder()
            .method(method)
            .uri(format!("/socket.io/?EIO=4&{query}"))
            .body(body.into())
            .unwrap();
        let response = Arc::clone(io).serve(req).await;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let text = String::from_utf8(axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec()).unwrap();
        (status, text, Response::from_parts(parts, Body::empty()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_polling_client_opens_connects_polls_posts_and_is_pinged() {
        let (io, hooks) = server();
        let (status, open, response) = call(&io, "GET", "transport=polling", "").await;
        assert_eq!(status, 200);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let handshake: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        assert_eq!(handshake["upgrades"], serde_json::json!(["websocket"]));
        let sid = handshake["sid"].as_str().unwrap().to_string();
        let on = |q: &str| format!("transport=polling&sid={sid}{q}");

        let (status, ok, response) = call(&io, "POST", &on(""), "40").await;
        assert_eq!((status, ok.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/html");
        let (_, connected, _) = call(&io, "GET", &on(""), "").await;
        assert!(connected.starts_with(r#"40{"sid":""#), "{connected}");
        call(&io, "POST", &on(""), "421[\"whoami\"]\x1e42[\"leave\",\"r\"]").await;
        assert_eq!(call(&io, "GET", &on(""), "").await.1, r#"431["ok"]"#);
        assert_eq!(hooks.args().len(), 2);

        // A held poll gets the ping; unanswered, it ends the session.
        let started = tokio::time::Instant::now();
        assert_eq!(call(&io, "GET", &on(""), "").await.1, "2");
        assert!(started.elapsed() >= Duration::from_secs(25));
        let (_, closed, _) = call(&io, "GET", &on(""), "").await;
        assert_eq!(closed, "1");
        assert!(started.elapsed() >= Duration::from_secs(45));
        let (status, unknown, _) = call(&io, "GET", &on(""), "").await;
        assert_eq!(
            (status, unknown.as_str()),
            (StatusCode::BAD_REQUEST, r#"{"code":1,"message":"Session ID unknown"}"#)
        );
        assert_eq!(hooks.disconnected.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn what_engine_io_refuses_is_refused_as_node_refuses_it() {
        let (io, _) = server();
        for (method, query, code) in [
            ("GET", "transport=polling&sid=AAAAAAAAAAAAAAAA", 1),
            ("GET", "transport=websocket&sid=AAAAAAAAAAAAAAAA", 1),
            ("POST", "transport=polling", 2),
            ("GET", "transport=carrier-pigeon", 0),
        ] {
            let (status, body, _) = call(&io, method, query, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {query}");
            assert!(
                body.starts_with(&format!(r#"{{"code":{code},"#)),
                "{method} {query}: {body}"
            );
        }
        let req = Request::get("/socket.io/?EIO=3&transport=polling")
            .body(Body::empty())
            .unwrap();
        assert_eq!(Arc::clone(&io).serve(req).await.status(), StatusCode::BAD_REQUEST);
        let (_, open, _) = call(&io, "GET", "transport=polling", "").await;
        let sid = &open[9..25];
        // A WebSocket request without the upgrade headers is refused, not served.
        let (status, _, _) = call(&io, "GET", &format!("transport=websocket&sid={sid}"), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Over the payload limit: 413, and the session goes on.
        let big = "4".repeat(1001);
        let (status, _, _) = call(&io, "POST", &format!("transport=polling&sid={sid}"), big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Garbage ends it.
        call(&io, "POST", &format!("transport=polling&sid={sid}"), "9").await;
        let (status, _, _) = call(&io, "GET", &format!("transport=polling&sid={sid}"), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "closed");

        // Two long-polls at once: the second is refused and the session ends (Node's
        // "overlap from client"), which answers the first.
        let (_, open, _) = call(&io, "GET", "transport=polling", "").await;
        let on = format!("transport=polling&sid={}", &open[9..25]);
        let first = tokio::spawn({
            let (io, on) = (Arc::clone(&io), on.clone());
            async move { call(&io, "GET", &on, "").await.1 }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(call(&io, "GET", &on, "").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(first.await.unwrap(), "1");
    }
}
