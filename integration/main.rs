//! End-to-end tests: the real binary on loopback, with backends, Redis and clients the
//! tests start themselves. One test binary; run with `--test-threads=1` (heavy cases are
//! serialised on purpose).

#[allow(dead_code, unused_imports)]
mod harness;

mod charts;
mod differential;
mod discovery;
mod edge;
mod engine;
mod exchange;
mod foundation;
mod fuzz;
mod hardening;
mod health;
mod multi_edge;
mod package;
mod prometheus;
mod reload;
mod slow_start;
mod stats;
mod sticky;
mod tunnels;
mod upgrade;
mod worker;
mod worker_cluster;
mod worker_guard;
