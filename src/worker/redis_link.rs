//! The worker's link to Redis: one connection that publishes and one that subscribes,
//! kept alive by a supervisor task that reconnects with backoff and re-subscribes every
//! registered namespace, so rooms span the workers again after an outage with no restart.
//!
//! While Redis is down the link says so (`is_up`, the `redis_up` gauge) and drops what it
//! is asked to publish — the adapter still delivers to this worker's own sockets; Redis
//! pub/sub keeps nothing for absent subscribers anyway, so nothing is replayed later.
//! Publishing never waits: messages go through a bounded queue to a publisher task that
//! sends them in order, pipelined. The link knows channels and bytes only; what the
//! messages mean is `wire`'s and the adapter's business.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::{mpsc, watch};

use super::metrics::AdapterMetrics;
use super::wire::{self, Channels, Response};

/// Connect and command timeout; a Redis slower than this counts as down.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle link checks both connections with PING.
const PING_EVERY: Duration = Duration::from_secs(2);
/// Messages waiting to be published; more are dropped (and counted).
const OUTBOX_CAPACITY: usize = 8192;
/// Repeated trouble with Redis is logged at WARN at most this often (DEBUG between).
const WARN_EVERY: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Most messages sent in one pipeline.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid Redis URL {url:?}: {source}")]
    Url { url: String, source: redis::RedisError },
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
    /// A message on a broadcast channel; `room` is set on a single-room channel.
    fn on_broadcast(&self, room: Option<&str>, payload: &[u8]);
    /// A message on the namespace's request channel.
    fn on_request(&self, payload: &[u8]);
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

pub struct RedisLink {
    client: Client,
    /// This server's id on the wire (Node's `uid2(6)`), to skip its own messages.
    uid: String,
    prefix: String,
    namespaces: RwLock<Vec<Namespace>>,
    /// The publishing connection while the link is up.
    publisher: RwLock<Option<MultiplexedConnection>>,
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
    /// Check the URL and start connecting in the background (a Redis that is down now is
    /// not an error: the link keeps trying). Must be called inside a Tokio runtime.
    pub fn start(url: &str, metrics: AdapterMetrics) -> Result<Arc<RedisLink>, LinkError> {
        let client = Client::open(url).map_err(|source| LinkError::Url {
            url: redacted(url),
            source,
        })?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        metrics.up.set(0);
        let link = Arc::new(RedisLink {
            client,
            uid: wire::random_id(6),
            prefix: wire::DEFAULT_PREFIX.to_string(),
            namespaces: RwLock::default(),
            publisher: RwLock::default(),
            up: AtomicBool::new(false),
            session: AtomicU64::new(0),
            outbox,
            control,
            pending: Mutex::default(),
            stop,
            metrics,
        });
        tokio::spawn(Arc::clone(&link).supervise(control_rx, stop_rx.clone()));
        tokio::spawn(Arc::clone(&link).publish_loop(outbox_rx, stop_rx));
        Ok(link)
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Connected and subscribed: messages cross to other servers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
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
        if !self.is_up() {
            self.metrics.dropped.inc();
            return Err(LinkError::Down);
        }
        self.outbox.try_send(Outgoing { channel, payload }).map_err(|_| {
            self.metrics.dropped.inc();
            LinkError::Down
        })
    }

    /// How many servers serve the namespace: subscribers of its request channel, this one
    /// included (what the Node adapter's `serverCount` counts).
    pub async fn server_count(&self, channels: &Channels) -> Result<usize, LinkError> {
        let mut conn = read(&self.publisher).clone().ok_or(LinkError::Down)?;
        let cmd = redis::cmd("PUBSUB").arg("NUMSUB").arg(&channels.request).to_owned();
        let (_, count): (String, usize) = timed(cmd.query_async(&mut conn)).await?;
        Ok(count)
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

    // ---- background tasks ----

    /// Connect, serve the session until it breaks, wait with backoff, again; until stopped.
    async fn supervise(
        self: Arc<Self>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut down_since: Option<Instant> = None;
        let mut last_warning: Option<Instant> = None;
        let mut ever_up = false;
        while !*stop.borrow() {
            match self.connect().await {
                Ok((conn, sink, stream)) => {
                    let connected_at = Instant::now();
                    let session = self.session.fetch_add(1, Ordering::Relaxed) + 1;
                    *write(&self.publisher) = Some(conn.clone());
                    self.up.store(true, Ordering::Relaxed);
                    self.metrics.up.set(1);
                    match down_since.take() {
                        Some(since) if ever_up => {
                            self.metrics.reconnects.inc();
                            tracing::info!(
                                uid = %self.uid,
                                down_ms = since.elapsed().as_millis() as u64,
                                "Redis is back: re-subscribed, rooms span the workers again"
                            );
                        }
                        _ => tracing::info!(uid = %self.uid, "connected to Redis"),
                    }
                    ever_up = true;
                    let reason = self
                        .run_session(session, conn, sink, stream, &mut control, &mut stop)
                        .await;
                    self.up.store(false, Ordering::Relaxed);
                    self.metrics.up.set(0);
                    *write(&self.publisher) = None;
                    if *stop.borrow() {
                        break;
                    }
                    self.metrics.errors.inc();
                    down_since = Some(Instant::now());
                    // A session that broke at once (Redis drops us right after connecting)
                    // keeps backing off, and is reported once per 30 s, not each time.
                    let stable = connected_at.elapsed() >= STABLE_SESSION;
                    if stable {
                        backoff.reset();
                    }
                    if warn_due(&mut last_warning, stable) {
                        tracing::warn!(
                            reason = %reason,
                            "lost Redis: delivering to this worker's sockets only while reconnecting"
                        );
                    } else {
                        tracing::debug!(reason = %reason, "lost Redis again");
                    }
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    let since = *down_since.get_or_insert_with(Instant::now);
                    // Say it once, then every 30 s of a long outage.
                    if warn_due(&mut last_warning, false) {
                        tracing::warn!(error = %e, down_s = since.elapsed().as_secs(), "cannot reach Redis; retrying");
                    } else {
                        tracing::debug!(error = %e, "cannot reach Redis; retrying");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, PubSubSink, PubSubStream), LinkError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = timed(self.client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        let all: Vec<Channels> = read(&self.namespaces).iter().map(|ns| ns.channels.clone()).collect();
        for channels in &all {
            subscribe(&mut sink, channels).await?;
        }
        Ok((conn, sink, stream))
    }

    /// Dispatch messages until a connection fails; returns why.
    async fn run_session(
        &self,
        session: u64,
        mut conn: MultiplexedConnection,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        control: &mut mpsc::UnboundedReceiver<Control>,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.dispatch(msg.get_channel_name(), msg.get_payload_bytes()),
                    None => return "the subscription connection closed".into(),
                },
                c = control.recv() => match c {
                    Some(Control::Subscribe(channels)) => {
                        if let Err(e) = subscribe(&mut sink, &channels).await {
                            return format!("subscribing: {e}");
                        }
                    }
                    Some(Control::Broken { session: s, reason }) if s == session => return reason,
                    Some(Control::Broken { .. }) => {}
                    None => return "stopping".into(),
                },
                _ = ping.tick() => {
                    let sub_ping = timed(sink.ping::<redis::Value>()).await;
                    let pub_ping = timed(redis::cmd("PING").query_async::<redis::Value>(&mut conn)).await;
                    if let Err(e) = sub_ping.and(pub_ping) {
                        return format!("PING failed: {e}");
                    }
                }
                _ = stop.changed() => return "stopping".into(),
            }
        }
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        self.metrics.received.inc();
        let namespaces = read(&self.namespaces);
        for ns in namespaces.iter() {
            if ns.channels.is_response(channel) {
                return self.on_response(payload);
            }
            let Some(inbox) = ns.inbox.upgrade() else { continue };
            if let Some(room) = ns.channels.broadcast_room(channel) {
                return inbox.on_broadcast(room, payload);
            }
            if channel == ns.channels.request {
                return inbox.on_request(payload);
            }
        }
    }

    fn on_response(&self, payload: &[u8]) {
        match wire::decode_response(payload) {
            Ok(response) => {
                if let Some(tx) = lock(&self.pending).get(&response.request_id) {
                    let _ = tx.send(response);
                }
            }
            Err(e) => self.reject("response", &e),
        }
    }

    /// Send queued messages in order, a pipeline at a time, on the current connection.
    async fn publish_loop(self: Arc<Self>, mut outbox: mpsc::Receiver<Outgoing>, mut stop: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                n = outbox.recv_many(&mut batch, BATCH) => n,
                _ = stop.changed() => return,
            };
            if n == 0 {
                return;
            }
            let session = self.session.load(Ordering::Relaxed);
            let Some(mut conn) = read(&self.publisher).clone() else {
                self.metrics.dropped.inc_by(n as u64);
                batch.clear();
                continue;
            };
            let mut pipe = redis::pipe();
            for m in &batch {
                pipe.publish(&m.channel, &m.payload).ignore();
            }
            match timed(pipe.query_async::<()>(&mut conn)).await {
                Ok(()) => self.metrics.published.inc_by(n as u64),
                Err(e) => {
                    self.metrics.dropped.inc_by(n as u64);
                    let _ = self.control.send(Control::Broken {
                        session,
                        reason: format!("publishing: {e}"),
                    });
                }
            }
            batch.clear();
        }
    }
}

async fn subscribe(sink: &mut PubSubSink, channels: &Channels) -> Result<(), LinkError> {
    timed(sink.psubscribe(channels.broadcast_pattern())).await?;
    timed(sink.subscribe(&[&channels.request, &channels.response, &channels.own_response])).await?;
    Ok(())
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
        Backoff {
            first,
            max,
            attempts: 0,
        }
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
        assert!(matches!(
            RedisLink::start("http://nope", metrics.clone()),
            Err(LinkError::Url { .. })
        ));
        let Err(e) = RedisLink::start("http://user:s3cret@nope:1", metrics.clone()) else {
            panic!("not a Redis URL")
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert_eq!(redacted("redis://:pw@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        // Port 1 on loopback: nothing listens there.
        let link = RedisLink::start("redis://127.0.0.1:1", metrics.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!link.is_up());
        assert_eq!(metrics.up.get(), 0);
        assert!(metrics.errors.get() >= 1);
        assert!(matches!(link.publish("c".into(), vec![1]), Err(LinkError::Down)));
        assert_eq!(metrics.dropped.get(), 1);
        link.stop();
    }
}
