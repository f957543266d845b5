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

/// integration/node/upgrade-clients.js: many socket.io-client sockets answering one
/// command at a time (connect, a `whoami` round, the events so far, close).
pub struct BulkClients {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl BulkClients {
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> BulkClients {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new("node")
            .arg(node_dir().join("upgrade-clients.js"))
            .args(args)
            .current_dir(node_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node upgrade-clients.js (run `make node-deps`)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("upgrade-clients.js: {line}"),
                }
            }
        });
        BulkClients { child, stdin, lines }
    }

    /// Send `command` and wait (up to `timeout`) for its answer.
    pub fn ask(&mut self, command: serde_json::Value, timeout: Duration) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.stdin, "{command}").expect("write to upgrade-clients.js");
        self.stdin.flush().expect("flush");
        let answer = self
            .lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no answer to {command} within {timeout:?}: {e}"));
        assert_eq!(answer["op"], command["op"], "answer to {command}: {answer}");
        answer
    }
}

impl Drop for BulkClients {
    fn drop(&mut self) {
        ask_to_exit(&mut self.stdin, &mut self.child, Duration::from_secs(5));
    }
}

/// Ask a Node driver on `stdin` to exit (`{"op":"exit"}`); kill it if it has not
/// within `grace`.
pub fn ask_to_exit(stdin: &mut std::process::ChildStdin, child: &mut std::process::Child, grace: Duration) {
    use std::io::Write;
    let _ = writeln!(stdin, "{}", serde_json::json!({ "op": "exit" }));
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
