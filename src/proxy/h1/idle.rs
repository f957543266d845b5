//! A connection between requests that has idled for [`PARK_AFTER`]: parked. Its serving
//! task ends and a small task of its own waits for the client's next bytes (or the end
//! of its keep-alive, or the client leaving), holding the socket and a few words, no
//! buffer (`spare`) and none of the engine's state. When bytes come, a serving task
//! starts again with them. So a thousand idle keep-alive connections cost about a
//! kilobyte each, and a busy connection never pays for the parking: the next request
//! usually comes long before [`PARK_AFTER`].
//!
//! A parked connection is registered in the proxy's [`Places`]: when a new client finds
//! every place taken, the connection parked the longest is closed for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::places::{Parked, Places};
use crate::runtime::Shared;

use super::{Conn, Pool, spare};

/// How long a connection waits for its next request in its serving task before parking.
/// Back-to-back requests (a page's assets, a client that pipelines or reuses its
/// connection at once, a Socket.IO poll that follows its answer) come well within it on
/// a LAN; a client a WAN round trip away parks between requests at any value worth
/// having. Short, because until it parks a connection holds its serving future (about
/// 16 KiB in a release build): 5,000 connections opened in a burst held ~800 of them at
/// once at 50 ms, and the heap kept that high-water mark (`keepalive_idle` 2.10 → 1.50
/// KiB per idle connection at 5 ms).
pub const PARK_AFTER: Duration = Duration::from_millis(5);

/// What a parked connection keeps.
pub(super) struct Idle<S> {
    pub shared: Arc<Shared>,
    pub pool: Arc<Pool>,
    pub places: Arc<Places>,
    pub io: S,
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub requests: u64,
}

/// Park a connection until `until` (its keep-alive or head deadline); `open` is the
/// frontend's hold on it.
pub(super) fn park<S, O>(idle: Idle<S>, open: O, until: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    O: Send + 'static,
{
    let places = Arc::clone(&idle.places);
    let parked = places.park();
    let id = parked.id();
    let task = tokio::spawn(wait(idle, open, until, parked));
    places.arm(id, task.abort_handle());
}

/// The parked connection's task: its next bytes start a serving task; the deadline, an
/// error, the client closing or a newcomer needing its place (the task is aborted) end it.
///
/// An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice in
/// its state (as arguments and as the locals they are moved into), about 160 bytes more
/// held by every parked connection.
#[expect(clippy::manual_async_fn, reason = "an async fn's state is 144 bytes larger")]
fn wait<S, O>(
    mut idle: Idle<S>,
    open: O,
    until: Instant,
    parked: Parked,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    O: Send + 'static,
{
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
        let parked = wait(idle, open, Instant::now(), places.park());
        let size = std::mem::size_of_val(&parked);
        eprintln!("parked future: {size} bytes");
        assert!(size <= 384, "a parked connection's future is {size} bytes");
    }
}
