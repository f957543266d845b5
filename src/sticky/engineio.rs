//! What a balancer needs to know of Engine.IO: the `EIO`/`sid`/`transport` query
//! parameters, the session id in a handshake answer (the polling open packet, or the
//! first WebSocket frame of a WebSocket-first handshake), and the `Session ID unknown`
//! error. Parsing only; no state.

/// The body Engine.IO servers answer for a session id they do not know (HTTP 400).
pub const SESSION_UNKNOWN_BODY: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

/// Longest session id accepted (Node uses 20 characters, socketioxide 16).
const MAX_SID_LEN: usize = 64;

/// How far into a handshake answer to look for the session id.
pub const OPEN_SCAN_LIMIT: usize = 2048;

/// The Engine.IO parameters of a request's query string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineQuery<'a> {
    /// `EIO=` present: this is an Engine.IO request.
    pub eio: bool,
    pub sid: Option<&'a str>,
    pub websocket: bool,
}

impl<'a> EngineQuery<'a> {
    pub fn parse(query: Option<&'a str>) -> EngineQuery<'a> {
        let mut q = EngineQuery::default();
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "EIO" => q.eio = true,
                "sid" if valid_sid(v) => q.sid = Some(v),
                "transport" => q.websocket = v == "websocket",
                _ => {}
            }
        }
        q
    }

    /// A request that opens a session (no sid yet).
    pub fn is_handshake(&self) -> bool {
        self.eio && self.sid.is_none()
    }
}

/// Session ids are base64url-ish tokens; anything else is not a sid we will store.
pub fn valid_sid(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The sid in the start of a handshake answer (`0{"sid":"…",…}`, also inside EIO3's
/// length-prefixed and binary payload framings, which keep the JSON intact).
pub fn open_packet_sid(body: &[u8]) -> Option<&str> {
    let body = &body[..body.len().min(OPEN_SCAN_LIMIT)];
    let key = b"\"sid\":";
    let start = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &body[start..];
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let sid = std::str::from_utf8(&rest[..end]).ok()?;
    valid_sid(sid).then_some(sid)
}

/// The result of looking at the first bytes a server sent on a new WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstFrame<'a> {
    /// Not enough bytes yet for the whole first frame.
    Incomplete,
    /// The first frame is an Engine.IO open packet with this sid.
    Open(&'a str),
    /// Something else: stop looking.
    Other,
}

/// Parse the first server→client WebSocket frame (unmasked) for an Engine.IO open packet.
pub fn ws_first_frame(bytes: &[u8]) -> FirstFrame<'_> {
    if bytes.len() < 2 {
        return FirstFrame::Incomplete;
    }
    let (fin_text, b1) = (bytes[0], bytes[1]);
    if fin_text != 0x81 || b1 & 0x80 != 0 {
        return FirstFrame::Other;
    }
    let (len, header) = match b1 & 0x7f {
        126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        126 => return FirstFrame::Incomplete,
        127 => return FirstFrame::Other, // an open packet is never that long
        n => (usize::from(n), 2),
    };
    if len > OPEN_SCAN_LIMIT {
        return FirstFrame::Other;
    }
    let Some(payload) = bytes.get(header..header + len) else {
        return FirstFrame::Incomplete;
    };
    match (payload.first(), open_packet_sid(payload)) {
        (Some(b'0'), Some(sid)) => FirstFrame::Open(sid),
        _ => FirstFrame::Other,
    }
}

/// Whether a 400 body is Engine.IO's `Session ID unknown` (Node sends the code as a
/// number, socketioxide as a string; the message is the same).
pub fn is_session_unknown(body: &[u8]) -> bool {
    let needle = b"Session ID unknown";
    body.len() <= OPEN_SCAN_LIMIT && body.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query() {
        let q = EngineQuery::parse(Some("EIO=4&transport=polling&t=abc&sid=Ab_-9"));
        assert_eq!(
            q,
            EngineQuery {
                eio: true,
                sid: Some("Ab_-9"),
                websocket: false
            }
        );
        assert!(!q.is_handshake());
        let q = EngineQuery::parse(Some("EIO=4&transport=websocket"));
        assert!(q.is_handshake() && q.websocket);
        assert!(!EngineQuery::parse(None).eio);
        assert_eq!(EngineQuery::parse(Some("EIO=4&sid=<script>")).sid, None);
    }

    #[test]
    fn finds_sid_in_open_packets() {
        let v4 = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(open_packet_sid(v4), Some("lv_VI97HAXpY6yYWAAAC"));
        let v3 = br#"96:0{"sid": "abc123","upgrades":[]}2:40"#;
        assert_eq!(open_packet_sid(v3), Some("abc123"));
        assert_eq!(open_packet_sid(b"0{}"), None);
        assert_eq!(open_packet_sid(br#"0{"sid":"bad sid"}"#), None);
    }

    #[test]
    fn parses_first_websocket_frame() {
        let payload = br#"0{"sid":"XYZ","upgrades":[]}"#;
        let mut frame = vec![0x81, payload.len() as u8];
        frame.extend_from_slice(payload);
        assert_eq!(ws_first_frame(&frame), FirstFrame::Open("XYZ"));
        assert_eq!(ws_first_frame(&frame[..10]), FirstFrame::Incomplete);
        assert_eq!(ws_first_frame(&[0x81, 0x03, b'4', b'0', b'x']), FirstFrame::Other);
        assert_eq!(ws_first_frame(&[0x82, 0x01, 0]), FirstFrame::Other, "binary frame");
    }

    #[test]
    fn recognises_session_unknown() {
        assert!(is_session_unknown(br#"{"code":1,"message":"Session ID unknown"}"#));
        assert!(is_session_unknown(br#"{"code":"1","message":"Session ID unknown"}"#));
        assert!(!is_session_unknown(b"Bad Request"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn sid() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_-]{1,64}"
        }

        /// Query parameters other than the three Engine.IO ones.
        fn other_param() -> impl Strategy<Value = String> {
            ("(t|b64|x|EIOx|sidx|j)", "[A-Za-z0-9=%._-]{0,8}").prop_map(|(k, v)| format!("{k}={v}"))
        }

        /// An open packet's JSON with the sid somewhere among the other fields.
        fn open_packet(sid: &str, before: bool, space: &str, pad: usize) -> String {
            let sid_field = format!("\"sid\":{space}\"{sid}\"");
            let other = format!("\"upgrades\":[\"websocket\"],\"pad\":\"{}\"", "p".repeat(pad));
            if before {
                format!("0{{{sid_field},{other}}}")
            } else {
                format!("0{{{other},{sid_field}}}")
            }
        }

        /// An unmasked server → client text frame.
        fn text_frame(payload: &[u8]) -> Vec<u8> {
            let mut f = vec![0x81];
            if payload.len() < 126 {
                f.push(payload.len() as u8);
            } else {
                f.push(126);
                f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            f.extend_from_slice(payload);
            f
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn parsing_anything_never_panics_and_only_keeps_valid_sids(q in any::<String>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
                let parsed = EngineQuery::parse(Some(&q));
                if let Some(sid) = parsed.sid {
                    prop_assert!(valid_sid(sid));
                    let pair = format!("sid={sid}");
                    prop_assert!(q.split('&').any(|p| p == pair));
                }
                if let Some(sid) = open_packet_sid(&body) {
                    prop_assert!(valid_sid(sid));
                }
                if let FirstFrame::Open(sid) = ws_first_frame(&body) {
                    prop_assert!(valid_sid(sid));
                }
                is_session_unknown(&body);
            }

            #[test]
            fn a_query_gives_back_its_engine_io_parameters(
                eio in any::<bool>(),
                sid in proptest::option::of(sid()),
                transport in proptest::option::of("(polling|websocket)"),
                others in proptest::collection::vec(other_param(), 0..4),
                order in any::<u64>(),
            ) {
                let mut params = others.clone();
                if eio { params.push("EIO=4".into()); }
                if let Some(s) = &sid { params.push(format!("sid={s}")); }
                if let Some(t) = &transport { params.push(format!("transport={t}")); }
                let n = params.len().max(1);
                params.rotate_left((order as usize) % n);
                let q = params.join("&");
                let parsed = EngineQuery::parse(Some(&q));
                prop_assert_eq!(parsed.eio, eio);
                prop_assert_eq!(parsed.sid, sid.as_deref());
                prop_assert_eq!(parsed.websocket, transport.as_deref() == Some("websocket"));
                prop_assert_eq!(parsed.is_handshake(), eio && sid.is_none());
            }

            #[test]
            fn the_sid_of_an_open_packet_is_found_in_every_framing(
                sid in sid(),
                before in any::<bool>(),
                space in "[ \t]{0,2}",
                pad in 0usize..300,
            ) {
                let json = open_packet(&sid, before, &space, pad);
                prop_assert_eq!(open_packet_sid(json.as_bytes()), Some(sid.as_str()));
                let eio3 = format!("{}:{json}2:40", json.len());
                prop_assert_eq!(open_packet_sid(eio3.as_bytes()), Some(sid.as_str()));
                let frame = text_frame(json.as_bytes());
                prop_assert_eq!(ws_first_frame(&frame), FirstFrame::Open(sid.as_str()));
                for cut in 0..frame.len() {
                    prop_assert_eq!(ws_first_frame(&frame[..cut]), FirstFrame::Incomplete, "cut at {}", cut);
                }
            }
        }
    }
}
