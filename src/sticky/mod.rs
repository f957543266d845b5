//! Sticky routing for Socket.IO: the cookie, the Engine.IO sid table, and the parsing
//! of Engine.IO requests and answers. The rule itself (sid, then cookie, then hash)
//! is applied by `proxy::select`, which calls into these. `shared` shares the sid table
//! with other edgepins through Redis (`sticky.shared`); `upkeep::SidLink` keeps its
//! connection and `proxy::sid_lookup` asks it. Nothing here knows the running state
//! (`runtime`).

pub mod cookie;
pub mod engineio;
pub mod exchange;
pub mod shared;
pub mod sid;
mod slru;
