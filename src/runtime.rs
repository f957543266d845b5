//! The running state of the proxy: an immutable [`Snapshot`] built from a checked
//! `Config`, and the [`Shared`] process state that holds the current snapshot.
//!
//! A request loads the snapshot once (`Shared::snapshot`) and uses it to the end, so a
//! reload never changes the rules under an in-flight request. Building a snapshot does not
//! touch the current one; `reload` swaps it in with one store. State that must outlive a
//! snapshot (health, counters, the sid table) lives in `Shared` and the `Registry` and is
//! attached to the new snapshot by name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::balance::{LeastConn, RetryBudget, RoundRobin, name_id};
use crate::config::{self, Config};
use crate::rate_limit::ClientLimiter;
use crate::state::{BackendCounters, FrontendCounters, Health, Registry, ServerState, Traffic};
use crate::sticky::{cookie, sid::SidTable};
use crate::tls::CertStore;

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
    /// Set when a reload removed this server from the backend: it keeps its existing
    /// sessions until then and takes no new ones.
    pub retired_until: Option<Instant>,
}

impl Member {
    /// Below its `max_connections` (or unlimited).
    pub fn has_room(&self) -> bool {
        self.max_connections.is_none_or(|m| self.state.active() < u64::from(m))
    }

    /// May take a new session (a round-robin pick, a new sticky pin).
    pub fn accepts_new(&self) -> bool {
        self.retired_until.is_none() && self.state.accepts_new()
    }

    /// May keep serving sessions already pinned to it.
    pub fn serves_existing(&self) -> bool {
        self.retired_until.is_none_or(|t| Instant::now() < t) && self.state.serves_existing()
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
    /// Requests in progress (tunnels included), for graceful stop.
    pub in_flight: crate::state::Gauge,
    /// Set by SIGTERM: refuse new connections, close kept-alive ones after their request.
    stopping: AtomicBool,
    /// Idle keep-alive connections to servers (HTTP/1 engine).
    pub pool: crate::proxy::Pool,
}

impl Shared {
    /// Build the first snapshot from `config`.
    pub fn new(config: Config, cert: Option<Arc<CertStore>>) -> Arc<Shared> {
        let registry = Arc::new(Registry::default());
        let sids = SidTable::new(config.sticky.max_sids, config.sticky.sid_ttl);
        let snapshot = build(&config, &registry, 1, None);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            https: registry.frontend("https"),
            http: registry.frontend("http"),
            registry,
            sids,
            handshakes: ClientLimiter::new(),
            cert,
            privileges: Arc::new(crate::privilege::Gate::new(config.run_as.is_none())),
            generation: AtomicU64::new(1),
            in_flight: Default::default(),
            stopping: AtomicBool::new(false),
            pool: crate::proxy::Pool::default(),
        })
    }

    pub fn begin_stop(&self) {
        self.stopping.store(true, Relaxed);
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

    /// Build a snapshot for `config` (does not install it).
    pub fn build(&self, config: &Config) -> Snapshot {
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        build(config, &self.registry, generation, Some(&*self.snapshot()))
    }

    /// Install a built snapshot; servers it no longer lists start draining, and servers
    /// it moved to another address start over.
    pub fn install(&self, next: Snapshot) -> Arc<Snapshot> {
        let next = Arc::new(next);
        let old = self.snapshot.swap(Arc::clone(&next));
        let deadline = Instant::now() + next.config.reload.drain_timeout;
        for server in &old.config.servers {
            let state = self.registry.server(&server.name, server.weight);
            match next.config.server(&server.name) {
                None if !state.is_retired() => {
                    state.retire(server.address, deadline);
                    tracing::info!(server = %server.name, drain_timeout = ?next.config.reload.drain_timeout, "server removed by reload: draining");
                }
                Some(moved) if moved.address != server.address => self.moved(&state, server.address, moved.address),
                _ => {}
            }
        }
        old
    }

    /// A server now at another address is another process: its health is checked anew
    /// (the first check decides), and the sessions and tunnels of the old address end
    /// (clients reconnect; the new address does not know their sessions).
    fn moved(&self, state: &Arc<ServerState>, from: SocketAddr, to: SocketAddr) {
        state.set_health(Health::Checking, &format!("address changed from {from} to {to}"));
        let sessions = self.sids.sweep(|s| std::ptr::eq(s, Arc::as_ptr(state)));
        let tunnels = state.tunnels.close_all();
        self.pool.forget(from);
        tracing::info!(server = %state.name, %from, %to, sessions, tunnels, "server moved by reload: checking the new address");
    }
}

fn build(config: &Config, registry: &Registry, generation: u64, previous: Option<&Snapshot>) -> Snapshot {
    let secret = config.sticky.secret.as_deref();
    // A server's weight is the config's on each reload; admin changes last until then.
    for s in &config.servers {
        let state = registry.server(&s.name, s.weight);
        let changed = previous.is_none_or(|p| p.config.server(&s.name).is_none_or(|old| old.weight != s.weight));
        if changed {
            state.set_weight(s.weight);
        }
        state.unretire();
    }
    let now = Instant::now();
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
                        retired_until: None,
                    }
                })
                .collect();
            // Members the reload removed from this backend keep their sessions a while.
            if let Some(old) = previous.and_then(|p| p.backend(&b.name)) {
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
                            retired_until: Some(until),
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
