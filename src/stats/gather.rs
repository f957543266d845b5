//! Reading the proxy's state into a `StatsView`: the only place that reads counters for
//! output. Everything is read once per request from `Shared` — the current snapshot, the
//! registry, the sid table, the listener counters — and from the rate sampler; nothing
//! is changed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::runtime::{BackendRt, Member, Shared};
use crate::state::{FULL_SHARE, FrontendCounters, StatusClasses, Traffic};

use super::rates::{self, Rate, Rates};
use super::view::{
    AcmeView, BackendView, CertificateView, CheckView, Counters, DiscoveryView, DrainingView, DurationsView,
    FrontendView, LastReload, NewSessionsView, ProcessView, ReloadView, Responses, ServerView, SharedSidView, SidView,
    SlowStartView, StatsView, StickyView, WebSocketView,
};

fn responses(c: &StatusClasses) -> Responses {
    Responses {
        r1xx: c.get(1),
        r2xx: c.get(2),
        r3xx: c.get(3),
        r4xx: c.get(4),
        r5xx: c.get(5),
        other: c.get(0),
    }
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
        let backends = snapshot
            .backends
            .iter()
            .map(|b| {
                let mut view = backend(b, config, rates);
                view.discovery = discovery(shared, b);
                view
            })
            .collect();
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
                version: crate::build_info::VERSION,
                commit: crate::build_info::COMMIT,
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
                shared: shared_sids(shared),
            },
            frontends,
            backends,
            certificates: certificates(shared),
            draining: draining(shared),
            history: None,
        }
    }
}

/// The processes draining before this one, as they last reported.
fn draining(shared: &Shared) -> Vec<DrainingView> {
    let now = unix_seconds(SystemTime::now());
    shared
        .lifecycle
        .draining()
        .into_iter()
        .map(|d| DrainingView {
            pid: d.pid,
            tunnels: d.tunnels,
            requests: d.requests,
            hard_stop_unix: d.hard_stop_unix,
            hard_stop_in_seconds: d.hard_stop_unix.saturating_sub(now),
            close_spread_seconds: d.close_spread_secs,
            closing: d.closing,
        })
        .collect()
}

/// The shared sid table, when one is configured.
fn shared_sids(shared: &Shared) -> Option<SharedSidView> {
    let t = &shared.sids.shared;
    let settings = t.settings()?;
    let c = &t.counters;
    Some(SharedSidView {
        redis: settings.redis.to_string(),
        up: t.is_up(),
        hits: c.hits.get(),
        misses: c.misses.get(),
        errors: c.errors.get(),
        timeouts: c.timeouts.get(),
        fallbacks: c.fallbacks.get(),
        writes: c.writes.get(),
    })
}

/// The https listener's certificates, with the ACME one's renewal state.
fn certificates(shared: &Shared) -> Vec<CertificateView> {
    let Some(store) = &shared.cert else { return Vec::new() };
    let set = store.current();
    let default = set.resolve(None);
    let now = SystemTime::now();
    set.all()
        .map(|c| {
            let acme = set
                .acme()
                .filter(|a| std::sync::Arc::ptr_eq(a, c))
                .and(store.acme())
                .map(|a| {
                    let s = a.status();
                    AcmeView {
                        issued: s.issued,
                        last_attempt_unix: s.last_attempt.map(unix_seconds),
                        last_ok: s.last_ok,
                        last_error: s.last_error,
                        last_success_unix: s.last_success.map(unix_seconds),
                        next_attempt_unix: s.next_attempt.map(unix_seconds),
                        failures: s.failures,
                    }
                });
            CertificateView {
                names: c.names.clone(),
                source: c.source.clone(),
                issuer: c.info.issuer.clone(),
                not_after_unix: unix_seconds(c.info.not_after),
                expires_in_seconds: c.info.remaining(now).as_secs(),
                default: default.is_some_and(|d| std::sync::Arc::ptr_eq(d, c)),
                acme,
            }
        })
        .collect()
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
        handshake_timeouts: c.handshake_timeouts.get(),
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
            responses: responses(&c.responses),
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
        connects: Some(t.connects.get()),
        reuses: Some(t.reuses.get()),
        responses: responses(&t.responses),
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
        request_durations: Some({
            let (cumulative, count, sum_seconds) = t.durations.read();
            DurationsView {
                cumulative,
                count,
                sum_seconds,
            }
        }),
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
        queue_full: c.queue_full.get(),
        retry_budget_exhausted: c.retry_budget_exhausted.get(),
        new_sessions: b.cfg.new_sessions.map(|r| NewSessionsView {
            per_second: r.per_second,
            burst: r.burst,
        }),
        new_sessions_refused: c.new_sessions_refused.get(),
        counters,
        servers,
        discovery: None,
    }
}

/// A discovered backend's resolutions, from the book.
fn discovery(shared: &Shared, b: &BackendRt) -> Option<DiscoveryView> {
    use crate::discovery::Outcome;
    let spec = b.cfg.discover.as_ref()?;
    let entry = shared.discovered.entry(b.name()).unwrap_or_default();
    let (last_result, last_detail) = match entry.last.as_ref().map(|(_, o)| o) {
        None => (None, String::new()),
        Some(Outcome::Answer(n)) => (Some("answer"), format!("{n} servers")),
        Some(Outcome::Failed(f)) => (Some(f.kind()), f.to_string()),
    };
    Some(DiscoveryView {
        dns: spec.describe(),
        interval_seconds: spec.interval.as_secs_f64(),
        last_unix: entry.last.as_ref().map(|(at, _)| unix_seconds(*at)),
        last_ago_seconds: entry
            .last
            .as_ref()
            .map(|(at, _)| at.elapsed().unwrap_or_default().as_secs()),
        last_result,
        last_detail,
        servers: entry.servers.len() as u64,
        answers: entry.answers,
        failures: entry.failures.iter().map(|(k, v)| (*k, *v)).collect(),
        changes: entry.changes,
        held: entry.held,
        pending: entry.pending.as_ref().map(|p| p.servers.len() as u64),
        capped: entry.capped,
    })
}

fn server(b: &BackendRt, m: &Member, sticky: bool, config: &Config, rates: &Rates) -> ServerView {
    let state = &m.state;
    let retired = m.retired_until.is_some() || state.is_retired();
    let mut status = state.status().as_str();
    if retired && status == "UP" {
        status = "DRAIN";
    }
    let downtime = state.downtime();
    let share = m.ramp_share();
    let slow_start = state
        .ramp
        .elapsed()
        .filter(|_| share < FULL_SHARE)
        .map(|elapsed| SlowStartView {
            percent: share / 10,
            elapsed_seconds: elapsed.as_secs_f64(),
            window_seconds: m.slow_start.as_secs_f64(),
        });
    let detail = state.detail();
    let last_check = detail.last_check.as_ref().map(|c| CheckView {
        ok: c.ok(),
        status: c.status,
        code: c.status.code(),
        detail: c.detail(),
        duration_ms: c.duration.as_secs_f64() * 1e3,
        ago_seconds: c.at.elapsed().unwrap_or_default().as_secs(),
    });
    let status_seconds = detail.since.elapsed().as_secs();
    let status_reason = detail.reason.clone();
    drop(detail);
    let mut counters = traffic(&m.traffic, rates.get(&rates::server_key(b.name(), &m.name)), sticky);
    counters.queue_current = Some(state.queued.get());
    counters.queue_max = Some(state.queued.max());
    counters.sessions_limit = m.max_connections.map(u64::from);
    let address = config
        .server(&m.name)
        .map_or_else(|| m.addr.to_string(), |s| s.address_text.clone());
    ServerView {
        name: m.name.to_string(),
        address,
        status,
        health: state.health().as_str(),
        admin: state.admin().as_str(),
        retired,
        discovered: m.discovered,
        status_seconds,
        status_reason,
        last_check,
        checks_failed: state.checks_failed.get(),
        up_down_total: state.up_down_total.load(std::sync::atomic::Ordering::Relaxed),
        downtime_seconds: downtime.as_secs_f64(),
        weight: u64::from(state.weight()),
        effective_weight: f64::from(state.weight()) * f64::from(share) / f64::from(FULL_SHARE),
        slow_start,
        active: state.active(),
        sticky_sessions: state.sessions() as u64,
        counters,
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
        config.stats.hosts = vec!["stats.test".into()];
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
        a.set_last_check(crate::state::CheckResult::new(
            crate::state::CheckStatus::L7Sts(500),
            None,
            Duration::from_millis(3),
        ));
        let view = StatsView::gather(&shared, &Rates::default());
        let a = &view.backends[0].servers[0];
        assert_eq!((a.status, a.admin), ("DRAIN", "DRAIN"));
        let check = a.last_check.as_ref().unwrap();
        assert_eq!(
            (check.status.name(), check.code, check.ok, check.detail.as_str()),
            ("L7STS", Some(500), false, "L7STS 500")
        );
        let json = serde_json::to_value(check).unwrap();
        assert_eq!(
            (&json["status"], &json["code"], &json["detail"], &json["ok"]),
            (
                &serde_json::json!("L7STS"),
                &serde_json::json!(500),
                &serde_json::json!("L7STS 500"),
                &serde_json::json!(false)
            ),
            "the JSON keeps its strings"
        );
        assert_eq!(a.checks_failed, 1);
        assert_eq!(view.backends[0].servers_up, 1);
    }

    /// [`shared`] with server a of backend api back from DOWN (in slow start, 10 s by
    /// default) and 4 new sessions refused on api.
    pub fn shared_ramping() -> Arc<Shared> {
        let shared = shared();
        let snapshot = shared.snapshot();
        let api = snapshot.backend("api").unwrap();
        api.members[0].state.set_health(Health::Down, "checks");
        api.members[0].state.set_health(Health::Up, "checks");
        api.counters.new_sessions_refused.add(4);
        shared
    }

    #[test]
    fn a_server_in_slow_start_shows_its_share_and_a_backend_its_refused_sessions() {
        let view = StatsView::gather(&shared_ramping(), &Rates::default());
        let api = &view.backends[0];
        let (a, b) = (&api.servers[0], &api.servers[1]);
        assert_eq!(a.status, "UP", "slow start is a part of UP");
        let ramp = a.slow_start.expect("in slow start");
        assert!((5..50).contains(&ramp.percent), "{ramp:?}");
        assert_eq!(ramp.window_seconds, 10.0);
        assert!(
            a.effective_weight >= 0.05 && a.effective_weight < 0.5,
            "{}",
            a.effective_weight
        );
        assert!(b.slow_start.is_none());
        assert_eq!(b.effective_weight, 1.0);
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["slow_start"]["percent"], ramp.percent);
        assert_eq!(serde_json::to_value(b).unwrap()["slow_start"], serde_json::Value::Null);
        assert_eq!((api.new_sessions_refused, api.new_sessions.is_none()), (4, true));
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        assert!(resident_memory().is_some_and(|b| b > 1024 * 1024));
    }
}
