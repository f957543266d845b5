//! A connection between requests that has idled for [`PARK_AFTER`]: parked. Its serving
//! task ends, holding no buffer (`spare`) and none of the engine's state, and it waits for
//! the client's next bytes (or the end of its keep-alive, or the client leaving). When
//! bytes come, a serving task starts again with them. A busy connection never pays for
//! the parking: the next request usually comes long before [`PARK_AFTER`].
//!
//! Where it waits depends on its [`Transport`]: a plain socket leaves the runtime for the
//! lot (`proxy::lot`, one thread and an epoll set for all of them: the socket and a few
//! words per connection, no task, timer or tokio registration); a TLS connection, whose
//! session cannot be taken apart and put back, waits in a small task of its own.
//!
//! A parked connection is registered in the proxy's [`Places`]: when a new client finds
//! every place taken, the connection parked the longest is closed for it.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::server::TlsStream;

use crate::proxy::lot::{Lot, Resume};
use crate::proxy::places::{Closer, Parked, Places};
use crate::runtime::Shared;

use super::{Conn, Pool, spare};

/// How long a connection waits for its next request in its serving task before parking.
/// Back-to-back requests (a page's assets, a client that pipelines or reuses its
/// connection at once, a Socket.IO poll that follows its answer) come well within it on
/// a LAN; a client a WAN round trip away parks between requests at any value worth
/// having. Short, because until it parks a connection holds its serving future (about
/// 3 KiB) and its answer buffer (16 KiB then, 4 KiB now): 5,000 connections opened in a burst held
/// ~800 of them at once at 50 ms, and the heap kept that high-water mark
/// (`keepalive_idle` 2.10 → 1.50 KiB per idle connection at 5 ms).
pub const PARK_AFTER: Duration = Duration::from_millis(5);

/// What a parked connection keeps (`S`: its socket, or `()` in the lot, which holds it).
pub(in crate::proxy) struct Idle<S> {
    pub shared: Arc<Shared>,
    pub pool: Arc<Pool>,
    pub places: Arc<Places>,
    pub io: S,
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub requests: u64,
}

impl<S> Idle<S> {
    /// The same connection on `io`, and what it was on.
    fn with<T>(self, io: T) -> (Idle<T>, S) {
        let idle = Idle {
            shared: self.shared,
            pool: self.pool,
            places: self.places,
            io,
            peer: self.peer,
            tls: self.tls,
            requests: self.requests,
        };
        (idle, self.io)
    }
}

/// A client connection's transport, as far as parking goes: where it waits.
pub(in crate::proxy) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Park a connection until `until` (its keep-alive or head deadline); `open` is the
    /// frontend's hold on it.
    fn park<O: Send + 'static>(idle: Idle<Self>, open: O, until: Instant);
}

impl Transport for TcpStream {
    fn park<O: Send + 'static>(idle: Idle<Self>, open: O, until: Instant) {
        match lot() {
            Some(lot) => to_lot(lot, idle, Box::new(open), until),
            None => in_task(idle, open, until),
        }
    }
}

impl Transport for Box<TlsStream<TcpStream>> {
    fn park<O: Send + 'static>(idle: Idle<Self>, open: O, until: Instant) {
        in_task(idle, open, until);
    }
}

/// A plain connection in the lot: the rest of what it keeps.
struct Waiting {
    idle: Idle<()>,
    open: Box<dyn Send>,
    parked: Parked,
    /// Where its serving task runs again.
    runtime: Handle,
}

/// The process's lot, started with the first connection that parks; `None` (parking in
/// tasks) if it cannot be.
fn lot() -> Option<&'static Lot<Waiting>> {
    static LOT: OnceLock<Option<Arc<Lot<Waiting>>>> = OnceLock::new();
    LOT.get_or_init(|| {
        Lot::start("edgepin-lot")
            .inspect_err(|e| tracing::warn!(error = %e, "idle connections wait in tasks: no lot"))
            .ok()
    })
    .as_deref()
}

fn to_lot(lot: &'static Lot<Waiting>, idle: Idle<TcpStream>, open: Box<dyn Send>, until: Instant) {
    let (idle, io) = idle.with(());
    let socket = match io.into_std() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(error = %e, "closing an idle connection that cannot leave the runtime");
            return;
        }
    };
    let parked = idle.places.park();
    let id = parked.id();
    let places = Arc::clone(&idle.places);
    let waiting = Waiting {
        idle,
        open,
        parked,
        runtime: Handle::current(),
    };
    match lot.park(id, socket, until, waiting) {
        Ok(()) => places.arm(id, Closer::Lot(lot)),
        Err((socket, waiting)) => {
            let Waiting { idle, open, .. } = waiting;
            match TcpStream::from_std(socket) {
                Ok(io) => in_task(idle.with(io).0, open, until),
                Err(e) => tracing::debug!(error = %e, "closing an idle connection that cannot wait"),
            }
        }
    }
}

impl Resume for Waiting {
    fn resume(self, socket: std::net::TcpStream, until: Instant) {
        let Waiting {
            idle,
            open,
            parked,
            runtime,
        } = self;
        drop(parked);
        runtime.spawn(async move {
            match TcpStream::from_std(socket) {
                Ok(io) => wait(idle.with(io).0, open, until, None).await,
                Err(e) => tracing::debug!(error = %e, "closing a parked connection: cannot serve it"),
            }
        });
    }
}

/// Park in a task of its own.
fn in_task<S: Transport, O: Send + 'static>(idle: Idle<S>, open: O, until: Instant) {
    let places = Arc::clone(&idle.places);
    let parked = places.park();
    let id = parked.id();
    let task = tokio::spawn(wait(idle, open, until, Some(parked)));
    places.arm(id, Closer::Task(task.abort_handle()));
}

/// Wait for the client's next bytes, then start a serving task with them; the deadline,
/// an error, the client closing or a newcomer needing its place (the task is aborted, or
/// the lot closes it) end it. `parked`: while it waits in a task.
///
/// An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice in
/// its state (as arguments and as the locals they are moved into), about 160 bytes more
/// held by every parked connection.
#[expect(clippy::manual_async_fn, reason = "an async fn's state is 144 bytes larger")]
fn wait<S: Transport, O: Send + 'static>(
    mut idle: Idle<S>,
    open: O,
    until: Instant,
    parked: Option<Parked>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let mut first = Vec::new();
        let read = spare::read_with(&mut idle.io, |data| first.extend_from_slice(data));
        let got = tokio::time::timeout_at(until.into(), read).await;
        drop(parked);
        if !matches!(got, Ok(Ok(n)) if n > 0) {
            return;
        }
        let mut buffers = spare::take();
        if buffers.rbuf.capacity() >= first.len() {
            buffers.rbuf.extend_from_slice(&first);
        } else {
            buffers.rbuf = first;
        }
        tokio::spawn(super::run(Conn::resume(idle, buffers), open));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain connection leaves the runtime for the lot (no task waits for it) and
    /// comes back to be served when its client sends the next request.
    #[tokio::test]
    async fn a_plain_connection_waits_in_the_lot_and_comes_back_with_its_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (shared, places, mut client, listener) = super::super::test_connection().await;
        let (io, _) = listener.accept().await.unwrap();
        let idle = Idle {
            shared,
            pool: Arc::new(Pool::default()),
            places: Arc::clone(&places),
            io,
            peer: None,
            tls: false,
            requests: 1,
        };
        TcpStream::park(idle, (), Instant::now() + Duration::from_secs(30));
        assert_eq!(places.parked(), 1);
        let tasks = Handle::current().metrics().num_alive_tasks();
        assert_eq!(tasks, 0, "no task waits for a parked plain connection");
        // No Host: the engine answers 400 itself, so it served the connection again.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut answer)).await;
        assert!(read.is_ok_and(|r| r.is_ok()), "answered");
        assert_eq!(&answer, b"HTTP/1.1 400");
        assert_eq!(places.parked(), 0, "no longer parked");
    }

    /// What a parked plain connection's task holds (its future; tokio adds about 130
    /// bytes of task header): the socket and a few words, no buffer and no wrapper.
    #[tokio::test]
    async fn a_parked_connection_holds_its_socket_and_a_few_words() {
        let (shared, places, io, _listener) = super::super::test_connection().await;
        let idle = Idle {
            shared,
            pool: Arc::new(Pool::default()),
            places: Arc::clone(&places),
            io,
            peer: None,
            tls: false,
            requests: 1,
        };
        // The frontend's hold on a connection is a few words too.
        let open = [0u64; 4];
        let parked = wait(idle, open, Instant::now(), Some(places.park()));
        let size = std::mem::size_of_val(&parked);
        eprintln!("parked future: {size} bytes");
        assert!(size <= 384, "a parked connection's future is {size} bytes");
    }
}
