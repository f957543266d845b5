//! Engine.IO long-polling: the packets of each POST are read (text packets by their first
//! bytes, `b…` ones are binary attachments) after socketioxide has taken them, and a session
//! that announced attachments gets a timer; if they are still owed at the deadline, the
//! guard sends socketioxide the session's own close packet (a POST of `1`), which ends the
//! session as if the client had closed it. Only sessions socketioxide accepted the POST of
//! are tracked, so made-up sids cost nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::frames::{HEAD, Message};
use super::{Attachments, Guard};
use crate::worker::MAX_PAYLOAD;

/// Engine.IO 4's separator between the packets of one polling payload.
const SEPARATOR: u8 = 0x1e;

/// Polling sessions that owe attachments.
#[derive(Default)]
pub(super) struct Sessions {
    owed: Mutex<HashMap<String, Owed>>,
    /// Tells a timer whether the attachments it was set for are still the ones owed.
    generations: AtomicU64,
}

struct Owed {
    attachments: Attachments,
    generation: u64,
}

impl Sessions {
    /// Count the packets of `payload` for `sid`; the deadline and generation to set a
    /// timer for when it starts owing (again).
    fn observe(&self, sid: &str, payload: &[u8], now: Instant) -> Option<(Instant, u64)> {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entry = owed.remove(sid).unwrap_or(Owed {
            attachments: Attachments::default(),
            generation: 0,
        });
        let before = entry.attachments.deadline();
        for packet in payload.split(|b| *b == SEPARATOR) {
            let message = match packet.first() {
                Some(b'b') => Message::Binary,
                _ => Message::Text(&packet[..packet.len().min(HEAD)]),
            };
            entry.attachments.observe(message, now);
        }
        let deadline = entry.attachments.deadline()?;
        let fresh = Some(deadline) != before;
        if fresh {
            entry.generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let armed = fresh.then_some((deadline, entry.generation));
        owed.insert(sid.to_string(), entry);
        armed
    }

    /// Forget `sid` if it still owes what `generation` was set for and is overdue.
    fn expire(&self, sid: &str, generation: u64, now: Instant) -> bool {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        let overdue = owed
            .get(sid)
            .is_some_and(|o| o.generation == generation && o.attachments.deadline().is_some_and(|d| d <= now));
        if overdue {
            owed.remove(sid);
        }
        overdue
    }

    /// What `sid` owes, handed over to its WebSocket (and forgotten here).
    pub(super) fn take(&self, sid: &str) -> Attachments {
        let mut owed = self.owed.lock().unwrap_or_else(PoisonError::into_inner);
        owed.remove(sid).map(|o| o.attachments).unwrap_or_default()
    }
}

/// A polling POST: passed to socketioxide whole, then counted.
pub(super) async fn post(guard: Guard, req: Request, sid: String) -> Response {
    let (parts, body) = req.into_parts();
    let payload: Bytes = match Limited::new(body, MAX_PAYLOAD as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return status(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let response = guard
        .pass(Request::from_parts(parts, Body::from(payload.clone())))
        .await;
    if response.status() == StatusCode::OK
        && let Some((deadline, generation)) = guard.polling.observe(&sid, &payload, Instant::now())
    {
        tokio::spawn(close_if_overdue(guard, sid, deadline, generation));
    }
    response
}

async fn close_if_overdue(guard: Guard, sid: String, deadline: Instant, generation: u64) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    if !guard.polling.expire(&sid, generation, Instant::now()) {
        return;
    }
    guard.cut.inc();
    tracing::info!(
        transport = "polling",
        "closing a session whose binary attachments are overdue"
    );
    // The sid came in a query string; it goes back into one as it was.
    let close = axum::http::Request::post(format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
        .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(Body::from("1"));
    match close {
        Ok(close) => {
            guard.pass(close).await;
        }
        Err(e) => tracing::debug!(error = %e, "cannot address the session to close"),
    }
}

fn status(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::guard::ATTACHMENT_DEADLINE;

    #[test]
    fn polling_sessions_owe_what_their_posts_announce() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        assert_eq!(sessions.observe("s1", b"42[\"say\",\"r\",\"hi\"]\x1e3", t0), None);
        let (deadline, generation) = sessions
            .observe("s1", b"452-[\"e\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID", t0)
            .expect("one attachment still owed");
        assert_eq!(deadline, t0 + ATTACHMENT_DEADLINE);
        assert!(!sessions.expire("s1", generation, t0), "not yet overdue");
        // A pong in between changes nothing; the last attachment settles it.
        assert_eq!(sessions.observe("s1", b"3", t0), None);
        assert_eq!(sessions.observe("s1", b"bBAU=", t0), None);
        assert!(!sessions.expire("s1", generation, deadline), "paid in time");

        let (deadline, generation) = sessions.observe("s2", b"451-[\"e\"]", t0).expect("owed");
        assert!(!sessions.expire("s2", generation + 1, deadline), "another generation");
        assert!(sessions.expire("s2", generation, deadline));
        assert!(!sessions.expire("s2", generation, deadline), "once");

        sessions.observe("s3", b"453-[\"e\"]\x1ebAQ==", t0).expect("owed");
        let handed = sessions.take("s3");
        assert_eq!(handed.pending, 2);
        assert_eq!(sessions.take("s3"), Attachments::default(), "handed over once");
    }
}
