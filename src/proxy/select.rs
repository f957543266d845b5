//! Choosing the server for a request: the balance algorithm of the backend, and for
//! sticky backends the whole rule — Engine.IO sid first (the server that issued it),
//! then the cookie (if its server can take it), else a bounded consistent hash of the
//! client address. New work sees a server in slow start at its ramped weight; pinned
//! sessions (sid, cookie) go to their server whatever its ramp.

use std::net::IpAddr;

use crate::balance::{HashCandidate, addr_key, pick_bounded};
use crate::config::Balance;
use crate::runtime::{BackendRt, Member};
use crate::state::StickyDecision;
use crate::sticky::exchange::Exchange;
use crate::sticky::sid::SidTable;

/// The server chosen for the request (an index into the backend's members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub member: usize,
    /// How a sticky backend chose it (None for round robin / least conn).
    pub sticky: Option<StickyDecision>,
}

/// The outcome of a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Picked(Pick),
    /// The server that must serve it (`pinned`: a sticky session's) or every server that
    /// could, is at `max_connections`: wait for a slot, then select again.
    Full {
        pinned: Option<usize>,
    },
    /// No server can take it: 503.
    NoServer,
    /// The request's Engine.IO session lives on a server that cannot serve it any more:
    /// answer `400 Session ID unknown` so the client opens a new session at once.
    SessionGone,
}

/// What a request offers the selection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub client: Option<IpAddr>,
    pub sid: Option<&'a str>,
    /// Opens a new Engine.IO session.
    pub handshake: bool,
    pub cookie: Option<&'a [u8]>,
    /// Members that already failed this request.
    pub tried: &'a [usize],
}

/// A new Engine.IO session is within its client's `sticky.handshake_rate` (sticky
/// backends; else 429 and how long to wait), then within its backend's `new_sessions` cap
/// (any backend; else 503 and when to come back). The client's limit is asked first, so
/// one client over its own limit spends none of the backend's. Existing sessions are
/// never refused here.
pub fn admit_handshake(
    shared: &crate::runtime::Shared,
    cfg: &crate::config::Config,
    b: &BackendRt,
    sticky: &Exchange,
    client: Option<IpAddr>,
) -> Result<(), crate::failure::Refusal> {
    use crate::failure::Refusal;
    use crate::rate_limit::{retry_after_secs, spread_retry_after};
    let now = std::time::Instant::now();
    if let (true, Some(rate), Some(client)) = (sticky.handshake, cfg.sticky.handshake_rate, client) {
        shared
            .handshakes
            .check(client, rate, now)
            .map_err(|wait| Refusal::TooMany {
                retry_after: retry_after_secs(wait),
            })?;
    }
    if let (true, Some(rate)) = (sticky.new_session, b.cfg.new_sessions) {
        b.new_sessions.check(rate, now).map_err(|wait| {
            let entropy = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), now);
            Refusal::NewSessionsCapped {
                retry_after: spread_retry_after(wait, rate, entropy),
            }
        })?;
    }
    Ok(())
}

/// Wait until [`select`] finds a server with a free slot (the backend's queue when every
/// candidate is at `max_connections`, or the pinned server's queue), or refuse: no server
/// (503), the session's server gone (Engine.IO 400), queue full or timed out (503).
pub async fn acquire(
    b: &BackendRt,
    sids: &SidTable,
    req: &Request<'_>,
) -> Result<(Pick, crate::state::ActiveGuard), crate::failure::Refusal> {
    use crate::failure::Refusal;
    let deadline = tokio::time::Instant::now() + b.cfg.timeouts.queue;
    loop {
        let pick = match select(b, sids, req) {
            Selection::Picked(p) => p,
            Selection::NoServer => return Err(Refusal::NoServer),
            Selection::SessionGone => return Err(Refusal::SessionGone),
            Selection::Full { pinned } => {
                if b.queued.get() >= u64::from(b.cfg.max_queue) {
                    b.counters.queue_full.inc();
                    return Err(Refusal::Status(503, "queue full: every server is at max_connections"));
                }
                // Every waiting request is in its backend's queue (bounded by max_queue);
                // one that only its pinned server may serve is in that server's queue
                // too, as in HAProxy.
                let _queued = (b.queued.hold(), pinned.map(|i| b.members[i].state.queued.hold()));
                let waited = tokio::time::timeout_at(deadline, slot_freed(b, pinned, req.tried)).await;
                if waited.is_err() {
                    b.counters.queue_timeouts.inc();
                    return Err(Refusal::Status(
                        503,
                        "queue timeout: every server is at max_connections",
                    ));
                }
                continue;
            }
        };
        let m = &b.members[pick.member];
        let slot = match m.max_connections {
            Some(limit) => m.state.try_acquire(limit),
            None => Some(m.state.acquire()),
        };
        // Lost the race for the last slot: choose again.
        if let Some(slot) = slot {
            return Ok((pick, slot));
        }
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

pub fn select(b: &BackendRt, sids: &SidTable, req: &Request<'_>) -> Selection {
    match b.cfg.balance {
        Balance::Sticky => sticky(b, sids, req),
        Balance::Source => hashed(b, req, None, |m| m.state.active()),
        Balance::RoundRobin => {
            let pick = b.rr.pick(
                |i| weight(&b.members[i]),
                b.members.len(),
                |i| fresh(b, req, i),
                |i| b.members[i].ramp_share(),
            );
            found(b, req, pick, None)
        }
        Balance::LeastConn => {
            let pick = b.least.pick(
                b.members.len(),
                |i| b.members[i].effective_weight(),
                |i| b.members[i].state.active(),
                |i| fresh(b, req, i),
            );
            found(b, req, pick, None)
        }
    }
}

fn weight(m: &Member) -> u32 {
    if m.retired_until.is_some() { 0 } else { m.state.weight() }
}

/// Eligible for a new session: accepts new work, has a free slot, not tried yet.
fn fresh(b: &BackendRt, req: &Request<'_>, i: usize) -> bool {
    let m = &b.members[i];
    m.accepts_new() && m.has_room() && !req.tried.contains(&i)
}

/// Turn an algorithm's answer into a selection, telling "all full" from "none up".
fn found(b: &BackendRt, req: &Request<'_>, pick: Option<usize>, sticky: Option<StickyDecision>) -> Selection {
    match pick {
        Some(member) => Selection::Picked(Pick { member, sticky }),
        None if b
            .members
            .iter()
            .enumerate()
            .any(|(i, m)| m.accepts_new() && weight(m) > 0 && !req.tried.contains(&i)) =>
        {
            Selection::Full { pinned: None }
        }
        None => Selection::NoServer,
    }
}

fn sticky(b: &BackendRt, sids: &SidTable, req: &Request<'_>) -> Selection {
    // 1. The server that issued the session id.
    if let Some(sid) = req.sid
        && let Some(state) = sids.lookup(sid)
    {
        return match b.member_of(&state) {
            Some(i) if req.tried.contains(&i) => Selection::SessionGone,
            Some(i) if b.members[i].serves_existing() => pinned(b, i, StickyDecision::Sid),
            // DOWN, MAINT, or gone from this backend: the session is lost.
            _ => Selection::SessionGone,
        };
    }
    // 2. The cookie, if it names a server of this backend that can take the request:
    // a request of an existing session may go to a DRAIN server, a new one may not.
    let mut redispatch = false;
    // A value that names no server is forged or stale: ignored.
    if let Some(value) = req.cookie
        && let Some(i) = b.members.iter().position(|m| m.cookie_id.as_bytes() == value)
    {
        let m = &b.members[i];
        let usable = if req.handshake {
            m.accepts_new()
        } else {
            m.serves_existing()
        };
        if usable && !req.tried.contains(&i) {
            return pinned(b, i, StickyDecision::Cookie);
        }
        redispatch = true;
    }
    // 3. Bounded consistent hash of the client address.
    let decision = if redispatch {
        StickyDecision::Redispatch
    } else {
        StickyDecision::Hash
    };
    hashed(b, req, Some(decision), |m| m.state.sessions().max(0) as u64)
}

/// A pinned session's server: serve it there, or wait for a slot there.
fn pinned(b: &BackendRt, i: usize, how: StickyDecision) -> Selection {
    if b.members[i].has_room() {
        Selection::Picked(Pick {
            member: i,
            sticky: Some(how),
        })
    } else {
        Selection::Full { pinned: Some(i) }
    }
}

fn hashed(
    b: &BackendRt,
    req: &Request<'_>,
    sticky: Option<StickyDecision>,
    load: impl Fn(&Member) -> u64,
) -> Selection {
    let candidates: Vec<HashCandidate> = b
        .members
        .iter()
        .enumerate()
        .filter(|&(i, _)| fresh(b, req, i))
        .map(|(i, m)| HashCandidate {
            index: i,
            id: m.hash_id,
            weight: m.effective_weight(),
            load: load(m),
        })
        .collect();
    let key = req.client.map(addr_key).unwrap_or(0);
    let pick = pick_bounded(key, &candidates, b.cfg.hash_balance_factor);
    found(b, req, pick, sticky)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Admin, Health};
    use std::sync::Arc;

    fn backend(balance: &str, n: usize) -> (Arc<crate::runtime::Shared>, Arc<crate::runtime::Snapshot>) {
        crate::runtime::one_backend(&format!("balance: {balance}"), n)
    }

    fn picked(s: Selection) -> (usize, Option<StickyDecision>) {
        match s {
            Selection::Picked(p) => (p.member, p.sticky),
            other => panic!("expected a pick, got {other:?}"),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn sid_wins_over_cookie_and_address() {
        let (shared, snap) = backend("sticky", 4);
        let b = &snap.backends[0];
        shared.sids.learn("S1", &b.members[2].state);
        let cookie = b.members[0].cookie_id.clone();
        let req = Request {
            client: ip("127.0.0.9"),
            sid: Some("S1"),
            cookie: Some(cookie.as_bytes()),
            ..Default::default()
        };
        assert_eq!(picked(select(b, &shared.sids, &req)), (2, Some(StickyDecision::Sid)));
    }

    #[test]
    fn sid_of_a_down_server_is_a_lost_session() {
        let (shared, snap) = backend("sticky", 2);
        let b = &snap.backends[0];
        shared.sids.learn("S1", &b.members[1].state);
        b.members[1].state.set_health(Health::Down, "test");
        let req = Request {
            sid: Some("S1"),
            ..Default::default()
        };
        assert_eq!(select(b, &shared.sids, &req), Selection::SessionGone);
        // A DRAIN server keeps its sessions.
        b.members[1].state.set_health(Health::Up, "test");
        b.members[1].state.set_admin(Admin::Drain, "test");
        assert_eq!(picked(select(b, &shared.sids, &req)).0, 1);
    }

    #[test]
    fn cookie_of_a_down_server_falls_back_to_the_hash() {
        let (shared, snap) = backend("sticky", 3);
        let b = &snap.backends[0];
        let cookie = b.members[1].cookie_id.clone();
        let req = Request {
            client: ip("127.0.0.2"),
            handshake: true,
            cookie: Some(cookie.as_bytes()),
            ..Default::default()
        };
        assert_eq!(picked(select(b, &shared.sids, &req)), (1, Some(StickyDecision::Cookie)));
        b.members[1].state.set_health(Health::Down, "test");
        let (m, how) = picked(select(b, &shared.sids, &req));
        assert_ne!(m, 1);
        assert_eq!(how, Some(StickyDecision::Redispatch));
    }

    #[test]
    fn a_new_session_does_not_follow_a_cookie_to_a_drain_server() {
        let (shared, snap) = backend("sticky", 2);
        let b = &snap.backends[0];
        b.members[0].state.set_admin(Admin::Drain, "test");
        let cookie = b.members[0].cookie_id.clone();
        let new = Request {
            handshake: true,
            cookie: Some(cookie.as_bytes()),
            ..Default::default()
        };
        assert_eq!(picked(select(b, &shared.sids, &new)).0, 1);
        let existing = Request {
            sid: Some("unknown-to-us"),
            cookie: Some(cookie.as_bytes()),
            ..Default::default()
        };
        assert_eq!(picked(select(b, &shared.sids, &existing)).0, 0);
    }

    #[test]
    fn forged_cookie_is_ignored() {
        let (shared, snap) = backend("sticky", 3);
        let b = &snap.backends[0];
        let req = Request {
            client: ip("127.0.0.3"),
            handshake: true,
            cookie: Some(b"w1"),
            ..Default::default()
        };
        assert_eq!(picked(select(b, &shared.sids, &req)).1, Some(StickyDecision::Hash));
    }

    #[test]
    fn a_returning_server_takes_few_new_sessions_but_keeps_its_pinned_ones() {
        let (shared, snap) = backend("sticky", 4);
        let b = &snap.backends[0];
        let back = &b.members[3].state;
        let on_back = |sids: &SidTable| {
            (0..400u32)
                .filter(|i| {
                    let client = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919)));
                    let req = Request {
                        client,
                        handshake: true,
                        ..Default::default()
                    };
                    picked(select(b, sids, &req)).0 == 3
                })
                .count()
        };
        let before = on_back(&shared.sids);
        assert!((60..=140).contains(&before), "a quarter of new clients: {before}");
        back.set_admin(Admin::Maint, "test");
        back.set_admin(Admin::Ready, "test");
        assert!(back.ramp.active(), "the default window applies");
        let ramping = on_back(&shared.sids);
        assert!(ramping <= 20, "5 % of its weight: {ramping} of 400");
        shared.sids.learn("S3", back);
        let pinned = Request {
            sid: Some("S3"),
            ..Default::default()
        };
        assert_eq!(picked(select(b, &shared.sids, &pinned)), (3, Some(StickyDecision::Sid)));

        // Round robin: the same ramp, the same small share.
        let (shared, snap) = backend("round_robin", 4);
        let b = &snap.backends[0];
        b.members[3].state.set_health(Health::Down, "test");
        b.members[3].state.set_health(Health::Up, "test");
        let hits = (0..1000)
            .filter(|_| picked(select(b, &shared.sids, &Request::default())).0 == 3)
            .count();
        assert!(hits <= 40, "{hits} of 1000");
    }

    #[test]
    fn all_down_is_no_server_and_all_full_is_full() {
        let (shared, snap) = backend("round_robin", 2);
        let b = &snap.backends[0];
        for m in &b.members {
            m.state.set_health(Health::Down, "test");
        }
        assert_eq!(select(b, &shared.sids, &Request::default()), Selection::NoServer);
    }
}
