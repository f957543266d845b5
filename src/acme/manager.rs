//! The ACME task: orders the `tls.acme` certificate when there is none (or the stored
//! one does not cover the domains), renews it at two-thirds of its lifetime, and after a
//! failure retries with jittered exponential backoff while the current certificate keeps
//! serving. One issuance: account (stored, or created), order, one challenge per
//! authorization answered by our listeners, finalize with a fresh key, download, store,
//! swap into the listener's `CertStore`.
//!
//! Across `edgepin upgrade` two processes share the storage: an issuance needs the
//! storage's renewal lock (`Storage::lock_renewal`), and with it the process first looks
//! whether the other one stored a newer certificate meanwhile (then serves that instead
//! of ordering). The old process stops renewing once it handed its listeners over.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{AcmeError, AcmeState, Storage};
use crate::config::{Acme, AcmeChallenge};
use crate::runtime::Shared;
use crate::tls::{CertInfo, Certificate, certified_key_from_pem};

/// A whole issuance (account, order, challenges, certificate) gets this long.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(180);
/// First retry after a failure; doubles per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// Background service renewing the ACME certificate of `shared.cert`.
pub struct Manager {
    pub shared: Arc<Shared>,
}

/// The pause before looking again while another process holds the renewal lock.
const LOCKED_RETRY: Duration = Duration::from_secs(5);

/// A certificate in storage that covers the domains and outlives `current`: another
/// process (the other side of an upgrade) renewed it.
fn stored_newer(acme: &Acme, storage: &Storage, current: Option<&Arc<Certificate>>) -> Option<Arc<Certificate>> {
    let (chain, key) = storage.certificate()?;
    let path = storage.cert_path().display().to_string();
    let ck = certified_key_from_pem(&chain, &key, &path, "ACME key").ok()?;
    let stored = Certificate::new(ck, acme.domains.clone(), path).ok()?;
    let newer = current.is_none_or(|c| stored.info.not_after > c.info.not_after);
    (newer && super::covers(&stored, &acme.domains)).then(|| Arc::new(stored))
}

/// When a certificate valid over `info` is renewed: two-thirds into its lifetime.
pub fn renewal_due(info: &CertInfo) -> SystemTime {
    info.not_before + info.lifetime() * 2 / 3
}

/// The wait before retry number `failures` (1 = first): doubling from `FIRST_BACKOFF`,
/// capped, then spread over [0.75, 1.25) × that by `jitter` in [0, 1).
fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(MAX_BACKOFF);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[async_trait]
impl BackgroundService for Manager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(store) = self.shared.cert.clone() else { return };
        let Some(state) = store.acme().cloned() else { return };
        let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
        loop {
            let config = self.shared.snapshot().config.clone();
            let Some(acme) = config.tls.as_ref().and_then(|t| t.acme.clone()) else {
                // A reload removed tls.acme: nothing to renew until one adds it back.
                tokio::select! {
                    _ = state.woken() => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let status = state.status();
            let current = store.current();
            let due = match (status.next_attempt, current.acme()) {
                (Some(retry), _) if status.last_ok == Some(false) => retry,
                (_, Some(c)) if status.issued && super::covers(c, &acme.domains) => renewal_due(&c.info),
                _ => SystemTime::now(),
            };
            state.update(|s| s.next_attempt = Some(due));
            let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
            if !wait.is_zero() {
                tracing::info!(domains = ?acme.domains, in_seconds = wait.as_secs(), "ACME certificate renewal scheduled");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = state.woken() => continue,
                _ = shutdown.changed() => return,
                () = self.shared.lifecycle.until_handed_over() => return,
            }
            let storage = Storage::new(&acme.storage, &acme.domains[0]);
            let _renewer = match storage.lock_renewal() {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => {
                    tracing::info!(domains = ?acme.domains, "another edgepin renews this certificate now; looking again in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(LOCKED_RETRY) => continue,
                        _ = shutdown.changed() => return,
                        () = self.shared.lifecycle.until_handed_over() => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: cannot take the renewal lock; renewing without it");
                    None
                }
            };
            if let Some(newer) = stored_newer(&acme, &storage, current.acme()) {
                tracing::info!(not_after = ?newer.info.not_after, "ACME: serving the certificate another edgepin stored");
                store.store_acme(newer);
                state.update(|s| {
                    s.issued = true;
                    s.last_ok = Some(true);
                    s.failures = 0;
                    s.next_attempt = None;
                });
                continue;
            }
            let started = Instant::now();
            let outcome = match tokio::time::timeout(ISSUE_TIMEOUT, issue(&acme, &state)).await {
                Ok(r) => r,
                Err(_) => Err(AcmeError::Timeout(ISSUE_TIMEOUT)),
            };
            let installed = outcome.and_then(|(chain, key)| {
                let path = storage.cert_path().display().to_string();
                let ck = certified_key_from_pem(chain.as_bytes(), key.as_bytes(), &path, "ACME key")?;
                let cert = Certificate::new(ck, acme.domains.clone(), path)?;
                // Stored first: a certificate we could not keep would be ordered again at
                // every restart (and hit the CA's rate limits).
                storage.save_certificate(&chain, &key)?;
                Ok(cert)
            });
            let now = SystemTime::now();
            match installed {
                Ok(cert) => {
                    tracing::info!(
                        domains = ?acme.domains,
                        issuer = %cert.info.issuer,
                        not_after = ?cert.info.not_after,
                        took_ms = started.elapsed().as_millis() as u64,
                        "ACME certificate issued and in use"
                    );
                    store.store_acme(Arc::new(cert));
                    state.update(|s| {
                        s.issued = true;
                        s.last_attempt = Some(now);
                        s.last_ok = Some(true);
                        s.last_error.clear();
                        s.last_success = Some(now);
                        s.failures = 0;
                        s.next_attempt = None;
                    });
                }
                Err(e) => {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let jitter = (seed >> 11) as f64 / (1u64 << 53) as f64;
                    let failures = status.failures + 1;
                    let retry = backoff(failures, jitter);
                    tracing::warn!(domains = ?acme.domains, error = %e, failures, retry_in_seconds = retry.as_secs(), "ACME renewal failed; the current certificate stays");
                    state.update(|s| {
                        s.last_attempt = Some(now);
                        s.last_ok = Some(false);
                        s.last_error = e.to_string();
                        s.failures = failures;
                        s.next_attempt = Some(now + retry);
                    });
                }
            }
        }
    }
}

/// The account for `acme.directory`: the stored one, or a new one (then stored).
async fn account(acme: &Acme, storage: &Storage) -> Result<Account, AcmeError> {
    let builder = || match &acme.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    if let Some(credentials) = storage.account(&acme.directory)? {
        return Ok(builder()?.from_credentials(credentials).await?);
    }
    let contact: Vec<String> = acme.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()?.create(&new, acme.directory.clone(), None).await?;
    storage.save_account(&acme.directory, credentials)?;
    tracing::info!(directory = %acme.directory, id = %account.id(), "ACME account created");
    Ok(account)
}

/// Challenge answers put up for one order, taken down when it ends however it ends.
struct Opened<'a> {
    state: &'a AcmeState,
    http: Vec<String>,
    tls: Vec<String>,
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        for t in &self.http {
            self.state.challenges.remove_http01(t);
        }
        for n in &self.tls {
            self.state.challenges.remove_tls_alpn01(n);
        }
    }
}

/// One issuance: the certificate chain and its new private key (PEM).
async fn issue(acme: &Acme, state: &AcmeState) -> Result<(String, String), AcmeError> {
    let storage = Storage::new(&acme.storage, &acme.domains[0]);
    let account = account(acme, &storage).await?;
    let identifiers: Vec<Identifier> = acme.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut opened = Opened {
        state,
        http: Vec::new(),
        tls: Vec::new(),
    };
    let kind = match acme.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Order(format!("authorization is {other:?}"))),
        }
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or_else(|| AcmeError::Order(format!("the server offers no {} challenge", acme.challenge.as_str())))?;
        let key_authorization = challenge.key_authorization();
        match acme.challenge {
            AcmeChallenge::Http01 => {
                state
                    .challenges
                    .add_http01(&challenge.token, key_authorization.as_str());
                opened.http.push(challenge.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let name = challenge.identifier().to_string();
                let cert = super::tls_alpn01_certificate(&name, key_authorization.digest().as_ref())?;
                state.challenges.add_tls_alpn01(&name, Arc::new(cert));
                opened.tls.push(name);
            }
        }
        challenge.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        let problem = order.state().error.as_ref().map(|p| p.to_string()).unwrap_or_default();
        return Err(AcmeError::Order(format!("order is {status:?} {problem}")));
    }
    drop(opened);
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&retry).await?;
    Ok((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(5));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(3, 0.0), Duration::from_secs_f64(15.0));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(25));
        assert_eq!(backoff(40, 0.5), MAX_BACKOFF);
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            names: vec![],
            issuer: String::new(),
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
        };
        assert_eq!(renewal_due(&info), start + Duration::from_secs(60 * 86400));
    }
}
