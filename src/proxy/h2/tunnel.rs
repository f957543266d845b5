//! WebSockets over HTTP/2 (RFC 8441). A browser that saw `SETTINGS_ENABLE_CONNECT_PROTOCOL`
//! opens a WebSocket as a stream: an extended CONNECT with `:protocol websocket`. On a
//! route that allows WebSockets, edgepin asks the server for an HTTP/1.1 upgrade with a
//! `Sec-WebSocket-Key` of its own (the client sends none), chosen by the same sticky rules
//! as an HTTP/1.1 upgrade; the server's `101` is checked against that key and answered on
//! the stream as the `200` that accepts the CONNECT. From there the stream's DATA frames
//! and the server connection carry the same WebSocket frames, moved by the tunnel relay
//! (`proxy::relay`) through [`StreamIo`](super::flow::StreamIo): no buffer while idle,
//! backpressure both ways (HTTP/2 flow control on the client's side), `timeouts.tunnel`,
//! sid learning from the server's first frames, and a close frame at a frame boundary
//! when edgepin closes it (MAINT, drain, SIGTERM). A server that refuses the upgrade has
//! its answer passed on as any other.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;

use super::super::relay;
use super::flow::StreamIo;
use super::stream::{Answer, Answered, Stream};
use crate::failure::{self, Failure, Progress};

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn new_key() -> String {
    let mut nonce = [0u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        // Never fails on Linux; a key only needs to be unpredictable to the server.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        nonce = t.as_nanos().to_le_bytes();
    }
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

impl Stream {
    /// The server answered an extended CONNECT: relay the WebSocket until it ends, or pass
    /// a refusal on. The status the client got.
    pub(super) async fn open_tunnel(
        &mut self,
        respond: &mut SendResponse<Bytes>,
        recv: RecvStream,
        answered: Answered<'_>,
    ) -> u16 {
        if answered.answer.up.parsed.status != 101 {
            return self.forward(respond, answered).await;
        }
        let Answered {
            b,
            m,
            answer,
            slot,
            place,
        } = answered;
        let Answer { up: answer, buf } = answer;
        let (up, parsed) = (answer.stream, answer.parsed);
        let (buf, fields) = (buf.bytes, buf.headers);
        let shared = Arc::clone(&self.conn.shared);
        let Some(resp) = self.response_head(b, m, &buf[..parsed.len], &parsed, &fields) else {
            return self.answer_failure(respond, failure::classify(Failure::BadAnswer, Progress::default()));
        };
        let Ok(send) = respond.send_response(resp, false) else {
            // No tunnel after all: its session ends here (the sid table pinned it).
            return self.gone();
        };
        self.acct.tunnel_opened();
        let ticket = m.state.tunnels.register();
        let sticky = &mut self.sticky;
        let watch = |data: &[u8]| {
            if sticky.scanning() {
                sticky.on_body(data, &shared.sids, &m.state);
            }
            !sticky.scanning()
        };
        // The answer's read buffer (16 KiB reserved) must not idle with the tunnel: only
        // the bytes the server sent after its head go on.
        let from_server = buf[parsed.len..].to_vec();
        drop((buf, fields));
        let relayed = relay::relay(
            StreamIo::new(send, recv),
            up,
            Vec::new(),
            from_server,
            b.cfg.timeouts.tunnel,
            Arc::clone(ticket.ctl()),
            watch,
        )
        .await;
        drop((ticket, slot, place));
        self.rec.ws_bytes_in = relayed.bytes_in;
        self.rec.ws_bytes_out = relayed.bytes_out;
        self.rec.upstream_ended = relayed.ended == relay::Ended::ServerClosed;
        if relayed.ended == relay::Ended::Idle {
            self.rec.error = Some(std::borrow::Cow::Borrowed("tunnel idle timeout"));
        }
        200
    }
}
