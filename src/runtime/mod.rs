//! The running state of the proxy: an immutable [`Snapshot`] built from a checked
//! `Config`, and the [`Shared`] process state that holds the current snapshot.
//!
//! A request loads the snapshot once (`Shared::snapshot`) and uses it to the end, so a
//! reload never changes the rules under an in-flight request. Building a snapshot touches
//! neither the current one nor any server's state: `Shared::build` returns the snapshot
//! and the [`Transition`] installing it makes (a plain value, see `transition`), and
//! `Shared::install` applies both at the swap, with the sid TTL and the certificate files
//! that come with the config. State that must outlive a snapshot (health, counters, the
//! sid table) lives in `Shared` and the `Registry` and is attached to the new snapshot by
//! name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::balance::{LeastConn, RetryBudget, RoundRobin, name_id};
use crate::config::{self, Config};
use crate::rate_limit::{ClientLimiter, RateGate};
use crate::state::{BackendCounters, FrontendCounters, Health, Registry, ServerState, Traffic};
use crate::sticky::{cookie, sid::SidTable};
use crate::tls::{CertSet, CertStore};

mod transition;

pub use transition::{Move, Retirement, Transition};

/// A server as one backend of one snapshot sees it.
#[derive(Debug)]
pub struct Member {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// Health, admin state and load: shared with every backend listing the server.
    pub state: Arc<ServerState>,
    /// Counters of this (backend, server) pair.
    pub traffic: Arc<Traffic>,
    /// Stable id for consistent hashing.
    pub hash_id: u64,
    /// Opaque id in the sticky cookie.
    pub cookie_id: String,
    pub max_connections: Option<u32>,
    /// How long it ramps in this backend after coming back into service.
    pub slow_start: Duration,
    /// Set when a reload removed this server from the backend: it keeps its existing
    /// sessions until then and takes no new ones.
    pub retired_until: Option<Instant>,
    /// Discovered from DNS: it takes new sessions only once a check found it UP (a
    /// configured server takes them while its first check runs).
    pub discovered: bool,
}

impl Member {
    /// Below its `max_connections` (or unlimited).
    pub fn has_room(&self) -> bool {
        self.max_connections.is_none_or(|m| self.state.active() < u64::from(m))
    }

    /// May take a new session (a round-robin pick, a new sticky pin).
    pub fn accepts_new(&self) -> bool {
        self.retired_until.is_none()
            && self.state.accepts_new()
            && !(self.discovered && self.state.health() == Health::Checking)
    }

    /// May keep serving sessions already pinned to it.
    pub fn serves_existing(&self) -> bool {
        self.retired_until.is_none_or(|t| Instant::now() < t) && self.state.serves_existing()
    }

    /// Its slow-start share of its weight in this backend now (`state::FULL_SHARE`: none).
    pub fn ramp_share(&self) -> u32 {
        self.state.ramp.share_within(self.slow_start)
    }

    /// The weight new work sees here now, in thousandths (0 once retired).
    pub fn effective_weight(&self) -> u32 {
        if self.retired_until.is_some() {
            0
        } else {
            self.state.effective_weight(self.slow_start)
        }
    }
}

/// A backend of one snapshot: its config, members and balancing state.
#[derive(Debug)]
pub struct BackendRt {
    pub cfg: config::Backend,
    pub members: Vec<Member>,
    pub counters: Arc<BackendCounters>,
    pub rr: RoundRobin,
    pub least: LeastConn,
    pub retry_budget: RetryBudget,
    /// Requests waiting for a slot now.
    pub queued: crate::state::Gauge,
    /// The bucket of `cfg.new_sessions`, carried over reloads by backend name.
    pub new_sessions: Arc<RateGate>,
}

impl BackendRt {
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Index of the member whose state is `state` (same server), if listed here.
    pub fn member_of(&self, state: &Arc<ServerState>) -> Option<usize> {
        self.members.iter().position(|m| Arc::ptr_eq(&m.state, state))
    }

    /// Whether any member limits its connections (then slots must be waited for).
    pub fn limited(&self) -> bool {
        self.members.iter().any(|m| m.max_connections.is_some())
    }
}

/// Everything a request needs, frozen at one config generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub backends: Vec<BackendRt>,
    pub built_at: Instant,
}

impl Snapshot {
    pub fn backend(&self, name: &str) -> Option<&BackendRt> {
        self.backends.iter().find(|b| b.cfg.name == name)
    }
}

/// Process-wide state: the current snapshot and what outlives it.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    pub registry: Arc<Registry>,
    /// What DNS discovery found per backend; its lock is held while a config is built
    /// and installed (`discovery::Book`).
    pub discovered: crate::discovery::Book,
    pub sids: SidTable,
    /// Engine.IO handshakes per client address (`sticky.handshake_rate`).
    pub handshakes: ClientLimiter,
    /// The https listener's certificates (by SNI), swapped on reload, rotation and ACME
    /// renewal; also holds the ACME challenge answers.
    pub cert: Option<Arc<CertStore>>,
    pub https: Arc<FrontendCounters>,
    pub http: Arc<FrontendCounters>,
    /// Open once privileges are settled (`run_as`); accepted connections wait for it.
    pub privileges: Arc<crate::privilege::Gate>,
    generation: AtomicU64,
    /// The generation of the snapshot last installed, for services that act on a new
    /// config (check and discovery supervisors) instead of polling for one.
    installed: tokio::sync::watch::Sender<u64>,
    /// Requests in progress (tunnels included), for graceful stop.
    pub in_flight: crate::state::Gauge,
    /// Set by SIGTERM and by an upgrade's hand-over: refuse new connections, close
    /// kept-alive ones after their request.
    stopping: AtomicBool,
    /// Turns true with `stopping`, for connections that sleep until something happens.
    stop: tokio::sync::watch::Sender<bool>,
    /// Upgrades: accepting or not, handed over, processes draining before this one.
    pub lifecycle: crate::upgrade::Lifecycle,
}

impl Shared {
    /// Build the first snapshot from `config`.
    pub fn new(config: Config, cert: Option<Arc<CertStore>>) -> Arc<Shared> {
        let registry = Arc::new(Registry::default());
        let sids = SidTable::new(config.sticky.max_sids, config.sticky.sid_ttl);
        let now = Instant::now();
        transition::plan(None, &config, &registry, now).prepare(&registry);
        let snapshot = build(&config, &registry, 1, None, now);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            https: registry.frontend("https"),
            http: registry.frontend("http"),
            registry,
            discovered: Default::default(),
            sids,
            handshakes: ClientLimiter::new(),
            cert,
            privileges: Arc::new(crate::privilege::Gate::new(config.run_as.is_none())),
            generation: AtomicU64::new(1),
            installed: tokio::sync::watch::Sender::new(1),
            in_flight: Default::default(),
            stopping: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(false),
            lifecycle: Default::default(),
        })
    }

    pub fn begin_stop(&self) {
        self.stopping.store(true, Relaxed);
        self.stop.send_replace(true);
    }

    /// Completes once [`begin_stop`](Self::begin_stop) has been called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Open tunnels over all servers.
    pub fn open_tunnels(&self) -> usize {
        self.registry.servers().iter().map(|s| s.tunnels.len()).sum()
    }

    /// The snapshot to serve a request with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Changes each time a snapshot is installed (reload, DNS answer).
    pub fn installs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// Build a snapshot for `config` and plan what installing it changes; neither the
    /// current snapshot nor any server's state changes until [`install`](Self::install).
    pub fn build(&self, config: &Config) -> Staged {
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        let current = self.snapshot();
        let now = Instant::now();
        Staged {
            transition: transition::plan(Some(&current.config), config, &self.registry, now),
            snapshot: build(config, &self.registry, generation, Some(&current), now),
            certificates: None,
        }
    }

    /// Install what [`build`](Self::build) staged, in one step: weights and servers back
    /// from draining first, then the snapshot in one store, the sid TTL and the
    /// certificate files it comes with, then servers it no longer lists start draining
    /// and servers it moved start over. Returns the snapshot it replaced.
    pub fn install(&self, staged: Staged) -> Arc<Snapshot> {
        let Staged {
            snapshot,
            transition,
            certificates,
        } = staged;
        transition.prepare(&self.registry);
        let next = Arc::new(snapshot);
        let old = self.snapshot.swap(Arc::clone(&next));
        self.sids.set_ttl(next.config.sticky.sid_ttl);
        if let (Some(set), Some(store)) = (certificates, &self.cert) {
            store.store_files(set);
            fn acme(c: &Config) -> Option<&config::Acme> {
                c.tls.as_ref()?.acme.as_ref()
            }
            if acme(&old.config) != acme(&next.config)
                && let Some(state) = store.acme()
            {
                state.wake();
            }
        }
        for r in transition.retire {
            r.state.retire(r.address, r.until);
            tracing::info!(server = %r.state.name, drain_timeout = ?next.config.reload.drain_timeout, "server removed (reload or DNS answer): draining");
        }
        for m in transition.moves {
            self.moved(&m.state, m.from, m.to);
        }
        self.installed.send_replace(next.generation);
        old
    }

    /// A server now at another address is another process: its health is checked anew
    /// (the first check decides), it starts in slow start, and the sessions and tunnels of
    /// the old address end (clients reconnect; the new address does not know their
    /// sessions).
    fn moved(&self, state: &Arc<ServerState>, from: SocketAddr, to: SocketAddr) {
        state.set_health(Health::Checking, &format!("address changed from {from} to {to}"));
        state.ramp.start();
        let sessions = self.sids.sweep(|s| std::ptr::eq(s, Arc::as_ptr(state)));
        let tunnels = state.tunnels.close_all();
        tracing::info!(server = %state.name, %from, %to, sessions, tunnels, "server moved by reload: checking the new address");
    }
}

/// A snapshot built for a config, with what installing it changes beside the snapshot.
#[derive(Debug)]
pub struct Staged {
    pub snapshot: Snapshot,
    /// Server state changes, applied by `install`.
    pub transition: Transition,
    /// The https listener's certificate files loaded for this config (reload loads them
    /// before building; `None` keeps the ones in use).
    pub certificates: Option<CertSet>,
}

impl Staged {
    pub fn generation(&self) -> u64 {
        self.snapshot.generation
    }
}

/// The snapshot of `config`: members attached to the registry's state by name; members
/// `previous` had that this config removed from a backend stay until their drain ends.
fn build(config: &Config, registry: &Registry, generation: u64, previous: Option<&Snapshot>, now: Instant) -> Snapshot {
    let secret = config.sticky.secret.as_deref();
    let backends = config
        .backends
        .iter()
        .map(|b| {
            let mut members: Vec<Member> = b
                .servers
                .iter()
                .map(|&i| {
                    let s = &config.servers[i];
                    Member {
                        name: Arc::from(s.name.as_str()),
                        addr: s.address,
                        state: registry.server(&s.name, s.weight),
                        traffic: registry.pair(&b.name, &s.name),
                        hash_id: name_id(&s.name),
                        cookie_id: cookie::server_id(&s.name, secret),
                        max_connections: s.max_connections,
                        slow_start: config.slow_start_in(b, i),
                        retired_until: None,
                        discovered: s.discovered,
                    }
                })
                .collect();
            let old = previous.and_then(|p| p.backend(&b.name));
            // Members the reload removed from this backend keep their sessions a while.
            if let Some(old) = old {
                for m in &old.members {
                    if members.iter().any(|n| n.name == m.name) {
                        continue;
                    }
                    let until = m.retired_until.unwrap_or(now + config.reload.drain_timeout);
                    if until > now {
                        members.push(Member {
                            name: Arc::clone(&m.name),
                            addr: m.addr,
                            state: Arc::clone(&m.state),
                            traffic: Arc::clone(&m.traffic),
                            hash_id: m.hash_id,
                            cookie_id: m.cookie_id.clone(),
                            max_connections: m.max_connections,
                            slow_start: m.slow_start,
                            retired_until: Some(until),
                            discovered: m.discovered,
                        });
                    }
                }
            }
            BackendRt {
                cfg: b.clone(),
                members,
                counters: registry.backend(&b.name),
                rr: RoundRobin::default(),
                least: LeastConn::default(),
                retry_budget: RetryBudget::new(10),
                queued: Default::default(),
                new_sessions: old.map_or_else(Arc::default, |o| Arc::clone(&o.new_sessions)),
            }
        })
        .collect();
    Snapshot {
        generation,
        config: Arc::new(config.clone()),
        backends,
        built_at: Instant::now(),
    }
}

/// For unit tests elsewhere: a runtime with one backend `b` of `servers` servers
/// (`w1`… on 127.0.0.1:3001…), `attrs` added to the backend (`balance: sticky`, …).
#[cfg(test)]
pub fn one_backend(attrs: &str, servers: usize) -> (Arc<Shared>, Arc<Snapshot>) {
    let addrs: Vec<std::net::SocketAddr> = (0..servers).map(|i| ([127, 0, 0, 1], 3001 + i as u16).into()).collect();
    one_backend_at(attrs, &addrs)
}

/// For unit tests elsewhere: a runtime with one backend `b` whose servers `w1`… are at
/// `addrs` (test servers of their own), `attrs` added to the backend.
#[cfg(test)]
pub fn one_backend_at(attrs: &str, addrs: &[std::net::SocketAddr]) -> (Arc<Shared>, Arc<Snapshot>) {
    let names: Vec<String> = (1..=addrs.len()).map(|i| format!("w{i}")).collect();
    let text = format!(
        "listen: {{ http: 127.0.0.1:1 }}\nroutes: [{{ path_prefix: /, backend: b }}]\n\
         backends: {{ b: {{ {attrs}, servers: [{}] }} }}\nservers:\n{}",
        names.join(", "),
        names
            .iter()
            .zip(addrs)
            .map(|(s, addr)| format!("  {s}: {{ address: {addr} }}\n"))
            .collect::<String>()
    );
    let cfg = config::parse(std::path::Path::new("t.yaml"), &text).unwrap();
    let shared = Shared::new(cfg, None);
    let snapshot = shared.snapshot();
    (shared, snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(servers: &str) -> Config {
        let text = format!(
            "listen: {{ http: 127.0.0.1:1 }}\nroutes: [{{ path_prefix: /, backend: api }}]\n\
             backends: {{ api: {{ servers: [a] }} }}\nservers:\n{servers}"
        );
        crate::config::parse(Path::new("t.yaml"), &text).unwrap()
    }

    #[test]
    fn a_built_snapshot_changes_nothing_until_it_is_installed() {
        let shared = Shared::new(
            config(
                "  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002 }\n  c: { address: 127.0.0.1:3003 }\n",
            ),
            None,
        );
        let (a, b, c) = (
            shared.registry.server("a", 1),
            shared.registry.server("b", 1),
            shared.registry.server("c", 1),
        );
        c.set_health(Health::Up, "checks");
        shared.sids.learn("on-c", &c);

        let staged = shared.build(&config(
            "  a: { address: 127.0.0.1:3001, weight: 4 }\n  c: { address: 127.0.0.1:3009 }\n",
        ));
        assert_eq!(staged.generation(), 2);
        assert_eq!(shared.snapshot().generation, 1);
        assert_eq!(a.weight(), 1);
        assert!(!b.is_retired());
        assert_eq!(c.health(), Health::Up);
        assert!(shared.sids.lookup("on-c").is_some());

        let old = shared.install(staged);
        assert_eq!((old.generation, shared.snapshot().generation), (1, 2));
        assert_eq!(a.weight(), 4);
        assert!(b.is_retired(), "b drains");
        assert_eq!(c.health(), Health::Checking, "c's new address is checked anew");
        assert!(shared.sids.lookup("on-c").is_none(), "its sessions ended with the move");
    }

    #[test]
    fn a_staged_snapshot_never_installed_leaves_every_server_as_it_was() {
        let shared = Shared::new(config("  a: { address: 127.0.0.1:3001 }\n"), None);
        let a = shared.registry.server("a", 1);
        a.retire("127.0.0.1:3001".parse().unwrap(), Instant::now());
        a.set_weight(9);
        drop(shared.build(&config("  a: { address: 127.0.0.1:3001, weight: 2 }\n")));
        assert!(a.is_retired());
        assert_eq!(a.weight(), 9);
    }
}
