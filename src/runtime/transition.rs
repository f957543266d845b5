//! What installing a new snapshot changes in the state that outlives snapshots: weights
//! the config changed, slow-start windows, servers it adds (they start in slow start;
//! discovered ones at their first UP),
//! servers it lists again after a reload removed them, servers it no longer lists (they
//! drain until a deadline), servers it moved to another address.
//!
//! [`plan`] decides it from the old and the new config while the snapshot is built, and
//! changes nothing: the [`Transition`] is a plain value. `Shared::install` applies it at
//! the swap, so a snapshot that is built but never installed leaves every server as it
//! was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::state::{Health, Registry, ServerState};

/// A server the new config no longer lists: it keeps its sessions until `until`.
#[derive(Debug)]
pub struct Retirement {
    pub state: Arc<ServerState>,
    /// The address it drains at (the old config's).
    pub address: SocketAddr,
    pub until: Instant,
}

/// A server the new config lists at another address.
#[derive(Debug)]
pub struct Move {
    pub state: Arc<ServerState>,
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// The changes to server state that installing one snapshot makes.
#[derive(Debug, Default)]
pub struct Transition {
    /// New weights: the config's, where it changed them (an admin's weight otherwise
    /// lasts until then) or for every server on the first snapshot.
    pub weights: Vec<(Arc<ServerState>, u32)>,
    /// How long each listed server's slow start lasts (the longest of its backends').
    pub windows: Vec<(Arc<ServerState>, Duration)>,
    /// Servers a reload adds (not on the first snapshot): they take new work from the
    /// swap on, so their slow start begins then.
    pub added: Vec<Arc<ServerState>>,
    /// Discovered servers a DNS answer (or a reload) adds: they take new work only once
    /// a check finds them UP, so their slow start begins at that UP.
    pub added_unchecked: Vec<Arc<ServerState>>,
    /// Servers a reload had removed and this config lists again: no longer draining.
    pub unretire: Vec<Arc<ServerState>>,
    /// Servers this config removed.
    pub retire: Vec<Retirement>,
    /// Servers this config moved.
    pub moves: Vec<Move>,
}

/// What installing `new` over `old` (`None`: the first snapshot) changes, with drains
/// ending `new.reload.drain_timeout` after `now`. It looks states up in `registry` (a new
/// server's state is created there) and changes none.
pub fn plan(old: Option<&Config>, new: &Config, registry: &Registry, now: Instant) -> Transition {
    let mut t = Transition::default();
    for (i, s) in new.servers.iter().enumerate() {
        let state = registry.server(&s.name, s.weight);
        let previous = old.and_then(|o| o.server(&s.name));
        if previous.is_none_or(|p| p.weight != s.weight) {
            t.weights.push((Arc::clone(&state), s.weight));
        }
        t.windows.push((Arc::clone(&state), new.slow_start_of(i)));
        if state.is_retired() {
            t.unretire.push(Arc::clone(&state));
        } else if old.is_some() && previous.is_none() {
            if s.discovered {
                t.added_unchecked.push(Arc::clone(&state));
            } else {
                t.added.push(Arc::clone(&state));
            }
        }
        if let Some(p) = previous
            && p.address != s.address
        {
            t.moves.push(Move {
                state,
                from: p.address,
                to: s.address,
            });
        }
    }
    let until = now + new.reload.drain_timeout;
    for s in old.map_or(&[][..], |o| &o.servers[..]) {
        if new.server(&s.name).is_some() {
            continue;
        }
        let state = registry.server(&s.name, s.weight);
        if !state.is_retired() {
            t.retire.push(Retirement {
                state,
                address: s.address,
                until,
            });
        }
    }
    t
}

impl Transition {
    /// The part that must hold before the swap, as the new snapshot's members expect it:
    /// weights and slow-start windows, servers back from draining (kept in `registry` even
    /// if housekeeping forgot them meanwhile, so their checks and the stats find the same
    /// state; they start a slow start), and the slow start of added servers.
    pub fn prepare(&self, registry: &Registry) {
        for (state, window) in &self.windows {
            state.ramp.set_window(*window);
        }
        for (state, weight) in &self.weights {
            state.set_weight(*weight);
        }
        for state in &self.unretire {
            state.unretire();
            registry.adopt(state);
        }
        for state in &self.added {
            state.ramp.start();
        }
        for state in &self.added_unchecked {
            if state.health() == Health::Checking {
                state.ramp.start_when_up();
            } else if state.accepts_new() {
                // Known from before (its state outlived a removal): in service now.
                state.ramp.start();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn config(servers: &str) -> Config {
        let text = format!(
            "listen: {{ http: 127.0.0.1:1 }}\nroutes: [{{ path_prefix: /, backend: api }}]\n\
             reload: {{ drain_timeout: 30s }}\nbackends: {{ api: {{ servers: [a] }} }}\nservers:\n{servers}"
        );
        crate::config::parse(Path::new("t.yaml"), &text).unwrap()
    }

    fn names<'a>(states: impl IntoIterator<Item = &'a Arc<ServerState>>) -> Vec<&'a str> {
        states.into_iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_first_snapshot_sets_every_weight_and_nothing_else() {
        let registry = Registry::default();
        let c = config("  a: { address: 127.0.0.1:3001, weight: 2 }\n  b: { address: 127.0.0.1:3002 }\n");
        let t = plan(None, &c, &registry, Instant::now());
        let weights: Vec<_> = t.weights.iter().map(|(s, w)| (s.name.as_str(), *w)).collect();
        assert_eq!(weights, [("a", 2), ("b", 1)]);
        assert!(t.unretire.is_empty() && t.retire.is_empty() && t.moves.is_empty());
        assert!(t.added.is_empty(), "servers present at start do not ramp");
        t.prepare(&registry);
        assert!(!registry.server("a", 1).ramp.active());
    }

    #[test]
    fn a_reload_plans_weights_removals_and_moves_and_changes_nothing() {
        let registry = Registry::default();
        let old = config(
            "  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002 }\n  c: { address: 127.0.0.1:3003 }\n",
        );
        plan(None, &old, &registry, Instant::now()).prepare(&registry);
        let a = registry.server("a", 1);
        a.set_weight(7); // an admin's change
        let new = config(
            "  a: { address: 127.0.0.1:3001, weight: 3 }\n  c: { address: 127.0.0.1:3009 }\n  d: { address: 127.0.0.1:3004, slow_start: 10s }\n",
        );
        let now = Instant::now();
        let t = plan(Some(&old), &new, &registry, now);
        assert_eq!(names(&t.added), ["d"], "a server the reload adds");

        let weights: Vec<_> = t.weights.iter().map(|(s, w)| (s.name.as_str(), *w)).collect();
        assert_eq!(
            weights,
            [("a", 3), ("d", 1)],
            "where the config changed the weight, and new servers"
        );
        assert_eq!(names(t.retire.iter().map(|r| &r.state)), ["b"]);
        assert_eq!(t.retire[0].address.to_string(), "127.0.0.1:3002");
        assert_eq!(t.retire[0].until, now + Duration::from_secs(30));
        let moves: Vec<_> = t
            .moves
            .iter()
            .map(|m| (m.state.name.as_str(), m.from.port(), m.to.port()))
            .collect();
        assert_eq!(moves, [("c", 3003, 3009)]);
        assert!(t.unretire.is_empty());

        assert_eq!(a.weight(), 7, "planning changes nothing");
        assert!(!registry.server("b", 1).is_retired());
        let d = registry.server("d", 1);
        assert!(!d.ramp.active(), "planning changes nothing");
        t.prepare(&registry);
        assert!(d.ramp.active(), "an added server starts in slow start");
        assert!(!a.ramp.active(), "a kept one does not");
    }

    #[test]
    fn a_discovered_server_ramps_from_its_first_up_not_from_the_answer() {
        let registry = Registry::default();
        let old = config("  a: { address: 127.0.0.1:3001 }\n");
        plan(None, &old, &registry, Instant::now()).prepare(&registry);
        let mut new = old.clone();
        new.servers.push(crate::config::Server {
            name: "127.0.0.1:3002".into(),
            address_text: "127.0.0.1:3002".into(),
            address: "127.0.0.1:3002".parse().unwrap(),
            weight: 1,
            max_connections: None,
            slow_start: None,
            discovered: true,
        });
        new.backends[0].servers.push(1);
        let t = plan(Some(&old), &new, &registry, Instant::now());
        assert!(t.added.is_empty());
        assert_eq!(names(&t.added_unchecked), ["127.0.0.1:3002"]);
        t.prepare(&registry);
        let found = registry.server("127.0.0.1:3002", 1);
        assert_eq!(found.ramp.window(), Duration::from_secs(10), "the backend's window");
        assert!(!found.ramp.active(), "not while its first check runs");
        found.set_health(Health::Up, "first check");
        assert!(found.ramp.active(), "from its first UP");
    }

    #[test]
    fn a_server_listed_again_is_unretired_and_stays_registered() {
        let registry = Registry::default();
        let old = config("  a: { address: 127.0.0.1:3001 }\n");
        let b = registry.server("b", 1);
        let now = Instant::now();
        b.retire("127.0.0.1:3002".parse().unwrap(), now);
        let back = config("  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002, slow_start: 10s }\n");
        let t = plan(Some(&old), &back, &registry, now);
        assert_eq!(names(&t.unretire), ["b"]);
        assert!(t.retire.is_empty(), "a retired server is not retired again");

        // Housekeeping forgets b (its drain ended) between the build and the swap.
        assert_eq!(registry.forget_expired(now).len(), 1);
        t.prepare(&registry);
        assert!(!b.is_retired());
        assert!(b.ramp.active(), "back from draining: slow start");
        assert!(
            Arc::ptr_eq(&registry.server("b", 1), &b),
            "the snapshot's state is the registry's"
        );
    }
}
