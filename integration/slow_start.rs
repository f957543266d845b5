//! A returning server is not stampeded: slow start ramps a server back from DOWN over its
//! window (round robin with the harness backends, sticky sessions with real
//! socket.io-client on Node workers), and a backend's `new_sessions` cap turns a burst of
//! handshakes into a steady admission with 503 + Retry-After, every client in at the end.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::node::{HeldClients, run_script};
use crate::harness::redis::Redis;
use crate::harness::worker::Worker;
use crate::harness::{Backend, Conn, Proxy};

/// Health checks that see UP within a second and DOWN within three, and do not flap
/// when the machine is loaded (a worker marked DOWN loses its sessions).
const QUICK_CHECKS: &str = "{ interval: 1s, timeout: 900ms, rise: 1, fall: 3 }";

/// The part of `picks` (time since the ramp began, whether the returning server took it)
/// in `[from, to)` seconds that the returning server took.
fn share(picks: &[(Duration, bool)], from: f64, to: f64) -> f64 {
    let window: Vec<bool> = picks
        .iter()
        .filter(|(t, _)| (from..to).contains(&t.as_secs_f64()))
        .map(|(_, on)| *on)
        .collect();
    assert!(window.len() >= 20, "too few picks in {from}..{to} s: {}", window.len());
    window.iter().filter(|on| **on).count() as f64 / window.len() as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_back_from_down_takes_a_round_robin_share_that_grows_over_its_slow_start() {
    let mut backends: Vec<Backend> = (1..=4).map(|i| Backend::start(&format!("w{i}"))).collect();
    let mut yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [w1, w2, w3, w4], slow_start: 4s }}\nhealth: {QUICK_CHECKS}\nservers:\n"
    );
    for b in &backends {
        yaml.push_str(&format!("  {}: {{ address: {} }}\n", b.name, b.addr));
    }
    let proxy = Proxy::start(&yaml);
    for b in &backends {
        proxy.wait_health(&b.name, "Up", Duration::from_secs(10)).await;
    }
    let full = proxy.server_stats("api", "w1").await;
    assert_eq!(
        (&full["slow_start"], &full["effective_weight"]),
        (&Value::Null, &Value::from(1.0))
    );

    backends[3].kill();
    proxy.wait_health("w4", "Down", Duration::from_secs(10)).await;
    backends[3].restart();
    proxy.wait_health("w4", "Up", Duration::from_secs(10)).await;
    let back = Instant::now();
    let ramping = proxy.server_stats("api", "w4").await;
    let percent = ramping["slow_start"]["percent"].as_u64().unwrap_or(100);
    assert!(percent < 50, "w4 in slow start: {ramping}");
    assert_eq!(ramping["status"], "UP");
    let metrics = crate::harness::client::get(&proxy.stats_target(), "/metrics")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("edgepin_server_slow_start_ratio{proxy=\"api\",server=\"w4\"} 0."),
        "{metrics}"
    );

    // Steady requests through the ramp and a while after it.
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    let mut picks = Vec::new();
    while back.elapsed() < Duration::from_millis(5_500) {
        let r = conn.get("/").await.unwrap();
        assert_eq!(r.status, 200);
        picks.push((back.elapsed(), r.header("x-server") == Some("w4")));
    }
    // Weight × share over the sum: about 5 % in the first second, 23 % in the last,
    // then a quarter; without slow start a quarter from the first request.
    let (early, late, after) = (
        share(&picks, 0.0, 1.0),
        share(&picks, 3.0, 4.0),
        share(&picks, 4.3, 5.5),
    );
    let shares = format!(
        "w4's share: first second {early:.3}, last second {late:.3}, after {after:.3} ({} requests)",
        picks.len()
    );
    eprintln!("{shares}");
    assert!(early < 0.12, "{shares}");
    assert!(late > early + 0.08 && late < 0.3, "{shares}");
    assert!((0.18..0.32).contains(&after), "{shares}");
    let done = proxy.server_stats("api", "w4").await;
    assert_eq!(
        (&done["slow_start"], &done["effective_weight"]),
        (&Value::Null, &Value::from(1.0))
    );
}

/// The sessions of `report` in `phase`: (ms since the phase began when it connected,
/// its worker).
fn sessions(report: &Value, phase: &str) -> Vec<(u64, String)> {
    sessions_by(report, phase, "at")
}

/// The same with the time of `event`: `at` (connected) or `opened` (its Engine.IO
/// handshake answered, i.e. admitted and placed by the edge).
fn sessions_by(report: &Value, phase: &str, event: &str) -> Vec<(u64, String)> {
    report["sessions"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|s| s["phase"] == phase)
                .map(|s| {
                    (
                        s[event].as_u64().unwrap_or(u64::MAX),
                        s["worker"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_worker_back_among_three_loaded_ones_takes_new_sessions_gradually_and_keeps_them() {
    let redis = Redis::start();
    let mut workers: Vec<Worker> = (1..=4)
        .map(|i| Worker::start_node(&format!("n{i}"), &redis.url()))
        .collect();
    let mut yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: sockets }}\n\
         backends:\n  sockets: {{ balance: sticky, servers: [n1, n2, n3, n4], slow_start: 6s, timeouts: {{ server: 60s }} }}\n\
         health: {QUICK_CHECKS}\nservers:\n"
    );
    for w in &workers {
        yaml.push_str(&format!("  {}: {{ address: {} }}\n", w.id, w.addr));
    }
    let proxy = Proxy::start(&yaml);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n4 = workers[3].addr;
    workers[3].kill();
    rt.block_on(proxy.wait_health("n4", "Down", Duration::from_secs(10)));

    // 60 sessions on the three others, then 190 new ones at 25/s: through the 6 s ramp
    // of n4 and 1.5 s beyond.
    let args: Vec<String> = [
        "--url",
        &format!("http://{}", proxy.http),
        "--load",
        "60",
        "--arrivals",
        "190",
        "--rate",
        "25",
        "--addresses",
        "250",
    ]
    .map(String::from)
    .to_vec();
    let mut clients = HeldClients::start_script("arrivals.js", &args, Duration::from_secs(60));
    let held = clients.wait_held(Duration::from_secs(30));
    assert!(held["perWorker"].get("n4").is_none(), "n4 is down: {held}");
    workers[3] = Worker::start_node_at("n4", &redis.url(), n4);
    rt.block_on(proxy.wait_health("n4", "Up", Duration::from_secs(10)));
    let report = clients.release_and_finish(Duration::from_secs(60));

    assert_eq!(
        report["disconnects"], 0,
        "no session moved or lost: {} {}",
        report["errors"], report["phases"]
    );
    let loaded = sessions(&report, "load");
    let arrivals = sessions_by(&report, "arrival", "opened");
    assert_eq!(loaded.len() + arrivals.len(), 250, "{report}");
    assert!(
        loaded
            .iter()
            .chain(&arrivals)
            .all(|(at, w)| *at != u64::MAX && !w.is_empty()),
        "every session connected and answered: {report}"
    );
    assert!(loaded.iter().all(|(_, w)| w != "n4"));
    // n4's part of the new sessions early (the first 1.5 s of its ramp) and late (its
    // last 1.5 s and the 1.5 s after). Without slow start it takes about 60 % early:
    // bounded loads send every new session to the emptiest server until it catches up.
    // With it, its load follows its share: a few % early, a quarter or more late.
    let part = |from: u64, to: u64| {
        let window: Vec<&String> = arrivals
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, w)| w)
            .collect();
        let on_n4 = window.iter().filter(|w| w.as_str() == "n4").count();
        (on_n4 as f64 / window.len().max(1) as f64, window.len())
    };
    let ((early, n_early), (late, n_late)) = (part(0, 1500), part(4500, 7500));
    let parts = format!("n4's part of new sessions: early {early:.2} of {n_early}, late {late:.2} of {n_late}");
    assert!(
        n_early >= 15 && n_late >= 30,
        "too few sessions admitted in a window: {parts}"
    );
    eprintln!("{parts}");
    assert!(early < 0.25, "{parts}\n{report}");
    assert!(late >= 0.12 && late > early + 0.08, "{parts}\n{report}");
}

#[test]
fn a_new_sessions_cap_turns_a_burst_of_two_thousand_handshakes_into_a_steady_admission() {
    const PER_SECOND: u64 = 200;
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=2)
        .map(|i| Worker::start_node(&format!("n{i}"), &redis.url()))
        .collect();
    let mut yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: sockets }}\n\
         backends:\n  sockets: {{ balance: sticky, servers: [n1, n2], timeouts: {{ server: 60s }},\n\
         \x20   new_sessions: {{ per_second: {PER_SECOND}, burst: {PER_SECOND} }} }}\n\
         sticky: {{ handshake_rate: {{ per_second: 0 }} }}\n\
         health: {{ interval: 2s, timeout: 1500ms, fall: 5, passive_fall: 0 }}\nservers:\n"
    );
    for w in &workers {
        yaml.push_str(&format!("  {}: {{ address: {} }}\n", w.id, w.addr));
    }
    let proxy = Proxy::start(&yaml);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A session opened before the burst, to show that its requests are never refused.
    let sid = rt.block_on(async {
        let mut conn = Conn::open(&proxy.plain()).await.unwrap();
        let open = conn.get("/socket.io/?EIO=4&transport=polling").await.unwrap().text();
        let sid = open.split("\"sid\":\"").nth(1).and_then(|r| r.split('"').next());
        sid.expect("a sid in the open packet").to_string()
    });
    let url = format!("http://{}", proxy.http);
    let started = Instant::now();
    // 2,000 clients at once, with socket.io-client's own reconnection backoff.
    let run = std::thread::spawn(move || {
        let args = [
            "--url",
            &url,
            "--load",
            "2000",
            "--addresses",
            "500",
            "--transports",
            "websocket",
            "--backoff",
            "default",
        ];
        run_script("arrivals.js", &args, Duration::from_secs(90))
    });
    // Meanwhile a handshake of our own meets the cap: 503 with a Retry-After. (Without
    // the cap, the burst overwhelms the workers: 504s, and no such 503.)
    let refused = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut conn = Conn::open(&proxy.plain()).await.unwrap();
            let r = conn.get("/socket.io/?EIO=4&transport=polling").await.unwrap();
            if r.status == 503 && r.text().contains("too many new sessions") {
                return Ok(r);
            }
            seen.push(r.status);
        }
        Err(seen)
    });
    let refused = refused.unwrap_or_else(|seen| panic!("no handshake refused by the cap; statuses {seen:?}"));
    let after: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((1..=3).contains(&after), "Retry-After {after}");
    // While new ones are refused, the existing session goes on (its namespace CONNECT).
    let existing = rt.block_on(async {
        let mut conn = Conn::open(&proxy.plain()).await.unwrap();
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        conn.request("POST", &path, &["Content-Type: text/plain;charset=UTF-8".into()], b"40")
            .await
            .unwrap()
    });
    assert_eq!((existing.status, existing.text().as_str()), (200, "ok"));
    // Sessions admitted over time, as the edge counts them (WebSocket tunnels opened:
    // each client's handshake is its upgrade), every 250 ms until the clients are done.
    let admitted = rt.block_on(async {
        let mut samples = Vec::new();
        while !run.is_finished() && started.elapsed() < Duration::from_secs(120) {
            let asked = Instant::now();
            let stats = proxy.backend_stats("sockets").await;
            let at = (asked + asked.elapsed() / 2).duration_since(started);
            let opened = stats["counters"]["websocket"]["total"].as_u64().unwrap_or(0);
            samples.push((at, opened));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        samples
    });
    let report = run.join().expect("clients");
    let elapsed = started.elapsed();

    let all = sessions(&report, "load");
    let summary = format!(
        "connect errors {}, statuses {}, disconnects {}, errors {}",
        report["connectErrors"], report["errorStatuses"], report["disconnects"], report["errors"]
    );
    assert_eq!(all.len(), 2000, "{summary}");
    let missing = all.iter().filter(|(at, w)| *at == u64::MAX || w.is_empty()).count();
    assert_eq!(missing, 0, "every client connects in the end: {summary}");
    assert_eq!(report["disconnects"], 0, "{summary}");
    let refusals = report["errorStatuses"]["503"].as_u64().unwrap_or(0);
    assert!(refusals > 0, "the burst met the cap: {summary}");
    // Admission is smooth: between any two samples, at most the burst plus the rate
    // for the time between them (10 % and 25 sessions of margin for the sampling).
    let mut worst = 0.0f64;
    for (i, &(t1, a1)) in admitted.iter().enumerate() {
        for &(t2, a2) in &admitted[i + 1..] {
            let allowed = PER_SECOND as f64 * (1.0 + (t2 - t1).as_secs_f64() * 1.1) + 25.0;
            worst = worst.max(a2.saturating_sub(a1) as f64 / allowed);
        }
    }
    assert!(
        worst <= 1.0,
        "admitted faster than the cap: {worst:.2} of allowed; {admitted:?}"
    );
    let last = all.iter().map(|(at, _)| *at).max().unwrap_or(0);
    assert!(
        last >= (2000 - PER_SECOND) * 1000 / PER_SECOND * 9 / 10,
        "all in within {last} ms: faster than the cap allows"
    );
    let stats = rt.block_on(proxy.backend_stats("sockets"));
    assert!(
        stats["new_sessions_refused"].as_u64().unwrap_or(0) >= refusals,
        "{stats}"
    );
    assert_eq!(stats["new_sessions"]["per_second"], PER_SECOND);
    eprintln!(
        "2,000 handshakes: {refusals} refused, all in after {last} ms, fastest stretch {worst:.2} of the cap, test {elapsed:?}"
    );
}
