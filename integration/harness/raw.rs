//! Requests written byte by byte on a connection of their own, for the tests that need
//! what a well-behaved client would never send (or send that way), and the answer read
//! as bytes until the proxy closes or a deadline passes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, Stream, Target};

/// What came back on a raw connection.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    /// The proxy closed the connection (FIN or reset) before the deadline.
    pub closed: bool,
    /// It was a reset: the read failed, where an orderly close reads 0.
    pub reset: bool,
}

impl Answer {
    /// The status of the first answer (0: none).
    pub fn status(&self) -> u16 {
        self.text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Read until the peer closes or `wait` passes.
pub async fn read_until_close(s: &mut Stream, wait: Duration) -> Answer {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16384];
    let (closed, reset) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => break (true, false),
            Ok(Err(_)) => break (true, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break (false, false),
        }
    };
    Answer {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
        reset,
    }
}

/// Send `parts` on a new connection from 127.0.0.1, with `pause` between them (a failed
/// write ends the sending: the proxy may have answered and closed), then read the answer.
pub async fn send(addr: SocketAddr, parts: &[&[u8]], pause: Duration, wait: Duration) -> Answer {
    let mut s = client::connect(&Target::plain(addr)).await.expect("connect");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if s.write_all(part).await.is_err() {
            break;
        }
    }
    read_until_close(&mut s, wait).await
}
