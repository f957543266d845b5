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
//! expire soonest.
//!
//! Beside the per-address count there is a budget for all addresses together: a guesser
//! with many addresses (a botnet, an IPv6 block larger than a /64, a range of loopback
//! addresses) gets `max_failures` per address per window, which adds up. When
//! `max_failures_total` wrong credentials arrive within `window` (counted in fixed windows
//! from the first one), every address is locked out for `lockout` — except addresses that
//! gave the right credentials within the last `window` (a dashboard left open, a Prometheus
//! scrape), so an attack does not cut off the operator who is already logged in. Those stay
//! under their own per-address count. A new operator's first login waits out the lockout;
//! the log says why. This module decides; `auth` applies it.

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
    /// Wrong credentials from all addresses together within `window` that lock out every
    /// address without a recent success.
    pub max_failures_total: u32,
    /// Addresses with a recent success remembered at once (the oldest is forgotten).
    pub trusted_capacity: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_failures: 5,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
            capacity: 4096,
            max_failures_total: 50,
            trusted_capacity: 64,
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
    fn fresh(now: Instant) -> Record {
        Record {
            first: now,
            failures: 0,
            locked_until: None,
        }
    }

    fn expires(&self, p: &Policy) -> Instant {
        self.locked_until.unwrap_or(self.first + p.window)
    }
}

/// Wrong credentials per client address, and from all of them together.
#[derive(Debug)]
pub struct Throttle {
    policy: Policy,
    table: Mutex<Table>,
}

/// What the throttle remembers.
#[derive(Debug, Default)]
struct Table {
    /// Per client address (`key`).
    addresses: HashMap<IpAddr, Record>,
    /// All addresses together.
    total: Option<Record>,
    /// Addresses that gave the right credentials, and when they last did.
    trusted: HashMap<IpAddr, Instant>,
}

impl Table {
    /// Whether `key` gave the right credentials within `window` of `now`.
    fn trusted(&self, key: IpAddr, now: Instant, p: &Policy) -> bool {
        self.trusted.get(&key).is_some_and(|&at| now < at + p.window)
    }
}

/// Count one failure at `now` in `record` (a new window if its last one is over); the
/// lockout it starts when it reaches `max`.
fn count(record: &mut Record, now: Instant, p: &Policy, max: u32) -> Option<Duration> {
    if record.expires(p) <= now {
        *record = Record::fresh(now);
    }
    if record.locked_until.is_some() {
        return None;
    }
    record.failures += 1;
    if record.failures >= max {
        record.locked_until = Some(now + p.lockout);
        return Some(p.lockout);
    }
    None
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
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `ip` is still locked out at `now`, if it is: by its own count, or by the
    /// total one unless it succeeded lately.
    pub fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = key(ip);
        let table = self.table();
        let own = table.addresses.get(&key).and_then(|r| r.locked_until);
        let total = table
            .total
            .and_then(|r| r.locked_until)
            .filter(|_| !table.trusted(key, now, &self.policy));
        let until = own.into_iter().chain(total).max()?;
        (until > now).then(|| until - now)
    }

    /// Whether the total budget is spent at `now` (for the log).
    pub fn all_locked(&self, now: Instant) -> bool {
        self.table()
            .total
            .and_then(|r| r.locked_until)
            .is_some_and(|until| until > now)
    }

    /// Remember that `ip` gave the right credentials at `now` (it keeps its access while
    /// the total budget is spent).
    pub fn succeeded(&self, ip: IpAddr, now: Instant) {
        let p = &self.policy;
        let key = key(ip);
        let mut table = self.table();
        let trusted = &mut table.trusted;
        if !trusted.contains_key(&key) && trusted.len() >= p.trusted_capacity {
            trusted.retain(|_, &mut at| now < at + p.window);
            if trusted.len() >= p.trusted_capacity
                && let Some(oldest) = trusted.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                trusted.remove(&oldest);
            }
        }
        trusted.insert(key, now);
    }

    /// Count wrong credentials from `ip` at `now`; the lockout it starts, if it does.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let p = &self.policy;
        let key = key(ip);
        let mut table = self.table();
        let total = table.total.get_or_insert(Record::fresh(now));
        count(total, now, p, p.max_failures_total);
        let addresses = &mut table.addresses;
        if !addresses.contains_key(&key) && addresses.len() >= p.capacity {
            addresses.retain(|_, r| r.expires(p) > now);
            if addresses.len() >= p.capacity
                && let Some(soonest) = addresses.iter().min_by_key(|(_, r)| r.expires(p)).map(|(k, _)| *k)
            {
                addresses.remove(&soonest);
            }
        }
        let record = addresses.entry(key).or_insert(Record::fresh(now));
        count(record, now, p, p.max_failures)
    }

    /// Addresses remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table().addresses.len()
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
    fn many_addresses_together_spend_a_total_budget_that_spares_recent_logins() {
        let t = Throttle::new(Policy::default());
        let t0 = Instant::now();
        t.succeeded(ip("192.0.2.200"), t0);
        // 40 addresses, 5 tries each, would be 200 guesses a minute by address alone.
        let mut first_lock = None;
        for i in 0..40u8 {
            let addr = IpAddr::from([198, 51, 100, i]);
            for _ in 0..4 {
                if t.locked(addr, t0).is_none() {
                    t.failed(addr, t0);
                }
            }
            if first_lock.is_none() && t.all_locked(t0) {
                first_lock = Some(i);
            }
        }
        assert_eq!(
            first_lock,
            Some(12),
            "the 50th failure (13th address) spends the budget"
        );
        assert_eq!(
            t.locked(ip("203.0.113.1"), t0),
            Some(Duration::from_secs(60)),
            "a new address waits"
        );
        assert_eq!(t.locked(ip("192.0.2.200"), t0), None, "a recent login keeps its access");
        assert_eq!(
            t.locked(ip("192.0.2.200"), t0 + Duration::from_secs(61)),
            None,
            "the lockout ends"
        );
        let late = t0 + Duration::from_secs(30);
        t.succeeded(ip("192.0.2.201"), t0);
        assert_eq!(t.locked(ip("192.0.2.201"), late), None, "a login during the window");
        assert!(t.locked(ip("192.0.2.202"), late).is_some());
        assert!(
            t.locked(ip("192.0.2.200"), t0 + Duration::from_secs(59)).is_none(),
            "trusted for a window after its login"
        );
    }

    #[test]
    fn trust_expires_and_is_bounded() {
        let policy = Policy {
            max_failures_total: 3,
            trusted_capacity: 2,
            ..Policy::default()
        };
        let t = Throttle::new(policy);
        let t0 = Instant::now();
        for i in 1..=3 {
            t.succeeded(IpAddr::from([192, 0, 2, i]), t0 + Duration::from_secs(u64::from(i)));
        }
        let later = t0 + Duration::from_secs(70);
        for i in 0..3 {
            t.failed(IpAddr::from([198, 51, 100, i]), later);
        }
        assert!(
            t.locked(ip("192.0.2.1"), later).is_some(),
            "forgotten: the oldest of three"
        );
        assert!(
            t.locked(ip("192.0.2.3"), later).is_some(),
            "its login is more than a window old"
        );
        t.succeeded(ip("192.0.2.3"), later);
        assert!(t.locked(ip("192.0.2.3"), later).is_none());
    }

    #[test]
    fn the_table_stays_within_its_capacity() {
        let policy = Policy {
            capacity: 100,
            max_failures_total: u32::MAX,
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
