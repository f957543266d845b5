//! Active health checks: one task per configured server, each probing on its own
//! jittered interval (so checks do not synchronise) with an HTTP GET or a TCP connect,
//! and a supervisor that starts and stops those tasks as reloads add and remove servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::{CheckMode, Health};
use crate::runtime::Shared;
use crate::state::{CheckResult, CheckStatus};

use super::{Streak, apply_check};

/// How often the supervisor looks for added or removed servers.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

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

/// Check server `name` until it leaves the config.
async fn check_loop(shared: Arc<Shared>, name: String) {
    let mut seed = crate::balance::name_id(&name) ^ u64::from(std::process::id());
    let mut streak = Streak::default();
    // The first check comes soon, spread over a tenth of the interval.
    let mut delay = jittered(shared.snapshot().config.health.interval / 10, &mut seed);
    loop {
        tokio::time::sleep(delay).await;
        let snapshot = shared.snapshot();
        let Some(server) = snapshot.config.server(&name) else {
            return;
        };
        let h = snapshot.config.health.clone();
        let state = shared.registry.server(&name, server.weight);
        let probed = server.address;
        let result = probe(probed, &h).await;
        // A reload may have moved the server meanwhile: a verdict on the old address
        // says nothing of the new one.
        if shared
            .snapshot()
            .config
            .server(&name)
            .is_some_and(|s| s.address == probed)
        {
            apply_check(&state, &mut streak, result, h.rise, h.fall);
        }
        delay = jittered(h.interval, &mut seed);
    }
}

/// Runs one check task per configured server.
pub struct Checker {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Checker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let snapshot = self.shared.snapshot();
            for s in &snapshot.config.servers {
                let running = tasks.get(&s.name).is_some_and(|t| !t.is_finished());
                if !running {
                    let task = tokio::spawn(check_loop(Arc::clone(&self.shared), s.name.clone()));
                    tasks.insert(s.name.clone(), task);
                }
            }
            tasks.retain(|name, task| {
                let keep = snapshot.config.server(name).is_some();
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        for task in tasks.values() {
            task.abort();
        }
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
