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

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use rmpv::Value as Msgpack;
use serde_json::Value as Json;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::{Str, Value};

/// The Node adapter's default channel prefix (its `key` option).
pub const DEFAULT_PREFIX: &str = "socket.io";

/// Deepest nesting accepted in a payload (serde_json's own recursion limit).
const MAX_DEPTH: usize = 128;

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

/// The channel names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels {
    /// `socket.io#/#`: namespace-wide broadcasts, and the prefix of per-room ones.
    pub broadcast: String,
    pub request: String,
    pub response: String,
    /// Responses meant for this server only (`publishOnSpecificResponseChannel`).
    pub own_response: String,
}

impl Channels {
    pub fn new(prefix: &str, nsp: &str, uid: &str) -> Channels {
        let response = format!("{prefix}-response#{nsp}#");
        Channels {
            broadcast: format!("{prefix}#{nsp}#"),
            request: format!("{prefix}-request#{nsp}#"),
            own_response: format!("{response}{uid}#"),
            response,
        }
    }

    /// The pattern that takes every broadcast of the namespace.
    pub fn broadcast_pattern(&self) -> String {
        format!("{}*", self.broadcast)
    }

    /// Where a broadcast to `rooms` is published: the room's own channel when there is
    /// exactly one, so servers without members can skip it unread.
    pub fn broadcast_to(&self, rooms: &[Room]) -> String {
        match rooms {
            [room] => format!("{}{room}#", self.broadcast),
            _ => self.broadcast.clone(),
        }
    }

    /// For a message on `channel`: `Some(Some(room))` on a room channel, `Some(None)` on the
    /// namespace-wide one, `None` when it is not a broadcast channel of this namespace.
    pub fn broadcast_room<'a>(&self, channel: &'a str) -> Option<Option<&'a str>> {
        let rest = channel.strip_prefix(self.broadcast.as_str())?;
        if rest.is_empty() {
            return Some(None);
        }
        rest.strip_suffix('#').map(Some)
    }

    pub fn is_response(&self, channel: &str) -> bool {
        channel == self.response || channel == self.own_response
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

// ---- broadcasts ----

/// A broadcast received from another server.
#[derive(Debug)]
pub struct IncomingBroadcast {
    /// The sending server; a server ignores its own messages.
    pub uid: String,
    pub packet: Packet,
    pub opts: BroadcastOptions,
}

/// Encode a broadcast of `packet` to what `opts` selects, as the Node adapter does.
pub fn encode_broadcast(uid: &str, packet: &Packet, opts: &BroadcastOptions) -> Result<Vec<u8>, WireError> {
    let message = Msgpack::Array(vec![uid.into(), wire_packet(packet)?, wire_opts(opts, None)]);
    Ok(to_msgpack_bytes(&message))
}

/// The first bytes of every broadcast `uid` sends (array header, then the uid string),
/// so a server can skip its own messages without decoding them.
pub fn broadcast_prefix(uid: &str) -> Vec<u8> {
    let mut out = vec![0x93]; // fixarray of 3
    let _ = rmpv::encode::write_value(&mut out, &Msgpack::from(uid));
    out
}

/// Decode a broadcast message (`[uid, packet, opts]`).
pub fn decode_broadcast(bytes: &[u8]) -> Result<IncomingBroadcast, WireError> {
    let message = read_msgpack(bytes)?;
    let Msgpack::Array(parts) = message else {
        return Err(WireError::Shape("a broadcast is an array"));
    };
    let [uid, packet, opts] =
        <[Msgpack; 3]>::try_from(parts).map_err(|_| WireError::Shape("a broadcast has 3 parts"))?;
    let uid = uid.as_str().ok_or(WireError::Shape("uid is a string"))?.to_string();
    Ok(IncomingBroadcast {
        uid,
        packet: packet_from_wire(&packet)?,
        opts: opts_from_wire(&opts)?,
    })
}

/// `{type, data, nsp}`: events only (the Node adapter relays nothing else this way).
/// The type is always EVENT: like socket.io, the receiving side decides it is binary.
fn wire_packet(packet: &Packet) -> Result<Msgpack, WireError> {
    let (data, ack) = match &packet.inner {
        PacketData::Event(data, ack) | PacketData::BinaryEvent(data, ack) => (data, *ack),
        _ => return Err(WireError::Shape("only events cross to other servers")),
    };
    let mut map = vec![
        ("type".into(), 2.into()),
        ("data".into(), value_to_msgpack(data)?),
        ("nsp".into(), packet.ns.as_str().into()),
    ];
    if let Some(id) = ack {
        map.push(("id".into(), id.into()));
    }
    Ok(Msgpack::Map(map))
}

fn packet_from_wire(packet: &Msgpack) -> Result<Packet, WireError> {
    let kind = field(packet, "type").and_then(Msgpack::as_u64);
    if !matches!(kind, Some(2 | 5)) {
        return Err(WireError::Shape("only EVENT packets are relayed"));
    }
    let data = field(packet, "data").ok_or(WireError::Shape("an event has data"))?;
    let nsp = match field(packet, "nsp") {
        None | Some(Msgpack::Nil) => "/",
        Some(n) => n.as_str().ok_or(WireError::Shape("nsp is a string"))?,
    };
    let value = msgpack_to_value(data)?;
    let ack = field(packet, "id").and_then(Msgpack::as_i64);
    let inner = match value {
        Value::Str(_, Some(ref bins)) if !bins.is_empty() => PacketData::BinaryEvent(value, ack),
        _ => PacketData::Event(value, ack),
    };
    Ok(Packet {
        inner,
        ns: Str::from(nsp.to_string()),
    })
}

/// `{rooms, except, flags}`.
fn wire_opts(opts: &BroadcastOptions, ack_timeout: Option<std::time::Duration>) -> Msgpack {
    let (rooms, except) = room_lists(opts);
    let names = |list: Vec<Room>| Msgpack::Array(list.iter().map(|r| r.as_ref().into()).collect());
    let mut flags = Vec::new();
    if opts.has_flag(BroadcastFlags::Volatile) {
        flags.push(("volatile".into(), true.into()));
    }
    if let Some(t) = ack_timeout {
        flags.push((
            "timeout".into(),
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).into(),
        ));
    }
    Msgpack::Map(vec![
        ("rooms".into(), names(rooms)),
        ("except".into(), names(except)),
        ("flags".into(), Msgpack::Map(flags)),
    ])
}

/// `{rooms, except}` of a JSON request.
fn json_opts(opts: &BroadcastOptions) -> Json {
    let (rooms, except) = room_lists(opts);
    let names = |list: Vec<Room>| list.iter().map(|r| Json::from(r.as_ref())).collect::<Vec<_>>();
    serde_json::json!({ "rooms": names(rooms), "except": names(except) })
}

/// The rooms and excluded rooms on the wire; a socket's own broadcast excludes it by id.
fn room_lists(opts: &BroadcastOptions) -> (Vec<Room>, Vec<Room>) {
    let mut except = opts.except.to_vec();
    if let Some(sid) = opts.sid.filter(|_| opts.has_flag(BroadcastFlags::Broadcast)) {
        except.push(Room::Owned(sid.to_string()));
    }
    (target_rooms(opts), except)
}

/// The rooms a broadcast targets on the wire: a message for one socket (a sender, no room,
/// not a broadcast) targets the room named by the socket's id.
fn target_rooms(opts: &BroadcastOptions) -> Vec<Room> {
    match opts.sid {
        Some(sid) if opts.rooms.is_empty() && !opts.has_flag(BroadcastFlags::Broadcast) => {
            vec![Room::Owned(sid.to_string())]
        }
        _ => opts.rooms.to_vec(),
    }
}

/// The channel a broadcast with `opts` is published on.
pub fn broadcast_channel(channels: &Channels, opts: &BroadcastOptions) -> String {
    channels.broadcast_to(&target_rooms(opts))
}

/// The options of a remote broadcast or request. Everything it names is selected (the
/// broadcast flag without a sender excludes nobody, and selects everyone when no room is
/// given, like Node's empty room set).
fn opts_from_wire(opts: &Msgpack) -> Result<BroadcastOptions, WireError> {
    let mut out = BroadcastOptions::default();
    out.add_flag(BroadcastFlags::Broadcast);
    out.rooms = room_list(field(opts, "rooms"))?.into_iter().collect();
    out.except = room_list(field(opts, "except"))?.into_iter().collect();
    if field(opts, "flags")
        .and_then(|f| field(f, "volatile"))
        .and_then(Msgpack::as_bool)
        .unwrap_or(false)
    {
        out.add_flag(BroadcastFlags::Volatile);
    }
    Ok(out)
}

/// A list of room names; Node allows numbers as room names, written as strings here.
fn room_list(list: Option<&Msgpack>) -> Result<Vec<Room>, WireError> {
    match list {
        None | Some(Msgpack::Nil) => Ok(Vec::new()),
        Some(Msgpack::Array(items)) => items.iter().map(room_name).collect(),
        Some(_) => Err(WireError::Shape("rooms are a list")),
    }
}

fn room_name(v: &Msgpack) -> Result<Room, WireError> {
    match v {
        Msgpack::String(s) => s
            .as_str()
            .map(|s| Room::Owned(s.to_string()))
            .ok_or(WireError::Shape("room names are UTF-8")),
        Msgpack::Integer(i) => Ok(Room::Owned(i.to_string())),
        Msgpack::F64(f) => Ok(Room::Owned(f.to_string())),
        _ => Err(WireError::Shape("room names are strings or numbers")),
    }
}

// ---- requests and responses ----

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
                .map(std::time::Duration::from_millis),
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

pub fn fetch_response(request_id: &str, sockets: &[FetchedSocket]) -> Vec<u8> {
    let sockets: Vec<Json> = sockets
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                // socketioxide does not keep the handshake in a form Node's Handshake has;
                // these are the fields Node code reads, empty.
                "handshake": { "headers": {}, "time": "", "address": "", "xdomain": false,
                               "secure": false, "issued": 0, "url": "", "query": {}, "auth": {} },
                "rooms": s.rooms,
                "data": {},
            })
        })
        .collect();
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

// ---- payloads: socketioxide text values <-> msgpack ----

/// Event arguments (`["event", ...args]`) from socketioxide's text form to msgpack with the
/// binary attachments put back where their placeholders are. Object keys keep their order.
pub fn value_to_msgpack(value: &Value) -> Result<Msgpack, WireError> {
    let Value::Str(text, bins) = value else {
        return Err(WireError::BinaryParser);
    };
    // serde_json refuses nesting deeper than 128, so the walk below is bounded too.
    let parsed: Msgpack = serde_json::from_str(text.as_str())?;
    fill_placeholders(parsed, bins.as_ref())
}

/// Event arguments from msgpack to socketioxide's text form: JSON, with each binary value
/// replaced by a placeholder and moved to the attachments. Object keys keep their order.
pub fn msgpack_to_value(data: &Msgpack) -> Result<Value, WireError> {
    let bins = std::cell::RefCell::new(VecDeque::new());
    let text = serde_json::to_string(&AsJson {
        value: data,
        bins: &bins,
        depth: 0,
    })
    .map_err(|e| {
        if e.to_string().contains("nested") {
            WireError::TooDeep
        } else {
            WireError::Json(e)
        }
    })?;
    let bins = bins.into_inner();
    Ok(Value::Str(Str::from(text), (!bins.is_empty()).then_some(bins)))
}

fn fill_placeholders(v: Msgpack, bins: Option<&VecDeque<Bytes>>) -> Result<Msgpack, WireError> {
    Ok(match v {
        Msgpack::Array(items) => Msgpack::Array(
            items
                .into_iter()
                .map(|i| fill_placeholders(i, bins))
                .collect::<Result<_, _>>()?,
        ),
        Msgpack::Map(entries) => {
            if let Some(num) = placeholder(&entries) {
                let bin = bins
                    .and_then(|b| b.get(num as usize))
                    .ok_or(WireError::MissingAttachment(num))?;
                return Ok(Msgpack::Binary(bin.to_vec()));
            }
            Msgpack::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((k, fill_placeholders(v, bins)?)))
                    .collect::<Result<_, WireError>>()?,
            )
        }
        other => other,
    })
}

/// `{"_placeholder": true, "num": N}` (socket.io-parser's binary placeholder).
fn placeholder(entries: &[(Msgpack, Msgpack)]) -> Option<u64> {
    let get = |key: &str| entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v);
    if entries.len() == 2 && get("_placeholder") == Some(&Msgpack::Boolean(true)) {
        get("num").and_then(Msgpack::as_u64)
    } else {
        None
    }
}

/// Serializes a msgpack value as JSON the way `JSON.stringify` sees what notepack decoded:
/// binaries become numbered placeholders (collected in `bins`), `undefined` (an extension)
/// null, NaN and infinities null, non-string keys their text.
struct AsJson<'a> {
    value: &'a Msgpack,
    bins: &'a std::cell::RefCell<VecDeque<Bytes>>,
    depth: usize,
}

impl AsJson<'_> {
    fn child<'b>(&'b self, value: &'b Msgpack) -> AsJson<'b> {
        AsJson {
            value,
            bins: self.bins,
            depth: self.depth + 1,
        }
    }
}

impl serde::Serialize for AsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        if self.depth > MAX_DEPTH {
            return Err(S::Error::custom("payload nested too deep"));
        }
        match self.value {
            Msgpack::Nil | Msgpack::Ext(..) => s.serialize_unit(),
            Msgpack::Boolean(b) => s.serialize_bool(*b),
            Msgpack::Integer(i) => match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => s.serialize_u64(u),
                (None, Some(i)) => s.serialize_i64(i),
                _ => s.serialize_unit(),
            },
            Msgpack::F32(f) if f.is_finite() => s.serialize_f32(*f),
            Msgpack::F64(f) if f.is_finite() => s.serialize_f64(*f),
            Msgpack::F32(_) | Msgpack::F64(_) => s.serialize_unit(),
            Msgpack::String(text) => s.serialize_str(&String::from_utf8_lossy(text.as_bytes())),
            Msgpack::Binary(b) => {
                let num = {
                    let mut bins = self.bins.borrow_mut();
                    bins.push_back(Bytes::copy_from_slice(b));
                    bins.len() - 1
                };
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("_placeholder", &true)?;
                map.serialize_entry("num", &num)?;
                map.end()
            }
            Msgpack::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&self.child(item))?;
                }
                seq.end()
            }
            Msgpack::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    let key = match k {
                        Msgpack::String(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
                        other => other.to_string(),
                    };
                    map.serialize_entry(&key, &self.child(v))?;
                }
                map.end()
            }
        }
    }
}

// ---- helpers ----

fn field<'a>(map: &'a Msgpack, key: &str) -> Option<&'a Msgpack> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn read_msgpack(bytes: &[u8]) -> Result<Msgpack, WireError> {
    Ok(rmpv::decode::read_value_with_max_depth(&mut &bytes[..], 2 * MAX_DEPTH)?)
}

fn read_json_or_msgpack(bytes: &[u8]) -> Result<Msgpack, WireError> {
    if bytes.first() == Some(&b'{') {
        Ok(serde_json::from_slice(bytes)?)
    } else {
        read_msgpack(bytes)
    }
}

fn to_msgpack_bytes(v: &Msgpack) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

fn json_bytes(v: &Json) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `io.to("r1").emit("said", {from: "n1", room: "r1", msg: "hi"})` on a Node worker,
    /// as captured on Redis.
    const NODE_SAID: &str = "93a67978486f665483a47479706502a46461746192a47361696483a466726f6da26e31a4726f6f6da27231a36d7367a26869a36e7370a12f83a5726f6f6d7391a27231a665786365707490a5666c61677380";
    /// `io.to("r1").emit("bin", Buffer.from([1,2,3]), {nested: Buffer.from([9])})`.
    const NODE_BINARY: &str = "93a652755f57335883a47479706502a46461746193a362696ec40301020381a66e6573746564c40109a36e7370a12f83a5726f6f6d7391a27231a665786365707490a5666c61677380";
    /// `io.except("r3").volatile.emit("all", "x")`.
    const NODE_VOLATILE_EXCEPT: &str = "93a652755f57335883a47479706502a46461746192a3616c6ca178a36e7370a12f83a5726f6f6d7390a665786365707491a27233a5666c61677381a8766f6c6174696c65c3";
    /// `io.to("r1").timeout(500).emit("ask", 1, cb)`: a broadcast-with-ack request.
    const NODE_ACK_REQUEST: &str = "85a3756964a652755f573358a9726571756573744964a66b337130546ea47479706507a67061636b657483a47479706502a46461746192a361736b01a36e7370a12fa46f70747383a5726f6f6d7391a27231a665786365707490a5666c61677381a774696d656f7574cd01f4";

    fn text(v: &Value) -> &str {
        v.as_str().unwrap().as_str()
    }

    #[test]
    fn channel_names_match_the_node_adapter() {
        let c = Channels::new(DEFAULT_PREFIX, "/", "AbC123");
        assert_eq!(c.broadcast_pattern(), "socket.io#/#*");
        assert_eq!(c.request, "socket.io-request#/#");
        assert_eq!(c.response, "socket.io-response#/#");
        assert_eq!(c.own_response, "socket.io-response#/#AbC123#");
        assert_eq!(c.broadcast_to(&["r1".into()]), "socket.io#/#r1#");
        assert_eq!(c.broadcast_to(&["a".into(), "b".into()]), "socket.io#/#");
        assert_eq!(c.broadcast_to(&[]), "socket.io#/#");
        assert_eq!(c.broadcast_room("socket.io#/#r1#"), Some(Some("r1")));
        assert_eq!(c.broadcast_room("socket.io#/#"), Some(None));
        assert_eq!(c.broadcast_room("socket.io#/admin#r1#"), None);
        assert_eq!(c.broadcast_room("socket.io-request#/#"), None);
    }

    #[test]
    fn decodes_a_node_room_broadcast() {
        let b = decode_broadcast(&hex(NODE_SAID)).unwrap();
        assert_eq!(b.uid, "yxHofT");
        assert_eq!(b.packet.ns, "/");
        let PacketData::Event(v, None) = &b.packet.inner else {
            panic!("{:?}", b.packet.inner)
        };
        assert_eq!(text(v), r#"["said",{"from":"n1","room":"r1","msg":"hi"}]"#);
        assert_eq!(b.opts.rooms.as_slice(), &[Room::from("r1")]);
        assert!(b.opts.except.is_empty());
        assert!(!b.opts.has_flag(BroadcastFlags::Volatile));
    }

    #[test]
    fn node_binaries_become_attachments_and_back() {
        let b = decode_broadcast(&hex(NODE_BINARY)).unwrap();
        let PacketData::BinaryEvent(v, None) = &b.packet.inner else {
            panic!("{:?}", b.packet.inner)
        };
        assert_eq!(
            text(v),
            r#"["bin",{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1}}]"#
        );
        let Value::Str(_, Some(bins)) = v else { panic!() };
        assert_eq!(bins, &[Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[9])]);
        // Re-encoding gives Node's bytes again, except for the sender's uid.
        let again = encode_broadcast("Ru_W3X", &b.packet, &b.opts).unwrap();
        assert_eq!(again, hex(NODE_BINARY));
        assert!(again.starts_with(&broadcast_prefix("Ru_W3X")));
        assert!(!again.starts_with(&broadcast_prefix("Ru_W3Y")));
    }

    #[test]
    fn our_broadcast_is_byte_for_byte_what_node_sends() {
        let data = Value::Str(
            Str::from(r#"["said",{"from":"n1","room":"r1","msg":"hi"}]"#.to_string()),
            None,
        );
        let packet = Packet::event("/", data);
        let mut opts = BroadcastOptions::default();
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms.push("r1".into());
        assert_eq!(encode_broadcast("yxHofT", &packet, &opts).unwrap(), hex(NODE_SAID));
    }

    #[test]
    fn volatile_and_except_survive_the_trip() {
        let b = decode_broadcast(&hex(NODE_VOLATILE_EXCEPT)).unwrap();
        assert!(b.opts.rooms.is_empty());
        assert_eq!(b.opts.except.as_slice(), &[Room::from("r3")]);
        assert!(b.opts.has_flag(BroadcastFlags::Volatile));
        assert!(b.opts.has_flag(BroadcastFlags::Broadcast), "no room: everyone");
        assert_eq!(
            encode_broadcast("Ru_W3X", &b.packet, &b.opts).unwrap(),
            hex(NODE_VOLATILE_EXCEPT)
        );
    }

    #[test]
    fn a_socket_broadcast_excludes_its_sender_and_a_single_target_is_its_room() {
        let sid = socketioxide_core::Sid::new();
        let packet = Packet::event("/", Value::Str(Str::from(r#"["e"]"#.to_string()), None));
        let mut opts = BroadcastOptions::new(sid);
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms.push("r".into());
        let b = decode_broadcast(&encode_broadcast("u", &packet, &opts).unwrap()).unwrap();
        assert_eq!(b.opts.except.as_slice(), &[Room::from(sid.to_string())]);

        let single = BroadcastOptions::new(sid);
        let b = decode_broadcast(&encode_broadcast("u", &packet, &single).unwrap()).unwrap();
        assert_eq!(b.opts.rooms.as_slice(), &[Room::from(sid.to_string())]);
        assert!(b.opts.except.is_empty());
        let channels = Channels::new(DEFAULT_PREFIX, "/", "u");
        assert_eq!(broadcast_channel(&channels, &single), format!("socket.io#/#{sid}#"));
    }

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
        let dangling = Value::Str(Str::from(r#"["e",{"_placeholder":true,"num":3}]"#.to_string()), None);
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
    fn floats_and_odd_values_read_like_json_stringify() {
        let v = Msgpack::Array(vec![
            "e".into(),
            Msgpack::F64(f64::NAN),
            Msgpack::F64(1.5),
            Msgpack::Ext(0, vec![0]),
            Msgpack::Map(vec![(1.into(), true.into())]),
        ]);
        assert_eq!(
            text(&msgpack_to_value(&v).unwrap()),
            r#"["e",null,1.5,null,{"1":true}]"#
        );
    }

    #[test]
    fn random_ids_have_the_asked_length_and_alphabet() {
        let a = random_id(6);
        assert_eq!(a.len(), 6);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_id(16), random_id(16));
    }
}
