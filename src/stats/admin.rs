//! Admin actions on the stats listener: set a server's state (READY, DRAIN, MAINT) or its
//! weight. They exist only when `stats.auth` is configured (the router leaves them out
//! otherwise) and run as the authenticated user.
//!
//! Two ways in, the same endpoints: scripts POST JSON with basic auth; the HTML page's
//! forms POST `application/x-www-form-urlencoded` with a CSRF token, and their
//! Origin/Referer must name this listener. A JSON body cannot be sent cross-site without a
//! CORS preflight, which this listener never grants. Every action is logged with who,
//! from where and what. State changes go through `health::set_admin`, so MAINT closes the
//! server's tunnels like everywhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::MAX_WEIGHT;
use crate::health;
use crate::state::{Admin, ServerState};

use super::StatsApp;
use super::auth::{User, same_origin};
use super::listener::Peer;

#[derive(Debug, Deserialize)]
pub struct StateChange {
    /// `ready` (or `up`), `drain`, `maint`.
    pub state: String,
    /// The form's CSRF token; scripts sending JSON leave it out.
    #[serde(default)]
    pub csrf: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WeightChange {
    pub weight: u32,
    #[serde(default)]
    pub csrf: Option<String>,
}

/// How the action arrived: it decides the checks and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Json,
    Form,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Json => "json",
            Via::Form => "form",
        }
    }
}

/// Everything an action needs to know about its request.
struct Action<T> {
    body: T,
    via: Via,
    user: User,
    peer: Option<SocketAddr>,
}

/// Why an action was refused: the status and a message for the caller.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

fn refuse(status: StatusCode, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

impl<T> Action<T> {
    /// Log the action done: who, from where, how, on what, from which value to which.
    fn log(&self, server: &str, what: &'static str, from: impl std::fmt::Debug, to: impl std::fmt::Debug) {
        tracing::info!(
            action = what,
            server,
            from = ?from,
            to = ?to,
            user = %self.user.0,
            client = ?self.peer,
            via = self.via.as_str(),
            "stats admin action"
        );
    }
}

/// Decode the body (JSON or form) and apply the checks its kind needs.
async fn action<T: DeserializeOwned>(
    app: &StatsApp,
    req: Request,
    csrf: impl Fn(&T) -> Option<&str>,
) -> Result<Action<T>, Refusal> {
    let user = req
        .extensions()
        .get::<User>()
        .cloned()
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "authentication required"))?;
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let headers: HeaderMap = req.headers().clone();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (body, via) = if content_type.starts_with("application/json") {
        let Json(body) = Json::<T>::from_request(req, &())
            .await
            .map_err(|e| refuse(e.status(), &e.body_text()))?;
        (body, Via::Json)
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let Form(body) = Form::<T>::from_request(req, &())
            .await
            .map_err(|e| refuse(e.status(), &e.body_text()))?;
        (body, Via::Form)
    } else {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json (scripts) or a form with its CSRF token",
        ));
    };
    if !same_origin(&headers) {
        tracing::warn!(user = %user.0, client = ?peer, via = via.as_str(), "stats admin: cross-origin request refused");
        return Err(refuse(StatusCode::FORBIDDEN, "cross-origin request refused"));
    }
    if via == Via::Form && !csrf(&body).is_some_and(|t| app.guard.csrf_valid(&user, t)) {
        tracing::warn!(user = %user.0, client = ?peer, "stats admin: form without a valid CSRF token refused");
        return Err(refuse(StatusCode::FORBIDDEN, "missing or invalid CSRF token"));
    }
    Ok(Action { body, via, user, peer })
}

fn find_server(app: &StatsApp, name: &str) -> Result<Arc<ServerState>, Refusal> {
    app.shared
        .registry
        .servers()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, &format!("no server named {name:?}")))
}

/// The answer to a done action: JSON for scripts, back to the page for forms.
fn done(via: Via, json: serde_json::Value) -> Response {
    match via {
        Via::Json => Json(json).into_response(),
        Via::Form => (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response(),
    }
}

/// `POST /admin/servers/{name}/state` `{"state": "drain"}`.
pub async fn set_state(
    State(app): State<StatsApp>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let a = action::<StateChange>(&app, req, |b| b.csrf.as_deref()).await?;
    let admin = Admin::parse(&a.body.state)
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "state must be ready, drain or maint"))?;
    let server = find_server(&app, &name)?;
    let previous = server.admin();
    let changed = health::set_admin(&server, admin, &a.user.0);
    a.log(&server.name, "state", previous, admin);
    Ok(done(
        a.via,
        serde_json::json!({
            "server": server.name,
            "admin": admin.as_str(),
            "status": server.status().as_str(),
            "changed": changed,
        }),
    ))
}

/// `POST /admin/servers/{name}/weight` `{"weight": 3}`.
pub async fn set_weight(
    State(app): State<StatsApp>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let a = action::<WeightChange>(&app, req, |b| b.csrf.as_deref()).await?;
    if a.body.weight > MAX_WEIGHT {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            &format!("weight must be 0 to {MAX_WEIGHT}"),
        ));
    }
    let server = find_server(&app, &name)?;
    let previous = server.weight();
    server.set_weight(a.body.weight);
    a.log(&server.name, "weight", previous, a.body.weight);
    Ok(done(
        a.via,
        serde_json::json!({ "server": server.name, "weight": a.body.weight, "previous": previous }),
    ))
}
