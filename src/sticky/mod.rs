//! Sticky routing for Socket.IO: the cookie, the Engine.IO sid table, and the parsing
//! of Engine.IO requests and answers. The rule itself (sid, then cookie, then hash)
//! is applied by `proxy::select`, which calls into these. `shared` shares the sid table
//! with other edgepins through Redis (`sticky.shared`); `shared_link` keeps its connection.

pub mod cookie;
pub mod engineio;
pub mod exchange;
pub mod shared;
mod shared_link;
pub mod sid;
mod slru;

pub use shared_link::SharedLink;
