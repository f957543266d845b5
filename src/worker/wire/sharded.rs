//! The protocol of `@socket.io/redis-adapter`'s sharded adapter (`createShardedAdapter`,
//! 8.x, built on socket.io-adapter's `ClusterAdapter`), for rooms on a Redis Cluster with
//! sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis ≥ 7).
//!
//! Every message is `{type, data, uid, nsp}`: JSON, or msgpack when `data` holds binary.
//! Types: 3 BROADCAST (`{packet, opts}`, plus `requestId` when the receivers must ack), 4
//! SOCKETS_JOIN and 5 SOCKETS_LEAVE (`{opts, rooms}`), 6 DISCONNECT_SOCKETS (`{opts,
//! close}`), 7 FETCH_SOCKETS (`{opts, requestId}`), 9 SERVER_SIDE_EMIT; responses 8
//! FETCH_SOCKETS_RESPONSE (`{requestId, sockets}`), 10 SERVER_SIDE_EMIT_RESPONSE, 11
//! BROADCAST_CLIENT_COUNT (`{requestId, clientCount}`), 12 BROADCAST_ACK (`{requestId,
//! packet}`). Channels are in `Channels` (dialect `Sharded`).
//!
//! Decoding yields the same types as the classic protocol (`IncomingBroadcast`, `Request`,
//! `Response`), so the adapter handles both alike. Like the rest of `wire`, this only
//! encodes and decodes.

use serde_json::Value as Json;
use socketioxide_core::Value;
use socketioxide_core::adapter::{BroadcastOptions, Room};
use socketioxide_core::packet::Packet;

use super::broadcast::{IncomingBroadcast, opts_from_wire, packet_from_wire, room_list, wire_opts, wire_packet};
use super::payload::value_to_msgpack;
use super::request::{FetchedSocket, MAX_ACK_WAIT, Request, RequestBody, Response, Target, request_type};
use super::{Msgpack, WireError, field, read_json_or_msgpack, to_msgpack_bytes};

/// socket.io-adapter's `MessageType`.
pub mod message_type {
    pub const BROADCAST: u64 = 3;
    pub const SOCKETS_JOIN: u64 = 4;
    pub const SOCKETS_LEAVE: u64 = 5;
    pub const DISCONNECT_SOCKETS: u64 = 6;
    pub const FETCH_SOCKETS: u64 = 7;
    pub const FETCH_SOCKETS_RESPONSE: u64 = 8;
    pub const SERVER_SIDE_EMIT: u64 = 9;
    pub const SERVER_SIDE_EMIT_RESPONSE: u64 = 10;
    pub const BROADCAST_CLIENT_COUNT: u64 = 11;
    pub const BROADCAST_ACK: u64 = 12;
}
use message_type as mt;

/// A message from another server, in the classic protocol's terms.
#[derive(Debug)]
pub enum Incoming {
    Broadcast(IncomingBroadcast),
    Request(Request),
    Response(Response),
    /// Heartbeats and types this server has no use for.
    Ignored(u64),
}

/// Whom a message is from: its `uid` and namespace.
pub struct Sender<'a> {
    pub uid: &'a str,
    pub nsp: &'a str,
}

/// Decode a message (JSON when it starts with `{`, msgpack otherwise, as Node decides).
/// A message without a namespace is read as namespace `/`.
pub fn decode(bytes: &[u8]) -> Result<(String, String, Incoming), WireError> {
    let msg = read_json_or_msgpack(bytes)?;
    let kind = field(&msg, "type")
        .and_then(Msgpack::as_u64)
        .ok_or(WireError::Shape("a message has a numeric type"))?;
    let text = |v: Option<&Msgpack>| v.and_then(Msgpack::as_str).map(str::to_string);
    let uid = text(field(&msg, "uid")).unwrap_or_default();
    let nsp = text(field(&msg, "nsp")).unwrap_or_else(|| "/".into());
    let empty = Msgpack::Map(Vec::new());
    let data = field(&msg, "data").unwrap_or(&empty);
    let request_id = text(field(data, "requestId"));
    let opts = || -> Result<BroadcastOptions, WireError> {
        opts_from_wire(field(data, "opts").ok_or(WireError::Shape("the message has opts"))?)
    };
    let request = |body: RequestBody| {
        Incoming::Request(Request {
            uid: Some(uid.clone()),
            id: request_id.clone(),
            body,
        })
    };
    let incoming = match kind {
        mt::BROADCAST => {
            let packet = packet_from_wire(field(data, "packet").ok_or(WireError::Shape("a broadcast has a packet"))?)?;
            match &request_id {
                None => Incoming::Broadcast(IncomingBroadcast {
                    uid: uid.clone(),
                    packet,
                    opts: opts()?,
                }),
                Some(_) => request(RequestBody::BroadcastWithAck {
                    packet,
                    opts: opts()?,
                    timeout: field(data, "opts")
                        .and_then(|o| field(o, "flags"))
                        .and_then(|f| field(f, "timeout"))
                        .and_then(Msgpack::as_u64)
                        .map(|ms| std::time::Duration::from_millis(ms).min(MAX_ACK_WAIT)),
                }),
            }
        }
        mt::SOCKETS_JOIN | mt::SOCKETS_LEAVE => {
            let (target, rooms) = (Target::Matching(Box::new(opts()?)), room_list(field(data, "rooms"))?);
            request(if kind == mt::SOCKETS_JOIN {
                RequestBody::Join { target, rooms }
            } else {
                RequestBody::Leave { target, rooms }
            })
        }
        mt::DISCONNECT_SOCKETS => request(RequestBody::Disconnect {
            target: Target::Matching(Box::new(opts()?)),
            close: field(data, "close").and_then(Msgpack::as_bool).unwrap_or(false),
        }),
        mt::FETCH_SOCKETS => request(RequestBody::Fetch(opts()?)),
        mt::SERVER_SIDE_EMIT => request(RequestBody::ServerSideEmit),
        mt::FETCH_SOCKETS_RESPONSE | mt::BROADCAST_CLIENT_COUNT | mt::BROADCAST_ACK => {
            let request_id = request_id.ok_or(WireError::Shape("a response names its request"))?;
            Incoming::Response(Response {
                body: classic_response(kind, &request_id, data),
                request_id,
            })
        }
        other => Incoming::Ignored(other),
    };
    Ok((uid, nsp, incoming))
}

/// A sharded response's data in the classic response's shape (what `Response` reads).
fn classic_response(kind: u64, request_id: &str, data: &Msgpack) -> Msgpack {
    let classic_type = match kind {
        mt::BROADCAST_CLIENT_COUNT => request_type::BROADCAST_CLIENT_COUNT,
        mt::BROADCAST_ACK => request_type::BROADCAST_ACK,
        _ => request_type::REMOTE_FETCH,
    };
    let mut body = vec![
        ("type".into(), classic_type.into()),
        ("requestId".into(), request_id.into()),
    ];
    for key in ["clientCount", "packet", "sockets"] {
        if let Some(v) = field(data, key) {
            body.push((key.into(), v.clone()));
        }
    }
    Msgpack::Map(body)
}

/// `{type, data, uid, nsp}`, in msgpack when `data` holds binary, else in JSON.
fn envelope(from: &Sender<'_>, kind: u64, data: Msgpack) -> Vec<u8> {
    let message = Msgpack::Map(vec![
        ("type".into(), kind.into()),
        ("data".into(), data),
        ("uid".into(), from.uid.into()),
        ("nsp".into(), from.nsp.into()),
    ]);
    if has_binary(&message) {
        return to_msgpack_bytes(&message);
    }
    // Only strings as keys and no binary: always representable as JSON.
    serde_json::to_vec(&message).unwrap_or_else(|_| to_msgpack_bytes(&message))
}

fn has_binary(v: &Msgpack) -> bool {
    match v {
        Msgpack::Binary(_) | Msgpack::Ext(..) => true,
        Msgpack::Array(items) => items.iter().any(has_binary),
        Msgpack::Map(entries) => entries.iter().any(|(k, v)| has_binary(k) || has_binary(v)),
        _ => false,
    }
}

fn map(entries: Vec<(&str, Msgpack)>) -> Msgpack {
    Msgpack::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// `{type, data}` (and `id`): the cluster adapter leaves the namespace to the envelope.
fn packet_of(packet: &Packet) -> Result<Msgpack, WireError> {
    Ok(match wire_packet(packet)? {
        Msgpack::Map(entries) => Msgpack::Map(entries.into_iter().filter(|(k, _)| k.as_str() != Some("nsp")).collect()),
        other => other,
    })
}

/// A broadcast of `packet` to what `opts` selects.
pub fn broadcast(from: &Sender<'_>, packet: &Packet, opts: &BroadcastOptions) -> Result<Vec<u8>, WireError> {
    let data = map(vec![("packet", packet_of(packet)?), ("opts", wire_opts(opts, None))]);
    Ok(envelope(from, mt::BROADCAST, data))
}

/// A broadcast whose receivers must acknowledge within `timeout`.
pub fn broadcast_with_ack(
    from: &Sender<'_>,
    request_id: &str,
    packet: &Packet,
    opts: &BroadcastOptions,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, WireError> {
    let data = map(vec![
        ("packet", packet_of(packet)?),
        ("requestId", request_id.into()),
        ("opts", wire_opts(opts, Some(timeout))),
    ]);
    Ok(envelope(from, mt::BROADCAST, data))
}

/// A remote join, leave or disconnect (`kind` as in the classic `request_type`) of every
/// socket `opts` selects.
pub fn remote_action(from: &Sender<'_>, kind: u64, opts: &BroadcastOptions, rooms: &[Room], close: bool) -> Vec<u8> {
    let names = || Msgpack::Array(rooms.iter().map(|r| r.as_ref().into()).collect());
    let (kind, data) = match kind {
        request_type::REMOTE_DISCONNECT => (
            mt::DISCONNECT_SOCKETS,
            map(vec![("opts", wire_opts(opts, None)), ("close", close.into())]),
        ),
        request_type::REMOTE_LEAVE => (
            mt::SOCKETS_LEAVE,
            map(vec![("opts", wire_opts(opts, None)), ("rooms", names())]),
        ),
        _ => (
            mt::SOCKETS_JOIN,
            map(vec![("opts", wire_opts(opts, None)), ("rooms", names())]),
        ),
    };
    envelope(from, kind, data)
}

/// A `fetchSockets` request.
pub fn fetch(from: &Sender<'_>, request_id: &str, opts: &BroadcastOptions) -> Vec<u8> {
    let data = map(vec![("opts", wire_opts(opts, None)), ("requestId", request_id.into())]);
    envelope(from, mt::FETCH_SOCKETS, data)
}

/// The answer to a `fetchSockets` request.
pub fn fetch_response(from: &Sender<'_>, request_id: &str, sockets: &[FetchedSocket]) -> Vec<u8> {
    let sockets: Vec<Json> = sockets.iter().map(FetchedSocket::to_json).collect();
    let sockets: Msgpack = serde_json::from_value(Json::Array(sockets)).unwrap_or(Msgpack::Nil);
    let data = map(vec![("requestId", request_id.into()), ("sockets", sockets)]);
    envelope(from, mt::FETCH_SOCKETS_RESPONSE, data)
}

/// How many acks this server will relay for a broadcast.
pub fn client_count_response(from: &Sender<'_>, request_id: &str, count: u32) -> Vec<u8> {
    let data = map(vec![("requestId", request_id.into()), ("clientCount", count.into())]);
    envelope(from, mt::BROADCAST_CLIENT_COUNT, data)
}

/// One client's acknowledgement; Node passes on its first argument only.
pub fn ack_response(from: &Sender<'_>, request_id: &str, ack: &Value) -> Result<Vec<u8>, WireError> {
    let first = match value_to_msgpack(ack)? {
        Msgpack::Array(mut args) if !args.is_empty() => args.swap_remove(0),
        _ => Msgpack::Nil,
    };
    let data = map(vec![("requestId", request_id.into()), ("packet", first)]);
    Ok(envelope(from, mt::BROADCAST_ACK, data))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::text;
    use super::*;
    use socketioxide_core::adapter::BroadcastFlags;
    use socketioxide_core::packet::PacketData;
    use socketioxide_core::{Sid, Str};

    /// Messages of a Node.js worker (socket.io 4.8.1, redis-adapter 8.3.0
    /// `createShardedAdapter`, node-redis 4.7, Redis 7.0 Cluster), captured with
    /// SSUBSCRIBE: `io.to("r1").emit("said", …)` and `io.in("r1").fetchSockets()`.
    const NODE_SAID: &str = r#"{"type":3,"data":{"packet":{"type":2,"data":["said",{"from":"n1","room":"r1","msg":"hi"}]},"opts":{"rooms":["r1"],"except":[],"flags":{}}},"uid":"74375a69c43012fd","nsp":"/"}"#;
    const NODE_FETCH: &str = r#"{"type":7,"data":{"opts":{"rooms":["r1"],"except":[],"flags":{}},"requestId":"f326967380ef510d"},"uid":"74375a69c43012fd","nsp":"/"}"#;
    /// As socket.io-adapter 2.5.8's `ClusterAdapter` writes them (from its source).
    const NODE_ACK_REQUEST: &str = r#"{"type":3,"data":{"packet":{"type":2,"data":["ask",1]},"requestId":"aa11bb22cc33dd44","opts":{"rooms":["r1"],"except":[],"flags":{"timeout":500}}},"uid":"6a1e3a4b1f2c8d9e","nsp":"/"}"#;
    const NODE_FETCH_RESPONSE: &str = r#"{"type":8,"data":{"requestId":"abc123","sockets":[{"id":"NnUyg51kN4WQXNaQAAAA","handshake":{},"rooms":["NnUyg51kN4WQXNaQAAAA","r1"],"data":{}}]},"uid":"6a1e3a4b1f2c8d9e","nsp":"/"}"#;

    fn me() -> Sender<'static> {
        Sender {
            uid: "0123456789abcdef",
            nsp: "/",
        }
    }

    #[test]
    fn node_messages_read_as_the_classic_ones() {
        let (uid, nsp, m) = decode(NODE_SAID.as_bytes()).unwrap();
        assert_eq!((uid.as_str(), nsp.as_str()), ("74375a69c43012fd", "/"));
        let Incoming::Broadcast(b) = m else { panic!("{m:?}") };
        let PacketData::Event(v, None) = &b.packet.inner else {
            panic!("{:?}", b.packet.inner)
        };
        assert_eq!(text(v), r#"["said",{"from":"n1","room":"r1","msg":"hi"}]"#);
        assert_eq!(b.opts.rooms.as_slice(), &[Room::from("r1")]);

        let (_, _, m) = decode(NODE_FETCH.as_bytes()).unwrap();
        let Incoming::Request(r) = m else { panic!("{m:?}") };
        assert_eq!(r.id.as_deref(), Some("f326967380ef510d"));
        assert!(matches!(r.body, RequestBody::Fetch(ref o) if o.rooms.as_slice() == [Room::from("r1")]));

        let (_, _, m) = decode(NODE_ACK_REQUEST.as_bytes()).unwrap();
        let Incoming::Request(r) = m else { panic!("{m:?}") };
        let RequestBody::BroadcastWithAck { timeout, .. } = r.body else {
            panic!("{:?}", r.body)
        };
        assert_eq!(timeout, Some(std::time::Duration::from_millis(500)));

        let (_, _, m) = decode(NODE_FETCH_RESPONSE.as_bytes()).unwrap();
        let Incoming::Response(r) = m else { panic!("{m:?}") };
        assert_eq!(r.request_id, "abc123");
        let fetched = r.fetched_sockets();
        assert_eq!(fetched.len(), 1);
        assert_eq!(fetched[0].0, "NnUyg51kN4WQXNaQAAAA");
        assert_eq!(r.client_count(), None);

        for bad in [
            &b""[..],
            b"{}",
            b"{\"type\":\"3\"}",
            b"\x93",
            b"{\"type\":3,\"data\":{}}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn our_broadcast_is_what_node_sends() {
        let data = Value::Str(
            Str::from(r#"["said",{"from":"n1","room":"r1","msg":"hi"}]"#.to_string()),
            None,
        );
        let mut opts = BroadcastOptions::default();
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms.push("r1".into());
        let from = Sender {
            uid: "74375a69c43012fd",
            nsp: "/",
        };
        let ours = broadcast(&from, &Packet::event("/", data), &opts).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), NODE_SAID, "byte for byte");
    }

    #[test]
    fn binary_goes_as_msgpack_and_comes_back() {
        let bins = std::collections::VecDeque::from([bytes::Bytes::from_static(&[1, 2, 3])]);
        let data = Value::Str(
            Str::from(r#"["bin",{"_placeholder":true,"num":0}]"#.to_string()),
            Some(bins.clone()),
        );
        let mut opts = BroadcastOptions::new(Sid::new());
        opts.rooms.push("r".into());
        opts.add_flag(BroadcastFlags::Broadcast);
        let bytes = broadcast(&me(), &Packet::event("/", data), &opts).unwrap();
        assert_ne!(bytes[0], b'{', "msgpack");
        let (_, _, m) = decode(&bytes).unwrap();
        let Incoming::Broadcast(b) = m else { panic!("{m:?}") };
        let PacketData::BinaryEvent(Value::Str(_, Some(got)), _) = &b.packet.inner else {
            panic!("{:?}", b.packet.inner)
        };
        assert_eq!(got, &bins);
        assert_eq!(b.opts.except.len(), 1, "the sender is left out");
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let mut opts = BroadcastOptions::default();
        opts.rooms.push("r".into());
        let (_, _, m) = decode(&remote_action(
            &me(),
            request_type::REMOTE_JOIN,
            &opts,
            &["x".into()],
            false,
        ))
        .unwrap();
        assert!(
            matches!(m, Incoming::Request(Request { body: RequestBody::Join { ref rooms, .. }, .. }) if rooms.as_slice() == [Room::from("x")])
        );
        let (_, _, m) = decode(&remote_action(&me(), request_type::REMOTE_DISCONNECT, &opts, &[], true)).unwrap();
        assert!(matches!(
            m,
            Incoming::Request(Request {
                body: RequestBody::Disconnect { close: true, .. },
                ..
            })
        ));
        let (uid, _, m) = decode(&fetch(&me(), "rq", &opts)).unwrap();
        assert_eq!(uid, "0123456789abcdef");
        assert!(
            matches!(m, Incoming::Request(Request { ref id, body: RequestBody::Fetch(_), .. }) if id.as_deref() == Some("rq"))
        );

        let (_, _, m) = decode(&client_count_response(&me(), "rq", 3)).unwrap();
        let Incoming::Response(r) = m else { panic!() };
        assert_eq!(r.client_count(), Some(3));
        let ack = Value::Str(Str::from(r#"[{"from":"a"}]"#.to_string()), None);
        let (_, _, m) = decode(&ack_response(&me(), "rq", &ack).unwrap()).unwrap();
        let Incoming::Response(r) = m else { panic!() };
        assert_eq!(text(&r.ack().unwrap()), r#"[{"from":"a"}]"#);
        let sockets = [FetchedSocket {
            id: "abc".into(),
            rooms: vec!["abc".into(), "r".into()],
        }];
        let (_, _, m) = decode(&fetch_response(&me(), "rq", &sockets)).unwrap();
        let Incoming::Response(r) = m else { panic!() };
        assert_eq!(r.fetched_sockets()[0].1, vec![Room::from("abc"), Room::from("r")]);
    }
}
