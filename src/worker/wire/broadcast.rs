//! Room broadcasts on the wire: `[uid, {type, data, nsp}, {rooms, except, flags}]` in
//! msgpack, on `socket.io#/#` or the single room's own channel.

use socketioxide_core::Str;
use socketioxide_core::Value;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};
use socketioxide_core::packet::{Packet, PacketData};

use super::payload::{msgpack_to_value, value_to_msgpack};
use super::{Channels, Msgpack, WireError, field, read_msgpack, to_msgpack_bytes};

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
pub(super) fn wire_packet(packet: &Packet) -> Result<Msgpack, WireError> {
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

pub(super) fn packet_from_wire(packet: &Msgpack) -> Result<Packet, WireError> {
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
pub(super) fn wire_opts(opts: &BroadcastOptions, ack_timeout: Option<std::time::Duration>) -> Msgpack {
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

/// The rooms and excluded rooms on the wire; a socket's own broadcast excludes it by id.
pub(super) fn room_lists(opts: &BroadcastOptions) -> (Vec<Room>, Vec<Room>) {
    let mut except = opts.except.to_vec();
    if let Some(sid) = opts.sid.filter(|_| opts.has_flag(BroadcastFlags::Broadcast)) {
        except.push(Room::Owned(sid.to_string()));
    }
    (target_rooms(opts), except)
}

/// The rooms a broadcast targets on the wire: a message for one socket (a sender, no room,
/// not a broadcast) targets the room named by the socket's id.
pub(super) fn target_rooms(opts: &BroadcastOptions) -> Vec<Room> {
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
pub(super) fn opts_from_wire(opts: &Msgpack) -> Result<BroadcastOptions, WireError> {
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
pub(super) fn room_list(list: Option<&Msgpack>) -> Result<Vec<Room>, WireError> {
    match list {
        None | Some(Msgpack::Nil) => Ok(Vec::new()),
        Some(Msgpack::Array(items)) => items.iter().map(room_name).collect(),
        Some(_) => Err(WireError::Shape("rooms are a list")),
    }
}

pub(super) fn room_name(v: &Msgpack) -> Result<Room, WireError> {
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

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_PREFIX;
    use super::super::fixtures::*;
    use super::*;
    use bytes::Bytes;

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
    fn a_placeholder_lookalike_in_a_text_event_is_plain_data() {
        let lookalike = r#"["say","lobby",{"_placeholder":true,"num":0}]"#;
        let packet = Packet::event("/", Value::Str(Str::from(lookalike.to_string()), None));
        let mut opts = BroadcastOptions::default();
        opts.rooms.push("lobby".into());
        let bytes = encode_broadcast("u", &packet, &opts).expect("relayed, not refused");
        let back = decode_broadcast(&bytes).unwrap();
        let PacketData::Event(v, _) = &back.packet.inner else {
            panic!("{:?}", back.packet.inner)
        };
        assert_eq!(text(v), lookalike);
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
        let channels = Channels::new(super::super::Dialect::Classic, DEFAULT_PREFIX, "/", "u");
        assert_eq!(broadcast_channel(&channels, &single), format!("socket.io#/#{sid}#"));
    }
}
