//! Who holds the stats listener's connection slots and which of them may be let go: a
//! table of the open connections with what each is doing (waiting for its first request
//! head, idle between requests, or serving a request), the deadline of each idle one,
//! and whom to close when a new connection finds every slot taken — the connection idle
//! the longest, never one serving a request. So silent or slow clients cannot starve
//! `/health`: each new connection pushes out the stalest idle one, and an idle one dies at
//! its deadline anyway.
//!
//! A request is in progress from the moment its head is complete until its answer's body
//! has been handed to the socket; a connection still sending a head is idle. This module
//! decides and signals; `listener` owns the sockets and closes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection may stay idle.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From accept to a complete first request head; and from the first byte of a later
    /// head to its end.
    pub head: Duration,
    /// From the end of an answer to the first byte of the next request.
    pub keepalive: Duration,
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted, first request head not complete yet.
    Fresh,
    /// Between requests, no byte of the next one yet.
    KeepAlive,
    /// Between requests, the next head started arriving then.
    Head { started: Instant },
    /// Serving this many requests (a complete head, answer not yet handed over).
    Busy { requests: u32 },
}

#[derive(Debug)]
struct Entry {
    peer: SocketAddr,
    /// When it last became idle (accept, or the end of its last answer).
    since: Instant,
    phase: Phase,
    /// Wakes the connection's task when its phase or deadline changed, or it was evicted.
    wake: Arc<Notify>,
}

impl Entry {
    fn deadline(&self, d: Deadlines) -> Option<Instant> {
        match self.phase {
            Phase::Fresh => Some(self.since + d.head),
            Phase::KeepAlive => Some(self.since + d.keepalive),
            Phase::Head { started } => Some(started + d.head),
            Phase::Busy { .. } => None,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

/// The slots of one listener.
#[derive(Debug)]
pub struct Slots {
    capacity: usize,
    deadlines: Deadlines,
    table: Mutex<Table>,
}

/// The answer to a new connection.
#[derive(Debug)]
pub enum Admission {
    /// It has a slot; `evicted` names the idle connection closed to make room, if any.
    Admitted { slot: Slot, evicted: Option<SocketAddr> },
    /// Every slot serves a request: the new connection must be closed.
    Full,
}

/// What a connection's task should wait for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Idle: close it at this instant unless something changes first.
    Until(Instant),
    /// Serving a request: no deadline here.
    Busy,
    /// Its slot was taken away (evicted or expired): close it now.
    Gone,
}

impl Slots {
    pub fn new(capacity: usize, deadlines: Deadlines) -> Arc<Slots> {
        Arc::new(Slots {
            capacity,
            deadlines,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Give a slot to a connection from `peer` accepted at `now`, closing the connection
    /// idle the longest when every slot is taken.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, now: Instant) -> Admission {
        let mut t = self.table();
        let mut evicted = None;
        if t.entries.len() >= self.capacity {
            let stalest = t
                .entries
                .iter()
                .filter(|(_, e)| !matches!(e.phase, Phase::Busy { .. }))
                .min_by_key(|(_, e)| e.since)
                .map(|(&id, _)| id);
            let Some(id) = stalest else {
                return Admission::Full;
            };
            if let Some(e) = t.entries.remove(&id) {
                e.wake.notify_one();
                evicted = Some(e.peer);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let wake = Arc::new(Notify::new());
        t.entries.insert(
            id,
            Entry {
                peer,
                since: now,
                phase: Phase::Fresh,
                wake: Arc::clone(&wake),
            },
        );
        Admission::Admitted {
            slot: Slot {
                slots: Arc::clone(self),
                id,
                wake,
            },
            evicted,
        }
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table().entries.len()
    }
}

/// One connection's hold on a slot. Clones share it; [`Slot::release`] gives it back.
#[derive(Debug, Clone)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    wake: Arc<Notify>,
}

impl Slot {
    /// What to wait for next.
    pub fn watch(&self) -> Watch {
        let t = self.slots.table();
        match t.entries.get(&self.id) {
            None => Watch::Gone,
            Some(e) => e.deadline(self.slots.deadlines).map_or(Watch::Busy, Watch::Until),
        }
    }

    /// Resolves when the phase, deadline or hold of this slot changed since the last call.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// A request head is complete: the connection is busy until the guard drops.
    pub fn request_started(&self) -> Busy {
        let mut t = self.slots.table();
        if let Some(e) = t.entries.get_mut(&self.id) {
            e.phase = match e.phase {
                Phase::Busy { requests } => Phase::Busy { requests: requests + 1 },
                _ => Phase::Busy { requests: 1 },
            };
            e.wake.notify_one();
        }
        Busy { slot: self.clone() }
    }

    fn request_ended(&self, now: Instant) {
        let mut t = self.slots.table();
        if let Some(e) = t.entries.get_mut(&self.id) {
            match e.phase {
                Phase::Busy { requests } if requests > 1 => e.phase = Phase::Busy { requests: requests - 1 },
                _ => {
                    e.phase = Phase::KeepAlive;
                    e.since = now;
                }
            }
            e.wake.notify_one();
        }
    }

    /// Bytes arrived: between requests, they start the next head's deadline.
    pub fn bytes_arrived(&self, now: Instant) {
        let mut t = self.slots.table();
        if let Some(e) = t.entries.get_mut(&self.id)
            && e.phase == Phase::KeepAlive
        {
            e.phase = Phase::Head { started: now };
            e.wake.notify_one();
        }
    }

    /// Take the slot away if the connection is still idle past its deadline at `now`;
    /// whether it was.
    pub fn expire(&self, now: Instant) -> bool {
        let mut t = self.slots.table();
        let due = t
            .entries
            .get(&self.id)
            .and_then(|e| e.deadline(self.slots.deadlines))
            .is_some_and(|at| at <= now);
        if due {
            t.entries.remove(&self.id);
        }
        due
    }

    /// Give the slot back (the connection is closed).
    pub fn release(&self) {
        self.slots.table().entries.remove(&self.id);
    }
}

/// A request in progress; dropping it (when the answer's body is handed over) makes the
/// connection idle again.
#[derive(Debug)]
pub struct Busy {
    slot: Slot,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slot.request_ended(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Deadlines = Deadlines {
        head: Duration::from_secs(5),
        keepalive: Duration::from_secs(30),
    };

    fn peer(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    fn admit(slots: &Arc<Slots>, n: u16, now: Instant) -> (Slot, Option<SocketAddr>) {
        match slots.admit(peer(n), now) {
            Admission::Admitted { slot, evicted } => (slot, evicted),
            Admission::Full => panic!("connection {n} refused"),
        }
    }

    #[test]
    fn a_full_table_closes_the_connection_idle_the_longest_and_never_a_busy_one() {
        let slots = Slots::new(3, D);
        // In the past, so that "now" (when an answer ends) comes after every accept below.
        let t0 = Instant::now() - Duration::from_secs(10);
        let (a, _) = admit(&slots, 1, t0);
        let (_b, _) = admit(&slots, 2, t0 + Duration::from_millis(1));
        let (c, _) = admit(&slots, 3, t0 + Duration::from_millis(2));
        let busy_a = a.request_started();
        let (_d, evicted) = admit(&slots, 4, t0 + Duration::from_millis(3));
        assert_eq!(evicted, Some(peer(2)), "a serves a request; b is the stalest idle one");
        assert_eq!(a.watch(), Watch::Busy);
        drop(busy_a);
        assert!(matches!(a.watch(), Watch::Until(_)), "a is idle again, since now");
        let (_e, evicted) = admit(&slots, 5, t0 + Duration::from_millis(4));
        assert_eq!(evicted, Some(peer(3)), "c has been idle since before a's answer");
        assert_eq!(c.watch(), Watch::Gone);
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn when_every_slot_serves_a_request_the_new_connection_is_refused() {
        let slots = Slots::new(2, D);
        let now = Instant::now();
        let (a, _) = admit(&slots, 1, now);
        let (b, _) = admit(&slots, 2, now);
        let _busy = (a.request_started(), b.request_started());
        assert!(matches!(slots.admit(peer(3), now), Admission::Full));
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let slots = Slots::new(4, D);
        let t0 = Instant::now();
        let (s, _) = admit(&slots, 1, t0);
        assert_eq!(s.watch(), Watch::Until(t0 + D.head), "first head: 5 s from accept");
        s.bytes_arrived(t0 + Duration::from_secs(1));
        assert_eq!(
            s.watch(),
            Watch::Until(t0 + D.head),
            "bytes do not extend the first head"
        );
        let busy = s.request_started();
        assert!(
            !s.expire(t0 + Duration::from_secs(3600)),
            "a busy connection never expires"
        );
        drop(busy);
        let Watch::Until(idle_until) = s.watch() else {
            panic!("idle after the answer")
        };
        let ended = idle_until - D.keepalive;
        s.bytes_arrived(ended + Duration::from_secs(20));
        assert_eq!(
            s.watch(),
            Watch::Until(ended + Duration::from_secs(20) + D.head),
            "a started head has 5 s to finish"
        );
        assert!(!s.expire(ended + Duration::from_secs(24)));
        assert!(s.expire(ended + Duration::from_secs(25)));
        assert_eq!(s.watch(), Watch::Gone);
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn release_frees_the_slot_and_late_guards_do_nothing() {
        let slots = Slots::new(1, D);
        let (s, _) = admit(&slots, 1, Instant::now());
        let busy = s.request_started();
        s.release();
        drop(busy);
        assert_eq!(slots.len(), 0);
        let (_t, evicted) = admit(&slots, 2, Instant::now());
        assert_eq!(evicted, None);
    }
}
