//! `/stats.csv`: the view as HAProxy-style CSV (`show stat`), one line per listener
//! (`FRONTEND`), server and backend (`BACKEND`), with HAProxy's column names so scripts
//! that read columns by name port over; edgepin's own columns (WebSocket, sticky
//! decisions, Engine.IO, DNS discovery) follow at the end. Empty cells are columns the row's kind does
//! not have.

use std::fmt::Write;

use super::view::{CheckView, DiscoveryView, Row, RowKind, StatsView};

fn check<'a>(row: &Row<'a>) -> Option<&'a CheckView> {
    row.server.and_then(|s| s.last_check.as_ref())
}

type Column = (&'static str, fn(&Row<'_>) -> Option<String>);

fn n(v: u64) -> Option<String> {
    Some(v.to_string())
}

fn opt(v: Option<u64>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// The columns, in order.
const COLUMNS: &[Column] = &[
    ("pxname", |l| Some(l.proxy.to_string())),
    ("svname", |l| {
        Some(match l.kind {
            RowKind::Frontend => "FRONTEND".to_string(),
            RowKind::Backend => "BACKEND".to_string(),
            RowKind::Server => l.server.map(|s| s.name.clone()).unwrap_or_default(),
        })
    }),
    ("qcur", |l| opt(l.counters.queue_current)),
    ("qmax", |l| opt(l.counters.queue_max)),
    ("scur", |l| n(l.counters.sessions_current)),
    ("smax", |l| n(l.counters.sessions_max)),
    ("slim", |l| opt(l.counters.sessions_limit)),
    ("stot", |l| n(l.counters.sessions_total)),
    ("bin", |l| n(l.counters.bytes_in)),
    ("bout", |l| n(l.counters.bytes_out)),
    ("dreq", |l| opt(l.counters.denied)),
    ("ereq", |l| opt(l.counters.request_errors)),
    ("econ", |l| opt(l.counters.connect_errors)),
    ("eresp", |l| opt(l.counters.response_errors)),
    ("wretr", |l| opt(l.counters.retries)),
    ("wredis", |l| opt(l.counters.redispatches)),
    ("status", |l| Some(l.status.to_string())),
    ("weight", |l| {
        l.server
            .map(|s| s.weight)
            .or(l.backend.map(|b| b.weight))
            .map(|w| w.to_string())
    }),
    ("act", |l| opt(l.backend.map(|b| b.servers_up))),
    ("chkfail", |l| opt(l.server.map(|s| s.checks_failed))),
    ("chkdown", |l| opt(l.server.map(|s| s.up_down_total))),
    ("lastchg", |l| opt(l.server.map(|s| s.status_seconds))),
    ("downtime", |l| opt(l.server.map(|s| s.downtime_seconds as u64))),
    ("lbtot", |l| l.server.map(|s| s.counters.sessions_total.to_string())),
    ("type", |l| Some((l.kind as u8).to_string())),
    ("rate", |l| n(l.counters.session_rate.current)),
    ("rate_max", |l| n(l.counters.session_rate.max)),
    ("check_status", |l| check(l).map(|c| c.status.name().to_string())),
    ("check_code", |l| check(l).and_then(|c| c.code).map(|c| c.to_string())),
    ("check_duration", |l| check(l).map(|c| format!("{:.0}", c.duration_ms))),
    ("hrsp_1xx", |l| n(l.counters.responses.r1xx)),
    ("hrsp_2xx", |l| n(l.counters.responses.r2xx)),
    ("hrsp_3xx", |l| n(l.counters.responses.r3xx)),
    ("hrsp_4xx", |l| n(l.counters.responses.r4xx)),
    ("hrsp_5xx", |l| n(l.counters.responses.r5xx)),
    ("hrsp_other", |l| n(l.counters.responses.other)),
    ("req_rate", |l| opt(l.frontend.map(|f| f.request_rate.current))),
    ("req_rate_max", |l| opt(l.frontend.map(|f| f.request_rate.max))),
    ("req_tot", |l| opt(l.frontend.map(|f| f.requests_total))),
    ("ttime", |l| l.counters.avg_time_ms.map(|t| format!("{t:.0}"))),
    ("last_chk", |l| check(l).map(|c| c.detail.clone())),
    ("addr", |l| {
        l.server
            .map(|s| s.address.clone())
            .or(l.frontend.and_then(|f| f.address.clone()))
    }),
    ("connect", |l| opt(l.counters.connects)),
    ("reuse", |l| opt(l.counters.reuses)),
    ("admin", |l| l.server.map(|s| s.admin.to_string())),
    ("ws_cur", |l| opt(l.counters.websocket.map(|w| w.open))),
    ("ws_max", |l| opt(l.counters.websocket.map(|w| w.max))),
    ("ws_tot", |l| opt(l.counters.websocket.map(|w| w.total))),
    ("ws_bin", |l| opt(l.counters.websocket.map(|w| w.bytes_in))),
    ("ws_bout", |l| opt(l.counters.websocket.map(|w| w.bytes_out))),
    ("sticky_sid", |l| opt(l.counters.sticky.map(|s| s.sid))),
    ("sticky_cookie", |l| opt(l.counters.sticky.map(|s| s.cookie))),
    ("sticky_hash", |l| opt(l.counters.sticky.map(|s| s.hash))),
    ("sticky_redispatch", |l| opt(l.counters.sticky.map(|s| s.redispatch))),
    ("sid_unknown", |l| opt(l.counters.sid_unknown)),
    ("eweight", |l| l.server.map(|s| format!("{:.2}", s.effective_weight))),
    ("slow_start_pct", |l| {
        l.server.and_then(|s| s.slow_start).map(|ss| ss.percent.to_string())
    }),
    ("new_sessions_refused", |l| {
        opt(l.backend.map(|b| b.new_sessions_refused))
    }),
    ("dns", |l| discovery(l).map(|d| d.dns.clone())),
    ("dns_last", |l| {
        discovery(l).and_then(|d| d.last_ago_seconds).map(|a| a.to_string())
    }),
    ("dns_result", |l| {
        discovery(l).and_then(|d| d.last_result).map(str::to_string)
    }),
    ("dns_servers", |l| discovery(l).map(|d| d.servers.to_string())),
    ("dns_failed", |l| discovery(l).map(|d| d.failed().to_string())),
    ("discovered", |l| l.server.map(|s| u8::from(s.discovered).to_string())),
];

fn discovery<'a>(row: &Row<'a>) -> Option<&'a DiscoveryView> {
    row.backend.and_then(|b| b.discovery.as_ref())
}

/// A CSV cell: quoted when it holds a comma, quote or line break.
fn cell(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn line(out: &mut String, row: &Row<'_>) {
    for (i, (_, value)) in COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        cell(out, &value(row).unwrap_or_default());
    }
    out.push('\n');
}

/// The whole CSV document, header first (`# pxname,svname,...`).
pub fn render(view: &StatsView) -> String {
    let mut out = String::from("# ");
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let _ = writeln!(out, "{}", names.join(","));
    for row in view.rows() {
        line(&mut out, &row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::gather::tests::{shared, shared_ramping};
    use crate::stats::rates::Rates;

    #[test]
    fn one_line_per_listener_server_and_backend_with_haproxy_names() {
        let shared = shared();
        shared.snapshot().backend("api").unwrap().members[1]
            .traffic
            .sessions_total
            .add(42);
        let text = render(&StatsView::gather(&shared, &Rates::default()));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,"));
        let header: Vec<&str> = lines[0].trim_start_matches("# ").split(',').collect();
        let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
        assert!(rows.iter().all(|r| r.len() == header.len()));
        let names: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
        assert_eq!(
            names,
            [
                ("http", "FRONTEND"),
                ("api", "a"),
                ("api", "b"),
                ("api", "BACKEND"),
                ("ws", "b"),
                ("ws", "BACKEND")
            ]
        );
        let stot = header.iter().position(|h| *h == "stot").unwrap();
        assert_eq!(rows[2][stot], "42");
        let econ = header.iter().position(|h| *h == "econ").unwrap();
        assert_eq!(rows[0][econ], "", "a listener has no connection errors");
    }

    #[test]
    fn slow_start_and_refused_sessions_have_columns() {
        let text = render(&StatsView::gather(&shared_ramping(), &Rates::default()));
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
        let (a, b, api) = (&rows[1], &rows[2], &rows[3]);
        let pct: u32 = a[col("slow_start_pct")].parse().unwrap();
        assert!((5..50).contains(&pct), "{pct}");
        assert_eq!((b[col("slow_start_pct")], b[col("eweight")]), ("", "1.00"));
        assert_eq!((a[col("weight")], api[col("new_sessions_refused")]), ("1", "4"));
    }

    #[test]
    fn cells_with_commas_or_quotes_are_quoted() {
        let mut out = String::new();
        cell(&mut out, "L4CON refused, \"really\"");
        assert_eq!(out, "\"L4CON refused, \"\"really\"\"\"");
    }
}
