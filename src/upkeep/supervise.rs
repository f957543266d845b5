//! When a supervisor (of the check loops, of the discovery loops) looks at the config
//! again: at once, after every install of a new snapshot, and at a slow fallback period
//! (a loop that ended on its own is restarted then). It owns only that timing: polling
//! four times a second woke a background thread 8 times a second for nothing.

use std::time::Duration;

use pingora::server::ShutdownWatch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::runtime::Shared;

/// The longest a supervisor waits without an install.
const FALLBACK: Duration = Duration::from_secs(5);

/// Call `supervise` now, after each install and at least every [`FALLBACK`], until
/// `shutdown` changes.
pub async fn on_installs(shared: &Shared, shutdown: &mut ShutdownWatch, mut supervise: impl FnMut()) {
    let mut installs = shared.installs();
    let mut fallback = tokio::time::interval_at(Instant::now() + FALLBACK, FALLBACK);
    fallback.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        installs.mark_unchanged();
        supervise();
        tokio::select! {
            changed = installs.changed() => if changed.is_err() { break },
            _ = fallback.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    #[tokio::test(start_paused = true)]
    async fn supervises_at_start_after_each_install_and_at_the_fallback_only() {
        let text = "listen: { http: 127.0.0.1:1 }\nroutes: [{ path_prefix: /, backend: api }]\n\
                    backends: { api: { servers: [a] } }\nservers: { a: { address: 127.0.0.1:3001 } }\n";
        let config = crate::config::parse(Path::new("t.yaml"), text).unwrap();
        let shared = Shared::new(config.clone(), None);
        let (stop, mut shutdown) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (shared, calls) = (Arc::clone(&shared), Arc::clone(&calls));
            async move { on_installs(&shared, &mut shutdown, || _ = calls.fetch_add(1, Relaxed)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls.load(Relaxed), 1, "once at start");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Relaxed), 1, "no polling between installs");
        shared.install(shared.build(&config));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(calls.load(Relaxed), 2, "after an install");
        tokio::time::sleep(FALLBACK).await;
        assert_eq!(calls.load(Relaxed), 3, "at the fallback period");
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
