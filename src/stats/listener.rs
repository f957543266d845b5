//! The stats listener's HTTP/1.1 server: accepts connections and serves the router on
//! them with limits, so a slow or greedy client cannot hold the operators' page hostage.
//!
//! Limits: connections at once (more are closed at accept), time to send a request head,
//! time for a whole request (body included), and a connection's lifetime. Each request
//! carries its client address (`admin::Peer`) for the admin log.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::admin::Peer;

/// What one client may take of the stats listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Longest wait for a request head.
    pub header_timeout: Duration,
    /// Longest time for one request, body included, until its answer is ready.
    pub request_timeout: Duration,
    /// Longest life of a connection (keep-alive included); browsers reconnect.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            connection_lifetime: Duration::from_secs(120),
        }
    }
}

async fn request_deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response(),
    }
}

/// Serve `router` on `listener` within `limits` until `stop` resolves.
pub async fn run(listener: TcpListener, router: Router, limits: Limits, stop: impl Future<Output = ()>) {
    let request_timeout = limits.request_timeout;
    let router = router.layer(middleware::from_fn(move |req: Request, next: Next| {
        request_deadline(request_timeout, req, next)
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "stats listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(client = %peer, limit = limits.max_connections, "stats listener: too many connections, closing one");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                router.clone().oneshot(req)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_lifetime, connection).await {
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "stats connection ended with an error"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!(client = %peer, "stats connection reached its lifetime"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A listener on 127.0.0.1:0 serving `/` → "ok" and `/slow` (never answers) within
    /// `limits`; stops when the returned sender is dropped.
    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(listener, router, limits, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Everything the server sends until it closes, within 5 s.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server closed the connection in time");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_too_slow_with_its_head_is_cut_off() {
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let answer = read_to_close(&mut slow).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }

    #[tokio::test]
    async fn a_request_that_takes_too_long_gets_408() {
        let limits = Limits {
            request_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut s).await.starts_with("HTTP/1.1 408"));
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_and_the_others_served() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = first.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "the first is served");
        let mut second = TcpStream::connect(addr).await.unwrap();
        let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(read_to_close(&mut second).await, "", "the second is closed unanswered");
        drop(first);
    }
}
