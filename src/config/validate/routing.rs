//! Validation of where requests go: servers, backends and routes, and every reference
//! between them.

use super::*;

impl Validator<'_> {
    pub(super) fn servers(
        &mut self,
        s: Option<&Spanned<indexmap::IndexMap<String, Spanned<file::ServerFile>>>>,
        backends: &Spanned<indexmap::IndexMap<String, Spanned<file::BackendFile>>>,
    ) -> Vec<Server> {
        let all_discover = backends.value.values().all(|b| b.value.discover.is_some());
        let Some(s) = s else {
            if !all_discover {
                self.err(
                    backends.referenced,
                    "`servers` is missing: define the servers the backends list (only backends that all use `discover` need none)",
                );
            }
            return Vec::new();
        };
        if s.value.is_empty() && !all_discover {
            self.err(s.referenced, "`servers` is empty: define at least one server");
        }
        let mut out = Vec::new();
        for (name, server) in &s.value {
            self.name(name, server.referenced, "server");
            let address = self.check(&server.value.address, |a| resolve_server_addr(a));
            let weight = self.count(&server.value.weight, "weight", (0, MAX_WEIGHT.into()), 1) as u32;
            let max_connections = server
                .value
                .max_connections
                .as_ref()
                .map(|m| self.count(&Some(m.clone()), "max_connections", (1, 1_000_000), 1) as u32);
            let slow_start = server.value.slow_start.as_ref().map(|w| self.window(w));
            out.push(Server {
                name: name.clone(),
                address_text: server.value.address.value.clone(),
                address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                weight,
                max_connections,
                slow_start,
                discovered: false,
            });
        }
        out
    }

    /// A slow-start window: a duration up to an hour, or `0s` / `off` for none.
    fn window(&mut self, value: &Str) -> Duration {
        self.check(value, |v| {
            if matches!(v.trim(), "0" | "0s" | "off") {
                return Ok(Duration::ZERO);
            }
            let d = parse_duration(v)?;
            if d > MAX_SLOW_START {
                return Err(format!(
                    "slow_start {v:?} is longer than {}",
                    humantime::format_duration(MAX_SLOW_START)
                ));
            }
            Ok(d)
        })
        .unwrap_or(DEFAULT_SLOW_START)
    }

    pub(super) fn name(&mut self, name: &str, loc: Location, what: &str) {
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

    pub(super) fn backends(
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
            let (members, discover) = match (&bf.servers, &bf.discover) {
                (Some(list), None) => (self.backend_servers(name, list, servers), None),
                (None, Some(d)) => (Vec::new(), self.discover(d)),
                (Some(_), Some(d)) => {
                    self.err(
                        d.referenced,
                        format!("backend {name:?} has both `servers` and `discover`: keep one"),
                    );
                    (Vec::new(), None)
                }
                (None, None) => {
                    self.err(
                        backend.referenced,
                        format!("backend {name:?} needs `servers: [NAME, …]` or `discover: {{ dns: NAME:PORT }}`"),
                    );
                    (Vec::new(), None)
                }
            };
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
            let slow_start = bf.slow_start.as_ref().map_or(DEFAULT_SLOW_START, |w| self.window(w));
            let new_sessions = bf.new_sessions.as_ref().and_then(|r| {
                let Some(per_second) = &r.value.per_second else {
                    self.err(r.referenced, "new_sessions needs per_second (and optionally burst)");
                    return None;
                };
                // One second's worth at once unless said otherwise.
                let per_second = u32::try_from(per_second.value).unwrap_or(u32::MAX);
                let one_second = Rate {
                    per_second: per_second.max(1),
                    burst: per_second.max(1),
                };
                self.rate(Some(r), "new_sessions", one_second)
            });
            out.push(Backend {
                name: name.clone(),
                balance,
                servers: members,
                cookie,
                timeouts: self.backend_timeouts(name, bf.timeouts.as_ref(), timeouts),
                hash_balance_factor,
                retries,
                max_queue,
                slow_start,
                new_sessions,
                discover,
            });
        }
        out
    }

    pub(super) fn backend_servers(
        &mut self,
        backend: &str,
        list: &Spanned<Vec<Str>>,
        servers: &[Server],
    ) -> Vec<usize> {
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

    pub(super) fn backend_ref(&mut self, name: &Str, backends: &[Backend]) -> Option<usize> {
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

    pub(super) fn routes(&mut self, r: &Spanned<Vec<Spanned<file::RouteFile>>>, backends: &[Backend]) -> Vec<Route> {
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
}
