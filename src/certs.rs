//! `edgepin certs`: a self-signed development CA and a server certificate for
//! localhost / 127.0.0.1 / ::1 signed by it, so `make run` serves HTTPS out of the box
//! and tests can trust the CA; more certificates signed by that CA for other names
//! (tests, a private ACME server's own listener); and self-signed certificates made in
//! memory (the stand-in served until ACME delivers); and, for the Debian package, one
//! self-signed certificate for this host so that the shipped config starts before the
//! operator installs a real one. Keys are written with mode 0600. None of these is a
//! production certificate.

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

/// A certificate for `names` (DNS names or IP addresses) signed by the dev CA in `ca`,
/// valid from a day ago for `valid_for`; written to `<dir>/<first name>.crt` and `.key`.
pub fn issue(ca: &DevCerts, dir: &Path, names: &[&str], valid_for: Duration) -> Result<(PathBuf, PathBuf), CertsError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertsError::Write {
            path: path.into(),
            source,
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca.ca_key)?)?;
    let ca_pem = read(&ca.ca_cert)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    leaf.distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("edgepin"));
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - Duration::days(1);
    leaf.not_after = now + valid_for;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.into(),
        source,
    })?;
    let stem = names.first().copied().unwrap_or("edgepin");
    let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    write(&cert_path, format!("{}{ca_pem}", cert.pem()).as_bytes(), 0o644)?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

/// A self-signed certificate for `names`, valid from now for `valid_for`: (cert PEM, key PEM).
pub fn self_signed_pem(names: &[String], valid_for: Duration) -> Result<(String, String), CertsError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().map_or("edgepin", String::as_str));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + valid_for;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// [`self_signed_pem`] written to `<dir>/<first name>.crt` and `.key` (tests).
pub fn issue_self_signed(dir: &Path, names: &[&str]) -> Result<(PathBuf, PathBuf), CertsError> {
    let stem = names.first().copied().unwrap_or("edgepin").replace('*', "_");
    write_self_signed(dir, &stem, names, Duration::days(30))
}

/// A self-signed certificate for `names`, valid for `valid_for`, written to
/// `<dir>/<stem>.crt` (0644) and `<dir>/<stem>.key` (0600): the Debian package's stand-in
/// until the operator installs a real certificate or turns ACME on.
pub fn write_self_signed(
    dir: &Path,
    stem: &str,
    names: &[&str],
    valid_for: Duration,
) -> Result<(PathBuf, PathBuf), CertsError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (cert, key) = self_signed_pem(&names, valid_for)?;
    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.into(),
        source,
    })?;
    let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    write(&cert_path, cert.as_bytes(), 0o644)?;
    write(&key_path, key.as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

/// Write `bytes` to a new file `path` (replacing one that exists) with `mode`.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
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
        let (crt, key) = issue(&c, &dir.join("more"), &["a.test", "127.0.0.1"], Duration::days(2)).unwrap();
        assert_eq!(fs::read_to_string(crt).unwrap().matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = fs::remove_dir_all(dir);
    }
}
