//! `edgepin upgrade`: a new process takes every listener and the state, the old one
//! drains its tunnels and leaves when empty or at `reload.hard_stop_after`; a new
//! process that cannot start changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::node::BulkClients;
use crate::harness::proxy::exited;
use crate::harness::redis::Redis;
use crate::harness::worker::Worker;
use crate::harness::{Backend, Conn, HealthMode, Proxy, Target, api_body, client};

/// What a load task saw.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failures.extend(other.failures);
    }
}

/// REST load on `path` until `stop`: `fresh` tasks open a new connection per request
/// (every connect goes through the listeners being handed over), `kept` tasks use
/// keep-alive connections (reopened after a `Connection: close`). Each from its own
/// 127.0.0.x address.
async fn rest_load(target: &Target, path: &str, fresh: usize, kept: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut tasks = Vec::new();
    for i in 0..fresh + kept {
        let target = target.clone().from(&format!("127.0.0.{}", 100 + i));
        let (path, stop) = (path.to_string(), Arc::clone(&stop));
        let keep_alive = i >= fresh;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut conn: Option<Conn> = None;
            // Bounded: the test stops it; 50,000 requests per task at most.
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if conn.is_none() {
                    match Conn::open(&target).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            tally.failures.push(format!("connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match c.get(&path).await {
                    Ok(r) if r.status == 200 => {
                        tally.ok += 1;
                        if !keep_alive || r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                            conn = None;
                        }
                    }
                    Ok(r) => {
                        tally.failures.push(format!("status {}", r.status));
                        conn = None;
                    }
                    Err(e) => {
                        tally.failures.push(format!("request: {e}"));
                        conn = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        total.add(t.await.expect("load task"));
    }
    total
}

/// Edgepin workers behind edgepin: `api` round robin, `sockets` sticky.
fn fleet_yaml(workers: &[Worker]) -> String {
    let names: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let mut y = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [{list}] }}\n  sockets: {{ balance: sticky, servers: [{list}], timeouts: {{ server: 60s }} }}\n\
         health: {{ interval: 500ms, timeout: 400ms, rise: 1, fall: 2, path: /health }}\nservers:\n",
        list = names.join(", ")
    );
    for w in workers {
        y.push_str(&format!("  {}: {{ address: {} }}\n", w.id, w.addr));
    }
    y
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The draining processes the serving one shows, by pid: their tunnels.
async fn draining(proxy: &Proxy) -> Vec<(u64, u64)> {
    let stats = proxy.stats().await;
    let mut out: Vec<(u64, u64)> = stats["draining"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| (n(&d["pid"]), n(&d["tunnels"])))
        .collect();
    out.sort();
    out
}

/// Wait until `pid` has exited; how long that took (panics after `timeout`).
async fn wait_exit(pid: u32, timeout: Duration) -> Duration {
    let started = Instant::now();
    while !exited(pid) {
        assert!(started.elapsed() < timeout, "pid {pid} still runs after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn three_upgrades_under_load_lose_no_websocket_and_no_request() {
    let started = Instant::now();
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=2).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    let proxy = Proxy::builder(&fleet_yaml(&workers))
        .reload("hard_stop_after: 120s, close_spread: 5s")
        .start();
    let url = format!("http://127.0.0.1:{}", proxy.http.port());
    let mut clients = BulkClients::start(&[
        "--url",
        &url,
        "--clients",
        "700",
        "--addresses",
        "50",
        "--transports",
        "websocket",
    ]);
    let connected = clients.ask(json!({"op": "connect", "timeout": 90_000}), Duration::from_secs(120));
    assert_eq!(n(&connected["connected"]), 700, "{connected}");

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (target, stop) = (proxy.plain(), Arc::clone(&stop));
        tokio::spawn(async move { rest_load(&target, "/api/whoami", 4, 4, stop).await })
    };
    let mut pids = vec![proxy.serving_pid()];
    // 700 sockets on the first process; 150 more on each of the next two, so three
    // processes drain at the end, each with tunnels of its own.
    for (round, more) in [(1, 150), (2, 150), (3, 0)] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok, out) = proxy.upgrade(&[]);
        assert!(ok, "upgrade {round} failed: {out}\n{}", proxy.proc.log_tail(30));
        let new = proxy.serving_pid();
        assert!(!pids.contains(&new), "upgrade {round}: a new process serves ({out})");
        pids.push(new);
        // Every socket, all on older processes now, still talks both ways.
        let r = clients.ask(json!({"op": "round", "timeout": 15_000}), Duration::from_secs(60));
        assert_eq!(
            (n(&r["ok"]), n(&r["failed"]), n(&r["moved"])),
            (n(&r["asked"]), 0, 0),
            "{r}"
        );
        if more > 0 {
            let c = clients.ask(
                json!({"op": "connect", "count": more, "timeout": 60_000}),
                Duration::from_secs(90),
            );
            assert_eq!(n(&c["connected"]), 700 + 150 * round, "{c}");
        }
    }
    // The serving process shows the three draining ones and their tunnels.
    let expected = vec![(pids[0] as u64, 700), (pids[1] as u64, 150), (pids[2] as u64, 150)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while draining(&proxy).await != expected {
        assert!(
            Instant::now() < deadline,
            "draining: {:?}, wanted {expected:?}",
            draining(&proxy).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = client::get(&proxy.stats_target(), "/metrics")
        .await
        .expect("metrics")
        .text();
    assert!(
        metrics.contains(&format!("edgepin_draining_process_tunnels{{pid=\"{}\"}} 700", pids[0])),
        "{metrics}"
    );

    stop.store(true, Ordering::Relaxed);
    let tally = load.await.expect("load");
    assert!(tally.ok > 500, "the load ran: {tally:?}");
    assert!(
        tally.failures.is_empty(),
        "{} requests failed: {:?}",
        tally.failures.len(),
        tally.failures
    );
    let events = clients.ask(json!({"op": "events"}), Duration::from_secs(10));
    assert_eq!(events["disconnects"], json!([]), "no WebSocket was closed: {events}");
    assert_eq!(n(&events["connectErrors"]), 0, "{events}");

    // Each old process leaves as soon as its last tunnel ends.
    clients.ask(json!({"op": "close"}), Duration::from_secs(10));
    let closed = Instant::now();
    for pid in &pids[..3] {
        let after = wait_exit(*pid, Duration::from_secs(10)).await;
        let since_close = closed.elapsed();
        assert!(
            since_close < Duration::from_millis(2000),
            "pid {pid} left {since_close:?} after its tunnels closed ({after:?} waited)"
        );
    }
    assert!(!exited(pids[3]), "the last one serves on");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !draining(&proxy).await.is_empty() {
        assert!(Instant::now() < deadline, "gone processes still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("three upgrades under load: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_hard_stop_the_remaining_websockets_close_over_the_spread_and_come_back_to_their_worker() {
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=2).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    // socket.io-client in Node starts a new cookie jar with each reconnection (a browser
    // keeps its cookies): without the load bound, the address hash brings a cookieless
    // reconnection back to its worker as the cookie would.
    let yaml = fleet_yaml(&workers).replace("balance: sticky,", "balance: sticky, hash_balance_factor: 100,");
    let proxy = Proxy::builder(&yaml)
        .reload("hard_stop_after: 10s, close_spread: 5s")
        .start();
    let url = format!("http://127.0.0.1:{}", proxy.http.port());
    let mut clients = BulkClients::start(&["--url", &url, "--clients", "40", "--addresses", "10"]);
    let connected = clients.ask(json!({"op": "connect", "timeout": 60_000}), Duration::from_secs(90));
    assert_eq!(n(&connected["connected"]), 40, "{connected}");
    // Wait for every socket to be on WebSocket (the upgrade from polling).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = proxy.serving_pid();
    let upgraded_at = unix_ms();
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let e = clients.ask(json!({"op": "events"}), Duration::from_secs(10));
        if e["disconnects"].as_array().map_or(0, Vec::len) >= 40 || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cuts = events["disconnects"].as_array().cloned().unwrap_or_default();
    assert_eq!(cuts.len(), 40, "every remaining tunnel was closed: {events}");
    let mut at: Vec<u64> = cuts.iter().map(|d| n(&d["at"])).collect();
    at.sort();
    let first = at[0] - upgraded_at;
    let spread = at[39] - at[0];
    assert!(
        first >= 9_500,
        "none before hard_stop_after: the first after {first} ms"
    );
    assert!(spread >= 4_000, "spread over the window: first to last {spread} ms");
    assert!(spread <= 7_000, "within the window: first to last {spread} ms");
    for d in &cuts {
        assert_eq!(d["code"], 1012, "a close frame, service restart: {d}");
    }
    wait_exit(old, Duration::from_secs(10)).await;
    // Every client came back, through the new process, to the worker it had.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = clients.ask(json!({"op": "round", "timeout": 5_000}), Duration::from_secs(30));
        if n(&r["ok"]) == 40 {
            let e = clients.ask(json!({"op": "events"}), Duration::from_secs(10));
            assert_eq!(n(&r["moved"]), 0, "back to the same worker: {r}\n{e}");
            break;
        }
        assert!(Instant::now() < deadline, "not every client came back: {r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An Engine.IO polling request on a fresh connection from `from`.
async fn poll(proxy: &Proxy, from: &str, method: &str, query: &str, body: &[u8]) -> client::Response {
    let mut conn = Conn::open(&proxy.plain().from(from)).await.expect("connect");
    let path = format!("/socket.io/?EIO=4&transport=polling{query}");
    conn.request(method, &path, &["Content-Type: text/plain;charset=UTF-8".into()], body)
        .await
        .expect("polling request")
}

/// The Engine.IO packets of a polling answer (separated by 0x1e).
fn packets(body: &str) -> Vec<String> {
    body.split('\u{1e}').map(str::to_string).collect()
}

/// Poll session `q` from `from` (through whichever process accepts) until a packet
/// starting with `wanted` arrives, answering pings; every answer must be a 200.
async fn poll_until(proxy: &Proxy, from: &str, q: &str, wanted: &str) {
    for _ in 0..5 {
        let r = poll(proxy, from, "GET", q, b"").await;
        assert_eq!(r.status, 200, "session {q}: {}", r.text());
        let got = packets(&r.text());
        if got.iter().any(|p| p == "2") {
            assert_eq!(poll(proxy, from, "POST", q, b"3").await.text(), "ok", "pong for {q}");
        }
        if got.iter().any(|p| p.starts_with(wanted)) {
            return;
        }
    }
    panic!("session {q}: no {wanted} packet");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_in_flight_across_the_upgrade_goes_on_with_its_worker() {
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=4).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    let proxy = Proxy::start(&fleet_yaml(&workers));
    // Eight sessions, each opened from one address and continued from another (as a
    // client behind a pool of egress addresses): only the sid routes them.
    let mut sessions = Vec::new();
    for i in 0..8 {
        let from = format!("127.0.0.{}", 20 + i);
        let open = poll(&proxy, &from, "GET", "", b"").await;
        assert_eq!(open.status, 200, "{}", open.text());
        let text = open.text();
        let sid = text[text.find("\"sid\":\"").expect("sid") + 7..]
            .split('"')
            .next()
            .unwrap()
            .to_string();
        let q = format!("&sid={sid}");
        assert_eq!(poll(&proxy, &from, "POST", &q, b"40").await.text(), "ok");
        poll_until(&proxy, &from, &q, "40{").await;
        // The long poll, held by the worker, on a connection to the old process.
        let mut held = Conn::open(&proxy.plain().from(&from)).await.expect("connect");
        let path = format!("/socket.io/?EIO=4&transport=polling{q}");
        let pending = tokio::spawn(async move { held.get(&path).await });
        sessions.push((q, pending));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    for (i, (q, pending)) in sessions.into_iter().enumerate() {
        let other = format!("127.0.0.{}", 60 + i);
        // An event with an ack, through the new process, from another address.
        let sent = poll(&proxy, &other, "POST", &q, br#"421["whoami"]"#).await;
        assert_eq!((sent.status, sent.text()), (200, "ok".to_string()), "session {q}");
        // The long poll the old process still relays returns the ack.
        let answer = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("the long poll returns")
            .expect("task")
            .expect("long poll");
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(
            packets(&answer.text()).iter().any(|p| p.starts_with("431[{")),
            "the ack on the long poll: {:?}",
            answer.text()
        );
        // And the session goes on through the new process.
        let again = poll(&proxy, &other, "POST", &q, br#"422["whoami"]"#).await;
        assert_eq!(
            (again.status, again.text()),
            (200, "ok".to_string()),
            "no Session ID unknown for {q}"
        );
        poll_until(&proxy, &other, &q, "432[{").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn maint_down_and_runtime_weights_are_carried_and_a_down_server_gets_nothing_at_once() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let body = api_body(&[&a, &b, &c], &[1, 1, 1]);
    let proxy = Proxy::builder(&body).stats_auth("admin", "upgrade-test-pw").start();
    let r = proxy.admin("/admin/servers/a/state", r#"{"state":"maint"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = proxy.admin("/admin/servers/c/weight", r#"{"weight":7}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    b.set_health(HealthMode::Fail);
    proxy.wait_health("b", "Down", Duration::from_secs(10)).await;
    // b answers requests (only its checks fail): any request sent there is counted.
    let (a_hits, b_hits) = (a.hits(), b.hits());

    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    let first_second = Instant::now();
    let mut served = 0;
    while first_second.elapsed() < Duration::from_secs(1) {
        let r = client::get(&proxy.plain(), "/api").await.expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-server"), Some("c"));
        served += 1;
    }
    assert!(served > 10, "{served}");
    assert_eq!(
        (a.hits(), b.hits()),
        (a_hits, b_hits),
        "nothing reached MAINT a or DOWN b"
    );
    let a_now = proxy.server_stats("api", "a").await;
    let b_now = proxy.server_stats("api", "b").await;
    let c_now = proxy.server_stats("api", "c").await;
    assert_eq!(a_now["status"], "MAINT", "{a_now}");
    assert_eq!(b_now["status"], "DOWN", "{b_now}");
    assert!(
        b_now["status_reason"]
            .as_str()
            .unwrap_or("")
            .contains("carried over from pid"),
        "{b_now}"
    );
    assert_eq!(c_now["weight"], 7, "{c_now}");
}

/// A stand-in "binary": a shell script.
fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_process_that_cannot_start_changes_nothing_and_upgrade_says_why() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&backend], &[1]));
    let old = proxy.serving_pid();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (target, stop) = (proxy.plain(), Arc::clone(&stop));
        tokio::spawn(async move { rest_load(&target, "/api", 3, 3, stop).await })
    };
    let config = std::fs::read_to_string(&proxy.config).unwrap();
    let tools = tempfile::tempdir().unwrap();
    let check = |(ok, out): (bool, String), wanted: &str| {
        assert!(!ok, "the upgrade must fail: {out}");
        assert!(out.contains(wanted), "says why ({wanted:?}): {out}");
        assert_eq!(proxy.serving_pid(), old, "the old process still serves");
    };

    // A config that is not YAML: refused before anything starts, with its position.
    std::fs::write(&proxy.config, format!("{config}\nservers: [oops\n")).unwrap();
    check(proxy.upgrade(&[]), "proxy.yaml:");
    // An invalid config: the new process says where, and exits.
    std::fs::write(&proxy.config, format!("{config}\nbogus_key: 1\n")).unwrap();
    let (ok, out) = proxy.upgrade(&[]);
    check((ok, out.clone()), "failed: ");
    assert!(out.contains("proxy.yaml:") && out.contains("bogus_key"), "{out}");
    // A config the new process cannot serve: its stats port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = config.replace(
        &format!("stats: {}", proxy.stats),
        &format!("stats: {}", taken.local_addr().unwrap()),
    );
    std::fs::write(&proxy.config, moved).unwrap();
    check(proxy.upgrade(&[]), "(stats)");
    std::fs::write(&proxy.config, &config).unwrap();
    // A binary that exits at once, and one that never answers.
    let exits = script(tools.path(), "exits", "exit 3");
    check(proxy.upgrade(&["--binary", exits.to_str().unwrap()]), "exit status: 3");
    let hangs = script(tools.path(), "hangs", "exec sleep 30");
    let started = Instant::now();
    check(
        proxy.upgrade(&["--binary", hangs.to_str().unwrap(), "--timeout", "2s"]),
        "did not connect in time",
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    stop.store(true, Ordering::Relaxed);
    let tally = load.await.unwrap();
    assert!(tally.ok > 100, "{tally:?}");
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(proxy.status().await["pid"], old, "the stats listener is the old one's");
    // After all that, an upgrade still works.
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    wait_exit(old, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_process_relays_both_ways_is_shown_and_leaves_when_its_last_tunnel_ends() {
    let backend = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&backend], &[1]));
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut ws = client::websocket(&proxy.plain(), "/ws").await.expect("websocket");
        let hello = ws.next().await.expect("hello").expect("hello");
        assert_eq!(hello, Message::Text("hello from a".into()));
        sockets.push(ws);
    }
    let old = proxy.serving_pid();
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    assert!(out.contains("drains 3 tunnel(s)"), "{out}");
    for ws in &mut sockets {
        ws.send(Message::Text("ping".into())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo");
        assert_eq!(echo.unwrap().unwrap(), Message::Text("ping".into()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while draining(&proxy).await != vec![(old as u64, 3)] {
        assert!(Instant::now() < deadline, "{:?}", draining(&proxy).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = client::get(&proxy.stats_target(), "/").await.unwrap().text();
    assert!(page.contains(&format!("id=\"draining-{old}\"")), "the page shows it");
    // Another upgrade: the next process shows it too (its report follows the serving one).
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while draining(&proxy).await != vec![(old as u64, 3)] {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            draining(&proxy).await,
            proxy.proc.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that leaves: close handshake, then its connection ends.
    async fn leave(mut ws: tokio_tungstenite::WebSocketStream<client::Stream>) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    leave(sockets.remove(0)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!exited(old), "two tunnels left: it stays");
    for ws in sockets {
        leave(ws).await;
    }
    let left = wait_exit(old, Duration::from_secs(10)).await;
    assert!(
        left < Duration::from_millis(1500),
        "left {left:?} after its last tunnel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_sessions_resume_across_the_upgrade() {
    use tokio_rustls::TlsConnector;
    let backend = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&backend], &[1]));
    let config = client::tls_config();
    let connector = TlsConnector::from(Arc::clone(&config));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        kind
    };
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(connect().await, Some(Full));
    assert_eq!(connect().await, Some(Resumed), "resumes with the old process");
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    assert_eq!(
        connect().await,
        Some(Resumed),
        "and with the new one: the ticket keys came along"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_then_the_new_main_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let backend = Backend::start("a");
    let proxy = Proxy::builder(&api_body(&[&backend], &[1]))
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start();
    let mut buf = [0u8; 256];
    let got = socket.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..got], b"READY=1");
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    let got = socket.recv(&mut buf).expect("MAINPID");
    assert_eq!(
        String::from_utf8_lossy(&buf[..got]),
        format!("MAINPID={}", proxy.serving_pid())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn discovered_servers_and_their_maint_are_served_by_the_new_process_before_any_dns_answer() {
    use crate::harness::dns::Dns;
    let dns = Dns::start(&[]);
    let redis = Redis::start();
    // Workers on 127.0.0.11 and .12, one port (A records carry none).
    let workers = crate::discovery::workers(2, &redis);
    let port = workers[0].addr.port();
    dns.set("fleet.test", &workers.iter().map(|w| w.addr.ip()).collect::<Vec<_>>());
    let yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ discover: {{ dns: \"fleet.test:{port}\", interval: 1s, timeout: 500ms, resolvers: {} }} }}\n\
         health: {{ interval: 500ms, timeout: 400ms, rise: 1, fall: 2, path: /health }}\n",
        dns.resolvers()
    );
    let proxy = Proxy::builder(&yaml).stats_auth("admin", "upgrade-test-pw").start();
    let (w1, w2) = (workers[0].addr.to_string(), workers[1].addr.to_string());
    let deadline = Instant::now() + Duration::from_secs(15);
    for name in [&w1, &w2] {
        // Absent until the first DNS answer, then CHECKING, then UP.
        loop {
            let servers = proxy.backend_stats("api").await["servers"].clone();
            let status = servers.as_array().and_then(|s| {
                s.iter()
                    .find(|s| s["name"] == *name.as_str())
                    .map(|s| s["status"].clone())
            });
            if status.is_some_and(|s| s == "UP") {
                break;
            }
            assert!(Instant::now() < deadline, "{name} not discovered and UP: {servers}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let r = proxy
        .admin(&format!("/admin/servers/{w1}/state"), r#"{"state":"maint"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The DNS server stops answering: the new process gets no answer of its own.
    dns.pause();
    let (ok, out) = proxy.upgrade(&[]);
    dns.resume();
    assert!(ok, "{out}");
    // At once, every request is served, none by the MAINT server.
    let first_second = Instant::now();
    let mut served = 0;
    while first_second.elapsed() < Duration::from_secs(1) {
        let r = client::get(&proxy.plain(), "/api/whoami").await.expect("request");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), proxy.proc.log_tail(20));
        assert!(r.text().contains("\"w2\""), "{}", r.text());
        served += 1;
    }
    assert!(served > 10, "{served}");
    assert_eq!(proxy.server_stats("api", &w1).await["status"], "MAINT");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_of_the_old_process_is_sent_away_at_once() {
    let backend = Backend::start("a");
    let proxy = Proxy::builder(&api_body(&[&backend], &[1])).h2().start();
    // A tunnel keeps the old process draining after the upgrade.
    let mut ws = client::websocket(&proxy.plain(), "/ws").await.expect("websocket");
    ws.next().await.expect("hello").expect("hello");
    let mut old_conn = crate::harness::h2c::connect(proxy.https).await;
    assert_eq!(
        crate::harness::h2c::get(&mut old_conn, "/").await.map(|r| r.0),
        Some(200)
    );
    let old = proxy.serving_pid();
    let (ok, out) = proxy.upgrade(&[]);
    assert!(ok, "{out}");
    // The idle connection got GOAWAY when the drain began (not at its keep-alive deadline,
    // 60 s): a new stream on it is refused by the client's own h2 library.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!exited(old), "the tunnel keeps the old process");
    let on_old = crate::harness::h2c::get(&mut old_conn, "/").await.map(|r| r.0);
    assert_eq!(on_old, None, "GOAWAY seen");
    let mut new_conn = crate::harness::h2c::connect(proxy.https).await;
    assert_eq!(
        crate::harness::h2c::get(&mut new_conn, "/").await.map(|r| r.0),
        Some(200)
    );
    drop(ws);
}
