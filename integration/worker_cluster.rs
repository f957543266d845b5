//! Rooms on a Redis Cluster: edgepin workers and Node.js workers (the sharded adapter)
//! share rooms over sharded pub/sub, and heal by themselves when a master dies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::harness::redis::RedisCluster;
use crate::harness::{SioClients, Worker};

const WAIT: Duration = Duration::from_secs(10);
/// How long every member may take to get broadcasts again after a master dies.
const HEAL: Duration = Duration::from_secs(10);

/// `{room: {members}}` of `GET /api/rooms/{room}` on a worker.
fn members(w: &Worker, room: &str) -> Json {
    let (status, body) = w.get(&format!("/api/rooms/{room}"));
    assert_eq!(status, 200, "{}: {body}", w.id);
    serde_json::from_str::<Json>(&body).expect("JSON")["members"].clone()
}

/// A JSON POST straight to a worker (loopback: the emit needs no token).
fn request(w: &Worker, path: &str, body: &str) -> Json {
    crate::harness::blocking_json(crate::harness::Target::plain(w.addr), "POST", path, body, &[]).json()
}

/// Whether `name` got a numbered message (sent after the kill) from `tag` in `room`.
fn heard_again(got: &HashMap<(String, String), usize>, name: &str, tag: &str, room: &str) -> bool {
    let (prefix, suffix) = (format!("{tag} #"), format!(" to {room}"));
    got.keys()
        .any(|(n, msg)| n == name && msg.starts_with(&prefix) && msg.ends_with(&suffix))
}

/// How many times each (socket, message) was received as `said`.
fn deliveries(c: &mut SioClients) -> HashMap<(String, String), usize> {
    c.drain();
    let mut seen = HashMap::new();
    for e in &c.seen {
        if e["event"] == "said" {
            let key = (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["args"][0]["msg"].as_str().unwrap_or_default().to_string(),
            );
            *seen.entry(key).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn edgepin_and_node_workers_share_rooms_on_a_redis_cluster_and_heal_after_a_master_dies() {
    let mut cluster = RedisCluster::start(3);
    let seeds = cluster.seeds();
    let (w1, w2) = (Worker::start_cluster("w1", &seeds), Worker::start_cluster("w2", &seeds));
    let n1 = Worker::start_node_cluster("n1", &seeds);

    // The master to kill serves the main channel (requests, broadcasts to several rooms)
    // and the channel of room `hit`; room `spared` lives on another master.
    let doomed = cluster.master_of("socket.io#/#");
    let room_where = |on_doomed: bool| {
        (0..100)
            .map(|i| format!("room{i}"))
            .find(|r| (cluster.master_of(&format!("socket.io#/#{r}#")) == doomed) == on_doomed)
            .expect("a room name")
    };
    let (hit, spared) = (room_where(true), room_where(false));

    let mut c = SioClients::start();
    let members_of = [("a", &w1), ("b", &w2), ("n", &n1)];
    for (name, w) in members_of {
        c.connect(name, &w.url());
        c.join(name, &hit);
        c.join(name, &spared);
    }
    c.connect("outsider", &w2.url());

    // Both ways, both rooms: every member gets each message once; the outsider nothing.
    for (sender, tag) in [("a", "edgepin"), ("n", "node")] {
        for room in [&hit, &spared] {
            c.emit(sender, "say", json!([room, format!("{tag} to {room}")]));
        }
    }
    for (name, _) in members_of {
        for msg in [
            format!("edgepin to {hit}"),
            format!("edgepin to {spared}"),
            format!("node to {hit}"),
            format!("node to {spared}"),
        ] {
            assert!(
                c.wait_event(name, "said", WAIT, |a| a[0]["msg"] == msg.as_str()),
                "{name} missed {msg:?}"
            );
        }
    }
    // Member counts ask every worker (fetchSockets on the main channel), both ways.
    assert_eq!(members(&w1, &hit), 3);
    assert_eq!(members(&n1, &spared), 3);
    let r = c.call("a", "members", json!([hit]));
    assert_eq!(r["members"], 3, "{r}");
    // A REST emit with acks from an edgepin worker collects every member's, Node's too.
    let r = request(
        &w2,
        &format!("/api/rooms/{spared}/emit"),
        r#"{"event":"poll","ack_timeout_ms":3000}"#,
    );
    assert_eq!(crate::worker::ack_senders(&r), ["a", "b", "n"], "{r}");

    let pids: Vec<u32> = [&w1, &w2, &n1].iter().map(|w| w.proc.pid()).collect();
    cluster.kill(doomed);
    let killed = Instant::now();

    // Until every member hears both kinds of worker in both rooms again: a numbered
    // message from each sender to each room every 250 ms. Node workers heal too: the
    // fixture's cluster client (ioredis with `shardedSubscribers`) moves its shard
    // subscriptions to the promoted replica, as edgepin's worker does.
    let mut healed_in = None;
    let mut missing = Vec::new();
    let mut round = 0;
    while healed_in.is_none() && killed.elapsed() < HEAL + Duration::from_secs(5) {
        round += 1;
        for (sender, tag) in [("a", "edgepin"), ("n", "node")] {
            for room in [&hit, &spared] {
                c.emit(sender, "say", json!([room, format!("{tag} #{round} to {room}")]));
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        let got = deliveries(&mut c);
        missing.clear();
        for (name, _) in members_of {
            for tag in ["edgepin", "node"] {
                for room in [&hit, &spared] {
                    if !heard_again(&got, name, tag, room) {
                        missing.push(format!("{name} from {tag} in {room}"));
                    }
                }
            }
        }
        if missing.is_empty() {
            healed_in = Some(killed.elapsed());
        }
    }
    let healed_in = healed_in.unwrap_or_else(|| panic!("not healed after {HEAL:?}: missing {missing:?}"));
    eprintln!(
        "every member heard the workers again {} ms after the master died",
        healed_in.as_millis()
    );
    assert!(healed_in <= HEAL, "healed in {healed_in:?}");

    // Nothing was ever delivered twice, the outsider got nothing, no worker restarted.
    std::thread::sleep(Duration::from_millis(500));
    let got = deliveries(&mut c);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert!(!got.keys().any(|(name, _)| name == "outsider"));
    for (w, pid) in [&w1, &w2, &n1].iter().zip(pids) {
        assert_eq!(w.proc.pid(), pid);
    }
    let mut alive = [w1, w2, n1];
    assert!(alive.iter_mut().all(|w| w.proc.alive()), "no worker restarted");
}

#[test]
fn edgepin_up_runs_its_workers_on_a_redis_cluster_and_starts_no_redis() {
    use crate::harness::{Proc, blocking_get, free_port};
    let cluster = RedisCluster::start(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let local = || std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (http, a1, a2) = (local(), local(), local());
    let seeds: Vec<String> = cluster.seeds().split(',').map(|s| format!("\"{s}\"")).collect();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ http: {http} }}\nroutes:\n  - {{ path_prefix: /, backend: api }}\n\
             backends:\n  api: {{ servers: [w1, w2] }}\nhealth: {{ interval: 1s, timeout: 500ms }}\n\
             workers: {{ redis: {{ cluster: [{}] }} }}\nservers:\n  w1: {{ address: {a1} }}\n  w2: {{ address: {a2} }}\n",
            seeds.join(", ")
        ),
    )
    .expect("write proxy.yaml");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgepin"));
    cmd.arg("up")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "info,edgepin::access=warn,pingora=warn");
    let mut up = Proc::spawn("up", cmd, dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocking_get(http, "/api/whoami").is_none_or(|(s, _)| s != 200) {
        assert!(
            up.alive() && Instant::now() < deadline,
            "not serving:\n{}",
            up.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started: Vec<String> = up
        .log()
        .lines()
        .filter_map(|l| {
            l.split("started name=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(started, ["w1", "w2"], "no redis-server: the cluster is external");

    let mut c = SioClients::start();
    for (name, addr) in [("a", a1), ("b", a2)] {
        c.connect(name, &format!("http://{addr}"));
        c.join(name, "lobby");
    }
    c.emit("a", "say", json!(["lobby", "over the cluster"]));
    assert!(c.wait_event("b", "said", WAIT, |a| a[0]["msg"] == "over the cluster"
        && a[0]["from"] == "w1"));
    drop(c);

    up.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).expect("up exits").success());
}
