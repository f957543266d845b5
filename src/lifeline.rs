//! Children of `edgepin up` that end when `up` ends, however it ends (SIGKILL included):
//! the kernel sends them SIGTERM when their parent dies (`PR_SET_PDEATHSIG`). Workers set
//! it on themselves; redis-server cannot, so `up` starts it through `edgepin follow`,
//! which sets it and then becomes redis-server (exec keeps the setting and the pid).
//!
//! A leaf (it knows only the OS): `up` starts children through it and `worker` follows
//! its parent with it, without either depending on the other.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// Have the kernel send this process SIGTERM when `parent` dies.
///
/// The signal follows the parent *thread*: `up` starts its children from its supervisor
/// thread, which lives as long as `up` does.
pub fn follow(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from)?;
    // It may have died before the line above: then nobody will signal us.
    if nix::unistd::getppid().as_raw().unsigned_abs() != parent {
        return Err(io::Error::other(format!("parent {parent} is gone")));
    }
    Ok(())
}

/// [`follow`] `parent`, then replace this process with `program`. Returns only on failure.
pub fn exec_following(parent: u32, program: &[OsString]) -> io::Error {
    let Some((name, args)) = program.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "no program to run");
    };
    if let Err(e) = follow(parent) {
        return e;
    }
    let e = Command::new(name).args(args).exec();
    io::Error::new(e.kind(), format!("running {}: {e}", name.to_string_lossy()))
}

/// `command`, started through `edgepin follow` so that it stops when this process dies.
pub fn following_this_process(edgepin: &std::path::Path, command: &Command) -> Command {
    let mut cmd = Command::new(edgepin);
    cmd.args(["follow", "--parent", &std::process::id().to_string(), "--"]);
    cmd.arg(command.get_program()).args(command.get_args());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_command_runs_through_edgepin_follow_with_this_pid() {
        let mut redis = Command::new("redis-server");
        redis.args(["--port", "7000"]);
        let cmd = following_this_process(std::path::Path::new("/bin/edgepin"), &redis);
        assert_eq!(cmd.get_program(), "/bin/edgepin");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let pid = std::process::id().to_string();
        assert_eq!(
            args,
            ["follow", "--parent", &pid, "--", "redis-server", "--port", "7000"]
        );
    }

    #[test]
    fn nothing_to_run_is_an_error_before_anything_changes() {
        let e = exec_following(std::process::id(), &[]);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
