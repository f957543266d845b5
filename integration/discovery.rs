//! Servers discovered from DNS (issue 25), against a real DNS server (dnsmasq, see
//! `harness::dns`) whose answers the tests change while real socket.io-clients and
//! Engine.IO sessions go through the proxy. Workers listen on 127.0.0.N with one port
//! (A records carry none), so a server's name is `127.0.0.N:PORT` on every edge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::dns::{Dns, loopback};
use crate::harness::node::HeldClients;
use crate::harness::redis::Redis;
use crate::harness::worker::Worker;
use crate::harness::{Conn, Proxy, SioClients, free_port};

/// Workers `w1`… on 127.0.0.11, 127.0.0.12, … sharing one port, with their rooms on `redis`.
fn workers(n: u8, redis: &Redis) -> Vec<Worker> {
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

fn whoami(sio: &mut SioClients, name: &str) -> String {
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

    // Sessions that will be on the two removed workers later: the least loaded now.
    let mut sio = SioClients::start();
    let mut late = Vec::new();
    for i in 0..10 {
        let name = format!("late{i}");
        sio.connect(&name, &url);
        let on = whoami(&mut sio, &name);
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
            &whoami(&mut sio, name),
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
        let now = whoami(&mut sio, name);
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
