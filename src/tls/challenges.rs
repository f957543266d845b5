//! What the ACME task (`crate::acme`) shares with the listeners and the stats page: the
//! answers to challenges in progress — HTTP-01 key authorizations by token (the http
//! listener answers `GET /.well-known/acme-challenge/TOKEN` with them) and TLS-ALPN-01
//! certificates by name (the https listener's resolver serves them to handshakes offering
//! ALPN `acme-tls/1`) — and the renewal status. The renewal task adds an answer before
//! telling the ACME server it is ready and removes it once the authorization is decided.
//! Only state here: the listeners read it without knowing ACME, so `tls` never imports
//! `acme` (the ACME task imports `tls`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::SystemTime;

use rustls::sign::CertifiedKey;

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

    /// Hold `cert` for TLS-ALPN-01 handshakes naming `name`.
    pub fn add_tls_alpn01(&self, name: &str, cert: Arc<CertifiedKey>) {
        lock(&self.tls_alpn01).insert(name.to_ascii_lowercase(), cert);
    }

    pub fn remove_tls_alpn01(&self, name: &str) {
        lock(&self.tls_alpn01).remove(&name.to_ascii_lowercase());
    }

    /// Open challenges (HTTP-01 tokens + TLS-ALPN-01 names), for tests and logs.
    pub fn open(&self) -> usize {
        lock(&self.http01).len() + lock(&self.tls_alpn01).len()
    }
}

/// The last renewal attempt and what comes next, for the stats page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalStatus {
    /// A certificate from the ACME server is in use (not the self-signed stand-in).
    pub issued: bool,
    pub last_attempt: Option<SystemTime>,
    /// Whether the last attempt succeeded; `None` before the first.
    pub last_ok: Option<bool>,
    /// The last attempt's error (empty after a success).
    pub last_error: String,
    pub last_success: Option<SystemTime>,
    pub next_attempt: Option<SystemTime>,
    /// Failed attempts since the last success.
    pub failures: u32,
}

/// What the ACME task shares with the listeners and the stats page.
#[derive(Debug, Default)]
pub struct AcmeState {
    pub challenges: Challenges,
    status: Mutex<RenewalStatus>,
    /// Wakes the task early (a reload changed `tls.acme`).
    wake: tokio::sync::Notify,
}

impl AcmeState {
    pub fn status(&self) -> RenewalStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut RenewalStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Look at the certificate again now (after a reload).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Completes when [`AcmeState::wake`] is called (the renewal task's early wake-up).
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}
