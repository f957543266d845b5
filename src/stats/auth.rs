//! Who may read the stats and change servers: HTTP basic auth, the CSRF token of the
//! admin forms, and the Origin/Referer check of browser form posts.
//!
//! Credentials come from `stats.auth` (the password was read from its env var or file
//! when the config loaded); without them there is no auth and no admin action at all.
//! Comparisons are constant-time: the offered `user:password` is checked as an HMAC tag
//! under a key made at start, and so is the CSRF token (an HMAC of the user name under
//! the same per-process key, so it changes on restart and needs no storage). Wrong
//! credentials are counted per client address and in total (`throttle`): an address
//! locked out gets 429 before its credentials are looked at. This module decides; `admin` and `mod`
//! apply its answers.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN, REFERER, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;

use base64::Engine;
use ring::hmac;
use ring::rand::SystemRandom;

use crate::config::StatsAuth;

use super::StatsApp;
use super::listener::Peer;

/// The realm browsers show in their login dialog.
const REALM: &str = "Basic realm=\"edgepin stats\", charset=\"UTF-8\"";

/// The user an authenticated request runs as; logged with every admin action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

/// Checks credentials and CSRF tokens with a key made when the stats listener starts.
pub struct Guard {
    key: hmac::Key,
    /// Tag of the configured `user:password`; `None` when auth is off.
    credentials: Option<hmac::Tag>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("auth", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no secure random numbers for the stats key")]
    Random,
}

impl Guard {
    pub fn new(auth: Option<&StatsAuth>) -> Result<Guard, GuardError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).map_err(|_| GuardError::Random)?;
        let credentials = auth.map(|a| hmac::sign(&key, format!("{}:{}", a.user, a.password).as_bytes()));
        Ok(Guard { key, credentials })
    }

    /// Whether auth (and so the admin actions) is configured.
    pub fn enabled(&self) -> bool {
        self.credentials.is_some()
    }

    /// The user named by a valid `Authorization: Basic` header.
    pub fn check_basic(&self, headers: &HeaderMap) -> Option<User> {
        let expected = self.credentials.as_ref()?;
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        hmac::verify(&self.key, &decoded, expected.as_ref()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, _) = text.split_once(':')?;
        Some(User(user.to_string()))
    }

    /// The CSRF token of `user`'s admin forms.
    pub fn csrf_token(&self, user: &User) -> String {
        let tag = hmac::sign(&self.key, format!("csrf:{}", user.0).as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` is `user`'s CSRF token (constant-time).
    pub fn csrf_valid(&self, user: &User, token: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        hmac::verify(&self.key, format!("csrf:{}", user.0).as_bytes(), &tag).is_ok()
    }
}

/// Whether a browser's `Origin` (or, without one, `Referer`) names this stats listener
/// as reached (`Host`). Requests naming neither (scripts) pass; the token still counts.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let names_us = |url: &str| {
        ["http://", "https://"].iter().any(|scheme| {
            url.strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix(host))
                .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
        })
    };
    if let Some(origin) = headers.get(ORIGIN) {
        return origin.to_str().is_ok_and(names_us);
    }
    match headers.get(REFERER) {
        Some(referer) => referer.to_str().is_ok_and(names_us),
        None => true,
    }
}

/// Middleware: with auth configured, a request needs valid basic credentials; the user
/// is attached to the request for the handlers.
/// An address locked out by the throttle is refused with 429 first, whatever it sends.
pub async fn require_user(State(app): State<StatsApp>, mut req: Request, next: Next) -> Response {
    if !app.guard.enabled() {
        return next.run(req).await;
    }
    let client = req.extensions().get::<Peer>().map(|p| p.0);
    if let Some(wait) = client.and_then(|c| app.throttle.locked(c.ip(), Instant::now())) {
        // Whole seconds, rounded up: a client retrying at once would be refused again.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(RETRY_AFTER, secs.to_string())],
            "too many wrong passwords (from this address, or from all together); retry later\n",
        )
            .into_response();
    }
    match app.guard.check_basic(req.headers()) {
        Some(user) => {
            if let Some(c) = client {
                app.throttle.succeeded(c.ip(), Instant::now());
            }
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => {
            if req.headers().contains_key(AUTHORIZATION) {
                tracing::warn!(client = ?client, path = %req.uri().path(), "stats: wrong credentials");
                if let Some(c) = client {
                    let now = Instant::now();
                    let all_before = app.throttle.all_locked(now);
                    if let Some(lockout) = app.throttle.failed(c.ip(), now) {
                        tracing::warn!(client = %c.ip(), lockout_seconds = lockout.as_secs(), "stats: too many wrong passwords, refusing this address for a while");
                    }
                    if !all_before && app.throttle.all_locked(now) {
                        tracing::warn!(
                            client = %c.ip(),
                            "stats: too many wrong passwords from all addresses together, refusing every address without a recent login for a while"
                        );
                    }
                }
            }
            (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, REALM)],
                "authentication required\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard() -> Guard {
        Guard::new(Some(&StatsAuth {
            user: "admin".into(),
            password: "s3cret".into(),
        }))
        .unwrap()
    }

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        h
    }

    #[test]
    fn basic_auth_accepts_only_the_configured_pair() {
        let g = guard();
        assert_eq!(g.check_basic(&basic("admin:s3cret")), Some(User("admin".into())));
        assert_eq!(g.check_basic(&basic("admin:s3cre")), None);
        assert_eq!(g.check_basic(&basic("admin:s3cret ")), None);
        assert_eq!(g.check_basic(&basic("root:s3cret")), None);
        assert_eq!(g.check_basic(&HeaderMap::new()), None);
        let no_auth = Guard::new(None).unwrap();
        assert!(!no_auth.enabled());
        assert_eq!(no_auth.check_basic(&basic("admin:s3cret")), None);
    }

    #[test]
    fn csrf_token_is_per_user_and_per_process() {
        let g = guard();
        let alice = User("alice".into());
        let token = g.csrf_token(&alice);
        assert!(g.csrf_valid(&alice, &token));
        assert!(!g.csrf_valid(&User("bob".into()), &token));
        assert!(!g.csrf_valid(&alice, ""));
        assert!(!g.csrf_valid(&alice, "not base64 !"));
        assert!(!guard().csrf_valid(&alice, &token), "a new process has a new key");
    }

    #[test]
    fn origin_must_name_the_stats_listener() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let host = ("host", "127.0.0.1:8404");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8404")])));
        assert!(same_origin(&headers(&[
            host,
            ("referer", "http://127.0.0.1:8404/?refresh=5")
        ])));
        assert!(same_origin(&headers(&[host])), "a script sends neither");
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.test")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:84045")])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            host,
            ("referer", "http://127.0.0.1:8404.evil.test/")
        ])));
        assert!(
            !same_origin(&headers(&[("origin", "http://127.0.0.1:8404")])),
            "no Host"
        );
    }
}
