//! The [`Book`]: per discovered backend, the servers of its last good answer (what the
//! running config holds), a shrink waiting for confirmation, and the outcome of every
//! resolution counted for the stats. It outlives snapshots and reloads: a reload merges
//! the book's servers into the config it read ([`merge`]), so discovered servers are
//! neither dropped nor added again by a SIGHUP.
//!
//! The book's lock is also the lock under which a new config is built and installed
//! (reload and discovery both take it), so one never installs over the other's newer
//! config. Nothing here resolves or installs; it is state and a pure merge.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::answer::{Decision, Failure, Found, Pending};
use crate::config::{Config, Server};

/// Everything known about one discovered backend.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The servers in use, sorted by name.
    pub servers: Vec<Found>,
    pub pending: Option<Pending>,
    /// When the last resolution ended and what it gave.
    pub last: Option<(SystemTime, Outcome)>,
    /// Resolutions that gave servers.
    pub answers: u64,
    /// Resolutions that gave none, by [`Failure::kind`].
    pub failures: HashMap<&'static str, u64>,
    /// Answers that changed the servers.
    pub changes: u64,
    /// Answers held back until they repeat (large shrinks).
    pub held: u64,
    /// Servers left out of answers by `max_servers`.
    pub capped: u64,
}

/// What one resolution gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An answer of this many servers (after `max_servers`).
    Answer(usize),
    Failed(Failure),
}

impl Entry {
    /// Record `decision` (taken at `at`); returns whether the servers changed.
    pub fn record(&mut self, decision: Decision, answered: usize, capped: usize, at: SystemTime) -> bool {
        self.capped += capped as u64;
        let outcome = match &decision {
            Decision::Keep(f) => Outcome::Failed(f.clone()),
            _ => Outcome::Answer(answered),
        };
        self.last = Some((at, outcome));
        match decision {
            Decision::Keep(failure) => {
                *self.failures.entry(failure.kind()).or_default() += 1;
                false
            }
            Decision::Same => {
                self.answers += 1;
                self.pending = None;
                false
            }
            Decision::Hold(pending) => {
                self.answers += 1;
                self.held += 1;
                self.pending = Some(pending);
                false
            }
            Decision::Apply(servers) => {
                self.answers += 1;
                self.changes += 1;
                self.pending = None;
                self.servers = servers;
                true
            }
        }
    }

    /// Failed resolutions of every kind.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// The discovered backends by name.
#[derive(Debug, Default)]
pub struct Book {
    entries: Mutex<HashMap<String, Entry>>,
}

/// The book, locked: reading or changing it, and building and installing a config from
/// it, happen under this guard.
pub type BookGuard<'a> = MutexGuard<'a, HashMap<String, Entry>>;

impl Book {
    pub fn lock(&self) -> BookGuard<'_> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of one backend's entry (for the stats).
    pub fn entry(&self, backend: &str) -> Option<Entry> {
        self.lock().get(backend).cloned()
    }
}

/// `config` with its discovered servers replaced by the book's: every backend with
/// `discover` lists the servers of its entry (none before its first answer); a server
/// two backends discover is one server. Servers listed in the file are untouched.
pub fn merge(config: &Config, book: &HashMap<String, Entry>) -> Config {
    let mut merged = config.clone();
    strip_discovered(&mut merged);
    for b in 0..merged.backends.len() {
        let Some(d) = merged.backends[b].discover.clone() else {
            continue;
        };
        let Some(entry) = book.get(&merged.backends[b].name) else {
            continue;
        };
        for f in &entry.servers {
            let i = match merged.servers.iter().position(|s| s.name == f.name) {
                Some(i) => i,
                None => {
                    merged.servers.push(Server {
                        name: f.name.clone(),
                        address_text: f.addr.to_string(),
                        address: f.addr,
                        weight: f.weight,
                        max_connections: d.max_connections,
                        slow_start: None,
                        discovered: true,
                    });
                    merged.servers.len() - 1
                }
            };
            merged.backends[b].servers.push(i);
        }
    }
    merged
}

/// Remove discovered servers (and their places in backends), keeping listed ones.
fn strip_discovered(config: &mut Config) {
    if !config.servers.iter().any(|s| s.discovered) {
        return;
    }
    let mut new_index = Vec::with_capacity(config.servers.len());
    let mut kept = 0;
    for s in &config.servers {
        new_index.push((!s.discovered).then(|| {
            kept += 1;
            kept - 1
        }));
    }
    config.servers.retain(|s| !s.discovered);
    for b in &mut config.backends {
        b.servers = b.servers.iter().filter_map(|&i| new_index[i]).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::answer::from_addresses;
    use std::net::IpAddr;
    use std::path::Path;

    fn config() -> Config {
        let text = "listen: { http: 127.0.0.1:1 }\nroutes:\n  - { path_prefix: /socket.io/, backend: ws }\n  - { path_prefix: /, backend: api }\n\
                    backends:\n  api: { servers: [a] }\n  ws: { balance: sticky, discover: { dns: \"fleet.test:3000\", max_connections: 9 } }\n  \
                    rest: { discover: { dns: \"fleet.test:3000\" } }\nservers:\n  a: { address: 127.0.0.1:3001 }\n";
        crate::config::parse(Path::new("t.yaml"), text).unwrap()
    }

    fn entry(ns: &[u8]) -> Entry {
        Entry {
            servers: from_addresses(ns.iter().map(|&n| IpAddr::from([127, 0, 0, n])), 3000),
            ..Entry::default()
        }
    }

    fn members(c: &Config, backend: &str) -> Vec<String> {
        let b = c.backend(backend).unwrap();
        b.servers.iter().map(|&i| c.servers[i].name.clone()).collect()
    }

    #[test]
    fn discovered_servers_are_merged_in_and_replaced_on_the_next_merge() {
        let file = config();
        let mut book = HashMap::new();
        book.insert("ws".to_string(), entry(&[2, 3]));
        let merged = merge(&file, &book);
        assert_eq!(members(&merged, "ws"), ["127.0.0.2:3000", "127.0.0.3:3000"]);
        assert_eq!(members(&merged, "api"), ["a"]);
        assert!(members(&merged, "rest").is_empty(), "no answer yet");
        let s = merged.server("127.0.0.3:3000").unwrap();
        assert!(s.discovered && s.max_connections == Some(9) && s.weight == 1);
        assert_eq!(s.address.to_string(), "127.0.0.3:3000");

        // The next answer, merged into the running (already merged) config.
        book.insert("ws".to_string(), entry(&[3, 4]));
        book.insert("rest".to_string(), entry(&[4]));
        let next = merge(&merged, &book);
        assert_eq!(members(&next, "ws"), ["127.0.0.3:3000", "127.0.0.4:3000"]);
        assert_eq!(members(&next, "rest"), ["127.0.0.4:3000"]);
        assert_eq!(members(&next, "api"), ["a"]);
        assert_eq!(next.servers.len(), 3, "a, and one state per discovered server");
        assert!(next.server("127.0.0.2:3000").is_none());
        assert_eq!(next, merge(&file, &book), "a reload's merge gives the same config");
    }

    #[test]
    fn an_entry_records_outcomes_and_changes() {
        let mut e = Entry::default();
        let at = SystemTime::now();
        let three = entry(&[2, 3, 4]).servers;
        assert!(e.record(Decision::Apply(three.clone()), 3, 0, at));
        assert!(!e.record(Decision::Keep(Failure::Timeout), 0, 0, at));
        assert!(!e.record(Decision::Keep(Failure::NxDomain), 0, 0, at));
        assert!(!e.record(Decision::Same, 3, 1, at));
        assert_eq!(e.servers, three);
        assert_eq!((e.answers, e.failed(), e.changes, e.capped), (2, 2, 1, 1));
        assert_eq!(e.failures["timeout"], 1);
        assert_eq!(e.last.as_ref().unwrap().1, Outcome::Answer(3));
    }
}
