//! The worker's link to Redis — one Redis (`single`: a publishing and a subscribing
//! connection, the classic adapter's channels) or a Redis Cluster (`cluster`: sharded
//! pub/sub, the sharded adapter's channels) — kept alive by background tasks that reconnect
//! and re-subscribe by themselves, so rooms span the workers again after an outage or a
//! failover with no restart.
//!
//! While Redis is down the link says so (`is_up`, the `redis_up` gauge) and drops what it
//! is asked to publish — the adapter still delivers to this worker's own sockets; Redis
//! pub/sub keeps nothing for absent subscribers anyway, so nothing is replayed later.
//! Publishing never waits: messages go through a bounded queue to a publisher task that
//! sends them in order, pipelined, and never sends one twice. The link knows channels and
//! bytes only; what the messages mean is `wire`'s and the adapter's business (it decodes
//! responses only, to hand them to the request that waits for them).

mod cluster;
mod single;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::metrics::AdapterMetrics;
use super::wire::{self, Arrival, Channels, Dialect, Response};

/// Connect and command timeout; a Redis slower than this counts as down.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages waiting to be published; more are dropped (and counted).
const OUTBOX_CAPACITY: usize = 8192;
/// Repeated trouble with Redis is logged at WARN at most this often (DEBUG between).
const WARN_EVERY: Duration = Duration::from_secs(30);
/// Most messages sent in one pipeline.
const BATCH: usize = 256;

/// Which Redis the rooms live on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: `redis://host:port[/db]` (the classic adapter's protocol).
    Url(String),
    /// A Redis Cluster, by seed nodes (the sharded adapter's protocol).
    Cluster(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid Redis URL {url:?}: {source}")]
    Url { url: String, source: redis::RedisError },
    #[error("a Redis Cluster needs at least one seed node")]
    NoSeeds,
    #[error("Redis is down")]
    Down,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("only {got} of {expected} servers answered in time")]
    Incomplete { got: usize, expected: usize },
    #[error("cannot be sent to other servers: {0}")]
    Unrelayable(String),
}

impl From<LinkError> for socketioxide_core::adapter::errors::AdapterError {
    fn from(e: LinkError) -> Self {
        Self(Box::new(e))
    }
}

/// Where the link hands what arrives for a namespace (the adapter).
pub trait Inbox: Send + Sync {
    /// Classic: a message on a broadcast channel; `room` is set on a single-room channel.
    fn on_broadcast(&self, room: Option<&str>, payload: &[u8]);
    /// Classic: a message on the namespace's request channel.
    fn on_request(&self, payload: &[u8]);
    /// Sharded: a message on the main channel or a room's (`room`).
    fn on_message(&self, room: Option<&str>, payload: &[u8]);
}

struct Namespace {
    path: String,
    channels: Channels,
    inbox: Weak<dyn Inbox>,
}

struct Outgoing {
    channel: String,
    payload: Vec<u8>,
}

enum Control {
    Subscribe(Channels),
    /// A publish failed on the connection of this session.
    Broken {
        session: u64,
        reason: String,
    },
}

// One per worker: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(single::Single),
    Cluster(cluster::Cluster),
}

pub struct RedisLink {
    backend: Backend,
    dialect: Dialect,
    /// This server's id on the wire (Node's `uid2(6)`; 16 characters when sharded, as
    /// the sharded adapter's), to skip its own messages.
    uid: String,
    prefix: String,
    namespaces: RwLock<Vec<Namespace>>,
    /// Messages can be published.
    connected: AtomicBool,
    /// Connected and subscribed: messages cross to other servers.
    up: AtomicBool,
    /// Counts connections, so a failure reported late cannot end a newer one.
    session: AtomicU64,
    outbox: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    /// Requests waiting for responses, by request id.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<Response>>>,
    stop: watch::Sender<bool>,
    pub metrics: AdapterMetrics,
}

/// Whether to warn now (`always`, or none for WARN_EVERY); remembers when it did.
fn warn_due(last: &mut Option<Instant>, always: bool) -> bool {
    let due = always || last.is_none_or(|t| t.elapsed() >= WARN_EVERY);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// `url` with any password replaced, for messages.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl RedisLink {
    /// Check the target and start connecting in the background (a Redis that is down now
    /// is not an error: the link keeps trying). Must be called inside a Tokio runtime.
    pub fn start(target: &RedisTarget, metrics: AdapterMetrics) -> Result<Arc<RedisLink>, LinkError> {
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (backend, dialect, uid, pushes) = match target {
            RedisTarget::Url(url) => {
                let single = single::Single::new(url)?;
                (Backend::Single(single), Dialect::Classic, wire::random_id(6), None)
            }
            RedisTarget::Cluster(seeds) => {
                let (cluster, pushes) = cluster::Cluster::new(seeds)?;
                (
                    Backend::Cluster(cluster),
                    Dialect::Sharded,
                    wire::random_id(16),
                    Some(pushes),
                )
            }
        };
        metrics.up.set(0);
        let link = Arc::new(RedisLink {
            backend,
            dialect,
            uid,
            prefix: wire::DEFAULT_PREFIX.to_string(),
            namespaces: RwLock::default(),
            connected: AtomicBool::new(false),
            up: AtomicBool::new(false),
            session: AtomicU64::new(0),
            outbox,
            control,
            pending: Mutex::default(),
            stop,
            metrics,
        });
        match pushes {
            None => {
                tokio::spawn(Arc::clone(&link).supervise_single(control_rx, stop_rx.clone()));
                tokio::spawn(Arc::clone(&link).publish_single(outbox_rx, stop_rx));
            }
            Some(pushes) => {
                tokio::spawn(Arc::clone(&link).supervise_cluster(pushes, control_rx, stop_rx.clone()));
                tokio::spawn(Arc::clone(&link).publish_cluster(outbox_rx, stop_rx));
            }
        }
        Ok(link)
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The channels of namespace `nsp`, in this link's dialect.
    pub fn channels(&self, nsp: &str) -> Channels {
        Channels::new(self.dialect, &self.prefix, nsp, &self.uid)
    }

    /// Connected and subscribed: messages cross to other servers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.up.set(i64::from(up));
    }

    /// Stop the background tasks (the worker is shutting down).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Count a message from Redis that could not be decoded.
    pub fn reject(&self, what: &str, error: &wire::WireError) {
        self.metrics.rejected.inc();
        tracing::debug!(what, error = %error, "ignoring a malformed message from Redis");
    }

    /// Take the messages of namespace `path` (subscribing now if the link is up).
    pub fn register(&self, path: &str, channels: Channels, inbox: Weak<dyn Inbox>) {
        write(&self.namespaces).push(Namespace {
            path: path.to_string(),
            channels: channels.clone(),
            inbox,
        });
        let _ = self.control.send(Control::Subscribe(channels));
    }

    pub fn unregister(&self, path: &str) {
        write(&self.namespaces).retain(|ns| ns.path != path);
    }

    /// Queue a message for publishing; dropped (and counted) while Redis is down.
    pub fn publish(&self, channel: String, payload: Vec<u8>) -> Result<(), LinkError> {
        if !self.connected.load(Ordering::Relaxed) {
            self.metrics.dropped.inc();
            return Err(LinkError::Down);
        }
        self.outbox.try_send(Outgoing { channel, payload }).map_err(|_| {
            self.metrics.dropped.inc();
            LinkError::Down
        })
    }

    /// How many servers serve the namespace, this one included (what the Node adapter's
    /// `serverCount` counts: subscribers of the request channel).
    pub async fn server_count(&self, channels: &Channels) -> Result<usize, LinkError> {
        match &self.backend {
            Backend::Single(s) => s.server_count(channels).await,
            Backend::Cluster(c) => c.server_count(channels).await,
        }
    }

    /// Make sure this worker hears the broadcasts to `rooms` of namespace `path` (sharded:
    /// subscribe their channels; nothing to do on one Redis, where it hears every room).
    pub async fn ensure_rooms(&self, path: &str, rooms: impl IntoIterator<Item = String>) {
        if let Backend::Cluster(c) = &self.backend {
            let channels = self.channels(path);
            c.ensure_rooms(rooms.into_iter().filter_map(|r| channels.room(&r)))
                .await;
        }
    }

    /// Hear exactly the rooms `live` returns for namespace `path` (sharded: subscribe the
    /// missing, unsubscribe the left). `live` is read once the link holds its room lock,
    /// so a room joined meanwhile is never dropped.
    pub async fn sync_rooms(&self, path: &str, live: impl FnOnce() -> HashSet<String>) {
        if let Backend::Cluster(c) = &self.backend {
            let channels = self.channels(path);
            c.sync_rooms(&channels, || live().iter().filter_map(|r| channels.room(r)).collect())
                .await;
        }
    }

    /// Publish a request and wait for one response from each other server (`expected`),
    /// up to `timeout`.
    pub async fn request(
        self: &Arc<Self>,
        channels: &Channels,
        request_id: &str,
        payload: Vec<u8>,
        expected: usize,
        timeout: Duration,
    ) -> Result<Vec<Response>, LinkError> {
        if expected == 0 {
            return Ok(Vec::new());
        }
        let mut incoming = self.responses(request_id);
        self.publish(channels.request.clone(), payload)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut responses = Vec::with_capacity(expected);
        while responses.len() < expected {
            match tokio::time::timeout_at(deadline, incoming.next()).await {
                Ok(Some(r)) => responses.push(r),
                Ok(None) | Err(_) => {
                    return Err(LinkError::Incomplete {
                        got: responses.len(),
                        expected,
                    });
                }
            }
        }
        Ok(responses)
    }

    /// The responses to request `request_id` as they arrive (register before publishing).
    pub fn responses(self: &Arc<Self>, request_id: &str) -> Responses {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(request_id.to_string(), tx);
        Responses {
            rx,
            link: Arc::clone(self),
            id: request_id.to_string(),
        }
    }

    /// Hand a response to the request waiting for it, if any.
    pub fn deliver_response(&self, response: Response) {
        if let Some(tx) = lock(&self.pending).get(&response.request_id) {
            let _ = tx.send(response);
        }
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        self.metrics.received.inc();
        let namespaces = read(&self.namespaces);
        for ns in namespaces.iter() {
            let Some(arrival) = ns.channels.arrival(channel) else {
                continue;
            };
            if arrival == Arrival::Response {
                return self.on_response(payload);
            }
            let Some(inbox) = ns.inbox.upgrade() else { return };
            return match arrival {
                Arrival::Broadcast(room) => inbox.on_broadcast(room, payload),
                Arrival::Request => inbox.on_request(payload),
                Arrival::Message(room) => inbox.on_message(room, payload),
                Arrival::Response => {}
            };
        }
    }

    fn on_response(&self, payload: &[u8]) {
        let decoded = match self.dialect {
            Dialect::Classic => wire::decode_response(payload),
            Dialect::Sharded => match wire::sharded::decode(payload) {
                Ok((_, _, wire::sharded::Incoming::Response(r))) => Ok(r),
                Ok(_) => return,
                Err(e) => Err(e),
            },
        };
        match decoded {
            Ok(response) => self.deliver_response(response),
            Err(e) => self.reject("response", &e),
        }
    }

    /// Whether messages can be published; without a connection the link is not up.
    fn connection_changed(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if !connected {
            self.set_up(false);
        }
    }
}

/// The next batch of queued messages (at most `BATCH`) into `batch`; `None` when the
/// queue is closed or the link is stopping.
async fn next_batch(
    outbox: &mut mpsc::Receiver<Outgoing>,
    batch: &mut Vec<Outgoing>,
    stop: &mut watch::Receiver<bool>,
) -> Option<usize> {
    let n = tokio::select! {
        n = outbox.recv_many(batch, BATCH) => n,
        _ = stop.changed() => return None,
    };
    (n > 0).then_some(n)
}

async fn timed<T>(f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, LinkError> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LinkError::Timeout(IO_TIMEOUT)),
    }
}

/// Responses to one request; the request is forgotten when this is dropped.
pub struct Responses {
    rx: mpsc::UnboundedReceiver<Response>,
    link: Arc<RedisLink>,
    id: String,
}

impl Responses {
    pub async fn next(&mut self) -> Option<Response> {
        self.rx.recv().await
    }
}

impl Drop for Responses {
    fn drop(&mut self) {
        lock(&self.link.pending).remove(&self.id);
    }
}

/// Exponential backoff with ±20 % jitter, so workers that lost Redis together do not
/// reconnect in lockstep.
struct Backoff {
    first: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Backoff {
        let attempts = 0;
        Backoff { first, max, attempts }
    }

    fn reset(&mut self) {
        self.attempts = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        let base = self
            .first
            .saturating_mul(1 << self.attempts.min(16).saturating_sub(1))
            .min(self.max);
        let jitter = std::collections::hash_map::RandomState::new().build_hasher().finish() % 401;
        base.mul_f64(0.8 + jitter as f64 / 1000.0)
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(80) && delays[0] <= Duration::from_millis(120));
        assert!(delays[1] >= Duration::from_millis(160) && delays[1] <= Duration::from_millis(240));
        assert!(delays[9] >= Duration::from_secs(4) && delays[9] <= Duration::from_secs(6));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_and_an_unreachable_redis_is_down_not_an_error() {
        let metrics = super::super::metrics::WorkerMetrics::new().unwrap().adapter;
        let url = |u: &str| RedisTarget::Url(u.to_string());
        assert!(matches!(
            RedisLink::start(&url("http://nope"), metrics.clone()),
            Err(LinkError::Url { .. })
        ));
        let Err(e) = RedisLink::start(&url("http://user:s3cret@nope:1"), metrics.clone()) else {
            panic!("not a Redis URL")
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert_eq!(redacted("redis://:pw@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert!(matches!(
            RedisLink::start(&RedisTarget::Cluster(Vec::new()), metrics.clone()),
            Err(LinkError::NoSeeds)
        ));
        let Err(e) = RedisLink::start(
            &RedisTarget::Cluster(vec!["redis://h:1".into(), "http://u:s3cret@h:2".into()]),
            metrics.clone(),
        ) else {
            panic!("not a Redis URL")
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
        // Port 1 on loopback: nothing listens there.
        for target in [
            url("redis://127.0.0.1:1"),
            RedisTarget::Cluster(vec!["redis://127.0.0.1:1".into()]),
        ] {
            let link = RedisLink::start(&target, metrics.clone()).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!link.is_up());
            assert_eq!(metrics.up.get(), 0);
            assert!(metrics.errors.get() >= 1);
            let dropped = metrics.dropped.get();
            assert!(matches!(link.publish("c".into(), vec![1]), Err(LinkError::Down)));
            assert_eq!(metrics.dropped.get(), dropped + 1);
            link.stop();
        }
    }
}
