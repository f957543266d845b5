//! A redis-server of the test's own, on a free port, without persistence.

use std::time::{Duration, Instant};

use super::process::Proc;

pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-redis-")
            .tempdir()
            .expect("temp dir");
        Redis::start_on(super::free_port(), dir)
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> Redis {
        let mut cmd = edgepin::up::redis_command(port);
        cmd.arg("--dir").arg(dir.path());
        let proc = Proc::spawn(&format!("redis-{port}"), cmd, dir.path());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { proc, port, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop Redis (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        self.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.proc.wait_exit(Duration::from_secs(5));
    }

    /// Start it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let fresh = Redis::start_on(self.port, dir);
        *self = fresh;
    }
}

/// A Redis Cluster of the test's own: `masters` masters with one replica each, on free
/// loopback ports (client and bus ports both picked, via `cluster-port`), a short node
/// timeout so a failover takes about a second. Every node is killed when dropped.
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

pub struct ClusterNode {
    pub port: u16,
    pub proc: Proc,
}

/// A node as `CLUSTER NODES` shows it: port, whether a master, its slot ranges.
pub type NodeView = (u16, bool, Vec<(u16, u16)>);

/// How long a node may be silent before its replica takes over (`cluster-node-timeout`).
pub const NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let (port, bus) = (super::free_port(), super::free_port());
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut cmd = std::process::Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // Replicas sync at once (no 5 s wait for more of them) and may always take
                // over, however fresh their copy: what a failover test needs.
                .args([
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-replica-validity-factor",
                    "0",
                ])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir);
            nodes.push(ClusterNode {
                port,
                proc: Proc::spawn(&format!("redis-{port}"), cmd, &node_dir),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &nodes {
            while std::net::TcpStream::connect(("127.0.0.1", n.port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server {} did not start", n.port);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create (redis-tools)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_healthy(masters, Duration::from_secs(20));
        cluster
    }

    /// `redis-cli -p PORT ARGS…`, its output.
    pub fn cli(port: u16, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Seed URLs, comma-separated: every node (a worker finds the rest itself).
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect();
        urls.join(",")
    }

    /// A live node's port, to ask about the cluster.
    fn live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| std::net::TcpStream::connect(("127.0.0.1", n.port)).is_ok())
            .map_or(0, |n| n.port)
    }

    /// (port, is master, slot ranges) of each node that is not failed, as a live node sees it.
    pub fn topology(&self) -> Vec<NodeView> {
        Self::cli(self.live(), &["cluster", "nodes"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                if f.get(2)?.contains("fail") || f.get(7) != Some(&"connected") {
                    return None;
                }
                let slots = f[8..]
                    .iter()
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|s| (s, s)),
                    })
                    .collect();
                Some((port, f[2].contains("master"), slots))
            })
            .collect()
    }

    /// The port of the master that serves `key` (e.g. a channel name).
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = Self::cli(self.live(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("keyslot");
        self.topology()
            .into_iter()
            .find(|(_, master, ranges)| *master && ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(port, ..)| port)
            .expect("a master serves the slot")
    }

    /// Wait until `masters` masters serve every slot, each with a replica in sync, and
    /// all agree.
    pub fn wait_healthy(&self, masters: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.topology();
            let serving = t.iter().filter(|(_, m, r)| *m && !r.is_empty()).count();
            let replicas = t.iter().filter(|(_, m, _)| !*m).count();
            let ok = Self::cli(self.live(), &["cluster", "info"]).contains("cluster_state:ok");
            let synced = t
                .iter()
                .filter(|(_, m, _)| !*m)
                .all(|(port, ..)| Self::cli(*port, &["info", "replication"]).contains("master_link_status:up"));
            if ok && serving == masters && replicas == masters && synced {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not healthy: {t:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the node on `port` (SIGKILL, by pid): a crash, as a failover test wants.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        node.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = node.proc.wait_exit(Duration::from_secs(5));
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
