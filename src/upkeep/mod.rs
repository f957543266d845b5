//! Upkeep: the background services `edge` assembles beside the proxy to keep the running
//! state true over time — [`ActiveChecks`] (one health check loop per configured server),
//! [`Housekeeping`] (drain deadlines, the sid table, the upstream pool), [`Discovery`]
//! (servers from DNS, installed as they change) and [`SharedLink`] (the connection to the
//! shared sid table's Redis). [`background`] runs each of them (and
//! the other background services) on a thread that gives way to the proxy threads.
//!
//! These sit beside the engines, reload and stats: they read the current snapshot from
//! `runtime::Shared` and act on state through `state` and `health`, which never see
//! `Shared` themselves. They decide nothing about requests.

mod checks;
pub mod discovery;
mod housekeeping;
mod scheduling;
mod sid_link;
mod supervise;

pub use checks::{ActiveChecks, SnapshotTargets};
pub use discovery::Discovery;
pub use housekeeping::Housekeeping;
pub use scheduling::{GivesWay, background, give_way};
pub use sid_link::SharedLink;
