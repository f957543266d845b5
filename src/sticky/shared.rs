//! The sid table shared by several edgepins (`sticky.shared`): sid → server *name* in
//! Redis, so an edge that never saw a session's handshake still routes its requests to
//! the server that issued it.
//!
//! The local [`SidTable`](super::sid::SidTable) stays the first and only word on the
//! request path. What it learns from a handshake answer, and forgets when a session ends,
//! it tells this table ([`SharedTable::tell`]), which queues the change for the
//! background link (`shared_link`) and returns at once: an answer never waits for Redis.
//! A request whose sid the local table does not know asks Redis through [`resolve`]
//! (both engines call it right before choosing a server), waiting at most
//! `sticky.shared.timeout`; an answer is cached in the local table, and the usual rule
//! applies. While Redis is down or slow nothing waits longer than that timeout, the
//! requests go on by cookie or hash, and each such case is counted as a fallback.
//!
//! This module does not connect, reconnect or write to Redis (that is `shared_link`'s
//! job); it uses the connection the link publishes, for lookups only.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use tokio::sync::mpsc;

use crate::config::SharedSids;
use crate::state::Counter;

/// Changes waiting to be written; more are dropped (and counted as fallbacks).
const OUTBOX_CAPACITY: usize = 8192;
/// Longest sid looked up (Engine.IO's are 20 characters); longer ones are not asked about.
const MAX_SID_LEN: usize = 128;

/// What the local table tells the other edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `sid` was issued by the server named `server` (or is still in use: a refresh).
    Learned { sid: Box<str>, server: Arc<str> },
    /// The session ended.
    Forgotten { sid: Box<str> },
}

/// The connection to the shared table's Redis (cheap to clone: a handle).
#[derive(Clone)]
pub(crate) enum Conn {
    One(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::One(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// Counters of the shared table (all zero when it is not configured).
#[derive(Debug, Default)]
pub struct SharedCounters {
    /// Lookups Redis answered with the sid's server.
    pub hits: Counter,
    /// Lookups Redis answered without a server (unknown sid, or a server this backend
    /// does not list).
    pub misses: Counter,
    /// Commands that failed (lookups, writes, connection attempts).
    pub errors: Counter,
    /// Lookups not answered within `sticky.shared.timeout`.
    pub timeouts: Counter,
    /// Sessions routed without the shared table because Redis could not be used: a
    /// lookup without an answer (down, error, timeout), or a learned sid that could not
    /// be written (down, queue full, write failed). Such requests go by cookie or hash.
    pub fallbacks: Counter,
    /// Changes written to Redis.
    pub writes: Counter,
}

/// The shared half of the sid table: its settings, the link's connection, the queue of
/// changes to write, and the counters.
pub struct SharedTable {
    /// The settings in force (`None`: not configured); set by the link.
    settings: ArcSwapOption<SharedSids>,
    conn: RwLock<Option<Conn>>,
    up: AtomicBool,
    outbox: mpsc::Sender<Change>,
    /// Taken once by the link.
    inbox: Mutex<Option<mpsc::Receiver<Change>>>,
    pub counters: SharedCounters,
}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTable")
            .field("settings", &self.settings.load())
            .field("up", &self.is_up())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Default for SharedTable {
    fn default() -> Self {
        let (outbox, inbox) = mpsc::channel(OUTBOX_CAPACITY);
        SharedTable {
            settings: ArcSwapOption::empty(),
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            outbox,
            inbox: Mutex::new(Some(inbox)),
            counters: SharedCounters::default(),
        }
    }
}

impl SharedTable {
    /// The settings in force, if the table is configured.
    pub fn settings(&self) -> Option<Arc<SharedSids>> {
        self.settings.load_full()
    }

    pub fn configured(&self) -> bool {
        self.settings.load().is_some()
    }

    /// Connected to Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Queue a change for the other edges; never waits. A learned sid that cannot be
    /// queued (Redis down, queue full) is a session the other edges will not know.
    pub fn tell(&self, change: Change) {
        if !self.configured() {
            return;
        }
        let learned = matches!(change, Change::Learned { .. });
        let lost = !self.is_up() || self.outbox.try_send(change).is_err();
        if lost && learned {
            self.counters.fallbacks.inc();
        }
    }

    pub(crate) fn configure(&self, settings: Option<SharedSids>) {
        if self.settings.load().as_deref() != settings.as_ref() {
            self.settings.store(settings.map(Arc::new));
        }
    }

    pub(crate) fn set_conn(&self, conn: Option<Conn>) {
        self.up.store(conn.is_some(), Relaxed);
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = conn;
    }

    pub(crate) fn connection(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn take_inbox(&self) -> Option<mpsc::Receiver<Change>> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Connected, as far as `tell` is concerned (tests without Redis).
    #[cfg(test)]
    pub(crate) fn pretend_up(&self, settings: SharedSids) {
        self.configure(Some(settings));
        self.up.store(true, Relaxed);
    }
}

/// The Redis key of `sid`.
pub(crate) fn key(settings: &SharedSids, sid: &str) -> String {
    format!("{}{sid}", settings.key_prefix)
}

/// A sid worth asking about: short and printable (a forged one costs at most a lookup).
pub fn plausible(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= MAX_SID_LEN && sid.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::SharedRedis;

    pub(crate) fn settings() -> SharedSids {
        SharedSids {
            redis: SharedRedis::One("redis://127.0.0.1:1".into()),
            timeout: Duration::from_millis(50),
            key_prefix: "p:".into(),
        }
    }

    #[test]
    fn nothing_is_queued_unless_configured_and_up_and_a_lost_write_is_a_fallback() {
        let t = SharedTable::default();
        let mut inbox = t.take_inbox().expect("inbox");
        let learned = || Change::Learned {
            sid: "s".into(),
            server: Arc::from("w1"),
        };
        t.tell(learned());
        assert!(inbox.try_recv().is_err());
        assert_eq!(t.counters.fallbacks.get(), 0, "not configured: nothing to count");
        t.configure(Some(settings()));
        t.tell(learned());
        t.tell(Change::Forgotten { sid: "s".into() });
        assert!(inbox.try_recv().is_err(), "down: dropped");
        assert_eq!(t.counters.fallbacks.get(), 1, "only the learned sid is a fallback");
        t.pretend_up(settings());
        t.tell(learned());
        assert_eq!(inbox.try_recv().ok(), Some(learned()));
        assert!(t.take_inbox().is_none(), "one link per process");
        assert_eq!(key(&settings(), "abc"), "p:abc");
    }

    #[test]
    fn only_plausible_sids_are_asked_about() {
        assert!(plausible("Xy-_12AbCdEfGhIjKlMn"));
        assert!(!plausible(""));
        assert!(!plausible("a b"));
        assert!(!plausible(&"x".repeat(MAX_SID_LEN + 1)));
    }
}
