//! What ACME keeps on disk in `tls.acme.storage`: the account (`account.json`: the
//! directory URL and the account key, mode 0600) and the current certificate
//! (`<first domain>.crt`, and its key `<first domain>.key`, mode 0600). Files are
//! replaced atomically (written beside, then renamed), key first, so a crash never
//! leaves a certificate with another certificate's key. The directory's owner is set
//! before privileges are dropped (`privilege`); from then on the files are the running
//! user's. `renew.lock` is held (flock) by the one process renewing: during an upgrade
//! two edgepins share the storage, and only one of them orders at a time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AcmeError;

/// The account as stored: which directory it belongs to, and its credentials.
#[derive(Serialize, Deserialize)]
pub struct StoredAccount {
    pub directory: String,
    pub credentials: instant_acme::AccountCredentials,
}

/// The files of one `tls.acme` section.
#[derive(Debug, Clone)]
pub struct Storage {
    pub dir: PathBuf,
    /// Base name of the certificate files (the first domain).
    pub stem: String,
}

impl Storage {
    pub fn new(dir: &Path, first_domain: &str) -> Storage {
        Storage {
            dir: dir.to_path_buf(),
            stem: first_domain.to_string(),
        }
    }

    pub fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.stem))
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.stem))
    }

    /// The stored account, if it belongs to `directory`.
    pub fn account(&self, directory: &str) -> Result<Option<instant_acme::AccountCredentials>, AcmeError> {
        let path = self.account_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AcmeError::Storage { path, source }),
        };
        let stored: StoredAccount = serde_json::from_str(&text).map_err(|e| AcmeError::Storage {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        Ok((stored.directory == directory).then_some(stored.credentials))
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: instant_acme::AccountCredentials,
    ) -> Result<(), AcmeError> {
        let stored = StoredAccount {
            directory: directory.to_string(),
            credentials,
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::Storage {
            path: self.account_path(),
            source: std::io::Error::other(e),
        })?;
        self.replace(&self.account_path(), &json, 0o600)
    }

    /// The stored certificate chain and key (PEM), when both exist.
    pub fn certificate(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let cert = std::fs::read(self.cert_path()).ok()?;
        let key = std::fs::read(self.key_path()).ok()?;
        Some((cert, key))
    }

    pub fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        self.replace(&self.key_path(), key_pem.as_bytes(), 0o600)?;
        self.replace(&self.cert_path(), chain_pem.as_bytes(), 0o644)
    }

    /// The right to renew, held until dropped; `None` while another process holds it.
    pub fn lock_renewal(&self) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, AcmeError> {
        let path = self.dir.join("renew.lock");
        let err = |source| AcmeError::Storage {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(err(errno.into())),
        }
    }

    fn replace(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), AcmeError> {
        let err = |source| AcmeError::Storage {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = path.with_extension("new");
        crate::certs::write(&tmp, bytes, mode).map_err(|e| match e {
            crate::certs::CertsError::Write { source, .. } => AcmeError::Storage {
                path: tmp.clone(),
                source,
            },
            other => AcmeError::Challenge(other.to_string()),
        })?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn certificate_and_key_are_replaced_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(&dir.path().join("acme"), "a.test");
        assert!(s.certificate().is_none());
        s.save_certificate("CERT1", "KEY1").unwrap();
        s.save_certificate("CERT2", "KEY2").unwrap();
        let (c, k) = s.certificate().unwrap();
        assert_eq!((c.as_slice(), k.as_slice()), (&b"CERT2"[..], &b"KEY2"[..]));
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(s.key_path()), 0o600);
        assert_eq!(mode(s.cert_path()), 0o644);
        assert!(s.account("https://x").unwrap().is_none());
    }

    #[test]
    fn one_renewer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::new(&dir.path().join("acme"), "a.test");
        let first = s.lock_renewal().unwrap().expect("free");
        assert!(s.lock_renewal().unwrap().is_none(), "held by the first");
        drop(first);
        assert!(s.lock_renewal().unwrap().is_some(), "free again");
    }
}
