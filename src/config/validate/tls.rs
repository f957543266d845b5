//! Validation of the https listener's TLS section (certificate files, SNI names, ACME,
//! HSTS) and of `run_as`. Files are checked to be readable PEM here; that each key
//! matches its certificate is checked when they are loaded (`edgepin check`, start,
//! reload), by `tls`.

use super::*;

/// HSTS preload lists require at least a year.
const PRELOAD_MIN_AGE: Duration = Duration::from_secs(31_536_000);

impl Validator<'_> {
    pub(super) fn tls(
        &mut self,
        t: Option<&Spanned<file::TlsFile>>,
        listen: &Listen,
        l: &Spanned<file::ListenFile>,
    ) -> Option<Tls> {
        let Some(t) = t else {
            if let Some(https) = &l.value.https {
                self.err(
                    https.referenced,
                    "listen.https needs a `tls` section with `cert` and `key`, `certificates` or `acme`",
                );
            }
            return None;
        };
        if listen.https.is_none() && l.value.https.is_none() {
            self.err(
                t.referenced,
                "`tls` is set but there is no `listen.https` listener to use it",
            );
        }
        let tf = &t.value;
        let mut certificates = Vec::new();
        let mut marked = None;
        match (&tf.cert, &tf.key) {
            (Some(cert), Some(key)) => certificates.push(self.cert_files(cert, key, None)),
            (Some(cert), None) => self.err(cert.referenced, "tls.cert needs tls.key"),
            (None, Some(key)) => self.err(key.referenced, "tls.key needs tls.cert"),
            (None, None) => {}
        }
        if let Some(list) = &tf.certificates {
            if list.value.is_empty() {
                self.err(list.referenced, "tls.certificates is empty");
            }
            for c in &list.value {
                if c.value.default.as_ref().is_some_and(|d| d.value) {
                    if marked.is_some() {
                        self.err(c.referenced, "only one certificate may be `default: true`");
                    }
                    marked = Some(certificates.len());
                }
                let files = self.cert_files(&c.value.cert, &c.value.key, c.value.names.as_deref());
                certificates.push(files);
            }
        }
        let acme = tf.acme.as_ref().map(|a| self.acme(a, l));
        if certificates.is_empty() && acme.is_none() && tf.cert.is_none() && tf.key.is_none() {
            self.err(
                t.referenced,
                "tls needs a certificate: `cert` and `key`, `certificates`, or `acme`",
            );
        }
        let default = marked.or((!certificates.is_empty()).then_some(0));
        let watch = tf.watch.as_ref().and_then(|w| self.check(w, |s| parse_duration(s)));
        let hsts = tf.hsts.as_ref().and_then(|h| self.hsts(h));
        Some(Tls {
            certificates,
            default,
            acme,
            h2: tf.h2.as_ref().map(|h| h.value).unwrap_or(true),
            watch,
            hsts,
            pos: pos(t.referenced),
        })
    }

    fn cert_files(&mut self, cert: &Str, key: &Str, names: Option<&[Str]>) -> CertFiles {
        let cert_path = self.pem_file(cert, PemKind::Certificate);
        let key_path = self.pem_file(key, PemKind::PrivateKey);
        let names = names
            .unwrap_or_default()
            .iter()
            .filter_map(|n| self.check(n, |n| check_sni_name(n, true)))
            .collect();
        CertFiles {
            cert: cert_path.unwrap_or_default(),
            key: key_path.unwrap_or_default(),
            names,
            pos: pos(cert.referenced),
        }
    }

    fn acme(&mut self, a: &Spanned<file::TlsAcmeFile>, l: &Spanned<file::ListenFile>) -> Acme {
        let af = &a.value;
        if af.domains.value.is_empty() {
            self.err(af.domains.referenced, "tls.acme.domains is empty");
        }
        let domains: Vec<String> = af
            .domains
            .value
            .iter()
            .filter_map(|d| self.check(d, |d| check_sni_name(d, false)))
            .collect();
        let email = af.email.as_ref().and_then(|e| {
            self.check(e, |e| {
                let ok = e.contains('@') && !e.contains(char::is_whitespace) && !e.starts_with("mailto:");
                ok.then(|| e.clone())
                    .ok_or_else(|| format!("tls.acme.email {e:?} is not an email address"))
            })
        });
        let directory = self
            .check(&af.directory, |d| {
                if d.starts_with("https://") && d.len() > "https://".len() {
                    Ok(d.clone())
                } else {
                    Err(format!("tls.acme.directory {d:?} must be an https:// URL"))
                }
            })
            .unwrap_or_default();
        let ca = af.ca.as_ref().and_then(|c| self.pem_file(c, PemKind::Certificate));
        let storage = self.base.join(&af.storage.value);
        let challenge = match &af.challenge {
            Some(c) => self
                .check(c, |c| match c.as_str() {
                    "http-01" => Ok(AcmeChallenge::Http01),
                    "tls-alpn-01" => Ok(AcmeChallenge::TlsAlpn01),
                    other => Err(format!(
                        "unknown ACME challenge {other:?} (known: http-01, tls-alpn-01)"
                    )),
                })
                .unwrap_or(AcmeChallenge::Http01),
            None if l.value.http.is_some() => AcmeChallenge::Http01,
            None => AcmeChallenge::TlsAlpn01,
        };
        if challenge == AcmeChallenge::Http01 && l.value.http.is_none() {
            let at = af.challenge.as_ref().map_or(a.referenced, |c| c.referenced);
            self.err(at, "the http-01 challenge needs a `listen.http` listener (port 80)");
        }
        Acme {
            domains,
            email,
            directory,
            ca,
            storage,
            challenge,
            pos: pos(a.referenced),
        }
    }

    fn hsts(&mut self, h: &Spanned<file::HstsFile>) -> Option<Hsts> {
        let max_age = self.check(&h.value.max_age, |s| parse_duration(s))?;
        let include_subdomains = h.value.include_subdomains.as_ref().is_some_and(|b| b.value);
        let preload = h.value.preload.as_ref().is_some_and(|b| b.value);
        if preload && (!include_subdomains || max_age < PRELOAD_MIN_AGE) {
            let at = h.value.preload.as_ref().map_or(h.referenced, |p| p.referenced);
            self.err(
                at,
                "tls.hsts.preload needs include_subdomains: true and max_age of at least 365d",
            );
        }
        let header = http::HeaderValue::from_str(&Hsts::render(max_age, include_subdomains, preload)).ok()?;
        Some(Hsts {
            max_age,
            include_subdomains,
            preload,
            header,
        })
    }

    pub(super) fn run_as(&mut self, r: &Spanned<file::RunAsFile>) -> Option<RunAs> {
        let user = self.check(&r.value.user, |u| {
            nix::unistd::User::from_name(u)
                .map_err(|e| format!("cannot look up user {u:?}: {e}"))?
                .ok_or_else(|| format!("run_as.user {u:?} does not exist"))
        })?;
        let (group, gid) = match &r.value.group {
            None => (user.name.clone(), user.gid.as_raw()),
            Some(g) => self.check(g, |g| {
                let found = nix::unistd::Group::from_name(g)
                    .map_err(|e| format!("cannot look up group {g:?}: {e}"))?
                    .ok_or_else(|| format!("run_as.group {g:?} does not exist"))?;
                Ok((found.name, found.gid.as_raw()))
            })?,
        };
        let group = match &r.value.group {
            Some(_) => group,
            None => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .map_or(gid.to_string(), |g| g.name),
        };
        if user.uid.is_root() {
            self.err(r.value.user.referenced, "run_as.user must not be root");
        }
        Some(RunAs {
            user: user.name,
            group,
            uid: user.uid.as_raw(),
            gid,
            pos: pos(r.referenced),
        })
    }
}

/// A name a certificate serves: a DNS name, lowercase, or (when `wildcard`) `*.` and a
/// DNS name (one label).
fn check_sni_name(n: &str, wildcard: bool) -> Result<String, String> {
    let rest = n.strip_prefix("*.").filter(|_| wildcard).unwrap_or(n);
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(n.to_ascii_lowercase())
    } else if n.contains('*') && !wildcard {
        Err(format!(
            "{n:?}: ACME wildcard names need the DNS-01 challenge, which edgepin does not answer"
        ))
    } else {
        Err(format!(
            "{n:?} must be a DNS name (or `*.` and a DNS name), without port or scheme"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_and_validate;
    use super::*;

    fn check(text: &str) -> Result<Config, Vec<String>> {
        parse_and_validate(Path::new("t.yaml"), text, &|_| None)
            .map_err(|errs| errs.iter().map(ToString::to_string).collect())
    }

    fn head(tls: &str) -> String {
        static CERTS: std::sync::OnceLock<(tempfile::TempDir, crate::certs::DevCerts)> = std::sync::OnceLock::new();
        let (_, certs) = CERTS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let certs = crate::certs::generate(dir.path()).unwrap();
            (dir, certs)
        });
        let tls = tls
            .replace("CERT", &certs.cert.display().to_string())
            .replace("KEY", &certs.key.display().to_string());
        format!(
            "listen: {{ https: 127.0.0.1:8443, http: 127.0.0.1:8080 }}\ntls: {tls}\nroutes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [a] }}\nservers:\n  a: {{ address: 127.0.0.1:3001 }}\n"
        )
    }

    #[test]
    fn single_certificate_is_the_default_and_a_marked_one_wins() {
        let c = check(&head("{ cert: CERT, key: KEY }")).unwrap();
        let t = c.tls.unwrap();
        assert_eq!((t.certificates.len(), t.default), (1, Some(0)));
        let c = check(&head(
            "{ cert: CERT, key: KEY, certificates: [{ cert: CERT, key: KEY, names: [\"*.Example.com\"], default: true }] }",
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.default, Some(1));
        assert_eq!(t.certificates[1].names, vec!["*.example.com"]);
        let errs = check(&head(
            "{ certificates: [{ cert: CERT, key: KEY, default: true }, { cert: CERT, key: KEY, default: true }] }",
        ))
        .unwrap_err();
        assert!(errs[0].contains("only one certificate"), "{errs:?}");
        let errs = check(&head("{ cert: CERT }")).unwrap_err();
        assert!(errs[0].ends_with("tls.cert needs tls.key"), "{errs:?}");
        let errs = check(&head("{ h2: true }")).unwrap_err();
        assert!(errs[0].contains("tls needs a certificate"), "{errs:?}");
    }

    #[test]
    fn acme_rules() {
        let ok = check(&head(
            "{ acme: { domains: [a.example, B.example], directory: \"https://acme.test/dir\", storage: acme } }",
        ))
        .unwrap();
        let a = ok.tls.unwrap().acme.unwrap();
        assert_eq!(a.domains, vec!["a.example", "b.example"]);
        assert_eq!(a.challenge, AcmeChallenge::Http01, "http listener: http-01");
        assert_eq!(a.storage, Path::new("acme"));
        let errs = check(&head(
            "{ acme: { domains: [\"*.example\"], directory: \"http://acme.test\", storage: s, challenge: dns-01, email: nobody } }",
        ))
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("need the DNS-01 challenge")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("must be an https:// URL")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("unknown ACME challenge")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("not an email address")), "{errs:?}");
        let text = head("{ acme: { domains: [a.example], directory: \"https://x\", storage: s } }")
            + "acme: { backend: api }\n";
        let errs = check(&text).unwrap_err();
        assert!(errs[0].contains("keep one"), "{errs:?}");
    }

    #[test]
    fn hsts_value_and_preload_rules() {
        let c = check(&head(
            "{ cert: CERT, key: KEY, hsts: { max_age: 365d, include_subdomains: true, preload: true } }",
        ))
        .unwrap();
        let h = c.tls.unwrap().hsts.unwrap();
        assert_eq!(h.value(), "max-age=31536000; includeSubDomains; preload");
        let errs = check(&head("{ cert: CERT, key: KEY, hsts: { max_age: 1d, preload: true } }")).unwrap_err();
        assert!(errs[0].contains("preload needs include_subdomains"), "{errs:?}");
    }

    #[test]
    fn run_as_resolves_the_user_and_its_group() {
        let text = head("{ cert: CERT, key: KEY }") + "run_as: { user: nobody }\n";
        let r = check(&text).unwrap().run_as.unwrap();
        assert_eq!((r.uid, r.user.as_str()), (65534, "nobody"));
        let errs = check(&(head("{ cert: CERT, key: KEY }") + "run_as: { user: no-such-user-x }\n")).unwrap_err();
        assert!(errs[0].contains("does not exist"), "{errs:?}");
        let errs = check(&(head("{ cert: CERT, key: KEY }") + "run_as: { user: root }\n")).unwrap_err();
        assert!(errs[0].contains("must not be root"), "{errs:?}");
    }
}
