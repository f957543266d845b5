//! TLS termination: loading certificate chains and keys, what a certificate says about
//! itself (names, issuer, validity), the https listener's rustls config and ALPN list,
//! and the `Strict-Transport-Security` value.
//!
//! The listener's rustls config is built once with a [`CertStore`] resolver (`store`):
//! it picks a certificate by SNI and answers ACME TLS-ALPN-01 handshakes. A reload,
//! a file change or an ACME renewal builds the new certificates first (any error keeps
//! the old ones) and swaps them in; new handshakes use them, open connections keep
//! theirs. HTTP/2 server limits live in `proxy::h2`. This module does not accept connections.

mod challenges;
mod store;
mod tickets;

pub use challenges::{AcmeState, Challenges, RenewalStatus};
pub use store::{CertSet, CertStore, Certificate, wildcard_of};
pub use tickets::{KEY_LIFETIME as TICKET_KEY_LIFETIME, TicketKey, TicketKeys};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use crate::config::{Config, Tls};

/// The ALPN protocol of ACME TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("{key} does not match the certificate in {cert}")]
    Mismatch { cert: String, key: String },
    #[error("{path}: cannot parse the certificate: {reason}")]
    Parse { path: String, reason: String },
    #[error("tls.acme: {0}")]
    Acme(String),
}

/// Load a PEM chain and its private key, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    certified_key_from_pem(
        &read(cert)?,
        &read(key)?,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// [`load_certified_key`] on PEM bytes; `cert_name` and `key_name` name them in errors.
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_name.to_string(),
        });
    }
    let der = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key_name.to_string(),
        })?;
    let signing = any_supported_type(&der).map_err(|e| TlsError::BadKey {
        path: key_name.to_string(),
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert_name.to_string(),
        key: key_name.to_string(),
    })?;
    Ok(ck)
}

/// What a leaf certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names of its subjectAltName (lowercase), or its CN when it has none.
    pub names: Vec<String>,
    /// The issuer's common name (or the whole issuer name).
    pub issuer: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Parse the leaf (first) certificate of a chain; `path` names it in errors.
    pub fn of(leaf: &CertificateDer<'_>, path: &str) -> Result<CertInfo, TlsError> {
        use x509_parser::prelude::*;
        let bad = |reason: String| TlsError::Parse {
            path: path.to_string(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty()
            && let Some(cn) = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
        let issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map_or_else(|| cert.issuer().to_string(), str::to_string);
        let time = |t: &ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(CertInfo {
            names,
            issuer,
            not_before: time(&cert.validity().not_before),
            not_after: time(&cert.validity().not_after),
        })
    }

    /// Time left before it expires (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// Its whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }
}

/// The ALPN protocols the https listener offers, in preference order: `h2` when
/// `tls.h2`, `http/1.1`, and `acme-tls/1` when ACME is configured (a client offering
/// only that gets it and is served the challenge certificate, nothing else).
pub fn alpn_protocols(tls: &Tls) -> Vec<Vec<u8>> {
    let mut alpn = Vec::with_capacity(3);
    if tls.h2 {
        alpn.push(b"h2".to_vec());
    }
    alpn.push(b"http/1.1".to_vec());
    if tls.acme.is_some() {
        alpn.push(ACME_TLS_ALPN.to_vec());
    }
    alpn
}

/// The `Strict-Transport-Security` value for https responses, when `tls.hsts` is set.
pub fn hsts_value(config: &Config) -> Option<http::HeaderValue> {
    config.tls.as_ref()?.hsts.as_ref().map(|h| h.header.clone())
}

/// The rustls config of the https listener: certificates from `store` (the
/// [`CertStore`] in `Shared::cert`, read at each handshake, so swaps apply to new
/// connections), ALPN protocols in preference order ([`alpn_protocols`]). Session
/// resumption by tickets sealed with the store's [`TicketKeys`] (carried across an
/// upgrade) and by a session cache (not carried).
pub fn server_config(store: Arc<CertStore>, alpn: Vec<Vec<u8>>) -> Arc<rustls::ServerConfig> {
    let tickets = Arc::clone(&store.tickets);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = alpn;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = tickets;
    Arc::new(config)
}

/// Sessions remembered for resumption by id (TLS 1.2) and for stateful TLS 1.3 resumption.
const SESSION_CACHE: usize = 20_480;

/// Fingerprint of a file's metadata, to notice certificate rotation by polling.
pub fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_generated_certs_and_rejects_a_mismatch() {
        let dir = std::env::temp_dir().join(format!("edgepin-tls-{}", std::process::id()));
        let a = crate::certs::generate(&dir.join("a")).unwrap();
        let b = crate::certs::generate(&dir.join("b")).unwrap();
        let ck = load_certified_key(&a.cert, &a.key).unwrap();
        assert_eq!(ck.cert.len(), 2, "leaf + CA");
        let err = load_certified_key(&a.cert, &b.key).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        let err = load_certified_key(&a.key, &a.key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn info_reads_names_issuer_and_validity() {
        let dir = std::env::temp_dir().join(format!("edgepin-tls-info-{}", std::process::id()));
        let a = crate::certs::generate(&dir).unwrap();
        let ck = load_certified_key(&a.cert, &a.key).unwrap();
        let info = CertInfo::of(&ck.cert[0], "edge.crt").unwrap();
        assert_eq!(info.names, vec!["localhost"], "IP SANs are not SNI names");
        assert_eq!(info.issuer, "edgepin development CA");
        let days = info.lifetime().as_secs() / 86400;
        assert_eq!(days, 398, "-1 day .. +397 days");
        assert!(info.remaining(SystemTime::now()) > Duration::from_secs(396 * 86400));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn alpn_offers_h2_and_acme_only_when_configured() {
        let mut t = Tls {
            certificates: vec![],
            default: None,
            acme: None,
            h2: false,
            watch: None,
            hsts: None,
            pos: Default::default(),
        };
        assert_eq!(alpn_protocols(&t), vec![b"http/1.1".to_vec()]);
        t.h2 = true;
        t.acme = Some(crate::config::Acme {
            domains: vec!["a.test".into()],
            email: None,
            directory: "https://acme.test".into(),
            ca: None,
            storage: "s".into(),
            challenge: crate::config::AcmeChallenge::TlsAlpn01,
            pos: Default::default(),
        });
        assert_eq!(
            alpn_protocols(&t),
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()]
        );
    }
}
