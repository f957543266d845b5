//! Sticky routing for Socket.IO: the cookie, the Engine.IO sid table, and the parsing
//! of Engine.IO requests and answers. The rule itself (sid, then cookie, then hash)
//! is applied by `proxy::select`, which calls into these.

pub mod cookie;
pub mod engineio;
pub mod exchange;
pub mod sid;
mod slru;
