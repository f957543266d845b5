//! Socket.IO workers as child processes: `edgepin worker` (the binary under test) and the
//! Node.js reference worker (`integration/node/worker.js`), on free loopback ports (or an
//! address the test chooses).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::Proc;
use super::{blocking_get, free_port};

/// The Node.js fixtures (package.json, worker.js, sio-driver.js, clients.js).
pub fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/node")
}

pub struct Worker {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// `edgepin worker --id ID --redis URL` on a free port, started and healthy.
    pub fn start(id: &str, redis_url: &str) -> Worker {
        Worker::start_with_env(id, redis_url, &[])
    }

    /// The same, with these environment variables set.
    pub fn start_with_env(id: &str, redis_url: &str, env: &[(&str, &str)]) -> Worker {
        Worker::start_at(id, redis_url, SocketAddr::from(([127, 0, 0, 1], free_port())), env)
    }

    /// `edgepin worker` listening on `addr` (e.g. 127.0.0.N with a port several workers
    /// share, as A records carry no port).
    pub fn start_at(id: &str, redis_url: &str, addr: SocketAddr, env: &[(&str, &str)]) -> Worker {
        let listen = addr.to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgepin"));
        cmd.args(["worker", "--listen", &listen, "--id", id, "--redis", redis_url])
            .env("RUST_LOG", "info,edgepin=debug")
            .envs(env.iter().copied());
        Worker::spawn(id, addr, cmd)
    }

    /// `edgepin worker --id ID --redis-cluster SEEDS` (comma-separated URLs).
    pub fn start_cluster(id: &str, seeds: &str) -> Worker {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = addr.to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgepin"));
        cmd.args(["worker", "--listen", &listen, "--id", id, "--redis-cluster", seeds])
            .env("RUST_LOG", "info,edgepin=debug");
        Worker::spawn(id, addr, cmd)
    }

    /// The Node.js worker (socket.io 4.8 + @socket.io/redis-adapter) on a free port.
    pub fn start_node(id: &str, redis_url: &str) -> Worker {
        Worker::start_node_at(id, redis_url, SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// The same on `addr` (e.g. a worker coming back where a killed one was).
    pub fn start_node_at(id: &str, redis_url: &str, addr: SocketAddr) -> Worker {
        Worker::node(id, addr, &["--redis", redis_url])
    }

    /// The Node.js worker with the sharded adapter on a Redis Cluster (`SEEDS` as above).
    pub fn start_node_cluster(id: &str, seeds: &str) -> Worker {
        Worker::node(
            id,
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            &["--redis-cluster", seeds],
        )
    }

    fn node(id: &str, addr: SocketAddr, redis: &[&str]) -> Worker {
        let mut cmd = Command::new("node");
        cmd.arg(node_dir().join("worker.js"))
            .args(["--port", &addr.port().to_string(), "--id", id])
            .args(redis);
        Worker::spawn(id, addr, cmd)
    }

    fn spawn(id: &str, addr: SocketAddr, cmd: Command) -> Worker {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-worker-")
            .tempdir()
            .expect("temp dir");
        let mut proc = Proc::spawn(id, cmd, dir.path());
        let deadline = Instant::now() + Duration::from_secs(20);
        while blocking_get(addr, "/health").is_none_or(|(status, _)| status != 200) {
            assert!(proc.alive(), "worker {id} exited:\n{}", proc.log_tail(30));
            assert!(
                Instant::now() < deadline,
                "worker {id} not healthy:\n{}",
                proc.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Worker {
            id: id.to_string(),
            addr,
            proc,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Status and body of a GET on this worker.
    pub fn get(&self, path: &str) -> (u16, String) {
        blocking_get(self.addr, path).unwrap_or((0, String::new()))
    }

    /// Stop it hard (a crash, not a shutdown).
    pub fn kill(&mut self) {
        self.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }

    /// Status of `/ready`: 200 when its rooms span the workers (Redis up).
    pub fn ready(&self) -> u16 {
        self.get("/ready").0
    }
}

/// Proxy config body over `workers`: `/socket.io/` to the sticky backend `sockets` (60 s
/// server timeout for long-polls), the rest round robin to `api`, quick health checks (a
/// killed worker is DOWN within a second), then `extra`.
pub fn socketio_body(workers: &[Worker], extra: &str) -> String {
    let names: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let list = names.join(", ");
    let servers: String = workers
        .iter()
        .map(|w| format!("  {}: {{ address: {} }}\n", w.id, w.addr))
        .collect();
    format!(
        "routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [{list}] }}\n  sockets: {{ balance: sticky, servers: [{list}], timeouts: {{ server: 60s }} }}\n\
         servers:\n{servers}\
         health: {{ interval: 300ms, timeout: 200ms, rise: 1, fall: 1 }}\n{extra}"
    )
}
