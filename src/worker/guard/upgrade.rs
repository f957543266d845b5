//! Engine.IO over WebSocket, upgraded here rather than inside socketioxide so the client's
//! bytes can be watched: the guard answers the upgrade (101, as engineioxide would), then
//! hands socketioxide the upgraded connection wrapped in [`Watched`] through its public
//! "WebSocket over a raw stream" service. `Watched` reads the client's frames as tungstenite
//! pulls them and fails the read once a binary packet's attachments are overdue, which
//! makes socketioxide close the session (and drop what it held). The head of a request
//! that opens a session is handed over with its own bytes (`opening`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::frames::ClientFrames;
use super::{Attachments, Guard, opening};

/// Answer a WebSocket upgrade and serve the session on the watched connection. `sid` is
/// the polling session being upgraded, if any: attachments it still owes carry over.
pub(super) fn accept(guard: Guard, mut req: Request, sid: Option<String>) -> Response {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return plain(StatusCode::BAD_REQUEST);
    };
    let owed = sid.as_deref().map(|s| guard.polling.take(s)).unwrap_or_default();
    let upgraded = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    if sid.is_none() {
        // A new session keeps this head (an upgraded one keeps its polling opening's).
        opening::own(&mut parts);
    }
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => io,
            Err(e) => return tracing::debug!(error = %e, "WebSocket upgrade failed"),
        };
        let io = Watched::new(TokioIo::new(io), owed, guard.cut.clone());
        let request = axum::http::Request::from_parts(parts, ());
        use tower::ServiceExt;
        // Checks the request (version, sid) and spawns the session; an error closes `io`.
        if let Err(e) = guard.inner.clone().oneshot((io, request)).await {
            tracing::debug!(error = %e, "WebSocket session refused");
        }
    });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR))
}

fn plain(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// A client connection whose incoming frames are read on the way to tungstenite.
pub(super) struct Watched<T> {
    io: T,
    frames: ClientFrames,
    owed: Attachments,
    /// Fires at `owed`'s deadline.
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
    overdue: bool,
    cut: IntCounter,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, owed: Attachments, cut: IntCounter) -> Watched<T> {
        Watched {
            io,
            frames: ClientFrames::default(),
            owed,
            timer: None,
            overdue: false,
            cut,
        }
    }

    /// Whether the owed attachments are overdue; otherwise the timer is armed on `cx`.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        if self.overdue {
            return true;
        }
        let Some(deadline) = self.owed.deadline() else {
            self.timer = None;
            return false;
        };
        if self.timer.as_ref().is_none_or(|(at, _)| *at != deadline) {
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
            self.timer = Some((deadline, Box::pin(sleep)));
        }
        if let Some((_, sleep)) = &mut self.timer
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.overdue = true;
            self.cut.inc();
            tracing::info!(
                transport = "websocket",
                "closing a session whose binary attachments are overdue"
            );
        }
        self.overdue
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.overdue(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "binary attachments not sent in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let (owed, now) = (&mut this.owed, Instant::now());
        this.frames
            .feed(&buf.filled()[before..], |message| owed.observe(message, now))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A masked client text or binary frame (payloads under 126 bytes).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_fails_once_announced_attachments_are_overdue() {
        let (mut client, server) = tokio::io::duplex(4096);
        let cut = IntCounter::new("cut", "cut").unwrap();
        let mut watched = Watched::new(server, Attachments::default(), cut.clone());
        let mut buf = vec![0u8; 4096];

        // Announces two, sends one: the read after the deadline fails.
        client
            .write_all(&frame(0x1, b"452-[\"e\",{\"_placeholder\":true,\"num\":0}]"))
            .await
            .unwrap();
        client.write_all(&frame(0x2, b"one")).await.unwrap();
        assert!(watched.read(&mut buf).await.unwrap() > 0);
        let started = tokio::time::Instant::now();
        let err = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= super::super::ATTACHMENT_DEADLINE - Duration::from_millis(10));
        assert_eq!(cut.get(), 1);

        // A client that sends them all is never cut.
        let (mut client, server) = tokio::io::duplex(4096);
        let mut watched = Watched::new(server, Attachments::default(), cut.clone());
        client
            .write_all(&frame(0x1, b"451-[\"e\",{\"_placeholder\":true,\"num\":0}]"))
            .await
            .unwrap();
        client.write_all(&frame(0x2, b"one")).await.unwrap();
        assert!(watched.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(super::super::ATTACHMENT_DEADLINE * 2).await;
        client.write_all(&frame(0x1, b"42[\"later\"]")).await.unwrap();
        assert!(watched.read(&mut buf).await.unwrap() > 0);
        assert_eq!(cut.get(), 1);
    }
}
