//! edgepin's HTTP/1 engine: serves the HTTP/1.1 (and 1.0) connections of both listeners
//! after the frontend's handshake. It moves bytes and asks the decisions (`route`,
//! `select`, `sticky::exchange`, `failure`) what to do; the counters of each request go
//! through `proxy::account`.
//!
//! Per connection, state is kept and reused across keep-alive requests: the read buffer,
//! the parsed head, the write buffer. Between requests they go back to the thread's
//! spares (`spare`), so a connection waiting for its next request holds none of them
//! (thousands of keep-alive connections opened at once would otherwise each keep theirs
//! until they park), and a connection idle for a moment parks (`idle`). A request head is
//! read under `timeouts.header` (from its first byte) and at most
//! `limits.max_header_bytes` plus a request line, searched for its end in the new bytes
//! only, then parsed and checked once (`head`); the config that routes it is the one
//! current when the head has arrived. Then one request goes through `flow` (route,
//! admit, choose a server, try it) with its state in one value (`ctx`), the server side
//! through `proxy::upstream`, bodies and the answer through `answer`, edgepin's own
//! answers through `local`. The upstream head is written straight into the write buffer
//! (`request`); bodies up to `flow::HOLD_BODY` are read whole so that a request can be
//! sent again when a connection fails, larger ones stream. After a `101`, the two
//! connections go to a tunnel of their own (`proxy::tunnel`) and this task ends.

mod answer;
mod ctx;
mod flow;
pub(in crate::proxy) mod framing;
pub(super) mod head;
mod idle;
mod local;
pub(super) mod request;
mod response;
mod spare;

pub use super::upstream::pool::{PER_SERVER as POOL_PER_SERVER, Pool};

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::Shared;

use super::places::Places;
use super::upstream::AnswerBuf;
use head::Head;
pub(super) use idle::Transport;

/// Read buffer growth step.
const READ_CHUNK: usize = 4096;

/// A client connection: where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address (after a PROXY header).
    pub addr: Option<SocketAddr>,
    /// Arrived on the https listener.
    pub tls: bool,
}

/// Serve HTTP/1 on `io` until the client or a timeout ends it, or it becomes a tunnel
/// (spawn it: it is a task of its own). `open` is the frontend's hold on the connection;
/// it lives as long as the connection. `places` may close the connection while it idles.
pub fn serve<S, O>(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    places: Arc<Places>,
    io: S,
    peer: Peer,
    open: O,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: Transport,
    O: Send + 'static,
{
    let conn = Conn {
        wait: HeadWait::of(&shared.snapshot().config),
        shared,
        pool,
        places,
        io,
        peer: peer.addr.map(|a| a.ip()),
        peer_text: peer.addr.map(|a| a.ip().to_string().into_bytes()).unwrap_or_default(),
        tls: peer.tls,
        rbuf: Vec::new(),
        rpos: 0,
        head: Head::default(),
        wbuf: Vec::new(),
        answer: AnswerBuf::default(),
        requests: 0,
        busy: false,
    };
    run(conn, open)
}

/// The connection's requests, one after the other, until it ends, parks (`idle`) or
/// becomes a tunnel. Boxed: a parked connection starts it again in a task of its own.
/// Every busy connection holds this future: the rare ends (a refused head, linger) are
/// boxed when taken, so that it is the size of the common path only.
fn run<S, O>(mut conn: Conn<S>, open: O) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: Transport,
    O: Send + 'static,
{
    Box::pin(async move {
        loop {
            // The request is served by the config of the moment its head has arrived (a
            // reload meanwhile applies to it); the wait for the next one is bounded by it.
            let read = conn.read_head().await;
            let snapshot = conn.shared.snapshot();
            conn.wait = HeadWait::of(&snapshot.config);
            let len = match read {
                Ok(Waited::Head(len)) => len,
                Ok(Waited::Ended) => return,
                Ok(Waited::Park { since, until }) => {
                    S::park(conn.into_idle(since), open, until);
                    return;
                }
                Err(refused) => {
                    Box::pin(conn.refuse_head(&snapshot, refused)).await;
                    return;
                }
            };
            conn.rpos += len;
            conn.requests += 1;
            match conn.exchange(&snapshot).await {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.io.shutdown()).await;
                    return;
                }
                Next::Linger => {
                    Box::pin(conn.linger()).await;
                    return;
                }
                Next::Tunnel(t) => {
                    let Conn { io, rbuf, rpos, .. } = conn;
                    let to_server = rbuf.get(rpos..).map(<[u8]>::to_vec).unwrap_or_default();
                    tokio::spawn(t.run(io, to_server, open));
                    return;
                }
            }
        }
    })
}

/// How waiting for a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// A head of this many bytes, parsed into `Conn::head`.
    Head(usize),
    /// The connection ends quietly (closed, idle past keep-alive, stopping).
    Ended,
    /// No byte for [`idle::PARK_AFTER`] (or [`idle::PARK_AFTER_BUSY`]): park the connection
    /// until `until`.
    Park { since: Instant, until: Instant },
}

/// How long and how much a connection waits for a request head: from the config of its
/// last request (or of its start), so that no snapshot is held while it waits.
#[derive(Debug, Clone, Copy)]
struct HeadWait {
    max_header_bytes: usize,
    header: Duration,
    keepalive: Duration,
}

impl HeadWait {
    fn of(cfg: &crate::config::Config) -> HeadWait {
        HeadWait {
            max_header_bytes: cfg.limits.max_header_bytes,
            header: cfg.timeouts.header,
            keepalive: cfg.timeouts.keepalive,
        }
    }
}

/// What follows a request on its connection.
enum Next {
    KeepAlive,
    Close,
    /// Close, but the client may still be sending a body it was answered before: read and
    /// drop it for a while first (`answer::LINGER`).
    Linger,
    Tunnel(Box<super::tunnel::Upgraded>),
}

/// One client connection's reusable state.
struct Conn<S> {
    shared: Arc<Shared>,
    /// Idle server connections, shared by every client connection.
    pool: Arc<Pool>,
    /// The proxy's connection places (an idle connection may give its own up).
    places: Arc<Places>,
    /// Bounds of the wait for the next request head.
    wait: HeadWait,
    io: S,
    peer: Option<IpAddr>,
    /// `peer` as text, for the forwarding headers of every request.
    peer_text: Vec<u8>,
    tls: bool,
    /// Bytes from the client; `rbuf[rpos..]` not yet consumed.
    rbuf: Vec<u8>,
    rpos: usize,
    head: Head,
    /// Heads (and small bodies) on their way out.
    wbuf: Vec<u8>,
    /// Bytes from the server, and the fields of its answer head.
    answer: AnswerBuf,
    /// Requests served on this connection.
    requests: u64,
    /// Its last request came less than [`idle::PARK_AFTER_BUSY`] after the one before
    /// (parked meanwhile or not): it waits that long for the next before parking.
    busy: bool,
}

/// A read from the client that did not happen.
#[derive(Debug)]
enum ClientRead {
    Closed,
    TimedOut,
    Failed,
}

impl<S> Conn<S> {
    /// The connection, parked: what it keeps while it waits since `since` (its buffers go
    /// to the thread's spares).
    fn into_idle(mut self, since: Instant) -> idle::Idle<S> {
        spare::put(self.take_buffers());
        idle::Idle {
            shared: self.shared,
            pool: self.pool,
            places: self.places,
            io: self.io,
            peer: self.peer,
            tls: self.tls,
            requests: self.requests,
            since,
        }
    }

    /// The buffers, leaving empty ones (no allocation) in their place.
    fn take_buffers(&mut self) -> spare::Buffers {
        spare::Buffers {
            rbuf: std::mem::take(&mut self.rbuf),
            wbuf: std::mem::take(&mut self.wbuf),
            answer: std::mem::take(&mut self.answer),
            raw: std::mem::take(&mut self.head.raw),
            fields: std::mem::take(&mut self.head.fields),
        }
    }

    /// A parked connection that got bytes, with buffers (its first bytes in `rbuf`).
    fn resume(idle: idle::Idle<S>, b: spare::Buffers) -> Conn<S> {
        let mut head = Head::default();
        head.raw = b.raw;
        head.fields = b.fields;
        Conn {
            wait: HeadWait::of(&idle.shared.snapshot().config),
            shared: idle.shared,
            pool: idle.pool,
            places: idle.places,
            io: idle.io,
            peer: idle.peer,
            peer_text: idle.peer.map(|ip| ip.to_string().into_bytes()).unwrap_or_default(),
            tls: idle.tls,
            rbuf: b.rbuf,
            rpos: 0,
            head,
            wbuf: b.wbuf,
            answer: b.answer,
            requests: idle.requests,
            busy: idle.requests > 0 && idle.since.elapsed() < idle::PARK_AFTER_BUSY,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Unconsumed client bytes.
    fn pending(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Read more client bytes (at most up to a buffer of `cap`), within `wait`.
    async fn read_client(&mut self, wait: Duration, cap: usize) -> Result<usize, ClientRead> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 0 && self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let room = cap.saturating_sub(self.rbuf.len() - self.rpos).clamp(1, READ_CHUNK * 4);
        self.rbuf.reserve(room.min(READ_CHUNK));
        match tokio::time::timeout(wait, self.io.read_buf(&mut self.rbuf)).await {
            Err(_) => Err(ClientRead::TimedOut),
            Ok(Ok(0)) => Err(ClientRead::Closed),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(_)) => Err(ClientRead::Failed),
        }
    }

    /// Write all of `wbuf` to the client within `timeouts.client`.
    async fn flush_client(&mut self, wait: Duration) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let ok = matches!(
            tokio::time::timeout(wait, self.io.write_all(&self.wbuf)).await,
            Ok(Ok(()))
        );
        self.wbuf.clear();
        ok && matches!(tokio::time::timeout(wait, self.io.flush()).await, Ok(Ok(())))
    }

    /// Read the next request head.
    async fn read_head(&mut self) -> Result<Waited, head::Refused> {
        let limits = self.wait;
        let cap = head::head_limit(limits.max_header_bytes);
        // The head's deadline runs from its first byte; before it, the connection idles.
        let mut deadline = None;
        let mut end = head::HeadEnd::default();
        loop {
            if !self.pending().is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + limits.header);
                let rpos = self.rpos;
                if end.found(&self.rbuf[rpos..])
                    && let Some(len) = self.head.parse(&self.rbuf[rpos..], limits.max_header_bytes)?
                {
                    return Ok(Waited::Head(len));
                }
                if self.pending().len() >= cap {
                    return Err(head::Refused {
                        status: 431,
                        why: "request head too large",
                    });
                }
            }
            let read = match deadline {
                Some(d) => {
                    let wait = d.saturating_duration_since(Instant::now());
                    self.read_client(wait, cap).await
                }
                None => {
                    // Idle: no byte of a head yet (so nothing pending either).
                    let wait = match self.requests {
                        0 => limits.header,
                        // SIGTERM: close idle keep-alive at once. An upgrade's drain lets it
                        // send its next request (answered with `Connection: close`): closing
                        // now would race a request already on its way.
                        _ if self.shared.stopping() && !self.shared.lifecycle.is_handed_over() => {
                            return Ok(Waited::Ended);
                        }
                        _ => limits.keepalive,
                    };
                    let since = Instant::now();
                    let until = since + wait;
                    let park_after = if self.busy {
                        idle::PARK_AFTER_BUSY
                    } else {
                        idle::PARK_AFTER
                    };
                    match self.read_idle(wait.min(park_after)).await {
                        Err(ClientRead::TimedOut) if wait > park_after => {
                            return Ok(Waited::Park { since, until });
                        }
                        other => {
                            self.busy = self.requests > 0;
                            other
                        }
                    }
                }
            };
            match read {
                Ok(_) => {}
                Err(ClientRead::TimedOut) if deadline.is_some() => {
                    return Err(head::Refused {
                        status: 408,
                        why: "request head not received in time",
                    });
                }
                Err(_) => return Ok(Waited::Ended),
            }
        }
    }

    /// Wait for the client's next bytes holding no buffer (see `spare`): the buffers go
    /// to the thread's spares meanwhile, and a set comes back with the bytes.
    async fn read_idle(&mut self, wait: Duration) -> Result<usize, ClientRead> {
        spare::put(self.take_buffers());
        self.rpos = 0;
        let Conn {
            io,
            rbuf,
            wbuf,
            answer,
            head,
            ..
        } = self;
        let read = spare::read_with(io, |data| {
            let b = spare::take();
            (*rbuf, *wbuf, *answer) = (b.rbuf, b.wbuf, b.answer);
            (head.raw, head.fields) = (b.raw, b.fields);
            rbuf.extend_from_slice(data);
        });
        match tokio::time::timeout(wait, read).await {
            Err(_) => Err(ClientRead::TimedOut),
            Ok(Ok(0)) => Err(ClientRead::Closed),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(_)) => Err(ClientRead::Failed),
        }
    }

    /// Answer a head that cannot be served, and close.
    async fn refuse_head(&mut self, snapshot: &Arc<crate::runtime::Snapshot>, refused: head::Refused) {
        let mut account = Account::start(&self.shared, snapshot, self.tls);
        let why = crate::failure::Refusal::Status(refused.status, refused.why);
        let status = account.refused(&why);
        self.wbuf.clear();
        LocalAnswer::refusal(&why).write_h1(&mut self.wbuf, true);
        let wait = snapshot.config.timeouts.client;
        let sent = self.wbuf.len() as u64;
        self.flush_client(wait).await;
        let duration = account.end(Totals {
            status,
            bytes_out: sent,
            ..Default::default()
        });
        if refused.status != 408 {
            let record = Record {
                local: true,
                error: Some(refused.why.into()),
                ..Record::default()
            };
            let requested = Requested {
                client: self.peer,
                method: "-",
                path: "-",
                ..Requested::default()
            };
            record.log(&account, &requested, None, status, duration);
        }
    }
}

use super::access::{Record, Requested};
use super::account::{Account, Totals};
use super::local_answer::LocalAnswer;

/// For the tests of serving and parked connections: the proxy's shared state, its places,
/// and a connected socket (with its listener, kept open).
#[cfg(test)]
async fn test_connection() -> (Arc<Shared>, Arc<Places>, tokio::net::TcpStream, tokio::net::TcpListener) {
    let (shared, _) = crate::runtime::one_backend("balance: roundrobin", 1);
    let places = Arc::new(Places::new(
        Arc::new(tokio::sync::Semaphore::new(4)),
        4,
        Duration::from_secs(1),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let io = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    (shared, places, io, listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy connection's serving future is held by every connection between its first
    /// byte and its parking (and by every one served at once): no buffer of its own in it,
    /// and no rare path inline (refusals, local answers, a tunnel's set-up and linger are
    /// boxed when taken). 2,984 bytes, in a debug build and optimised (`bench-tools`, by
    /// DHAT); 3,976 and 3,952 with those paths inline and `ctx` kept twice by `serve`.
    #[tokio::test]
    async fn a_serving_connection_holds_no_buffer_in_its_future() {
        let (shared, places, io, _listener) = test_connection().await;
        let peer = Peer { addr: None, tls: false };
        let serving = serve(shared, Arc::new(Pool::default()), places, io, peer, ());
        let size = std::mem::size_of_val(&*serving);
        eprintln!("serving future: {size} bytes");
        assert!(size <= 3200, "a serving connection's future is {size} bytes");
    }
}
