//! Who may call the worker's REST emit and its ops endpoints (`/metrics`, the member
//! count `GET /api/rooms/{room}`). Behind the proxy's catch-all route the worker's HTTP API
//! is as public as the site, so:
//!
//! - the emit forges events to any room: with `EDGEPIN_EMIT_TOKEN` set it needs that bearer
//!   token (from anywhere); without one it answers only direct loopback callers (a backend
//!   service on the same host), never a request that came through a proxy;
//! - the ops endpoints answer direct callers (a Prometheus scrape of the worker's own
//!   address) and token holders, and are not there (404) for a request that came through a
//!   proxy.
//!
//! "Came through a proxy" means it carries a forwarding header: the edgepin proxy sets
//! `X-Forwarded-For` on everything it forwards, and other proxies set one of these. This
//! module only decides; the handlers in `http` ask it.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, header};

use super::WorkerError;

/// Headers that say a proxy forwarded the request.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Where a request comes from, as far as the worker can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Straight from a process on this host.
    Loopback,
    /// Straight from another host.
    Direct,
    /// Through a proxy (it carries a forwarding header).
    Proxied,
}

impl Caller {
    pub fn of(peer: SocketAddr, headers: &HeaderMap) -> Caller {
        if FORWARDING.iter().any(|h| headers.contains_key(*h)) {
            Caller::Proxied
        } else if peer.ip().to_canonical().is_loopback() {
            Caller::Loopback
        } else {
            Caller::Direct
        }
    }
}

/// A refusal: the status and the message of the JSON error.
pub type Refusal = (StatusCode, &'static str);

/// The REST emit's bearer token, kept as an HMAC under a key of this process: a guess is
/// checked in the same time wherever it differs (as the stats credentials are).
pub struct EmitToken {
    key: ring::hmac::Key,
    tag: ring::hmac::Tag,
}

impl EmitToken {
    pub fn new(token: &str) -> Result<EmitToken, WorkerError> {
        use ring::hmac;
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| WorkerError::Random)?;
        let tag = hmac::sign(&key, token.as_bytes());
        Ok(EmitToken { key, tag })
    }

    pub fn matches(&self, given: &[u8]) -> bool {
        ring::hmac::verify(&self.key, given, self.tag.as_ref()).is_ok()
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    fn presented(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| self.matches(given.as_bytes()))
    }
}

/// May this caller use the REST emit?
pub fn emit(token: Option<&EmitToken>, caller: Caller, headers: &HeaderMap) -> Result<(), Refusal> {
    match token {
        Some(token) if token.presented(headers) => Ok(()),
        Some(_) => Err((StatusCode::UNAUTHORIZED, "emit needs Authorization: Bearer <token>")),
        None if caller == Caller::Loopback => Ok(()),
        None => Err((
            StatusCode::FORBIDDEN,
            "without EDGEPIN_EMIT_TOKEN the emit answers only direct requests from this host",
        )),
    }
}

/// May this caller read `/metrics` or a room's member count?
pub fn ops(token: Option<&EmitToken>, caller: Caller, headers: &HeaderMap) -> Result<(), Refusal> {
    if caller != Caller::Proxied || token.is_some_and(|t| t.presented(headers)) {
        Ok(())
    } else {
        Err((StatusCode::NOT_FOUND, "not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn secrets_compare_whole() {
        let token = EmitToken::new("s3cret").unwrap();
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3creT"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn a_forwarding_header_means_a_proxy_whatever_the_peer() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        assert_eq!(Caller::of(local, &headers(&[])), Caller::Loopback);
        assert_eq!(Caller::of(mapped, &headers(&[])), Caller::Loopback);
        assert_eq!(Caller::of("[::1]:1".parse().unwrap(), &headers(&[])), Caller::Loopback);
        assert_eq!(Caller::of(remote, &headers(&[])), Caller::Direct);
        for h in FORWARDING {
            assert_eq!(
                Caller::of(local, &headers(&[(h, "203.0.113.9")])),
                Caller::Proxied,
                "{h}"
            );
        }
    }

    #[test]
    fn the_emit_needs_the_token_or_a_direct_local_caller_and_ops_are_not_proxied() {
        let token = EmitToken::new("s3cret").unwrap();
        let bearer = headers(&[("authorization", "Bearer s3cret")]);
        let wrong = headers(&[("authorization", "Bearer nope")]);
        let none = headers(&[]);
        use Caller::*;
        assert!(emit(None, Loopback, &none).is_ok());
        assert_eq!(emit(None, Direct, &none).unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(emit(None, Proxied, &bearer).unwrap_err().0, StatusCode::FORBIDDEN);
        assert!(emit(Some(&token), Proxied, &bearer).is_ok());
        assert_eq!(
            emit(Some(&token), Loopback, &wrong).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            emit(Some(&token), Loopback, &none).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );

        assert!(ops(None, Loopback, &none).is_ok());
        assert!(ops(None, Direct, &none).is_ok());
        assert_eq!(ops(None, Proxied, &none).unwrap_err().0, StatusCode::NOT_FOUND);
        assert_eq!(ops(Some(&token), Proxied, &wrong).unwrap_err().0, StatusCode::NOT_FOUND);
        assert!(ops(Some(&token), Proxied, &bearer).is_ok());
    }
}
