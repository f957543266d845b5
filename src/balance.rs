//! Server selection algorithms: weighted round robin, least connections, and weighted
//! rendezvous hashing with bounded loads; plus the retry budget.
//!
//! The algorithms see servers only as indexes with a weight, an eligibility predicate and
//! (for hashing) a stable id and a load; `proxy` decides what is eligible (UP, not full,
//! not already tried) and `sticky` decides when hashing applies. A server in slow start
//! (`state::Ramp`) has its weight scaled by its share: least connections and hashing
//! take the scaled weight; round robin keeps its sequence of configured weights and
//! takes a ramping server's slot only that share of the time. Nothing here allocates on
//! the round-robin path or takes a lock.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use arc_swap::ArcSwap;

use crate::state::{FULL_SHARE, weight_epoch};

/// Weighted round robin over a precomputed smooth sequence (nginx's interleaving), so
/// weights 3:1 give `a a b a`, not `a a a b`. Ineligible slots are skipped by drawing a
/// new ticket, so a DOWN server's share spreads evenly over the others. A server in slow
/// start keeps its slots but takes each only with its share (relative to the largest
/// share among eligible servers), so what it leaves spreads over the others the same way:
/// its part of the picks is its weight × share over the sum of weights × shares.
#[derive(Debug)]
pub struct RoundRobin {
    seq: ArcSwap<Sequence>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Sequence {
    epoch: u64,
    weights: Vec<u32>,
    order: Vec<u16>,
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin {
            seq: ArcSwap::from_pointee(Sequence {
                epoch: u64::MAX,
                ..Default::default()
            }),
            next: AtomicUsize::new(0),
        }
    }
}

impl RoundRobin {
    /// Pick among `n` servers; `eligible(i)` filters them, `share(i)` is each one's
    /// slow-start share of its weight ([`FULL_SHARE`] when not ramping).
    pub fn pick(
        &self,
        weight: impl Fn(usize) -> u32,
        n: usize,
        eligible: impl Fn(usize) -> bool,
        share: impl Fn(usize) -> u32,
    ) -> Option<usize> {
        let seq = self.sequence(&weight, n);
        let len = seq.order.len();
        if len == 0 {
            return None;
        }
        // Each ticket is one slot of the sequence; an ineligible slot, or the slot of a
        // ramping server that passes it up, costs another ticket.
        for _ in 0..len {
            let ticket = self.next.fetch_add(1, Relaxed);
            let i = usize::from(seq.order[ticket % len]);
            if eligible(i) && takes_slot(share(i), ticket, || top_share(n, &weight, &eligible, &share)) {
                return Some(i);
            }
        }
        // Every slot we drew was passed up: any eligible server, the largest share first.
        (0..n)
            .filter(|&i| weight(i) > 0 && eligible(i))
            .max_by_key(|&i| (share(i), std::cmp::Reverse(i)))
    }

    fn sequence(&self, weight: &impl Fn(usize) -> u32, n: usize) -> Arc<Sequence> {
        let epoch = weight_epoch();
        let seq = self.seq.load_full();
        if seq.epoch == epoch && seq.weights.len() == n {
            return seq;
        }
        let weights: Vec<u32> = (0..n).map(weight).collect();
        if seq.weights == weights {
            return seq;
        }
        let fresh = Arc::new(Sequence {
            epoch,
            order: smooth_sequence(&weights),
            weights,
        });
        self.seq.store(Arc::clone(&fresh));
        fresh
    }
}

/// Whether a server with slow-start `share` takes the slot of `ticket`: always at full
/// share, else `share / top` of its slots, chosen by a hash of the ticket (`top`: the
/// largest share among the eligible servers, asked for only when needed, so servers all
/// ramping together still share evenly).
fn takes_slot(share: u32, ticket: usize, top: impl FnOnce() -> u32) -> bool {
    if share >= FULL_SHARE {
        return true;
    }
    let top = top().max(share).max(1);
    mix64(ticket as u64) % u64::from(top) < u64::from(share)
}

/// The largest slow-start share among the eligible servers with a weight.
fn top_share(
    n: usize,
    weight: impl Fn(usize) -> u32,
    eligible: impl Fn(usize) -> bool,
    share: impl Fn(usize) -> u32,
) -> u32 {
    (0..n)
        .filter(|&i| weight(i) > 0 && eligible(i))
        .map(share)
        .max()
        .unwrap_or(FULL_SHARE)
}

/// nginx's smooth weighted round robin, unrolled over one full cycle.
fn smooth_sequence(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u16);
    }
    order
}

/// Least connections, weighted: the eligible server with the lowest `load / weight`;
/// ties rotate so equal servers share.
#[derive(Debug, Default)]
pub struct LeastConn {
    rotate: AtomicUsize,
}

impl LeastConn {
    pub fn pick(
        &self,
        n: usize,
        weight: impl Fn(usize) -> u32,
        load: impl Fn(usize) -> u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let w = u64::from(weight(i));
            if w == 0 || !eligible(i) {
                continue;
            }
            let l = load(i);
            // l / w < bl / bw  ⇔  l * bw < bl * w
            let better = match best {
                None => true,
                Some((_, bl, bw)) => u128::from(l) * u128::from(bw) < u128::from(bl) * u128::from(w),
            };
            if better {
                best = Some((i, l, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// A server as consistent hashing sees it.
#[derive(Debug, Clone, Copy)]
pub struct HashCandidate {
    /// Index the caller uses for this server.
    pub index: usize,
    /// Stable id derived from the server's name ([`name_id`]).
    pub id: u64,
    pub weight: u32,
    /// Open sessions on it now.
    pub load: u64,
}

/// Weighted rendezvous hashing with bounded loads.
///
/// Every (key, server) pair gets a score; the key's servers in score order are its
/// preference list, which depends only on the key and the server ids, so adding or
/// removing one of N servers moves about 1/N of keys, and every edgepin with the same
/// config agrees. A server whose load is already above `factor` × its weighted share of
/// (total load + 1) is skipped, so many clients behind one address (a NAT) spill over to
/// their next choice instead of piling onto one server.
pub fn pick_bounded(key: u64, candidates: &[HashCandidate], factor: f64) -> Option<usize> {
    let total_weight: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    if total_weight == 0 {
        return None;
    }
    let total_load: u64 = candidates.iter().map(|c| c.load).sum();
    let mut ranked: Vec<(f64, &HashCandidate)> = candidates
        .iter()
        .filter(|c| c.weight > 0)
        .map(|c| (score(key, c.id, c.weight), c))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let bound = |c: &HashCandidate| {
        let share = (total_load + 1) as f64 * f64::from(c.weight) / total_weight as f64;
        (share * factor).ceil() as u64
    };
    ranked
        .iter()
        .find(|(_, c)| c.load < bound(c))
        .or(ranked.first())
        .map(|(_, c)| c.index)
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` uniform in (0, 1) from the hash.
fn score(key: u64, id: u64, weight: u32) -> f64 {
    let h = mix64(key ^ id);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

/// The hash key of a client address: all of it (nginx's `ip_hash` uses only the first
/// three octets of IPv4, which puts a whole /24 on one server).
pub fn addr_key(ip: IpAddr) -> u64 {
    let bits: u128 = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    mix64((bits as u64) ^ mix64((bits >> 64) as u64 ^ 0x9e37_79b9_7f4a_7c15))
}

/// A stable 64-bit id for a server name: the same in every process and version.
pub fn name_id(name: &str) -> u64 {
    // FNV-1a, then mixed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// splitmix64's finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Limits retries so a failing fleet does not multiply load: per second, at most
/// `min_per_sec` retries plus a fifth of the requests seen.
#[derive(Debug)]
pub struct RetryBudget {
    /// Second (since `origin`) of the current window, requests and retries in it.
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    origin: std::time::Instant,
    min_per_sec: u64,
}

impl RetryBudget {
    pub fn new(min_per_sec: u64) -> RetryBudget {
        RetryBudget {
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            origin: std::time::Instant::now(),
            min_per_sec,
        }
    }

    fn roll(&self) {
        let now = self.origin.elapsed().as_secs();
        let w = self.window.load(Relaxed);
        if now != w && self.window.compare_exchange(w, now, Relaxed, Relaxed).is_ok() {
            self.requests.store(0, Relaxed);
            self.retries.store(0, Relaxed);
        }
    }

    pub fn on_request(&self) {
        self.roll();
        self.requests.fetch_add(1, Relaxed);
    }

    /// Spend one retry if the budget allows.
    pub fn try_retry(&self) -> bool {
        self.roll();
        let allowed = self.min_per_sec + self.requests.load(Relaxed) / 5;
        self.retries
            .fetch_update(Relaxed, Relaxed, |r| (r < allowed).then_some(r + 1))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn full(_: usize) -> u32 {
        FULL_SHARE
    }

    fn counts(picks: impl Iterator<Item = usize>, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for p in picks {
            c[p] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exact_and_smooth() {
        let rr = RoundRobin::default();
        let w = [1u32, 1, 1, 1];
        let c = counts((0..400).map(|_| rr.pick(|i| w[i], 4, |_| true, full).unwrap()), 4);
        assert_eq!(c, vec![100; 4]);

        let rr = RoundRobin::default();
        let w = [3u32, 1];
        let first: Vec<usize> = (0..4).map(|_| rr.pick(|i| w[i], 2, |_| true, full).unwrap()).collect();
        assert_eq!(first, vec![0, 0, 1, 0], "interleaved, not 3 in a row then 1");
        let c = counts((0..396).map(|_| rr.pick(|i| w[i], 2, |_| true, full).unwrap()), 2);
        assert_eq!(c, vec![297, 99]);
    }

    #[test]
    fn round_robin_spreads_a_down_servers_share_evenly() {
        let rr = RoundRobin::default();
        let w = [1u32; 4];
        let c = counts((0..3000).map(|_| rr.pick(|i| w[i], 4, |i| i != 1, full).unwrap()), 4);
        assert_eq!(c[1], 0);
        for i in [0, 2, 3] {
            assert!((900..=1100).contains(&c[i]), "{c:?}");
        }
        assert_eq!(rr.pick(|i| w[i], 4, |_| false, full), None);
    }

    #[test]
    fn weight_zero_takes_nothing() {
        let rr = RoundRobin::default();
        let w = [0u32, 2];
        assert!((0..10).all(|_| rr.pick(|i| w[i], 2, |_| true, full) == Some(1)));
    }

    #[test]
    fn least_conn_prefers_lowest_load_per_weight() {
        let lc = LeastConn::default();
        let load = [5u64, 2, 2];
        let w = [1u32, 1, 2];
        assert_eq!(lc.pick(3, |i| w[i], |i| load[i], |_| true), Some(2));
        assert_eq!(lc.pick(3, |i| w[i], |i| load[i], |i| i != 2), Some(1));
    }

    fn cands(names: &[&str], loads: &[u64]) -> Vec<HashCandidate> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| HashCandidate {
                index: i,
                id: name_id(n),
                weight: 1,
                load: loads[i],
            })
            .collect()
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919))
    }

    #[test]
    fn removing_one_of_five_moves_about_a_fifth() {
        let names = ["w1", "w2", "w3", "w4", "w5"];
        let all = cands(&names, &[0; 5]);
        let four: Vec<HashCandidate> = all.iter().copied().filter(|c| c.index != 2).collect();
        let before: Vec<usize> = (0..1000)
            .map(|i| pick_bounded(addr_key(ip(i)), &all, f64::INFINITY).unwrap())
            .collect();
        let after: Vec<usize> = (0..1000)
            .map(|i| pick_bounded(addr_key(ip(i)), &four, f64::INFINITY).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Exactly the keys that were on w3 move, and nothing else.
        let on_w3 = before.iter().filter(|&&s| s == 2).count();
        assert_eq!(moved, on_w3);
        assert!(moved <= 300, "{moved} of 1000 moved");
        let c = counts(before.into_iter(), 5);
        assert!(c.iter().all(|&n| (150..=250).contains(&n)), "{c:?}");
    }

    #[test]
    fn bounded_loads_spill_a_nat_over() {
        // 500 sessions from 20 addresses, 25 each, arriving interleaved.
        let names = ["w1", "w2", "w3", "w4"];
        let mut loads = [0u64; 4];
        for k in 0..500u32 {
            let c = cands(&names, &loads);
            let s = pick_bounded(addr_key(ip(k % 20)), &c, 1.05).unwrap();
            loads[s] += 1;
        }
        let max = *loads.iter().max().unwrap() as f64;
        let min = *loads.iter().min().unwrap() as f64;
        assert!(max / min <= 1.5, "{loads:?}");
    }

    #[test]
    fn same_key_same_server_without_load() {
        let c = cands(&["a", "b", "c"], &[0, 0, 0]);
        let mut seen = HashMap::new();
        for i in 0..100 {
            let k = addr_key(ip(i));
            let s = pick_bounded(k, &c, 1.25).unwrap();
            assert_eq!(*seen.entry(i).or_insert(s), pick_bounded(k, &c, 1.25).unwrap());
        }
    }

    #[test]
    fn round_robin_gives_a_ramping_server_its_share_and_spreads_the_rest() {
        let rr = RoundRobin::default();
        let w = [1u32; 4];
        // Server 3 at a quarter of its weight: 0.25 / 3.25 of the picks.
        let share = |i: usize| if i == 3 { 250 } else { FULL_SHARE };
        let c = counts((0..13_000).map(|_| rr.pick(|i| w[i], 4, |_| true, share).unwrap()), 4);
        assert!((800..=1200).contains(&c[3]), "{c:?}");
        for i in 0..3 {
            assert!((3700..=4300).contains(&c[i]), "{c:?}");
        }
        // Alone (the others DOWN), it takes everything: a ramp never refuses work.
        assert!((0..100).all(|_| rr.pick(|i| w[i], 4, |i| i == 3, share) == Some(3)));
    }

    #[test]
    fn round_robin_stays_even_when_every_server_ramps_together() {
        let rr = RoundRobin::default();
        let w = [1u32, 1, 2];
        let c = counts((0..4000).map(|_| rr.pick(|i| w[i], 3, |_| true, |_| 50).unwrap()), 3);
        assert!((900..=1100).contains(&c[0]) && (900..=1100).contains(&c[1]), "{c:?}");
        assert!((1800..=2200).contains(&c[2]), "{c:?}");
    }

    #[test]
    fn least_conn_fills_a_ramping_server_to_its_share_of_the_load() {
        let lc = LeastConn::default();
        // Three loaded servers and one back at 5 % of its weight.
        let mut load = [100u64, 100, 100, 0];
        let weight = [1000u32, 1000, 1000, 50];
        let mut to_new = 0;
        for _ in 0..300 {
            let i = lc.pick(4, |i| weight[i], |i| load[i], |_| true).unwrap();
            load[i] += 1;
            to_new += usize::from(i == 3);
        }
        // Its load follows its weight: 5 % of a loaded server's, not a stampede.
        assert!((5..=12).contains(&to_new), "{load:?}");
    }

    #[test]
    fn hashing_gives_a_ramping_server_its_share_and_only_more_as_it_grows() {
        let names = ["w1", "w2", "w3", "w4"];
        let at = |share: u32| -> Vec<usize> {
            let mut c = cands(&names, &[0; 4]);
            for x in &mut c {
                x.weight = if x.index == 3 { share } else { FULL_SHARE };
            }
            (0..4000)
                .map(|i| pick_bounded(addr_key(ip(i)), &c, f64::INFINITY).unwrap())
                .collect()
        };
        let (early, half, full) = (at(50), at(500), at(FULL_SHARE));
        let on_new = |picks: &[usize]| picks.iter().filter(|&&s| s == 3).count();
        // Its share of new clients is its weight's: 0.05 / 3.05, 0.5 / 3.5, 1 / 4.
        assert!((30..=110).contains(&on_new(&early)), "{}", on_new(&early));
        assert!((470..=680).contains(&on_new(&half)), "{}", on_new(&half));
        assert!((880..=1120).contains(&on_new(&full)), "{}", on_new(&full));
        // As it grows, clients only move to it, never between the others.
        for (a, b) in [(&early, &half), (&half, &full)] {
            assert!(a.iter().zip(b).all(|(x, y)| x == y || *y == 3));
        }
    }

    #[test]
    fn bounded_hashing_fills_a_ramping_server_only_to_its_share_of_the_load() {
        let names = ["w1", "w2", "w3", "w4"];
        let mut loads = [100u64, 100, 100, 0];
        let mut to_new = 0;
        for k in 0..300u32 {
            let mut c = cands(&names, &loads);
            c[3].weight = 50;
            for x in &mut c[..3] {
                x.weight = FULL_SHARE;
            }
            let s = pick_bounded(addr_key(ip(k)), &c, 1.05).unwrap();
            loads[s] += 1;
            to_new += usize::from(s == 3);
        }
        // Without the ramp the empty server would take all 300 (the others are over
        // their bound); at 5 % it holds about 5 % of a loaded server's sessions.
        assert!((3..=15).contains(&to_new), "{loads:?}");
    }

    #[test]
    fn retry_budget_allows_a_fifth_plus_a_floor() {
        let b = RetryBudget::new(2);
        for _ in 0..10 {
            b.on_request();
        }
        let allowed = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(allowed, 4);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Up to 8 servers with distinct names, weights 0–256 (0 often), and loads in
        /// the range of open sessions (sums cannot overflow).
        fn servers() -> impl Strategy<Value = Vec<HashCandidate>> {
            proptest::collection::vec((prop_oneof![Just(0u32), 0u32..=256], 0u64..1_000_000), 0..8).prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (weight, load))| HashCandidate {
                        index: i,
                        id: name_id(&format!("w{i}")),
                        weight,
                        load,
                    })
                    .collect()
            })
        }

        fn factor() -> impl Strategy<Value = f64> {
            prop_oneof![Just(f64::INFINITY), Just(1.0), Just(1.05), 1.0f64..4.0]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn a_pick_is_a_weighted_candidate_whatever_their_order(
                cands in servers(),
                key in any::<u64>(),
                factor in factor(),
                shuffled in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
            ) {
                let picked = pick_bounded(key, &cands, factor);
                let any_weight = cands.iter().any(|c| c.weight > 0);
                prop_assert_eq!(picked.is_some(), any_weight);
                if let Some(i) = picked {
                    let c = cands.iter().find(|c| c.index == i);
                    prop_assert!(c.is_some_and(|c| c.weight > 0), "weight 0 is never picked");
                }
                prop_assert_eq!(pick_bounded(key, &cands, factor), picked, "deterministic");
                let mut reordered = cands.clone();
                let n = reordered.len().max(1);
                reordered.rotate_left((shuffled as usize) % n);
                reordered.reverse();
                prop_assert_eq!(pick_bounded(key, &reordered, factor), picked, "order does not matter");
            }

            #[test]
            fn a_server_over_its_bound_is_picked_only_when_all_are(
                cands in servers(),
                key in any::<u64>(),
                factor in 1.0f64..4.0,
            ) {
                let total_weight: u64 = cands.iter().map(|c| u64::from(c.weight)).sum();
                let total_load: u64 = cands.iter().map(|c| c.load).sum();
                let over = |c: &HashCandidate| {
                    let share = (total_load + 1) as f64 * f64::from(c.weight) / total_weight as f64;
                    c.load >= (share * factor).ceil() as u64
                };
                if let Some(i) = pick_bounded(key, &cands, factor) {
                    let c = cands.iter().find(|c| c.index == i).copied();
                    if c.is_some_and(|c| over(&c)) {
                        prop_assert!(cands.iter().filter(|c| c.weight > 0).all(over));
                    }
                }
            }

            #[test]
            fn without_a_bound_only_the_removed_servers_keys_move(
                cands in servers(),
                key in any::<u64>(),
                remove in any::<usize>(),
            ) {
                let picked = pick_bounded(key, &cands, f64::INFINITY);
                let zero_load: Vec<HashCandidate> = cands.iter().map(|c| HashCandidate { load: 0, ..*c }).collect();
                prop_assert_eq!(pick_bounded(key, &zero_load, f64::INFINITY), picked, "loads do not matter");
                if !cands.is_empty() {
                    let gone = cands[remove % cands.len()].index;
                    let rest: Vec<HashCandidate> = cands.iter().copied().filter(|c| c.index != gone).collect();
                    let after = pick_bounded(key, &rest, f64::INFINITY);
                    if picked != Some(gone) {
                        prop_assert_eq!(after, picked);
                    }
                }
            }
        }
    }
}
