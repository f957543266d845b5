//! Counters of traffic: monotonic counters, gauges with a maximum, responses by status
//! class, and the sets kept per (backend, server) pair, per backend and per listener.
//! Updated with relaxed atomics on the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A counter that may only grow.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down, remembering its maximum.
#[derive(Debug, Default)]
pub struct Gauge {
    cur: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    pub fn inc(&self) {
        let n = self.cur.fetch_add(1, Relaxed) + 1;
        self.max.fetch_max(n, Relaxed);
    }
    pub fn dec(&self) {
        self.cur.fetch_sub(1, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.cur.load(Relaxed)
    }
    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }
    /// One more until the returned hold is dropped (also when its future is cancelled).
    pub fn hold(&self) -> GaugeHold<'_> {
        self.inc();
        GaugeHold(self)
    }
}

/// Counts one in a [`Gauge`] while it lives.
#[derive(Debug)]
pub struct GaugeHold<'a>(&'a Gauge);

impl Drop for GaugeHold<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// HTTP responses by status class.
#[derive(Debug, Default)]
pub struct StatusClasses([Counter; 6]);

impl StatusClasses {
    /// Count a status; 0 counts as "other" (no response).
    pub fn count(&self, status: u16) {
        let i = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        self.0[i].inc();
    }
    /// Responses of class `n`xx (n in 1..=5), or other for 0.
    pub fn get(&self, class: usize) -> u64 {
        self.0.get(class).map_or(0, Counter::get)
    }
}

/// Upper bounds, in seconds, of the request-duration histogram's buckets (Prometheus
/// `le`); the last bucket takes everything longer. Engine.IO long-polls are held ~25 s,
/// hence the 30 s and 60 s buckets.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// The same bounds in microseconds, for the hot path.
const DURATION_BUCKETS_US: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];

/// A histogram of request durations (tunnels left out): one counter per bucket of
/// [`DURATION_BUCKETS`] plus one for longer, and the sum.
#[derive(Debug, Default)]
pub struct Durations {
    buckets: [Counter; DURATION_BUCKETS.len() + 1],
    sum_us: Counter,
}

impl Durations {
    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = DURATION_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].inc();
        self.sum_us.add(us);
    }

    /// Cumulative counts per bound of [`DURATION_BUCKETS`] (Prometheus buckets), the
    /// count of all observations and their sum in seconds.
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        let mut running = 0;
        let cumulative = self.buckets[..DURATION_BUCKETS.len()]
            .iter()
            .map(|c| {
                running += c.get();
                running
            })
            .collect();
        let count = running + self.buckets[DURATION_BUCKETS.len()].get();
        (cumulative, count, self.sum_us.get() as f64 / 1e6)
    }
}

/// How a sticky backend chose a server for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyDecision {
    Sid,
    Cookie,
    Hash,
    /// The pinned server could not take it and another was chosen.
    Redispatch,
}

/// Counters of traffic, shared by the backend totals and each (backend, server) pair.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests and tunnels in progress, and the most at once.
    pub sessions: Gauge,
    pub sessions_total: Counter,
    /// Request bytes (client → server), response bytes (server → client).
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub responses: StatusClasses,
    /// Connections to the server that failed.
    pub connect_errors: Counter,
    /// Responses that failed after connecting (reset, timeout, bad framing).
    pub response_errors: Counter,
    pub retries: Counter,
    pub redispatches: Counter,
    /// Connections opened to the server (HAProxy `connect`), and requests sent on a
    /// kept-alive one (`reuse`).
    pub connects: Counter,
    pub reuses: Counter,
    /// Open WebSocket tunnels and bytes through them.
    pub tunnels: Gauge,
    pub tunnels_total: Counter,
    pub ws_bytes_in: Counter,
    pub ws_bytes_out: Counter,
    pub sticky_sid: Counter,
    pub sticky_cookie: Counter,
    pub sticky_hash: Counter,
    pub sticky_redispatch: Counter,
    /// Engine.IO `400 Session ID unknown` answers (from the server, or by edgepin).
    pub sid_unknown: Counter,
    /// Sum of request durations, microseconds (with `sessions_total`: the average).
    pub time_us_total: Counter,
    /// Durations of requests that did not become tunnels.
    pub durations: Durations,
}

/// What one finished request (or tunnel) adds to the counters.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub ws_bytes_in: u64,
    pub ws_bytes_out: u64,
    /// It was an open tunnel (counted in `tunnels` until now).
    pub tunnel: bool,
}

impl Traffic {
    /// A request counted in `sessions` has ended.
    pub fn finished(&self, f: &Finished) {
        self.sessions.dec();
        self.responses.count(f.status);
        self.bytes_in.add(f.bytes_in);
        self.bytes_out.add(f.bytes_out);
        self.time_us_total.add(f.duration.as_micros() as u64);
        self.ws_bytes_in.add(f.ws_bytes_in);
        self.ws_bytes_out.add(f.ws_bytes_out);
        if f.tunnel {
            self.tunnels.dec();
        } else {
            self.durations.observe(f.duration);
        }
    }

    pub fn sticky(&self, d: StickyDecision) {
        match d {
            StickyDecision::Sid => self.sticky_sid.inc(),
            StickyDecision::Cookie => self.sticky_cookie.inc(),
            StickyDecision::Hash => self.sticky_hash.inc(),
            StickyDecision::Redispatch => self.sticky_redispatch.inc(),
        }
    }
}

/// Backend-level counters: traffic plus what happens before a server is chosen.
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub traffic: Traffic,
    /// Requests refused with 503 because no server could take them.
    pub no_server: Counter,
    /// Requests answered by edgepin itself with an Engine.IO 400 (pinned server gone).
    pub sid_refused: Counter,
    /// Queue timeouts (503 after waiting for a slot).
    pub queue_timeouts: Counter,
    /// Requests refused because the queue was full (503 at once).
    pub queue_full: Counter,
    /// Retries refused because the retry budget was spent.
    pub retry_budget_exhausted: Counter,
    /// New Engine.IO sessions refused (503) over the backend's `new_sessions` cap.
    pub new_sessions_refused: Counter,
}

/// Listener (frontend) counters.
#[derive(Debug, Default)]
pub struct FrontendCounters {
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Connections refused at `limits.max_connections`.
    pub connections_refused: Counter,
    /// Connections closed because their PROXY header or TLS handshake took longer than
    /// `timeouts.handshake`.
    pub handshake_timeouts: Counter,
    pub requests_total: Counter,
    /// Requests refused before routing (431, 413, 400, upgrade not allowed).
    pub request_errors: Counter,
    pub denied: Counter,
    pub redirects: Counter,
    pub responses: StatusClasses,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_bucket_whose_bound_holds_them() {
        let d = Durations::default();
        for ms in [0.5, 1.0, 1.2, 30.0, 999.0, 25_000.0, 90_000.0] {
            d.observe(Duration::from_secs_f64(ms / 1e3));
        }
        let (cumulative, count, sum) = d.read();
        assert_eq!(cumulative.len(), DURATION_BUCKETS.len());
        // le=0.001: 0.5 ms and exactly 1 ms; le=0.0025: + 1.2 ms; le=0.05: + 30 ms;
        // le=1: + 999 ms; le=30: + 25 s; 90 s only in the count.
        assert_eq!(cumulative[0], 2);
        assert_eq!(cumulative[1], 3);
        assert_eq!(cumulative[5], 4);
        assert_eq!(cumulative[9], 5);
        assert_eq!(cumulative[13], 6);
        assert_eq!(cumulative[14], 6);
        assert_eq!(count, 7);
        assert!((sum - 116.0317).abs() < 1e-3, "{sum}");
    }

    #[test]
    fn a_tunnel_is_not_a_request_duration() {
        let t = Traffic::default();
        let f = Finished {
            status: 101,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::from_secs(3600),
            ws_bytes_in: 0,
            ws_bytes_out: 0,
            tunnel: true,
        };
        t.sessions.inc();
        t.tunnels.inc();
        t.finished(&f);
        assert_eq!(t.durations.read().1, 0);
        t.sessions.inc();
        t.finished(&Finished {
            status: 200,
            duration: Duration::from_millis(3),
            tunnel: false,
            ..f
        });
        assert_eq!(t.durations.read().1, 1);
    }
}
