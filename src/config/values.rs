//! Parsers for single values of proxy.yaml: durations, addresses, host names, cookie
//! names, status ranges, networks, PEM files and secret files. Each returns the checked
//! value or a message naming the offending value; `validate` adds the position.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::Network;

/// The longest duration any setting takes. Deadlines are computed as now + duration,
/// which must not overflow; nothing here needs more than a year.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parse a duration such as `2s`, `500ms`, `1m30s` or `1h` (more than zero, at most a year).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?} ({e}); use e.g. 500ms, 2s, 1m, 1h"))?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(format!("duration {text:?} is longer than a year"));
    }
    Ok(d)
}

pub(super) fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("listen address {s:?} must be IP:PORT, e.g. 0.0.0.0:443 or [::]:443"))
}

/// Server addresses may name a host; it is resolved once, when the config is loaded.
pub(super) fn resolve_server_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return check_port(a, s);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("server address {s:?} must be HOST:PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("server address {s:?} must be HOST:PORT"));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("server address {s:?} does not resolve: {e}"))?;
    let first = addrs
        .next()
        .ok_or_else(|| format!("server address {s:?} resolves to nothing"))?;
    check_port(first, s)
}

pub(super) fn check_port(a: SocketAddr, s: &str) -> Result<SocketAddr, String> {
    if a.port() == 0 {
        Err(format!("server address {s:?} needs a port other than 0"))
    } else {
        Ok(a)
    }
}

pub(super) fn check_host(h: &str) -> Result<String, String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*'));
    if ok {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(format!("host {h:?} must be a DNS name without port or scheme"))
    }
}

/// A `stats.hosts` entry: a DNS name or an IP address, without port or scheme. Stored
/// lowercase without a trailing dot; IPv6 without brackets, in its canonical form.
pub(super) fn check_stats_host(h: &str) -> Result<String, String> {
    let bad = || {
        format!("stats host {h:?} must be a DNS name or an IP address, without port or scheme (e.g. stats.example.com)")
    };
    let inner = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(h);
    if let Ok(ip) = inner.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

/// RFC 6265 cookie-name: an HTTP token.
pub(super) fn check_cookie_name(c: &str) -> Result<String, String> {
    let ok = !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(c.to_string())
    } else {
        Err(format!(
            "cookie name {c:?} must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)"
        ))
    }
}

pub(super) fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("expect {s:?} must be a status or a range like 200-399");
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if (100..=599).contains(&lo) && (lo..=599).contains(&hi) {
        Ok((lo, hi))
    } else {
        Err(bad())
    }
}

pub(super) fn parse_network(s: &str) -> Result<Network, String> {
    let bad = || format!("network {s:?} must be an IP or CIDR, e.g. 10.0.0.0/8");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok(Network { addr, prefix })
}

#[derive(Clone, Copy)]
pub(super) enum PemKind {
    Certificate,
    PrivateKey,
}

pub(super) fn check_pem(path: &Path, kind: PemKind) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut reader = &bytes[..];
    let found = match kind {
        PemKind::Certificate => rustls_pemfile::certs(&mut reader).any(|c| c.is_ok()),
        PemKind::PrivateKey => matches!(rustls_pemfile::private_key(&mut reader), Ok(Some(_))),
    };
    if found {
        Ok(())
    } else {
        let what = match kind {
            PemKind::Certificate => "a PEM certificate",
            PemKind::PrivateKey => "a PEM private key",
        };
        Err(format!("{} holds no {what}", path.display()))
    }
}

pub(super) fn read_secret_file(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_addresses() {
        let n = parse_network("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(parse_network("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(parse_network("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            n.contains("::ffff:10.1.2.3".parse().unwrap()),
            "an IPv4 peer on a dual-stack listener"
        );
        assert!(parse_network("10.0.0.0/33").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("10000000000000000000s").is_err(),
            "would overflow deadlines"
        );
        assert!(parse_duration("400d").is_err());
        assert!(parse_duration("365d").is_ok());
    }
}
