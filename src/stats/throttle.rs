//! Slows down password guessing on the stats listener. Wrong credentials are counted per
//! client address (IPv4 by address, IPv6 by /64, what one client usually holds); an
//! address that got `max_failures` wrong within `window` is locked out for `lockout`:
//! every request it makes that needs credentials gets 429 with `Retry-After`, the right
//! password included.
//!
//! Why a lockout of the address rather than a delay per wrong attempt: a delayed attempt
//! holds one of the listener's 64 slots while it sleeps, so a guesser with many parallel
//! connections would fill them (and starve `/health`), and still guess at the rate of its
//! parallelism; a 429 costs nothing and holds nothing. Why the right password is refused
//! too while locked out: if it passed, the lockout would answer 200 to the right guess and
//! 429 to the others, and guessing would go on at full speed. A correct login is never
//! delayed, and a success does not clear the count (else a script polling `/metrics` from
//! the same address would reset it for a guesser sharing that address).
//!
//! The table is bounded: at most `capacity` addresses; an entry expires when its window or
//! lockout ends, and a full table first drops expired entries, then the entry that would
//! expire soonest. This module decides; `auth` applies it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many wrong passwords an address may send, and what follows.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Wrong credentials within `window` that start a lockout.
    pub max_failures: u32,
    /// Counted from an address's first wrong credentials.
    pub window: Duration,
    /// How long a locked-out address is refused.
    pub lockout: Duration,
    /// Addresses remembered at once.
    pub capacity: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_failures: 5,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
            capacity: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    /// First wrong credentials of this window.
    first: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl Record {
    fn expires(&self, p: &Policy) -> Instant {
        self.locked_until.unwrap_or(self.first + p.window)
    }
}

/// Wrong credentials per client address.
#[derive(Debug)]
pub struct Throttle {
    policy: Policy,
    table: Mutex<HashMap<IpAddr, Record>>,
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            table: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, Record>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` is still locked out at `now`, if it is.
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.table().get(&key(ip))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Count wrong credentials from `ip` at `now`; the lockout it starts, if it does.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let p = &self.policy;
        let key = key(ip);
        let mut table = self.table();
        if !table.contains_key(&key) && table.len() >= p.capacity {
            table.retain(|_, r| r.expires(p) > now);
            if table.len() >= p.capacity
                && let Some(soonest) = table.iter().min_by_key(|(_, r)| r.expires(p)).map(|(k, _)| *k)
            {
                table.remove(&soonest);
            }
        }
        let fresh = Record {
            first: now,
            failures: 0,
            locked_until: None,
        };
        let record = table.entry(key).or_insert(fresh);
        if record.expires(p) <= now {
            *record = fresh;
        }
        if record.locked_until.is_some() {
            return None;
        }
        record.failures += 1;
        if record.failures >= p.max_failures {
            record.locked_until = Some(now + p.lockout);
            return Some(p.lockout);
        }
        None
    }

    /// Addresses remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_fifth_failure_in_a_minute_locks_the_address_out_for_a_minute() {
        let t = Throttle::new(Policy::default());
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(t.failed(ip("192.0.2.1"), t0 + Duration::from_secs(i)), None);
            assert_eq!(t.locked(ip("192.0.2.1"), t0), None);
        }
        let at = t0 + Duration::from_secs(10);
        assert_eq!(t.failed(ip("192.0.2.1"), at), Some(Duration::from_secs(60)));
        assert_eq!(
            t.locked(ip("192.0.2.1"), at + Duration::from_secs(15)),
            Some(Duration::from_secs(45))
        );
        assert_eq!(t.locked(ip("192.0.2.2"), at), None, "other addresses are not throttled");
        assert_eq!(t.locked(ip("192.0.2.1"), at + Duration::from_secs(60)), None, "it ends");
        assert_eq!(
            t.failed(ip("192.0.2.1"), at + Duration::from_secs(60)),
            None,
            "a new window starts"
        );
    }

    #[test]
    fn failures_spread_over_more_than_the_window_never_lock() {
        let t = Throttle::new(Policy::default());
        let t0 = Instant::now();
        for i in 0..20 {
            let now = t0 + Duration::from_secs(20 * i);
            assert_eq!(t.failed(ip("192.0.2.1"), now), None, "failure {i}");
        }
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let t = Throttle::new(Policy::default());
        let now = Instant::now();
        for i in 1..=5 {
            t.failed(ip(&format!("2001:db8:1:2::{i}")), now);
        }
        assert!(t.locked(ip("2001:db8:1:2:ffff::1"), now).is_some());
        assert!(t.locked(ip("2001:db8:1:3::1"), now).is_none());
        for _ in 0..5 {
            t.failed(ip("::ffff:192.0.2.7"), now);
        }
        assert!(t.locked(ip("192.0.2.7"), now).is_some(), "IPv4-mapped is IPv4");
    }

    #[test]
    fn the_table_stays_within_its_capacity() {
        let policy = Policy {
            capacity: 100,
            ..Policy::default()
        };
        let t = Throttle::new(policy);
        let t0 = Instant::now();
        for _ in 0..5 {
            t.failed(ip("192.0.2.1"), t0);
        }
        for i in 0..10_000u32 {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            t.failed(addr, t0 + Duration::from_millis(u64::from(i)));
            assert!(t.len() <= 100);
        }
        let later = t0 + Duration::from_secs(61);
        t.failed(ip("198.51.100.1"), later);
        assert!(t.len() <= 100);
        assert_eq!(t.locked(ip("192.0.2.1"), later), None);
    }
}
