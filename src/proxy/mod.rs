//! The engines that move bytes, and what they share. Every client connection enters
//! through the [`frontend`](Frontend) (connection limit, PROXY header, TLS); HTTP/1 is
//! served by edgepin's own engine (`h1`), HTTP/2 by pingora's proxy with edgepin's
//! callbacks (`h2`), and an upgraded connection by the tunnel relay (`relay`). The
//! decisions they call live outside: `route`, `select` (here, shared by both),
//! `sticky::exchange`, `failure`; the counters of a request go through `account`.

mod access;
mod account;
pub mod forwarding;
mod frontend;
mod h1;
mod h2;
pub mod headers;
mod limits;
mod local_answer;
mod places;
mod proxy_protocol;
mod relay;
mod respond;
mod select;
mod tls_conn;
mod tunnel;
mod upstream;

pub use crate::route::ACME_PREFIX;
pub use frontend::{ConnectionCap, Frontend, Https, connection_cap, pool_size};
pub use h1::Pool;
pub use h2::H2Proxy;
pub use select::Pick;
