//! One server's state: health, admin state, weight (and its slow start), load, open
//! tunnels, and the slots requests hold on it. Shared by every backend that lists the
//! server, kept across reloads by the registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{CheckResult, Counter, Gauge, Ramp, lock};

/// What the health checks say about a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not checked yet (new server): it takes traffic, like HAProxy's initial UP state.
    Checking = 0,
    Up = 1,
    Down = 2,
}

/// What the operator says about a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Admin {
    Ready = 0,
    /// No new sessions; existing sticky sessions and tunnels continue.
    Drain = 1,
    /// Nothing is sent to it; open tunnels are closed.
    Maint = 2,
}

/// The status shown to operators, combining health and admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
    Drain,
    Maint,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Drain => "DRAIN",
            Status::Maint => "MAINT",
        }
    }
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Checking => "CHECKING",
            Health::Up => "UP",
            Health::Down => "DOWN",
        }
    }
}

impl Admin {
    pub fn as_str(self) -> &'static str {
        match self {
            Admin::Ready => "READY",
            Admin::Drain => "DRAIN",
            Admin::Maint => "MAINT",
        }
    }

    pub fn parse(s: &str) -> Option<Admin> {
        match s.to_ascii_lowercase().as_str() {
            "ready" | "up" => Some(Admin::Ready),
            "drain" => Some(Admin::Drain),
            "maint" => Some(Admin::Maint),
            _ => None,
        }
    }
}

/// Rarely written details of a server's state.
#[derive(Debug, Clone)]
pub struct StateDetail {
    /// When the displayed status last changed.
    pub since: Instant,
    /// Why it changed ("3 failed checks", "admin: drain by alice", ...).
    pub reason: String,
    pub last_check: Option<CheckResult>,
    /// Accumulated time spent DOWN, not counting the current DOWN period.
    pub downtime: Duration,
    /// Set when a reload removed the server: it drains until this deadline.
    pub retired: Option<Retired>,
}

/// What a predecessor process hands over about one server (see [`ServerState::restore`]).
#[derive(Debug, Clone)]
pub struct Restored {
    pub health: Option<Health>,
    pub admin: Option<Admin>,
    pub weight: Option<u32>,
    /// Why the server is in its status, and since when.
    pub reason: String,
    pub since: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct Retired {
    pub address: SocketAddr,
    pub until: Instant,
}

/// One server's health, admin state and load, shared by every backend that lists it.
#[derive(Debug)]
pub struct ServerState {
    pub name: String,
    health: AtomicU8,
    admin: AtomicU8,
    /// Current weight (config value, or set by an admin action until the next reload).
    weight: AtomicU32,
    /// Slow start: the share of its weight it gets while it comes back into service.
    pub ramp: Ramp,
    /// Requests in flight plus open tunnels, over all backends.
    active: AtomicU64,
    /// Open sticky sessions (sids in the table, and handshakes in flight).
    sessions: AtomicI64,
    /// Consecutive failures seen by live traffic (passive check).
    passive_failures: AtomicU32,
    /// UP→DOWN transitions.
    pub up_down_total: AtomicU64,
    /// Active checks that failed (HAProxy `chkfail`).
    pub checks_failed: Counter,
    /// Requests waiting for a free connection slot on this server (pinned sessions; the
    /// others wait in their backend's queue for any server).
    pub queued: Gauge,
    /// Wakes one request waiting for a slot here (pinned to this server, or free to take
    /// any server of its backend) when a slot frees. It lives with the server, so slots
    /// freed by requests of an older config or of another backend wake it too.
    pub slot_freed: tokio::sync::Notify,
    /// Open WebSocket tunnels, so MAINT and drain deadlines can close them.
    pub tunnels: Arc<TunnelSet>,
    detail: Mutex<StateDetail>,
}

impl ServerState {
    pub fn new(name: &str, weight: u32) -> ServerState {
        ServerState {
            name: name.to_string(),
            health: AtomicU8::new(Health::Checking as u8),
            admin: AtomicU8::new(Admin::Ready as u8),
            weight: AtomicU32::new(weight),
            ramp: Ramp::default(),
            active: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            passive_failures: AtomicU32::new(0),
            up_down_total: AtomicU64::new(0),
            checks_failed: Counter::default(),
            queued: Gauge::default(),
            slot_freed: tokio::sync::Notify::new(),
            tunnels: Arc::default(),
            detail: Mutex::new(StateDetail {
                since: Instant::now(),
                reason: "starting".into(),
                last_check: None,
                downtime: Duration::ZERO,
                retired: None,
            }),
        }
    }

    pub fn health(&self) -> Health {
        match self.health.load(Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Checking,
        }
    }

    pub fn admin(&self) -> Admin {
        match self.admin.load(Relaxed) {
            1 => Admin::Drain,
            2 => Admin::Maint,
            _ => Admin::Ready,
        }
    }

    pub fn status(&self) -> Status {
        match (self.admin(), self.health()) {
            (Admin::Maint, _) => Status::Maint,
            (_, Health::Down) => Status::Down,
            (Admin::Drain, _) => Status::Drain,
            _ => Status::Up,
        }
    }

    /// May take new sessions (round-robin picks, new sticky pins).
    pub fn accepts_new(&self) -> bool {
        self.status() == Status::Up && !self.is_retired()
    }

    /// May keep serving sessions already pinned to it (sids, cookies of DRAIN servers).
    pub fn serves_existing(&self) -> bool {
        matches!(self.status(), Status::Up | Status::Drain)
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// The weight new work sees now in a backend with slow-start `window`: the weight
    /// scaled by the share, in thousandths of a weight unit (weight 2 at full share: 2000).
    pub fn effective_weight(&self, window: Duration) -> u32 {
        self.weight().saturating_mul(self.ramp.share_within(window))
    }

    /// After a change of health, admin state or retirement: a server that could not take
    /// new sessions before (`was`) and can now starts its slow start.
    fn returned(&self, was: bool) {
        if !was && self.accepts_new() {
            self.ramp.start();
        }
    }

    /// Change the weight; round-robin sequences notice through [`weight_epoch`].
    pub fn set_weight(&self, w: u32) {
        if self.weight.swap(w, Relaxed) != w {
            WEIGHT_EPOCH.fetch_add(1, Relaxed);
        }
    }

    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    pub fn sessions(&self) -> i64 {
        self.sessions.load(Relaxed).max(0)
    }

    pub fn add_sessions(&self, n: i64) {
        self.sessions.fetch_add(n, Relaxed);
    }

    /// Take a connection slot; the guard gives it back.
    pub fn acquire(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Relaxed);
        ActiveGuard {
            server: Arc::clone(self),
            limited: false,
        }
    }

    /// Take a slot only if fewer than `limit` are in use.
    pub fn try_acquire(self: &Arc<Self>, limit: u32) -> Option<ActiveGuard> {
        let limit = u64::from(limit);
        self.active
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| ActiveGuard {
                server: Arc::clone(self),
                limited: true,
            })
    }

    pub fn detail(&self) -> MutexGuard<'_, StateDetail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time spent DOWN in total, including the current period.
    pub fn downtime(&self) -> Duration {
        let d = self.detail();
        if self.health() == Health::Down {
            d.downtime + d.since.elapsed()
        } else {
            d.downtime
        }
    }

    /// Record a health verdict. Returns the previous health if it changed.
    pub fn set_health(&self, h: Health, reason: &str) -> Option<Health> {
        let was = self.accepts_new();
        let mut d = self.detail();
        let old = self.health();
        if old == h {
            return None;
        }
        // A ramp waiting for the first check: UP starts it; DOWN drops it (the way back
        // up from DOWN starts one anyway).
        let armed = h != Health::Checking && self.ramp.take_armed();
        if old == Health::Down {
            let down_for = d.since.elapsed();
            d.downtime += down_for;
        }
        if h == Health::Down && old != Health::Down {
            self.up_down_total.fetch_add(1, Relaxed);
        }
        self.health.store(h as u8, Relaxed);
        if h != Health::Down {
            // Back in service: live traffic counts its failures from zero again.
            self.passive_failures.store(0, Relaxed);
        }
        d.since = Instant::now();
        d.reason = reason.to_string();
        drop(d);
        if armed && h == Health::Up && self.accepts_new() {
            self.ramp.start();
        } else {
            self.returned(was);
        }
        Some(old)
    }

    /// Record an admin state change. Returns the previous admin state if it changed.
    pub fn set_admin(&self, a: Admin, reason: &str) -> Option<Admin> {
        let was = self.accepts_new();
        let mut d = self.detail();
        let old = self.admin();
        if old == a {
            return None;
        }
        self.admin.store(a as u8, Relaxed);
        d.since = Instant::now();
        d.reason = reason.to_string();
        drop(d);
        self.returned(was);
        Some(old)
    }

    /// Take over what a predecessor process knew (an upgrade): its health verdict and the
    /// operator's admin state and weight, stored as they were — not a change of state
    /// (no UP/DOWN transition counted or logged, no slow start for a server already UP).
    /// `None` leaves that part as it is.
    pub fn restore(&self, carried: Restored) {
        let mut d = self.detail();
        if let Some(h) = carried.health {
            self.health.store(h as u8, Relaxed);
        }
        if let Some(a) = carried.admin {
            self.admin.store(a as u8, Relaxed);
        }
        if let Some(w) = carried.weight {
            self.set_weight(w);
        }
        if carried.health.is_some() || carried.admin.is_some() {
            d.since = carried.since;
            d.reason = carried.reason;
        }
    }

    pub fn set_last_check(&self, r: CheckResult) {
        if !r.ok() {
            self.checks_failed.inc();
        }
        self.detail().last_check = Some(r);
    }

    /// A live request to this server failed; returns the consecutive count.
    pub fn passive_failure(&self) -> u32 {
        self.passive_failures.fetch_add(1, Relaxed) + 1
    }

    pub fn passive_success(&self) {
        if self.passive_failures.load(Relaxed) != 0 {
            self.passive_failures.store(0, Relaxed);
        }
    }

    pub fn retire(&self, address: SocketAddr, until: Instant) {
        self.detail().retired = Some(Retired { address, until });
    }

    pub fn unretire(&self) {
        let was = self.accepts_new();
        self.detail().retired = None;
        self.returned(was);
    }

    pub fn retired(&self) -> Option<Retired> {
        self.detail().retired
    }

    pub fn is_retired(&self) -> bool {
        self.retired().is_some()
    }
}

/// Bumped whenever any server's weight changes.
static WEIGHT_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Changes whenever a weight changes, so cached weighted sequences can rebuild.
pub fn weight_epoch() -> u64 {
    WEIGHT_EPOCH.load(Relaxed)
}

/// A held connection slot on a server; dropping it frees the slot and, on a server with
/// `max_connections`, wakes one request waiting for a slot there.
#[derive(Debug)]
pub struct ActiveGuard {
    server: Arc<ServerState>,
    limited: bool,
}

impl ActiveGuard {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Relaxed);
        if self.limited {
            // A waiter woken here can use this slot: it waits only on servers it may use.
            // (A wake-up of a waiter that a slot elsewhere already took is passed on.)
            self.server.slot_freed.notify_one();
        }
    }
}

/// A handle to end an open tunnel from outside it: the relay watches it and, once
/// closed, sends the client a WebSocket close frame with the code given and ends.
#[derive(Debug, Default)]
pub struct TunnelCtl {
    closed: AtomicBool,
    /// The close frame's status code (0 until closed: 1001).
    code: std::sync::atomic::AtomicU16,
    waker: futures_util::task::AtomicWaker,
}

/// WebSocket close code 1001 "going away" (MAINT, drain expiry, a moved server, stop).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code 1012 "service restart" (the end of an upgrade's drain): clients
/// may reconnect at once.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

impl TunnelCtl {
    /// Ask the tunnel to end with a close frame to the client (1001 going away).
    pub fn close(&self) {
        self.close_with(CLOSE_GOING_AWAY);
    }

    /// Ask the tunnel to end with a close frame carrying `code`.
    pub fn close_with(&self, code: u16) {
        let _ = self.code.compare_exchange(
            0,
            code,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The close frame's status code (the first one asked for).
    pub fn code(&self) -> u16 {
        match self.code.load(std::sync::atomic::Ordering::Acquire) {
            0 => CLOSE_GOING_AWAY,
            c => c,
        }
    }

    /// The relay's task, to be woken by [`close`](Self::close).
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

/// The open tunnels of a server, so MAINT, a drain deadline, a move or a stop can end
/// them.
#[derive(Debug, Default)]
pub struct TunnelSet {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<TunnelCtl>>>,
}

impl TunnelSet {
    /// Remember an open tunnel; dropping the ticket forgets it.
    pub fn register(self: &Arc<Self>) -> TunnelTicket {
        let id = self.next.fetch_add(1, Relaxed);
        let ctl = Arc::new(TunnelCtl::default());
        lock(&self.open).insert(id, Arc::clone(&ctl));
        TunnelTicket {
            set: Arc::clone(self),
            id,
            ctl,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open tunnels now (to close them one by one).
    pub fn open(&self) -> Vec<Arc<TunnelCtl>> {
        lock(&self.open).values().cloned().collect()
    }

    /// End every open tunnel; returns how many.
    pub fn close_all(&self) -> usize {
        let open = lock(&self.open);
        for ctl in open.values() {
            ctl.close();
        }
        open.len()
    }
}

/// An open tunnel's entry in a [`TunnelSet`].
#[derive(Debug)]
pub struct TunnelTicket {
    set: Arc<TunnelSet>,
    id: u64,
    ctl: Arc<TunnelCtl>,
}

impl TunnelTicket {
    pub fn ctl(&self) -> &Arc<TunnelCtl> {
        &self.ctl
    }

    /// Whether edgepin closed this tunnel (MAINT, drain deadline), not one of its ends.
    pub fn closed_by_edge(&self) -> bool {
        self.ctl.is_closed()
    }
}

impl Drop for TunnelTicket {
    fn drop(&mut self) {
        lock(&self.set.open).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_combines_admin_and_health() {
        let s = ServerState::new("a", 1);
        assert_eq!(s.status(), Status::Up, "a new server takes traffic while first checked");
        s.set_health(Health::Down, "checks");
        assert_eq!(s.status(), Status::Down);
        s.set_admin(Admin::Drain, "admin");
        assert_eq!(s.status(), Status::Down, "DOWN wins over DRAIN");
        s.set_health(Health::Up, "checks");
        assert_eq!(s.status(), Status::Drain);
        assert!(!s.accepts_new() && s.serves_existing());
        s.set_admin(Admin::Maint, "admin");
        assert!(!s.serves_existing());
        assert_eq!(s.up_down_total.load(Relaxed), 1);
    }

    #[test]
    fn a_restored_state_is_not_a_transition() {
        let s = ServerState::new("a", 1);
        let since = Instant::now() - Duration::from_secs(30);
        s.restore(Restored {
            health: Some(Health::Down),
            admin: Some(Admin::Maint),
            weight: Some(7),
            reason: "3 failed checks".into(),
            since,
        });
        assert_eq!((s.health(), s.admin(), s.weight()), (Health::Down, Admin::Maint, 7));
        assert_eq!(s.up_down_total.load(Relaxed), 0, "not counted as a transition");
        assert_eq!(s.detail().since, since);
        assert_eq!(s.detail().reason, "3 failed checks");
        s.restore(Restored {
            health: None,
            admin: None,
            weight: None,
            reason: String::new(),
            since: Instant::now(),
        });
        assert_eq!(s.detail().reason, "3 failed checks", "nothing carried: nothing changes");
    }

    #[test]
    fn coming_back_into_service_starts_a_slow_start_and_nothing_else_does() {
        let s = ServerState::new("a", 2);
        s.ramp.set_window(Duration::from_secs(60));
        let ramps = |s: &ServerState| {
            let on = s.ramp.active();
            s.ramp.end();
            on
        };
        s.set_health(Health::Up, "first check");
        assert!(
            !ramps(&s),
            "a server present from the start is in service while checked"
        );
        s.set_health(Health::Down, "checks");
        assert!(!ramps(&s));
        s.set_health(Health::Up, "checks");
        assert!(ramps(&s), "back from DOWN");
        assert_eq!(s.effective_weight(s.ramp.window()), 2 * crate::state::FULL_SHARE);
        s.set_admin(Admin::Maint, "admin");
        s.set_admin(Admin::Ready, "admin");
        assert!(ramps(&s), "back from MAINT");
        s.set_admin(Admin::Drain, "admin");
        s.set_admin(Admin::Ready, "admin");
        assert!(ramps(&s), "back from DRAIN");
        s.set_admin(Admin::Maint, "admin");
        s.set_health(Health::Down, "checks");
        s.set_health(Health::Up, "checks");
        assert!(!ramps(&s), "UP again under MAINT: still out of service");
        s.set_admin(Admin::Ready, "admin");
        assert!(ramps(&s));
        s.retire("127.0.0.1:1".parse().unwrap(), Instant::now());
        s.unretire();
        assert!(ramps(&s), "listed again after a reload removed it");
        s.set_weight(5);
        s.set_health(Health::Checking, "moved");
        assert!(!ramps(&s), "weight changes and re-checks alone do not ramp");
        s.set_health(Health::Up, "checks");
        s.ramp.start();
        let w = s.effective_weight(s.ramp.window());
        assert!(
            (5 * crate::state::MIN_SHARE..5 * crate::state::FULL_SHARE).contains(&w),
            "{w}"
        );
    }

    #[test]
    fn a_ramp_armed_for_the_first_up_starts_there_and_not_before() {
        let s = ServerState::new("10.0.0.7:3000", 1);
        s.ramp.set_window(Duration::from_secs(60));
        s.ramp.start_when_up();
        assert!(!s.ramp.active(), "waiting for its first check");
        s.set_health(Health::Up, "first check");
        assert!(s.ramp.active(), "in service from its first UP: ramps from there");
        assert!(s.ramp.elapsed().is_some_and(|e| e < Duration::from_secs(5)));
        s.ramp.end();
        s.set_health(Health::Checking, "moved");
        s.set_health(Health::Up, "checks");
        assert!(!s.ramp.active(), "armed once only");

        let failing = ServerState::new("10.0.0.8:3000", 1);
        failing.ramp.set_window(Duration::from_secs(60));
        failing.ramp.start_when_up();
        failing.set_health(Health::Down, "first check");
        assert!(!failing.ramp.take_armed(), "DOWN drops it");
        failing.set_health(Health::Up, "checks");
        assert!(failing.ramp.active(), "back from DOWN ramps as always");
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let s = Arc::new(ServerState::new("a", 1));
        let g1 = s.try_acquire(2).unwrap();
        let _g2 = s.try_acquire(2).unwrap();
        assert!(s.try_acquire(2).is_none());
        drop(g1);
        assert!(s.try_acquire(2).is_some());
    }

    #[test]
    fn downtime_accumulates() {
        let s = ServerState::new("a", 1);
        s.set_health(Health::Down, "x");
        std::thread::sleep(Duration::from_millis(20));
        s.set_health(Health::Up, "x");
        let d = s.downtime();
        assert!(d >= Duration::from_millis(20), "{d:?}");
        assert_eq!(s.downtime(), d, "not down any more: frozen");
    }
}
