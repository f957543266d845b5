//! The edgepin binary under test, on loopback ephemeral ports with a generated config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::client::{self, Target};
use super::process::Proc;
use super::{certs, free_port};

/// How to start a proxy. `body` is the YAML after `listen:` and `tls:` (routes, backends,
/// servers, health, ...); the harness adds listeners on free ports, TLS with the test
/// certificates, and a pidfile.
pub struct ProxyBuilder {
    body: String,
    redirect: bool,
    https: bool,
    extra_listen: String,
    env: Vec<(String, String)>,
    drain_timeout: String,
    /// More keys under `reload:` (e.g. `hard_stop_after: 10s`).
    reload_extra: String,
    tls_files: Option<(PathBuf, PathBuf)>,
    h2: bool,
    stats_auth: Option<(String, String)>,
    fd_limit: Option<u32>,
    /// Fixed (https, http) addresses instead of free ones chosen at start.
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// The whole `tls:` section, instead of the test certificate.
    tls_yaml: Option<String>,
}

pub struct Proxy {
    pub proc: Proc,
    /// Processes `edgepin upgrade` started for this proxy (stopped at drop).
    pub successors: std::sync::Mutex<Vec<u32>>,
    pub dir: tempfile::TempDir,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub stats: SocketAddr,
    pub config: PathBuf,
    /// `Authorization` header value for the stats listener, when auth is on.
    pub stats_authorization: Option<String>,
}

impl ProxyBuilder {
    /// The http listener redirects to https (default: it proxies, to keep tests short).
    pub fn redirect(mut self, on: bool) -> Self {
        self.redirect = on;
        self
    }
    /// More keys under `listen:` (e.g. `redirect_port: 8443`).
    pub fn listen(mut self, yaml: &str) -> Self {
        self.extra_listen.push_str(yaml);
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// `reload.drain_timeout` (default 5s).
    pub fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = d.to_string();
        self
    }
    /// More keys under `reload:`, as a flow mapping's entries (`hard_stop_after: 10s`).
    pub fn reload(mut self, entries: &str) -> Self {
        self.reload_extra.push_str(", ");
        self.reload_extra.push_str(entries);
        self
    }
    /// Serve this certificate and key instead of the shared test ones.
    pub fn tls_files(mut self, cert: &Path, key: &Path) -> Self {
        self.tls_files = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }
    /// Protect the stats listener with basic auth (the password goes by env var); the
    /// harness's own stats requests then authenticate.
    pub fn stats_auth(mut self, user: &str, password: &str) -> Self {
        self.stats_auth = Some((user.into(), password.into()));
        self.env.push(("EDGEPIN_TEST_STATS_PASSWORD".into(), password.into()));
        self
    }

    /// Offer HTTP/2 by ALPN on the https listener.
    pub fn h2(mut self) -> Self {
        self.h2 = true;
        self
    }
    /// Run the proxy under this file descriptor limit (soft and hard, `ulimit -n`).
    pub fn fd_limit(mut self, n: u32) -> Self {
        self.fd_limit = Some(n);
        self
    }
    /// Listen on these (https, http) addresses (e.g. ports an ACME server was told).
    pub fn at(mut self, https: SocketAddr, http: SocketAddr) -> Self {
        self.addrs = Some((https, http));
        self
    }
    /// Use this YAML as the `tls:` section (a flow mapping, e.g. `{ acme: {...} }`).
    pub fn tls_yaml(mut self, yaml: &str) -> Self {
        self.tls_yaml = Some(yaml.to_string());
        self
    }
    pub fn no_https(mut self) -> Self {
        self.https = false;
        self
    }

    pub fn start(self) -> Proxy {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-test-")
            .tempdir()
            .expect("temp dir");
        let (https, http) = self.addrs.unwrap_or_else(|| (free_addr(), free_addr()));
        let stats = free_addr();
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, self.render(https, http, stats, dir.path())).expect("write config");
        let mut cmd = match self.fd_limit {
            // The shell sets the limit, then becomes edgepin (same pid).
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_edgepin"));
                sh
            }
            None => Command::new(env!("CARGO_BIN_EXE_edgepin")),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info,edgepin::access=warn,pingora=error");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("edgepin", cmd, dir.path());
        let stats_authorization = self
            .stats_auth
            .as_ref()
            .map(|(user, password)| super::basic_auth(user, password));
        let mut proxy = Proxy {
            proc,
            successors: std::sync::Mutex::default(),
            dir,
            https,
            http,
            stats,
            config,
            stats_authorization,
        };
        proxy.wait_ready();
        proxy
    }

    fn render(&self, https: SocketAddr, http: SocketAddr, stats: SocketAddr, dir: &Path) -> String {
        let c = certs();
        let mut y = String::from("listen:\n");
        if self.https {
            y.push_str(&format!("  https: {https}\n"));
        }
        y.push_str(&format!(
            "  http: {http}\n  stats: {stats}\n  redirect: {}\n{}",
            self.redirect, self.extra_listen
        ));
        if let Some(tls) = self.tls_yaml.as_ref().filter(|_| self.https) {
            y.push_str(&format!("tls: {tls}\n"));
        } else if self.https {
            let (cert, key) = self.tls_files.clone().unwrap_or((c.cert.clone(), c.key.clone()));
            y.push_str(&format!(
                "tls: {{ cert: {}, key: {}, h2: {} }}\n",
                cert.display(),
                key.display(),
                self.h2
            ));
        }
        y.push_str(&format!(
            "threads: 2\nreload: {{ pidfile: {}, drain_timeout: {}{} }}\n",
            dir.join("edgepin.pid").display(),
            self.drain_timeout,
            self.reload_extra
        ));
        if let Some((user, _)) = &self.stats_auth {
            y.push_str(&format!(
                "stats: {{ auth: {{ user: {user}, password_env: EDGEPIN_TEST_STATS_PASSWORD }} }}\n"
            ));
        }
        y.push_str(&self.body);
        y
    }
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let config = self.config.display().to_string();
        let successors = std::mem::take(&mut *self.successors.lock().unwrap_or_else(|p| p.into_inner()));
        for pid in successors {
            // Only a process of this proxy's config (a pid may be reused by then).
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&config));
            if !ours || exited(pid) {
                continue;
            }
            let target = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(target, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !exited(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited(pid) {
                let _ = nix::sys::signal::kill(target, Signal::SIGKILL);
            }
        }
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

impl Proxy {
    pub fn builder(body: &str) -> ProxyBuilder {
        ProxyBuilder {
            body: body.to_string(),
            redirect: false,
            https: true,
            extra_listen: String::new(),
            env: Vec::new(),
            drain_timeout: "5s".into(),
            reload_extra: String::new(),
            tls_files: None,
            h2: false,
            stats_auth: None,
            fd_limit: None,
            addrs: None,
            tls_yaml: None,
        }
    }

    /// Start with the defaults (https + proxying http + stats).
    pub fn start(body: &str) -> Proxy {
        Proxy::builder(body).start()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            assert!(
                self.proc.alive(),
                "edgepin exited during start:\n{}",
                self.proc.log_tail(30)
            );
            let ok = super::blocking_get(self.stats, "/health").is_some_and(|(status, _)| status == 200);
            if ok && std::net::TcpStream::connect(self.http).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("edgepin did not become ready:\n{}", self.proc.log_tail(30));
    }

    pub fn tls(&self) -> Target {
        Target::tls(self.https)
    }

    pub fn plain(&self) -> Target {
        Target::plain(self.http)
    }

    pub fn stats_target(&self) -> Target {
        Target::plain(self.stats)
    }

    /// Replace the config file (the next SIGHUP loads it).
    pub fn write_config(&self, body: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        // Keep the harness-made head (listen, tls, threads, reload), replace the body.
        let head_end = text
            .find("\nreload: ")
            .and_then(|i| text[i + 1..].find('\n').map(|j| i + 1 + j + 1))
            .expect("config head");
        std::fs::write(&self.config, format!("{}{body}", &text[..head_end])).expect("write config");
    }

    pub fn sighup(&self) {
        self.proc.signal(Signal::SIGHUP);
    }

    /// A server's health as last logged by the proxy (`Up`, `Down`, `Checking`).
    pub fn logged_health(&self, server: &str) -> Option<String> {
        let needle = format!("server state changed server={server} ");
        let log = self.proc.log();
        let line = log.lines().rev().find(|l| l.contains(&needle))?;
        let to = line.split(" to=").nth(1)?;
        Some(to.split_whitespace().next()?.trim_matches('"').to_string())
    }

    /// Wait until the proxy logs `server` going to `health`; how long it took.
    pub async fn wait_health(&self, server: &str, health: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        while self.logged_health(server).as_deref() != Some(health) {
            assert!(
                started.elapsed() < timeout,
                "{server} not {health} after {timeout:?}:\n{}",
                self.proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// `/stats.json` (the harness configures no stats auth unless a test does).
    pub async fn stats(&self) -> serde_json::Value {
        let headers: Vec<String> = self
            .stats_authorization
            .iter()
            .map(|a| format!("Authorization: {a}"))
            .collect();
        let mut conn = client::Conn::open(&self.stats_target()).await.expect("stats listener");
        conn.request("GET", "/stats.json", &headers, b"")
            .await
            .expect("stats.json")
            .json()
    }

    /// The stats of one listener (`http` or `https`) from `stats.json`.
    pub async fn frontend_stats(&self, name: &str) -> serde_json::Value {
        let stats = self.stats().await;
        stats["frontends"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("listener {name} in stats: {stats}"))
    }

    /// POST `json` to an admin endpoint of the stats listener (needs `stats_auth`).
    pub async fn admin(&self, path: &str, json: &str) -> client::Response {
        let auth = self
            .stats_authorization
            .as_ref()
            .expect("admin actions need stats_auth");
        let headers = [
            format!("Authorization: {auth}"),
            "Content-Type: application/json".to_string(),
        ];
        let mut conn = client::Conn::open(&self.stats_target()).await.expect("stats listener");
        conn.request("POST", path, &headers, json.as_bytes())
            .await
            .expect("admin request")
    }

    /// One backend's entry in `/stats.json`.
    pub async fn backend_stats(&self, backend: &str) -> serde_json::Value {
        let s = self.stats().await;
        s["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["name"] == backend))
            .cloned()
            .unwrap_or_else(|| panic!("no backend {backend} in {s}"))
    }

    /// One (backend, server) entry in `/stats.json`.
    pub async fn server_stats(&self, backend: &str, server: &str) -> serde_json::Value {
        let b = self.backend_stats(backend).await;
        b["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == server))
            .cloned()
            .unwrap_or_else(|| panic!("no server {server} in {b}"))
    }

    /// The config generation the proxy serves.
    pub async fn generation(&self) -> u64 {
        self.status().await["generation"].as_u64().expect("generation")
    }

    /// Wait (up to 10 s) until the proxy serves config generation `wanted`.
    pub async fn wait_generation(&self, wanted: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.generation().await != wanted {
            assert!(
                Instant::now() < deadline,
                "generation {wanted} never came:\n{}",
                self.proc.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Run `edgepin upgrade -c <config> ARGS`: whether it succeeded, and what it printed.
    /// The new process (the pidfile's pid after a success) is stopped when the proxy is
    /// dropped.
    pub fn upgrade(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_edgepin"))
            .arg("upgrade")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run edgepin upgrade");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            let pid = self.serving_pid();
            self.successors.lock().unwrap().push(pid);
        }
        (out.status.success(), text)
    }

    /// The pid in the pidfile: the process serving now.
    pub fn serving_pid(&self) -> u32 {
        let pidfile = self.dir.path().join("edgepin.pid");
        let text = std::fs::read_to_string(&pidfile).expect("pidfile");
        text.trim().parse().expect("a pid in the pidfile")
    }

    /// The proxy's own status (`/health` on the stats listener).
    pub async fn status(&self) -> serde_json::Value {
        client::get(&self.stats_target(), "/health")
            .await
            .expect("stats /health")
            .json()
    }
}
