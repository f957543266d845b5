//! Limits on what a client controls: request head and body size, and the number of
//! downstream connections open at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::http::RequestHeader;
use pingora::protocols::Stream;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::ShutdownWatch;
use tokio::sync::Semaphore;

use crate::runtime::Shared;

/// Size of the request head as received: request line and headers.
pub fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The body length the request declares, if any.
pub fn declared_body(req: &RequestHeader) -> Option<u64> {
    req.headers.get("content-length")?.to_str().ok()?.trim().parse().ok()
}

/// Wraps the HTTP app to count downstream connections and cap them at
/// `limits.max_connections`: a connection over the cap waits up to `wait` for a free
/// place (like HAProxy's maxconn, which stops accepting) and is then closed.
pub struct ConnectionLimit<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    wait: Duration,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, shared: Arc<Shared>, max: usize, wait: Duration) -> ConnectionLimit<A> {
        ConnectionLimit {
            inner: Arc::new(inner),
            shared,
            permits: Arc::new(Semaphore::new(max)),
            wait,
        }
    }
}

/// One open downstream connection: counted while it lives, even if its task is dropped.
struct Open<'a> {
    counters: &'a crate::state::FrontendCounters,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<'a> Open<'a> {
    fn new(counters: &'a crate::state::FrontendCounters, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        counters.connections.inc();
        Open {
            counters,
            _permit: permit,
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.counters.connections.dec();
    }
}

impl<A> ConnectionLimit<A> {
    /// On the plain listener, a trusted peer's PROXY header (the https listener reads it
    /// before the TLS handshake instead). None: the header was bad; drop the connection.
    async fn read_proxy_header(&self, stream: Stream, cfg: &crate::config::Config) -> Option<Stream> {
        if !cfg.listen.proxy_protocol || stream.get_ssl_digest().is_some() {
            return Some(stream);
        }
        let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
            return None;
        };
        match super::proxy_protocol::accept(&mut l4, &cfg.trusted_proxies, cfg.timeouts.client).await {
            Ok(()) => Some(l4),
            Err(e) => {
                tracing::debug!(error = %e, "dropping connection: bad PROXY header");
                None
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionLimit<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.shared.privileges.ready().await;
        let counters = if stream.get_ssl_digest().is_some() {
            &self.shared.https
        } else {
            &self.shared.http
        };
        if self.shared.stopping() {
            counters.connections_refused.inc();
            return None;
        }
        let permit = match tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                counters.connections_refused.inc();
                return None;
            }
        };
        counters.connections_total.inc();
        let _open = Open::new(counters, permit);
        // The config of this moment, not held for the connection's life (reloads retire it).
        let snapshot = self.shared.snapshot();
        let stream = match self.read_proxy_header(stream, &snapshot.config).await {
            Some(stream) => super::head_deadline::wrap(stream, snapshot.config.timeouts.header),
            None => {
                counters.request_errors.inc();
                return None;
            }
        };
        drop(snapshot);
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
