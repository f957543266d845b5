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
    /// Connections whose PROXY header was bad or whose TLS handshake failed.
    pub handshake_failures: Counter,
    pub requests_total: Counter,
    /// Requests refused before routing (431, 413, 400, upgrade not allowed).
    pub request_errors: Counter,
    pub denied: Counter,
    pub redirects: Counter,
    pub responses: StatusClasses,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}
