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
//! `SCHED_IDLE`, which could starve it there). A service that requests wait on (the
//! shared sid table's Redis link) must not use it: its wakeups are the request's.
//! This module decides nothing else.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{BackgroundService, GenBackgroundService, background_service};
use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy};

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

/// Put the calling thread under `SCHED_BATCH` at nice 0, the proxy threads' weight (a
/// higher nice would starve the checks on a saturated machine). A refusal (a seccomp
/// profile, a platform without it) is logged and costs nothing else.
pub fn give_way() {
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let thread = thread_priority::thread_native_id();
    let result = ThreadPriorityValue::try_from(NICE_0)
        .map_err(|_| thread_priority::Error::Priority("no portable value for nice 0"))
        .and_then(|p| thread_priority::set_thread_priority_and_policy(thread, ThreadPriority::Crossplatform(p), batch));
    if let Err(error) = result {
        tracing::debug!(?error, "background thread keeps the default scheduling policy");
    }
}

/// thread-priority's portable value for nice 0: it maps 0..=99 onto nice 19..=-20.
const NICE_0: u8 = 48;

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's nice value (field 19 of /proc/thread-self/stat).
    fn nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn a_background_thread_runs_as_batch_at_nice_0_and_threads_it_starts_inherit_it() {
        let seen = std::thread::spawn(|| {
            give_way();
            let own = (thread_priority::thread_schedule_policy().unwrap(), nice());
            let child = std::thread::spawn(|| (thread_priority::thread_schedule_policy().unwrap(), nice()))
                .join()
                .unwrap();
            (own, child)
        })
        .join()
        .unwrap();
        let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        assert_eq!(seen, ((batch, 0), (batch, 0)));
        // The test's own thread is untouched.
        assert_eq!(
            thread_priority::thread_schedule_policy().unwrap(),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
        );
    }
}
