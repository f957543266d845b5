//! Routing: which backend serves a request (first matching route wins), and what the
//! plain-http listener does with it (redirect to https, or ACME challenges). A decision
//! both engines ask ([`resolve`]); no I/O.
//!
//! Routes match the request as a user writing `path_prefix` and `host` means it, not as
//! the bytes happen to be spelled: the path is normalised first (percent-encoded
//! unreserved characters decoded, repeated slashes collapsed) and the host lowercased
//! without port or trailing dot, so `/%73ocket.io/` and `//socket.io/` cannot sidestep
//! the route written for `/socket.io/`. The target is forwarded as the client sent it.
//!
//! A target that servers would read in different ways is refused (400) instead: one with
//! a fragment (`#`: RFC 9112 §3.2 allows none; the http crate and Node cut the path
//! there, HAProxy refuses it since CVE-2023-45539), and one with dot-segments (`.` or
//! `..`, also percent-encoded), which nginx and WHATWG URL parsers resolve while
//! hyper/axum and Go's mux take them literally, so no routing could act on the path
//! every server acts on. Browsers and socket.io-client resolve dot-segments before they
//! send; only crafted requests carry them.

use std::borrow::Cow;

use crate::config::{Config, Route};
use crate::failure::Refusal;

pub const ACME_PREFIX: &str = crate::acme::HTTP01_PATH;

/// The request's host: from `Host` (HTTP/1) or the URI authority (HTTP/2), lowercase,
/// without port or trailing dot. Borrowed when already so (the common case).
pub fn request_host<'a>(host_header: Option<&'a [u8]>, uri_host: Option<&'a str>) -> Option<Cow<'a, str>> {
    let raw = match host_header.and_then(|h| std::str::from_utf8(h).ok()) {
        Some(h) => h,
        None => uri_host?,
    };
    let host = strip_port(raw.trim());
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The path as routes see it (RFC 3986 §6.2.2): percent-encoded unreserved characters
/// decoded, repeated slashes collapsed. Dot-segments stay (and [`resolve`] refuses
/// them). Borrowed when it is already normal.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if !path.contains('%') && !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut normal = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && normal.ends_with('/')) {
            normal.push(c);
        }
    }
    Cow::Owned(normal)
}

/// Why a target cannot be routed as one path for every server: a fragment, or a
/// dot-segment in the (normalised) `path`.
fn ambiguous_target(path: &str, path_and_query: &str) -> Option<&'static str> {
    if path_and_query.contains('#') {
        return Some("fragment in the request target");
    }
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
        .then_some("dot-segment in the request target")
}

/// Decode `%XX` where it encodes an unreserved character (ALPHA, DIGIT, `-._~`).
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let c = h << 4 | l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII was decoded into a valid UTF-8 string: still valid.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| path.to_string()))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn host_matches(pattern: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

/// What a request is to the routing.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub tls: bool,
    /// From [`request_host`].
    pub host: Option<&'a str>,
    /// From [`normalize_path`].
    pub path: &'a str,
    /// The target's path and query as sent (for a redirect's Location).
    pub path_and_query: &'a str,
    /// A WebSocket upgrade.
    pub websocket: bool,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// To `backend`, by route `route` (none: the ACME backend).
    Backend { route: Option<usize>, backend: usize },
    /// 308 to this URL.
    Redirect(String),
    /// An ACME HTTP-01 challenge edgepin answers itself (`tls.acme`).
    AcmeAnswer,
    /// Answered by edgepin.
    Refuse(Refusal),
}

pub fn resolve(cfg: &Config, f: &Facts<'_>) -> Routed {
    if let Some(why) = ambiguous_target(f.path, f.path_and_query) {
        return Routed::Refuse(Refusal::Status(400, why));
    }
    if !f.tls {
        match plain_http(cfg, f.host, f.path, f.path_and_query) {
            PlainHttp::Proxy => {}
            PlainHttp::Acme(backend) => return Routed::Backend { route: None, backend },
            PlainHttp::AcmeAnswer => return Routed::AcmeAnswer,
            PlainHttp::NotFound => return Routed::Refuse(Refusal::Status(404, "no ACME backend configured")),
            PlainHttp::Redirect(location) => return Routed::Redirect(location),
        }
    }
    let Some(r) = find(&cfg.routes, f.host, f.path) else {
        return Routed::Refuse(Refusal::Status(404, "no route"));
    };
    if f.websocket && !cfg.routes[r].websocket {
        return Routed::Refuse(Refusal::Status(403, "WebSocket upgrades are not allowed on this route"));
    }
    Routed::Backend {
        route: Some(r),
        backend: cfg.routes[r].backend,
    }
}

/// Index of the first route matching host and path. Validation guarantees a catch-all.
pub fn find(routes: &[Route], host: Option<&str>, path: &str) -> Option<usize> {
    routes.iter().position(|r| {
        r.host.as_deref().is_none_or(|p| host_matches(p, host)) && path.starts_with(r.path_prefix.as_str())
    })
}

/// What the plain-http listener does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainHttp {
    /// Proxy it like the https listener would.
    Proxy,
    /// ACME http-01 challenge: proxy to this backend.
    Acme(usize),
    /// ACME http-01 challenge and `tls.acme` is configured: edgepin answers it
    /// (`acme::http01_answer`: the key authorization, or 404).
    AcmeAnswer,
    /// ACME challenge but no ACME backend configured.
    NotFound,
    /// 308 to this URL.
    Redirect(String),
}

pub fn plain_http(config: &Config, host: Option<&str>, path: &str, path_and_query: &str) -> PlainHttp {
    if path.starts_with(ACME_PREFIX) && config.tls.as_ref().is_some_and(|t| t.acme.is_some()) {
        return PlainHttp::AcmeAnswer;
    }
    if !config.listen.redirect {
        return PlainHttp::Proxy;
    }
    if path.starts_with(ACME_PREFIX) {
        return match config.acme_backend {
            Some(b) => PlainHttp::Acme(b),
            None => PlainHttp::NotFound,
        };
    }
    let host = host.unwrap_or("localhost");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let port = match config.listen.redirect_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    PlainHttp::Redirect(format!("https://{host}{port}{path_and_query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, backend: usize) -> Route {
        Route {
            host: host.map(str::to_string),
            path_prefix: prefix.into(),
            backend,
            websocket: true,
        }
    }

    #[test]
    fn first_match_wins_with_host_and_prefix() {
        let routes = vec![
            route(Some("api.example.com"), "/", 0),
            route(None, "/socket.io/", 1),
            route(Some("*.example.com"), "/", 2),
            route(None, "/", 3),
        ];
        assert_eq!(find(&routes, Some("api.example.com"), "/socket.io/"), Some(0));
        assert_eq!(find(&routes, Some("x.example.com"), "/socket.io/?EIO=4"), Some(1));
        assert_eq!(find(&routes, Some("x.example.com"), "/a"), Some(2));
        assert_eq!(
            find(&routes, Some("example.com"), "/a"),
            Some(3),
            "wildcard needs a label"
        );
        assert_eq!(find(&routes, None, "/a"), Some(3));
    }

    #[test]
    fn host_is_normalised() {
        assert_eq!(
            request_host(Some(b"Example.COM:8443"), None).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(Some(b"[::1]:443"), None).as_deref(), Some("::1"));
        assert_eq!(request_host(None, Some("h2.example")).as_deref(), Some("h2.example"));
        assert_eq!(request_host(Some(b""), None), None);
    }

    #[test]
    fn paths_are_normalised_before_routing() {
        for (raw, normal) in [
            ("/socket.io/", "/socket.io/"),
            ("/%73ocket.io/", "/socket.io/"),
            ("//socket.io/", "/socket.io/"),
            ("/a///b//", "/a/b/"),
            ("/%2e%2e/socket.io", "/../socket.io"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a%20b", "/a%20b"),
            ("/", "/"),
            ("/%", "/%"),
            ("/%7", "/%7"),
        ] {
            assert_eq!(normalize_path(raw), normal, "{raw}");
        }
        assert!(matches!(normalize_path("/api/items"), Cow::Borrowed(_)));
    }

    #[test]
    fn targets_servers_would_read_otherwise_are_refused() {
        for (raw, refused) in [
            ("/nows/#/../../socket.io/", true),
            ("/a#b", true),
            ("/nows/../socket.io/", true),
            ("/nows/%2e%2e/socket.io/", true),
            ("/nows/%2E./socket.io/", true),
            ("/./socket.io/", true),
            ("/a/..", true),
            ("/a/.", true),
            ("/a/..b/.c/", false),
            ("/socket.io/?EIO=4&x=/../..", false),
            ("/a%2F..%2Fb", false),
        ] {
            let path = raw.split_once('?').map_or(raw, |(p, _)| p);
            let normal = normalize_path(path);
            assert_eq!(ambiguous_target(&normal, raw).is_some(), refused, "{raw}");
        }
    }

    #[test]
    fn a_trailing_dot_in_host_is_the_same_host() {
        assert_eq!(
            request_host(Some(b"App.Example.:443"), None).as_deref(),
            Some("app.example")
        );
        assert_eq!(request_host(Some(b"."), None), None);
    }

    #[test]
    fn strip_port_leaves_bare_hosts() {
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("example.com:80"), "example.com");
    }
}
