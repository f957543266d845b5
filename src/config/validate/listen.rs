//! Validation of the edge itself: listeners, timeouts and limits (TLS: `tls`).

use super::*;

impl Validator<'_> {
    pub(super) fn listen(&mut self, l: &Spanned<file::ListenFile>) -> Listen {
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        let mut addr = |v: &mut Self, value: &Option<Str>, what: &'static str| {
            let s = value.as_ref()?;
            let a = v.check(s, |s| parse_listen_addr(s))?;
            if let Some((_, other)) = seen.iter().find(|(o, _)| *o == a) {
                v.err(
                    s.referenced,
                    format!("listen.{what} {a} is already used by listen.{other}"),
                );
            }
            seen.push((a, what));
            Some(a)
        };
        let https = addr(self, &l.value.https, "https");
        let http = addr(self, &l.value.http, "http");
        let stats = addr(self, &l.value.stats, "stats");
        if l.value.https.is_none() && l.value.http.is_none() {
            self.err(l.referenced, "listen needs at least one of `https` or `http`");
        }
        let redirect = match &l.value.redirect {
            Some(r) if r.value && l.value.https.is_none() => {
                self.err(
                    r.referenced,
                    "listen.redirect: true needs an `https` listener to redirect to",
                );
                false
            }
            Some(r) => r.value,
            None => l.value.https.is_some(),
        };
        let redirect_port = match &l.value.redirect_port {
            Some(p) if p.value == 0 => {
                self.err(p.referenced, "listen.redirect_port must not be 0");
                443
            }
            Some(p) => p.value,
            None => https.map(|a| a.port()).unwrap_or(443),
        };
        Listen {
            https,
            http,
            stats,
            redirect,
            redirect_port,
            proxy_protocol: l.value.proxy_protocol.as_ref().is_some_and(|p| p.value),
        }
    }

    pub(super) fn pem_file(&mut self, value: &Str, kind: PemKind) -> Option<PathBuf> {
        let path = self.base.join(&value.value);
        self.check(value, |_| check_pem(&path, kind)).map(|()| path)
    }

    pub(super) fn timeouts(&mut self, t: Option<&TimeoutsFile>, base: Timeouts) -> Timeouts {
        let Some(t) = t else { return base };
        Timeouts {
            connect: self.duration(&t.connect, base.connect),
            client: self.duration(&t.client, base.client),
            server: self.duration(&t.server, base.server),
            tunnel: self.duration(&t.tunnel, base.tunnel),
            keepalive: self.duration(&t.keepalive, base.keepalive),
            queue: self.duration(&t.queue, base.queue),
            header: self.duration(&t.header, base.header),
            handshake: self.duration(&t.handshake, base.handshake),
        }
    }

    /// A backend may override the timeouts of its server side; the client side ones
    /// apply before a request is routed, so they are global only.
    pub(super) fn backend_timeouts(&mut self, backend: &str, t: Option<&TimeoutsFile>, base: &Timeouts) -> Timeouts {
        if let Some(t) = t {
            for (key, value) in [
                ("client", &t.client),
                ("keepalive", &t.keepalive),
                ("header", &t.header),
                ("handshake", &t.handshake),
            ] {
                if let Some(v) = value {
                    self.err(
                        v.referenced,
                        format!("timeouts.{key} applies before routing: set it in the top-level timeouts, not in backend {backend:?}"),
                    );
                }
            }
        }
        self.timeouts(t, *base)
    }

    pub(super) fn limits(&mut self, l: Option<&file::LimitsFile>) -> Limits {
        let d = Limits::default();
        let Some(l) = l else { return d };
        Limits {
            max_header_bytes: self.count(
                &l.max_header_bytes,
                "limits.max_header_bytes",
                (1024, 1 << 20),
                d.max_header_bytes as u64,
            ) as usize,
            max_body_bytes: self.count(
                &l.max_body_bytes,
                "limits.max_body_bytes",
                (0, u64::MAX),
                d.max_body_bytes,
            ),
            max_connections: self.count(
                &l.max_connections,
                "limits.max_connections",
                (1, 1_000_000),
                d.max_connections as u64,
            ) as usize,
            h2_streams_per_connection: self.count(
                &l.h2_streams_per_connection,
                "limits.h2_streams_per_connection",
                (1, u64::from(crate::proxy::H2_LIMITS.max_concurrent_streams)),
                d.h2_streams_per_connection as u64,
            ) as usize,
            h2_streams_per_client: self.count(
                &l.h2_streams_per_client,
                "limits.h2_streams_per_client",
                (1, 1_000_000),
                d.h2_streams_per_client as u64,
            ) as usize,
        }
    }
}
