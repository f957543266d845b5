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
