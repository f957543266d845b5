//! edgepin's HTTP/1 engine: serves the HTTP/1.1 (and 1.0) connections of both listeners
//! after the frontend's handshake. It moves bytes and asks the decisions (`route`,
//! `select`, `sticky::exchange`, `failure`) what to do; the counters of each request go
//! through `proxy::account`.
//!
//! Per connection, state is kept and reused across keep-alive requests: the read buffer,
//! the parsed head, the write buffer. A request head is read under `timeouts.header`
//! (from its first byte) and at most `limits.max_header_bytes` plus a request line, then
//! checked (`head`); the upstream head is written straight into the write buffer
//! (`request`); small bodies (up to [`REPLAY_BODY`]) are read whole so that a request can
//! be sent again when a connection fails, larger ones stream. Server connections come
//! from a keep-alive pool (`pool`). After a `101`, the two connections go to a tunnel
//! relay of their own (`proxy::relay`) and this task ends.

mod answer;
mod exchange;
pub mod fields;
mod framing;
mod head;
mod request;
mod response;

pub use super::upstream::pool::{PER_SERVER as POOL_PER_SERVER, Pool};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::runtime::Shared;

use super::upstream::AnswerBuf;

use head::Head;

/// Request bodies up to this size are read before the request is sent, so it can be
/// sent again (to another server, or on a new connection) if the first attempt fails.
pub const REPLAY_BODY: usize = 16 * 1024;

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

/// Serve HTTP/1 on `io` until the client or a timeout ends it, or it becomes a tunnel.
/// `open` is the frontend's hold on the connection; it lives as long as the connection.
pub async fn serve<S, O>(shared: Arc<Shared>, pool: Arc<Pool>, io: S, peer: Peer, open: O)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    O: Send + 'static,
{
    let mut conn = Conn {
        shared,
        pool,
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
    };
    loop {
        let snapshot = conn.shared.snapshot();
        let len = match conn.read_head(&snapshot.config).await {
            Ok(Some(len)) => len,
            Ok(None) => return,
            Err(refused) => {
                conn.refuse_head(&snapshot, refused).await;
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
                conn.linger().await;
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
}

/// What follows a request on its connection.
enum Next {
    KeepAlive,
    Close,
    /// Close, but the client may still be sending a body it was answered before: read and
    /// drop it for a while first (`answer::LINGER`).
    Linger,
    Tunnel(Box<exchange::Tunnel>),
}

/// One client connection's reusable state.
struct Conn<S> {
    shared: Arc<Shared>,
    /// Idle server connections, shared by every client connection.
    pool: Arc<Pool>,
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
}

/// A read from the client that did not happen.
#[derive(Debug)]
enum ClientRead {
    Closed,
    TimedOut,
    Failed,
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

    /// Read the next request head. `Ok(None)`: the connection ends quietly (closed, idle
    /// past keep-alive, stopping).
    async fn read_head(&mut self, cfg: &crate::config::Config) -> Result<Option<usize>, head::Refused> {
        let limits = &cfg.limits;
        let cap = head::head_limit(limits.max_header_bytes);
        // The head's deadline runs from its first byte; before it, the connection idles.
        let mut deadline = None;
        loop {
            if !self.pending().is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + cfg.timeouts.header);
                let rpos = self.rpos;
                match self.head.parse(&self.rbuf[rpos..], limits.max_header_bytes)? {
                    Some(len) => return Ok(Some(len)),
                    None if self.pending().len() >= cap => {
                        return Err(head::Refused {
                            status: 431,
                            why: "request head too large",
                        });
                    }
                    None => {}
                }
            }
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None if self.requests == 0 => cfg.timeouts.header,
                // SIGTERM: close idle keep-alive at once. An upgrade's drain lets it send
                // its next request (answered with `Connection: close`): closing now would
                // race a request already on its way.
                None if self.shared.stopping() && !self.shared.lifecycle.is_handed_over() => return Ok(None),
                None => cfg.timeouts.keepalive,
            };
            match self.read_client(wait, cap).await {
                Ok(_) => {}
                Err(ClientRead::TimedOut) if deadline.is_some() => {
                    return Err(head::Refused {
                        status: 408,
                        why: "request head not received in time",
                    });
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Answer a head that cannot be served, and close.
    async fn refuse_head(&mut self, snapshot: &Arc<crate::runtime::Snapshot>, refused: head::Refused) {
        let mut account = account::Account::start(&self.shared, snapshot, self.tls);
        let status = account.refused(&crate::failure::Refusal::Status(refused.status, refused.why));
        self.wbuf.clear();
        write_local(&mut self.wbuf, status, refused.why, &[], true);
        let wait = snapshot.config.timeouts.client;
        let sent = self.wbuf.len() as u64;
        self.flush_client(wait).await;
        let duration = account.end(account::Totals {
            status,
            bytes_out: sent,
            ..Default::default()
        });
        if snapshot.config.access_log && refused.status != 408 {
            AccessLine {
                client: self.peer,
                tls: self.tls,
                method: "-",
                path: "-",
                status,
                duration,
                local: true,
                error: Some(refused.why),
                ..AccessLine::default()
            }
            .log();
        }
    }
}

use super::access::AccessLine;
use super::account;

/// A response edgepin writes itself: `<status> <reason>[: detail]` as text.
fn write_local(out: &mut Vec<u8>, status: u16, detail: &str, headers: &[(&str, &str)], close: bool) {
    let reason = reason(status);
    let body = if detail.is_empty() {
        format!("{status} {reason}\n")
    } else {
        format!("{status} {reason}: {detail}\n")
    };
    write_local_body(out, status, "text/plain; charset=utf-8", headers, &body, close);
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// A response with a body of its own type (the Engine.IO 400, a redirect).
fn write_local_body(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
    close: bool,
) {
    use std::io::Write;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}
