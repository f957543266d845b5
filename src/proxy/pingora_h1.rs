//! HTTP/1 through pingora's `HttpProxy`, for one purpose: the differential test
//! (integration/differential.rs) sets `EDGEPIN_H1_ENGINE=pingora` and compares what the
//! servers receive through edgepin's own HTTP/1 engine with what they receive here. No
//! client is served by it otherwise (HTTP/2 has its own engine in `proxy::h2`); it goes,
//! with the switch, once that test compares against HAProxy and nginx instead. These
//! callbacks only call edgepin's decisions, as the engines do: `route::resolve`,
//! `select::acquire`, `sticky::exchange`, `failure::classify`, with the counters through
//! `account`. No upgrades are proxied here, so there are no tunnels.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Balance, Network};
use crate::failure::{self, Failure, Progress, Refusal, Retry};
use crate::route::{self, Routed};
use crate::runtime::Shared;
use crate::state::ActiveGuard;
use crate::sticky::cookie;
use crate::sticky::exchange::{Exchange, Learned};

use super::access::{Record, Requested};
use super::account::{Account, Totals};
use super::forwarding::{self, Forwarding};
use super::local_answer::LocalAnswer;
use super::{headers, limits, respond, select};

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(4);

/// The callbacks of pingora's proxy, behind `EDGEPIN_H1_ENGINE=pingora` only (the earlier
/// differential reference; the differential test now uses HAProxy and nginx).
pub struct PingoraProxy {
    pub shared: Arc<Shared>,
    /// The frontend's places (`limits.max_connections`): a request in flight takes one, as
    /// it holds a server connection.
    pub places: Arc<Semaphore>,
}

/// One request.
#[derive(Default)]
pub struct Ctx {
    account: Option<Account>,
    sticky: Exchange,
    tls: bool,
    client: Option<std::net::IpAddr>,
    route: Option<usize>,
    cookie: Option<Vec<u8>>,
    /// The server chosen and how, with its slot.
    pick: Option<select::Pick>,
    slot: Option<ActiveGuard>,
    tried: Vec<usize>,
    attempts: u32,
    status: u16,
    local: bool,
    answered: bool,
    /// The last attempt's failure was a stale pooled connection: retry the same server.
    fresh: bool,
    body_bytes: u64,
    connected_at: Option<Duration>,
    first_byte_at: Option<Duration>,
    error: Option<String>,
    /// This stream's place among `limits.max_connections`.
    place: Option<OwnedSemaphorePermit>,
}

impl PingoraProxy {
    /// Answer the request here.
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, why: Refusal) -> Result<bool> {
        ctx.local = true;
        ctx.status = ctx.account.as_ref().map_or(500, |a| a.refused(&why));
        if why == Refusal::SessionGone {
            ctx.sticky.session_lost(&self.shared.sids);
        }
        respond::send(session, &LocalAnswer::refusal(&why)).await?;
        Ok(true)
    }

    /// Choose a server (the same one again for a stale pooled connection).
    async fn acquire(&self, ctx: &mut Ctx) -> std::result::Result<(), Refusal> {
        let Some(acct) = ctx.account.as_mut() else {
            return Err(Refusal::Status(500, "no account"));
        };
        let Some(b) = acct.backend() else {
            return Err(Refusal::Status(500, "no backend"));
        };
        let req = select::Request {
            client: ctx.client,
            sid: ctx.sticky.sid.as_deref(),
            handshake: ctx.sticky.handshake,
            cookie: ctx.cookie.as_deref(),
            tried: &ctx.tried,
        };
        let (pick, slot) = select::acquire(b, &self.shared.sids, &req).await?;
        let m = &b.members[pick.member];
        let cookie_id = b.cfg.cookie.as_ref().map(|_| m.cookie_id.as_str());
        let state = Arc::clone(&m.state);
        ctx.sticky
            .on_pick(&state, pick.sticky, ctx.cookie.as_deref(), cookie_id);
        acct.picked(pick.member, pick.sticky);
        ctx.pick = Some(pick);
        ctx.slot = Some(slot);
        Ok(())
    }

    fn progress(&self, session: &mut Session, ctx: &Ctx, reused: bool) -> Progress {
        let replayable = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        Progress {
            sent: true,
            request_complete: session.as_mut().is_body_done(),
            answered: ctx.answered,
            replayable,
            reused,
            pinned: Exchange::pinned(ctx.pick.and_then(|p| p.sticky)),
            engine_io: ctx.sticky.engine_io,
        }
    }

    /// Count a failure and decide its retry on pingora's error.
    fn judge(&self, ctx: &mut Ctx, f: Failure, p: Progress, e: &mut Error) {
        let v = failure::classify(f, p);
        if let Some(acct) = &ctx.account {
            acct.upstream_error(v.counted);
            if v.passive {
                acct.passive(true);
            }
        }
        let retry = match v.retry {
            Retry::Fresh => {
                ctx.fresh = true;
                true
            }
            Retry::Elsewhere => ctx.account.as_ref().is_some_and(|a| a.spend_retry(&ctx.tried)),
            Retry::No => false,
        };
        e.set_retry(retry);
    }
}

/// What a pingora error means to `failure::classify`.
fn failure_of(e: &Error, answered: bool) -> Failure {
    if *e.esource() == ErrorSource::Downstream {
        return Failure::ClientGone;
    }
    match e.etype() {
        // `request_body_filter`'s verdict on the client's body, not the server's doing.
        ErrorType::HTTPStatus(413) => Failure::BodyTooLarge,
        ErrorType::ConnectRefused => Failure::ConnectRefused,
        ErrorType::ConnectTimedout => Failure::ConnectTimedOut,
        ErrorType::ConnectError | ErrorType::ConnectNoRoute | ErrorType::SocketError => Failure::ConnectError,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout if !answered => Failure::AnswerTimedOut,
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError if !answered => {
            Failure::ResetBeforeAnswer
        }
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error if !answered => Failure::BadAnswer,
        _ if answered => Failure::AnswerBroken,
        _ => Failure::BadAnswer,
    }
}

#[async_trait]
impl ProxyHttp for PingoraProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// No response compression module: edgepin does not compress.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = self.shared.snapshot();
        let cfg = &snapshot.config;
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.account = Some(Account::start(&self.shared, &snapshot, ctx.tls));
        session.set_read_timeout(Some(cfg.timeouts.client));
        // A client that reads nothing holds the server's slot until this passes; pingora
        // sets no write deadline by itself.
        session.set_write_timeout(Some(cfg.timeouts.client));
        let req = session.req_header();
        if limits::head_size(req) > cfg.limits.max_header_bytes {
            return self
                .refuse(session, ctx, Refusal::Status(431, "request header too large"))
                .await;
        }
        if limits::declared_body(req).is_some_and(|n| n > cfg.limits.max_body_bytes) {
            return self
                .refuse(session, ctx, Refusal::Status(413, "request body too large"))
                .await;
        }
        let authority = (req.headers.get("host").map(|v| v.as_bytes()))
            .into_iter()
            .chain(req.uri.authority().map(|a| a.as_str().as_bytes()));
        if authority.map(crate::authority::parse).any(|a| a.is_err()) {
            return self.refuse(session, ctx, Refusal::Status(400, "invalid Host")).await;
        }
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let xff = headers::forwarded_for(&req.headers);
        ctx.client = forwarding::client_ip(peer, xff.as_deref(), &cfg.trusted_proxies);
        let host = route::request_host(req.headers.get("host").map(|v| v.as_bytes()), req.uri.host());
        let path = route::normalize_path(req.uri.path());
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let facts = route::Facts {
            tls: ctx.tls,
            host: host.as_deref(),
            path: &path,
            path_and_query: pq,
            websocket: false,
        };
        let backend = match route::resolve(cfg, &facts) {
            Routed::Backend { route, backend } => {
                ctx.route = route;
                backend
            }
            Routed::Redirect(location) => {
                ctx.local = true;
                ctx.status = 308;
                if let Some(a) = &ctx.account {
                    a.redirected();
                }
                respond::send(session, &LocalAnswer::redirect(&location)).await?;
                return Ok(true);
            }
            Routed::AcmeAnswer => {
                let Some(key_authorization) = crate::acme::http01_answer(self.shared.cert.as_deref(), &path) else {
                    let why = Refusal::Status(404, "no such ACME challenge");
                    return self.refuse(session, ctx, why).await;
                };
                ctx.local = true;
                ctx.status = 200;
                respond::send(session, &LocalAnswer::plain(200, "text/plain", &key_authorization)).await?;
                return Ok(true);
            }
            Routed::Refuse(why) => return self.refuse(session, ctx, why).await,
        };
        match Arc::clone(&self.places).try_acquire_owned() {
            Ok(place) => ctx.place = Some(place),
            Err(_) => {
                let why = Refusal::Status(503, "too many connections");
                return self.refuse(session, ctx, why).await;
            }
        }
        let b = &snapshot.backends[backend];
        if let Some(a) = ctx.account.as_mut() {
            a.routed(backend);
        }
        let req = session.req_header();
        ctx.sticky = Exchange::on_request(req.uri.query(), b.cfg.balance == Balance::Sticky);
        if let Err(why) = select::admit_handshake(&self.shared, cfg, b, &ctx.sticky, ctx.client) {
            return self.refuse(session, ctx, why).await;
        }
        ctx.cookie = b
            .cfg
            .cookie
            .as_deref()
            .and_then(|name| headers::sticky_cookie(req, name))
            .map(<[u8]>::to_vec);
        // A sid another edge learned: ask the shared table first (sticky.shared).
        crate::sticky::shared::resolve(&self.shared, b, ctx.sticky.sid.as_deref()).await;
        if let Err(why) = self.acquire(ctx).await {
            return self.refuse(session, ctx, why).await;
        }
        session.as_mut().enable_retry_buffering();
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        let max = ctx
            .account
            .as_ref()
            .map_or(u64::MAX, |a| a.snapshot().config.limits.max_body_bytes);
        if ctx.body_bytes > max {
            ctx.error = Some("request body too large".into());
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.attempts > 0 {
            // pingora sends the retry buffer through `request_body_filter` again.
            ctx.body_bytes = 0;
        }
        if ctx.attempts > 0 && !std::mem::take(&mut ctx.fresh) {
            // A retry elsewhere: the previous server failed.
            if let Some(prev) = ctx.pick.take() {
                ctx.tried.push(prev.member);
            }
            ctx.slot = None;
            if let Some(a) = ctx.account.as_mut() {
                a.redispatched();
            }
            match self.acquire(ctx).await {
                Ok(()) => {}
                Err(Refusal::SessionGone) => {
                    ctx.error = Some("pinned server failed".into());
                    return Error::e_explain(ErrorType::HTTPStatus(400), "session lost with its server");
                }
                Err(_) => return Error::e_explain(ErrorType::ConnectNoRoute, "no other server to retry on"),
            }
        }
        ctx.attempts += 1;
        let Some(m) = ctx.account.as_ref().and_then(Account::member) else {
            return Error::e_explain(ErrorType::InternalError, "no server chosen");
        };
        let Some(t) = ctx.account.as_ref().and_then(Account::backend).map(|b| b.cfg.timeouts) else {
            return Error::e_explain(ErrorType::InternalError, "no backend");
        };
        let mut peer = HttpPeer::new(m.addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        peer.options.read_timeout = Some(t.server);
        peer.options.write_timeout = Some(t.server);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(acct) = &ctx.account else { return Ok(()) };
        let cfg = &acct.snapshot().config;
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let peer_text = peer.map(|p| p.to_string()).unwrap_or_default();
        let fwd = Forwarding {
            peer,
            peer_text: peer_text.as_bytes(),
            client: ctx.client,
            peer_trusted: peer.is_some_and(|p| Network::any_contains(&cfg.trusted_proxies, p)),
            tls: ctx.tls,
        };
        let host = upstream
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| upstream.uri.host().map(str::to_string));
        headers::set_forwarded(upstream, &fwd, host.as_deref(), &cfg.strip_from_untrusted)?;
        if let Some(name) = acct.backend().and_then(|b| b.cfg.cookie.as_deref()) {
            headers::strip_sticky_cookie(upstream, name)?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.connected_at = ctx.account.as_ref().map(|a| a.started.elapsed());
        if let Some(a) = &ctx.account {
            a.upstream_connection(reused);
        }
        Ok(())
    }

    async fn response_filter(&self, _session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        if ctx.tls
            && let Some(hsts) = ctx
                .account
                .as_ref()
                .and_then(|a| crate::tls::hsts_value(&a.snapshot().config))
        {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
        if resp.status.is_informational() {
            return Ok(());
        }
        ctx.answered = true;
        ctx.status = resp.status.as_u16();
        let Some(acct) = &ctx.account else { return Ok(()) };
        ctx.first_byte_at = Some(acct.started.elapsed());
        acct.passive(false);
        ctx.sticky.on_response(ctx.status, &self.shared.sids);
        let (Some(b), Some(m)) = (acct.backend(), acct.member()) else {
            return Ok(());
        };
        if ctx.sticky.set_cookie()
            && let Some(name) = b.cfg.cookie.as_deref()
        {
            let same_site = acct.snapshot().config.sticky.same_site;
            resp.append_header("set-cookie", cookie::set_cookie(name, &m.cookie_id, ctx.tls, same_site))?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(data), true) = (body.as_ref(), ctx.sticky.scanning())
            && let Some(acct) = &ctx.account
            && let Some(m) = acct.member()
            && ctx.sticky.on_body(data, &self.shared.sids, &m.state) == Learned::SessionUnknown
        {
            acct.sid_unknown();
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("server: {peer}"));
        let f = failure_of(&e, ctx.answered);
        let p = self.progress(session, ctx, client_reused);
        self.judge(ctx, f, p, &mut e);
        e
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        let f = failure_of(&e, false);
        let p = Progress {
            sent: false,
            ..self.progress(session, ctx, false)
        };
        self.judge(ctx, f, p, &mut e);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let answer = match e.etype() {
            ErrorType::HTTPStatus(400) if ctx.sticky.engine_io => Some(LocalAnswer::session_unknown()),
            ErrorType::HTTPStatus(code) => Some(LocalAnswer::text(*code, "")),
            ErrorType::ConnectNoRoute => Some(LocalAnswer::refusal(&Refusal::NoServer)),
            _ => {
                let f = failure_of(e, ctx.answered);
                let p = self.progress(session, ctx, false);
                let v = failure::classify(f, p);
                if v.session_lost {
                    if let Some(a) = &ctx.account {
                        a.session_refused();
                    }
                    ctx.sticky.session_lost(&self.shared.sids);
                }
                (v.status > 0).then(|| LocalAnswer::failure(&v))
            }
        };
        ctx.error.get_or_insert_with(|| e.to_string());
        let code = answer.as_ref().map_or(0, |a| a.status);
        if let Some(answer) = answer
            && !ctx.answered
            && session.response_written().is_none()
        {
            ctx.status = code;
            ctx.local = true;
            if let Err(err) = respond::send(session, &answer).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away is normal for a proxy: it is in the access log, not an error.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        *e.esource() == ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.status == 0 {
            ctx.status = session.response_written().map_or(0, |r| r.status.as_u16());
        }
        ctx.slot = None;
        ctx.sticky.on_end(&self.shared.sids);
        let Some(mut acct) = ctx.account.take() else { return };
        let totals = Totals {
            status: ctx.status,
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            ..Totals::default()
        };
        let duration = acct.end(totals);
        let req = session.req_header();
        let requested = Requested {
            client: ctx.client,
            method: req.method.as_str(),
            host: req
                .uri
                .host()
                .or_else(|| req.headers.get("host").and_then(|h| h.to_str().ok())),
            path: req.uri.path(),
            upgrade: false,
        };
        let record = Record {
            route: ctx.route,
            sticky: ctx.pick.and_then(|p| p.sticky),
            attempts: ctx.attempts,
            connect: ctx.connected_at,
            ttfb: ctx.first_byte_at,
            local: ctx.local,
            error: ctx.error.take().or_else(|| e.map(|e| e.to_string())).map(Into::into),
            bytes_in: totals.bytes_in,
            bytes_out: totals.bytes_out,
            ..Record::default()
        };
        record.log(&acct, &requested, ctx.sticky.sid.as_deref(), ctx.status, duration);
    }
}
