//! `edgepin worker`: the reference Socket.IO worker — axum + socketioxide, rooms that span
//! every worker (edgepin or Node.js) through Redis with our own adapter, a small REST API,
//! health/readiness, Prometheus metrics and a demo page.
//!
//! `sio` is the Socket.IO server (ours, for memory: benches/README.md), `wire` speaks
//! `@socket.io/redis-adapter`'s protocol, `redis_link` owns the Redis connections and
//! their recovery, `adapter` joins `sio`'s rooms across servers through both, `events`
//! and `http` are what clients see, `access` decides who may call the REST emit and the
//! ops endpoints, `metrics` counts. This module assembles them and sets every Socket.IO
//! limit in one place: [`serve`] runs a worker on a bound listener until a shutdown future
//! resolves (tests run it in-process); [`run`] is the command. The worker depends on
//! nothing else in edgepin.

mod access;
pub mod acks;
pub mod adapter;
mod events;
mod http;
pub mod metrics;
pub mod redis_link;
mod sio;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use adapter::NodeRedisAdapter;
use metrics::WorkerMetrics;
pub use redis_link::RedisTarget;
use redis_link::{LinkError, RedisLink};

/// Largest Socket.IO message on either transport (a polling POST, a WebSocket message),
/// the binary attachments a packet may announce together, and a REST body: Node's
/// socket.io default (`maxHttpBufferSize`, which covers both transports there too), so a
/// client that works against a Node worker works against this one.
pub const MAX_PAYLOAD: u64 = 1_000_000;
/// How long a client has to send every attachment of a binary packet it announced, from
/// the announcement on; then its session is closed. A client sends them back to back, and
/// at most `MAX_PAYLOAD` bytes of them, so this only ever cuts a stalled client.
pub const ATTACHMENT_DEADLINE: Duration = Duration::from_secs(10);
/// Rooms' member counts asked of every worker at once through the `members` event; more
/// are refused as busy (each asks every other worker over Redis).
const MEMBER_COUNTS: usize = 8;
/// After the shutdown signal: longest wait for open connections to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Shown in `/api/whoami`, acks and `said` messages (e.g. the server name in proxy.yaml).
    pub id: String,
    /// One Redis (`redis://host:port[/db]`) or a Redis Cluster.
    pub redis: RedisTarget,
    /// When set, `POST /api/rooms/{room}/emit` needs `Authorization: Bearer <token>`:
    /// behind the proxy's catch-all route the REST API is as public as the site.
    pub emit_token: Option<String>,
}

/// The environment variable `edgepin worker` (and so `edgepin up`) reads the emit token from.
pub const EMIT_TOKEN_ENV: &str = "EDGEPIN_EMIT_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("--id {0:?} must be 1 to 64 characters, without spaces or control characters")]
    Id(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("following the parent process: {0}")]
    Parent(std::io::Error),
    #[error("no system randomness for the emit token's key")]
    Random,
}

/// What handlers share.
pub struct WorkerState {
    pub id: String,
    pub link: Arc<RedisLink>,
    pub metrics: WorkerMetrics,
    /// The Socket.IO server: sessions and rooms of this worker.
    io: Arc<sio::Io>,
    /// Rooms across every server.
    adapter: Arc<NodeRedisAdapter>,
    /// Required bearer token of the REST emit, if any (it also opens the ops endpoints).
    emit_token: Option<access::EmitToken>,
    /// Member counts in progress for the `members` event.
    member_counts: tokio::sync::Semaphore,
    /// Set once shutdown begins: `/health` and `/ready` turn 503.
    stopping: AtomicBool,
}

impl WorkerState {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// Serve a worker on `listener` until `shutdown` resolves, then close every socket (their
/// clients reconnect, through the proxy, to another worker) and return.
pub async fn serve(
    listener: TcpListener,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    check_id(&options.id)?;
    let metrics = WorkerMetrics::new()?;
    let link = RedisLink::start(&options.redis, metrics.adapter.clone())?;
    let emit_token = match options.emit_token.filter(|t| !t.is_empty()) {
        Some(t) => Some(access::EmitToken::new(&t)?),
        None => None,
    };
    // Node's socket.io defaults (engine.io 6), and one payload limit for both transports
    // and for the attachments of one packet.
    let io = sio::Io::new(sio::Config {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(45),
        upgrade_timeout: Duration::from_secs(10),
        max_payload: MAX_PAYLOAD as usize,
        attachment_deadline: ATTACHMENT_DEADLINE,
    });
    let state = Arc::new(WorkerState {
        adapter: NodeRedisAdapter::start(Arc::clone(&io), Arc::clone(&link)),
        io: Arc::clone(&io),
        emit_token,
        id: options.id,
        link: Arc::clone(&link),
        metrics,
        member_counts: tokio::sync::Semaphore::new(MEMBER_COUNTS),
        stopping: AtomicBool::new(false),
    });
    io.set_hooks(Arc::new(events::Handlers(Arc::downgrade(&state))));
    let app = http::router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();

    let addr = listener.local_addr().map_err(WorkerError::Serve)?;
    tracing::info!(id = %state.id, %addr, uid = %link.uid(), "worker listening");
    let stopped = Arc::new(tokio::sync::Notify::new());
    let graceful = {
        let (state, stopped) = (Arc::clone(&state), Arc::clone(&stopped));
        async move {
            shutdown.await;
            tracing::info!(id = %state.id, "stopping: closing sockets");
            state.stopping.store(true, Ordering::Relaxed);
            state.io.close_all();
            stopped.notify_one();
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let result = tokio::select! {
        r = server => r.map_err(WorkerError::Serve),
        // Connections that outlive the grace period (held long-polls) are dropped.
        _ = async { stopped.notified().await; tokio::time::sleep(STOP_TIMEOUT).await } => Ok(()),
    };
    state.adapter.stop();
    link.stop();
    tracing::info!(id = %state.id, "worker stopped");
    result
}

/// `edgepin worker`: bind `listen` and serve until SIGTERM or SIGINT. The emit token, if
/// `options` has none, comes from `EDGEPIN_EMIT_TOKEN`.
pub fn run(listen: SocketAddr, mut options: WorkerOptions) -> Result<(), WorkerError> {
    check_id(&options.id)?;
    if options.emit_token.is_none() {
        options.emit_token = std::env::var(EMIT_TOKEN_ENV).ok();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgepin-worker")
        .build()
        .map_err(WorkerError::Runtime)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| WorkerError::Bind { addr: listen, source })?;
        serve(listener, options, stop_signal()).await
    })
}

/// Stop (SIGTERM) when `parent`, the `edgepin up` that started this worker, dies, however
/// it dies, so a killed supervisor leaves no worker behind.
pub fn stop_with_parent(parent: u32) -> Result<(), WorkerError> {
    crate::lifeline::follow(parent).map_err(WorkerError::Parent)
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn check_id(id: &str) -> Result<(), WorkerError> {
    let ok = !id.is_empty() && id.chars().count() <= 64 && !id.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(WorkerError::Id(id.to_string()))
    }
}
