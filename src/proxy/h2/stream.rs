//! One HTTP/2 stream through the engine: route it, choose a server, send it over
//! HTTP/1.1 (a connection from the HTTP/1 engine's pool), pass the answer back under
//! flow control, or, for an extended CONNECT (RFC 8441), open the WebSocket upgrade and
//! relay the stream to it (`tunnel`). The same decisions as HTTP/1 (`route`, `select`,
//! `sticky::exchange`, `failure::classify`) with the counters through `account` and one
//! access-log line. A client that resets the stream while the server is asked is
//! noticed at once; the server connection is then dropped, not pooled.

use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::request::Parts;
use http::{Request, Response};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{Balance, Network};
use crate::failure::{self, Failure, NEW_SESSIONS_CAPPED, Progress, Refusal, Retry, Verdict};
use crate::route::{self, Routed};
use crate::runtime::{BackendRt, Member, Snapshot};
use crate::state::ActiveGuard;
use crate::sticky::cookie;
use crate::sticky::engineio::SESSION_UNKNOWN_BODY;
use crate::sticky::exchange::{Exchange, Learned};

use super::super::access;
use super::super::account::{Account, Totals};
use super::super::h1::framing::Framing;
use super::super::select;
use super::super::upstream::head::{Asked, Header, Parsed, RespBody};
use super::super::upstream::{self, AnswerBuf, Trace};
use super::answer::{self, Added};
use super::flow::{self, RecvStop, SendStop};
use super::places::ServerPlace;
use super::request::{self, Body, Forwarding, Upstream};
use super::upload::Upload;
use super::{Conn, tunnel};
use std::borrow::Cow;

/// Read size from a server.
const READ_CHUNK: usize = 16 * 1024;
/// Request bodies up to this size are read whole before they are sent, so that a
/// request can be sent again (to another server, or on a new connection) if the first
/// attempt fails; larger ones stream.
const REPLAY_BODY: usize = 16 * 1024;
/// Retry-After sent with 503s, seconds.
const RETRY_AFTER: &str = "5";

/// A server's answer head, read and checked; `buf` holds the head and what followed it.
pub(super) struct Answer {
    pub up: upstream::Answer,
    pub buf: AnswerBuf,
}

/// What a stream holds of its server until the answer is read whole.
struct Held {
    up: TcpStream,
    _slot: ActiveGuard,
    _place: ServerPlace,
}

/// Serve one stream to its end.
pub(super) async fn serve(conn: Arc<Conn>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let snap = conn.shared.snapshot();
    let (parts, recv) = req.into_parts();
    let acct = Account::start(&conn.shared, &snap, true);
    let mut x = Stream {
        conn,
        snap,
        parts,
        acct,
        rec: access::Record::default(),
        websocket: false,
        client: None,
        sticky: Exchange::default(),
    };
    let status = x.run(recv, &mut respond).await;
    x.finish(status);
}

/// One stream's exchange: what it is and what happened to it so far.
pub(super) struct Stream {
    pub conn: Arc<Conn>,
    pub snap: Arc<Snapshot>,
    pub parts: Parts,
    pub acct: Account,
    pub rec: access::Record,
    /// An extended CONNECT (RFC 8441).
    pub websocket: bool,
    pub client: Option<IpAddr>,
    pub sticky: Exchange,
}

/// The stream's `:protocol` (RFC 8441), when it is an extended CONNECT.
fn protocol(parts: &Parts) -> Option<&str> {
    parts.extensions.get::<h2::ext::Protocol>().map(|p| p.as_str())
}

/// Wait for `work`, or for the client to reset the stream (`None`).
async fn unless_reset<F: Future>(respond: &mut SendResponse<Bytes>, work: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = work => Some(out),
        _ = poll_fn(|cx| respond.poll_reset(cx)) => None,
    }
}

impl Stream {
    /// The exchange; the status the client got (0: none).
    async fn run(&mut self, mut recv: RecvStream, respond: &mut SendResponse<Bytes>) -> u16 {
        let snap = Arc::clone(&self.snap);
        let cfg = &snap.config;
        let websocket = match (&self.parts.method, protocol(&self.parts)) {
            (&http::Method::CONNECT, Some(p)) if p.eq_ignore_ascii_case("websocket") => true,
            (&http::Method::CONNECT, Some(_)) => {
                return self.refuse(respond, Refusal::Status(501, "unsupported :protocol"));
            }
            (&http::Method::CONNECT, None) => {
                return self.refuse(respond, Refusal::Status(405, "CONNECT is not supported"));
            }
            _ => false,
        };
        self.websocket = websocket;
        if request::head_size(&self.parts) > cfg.limits.max_header_bytes {
            return self.refuse(respond, Refusal::Status(431, "request header too large"));
        }
        // `:authority` and any `host` field, each a host with an optional port (as HTTP/1).
        let hosts = self
            .parts
            .headers
            .get_all(http::header::HOST)
            .iter()
            .map(|v| v.as_bytes());
        let mut authorities = self
            .parts
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .into_iter()
            .chain(hosts);
        if authorities.any(|a| crate::authority::parse(a).is_err()) {
            return self.refuse(respond, Refusal::Status(400, "invalid Host"));
        }
        let peer = self.conn.peer;
        let trusted = peer.is_some_and(|p| Network::any_contains(&cfg.trusted_proxies, p));
        self.client = if trusted {
            let xff = request::forwarded_for(&self.parts.headers);
            super::super::forwarding::client_ip(peer, (!xff.is_empty()).then_some(&xff[..]), &cfg.trusted_proxies)
        } else {
            peer
        };
        let host = route::request_host(request::authority(&self.parts), None);
        let path = route::normalize_path(self.parts.uri.path());
        let facts = route::Facts {
            tls: true,
            host: host.as_deref(),
            path: &path,
            path_and_query: self.parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            websocket,
        };
        let b_index = match route::resolve(cfg, &facts) {
            Routed::Backend { route, backend } => {
                self.rec.route = route;
                backend
            }
            Routed::Redirect(location) => {
                self.acct.redirected();
                let resp = answer::local(308, "text/plain; charset=utf-8", &[("location", &location)], "");
                return self.answer_local(respond, resp, "");
            }
            Routed::AcmeAnswer => {
                let Some(key_authorization) = crate::acme::http01_answer(self.conn.shared.cert.as_deref(), &path)
                else {
                    return self.refuse(respond, Refusal::Status(404, "no such ACME challenge"));
                };
                let resp = answer::local(200, "text/plain", &[], &key_authorization);
                return self.answer_local(respond, resp, &key_authorization);
            }
            Routed::Refuse(why) => return self.refuse(respond, why),
        };
        drop(host);
        self.acct.routed(b_index);
        let b = &snap.backends[b_index];
        let body = if websocket {
            Body::None
        } else {
            request::body(&self.parts, recv.is_end_stream())
        };
        if let Body::Length(n) = body
            && n > cfg.limits.max_body_bytes
        {
            return self.refuse(respond, Refusal::Status(413, "request body too large"));
        }
        self.sticky = Exchange::on_request(self.parts.uri.query(), b.cfg.balance == Balance::Sticky);
        if let Err(why) = select::admit_handshake(&self.conn.shared, cfg, b, &self.sticky, self.client) {
            return self.refuse(respond, why);
        }
        let cookie_name = b.cfg.cookie.as_deref();
        let cookie_sent: Option<Vec<u8>> = cookie_name.and_then(|name| {
            let all = request::cookies(&self.parts.headers)?;
            cookie::find(&all, name).map(<[u8]>::to_vec)
        });
        // A small body is read whole first, so the request can be sent again.
        let replay = match body {
            Body::Length(n) if n as usize <= REPLAY_BODY => match self.read_whole(&mut recv, n as usize).await {
                Ok(bytes) => Some(bytes),
                Err(RecvStop::Stalled) => {
                    self.rec.error = Some(Cow::Borrowed("request body not received in time"));
                    return self.refuse(respond, Refusal::Status(408, "request body not received in time"));
                }
                Err(RecvStop::Gone) => return self.gone(),
            },
            _ => None,
        };
        // A sid another edge learned: ask the shared table first (sticky.shared).
        crate::proxy::sid_lookup::resolve(&self.conn.shared, b, self.sticky.sid.as_deref()).await;
        let place = match unless_reset(respond, self.conn.places.take(b.cfg.timeouts.queue)).await {
            Some(Ok(place)) => place,
            Some(Err(why)) => return self.refuse(respond, Refusal::Status(503, why)),
            None => return self.gone(),
        };
        let key = websocket.then(tunnel::new_key);
        let conn = Arc::clone(&self.conn);
        let fwd = Forwarding {
            peer,
            peer_text: &conn.peer_text,
            client: self.client,
            peer_trusted: trusted,
        };
        let mut tried: Vec<usize> = Vec::new();
        let (answer, member, slot) = 'pick: loop {
            let req = select::Request {
                client: self.client,
                sid: self.sticky.sid.as_deref(),
                handshake: self.sticky.handshake,
                cookie: cookie_sent.as_deref(),
                tried: &tried,
            };
            let acquired = unless_reset(respond, select::acquire(b, &self.conn.shared.sids, &req)).await;
            let (pick, slot) = match acquired {
                Some(Ok(p)) => p,
                Some(Err(why)) => {
                    if why == Refusal::SessionGone {
                        self.sticky.session_lost(&self.conn.shared.sids);
                    }
                    return self.refuse(respond, why);
                }
                None => return self.gone(),
            };
            self.acct.picked(pick.member, pick.sticky);
            self.rec.sticky = pick.sticky;
            let m = &b.members[pick.member];
            self.sticky.on_pick(
                &m.state,
                pick.sticky,
                cookie_sent.as_deref(),
                cookie_name.map(|_| m.cookie_id.as_str()),
            );
            let base = Progress {
                replayable: self.parts.method.is_idempotent() && (body == Body::None || replay.is_some()),
                pinned: Exchange::pinned(pick.sticky),
                engine_io: self.sticky.engine_io,
                ..Progress::default()
            };
            let up = Upstream {
                body,
                strip_cookie: cookie_name,
                server: m.addr,
                websocket_key: key.as_deref(),
            };
            let mut allow_pool = !websocket;
            let verdict: Verdict = loop {
                self.rec.attempts += 1;
                let tried_once = Try {
                    b,
                    m,
                    fwd: &fwd,
                    up: &up,
                    replay: replay.as_deref(),
                    allow_pool,
                    base,
                };
                match self.attempt(respond, &mut recv, tried_once).await {
                    Ok(answer) => break 'pick (answer, pick.member, slot),
                    Err((f, progress)) => {
                        let v = failure::classify(f, progress);
                        self.acct.upstream_error(v.counted);
                        if v.passive {
                            self.acct.passive(true);
                        }
                        match v.retry {
                            Retry::Fresh if allow_pool => allow_pool = false,
                            Retry::Elsewhere if self.acct.spend_retry(&tried) => {
                                tried.push(pick.member);
                                self.acct.redispatched();
                                drop(slot);
                                continue 'pick;
                            }
                            _ => break v,
                        }
                    }
                }
            };
            drop(slot);
            return self.answer_failure(respond, verdict);
        };
        let m = &b.members[member];
        if websocket {
            return self.open_tunnel(respond, recv, b, m, answer, slot, place).await;
        }
        self.forward(respond, b, m, answer, slot, place).await
    }

    /// One try on one server (`upstream::attempt`), the stream's body as its client.
    async fn attempt(
        &mut self,
        respond: &mut SendResponse<Bytes>,
        recv: &mut RecvStream,
        t: Try<'_>,
    ) -> Result<Answer, (Failure, Progress)> {
        let cfg = &Arc::clone(&self.snap).config;
        let timeouts = &t.b.cfg.timeouts;
        let mut head = Vec::with_capacity(1024);
        request::write_head(&mut head, &self.parts, t.fwd, t.up);
        if let Some(body) = t.replay {
            head.extend_from_slice(body);
        }
        let streamed = t.replay.is_none() && t.up.body != Body::None;
        let a = upstream::Attempt {
            addr: t.m.addr,
            connect: timeouts.connect,
            server: timeouts.server,
            // A streamed body goes on a new connection: an answer while it streams is then
            // an early answer, never a stray one.
            pooled: t.allow_pool && !streamed,
            asked: Asked {
                head_request: self.parts.method == http::Method::HEAD,
                websocket_key: t.up.websocket_key.map(str::as_bytes),
            },
            started: self.acct.started,
        };
        let mut progress = t.base;
        let mut trace = Trace::default();
        let mut buf = AnswerBuf::default();
        let chunked = t.up.body == Body::Chunked;
        let (limit, wait) = (cfg.limits.max_body_bytes, cfg.timeouts.client);
        let mut upload = Upload::new(recv, respond, chunked, !streamed, limit, wait);
        let pool = Arc::clone(&self.conn.pool);
        let result = upstream::attempt(&pool, &a, &head, &mut upload, &mut buf, &mut progress, &mut trace).await;
        if streamed {
            self.rec.bytes_in = upload.received;
        }
        self.acct.upstream_connection(progress.reused);
        self.rec.connect = trace.connect.or(self.rec.connect);
        match result {
            Ok(up) => Ok(Answer { up, buf }),
            Err(f) => {
                self.rec.error = body_note(f)
                    .or(trace.error)
                    .map(Cow::Borrowed)
                    .or(self.rec.error.take());
                Err((f, progress))
            }
        }
    }

    /// Read a body of `n` bytes whole (within `timeouts.client` per read).
    async fn read_whole(&mut self, recv: &mut RecvStream, n: usize) -> Result<Bytes, RecvStop> {
        let wait = self.snap.config.timeouts.client;
        let mut whole = BytesMut::with_capacity(n);
        while let Some(data) = flow::next_data(recv, wait).await? {
            whole.extend_from_slice(&data);
            flow::credit(recv, data.len());
        }
        self.rec.bytes_in = whole.len() as u64;
        Ok(whole.freeze())
    }

    /// Pass the server's answer on to the client.
    pub(super) async fn forward(
        &mut self,
        respond: &mut SendResponse<Bytes>,
        b: &BackendRt,
        m: &Member,
        answer: Answer,
        slot: ActiveGuard,
        place: ServerPlace,
    ) -> u16 {
        let cfg = &Arc::clone(&self.snap).config;
        let Answer { up: answer, buf } = answer;
        let (up, parsed) = (answer.stream, answer.parsed);
        let AnswerBuf {
            bytes: mut buf,
            headers: fields,
        } = buf;
        // An answer that came before the whole body was sent: neither connection can
        // carry another request (the rest of the body never goes).
        let reusable = parsed.keep_alive && answer.request_complete;
        let Some(resp) = self.response_head(b, m, &buf[..parsed.len], &parsed, &fields) else {
            return self.answer_failure(respond, failure::classify(Failure::BadAnswer, Progress::default()));
        };
        buf.drain(..parsed.len);
        let status = parsed.status;
        let mut framing = match parsed.body {
            RespBody::None => None,
            RespBody::Length(n) => Some(Framing::length(n)),
            RespBody::Chunked => Some(Framing::chunked()),
            RespBody::Close => Some(Framing::Close),
        };
        let Some(framing) = framing.as_mut() else {
            // No body: the server connection is done before the client is answered.
            if reusable && buf.is_empty() {
                self.conn.pool.put(m.addr, up);
            }
            drop((slot, place));
            if respond.send_response(resp, true).is_err() {
                return self.gone();
            }
            return status;
        };
        let Ok(mut send) = respond.send_response(resp, false) else {
            return self.gone();
        };
        let stall = super::settings::stall_deadline(cfg.timeouts.client);
        let server_wait = b.cfg.timeouts.server;
        let mut held = Some(Held {
            up,
            _slot: slot,
            _place: place,
        });
        let mut ranges = Vec::new();
        loop {
            // The bytes read so far are copied out in the pieces the client gets: the read
            // buffer is reused, and nothing the connection keeps holds it.
            let data = &buf[..];
            ranges.clear();
            let Ok(adv) = framing.advance(data, |r| ranges.push(r)) else {
                self.rec.error = Some(Cow::Borrowed("malformed response body"));
                return self.broken(&mut send, status);
            };
            if adv.done {
                // The whole answer is here: the server connection goes back (unless the
                // server sent more than its answer) before the client has taken it.
                if let Some(h) = held.take()
                    && reusable
                    && adv.used == data.len()
                {
                    self.conn.pool.put(m.addr, h.up);
                }
            }
            let mut learned = Learned::Nothing;
            let last = ranges.len();
            for (i, r) in ranges.drain(..).enumerate() {
                let piece = Bytes::copy_from_slice(&data[r]);
                if self.sticky.scanning() {
                    let l = self.sticky.on_body(&piece, &self.conn.shared.sids, &m.state);
                    if l != Learned::Nothing {
                        learned = l;
                    }
                }
                self.rec.bytes_out += piece.len() as u64;
                let sent = flow::send_all(&mut send, piece, adv.done && i + 1 == last, stall).await;
                match sent {
                    Ok(()) => {}
                    Err(SendStop::Gone) => return self.gone(),
                    Err(SendStop::Stalled) => {
                        self.rec.error = Some(Cow::Borrowed("the client granted no window in time"));
                        send.send_reset(Reason::CANCEL);
                        return self.gone();
                    }
                }
            }
            if learned == Learned::SessionUnknown {
                self.acct.sid_unknown();
            }
            if adv.done {
                if last == 0 && send.send_data(Bytes::new(), true).is_err() {
                    return self.gone();
                }
                return status;
            }
            let Some(h) = held.as_mut() else {
                return self.broken(&mut send, status);
            };
            buf.clear();
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout(server_wait, h.up.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) if matches!(framing, Framing::Close) => {
                    drop(held);
                    if send.send_data(Bytes::new(), true).is_err() {
                        return self.gone();
                    }
                    return status;
                }
                Err(_) => {
                    self.rec.error = Some(Cow::Borrowed("server timed out while answering"));
                    return self.broken(&mut send, status);
                }
                _ => {
                    self.rec.error = Some(Cow::Borrowed("server closed while answering"));
                    return self.broken(&mut send, status);
                }
            }
        }
    }

    /// The server's answer broke off after it began: the stream is reset (the client
    /// must not take a cut answer for a whole one).
    fn broken(&mut self, send: &mut h2::SendStream<Bytes>, status: u16) -> u16 {
        self.acct.upstream_error(failure::Counted::Response);
        send.send_reset(Reason::INTERNAL_ERROR);
        status
    }

    /// Answer a request edgepin refuses (no route, limits, no server, lost session).
    pub(super) fn refuse(&mut self, respond: &mut SendResponse<Bytes>, why: Refusal) -> u16 {
        let status = self.acct.refused(&why);
        let retry_after;
        let resp = match &why {
            Refusal::SessionGone => {
                return self.send_local(
                    respond,
                    answer::local(400, "application/json", &[], SESSION_UNKNOWN_BODY),
                    SESSION_UNKNOWN_BODY.into(),
                    status,
                );
            }
            Refusal::NoServer => (503, "no server available", Some(RETRY_AFTER)),
            Refusal::TooMany { retry_after: after } => {
                retry_after = after.to_string();
                (429, "too many requests", Some(retry_after.as_str()))
            }
            Refusal::NewSessionsCapped { retry_after: after } => {
                retry_after = after.to_string();
                (503, NEW_SESSIONS_CAPPED, Some(retry_after.as_str()))
            }
            Refusal::Status(503, detail) => (503, *detail, Some(RETRY_AFTER)),
            Refusal::Status(s, detail) => (*s, *detail, None),
        };
        self.rec.error = Some(Cow::Borrowed(match why {
            Refusal::Status(_, detail) => detail,
            Refusal::NoServer => "no server available",
            Refusal::SessionGone => "session lost with its server",
            Refusal::TooMany { .. } => "too many requests",
            Refusal::NewSessionsCapped { .. } => NEW_SESSIONS_CAPPED,
        }));
        let (code, detail, after) = resp;
        let body = text_body(code, detail);
        let fields: &[(&'static str, &str)] = match after {
            Some(a) => &[("retry-after", a)],
            None => &[],
        };
        let resp = answer::local(code, "text/plain; charset=utf-8", fields, &body);
        self.send_local(respond, resp, body.into(), status)
    }

    /// A redirect or an ACME answer.
    fn answer_local(&mut self, respond: &mut SendResponse<Bytes>, resp: http::Response<()>, body: &str) -> u16 {
        let status = resp.status().as_u16();
        self.send_local(respond, resp, Bytes::copy_from_slice(body.as_bytes()), status)
    }

    fn send_local(
        &mut self,
        respond: &mut SendResponse<Bytes>,
        resp: http::Response<()>,
        body: Bytes,
        status: u16,
    ) -> u16 {
        self.rec.local = true;
        self.rec.bytes_out = body.len() as u64;
        match respond.send_response(resp, body.is_empty()) {
            Ok(mut send) if !body.is_empty() => {
                // A short body: buffered by the connection, whatever the window.
                let _ = send.send_data(body, true);
            }
            Ok(_) => {}
            Err(_) => return self.gone(),
        }
        status
    }

    /// An upstream failure that is not retried: the status `classify` chose.
    /// The server's answer head as this stream's response head: the timings, the sticky
    /// exchange and the passive check learn of it, and edgepin's fields join it. `None`
    /// when HTTP/2 cannot carry its fields (counted, and logged as the server's fault).
    pub(super) fn response_head(
        &mut self,
        b: &BackendRt,
        m: &Member,
        head: &[u8],
        parsed: &Parsed,
        fields: &[Header],
    ) -> Option<Response<()>> {
        let cfg = &Arc::clone(&self.snap).config;
        self.rec.ttfb = Some(self.acct.started.elapsed());
        self.rec.connect = self.rec.connect.map(|_| self.rec.ttfb.unwrap_or_default());
        self.sticky.on_response(parsed.status, &self.conn.shared.sids);
        self.acct.passive(false);
        let added = Added {
            set_cookie: self
                .sticky
                .set_cookie()
                .then_some(b.cfg.cookie.as_deref())
                .flatten()
                .map(|name| cookie::set_cookie(name, &m.cookie_id, true, cfg.sticky.same_site)),
            hsts: crate::tls::hsts_value(cfg),
        };
        let resp = answer::response(head, parsed, fields, added);
        if resp.is_none() {
            self.acct.upstream_error(failure::Counted::Response);
            self.rec.error = Some(Cow::Borrowed("answer fields HTTP/2 cannot carry"));
        }
        resp
    }

    pub(super) fn answer_failure(&mut self, respond: &mut SendResponse<Bytes>, v: Verdict) -> u16 {
        if v.status == 0 {
            return self.gone();
        }
        if v.session_lost {
            self.acct.session_refused();
            self.sticky.session_lost(&self.conn.shared.sids);
            self.rec.error_once("session lost with its server");
            let resp = answer::local(400, "application/json", &[], SESSION_UNKNOWN_BODY);
            return self.send_local(respond, resp, SESSION_UNKNOWN_BODY.into(), 400);
        }
        let detail = match v.status {
            502 => "the server could not be reached",
            504 => "the server did not answer in time",
            _ => "",
        };
        self.rec.error_once(detail);
        if (400..500).contains(&v.status) {
            self.acct.frontend().request_errors.inc();
        }
        let body = text_body(v.status, detail);
        let resp = answer::local(v.status, "text/plain; charset=utf-8", &[], &body);
        self.send_local(respond, resp, body.into(), v.status)
    }

    /// The client left (or reset the stream): nothing to answer.
    pub(super) fn gone(&mut self) -> u16 {
        self.rec.error_once("client went away");
        0
    }

    /// Account and log the stream.
    fn finish(mut self, status: u16) {
        self.sticky.on_end(&self.conn.shared.sids);
        let duration = self.acct.end(Totals {
            status,
            bytes_in: self.rec.bytes_in,
            bytes_out: self.rec.bytes_out,
            ws_bytes_in: self.rec.ws_bytes_in,
            ws_bytes_out: self.rec.ws_bytes_out,
        });
        if self.snap.config.access_log {
            self.log(status, duration);
        }
    }

    fn log(&self, status: u16, duration: Duration) {
        let host = request::authority(&self.parts).and_then(|h| std::str::from_utf8(h).ok());
        let req = access::Requested {
            client: self.client,
            method: self.parts.method.as_str(),
            host,
            path: self.parts.uri.path(),
            upgrade: self.websocket,
        };
        self.rec
            .log(&self.acct, &req, self.sticky.sid.as_deref(), status, duration);
    }
}

/// `<status> <reason>[: detail]` as a text body.
fn text_body(status: u16, detail: &str) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    if detail.is_empty() {
        format!("{status} {reason}\n")
    } else {
        format!("{status} {reason}: {detail}\n")
    }
}

/// Where one attempt goes and what it sends.
#[derive(Clone, Copy)]
struct Try<'a> {
    b: &'a BackendRt,
    m: &'a Member,
    fwd: &'a Forwarding<'a>,
    up: &'a Upstream<'a>,
    /// A body read whole, sent with the head.
    replay: Option<&'a [u8]>,
    allow_pool: bool,
    base: Progress,
}

/// What the access log says of a body that went wrong.
fn body_note(f: Failure) -> Option<&'static str> {
    match f {
        Failure::BodyTooLarge => Some("request body too large"),
        Failure::BodyStalled => Some("request body not received in time"),
        _ => None,
    }
}
