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
