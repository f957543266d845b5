//! What `edgepin up` runs beside the proxy: redis-server (when spawned) and one worker per
//! server, restarted with backoff when they crash; on SIGHUP, a rolling restart of the
//! workers one at a time — drained through the proxy, stopped, started, healthy, put back —
//! like `pm2 reload`. Runs on its own thread; stops and reaps every child when told to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::children::{self, ChildProcess};
use crate::health::set_admin;
use crate::runtime::Shared;
use crate::state::Admin;
use crate::worker::RedisTarget;

/// Longest wait for a worker's requests in flight before it is restarted.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// SIGTERM to SIGKILL: the worker closes its sockets within 5 s.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// Longest wait for a (re)started child to answer.
pub const START_WAIT: Duration = Duration::from_secs(20);
/// A child that ran this long before crashing starts over at the shortest delay.
const STABLE_RUN: Duration = Duration::from_secs(30);
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);
const WHO: &str = "edgepin up";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Redis {
        port: u16,
    },
    Worker {
        addr: SocketAddr,
        weight: u32,
        redis: RedisTarget,
    },
}

/// One child to keep running.
pub struct Slot {
    pub name: String,
    pub kind: Kind,
    child: Option<ChildProcess>,
    /// Crashes in a row (reset after a stable run).
    crashes: u32,
    restart_at: Option<Instant>,
}

impl Slot {
    fn new(name: String, kind: Kind) -> Slot {
        Slot {
            name,
            kind,
            child: None,
            crashes: 0,
            restart_at: None,
        }
    }
}

pub struct Supervisor {
    exe: PathBuf,
    /// proxy.yaml, read again on SIGHUP for servers added or removed.
    config: PathBuf,
    slots: Vec<Slot>,
    /// The proxy's state, to drain a worker before restarting it (set by `run`).
    shared: Option<Arc<Shared>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("{name} exited during start ({status}); its output is above")]
    Exited { name: String, status: String },
    #[error("{name} did not answer within {START_WAIT:?}; its output is above")]
    Timeout { name: String },
}

impl Supervisor {
    pub fn new(exe: PathBuf, config: PathBuf, kinds: Vec<(String, Kind)>) -> Supervisor {
        let slots = kinds.into_iter().map(|(name, kind)| Slot::new(name, kind)).collect();
        Supervisor {
            exe,
            config,
            slots,
            shared: None,
        }
    }

    /// Start every child in order and wait until each answers; on failure the ones started
    /// are stopped again.
    pub fn start_all(&mut self) -> Result<(), StartError> {
        for i in 0..self.slots.len() {
            if let Err(e) = self.start_ready(i) {
                self.stop_all();
                return Err(e);
            }
        }
        Ok(())
    }

    /// The pids of the running children, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.slots
            .iter()
            .filter_map(|s| s.child.as_ref().map(|c| (s.name.clone(), c.pid())))
            .collect()
    }

    /// Start child `i` and wait until it answers.
    fn start_ready(&mut self, i: usize) -> Result<(), StartError> {
        self.start(i).and_then(|()| self.wait_ready(i))
    }

    /// [`Self::start_ready`]; a child that does not come up is retried with backoff.
    fn start_or_retry(&mut self, i: usize) -> Result<(), StartError> {
        let started = self.start_ready(i);
        if started.is_err() {
            self.slots[i].restart_at = Some(Instant::now() + FIRST_DELAY);
        }
        started
    }

    fn start(&mut self, i: usize) -> Result<(), StartError> {
        let slot = &mut self.slots[i];
        let cmd = command(&self.exe, &slot.name, &slot.kind);
        let child = ChildProcess::spawn(&slot.name, cmd).map_err(|source| StartError::Spawn {
            name: slot.name.clone(),
            source,
        })?;
        tracing::info!(name = %slot.name, pid = child.pid(), "started");
        slot.child = Some(child);
        slot.restart_at = None;
        Ok(())
    }

    fn answers(&self, i: usize) -> bool {
        match &self.slots[i].kind {
            Kind::Redis { port } => children::redis_answers(SocketAddr::from(([127, 0, 0, 1], *port))),
            Kind::Worker { addr, .. } => children::healthy(*addr),
        }
    }

    /// Wait (blocking) until child `i` answers, exits or `START_WAIT` passes.
    fn wait_ready(&mut self, i: usize) -> Result<(), StartError> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if self.answers(i) {
                return Ok(());
            }
            let slot = &mut self.slots[i];
            if let Some(status) = slot.child.as_mut().and_then(ChildProcess::exited) {
                slot.child = None;
                return Err(StartError::Exited {
                    name: slot.name.clone(),
                    status: status.to_string(),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout {
                    name: slot.name.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Supervise until `stop` turns true, then stop every child. Blocks its thread.
    pub fn run(mut self, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        self.shared = Some(shared);
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the supervisor; stopping the children");
                return self.stop_all();
            }
        };
        runtime.block_on(async {
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::error!("cannot watch SIGHUP; rolling restarts are off");
                return self.supervise(None, &mut stop).await;
            };
            self.supervise(Some(&mut hup), &mut stop).await;
        });
        self.stop_all();
    }

    async fn supervise(&mut self, mut hup: Option<&mut tokio::signal::unix::Signal>, stop: &mut watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tick.tick() => self.restart_crashed(),
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.rolling_restart(stop).await;
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    fn restart_crashed(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if let Some(child) = slot.child.as_mut() {
                let Some(status) = child.exited() else { continue };
                if child.started.elapsed() >= STABLE_RUN {
                    slot.crashes = 0;
                }
                slot.crashes += 1;
                let delay = crash_delay(slot.crashes);
                tracing::warn!(
                    name = %slot.name,
                    pid = child.pid(),
                    %status,
                    restart_in_ms = delay.as_millis() as u64,
                    "exited unexpectedly; restarting"
                );
                slot.child = None;
                slot.restart_at = Some(now + delay);
            } else if slot.restart_at.is_some_and(|at| at <= now)
                && let Err(e) = self.start(i)
            {
                let slot = &mut self.slots[i];
                slot.crashes += 1;
                slot.restart_at = Some(now + crash_delay(slot.crashes));
                tracing::error!(error = %e, "restart failed; trying again later");
            }
        }
    }

    /// Restart the workers one at a time, each drained through the proxy first.
    async fn rolling_restart(&mut self, stop: &watch::Receiver<bool>) {
        tracing::info!("SIGHUP: rolling restart of the workers (the proxy reloads proxy.yaml itself)");
        let fresh = self.follow_config();
        for i in 0..self.slots.len() {
            let Kind::Worker { weight, .. } = self.slots[i].kind else {
                continue;
            };
            if fresh.contains(&self.slots[i].name) {
                continue;
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.restart_worker(i, weight, stop).await {
                tracing::error!(error = %e, "rolling restart stopped; the other workers keep running");
                return;
            }
        }
        tracing::info!("rolling restart done");
    }

    async fn restart_worker(&mut self, i: usize, weight: u32, stop: &watch::Receiver<bool>) -> Result<(), StartError> {
        let name = self.slots[i].name.clone();
        let state = match &self.shared {
            Some(shared) => shared.registry.server(&name, weight),
            None => Arc::new(crate::state::ServerState::new(&name, weight)),
        };
        // An operator's DRAIN or MAINT stays as it is; a server taking traffic is drained
        // for the restart and given back afterwards.
        let drained_here = state.admin() == Admin::Ready;
        let give_back = || {
            if drained_here && state.admin() == Admin::Drain {
                set_admin(&state, Admin::Ready, WHO);
            }
        };
        if drained_here {
            set_admin(&state, Admin::Drain, WHO);
        }
        // Requests in flight finish; open sockets move when the worker closes them (their
        // clients reconnect through the proxy to the other workers).
        let deadline = Instant::now() + DRAIN_WAIT;
        while state.active() > state.tunnels.len() as u64 && Instant::now() < deadline && !*stop.borrow() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if *stop.borrow() {
            // `up` is stopping: leave the worker to the shutdown.
            give_back();
            return Ok(());
        }
        tracing::info!(name = %name, sockets = state.tunnels.len(), "drained; restarting");
        // Blocking waits are fine: this thread runs nothing else meanwhile.
        if let Some(child) = self.slots[i].child.take() {
            child.stop(STOP_GRACE);
        }
        let started = self.start_or_retry(i);
        give_back();
        started
    }

    /// Bring the workers in line with proxy.yaml as it is now: stop those of servers it no
    /// longer lists, start ones for servers it added, take new addresses and weights (used
    /// by the restart that follows). Returns the names of the workers started here.
    fn follow_config(&mut self) -> Vec<String> {
        let wanted = match crate::config::load(&self.config) {
            Ok(config) => super::children_of(&config),
            Err(e) => {
                tracing::warn!(error = %e, "proxy.yaml is invalid; restarting the workers as they are");
                return Vec::new();
            }
        };
        let is_worker = |kind: &Kind| matches!(kind, Kind::Worker { .. });
        if wanted
            .iter()
            .any(|(_, kind)| !is_worker(kind) && !self.slots.iter().any(|s| s.kind == *kind))
        {
            tracing::warn!("workers.redis changed: restart `edgepin up` to apply it");
        }
        let (kept, removed): (Vec<Slot>, Vec<Slot>) = self.slots.drain(..).partition(|slot| {
            !is_worker(&slot.kind) || wanted.iter().any(|(name, kind)| is_worker(kind) && *name == slot.name)
        });
        self.slots = kept;
        for slot in removed {
            tracing::info!(name = %slot.name, "server removed from proxy.yaml: stopping its worker");
            if let Some(child) = slot.child {
                child.stop(STOP_GRACE);
            }
        }
        let mut started = Vec::new();
        for (name, kind) in wanted.into_iter().filter(|(_, kind)| is_worker(kind)) {
            if let Some(slot) = self.slots.iter_mut().find(|s| is_worker(&s.kind) && s.name == name) {
                // A new address or weight takes effect with the restart that follows.
                slot.kind = kind;
                continue;
            }
            tracing::info!(name = %name, "server added to proxy.yaml: starting its worker");
            self.slots.push(Slot::new(name.clone(), kind));
            let i = self.slots.len() - 1;
            if let Err(e) = self.start_or_retry(i) {
                tracing::error!(error = %e, "the new worker did not start; retrying with backoff");
            }
            started.push(name);
        }
        started
    }

    /// Stop every child: workers first, Redis last, each SIGTERM then SIGKILL.
    pub fn stop_all(&mut self) {
        let (mut workers, mut rest): (Vec<ChildProcess>, Vec<ChildProcess>) = (Vec::new(), Vec::new());
        for slot in &mut self.slots {
            if let Some(child) = slot.child.take() {
                match slot.kind {
                    Kind::Worker { .. } => workers.push(child),
                    Kind::Redis { .. } => rest.push(child),
                }
            }
        }
        children::stop_all(&mut workers, STOP_GRACE);
        children::stop_all(&mut rest, STOP_GRACE);
    }
}

/// The command line of a child.
fn command(exe: &std::path::Path, name: &str, kind: &Kind) -> Command {
    match kind {
        // Should `up` die without stopping it (SIGKILL), redis-server stops too.
        Kind::Redis { port } => crate::lifeline::following_this_process(exe, &super::redis_command(*port)),
        Kind::Worker { addr, redis, .. } => {
            let mut cmd = Command::new(exe);
            cmd.args(["worker", "--listen", &addr.to_string(), "--id", name]);
            // Not on the command line, which every local user can read: it may hold a
            // password. The other variable, if `up` has it, must not reach the worker.
            let (set, unset, value) = match redis {
                RedisTarget::Url(url) => ("EDGEPIN_REDIS_URL", "EDGEPIN_REDIS_CLUSTER", url.clone()),
                RedisTarget::Cluster(seeds) => ("EDGEPIN_REDIS_CLUSTER", "EDGEPIN_REDIS_URL", seeds.join(",")),
            };
            cmd.env(set, value).env_remove(unset);
            // Should `up` die without stopping it (SIGKILL), the worker stops by itself.
            cmd.args(["--exit-with-parent", &std::process::id().to_string()]);
            cmd
        }
    }
}

/// 0.5 s, 1 s, 2 s, … up to 30 s between restarts of a child that keeps crashing.
fn crash_delay(crashes: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1 << crashes.clamp(1, 16).saturating_sub(1))
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_delays_double_to_a_cap() {
        let d: Vec<u64> = (1..=9).map(|n| crash_delay(n).as_millis() as u64).collect();
        assert_eq!(d, vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    }
}
