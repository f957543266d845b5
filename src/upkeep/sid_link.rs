//! The link to the shared sid table's Redis: one connection per process (a multiplexed
//! connection to one Redis, or a cluster connection), kept by one background task.
//!
//! The task follows the config in force (`sticky.shared`, so a reload may turn the table
//! on, off, or point it elsewhere), connects, publishes the connection for lookups
//! (`proxy::sid_lookup::resolve`), writes the queued changes (`SET key server PX sid_ttl`, `DEL key`)
//! in batches, checks the connection with PING every second, and when Redis fails
//! withdraws the connection (lookups then fall back at once, without waiting) and
//! reconnects with backoff. It never blocks a request: everything it does happens here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::cluster::ClusterClientBuilder;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::mpsc;

use crate::config::{SharedRedis, SharedSids};
use crate::runtime::Shared;
use crate::sticky::shared::{Change, Conn, SharedTable, key};

/// Connect, write and PING timeout of the link (lookups have their own, shorter one).
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the link checks the connection and the config.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Without `sticky.shared` the link waits for a config install; this is its fallback.
const UNCONFIGURED_RECHECK: Duration = Duration::from_secs(60);
/// Most changes written at once.
const BATCH: usize = 256;
/// Reconnect backoff: from this, doubling, up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The background service that keeps the link (one per process).
pub struct SharedLink {
    pub shared: Arc<Shared>,
}

/// Why serving a connection ended.
enum Ended {
    Stop,
    /// The config no longer names this Redis.
    Changed,
    Broken(String),
}

#[async_trait]
impl BackgroundService for SharedLink {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let table = &self.shared.sids.shared;
        let Some(mut inbox) = table.take_inbox() else { return };
        let mut delay = BACKOFF_FIRST;
        // When the current outage began (`None`: connected, or never tried).
        let mut down_since: Option<Instant> = None;
        let mut installs = self.shared.installs();
        loop {
            installs.mark_unchanged();
            let wanted = self.shared.snapshot().config.sticky.shared.clone();
            table.configure(wanted.clone());
            let Some(settings) = wanted else {
                // Not configured: sleep until a reload installs a config (no ticking).
                tokio::select! {
                    _ = installs.changed() => continue,
                    stop = pause(&mut shutdown, UNCONFIGURED_RECHECK, &mut inbox, table) => if stop { return },
                }
                continue;
            };
            let failure = match connect(&settings.redis).await {
                Ok(conn) => {
                    table.set_conn(Some(conn.clone()));
                    delay = BACKOFF_FIRST;
                    match down_since.take() {
                        Some(t) => {
                            tracing::info!(redis = %settings.redis, down_for = ?t.elapsed(), "shared sid table: reconnected")
                        }
                        None => tracing::info!(redis = %settings.redis, "shared sid table: connected"),
                    }
                    let ended = self.serve(conn, &settings, &mut inbox, &mut shutdown).await;
                    table.set_conn(None);
                    match ended {
                        Ended::Stop => return,
                        Ended::Changed => continue,
                        Ended::Broken(e) => e,
                    }
                }
                Err(e) => {
                    table.counters.errors.inc();
                    e
                }
            };
            if down_since.is_none() {
                down_since = Some(Instant::now());
                tracing::warn!(redis = %settings.redis, error = %failure, "shared sid table: Redis unreachable; sessions fall back to cookie and hash until it is back");
            } else {
                tracing::debug!(redis = %settings.redis, error = %failure, retry_in = ?delay, "shared sid table: still unreachable");
            }
            if pause(&mut shutdown, delay, &mut inbox, table).await {
                return;
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
}

impl SharedLink {
    /// Write changes and check the connection until it breaks, the config changes, or
    /// the process stops.
    async fn serve(
        &self,
        conn: Conn,
        settings: &SharedSids,
        inbox: &mut mpsc::Receiver<Change>,
        shutdown: &mut ShutdownWatch,
    ) -> Ended {
        let table = &self.shared.sids.shared;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ended::Stop,
                _ = tick.tick() => {
                    if self.shared.snapshot().config.sticky.shared.as_ref() != Some(settings) {
                        return Ended::Changed;
                    }
                    let ping = redis::cmd("PING");
                    match tokio::time::timeout(IO_TIMEOUT, conn.clone().query::<String>(&ping)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            table.counters.errors.inc();
                            return Ended::Broken(e.to_string());
                        }
                        Err(_) => {
                            table.counters.errors.inc();
                            return Ended::Broken("PING not answered in time".into());
                        }
                    }
                }
                n = inbox.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return Ended::Stop;
                    }
                    let ttl = self.shared.snapshot().config.sticky.sid_ttl;
                    let written = write(&conn, settings, &batch, ttl, table).await;
                    batch.clear();
                    if let Err(e) = written {
                        return Ended::Broken(e);
                    }
                }
            }
        }
    }
}

/// Write `changes` (concurrently: the connection pipelines them; in a cluster each goes
/// to its key's node). Failed ones are counted; a connection-level failure is returned.
async fn write(
    conn: &Conn,
    settings: &SharedSids,
    changes: &[Change],
    ttl: Duration,
    table: &SharedTable,
) -> Result<(), String> {
    let ttl_ms = ttl.as_millis().max(1) as u64;
    let sends = changes.iter().map(|change| {
        let cmd = match change {
            Change::Learned { sid, server } => redis::cmd("SET")
                .arg(key(settings, sid))
                .arg(&**server)
                .arg("PX")
                .arg(ttl_ms)
                .to_owned(),
            Change::Forgotten { sid } => redis::cmd("DEL").arg(key(settings, sid)).to_owned(),
        };
        let mut conn = conn.clone();
        async move { conn.query::<redis::Value>(&cmd).await }
    });
    let results = tokio::time::timeout(IO_TIMEOUT, futures_util::future::join_all(sends)).await;
    let learned = changes.iter().filter(|c| matches!(c, Change::Learned { .. })).count() as u64;
    let c = &table.counters;
    let Ok(results) = results else {
        c.errors.add(changes.len() as u64);
        c.fallbacks.add(learned);
        return Err("writes not answered in time".into());
    };
    let mut broken = None;
    for (change, result) in changes.iter().zip(results) {
        match result {
            Ok(_) => c.writes.inc(),
            Err(e) => {
                c.errors.inc();
                if matches!(change, Change::Learned { .. }) {
                    c.fallbacks.inc();
                }
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
                    broken.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
    broken.map_or(Ok(()), Err)
}

/// One connection to the configured Redis, checked with PING.
async fn connect(redis: &SharedRedis) -> Result<Conn, String> {
    let connecting = async {
        let mut conn = match redis {
            SharedRedis::One(url) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(IO_TIMEOUT))
                    .set_response_timeout(Some(IO_TIMEOUT));
                let client = Client::open(url.as_str())?;
                Conn::One(client.get_multiplexed_async_connection_with_config(&config).await?)
            }
            SharedRedis::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(IO_TIMEOUT)
                    .response_timeout(IO_TIMEOUT)
                    .retries(1)
                    .build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
        };
        conn.query::<String>(&redis::cmd("PING")).await?;
        Ok::<Conn, redis::RedisError>(conn)
    };
    match tokio::time::timeout(IO_TIMEOUT * 2, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connecting timed out".into()),
    }
}

/// Wait `delay` (or until stopped: `true`), dropping the changes queued meanwhile:
/// the learned ones are sessions the other edges will not know.
async fn pause(
    shutdown: &mut ShutdownWatch,
    delay: Duration,
    inbox: &mut mpsc::Receiver<Change>,
    table: &SharedTable,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return true,
            _ = tokio::time::sleep_until(until) => return false,
            change = inbox.recv() => match change {
                Some(Change::Learned { .. }) => table.counters.fallbacks.inc(),
                Some(Change::Forgotten { .. }) => {}
                None => return true,
            },
        }
    }
}
