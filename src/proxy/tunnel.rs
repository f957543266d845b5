//! A request that became a WebSocket tunnel (a `101` passed on), for any engine: the
//! server connection, what is already read of either side, the request's account, its
//! server slot and tunnel ticket, and what its access-log line will say. [`Upgraded::run`]
//! relays (`relay`) until the tunnel ends, then accounts and logs it; the sticky exchange
//! keeps learning the Engine.IO sid from the server's first frames.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::runtime::Shared;
use crate::state::{ActiveGuard, ServerState, TunnelTicket};
use crate::sticky::exchange::Exchange;

use super::access::{Record, Requested};
use super::account::{Account, Totals};
use super::relay;

/// The request as its log line names it, kept after its head is gone.
#[derive(Debug, Clone, Default)]
pub struct Named {
    pub client: Option<std::net::IpAddr>,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
}

impl Named {
    pub fn of(r: &Requested<'_>) -> Named {
        Named {
            client: r.client,
            method: r.method.to_string(),
            host: r.host.map(str::to_string),
            path: r.path.to_string(),
        }
    }
}

/// An upgraded request, ready to relay.
pub struct Upgraded {
    pub shared: Arc<Shared>,
    pub ticket: TunnelTicket,
    pub server: Arc<ServerState>,
    /// `timeouts.tunnel` of the backend.
    pub idle: Duration,
    pub upstream: TcpStream,
    /// Bytes the server sent after its `101`, not yet passed on.
    pub to_client: Vec<u8>,
    pub acct: Account,
    pub sticky: Exchange,
    /// The tunnel holds its server slot (`max_connections`) until it ends.
    pub slot: ActiveGuard,
    pub named: Named,
    pub record: Record,
}

impl Upgraded {
    /// Relay until the tunnel ends, then account and log it. `to_server`: client bytes
    /// already read; `hold`: the frontend's hold on the client connection.
    pub async fn run<C, O>(self, client: C, to_server: Vec<u8>, hold: O)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Upgraded {
            shared,
            ticket,
            server,
            idle,
            upstream,
            to_client,
            mut acct,
            mut sticky,
            slot,
            named,
            mut record,
        } = self;
        let sids = &shared.sids;
        let watch = |data: &[u8]| {
            if sticky.scanning() {
                sticky.on_body(data, sids, &server);
            }
            !sticky.scanning()
        };
        let relayed = relay::relay(
            client,
            upstream,
            to_server,
            to_client,
            idle,
            Arc::clone(ticket.ctl()),
            watch,
        )
        .await;
        drop(ticket);
        drop(slot);
        sticky.on_end(sids);
        let duration = acct.end(Totals {
            status: 101,
            ws_bytes_in: relayed.bytes_in,
            ws_bytes_out: relayed.bytes_out,
            ..Totals::default()
        });
        drop(hold);
        record.ws_bytes_in = relayed.bytes_in;
        record.ws_bytes_out = relayed.bytes_out;
        record.upstream_ended = relayed.ended == relay::Ended::ServerClosed;
        if relayed.ended == relay::Ended::Idle {
            record.error_once("tunnel idle timeout");
        }
        let requested = Requested {
            client: named.client,
            method: &named.method,
            host: named.host.as_deref(),
            path: &named.path,
            upgrade: true,
        };
        record.log(&acct, &requested, sticky.sid.as_deref(), 101, duration);
    }
}
