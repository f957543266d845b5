//! The counters of one request, bumped in one place per event: both engines report what
//! happens to a request here (it arrived, was routed, got a server, was sent elsewhere,
//! failed, opened a tunnel, ended) and this module turns each event into the listener,
//! backend and (backend, server) counters the stats page shows. What is held while the
//! request lives (in flight, a session on the backend and the server) is given back when
//! the account ends, also when its task is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::failure::{Counted, Refusal};
use crate::runtime::{BackendRt, Member, Shared, Snapshot};
use crate::state::{FrontendCounters, StickyDecision, Traffic};

/// One request's (or tunnel's) counters.
#[derive(Debug)]
pub struct Account {
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    tls: bool,
    pub started: Instant,
    backend: Option<usize>,
    /// The server counted in its `sessions` now.
    member: Option<usize>,
    tunnel: bool,
    ended: bool,
}

/// What the end of a request adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub ws_bytes_in: u64,
    pub ws_bytes_out: u64,
}

impl Account {
    /// A request arrived on the `tls` (https) or plain listener.
    pub fn start(shared: &Arc<Shared>, snapshot: &Arc<Snapshot>, tls: bool) -> Account {
        let account = Account {
            shared: Arc::clone(shared),
            snapshot: Arc::clone(snapshot),
            tls,
            started: Instant::now(),
            backend: None,
            member: None,
            tunnel: false,
            ended: false,
        };
        account.frontend().requests_total.inc();
        shared.in_flight.inc();
        account
    }

    pub fn frontend(&self) -> &FrontendCounters {
        if self.tls {
            &self.shared.https
        } else {
            &self.shared.http
        }
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn backend(&self) -> Option<&BackendRt> {
        Some(&self.snapshot.backends[self.backend?])
    }

    pub fn member(&self) -> Option<&Member> {
        Some(&self.backend()?.members[self.member?])
    }

    /// Routed to backend `b`.
    pub fn routed(&mut self, b: usize) {
        self.backend = Some(b);
        let b = &self.snapshot.backends[b];
        b.retry_budget.on_request();
        b.counters.traffic.sessions.inc();
        b.counters.traffic.sessions_total.inc();
    }

    /// A server was chosen (again, after a redispatch).
    pub fn picked(&mut self, member: usize, how: Option<StickyDecision>) {
        self.member = Some(member);
        let (Some(b), Some(m)) = (self.backend(), self.member()) else {
            return;
        };
        m.traffic.sessions.inc();
        m.traffic.sessions_total.inc();
        if let Some(how) = how {
            m.traffic.sticky(how);
            b.counters.traffic.sticky(how);
        }
    }

    /// The chosen server failed and another is tried: a redispatch, counted on the server
    /// left (as HAProxy does) and on the backend.
    pub fn redispatched(&mut self) {
        if let Some(m) = self.member() {
            m.traffic.redispatches.inc();
            m.traffic.sessions.dec();
        }
        if let Some(b) = self.backend() {
            b.counters.traffic.redispatches.inc();
        }
        self.member = None;
    }

    /// Spend a retry from the backend's budget, if another server can take the request,
    /// the backend's `retries` (attempts after the first) are not all spent, and the
    /// retry budget allows; counted when spent. `tried`: the servers failed before the
    /// current one.
    pub fn spend_retry(&self, tried: &[usize]) -> bool {
        let Some(b) = self.backend() else { return false };
        if tried.len() as u32 >= b.cfg.retries {
            return false;
        }
        let current = self.member;
        let alternative = b
            .members
            .iter()
            .enumerate()
            .any(|(i, m)| Some(i) != current && !tried.contains(&i) && m.accepts_new() && m.state.weight() > 0);
        if !alternative {
            return false;
        }
        if !b.retry_budget.try_retry() {
            b.counters.retry_budget_exhausted.inc();
            return false;
        }
        self.each_traffic(|t| t.retries.inc());
        true
    }

    /// A connection to the server: opened for this request, or reused from the pool.
    pub fn upstream_connection(&self, reused: bool) {
        if reused {
            self.each_traffic(|t| t.reuses.inc());
        } else {
            self.each_traffic(|t| t.connects.inc());
        }
    }

    /// An error talking to the server.
    pub fn upstream_error(&self, counted: Counted) {
        match counted {
            Counted::Connect => self.each_traffic(|t| t.connect_errors.inc()),
            Counted::Response => self.each_traffic(|t| t.response_errors.inc()),
            Counted::Nothing => {}
        }
    }

    /// What the server's passive health learns from this request.
    pub fn passive(&self, failed: bool) {
        let Some(m) = self.member() else { return };
        if failed {
            crate::health::passive_failure(&m.state, self.snapshot.config.health.passive_fall);
        } else {
            m.state.passive_success();
        }
    }

    /// Answered by edgepin itself; returns the status.
    pub fn refused(&self, why: &Refusal) -> u16 {
        match why {
            Refusal::Status(status, _) => {
                match status {
                    400 | 405 | 413 | 414 | 431 | 501 | 505 => self.frontend().request_errors.inc(),
                    403 => self.frontend().denied.inc(),
                    _ => {}
                }
                *status
            }
            Refusal::TooMany { .. } => {
                self.frontend().denied.inc();
                429
            }
            Refusal::NoServer => {
                if let Some(b) = self.backend() {
                    b.counters.no_server.inc();
                }
                503
            }
            Refusal::NewSessionsCapped { .. } => {
                if let Some(b) = self.backend() {
                    b.counters.new_sessions_refused.inc();
                }
                503
            }
            Refusal::SessionGone => {
                if let Some(b) = self.backend() {
                    b.counters.traffic.sid_unknown.inc();
                }
                self.session_refused();
                400
            }
        }
    }

    /// The request's Engine.IO session died with its server and edgepin answered 400.
    pub fn session_refused(&self) {
        if let Some(b) = self.backend() {
            b.counters.sid_refused.inc();
        }
    }

    /// A server answered `Session ID unknown`.
    pub fn sid_unknown(&self) {
        self.each_traffic(|t| t.sid_unknown.inc());
    }

    pub fn redirected(&self) {
        self.frontend().redirects.inc();
    }

    /// The request became a WebSocket tunnel.
    pub fn tunnel_opened(&mut self) {
        self.tunnel = true;
        self.each_traffic(|t| {
            t.tunnels.inc();
            t.tunnels_total.inc();
        });
    }

    fn each_traffic(&self, f: impl Fn(&Traffic)) {
        if let Some(m) = self.member() {
            f(&m.traffic);
        }
        if let Some(b) = self.backend() {
            f(&b.counters.traffic);
        }
    }

    /// The request (or tunnel) is over.
    pub fn end(&mut self, t: Totals) -> Duration {
        let duration = self.started.elapsed();
        if std::mem::replace(&mut self.ended, true) {
            return duration;
        }
        let frontend = self.frontend();
        frontend.responses.count(t.status);
        frontend.bytes_in.add(t.bytes_in);
        frontend.bytes_out.add(t.bytes_out);
        let finished = crate::state::Finished {
            status: t.status,
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            duration,
            ws_bytes_in: t.ws_bytes_in,
            ws_bytes_out: t.ws_bytes_out,
            tunnel: self.tunnel,
        };
        if let Some(b) = self.backend() {
            b.counters.traffic.finished(&finished);
        }
        if let Some(m) = self.member() {
            m.traffic.finished(&finished);
        }
        self.shared.in_flight.dec();
        duration
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.end(Totals::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Health;

    /// A backend whose servers are all up.
    fn backend(retries: u32, servers: usize) -> (Arc<Shared>, Arc<Snapshot>) {
        let (shared, snapshot) = crate::runtime::one_backend(&format!("retries: {retries}"), servers);
        for m in &snapshot.backends[0].members {
            m.state.set_health(Health::Up, "test");
        }
        (shared, snapshot)
    }

    /// A request routed to the backend and sent to server `first`.
    fn account(shared: &Arc<Shared>, snapshot: &Arc<Snapshot>, first: usize) -> Account {
        let mut a = Account::start(shared, snapshot, false);
        a.routed(0);
        a.picked(first, None);
        a
    }

    #[test]
    fn retries_are_the_attempts_after_the_first() {
        let (shared, snapshot) = backend(2, 4);
        let mut a = account(&shared, &snapshot, 0);
        assert!(a.spend_retry(&[]), "first retry");
        a.redispatched();
        a.picked(1, None);
        assert!(a.spend_retry(&[0]), "second retry");
        a.redispatched();
        a.picked(2, None);
        assert!(!a.spend_retry(&[0, 1]), "retries: 2 allows two");
        let server = &snapshot.backends[0].members[0].traffic;
        assert_eq!(server.retries.get(), 1);
    }

    #[test]
    fn retries_zero_never_retries() {
        let (shared, snapshot) = backend(0, 3);
        assert!(!account(&shared, &snapshot, 0).spend_retry(&[]));
    }

    #[test]
    fn no_retry_without_another_server_that_takes_requests() {
        let (shared, snapshot) = backend(3, 2);
        let a = account(&shared, &snapshot, 0);
        assert!(!a.spend_retry(&[1]), "the other one failed already");
        snapshot.backends[0].members[1].state.set_health(Health::Down, "test");
        assert!(!a.spend_retry(&[]), "the other one is down");
    }
}
