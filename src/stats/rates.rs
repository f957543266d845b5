//! Per-second rates (HAProxy's "session rate" columns), derived from the running totals.
//!
//! A sampler task reads the totals once a second and keeps, per key, the last total, the
//! rate over the last second and the highest rate seen since the process started. Keys
//! are names (`frontend/https`, `backend/api`, `server/api/w1`), so rates survive a reload
//! like the counters they come from. This module only reads counters; it changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::runtime::Shared;

/// How often the totals are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The rate of one total: per second over the last sample, and the highest seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rate {
    pub current: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    total: u64,
    at: Instant,
    rate: Rate,
}

/// The latest rates by key.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<HashMap<String, Sample>>,
}

/// The key of a listener's connection rate.
pub fn frontend_key(name: &str) -> String {
    format!("frontend/{name}")
}

/// The key of a listener's request rate.
pub fn requests_key(name: &str) -> String {
    format!("requests/{name}")
}

/// The key of a backend's session rate.
pub fn backend_key(name: &str) -> String {
    format!("backend/{name}")
}

/// The key of a (backend, server) pair's session rate.
pub fn server_key(backend: &str, server: &str) -> String {
    format!("server/{backend}/{server}")
}

impl Rates {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the totals seen at `at`.
    pub fn record(&self, totals: Vec<(String, u64)>, at: Instant) {
        let mut samples = self.lock();
        for (key, total) in totals {
            match samples.get_mut(&key) {
                Some(s) => {
                    let elapsed_ms = at.saturating_duration_since(s.at).as_millis() as u64;
                    if elapsed_ms == 0 {
                        continue;
                    }
                    let current = total.saturating_sub(s.total) * 1000 / elapsed_ms;
                    s.rate = Rate {
                        current,
                        max: s.rate.max.max(current),
                    };
                    s.total = total;
                    s.at = at;
                }
                None => {
                    samples.insert(
                        key,
                        Sample {
                            total,
                            at,
                            rate: Rate::default(),
                        },
                    );
                }
            }
        }
    }

    /// The rate of `key` (zero before its second sample).
    pub fn get(&self, key: &str) -> Rate {
        self.lock().get(key).map(|s| s.rate).unwrap_or_default()
    }
}

/// The totals the rates are computed from, by key.
pub fn totals(shared: &Shared) -> Vec<(String, u64)> {
    let snapshot = shared.snapshot();
    let mut out = vec![
        (frontend_key("https"), shared.https.connections_total.get()),
        (frontend_key("http"), shared.http.connections_total.get()),
        (requests_key("https"), shared.https.requests_total.get()),
        (requests_key("http"), shared.http.requests_total.get()),
    ];
    for b in &snapshot.backends {
        out.push((backend_key(b.name()), b.counters.traffic.sessions_total.get()));
        for m in &b.members {
            out.push((server_key(b.name(), &m.name), m.traffic.sessions_total.get()));
        }
    }
    out
}

/// Sample `shared` every second until `stop` resolves.
pub async fn run(shared: Arc<Shared>, rates: Arc<Rates>, stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => rates.record(totals(&shared), Instant::now()),
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_change_per_second_and_max_is_kept() {
        let rates = Rates::default();
        let t0 = Instant::now();
        rates.record(vec![("k".into(), 100)], t0);
        assert_eq!(rates.get("k"), Rate::default(), "one sample gives no rate");
        rates.record(vec![("k".into(), 130)], t0 + Duration::from_secs(1));
        assert_eq!(rates.get("k"), Rate { current: 30, max: 30 });
        rates.record(vec![("k".into(), 140)], t0 + Duration::from_secs(3));
        assert_eq!(rates.get("k"), Rate { current: 5, max: 30 });
        assert_eq!(rates.get("unknown"), Rate::default());
    }
}
