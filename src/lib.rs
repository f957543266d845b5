//! edgepin: an edge load balancer for Socket.IO fleets.
#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
pub mod state;
