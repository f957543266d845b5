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

/// Stats connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest wait for a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time for one request, body included, until its answer is ready.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest life of a connection (keep-alive included); browsers reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

async fn request_deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response(),
    }
}

/// Serve `router` on `listener` until `stop` resolves.
pub async fn run(listener: TcpListener, router: Router, stop: impl Future<Output = ()>) {
    let router = router.layer(middleware::from_fn(request_deadline));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
            tracing::warn!(client = %peer, limit = MAX_CONNECTIONS, "stats listener: too many connections, closing one");
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
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "stats connection ended with an error"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!(client = %peer, "stats connection reached its lifetime"),
            }
        });
    }
}
