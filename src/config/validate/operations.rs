//! Validation of how edgepin is run: health checks, the stats listener and its
//! credentials, sticky settings, trusted proxies, reload and `edgepin up`'s workers.

use super::*;

impl Validator<'_> {
    pub(super) fn health(&mut self, h: Option<&Spanned<file::HealthFile>>) -> Health {
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

    pub(super) fn stats(
        &mut self,
        s: Option<&Spanned<file::StatsFile>>,
        listen: &Listen,
        l: &Spanned<file::ListenFile>,
    ) -> Stats {
        let declared = s.and_then(|s| s.value.auth.as_ref());
        let auth = declared.and_then(|a| self.auth(a));
        let weak_password = declared
            .zip(auth.as_ref())
            .and_then(|(a, auth)| self.weak_password(a, auth));
        if let (Some(addr), None) = (listen.stats, declared)
            && !addr.ip().is_loopback()
        {
            let at = l.value.stats.as_ref().map(|s| s.referenced).unwrap_or(l.referenced);
            self.err(at, format!("listen.stats {addr} is not loopback: set stats.auth (user + password_env or password_file) or listen on 127.0.0.1"));
        }
        let refresh = s
            .map(|s| self.count(&s.value.refresh, "stats.refresh", (0, 3600), 5))
            .unwrap_or(5) as u32;
        let hosts = s
            .and_then(|s| s.value.hosts.as_ref())
            .map(|list| {
                list.value
                    .iter()
                    .filter_map(|h| self.check(h, |h| check_stats_host(h)))
                    .collect()
            })
            .unwrap_or_default();
        let history = s
            .and_then(|s| s.value.history.as_ref())
            .map(|h| self.history(h))
            .unwrap_or_default();
        Stats {
            auth,
            refresh,
            hosts,
            weak_password,
            history,
        }
    }

    /// `stats.history: { interval, span }`: at least 100ms apart, at most 1440 points.
    fn history(&mut self, h: &Spanned<file::HistoryFile>) -> StatsHistory {
        let default = StatsHistory::default();
        let interval = self.duration(&h.value.interval, default.interval);
        let span = self.duration(&h.value.span, default.interval * default.points as u32);
        let at = h.value.interval.as_ref().map_or(h.referenced, |i| i.referenced);
        if interval < StatsHistory::MIN_INTERVAL {
            self.err(at, format!("stats.history.interval {interval:?} is below 100ms"));
            return default;
        }
        let points = (span.as_millis() / interval.as_millis()) as usize;
        if !(2..=StatsHistory::MAX_POINTS).contains(&points) {
            let at = h.value.span.as_ref().map_or(h.referenced, |s| s.referenced);
            self.err(
                at,
                format!(
                    "stats.history: span / interval is {points} points; allowed 2..={}",
                    StatsHistory::MAX_POINTS
                ),
            );
            return default;
        }
        StatsHistory { interval, points }
    }

    /// A warning (not an error) at the password's source when the password is short.
    /// It names the source, never the password or its length.
    fn weak_password(&self, a: &Spanned<file::AuthFile>, auth: &StatsAuth) -> Option<ConfigError> {
        if auth.password.chars().count() >= MIN_STATS_PASSWORD_CHARS {
            return None;
        }
        let (at, source) = match (&a.value.password_env, &a.value.password_file) {
            (Some(env), _) => (env.referenced, format!("environment variable {}", env.value)),
            (None, Some(file)) => (file.referenced, format!("file {}", file.value)),
            (None, None) => (a.referenced, "its source".to_string()),
        };
        Some(ConfigError {
            file: self.file.clone(),
            pos: pos(at),
            message: format!(
                "stats.auth: the password from {source} is shorter than {MIN_STATS_PASSWORD_CHARS} characters; \
                 anyone who reaches the stats listener may guess it (use {MIN_STATS_PASSWORD_CHARS} or more)"
            ),
        })
    }

    pub(super) fn auth(&mut self, a: &Spanned<file::AuthFile>) -> Option<StatsAuth> {
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

    pub(super) fn secret_from_env(&mut self, name: &Str) -> Option<String> {
        let env = self.env;
        self.check(name, |n| match env(n) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(format!("environment variable {n} is not set (or empty)")),
        })
    }

    pub(super) fn sticky(&mut self, s: Option<&Spanned<file::StickyFile>>) -> Sticky {
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
        let handshake_rate = self.rate(sf.handshake_rate.as_ref(), "handshake_rate", Rate::DEFAULT_HANDSHAKES);
        let shared = sf.shared.as_ref().and_then(|s| self.shared_sids(s));
        Sticky {
            secret,
            same_site,
            sid_ttl,
            max_sids,
            handshake_rate,
            shared,
        }
    }

    /// A per-client rate: the default when absent, `None` when `per_second` is 0.
    pub(super) fn rate(&mut self, r: Option<&Spanned<file::RateFile>>, what: &str, default: Rate) -> Option<Rate> {
        let Some(r) = r else { return Some(default) };
        let per_second = self.count(
            &r.value.per_second,
            &format!("{what}.per_second"),
            (0, 1_000_000),
            default.per_second.into(),
        );
        let burst = self.count(
            &r.value.burst,
            &format!("{what}.burst"),
            (1, 1_000_000),
            default.burst.into(),
        );
        (per_second > 0).then_some(Rate {
            per_second: per_second as u32,
            burst: burst as u32,
        })
    }

    pub(super) fn trusted_proxies(&mut self, list: Option<&Spanned<Vec<Str>>>) -> Vec<Network> {
        let Some(list) = list else { return Vec::new() };
        list.value
            .iter()
            .filter_map(|net| self.check(net, |n| parse_network(n)))
            .collect()
    }

    pub(super) fn reload(&mut self, r: Option<&file::ReloadFile>) -> Reload {
        let d = file::ReloadFile::default();
        let r = r.unwrap_or(&d);
        Reload {
            drain_timeout: self.duration(&r.drain_timeout, Duration::from_secs(300)),
            pidfile: r.pidfile.as_ref().map(|p| self.base.join(&p.value)),
            hard_stop_after: self.duration(&r.hard_stop_after, Reload::HARD_STOP_AFTER),
            close_spread: self.duration(&r.close_spread, Reload::CLOSE_SPREAD),
        }
    }

    pub(super) fn workers(&mut self, w: Option<&Spanned<file::WorkersFile>>) -> Workers {
        let redis = match w.and_then(|w| w.value.redis.as_ref()) {
            None => RedisSource::Spawn,
            Some(r) => self
                .check(r, |r| match r {
                    file::RedisFile::One(r) if r == "spawn" => Ok(RedisSource::Spawn),
                    file::RedisFile::One(r) => {
                        redis_url(r, "`spawn` or a redis:// URL").map(|()| RedisSource::Url(r.clone()))
                    }
                    file::RedisFile::Cluster(c) if c.cluster.is_empty() => {
                        Err("workers.redis.cluster lists no seed node (redis://host:port)".to_string())
                    }
                    file::RedisFile::Cluster(c) => {
                        for url in &c.cluster {
                            redis_url(url, "a redis:// URL")?;
                        }
                        Ok(RedisSource::Cluster(c.cluster.clone()))
                    }
                })
                .unwrap_or(RedisSource::Spawn),
        };
        let port = w.and_then(|w| w.value.redis_port.as_ref());
        let redis_port = self.count(
            &port.cloned(),
            "workers.redis_port",
            (1, 65535),
            DEFAULT_REDIS_PORT.into(),
        ) as u16;
        if let (Some(p), RedisSource::Url(_) | RedisSource::Cluster(_)) = (port, &redis) {
            self.err(
                p.referenced,
                "workers.redis_port applies to `redis: spawn` only (the URL names its port)",
            );
        }
        Workers { redis, redis_port }
    }
}

/// A Redis URL the workers can use, or why not (`what` says what was expected).
fn redis_url(url: &str, what: &str) -> Result<(), String> {
    if url.starts_with("redis://") {
        Ok(())
    } else if url.starts_with("rediss://") {
        Err(
            "rediss:// (Redis over TLS) is not supported by the workers; use redis:// \
             on a private network or through a local TLS tunnel"
                .to_string(),
        )
    } else {
        Err(format!("workers.redis {url:?} must be {what}"))
    }
}
