//! Node.js fixtures: Socket.IO workers with @socket.io/redis-adapter (what users run
//! today) and the real socket.io-client driver, both from integration/node/.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::Proc;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("integration/node")
}

/// A Node.js Socket.IO worker (integration/node/worker.js).
pub struct NodeWorker {
    pub id: String,
    pub addr: SocketAddr,
    pub proc: Proc,
    dir: tempfile::TempDir,
}

impl NodeWorker {
    pub fn start(id: &str, redis_url: &str) -> NodeWorker {
        let port = super::free_port();
        NodeWorker::start_on(id, port, redis_url)
    }

    pub fn start_on(id: &str, port: u16, redis_url: &str) -> NodeWorker {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-node-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new("node");
        cmd.arg(node_dir().join("worker.js"))
            .args(["--port", &port.to_string(), "--id", id, "--redis", redis_url]);
        let proc = Proc::spawn(&format!("node-{id}"), cmd, dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut w = NodeWorker {
            id: id.to_string(),
            addr,
            proc,
            dir,
        };
        w.wait_healthy();
        w
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            assert!(
                self.proc.alive(),
                "node worker {} exited:\n{}",
                self.id,
                self.proc.log_tail(20)
            );
            if super::blocking_get(self.addr, "/health").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node worker {} not healthy:\n{}", self.id, self.proc.log_tail(20));
    }

    /// Stop it hard (a crash, not a shutdown).
    pub fn kill(&mut self) {
        self.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }

    /// Start it again on the same port.
    pub fn restart(&mut self, redis_url: &str) {
        self.kill();
        let fresh = NodeWorker::start_on(&self.id, self.addr.port(), redis_url);
        let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        *self = fresh;
    }
}

/// Run integration/node/clients.js with `args` and return its JSON report.
pub fn run_clients(args: &[&str], timeout: Duration) -> serde_json::Value {
    let dir = tempfile::Builder::new()
        .prefix("edgepin-clients-")
        .tempdir()
        .expect("temp dir");
    let mut cmd = Command::new("node");
    cmd.arg(node_dir().join("clients.js"))
        .args(args)
        .args(["--timeout", &timeout.as_millis().to_string()]);
    let mut proc = Proc::spawn("clients", cmd, dir.path());
    let status = proc.wait_exit(timeout + Duration::from_secs(30));
    assert!(status.is_some(), "clients.js did not finish:\n{}", proc.log_tail(20));
    let log = proc.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report from clients.js:\n{log}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad report ({e}): {line}"))
}

/// clients.js running in the background with `--hold`: the test acts between rounds.
pub struct HeldClients {
    proc: Proc,
    hold: PathBuf,
    _dir: tempfile::TempDir,
}

impl HeldClients {
    pub fn start(args: &[&str], timeout: Duration) -> HeldClients {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-clients-")
            .tempdir()
            .expect("temp dir");
        let hold = dir.path().join("release");
        let mut cmd = Command::new("node");
        cmd.arg(node_dir().join("clients.js"))
            .args(args)
            .args(["--timeout", &timeout.as_millis().to_string()])
            .arg("--hold")
            .arg(&hold);
        let proc = Proc::spawn("clients", cmd, dir.path());
        HeldClients { proc, hold, _dir: dir }
    }

    /// Wait for the first round; returns its report line.
    pub fn wait_held(&mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.proc.log().lines().find(|l| l.starts_with("{\"held\"")) {
                return serde_json::from_str(line).expect("held line");
            }
            assert!(
                self.proc.alive() && Instant::now() < deadline,
                "clients never held:\n{}",
                self.proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Let the clients go on, and wait for the final report.
    pub fn release_and_finish(mut self, timeout: Duration) -> serde_json::Value {
        std::fs::write(&self.hold, b"go").expect("release");
        assert!(
            self.proc.wait_exit(timeout).is_some(),
            "clients did not finish:\n{}",
            self.proc.log_tail(20)
        );
        let log = self.proc.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"clients\""))
            .expect("final report");
        serde_json::from_str(line).expect("report")
    }
}
