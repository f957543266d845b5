//! `edgepin up`: the whole local stack from one proxy.yaml — redis-server (spawned on
//! `workers.redis_port` unless `workers.redis` is a URL), one `edgepin worker` per server
//! at the server's address (proxy.yaml is the one source of truth for them), and the proxy
//! itself, in this process.
//!
//! Before anything starts, every port is checked and redis-server looked up, so a taken
//! port or a missing Redis is a clear refusal, not a half-started stack. Then the children
//! start (`supervisor`, each log line prefixed with its name by `children`), the proxy
//! serves until SIGTERM or Ctrl-C, and every child is stopped and reaped before `up`
//! returns. SIGHUP reaches both the proxy (it reloads proxy.yaml) and the supervisor (it
//! starts and stops workers for servers added and removed, then restarts the others one
//! at a time).

mod children;
mod supervisor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{self, Config, RedisSource};
use crate::edge;
use crate::worker::RedisTarget;
use supervisor::{Kind, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Config(#[from] config::LoadError),
    #[error(
        "redis-server is not installed (not on PATH). Install it with `sudo apt-get install redis-server` \
         (or `make deps`), or point `workers.redis` in {config} at a running Redis (redis://HOST:PORT)"
    )]
    RedisMissing { config: String },
    #[error("cannot start: {what} needs {addr}: {source}; {hint}")]
    PortTaken {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
        /// What to do about it, for the kind of failure.
        hint: String,
    },
    #[error("cannot find the edgepin binary to start workers with: {0}")]
    Exe(std::io::Error),
    #[error("{0}")]
    Start(#[from] supervisor::StartError),
    #[error("{0}")]
    Proxy(#[from] edge::RunError),
    #[error("starting the supervisor thread: {0}")]
    Thread(std::io::Error),
}

/// redis-server on 127.0.0.1:`port` without persistence: rooms' pub/sub needs none, and
/// nothing is written to disk.
pub fn redis_command(port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    cmd
}

/// Run the stack described by `config_path` until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), UpError> {
    let config = config::load(config_path)?;
    let shown = config_path.display().to_string();
    let exe = current_exe()?;
    preflight(&config, &shown)?;

    let mut supervisor = Supervisor::new(exe, config_path.to_path_buf(), children_of(&config));
    supervisor.start_all()?;
    tracing::info!(children = ?supervisor.pids(), "Redis and workers are up; starting the proxy");
    let edge = match edge::start(config_path) {
        Ok(edge) => edge,
        Err(e) => {
            supervisor.stop_all();
            return Err(e.into());
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shared = edge.shared();
    let thread = std::thread::Builder::new()
        .name("edgepin-up".into())
        .spawn(move || supervisor.run(shared, stopped))
        .map_err(UpError::Thread)?;
    edge.serve();
    tracing::info!("proxy stopped; stopping the workers and Redis");
    stop.send_replace(true);
    if thread.join().is_err() {
        tracing::error!("the supervisor thread panicked; its children were killed when it unwound");
    }
    Ok(())
}

/// The binary to run workers with. After a rebuild the running binary's file is gone
/// (`… (deleted)`): the path then names the new build, which restarts pick up.
fn current_exe() -> Result<PathBuf, UpError> {
    let exe = std::env::current_exe().map_err(UpError::Exe)?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => exe,
    })
}

/// Redis (when spawned) first, then a worker per server, in proxy.yaml's order.
fn children_of(config: &Config) -> Vec<(String, Kind)> {
    let mut out = Vec::new();
    let redis = match &config.workers.redis {
        RedisSource::Spawn => {
            let port = config.workers.redis_port;
            out.push(("redis".to_string(), Kind::Redis { port }));
            RedisTarget::Url(format!("redis://127.0.0.1:{port}"))
        }
        RedisSource::Url(url) => RedisTarget::Url(url.clone()),
        RedisSource::Cluster(seeds) => RedisTarget::Cluster(seeds.clone()),
    };
    for s in &config.servers {
        out.push((
            s.name.clone(),
            Kind::Worker {
                addr: s.address,
                weight: s.weight,
                redis: redis.clone(),
            },
        ));
    }
    out
}

/// Refuse before starting anything: redis-server missing, or a port the stack needs taken
/// (held all at once, so two servers on one address are caught too).
fn preflight(config: &Config, shown: &str) -> Result<(), UpError> {
    if config.workers.redis == RedisSource::Spawn && find_on_path("redis-server").is_none() {
        return Err(UpError::RedisMissing { config: shown.into() });
    }
    let mut needed: Vec<(String, SocketAddr)> = Vec::new();
    if config.workers.redis == RedisSource::Spawn {
        needed.push((
            "redis-server".into(),
            SocketAddr::from(([127, 0, 0, 1], config.workers.redis_port)),
        ));
    }
    for s in &config.servers {
        needed.push((format!("worker {}", s.name), s.address));
    }
    let l = &config.listen;
    for (what, addr) in [
        ("the https listener", l.https),
        ("the http listener", l.http),
        ("the stats listener", l.stats),
    ] {
        if let Some(addr) = addr {
            needed.push((what.into(), addr));
        }
    }
    let mut held = Vec::with_capacity(needed.len());
    for (what, addr) in needed {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => held.push(listener),
            Err(source) => {
                let hint = match source.kind() {
                    std::io::ErrorKind::AddrInUse => format!("stop what listens there or change {shown}"),
                    std::io::ErrorKind::PermissionDenied => {
                        format!("ports below 1024 need root or cap_net_bind_service, or change {shown}")
                    }
                    _ => format!("`edgepin up` runs everything on this machine: use a local address in {shown}"),
                };
                return Err(UpError::PortTaken {
                    what,
                    addr,
                    source,
                    hint,
                });
            }
        }
    }
    Ok(())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, port: u16) -> Config {
        let text = format!(
            "listen: {{ http: 127.0.0.1:{port} }}\nroutes:\n  - {{ path_prefix: /, backend: api }}\n\
             backends:\n  api: {{ servers: [w1, w2] }}\nservers:\n  w1: {{ address: 127.0.0.1:3101 }}\n  \
             w2: {{ address: 127.0.0.1:3102, weight: 2 }}\n{extra}"
        );
        config::parse(Path::new("t.yaml"), &text).unwrap()
    }

    #[test]
    fn redis_then_one_worker_per_server() {
        let kids = children_of(&config("workers: { redis_port: 7001 }\n", 8080));
        let names: Vec<&str> = kids.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["redis", "w1", "w2"]);
        let Kind::Worker { addr, weight, redis } = &kids[2].1 else {
            panic!()
        };
        assert_eq!(
            (addr.port(), *weight, redis),
            (3102, 2, &RedisTarget::Url("redis://127.0.0.1:7001".into()))
        );

        let kids = children_of(&config("workers: { redis: \"redis://10.1.1.1:6379\" }\n", 8080));
        assert_eq!(kids.len(), 2, "an external Redis is not spawned");
        let kids = children_of(&config(
            "workers: { redis: { cluster: [\"redis://10.1.1.1:7000\", \"redis://10.1.1.2:7000\"] } }\n",
            8080,
        ));
        let names: Vec<&str> = kids.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w1", "w2"], "nor is a cluster");
        let Kind::Worker { redis, .. } = &kids[0].1 else {
            panic!()
        };
        assert_eq!(
            redis,
            &RedisTarget::Cluster(vec!["redis://10.1.1.1:7000".into(), "redis://10.1.1.2:7000".into()])
        );
    }

    #[test]
    fn a_taken_port_is_named_in_the_refusal() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = preflight(&config("workers: { redis: \"redis://h:1\" }\n", port), "t.yaml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("the http listener needs 127.0.0.1:{port}")),
            "{text}"
        );
        assert!(text.contains("t.yaml"), "{text}");
    }
}
