//! Where every client connection starts, before any HTTP: it is counted from the moment
//! it is accepted, held to `limits.max_connections`, reads a trusted balancer's PROXY
//! header, and on the https listener does its TLS handshake, all within
//! `timeouts.handshake`. Then HTTP/2 (chosen by ALPN) goes to pingora's server and
//! everything else to edgepin's HTTP/1 engine (`proxy::h1`).
//!
//! pingora's listener would run the TLS handshake itself, for up to 60 s and before the
//! application sees the connection: a client that never finishes its handshake was held
//! a minute and counted nowhere, and a thousand of them exhausted the file descriptors.
//! So pingora's listeners are plain TCP here and edgepin accepts TLS itself, with
//! tokio-rustls and the certificate resolver of `crate::tls`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Config;
use crate::runtime::Shared;
use crate::state::FrontendCounters;

use super::h1;
use super::tls_conn::TlsConn;

/// ALPN of an ACME TLS-ALPN-01 validation: the handshake is all it needs.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The https listener: its address and the TLS acceptor.
pub struct Https {
    pub addr: SocketAddr,
    pub acceptor: TlsAcceptor,
}

/// The application behind every listener (see the module docs).
pub struct Frontend<A> {
    http: Arc<A>,
    shared: Arc<Shared>,
    /// Idle server connections of the HTTP/1 engine.
    pool: Arc<h1::Pool>,
    https: Option<Https>,
    /// One per connection served: `limits.max_connections`, or fewer if the file
    /// descriptor limit cannot hold that many.
    permits: Arc<Semaphore>,
    /// Connections waiting for a permit now, at most `max_waiting`.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Longest wait for a permit before the connection is closed.
    wait: Duration,
    /// Serve HTTP/1 with pingora's proxy instead of edgepin's engine: only for the
    /// differential test, which compares what servers receive from each
    /// (`EDGEPIN_H1_ENGINE=pingora`).
    pub h1_through_pingora: bool,
}

impl<A> Frontend<A> {
    pub fn new(
        http: A,
        shared: Arc<Shared>,
        pool: Arc<h1::Pool>,
        https: Option<Https>,
        permits: Arc<Semaphore>,
        max_waiting: usize,
        wait: Duration,
    ) -> Self {
        Frontend {
            http: Arc::new(http),
            shared,
            pool,
            https,
            permits,
            h1_through_pingora: false,
            waiting: AtomicUsize::new(0),
            max_waiting,
            wait,
        }
    }

    /// Whether the connection came in on the https listener.
    fn on_https(&self, stream: &Stream) -> bool {
        let Some(https) = &self.https else { return false };
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local.is_some_and(|l| {
            l.port() == https.addr.port() && (https.addr.ip().is_unspecified() || l.ip() == https.addr.ip())
        })
    }

    /// A permit at once, or after a bounded wait among a bounded number of waiters.
    async fn admit(&self, counters: &FrontendCounters) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        if self.waiting.fetch_add(1, Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Relaxed);
            counters.connections_refused.inc();
            return None;
        }
        let permit = tokio::time::timeout(self.wait, Arc::clone(&self.permits).acquire_owned()).await;
        self.waiting.fetch_sub(1, Relaxed);
        match permit {
            Ok(Ok(p)) => Some(p),
            _ => {
                counters.connections_refused.inc();
                None
            }
        }
    }

    /// PROXY header, TLS handshake and, for HTTP/2, the client preface; None drops the
    /// connection.
    async fn handshake(&self, stream: Stream, https: bool, cfg: &Config) -> Option<Accepted> {
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => l4,
            Err(_) => {
                tracing::error!("listener gave a stream that is not TCP");
                return None;
            }
        };
        if cfg.listen.proxy_protocol
            && let Err(e) = super::proxy_protocol::accept(&mut l4, &cfg.trusted_proxies, cfg.timeouts.handshake).await
        {
            tracing::debug!(error = %e, "dropping connection: bad PROXY header");
            return None;
        }
        let Some(tls) = self.https.as_ref().filter(|_| https) else {
            return Some(Accepted::Plain(l4));
        };
        let tls = match tls.acceptor.accept(*l4).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return None;
            }
        };
        match tls.get_ref().1.alpn_protocol() {
            // A TLS-ALPN-01 validation has seen the certificate it asked for.
            Some(ACME_TLS_ALPN) => None,
            Some(b"h2") => {
                let mut conn = TlsConn::new(tls);
                match conn.read_h2_preface().await {
                    Ok(true) => Some(Accepted::H2(Box::new(conn))),
                    Ok(false) | Err(_) => None,
                }
            }
            _ => Some(Accepted::Tls(Box::new(tls))),
        }
    }
}

/// A connection after its handshake.
enum Accepted {
    Plain(Box<L4Stream>),
    Tls(Box<TlsStream<L4Stream>>),
    /// HTTP/2 (by ALPN), for pingora's server.
    H2(Stream),
}

impl Accepted {
    /// The client's address (a trusted balancer's PROXY header has replaced the peer's).
    fn peer(&self) -> Option<SocketAddr> {
        let digest = match self {
            Accepted::Plain(l4) => l4.get_socket_digest(),
            Accepted::Tls(tls) => tls.get_ref().0.get_socket_digest(),
            Accepted::H2(s) => s.get_socket_digest(),
        };
        digest.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
    }
}

/// One open client connection: counted while it lives (a tunnel takes it along).
struct Open {
    shared: Arc<Shared>,
    https: bool,
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(shared: &Arc<Shared>, https: bool, permit: OwnedSemaphorePermit) -> Self {
        let open = Open {
            shared: Arc::clone(shared),
            https,
            _permit: permit,
        };
        open.counters().connections_total.inc();
        open.counters().connections.inc();
        open
    }

    fn counters(&self) -> &FrontendCounters {
        if self.https {
            &self.shared.https
        } else {
            &self.shared.http
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.counters().connections.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Frontend<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // Nothing is served before privileges are dropped (`run_as`).
        self.shared.privileges.ready().await;
        let https = self.on_https(&stream);
        let counters = if https { &self.shared.https } else { &self.shared.http };
        // Stopping (SIGTERM) refuses; an old process draining after an upgrade serves
        // what it accepted before handing its listeners over (the client is connected).
        if self.shared.stopping() && !self.shared.lifecycle.is_handed_over() {
            counters.connections_refused.inc();
            return None;
        }
        let open = Open::new(&self.shared, https, self.admit(counters).await?);
        // The config of this moment, not held for the connection's life (reloads retire it).
        let snapshot = self.shared.snapshot();
        let deadline = snapshot.config.timeouts.handshake;
        let ready = tokio::time::timeout(deadline, self.handshake(stream, https, &snapshot.config)).await;
        drop(snapshot);
        let accepted = match ready {
            Ok(Some(accepted)) => accepted,
            Ok(None) => {
                counters.request_errors.inc();
                return None;
            }
            Err(_) => {
                counters.handshake_timeouts.inc();
                return None;
            }
        };
        let peer = h1::Peer {
            addr: accepted.peer(),
            tls: https,
        };
        match accepted {
            Accepted::Plain(l4) if self.h1_through_pingora => {
                let _open = open;
                self.http.process_new(l4, shutdown).await
            }
            Accepted::H2(stream) => {
                let _open = open;
                self.http.process_new(stream, shutdown).await
            }
            Accepted::Plain(l4) => {
                h1::serve(Arc::clone(&self.shared), Arc::clone(&self.pool), l4, peer, open).await;
                None
            }
            Accepted::Tls(tls) => {
                h1::serve(Arc::clone(&self.shared), Arc::clone(&self.pool), tls, peer, open).await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.http.cleanup().await;
    }
}

/// How many client connections fit, and how many may wait for a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCap {
    pub connections: usize,
    pub waiting: usize,
}

/// File descriptors kept aside from client connections: listeners, the stats listener
/// and its clients, health checks, logs, the reload and certificate files.
const FD_RESERVE: u64 = 128;

/// Descriptors one proxied connection holds: the client's and the server's (a tunnel, or
/// a request with its upstream connection).
pub const FDS_PER_CONNECTION: u64 = 2;

/// Idle server connections kept for `servers` servers, by each engine's pool.
pub fn pool_size(servers: usize) -> usize {
    super::h1::POOL_PER_SERVER * servers.max(1)
}

/// The connections (and HTTP/2 streams in flight) that fit in `fd_limit` descriptors
/// next to the upstream keep-alive pools of `servers` servers (pingora's too, for HTTP/2,
/// when `h2`), capped by `configured`. Waiters hold one descriptor each while they wait:
/// a tenth of the connections, at least 16, at most 256.
pub fn connection_cap(configured: usize, fd_limit: u64, servers: usize, h2: bool) -> ConnectionCap {
    let pools = if h2 { 2 } else { 1 };
    let pool = (pools * pool_size(servers)) as u64;
    let reserve = FD_RESERVE + 2 * servers as u64 + pool;
    let usable = fd_limit.saturating_sub(reserve);
    // c connections + c/10 waiters <= usable / FDS_PER_CONNECTION (a waiter holds only
    // its client's descriptor, counted generously here).
    let fit = usable / FDS_PER_CONNECTION / 11 * 10;
    let connections = (configured as u64).min(fit).max(1) as usize;
    ConnectionCap {
        connections,
        waiting: (connections / 10).clamp(16, 256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_cap_stands_when_descriptors_allow_it() {
        let cap = connection_cap(10_000, 1_048_576, 4, false);
        assert_eq!(cap.connections, 10_000);
        assert_eq!(cap.waiting, 256);
    }

    #[test]
    fn a_low_descriptor_limit_lowers_the_cap() {
        let cap = connection_cap(10_000, 1024, 4, false);
        let reserve = FD_RESERVE + 8 + 4 * super::super::h1::POOL_PER_SERVER as u64;
        let used = cap.connections as u64 * FDS_PER_CONNECTION + cap.waiting as u64 + reserve;
        assert!(used <= 1024, "{cap:?} uses {used} descriptors");
        assert!(cap.connections > 250, "{cap:?}");
    }

    #[test]
    fn the_cap_is_never_zero() {
        assert_eq!(connection_cap(10, 10, 4, true).connections, 1);
        assert_eq!(connection_cap(0, 1 << 20, 4, false).connections, 1);
    }
}
