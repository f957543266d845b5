//! The per-request context: what the filters of one request decide and measure.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::Snapshot;
use crate::state::{ActiveGuard, StickyDecision, TunnelTicket};

use super::tunnel::{BodyEndGate, TunnelSlot};

/// The server chosen for the request (an index into the backend's members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub member: usize,
    /// How a sticky backend chose it (None for round robin / least conn).
    pub sticky: Option<StickyDecision>,
}

/// What the sticky rules found in the request.
#[derive(Debug, Default)]
pub struct StickyCtx {
    /// The Engine.IO request's session id, when it has one.
    pub sid: Option<String>,
    /// An Engine.IO request without sid: its answer carries a new sid to learn.
    pub handshake: bool,
    /// An Engine.IO request at all (`EIO=` in the query).
    pub engine_io: bool,
    /// Send `Set-Cookie` with this member's id in the response.
    pub set_cookie: bool,
    /// The first answer bytes of a handshake, until the sid is found.
    pub scan: Vec<u8>,
    /// Done looking at the answer body.
    pub scan_done: bool,
    /// The answer is a 400 to an Engine.IO request: look for `Session ID unknown`.
    pub check_unknown: bool,
    /// A new session counted on the server while its handshake is in flight.
    pub pending: Option<Arc<crate::state::ServerState>>,
}

/// Everything one request carries through the proxy filters.
#[derive(Debug)]
pub struct RequestCtx {
    /// The snapshot this request is served with, start to end.
    pub snapshot: Option<Arc<Snapshot>>,
    pub started: Instant,
    /// Arrived on the TLS listener.
    pub tls: bool,
    /// The client's address (the peer, or from X-Forwarded-For of a trusted proxy).
    pub client: Option<IpAddr>,
    pub route: Option<usize>,
    pub backend: Option<usize>,
    pub pick: Option<Pick>,
    /// Members already tried and failed, for retries.
    pub tried: Vec<usize>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The slot held on the chosen server.
    pub slot: Option<ActiveGuard>,
    pub sticky: StickyCtx,
    pub upgrade: bool,
    /// The upstream socket of a tunnel, deposited by our connector.
    pub tunnel_slot: Option<Arc<TunnelSlot>>,
    /// Holds back the server's bytes until the upgrade request's body end has passed.
    pub tunnel_gate: Option<Arc<BodyEndGate>>,
    pub tunnel: Option<TunnelTicket>,
    /// Status sent downstream (0 if none).
    pub status: u16,
    /// Answered by edgepin itself (redirect, error, Engine.IO 400).
    pub local: bool,
    /// The upstream response started (no retry after this).
    pub response_started: bool,
    pub connected_at: Option<Instant>,
    pub first_byte_at: Option<Instant>,
    /// Request body bytes counted against `limits.max_body_bytes`.
    pub body_bytes: u64,
    pub ws_bytes_in: u64,
    pub ws_bytes_out: u64,
    /// An error message for the access log.
    pub error: Option<String>,
    /// Counted in `Shared::in_flight`.
    pub in_flight: bool,
    /// The server ended the tunnel (not the client).
    pub upstream_ended: bool,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            snapshot: None,
            started: Instant::now(),
            tls: false,
            client: None,
            route: None,
            backend: None,
            pick: None,
            tried: Vec::new(),
            attempts: 0,
            slot: None,
            sticky: StickyCtx::default(),
            upgrade: false,
            tunnel_slot: None,
            tunnel_gate: None,
            tunnel: None,
            status: 0,
            local: false,
            response_started: false,
            connected_at: None,
            first_byte_at: None,
            body_bytes: 0,
            ws_bytes_in: 0,
            ws_bytes_out: 0,
            error: None,
            in_flight: false,
            upstream_ended: false,
        }
    }
}

impl RequestCtx {
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_deref()
    }

    pub fn backend_rt(&self) -> Option<&crate::runtime::BackendRt> {
        Some(&self.snapshot()?.backends[self.backend?])
    }

    pub fn member(&self) -> Option<&crate::runtime::Member> {
        Some(&self.backend_rt()?.members[self.pick?.member])
    }
}
