//! The file descriptor limit: raised to what the system allows at start, as HAProxy
//! does, so that `limits.max_connections` can be honoured; the connection cap is then
//! derived from it (`proxy::connection_cap`).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(from = soft, to = hard, "raised the file descriptor limit");
            hard
        }
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the file descriptor limit");
            soft
        }
    }
}
