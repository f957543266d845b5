//! The dashboard's charts end to end: 100 clients on three `edgepin worker`s through the
//! proxy (a WebSocket each, that reconnects when it drops, and REST), one worker killed,
//! and the history in `/stats.json` and the SVG charts in headless Chromium showing it
//! as a drop on that worker's line and a rise on the others'. A screenshot of the page
//! is left at target/stats-charts.png.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value as Json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::browser::{self, Browser};
use crate::harness::redis::Redis;
use crate::harness::worker::socketio_body;
use crate::harness::{Conn, Proxy, Target, Worker, client, eventually};

const CLIENTS: usize = 100;
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];
/// The y of 0 in a chart's SVG (charts.rs: TOP + plot height).
const BASELINE: f64 = 104.0;

/// Counts of what the clients do, shared with the test.
#[derive(Default)]
struct Tally {
    /// WebSockets open now.
    open: AtomicU64,
    /// WebSockets opened, reconnections included.
    opened: AtomicU64,
    requests: AtomicU64,
}

/// One client from its own address: a Socket.IO WebSocket (answering the worker's
/// pings) that reconnects 200 ms after it drops, and a REST request every second from
/// `offset` on.
/// Bounded by `stop` and a two-minute deadline.
async fn client_loop(target: Target, offset: Duration, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rest: Option<Conn> = None;
    let mut next_rest = Instant::now() + offset;
    while !stop.load(Relaxed) && Instant::now() < deadline {
        let Ok(mut ws) = client::websocket(&target, "/socket.io/?EIO=4&transport=websocket").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tally.open.fetch_add(1, Relaxed);
        tally.opened.fetch_add(1, Relaxed);
        let _ = ws.send(Message::Text("40".into())).await; // Socket.IO connect
        while !stop.load(Relaxed) && Instant::now() < deadline {
            if Instant::now() >= next_rest {
                next_rest = Instant::now() + Duration::from_secs(1);
                if rest.is_none() {
                    rest = Conn::open(&target).await.ok();
                }
                let answered = match rest.as_mut() {
                    Some(c) => matches!(c.get("/api/whoami").await, Ok(r) if r.status == 200),
                    None => false,
                };
                if answered {
                    tally.requests.fetch_add(1, Relaxed);
                } else {
                    rest = None;
                }
            }
            match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
                Err(_) => {}
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                    let _ = ws.send(Message::Text("3".into())).await;
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
        tally.open.fetch_sub(1, Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stats_json(proxy: &Proxy) -> Json {
    let r = client::get(&proxy.stats_target(), "/stats.json")
        .await
        .expect("stats.json");
    assert_eq!(r.status, 200);
    r.json()
}

/// The points of a series, `null`s as `None`.
fn points(series: &Json) -> Vec<Option<f64>> {
    series
        .as_array()
        .map(|a| a.iter().map(Json::as_f64).collect())
        .unwrap_or_default()
}

/// The latest point of each server's open WebSockets.
fn websockets_now(stats: &Json) -> HashMap<String, f64> {
    WORKERS
        .iter()
        .map(|w| {
            let last = points(&stats["history"]["servers"][w]["websockets_open"])
                .last()
                .copied()
                .flatten()
                .unwrap_or(-1.0);
            (w.to_string(), last)
        })
        .collect()
}

/// The `d` of the `<path>` of `series` inside the chart `chart` of `dom`.
fn chart_path<'a>(dom: &'a str, chart: &str, series: &str) -> Option<&'a str> {
    let start = dom.find(&format!("id=\"chart-{chart}\""))?;
    let figure = &dom[start..start + dom[start..].find("</figure>")?];
    let at = figure.find(&format!("<path class=\"series\" data-series=\"{series}\""))?;
    let d = figure[at..].find(" d=\"")? + at + 4;
    Some(&figure[d..d + figure[d..].find('"')?])
}

/// The y of each point of an SVG path (`M x y L x y …`); larger is lower on screen.
fn ys(d: &str) -> Vec<f64> {
    d.split(['M', 'L'])
        .filter_map(|p| p.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn charts_show_a_killed_worker_as_a_drop_on_its_line_and_a_rise_on_the_others() {
    let started = Instant::now();
    let redis = Redis::start();
    let mut workers: Vec<Worker> = WORKERS.iter().map(|w| Worker::start(w, &redis.url())).collect();
    let body = socketio_body(&workers, "stats: { history: { interval: 250ms, span: 15s } }\n");
    let proxy = Proxy::start(&body);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            // One source address per client: cookieless WebSockets are placed by a hash of it.
            let target = proxy.plain().from(&format!("127.0.{}.{}", 1 + i / 200, 10 + i % 200));
            // REST requests spread over each second, not in one burst.
            let offset = Duration::from_millis(10 * i as u64);
            tokio::spawn(client_loop(target, offset, Arc::clone(&stop), Arc::clone(&tally)))
        })
        .collect();

    // Every client connected, spread over the three workers, with a few points of it.
    let mut before = HashMap::new();
    let spread = eventually(Duration::from_secs(30), async || {
        let stats = stats_json(&proxy).await;
        before = websockets_now(&stats);
        let points = stats["history"]["times_unix_ms"].as_array().map_or(0, Vec::len);
        tally.open.load(Relaxed) == CLIENTS as u64
            && before.values().sum::<f64>() == CLIENTS as f64
            && before.values().all(|&n| n > 0.0)
            && points >= 12
    })
    .await;
    assert!(
        spread,
        "100 WebSockets over three workers: {before:?}, {} open",
        tally.open.load(Relaxed)
    );
    let page = Browser::open(&format!("http://{}/?refresh=1", proxy.stats));

    // Kill the worker with the most WebSockets; its clients reconnect to the others.
    let victim = WORKERS
        .iter()
        .max_by(|a, b| before[**a].total_cmp(&before[**b]))
        .expect("a worker")
        .to_string();
    let others: Vec<String> = WORKERS
        .iter()
        .filter(|w| **w != victim)
        .map(|w| w.to_string())
        .collect();
    let killed_at = Instant::now();
    workers.iter_mut().find(|w| w.id == victim).expect("victim").kill();
    let mut after = HashMap::new();
    let moved = eventually(Duration::from_secs(30), async || {
        let stats = stats_json(&proxy).await;
        after = websockets_now(&stats);
        after[&victim] == 0.0
            && others.iter().map(|w| after[w]).sum::<f64>() == CLIENTS as f64
            && others.iter().all(|w| after[w] > before[w])
    })
    .await;
    assert!(
        moved,
        "{victim} killed: its WebSockets dropped to 0 and went to {others:?}: before {before:?}, after {after:?}"
    );
    let moved_in = killed_at.elapsed();
    // A few more points at the new level, so the drop is a step on the charts.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stats = stats_json(&proxy).await;
    let h = &stats["history"];
    assert_eq!(
        (h["interval_seconds"].as_f64(), h["points"].as_u64()),
        (Some(0.25), Some(60))
    );
    let n = h["times_unix_ms"].as_array().map_or(0, Vec::len);
    let victim_line = points(&h["servers"][&victim]["websockets_open"]);
    assert_eq!(victim_line.len(), n, "one value per time");
    let peak = victim_line.iter().flatten().fold(0.0f64, |m, v| m.max(*v));
    assert!(
        peak >= before[&victim],
        "{victim}'s line held its WebSockets: {victim_line:?}"
    );
    assert_eq!(victim_line.last(), Some(&Some(0.0)), "then dropped to 0");
    for backend in ["api", "sockets"] {
        let requests = points(&h["backends"][backend]["requests_per_second"]);
        assert!(
            requests.iter().flatten().any(|r| *r > 0.0),
            "{backend} requests/s: {requests:?}"
        );
    }
    let api_total: f64 = points(&h["backends"]["api"]["requests_per_second"])
        .iter()
        .flatten()
        .sum();
    assert!(api_total > 0.0 && tally.requests.load(Relaxed) > 0);

    // The page, as Chromium rendered it after its own refresh: a line per backend and
    // per server, the victim's ending at the bottom, the others' ending higher than
    // they were before the kill.
    let mut dom = String::new();
    let mut victim_ys = Vec::new();
    let drawn = eventually(Duration::from_secs(15), async || {
        let Some(d) = page.dom().await else { return false };
        dom = d;
        victim_ys = chart_path(&dom, "websockets", &victim).map(ys).unwrap_or_default();
        victim_ys.last() == Some(&BASELINE) && victim_ys.iter().any(|y| *y < BASELINE)
    })
    .await;
    assert!(
        drawn,
        "the victim's line drops to 0 in the page: {victim_ys:?}\n{}",
        page.log_tail(20)
    );
    // The victim's last point above the baseline: just before the kill.
    let before_kill = victim_ys.iter().rposition(|y| *y < BASELINE).expect("a point above 0");
    for backend in ["api", "sockets"] {
        for chart in ["backend-requests", "backend-errors"] {
            assert!(
                chart_path(&dom, chart, backend).is_some(),
                "{chart} has a line for {backend}"
            );
        }
    }
    for w in WORKERS {
        assert!(
            chart_path(&dom, "server-requests", w).is_some(),
            "requests line for {w}"
        );
    }
    for w in &others {
        let line = ys(chart_path(&dom, "websockets", w).expect("a line per server"));
        assert_eq!(line.len(), victim_ys.len(), "levels have a point at every time");
        let (then, now) = (line[before_kill], line[line.len() - 1]);
        assert!(
            now < then,
            "{w}'s line rises after the kill (y {then} -> {now}): {line:?}"
        );
    }
    assert!(dom.contains("id=\"chart-failures\"") && dom.contains("id=\"chart-sids\""));
    assert!(!dom.contains("<script"), "no JavaScript");

    let shot = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/stats-charts.png");
    browser::screenshot(&format!("http://{}/?refresh=0", proxy.stats), &shot, (1400, 1100));
    stop.store(true, Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    eprintln!(
        "{} WebSockets opened, {} REST requests; {victim} killed, clients moved in {:.1} s; test {:.1} s",
        tally.opened.load(Relaxed),
        tally.requests.load(Relaxed),
        moved_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
