//! The old process after an upgrade handed its listeners over: it accepts nothing, lets
//! every request in flight finish and every tunnel relay both ways, and returns the
//! moment nothing is left — checked every [`POLL`], so it exits well within a second of
//! its last connection ending.
//!
//! At `reload.hard_stop_after` it stops waiting: the tunnels still open are closed one
//! by one over `reload.close_spread`, each with a WebSocket close frame 1012 (service
//! restart) at a frame boundary (`proxy::relay`), so their clients come back through the
//! new process over the window instead of all in the same second. The pace is
//! [`close_spread_step`]: the time left shared evenly by the tunnels left, so the last
//! one closes at the end of the window even when others end on their own meanwhile.
//! Kept-alive HTTP connections get `Connection: close` on their next answer
//! (`Shared::begin_stop`), idle ones are dropped at exit. This module decides when to
//! close; the relay closes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

// tokio's clock (the same as std's, but paused and advanced in the unit tests).
use tokio::time::Instant;

use super::unix;
use super::wire::DrainStatus;
use crate::runtime::Shared;
use crate::state::{CLOSE_SERVICE_RESTART, TunnelCtl};

/// How often the drain looks at what is left: the process exits at most this long after
/// its last connection ended (HAProxy's old process leaves within ~20 ms; at 50 ms the
/// `upgrade` bench measured 84 ms). Only a draining process polls, and it serves nothing new.
const POLL: Duration = Duration::from_millis(10);
/// How long closed tunnels get to send their close frames before the process exits (a
/// tunnel whose client reads nothing gives up after the relay's own 5 s).
const CLOSE_GRACE: Duration = Duration::from_secs(6);

/// The pause before the next close when `left` tunnels remain after the one just closed
/// and `time_left` of the window remains: the time shared evenly, so the last one
/// closes at the window's end.
pub fn close_spread_step(left: usize, time_left: Duration) -> Duration {
    match left {
        0 => Duration::ZERO,
        n => time_left / n as u32,
    }
}

/// Tunnels open and not yet asked to close.
fn open_tunnels(shared: &Shared) -> Vec<Arc<TunnelCtl>> {
    shared
        .registry
        .servers()
        .iter()
        .flat_map(|s| s.tunnels.open())
        .filter(|t| !t.is_closed())
        .collect()
}

/// Drain after the hand-over (see the module docs); returns when the process may exit.
pub async fn drain(shared: &Shared) {
    shared.begin_stop();
    let reload = shared.snapshot().config.reload.clone();
    let started = Instant::now();
    let hard_stop = started + reload.hard_stop_after;
    let status = |closing: bool| {
        let tunnels = shared.open_tunnels() as u64;
        DrainStatus {
            pid: std::process::id(),
            tunnels,
            requests: shared.in_flight.get().saturating_sub(tunnels),
            hard_stop_unix: unix(SystemTime::now() + hard_stop.saturating_duration_since(Instant::now())),
            close_spread_secs: reload.close_spread.as_secs(),
            closing,
        }
    };
    let first = status(false);
    tracing::info!(
        tunnels = first.tunnels,
        requests = first.requests,
        hard_stop_after = ?reload.hard_stop_after,
        close_spread = ?reload.close_spread,
        "listeners handed over: draining"
    );
    shared.lifecycle.set_own_drain(first);
    let mut reported = Instant::now();
    while shared.in_flight.get() > 0 && Instant::now() < hard_stop {
        tokio::time::sleep(POLL).await;
        if reported.elapsed() >= Duration::from_millis(250) {
            shared.lifecycle.set_own_drain(status(false));
            reported = Instant::now();
        }
    }
    if shared.in_flight.get() == 0 {
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "drained: nothing left");
        return;
    }
    let end = Instant::now() + reload.close_spread;
    let mut closed = 0usize;
    tracing::info!(tunnels = shared.open_tunnels(), window = ?reload.close_spread, "hard_stop_after reached: closing the remaining tunnels");
    loop {
        let open = open_tunnels(shared);
        let Some(next) = open.first() else { break };
        next.close_with(CLOSE_SERVICE_RESTART);
        closed += 1;
        shared.lifecycle.set_own_drain(status(true));
        let pause = close_spread_step(open.len() - 1, end.saturating_duration_since(Instant::now()));
        let resume = Instant::now() + pause;
        while Instant::now() < resume && shared.in_flight.get() > 0 {
            tokio::time::sleep(POLL.min(resume.saturating_duration_since(Instant::now()))).await;
        }
        if shared.in_flight.get() == 0 {
            break;
        }
    }
    let grace = Instant::now() + CLOSE_GRACE;
    while shared.in_flight.get() > 0 && Instant::now() < grace {
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(
        closed,
        left = shared.in_flight.get(),
        took_ms = started.elapsed().as_millis() as u64,
        "drain over"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_spread_to_the_end_of_the_window() {
        // Five tunnels over 5 s: at 0, 1.25, 2.5, 3.75 and 5 s.
        let window = Duration::from_secs(5);
        let mut at = Duration::ZERO;
        let mut times = vec![at];
        for left in (0..4).rev() {
            at += close_spread_step(left + 1, window - at);
            times.push(at);
        }
        let ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 1250, 2500, 3750, 5000]);
    }

    #[test]
    fn the_last_tunnel_and_an_empty_window_need_no_pause() {
        assert_eq!(close_spread_step(0, Duration::from_secs(9)), Duration::ZERO);
        assert_eq!(close_spread_step(3, Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_what_is_left_at_the_hard_stop_spread_over_the_window() {
        let (shared, snapshot) = crate::runtime::one_backend("balance: roundrobin", 1);
        let text = "listen: { http: 127.0.0.1:1 }\nreload: { hard_stop_after: 2s, close_spread: 4s }\n\
                    routes: [{ path_prefix: /, backend: b }]\nbackends: { b: { servers: [w1] } }\n\
                    servers: { w1: { address: 127.0.0.1:3001 } }\n";
        let cfg = crate::config::parse(std::path::Path::new("t.yaml"), text).unwrap();
        shared.install(shared.build(&cfg));
        let server = Arc::clone(&snapshot.backends[0].members[0].state);
        // Three tunnels: each counts in flight until its relay (here: this test) ends it.
        let tickets: Vec<_> = (0..3).map(|_| server.tunnels.register()).collect();
        for _ in &tickets {
            shared.in_flight.inc();
        }
        let relays: Vec<_> = tickets
            .into_iter()
            .map(|t| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let started = Instant::now();
                    while !t.closed_by_edge() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let code = t.ctl().code();
                    drop(t);
                    shared.in_flight.dec();
                    (started.elapsed(), code)
                })
            })
            .collect();
        let began = Instant::now();
        drain(&shared).await;
        let mut closed = Vec::new();
        for r in relays {
            closed.push(r.await.unwrap());
        }
        closed.sort();
        let secs: Vec<u64> = closed.iter().map(|(d, _)| d.as_millis() as u64 / 100).collect();
        assert_eq!(secs, vec![20, 40, 60], "at the hard stop, then over the 4 s window");
        assert!(closed.iter().all(|(_, code)| *code == 1012));
        assert!(
            began.elapsed() < Duration::from_millis(6100),
            "left as soon as the last one ended"
        );
        assert!(shared.stopping(), "kept-alive connections close after their answer");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_process_leaves_at_once() {
        let (shared, _) = crate::runtime::one_backend("balance: roundrobin", 1);
        let began = Instant::now();
        drain(&shared).await;
        assert!(began.elapsed() < POLL);
    }
}
