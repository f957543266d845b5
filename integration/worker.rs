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

fn emit(w: &Worker, room: &str, body: &str) -> Json {
    let addr = w.addr;
    let path = format!("/api/rooms/{room}/emit");
    let body = body.to_string();
    // The harness client is async; this test helper stays blocking.
    let r = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let mut conn = crate::harness::Conn::open(&crate::harness::Target::plain(addr)).await?;
                conn.request(
                    "POST",
                    &path,
                    &["Content-Type: application/json".into()],
                    body.as_bytes(),
                )
                .await
            })
    })
    .join()
    .expect("emit thread")
    .expect("POST emit");
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
