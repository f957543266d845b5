//! The new process's side of an upgrade (`edgepin run --takeover SOCKET`): receive the
//! listening sockets and the state before building anything ([`Takeover::connect`]),
//! say why if the start fails ([`Takeover::fail`]), and once the services run
//! ([`TakeoverService`]): wait until every server has a health verdict — carried over,
//! or from a first check — start accepting, say Ready, and on the old process's commit
//! become the serving process (pidfile, upgrade socket), then hear from the old one
//! while it drains (`control::follow`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::carried::Carried;
use super::control::{TOKEN_ENV, follow};
use super::sockets::Inherited;
use super::wire::{Link, Message};
use crate::runtime::Shared;

/// How long the old process may take to send the sockets and the state.
const RECEIVE_WAIT: Duration = Duration::from_secs(60);
/// How long the old process may take to commit after Ready.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("--takeover needs {TOKEN_ENV} (it is run by `edgepin upgrade`, not by hand)")]
    NoToken,
    #[error("upgrade socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("taking over from the running process: {0}")]
    Wire(#[from] super::wire::WireError),
    #[error("the running process refused: {0}")]
    Refused(String),
    #[error("the running process sent {0} instead of its sockets and state")]
    Unexpected(String),
}

/// What the old process handed over, before the new one is built on it.
pub struct Takeover {
    link: Link,
    pub inherited: Inherited,
    pub carried: Carried,
}

impl Takeover {
    /// Connect to the old process's upgrade socket and receive its sockets and state.
    pub fn connect(socket: &Path) -> Result<Takeover, TakeoverError> {
        let token = std::env::var(TOKEN_ENV).map_err(|_| TakeoverError::NoToken)?;
        // (The variable stays in the environment: the next upgrade's child gets its own.)
        let mut link = Link::connect(socket).map_err(|source| TakeoverError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        link.send(&Message::Takeover {
            token,
            pid: std::process::id(),
        })?;
        let sockets = match link.recv(Some(RECEIVE_WAIT))? {
            Message::Listeners { sockets } => sockets,
            Message::Refused { reason } => return Err(TakeoverError::Refused(reason)),
            other => return Err(TakeoverError::Unexpected(format!("{other:?}"))),
        };
        let fds = link.take_fds();
        let inherited = Inherited::new(&sockets, fds);
        let carried = match link.recv(Some(RECEIVE_WAIT))? {
            Message::State(carried) => *carried,
            other => return Err(TakeoverError::Unexpected(format!("{other:?}"))),
        };
        Ok(Takeover {
            link,
            inherited,
            carried,
        })
    }

    /// The new process cannot start: tell the old one why (it keeps serving).
    pub fn fail(mut self, reason: &str) {
        let _ = self.link.send(&Message::Failed { reason: reason.into() });
    }

    pub fn old_pid(&self) -> u32 {
        self.carried.pid
    }

    /// The service that finishes the takeover once the process runs.
    pub fn into_service(self, shared: Arc<Shared>, verdicts: HashSet<String>, on_commit: OnCommit) -> TakeoverService {
        TakeoverService {
            shared,
            link: Mutex::new(Some(self.link)),
            verdicts,
            on_commit: Mutex::new(Some(on_commit)),
        }
    }
}

/// What the new process does once it serves alone (write its pidfile).
pub type OnCommit = Box<dyn FnOnce() + Send>;

/// Finishes a takeover (see the module docs).
pub struct TakeoverService {
    shared: Arc<Shared>,
    link: Mutex<Option<Link>>,
    /// Servers whose health verdict was carried over.
    verdicts: HashSet<String>,
    on_commit: Mutex<Option<OnCommit>>,
}

/// Whether every configured server has a verdict: carried, or from its first check.
fn verdicts_known(shared: &Shared, carried: &HashSet<String>) -> bool {
    let snapshot = shared.snapshot();
    snapshot
        .config
        .servers
        .iter()
        .all(|s| carried.contains(&s.name) || shared.registry.server(&s.name, s.weight).detail().last_check.is_some())
}

#[async_trait]
impl BackgroundService for TakeoverService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut link) = self.link.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let on_commit = self.on_commit.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A first check comes within a tenth of the interval (jittered) plus its timeout.
        let health = self.shared.snapshot().config.health.clone();
        let bound = (health.interval / 10).mul_f64(1.1) + health.timeout + Duration::from_millis(500);
        let started = Instant::now();
        while !verdicts_known(&self.shared, &self.verdicts) && started.elapsed() < bound {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = shutdown.changed() => return,
            }
        }
        self.shared.privileges.ready().await;
        self.shared.lifecycle.open();
        tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            "takeover: ready and accepting; asking the old process to stop"
        );
        let shared = Arc::clone(&self.shared);
        let finish = move || {
            let committed = link.send(&Message::Ready).map_err(|e| e.to_string()).and_then(|()| {
                match link.recv(Some(COMMIT_WAIT)) {
                    Ok(Message::Committed) => Ok(()),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            });
            match &committed {
                Ok(()) => tracing::info!("takeover: the old process stopped accepting; serving alone"),
                // It may have died: this process accepts already, so it serves on.
                Err(e) => tracing::warn!(error = %e, "takeover: no commit from the old process; serving on"),
            }
            shared.lifecycle.serve();
            if let Some(f) = on_commit {
                f();
            }
            if committed.is_ok() {
                follow(&shared, link);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("edgepin-takeover".into())
            .spawn(finish)
        {
            tracing::error!(error = %e, "takeover: no thread to finish it");
        }
    }
}
