//! The answers to ACME challenges in progress, read by the listeners: HTTP-01 key
//! authorizations by token (the http listener answers
//! `GET /.well-known/acme-challenge/TOKEN` with them) and TLS-ALPN-01 certificates by
//! name (the https listener's resolver serves them to handshakes offering ALPN
//! `acme-tls/1`). The renewal task adds an answer before telling the ACME server it is
//! ready and removes it once the authorization is decided.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use rustls::sign::CertifiedKey;

use super::AcmeError;

#[derive(Debug, Default)]
pub struct Challenges {
    http01: Mutex<HashMap<String, String>>,
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Challenges {
    /// The key authorization for an HTTP-01 `token`, while its challenge is open.
    pub fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name` (lowercase), while its challenge is open.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn01).get(name).cloned()
    }

    pub fn add_http01(&self, token: &str, key_authorization: &str) {
        lock(&self.http01).insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove_http01(&self, token: &str) {
        lock(&self.http01).remove(token);
    }

    /// Make and hold the TLS-ALPN-01 certificate for `name`: self-signed, `name` as its
    /// only SAN, and the critical acmeIdentifier extension holding the SHA-256 of the key
    /// authorization (RFC 8737 §3).
    pub fn add_tls_alpn01(&self, name: &str, key_authorization_digest: &[u8]) -> Result<(), AcmeError> {
        let digest: [u8; 32] = key_authorization_digest
            .try_into()
            .map_err(|_| AcmeError::Challenge("key authorization digest is not SHA-256".into()))?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // Not through `tls::certified_key_from_pem`: its key check parses the certificate
        // with webpki, which refuses the (critical, unknown to it) acmeIdentifier.
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| AcmeError::Challenge(format!("challenge key: {e}")))?;
        let ck = CertifiedKey::new(vec![cert.der().clone()], signing);
        lock(&self.tls_alpn01).insert(name.to_ascii_lowercase(), Arc::new(ck));
        Ok(())
    }

    pub fn remove_tls_alpn01(&self, name: &str) {
        lock(&self.tls_alpn01).remove(&name.to_ascii_lowercase());
    }

    /// Open challenges (HTTP-01 tokens + TLS-ALPN-01 names), for tests and logs.
    pub fn open(&self) -> usize {
        lock(&self.http01).len() + lock(&self.tls_alpn01).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_exist_only_while_open() {
        let c = Challenges::default();
        c.add_http01("tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.http01("other"), None);
        c.remove_http01("tok");
        assert_eq!(c.http01("tok"), None);

        c.add_tls_alpn01("A.test", &[7u8; 32]).unwrap();
        let ck = c.tls_alpn01("a.test").unwrap();
        let info = crate::tls::CertInfo::of(&ck.cert[0], "challenge").unwrap();
        assert_eq!(info.names, vec!["a.test"]);
        // The acmeIdentifier extension (1.3.6.1.5.5.7.1.31) holds the digest, critical.
        let (_, x509) = x509_parser::parse_x509_certificate(ck.cert[0].as_ref()).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &[7u8; 32], "an OCTET STRING of the digest");
        assert!(c.add_tls_alpn01("b.test", &[1, 2]).is_err());
        assert_eq!(c.open(), 1);
        c.remove_tls_alpn01("a.test");
        assert_eq!(c.open(), 0);
    }
}
