//! The https listener's certificates, chosen by SNI: a [`CertSet`] (immutable, built
//! whole) inside a [`CertStore`] (the rustls resolver, swapped with one store).
//!
//! Choice: an exact name of any certificate wins; then a wildcard `*.example.com`
//! matching one label (`a.example.com`, not `a.b.example.com` nor `example.com`); then
//! the default (the one marked `default`, else the first file, else the ACME one). A
//! handshake offering only ALPN `acme-tls/1` gets the TLS-ALPN-01 challenge certificate
//! for its name and nothing else. File certificates and the ACME one are replaced
//! separately (reload/watch vs renewal), each keeping the other.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{ACME_TLS_ALPN, AcmeState, CertInfo, TlsError, load_certified_key};
use crate::config::Tls;

/// One certificate served, with what the stats page shows about it.
#[derive(Debug)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// Names it is chosen for (lowercase; `*.` wildcards).
    pub names: Vec<String>,
    pub info: CertInfo,
    /// Where it came from: the certificate file, or `acme`.
    pub source: String,
}

impl Certificate {
    /// `names` empty: the certificate's own DNS names.
    pub fn new(key: CertifiedKey, names: Vec<String>, source: String) -> Result<Certificate, TlsError> {
        let info = CertInfo::of(&key.cert[0], &source)?;
        let names = if names.is_empty() { info.names.clone() } else { names };
        Ok(Certificate {
            key: Arc::new(key),
            names,
            info,
            source,
        })
    }
}

/// Every certificate of the listener at one moment.
#[derive(Debug, Default)]
pub struct CertSet {
    files: Vec<Arc<Certificate>>,
    default: Option<usize>,
    acme: Option<Arc<Certificate>>,
    /// Name (exact or `*.` pattern) → certificate; the first listed wins.
    by_name: HashMap<String, Arc<Certificate>>,
}

impl CertSet {
    /// Load the certificate files of `tls` (no ACME certificate).
    pub fn load(tls: &Tls) -> Result<CertSet, TlsError> {
        let mut files = Vec::with_capacity(tls.certificates.len());
        for f in &tls.certificates {
            let key = load_certified_key(&f.cert, &f.key)?;
            files.push(Arc::new(Certificate::new(
                key,
                f.names.clone(),
                f.cert.display().to_string(),
            )?));
        }
        Ok(CertSet::build(files, tls.default, None))
    }

    fn build(files: Vec<Arc<Certificate>>, default: Option<usize>, acme: Option<Arc<Certificate>>) -> CertSet {
        let mut by_name = HashMap::new();
        for c in files.iter().chain(acme.iter()) {
            for n in &c.names {
                by_name.entry(n.clone()).or_insert_with(|| Arc::clone(c));
            }
        }
        CertSet {
            files,
            default,
            acme,
            by_name,
        }
    }

    /// The same file certificates with `acme` as the ACME one.
    pub fn with_acme(&self, acme: Option<Arc<Certificate>>) -> CertSet {
        CertSet::build(self.files.clone(), self.default, acme)
    }

    /// The file certificates of `files`, keeping this set's ACME certificate.
    pub fn with_files(&self, files: CertSet) -> CertSet {
        CertSet::build(files.files, files.default, self.acme.clone())
    }

    pub fn acme(&self) -> Option<&Arc<Certificate>> {
        self.acme.as_ref()
    }

    /// Every certificate: the files in order, then the ACME one.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        self.files.iter().chain(self.acme.iter())
    }

    /// The certificate for a ClientHello naming `sni` (lowercase or not), or the default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<&Arc<Certificate>> {
        if let Some(name) = sni {
            let name = lowercase(name);
            if let Some(c) = self.by_name.get(name.as_ref()) {
                return Some(c);
            }
            if let Some(c) = wildcard_of(&name).and_then(|w| self.by_name.get(&w)) {
                return Some(c);
            }
        }
        self.default
            .and_then(|i| self.files.get(i))
            .or(self.acme.as_ref())
            .or(self.files.first())
    }
}

/// `a.example.com` → `*.example.com` (the only wildcard that matches it).
pub fn wildcard_of(name: &str) -> Option<String> {
    let (_, rest) = name.split_once('.')?;
    rest.contains('.').then(|| format!("*.{rest}"))
}

fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The resolver of the https listener: the current [`CertSet`], swapped whole, and the
/// ACME challenge certificates when ACME is configured; beside them the session ticket
/// keys (the listener's other secret, carried across an upgrade).
#[derive(Debug)]
pub struct CertStore {
    set: ArcSwap<CertSet>,
    acme: Option<Arc<AcmeState>>,
    pub tickets: Arc<super::TicketKeys>,
}

impl CertStore {
    pub fn new(set: CertSet, acme: bool) -> Arc<CertStore> {
        Arc::new(CertStore {
            set: ArcSwap::from_pointee(set),
            acme: acme.then(|| Arc::new(AcmeState::default())),
            tickets: Arc::default(),
        })
    }

    /// The certificates served now.
    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }

    /// Replace the file certificates (reload, rotation); the ACME one stays.
    pub fn store_files(&self, files: CertSet) {
        self.set
            .rcu(|old| old.with_files(CertSet::build(files.files.clone(), files.default, None)));
    }

    /// Replace the ACME certificate (issue, renewal); the file ones stay.
    pub fn store_acme(&self, cert: Arc<Certificate>) {
        self.set.rcu(|old| old.with_acme(Some(Arc::clone(&cert))));
    }

    /// The ACME challenge answers and renewal status, when `tls.acme` is configured.
    pub fn acme(&self) -> Option<&Arc<AcmeState>> {
        self.acme.as_ref()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if let Some(acme) = &self.acme
            && hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            // A validation handshake gets the challenge certificate or nothing.
            return acme.challenges.tls_alpn01(&lowercase(sni?));
        }
        self.set.load().resolve(sni).map(|c| Arc::clone(&c.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn cert(dir: &std::path::Path, names: &[&str], pattern: &[&str]) -> Arc<Certificate> {
        let files = certs::issue_self_signed(dir, names).unwrap();
        let key = load_certified_key(&files.0, &files.1).unwrap();
        let pattern = pattern.iter().map(|s| s.to_string()).collect();
        Arc::new(Certificate::new(key, pattern, files.0.display().to_string()).unwrap())
    }

    #[test]
    fn exact_then_one_label_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = cert(&dir.path().join("a"), &["a.test"], &[]);
        let wild = cert(&dir.path().join("w"), &["*.b.test"], &[]);
        let exact_b = cert(&dir.path().join("x"), &["x.b.test"], &[]);
        let set = CertSet::build(vec![a.clone(), wild.clone(), exact_b.clone()], Some(0), None);
        let pick = |sni: Option<&str>| set.resolve(sni).map(|c| c.names[0].clone());
        assert_eq!(pick(Some("a.test")).as_deref(), Some("a.test"));
        assert_eq!(pick(Some("A.Test")).as_deref(), Some("a.test"), "case-insensitive");
        assert_eq!(pick(Some("y.b.test")).as_deref(), Some("*.b.test"));
        assert_eq!(
            pick(Some("x.b.test")).as_deref(),
            Some("x.b.test"),
            "exact beats wildcard"
        );
        assert_eq!(pick(Some("z.y.b.test")).as_deref(), Some("a.test"), "one label only");
        assert_eq!(pick(Some("b.test")).as_deref(), Some("a.test"));
        assert_eq!(pick(None).as_deref(), Some("a.test"), "no SNI: the default");

        let set = CertSet::build(vec![a.clone(), wild.clone()], Some(1), None);
        assert_eq!(set.resolve(Some("other.test")).unwrap().names[0], "*.b.test");
    }

    #[test]
    fn acme_and_files_are_replaced_separately() {
        let dir = tempfile::tempdir().unwrap();
        let a = cert(&dir.path().join("a"), &["a.test"], &[]);
        let acme = cert(&dir.path().join("acme"), &["acme.test"], &[]);
        let store = CertStore::new(CertSet::build(vec![a.clone()], Some(0), None), true);
        store.store_acme(Arc::clone(&acme));
        let set = store.current();
        assert!(Arc::ptr_eq(set.resolve(Some("acme.test")).unwrap(), &acme));
        assert!(Arc::ptr_eq(set.resolve(Some("none.test")).unwrap(), &a));
        store.store_files(CertSet::default());
        let set = store.current();
        assert!(
            Arc::ptr_eq(set.resolve(Some("none.test")).unwrap(), &acme),
            "without files the ACME certificate is the default"
        );
        assert_eq!(set.all().count(), 1);
    }

    #[test]
    fn wildcard_of_needs_two_more_labels() {
        assert_eq!(wildcard_of("a.example.com").as_deref(), Some("*.example.com"));
        assert_eq!(wildcard_of("example.com"), None);
        assert_eq!(wildcard_of("localhost"), None);
    }
}
