//! The answers an HTTP/2 stream gets from edgepin itself: refusals, failures, redirects
//! and ACME answers, each rendered by `local_answer` (the one renderer both engines use)
//! and sent as a response head plus a short body; a stream whose answer broke off is
//! reset. Also what is counted and logged of them.

use bytes::Bytes;
use h2::Reason;
use h2::server::SendResponse;

use crate::failure::{self, Refusal, Verdict};

use super::super::local_answer::LocalAnswer;
use super::answer;
use super::stream::Stream;

impl Stream {
    /// Answer a request edgepin refuses (no route, limits, no server, lost session).
    pub(super) fn refuse(&mut self, respond: &mut SendResponse<Bytes>, why: Refusal) -> u16 {
        let status = self.acct.refused(&why);
        self.send(respond, &LocalAnswer::refusal(&why), status)
    }

    /// An upstream failure that is not retried: the status `classify` chose, or nothing
    /// for a client that left.
    pub(super) fn answer_failure(&mut self, respond: &mut SendResponse<Bytes>, v: Verdict) -> u16 {
        if v.status == 0 {
            return self.gone();
        }
        if v.session_lost {
            self.acct.session_refused();
            self.sticky.session_lost(&self.conn.shared.sids);
        } else if (400..500).contains(&v.status) {
            self.acct.frontend().request_errors.inc();
        }
        self.send(respond, &LocalAnswer::failure(&v), v.status)
    }

    /// A redirect or an ACME answer.
    pub(super) fn send_answer(&mut self, respond: &mut SendResponse<Bytes>, a: &LocalAnswer<'_>) -> u16 {
        self.send(respond, a, a.status)
    }

    /// The client left (or reset the stream): nothing to answer.
    pub(super) fn gone(&mut self) -> u16 {
        self.rec.error_once("client went away");
        0
    }

    /// The server's answer broke off after it began: the stream is reset (the client
    /// must not take a cut answer for a whole one).
    pub(super) fn broken(&mut self, send: &mut h2::SendStream<Bytes>, status: u16) -> u16 {
        self.acct.upstream_error(failure::Counted::Response);
        send.send_reset(Reason::INTERNAL_ERROR);
        status
    }

    /// Send `a`; `status` is what the stream's counters and log say.
    fn send(&mut self, respond: &mut SendResponse<Bytes>, a: &LocalAnswer<'_>, status: u16) -> u16 {
        self.rec.local = true;
        if let Some(note) = a.note {
            self.rec.error_once(note);
        }
        let body = Bytes::copy_from_slice(a.body.as_bytes());
        self.rec.bytes_out = body.len() as u64;
        match respond.send_response(answer::local(a), body.is_empty()) {
            Ok(mut send) if !body.is_empty() => {
                // A short body: buffered by the connection, whatever the window.
                let _ = send.send_data(body, true);
            }
            Ok(_) => {}
            Err(_) => return self.gone(),
        }
        status
    }
}
