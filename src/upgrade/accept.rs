//! The accept loops of the https and http listeners, as a pingora service: each accepted
//! connection goes to the frontend (`proxy::Frontend`, a pingora `ServerApp`) in a task
//! of its own, on this service's runtime, exactly as pingora's listening service would
//! hand it over.
//!
//! Owning the loops is what makes a drain possible: they start only once the process
//! may accept ([`Lifecycle::until_accepting`]) and stop when the listeners are handed
//! over, while every connection already accepted goes on. pingora's listening service
//! stops accepting only when the whole server shuts down. The connections are told of
//! the hand-over through their `ShutdownWatch` (HTTP/2 sends GOAWAY on it).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as L4Addr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::runtime::Shared;

/// The proxy listeners' accept loops (see the module docs).
pub struct AcceptService<A> {
    app: Arc<A>,
    listeners: Vec<std::net::TcpListener>,
    threads: usize,
    shared: Arc<Shared>,
}

impl<A> AcceptService<A> {
    /// Accept on `listeners` (duplicates of the process's sockets) for `app` with
    /// `threads` threads.
    pub fn new(app: A, listeners: Vec<std::net::TcpListener>, threads: usize, shared: Arc<Shared>) -> Self {
        AcceptService {
            app: Arc::new(app),
            listeners,
            threads,
            shared,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for AcceptService<A> {
    async fn start_service(&mut self, _fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _per_fd: usize) {
        let lifecycle = &self.shared.lifecycle;
        // A fresh start accepts at once (and tells systemd); a takeover once it is ready
        // (the old process is systemd's main process until it hands over).
        let fresh = lifecycle.is_accepting();
        tokio::select! {
            () = lifecycle.until_accepting() => {}
            _ = shutdown.changed() => return,
        }
        // Connections see the stop of this process's accepting: a shutdown, or the
        // hand-over to a successor.
        let (stop_tx, stop) = watch::channel(false);
        let shared = Arc::clone(&self.shared);
        let mut server_stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shared.lifecycle.until_handed_over() => {}
                _ = server_stop.wait_for(|s| *s) => {}
            }
            let _ = stop_tx.send(true);
        });
        let mut loops = Vec::new();
        for std_listener in self.listeners.drain(..) {
            // A wildcard listener's connections each have their own local address.
            let local = std_listener.local_addr().ok().filter(|a| !a.ip().is_unspecified());
            match TcpListener::from_std(std_listener) {
                Ok(l) => loops.push(tokio::spawn(accept_loop(l, local, Arc::clone(&self.app), stop.clone()))),
                Err(e) => tracing::error!(error = %e, "cannot accept on a listener"),
            }
        }
        if fresh {
            super::notify("READY=1");
        }
        for l in loops {
            let _ = l.await;
        }
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        "edgepin proxy"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    listener: TcpListener,
    local: Option<SocketAddr>,
    app: Arc<A>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let mut stream = L4Stream::from(tcp);
                let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
                let _ = digest.peer_addr.set(Some(L4Addr::from(peer)));
                if let Some(local) = local {
                    let _ = digest.local_addr.set(Some(L4Addr::from(local)));
                }
                stream.set_socket_digest(digest);
                let (app, stop) = (Arc::clone(&app), stop.clone());
                tokio::spawn(async move {
                    let mut next = app.process_new(Box::new(stream), &stop).await;
                    while let Some(reused) = next {
                        next = app.process_new(reused, &stop).await;
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
