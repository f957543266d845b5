//! The wire protocol of `@socket.io/redis-adapter` 8.x, so edgepin workers and Node.js
//! workers share rooms over one Redis: channel names, the msgpack broadcast message, the
//! JSON/msgpack requests and responses, and the conversion between socketioxide's text
//! payloads (JSON with `{"_placeholder":true,"num":N}` for each binary attachment) and
//! msgpack with the binaries inline.
//!
//! Channels, for prefix `socket.io` and namespace `/`: broadcasts go to `socket.io#/#`, or
//! `socket.io#/#ROOM#` when they target exactly one room (subscribers take them all with
//! the pattern `socket.io#/#*`); requests to `socket.io-request#/#`; responses to
//! `socket.io-response#/#` (or `…#UID#`). A broadcast is msgpack `[uid, packet, {rooms,
//! except, flags}]` with `packet = {type, data, nsp}`; requests and responses are JSON,
//! except the broadcast-with-ack request and its acks, which are msgpack.
//!
//! This module only encodes and decodes: it holds no connection and no state, and every
//! decoder returns an error for input it does not understand (never a panic).
//!
//! `broadcast` encodes and decodes room broadcasts, `request` the request/response
//! channels, `payload` converts event arguments; this file has what they share.

mod broadcast;
mod payload;
mod request;
pub mod sharded;

use std::hash::{BuildHasher, Hasher};

use rmpv::Value as Msgpack;
use serde_json::Value as Json;
use socketioxide_core::adapter::Room;

pub use broadcast::{IncomingBroadcast, broadcast_channel, broadcast_prefix, decode_broadcast, encode_broadcast};
pub use payload::{msgpack_to_value, value_to_msgpack};
pub use request::{
    FetchedSocket, Request, RequestBody, Response, Target, broadcast_ack_request, broadcast_ack_response,
    client_count_response, decode_request, decode_response, done_response, fetch_request, fetch_response,
    remote_action_request, request_type, rooms_response, sockets_response,
};

/// The Node adapter's default channel prefix (its `key` option).
pub const DEFAULT_PREFIX: &str = "socket.io";

/// Deepest nesting accepted in a payload (serde_json's own recursion limit).
const MAX_DEPTH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed msgpack: {0}")]
    Msgpack(#[from] rmpv::decode::Error),
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unexpected message shape: {0}")]
    Shape(&'static str),
    #[error("binary attachment {0} is missing")]
    MissingAttachment(u64),
    #[error("payload nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("only text-parser payloads can cross to other workers")]
    BinaryParser,
}

/// Which of the Node adapter's protocols a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `createAdapter`: pub/sub on one Redis (PSUBSCRIBE to every broadcast).
    Classic,
    /// `createShardedAdapter`: sharded pub/sub on a Redis Cluster (`sharded`).
    Sharded,
}

/// The channel names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    pub dialect: Dialect,
    nsp: String,
    /// `socket.io#/#`: namespace-wide broadcasts and the prefix of per-room ones; in the
    /// sharded dialect also where requests go (every server subscribes to it).
    pub broadcast: String,
    /// Where requests go: `socket.io-request#/#` (the broadcast channel when sharded).
    pub request: String,
    /// Where classic responses go (`socket.io-response#/#`).
    pub response: String,
    /// Responses meant for this server only (`publishOnSpecificResponseChannel`, and every
    /// sharded response: `socket.io#/#UID#`).
    pub own_response: String,
}

/// What a message on one of a namespace's channels is.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<'a> {
    /// Classic: a broadcast, on a room's channel (`Some`) or the namespace's.
    Broadcast(Option<&'a str>),
    /// Classic: a request.
    Request,
    /// A response to a request of this server.
    Response,
    /// Sharded: any message, on a room's channel (`Some`) or the main one.
    Message(Option<&'a str>),
}

impl Channels {
    pub fn new(dialect: Dialect, prefix: &str, nsp: &str, uid: &str) -> Channels {
        let broadcast = format!("{prefix}#{nsp}#");
        match dialect {
            Dialect::Classic => {
                let response = format!("{prefix}-response#{nsp}#");
                Channels {
                    dialect,
                    nsp: nsp.to_string(),
                    request: format!("{prefix}-request#{nsp}#"),
                    own_response: format!("{response}{uid}#"),
                    response,
                    broadcast,
                }
            }
            Dialect::Sharded => Channels {
                dialect,
                nsp: nsp.to_string(),
                request: broadcast.clone(),
                response: String::new(),
                own_response: format!("{broadcast}{uid}#"),
                broadcast,
            },
        }
    }

    /// The namespace these channels are of.
    pub fn nsp(&self) -> &str {
        &self.nsp
    }

    /// The pattern that takes every classic broadcast of the namespace.
    pub fn broadcast_pattern(&self) -> String {
        format!("{}*", self.broadcast)
    }

    /// Where a broadcast to `rooms` is published: the room's own channel when there is
    /// exactly one (and, sharded, when it has one), so servers without members can skip it
    /// (sharded: never get it).
    pub fn broadcast_to(&self, rooms: &[Room]) -> String {
        match rooms {
            [room] => self.room(room).unwrap_or_else(|| self.broadcast.clone()),
            _ => self.broadcast.clone(),
        }
    }

    /// A room's own channel, `socket.io#/#ROOM#`. Sharded, a room whose name is 20 UTF-16
    /// units long has none: the Node adapter takes it for a Node socket id and sends its
    /// broadcasts on the main channel.
    pub fn room(&self, room: &str) -> Option<String> {
        let own = self.dialect == Dialect::Classic || room.encode_utf16().count() != 20;
        own.then(|| format!("{}{room}#", self.broadcast))
    }

    /// Where the answer to a request from server `requester` goes.
    pub fn reply_to(&self, requester: Option<&str>) -> String {
        match (self.dialect, requester) {
            (Dialect::Sharded, Some(uid)) => format!("{}{uid}#", self.broadcast),
            _ => self.response.clone(),
        }
    }

    /// What a message on `channel` is, if it is one of this namespace's.
    pub fn arrival<'a>(&self, channel: &'a str) -> Option<Arrival<'a>> {
        if channel == self.own_response || (!self.response.is_empty() && channel == self.response) {
            return Some(Arrival::Response);
        }
        if self.dialect == Dialect::Classic && channel == self.request {
            return Some(Arrival::Request);
        }
        let rest = channel.strip_prefix(self.broadcast.as_str())?;
        let room = match rest {
            "" => None,
            _ => Some(rest.strip_suffix('#')?),
        };
        Some(match self.dialect {
            Dialect::Classic => Arrival::Broadcast(room),
            Dialect::Sharded => Arrival::Message(room),
        })
    }
}

/// A random id from `[0-9A-Za-z]`, like the Node adapter's `uid2(6)` server and request ids.
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        // Every RandomState is freshly keyed from the OS: a cheap source of unguessable bits.
        let mut bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
        for _ in 0..8 {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char);
            bits /= ALPHABET.len() as u64;
        }
    }
    out
}

pub(super) fn field<'a>(map: &'a Msgpack, key: &str) -> Option<&'a Msgpack> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

pub(super) fn read_msgpack(bytes: &[u8]) -> Result<Msgpack, WireError> {
    Ok(rmpv::decode::read_value_with_max_depth(&mut &bytes[..], 2 * MAX_DEPTH)?)
}

pub(super) fn read_json_or_msgpack(bytes: &[u8]) -> Result<Msgpack, WireError> {
    if bytes.first() == Some(&b'{') {
        Ok(serde_json::from_slice(bytes)?)
    } else {
        read_msgpack(bytes)
    }
}

pub(super) fn to_msgpack_bytes(v: &Msgpack) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

pub(super) fn json_bytes(v: &Json) -> Vec<u8> {
    v.to_string().into_bytes()
}

/// Messages captured on Redis from Node.js workers (socket.io 4.8, redis-adapter 8.3).
#[cfg(test)]
mod fixtures {
    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    pub fn text(v: &socketioxide_core::Value) -> &str {
        v.as_str().unwrap().as_str()
    }

    /// `io.to("r1").emit("said", {from: "n1", room: "r1", msg: "hi"})` on a Node worker,
    /// as captured on Redis.
    pub const NODE_SAID: &str = "93a67978486f665483a47479706502a46461746192a47361696483a466726f6da26e31a4726f6f6da27231a36d7367a26869a36e7370a12f83a5726f6f6d7391a27231a665786365707490a5666c61677380";
    /// `io.to("r1").emit("bin", Buffer.from([1,2,3]), {nested: Buffer.from([9])})`.
    pub const NODE_BINARY: &str = "93a652755f57335883a47479706502a46461746193a362696ec40301020381a66e6573746564c40109a36e7370a12f83a5726f6f6d7391a27231a665786365707490a5666c61677380";
    /// `io.except("r3").volatile.emit("all", "x")`.
    pub const NODE_VOLATILE_EXCEPT: &str = "93a652755f57335883a47479706502a46461746192a3616c6ca178a36e7370a12f83a5726f6f6d7390a665786365707491a27233a5666c61677381a8766f6c6174696c65c3";
    /// `io.to("r1").timeout(500).emit("ask", 1, cb)`: a broadcast-with-ack request.
    pub const NODE_ACK_REQUEST: &str = "85a3756964a652755f573358a9726571756573744964a66b337130546ea47479706507a67061636b657483a47479706502a46461746192a361736b01a36e7370a12fa46f70747383a5726f6f6d7391a27231a665786365707490a5666c61677381a774696d656f7574cd01f4";
}

#[cfg(test)]
mod tests {
    use super::*;
    use socketioxide_core::{Str, Value};

    #[test]
    fn channel_names_match_the_node_adapter() {
        let c = Channels::new(Dialect::Classic, DEFAULT_PREFIX, "/", "AbC123");
        assert_eq!(c.broadcast_pattern(), "socket.io#/#*");
        assert_eq!(c.request, "socket.io-request#/#");
        assert_eq!(c.response, "socket.io-response#/#");
        assert_eq!(c.own_response, "socket.io-response#/#AbC123#");
        assert_eq!(c.broadcast_to(&["r1".into()]), "socket.io#/#r1#");
        assert_eq!(c.broadcast_to(&["a".into(), "b".into()]), "socket.io#/#");
        assert_eq!(c.broadcast_to(&[]), "socket.io#/#");
        assert_eq!(c.reply_to(Some("x")), "socket.io-response#/#");
        assert_eq!(c.arrival("socket.io#/#r1#"), Some(Arrival::Broadcast(Some("r1"))));
        assert_eq!(c.arrival("socket.io#/#"), Some(Arrival::Broadcast(None)));
        assert_eq!(c.arrival("socket.io#/admin#r1#"), None);
        assert_eq!(c.arrival("socket.io-request#/#"), Some(Arrival::Request));
        assert_eq!(c.arrival("socket.io-response#/#"), Some(Arrival::Response));
        assert_eq!(c.arrival("socket.io-response#/#AbC123#"), Some(Arrival::Response));
    }

    #[test]
    fn sharded_channel_names_match_the_node_sharded_adapter() {
        let c = Channels::new(Dialect::Sharded, DEFAULT_PREFIX, "/", "0123456789abcdef");
        assert_eq!(c.request, "socket.io#/#");
        assert_eq!(c.nsp(), "/");
        assert_eq!(
            Channels::new(Dialect::Sharded, DEFAULT_PREFIX, "/admin", "u").nsp(),
            "/admin"
        );
        assert_eq!(c.own_response, "socket.io#/#0123456789abcdef#");
        assert_eq!(c.reply_to(Some("fedcba9876543210")), "socket.io#/#fedcba9876543210#");
        assert_eq!(c.broadcast_to(&["r1".into()]), "socket.io#/#r1#");
        assert_eq!(c.broadcast_to(&["a".into(), "b".into()]), "socket.io#/#");
        // 20 UTF-16 units: a Node socket id to the Node adapter, so the main channel.
        assert_eq!(c.broadcast_to(&["NnUyg51kN4WQXNaQAAAA".into()]), "socket.io#/#");
        assert_eq!(c.room("éééééééééééééééééé😀"), None, "18 + a surrogate pair: 20 units");
        assert!(c.room("ééééééééééééééééééé😀").is_some(), "21 units");
        assert_eq!(
            c.room("aB3-_aB3-_aB3-_x").as_deref(),
            Some("socket.io#/#aB3-_aB3-_aB3-_x#")
        );
        assert_eq!(c.arrival("socket.io#/#"), Some(Arrival::Message(None)));
        assert_eq!(c.arrival("socket.io#/#r1#"), Some(Arrival::Message(Some("r1"))));
        assert_eq!(c.arrival("socket.io#/#0123456789abcdef#"), Some(Arrival::Response));
        assert_eq!(c.arrival("socket.io-request#/#"), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x93",
            b"\x92\xa1a\xc0",
            b"\xdd\xff\xff\xff\xff",
            b"{not json",
            b"{\"type\":\"x\"}",
        ] {
            assert!(decode_broadcast(bytes).is_err(), "{bytes:?}");
            assert!(decode_request(bytes).is_err(), "{bytes:?}");
        }
        // A packet that is not an event, and a placeholder without its attachment.
        let not_event = to_msgpack_bytes(&Msgpack::Array(vec![
            "u".into(),
            Msgpack::Map(vec![("type".into(), 1.into())]),
            Msgpack::Map(vec![]),
        ]));
        assert!(decode_broadcast(&not_event).is_err());
        let one = std::collections::VecDeque::from([bytes::Bytes::from_static(b"x")]);
        let dangling = Value::Str(
            Str::from(r#"["e",{"_placeholder":true,"num":3}]"#.to_string()),
            Some(one),
        );
        assert!(matches!(
            value_to_msgpack(&dangling),
            Err(WireError::MissingAttachment(3))
        ));
        // Nesting deeper than the limit.
        let mut deep = Msgpack::Nil;
        for _ in 0..(MAX_DEPTH + 5) {
            deep = Msgpack::Array(vec![deep]);
        }
        assert!(msgpack_to_value(&deep).is_err());
    }

    #[test]
    fn random_ids_have_the_asked_length_and_alphabet() {
        let a = random_id(6);
        assert_eq!(a.len(), 6);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_id(16), random_id(16));
    }
}
