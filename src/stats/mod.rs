//! The stats listener: the HTML dashboard (`/`), the same numbers as `/stats.json`,
//! `/stats.csv` and Prometheus text (`/metrics`), the proxy's own `/health`, and — only
//! with `stats.auth` configured — admin actions under `/admin/`.
//!
//! Every output renders one `view::StatsView` gathered per request, so they agree.
//! `/health` is always open (readiness probes); everything else answers only requests
//! whose `Host` names the listener (`host`, against DNS rebinding) and, with auth
//! configured, needs basic auth (wrong passwords throttled per address, `throttle`). The
//! listener is its own small HTTP/1.1 server (`listener`, slots in `slots`) with
//! connection, header, keep-alive, request and body limits, run as a pingora background
//! service next to a once-a-second rate sampler and the history sampler behind the
//! dashboard's charts (`history`, drawn by `charts`). It reads proxy state and, through
//! `admin`, changes only servers' admin state and weight.

mod admin;
mod auth;
mod charts;
mod csv;
pub(crate) mod gather;
mod history;
mod host;
mod html;
mod listener;
mod prometheus;
mod rates;
mod row_metrics;
mod slots;
mod throttle;
mod view;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::runtime::Shared;

pub use crate::config::MAX_WEIGHT;
pub use auth::GuardError;

/// Largest request body the stats listener reads (admin actions are tiny).
const MAX_BODY_BYTES: usize = 4 * 1024;

/// Headers sent with every answer: no caching, no framing, no outside resources.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    (
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
];

/// The state every stats handler shares.
#[derive(Clone, Debug)]
pub struct StatsApp {
    pub shared: Arc<Shared>,
    rates: Arc<rates::Rates>,
    /// Recent points for the dashboard's charts.
    history: Arc<history::History>,
    guard: Arc<auth::Guard>,
    /// Wrong passwords per client address.
    throttle: Arc<throttle::Throttle>,
}

impl StatsApp {
    /// Set up for `shared`, with the credentials of its current config.
    pub fn new(shared: Arc<Shared>) -> Result<StatsApp, GuardError> {
        let guard = auth::Guard::new(shared.snapshot().config.stats.auth.as_ref())?;
        Ok(StatsApp {
            shared,
            rates: Arc::default(),
            history: Arc::default(),
            guard: Arc::new(guard),
            throttle: Arc::new(throttle::Throttle::new(throttle::Policy::default())),
        })
    }

    /// The HTTP routes. Admin routes exist only when auth is configured.
    pub fn router(&self) -> Router {
        let mut protected = Router::new()
            .route("/", get(dashboard))
            .route("/stats.json", get(stats_json))
            .route("/stats.csv", get(stats_csv))
            .route("/metrics", get(metrics));
        if self.guard.enabled() {
            protected = protected
                .route("/admin/servers/{name}/state", post(admin::set_state))
                .route("/admin/servers/{name}/weight", post(admin::set_weight));
        }
        // The Host check runs first: a rebinding page's requests never reach the password
        // check, so they cannot count wrong passwords against the operator's address.
        let protected = protected
            .route_layer(middleware::from_fn_with_state(self.clone(), auth::require_user))
            .route_layer(middleware::from_fn_with_state(self.clone(), host::require_own_host));
        Router::new()
            .route("/health", get(health))
            .merge(protected)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(middleware::from_fn(security_headers))
            .with_state(self.clone())
    }

    fn view(&self) -> view::StatsView {
        view::StatsView::gather(&self.shared, &self.rates)
    }

    /// The view with the charts' history (the page and the JSON; CSV and Prometheus
    /// have no use for it).
    fn view_with_history(&self) -> view::StatsView {
        let mut view = self.view();
        let settings = self.shared.snapshot().config.stats.history;
        view.history = Some(self.history.lock().view(settings));
        view
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn health(State(app): State<StatsApp>) -> impl IntoResponse {
    let shared = &app.shared;
    Json(serde_json::json!({
        "status": if shared.stopping() { "stopping" } else { "ok" },
        "pid": std::process::id(),
        "generation": shared.snapshot().generation,
        "uptime_seconds": shared.registry.started.elapsed().as_secs(),
        "version": crate::build_info::VERSION,
        "commit": crate::build_info::COMMIT,
    }))
}

/// `?refresh=N`: seconds between page reloads, 0 for none.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    refresh: Option<String>,
}

async fn dashboard(
    State(app): State<StatsApp>,
    Query(q): Query<PageQuery>,
    user: Option<axum::Extension<auth::User>>,
) -> Response {
    let default = app.shared.snapshot().config.stats.refresh;
    let refresh = q
        .refresh
        .and_then(|r| r.parse::<u32>().ok())
        .unwrap_or(default)
        .min(html::MAX_REFRESH);
    let csrf = user.map(|axum::Extension(u)| app.guard.csrf_token(&u));
    let page = html::Page {
        view: &app.view_with_history(),
        refresh,
        csrf: csrf.as_deref(),
    };
    Html(page.render().into_string()).into_response()
}

async fn stats_json(State(app): State<StatsApp>) -> Response {
    Json(app.view_with_history()).into_response()
}

async fn stats_csv(State(app): State<StatsApp>) -> Response {
    ([(CONTENT_TYPE, "text/csv; charset=utf-8")], csv::render(&app.view())).into_response()
}

async fn metrics(State(app): State<StatsApp>) -> Response {
    match prometheus::render(&app.view()) {
        Ok(text) => ([(CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "stats: encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response()
        }
    }
}

/// Serve the stats app on `listener` until shutdown; rates are sampled meanwhile.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    let app = match StatsApp::new(Arc::clone(&shared)) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "stats listener not started");
            return;
        }
    };
    if let Some(w) = &shared.snapshot().config.stats.weak_password {
        tracing::warn!(warning = %w, "stats: weak password");
    }
    let mut sampler_stop = shutdown.clone();
    let sampler = tokio::spawn(rates::run(Arc::clone(&shared), Arc::clone(&app.rates), async move {
        let _ = sampler_stop.changed().await;
    }));
    let mut history_stop = shutdown.clone();
    let history = tokio::spawn(history::run(
        shared,
        Arc::clone(&app.rates),
        Arc::clone(&app.history),
        async move {
            let _ = history_stop.changed().await;
        },
    ));
    // This process stops answering here once an upgrade handed the listener over.
    let lifecycle_of = Arc::clone(&app.shared);
    listener::run(listener, app.router(), listener::Limits::default(), async move {
        tokio::select! {
            _ = shutdown.changed() => {}
            () = lifecycle_of.lifecycle.until_handed_over() => {}
        }
    })
    .await;
    sampler.abort();
    history.abort();
}

/// The stats listener as a pingora background service.
pub struct StatsService {
    pub shared: Arc<Shared>,
    /// Bound (or taken over) before the server starts, so a taken port fails `run` at once.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for StatsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // After a takeover: not before this process accepts (the old one answers until then).
        tokio::select! {
            () = self.shared.lifecycle.until_accepting() => {}
            _ = shutdown.changed() => return,
        }
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => serve(listener, Arc::clone(&self.shared), shutdown).await,
            Err(e) => tracing::error!(error = %e, "stats listener failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;
    use tower::ServiceExt;

    use super::*;
    use crate::config::StatsAuth;
    use crate::state::Admin;

    fn app(auth: bool) -> StatsApp {
        let shared = gather::tests::shared_with(auth.then(|| StatsAuth {
            user: "admin".into(),
            password: "pw".into(),
        }));
        StatsApp::new(shared).unwrap()
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
    }

    async fn send(app: &StatsApp, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = app.router().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(path: &str, auth: Option<&str>) -> Request<Body> {
        let mut req = Request::get(path).header("host", "stats.test");
        if let Some(a) = auth {
            req = req.header("authorization", basic(a));
        }
        req.body(Body::empty()).unwrap()
    }

    fn post(path: &str, content_type: &str, body: &str, origin: Option<&str>) -> Request<Body> {
        let mut req = Request::post(path)
            .header("host", "stats.test")
            .header("authorization", basic("admin:pw"))
            .header("content-type", content_type);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.body(Body::from(body.to_string())).unwrap()
    }

    #[tokio::test]
    async fn without_auth_every_output_is_served_and_admin_routes_do_not_exist() {
        let app = app(false);
        let (status, headers, page) = send(&app, get("/", None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(r#"id="server-api-a""#));
        assert_eq!(headers["x-frame-options"], "DENY");
        let (status, _, json) = send(&app, get("/stats.json", None)).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["backends"][0]["servers"][1]["name"], "b");
        assert_eq!(json["history"]["points"], 180, "the charts' series");
        assert!(page.contains(r#"id="chart-websockets""#), "and the charts");
        let (status, headers, csv) = send(&app, get("/stats.csv", None)).await;
        assert_eq!(
            (status, headers[CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, "text/csv; charset=utf-8")
        );
        assert!(csv.starts_with("# pxname,svname,"));
        let (status, _, metrics) = send(&app, get("/metrics", None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("edgepin_server_status{"));
        let (status, _, health) = send(&app, get("/health", None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(health.contains("\"generation\":1"));
        let body = r#"{"state":"drain"}"#;
        let (status, _, _) = send(&app, post("/admin/servers/a/state", "application/json", body, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no admin without auth");
    }

    #[tokio::test]
    async fn another_host_gets_421_before_its_password_counts_and_a_guesser_then_429() {
        let app = app(true);
        let from = |mut req: Request<Body>| {
            let peer = "192.0.2.9:4000".parse().unwrap();
            req.extensions_mut().insert(listener::Peer(peer));
            req
        };
        let with_host = |host: &'static str, pass: &str| {
            let mut req = from(get("/stats.json", Some(pass)));
            req.headers_mut().insert("host", HeaderValue::from_static(host));
            req
        };
        for _ in 0..10 {
            let (status, _, _) = send(&app, with_host("evil.example", "admin:wrong")).await;
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        }
        let (status, _, _) = send(&app, with_host("127.0.0.1:8404", "admin:pw")).await;
        assert_eq!(status, StatusCode::OK, "a rebinding page cannot lock the operator out");
        let (status, _, _) = send(&app, from(get("/health", None))).await;
        assert_eq!(status, StatusCode::OK);

        for _ in 0..5 {
            let (status, _, _) = send(&app, from(get("/metrics", Some("admin:wrong")))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let (status, headers, _) = send(&app, from(get("/metrics", Some("admin:pw")))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers["retry-after"], "60");
        let (status, _, _) = send(&app, get("/metrics", Some("admin:pw"))).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "another client (here: none known) is not throttled"
        );
    }

    #[tokio::test]
    async fn with_auth_reads_need_the_right_credentials_but_health_stays_open() {
        let app = app(true);
        for path in ["/", "/stats.json", "/stats.csv", "/metrics"] {
            let (status, headers, _) = send(&app, get(path, None)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Basic realm=")
            );
            let (status, _, _) = send(&app, get(path, Some("admin:wrong"))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            let (status, _, _) = send(&app, get(path, Some("admin:pw"))).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        let (status, _, _) = send(&app, get("/health", None)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, page) = send(&app, get("/", Some("admin:pw"))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(r#"action="/admin/servers/a/state""#));
    }

    #[tokio::test]
    async fn form_actions_need_the_csrf_token_and_this_origin() {
        let app = app(true);
        let token = app.guard.csrf_token(&auth::User("admin".into()));
        let form = "application/x-www-form-urlencoded";
        let path = "/admin/servers/a/state";
        let (status, _, _) = send(&app, post(path, form, "state=drain", Some("http://stats.test"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no token");
        let body = format!("state=drain&csrf={token}x");
        let (status, _, _) = send(&app, post(path, form, &body, Some("http://stats.test"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "wrong token");
        let body = format!("state=drain&csrf={token}");
        let (status, _, _) = send(&app, post(path, form, &body, Some("http://evil.test"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "other origin");
        let server = app.shared.registry.server("a", 1);
        assert_eq!(server.admin(), Admin::Ready, "nothing changed yet");
        let (status, headers, _) = send(&app, post(path, form, &body, Some("http://stats.test"))).await;
        assert_eq!(
            (status, headers["location"].to_str().unwrap()),
            (StatusCode::SEE_OTHER, "/")
        );
        assert_eq!(server.admin(), Admin::Drain);
        assert!(server.detail().reason.contains("by admin"));

        let body = format!("weight=9&csrf={token}");
        let (status, _, _) = send(&app, post("/admin/servers/a/weight", form, &body, None)).await;
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "a script's form post without Origin passes with the token"
        );
        assert_eq!(server.weight(), 9);
    }

    #[tokio::test]
    async fn json_actions_with_basic_auth_set_state_and_weight() {
        let app = app(true);
        let json = "application/json";
        let (status, _, body) = send(&app, post("/admin/servers/b/state", json, r#"{"state":"maint"}"#, None)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (answer["admin"].as_str(), answer["status"].as_str()),
            (Some("MAINT"), Some("MAINT"))
        );
        let (status, _, body) = send(&app, post("/admin/servers/b/weight", json, r#"{"weight":3}"#, None)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["previous"], 1);
        assert_eq!(app.shared.registry.server("b", 1).weight(), 3);

        let cases = [
            (
                "/admin/servers/b/state",
                json,
                r#"{"state":"sleep"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/admin/servers/b/weight",
                json,
                r#"{"weight":257}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                "/admin/servers/nope/state",
                json,
                r#"{"state":"drain"}"#,
                StatusCode::NOT_FOUND,
            ),
            (
                "/admin/servers/b/state",
                "text/plain",
                r#"{"state":"drain"}"#,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
        ];
        for (path, content_type, body, expected) in cases {
            let (status, _, text) = send(&app, post(path, content_type, body, None)).await;
            assert_eq!(status, expected, "{path} {body}: {text}");
        }
        let big = format!(r#"{{"state":"drain","pad":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        let (status, _, _) = send(&app, post("/admin/servers/b/state", json, &big, None)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _, _) = send(&app, get("/admin/servers/b/state", Some("admin:pw"))).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }

    #[tokio::test]
    async fn every_output_shows_discovered_servers_and_the_resolutions() {
        use crate::discovery::Failure;
        use crate::upkeep::discovery::{apply, tests as found};
        let shared = found::shared();
        let spec = shared.snapshot().config.backends[0].discover.clone().unwrap();
        let app = StatsApp::new(Arc::clone(&shared)).unwrap();
        let (_, _, json) = send(&app, get("/stats.json", None)).await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["backends"][0]["discovery"]["dns"], "fleet.test:3000 (A/AAAA)");
        assert_eq!(v["backends"][0]["discovery"]["last_result"], serde_json::Value::Null);

        apply(&shared, "ws", &spec, Ok(found::found(&[2, 3])));
        apply(&shared, "ws", &spec, Err(Failure::Timeout));
        let (_, _, json) = send(&app, get("/stats.json", None)).await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let b = &v["backends"][0];
        let d = &b["discovery"];
        assert_eq!(
            (&d["last_result"], &d["last_detail"]),
            (&"timeout".into(), &"timeout".into())
        );
        assert_eq!(
            (&d["servers"], &d["answers"], &d["failures"]["timeout"], &d["changes"]),
            (&2.into(), &1.into(), &1.into(), &1.into())
        );
        let servers = b["servers"].as_array().unwrap();
        assert!(
            servers
                .iter()
                .all(|s| s["discovered"] == true && s["health"] == "CHECKING"),
            "{b}"
        );
        assert_eq!(b["servers_up"], 0, "none takes new sessions before its first check");

        let (_, _, metrics) = send(&app, get("/metrics", None)).await;
        for line in [
            "edgepin_backend_dns_resolutions_total{proxy=\"ws\",result=\"answer\"} 1",
            "edgepin_backend_dns_resolutions_total{proxy=\"ws\",result=\"timeout\"} 1",
            "edgepin_backend_dns_servers{proxy=\"ws\"} 2",
            "edgepin_backend_dns_last_resolution_success{proxy=\"ws\"} 0",
            "edgepin_server_weight{proxy=\"ws\",server=\"127.0.0.3:3000\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }
        let (_, _, csv) = send(&app, get("/stats.csv", None)).await;
        let header: Vec<&str> = csv
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let row = |start: &str| -> Vec<String> {
            csv.lines()
                .find(|l| l.starts_with(start))
                .unwrap()
                .split(',')
                .map(str::to_string)
                .collect()
        };
        let col = |row: &[String], name: &str| row[header.iter().position(|h| *h == name).unwrap()].clone();
        let backend = row("ws,BACKEND");
        assert_eq!(
            (
                col(&backend, "dns"),
                col(&backend, "dns_result"),
                col(&backend, "dns_servers")
            ),
            ("fleet.test:3000 (A/AAAA)".into(), "timeout".into(), "2".into())
        );
        assert_eq!(col(&row("ws,127.0.0.2:3000"), "discovered"), "1");
        let (_, _, html) = send(&app, get("/", None)).await;
        assert!(
            html.contains("Servers from DNS <code>fleet.test:3000 (A/AAAA)</code>"),
            "{html}"
        );
        assert!(html.contains("127.0.0.3:3000"), "{html}");
    }
}
