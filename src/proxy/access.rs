//! The access log: one structured line per request (or tunnel, at its close), target
//! `edgepin::access`, switched by `access_log` in the config. Every engine keeps a
//! [`Record`] of what happened to a request as it goes and ends with [`Record::log`],
//! which takes the rest from the request's `Account` (listener, route names, backend,
//! server): one line, built in one place. The query string stays out (it can carry
//! tokens).

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use crate::state::StickyDecision;

use super::account::Account;

/// The request as the log names it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requested<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    /// Without the query.
    pub path: &'a str,
    /// It asked for a WebSocket.
    pub upgrade: bool,
}

/// What happened to a request, beside what its `Account` counts.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The route that matched (an index into the config's routes).
    pub route: Option<usize>,
    pub sticky: Option<StickyDecision>,
    /// Servers tried (a fresh connection to the same server counts).
    pub attempts: u32,
    /// Since the request began: the connection to the server was open (new or pooled).
    pub connect: Option<Duration>,
    /// Since the request began: the server's answer head was in.
    pub ttfb: Option<Duration>,
    /// Answered by edgepin itself.
    pub local: bool,
    pub error: Option<Cow<'static, str>>,
    /// Body bytes from the client, and to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// A tunnel's bytes each way, and whether the server ended it.
    pub ws_bytes_in: u64,
    pub ws_bytes_out: u64,
    pub upstream_ended: bool,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Record {
    /// Note what went wrong, unless something already was.
    pub fn error_once(&mut self, what: &'static str) {
        self.error.get_or_insert(Cow::Borrowed(what));
    }

    /// Write the line (if the request's config wants access logs): `sid` is the Engine.IO
    /// session it belonged to, `status` 0 for a client that left unanswered.
    pub fn log(&self, acct: &Account, req: &Requested<'_>, sid: Option<&str>, status: u16, duration: Duration) {
        let snapshot = acct.snapshot();
        if !snapshot.config.access_log {
            return;
        }
        let sticky = self.sticky.map(|d| match d {
            StickyDecision::Sid => "sid",
            StickyDecision::Cookie => "cookie",
            StickyDecision::Hash => "hash",
            StickyDecision::Redispatch => "redispatch",
        });
        let route = self
            .route
            .and_then(|r| snapshot.config.routes.get(r))
            .map(|r| r.path_prefix.as_str());
        tracing::info!(
            target: "edgepin::access",
            client = %req.client.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            listener = if acct.tls() { "https" } else { "http" },
            method = %req.method,
            host = req.host.unwrap_or("-"),
            path = req.path,
            sid,
            route = route.unwrap_or("-"),
            backend = acct.backend().map_or("-", |b| b.name()),
            server = acct.member().map_or("-", |m| &*m.name),
            status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = ms(duration),
            connect_ms = self.connect.map(ms),
            ttfb_ms = self.ttfb.map(ms),
            upgrade = req.upgrade,
            ws_bytes_in = self.ws_bytes_in,
            ws_bytes_out = self.ws_bytes_out,
            upstream_ended = self.upstream_ended,
            sticky,
            attempts = self.attempts,
            local = self.local,
            error = self.error.as_deref(),
        );
    }
}
