//! Active health checks of one server: the probe (a TCP connect, or an HTTP GET whose
//! status must be in range) and the loop that probes on its own jittered interval (so
//! checks do not synchronise) and turns the results into UP/DOWN on the server's state.
//!
//! The loop is given what it needs — the server's state and a [`Targets`] that says where
//! the server is now and how to check it — and never sees the runtime. The service that
//! runs one loop per configured server is `upkeep::checks`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{CheckMode, Health};
use crate::state::{CheckResult, CheckStatus, ServerState};

use super::{Streak, apply_check};

/// What to probe for one server, as the running config says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub health: Health,
}

/// Where a check loop learns its server's current target. A reload may move a server or
/// change the checks at any moment; `None` means the server left the config.
pub trait Targets: Send + Sync + 'static {
    fn target(&self, server: &str) -> Option<Target>;
}

/// Probe a server once, within `h.timeout`.
pub async fn probe(addr: SocketAddr, h: &Health) -> CheckResult {
    let started = Instant::now();
    let (status, reason) = match tokio::time::timeout(h.timeout, TcpStream::connect(addr)).await {
        Err(_) => (CheckStatus::L4Tout, Some("connect timeout".to_string())),
        Ok(Err(e)) => (CheckStatus::L4Con, Some(e.to_string())),
        Ok(Ok(stream)) => match h.mode {
            CheckMode::Tcp => (CheckStatus::L4Ok, None),
            CheckMode::Http => {
                let left = h.timeout.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, http_status(stream, addr, &h.path)).await {
                    Err(_) => (CheckStatus::L7Tout, Some("no answer in time".to_string())),
                    Ok(Err(e)) => (CheckStatus::L7Rsp, Some(e.to_string())),
                    Ok(Ok(code)) if (h.expect.0..=h.expect.1).contains(&code) => (CheckStatus::L7Ok(code), None),
                    Ok(Ok(code)) => (CheckStatus::L7Sts(code), None),
                }
            }
        },
    };
    CheckResult::new(status, reason, started.elapsed())
}

/// Send `GET path` and read the status code of the answer.
async fn http_status(mut stream: TcpStream, addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgepin-health\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 4096 {
            return Err(std::io::Error::other("closed before a status line"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(std::io::Error::other("not an HTTP answer")),
    }
}

/// A delay in [0.9, 1.1) × `interval`, different per server and per round.
fn jittered(interval: Duration, seed: &mut u64) -> Duration {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let frac = (*seed >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(0.9 + 0.2 * frac)
}

/// Check server `name` until it leaves the config, applying the verdicts to `state`.
pub async fn run(name: String, state: Arc<ServerState>, targets: Arc<dyn Targets>) {
    let mut seed = crate::balance::name_id(&name) ^ u64::from(std::process::id());
    let mut streak = Streak::default();
    let Some(first) = targets.target(&name) else { return };
    // The first check comes soon, spread over a tenth of the interval.
    let mut delay = jittered(first.health.interval / 10, &mut seed);
    loop {
        tokio::time::sleep(delay).await;
        let Some(Target { addr, health: h }) = targets.target(&name) else {
            return;
        };
        let result = probe(addr, &h).await;
        // A reload may have moved the server meanwhile: a verdict on the old address
        // says nothing of the new one.
        if targets.target(&name).is_some_and(|t| t.addr == addr) {
            apply_check(&state, &mut streak, result, h.rise, h.fall);
        }
        delay = jittered(h.interval, &mut seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(mode: CheckMode) -> Health {
        Health {
            mode,
            timeout: Duration::from_millis(500),
            ..Health::default()
        }
    }

    async fn answer_once(status: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_reads_status() {
        let r = probe(answer_once("200 OK").await, &health(CheckMode::Http)).await;
        assert_eq!(r.status, CheckStatus::L7Ok(200), "{r:?}");
        let r = probe(answer_once("500 Oops").await, &health(CheckMode::Http)).await;
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (CheckStatus::L7Sts(500), None),
            "{r:?}"
        );
        assert_eq!(r.detail(), "L7STS 500");
    }

    #[tokio::test]
    async fn refused_and_hanging_servers_fail() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let r = probe(addr, &health(CheckMode::Http)).await;
        assert_eq!(r.status, CheckStatus::L4Con, "{r:?}");
        assert!(r.detail().starts_with("L4CON "), "{r:?}");

        // Accepts (the kernel does) but never answers.
        let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = probe(hang.local_addr().unwrap(), &health(CheckMode::Http)).await;
        assert_eq!(r.detail(), "L7TOUT no answer in time", "{r:?}");
        let r = probe(hang.local_addr().unwrap(), &health(CheckMode::Tcp)).await;
        assert_eq!(r.status, CheckStatus::L4Ok, "tcp mode only connects: {r:?}");
    }

    /// Targets from a script: each call gets the next answer; `None` once it runs out.
    struct Script(std::sync::Mutex<std::collections::VecDeque<Option<Target>>>);

    impl Targets for Script {
        fn target(&self, _: &str) -> Option<Target> {
            self.0.lock().unwrap().pop_front().flatten()
        }
    }

    /// Run one server's check loop over `script` to its end (bounded).
    async fn run_script(script: Vec<Option<Target>>) -> Arc<ServerState> {
        let state = Arc::new(ServerState::new("a", 1));
        let targets = Arc::new(Script(std::sync::Mutex::new(script.into())));
        let ran = tokio::time::timeout(Duration::from_secs(5), run("a".into(), Arc::clone(&state), targets)).await;
        assert!(ran.is_ok(), "the loop ends when its server leaves the config");
        state
    }

    fn target(addr: SocketAddr) -> Option<Target> {
        let health = Health {
            interval: Duration::from_millis(50),
            ..health(CheckMode::Http)
        };
        Some(Target { addr, health })
    }

    #[tokio::test]
    async fn a_verdict_on_the_current_address_is_applied() {
        let up = answer_once("200 OK").await;
        // First delay, probe, still there after the probe; then gone.
        let state = run_script(vec![target(up), target(up), target(up)]).await;
        assert_eq!(state.health(), crate::state::Health::Up);
        let last = state.detail().last_check.clone().unwrap();
        assert_eq!(last.status, CheckStatus::L7Ok(200));
    }

    #[tokio::test]
    async fn a_verdict_on_an_address_the_server_moved_from_is_dropped() {
        let failing = answer_once("500 Oops").await;
        let elsewhere = answer_once("200 OK").await;
        // The probe of the old address ends after a reload moved the server.
        let state = run_script(vec![target(failing), target(failing), target(elsewhere)]).await;
        assert_eq!(state.health(), crate::state::Health::Checking, "the 500 is not applied");
        assert!(state.detail().last_check.is_none());
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let mut seed = 42;
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(2), &mut seed);
            assert!(
                d >= Duration::from_millis(1800) && d < Duration::from_millis(2200),
                "{d:?}"
            );
        }
    }
}
