//! The server side of a request, for either engine: one attempt on one server over
//! HTTP/1.1. A connection is taken from the keep-alive pool ([`pool`]) or opened; the
//! request goes out while the server is watched, so an answer that comes before the whole
//! body was sent (a 413 or 405 from a server that does not read the body, RFC 9110
//! §15.5.14, RFC 9112 §9.6) is the answer and the rest of the body is not sent, as hyper
//! and HAProxy do; then the answer's head is read ([`head`]) while the client is watched,
//! so a client that leaves (a long-poll closed) frees its server slot at once. The engine
//! gives the request's body and its client through [`Client`]; what a failure means is
//! `failure::classify`'s, from the [`Failure`] and the [`Progress`] this fills in.
//!
//! Stray answers: bytes from a pooled connection before the request was fully written
//! cannot answer it (a late second answer to the previous request, say): the connection
//! is dropped and the request goes again on a new one when that is safe. A streamed body
//! never goes on a pooled connection, so an answer that comes while it streams is always
//! an early answer, never a stray. What remains is the race nginx and HAProxy share: a
//! stray that arrives after the whole request was written is taken as its answer.

pub mod head;
pub mod pool;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use crate::failure::{Failure, Progress};

use head::{Asked, Header, Parsed};
pub use pool::Pool;

/// Longest answer head accepted from a server.
pub const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// Room made for each read of the server's bytes until the answer head is whole: an
/// answer head fits, and a buffer that came back from an earlier request (`h1::spare`)
/// reads as much as it already holds. Not more: a burst of new connections each takes a
/// buffer of its own, and the heap keeps its high-water mark (16 KiB here was the largest
/// allocation of a new keep-alive connection, 4x its serving future; `keepalive_idle`).
/// The body is read in larger steps (`h1::answer`).
const READ_SIZE: usize = 4 * 1024;

/// The request's client, as an attempt sees it: where the request body comes from, and
/// where interim answers go. Implemented by each engine.
pub(crate) trait Client {
    /// Body bytes ready to go to the server, framed for HTTP/1.1.
    fn ready(&self) -> &[u8];
    /// The first `n` bytes of [`ready`](Client::ready) reached the server.
    fn sent(&mut self, n: usize);
    /// No more body will come: what is ready is the rest of it.
    fn complete(&self) -> bool;
    /// Wait until more of the body is ready, or it is complete. Cancel-safe.
    async fn fill(&mut self) -> Result<(), Failure>;
    /// Resolves when the client has gone (closed or reset its connection). Cancel-safe.
    async fn left(&mut self);
    /// Pass on an interim (1xx) answer whose head is `raw`.
    async fn interim(&mut self, raw: &[u8], parsed: &Parsed, headers: &[Header]) -> Result<(), Failure>;
}

/// Where and how an attempt goes.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub addr: SocketAddr,
    /// `timeouts.connect` and `timeouts.server` of the backend.
    pub connect: Duration,
    pub server: Duration,
    /// A connection from the pool may serve it (not after a stale one, and never for a
    /// streamed body).
    pub pooled: bool,
    pub asked: Asked<'a>,
    /// When the request began, for the access log's timings.
    pub started: Instant,
}

/// The server's bytes and the fields of the answer head parsed from them; kept per client
/// connection so keep-alive requests do not allocate.
#[derive(Debug, Default)]
pub struct AnswerBuf {
    pub bytes: Vec<u8>,
    pub headers: Vec<Header>,
}

/// What an attempt leaves for the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Trace {
    /// Since the request began: the connection that carried the last attempt was open.
    pub connect: Option<Duration>,
    /// What went wrong, in words.
    pub error: Option<&'static str>,
}

/// A server's answer head, read and checked; its first bytes are in the [`AnswerBuf`].
#[derive(Debug)]
pub struct Answer {
    pub stream: TcpStream,
    pub parsed: Parsed,
    /// The whole request reached the server. If not, the server answered before the body
    /// ended: the rest was not sent, and neither connection can carry another request.
    pub request_complete: bool,
}

/// One try on one server: connect (or reuse), send the request (`request_head`, then the
/// client's body), read the answer head. `progress` says how far it went.
pub(crate) async fn attempt<C: Client>(
    pool: &Pool,
    a: &Attempt<'_>,
    request_head: &[u8],
    client: &mut C,
    buf: &mut AnswerBuf,
    progress: &mut Progress,
    trace: &mut Trace,
) -> Result<Answer, Failure> {
    let pooled = if a.pooled { pool.take(a.addr) } else { None };
    progress.reused = pooled.is_some();
    let mut up = match pooled {
        Some(s) => s,
        None => pool::connect(a.addr, a.connect).await.map_err(|e| match e {
            pool::ConnectError::Refused => Failure::ConnectRefused,
            pool::ConnectError::TimedOut => Failure::ConnectTimedOut,
            pool::ConnectError::Other => Failure::ConnectError,
        })?,
    };
    trace.connect = Some(a.started.elapsed());
    buf.bytes.clear();
    let early = send(&up, request_head, client, buf, a, progress, trace).await?;
    let parsed = match early {
        Some(parsed) => parsed,
        None => {
            progress.request_complete = true;
            read_head(&mut up, client, buf, a, trace).await?
        }
    };
    Ok(Answer {
        stream: up,
        parsed,
        request_complete: progress.request_complete,
    })
}

/// Write the request while watching the server. `Some`: the server answered before the
/// whole request was written (the answer's head, parsed).
///
/// The first write waits for the rest of the runtime's turn ([`tokio::task::yield_now`]:
/// the other tasks the same poll of the reactor woke run first), so the requests read in
/// one turn go out together and a busy server wakes once for several of them. That is
/// how HAProxy's sends cluster: it reads every ready socket, then runs its streams. Sent
/// from each task as it ran, spread over the turn, the backends of `make bench` woke 1.9x
/// as often per request as behind HAProxy; on a saturated machine their core queued, and
/// its queueing was `rest_plain`'s p99 (see benches/README.md, "Requests of one turn go
/// out together"). The cost is one more poll of the task per attempt.
async fn send<C: Client>(
    up: &TcpStream,
    request_head: &[u8],
    client: &mut C,
    buf: &mut AnswerBuf,
    a: &Attempt<'_>,
    progress: &mut Progress,
    trace: &mut Trace,
) -> Result<Option<Parsed>, Failure> {
    tokio::task::yield_now().await;
    let mut written = 0;
    loop {
        if !buf.bytes.is_empty() {
            if progress.reused {
                trace.error = Some("stray answer on a pooled connection");
                return Err(Failure::Stray);
            }
            if let Some(parsed) = take_head(client, buf, a.asked, trace).await? {
                return Ok(Some(parsed));
            }
        }
        let out = match request_head.get(written..) {
            Some(rest) if !rest.is_empty() => rest,
            _ => client.ready(),
        };
        if out.is_empty() {
            if client.complete() {
                return Ok(None);
            }
            tokio::select! {
                biased;
                _ = up.readable() => {
                    read_early(up, buf, trace)?;
                }
                filled = client.fill() => filled?,
            }
            continue;
        }
        let ready = match tokio::time::timeout(a.server, up.ready(Interest::READABLE | Interest::WRITABLE)).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(_)) => return Err(Failure::ResetBeforeAnswer),
            Err(_) => {
                trace.error = Some("server stopped reading the request");
                return Err(Failure::AnswerTimedOut);
            }
        };
        if ready.is_readable() && read_early(up, buf, trace)? {
            continue;
        }
        if ready.is_writable() {
            match up.try_write(out) {
                Ok(n) => {
                    progress.sent = true;
                    if written < request_head.len() {
                        written += n;
                    } else {
                        client.sent(n);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // Closed or reset: an answer it sent first may still be queued here
                    // (the reactor may not have seen it yet: wait for it to).
                    while let Ok(Ok(())) = tokio::time::timeout(a.server, up.readable()).await {
                        buf.bytes.reserve(READ_SIZE);
                        match up.try_read_buf(&mut buf.bytes) {
                            Ok(n) if n > 0 => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            _ => break,
                        }
                    }
                    if !progress.reused
                        && let Some(parsed) = take_head(client, buf, a.asked, trace).await?
                    {
                        return Ok(Some(parsed));
                    }
                    return Err(Failure::ResetBeforeAnswer);
                }
            }
        }
    }
}

/// Take what the server sent while the request was still going out; whether there was
/// anything.
fn read_early(up: &TcpStream, buf: &mut AnswerBuf, trace: &mut Trace) -> Result<bool, Failure> {
    buf.bytes.reserve(READ_SIZE);
    match up.try_read_buf(&mut buf.bytes) {
        Ok(n) if n > 0 => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        _ if !buf.bytes.is_empty() => {
            trace.error = Some("response head cut short");
            Err(Failure::BadAnswer)
        }
        _ => Err(Failure::ResetBeforeAnswer),
    }
}

/// Read the answer head after the whole request was sent, while watching the client.
async fn read_head<C: Client>(
    up: &mut TcpStream,
    client: &mut C,
    buf: &mut AnswerBuf,
    a: &Attempt<'_>,
    trace: &mut Trace,
) -> Result<Parsed, Failure> {
    loop {
        if let Some(parsed) = take_head(client, buf, a.asked, trace).await? {
            return Ok(parsed);
        }
        buf.bytes.reserve(READ_SIZE);
        let partial = !buf.bytes.is_empty();
        tokio::select! {
            biased;
            read = tokio::time::timeout(a.server, up.read_buf(&mut buf.bytes)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                Err(_) => return Err(Failure::AnswerTimedOut),
                _ if partial => {
                    trace.error = Some("response head cut short");
                    return Err(Failure::BadAnswer);
                }
                _ => return Err(Failure::ResetBeforeAnswer),
            },
            () = client.left() => return Err(Failure::ClientGone),
        }
    }
}

/// The final answer head in `buf`, if it is all there; interim answers before it are
/// passed on (`100 Continue` is edgepin's own to give: dropped) and taken out of `buf`.
async fn take_head<C: Client>(
    client: &mut C,
    buf: &mut AnswerBuf,
    asked: Asked<'_>,
    trace: &mut Trace,
) -> Result<Option<Parsed>, Failure> {
    while !buf.bytes.is_empty() {
        match head::parse(&buf.bytes, asked, &mut buf.headers) {
            Ok(Some(p)) if p.status < 200 && p.status != 101 => {
                if p.status != 100 {
                    client.interim(&buf.bytes[..p.len], &p, &buf.headers).await?;
                }
                buf.bytes.drain(..p.len);
            }
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) if buf.bytes.len() < MAX_ANSWER_HEAD => return Ok(None),
            Ok(None) | Err(_) => {
                trace.error = Some("invalid response head");
                return Err(Failure::BadAnswer);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A request without a body, whose client stays.
    struct NoBody;

    impl Client for NoBody {
        fn ready(&self) -> &[u8] {
            &[]
        }
        fn sent(&mut self, _: usize) {}
        fn complete(&self) -> bool {
            true
        }
        async fn fill(&mut self) -> Result<(), Failure> {
            Ok(())
        }
        async fn left(&mut self) {
            std::future::pending::<()>().await;
        }
        async fn interim(&mut self, _: &[u8], _: &Parsed, _: &[Header]) -> Result<(), Failure> {
            Ok(())
        }
    }

    /// An attempt of a plain GET at `addr`, with `wait` for both the connect and the answer.
    fn get_attempt(addr: std::net::SocketAddr, pooled: bool, wait: Duration) -> Attempt<'static> {
        Attempt {
            addr,
            connect: wait,
            server: wait,
            pooled,
            asked: Asked {
                head_request: false,
                websocket_key: None,
            },
            started: Instant::now(),
        }
    }

    /// The head of the tests' plain GET.
    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// Send the plain GET on `up`, a connection to `addr` (`reused`: from the pool).
    async fn send_get(up: &TcpStream, addr: std::net::SocketAddr, reused: bool) -> Result<Option<Parsed>, Failure> {
        let a = get_attempt(addr, reused, Duration::from_secs(1));
        let mut progress = Progress {
            reused,
            ..Progress::default()
        };
        let (mut buf, mut trace) = (AnswerBuf::default(), Trace::default());
        send(up, GET, &mut NoBody, &mut buf, &a, &mut progress, &mut trace).await
    }

    /// An answer already waiting on the connection when the request is sent on it:
    /// stray on a reused connection, an early answer on a new one.
    async fn send_after_an_answer_came(reused: bool) -> Result<Option<Parsed>, Failure> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray")
            .await
            .unwrap();
        up.readable().await.unwrap();
        send_get(&up, addr, reused).await
    }

    /// Every new client connection takes a fresh answer buffer until it has one from the
    /// thread's spares: reading a small answer must not make it 16 KiB (a burst of new
    /// connections leaves the heap's high-water mark of them behind).
    #[tokio::test]
    async fn a_small_answer_leaves_a_fresh_buffer_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut request).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            s
        });
        let a = get_attempt(addr, false, Duration::from_secs(5));
        let (mut buf, mut trace, mut progress) = (AnswerBuf::default(), Trace::default(), Progress::default());
        let answer = attempt(
            &Pool::default(),
            &a,
            GET,
            &mut NoBody,
            &mut buf,
            &mut progress,
            &mut trace,
        )
        .await
        .expect("an answer");
        assert_eq!(answer.parsed.status, 200);
        assert_eq!(&buf.bytes[answer.parsed.len..], b"ok");
        let capacity = buf.bytes.capacity();
        assert!(capacity <= 4 * 1024, "a fresh answer buffer grew to {capacity} bytes");
        drop(server.await);
    }

    /// The requests of one turn go out together: a task that has a request ready lets
    /// the other tasks woken with it run before it writes (see `send`).
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_goes_out_after_the_other_tasks_of_its_turn_ran() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Connected: tokio knows the connection is writable, the write needs no wait.
        let up = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let sender = tokio::spawn(async move {
            let sent = send_get(&up, addr, true).await;
            (sent.map(|early| early.is_none()), up)
        });
        // Spawned after the sender, so it runs in the same turn, after the sender's first
        // poll: the request is not on the wire yet.
        let other = tokio::spawn(async move {
            let mut got = [0u8; 64];
            let seen = std::io::Read::read(&mut server, &mut got).map_err(|e| e.kind());
            (seen, server)
        });
        let (seen, mut server) = other.await.unwrap();
        assert_eq!(
            seen,
            Err(std::io::ErrorKind::WouldBlock),
            "written before the other task ran"
        );
        let (sent, _up) = sender.await.unwrap();
        assert_eq!(sent, Ok(true));
        let mut got = [0u8; 64];
        let n = std::io::Read::read(&mut server, &mut got).unwrap();
        assert_eq!(&got[..n], GET);
    }

    #[tokio::test]
    async fn an_answer_before_the_request_was_written_is_stray_on_a_reused_connection() {
        assert_eq!(send_after_an_answer_came(true).await.err(), Some(Failure::Stray));
        let early = send_after_an_answer_came(false).await.expect("an early answer");
        assert_eq!(early.map(|p| p.status), Some(200));
    }
}
