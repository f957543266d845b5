//! `edgepin certs`: a self-signed development CA and a server certificate for
//! localhost / 127.0.0.1 / ::1 signed by it, so `make run` serves HTTPS out of the box
//! and tests can trust the CA. Keys are written with mode 0600. Never for production.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("generating certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The files written by [`generate`].
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl DevCerts {
    pub fn paths(dir: &Path) -> DevCerts {
        DevCerts {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("edge.crt"),
            key: dir.join("edge.key"),
        }
    }
}

/// Write a dev CA and a localhost server certificate into `dir`.
pub fn generate(dir: &Path) -> Result<DevCerts, CertsError> {
    let paths = DevCerts::paths(dir);
    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.into(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();

    let mut ca = CertificateParams::new(Vec::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, "edgepin development CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::days(1);
    ca.not_after = now + Duration::days(3650);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - Duration::days(1);
    // Browsers refuse leaf certificates valid for more than 398 days.
    leaf.not_after = now + Duration::days(397);
    let leaf_key = KeyPair::generate()?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    write(&paths.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(&paths.ca_key, issuer.key().serialize_pem().as_bytes(), 0o600)?;
    write(
        &paths.cert,
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()).as_bytes(),
        0o644,
    )?;
    write(&paths.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(paths)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.into(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_keys_private_and_a_chain() {
        let dir = std::env::temp_dir().join(format!("edgepin-certs-{}", std::process::id()));
        let c = generate(&dir).unwrap();
        let mode = fs::metadata(&c.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let chain = fs::read_to_string(&c.cert).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        let _ = fs::remove_dir_all(dir);
    }
}
