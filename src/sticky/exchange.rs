//! One request's part in sticky routing, start to end: what the request carries (its
//! Engine.IO sid, whether it opens a session), whether its answer sets the cookie, what
//! is learned from the answer (the sid of a new session, a server's `Session ID
//! unknown`), and what its end means (a WebSocket's end is its session's end). Both
//! engines drive an [`Exchange`] through `on_request`, `on_pick`, `on_response`,
//! `on_body` and `on_end`; the selection rule itself is `proxy::select`.

use std::sync::Arc;

use crate::state::{ServerState, StickyDecision};

use super::engineio;
use super::sid::SidTable;

/// What the answer is searched for.
#[derive(Debug, Default)]
enum Scan {
    /// Nothing (or done).
    #[default]
    Off,
    /// The open packet of a polling handshake answer.
    Open(Vec<u8>),
    /// The first frame of a WebSocket-first session.
    FirstFrame(Vec<u8>),
    /// `Session ID unknown` in a 400 to an Engine.IO request.
    Unknown(Vec<u8>),
}

/// What an answer's bytes told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    Nothing,
    /// A new session's sid went into the table.
    Sid,
    /// The server does not know the request's session: counted, sid forgotten.
    SessionUnknown,
}

/// The sticky side of one request.
#[derive(Debug, Default)]
pub struct Exchange {
    /// The request's Engine.IO sid (sticky backends only), or the one learned from a
    /// WebSocket-first handshake.
    pub sid: Option<String>,
    /// An Engine.IO request without sid: its answer opens a session (sticky backends
    /// only: they count and learn it).
    pub handshake: bool,
    /// An Engine.IO request without sid on any backend: what a backend's `new_sessions`
    /// cap counts.
    pub new_session: bool,
    /// An Engine.IO request at all (`EIO=` in the query), on any backend: a `Session ID
    /// unknown` from a non-sticky backend tells an operator stickiness is missing.
    pub engine_io: bool,
    /// Send `Set-Cookie` with the chosen server's id.
    set_cookie: bool,
    /// A new session counted on its server while the handshake is in flight.
    pending: Option<Arc<ServerState>>,
    scan: Scan,
    /// The server of a tunnel this request opened, for the sid table.
    tunnel: bool,
}

impl Exchange {
    /// What the request's query says (`sticky`: the backend balances by sticky rule).
    pub fn on_request(query: Option<&str>, sticky: bool) -> Exchange {
        let mut x = Exchange::default();
        if let Some(query) = query.filter(|q| q.contains("EIO=")) {
            let q = engineio::EngineQuery::parse(Some(query));
            x.engine_io = q.eio;
            x.new_session = q.is_handshake();
            if sticky {
                x.handshake = q.is_handshake();
                x.sid = q.sid.map(str::to_string);
            }
        }
        x
    }

    /// Routed by its sid: only that server knows the session.
    pub fn pinned(decision: Option<StickyDecision>) -> bool {
        decision == Some(StickyDecision::Sid)
    }

    /// A server was chosen: decide the cookie, count a session opening on it.
    /// `cookie_sent` is the request's sticky cookie, `cookie_id` the server's.
    pub fn on_pick(
        &mut self,
        server: &Arc<ServerState>,
        decision: Option<StickyDecision>,
        cookie_sent: Option<&[u8]>,
        cookie_id: Option<&str>,
    ) {
        self.set_cookie = cookie_id.is_some_and(|id| cookie_sent != Some(id.as_bytes()))
            && matches!(
                decision,
                Some(StickyDecision::Hash | StickyDecision::Redispatch | StickyDecision::Sid)
            );
        if self.handshake {
            if let Some(old) = self.pending.replace(Arc::clone(server)) {
                old.add_sessions(-1);
            }
            server.add_sessions(1);
        }
    }

    pub fn set_cookie(&self) -> bool {
        self.set_cookie
    }

    /// The answer's status is known; `server` is the one that answered.
    pub fn on_response(&mut self, status: u16, sids: &SidTable) {
        self.scan = match status {
            101 => {
                self.tunnel = true;
                match &self.sid {
                    Some(sid) => {
                        sids.tunnel_opened(sid);
                        Scan::Off
                    }
                    // A WebSocket-first handshake: the sid is in the first frame.
                    None if self.handshake => Scan::FirstFrame(Vec::new()),
                    None => Scan::Off,
                }
            }
            200 if self.handshake => Scan::Open(Vec::new()),
            400 if self.engine_io => Scan::Unknown(Vec::new()),
            _ => Scan::Off,
        };
    }

    /// Whether the answer's bytes are still of interest.
    pub fn scanning(&self) -> bool {
        !matches!(self.scan, Scan::Off)
    }

    /// The next bytes of the answer (of the tunnel, after a 101).
    pub fn on_body(&mut self, data: &[u8], sids: &SidTable, server: &Arc<ServerState>) -> Learned {
        let (buf, done, kind) = match &mut self.scan {
            Scan::Off => return Learned::Nothing,
            Scan::Open(buf) => (buf, false, 0),
            Scan::FirstFrame(buf) => (buf, false, 1),
            Scan::Unknown(buf) => (buf, false, 2),
        };
        // The first OPEN_SCAN_LIMIT bytes, however they are chunked.
        let room = engineio::OPEN_SCAN_LIMIT.saturating_sub(buf.len());
        buf.extend_from_slice(&data[..data.len().min(room)]);
        let done = done || data.len() >= room;
        let learned = match kind {
            0 => engineio::open_packet_sid(buf).map(|sid| {
                sids.learn(sid, server);
                Learned::Sid
            }),
            1 => match engineio::ws_first_frame(buf) {
                engineio::FirstFrame::Incomplete if !done => return Learned::Nothing,
                engineio::FirstFrame::Open(sid) => {
                    let sid = sid.to_string();
                    sids.learn(&sid, server);
                    sids.tunnel_opened(&sid);
                    self.sid = Some(sid);
                    Some(Learned::Sid)
                }
                _ => Some(Learned::Nothing),
            },
            _ => engineio::is_session_unknown(buf).then(|| {
                if let Some(sid) = &self.sid {
                    sids.forget(sid);
                }
                Learned::SessionUnknown
            }),
        };
        match learned {
            Some(l) => {
                self.scan = Scan::Off;
                l
            }
            None => {
                if done {
                    self.scan = Scan::Off;
                }
                Learned::Nothing
            }
        }
    }

    /// The request's session died with its server (answered with Engine.IO's 400).
    pub fn session_lost(&self, sids: &SidTable) {
        if let Some(sid) = &self.sid {
            sids.forget(sid);
        }
    }

    /// The request (or its tunnel) is over.
    pub fn on_end(&mut self, sids: &SidTable) {
        if self.tunnel
            && let Some(sid) = &self.sid
        {
            // A tunnel's end is its session's end.
            sids.forget(sid);
        }
        if let Some(server) = self.pending.take() {
            server.add_sessions(-1);
        }
        self.scan = Scan::Off;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(server) = self.pending.take() {
            server.add_sessions(-1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn table() -> SidTable {
        SidTable::new(100, Duration::from_secs(60))
    }

    fn server(name: &str) -> Arc<ServerState> {
        Arc::new(ServerState::new(name, 1))
    }

    #[test]
    fn a_polling_handshake_learns_its_sid_from_a_split_open_packet() {
        let (sids, s) = (table(), server("a"));
        let mut x = Exchange::on_request(Some("EIO=4&transport=polling"), true);
        assert!(x.handshake && x.new_session && x.engine_io && x.sid.is_none());
        let other = Exchange::on_request(Some("EIO=4&transport=websocket"), false);
        assert!(
            other.new_session && !other.handshake,
            "counted for a cap on any backend"
        );
        let existing = Exchange::on_request(Some("EIO=4&transport=polling&sid=abc"), false);
        assert!(!existing.new_session);
        x.on_pick(&s, Some(StickyDecision::Hash), None, Some("id-a"));
        assert!(x.set_cookie());
        assert_eq!(s.sessions(), 1, "counted while the handshake is in flight");
        x.on_response(200, &sids);
        assert_eq!(x.on_body(br#"0{"si"#, &sids, &s), Learned::Nothing);
        assert_eq!(x.on_body(br#"d":"abc","upgrades":[]}"#, &sids, &s), Learned::Sid);
        assert!(sids.lookup("abc").is_some());
        x.on_end(&sids);
        assert_eq!(s.sessions(), 1, "the handshake's count became the table's");
        assert!(sids.lookup("abc").is_some(), "a polling session outlives its handshake");
    }

    #[test]
    fn the_cookie_is_set_only_when_it_differs_and_the_pick_was_not_by_cookie() {
        let s = server("a");
        let mut x = Exchange::on_request(None, true);
        x.on_pick(&s, Some(StickyDecision::Cookie), Some(b"id-a"), Some("id-a"));
        assert!(!x.set_cookie());
        x.on_pick(&s, Some(StickyDecision::Hash), Some(b"id-a"), Some("id-a"));
        assert!(!x.set_cookie(), "the client has it already");
        x.on_pick(&s, Some(StickyDecision::Redispatch), Some(b"id-b"), Some("id-a"));
        assert!(x.set_cookie());
        x.on_pick(&s, None, None, Some("id-a"));
        assert!(!x.set_cookie(), "round robin sets no cookie");
        x.on_pick(&s, Some(StickyDecision::Hash), None, None);
        assert!(!x.set_cookie(), "no cookie configured");
    }

    #[test]
    fn a_websocket_first_session_is_learned_and_forgotten_at_the_tunnels_end() {
        let (sids, s) = (table(), server("a"));
        let mut x = Exchange::on_request(Some("EIO=4&transport=websocket"), true);
        x.on_pick(&s, Some(StickyDecision::Hash), None, None);
        x.on_response(101, &sids);
        let open = br#"0{"sid":"ws1","upgrades":[],"pingInterval":25000}"#;
        let mut frame = vec![0x81, open.len() as u8];
        frame.extend_from_slice(open);
        assert_eq!(x.on_body(&frame[..3], &sids, &s), Learned::Nothing);
        assert_eq!(x.on_body(&frame[3..], &sids, &s), Learned::Sid);
        assert_eq!(x.sid.as_deref(), Some("ws1"));
        assert!(sids.lookup("ws1").is_some());
        x.on_end(&sids);
        assert!(sids.lookup("ws1").is_none());
    }

    #[test]
    fn a_session_unknown_answer_forgets_the_sid() {
        let (sids, s) = (table(), server("a"));
        sids.learn("gone", &s);
        let mut x = Exchange::on_request(Some("EIO=4&transport=polling&sid=gone"), true);
        x.on_response(400, &sids);
        let body = crate::sticky::engineio::SESSION_UNKNOWN_BODY.as_bytes();
        assert_eq!(x.on_body(body, &sids, &s), Learned::SessionUnknown);
        assert!(sids.lookup("gone").is_none());
        // A non-sticky backend still recognises it (to count it), without a sid to forget.
        let mut y = Exchange::on_request(Some("EIO=4&sid=x"), false);
        assert!(y.sid.is_none() && y.engine_io);
        y.on_response(400, &sids);
        assert_eq!(y.on_body(body, &sids, &s), Learned::SessionUnknown);
    }

    #[test]
    fn a_dropped_exchange_gives_its_pending_session_back() {
        let s = server("a");
        {
            let mut x = Exchange::on_request(Some("EIO=4"), true);
            x.on_pick(&s, Some(StickyDecision::Hash), None, None);
            let t = server("b");
            x.on_pick(&t, Some(StickyDecision::Redispatch), None, None);
            assert_eq!((s.sessions(), t.sessions()), (0, 1), "moved with the redispatch");
        }
        assert_eq!(s.sessions(), 0);
    }
}
