//! A TLS connection accepted by edgepin itself (tokio-rustls over pingora's L4 stream),
//! dressed as a pingora [`Stream`](pingora::protocols::Stream) so that pingora's HTTP/2
//! server can run on it.
//!
//! pingora's own TLS listener gives every handshake 60 s and counts nothing until it is
//! done (`pingora-core` `services/listening.rs`); edgepin accepts TLS in its frontend
//! instead, under `timeouts.handshake` and inside `limits.max_connections`. pingora only
//! needs the ALPN result (to pick HTTP/2) and the socket digest (the client address),
//! which this wrapper reports from the layers below.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client connection after edgepin's TLS handshake.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<L4Stream>,
    digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
    /// Bytes read ahead (the HTTP/2 preface), given back before anything else is read.
    replay: &'static [u8],
}

impl TlsConn {
    pub fn new(inner: TlsStream<L4Stream>) -> TlsConn {
        let (_, conn) = inner.get_ref();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default();
        let version = conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        TlsConn {
            inner,
            digest: Arc::new(SslDigest::new(cipher, version, None, None, Vec::new())),
            alpn,
            replay: &[],
        }
    }

    /// Read the HTTP/2 client preface, to be read again by pingora's HTTP/2 server: the
    /// frontend waits for it under `timeouts.handshake`, as pingora's server would wait
    /// for it forever. False when the client sent something else.
    pub async fn read_h2_preface(&mut self) -> std::io::Result<bool> {
        let mut preface = [0u8; H2_PREFACE.len()];
        self.inner.read_exact(&mut preface).await?;
        if preface != H2_PREFACE {
            return Ok(false);
        }
        self.replay = H2_PREFACE;
        Ok(true)
    }

    fn l4(&self) -> &L4Stream {
        self.inner.get_ref().0
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay = &this.replay[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.l4().id()
    }
}

impl Ssl for TlsConn {
    fn get_ssl(&self) -> Option<&TlsRef> {
        None
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(Arc::clone(&self.digest))
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.l4().get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.l4().get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.l4().get_write_pending_time()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.l4().get_proxy_digest()
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.l4().get_socket_digest()
    }
}

#[async_trait]
impl Peek for TlsConn {}
