//! State that outlives a config snapshot: per-server health and admin state, and the
//! counters of listeners, backends and (backend, server) pairs.
//!
//! Everything here is keyed by name in the [`Registry`], so a reload that keeps a server
//! or backend keeps its state and counters; `runtime` asks the registry for the shared
//! `Arc`s when it builds a snapshot. Hot-path updates are relaxed atomics. This module
//! decides nothing about routing; `balance` and `health` read and write it.

mod counters;
mod ramp;
mod server;
mod verdict;

pub use counters::*;
pub use ramp::{FULL_SHARE, MIN_SHARE, Ramp};
pub use server::*;
pub use verdict::*;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

/// The outcome of the most recent reload, for the stats page.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub generation: u64,
    pub at: SystemTime,
    pub ok: bool,
    pub message: String,
}

/// All state that survives reloads, keyed by name.
#[derive(Debug)]
pub struct Registry {
    servers: Mutex<HashMap<String, Arc<ServerState>>>,
    pairs: Mutex<HashMap<(String, String), Arc<Traffic>>>,
    backends: Mutex<HashMap<String, Arc<BackendCounters>>>,
    /// Listener counters by listener name (`https`, `http`).
    frontends: Mutex<HashMap<String, Arc<FrontendCounters>>>,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    last_reload: Mutex<Option<ReloadStatus>>,
    pub started: Instant,
    pub started_wall: SystemTime,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            servers: Mutex::default(),
            pairs: Mutex::default(),
            backends: Mutex::default(),
            frontends: Mutex::default(),
            reloads_ok: Counter::default(),
            reloads_failed: Counter::default(),
            last_reload: Mutex::new(None),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// The state of server `name`, created on first use with `weight`.
    pub fn server(&self, name: &str, weight: u32) -> Arc<ServerState> {
        Arc::clone(
            lock(&self.servers)
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(ServerState::new(name, weight))),
        )
    }

    /// Keep `state` as its server's state if the registry has none under its name (it
    /// was forgotten after a drain, while a new snapshot that lists it was being built).
    pub fn adopt(&self, state: &Arc<ServerState>) {
        lock(&self.servers)
            .entry(state.name.clone())
            .or_insert_with(|| Arc::clone(state));
    }

    /// Every server known, including retired ones still draining.
    pub fn servers(&self) -> Vec<Arc<ServerState>> {
        lock(&self.servers).values().cloned().collect()
    }

    /// Forget servers that are retired and past their drain deadline.
    pub fn forget_expired(&self, now: Instant) -> Vec<Arc<ServerState>> {
        let mut servers = lock(&self.servers);
        let expired: Vec<String> = servers
            .iter()
            .filter(|(_, s)| s.retired().is_some_and(|r| r.until <= now))
            .map(|(n, _)| n.clone())
            .collect();
        expired.iter().filter_map(|n| servers.remove(n)).collect()
    }

    pub fn pair(&self, backend: &str, server: &str) -> Arc<Traffic> {
        Arc::clone(
            lock(&self.pairs)
                .entry((backend.to_string(), server.to_string()))
                .or_default(),
        )
    }

    pub fn backend(&self, name: &str) -> Arc<BackendCounters> {
        Arc::clone(lock(&self.backends).entry(name.to_string()).or_default())
    }

    pub fn frontend(&self, name: &str) -> Arc<FrontendCounters> {
        Arc::clone(lock(&self.frontends).entry(name.to_string()).or_default())
    }

    pub fn record_reload(&self, status: ReloadStatus) {
        if status.ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
        *lock(&self.last_reload) = Some(status);
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        lock(&self.last_reload).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keeps_state_by_name() {
        let r = Registry::default();
        let a = r.server("a", 1);
        a.set_admin(Admin::Drain, "x");
        assert!(Arc::ptr_eq(&a, &r.server("a", 5)));
        assert!(Arc::ptr_eq(&r.pair("api", "a"), &r.pair("api", "a")));
        assert!(!Arc::ptr_eq(&r.pair("api", "a"), &r.pair("ws", "a")));
    }
}
