//! Engine.IO 4 on the wire: the packet types, the open packet, long-polling payloads (packets
//! joined by a record separator, binary ones as `b` + base64) and the error answers, as
//! Node's `engine.io` 6 writes and reads them. Plain functions over bytes: no session, no
//! I/O.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

/// What separates the packets of one long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// An Engine.IO packet for the client, as one WebSocket message or one part of a polling
/// payload. Text packets start with their type digit (`4` for a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(Bytes),
    Binary(Bytes),
}

impl Outgoing {
    pub fn text(s: &'static str) -> Outgoing {
        Outgoing::Text(Bytes::from_static(s.as_bytes()))
    }

    /// Bytes it takes in a polling payload.
    fn polling_len(&self) -> usize {
        match self {
            Outgoing::Text(t) => t.len(),
            Outgoing::Binary(b) => 1 + b.len().div_ceil(3) * 4,
        }
    }
}

/// An Engine.IO packet from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Close,
    /// `2` (a v4 client only sends `2probe`, on the WebSocket it upgrades to).
    Ping(&'a str),
    Pong,
    /// A message: a Socket.IO packet in text.
    Message(&'a str),
    Upgrade,
    Noop,
    /// A binary message (a Socket.IO binary attachment).
    Binary(Bytes),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EioError {
    #[error("unknown Engine.IO packet type {0:?}")]
    Type(Option<char>),
    #[error("a binary packet in a polling payload is not valid base64")]
    Base64,
    #[error("a text packet is not valid UTF-8")]
    Utf8,
}

/// One text packet (a WebSocket text message, or one part of a polling payload).
pub fn decode_text(packet: &str) -> Result<Incoming<'_>, EioError> {
    let mut chars = packet.chars();
    let kind = chars.next();
    let rest = chars.as_str();
    Ok(match kind {
        Some('1') => Incoming::Close,
        Some('2') => Incoming::Ping(rest),
        Some('3') => Incoming::Pong,
        Some('4') => Incoming::Message(rest),
        Some('5') => Incoming::Upgrade,
        Some('6') => Incoming::Noop,
        other => return Err(EioError::Type(other)),
    })
}

/// The packets of a polling POST body.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Incoming<'_>>, EioError> {
    body.split(|b| *b == SEPARATOR)
        .map(|part| match part.split_first() {
            Some((b'b', data)) => base64::engine::general_purpose::STANDARD
                .decode(data)
                .map(|d| Incoming::Binary(Bytes::from(d)))
                .map_err(|_| EioError::Base64),
            _ => decode_text(std::str::from_utf8(part).map_err(|_| EioError::Utf8)?),
        })
        .collect()
}

/// A polling GET's answer: every packet in `packets`, in order.
pub fn encode_payload(packets: &VecDeque<Outgoing>) -> Bytes {
    let len = packets.iter().map(|p| p.polling_len() + 1).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            out.put_u8(SEPARATOR);
        }
        match packet {
            Outgoing::Text(t) => out.extend_from_slice(t),
            Outgoing::Binary(b) => {
                out.put_u8(b'b');
                out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b).as_bytes());
            }
        }
    }
    out.freeze()
}

/// The open packet (`0{"sid":…}`): the session id first, as Node writes it, since proxies
/// read it there.
pub fn open_packet(
    sid: &str,
    upgrades: bool,
    ping_interval: Duration,
    ping_timeout: Duration,
    max_payload: u64,
) -> Bytes {
    let upgrades = if upgrades { r#"["websocket"]"# } else { "[]" };
    Bytes::from(format!(
        r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{},"pingTimeout":{},"maxPayload":{max_payload}}}"#,
        ping_interval.as_millis(),
        ping_timeout.as_millis()
    ))
}

/// Node's error codes and their messages (`engine.io` `Server.errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TransportUnknown = 0,
    SessionIdUnknown = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::TransportUnknown => "Transport unknown",
            Refusal::SessionIdUnknown => "Session ID unknown",
            Refusal::BadHandshakeMethod => "Bad handshake method",
            Refusal::BadRequest => "Bad request",
            Refusal::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The 400 body: `{"code":1,"message":"Session ID unknown"}`.
    pub fn body(self) -> String {
        format!(r#"{{"code":{},"message":"{}"}}"#, self as u8, self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_payloads_both_ways() {
        let got = decode_payload(b"40\x1e42[\"say\",\"r\",1]\x1e3\x1ebAQI=").unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Message("0"),
                Incoming::Message("2[\"say\",\"r\",1]"),
                Incoming::Pong,
                Incoming::Binary(Bytes::from_static(&[1, 2])),
            ]
        );
        assert_eq!(decode_payload(b"1").unwrap(), vec![Incoming::Close]);
        assert_eq!(decode_payload(b"bnot base64!"), Err(EioError::Base64));
        assert_eq!(decode_payload(b"9x"), Err(EioError::Type(Some('9'))));
        assert_eq!(decode_payload(b""), Err(EioError::Type(None)));
        assert_eq!(decode_payload(b"4\xff"), Err(EioError::Utf8));

        let out: VecDeque<Outgoing> = [
            Outgoing::text("2"),
            Outgoing::Text(Bytes::from_static(b"42[\"said\"]")),
            Outgoing::Binary(Bytes::from_static(&[1, 2, 3, 4])),
        ]
        .into();
        let payload = encode_payload(&out);
        assert_eq!(&payload[..], b"2\x1e42[\"said\"]\x1ebAQIDBA==");
        assert_eq!(payload.len(), out.iter().map(|p| p.polling_len()).sum::<usize>() + 2);
    }

    #[test]
    fn the_open_packet_and_refusals_read_as_node_writes_them() {
        let open = open_packet(
            "AAAAAAAAAAAAAAAA",
            true,
            Duration::from_secs(25),
            Duration::from_secs(20),
            1_000_000,
        );
        assert_eq!(
            &open[..],
            br#"0{"sid":"AAAAAAAAAAAAAAAA","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        assert_eq!(
            Refusal::SessionIdUnknown.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(decode_text("2probe"), Ok(Incoming::Ping("probe")));
        assert_eq!(decode_text("5"), Ok(Incoming::Upgrade));
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn packet() -> impl Strategy<Value = Outgoing> {
            prop_oneof![
                ("[1-6]", "[^\x1e]{0,20}").prop_map(|(t, rest)| Outgoing::Text(Bytes::from(t + &rest))),
                vec(any::<u8>(), 0..20).prop_map(|b| Outgoing::Binary(Bytes::from(b))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_post_body_decodes_or_is_refused(body in vec(any::<u8>(), 0..200)) {
                let _ = decode_payload(&body);
            }

            #[test]
            fn a_payload_reads_back_as_written(packets in vec(packet(), 1..8)) {
                let queue: VecDeque<Outgoing> = packets.into_iter().collect();
                let payload = encode_payload(&queue);
                let read = decode_payload(&payload).unwrap();
                prop_assert_eq!(read.len(), queue.len());
                for (got, sent) in read.iter().zip(&queue) {
                    match (got, sent) {
                        (Incoming::Binary(g), Outgoing::Binary(s)) => prop_assert_eq!(g, s),
                        (got, Outgoing::Text(s)) => {
                            let text = std::str::from_utf8(s).unwrap();
                            prop_assert_eq!(got, &decode_text(text).unwrap());
                        }
                        _ => prop_assert!(false, "{got:?} for {sent:?}"),
                    }
                }
            }
        }
    }
}
