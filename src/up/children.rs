//! The child processes of `edgepin up`: each in its own process group (a terminal's Ctrl-C
//! reaches `up` alone, which then stops the children in order), each output line copied to
//! our stderr prefixed with the child's name, stopped with SIGTERM then SIGKILL, always
//! reaped — dropping a `ChildProcess` that still runs kills it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct ChildProcess {
    pub name: String,
    child: std::process::Child,
    /// Threads copying stdout and stderr; they end when the child's pipes close.
    pumps: Vec<JoinHandle<()>>,
    pub started: Instant,
}

impl ChildProcess {
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<ChildProcess> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(name, out));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(name, err));
        }
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            pumps,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&self, sig: Signal) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Wait up to `timeout` for it to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped when this returns.
    pub fn stop(mut self, grace: Duration) {
        stop_all(std::slice::from_mut(&mut self), grace);
    }

    fn kill_and_reap(&mut self) {
        if self.exited().is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Stop several at once: SIGTERM to all, up to `grace` for them to exit, then SIGKILL.
pub fn stop_all(children: &mut [ChildProcess], grace: Duration) {
    for c in children.iter_mut() {
        if c.exited().is_none() {
            c.signal(Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for c in children.iter_mut() {
        match c.wait_exit(deadline.saturating_duration_since(Instant::now())) {
            Some(status) => tracing::info!(name = %c.name, pid = c.pid(), %status, "stopped"),
            None => tracing::warn!(name = %c.name, pid = c.pid(), "did not stop in time; killed"),
        }
        c.kill_and_reap();
    }
}

fn pump(name: &str, stream: impl Read + Send + 'static) -> JoinHandle<()> {
    let prefix = format!("{name:<8}| ");
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        // Lines, not strings: a child's output need not be UTF-8.
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            eprintln!("{prefix}{}", text.trim_end_matches(['\n', '\r']));
            line.clear();
        }
    })
}

/// `GET /health` answers 200 (a blocking probe with short timeouts).
pub fn healthy(addr: SocketAddr) -> bool {
    probe(
        addr,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .is_some_and(|reply| reply.starts_with(b"HTTP/1.1 200"))
}

/// Redis answers PING.
pub fn redis_answers(addr: SocketAddr) -> bool {
    probe(addr, b"PING\r\n").is_some_and(|reply| reply.starts_with(b"+PONG"))
}

fn probe(addr: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let timeout = Duration::from_secs(1);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(request).ok()?;
    let mut reply = vec![0; 64];
    let n = s.read(&mut reply).ok()?;
    reply.truncate(n);
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_child_is_reaped_and_a_stubborn_one_killed() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; exec sleep 30"]);
        let polite = ChildProcess::spawn("polite", cmd).unwrap();
        let pid = polite.pid();
        polite.stop(Duration::from_secs(5));
        assert!(kill(Pid::from_raw(pid as i32), None).is_err(), "gone");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while true; do sleep 0.05; done"]);
        let stubborn = ChildProcess::spawn("stubborn", cmd).unwrap();
        let pid = stubborn.pid();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        stubborn.stop(Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(kill(Pid::from_raw(pid as i32), None).is_err(), "killed");
    }
}
