//! Socket.IO 5 packets in text, as `socket.io-parser` 4 writes and checks them:
//! `<type>[<attachments>-][/<namespace>,][<ack id>][<JSON>]`. Decoding checks what Node's
//! decoder checks (an event is a JSON array led by a non-reserved name, an ack an array, a
//! CONNECT payload an object, at most 10 attachments); encoding writes socketioxide-core's
//! `Packet`, the form the Redis wire protocol (`wire`) converts to and from. Binary
//! attachments travel beside the text: placeholders stay in the JSON as the client sent
//! them. No I/O, no state.

use std::collections::VecDeque;

use bytes::Bytes;
use serde_json::Value as Json;
use socketioxide_core::Value;
use socketioxide_core::packet::{Packet, PacketData};

/// Most binary attachments one packet may announce (`socket.io-parser`'s `maxAttachments`).
pub const MAX_ATTACHMENTS: usize = 10;

/// Event names the client library keeps for itself (`socket.io-parser`'s `RESERVED_EVENTS`).
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// A packet from a client.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Connect {
        nsp: String,
    },
    Disconnect {
        nsp: String,
    },
    /// An event; `args` is the whole JSON array (name first). `attachments` binary
    /// messages follow (0 for a text event).
    Event {
        nsp: String,
        args: Vec<Json>,
        ack: Option<i64>,
        attachments: usize,
    },
    /// The answer to an event this server sent with ack `id`: the JSON array as sent.
    Ack {
        nsp: String,
        id: i64,
        text: String,
        attachments: usize,
    },
    /// A packet type only a server sends (CONNECT_ERROR): ignored, as Node does.
    Ignored,
}

impl Decoded {
    pub fn nsp(&self) -> &str {
        match self {
            Decoded::Connect { nsp }
            | Decoded::Disconnect { nsp }
            | Decoded::Event { nsp, .. }
            | Decoded::Ack { nsp, .. } => nsp,
            Decoded::Ignored => "/",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("unknown Socket.IO packet type")]
    Type,
    #[error("illegal attachment count")]
    Attachments,
    #[error("illegal ack id")]
    AckId,
    #[error("invalid payload for this packet type")]
    Payload,
}

/// Decode the text of an Engine.IO message (after its `4`).
pub fn decode(text: &str) -> Result<Decoded, PacketError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b @ b'0'..=b'6') => b - b'0',
        _ => return Err(PacketError::Type),
    };
    let mut i = 1;
    let mut attachments = 0;
    if kind == 5 || kind == 6 {
        let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || bytes.get(i + digits) != Some(&b'-') {
            return Err(PacketError::Attachments);
        }
        attachments = text[i..i + digits].parse().map_err(|_| PacketError::Attachments)?;
        if !(1..=MAX_ATTACHMENTS).contains(&attachments) {
            return Err(PacketError::Attachments);
        }
        i += digits + 1;
    }
    let nsp = if bytes.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map_or(text.len(), |at| i + at);
        let nsp = &text[i..end];
        i = (end + 1).min(text.len());
        nsp
    } else {
        "/"
    };
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let id = match digits {
        0 => None,
        _ => Some(text[i..i + digits].parse::<i64>().map_err(|_| PacketError::AckId)?),
    };
    i += digits;
    let data = &text[i..];
    let json = || serde_json::from_str::<Json>(data).map_err(|_| PacketError::Payload);
    let nsp = nsp.to_string();
    Ok(match kind {
        0 => {
            if !data.is_empty() && !json()?.is_object() {
                return Err(PacketError::Payload);
            }
            Decoded::Connect { nsp }
        }
        1 if data.is_empty() => Decoded::Disconnect { nsp },
        2 | 5 => {
            let Json::Array(args) = json()? else {
                return Err(PacketError::Payload);
            };
            match args.first() {
                Some(Json::String(name)) if !RESERVED_EVENTS.contains(&name.as_str()) => {}
                Some(Json::Number(_)) => {}
                _ => return Err(PacketError::Payload),
            }
            Decoded::Event {
                nsp,
                args,
                ack: id,
                attachments,
            }
        }
        3 | 6 => {
            if !json()?.is_array() {
                return Err(PacketError::Payload);
            }
            Decoded::Ack {
                nsp,
                id: id.ok_or(PacketError::AckId)?,
                text: data.to_string(),
                attachments,
            }
        }
        4 => Decoded::Ignored,
        _ => return Err(PacketError::Payload),
    })
}

/// A packet for clients: the Engine.IO message text (with its `4`) and the binary
/// attachments to send after it. `None` for a packet a text parser cannot write (a
/// binary-parser payload).
pub fn encode(packet: &Packet) -> Option<(Bytes, Option<VecDeque<Bytes>>)> {
    let (kind, data, id) = match &packet.inner {
        PacketData::Connect(data) => (0, data.as_ref(), None),
        PacketData::Disconnect => (1, None, None),
        PacketData::Event(data, id) | PacketData::BinaryEvent(data, id) => (2, Some(data), *id),
        PacketData::EventAck(data, id) | PacketData::BinaryAck(data, id) => (3, Some(data), Some(*id)),
        PacketData::ConnectError(message) => {
            let body = serde_json::json!({ "message": message }).to_string();
            return Some((Bytes::from(head(4, 0, &packet.ns, None) + &body), None));
        }
    };
    let (text, bins) = match data {
        None => ("", None),
        Some(Value::Str(text, bins)) => (text.as_str(), bins.as_ref().filter(|b| !b.is_empty())),
        Some(Value::Bytes(_)) => return None,
    };
    let n = bins.map_or(0, VecDeque::len);
    let kind = if n > 0 && (kind == 2 || kind == 3) {
        kind + 3
    } else {
        kind
    };
    Some((Bytes::from(head(kind, n, &packet.ns, id) + text), bins.cloned()))
}

/// `4<type>[<n>-][/<nsp>,][<id>]`.
fn head(kind: u8, attachments: usize, nsp: &str, id: Option<i64>) -> String {
    let mut out = format!("4{kind}");
    if attachments > 0 {
        out.push_str(&format!("{attachments}-"));
    }
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    out
}

/// An event packet on `/` from its JSON array (`["name", ...args]`) and attachments.
pub fn event(array: &Json, attachments: Option<VecDeque<Bytes>>, ack: Option<i64>) -> Packet {
    let value = Value::Str(array.to_string().into(), attachments);
    Packet {
        inner: PacketData::Event(value, ack),
        ns: "/".into(),
    }
}

/// The first argument of an ack (`[arg, …]`), as socket.io-client callbacks take it.
pub fn first_arg(value: &Value) -> Option<Json> {
    match value {
        Value::Str(text, _) => match serde_json::from_str::<Json>(text.as_str()).ok()? {
            Json::Array(mut args) if !args.is_empty() => Some(args.swap_remove(0)),
            _ => None,
        },
        Value::Bytes(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event_of(text: &str) -> (Vec<Json>, Option<i64>, usize) {
        match decode(text) {
            Ok(Decoded::Event {
                nsp,
                args,
                ack,
                attachments,
            }) if nsp == "/" => (args, ack, attachments),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn client_packets_are_read_and_checked_as_node_does() {
        assert_eq!(decode("0"), Ok(Decoded::Connect { nsp: "/".into() }));
        assert_eq!(decode(r#"0{"token":"x"}"#), Ok(Decoded::Connect { nsp: "/".into() }));
        assert_eq!(decode("0/admin,"), Ok(Decoded::Connect { nsp: "/admin".into() }));
        assert_eq!(decode("0[]"), Err(PacketError::Payload));
        assert_eq!(decode("1"), Ok(Decoded::Disconnect { nsp: "/".into() }));
        assert_eq!(event_of(r#"2["join","r"]"#), (vec![json!("join"), json!("r")], None, 0));
        assert_eq!(event_of(r#"212["whoami"]"#), (vec![json!("whoami")], Some(12), 0));
        assert_eq!(
            event_of(r#"52-7["say","r",{"_placeholder":true,"num":0}]"#),
            (
                vec![json!("say"), json!("r"), json!({"_placeholder": true, "num": 0})],
                Some(7),
                2
            )
        );
        assert_eq!(event_of(r#"2[7]"#).0, vec![json!(7)]);
        assert_eq!(
            decode(r#"35["ok"]"#),
            Ok(Decoded::Ack {
                nsp: "/".into(),
                id: 5,
                text: r#"["ok"]"#.into(),
                attachments: 0
            })
        );
        assert_eq!(decode(r#"2/admin,1["x"]"#).unwrap().nsp(), "/admin");
        assert_eq!(decode(r#"4{"message":"x"}"#), Ok(Decoded::Ignored));
        for bad in [
            "",
            "7",
            "x",
            r#"2{"a":1}"#,
            r#"2[]"#,
            r#"2["disconnect"]"#,
            r#"2[{"a":1}]"#,
            "2[",
            r#"3["no id"]"#,
            "3{}",
            "5[\"x\"]",
            "50-[\"x\"]",
            "511-[\"x\"]",
            "5x-[\"x\"]",
            "299999999999999999999[\"x\"]",
            "1x",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn server_packets_are_written_as_socket_io_parser_writes_them() {
        let said = event(&json!(["said", {"msg": "hi"}]), None, None);
        assert_eq!(
            encode(&said).unwrap(),
            (Bytes::from(r#"42["said",{"msg":"hi"}]"#), None)
        );
        let bin = Bytes::from_static(b"\x01");
        let with_bin = event(
            &json!(["said", {"_placeholder": true, "num": 0}]),
            Some([bin.clone()].into()),
            Some(3),
        );
        let (text, bins) = encode(&with_bin).unwrap();
        assert_eq!(&text[..], br#"451-3["said",{"_placeholder":true,"num":0}]"#);
        assert_eq!(bins, Some([bin].into()));
        let ack = Packet {
            inner: PacketData::EventAck(Value::Str(r#"[{"ok":true}]"#.into(), None), 12),
            ns: "/".into(),
        };
        assert_eq!(&encode(&ack).unwrap().0[..], br#"4312[{"ok":true}]"#);
        let refused = Packet {
            inner: PacketData::ConnectError("Invalid namespace".into()),
            ns: "/admin".into(),
        };
        assert_eq!(
            &encode(&refused).unwrap().0[..],
            br#"44/admin,{"message":"Invalid namespace"}"#
        );
        let connected = Packet {
            inner: PacketData::Connect(Some(Value::Str(r#"{"sid":"x"}"#.into(), None))),
            ns: "/".into(),
        };
        assert_eq!(&encode(&connected).unwrap().0[..], br#"40{"sid":"x"}"#);
        assert_eq!(
            first_arg(&Value::Str(r#"[{"from":"a"},2]"#.into(), None)),
            Some(json!({"from": "a"}))
        );
        assert_eq!(first_arg(&Value::Str("[]".into(), None)), None);
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn arg() -> impl Strategy<Value = Json> {
            prop_oneof![
                any::<i32>().prop_map(Json::from),
                ".{0,12}".prop_map(Json::from),
                any::<bool>().prop_map(Json::from),
                Just(Json::Null),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_text_decodes_to_a_checked_packet_or_an_error(text in ".{0,60}", bytes in vec(any::<u8>(), 0..60)) {
                for text in [text, String::from_utf8_lossy(&bytes).into_owned(), format!("5{}", String::from_utf8_lossy(&bytes))] {
                    match decode(&text) {
                        Ok(Decoded::Event { args, attachments, .. }) => {
                            prop_assert!(matches!(args.first(), Some(Json::String(_) | Json::Number(_))));
                            prop_assert!(attachments <= MAX_ATTACHMENTS);
                        }
                        Ok(Decoded::Ack { attachments, .. }) => prop_assert!(attachments <= MAX_ATTACHMENTS),
                        _ => {}
                    }
                }
            }

            #[test]
            fn what_the_server_writes_a_client_reads_back(
                name in "[a-z]{1,10}",
                args in vec(arg(), 0..5),
                ack in proptest::option::of(0i64..i64::MAX),
                bins in vec(vec(any::<u8>(), 0..8), 0..=MAX_ATTACHMENTS),
                nsp in prop_oneof![Just("/".to_string()), "/[a-z]{1,6}"],
            ) {
                let mut array = vec![Json::from(name)];
                array.extend(args);
                array.extend((0..bins.len()).map(|n| serde_json::json!({"_placeholder": true, "num": n})));
                let bins: VecDeque<Bytes> = bins.into_iter().map(Bytes::from).collect();
                let mut packet = event(&Json::Array(array.clone()), Some(bins.clone()), ack);
                packet.ns = nsp.clone().into();
                let (text, sent) = encode(&packet).unwrap();
                prop_assert_eq!(sent.unwrap_or_default(), bins.clone());
                let text = std::str::from_utf8(&text[1..]).unwrap();
                prop_assert_eq!(
                    decode(text),
                    Ok(Decoded::Event { nsp, args: array, ack, attachments: bins.len() })
                );
            }
        }
    }
}
