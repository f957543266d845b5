//! One HTTP/2 stream through the engine: route it, choose a server, send it over
//! HTTP/1.1 (a connection from the HTTP/1 engine's pool), pass the answer back under
//! flow control, or, for an extended CONNECT (RFC 8441), open the WebSocket upgrade and
//! relay the stream to it (`tunnel`). The same decisions as HTTP/1 (`route`, `select`,
//! `sticky::exchange`, `failure::classify`) with the counters through `account` and one
//! access-log line. A client that resets the stream while the server is asked is
//! noticed at once; the server connection is then dropped, not pooled. The answer goes
//! back in `forward`; edgepin's own answers are `local`'s.

use std::borrow::Cow;
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use http::request::Parts;

use crate::config::{Balance, Network};
use crate::failure::{Failure, Progress, Refusal, Verdict};
use crate::route::{self, Routed};
use crate::runtime::{BackendRt, Member, Snapshot};
use crate::state::ActiveGuard;
use crate::sticky::cookie;
use crate::sticky::exchange::Exchange;

use super::super::access;
use super::super::account::{Account, Totals};
use super::super::forwarding::Forwarding;
use super::super::local_answer::LocalAnswer;
use super::super::pick_loop::{self, Books, CookieSent, Then, after_failure};
use super::super::select;
use super::super::upstream::head::Asked;
use super::super::upstream::{self, AnswerBuf, Trace};
use super::flow::{self, RecvStop};
use super::places::ServerPlace;
use super::request::{self, Body, Upstream};
use super::upload::Upload;
use super::{Conn, tunnel};

/// Read size from a server.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Request bodies up to this size are read whole before they are sent, so that a
/// request can be sent again (to another server, or on a new connection) if the first
/// attempt fails; larger ones stream.
const REPLAY_BODY: usize = 16 * 1024;

/// A server's answer head, read and checked; `buf` holds the head and what followed it.
pub(super) struct Answer {
    pub up: upstream::Answer,
    pub buf: AnswerBuf,
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

/// A server's answer, with the server and what the stream holds of it (its connection
/// slot and its place) until the answer has been passed on.
pub(super) struct Answered<'a> {
    pub b: &'a BackendRt,
    pub m: &'a Member,
    pub answer: Answer,
    pub slot: ActiveGuard,
    pub place: ServerPlace,
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
                return self.send_answer(respond, &LocalAnswer::redirect(&location));
            }
            Routed::AcmeAnswer => {
                let Some(key_authorization) = crate::acme::http01_answer(self.conn.shared.cert.as_deref(), &path)
                else {
                    return self.refuse(respond, Refusal::Status(404, "no such ACME challenge"));
                };
                return self.send_answer(respond, &LocalAnswer::plain(200, "text/plain", &key_authorization));
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
            tls: true,
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
            let replayable = self.parts.method.is_idempotent() && (body == Body::None || replay.is_some());
            let books = Books {
                acct: &mut self.acct,
                rec: &mut self.rec,
                sticky: &mut self.sticky,
            };
            let cookie = CookieSent {
                name: cookie_name,
                value: cookie_sent.as_deref(),
            };
            let (m, base) = pick_loop::picked(b, pick, books, cookie, replayable);
            let up = Upstream {
                body,
                strip_cookie: cookie_name,
                server: m.addr,
                websocket_key: key.as_deref(),
                strip: &cfg.strip_from_untrusted,
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
                        let v = pick_loop::failed(&self.acct, f, progress);
                        match after_failure(v.retry, allow_pool, || self.acct.spend_retry(&tried)) {
                            Then::Fresh => allow_pool = false,
                            Then::Elsewhere => {
                                tried.push(pick.member);
                                self.acct.redispatched();
                                drop(slot);
                                continue 'pick;
                            }
                            Then::Answer => break v,
                        }
                    }
                }
            };
            drop(slot);
            return self.answer_failure(respond, verdict);
        };
        let answered = Answered {
            b,
            m: &b.members[member],
            answer,
            slot,
            place,
        };
        if websocket {
            return self.open_tunnel(respond, recv, answered).await;
        }
        self.forward(respond, answered).await
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
