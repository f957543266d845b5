//! What edgepin learns from answers: the Engine.IO session id in a handshake answer (the
//! polling open packet, or the first frame of a WebSocket-first session) goes into the
//! sid table; a `Session ID unknown` from a server is counted and its sid forgotten.

use bytes::Bytes;

use crate::sticky::engineio;

use super::{EdgeProxy, RequestCtx};

impl EdgeProxy {
    /// Look at the start of an answer for what the sticky rules learn from it.
    pub(super) fn scan_answer(&self, ctx: &mut RequestCtx, data: &Bytes, upgraded: bool) {
        let sticky = &mut ctx.sticky;
        // Keep the first OPEN_SCAN_LIMIT bytes of the answer, however they are chunked.
        let room = engineio::OPEN_SCAN_LIMIT.saturating_sub(sticky.scan.len());
        sticky.scan.extend_from_slice(&data[..data.len().min(room)]);
        if data.len() >= room {
            // Nothing after this is looked at: decide on what we have.
            sticky.scan_done = true;
        }
        if sticky.check_unknown {
            if engineio::is_session_unknown(&sticky.scan) {
                sticky.scan_done = true;
                if let Some(m) = ctx.member() {
                    m.traffic.sid_unknown.inc();
                }
                if let Some(b) = ctx.backend_rt() {
                    b.counters.traffic.sid_unknown.inc();
                }
                if let Some(sid) = &ctx.sticky.sid {
                    self.shared.sids.forget(sid);
                }
            }
            return;
        }
        let learned = if upgraded {
            match engineio::ws_first_frame(&sticky.scan) {
                engineio::FirstFrame::Incomplete if !sticky.scan_done => return,
                engineio::FirstFrame::Incomplete => None,
                engineio::FirstFrame::Open(sid) => Some(sid.to_string()),
                engineio::FirstFrame::Other => None,
            }
        } else {
            engineio::open_packet_sid(&sticky.scan).map(str::to_string)
        };
        if learned.is_none() && !upgraded && !sticky.scan_done {
            // The open packet may continue in the next chunk.
            return;
        }
        let sticky = &mut ctx.sticky;
        sticky.scan_done = true;
        sticky.scan = Vec::new();
        if let (Some(sid), Some(m)) = (learned, ctx.member()) {
            self.shared.sids.learn(&sid, &m.state);
            if upgraded {
                self.shared.sids.tunnel_opened(&sid);
                ctx.sticky.sid = Some(sid);
            }
        }
    }
}
