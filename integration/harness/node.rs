//! Real socket.io-client sessions in bulk (integration/node/clients.js, arrivals.js): a
//! run to its report, or a run held between rounds while the test changes something.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::Proc;
use super::worker::node_dir;

/// Run integration/node/clients.js with `args` and return its JSON report.
pub fn run_clients<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> serde_json::Value {
    run_script("clients.js", args, timeout)
}

/// Run another script of integration/node that takes `--timeout` and prints a JSON
/// report as its last line; the report.
pub fn run_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S], timeout: Duration) -> serde_json::Value {
    let dir = tempfile::Builder::new()
        .prefix("edgepin-clients-")
        .tempdir()
        .expect("temp dir");
    let mut cmd = Command::new("node");
    cmd.arg(node_dir().join(script))
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
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> HeldClients {
        HeldClients::start_script("clients.js", args, timeout)
    }

    /// Another script of integration/node that takes `--timeout` and `--hold FILE` and
    /// prints a `{"held"…}` line, then a JSON report as its last line.
    pub fn start_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S], timeout: Duration) -> HeldClients {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-clients-")
            .tempdir()
            .expect("temp dir");
        let hold = dir.path().join("release");
        let mut cmd = Command::new("node");
        cmd.arg(node_dir().join(script))
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
            .find(|l| l.starts_with('{') && !l.starts_with("{\"held\""))
            .expect("final report");
        serde_json::from_str(line).expect("report")
    }
}

/// clients.js arguments that reach `proxy` over TLS, trusting the test CA.
pub fn tls_target(proxy: &super::Proxy) -> [String; 4] {
    [
        "--url".into(),
        format!("https://127.0.0.1:{}", proxy.https.port()),
        "--ca".into(),
        super::certs().ca_cert.display().to_string(),
    ]
}
