//! Where the streams of an HTTP/2 connection get their server connections. A client
//! connection is one place among `limits.max_connections`, as in HAProxy and nginx, and
//! that place covers one server connection (its two descriptors are reserved in the
//! connection cap). A stream that needs a server while another stream of the same
//! connection holds one takes a place of its own, as nginx counts upstream connections
//! in `worker_connections`; so every server connection stays inside the descriptor
//! budget, however many streams a client opens.
//!
//! What one client may hold is capped twice: per connection
//! (`limits.h2_streams_per_connection`: more streams wait their turn, as requests wait
//! for a server slot, up to `timeouts.queue`) and per client address over all its
//! connections, beyond the one stream each connection's own place covers
//! (`limits.h2_streams_per_client`: more get 503 at once). Without them, four
//! connections of 128 streams whose client grants no flow-control window held 512 places
//! and locked every new client out.
//!
//! A stream holds its place only while it holds a server connection (an answer read
//! whole is held no longer; a stalled one is cut at the engine's stall deadline). The
//! decision ([`admit`]) is a plain function; [`ServerPlace`] gives everything back on drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Process-wide: the frontend's places and what each client address holds beyond its
/// connections' own places.
#[derive(Debug)]
pub struct Places {
    /// The frontend's places (`limits.max_connections`).
    frontend: Arc<Semaphore>,
    /// Streams at servers per client address, beyond the first of each connection.
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// What one connection's streams share.
#[derive(Debug)]
pub struct ConnPlaces {
    places: Arc<Places>,
    client: Option<IpAddr>,
    /// The connection's own place covers one server connection: not in use now.
    own_free: AtomicBool,
    /// `limits.h2_streams_per_connection` turns.
    turns: Arc<Semaphore>,
    per_client: usize,
}

/// Which place a stream's server connection takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The connection's own.
    Own,
    /// A place of its own among `max_connections`.
    Extra,
    /// Refused (503): the client holds `h2_streams_per_client` already, or no place is
    /// left.
    Refused(&'static str),
}

/// Decide where a stream's server connection goes: the connection's own place when no
/// other stream holds it, else an extra place while the client address is under its cap
/// and a place is free.
pub fn admit(own_free: bool, client_extras: usize, per_client: usize, place_free: bool) -> Admission {
    if own_free {
        Admission::Own
    } else if client_extras >= per_client {
        Admission::Refused("too many HTTP/2 streams from this address")
    } else if !place_free {
        Admission::Refused("too many connections")
    } else {
        Admission::Extra
    }
}

impl Places {
    pub fn new(frontend: Arc<Semaphore>) -> Arc<Places> {
        Arc::new(Places {
            frontend,
            by_client: Mutex::new(HashMap::new()),
        })
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_client.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The places of a new connection from `client`.
    pub fn connection(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        per_connection: usize,
        per_client: usize,
    ) -> ConnPlaces {
        ConnPlaces {
            places: Arc::clone(self),
            client,
            own_free: AtomicBool::new(true),
            turns: Arc::new(Semaphore::new(per_connection.max(1))),
            per_client: per_client.max(1),
        }
    }
}

/// A server connection's place, held by one stream; given back on drop.
#[derive(Debug)]
pub struct ServerPlace {
    conn: Arc<ConnPlaces>,
    _turn: OwnedSemaphorePermit,
    extra: Option<OwnedSemaphorePermit>,
}

impl ConnPlaces {
    /// A place for one stream's server connection, after waiting at most `wait` for a
    /// turn on this connection; `Err` is why not (503).
    pub async fn take(self: &Arc<Self>, wait: Duration) -> Result<ServerPlace, &'static str> {
        let turn = match Arc::clone(&self.turns).try_acquire_owned() {
            Ok(t) => t,
            Err(_) => match tokio::time::timeout(wait, Arc::clone(&self.turns).acquire_owned()).await {
                Ok(Ok(t)) => t,
                _ => return Err("too many HTTP/2 streams on this connection"),
            },
        };
        if self
            .own_free
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(ServerPlace {
                conn: Arc::clone(self),
                _turn: turn,
                extra: None,
            });
        }
        let mut clients = self.places.clients();
        let held = self.client.and_then(|c| clients.get(&c).copied()).unwrap_or(0);
        let place = Arc::clone(&self.places.frontend).try_acquire_owned().ok();
        match admit(false, held, self.per_client, place.is_some()) {
            Admission::Refused(why) => Err(why),
            Admission::Own | Admission::Extra => {
                if let Some(c) = self.client {
                    *clients.entry(c).or_insert(0) += 1;
                }
                Ok(ServerPlace {
                    conn: Arc::clone(self),
                    _turn: turn,
                    extra: place,
                })
            }
        }
    }
}

impl Drop for ServerPlace {
    fn drop(&mut self) {
        if self.extra.take().is_none() {
            self.conn.own_free.store(true, Ordering::Release);
            return;
        }
        let Some(client) = self.conn.client else { return };
        let mut clients = self.conn.places.clients();
        if let Some(n) = clients.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connections_own_place_comes_first() {
        assert_eq!(admit(true, 1000, 1, false), Admission::Own);
        assert_eq!(admit(false, 0, 256, true), Admission::Extra);
        assert_eq!(admit(false, 255, 256, true), Admission::Extra);
        assert!(matches!(admit(false, 256, 256, true), Admission::Refused(_)));
        assert!(matches!(admit(false, 0, 256, false), Admission::Refused(_)));
    }

    #[tokio::test]
    async fn places_are_taken_capped_and_given_back() {
        let frontend = Arc::new(Semaphore::new(10));
        let places = Places::new(Arc::clone(&frontend));
        let client: IpAddr = "127.0.0.7".parse().unwrap();
        let a = Arc::new(places.connection(Some(client), 4, 2));
        let b = Arc::new(places.connection(Some(client), 4, 2));
        let wait = Duration::from_millis(50);
        let own_a = a.take(wait).await.unwrap();
        let extra_a = a.take(wait).await.unwrap();
        assert_eq!(frontend.available_permits(), 9, "one extra place");
        let own_b = b.take(wait).await.unwrap();
        let extra_b = b.take(wait).await.unwrap();
        assert_eq!(places.clients().get(&client).copied().unwrap_or(0), 2);
        // Two streams beyond its connections' own places: the client's cap.
        assert!(a.take(wait).await.is_err());
        drop(extra_a);
        assert_eq!(places.clients().get(&client).copied().unwrap_or(0), 1);
        assert_eq!(frontend.available_permits(), 9);
        let again = a.take(wait).await.unwrap();
        drop((own_a, own_b, extra_b, again));
        assert_eq!(frontend.available_permits(), 10);
        assert!(places.clients().is_empty(), "no entry left for the address");
    }

    #[tokio::test]
    async fn streams_over_the_connection_cap_wait_their_turn() {
        let places = Places::new(Arc::new(Semaphore::new(10)));
        let conn = Arc::new(places.connection(None, 2, 100));
        let first = conn.take(Duration::ZERO).await.unwrap();
        let _second = conn.take(Duration::ZERO).await.unwrap();
        assert!(conn.take(Duration::from_millis(20)).await.is_err(), "no turn in time");
        let waiter = {
            let conn = Arc::clone(&conn);
            tokio::spawn(async move { conn.take(Duration::from_secs(5)).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiter.await.unwrap(), "the freed turn went to the waiter");
    }
}
