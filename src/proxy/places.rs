//! The proxy's places for client connections (`limits.max_connections`, or fewer if the
//! file descriptor limit cannot hold that many): who gets one at once, who may wait and
//! for how long, and which idle keep-alive connection gives its place up to a newcomer.
//!
//! A connection that has been idle for a moment is parked (`h1::idle`): it registers
//! here, oldest first. When a new connection finds every place taken, the longest-parked
//! connection is closed to make room (as the stats listener's `slots` do), and while it
//! waits it looks again every [`EVICT_EVERY`]. So idle keep-alive connections cannot lock
//! new clients out for their keep-alive time; a connection serving a request is never
//! closed for a newcomer. The waiters are counted by a guard, so a waiter that gives up
//! or is dropped is never left counted.
//!
//! This module decides and signals; the frontend, the HTTP/1 engine and the lot it keeps
//! (`proxy::lot`, where idle plain connections wait) own the sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use super::lot::Lot;
use crate::state::FrontendCounters;

/// The places, their waiters, and the parked connections that may be closed for them.
#[derive(Debug)]
pub struct Places {
    /// One per connection served (HTTP/2 streams in flight take one too).
    permits: Arc<Semaphore>,
    /// Connections waiting for a place now, at most `max_waiting`.
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Longest wait for a place before the connection is closed.
    wait: Duration,
    parked: Mutex<ParkedTable>,
    /// Where idle plain connections wait (`proxy::lot`); `None` if it could not be made.
    lot: Option<Arc<Lot>>,
}

/// How often a waiter looks again for a parked connection to close (one may park, or
/// the place freed for it may go to an earlier waiter).
const EVICT_EVERY: Duration = Duration::from_millis(100);

/// Parked connections by the order they parked; `None` until it is known who closes them.
#[derive(Debug, Default)]
struct ParkedTable {
    next: u64,
    tasks: BTreeMap<u64, Option<Closer>>,
}

/// Who closes a parked connection: its task, or the lot it waits in.
#[derive(Debug)]
pub enum Closer {
    Task(AbortHandle),
    Lot,
}

/// One waiter, counted while it lives.
struct Waiter<'a>(&'a AtomicUsize);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A parked connection's entry: removed when the connection stops being parked (it
/// got bytes, timed out, or was closed for a newcomer).
#[derive(Debug)]
pub struct Parked {
    places: Arc<Places>,
    id: u64,
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.places.table().tasks.remove(&self.id);
    }
}

impl Places {
    pub fn new(permits: Arc<Semaphore>, max_waiting: usize, wait: Duration) -> Places {
        Places {
            permits,
            waiting: AtomicUsize::new(0),
            max_waiting,
            wait,
            parked: Mutex::new(ParkedTable::default()),
            lot: Lot::new()
                .inspect_err(|e| tracing::warn!(error = %e, "idle connections wait in tasks: no lot"))
                .ok()
                .map(Arc::new),
        }
    }

    /// Where idle plain connections wait, if anywhere.
    pub fn lot(&self) -> Option<&Arc<Lot>> {
        self.lot.as_ref()
    }

    fn table(&self) -> MutexGuard<'_, ParkedTable> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place at once; or, when all are taken, the longest-parked connection closed to
    /// make room, and a bounded wait among a bounded number of waiters.
    pub async fn admit(&self, counters: &FrontendCounters) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        let Some(_waiter) = self.enter_waiting() else {
            counters.connections_refused.inc();
            return None;
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            // A connection that parks meanwhile is closed at the next round.
            self.close_longest_parked();
            let round = deadline.min(tokio::time::Instant::now() + EVICT_EVERY);
            match tokio::time::timeout_at(round, Arc::clone(&self.permits).acquire_owned()).await {
                Ok(Ok(p)) => return Some(p),
                Err(_) if round < deadline => {}
                _ => {
                    counters.connections_refused.inc();
                    return None;
                }
            }
        }
    }

    fn enter_waiting(&self) -> Option<Waiter<'_>> {
        let waiter = Waiter(&self.waiting);
        (self.waiting.fetch_add(1, Relaxed) < self.max_waiting).then_some(waiter)
    }

    /// Connections waiting for a place now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Register a connection about to park; who closes it is armed with [`Places::arm`].
    pub fn park(self: &Arc<Self>) -> Parked {
        let mut t = self.table();
        let id = t.next;
        t.next += 1;
        t.tasks.insert(id, None);
        Parked {
            places: Arc::clone(self),
            id,
        }
    }

    /// Who closes parked connection `id` (unless it already stopped being parked).
    pub fn arm(&self, id: u64, closer: Closer) {
        if let Some(slot) = self.table().tasks.get_mut(&id) {
            *slot = Some(closer);
        }
    }

    /// Close the connection parked the longest, if any is; whether one was.
    pub fn close_longest_parked(&self) -> bool {
        let mut t = self.table();
        let Some(id) = t.tasks.iter().find(|(_, task)| task.is_some()).map(|(&id, _)| id) else {
            return false;
        };
        let closer = t.tasks.remove(&id).flatten();
        // Closing drops the connection's `Parked`, which takes this lock.
        drop(t);
        match closer {
            Some(Closer::Task(task)) => task.abort(),
            Some(Closer::Lot) => self.lot.iter().for_each(|lot| lot.evict(id)),
            None => {}
        }
        true
    }

    /// Connections parked now.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.table().tasks.len()
    }
}

impl Parked {
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(n: usize, max_waiting: usize) -> Arc<Places> {
        Arc::new(Places::new(
            Arc::new(Semaphore::new(n)),
            max_waiting,
            Duration::from_millis(200),
        ))
    }

    #[tokio::test]
    async fn a_newcomer_at_the_limit_closes_the_longest_parked_connection() {
        let p = places(2, 4);
        let counters = FrontendCounters::default();
        let mut held = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let permit = p.admit(&counters).await.expect("a place");
            let parked = p.park();
            let id = parked.id();
            let task = tokio::spawn(async move {
                let _hold = (permit, parked);
                std::future::pending::<()>().await;
            });
            p.arm(id, Closer::Task(task.abort_handle()));
            held.push(id);
            tasks.push(task);
        }
        assert_eq!(p.parked(), 2);
        let third = tokio::time::timeout(Duration::from_secs(2), p.admit(&counters)).await;
        assert!(matches!(third, Ok(Some(_))), "the newcomer got a place");
        let first = tasks.remove(0).await;
        assert!(first.is_err_and(|e| e.is_cancelled()), "the first parked was closed");
        assert_eq!(p.parked(), 1, "the other stays");
        assert_eq!(p.waiting(), 0, "nobody waits any more");
    }

    #[tokio::test]
    async fn busy_connections_are_never_closed_and_the_waiter_count_is_exact() {
        let p = places(1, 1);
        let counters = FrontendCounters::default();
        let _busy = p.admit(&counters).await.expect("a place");
        assert!(!p.close_longest_parked(), "nothing parked");
        // A waiter that times out, and one dropped while waiting, leave no count behind.
        assert!(p.admit(&counters).await.is_none());
        let dropped = tokio::time::timeout(Duration::from_millis(20), p.admit(&counters)).await;
        assert!(dropped.is_err());
        assert_eq!(p.waiting(), 0);
        // Over `max_waiting`, refused at once.
        let p2 = Arc::clone(&p);
        let c2 = FrontendCounters::default();
        let waiting = tokio::spawn(async move { p2.admit(&c2).await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.waiting(), 1);
        assert!(p.admit(&counters).await.is_none());
        assert!(!waiting.await.unwrap());
        assert_eq!(
            counters.connections_refused.get(),
            2,
            "the timed-out waiter and the one over the bound"
        );
    }

    #[tokio::test]
    async fn a_parked_entry_leaves_with_its_connection() {
        let p = places(4, 4);
        let parked = p.park();
        assert_eq!(p.parked(), 1);
        assert!(!p.close_longest_parked(), "not armed yet: nothing to close");
        drop(parked);
        assert_eq!(p.parked(), 0);
        let gone = p.park();
        let id = gone.id();
        drop(gone);
        let task = tokio::spawn(async {});
        p.arm(id, Closer::Task(task.abort_handle()));
        assert_eq!(p.parked(), 0, "arming a connection that stopped parking adds nothing");
    }
}
