//! Rate limits on new Engine.IO sessions: per client address in bounded memory (may this
//! client open one more session now, or how long must it wait: the `Retry-After` of a
//! 429), and per backend ([`RateGate`]: one bucket every client shares, a backend's
//! `new_sessions` cap, refused with 503).
//!
//! Each client has a GCRA bucket (the "generic cell rate algorithm": one timestamp per
//! client, the time its bucket would be empty again): `burst` requests at once, then
//! `per_second`. The buckets live in a fixed table of [`SLOTS`] slots, 4-way set
//! associative, allocated once per shard on first use; a client not in its set takes the
//! way with the least debt (an idle way if there is one), so a flood of one-off addresses
//! cannot push out an address that is over its limit, and memory never grows. A client
//! that loses its way starts over with a full bucket: the table can only ever be too
//! lenient, never refuse an innocent client. IPv6 clients are counted per /64 (one host
//! typically holds a whole /64), IPv4-mapped IPv6 as IPv4.
//!
//! A decision only: no I/O, no clock of its own (callers pass `now`), no pingora types.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::config::Rate;

/// Buckets in the table (16 bytes each).
pub const SLOTS: usize = 16_384;
const WAYS: usize = 4;
const SHARDS: usize = 64;
const PER_SHARD: usize = SLOTS / SHARDS;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Keyed hash of the client (0 in a never-used slot: idle, so as good as empty).
    tag: u64,
    /// GCRA's theoretical arrival time, ns since `origin`: the bucket is full again then.
    tat: u64,
}

#[derive(Debug)]
pub struct ClientLimiter {
    shards: Vec<Mutex<Vec<Slot>>>,
    /// Keys client hashes, so no one can aim at another client's slot.
    hasher: std::hash::RandomState,
    origin: Instant,
}

impl Default for ClientLimiter {
    fn default() -> Self {
        ClientLimiter::new()
    }
}

impl ClientLimiter {
    pub fn new() -> ClientLimiter {
        ClientLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            hasher: std::hash::RandomState::new(),
            origin: Instant::now(),
        }
    }

    /// Count one request of `client` at `now` against `rate`: `Ok`, or `Err(wait)` with
    /// how long until it would be allowed (the request is then not counted).
    pub fn check(&self, client: IpAddr, rate: Rate, now: Instant) -> Result<(), Duration> {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let hash = self.hasher.hash_one(client_key(client));
        let shard_index = (hash % SHARDS as u64) as usize;
        let set = ((hash / SHARDS as u64) % (PER_SHARD / WAYS) as u64) as usize * WAYS;
        let mut shard = self.shards[shard_index].lock().unwrap_or_else(|p| p.into_inner());
        if shard.is_empty() {
            shard.resize(PER_SHARD, Slot::default());
        }
        let ways = &mut shard[set..set + WAYS];
        let (way, tat) = match ways.iter().position(|s| s.tag == hash) {
            Some(w) => (w, ways[w].tat),
            // A fresh bucket in the way with the least debt (ties: the first).
            None => ((0..WAYS).min_by_key(|&w| ways[w].tat).unwrap_or(0), now),
        };
        let next = gcra(tat, now, rate).map_err(Duration::from_nanos)?;
        ways[way] = Slot { tag: hash, tat: next };
        Ok(())
    }

    /// Buckets the table holds at most (its memory bound).
    pub fn capacity(&self) -> usize {
        SLOTS
    }

    /// Buckets allocated now (never more than [`ClientLimiter::capacity`]).
    pub fn allocated(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// One step of GCRA for a bucket whose theoretical arrival time is `tat` (ns, like
/// `now`): the new `tat` if one more request fits `rate`, else how many ns until it would.
fn gcra(tat: u64, now: u64, rate: Rate) -> Result<u64, u64> {
    let interval = 1_000_000_000 / u64::from(rate.per_second.max(1));
    let window = interval.saturating_mul(u64::from(rate.burst.max(1)));
    let next = tat.max(now).saturating_add(interval);
    let debt = next - now;
    if debt > window { Err(debt - window) } else { Ok(next) }
}

/// One bucket shared by every client: a backend's `new_sessions` cap. Lock-free; it
/// outlives reloads with its backend, and a changed rate applies from the next request.
#[derive(Debug)]
pub struct RateGate {
    /// GCRA's theoretical arrival time, ns since `origin` (0: a full bucket).
    tat: AtomicU64,
    origin: Instant,
}

impl Default for RateGate {
    fn default() -> Self {
        RateGate {
            tat: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl RateGate {
    /// Count one new session at `now` against `rate`: `Ok`, or `Err(wait)` until one
    /// would fit (the session is then not counted).
    pub fn check(&self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let now = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Relaxed);
        loop {
            let next = gcra(tat, now, rate).map_err(Duration::from_nanos)?;
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// `Retry-After` seconds for a session refused by a [`RateGate`]: the wait rounded up,
/// plus `entropy` spread over the time a full burst takes to come back, so clients that
/// honour it return over several seconds instead of together in the next one (and meet
/// the same refusal). socket.io-client ignores it and backs off by itself.
pub fn spread_retry_after(wait: Duration, rate: Rate, entropy: u64) -> u64 {
    let refill = u64::from(rate.burst).div_ceil(u64::from(rate.per_second.max(1))).max(1);
    retry_after_secs(wait) + entropy % (refill + 1)
}

/// Whom a limit counts: the IPv4 address, or the /64 of an IPv6 one.
fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !u128::from(u64::MAX)) | (1 << 32),
    }
}

/// `Retry-After` seconds for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const RATE: Rate = Rate {
        per_second: 2,
        burst: 5,
    };

    #[test]
    fn a_burst_then_the_rate_then_a_wait_and_other_clients_are_not_affected() {
        let l = ClientLimiter::new();
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(l.check(ip("127.0.0.5"), RATE, t0), Ok(()), "burst {i}");
        }
        assert_eq!(l.check(ip("127.0.0.5"), RATE, t0), Err(Duration::from_millis(500)));
        assert_eq!(l.check(ip("127.0.0.6"), RATE, t0), Ok(()), "another address");
        // A refused request is not counted: 500 ms later exactly one more is allowed.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check(ip("127.0.0.5"), RATE, t1), Ok(()));
        assert_eq!(l.check(ip("127.0.0.5"), RATE, t1), Err(Duration::from_millis(500)));
        // Idle long enough, the whole burst is back.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(l.check(ip("127.0.0.5"), RATE, t2), Ok(()));
        }
        assert!(l.check(ip("127.0.0.5"), RATE, t2).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let l = ClientLimiter::new();
        let now = Instant::now();
        let one = Rate {
            per_second: 1,
            burst: 1,
        };
        assert!(l.check(ip("2001:db8:1:2::1"), one, now).is_ok());
        assert!(l.check(ip("2001:db8:1:2:ffff::9"), one, now).is_err(), "same /64");
        assert!(l.check(ip("2001:db8:1:3::1"), one, now).is_ok(), "next /64");
        assert!(l.check(ip("192.0.2.1"), one, now).is_ok());
        assert!(l.check(ip("::ffff:192.0.2.1"), one, now).is_err(), "the same client");
        assert_ne!(client_key(ip("::c000:201")), client_key(ip("192.0.2.1")));
    }

    #[test]
    fn memory_is_bounded_and_a_flood_of_addresses_does_not_free_a_limited_one() {
        let l = ClientLimiter::new();
        let now = Instant::now();
        let heavy = ip("10.9.9.9");
        while l.check(heavy, RATE, now).is_ok() {}
        for i in 0..200_000u32 {
            assert!(l.check(IpAddr::from(i.to_be_bytes()), RATE, now).is_ok());
        }
        assert!(l.check(heavy, RATE, now).is_err(), "still over its limit");
        assert_eq!(l.allocated(), l.capacity());
    }

    #[test]
    fn nothing_is_allocated_until_used_and_then_once_per_shard() {
        let l = ClientLimiter::new();
        assert_eq!(l.allocated(), 0);
        l.check(ip("127.0.0.1"), RATE, Instant::now()).unwrap();
        assert_eq!(l.allocated(), PER_SHARD);
    }

    #[test]
    fn a_gate_admits_a_burst_then_the_rate_for_everyone_together() {
        let g = RateGate::default();
        let t0 = Instant::now();
        let admitted = (0..50).filter(|_| g.check(RATE, t0).is_ok()).count();
        assert_eq!(admitted, 5, "the burst");
        assert_eq!(g.check(RATE, t0), Err(Duration::from_millis(500)));
        // Over the next 10 s: the rate (2/s), however many ask, and nothing saved up.
        let mut admitted = 0;
        for ms in (10..=10_000).step_by(10) {
            admitted += (0..10)
                .filter(|_| g.check(RATE, t0 + Duration::from_millis(ms)).is_ok())
                .count();
        }
        assert_eq!(admitted, 20);
        // A changed rate applies at once.
        let fast = Rate {
            per_second: 100,
            burst: 10,
        };
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!((0..50).filter(|_| g.check(fast, t1).is_ok()).count(), 10);
    }

    #[test]
    fn a_gate_counts_each_admission_once_across_threads() {
        let g = std::sync::Arc::new(RateGate::default());
        let now = Instant::now();
        let rate = Rate {
            per_second: 1,
            burst: 1000,
        };
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = std::sync::Arc::clone(&g);
                std::thread::spawn(move || (0..1000).filter(|_| g.check(rate, now).is_ok()).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn a_refused_session_is_told_to_come_back_spread_over_a_bursts_refill() {
        let rate = Rate {
            per_second: 100,
            burst: 400,
        };
        let waits: Vec<u64> = (0..100)
            .map(|e| spread_retry_after(Duration::from_millis(10), rate, e))
            .collect();
        assert_eq!(*waits.iter().min().unwrap(), 1);
        assert_eq!(*waits.iter().max().unwrap(), 5, "1 s plus up to the 4 s a burst takes");
        let one = Rate {
            per_second: 50,
            burst: 1,
        };
        assert!((0..10).all(|e| (1..=2).contains(&spread_retry_after(Duration::from_millis(20), one, e))));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
