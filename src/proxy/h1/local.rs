//! The ends of a request that edgepin answers itself on the HTTP/1 engine: a refusal (no
//! route, a limit, no server, a lost Engine.IO session), the answer to an exchange that
//! failed, a redirect or an ACME answer, and a client that left. The answers are
//! `LocalAnswer`s (rendered the same for every engine); what is decided here is only what
//! the connection does next and that the request is accounted and logged once.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::failure::{Refusal, Verdict};
use crate::proxy::account::Totals;
use crate::proxy::local_answer::LocalAnswer;

use super::ctx::Ctx;
use super::{Conn, Next};

/// What follows a local answer on the connection: close when the client asked, when the
/// answer says so, or when the proxy stops; linger first when a body may still come.
pub(super) fn after_local(close: bool, keep_alive: bool, has_body: bool, stopping: bool, flushed: bool) -> Next {
    if !flushed {
        Next::Close
    } else if has_body {
        // The body is not read: the connection cannot go on, and the client may still
        // be sending it.
        Next::Linger
    } else if close || !keep_alive || stopping {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Send `answer` as the request's answer, then account and log it. `close`: the
    /// connection closes after it whatever the client asked.
    pub(super) async fn answer_local(&mut self, mut ctx: Ctx<'_>, answer: &LocalAnswer<'_>, close: bool) -> Next {
        ctx.rec.local = true;
        if let Some(note) = answer.note {
            ctx.rec.error_once(note);
        }
        let has_body = ctx.has_body();
        let closes = close || has_body || !ctx.head.keep_alive;
        self.wbuf.clear();
        answer.write_h1(&mut self.wbuf, closes);
        let flushed = self.flush_client(ctx.acct.snapshot().config.timeouts.client).await;
        let duration = ctx.acct.end(Totals {
            status: answer.status,
            ..Totals::default()
        });
        ctx.log(answer.status, duration);
        after_local(close, ctx.head.keep_alive, has_body, self.shared.stopping(), flushed)
    }

    /// Answer a request edgepin refuses (no route, a limit, no server, a lost session).
    pub(super) async fn refuse(&mut self, ctx: Ctx<'_>, why: Refusal) -> Next {
        ctx.acct.refused(&why);
        if why == Refusal::SessionGone {
            ctx.sticky.session_lost(&self.shared.sids);
        }
        // After a request refused as malformed the connection does not go on.
        let close = matches!(why, Refusal::Status(400 | 413, _));
        self.answer_local(ctx, &LocalAnswer::refusal(&why), close).await
    }

    /// An exchange that failed and is not tried again: the status `classify` chose, or
    /// nothing for a client that left.
    pub(super) async fn answer_failure(&mut self, ctx: Ctx<'_>, v: Verdict) -> Next {
        if v.status == 0 {
            return self.gone(ctx);
        }
        if v.session_lost {
            ctx.acct.session_refused();
            ctx.sticky.session_lost(&self.shared.sids);
        } else if (400..500).contains(&v.status) {
            ctx.acct.frontend().request_errors.inc();
        }
        self.answer_local(ctx, &LocalAnswer::failure(&v), true).await
    }

    /// The client left: nothing to answer.
    pub(super) fn gone(&mut self, mut ctx: Ctx<'_>) -> Next {
        ctx.rec.error_once("client went away");
        let duration = ctx.acct.end(Totals::default());
        ctx.log(0, duration);
        Next::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_on_after_a_local_answer_only_when_nothing_is_left_unread() {
        let next = |close, keep_alive, has_body, stopping, flushed| match after_local(
            close, keep_alive, has_body, stopping, flushed,
        ) {
            Next::KeepAlive => "keep",
            Next::Close => "close",
            Next::Linger => "linger",
            Next::Tunnel(_) => "tunnel",
        };
        // (close, keep_alive, has_body, stopping, flushed)
        assert_eq!(next(false, true, false, false, true), "keep");
        assert_eq!(next(true, true, false, false, true), "close");
        assert_eq!(next(false, false, false, false, true), "close", "the client asked");
        assert_eq!(next(false, true, false, true, true), "close", "stopping");
        assert_eq!(next(false, true, true, false, true), "linger", "an unread body");
        assert_eq!(next(false, true, true, false, false), "close", "the client is gone");
    }
}
