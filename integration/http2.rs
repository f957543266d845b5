//! edgepin's own HTTP/2 engine: what a client connection and an address may hold of the
//! servers (the stalled-stream lockout), the protocol limits a hostile client meets
//! (concurrent streams, header lists, CONTINUATION floods, streams reset for protocol
//! errors), cookies split over fields, and WebSockets over HTTP/2 (RFC 8441): from the h2
//! crate's client, with Engine.IO sid learning and a close frame on MAINT, and from
//! headless Chromium loading the worker's chat page over one connection.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::client;
use crate::harness::h2c::{self, Frame};
use crate::harness::process::rss_bytes;
use crate::harness::redis::Redis;
use crate::harness::{Backend, Proxy, Worker, api_body};

/// The server's sessions (streams or requests at it) now.
async fn sessions_at(proxy: &Proxy, server: usize) -> u64 {
    let stats = proxy.stats().await;
    stats["backends"][0]["servers"][server]["counters"]["sessions_current"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_h2_streams_hold_a_capped_share_of_the_servers_and_lock_no_client_out() {
    let backend = Backend::start("b0");
    let body = format!(
        "{}limits: {{ max_connections: 500, h2_streams_per_client: 64 }}\ntimeouts: {{ client: 10s }}\n",
        api_body(&[&backend], &[])
    );
    let proxy = Proxy::builder(&body).h2().start();
    // Four connections of 128 streams, each asking for 1 MiB and granting no window.
    let mut zero = h2::client::Builder::new();
    zero.initial_window_size(0);
    let mut conns = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..4 {
        let send = h2c::connect_with(proxy.https, &zero).await;
        for _ in 0..128 {
            let send = send.clone();
            streams.push(tokio::spawn(async move {
                let req = http::Request::get("https://localhost/big/1048576").body(()).unwrap();
                let (resp, _) = send.ready().await.ok()?.send_request(req, true).ok()?;
                let resp = resp.await.ok()?;
                if resp.status() != 200 {
                    return Some((resp.status().as_u16(), false));
                }
                // Never read: the answer cannot move until the proxy gives up on it.
                let mut body = resp.into_body();
                let reset = loop {
                    match body.data().await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) => break true,
                        None => break false,
                    }
                };
                Some((200, reset))
            }));
        }
        conns.push(send);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // At most each connection's own place plus the address's 64 streams reach the server.
    let held = sessions_at(&proxy, 0).await;
    assert!((4..=68).contains(&held), "streams at the server: {held}");
    // New clients, over HTTP/1.1 and HTTP/2, are served at once.
    let started = Instant::now();
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(3), client::get(&proxy.tls(), "/"))
            .await
            .expect("an HTTP/1.1 client waited for a place")
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let mut fresh = h2c::connect(proxy.https).await;
    let got = tokio::time::timeout(Duration::from_secs(3), h2c::get(&mut fresh, "/")).await;
    assert_eq!(got.ok().flatten().map(|r| r.0), Some(200), "a new h2 client");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    // Every stalled stream is given up within the stall deadline (10 s here); the
    // server's sessions come back.
    let mut reset = 0;
    for s in streams {
        let out = tokio::time::timeout(Duration::from_secs(20), s)
            .await
            .expect("stream ended");
        match out.unwrap() {
            Some((200, true)) => reset += 1,
            Some((503, _)) => {}
            other => panic!("stream ended as {other:?}"),
        }
    }
    assert!(reset >= 4, "answers given up: {reset}");
    assert!(
        crate::harness::eventually(Duration::from_secs(5), async || sessions_at(&proxy, 0).await == 0).await,
        "sessions still held"
    );
    drop(conns);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continuation_flood_is_cut_and_holds_no_memory() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let pid = proxy.proc.pid();
    let before = rss_bytes(pid);
    let mut codes = Vec::new();
    for _ in 0..4 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                let addr = proxy.https;
                tokio::spawn(async move {
                    let tls = h2c::tls(addr).await;
                    let (mut rd, mut wr) = tokio::io::split(tls);
                    // HEADERS without END_HEADERS, then CONTINUATION frames of valid
                    // fields that never end the block (small and large ones), until the
                    // proxy stops taking them.
                    let writer = tokio::spawn(async move {
                        let mut out = h2c::preface();
                        h2c::frame(&mut out, 0x1, 0x1, 1, &h2c::get_root());
                        let _ = wr.write_all(&out).await;
                        let mut small = Vec::new();
                        h2c::literal(&mut small, "x-flood", "a");
                        let mut large = Vec::new();
                        while large.len() < 16_000 {
                            h2c::literal(&mut large, "x-flood", &"a".repeat(100));
                        }
                        for i in 0..10_000 {
                            let mut f = Vec::new();
                            h2c::frame(&mut f, 0x9, 0, 1, if i % 2 == 0 { &small } else { &large });
                            if wr.write_all(&f).await.is_err() {
                                break;
                            }
                        }
                    });
                    let frames = h2c::read_frames(&mut rd, Duration::from_secs(10), |f| f.kind == 0x7).await;
                    writer.abort();
                    frames.iter().find_map(h2c::goaway_code)
                })
            })
            .collect();
        for t in batch {
            codes.push(t.await.unwrap());
        }
    }
    assert!(
        codes.iter().all(|c| *c == Some(0xb)),
        "GOAWAY(ENHANCE_YOUR_CALM) for each: {codes:?}"
    );
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(grown < 32 << 20, "the proxy grew by {} KiB", grown >> 10);
    assert_eq!(backend.hits(), 0, "no flooded request reached the server");
    let mut send = h2c::connect(proxy.https).await;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_past_the_concurrency_limit_are_refused() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let mut tls = h2c::tls(proxy.https).await;
    let mut out = h2c::preface();
    // 130 streams that stay open for 2 s each (GET /slow/2000).
    let mut block = vec![0x82u8, 0x87, 0x01, 0x09];
    block.extend_from_slice(b"localhost");
    block.push(0x04); // :path, literal without indexing, indexed name
    block.push(10);
    block.extend_from_slice(b"/slow/2000");
    for i in 0..130u32 {
        h2c::frame(&mut out, 0x1, 0x5, 1 + 2 * i, &block);
    }
    tls.write_all(&out).await.unwrap();
    let refused = |f: &Frame| f.kind == 0x3 && f.payload == 7u32.to_be_bytes();
    let mut seen = Vec::new();
    let frames = h2c::read_frames(&mut tls, Duration::from_secs(10), |f| {
        if refused(f) {
            seen.push(f.stream);
        }
        seen.len() == 2
    })
    .await;
    let mut refused_ids: Vec<u32> = frames.iter().filter(|f| refused(f)).map(|f| f.stream).collect();
    refused_ids.sort();
    assert_eq!(refused_ids, [257, 259], "REFUSED_STREAM past 128 open streams");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_lists_over_the_limit_get_431_and_the_connection_serves_on() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let mut send = h2c::connect(proxy.https).await;
    // Over `limits.max_header_bytes` (16 KiB): edgepin's 431.
    let req = http::Request::get("https://localhost/")
        .header("x-big", "a".repeat(20_000))
        .body(())
        .unwrap();
    assert_eq!(h2c::request(&mut send, req).await.map(|r| r.0), Some(431));
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
    // Over the HTTP/2 header list limit (twice that): refused by the HTTP/2 layer, in
    // CONTINUATION frames, never decoded whole.
    let mut tls = h2c::tls(proxy.https).await;
    let mut block = h2c::get_root();
    h2c::literal_long(&mut block, "x-huge", &vec![b'a'; 40_000]);
    let mut out = h2c::preface();
    let mut chunks = block.chunks(16_000).peekable();
    let mut first = true;
    while let Some(c) = chunks.next() {
        let end = if chunks.peek().is_none() { 0x4 } else { 0 };
        let kind = if first { 0x1 } else { 0x9 };
        let flags = if first { end | 0x1 } else { end };
        h2c::frame(&mut out, kind, flags, 1, c);
        first = false;
    }
    tls.write_all(&out).await.unwrap();
    let frames = h2c::read_frames(&mut tls, Duration::from_secs(5), |f| f.stream == 1).await;
    let answer = frames.iter().find(|f| f.stream == 1).expect("an answer on stream 1");
    assert!(
        answer.kind == 0x3 || (answer.kind == 0x1 && h2c::status_of(answer) != Some(200)),
        "refused: {answer:?}"
    );
    assert_eq!(backend.hits(), 1, "only the good request reached the server");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_reset_for_protocol_errors_end_the_connection() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let mut tls = h2c::tls(proxy.https).await;
    let mut out = h2c::preface();
    // A connection-specific field makes each request malformed (RFC 9113 §8.2.2).
    let mut block = h2c::get_root();
    h2c::literal(&mut block, "connection", "close");
    for i in 0..200u32 {
        h2c::frame(&mut out, 0x1, 0x5, 1 + 2 * i, &block);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.write_all(&out)).await;
    let frames = h2c::read_frames(&mut tls, Duration::from_secs(10), |f| f.kind == 0x7).await;
    assert_eq!(
        frames.iter().find_map(h2c::goaway_code),
        Some(0xb),
        "GOAWAY(ENHANCE_YOUR_CALM)"
    );
    assert_eq!(backend.hits(), 0, "no malformed request reached the server");
    let mut send = h2c::connect(proxy.https).await;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_split_over_h2_fields_reach_the_server_as_one_line() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let mut send = h2c::connect(proxy.https).await;
    let req = http::Request::get("https://localhost/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(())
        .unwrap();
    let (status, body) = h2c::request(&mut send, req).await.expect("an answer");
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["cookie"], "a=1; b=2; c=3", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    assert_eq!(seen["headers"]["host"], "localhost");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_authority_gets_400_and_the_connection_serves_on() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let mut send = h2c::connect(proxy.https).await;
    // Userinfo is no part of a Host (RFC 9110 §4.2.4); the http crate builds such a URI.
    let req = http::Request::get("https://a@evil.example/").body(()).unwrap();
    let (status, _) = h2c::request(&mut send, req).await.expect("an answer");
    assert_eq!(status, 400);
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_h2_reaches_its_server_and_maint_closes_it_with_a_frame() {
    let backend = Backend::start("b0");
    let body = format!(
        "routes:\n  - {{ path_prefix: /nows/, backend: api, websocket: false }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [b0] }}\nservers:\n  b0: {{ address: {} }}\nhealth: {{ interval: 1s, timeout: 500ms }}\n",
        backend.addr
    );
    let proxy = Proxy::builder(&body)
        .h2()
        .stats_auth("admin", "a-long-test-password")
        .start();
    let send = h2c::connect(proxy.https).await;
    // Two WebSockets and a REST call share one connection.
    let mut a = h2c::websocket(&send, "/ws/a").await.expect("a WebSocket over h2");
    let mut b = h2c::websocket(&send, "/ws/b").await.expect("a second one");
    for ws in [&mut a, &mut b] {
        let hello = ws.next().await.unwrap().unwrap();
        assert_eq!(hello, Message::Text("hello from b0".into()));
    }
    let big = vec![7u8; 300_000];
    a.send(Message::Binary(big.clone().into())).await.unwrap();
    b.send(Message::Text("over h2".into())).await.unwrap();
    assert_eq!(a.next().await.unwrap().unwrap(), Message::Binary(big.into()));
    assert_eq!(b.next().await.unwrap().unwrap(), Message::Text("over h2".into()));
    let mut rest = send.clone();
    assert_eq!(h2c::get(&mut rest, "/").await.map(|r| r.0), Some(200));
    let https = proxy.frontend_stats("https").await;
    assert_eq!(https["counters"]["sessions_total"], 1, "{https}");
    let server = proxy.server_stats("api", "b0").await;
    assert_eq!(server["counters"]["websocket"]["open"], 2, "{server}");
    // Not on a route without WebSockets, and no other protocol.
    assert_eq!(h2c::websocket(&send, "/nows/x").await.err(), Some(403));
    // MAINT closes both with a close frame (1001, going away).
    let r = proxy.admin("/admin/servers/b0/state", r#"{"state":"maint"}"#).await;
    assert_eq!(r.status, 200);
    for ws in [&mut a, &mut b] {
        assert_eq!(client::close_code(ws, Duration::from_secs(5)).await, Some(1001));
    }
    assert!(
        crate::harness::eventually(Duration::from_secs(5), async || backend.open_websockets() == 0).await,
        "the server's sockets are closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_first_engine_io_sessions_over_h2_are_learned_and_pinned() {
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=2).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    let body = format!(
        "routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: sockets }}\n\
         backends:\n  sockets: {{ balance: sticky, servers: [w1, w2] }}\nservers:\n  w1: {{ address: {} }}\n  w2: {{ address: {} }}\n\
         health: {{ interval: 1s, timeout: 500ms }}\n",
        workers[0].addr, workers[1].addr
    );
    let proxy = Proxy::builder(&body).h2().start();
    let send = h2c::connect(proxy.https).await;
    let mut sockets = Vec::new();
    for _ in 0..6 {
        let mut ws = h2c::websocket(&send, "/socket.io/?EIO=4&transport=websocket")
            .await
            .expect("Engine.IO over an h2 WebSocket");
        let open = ws.next().await.unwrap().unwrap().into_text().unwrap();
        let open: serde_json::Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
        let sid = open["sid"].as_str().unwrap().to_string();
        sockets.push((ws, sid));
    }
    // A request naming each session's sid goes to the server that issued it.
    let mut rest = send.clone();
    for (_, sid) in &sockets {
        let (_, body) = h2c::get(&mut rest, &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
            .await
            .expect("an answer");
        assert!(
            !String::from_utf8_lossy(&body).contains("Session ID unknown"),
            "sid {sid} went to the wrong worker"
        );
    }
    let stats = proxy.backend_stats("sockets").await;
    assert_eq!(stats["counters"]["sticky"]["sid"], 6, "{stats}");
    assert_eq!(stats["counters"]["websocket"]["open"], 6, "{stats}");
    // Socket.IO works over them.
    let (ws, _) = &mut sockets[0];
    ws.send(Message::Text("40".into())).await.unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let packet = ws.next().await.unwrap().unwrap().into_text().unwrap();
            // Engine.IO pings may come first.
            if packet.starts_with("40") {
                return packet;
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "no Socket.IO connect answer");
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the test certificate, for Chromium's
/// `--ignore-certificate-errors-spki-list` (the certificate is then trusted as valid).
fn test_cert_spki() -> String {
    use base64::Engine;
    let pem = std::fs::read(&crate::harness::certs().cert).unwrap();
    let der = rustls_pemfile::certs(&mut &pem[..]).next().unwrap().unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_runs_the_chat_page_and_its_websocket_over_one_h2_connection_across_workers() {
    use crate::harness::browser::Browser;
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=2).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    let body = format!(
        "routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: pages }}\n\
         backends:\n  sockets: {{ balance: sticky, cookie: EDGEPIN, servers: [w1, w2] }}\n  pages: {{ servers: [w1, w2] }}\n\
         servers:\n  w1: {{ address: {} }}\n  w2: {{ address: {} }}\nhealth: {{ interval: 1s, timeout: 500ms }}\n\
         timeouts: {{ handshake: 2s, keepalive: 2s }}\n",
        workers[0].addr, workers[1].addr
    );
    let proxy = Proxy::builder(&body)
        .h2()
        .env("RUST_LOG", "info,edgepin::access=info,pingora=error")
        .start();
    let origin = format!("https://localhost:{}", proxy.https.port());
    let spki = format!("--ignore-certificate-errors-spki-list={}", test_cert_spki());
    let mut pages = Vec::new();
    for (i, w) in ["w1", "w2"].iter().enumerate() {
        // A REST call first; then the page, pinned to worker `w` by its sticky cookie.
        let page = Browser::open_with(&format!("{origin}/api/whoami"), &[&spki]);
        let id = edgepin::sticky::cookie::server_id(w, None);
        let script = format!("document.cookie = 'EDGEPIN={id}; path=/'; location.href = '/?room=h2chat'; true");
        wait_eval(
            &page,
            "document.readyState === 'complete' && document.body.innerText.includes('\"id\"')",
        )
        .await;
        page.eval(&script).await.expect("navigate");
        let state = format!("document.getElementById('state').textContent.includes('worker {w} (websocket)')");
        wait_eval(&page, &state).await;
        wait_eval(&page, "document.getElementById('log').textContent.includes('joined')").await;
        // The page, its script, the REST call and the open WebSocket: one connection per
        // browser. (Chromium may race a second connection and leave it unused: with no
        // stream it is closed by the handshake or keep-alive deadline, 2 s here.)
        let one_each = crate::harness::eventually(Duration::from_secs(10), async || {
            proxy.frontend_stats("https").await["counters"]["sessions_current"] == i as u64 + 1
        })
        .await;
        let https = proxy.frontend_stats("https").await;
        assert!(one_each, "{https}\n{}\n{}", page.log_tail(20), proxy.proc.log_tail(40));
        let protocol = page
            .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
            .await;
        assert_eq!(protocol, Some(serde_json::json!("h2")));
        pages.push(page);
    }
    // A message from the page on w1 reaches the page on w2 (through Redis).
    pages[0]
        .eval("document.getElementById('msg').value = 'hello over h2'; document.getElementById('say').requestSubmit(); true")
        .await
        .expect("send");
    wait_eval(
        &pages[1],
        "document.getElementById('log').textContent.includes('hello over h2')",
    )
    .await;
    let stats = proxy.backend_stats("sockets").await;
    assert_eq!(stats["counters"]["websocket"]["open"], 2, "{stats}");
    let https = proxy.frontend_stats("https").await;
    assert_eq!(https["counters"]["sessions_current"], 2, "{https}");
    let served = https["requests_total"].as_u64().unwrap_or(0);
    assert!(served >= 8, "two pages, their scripts, REST calls and sockets: {https}");
}

/// Wait until `expression` is true in the page (30 s at most).
async fn wait_eval(page: &crate::harness::browser::Browser, expression: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if page.eval(expression).await == Some(serde_json::json!(true)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never true: {expression}\n{}",
            page.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
