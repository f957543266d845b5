//! `edgepin check`: the summary printed for a valid config.

use std::fmt::Write;

use crate::config::Config;

/// A short human summary: listeners, routes, backends with their servers.
pub fn summary(c: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", c.source.display());
    let show = |a: Option<std::net::SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    let _ = writeln!(out, "listeners:");
    let _ = writeln!(out, "  https  {}", show(c.listen.https));
    let http_mode = if c.listen.redirect {
        format!("(redirects to https, port {})", c.listen.redirect_port)
    } else {
        "(proxies)".into()
    };
    let _ = writeln!(
        out,
        "  http   {} {}",
        show(c.listen.http),
        if c.listen.http.is_some() {
            http_mode.as_str()
        } else {
            ""
        }
    );
    let auth = if c.stats.auth.is_some() {
        "(auth)"
    } else {
        "(no auth, loopback only)"
    };
    let _ = writeln!(
        out,
        "  stats  {} {}",
        show(c.listen.stats),
        if c.listen.stats.is_some() { auth } else { "" }
    );
    let _ = writeln!(out, "routes:");
    for r in &c.routes {
        let ws = if r.websocket { "" } else { " (no websocket)" };
        let _ = writeln!(
            out,
            "  {}{} -> {}{ws}",
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            c.backends[r.backend].name
        );
    }
    let _ = writeln!(out, "backends:");
    for b in &c.backends {
        let servers: Vec<String> = b
            .servers
            .iter()
            .map(|&i| {
                let s = &c.servers[i];
                format!("{} {} (weight {})", s.name, s.address_text, s.weight)
            })
            .collect();
        let cookie = b.cookie.as_deref().map(|c| format!(", cookie {c}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} ({}{cookie}): {}",
            b.name,
            b.balance.as_str(),
            servers.join(", ")
        );
    }
    if c.backends.iter().any(|b| b.balance == crate::config::Balance::Sticky) {
        let rate = c.sticky.handshake_rate.map_or("off".to_string(), |r| r.to_string());
        let _ = writeln!(out, "sticky: Engine.IO handshakes per client address: {rate}");
    }
    out
}
