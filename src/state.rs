//! State that outlives a config snapshot: per-server health and admin state, and the
//! counters of listeners, backends and (backend, server) pairs.
//!
//! Everything here is keyed by name in the [`Registry`], so a reload that keeps a server
//! or backend keeps its state and counters; `runtime` asks the registry for the shared
//! `Arc`s when it builds a snapshot. Hot-path updates are relaxed atomics. This module
//! decides nothing about routing; `balance` and `health` read and write it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

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

impl Admin {
    pub fn parse(s: &str) -> Option<Admin> {
        match s.to_ascii_lowercase().as_str() {
            "ready" | "up" => Some(Admin::Ready),
            "drain" => Some(Admin::Drain),
            "maint" => Some(Admin::Maint),
            _ => None,
        }
    }
}

/// The outcome of the most recent active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub ok: bool,
    /// e.g. "L7OK 200", "L4CON connection refused", "L7TOUT".
    pub detail: String,
    pub duration: Duration,
    pub at: SystemTime,
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
    /// Requests waiting for a free connection slot.
    pub queued: AtomicU64,
    pub queue_max: AtomicU64,
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
            active: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            passive_failures: AtomicU32::new(0),
            up_down_total: AtomicU64::new(0),
            checks_failed: Counter::default(),
            queued: AtomicU64::new(0),
            queue_max: AtomicU64::new(0),
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
            wake: None,
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
                wake: None,
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
        let mut d = self.detail();
        let old = self.health();
        if old == h {
            return None;
        }
        if old == Health::Down {
            let down_for = d.since.elapsed();
            d.downtime += down_for;
        }
        if h == Health::Down && old != Health::Down {
            self.up_down_total.fetch_add(1, Relaxed);
        }
        self.health.store(h as u8, Relaxed);
        d.since = Instant::now();
        d.reason = reason.to_string();
        Some(old)
    }

    /// Record an admin state change. Returns the previous admin state if it changed.
    pub fn set_admin(&self, a: Admin, reason: &str) -> Option<Admin> {
        let mut d = self.detail();
        let old = self.admin();
        if old == a {
            return None;
        }
        self.admin.store(a as u8, Relaxed);
        d.since = Instant::now();
        d.reason = reason.to_string();
        Some(old)
    }

    pub fn set_last_check(&self, r: CheckResult) {
        if !r.ok {
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
        self.detail().retired = None;
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

/// A held connection slot on a server; dropping it frees the slot and wakes one
/// request queued for a slot.
#[derive(Debug)]
pub struct ActiveGuard {
    server: Arc<ServerState>,
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl ActiveGuard {
    /// Wake a queued request on `notify` when this slot is freed.
    pub fn wake_on_release(mut self, notify: &Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(Arc::clone(notify));
        self
    }

    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Relaxed);
        if let Some(n) = &self.wake {
            n.notify_one();
        }
    }
}

/// Handles on the upstream sockets of open tunnels. A handle is a duplicate of the
/// socket; shutting it down ends the tunnel from outside the request.
#[derive(Debug, Default)]
pub struct TunnelSet {
    next: AtomicU64,
    open: Mutex<HashMap<u64, (std::net::TcpStream, Arc<AtomicBool>)>>,
}

impl TunnelSet {
    /// Remember an open tunnel; dropping the ticket forgets it (and closes the duplicate).
    pub fn register(self: &Arc<Self>, socket: std::net::TcpStream) -> TunnelTicket {
        let id = self.next.fetch_add(1, Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        lock(&self.open).insert(id, (socket, Arc::clone(&closed)));
        TunnelTicket {
            set: Arc::clone(self),
            id,
            closed,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shut down every open tunnel's upstream socket; returns how many.
    pub fn close_all(&self) -> usize {
        let open = lock(&self.open);
        for (socket, closed) in open.values() {
            closed.store(true, Relaxed);
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }
}

/// An open tunnel's entry in a [`TunnelSet`].
#[derive(Debug)]
pub struct TunnelTicket {
    set: Arc<TunnelSet>,
    id: u64,
    closed: Arc<AtomicBool>,
}

impl TunnelTicket {
    /// Whether edgepin closed this tunnel (MAINT, drain deadline), not one of its ends.
    pub fn closed_by_edge(&self) -> bool {
        self.closed.load(Relaxed)
    }
}

impl Drop for TunnelTicket {
    fn drop(&mut self) {
        lock(&self.set.open).remove(&self.id);
    }
}

/// A counter that may only grow.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, remembering its maximum.
#[derive(Debug, Default)]
pub struct Gauge {
    cur: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    pub fn inc(&self) {
        let n = self.cur.fetch_add(1, Relaxed) + 1;
        self.max.fetch_max(n, Relaxed);
    }
    pub fn dec(&self) {
        self.cur.fetch_sub(1, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.cur.load(Relaxed)
    }
    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }
}

/// HTTP responses by status class.
#[derive(Debug, Default)]
pub struct StatusClasses([Counter; 6]);

impl StatusClasses {
    /// Count a status; 0 counts as "other" (no response).
    pub fn count(&self, status: u16) {
        let i = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        self.0[i].inc();
    }
    /// Responses of class `n`xx (n in 1..=5), or other for 0.
    pub fn get(&self, class: usize) -> u64 {
        self.0.get(class).map_or(0, Counter::get)
    }
}

/// How a sticky backend chose a server for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyDecision {
    Sid,
    Cookie,
    Hash,
    /// The pinned server could not take it and another was chosen.
    Redispatch,
}

/// Counters of traffic, shared by the backend totals and each (backend, server) pair.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests and tunnels in progress, and the most at once.
    pub sessions: Gauge,
    pub sessions_total: Counter,
    /// Request bytes (client → server), response bytes (server → client).
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub responses: StatusClasses,
    /// Connections to the server that failed.
    pub connect_errors: Counter,
    /// Responses that failed after connecting (reset, timeout, bad framing).
    pub response_errors: Counter,
    pub retries: Counter,
    pub redispatches: Counter,
    /// Open WebSocket tunnels and bytes through them.
    pub tunnels: Gauge,
    pub tunnels_total: Counter,
    pub ws_bytes_in: Counter,
    pub ws_bytes_out: Counter,
    pub sticky_sid: Counter,
    pub sticky_cookie: Counter,
    pub sticky_hash: Counter,
    pub sticky_redispatch: Counter,
    /// Engine.IO `400 Session ID unknown` answers (from the server, or by edgepin).
    pub sid_unknown: Counter,
    /// Sum of request durations, microseconds (with `sessions_total`: the average).
    pub time_us_total: Counter,
}

/// What one finished request (or tunnel) adds to the counters.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub ws_bytes_in: u64,
    pub ws_bytes_out: u64,
    /// It was an open tunnel (counted in `tunnels` until now).
    pub tunnel: bool,
}

impl Traffic {
    /// A request counted in `sessions` has ended.
    pub fn finished(&self, f: &Finished) {
        self.sessions.dec();
        self.responses.count(f.status);
        self.bytes_in.add(f.bytes_in);
        self.bytes_out.add(f.bytes_out);
        self.time_us_total.add(f.duration.as_micros() as u64);
        self.ws_bytes_in.add(f.ws_bytes_in);
        self.ws_bytes_out.add(f.ws_bytes_out);
        if f.tunnel {
            self.tunnels.dec();
        }
    }

    pub fn sticky(&self, d: StickyDecision) {
        match d {
            StickyDecision::Sid => self.sticky_sid.inc(),
            StickyDecision::Cookie => self.sticky_cookie.inc(),
            StickyDecision::Hash => self.sticky_hash.inc(),
            StickyDecision::Redispatch => self.sticky_redispatch.inc(),
        }
    }
}

/// Backend-level counters: traffic plus what happens before a server is chosen.
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub traffic: Traffic,
    /// Requests refused with 503 because no server could take them.
    pub no_server: Counter,
    /// Requests answered by edgepin itself with an Engine.IO 400 (pinned server gone).
    pub sid_refused: Counter,
    /// Queue timeouts (503 after waiting for a slot).
    pub queue_timeouts: Counter,
    /// Requests refused because the queue was full (503 at once).
    pub queue_full: Counter,
    /// Retries refused because the retry budget was spent.
    pub retry_budget_exhausted: Counter,
}

/// Listener (frontend) counters.
#[derive(Debug, Default)]
pub struct FrontendCounters {
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Connections refused at `limits.max_connections`.
    pub connections_refused: Counter,
    pub requests_total: Counter,
    /// Requests refused before routing (431, 413, 400, upgrade not allowed).
    pub request_errors: Counter,
    pub denied: Counter,
    pub redirects: Counter,
    pub responses: StatusClasses,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

/// The outcome of the most recent reload, for the stats page.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub generation: u64,
    pub at: SystemTime,
    pub ok: bool,
    pub message: String,
}

/// All state that survives reloads, keyed by name.
#[derive(Debug)]
pub struct Registry {
    servers: Mutex<HashMap<String, Arc<ServerState>>>,
    pairs: Mutex<HashMap<(String, String), Arc<Traffic>>>,
    backends: Mutex<HashMap<String, Arc<BackendCounters>>>,
    /// Listener counters by listener name (`https`, `http`).
    frontends: Mutex<HashMap<String, Arc<FrontendCounters>>>,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    last_reload: Mutex<Option<ReloadStatus>>,
    pub started: Instant,
    pub started_wall: SystemTime,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            servers: Mutex::default(),
            pairs: Mutex::default(),
            backends: Mutex::default(),
            frontends: Mutex::default(),
            reloads_ok: Counter::default(),
            reloads_failed: Counter::default(),
            last_reload: Mutex::new(None),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// The state of server `name`, created on first use with `weight`.
    pub fn server(&self, name: &str, weight: u32) -> Arc<ServerState> {
        Arc::clone(
            lock(&self.servers)
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(ServerState::new(name, weight))),
        )
    }

    /// Every server known, including retired ones still draining.
    pub fn servers(&self) -> Vec<Arc<ServerState>> {
        lock(&self.servers).values().cloned().collect()
    }

    /// Forget servers that are retired and past their drain deadline.
    pub fn forget_expired(&self, now: Instant) -> Vec<Arc<ServerState>> {
        let mut servers = lock(&self.servers);
        let expired: Vec<String> = servers
            .iter()
            .filter(|(_, s)| s.retired().is_some_and(|r| r.until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        expired.iter().filter_map(|n| servers.remove(n)).collect()
    }

    pub fn pair(&self, backend: &str, server: &str) -> Arc<Traffic> {
        Arc::clone(
            lock(&self.pairs)
                .entry((backend.to_string(), server.to_string()))
                .or_default(),
        )
    }

    pub fn backend(&self, name: &str) -> Arc<BackendCounters> {
        Arc::clone(lock(&self.backends).entry(name.to_string()).or_default())
    }

    pub fn frontend(&self, name: &str) -> Arc<FrontendCounters> {
        Arc::clone(lock(&self.frontends).entry(name.to_string()).or_default())
    }

    pub fn record_reload(&self, status: ReloadStatus) {
        if status.ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
        *lock(&self.last_reload) = Some(status);
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        lock(&self.last_reload).clone()
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
    fn slots_are_bounded_and_returned() {
        let s = Arc::new(ServerState::new("a", 1));
        let g1 = s.try_acquire(2).unwrap();
        let _g2 = s.try_acquire(2).unwrap();
        assert!(s.try_acquire(2).is_none());
        drop(g1);
        assert!(s.try_acquire(2).is_some());
    }

    #[test]
    fn registry_keeps_state_by_name() {
        let r = Registry::default();
        let a = r.server("a", 1);
        a.set_admin(Admin::Drain, "x");
        assert!(Arc::ptr_eq(&a, &r.server("a", 5)));
        assert!(Arc::ptr_eq(&r.pair("api", "a"), &r.pair("api", "a")));
        assert!(!Arc::ptr_eq(&r.pair("api", "a"), &r.pair("ws", "a")));
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
