//! edgepin's HTTP/2 engine: serves the HTTP/2 connections of the https listener (ALPN
//! `h2`, `tls.h2`) after the frontend's TLS handshake, on the h2 crate's server. It moves
//! bytes and asks the same decisions as the HTTP/1 engine (`route`, `select`,
//! `sticky::exchange`, `failure`), with the counters through `proxy::account`; each
//! stream goes to the servers over HTTP/1.1 through the HTTP/1 engine's pool.
//!
//! One task per connection drives the connection and all its streams: the connection
//! future accepts streams and moves frames, each stream is a future in a set polled by
//! the same task ([`serve`]), so a stream costs its boxed future and no task, and the
//! frames its future queues go out in the connection's next write. The h2 crate holds
//! the protocol limits (`settings`); the engine adds the time limits: the preface within
//! `timeouts.handshake` (read by the frontend, as part of the handshake), a connection
//! with no stream closed after `timeouts.keepalive`, a request body's reads within
//! `timeouts.client`, and a stream's answer waiting for window at most
//! `settings::stall_deadline`. A stream holds a server connection only through
//! `places`. On SIGTERM a connection says GOAWAY and ends when its streams have.
//!
//! - `stream`: one request: route, select, send, answer (and retry).
//! - `request` / `answer`: the HTTP/1.1 head a server gets, the HTTP/2 head a client gets.
//! - `flow`: bytes under flow control both ways; a stream as a byte pipe for the relay.
//! - `tunnel`: WebSockets over HTTP/2 (RFC 8441).
//! - `places`: what one connection and one address may hold of the servers.

mod answer;
mod flow;
mod forward;
mod local;
mod places;
mod request;
mod settings;
mod stream;
mod tunnel;
mod upload;

pub use places::Places;
pub use settings::{H2_LIMITS, H2Limits};

use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::config::Config;
use crate::runtime::Shared;

use super::h1::{Peer, Pool};

/// How long a closing connection (GOAWAY sent, no stream left) may take to say goodbye:
/// a client that never answers the GOAWAY's ping is dropped after this.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long streams left when the connection broke may take to finish their accounts.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// A client's HTTP/2 connection, after its preface.
pub type Connection<T> = h2::server::Connection<T, Bytes>;

/// Read the client preface and exchange settings (the frontend bounds it with
/// `timeouts.handshake`).
pub async fn handshake<T>(io: T, cfg: &Config) -> Result<Connection<T>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    settings::builder(cfg.limits.max_header_bytes).handshake(io).await
}

/// No set of stream futures yet (typed after `serve`'s futures, which have no name).
/// Each stream's future is boxed: a `FuturesUnordered` allocates a stub task the size of
/// one of its futures for as long as it lives, so an unboxed set would cost a whole
/// stream (~3 KiB) more for every connection with a stream open (an idle WebSocket over
/// HTTP/2 holds one for hours); boxed, the stub is a pointer.
fn no_streams<F>(
    _: &impl Fn(Arc<Conn>, http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) -> F,
) -> Option<FuturesUnordered<Pin<Box<F>>>> {
    None
}

/// What the streams of one connection share.
pub(super) struct Conn {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    places: Arc<places::ConnPlaces>,
    peer: Option<IpAddr>,
    /// `peer` as text, for the forwarding headers of every stream.
    peer_text: Vec<u8>,
}

/// Serve an HTTP/2 connection until the client, a timeout or a stop ends it. `open` is
/// the frontend's hold on the connection; it lives as long as the connection.
pub async fn serve<T, O>(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    places: Arc<Places>,
    mut conn: Box<Connection<T>>,
    peer: Peer,
    open: O,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (keepalive, per_connection, per_client) = {
        let snap = shared.snapshot();
        let l = &snap.config.limits;
        (
            snap.config.timeouts.keepalive,
            l.h2_streams_per_connection,
            l.h2_streams_per_client,
        )
    };
    let ip = peer.addr.map(|a| a.ip());
    let ctx = Arc::new(Conn {
        places: Arc::new(places.connection(ip, per_connection, per_client)),
        shared,
        pool,
        peer: ip,
        peer_text: ip.map(|a| a.to_string().into_bytes()).unwrap_or_default(),
    });
    // The set exists while streams do: an empty one still holds a stream's worth of
    // memory (its stub task), which an idle connection should not.
    let mut streams = no_streams(&stream::serve);
    let mut timer = pin!(tokio::time::sleep(keepalive));
    // Armed while no stream is open: until when the connection may idle (or close).
    let mut armed = false;
    let mut closing = false;
    // An idle connection sleeps: this wakes it when the process begins to stop (SIGTERM,
    // or the old process of an upgrade), so its client gets GOAWAY at once.
    let mut stopped = pin!(ctx.shared.stopped());
    poll_fn(|cx| {
        loop {
            if let Some(set) = streams.as_mut() {
                while let Poll::Ready(Some(())) = set.poll_next_unpin(cx) {}
                if set.is_empty() {
                    streams = None;
                }
            }
            if !closing && (ctx.shared.stopping() || stopped.as_mut().poll(cx).is_ready()) {
                conn.graceful_shutdown();
                closing = true;
                armed = false;
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    streams
                        .get_or_insert_with(FuturesUnordered::new)
                        .push(Box::pin(stream::serve(Arc::clone(&ctx), req, respond)));
                    armed = false;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            if streams.is_some() {
                armed = false;
                return Poll::Pending;
            }
            if !armed {
                let wait = if closing { CLOSE_WAIT } else { keepalive };
                timer.as_mut().reset(Instant::now() + wait);
                armed = true;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if closing {
                return Poll::Ready(());
            }
            // Idle for `timeouts.keepalive`: GOAWAY, then close.
            conn.graceful_shutdown();
            closing = true;
            armed = false;
        }
    })
    .await;
    // Streams left when the connection broke see it at once; let them account.
    if let Some(mut set) = streams {
        let _ = tokio::time::timeout(DRAIN_WAIT, async { while set.next().await.is_some() {} }).await;
    }
    drop(open);
}
