//! What a client can hold or slip past outside the request exchange (issue 21, items 3
//! and 4): chunk framing that outgrows the body limit, trailers that are not header
//! fields, idle keep-alive connections at `limits.max_connections`, the config an idle
//! connection's next request is routed by, and Host values that are not hosts.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hardening::status_of;
use crate::harness::{Conn, Proxy, Recorder, client};

/// A proxy in front of one recorder, with `extra` YAML appended.
fn recorded(recorder: &Recorder, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [r] }}\nservers:\n  r: {{ address: {} }}\n\
         health: {{ mode: tcp, interval: 5s }}\n{extra}",
        recorder.addr
    ))
}

/// Write `bytes` (ignoring a proxy that stops reading) and read until close or `wait`.
async fn exchange(target: &client::Target, bytes: Vec<u8>, wait: Duration) -> String {
    let s = client::connect(target).await.expect("connect");
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_extensions_cannot_carry_a_body_past_the_limit() {
    let recorder = Recorder::start().await;
    let proxy = recorded(&recorder, "limits: { max_body_bytes: 1048576 }\n");
    // 1,000 one-byte chunks with 4,000-byte extensions: 4 MB through a 1 MiB limit.
    let mut req = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = format!("1;{}\r\nx\r\n", "e".repeat(4000));
    for _ in 0..1000 {
        req.extend_from_slice(chunk.as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(&proxy.plain(), req, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        recorder.bytes() < 64 * 1024,
        "{} bytes reached the server",
        recorder.bytes()
    );
    assert_eq!(recorder.requests().len(), 0, "the request was not completed upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trailer_that_is_not_a_header_field_never_reaches_a_server() {
    let recorder = Recorder::start().await;
    let proxy = recorded(&recorder, "");
    let smuggle = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                    1\r\na\r\n0\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        .to_vec();
    let answer = exchange(&proxy.plain(), smuggle, Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    let forbidden = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                      1\r\na\r\n0\r\nContent-Length: 40\r\n\r\n"
        .to_vec();
    let answer = exchange(&proxy.plain(), forbidden, Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    // Valid trailers still pass, and the pooled server connections serve the next client.
    let fine = b"POST /fine HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                 1\r\na\r\n0\r\nX-Checksum: 1\r\n\r\n"
        .to_vec();
    let answer = exchange(&proxy.plain(), fine, Duration::from_secs(3)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    for _ in 0..3 {
        assert_eq!(client::get(&proxy.plain(), "/next").await.unwrap().status, 200);
    }
    assert!(!recorder.saw(b"/admin"), "{:#?}", recorder.arrivals());
    let fine = recorder
        .requests()
        .into_iter()
        .find(|r| r.target == "/fine")
        .expect("/fine arrived");
    assert_eq!(fine.trailers, vec![("x-checksum".to_string(), b"1".to_vec())]);
    assert!(recorder.requests().iter().all(|r| r.target != "/admin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_give_their_places_to_new_clients() {
    let backend = crate::harness::Backend::start("a");
    let mut body = crate::harness::api_body(&[&backend], &[]);
    body.push_str("limits: { max_connections: 50 }\ntimeouts: { client: 10s, keepalive: 60s }\n");
    let proxy = Proxy::start(&body);
    // 50 keep-alive connections, one request each, then idle: every place is taken.
    let mut idle = Vec::new();
    for i in 0..50 {
        let mut c = Conn::open(&proxy.plain()).await.expect("connect");
        assert_eq!(c.get("/").await.unwrap().status, 200);
        idle.push(c);
        if i == 0 {
            // The first parks first (connections park a few ms after their request, and
            // on a loaded machine two parking at once may swap places).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A new client is served at once (the longest-idle connection makes room), not
    // after `timeouts.client` (10 s) or never.
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), client::get(&proxy.plain(), "/new")).await;
    assert!(
        matches!(&answer, Ok(Ok(r)) if r.status == 200),
        "{answer:?} after {:?}",
        started.elapsed()
    );
    // The one idle the longest was closed for it; the last one still serves.
    assert!(idle[0].get("/").await.is_err(), "the oldest idle connection was closed");
    assert_eq!(idle[49].get("/").await.unwrap().status, 200);
    let http = proxy.frontend_stats("http").await;
    assert_eq!(http["connections_refused"], 0, "{http}");
}

/// Plain and TLS keep-alive connections that park (idle over 5 ms) and wake again, over
/// and over, many at once: every request is answered, and once the clients leave the proxy
/// counts no connection (a plain one waits in the lot, a TLS one in a task of its own).
#[tokio::test(flavor = "multi_thread")]
async fn connections_that_park_and_wake_over_and_over_lose_no_request() {
    let backend = crate::harness::Backend::start("a");
    let mut body = crate::harness::api_body(&[&backend], &[]);
    body.push_str("timeouts: { keepalive: 60s }\n");
    let proxy = Proxy::start(&body);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..60u64 {
        let target = if i % 3 == 0 { proxy.tls() } else { proxy.plain() };
        clients.spawn(async move {
            let mut c = Conn::open(&target).await.expect("connect");
            for round in 0..12u64 {
                let status = c.get("/").await.map(|r| r.status).unwrap_or(0);
                if status != 200 {
                    return Err(format!("client {i} round {round}: {status}"));
                }
                // 0-21 ms: some requests come before the connection parks, most after.
                tokio::time::sleep(Duration::from_millis((i * 7 + round * 5) % 22)).await;
            }
            Ok(())
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        let mut failures = Vec::new();
        while let Some(r) = clients.join_next().await {
            if let Err(e) = r.expect("client task") {
                failures.push(e);
            }
        }
        failures
    })
    .await
    .expect("all clients done within 60 s");
    assert!(done.is_empty(), "{done:?}");
    // The clients are gone: the proxy closes its side and counts nothing open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (http, https) = (proxy.frontend_stats("http").await, proxy.frontend_stats("https").await);
        if http["counters"]["sessions_current"] == 0 && https["counters"]["sessions_current"] == 0 {
            assert_eq!(http["requests_total"], 40 * 12, "{http}");
            assert_eq!(https["requests_total"], 20 * 12, "{https}");
            break;
        }
        assert!(Instant::now() < deadline, "still open: {http} {https}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_request_on_an_idle_connection_follows_a_reload() {
    let (a, b) = (crate::harness::Backend::start("a"), crate::harness::Backend::start("b"));
    let to = |name: &str| {
        format!(
            "routes:\n  - {{ path_prefix: /, backend: {name} }}\nbackends:\n  one: {{ servers: [a] }}\n  two: {{ servers: [b] }}\n\
             servers:\n  a: {{ address: {} }}\n  b: {{ address: {} }}\nhealth: {{ interval: 1s, timeout: 500ms }}\n",
            a.addr, b.addr
        )
    };
    let proxy = Proxy::start(&to("one"));
    // An idle keep-alive connection, and one whose next head is half sent when the
    // reload comes.
    let mut idle = Conn::open(&proxy.plain()).await.unwrap();
    assert_eq!(idle.get("/").await.unwrap().header("x-server"), Some("a"));
    let mut half = client::connect(&proxy.plain()).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut half).await;
    assert!(answer.contains("x-server: a"), "{answer}");
    half.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let generation = proxy.generation().await;
    proxy.write_config(&to("two"));
    proxy.sighup();
    proxy.wait_generation(generation + 1).await;
    let r = idle.get("/").await.unwrap();
    assert_eq!(r.header("x-server"), Some("b"), "routed by the config of now: {r:?}");
    half.write_all(b"st: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut half).await;
    assert!(
        answer.contains("x-server: b"),
        "routed by the config when the head came: {answer}"
    );
}

/// Read one answer (its head and a Content-Length body) from `s`, within 5 s.
async fn read_answer(s: &mut client::Stream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_tls_handshakes_are_counted_apart_from_request_errors() {
    let backend = crate::harness::Backend::start("a");
    let proxy = Proxy::start(&crate::harness::api_body(&[&backend], &[]));
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    }
    assert_eq!(client::get(&proxy.tls(), "/").await.unwrap().status, 200);
    let https = proxy.frontend_stats("https").await;
    assert_eq!(https["handshake_failures"], 3, "{https}");
    assert_eq!(https["counters"]["request_errors"], 0, "{https}");
    let metrics = client::get(&proxy.stats_target(), "/metrics").await.unwrap().text();
    assert!(
        metrics.contains("edgepin_frontend_handshake_failures_total{proxy=\"https\"} 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("handshake"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let csv = client::get(&proxy.stats_target(), "/stats.csv").await.unwrap().text();
    let header: Vec<&str> = csv
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = header.iter().position(|c| *c == "hs_fail").expect("hs_fail column");
    let row = csv
        .lines()
        .find(|l| l.starts_with("https,FRONTEND"))
        .expect("https row");
    assert_eq!(row.split(',').nth(column), Some("3"), "{csv}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_from_many_addresses_spend_a_total_budget() {
    const PASSWORD: &str = "correct horse battery staple";
    let backend = crate::harness::Backend::start("a");
    let mut body = crate::harness::api_body(&[&backend], &[]);
    body.push_str("stats: { auth: { user: admin, password_env: EDGEPIN_HOSTILE_PW } }\n");
    let proxy = Proxy::builder(&body).env("EDGEPIN_HOSTILE_PW", PASSWORD).start();
    let get = async |from: &str, password: &str| {
        let auth = format!("Authorization: {}", crate::harness::basic_auth("admin", password));
        let mut c = Conn::open(&proxy.stats_target().from(from))
            .await
            .expect("connect to stats");
        c.request("GET", "/stats.json", &[auth], b"")
            .await
            .expect("stats answer")
            .status
    };
    assert_eq!(get("127.0.0.2", PASSWORD).await, 200, "an operator at work");
    // 40 addresses, 5 wrong passwords each: 200 guesses a minute by the per-address count.
    let (mut unauthorized, mut too_many) = (0, 0);
    for i in 1..=40 {
        let from = format!("127.0.1.{i}");
        for j in 0..5 {
            match get(&from, &format!("guess-{i}-{j}")).await {
                401 => unauthorized += 1,
                429 => too_many += 1,
                other => panic!("{other} from {from}"),
            }
        }
    }
    assert_eq!((unauthorized, too_many), (50, 150), "50 guesses, then none for anyone");
    assert_eq!(
        get("127.0.2.1", PASSWORD).await,
        429,
        "a new address waits for the lockout"
    );
    assert_eq!(
        get("127.0.0.2", PASSWORD).await,
        200,
        "the operator who logged in keeps access"
    );
    let log = proxy.proc.log();
    assert!(
        log.contains("too many wrong passwords from all addresses together"),
        "{log}"
    );
}
