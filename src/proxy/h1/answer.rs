//! Bodies on the HTTP/1 engine, both directions, each framed by `framing`: the client's
//! request body as an attempt sends it ([`Upload`], the engine's side of
//! `upstream::Client`: framed as it came, bounded by `limits.max_body_bytes` and a
//! minimum pace, the client watched for leaving), and the server's answer passed on
//! ([`Conn::forward`]: head rewritten, body framed as it came or de-chunked for an
//! HTTP/1.0 client, Engine.IO sids learned on the way, the server connection pooled when
//! [`reusable`] says so, a `101` handed to a tunnel). The close of a connection whose
//! client may still be sending a body lingers ([`Conn::linger`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::failure::{Counted, Failure};
use crate::proxy::access::Requested;
use crate::proxy::account::Totals;
use crate::proxy::tunnel::{Named, Upgraded};
use crate::proxy::upstream::head::{Header, Parsed, RespBody};
use crate::proxy::upstream::{Answer, Client};
use crate::runtime::BackendRt;
use crate::state::ActiveGuard;
use crate::sticky::cookie;
use crate::sticky::exchange::Learned;

use super::ctx::Ctx;
use super::framing::Framing;
use super::response::{self, Rewrite};
use super::{ClientRead, Conn, Next, READ_CHUNK};

/// The slowest a request body may come, averaged over each `timeouts.client` edgepin
/// waits for it: a client trickling a body is cut (408) within two such periods, so it
/// cannot hold a server slot (or its place) for long.
pub const MIN_BODY_RATE: u64 = 1024;

/// The pace of a request body, as the proxy waits for it: at least [`MIN_BODY_RATE`]
/// bytes a second (or the rest of the body, if less) in each `window` of waiting.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    window: Duration,
    waited: Duration,
    got: u64,
    /// Bytes still to come at the start of this window (`None`: unknown, chunked).
    left: Option<u64>,
}

impl Pace {
    pub fn new(window: Duration, left: Option<u64>) -> Pace {
        Pace {
            window,
            waited: Duration::ZERO,
            got: 0,
            left,
        }
    }

    /// `n` bytes came after a wait of `took`: `Err` once a window passed with too few.
    pub fn came(&mut self, n: usize, took: Duration) -> Result<(), ()> {
        self.waited += took;
        self.got += n as u64;
        if self.waited < self.window {
            return Ok(());
        }
        let rate = (MIN_BODY_RATE as f64 * self.window.as_secs_f64()) as u64;
        let need = self.left.map_or(rate, |l| l.min(rate));
        if self.got < need {
            return Err(());
        }
        self.left = self.left.map(|l| l.saturating_sub(self.got));
        self.waited = Duration::ZERO;
        self.got = 0;
        Ok(())
    }
}

/// Whether the server connection can carry another request after this answer: the server
/// keeps it open, the whole request reached it, the answer's body ended where its framing
/// says and nothing came after it.
pub(super) fn reusable(parsed: &Parsed, request_complete: bool, body_done: bool, broken: bool, extra: bool) -> bool {
    parsed.keep_alive && request_complete && body_done && !broken && !extra
}

/// How long a connection closed on a client still sending its body is read (and the bytes
/// dropped) before it is closed, so that the answer is not wiped by the reset a close
/// with unread bytes sends (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(2);

/// Client bytes held while an answer is awaited (pipelined requests); past this the
/// client is no longer read until the answer has come.
const WATCH_CAP: usize = 4 * READ_CHUNK;

/// The request body of one attempt, from the client's connection.
pub(super) struct Upload<'c, S> {
    conn: &'c mut Conn<S>,
    /// How the body is delimited; `None`: nothing to stream (no body, or one held whole
    /// and sent with the head).
    framing: Option<Framing>,
    /// Bytes at the start of the unread client bytes that the framing took and the server
    /// has not yet.
    unsent: usize,
    limit: u64,
    wait: Duration,
    /// The client's HTTP/1 minor version: interim answers go to HTTP/1.1 clients only
    /// (RFC 9110 §15.2).
    minor: u8,
    /// Body bytes that reached the server.
    pub sent: u64,
    pace: Pace,
}

impl<'c, S: AsyncRead + AsyncWrite + Unpin> Upload<'c, S> {
    pub fn new(conn: &'c mut Conn<S>, framing: Option<Framing>, limit: u64, wait: Duration, minor: u8) -> Self {
        // What is still to come from the client (some may be read already).
        let left = match framing {
            Some(Framing::Length { left }) => Some(left.saturating_sub(conn.pending().len() as u64)),
            _ => None,
        };
        Upload {
            conn,
            framing,
            unsent: 0,
            limit,
            wait,
            minor,
            sent: 0,
            pace: Pace::new(wait, left),
        }
    }

    /// The whole body was read from the client (the connection may carry another request).
    pub fn read_whole(&self) -> bool {
        self.framing.is_none_or(|f| f.is_done())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client for Upload<'_, S> {
    fn ready(&self) -> &[u8] {
        let at = self.conn.rpos;
        &self.conn.rbuf[at..at + self.unsent]
    }

    fn sent(&mut self, n: usize) {
        self.conn.rpos += n;
        self.unsent -= n;
        self.sent += n as u64;
    }

    fn complete(&self) -> bool {
        self.read_whole()
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        loop {
            let Some(framing) = self.framing.as_mut() else {
                return Ok(());
            };
            if framing.is_done() {
                return Ok(());
            }
            let from = self.conn.rpos + self.unsent;
            if from < self.conn.rbuf.len() {
                let adv = framing
                    .advance(&self.conn.rbuf[from..], |_| {})
                    .map_err(|_| Failure::BodyMalformed)?;
                let framed = self.sent + (self.unsent + adv.used) as u64;
                if framing.decoded().unwrap_or(framed) > self.limit {
                    return Err(Failure::BodyTooLarge);
                }
                self.unsent += adv.used;
                if self.unsent > 0 || adv.done {
                    return Ok(());
                }
            }
            let started = Instant::now();
            let n = self
                .conn
                .read_client(self.wait, READ_CHUNK * 4)
                .await
                .map_err(|e| match e {
                    ClientRead::TimedOut => Failure::BodyStalled,
                    ClientRead::Closed | ClientRead::Failed => Failure::ClientGone,
                })?;
            self.pace
                .came(n, started.elapsed())
                .map_err(|()| Failure::BodyStalled)?;
        }
    }

    async fn left(&mut self) {
        loop {
            if self.conn.pending().len() >= WATCH_CAP {
                std::future::pending::<()>().await;
            }
            self.conn.rbuf.reserve(READ_CHUNK);
            match self.conn.io.read_buf(&mut self.conn.rbuf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }

    async fn interim(&mut self, raw: &[u8], parsed: &Parsed, headers: &[Header]) -> Result<(), Failure> {
        if self.minor == 0 {
            return Ok(());
        }
        self.conn.wbuf.clear();
        response::write_head(&mut self.conn.wbuf, raw, parsed, headers, Rewrite::default());
        if self.conn.flush_client(self.wait).await {
            Ok(())
        } else {
            Err(Failure::ClientGone)
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Pass the server's answer on to the client (member `member` of `b` gave it), then
    /// say what follows on the connection.
    pub(super) async fn forward(
        &mut self,
        mut ctx: Ctx<'_>,
        b: &BackendRt,
        member: usize,
        answer: Answer,
        slot: ActiveGuard,
    ) -> Next {
        let head = ctx.head;
        let m = &b.members[member];
        let snap = Arc::clone(ctx.acct.snapshot());
        let cfg = &snap.config;
        let Answer {
            stream: mut up,
            parsed,
            request_complete,
        } = answer;
        ctx.rec.ttfb = Some(ctx.acct.started.elapsed());
        ctx.sticky.on_response(parsed.status, &self.shared.sids);
        ctx.acct.passive(false);
        let set_cookie = ctx
            .sticky
            .set_cookie()
            .then_some(b.cfg.cookie.as_deref())
            .flatten()
            .map(|name| cookie::set_cookie(name, &m.cookie_id, self.tls, cfg.sticky.same_site));
        let dechunk = head.minor == 0 && parsed.body == RespBody::Chunked;
        // An answer that came before the whole body: the rest of the body is still coming.
        let keep = head.keep_alive
            && request_complete
            && !self.shared.stopping()
            && parsed.body != RespBody::Close
            && !dechunk;
        let hsts = self.tls.then(|| crate::tls::hsts_value(cfg)).flatten();
        let rewrite = Rewrite {
            close: !keep,
            keep_alive_1_0: keep && head.minor == 0,
            dechunk,
            set_cookie: set_cookie.as_deref(),
            hsts: hsts.as_ref().map(|h| h.as_bytes()),
        };
        self.wbuf.clear();
        response::write_head(
            &mut self.wbuf,
            &self.answer.bytes,
            &parsed,
            &self.answer.headers,
            rewrite,
        );
        if parsed.status == 101 {
            // Boxed: a tunnel's set-up is rare, and would be part of every serving future.
            return Box::pin(self.upgrade(ctx, b, member, up, parsed.len, slot)).await;
        }
        let mut framing = match parsed.body {
            RespBody::None => None,
            RespBody::Length(n) => Some(Framing::length(n)),
            RespBody::Chunked => Some(Framing::chunked()),
            RespBody::Close => Some(Framing::Close),
        };
        let (server_wait, client_wait) = (b.cfg.timeouts.server, cfg.timeouts.client);
        let mut upos = parsed.len;
        let mut broken = false;
        let mut client_gone = false;
        if let Some(framing) = framing.as_mut() {
            loop {
                if upos < self.answer.bytes.len() {
                    let data = &self.answer.bytes[upos..];
                    let (wbuf, sids, sticky) = (&mut self.wbuf, &self.shared.sids, &mut ctx.sticky);
                    let mut learned = Learned::Nothing;
                    let adv = framing.advance(data, |r| {
                        if dechunk {
                            wbuf.extend_from_slice(&data[r.clone()]);
                        }
                        if sticky.scanning() {
                            let l = sticky.on_body(&data[r], sids, &m.state);
                            if l != Learned::Nothing {
                                learned = l;
                            }
                        }
                    });
                    let Ok(adv) = adv else {
                        ctx.rec.error_once("malformed response body");
                        broken = true;
                        break;
                    };
                    if learned == Learned::SessionUnknown {
                        ctx.acct.sid_unknown();
                    }
                    if !dechunk {
                        wbuf.extend_from_slice(&data[..adv.used]);
                    }
                    ctx.rec.bytes_out += adv.used as u64;
                    upos += adv.used;
                    if adv.done {
                        break;
                    }
                }
                if !self.flush_client(client_wait).await {
                    client_gone = true;
                    break;
                }
                self.answer.bytes.clear();
                upos = 0;
                self.answer.bytes.reserve(READ_CHUNK * 4);
                match tokio::time::timeout(server_wait, up.read_buf(&mut self.answer.bytes)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(Ok(_)) if matches!(framing, Framing::Close) => break,
                    Err(_) => {
                        ctx.rec.error_once("server timed out while answering");
                        broken = true;
                        break;
                    }
                    _ => {
                        ctx.rec.error_once("server closed while answering");
                        broken = true;
                        break;
                    }
                }
            }
        }
        if !client_gone && !self.flush_client(client_wait).await {
            client_gone = true;
        }
        if broken {
            ctx.acct.upstream_error(Counted::Response);
        }
        let body_done = framing.is_none_or(|f| f.is_done());
        let extra = upos < self.answer.bytes.len();
        if reusable(&parsed, request_complete, body_done, broken, extra) {
            self.pool.put(m.addr, up);
        }
        drop(slot);
        ctx.sticky.on_end(&self.shared.sids);
        let duration = ctx.acct.end(Totals {
            status: parsed.status,
            bytes_in: ctx.rec.bytes_in,
            bytes_out: ctx.rec.bytes_out,
            ..Totals::default()
        });
        ctx.log(parsed.status, duration);
        match (keep && !broken && !client_gone, request_complete) {
            (true, _) => Next::KeepAlive,
            (false, false) if !client_gone => Next::Linger,
            (false, _) => Next::Close,
        }
    }

    /// A `101`: its head (in `wbuf`) goes to the client, then both connections go to a
    /// tunnel of their own; the server's bytes after its head (from `at`) go first.
    async fn upgrade(
        &mut self,
        mut ctx: Ctx<'_>,
        b: &BackendRt,
        member: usize,
        upstream: tokio::net::TcpStream,
        at: usize,
        slot: ActiveGuard,
    ) -> Next {
        let m = &b.members[member];
        ctx.acct.tunnel_opened();
        let to_client = self.answer.bytes[at..].to_vec();
        if !self.flush_client(ctx.acct.snapshot().config.timeouts.client).await {
            // No tunnel after all: its session ends here (the sid table pinned it).
            ctx.sticky.on_end(&self.shared.sids);
            return self.gone(ctx);
        }
        let requested: Requested<'_> = ctx.requested();
        Next::Tunnel(Box::new(Upgraded {
            shared: Arc::clone(&self.shared),
            ticket: m.state.tunnels.register(),
            server: Arc::clone(&m.state),
            idle: b.cfg.timeouts.tunnel,
            upstream,
            to_client,
            named: Named::of(&requested),
            acct: ctx.acct,
            sticky: ctx.sticky,
            slot,
            record: ctx.rec,
        }))
    }
}

/// What the access log says of a request body that went wrong.
pub(super) fn body_note(f: Failure) -> Option<&'static str> {
    match f {
        Failure::BodyTooLarge => Some("request body too large"),
        Failure::BodyMalformed => Some("malformed chunked request body"),
        Failure::BodyStalled => Some("request body not received in time"),
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Close a connection whose client may still be sending a body: end our side, then
    /// read and drop what comes until the client closes or [`LINGER`] has passed.
    pub(super) async fn linger(&mut self) {
        let deadline = Instant::now() + LINGER;
        let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
        // Into the thread's shared buffer: a buffer of its own here would be part of
        // every connection's serving future (4 KiB of its 4.7).
        let discard = |_: &[u8]| {};
        while let Ok(Ok(n)) =
            tokio::time::timeout_at(deadline.into(), super::spare::read_with(&mut self.io, discard)).await
        {
            if n == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_must_keep_a_minimum_pace_in_each_window() {
        let second = Duration::from_secs(1);
        let mut trickle = Pace::new(second, Some(100_000));
        assert!(trickle.came(1, Duration::from_millis(400)).is_ok());
        assert!(trickle.came(1, Duration::from_millis(400)).is_ok());
        assert!(
            trickle.came(1, Duration::from_millis(400)).is_err(),
            "3 bytes in a second"
        );
        let mut steady = Pace::new(second, None);
        for _ in 0..10 {
            assert!(steady.came(2048, Duration::from_millis(600)).is_ok());
        }
        // The last bytes of a body need not fill a window.
        let mut tail = Pace::new(second, Some(300));
        assert!(tail.came(300, Duration::from_millis(1500)).is_ok());
    }

    #[test]
    fn a_server_connection_is_pooled_only_after_a_whole_exchange() {
        let parsed = |keep_alive| Parsed {
            len: 40,
            status: 200,
            body: RespBody::Length(5),
            keep_alive,
            length: Some(5),
            merged_length: false,
        };
        // (keep_alive, request_complete, body_done, broken, extra) -> reusable
        for (keep_alive, complete, done, broken, extra, pooled) in [
            (true, true, true, false, false, true),
            (false, true, true, false, false, false),
            (true, false, true, false, false, false),
            (true, true, false, false, false, false),
            (true, true, true, true, false, false),
            (true, true, true, false, true, false),
        ] {
            assert_eq!(
                reusable(&parsed(keep_alive), complete, done, broken, extra),
                pooled,
                "{keep_alive} {complete} {done} {broken} {extra}"
            );
        }
    }
}
