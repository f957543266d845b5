//! Logging: tracing setup for the process, and the access log (one structured line per
//! request, target `edgepin::access`, switched by `access_log` in the config).

use std::time::Duration;

use pingora::Error;
use pingora::proxy::Session;
use tracing_subscriber::EnvFilter;

use crate::proxy::RequestCtx;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global subscriber. `RUST_LOG` overrides the default filter
/// (`info`, with pingora's own logs at `warn`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pingora=warn,pingora_core=warn,pingora_proxy=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One access log line for a finished request.
pub fn access_log(session: &Session, ctx: &RequestCtx, e: Option<&Error>, elapsed: Duration) {
    let req = session.req_header();
    let route = ctx
        .snapshot()
        .zip(ctx.route)
        .map(|(s, r)| s.config.routes[r].path_prefix.as_str())
        .unwrap_or("-");
    let backend = ctx.backend_rt().map(|b| b.name()).unwrap_or("-");
    let server = ctx.member().map(|m| &*m.name).unwrap_or("-");
    let sticky = ctx.pick.and_then(|p| p.sticky).map(|d| format!("{d:?}").to_lowercase());
    let since_start = |t: Option<std::time::Instant>| t.map(|t| ms(t.duration_since(ctx.started)));
    let error = ctx
        .error
        .as_deref()
        .map(str::to_string)
        .or_else(|| e.map(|e| e.to_string()));
    tracing::info!(
        target: "edgepin::access",
        client = %ctx.client.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        listener = if ctx.tls { "https" } else { "http" },
        method = %req.method,
        host = req.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("-"),
        path = req.uri.path(),
        sid = ctx.sticky.sid.as_deref(),
        route,
        backend,
        server,
        status = ctx.status,
        bytes_in = session.body_bytes_read(),
        bytes_out = session.body_bytes_sent(),
        duration_ms = ms(elapsed),
        connect_ms = since_start(ctx.connected_at),
        ttfb_ms = since_start(ctx.first_byte_at),
        upgrade = ctx.upgrade,
        ws_bytes_in = ctx.ws_bytes_in,
        ws_bytes_out = ctx.ws_bytes_out,
        upstream_ended = ctx.upstream_ended,
        sticky,
        attempts = ctx.attempts,
        local = ctx.local,
        error,
    );
}
