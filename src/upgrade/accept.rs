//! The accept loops of the https and http listeners, as a pingora service: each accepted
//! connection goes to the frontend (`proxy::Frontend`, through [`Serve`]) in a task of
//! its own, on this service's runtime.
//!
//! Owning the loops is what makes a drain possible: they start only once the process
//! may accept ([`Lifecycle::until_accepting`]) and stop when the listeners are handed
//! over, while every connection already accepted goes on. pingora's listening service
//! stops accepting only when the whole server shuts down.
//!
//! A connection is handed over as tokio's `TcpStream` with the facts of its arrival,
//! not wrapped in pingora's `Stream`: that wrapper (its buffers, timing and tracing
//! fields, about 380 bytes) and its socket digest (about 390 more, in an `Arc`) were
//! held by every open connection, idle keep-alive ones included, and edgepin used
//! nothing of them but the two addresses.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::runtime::Shared;

/// What serves the connections the accept loops take.
pub trait Serve: Send + Sync + 'static {
    /// Serve one accepted connection (in a task of its own).
    fn serve(self: Arc<Self>, tcp: TcpStream, arrival: Arrival) -> impl Future<Output = ()> + Send;
}

/// Where an accepted connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Accepted on the https listener.
    pub https: bool,
}

/// A proxy listener and whether it is the https one.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub https: bool,
}

/// The proxy listeners' accept loops (see the module docs).
pub struct AcceptService<A> {
    app: Arc<A>,
    listeners: Vec<Listener>,
    threads: usize,
    shared: Arc<Shared>,
}

impl<A> AcceptService<A> {
    /// Accept on `listeners` (duplicates of the process's sockets) for `app` with
    /// `threads` threads.
    pub fn new(app: A, listeners: Vec<Listener>, threads: usize, shared: Arc<Shared>) -> Self {
        AcceptService {
            app: Arc::new(app),
            listeners,
            threads,
            shared,
        }
    }
}

#[async_trait]
impl<A: Serve> Service for AcceptService<A> {
    async fn start_service(&mut self, _fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _per_fd: usize) {
        let lifecycle = &self.shared.lifecycle;
        // A fresh start accepts at once (and tells systemd); a takeover once it is ready
        // (the old process is systemd's main process until it hands over).
        let fresh = lifecycle.is_accepting();
        tokio::select! {
            () = lifecycle.until_accepting() => {}
            _ = shutdown.changed() => return,
        }
        // The loops stop with the stop of this process's accepting: a shutdown, or the
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
        for listener in self.listeners.drain(..) {
            let https = listener.https;
            match TcpListener::from_std(listener.socket) {
                Ok(l) => loops.push(tokio::spawn(accept_loop(l, https, Arc::clone(&self.app), stop.clone()))),
                Err(e) => tracing::error!(error = %e, "cannot accept on a listener"),
            }
        }
        if fresh {
            super::notify("READY=1");
        }
        for l in loops {
            let _ = l.await;
        }
    }

    fn name(&self) -> &str {
        "edgepin proxy"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

/// Accept until the listeners are handed over or the server stops.
async fn accept_loop<A: Serve>(listener: TcpListener, https: bool, app: Arc<A>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(Arc::clone(&app).serve(tcp, Arrival { peer, https }));
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
