//! edgepin: an edge load balancer for Socket.IO fleets.
//!
//! `config` parses and validates proxy.yaml; `runtime` builds the running snapshot;
//! `proxy` serves requests with `balance` and `sticky`; `health` turns check verdicts into
//! UP/DOWN; `upkeep` runs the checks, housekeeping and DNS discovery (`discovery` decides
//! what an answer means); `stats` shows it all; `reload` swaps snapshots; `upgrade` hands
//! the listeners and state to a new binary; `edge` assembles the process. `worker` is the
//! reference Socket.IO worker (rooms over Redis); `up` runs Redis, the workers and the
//! proxy together.
#![forbid(unsafe_code)]

pub mod acme;
pub mod balance;
pub mod build_info;
pub mod certs;
pub mod check;
pub mod config;
pub mod diff;
pub mod discovery;
pub mod edge;
pub mod failure;
pub mod fdlimit;
pub mod health;
pub mod lifeline;
pub mod loaded;
pub mod privilege;
pub mod proxy;
pub mod rate_limit;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod state;
pub mod stats;
pub mod sticky;
pub mod telemetry;
pub mod tls;
pub mod up;
pub mod upgrade;
pub mod upkeep;
pub mod worker;
