//! Answers edgepin writes itself on pingora's HTTP/2 sessions: redirects, refusals, and
//! the Engine.IO 400.

use bytes::Bytes;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::sticky::engineio::SESSION_UNKNOWN_BODY;

use crate::failure::{NEW_SESSIONS_CAPPED, Refusal};

/// Retry-After sent with 503s and 429s, seconds.
const RETRY_AFTER: &str = "5";

/// Write a complete response with a short body.
pub async fn send(
    session: &mut Session,
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in headers {
        resp.append_header(k.to_string(), *v)?;
    }
    session.write_response_header(Box::new(resp), body.is_empty()).await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(Bytes::copy_from_slice(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// A plain-text error answer: `<status> <reason>` plus an optional detail line.
pub async fn text(session: &mut Session, status: u16, detail: &str, headers: &[(&str, &str)]) -> Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = if detail.is_empty() {
        format!("{status} {reason}\n")
    } else {
        format!("{status} {reason}: {detail}\n")
    };
    send(session, status, "text/plain; charset=utf-8", headers, &body).await
}

/// Engine.IO's own answer for a session id it does not know: the client re-handshakes.
pub async fn session_unknown(session: &mut Session) -> Result<()> {
    send(session, 400, "application/json", &[], SESSION_UNKNOWN_BODY).await
}

pub async fn redirect(session: &mut Session, location: &str) -> Result<()> {
    send(session, 308, "text/plain; charset=utf-8", &[("location", location)], "").await
}

/// The answer to a request edgepin refuses.
pub async fn refusal(session: &mut Session, why: &Refusal) -> Result<()> {
    match why {
        Refusal::Status(503, detail) => text(session, 503, detail, &[("retry-after", RETRY_AFTER)]).await,
        Refusal::Status(status, detail) => text(session, *status, detail, &[]).await,
        Refusal::NoServer => text(session, 503, "no server available", &[("retry-after", RETRY_AFTER)]).await,
        Refusal::SessionGone => session_unknown(session).await,
        Refusal::TooMany { retry_after } => {
            text(
                session,
                429,
                "too many requests",
                &[("retry-after", &retry_after.to_string())],
            )
            .await
        }
        Refusal::NewSessionsCapped { retry_after } => {
            let after = retry_after.to_string();
            text(session, 503, NEW_SESSIONS_CAPPED, &[("retry-after", &after)]).await
        }
    }
}

/// The detail line of an error answer.
pub fn detail(status: u16) -> &'static str {
    match status {
        502 => "the server could not be reached",
        503 => "no server available",
        504 => "the server did not answer in time",
        _ => "",
    }
}
