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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::ctx::Pick;
    use crate::stats::gather::tests::shared;

    /// A context whose request went to the first server of the sticky backend `ws`.
    fn picked(shared: &Arc<crate::runtime::Shared>) -> RequestCtx {
        let snapshot = shared.snapshot();
        let backend = snapshot.backends.iter().position(|b| b.name() == "ws");
        RequestCtx {
            snapshot: Some(snapshot),
            backend,
            pick: Some(Pick {
                member: 0,
                sticky: None,
            }),
            ..RequestCtx::default()
        }
    }

    #[test]
    fn a_sid_is_learned_from_a_first_chunk_larger_than_the_scan_limit() {
        let shared = shared();
        let proxy = EdgeProxy::new(Arc::clone(&shared));
        let mut ctx = picked(&shared);
        let mut answer = br#"0{"sid":"aBc-123_x","upgrades":["websocket"],"pingInterval":25000}"#.to_vec();
        answer.push(0x1e);
        answer.resize(engineio::OPEN_SCAN_LIMIT * 2, b'4');
        proxy.scan_answer(&mut ctx, &Bytes::from(answer), false);
        assert!(ctx.sticky.scan_done);
        assert!(shared.sids.lookup("aBc-123_x").is_some());
    }

    #[test]
    fn an_open_packet_split_over_chunks_is_learned() {
        let shared = shared();
        let proxy = EdgeProxy::new(Arc::clone(&shared));
        let mut ctx = picked(&shared);
        for part in [&br#"0{"si"#[..], br#"d":"s2","upgrades":[]}"#] {
            proxy.scan_answer(&mut ctx, &Bytes::from_static(part), false);
        }
        assert!(shared.sids.lookup("s2").is_some());
    }
}
