//! Several edgepins in front of one fleet (issue 17): two edges with the same config and
//! `sticky.secret_env`, sharing their sid table through a Redis of their own
//! (`sticky.shared`), route every Engine.IO session alike — a cookie-less client whose
//! requests land on both edges stays on the worker that issued its session. While that
//! Redis is gone both edges keep serving by cookie and hash, and count it.
//!
//! Workers are real (`edgepin worker`), so a request routed to the wrong one really gets
//! `Session ID unknown`. The workers' rooms live on another Redis than the shared table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::harness::l4::RoundRobin;
use crate::harness::node::run_clients;
use crate::harness::redis::{Redis, RedisCluster};
use crate::harness::worker::Worker;
use crate::harness::{Conn, Proxy, Target, eventually};

const SECRET_ENV: &str = "EDGEPIN_TEST_STICKY_SECRET";

/// Workers on their Redis, the shared table's Redis, and two edges.
struct Fleet {
    workers: Vec<Worker>,
    _rooms: Redis,
    shared: Redis,
    edges: [Proxy; 2],
}

/// Both edges' config: `/socket.io/` sticky over the workers, PROXY protocol from the
/// L4 balancer on 127.0.0.1, the same cookie secret, and the shared table on `redis`
/// (the YAML value of `sticky.shared.redis`), if any.
fn edge_yaml(workers: &[Worker], redis: Option<&str>) -> String {
    let names: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let list = names.join(", ");
    let shared = redis
        .map(|r| format!(", shared: {{ redis: {r}, timeout: 250ms }}"))
        .unwrap_or_default();
    let mut y = format!(
        "access_log: false\ntrusted_proxies: [127.0.0.1/32]\n\
         routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [{list}] }}\n  sockets: {{ balance: sticky, servers: [{list}], timeouts: {{ server: 60s }} }}\n\
         health: {{ interval: 500ms, timeout: 400ms, rise: 1, fall: 2 }}\n\
         sticky: {{ secret_env: {SECRET_ENV}{shared} }}\nservers:\n"
    );
    for w in workers {
        y.push_str(&format!("  {}: {{ address: {} }}\n", w.id, w.addr));
    }
    y
}

fn fleet(workers: usize, shared: bool) -> Fleet {
    fleet_with(workers, shared, false, None)
}

/// The YAML value naming one Redis.
fn one(redis: &Redis) -> String {
    format!("\"{}\"", redis.url())
}

/// `h2`: the edges also listen on https, offering HTTP/2. `cluster`: the shared table is
/// on this Redis Cluster instead.
fn fleet_with(workers: usize, shared: bool, h2: bool, cluster: Option<&RedisCluster>) -> Fleet {
    let rooms = Redis::start();
    let shared_redis = Redis::start();
    let workers: Vec<Worker> = (1..=workers)
        .map(|i| Worker::start(&format!("w{i}"), &rooms.url()))
        .collect();
    let redis = match cluster {
        Some(c) => format!("{{ cluster: [{}] }}", c.seeds()),
        None => one(&shared_redis),
    };
    let yaml = edge_yaml(&workers, shared.then_some(redis.as_str()));
    let edge = || {
        let b = Proxy::builder(&yaml)
            .listen("  proxy_protocol: true\n")
            .env(SECRET_ENV, "the same secret on every edge");
        if h2 { b.h2() } else { b.no_https() }.start()
    };
    let edges = [edge(), edge()];
    if shared {
        // Sessions are shared once an edge is connected to the table's Redis.
        // (Blocking: `fleet` also runs inside async tests.)
        for edge in &edges {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let up = || {
                crate::harness::blocking_get(edge.stats, "/stats.json")
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .is_some_and(|v| v["sids"]["shared"]["up"] == true)
            };
            while !up() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "an edge never connected to the shared table"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Fleet {
        workers,
        _rooms: rooms,
        shared: shared_redis,
        edges,
    }
}

impl Fleet {
    /// Edge `i` as seen from the client address `ip`.
    fn edge(&self, i: usize, ip: &str) -> Target {
        self.edges[i].plain().from(ip)
    }
}

/// The shared table's counters on an edge (`/stats.json` → `sids.shared`).
async fn shared_stats(edge: &Proxy) -> Value {
    edge.stats().await["sids"]["shared"].clone()
}

fn count(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

// Engine.IO polling by hand.

pub(crate) async fn handshake(t: &Target) -> (u16, String) {
    let mut conn = Conn::open(t).await.expect("connect");
    let r = conn
        .request("GET", "/socket.io/?EIO=4&transport=polling", &[], b"")
        .await
        .expect("handshake");
    let sid = edgepin::sticky::engineio::open_packet_sid(&r.body)
        .map(str::to_string)
        .unwrap_or_default();
    (r.status, sid)
}

/// POST `body` on the session, then GET until a packet starting with `answer` came (the
/// POST makes the server queue it, so no GET waits for a long-poll; at most 3 GETs, a
/// ping may come first): (POST status, last GET status, the GETs' bodies).
pub(crate) async fn exchange(t: &Target, sid: &str, body: &str, answer: &str) -> (u16, u16, String) {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let post = Conn::open(t)
        .await
        .expect("connect")
        .request("POST", &path, &[], body.as_bytes())
        .await
        .expect("post");
    if post.status != 200 {
        return (post.status, 0, post.text());
    }
    let mut got = String::new();
    for _ in 0..3 {
        let get = Conn::open(t).await.expect("connect").get(&path).await.expect("poll");
        if !got.is_empty() {
            got.push('\u{1e}');
        }
        got.push_str(&get.text());
        if get.status != 200 || got.split('\u{1e}').any(|p| p.starts_with(answer)) {
            return (post.status, get.status, got);
        }
    }
    (post.status, 200, got)
}

/// POST `body` on the session alone: its status.
async fn post_alone(t: &Target, sid: &str, body: &str) -> u16 {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut conn = Conn::open(t).await.expect("connect");
    conn.request("POST", &path, &[], body.as_bytes())
        .await
        .expect("post")
        .status
}

/// The worker that holds the session, by a `whoami` acknowledgement over polling.
pub(crate) async fn whoami(t: &Target, sid: &str, ack: u32) -> Result<String, String> {
    let prefix = format!("43{ack}[");
    let (post, get, body) = exchange(t, sid, &format!("42{ack}[\"whoami\"]"), &prefix).await;
    let packet = body.split('\u{1e}').find(|p| p.starts_with(&prefix));
    match (post, get, packet) {
        (200, 200, Some(p)) => {
            let v: Value = serde_json::from_str(&p[prefix.len() - 1..]).map_err(|e| format!("{e}: {p}"))?;
            Ok(v[0]["id"].as_str().unwrap_or_default().to_string())
        }
        _ => Err(format!("POST {post}, GET {get}: {body}")),
    }
}

fn shared_key(redis: &Redis, sid: &str) -> String {
    RedisCluster::cli(redis.port, &["GET", &format!("edgepin:sid:{sid}")])
        .trim()
        .to_string()
}

/// Sessions opened through edge A from one address, then used through edge B from
/// another: (the worker A's client saw, what B's client got) per session.
async fn cross_edge_sessions(fleet: &Fleet, n: usize) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let a = fleet.edge(0, &format!("127.0.0.{}", 10 + i));
        let b = fleet.edge(1, &format!("127.0.0.{}", 100 + i));
        let (status, sid) = handshake(&a).await;
        assert_eq!(status, 200, "handshake through edge A");
        assert!(!sid.is_empty());
        // Edge B's first request of the session: the Socket.IO connect.
        let (post, get, body) = exchange(&b, &sid, "40", "40{").await;
        if (post, get) != (200, 200) || !body.split('\u{1e}').any(|p| p.starts_with("40{")) {
            out.push((
                String::new(),
                Err(format!("connect through B: POST {post}, GET {get}: {body}")),
            ));
            continue;
        }
        let on_a = whoami(&a, &sid, 1).await.expect("whoami through A");
        out.push((on_a, whoami(&b, &sid, 2).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_opened_on_one_edge_stays_on_its_worker_through_the_other() {
    let fleet = fleet(3, true);
    let sessions = cross_edge_sessions(&fleet, 6).await;
    for (i, (on_a, on_b)) in sessions.iter().enumerate() {
        assert_eq!(on_b.as_deref(), Ok(on_a.as_str()), "session {i}: {sessions:?}");
    }
    let workers: std::collections::HashSet<&String> = sessions.iter().map(|(w, _)| w).collect();
    assert!(workers.len() > 1, "sessions spread over workers: {sessions:?}");
    let b = shared_stats(&fleet.edges[1]).await;
    assert_eq!(count(&b, "hits"), 6, "edge B learned each sid from Redis once: {b}");
    assert_eq!(b["up"], true, "{b}");
    assert_eq!(
        count(&b, "fallbacks") + count(&b, "errors") + count(&b, "timeouts"),
        0,
        "{b}"
    );
    let a = shared_stats(&fleet.edges[0]).await;
    assert!(count(&a, "writes") >= 6, "edge A wrote each sid: {a}");
    let sockets = fleet.edges[1].backend_stats("sockets").await;
    assert_eq!(sockets["counters"]["sid_unknown"], 0, "{sockets}");

    // The shared copy names the server; a session that ends is deleted from it.
    let b = fleet.edge(1, "127.0.0.200");
    let (status, sid) = handshake(&fleet.edge(0, "127.0.0.201")).await;
    assert_eq!(status, 200);
    assert_eq!(exchange(&b, &sid, "40", "40{").await.1, 200);
    let owner = whoami(&b, &sid, 1).await.expect("whoami through B");
    assert_eq!(shared_key(&fleet.shared, &sid), owner);
    assert!(fleet.workers.iter().any(|w| w.id == owner));
    // Close the session (Engine.IO close packet); the worker then disowns the sid.
    let (post, get, body) = exchange(&b, &sid, "1", "").await;
    assert_eq!(post, 200, "{body}");
    assert_eq!(get, 400, "the closed session is unknown to its worker: {body}");
    let gone = eventually(Duration::from_secs(5), async || {
        shared_key(&fleet.shared, &sid).is_empty()
    })
    .await;
    assert!(gone, "the sid was deleted from the shared table");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_shared_table_the_second_edge_loses_sessions() {
    // Negative control of the test above: the same clients, each edge with its own table.
    let fleet = fleet(3, false);
    let sessions = cross_edge_sessions(&fleet, 6).await;
    let lost = sessions.iter().filter(|(a, b)| b.as_deref() != Ok(a.as_str())).count();
    assert!(lost > 0, "every session survived without sharing: {sessions:?}");
    let unknown = sessions
        .iter()
        .filter(|(_, b)| b.as_ref().is_err_and(|e| e.contains("Session ID unknown")))
        .count();
    assert!(unknown > 0, "a wrong worker answers Session ID unknown: {sessions:?}");
}

fn clients_through(rr: &RoundRobin, clients: usize) -> Value {
    let args: Vec<String> = [
        "--url",
        &format!("http://127.0.0.1:{}", rr.addr.port()),
        "--clients",
        &clients.to_string(),
        "--addresses",
        "20",
        "--rooms",
        "20",
        "--cookies",
        "off",
    ]
    .map(String::from)
    .to_vec();
    run_clients(&args, Duration::from_secs(40))
}

/// What the run must show; the broken invariants.
fn judge(r: &Value, clients: u64) -> Vec<String> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut bad = Vec::new();
    for (what, got, want) in [
        ("connected", n(&r["connected"]), clients),
        ("upgraded", n(&r["upgraded"]), clients),
        ("disconnects", n(&r["disconnects"]), 0),
        ("reconnects", n(&r["reconnects"]), 0),
        ("connect errors", n(&r["connectErrors"]), 0),
        ("broadcasts expected", n(&r["broadcasts"]["expected"]), clients),
        ("broadcasts received", n(&r["broadcasts"]["received"]), clients),
        ("foreign messages", n(&r["broadcasts"]["foreign"]), 0),
    ] {
        if got != want {
            bad.push(format!("{what}: {got}, want {want}"));
        }
    }
    bad
}

#[test]
fn two_hundred_cookieless_clients_spread_over_two_edges_stay_pinned() {
    let fleet = fleet(3, true);
    let rr = RoundRobin::start([fleet.edges[0].http, fleet.edges[1].http]);
    let report = clients_through(&rr, 200);
    let broken = judge(&report, 200);
    assert!(broken.is_empty(), "broken: {broken:#?}\nreport: {report}");
    let per_edge = [0, 1].map(|i| rr.per_edge[i].load(Ordering::Relaxed));
    assert!(per_edge.iter().all(|&c| c >= 200), "connections per edge {per_edge:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut hits = 0;
    for edge in &fleet.edges {
        let shared = rt.block_on(shared_stats(edge));
        let sockets = rt.block_on(edge.backend_stats("sockets"));
        assert_eq!(sockets["counters"]["sid_unknown"], 0, "{sockets}");
        assert_eq!(count(&shared, "fallbacks"), 0, "{shared}");
        hits += count(&shared, "hits");
    }
    // Sessions whose requests reached both edges: the second edge learned them from Redis.
    eprintln!("shared table hits: {hits}, connections per edge {per_edge:?}");
    assert!(hits > 0, "sids learned from the shared table: {hits}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_its_redis_both_edges_keep_serving_fall_back_count_it_and_reconnect() {
    let mut fleet = fleet(3, true);
    let before: Vec<Value> = [shared_stats(&fleet.edges[0]).await, shared_stats(&fleet.edges[1]).await].into();
    assert!(before.iter().all(|s| s["up"] == true), "{before:?}");
    fleet.shared.kill();

    // New sessions on each edge: handshakes and their polls on the same edge work.
    for (i, ip) in [
        (0, "127.0.0.30"),
        (1, "127.0.0.31"),
        (0, "127.0.0.32"),
        (1, "127.0.0.33"),
    ] {
        let t = fleet.edge(i, ip);
        let (status, sid) = handshake(&t).await;
        assert_eq!(status, 200, "edge {i} without Redis");
        let (post, get, body) = exchange(&t, &sid, "40", "40{").await;
        assert_eq!((post, get), (200, 200), "edge {i}: {body}");
        // The other edge asks Redis for it, gets no answer, and routes by hash (a noop
        // packet: whichever worker gets it, nothing changes).
        let other = fleet.edge(1 - i, &format!("127.0.0.{}", 130 + i));
        let _ = post_alone(&other, &sid, "6").await;
    }
    for (i, edge) in fleet.edges.iter().enumerate() {
        let r = crate::harness::client::get(&fleet.edge(i, "127.0.0.40"), "/api/whoami")
            .await
            .expect("REST");
        assert_eq!(r.status, 200, "edge {i} serves REST");
        let now = shared_stats(edge).await;
        assert!(
            count(&now, "fallbacks") >= count(&before[i], "fallbacks") + 3,
            "edge {i} counted its fallbacks: {now}"
        );
        let down = eventually(Duration::from_secs(5), async || shared_stats(edge).await["up"] == false).await;
        assert!(down, "edge {i} shows Redis down");
        let metrics = crate::harness::client::get(&edge.stats_target(), "/metrics")
            .await
            .expect("metrics")
            .text();
        assert!(metrics.contains("edgepin_shared_sids_up 0"), "{metrics}");
        assert!(metrics.contains("edgepin_shared_sids_fallbacks_total"), "{metrics}");
    }

    // Redis is back: both edges reconnect by themselves, and share again.
    fleet.shared.restart();
    for (i, edge) in fleet.edges.iter().enumerate() {
        let up = eventually(Duration::from_secs(10), async || shared_stats(edge).await["up"] == true).await;
        assert!(up, "edge {i} reconnected");
    }
    let sessions = cross_edge_sessions(&fleet, 2).await;
    for (on_a, on_b) in &sessions {
        assert_eq!(on_b.as_deref(), Ok(on_a.as_str()), "{sessions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_redis_delays_a_lookup_by_its_timeout_at_most() {
    let fleet = fleet(2, true);
    let (status, sid) = handshake(&fleet.edge(0, "127.0.0.50")).await;
    assert_eq!(status, 200);
    // Redis stops answering (SIGSTOP: the connection stays open, nothing comes back).
    fleet.shared.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let b = fleet.edge(1, "127.0.0.51");
    let started = std::time::Instant::now();
    let status = post_alone(&b, &sid, "6").await;
    let waited = started.elapsed();
    fleet.shared.proc.signal(nix::sys::signal::Signal::SIGCONT);
    // By hash: the session's worker (200) or another one (400); either way, at once.
    assert!(status == 200 || status == 400, "{status}");
    // (Without its own timeout, 250 ms here, a lookup would wait for the link's 1 s I/O
    // timeout. 250 ms, not less: under load a healthy Redis lookup may take tens of ms.)
    assert!(waited < Duration::from_millis(900), "the request waited {waited:?}");
    let shared = shared_stats(&fleet.edges[1]).await;
    assert_eq!(count(&shared, "timeouts"), 1, "{shared}");
    assert_eq!(count(&shared, "fallbacks"), 1, "{shared}");
}

/// GET `path` over HTTP/2 on the https listener at `addr`, from the client address `ip`.
async fn h2_get(addr: SocketAddr, ip: &str, path: &str) -> (u16, String) {
    let mut config = (*crate::harness::client::tls_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(ip.parse().expect("ip"), 0)).expect("bind");
    let tcp = socket.connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 negotiated");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(())
        .expect("request");
    let mut send = send.ready().await.expect("ready");
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_request_on_the_other_edge_finds_the_session_too() {
    let fleet = fleet_with(3, true, true, None);
    for i in 0..4 {
        let a = fleet.edge(0, &format!("127.0.0.{}", 60 + i));
        let (status, sid) = handshake(&a).await;
        assert_eq!(status, 200);
        // The connect is answered on the next poll, which goes through edge B over h2.
        assert_eq!(post_alone(&a, &sid, "40").await, 200);
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        let from = format!("127.0.0.{}", 160 + i);
        let mut got = String::new();
        // (At most 3 polls: a ping may come before the connect's answer.)
        for _ in 0..3 {
            let (status, body) = h2_get(fleet.edges[1].https, &from, &path).await;
            assert_eq!(status, 200, "session {i}: {body}");
            got.push_str(&body);
            got.push('\u{1e}');
            if got.split('\u{1e}').any(|p| p.starts_with("40{")) {
                break;
            }
        }
        assert!(got.split('\u{1e}').any(|p| p.starts_with("40{")), "session {i}: {got}");
    }
    let b = shared_stats(&fleet.edges[1]).await;
    assert_eq!(count(&b, "hits"), 4, "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_turns_the_shared_table_on_and_off() {
    let fleet = fleet(2, false);
    let edge = &fleet.edges[0];
    assert!(
        edge.stats().await["sids"]["shared"].is_null(),
        "off without sticky.shared"
    );
    let with = edge_yaml(&fleet.workers, Some(&one(&fleet.shared)));
    edge.write_config(&with);
    edge.sighup();
    edge.wait_generation(2).await;
    let up = eventually(Duration::from_secs(5), async || shared_stats(edge).await["up"] == true).await;
    assert!(up, "connected after the reload: {}", shared_stats(edge).await);
    let (status, sid) = handshake(&fleet.edge(0, "127.0.0.70")).await;
    assert_eq!(status, 200);
    let written = eventually(Duration::from_secs(5), async || {
        !shared_key(&fleet.shared, &sid).is_empty()
    })
    .await;
    assert!(written, "the new session is shared");
    edge.write_config(&edge_yaml(&fleet.workers, None));
    edge.sighup();
    edge.wait_generation(3).await;
    let off = eventually(Duration::from_secs(5), async || {
        edge.stats().await["sids"]["shared"].is_null()
    })
    .await;
    assert!(off, "off again after the next reload");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_table_may_live_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let fleet = fleet_with(3, true, false, Some(&cluster));
    let sessions = cross_edge_sessions(&fleet, 6).await;
    for (i, (on_a, on_b)) in sessions.iter().enumerate() {
        assert_eq!(on_b.as_deref(), Ok(on_a.as_str()), "session {i}: {sessions:?}");
    }
    let b = shared_stats(&fleet.edges[1]).await;
    assert_eq!(count(&b, "hits"), 6, "{b}");
    assert!(b["redis"].as_str().is_some_and(|r| r.starts_with("cluster ")), "{b}");
}
