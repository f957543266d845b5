//! `/`: the dashboard, server-rendered with `maud` from one `StatsView`. It needs no
//! script and loads nothing from elsewhere: styles are inline, auto-refresh is a
//! `<meta http-equiv="refresh">` chosen with `?refresh=N`, admin actions are plain forms.
//!
//! Layout follows HAProxy's stats page — a table per listener group and per backend,
//! HAProxy's column groups and status colours — plus edgepin's own columns (WebSocket
//! tunnels and bytes, sticky decisions, Engine.IO `Session ID unknown`), the sid table,
//! the config generation and the last reload. Cells carry the CSV column name as their
//! class and rows their status in `data-status`, so tests and scrapers can find them.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::view::{BackendView, Counters, FrontendView, ServerView, StatsView};

/// Longest auto-refresh interval offered, seconds.
pub const MAX_REFRESH: u32 = 3600;

/// Refresh choices linked in the header, seconds (0: off).
const REFRESH_CHOICES: [u32; 5] = [0, 2, 5, 10, 30];

/// The page's styles, inlined into it (no request for outside resources).
const STYLE: &str = include_str!("dashboard.css");

/// What the page needs besides the numbers.
pub struct Page<'a> {
    pub view: &'a StatsView,
    /// Auto-refresh seconds; 0 for none.
    pub refresh: u32,
    /// The CSRF token for admin forms; `None` without auth (no forms then).
    pub csrf: Option<&'a str>,
}

/// `3d4h`, `2h5m`, `1m2s`, `45s`: coarse like HAProxy's status column.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `0`, `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n == 0 {
        return "0".into();
    }
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn count(class: &str, v: u64) -> Markup {
    html! { td class=(class) data-zero[v == 0] { (v) } }
}

fn maybe(class: &str, v: Option<u64>) -> Markup {
    match v {
        Some(v) => count(class, v),
        None => html! { td class=(class) {} },
    }
}

fn bytes(class: &str, v: u64) -> Markup {
    html! { td class=(class) title=(v) data-zero[v == 0] { (human_bytes(v)) } }
}

/// A discovered backend's last resolution and its counts, under its heading.
fn discovery_line(d: &super::view::DiscoveryView) -> Markup {
    html! {
        p.discovery {
            "Servers from DNS " code { (d.dns) } " every " (d.interval_seconds) "s · last: "
            @match (d.last_result, d.last_ago_seconds) {
                (Some(result), Some(ago)) => {
                    span class=(if result == "answer" { "good" } else { "bad" }) { (d.last_detail) }
                    " " (human_duration(ago)) " ago"
                }
                _ => { "not resolved yet" }
            }
            " · " (d.servers) " in use · " (d.answers) " answers, " (d.failed()) " failed"
            @for (kind, n) in &d.failures { " (" (kind) " " (n) ")" }
            " · " (d.changes) " changes · " (d.held) " held"
            @if let Some(p) = d.pending { " (" (p) " servers waiting to repeat)" }
        }
    }
}

fn status_class(status: &str) -> String {
    format!("st-{}", status.to_ascii_lowercase())
}

impl Page<'_> {
    pub fn render(&self) -> Markup {
        let v = self.view;
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    @if self.refresh > 0 {
                        meta http-equiv="refresh" content=(self.refresh);
                    }
                    title { "edgepin stats" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header {
                        h1 { "edgepin " span { "stats" } }
                        span.meta {
                            "v" (v.process.version) " (" (v.process.commit) ") · pid " (v.process.pid)
                            " · up " (human_duration(v.process.uptime_seconds))
                            " · generation " (v.process.generation)
                        }
                        nav { "refresh:" @for choice in REFRESH_CHOICES {
                            a class=[(choice == self.refresh).then_some("on")] href=(format!("/?refresh={choice}")) {
                                @if choice == 0 { "off" } @else { (choice) "s" }
                            }
                        } }
                    }
                    main {
                        (self.cards())
                        @if let Some(h) = &v.history { (super::charts::section(h)) }
                        @if !v.draining.is_empty() {
                            h2 { "Draining after an upgrade" }
                            (draining(&v.draining))
                        }
                        h2 { "Listeners" }
                        (self.listeners(&v.frontends))
                        @if !v.certificates.is_empty() {
                            h2 { "Certificates" }
                            (certificates(&v.certificates))
                        }
                        @for b in &v.backends {
                            (self.backend(b))
                        }
                        (self.servers())
                    }
                    footer {
                        "Same numbers as " a href="/stats.json" { "JSON" } ", " a href="/stats.csv" { "CSV" }
                        " and " a href="/metrics" { "Prometheus" } "."
                        @if self.refresh > 0 { " Reloads every " (self.refresh) " s." }
                    }
                }
            }
        }
    }

    fn cards(&self) -> Markup {
        let v = self.view;
        let p = &v.process;
        let r = &v.reload;
        let s = &v.sids;
        html! {
            section.cards {
                div.card #process {
                    h3 { "Process" }
                    dl {
                        dt { "version" } dd.version { (p.version) " (" (p.commit) ")" }
                        dt { "uptime" } dd { (human_duration(p.uptime_seconds)) }
                        dt { "threads" } dd { (p.threads) }
                        dt { "connections" } dd.connections { (p.connections) " / " (p.connections_limit) }
                        dt { "requests in flight" } dd { (p.requests_in_flight) }
                        dt { "WebSocket tunnels" } dd.tunnels { (p.open_tunnels) }
                        dt { "memory (RSS)" } dd.rss { (p.rss_bytes.map_or_else(|| "?".to_string(), human_bytes)) }
                        @if p.stopping { dt { "state" } dd.bad { "stopping" } }
                    }
                }
                div.card #config {
                    h3 { "Config" }
                    dl {
                        dt { "generation" } dd.generation { (p.generation) }
                        dt { "reloads" } dd { (r.reloads_ok) " ok · " (r.reloads_failed) " failed" }
                        @match &r.last {
                            Some(last) => {
                                dt { "last reload" }
                                dd.last-reload data-ok=(last.ok) {
                                    @if last.ok { "OK" } @else { span.bad { "FAILED" } }
                                    " " (human_duration(last.ago_seconds)) " ago"
                                }
                                @if !last.message.is_empty() {
                                    dt { @if last.ok { "warnings" } @else { "errors" } }
                                    dd.err.reload-message { (last.message) }
                                }
                            }
                            None => { dt { "last reload" } dd { "none since start" } }
                        }
                    }
                }
                div.card #sids {
                    h3 { "Engine.IO sid table" }
                    dl {
                        dt { "entries" } dd.sid-entries { (s.entries) " / " (s.capacity) }
                        dt { "lookups" } dd { (s.hits) " hit · " (s.misses) " miss" }
                        dt { "learned" } dd { (s.learned) }
                        dt { "expired · evicted" } dd { (s.expired) " · " (s.evicted) }
                        dt { "forgotten" } dd { (s.forgotten) }
                        @if let Some(sh) = &s.shared {
                            dt { "shared (Redis)" }
                            dd.shared-state { @if sh.up { "up" } @else { span.bad { "DOWN" } } " · " (sh.redis) }
                            dt { "shared lookups" }
                            dd.shared-lookups { (sh.hits) " hit · " (sh.misses) " miss · " (sh.errors) " error · " (sh.timeouts) " timeout" }
                            dt { "shared writes · fallbacks" }
                            dd.shared-fallbacks { (sh.writes) " · " (sh.fallbacks) }
                        }
                    }
                }
                div.card.legend {
                    h3 { "Status" }
                    p {
                        span style="background:#cdf0cd" { "UP" }
                        span style="background:#fbd3d3" { "DOWN" }
                        span style="background:#cfe0ff" { "DRAIN" }
                        span style="background:#eadcc2" { "MAINT" }
                    }
                    p { "DRAIN: existing sessions only." br; "MAINT: no traffic." }
                }
            }
        }
    }

    fn listeners(&self, frontends: &[FrontendView]) -> Markup {
        html! {
            table.listeners {
                thead {
                    tr.groups {
                        th rowspan="2" { "Listener" } th rowspan="2" { "Address" } th rowspan="2" { "Status" }
                        th colspan="2" { "Conn. rate" } th colspan="4" { "Connections" }
                        th colspan="3" { "Requests" } th colspan="2" { "Bytes" }
                        th colspan="4" { "Refused" } th colspan="6" { "HTTP responses" }
                    }
                    tr {
                        th { "Cur" } th { "Max" }
                        th { "Cur" } th { "Max" } th { "Limit" } th { "Total" }
                        th { "Rate" } th { "Max" } th { "Total" }
                        th { "In" } th { "Out" }
                        th title="Requests denied" { "Denied" } th title="Invalid requests (431, 413, 400)" { "Errors" }
                        th title="Connections refused at the limit" { "Conns" } th title="Redirects to https" { "Redir." }
                        th { "1xx" } th { "2xx" } th { "3xx" } th { "4xx" } th { "5xx" } th { "other" }
                    }
                }
                tbody {
                    @for f in frontends {
                        @let c = &f.counters;
                        tr.frontend id=(format!("frontend-{}", f.name)) data-status=(f.status) {
                            td.name { (f.name) }
                            td.text { (f.address.as_deref().unwrap_or("–")) }
                            td.text.status { (f.status) }
                            (count("rate", c.session_rate.current)) (count("rate_max", c.session_rate.max))
                            (count("scur", c.sessions_current)) (count("smax", c.sessions_max))
                            (maybe("slim", c.sessions_limit)) (count("stot", c.sessions_total))
                            (count("req_rate", f.request_rate.current)) (count("req_rate_max", f.request_rate.max))
                            (count("req_tot", f.requests_total))
                            (bytes("bin", c.bytes_in)) (bytes("bout", c.bytes_out))
                            (maybe("dreq", c.denied)) (maybe("ereq", c.request_errors))
                            (count("dcon", f.connections_refused)) (count("redirects", f.redirects))
                            (responses(c, true))
                        }
                    }
                }
            }
        }
    }

    fn backend(&self, b: &BackendView) -> Markup {
        let cols = Columns {
            sticky: b.counters.sticky.is_some(),
            // Requests queue only for servers with `max_connections`.
            queue: b.servers.iter().any(|s| s.counters.sessions_limit.is_some()),
        };
        html! {
            h2 id=(format!("backend-{}", b.name)) {
                "Backend " (b.name)
                small { (b.balance) " · " (b.servers_up) "/" (b.servers_total) " servers taking new sessions" }
            }
            @if let Some(d) = &b.discovery { (discovery_line(d)) }
            table.backend data-backend=(b.name) {
                thead {
                    tr.groups {
                        th rowspan="2" { "Server" }
                        @if cols.queue { th colspan="2" { "Queue" } }
                        th colspan="2" { "Session rate" } th colspan="4" { "Sessions" }
                        th colspan="2" { "Bytes" } th colspan="2" { "Errors" } th colspan="2" { "Warnings" }
                        th colspan="6" { "Health" } th colspan="5" { "HTTP responses" }
                        th colspan="4" { "WebSocket" }
                        @if cols.sticky { th colspan="4" { "Sticky decisions" } }
                        th title="Engine.IO" { "EIO" }
                    }
                    tr {
                        @if cols.queue { th { "Cur" } th { "Max" } }
                        th { "Cur" } th { "Max" }
                        th { "Cur" } th { "Max" } th { "Limit" } th { "Total" }
                        th { "In" } th { "Out" }
                        th title="Connection errors" { "Conn" } th title="Response errors" { "Resp" }
                        th title="Retries" { "Retr" } th title="Redispatches" { "Redis" }
                        th { "Status" } th { "Last check" } th { "Wght" }
                        th title="Failed checks" { "Chk" } th title="UP to DOWN transitions" { "Dwn" } th { "Dwntme" }
                        th { "1xx" } th { "2xx" } th { "3xx" } th { "4xx" } th { "5xx" }
                        th title="Open tunnels" { "Cur" } th title="Tunnels opened" { "Total" }
                        th title="Client to server" { "In" } th title="Server to client" { "Out" }
                        @if cols.sticky { th { "sid" } th { "cookie" } th { "hash" } th title="Redispatched" { "redisp." } }
                        th title="400 Session ID unknown" { "unkn." }
                    }
                }
                tbody {
                    @for s in &b.servers {
                        (self.server_row(b, s, cols))
                    }
                    tr class=(format!("total {}", status_class(b.status))) data-status=(b.status) {
                        td.name { "Backend" }
                        (traffic_cells(&b.counters, cols, html! {
                            td.text.status { (b.status) }
                            td.last_chk {}
                            (count("weight", b.weight))
                            td {} td {} td {}
                        }))
                    }
                }
            }
            @if b.no_server + b.sid_refused + b.queue_timeouts + b.queue_full + b.retry_budget_exhausted + b.new_sessions_refused > 0 {
                p.refusals {
                    "Answered by edgepin: " span.bad { (b.no_server) } " × 503 no server · "
                    (b.sid_refused) " × Engine.IO 400 (pinned server gone) · "
                    (b.queue_timeouts) " queue timeouts · " (b.queue_full) " refused, queue full · " (b.retry_budget_exhausted) " retries over budget"
                    @if let Some(cap) = b.new_sessions {
                        " · " (b.new_sessions_refused) " new sessions over " (cap.per_second) "/s (burst " (cap.burst) ") × 503"
                    }
                }
            }
        }
    }

    fn server_row(&self, b: &BackendView, s: &ServerView, cols: Columns) -> Markup {
        html! {
            tr class=(format!("server {}", status_class(s.status)))
                id=(format!("server-{}-{}", b.name, s.name)) data-status=(s.status) {
                td.name title=(s.address) { (s.name) }
                (traffic_cells(&s.counters, cols, html! {
                    td.text.status title=(s.status_reason) {
                        b { (s.status) } " " (human_duration(s.status_seconds))
                        @if s.retired { " (removed)" }
                        (slow_start(s))
                        @if s.discovered { " (DNS)" }
                    }
                    (check_cell(s))
                    (count("weight", s.weight))
                    (count("chkfail", s.checks_failed))
                    (count("chkdown", s.up_down_total))
                    td.downtime data-zero[s.downtime_seconds < 1.0] { (human_duration(s.downtime_seconds as u64)) }
                }))
            }
        }
    }

    /// One row per server (not per backend): state, health details and admin actions.
    fn servers(&self) -> Markup {
        let mut seen: Vec<&ServerView> = Vec::new();
        for s in self.view.backends.iter().flat_map(|b| &b.servers) {
            if !seen.iter().any(|o| o.name == s.name) {
                seen.push(s);
            }
        }
        html! {
            h2 #servers {
                "Servers"
                small { "state is per server, shared by every backend listing it" }
            }
            table.servers {
                thead {
                    tr {
                        th { "Server" } th { "Address" } th { "Status" } th { "Why" } th { "Last check" }
                        th { "Weight" } th title="Requests in flight and tunnels, all backends" { "Active" }
                        th title="Sticky sessions pinned to it" { "Sessions" }
                        @if self.csrf.is_some() { th { "Set state" } th { "Set weight" } }
                    }
                }
                tbody {
                    @for s in &seen {
                        tr class=(status_class(s.status)) id=(format!("admin-{}", s.name)) data-status=(s.status) {
                            td.name { (s.name) }
                            td.text { (s.address) }
                            td.text.status { b { (s.status) } " " (human_duration(s.status_seconds)) (slow_start(s)) }
                            td.reason title=(s.status_reason) { (s.status_reason) }
                            (check_cell(s))
                            (count("weight", s.weight))
                            (count("active", s.active))
                            (count("sticky_sessions", s.sticky_sessions))
                            @if let Some(token) = self.csrf {
                                td.text {
                                    form.inline method="post" action=(format!("/admin/servers/{}/state", s.name)) {
                                        input type="hidden" name="csrf" value=(token);
                                        @for (value, label) in [("ready", "READY"), ("drain", "DRAIN"), ("maint", "MAINT")] {
                                            button type="submit" name="state" value=(value) disabled[s.admin == label] { (label) }
                                            " "
                                        }
                                    }
                                }
                                td.text {
                                    form.inline method="post" action=(format!("/admin/servers/{}/weight", s.name)) {
                                        input type="hidden" name="csrf" value=(token);
                                        input type="number" name="weight" min="0" max=(super::MAX_WEIGHT) value=(s.weight);
                                        " " button type="submit" { "Set" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if self.csrf.is_none() {
                p { "Admin actions (DRAIN, MAINT, weight) are available when " code { "stats.auth" } " is configured." }
            }
        }
    }
}

/// One row per earlier process still draining: what it holds and when it stops waiting.
fn draining(processes: &[super::view::DrainingView]) -> Markup {
    html! {
        table.draining {
            thead { tr { th { "pid" } th { "tunnels left" } th { "requests" } th { "hard stop" } } }
            tbody {
                @for d in processes {
                    tr id=(format!("draining-{}", d.pid)) {
                        td.pid { (d.pid) }
                        td.tunnels { (d.tunnels) }
                        td.requests { (d.requests) }
                        td.deadline {
                            @if d.closing {
                                span.bad { "closing over " (human_duration(d.close_spread_seconds)) }
                            } @else {
                                "in " (human_duration(d.hard_stop_in_seconds)) ", then closing over "
                                (human_duration(d.close_spread_seconds))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A server in slow start: its share now, with the effective weight and time left.
fn slow_start(s: &ServerView) -> Markup {
    html! {
        @if let Some(r) = s.slow_start {
            " "
            span.slowstart title=(format!(
                "effective weight {:.2} of {}; full in {}",
                s.effective_weight,
                s.weight,
                human_duration((r.window_seconds - r.elapsed_seconds).max(0.0).ceil() as u64)
            )) {
                "slow start " (r.percent) " %"
            }
        }
    }
}

/// One row per certificate: names, issuer, expiry, and the ACME renewal state.
fn certificates(certs: &[super::view::CertificateView]) -> Markup {
    html! {
        table.certificates {
            thead { tr { th { "names" } th { "source" } th { "issuer" } th { "expires in" } th { "renewal" } } }
            tbody {
                @for c in certs {
                    tr {
                        td.names { (c.names.join(", ")) @if c.default { " " em { "(default)" } } }
                        td.source { (c.source) }
                        td.issuer { (c.issuer) }
                        td.expires class=[(c.expires_in_seconds < 14 * 86400).then_some("bad")] {
                            (human_duration(c.expires_in_seconds))
                        }
                        td.renewal {
                            @match &c.acme {
                                None => { "files" }
                                Some(a) => {
                                    @match a.last_ok {
                                        None => { "ACME: not tried yet" }
                                        Some(true) => { "ACME: last renewal OK" }
                                        Some(false) => { span.bad { "ACME: last renewal failed (" (a.failures) "): " (a.last_error) } }
                                    }
                                    @if !a.issued { " · serving a self-signed stand-in" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn check_cell(s: &ServerView) -> Markup {
    match &s.last_check {
        Some(c) => html! {
            td.last_chk title=(format!("{} · {} s ago", c.detail, c.ago_seconds)) {
                span class=[(!c.ok).then_some("bad")] { (c.status.name()) }
                @if let Some(code) = c.code { " " (code) }
                " · " (format!("{:.0}", c.duration_ms)) "ms"
            }
        },
        None => html! { td.last_chk { "not checked yet" } },
    }
}

/// HTTP responses by class; `other` (no response) where the table has the column.
fn responses(c: &Counters, other: bool) -> Markup {
    html! {
        (count("hrsp_1xx", c.responses.r1xx)) (count("hrsp_2xx", c.responses.r2xx))
        (count("hrsp_3xx", c.responses.r3xx)) (count("hrsp_4xx", c.responses.r4xx))
        (count("hrsp_5xx", c.responses.r5xx))
        @if other { (count("hrsp_other", c.responses.other)) }
    }
}

/// Optional column groups of a backend table.
#[derive(Debug, Clone, Copy)]
struct Columns {
    sticky: bool,
    queue: bool,
}

/// The cells a server row and a backend total share, with `status` (six cells) between
/// the warnings and the HTTP responses.
fn traffic_cells(c: &Counters, cols: Columns, status: Markup) -> Markup {
    let ws = c.websocket.unwrap_or_default();
    let st = c.sticky.unwrap_or_default();
    html! {
        @if cols.queue { (maybe("qcur", c.queue_current)) (maybe("qmax", c.queue_max)) }
        (count("rate", c.session_rate.current)) (count("rate_max", c.session_rate.max))
        (count("scur", c.sessions_current)) (count("smax", c.sessions_max))
        (maybe("slim", c.sessions_limit)) (count("stot", c.sessions_total))
        (bytes("bin", c.bytes_in)) (bytes("bout", c.bytes_out))
        (maybe("econ", c.connect_errors)) (maybe("eresp", c.response_errors))
        (maybe("wretr", c.retries)) (maybe("wredis", c.redispatches))
        (status)
        (responses(c, false))
        (count("ws_cur", ws.open)) (count("ws_tot", ws.total))
        (bytes("ws_bin", ws.bytes_in)) (bytes("ws_bout", ws.bytes_out))
        @if cols.sticky {
            (count("sticky_sid", st.sid)) (count("sticky_cookie", st.cookie))
            (count("sticky_hash", st.hash)) (count("sticky_redispatch", st.redispatch))
        }
        (maybe("sid_unknown", c.sid_unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Health;
    use crate::stats::gather::tests::{shared, shared_ramping};
    use crate::stats::rates::Rates;

    #[test]
    fn durations_and_bytes_read_like_haproxy() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(62), "1m2s");
        assert_eq!(human_duration(2 * 3600 + 5 * 60 + 9), "2h5m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn page_lists_backends_and_servers_with_status_and_refreshes() {
        let shared = shared();
        shared.snapshot().backend("api").unwrap().members[1]
            .state
            .set_health(Health::Down, "3 failed checks (<script>)");
        let view = StatsView::gather(&shared, &Rates::default());
        let page = Page {
            view: &view,
            refresh: 5,
            csrf: None,
        }
        .render()
        .into_string();
        assert!(page.contains(r#"<meta http-equiv="refresh" content="5">"#));
        assert!(page.contains(r#"id="server-api-a" data-status="UP""#), "{page}");
        assert!(page.contains(r#"id="server-api-b" data-status="DOWN""#));
        assert!(page.contains(r#"id="server-ws-b" data-status="DOWN""#));
        assert!(page.contains(r#"id="backend-ws""#));
        assert!(
            page.contains("&lt;script&gt;") && !page.contains("<script>"),
            "text is escaped"
        );
        assert!(!page.contains("<form"), "no admin forms without auth");
        assert!(!page.contains("src="), "nothing loaded from elsewhere");
    }

    #[test]
    fn a_server_in_slow_start_says_so_beside_its_status() {
        let view = StatsView::gather(&shared_ramping(), &Rates::default());
        let page = Page {
            view: &view,
            refresh: 0,
            csrf: None,
        }
        .render()
        .into_string();
        let row = |id: &str| {
            let tail = page.split(&format!(r#"id="server-api-{id}""#)).nth(1).unwrap();
            tail.split("</tr>").next().unwrap().to_string()
        };
        let a = row("a");
        assert!(a.contains(r#"class="slowstart" title="effective weight 0."#), "{a}");
        assert!(a.contains("slow start "), "{a}");
        assert!(!row("b").contains("slow start"));
    }

    #[test]
    fn admin_forms_carry_the_csrf_token() {
        let shared = shared();
        let view = StatsView::gather(&shared, &Rates::default());
        let page = Page {
            view: &view,
            refresh: 0,
            csrf: Some("tok123"),
        }
        .render()
        .into_string();
        assert!(!page.contains("http-equiv"), "refresh off");
        assert!(page.contains(r#"action="/admin/servers/a/state""#));
        assert!(page.contains(r#"action="/admin/servers/b/weight""#));
        assert_eq!(
            page.matches(r#"name="csrf" value="tok123""#).count(),
            4,
            "two forms per server"
        );
    }
}
