//! The access log: one structured line per request (or tunnel, at its close), target
//! `edgepin::access`, switched by `access_log` in the config. Both engines fill an
//! [`AccessLine`]; the query string stays out (it can carry tokens).

use std::net::IpAddr;
use std::time::Duration;

use crate::state::StickyDecision;

/// What one request did.
#[derive(Debug, Default)]
pub struct AccessLine<'a> {
    pub client: Option<IpAddr>,
    pub tls: bool,
    pub method: &'a str,
    pub host: Option<&'a str>,
    /// Without the query.
    pub path: &'a str,
    pub sid: Option<&'a str>,
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub server: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    /// Since the request began: connected to the server, first byte of its answer.
    pub connect: Option<Duration>,
    pub ttfb: Option<Duration>,
    pub upgrade: bool,
    pub ws_bytes_in: u64,
    pub ws_bytes_out: u64,
    /// A tunnel the server ended.
    pub upstream_ended: bool,
    pub sticky: Option<StickyDecision>,
    pub attempts: u32,
    /// Answered by edgepin itself.
    pub local: bool,
    pub error: Option<&'a str>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl AccessLine<'_> {
    pub fn log(&self) {
        let sticky = self.sticky.map(|d| match d {
            StickyDecision::Sid => "sid",
            StickyDecision::Cookie => "cookie",
            StickyDecision::Hash => "hash",
            StickyDecision::Redispatch => "redispatch",
        });
        tracing::info!(
            target: "edgepin::access",
            client = %self.client.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            listener = if self.tls { "https" } else { "http" },
            method = %self.method,
            host = self.host.unwrap_or("-"),
            path = self.path,
            sid = self.sid,
            route = self.route.unwrap_or("-"),
            backend = self.backend.unwrap_or("-"),
            server = self.server.unwrap_or("-"),
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = ms(self.duration),
            connect_ms = self.connect.map(ms),
            ttfb_ms = self.ttfb.map(ms),
            upgrade = self.upgrade,
            ws_bytes_in = self.ws_bytes_in,
            ws_bytes_out = self.ws_bytes_out,
            upstream_ended = self.upstream_ended,
            sticky,
            attempts = self.attempts,
            local = self.local,
            error = self.error,
        );
    }
}
