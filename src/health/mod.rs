//! Health: the UP/DOWN verdicts of active checks and of live traffic (passive checks),
//! and the admin states DRAIN and MAINT, applied to `ServerState`.
//!
//! Active checks probe in `check` (one loop per server, jittered, run by the
//! `upkeep::ActiveChecks` service); this file holds the transition rules so active
//! checks, passive checks and admin actions change state the same way and log every
//! change with its reason. Nothing here knows the runtime: callers hand in the state.

pub mod check;

use crate::state::{Admin, CheckResult, Health, ServerState};

/// Consecutive results of one server's active checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Streak {
    pub ok: u32,
    pub failed: u32,
    /// The health this streak was counted against; a change from elsewhere resets it.
    pub seen: Option<Health>,
}

/// Apply one active check result (`rise` good or `fall` bad in a row flip the server).
pub fn apply_check(state: &ServerState, streak: &mut Streak, result: CheckResult, rise: u32, fall: u32) {
    let current = state.health();
    if streak.seen != Some(current) {
        *streak = Streak {
            seen: Some(current),
            ..Streak::default()
        };
    }
    let ok = result.ok();
    let detail = result.detail();
    state.set_last_check(result);
    if ok {
        streak.ok += 1;
        streak.failed = 0;
        // A new server proves itself with one good check; a DOWN one needs `rise`.
        if current == Health::Checking || (current == Health::Down && streak.ok >= rise) {
            let reason = format!("{} good checks ({detail})", streak.ok);
            transition(state, Health::Up, &reason);
        }
    } else {
        streak.failed += 1;
        streak.ok = 0;
        if current == Health::Checking || (current == Health::Up && streak.failed >= fall) {
            let reason = format!("{} failed checks ({detail})", streak.failed);
            transition(state, Health::Down, &reason);
        }
    }
    streak.seen = Some(state.health());
}

/// A live request to this server failed (connect error, timeout, 5xx). After
/// `passive_fall` in a row it is marked DOWN early; active checks bring it back.
pub fn passive_failure(state: &ServerState, passive_fall: u32) {
    let n = state.passive_failure();
    if passive_fall > 0 && n >= passive_fall && state.health() != Health::Down {
        transition(
            state,
            Health::Down,
            &format!("{n} consecutive failures on live traffic"),
        );
    }
}

fn transition(state: &ServerState, to: Health, reason: &str) {
    if let Some(from) = state.set_health(to, reason) {
        let (from, to) = (format!("{from:?}"), format!("{to:?}"));
        if to == "Down" {
            tracing::warn!(server = %state.name, from = %from, to = %to, reason, "server state changed");
        } else {
            tracing::info!(server = %state.name, from = %from, to = %to, reason, "server state changed");
        }
    }
}

/// Set a server's admin state on behalf of `who`. MAINT closes its open tunnels.
pub fn set_admin(state: &ServerState, admin: Admin, who: &str) -> bool {
    let reason = format!("admin: {} by {who}", format!("{admin:?}").to_lowercase());
    let changed = state.set_admin(admin, &reason).is_some();
    if changed {
        tracing::info!(server = %state.name, admin = ?admin, by = who, "admin state changed");
    }
    if admin == Admin::Maint {
        let closed = state.tunnels.close_all();
        if closed > 0 {
            tracing::info!(server = %state.name, tunnels = closed, "closed open tunnels for maintenance");
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CheckStatus;
    use std::time::Duration;

    fn result(ok: bool) -> CheckResult {
        let status = if ok { CheckStatus::L7Ok(200) } else { CheckStatus::L4Con };
        CheckResult::new(status, None, Duration::ZERO)
    }

    #[test]
    fn rise_and_fall_counts() {
        let s = ServerState::new("a", 1);
        let mut st = Streak::default();
        apply_check(&s, &mut st, result(true), 2, 3);
        assert_eq!(s.health(), Health::Up, "first good check");
        apply_check(&s, &mut st, result(false), 2, 3);
        apply_check(&s, &mut st, result(false), 2, 3);
        assert_eq!(s.health(), Health::Up);
        apply_check(&s, &mut st, result(false), 2, 3);
        assert_eq!(s.health(), Health::Down);
        apply_check(&s, &mut st, result(true), 2, 3);
        assert_eq!(s.health(), Health::Down);
        apply_check(&s, &mut st, result(true), 2, 3);
        assert_eq!(s.health(), Health::Up);
    }

    #[test]
    fn passive_failures_mark_down_and_checks_need_rise_to_return() {
        let s = ServerState::new("a", 1);
        let mut st = Streak::default();
        for _ in 0..5 {
            apply_check(&s, &mut st, result(true), 2, 3);
        }
        passive_failure(&s, 3);
        passive_failure(&s, 3);
        assert_eq!(s.health(), Health::Up);
        passive_failure(&s, 3);
        assert_eq!(s.health(), Health::Down);
        apply_check(&s, &mut st, result(true), 2, 3);
        assert_eq!(s.health(), Health::Down, "the old streak does not count");
        apply_check(&s, &mut st, result(true), 2, 3);
        assert_eq!(s.health(), Health::Up);
        // Back up, it starts from zero: one failure does not take it out again.
        passive_failure(&s, 3);
        assert_eq!(s.health(), Health::Up);
    }
}
