//! The stats listener's HTTP/1.1 server: accepts connections and serves the router on
//! them with limits, so a slow, silent or greedy client cannot hold the operators' page —
//! or the load balancer's `/health` probe — hostage.
//!
//! Limits (`Limits::default()`, documented in README's Stats section): connections at once,
//! where a newcomer to a full listener closes the connection idle the longest (`slots`;
//! one serving a request is never cut, and when all are, the newcomer is closed); time
//! to send a complete request head; idle time between keep-alive requests; time for a
//! whole request (body included) until its answer is ready; a connection's lifetime.
//! Each request carries its client address ([`Peer`]) and the address it reached
//! (`host::Local`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::ServiceExt;

use super::host::Local;
use super::slots::{Admission, Busy, Deadlines, Slot, Slots, Watch};

/// The client address of a stats connection, attached to each of its requests (auth
/// throttles by it, admin actions log it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// What one client may take of the stats listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; a newcomer beyond this closes the one idle the longest.
    pub max_connections: usize,
    /// From accept to a complete first request head; from the first byte of a later head
    /// to its end.
    pub header_timeout: Duration,
    /// Idle time between the end of an answer and the next request.
    pub keepalive_timeout: Duration,
    /// Longest time for one request, body included, until its answer is ready.
    pub request_timeout: Duration,
    /// Longest life of a connection (keep-alive included); browsers reconnect.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
            connection_lifetime: Duration::from_secs(120),
        }
    }
}

async fn request_deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response(),
    }
}

/// Serve `router` on `listener` within `limits` until `stop` resolves.
pub async fn run(listener: TcpListener, router: Router, limits: Limits, stop: impl Future<Output = ()>) {
    let request_timeout = limits.request_timeout;
    let router = router.layer(middleware::from_fn(move |req: Request, next: Next| {
        request_deadline(request_timeout, req, next)
    }));
    let slots = Slots::new(
        limits.max_connections,
        Deadlines {
            head: limits.header_timeout,
            keepalive: limits.keepalive_timeout,
        },
    );
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "stats listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let slot = match slots.admit(peer, Instant::now()) {
            Admission::Admitted { slot, evicted } => {
                if let Some(idle) = evicted {
                    tracing::debug!(client = %peer, closed = %idle, "stats listener full: closed the connection idle the longest");
                }
                slot
            }
            Admission::Full => {
                tracing::warn!(client = %peer, limit = limits.max_connections, "stats listener: every connection is serving a request, closing the new one");
                continue;
            }
        };
        tokio::spawn(serve_connection(stream, peer, slot, router.clone(), limits));
    }
}

/// Why a connection ended, for the debug log.
enum End {
    Closed(Result<(), hyper::Error>),
    Idle,
    Evicted,
}

/// Serve one connection until it closes, idles past its deadline, loses its slot, or
/// reaches its lifetime.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, slot: Slot, router: Router, limits: Limits) {
    let local = stream.local_addr().ok();
    let for_requests = slot.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let busy = for_requests.request_started();
        req.extensions_mut().insert(Peer(peer));
        if let Some(local) = local {
            req.extensions_mut().insert(Local(local));
        }
        let answer = router.clone().oneshot(req);
        async move {
            let resp = answer.await?;
            Ok::<_, Infallible>(resp.map(|body| Body::new(Tracked { body, busy: Some(busy) })))
        }
    });
    // Our own deadlines (`slots`) replace hyper's header timeout, which would also cut
    // keep-alive at the head deadline.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(
            TokioIo::new(Watched {
                stream,
                slot: slot.clone(),
            }),
            service,
        );
    let watched = async {
        tokio::pin!(connection);
        loop {
            let deadline = match slot.watch() {
                Watch::Gone => return End::Evicted,
                Watch::Until(at) => Some(at),
                Watch::Busy => None,
            };
            tokio::select! {
                result = &mut connection => return End::Closed(result),
                () = slot.changed() => {}
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if slot.expire(Instant::now()) {
                        return End::Idle;
                    }
                }
            }
        }
    };
    let end = tokio::time::timeout(limits.connection_lifetime, watched).await;
    slot.release();
    match end {
        Ok(End::Closed(Err(e))) => tracing::debug!(client = %peer, error = %e, "stats connection ended with an error"),
        Ok(End::Closed(Ok(()))) => {}
        Ok(End::Idle) => tracing::debug!(client = %peer, "stats connection idle past its deadline, closed"),
        Ok(End::Evicted) => tracing::debug!(client = %peer, "stats connection closed for a newcomer"),
        Err(_) => tracing::debug!(client = %peer, "stats connection reached its lifetime"),
    }
}

/// The connection's socket, telling its slot when bytes arrive (a head has started).
struct Watched {
    stream: TcpStream,
    slot: Slot,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.slot.bytes_arrived(Instant::now());
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// An answer's body that keeps its request in progress until the body is handed over.
struct Tracked {
    body: Body,
    busy: Option<Busy>,
}

impl hyper::body::Body for Tracked {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            this.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A listener on 127.0.0.1:0 serving `/` → "ok", `/peer` (the request's [`Peer`]),
    /// `/wait` (answers after 500 ms) and `/slow` (never answers) within `limits`; stops
    /// when the returned sender is dropped.
    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/peer",
                get(|req: Request| async move {
                    req.extensions()
                        .get::<Peer>()
                        .map_or("none".to_string(), |p| p.0.to_string())
                }),
            )
            .route(
                "/wait",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "done"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "late"
                }),
            );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(listener, router, limits, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Everything the server sends until it closes, within 5 s.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server closed the connection in time");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Send a keep-alive GET and read the start of its answer.
    async fn get_on(stream: &mut TcpStream, path: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Whether the server closed `stream` within `within` (reads nothing more).
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn each_request_carries_its_client_address() {
        let (addr, _stop) = start(Limits::default()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mine = client.local_addr().unwrap().to_string();
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with(&format!("\r\n\r\n{mine}")), "{answer:?} names {mine}");
    }

    #[tokio::test]
    async fn a_client_too_slow_with_its_head_is_cut_off() {
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let answer = read_to_close(&mut slow).await;
        assert!(answer.is_empty(), "{answer:?}");
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert_eq!(read_to_close(&mut silent).await, "", "a silent one too");
    }

    #[tokio::test]
    async fn keep_alive_waits_for_its_own_timeout_then_a_started_head_has_the_head_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            keepalive_timeout: Duration::from_millis(1500),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut s, "/").await.starts_with("HTTP/1.1 200"));
        assert!(
            !closed_within(&mut s, Duration::from_millis(600)).await,
            "idle keep-alive outlives the head deadline"
        );
        assert!(get_on(&mut s, "/").await.starts_with("HTTP/1.1 200"), "and is reused");
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await,
            "closed after the keep-alive timeout"
        );

        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut s, "/").await.starts_with("HTTP/1.1 200"));
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        assert!(
            started.elapsed() < Duration::from_millis(1200),
            "a started head is cut at the head deadline, not the keep-alive one"
        );
    }

    #[tokio::test]
    async fn a_newcomer_to_a_full_listener_closes_the_connection_idle_the_longest() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut oldest = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut oldest, "/").await.starts_with("HTTP/1.1 200"));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut newcomer = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut newcomer, "/").await.starts_with("HTTP/1.1 200"));
        assert!(
            closed_within(&mut oldest, Duration::from_secs(2)).await,
            "the keep-alive one, idle the longest, made room"
        );
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), silent.read(&mut buf))
                .await
                .is_err(),
            "the other one is still open"
        );
    }

    #[tokio::test]
    async fn a_connection_serving_a_request_is_never_cut_for_a_newcomer() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            read_to_close(&mut second).await,
            "",
            "the newcomer is closed unanswered"
        );
        let answer = read_to_close(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with("done"), "{answer:?}");
    }

    #[tokio::test]
    async fn a_request_that_takes_too_long_gets_408() {
        let limits = Limits {
            request_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(read_to_close(&mut s).await.starts_with("HTTP/1.1 408"));
    }
}
