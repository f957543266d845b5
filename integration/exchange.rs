//! One request through the exchange, where a client and a server can each end it early:
//! a server that answers an upload before reading it, a client that leaves or trickles,
//! targets whose path the server would read otherwise than the routes.

use std::time::Duration;

use crate::harness::raw;
use crate::harness::redis::Redis;
use crate::harness::rude::{Rude, rude_backend};
use crate::harness::{Backend, Conn, Proxy, Worker};

/// Whether the proxy logged any server going DOWN.
fn any_server_went_down(proxy: &Proxy) -> bool {
    proxy
        .proc
        .log()
        .lines()
        .any(|l| l.contains("server state changed") && l.contains("to=Down"))
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_a_server_answers_early_get_its_answer_and_take_no_server_down() {
    let redis = Redis::start();
    let workers = [Worker::start("w1", &redis.url()), Worker::start("w2", &redis.url())];
    let refuser = rude_backend(Rude::RefuseBodies);
    let body = format!(
        "routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [w1, w2, r] }}\nservers:\n\
         \x20 w1: {{ address: {} }}\n  w2: {{ address: {} }}\n  r: {{ address: {refuser} }}\n\
         health: {{ interval: 300ms, timeout: 200ms, fall: 2 }}\n",
        workers[0].addr, workers[1].addr
    );
    let proxy = Proxy::start(&body);
    let addr = proxy.http;
    // 100 POSTs of 100 KB to /health at once: 20 KB, a pause, 20 KB more. The workers
    // (axum) answer 405 without reading the body and close; the raw server 413.
    let head = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
    let part = vec![b'x'; 20_000];
    let uploads: Vec<_> = (0..100)
        .map(|_| {
            let first = [&head[..], &part].concat();
            let part = part.clone();
            tokio::spawn(async move {
                raw::send(
                    addr,
                    &[&first, &part],
                    Duration::from_millis(200),
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    // GETs beside them, on keep-alive connections.
    let gets: Vec<_> = (0..4)
        .map(|_| {
            let target = proxy.plain();
            tokio::spawn(async move {
                let mut conn = Conn::open(&target).await.expect("connect");
                let mut statuses = Vec::new();
                for _ in 0..50 {
                    statuses.push(conn.get("/health").await.map_or(0, |r| r.status));
                }
                statuses
            })
        })
        .collect();
    let (mut refused, mut not_allowed) = (0, 0);
    for u in uploads {
        let answer = u.await.unwrap();
        match answer.status() {
            405 => not_allowed += 1,
            413 => refused += 1,
            other => panic!(
                "an uploader got {other}, not the server's answer: {}\n{}",
                answer.text,
                proxy.proc.log_tail(40)
            ),
        }
    }
    assert!(refused > 0 && not_allowed > 0, "413: {refused}, 405: {not_allowed}");
    for g in gets {
        let statuses = g.await.unwrap();
        assert!(
            statuses.iter().all(|&s| s == 200),
            "GETs beside the uploads: {statuses:?}"
        );
    }
    // Longer than two failed checks would take.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!any_server_went_down(&proxy), "{}", proxy.proc.log_tail(30));
    for s in proxy.backend_stats("api").await["servers"].as_array().unwrap() {
        assert_eq!(s["status"], "UP", "{s}");
        assert_eq!(s["counters"]["response_errors"], 0, "an early answer is no error: {s}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_with_a_fragment_or_dot_segments_are_refused_not_routed_otherwise_than_served() {
    let (nows, sockets) = (Backend::start("nows"), Backend::start("sockets"));
    let body = format!(
        "routes:\n  - {{ path_prefix: /nows/, backend: nows, websocket: false }}\n  - {{ path_prefix: /, backend: sockets }}\n\
         backends:\n  nows: {{ servers: [nows] }}\n  sockets: {{ servers: [sockets] }}\n\
         servers:\n  nows: {{ address: {} }}\n  sockets: {{ address: {} }}\n",
        nows.addr, sockets.addr
    );
    let proxy = Proxy::start(&body);
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let wait = Duration::from_secs(3);
    // The server cuts the path at `#` (or takes the dot-segments literally) and would
    // serve /nows/ a WebSocket that route refuses.
    for target in [
        "/nows/#/../../socket.io/",
        "/nows/../socket.io/",
        "/nows/%2e%2e/socket.io/",
        "/nows/%2E%2e/socket.io/",
        "/nows/./../socket.io/",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{ws}\r\n");
        let answer = raw::send(proxy.http, &[req.as_bytes()], Duration::ZERO, wait).await;
        assert_eq!(answer.status(), 400, "{target}: {}", answer.text);
        let get = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = raw::send(proxy.http, &[get.as_bytes()], Duration::ZERO, wait).await;
        assert_eq!(answer.status(), 400, "{target}: {}", answer.text);
    }
    assert_eq!(nows.hits() + sockets.hits(), 0, "none reached a server");
    // Dots elsewhere are no dot-segments.
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for target in ["/a/..b/.c", "/socket.io/?EIO=4&x=/../.."] {
        let r = conn.get(target).await.unwrap();
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.json()["server"], "sockets", "{target}");
    }
    // The route still holds for the spelling servers read as it.
    let upgrade: Vec<String> = ws.lines().map(str::to_string).collect();
    let r = conn.request("GET", "/nows/x", &upgrade, b"").await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
}
