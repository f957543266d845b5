//! Upgraded connections (WebSocket tunnels): opened by our own L4 connector so that
//! edgepin can close them from outside, and so a pingora race cannot tear them down.
//!
//! Closing: pingora has no handle to end a tunnel it is pumping. We keep a duplicate of
//! the upstream socket; shutting the duplicate down ends the tunnel at once, and the
//! client gets a WebSocket close frame (1001 going away) instead of a bare TCP close.
//!
//! The race (pingora 0.9.1, cloudflare/pingora#946): the upgrade request's own empty
//! body end is queued for the upstream half as soon as the request is sent; if that half
//! reads the server's 101 before it takes the queued body end, it mistakes the body end
//! for the end of the tunnel and closes it right after the 101. Behind TLS about 3 % of
//! Socket.IO upgrades died this way. Our socket holds back the server's bytes until the
//! body end has passed `request_body_filter` ([`BodyEndGate::open`]) and then yields once,
//! so the upstream half always takes the body end first.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// WebSocket close frame, server to client: code 1001 "going away".
pub const CLOSE_GOING_AWAY: &[u8] = &[0x88, 0x02, 0x03, 0xE9];

/// If the body end never comes (it always does for a well-formed request), the server's
/// bytes flow anyway after this long.
const GATE_FALLBACK: Duration = Duration::from_secs(1);

/// Where the connector leaves the duplicate socket for the request to register.
#[derive(Debug, Default)]
pub struct TunnelSlot(Mutex<Option<std::net::TcpStream>>);

impl TunnelSlot {
    pub fn take(&self) -> Option<std::net::TcpStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Opens when the upgrade request's body end has been handed to pingora's upstream half.
#[derive(Debug, Default)]
pub struct BodyEndGate {
    open: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl BodyEndGate {
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Open now, or remember who to wake when it opens.
    fn poll_open(&self, cx: &mut Context<'_>) -> bool {
        if self.is_open() {
            return true;
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // Opened between the check and storing the waker?
        self.is_open()
    }
}

/// The upstream socket of a tunnel, reads gated by a [`BodyEndGate`].
#[derive(Debug)]
struct GatedSocket {
    inner: TcpStream,
    gate: Arc<BodyEndGate>,
    /// Passed the gate and yielded once: reads go straight through from now on.
    through: bool,
    yielded: bool,
    fallback: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncRead for GatedSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.through {
            let open = this.gate.poll_open(cx) || this.fallback.as_mut().poll(cx).is_ready();
            if !open {
                return Poll::Pending;
            }
            if !this.yielded {
                // Let the queued body end be taken before anything we read.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.through = true;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl VirtualSocket for GatedSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.inner.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

/// Connects one upgrade request's upstream: keeps a duplicate of the socket in `slot` and
/// gates reads on `gate`.
#[derive(Debug)]
pub struct TunnelConnector {
    pub slot: Arc<TunnelSlot>,
    pub gate: Arc<BodyEndGate>,
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "tunnels need a TCP address");
        };
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(inet)).await {
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("timeout {:?} connecting to {inet}", self.timeout),
                );
            }
            Ok(Err(e)) => {
                let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    ErrorType::ConnectRefused
                } else {
                    ErrorType::ConnectError
                };
                return Err(Error::because(kind, format!("connecting to {inet}"), e));
            }
            Ok(Ok(s)) => s,
        };
        let socket = stream
            .into_std()
            .and_then(|std| Ok((std.try_clone()?, TcpStream::from_std(std)?)));
        let (duplicate, stream) = match socket {
            Ok(pair) => pair,
            Err(e) => return Err(Error::because(ErrorType::ConnectError, "duplicating tunnel socket", e)),
        };
        let _ = stream.set_nodelay(true);
        *self.slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(duplicate);
        let gated = GatedSocket {
            inner: stream,
            gate: Arc::clone(&self.gate),
            through: false,
            yielded: false,
            fallback: Box::pin(tokio::time::sleep(GATE_FALLBACK)),
        };
        Ok(VirtualSocketStream::new(Box::new(gated)).into())
    }
}
