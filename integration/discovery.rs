//! Servers discovered from DNS (issue 25), against a real DNS server (dnsmasq, see
//! `harness::dns`) whose answers the tests change while real socket.io-clients and
//! Engine.IO sessions go through the proxy. Workers listen on 127.0.0.N with one port
//! (A records carry none), so a server's name is `127.0.0.N:PORT` on every edge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::dns::{Dns, Srv, loopback};
use crate::harness::load::steady_load;
use crate::harness::node::HeldClients;
use crate::harness::redis::Redis;
use crate::harness::worker::Worker;
use crate::harness::{Backend, Conn, Proxy, SioClients, Target, free_port};
use crate::multi_edge::{exchange, whoami as whoami_polling};

/// Workers `w1`… on 127.0.0.11, 127.0.0.12, … sharing one port, with their rooms on `redis`.
pub fn workers(n: u8, redis: &Redis) -> Vec<Worker> {
    let port = free_port();
    (1..=n)
        .map(|i| {
            Worker::start_at(
                &format!("w{i}"),
                &redis.url(),
                SocketAddr::new(loopback(10 + i), port),
                &[],
            )
        })
        .collect()
}

fn ips(workers: &[Worker]) -> Vec<IpAddr> {
    workers.iter().map(|w| w.addr.ip()).collect()
}

/// A sticky backend `sockets` (every route) over `fleet.test:PORT` as `dns` answers it.
fn sticky_yaml(dns: &Dns, port: u16, discover: &str) -> String {
    format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: sockets }}\n\
         backends:\n  sockets: {{ balance: sticky, timeouts: {{ server: 60s }}, discover: {{ dns: \"fleet.test:{port}\", \
         interval: 1s, timeout: 500ms, resolvers: {}{discover} }} }}\n\
         health: {{ interval: 500ms, timeout: 400ms, rise: 1, fall: 2 }}\n",
        dns.resolvers()
    )
}

/// Worker id by the cookie id of its server name (`address:port`).
fn cookie_ids(workers: &[Worker]) -> HashMap<String, String> {
    workers
        .iter()
        .map(|w| {
            (
                edgepin::sticky::cookie::server_id(&w.addr.to_string(), None),
                w.id.clone(),
            )
        })
        .collect()
}

/// A new Engine.IO session from `from`: the worker the proxy pinned it to (by the
/// sticky cookie it set).
async fn new_session(proxy: &Proxy, from: &str, ids: &HashMap<String, String>) -> String {
    let mut conn = Conn::open(&proxy.plain().from(from)).await.expect("connect");
    let r = conn
        .get("/socket.io/?EIO=4&transport=polling")
        .await
        .expect("handshake");
    assert_eq!(r.status, 200, "handshake from {from}: {}", r.text());
    let cookie = r.header("set-cookie").unwrap_or_default();
    let id = cookie
        .strip_prefix("EDGEPIN=")
        .and_then(|v| v.split(';').next())
        .unwrap_or_default();
    ids.get(id)
        .cloned()
        .unwrap_or_else(|| panic!("cookie {cookie:?} names no worker"))
}

/// The servers of `backend` in `/stats.json`: name → (status, retired).
async fn servers(proxy: &Proxy, backend: &str) -> BTreeMap<String, (String, bool)> {
    let b = proxy.backend_stats(backend).await;
    b["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            let taking = s["health"] == "UP" && s["status"] == "UP" && s["retired"] == false;
            (
                name,
                (if taking { "UP" } else { "other" }.to_string(), s["retired"] == true),
            )
        })
        .collect()
}

/// Wait until `backend` has exactly these servers taking new sessions.
async fn wait_taking(proxy: &Proxy, backend: &str, names: &[String], timeout: Duration) -> Duration {
    let started = Instant::now();
    let wanted: BTreeSet<&String> = names.iter().collect();
    loop {
        let now = servers(proxy, backend).await;
        let taking: BTreeSet<&String> = now.iter().filter(|(_, (s, _))| s == "UP").map(|(n, _)| n).collect();
        if taking == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{backend} never had exactly {wanted:?} taking sessions: {now:?}\n{}",
            proxy.proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(workers: &[Worker]) -> Vec<String> {
    workers.iter().map(|w| w.addr.to_string()).collect()
}

/// How many `event`s socket `name` has seen.
fn count(sio: &mut SioClients, name: &str, event: &str) -> usize {
    sio.drain();
    sio.seen
        .iter()
        .filter(|e| e["name"] == name && e["event"] == event)
        .count()
}

fn whoami_sio(sio: &mut SioClients, name: &str) -> String {
    sio.call(name, "whoami", json!([]))["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// 200 socket.io-clients on a discovered backend of 3 workers. The answer grows to 5:
/// new sessions reach the new workers within one interval plus the first check, and
/// then all five; no existing session moves. It shrinks to 3: the removed workers'
/// sessions stay until the drain timeout, no new session goes there, and at the timeout
/// they are closed and reconnect to the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_grows_and_shrinks_by_dns_without_moving_a_session() {
    let redis = Redis::start();
    let all = workers(5, &redis);
    let port = all[0].addr.port();
    let dns = Dns::start(&[]);
    dns.set("fleet.test", &ips(&all[..3]));
    let proxy = Proxy::builder(&sticky_yaml(&dns, port, ""))
        .no_https()
        .drain_timeout("8s")
        .start();
    wait_taking(&proxy, "sockets", &names(&all[..3]), Duration::from_secs(15)).await;

    let url = format!("http://127.0.0.1:{}", proxy.http.port());
    let args = ["--url", &url, "--clients", "200", "--addresses", "20", "--rooms", "10"];
    let mut clients = HeldClients::start(&args, Duration::from_secs(120));
    let held = clients.wait_held(Duration::from_secs(90));
    let first: BTreeMap<String, u64> = serde_json::from_value(held["perWorker"].clone()).unwrap();
    assert_eq!(first.values().sum::<u64>(), 200, "{held}");
    assert_eq!(first.keys().collect::<Vec<_>>(), ["w1", "w2", "w3"], "{held}");

    // Grows to 5: the new workers take new sessions once checked.
    let ids = cookie_ids(&all);
    let grew = Instant::now();
    dns.set("fleet.test", &ips(&all));
    let mut reached = BTreeSet::new();
    let mut k = 0u32;
    while !(reached.contains("w4") && reached.contains("w5")) {
        assert!(
            grew.elapsed() < Duration::from_secs(8),
            "new sessions reached only {reached:?}\n{}",
            proxy.proc.log_tail(20)
        );
        reached.insert(new_session(&proxy, &format!("127.0.0.{}", 30 + k % 20), &ids).await);
        k += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = grew.elapsed();
    // One interval (1s) plus the first check (within a tenth of 500ms) and the DNS
    // server's reload; generous for a loaded machine.
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Like any server coming into service, they ramp (slow start, 10 s by default) from
    // their first UP.
    let b = proxy.backend_stats("sockets").await;
    for n in names(&all[3..]) {
        let s = b["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == n.as_str());
        let percent = s.and_then(|s| s["slow_start"]["percent"].as_u64());
        assert!(percent.is_some_and(|p| p < 100), "{n} in slow start: {s:?}");
    }

    // Sessions that will be on the two removed workers later: the least loaded now.
    let mut sio = SioClients::start();
    let mut late = Vec::new();
    for i in 0..10 {
        let name = format!("late{i}");
        sio.connect(&name, &url);
        let on = whoami_sio(&mut sio, &name);
        late.push((name, on));
    }
    let on_new: Vec<&(String, String)> = late.iter().filter(|(_, w)| w == "w4" || w == "w5").collect();
    assert!(
        on_new.len() >= 2,
        "bounded loads send new sessions to the new workers: {late:?}"
    );

    // Once the new workers carry their share, new sessions reach all five.
    for _ in 0..150 {
        reached.insert(new_session(&proxy, &format!("127.0.0.{}", 30 + k % 20), &ids).await);
        k += 1;
    }
    assert_eq!(reached.len(), 5, "{reached:?}");

    // No session moved: every client is where it was, nothing disconnected.
    let report = clients.release_and_finish(Duration::from_secs(60));
    assert_eq!(report["moved"], 0, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["rejoined"], 200, "{report}");
    assert_eq!(
        report["broadcasts"]["received"], report["broadcasts"]["expected"],
        "{report}"
    );

    // Shrinks to 3 (two of five: applied at once). w4 and w5 drain.
    let shrank = Instant::now();
    dns.set("fleet.test", &ips(&all[..3]));
    wait_taking(&proxy, "sockets", &names(&all[..3]), Duration::from_secs(5)).await;
    let retired: Vec<String> = servers(&proxy, "sockets")
        .await
        .into_iter()
        .filter(|(_, (_, r))| *r)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(retired, names(&all[3..]), "the removed servers are listed, draining");
    for _ in 0..40 {
        let w = new_session(&proxy, &format!("127.0.0.{}", 30 + k % 20), &ids).await;
        assert!(w != "w4" && w != "w5", "a new session went to removed {w}");
        k += 1;
    }
    for (name, on) in &on_new {
        assert_eq!(
            &whoami_sio(&mut sio, name),
            on,
            "{name} stays on its worker while it drains"
        );
        assert_eq!(count(&mut sio, name, "disconnect"), 0, "{name}");
    }
    assert!(shrank.elapsed() < Duration::from_secs(7), "checked within the drain");

    // At the drain timeout their tunnels close; they reconnect to the remaining workers.
    for (name, _) in &on_new {
        let deadline = shrank + Duration::from_secs(8 + 10);
        while count(&mut sio, name, "connect") < 2 {
            assert!(Instant::now() < deadline, "{name} was not moved at the drain timeout");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = whoami_sio(&mut sio, name);
        assert!(
            ["w1", "w2", "w3"].contains(&now.as_str()),
            "{name} reconnected to {now}"
        );
    }
    assert!(
        shrank.elapsed() >= Duration::from_secs(7),
        "closed at the drain timeout, not before"
    );
}

/// `/stats.json` → the backend's `discovery`.
async fn discovery_stats(proxy: &Proxy, backend: &str) -> serde_json::Value {
    proxy.backend_stats(backend).await["discovery"].clone()
}

/// Wait until `discovery.<path>` (a counter) is at least `n`.
async fn wait_counted(proxy: &Proxy, backend: &str, path: &[&str], n: u64, timeout: Duration) {
    let started = Instant::now();
    loop {
        let d = discovery_stats(proxy, backend).await;
        let v = path.iter().fold(&d, |v, k| &v[*k]).as_u64().unwrap_or(0);
        if v >= n {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "discovery.{path:?} never reached {n}: {d}\n{}",
            proxy.proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DNS server stops answering, then answers NXDOMAIN, then flaps to one server for
/// one answer: the backend keeps its three servers, no request fails, every failure is
/// counted. A SIGHUP keeps the discovered servers as they are. An answer removing more
/// than half the servers applies once it repeated `confirm_shrink` times.
#[tokio::test(flavor = "multi_thread")]
async fn dns_failures_and_a_flapping_answer_never_empty_a_backend() {
    let port = free_port();
    let backends: Vec<Backend> = (1..=3)
        .map(|i| Backend::start_on(&format!("b{i}"), SocketAddr::new(loopback(20 + i), port)))
        .collect();
    let addrs: Vec<IpAddr> = backends.iter().map(|b| b.addr.ip()).collect();
    let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let dns = Dns::start(&[]);
    dns.set("api.test", &addrs);
    let yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ discover: {{ dns: \"api.test:{port}\", interval: 1s, timeout: 300ms, confirm_shrink: 3, resolvers: {} }} }}\n\
         health: {{ interval: 500ms, timeout: 400ms, rise: 1, fall: 2 }}\n",
        dns.resolvers()
    );
    let proxy = Proxy::builder(&yaml).no_https().start();
    wait_taking(&proxy, "api", &names, Duration::from_secs(15)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&proxy, 4, Arc::clone(&stop));
    let scenario = async {
        let keeps_three = async || {
            let now = servers(&proxy, "api").await;
            assert_eq!(now.keys().cloned().collect::<Vec<_>>(), names, "{now:?}");
            assert!(now.values().all(|(s, r)| s == "UP" && !r), "{now:?}");
        };
        // No answers at all.
        dns.pause();
        wait_counted(&proxy, "api", &["failures", "timeout"], 2, Duration::from_secs(10)).await;
        keeps_three().await;
        dns.resume();
        // NXDOMAIN.
        dns.set("api.test", &[]);
        wait_counted(&proxy, "api", &["failures", "nxdomain"], 2, Duration::from_secs(10)).await;
        keeps_three().await;
        let d = discovery_stats(&proxy, "api").await;
        assert_eq!(
            (&d["last_result"], &d["servers"]),
            (&json!("nxdomain"), &json!(3)),
            "{d}"
        );
        dns.set("api.test", &addrs);
        wait_counted(
            &proxy,
            "api",
            &["answers"],
            d["answers"].as_u64().unwrap() + 1,
            Duration::from_secs(5),
        )
        .await;

        // A reload keeps the discovered servers: none drains, none is checked anew.
        let generation = proxy.generation().await;
        proxy.sighup();
        proxy.wait_generation(generation + 1).await;
        keeps_three().await;
        assert!(!proxy.proc.log().contains("draining"), "{}", proxy.proc.log_tail(20));

        // One answer of one server (two of three gone) is held, and forgotten when the
        // next answer is whole again.
        let changes = discovery_stats(&proxy, "api").await["changes"].clone();
        dns.set("api.test", &addrs[..1]);
        wait_counted(&proxy, "api", &["held"], 1, Duration::from_secs(5)).await;
        dns.set("api.test", &addrs);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        keeps_three().await;
        let d = discovery_stats(&proxy, "api").await;
        assert_eq!((&d["changes"], &d["pending"]), (&changes, &json!(null)), "{d}");

        // The same shrink, repeated: applied at its third answer; two servers drain.
        let shrink = Instant::now();
        dns.set("api.test", &addrs[..1]);
        wait_taking(&proxy, "api", &names[..1], Duration::from_secs(8)).await;
        assert!(
            shrink.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            shrink.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
    };
    let ((sent, failures, per), ()) = tokio::join!(load, scenario);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
    assert_eq!(per.len(), 3, "every server answered: {per:?}");

    let metrics = crate::harness::client::get(&proxy.stats_target(), "/metrics")
        .await
        .unwrap()
        .text();
    for wanted in [
        "edgepin_backend_dns_resolutions_total{proxy=\"api\",result=\"timeout\"}",
        "edgepin_backend_dns_resolutions_total{proxy=\"api\",result=\"nxdomain\"}",
    ] {
        let line = metrics.lines().find(|l| l.starts_with(wanted)).unwrap_or_default();
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        assert!(n >= 2.0, "{wanted}: {line:?}");
    }
    let log = proxy.proc.log();
    assert!(
        log.contains("DNS discovery got no servers: keeping the last good ones"),
        "{log}"
    );
    assert!(log.contains("applied only once it repeats"), "{log}");
}

const SECRET_ENV: &str = "EDGEPIN_TEST_STICKY_SECRET";
const SECRET: &str = "the same secret on every edge";

/// A new Engine.IO session on `t` with `cookie` (if any): its sid and the cookie set.
async fn handshake_with(t: &Target, cookie: Option<&str>) -> (String, Option<String>) {
    let headers: Vec<String> = cookie.iter().map(|c| format!("Cookie: EDGEPIN={c}")).collect();
    let mut conn = Conn::open(t).await.expect("connect");
    let r = conn
        .request("GET", "/socket.io/?EIO=4&transport=polling", &headers, b"")
        .await
        .expect("handshake");
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = edgepin::sticky::engineio::open_packet_sid(&r.body)
        .expect("an open packet")
        .to_string();
    let set = r.header("set-cookie").and_then(|c| {
        c.strip_prefix("EDGEPIN=")
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
    });
    (sid, set)
}

/// Two edges discovering the same name (same cookie secret, sid table shared through
/// Redis) give a cookie-less session the same worker on either edge, and honour each
/// other's cookies: the servers' names, so their cookie ids and hash places, are the
/// same on both.
#[tokio::test(flavor = "multi_thread")]
async fn two_edges_discovering_one_name_route_every_session_alike() {
    let rooms = Redis::start();
    let shared = Redis::start();
    let all = workers(3, &rooms);
    let port = all[0].addr.port();
    let dns = Dns::start(&[]);
    dns.set("fleet.test", &ips(&all));
    let yaml = format!(
        "{}sticky: {{ secret_env: {SECRET_ENV}, shared: {{ redis: \"{}\", timeout: 50ms }} }}\n",
        sticky_yaml(&dns, port, ""),
        shared.url()
    );
    let edge = || Proxy::builder(&yaml).no_https().env(SECRET_ENV, SECRET).start();
    let (a, b) = (edge(), edge());
    for e in [&a, &b] {
        wait_taking(e, "sockets", &names(&all), Duration::from_secs(15)).await;
        let up = crate::harness::eventually(Duration::from_secs(10), async || {
            e.stats().await["sids"]["shared"]["up"] == true
        })
        .await;
        assert!(up, "an edge never reached the shared sid table");
    }
    // Cookie-less: opened on A, used on B from another address.
    let mut seen = BTreeSet::new();
    for i in 0..12u8 {
        let on_a = a.plain().from(&format!("127.0.0.{}", 40 + i));
        let on_b = b.plain().from(&format!("127.0.0.{}", 60 + i));
        let (sid, _) = handshake_with(&on_a, None).await;
        // The session's first request after the handshake goes through B: the connect.
        let (post, get, body) = exchange(&on_b, &sid, "40", "40{").await;
        assert_eq!((post, get), (200, 200), "connect through B: {body}");
        let via_a = whoami_polling(&on_a, &sid, 1).await.expect("whoami on A");
        let via_b = whoami_polling(&on_b, &sid, 2).await.expect("whoami on B");
        assert_eq!(via_a, via_b, "session {sid} moved between edges");
        seen.insert(via_a);
    }
    assert!(seen.len() >= 2, "sessions spread: {seen:?}");
    // A's cookies, sent to B from other addresses: B pins to the same worker.
    let mut cookies = BTreeMap::new();
    for i in 0..30u8 {
        let on_a = a.plain().from(&format!("127.0.0.{}", 100 + i));
        let (sid, cookie) = handshake_with(&on_a, None).await;
        assert_eq!(exchange(&on_a, &sid, "40", "40{").await.1, 200);
        let worker = whoami_polling(&on_a, &sid, 1).await.expect("whoami on A");
        if let Some(c) = cookie {
            cookies.insert(worker, c);
        }
        if cookies.len() == 3 {
            break;
        }
    }
    assert!(cookies.len() >= 2, "A issued cookies for {cookies:?}");
    for (i, (worker, cookie)) in cookies.iter().enumerate() {
        let on_b = b.plain().from(&format!("127.0.0.{}", 200 + i));
        let (sid, _) = handshake_with(&on_b, Some(cookie)).await;
        assert_eq!(exchange(&on_b, &sid, "40", "40{").await.1, 200);
        assert_eq!(&whoami_polling(&on_b, &sid, 1).await.expect("whoami on B"), worker);
    }
}

/// SRV records with weights 1, 2 and 3: over 1,000 new sessions from 1,000 addresses
/// each worker's share is within 10 % of its weight's. The weighted hash places each
/// address; bounded loads (a tight factor here, 1.01) keep every server at most 1 % over
/// its weighted share, so the lightest cannot fall more than the others' 1 % under.
#[tokio::test(flavor = "multi_thread")]
async fn srv_weights_share_new_sessions() {
    let rooms = Redis::start();
    let all: Vec<Worker> = (1..=3).map(|i| Worker::start(&format!("w{i}"), &rooms.url())).collect();
    let targets: Vec<String> = (1..=3).map(|i| format!("w{i}.fleet.test")).collect();
    let srv: Vec<Srv<'_>> = all
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(i, (w, target))| Srv {
            name: "_sio._tcp.fleet.test",
            target,
            port: w.addr.port(),
            weight: i as u16 + 1,
        })
        .collect();
    let dns = Dns::start(&srv);
    for t in &targets {
        dns.set(t, &[loopback(1)]);
    }
    let yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: sockets }}\n\
         backends:\n  sockets: {{ balance: sticky, hash_balance_factor: 1.01, discover: {{ dns: _sio._tcp.fleet.test, type: srv, interval: 1s, resolvers: {} }} }}\n\
         health: {{ interval: 1s, timeout: 900ms, rise: 1, fall: 3 }}\n",
        dns.resolvers()
    );
    let proxy = Proxy::builder(&yaml).no_https().start();
    let names: Vec<String> = all
        .iter()
        .zip(&targets)
        .map(|(w, t)| format!("{t}:{}", w.addr.port()))
        .collect();
    wait_taking(&proxy, "sockets", &names, Duration::from_secs(15)).await;
    let weights: Vec<u64> = {
        let b = proxy.backend_stats("sockets").await;
        names
            .iter()
            .map(|n| {
                b["servers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["name"] == n.as_str())
                    .unwrap()["weight"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(weights, [1, 2, 3]);
    let ids: HashMap<String, String> = names
        .iter()
        .zip(&all)
        .map(|(n, w)| (edgepin::sticky::cookie::server_id(n, None), w.id.clone()))
        .collect();
    let mut per: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..1000u32 {
        let from = format!("127.0.{}.{}", 1 + i / 250, 2 + i % 250);
        *per.entry(new_session(&proxy, &from, &ids).await).or_default() += 1;
    }
    for (i, w) in all.iter().enumerate() {
        let share = f64::from(per.get(&w.id).copied().unwrap_or(0)) / 1000.0;
        let wanted = (i + 1) as f64 / 6.0;
        assert!(
            (share - wanted).abs() <= 0.1 * wanted,
            "{}: {share:.3} for {wanted:.3}: {per:?}",
            w.id
        );
    }
}

/// `edgepin check` names the discovered backends, resolves them once, and warns (exit 0)
/// about a name that does not resolve yet, at its position.
#[test]
fn check_resolves_discovered_backends_once_and_warns_about_missing_names() {
    let dns = Dns::start(&[]);
    dns.set("fleet.test", &[loopback(11), loopback(12)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let resolvers = dns.resolvers();
    std::fs::write(
        &path,
        format!(
            "listen: {{ http: 127.0.0.1:8080 }}\nroutes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
             backends:\n  sockets: {{ balance: sticky, discover: {{ dns: \"fleet.test:3000\", resolvers: {resolvers} }} }}\n  \
             api: {{ discover: {{ dns: \"later.test:3000\", timeout: 500ms, resolvers: {resolvers} }} }}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgepin"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("  sockets (sticky): servers from DNS fleet.test:3000 (A/AAAA), every 5s, at most 64"),
        "{text}"
    );
    assert!(
        text.contains("  sockets: fleet.test:3000 (A/AAAA) -> 127.0.0.11:3000, 127.0.0.12:3000"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}:7:20: warning: backend api: later.test:3000 (A/AAAA) does not resolve yet (NXDOMAIN)",
            path.display()
        )),
        "{text}"
    );
}
