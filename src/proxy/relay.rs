//! The tunnel after a `101`: edgepin's own relay between the client and the server of a
//! WebSocket, in a small task of its own.
//!
//! - No buffer while idle: each direction reads into a buffer shared by the thread
//!   ([`SCRATCH`]) and writes straight on; only the bytes the other side does not take
//!   at once are kept, in a buffer of that size, freed when sent.
//! - Backpressure: a direction with unsent bytes stops reading, so a peer that never
//!   reads holds at most one read's worth of the proxy's memory.
//! - Half-close: an end that stops sending is passed on (`shutdown` of the other side's
//!   write half), and the other direction goes on until it ends too.
//! - Idle timeout (`timeouts.tunnel`): no byte either way for that long ends it.
//! - Closed from outside (MAINT, drain expiry, a moved server, SIGTERM, the end of an
//!   upgrade's drain) through its [`TunnelCtl`]: the client gets a WebSocket close frame
//!   (1001 going away, or 1012 service restart after an upgrade), sent at a frame
//!   boundary of the server's stream so that it is never spliced into a frame.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::state::TunnelCtl;

/// A WebSocket close frame, server to client (unmasked), with status `code`.
pub fn close_frame(code: u16) -> [u8; 4] {
    let [hi, lo] = code.to_be_bytes();
    [0x88, 0x02, hi, lo]
}

/// Bytes read at a time; also the most a stalled direction holds.
const SCRATCH_SIZE: usize = 16 * 1024;

/// Reads per direction in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;

/// How long closing a tunnel may take: a client that does not read holds its place no
/// longer than this after edgepin has decided to close it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// The read buffer of every tunnel on this thread (used within one poll, never held).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both ends finished (the server first, or the client first).
    ServerClosed,
    ClientClosed,
    Idle,
    /// Closed by edgepin (MAINT, drain, moved server, stop).
    ByEdge,
    Error,
}

/// What went through a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Client to server.
    pub bytes_in: u64,
    /// Server to client.
    pub bytes_out: u64,
    pub ended: Ended,
}

/// Where the server's stream is, frame by frame (RFC 6455 §5.2), so a close frame of
/// ours lands between frames.
#[derive(Debug, Clone, Copy, Default)]
struct Frames {
    /// Header bytes seen of the current frame (0: at a boundary).
    header: [u8; 14],
    have: u8,
    /// Payload bytes left in the current frame.
    left: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len() as u64);
                self.left -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.have as usize] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some((len, header_len)) = self.header_complete()
                && self.have as usize == header_len
            {
                self.left = len;
                self.have = 0;
            }
        }
    }

    /// (payload length, header length) once enough header bytes are in.
    fn header_complete(&self) -> Option<(u64, usize)> {
        let h = &self.header[..self.have as usize];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let mask = if masked { 4 } else { 0 };
        match h[1] & 0x7f {
            126 if h.len() >= 4 => Some((u64::from(u16::from_be_bytes([h[2], h[3]])), 4 + mask)),
            127 if h.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                Some((u64::from_be_bytes(b), 10 + mask))
            }
            126 | 127 => None,
            n => Some((u64::from(n), 2 + mask)),
        }
    }
}

/// One direction of the tunnel.
#[derive(Debug, Default)]
struct Flow {
    /// Bytes read but not yet taken by the other side (empty, unallocated, when idle).
    pending: Vec<u8>,
    sent: usize,
    /// The source has ended.
    eof: bool,
    /// The destination's write half is shut down.
    shut: bool,
    /// Written but maybe held in the destination's buffers (TLS records): flush first.
    unflushed: bool,
    bytes: u64,
}

/// Relay until the tunnel ends. `to_server` and `to_client` are bytes already read past
/// the heads (a client's first frame, the server's first frame). `watch` sees the
/// server's first bytes until it returns true (sid learning).
#[allow(clippy::too_many_arguments)]
pub async fn relay<C, S, W>(
    client: C,
    server: S,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    idle: Duration,
    ctl: Arc<TunnelCtl>,
    watch: W,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    W: FnMut(&[u8]) -> bool + Unpin,
{
    let mut frames = Frames::default();
    frames.feed(&to_client);
    let mut tunnel = Tunnel {
        client,
        server,
        up: Flow {
            pending: to_server,
            ..Flow::default()
        },
        down: Flow {
            pending: to_client,
            ..Flow::default()
        },
        frames,
        idle,
        last: Instant::now(),
        timer: Box::pin(tokio::time::sleep(idle)),
        ctl,
        watch: Some(watch),
        closing: None,
        first_end: None,
    };
    if let Some(w) = tunnel.watch.as_mut()
        && !tunnel.down.pending.is_empty()
        && w(&tunnel.down.pending)
    {
        tunnel.watch = None;
    }
    tunnel.await
}

struct Tunnel<C, S, W> {
    client: C,
    server: S,
    /// Client to server.
    up: Flow,
    /// Server to client.
    down: Flow,
    frames: Frames,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    ctl: Arc<TunnelCtl>,
    watch: Option<W>,
    /// Closing by edgepin: the close frame's bytes still to write.
    closing: Option<usize>,
    /// Which end stopped sending first.
    first_end: Option<Ended>,
}

enum Step {
    /// Moved bytes; poll again.
    Progress,
    /// This direction is finished.
    Done,
}

/// Move bytes from `src` to `dst` through `flow`; `seen` is told of each chunk read.
fn pump<R, T>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut T,
    flow: &mut Flow,
    mut seen: impl FnMut(&[u8]),
) -> Poll<std::io::Result<Step>>
where
    R: AsyncRead + Unpin,
    T: AsyncWrite + Unpin,
{
    // Unsent bytes first: nothing more is read until the other side took them.
    while flow.sent < flow.pending.len() {
        let n = ready!(Pin::new(&mut *dst).poll_write(cx, &flow.pending[flow.sent..]))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        flow.sent += n;
    }
    if !flow.pending.is_empty() {
        flow.pending = Vec::new();
        flow.sent = 0;
        flow.unflushed = true;
    }
    if flow.unflushed {
        ready!(Pin::new(&mut *dst).poll_flush(cx))?;
        flow.unflushed = false;
        return Poll::Ready(Ok(Step::Progress));
    }
    if flow.eof {
        if !flow.shut {
            ready!(Pin::new(&mut *dst).poll_flush(cx))?;
            // The other side may already be gone; the direction is over either way.
            let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
            flow.shut = true;
        }
        return Poll::Ready(Ok(Step::Done));
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(&mut *src).poll_read(cx, &mut buf))?;
        let data = buf.filled();
        if data.is_empty() {
            flow.eof = true;
            return Poll::Ready(Ok(Step::Progress));
        }
        flow.bytes += data.len() as u64;
        seen(data);
        let written = match Pin::new(&mut *dst).poll_write(cx, data) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => 0,
        };
        if written < data.len() {
            flow.pending.extend_from_slice(&data[written..]);
        } else {
            flow.unflushed = true;
        }
        Poll::Ready(Ok(Step::Progress))
    })
}

impl<C, S, W> Tunnel<C, S, W>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    W: FnMut(&[u8]) -> bool + Unpin,
{
    fn result(&self, ended: Ended) -> Poll<Relayed> {
        Poll::Ready(Relayed {
            bytes_in: self.up.bytes,
            bytes_out: self.down.bytes,
            ended,
        })
    }

    /// Closing by edgepin: the server's side ends first, then the client gets what the
    /// server had sent, the close frame (at a frame boundary) and the end.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Relayed> {
        if self.timer.as_mut().poll(cx).is_ready() {
            // `CLOSE_WAIT` passed: the client took nothing; drop both ends.
            return self.result(Ended::ByEdge);
        }
        if !self.up.shut {
            // Not read from again: the server sees the end at once.
            let _ = ready!(Pin::new(&mut self.server).poll_shutdown(cx));
            self.up.shut = true;
        }
        loop {
            // Unsent server bytes first (whole frames as far as they go).
            while self.down.sent < self.down.pending.len() {
                match Pin::new(&mut self.client).poll_write(cx, &self.down.pending[self.down.sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.down.sent += n,
                    Poll::Pending => return Poll::Pending,
                    _ => return self.result(Ended::ByEdge),
                }
            }
            let Some(written) = self.closing else {
                return self.result(Ended::ByEdge);
            };
            if written == 0 && !self.frames.at_boundary() {
                // Mid-frame: a close frame now would corrupt the stream; just close.
                return self.result(Ended::ByEdge);
            }
            let frame = close_frame(self.ctl.code());
            if written < frame.len() {
                match Pin::new(&mut self.client).poll_write(cx, &frame[written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => self.closing = Some(written + n),
                    Poll::Pending => return Poll::Pending,
                    _ => return self.result(Ended::ByEdge),
                }
                continue;
            }
            let _ = ready!(Pin::new(&mut self.client).poll_flush(cx));
            let _ = ready!(Pin::new(&mut self.client).poll_shutdown(cx));
            return self.result(Ended::ByEdge);
        }
    }
}

impl<C, S, W> Future for Tunnel<C, S, W>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    W: FnMut(&[u8]) -> bool + Unpin,
{
    type Output = Relayed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Relayed> {
        let this = self.get_mut();
        this.ctl.register(cx.waker());
        if this.closing.is_some() {
            return this.poll_close(cx);
        }
        if this.ctl.is_closed() {
            this.closing = Some(0);
            this.timer.as_mut().reset((Instant::now() + CLOSE_WAIT).into());
            return this.poll_close(cx);
        }
        let (mut up_done, mut down_done) = (false, false);
        for _ in 0..READS_PER_POLL {
            let mut moved = false;
            if !up_done {
                match pump(cx, &mut this.client, &mut this.server, &mut this.up, |_| {}) {
                    Poll::Ready(Ok(Step::Progress)) => moved = true,
                    Poll::Ready(Ok(Step::Done)) => up_done = true,
                    Poll::Pending => {}
                    Poll::Ready(Err(_)) => return this.result(Ended::Error),
                }
            }
            if !down_done {
                let (frames, watch) = (&mut this.frames, &mut this.watch);
                let seen = |data: &[u8]| {
                    frames.feed(data);
                    if let Some(w) = watch.as_mut()
                        && w(data)
                    {
                        *watch = None;
                    }
                };
                match pump(cx, &mut this.server, &mut this.client, &mut this.down, seen) {
                    Poll::Ready(Ok(Step::Progress)) => moved = true,
                    Poll::Ready(Ok(Step::Done)) => down_done = true,
                    Poll::Pending => {}
                    Poll::Ready(Err(_)) => return this.result(Ended::Error),
                }
            }
            if this.first_end.is_none() {
                if this.down.eof {
                    this.first_end = Some(Ended::ServerClosed);
                } else if this.up.eof {
                    this.first_end = Some(Ended::ClientClosed);
                }
            }
            if up_done && down_done {
                // Whoever stopped sending first ended it.
                return this.result(this.first_end.unwrap_or(Ended::ServerClosed));
            }
            if !moved {
                // Both directions wait for I/O: arm the idle timer.
                let deadline = this.last + this.idle;
                if Instant::now() >= deadline {
                    return this.result(Ended::Idle);
                }
                this.timer.as_mut().reset(deadline.into());
                if this.timer.as_mut().poll(cx).is_ready() {
                    return this.result(Ended::Idle);
                }
                return Poll::Pending;
            }
            this.last = Instant::now();
        }
        // Busy: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x82];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// A relay between two in-memory pipes with a 5 s idle timeout, as a task.
    fn spawn_relay(
        client: tokio::io::DuplexStream,
        server: tokio::io::DuplexStream,
        early: &[u8],
        ctl: &Arc<TunnelCtl>,
    ) -> tokio::task::JoinHandle<Relayed> {
        tokio::spawn(relay(
            client,
            server,
            early.to_vec(),
            Vec::new(),
            Duration::from_secs(5),
            Arc::clone(ctl),
            |_: &[u8]| true,
        ))
    }

    #[test]
    fn frame_boundaries_are_tracked_in_any_split() {
        let mut stream = Vec::new();
        for n in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(&vec![7u8; n]));
        }
        let mut whole = Frames::default();
        whole.feed(&stream);
        assert!(whole.at_boundary());
        let mut bytes = Frames::default();
        for (i, b) in stream.iter().enumerate() {
            bytes.feed(std::slice::from_ref(b));
            if i == 3 {
                assert!(!bytes.at_boundary());
            }
        }
        assert!(bytes.at_boundary());
        let mut half = Frames::default();
        half.feed(&stream[..stream.len() - 1]);
        assert!(!half.at_boundary());
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_is_passed_on() {
        let (client, mut client_end) = duplex(64);
        let (server, mut server_end) = duplex(64);
        let task = spawn_relay(client, server, b"early", &Arc::default());
        let big = vec![1u8; 100_000];
        let writer = tokio::spawn(async move {
            client_end.write_all(&big).await.unwrap();
            client_end.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_end.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 5 + 100_000, "the client's half-close reached the server");
        assert_eq!(&got[..5], b"early");
        server_end.write_all(b"bye").await.unwrap();
        server_end.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let r = task.await.unwrap();
        assert_eq!((r.bytes_in, r.bytes_out), (100_000, 3));
        assert_eq!(r.ended, Ended::ClientClosed);
    }

    #[tokio::test]
    async fn an_idle_tunnel_ends_at_the_timeout() {
        let (client, _c) = duplex(64);
        let (server, _s) = duplex(64);
        let started = Instant::now();
        let r = relay(
            client,
            server,
            Vec::new(),
            Vec::new(),
            Duration::from_millis(100),
            Arc::default(),
            |_: &[u8]| true,
        )
        .await;
        assert_eq!(r.ended, Ended::Idle);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn closing_from_outside_sends_a_close_frame_between_frames() {
        let (client, mut client_end) = duplex(1 << 20);
        let (server, mut server_end) = duplex(1 << 20);
        let ctl = Arc::new(TunnelCtl::default());
        let task = spawn_relay(client, server, b"", &ctl);
        let f = frame(b"hello");
        server_end.write_all(&f).await.unwrap();
        let mut got = vec![0u8; f.len()];
        client_end.read_exact(&mut got).await.unwrap();
        ctl.close();
        let mut rest = Vec::new();
        client_end.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, close_frame(1001));
        assert_eq!(task.await.unwrap().ended, Ended::ByEdge);
    }

    #[tokio::test]
    async fn an_upgrade_closes_with_service_restart() {
        let (client, mut client_end) = duplex(1 << 20);
        let (server, _server_end) = duplex(1 << 20);
        let ctl = Arc::new(TunnelCtl::default());
        let task = spawn_relay(client, server, b"", &ctl);
        ctl.close_with(crate::state::CLOSE_SERVICE_RESTART);
        ctl.close();
        let mut rest = Vec::new();
        client_end.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, [0x88, 0x02, 0x03, 0xF4], "1012, the first code asked for");
        assert_eq!(task.await.unwrap().ended, Ended::ByEdge);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_a_tunnel_whose_client_never_reads_ends_after_the_close_wait() {
        let (client, _never_read) = duplex(1024);
        let (server, mut server_end) = duplex(1 << 20);
        let ctl = Arc::new(TunnelCtl::default());
        let task = spawn_relay(client, server, b"", &ctl);
        // The server fills the client's pipe, then the tunnel is closed from outside.
        server_end.write_all(&frame(&[7u8; 4000])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        ctl.close();
        tokio::time::sleep(CLOSE_WAIT - Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "still trying to write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(task.is_finished(), "given up after CLOSE_WAIT");
        assert_eq!(task.await.unwrap().ended, Ended::ByEdge);
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_holds_one_read_at_most() {
        let (client, _never_read) = duplex(1024);
        let (server, mut server_end) = duplex(1 << 20);
        let ctl = Arc::new(TunnelCtl::default());
        let task = spawn_relay(client, server, b"", &ctl);
        // The server can push only until the relay stops reading it.
        let pushed = tokio::time::timeout(Duration::from_millis(300), server_end.write_all(&vec![0u8; 4 << 20])).await;
        assert!(
            pushed.is_err(),
            "the relay kept reading a server whose client does not read"
        );
        ctl.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
}
