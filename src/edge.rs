//! `edgepin run`: assembles the pingora server from a config — the proxy service on the
//! https and http listeners, the stats listener, health checks, housekeeping and reload —
//! and runs it until a signal stops it.
//!
//! Signals: SIGHUP reloads (see `reload`). SIGTERM stops gracefully: new connections are
//! refused, requests in flight finish (up to `STOP_TIMEOUT`), open tunnels get a
//! WebSocket close frame, then the process exits. SIGINT stops at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig, Listeners};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config};
use crate::proxy::{Frontend, H2Proxy, Https, connection_cap};
use crate::reload::Reloader;
use crate::runtime::Shared;
use crate::stats::StatsService;
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
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
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

/// Load the config at `path` and serve it until stopped.
pub fn run(path: &Path) -> Result<(), RunError> {
    start(path)?.serve();
    Ok(())
}

/// Load the config at `path` and assemble the proxy; a taken port or a bad file fails here.
pub fn start(path: &Path) -> Result<Edge, RunError> {
    let (text, config) = config::read(path)?;
    let cert = crate::tls::listener_certs(&config).map_err(|source| {
        let pos = config.tls.as_ref().map(|t| t.pos).unwrap_or_default();
        RunError::Tls {
            file: path.display().to_string(),
            line: pos.line,
            col: pos.col,
            source,
        }
    })?;
    // Bind the listeners pingora does not own first, and check the others are free, so a
    // taken port is a clear error before anything starts.
    for (what, addr) in [("https", config.listen.https), ("http", config.listen.http)] {
        if let Some(addr) = addr {
            std::net::TcpListener::bind(addr).map_err(|source| RunError::Bind { what, addr, source })?;
        }
    }
    let stats_listener = match config.listen.stats {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|source| RunError::Bind {
                what: "stats",
                addr,
                source,
            })?;
            l.set_nonblocking(true).map_err(|source| RunError::Bind {
                what: "stats",
                addr,
                source,
            })?;
            Some(l)
        }
        None => None,
    };
    if let Some(pidfile) = &config.reload.pidfile {
        if let Some(dir) = pidfile.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(pidfile, format!("{}\n", std::process::id())).map_err(|source| RunError::Pidfile {
            path: pidfile.display().to_string(),
            source,
        })?;
        if let Err(e) = crate::loaded::save_loaded(pidfile, path, &text) {
            tracing::warn!(error = %e, "cannot save the loaded config for `check --diff`");
        }
    }

    crate::privilege::prepare(&config)?;
    let shared = Shared::new(config.clone(), cert.clone());
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();

    let fd_limit = crate::fdlimit::raise();
    let h2 = config.tls.as_ref().is_some_and(|t| t.h2);
    let cap = connection_cap(config.limits.max_connections, fd_limit, config.server_capacity(), h2);
    if cap.connections < config.limits.max_connections {
        tracing::warn!(
            max_connections = config.limits.max_connections,
            fit = cap.connections,
            fd_limit,
            "limits.max_connections does not fit in the file descriptor limit; serving at most `fit` connections (raise `ulimit -n` / LimitNOFILE)"
        );
    }
    // Places for connections, and for HTTP/2 streams in flight (each holds a server's).
    let places = Arc::new(tokio::sync::Semaphore::new(cap.connections));
    let mut proxy = pingora::proxy::http_proxy(
        &server.configuration,
        H2Proxy {
            shared: Arc::clone(&shared),
            places: Arc::clone(&places),
        },
    );
    proxy.h2_options = Some(crate::tls::h2_options(config.limits.max_header_bytes));
    // An HTTP/2 connection with no stream in flight is closed after `timeouts.keepalive`, as
    // an idle HTTP/1.1 one is (pingora holds it until the client leaves otherwise).
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(config.timeouts.keepalive);
    proxy.server_options = Some(options);
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
    let mut frontend = Frontend::new(
        proxy,
        Arc::clone(&shared),
        Arc::clone(&pool),
        https,
        places,
        cap.waiting,
        config.timeouts.client,
    );
    // Only the differential test (integration/differential.rs) sets this.
    frontend.h1_through_pingora = std::env::var("EDGEPIN_H1_ENGINE").is_ok_and(|e| e == "pingora");
    let mut listeners = Listeners::new();
    for addr in [config.listen.http, config.listen.https].into_iter().flatten() {
        listeners.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(downstream_buffers()));
    }
    let mut service = Service::with_listeners("edgepin proxy".to_string(), listeners, frontend);
    service.threads = Some(config.threads);
    server.add_service(service);
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
        crate::sticky::SharedLink {
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
    if let Some(listener) = stats_listener {
        let stats = StatsService {
            shared: Arc::clone(&shared),
            listener: std::sync::Mutex::new(Some(listener)),
        };
        server.add_service(background("stats", stats));
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

/// Client connections read and write straight from and to the socket. pingora's default
/// puts a 64 KiB read buffer (allocated zeroed, so resident) and a one-MSS write buffer in
/// front of every accepted connection for its whole life. Nothing needs them: the HTTP/1
/// engine reads into its own buffer and writes whole heads at once, rustls and HTTP/2
/// keep their own buffers, and a tunnel must not hold bytes back.
fn downstream_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0).write(0)
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        // Our SIGTERM handling drains before telling pingora; then exit promptly.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // One attempt plus the backend's retries; the budget decides below that.
        max_retries: 1 + config.backends.iter().map(|b| b.retries as usize).max().unwrap_or(0),
        // pingora's pool serves HTTP/2 only; sized as the HTTP/1 engine's (and reserved
        // in the connection cap when h2 is on).
        upstream_keepalive_pool_size: crate::proxy::pool_size(config.server_capacity()),
        ..ServerConf::default()
    }
}

/// SIGTERM: drain then stop; SIGINT: stop now. SIGQUIT (pingora's socket handover) is
/// treated as SIGTERM: edgepin reloads in place instead.
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
