//! What a failed exchange with a server means: the status the client gets, whether the
//! request may go to another server (or again to the same one on a new connection),
//! whether the server's health is charged with it, and whether the client's Engine.IO
//! session died with it. Both engines (our HTTP/1 one and pingora's HTTP/2 proxy) ask
//! here; nothing here does I/O.
//!
//! Passive health counts only what says the *server* is unwell: a connection refused or
//! timed out, and silence or a reset once the server had the whole request. Nothing that
//! happens while the request is still going out is held against the server (a server may
//! answer and close before it has read a body, RFC 9110 §15.5.14; a client decides how
//! its body goes), nor a malformed or mismatched answer, nor a client that left or is
//! slow: a client could provoke all of those (nginx's `max_fails` counts `error timeout`
//! by default, not invalid headers).

/// Why edgepin answers a request itself instead of proxying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Status(u16, &'static str),
    /// No server can take it: 503 with Retry-After.
    NoServer,
    /// Its Engine.IO session lives on a server that cannot serve it any more:
    /// Engine.IO's `400 Session ID unknown`, so the client opens a new session at once.
    SessionGone,
    /// Over a rate: 429 with Retry-After (seconds).
    TooMany {
        retry_after: u64,
    },
    /// A new Engine.IO session over its backend's `new_sessions` cap: 503 with
    /// Retry-After (seconds); socket.io-client backs off and tries again.
    NewSessionsCapped {
        retry_after: u64,
    },
}

/// The detail line of a [`Refusal::NewSessionsCapped`] answer.
pub const NEW_SESSIONS_CAPPED: &str = "too many new sessions: try again later";

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectRefused,
    ConnectTimedOut,
    /// Any other error opening the connection.
    ConnectError,
    /// The server closed or reset the connection before any byte of an answer.
    ResetBeforeAnswer,
    /// A pooled connection had an answer before the request was written: the server said
    /// something nobody asked (502 unless it can go again on a new connection).
    Stray,
    /// No (complete) answer head within `timeouts.server`.
    AnswerTimedOut,
    /// The answer head was malformed or not what was asked (a 101 that is no valid
    /// WebSocket handshake).
    BadAnswer,
    /// The answer broke off after it began (reset, timeout, bad framing).
    AnswerBroken,
    /// The client went away or stopped sending or reading in time.
    ClientGone,
    /// The client's streamed body went over `limits.max_body_bytes` (413).
    BodyTooLarge,
    /// The client's chunked body broke its framing (400).
    BodyMalformed,
    /// The client stopped sending its streamed body for `timeouts.client` (408).
    BodyStalled,
}

/// How far the exchange had gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Some of the request reached the server.
    pub sent: bool,
    /// The whole request, body included, reached the server.
    pub request_complete: bool,
    /// The server's answer began (nothing can be retried after that).
    pub answered: bool,
    /// Sending the request again is safe: an idempotent method whose body, if any, is
    /// still held in full.
    pub replayable: bool,
    /// The connection to the server came from the keep-alive pool.
    pub reused: bool,
    /// Routed by its Engine.IO sid: only that server knows the session.
    pub pinned: bool,
    /// An Engine.IO request (a `Session ID unknown` 400 is the right answer for a lost
    /// session).
    pub engine_io: bool,
}

/// Where a retry may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    No,
    /// The same server on a new connection: a pooled connection the server had closed.
    Fresh,
    /// Another server (within the retry budget, if one is left).
    Elsewhere,
}

/// Which error counter the failure goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Connect,
    Response,
    /// Not an error of the server's (the client's doing).
    Nothing,
}

/// The decision for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Status for the client if nothing was answered yet (0: none, the client is gone).
    pub status: u16,
    pub retry: Retry,
    /// Count it against the server's passive health.
    pub passive: bool,
    pub counted: Counted,
    /// The client's Engine.IO session is lost with its server: answer with Engine.IO's
    /// `400 Session ID unknown` and forget the sid.
    pub session_lost: bool,
}

pub fn classify(f: Failure, p: Progress) -> Verdict {
    use Failure::*;
    let connect = matches!(f, ConnectRefused | ConnectTimedOut | ConnectError);
    // A pooled connection that the server closed while it was idle: not the server's
    // fault, and the request can go again on a new connection if it is safe to.
    let stale = p.reused && matches!(f, ResetBeforeAnswer | Stray) && !p.answered;
    let client_side = matches!(f, ClientGone | BodyTooLarge | BodyMalformed | BodyStalled);
    let retry = if p.answered || client_side || f == AnswerTimedOut || f == BadAnswer {
        Retry::No
    } else if stale && (p.replayable || !p.sent) {
        Retry::Fresh
    } else if p.pinned {
        Retry::No
    } else if connect || (f == ResetBeforeAnswer && (p.replayable || !p.sent)) {
        Retry::Elsewhere
    } else {
        Retry::No
    };
    let passive = match f {
        ConnectRefused | ConnectTimedOut | ConnectError => true,
        // A server may close on a body it will not read; only a reset after it had the
        // whole request says it is unwell.
        ResetBeforeAnswer => p.request_complete && !stale,
        Stray => false,
        // A server waiting for the rest of a slow client's body is not failing.
        AnswerTimedOut => p.request_complete,
        BadAnswer | AnswerBroken | ClientGone | BodyTooLarge | BodyMalformed | BodyStalled => false,
    };
    let counted = match f {
        _ if connect => Counted::Connect,
        _ if client_side => Counted::Nothing,
        _ if stale && f == ResetBeforeAnswer => Counted::Nothing,
        _ => Counted::Response,
    };
    // The session died with its server only if the server looks gone: not for a client's
    // doing, a slow server, a stray answer or a close while the request still went out.
    let server_gone = match f {
        ResetBeforeAnswer => p.request_complete,
        AnswerTimedOut | Stray => false,
        _ => !client_side,
    };
    let session_lost = p.pinned && p.engine_io && !p.answered && retry != Retry::Fresh && server_gone;
    let status = match f {
        ClientGone => 0,
        BodyTooLarge => 413,
        BodyMalformed => 400,
        BodyStalled => 408,
        _ if session_lost => 400,
        ConnectTimedOut | AnswerTimedOut => 504,
        _ => 502,
    };
    Verdict {
        status,
        retry,
        passive,
        counted,
        session_lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_get() -> Progress {
        Progress {
            sent: true,
            request_complete: true,
            replayable: true,
            ..Progress::default()
        }
    }

    #[test]
    fn connect_failures_go_elsewhere_for_any_method_and_count_against_the_server() {
        for f in [Failure::ConnectRefused, Failure::ConnectTimedOut, Failure::ConnectError] {
            let v = classify(f, Progress::default());
            assert_eq!(
                (v.retry, v.passive, v.counted),
                (Retry::Elsewhere, true, Counted::Connect),
                "{f:?}"
            );
        }
        assert_eq!(classify(Failure::ConnectRefused, Progress::default()).status, 502);
        assert_eq!(classify(Failure::ConnectTimedOut, Progress::default()).status, 504);
    }

    #[test]
    fn nothing_while_the_request_goes_out_is_held_against_the_server() {
        // The server answered a body it would not read and closed; or it reset while a
        // client trickled its body.
        let streaming = Progress {
            sent: true,
            request_complete: false,
            ..Progress::default()
        };
        let v = classify(Failure::ResetBeforeAnswer, streaming);
        assert_eq!((v.passive, v.retry, v.status), (false, Retry::No, 502));
        let v = classify(Failure::AnswerTimedOut, streaming);
        assert_eq!((v.passive, v.status), (false, 504));
        // Connect failures and a reset once it had the whole request still count.
        assert!(classify(Failure::ConnectRefused, Progress::default()).passive);
        assert!(classify(Failure::ResetBeforeAnswer, fresh_get()).passive);
    }

    #[test]
    fn a_stray_answer_on_a_pooled_connection_is_sent_again_fresh_when_safe() {
        let unsent = Progress {
            reused: true,
            ..Progress::default()
        };
        let v = classify(Failure::Stray, unsent);
        assert_eq!(
            (v.retry, v.passive, v.counted),
            (Retry::Fresh, false, Counted::Response)
        );
        let sent_post = Progress {
            reused: true,
            sent: true,
            request_complete: true,
            ..Progress::default()
        };
        let v = classify(Failure::Stray, sent_post);
        assert_eq!((v.retry, v.passive, v.status), (Retry::No, false, 502));
    }

    #[test]
    fn a_reset_before_the_answer_is_retried_only_when_replay_is_safe() {
        let v = classify(Failure::ResetBeforeAnswer, fresh_get());
        assert_eq!((v.retry, v.passive, v.status), (Retry::Elsewhere, true, 502));
        let post = Progress {
            replayable: false,
            ..fresh_get()
        };
        assert_eq!(classify(Failure::ResetBeforeAnswer, post).retry, Retry::No);
    }

    #[test]
    fn a_stale_pooled_connection_is_retried_fresh_and_not_held_against_the_server() {
        let reused = Progress {
            reused: true,
            ..fresh_get()
        };
        let v = classify(Failure::ResetBeforeAnswer, reused);
        assert_eq!((v.retry, v.passive, v.counted), (Retry::Fresh, false, Counted::Nothing));
        // Even a POST when nothing of it was sent.
        let unsent = Progress {
            reused: true,
            ..Progress::default()
        };
        assert_eq!(classify(Failure::ResetBeforeAnswer, unsent).retry, Retry::Fresh);
        let sent_post = Progress {
            reused: true,
            sent: true,
            ..Progress::default()
        };
        assert_eq!(classify(Failure::ResetBeforeAnswer, sent_post).retry, Retry::No);
    }

    #[test]
    fn what_a_client_can_provoke_is_not_held_against_the_server() {
        let v = classify(Failure::BadAnswer, fresh_get());
        assert_eq!(
            (v.status, v.retry, v.passive, v.counted),
            (502, Retry::No, false, Counted::Response)
        );
        let slow_body = Progress {
            request_complete: false,
            ..fresh_get()
        };
        let v = classify(Failure::AnswerTimedOut, slow_body);
        assert_eq!((v.status, v.passive, v.retry), (504, false, Retry::No));
        let v = classify(Failure::AnswerTimedOut, fresh_get());
        assert_eq!(
            (v.status, v.passive, v.retry),
            (504, true, Retry::No),
            "timeouts are never retried"
        );
        let v = classify(Failure::ClientGone, fresh_get());
        assert_eq!((v.status, v.passive, v.counted), (0, false, Counted::Nothing));
        let streaming = Progress {
            replayable: false,
            request_complete: false,
            pinned: true,
            engine_io: true,
            ..fresh_get()
        };
        for (f, status) in [
            (Failure::BodyTooLarge, 413),
            (Failure::BodyMalformed, 400),
            (Failure::BodyStalled, 408),
        ] {
            let v = classify(f, streaming);
            assert_eq!(
                (v.status, v.retry, v.passive, v.counted, v.session_lost),
                (status, Retry::No, false, Counted::Nothing, false),
                "{f:?}"
            );
        }
        let v = classify(
            Failure::AnswerBroken,
            Progress {
                answered: true,
                ..fresh_get()
            },
        );
        assert_eq!((v.retry, v.passive), (Retry::No, false));
    }

    #[test]
    fn a_pinned_engine_io_session_dies_with_its_server() {
        let pinned = Progress {
            pinned: true,
            engine_io: true,
            ..fresh_get()
        };
        let v = classify(Failure::ConnectRefused, pinned);
        assert_eq!((v.status, v.retry, v.session_lost), (400, Retry::No, true));
        // A slow server or a departed client loses nothing.
        assert!(!classify(Failure::AnswerTimedOut, pinned).session_lost);
        assert!(!classify(Failure::ClientGone, pinned).session_lost);
        // Once answered, nothing is lost by a broken body.
        let answered = Progress {
            answered: true,
            ..pinned
        };
        assert!(!classify(Failure::AnswerBroken, answered).session_lost);
        // A pooled connection gone stale is retried on the same server, even pinned.
        let stale = Progress { reused: true, ..pinned };
        assert_eq!(classify(Failure::ResetBeforeAnswer, stale).retry, Retry::Fresh);
    }
}
