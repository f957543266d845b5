//! Bodies on the HTTP/1 engine, both directions, through the framing of `framing`: the
//! client's request body as an attempt sends it ([`Upload`], the engine's side of
//! `upstream::Client`: framed as it came, bounded by `limits.max_body_bytes` and
//! `timeouts.client`, the client watched for leaving), and the close of a connection
//! whose client may still be sending one ([`Conn::linger`]).

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::failure::Failure;
use crate::proxy::upstream::Client;
use crate::proxy::upstream::head::{Header, Parsed};

use super::framing::Framing;
use super::response::{self, Rewrite};
use super::{ClientRead, Conn, READ_CHUNK};

/// How long a connection closed on a client still sending its body is read (and the bytes
/// dropped) before it is closed, so that the answer is not wiped by the reset a close
/// with unread bytes sends (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(2);

/// Client bytes held while an answer is awaited (pipelined requests); past this the
/// client is no longer read until the answer has come.
const WATCH_CAP: usize = 4 * READ_CHUNK;

/// The request body of one attempt, from the client's connection.
pub(super) struct Upload<'c, S> {
    conn: &'c mut Conn<S>,
    /// How the body is delimited; `None`: nothing to stream (no body, or one held whole
    /// and sent with the head).
    framing: Option<Framing>,
    /// Bytes at the start of the unread client bytes that the framing took and the server
    /// has not yet.
    unsent: usize,
    limit: u64,
    wait: Duration,
    /// The client's HTTP/1 minor version: interim answers go to HTTP/1.1 clients only
    /// (RFC 9110 §15.2).
    minor: u8,
    /// Body bytes that reached the server.
    pub sent: u64,
}

impl<'c, S: AsyncRead + AsyncWrite + Unpin> Upload<'c, S> {
    pub fn new(conn: &'c mut Conn<S>, framing: Option<Framing>, limit: u64, wait: Duration, minor: u8) -> Self {
        Upload {
            conn,
            framing,
            unsent: 0,
            limit,
            wait,
            minor,
            sent: 0,
        }
    }

    /// The whole body was read from the client (the connection may carry another request).
    pub fn read_whole(&self) -> bool {
        self.framing.is_none_or(|f| f.is_done())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client for Upload<'_, S> {
    fn ready(&self) -> &[u8] {
        let at = self.conn.rpos;
        &self.conn.rbuf[at..at + self.unsent]
    }

    fn sent(&mut self, n: usize) {
        self.conn.rpos += n;
        self.unsent -= n;
        self.sent += n as u64;
    }

    fn complete(&self) -> bool {
        self.read_whole()
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        loop {
            let Some(framing) = self.framing.as_mut() else {
                return Ok(());
            };
            if framing.is_done() {
                return Ok(());
            }
            let from = self.conn.rpos + self.unsent;
            if from < self.conn.rbuf.len() {
                let adv = framing
                    .advance(&self.conn.rbuf[from..], |_| {})
                    .map_err(|_| Failure::BodyMalformed)?;
                let framed = self.sent + (self.unsent + adv.used) as u64;
                if framing.decoded().unwrap_or(framed) > self.limit {
                    return Err(Failure::BodyTooLarge);
                }
                self.unsent += adv.used;
                if self.unsent > 0 || adv.done {
                    return Ok(());
                }
            }
            self.conn
                .read_client(self.wait, READ_CHUNK * 4)
                .await
                .map_err(|e| match e {
                    ClientRead::TimedOut => Failure::BodyStalled,
                    ClientRead::Closed | ClientRead::Failed => Failure::ClientGone,
                })?;
        }
    }

    async fn left(&mut self) {
        loop {
            if self.conn.pending().len() >= WATCH_CAP {
                std::future::pending::<()>().await;
            }
            self.conn.rbuf.reserve(READ_CHUNK);
            match self.conn.io.read_buf(&mut self.conn.rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    async fn interim(&mut self, raw: &[u8], parsed: &Parsed, headers: &[Header]) -> Result<(), Failure> {
        if self.minor == 0 {
            return Ok(());
        }
        self.conn.wbuf.clear();
        response::write_head(&mut self.conn.wbuf, raw, parsed, headers, Rewrite::default());
        if self.conn.flush_client(self.wait).await {
            Ok(())
        } else {
            Err(Failure::ClientGone)
        }
    }
}

/// What the access log says of a request body that went wrong.
pub(super) fn body_note(f: Failure) -> Option<&'static str> {
    match f {
        Failure::BodyTooLarge => Some("request body too large"),
        Failure::BodyMalformed => Some("malformed chunked request body"),
        Failure::BodyStalled => Some("request body not received in time"),
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Close a connection whose client may still be sending a body: end our side, then
    /// read and drop what comes until the client closes or [`LINGER`] has passed.
    pub(super) async fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
        let mut drop_buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), self.io.read(&mut drop_buf)).await {
            if n == 0 {
                break;
            }
        }
    }
}
