//! `edgepin run`: assembles the pingora server from a config — the proxy service on the
//! https and http listeners, the stats listener, health checks, housekeeping and reload —
//! and runs it until a signal stops it.
//!
//! Signals: SIGHUP reloads (see `reload`). SIGTERM stops gracefully: new connections are
//! refused, requests in flight finish (up to `STOP_TIMEOUT`), open tunnels get a
//! WebSocket close frame, then the process exits. SIGINT stops at once. After
//! `edgepin upgrade` handed the listeners to a new process, this one drains
//! (`upgrade::drain`) and exits when it is empty; SIGTERM then closes what is left.
//!
//! The listening sockets are bound here (or taken over from the process being upgraded:
//! `run --takeover`) and accepted on by `upgrade::AcceptService`, not by pingora's
//! listening service, which cannot stop accepting without stopping the server.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config};
use crate::proxy::{Frontend, Https, connection_cap};
use crate::reload::Reloader;
use crate::runtime::Shared;
use crate::stats::StatsService;
use crate::upgrade::{AcceptService, ControlService, Inherited, Sockets, Takeover};
use crate::upkeep::{ActiveChecks, Housekeeping, background};

/// Longest wait for requests in flight on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] config::LoadError),
    #[error("{file}:{line}:{col}: {source}")]
    Tls {
        file: String,
        line: u32,
        col: u32,
        source: crate::tls::TlsError,
    },
    #[error("{0}")]
    Listen(#[from] crate::upgrade::SocketError),
    #[error("{0}")]
    Takeover(#[from] crate::upgrade::TakeoverError),
    #[error("{0}")]
    Privilege(#[from] crate::privilege::PrivilegeError),
    #[error("writing pidfile {path}: {source}")]
    Pidfile { path: String, source: std::io::Error },
}

/// A proxy ready to serve: listeners checked, services assembled.
pub struct Edge {
    server: Server,
    shared: Arc<Shared>,
    /// Written at start; removed at exit so `edgepin reload` never signals a stale pid.
    pidfile: Option<std::path::PathBuf>,
}

impl Edge {
    /// The process state, for a supervisor running beside the proxy (`edgepin up`).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serve until a signal stops the proxy (see the module docs), then return.
    pub fn serve(self) {
        let shared = Arc::clone(&self.shared);
        self.server.run(RunArgs {
            shutdown_signal: Box::new(Signals { shared }),
        });
        if let Some(pidfile) = &self.pidfile
            && std::fs::read_to_string(pidfile).is_ok_and(|p| p.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(pidfile);
        }
    }
}

/// Load the config at `path` and serve it until stopped. With `takeover` (the upgrade
/// socket of the process being upgraded, `run --takeover`), take its listeners and state
/// first; a failure to start is then also told to it (it keeps serving).
pub fn run(path: &Path, takeover: Option<&Path>) -> Result<(), RunError> {
    let Some(socket) = takeover else {
        start_upgradable(path, None)?.serve();
        return Ok(());
    };
    let mut takeover = Some(Takeover::connect(socket)?);
    match start_upgradable(path, Some(&mut takeover)) {
        Ok(edge) => {
            edge.serve();
            Ok(())
        }
        Err(e) => {
            if let Some(t) = takeover {
                t.fail(&e.to_string());
            }
            Err(e)
        }
    }
}

/// Load the config at `path` and assemble the proxy; a taken port or a bad file fails
/// here. No upgrade socket: the process runs inside `edgepin up`.
pub fn start(path: &Path) -> Result<Edge, RunError> {
    assemble(path, None, false)
}

fn start_upgradable(path: &Path, takeover: Option<&mut Option<Takeover>>) -> Result<Edge, RunError> {
    assemble(path, takeover, true)
}

/// Build the whole process. `takeover` is taken (left `None`) only once nothing can
/// fail any more; until then the caller can still tell the old process why it failed.
fn assemble(path: &Path, takeover: Option<&mut Option<Takeover>>, upgradable: bool) -> Result<Edge, RunError> {
    let (text, config) = config::read(path)?;
    let cert = crate::acme::listener_certs(&config).map_err(|source| {
        let pos = config.tls.as_ref().map(|t| t.pos).unwrap_or_default();
        RunError::Tls {
            file: path.display().to_string(),
            line: pos.line,
            col: pos.col,
            source,
        }
    })?;
    let upgrade_socket = upgradable
        .then(|| crate::upgrade::upgrade_socket_path(&config))
        .flatten();
    let mut no_inheritance = Inherited::default();
    let (sockets, takeover) = match takeover {
        Some(slot) => match slot.as_mut() {
            Some(t) => (
                Sockets::open(&config, &mut t.inherited, upgrade_socket.as_deref())?,
                Some(slot),
            ),
            None => (
                Sockets::open(&config, &mut no_inheritance, upgrade_socket.as_deref())?,
                None,
            ),
        },
        None => (
            Sockets::open(&config, &mut no_inheritance, upgrade_socket.as_deref())?,
            None,
        ),
    };
    if takeover.is_none() {
        write_pidfile(&config, path, &text)?;
    }

    crate::privilege::prepare(&config)?;
    let shared = Shared::new(config.clone(), cert.clone());
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();

    let fd_limit = crate::fdlimit::raise();
    let cap = connection_cap(config.limits.max_connections, fd_limit, config.server_capacity());
    if cap.connections < config.limits.max_connections {
        tracing::warn!(
            max_connections = config.limits.max_connections,
            fit = cap.connections,
            fd_limit,
            "limits.max_connections does not fit in the file descriptor limit; serving at most `fit` connections (raise `ulimit -n` / LimitNOFILE)"
        );
    }
    shared.registry.set_connections_limit(cap.connections);
    // Places for connections, and for HTTP/2 streams beyond their connection's own.
    let places = Arc::new(tokio::sync::Semaphore::new(cap.connections));
    let https = match (config.listen.https, cert, &config.tls) {
        (Some(addr), Some(cert), Some(t)) => {
            let alpn = crate::tls::alpn_protocols(t);
            Some(Https {
                addr,
                acceptor: crate::tls::server_config(cert, alpn).into(),
            })
        }
        _ => None,
    };
    // Idle keep-alive connections to servers: the HTTP/1 engine's, swept by housekeeping.
    let pool = Arc::new(crate::proxy::Pool::default());
    let frontend = Frontend::new(
        Arc::clone(&shared),
        Arc::clone(&pool),
        https,
        places,
        cap.waiting,
        config.timeouts.client,
    );
    let takeover = takeover.and_then(Option::take);
    add_listeners(&mut server, &shared, frontend, sockets, takeover, path, &text)?;
    server.add_service(background(
        "health checks",
        ActiveChecks {
            shared: Arc::clone(&shared),
        },
    ));
    server.add_service(background(
        "housekeeping",
        Housekeeping {
            shared: Arc::clone(&shared),
            pool,
        },
    ));
    // Always there: a reload may add a discovered backend.
    server.add_service(background(
        "dns discovery",
        crate::upkeep::Discovery {
            shared: Arc::clone(&shared),
        },
    ));
    // Not `background`: requests wait on this link's Redis connection (its driver task
    // runs on this service's thread), so it keeps the proxy threads' policy.
    server.add_service(pingora::services::background::background_service(
        "shared sid table",
        crate::upkeep::SharedLink {
            shared: Arc::clone(&shared),
        },
    ));
    server.add_service(background(
        "reload",
        Reloader {
            shared: Arc::clone(&shared),
            path: path.to_path_buf(),
        },
    ));
    if config.tls.as_ref().is_some_and(|t| t.acme.is_some()) {
        let acme = crate::acme::Manager {
            shared: Arc::clone(&shared),
        };
        server.add_service(background("acme", acme));
    }
    if let Some(run_as) = &config.run_as {
        let dropper = crate::privilege::Dropper {
            gate: Arc::clone(&shared.privileges),
            listeners: [config.listen.https, config.listen.http]
                .into_iter()
                .flatten()
                .collect(),
            run_as: run_as.clone(),
        };
        server.add_service(background("privileges", dropper));
    }
    tracing::info!(
        https = ?config.listen.https,
        http = ?config.listen.http,
        stats = ?config.listen.stats,
        threads = config.threads,
        "edgepin running"
    );
    Ok(Edge {
        server,
        shared,
        pidfile: config.reload.pidfile.clone(),
    })
}

/// The services on the listening sockets: the proxy's accept loops, the stats listener,
/// the upgrade socket, and after a takeover the service that finishes it. Every
/// service gets a duplicate of its socket; the originals stay with `lifecycle` to be
/// handed to a successor.
#[allow(clippy::too_many_arguments)]
fn add_listeners<A>(
    server: &mut Server,
    shared: &Arc<Shared>,
    frontend: A,
    sockets: Sockets,
    takeover: Option<Takeover>,
    path: &Path,
    text: &str,
) -> Result<(), RunError>
where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
{
    let config = shared.snapshot().config.clone();
    let dup = |l: &std::net::TcpListener, what: &'static str| {
        l.try_clone().map_err(|source| {
            RunError::Listen(crate::upgrade::SocketError::Bind {
                what,
                addr: l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
                source,
            })
        })
    };
    let mut proxy_listeners = Vec::new();
    for (l, what) in [(&sockets.http, "http"), (&sockets.https, "https")] {
        if let Some(l) = l {
            proxy_listeners.push(dup(l, what)?);
        }
    }
    server.add_service(AcceptService::new(
        frontend,
        proxy_listeners,
        config.threads,
        Arc::clone(shared),
    ));
    if let Some(l) = &sockets.stats {
        let stats = StatsService {
            shared: Arc::clone(shared),
            listener: std::sync::Mutex::new(Some(dup(l, "stats")?)),
        };
        server.add_service(background("stats", stats));
    }
    if let (Some(l), Some(socket_path)) = (&sockets.upgrade, crate::upgrade::upgrade_socket_path(&config)) {
        let copy = l.try_clone().map_err(|source| {
            RunError::Listen(crate::upgrade::SocketError::Control {
                path: socket_path.display().to_string(),
                source,
            })
        })?;
        let control = ControlService {
            shared: Arc::clone(shared),
            listener: std::sync::Mutex::new(Some(copy)),
            config_path: path.to_path_buf(),
            socket_path,
        };
        server.add_service(background("upgrade socket", control));
    }
    shared.lifecycle.keep_sockets(sockets);
    if let Some(t) = takeover {
        shared.lifecycle.hold();
        let applied = crate::upgrade::carried::apply(shared, &t.carried);
        tracing::info!(
            from = t.old_pid(),
            verdicts = applied.verdicts.len(),
            admin_states = applied.admin_states,
            weights = applied.weights,
            sids = applied.sids,
            ticket_keys = applied.tickets,
            discovered_servers = applied.discovered,
            unclaimed_listeners = ?t.inherited.unclaimed(),
            "taking over: sockets and state received"
        );
        let (path, text) = (path.to_path_buf(), text.to_string());
        let on_commit = Box::new(move || {
            if let Err(e) = write_pidfile(&config, &path, &text) {
                tracing::error!(error = %e, "after the takeover: `edgepin reload` and `upgrade` will not find this process");
            }
        });
        let verdicts = applied.verdicts;
        server.add_service(background(
            "takeover",
            t.into_service(Arc::clone(shared), verdicts, on_commit),
        ));
    }
    Ok(())
}

/// Write `reload.pidfile` (this process's pid) and the loaded config beside it.
fn write_pidfile(config: &Config, path: &Path, text: &str) -> Result<(), RunError> {
    let Some(pidfile) = &config.reload.pidfile else {
        return Ok(());
    };
    crate::upgrade::write_pid(pidfile, std::process::id()).map_err(|source| RunError::Pidfile {
        path: pidfile.display().to_string(),
        source,
    })?;
    if let Err(e) = crate::loaded::save_loaded(pidfile, path, text) {
        tracing::warn!(error = %e, "cannot save the loaded config for `check --diff`");
    }
    Ok(())
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        // Our SIGTERM handling drains before telling pingora; then exit promptly.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // One attempt plus the backend's retries; the budget decides below that.
        max_retries: 1 + config.backends.iter().map(|b| b.retries as usize).max().unwrap_or(0),
        ..ServerConf::default()
    }
}

/// SIGTERM: drain then stop; SIGINT: stop now. SIGQUIT (pingora's socket handover) is
/// treated as SIGTERM: edgepin upgrades through its own upgrade socket instead. After a
/// hand-over to a new process: drain until empty (`upgrade::drain`).
struct Signals {
    shared: Arc<Shared>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = quit.recv() => tracing::info!("SIGQUIT: stopping gracefully"),
            () = self.shared.lifecycle.until_handed_over() => {
                tokio::select! {
                    () = crate::upgrade::drain(&self.shared) => {
                        self.shared.lifecycle.finish();
                        // The reporter's last word to the serving process.
                        tokio::time::sleep(Duration::from_millis(60)).await;
                        return ShutdownSignal::GracefulTerminate;
                    }
                    _ = int.recv() => return ShutdownSignal::FastShutdown,
                    _ = term.recv() => tracing::info!("SIGTERM while draining: closing what is left"),
                }
            }
        }
        self.shared.begin_stop();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let requests = self.shared.in_flight.get() as usize;
            let tunnels = self.shared.open_tunnels();
            if requests <= tunnels || Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
        let closed: usize = self
            .shared
            .registry
            .servers()
            .iter()
            .map(|s| s.tunnels.close_all())
            .sum();
        if closed > 0 {
            tracing::info!(tunnels = closed, "closing open tunnels");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ShutdownSignal::GracefulTerminate
    }
}
