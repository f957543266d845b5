//! The lot: where idle plain keep-alive connections wait for their next request. A
//! parked socket is taken out of tokio's reactor and put in an epoll set of the lot's
//! own (mio), which one task watches for all of them: the lot's epoll descriptor is
//! itself registered with tokio, so the proxy thread learns of a client's bytes in its
//! own event loop, with no thread of the lot's and no hand-over between threads. Per
//! connection the lot keeps the socket, its deadline and what the connection needs to
//! carry on (its cargo, a few words): no task, no timer and no tokio I/O registration,
//! about 900 bytes less per idle connection than a task of its own (`keepalive_idle` in
//! benches/README.md).
//!
//! When the client sends bytes (or closes), the socket leaves the lot and its cargo
//! [`Resume`]s, on the watching task: it must only start a task of its own and return.
//! At its deadline a socket is closed (one timer for the lot: the earliest deadline);
//! `Places` may close the one parked the longest for a newcomer ([`Lot::evict`]).
//! Entries are keyed by the places' park ids, which are never reused, so an event or an
//! eviction that comes late finds nothing.
//!
//! The watching task starts with the first park, on that park's runtime; if it ends (its
//! runtime shut down) the lot closes what it holds and takes nothing more, and
//! connections wait in tasks of their own. This module owns the sockets while they wait;
//! `h1::idle` decides what parks here.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// What a parked connection carries: given its socket back when the client sends.
pub trait Resume: Send {
    /// Called on the lot's task: start serving `socket` (parked until `until`) in a
    /// task of its own, and return.
    fn resume(self: Box<Self>, socket: TcpStream, until: Instant);
    /// The lot cannot hold it (nothing watches it any more, or epoll refused the
    /// socket): wait for the client some other way.
    fn refused(self: Box<Self>, socket: TcpStream, until: Instant);
}

/// Sockets waiting for their client, and what watches them.
pub struct Lot {
    registry: Registry,
    /// The epoll set, until the first park starts the task that watches it.
    unwatched: Mutex<Option<Poll>>,
    /// The watching task lives.
    watched: AtomicBool,
    /// Tells the task of a deadline earlier than the one it sleeps for.
    earlier: Notify,
    state: Mutex<State>,
}

impl std::fmt::Debug for Lot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lot")
            .field("parked", &self.state().spots.len())
            .field("watched", &self.watched.load(Relaxed))
            .finish()
    }
}

/// Events taken per turn of the watching task.
const EVENTS: usize = 256;

#[derive(Default)]
struct State {
    spots: BTreeMap<u64, Spot>,
    /// `(deadline, id)`, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// When the task wakes next on its own (`None`: not before an event).
    wakes_at: Option<Instant>,
}

struct Spot {
    socket: TcpStream,
    until: Instant,
    cargo: Box<dyn Resume>,
}

impl Lot {
    /// An empty lot; nothing watches it before its first park.
    pub fn new() -> io::Result<Lot> {
        let poll = Poll::new()?;
        Ok(Lot {
            registry: poll.registry().try_clone()?,
            unwatched: Mutex::new(Some(poll)),
            watched: AtomicBool::new(false),
            earlier: Notify::new(),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Park `socket` as `id` until `until` (call it inside a runtime); whether it is
    /// parked here (if not, its cargo was [`refused`](Resume::refused)).
    pub fn park(self: &Arc<Self>, id: u64, socket: TcpStream, until: Instant, cargo: Box<dyn Resume>) -> bool {
        if !self.watch() {
            cargo.refused(socket, until);
            return false;
        }
        let fd = socket.as_raw_fd();
        let mut state = self.state();
        // In the table before it is watched: an event for it may come at once.
        state.spots.insert(id, Spot { socket, until, cargo });
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), Token(id as usize), Interest::READABLE)
        {
            tracing::debug!(error = %e, "a parked connection cannot be watched");
            let spot = state.spots.remove(&id);
            drop(state);
            if let Some(spot) = spot {
                spot.cargo.refused(spot.socket, until);
            }
            return false;
        }
        state.deadlines.insert((until, id));
        if state.wakes_at.is_none_or(|at| until < at) {
            state.wakes_at = Some(until);
            drop(state);
            self.earlier.notify_one();
        }
        true
    }

    /// Close parked connection `id` if it is still parked here.
    pub fn evict(&self, id: u64) {
        let mut state = self.state();
        let spot = state.spots.remove(&id);
        if let Some(spot) = &spot {
            state.deadlines.remove(&(spot.until, id));
        }
        drop(state);
        // Closing the socket takes it out of the epoll set too.
        drop(spot);
    }

    /// Connections parked here now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state().spots.len()
    }

    /// Start the watching task unless it runs; whether one watches.
    fn watch(self: &Arc<Self>) -> bool {
        let poll = self.unwatched.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(poll) = poll {
            // Deprecated for a descriptor that could be closed or replaced while registered
            // (tokio#8587); the `Poll` owns its epoll descriptor and the `AsyncFd` owns the
            // `Poll`, so it is closed only after tokio let go of it.
            #[expect(deprecated, reason = "sound here: the AsyncFd owns the Poll that owns the fd")]
            let registered = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE);
            match registered {
                Ok(fd) => {
                    self.watched.store(true, Relaxed);
                    tokio::spawn(watch(Watching(Arc::clone(self)), fd));
                }
                Err(e) => tracing::warn!(error = %e, "idle connections wait in tasks: no lot"),
            }
        }
        self.watched.load(Relaxed)
    }

    /// Take the spots whose client sent something (`ready`), and those past their deadline;
    /// note when the task must wake next.
    fn take(&self, ready: impl Iterator<Item = u64>, now: Instant) -> Taken {
        let mut state = self.state();
        let mut taken = Taken::default();
        for id in ready {
            if let Some(spot) = state.spots.remove(&id) {
                state.deadlines.remove(&(spot.until, id));
                taken.ready.push(spot);
            }
        }
        while let Some(&(until, id)) = state.deadlines.first()
            && until <= now
        {
            state.deadlines.pop_first();
            taken.expired.extend(state.spots.remove(&id));
        }
        state.wakes_at = state.deadlines.first().map(|&(until, _)| until);
        taken
    }
}

/// What one turn of the task takes out of the lot.
#[derive(Default)]
struct Taken {
    ready: Vec<Spot>,
    expired: Vec<Spot>,
}

/// The watching task's hold on its lot: when the task ends, the lot takes nothing more
/// and closes what it holds.
struct Watching(Arc<Lot>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watched.store(false, Relaxed);
        let spots = std::mem::take(&mut self.0.state().spots);
        drop(spots);
    }
}

/// The watching task: waits for the lot's epoll set to have events (through tokio's
/// reactor), for the earliest deadline, or for news of an earlier one; hands sockets
/// back and closes expired ones outside the lock.
async fn watch(lot: Watching, mut fd: AsyncFd<Poll>) {
    let lot = &lot.0;
    let mut events = Events::with_capacity(EVENTS);
    loop {
        let wakes_at = lot.state().wakes_at;
        let deadline = async {
            match wakes_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        tracing::error!(error = %e, "the parked connections' poll failed");
                        return;
                    }
                    // A full batch may leave more: look again before waiting.
                    if events.iter().count() < EVENTS {
                        guard.clear_ready();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the parked connections cannot be watched");
                    return;
                }
            },
            () = deadline => {}
            () = lot.earlier.notified() => {}
        }
        let ready = events.iter().map(|e| e.token().0 as u64);
        let taken = lot.take(ready, Instant::now());
        events.clear();
        for spot in taken.ready {
            let _ = lot.registry.deregister(&mut SourceFd(&spot.socket.as_raw_fd()));
            spot.cargo.resume(spot.socket, spot.until);
        }
        drop(taken.expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use tokio::sync::mpsc;

    /// Test cargo: says which socket came back.
    struct Back(u64, mpsc::UnboundedSender<(u64, TcpStream)>);

    impl Resume for Back {
        fn resume(self: Box<Self>, socket: TcpStream, _until: Instant) {
            let _ = self.1.send((self.0, socket));
        }

        fn refused(self: Box<Self>, socket: TcpStream, _until: Instant) {
            // Tell it apart from a hand-back: a different id.
            let _ = self.1.send((self.0 + 1000, socket));
        }
    }

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    fn back(id: u64, tx: &mpsc::UnboundedSender<(u64, TcpStream)>) -> Box<dyn Resume> {
        Box::new(Back(id, tx.clone()))
    }

    #[tokio::test]
    async fn a_socket_comes_back_when_its_client_sends_with_the_bytes_unread() {
        let lot = Arc::new(Lot::new().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut quiet_client, quiet) = pair(&listener);
        let (mut client, server) = pair(&listener);
        let later = Instant::now() + Duration::from_secs(30);
        assert!(lot.park(1, quiet, later, back(1, &tx)));
        assert!(lot.park(2, server, later, back(2, &tx)));
        assert_eq!(lot.len(), 2);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        let (id, mut socket) = got.expect("handed back in time").expect("handed back");
        assert_eq!(id, 2, "only the socket whose client sent");
        assert_eq!(lot.len(), 1);
        socket.set_nonblocking(false).unwrap();
        let mut head = [0u8; 16];
        socket.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"GET / HTTP/1.1\r\n", "the lot reads nothing");
        // Evicting closes it: its client reads the end.
        lot.evict(1);
        assert_eq!(lot.len(), 0);
        quiet_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(quiet_client.read(&mut head).unwrap(), 0, "closed");
        lot.evict(1);
    }

    #[tokio::test]
    async fn a_socket_past_its_deadline_is_closed_and_an_earlier_deadline_wakes_the_task() {
        let lot = Arc::new(Lot::new().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_late_client, late) = pair(&listener);
        let (client, server) = pair(&listener);
        // The task sleeps for the later deadline first; the earlier one must wake it.
        let parked = Instant::now();
        assert!(lot.park(1, late, parked + Duration::from_secs(60), back(1, &tx)));
        tokio::task::yield_now().await;
        assert!(lot.park(2, server, parked + Duration::from_millis(100), back(2, &tx)));
        let mut client = tokio::net::TcpStream::from_std({
            client.set_nonblocking(true).unwrap();
            client
        })
        .unwrap();
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut client, &mut one),
        );
        assert_eq!(
            read.await.expect("closed in time").unwrap(),
            0,
            "closed at its deadline"
        );
        let waited = parked.elapsed();
        assert!(waited >= Duration::from_millis(100), "not before it: {waited:?}");
        assert!(waited < Duration::from_secs(3), "soon after it: {waited:?}");
        assert_eq!(lot.len(), 1, "the other waits on");
        assert!(rx.try_recv().is_err(), "nothing was handed back");
    }

    #[test]
    fn when_its_runtime_ends_the_lot_closes_what_it_holds_and_takes_no_more() {
        let lot = Arc::new(Lot::new().unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (mut client, server) = pair(&listener);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let until = Instant::now() + Duration::from_secs(60);
            assert!(lot.park(1, server, until, back(1, &tx)));
        });
        drop(runtime);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut one = [0u8; 1];
        assert_eq!(client.read(&mut one).unwrap(), 0, "closed with its runtime");
        let (_c, another) = pair(&listener);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let parked = runtime.block_on(async { lot.park(2, another, Instant::now(), back(2, &tx)) });
        assert!(!parked, "no task watches any more");
        assert_eq!(
            rx.try_recv().map(|(id, _)| id).ok(),
            Some(1002),
            "its cargo was refused, the socket with it"
        );
    }
}
