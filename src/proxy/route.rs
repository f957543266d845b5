//! Routing: which backend serves a request (first matching route wins), and what the
//! plain-http listener does with it (redirect to https, or ACME challenges).

use crate::config::{Config, Route};

pub const ACME_PREFIX: &str = crate::acme::HTTP01_PATH;

/// The request's host: from `Host` (HTTP/1) or the URI authority (HTTP/2), lowercase,
/// without port. Borrowed when already lowercase (the common case).
pub fn request_host<'a>(host_header: Option<&'a [u8]>, uri_host: Option<&'a str>) -> Option<std::borrow::Cow<'a, str>> {
    let raw = match host_header.and_then(|h| std::str::from_utf8(h).ok()) {
        Some(h) => h,
        None => uri_host?,
    };
    let host = strip_port(raw.trim());
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    })
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

pub fn plain_http(config: &Config, host: Option<&str>, path_and_query: &str) -> PlainHttp {
    if path_and_query.starts_with(ACME_PREFIX) && config.tls.as_ref().is_some_and(|t| t.acme.is_some()) {
        return PlainHttp::AcmeAnswer;
    }
    if !config.listen.redirect {
        return PlainHttp::Proxy;
    }
    if path_and_query.starts_with(ACME_PREFIX) {
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
    fn strip_port_leaves_bare_hosts() {
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("example.com:80"), "example.com");
    }
}
