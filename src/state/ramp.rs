//! Slow start: a server that comes back into service (back from DOWN, from MAINT or
//! DRAIN to READY, added by a reload, moved to a new address) does not take its whole
//! share of new work at once. For its `slow_start` window its weight is scaled by a share
//! that grows linearly from [`MIN_SHARE`] to [`FULL_SHARE`] (HAProxy's `slowstart`).
//!
//! A [`Ramp`] is two atomics in the server's state: when the ramp began and how long it
//! lasts at most (the longest window of the backends listing the server; each backend
//! reads the share for its own window). Reading the share costs one atomic load when the
//! server is not ramping, and a clock read only while it is. [`share`] is the decision;
//! the balance algorithms apply it (`balance`, `proxy::select`), the health and admin
//! transitions start it (`ServerState`). Nothing here refuses work: a server alone in its
//! backend takes everything, whatever its share.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A whole weight, in thousandths.
pub const FULL_SHARE: u32 = 1000;

/// The share a ramp starts at: 5 % of the weight (never zero, so a returning server
/// alone among servers that cannot take work still gets it, and it is visibly in use).
pub const MIN_SHARE: u32 = 50;

/// The share of its weight a server gets `elapsed` into a slow start of `window`: linear
/// from [`MIN_SHARE`] to [`FULL_SHARE`], full once the window has passed (or without one).
pub fn share(elapsed: Duration, window: Duration) -> u32 {
    if window.is_zero() || elapsed >= window {
        return FULL_SHARE;
    }
    let part = elapsed.as_nanos() * u128::from(FULL_SHARE) / window.as_nanos();
    (part as u32).clamp(MIN_SHARE, FULL_SHARE)
}

/// One server's slow start: when it began (if it is on) and the window it ramps over.
#[derive(Debug)]
pub struct Ramp {
    /// Nanoseconds after `origin` at which the ramp began (before it, for a ramp taken
    /// over from another process); [`OFF`]: not ramping.
    since: AtomicI64,
    /// The longest window in nanoseconds; 0: slow start is off for this server.
    window: AtomicU64,
    /// Start at the server's next UP rather than now ([`Ramp::start_when_up`]).
    armed: AtomicBool,
    origin: Instant,
}

/// `since` of a server not ramping.
const OFF: i64 = i64::MIN;

impl Default for Ramp {
    fn default() -> Self {
        Ramp {
            since: AtomicI64::new(OFF),
            window: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            origin: Instant::now(),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `d` in signed nanoseconds, bounded so that differences cannot overflow.
fn signed(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX).min(i64::MAX / 4)
}

impl Ramp {
    /// The longest window of the next ramps (and of one under way); zero turns slow
    /// start off.
    pub fn set_window(&self, window: Duration) {
        self.window.store(nanos(window), Relaxed);
    }

    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window.load(Relaxed))
    }

    /// The server came back into service now: ramp from the start (if it has a window).
    pub fn start(&self) {
        self.start_at(Instant::now());
    }

    fn start_at(&self, at: Instant) {
        self.begin(self.offset(at));
    }

    fn begin(&self, since: i64) {
        if self.window.load(Relaxed) != 0 {
            self.since.store(since, Relaxed);
        }
    }

    /// `at` in nanoseconds after `origin`.
    fn offset(&self, at: Instant) -> i64 {
        signed(at.saturating_duration_since(self.origin))
    }

    /// Full weight from now on, whatever the ramp had left (and none at the next UP).
    pub fn end(&self) {
        self.armed.store(false, Relaxed);
        self.since.store(OFF, Relaxed);
    }

    /// Start when a check next finds the server UP rather than now: for a server that
    /// takes no work until its first check passes (a discovered one), so that the window
    /// is not spent while it waits.
    pub fn start_when_up(&self) {
        self.armed.store(true, Relaxed);
    }

    /// Whether a ramp waits for the next UP (clearing it): the health transition asks.
    pub fn take_armed(&self) -> bool {
        self.armed.swap(false, Relaxed)
    }

    /// Take over a ramp from elsewhere (a process being upgraded): `Some(elapsed)` goes on
    /// as if it had begun `elapsed` ago (even before this process started), `None` means
    /// full weight now.
    pub fn resume(&self, elapsed: Option<Duration>) {
        match elapsed {
            Some(elapsed) => self.begin(self.offset(Instant::now()) - signed(elapsed)),
            None => self.end(),
        }
    }

    /// How long the ramp under way has run (None: not ramping).
    pub fn elapsed(&self) -> Option<Duration> {
        self.elapsed_at(Instant::now())
    }

    fn elapsed_at(&self, now: Instant) -> Option<Duration> {
        let since = self.since.load(Relaxed);
        if since == OFF {
            return None;
        }
        Some(Duration::from_nanos(
            u64::try_from(self.offset(now) - since).unwrap_or(0),
        ))
    }

    /// The share of its weight the server gets now in a backend whose window is
    /// `window` ([`FULL_SHARE`] when not ramping). The first read after the longest window
    /// ends the ramp, so later reads take no clock.
    pub fn share_within(&self, window: Duration) -> u32 {
        if self.since.load(Relaxed) == OFF {
            return FULL_SHARE;
        }
        self.share_at(Instant::now(), window)
    }

    /// The share over the longest window.
    pub fn share(&self) -> u32 {
        self.share_within(self.window())
    }

    fn share_at(&self, now: Instant, window: Duration) -> u32 {
        let since = self.since.load(Relaxed);
        let Some(elapsed) = self.elapsed_at(now) else {
            return FULL_SHARE;
        };
        if share(elapsed, self.window()) == FULL_SHARE {
            // Over in every backend. Only this ramp: one started meanwhile is left alone.
            let _ = self.since.compare_exchange(since, OFF, Relaxed, Relaxed);
            return FULL_SHARE;
        }
        share(elapsed, window)
    }

    /// Whether the server is in slow start now (in the backend with its longest window).
    pub fn active(&self) -> bool {
        self.share() < FULL_SHARE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_share_grows_linearly_from_the_floor_to_full_over_the_window() {
        let w = S(10_000);
        assert_eq!(share(S(0), w), MIN_SHARE, "never zero");
        assert_eq!(share(S(100), w), MIN_SHARE, "1 % is below the floor");
        assert_eq!(share(S(2_500), w), 250);
        assert_eq!(share(S(5_000), w), 500);
        assert_eq!(share(S(9_990), w), 999);
        assert_eq!(share(S(10_000), w), FULL_SHARE);
        assert_eq!(share(S(60_000), w), FULL_SHARE);
        assert_eq!(share(S(0), Duration::ZERO), FULL_SHARE, "no window: no ramp");
        let mut last = 0;
        for ms in (0..=10_000).step_by(250) {
            let s = share(S(ms), w);
            assert!(s >= last, "monotonic at {ms} ms");
            last = s;
        }
    }

    #[test]
    fn a_ramp_runs_its_window_then_ends_by_itself() {
        let r = Ramp::default();
        r.set_window(S(1_000));
        let t0 = Instant::now();
        r.start_at(t0);
        let w = r.window();
        assert_eq!(r.share_at(t0, w), MIN_SHARE);
        assert_eq!(r.share_at(t0 + S(400), w), 400);
        assert_eq!(r.share_at(t0 + S(400), S(500)), 800, "a backend with a shorter window");
        assert_eq!(r.share_at(t0 + S(400), Duration::ZERO), FULL_SHARE, "one without");
        assert!(r.elapsed_at(t0 + S(400)).is_some());
        assert_eq!(r.share_at(t0 + S(600), S(500)), FULL_SHARE);
        assert!(r.elapsed_at(t0 + S(600)).is_some(), "still on for the longest window");
        assert_eq!(r.share_at(t0 + S(1_000), w), FULL_SHARE);
        assert_eq!(r.elapsed_at(t0 + S(1_000)), None, "ended on the first full read");
        assert_eq!(r.share(), FULL_SHARE);
    }

    #[test]
    fn without_a_window_nothing_ramps() {
        let r = Ramp::default();
        r.start();
        assert!(!r.active());
        assert_eq!(r.elapsed(), None);
    }

    #[test]
    fn a_ramp_can_be_ended_or_taken_over_part_way() {
        let r = Ramp::default();
        r.set_window(Duration::from_secs(100));
        r.start();
        assert!(r.active());
        r.end();
        assert!(!r.active(), "ended: full weight at once");
        r.resume(Some(Duration::from_secs(50)));
        let s = r.share();
        assert!((490..=510).contains(&s), "half-way: {s}");
        r.resume(None);
        assert_eq!(r.share(), FULL_SHARE);
        r.resume(Some(Duration::from_secs(1_000_000)));
        assert!(!r.active(), "a ramp long over is over");
    }

    #[test]
    fn a_new_window_applies_to_the_ramp_under_way() {
        let r = Ramp::default();
        r.set_window(Duration::from_secs(100));
        let t0 = Instant::now();
        r.start_at(t0);
        let at = t0 + Duration::from_secs(10);
        assert_eq!(r.share_at(at, r.window()), 100);
        r.set_window(Duration::from_secs(20));
        assert_eq!(r.share_at(at, r.window()), 500);
        r.set_window(Duration::ZERO);
        assert_eq!(r.share_at(at, r.window()), FULL_SHARE);
    }
}
