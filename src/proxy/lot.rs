//! The lot: where idle plain keep-alive connections wait for their next request, outside
//! the runtime. A parked socket is taken out of tokio's reactor and watched by one thread
//! with an epoll set of its own (mio). Per connection the lot keeps the socket, its
//! deadline and what the connection needs to carry on (its cargo, a few words): no task,
//! no timer and no tokio I/O registration, about 900 bytes less per idle connection than
//! a task of its own (`keepalive_idle` in benches/README.md).
//!
//! When the client sends bytes (or closes), the socket leaves the lot and its cargo
//! [`Resume`]s it, on the lot's thread: it must only hand the socket to a runtime. At its
//! deadline a socket is closed; [`Places`](super::places::Places) may close the one
//! parked the longest for a newcomer ([`Evict`]). Entries are keyed by the places' park
//! ids, which are never reused, so an event or an eviction that comes late finds nothing.
//!
//! This module owns the sockets while they wait; `h1::idle` decides what parks here.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

/// What a parked connection carries: given its socket back when the client sends.
pub trait Resume: Send + 'static {
    /// Called on the lot's thread: hand the socket (parked until `until`) to a runtime
    /// and return.
    fn resume(self, socket: TcpStream, until: Instant);
}

/// Closes a parked connection for a newcomer (see `Places`).
pub trait Evict: Send + Sync {
    /// Close parked connection `id` if it is still parked here.
    fn evict(&self, id: u64);
}

/// Sockets waiting for their client, and the thread that watches them.
pub struct Lot<C> {
    registry: Registry,
    /// Wakes the thread: an earlier deadline than it sleeps for, or the lot dropped.
    waker: Waker,
    state: Mutex<State<C>>,
}

/// The waker's token; a socket's token is its park id + 1.
const WAKE: Token = Token(0);
/// Events taken per wake-up of the thread.
const EVENTS: usize = 256;
/// The pause after a failed poll.
const POLL_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

struct State<C> {
    spots: BTreeMap<u64, Spot<C>>,
    /// `(deadline, id)`, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// When the thread wakes next on its own (`None`: not before an event).
    wakes_at: Option<Instant>,
}

struct Spot<C> {
    socket: TcpStream,
    until: Instant,
    cargo: C,
}

impl<C: Resume> Lot<C> {
    /// A lot and its thread (named `name`); the thread ends when the lot is dropped.
    pub fn start(name: &str) -> io::Result<Arc<Lot<C>>> {
        let poll = Poll::new()?;
        let lot = Arc::new(Lot {
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE)?,
            state: Mutex::new(State {
                spots: BTreeMap::new(),
                deadlines: BTreeSet::new(),
                wakes_at: None,
            }),
        });
        let weak = Arc::downgrade(&lot);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || watch(poll, &weak))?;
        Ok(lot)
    }

    fn state(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Park `socket` as `id` until `until`. Given back with its cargo if it cannot be
    /// watched (the caller waits for it some other way).
    pub fn park(&self, id: u64, socket: TcpStream, until: Instant, cargo: C) -> Result<(), (TcpStream, C)> {
        let fd = socket.as_raw_fd();
        let mut state = self.state();
        // In the table before it is watched: an event for it may come at once.
        state.spots.insert(id, Spot { socket, until, cargo });
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token(id), Interest::READABLE)
        {
            tracing::debug!(error = %e, "a parked connection cannot be watched");
            let spot = state.spots.remove(&id).expect("inserted above");
            return Err((spot.socket, spot.cargo));
        }
        state.deadlines.insert((until, id));
        if state.wakes_at.is_none_or(|at| until < at) {
            state.wakes_at = Some(until);
            drop(state);
            let _ = self.waker.wake();
        }
        Ok(())
    }

    /// Connections parked here now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state().spots.len()
    }

    /// Take the spots whose client sent something (`ready`), and those past their deadline;
    /// note when the thread must wake next.
    fn take(&self, ready: impl Iterator<Item = u64>, now: Instant) -> Taken<C> {
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
        taken.wakes_at = state.wakes_at;
        taken
    }
}

impl<C: Send> Evict for Lot<C> {
    fn evict(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let spot = state.spots.remove(&id);
        if let Some(spot) = &spot {
            state.deadlines.remove(&(spot.until, id));
        }
        drop(state);
        // Closing the socket takes it out of the epoll set too.
        drop(spot);
    }
}

impl<C> Drop for Lot<C> {
    fn drop(&mut self) {
        // The thread finds the lot gone and ends.
        let _ = self.waker.wake();
    }
}

/// What one wake-up of the thread takes out of the lot.
struct Taken<C> {
    ready: Vec<Spot<C>>,
    expired: Vec<Spot<C>>,
    wakes_at: Option<Instant>,
}

impl<C> Default for Taken<C> {
    fn default() -> Self {
        Taken {
            ready: Vec::new(),
            expired: Vec::new(),
            wakes_at: None,
        }
    }
}

fn token(id: u64) -> Token {
    Token(id as usize + 1)
}

/// The lot's thread: sleeps in epoll until a client sends, a deadline passes or it is
/// woken; hands sockets back and closes expired ones outside the lock.
fn watch<C: Resume>(mut poll: Poll, lot: &Weak<Lot<C>>) {
    let mut events = Events::with_capacity(EVENTS);
    let mut wakes_at: Option<Instant> = None;
    loop {
        let timeout = wakes_at.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            // Not expected (epoll_wait fails only on bad arguments); keep sweeping
            // deadlines rather than leave the parked connections unwatched.
            tracing::error!(error = %e, "the parked connections' poll failed");
            events.clear();
            std::thread::sleep(POLL_RETRY);
        }
        let Some(lot) = lot.upgrade() else {
            return;
        };
        let ready = events
            .iter()
            .filter(|e| e.token() != WAKE)
            .map(|e| e.token().0 as u64 - 1);
        let taken = lot.take(ready, Instant::now());
        wakes_at = taken.wakes_at;
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
    use std::sync::mpsc;
    use std::time::Duration;

    /// Test cargo: says which socket came back.
    struct Back(u64, mpsc::Sender<(u64, TcpStream)>);

    impl Resume for Back {
        fn resume(self, socket: TcpStream, _until: Instant) {
            let _ = self.1.send((self.0, socket));
        }
    }

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server)
    }

    #[test]
    fn a_socket_comes_back_when_its_client_sends_with_the_bytes_unread() {
        let lot = Lot::<Back>::start("lot-test").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = mpsc::channel();
        let (mut quiet_client, quiet) = pair(&listener);
        let (mut client, server) = pair(&listener);
        let later = Instant::now() + Duration::from_secs(30);
        assert!(lot.park(1, quiet, later, Back(1, tx.clone())).is_ok());
        assert!(lot.park(2, server, later, Back(2, tx)).is_ok());
        assert_eq!(lot.len(), 2);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let (id, mut socket) = rx.recv_timeout(Duration::from_secs(5)).expect("handed back");
        assert_eq!(id, 2, "only the socket whose client sent");
        assert_eq!(lot.len(), 1);
        socket.set_nonblocking(false).unwrap();
        let mut got = [0u8; 16];
        socket.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n", "the lot reads nothing");
        // Evicting closes it: its client reads the end.
        lot.evict(1);
        assert_eq!(lot.len(), 0);
        quiet_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(quiet_client.read(&mut got).unwrap(), 0, "closed");
        lot.evict(1);
    }

    #[test]
    fn a_socket_past_its_deadline_is_closed_and_an_earlier_deadline_wakes_the_thread() {
        let lot = Lot::<Back>::start("lot-test").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = mpsc::channel();
        let (_late_client, late) = pair(&listener);
        let (mut client, server) = pair(&listener);
        // The thread sleeps for the later deadline first; the earlier one must wake it.
        let parked = Instant::now();
        assert!(
            lot.park(1, late, parked + Duration::from_secs(60), Back(1, tx.clone()))
                .is_ok()
        );
        assert!(
            lot.park(2, server, parked + Duration::from_millis(100), Back(2, tx))
                .is_ok()
        );
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 1];
        assert_eq!(client.read(&mut got).unwrap(), 0, "closed at its deadline");
        let waited = parked.elapsed();
        assert!(waited >= Duration::from_millis(100), "not before it: {waited:?}");
        assert!(waited < Duration::from_secs(3), "soon after it: {waited:?}");
        assert_eq!(lot.len(), 1, "the other waits on");
        assert!(rx.try_recv().is_err(), "nothing was handed back");
    }

    #[test]
    fn dropping_the_lot_closes_what_it_holds() {
        let lot = Lot::<Back>::start("lot-test").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, _rx) = mpsc::channel();
        let (mut client, server) = pair(&listener);
        assert!(
            lot.park(1, server, Instant::now() + Duration::from_secs(60), Back(1, tx))
                .is_ok()
        );
        drop(lot);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 1];
        assert_eq!(client.read(&mut got).unwrap(), 0, "closed with the lot");
    }
}
