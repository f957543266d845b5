//! A Redis Cluster, the sharded adapter's way: one `redis` cluster connection (RESP3) that
//! publishes with `SPUBLISH` and subscribes with `SSUBSCRIBE` — each namespace's main and
//! response channels, and the channel of every room with a member here — its messages
//! arriving as pushes.
//!
//! The `redis` crate reconnects to nodes and re-subscribes a node it reconnects to, but a
//! master that dies takes its shard channels with it: nothing moves them to the replica
//! promoted in its place (measured with redis 1.8.1 on Redis 7.0). So on every lost node
//! (the crate's `Disconnection` push) or channel the server dropped (`SUNSUBSCRIBE` push),
//! the link subscribes every channel again, retrying with backoff until all succeed — the
//! new master takes them once promoted; channels already in place are unaffected. Publishes
//! are never retried (the client has no retries), so a message is never delivered twice;
//! during a failover those to the lost shard are dropped and counted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, watch};

use super::{
    BATCH, Backend, Backoff, Control, IO_TIMEOUT, LinkError, Outgoing, RedisLink, lock, next_batch, read, redacted,
    timed, warn_due, write,
};
use crate::worker::wire::Channels;

pub(super) struct Cluster {
    client: ClusterClient,
    /// The connection, once the cluster was reached.
    conn: RwLock<Option<ClusterConnection>>,
    /// Room channels this worker must hear (every namespace's).
    rooms: Mutex<HashSet<String>>,
    /// Serialises subscription changes, so a room joined while the rooms are synced is
    /// never unsubscribed.
    changes: tokio::sync::Mutex<()>,
    /// Wakes the task that subscribes everything again.
    resubscribe: Notify,
}

impl Cluster {
    pub(super) fn new(seeds: &[String]) -> Result<(Cluster, mpsc::UnboundedReceiver<PushInfo>), LinkError> {
        if seeds.is_empty() {
            return Err(LinkError::NoSeeds);
        }
        for seed in seeds {
            seed.as_str().into_connection_info().map_err(|source| LinkError::Url {
                url: redacted(seed),
                source,
            })?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let client = ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(IO_TIMEOUT)
            .response_timeout(IO_TIMEOUT)
            // A retried publish may reach Redis twice; the link retries subscriptions itself.
            .retries(0)
            .build()
            .map_err(|source| LinkError::Url {
                url: seeds.iter().map(|s| redacted(s)).collect::<Vec<_>>().join(","),
                source,
            })?;
        let cluster = Cluster {
            client,
            conn: RwLock::default(),
            rooms: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            resubscribe: Notify::new(),
        };
        Ok((cluster, rx))
    }

    fn conn(&self) -> Option<ClusterConnection> {
        read(&self.conn).clone()
    }

    /// Subscribers of the main channel, on the master of its shard.
    pub(super) async fn server_count(&self, channels: &Channels) -> Result<usize, LinkError> {
        let mut conn = self.conn().ok_or(LinkError::Down)?;
        let main = &channels.request;
        let cmd = redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(main).to_owned();
        let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            main,
            SlotAddr::Master,
        )));
        let counts: HashMap<String, usize> = redis::from_redis_value(timed(conn.route_command(cmd, to)).await?)
            .map_err(|e| LinkError::Redis(e.into()))?;
        Ok(counts.get(main).copied().unwrap_or(0))
    }

    pub(super) async fn ensure_rooms(&self, channels: impl Iterator<Item = String>) {
        let _change = self.changes.lock().await;
        let fresh: Vec<String> = {
            let mut rooms = lock(&self.rooms);
            channels.filter(|c| rooms.insert(c.clone())).collect()
        };
        if fresh.is_empty() {
            return;
        }
        let Some(conn) = self.conn() else { return };
        if let Err(e) = subscribe(&conn, fresh, true).await {
            tracing::debug!(error = %e, "subscribing a room's channel failed; retrying");
            self.resubscribe.notify_one();
        }
    }

    pub(super) async fn sync_rooms(&self, ns: &Channels, live: impl FnOnce() -> HashSet<String>) {
        let _change = self.changes.lock().await;
        let wanted = live();
        let (fresh, gone) = {
            let mut rooms = lock(&self.rooms);
            let ours = |c: &String| c.starts_with(&ns.broadcast) && *c != ns.own_response;
            let gone: Vec<String> = rooms
                .iter()
                .filter(|c| ours(c) && !wanted.contains(*c))
                .cloned()
                .collect();
            for c in &gone {
                rooms.remove(c);
            }
            let fresh: Vec<String> = wanted.into_iter().filter(|c| rooms.insert(c.clone())).collect();
            (fresh, gone)
        };
        let Some(conn) = self.conn() else { return };
        if !gone.is_empty()
            && let Err(e) = subscribe(&conn, gone, false).await
        {
            tracing::debug!(error = %e, "unsubscribing left rooms' channels");
        }
        if !fresh.is_empty() && subscribe(&conn, fresh, true).await.is_err() {
            self.resubscribe.notify_one();
        }
    }
}

/// SSUBSCRIBE (or SUNSUBSCRIBE) `channels`, one command per slot (a command's channels
/// must share one), all at once.
async fn subscribe(conn: &ClusterConnection, channels: Vec<String>, on: bool) -> Result<(), LinkError> {
    let mut by_slot: HashMap<Slot, Vec<String>> = HashMap::new();
    for c in channels {
        by_slot.entry(Slot::for_key(&c)).or_default().push(c);
    }
    let results = futures_util::future::join_all(by_slot.into_values().map(|group| {
        let mut conn = conn.clone();
        async move {
            if on {
                timed(conn.ssubscribe(group)).await
            } else {
                timed(conn.sunsubscribe(group)).await
            }
        }
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ())
}

impl RedisLink {
    fn cluster(&self) -> Option<&Cluster> {
        match &self.backend {
            Backend::Cluster(c) => Some(c),
            Backend::Single(_) => None,
        }
    }

    /// Reach the cluster (retrying with backoff), then dispatch its pushes until stopped.
    pub(super) async fn supervise_cluster(
        self: Arc<Self>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(cluster) = self.cluster() else { return };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_warning = None;
        let conn = loop {
            match timed(cluster.client.get_async_connection()).await {
                Ok(conn) => break conn,
                Err(e) => {
                    self.metrics.errors.inc();
                    if warn_due(&mut last_warning, false) {
                        tracing::warn!(error = %e, "cannot reach the Redis Cluster; retrying");
                    } else {
                        tracing::debug!(error = %e, "cannot reach the Redis Cluster; retrying");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.changed() => return,
            }
        };
        *write(&cluster.conn) = Some(conn);
        self.connection_changed(true);
        tracing::info!(uid = %self.uid, "connected to the Redis Cluster");
        tokio::spawn(Arc::clone(&self).resubscribe_cluster(stop.clone()));
        cluster.resubscribe.notify_one();
        let mut last_warning = None;
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(push) => self.on_push(cluster, push, &mut last_warning),
                    None => break,
                },
                c = control.recv() => match c {
                    Some(Control::Subscribe(_)) => cluster.resubscribe.notify_one(),
                    Some(Control::Broken { .. }) => {}
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        self.connection_changed(false);
    }

    fn on_push(&self, cluster: &Cluster, push: PushInfo, last_warning: &mut Option<Instant>) {
        match push.kind {
            PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice() {
                    match std::str::from_utf8(channel) {
                        Ok(channel) => self.dispatch(channel, payload),
                        Err(_) => self.metrics.rejected.inc(),
                    }
                }
            }
            PushKind::Disconnection => {
                self.set_up(false);
                self.metrics.errors.inc();
                if warn_due(last_warning, false) {
                    tracing::warn!("lost a Redis Cluster node: subscribing again until its shard is back");
                }
                cluster.resubscribe.notify_one();
            }
            // Redis dropped a channel (its slot moved): if it is still wanted, take it back.
            PushKind::SUnsubscribe => {
                let wanted = match push.data.first() {
                    Some(Value::BulkString(c)) => std::str::from_utf8(c).is_ok_and(|c| self.wants(cluster, c)),
                    _ => false,
                };
                if wanted {
                    cluster.resubscribe.notify_one();
                }
            }
            _ => {}
        }
    }

    /// Whether `channel` is one this worker subscribes.
    fn wants(&self, cluster: &Cluster, channel: &str) -> bool {
        lock(&cluster.rooms).contains(channel)
            || read(&self.namespaces)
                .iter()
                .any(|ns| channel == ns.channels.request || channel == ns.channels.own_response)
    }

    /// Each time it is woken: subscribe every channel again until all succeed.
    async fn resubscribe_cluster(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(cluster) = self.cluster() else { return };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_warning = None;
        let mut ever_up = false;
        loop {
            tokio::select! {
                _ = cluster.resubscribe.notified() => {}
                _ = stop.changed() => return,
            }
            let since = Instant::now();
            loop {
                match self.subscribe_all(cluster).await {
                    Ok(()) => break,
                    Err(e) => {
                        self.set_up(false);
                        self.metrics.errors.inc();
                        if warn_due(&mut last_warning, false) {
                            tracing::warn!(error = %e, "cannot subscribe on the Redis Cluster; retrying");
                        } else {
                            tracing::debug!(error = %e, "cannot subscribe on the Redis Cluster; retrying");
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => return,
                }
            }
            backoff.reset();
            if !self.is_up() {
                if ever_up {
                    self.metrics.reconnects.inc();
                    tracing::info!(
                        uid = %self.uid,
                        down_ms = since.elapsed().as_millis() as u64,
                        "subscribed again on the Redis Cluster: rooms span the workers"
                    );
                }
                self.set_up(true);
            }
            ever_up = true;
        }
    }

    async fn subscribe_all(&self, cluster: &Cluster) -> Result<(), LinkError> {
        let _change = cluster.changes.lock().await;
        let conn = cluster.conn().ok_or(LinkError::Down)?;
        let mut channels: Vec<String> = lock(&cluster.rooms).iter().cloned().collect();
        for ns in read(&self.namespaces).iter() {
            channels.push(ns.channels.request.clone());
            channels.push(ns.channels.own_response.clone());
        }
        subscribe(&conn, channels, true).await
    }

    /// Send queued messages: those of one slot in order, one pipeline per slot, the slots
    /// at once. Nothing is retried.
    pub(super) async fn publish_cluster(
        self: Arc<Self>,
        mut outbox: mpsc::Receiver<Outgoing>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(cluster) = self.cluster() else { return };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let Some(n) = next_batch(&mut outbox, &mut batch, &mut stop).await else {
                return;
            };
            let Some(conn) = cluster.conn() else {
                self.metrics.dropped.inc_by(n as u64);
                batch.clear();
                continue;
            };
            let mut slots: HashMap<Slot, usize> = HashMap::new();
            let mut pipes: Vec<(redis::Pipeline, u64)> = Vec::new();
            for m in batch.drain(..) {
                let i = *slots.entry(Slot::for_key(&m.channel)).or_insert_with(|| {
                    pipes.push((redis::pipe(), 0));
                    pipes.len() - 1
                });
                pipes[i].0.cmd("SPUBLISH").arg(m.channel).arg(m.payload).ignore();
                pipes[i].1 += 1;
            }
            let sent = futures_util::future::join_all(pipes.into_iter().map(|(pipe, count)| {
                let mut conn = conn.clone();
                async move { (count, timed(pipe.query_async::<()>(&mut conn)).await) }
            }))
            .await;
            for (count, result) in sent {
                match result {
                    Ok(()) => self.metrics.published.inc_by(count),
                    Err(e) => {
                        self.metrics.dropped.inc_by(count);
                        tracing::debug!(error = %e, messages = count, "publishing on the Redis Cluster failed");
                    }
                }
            }
        }
    }
}
