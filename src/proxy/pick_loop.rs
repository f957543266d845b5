//! The steps of the pick-and-try loop that both engines run alike, in one place: what
//! happens once a server is picked ([`picked`]: counted, noted for the access log, shown
//! to the sticky rule, and the failure rule's starting facts), what a failed attempt
//! counts ([`failed`]), and whether to try again ([`after_failure`]). The engines own the
//! loop itself and the bytes; the decisions are `select`, `sticky::exchange` and
//! `failure`'s.

use crate::failure::{self, Failure, Progress, Retry, Verdict};
use crate::runtime::{BackendRt, Member};
use crate::sticky::exchange::Exchange;

use super::access;
use super::account::Account;
use super::select::Pick;

/// What a request keeps of its own exchange: its counters, its access-log line, its
/// sticky facts.
pub struct Books<'a> {
    pub acct: &'a mut Account,
    pub rec: &'a mut access::Record,
    pub sticky: &'a mut Exchange,
}

/// The sticky cookie as the request carried it.
#[derive(Debug, Clone, Copy)]
pub struct CookieSent<'a> {
    /// The backend's cookie name (`None`: the backend sets no cookie).
    pub name: Option<&'a str>,
    /// Its value in the request, when present.
    pub value: Option<&'a [u8]>,
}

/// `pick` was chosen from `b`: count it, note it, let the sticky rule see it (it may set
/// the cookie or learn the sid from the answer). Returns the member and the facts every
/// attempt on it starts from; `replayable`: the request may be sent again (idempotent,
/// and its body, if any, held whole).
pub fn picked<'b>(
    b: &'b BackendRt,
    pick: Pick,
    books: Books<'_>,
    cookie: CookieSent<'_>,
    replayable: bool,
) -> (&'b Member, Progress) {
    books.acct.picked(pick.member, pick.sticky);
    books.rec.sticky = pick.sticky;
    let m = &b.members[pick.member];
    books.sticky.on_pick(
        &m.state,
        pick.sticky,
        cookie.value,
        cookie.name.map(|_| m.cookie_id.as_str()),
    );
    let base = Progress {
        replayable,
        pinned: Exchange::pinned(pick.sticky),
        engine_io: books.sticky.engine_io,
        ..Progress::default()
    };
    (m, base)
}

/// An attempt failed: what `failure::classify` makes of it, counted.
pub fn failed(acct: &Account, f: Failure, progress: Progress) -> Verdict {
    let v = failure::classify(f, progress);
    acct.upstream_error(v.counted);
    if v.passive {
        acct.passive(true);
    }
    v
}

/// What follows an attempt that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// The same server again, on a new connection (a pooled one had gone stale).
    Fresh,
    /// Another server.
    Elsewhere,
    /// No more tries: answer the failure.
    Answer,
}

/// The retry loop's rule: a stale pooled connection is tried again fresh once, a failure
/// `classify` sends elsewhere goes elsewhere while the backend's retries and budget allow.
pub fn after_failure(retry: Retry, pooled_allowed: bool, elsewhere_allowed: impl FnOnce() -> bool) -> Then {
    match retry {
        Retry::Fresh if pooled_allowed => Then::Fresh,
        Retry::Elsewhere if elsewhere_allowed() => Then::Elsewhere,
        _ => Then::Answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_loop_tries_fresh_once_then_elsewhere_within_the_budget() {
        // (retry, pooled allowed, elsewhere allowed) -> then
        for (retry, pooled, elsewhere, then) in [
            (Retry::Fresh, true, true, Then::Fresh),
            (Retry::Fresh, false, true, Then::Answer),
            (Retry::Elsewhere, true, true, Then::Elsewhere),
            (Retry::Elsewhere, true, false, Then::Answer),
            (Retry::No, true, true, Then::Answer),
        ] {
            assert_eq!(
                after_failure(retry, pooled, || elsewhere),
                then,
                "{retry:?} {pooled} {elsewhere}"
            );
        }
        let mut asked = false;
        after_failure(Retry::No, true, || {
            asked = true;
            true
        });
        assert!(!asked, "the budget is spent only for a retry elsewhere");
    }
}
