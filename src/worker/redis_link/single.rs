//! One Redis, the classic adapter's way: a multiplexed connection publishes (pipelined),
//! a pub/sub connection takes every broadcast of a namespace by pattern and its request
//! and response channels. A supervisor connects, serves the session until either
//! connection fails (or stops answering PING), then reconnects with backoff and
//! subscribes again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::{mpsc, watch};

use super::{
    BATCH, Backend, Backoff, Control, IO_TIMEOUT, LinkError, Outgoing, RedisLink, next_batch, read, redacted, timed,
    warn_due, write,
};
use crate::worker::wire::Channels;

/// How often an idle link checks both connections with PING.
const PING_EVERY: Duration = Duration::from_secs(2);
/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(5);

pub(super) struct Single {
    client: Client,
    /// The publishing connection while the link is up.
    publisher: std::sync::RwLock<Option<MultiplexedConnection>>,
}

impl Single {
    pub(super) fn new(url: &str) -> Result<Single, LinkError> {
        let client = Client::open(url).map_err(|source| LinkError::Url {
            url: redacted(url),
            source,
        })?;
        Ok(Single {
            client,
            publisher: Default::default(),
        })
    }

    pub(super) async fn server_count(&self, channels: &Channels) -> Result<usize, LinkError> {
        let mut conn = read(&self.publisher).clone().ok_or(LinkError::Down)?;
        let cmd = redis::cmd("PUBSUB").arg("NUMSUB").arg(&channels.request).to_owned();
        let (_, count): (String, usize) = timed(cmd.query_async(&mut conn)).await?;
        Ok(count)
    }
}

impl RedisLink {
    fn single(&self) -> Option<&Single> {
        match &self.backend {
            Backend::Single(s) => Some(s),
            Backend::Cluster(_) => None,
        }
    }

    /// Connect, serve the session until it breaks, wait with backoff, again; until stopped.
    pub(super) async fn supervise_single(
        self: Arc<Self>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(single) = self.single() else { return };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut down_since: Option<Instant> = None;
        let mut last_warning: Option<Instant> = None;
        let mut ever_up = false;
        while !*stop.borrow() {
            match self.connect_single(single).await {
                Ok((conn, sink, stream)) => {
                    let connected_at = Instant::now();
                    let session = self.session.fetch_add(1, Ordering::Relaxed) + 1;
                    *write(&single.publisher) = Some(conn.clone());
                    self.connection_changed(true);
                    self.set_up(true);
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
                        .run_single(session, conn, sink, stream, &mut control, &mut stop)
                        .await;
                    self.connection_changed(false);
                    *write(&single.publisher) = None;
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

    async fn connect_single(
        &self,
        single: &Single,
    ) -> Result<(MultiplexedConnection, PubSubSink, PubSubStream), LinkError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let conn = single
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let pubsub = timed(single.client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        let all: Vec<Channels> = read(&self.namespaces).iter().map(|ns| ns.channels.clone()).collect();
        for channels in &all {
            subscribe(&mut sink, channels).await?;
        }
        Ok((conn, sink, stream))
    }

    /// Dispatch messages until a connection fails; returns why.
    async fn run_single(
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

    /// Send queued messages in order, a pipeline at a time, on the current connection.
    pub(super) async fn publish_single(
        self: Arc<Self>,
        mut outbox: mpsc::Receiver<Outgoing>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(single) = self.single() else { return };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let Some(n) = next_batch(&mut outbox, &mut batch, &mut stop).await else {
                return;
            };
            let session = self.session.load(Ordering::Relaxed);
            let Some(mut conn) = read(&single.publisher).clone() else {
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
