//! What hostile clients tried, and what edgepin does about it: each test is an attack
//! from the hardening review, replayed on loopback, with the behaviour that stops it.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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
    let stats = proxy.stats().await;
    let https = stats["frontends"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "https"))
        .cloned()
        .expect("https listener in stats");
    let cut = https["handshake_timeouts"].as_u64().unwrap() + https["connections_refused"].as_u64().unwrap();
    assert!(cut >= 1000, "handshake timeouts + refused: {https}");
    assert!(
        !proxy.proc.log().contains("Too many open files"),
        "{}",
        proxy.proc.log_tail(30)
    );
}
