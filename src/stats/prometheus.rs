//! `/metrics`: the view in Prometheus text format, named like HAProxy's built-in exporter
//! (`addons/promex`) with `edgepin_` for `haproxy_`: `edgepin_frontend_*{proxy}`,
//! `edgepin_backend_*{proxy}`, `edgepin_server_*{proxy,server}`, `edgepin_process_*`,
//! `edgepin_sticktable_*{name}`, with the same `state` and `code` labels. Metrics only
//! edgepin has (WebSocket tunnels, sticky decisions, Engine.IO) use the same prefixes.
//! The README maps every name. A fresh `prometheus::Registry` is filled per scrape from
//! the one view, so the numbers are those of the page and the CSV.

use std::collections::HashMap;

use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

use crate::state::{CheckStatus, DURATION_BUCKETS};

use super::row_metrics::{Kind, ROW_METRICS};
use super::view::{DurationsView, Row, RowKind, StatsView};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Server states of `*_server_status`, as HAProxy's exporter lists them.
const SERVER_STATES: [&str; 5] = ["DOWN", "UP", "MAINT", "DRAIN", "NOLB"];
/// The `state` label of `check_status` before a server's first check.
const NOT_CHECKED: &str = "UNK";

enum Family {
    Gauge(GaugeVec),
    Counter(CounterVec),
}

/// The metric families of one scrape, created on first use.
#[derive(Default)]
struct Families {
    registry: Registry,
    by_name: HashMap<String, Family>,
    /// Histograms, built from counts already bucketed (the registry's histograms can
    /// only observe).
    histograms: HashMap<String, MetricFamily>,
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

impl Families {
    /// One histogram of `name` with `labels`, from its cumulative bucket counts.
    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], d: &DurationsView) {
        let family = self.histograms.entry(name.to_string()).or_insert_with(|| {
            let mut f = MetricFamily::new();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(MetricType::HISTOGRAM);
            f
        });
        let mut h = Histogram::new();
        h.set_sample_count(d.count);
        h.set_sample_sum(d.sum_seconds);
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(&d.cumulative)
            .map(|(le, count)| {
                let mut b = Bucket::new();
                b.set_upper_bound(*le);
                b.set_cumulative_count(*count);
                b
            })
            .collect();
        h.set_bucket(buckets);
        let pairs = labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::new();
                l.set_name(k.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect();
        let mut m = Metric::from_label(pairs);
        m.set_histogram(h);
        family.mut_metric().push(m);
    }
}

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
    // Each family's name is built once, not once per label value.
    let status_help = "Current status, per state label value.";
    let name = format!("{pre}status");
    for state in states {
        let v = if *state == up { 1.0 } else { 0.0 };
        families.put(&name, status_help, Kind::Gauge, &with("state", state), v)?;
    }
    let name = format!("{pre}http_responses_total");
    for (code, v) in r.counters.responses.classes() {
        families.put(
            &name,
            "HTTP responses by class.",
            Kind::Counter,
            &with("code", code),
            v as f64,
        )?;
    }
    if let Some(sticky) = r.counters.sticky {
        let name = format!("{pre}sticky_decisions_total");
        let help = "How sticky requests were placed: by sid, cookie, hash, or redispatched.";
        for (decision, v) in sticky.decisions() {
            families.put(&name, help, Kind::Counter, &with("decision", decision), v as f64)?;
        }
    }
    if let Some(d) = &r.counters.request_durations {
        families.histogram(
            &format!("{pre}http_request_duration_seconds"),
            "How long requests took, from the request head to the end of the answer (tunnels left out).",
            &labels,
            d,
        );
    }
    if let Some(s) = r.server {
        let current = s.last_check.as_ref().map_or(NOT_CHECKED, |c| c.status.name());
        let name = format!("{pre}check_status");
        let help = "Status of the last health check, per state label value.";
        for state in std::iter::once(NOT_CHECKED).chain(CheckStatus::NAMES) {
            let v = if state == current { 1.0 } else { 0.0 };
            families.put(&name, help, Kind::Gauge, &with("state", state), v)?;
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
    let build = [("version", p.version), ("commit", p.commit)];
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
    if let Some(sh) = &s.shared {
        let help = "Whether the shared sid table's Redis is connected (sticky.shared).";
        families.put("edgepin_shared_sids_up", help, g, &[], f64::from(u8::from(sh.up)))?;
        let lookups = "Shared sid table lookups by result.";
        for (result, v) in [("hit", sh.hits), ("miss", sh.misses), ("timeout", sh.timeouts)] {
            families.put(
                "edgepin_shared_sids_lookups_total",
                lookups,
                c,
                &[("result", result)],
                v as f64,
            )?;
        }
        for (name, help, v) in [
            (
                "edgepin_shared_sids_errors_total",
                "Shared sid table commands that failed (lookups, writes, connection attempts).",
                sh.errors,
            ),
            (
                "edgepin_shared_sids_fallbacks_total",
                "Sessions routed by cookie or hash because the shared table's Redis could not be used.",
                sh.fallbacks,
            ),
            (
                "edgepin_shared_sids_writes_total",
                "Sids written to (or deleted from) the shared table.",
                sh.writes,
            ),
        ] {
            families.put(name, help, c, &[], v as f64)?;
        }
    }
    Ok(())
}

/// The https listener's certificates: expiry, and the ACME renewal state.
fn certificates(families: &mut Families, view: &StatsView) -> prometheus::Result<()> {
    let g = Kind::Gauge;
    for c in &view.certificates {
        let names = c.names.join(",");
        let labels = [
            ("names", names.as_str()),
            ("issuer", c.issuer.as_str()),
            ("source", c.source.as_str()),
        ];
        families.put(
            "edgepin_certificate_expiry_timestamp_seconds",
            "When the certificate expires, Unix seconds.",
            g,
            &labels,
            c.not_after_unix as f64,
        )?;
        let Some(a) = &c.acme else { continue };
        let labels = [("names", names.as_str())];
        families.put(
            "edgepin_certificate_acme_issued",
            "1 once the ACME server issued the certificate served (0: self-signed stand-in).",
            g,
            &labels,
            f64::from(u8::from(a.issued)),
        )?;
        families.put(
            "edgepin_certificate_acme_renewal_failures",
            "Failed ACME renewal attempts since the last success.",
            g,
            &labels,
            f64::from(a.failures),
        )?;
        if let (Some(ok), Some(at)) = (a.last_ok, a.last_attempt_unix) {
            families.put(
                "edgepin_certificate_acme_last_renewal_success",
                "1 if the last ACME renewal attempt succeeded.",
                g,
                &labels,
                f64::from(u8::from(ok)),
            )?;
            families.put(
                "edgepin_certificate_acme_last_renewal_timestamp_seconds",
                "Time of the last ACME renewal attempt.",
                g,
                &labels,
                at as f64,
            )?;
        }
    }
    Ok(())
}

/// Discovered backends: resolutions by result, the last one, the servers in use.
fn discovery(families: &mut Families, view: &StatsView) -> prometheus::Result<()> {
    for b in &view.backends {
        let Some(d) = &b.discovery else { continue };
        let proxy = [("proxy", b.name.as_str())];
        let resolutions =
            "DNS resolutions of a discovered backend by result (answer, nxdomain, empty, timeout, error).";
        let name = "edgepin_backend_dns_resolutions_total";
        families.put(
            name,
            resolutions,
            Kind::Counter,
            &[("proxy", &b.name), ("result", "answer")],
            d.answers as f64,
        )?;
        for kind in ["nxdomain", "empty", "timeout", "error"] {
            let n = d.failures.get(kind).copied().unwrap_or(0);
            families.put(
                name,
                resolutions,
                Kind::Counter,
                &[("proxy", &b.name), ("result", kind)],
                n as f64,
            )?;
        }
        families.put(
            "edgepin_backend_dns_servers",
            "Servers of the last good DNS answer (in use).",
            Kind::Gauge,
            &proxy,
            d.servers as f64,
        )?;
        families.put(
            "edgepin_backend_dns_changes_total",
            "DNS answers that changed the servers.",
            Kind::Counter,
            &proxy,
            d.changes as f64,
        )?;
        families.put(
            "edgepin_backend_dns_held_total",
            "DNS answers held back because they removed more than half the servers.",
            Kind::Counter,
            &proxy,
            d.held as f64,
        )?;
        if let (Some(result), Some(at)) = (d.last_result, d.last_unix) {
            families.put(
                "edgepin_backend_dns_last_resolution_success",
                "1 if the last DNS resolution gave servers.",
                Kind::Gauge,
                &proxy,
                f64::from(u8::from(result == "answer")),
            )?;
            families.put(
                "edgepin_backend_dns_last_resolution_timestamp_seconds",
                "Time of the last DNS resolution.",
                Kind::Gauge,
                &proxy,
                at as f64,
            )?;
        }
    }
    Ok(())
}

/// The Prometheus text for `view`.
/// Earlier processes draining after an upgrade: how many, and each one's tunnels,
/// requests and hard stop, by pid.
fn draining(families: &mut Families, view: &StatsView) -> prometheus::Result<()> {
    let g = Kind::Gauge;
    families.put(
        "edgepin_draining_processes",
        "Earlier edgepin processes still draining after an upgrade.",
        g,
        &[],
        view.draining.len() as f64,
    )?;
    for d in &view.draining {
        let pid = d.pid.to_string();
        let labels = [("pid", pid.as_str())];
        families.put(
            "edgepin_draining_process_tunnels",
            "WebSocket tunnels a draining process still relays.",
            g,
            &labels,
            d.tunnels as f64,
        )?;
        families.put(
            "edgepin_draining_process_requests",
            "Other requests a draining process still serves.",
            g,
            &labels,
            d.requests as f64,
        )?;
        families.put(
            "edgepin_draining_process_hard_stop_timestamp_seconds",
            "When a draining process starts closing what is left (reload.hard_stop_after), Unix seconds.",
            g,
            &labels,
            d.hard_stop_unix as f64,
        )?;
        families.put(
            "edgepin_draining_process_closing",
            "1 while a draining process closes its remaining tunnels.",
            g,
            &labels,
            f64::from(u8::from(d.closing)),
        )?;
    }
    Ok(())
}

pub fn render(view: &StatsView) -> prometheus::Result<String> {
    let mut families = Families::default();
    process(&mut families, view)?;
    draining(&mut families, view)?;
    certificates(&mut families, view)?;
    discovery(&mut families, view)?;
    for r in view.rows() {
        row(&mut families, &r)?;
    }
    let mut gathered = families.registry.gather();
    gathered.extend(families.histograms.into_values());
    gathered.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new().encode(&gathered, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Health;
    use crate::stats::gather::tests::{shared, shared_ramping};
    use crate::stats::rates::Rates;

    #[test]
    fn a_process_draining_after_an_upgrade_is_listed_by_pid() {
        let shared = shared();
        let text = render(&StatsView::gather(&shared, &Rates::default())).unwrap();
        assert!(text.lines().any(|l| l == "edgepin_draining_processes 0"), "{text}");
        shared.lifecycle.report(crate::upgrade::wire::DrainStatus {
            pid: 4242,
            tunnels: 17,
            requests: 2,
            hard_stop_unix: 1_900_000_000,
            close_spread_secs: 60,
            closing: false,
        });
        let view = StatsView::gather(&shared, &Rates::default());
        let text = render(&view).unwrap();
        for line in [
            "edgepin_draining_processes 1",
            "edgepin_draining_process_tunnels{pid=\"4242\"} 17",
            "edgepin_draining_process_requests{pid=\"4242\"} 2",
            "edgepin_draining_process_hard_stop_timestamp_seconds{pid=\"4242\"} 1900000000",
            "edgepin_draining_process_closing{pid=\"4242\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["draining"][0]["tunnels"], 17);
        let page = crate::stats::html::Page {
            view: &view,
            refresh: 0,
            csrf: None,
        }
        .render()
        .into_string();
        assert!(page.contains(r#"id="draining-4242""#), "the page lists it");
    }

    #[test]
    fn names_and_labels_follow_haproxy_exporter() {
        let shared = shared();
        let snapshot = shared.snapshot();
        let api = snapshot.backend("api").unwrap();
        api.members[0].traffic.sessions.inc();
        api.members[1].state.set_health(Health::Down, "checks");
        api.counters.traffic.redispatches.add(3);
        api.counters
            .traffic
            .durations
            .observe(std::time::Duration::from_millis(3));
        api.counters
            .traffic
            .durations
            .observe(std::time::Duration::from_secs(90));
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
            "# TYPE edgepin_backend_http_request_duration_seconds histogram",
            "edgepin_backend_http_request_duration_seconds_bucket{proxy=\"api\",le=\"0.005\"} 1",
            "edgepin_backend_http_request_duration_seconds_bucket{proxy=\"api\",le=\"+Inf\"} 2",
            "edgepin_backend_http_request_duration_seconds_count{proxy=\"api\"} 2",
            "edgepin_backend_http_request_duration_seconds_sum{proxy=\"api\"} 90.003",
            "edgepin_server_http_request_duration_seconds_bucket{proxy=\"ws\",server=\"b\",le=\"60\"} 0",
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

    #[test]
    fn slow_start_and_refused_sessions_are_metrics() {
        let text = render(&StatsView::gather(&shared_ramping(), &Rates::default())).unwrap();
        let value = |prefix: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let ratio = value("edgepin_server_slow_start_ratio{proxy=\"api\",server=\"a\"}");
        assert!((0.05..0.5).contains(&ratio), "{ratio}");
        assert_eq!(
            value("edgepin_server_slow_start_ratio{proxy=\"api\",server=\"b\"}"),
            1.0
        );
        assert!(value("edgepin_server_effective_weight{proxy=\"api\",server=\"a\"}") < 0.5);
        assert_eq!(value("edgepin_backend_new_sessions_refused_total{proxy=\"api\"}"), 4.0);
    }
}
