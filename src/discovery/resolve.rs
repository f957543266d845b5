//! Asking DNS: one hickory resolver per discovered backend (its `discover.resolvers`, or
//! /etc/resolv.conf's), queried afresh at every resolution (its cache is cleared first:
//! the TTL decides when edgepin asks again, not when the resolver may answer from
//! memory). A/AAAA answers and SRV answers (targets resolved through the answer's
//! additional records, else asked for) become [`Found`] servers through `answer`.
//!
//! Owns no state beyond the resolver; it never changes the running config.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record};

use super::answer::{Failure, Found, SrvRecord, from_addresses, from_srv};
use crate::config::{Discover, DiscoverKind};

/// What one resolution gave, and the shortest TTL of the records it used.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub answer: Result<Vec<Found>, Failure>,
    pub ttl: Option<Duration>,
}

impl Resolution {
    /// When to ask again: after the TTL, kept within [`Discover::MIN_INTERVAL`] and
    /// `interval`; after a failure, after `interval`.
    pub fn next_in(&self, spec: &Discover) -> Duration {
        match (&self.answer, self.ttl) {
            (Ok(_), Some(ttl)) => ttl.clamp(Discover::MIN_INTERVAL, spec.interval.max(Discover::MIN_INTERVAL)),
            _ => spec.interval,
        }
    }
}

/// A resolver for one discovered backend.
pub struct DnsResolver {
    resolver: TokioResolver,
    spec: Discover,
}

impl DnsResolver {
    /// A resolver asking `spec.resolvers`, or the name servers of /etc/resolv.conf.
    pub fn new(spec: &Discover) -> Result<DnsResolver, Failure> {
        let mut builder = if spec.resolvers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| Failure::Other(format!("cannot read the system's resolver configuration: {e}")))?
        } else {
            let servers = spec
                .resolvers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = spec.timeout;
        opts.attempts = 1;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        if !spec.resolvers.is_empty() {
            // Named servers answer alone; /etc/hosts is the system resolver's business.
            opts.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder
            .build()
            .map_err(|e| Failure::Other(format!("cannot build a resolver: {e}")))?;
        Ok(DnsResolver {
            resolver,
            spec: spec.clone(),
        })
    }

    /// Ask once, within twice the timeout (SRV targets may need a second question).
    pub async fn resolve(&self) -> Resolution {
        self.resolver.clear_cache();
        let ask = async {
            match self.spec.kind {
                DiscoverKind::Addresses => self.addresses().await,
                DiscoverKind::Srv => self.srv().await,
            }
        };
        match tokio::time::timeout(self.spec.timeout * 2, ask).await {
            Ok(r) => r,
            Err(_) => Resolution {
                answer: Err(Failure::Timeout),
                ttl: None,
            },
        }
    }

    async fn addresses(&self) -> Resolution {
        match self.resolver.lookup_ip(self.spec.name.as_str()).await {
            Ok(lookup) => Resolution {
                answer: Ok(from_addresses(lookup.iter(), self.spec.port)),
                ttl: min_ttl(lookup.as_lookup().answers()),
            },
            Err(e) => failed(e),
        }
    }

    async fn srv(&self) -> Resolution {
        let lookup = match self.resolver.srv_lookup(self.spec.name.as_str()).await {
            Ok(lookup) => lookup,
            Err(e) => return failed(e),
        };
        let records: Vec<SrvRecord> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: fqdn_text(&srv.target.to_ascii()),
                }),
                _ => None,
            })
            .collect();
        let mut ttl = min_ttl(lookup.answers());
        // Targets' addresses: from the additional section when the server sent them.
        let mut addresses: Vec<(String, IpAddr)> = lookup
            .additionals()
            .iter()
            .filter_map(|r| Some((fqdn_text(&r.name.to_ascii()), ip_of(r)?)))
            .collect();
        let mut targets: Vec<&str> = records.iter().map(|r| r.target.as_str()).collect();
        targets.sort_unstable();
        targets.dedup();
        for target in targets.into_iter().take(self.spec.max_servers) {
            if addresses.iter().any(|(n, _)| n == target) {
                continue;
            }
            // A target that does not resolve is left out of this answer.
            if let Ok(ips) = self.resolver.lookup_ip(format!("{target}.")).await {
                ttl = min_opt(ttl, min_ttl(ips.as_lookup().answers()));
                let mut ips: Vec<IpAddr> = ips.iter().collect();
                ips.sort();
                if let Some(ip) = ips.first() {
                    addresses.push((target.to_string(), *ip));
                }
            }
        }
        let found = from_srv(&records, |t| {
            addresses.iter().filter(|(n, _)| n == t).map(|(_, ip)| *ip).min()
        });
        Resolution {
            answer: if found.is_empty() && !records.is_empty() {
                Err(Failure::Other("no SRV target resolves to an address".into()))
            } else {
                Ok(found)
            },
            ttl,
        }
    }
}

/// A resolver error as a [`Failure`].
fn failed(e: NetError) -> Resolution {
    let failure = match e {
        NetError::Timeout => Failure::Timeout,
        NetError::Dns(DnsError::NoRecordsFound(nr)) if nr.response_code == ResponseCode::NXDomain => Failure::NxDomain,
        NetError::Dns(DnsError::NoRecordsFound(_)) => Failure::Empty,
        NetError::Dns(DnsError::ResponseCode(code)) => Failure::Refused(code.to_string()),
        other => Failure::Other(other.to_string()),
    };
    Resolution {
        answer: Err(failure),
        ttl: None,
    }
}

fn ip_of(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// A name as servers are named: lowercase, without the trailing dot.
fn fqdn_text(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn min_ttl(records: &[Record]) -> Option<Duration> {
    records.iter().map(|r| Duration::from_secs(u64::from(r.ttl))).min()
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(interval: u64) -> Discover {
        Discover {
            name: "fleet.test".into(),
            kind: DiscoverKind::Addresses,
            port: 3000,
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(2),
            max_servers: 64,
            confirm_shrink: 2,
            resolvers: vec!["127.0.0.1:53".parse().unwrap()],
            max_connections: None,
            pos: Default::default(),
        }
    }

    #[test]
    fn the_ttl_is_honoured_within_one_second_and_the_interval() {
        let answer = |ttl: Option<u64>| Resolution {
            answer: Ok(Vec::new()),
            ttl: ttl.map(Duration::from_secs),
        };
        let s = spec(30);
        assert_eq!(answer(Some(0)).next_in(&s), Duration::from_secs(1));
        assert_eq!(answer(Some(7)).next_in(&s), Duration::from_secs(7));
        assert_eq!(answer(Some(300)).next_in(&s), Duration::from_secs(30));
        assert_eq!(answer(None).next_in(&s), Duration::from_secs(30));
        let failed = Resolution {
            answer: Err(Failure::Timeout),
            ttl: Some(Duration::from_secs(1)),
        };
        assert_eq!(failed.next_in(&s), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_name_server_that_never_answers_is_a_timeout_within_twice_the_timeout() {
        // A UDP socket that reads nothing, and no TCP listener on its port.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut s = spec(5);
        s.resolvers = vec![silent.local_addr().unwrap()];
        s.timeout = Duration::from_millis(300);
        let r = DnsResolver::new(&s).unwrap();
        let started = std::time::Instant::now();
        let got = r.resolve().await;
        assert!(
            matches!(got.answer, Err(Failure::Timeout) | Err(Failure::Other(_))),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
}
