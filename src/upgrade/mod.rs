//! Hitless upgrades of edgepin itself (`edgepin upgrade`): a new binary takes every
//! listening socket from the running process, with its state, and the old process
//! drains and leaves as soon as it is empty.
//!
//! The conversation, over the upgrade socket beside `reload.pidfile` (`sockets`, `wire`):
//! 1. `edgepin upgrade` (`command`) asks the serving process to upgrade to a binary.
//! 2. The serving process (`control`) starts it as `edgepin run --takeover` — as its own
//!    child, so under systemd it stays in the service's cgroup — and waits for it.
//! 3. The new process (`takeover`) connects back with the token it was given and
//!    receives the listening sockets (SCM_RIGHTS) and the state (`carried`); it builds
//!    its config, certificates and services on them, waits for the first health
//!    verdict of every server it inherited none for, starts accepting, and says Ready.
//! 4. Only then does the old process stop accepting (`Lifecycle::hand_over`): both were
//!    accepting on the same sockets for a moment, so no connect is ever refused. It
//!    answers `Committed`, tells systemd the new main pid (`notify`) and drains
//!    (`drain`): requests in flight finish, tunnels relay both ways, and it exits the
//!    moment the last one ends — or at `reload.hard_stop_after`, when the remaining
//!    tunnels get a close frame (1012) spread over `reload.close_spread`.
//! 5. While it drains it tells the serving process how much is left and every sid it
//!    still learns or forgets (`control::report`), so the stats page shows it and a
//!    session whose handshake ended in the old process keeps its server.
//!
//! If the new process fails before Ready (bad config, a port it cannot bind, a crash, a
//! binary that is not edgepin, no answer in time), the old one never stopped serving,
//! and `edgepin upgrade` prints why and exits non-zero.
//!
//! Why not pingora's own upgrade (`Opt.upgrade`, `Fds::send_to_sock`, SIGQUIT): it passes
//! pingora's listeners only (not our stats listener), as raw descriptor numbers with a
//! space-separated 2 KiB table and no state; the old process sends on SIGQUIT whether or
//! not the new one is ready, keeps accepting a fixed 5 s, then sleeps
//! `grace_period_seconds` whatever is left, and drops every task. Here the readiness
//! handshake decides when the old one stops, state travels with the sockets, and the
//! drain ends when the last tunnel does. What would have helped upstream: a readiness
//! callback before the old process stops accepting, a way to stop a listening service's
//! accept loops without shutting the server down (so a process can drain), and fd
//! transfer that takes `OwnedFd` and an application payload.
//!
//! This module owns the listening sockets and the accept loops (`accept`), the upgrade
//! socket, and the old process's drain. It does not serve requests, and it changes
//! server state only through `ServerState::restore` when taking over.

mod accept;
pub mod carried;
mod command;
mod control;
mod drain;
mod notify;
pub mod sockets;
mod takeover;
pub mod wire;

pub use accept::{AcceptService, Arrival, Listener, Serve};
pub use command::{UpgradeArgs, upgrade};
pub use control::ControlService;
pub use drain::{close_spread_step, drain};
pub use notify::notify;
pub use sockets::{Inherited, SocketError, Sockets, upgrade_socket_path};
pub use takeover::{Takeover, TakeoverError, TakeoverService};

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use wire::{DrainStatus, Link};

/// A draining process not heard from for this long is taken as gone.
const REPORT_STALE: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where this process is in its life as far as upgrades go, and what it knows of the
/// processes draining before it.
#[derive(Debug)]
pub struct Lifecycle {
    /// Whether this process accepts connections: at once after a fresh start; after a
    /// takeover, once it is ready.
    accepting: watch::Sender<bool>,
    /// Whether this process is the one serving: at once after a fresh start; after a
    /// takeover, once the old process committed (its upgrade socket then answers here).
    serving: watch::Sender<bool>,
    /// Set once the listeners went to a successor: stop accepting, drain.
    handed_over: watch::Sender<bool>,
    /// This process's listening sockets, kept to hand over (the accept loops hold
    /// duplicates); dropped once handed over.
    sockets: Mutex<Option<Sockets>>,
    /// Processes draining from earlier upgrades, by pid, with when they last reported.
    draining: Mutex<BTreeMap<u32, (DrainStatus, Instant)>>,
    /// Their connections, closed when this process hands over so that they report to
    /// its successor instead.
    draining_links: Mutex<Vec<UnixStream>>,
    /// An upgrade is in progress (one at a time).
    upgrading: AtomicBool,
    /// The new process awaited: its token, and where to deliver its connection.
    awaited: Mutex<Option<(String, std::sync::mpsc::Sender<Link>)>>,
    /// This process's own drain, once handed over.
    own_drain: Mutex<Option<DrainStatus>>,
    /// The drain is over: the process is about to exit.
    finished: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            accepting: watch::Sender::new(true),
            serving: watch::Sender::new(true),
            handed_over: watch::Sender::new(false),
            sockets: Mutex::new(None),
            draining: Mutex::default(),
            draining_links: Mutex::default(),
            upgrading: AtomicBool::new(false),
            awaited: Mutex::new(None),
            own_drain: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }
}

impl Lifecycle {
    /// Keep `sockets` to hand over later.
    pub fn keep_sockets(&self, sockets: Sockets) {
        *lock(&self.sockets) = Some(sockets);
    }

    /// Run `f` on the sockets to hand over (`None` once handed over).
    pub fn with_sockets<R>(&self, f: impl FnOnce(Option<&Sockets>) -> R) -> R {
        f(lock(&self.sockets).as_ref())
    }

    /// A process started to take over: accept nothing until [`open`](Self::open), and
    /// answer no upgrade socket connection until [`serve`](Self::serve).
    pub fn hold(&self) {
        self.accepting.send_replace(false);
        self.serving.send_replace(false);
    }

    /// The old process committed: this one serves alone.
    pub fn serve(&self) {
        self.serving.send_replace(true);
    }

    /// Wait until this process is the serving one.
    pub async fn until_serving(&self) {
        let mut rx = self.serving.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Start accepting.
    pub fn open(&self) {
        self.accepting.send_replace(true);
    }

    pub fn is_accepting(&self) -> bool {
        *self.accepting.borrow()
    }

    /// Wait until this process accepts.
    pub async fn until_accepting(&self) {
        let mut rx = self.accepting.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }

    /// The listeners went to a successor: stop accepting (every accept loop, the stats
    /// listener and the upgrade socket watch this), close this process's copies of the
    /// sockets, and let the processes draining before this one report to the successor.
    pub fn hand_over(&self) {
        self.handed_over.send_replace(true);
        drop(lock(&self.sockets).take());
        for link in lock(&self.draining_links).drain(..) {
            let _ = link.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn is_handed_over(&self) -> bool {
        *self.handed_over.borrow()
    }

    /// Wait until the listeners are handed over.
    pub async fn until_handed_over(&self) {
        let mut rx = self.handed_over.subscribe();
        let _ = rx.wait_for(|over| *over).await;
    }

    /// Claim the right to run an upgrade; false while one runs or after hand-over.
    pub fn begin_upgrade(&self) -> bool {
        !self.is_handed_over() && !self.upgrading.swap(true, Relaxed)
    }

    pub fn end_upgrade(&self) {
        *lock(&self.awaited) = None;
        self.upgrading.store(false, Relaxed);
    }

    /// Wait for the new process presenting `token`: its connection comes on the receiver.
    pub fn await_takeover(&self, token: String) -> std::sync::mpsc::Receiver<Link> {
        let (tx, rx) = std::sync::mpsc::channel();
        *lock(&self.awaited) = Some((token, tx));
        rx
    }

    /// Hand a connection presenting `token` to the upgrade awaiting it; gives it back
    /// when no upgrade awaits that token.
    pub fn deliver_takeover(&self, token: &str, link: Link) -> Result<(), Link> {
        let awaited = lock(&self.awaited);
        match awaited.as_ref() {
            Some((t, tx)) if constant_time_eq(t.as_bytes(), token.as_bytes()) => tx.send(link).map_err(|e| e.0),
            _ => Err(link),
        }
    }

    /// A draining process reported.
    pub fn report(&self, status: DrainStatus) {
        lock(&self.draining).insert(status.pid, (status, Instant::now()));
    }

    /// A draining process left.
    pub fn gone(&self, pid: u32) {
        lock(&self.draining).remove(&pid);
    }

    /// Keep a draining process's connection, to close it at hand-over.
    pub fn keep_draining_link(&self, link: UnixStream) {
        lock(&self.draining_links).push(link);
    }

    /// The processes draining now (those not heard from lately are dropped).
    pub fn draining(&self) -> Vec<DrainStatus> {
        let mut d = lock(&self.draining);
        d.retain(|_, (_, at)| at.elapsed() < REPORT_STALE);
        d.values().map(|(s, _)| s.clone()).collect()
    }

    /// Whether any process drains before this one (cheap: for the request path).
    pub fn has_draining(&self) -> bool {
        !lock(&self.draining).is_empty()
    }

    /// This process's own drain, once handed over.
    pub fn own_drain(&self) -> Option<DrainStatus> {
        lock(&self.own_drain).clone()
    }

    pub fn set_own_drain(&self, status: DrainStatus) {
        *lock(&self.own_drain) = Some(status);
    }

    /// The drain is over; the process exits next.
    pub fn finish(&self) {
        self.finished.store(true, Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Relaxed)
    }
}

/// Compare secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token (hex), for the new process to present.
fn token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `pid` to `pidfile`, atomically (written beside, then renamed): a reader never
/// sees it empty, even while the old and the new process of an upgrade both write it.
pub fn write_pid(pidfile: &std::path::Path, pid: u32) -> std::io::Result<()> {
    if let Some(dir) = pidfile.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = pidfile.with_extension(format!("pid.{}", std::process::id()));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, pidfile)
}

/// Unix seconds of `at`.
fn unix(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pid: u32) -> DrainStatus {
        DrainStatus {
            pid,
            tunnels: 3,
            requests: 0,
            hard_stop_unix: 0,
            close_spread_secs: 0,
            closing: false,
        }
    }

    #[test]
    fn draining_processes_are_listed_until_gone() {
        let l = Lifecycle::default();
        assert!(!l.has_draining());
        l.report(status(7));
        l.report(status(9));
        assert_eq!(l.draining().iter().map(|d| d.pid).collect::<Vec<_>>(), vec![7, 9]);
        l.gone(7);
        assert_eq!(l.draining().len(), 1);
    }

    #[test]
    fn one_upgrade_at_a_time_and_none_after_hand_over() {
        let l = Lifecycle::default();
        assert!(l.begin_upgrade());
        assert!(!l.begin_upgrade());
        l.end_upgrade();
        assert!(l.begin_upgrade());
        l.end_upgrade();
        l.hand_over();
        assert!(!l.begin_upgrade());
    }

    #[test]
    fn a_takeover_is_delivered_only_for_the_awaited_token() {
        let l = Lifecycle::default();
        let (a, _b) = UnixStream::pair().unwrap();
        let link = Link::new(a);
        let link = l.deliver_takeover("t", link).expect_err("nothing awaited");
        let rx = l.await_takeover(token());
        let link = l.deliver_takeover("wrong", link).expect_err("wrong token");
        let (t, _) = lock(&l.awaited).clone().unwrap();
        assert!(l.deliver_takeover(&t, link).is_ok());
        assert!(rx.try_recv().is_ok());
        assert_eq!(t.len(), 32);
    }
}
