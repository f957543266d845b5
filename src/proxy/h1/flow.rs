//! One request through the HTTP/1 engine, from its head to its end: route it
//! (`route::resolve`), admit it (body limit, Engine.IO handshake rate), read a small body
//! whole ([`HOLD_BODY`]), then choose a server and try it (`select::acquire`,
//! `upstream::attempt`) until one answers or `failure::classify` says to stop, and pass
//! the answer on (`answer`). Local answers are `local`'s. Decisions are the modules
//! named; what is decided here is only the order of the steps and the retry loop
//! (with `pick_loop`'s shared steps).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Balance;
use crate::failure::{self, Failure, Progress, Refusal, Verdict};
use crate::proxy::account::Account;
use crate::proxy::local_answer::LocalAnswer;
use crate::proxy::pick_loop::{self, Books, CookieSent, Then, after_failure};
use crate::proxy::select;
use crate::proxy::upstream::head::Asked;
use crate::proxy::upstream::{self, Answer, Attempt, Trace};
use crate::route::{self, Routed};
use crate::runtime::{BackendRt, Snapshot};
use crate::state::ActiveGuard;
use crate::sticky::cookie;
use crate::sticky::exchange::Exchange;

use super::answer::{Pace, Upload};
use super::ctx::Ctx;
use super::framing::Framing;
use super::head::{Body, Kind, Method};
use super::request::{self, Upstream};
use super::{ClientRead, Conn, Next};

/// A request body up to this size is read whole before a server slot is taken (and can be
/// sent again if an attempt fails): a client trickling it holds no server slot meanwhile
/// (nginx buffers bodies for the same reason). A longer body streams once a server is
/// chosen, and must keep `answer::MIN_BODY_RATE`.
pub const HOLD_BODY: usize = 64 * 1024;

/// Why the pick loop ended without an answer.
enum Unanswered {
    Refused(Refusal),
    Failed(Verdict),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) async fn exchange(&mut self, snapshot: &Arc<Snapshot>) -> Next {
        // The head and the peer's text are borrowed by the request while the connection's
        // buffers move.
        let head = std::mem::take(&mut self.head);
        let peer_text = std::mem::take(&mut self.peer_text);
        let acct = Account::start(&self.shared, snapshot, self.tls);
        let ctx = Ctx::new(&head, acct, self.peer, &peer_text, self.tls);
        let next = self.serve(ctx, snapshot).await;
        self.head = head;
        self.peer_text = peer_text;
        next
    }

    /// The request from its route to its end. A plain fn returning an `async move` block:
    /// an `async fn` keeps each argument twice in its future (the argument, and the local
    /// it is moved into; rust-lang/rust#62958), and `ctx` is 344 bytes, held by every
    /// connection while it is served. The request's rare ends (a local answer, a refusal, a
    /// failure answered) are boxed when taken, so that their futures are not part of it.
    #[expect(clippy::manual_async_fn, reason = "an async fn would keep `ctx` twice")]
    fn serve<'a>(&'a mut self, mut ctx: Ctx<'a>, snap: &'a Snapshot) -> impl Future<Output = Next> + 'a {
        async move {
            let cfg = &snap.config;
            let head = ctx.head;
            let host = route::request_host(head.host_bytes(), None);
            let path = match head.path() {
                "" => Cow::Borrowed("/"),
                p => route::normalize_path(p),
            };
            let facts = route::Facts {
                tls: self.tls,
                host: host.as_deref(),
                path: &path,
                path_and_query: head.origin_str(),
                websocket: head.websocket,
            };
            let b_index = match route::resolve(cfg, &facts) {
                Routed::Backend { route, backend } => {
                    ctx.rec.route = route;
                    backend
                }
                Routed::Redirect(location) => {
                    ctx.acct.redirected();
                    return Box::pin(self.answer_local(ctx, &LocalAnswer::redirect(&location), false)).await;
                }
                Routed::AcmeAnswer => {
                    return match crate::acme::http01_answer(self.shared.cert.as_deref(), &path) {
                        Some(key) => {
                            Box::pin(self.answer_local(ctx, &LocalAnswer::plain(200, "text/plain", &key), false)).await
                        }
                        None => Box::pin(self.refuse(ctx, Refusal::Status(404, "no such ACME challenge"))).await,
                    };
                }
                Routed::Refuse(why) => return Box::pin(self.refuse(ctx, why)).await,
            };
            ctx.acct.routed(b_index);
            let b = &snap.backends[b_index];
            if let Body::Length(n) = head.body()
                && n > cfg.limits.max_body_bytes
            {
                return Box::pin(self.refuse(ctx, Refusal::Status(413, "request body too large"))).await;
            }
            ctx.sticky = Exchange::on_request(head.query(), b.cfg.balance == Balance::Sticky);
            if let Err(why) = select::admit_handshake(&self.shared, cfg, b, &ctx.sticky, ctx.client) {
                return Box::pin(self.refuse(ctx, why)).await;
            }
            if head.expect_continue && ctx.has_body() && self.pending().is_empty() {
                // The body is asked for here; the server never sees the Expect.
                self.wbuf.clear();
                self.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                if !self.flush_client(cfg.timeouts.client).await {
                    return self.gone(ctx);
                }
            }
            let replay = match self.hold_body(&ctx).await {
                Ok(replay) => replay,
                Err(f) => {
                    return Box::pin(self.answer_failure(ctx, failure::classify(f, Progress::default()))).await;
                }
            };
            // A sid another edge learned: ask the shared table first (sticky.shared).
            crate::proxy::sid_lookup::resolve(&self.shared, b, ctx.sticky.sid.as_deref()).await;
            match self.pick_and_try(&mut ctx, b, replay).await {
                Ok((answer, member, slot)) => {
                    if let Some(n) = replay {
                        // Sent for good: the body is consumed.
                        self.rpos += n;
                    }
                    self.forward(ctx, b, member, answer, slot).await
                }
                Err(Unanswered::Refused(why)) => Box::pin(self.refuse(ctx, why)).await,
                Err(Unanswered::Failed(v)) => Box::pin(self.answer_failure(ctx, v)).await,
            }
        }
    }

    /// Read a body of up to [`HOLD_BODY`] bytes whole before a server is chosen: `Some(n)`,
    /// the body is the next `n` bytes, and the request can be sent again. A longer body
    /// streams once a server is chosen (under `answer::Pace`).
    async fn hold_body(&mut self, ctx: &Ctx<'_>) -> Result<Option<usize>, Failure> {
        let n = match ctx.head.body() {
            Body::Length(n) if n as usize <= HOLD_BODY => n as usize,
            _ => return Ok(None),
        };
        let wait = ctx.acct.snapshot().config.timeouts.client;
        let mut pace = Pace::new(wait, Some(n as u64));
        while self.pending().len() < n {
            let started = Instant::now();
            let got = self.read_client(wait, n).await.map_err(|e| match e {
                ClientRead::TimedOut => Failure::BodyStalled,
                ClientRead::Closed | ClientRead::Failed => Failure::ClientGone,
            })?;
            pace.came(got, started.elapsed()).map_err(|()| Failure::BodyStalled)?;
        }
        Ok(Some(n))
    }

    /// Choose a server and try it until one answers, or say why none did.
    async fn pick_and_try(
        &mut self,
        ctx: &mut Ctx<'_>,
        b: &BackendRt,
        replay: Option<usize>,
    ) -> Result<(Answer, usize, ActiveGuard), Unanswered> {
        let head = ctx.head;
        let cookie_name = b.cfg.cookie.as_deref();
        let cookie_sent: Option<Vec<u8>> = cookie_name.and_then(|name| {
            head.values(Kind::Cookie)
                .find_map(|v| cookie::find(v, name))
                .map(<[u8]>::to_vec)
        });
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let req = select::Request {
                client: ctx.client,
                sid: ctx.sticky.sid.as_deref(),
                handshake: ctx.sticky.handshake,
                cookie: cookie_sent.as_deref(),
                tried: &tried,
            };
            let (pick, slot) = select::acquire(b, &self.shared.sids, &req)
                .await
                .map_err(Unanswered::Refused)?;
            let replayable = head.method().idempotent() && (!ctx.has_body() || replay.is_some());
            let books = Books {
                acct: &mut ctx.acct,
                rec: &mut ctx.rec,
                sticky: &mut ctx.sticky,
            };
            let cookie = CookieSent {
                name: cookie_name,
                value: cookie_sent.as_deref(),
            };
            let (_, base) = pick_loop::picked(b, pick, books, cookie, replayable);
            let mut pooled = true;
            loop {
                ctx.rec.attempts += 1;
                let (f, progress) = match self.try_server(ctx, b, pick.member, replay, pooled, base).await {
                    Ok(answer) => return Ok((answer, pick.member, slot)),
                    Err(failed) => failed,
                };
                let v = pick_loop::failed(&ctx.acct, f, progress);
                match after_failure(v.retry, pooled, || ctx.acct.spend_retry(&tried)) {
                    Then::Fresh => pooled = false,
                    Then::Elsewhere => {
                        tried.push(pick.member);
                        ctx.acct.redispatched();
                        break;
                    }
                    Then::Answer => return Err(Unanswered::Failed(v)),
                }
            }
        }
    }

    /// One attempt on member `m` of `b` (`upstream::attempt`), with this connection's
    /// client as the source of the body.
    async fn try_server(
        &mut self,
        ctx: &mut Ctx<'_>,
        b: &BackendRt,
        m: usize,
        replay: Option<usize>,
        pooled: bool,
        base: Progress,
    ) -> Result<Answer, (Failure, Progress)> {
        let head = ctx.head;
        let m = &b.members[m];
        let cfg = &ctx.acct.snapshot().config;
        self.wbuf.clear();
        let up = Upstream {
            strip_cookie: b.cfg.cookie.as_deref(),
            server: Some(m.addr),
            strip: &cfg.strip_from_untrusted,
        };
        request::write_head(&mut self.wbuf, head, &ctx.fwd, up);
        if let Some(n) = replay {
            self.wbuf.extend_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        }
        let framing = match (head.body(), replay) {
            (Body::None, _) | (_, Some(_)) => None,
            (Body::Length(n), None) => Some(Framing::length(n)),
            (Body::Chunked, None) => Some(Framing::chunked()),
        };
        let a = Attempt {
            addr: m.addr,
            connect: b.cfg.timeouts.connect,
            server: b.cfg.timeouts.server,
            // A streamed body goes on a new connection: an answer while it streams is then
            // an early answer, never a stray one.
            pooled: pooled && framing.is_none(),
            asked: Asked {
                head_request: head.method() == Method::Head,
                websocket_key: head.websocket.then(|| head.value(Kind::SecWebSocketKey)).flatten(),
            },
            started: ctx.acct.started,
        };
        let mut progress = base;
        let mut trace = Trace::default();
        let request_head = std::mem::take(&mut self.wbuf);
        let mut buf = std::mem::take(&mut self.answer);
        let pool = Arc::clone(&self.pool);
        let (limit, wait) = (cfg.limits.max_body_bytes, cfg.timeouts.client);
        let mut upload = Upload::new(self, framing, limit, wait, head.minor);
        let result = upstream::attempt(
            &pool,
            &a,
            &request_head,
            &mut upload,
            &mut buf,
            &mut progress,
            &mut trace,
        )
        .await;
        let body_sent = upload.sent;
        self.wbuf = request_head;
        self.wbuf.clear();
        self.answer = buf;
        ctx.acct.upstream_connection(progress.reused);
        ctx.rec.connect = trace.connect.or(ctx.rec.connect);
        ctx.rec.bytes_in = replay.map_or(body_sent, |n| n as u64);
        result.map_err(|f| {
            if let Some(note) = super::answer::body_note(f).or(trace.error) {
                ctx.rec.error = Some(note.into());
            }
            (f, progress)
        })
    }
}
