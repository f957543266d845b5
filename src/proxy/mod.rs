//! The engines that move bytes, and what they share. Every client connection enters
//! through the [`frontend`](Frontend) (connection limit, PROXY header, TLS); HTTP/1 is
//! served by edgepin's own engine (`h1`), HTTP/2 by its own HTTP/2 engine (`h2`), and an
//! upgraded connection (or an HTTP/2 WebSocket stream) by the tunnel relay (`relay`). The
//! decisions they call live outside: `route`, `select` (here, shared by both),
//! `sticky::exchange`, `failure`; the counters of a request go through `account`.

mod access;
mod account;
mod fields;
pub mod forwarding;
mod frontend;
mod h1;
mod h2;
mod local_answer;
mod lot;
mod pick_loop;
mod places;
mod proxy_protocol;
mod relay;
mod select;
mod sid_lookup;
mod tunnel;
mod upstream;

pub use crate::route::ACME_PREFIX;

/// The HTTP/1 engine's per-request head work, public for the criterion benchmarks
/// (benches/hot_path.rs): they measure the code requests run, not a copy of it.
pub mod hot_path {
    pub use super::h1::head::Head as RequestHead;
    pub use super::h1::request::{Upstream, write_head};
}
pub use frontend::{ConnectionCap, Frontend, Https, connection_cap, pool_size};
pub use h1::Pool;
pub use h2::{H2_LIMITS, H2Limits};
pub use select::Pick;
