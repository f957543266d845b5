//! The Prometheus metrics every stats row (listener, backend, server) may have: the name
//! after the `edgepin_frontend_` / `edgepin_backend_` / `edgepin_server_` prefix — HAProxy
//! exporter's name where it has one — the help text, the type, and the view value shown.
//! A metric whose value is `None` for a row's kind is left out for that row. Labeled
//! families (`status`, `http_responses_total`, `check_status`, `sticky_decisions_total`)
//! are written by `prometheus` itself.

use super::view::Row;

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// A metric every kind of row may have: (name after the kind prefix, help, kind, value).
pub type RowMetric = (&'static str, &'static str, Kind, fn(&Row<'_>) -> Option<f64>);

fn f(v: u64) -> Option<f64> {
    Some(v as f64)
}

fn fo(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

pub const ROW_METRICS: &[RowMetric] = &[
    (
        "current_queue",
        "Requests waiting for a free server slot.",
        Kind::Gauge,
        |r| fo(r.counters.queue_current),
    ),
    ("max_queue", "Most requests waiting at once.", Kind::Gauge, |r| {
        fo(r.counters.queue_max)
    }),
    (
        "current_sessions",
        "Sessions in progress (connections for a frontend).",
        Kind::Gauge,
        |r| f(r.counters.sessions_current),
    ),
    ("max_sessions", "Most sessions at once.", Kind::Gauge, |r| {
        f(r.counters.sessions_max)
    }),
    ("limit_sessions", "Configured session limit.", Kind::Gauge, |r| {
        fo(r.counters.sessions_limit)
    }),
    ("sessions_total", "Sessions since start.", Kind::Counter, |r| {
        f(r.counters.sessions_total)
    }),
    ("max_session_rate", "Highest sessions per second.", Kind::Gauge, |r| {
        f(r.counters.session_rate.max)
    }),
    ("bytes_in_total", "Request bytes received.", Kind::Counter, |r| {
        f(r.counters.bytes_in)
    }),
    ("bytes_out_total", "Response bytes sent.", Kind::Counter, |r| {
        f(r.counters.bytes_out)
    }),
    ("requests_denied_total", "Requests denied.", Kind::Counter, |r| {
        fo(r.counters.denied)
    }),
    (
        "request_errors_total",
        "Invalid or refused requests.",
        Kind::Counter,
        |r| fo(r.counters.request_errors),
    ),
    (
        "connection_errors_total",
        "Failed connections to servers.",
        Kind::Counter,
        |r| fo(r.counters.connect_errors),
    ),
    (
        "response_errors_total",
        "Failed responses from servers.",
        Kind::Counter,
        |r| fo(r.counters.response_errors),
    ),
    ("retry_warnings_total", "Retried connections.", Kind::Counter, |r| {
        fo(r.counters.retries)
    }),
    (
        "redispatch_warnings_total",
        "Requests moved to another server.",
        Kind::Counter,
        |r| fo(r.counters.redispatches),
    ),
    (
        "connection_attempts_total",
        "Connections opened to servers.",
        Kind::Counter,
        |r| fo(r.counters.connects),
    ),
    (
        "connection_reuses_total",
        "Requests sent on a kept-alive server connection.",
        Kind::Counter,
        |r| fo(r.counters.reuses),
    ),
    (
        "total_time_average_seconds",
        "Average request time.",
        Kind::Gauge,
        |r| r.counters.avg_time_ms.map(|ms| ms / 1e3),
    ),
    (
        "websocket_tunnels_current",
        "Open WebSocket tunnels.",
        Kind::Gauge,
        |r| fo(r.counters.websocket.map(|w| w.open)),
    ),
    (
        "websocket_tunnels_max",
        "Most WebSocket tunnels open at once.",
        Kind::Gauge,
        |r| fo(r.counters.websocket.map(|w| w.max)),
    ),
    (
        "websocket_tunnels_total",
        "WebSocket tunnels opened.",
        Kind::Counter,
        |r| fo(r.counters.websocket.map(|w| w.total)),
    ),
    (
        "websocket_bytes_in_total",
        "WebSocket bytes client to server.",
        Kind::Counter,
        |r| fo(r.counters.websocket.map(|w| w.bytes_in)),
    ),
    (
        "websocket_bytes_out_total",
        "WebSocket bytes server to client.",
        Kind::Counter,
        |r| fo(r.counters.websocket.map(|w| w.bytes_out)),
    ),
    (
        "engineio_session_unknown_total",
        "Engine.IO 400 Session ID unknown answers.",
        Kind::Counter,
        |r| fo(r.counters.sid_unknown),
    ),
    // Frontend only.
    ("http_requests_total", "HTTP requests received.", Kind::Counter, |r| {
        fo(r.frontend.map(|f| f.requests_total))
    }),
    (
        "http_requests_rate_max",
        "Highest HTTP requests per second.",
        Kind::Gauge,
        |r| fo(r.frontend.map(|f| f.request_rate.max)),
    ),
    ("connections_total", "Connections accepted.", Kind::Counter, |r| {
        fo(r.frontend.map(|f| f.counters.sessions_total))
    }),
    (
        "denied_connections_total",
        "Connections refused at the connection limit.",
        Kind::Counter,
        |r| fo(r.frontend.map(|f| f.connections_refused)),
    ),
    (
        "handshake_timeouts_total",
        "Connections closed because their PROXY header or TLS handshake took longer than timeouts.handshake.",
        Kind::Counter,
        |r| fo(r.frontend.map(|f| f.handshake_timeouts)),
    ),
    (
        "intercepted_requests_total",
        "Requests answered by edgepin itself (redirects).",
        Kind::Counter,
        |r| fo(r.frontend.map(|f| f.redirects)),
    ),
    // Backend only.
    ("active_servers", "Servers taking new sessions.", Kind::Gauge, |r| {
        fo(r.backend.map(|b| b.servers_up))
    }),
    (
        "no_server_total",
        "Requests refused with 503: no server could take them.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.no_server)),
    ),
    (
        "engineio_sid_refused_total",
        "Engine.IO 400s sent because the pinned server was gone.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.sid_refused)),
    ),
    (
        "queue_timeouts_total",
        "Requests refused after waiting in the queue.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.queue_timeouts)),
    ),
    (
        "queue_full_total",
        "Requests refused at once because the queue was full.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.queue_full)),
    ),
    (
        "retry_budget_exhausted_total",
        "Retries skipped because the retry budget was spent.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.retry_budget_exhausted)),
    ),
    (
        "new_sessions_refused_total",
        "New Engine.IO sessions refused with 503 over the backend's new_sessions cap.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.new_sessions_refused)),
    ),
    // Backend and server.
    (
        "weight",
        "Weight (backend: sum of servers taking new sessions).",
        Kind::Gauge,
        |r| fo(r.server.map(|s| s.weight).or(r.backend.map(|b| b.weight))),
    ),
    // Server only.
    (
        "effective_weight",
        "Weight new work sees now: the weight scaled by the slow-start share.",
        Kind::Gauge,
        |r| r.server.map(|s| s.effective_weight),
    ),
    (
        "slow_start_ratio",
        "Share of its weight the server gets now: below 1 while in slow start.",
        Kind::Gauge,
        |r| {
            r.server
                .map(|s| s.slow_start.map_or(1.0, |ss| f64::from(ss.percent) / 100.0))
        },
    ),
    (
        "loadbalanced_total",
        "Times the server was chosen.",
        Kind::Counter,
        |r| fo(r.server.map(|s| s.counters.sessions_total)),
    ),
    ("check_failures_total", "Failed health checks.", Kind::Counter, |r| {
        fo(r.server.map(|s| s.checks_failed))
    }),
    ("check_up_down_total", "UP to DOWN transitions.", Kind::Counter, |r| {
        fo(r.server.map(|s| s.up_down_total))
    }),
    (
        "check_last_change_seconds",
        "Seconds since the last status change.",
        Kind::Gauge,
        |r| fo(r.server.map(|s| s.status_seconds)),
    ),
    ("downtime_seconds_total", "Time spent DOWN.", Kind::Counter, |r| {
        r.server.map(|s| s.downtime_seconds)
    }),
    (
        "check_code",
        "HTTP status of the last health check.",
        Kind::Gauge,
        |r| r.server.and_then(|s| s.last_check.as_ref()?.code).map(f64::from),
    ),
    (
        "check_duration_seconds",
        "Duration of the last health check.",
        Kind::Gauge,
        |r| {
            r.server
                .and_then(|s| s.last_check.as_ref())
                .map(|c| c.duration_ms / 1e3)
        },
    ),
    (
        "sticky_sessions_current",
        "Sticky sessions pinned to the server.",
        Kind::Gauge,
        |r| fo(r.server.map(|s| s.sticky_sessions)),
    ),
];
