//! The stats view model: every number the stats listener shows, as plain values
//! (`gather` fills it from `Shared` once per request), and its rows for the outputs that
//! list rows.
//!
//! The HTML page, JSON (this model serialised), CSV and Prometheus text all render one
//! [`StatsView`], so they hold the same numbers. Columns that a kind of row does not have
//! (a listener has no connection errors, a backend no check result) are `None` here and
//! blank or absent in every output.

use serde::Serialize;

use super::rates::Rate;
use crate::state::CheckStatus;

/// Everything the stats listener shows, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub process: ProcessView,
    pub reload: ReloadView,
    pub sids: SidView,
    pub frontends: Vec<FrontendView>,
    pub backends: Vec<BackendView>,
    /// The https listener's certificates (files, then the ACME one).
    pub certificates: Vec<CertificateView>,
    /// Earlier edgepin processes still draining after `edgepin upgrade`, as they report.
    pub draining: Vec<DrainingView>,
    /// Recent points of the dashboard's charts (filled by the stats app; `None` where
    /// no history is kept).
    pub history: Option<super::history::HistoryView>,
}

/// An earlier process draining after an upgrade handed its listeners to this one.
#[derive(Debug, Clone, Serialize)]
pub struct DrainingView {
    pub pid: u32,
    /// WebSocket tunnels it still relays.
    pub tunnels: u64,
    /// Other requests it still serves.
    pub requests: u64,
    /// When it starts closing what is left (`reload.hard_stop_after`), Unix seconds.
    pub hard_stop_unix: u64,
    /// Seconds until then (0 once reached).
    pub hard_stop_in_seconds: u64,
    /// The window over which it closes the remaining tunnels (`reload.close_spread`).
    pub close_spread_seconds: u64,
    /// Closing its remaining tunnels now.
    pub closing: bool,
}

/// One certificate the https listener serves.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateView {
    /// Names it is chosen for by SNI.
    pub names: Vec<String>,
    /// The certificate file, or the ACME stand-in.
    pub source: String,
    pub issuer: String,
    pub not_after_unix: u64,
    pub expires_in_seconds: u64,
    /// Served to clients without SNI or with a name no certificate has.
    pub default: bool,
    /// Set for the ACME certificate.
    pub acme: Option<AcmeView>,
}

/// The ACME certificate's renewal state.
#[derive(Debug, Clone, Serialize)]
pub struct AcmeView {
    /// Issued by the ACME server (false: the self-signed stand-in until then).
    pub issued: bool,
    pub last_attempt_unix: Option<u64>,
    /// Result of the last renewal attempt (`None` before the first).
    pub last_ok: Option<bool>,
    pub last_error: String,
    pub last_success_unix: Option<u64>,
    pub next_attempt_unix: Option<u64>,
    /// Failed attempts since the last success.
    pub failures: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub version: &'static str,
    /// The commit the binary was built from (`unknown` outside git).
    pub commit: &'static str,
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
    /// The table shared with other edgepins (`sticky.shared`), when configured.
    pub shared: Option<SharedSidView>,
}

/// The sid table shared through Redis (counters of `sticky::shared`).
#[derive(Debug, Clone, Serialize)]
pub struct SharedSidView {
    /// The Redis, credentials hidden.
    pub redis: String,
    /// Connected now.
    pub up: bool,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Sessions routed by cookie or hash because Redis could not be used.
    pub fallbacks: u64,
    pub writes: u64,
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
    /// Connections opened to servers, and requests sent on kept-alive ones.
    pub connects: Option<u64>,
    pub reuses: Option<u64>,
    pub responses: Responses,
    /// Average request time in milliseconds (whole request, tunnels included).
    pub avg_time_ms: Option<f64>,
    pub websocket: Option<WebSocketView>,
    pub sticky: Option<StickyView>,
    /// Engine.IO `400 Session ID unknown` answers.
    pub sid_unknown: Option<u64>,
    /// How long requests took (tunnels left out), as histogram buckets.
    pub request_durations: Option<DurationsView>,
}

/// Request durations: cumulative counts at each bound of
/// [`crate::state::DURATION_BUCKETS`] (Prometheus `le`, seconds), the count and the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DurationsView {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
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
    /// Connections closed because their PROXY header or TLS handshake was too slow.
    pub handshake_timeouts: u64,
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
    pub queue_full: u64,
    pub retry_budget_exhausted: u64,
    /// The `new_sessions` cap (`None`: no cap).
    pub new_sessions: Option<NewSessionsView>,
    /// New Engine.IO sessions refused with 503 over the cap.
    pub new_sessions_refused: u64,
    pub counters: Counters,
    pub servers: Vec<ServerView>,
    /// Set when the backend's servers come from DNS (`discover`).
    pub discovery: Option<DiscoveryView>,
}

/// A discovered backend's resolutions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryView {
    /// What is asked: `name:port (A/AAAA)` or `name (SRV)`.
    pub dns: String,
    pub interval_seconds: f64,
    /// When the last resolution ended (none yet: `None`).
    pub last_unix: Option<u64>,
    pub last_ago_seconds: Option<u64>,
    /// `answer`, or why it gave no servers: `nxdomain`, `empty`, `timeout`, `error`.
    pub last_result: Option<&'static str>,
    /// The servers it named, or the error ("NXDOMAIN", "timeout", "SERVFAIL", …).
    pub last_detail: String,
    /// Servers of the last good answer: those in use.
    pub servers: u64,
    /// Resolutions that gave servers.
    pub answers: u64,
    /// Resolutions that gave none, by result (`nxdomain`, `empty`, `timeout`, `error`).
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// Answers that changed the servers.
    pub changes: u64,
    /// Answers held back because they removed more than half the servers.
    pub held: u64,
    /// Servers of a held answer waiting to repeat.
    pub pending: Option<u64>,
    /// Servers left out of answers by `max_servers`.
    pub capped: u64,
}

impl DiscoveryView {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// A backend's cap on new Engine.IO sessions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NewSessionsView {
    pub per_second: u32,
    pub burst: u32,
}

/// A server in slow start: how far its ramp has come.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SlowStartView {
    /// The share of its weight it gets now, in percent (5 to 99).
    pub percent: u32,
    pub elapsed_seconds: f64,
    pub window_seconds: f64,
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
    /// Removed by a reload (or a DNS answer); serves its existing sessions until its
    /// drain deadline.
    pub retired: bool,
    /// Found by DNS (`discover`), not listed in the config.
    pub discovered: bool,
    pub status_seconds: u64,
    pub status_reason: String,
    pub last_check: Option<CheckView>,
    pub checks_failed: u64,
    pub up_down_total: u64,
    pub downtime_seconds: f64,
    pub weight: u64,
    /// The weight new work sees now: `weight` scaled by the slow-start share.
    pub effective_weight: f64,
    /// Set while the server is in slow start (its status stays UP).
    pub slow_start: Option<SlowStartView>,
    /// Requests in flight and tunnels on this server over all backends.
    pub active: u64,
    /// Sticky sessions pinned to it (sids known, handshakes in flight).
    pub sticky_sessions: u64,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    pub ok: bool,
    /// HAProxy's check status (L4OK, L4CON, L4TOUT, L7OK, L7STS, L7RSP, L7TOUT); in JSON
    /// its name.
    pub status: CheckStatus,
    /// The HTTP status of an HTTP check, when it got one.
    pub code: Option<u16>,
    /// `last_chk`: status, code and reason in one line ("L4CON connection refused").
    pub detail: String,
    pub duration_ms: f64,
    pub ago_seconds: u64,
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
