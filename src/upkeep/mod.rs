//! Upkeep: the background services `edge` assembles beside the proxy to keep the running
//! state true over time — [`Housekeeping`] (drain deadlines, the sid table, the upstream
//! pool) and, in `checks`, the supervisor of the active health checks.
//!
//! These sit beside the engines, reload and stats: they read the current snapshot from
//! `runtime::Shared` and act on state through `state` and `health`, which never see
//! `Shared` themselves. They decide nothing about requests.

mod housekeeping;

pub use housekeeping::Housekeeping;
