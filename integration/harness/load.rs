//! Steady traffic while a test changes things underneath: keep-alive GET streams and
//! open WebSockets that keep echoing, each counting what went wrong.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::Conn;
use super::client::{self, Target};
use super::proxy::Proxy;

/// Steady GET load from `clients` keep-alive connections until `stop`; returns
/// (requests, failures, answers per server).
pub async fn steady_load(
    proxy: &Proxy,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>, HashMap<String, u64>) {
    let mut tasks = Vec::new();
    for i in 0..clients {
        let target = proxy.plain().from(&format!("127.0.0.{}", 10 + i));
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut failures, mut per) = (0u64, Vec::new(), HashMap::<String, u64>::new());
            let mut conn = Conn::open(&target).await.ok();
            // Bounded: the test stops it; 20,000 requests per client at most.
            while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                sent += 1;
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => {
                        conn = Conn::open(&target).await.ok();
                        failures.push("connect".to_string());
                        continue;
                    }
                };
                match c.get("/api").await {
                    Ok(r) if r.status == 200 => {
                        *per.entry(r.header("x-server").unwrap_or("?").to_string()).or_default() += 1
                    }
                    Ok(r) => failures.push(format!("status {}", r.status)),
                    Err(e) => {
                        failures.push(format!("io {e}"));
                        conn = Conn::open(&target).await.ok();
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (sent, failures, per)
        }));
    }
    let mut total = (0, Vec::new(), HashMap::new());
    for t in tasks {
        let (sent, failures, per) = t.await.expect("load task");
        total.0 += sent;
        total.1.extend(failures);
        for (k, v) in per {
            *total.2.entry(k).or_default() += v;
        }
    }
    total
}

/// `n` WebSockets through `target` at `path`, each sending a message every 200 ms and
/// checking its echo, until `stop`. Returns (messages echoed, problems).
pub async fn echoing_websockets(target: &Target, path: &str, n: usize, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let target = target.clone();
        let path = path.to_string();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut ws = match client::websocket(&target, &path).await {
                Ok(ws) => ws,
                Err(e) => return (0, vec![format!("ws {i}: open: {e}")]),
            };
            // The backend greets first.
            if !matches!(ws.next().await, Some(Ok(Message::Text(_)))) {
                return (0, vec![format!("ws {i}: no greeting")]);
            }
            let mut echoed = 0u64;
            // Bounded: the test stops it; 10,000 messages at most.
            while !stop.load(Ordering::Relaxed) && echoed < 10_000 {
                let msg = format!("{i}:{echoed}");
                if let Err(e) = ws.send(Message::Text(msg.clone().into())).await {
                    return (echoed, vec![format!("ws {i}: send: {e}")]);
                }
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str() == msg => echoed += 1,
                    other => return (echoed, vec![format!("ws {i}: expected echo of {msg}, got {other:?}")]),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _ = ws.close(None).await;
            (echoed, Vec::new())
        }));
    }
    let mut total = (0, Vec::new());
    for t in tasks {
        let (n, problems) = t.await.expect("websocket task");
        total.0 += n;
        total.1.extend(problems);
    }
    total
}
