//! The HTTP/2 side of `bench-client`: many idle HTTP/2 connections (each after one
//! request), and many idle WebSockets over HTTP/2 (RFC 8441 extended CONNECT, one per
//! connection, as `wss-idle` has one per TLS connection), with the growth of the proxy's
//! resident memory per connection.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::{Failure, OPEN_CONCURRENCY, SETTLE, STEP_TIMEOUT, insecure_connector, rss_kib};

/// What keeps one idle connection (and its stream) open.
enum Held {
    Connection(#[allow(dead_code)] SendRequest<Bytes>),
    WebSocket(
        #[allow(dead_code)] SendRequest<Bytes>,
        #[allow(dead_code)] SendStream<Bytes>,
        #[allow(dead_code)] RecvStream,
    ),
}

/// A TLS connection with ALPN h2 and the HTTP/2 handshake done; the connection is driven
/// by a task of its own.
async fn connect(connector: &TlsConnector, addr: &str) -> Result<SendRequest<Bytes>, Failure> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the proxy did not choose h2".into());
    }
    let (send, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send.ready().await?)
}

/// One connection, one GET of `path` read whole.
async fn one_request(connector: &TlsConnector, addr: &str, path: &str) -> Result<Held, Failure> {
    let step = async {
        let mut send = connect(connector, addr).await?;
        let req = http::Request::get(format!("https://localhost{path}")).body(())?;
        let (resp, _) = send.send_request(req, true)?;
        let resp = resp.await?;
        if resp.status() != 200 {
            return Err(format!("status {}", resp.status()).into());
        }
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        Ok(Held::Connection(send))
    };
    tokio::time::timeout(STEP_TIMEOUT, step).await?
}

/// One connection with one WebSocket over it (extended CONNECT to `path`), its first
/// message (the Engine.IO open packet) read.
async fn one_websocket(connector: &TlsConnector, addr: &str, path: &str) -> Result<Held, Failure> {
    let step = async {
        let mut send = connect(connector, addr).await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !send.is_extended_connect_protocol_enabled() {
            if Instant::now() > deadline {
                return Err("the proxy does not offer extended CONNECT".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            send = send.ready().await?;
        }
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("https://localhost{path}"))
            .header("sec-websocket-version", "13")
            .extension(h2::ext::Protocol::from_static("websocket"))
            .body(())?;
        let (resp, sending) = send.send_request(req, false)?;
        let resp = resp.await?;
        if resp.status() != 200 {
            return Err(format!("extended CONNECT answered {}", resp.status()).into());
        }
        let mut recv = resp.into_body();
        match recv.data().await {
            Some(Ok(frame)) if !frame.is_empty() => {
                let _ = recv.flow_control().release_capacity(frame.len());
            }
            other => return Err(format!("expected the open packet, got {other:?}").into()),
        }
        Ok(Held::WebSocket(send, sending, recv))
    };
    tokio::time::timeout(STEP_TIMEOUT, step).await?
}

/// `h2-idle` (`websocket`: false) and `ws-h2-idle` (true): open `n`, let them idle, and
/// print the proxy's memory growth per connection.
pub async fn idle(addr: &str, path: &str, n: usize, pids: &str, websocket: bool) -> Result<(), Failure> {
    let connector = insecure_connector(true, &[b"h2"])?;
    let before = rss_kib(pids)?;
    let started = Instant::now();
    let opening = futures_util::stream::iter(0..n)
        .map(|_| {
            let connector = &connector;
            async move {
                if websocket {
                    one_websocket(connector, addr, path).await
                } else {
                    one_request(connector, addr, path).await
                }
            }
        })
        .buffer_unordered(OPEN_CONCURRENCY);
    let held: Vec<Result<Held, Failure>> = opening.collect().await;
    let held = held.into_iter().collect::<Result<Vec<_>, _>>()?;
    let opened = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pids)?;
    println!("connections={}", held.len());
    println!("open_seconds={:.2}", opened.as_secs_f64());
    println!("rss_before_kib={before}");
    println!("rss_after_kib={after}");
    println!("kib_per_conn={:.2}", after.saturating_sub(before) as f64 / n as f64);
    drop(held);
    Ok(())
}
