//! A deadline for each HTTP/1 request head (`timeouts.header`), against slow-header
//! ("slowloris") clients.
//!
//! pingora times out each read of a request head separately, so a client that sends a
//! byte every few seconds holds its connection for ever. Like nginx's
//! `client_header_timeout` and HAProxy's `timeout http-request`, the whole head must
//! arrive in time: the connection is wrapped in a small state machine that watches the
//! bytes go by — the head ends at the first blank line after the request line (blank
//! lines before it, which HTTP/1 parsers skip, do not end it); the next head starts with
//! the first byte read after the final response began (a `100 Continue` is not one);
//! after a `101` the connection is a tunnel and is left alone. HTTP/2 connections are
//! not wrapped (streams, not heads).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

#[derive(Debug)]
enum Phase {
    /// Reading a request head; it must be complete before the sleep ends.
    Head { deadline: Pin<Box<Sleep>>, scan: HeadScan },
    /// Head done: the body, then the response.
    Body,
    /// The response began; the next byte read starts a new head.
    Idle,
    /// Upgraded: not HTTP any more.
    Tunnel,
}

/// A downstream connection whose request heads have a deadline.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
}

/// Wrap `stream` unless it speaks HTTP/2.
pub fn wrap(stream: Stream, limit: Duration) -> Stream {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        return stream;
    }
    Box::new(HeadDeadline {
        inner: stream,
        limit,
        phase: head(limit),
    })
}

fn head(limit: Duration) -> Phase {
    Phase::Head {
        deadline: Box::pin(tokio::time::sleep(limit)),
        scan: HeadScan::default(),
    }
}

/// Finds the end of a request head as its bytes arrive, in any split.
#[derive(Debug, Default, Clone, Copy)]
struct HeadScan {
    /// A byte of the request line has been seen (CR and LF before it are skipped).
    started: bool,
    /// Nothing but CR since the last LF: an LF now ends the head.
    line_empty: bool,
}

impl HeadScan {
    /// Feed the next bytes; true once the head is complete.
    fn ends_in(&mut self, data: &[u8]) -> bool {
        for &b in data {
            match b {
                b'\n' if self.started && self.line_empty => return true,
                b'\n' => self.line_empty = true,
                b'\r' => {}
                _ => {
                    self.started = true;
                    self.line_empty = false;
                }
            }
        }
        false
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Phase::Head { deadline, .. } = &mut this.phase
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            let data = &buf.filled()[before..];
            if !data.is_empty() {
                if matches!(this.phase, Phase::Idle) {
                    this.phase = head(this.limit);
                }
                if let Phase::Head { scan, .. } = &mut this.phase
                    && scan.ends_in(data)
                {
                    this.phase = Phase::Body;
                }
            }
        }
        result
    }
}

enum Status {
    SwitchingProtocols,
    Informational,
}

/// What a write that starts a response head says of it (pingora writes a head at once).
fn status_class(data: &[u8]) -> Option<Status> {
    let code = data
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| data.strip_prefix(b"HTTP/1.0 "))?;
    match code {
        [b'1', b'0', b'1', ..] => Some(Status::SwitchingProtocols),
        [b'1', ..] => Some(Status::Informational),
        _ => None,
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match (&this.phase, status_class(data)) {
            (Phase::Body | Phase::Head { .. }, Some(Status::SwitchingProtocols)) => this.phase = Phase::Tunnel,
            // A `100 Continue` asks for the rest of the body: still this request.
            (Phase::Body, Some(Status::Informational)) => {}
            (Phase::Body, _) => this.phase = Phase::Idle,
            _ => {}
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(parts: &[&[u8]]) -> bool {
        let mut scan = HeadScan::default();
        parts.iter().any(|p| scan.ends_in(p))
    }

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"\nbody"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\na\r\n", b"\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(
            ends(&head.iter().map(std::slice::from_ref).collect::<Vec<_>>()),
            "byte by byte"
        );
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
    }

    #[test]
    fn blank_lines_before_the_request_line_do_not_end_the_head() {
        assert!(!ends(&[b"\r\n\r\n\r\n", b"\n\n", b"GET / HTTP/1.1\r\n"]));
        assert!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
    }

    #[test]
    fn informational_responses_are_told_from_final_ones() {
        assert!(matches!(
            status_class(b"HTTP/1.1 101 Switching"),
            Some(Status::SwitchingProtocols)
        ));
        assert!(matches!(
            status_class(b"HTTP/1.1 100 Continue\r\n"),
            Some(Status::Informational)
        ));
        assert!(status_class(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(status_class(b"body bytes").is_none());
    }
}
