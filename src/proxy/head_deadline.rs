//! A deadline for each HTTP/1 request head (`timeouts.header`), against slow-header
//! ("slowloris") clients.
//!
//! pingora times out each read of a request head separately, so a client that sends a
//! byte every few seconds holds its connection for ever. Like nginx's
//! `client_header_timeout` and HAProxy's `timeout http-request`, the whole head must
//! arrive in time: the connection is wrapped in a small state machine that watches the
//! bytes go by — the head ends at the first blank line; the next head starts with the
//! first byte read after the response began; after a `101` the connection is a tunnel
//! and is left alone. HTTP/2 connections are not wrapped (streams, not heads).

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
    Head {
        deadline: Pin<Box<Sleep>>,
        tail: [u8; 3],
        tail_len: usize,
    },
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
        tail: [0; 3],
        tail_len: 0,
    }
}

/// Whether `data`, following the `tail` of what came before, holds a blank line.
fn ends_head(tail: &[u8], data: &[u8]) -> bool {
    let mut window: Vec<u8> = Vec::with_capacity(tail.len() + data.len().min(4096));
    window.extend_from_slice(tail);
    window.extend_from_slice(data);
    window.windows(4).any(|w| w == b"\r\n\r\n") || window.windows(2).any(|w| w == b"\n\n")
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
                if let Phase::Head { tail, tail_len, .. } = &mut this.phase {
                    if ends_head(&tail[..*tail_len], data) {
                        this.phase = Phase::Body;
                    } else {
                        // Keep the last 3 bytes: a blank line may straddle two reads.
                        let mut joined = tail[..*tail_len].to_vec();
                        joined.extend_from_slice(&data[data.len().saturating_sub(3)..]);
                        let keep = &joined[joined.len().saturating_sub(3)..];
                        tail[..keep.len()].copy_from_slice(keep);
                        *tail_len = keep.len();
                    }
                }
            }
        }
        result
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Body | Phase::Head { .. }
                if data.starts_with(b"HTTP/1.1 101") || data.starts_with(b"HTTP/1.0 101") =>
            {
                this.phase = Phase::Tunnel;
            }
            Phase::Body => this.phase = Phase::Idle,
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

    #[test]
    fn finds_the_end_of_a_head_across_reads() {
        assert!(ends_head(b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(ends_head(b"\r\n\r", b"\nbody"));
        assert!(ends_head(b"a\r\n", b"\r\n"));
        assert!(!ends_head(b"", b"GET / HTTP/1.1\r\nHost: a\r\n"));
    }
}
