//! How background services share a CPU with the proxy threads.
//!
//! pingora runs each background service (checks, housekeeping, discovery, reload, stats,
//! ACME, the shared sid link) on a thread of its own. Left at the default policy, every
//! wakeup of one of them (a check, a sampler tick) may preempt a proxy thread in the
//! middle of a request on the same CPU, and that is what made edgepin's p99 move beside a
//! busy neighbour while HAProxy's, whose checks run inside its one event loop, did not.
//!
//! [`background`] wraps a service so that its thread (and the threads it starts, which
//! inherit the policy) runs under `SCHED_BATCH`: the scheduler never lets a batch thread's
//! wakeup preempt a running normal thread, yet the thread keeps its full fair share of
//! CPU time, so a health check still meets its deadline on a saturated machine (unlike
//! `SCHED_IDLE`, which could starve it there). This module decides nothing else.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{BackgroundService, GenBackgroundService, background_service};
use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};

/// A background service whose thread gives way to the proxy threads.
pub struct GivesWay<S>(S);

#[async_trait]
impl<S: BackgroundService + Send + Sync> BackgroundService for GivesWay<S> {
    async fn start(&self, shutdown: ShutdownWatch) {
        give_way();
        self.0.start(shutdown).await
    }
}

/// `service` as a pingora background service named `name`, on a thread that gives way to
/// the proxy threads.
pub fn background<S: BackgroundService + Send + Sync + 'static>(
    name: &str,
    service: S,
) -> GenBackgroundService<GivesWay<S>> {
    background_service(name, GivesWay(service))
}

/// Put the calling thread under `SCHED_BATCH` (nice unchanged). A refusal (a seccomp
/// profile, a platform without it) is logged and costs nothing else.
pub fn give_way() {
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let thread = thread_priority::thread_native_id();
    if let Err(error) = thread_priority::set_thread_priority_and_policy(thread, ThreadPriority::Min, batch) {
        tracing::debug!(?error, "background thread keeps the default scheduling policy");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_thread_runs_as_batch_and_threads_it_starts_inherit_it() {
        let policy = std::thread::spawn(|| {
            give_way();
            let own = thread_priority::thread_schedule_policy().unwrap();
            let child = std::thread::spawn(|| thread_priority::thread_schedule_policy().unwrap())
                .join()
                .unwrap();
            (own, child)
        })
        .join()
        .unwrap();
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        assert_eq!(policy, (batch, batch));
        // The test's own thread is untouched.
        assert_eq!(
            thread_priority::thread_schedule_policy().unwrap(),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
    }
}
