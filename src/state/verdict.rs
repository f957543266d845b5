//! One active check's verdict, typed: a [`CheckStatus`] in HAProxy's `check_status`
//! names (with the HTTP code where there is one), the reason in words when the status
//! alone does not say, how long it took and when.
//!
//! Probes (`health::check`) produce it, `health` turns it into UP/DOWN, `ServerState`
//! keeps the last one, and the stats outputs render it: [`CheckStatus::name`] is the
//! `check_status` column and metric label, [`CheckResult::detail`] the `last_chk` text
//! ("L7STS 500", "L4CON connection refused"). Nothing parses those strings back.

use std::fmt;
use std::time::{Duration, SystemTime};

/// What one active check found (HAProxy's `check_status`, the subset edgepin's TCP and
/// HTTP checks can produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Connected (TCP check: that is the whole check).
    L4Ok,
    /// No connection within the check timeout.
    L4Tout,
    /// The connection failed (refused, unreachable, reset).
    L4Con,
    /// An HTTP answer with an expected status.
    L7Ok(u16),
    /// Connected, but no HTTP status line within the check timeout.
    L7Tout,
    /// Connected, but the answer is not HTTP (or ended before a status line).
    L7Rsp,
    /// An HTTP answer with a status outside the expected range.
    L7Sts(u16),
}

impl CheckStatus {
    /// Every name, in HAProxy's order (the order of the Prometheus `state` labels).
    pub const NAMES: [&'static str; 7] = ["L4OK", "L4TOUT", "L4CON", "L7OK", "L7TOUT", "L7RSP", "L7STS"];

    /// HAProxy's name for it: `L4OK`, `L7STS`, ...
    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::L4Ok => "L4OK",
            CheckStatus::L4Tout => "L4TOUT",
            CheckStatus::L4Con => "L4CON",
            CheckStatus::L7Ok(_) => "L7OK",
            CheckStatus::L7Tout => "L7TOUT",
            CheckStatus::L7Rsp => "L7RSP",
            CheckStatus::L7Sts(_) => "L7STS",
        }
    }

    /// The HTTP status the server answered, when the check got one.
    pub fn code(self) -> Option<u16> {
        match self {
            CheckStatus::L7Ok(code) | CheckStatus::L7Sts(code) => Some(code),
            _ => None,
        }
    }

    /// Whether the server passed this check.
    pub fn ok(self) -> bool {
        matches!(self, CheckStatus::L4Ok | CheckStatus::L7Ok(_))
    }
}

impl fmt::Display for CheckStatus {
    /// The name and, when there is one, the HTTP code: `L7STS 500`, `L4CON`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{} {code}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

impl serde::Serialize for CheckStatus {
    /// As its name (the stats JSON's `status`; the code is a field of its own there).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The outcome of one active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub status: CheckStatus,
    /// Why, in words, when the status does not say it all: the connect error, what was
    /// wrong with the answer, which deadline passed.
    pub reason: Option<String>,
    pub duration: Duration,
    pub at: SystemTime,
}

impl CheckResult {
    /// A result finished now, `duration` after its probe started.
    pub fn new(status: CheckStatus, reason: Option<String>, duration: Duration) -> CheckResult {
        CheckResult {
            status,
            reason,
            duration,
            at: SystemTime::now(),
        }
    }

    pub fn ok(&self) -> bool {
        self.status.ok()
    }

    /// The one-line form operators know from HAProxy's `last_chk`: status, HTTP code,
    /// reason (`L7OK 200`, `L4CON connection refused`, `L7TOUT no answer in time`).
    pub fn detail(&self) -> String {
        match &self.reason {
            Some(reason) => format!("{} {reason}", self.status),
            None => self.status.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: CheckStatus, reason: Option<&str>) -> CheckResult {
        CheckResult::new(status, reason.map(str::to_string), Duration::ZERO)
    }

    #[test]
    fn detail_is_the_name_the_code_and_the_reason() {
        assert_eq!(result(CheckStatus::L4Ok, None).detail(), "L4OK");
        assert_eq!(result(CheckStatus::L7Ok(200), None).detail(), "L7OK 200");
        assert_eq!(result(CheckStatus::L7Sts(500), None).detail(), "L7STS 500");
        assert_eq!(
            result(CheckStatus::L4Con, Some("connection refused")).detail(),
            "L4CON connection refused"
        );
        assert_eq!(
            result(CheckStatus::L4Tout, Some("connect timeout")).detail(),
            "L4TOUT connect timeout"
        );
        assert_eq!(
            result(CheckStatus::L7Tout, Some("no answer in time")).detail(),
            "L7TOUT no answer in time"
        );
        assert_eq!(
            result(CheckStatus::L7Rsp, Some("not an HTTP answer")).detail(),
            "L7RSP not an HTTP answer"
        );
    }

    #[test]
    fn only_l4ok_and_l7ok_pass_and_only_l7_answers_have_a_code() {
        let all = [
            CheckStatus::L4Ok,
            CheckStatus::L4Tout,
            CheckStatus::L4Con,
            CheckStatus::L7Ok(204),
            CheckStatus::L7Tout,
            CheckStatus::L7Rsp,
            CheckStatus::L7Sts(503),
        ];
        let passed: Vec<_> = all.iter().filter(|s| s.ok()).map(|s| s.name()).collect();
        assert_eq!(passed, ["L4OK", "L7OK"]);
        let codes: Vec<_> = all.iter().filter_map(|s| s.code()).collect();
        assert_eq!(codes, [204, 503]);
        let names: Vec<_> = all.iter().map(|s| s.name()).collect();
        assert_eq!(names, CheckStatus::NAMES, "NAMES lists every status once, in order");
    }

    #[test]
    fn serialises_as_its_name() {
        let json = serde_json::to_string(&CheckStatus::L7Sts(500)).unwrap();
        assert_eq!(json, "\"L7STS\"");
    }
}
