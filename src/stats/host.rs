//! Which `Host` the stats listener answers: a name for the listener itself — the IP
//! address the client connected to, `localhost`, `127.0.0.1`, `[::1]` (any port), or a
//! name the operator listed in `stats.hosts`. Anything else gets 421 Misdirected Request.
//!
//! Why: with DNS rebinding, a web page at `evil.example` re-points its own name at
//! 127.0.0.1 and reads this listener's answers as same-origin ones (`/stats.json`, the
//! page with its CSRF token). The browser still sends `Host: evil.example`, which no
//! operator's request carries. 421 rather than 403: the request went to a server that is
//! not authoritative for that name — no credential changes that, and 403 stays the answer
//! of the CSRF checks. `/health` is not checked (the router leaves it out): probes send
//! whatever Host they were configured with, and it tells nothing worth a rebinding.
//! Before that, on every route, a request must name one host (RFC 9112 §3.2): two `Host`
//! lines, an HTTP/1.1 request without one, or a value that is not a host get 400; an
//! absolute-form target's authority is the host it names.
//! This module only decides; `mod` mounts the middleware.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::HOST;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::StatsApp;

/// The address a stats connection reached (the listener's, or on a wildcard listener the
/// interface the client used), attached to each of its requests.
#[derive(Debug, Clone, Copy)]
pub struct Local(pub SocketAddr);

/// The host part of a `Host` value.
#[derive(Debug, PartialEq, Eq)]
enum HostName {
    Ip(IpAddr),
    /// Lowercase, without a trailing dot.
    Name(String),
}

/// The host of a `Host` value, without its port; `None` if it is not a host
/// (`crate::authority`).
fn parse(value: &str) -> Option<HostName> {
    let host = crate::authority::parse(value.as_bytes()).ok()?.host;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(|ip| HostName::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(HostName::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    (!name.is_empty()).then(|| HostName::Name(name.to_ascii_lowercase()))
}

/// The host a request names (RFC 9112 §3.2): the authority of an absolute-form target,
/// else its `Host`. Refused (the reason) when it has two `Host` lines, an HTTP/1.1
/// request has neither, or either is not a host.
pub fn named_host<'a>(
    hosts: &[&'a [u8]],
    target_authority: Option<&'a str>,
    http11: bool,
) -> Result<Option<&'a str>, &'static str> {
    let host = match hosts {
        [] => None,
        [one] => Some(std::str::from_utf8(one).map_err(|_| "invalid Host")?),
        _ => return Err("more than one Host header"),
    };
    // An empty Host is a valid one (an empty reg-name) that names no listener: 421.
    for value in host.iter().chain(target_authority.iter()).filter(|v| !v.is_empty()) {
        crate::authority::parse(value.as_bytes()).map_err(|_| "invalid Host")?;
    }
    match target_authority.or(host) {
        None if http11 => Err("HTTP/1.1 request without Host"),
        named => Ok(named),
    }
}

/// The host `req` names, or the reason it is refused.
fn host_of(req: &Request) -> Result<Option<&str>, &'static str> {
    let hosts: Vec<&[u8]> = req.headers().get_all(HOST).iter().map(|v| v.as_bytes()).collect();
    let http11 = req.version() == axum::http::Version::HTTP_11;
    named_host(&hosts, req.uri().authority().map(|a| a.as_str()), http11)
}

/// Middleware on every route (`/health` too): 400 for a request whose host is missing,
/// doubled or not a host (RFC 9112 §3.2).
pub async fn require_valid_host(req: Request, next: Next) -> Response {
    match host_of(&req) {
        Ok(_) => next.run(req).await,
        Err(why) => (StatusCode::BAD_REQUEST, format!("400 Bad Request: {why}\n")).into_response(),
    }
}

/// Whether the `Host` value `host` names this listener: reached at `local`, also
/// answering to `allowed` (`stats.hosts`, normalised by config validation).
pub fn names_listener(host: &str, local: Option<IpAddr>, allowed: &[String]) -> bool {
    match parse(host.trim()) {
        None => false,
        Some(HostName::Name(name)) => name == "localhost" || allowed.contains(&name),
        Some(HostName::Ip(ip)) => {
            ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
                || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
                || local.is_some_and(|l| l.to_canonical() == ip.to_canonical())
                || allowed.iter().any(|a| a.parse::<IpAddr>().is_ok_and(|a| a == ip))
        }
    }
}

/// Middleware: answer only requests whose `Host` names this listener; 421 otherwise.
pub async fn require_own_host(State(app): State<StatsApp>, req: Request, next: Next) -> Response {
    let local = req.extensions().get::<Local>().map(|l| l.0.ip());
    let host = host_of(&req).ok().flatten();
    let known = host.is_some_and(|h| names_listener(h, local, &app.shared.snapshot().config.stats.hosts));
    if known {
        return next.run(req).await;
    }
    tracing::debug!(host = ?host, path = %req.uri().path(), "stats: request for another host refused");
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this listener answers only to its own address, localhost, or a name in stats.hosts\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(host: &str) -> bool {
        let local = "10.1.2.3".parse().ok();
        names_listener(host, local, &["stats.example.com".into(), "fd00::5".into()])
    }

    #[test]
    fn loopback_names_and_the_listener_address_pass_with_any_port() {
        for host in [
            "localhost",
            "LocalHost:8404",
            "localhost.:1",
            "localhost:",
            "127.0.0.1",
            "127.0.0.1:8404",
            "[::1]",
            "[::1]:9000",
            "10.1.2.3",
            "10.1.2.3:8404",
            "stats.example.com",
            "Stats.Example.com:443",
            "[fd00::5]:8404",
        ] {
            assert!(ok(host), "{host}");
        }
    }

    #[test]
    fn other_names_and_malformed_values_are_refused() {
        for host in [
            "evil.example",
            "evil.example:8404",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "stats.example.com.evil.example",
            "10.1.2.4",
            "127.0.0.2",
            "[::2]",
            "::1",
            "localhost:http",
            "localhost:123456",
            "[::1]x",
            "[127.0.0.1]",
            "",
            "local host",
            "user@localhost",
        ] {
            assert!(!ok(host), "{host}");
        }
    }

    #[test]
    fn the_host_of_a_request_is_its_target_authority_or_its_one_host() {
        assert_eq!(named_host(&[b"localhost"], None, true), Ok(Some("localhost")));
        assert_eq!(
            named_host(&[b"evil.example"], Some("localhost:8404"), true),
            Ok(Some("localhost:8404")),
            "absolute form: the target's authority"
        );
        assert_eq!(named_host(&[], Some("127.0.0.1"), true), Ok(Some("127.0.0.1")));
        assert_eq!(named_host(&[], None, false), Ok(None), "HTTP/1.0 may omit it");
        assert!(named_host(&[], None, true).is_err());
        assert!(named_host(&[b"localhost", b"evil.example"], None, true).is_err());
        assert!(named_host(&[b"localhost", b"localhost"], None, true).is_err());
        assert!(named_host(&[b"evil.example/x"], None, true).is_err());
        assert_eq!(
            named_host(&[b""], None, true),
            Ok(Some("")),
            "empty names nothing (421), it is not malformed"
        );
        assert!(named_host(&[b"localhost"], Some("a@localhost"), true).is_err());
        assert!(
            named_host(&[b"a b"], Some("localhost"), true).is_err(),
            "both must be hosts"
        );
    }

    #[test]
    fn a_wildcard_listener_answers_to_the_address_the_client_reached() {
        let mapped = "::ffff:192.168.1.9".parse().ok();
        assert!(names_listener("192.168.1.9:8404", mapped, &[]));
        assert!(!names_listener("192.168.1.9:8404", None, &[]));
    }
}
