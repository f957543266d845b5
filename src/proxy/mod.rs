//! The HTTP proxy: pingora's `ProxyHttp` for both listeners.
//!
//! Per request: load the snapshot once, enforce the request limits, redirect plain http
//! (or serve ACME challenges), route by host and path, choose a server (`select`), wait
//! for a slot if the server is at `max_connections`, forward with X-Forwarded-* set and
//! the sticky cookie removed, learn Engine.IO session ids from handshake answers, retry
//! failed connections on another server within the retry budget, and account for it all
//! at the end. Policies live in the sibling modules; this file wires them to pingora.

mod assign;
mod ctx;
mod head_deadline;
pub mod headers;
mod learn;
mod limits;
mod proxy_protocol;
mod respond;
mod route;
mod select;
mod tunnel;

pub use ctx::RequestCtx;
pub use limits::ConnectionLimit;
pub use proxy_protocol::ProxyProtocolAcceptor;
pub use route::ACME_PREFIX;

use respond::Refusal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::Balance;
use crate::health;
use crate::runtime::Shared;
use crate::state::{Finished, StickyDecision};
use crate::sticky::{cookie, engineio};
use crate::telemetry;

/// Pool key for upgrade connections, so a tunnel never reuses a pooled connection (and
/// so always goes through our connector, which keeps a handle to close it).
const TUNNEL_GROUP: u64 = 0x7475_6e6e_656c;

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Retry-After sent with 503s, seconds.
const RETRY_AFTER: &str = "5";

pub struct EdgeProxy {
    pub shared: Arc<Shared>,
}

impl EdgeProxy {
    pub fn new(shared: Arc<Shared>) -> EdgeProxy {
        EdgeProxy { shared }
    }

    pub(super) fn frontend(&self, ctx: &RequestCtx) -> &crate::state::FrontendCounters {
        if ctx.tls { &self.shared.https } else { &self.shared.http }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = self.shared.snapshot();
        ctx.snapshot = Some(Arc::clone(&snapshot));
        let cfg = &snapshot.config;
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        self.frontend(ctx).requests_total.inc();
        self.shared.in_flight.inc();
        ctx.in_flight = true;
        if self.shared.stopping() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(cfg.timeouts.keepalive.as_secs().max(1)));
        }
        session.set_read_timeout(Some(cfg.timeouts.client));

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
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let xff = headers::forwarded_for(&req.headers);
        ctx.client = headers::client_ip(peer, xff.as_deref(), &cfg.trusted_proxies);
        let host =
            route::request_host(req.headers.get("host").map(|v| v.as_bytes()), req.uri.host()).map(|h| h.into_owned());
        let path = req.uri.path().to_string();

        let mut backend = None;
        if !ctx.tls {
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            match route::plain_http(cfg, host.as_deref(), pq) {
                route::PlainHttp::Proxy => {}
                route::PlainHttp::Acme(b) => backend = Some(b),
                route::PlainHttp::NotFound => {
                    return self
                        .refuse(session, ctx, Refusal::Status(404, "no ACME backend configured"))
                        .await;
                }
                route::PlainHttp::Redirect(location) => {
                    ctx.local = true;
                    ctx.status = 308;
                    self.frontend(ctx).redirects.inc();
                    respond::redirect(session, &location).await?;
                    return Ok(true);
                }
            }
        }
        ctx.upgrade = session.is_upgrade_req();
        let backend = match backend {
            Some(b) => b,
            None => {
                let Some(r) = route::find(&cfg.routes, host.as_deref(), &path) else {
                    return self.refuse(session, ctx, Refusal::Status(404, "no route")).await;
                };
                ctx.route = Some(r);
                if ctx.upgrade && !cfg.routes[r].websocket {
                    return self
                        .refuse(
                            session,
                            ctx,
                            Refusal::Status(403, "WebSocket upgrades are not allowed on this route"),
                        )
                        .await;
                }
                cfg.routes[r].backend
            }
        };
        ctx.backend = Some(backend);
        let b = &snapshot.backends[backend];
        b.retry_budget.on_request();
        b.counters.traffic.sessions.inc();
        b.counters.traffic.sessions_total.inc();

        let req = session.req_header();
        // Engine.IO requests are recognised on every backend: a `Session ID unknown` from a
        // non-sticky one is exactly what tells an operator stickiness is missing.
        if let Some(query) = req.uri.query().filter(|q| q.contains("EIO=")) {
            let q = engineio::EngineQuery::parse(Some(query));
            ctx.sticky.engine_io = q.eio;
            if b.cfg.balance == Balance::Sticky {
                ctx.sticky.handshake = q.is_handshake();
                ctx.sticky.sid = q.sid.map(str::to_string);
                if ctx.sticky.handshake
                    && let (Some(rate), Some(client)) = (cfg.sticky.handshake_rate, ctx.client)
                    && let Err(wait) = self.shared.handshakes.check(client, rate, Instant::now())
                {
                    return self.refuse(session, ctx, Refusal::TooManyHandshakes(wait)).await;
                }
            }
        }
        let cookie = b
            .cfg
            .cookie
            .as_deref()
            .and_then(|name| headers::sticky_cookie(req, name))
            .map(<[u8]>::to_vec);
        let pick = match self.acquire(ctx, cookie.clone()).await {
            Ok(p) => p,
            Err(why) => return self.refuse(session, ctx, why).await,
        };
        self.commit_pick(ctx, pick, cookie.as_deref());

        if ctx.upgrade {
            session.set_read_timeout(Some(b.cfg.timeouts.tunnel));
        } else {
            session.as_mut().enable_retry_buffering();
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let n = body.as_ref().map_or(0, |b| b.len() as u64);
        if session.was_upgraded() {
            ctx.ws_bytes_in += n;
            return Ok(());
        }
        if end_of_stream && let Some(gate) = &ctx.tunnel_gate {
            gate.open();
        }
        ctx.body_bytes += n;
        let max = ctx.snapshot().map_or(u64::MAX, |s| s.config.limits.max_body_bytes);
        if ctx.body_bytes > max {
            ctx.error = Some("request body too large".into());
            return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        if ctx.attempts > 0 {
            // A retry: the previous server failed; choose another one.
            if let Some(prev) = ctx.pick {
                // HAProxy counts a redispatch on the server switched away from, too.
                if let Some(m) = ctx.member() {
                    m.traffic.redispatches.inc();
                }
                self.release_pick(ctx);
                ctx.tried.push(prev.member);
                ctx.pick = None;
            }
            if let Some(b) = ctx.backend_rt() {
                b.counters.traffic.redispatches.inc();
            }
            match self.acquire(ctx, None).await {
                Ok(pick) => self.commit_pick(ctx, pick, None),
                Err(Refusal::SessionGone) => {
                    ctx.error = Some("pinned server failed".into());
                    return Error::e_explain(ErrorType::HTTPStatus(400), "session lost with its server");
                }
                Err(_) => return Error::e_explain(ErrorType::ConnectNoRoute, "no other server to retry on"),
            }
        }
        ctx.attempts += 1;
        let (Some(b), Some(m)) = (ctx.backend_rt(), ctx.member()) else {
            return Error::e_explain(ErrorType::InternalError, "no server chosen");
        };
        let t = &b.cfg.timeouts;
        let mut peer = HttpPeer::new(m.addr, false, String::new());
        peer.options.connection_timeout = Some(t.connect);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        if ctx.upgrade {
            let slot = Arc::new(tunnel::TunnelSlot::default());
            let gate = Arc::new(tunnel::BodyEndGate::default());
            peer.group_key = TUNNEL_GROUP;
            peer.options.read_timeout = Some(t.tunnel);
            peer.options.write_timeout = Some(t.tunnel);
            peer.options.custom_l4 = Some(Arc::new(tunnel::TunnelConnector {
                slot: Arc::clone(&slot),
                gate: Arc::clone(&gate),
                timeout: t.connect,
            }));
            ctx.tunnel_slot = Some(slot);
            ctx.tunnel_gate = Some(gate);
        } else {
            peer.options.read_timeout = Some(t.server);
            peer.options.write_timeout = Some(t.server);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(snapshot) = ctx.snapshot.clone() else {
            return Ok(());
        };
        let cfg = &snapshot.config;
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let trusted = peer.is_some_and(|p| crate::config::Network::any_contains(&cfg.trusted_proxies, p));
        let host = upstream
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| upstream.uri.host().map(str::to_string));
        headers::set_forwarded(upstream, ctx.client, peer, trusted, ctx.tls, host.as_deref())?;
        if let Some(name) = ctx.backend_rt().and_then(|b| b.cfg.cookie.as_deref()) {
            headers::strip_sticky_cookie(upstream, name)?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.connected_at = Some(Instant::now());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if resp.status.is_informational() && resp.status.as_u16() != 101 {
            return Ok(());
        }
        ctx.response_started = true;
        ctx.first_byte_at = Some(Instant::now());
        ctx.status = resp.status.as_u16();
        let Some(snapshot) = ctx.snapshot.clone() else {
            return Ok(());
        };
        let (Some(bi), Some(pick)) = (ctx.backend, ctx.pick) else {
            return Ok(());
        };
        let b = &snapshot.backends[bi];
        let m = &b.members[pick.member];
        if ctx.sticky.set_cookie
            && let Some(name) = b.cfg.cookie.as_deref()
        {
            let value = cookie::set_cookie(name, &m.cookie_id, ctx.tls, snapshot.config.sticky.same_site);
            resp.append_header("set-cookie", value)?;
        }
        match ctx.status {
            101 if ctx.upgrade => {
                if let Some(socket) = ctx.tunnel_slot.as_ref().and_then(|s| s.take()) {
                    ctx.tunnel = Some(m.state.tunnels.register(socket));
                }
                m.traffic.tunnels.inc();
                m.traffic.tunnels_total.inc();
                b.counters.traffic.tunnels.inc();
                b.counters.traffic.tunnels_total.inc();
                match &ctx.sticky.sid {
                    // A WebSocket-first handshake: the sid is in the first frame.
                    None if ctx.sticky.handshake => {}
                    Some(sid) => {
                        self.shared.sids.tunnel_opened(sid);
                        ctx.sticky.scan_done = true;
                    }
                    None => ctx.sticky.scan_done = true,
                }
            }
            200 if ctx.sticky.handshake => {}
            400 if ctx.sticky.engine_io => ctx.sticky.check_unknown = true,
            _ => ctx.sticky.scan_done = true,
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // Our own record of the 101, not `session.was_upgraded()`: pingora flips that only
        // when the 101 is written downstream, which can be after the first frame is filtered.
        let upgraded = ctx.tunnel_opened();
        if upgraded && end_of_stream {
            ctx.upstream_ended = true;
        }
        if let Some(data) = body.as_ref() {
            if upgraded {
                ctx.ws_bytes_out += data.len() as u64;
            }
            if !ctx.sticky.scan_done {
                self.scan_answer(ctx, data, upgraded);
            }
        }
        if end_of_stream && upgraded && ctx.tunnel.as_ref().is_some_and(|t| t.closed_by_edge()) {
            // We cut the upstream side: tell the client properly.
            let mut out = body.take().map(|b| b.to_vec()).unwrap_or_default();
            out.extend_from_slice(tunnel::CLOSE_GOING_AWAY);
            *body = Some(Bytes::from(out));
        }
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("server: {peer}"));
        let replayable = session.req_header().method.is_idempotent() && !session.as_ref().retry_buffer_truncated();
        if *e.esource() == ErrorSource::Upstream {
            // A server still waiting for the rest of a slow client's body is not failing:
            // counted, but not held against its health (or one client could take it out).
            let waiting_for_client = *e.etype() == ErrorType::ReadTimedout && !session.as_mut().is_body_done();
            if waiting_for_client {
                self.count_upstream_error(ctx, |t| &t.response_errors);
            } else {
                self.upstream_failed(ctx, |t| &t.response_errors);
            }
        }
        // A request whose connection broke before any answer can go to another server if
        // replaying it is safe; Engine.IO requests pinned to a session cannot. A timeout is
        // not retried: the server has the request and is slow, and a retry doubles its load.
        let pinned = ctx.pinned_to_session();
        let broken = *e.esource() == ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if replayable && broken && !ctx.response_started && !ctx.upgrade && !pinned && self.may_retry(ctx) {
            e.set_retry(true);
        } else if replayable && !pinned {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.upstream_failed(ctx, |t| &t.connect_errors);
        // The request was never sent: any method may go elsewhere, unless its session
        // lives on that server.
        if !ctx.pinned_to_session() && self.may_retry(ctx) {
            e.set_retry(true);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let downstream = *e.esource() == ErrorSource::Downstream;
        let upstream_timeout = *e.esource() == ErrorSource::Upstream
            && matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::WriteTimedout);
        // The server of the request's Engine.IO session could not be reached or broke off:
        // the session is gone with it. (A client that went away, or a server that is only
        // slow, loses nothing.)
        let session_lost = ctx.pinned_to_session()
            && ctx.sticky.engine_io
            && !ctx.response_started
            && !downstream
            && !upstream_timeout
            && !matches!(e.etype(), ErrorType::HTTPStatus(_));
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed | ErrorType::ReadTimedout
                if downstream =>
            {
                0
            }
            _ if downstream => 400,
            _ if session_lost => 400,
            ErrorType::ConnectTimedout => 504,
            _ if upstream_timeout => 504,
            ErrorType::ConnectNoRoute => 503,
            _ if *e.esource() == ErrorSource::Upstream => 502,
            _ => 500,
        };
        ctx.error.get_or_insert_with(|| e.to_string());
        if code > 0 && !ctx.response_started && session.response_written().is_none() {
            ctx.status = code;
            ctx.local = true;
            let written = if session_lost {
                self.session_lost(ctx);
                respond::session_unknown(session).await
            } else {
                let detail = match code {
                    502 => "the server could not be reached",
                    503 => "no server available",
                    504 => "the server did not answer in time",
                    _ => "",
                };
                let extra: &[(&str, &str)] = if code == 503 {
                    &[("retry-after", RETRY_AFTER)]
                } else {
                    &[]
                };
                respond::text(session, code, detail, extra).await
            };
            if let Err(err) = written {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away is normal for a proxy: it is in the access log, not an error.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        *e.esource() == ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.status == 0 {
            ctx.status = session.response_written().map_or(0, |r| r.status.as_u16());
        }
        let frontend = self.frontend(ctx);
        let bytes_in = session.body_bytes_read() as u64;
        let bytes_out = session.body_bytes_sent() as u64;
        frontend.responses.count(ctx.status);
        frontend.bytes_in.add(bytes_in);
        frontend.bytes_out.add(bytes_out);
        let elapsed = ctx.started.elapsed();
        let finished = Finished {
            status: ctx.status,
            bytes_in,
            bytes_out,
            duration: elapsed,
            ws_bytes_in: ctx.ws_bytes_in,
            ws_bytes_out: ctx.ws_bytes_out,
            tunnel: ctx.tunnel_opened(),
        };
        if let Some(b) = ctx.backend_rt() {
            b.counters.traffic.finished(&finished);
        }
        if let Some(m) = ctx.member() {
            m.traffic.finished(&finished);
            let upstream_failed = e.is_some_and(|e| *e.esource() == ErrorSource::Upstream);
            if !ctx.local && !upstream_failed {
                if ctx.status >= 500 {
                    self.passive_failure(ctx);
                } else if ctx.status > 0 {
                    m.state.passive_success();
                }
            }
        }
        // A tunnel's end is its session's end.
        if ctx.tunnel_opened()
            && let Some(sid) = &ctx.sticky.sid
        {
            self.shared.sids.forget(sid);
        }
        if let Some(state) = ctx.sticky.pending.take() {
            state.add_sessions(-1);
        }
        ctx.slot = None;
        ctx.tunnel = None;
        if std::mem::take(&mut ctx.in_flight) {
            self.shared.in_flight.dec();
        }
        if ctx.snapshot().is_some_and(|s| s.config.access_log) {
            telemetry::access_log(session, ctx, e, elapsed);
        }
    }
}

impl EdgeProxy {
    fn may_retry(&self, ctx: &RequestCtx) -> bool {
        let Some(b) = ctx.backend_rt() else { return false };
        if ctx.attempts > b.cfg.retries {
            return false;
        }
        // Without another server to try, the original error is the honest answer.
        let current = ctx.pick.map(|p| p.member);
        let alternative = b
            .members
            .iter()
            .enumerate()
            .any(|(i, m)| Some(i) != current && !ctx.tried.contains(&i) && m.accepts_new() && m.state.weight() > 0);
        if !alternative {
            return false;
        }
        if !b.retry_budget.try_retry() {
            b.counters.retry_budget_exhausted.inc();
            return false;
        }
        if let Some(m) = ctx.member() {
            m.traffic.retries.inc();
        }
        b.counters.traffic.retries.inc();
        true
    }

    /// A failure talking to the chosen server: counted on the (backend, server) pair and
    /// the backend, and reported to passive health.
    fn upstream_failed(&self, ctx: &RequestCtx, counter: fn(&crate::state::Traffic) -> &crate::state::Counter) {
        self.count_upstream_error(ctx, counter);
        self.passive_failure(ctx);
    }

    fn count_upstream_error(&self, ctx: &RequestCtx, counter: fn(&crate::state::Traffic) -> &crate::state::Counter) {
        if let Some(m) = ctx.member() {
            counter(&m.traffic).inc();
        }
        if let Some(b) = ctx.backend_rt() {
            counter(&b.counters.traffic).inc();
        }
    }

    fn passive_failure(&self, ctx: &RequestCtx) {
        let (Some(s), Some(m)) = (ctx.snapshot(), ctx.member()) else {
            return;
        };
        health::passive_failure(&m.state, s.config.health.passive_fall);
    }
}

impl RequestCtx {
    /// Routed by its Engine.IO sid: only that server knows the session.
    fn pinned_to_session(&self) -> bool {
        matches!(self.pick.and_then(|p| p.sticky), Some(StickyDecision::Sid))
    }

    fn tunnel_opened(&self) -> bool {
        self.upgrade && self.status == 101 && !self.local
    }
}
