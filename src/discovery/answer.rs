//! What a DNS answer means for a backend: the servers it names ([`Found`], with names
//! derived from what each server is), and whether it replaces the backend's current set
//! ([`decide`]). Plain functions over plain values; the resolver (`resolve`) and the
//! service that applies decisions (`upkeep::discovery`) do the I/O.
//!
//! The rules: a failed or empty answer keeps the last good set; an answer naming more
//! servers than `max_servers` is cut (the servers already in use first); an answer that
//! removes more than half the current servers applies only once `confirm_shrink`
//! answers in a row agreed on it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Discover, MAX_WEIGHT};

/// A server a DNS answer names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// `address:port` (A/AAAA) or `target:port` (SRV): what the server is, so its cookie
    /// id and hash place are the same on every edge and after every resolution.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

/// Why a resolution gave no servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no records of the type asked (or none usable).
    Empty,
    /// No answer in time.
    Timeout,
    /// The server answered with an error code (SERVFAIL, REFUSED, …).
    Refused(String),
    /// Anything else (no resolver configuration, a network error, …).
    Other(String),
}

impl Failure {
    /// A short label for counters and stats: `nxdomain`, `empty`, `timeout`, `error`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::NxDomain => "nxdomain",
            Failure::Empty => "empty",
            Failure::Timeout => "timeout",
            Failure::Refused(_) | Failure::Other(_) => "error",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NxDomain => f.write_str("NXDOMAIN"),
            Failure::Empty => f.write_str("no records"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Refused(code) => write!(f, "{code}"),
            Failure::Other(e) => f.write_str(e),
        }
    }
}

/// The servers of an A/AAAA answer: one per distinct address, with the configured port,
/// weight 1, sorted (IPv4 first).
pub fn from_addresses(addresses: impl IntoIterator<Item = IpAddr>, port: u16) -> Vec<Found> {
    let mut found: Vec<Found> = addresses
        .into_iter()
        .map(|ip| {
            let addr = SocketAddr::new(ip.to_canonical(), port);
            Found {
                name: addr.to_string(),
                addr,
                weight: 1,
            }
        })
        .collect();
    found.sort_by_key(|f| f.addr);
    found.dedup_by_key(|f| f.addr);
    found
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target name, lowercase, without its trailing dot.
    pub target: String,
}

/// The servers of an SRV answer: the records of the lowest priority whose target has an
/// address (`address_of`), named `target:port`. Weights are used as they are up to
/// [`MAX_WEIGHT`] and scaled into 1..=MAX_WEIGHT above it; a weight of 0 counts as 1, so
/// all-zero weights share equally and a 0 among larger ones gets the smallest share
/// (RFC 2782: "a very small chance"). A target given twice with one port counts once.
pub fn from_srv(records: &[SrvRecord], address_of: impl Fn(&str) -> Option<IpAddr>) -> Vec<Found> {
    let Some(lowest) = records.iter().map(|r| r.priority).min() else {
        return Vec::new();
    };
    let chosen: Vec<&SrvRecord> = records.iter().filter(|r| r.priority == lowest).collect();
    let max = chosen.iter().map(|r| u32::from(r.weight)).max().unwrap_or(0);
    let scale = |w: u16| -> u32 {
        let w = u32::from(w);
        let scaled = if max > MAX_WEIGHT {
            (u64::from(w) * u64::from(MAX_WEIGHT)).div_ceil(u64::from(max)) as u32
        } else {
            w
        };
        scaled.max(1)
    };
    let mut found: Vec<Found> = chosen
        .iter()
        .filter_map(|r| {
            let ip = address_of(&r.target)?;
            Some(Found {
                name: format!("{}:{}", r.target, r.port),
                addr: SocketAddr::new(ip.to_canonical(), r.port),
                weight: scale(r.weight),
            })
        })
        .collect();
    found.sort();
    found.dedup_by(|a, b| a.name == b.name);
    found
}

/// An answer that removes many servers, waiting to be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub servers: Vec<Found>,
    /// Answers in a row that gave exactly these servers.
    pub seen: u32,
}

/// What to do with one resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Use these servers from now on (sorted by name).
    Apply(Vec<Found>),
    /// The answer gives the servers in use: nothing changes.
    Same,
    /// Keep the current servers: the resolution failed or named none.
    Keep(Failure),
    /// Keep the current servers until this shrink repeats `confirm_shrink` times.
    Hold(Pending),
}

/// Decide what `answer` does to a backend now using `current` (sorted by name), with
/// `pending` the shrink waiting for confirmation, if any. `capped` is set to how many
/// servers `max_servers` cut from the answer.
pub fn decide(
    spec: &Discover,
    current: &[Found],
    pending: Option<&Pending>,
    answer: Result<Vec<Found>, Failure>,
    capped: &mut usize,
) -> Decision {
    let found = match answer {
        Err(failure) => return Decision::Keep(failure),
        Ok(found) if found.is_empty() => return Decision::Keep(Failure::Empty),
        Ok(found) => found,
    };
    let found = cap(found, current, spec.max_servers, capped);
    if found == current {
        return Decision::Same;
    }
    let removed = current
        .iter()
        .filter(|c| !found.iter().any(|f| f.name == c.name))
        .count();
    if removed * 2 > current.len() && spec.confirm_shrink > 1 {
        let seen = match pending {
            Some(p) if p.servers == found => p.seen + 1,
            _ => 1,
        };
        if seen < spec.confirm_shrink {
            return Decision::Hold(Pending { servers: found, seen });
        }
    }
    Decision::Apply(found)
}

/// At most `max` of `found`: those in `current` first, then the others by name; the
/// result sorted by name.
fn cap(mut found: Vec<Found>, current: &[Found], max: usize, capped: &mut usize) -> Vec<Found> {
    found.sort();
    *capped = found.len().saturating_sub(max);
    if found.len() > max {
        // Stable sort: in-use servers first, each group still by name.
        found.sort_by_key(|f| !current.iter().any(|c| c.name == f.name));
        found.truncate(max);
        found.sort();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(max_servers: usize, confirm_shrink: u32) -> Discover {
        Discover {
            name: "fleet.test".into(),
            kind: crate::config::DiscoverKind::Addresses,
            port: 3000,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            max_servers,
            confirm_shrink,
            resolvers: Vec::new(),
            max_connections: None,
            pos: Default::default(),
        }
    }

    /// Servers 127.0.0.N:3000 for each N.
    fn servers(ns: &[u8]) -> Vec<Found> {
        from_addresses(ns.iter().map(|&n| IpAddr::from([127, 0, 0, n])), 3000)
    }

    #[test]
    fn addresses_become_servers_named_by_address_and_port() {
        let ips: Vec<IpAddr> = ["10.0.0.9", "::ffff:10.0.0.2", "fd00::1", "10.0.0.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let found = from_addresses(ips, 3000);
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.2:3000", "10.0.0.9:3000", "[fd00::1]:3000"]);
        assert!(found.iter().all(|f| f.weight == 1));
    }

    #[test]
    fn srv_uses_the_lowest_priority_with_weights_scaled_and_zero_as_one() {
        let rec = |priority, weight, port, target: &str| SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        };
        let address_of = |t: &str| match t {
            "w1.test" => Some(IpAddr::from([10, 0, 0, 1])),
            "w2.test" => Some(IpAddr::from([10, 0, 0, 2])),
            "w3.test" => Some(IpAddr::from([10, 0, 0, 3])),
            _ => None,
        };
        let found = from_srv(
            &[
                rec(10, 1, 3001, "w1.test"),
                rec(10, 3, 3002, "w2.test"),
                rec(20, 50, 3003, "w3.test"),
                rec(10, 5, 3009, "gone.test"),
            ],
            address_of,
        );
        let got: Vec<(&str, u32)> = found.iter().map(|f| (f.name.as_str(), f.weight)).collect();
        assert_eq!(
            got,
            [("w1.test:3001", 1), ("w2.test:3002", 3)],
            "priority 20 is a standby"
        );
        assert_eq!(found[1].addr.to_string(), "10.0.0.2:3002");

        let big = from_srv(
            &[
                rec(0, 0, 1, "w1.test"),
                rec(0, 1000, 2, "w2.test"),
                rec(0, 65535, 3, "w3.test"),
            ],
            address_of,
        );
        let weights: Vec<u32> = big.iter().map(|f| f.weight).collect();
        assert_eq!(weights, [1, 4, MAX_WEIGHT]);
        let zeros = from_srv(&[rec(0, 0, 1, "w1.test"), rec(0, 0, 2, "w2.test")], address_of);
        assert!(zeros.iter().all(|f| f.weight == 1));
        assert!(from_srv(&[], address_of).is_empty());
    }

    #[test]
    fn failures_and_empty_answers_keep_the_current_servers() {
        let s = spec(64, 2);
        let now = servers(&[2, 3, 4]);
        let mut capped = 0;
        assert_eq!(
            decide(&s, &now, None, Err(Failure::Timeout), &mut capped),
            Decision::Keep(Failure::Timeout)
        );
        assert_eq!(
            decide(&s, &now, None, Err(Failure::NxDomain), &mut capped),
            Decision::Keep(Failure::NxDomain)
        );
        assert_eq!(
            decide(&s, &now, None, Ok(Vec::new()), &mut capped),
            Decision::Keep(Failure::Empty)
        );
        assert_eq!(
            decide(&s, &now, None, Ok(servers(&[4, 3, 2])), &mut capped),
            Decision::Same
        );
    }

    #[test]
    fn growth_and_small_shrinks_apply_at_once() {
        let s = spec(64, 3);
        let mut capped = 0;
        let three = servers(&[2, 3, 4]);
        let five = servers(&[2, 3, 4, 5, 6]);
        assert_eq!(
            decide(&s, &three, None, Ok(five.clone()), &mut capped),
            Decision::Apply(five.clone())
        );
        // Two of five is not more than half.
        assert_eq!(
            decide(&s, &five, None, Ok(three.clone()), &mut capped),
            Decision::Apply(three)
        );
        // The first answer of all applies whatever it is.
        assert_eq!(
            decide(&s, &[], None, Ok(five.clone()), &mut capped),
            Decision::Apply(five)
        );
    }

    #[test]
    fn a_shrink_of_more_than_half_applies_only_once_it_repeats() {
        let s = spec(64, 3);
        let mut capped = 0;
        let three = servers(&[2, 3, 4]);
        let one = servers(&[2]);
        let first = decide(&s, &three, None, Ok(one.clone()), &mut capped);
        let Decision::Hold(p1) = first else { panic!("{first:?}") };
        assert_eq!(p1.seen, 1);
        let Decision::Hold(p2) = decide(&s, &three, Some(&p1), Ok(one.clone()), &mut capped) else {
            panic!()
        };
        assert_eq!(p2.seen, 2);
        assert_eq!(
            decide(&s, &three, Some(&p2), Ok(one.clone()), &mut capped),
            Decision::Apply(one.clone())
        );
        // Another answer in between starts the count again.
        let other = servers(&[3]);
        let Decision::Hold(p) = decide(&s, &three, Some(&p2), Ok(other), &mut capped) else {
            panic!()
        };
        assert_eq!(p.seen, 1);
        // confirm_shrink 1 applies at once.
        assert_eq!(
            decide(&spec(64, 1), &three, None, Ok(one.clone()), &mut capped),
            Decision::Apply(one)
        );
    }

    #[test]
    fn max_servers_keeps_the_servers_in_use_first() {
        let s = spec(3, 2);
        let mut capped = 0;
        let now = servers(&[5, 6]);
        let d = decide(&s, &now, None, Ok(servers(&[2, 3, 4, 5, 6])), &mut capped);
        assert_eq!(d, Decision::Apply(servers(&[2, 5, 6])));
        assert_eq!(capped, 2);
        let d = decide(&s, &[], None, Ok(servers(&[9, 8, 7, 2])), &mut capped);
        assert_eq!(d, Decision::Apply(servers(&[2, 7, 8])), "by name when none is in use");
        assert_eq!(capped, 1);
    }
}
