//! The process's listening sockets — https, http, stats and the upgrade socket — bound
//! here at start, or taken over from the process being upgraded.
//!
//! A socket handed over is the very same kernel socket (the old process's descriptor
//! duplicated into this one), so connections waiting in its accept queue are not lost
//! and no connect is ever refused: whichever process accepts, the client is answered.
//! A configured address the old process did not listen on is bound fresh; one it
//! listened on that the config no longer names is simply closed here.
//!
//! Proxy listeners are bound with pingora's backlog (65,535, capped by the kernel's
//! `somaxconn`) and `SO_REUSEADDR`, as pingora's own listeners were. The upgrade socket
//! lives beside `reload.pidfile` (`<name>.upgrade.sock`), mode 0600; who may use it is
//! checked again by peer credentials when a connection arrives (`control`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::wire::Handed;
use crate::config::Config;

/// pingora's listen backlog (`LISTENER_BACKLOG`): a burst of reconnecting clients waits
/// in the queue rather than being dropped.
const BACKLOG: i32 = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the upgrade socket {path}: {source}")]
    Control { path: String, source: std::io::Error },
}

/// Which listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Https,
    Http,
    Stats,
    Upgrade,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Https => "https",
            Role::Http => "http",
            Role::Stats => "stats",
            Role::Upgrade => "upgrade",
        }
    }
}

/// The listening sockets of this process.
#[derive(Debug, Default)]
pub struct Sockets {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub stats: Option<TcpListener>,
    pub upgrade: Option<UnixListener>,
}

/// Sockets received from the process being upgraded, not yet claimed.
#[derive(Debug, Default)]
pub struct Inherited {
    tcp: Vec<(SocketAddr, TcpListener)>,
    upgrade: Option<UnixListener>,
}

impl Inherited {
    /// Pair the descriptors received with their descriptions (same order); a socket whose
    /// description does not parse, or that is not what it says, is closed.
    pub fn new(handed: &[Handed], fds: Vec<OwnedFd>) -> Inherited {
        let mut out = Inherited::default();
        for (h, fd) in handed.iter().zip(fds) {
            if h.role == Role::Upgrade.as_str() {
                out.upgrade = Some(UnixListener::from(fd));
                continue;
            }
            let listener = TcpListener::from(fd);
            match (h.address.parse::<SocketAddr>(), listener.local_addr()) {
                (Ok(said), Ok(is)) if said == is => out.tcp.push((is, listener)),
                _ => {
                    tracing::warn!(role = %h.role, address = %h.address, "a handed-over socket is not what it says; closed")
                }
            }
        }
        out
    }

    fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let i = self.tcp.iter().position(|(a, _)| *a == addr)?;
        Some(self.tcp.swap_remove(i).1)
    }

    /// Addresses handed over that this process does not use (closed when dropped).
    pub fn unclaimed(&self) -> Vec<SocketAddr> {
        self.tcp.iter().map(|(a, _)| *a).collect()
    }
}

/// The upgrade socket's path for a config: beside `reload.pidfile`; none without one.
pub fn upgrade_socket_path(config: &Config) -> Option<PathBuf> {
    config.reload.pidfile.as_deref().map(beside)
}

/// The upgrade socket beside `pidfile` (`<name>.upgrade.sock`).
pub fn beside(pidfile: &Path) -> PathBuf {
    let stem = pidfile
        .file_stem()
        .map_or_else(|| "edgepin".into(), |s| s.to_string_lossy());
    pidfile.with_file_name(format!("{stem}.upgrade.sock"))
}

impl Sockets {
    /// The sockets `config` asks for: taken from `inherited` where the address matches,
    /// else bound now. `upgrade` is the upgrade socket's path (`None`: no upgrades, as
    /// under `edgepin up`).
    pub fn open(config: &Config, inherited: &mut Inherited, upgrade: Option<&Path>) -> Result<Sockets, SocketError> {
        let mut claim = |what: &'static str, addr: Option<SocketAddr>| -> Result<Option<TcpListener>, SocketError> {
            let Some(addr) = addr else { return Ok(None) };
            match inherited.take(addr) {
                Some(l) => Ok(Some(l)),
                None => bind(addr)
                    .map(Some)
                    .map_err(|source| SocketError::Bind { what, addr, source }),
            }
        };
        let https = claim("https", config.listen.https.filter(|_| config.tls.is_some()))?;
        let http = claim("http", config.listen.http)?;
        let stats = claim("stats", config.listen.stats)?;
        let upgrade = match (upgrade, inherited.upgrade.take()) {
            (None, _) => None,
            (Some(_), Some(l)) => Some(l),
            (Some(path), None) => Some(bind_upgrade(path).map_err(|source| SocketError::Control {
                path: path.display().to_string(),
                source,
            })?),
        };
        Ok(Sockets {
            https,
            http,
            stats,
            upgrade,
        })
    }

    /// Each socket with its description, to hand over (the descriptors in that order).
    pub fn handed(&self) -> (Vec<Handed>, Vec<BorrowedFd<'_>>) {
        let mut out = (Vec::new(), Vec::new());
        let tcp = [
            (Role::Https, &self.https),
            (Role::Http, &self.http),
            (Role::Stats, &self.stats),
        ];
        for (role, l) in tcp {
            if let Some(l) = l
                && let Ok(addr) = l.local_addr()
            {
                out.0.push(Handed {
                    role: role.as_str().into(),
                    address: addr.to_string(),
                });
                out.1.push(l.as_fd());
            }
        }
        if let Some(u) = &self.upgrade {
            let path = u.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
            out.0.push(Handed {
                role: Role::Upgrade.as_str().into(),
                address: path.map(|p| p.display().to_string()).unwrap_or_default(),
            });
            out.1.push(u.as_fd());
        }
        out
    }
}

/// A TCP listener on `addr` (non-blocking, close-on-exec, `SO_REUSEADDR`, backlog
/// [`BACKLOG`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// The upgrade socket at `path`, mode 0600 (a stale file from a process that died is
/// replaced).
fn bind_upgrade(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(Path::new("/etc/edgepin/proxy.yaml"), text).unwrap()
    }

    const BODY: &str = "routes: [{ path_prefix: /, backend: b }]\nbackends: { b: { servers: [w] } }\n\
                        servers: { w: { address: 127.0.0.1:3001 } }\n";

    #[test]
    fn the_upgrade_socket_lives_beside_the_pidfile() {
        let c = config(&format!(
            "listen: {{ http: 127.0.0.1:1 }}\nreload: {{ pidfile: /run/edgepin/edgepin.pid }}\n{BODY}"
        ));
        assert_eq!(
            upgrade_socket_path(&c).unwrap(),
            PathBuf::from("/run/edgepin/edgepin.upgrade.sock")
        );
        let c = config(&format!("listen: {{ http: 127.0.0.1:1 }}\n{BODY}"));
        assert_eq!(upgrade_socket_path(&c), None, "no pidfile, no upgrades");
    }

    #[test]
    fn inherited_sockets_are_reused_by_address_and_new_addresses_bound() {
        let kept = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let dropped = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (kept_addr, dropped_addr) = (kept.local_addr().unwrap(), dropped.local_addr().unwrap());
        let fresh = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let handed = vec![
            Handed {
                role: "http".into(),
                address: kept_addr.to_string(),
            },
            Handed {
                role: "stats".into(),
                address: dropped_addr.to_string(),
            },
        ];
        let mut inherited = Inherited::new(&handed, vec![kept.into(), dropped.into()]);
        let c = config(&format!("listen: {{ http: {kept_addr}, stats: {fresh} }}\n{BODY}"));
        let sockets = Sockets::open(&c, &mut inherited, None).unwrap();
        assert_eq!(sockets.http.as_ref().unwrap().local_addr().unwrap(), kept_addr);
        assert_eq!(sockets.stats.as_ref().unwrap().local_addr().unwrap(), fresh);
        assert_eq!(inherited.unclaimed(), vec![dropped_addr]);
        let (described, fds) = sockets.handed();
        assert_eq!(described.len(), 2);
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn a_taken_port_names_the_listener() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr().unwrap();
        let c = config(&format!("listen: {{ http: {addr} }}\n{BODY}"));
        let err = Sockets::open(&c, &mut Inherited::default(), None).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("cannot listen on {addr} (http)")),
            "{err}"
        );
    }

    #[test]
    fn the_upgrade_socket_is_private_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/edgepin.upgrade.sock");
        drop(bind_upgrade(&path).unwrap());
        let l = bind_upgrade(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(l);
    }
}
