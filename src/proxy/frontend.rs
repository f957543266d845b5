//! Where every client connection starts, before any HTTP: it is counted from the moment
//! it is accepted, held to `limits.max_connections`, reads a trusted balancer's PROXY
//! header, and on the https listener does its TLS handshake, all within
//! `timeouts.handshake` (for HTTP/2 the client preface too; counted apart when it fails
//! or times out). Places are given by `places`, where idle keep-alive connections make
//! room for new ones. Then HTTP/2 (chosen by ALPN) goes to edgepin's HTTP/2 engine
//! (`proxy::h2`) and everything else to its HTTP/1 engine (`proxy::h1`).
//!
//! pingora's listener would run the TLS handshake itself, for up to 60 s and before the
//! application sees the connection: a client that never finishes its handshake was held
//! a minute and counted nowhere, and a thousand of them exhausted the file descriptors.
//! So edgepin's own accept loops (`upgrade::AcceptService`) hand over tokio's plain
//! `TcpStream`, and edgepin accepts TLS itself, with tokio-rustls and the certificate
//! resolver of `crate::tls`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::Config;
use crate::runtime::Shared;
use crate::state::FrontendCounters;
use crate::upgrade::{Arrival, Serve};

use super::places::Places;
use super::{h1, h2};

/// ALPN of an ACME TLS-ALPN-01 validation: the handshake is all it needs.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The https listener: its address and the TLS acceptor.
pub struct Https {
    pub addr: SocketAddr,
    pub acceptor: TlsAcceptor,
}

/// The application behind every listener (see the module docs).
pub struct Frontend {
    shared: Arc<Shared>,
    /// Idle server connections of the HTTP/1 engine.
    pool: Arc<h1::Pool>,
    https: Option<Https>,
    /// One per connection served: `limits.max_connections`, or fewer if the file
    /// descriptor limit cannot hold that many; idle connections give theirs up.
    places: Arc<Places>,
    /// What HTTP/2 streams hold of the servers beyond their connections' places.
    h2_places: Arc<h2::Places>,
}

impl Frontend {
    pub fn new(
        shared: Arc<Shared>,
        pool: Arc<h1::Pool>,
        https: Option<Https>,
        permits: Arc<Semaphore>,
        max_waiting: usize,
        wait: Duration,
    ) -> Self {
        Frontend {
            shared,
            pool,
            https,
            h2_places: h2::Places::new(Arc::clone(&permits)),
            places: Arc::new(Places::new(permits, max_waiting, wait)),
        }
    }

    /// PROXY header, TLS handshake and, for HTTP/2, the client preface.
    /// Returns the connection and its client's address (a trusted balancer's PROXY header
    /// replaces the peer's).
    async fn handshake(
        &self,
        mut tcp: TcpStream,
        arrival: Arrival,
        cfg: &Config,
    ) -> Result<(Accepted, SocketAddr), Unaccepted> {
        let mut peer = arrival.peer;
        if cfg.listen.proxy_protocol {
            match super::proxy_protocol::accept(&mut tcp, peer, &cfg.trusted_proxies, cfg.timeouts.handshake).await {
                Ok(declared) => peer = declared,
                Err(e) => {
                    tracing::debug!(error = %e, "dropping connection: bad PROXY header");
                    return Err(Unaccepted::Failed);
                }
            }
        }
        let Some(tls) = self.https.as_ref().filter(|_| arrival.https) else {
            return Ok((Accepted::Plain(tcp), peer));
        };
        let tls = match tls.acceptor.accept(tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return Err(Unaccepted::Failed);
            }
        };
        match tls.get_ref().1.alpn_protocol() {
            // A TLS-ALPN-01 validation has seen the certificate it asked for.
            Some(ACME_TLS_ALPN) => Err(Unaccepted::AcmeValidation),
            Some(b"h2") => match h2::handshake(tls, cfg).await {
                Ok(conn) => Ok((Accepted::H2(Box::new(conn)), peer)),
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/2 preface or settings refused");
                    Err(Unaccepted::NoH2Preface)
                }
            },
            _ => Ok((Accepted::Tls(Box::new(tls)), peer)),
        }
    }
}

/// Why a connection ends at its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unaccepted {
    /// A bad PROXY header or a failed TLS handshake (`handshake_failures`).
    Failed,
    /// HTTP/2 by ALPN without the client preface (`request_errors`).
    NoH2Preface,
    /// An ACME TLS-ALPN-01 validation: the handshake was all it wanted.
    AcmeValidation,
}

impl Frontend {
    fn serve_h1<S>(&self, io: S, peer: h1::Peer, open: Open) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: h1::Transport,
    {
        let (shared, pool, places) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.pool),
            Arc::clone(&self.places),
        );
        h1::serve(shared, pool, places, io, peer, open)
    }
}

/// A connection after its handshake.
enum Accepted {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// HTTP/2 (by ALPN), its preface read.
    H2(Box<h2::Connection<TlsStream<TcpStream>>>),
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

impl Serve for Frontend {
    async fn serve(self: Arc<Self>, tcp: TcpStream, arrival: Arrival) {
        // Nothing is served before privileges are dropped (`run_as`).
        self.shared.privileges.ready().await;
        let https = arrival.https;
        let counters = if https { &self.shared.https } else { &self.shared.http };
        // Stopping (SIGTERM) refuses; an old process draining after an upgrade serves
        // what it accepted before handing its listeners over (the client is connected).
        if self.shared.stopping() && !self.shared.lifecycle.is_handed_over() {
            counters.connections_refused.inc();
            return;
        }
        let Some(permit) = self.places.admit(counters).await else {
            return;
        };
        let open = Open::new(&self.shared, https, permit);
        // The config of this moment, not held for the connection's life (reloads retire it).
        let snapshot = self.shared.snapshot();
        let deadline = snapshot.config.timeouts.handshake;
        let ready = {
            let handshake = self.handshake(tcp, arrival, &snapshot.config);
            tokio::pin!(handshake);
            match tokio::time::timeout(deadline, &mut handshake).await {
                Ok(ready) => ready,
                Err(_) => {
                    // Counted while the unfinished handshake still holds the socket, so a
                    // client that sees it closed finds it counted.
                    counters.handshake_timeouts.inc();
                    return;
                }
            }
        };
        drop(snapshot);
        let (accepted, client) = match ready {
            Ok(accepted) => accepted,
            Err(why) => {
                match why {
                    Unaccepted::Failed => counters.handshake_failures.inc(),
                    Unaccepted::NoH2Preface => counters.request_errors.inc(),
                    Unaccepted::AcmeValidation => {}
                }
                return;
            }
        };
        let peer = h1::Peer {
            addr: Some(client),
            tls: https,
        };
        match accepted {
            Accepted::H2(conn) => {
                // A task of its own, the size of the HTTP/2 connection's state: this one
                // (sized for the TLS handshake) ends here, as it does for a tunnel.
                let (shared, pool, places) = (
                    Arc::clone(&self.shared),
                    Arc::clone(&self.pool),
                    Arc::clone(&self.h2_places),
                );
                tokio::spawn(h2::serve(shared, pool, places, conn, peer, open));
            }
            // HTTP/1 runs in a task of its own, so that this task (sized for the TLS
            // handshake) ends here instead of being held by every keep-alive connection.
            Accepted::Plain(tcp) => {
                tokio::spawn(self.serve_h1(tcp, peer, open));
            }
            Accepted::Tls(tls) => {
                tokio::spawn(self.serve_h1(tls, peer, open));
            }
        }
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

/// The places (connections, and HTTP/2 streams beyond their connection's own) that fit
/// in `fd_limit` descriptors next to the upstream keep-alive pool of `servers` servers,
/// capped by `configured`. Waiters hold one descriptor each while they wait: a tenth of
/// the connections, at least 16, at most 256.
pub fn connection_cap(configured: usize, fd_limit: u64, servers: usize) -> ConnectionCap {
    let pool = pool_size(servers) as u64;
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
        let cap = connection_cap(10_000, 1_048_576, 4);
        assert_eq!(cap.connections, 10_000);
        assert_eq!(cap.waiting, 256);
    }

    #[test]
    fn a_low_descriptor_limit_lowers_the_cap() {
        let cap = connection_cap(10_000, 1024, 4);
        let reserve = FD_RESERVE + 8 + 4 * super::super::h1::POOL_PER_SERVER as u64;
        let used = cap.connections as u64 * FDS_PER_CONNECTION + cap.waiting as u64 + reserve;
        assert!(used <= 1024, "{cap:?} uses {used} descriptors");
        assert!(cap.connections > 250, "{cap:?}");
    }

    #[test]
    fn the_cap_is_never_zero() {
        assert_eq!(connection_cap(10, 10, 4).connections, 1);
        assert_eq!(connection_cap(0, 1 << 20, 4).connections, 1);
    }
}
