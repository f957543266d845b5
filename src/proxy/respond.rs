//! Answers edgepin writes itself: redirects, refusals (with their counters), and the
//! Engine.IO 400.

use bytes::Bytes;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::sticky::engineio::SESSION_UNKNOWN_BODY;

use super::{EdgeProxy, RETRY_AFTER, RequestCtx};

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

/// Why edgepin answered a request itself instead of proxying it.
pub enum Refusal {
    Status(u16, &'static str),
    NoServer,
    SessionGone,
    /// The client is over `sticky.handshake_rate`: 429, retry after this long.
    TooManyHandshakes(std::time::Duration),
}

impl EdgeProxy {
    /// Answer the request here; counts it where it belongs.
    pub(super) async fn refuse(&self, session: &mut Session, ctx: &mut RequestCtx, why: Refusal) -> Result<bool> {
        ctx.local = true;
        match why {
            Refusal::Status(status, detail) => {
                ctx.status = status;
                if status == 431 || status == 413 || status == 400 {
                    self.frontend(ctx).request_errors.inc();
                } else if status == 403 {
                    self.frontend(ctx).denied.inc();
                }
                text(session, status, detail, &[]).await?;
            }
            Refusal::NoServer => {
                ctx.status = 503;
                if let Some(b) = ctx.backend_rt() {
                    b.counters.no_server.inc();
                }
                text(session, 503, "no server available", &[("retry-after", RETRY_AFTER)]).await?;
            }
            Refusal::SessionGone => {
                ctx.status = 400;
                if let Some(b) = ctx.backend_rt() {
                    b.counters.traffic.sid_unknown.inc();
                }
                self.session_lost(ctx);
                session_unknown(session).await?;
            }
            Refusal::TooManyHandshakes(wait) => {
                ctx.status = 429;
                self.frontend(ctx).denied.inc();
                let secs = crate::rate_limit::retry_after_secs(wait).to_string();
                text(
                    session,
                    429,
                    "too many new sessions from this address",
                    &[("retry-after", &secs)],
                )
                .await?;
            }
        }
        Ok(true)
    }

    /// The request's Engine.IO session died with its server: counted, and its sid
    /// forgotten, before the client is told with [`session_unknown`].
    pub(super) fn session_lost(&self, ctx: &RequestCtx) {
        if let Some(b) = ctx.backend_rt() {
            b.counters.sid_refused.inc();
        }
        if let Some(sid) = &ctx.sticky.sid {
            self.shared.sids.forget(sid);
        }
    }
}
