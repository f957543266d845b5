//! The worker against clients that prove nothing: oversized WebSocket messages, binary
//! attachments announced and never sent (on WebSocket and long-polling), and the REST
//! emit and ops endpoints asked through the proxy. Raw Engine.IO clients send what
//! socket.io-client never would.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::client::{self, Conn, Target};
use crate::harness::redis::Redis;
use crate::harness::{Proxy, SioClients, Worker};

const WAIT: Duration = Duration::from_secs(10);
/// The worker's deadline for announced attachments (`ATTACHMENT_DEADLINE`).
const ATTACHMENT_DEADLINE: Duration = Duration::from_secs(10);
/// Growth of the worker's resident memory the attacks below must stay under.
const MEMORY_BOUND: u64 = 64 << 20;

/// A raw Engine.IO 4 / Socket.IO 5 client over WebSocket, connected to namespace `/`.
struct RawSocket {
    ws: tokio_tungstenite::WebSocketStream<client::Stream>,
}

impl RawSocket {
    async fn connect(worker: &Worker) -> RawSocket {
        let target = Target::plain(worker.addr);
        let mut ws = client::websocket(&target, "/socket.io/?EIO=4&transport=websocket")
            .await
            .expect("WebSocket to the worker");
        let open = next_text(&mut ws).await.expect("open packet");
        assert!(open.starts_with("0{"), "{open}");
        ws.send(Message::text("40")).await.expect("connect to /");
        let connected = next_text(&mut ws).await.expect("CONNECT answer");
        assert!(connected.starts_with("40{"), "{connected}");
        RawSocket { ws }
    }

    /// Send; false once the worker has closed the connection.
    async fn send(&mut self, message: Message) -> bool {
        self.ws.send(message).await.is_ok()
    }

    /// Whether the worker closes the connection within `timeout` (pings are answered
    /// meanwhile, so only the worker's own decision can end it).
    async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    let _ = self.ws.send(Message::text("3")).await;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The next text packet other than a ping (which is answered).
async fn next_text(ws: &mut tokio_tungstenite::WebSocketStream<client::Stream>) -> Option<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) if t.as_str() == "2" => ws.send(Message::text("3")).await.ok()?,
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// `say(room, <n placeholders>)` announcing `n` binary attachments.
fn binary_say(room: &str, n: usize) -> String {
    let placeholders: Vec<Json> = (0..n).map(|i| json!({"_placeholder": true, "num": i})).collect();
    format!("45{n}-{}", json!(["say", room, placeholders]))
}

/// The worker process's resident memory and its peak since the last reset, in bytes
/// (VmRSS and VmHWM of /proc/PID/status).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("worker status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Start measuring the peak anew (VmHWM back to VmRSS); the resident memory now.
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the worker's VmHWM");
    memory(pid).0
}

fn metric(w: &Worker, name: &str) -> Option<f64> {
    let (_, text) = w.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn oversized_messages_and_unfinished_attachments_cost_little_memory_and_cut_their_sockets() {
    let redis = Redis::start();
    let w = Worker::start("w1", &redis.url());
    let mut c = SioClients::start();
    c.connect("a", &w.url());
    c.connect("b", &w.url());
    c.join("a", "room");
    c.join("b", "room");
    let baseline = reset_peak(w.proc.pid());

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (oversized, heavy, stalled) = runtime.block_on(async {
        // 20 sockets each send one 10 MB message to the room (the limit is 1 MB).
        let big = format!("42{}", json!(["say", "room", "x".repeat(10 << 20)]));
        let oversized = futures_util::future::join_all((0..20).map(|_| {
            let big = big.clone();
            let w = &w;
            async move {
                let mut s = RawSocket::connect(w).await;
                s.send(Message::text(big)).await;
                s.closed_within(WAIT).await
            }
        }));
        // 20 sockets announce 10 attachments and send 9 of 600 KB (1 MB at most is held).
        let heavy = futures_util::future::join_all((0..20).map(|_| {
            let w = &w;
            async move {
                let mut s = RawSocket::connect(w).await;
                s.send(Message::text(binary_say("room", 10))).await;
                for _ in 0..9 {
                    if !s.send(Message::binary(vec![7u8; 600_000])).await {
                        break;
                    }
                }
                s.closed_within(WAIT).await
            }
        }));
        // 5 sockets announce 2, send one and go quiet: cut at the deadline.
        let stalled = futures_util::future::join_all((0..5).map(|_| {
            let w = &w;
            async move {
                let mut s = RawSocket::connect(w).await;
                s.send(Message::text(binary_say("room", 2))).await;
                s.send(Message::binary(vec![1u8; 100_000])).await;
                let sent = Instant::now();
                let closed = s.closed_within(ATTACHMENT_DEADLINE + Duration::from_secs(5)).await;
                (closed, sent.elapsed())
            }
        }));
        tokio::join!(oversized, heavy, stalled)
    });
    let growth = memory(w.proc.pid()).1.saturating_sub(baseline);
    eprintln!(
        "worker resident memory: {} MiB at rest, peak +{} MiB under attack",
        baseline >> 20,
        growth >> 20
    );

    assert!(
        oversized.iter().all(|closed| *closed),
        "sockets sending 10 MB messages are cut: {oversized:?}"
    );
    assert!(
        heavy.iter().all(|closed| *closed),
        "sockets sending over 1 MB of attachments are cut: {heavy:?}"
    );
    for (closed, after) in &stalled {
        assert!(*closed, "a socket owing attachments is cut at the deadline");
        assert!(
            *after >= ATTACHMENT_DEADLINE - Duration::from_secs(1),
            "not before the deadline: {after:?}"
        );
    }
    assert!(
        growth < MEMORY_BOUND,
        "the worker's resident memory peaked {} MiB above its {} MiB",
        growth >> 20,
        baseline >> 20
    );

    // The normal clients noticed nothing: connected, and still getting their broadcasts.
    c.emit("a", "say", json!(["room", "after"]));
    for name in ["a", "b"] {
        assert!(
            c.wait_event(name, "said", WAIT, |a| a[0]["msg"] == "after"),
            "{name} still gets broadcasts"
        );
    }
    assert!(
        c.received("b", "said").iter().all(|a| a[0]["msg"] == "after"),
        "no oversized or unfinished message was broadcast"
    );
    let deadline = Instant::now() + WAIT;
    while metric(&w, "edgepin_worker_sockets") != Some(2.0) {
        assert!(Instant::now() < deadline, "every cut socket is gone");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&w, "edgepin_worker_attachments_overdue_total"), Some(5.0));
}

/// One HTTP request on `conn`, failing the test on a transport error.
async fn polling(conn: &mut Conn, method: &'static str, sid: Option<&str>, body: &[u8]) -> client::Response {
    let mut path = "/socket.io/?EIO=4&transport=polling".to_string();
    if let Some(sid) = sid {
        path.push_str("&sid=");
        path.push_str(sid);
    }
    conn.request(method, &path, &["Content-Type: text/plain;charset=UTF-8".into()], body)
        .await
        .expect("polling request")
}

#[test]
fn a_polling_session_that_leaves_attachments_unfinished_is_closed_at_the_deadline() {
    use base64::Engine;
    let redis = Redis::start();
    let w = Worker::start("w1", &redis.url());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let target = Target::plain(w.addr);
        let mut conn = Conn::open(&target).await.expect("connect");
        let open = polling(&mut conn, "GET", None, b"").await.text();
        let handshake: Json = serde_json::from_str(open.trim_start_matches('0')).expect("handshake");
        let sid = handshake["sid"].as_str().expect("sid").to_string();
        assert_eq!(polling(&mut conn, "POST", Some(&sid), b"40").await.status, 200);
        // Poll until the CONNECT answer (a ping may come first: answered).
        let deadline = Instant::now() + WAIT;
        loop {
            let got = polling(&mut conn, "GET", Some(&sid), b"").await.text();
            let packets: Vec<&str> = got.split('\x1e').collect();
            if packets.contains(&"2") {
                assert_eq!(polling(&mut conn, "POST", Some(&sid), b"3").await.status, 200);
            }
            if packets.iter().any(|p| p.starts_with("40{")) {
                break;
            }
            assert!(Instant::now() < deadline, "no CONNECT answer: {got}");
        }

        // One complete binary packet: nothing owed.
        let one = base64::engine::general_purpose::STANDARD.encode(b"fine");
        let complete = format!("{}\x1eb{one}", binary_say("room", 1));
        assert_eq!(
            polling(&mut conn, "POST", Some(&sid), complete.as_bytes()).await.status,
            200
        );
        // Two announced, one sent.
        let owing = format!("{}\x1eb{one}", binary_say("room", 2));
        assert_eq!(
            polling(&mut conn, "POST", Some(&sid), owing.as_bytes()).await.status,
            200
        );
        let sent = Instant::now();

        // A long-poll held meanwhile ends when the session does (not at the 25 s ping):
        // polls go on until the session is gone (a noop can end a poll first; pings are
        // answered), which must not be before the deadline.
        let mut held = Conn::open(&target).await.expect("connect");
        let until = sent + ATTACHMENT_DEADLINE + Duration::from_secs(5);
        let mut seen = Vec::new();
        for _ in 0..50 {
            let left = until.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(left, polling(&mut held, "GET", Some(&sid), b""))
                .await
                .unwrap_or_else(|_| panic!("the session outlived its deadline; polls got {seen:?}"));
            let text = got.text();
            seen.push((sent.elapsed(), got.status, text.clone()));
            if got.status != 200 || text.split('\x1e').any(|p| p == "1") {
                break;
            }
            if text.split('\x1e').any(|p| p == "2") {
                assert_eq!(polling(&mut conn, "POST", Some(&sid), b"3").await.status, 200);
            }
        }
        let (ended, ..) = seen.last().cloned().expect("a poll");
        assert!(
            ended >= ATTACHMENT_DEADLINE - Duration::from_secs(1),
            "the session ended after {ended:?}; polls got {seen:?}"
        );
        let after = polling(&mut conn, "GET", Some(&sid), b"").await;
        assert_eq!(after.status, 400, "{}", after.text());
        assert!(after.text().contains("Session ID unknown"), "{}", after.text());
    });
    assert_eq!(metric(&w, "edgepin_worker_attachments_overdue_total"), Some(1.0));
}

/// A request to `target` with extra header lines.
fn request(target: Target, method: &'static str, path: &str, body: &str, headers: &[&str]) -> client::Response {
    crate::harness::blocking_json(target, method, path, body, headers)
}

/// The worker's three guarded endpoints: the emit, `/metrics`, a member count. Their
/// statuses for a request with these headers.
fn guarded(target: &Target, headers: &[&str]) -> [u16; 3] {
    let emit = r#"{"event":"flash","data":"x"}"#;
    [
        request(target.clone(), "POST", "/api/rooms/news/emit", emit, headers).status,
        request(target.clone(), "GET", "/metrics", "", headers).status,
        request(target.clone(), "GET", "/api/rooms/news", "", headers).status,
    ]
}

#[test]
fn the_emit_and_ops_endpoints_refuse_proxied_requests_and_serve_direct_ones_and_token_holders() {
    let redis = Redis::start();
    let open = Worker::start("w1", &redis.url());
    let tokened = Worker::start_with_env("w2", &redis.url(), &[("EDGEPIN_EMIT_TOKEN", "s3cret")]);
    let proxy_for = |w: &Worker| {
        Proxy::builder(&format!(
            "routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [{0}] }}\n\
             servers:\n  {0}: {{ address: {1} }}\nhealth: {{ interval: 1s, timeout: 500ms }}\n",
            w.id, w.addr
        ))
        .no_https()
        .start()
    };
    let (p1, p2) = (proxy_for(&open), proxy_for(&tokened));
    let mut c = SioClients::start();
    c.connect("a", &open.url());
    c.join("a", "news");

    // Through the proxy (it sets X-Forwarded-For): the emit is refused, the ops
    // endpoints are not there; the rest of the API and the demo page are.
    let through = Target::plain(p1.http);
    assert_eq!(guarded(&through, &[]), [403, 404, 404]);
    assert_eq!(request(through.clone(), "GET", "/api/whoami", "", &[]).status, 200);
    assert_eq!(request(through.clone(), "GET", "/", "", &[]).status, 200);
    // Straight to the worker with any forwarding header: the same.
    let direct = Target::plain(open.addr);
    for header in [
        "X-Forwarded-For: 203.0.113.9",
        "Forwarded: for=203.0.113.9",
        "X-Real-IP: 203.0.113.9",
    ] {
        assert_eq!(guarded(&direct, &[header]), [403, 404, 404], "{header}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.received("a", "flash").is_empty(), "no forged event reached the room");
    // Straight from this host: served.
    assert_eq!(guarded(&direct, &[]), [200, 200, 200]);
    assert_eq!(guarded(&direct.clone().from("127.0.0.7"), &[]), [200, 200, 200]);
    assert!(c.wait_event("a", "flash", WAIT, |a| a[0] == "x"));

    // With a token: its holders are served through the proxy too; others get 401 / 404,
    // and direct callers need it for the emit only.
    let bearer = "Authorization: Bearer s3cret";
    assert_eq!(guarded(&Target::plain(p2.http), &[bearer]), [200, 200, 200]);
    assert_eq!(
        guarded(&Target::plain(p2.http), &["Authorization: Bearer nope"]),
        [401, 404, 404]
    );
    assert_eq!(guarded(&Target::plain(tokened.addr), &[]), [401, 200, 200]);

    // The demo page counts a room's members over Socket.IO instead, for rooms it is in.
    let counted = c.call("a", "members", json!(["news"]));
    assert_eq!(counted, json!({"ok": true, "room": "news", "members": 1}));
    let refused = c.call("a", "members", json!(["elsewhere"]));
    assert_eq!(refused["ok"], false, "{refused}");
}

#[test]
fn the_sockets_gauge_comes_back_to_zero_however_clients_come_and_go() {
    let redis = Redis::start();
    let w = Worker::start("w1", &redis.url());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let target = Target::plain(w.addr);
        futures_util::future::join_all((0..60).map(|i| {
            let target = target.clone();
            async move {
                let path = "/socket.io/?EIO=4&transport=websocket";
                let mut ws = client::websocket(&target, path).await.expect("WebSocket to the worker");
                next_text(&mut ws).await.expect("open packet");
                match i % 3 {
                    // CONNECT and an event in one segment, before the CONNECT answer.
                    0 => {
                        let _ = ws.feed(Message::text("40")).await;
                        let _ = ws.feed(Message::text(r#"42["join","r"]"#)).await;
                        let _ = ws.flush().await;
                    }
                    // Connected, then gone without a word.
                    1 => {
                        let _ = ws.send(Message::text("40")).await;
                        next_text(&mut ws).await;
                    }
                    // Connected, then a clean close.
                    _ => {
                        let _ = ws.send(Message::text("40")).await;
                        next_text(&mut ws).await;
                        let _ = ws.close(None).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
        .await;
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let sockets = metric(&w, "edgepin_worker_sockets");
        if sockets == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "edgepin_worker_sockets stays at {sockets:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
