//! A real DNS server for the discovery tests: `dnsmasq` on a loopback port of its own. It
//! answers for `*.test` from a hosts file the test rewrites (dnsmasq re-reads it on
//! SIGHUP) and from SRV records fixed at start; a `.test` name it does not know is
//! NXDOMAIN. `pause` and `resume` (SIGSTOP, SIGCONT) make it stop answering and start
//! again.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::free_port;
use super::process::Proc;

/// One SRV record: `name` → `target:port` with `weight` (priority 0).
pub struct Srv<'a> {
    pub name: &'a str,
    pub target: &'a str,
    pub port: u16,
    pub weight: u16,
}

pub struct Dns {
    pub proc: Proc,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    hosts: PathBuf,
    names: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    _dir: tempfile::TempDir,
}

/// TTL of every answer: longer than any test's `discover.interval`, so the interval is
/// what paces resolutions.
const TTL: u32 = 60;

impl Dns {
    /// dnsmasq with these SRV records and no names yet.
    pub fn start(srv: &[Srv<'_>]) -> Dns {
        let dir = tempfile::Builder::new()
            .prefix("edgepin-dns-")
            .tempdir()
            .expect("temp dir");
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "").expect("write hosts");
        for attempt in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let conf = dir.path().join("dnsmasq.conf");
            let mut c = format!(
                "port={}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
                 addn-hosts={}\nlocal=/test/\nlocal-ttl={TTL}\npid-file={}\n",
                addr.port(),
                hosts.display(),
                dir.path().join("dnsmasq.pid").display(),
            );
            // As root dnsmasq would switch to `nobody`, who cannot read the test's files.
            if nix::unistd::geteuid().is_root() {
                c.push_str("user=root\n");
            }
            for r in srv {
                c.push_str(&format!("srv-host={},{},{},0,{}\n", r.name, r.target, r.port, r.weight));
            }
            std::fs::write(&conf, c).expect("write dnsmasq.conf");
            // Debian puts it in /usr/sbin, which a non-root PATH may lack.
            let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("dnsmasq");
            let mut cmd = Command::new(bin);
            cmd.arg("--keep-in-foreground")
                .arg(format!("--conf-file={}", conf.display()));
            let mut proc = Proc::spawn(&format!("dnsmasq-{attempt}"), cmd, dir.path());
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc.alive() && Instant::now() < deadline {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Dns {
                        proc,
                        addr,
                        hosts,
                        names: Mutex::default(),
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Most likely the port was taken meanwhile: another one.
            eprintln!("dnsmasq did not start on {addr}:\n{}", proc.log_tail(10));
        }
        panic!("dnsmasq did not start (is it installed? `make integration` installs dnsmasq-base)");
    }

    /// `name` answers these addresses from now on (none: NXDOMAIN).
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        let mut names = self.names.lock().unwrap();
        if ips.is_empty() {
            names.remove(name);
        } else {
            names.insert(name.to_string(), ips.to_vec());
        }
        let text: String = names
            .iter()
            .flat_map(|(n, ips)| ips.iter().map(move |ip| format!("{ip} {n}\n")))
            .collect();
        std::fs::write(&self.hosts, text).expect("write hosts");
        self.proc.signal(Signal::SIGHUP);
        // dnsmasq re-reads the file at once; give it a moment before the test goes on.
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Stop answering (the process is stopped, its sockets stay open).
    pub fn pause(&self) {
        self.proc.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.proc.signal(Signal::SIGCONT);
    }

    /// The YAML value of `discover.resolvers` that asks this server.
    pub fn resolvers(&self) -> String {
        format!("[\"{}\"]", self.addr)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        // A stopped process cannot act on SIGINT: let it run first.
        self.resume();
    }
}

/// 127.0.0.`n`.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}
