//! `edgepin check --diff`: what a reload would change, compared with the config the
//! running proxy loaded last (its saved copy, see `loaded`).

use std::fmt::Display;
use std::path::Path;

use crate::config::{self, Config};
use crate::loaded;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("no running proxy found: {0} (is reload.pidfile set and the proxy running?)")]
    NoCopy(String),
    #[error("the running proxy's config no longer parses: {0}")]
    Old(config::LoadError),
}

/// The config the running proxy loaded, as described by its saved copy.
pub fn running_config(pidfile: &Path) -> Result<Config, DiffError> {
    let (source, text) = loaded::read_loaded(pidfile)
        .map_err(|e| DiffError::NoCopy(format!("{}: {e}", loaded::loaded_copy(pidfile).display())))?;
    config::parse(&source, &text).map_err(DiffError::Old)
}

/// Human-readable changes from `old` to `new`: `+` added, `-` removed, `~` changed,
/// `!` needs a restart.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Changes::default();
    let d = |t: std::time::Duration| humantime::format_duration(t).to_string();
    for (name, a, b) in [
        ("connect", old.timeouts.connect, new.timeouts.connect),
        ("client", old.timeouts.client, new.timeouts.client),
        ("server", old.timeouts.server, new.timeouts.server),
        ("tunnel", old.timeouts.tunnel, new.timeouts.tunnel),
        ("keepalive", old.timeouts.keepalive, new.timeouts.keepalive),
        ("queue", old.timeouts.queue, new.timeouts.queue),
        ("header", old.timeouts.header, new.timeouts.header),
        ("handshake", old.timeouts.handshake, new.timeouts.handshake),
    ] {
        out.changed(format!("timeouts.{name}"), &d(a), &d(b));
    }
    out.changed(
        "health".into(),
        &format!("{:?}", old.health),
        &format!("{:?}", new.health),
    );
    out.changed("access_log".into(), &old.access_log, &new.access_log);
    out.changed(
        "sticky.handshake_rate".into(),
        &opt(old.sticky.handshake_rate),
        &opt(new.sticky.handshake_rate),
    );
    out.changed(
        "sticky.shared".into(),
        &opt(old.sticky.shared.as_ref()),
        &opt(new.sticky.shared.as_ref()),
    );
    let routes = |c: &Config| -> Vec<String> {
        c.routes
            .iter()
            .map(|r| {
                format!(
                    "{}{} -> {}",
                    r.host.as_deref().unwrap_or("*"),
                    r.path_prefix,
                    c.backends[r.backend].name
                )
            })
            .collect()
    };
    out.changed("routes".into(), &routes(old).join(", "), &routes(new).join(", "));

    for s in &new.servers {
        match old.server(&s.name) {
            None => out
                .0
                .push(format!("+ server {} {} (weight {})", s.name, s.address_text, s.weight)),
            Some(o) => {
                out.changed(format!("server {} address", s.name), &o.address_text, &s.address_text);
                out.changed(format!("server {} weight", s.name), &o.weight, &s.weight);
                out.changed(
                    format!("server {} max_connections", s.name),
                    &opt(o.max_connections),
                    &opt(s.max_connections),
                );
            }
        }
    }
    for s in &old.servers {
        if new.server(&s.name).is_none() {
            out.0.push(format!(
                "- server {} (drains for {})",
                s.name,
                d(new.reload.drain_timeout)
            ));
        }
    }
    let members = |c: &Config, b: &config::Backend| -> String {
        if let Some(d) = &b.discover {
            return format!("DNS {}", d.describe());
        }
        b.servers
            .iter()
            .map(|&i| c.servers[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for b in &new.backends {
        match old.backend(&b.name) {
            None => out.0.push(format!(
                "+ backend {} ({}): {}",
                b.name,
                b.balance.as_str(),
                members(new, b)
            )),
            Some(o) => {
                out.changed(
                    format!("backend {} balance", b.name),
                    &o.balance.as_str(),
                    &b.balance.as_str(),
                );
                out.changed(
                    format!("backend {} servers", b.name),
                    &members(old, o),
                    &members(new, b),
                );
                out.changed(
                    format!("backend {} cookie", b.name),
                    &opt(o.cookie.clone()),
                    &opt(b.cookie.clone()),
                );
            }
        }
    }
    for b in &old.backends {
        if new.backend(&b.name).is_none() {
            out.0.push(format!("- backend {}", b.name));
        }
    }
    out.0
        .extend(loaded::restart_needed(old, new).into_iter().map(|w| format!("! {w}")));
    out.0
}

#[derive(Default)]
struct Changes(Vec<String>);

impl Changes {
    fn changed(&mut self, what: String, a: &dyn Display, b: &dyn Display) {
        let (a, b) = (a.to_string(), b.to_string());
        if a != b {
            self.0.push(format!("~ {what}: {a} -> {b}"));
        }
    }
}

fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        config::parse(Path::new("t.yaml"), text).unwrap()
    }

    #[test]
    fn lists_added_removed_and_changed_things() {
        let old = cfg(
            "listen: { http: 127.0.0.1:1 }\nroutes: [{ path_prefix: /, backend: api }]\n\
                       backends: { api: { servers: [a, b] } }\nservers:\n  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002 }\n",
        );
        let new = cfg(
            "listen: { http: 127.0.0.1:2 }\ntimeouts: { server: 60s }\nroutes: [{ path_prefix: /, backend: api }]\n\
                       backends: { api: { servers: [a, c] } }\nservers:\n  a: { address: 127.0.0.1:3001, weight: 3 }\n  c: { address: 127.0.0.1:3003 }\n",
        );
        let d = diff(&old, &new);
        assert_eq!(
            d,
            vec![
                "~ timeouts.server: 30s -> 1m".to_string(),
                "~ server a weight: 1 -> 3".into(),
                "+ server c 127.0.0.1:3003 (weight 1)".into(),
                "- server b (drains for 5m)".into(),
                "~ backend api servers: a, b -> a, c".into(),
                "! listen.http changed: takes effect on restart".into(),
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
