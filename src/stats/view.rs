//! The stats view model: every number the stats listener shows, read once per request
//! from `Shared` (the current snapshot, the registry, the sid table) into plain values.
//!
//! This is the only place that reads counters for output; the HTML page, JSON, CSV and
//! Prometheus text all render one [`StatsView`], so they hold the same numbers. Columns
//! that a kind of row does not have (a listener has no connection errors, a backend no
//! check result) are `None` here and blank or absent in every output. Nothing here
//! changes state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::runtime::{BackendRt, Member, Shared};
use crate::state::{FrontendCounters, StatusClasses, Traffic};

use super::rates::{self, Rate, Rates};

/// Everything the stats listener shows, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub process: ProcessView,
    pub reload: ReloadView,
    pub sids: SidView,
    pub frontends: Vec<FrontendView>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub version: &'static str,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub started_unix: u64,
    /// Config generation serving new requests (1 at start, +1 per applied reload).
    pub generation: u64,
    pub threads: usize,
    /// Client connections open on both listeners.
    pub connections: u64,
    pub connections_limit: u64,
    pub requests_in_flight: u64,
    /// WebSocket tunnels open over all servers.
    pub open_tunnels: u64,
    /// Resident memory (VmRSS), when /proc tells.
    pub rss_bytes: Option<u64>,
    pub stopping: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadView {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last: Option<LastReload>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// The generation serving after it (unchanged when it failed).
    pub generation: u64,
    pub at_unix: u64,
    pub ago_seconds: u64,
    pub ok: bool,
    /// Warnings of an applied reload, or the errors of a rejected one.
    pub message: String,
}

/// The Engine.IO sid table.
#[derive(Debug, Clone, Serialize)]
pub struct SidView {
    pub entries: u64,
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub learned: u64,
    pub expired: u64,
    pub evicted: u64,
    pub forgotten: u64,
}

/// HTTP responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Responses {
    pub r1xx: u64,
    pub r2xx: u64,
    pub r3xx: u64,
    pub r4xx: u64,
    pub r5xx: u64,
    /// No response sent (client gone, connection cut).
    pub other: u64,
}

impl Responses {
    fn of(c: &StatusClasses) -> Responses {
        Responses {
            r1xx: c.get(1),
            r2xx: c.get(2),
            r3xx: c.get(3),
            r4xx: c.get(4),
            r5xx: c.get(5),
            other: c.get(0),
        }
    }

    /// (label, value) pairs in HAProxy's order, labels as its `code` label values.
    pub fn classes(&self) -> [(&'static str, u64); 6] {
        [
            ("1xx", self.r1xx),
            ("2xx", self.r2xx),
            ("3xx", self.r3xx),
            ("4xx", self.r4xx),
            ("5xx", self.r5xx),
            ("other", self.other),
        ]
    }
}

/// The columns listener, backend and server rows share, named as HAProxy's stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counters {
    pub queue_current: Option<u64>,
    pub queue_max: Option<u64>,
    /// Sessions: requests in progress and open tunnels (connections, for a listener).
    pub sessions_current: u64,
    pub sessions_max: u64,
    pub sessions_limit: Option<u64>,
    pub sessions_total: u64,
    pub session_rate: Rate,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub denied: Option<u64>,
    pub request_errors: Option<u64>,
    pub connect_errors: Option<u64>,
    pub response_errors: Option<u64>,
    pub retries: Option<u64>,
    pub redispatches: Option<u64>,
    pub responses: Responses,
    /// Average request time in milliseconds (whole request, tunnels included).
    pub avg_time_ms: Option<f64>,
    pub websocket: Option<WebSocketView>,
    pub sticky: Option<StickyView>,
    /// Engine.IO `400 Session ID unknown` answers.
    pub sid_unknown: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebSocketView {
    pub open: u64,
    pub max: u64,
    pub total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// How sticky requests were placed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StickyView {
    pub sid: u64,
    pub cookie: u64,
    pub hash: u64,
    pub redispatch: u64,
}

impl StickyView {
    /// (label, value) pairs, labels as the `decision` label values.
    pub fn decisions(&self) -> [(&'static str, u64); 4] {
        [
            ("sid", self.sid),
            ("cookie", self.cookie),
            ("hash", self.hash),
            ("redispatch", self.redispatch),
        ]
    }
}

/// A listener (HAProxy frontend): `https` or `http`.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendView {
    pub name: &'static str,
    pub address: Option<String>,
    /// OPEN, or STOP while stopping.
    pub status: &'static str,
    pub requests_total: u64,
    pub request_rate: Rate,
    pub connections_refused: u64,
    pub redirects: u64,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub name: String,
    pub balance: &'static str,
    /// UP while some server takes new sessions, else DOWN.
    pub status: &'static str,
    pub servers_up: u64,
    pub servers_total: u64,
    /// Sum of the weights of servers taking new sessions.
    pub weight: u64,
    /// 503s because no server could take the request.
    pub no_server: u64,
    /// Engine.IO 400s edgepin sent itself because the pinned server was gone.
    pub sid_refused: u64,
    pub queue_timeouts: u64,
    pub retry_budget_exhausted: u64,
    pub counters: Counters,
    pub servers: Vec<ServerView>,
}

/// A server as one backend lists it: its shared state and this pair's counters.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub name: String,
    pub address: String,
    /// UP, DOWN, DRAIN or MAINT (DRAIN too while a reload's removal drains it).
    pub status: &'static str,
    pub health: &'static str,
    pub admin: &'static str,
    /// Removed by a reload; serves its existing sessions until its drain deadline.
    pub retired: bool,
    pub status_seconds: u64,
    pub status_reason: String,
    pub last_check: Option<CheckView>,
    pub checks_failed: u64,
    pub up_down_total: u64,
    pub downtime_seconds: f64,
    pub weight: u64,
    /// Requests in flight and tunnels on this server over all backends.
    pub active: u64,
    /// Sticky sessions pinned to it (sids known, handshakes in flight).
    pub sticky_sessions: u64,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    pub ok: bool,
    /// HAProxy-style check status: L4OK, L4CON, L4TOUT, L7OK, L7STS, L7RSP, L7TOUT.
    pub status: String,
    /// The HTTP status of an HTTP check, when it got one.
    pub code: Option<u16>,
    pub detail: String,
    pub duration_ms: f64,
    pub ago_seconds: u64,
}

impl StatsView {
    /// Read everything once from `shared`.
    pub fn gather(shared: &Shared, rates: &Rates) -> StatsView {
        let snapshot = shared.snapshot();
        let config = &snapshot.config;
        let registry = &shared.registry;
        let listener = |name, address, counters| Listener {
            name,
            address,
            counters,
            limit: config.limits.max_connections as u64,
            stopping: shared.stopping(),
        };
        // Only the listeners this process has.
        let frontends = [
            listener("https", config.listen.https, &shared.https),
            listener("http", config.listen.http, &shared.http),
        ]
        .into_iter()
        .filter(|l| l.address.is_some())
        .map(|l| frontend(l, rates))
        .collect();
        let backends = snapshot.backends.iter().map(|b| backend(b, config, rates)).collect();
        let last = registry.last_reload().map(|r| LastReload {
            generation: r.generation,
            at_unix: unix_seconds(r.at),
            ago_seconds: r.at.elapsed().unwrap_or_default().as_secs(),
            ok: r.ok,
            message: r.message,
        });
        let sids = &shared.sids.counters;
        StatsView {
            process: ProcessView {
                version: env!("CARGO_PKG_VERSION"),
                pid: std::process::id(),
                uptime_seconds: registry.started.elapsed().as_secs(),
                started_unix: unix_seconds(registry.started_wall),
                generation: snapshot.generation,
                threads: config.threads,
                connections: shared.https.connections.get() + shared.http.connections.get(),
                connections_limit: config.limits.max_connections as u64,
                requests_in_flight: shared.in_flight.get(),
                open_tunnels: shared.open_tunnels() as u64,
                rss_bytes: resident_memory(),
                stopping: shared.stopping(),
            },
            reload: ReloadView {
                reloads_ok: registry.reloads_ok.get(),
                reloads_failed: registry.reloads_failed.get(),
                last,
            },
            sids: SidView {
                entries: shared.sids.len() as u64,
                capacity: shared.sids.capacity() as u64,
                hits: sids.hits.get(),
                misses: sids.misses.get(),
                learned: sids.learned.get(),
                expired: sids.expired.get(),
                evicted: sids.evicted.get(),
                forgotten: sids.forgotten.get(),
            },
            frontends,
            backends,
        }
    }
}

/// What a listener's row is made of.
struct Listener<'a> {
    name: &'static str,
    address: Option<std::net::SocketAddr>,
    counters: &'a FrontendCounters,
    limit: u64,
    stopping: bool,
}

fn frontend(l: Listener<'_>, rates: &Rates) -> FrontendView {
    let (name, c) = (l.name, l.counters);
    FrontendView {
        name,
        address: l.address.map(|a| a.to_string()),
        status: if l.stopping { "STOP" } else { "OPEN" },
        requests_total: c.requests_total.get(),
        request_rate: rates.get(&rates::requests_key(name)),
        connections_refused: c.connections_refused.get(),
        redirects: c.redirects.get(),
        counters: Counters {
            sessions_current: c.connections.get(),
            sessions_max: c.connections.max(),
            sessions_limit: Some(l.limit),
            sessions_total: c.connections_total.get(),
            session_rate: rates.get(&rates::frontend_key(name)),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            denied: Some(c.denied.get()),
            request_errors: Some(c.request_errors.get()),
            responses: Responses::of(&c.responses),
            ..Counters::default()
        },
    }
}

/// The counters of a backend or a (backend, server) pair.
fn traffic(t: &Traffic, rate: Rate, sticky: bool) -> Counters {
    let total = t.sessions_total.get();
    Counters {
        sessions_current: t.sessions.get(),
        sessions_max: t.sessions.max(),
        sessions_total: total,
        session_rate: rate,
        bytes_in: t.bytes_in.get(),
        bytes_out: t.bytes_out.get(),
        connect_errors: Some(t.connect_errors.get()),
        response_errors: Some(t.response_errors.get()),
        retries: Some(t.retries.get()),
        redispatches: Some(t.redispatches.get()),
        responses: Responses::of(&t.responses),
        avg_time_ms: (total > 0).then(|| t.time_us_total.get() as f64 / total as f64 / 1e3),
        websocket: Some(WebSocketView {
            open: t.tunnels.get(),
            max: t.tunnels.max(),
            total: t.tunnels_total.get(),
            bytes_in: t.ws_bytes_in.get(),
            bytes_out: t.ws_bytes_out.get(),
        }),
        sticky: sticky.then(|| StickyView {
            sid: t.sticky_sid.get(),
            cookie: t.sticky_cookie.get(),
            hash: t.sticky_hash.get(),
            redispatch: t.sticky_redispatch.get(),
        }),
        sid_unknown: Some(t.sid_unknown.get()),
        ..Counters::default()
    }
}

fn backend(b: &BackendRt, config: &Config, rates: &Rates) -> BackendView {
    let sticky = b.cfg.balance.is_hashed();
    let servers: Vec<ServerView> = b.members.iter().map(|m| server(b, m, sticky, config, rates)).collect();
    let taking_new: Vec<&Member> = b.members.iter().filter(|m| m.accepts_new()).collect();
    let weight: u64 = taking_new.iter().map(|m| u64::from(m.state.weight())).sum();
    let mut counters = traffic(&b.counters.traffic, rates.get(&rates::backend_key(b.name())), sticky);
    counters.queue_current = Some(b.queued.get());
    counters.queue_max = Some(b.queued.max());
    let c = &b.counters;
    BackendView {
        name: b.name().to_string(),
        balance: b.cfg.balance.as_str(),
        status: if weight > 0 { "UP" } else { "DOWN" },
        servers_up: taking_new.len() as u64,
        servers_total: b.members.len() as u64,
        weight,
        no_server: c.no_server.get(),
        sid_refused: c.sid_refused.get(),
        queue_timeouts: c.queue_timeouts.get(),
        retry_budget_exhausted: c.retry_budget_exhausted.get(),
        counters,
        servers,
    }
}

fn server(b: &BackendRt, m: &Member, sticky: bool, config: &Config, rates: &Rates) -> ServerView {
    let state = &m.state;
    let retired = m.retired_until.is_some() || state.is_retired();
    let mut status = state.status().as_str();
    if retired && status == "UP" {
        status = "DRAIN";
    }
    let downtime = state.downtime();
    let detail = state.detail();
    let last_check = detail.last_check.as_ref().map(|c| {
        let mut words = c.detail.split_whitespace();
        let check_status = words.next().unwrap_or("UNK").to_string();
        let code = words
            .next()
            .and_then(|w| w.parse().ok())
            .filter(|_| check_status.starts_with("L7"));
        CheckView {
            ok: c.ok,
            status: check_status,
            code,
            detail: c.detail.clone(),
            duration_ms: c.duration.as_secs_f64() * 1e3,
            ago_seconds: c.at.elapsed().unwrap_or_default().as_secs(),
        }
    });
    let status_seconds = detail.since.elapsed().as_secs();
    let status_reason = detail.reason.clone();
    drop(detail);
    let mut counters = traffic(&m.traffic, rates.get(&rates::server_key(b.name(), &m.name)), sticky);
    counters.queue_current = Some(state.queued.load(std::sync::atomic::Ordering::Relaxed));
    counters.queue_max = Some(state.queue_max.load(std::sync::atomic::Ordering::Relaxed));
    counters.sessions_limit = m.max_connections.map(u64::from);
    let address = config
        .server(&m.name)
        .map_or_else(|| m.addr.to_string(), |s| s.address_text.clone());
    ServerView {
        name: m.name.to_string(),
        address,
        status,
        health: match state.health() {
            crate::state::Health::Checking => "CHECKING",
            crate::state::Health::Up => "UP",
            crate::state::Health::Down => "DOWN",
        },
        admin: match state.admin() {
            crate::state::Admin::Ready => "READY",
            crate::state::Admin::Drain => "DRAIN",
            crate::state::Admin::Maint => "MAINT",
        },
        retired,
        status_seconds,
        status_reason,
        last_check,
        checks_failed: state.checks_failed.get(),
        up_down_total: state.up_down_total.load(std::sync::atomic::Ordering::Relaxed),
        downtime_seconds: downtime.as_secs_f64(),
        weight: u64::from(state.weight()),
        active: state.active(),
        sticky_sessions: state.sessions() as u64,
        counters,
    }
}

/// What a row of the stats is about (HAProxy's `type`: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Frontend = 0,
    Backend = 1,
    Server = 2,
}

/// One row of the stats — a listener, a backend, or a server of a backend — with the
/// view it comes from, for outputs that list rows (CSV, Prometheus).
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub kind: RowKind,
    /// The listener or backend name (HAProxy's `proxy` label, `pxname`).
    pub proxy: &'a str,
    pub status: &'a str,
    pub counters: &'a Counters,
    pub frontend: Option<&'a FrontendView>,
    pub backend: Option<&'a BackendView>,
    pub server: Option<&'a ServerView>,
}

impl StatsView {
    /// Listeners, then each backend's servers followed by the backend (HAProxy's order).
    pub fn rows(&self) -> Vec<Row<'_>> {
        let mut rows: Vec<Row<'_>> = self
            .frontends
            .iter()
            .map(|f| Row {
                kind: RowKind::Frontend,
                proxy: f.name,
                status: f.status,
                counters: &f.counters,
                frontend: Some(f),
                backend: None,
                server: None,
            })
            .collect();
        for b in &self.backends {
            rows.extend(b.servers.iter().map(|s| Row {
                kind: RowKind::Server,
                proxy: &b.name,
                status: s.status,
                counters: &s.counters,
                frontend: None,
                backend: None,
                server: Some(s),
            }));
            rows.push(Row {
                kind: RowKind::Backend,
                proxy: &b.name,
                status: b.status,
                counters: &b.counters,
                frontend: None,
                backend: Some(b),
                server: None,
            });
        }
        rows
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// Resident memory of this process (VmRSS in /proc/self/status).
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::state::{Admin, Health};

    /// A `Shared` for a config with backends `api` (round robin over a, b) and `ws`
    /// (sticky over b), no listeners opened.
    pub fn shared() -> Arc<Shared> {
        shared_with(None)
    }

    /// [`shared`] with stats credentials.
    pub fn shared_with(auth: Option<crate::config::StatsAuth>) -> Arc<Shared> {
        let text = "listen: { http: 127.0.0.1:1, stats: 127.0.0.1:2 }\n\
                    routes:\n  - { path_prefix: /socket.io/, backend: ws }\n  - { path_prefix: /, backend: api }\n\
                    backends:\n  api: { servers: [a, b] }\n  ws: { balance: sticky, servers: [b] }\n\
                    servers:\n  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002, max_connections: 7 }\n";
        let mut config = crate::config::parse(Path::new("t.yaml"), text).expect("test config");
        config.stats.auth = auth;
        Shared::new(config, None)
    }

    #[test]
    fn gathers_listeners_backends_servers_and_their_counters() {
        let shared = shared();
        let snapshot = shared.snapshot();
        let api = snapshot.backend("api").unwrap();
        api.members[0].traffic.sessions_total.add(5);
        api.members[0].traffic.responses.count(200);
        api.counters.traffic.sessions_total.add(5);
        api.members[1].state.set_health(Health::Down, "3 failed checks");
        shared.http.requests_total.add(9);

        let view = StatsView::gather(&shared, &Rates::default());
        assert_eq!(view.frontends.len(), 1, "only the listeners configured");
        let http = &view.frontends[0];
        assert_eq!((http.name, http.requests_total), ("http", 9));
        assert_eq!(http.address.as_deref(), Some("127.0.0.1:1"));
        let api = &view.backends[0];
        assert_eq!((api.name.as_str(), api.status, api.servers_up), ("api", "UP", 1));
        assert_eq!(api.counters.sessions_total, 5);
        assert!(api.counters.sticky.is_none(), "round robin has no sticky decisions");
        let (a, b) = (&api.servers[0], &api.servers[1]);
        assert_eq!(
            (a.status, a.counters.sessions_total, a.counters.responses.r2xx),
            ("UP", 5, 1)
        );
        assert_eq!((b.status, b.status_reason.as_str()), ("DOWN", "3 failed checks"));
        assert_eq!(b.up_down_total, 1);
        assert_eq!(b.counters.sessions_limit, Some(7));
        let ws = &view.backends[1];
        assert_eq!((ws.status, ws.weight), ("DOWN", 0), "its only server is down");
        assert!(ws.counters.sticky.is_some());
    }

    #[test]
    fn status_follows_admin_state_and_check_results_are_split() {
        let shared = shared();
        let snapshot = shared.snapshot();
        let a = &snapshot.backend("api").unwrap().members[0].state;
        a.set_admin(Admin::Drain, "admin: drain by alice");
        a.set_last_check(crate::state::CheckResult {
            ok: false,
            detail: "L7STS 500".into(),
            duration: Duration::from_millis(3),
            at: SystemTime::now(),
        });
        let view = StatsView::gather(&shared, &Rates::default());
        let a = &view.backends[0].servers[0];
        assert_eq!((a.status, a.admin), ("DRAIN", "DRAIN"));
        let check = a.last_check.as_ref().unwrap();
        assert_eq!(
            (check.status.as_str(), check.code, check.ok),
            ("L7STS", Some(500), false)
        );
        assert_eq!(a.checks_failed, 1);
        assert_eq!(view.backends[0].servers_up, 1);
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        assert!(resident_memory().is_some_and(|b| b > 1024 * 1024));
    }
}
