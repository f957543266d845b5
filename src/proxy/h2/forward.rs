//! A server's answer passed back on an HTTP/2 stream: its head converted (`answer`), the
//! sticky exchange and the passive check told, then the body moved from the server
//! connection to the stream under flow control, with the stream's backpressure and the
//! server's timeouts. A server connection whose answer ended cleanly goes back to the
//! pool; one cut short resets the stream.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use h2::Reason;
use h2::server::SendResponse;
use http::Response;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::failure::{self, Failure, Progress};
use crate::runtime::{BackendRt, Member};
use crate::state::ActiveGuard;
use crate::sticky::cookie;
use crate::sticky::exchange::Learned;

use super::super::h1::framing::Framing;
use super::super::upstream::AnswerBuf;
use super::super::upstream::head::{Header, Parsed, RespBody};
use super::answer::{self, Added};
use super::flow::{self, SendStop};
use super::places::ServerPlace;
use super::stream::{Answer, Answered, READ_CHUNK, Stream};

/// What a stream holds of its server until the answer is read whole.
struct Held {
    up: TcpStream,
    _slot: ActiveGuard,
    _place: ServerPlace,
}

impl Stream {
    /// Pass the server's answer on to the client.
    pub(super) async fn forward(&mut self, respond: &mut SendResponse<Bytes>, answered: Answered<'_>) -> u16 {
        let Answered {
            b,
            m,
            answer,
            slot,
            place,
        } = answered;
        let cfg = &Arc::clone(&self.snap).config;
        let Answer { up: answer, buf } = answer;
        let (up, parsed) = (answer.stream, answer.parsed);
        let AnswerBuf {
            bytes: mut buf,
            headers: fields,
        } = buf;
        // An answer that came before the whole body was sent: neither connection can
        // carry another request (the rest of the body never goes).
        let reusable = parsed.keep_alive && answer.request_complete;
        let Some(resp) = self.response_head(b, m, &buf[..parsed.len], &parsed, &fields) else {
            return self.answer_failure(respond, failure::classify(Failure::BadAnswer, Progress::default()));
        };
        buf.drain(..parsed.len);
        let status = parsed.status;
        let mut framing = match parsed.body {
            RespBody::None => None,
            RespBody::Length(n) => Some(Framing::length(n)),
            RespBody::Chunked => Some(Framing::chunked()),
            RespBody::Close => Some(Framing::Close),
        };
        let Some(framing) = framing.as_mut() else {
            // No body: the server connection is done before the client is answered.
            if reusable && buf.is_empty() {
                self.conn.pool.put(m.addr, up);
            }
            drop((slot, place));
            if respond.send_response(resp, true).is_err() {
                return self.gone();
            }
            return status;
        };
        let Ok(mut send) = respond.send_response(resp, false) else {
            return self.gone();
        };
        let stall = super::settings::stall_deadline(cfg.timeouts.client);
        let server_wait = b.cfg.timeouts.server;
        let mut held = Some(Held {
            up,
            _slot: slot,
            _place: place,
        });
        let mut ranges = Vec::new();
        loop {
            // The bytes read so far are copied out in the pieces the client gets: the read
            // buffer is reused, and nothing the connection keeps holds it.
            let data = &buf[..];
            ranges.clear();
            let Ok(adv) = framing.advance(data, |r| ranges.push(r)) else {
                self.rec.error = Some(Cow::Borrowed("malformed response body"));
                return self.broken(&mut send, status);
            };
            if adv.done {
                // The whole answer is here: the server connection goes back (unless the
                // server sent more than its answer) before the client has taken it.
                if let Some(h) = held.take()
                    && reusable
                    && adv.used == data.len()
                {
                    self.conn.pool.put(m.addr, h.up);
                }
            }
            let mut learned = Learned::Nothing;
            let last = ranges.len();
            for (i, r) in ranges.drain(..).enumerate() {
                let piece = Bytes::copy_from_slice(&data[r]);
                if self.sticky.scanning() {
                    let l = self.sticky.on_body(&piece, &self.conn.shared.sids, &m.state);
                    if l != Learned::Nothing {
                        learned = l;
                    }
                }
                self.rec.bytes_out += piece.len() as u64;
                let sent = flow::send_all(&mut send, piece, adv.done && i + 1 == last, stall).await;
                match sent {
                    Ok(()) => {}
                    Err(SendStop::Gone) => return self.gone(),
                    Err(SendStop::Stalled) => {
                        self.rec.error = Some(Cow::Borrowed("the client granted no window in time"));
                        send.send_reset(Reason::CANCEL);
                        return self.gone();
                    }
                }
            }
            if learned == Learned::SessionUnknown {
                self.acct.sid_unknown();
            }
            if adv.done {
                if last == 0 && send.send_data(Bytes::new(), true).is_err() {
                    return self.gone();
                }
                return status;
            }
            let Some(h) = held.as_mut() else {
                return self.broken(&mut send, status);
            };
            buf.clear();
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout(server_wait, h.up.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) if matches!(framing, Framing::Close) => {
                    drop(held);
                    if send.send_data(Bytes::new(), true).is_err() {
                        return self.gone();
                    }
                    return status;
                }
                Err(_) => {
                    self.rec.error = Some(Cow::Borrowed("server timed out while answering"));
                    return self.broken(&mut send, status);
                }
                _ => {
                    self.rec.error = Some(Cow::Borrowed("server closed while answering"));
                    return self.broken(&mut send, status);
                }
            }
        }
    }

    /// The server's answer head as this stream's response head: the timings, the sticky
    /// exchange and the passive check learn of it, and edgepin's fields join it. `None`
    /// when HTTP/2 cannot carry its fields (counted, and logged as the server's fault).
    pub(super) fn response_head(
        &mut self,
        b: &BackendRt,
        m: &Member,
        head: &[u8],
        parsed: &Parsed,
        fields: &[Header],
    ) -> Option<Response<()>> {
        let cfg = &Arc::clone(&self.snap).config;
        self.rec.ttfb = Some(self.acct.started.elapsed());
        self.rec.connect = self.rec.connect.map(|_| self.rec.ttfb.unwrap_or_default());
        self.sticky.on_response(parsed.status, &self.conn.shared.sids);
        self.acct.passive(false);
        let added = Added {
            set_cookie: self
                .sticky
                .set_cookie()
                .then_some(b.cfg.cookie.as_deref())
                .flatten()
                .map(|name| cookie::set_cookie(name, &m.cookie_id, true, cfg.sticky.same_site)),
            hsts: crate::tls::hsts_value(cfg),
        };
        let resp = answer::response(head, parsed, fields, added);
        if resp.is_none() {
            self.acct.upstream_error(failure::Counted::Response);
            self.rec.error = Some(Cow::Borrowed("answer fields HTTP/2 cannot carry"));
        }
        resp
    }
}
