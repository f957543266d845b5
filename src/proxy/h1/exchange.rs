//! One request through the HTTP/1 engine: route it, choose a server, send it, pass the
//! answer back, and decide what follows on the connection (keep-alive, close, or a
//! tunnel). Failures go through `failure::classify` for the status, the retry and what
//! passive health learns.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Balance, Network};
use crate::failure::{self, Failure, NEW_SESSIONS_CAPPED, Progress, Refusal, Retry, Verdict};
use crate::route::{self, Routed};
use crate::runtime::{BackendRt, Member, Shared, Snapshot};
use crate::state::{ActiveGuard, ServerState, StickyDecision, TunnelTicket};
use crate::sticky::cookie;
use crate::sticky::engineio::SESSION_UNKNOWN_BODY;
use crate::sticky::exchange::{Exchange, Learned};

use super::super::access::AccessLine;
use super::super::account::{Account, Totals};
use super::super::relay;
use super::super::upstream::head::{Asked, RespBody};
use super::super::upstream::{self, Answer, Attempt, Trace};
use super::answer::{Upload, body_note};
use super::framing::Framing;
use super::head::{Body, Head, Kind};
use super::response::{self, Rewrite};
use super::{ClientRead, Conn, Next, READ_CHUNK, REPLAY_BODY, request, write_local, write_local_body};

/// Retry-After sent with 503s, seconds.
const RETRY_AFTER: &str = "5";

/// What the access log needs besides the account.
#[derive(Debug, Default)]
struct Record {
    route: Option<usize>,
    sticky: Option<StickyDecision>,
    attempts: u32,
    connect: Option<Duration>,
    ttfb: Option<Duration>,
    local: bool,
    error: Option<&'static str>,
    bytes_in: u64,
    bytes_out: u64,
}

/// Why an attempt on one server failed, and how far it had gone.
type Failed = (Failure, Progress);

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) async fn exchange(&mut self, snapshot: &Arc<Snapshot>) -> Next {
        // The head (and the peer's text) are borrowed for the whole exchange while the
        // connection's buffers move.
        let head = std::mem::take(&mut self.head);
        let peer_text = std::mem::take(&mut self.peer_text);
        let next = self.exchange_with(&head, &peer_text, snapshot).await;
        self.head = head;
        self.peer_text = peer_text;
        next
    }

    async fn exchange_with(&mut self, head: &Head, peer_text: &[u8], snap: &Arc<Snapshot>) -> Next {
        let cfg = &snap.config;
        let mut acct = Account::start(&self.shared, snap, self.tls);
        let mut rec = Record::default();
        let trusted = self
            .peer
            .is_some_and(|p| Network::any_contains(&cfg.trusted_proxies, p));
        let client = if trusted {
            let xff: Vec<u8> = joined(head.values(Kind::ForwardedFor));
            super::super::headers::client_ip(self.peer, (!xff.is_empty()).then_some(&xff[..]), &cfg.trusted_proxies)
        } else {
            self.peer
        };
        let host = route::request_host(head.host_bytes(), None);
        let path = match head.path() {
            "" => std::borrow::Cow::Borrowed("/"),
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
                rec.route = route;
                backend
            }
            Routed::Redirect(location) => {
                acct.redirected();
                self.wbuf.clear();
                let close = !head.keep_alive || head.body() != Body::None;
                write_local_body(
                    &mut self.wbuf,
                    308,
                    "text/plain; charset=utf-8",
                    &[("location", &location)],
                    "",
                    close,
                );
                rec.local = true;
                return self.finish_local(head, acct, rec, 308, client, close, None).await;
            }
            Routed::AcmeAnswer => {
                let Some(key_authorization) = crate::acme::http01_answer(self.shared.cert.as_deref(), &path) else {
                    let why = Refusal::Status(404, "no such ACME challenge");
                    return self.refuse(head, acct, rec, why, client, None).await;
                };
                self.wbuf.clear();
                let close = !head.keep_alive || head.body() != Body::None;
                write_local_body(&mut self.wbuf, 200, "text/plain", &[], &key_authorization, close);
                rec.local = true;
                return self.finish_local(head, acct, rec, 200, client, close, None).await;
            }
            Routed::Refuse(why) => return self.refuse(head, acct, rec, why, client, None).await,
        };
        acct.routed(b_index);
        let b = &snap.backends[b_index];
        if let Body::Length(n) = head.body()
            && n > cfg.limits.max_body_bytes
        {
            return self
                .refuse(
                    head,
                    acct,
                    rec,
                    Refusal::Status(413, "request body too large"),
                    client,
                    None,
                )
                .await;
        }
        let mut sticky = Exchange::on_request(head.query(), b.cfg.balance == Balance::Sticky);
        if let Err(why) = super::super::select::admit_handshake(&self.shared, cfg, b, &sticky, client) {
            return self.refuse(head, acct, rec, why, client, None).await;
        }
        let cookie_name = b.cfg.cookie.as_deref();
        let cookie_sent: Option<Vec<u8>> = cookie_name.and_then(|name| {
            head.values(Kind::Cookie)
                .find_map(|v| cookie::find(v, name))
                .map(<[u8]>::to_vec)
        });
        if head.expect_continue && head.body() != Body::None && self.pending().is_empty() {
            // The body is asked for here; the server never sees the Expect.
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if !self.flush_client(cfg.timeouts.client).await {
                return self.gone(head, acct, rec, client, None);
            }
        }
        // A small body is read whole first, so the request can be sent again.
        let replay = match head.body() {
            Body::Length(n) if n as usize <= REPLAY_BODY => {
                let n = n as usize;
                while self.pending().len() < n {
                    if let Err(e) = self.read_client(cfg.timeouts.client, n).await {
                        return self.client_body_failed(head, acct, rec, client, e, None).await;
                    }
                }
                Some(n)
            }
            _ => None,
        };
        // A sid another edge learned: ask the shared table first (sticky.shared).
        crate::sticky::shared::resolve(&self.shared, b, sticky.sid.as_deref()).await;
        let fwd = request::Forwarding {
            peer: self.peer,
            peer_text,
            client,
            peer_trusted: trusted,
            tls: self.tls,
        };
        let mut tried: Vec<usize> = Vec::new();
        let (answer, member, slot) = 'pick: loop {
            let req = super::super::select::Request {
                client,
                sid: sticky.sid.as_deref(),
                handshake: sticky.handshake,
                cookie: cookie_sent.as_deref(),
                tried: &tried,
            };
            let (pick, slot) = match super::super::select::acquire(b, &self.shared.sids, &req).await {
                Ok(p) => p,
                Err(why) => {
                    if why == Refusal::SessionGone {
                        sticky.session_lost(&self.shared.sids);
                    }
                    return self.refuse(head, acct, rec, why, client, Some(&sticky)).await;
                }
            };
            acct.picked(pick.member, pick.sticky);
            rec.sticky = pick.sticky;
            let m = &b.members[pick.member];
            sticky.on_pick(
                &m.state,
                pick.sticky,
                cookie_sent.as_deref(),
                cookie_name.map(|_| m.cookie_id.as_str()),
            );
            let base = Progress {
                replayable: head.method().idempotent() && (head.body() == Body::None || replay.is_some()),
                pinned: Exchange::pinned(pick.sticky),
                engine_io: sticky.engine_io,
                ..Progress::default()
            };
            let mut allow_pool = true;
            let verdict: Verdict = loop {
                rec.attempts += 1;
                match self
                    .attempt(head, b, m, &fwd, replay, allow_pool, base, &mut rec, &acct)
                    .await
                {
                    Ok(answer) => break 'pick (answer, pick.member, slot),
                    Err((f, progress)) => {
                        let v = failure::classify(f, progress);
                        acct.upstream_error(v.counted);
                        if v.passive {
                            acct.passive(true);
                        }
                        match v.retry {
                            Retry::Fresh if allow_pool => allow_pool = false,
                            Retry::Elsewhere if acct.spend_retry(&tried) => {
                                tried.push(pick.member);
                                acct.redispatched();
                                drop(slot);
                                continue 'pick;
                            }
                            _ => break v,
                        }
                    }
                }
            };
            // No retry: answer the failure.
            drop(slot);
            return self.answer_failure(head, acct, rec, verdict, client, &sticky).await;
        };
        if let Some(n) = replay {
            // Sent for good: the body is consumed.
            self.rpos += n;
        }
        let m = &b.members[member];
        self.forward_answer(head, snap, b, m, acct, rec, answer, sticky, slot, client)
            .await
    }

    /// One try on server `m` (`upstream::attempt`), with this connection's client as the
    /// source of the body.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        head: &Head,
        b: &BackendRt,
        m: &Member,
        fwd: &request::Forwarding<'_>,
        replay: Option<usize>,
        allow_pool: bool,
        base: Progress,
        rec: &mut Record,
        acct: &Account,
    ) -> Result<Answer, Failed> {
        let t = &b.cfg.timeouts;
        // The request's config throughout, as the rest of the exchange reads it.
        let cfg = &acct.snapshot().config;
        self.wbuf.clear();
        request::write_head(
            &mut self.wbuf,
            head,
            fwd,
            request::Upstream {
                strip_cookie: b.cfg.cookie.as_deref(),
                server: Some(m.addr),
            },
        );
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
            connect: t.connect,
            server: t.server,
            // A streamed body goes on a new connection: an answer while it streams is then
            // an early answer, never a stray one.
            pooled: allow_pool && framing.is_none(),
            asked: Asked {
                head_request: head.method() == super::head::Method::Head,
                websocket_key: head.websocket.then(|| head.value(Kind::SecWebSocketKey)).flatten(),
            },
            started: acct.started,
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
        acct.upstream_connection(progress.reused);
        rec.connect = trace.connect.or(rec.connect);
        rec.bytes_in = replay.map_or(body_sent, |n| n as u64);
        result.map_err(|f| {
            rec.error = body_note(f).or(trace.error).or(rec.error);
            (f, progress)
        })
    }

    /// Pass the server's answer on to the client, then decide what follows.
    #[allow(clippy::too_many_arguments)]
    async fn forward_answer(
        &mut self,
        head: &Head,
        snap: &Arc<Snapshot>,
        b: &BackendRt,
        m: &Member,
        mut acct: Account,
        mut rec: Record,
        answer: Answer,
        mut sticky: Exchange,
        slot: ActiveGuard,
        client: Option<std::net::IpAddr>,
    ) -> Next {
        let cfg = &snap.config;
        let Answer {
            stream: mut up,
            parsed,
            request_complete,
        } = answer;
        rec.ttfb = Some(acct.started.elapsed());
        sticky.on_response(parsed.status, &self.shared.sids);
        acct.passive(false);
        let set_cookie = sticky
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
        let mut out = std::mem::take(&mut self.wbuf);
        response::write_head(&mut out, &self.answer.bytes, &parsed, &self.answer.headers, rewrite);
        self.wbuf = out;
        let mut upos = parsed.len;
        if parsed.status == 101 {
            acct.tunnel_opened();
            let to_client = self.answer.bytes[upos..].to_vec();
            let wait = cfg.timeouts.client;
            if !self.flush_client(wait).await {
                // No tunnel after all: its session ends here (the sid table pinned it).
                sticky.on_end(&self.shared.sids);
                return self.gone(head, acct, rec, client, Some(&sticky));
            }
            return Next::Tunnel(Box::new(Tunnel {
                shared: Arc::clone(&self.shared),
                ticket: m.state.tunnels.register(),
                server: Arc::clone(&m.state),
                idle: b.cfg.timeouts.tunnel,
                upstream: up,
                to_client,
                acct,
                sticky,
                _slot: slot,
                log: TunnelLog {
                    client,
                    tls: self.tls,
                    method: head.method_str().to_string(),
                    host: head.host_bytes().map(|h| String::from_utf8_lossy(h).into_owned()),
                    path: head.path().to_string(),
                    route: rec.route,
                    sticky: rec.sticky,
                    attempts: rec.attempts,
                    connect: rec.connect,
                    ttfb: rec.ttfb,
                },
            }));
        }
        let mut framing = match parsed.body {
            RespBody::None => None,
            RespBody::Length(n) => Some(Framing::length(n)),
            RespBody::Chunked => Some(Framing::chunked()),
            RespBody::Close => Some(Framing::Close),
        };
        let server_wait = b.cfg.timeouts.server;
        let client_wait = cfg.timeouts.client;
        let mut broken = false;
        let mut client_gone = false;
        if let Some(framing) = framing.as_mut() {
            loop {
                if upos < self.answer.bytes.len() {
                    let data = &self.answer.bytes[upos..];
                    let (wbuf, sids) = (&mut self.wbuf, &self.shared.sids);
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
                        rec.error = Some("malformed response body");
                        broken = true;
                        break;
                    };
                    if learned == Learned::SessionUnknown {
                        acct.sid_unknown();
                    }
                    if !dechunk {
                        wbuf.extend_from_slice(&data[..adv.used]);
                    }
                    rec.bytes_out += adv.used as u64;
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
                        rec.error = Some("server timed out while answering");
                        broken = true;
                        break;
                    }
                    _ => {
                        rec.error = Some("server closed while answering");
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
            acct.upstream_error(failure::Counted::Response);
        }
        let done = framing.is_none_or(|f| f.is_done());
        if parsed.keep_alive && request_complete && done && !broken && upos == self.answer.bytes.len() {
            self.pool.put(m.addr, up);
        }
        drop(slot);
        sticky.on_end(&self.shared.sids);
        let status = parsed.status;
        let close = !keep || broken || client_gone;
        let duration = acct.end(Totals {
            status,
            bytes_in: rec.bytes_in,
            bytes_out: rec.bytes_out,
            ..Totals::default()
        });
        if cfg.access_log {
            self.log(head, &rec, &acct, &sticky, client, status, duration);
        }
        match (close, request_complete) {
            (false, _) => Next::KeepAlive,
            (true, false) if !client_gone => Next::Linger,
            (true, _) => Next::Close,
        }
    }

    /// Answer a request edgepin refuses (no route, limits, no server, lost session).
    async fn refuse(
        &mut self,
        head: &Head,
        acct: Account,
        mut rec: Record,
        why: Refusal,
        client: Option<std::net::IpAddr>,
        sticky: Option<&Exchange>,
    ) -> Next {
        let status = acct.refused(&why);
        rec.local = true;
        // The body of a refused request is not read: the connection cannot go on. Nor
        // after a request refused as malformed.
        let malformed = matches!(why, Refusal::Status(400 | 413, _));
        let close = !head.keep_alive || head.body() != Body::None || malformed;
        self.wbuf.clear();
        match &why {
            Refusal::SessionGone => write_local_body(
                &mut self.wbuf,
                400,
                "application/json",
                &[],
                SESSION_UNKNOWN_BODY,
                close,
            ),
            Refusal::NoServer => write_local(
                &mut self.wbuf,
                503,
                "no server available",
                &[("retry-after", RETRY_AFTER)],
                close,
            ),
            Refusal::TooMany { retry_after } => {
                let after = retry_after.to_string();
                write_local(
                    &mut self.wbuf,
                    429,
                    "too many requests",
                    &[("retry-after", &after)],
                    close,
                );
            }
            Refusal::NewSessionsCapped { retry_after } => {
                let after = retry_after.to_string();
                write_local(
                    &mut self.wbuf,
                    503,
                    NEW_SESSIONS_CAPPED,
                    &[("retry-after", &after)],
                    close,
                );
            }
            Refusal::Status(503, detail) => {
                write_local(&mut self.wbuf, 503, detail, &[("retry-after", RETRY_AFTER)], close);
            }
            Refusal::Status(s, detail) => write_local(&mut self.wbuf, *s, detail, &[], close),
        }
        rec.error = match why {
            Refusal::Status(_, detail) => Some(detail),
            Refusal::NoServer => Some("no server available"),
            Refusal::SessionGone => Some("session lost with its server"),
            Refusal::TooMany { .. } => Some("too many requests"),
            Refusal::NewSessionsCapped { .. } => Some(NEW_SESSIONS_CAPPED),
        };
        self.finish_local(head, acct, rec, status, client, close, sticky).await
    }

    /// An upstream failure that is not retried: the status `classify` chose.
    async fn answer_failure(
        &mut self,
        head: &Head,
        acct: Account,
        mut rec: Record,
        v: Verdict,
        client: Option<std::net::IpAddr>,
        sticky: &Exchange,
    ) -> Next {
        if v.status == 0 {
            return self.gone(head, acct, rec, client, Some(sticky));
        }
        rec.local = true;
        self.wbuf.clear();
        if v.session_lost {
            acct.session_refused();
            sticky.session_lost(&self.shared.sids);
            rec.error.get_or_insert("session lost with its server");
            write_local_body(&mut self.wbuf, 400, "application/json", &[], SESSION_UNKNOWN_BODY, true);
        } else {
            let detail = match v.status {
                502 => "the server could not be reached",
                504 => "the server did not answer in time",
                _ => "",
            };
            rec.error.get_or_insert(detail);
            if (400..500).contains(&v.status) {
                acct.frontend().request_errors.inc();
            }
            write_local(&mut self.wbuf, v.status, detail, &[], true);
        }
        self.finish_local(head, acct, rec, v.status, client, true, Some(sticky))
            .await
    }

    /// A client whose request body went wrong: 408 for a stall, 400 for a bad framing,
    /// nothing for a client that left.
    async fn client_body_failed(
        &mut self,
        head: &Head,
        acct: Account,
        mut rec: Record,
        client: Option<std::net::IpAddr>,
        e: ClientRead,
        sticky: Option<&Exchange>,
    ) -> Next {
        match e {
            ClientRead::TimedOut => {
                rec.local = true;
                rec.error = Some("request body not received in time");
                self.wbuf.clear();
                write_local(&mut self.wbuf, 408, "request body not received in time", &[], true);
                self.finish_local(head, acct, rec, 408, client, true, sticky).await
            }
            _ => self.gone(head, acct, rec, client, sticky),
        }
    }

    /// The client left: nothing to answer.
    fn gone(
        &mut self,
        head: &Head,
        mut acct: Account,
        mut rec: Record,
        client: Option<std::net::IpAddr>,
        sticky: Option<&Exchange>,
    ) -> Next {
        rec.error.get_or_insert("client went away");
        let duration = acct.end(Totals::default());
        if acct.snapshot().config.access_log {
            let none = Exchange::default();
            self.log(head, &rec, &acct, sticky.unwrap_or(&none), client, 0, duration);
        }
        Next::Close
    }

    /// Send what is in `wbuf` (a local answer), account and log it.
    #[allow(clippy::too_many_arguments)]
    async fn finish_local(
        &mut self,
        head: &Head,
        mut acct: Account,
        rec: Record,
        status: u16,
        client: Option<std::net::IpAddr>,
        close: bool,
        sticky: Option<&Exchange>,
    ) -> Next {
        let wait = acct.snapshot().config.timeouts.client;
        let ok = self.flush_client(wait).await;
        let duration = acct.end(Totals {
            status,
            ..Totals::default()
        });
        if acct.snapshot().config.access_log {
            let none = Exchange::default();
            self.log(head, &rec, &acct, sticky.unwrap_or(&none), client, status, duration);
        }
        if !ok {
            Next::Close
        } else if close && head.body() != Body::None {
            // The client may still be sending the body.
            Next::Linger
        } else if close || self.shared.stopping() {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        head: &Head,
        rec: &Record,
        acct: &Account,
        sticky: &Exchange,
        client: Option<std::net::IpAddr>,
        status: u16,
        duration: Duration,
    ) {
        let snap = acct.snapshot();
        let host = head.host_bytes().and_then(|h| std::str::from_utf8(h).ok());
        AccessLine {
            client,
            tls: self.tls,
            method: head.method_str(),
            host,
            path: head.path(),
            sid: sticky.sid.as_deref(),
            route: rec.route.map(|r| snap.config.routes[r].path_prefix.as_str()),
            backend: acct.backend().map(BackendRt::name),
            server: acct.member().map(|m| &*m.name),
            status,
            bytes_in: rec.bytes_in,
            bytes_out: rec.bytes_out,
            duration,
            connect: rec.connect,
            ttfb: rec.ttfb,
            upgrade: head.websocket,
            sticky: rec.sticky,
            attempts: rec.attempts,
            local: rec.local,
            error: rec.error,
            ..AccessLine::default()
        }
        .log();
    }
}

/// Join header lines into one list (`a, b`).
fn joined<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.trim_ascii());
    }
    out
}

/// The request facts a tunnel logs at its close.
#[derive(Debug)]
struct TunnelLog {
    client: Option<std::net::IpAddr>,
    tls: bool,
    method: String,
    host: Option<String>,
    path: String,
    route: Option<usize>,
    sticky: Option<StickyDecision>,
    attempts: u32,
    connect: Option<Duration>,
    ttfb: Option<Duration>,
}

/// An upgraded request, ready to relay.
pub(in crate::proxy) struct Tunnel {
    shared: Arc<Shared>,
    ticket: TunnelTicket,
    server: Arc<ServerState>,
    idle: Duration,
    upstream: TcpStream,
    to_client: Vec<u8>,
    acct: Account,
    sticky: Exchange,
    /// The tunnel holds its server slot (`max_connections`).
    _slot: ActiveGuard,
    log: TunnelLog,
}

impl Tunnel {
    /// Relay until the tunnel ends, then account and log it. `hold` is the frontend's
    /// hold on the client connection.
    pub(in crate::proxy) async fn run<C, O>(self, client: C, to_server: Vec<u8>, hold: O)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Tunnel {
            shared,
            ticket,
            server,
            idle,
            upstream,
            to_client,
            mut acct,
            mut sticky,
            _slot,
            log,
        } = self;
        let sids = &shared.sids;
        let watch = |data: &[u8]| {
            if sticky.scanning() {
                sticky.on_body(data, sids, &server);
            }
            !sticky.scanning()
        };
        let relayed = relay::relay(
            client,
            upstream,
            to_server,
            to_client,
            idle,
            Arc::clone(ticket.ctl()),
            watch,
        )
        .await;
        drop(ticket);
        sticky.on_end(sids);
        let duration = acct.end(Totals {
            status: 101,
            ws_bytes_in: relayed.bytes_in,
            ws_bytes_out: relayed.bytes_out,
            ..Totals::default()
        });
        drop(hold);
        if acct.snapshot().config.access_log {
            let snap = acct.snapshot();
            AccessLine {
                client: log.client,
                tls: log.tls,
                method: &log.method,
                host: log.host.as_deref(),
                path: &log.path,
                sid: sticky.sid.as_deref(),
                route: log.route.map(|r| snap.config.routes[r].path_prefix.as_str()),
                backend: acct.backend().map(BackendRt::name),
                server: acct.member().map(|m| &*m.name),
                status: 101,
                duration,
                connect: log.connect,
                ttfb: log.ttfb,
                upgrade: true,
                ws_bytes_in: relayed.bytes_in,
                ws_bytes_out: relayed.bytes_out,
                upstream_ended: relayed.ended == relay::Ended::ServerClosed,
                sticky: log.sticky,
                attempts: log.attempts,
                error: (relayed.ended == relay::Ended::Idle).then_some("tunnel idle timeout"),
                ..AccessLine::default()
            }
            .log();
        }
    }
}
