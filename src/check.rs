//! `edgepin check`: the summary printed for a valid config, its warnings (valid but
//! unwise settings, e.g. a short stats password), each as `FILE:LINE:COL: warning: …`,
//! the certificate checks (each key matches its certificate; a warning for one expiring
//! within 14 days), and one resolution of each discovered backend (a warning when its
//! name does not resolve yet).

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use crate::config::Config;

/// A certificate expiring sooner than this is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86400);

/// What loading the config's certificate files found.
#[derive(Debug, Default)]
pub struct CertReport {
    /// One line per certificate, for the summary.
    pub lines: Vec<String>,
    pub warnings: Vec<String>,
    /// `file:line:col: message` for each pair that does not load.
    pub errors: Vec<String>,
}

/// Load every certificate file of `c` as `run` would, at `now`.
pub fn certificates(c: &Config, now: SystemTime) -> CertReport {
    let mut r = CertReport::default();
    let Some(t) = &c.tls else { return r };
    let file = c.source.display().to_string();
    for (i, f) in t.certificates.iter().enumerate() {
        let loaded = crate::tls::load_certified_key(&f.cert, &f.key)
            .and_then(|ck| crate::tls::Certificate::new(ck, f.names.clone(), f.cert.display().to_string()));
        let cert = match loaded {
            Ok(cert) => cert,
            Err(e) => {
                r.errors.push(format!("{file}:{}:{}: {e}", f.pos.line, f.pos.col));
                continue;
            }
        };
        let left = cert.info.remaining(now);
        let days = left.as_secs() / 86400;
        let default = if t.default == Some(i) { " (default)" } else { "" };
        r.lines.push(format!(
            "{}{default}: {}, issuer {}, expires in {days} days",
            cert.names.join(", "),
            f.cert.display(),
            cert.info.issuer
        ));
        if left.is_zero() {
            r.warnings
                .push(format!("{}: the certificate has expired", f.cert.display()));
        } else if left < EXPIRY_WARNING {
            r.warnings
                .push(format!("{}: the certificate expires in {days} days", f.cert.display()));
        }
    }
    if let Some(a) = &t.acme {
        r.lines.push(format!(
            "{}: ACME from {} ({}), stored in {}",
            a.domains.join(", "),
            a.directory,
            a.challenge.as_str(),
            a.storage.display()
        ));
    }
    r
}

/// A short human summary: listeners, routes, backends with their servers; warnings last.
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
    let hosts = if c.listen.stats.is_some() && !c.stats.hosts.is_empty() {
        format!(" (also Host {})", c.stats.hosts.join(", "))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  stats  {} {}{hosts}",
        show(c.listen.stats),
        if c.listen.stats.is_some() { auth } else { "" }
    );
    if let Some(t) = &c.tls {
        let hsts = t.hsts.as_ref().map_or("off".to_string(), |h| h.value());
        let _ = writeln!(out, "tls:    h2 {}, hsts {hsts}", if t.h2 { "on" } else { "off" });
    }
    if let Some(r) = &c.run_as {
        let _ = writeln!(out, "run_as: {} ({}), group {} ({})", r.user, r.uid, r.group, r.gid);
    }
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
        if let Some(d) = &b.discover {
            let _ = writeln!(
                out,
                "  {} ({}): servers from DNS {}, every {}, at most {}",
                b.name,
                b.balance.as_str(),
                d.describe(),
                humantime::format_duration(d.interval),
                d.max_servers
            );
            continue;
        }
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
        if let Some(shared) = &c.sticky.shared {
            let _ = writeln!(out, "sticky: sid table shared through Redis {shared}");
        }
    }
    for w in warnings(c) {
        let _ = writeln!(out, "{w}");
    }
    out
}

/// What resolving every discovered backend once found.
#[derive(Debug, Default)]
pub struct DiscoveryReport {
    /// One line per discovered backend, for the summary.
    pub lines: Vec<String>,
    /// `FILE:LINE:COL: warning: …` for each name that gives no servers (yet): a warning,
    /// not an error, as `run` keeps asking.
    pub warnings: Vec<String>,
}

/// Resolve each discovered backend of `c` once, as `run` would.
pub fn discovery(c: &Config) -> DiscoveryReport {
    let mut r = DiscoveryReport::default();
    let specs: Vec<(&str, &crate::config::Discover)> = c
        .backends
        .iter()
        .filter_map(|b| Some((b.name.as_str(), b.discover.as_ref()?)))
        .collect();
    if specs.is_empty() {
        return r;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            r.warnings
                .push(format!("warning: cannot resolve discovered backends: {e}"));
            return r;
        }
    };
    let file = c.source.display().to_string();
    for (backend, d) in specs {
        let answer = runtime.block_on(async {
            let resolver = crate::discovery::DnsResolver::new(d)?;
            resolver.resolve().await.answer
        });
        match answer {
            Ok(found) if !found.is_empty() => {
                let mut names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
                let more = names.len().saturating_sub(d.max_servers);
                names.truncate(d.max_servers);
                let cut = if more > 0 {
                    format!(" (and {more} more over max_servers)")
                } else {
                    String::new()
                };
                r.lines
                    .push(format!("{backend}: {} -> {}{cut}", d.describe(), names.join(", ")));
            }
            Ok(_) => r.warnings.push(format!(
                "{file}:{}:{}: warning: backend {backend}: {} gives no servers yet (no records)",
                d.pos.line,
                d.pos.col,
                d.describe()
            )),
            Err(failure) => r.warnings.push(format!(
                "{file}:{}:{}: warning: backend {backend}: {} does not resolve yet ({failure})",
                d.pos.line,
                d.pos.col,
                d.describe()
            )),
        }
    }
    r
}

/// What is valid but unwise in `c`, as `FILE:LINE:COL: warning: message` lines.
pub fn warnings(c: &Config) -> Vec<String> {
    c.stats
        .weak_password
        .iter()
        .map(|w| format!("{}:{}:{}: warning: {}", w.file, w.pos.line, w.pos.col, w.message))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatched_key_is_an_error_and_a_close_expiry_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::certs::generate(dir.path()).unwrap();
        let (soon, soon_key) =
            crate::certs::issue(&ca, &dir.path().join("soon"), &["soon.test"], time::Duration::days(5)).unwrap();
        let text = format!(
            "listen: {{ https: 127.0.0.1:8443 }}\ntls:\n  cert: {}\n  key: {}\n  certificates:\n    - {{ cert: {}, key: {} }}\n    - {{ cert: {}, key: {} }}\nroutes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [a] }}\nservers:\n  a: {{ address: 127.0.0.1:3001 }}\n",
            ca.cert.display(),
            ca.key.display(),
            soon.display(),
            soon_key.display(),
            soon.display(),
            ca.key.display(),
        );
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, text).unwrap();
        let c = crate::config::load(&path).unwrap();
        let r = certificates(&c, SystemTime::now());
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].starts_with(&format!("{}:7:", path.display())), "{r:?}");
        assert!(r.errors[0].contains("does not match"), "{r:?}");
        assert_eq!(r.lines.len(), 2, "{r:?}");
        assert!(r.lines[0].starts_with("localhost (default):"), "{r:?}");
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(
            r.warnings[0].ends_with("expires in 4 days") || r.warnings[0].ends_with("expires in 5 days"),
            "{r:?}"
        );
    }

    #[test]
    fn the_summary_names_the_shared_sid_table_without_its_password() {
        let text = "listen: { http: 127.0.0.1:8080 }\nroutes:\n  - { path_prefix: /, backend: s }\n\
                    backends:\n  s: { balance: sticky, servers: [a] }\nservers:\n  a: { address: 127.0.0.1:3001 }\n\
                    sticky: { shared: { redis: \"redis://10.0.0.9:6379\", timeout: 20ms } }\n";
        let c = crate::config::parse(std::path::Path::new("t.yaml"), text).unwrap();
        assert!(
            summary(&c).contains(
                "sticky: sid table shared through Redis redis://10.0.0.9:6379 (timeout 20ms, keys edgepin:sid:*)"
            ),
            "{}",
            summary(&c)
        );
        let mut secret = c.clone();
        if let Some(s) = secret.sticky.shared.as_mut() {
            s.redis = crate::config::SharedRedis::One("redis://:hunter2hunter2@10.0.0.9:6379".into());
        }
        let diff = crate::diff::diff(&c, &secret);
        assert_eq!(
            diff,
            vec![
                "~ sticky.shared: redis://10.0.0.9:6379 (timeout 20ms, keys edgepin:sid:*) -> redis://***@10.0.0.9:6379 (timeout 20ms, keys edgepin:sid:*)"
            ]
        );
    }
}
