//! What hostile clients tried, and what edgepin does about it: each test is an attack
//! from the hardening review, replayed on loopback, with the behaviour that stops it.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::rude::{Rude, rude_backend};
use crate::harness::{Backend, Conn, Proxy, api_body, client};

fn four_backends() -> Vec<Backend> {
    (0..4).map(|i| Backend::start(&format!("b{i}"))).collect()
}

/// Whether the proxy logged any server going DOWN.
fn any_server_went_down(proxy: &Proxy) -> bool {
    proxy
        .proc
        .log()
        .lines()
        .any(|l| l.contains("server state changed") && l.contains("to=Down"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_handshakes_that_never_finish_are_counted_cut_and_cannot_exhaust_descriptors() {
    let backends = four_backends();
    let mut body = api_body(&backends.iter().collect::<Vec<_>>(), &[]);
    body = body.replace(
        "health: { interval: 1s, timeout: 500ms }",
        "health: { interval: 300ms, timeout: 200ms, fall: 2 }",
    );
    body.push_str("timeouts: { handshake: 2s }\n");
    let proxy = Proxy::builder(&body).fd_limit(1024).start();
    assert_eq!(client::get(&proxy.tls(), "/").await.unwrap().status, 200);

    // 1,100 clients open a TCP connection to :443 and never send a ClientHello.
    let mut silent = Vec::new();
    for _ in 0..1100 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(proxy.https)).await {
            silent.push(s);
        }
    }
    assert!(silent.len() >= 1000, "only {} connected", silent.len());
    // The proxy cuts every one of them at the handshake deadline (or at once, over the
    // cap); none is held for pingora's 60 s.
    let started = Instant::now();
    let mut open = silent.len();
    for s in &mut silent {
        let mut b = [0u8; 1];
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, s.read(&mut b)).await {
            open -= 1;
        }
    }
    assert_eq!(
        open,
        0,
        "connections still open {:?} after the flood",
        started.elapsed()
    );
    drop(silent);

    // Nothing ran out of descriptors: the health checks never failed, and the proxy serves.
    assert!(!any_server_went_down(&proxy), "{}", proxy.proc.log_tail(30));
    let mut conn = Conn::open(&proxy.tls()).await.unwrap();
    for _ in 0..8 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    let https = proxy.frontend_stats("https").await;
    let cut = https["handshake_timeouts"].as_u64().unwrap() + https["connections_refused"].as_u64().unwrap();
    assert!(cut >= 1000, "handshake timeouts + refused: {https}");
    assert!(
        !proxy.proc.log().contains("Too many open files"),
        "{}",
        proxy.proc.log_tail(30)
    );
}

/// Send `bytes` as one write from `from` and read until the proxy closes or `wait`
/// passes; what came back, and whether the proxy closed the connection.
async fn raw_from(addr: std::net::SocketAddr, from: &str, bytes: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::AsyncWriteExt;
    let target = crate::harness::Target::plain(addr).from(from);
    let mut s = client::connect(&target).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16384];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    raw_from(addr, "127.0.0.1", bytes, Duration::from_secs(3)).await
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn rude_fleet_body(servers: &[std::net::SocketAddr]) -> String {
    let names: Vec<String> = (0..servers.len()).map(|i| format!("r{i}")).collect();
    let mut y = format!(
        "routes:\n  - {{ path_prefix: /, backend: s }}\nbackends:\n  s: {{ balance: sticky, servers: [{}] }}\nservers:\n",
        names.join(", ")
    );
    for (name, addr) in names.iter().zip(servers) {
        y.push_str(&format!("  {name}: {{ address: {addr} }}\n"));
    }
    y.push_str("health: { interval: 300ms, timeout: 200ms, fall: 2 }\n");
    y
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_mismatched_upgrades_take_no_server_down() {
    let servers: Vec<_> = (0..4).map(|_| rude_backend(Rude::Always101)).collect();
    let proxy = Proxy::start(&rude_fleet_body(&servers));
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for i in 0..100 {
        // Upgrade: foo (not a WebSocket), and Upgrade: websocket answered with a 101 that
        // is no WebSocket handshake; from eight addresses, so every server gets some.
        let upgrade = if i % 2 == 0 { "foo" } else { "websocket" };
        let req = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n{key}\r\n"
        );
        let from = format!("127.0.0.{}", 1 + i % 8);
        let (answer, _) = raw_from(proxy.http, &from, req.as_bytes(), Duration::from_secs(3)).await;
        assert_eq!(
            status_of(&answer),
            502,
            "a 101 nobody asked for is refused, not relayed: {answer}"
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!any_server_went_down(&proxy), "{}", proxy.proc.log_tail(20));
    let b = proxy.backend_stats("s").await;
    for s in b["servers"].as_array().unwrap() {
        assert_eq!(s["status"], "UP", "{s}");
    }
    assert_eq!(client::get(&proxy.plain(), "/api").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_server_answers_504_at_the_server_timeout_with_or_without_upgrade() {
    let server = rude_backend(Rude::Hang);
    let body = rude_fleet_body(&[server]).replace("routes:", "timeouts: { server: 1s }\nroutes:");
    let proxy = Proxy::start(&body);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for extra in [
        "",
        "Upgrade: foo\r\nConnection: Upgrade\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\n",
    ] {
        let req = format!("GET /hang?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n{extra}{key}\r\n");
        let started = Instant::now();
        let (answer, closed) = raw_from(proxy.http, "127.0.0.1", req.as_bytes(), Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert_eq!(status_of(&answer), 504, "{extra:?}: {answer}");
        assert!(took < Duration::from_secs(4), "{extra:?}: 504 after {took:?}");
        let lower = answer.to_ascii_lowercase();
        assert!(
            lower.contains("connection: close"),
            "a 504 edgepin closes after says so: {answer}"
        );
        assert!(
            !lower.contains("server:"),
            "no Server header on edgepin's answers: {answer}"
        );
        assert!(closed, "closed after the 504");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_endless_heads_cost_little_memory_and_get_431() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let pid = proxy.proc.pid();
    let rss = move || crate::harness::process::rss_bytes(pid);
    let before = rss();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    static MEGABYTE: [u8; 1 << 20] = [b'a'; 1 << 20];
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let addr = proxy.http;
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return 0;
            };
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ").await;
            let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(&MEGABYTE)).await;
            let mut answer = vec![0u8; 64];
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer)).await {
                Ok(Ok(n)) => status_of(&String::from_utf8_lossy(&answer[..n])),
                _ => 0,
            }
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if t.await.unwrap_or(0) == 431 {
            refused += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.await.unwrap();
    let growth = peak.saturating_sub(before);
    assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);
    // A client that keeps writing may see its connection reset before it reads the 431.
    assert!(refused >= 500, "only {refused} of 1000 read their 431");
    assert_eq!(client::get(&proxy.plain(), "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_heads_are_held_to_rfc_9112() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let bad: [(&str, u16); 7] = [
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
        ("GET foo HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        ("GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400),
    ];
    for (req, want) in bad {
        let (answer, closed) = raw(proxy.http, req.as_bytes()).await;
        assert_eq!(status_of(&answer), want, "{req:?} -> {answer}");
        assert!(closed, "closed after refusing {req:?}");
        assert!(!answer.to_ascii_lowercase().contains("server:"), "{answer}");
    }
    assert_eq!(a.hits(), 0, "none of them reached the server");
    // Absolute form without Host: routed by the URI's host, which the server gets as Host.
    let (answer, _) = raw(
        proxy.http,
        b"GET http://app.example/abs HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("\"host\":\"app.example\""), "{answer}");
    assert!(answer.contains("\"path\":\"/abs\""), "{answer}");
    // HTTP/1.0 without keep-alive: closed after the answer.
    let (answer, closed) = raw(proxy.http, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!((status_of(&answer), closed), (200, true), "{answer}");
    // Three pipelined GETs in one packet get three answers; a body does not leak into the
    // next request.
    let (answer, _) = raw(
        proxy.http,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n40GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    for path in ["/a", "/b", "/c"] {
        assert!(answer.contains(&format!("\"path\":\"{path}\"")), "{path} in {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_cannot_be_sidestepped_by_spelling_its_path_or_host_otherwise() {
    let (sockets, api) = (Backend::start("s"), Backend::start("api"));
    let body = format!(
        "routes:\n  - {{ host: app.example, path_prefix: /socket.io/, backend: s, websocket: false }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  s: {{ servers: [s] }}\n  api: {{ servers: [api] }}\nservers:\n  s: {{ address: {} }}\n  api: {{ address: {} }}\n",
        sockets.addr, api.addr
    );
    let proxy = Proxy::start(&body);
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for (path, host) in [
        ("/socket.io/", "app.example"),
        ("/%73ocket.io/", "app.example"),
        ("//socket.io/", "app.example"),
        ("/socket.io/", "App.Example."),
        ("/socket.io/", "app.example.:80"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n");
        let (answer, _) = raw(proxy.http, req.as_bytes()).await;
        assert_eq!(status_of(&answer), 403, "{path} {host}: {answer}");
        let get = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (answer, _) = raw(proxy.http, get.as_bytes()).await;
        assert!(
            answer.contains("\"server\":\"s\""),
            "{path} {host} went elsewhere: {answer}"
        );
        assert!(
            answer.contains(&format!("\"path\":\"{}\"", path.split('?').next().unwrap_or(path))) || path.contains("%"),
            "the target goes on as sent: {answer}"
        );
    }
    assert_eq!(api.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_forwarding_headers_are_removed_and_forwarded_is_set() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let req = "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\nForwarded: for=6.6.6.6\r\n\
               X-Client-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
               X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nTransfer_Encoding: chunked\r\n\r\n";
    let (answer, _) = raw_from(proxy.http, "127.0.0.9", req.as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)).expect("echo json");
    let headers = &json["headers"];
    assert!(!answer.contains("6.6.6.6"), "{headers}");
    for gone in [
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x_forwarded_for",
        "transfer_encoding",
    ] {
        assert!(headers.get(gone).is_none(), "{gone} reached the server: {headers}");
    }
    assert_eq!(headers["x-forwarded-for"], "127.0.0.9");
    assert_eq!(headers["x-real-ip"], "127.0.0.9");
    assert_eq!(headers["forwarded"], "for=127.0.0.9;proto=http;host=\"app.example\"");
}
