//! The request and response channels: what other servers ask (`fetchSockets`, remote
//! joins, broadcasts with acks, …) and what they answer. JSON, except the broadcast-with-ack
//! request and each relayed ack, which are msgpack (as Node sends them).

use serde_json::Value as Json;
use socketioxide_core::Value;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};
use socketioxide_core::packet::Packet;

use super::broadcast::{opts_from_wire, packet_from_wire, room_list, room_lists, room_name, wire_opts, wire_packet};
use super::payload::{msgpack_to_value, value_to_msgpack};
use super::{Msgpack, WireError, field, json_bytes, read_json_or_msgpack, to_msgpack_bytes};

/// The Node adapter's `RequestType` numbers.
pub mod request_type {
    pub const SOCKETS: u64 = 0;
    pub const ALL_ROOMS: u64 = 1;
    pub const REMOTE_JOIN: u64 = 2;
    pub const REMOTE_LEAVE: u64 = 3;
    pub const REMOTE_DISCONNECT: u64 = 4;
    pub const REMOTE_FETCH: u64 = 5;
    pub const SERVER_SIDE_EMIT: u64 = 6;
    pub const BROADCAST: u64 = 7;
    pub const BROADCAST_CLIENT_COUNT: u64 = 8;
    pub const BROADCAST_ACK: u64 = 9;
}

/// A request from another server on the request channel.
#[derive(Debug)]
pub struct Request {
    /// The requesting server (absent in some legacy requests).
    pub uid: Option<String>,
    pub id: Option<String>,
    pub body: RequestBody,
}

/// Which sockets a remote join, leave or disconnect applies to.
#[derive(Debug)]
pub enum Target {
    /// Every socket `opts` selects (socket.io ≥ 4.0).
    Matching(Box<BroadcastOptions>),
    /// One socket by id, answered with an empty response (older socket.io).
    Socket(String),
}

#[derive(Debug)]
pub enum RequestBody {
    /// Ids of the sockets in these rooms (older socket.io `allSockets`).
    Sockets(BroadcastOptions),
    AllRooms,
    Join {
        target: Target,
        rooms: Vec<Room>,
    },
    Leave {
        target: Target,
        rooms: Vec<Room>,
    },
    Disconnect {
        target: Target,
        close: bool,
    },
    /// `fetchSockets`: id and rooms of every socket `opts` selects.
    Fetch(BroadcastOptions),
    /// `serverSideEmit`: socketioxide has no server-side event API; ignored.
    ServerSideEmit,
    /// A broadcast whose receivers must acknowledge (`timeout(..).emit(.., ack)`).
    BroadcastWithAck {
        packet: Packet,
        opts: BroadcastOptions,
        /// How long the requester waits for acks (`flags.timeout`, milliseconds on the wire).
        timeout: Option<std::time::Duration>,
    },
    /// A type this server does not know (a newer adapter); ignored.
    Unknown(u64),
}

/// The longest another worker may have us wait for acknowledgements: each wait holds a
/// task and an entry per targeted socket until it ends.
pub const MAX_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Decode a request; JSON when it starts with `{`, msgpack otherwise (as Node decides).
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    let msg = read_json_or_msgpack(bytes)?;
    let kind = field(&msg, "type")
        .and_then(Msgpack::as_u64)
        .ok_or(WireError::Shape("a request has a numeric type"))?;
    let text = |k: &str| field(&msg, k).and_then(Msgpack::as_str).map(str::to_string);
    let opts = || field(&msg, "opts").map(opts_from_wire).transpose();
    let target = || -> Result<Target, WireError> {
        match (opts()?, text("sid")) {
            (Some(o), _) => Ok(Target::Matching(Box::new(o))),
            (None, Some(sid)) => Ok(Target::Socket(sid)),
            (None, None) => Err(WireError::Shape("a remote action names opts or a sid")),
        }
    };
    let rooms = || -> Result<Vec<Room>, WireError> {
        match field(&msg, "room") {
            Some(single) => Ok(vec![room_name(single)?]),
            None => room_list(field(&msg, "rooms")),
        }
    };
    use request_type as t;
    let body = match kind {
        t::SOCKETS => {
            let mut o = BroadcastOptions::default();
            o.add_flag(BroadcastFlags::Broadcast);
            o.rooms = room_list(field(&msg, "rooms"))?.into_iter().collect();
            RequestBody::Sockets(o)
        }
        t::ALL_ROOMS => RequestBody::AllRooms,
        t::REMOTE_JOIN => RequestBody::Join {
            target: target()?,
            rooms: rooms()?,
        },
        t::REMOTE_LEAVE => RequestBody::Leave {
            target: target()?,
            rooms: rooms()?,
        },
        t::REMOTE_DISCONNECT => RequestBody::Disconnect {
            target: target()?,
            close: field(&msg, "close").and_then(Msgpack::as_bool).unwrap_or(false),
        },
        t::REMOTE_FETCH => RequestBody::Fetch(opts()?.ok_or(WireError::Shape("fetch has opts"))?),
        t::SERVER_SIDE_EMIT => RequestBody::ServerSideEmit,
        t::BROADCAST => RequestBody::BroadcastWithAck {
            packet: packet_from_wire(field(&msg, "packet").ok_or(WireError::Shape("broadcast has a packet"))?)?,
            opts: opts()?.ok_or(WireError::Shape("broadcast has opts"))?,
            timeout: field(&msg, "opts")
                .and_then(|o| field(o, "flags"))
                .and_then(|f| field(f, "timeout"))
                .and_then(Msgpack::as_u64)
                .map(|ms| std::time::Duration::from_millis(ms).min(MAX_ACK_WAIT)),
        },
        other => RequestBody::Unknown(other),
    };
    Ok(Request {
        uid: text("uid"),
        id: text("requestId"),
        body,
    })
}

/// A `fetchSockets` request (JSON, as Node sends it).
pub fn fetch_request(uid: &str, request_id: &str, opts: &BroadcastOptions) -> Vec<u8> {
    json_bytes(&serde_json::json!({
        "uid": uid,
        "requestId": request_id,
        "type": request_type::REMOTE_FETCH,
        "opts": json_opts(opts),
    }))
}

/// A broadcast whose receivers must acknowledge within `timeout` (msgpack, as Node sends it).
pub fn broadcast_ack_request(
    uid: &str,
    request_id: &str,
    packet: &Packet,
    opts: &BroadcastOptions,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, WireError> {
    Ok(to_msgpack_bytes(&Msgpack::Map(vec![
        ("uid".into(), uid.into()),
        ("requestId".into(), request_id.into()),
        ("type".into(), request_type::BROADCAST.into()),
        ("packet".into(), wire_packet(packet)?),
        ("opts".into(), wire_opts(opts, Some(timeout))),
    ])))
}

/// A remote join, leave or disconnect of every socket `opts` selects (no response).
pub fn remote_action_request(uid: &str, kind: u64, opts: &BroadcastOptions, rooms: &[Room], close: bool) -> Vec<u8> {
    let mut req = serde_json::json!({ "uid": uid, "type": kind, "opts": json_opts(opts) });
    if kind == request_type::REMOTE_DISCONNECT {
        req["close"] = close.into();
    } else {
        req["rooms"] = rooms.iter().map(|r| r.as_ref()).collect::<Vec<_>>().into();
    }
    json_bytes(&req)
}

/// One socket in a `fetchSockets` response. Node's `RemoteSocket` reads these fields.
pub struct FetchedSocket {
    pub id: String,
    pub rooms: Vec<String>,
}

impl FetchedSocket {
    /// As Node's `RemoteSocket` reads it.
    pub fn to_json(&self) -> Json {
        serde_json::json!({
            "id": self.id,
            // socketioxide does not keep the handshake in a form Node's Handshake has;
            // these are the fields Node code reads, empty.
            "handshake": { "headers": {}, "time": "", "address": "", "xdomain": false,
                           "secure": false, "issued": 0, "url": "", "query": {}, "auth": {} },
            "rooms": self.rooms,
            "data": {},
        })
    }
}

pub fn fetch_response(request_id: &str, sockets: &[FetchedSocket]) -> Vec<u8> {
    let sockets: Vec<Json> = sockets.iter().map(FetchedSocket::to_json).collect();
    json_bytes(&serde_json::json!({ "requestId": request_id, "sockets": sockets }))
}

pub fn sockets_response(request_id: &str, ids: &[String]) -> Vec<u8> {
    json_bytes(&serde_json::json!({ "requestId": request_id, "sockets": ids }))
}

pub fn rooms_response(request_id: &str, rooms: &[String]) -> Vec<u8> {
    json_bytes(&serde_json::json!({ "requestId": request_id, "rooms": rooms }))
}

/// The empty answer to a single-socket join, leave or disconnect.
pub fn done_response(request_id: &str) -> Vec<u8> {
    json_bytes(&serde_json::json!({ "requestId": request_id }))
}

pub fn client_count_response(request_id: &str, count: u32) -> Vec<u8> {
    json_bytes(&serde_json::json!({
        "type": request_type::BROADCAST_CLIENT_COUNT,
        "requestId": request_id,
        "clientCount": count,
    }))
}

/// One client's acknowledgement of a broadcast; Node passes on its first argument only.
pub fn broadcast_ack_response(request_id: &str, ack: &Value) -> Result<Vec<u8>, WireError> {
    let first = match value_to_msgpack(ack)? {
        Msgpack::Array(mut args) if !args.is_empty() => args.swap_remove(0),
        _ => Msgpack::Nil,
    };
    Ok(to_msgpack_bytes(&Msgpack::Map(vec![
        ("type".into(), request_type::BROADCAST_ACK.into()),
        ("requestId".into(), request_id.into()),
        ("packet".into(), first),
    ])))
}

/// A response on a response channel: its request id and the whole message.
#[derive(Debug)]
pub struct Response {
    pub request_id: String,
    pub body: Msgpack,
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, WireError> {
    let body = read_json_or_msgpack(bytes)?;
    let request_id = field(&body, "requestId")
        .and_then(Msgpack::as_str)
        .ok_or(WireError::Shape("a response names its request"))?
        .to_string();
    Ok(Response { request_id, body })
}

impl Response {
    /// `BROADCAST_CLIENT_COUNT`: how many acks a server will relay for a broadcast.
    pub fn client_count(&self) -> Option<u64> {
        (field(&self.body, "type")?.as_u64()? == request_type::BROADCAST_CLIENT_COUNT)
            .then(|| field(&self.body, "clientCount")?.as_u64())
            .flatten()
    }

    /// `BROADCAST_ACK`: one client's acknowledgement, as socketioxide's ack arguments.
    pub fn ack(&self) -> Option<Value> {
        if field(&self.body, "type")?.as_u64()? != request_type::BROADCAST_ACK {
            return None;
        }
        let arg = field(&self.body, "packet").cloned().unwrap_or(Msgpack::Nil);
        msgpack_to_value(&Msgpack::Array(vec![arg])).ok()
    }

    /// The sockets of a `fetchSockets` response, as (id, rooms).
    pub fn fetched_sockets(&self) -> Vec<(String, Vec<Room>)> {
        let Some(Msgpack::Array(sockets)) = field(&self.body, "sockets") else {
            return Vec::new();
        };
        sockets
            .iter()
            .filter_map(|s| {
                let id = field(s, "id")?.as_str()?.to_string();
                Some((id, room_list(field(s, "rooms")).unwrap_or_default()))
            })
            .collect()
    }
}

/// `{rooms, except}` of a JSON request.
fn json_opts(opts: &BroadcastOptions) -> Json {
    let (rooms, except) = room_lists(opts);
    let names = |list: Vec<Room>| list.iter().map(|r| Json::from(r.as_ref())).collect::<Vec<_>>();
    serde_json::json!({ "rooms": names(rooms), "except": names(except) })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use socketioxide_core::Str;
    use socketioxide_core::packet::PacketData;

    #[test]
    fn decodes_a_node_ack_broadcast_request() {
        let r = decode_request(&hex(NODE_ACK_REQUEST)).unwrap();
        assert_eq!(r.uid.as_deref(), Some("Ru_W3X"));
        assert_eq!(r.id.as_deref(), Some("k3q0Tn"));
        let RequestBody::BroadcastWithAck { packet, opts, timeout } = r.body else {
            panic!("{:?}", r.body)
        };
        let PacketData::Event(v, _) = &packet.inner else {
            panic!()
        };
        assert_eq!(text(v), r#"["ask",1]"#);
        assert_eq!(opts.rooms.as_slice(), &[Room::from("r1")]);
        assert_eq!(timeout, Some(std::time::Duration::from_millis(500)));
    }

    #[test]
    fn an_ack_wait_asked_from_the_wire_is_capped() {
        let r = decode_request(&hex(NODE_ACK_REQUEST)).unwrap();
        let RequestBody::BroadcastWithAck { packet, opts, .. } = r.body else {
            panic!()
        };
        let forever = broadcast_ack_request("u", "q", &packet, &opts, std::time::Duration::MAX).unwrap();
        let RequestBody::BroadcastWithAck { timeout, .. } = decode_request(&forever).unwrap().body else {
            panic!()
        };
        assert_eq!(timeout, Some(MAX_ACK_WAIT));
    }

    #[test]
    fn ack_broadcasts_round_trip_and_acks_read_back() {
        let r = decode_request(&hex(NODE_ACK_REQUEST)).unwrap();
        let RequestBody::BroadcastWithAck { packet, opts, timeout } = r.body else {
            panic!()
        };
        let ours = broadcast_ack_request("Ru_W3X", "k3q0Tn", &packet, &opts, timeout.unwrap()).unwrap();
        assert_eq!(ours, hex(NODE_ACK_REQUEST), "byte for byte what Node sends");

        let count = decode_response(br#"{"type":8,"requestId":"k3q0Tn","clientCount":2}"#).unwrap();
        assert_eq!((count.client_count(), count.ack().is_none()), (Some(2), true));
        let ack_value = Value::Str(Str::from(r#"[{"ok":true},"ignored"]"#.to_string()), None);
        let ack = decode_response(&broadcast_ack_response("k3q0Tn", &ack_value).unwrap()).unwrap();
        assert_eq!(ack.client_count(), None);
        assert_eq!(
            text(&ack.ack().unwrap()),
            r#"[{"ok":true}]"#,
            "Node relays the first argument"
        );
    }

    #[test]
    fn decodes_node_json_requests() {
        let fetch = br#"{"uid":"E8ZePf","requestId":"JrR53H","type":5,"opts":{"rooms":["r1"],"except":[]}}"#;
        let r = decode_request(fetch).unwrap();
        assert_eq!(r.id.as_deref(), Some("JrR53H"));
        let RequestBody::Fetch(opts) = r.body else { panic!() };
        assert_eq!(opts.rooms.as_slice(), &[Room::from("r1")]);

        let join = br#"{"uid":"Ru_W3X","type":2,"opts":{"rooms":["r1"],"except":[]},"rooms":["r2"]}"#;
        let RequestBody::Join {
            target: Target::Matching(o),
            rooms,
        } = decode_request(join).unwrap().body
        else {
            panic!()
        };
        assert_eq!(o.rooms.as_slice(), &[Room::from("r1")]);
        assert_eq!(rooms, vec![Room::from("r2")]);

        let legacy = br#"{"uid":"u","requestId":"q","type":3,"sid":"abc","room":"r9"}"#;
        let RequestBody::Leave {
            target: Target::Socket(sid),
            rooms,
        } = decode_request(legacy).unwrap().body
        else {
            panic!()
        };
        assert_eq!((sid.as_str(), rooms), ("abc", vec![Room::from("r9")]));

        let numeric_room = br#"{"uid":"u","requestId":"q","type":0,"rooms":[42]}"#;
        let RequestBody::Sockets(o) = decode_request(numeric_room).unwrap().body else {
            panic!()
        };
        assert_eq!(o.rooms.as_slice(), &[Room::from("42")]);
    }

    #[test]
    fn fetch_round_trip_reads_node_responses() {
        let node = br#"{"requestId":"JrR53H","sockets":[{"id":"NnUyg51kN4WQXNaQAAAA","handshake":{},"rooms":["NnUyg51kN4WQXNaQAAAA","r1"],"data":{}}]}"#;
        let r = decode_response(node).unwrap();
        assert_eq!(r.request_id, "JrR53H");
        let s = r.fetched_sockets();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "NnUyg51kN4WQXNaQAAAA");
        assert_eq!(s[0].1, vec![Room::from("NnUyg51kN4WQXNaQAAAA"), Room::from("r1")]);

        let ours = fetch_response(
            "q1",
            &[FetchedSocket {
                id: "a".into(),
                rooms: vec!["r".into()],
            }],
        );
        assert_eq!(decode_response(&ours).unwrap().fetched_sockets()[0].0, "a");
        let mut opts = BroadcastOptions::default();
        opts.rooms.push("r1".into());
        let req: Json = serde_json::from_slice(&fetch_request("me", "q2", &opts)).unwrap();
        assert_eq!(
            req,
            serde_json::json!({"uid":"me","requestId":"q2","type":5,"opts":{"rooms":["r1"],"except":[]}})
        );
    }
}
