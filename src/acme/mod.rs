//! Automatic certificates over ACME (RFC 8555, with `instant-acme`): the account and
//! the certificate of `tls.acme` are obtained, stored in `tls.acme.storage` and renewed
//! at two-thirds of their lifetime by one background task (`manager`); the challenges
//! are answered by edgepin's own listeners (`challenges`: HTTP-01 on the http listener,
//! TLS-ALPN-01 in the https listener's certificate resolver).
//!
//! Until a certificate is issued the https listener serves a self-signed stand-in for
//! the domains; a failed renewal keeps the current certificate and retries with jittered
//! backoff. This module never accepts connections; it only fills the answers the
//! listeners read (`AcmeState`) and swaps the certificate into `tls::CertStore`.

mod challenges;
mod manager;
mod storage;

pub use challenges::tls_alpn01_certificate;
pub use manager::{Manager, renewal_due};
pub use storage::Storage;

/// The state shared with the listeners lives in `tls` (which must not import `acme`).
pub use crate::tls::{AcmeState, Challenges, RenewalStatus};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Acme, Config};
use crate::tls::{CertSet, CertStore, Certificate, TlsError, certified_key_from_pem};

/// Path prefix of HTTP-01 challenge requests: routing owns it.
pub use crate::route::ACME_PREFIX as HTTP01_PATH;

/// How long the self-signed stand-in served before the first issuance is valid.
const STAND_IN_VALIDITY: time::Duration = time::Duration::days(7);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME server: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME storage {path}: {source}")]
    Storage { path: PathBuf, source: std::io::Error },
    #[error("challenge: {0}")]
    Challenge(String),
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("order: {0}")]
    Order(String),
    #[error("no answer from the ACME server within {0:?}")]
    Timeout(Duration),
}

/// The answer to an HTTP-01 request for `path` (`/.well-known/acme-challenge/TOKEN`):
/// the key authorization while that challenge is open, else `None` (answer 404).
pub fn http01_answer(certs: Option<&CertStore>, path: &str) -> Option<String> {
    let token = path.strip_prefix(HTTP01_PATH)?;
    let token = token.split(['?', '#']).next()?;
    certs?.acme()?.challenges.http01(token)
}

/// The certificate store of the https listener, loaded from the config's files and the
/// ACME storage (`initial_certificate`) when `tls.acme` is set; `None` without an https
/// listener. Here, not in `tls`, so that `tls` never imports `acme`.
pub fn listener_certs(config: &Config) -> Result<Option<Arc<CertStore>>, TlsError> {
    let (Some(t), Some(_)) = (&config.tls, config.listen.https) else {
        return Ok(None);
    };
    let store = CertStore::new(CertSet::load(t)?, t.acme.is_some());
    if let (Some(acme), Some(state)) = (&t.acme, store.acme()) {
        let cert = initial_certificate(acme, state).map_err(|e| TlsError::Acme(e.to_string()))?;
        store.store_acme(cert);
    }
    Ok(Some(store))
}

/// The ACME certificate to serve at start: the stored one when it covers the configured
/// domains, else a self-signed stand-in (and `issued` false, so it is ordered at once).
pub fn initial_certificate(acme: &Acme, state: &AcmeState) -> Result<Arc<Certificate>, AcmeError> {
    let storage = Storage::new(&acme.storage, &acme.domains[0]);
    if let Some((chain, key)) = storage.certificate() {
        let path = storage.cert_path().display().to_string();
        match certified_key_from_pem(&chain, &key, &path, &storage.key_path().display().to_string())
            .and_then(|ck| Certificate::new(ck, acme.domains.clone(), path.clone()))
        {
            Ok(c) if covers(&c, &acme.domains) => {
                state.update(|s| s.issued = true);
                return Ok(Arc::new(c));
            }
            Ok(_) => {
                tracing::info!(path = %path, "stored ACME certificate does not cover tls.acme.domains: ordering a new one")
            }
            Err(e) => tracing::warn!(error = %e, "stored ACME certificate unusable: ordering a new one"),
        }
    }
    let (cert, key) = crate::certs::self_signed_pem(&acme.domains, STAND_IN_VALIDITY)
        .map_err(|e| AcmeError::Challenge(e.to_string()))?;
    let ck = certified_key_from_pem(cert.as_bytes(), key.as_bytes(), "stand-in", "stand-in")?;
    Ok(Arc::new(Certificate::new(
        ck,
        Vec::new(),
        "acme (self-signed stand-in until issued)".into(),
    )?))
}

/// Whether `c` names every one of `domains`.
fn covers(c: &Certificate, domains: &[String]) -> bool {
    domains.iter().all(|d| c.info.names.iter().any(|n| n == d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertSet;

    #[test]
    fn http01_answers_only_open_tokens_under_the_prefix() {
        let store = CertStore::new(CertSet::default(), true);
        store.acme().unwrap().challenges.add_http01("abc", "abc.thumb");
        let answer = |p: &str| http01_answer(Some(&store), p);
        assert_eq!(answer("/.well-known/acme-challenge/abc").as_deref(), Some("abc.thumb"));
        assert_eq!(
            answer("/.well-known/acme-challenge/abc?x=1").as_deref(),
            Some("abc.thumb")
        );
        assert_eq!(answer("/.well-known/acme-challenge/abd"), None);
        assert_eq!(answer("/abc"), None);
        let no_acme = CertStore::new(CertSet::default(), false);
        assert_eq!(http01_answer(Some(&no_acme), "/.well-known/acme-challenge/abc"), None);
    }

    #[test]
    fn initial_certificate_is_the_stored_one_when_it_covers_the_domains() {
        let dir = tempfile::tempdir().unwrap();
        let acme = Acme {
            domains: vec!["a.test".into()],
            email: None,
            directory: "https://acme.test/dir".into(),
            ca: None,
            storage: dir.path().to_path_buf(),
            challenge: crate::config::AcmeChallenge::Http01,
            pos: Default::default(),
        };
        let state = AcmeState::default();
        let c = initial_certificate(&acme, &state).unwrap();
        assert!(!state.status().issued);
        assert_eq!(c.info.names, vec!["a.test"]);
        let (cert, key) = crate::certs::self_signed_pem(&["a.test".to_string()], time::Duration::days(1)).unwrap();
        Storage::new(dir.path(), "a.test")
            .save_certificate(&cert, &key)
            .unwrap();
        let c = initial_certificate(&acme, &state).unwrap();
        assert!(state.status().issued);
        assert!(c.source.ends_with("a.test.crt"), "{}", c.source);
    }
}
