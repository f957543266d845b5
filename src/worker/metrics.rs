//! The worker's Prometheus metrics: sockets and rooms on this worker, Socket.IO messages in
//! and out, and the state of its Redis link. Each worker owns its registry (no global
//! one), so several workers can run in one test process.

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

/// What the adapter and its Redis link count.
#[derive(Clone)]
pub struct AdapterMetrics {
    /// Packets delivered to this worker's clients by room broadcasts, local and remote.
    pub messages_out: IntCounter,
    /// 1 while the adapter is connected and subscribed, else 0.
    pub up: IntGauge,
    /// Failed connects, failed publishes and lost connections.
    pub errors: IntCounter,
    /// Connections re-established after a loss.
    pub reconnects: IntCounter,
    /// Messages published (broadcasts, requests, responses).
    pub published: IntCounter,
    /// Messages received on the adapter's channels.
    pub received: IntCounter,
    /// Messages not published because Redis was down or the queue was full.
    pub dropped: IntCounter,
    /// Messages from Redis that could not be decoded.
    pub rejected: IntCounter,
}

/// Everything `/metrics` shows.
pub struct WorkerMetrics {
    registry: Registry,
    /// Sockets connected to this worker.
    pub sockets: IntGauge,
    /// Rooms with a member on this worker (not counting each socket's own room); set on scrape.
    pub rooms: IntGauge,
    /// Socket.IO events received from clients.
    pub messages_in: IntCounter,
    /// Sessions closed because binary attachments they announced did not come in time.
    pub attachments_overdue: IntCounter,
    pub adapter: AdapterMetrics,
}

impl WorkerMetrics {
    pub fn new() -> Result<WorkerMetrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let adapter = AdapterMetrics {
            messages_out: counter(
                "edgepin_worker_messages_out_total",
                "Packets delivered to this worker's clients by room broadcasts",
            )?,
            up: gauge(
                "edgepin_worker_redis_up",
                "1 while the Redis adapter is connected and subscribed",
            )?,
            errors: counter(
                "edgepin_worker_redis_errors_total",
                "Failed Redis connects and publishes, and lost connections",
            )?,
            reconnects: counter(
                "edgepin_worker_redis_reconnects_total",
                "Redis connections re-established after a loss",
            )?,
            published: counter("edgepin_worker_redis_published_total", "Messages published to Redis")?,
            received: counter(
                "edgepin_worker_redis_received_total",
                "Messages received from Redis on the adapter's channels",
            )?,
            dropped: counter(
                "edgepin_worker_redis_dropped_total",
                "Messages not published: Redis down or publish queue full",
            )?,
            rejected: counter(
                "edgepin_worker_redis_rejected_total",
                "Messages from Redis that could not be decoded",
            )?,
        };
        Ok(WorkerMetrics {
            sockets: gauge("edgepin_worker_sockets", "Socket.IO sockets connected to this worker")?,
            rooms: gauge("edgepin_worker_rooms", "Rooms with a member on this worker")?,
            messages_in: counter(
                "edgepin_worker_messages_in_total",
                "Socket.IO events received from clients",
            )?,
            attachments_overdue: counter(
                "edgepin_worker_attachments_overdue_total",
                "Sessions closed because binary attachments they announced did not come in time",
            )?,
            adapter,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metrics, which registration rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed() {
        let m = WorkerMetrics::new().unwrap();
        m.sockets.set(3);
        m.adapter.up.set(1);
        let text = m.render();
        for name in [
            "edgepin_worker_sockets 3",
            "edgepin_worker_rooms 0",
            "edgepin_worker_messages_in_total 0",
            "edgepin_worker_attachments_overdue_total 0",
            "edgepin_worker_messages_out_total 0",
            "edgepin_worker_redis_up 1",
            "edgepin_worker_redis_errors_total 0",
            "edgepin_worker_redis_dropped_total 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
