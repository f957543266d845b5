//! What a client can hold or slip past outside the request exchange (issue 21, items 3
//! and 4): chunk framing that outgrows the body limit, trailers that are not header
//! fields, idle keep-alive connections at `limits.max_connections`, the config an idle
//! connection's next request is routed by, and Host values that are not hosts.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Proxy, Recorder, client};

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

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
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
