//! Upgraded connections (WebSocket tunnels) that edgepin can close from outside.
//!
//! pingora has no handle to end a tunnel it is pumping. For upgrade requests we open the
//! upstream TCP connection ourselves (pingora's custom L4 connector) and keep a duplicate
//! of the socket; shutting the duplicate down ends the tunnel at once. The client then
//! gets a WebSocket close frame (1001 going away) instead of a bare TCP close.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType, Result};

/// WebSocket close frame, server to client: code 1001 "going away".
pub const CLOSE_GOING_AWAY: &[u8] = &[0x88, 0x02, 0x03, 0xE9];

/// Where the connector leaves the duplicate socket for the request to register.
#[derive(Debug, Default)]
pub struct TunnelSlot(Mutex<Option<std::net::TcpStream>>);

impl TunnelSlot {
    pub fn take(&self) -> Option<std::net::TcpStream> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Connects one upgrade request's upstream and keeps a duplicate of the socket.
#[derive(Debug)]
pub struct TunnelConnector {
    pub slot: Arc<TunnelSlot>,
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(ErrorType::ConnectError, "tunnels need a TCP address");
        };
        let stream = match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(inet)).await {
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
            .and_then(|std| Ok((std.try_clone()?, tokio::net::TcpStream::from_std(std)?)));
        let (duplicate, stream) = match socket {
            Ok(pair) => pair,
            Err(e) => return Err(Error::because(ErrorType::ConnectError, "duplicating tunnel socket", e)),
        };
        let _ = stream.set_nodelay(true);
        *self.slot.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(duplicate);
        Ok(stream.into())
    }
}
