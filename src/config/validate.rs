//! Validation: turns the file types into a checked [`Config`], or a list of errors that
//! each name `file:line:col` and the offending value.
//!
//! All rules live here. Validation collects every error it can find instead of stopping
//! at the first, so an operator fixes a file in one pass. It reads the files the config
//! names (certificate, key, password file) and the env vars it names, nothing else.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::file::{self, FileConfig, Str, TimeoutsFile};
use super::*;

/// Parse a duration such as `2s`, `500ms`, `1m30s` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500ms, 2s, 1m, 1h"))?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

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

struct Validator<'a> {
    file: String,
    /// Directory of the config file: relative paths in it are relative to it.
    base: PathBuf,
    env: EnvLookup<'a>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, loc: Location, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos: pos(loc),
            message: message.into(),
        });
    }

    /// Run a parse on a spanned value, recording the error at its position.
    fn check<T, V>(&mut self, value: &Spanned<V>, f: impl FnOnce(&V) -> Result<T, String>) -> Option<T> {
        match f(&value.value) {
            Ok(t) => Some(t),
            Err(message) => {
                self.err(value.referenced, message);
                None
            }
        }
    }

    fn duration(&mut self, value: &Option<Str>, default: Duration) -> Duration {
        value
            .as_ref()
            .and_then(|s| self.check(s, |s| parse_duration(s)))
            .unwrap_or(default)
    }

    fn count(&mut self, value: &Option<Spanned<u64>>, what: &str, range: (u64, u64), default: u64) -> u64 {
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

    fn config(&mut self, f: FileConfig) -> Config {
        let timeouts = self.timeouts(f.timeouts.as_ref(), Timeouts::default());
        let servers = self.servers(&f.servers);
        let backends = self.backends(&f.backends, &servers, &timeouts);
        let routes = self.routes(&f.routes, &backends);
        let acme_backend = f.acme.as_ref().and_then(|a| self.backend_ref(&a.backend, &backends));
        let listen = self.listen(&f.listen);
        let tls = self.tls(f.tls.as_ref(), &listen, &f.listen);
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
        }
    }

    fn listen(&mut self, l: &Spanned<file::ListenFile>) -> Listen {
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        let mut addr = |v: &mut Self, value: &Option<Str>, what: &'static str| {
            let s = value.as_ref()?;
            let a = v.check(s, |s| parse_listen_addr(s))?;
            if let Some((_, other)) = seen.iter().find(|(o, _)| *o == a) {
                v.err(
                    s.referenced,
                    format!("listen.{what} {a} is already used by listen.{other}"),
                );
            }
            seen.push((a, what));
            Some(a)
        };
        let https = addr(self, &l.value.https, "https");
        let http = addr(self, &l.value.http, "http");
        let stats = addr(self, &l.value.stats, "stats");
        if l.value.https.is_none() && l.value.http.is_none() {
            self.err(l.referenced, "listen needs at least one of `https` or `http`");
        }
        let redirect = match &l.value.redirect {
            Some(r) if r.value && l.value.https.is_none() => {
                self.err(
                    r.referenced,
                    "listen.redirect: true needs an `https` listener to redirect to",
                );
                false
            }
            Some(r) => r.value,
            None => l.value.https.is_some(),
        };
        let redirect_port = match &l.value.redirect_port {
            Some(p) if p.value == 0 => {
                self.err(p.referenced, "listen.redirect_port must not be 0");
                443
            }
            Some(p) => p.value,
            None => https.map(|a| a.port()).unwrap_or(443),
        };
        Listen {
            https,
            http,
            stats,
            redirect,
            redirect_port,
            proxy_protocol: l.value.proxy_protocol.as_ref().is_some_and(|p| p.value),
        }
    }

    fn tls(
        &mut self,
        t: Option<&Spanned<file::TlsFile>>,
        listen: &Listen,
        l: &Spanned<file::ListenFile>,
    ) -> Option<TlsFiles> {
        let Some(t) = t else {
            if let Some(https) = &l.value.https {
                self.err(
                    https.referenced,
                    "listen.https needs a `tls` section with `cert` and `key`",
                );
            }
            return None;
        };
        if listen.https.is_none() && l.value.https.is_none() {
            self.err(
                t.referenced,
                "`tls` is set but there is no `listen.https` listener to use it",
            );
        }
        let cert = self.pem_file(&t.value.cert, PemKind::Certificate);
        let key = self.pem_file(&t.value.key, PemKind::PrivateKey);
        let watch = t
            .value
            .watch
            .as_ref()
            .and_then(|w| self.check(w, |s| parse_duration(s)));
        Some(TlsFiles {
            cert: cert.unwrap_or_default(),
            key: key.unwrap_or_default(),
            h2: t.value.h2.as_ref().map(|h| h.value).unwrap_or(false),
            watch,
            pos: pos(t.referenced),
        })
    }

    fn pem_file(&mut self, value: &Str, kind: PemKind) -> Option<PathBuf> {
        let path = self.base.join(&value.value);
        self.check(value, |_| check_pem(&path, kind)).map(|()| path)
    }

    fn timeouts(&mut self, t: Option<&TimeoutsFile>, base: Timeouts) -> Timeouts {
        let Some(t) = t else { return base };
        Timeouts {
            connect: self.duration(&t.connect, base.connect),
            client: self.duration(&t.client, base.client),
            server: self.duration(&t.server, base.server),
            tunnel: self.duration(&t.tunnel, base.tunnel),
            keepalive: self.duration(&t.keepalive, base.keepalive),
            queue: self.duration(&t.queue, base.queue),
            header: self.duration(&t.header, base.header),
        }
    }

    /// A backend may override the timeouts of its server side; the client side ones
    /// apply before a request is routed, so they are global only.
    fn backend_timeouts(&mut self, backend: &str, t: Option<&TimeoutsFile>, base: &Timeouts) -> Timeouts {
        if let Some(t) = t {
            for (key, value) in [
                ("client", &t.client),
                ("keepalive", &t.keepalive),
                ("header", &t.header),
            ] {
                if let Some(v) = value {
                    self.err(
                        v.referenced,
                        format!("timeouts.{key} applies before routing: set it in the top-level timeouts, not in backend {backend:?}"),
                    );
                }
            }
        }
        self.timeouts(t, *base)
    }

    fn limits(&mut self, l: Option<&file::LimitsFile>) -> Limits {
        let d = Limits::default();
        let Some(l) = l else { return d };
        Limits {
            max_header_bytes: self.count(
                &l.max_header_bytes,
                "limits.max_header_bytes",
                (1024, 1 << 20),
                d.max_header_bytes as u64,
            ) as usize,
            max_body_bytes: self.count(
                &l.max_body_bytes,
                "limits.max_body_bytes",
                (0, u64::MAX),
                d.max_body_bytes,
            ),
            max_connections: self.count(
                &l.max_connections,
                "limits.max_connections",
                (1, 1_000_000),
                d.max_connections as u64,
            ) as usize,
        }
    }

    fn servers(&mut self, s: &Spanned<indexmap::IndexMap<String, Spanned<file::ServerFile>>>) -> Vec<Server> {
        if s.value.is_empty() {
            self.err(s.referenced, "`servers` is empty: define at least one server");
        }
        let mut out = Vec::new();
        for (name, server) in &s.value {
            self.name(name, server.referenced, "server");
            let address = self.check(&server.value.address, |a| resolve_server_addr(a));
            let weight = self.count(&server.value.weight, "weight", (0, 256), 1) as u32;
            let max_connections = server
                .value
                .max_connections
                .as_ref()
                .map(|m| self.count(&Some(m.clone()), "max_connections", (1, 1_000_000), 1) as u32);
            out.push(Server {
                name: name.clone(),
                address_text: server.value.address.value.clone(),
                address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                weight,
                max_connections,
            });
        }
        out
    }

    fn name(&mut self, name: &str, loc: Location, what: &str) {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            self.err(
                loc,
                format!("{what} name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ ."),
            );
        }
    }

    fn backends(
        &mut self,
        b: &Spanned<indexmap::IndexMap<String, Spanned<file::BackendFile>>>,
        servers: &[Server],
        timeouts: &Timeouts,
    ) -> Vec<Backend> {
        if b.value.is_empty() {
            self.err(b.referenced, "`backends` is empty: define at least one backend");
        }
        let mut out = Vec::new();
        for (name, backend) in &b.value {
            let bf = &backend.value;
            self.name(name, backend.referenced, "backend");
            let balance = match &bf.balance {
                None => Balance::RoundRobin,
                Some(s) => self
                    .check(s, |s| match s.as_str() {
                        "round_robin" | "roundrobin" => Ok(Balance::RoundRobin),
                        "least_conn" | "leastconn" => Ok(Balance::LeastConn),
                        "sticky" => Ok(Balance::Sticky),
                        "source" => Ok(Balance::Source),
                        other => Err(format!(
                            "unknown balance {other:?} (known: round_robin, least_conn, sticky, source)"
                        )),
                    })
                    .unwrap_or(Balance::RoundRobin),
            };
            let members = self.backend_servers(name, &bf.servers, servers);
            let cookie = match (&bf.cookie, balance) {
                (Some(c), Balance::Sticky) => self.check(c, |c| check_cookie_name(c)),
                (Some(c), _) => {
                    self.err(
                        c.referenced,
                        format!(
                            "`cookie` needs `balance: sticky` (backend {name:?} is {})",
                            balance.as_str()
                        ),
                    );
                    None
                }
                (None, Balance::Sticky) => Some("EDGEPIN".to_string()),
                (None, _) => None,
            };
            // Bounded loads protect long-lived sticky sessions from piling up behind a NAT;
            // `source` hashes each request, where users expect a fixed mapping (HAProxy's
            // hash-balance-factor is off by default too).
            let default_factor = match balance {
                Balance::Sticky => DEFAULT_HASH_BALANCE_FACTOR,
                _ => f64::INFINITY,
            };
            let hash_balance_factor = match &bf.hash_balance_factor {
                None => default_factor,
                Some(f) => self
                    .check(f, |f| {
                        if *f >= 1.0 && *f <= 100.0 {
                            Ok(*f)
                        } else {
                            Err(format!("hash_balance_factor {f} must be between 1.0 and 100.0"))
                        }
                    })
                    .unwrap_or(default_factor),
            };
            let max_queue = self.count(&bf.max_queue, "max_queue", (0, 1_000_000), 1024) as u32;
            let retries = self.count(&bf.retries, "retries", (0, 10), 3) as u32;
            out.push(Backend {
                name: name.clone(),
                balance,
                servers: members,
                cookie,
                timeouts: self.backend_timeouts(name, bf.timeouts.as_ref(), timeouts),
                hash_balance_factor,
                retries,
                max_queue,
            });
        }
        out
    }

    fn backend_servers(&mut self, backend: &str, list: &Spanned<Vec<Str>>, servers: &[Server]) -> Vec<usize> {
        if list.value.is_empty() {
            self.err(list.referenced, format!("backend {backend:?} has no servers"));
        }
        let mut members = Vec::new();
        for s in &list.value {
            match servers.iter().position(|x| x.name == s.value) {
                Some(i) if members.contains(&i) => self.err(
                    s.referenced,
                    format!("server {:?} is listed twice in backend {backend:?}", s.value),
                ),
                Some(i) => members.push(i),
                None => {
                    let known: Vec<&str> = servers.iter().map(|x| x.name.as_str()).collect();
                    self.err(
                        s.referenced,
                        format!("server {:?} is not defined (defined: {})", s.value, known.join(", ")),
                    );
                }
            }
        }
        if !members.is_empty() && members.iter().all(|&i| servers[i].weight == 0) {
            self.err(
                list.referenced,
                format!("backend {backend:?}: every server has weight 0, so it can serve nothing"),
            );
        }
        members
    }

    fn backend_ref(&mut self, name: &Str, backends: &[Backend]) -> Option<usize> {
        let found = backends.iter().position(|b| b.name == name.value);
        if found.is_none() {
            let known: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
            self.err(
                name.referenced,
                format!(
                    "backend {:?} is not defined (defined: {})",
                    name.value,
                    known.join(", ")
                ),
            );
        }
        found
    }

    fn routes(&mut self, r: &Spanned<Vec<Spanned<file::RouteFile>>>, backends: &[Backend]) -> Vec<Route> {
        let mut out = Vec::new();
        let mut catch_all_seen = false;
        for route in &r.value {
            let rf = &route.value;
            if catch_all_seen {
                self.err(
                    route.referenced,
                    "this route is never used: an earlier route (path_prefix \"/\" without host) matches every request",
                );
            }
            let host = rf.host.as_ref().and_then(|h| self.check(h, |h| check_host(h)));
            let path_prefix = match &rf.path_prefix {
                None => "/".to_string(),
                Some(p) => self
                    .check(p, |p| {
                        if p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_whitespace() || b == b'?' || b == b'#') {
                            Ok(p.clone())
                        } else {
                            Err(format!(
                                "path_prefix {p:?} must start with / and hold no spaces, ? or #"
                            ))
                        }
                    })
                    .unwrap_or_else(|| "/".into()),
            };
            if rf.host.is_none() && path_prefix == "/" {
                catch_all_seen = true;
            }
            let backend = self.backend_ref(&rf.backend, backends);
            out.push(Route {
                host,
                path_prefix,
                backend: backend.unwrap_or(0),
                websocket: rf.websocket.as_ref().map(|w| w.value).unwrap_or(true),
            });
        }
        if !catch_all_seen {
            self.err(
                r.referenced,
                "routes need a catch-all: add `- { path_prefix: /, backend: NAME }` as the last route",
            );
        }
        out
    }

    fn health(&mut self, h: Option<&Spanned<file::HealthFile>>) -> Health {
        let d = Health::default();
        let Some(h) = h else { return d };
        let hf = &h.value;
        let mode = match &hf.mode {
            None => CheckMode::Http,
            Some(m) => self
                .check(m, |m| match m.as_str() {
                    "http" => Ok(CheckMode::Http),
                    "tcp" => Ok(CheckMode::Tcp),
                    other => Err(format!("unknown health mode {other:?} (known: http, tcp)")),
                })
                .unwrap_or(CheckMode::Http),
        };
        let path = match &hf.path {
            None => d.path.clone(),
            Some(p) => self
                .check(p, |p| {
                    if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) {
                        Ok(p.clone())
                    } else {
                        Err(format!("health path {p:?} must start with / and hold no spaces"))
                    }
                })
                .unwrap_or(d.path.clone()),
        };
        let interval = self.duration(&hf.interval, d.interval);
        let timeout = self.duration(&hf.timeout, d.timeout);
        if timeout >= interval {
            let at = hf.timeout.as_ref().map(|t| t.referenced).unwrap_or(h.referenced);
            self.err(
                at,
                format!("health timeout ({timeout:?}) must be shorter than the interval ({interval:?})"),
            );
        }
        let rise = self.count(&hf.rise, "rise", (1, 100), u64::from(d.rise)) as u32;
        let fall = self.count(&hf.fall, "fall", (1, 100), u64::from(d.fall)) as u32;
        let passive_fall = self.count(&hf.passive_fall, "passive_fall", (0, 1000), u64::from(d.passive_fall)) as u32;
        let expect = match &hf.expect {
            None => d.expect,
            Some(e) => self.check(e, |e| parse_status_range(e)).unwrap_or(d.expect),
        };
        Health {
            mode,
            path,
            interval,
            timeout,
            rise,
            fall,
            expect,
            passive_fall,
        }
    }

    fn stats(&mut self, s: Option<&Spanned<file::StatsFile>>, listen: &Listen, l: &Spanned<file::ListenFile>) -> Stats {
        let declared = s.and_then(|s| s.value.auth.as_ref());
        let auth = declared.and_then(|a| self.auth(a));
        if let (Some(addr), None) = (listen.stats, declared)
            && !addr.ip().is_loopback()
        {
            let at = l.value.stats.as_ref().map(|s| s.referenced).unwrap_or(l.referenced);
            self.err(at, format!("listen.stats {addr} is not loopback: set stats.auth (user + password_env or password_file) or listen on 127.0.0.1"));
        }
        let refresh = s
            .map(|s| self.count(&s.value.refresh, "stats.refresh", (0, 3600), 5))
            .unwrap_or(5) as u32;
        Stats { auth, refresh }
    }

    fn auth(&mut self, a: &Spanned<file::AuthFile>) -> Option<StatsAuth> {
        let af = &a.value;
        let user = self.check(&af.user, |u| {
            if !u.is_empty() && !u.contains(':') && u.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(u.clone())
            } else {
                Err(format!("stats user {u:?} must be non-empty, printable, without ':'"))
            }
        });
        let password = match (&af.password_env, &af.password_file) {
            (Some(env), None) => self.secret_from_env(env),
            (None, Some(file)) => {
                let path = self.base.join(&file.value);
                self.check(file, |_| read_secret_file(&path))
            }
            _ => {
                self.err(a.referenced, "stats.auth needs exactly one of `password_env` or `password_file` (passwords never go in the YAML)");
                None
            }
        };
        Some(StatsAuth {
            user: user?,
            password: password?,
        })
    }

    fn secret_from_env(&mut self, name: &Str) -> Option<String> {
        let env = self.env;
        self.check(name, |n| match env(n) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(format!("environment variable {n} is not set (or empty)")),
        })
    }

    fn sticky(&mut self, s: Option<&Spanned<file::StickyFile>>) -> Sticky {
        let d = file::StickyFile::default();
        let sf = s.map(|s| &s.value).unwrap_or(&d);
        let secret = sf
            .secret_env
            .as_ref()
            .and_then(|n| self.secret_from_env(n))
            .map(String::into_bytes);
        let same_site = match &sf.same_site {
            None => SameSite::Lax,
            Some(v) => self
                .check(v, |v| match v.to_ascii_lowercase().as_str() {
                    "lax" => Ok(SameSite::Lax),
                    "strict" => Ok(SameSite::Strict),
                    "none" => Ok(SameSite::None),
                    _ => Err(format!("same_site {v:?} must be Lax, Strict or None")),
                })
                .unwrap_or(SameSite::Lax),
        };
        let sid_ttl = self.duration(&sf.sid_ttl, Duration::from_secs(120));
        let max_sids = self.count(&sf.max_sids, "max_sids", (16, 10_000_000), 100_000) as usize;
        Sticky {
            secret,
            same_site,
            sid_ttl,
            max_sids,
        }
    }

    fn trusted_proxies(&mut self, list: Option<&Spanned<Vec<Str>>>) -> Vec<Network> {
        let Some(list) = list else { return Vec::new() };
        list.value
            .iter()
            .filter_map(|net| self.check(net, |n| parse_network(n)))
            .collect()
    }

    fn reload(&mut self, r: Option<&file::ReloadFile>) -> Reload {
        let d = file::ReloadFile::default();
        let r = r.unwrap_or(&d);
        Reload {
            drain_timeout: self.duration(&r.drain_timeout, Duration::from_secs(300)),
            pidfile: r.pidfile.as_ref().map(|p| self.base.join(&p.value)),
        }
    }

    fn workers(&mut self, w: Option<&Spanned<file::WorkersFile>>) -> Workers {
        let redis = match w.and_then(|w| w.value.redis.as_ref()) {
            None => RedisSource::Spawn,
            Some(r) => self
                .check(r, |r| {
                    if r == "spawn" {
                        Ok(RedisSource::Spawn)
                    } else if r.starts_with("redis://") || r.starts_with("rediss://") {
                        Ok(RedisSource::Url(r.clone()))
                    } else {
                        Err(format!("workers.redis {r:?} must be `spawn` or a redis:// URL"))
                    }
                })
                .unwrap_or(RedisSource::Spawn),
        };
        let port = w.and_then(|w| w.value.redis_port.as_ref());
        let redis_port = match port {
            Some(p) => self.check(p, |n| {
                u16::try_from(*n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("workers.redis_port {n} is out of range (allowed 1..=65535)"))
            }),
            None => None,
        }
        .unwrap_or(DEFAULT_REDIS_PORT);
        if let (Some(p), RedisSource::Url(_)) = (port, &redis) {
            self.err(
                p.referenced,
                "workers.redis_port applies to `redis: spawn` only (the URL names its port)",
            );
        }
        Workers { redis, redis_port }
    }
}

/// Default bound for new hashed sessions: a server more than 5 % above its share is
/// skipped (HAProxy's `hash-balance-factor 105`). Sessions are pinned by sid and cookie,
/// so evenness matters more than address affinity: simulated over 50 seeds, 500 clients
/// from 20 addresses on 4 servers end at worst 1.25 max/min with 1.05, 1.59 with 1.10 and
/// 4.9 with 1.25.
pub const DEFAULT_HASH_BALANCE_FACTOR: f64 = 1.05;

fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn pos(loc: Location) -> Pos {
    Pos {
        line: loc.line() as u32,
        col: loc.column() as u32,
    }
}

fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("listen address {s:?} must be IP:PORT, e.g. 0.0.0.0:443 or [::]:443"))
}

/// Server addresses may name a host; it is resolved once, when the config is loaded.
fn resolve_server_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return check_port(a, s);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("server address {s:?} must be HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("server address {s:?} must be HOST:PORT"));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("server address {s:?} does not resolve: {e}"))?;
    let first = addrs
        .next()
        .ok_or_else(|| format!("server address {s:?} resolves to nothing"))?;
    check_port(first, s)
}

fn check_port(a: SocketAddr, s: &str) -> Result<SocketAddr, String> {
    if a.port() == 0 {
        Err(format!("server address {s:?} needs a port other than 0"))
    } else {
        Ok(a)
    }
}

fn check_host(h: &str) -> Result<String, String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'));
    if ok {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(format!("host {h:?} must be a DNS name without port or scheme"))
    }
}

/// RFC 6265 cookie-name: an HTTP token.
fn check_cookie_name(c: &str) -> Result<String, String> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(c.to_string())
    } else {
        Err(format!(
            "cookie name {c:?} must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)"
        ))
    }
}

fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expect {s:?} must be a status or a range like 200-399");
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if (100..=599).contains(&lo) && (lo..=599).contains(&hi) {
        Ok((lo, hi))
    } else {
        Err(bad())
    }
}

fn parse_network(s: &str) -> Result<Network, String> {
    let bad = || format!("network {s:?} must be an IP or CIDR, e.g. 10.0.0.0/8");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok(Network { addr, prefix })
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

fn check_pem(path: &Path, kind: PemKind) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut reader = &bytes[..];
    let found = match kind {
        PemKind::Certificate => rustls_pemfile::certs(&mut reader).any(|c| c.is_ok()),
        PemKind::PrivateKey => matches!(rustls_pemfile::private_key(&mut reader), Ok(Some(_))),
    };
    if found {
        Ok(())
    } else {
        let what = match kind {
            PemKind::Certificate => "a PEM certificate",
            PemKind::PrivateKey => "a PEM private key",
        };
        Err(format!("{} holds no {what}", path.display()))
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(secret.to_string())
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

    const MINIMAL: &str = "\
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
    fn networks_contain_addresses() {
        let n = parse_network("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(parse_network("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(parse_network("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(parse_network("10.0.0.0/33").is_err());
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
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
