//! Assigning a server to a request: choose one with `select`, wait in the backend's queue
//! when every candidate is at `max_connections`, hold a slot on it, and record the choice
//! (counters, sticky decision, cookie to set, a new session in flight).

use std::sync::Arc;

use crate::config::Balance;
use crate::runtime::BackendRt;
use crate::state::StickyDecision;

use super::ctx::{Pick, RequestCtx};
use super::select::{self, Selection};
use super::{EdgeProxy, Refusal};

impl EdgeProxy {
    /// Wait until `select` finds a server with a free slot, or the queue timeout.
    pub(super) async fn acquire(
        &self,
        ctx: &mut RequestCtx,
        cookie: Option<Vec<u8>>,
    ) -> std::result::Result<Pick, Refusal> {
        let Some(snapshot) = ctx.snapshot.clone() else {
            return Err(Refusal::Status(500, "no snapshot"));
        };
        let Some(bi) = ctx.backend else {
            return Err(Refusal::Status(500, "no backend"));
        };
        let b = &snapshot.backends[bi];
        let deadline = tokio::time::Instant::now() + b.cfg.timeouts.queue;
        loop {
            let pick = match ctx.pick {
                Some(p) => p,
                None => {
                    let req = select::Request {
                        client: ctx.client,
                        sid: ctx.sticky.sid.as_deref(),
                        handshake: ctx.sticky.handshake,
                        cookie: cookie.as_deref(),
                        tried: &ctx.tried,
                    };
                    match select::select(b, &self.shared.sids, &req) {
                        Selection::Picked(p) => p,
                        Selection::NoServer => return Err(Refusal::NoServer),
                        Selection::SessionGone => return Err(Refusal::SessionGone),
                        Selection::Full { pinned } => {
                            if b.queued.get() >= u64::from(b.cfg.max_queue) {
                                b.counters.queue_full.inc();
                                return Err(Refusal::Status(503, "queue full: every server is at max_connections"));
                            }
                            // Every waiting request is in its backend's queue (bounded by
                            // max_queue); one that only its pinned server may serve is in
                            // that server's queue too, as in HAProxy.
                            let _queued = (b.queued.hold(), pinned.map(|i| b.members[i].state.queued.hold()));
                            let waited = tokio::time::timeout_at(deadline, slot_freed(b, pinned, &ctx.tried)).await;
                            if waited.is_err() {
                                b.counters.queue_timeouts.inc();
                                return Err(Refusal::Status(
                                    503,
                                    "queue timeout: every server is at max_connections",
                                ));
                            }
                            continue;
                        }
                    }
                }
            };
            let m = &b.members[pick.member];
            let slot = match m.max_connections {
                Some(limit) => m.state.try_acquire(limit),
                None => Some(m.state.acquire()),
            };
            match slot {
                Some(slot) => {
                    ctx.slot = Some(slot);
                    ctx.pick = Some(pick);
                    return Ok(pick);
                }
                // Lost the race for the last slot: choose again.
                None => ctx.pick = None,
            }
        }
    }

    /// Record the chosen server: counters, sticky decision, cookie, pending session.
    pub(super) fn commit_pick(&self, ctx: &mut RequestCtx, pick: Pick, cookie: Option<&[u8]>) {
        let Some(b) = ctx.backend_rt() else { return };
        let m = &b.members[pick.member];
        m.traffic.sessions.inc();
        m.traffic.sessions_total.inc();
        if let Some(how) = pick.sticky {
            m.traffic.sticky(how);
            b.counters.traffic.sticky(how);
        }
        let cookie_differs = cookie != Some(m.cookie_id.as_bytes());
        let set_cookie = b.cfg.balance == Balance::Sticky
            && b.cfg.cookie.is_some()
            && cookie_differs
            && matches!(
                pick.sticky,
                Some(StickyDecision::Hash | StickyDecision::Redispatch | StickyDecision::Sid)
            );
        let pending = ctx.sticky.handshake.then(|| Arc::clone(&m.state));
        ctx.sticky.set_cookie = set_cookie;
        if let Some(state) = pending {
            if let Some(old) = ctx.sticky.pending.replace(Arc::clone(&state)) {
                old.add_sessions(-1);
            }
            state.add_sessions(1);
        }
    }

    pub(super) fn release_pick(&self, ctx: &mut RequestCtx) {
        if let Some(m) = ctx.member() {
            m.traffic.sessions.dec();
        }
        ctx.slot = None;
    }
}

/// A slot frees on the pinned server, or on any server of the backend the request may
/// still use.
async fn slot_freed(b: &BackendRt, pinned: Option<usize>, tried: &[usize]) {
    let servers = b.members.iter().enumerate().filter(|(i, m)| match pinned {
        Some(p) => *i == p,
        None => m.max_connections.is_some() && !tried.contains(i),
    });
    let waits: Vec<_> = servers.map(|(_, m)| Box::pin(m.state.slot_freed.notified())).collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures_util::future::select_all(waits).await;
}
