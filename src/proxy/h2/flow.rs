//! Bytes through an HTTP/2 stream under flow control, both ways, with backpressure:
//! answer bytes go out only as the client grants window (and a stream that gets none
//! for its stall deadline is given up), request bytes are credited back to the client
//! only once they have gone on to the server, so a stream never makes edgepin hold more
//! than its window of either.
//!
//! [`StreamIo`] dresses a stream as a byte pipe (`AsyncRead + AsyncWrite`) for the
//! tunnel relay: a WebSocket over HTTP/2 (RFC 8441) is relayed by the same code, with
//! the same bounds, as one over HTTP/1.1. Nothing here decides anything about requests.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why bytes stopped moving to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStop {
    /// The stream or the connection is gone (reset, closed).
    Gone,
    /// No window for the stall deadline.
    Stalled,
}

/// Send `data` on `send` (ending the stream with it when `end`), as the client's window
/// allows; waiting for window longer than `stall` at once gives up.
pub async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    stall: Duration,
) -> Result<(), SendStop> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| SendStop::Gone);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let mut room = send.capacity();
        if room == 0 {
            room = match tokio::time::timeout(stall, std::future::poll_fn(|cx| send.poll_capacity(cx))).await {
                Err(_) => return Err(SendStop::Stalled),
                Ok(Some(Ok(n))) => n,
                Ok(_) => return Err(SendStop::Gone),
            };
        }
        let chunk = data.split_to(room.min(data.len()));
        send.send_data(chunk, end && data.is_empty())
            .map_err(|_| SendStop::Gone)?;
    }
    Ok(())
}

/// Why a request body stopped coming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvStop {
    /// The stream was reset or the connection went away.
    Gone,
    /// Nothing for the client timeout.
    Stalled,
}

/// The next bytes of a request body (`None`: it ended), within `wait`. The caller gives
/// the window back with [`credit`] once the bytes have gone on.
pub async fn next_data(recv: &mut RecvStream, wait: Duration) -> Result<Option<Bytes>, RecvStop> {
    loop {
        match tokio::time::timeout(wait, recv.data()).await {
            Err(_) => return Err(RecvStop::Stalled),
            Ok(None) => return Ok(None),
            Ok(Some(Err(_))) => return Err(RecvStop::Gone),
            // An empty DATA frame (END_STREAM alone, or padding): read on.
            Ok(Some(Ok(b))) if b.is_empty() => credit(recv, 0),
            Ok(Some(Ok(b))) => return Ok(Some(b)),
        }
    }
}

/// Give `n` bytes of window back to the client.
pub fn credit(recv: &mut RecvStream, n: usize) {
    if n > 0 {
        // Fails only when the stream is gone, which the next read reports.
        let _ = recv.flow_control().release_capacity(n);
    }
}

/// An HTTP/2 stream as a byte pipe, for the tunnel relay. Reads take the client's DATA
/// frames (and credit the window as they are read), writes go out as the window allows
/// (`Pending` without it: the relay then stops reading the server), shutdown ends the
/// stream. No buffer of its own beyond the frame being read.
pub struct StreamIo {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not read yet.
    unread: Bytes,
    recv_ended: bool,
    sent_end: bool,
}

impl StreamIo {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> StreamIo {
        StreamIo {
            send,
            recv,
            unread: Bytes::new(),
            recv_ended: false,
            sent_end: false,
        }
    }
}

fn broken(e: h2::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for StreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            if this.recv_ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => this.recv_ended = true,
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        credit(&mut this.recv, n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(data.len());
        loop {
            let room = this.send.capacity();
            if room > 0 {
                let n = room.min(data.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&data[..n]), false)
                    .map_err(broken)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The connection writes what the stream queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.sent_end {
            this.sent_end = true;
            // Already reset or closed: the end is there either way.
            let _ = this.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client and a server HTTP/2 connection over an in-memory pipe, both driven; the
    /// client's streams get `client_window` bytes of receive window.
    async fn pair(
        client_window: u32,
    ) -> (
        h2::client::SendRequest<Bytes>,
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    ) {
        let (c, s) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move { h2::server::handshake(s).await.unwrap() });
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(client_window)
            .handshake(c)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (send, server.await.unwrap())
    }

    /// Drive the server connection in the background; accepted streams come out of the
    /// returned channel.
    fn accept(
        mut conn: h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<(http::Request<RecvStream>, h2::server::SendResponse<Bytes>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(s)) = conn.accept().await {
                let _ = tx.send(s);
            }
        });
        rx
    }

    #[tokio::test]
    async fn an_answer_without_window_is_given_up_at_the_stall_deadline() {
        let (send, conn) = pair(0).await;
        let mut streams = accept(conn);
        let req = http::Request::get("https://h/").body(()).unwrap();
        let (resp, _) = send.ready().await.unwrap().send_request(req, true).unwrap();
        let (_, mut respond) = streams.recv().await.unwrap();
        let mut out = respond.send_response(http::Response::new(()), false).unwrap();
        let started = std::time::Instant::now();
        let sent = send_all(&mut out, Bytes::from(vec![7u8; 1000]), true, Duration::from_millis(200)).await;
        assert_eq!(sent, Err(SendStop::Stalled));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(resp.await.unwrap().status(), 200, "the head went out");
    }

    #[tokio::test]
    async fn a_stream_moves_bytes_both_ways_past_its_windows() {
        let (send, conn) = pair(65_535).await;
        let mut streams = accept(conn);
        let req = http::Request::post("https://h/").body(()).unwrap();
        let (resp, mut upload) = send.ready().await.unwrap().send_request(req, false).unwrap();
        let (req, mut respond) = streams.recv().await.unwrap();
        let down = respond.send_response(http::Response::new(()), false).unwrap();
        let mut io = StreamIo::new(down, req.into_body());
        // 300 KB each way: four times the windows, so both sides wait for credit.
        let payload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let client = {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut rest = Bytes::from(payload);
                while !rest.is_empty() {
                    upload.reserve_capacity(rest.len());
                    let n = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    upload
                        .send_data(rest.split_to(n.min(rest.len())), rest.is_empty())
                        .unwrap();
                }
                let mut body = resp.await.unwrap().into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    body.flow_control().release_capacity(chunk.len()).unwrap();
                    got.extend_from_slice(&chunk);
                }
                got
            })
        };
        let mut received = Vec::new();
        io.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, payload, "the client's bytes, in order, then its end");
        io.write_all(&payload).await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), payload, "the server's bytes, then the end");
    }
}
