//! Validation of `backends.NAME.discover`: the DNS name (with its port for A/AAAA
//! records, without one for SRV), the record type, intervals and bounds, and the name
//! servers. Nothing is resolved here; `edgepin check` resolves once, `run` keeps
//! resolving.

use super::*;

/// Default `discover.interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default `discover.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default and largest `discover.max_servers`.
const DEFAULT_MAX_SERVERS: u64 = 64;
const MAX_SERVERS: u64 = 1024;

impl Validator<'_> {
    pub(super) fn discover(&mut self, d: &Spanned<file::DiscoverFile>) -> Option<Discover> {
        let f = &d.value;
        let kind = match &f.kind {
            None => DiscoverKind::Addresses,
            Some(k) => self.check(k, |k| match k.to_ascii_lowercase().as_str() {
                "a" => Ok(DiscoverKind::Addresses),
                "srv" => Ok(DiscoverKind::Srv),
                other => Err(format!(
                    "unknown discover type {other:?} (known: a for A/AAAA records, srv)"
                )),
            })?,
        };
        let target = self.check(&f.dns, |s| parse_dns_target(s, kind));
        let interval = self.duration(&f.interval, DEFAULT_INTERVAL);
        if let Some(i) = &f.interval
            && interval < Discover::MIN_INTERVAL
        {
            self.err(
                i.referenced,
                format!("discover.interval {:?} must be at least 1s", i.value),
            );
        }
        let timeout = self.duration(&f.timeout, DEFAULT_TIMEOUT);
        let max_servers = self.count(
            &f.max_servers,
            "discover.max_servers",
            (1, MAX_SERVERS),
            DEFAULT_MAX_SERVERS,
        ) as usize;
        let confirm_shrink = self.count(&f.confirm_shrink, "discover.confirm_shrink", (1, 100), 2) as u32;
        let max_connections = f
            .max_connections
            .as_ref()
            .map(|m| self.count(&Some(m.clone()), "max_connections", (1, 1_000_000), 1) as u32);
        let mut resolvers = Vec::new();
        if let Some(list) = &f.resolvers {
            if list.value.is_empty() {
                self.err(
                    list.referenced,
                    "discover.resolvers is empty: leave it out to use /etc/resolv.conf",
                );
            }
            for r in &list.value {
                if let Some(a) = self.check(r, |r| parse_resolver(r)) {
                    resolvers.push(a);
                }
            }
        }
        let (name, port) = target?;
        Some(Discover {
            name,
            kind,
            port,
            interval,
            timeout,
            max_servers,
            confirm_shrink,
            resolvers,
            max_connections,
            pos: pos(d.referenced),
        })
    }
}

/// `NAME:PORT` (A/AAAA) or `NAME` (SRV): the name lowercase (a trailing dot kept: it
/// asks for the name as it is, without the resolver's search domains), and the port (0
/// for SRV).
fn parse_dns_target(s: &str, kind: DiscoverKind) -> Result<(String, u16), String> {
    let (name, port) = match (kind, s.rsplit_once(':')) {
        (DiscoverKind::Addresses, Some((name, port))) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("discover.dns {s:?}: the port must be 1-65535"))?;
            (name, port)
        }
        (DiscoverKind::Addresses, None) => {
            return Err(format!(
                "discover.dns {s:?} needs the servers' port: NAME:PORT (A records carry no port)"
            ));
        }
        (DiscoverKind::Srv, Some(_)) => {
            return Err(format!(
                "discover.dns {s:?}: SRV records carry the port, write the name alone (e.g. _sio._tcp.workers.example)"
            ));
        }
        (DiscoverKind::Srv, None) => (s, 0),
    };
    if name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        return Err(format!(
            "discover.dns {s:?} is an address, not a name: list it under `servers`"
        ));
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!("discover.dns {s:?} is not a DNS name"));
    }
    Ok((name.to_ascii_lowercase(), port))
}

/// A name server: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| format!("discover resolver {s:?} must be IP or IP:PORT, e.g. 10.96.0.10 or 127.0.0.1:5353"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, Vec<String>> {
        parse_and_validate(Path::new("t.yaml"), text, &|_| None)
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    fn with_backend(backend: &str) -> String {
        format!(
            "listen: {{ http: 127.0.0.1:8080 }}\nroutes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {backend}\n"
        )
    }

    #[test]
    fn a_discovered_backend_needs_no_servers_section_and_gets_defaults() {
        let c = check(&with_backend(
            "{ balance: sticky, discover: { dns: Workers.Default.svc.cluster.local.:3000 } }",
        ))
        .unwrap();
        let d = c.backends[0].discover.as_ref().unwrap();
        assert_eq!(
            (d.name.as_str(), d.port, d.kind),
            ("workers.default.svc.cluster.local.", 3000, DiscoverKind::Addresses)
        );
        assert_eq!(
            (d.interval, d.timeout),
            (Duration::from_secs(5), Duration::from_secs(2))
        );
        assert_eq!((d.max_servers, d.confirm_shrink), (64, 2));
        assert!(d.resolvers.is_empty() && d.max_connections.is_none());
        assert!(c.servers.is_empty() && c.backends[0].servers.is_empty());
        assert_eq!(c.server_capacity(), 64);
    }

    #[test]
    fn srv_names_carry_no_port_and_resolvers_default_to_port_53() {
        let c = check(&with_backend(
            "{ discover: { dns: _sio._tcp.fleet.test, type: srv, interval: 1s, timeout: 500ms, max_servers: 8, \
             confirm_shrink: 1, max_connections: 100, resolvers: [10.96.0.10, \"127.0.0.1:5353\", \"[::1]:53\"] } }",
        ))
        .unwrap();
        let d = c.backends[0].discover.as_ref().unwrap();
        assert_eq!((d.name.as_str(), d.kind), ("_sio._tcp.fleet.test", DiscoverKind::Srv));
        assert_eq!(
            d.resolvers,
            [
                "10.96.0.10:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!((d.max_servers, d.confirm_shrink, d.max_connections), (8, 1, Some(100)));
        assert_eq!(d.describe(), "_sio._tcp.fleet.test (SRV)");
    }

    #[test]
    fn every_bad_discover_value_is_named_at_its_position() {
        let errs = check(&with_backend(
            "{ discover: { dns: fleet.test, interval: 500ms, max_servers: 0, resolvers: [nowhere] } }",
        ))
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "t.yaml:5:27: discover.dns \"fleet.test\" needs the servers' port: NAME:PORT (A records carry no port)",
                "t.yaml:5:49: discover.interval \"500ms\" must be at least 1s",
                "t.yaml:5:69: discover.max_servers 0 is out of range (allowed 1..=1024)",
                "t.yaml:5:84: discover resolver \"nowhere\" must be IP or IP:PORT, e.g. 10.96.0.10 or 127.0.0.1:5353",
            ]
        );
        for (dns, kind, wanted) in [
            ("\"fleet.test:3000\"", "srv", "SRV records carry the port"),
            ("\"10.0.0.1:3000\"", "a", "is an address, not a name"),
            ("\"fleet..test:3000\"", "a", "is not a DNS name"),
            ("\"fleet.test:0\"", "a", "the port must be 1-65535"),
            ("\"fleet.test:80\"", "aaaa", "unknown discover type \"aaaa\""),
        ] {
            let errs = check(&with_backend(&format!(
                "{{ discover: {{ dns: {dns}, type: {kind} }} }}"
            )))
            .unwrap_err();
            assert!(errs.len() == 1 && errs[0].contains(wanted), "{dns}: {errs:?}");
        }
    }

    #[test]
    fn a_backend_has_servers_or_discover_and_listed_servers_still_need_their_section() {
        let errs = check(&with_backend("{ servers: [a], discover: { dns: \"x.test:1\" } }")).unwrap_err();
        assert_eq!(
            errs,
            ["t.yaml:5:34: backend \"api\" has both `servers` and `discover`: keep one"]
        );
        let errs = check(&with_backend("{ balance: sticky }")).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("t.yaml:5:8: backend \"api\" needs `servers: [NAME, …]` or `discover")),
            "{errs:?}"
        );
        let errs = check(&with_backend("{ servers: [a] }")).unwrap_err();
        assert!(errs[0].contains("`servers` is missing"), "{errs:?}");
        let mixed = format!(
            "{}  ws: {{ discover: {{ dns: \"x.test:1\" }} }}\nservers:\n  a: {{ address: 127.0.0.1:3001 }}\n",
            with_backend("{ servers: [a] }")
        );
        let c = check(&mixed).unwrap();
        assert_eq!(c.server_capacity(), 65, "one listed, 64 discoverable");
    }
}
