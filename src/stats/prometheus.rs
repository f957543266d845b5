//! `/metrics`: the view in Prometheus text format, named like HAProxy's built-in exporter
//! (`addons/promex`) with `edgepin_` for `haproxy_`: `edgepin_frontend_*{proxy}`,
//! `edgepin_backend_*{proxy}`, `edgepin_server_*{proxy,server}`, `edgepin_process_*`,
//! `edgepin_sticktable_*{name}`, with the same `state` and `code` labels. Metrics only
//! edgepin has (WebSocket tunnels, sticky decisions, Engine.IO) use the same prefixes.
//! The README maps every name. A fresh `prometheus::Registry` is filled per scrape from
//! the one view, so the numbers are those of the page and the CSV.

use std::collections::HashMap;

use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

use super::view::{Row, RowKind, StatsView};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Server states of `*_server_status`, as HAProxy's exporter lists them.
const SERVER_STATES: [&str; 5] = ["DOWN", "UP", "MAINT", "DRAIN", "NOLB"];
/// Check results edgepin reports, in HAProxy's `check_status` names.
const CHECK_STATES: [&str; 8] = ["UNK", "L4OK", "L4TOUT", "L4CON", "L7OK", "L7TOUT", "L7RSP", "L7STS"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

enum Family {
    Gauge(GaugeVec),
    Counter(CounterVec),
}

/// The metric families of one scrape, created on first use.
#[derive(Default)]
struct Families {
    registry: Registry,
    by_name: HashMap<String, Family>,
}

impl Families {
    fn put(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        value: f64,
    ) -> prometheus::Result<()> {
        let family = match self.by_name.get(name) {
            Some(f) => f,
            None => {
                let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
                let opts = Opts::new(name, help);
                let family = match kind {
                    Kind::Gauge => {
                        let g = GaugeVec::new(opts, &names)?;
                        self.registry.register(Box::new(g.clone()))?;
                        Family::Gauge(g)
                    }
                    Kind::Counter => {
                        let c = CounterVec::new(opts, &names)?;
                        self.registry.register(Box::new(c.clone()))?;
                        Family::Counter(c)
                    }
                };
                self.by_name.entry(name.to_string()).or_insert(family)
            }
        };
        let values: Vec<&str> = labels.iter().map(|(_, v)| *v).collect();
        match family {
            Family::Gauge(g) => g.get_metric_with_label_values(&values)?.set(value),
            Family::Counter(c) => c.get_metric_with_label_values(&values)?.inc_by(value.max(0.0)),
        }
        Ok(())
    }
}

/// A metric every kind of row may have: (name after the kind prefix, help, kind, value).
type RowMetric = (&'static str, &'static str, Kind, fn(&Row<'_>) -> Option<f64>);

fn f(v: u64) -> Option<f64> {
    Some(v as f64)
}

fn fo(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

const ROW_METRICS: &[RowMetric] = &[
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
        "retry_budget_exhausted_total",
        "Retries skipped because the retry budget was spent.",
        Kind::Counter,
        |r| fo(r.backend.map(|b| b.retry_budget_exhausted)),
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

fn prefix(kind: RowKind) -> &'static str {
    match kind {
        RowKind::Frontend => "edgepin_frontend_",
        RowKind::Backend => "edgepin_backend_",
        RowKind::Server => "edgepin_server_",
    }
}

fn row(families: &mut Families, r: &Row<'_>) -> prometheus::Result<()> {
    let pre = prefix(r.kind);
    let server = r.server.map(|s| s.name.as_str());
    let mut labels = vec![("proxy", r.proxy)];
    if let Some(s) = server {
        labels.push(("server", s));
    }
    for (name, help, kind, value) in ROW_METRICS {
        if let Some(v) = value(r) {
            families.put(&format!("{pre}{name}"), help, *kind, &labels, v)?;
        }
    }
    let with = |k: &'static str, v: &'static str| {
        let mut l = labels.clone();
        l.push((k, v));
        l
    };
    let states: &[&str] = match r.kind {
        RowKind::Server => &SERVER_STATES,
        _ => &["DOWN", "UP"],
    };
    let up = match r.kind {
        RowKind::Server => r.status,
        _ if matches!(r.status, "UP" | "OPEN") => "UP",
        _ => "DOWN",
    };
    let status_help = "Current status, per state label value.";
    for state in states {
        let v = if *state == up { 1.0 } else { 0.0 };
        families.put(
            &format!("{pre}status"),
            status_help,
            Kind::Gauge,
            &with("state", state),
            v,
        )?;
    }
    for (code, v) in r.counters.responses.classes() {
        let name = format!("{pre}http_responses_total");
        families.put(
            &name,
            "HTTP responses by class.",
            Kind::Counter,
            &with("code", code),
            v as f64,
        )?;
    }
    if let Some(sticky) = r.counters.sticky {
        for (decision, v) in sticky.decisions() {
            let name = format!("{pre}sticky_decisions_total");
            let help = "How sticky requests were placed: by sid, cookie, hash, or redispatched.";
            families.put(&name, help, Kind::Counter, &with("decision", decision), v as f64)?;
        }
    }
    if let Some(s) = r.server {
        let current = s.last_check.as_ref().map_or("UNK", |c| c.status.as_str());
        for state in CHECK_STATES {
            let v = if state == current { 1.0 } else { 0.0 };
            let help = "Status of the last health check, per state label value.";
            families.put(
                &format!("{pre}check_status"),
                help,
                Kind::Gauge,
                &with("state", state),
                v,
            )?;
        }
    }
    Ok(())
}

fn process(families: &mut Families, view: &StatsView) -> prometheus::Result<()> {
    let p = &view.process;
    let g = Kind::Gauge;
    let c = Kind::Counter;
    let mut put = |name: &str, help: &str, kind: Kind, v: f64| families.put(name, help, kind, &[], v);
    put(
        "edgepin_process_uptime_seconds",
        "Seconds since start.",
        g,
        p.uptime_seconds as f64,
    )?;
    put(
        "edgepin_process_start_time_seconds",
        "Start time, Unix seconds.",
        g,
        p.started_unix as f64,
    )?;
    put("edgepin_process_nbthread", "Proxy worker threads.", g, p.threads as f64)?;
    put(
        "edgepin_process_current_connections",
        "Client connections open.",
        g,
        p.connections as f64,
    )?;
    put(
        "edgepin_process_max_connections",
        "Client connection limit.",
        g,
        p.connections_limit as f64,
    )?;
    put(
        "edgepin_process_current_requests",
        "Requests in progress.",
        g,
        p.requests_in_flight as f64,
    )?;
    put(
        "edgepin_process_current_tunnels",
        "WebSocket tunnels open.",
        g,
        p.open_tunnels as f64,
    )?;
    put(
        "edgepin_process_stopping",
        "1 while stopping.",
        g,
        f64::from(u8::from(p.stopping)),
    )?;
    put(
        "edgepin_process_config_generation",
        "Config generation in use.",
        g,
        p.generation as f64,
    )?;
    if let Some(rss) = p.rss_bytes {
        put(
            "edgepin_process_resident_memory_bytes",
            "Resident memory.",
            g,
            rss as f64,
        )?;
    }
    let r = &view.reload;
    if let Some(last) = &r.last {
        put(
            "edgepin_process_last_reload_success",
            "1 if the last reload applied.",
            g,
            f64::from(u8::from(last.ok)),
        )?;
        put(
            "edgepin_process_last_reload_timestamp_seconds",
            "Time of the last reload.",
            g,
            last.at_unix as f64,
        )?;
    }
    let reloads = "Reloads by result.";
    families.put(
        "edgepin_process_reloads_total",
        reloads,
        c,
        &[("result", "ok")],
        r.reloads_ok as f64,
    )?;
    families.put(
        "edgepin_process_reloads_total",
        reloads,
        c,
        &[("result", "failed")],
        r.reloads_failed as f64,
    )?;
    let build = [("version", p.version)];
    families.put("edgepin_process_build_info", "Build information.", g, &build, 1.0)?;

    let s = &view.sids;
    let table = [("name", "engineio_sid")];
    families.put(
        "edgepin_sticktable_size",
        "Stick table size.",
        g,
        &table,
        s.capacity as f64,
    )?;
    families.put(
        "edgepin_sticktable_used",
        "Entries used in the stick table.",
        g,
        &table,
        s.entries as f64,
    )?;
    let lookups = "Sid lookups by result.";
    for (result, v) in [("hit", s.hits), ("miss", s.misses)] {
        let labels = [("name", "engineio_sid"), ("result", result)];
        families.put("edgepin_sticktable_lookups_total", lookups, c, &labels, v as f64)?;
    }
    for (name, help, v) in [
        (
            "edgepin_sticktable_learned_total",
            "Sids learned from handshakes.",
            s.learned,
        ),
        (
            "edgepin_sticktable_expired_total",
            "Sids dropped after their idle TTL.",
            s.expired,
        ),
        (
            "edgepin_sticktable_evicted_total",
            "Sids dropped to make room.",
            s.evicted,
        ),
        (
            "edgepin_sticktable_forgotten_total",
            "Sids forgotten when their session ended.",
            s.forgotten,
        ),
    ] {
        families.put(name, help, c, &table, v as f64)?;
    }
    Ok(())
}

/// The Prometheus text for `view`.
pub fn render(view: &StatsView) -> prometheus::Result<String> {
    let mut families = Families::default();
    process(&mut families, view)?;
    for r in view.rows() {
        row(&mut families, &r)?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&families.registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Health;
    use crate::stats::rates::Rates;
    use crate::stats::view::tests::shared;

    #[test]
    fn names_and_labels_follow_haproxy_exporter() {
        let shared = shared();
        let snapshot = shared.snapshot();
        let api = snapshot.backend("api").unwrap();
        api.members[0].traffic.sessions.inc();
        api.members[1].state.set_health(Health::Down, "checks");
        api.counters.traffic.redispatches.add(3);
        let text = render(&StatsView::gather(&shared, &Rates::default())).unwrap();
        for line in [
            "edgepin_server_current_sessions{proxy=\"api\",server=\"a\"} 1",
            "edgepin_server_status{proxy=\"api\",server=\"b\",state=\"DOWN\"} 1",
            "edgepin_server_status{proxy=\"api\",server=\"b\",state=\"UP\"} 0",
            "edgepin_server_check_up_down_total{proxy=\"api\",server=\"b\"} 1",
            "edgepin_backend_redispatch_warnings_total{proxy=\"api\"} 3",
            "edgepin_backend_status{proxy=\"ws\",state=\"DOWN\"} 1",
            "edgepin_frontend_http_responses_total{code=\"2xx\",proxy=\"http\"} 0",
            "edgepin_server_sticky_decisions_total{decision=\"sid\",proxy=\"ws\",server=\"b\"} 0",
            "edgepin_sticktable_used{name=\"engineio_sid\"} 0",
            "# TYPE edgepin_server_sessions_total counter",
            "# TYPE edgepin_server_current_sessions gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("edgepin_frontend_connection_errors_total"),
            "a listener has no connection errors"
        );
        assert!(
            !text.contains("edgepin_server_sticky_decisions_total{decision=\"sid\",proxy=\"api\""),
            "round robin makes no sticky decisions"
        );
    }
}
