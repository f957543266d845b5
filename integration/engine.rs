//! The HTTP/1 engine's own behaviour towards servers: kept-alive connections are reused
//! (and counted), and a pooled connection the server closed is never a 502.

use std::time::Duration;

use crate::harness::rude::{Rude, rude_backend};
use crate::harness::{Backend, Conn, Proxy, api_body, client};

#[tokio::test(flavor = "multi_thread")]
async fn server_connections_are_kept_alive_reused_and_counted() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for _ in 0..100 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    // New client connections reuse the same server connections too.
    for _ in 0..20 {
        assert_eq!(client::get(&proxy.plain(), "/").await.unwrap().status, 200);
    }
    let s = proxy.server_stats("api", "a").await["counters"].clone();
    let (connects, reuses) = (s["connects"].as_u64().unwrap(), s["reuses"].as_u64().unwrap());
    assert_eq!(connects + reuses, 120, "{s}");
    assert!(
        connects <= 3,
        "{connects} connections opened for 120 sequential requests: {s}"
    );
    let csv = crate::harness::client::get(&proxy.stats_target(), "/stats.csv")
        .await
        .unwrap()
        .text();
    let header = csv.lines().next().unwrap();
    assert!(header.contains(",connect,reuse,"), "{header}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_server_closed_is_sent_again_never_a_502() {
    // The server answers one request per connection, then drops the connection when the
    // next one arrives on it: every reuse of a pooled connection fails before an answer.
    let server = rude_backend(Rude::OncePerConnection);
    let body = format!(
        "routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [r] }}\nservers:\n  r: {{ address: {server} }}\n\
         health: {{ mode: tcp, interval: 5s }}\n"
    );
    let proxy = Proxy::start(&body);
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for method in ["GET", "HEAD", "GET", "PUT", "DELETE", "GET"] {
        for _ in 0..10 {
            let r = conn.request(method, "/", &[], b"").await.unwrap();
            assert_eq!(r.status, 200, "{method}: {}", r.text());
        }
    }
    let s = proxy.server_stats("api", "r").await;
    let c = &s["counters"];
    assert!(
        c["reuses"].as_u64().unwrap() >= 30,
        "pooled connections were tried: {s}"
    );
    assert_eq!(
        c["response_errors"], 0,
        "a stale pooled connection is not the server's error: {s}"
    );
    assert_eq!(s["status"], "UP", "{s}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_that_stalls_gets_408_at_the_client_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start("b0");
    let body = format!("{}timeouts: {{ client: 1s }}\n", api_body(&[&backend], &[]));
    let proxy = Proxy::start(&body);
    let mut io = client::connect(&proxy.plain()).await.unwrap();
    // Too large to be held for replay: the body streams to the server as it comes.
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n";
    io.write_all(head.as_bytes()).await.unwrap();
    io.write_all(&[b'x'; 1024]).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer and no close");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "after {:?}",
        started.elapsed()
    );
    let stats = proxy.stats().await;
    let server = &stats["backends"][0]["servers"][0];
    assert_eq!(server["counters"]["response_errors"], 0, "the client's doing: {server}");
}
