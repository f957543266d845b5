//! `edgepin upgrade`: find the running process's upgrade socket through
//! `reload.pidfile`, ask it to upgrade to a binary, and say what happened.
//!
//! The config is validated by the new process, in the running process's environment
//! (a systemd unit's secrets need not be in the shell that runs this); its errors come
//! back with their `file:line:col`. Here only the YAML syntax and the pidfile are read.
//!
//! The binary is this command's own (`current_exe`) unless `--binary` names another: a
//! package upgrade installs the new edgepin and runs its `edgepin upgrade`. The running
//! process starts it with the config file it runs itself.

use std::path::PathBuf;
use std::time::Duration;

use super::wire::{Link, Message};

/// `edgepin upgrade`'s arguments.
#[derive(Debug, Clone)]
pub struct UpgradeArgs {
    pub config: PathBuf,
    /// The new binary (default: this one).
    pub binary: Option<PathBuf>,
    /// How long the new process may take to be ready.
    pub timeout: Duration,
}

/// Run an upgrade; the line to print on success, the reason on failure.
pub fn upgrade(args: &UpgradeArgs) -> Result<String, String> {
    let pidfile = crate::config::pidfile_of(&args.config)
        .map_err(|e| format!("not upgrading: the config is invalid\n{e}"))?
        .ok_or("reload.pidfile is not set in the config: no running proxy to find")?;
    let socket = super::sockets::beside(&pidfile);
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot tell this program's path: {e}"))?,
    };
    let binary = binary
        .canonicalize()
        .map_err(|e| format!("not upgrading: {}: {e}", binary.display()))?;
    let mut link = Link::connect(&socket).map_err(|e| {
        format!(
            "no edgepin answers on {}: {e} (is `edgepin run` running with this config?)",
            socket.display()
        )
    })?;
    link.send(&Message::Upgrade {
        binary: binary.clone(),
        timeout_ms: args.timeout.as_millis() as u64,
    })
    .map_err(|e| format!("asking for the upgrade: {e}"))?;
    // The running process stops a new one that is not ready in time; allow for that.
    match link.recv(Some(args.timeout + Duration::from_secs(10))) {
        Ok(Message::Upgraded {
            old_pid,
            new_pid,
            took_ms,
            tunnels,
            hard_stop_unix,
        }) => Ok(format!(
            "upgraded to {}: pid {new_pid} serves (ready after {took_ms} ms); pid {old_pid} drains {tunnels} tunnel(s), \
             closing what is left from {} on",
            binary.display(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(hard_stop_unix)),
        )),
        Ok(Message::Refused { reason }) => {
            Err(format!("upgrade failed: {reason}\nthe running process goes on serving"))
        }
        Ok(other) => Err(format!("unexpected answer: {other:?}")),
        Err(e) => Err(format!("no answer from the running process: {e}")),
    }
}
