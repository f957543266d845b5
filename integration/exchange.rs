//! One request through the exchange, where a client and a server can each end it early:
//! a server that answers an upload before reading it, a client that leaves or trickles,
//! targets whose path the server would read otherwise than the routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::client::{self, get};
use crate::harness::raw;
use crate::harness::redis::Redis;
use crate::harness::rude::{Rude, rude_backend};
use crate::harness::{Backend, Conn, Proxy, Worker};

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
    assert!(!proxy.any_server_went_down(), "{}", proxy.proc.log_tail(30));
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

/// A server on loopback that answers `GET /health` itself and hands every other
/// request's connection, with the request's head, to `serve` (plain tokio, in the test's
/// runtime).
fn scripted<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let serve = Arc::clone(&serve);
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else { return };
                if head.starts_with("GET /health") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                        .await;
                    return;
                }
                serve(s, head).await;
            });
        }
    });
    addr
}

/// A request head from `s` (read a byte at a time, so nothing after it is taken).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 65536 || s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// One request on a connection of its own; the answer until the proxy closes (5 s at most).
async fn ask(proxy: SocketAddr, request: &str) -> raw::Answer {
    raw::send(proxy, &[request.as_bytes()], Duration::ZERO, Duration::from_secs(5)).await
}

fn one_server(addr: SocketAddr, extra: &str) -> String {
    format!(
        "routes:\n  - {{ path_prefix: /, backend: b }}\nbackends:\n  b: {{ servers: [s] }}\n\
         servers:\n  s: {{ address: {addr}{extra} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_upload_holds_no_server_slot_and_a_slow_one_is_cut() {
    let backend = Backend::start("b");
    let body = format!(
        "{}timeouts: {{ client: 1s, queue: 300ms }}\n",
        one_server(backend.addr, ", max_connections: 1")
    );
    let proxy = Proxy::start(&body);
    let addr = proxy.http;
    // A body of up to 64 KiB (40 KB here: 30 KB, then one byte every 200 ms): no server
    // slot is taken while it comes.
    let small = tokio::spawn(async move {
        let first = [
            &b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n"[..],
            &vec![b'x'; 30_000],
        ]
        .concat();
        let bytes: Vec<&[u8]> = std::iter::once(&first[..]).chain((0..30).map(|_| &b"x"[..])).collect();
        raw::send(addr, &bytes, Duration::from_millis(200), Duration::from_secs(8)).await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(&proxy.plain(), "/beside").await.expect("GET");
    assert_eq!(r.status, 200, "a GET beside a trickled small upload: {}", r.text());
    let small = small.await.unwrap();
    assert_eq!(
        small.status(),
        408,
        "a body slower than the minimum pace: {}",
        small.text
    );
    // A large body streams (it takes the slot), then trickles: it is cut within two
    // `timeouts.client` windows, and the slot is free again.
    let large = tokio::spawn(async move {
        let first = [
            &b"POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"[..],
            &vec![b'x'; 70_000],
        ]
        .concat();
        let bytes: Vec<&[u8]> = std::iter::once(&first[..]).chain((0..40).map(|_| &b"x"[..])).collect();
        raw::send(addr, &bytes, Duration::from_millis(200), Duration::from_secs(10)).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = get(&proxy.plain(), "/while-held").await.expect("GET");
    assert_eq!(held.status, 503, "the streaming upload holds the only slot");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let r = get(&proxy.plain(), "/after").await.expect("GET");
    assert_eq!(r.status, 200, "the slow upload still holds the slot: {}", r.text());
    let large = large.await.unwrap();
    assert!(large.closed, "the slow upload was cut: {large:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_whose_client_left_frees_its_server_connection() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = scripted(move |mut s, _head| {
        let tx = tx.clone();
        async move {
            // Hold the poll: no answer; report when the proxy closes this connection.
            let started = std::time::Instant::now();
            let mut buf = [0u8; 1024];
            let closed = tokio::time::timeout(Duration::from_secs(8), async {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await
            .is_ok();
            let _ = tx.send((closed, started.elapsed()));
        }
    });
    let proxy = Proxy::start(&one_server(server, ""));
    let mut client = client::connect(&proxy.plain()).await.unwrap();
    client
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(client);
    let (closed, held) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the server saw the poll")
        .unwrap();
    assert!(closed, "the server connection outlived its client (held {held:?})");
    assert!(held < Duration::from_secs(3), "held {held:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn interim_answers_reach_http_1_1_clients_only() {
    let proxy = Proxy::start(&one_server(odd_answers(), ""));
    let old = ask(proxy.http, "GET /hints HTTP/1.0\r\nHost: x\r\n\r\n").await;
    assert!(old.text.starts_with("HTTP/1.1 200 "), "HTTP/1.0 client: {}", old.text);
    assert!(!old.text.contains(" 103 "), "{}", old.text);
    let new = ask(
        proxy.http,
        "GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(new.text.starts_with("HTTP/1.1 103 "), "HTTP/1.1 client: {}", new.text);
    assert!(new.text.contains("\r\n\r\nHTTP/1.1 200 "), "{}", new.text);
}

/// A server with answers of odd shapes: `/hints` (a 103 first), `/twice` and `/list`
/// (the same Content-Length twice), anything else (two different ones).
fn odd_answers() -> SocketAddr {
    scripted(|mut s, head| async move {
        let answer: &[u8] = if head.starts_with("GET /hints") {
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else if head.starts_with("GET /twice") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        } else if head.starts_with("GET /list") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok"
        };
        let _ = s.write_all(answer).await;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_duplicate_content_lengths_from_a_server_are_merged() {
    let proxy = Proxy::start(&one_server(odd_answers(), ""));
    for target in ["/twice", "/list"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let a = ask(proxy.http, &req).await;
        assert_eq!(a.status(), 200, "{target}: {}", a.text);
        let lengths: Vec<&str> = a
            .text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        assert_eq!(lengths.len(), 1, "{target}: {}", a.text);
        assert_eq!(lengths[0].split(':').nth(1).map(str::trim), Some("2"), "{target}");
    }
    let differ = ask(
        proxy.http,
        "GET /differ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(differ.status(), 502, "{}", differ.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_some_servers_trust_are_stripped_from_untrusted_peers_as_configured() {
    let backend = Backend::start("b");
    let sent: Vec<String> = [
        "X-Cluster-Client-IP: 10.1.1.1",
        "Fastly-Client-IP: 10.1.1.2",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-Keep: yes",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let received = |proxy: Proxy| {
        let sent = sent.clone();
        async move {
            let mut conn = Conn::open(&proxy.plain()).await.unwrap();
            let r = conn.request("GET", "/h", &sent, b"").await.unwrap();
            assert_eq!(r.status, 200);
            r.json()["headers"].clone()
        }
    };
    let by_default = received(Proxy::start(&one_server(backend.addr, ""))).await;
    for name in [
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert!(by_default.get(name).is_none(), "{name} passed: {by_default}");
    }
    assert_eq!(by_default["x-keep"], "yes");
    let listed = format!("{}strip_from_untrusted: [X-Keep]\n", one_server(backend.addr, ""));
    let configured = received(Proxy::start(&listed)).await;
    assert!(configured.get("x-keep").is_none(), "{configured}");
    assert_eq!(configured["x-original-url"], "/admin", "{configured}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_while_the_body_still_comes_lingers_instead_of_resetting() {
    let backend = Backend::start("b");
    let body = format!("{}limits: {{ max_body_bytes: 1000 }}\n", one_server(backend.addr, ""));
    let proxy = Proxy::start(&body);
    let head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n";
    let part = vec![b'x'; 256 * 1024];
    let mut s = client::connect(&proxy.plain()).await.unwrap();
    s.write_all(head).await.unwrap();
    // A client sends its body before it reads (curl and most libraries do): a write that
    // fails on a reset is where such a client gives up, answer unread.
    let mut failed_write = None;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = s.write_all(&part).await {
            failed_write = Some((i, e.kind()));
            break;
        }
    }
    let a = raw::read_until_close(&mut s, Duration::from_secs(8)).await;
    assert_eq!(failed_write, None, "the body after the refusal was not drained");
    assert_eq!(a.status(), 413, "{}", a.text);
    assert!(a.closed, "closed after lingering: {a:?}");
    assert!(!a.reset, "the refused body was drained, not reset: {a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_connect_time_is_the_connect_not_the_answer() {
    let backend = Backend::start("b");
    let proxy = Proxy::builder(&one_server(backend.addr, ""))
        .env("RUST_LOG", "info,pingora=error")
        .start();
    assert_eq!(get(&proxy.plain(), "/slow/600").await.unwrap().status, 200);
    crate::harness::eventually(Duration::from_secs(3), async || {
        proxy.proc.log().contains("edgepin::access")
    })
    .await;
    let log = proxy.proc.log();
    let line = log.lines().find(|l| l.contains("edgepin::access")).expect("a line");
    let field = |name: &str| -> f64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"));
        let value = line[at + name.len() + 1..].split_whitespace().next().unwrap();
        value.parse().unwrap_or_else(|_| panic!("{name}={value}"))
    };
    let (connect, ttfb) = (field("connect_ms"), field("ttfb_ms"));
    assert!(ttfb >= 600.0, "{line}");
    assert!(connect < 300.0, "connect_ms is the connect, not the answer: {line}");
}
