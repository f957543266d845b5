//! Before a server is chosen for a request of a sticky backend: a sid the local table
//! does not know is asked of the table shared with other edgepins through Redis
//! (`sticky.shared`, `sticky::shared`), and, while an upgrade's draining process may
//! still be telling this one about it, awaited a moment. Both engines call [`resolve`];
//! it never fails a request (an unanswered sid goes by cookie or hash).

use std::time::Duration;

use crate::config::Balance;
use crate::runtime::{BackendRt, Shared};
use crate::sticky::shared::{key, plausible};
use crate::sticky::sid::SidTable;

/// A lookup Redis answers with nothing is asked again after this pause, then after
/// twice as long, and so on within the timeout: the edge that saw the handshake may
/// still be writing the sid (it never delays the answer for that).
const MISS_RETRY_AFTER: Duration = Duration::from_millis(5);
/// Longest wait for a sid an upgrade's draining process is still telling this one about.
const PREDECESSOR_WAIT: Duration = Duration::from_millis(50);

/// While an earlier process drains after an upgrade, a sid it learned an instant ago (a
/// handshake answered there) reaches this process within milliseconds (`upgrade`): an
/// unknown sid waits for it up to [`PREDECESSOR_WAIT`].
async fn await_predecessor(table: &SidTable, sid: &str) {
    let deadline = tokio::time::Instant::now() + PREDECESSOR_WAIT;
    let mut pause = Duration::from_millis(2);
    while !table.knows(sid) && tokio::time::Instant::now() + pause < deadline {
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

/// Before a server is chosen for a request of a sticky backend `b` with `sid`: if the
/// local table does not know the sid, ask the shared table (within its timeout) and
/// remember its answer locally. Returns at once when there is nothing to ask; never fails
/// (the request then goes by cookie or hash).
pub async fn resolve(shared: &Shared, b: &BackendRt, sid: Option<&str>) {
    let Some(sid) = sid else { return };
    let table = &shared.sids;
    if shared.lifecycle.has_draining() && b.cfg.balance == Balance::Sticky && plausible(sid) {
        await_predecessor(table, sid).await;
    }
    let link = &table.shared;
    let Some(settings) = link.settings() else { return };
    if b.cfg.balance != Balance::Sticky || !plausible(sid) || table.knows(sid) {
        return;
    }
    let counters = &link.counters;
    let Some(mut conn) = link.connection() else {
        counters.fallbacks.inc();
        return;
    };
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let get = redis::cmd("GET").arg(key(&settings, sid)).to_owned();
    let mut answer = tokio::time::timeout_at(deadline, conn.query::<Option<String>>(&get)).await;
    let mut pause = MISS_RETRY_AFTER;
    while matches!(answer, Ok(Ok(None))) && tokio::time::Instant::now() + pause < deadline {
        tokio::time::sleep(pause).await;
        pause *= 2;
        match tokio::time::timeout_at(deadline, conn.query::<Option<String>>(&get)).await {
            // Past the deadline, or failing now: it stays a miss.
            Ok(Ok(Some(name))) => answer = Ok(Ok(Some(name))),
            Ok(Ok(None)) => {}
            _ => break,
        }
    }
    match answer {
        Ok(Ok(Some(name))) => match b.members.iter().find(|m| *m.name == *name) {
            Some(m) => {
                counters.hits.inc();
                table.adopt(sid, &m.state);
            }
            None => counters.misses.inc(),
        },
        Ok(Ok(None)) => counters.misses.inc(),
        Ok(Err(e)) => {
            counters.errors.inc();
            counters.fallbacks.inc();
            tracing::debug!(error = %e, "shared sid table: lookup failed");
        }
        Err(_) => {
            counters.timeouts.inc();
            counters.fallbacks.inc();
        }
    }
}
