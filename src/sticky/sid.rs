//! The sid table: Engine.IO session id → the server that issued it.
//!
//! Learned from handshake answers, looked up on every Engine.IO request that carries a
//! `sid`, forgotten when a session ends (its tunnel closes, or the server says it does
//! not know it) or after an idle TTL. Memory is bounded: `max` entries in all, spread over
//! shards. Each shard orders its sids as a segmented LRU (`slru`): a sid is on probation
//! from its handshake until its second request, then protected (at most
//! [`PROTECTED_PERCENT`] of the shard). A full shard first drops its expired entries, then
//! the least recently used sid on probation, and only then a protected one; sids with an
//! open tunnel are never evicted. So a flood of handshakes nobody follows up cannot grow
//! the table nor push out sessions in use. Each entry counts as an open session on its
//! server (the load that bounded hashing balances).
//!
//! With `sticky.shared` the table also tells its [`SharedTable`] what it learns (and
//! refreshes that while a session is in use) and what it forgets, for the other edges;
//! entries the other edges learned come in through [`SidTable::adopt`]. Expiry and
//! eviction are local matters and are not told (Redis expires its copy by itself).
//!
//! During an upgrade the table goes to the new process whole ([`SidTable::export`],
//! [`SidTable::import`]), and while the old one drains, what it still learns and forgets
//! is told to the new one too ([`SidTable::set_successor`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwapOption;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::shared::{Change, SharedTable};
use super::slru::Slru;
use crate::state::{Counter, ServerState};

const SHARDS: usize = 16;

/// Share of a shard the protected segment (sessions seen twice or more) may fill; the
/// rest is always left to new sessions on probation.
pub const PROTECTED_PERCENT: usize = 80;

#[derive(Debug)]
struct Entry {
    server: Arc<ServerState>,
    /// Seconds since the table's origin when the sid was last seen.
    seen: u32,
    /// Open tunnels of this session: an entry with a tunnel never expires by TTL and is
    /// pinned (never evicted).
    tunnels: u16,
    /// When the shared table was last told (or told us) about this sid.
    shared_at: u32,
}

#[derive(Debug)]
struct Shard {
    entries: Slru<Entry>,
    /// When this shard last dropped its expired entries (seconds since origin).
    swept: u32,
}

#[derive(Debug, Default)]
pub struct SidCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub learned: Counter,
    pub expired: Counter,
    /// Dropped to make room (table full).
    pub evicted: Counter,
    pub forgotten: Counter,
}

#[derive(Debug)]
pub struct SidTable {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// Idle time after which a sid is forgotten, seconds (a reload may change it).
    ttl_secs: AtomicU64,
    origin: Instant,
    pub counters: SidCounters,
    /// The copy other edges see (`sticky.shared`); inert when not configured.
    pub shared: SharedTable,
    /// A successor process (an upgrade in progress): told every sid learned or forgotten.
    successor: ArcSwapOption<std::sync::mpsc::Sender<Change>>,
}

/// One sid as handed to a successor process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SidEntry {
    pub sid: String,
    /// The server's name.
    pub server: String,
    /// Seconds since the session was last seen.
    pub idle: u32,
}

impl SidTable {
    pub fn new(max: usize, ttl: Duration) -> SidTable {
        let per_shard = max.div_ceil(SHARDS).max(1);
        SidTable {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: Slru::new(per_shard * PROTECTED_PERCENT / 100),
                        swept: 0,
                    })
                })
                .collect(),
            per_shard,
            ttl_secs: AtomicU64::new(ttl.as_secs().max(1)),
            origin: Instant::now(),
            counters: SidCounters::default(),
            shared: SharedTable::default(),
            successor: ArcSwapOption::empty(),
        }
    }

    fn now(&self) -> u32 {
        self.origin.elapsed().as_secs() as u32
    }

    fn shard(&self, sid: &str) -> MutexGuard<'_, Shard> {
        let mut h: u32 = 0x811c_9dc5;
        for b in sid.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        self.shards[h as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, e: &Entry, now: u32) -> bool {
        e.tunnels == 0 && u64::from(now.saturating_sub(e.seen)) > self.ttl_secs.load(Relaxed)
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_secs.store(ttl.as_secs().max(1), Relaxed);
    }

    /// Remember that `server` issued `sid` (and tell the other edges).
    pub fn learn(&self, sid: &str, server: &Arc<ServerState>) {
        self.insert(sid, server, 0);
        self.counters.learned.inc();
        self.tell_learned(sid, server);
        self.tell_successor(|| Change::Learned {
            sid: sid.into(),
            server: Arc::from(server.name.as_str()),
        });
    }

    /// Tell every sid learned or forgotten from now on to `to` (a successor process);
    /// `None` stops it.
    pub fn set_successor(&self, to: Option<std::sync::mpsc::Sender<Change>>) {
        self.successor.store(to.map(Arc::new));
    }

    fn tell_successor(&self, change: impl FnOnce() -> Change) {
        if let Some(to) = self.successor.load().as_ref() {
            let _ = to.send(change());
        }
    }

    /// Every sid and its server's name, for a successor process (see the module docs).
    pub fn export(&self) -> Vec<SidEntry> {
        let now = self.now();
        let mut out = Vec::with_capacity(self.len());
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                shard
                    .entries
                    .iter()
                    .filter(|(_, e)| !self.expired(e, now))
                    .map(|(sid, e)| SidEntry {
                        sid: sid.to_string(),
                        server: e.server.name.clone(),
                        idle: now.saturating_sub(e.seen),
                    }),
            );
        }
        out
    }

    /// Remember a sid a predecessor process knew, idle for `idle` seconds (not counted
    /// as learned, not told to the other edges: the predecessor did that).
    pub fn import(&self, sid: &str, server: &Arc<ServerState>, idle: u32) {
        self.insert(sid, server, idle);
    }

    /// Forget `sid` without counting or telling anyone (a predecessor's session ended).
    pub fn discard(&self, sid: &str) {
        if let Some(e) = self.shard(sid).entries.remove(sid) {
            e.server.add_sessions(-1);
        }
    }

    /// Remember what another edge learned: `server` issued `sid` (not told back).
    pub fn adopt(&self, sid: &str, server: &Arc<ServerState>) {
        self.insert(sid, server, 0);
    }

    fn insert(&self, sid: &str, server: &Arc<ServerState>, idle: u32) {
        let now = self.now();
        let mut shard = self.shard(sid);
        if shard.entries.len() >= self.per_shard && !shard.entries.contains(sid) {
            self.make_room(&mut shard, now);
        }
        let entry = Entry {
            server: Arc::clone(server),
            seen: now.saturating_sub(idle),
            tunnels: 0,
            shared_at: now,
        };
        server.add_sessions(1);
        if let Some(old) = shard.entries.insert(sid, entry) {
            old.server.add_sessions(-1);
        }
    }

    fn tell_learned(&self, sid: &str, server: &ServerState) {
        if self.shared.configured() {
            self.shared.tell(Change::Learned {
                sid: sid.into(),
                server: Arc::from(server.name.as_str()),
            });
        }
    }

    /// Whether `sid` is here and not expired (not a use: no counters, no refresh).
    pub fn knows(&self, sid: &str) -> bool {
        let now = self.now();
        self.shard(sid).entries.get(sid).is_some_and(|e| !self.expired(e, now))
    }

    /// Free one slot in a full shard: drop expired entries (at most once a second, so a
    /// flood does not rescan the shard per insert), else evict the least recently used
    /// sid on probation (or, if none, in the protected segment); never one with a tunnel.
    fn make_room(&self, shard: &mut Shard, now: u32) {
        if shard.swept != now {
            shard.swept = now;
            let before = shard.entries.len();
            shard.entries.retain(|e| {
                let keep = !self.expired(e, now);
                if !keep {
                    e.server.add_sessions(-1);
                }
                keep
            });
            self.counters.expired.add((before - shard.entries.len()) as u64);
            if shard.entries.len() < self.per_shard {
                return;
            }
        }
        if let Some(e) = shard.entries.evict() {
            e.server.add_sessions(-1);
            self.counters.evicted.inc();
        }
    }

    /// The server that issued `sid`, if known and not expired; refreshes its idle time
    /// and, being a use of the session, protects it from eviction by new sessions.
    /// The shared copy of a session in use is refreshed every half TTL.
    pub fn lookup(&self, sid: &str) -> Option<Arc<ServerState>> {
        let now = self.now();
        let refresh_after = (self.ttl_secs.load(Relaxed) / 2).max(1);
        let shared = self.shared.configured();
        let mut shard = self.shard(sid);
        let found = shard.entries.hit(sid, |e| {
            if self.expired(e, now) {
                return None;
            }
            e.seen = now;
            let refresh = shared && u64::from(now.saturating_sub(e.shared_at)) >= refresh_after;
            if refresh {
                e.shared_at = now;
            }
            Some((Arc::clone(&e.server), refresh))
        });
        drop(shard);
        match &found {
            Some((server, refresh)) => {
                self.counters.hits.inc();
                if *refresh {
                    self.tell_learned(sid, server);
                }
            }
            None => self.counters.misses.inc(),
        }
        found.map(|(server, _)| server)
    }

    /// A tunnel of session `sid` opened: it stays remembered while the tunnel is open.
    pub fn tunnel_opened(&self, sid: &str) {
        if let Some(e) = self.shard(sid).entries.pin(sid) {
            e.tunnels = e.tunnels.saturating_add(1);
        }
    }

    /// The session ended (its tunnel closed, or its server disowned it).
    pub fn forget(&self, sid: &str) {
        let removed = self.shard(sid).entries.remove(sid);
        if let Some(e) = removed {
            e.server.add_sessions(-1);
            self.counters.forgotten.inc();
            self.shared.tell(Change::Forgotten { sid: sid.into() });
            self.tell_successor(|| Change::Forgotten { sid: sid.into() });
        }
    }

    /// Drop idle entries and entries of servers no one routes to any more.
    pub fn sweep(&self, gone: impl Fn(&ServerState) -> bool) -> usize {
        let now = self.now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.entries.retain(|e| {
                let keep = !self.expired(e, now) && !gone(&e.server);
                if !keep {
                    e.server.add_sessions(-1);
                    removed += 1;
                }
                keep
            });
        }
        self.counters.expired.add(removed as u64);
        removed
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> Arc<ServerState> {
        Arc::new(ServerState::new(name, 1))
    }

    #[test]
    fn learns_looks_up_and_forgets() {
        let t = SidTable::new(1000, Duration::from_secs(60));
        let a = server("a");
        t.learn("s1", &a);
        assert_eq!(a.sessions(), 1);
        assert!(Arc::ptr_eq(&t.lookup("s1").unwrap(), &a));
        assert!(t.lookup("s2").is_none());
        assert_eq!((t.counters.hits.get(), t.counters.misses.get()), (1, 1));
        t.forget("s1");
        assert!(t.lookup("s1").is_none());
        assert_eq!(a.sessions(), 0);
    }

    #[test]
    fn the_table_crosses_to_a_successor_and_later_changes_follow() {
        let old = SidTable::new(1000, Duration::from_secs(60));
        let a = server("a");
        old.learn("before", &a);
        let (tx, rx) = std::sync::mpsc::channel();
        old.set_successor(Some(tx));
        let entries = old.export();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].sid.as_str(), entries[0].server.as_str()), ("before", "a"));
        old.learn("during", &a);
        old.forget("before");
        let told: Vec<Change> = rx.try_iter().collect();
        assert_eq!(
            told,
            vec![
                Change::Learned {
                    sid: "during".into(),
                    server: Arc::from("a")
                },
                Change::Forgotten { sid: "before".into() },
            ]
        );
        let new = SidTable::new(1000, Duration::from_secs(60));
        let a2 = server("a");
        new.import("before", &a2, entries[0].idle);
        assert!(new.knows("before"));
        assert_eq!(new.counters.learned.get(), 0, "carried, not learned");
        new.discard("before");
        assert!(!new.knows("before"));
        assert_eq!((a2.sessions(), new.counters.forgotten.get()), (0, 0));
    }

    #[test]
    fn stays_bounded_under_a_handshake_flood() {
        let t = SidTable::new(1000, Duration::from_secs(3600));
        let a = server("a");
        for i in 0..100_000 {
            t.learn(&format!("flood{i}"), &a);
        }
        assert!(t.len() <= t.capacity(), "{} > {}", t.len(), t.capacity());
        assert!(t.capacity() < 1100);
        assert_eq!(a.sessions() as usize, t.len(), "session counts follow the table");
        assert!(t.counters.evicted.get() >= 98_000);
    }

    #[test]
    fn sessions_in_use_survive_a_handshake_flood() {
        // The finding: 3,000 handshakes evicted live sessions. A session seen twice is
        // protected; handshakes nobody follows up only evict each other.
        let t = SidTable::new(128, Duration::from_secs(3600));
        let (a, b) = (server("a"), server("b"));
        let live: Vec<String> = (0..8).map(|i| format!("live{i}")).collect();
        for sid in &live {
            t.learn(sid, &a);
            assert!(t.lookup(sid).is_some(), "the session's second request");
        }
        for i in 0..3000 {
            t.learn(&format!("flood{i}"), &b);
        }
        for sid in &live {
            assert!(Arc::ptr_eq(&t.lookup(sid).expect(sid), &a), "{sid}");
        }
        assert!(t.len() <= t.capacity());
        assert_eq!(a.sessions(), 8);
        assert_eq!((a.sessions() + b.sessions()) as usize, t.len());
    }

    #[test]
    fn the_protected_share_leaves_room_for_new_sessions() {
        // Every sid used twice: the protected segment fills to its bound, and a new
        // handshake still gets a slot and lives until its own second request.
        let t = SidTable::new(16 * 10, Duration::from_secs(3600));
        let a = server("a");
        for i in 0..1000 {
            let sid = format!("used{i}");
            t.learn(&sid, &a);
            assert!(t.lookup(&sid).is_some());
        }
        t.learn("fresh", &a);
        assert!(t.lookup("fresh").is_some());
        assert!(t.len() <= t.capacity());
        assert_eq!(a.sessions() as usize, t.len());
    }

    #[test]
    fn tunnel_sessions_are_not_evicted_or_expired() {
        let t = SidTable::new(16, Duration::from_secs(3600));
        let a = server("a");
        t.learn("keep", &a);
        t.tunnel_opened("keep");
        for i in 0..1000 {
            t.learn(&format!("x{i}"), &a);
        }
        assert!(t.lookup("keep").is_some());
    }

    #[test]
    fn learned_and_forgotten_sids_are_told_to_the_shared_table_and_adopted_ones_are_not() {
        use crate::sticky::shared::Change;
        let t = SidTable::new(100, Duration::from_secs(60));
        let mut told = t.shared.take_inbox().expect("inbox");
        let a = server("a");
        t.learn("local", &a);
        assert!(told.try_recv().is_err(), "not configured: nothing told");
        t.shared.pretend_up(crate::sticky::shared::tests::settings());
        t.learn("s1", &a);
        assert_eq!(
            told.try_recv().ok(),
            Some(Change::Learned {
                sid: "s1".into(),
                server: Arc::from("a")
            })
        );
        t.adopt("s2", &a);
        assert!(told.try_recv().is_err(), "another edge's sid is not told back");
        assert!(t.knows("s2") && !t.knows("s3"));
        assert_eq!(
            t.counters.hits.get() + t.counters.misses.get(),
            0,
            "knows is not a lookup"
        );
        assert!(Arc::ptr_eq(&t.lookup("s2").unwrap(), &a));
        assert!(told.try_recv().is_err(), "fresh: no refresh");
        t.forget("s2");
        assert_eq!(told.try_recv().ok(), Some(Change::Forgotten { sid: "s2".into() }));
        t.forget("never");
        assert!(told.try_recv().is_err(), "only what was known is forgotten");
        assert_eq!(a.sessions(), 2, "adopted sessions count as load too");
    }

    #[test]
    fn a_session_in_use_is_told_again_every_half_ttl() {
        let t = SidTable::new(100, Duration::from_secs(2));
        let mut told = t.shared.take_inbox().expect("inbox");
        t.shared.pretend_up(crate::sticky::shared::tests::settings());
        let a = server("a");
        t.adopt("s", &a);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(t.lookup("s").is_some());
        assert!(matches!(
            told.try_recv(),
            Ok(crate::sticky::shared::Change::Learned { .. })
        ));
        assert!(t.lookup("s").is_some());
        assert!(told.try_recv().is_err(), "once per half TTL");
    }

    #[test]
    fn sweep_drops_sessions_of_gone_servers() {
        let t = SidTable::new(100, Duration::from_secs(3600));
        let (a, b) = (server("a"), server("b"));
        t.learn("1", &a);
        t.learn("2", &b);
        assert_eq!(t.sweep(|s| s.name == "b"), 1);
        assert!(t.lookup("2").is_none() && t.lookup("1").is_some());
        assert_eq!(b.sessions(), 0);
    }
}
