//! A connection between requests that has idled for [`PARK_AFTER`] ([`PARK_AFTER_BUSY`]
//! when its requests come soon after each other): parked. Its serving task ends, holding
//! no buffer (`spare`) and none of the engine's state, and it waits for the client's next
//! bytes (or the end of its keep-alive, or the client leaving). When bytes come, a serving
//! task starts again with them. A busy connection never pays for the parking: its next
//! request comes long before it would park.
//!
//! Where it waits depends on its [`Transport`]: a plain socket leaves tokio's reactor for
//! the lot (`proxy::lot`: one epoll set and one task for all of them, the socket and a few
//! words per connection, no task, timer or tokio registration of its own); a TLS
//! connection, whose session cannot be taken apart and put back, waits in a small task of
//! its own.
//!
//! A parked connection is registered in the proxy's [`Places`]: when a new client finds
//! every place taken, the connection parked the longest is closed for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::proxy::lot::{Lot, Resume};
use crate::proxy::places::{Closer, Parked, Places};
use crate::runtime::Shared;

use super::{Conn, Pool, spare};

/// How long a connection waits for its next request in its serving task before parking.
/// Back-to-back requests (a page's assets, a client that pipelines or reuses its
/// connection at once, a Socket.IO poll that follows its answer) come well within it on
/// a LAN; a client a WAN round trip away parks between requests at any value worth
/// having. Short, because until it parks a connection holds its serving future (about
/// 3 KiB) and its answer buffer (16 KiB then, 4 KiB now): 5,000 connections opened in a burst held
/// ~800 of them at once at 50 ms, and the heap kept that high-water mark
/// (`keepalive_idle` 2.10 → 1.50 KiB per idle connection at 5 ms).
pub const PARK_AFTER: Duration = Duration::from_millis(5);

/// How long a busy connection waits before parking: one whose last request came less than
/// this after the one before ended, parked meanwhile or not. Not for memory, for the
/// timers: every waiting connection arms one, and tokio sleeps in `epoll_wait` only until
/// the earliest. With every connection at [`PARK_AFTER`], a proxy under steady load always
/// had one due within 1-6 ms, sooner than the kernel's next tick: each time the thread went
/// to sleep it armed and cancelled the CPU's earliest timer, and `epoll_wait` took 8.2 µs
/// from entry to sleep instead of 1.3. A request arriving in that window left the thread
/// runnable but off the CPU: beside a CPU-bound neighbour the scheduler gave the core to the
/// neighbour until its next tick (up to 4 ms), 30 times in 3 s where HAProxy (whose
/// `epoll_wait` timeouts are 100-230 ms) had it once. A connection whose requests come
/// more than this apart parks after [`PARK_AFTER`], as before; one that comes back sooner
/// no longer pays a park and a wake per request.
pub const PARK_AFTER_BUSY: Duration = Duration::from_millis(50);

/// What a parked connection keeps (`S`: its socket, or `()` in the lot, which holds it).
pub(in crate::proxy) struct Idle<S> {
    pub shared: Arc<Shared>,
    pub pool: Arc<Pool>,
    pub places: Arc<Places>,
    pub io: S,
    pub peer: Option<IpAddr>,
    pub tls: bool,
    pub requests: u64,
    /// Since when it waits for its next request.
    pub since: Instant,
}

impl<S> Idle<S> {
    /// The same connection on `io`, and what it was on.
    fn with<T>(self, io: T) -> (Idle<T>, S) {
        let idle = Idle {
            shared: self.shared,
            pool: self.pool,
            places: self.places,
            io,
            peer: self.peer,
            tls: self.tls,
            requests: self.requests,
            since: self.since,
        };
        (idle, self.io)
    }
}

/// A client connection's transport, as far as parking goes: where it waits.
pub(in crate::proxy) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Park a connection until `until` (its keep-alive or head deadline); `open` is the
    /// frontend's hold on it.
    fn park<O: Send + 'static>(idle: Idle<Self>, open: O, until: Instant);
}

impl Transport for TcpStream {
    fn park<O: Send + 'static>(idle: Idle<Self>, open: O, until: Instant) {
        match idle.places.lot().map(Arc::clone) {
            Some(lot) => to_lot(&lot, idle, open, until),
            None => in_task(idle, open, until),
        }
    }
}

impl Transport for Box<TlsStream<TcpStream>> {
    fn park<O: Send + 'static>(idle: Idle<Self>, open: O, until: Instant) {
        in_task(idle, open, until);
    }
}

/// A plain connection in the lot: the rest of what it keeps.
struct Waiting<O> {
    idle: Idle<()>,
    open: O,
    parked: Parked,
}

fn to_lot<O: Send + 'static>(lot: &Arc<Lot>, idle: Idle<TcpStream>, open: O, until: Instant) {
    let (idle, io) = idle.with(());
    let socket = match io.into_std() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::debug!(error = %e, "closing an idle connection that cannot leave the runtime");
            return;
        }
    };
    let parked = idle.places.park();
    let id = parked.id();
    let places = Arc::clone(&idle.places);
    if lot.park(id, socket, until, Box::new(Waiting { idle, open, parked })) {
        places.arm(id, Closer::Lot);
    }
}

impl<O: Send + 'static> Resume for Waiting<O> {
    fn resume(self: Box<Self>, socket: std::net::TcpStream, until: Instant) {
        let Waiting { idle, open, parked } = *self;
        drop(parked);
        match TcpStream::from_std(socket) {
            Ok(io) => {
                tokio::spawn(wait(idle.with(io).0, open, until, None));
            }
            Err(e) => tracing::debug!(error = %e, "closing a parked connection: cannot serve it"),
        }
    }

    fn refused(self: Box<Self>, socket: std::net::TcpStream, until: Instant) {
        let Waiting { idle, open, parked } = *self;
        drop(parked);
        match TcpStream::from_std(socket) {
            Ok(io) => in_task(idle.with(io).0, open, until),
            Err(e) => tracing::debug!(error = %e, "closing an idle connection that cannot wait"),
        }
    }
}

/// Park in a task of its own.
fn in_task<S: Transport, O: Send + 'static>(idle: Idle<S>, open: O, until: Instant) {
    let places = Arc::clone(&idle.places);
    let parked = places.park();
    let id = parked.id();
    let task = tokio::spawn(wait(idle, open, until, Some(parked)));
    places.arm(id, Closer::Task(task.abort_handle()));
}

/// Wait for the client's next bytes, then start a serving task with them; the deadline,
/// an error, the client closing or a newcomer needing its place (the task is aborted, or
/// the lot closes it) end it. `parked`: while it waits in a task.
///
/// An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice in
/// its state (as arguments and as the locals they are moved into), about 160 bytes more
/// held by every parked connection.
#[expect(clippy::manual_async_fn, reason = "an async fn's state is 144 bytes larger")]
fn wait<S: Transport, O: Send + 'static>(
    mut idle: Idle<S>,
    open: O,
    until: Instant,
    parked: Option<Parked>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let mut first = Vec::new();
        let read = spare::read_with(&mut idle.io, |data| first.extend_from_slice(data));
        let got = tokio::time::timeout_at(until.into(), read).await;
        drop(parked);
        if !matches!(got, Ok(Ok(n)) if n > 0) {
            return;
        }
        let mut buffers = spare::take();
        if buffers.rbuf.capacity() >= first.len() {
            buffers.rbuf.extend_from_slice(&first);
        } else {
            buffers.rbuf = first;
        }
        tokio::spawn(super::run(Conn::resume(idle, buffers), open));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connection that served one request, on `io`.
    fn idle_on(shared: Arc<Shared>, places: Arc<Places>, io: TcpStream) -> Idle<TcpStream> {
        Idle {
            shared,
            pool: Arc::new(Pool::default()),
            places,
            io,
            peer: None,
            tls: false,
            requests: 1,
            since: Instant::now(),
        }
    }

    /// Plain connections leave tokio's reactor for the lot (one task watches them all,
    /// none waits for each) and come back to be served when their client sends.
    #[tokio::test]
    async fn plain_connections_wait_in_the_lot_and_come_back_with_their_request() {
        let (shared, places, mut client, listener) = super::super::test_connection().await;
        let mut other = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        for _ in 0..2 {
            let (io, _) = listener.accept().await.unwrap();
            let idle = idle_on(Arc::clone(&shared), Arc::clone(&places), io);
            TcpStream::park(idle, (), Instant::now() + Duration::from_secs(30));
        }
        assert_eq!(places.parked(), 2);
        let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        assert_eq!(tasks, 1, "one task, the lot's, for every parked plain connection");
        // No Host: the engine answers 400 itself, so it served the connection again.
        for c in [&mut client, &mut other] {
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut answer = [0u8; 12];
            let read = tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut answer)).await;
            assert!(read.is_ok_and(|r| r.is_ok()), "answered");
            assert_eq!(&answer, b"HTTP/1.1 400");
        }
        assert_eq!(places.parked(), 0, "no longer parked");
    }

    /// What a parked plain connection's task holds (its future; tokio adds about 130
    /// bytes of task header): the socket and a few words, no buffer and no wrapper.
    #[tokio::test]
    async fn a_parked_connection_holds_its_socket_and_a_few_words() {
        let (shared, places, io, _listener) = super::super::test_connection().await;
        let idle = idle_on(shared, Arc::clone(&places), io);
        // The frontend's hold on a connection is a few words too.
        let open = [0u64; 4];
        let parked = wait(idle, open, Instant::now(), Some(places.park()));
        let size = std::mem::size_of_val(&parked);
        eprintln!("parked future: {size} bytes");
        assert!(size <= 384, "a parked connection's future is {size} bytes");
    }

    /// A server that answers every request `200` with `ok`, keeping the connection.
    async fn answering_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut io, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await {
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            if io
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    /// One request and its whole answer (the server's 51 bytes, with what edgepin adds).
    async fn ask(c: &mut TcpStream) {
        c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "answered: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    }

    /// Wait (at most 2 s) until `n` connections are parked.
    async fn until_parked(places: &Places, n: usize) {
        for _ in 0..2000 {
            if places.parked() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} parked, not {n}", places.parked());
    }

    /// A connection parks after `PARK_AFTER` when its requests are far apart, and after
    /// `PARK_AFTER_BUSY` when its last one came soon after the one before: in its task
    /// (back to back) or from the lot (parked in between). Under steady load no connection
    /// then arms a timer due within the kernel's tick (see `PARK_AFTER_BUSY`).
    #[tokio::test]
    async fn a_connection_whose_requests_come_soon_after_each_other_waits_longer_to_park() {
        let server = answering_server().await;
        let (shared, _) = crate::runtime::one_backend_at("balance: roundrobin", &[server]);
        let places = Arc::new(Places::new(
            Arc::new(tokio::sync::Semaphore::new(8)),
            8,
            Duration::from_secs(1),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = async || {
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (io, _) = listener.accept().await.unwrap();
            let peer = super::super::Peer { addr: None, tls: false };
            tokio::spawn(super::super::serve(
                Arc::clone(&shared),
                Arc::new(Pool::default()),
                Arc::clone(&places),
                io,
                peer,
                (),
            ));
            client
        };

        // One request: parks after PARK_AFTER.
        let mut one = connect().await;
        ask(&mut one).await;
        let answered = Instant::now();
        until_parked(&places, 1).await;
        assert!(answered.elapsed() >= PARK_AFTER);

        // Parked between two requests that came soon after each other.
        let mut back = connect().await;
        ask(&mut back).await;
        until_parked(&places, 2).await;
        ask(&mut back).await;
        let back_answered = Instant::now();
        assert_eq!(places.parked(), 1, "resumed");

        // Two requests back to back, in its task.
        let mut busy = connect().await;
        ask(&mut busy).await;
        ask(&mut busy).await;

        // Well past PARK_AFTER for both, neither parked (unless this machine took so long
        // that PARK_AFTER_BUSY passed too).
        tokio::time::sleep(PARK_AFTER * 3).await;
        let parked = places.parked();
        assert!(
            parked == 1 || back_answered.elapsed() >= PARK_AFTER_BUSY,
            "{parked} parked {:?} after the busy connections' answers",
            back_answered.elapsed()
        );
        // They park, after PARK_AFTER_BUSY.
        until_parked(&places, 3).await;
        assert!(back_answered.elapsed() >= PARK_AFTER_BUSY);
        // And are served again.
        for c in [&mut one, &mut back, &mut busy] {
            ask(c).await;
        }
    }
}
