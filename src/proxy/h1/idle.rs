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
/// connection at once, a Socket.IO poll that follows its answer) come well within it.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

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
async fn wait<S, O>(mut idle: Idle<S>, open: O, until: Instant, parked: Parked)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    O: Send + 'static,
{
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
