//! DNS discovery as a service: one loop per backend of the current config that has
//! `discover`, started, restarted and stopped as reloads change them. Each loop asks DNS
//! (`discovery::resolve`), lets `discovery::answer::decide` judge the answer against the
//! book, and when the servers change builds a config with the new set merged in and
//! installs it the way a reload does: added servers are checked before they take new
//! sessions, removed ones drain for `reload.drain_timeout`.
//!
//! A failed answer never removes a server: the last good set stays, and the failure is
//! counted in the book and logged when the outcome changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinHandle;

use crate::config::Discover;
use crate::discovery::answer::decide;
use crate::discovery::{Decision, DnsResolver, Failure, Found, Outcome, merge};
use crate::runtime::Shared;

/// Runs one resolution loop per discovered backend.
pub struct Discovery {
    pub shared: Arc<Shared>,
}

struct Running {
    spec: Discover,
    task: JoinHandle<()>,
}

impl Discovery {
    /// Start loops for discovered backends without one (or whose `discover` changed), and
    /// stop those of backends that no longer discover (forgetting what they found).
    fn supervise(&self, running: &mut HashMap<String, Running>) {
        let snapshot = self.shared.snapshot();
        for b in &snapshot.config.backends {
            let Some(spec) = &b.discover else { continue };
            let current = running
                .get(&b.name)
                .is_some_and(|r| r.spec == *spec && !r.task.is_finished());
            if !current {
                let task = tokio::spawn(resolve_loop(Arc::clone(&self.shared), b.name.clone(), spec.clone()));
                let spec = spec.clone();
                if let Some(old) = running.insert(b.name.clone(), Running { spec, task }) {
                    old.task.abort();
                }
            }
        }
        running.retain(|name, r| {
            let keep = snapshot.config.backend(name).is_some_and(|b| b.discover.is_some());
            if !keep {
                r.task.abort();
                self.shared.discovered.lock().remove(name);
            }
            keep
        });
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut running = HashMap::new();
        super::supervise::on_installs(&self.shared, &mut shutdown, || self.supervise(&mut running)).await;
        for r in running.values() {
            r.task.abort();
        }
    }
}

/// Resolve `backend`'s name at its interval (sooner when the TTL says so) until stopped.
async fn resolve_loop(shared: Arc<Shared>, backend: String, spec: Discover) {
    let resolver = DnsResolver::new(&spec);
    loop {
        let (answer, next) = match &resolver {
            Ok(r) => {
                let resolution = r.resolve().await;
                let next = resolution.next_in(&spec);
                (resolution.answer, next)
            }
            Err(e) => (Err(e.clone()), spec.interval),
        };
        apply(&shared, &backend, &spec, answer);
        tokio::time::sleep(next).await;
    }
}

/// Judge one answer for `backend` and, when its servers change, build and install a
/// config with the new set. Returns whether they changed.
pub fn apply(shared: &Shared, backend: &str, spec: &Discover, answer: Result<Vec<Found>, Failure>) -> bool {
    let mut book = shared.discovered.lock();
    let entry = book.entry(backend.to_string()).or_default();
    let before = entry.servers.clone();
    let previous = entry.last.as_ref().map(|(_, o)| o.clone());
    let mut capped = 0;
    let answered = answer.as_ref().map_or(0, Vec::len);
    let decision = decide(spec, &entry.servers, entry.pending.as_ref(), answer, &mut capped);
    let dns = spec.describe();
    match &decision {
        Decision::Keep(failure) => {
            let outcome = Some(Outcome::Failed(failure.clone()));
            if previous != outcome {
                tracing::warn!(backend, %dns, error = %failure, servers = before.len(), "DNS discovery got no servers: keeping the last good ones");
            } else {
                tracing::debug!(backend, %dns, error = %failure, "DNS discovery still failing");
            }
        }
        Decision::Hold(p) => {
            tracing::warn!(backend, %dns, servers = before.len(), answer = p.servers.len(), seen = p.seen, confirm_shrink = spec.confirm_shrink,
                "DNS answer removes more than half the servers: applied only once it repeats");
        }
        Decision::Same | Decision::Apply(_) => {}
    }
    if capped > 0 {
        tracing::warn!(backend, %dns, answer = answered, max_servers = spec.max_servers, "DNS answer names more servers than discover.max_servers: the rest are left out");
    }
    let changed = entry.record(decision, answered - capped, capped, SystemTime::now());
    if !changed {
        return false;
    }
    let after = entry.servers.clone();
    let added: Vec<&str> = names_not_in(&after, &before);
    let removed: Vec<&str> = names_not_in(&before, &after);
    let current = shared.snapshot();
    let staged = shared.build(&merge(&current.config, &book));
    let generation = staged.generation();
    shared.install(staged);
    drop(book);
    tracing::info!(backend, %dns, generation, servers = after.len(), added = ?added, removed = ?removed, "discovered servers changed");
    true
}

fn names_not_in<'a>(these: &'a [Found], those: &[Found]) -> Vec<&'a str> {
    these
        .iter()
        .filter(|f| {
            !those
                .iter()
                .any(|t| t.name == f.name && t.addr == f.addr && t.weight == f.weight)
        })
        .map(|f| f.name.as_str())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::discovery::answer::from_addresses;
    use crate::state::Health;
    use std::net::IpAddr;
    use std::path::Path;

    /// A runtime whose one backend `ws` discovers `fleet.test:3000`.
    pub(crate) fn shared() -> Arc<Shared> {
        let text = "listen: { http: 127.0.0.1:1, stats: 127.0.0.1:2 }\nstats: { hosts: [stats.test] }\n\
                    routes:\n  - { path_prefix: /, backend: ws }\n\
                    reload: { drain_timeout: 30s }\n\
                    backends:\n  ws: { balance: sticky, discover: { dns: \"fleet.test:3000\", confirm_shrink: 2 } }\n";
        Shared::new(crate::config::parse(Path::new("t.yaml"), text).unwrap(), None)
    }

    /// Servers 127.0.0.N:3000.
    pub(crate) fn found(ns: &[u8]) -> Vec<Found> {
        from_addresses(ns.iter().map(|&n| IpAddr::from([127, 0, 0, n])), 3000)
    }

    fn members(shared: &Shared) -> Vec<(String, bool)> {
        let s = shared.snapshot();
        s.backends[0]
            .members
            .iter()
            .map(|m| (m.name.to_string(), m.retired_until.is_some()))
            .collect()
    }

    #[test]
    fn answers_add_and_retire_servers_and_failures_keep_them() {
        let shared = shared();
        let spec = shared.snapshot().config.backends[0].discover.clone().unwrap();
        assert!(members(&shared).is_empty());
        assert!(apply(&shared, "ws", &spec, Ok(found(&[2, 3, 4]))));
        assert_eq!(shared.snapshot().generation, 2);
        assert_eq!(members(&shared).len(), 3);
        let m = &shared.snapshot().backends[0].members[0];
        assert!(
            m.discovered && !m.accepts_new(),
            "a discovered server waits for its first check"
        );
        m.state.set_health(Health::Up, "checks");
        assert!(m.accepts_new());

        assert!(!apply(&shared, "ws", &spec, Err(Failure::NxDomain)));
        assert!(!apply(&shared, "ws", &spec, Ok(Vec::new())));
        assert!(!apply(&shared, "ws", &spec, Ok(found(&[4, 3, 2]))));
        assert_eq!(shared.snapshot().generation, 2, "nothing was installed");

        // 3 → 1 is held once, then applies; the two removed drain.
        assert!(!apply(&shared, "ws", &spec, Ok(found(&[2]))));
        assert!(apply(&shared, "ws", &spec, Ok(found(&[2]))));
        assert_eq!(
            members(&shared),
            [
                ("127.0.0.2:3000".to_string(), false),
                ("127.0.0.3:3000".to_string(), true),
                ("127.0.0.4:3000".to_string(), true)
            ]
        );
        assert!(shared.registry.server("127.0.0.3:3000", 1).is_retired());
        let e = shared.discovered.entry("ws").unwrap();
        assert_eq!((e.answers, e.failed(), e.changes, e.held), (4, 2, 2, 1));
    }
}
