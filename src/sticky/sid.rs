//! The sid table: Engine.IO session id → the server that issued it.
//!
//! Learned from handshake answers, looked up on every Engine.IO request that carries a
//! `sid`, forgotten when a session ends (its tunnel closes, or the server says it does
//! not know it) or after an idle TTL. Memory is bounded: `max` entries in all, spread over
//! shards; a full shard first drops its expired entries, then an arbitrary idle one, so a
//! flood of handshakes cannot grow it. Each entry counts as an open session on its server
//! (the load that bounded hashing balances).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::state::{Counter, ServerState};

const SHARDS: usize = 16;

#[derive(Debug)]
struct Entry {
    server: Arc<ServerState>,
    /// Seconds since the table's origin when the sid was last seen.
    seen: u32,
    /// Open tunnels of this session: an entry with a tunnel never expires by TTL.
    tunnels: u16,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<str>, Entry>,
    /// When this shard last dropped its expired entries (seconds since origin).
    swept: u32,
}

/// Lookup outcomes, for the stats page.
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
}

impl SidTable {
    pub fn new(max: usize, ttl: Duration) -> SidTable {
        SidTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            ttl_secs: AtomicU64::new(ttl.as_secs().max(1)),
            origin: Instant::now(),
            counters: SidCounters::default(),
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

    /// Remember that `server` issued `sid`.
    pub fn learn(&self, sid: &str, server: &Arc<ServerState>) {
        let now = self.now();
        let mut shard = self.shard(sid);
        if !shard.map.contains_key(sid) && shard.map.len() >= self.per_shard {
            self.make_room(&mut shard, now);
        }
        let entry = Entry {
            server: Arc::clone(server),
            seen: now,
            tunnels: 0,
        };
        server.add_sessions(1);
        if let Some(old) = shard.map.insert(sid.into(), entry) {
            old.server.add_sessions(-1);
        }
        self.counters.learned.inc();
    }

    /// Free one slot in a full shard: drop expired entries (at most once a second, so a
    /// flood does not rescan the shard per insert), else evict one entry without a tunnel.
    /// The victim is the first in hash order: effectively random, and O(1).
    fn make_room(&self, shard: &mut Shard, now: u32) {
        if shard.swept != now {
            shard.swept = now;
            let before = shard.map.len();
            shard.map.retain(|_, e| {
                let keep = !self.expired(e, now);
                if !keep {
                    e.server.add_sessions(-1);
                }
                keep
            });
            self.counters.expired.add((before - shard.map.len()) as u64);
            if shard.map.len() < self.per_shard {
                return;
            }
        }
        let victim = shard.map.iter().find(|(_, e)| e.tunnels == 0).map(|(k, _)| k.clone());
        if let Some(e) = victim.and_then(|k| shard.map.remove(&k)) {
            e.server.add_sessions(-1);
            self.counters.evicted.inc();
        }
    }

    /// The server that issued `sid`, if known and not expired; refreshes its idle time.
    pub fn lookup(&self, sid: &str) -> Option<Arc<ServerState>> {
        let now = self.now();
        let mut shard = self.shard(sid);
        let found = match shard.map.get_mut(sid) {
            Some(e) if !self.expired(e, now) => {
                e.seen = now;
                Some(Arc::clone(&e.server))
            }
            _ => None,
        };
        drop(shard);
        match &found {
            Some(_) => self.counters.hits.inc(),
            None => self.counters.misses.inc(),
        }
        found
    }

    /// A tunnel of session `sid` opened: it stays remembered while the tunnel is open.
    pub fn tunnel_opened(&self, sid: &str) {
        if let Some(e) = self.shard(sid).map.get_mut(sid) {
            e.tunnels = e.tunnels.saturating_add(1);
        }
    }

    /// The session ended (its tunnel closed, or its server disowned it).
    pub fn forget(&self, sid: &str) {
        if let Some(e) = self.shard(sid).map.remove(sid) {
            e.server.add_sessions(-1);
            self.counters.forgotten.inc();
        }
    }

    /// Drop idle entries and entries of servers no one routes to any more.
    pub fn sweep(&self, gone: impl Fn(&ServerState) -> bool) -> usize {
        let now = self.now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.map.retain(|_, e| {
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
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
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
