//! TLS termination: loading the certificate chain and key, and a certificate resolver
//! whose certificate can be swapped while the listener runs (reload, rotation).
//!
//! The listener's rustls config is built once with a [`SwappableCert`] resolver; a reload
//! builds a new `CertifiedKey` first (any error keeps the old one) and stores it. New
//! handshakes use the new certificate; open connections keep theirs.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

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
}

/// Load a PEM chain and its private key, checking that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let der = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key.display().to_string(),
        })?;
    let signing = any_supported_type(&der).map_err(|e| TlsError::BadKey {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
    })?;
    Ok(ck)
}

/// A certificate resolver serving one certificate that can be replaced at any time.
#[derive(Debug)]
pub struct SwappableCert {
    current: ArcSwap<CertifiedKey>,
}

impl SwappableCert {
    pub fn new(initial: CertifiedKey) -> Arc<SwappableCert> {
        Arc::new(SwappableCert {
            current: ArcSwap::from_pointee(initial),
        })
    }

    pub fn store(&self, ck: CertifiedKey) {
        self.current.store(Arc::new(ck));
    }

    /// The certificate served now (for tests and the stats page).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls config of the https listener: certificates from `resolver` (read at each
/// handshake, so swaps apply to new connections), ALPN protocols in preference order.
/// Session resumption by tickets and a session cache, as pingora's listener had.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>, alpn: Vec<Vec<u8>>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Arc::new(config)
}

/// Sessions remembered for resumption by id (TLS 1.2) and for stateful TLS 1.3 resumption.
const SESSION_CACHE: usize = 20_480;

/// Fingerprint of a file's metadata, to notice certificate rotation by polling.
pub fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
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
}
