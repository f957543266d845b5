//! Reload: on SIGHUP read the config again, validate it, load its certificate files,
//! build a complete snapshot and install it in one step (`Shared::install`: the snapshot,
//! its server transition, sid TTL and certificates); on any error keep the running
//! snapshot, log and count it. Optionally poll the certificate files and swap the
//! certificate when they change.
//!
//! What cannot change without a restart (listener addresses, threads, connection cap,
//! sid table size) is reported as a warning; the rest of the reload applies.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config};
use crate::runtime::Shared;
use crate::state::ReloadStatus;
use crate::tls;

/// The outcome of one reload.
#[derive(Debug)]
pub enum Outcome {
    Applied {
        generation: u64,
        took: Duration,
        warnings: Vec<String>,
    },
    Rejected(Vec<String>),
}

/// Reload from `path` now.
pub fn reload(shared: &Shared, path: &Path) -> Outcome {
    let started = Instant::now();
    let outcome = apply(shared, path, started);
    let status = match &outcome {
        Outcome::Applied {
            generation,
            took,
            warnings,
        } => {
            tracing::info!(
                generation,
                took_ms = took.as_secs_f64() * 1e3,
                warnings = warnings.len(),
                "config reloaded"
            );
            for w in warnings {
                tracing::warn!(warning = %w, "reload");
            }
            ReloadStatus {
                generation: *generation,
                at: SystemTime::now(),
                ok: true,
                message: warnings.join("; "),
            }
        }
        Outcome::Rejected(errors) => {
            for e in errors {
                tracing::error!(error = %e, "reload rejected; the running config stays");
            }
            ReloadStatus {
                generation: shared.snapshot().generation,
                at: SystemTime::now(),
                ok: false,
                message: errors.join("\n"),
            }
        }
    };
    shared.registry.record_reload(status);
    outcome
}

fn apply(shared: &Shared, path: &Path, started: Instant) -> Outcome {
    let (text, config) = match config::read(path) {
        Ok(read) => read,
        Err(e) => return Outcome::Rejected(e.errors()),
    };
    let mut warnings = crate::loaded::restart_needed(&shared.snapshot().config, &config);
    let cert = match (&config.tls, &shared.cert) {
        (Some(t), Some(store)) => {
            if t.acme.is_some() && store.acme().is_none() {
                warnings.push("tls.acme added: ACME starts on restart".into());
            }
            match tls::CertSet::load(t) {
                Ok(set) => Some(set),
                Err(e) => {
                    return Outcome::Rejected(vec![format!("{}:{}:{}: {e}", path.display(), t.pos.line, t.pos.col)]);
                }
            }
        }
        (Some(_), None) => {
            warnings.push("tls added: the https listener starts on restart".into());
            None
        }
        _ => None,
    };
    // Discovered servers stay as the last answers gave them (merged under the book's
    // lock, which also keeps discovery from installing between this build and install).
    let book = shared.discovered.lock();
    let mut staged = shared.build(&crate::discovery::merge(&config, &book));
    staged.certificates = cert;
    let generation = staged.generation();
    shared.install(staged);
    drop(book);
    if let Some(pidfile) = &config.reload.pidfile
        && let Err(e) = crate::loaded::save_loaded(pidfile, path, &text)
    {
        warnings.push(format!("cannot save the loaded config for `check --diff`: {e}"));
    }
    Outcome::Applied {
        generation,
        took: started.elapsed(),
        warnings,
    }
}

/// Reloads on SIGHUP, and swaps the certificate when its files change (`tls.watch`).
pub struct Reloader {
    pub shared: Arc<Shared>,
    pub path: PathBuf,
}

/// Whether the current config asks for certificate files to be polled (`tls.watch`);
/// without it the reloader sleeps until SIGHUP.
fn polls_certificates(shared: &Shared) -> bool {
    shared.snapshot().config.tls.as_ref().is_some_and(|t| t.watch.is_some())
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload disabled");
                return;
            }
        };
        let mut stamps = cert_stamps(&self.shared.snapshot().config);
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut last_poll = Instant::now();
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let shared = Arc::clone(&self.shared);
                    let path = self.path.clone();
                    // Reading files and building may block briefly: keep it off the reactor.
                    let _ = tokio::task::spawn_blocking(move || reload(&shared, &path)).await;
                    stamps = cert_stamps(&self.shared.snapshot().config);
                }
                _ = poll.tick(), if polls_certificates(&self.shared) => {
                    let config = self.shared.snapshot().config.clone();
                    let Some(every) = config.tls.as_ref().and_then(|t| t.watch) else { continue };
                    if last_poll.elapsed() < every {
                        continue;
                    }
                    last_poll = Instant::now();
                    let now = cert_stamps(&config);
                    if now != stamps {
                        stamps = now;
                        self.rotate_cert(&config);
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Reloader {
    fn rotate_cert(&self, config: &Config) {
        let (Some(t), Some(store)) = (&config.tls, &self.shared.cert) else {
            return;
        };
        match tls::CertSet::load(t) {
            Ok(set) => {
                store.store_files(set);
                tracing::info!(
                    certificates = t.certificates.len(),
                    "certificate files changed: new certificates in use"
                );
            }
            // Often the cert is written before the key: the next change retries.
            Err(e) => tracing::warn!(error = %e, "certificate files changed but do not load yet; keeping the old ones"),
        }
    }
}

type Stamp = Option<(SystemTime, u64)>;

/// Stamps of every certificate and key file of the config, in order.
fn cert_stamps(config: &Config) -> Vec<Stamp> {
    let files = config.tls.iter().flat_map(|t| &t.certificates);
    files
        .flat_map(|f| [tls::file_stamp(&f.cert), tls::file_stamp(&f.key)])
        .collect()
}
