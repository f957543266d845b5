//! Dropping root (`run_as: { user, group }`): edgepin starts as root so it can bind
//! :443/:80 and read private keys, then becomes `user` before it serves anyone.
//!
//! The moment: pingora binds its listeners when its services start, inside `run`, with
//! no hook after the bind. So a background service ([`Dropper`]) watches
//! `/proc/self/net/tcp{,6}` until every proxy listener is a LISTEN socket held by one of
//! this process's descriptors, then switches (supplementary groups, gid, uid — real,
//! effective and saved — through glibc, which applies them to every thread) and checks
//! that it took on every thread and cannot be undone. Until then the [`Gate`] holds
//! accepted connections back (the frontend awaits it), so nothing is served as root; if
//! the switch fails the process exits instead of serving. Before services start,
//! [`prepare`] gives the ACME storage directory to the user, so renewals keep working,
//! and the pidfile with its saved config, so reloads and the exit can update them.
//! The stats listener is bound before pingora starts, so it is covered too.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::unistd::{Gid, Uid};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use crate::config::{Config, RunAs};

/// Longest wait for pingora to bind the listeners before giving up (and exiting).
const BIND_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("run_as {user}: edgepin runs as uid {uid}, not root, and cannot switch users")]
    NotRoot { user: String, uid: u32 },
    #[error("run_as: {what}: {source}")]
    Syscall { what: String, source: nix::Error },
    #[error("run_as: {0}")]
    Check(String),
    #[error("run_as: preparing {path}: {source}")]
    Prepare { path: String, source: std::io::Error },
    #[error("run_as: the listeners {0:?} were not bound within {BIND_WAIT:?}")]
    NotBound(Vec<SocketAddr>),
}

/// Opens once privileges are settled; accepted connections wait for it.
#[derive(Debug)]
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn new(open: bool) -> Gate {
        Gate(watch::Sender::new(open))
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Wait until the gate is open (at once when it is).
    pub async fn ready(&self) {
        if self.is_open() {
            return;
        }
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Before services start: refuse a `run_as` that cannot be honoured, and hand the ACME
/// storage directory (and the files in it), the pidfile and its saved config to the user.
pub fn prepare(config: &Config) -> Result<(), PrivilegeError> {
    let Some(r) = &config.run_as else { return Ok(()) };
    let uid = Uid::effective();
    if !uid.is_root() {
        return if uid.as_raw() == r.uid {
            Ok(())
        } else {
            Err(PrivilegeError::NotRoot {
                user: r.user.clone(),
                uid: uid.as_raw(),
            })
        };
    }
    if let Some(acme) = config.tls.as_ref().and_then(|t| t.acme.as_ref()) {
        give(&acme.storage, r)?;
    }
    // Written as root just before: the user rewrites the saved copy at each reload and
    // removes the pidfile at exit (the directory stays as it is: it may be /run).
    if let Some(pidfile) = &config.reload.pidfile {
        for file in [pidfile.clone(), crate::loaded::loaded_copy(pidfile)] {
            if file.is_file() {
                std::os::unix::fs::chown(&file, Some(r.uid), Some(r.gid)).map_err(|source| {
                    PrivilegeError::Prepare {
                        path: file.display().to_string(),
                        source,
                    }
                })?;
            }
        }
    }
    Ok(())
}

/// Create `dir` if needed and make it and its files `r`'s (mode of the dir 0700).
fn give(dir: &Path, r: &RunAs) -> Result<(), PrivilegeError> {
    let err = |source| PrivilegeError::Prepare {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(r.uid), Some(r.gid)).map_err(|source| PrivilegeError::Prepare {
            path: p.display().to_string(),
            source,
        })
    };
    chown(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(err)?;
    for entry in std::fs::read_dir(dir).map_err(err)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            chown(&entry.path())?;
        }
    }
    Ok(())
}

/// Become `r`: supplementary groups, then gid, then uid (real, effective, saved), and
/// check it took on every thread and that root cannot be regained.
pub fn drop_to(r: &RunAs) -> Result<(), PrivilegeError> {
    let (uid, gid) = (Uid::from_raw(r.uid), Gid::from_raw(r.gid));
    let sys = |what: &str| {
        let what = what.to_string();
        move |source| PrivilegeError::Syscall { what, source }
    };
    if Uid::effective() == uid && Uid::current() == uid {
        return check(r);
    }
    nix::unistd::setgroups(&[gid]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    check(r)
}

fn check(r: &RunAs) -> Result<(), PrivilegeError> {
    let ids = nix::unistd::getresuid().map_err(|source| PrivilegeError::Syscall {
        what: "getresuid".into(),
        source,
    })?;
    let gids = nix::unistd::getresgid().map_err(|source| PrivilegeError::Syscall {
        what: "getresgid".into(),
        source,
    })?;
    let all = |a: u32, b: u32, c: u32, want: u32| a == want && b == want && c == want;
    if !all(ids.real.as_raw(), ids.effective.as_raw(), ids.saved.as_raw(), r.uid) {
        return Err(PrivilegeError::Check(format!("uids are {ids:?}, not {}", r.uid)));
    }
    if !all(gids.real.as_raw(), gids.effective.as_raw(), gids.saved.as_raw(), r.gid) {
        return Err(PrivilegeError::Check(format!("gids are {gids:?}, not {}", r.gid)));
    }
    if r.uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Check("root could be regained".into()));
    }
    // glibc applies set*id to every thread; make sure (a thread left as root would serve
    // as root).
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| PrivilegeError::Check(e.to_string()))?;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let want_uid = format!("{0}\t{0}\t{0}\t{0}", r.uid);
        let want_gid = format!("{0}\t{0}\t{0}\t{0}", r.gid);
        let line = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        // A thread that exited meanwhile has no status: nothing to check.
        if status.is_empty() {
            continue;
        }
        if line("Uid:") != want_uid || line("Gid:") != want_gid {
            return Err(PrivilegeError::Check(format!(
                "thread {:?} still has Uid {} Gid {}",
                task.file_name(),
                line("Uid:"),
                line("Gid:")
            )));
        }
    }
    Ok(())
}

/// Whether every address in `addrs` is a listening TCP socket held by this process.
pub fn listeners_bound(addrs: &[SocketAddr]) -> bool {
    let ours = own_socket_inodes();
    let listening: Vec<(SocketAddr, u64)> = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().skip(1).filter_map(parse_listen_line).collect::<Vec<_>>())
        .collect();
    addrs
        .iter()
        .all(|a| listening.iter().any(|(l, inode)| l == a && ours.contains(inode)))
}

fn own_socket_inodes() -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// One line of /proc/net/tcp{,6}: the local address and inode of a LISTEN socket.
fn parse_listen_line(line: &str) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[3] != "0A" {
        return None;
    }
    let (ip, port) = f[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 32-bit word is printed as the host reads the network-order bytes.
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), f[9].parse().ok()?))
}

/// Background service: once the proxy's listeners are bound, become `run_as` and open the
/// gate; exit the process if that fails.
pub struct Dropper {
    pub gate: Arc<Gate>,
    pub listeners: Vec<SocketAddr>,
    pub run_as: RunAs,
}

#[async_trait]
impl BackgroundService for Dropper {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let started = Instant::now();
        while !listeners_bound(&self.listeners) {
            if started.elapsed() > BIND_WAIT {
                refuse(PrivilegeError::NotBound(self.listeners.clone()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match drop_to(&self.run_as) {
            Ok(()) => {
                tracing::info!(
                    user = %self.run_as.user,
                    uid = self.run_as.uid,
                    group = %self.run_as.group,
                    gid = self.run_as.gid,
                    after_ms = started.elapsed().as_millis() as u64,
                    "listeners bound; running as run_as"
                );
                self.gate.open();
            }
            Err(e) => refuse(e),
        }
    }
}

/// Serving as root when the config says otherwise is worse than not serving.
fn refuse(e: PrivilegeError) -> ! {
    tracing::error!(error = %e, "cannot drop privileges: refusing to serve");
    eprintln!("{e}");
    std::process::exit(78)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_lines_of_both_families() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let (a, inode) = parse_listen_line(v4).unwrap();
        assert_eq!((a, inode), ("127.0.0.1:8080".parse().unwrap(), 12345));
        let v6 = "   1: 00000000000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
        let (a, inode) = parse_listen_line(v6).unwrap();
        assert_eq!((a, inode), ("[::1]:443".parse().unwrap(), 777));
        let established = v4.replace(" 0A ", " 01 ");
        assert!(parse_listen_line(&established).is_none());
    }

    #[test]
    fn sees_own_listener_and_not_a_foreign_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listeners_bound(&[addr]));
        drop(l);
        assert!(!listeners_bound(&[addr]));
    }

    #[tokio::test]
    async fn gate_releases_waiters_when_opened() {
        let gate = Arc::new(Gate::new(false));
        let g = Arc::clone(&gate);
        let waiter = tokio::spawn(async move { g.ready().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        gate.open();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        Gate::new(true).ready().await;
    }
}
