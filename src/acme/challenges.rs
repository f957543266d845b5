//! The certificate a TLS-ALPN-01 challenge is answered with (RFC 8737). The answers
//! themselves are held in `tls::Challenges`, which the listeners read.

use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use rustls::sign::CertifiedKey;

use super::AcmeError;

/// The TLS-ALPN-01 certificate for `name`: self-signed, `name` as its
/// only SAN, and the critical acmeIdentifier extension holding the SHA-256 of the key
/// authorization (RFC 8737 §3).
pub fn tls_alpn01_certificate(name: &str, key_authorization_digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
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
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tls::Challenges;

    #[test]
    fn answers_exist_only_while_open() {
        let c = Challenges::default();
        c.add_http01("tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.http01("other"), None);
        c.remove_http01("tok");
        assert_eq!(c.http01("tok"), None);

        c.add_tls_alpn01(
            "A.test",
            Arc::new(tls_alpn01_certificate("A.test", &[7u8; 32]).unwrap()),
        );
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
        assert!(tls_alpn01_certificate("b.test", &[1, 2]).is_err());
        assert_eq!(c.open(), 1);
        c.remove_tls_alpn01("a.test");
        assert_eq!(c.open(), 0);
    }
}
