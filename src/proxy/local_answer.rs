//! The answers edgepin gives itself, for every engine: redirects, refusals (no route, a
//! limit, no server, a lost Engine.IO session, a rate), the status of an exchange that
//! failed, ACME challenge answers. Each is built here once, status, reason phrase,
//! `Retry-After`, body and what the access log says of it, and each engine writes it:
//! [`LocalAnswer::write_h1`] for HTTP/1, `respond` on pingora's HTTP/2 sessions. No I/O.

use std::borrow::Cow;
use std::io::Write;

use crate::failure::{NEW_SESSIONS_CAPPED, Refusal, Verdict};
use crate::sticky::engineio::SESSION_UNKNOWN_BODY;

/// `Retry-After` sent with a 503, in seconds.
pub const RETRY_AFTER: u64 = 5;

const TEXT: &str = "text/plain; charset=utf-8";

/// One answer edgepin gives itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAnswer<'a> {
    pub status: u16,
    pub content_type: &'static str,
    /// A field of its own besides the type, length and `cache-control: no-store`:
    /// `location` or `retry-after`.
    pub field: Option<(&'static str, Cow<'a, str>)>,
    pub body: Cow<'a, str>,
    /// What the access log says of it (its `error`).
    pub note: Option<&'static str>,
}

/// The reason phrase of a status (empty for one HTTP does not name).
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

impl<'a> LocalAnswer<'a> {
    /// `<status> <reason>[: detail]` as text; the detail is also the log's note.
    pub fn text(status: u16, detail: &'static str) -> LocalAnswer<'static> {
        let reason = reason(status);
        let body = if detail.is_empty() {
            format!("{status} {reason}\n")
        } else {
            format!("{status} {reason}: {detail}\n")
        };
        LocalAnswer {
            status,
            content_type: TEXT,
            field: None,
            body: Cow::Owned(body),
            note: (!detail.is_empty()).then_some(detail),
        }
    }

    /// A body of its own type, as it is (an ACME key authorization).
    pub fn plain(status: u16, content_type: &'static str, body: &'a str) -> LocalAnswer<'a> {
        LocalAnswer {
            status,
            content_type,
            field: None,
            body: Cow::Borrowed(body),
            note: None,
        }
    }

    /// `308` to `location`, without a body.
    pub fn redirect(location: &'a str) -> LocalAnswer<'a> {
        LocalAnswer {
            field: Some(("location", Cow::Borrowed(location))),
            ..LocalAnswer::plain(308, TEXT, "")
        }
    }

    /// Engine.IO's own answer for a session it does not know: the client opens a new one
    /// at once.
    pub fn session_unknown() -> LocalAnswer<'static> {
        LocalAnswer {
            note: Some("session lost with its server"),
            ..LocalAnswer::plain(400, "application/json", SESSION_UNKNOWN_BODY)
        }
    }

    /// The answer to a request edgepin refuses.
    pub fn refusal(why: &Refusal) -> LocalAnswer<'static> {
        match why {
            Refusal::SessionGone => LocalAnswer::session_unknown(),
            Refusal::NoServer => LocalAnswer::text(503, "no server available").retry_after(RETRY_AFTER),
            Refusal::Status(503, detail) => LocalAnswer::text(503, detail).retry_after(RETRY_AFTER),
            Refusal::Status(status, detail) => LocalAnswer::text(*status, detail),
            Refusal::TooMany { retry_after } => LocalAnswer::text(429, "too many requests").retry_after(*retry_after),
            Refusal::NewSessionsCapped { retry_after } => {
                LocalAnswer::text(503, NEW_SESSIONS_CAPPED).retry_after(*retry_after)
            }
        }
    }

    /// The answer to an exchange with a server that failed and is not tried again: the
    /// status `failure::classify` chose (never 0: a client that left gets nothing).
    pub fn failure(v: &Verdict) -> LocalAnswer<'static> {
        if v.session_lost {
            return LocalAnswer::session_unknown();
        }
        let detail = match v.status {
            502 => "the server could not be reached",
            503 => "no server available",
            504 => "the server did not answer in time",
            400 => "malformed chunked request body",
            408 => "request body not received in time",
            413 => "request body too large",
            _ => "",
        };
        let answer = LocalAnswer::text(v.status, detail);
        if v.status == 503 {
            answer.retry_after(RETRY_AFTER)
        } else {
            answer
        }
    }

    fn retry_after(self, seconds: u64) -> Self {
        LocalAnswer {
            field: Some(("retry-after", Cow::Owned(seconds.to_string()))),
            ..self
        }
    }

    /// The whole HTTP/1.1 response, appended to `out`; `close`: say the connection closes
    /// after it.
    pub fn write_h1(&self, out: &mut Vec<u8>, close: bool) {
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some((name, value)) = &self.field {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::{Counted, Retry};

    fn h1(answer: &LocalAnswer<'_>, close: bool) -> String {
        let mut out = Vec::new();
        answer.write_h1(&mut out, close);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_refusal_says_its_status_reason_and_detail() {
        let a = LocalAnswer::refusal(&Refusal::Status(404, "no route"));
        assert_eq!(
            h1(&a, false),
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\n\
             cache-control: no-store\r\n\r\n404 Not Found: no route\n"
        );
        assert_eq!(a.note, Some("no route"));
        let a = LocalAnswer::refusal(&Refusal::NoServer);
        assert!(h1(&a, true).contains("retry-after: 5\r\nconnection: close\r\n\r\n503 Service Unavailable"));
        let a = LocalAnswer::refusal(&Refusal::TooMany { retry_after: 7 });
        assert_eq!(
            (a.status, a.field.clone()),
            (429, Some(("retry-after", Cow::from("7"))))
        );
        let a = LocalAnswer::refusal(&Refusal::SessionGone);
        assert_eq!(
            (a.status, a.content_type, &*a.body),
            (400, "application/json", SESSION_UNKNOWN_BODY)
        );
    }

    #[test]
    fn a_failed_exchange_is_answered_with_the_status_classify_chose() {
        let verdict = |status, session_lost| Verdict {
            status,
            retry: Retry::No,
            passive: false,
            counted: Counted::Response,
            session_lost,
        };
        let a = LocalAnswer::failure(&verdict(504, false));
        assert_eq!(&*a.body, "504 Gateway Timeout: the server did not answer in time\n");
        assert_eq!(
            LocalAnswer::failure(&verdict(502, true)),
            LocalAnswer::session_unknown()
        );
        let redirect = LocalAnswer::redirect("https://a.example/x");
        assert!(
            h1(&redirect, false)
                .contains("content-length: 0\r\ncache-control: no-store\r\nlocation: https://a.example/x\r\n\r\n")
        );
    }
}
