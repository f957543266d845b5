//! Housekeeping: on its own interval, ends the drains whose deadline passed (the server
//! is forgotten and its tunnels closed), closes upstream connections idle too long, and,
//! less often, sweeps idle sessions and those of forgotten servers out of the sid table.
//!
//! It owns only the timing; what expires is decided by the state it sweeps (`Registry`,
//! `SidTable`, the pool).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::runtime::Shared;

/// How often drain deadlines and idle upstream connections are looked at: a drain ends
/// at most this late, and the pool's `take` refuses an expired connection itself, so a
/// second is fine grained enough (every wakeup is one a proxy thread may feel).
const EVERY: Duration = Duration::from_secs(1);
/// How often idle sids are swept out.
const SWEEP_SIDS_EVERY: Duration = Duration::from_secs(5);

/// The housekeeping service of one proxy.
pub struct Housekeeping {
    pub shared: Arc<Shared>,
    /// The HTTP/1 engine's idle server connections.
    pub pool: Arc<crate::proxy::Pool>,
}

impl Housekeeping {
    /// Forget the servers a reload removed whose drain time is over, closing their open
    /// tunnels; returns how many.
    pub fn expire_drains(&self, now: Instant) -> usize {
        let gone = self.shared.registry.forget_expired(now);
        for server in &gone {
            let closed = server.tunnels.close_all();
            tracing::info!(server = %server.name, tunnels_closed = closed, "removed server's drain time is over");
        }
        gone.len()
    }

    /// Drop idle sids and those of servers whose drain time is over; returns how many.
    pub fn sweep_sids(&self, now: Instant) -> usize {
        self.shared.sids.sweep(|s| s.retired().is_some_and(|r| r.until <= now))
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(EVERY);
        let mut sids_swept = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            self.expire_drains(now);
            self.pool.sweep();
            if now.duration_since(sids_swept) >= SWEEP_SIDS_EVERY {
                sids_swept = now;
                self.sweep_sids(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn housekeeping() -> Housekeeping {
        let config = crate::config::parse(
            Path::new("t.yaml"),
            "listen: { http: 127.0.0.1:1 }\nroutes: [{ path_prefix: /, backend: api }]\n\
             backends: { api: { servers: [a, b] } }\nservers:\n  a: { address: 127.0.0.1:3001 }\n  b: { address: 127.0.0.1:3002 }\n",
        )
        .unwrap();
        Housekeeping {
            shared: Shared::new(config, None),
            pool: Arc::default(),
        }
    }

    #[test]
    fn a_drain_past_its_deadline_ends_with_its_tunnels_and_sessions() {
        let h = housekeeping();
        let registry = &h.shared.registry;
        let (a, b) = (registry.server("a", 1), registry.server("b", 1));
        let now = Instant::now();
        b.retire("127.0.0.1:3002".parse().unwrap(), now + Duration::from_secs(60));
        let ticket = b.tunnels.register();
        h.shared.sids.learn("on-a", &a);
        h.shared.sids.learn("on-b", &b);

        assert_eq!(h.expire_drains(now), 0, "still draining");
        assert_eq!(h.sweep_sids(now), 0);
        assert!(!ticket.closed_by_edge());

        let later = now + Duration::from_secs(61);
        assert_eq!(h.expire_drains(later), 1);
        assert!(ticket.closed_by_edge(), "its open tunnel is closed");
        assert!(!Arc::ptr_eq(&registry.server("b", 1), &b), "b is forgotten");
        assert!(Arc::ptr_eq(&registry.server("a", 1), &a), "a stays");
        assert_eq!(h.sweep_sids(later), 1, "b's session goes");
        assert!(h.shared.sids.lookup("on-a").is_some());
        assert!(h.shared.sids.lookup("on-b").is_none());
    }
}
