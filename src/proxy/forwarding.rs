//! Who sent a request, as the server is told, for every engine: the client address
//! ([`client_ip`]: the peer, or what a trusted proxy's X-Forwarded-For names), which
//! client-sent fields go on ([`passes`]), and the forwarding fields edgepin writes
//! ([`write_fields`]): one plan of (name, value) pairs that each engine writes in its own
//! way (HTTP/1 straight into the upstream head, pingora's HTTP/2 into its header map).
//!
//! From a peer in `trusted_proxies`, X-Forwarded-For and `Forwarded` are extended with the
//! peer and its X-Forwarded-Proto/-Host kept; from anyone else every client-sent
//! forwarding field (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) and every field of
//! `strip_from_untrusted` (X-Client-IP, True-Client-IP, CF-Connecting-IP,
//! X-Cluster-Client-IP, Fastly-Client-IP, X-Original-URL, X-Rewrite-URL by default) is
//! removed and edgepin's own are set. `X-Real-IP` is always edgepin's: the client it
//! decided on. Names with `_` never pass (nginx's default): a server must never read one
//! as its `-` twin.

use std::net::IpAddr;

use crate::config::{HeaderSet, Network};

/// Who sent the request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The TCP peer (after a PROXY header).
    pub peer: Option<IpAddr>,
    /// The peer as text, formatted once per connection (it is in three fields of every
    /// request).
    pub peer_text: &'a [u8],
    /// The client address edgepin decided on ([`client_ip`]).
    pub client: Option<IpAddr>,
    pub peer_trusted: bool,
    pub tls: bool,
}

/// The forwarding fields the client sent, as the plan reads them (only from a trusted
/// peer).
pub trait Sent {
    /// Every value of `X-Forwarded-For`, in order.
    fn forwarded_for(&self) -> impl Iterator<Item = &[u8]>;
    /// Every value of `Forwarded`, in order.
    fn forwarded(&self) -> impl Iterator<Item = &[u8]>;
    /// It has an `X-Forwarded-Proto`, and an `X-Forwarded-Host`.
    fn has_proto(&self) -> bool;
    fn has_host(&self) -> bool;
}

/// Where the plan's fields go.
pub trait Fields {
    /// One field: `value` appends its value to the buffer it is given.
    fn field(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>));
}

/// The plan's fields, written as HTTP/1 field lines (both engines' upstream heads).
pub struct Lines<'o>(pub &'o mut Vec<u8>);

impl Fields for Lines<'_> {
    fn field(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        value(self.0);
        self.0.extend_from_slice(b"\r\n");
    }
}

/// The client address: the TCP peer, unless the peer is a trusted proxy, then the
/// rightmost X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, xff: Option<&[u8]>, trusted: &[Network]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| Network::any_contains(trusted, ip);
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(list) = xff.and_then(|x| std::str::from_utf8(x).ok()) else {
        return Some(peer);
    };
    for entry in list.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(peer)
}

/// Whether a field the client sent goes on to the server as it is. The forwarding fields
/// the plan writes never do (a trusted peer's are extended by the plan); X-Forwarded-
/// Proto/-Host do from a trusted peer; `strip` applies to everyone else.
pub fn passes(name: &[u8], trusted: bool, strip: &HeaderSet) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        9 if is(b"forwarded") || is(b"x-real-ip") => false,
        15 if is(b"x-forwarded-for") => false,
        16 | 17 if is(b"x-forwarded-host") || is(b"x-forwarded-proto") => trusted,
        _ if name.contains(&b'_') => false,
        _ => trusted || !strip.contains(name),
    }
}

/// Write the forwarding fields for a request whose host is `host` (as received).
pub fn write_fields<S: Sent, F: Fields>(fwd: &Forwarding<'_>, host: Option<&[u8]>, sent: &S, out: &mut F) {
    let trusted = fwd.peer_trusted;
    out.field("x-forwarded-for", |v| {
        let mut first = true;
        if trusted {
            for item in sent.forwarded_for().map(<[u8]>::trim_ascii).filter(|i| !i.is_empty()) {
                if !first {
                    v.extend_from_slice(b", ");
                }
                v.extend_from_slice(item);
                first = false;
            }
        }
        if fwd.peer.is_some() {
            if !first {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(fwd.peer_text);
        }
    });
    match fwd.client {
        Some(client) if Some(client) == fwd.peer => out.field("x-real-ip", |v| v.extend_from_slice(fwd.peer_text)),
        Some(client) => out.field("x-real-ip", |v| {
            use std::io::Write;
            let _ = write!(v, "{client}");
        }),
        None => {}
    }
    let proto: &[u8] = if fwd.tls { b"https" } else { b"http" };
    if !(trusted && sent.has_proto()) {
        out.field("x-forwarded-proto", |v| v.extend_from_slice(proto));
    }
    if let Some(h) = host
        && !(trusted && sent.has_host())
    {
        out.field("x-forwarded-host", |v| v.extend_from_slice(h));
    }
    // Forwarded (RFC 7239): a trusted peer's elements, then this hop's.
    out.field("forwarded", |v| {
        if trusted {
            for item in sent.forwarded().map(<[u8]>::trim_ascii).filter(|i| !i.is_empty()) {
                v.extend_from_slice(item);
                v.extend_from_slice(b", ");
            }
        }
        forwarded_element(v, fwd.peer, fwd.peer_text, proto, host);
    });
}

/// `for=…;proto=…;host=…` for this hop (RFC 7239 §4; IPv6 and hosts with a port quoted).
pub fn forwarded_element(out: &mut Vec<u8>, peer: Option<IpAddr>, peer_text: &[u8], proto: &[u8], host: Option<&[u8]>) {
    match peer {
        Some(IpAddr::V6(_)) => {
            out.extend_from_slice(b"for=\"[");
            out.extend_from_slice(peer_text);
            out.extend_from_slice(b"]\"");
        }
        Some(_) => {
            out.extend_from_slice(b"for=");
            out.extend_from_slice(peer_text);
        }
        None => out.extend_from_slice(b"for=unknown"),
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto);
    // A host value is a token or a quoted string; anything else is left out.
    if let Some(h) =
        host.filter(|h| !h.is_empty() && h.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
    {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h);
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        let (a, p) = s.split_once('/').unwrap();
        Network {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    /// What a client sent, as (name, value) lines.
    struct Lines(Vec<(&'static str, &'static str)>);

    impl Lines {
        fn values(&self, name: &'static str) -> impl Iterator<Item = &[u8]> {
            self.0
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    impl Sent for Lines {
        fn forwarded_for(&self) -> impl Iterator<Item = &[u8]> {
            self.values("x-forwarded-for")
        }
        fn forwarded(&self) -> impl Iterator<Item = &[u8]> {
            self.values("forwarded")
        }
        fn has_proto(&self) -> bool {
            self.values("x-forwarded-proto").next().is_some()
        }
        fn has_host(&self) -> bool {
            self.values("x-forwarded-host").next().is_some()
        }
    }

    /// The plan's fields as `name: value` lines.
    #[derive(Default)]
    struct Written(Vec<String>);

    impl Fields for Written {
        fn field(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
            let mut v = Vec::new();
            value(&mut v);
            self.0.push(format!("{name}: {}", String::from_utf8(v).unwrap()));
        }
    }

    fn plan(fwd: Forwarding<'_>, host: Option<&str>, sent: Lines) -> Vec<String> {
        let mut out = Written::default();
        write_fields(&fwd, host.map(str::as_bytes), &sent, &mut out);
        out.0
    }

    #[test]
    fn xff_is_trusted_only_from_trusted_peers() {
        let peer: IpAddr = "127.0.0.5".parse().unwrap();
        let xff = Some(&b"1.2.3.4, 10.0.0.2"[..]);
        assert_eq!(client_ip(Some(peer), xff, &[]), Some(peer), "not trusted: the peer");
        let trusted = [net("127.0.0.0/8"), net("10.0.0.0/8")];
        assert_eq!(client_ip(Some(peer), xff, &trusted), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(client_ip(Some(peer), Some(b"garbage"), &trusted), Some(peer));
    }

    #[test]
    fn an_untrusted_peer_gets_edgepins_fields_only() {
        let peer = "127.0.0.9".parse().ok();
        let fwd = Forwarding {
            peer,
            peer_text: b"127.0.0.9",
            client: peer,
            peer_trusted: false,
            tls: true,
        };
        let sent = Lines(vec![("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "gopher")]);
        assert_eq!(
            plan(fwd, Some("app.example"), sent),
            [
                "x-forwarded-for: 127.0.0.9",
                "x-real-ip: 127.0.0.9",
                "x-forwarded-proto: https",
                "x-forwarded-host: app.example",
                "forwarded: for=127.0.0.9;proto=https;host=\"app.example\"",
            ]
        );
    }

    #[test]
    fn a_trusted_peer_extends_the_chain_and_keeps_its_proto() {
        let fwd = Forwarding {
            peer: "10.0.0.2".parse().ok(),
            peer_text: b"10.0.0.2",
            client: "1.2.3.4".parse().ok(),
            peer_trusted: true,
            tls: false,
        };
        // A proxy in front that adds a line of its own instead of extending the client's.
        let sent = Lines(vec![
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-forwarded-for", " 1.2.3.4 "),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=1.2.3.4"),
        ]);
        assert_eq!(
            plan(fwd, Some("h"), sent),
            [
                "x-forwarded-for: 6.6.6.6, 1.2.3.4, 10.0.0.2",
                "x-real-ip: 1.2.3.4",
                "x-forwarded-host: h",
                "forwarded: for=1.2.3.4, for=10.0.0.2;proto=http;host=\"h\"",
            ]
        );
        let v6 = Forwarding {
            peer: "::1".parse().ok(),
            peer_text: b"::1",
            client: None,
            peer_trusted: false,
            tls: true,
        };
        assert_eq!(
            plan(v6, None, Lines(vec![])),
            [
                "x-forwarded-for: ::1",
                "x-forwarded-proto: https",
                "forwarded: for=\"[::1]\";proto=https"
            ]
        );
    }

    #[test]
    fn what_passes_depends_on_the_peer_and_the_strip_list() {
        let strip = HeaderSet::new(crate::config::STRIP_FROM_UNTRUSTED.iter().map(|n| n.as_bytes().into()));
        for name in [
            "X-Client-IP",
            "true-client-ip",
            "CF-Connecting-IP",
            "X-Cluster-Client-IP",
            "Fastly-Client-IP",
            "X-Original-URL",
            "x-rewrite-url",
            "X-Forwarded-Host",
            "X-Real-IP",
        ] {
            assert!(!passes(name.as_bytes(), false, &strip), "{name} from an untrusted peer");
        }
        for name in ["X-Client-IP", "X-Original-URL", "X-Forwarded-Proto"] {
            assert!(passes(name.as_bytes(), true, &strip), "{name} from a trusted peer");
        }
        for name in ["X-Real-IP", "Forwarded", "X-Forwarded-For", "X_Client_IP"] {
            assert!(!passes(name.as_bytes(), true, &strip), "{name} is edgepin's or dropped");
        }
        assert!(passes(b"Accept", false, &strip));
        let own = HeaderSet::new([b"X-Secret"[..].into()]);
        assert!(
            passes(b"X-Client-IP", false, &own),
            "a list of one's own replaces the default"
        );
        assert!(!passes(b"x-secret", false, &own));
    }
}
