//! Validation: turns the file types into a checked [`Config`], or a list of errors that
//! each name `file:line:col` and the offending value.
//!
//! All rules live in this module (the pipeline and its helpers) and its parts by area:
//! `listen` (listeners, timeouts, limits), `tls` (certificates, ACME, HSTS, run_as), `routing` (servers, backends, routes), `discover` (servers from DNS) and
//! `operations` (health, stats, sticky, trusted proxies, reload, workers), `shared` (the
//! sid table shared through Redis). Single values
//! are parsed by `config::values`. Validation collects every error it can find instead
//! of stopping at the first, so an operator fixes a file in one pass. It reads the files the config
//! names (certificate, key, password file) and the env vars it names, nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

mod discover;
mod listen;
#[cfg(test)]
mod mutated;
mod operations;
mod routing;
mod shared;
mod tls;

use super::file::{self, FileConfig, Str, TimeoutsFile};
use super::values::*;
use super::*;

type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(super) fn parse_and_validate(path: &Path, text: &str, env: EnvLookup<'_>) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        file: path.display().to_string(),
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        env,
        errors: Vec::new(),
    };
    let parsed: FileConfig = match serde_saphyr::from_str(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            let loc = e.location().unwrap_or(Location::UNKNOWN);
            let message = syntax_message(&e);
            v.err(loc, message);
            return Err(v.errors);
        }
    };
    let config = v.config(parsed);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        v.errors.sort_by_key(|e| (e.pos.line, e.pos.col));
        Err(v.errors)
    }
}

/// Only `reload.pidfile`, without validating the rest nor reading the env vars the file
/// names: how `edgepin upgrade` finds the running process, whose own environment (a
/// systemd unit's) holds secrets this shell may not have; the new process validates the
/// whole file in that environment. A YAML syntax error is still an error here.
pub(super) fn pidfile_only(path: &Path, text: &str) -> Result<Option<PathBuf>, Vec<ConfigError>> {
    #[derive(serde::Deserialize)]
    struct PidfileOnly {
        #[serde(default)]
        reload: Option<ReloadOnly>,
    }
    #[derive(serde::Deserialize)]
    struct ReloadOnly {
        #[serde(default)]
        pidfile: Option<String>,
    }
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    match serde_saphyr::from_str::<PidfileOnly>(text) {
        Ok(p) => Ok(p.reload.and_then(|r| r.pidfile).map(|f| base.join(f))),
        Err(e) => Err(vec![ConfigError {
            file: path.display().to_string(),
            pos: pos(e.location().unwrap_or(Location::UNKNOWN)),
            message: syntax_message(&e),
        }]),
    }
}

/// The parser's message without its own position suffix (we print `file:line:col:` first).
fn syntax_message(e: &serde_saphyr::Error) -> String {
    let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let text = e.without_snippet().render_with_options(options);
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    // The parser's hint about its own options is for developers, not operators.
    match first.find(", set DuplicateKeyPolicy") {
        Some(i) => format!("{} (names must be unique)", &first[..i]),
        None => first.to_string(),
    }
}

pub(super) struct Validator<'a> {
    file: String,
    /// Directory of the config file: relative paths in it are relative to it.
    base: PathBuf,
    env: EnvLookup<'a>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    pub(super) fn err(&mut self, loc: Location, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos: pos(loc),
            message: message.into(),
        });
    }

    /// Run a parse on a spanned value, recording the error at its position.
    pub(super) fn check<T, V>(&mut self, value: &Spanned<V>, f: impl FnOnce(&V) -> Result<T, String>) -> Option<T> {
        match f(&value.value) {
            Ok(t) => Some(t),
            Err(message) => {
                self.err(value.referenced, message);
                None
            }
        }
    }

    pub(super) fn duration(&mut self, value: &Option<Str>, default: Duration) -> Duration {
        value
            .as_ref()
            .and_then(|s| self.check(s, |s| parse_duration(s)))
            .unwrap_or(default)
    }

    pub(super) fn count(&mut self, value: &Option<Spanned<u64>>, what: &str, range: (u64, u64), default: u64) -> u64 {
        let Some(v) = value else { return default };
        let (lo, hi) = range;
        self.check(v, |n| {
            if (lo..=hi).contains(n) {
                Ok(*n)
            } else {
                Err(format!("{what} {n} is out of range (allowed {lo}..={hi})"))
            }
        })
        .unwrap_or(default)
    }

    pub(super) fn config(&mut self, f: FileConfig) -> Config {
        let timeouts = self.timeouts(f.timeouts.as_ref(), Timeouts::default());
        let servers = self.servers(f.servers.as_ref(), &f.backends);
        let backends = self.backends(&f.backends, &servers, &timeouts);
        let routes = self.routes(&f.routes, &backends);
        let acme_backend = f.acme.as_ref().and_then(|a| self.backend_ref(&a.backend, &backends));
        let listen = self.listen(&f.listen);
        let tls = self.tls(f.tls.as_ref(), &listen, &f.listen);
        if let Some(a) = &f.acme
            && tls.as_ref().is_some_and(|t| t.acme.is_some())
        {
            self.err(
                a.backend.referenced,
                "acme.backend and tls.acme both answer ACME challenges: keep one (tls.acme answers them itself)",
            );
        }
        let stats = self.stats(f.stats.as_ref(), &listen, &f.listen);
        let limits = self.limits(f.limits.as_ref());
        let health = self.health(f.health.as_ref());
        let trusted_proxies = self.trusted_proxies(f.trusted_proxies.as_ref());
        if let Some(pp) = f.listen.value.proxy_protocol.as_ref().filter(|p| p.value)
            && trusted_proxies.is_empty()
        {
            self.err(
                pp.referenced,
                "listen.proxy_protocol needs `trusted_proxies`: only those peers may send the header",
            );
        }
        let sticky = self.sticky(f.sticky.as_ref());
        let threads = self.count(&f.threads, "threads", (1, 256), default_threads() as u64) as usize;
        let reload = self.reload(f.reload.as_ref());
        let workers = self.workers(f.workers.as_ref());
        let run_as = f.run_as.as_ref().and_then(|r| self.run_as(r));
        Config {
            source: PathBuf::from(&self.file),
            listen,
            tls,
            timeouts,
            limits,
            access_log: f.access_log.map(|a| a.value).unwrap_or(true),
            threads,
            routes,
            acme_backend,
            backends,
            servers,
            health,
            stats,
            sticky,
            trusted_proxies,
            reload,
            workers,
            run_as,
        }
    }
}

/// Default bound for new hashed sessions: a server more than 5 % above its share is
/// skipped (HAProxy's `hash-balance-factor 105`). Sessions are pinned by sid and cookie,
/// so evenness matters more than address affinity: simulated over 50 seeds, 500 clients
/// from 20 addresses on 4 servers end at worst 1.25 max/min with 1.05, 1.59 with 1.10 and
/// 4.9 with 1.25.
pub const DEFAULT_HASH_BALANCE_FACTOR: f64 = 1.05;

/// Default slow-start window. On by default, unlike HAProxy's `slowstart`: with sticky
/// balancing's bounded loads, a server back from DOWN or MAINT is the least loaded one,
/// so without a ramp it takes *every* new session until it catches up — in a rolling
/// restart, the whole reconnect wave of the next worker lands on the one that just came
/// back, cold. socket.io-client reconnects after 0.5–1.5 s, then backs off to at most 5 s
/// (±50 %): 10 s covers a wave and its stragglers while costing a returning server little
/// (its first second at 5–15 % of its weight, half of it at 5 s). Servers present when
/// edgepin starts never ramp, and a ramp never refuses work: a server alone takes it all.
pub const DEFAULT_SLOW_START: Duration = Duration::from_secs(10);

/// Longest slow-start window accepted.
pub const MAX_SLOW_START: Duration = Duration::from_secs(3600);

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn pos(loc: Location) -> Pos {
    Pos {
        line: loc.line() as u32,
        col: loc.column() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        parse_and_validate(Path::new("t.yaml"), text, &lookup)
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    fn check(text: &str) -> Result<Config, Vec<String>> {
        check_with_env(text, &[])
    }

    /// The smallest valid config; also a seed of the mutation test (`mutated`).
    pub(super) const MINIMAL: &str = "\
listen: { http: 127.0.0.1:8080 }
routes:
  - { path_prefix: /, backend: api }
backends:
  api: { servers: [a, b] }
servers:
  a: { address: 127.0.0.1:3001 }
  b: { address: 127.0.0.1:3002, weight: 3 }
";

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.listen.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert!(!c.listen.redirect, "no https listener: http proxies");
        assert_eq!(c.backends[0].balance, Balance::RoundRobin);
        assert_eq!(c.backends[0].servers, vec![0, 1]);
        assert_eq!(c.servers[1].weight, 3);
        assert_eq!(c.timeouts, Timeouts::default());
        assert!(c.access_log);
    }

    #[test]
    fn undefined_backend_names_position_and_known_names() {
        let text = MINIMAL.replace("backend: api }", "backend: apx }");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs, vec!["t.yaml:3:32: backend \"apx\" is not defined (defined: api)"]);
    }

    #[test]
    fn undefined_server_is_reported_where_it_is_listed() {
        let text = MINIMAL.replace("[a, b]", "[a, c]");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("t.yaml:5:23: server \"c\" is not defined"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_key_is_a_syntax_error_with_position() {
        let text = MINIMAL.replace("weight: 3", "wieght: 3");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("t.yaml:8:"), "{errs:?}");
        assert!(errs[0].contains("wieght"), "{errs:?}");
    }

    #[test]
    fn every_error_is_collected() {
        let text = "\
listen: { http: nonsense }
timeouts: { connect: fast }
routes:
  - { path_prefix: api, backend: api }
backends:
  api: { servers: [] }
servers:
  a: { address: 127.0.0.1 }
";
        let errs = check(text).unwrap_err();
        let lines: Vec<&str> = errs.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            lines,
            vec![
                "t.yaml:1:17",
                "t.yaml:2:22",
                "t.yaml:4:20",
                "t.yaml:6:19",
                "t.yaml:8:17"
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn missing_catch_all_and_unreachable_routes_are_errors() {
        let text = MINIMAL.replace(
            "- { path_prefix: /, backend: api }",
            "- { path_prefix: /x, backend: api }",
        );
        let errs = check(&text).unwrap_err();
        assert!(errs[0].contains("catch-all"), "{errs:?}");

        let text = MINIMAL.replace(
            "- { path_prefix: /, backend: api }",
            "- { path_prefix: /, backend: api }\n  - { path_prefix: /x, backend: api }",
        );
        let errs = check(&text).unwrap_err();
        assert!(errs[0].starts_with("t.yaml:4:5: this route is never used"), "{errs:?}");
    }

    #[test]
    fn duplicate_server_names_are_rejected() {
        let text = MINIMAL.replace(
            "  b: { address: 127.0.0.1:3002, weight: 3 }",
            "  a: { address: 127.0.0.1:3002 }",
        );
        let errs = check(&text).unwrap_err();
        assert_eq!(
            errs,
            vec!["t.yaml:8:3: duplicate mapping key: a (names must be unique)"]
        );
    }

    #[test]
    fn health_rules() {
        let text = format!("{MINIMAL}health: {{ interval: 1s, timeout: 1s, rise: 0, fall: 0 }}\n");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("t.yaml:9:34: health timeout"), "{errs:?}");
        assert!(errs[1].starts_with("t.yaml:9:44: rise 0 is out of range"), "{errs:?}");
        assert!(errs[2].starts_with("t.yaml:9:53: fall 0 is out of range"), "{errs:?}");
    }

    #[test]
    fn stats_off_loopback_needs_auth_and_password_comes_from_env() {
        let text = MINIMAL.replace(
            "{ http: 127.0.0.1:8080 }",
            "{ http: 127.0.0.1:8080, stats: 0.0.0.0:8404 }",
        );
        let errs = check(&text).unwrap_err();
        assert!(
            errs[0].starts_with("t.yaml:1:40: listen.stats 0.0.0.0:8404 is not loopback"),
            "{errs:?}"
        );

        let with_auth = format!("{text}stats: {{ auth: {{ user: admin, password_env: PW }} }}\n");
        let errs = check(&with_auth).unwrap_err();
        assert!(errs[0].contains("environment variable PW is not set"), "{errs:?}");
        let c = check_with_env(&with_auth, &[("PW", "s3cret")]).unwrap();
        assert_eq!(c.stats.auth.unwrap().password, "s3cret");
    }

    #[test]
    fn a_short_stats_password_is_a_warning_at_its_source_that_never_shows_it() {
        let text = format!("{MINIMAL}stats: {{ auth: {{ user: admin, password_env: PW }} }}\n");
        let c = check_with_env(&text, &[("PW", "x")]).expect("short is valid");
        let w = c.stats.weak_password.expect("a warning").to_string();
        assert!(
            w.starts_with("t.yaml:9:45: stats.auth: the password from environment variable PW is shorter than 12"),
            "{w}"
        );
        let c = check_with_env(&text, &[("PW", "elevenchars")]).unwrap();
        assert!(!c.stats.weak_password.unwrap().message.contains("elevenchars"));
        let c = check_with_env(&text, &[("PW", "twelve-chars")]).unwrap();
        assert_eq!(c.stats.weak_password, None);
        assert_eq!(check(MINIMAL).unwrap().stats.weak_password, None, "no auth, no warning");
    }

    #[test]
    fn stats_hosts_are_names_or_addresses_without_port() {
        let text = format!("{MINIMAL}stats: {{ hosts: [Stats.Example.COM., 10.0.0.5, \"[FD00::1]\"] }}\n");
        assert_eq!(
            check(&text).unwrap().stats.hosts,
            ["stats.example.com", "10.0.0.5", "fd00::1"]
        );
        assert!(check(MINIMAL).unwrap().stats.hosts.is_empty());
        let text =
            format!("{MINIMAL}stats: {{ hosts: [ok.example, \"stats.example.com:8404\", http://x, \"*.example\"] }}\n");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("t.yaml:9:30: stats host \"stats.example.com:8404\" must be a DNS name"),
            "{errs:?}"
        );
    }

    #[test]
    fn cookie_needs_sticky_and_sticky_gets_a_default_cookie() {
        let text = MINIMAL.replace("{ servers: [a, b] }", "{ servers: [a, b], cookie: X }");
        assert!(check(&text).unwrap_err()[0].contains("needs `balance: sticky`"));
        let text = MINIMAL.replace("{ servers: [a, b] }", "{ balance: sticky, servers: [a, b] }");
        assert_eq!(check(&text).unwrap().backends[0].cookie.as_deref(), Some("EDGEPIN"));
    }

    #[test]
    fn bounded_loads_default_on_for_sticky_and_off_for_source() {
        let sticky = MINIMAL.replace("{ servers: [a, b] }", "{ balance: sticky, servers: [a, b] }");
        assert_eq!(check(&sticky).unwrap().backends[0].hash_balance_factor, 1.05);
        let source = MINIMAL.replace("{ servers: [a, b] }", "{ balance: source, servers: [a, b] }");
        assert!(check(&source).unwrap().backends[0].hash_balance_factor.is_infinite());
        let set = MINIMAL.replace(
            "{ servers: [a, b] }",
            "{ balance: source, servers: [a, b], hash_balance_factor: 1.5 }",
        );
        assert_eq!(check(&set).unwrap().backends[0].hash_balance_factor, 1.5);
    }

    #[test]
    fn slow_start_is_on_by_default_per_backend_and_a_server_may_set_its_own() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.backends[0].slow_start, DEFAULT_SLOW_START);
        assert!(c.servers.iter().all(|s| s.slow_start.is_none()));
        assert_eq!(c.slow_start_in(&c.backends[0], 0), DEFAULT_SLOW_START);
        // Two backends: a server has its own window, else each backend's; its ramp lasts
        // the longest of them.
        let text = MINIMAL
            .replace(
                "  api: { servers: [a, b] }\n",
                "  api: { servers: [a, b], slow_start: 1m }\n  ws: { servers: [b, c], slow_start: off }\n",
            )
            .replace(
                "  b: { address: 127.0.0.1:3002, weight: 3 }\n",
                "  b: { address: 127.0.0.1:3002, weight: 3 }\n  c: { address: 127.0.0.1:3003, slow_start: 5s }\n",
            );
        let c = check(&text).unwrap();
        let (api, ws) = (&c.backends[0], &c.backends[1]);
        assert_eq!(ws.slow_start, Duration::ZERO);
        let b_in = (c.slow_start_in(api, 1).as_secs(), c.slow_start_in(ws, 1).as_secs());
        assert_eq!(b_in, (60, 0), "b ramps in api, not in ws");
        assert_eq!(c.slow_start_in(ws, 2).as_secs(), 5, "c's own");
        let longest: Vec<u64> = (0..3).map(|i| c.slow_start_of(i).as_secs()).collect();
        assert_eq!(longest, [60, 60, 5]);
        let zero = MINIMAL.replace(
            "  a: { address: 127.0.0.1:3001 }",
            "  a: { address: 127.0.0.1:3001, slow_start: 0s }",
        );
        assert_eq!(check(&zero).unwrap().servers[0].slow_start, Some(Duration::ZERO));
        let bad = MINIMAL.replace("{ servers: [a, b] }", "{ servers: [a, b], slow_start: 2h }");
        assert_eq!(
            check(&bad).unwrap_err(),
            vec!["t.yaml:5:39: slow_start \"2h\" is longer than 1h"]
        );
        let bad = MINIMAL.replace("{ servers: [a, b] }", "{ servers: [a, b], slow_start: soon }");
        assert!(check(&bad).unwrap_err()[0].starts_with("t.yaml:5:39: invalid duration \"soon\""));
    }

    #[test]
    fn new_sessions_is_off_by_default_and_needs_a_rate() {
        assert_eq!(check(MINIMAL).unwrap().backends[0].new_sessions, None);
        let set = MINIMAL.replace(
            "{ servers: [a, b] }",
            "{ servers: [a, b], new_sessions: { per_second: 50 } }",
        );
        assert_eq!(
            check(&set).unwrap().backends[0].new_sessions,
            Some(Rate {
                per_second: 50,
                burst: 50
            }),
            "a second's worth at once unless said"
        );
        let set = MINIMAL.replace(
            "{ servers: [a, b] }",
            "{ servers: [a, b], new_sessions: { per_second: 50, burst: 500 } }",
        );
        assert_eq!(
            check(&set).unwrap().backends[0].new_sessions.map(|r| r.burst),
            Some(500)
        );
        let off = MINIMAL.replace(
            "{ servers: [a, b] }",
            "{ servers: [a, b], new_sessions: { per_second: 0 } }",
        );
        assert_eq!(check(&off).unwrap().backends[0].new_sessions, None);
        let bad = MINIMAL.replace("{ servers: [a, b] }", "{ servers: [a, b], new_sessions: { burst: 5 } }");
        assert_eq!(
            check(&bad).unwrap_err(),
            vec!["t.yaml:5:41: new_sessions needs per_second (and optionally burst)"]
        );
    }

    #[test]
    fn handshake_rate_is_on_by_default_configurable_and_off_at_zero() {
        assert_eq!(
            check(MINIMAL).unwrap().sticky.handshake_rate,
            Some(Rate::DEFAULT_HANDSHAKES)
        );
        let set = format!("{MINIMAL}sticky: {{ handshake_rate: {{ per_second: 5, burst: 50 }} }}\n");
        assert_eq!(
            check(&set).unwrap().sticky.handshake_rate,
            Some(Rate {
                per_second: 5,
                burst: 50
            })
        );
        let off = format!("{MINIMAL}sticky: {{ handshake_rate: {{ per_second: 0 }} }}\n");
        assert_eq!(check(&off).unwrap().sticky.handshake_rate, None);
        let bad = format!("{MINIMAL}sticky: {{ handshake_rate: {{ burst: 0 }} }}\n");
        assert_eq!(
            check(&bad).unwrap_err(),
            vec!["t.yaml:9:36: handshake_rate.burst 0 is out of range (allowed 1..=1000000)"]
        );
    }

    #[test]
    fn client_side_timeouts_are_global_only() {
        let text = MINIMAL.replace("{ servers: [a, b] }", "{ servers: [a, b], timeouts: { header: 5s } }");
        let errs = check(&text).unwrap_err();
        assert!(errs[0].contains("timeouts.header applies before routing"), "{errs:?}");
    }

    #[test]
    fn backend_timeouts_override_globals() {
        let text = MINIMAL
            .replace("{ servers: [a, b] }", "{ servers: [a, b], timeouts: { server: 60s } }")
            .replace("routes:", "timeouts: { connect: 1s }\nroutes:");
        let c = check(&text).unwrap();
        assert_eq!(c.backends[0].timeouts.server, Duration::from_secs(60));
        assert_eq!(c.backends[0].timeouts.connect, Duration::from_secs(1));
        assert_eq!(c.timeouts.server, Duration::from_secs(30));
    }

    #[test]
    fn https_needs_tls_files_that_exist() {
        let text = MINIMAL.replace("{ http: 127.0.0.1:8080 }", "{ https: 127.0.0.1:8443 }");
        assert!(check(&text).unwrap_err()[0].contains("needs a `tls` section"));
        let text = format!("{text}tls: {{ cert: /nonexistent.crt, key: /nonexistent.key }}\n");
        let errs = check(&text).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("cannot read /nonexistent.crt"), "{errs:?}");
    }

    #[test]
    fn workers_redis_is_spawned_on_its_own_port_or_a_url() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.workers.redis, RedisSource::Spawn);
        assert_eq!(c.workers.redis_port, DEFAULT_REDIS_PORT);
        let c = check(&format!("{MINIMAL}workers: {{ redis: spawn, redis_port: 7000 }}\n")).unwrap();
        assert_eq!(c.workers.redis_port, 7000);
        let c = check(&format!("{MINIMAL}workers: {{ redis: \"redis://10.0.0.2:6379\" }}\n")).unwrap();
        assert_eq!(c.workers.redis, RedisSource::Url("redis://10.0.0.2:6379".into()));
        let errs = check(&format!("{MINIMAL}workers: {{ redis: spawn, redis_port: 70000 }}\n")).unwrap_err();
        assert_eq!(
            errs,
            vec!["t.yaml:9:38: workers.redis_port 70000 is out of range (allowed 1..=65535)"]
        );
        let errs = check(&format!(
            "{MINIMAL}workers: {{ redis: \"redis://h:1\", redis_port: 7000 }}\n"
        ))
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("t.yaml:9:"), "{errs:?}");
        assert!(check(&format!("{MINIMAL}workers: {{ redis: memcached }}\n")).is_err());
        let c = check(&format!(
            "{MINIMAL}workers: {{ redis: {{ cluster: [\"redis://10.0.0.2:7000\", \"redis://10.0.0.3:7000\"] }} }}\n"
        ))
        .unwrap();
        assert_eq!(
            c.workers.redis,
            RedisSource::Cluster(vec!["redis://10.0.0.2:7000".into(), "redis://10.0.0.3:7000".into()])
        );
        for bad in [
            "{ cluster: [] }",
            "{ cluster: [\"http://h:1\"] }",
            "{ cluster: [\"rediss://h:1\"] }",
            "{ clusters: [\"redis://h:1\"] }",
        ] {
            let errs = check(&format!("{MINIMAL}workers: {{ redis: {bad} }}\n")).unwrap_err();
            assert!(errs[0].starts_with("t.yaml:9:"), "{bad}: {errs:?}");
        }
        let errs = check(&format!(
            "{MINIMAL}workers: {{ redis: {{ cluster: [\"redis://h:1\"] }}, redis_port: 7000 }}\n"
        ))
        .unwrap_err();
        assert!(
            errs[0].contains("redis_port applies to `redis: spawn` only"),
            "{errs:?}"
        );
        let tls = check(&format!("{MINIMAL}workers: {{ redis: \"rediss://h:6380\" }}\n")).unwrap_err();
        assert!(
            tls.iter()
                .any(|e| e.contains("rediss:// (Redis over TLS) is not supported")),
            "{tls:?}"
        );
    }
    #[test]
    fn stats_history_is_an_interval_and_a_span_of_at_most_1440_points() {
        let c = check(MINIMAL).unwrap();
        assert_eq!(c.stats.history, StatsHistory::default());
        assert_eq!(
            (c.stats.history.interval, c.stats.history.points),
            (Duration::from_secs(5), 180)
        );
        let c = check(&format!(
            "{MINIMAL}stats: {{ history: {{ interval: 250ms, span: 1m }} }}\n"
        ))
        .unwrap();
        assert_eq!(c.stats.history.points, 240);
        assert_eq!(c.stats.history.interval, Duration::from_millis(250));
        let errs = check(&format!("{MINIMAL}stats: {{ history: {{ interval: 10ms }} }}\n")).unwrap_err();
        assert_eq!(errs, ["t.yaml:9:31: stats.history.interval 10ms is below 100ms"]);
        let errs = check(&format!(
            "{MINIMAL}stats: {{ history: {{ interval: 1s, span: 1d }} }}\n"
        ))
        .unwrap_err();
        assert_eq!(
            errs,
            ["t.yaml:9:41: stats.history: span / interval is 86400 points; allowed 2..=1440"]
        );
    }
}
