//! A session on WebSocket: one task per connection that reads the client's frames, writes
//! what the session queues, and keeps the heartbeat. Reads go into a buffer on the stack
//! of each poll and writes are batched through another, so between messages the task
//! holds no buffer at all; bytes are kept only when the client sends a message in pieces
//! or stops reading. For a polling session being upgraded, the task first answers the
//! probe and waits for the client's `5`, then takes the session over.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Io;
use super::eio::{self, Incoming, Outgoing};
use super::frames::{self, Frames, Message, OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, close};
use super::receive::receive;
use super::session::{Closed, Session, Transport};

/// Bytes read per poll; also the size of a batch of small frames written at once.
const CHUNK: usize = 16 * 1024;
/// How long a closing connection may take to send what was queued before its close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// What woke the connection task.
enum Step {
    Messages(Vec<Message>),
    Timer,
    /// The session ended (for the reason it holds).
    Ended,
    /// The client's bytes broke the protocol: close with this code.
    Refused(u16),
    /// The connection is gone.
    Gone,
}

/// A frame partly written (the client is not reading fast enough).
struct Unsent {
    head: [u8; 10],
    head_len: usize,
    body: Bytes,
    written: usize,
}

impl Unsent {
    fn new(op: u8, body: Bytes) -> Unsent {
        let (head, head_len) = frames::header(op, body.len());
        Unsent {
            head,
            head_len,
            body,
            written: 0,
        }
    }

    fn poll_write<S: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, conn: &mut S) -> Poll<io::Result<()>> {
        while self.written < self.head_len + self.body.len() {
            let rest = if self.written < self.head_len {
                &self.head[self.written..self.head_len]
            } else {
                &self.body[self.written - self.head_len..]
            };
            match ready!(Pin::new(&mut *conn).poll_write(cx, rest))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.written += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The connection's side of the session.
struct Conn<S> {
    io: S,
    frames: Frames,
    unsent: Option<Unsent>,
    /// Whether this connection carries the session's packets (false while upgrading).
    carries: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Write what is unsent, then (when `carries`) the session's queue, batching frames.
    fn poll_flush(&mut self, cx: &mut Context<'_>, session: &Session) -> Poll<io::Result<()>> {
        loop {
            if let Some(unsent) = &mut self.unsent {
                ready!(unsent.poll_write(cx, &mut self.io))?;
                self.unsent = None;
            }
            if !self.carries {
                return Poll::Ready(Ok(()));
            }
            let mut batch = [0u8; CHUNK];
            let mut len = 0;
            {
                let mut state = session.state();
                while let Some(packet) = state.outbox.front() {
                    let (op, body) = match packet {
                        // A noop only ends a long-poll during an upgrade.
                        Outgoing::Text(t) if &t[..] == b"6" => {
                            state.outbox.pop_front();
                            continue;
                        }
                        Outgoing::Text(t) => (OP_TEXT, t),
                        Outgoing::Binary(b) => (OP_BINARY, b),
                    };
                    let (head, n) = frames::header(op, body.len());
                    if len + n + body.len() <= CHUNK {
                        batch[len..len + n].copy_from_slice(&head[..n]);
                        batch[len + n..len + n + body.len()].copy_from_slice(body);
                        len += n + body.len();
                        state.outbox.pop_front();
                    } else {
                        if len == 0 {
                            self.unsent = Some(Unsent::new(op, body.clone()));
                            state.outbox.pop_front();
                        }
                        break;
                    }
                }
                // An idle client keeps no queue.
                if state.outbox.is_empty() && state.outbox.capacity() > 0 {
                    state.outbox = VecDeque::new();
                }
            }
            if len == 0 && self.unsent.is_none() {
                return Poll::Ready(Ok(()));
            }
            let mut written = 0;
            while written < len {
                match Pin::new(&mut self.io).poll_write(cx, &batch[written..len]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        let rest = Bytes::copy_from_slice(&batch[written..len]);
                        self.unsent = Some(Unsent {
                            head: [0; 10],
                            head_len: 0,
                            body: rest,
                            written: 0,
                        });
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Everything the connection task waits for, in one poll.
    fn poll_step(&mut self, cx: &mut Context<'_>, session: &Session, max: usize, timer: Pin<&mut Sleep>) -> Poll<Step> {
        // While upgrading, the long-poll is who the session wakes.
        if self.carries {
            session.waker.register(cx.waker());
        }
        if session.state().closed.is_some() {
            return Poll::Ready(Step::Ended);
        }
        if let Poll::Ready(Err(_)) = self.poll_flush(cx, session) {
            return Poll::Ready(Step::Gone);
        }
        let mut chunk = [0u8; CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Step::Gone),
            Poll::Ready(Ok(())) => {
                let mut messages = Vec::new();
                return Poll::Ready(match self.frames.feed(buf.filled(), max, &mut messages) {
                    Ok(()) => Step::Messages(messages),
                    Err(refused) => Step::Refused(refused.0),
                });
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Step::Gone),
            Poll::Pending => {}
        }
        match timer.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Step::Timer),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Write what is unsent (only that: not the session's queue).
    async fn flush_unsent(&mut self) -> io::Result<()> {
        poll_fn(|cx| match &mut self.unsent {
            Some(unsent) => {
                ready!(unsent.poll_write(cx, &mut self.io))?;
                self.unsent = None;
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Ok(())),
        })
        .await
    }

    /// Send one frame now, after anything unsent.
    async fn send(&mut self, op: u8, body: Bytes) -> io::Result<()> {
        self.flush_unsent().await?;
        self.unsent = Some(Unsent::new(op, body));
        self.flush_unsent().await
    }

    /// Flush the session's queue if this connection carries it, send a close frame and
    /// shut the connection, giving up after `CLOSE_FLUSH` (`timer` is the task's).
    async fn finish(&mut self, session: &Session, code: u16, mut timer: Pin<&mut Sleep>) {
        timer.as_mut().reset(Instant::now() + CLOSE_FLUSH);
        let [hi, lo] = code.to_be_bytes();
        let mut close = Some(Unsent {
            head: [0x80 | OP_CLOSE, 2, hi, lo, 0, 0, 0, 0, 0, 0],
            head_len: 4,
            body: Bytes::new(),
            written: 0,
        });
        let _: io::Result<()> = poll_fn(|cx| {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_flush(cx, session))?;
            if let Some(frame) = &mut close {
                ready!(frame.poll_write(cx, &mut self.io))?;
                close = None;
            }
            Pin::new(&mut self.io).poll_shutdown(cx)
        })
        .await;
    }
}

/// Serve `session` on the WebSocket `io`: a new session (`upgrade` false), or a polling
/// one upgrading (`upgrade` true).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(server: Arc<Io>, session: Arc<Session>, io: S, upgrade: bool) {
    let config = &server.config;
    let mut conn = Conn {
        io,
        frames: Frames::default(),
        unsent: None,
        carries: !upgrade,
    };
    let started = Instant::now();
    let first = if upgrade {
        config.upgrade_timeout
    } else {
        config.ping_interval.min(config.connect_timeout)
    };
    let timer = tokio::time::sleep_until(started + first);
    tokio::pin!(timer);
    let mut next_ping = started + config.ping_interval;
    let mut pong_due = None;
    if !upgrade {
        let open = eio::open_packet(
            session.sid.as_str(),
            false,
            config.ping_interval,
            config.ping_timeout,
            config.max_payload as u64,
        );
        if conn.send(OP_TEXT, open).await.is_err() {
            return server.close(&session, Closed::TransportError);
        }
    }
    let ended = loop {
        let step = poll_fn(|cx| conn.poll_step(cx, &session, config.max_payload, timer.as_mut())).await;
        match step {
            Step::Messages(messages) => {
                for message in messages {
                    if session.state().closed.is_some() {
                        break;
                    }
                    match message {
                        Message::Ping(body) => {
                            if conn.send(OP_PONG, body).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => {
                            server.close(&session, Closed::ByClient);
                        }
                        Message::Text(text) if !conn.carries => {
                            tracing::trace!(sid = %session.id, text, "upgrading WebSocket");
                            if text == "2probe" {
                                // The answer first, then the noop that ends the held long-poll
                                // (Node's order: the client pauses polling on the answer).
                                if conn.send(OP_TEXT, Bytes::from_static(b"3probe")).await.is_err() {
                                    break;
                                }
                                session.state().upgrading = true;
                                let _ = session.push(Outgoing::text("6"));
                            } else if text == "5" && session.state().upgrading {
                                let mut state = session.state();
                                state.transport = Transport::WebSocket;
                                state.upgrading = false;
                                drop(state);
                                session.waker.wake(); // a long-poll still held ends with a noop
                                conn.carries = true;
                                timer.as_mut().reset(Instant::now() + config.ping_interval);
                                next_ping = Instant::now() + config.ping_interval;
                            }
                        }
                        Message::Text(text) => {
                            let result = eio::decode_text(&text)
                                .map_err(|_| Closed::ProtocolError)
                                .and_then(|packet| receive(&server, &session, packet));
                            if let Err(why) = result {
                                server.close(&session, why);
                            }
                        }
                        Message::Binary(bytes) if conn.carries => {
                            if let Err(why) = receive(&server, &session, Incoming::Binary(bytes)) {
                                server.close(&session, why);
                            }
                        }
                        Message::Binary(_) => {}
                    }
                }
            }
            Step::Timer if !conn.carries => break None, // the upgrade did not complete
            Step::Timer => {
                let now = Instant::now();
                let (connected, awaiting) = {
                    let state = session.state();
                    (state.connected, state.awaiting_pong)
                };
                if !connected && now >= started + config.connect_timeout {
                    server.close(&session, Closed::ConnectTimeout);
                } else if awaiting && pong_due.is_some_and(|due| now >= due) {
                    server.close(&session, Closed::PingTimeout);
                } else if now >= next_ping {
                    session.state().awaiting_pong = true;
                    let _ = session.push(Outgoing::text("2"));
                    pong_due = Some(now + config.ping_timeout);
                    next_ping = now + config.ping_interval;
                }
                let mut wake = next_ping;
                if let Some(due) = pong_due.filter(|_| session.state().awaiting_pong) {
                    wake = wake.min(due);
                }
                if !connected {
                    wake = wake.min(started + config.connect_timeout);
                }
                timer.as_mut().reset(wake.max(now + Duration::from_millis(1)));
            }
            Step::Ended => break session.state().closed,
            Step::Refused(code) => {
                let why = if code == close::TOO_BIG {
                    Closed::TooBig
                } else {
                    Closed::ProtocolError
                };
                if conn.carries {
                    server.close(&session, why);
                }
                conn.finish(&session, code, timer.as_mut()).await;
                return;
            }
            // Gone before the upgrade completed: the session goes on polling.
            Step::Gone => break conn.carries.then_some(Closed::TransportError),
        }
    };
    match ended {
        // An upgrade that did not complete: the session goes on polling.
        None => {
            session.state().upgrading = false;
            conn.finish(&session, close::NORMAL, timer.as_mut()).await;
        }
        Some(Closed::TransportError) => server.close(&session, Closed::TransportError),
        Some(why) => {
            let code = match why {
                Closed::Shutdown => close::GOING_AWAY,
                Closed::TooBig => close::TOO_BIG,
                Closed::ProtocolError => close::PROTOCOL,
                Closed::TooSlow => close::POLICY,
                _ => close::NORMAL,
            };
            conn.finish(&session, code, timer.as_mut()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::super::frames::{OP_BINARY, OP_PING};
    use super::super::testing::server;
    use super::*;

    /// The client's end of a WebSocket served by `run`.
    struct Client(DuplexStream);

    impl Client {
        fn start(io: &Arc<Io>) -> (Client, Arc<Session>) {
            let session = Arc::new(Session::new(Transport::WebSocket));
            io.register(&session);
            (Client::on(io, &session, false), session)
        }

        /// A WebSocket for `session`: new, or upgrading it from polling.
        fn on(io: &Arc<Io>, session: &Arc<Session>, upgrade: bool) -> Client {
            let (client, conn) = tokio::io::duplex(64 * 1024);
            tokio::spawn(run(Arc::clone(io), Arc::clone(session), conn, upgrade));
            Client(client)
        }

        async fn send(&mut self, opcode: u8, payload: &[u8]) {
            let mut frame = vec![0x80 | opcode, 0x80 | 126];
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            frame.extend_from_slice(&[1, 2, 3, 4]);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
            self.0.write_all(&frame).await.unwrap();
        }

        /// The next frame from the server: opcode and payload (None once closed).
        async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
            let mut head = [0u8; 2];
            self.0.read_exact(&mut head).await.ok()?;
            let len = match head[1] {
                126 => u64::from(self.0.read_u16().await.ok()?),
                127 => self.0.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut body = vec![0; len as usize];
            self.0.read_exact(&mut body).await.ok()?;
            Some((head[0] & 0x0f, body))
        }

        async fn text(&mut self) -> String {
            let (op, body) = self.next().await.expect("a frame");
            assert_eq!(op, OP_TEXT, "{body:?}");
            String::from_utf8(body).unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_client_connects_talks_is_pinged_and_cut_when_silent() {
        let (io, hooks) = server();
        let (mut c, session) = Client::start(&io);
        let open = c.text().await;
        assert!(
            open.starts_with(&format!(r#"0{{"sid":"{}","upgrades":[]"#, session.sid)),
            "{open}"
        );
        c.send(OP_TEXT, b"40").await;
        assert_eq!(c.text().await, format!(r#"40{{"sid":"{}"}}"#, session.id));
        c.send(OP_TEXT, br#"421["whoami"]"#).await;
        assert_eq!(c.text().await, r#"431["ok"]"#);
        assert_eq!(hooks.args(), [serde_json::json!(["whoami"])]);
        // Another namespace is refused, and the session goes on.
        c.send(OP_TEXT, b"40/admin,").await;
        assert_eq!(c.text().await, r#"44/admin,{"message":"Invalid namespace"}"#);
        // A broadcast with a binary attachment: its text, then the binary frame.
        let bin = Bytes::from_static(&[0, 1, 2]);
        let said = super::super::packet::event(
            &serde_json::json!(["said", {"_placeholder": true, "num": 0}]),
            Some([bin.clone()].into()),
            None,
        );
        let everyone = {
            let mut o = socketioxide_core::adapter::BroadcastOptions::default();
            o.add_flag(socketioxide_core::adapter::BroadcastFlags::Broadcast);
            o
        };
        assert_eq!(io.deliver(&said, &everyone), 1);
        assert_eq!(c.text().await, r#"451-["said",{"_placeholder":true,"num":0}]"#);
        assert_eq!(c.next().await, Some((OP_BINARY, bin.to_vec())));
        c.send(OP_PING, b"x").await;
        assert_eq!(c.next().await, Some((OP_PONG, b"x".to_vec())));

        // Pinged every interval; a pong keeps it, silence ends it after the timeout.
        let started = Instant::now();
        assert_eq!(c.text().await, "2");
        assert!(started.elapsed() >= Duration::from_secs(24));
        c.send(OP_TEXT, b"3").await;
        assert_eq!(c.text().await, "2");
        let pinged = Instant::now();
        assert_eq!(c.next().await, Some((OP_CLOSE, 1000u16.to_be_bytes().to_vec())));
        assert!(pinged.elapsed() >= Duration::from_secs(20));
        assert_eq!(session.state().closed, Some(Closed::PingTimeout));
        assert!(io.session(session.sid).is_none(), "forgotten");
        assert_eq!(hooks.connected.load(Ordering::SeqCst), 1);
        assert_eq!(hooks.disconnected.load(Ordering::SeqCst), 1);
    }

    /// The body of a long-poll of `session`.
    async fn poll(io: &Arc<Io>, session: &Arc<Session>) -> (u16, Vec<u8>) {
        let response = super::super::polling::get(Arc::clone(io), Arc::clone(session)).await;
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, body.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn a_polling_session_upgrades_as_socket_io_client_does_it() {
        let (io, _) = server();
        let session = super::super::testing::connected(&io, Transport::Polling);
        let held = tokio::spawn({
            let (io, session) = (Arc::clone(&io), Arc::clone(&session));
            async move { poll(&io, &session).await }
        });
        tokio::task::yield_now().await;
        let mut c = Client::on(&io, &session, true);
        c.send(OP_TEXT, b"2probe").await;
        assert_eq!(c.text().await, "3probe");
        assert_eq!(
            held.await.unwrap(),
            (200, b"6".to_vec()),
            "the held poll ends with a noop"
        );
        assert_eq!(session.transport(), Transport::Polling, "until the client's 5");
        c.send(OP_TEXT, b"5").await;
        c.send(OP_TEXT, br#"427["whoami"]"#).await;
        assert_eq!(c.text().await, r#"437["ok"]"#, "the WebSocket carries the session now");
        assert_eq!(session.transport(), Transport::WebSocket);
        assert_eq!(poll(&io, &session).await.0, 400, "no polling after the upgrade");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_that_comes_during_the_upgrade_ends_with_a_noop_at_once() {
        let (io, _) = server();
        let session = super::super::testing::connected(&io, Transport::Polling);
        let mut c = Client::on(&io, &session, true);
        c.send(OP_TEXT, b"2probe").await;
        assert_eq!(c.text().await, "3probe");
        assert_eq!(poll(&io, &session).await, (200, b"6".to_vec()), "the probe's noop");
        // The client polled again before it read the probe's answer: that poll must end
        // too, or the client never pauses polling and never sends its `5`.
        let again = tokio::time::timeout(Duration::from_secs(1), poll(&io, &session)).await;
        assert_eq!(again.ok(), Some((200, b"6".to_vec())));
        c.send(OP_TEXT, b"5").await;
        c.send(OP_TEXT, br#"427["whoami"]"#).await;
        assert_eq!(c.text().await, r#"437["ok"]"#);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgrade_that_does_not_complete_leaves_the_session_on_polling() {
        let (io, _) = server();
        let session = super::super::testing::connected(&io, Transport::Polling);
        let mut c = Client::on(&io, &session, true);
        c.send(OP_TEXT, b"2probe").await;
        assert_eq!(c.text().await, "3probe");
        let probed = Instant::now();
        assert_eq!(c.next().await, Some((OP_CLOSE, close::NORMAL.to_be_bytes().to_vec())));
        assert!(probed.elapsed() >= Duration::from_secs(9));
        let after = {
            let state = session.state();
            (state.transport, state.upgrading, state.closed)
        };
        assert_eq!(after, (Transport::Polling, false, None));
        session.push(Outgoing::text("2")).unwrap();
        assert_eq!(
            poll(&io, &session).await,
            (200, b"6\x1e2".to_vec()),
            "the probe's noop, then what comes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bad_clients_are_closed_with_the_right_code_and_never_counted_twice() {
        let (io, hooks) = server();
        // An event before the CONNECT answer (one segment): closed, as Node does, and the
        // socket was never counted, so nothing is uncounted either.
        let (mut c, _) = Client::start(&io);
        c.text().await;
        let mut both = Vec::new();
        for payload in [&b"40"[..], br#"42["say","r","x"]"#] {
            both.extend([0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
            both.extend_from_slice(payload);
        }
        c.0.write_all(&both).await.unwrap();
        assert_eq!(c.next().await, Some((OP_CLOSE, close::PROTOCOL.to_be_bytes().to_vec())));
        tokio::time::sleep(Duration::from_millis(10)).await;

        // A message over the limit: 1009 from its header on.
        let (mut c, _) = Client::start(&io);
        c.text().await;
        c.send(OP_TEXT, &[b'4'; 1001]).await;
        assert_eq!(c.next().await, Some((OP_CLOSE, close::TOO_BIG.to_be_bytes().to_vec())));

        // Attachments announced and not sent: cut at the deadline, counted.
        let (mut c, session) = Client::start(&io);
        c.text().await;
        c.send(OP_TEXT, b"40").await;
        c.text().await;
        c.send(OP_TEXT, br#"451-["say","r",{"_placeholder":true,"num":0}]"#)
            .await;
        let announced = Instant::now();
        let closed = loop {
            match c.next().await {
                Some((OP_TEXT, ping)) if ping == b"2" => c.send(OP_TEXT, b"3").await,
                other => break other,
            }
        };
        assert_eq!(closed, Some((OP_CLOSE, close::NORMAL.to_be_bytes().to_vec())));
        assert!(announced.elapsed() >= Duration::from_secs(10));
        assert_eq!(session.state().closed, Some(Closed::AttachmentsOverdue));
        assert_eq!(hooks.overdue.load(Ordering::SeqCst), 1);

        // A client that connects without CONNECT is cut at the connect timeout.
        let (mut c, session) = Client::start(&io);
        c.text().await;
        let opened = Instant::now();
        while let Some((op, _)) = c.next().await {
            if op == OP_CLOSE {
                break;
            }
        }
        assert!(opened.elapsed() >= Duration::from_secs(45));
        assert_eq!(session.state().closed, Some(Closed::ConnectTimeout));

        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(hooks.connected.load(Ordering::SeqCst), 1);
        assert_eq!(hooks.disconnected.load(Ordering::SeqCst), 1);
        assert!(hooks.args().is_empty(), "nothing was dispatched");
    }
}
