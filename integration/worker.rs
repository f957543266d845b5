//! The Socket.IO worker: rooms across workers over a real Redis, Redis outages, Node.js
//! workers on the same Redis, and `edgepin up` running the whole stack.

use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::harness::redis::Redis;
use crate::harness::{SioClients, Worker};

const WAIT: Duration = Duration::from_secs(10);
/// How long a message that should not arrive is given to arrive anyway.
const QUIET: Duration = Duration::from_millis(500);

fn said(room: &str, msg: &str) -> impl Fn(&Json) -> bool {
    let (room, msg) = (room.to_string(), msg.to_string());
    move |args| args[0]["room"] == room.as_str() && args[0]["msg"] == msg.as_str()
}

fn members(w: &Worker, room: &str) -> Json {
    let (status, body) = w.get(&format!("/api/rooms/{room}"));
    assert_eq!(status, 200, "{}: {body}", w.id);
    serde_json::from_str(&body).expect("JSON")
}

/// POST `body` (JSON) to `path` on a worker.
fn post(w: &Worker, path: &str, body: &str) -> crate::harness::client::Response {
    post_with(w, path, body, &[])
}

/// POST with extra header lines.
fn post_with(w: &Worker, path: &str, body: &str, headers: &[&str]) -> crate::harness::client::Response {
    request_to(w.addr, "POST", path, body, headers)
}

/// One JSON request to `addr`, from these blocking tests.
fn request_to(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: &str,
    body: &str,
    headers: &[&str],
) -> crate::harness::client::Response {
    crate::harness::blocking_json(crate::harness::Target::plain(addr), method, path, body, headers)
}

/// The REST emit, which must succeed.
fn emit(w: &Worker, room: &str, body: &str) -> Json {
    let r = post(w, &format!("/api/rooms/{room}/emit"), body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_room_spans_three_workers_and_other_rooms_hear_nothing() {
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=3).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    let mut c = SioClients::start();
    for (name, w) in [("a", 0), ("b", 1), ("c", 2), ("other", 1)] {
        c.connect(name, &workers[w].url());
    }
    for name in ["a", "b", "c"] {
        c.join(name, "r1");
    }
    c.join("other", "r2");
    assert_eq!(
        members(&workers[1], "r1")["members"],
        3,
        "members counted on every worker"
    );
    assert_eq!(members(&workers[0], "r2")["members"], 1);

    // From a socket: everyone in the room, the sender included (io.to(room)).
    c.emit("a", "say", json!(["r1", "hello"]));
    for name in ["a", "b", "c"] {
        assert!(
            c.wait_event(name, "said", WAIT, said("r1", "hello")),
            "{name} missed it: {:?}",
            c.seen
        );
    }
    let got = c.received("b", "said");
    assert_eq!(got[0][0], json!({"from": "w1", "room": "r1", "msg": "hello"}));

    // From the REST API of another worker.
    let r = emit(&workers[2], "r1", r#"{"event":"news","data":{"n":1}}"#);
    assert_eq!(r, json!({"ok": true, "redis": "up"}));
    for name in ["a", "b", "c"] {
        assert!(c.wait_event(name, "news", WAIT, |args| args[0]["n"] == 1), "{name}");
    }

    // Each delivered exactly once, and nothing reached the other room.
    std::thread::sleep(QUIET);
    for name in ["a", "b", "c"] {
        assert_eq!(c.received(name, "said").len(), 1, "{name}");
        assert_eq!(c.received(name, "news").len(), 1, "{name}");
    }
    assert!(c.received("other", "said").is_empty());
    assert!(c.received("other", "news").is_empty());
    let metrics = workers[1].get("/metrics").1;
    for line in [
        "edgepin_worker_sockets 2",
        "edgepin_worker_rooms 2",
        "edgepin_worker_messages_out_total 2",
        "edgepin_worker_redis_up 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // Leaving works across workers too.
    c.emit("b", "leave", json!(["r1"]));
    let _ = c.call("b", "whoami", json!([]));
    assert_eq!(members(&workers[0], "r1")["members"], 2);
}

#[test]
fn a_redis_outage_keeps_local_rooms_working_and_heals_without_restarts() {
    let mut redis = Redis::start();
    let (mut w1, mut w2) = (Worker::start("w1", &redis.url()), Worker::start("w2", &redis.url()));
    let mut c = SioClients::start();
    c.connect("a", &w1.url());
    c.connect("a2", &w1.url());
    c.connect("b", &w2.url());
    for name in ["a", "a2", "b"] {
        c.join(name, "room");
    }
    assert_eq!((w1.ready(), w2.ready()), (200, 200));

    redis.kill();
    let deadline = std::time::Instant::now() + WAIT;
    while (w1.ready(), w2.ready()) != (503, 503) {
        assert!(
            std::time::Instant::now() < deadline,
            "/ready stayed 200 with Redis down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still healthy: the proxy must keep sending clients to them.
    let (status, body) = w1.get("/health");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Json>(&body).unwrap(),
        json!({"id": "w1", "redis": "down"})
    );
    assert!(w1.get("/metrics").1.contains("edgepin_worker_redis_up 0"));

    // Local members still get broadcasts; the other worker cannot.
    c.emit("a", "say", json!(["room", "during"]));
    assert!(c.wait_event("a2", "said", WAIT, said("room", "during")));
    assert!(c.wait_event("a", "said", WAIT, said("room", "during")));
    let r = emit(&w1, "room", r#"{"event":"news","data":"local"}"#);
    assert_eq!(r["redis"], "down");
    assert!(c.wait_event("a2", "news", WAIT, |a| a[0] == "local"));

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (w1.ready(), w2.ready()) != (200, 200) {
        assert!(std::time::Instant::now() < deadline, "/ready did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w1.proc.alive() && w2.proc.alive());
    c.emit("b", "say", json!(["room", "after"]));
    for name in ["a", "a2", "b"] {
        assert!(
            c.wait_event(name, "said", WAIT, said("room", "after")),
            "{name} after the outage"
        );
    }
    c.emit("a", "say", json!(["room", "after2"]));
    assert!(c.wait_event("b", "said", WAIT, said("room", "after2")));
    assert!(
        !c.received("b", "said").iter().any(|a| a[0]["msg"] == "during"),
        "nothing published during the outage is replayed"
    );
    let metrics = w2.get("/metrics").1;
    assert!(metrics.contains("edgepin_worker_redis_up 1"), "{metrics}");
    assert!(metrics.contains("edgepin_worker_redis_reconnects_total 1"), "{metrics}");
}

#[test]
fn node_and_edgepin_workers_share_rooms_both_ways() {
    let redis = Redis::start();
    let (w1, w2) = (Worker::start("w1", &redis.url()), Worker::start("w2", &redis.url()));
    let n1 = Worker::start_node("n1", &redis.url());
    let mut c = SioClients::start();
    c.connect("rust1", &w1.url());
    c.connect("rust2", &w2.url());
    c.connect("node", &n1.url());
    c.connect("outsider", &n1.url());
    for name in ["rust1", "rust2", "node"] {
        c.join(name, "mixed");
    }
    c.join("outsider", "elsewhere");

    // edgepin -> Node
    c.emit("rust1", "say", json!(["mixed", "from rust"]));
    for name in ["rust1", "rust2", "node"] {
        assert!(c.wait_event(name, "said", WAIT, said("mixed", "from rust")), "{name}");
    }
    // Node -> edgepin
    c.emit("node", "say", json!(["mixed", "from node"]));
    for name in ["rust1", "rust2", "node"] {
        assert!(c.wait_event(name, "said", WAIT, said("mixed", "from node")), "{name}");
    }
    let from_node = c.received("rust2", "said");
    assert!(from_node.iter().any(|a| a[0]["from"] == "n1"));
    // REST emits both ways, with nested data and floats intact.
    emit(
        &n1,
        "mixed",
        r#"{"event":"news","data":{"x":1.5,"list":[1,"two",null]}}"#,
    );
    emit(&w2, "mixed", r#"{"event":"news","data":{"x":2.5}}"#);
    for name in ["rust1", "rust2", "node"] {
        assert!(c.wait_event(name, "news", WAIT, |a| a[0] == json!({"x":1.5,"list":[1,"two",null]})));
        assert!(c.wait_event(name, "news", WAIT, |a| a[0] == json!({"x":2.5})));
    }
    // Member counts cross too: ours ask Node (fetchSockets), Node asks ours.
    assert_eq!(members(&w1, "mixed")["members"], 3);
    assert_eq!(members(&n1, "mixed")["members"], 3);

    std::thread::sleep(QUIET);
    for name in ["rust1", "rust2", "node"] {
        assert_eq!(c.received(name, "said").len(), 2, "{name} got each message once");
    }
    assert!(c.received("outsider", "said").is_empty());
    assert!(c.received("outsider", "news").is_empty());
}

/// The addresses of an `edgepin up` stack under test.
struct Stack {
    http: std::net::SocketAddr,
    stats: std::net::SocketAddr,
    redis_port: u16,
}

impl Stack {
    fn new() -> Stack {
        use crate::harness::free_port;
        let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        Stack {
            http: addr(free_port()),
            stats: addr(free_port()),
            redis_port: free_port(),
        }
    }

    /// proxy.yaml: an http listener, stats, these workers, a spawned Redis.
    fn yaml(&self, servers: &[(&str, std::net::SocketAddr)]) -> String {
        let names: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
        let names = names.join(", ");
        let mut y = format!(
            "listen: {{ http: {}, stats: {} }}\n\
             routes:\n  - {{ path_prefix: /socket.io/, backend: sockets, websocket: true }}\n  \
             - {{ path_prefix: /, backend: api }}\n\
             backends:\n  api: {{ servers: [{names}] }}\n  sockets: {{ balance: sticky, servers: [{names}] }}\n\
             health: {{ interval: 1s, timeout: 500ms }}\n\
             workers: {{ redis: spawn, redis_port: {} }}\nservers:\n",
            self.http, self.stats, self.redis_port
        );
        for (name, addr) in servers {
            y.push_str(&format!("  {name}: {{ address: {addr} }}\n"));
        }
        y
    }
}

fn local_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], crate::harness::free_port()))
}

/// proxy.yaml for `edgepin up` with workers w1 and w2: its path, the http listener, the
/// workers' addresses.
fn up_config(dir: &std::path::Path) -> (std::path::PathBuf, std::net::SocketAddr, [std::net::SocketAddr; 2]) {
    let stack = Stack::new();
    let workers = [local_addr(), local_addr()];
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, stack.yaml(&[("w1", workers[0]), ("w2", workers[1])])).expect("write proxy.yaml");
    (path, stack.http, workers)
}

fn up_command(config: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgepin"));
    cmd.arg("up")
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "info,edgepin::access=warn,pingora=warn")
        .env("EDGEPIN_TEST_STATS_PASSWORD", STATS_PASSWORD);
    cmd
}

/// The stats password of stacks whose proxy.yaml sets `stats.auth` (from the environment).
const STATS_PASSWORD: &str = "roll-test";

/// `started name=NAME pid=PID` lines of `up`'s log, in order.
fn started_pids(log: &str) -> Vec<(String, i32)> {
    log.lines()
        .filter(|l| l.contains("started name="))
        .filter_map(|l| {
            let field = |key: &str| l.split(key).nth(1)?.split_whitespace().next().map(str::to_string);
            Some((field("name=")?, field("pid=")?.parse().ok()?))
        })
        .collect()
}

/// Wait (up to 60 s) until `up` logs the end of its rolling restart.
fn wait_rolling_restart(up: &crate::harness::Proc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !up.log().contains("rolling restart done") {
        assert!(std::time::Instant::now() < deadline, "{}", up.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// `edgepin up -c config`, once REST answers through its proxy at `http`.
fn start_up(config: &std::path::Path, http: std::net::SocketAddr, dir: &std::path::Path) -> crate::harness::Proc {
    let mut up = crate::harness::Proc::spawn("up", up_command(config), dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while whoami_through(http).is_none() {
        assert!(up.alive(), "edgepin up exited:\n{}", up.log_tail(40));
        assert!(
            std::time::Instant::now() < deadline,
            "not serving:\n{}",
            up.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    up
}

fn whoami_through(http: std::net::SocketAddr) -> Option<String> {
    let (status, body) = crate::harness::blocking_get(http, "/api/whoami")?;
    let v: Json = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| v["id"].as_str().unwrap_or_default().to_string())
}

#[test]
fn edgepin_up_runs_the_stack_restarts_workers_and_leaves_no_process_behind() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, http, _) = up_config(dir.path());
    let mut up = start_up(&config, http, dir.path());

    // REST through the proxy rotates over both workers.
    let ids: std::collections::BTreeSet<String> = (0..6).filter_map(|_| whoami_through(http)).collect();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["w1", "w2"]);
    let first = started_pids(&up.log());
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["redis", "w1", "w2"], "{}", up.log());
    assert!(first.iter().all(|(_, pid)| alive(*pid)));
    // Children's lines are prefixed with their names.
    assert!(
        up.log()
            .lines()
            .any(|l| l.starts_with("w2      | ") && l.contains("worker listening"))
    );

    // Socket.IO clients through the proxy land on both workers and share a room.
    let mut c = SioClients::start();
    let proxy = format!("http://{http}");
    let mut on = std::collections::BTreeSet::new();
    for name in ["a", "b", "c", "d"] {
        c.connect(name, &proxy);
        on.insert(
            c.call(name, "whoami", json!([]))["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        c.join(name, "lobby");
    }
    assert_eq!(on.len(), 2, "sessions spread over both workers: {on:?}");
    c.emit("a", "say", json!(["lobby", "hi all"]));
    for name in ["a", "b", "c", "d"] {
        assert!(c.wait_event(name, "said", WAIT, said("lobby", "hi all")), "{name}");
    }

    // A crashed worker is started again.
    let w1 = first[1].1;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w1), Signal::SIGKILL).expect("kill w1");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !started_pids(&up.log()).iter().any(|(n, pid)| n == "w1" && *pid != w1) {
        assert!(
            std::time::Instant::now() < deadline,
            "w1 not restarted:\n{}",
            up.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGHUP: a rolling restart; REST keeps answering throughout.
    let before = started_pids(&up.log()).len();
    up.signal(Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while answered < 20 || !up.log().contains("rolling restart done") {
        assert!(
            std::time::Instant::now() < deadline,
            "no rolling restart:\n{}",
            up.log_tail(30)
        );
        assert!(
            whoami_through(http).is_some(),
            "a request failed during the rolling restart"
        );
        answered += 1;
    }
    let restarted: Vec<String> = started_pids(&up.log())[before..]
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(restarted, ["w1", "w2"], "one at a time, in order");
    assert!(up.log().contains("admin=Drain"), "drained through the proxy first");
    // Every socket lost its worker to a restart and came back by itself: the workers
    // closed the transports (a client reconnects) rather than disconnecting the sockets.
    for name in ["a", "b", "c", "d"] {
        assert_eq!(
            c.call(name, "whoami", json!([]))["transport"],
            "websocket",
            "{name} reconnected"
        );
        c.drain();
        let disconnects = c
            .seen
            .iter()
            .filter(|e| e["name"] == name && e["event"] == "disconnect")
            .count();
        assert!(disconnects >= 1, "{name} was on a restarted worker: {:?}", c.seen);
    }
    assert!(
        !c.seen.iter().any(|e| e["reason"] == "io server disconnect"),
        "no socket was told to stay away"
    );
    drop(c);

    // SIGTERM: everything stops, every child (old and new) is gone.
    up.signal(Signal::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(30)).expect("up did not exit");
    assert!(status.success(), "{status}:\n{}", up.log_tail(30));
    for (name, pid) in started_pids(&up.log()) {
        assert!(!alive(pid), "{name} (pid {pid}) outlived edgepin up");
    }
}

#[test]
fn edgepin_up_refuses_a_taken_port_or_a_missing_redis_before_starting_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, _, workers) = up_config(dir.path());
    let _squatter = std::net::TcpListener::bind(workers[1]).expect("hold w2's port");
    let mut up = crate::harness::Proc::spawn("up", up_command(&config), dir.path());
    let status = up.wait_exit(Duration::from_secs(20)).expect("up should refuse at once");
    assert!(!status.success());
    let log = up.log();
    assert!(log.contains(&format!("worker w2 needs {}", workers[1])), "{log}");
    assert!(started_pids(&log).is_empty(), "nothing was started: {log}");

    // Without redis-server on PATH: refused, with the way to install it.
    let empty = tempfile::tempdir().expect("temp dir");
    let mut cmd = up_command(&config);
    cmd.env("PATH", empty.path());
    let mut up = crate::harness::Proc::spawn("up-no-redis", cmd, dir.path());
    let status = up.wait_exit(Duration::from_secs(20)).expect("up should refuse at once");
    assert!(!status.success());
    assert!(up.log().contains("apt-get install redis-server"), "{}", up.log());
}

#[test]
fn acknowledgements_cross_workers_both_ways() {
    let redis = Redis::start();
    let (w1, w2) = (Worker::start("w1", &redis.url()), Worker::start("w2", &redis.url()));
    let n1 = Worker::start_node("n1", &redis.url());
    let mut c = SioClients::start();
    for (name, w) in [("a", &w1), ("b", &w2), ("n", &n1)] {
        c.connect(name, &w.url());
        c.join(name, "polls");
    }

    // edgepin asks (REST emit with acks): every member answers, wherever it is connected.
    let r = emit(&w1, "polls", r#"{"event":"poll","data":1,"ack_timeout_ms":3000}"#);
    assert_eq!(ack_senders(&r), ["a", "b", "n"], "{r}");

    // Node asks (io.to(room).timeout().emit(.., cb)): edgepin workers relay their clients' acks.
    let out = std::process::Command::new("node")
        .arg(crate::harness::worker::node_dir().join("emit-with-ack.js"))
        .args(["--redis", &redis.url(), "--room", "polls", "--timeout", "3000"])
        .current_dir(crate::harness::worker::node_dir())
        .output()
        .expect("node emit-with-ack.js");
    let result: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["error"], Json::Null, "{result}");
    assert_eq!(ack_senders(&result), ["a", "b", "n"], "{result}");
}

/// Who answered, from `{acks: [{from}, …]}`, sorted.
pub(crate) fn ack_senders(reply: &Json) -> Vec<&str> {
    let mut from: Vec<&str> = reply["acks"]
        .as_array()
        .expect("acks")
        .iter()
        .filter_map(|a| a["from"].as_str())
        .collect();
    from.sort();
    from
}

#[test]
fn bad_input_is_refused_clearly_and_the_demo_page_is_served() {
    let redis = Redis::start();
    let w = Worker::start("w1", &redis.url());
    let mut c = SioClients::start();
    let sid = c.connect("a", &w.url());

    let ack = c.call("a", "join", json!([]));
    assert_eq!(ack["ok"], false, "join without a room: {ack}");
    for (room, why) in [
        (json!(42), "must be a string"),
        (json!(""), "must not be empty"),
        (json!("x".repeat(129)), "too long"),
        (json!(sid), "socket ids are reserved"),
    ] {
        let ack = c.call("a", "join", json!([room]));
        assert_eq!(ack["ok"], false, "{ack}");
        assert!(ack["error"].as_str().unwrap_or_default().contains(why), "{ack}");
    }
    for i in 0..64 {
        c.join("a", &format!("room {i}"));
    }
    let ack = c.call("a", "join", json!(["one too many"]));
    assert!(
        ack["error"].as_str().unwrap_or_default().contains("at most 64"),
        "{ack}"
    );
    // A malformed say is ignored; the socket keeps working.
    c.emit("a", "say", json!([]));
    c.emit("a", "say", json!([{"not": "a room"}, "x"]));
    assert_eq!(
        c.call("a", "whoami", json!([])),
        json!({"id": "w1", "transport": "websocket"})
    );

    for body in ["not json", r#"{"data":1}"#, r#"{"event":"disconnect"}"#] {
        let r = post(&w, "/api/rooms/r/emit", body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let long = "x".repeat(129);
    assert_eq!(
        post(&w, &format!("/api/rooms/{long}/emit"), r#"{"event":"e"}"#).status,
        400
    );
    assert_eq!(w.get("/api/nothing").0, 404);

    let (status, page) = w.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("edgepin rooms") && page.contains("/assets/socket.io.min.js"));
    let (status, js) = w.get("/assets/socket.io.min.js");
    assert_eq!(status, 200);
    assert!(js.contains("Socket.IO v4.8.1"));
}

#[test]
fn workers_and_redis_stop_by_themselves_when_edgepin_up_is_killed() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, http, _) = up_config(dir.path());
    let mut up = start_up(&config, http, dir.path());
    let children = started_pids(&up.log());
    assert!(children.iter().any(|(name, _)| name == "redis"), "up spawned redis");
    up.signal(Signal::SIGKILL);
    up.wait_exit(Duration::from_secs(5)).expect("killed");

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut outlived = Vec::new();
    for (name, pid) in &children {
        while alive(*pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(*pid) {
            outlived.push(format!("{name} (pid {pid})"));
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    assert!(outlived.is_empty(), "outlived a killed up: {outlived:?}");
}

#[test]
fn sighup_starts_and_stops_workers_for_servers_added_to_and_removed_from_proxy_yaml() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().expect("temp dir");
    let stack = Stack::new();
    let (a1, a2, a3) = (local_addr(), local_addr(), local_addr());
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, stack.yaml(&[("w1", a1), ("w2", a2)])).expect("write proxy.yaml");
    let mut up = start_up(&config, stack.http, dir.path());
    let w1 = started_pids(&up.log())[1].1;

    std::fs::write(&config, stack.yaml(&[("w2", a2), ("w3", a3)])).expect("rewrite proxy.yaml");
    up.signal(Signal::SIGHUP);
    wait_rolling_restart(&up);
    assert!(!alive(w1), "w1's worker stopped with its server");
    let restarted: Vec<String> = started_pids(&up.log())[3..].iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(restarted, ["w3", "w2"], "w3 started, then w2 restarted");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: std::collections::BTreeSet<String> = (0..6).filter_map(|_| whoami_through(stack.http)).collect();
        if ids.iter().map(String::as_str).eq(["w2", "w3"]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "proxy still answers from {ids:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    up.signal(Signal::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).expect("exit").success());
    for (name, pid) in started_pids(&up.log()) {
        assert!(!alive(pid), "{name} (pid {pid}) outlived edgepin up");
    }
}

#[test]
fn a_rolling_restart_leaves_an_operators_maint_and_drain_as_they_were() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().expect("temp dir");
    let stack = Stack::new();
    let config = dir.path().join("proxy.yaml");
    let servers = [("w1", local_addr()), ("w2", local_addr()), ("w3", local_addr())];
    let yaml = stack.yaml(&servers) + "stats: { auth: { user: admin, password_env: EDGEPIN_TEST_STATS_PASSWORD } }\n";
    std::fs::write(&config, yaml).expect("write proxy.yaml");
    let mut up = start_up(&config, stack.http, dir.path());
    let auth = format!("Authorization: {}", crate::harness::basic_auth("admin", STATS_PASSWORD));
    for (server, state) in [("w1", "maint"), ("w2", "drain")] {
        let path = format!("/admin/servers/{server}/state");
        let r = request_to(
            stack.stats,
            "POST",
            &path,
            &format!(r#"{{"state":"{state}"}}"#),
            &[&auth],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    up.signal(Signal::SIGHUP);
    wait_rolling_restart(&up);
    let restarted: Vec<String> = started_pids(&up.log())[4..].iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(restarted, ["w1", "w2", "w3"], "every worker restarted");
    let stats = request_to(stack.stats, "GET", "/stats.json", "", &[&auth]).json();
    let api = stats["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "api"))
        .expect("backend api")
        .clone();
    let admin: Vec<(String, String)> = api["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").into(),
                s["admin"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [("w1", "MAINT"), ("w2", "DRAIN"), ("w3", "READY")]
        .iter()
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect();
    assert_eq!(
        admin, want,
        "the operator's states stay; the restart's own DRAIN is undone"
    );

    up.signal(Signal::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).expect("exit").success());
}

#[test]
fn an_emit_token_guards_the_rest_emit() {
    let redis = Redis::start();
    let w = Worker::start_with_env("w1", &redis.url(), &[("EDGEPIN_EMIT_TOKEN", "s3cret")]);
    let mut c = SioClients::start();
    c.connect("a", &w.url());
    c.join("a", "news");
    let body = r#"{"event":"flash","data":"hi"}"#;
    for headers in [&[][..], &["Authorization: Bearer wrong"], &["Authorization: s3cret"]] {
        let r = post_with(&w, "/api/rooms/news/emit", body, headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
    }
    let r = post_with(&w, "/api/rooms/news/emit", body, &["Authorization: Bearer s3cret"]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.wait_event("a", "flash", WAIT, |a| a[0] == "hi"));
    std::thread::sleep(QUIET);
    assert_eq!(
        c.received("a", "flash").len(),
        1,
        "only the authorised emit went through"
    );
}
