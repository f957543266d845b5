//! What an upgrade carries from the old process to the new one, and the rules for taking
//! it over: per server (by name) the admin state, the health verdict and a weight set at
//! runtime; the Engine.IO sid table; the TLS session-ticket keys; the processes still
//! draining from earlier upgrades. Counters are not carried: they restart at zero in the
//! new process (Prometheus sees a counter reset, which `rate()` handles).
//!
//! The rules ([`carry`]) are a plain function: an admin state (MAINT, DRAIN) always
//! stays, it is the operator's; a health verdict stays only if the server is still at the
//! same address (else it is another process and is checked anew); a weight set at
//! runtime stays unless the new config changed that server's weight (the file wins, as
//! on reload). A server the new config does not name is left behind. Servers are matched
//! by name, so discovered servers (named by address) are carried as well: the servers of
//! each discovered backend's last good DNS answer come along and are merged into the new
//! process's config before it serves, so it neither waits for its first resolution nor
//! serves a discovered backend empty.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::wire::DrainStatus;
use crate::config;
use crate::discovery::answer::Found;
use crate::discovery::merge;
use crate::runtime::Shared;
use crate::state::{Admin, Health, Restored};
use crate::sticky::sid::SidEntry;
use crate::tls::TicketKey;

/// Everything the old process hands over.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Carried {
    pub pid: u32,
    pub servers: Vec<CarriedServer>,
    pub sids: Vec<SidEntry>,
    pub tickets: Vec<TicketKey>,
    /// Processes still draining from earlier upgrades, as last reported.
    pub draining: Vec<DrainStatus>,
    /// Per backend with `discover`, the servers of its last good answer.
    #[serde(default)]
    pub discovered: Vec<CarriedDiscovered>,
}

/// A discovered backend's servers, as its last good DNS answer gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedDiscovered {
    pub backend: String,
    /// (name, address, weight) of each server.
    pub servers: Vec<(String, SocketAddr, u32)>,
}

/// One server as the old process knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedServer {
    pub name: String,
    pub address: SocketAddr,
    /// `CHECKING`, `UP` or `DOWN`.
    pub health: String,
    /// `READY`, `DRAIN` or `MAINT`.
    pub admin: String,
    pub weight: u32,
    /// The weight its config gave it (differs from `weight` when set at runtime).
    pub config_weight: u32,
    pub reason: String,
    /// Seconds since its status last changed.
    pub since_secs: u64,
    /// How long its slow start has run, if it is in one (milliseconds).
    #[serde(default)]
    pub ramp_ms: Option<u64>,
}

/// What the new process takes over of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carry {
    pub health: Option<Health>,
    pub admin: Option<Admin>,
    pub weight: Option<u32>,
}

fn parse_health(s: &str) -> Option<Health> {
    [Health::Checking, Health::Up, Health::Down]
        .into_iter()
        .find(|h| h.as_str() == s)
}

/// The rules of the module docs: what of `old` the new process keeps, given the new
/// config's entry for that server (`None`: it is gone).
pub fn carry(old: &CarriedServer, new: Option<&config::Server>) -> Carry {
    let Some(new) = new else {
        return Carry {
            health: None,
            admin: None,
            weight: None,
        };
    };
    let health = parse_health(&old.health)
        .filter(|h| *h != Health::Checking)
        .filter(|_| old.address == new.address);
    let admin = Admin::parse(&old.admin).filter(|a| *a != Admin::Ready);
    let set_at_runtime = old.weight != old.config_weight;
    let weight = (set_at_runtime && new.weight == old.config_weight).then_some(old.weight);
    Carry { health, admin, weight }
}

/// What the old process knows now (its listeners' sockets go separately).
pub fn collect(shared: &Shared) -> Carried {
    let snapshot = shared.snapshot();
    let servers = snapshot
        .config
        .servers
        .iter()
        .map(|s| {
            let state = shared.registry.server(&s.name, s.weight);
            let detail = state.detail();
            CarriedServer {
                name: s.name.clone(),
                address: s.address,
                health: state.health().as_str().into(),
                admin: state.admin().as_str().into(),
                weight: state.weight(),
                config_weight: s.weight,
                reason: detail.reason.clone(),
                since_secs: detail.since.elapsed().as_secs(),
                ramp_ms: state
                    .ramp
                    .active()
                    .then(|| state.ramp.elapsed())
                    .flatten()
                    .map(|e| e.as_millis() as u64),
            }
        })
        .collect();
    Carried {
        pid: std::process::id(),
        servers,
        sids: shared.sids.export(),
        tickets: shared.cert.as_ref().map(|c| c.tickets.export()).unwrap_or_default(),
        draining: shared.lifecycle.draining(),
        discovered: shared
            .discovered
            .lock()
            .iter()
            .filter(|(_, entry)| !entry.servers.is_empty())
            .map(|(backend, entry)| CarriedDiscovered {
                backend: backend.clone(),
                servers: entry
                    .servers
                    .iter()
                    .map(|f| (f.name.clone(), f.addr, f.weight))
                    .collect(),
            })
            .collect(),
    }
}

/// Put the carried discovered servers in the book, for backends the new config still
/// discovers, and install a config with them merged in. Returns how many servers.
fn adopt_discovered(shared: &Shared, carried: &[CarriedDiscovered]) -> usize {
    let mut book = shared.discovered.lock();
    let current = shared.snapshot();
    let mut adopted = 0;
    for d in carried {
        let discovers = current
            .config
            .backends
            .iter()
            .any(|b| b.name == d.backend && b.discover.is_some());
        if !discovers {
            continue;
        }
        let entry = book.entry(d.backend.clone()).or_default();
        if !entry.servers.is_empty() {
            continue;
        }
        let mut servers: Vec<Found> = d
            .servers
            .iter()
            .map(|(name, addr, weight)| Found {
                name: name.clone(),
                addr: *addr,
                weight: *weight,
            })
            .collect();
        servers.sort();
        adopted += servers.len();
        entry.servers = servers;
    }
    if adopted > 0 {
        shared.install(shared.build(&merge(&current.config, &book)));
    }
    adopted
}

/// What [`apply`] took over.
#[derive(Debug, Default)]
pub struct Applied {
    /// Servers whose health verdict was carried (they need no first check to be ready).
    pub verdicts: HashSet<String>,
    pub admin_states: usize,
    pub weights: usize,
    pub sids: usize,
    pub tickets: usize,
    /// Discovered servers taken over (from the old process's last DNS answers).
    pub discovered: usize,
}

/// Take over `carried` into the new process's state (before it serves anything).
pub fn apply(shared: &Shared, carried: &Carried) -> Applied {
    let mut applied = Applied {
        discovered: adopt_discovered(shared, &carried.discovered),
        ..Applied::default()
    };
    let snapshot = shared.snapshot();
    let config = &snapshot.config;
    for old in &carried.servers {
        let new = config.server(&old.name);
        let c = carry(old, new);
        let Some(new) = new else { continue };
        if c.health.is_some() {
            applied.verdicts.insert(old.name.clone());
        }
        applied.admin_states += usize::from(c.admin.is_some());
        applied.weights += usize::from(c.weight.is_some());
        let since = Instant::now()
            .checked_sub(Duration::from_secs(old.since_secs))
            .unwrap_or_else(Instant::now);
        let state = shared.registry.server(&new.name, new.weight);
        state.restore(Restored {
            health: c.health,
            admin: c.admin,
            weight: c.weight,
            reason: format!("{} (carried over from pid {})", old.reason, carried.pid),
            since,
        });
        if c.health.is_some() {
            // In service in the old process: no slow start here, or the rest of its own.
            state.ramp.resume(old.ramp_ms.map(Duration::from_millis));
        }
    }
    for e in &carried.sids {
        if let Some(s) = config.server(&e.server) {
            shared
                .sids
                .import(&e.sid, &shared.registry.server(&s.name, s.weight), e.idle);
            applied.sids += 1;
        }
    }
    if let Some(cert) = &shared.cert {
        applied.tickets = cert.tickets.import(&carried.tickets);
    }
    for d in &carried.draining {
        shared.lifecycle.report(d.clone());
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn server(weight: u32, address: &str) -> config::Server {
        config::Server {
            name: "a".into(),
            address_text: address.into(),
            address: address.parse().unwrap(),
            weight,
            max_connections: None,
            discovered: false,
            slow_start: None,
        }
    }

    fn old(health: &str, admin: &str, weight: u32, config_weight: u32) -> CarriedServer {
        CarriedServer {
            name: "a".into(),
            address: "127.0.0.1:3001".parse().unwrap(),
            health: health.into(),
            admin: admin.into(),
            weight,
            config_weight,
            reason: "r".into(),
            since_secs: 5,
            ramp_ms: None,
        }
    }

    #[test]
    fn admin_states_stay_verdicts_only_at_the_same_address() {
        let same = server(1, "127.0.0.1:3001");
        let moved = server(1, "127.0.0.1:3009");
        let c = carry(&old("DOWN", "MAINT", 1, 1), Some(&same));
        assert_eq!(
            (c.health, c.admin, c.weight),
            (Some(Health::Down), Some(Admin::Maint), None)
        );
        let c = carry(&old("DOWN", "DRAIN", 1, 1), Some(&moved));
        assert_eq!((c.health, c.admin), (None, Some(Admin::Drain)), "moved: checked anew");
        let c = carry(&old("CHECKING", "READY", 1, 1), Some(&same));
        assert_eq!((c.health, c.admin), (None, None), "nothing known, nothing set");
        let c = carry(&old("UP", "MAINT", 1, 1), None);
        assert_eq!(
            (c.health, c.admin, c.weight),
            (None, None, None),
            "a server the config dropped"
        );
    }

    #[test]
    fn a_runtime_weight_stays_unless_the_file_changed_it() {
        let c = carry(&old("UP", "READY", 9, 2), Some(&server(2, "127.0.0.1:3001")));
        assert_eq!(c.weight, Some(9), "set at runtime, file unchanged");
        let c = carry(&old("UP", "READY", 9, 2), Some(&server(5, "127.0.0.1:3001")));
        assert_eq!(c.weight, None, "the file changed it: the file wins");
        let c = carry(&old("UP", "READY", 2, 2), Some(&server(5, "127.0.0.1:3001")));
        assert_eq!(c.weight, None, "never set at runtime");
    }

    #[test]
    fn collect_then_apply_carries_state_sids_and_tickets_by_name() {
        let text = "listen: { http: 127.0.0.1:1 }\nroutes: [{ path_prefix: /, backend: b }]\n\
                    backends: { b: { servers: [a, b] } }\n\
                    servers: { a: { address: 127.0.0.1:3001 }, b: { address: 127.0.0.1:3002, weight: 2 } }\n";
        let cfg = crate::config::parse(Path::new("t.yaml"), text).unwrap();
        let old = Shared::new(cfg.clone(), None);
        let (a, b) = (old.registry.server("a", 1), old.registry.server("b", 2));
        a.set_health(Health::Down, "3 failed checks");
        b.set_health(Health::Up, "1 good check");
        b.set_admin(Admin::Maint, "admin: maint by alice");
        b.set_weight(7);
        old.sids.learn("s-on-b", &b);
        let carried = collect(&old);
        let json = serde_json::to_string(&carried).unwrap();
        let carried: Carried = serde_json::from_str(&json).unwrap();

        let new = Shared::new(cfg, None);
        let applied = apply(&new, &carried);
        let (a2, b2) = (new.registry.server("a", 1), new.registry.server("b", 2));
        assert_eq!(a2.health(), Health::Down);
        assert_eq!((b2.health(), b2.admin(), b2.weight()), (Health::Up, Admin::Maint, 7));
        assert_eq!(a2.up_down_total.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(
            b2.detail()
                .reason
                .starts_with("admin: maint by alice (carried over from pid")
        );
        assert!(Arc::ptr_eq(&new.sids.lookup("s-on-b").unwrap(), &b2));
        assert_eq!(applied.verdicts.len(), 2);
        assert_eq!((applied.admin_states, applied.weights, applied.sids), (1, 1, 1));
    }

    #[test]
    fn discovered_servers_and_their_state_are_carried_before_the_first_answer() {
        let text = "listen: { http: 127.0.0.1:1 }\nroutes: [{ path_prefix: /, backend: b }]\n\
                    backends: { b: { discover: { dns: fleet.test:3000 } } }\n";
        let cfg = crate::config::parse(Path::new("t.yaml"), text).unwrap();
        let old = Shared::new(cfg.clone(), None);
        let found = Found {
            name: "127.0.0.9:3000".into(),
            addr: "127.0.0.9:3000".parse().unwrap(),
            weight: 1,
        };
        crate::upkeep::discovery::apply(&old, "b", &cfg.backends[0].discover.clone().unwrap(), Ok(vec![found]));
        old.registry
            .server("127.0.0.9:3000", 1)
            .set_admin(Admin::Maint, "admin: maint by alice");
        let carried: Carried = serde_json::from_str(&serde_json::to_string(&collect(&old)).unwrap()).unwrap();
        assert_eq!(carried.discovered.len(), 1);

        let new = Shared::new(cfg, None);
        assert!(
            new.snapshot().config.server("127.0.0.9:3000").is_none(),
            "no answer yet"
        );
        let applied = apply(&new, &carried);
        assert_eq!((applied.discovered, applied.admin_states), (1, 1));
        assert!(
            new.snapshot().config.server("127.0.0.9:3000").is_some(),
            "served before the first answer"
        );
        assert_eq!(new.registry.server("127.0.0.9:3000", 1).admin(), Admin::Maint);
    }

    #[test]
    fn a_server_up_in_the_old_process_takes_no_slow_start_or_only_the_rest_of_its_own() {
        let text = "listen: { http: 127.0.0.1:1 }\nroutes: [{ path_prefix: /, backend: b }]\n\
                    backends: { b: { servers: [a, b], slow_start: 60s } }\n\
                    servers: { a: { address: 127.0.0.1:3001 }, b: { address: 127.0.0.1:3002 } }\n";
        let cfg = crate::config::parse(Path::new("t.yaml"), text).unwrap();
        let old = Shared::new(cfg.clone(), None);
        let (a, b) = (old.registry.server("a", 1), old.registry.server("b", 1));
        a.set_health(Health::Up, "1 good check");
        b.set_health(Health::Up, "1 good check");
        b.ramp.set_window(Duration::from_secs(60));
        b.ramp.resume(Some(Duration::from_secs(30)));
        assert!(b.ramp.active());
        let carried: Carried = serde_json::from_str(&serde_json::to_string(&collect(&old)).unwrap()).unwrap();

        let new = Shared::new(cfg, None);
        let (a2, b2) = (new.registry.server("a", 1), new.registry.server("b", 1));
        for s in [&a2, &b2] {
            s.ramp.set_window(Duration::from_secs(60));
            s.ramp.start();
        }
        apply(&new, &carried);
        assert!(!a2.ramp.active(), "UP without a ramp there: full weight here");
        let left = b2.ramp.elapsed().expect("b goes on ramping");
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(40)).contains(&left),
            "{left:?}"
        );
    }

    use std::sync::Arc;
}
