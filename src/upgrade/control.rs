//! The serving process's side of the upgrade socket: who may talk to it, running an
//! upgrade (start the new binary, hand it the sockets and state, commit once it is
//! ready), and hearing from the processes that drain before it.
//!
//! Each connection gets a thread of its own with blocking I/O (a handful of connections
//! per upgrade). Only a process of the same user, or root, is answered (peer
//! credentials); the new process must also present the token it was started with.
//! After the hand-over the upgrading thread stays on as this process's reporter
//! ([`report`]): how much is left and the sessions it learns or ends, to whichever
//! process serves now — over the first connection, and after a later upgrade closed
//! that, over a new one to the same socket path.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::carried;
use super::wire::{Link, Message, SidChange, WireError};
use crate::runtime::Shared;
use crate::sticky::shared::Change;

/// The environment variable carrying the new process's token.
pub const TOKEN_ENV: &str = "EDGEPIN_UPGRADE_TOKEN";
/// How long a connection may take to say what it wants.
const HELLO_WAIT: Duration = Duration::from_secs(5);
/// How often a draining process reports.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// The upgrade socket's accept loop, while this process is the serving one.
pub struct ControlService {
    pub shared: Arc<Shared>,
    /// A duplicate of the upgrade socket (the original stays with the lifecycle).
    pub listener: std::sync::Mutex<Option<std::os::unix::net::UnixListener>>,
    /// The config file this process runs, for the new process.
    pub config_path: PathBuf,
    pub socket_path: PathBuf,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let lifecycle = &self.shared.lifecycle;
        tokio::select! {
            () = lifecycle.until_serving() => {}
            _ = shutdown.changed() => return,
        }
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "upgrade socket: cannot accept; `edgepin upgrade` will not reach this process");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = lifecycle.until_handed_over() => return,
                _ = shutdown.changed() => return,
            };
            let stream = match accepted.and_then(|(s, _)| s.into_std()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let conversation = Conversation {
                shared: Arc::clone(&self.shared),
                config_path: self.config_path.clone(),
                socket_path: self.socket_path.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("edgepin-upgrade".into())
                .spawn(move || conversation.run(stream));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "upgrade socket: no thread for a connection");
            }
        }
    }
}

/// One connection to the upgrade socket.
struct Conversation {
    shared: Arc<Shared>,
    config_path: PathBuf,
    socket_path: PathBuf,
}

/// Whether the peer of `link` may use the upgrade socket: this process's user, or root.
fn allowed(link: &Link) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    link.peer().is_ok_and(|c| c.uid.as_raw() == me || c.uid.as_raw() == 0)
}

impl Conversation {
    fn run(self, stream: UnixStream) {
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        let mut link = Link::new(stream);
        if !allowed(&link) {
            tracing::warn!(peer = ?link.peer().ok(), "upgrade socket: a process of another user was refused");
            return;
        }
        match link.recv(Some(HELLO_WAIT)) {
            Ok(Message::Upgrade { binary, timeout_ms }) => {
                self.upgrade(link, &binary, Duration::from_millis(timeout_ms))
            }
            Ok(Message::Takeover { token, pid }) => {
                if let Err(mut link) = self.shared.lifecycle.deliver_takeover(&token, link) {
                    tracing::warn!(pid, "upgrade socket: a takeover no upgrade is waiting for was refused");
                    let _ = link.send(&Message::Refused {
                        reason: "no upgrade is waiting for this process".into(),
                    });
                }
            }
            Ok(Message::Draining { pid }) => {
                tracing::info!(pid, me = std::process::id(), "a draining process reports here");
                follow(&self.shared, link);
            }
            Ok(other) => tracing::debug!(message = ?other, "upgrade socket: unexpected first message"),
            Err(e) => tracing::debug!(error = %e, "upgrade socket: no first message"),
        }
    }

    /// Run an upgrade for `edgepin upgrade` on `cli`.
    fn upgrade(&self, mut cli: Link, binary: &Path, timeout: Duration) {
        let lifecycle = &self.shared.lifecycle;
        if !lifecycle.begin_upgrade() {
            let _ = cli.send(&Message::Refused {
                reason: "an upgrade is already in progress".into(),
            });
            return;
        }
        let started = Instant::now();
        tracing::info!(binary = %binary.display(), "upgrade: starting the new process");
        match self.start_successor(binary, started + timeout) {
            Ok((link, child, sids)) => {
                let new_pid = child.id();
                // Its exit is reaped by whoever inherits it; the old process leaves first.
                drop(child);
                let took_ms = started.elapsed().as_millis() as u64;
                let tunnels = self.shared.open_tunnels() as u64;
                let hard_stop = self.shared.snapshot().config.reload.hard_stop_after;
                tracing::info!(new_pid, took_ms, tunnels, "upgrade: the new process serves; draining");
                let _ = cli.send(&Message::Upgraded {
                    old_pid: std::process::id(),
                    new_pid,
                    took_ms,
                    tunnels,
                    hard_stop_unix: super::unix(std::time::SystemTime::now() + hard_stop),
                });
                drop(cli);
                report(&self.shared, link, &sids, &self.socket_path);
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "upgrade failed; this process goes on serving");
                lifecycle.end_upgrade();
                let _ = cli.send(&Message::Refused { reason });
            }
        }
    }

    /// Start the new process and take it to the commit; on any failure it is stopped
    /// and this process is as it was.
    fn start_successor(&self, binary: &Path, deadline: Instant) -> Result<(Link, Child, Receiver<Change>), String> {
        let token = super::token();
        let arrival = self.shared.lifecycle.await_takeover(token.clone());
        let mut child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--takeover")
            .arg(&self.socket_path)
            .env(TOKEN_ENV, &token)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id();
        let mut link = loop {
            if let Some(exit) = exited(&mut child) {
                return Err(format!("the new process (pid {pid}) {exit} before it took over"));
            }
            match arrival.recv_timeout(Duration::from_millis(50)) {
                Ok(link) => break link,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                _ => {
                    stop(&mut child);
                    return Err(format!(
                        "the new process (pid {pid}) did not connect in time; stopped it"
                    ));
                }
            }
        };
        let (tx, sids) = std::sync::mpsc::channel();
        // Told from now on, so nothing learned while the table crosses is missed.
        self.shared.sids.set_successor(Some(tx));
        match self.hand_over(&mut link, &mut child, deadline) {
            Ok(()) => Ok((link, child, sids)),
            Err(reason) => {
                self.shared.sids.set_successor(None);
                stop(&mut child);
                Err(reason)
            }
        }
    }

    /// Send the sockets and the state, wait for Ready, then stop accepting and commit.
    fn hand_over(&self, link: &mut Link, child: &mut Child, deadline: Instant) -> Result<(), String> {
        let pid = child.id();
        let lifecycle = &self.shared.lifecycle;
        let sent = lifecycle.with_sockets(|s| match s {
            Some(s) => {
                let (sockets, fds) = s.handed();
                link.send_with(&Message::Listeners { sockets }, &fds)
            }
            None => Err(std::io::Error::other("the sockets are gone").into()),
        });
        sent.map_err(|e| format!("handing the sockets to pid {pid}: {e}"))?;
        let state = carried::collect(&self.shared);
        link.send(&Message::State(Box::new(state)))
            .map_err(|e| format!("handing the state to pid {pid}: {e}"))?;
        loop {
            match link.recv(Some(Duration::from_millis(100))) {
                Ok(Message::Ready) => break,
                Ok(Message::Failed { reason }) => return Err(format!("the new process (pid {pid}) failed: {reason}")),
                Ok(other) => tracing::debug!(message = ?other, "upgrade: unexpected message before Ready"),
                Err(WireError::TimedOut(_)) => {}
                Err(e) => {
                    let how = exited(child).unwrap_or_else(|| "closed the connection".into());
                    return Err(format!("the new process (pid {pid}) {how} before it was ready ({e})"));
                }
            }
            if let Some(exit) = exited(child) {
                return Err(format!("the new process (pid {pid}) {exit} before it was ready"));
            }
            if Instant::now() >= deadline {
                return Err(format!("the new process (pid {pid}) was not ready in time; stopped it"));
            }
        }
        // The new process accepts already: stop here, then tell systemd, `edgepin
        // reload` (the pidfile, before `edgepin upgrade` hears of it) and the new process.
        lifecycle.hand_over();
        super::notify(&format!("MAINPID={pid}"));
        if let Some(pidfile) = &self.shared.snapshot().config.reload.pidfile
            && let Err(e) = super::write_pid(pidfile, pid)
        {
            tracing::warn!(error = %e, "upgrade: cannot write the new pid to the pidfile");
        }
        link.send(&Message::Committed)
            .map_err(|e| format!("the new process (pid {pid}) is serving but did not hear the commit: {e}"))
            .or_else(|e| {
                // It serves already; the old one must not take the sockets back. Its
                // pidfile is written when it notices the old one is gone.
                tracing::warn!(error = %e, "upgrade: committed without telling the new process");
                Ok(())
            })
    }
}

/// How `child` ended, if it has.
fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("exited ({status})")),
        _ => None,
    }
}

/// Stop a new process that failed: SIGTERM, then SIGKILL after 3 s; reaped either way.
fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn sid_change(change: Change) -> SidChange {
    match change {
        Change::Learned { sid, server } => SidChange {
            sid: sid.into(),
            server: Some(server.to_string()),
        },
        Change::Forgotten { sid } => SidChange {
            sid: sid.into(),
            server: None,
        },
    }
}

/// A draining process reports to the serving one until it exits (see the module docs).
fn report(shared: &Shared, mut link: Link, sids: &Receiver<Change>, socket_path: &Path) {
    let lifecycle = &shared.lifecycle;
    let pid = std::process::id();
    let mut last = Instant::now() - REPORT_EVERY;
    loop {
        let mut changes = Vec::new();
        match sids.recv_timeout(REPORT_EVERY / 5) {
            Ok(first) => {
                changes.push(sid_change(first));
                changes.extend(sids.try_iter().take(4096).map(sid_change));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut sent = changes.is_empty() || link.send(&Message::Sids { changes }).is_ok();
        if sent && last.elapsed() >= REPORT_EVERY {
            last = Instant::now();
            if let Some(status) = lifecycle.own_drain() {
                sent = link.send(&Message::Status(status)).is_ok();
            }
        }
        if lifecycle.is_finished() {
            let _ = link.send(&Message::Gone { pid });
            return;
        }
        if !sent {
            // A later upgrade closed this connection: report to whoever serves now.
            tracing::info!(
                me = std::process::id(),
                "draining: the serving process changed; reporting to the new one"
            );
            match reconnect(shared, socket_path) {
                Some(l) => link = l,
                None => return,
            }
        }
    }
}

/// A new connection to the serving process, introduced with this process's sessions.
fn reconnect(shared: &Shared, socket_path: &Path) -> Option<Link> {
    let pid = std::process::id();
    while !shared.lifecycle.is_finished() {
        if let Ok(mut link) = Link::connect(socket_path) {
            let all = shared
                .sids
                .export()
                .into_iter()
                .map(|e| SidChange {
                    sid: e.sid,
                    server: Some(e.server),
                })
                .collect();
            let hello = link
                .send(&Message::Draining { pid })
                .and_then(|()| link.send(&Message::Sids { changes: all }));
            match hello {
                Ok(()) => return Some(link),
                Err(e) => tracing::info!(me = pid, error = %e, "draining: the serving process did not hear this one"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Hear from a process draining before this one until it goes (see the module docs):
/// its status for the stats page, and its sessions for routing.
pub fn follow(shared: &Shared, mut link: Link) {
    let lifecycle = &shared.lifecycle;
    if let Ok(copy) = link.stream().try_clone() {
        lifecycle.keep_draining_link(copy);
    }
    let mut pid = None;
    loop {
        match link.recv(None) {
            Ok(Message::Status(status)) => {
                pid = Some(status.pid);
                lifecycle.report(status);
            }
            Ok(Message::Sids { changes }) => adopt(shared, &changes),
            Ok(Message::Gone { pid }) => {
                lifecycle.gone(pid);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!(?pid, me = std::process::id(), error = %e, "a draining process report ended");
                if let Some(pid) = pid {
                    lifecycle.gone(pid);
                }
                return;
            }
        }
    }
}

/// Sessions a draining process learned (kept here: their next request comes here) or
/// that ended there.
fn adopt(shared: &Shared, changes: &[SidChange]) {
    let snapshot = shared.snapshot();
    for c in changes {
        match &c.server {
            Some(name) => {
                if let Some(s) = snapshot.config.server(name) {
                    shared
                        .sids
                        .import(&c.sid, &shared.registry.server(&s.name, s.weight), 0);
                }
            }
            None => shared.sids.discard(&c.sid),
        }
    }
}
