//! Health checks, failover and limits: a dead worker costs no failed request.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::load::steady_load;
use crate::harness::node::{HeldClients, tls_target};
use crate::harness::redis::Redis;
use crate::harness::worker::Worker;
use crate::harness::{Backend, Conn, HealthMode, Proxy, client};

fn body(backends: &[&Backend], health: &str, extra: &str) -> String {
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let mut y = format!(
        "access_log: false\n{extra}routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [{}] }}\n\
         health: {health}\nservers:\n",
        names.join(", ")
    );
    for b in backends {
        y.push_str(&format!("  {}: {{ address: {} }}\n", b.name, b.addr));
    }
    y
}

const FAST_CHECKS: &str = "{ interval: 500ms, timeout: 300ms, rise: 2, fall: 2 }";

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_worker_under_load_costs_no_failed_get_and_it_returns_after_restart() {
    let mut backends: Vec<Backend> = (1..=4).map(|i| Backend::start(&format!("w{i}"))).collect();
    let proxy = Proxy::start(&body(&backends.iter().collect::<Vec<_>>(), FAST_CHECKS, ""));
    for b in &backends {
        proxy.wait_health(&b.name, "Up", Duration::from_secs(10)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The load runs concurrently with the fault injection below.
    let load = steady_load(&proxy, 6, Arc::clone(&stop));
    let faults = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        backends[1].kill();
        let killed_at = Instant::now();
        // fall × interval + timeout = 2 × 500 ms + 300 ms; allow twice that plus jitter.
        let down_after = proxy.wait_health("w2", "Down", Duration::from_secs(4)).await;
        assert!(down_after <= Duration::from_millis(2600), "DOWN after {down_after:?}");
        let hits_while_down: Vec<u64> = backends.iter().map(Backend::hits).collect();
        tokio::time::sleep(Duration::from_secs(6).saturating_sub(killed_at.elapsed())).await;
        let spread: Vec<u64> = backends
            .iter()
            .zip(&hits_while_down)
            .map(|(b, h)| b.hits() - h)
            .collect();
        backends[1].restart();
        let up_after = proxy.wait_health("w2", "Up", Duration::from_secs(5)).await;
        let before_return = backends[1].hits();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        (spread, up_after, backends[1].hits() - before_return)
    };
    let ((sent, failures, per), (spread, up_after, returned)) = tokio::join!(load, faults);
    assert!(
        failures.is_empty(),
        "{} of {sent} GETs failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(sent > 1000, "load too small: {sent}");
    // While w2 was down, the other three shared its traffic.
    assert_eq!(spread[1], 0, "no traffic to the dead worker: {spread:?}");
    let others = [spread[0], spread[2], spread[3]];
    let (max, min) = (*others.iter().max().unwrap(), *others.iter().min().unwrap());
    assert!(
        min > 0 && max as f64 / min as f64 <= 1.5,
        "uneven while down: {spread:?}"
    );
    assert!(
        up_after < Duration::from_secs(3),
        "UP after {up_after:?} (rise 2 × 500 ms)"
    );
    assert!(returned > 0, "w2 gets traffic again after it returns: {per:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_failing_its_checks_is_taken_out_and_a_hanging_one_by_timeout() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let proxy = Proxy::start(&body(&[&a, &b, &c], FAST_CHECKS, ""));
    for s in ["a", "b", "c"] {
        proxy.wait_health(s, "Up", Duration::from_secs(10)).await;
    }
    b.set_health(HealthMode::Fail);
    c.set_health(HealthMode::Hang);
    proxy.wait_health("b", "Down", Duration::from_secs(5)).await;
    proxy.wait_health("c", "Down", Duration::from_secs(5)).await;
    assert!(proxy.proc.log().contains("L7STS 500"), "the 500 is the reason");
    assert!(proxy.proc.log().contains("L7TOUT"), "the timeout is the reason");
    let (b0, c0) = (b.hits(), c.hits());
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for _ in 0..30 {
        assert_eq!(conn.get("/").await.unwrap().header("x-server"), Some("a"));
    }
    assert_eq!((b.hits(), c.hits()), (b0, c0));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_servers_down_is_503_with_retry_after_at_once_without_touching_them() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.set_health(HealthMode::Fail);
    b.set_health(HealthMode::Fail);
    let proxy = Proxy::start(&body(&[&a, &b], FAST_CHECKS, ""));
    proxy.wait_health("a", "Down", Duration::from_secs(5)).await;
    proxy.wait_health("b", "Down", Duration::from_secs(5)).await;
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!((a.hits(), b.hits()), (0, 0), "no request was sent to a DOWN server");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_at_max_connections_queues_the_next_request_until_a_slot_frees() {
    let a = Backend::start("a");
    let yaml = body(&[&a], FAST_CHECKS, "timeouts: { queue: 3s }\n").replace(
        &format!("address: {} }}", a.addr),
        &format!("address: {}, max_connections: 1 }}", a.addr),
    );
    let proxy = Proxy::start(&yaml);
    let t = proxy.plain();
    let slow = tokio::spawn(async move { client::get(&t, "/slow/1000").await.map(|r| r.status) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let t = proxy.plain();
    let queued = tokio::spawn(async move { client::get(&t, "/queued").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not pinned to a server: it waits in the backend's queue.
    assert_eq!(proxy.backend_stats("api").await["counters"]["queue_current"], 1);
    assert_eq!(proxy.server_stats("api", "a").await["counters"]["queue_current"], 0);
    let r = queued.await.unwrap().unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(proxy.backend_stats("api").await["counters"]["queue_current"], 0);
    assert_eq!(proxy.backend_stats("api").await["counters"]["queue_max"], 1);
    assert!(
        waited >= Duration::from_millis(600),
        "it waited for the slot: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "served when the slot freed: {waited:?}"
    );
    assert_eq!(slow.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_session_waits_for_its_own_full_server_in_that_servers_queue() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let yaml = body(&[&a, &b], FAST_CHECKS, "timeouts: { queue: 3s }\n")
        .replace("api: { servers", "api: { balance: sticky, cookie: EDGEPIN, servers")
        .replace(
            &format!("address: {} }}", a.addr),
            &format!("address: {}, max_connections: 1 }}", a.addr),
        );
    let proxy = Proxy::start(&yaml);
    for s in ["a", "b"] {
        proxy.wait_health(s, "Up", Duration::from_secs(10)).await;
    }
    // A cookie for each server: from the first answer each client address gets.
    let mut cookies = HashMap::new();
    for i in 1..=40u8 {
        let t = proxy.plain().from(&format!("127.0.0.{i}"));
        let r = client::get(&t, "/").await.unwrap();
        let server = r.header("x-server").unwrap().to_string();
        let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
        cookies.entry(server).or_insert(cookie);
    }
    let cookie_a = format!("Cookie: {}", cookies["a"]);

    let t = proxy.plain();
    let c = cookie_a.clone();
    let slow = tokio::spawn(async move {
        let mut conn = Conn::open(&t).await?;
        conn.request("GET", "/slow/1000", &[c], b"").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = proxy.plain();
    let c = cookie_a.clone();
    let queued = tokio::spawn(async move {
        let mut conn = Conn::open(&t).await?;
        conn.request("GET", "/pinned", &[c], b"").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // b is free, but the session belongs to a: it waits for a, in a's queue.
    assert_eq!(proxy.server_stats("api", "a").await["counters"]["queue_current"], 1);
    assert_eq!(proxy.backend_stats("api").await["counters"]["queue_current"], 1);
    let r = queued.await.unwrap().unwrap();
    assert_eq!((r.status, r.header("x-server")), (200, Some("a")));
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    let a_stats = proxy.server_stats("api", "a").await;
    assert_eq!(
        (
            a_stats["counters"]["queue_current"].as_u64(),
            a_stats["counters"]["queue_max"].as_u64()
        ),
        (Some(0), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_freed_through_another_backend_or_an_older_config_wakes_the_queue() {
    let a = Backend::start("a");
    let yaml = |weight: u32| {
        body(&[&a], FAST_CHECKS, "timeouts: { queue: 3s }\n")
            .replace(
                "routes:\n",
                "routes:\n  - { host: other.test, path_prefix: /, backend: other }\n",
            )
            .replace("backends:\n", "backends:\n  other: { servers: [a] }\n")
            .replace(
                &format!("address: {} }}", a.addr),
                &format!("address: {}, max_connections: 1, weight: {weight} }}", a.addr),
            )
    };
    let proxy = Proxy::start(&yaml(1));
    // A request of backend `other` holds a's only slot for 1 s; one of `api` queues for it.
    let t = proxy.plain();
    let slow = tokio::spawn(async move {
        let conn = Conn::open(&t).await?;
        conn.with_host("other.test").get("/slow/1000").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/queued").await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(slow.await.unwrap().unwrap().header("x-server"), Some("a"));
    assert!(
        waited > Duration::from_millis(500) && waited < Duration::from_millis(2000),
        "queued, and woken when the slot freed: {waited:?}"
    );

    // The slot is held by a request of the config before a reload.
    let t = proxy.plain();
    let slow = tokio::spawn(async move { client::get(&t, "/slow/1500").await.map(|r| r.status) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let generation = proxy.status().await["generation"].as_u64().unwrap();
    proxy.write_config(&yaml(2));
    proxy.sighup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.status().await["generation"].as_u64().unwrap() == generation {
        assert!(Instant::now() < deadline, "reload never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/queued").await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        waited > Duration::from_millis(500) && waited < Duration::from_millis(2500),
        "queued, and woken when the old request freed its slot: {waited:?}"
    );
    assert_eq!(slow.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_uploading_client_does_not_take_its_server_out() {
    use tokio::io::AsyncWriteExt;
    let a = Backend::start("a");
    let yaml = body(
        &[&a],
        "{ interval: 30s, timeout: 1s, passive_fall: 1 }",
        "timeouts: { server: 1s, client: 10s }\n",
    );
    let proxy = Proxy::start(&yaml);
    proxy.wait_health("a", "Up", Duration::from_secs(10)).await;
    // A body trickling in for longer than the server timeout: the server is waiting for
    // the client, not failing.
    let mut s = client::connect(&proxy.plain()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // (pingora restarts the server's read timer on each body chunk: the gaps must be longer.)
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        if s.write_all(b"x").await.is_err() {
            break;
        }
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        proxy.logged_health("a").as_deref(),
        Some("Up"),
        "{:?}",
        proxy.server_stats("api", "a").await
    );
    assert_eq!(client::get(&proxy.plain(), "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_gives_up_with_503_after_its_timeout() {
    let a = Backend::start("a");
    let yaml = body(&[&a], FAST_CHECKS, "timeouts: { queue: 400ms }\n").replace(
        &format!("address: {} }}", a.addr),
        &format!("address: {}, max_connections: 1 }}", a.addr),
    );
    let proxy = Proxy::start(&yaml);
    let t = proxy.plain();
    let slow = tokio::spawn(async move { client::get(&t, "/slow/2000").await.map(|r| r.status) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/").await.unwrap();
    assert_eq!(r.status, 503);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert_eq!(slow.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_refused_by_one_server_is_retried_on_another_for_any_method() {
    let a = Backend::start("a");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Health checks would take `dead` out; make them slow so the retry path is what we see.
    let mut yaml = body(&[&a], "{ interval: 30s, timeout: 1s, passive_fall: 0 }", "");
    yaml = yaml.replace("servers: [a]", "servers: [a, gone]");
    yaml.push_str(&format!("  gone: {{ address: {dead} }}\n"));
    let proxy = Proxy::start(&yaml);
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for i in 0..10 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = conn.request(method, "/", &[], b"x").await.unwrap();
        assert_eq!(r.status, 200, "{method} was retried on the live server");
    }
    assert_eq!(a.hits(), 10);
}

#[test]
fn a_hundred_socket_io_clients_move_off_a_killed_worker_and_broadcasts_reach_all_again() {
    let redis = Redis::start();
    let mut workers: Vec<Worker> = (1..=3)
        .map(|i| Worker::start_node(&format!("n{i}"), &redis.url()))
        .collect();
    let names: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let mut yaml = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /, backend: sockets }}\nbackends:\n  sockets: {{ balance: sticky, servers: [{}], timeouts: {{ server: 60s }} }}\n\
         health: {FAST_CHECKS}\nservers:\n",
        names.join(", ")
    );
    for w in &workers {
        yaml.push_str(&format!("  {}: {{ address: {} }}\n", w.id, w.addr));
    }
    let proxy = Proxy::start(&yaml);
    let mut args = tls_target(&proxy).to_vec();
    args.extend(["--clients", "100", "--addresses", "10", "--rooms", "10"].map(String::from));
    let mut clients = HeldClients::start(&args, Duration::from_secs(60));
    let held = clients.wait_held(Duration::from_secs(40));
    // Kill the worker with the most clients.
    let per: HashMap<String, u64> = serde_json::from_value(held["perWorker"].clone()).expect("per worker");
    assert_eq!(per.values().sum::<u64>(), 100, "{held}");
    let (victim, on_victim) = per
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| (k.clone(), *n))
        .expect("a worker");
    workers.iter_mut().find(|w| w.id == victim).expect("victim").kill();
    let report = clients.release_and_finish(Duration::from_secs(60));
    assert_eq!(report["rejoined"], 100, "{report}");
    let after: HashMap<String, u64> = serde_json::from_value(report["perWorker"].clone()).expect("per worker");
    assert_eq!(after.values().sum::<u64>(), 100, "{report}");
    assert!(!after.contains_key(&victim), "nobody on the killed worker: {report}");
    assert!(report["reconnects"].as_u64().unwrap_or(0) >= on_victim, "{report}");
    assert_eq!(
        report["broadcasts"]["received"], 100,
        "every member got its room's broadcast: {report}"
    );
    // Reconnection is quick: the client's delay is 200 ms to 1 s.
    let released = report["phases"]["released"].as_u64().unwrap_or(0);
    let rejoined = report["phases"]["rejoined"].as_u64().unwrap_or(u64::MAX);
    assert!(
        rejoined - released < 5000,
        "rejoined {}ms after the kill: {report}",
        rejoined - released
    );
    drop(proxy);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_keeps_an_open_websocket_flowing_while_new_sessions_go_elsewhere_and_maint_closes_it() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::builder(&body(&[&a, &b], FAST_CHECKS, ""))
        .stats_auth("admin", "pw")
        .start();
    // Open WebSockets until one lands on b.
    let mut on_b = None;
    for _ in 0..10 {
        let mut ws = client::websocket(&proxy.plain(), "/ws").await.unwrap();
        if ws.next().await.unwrap().unwrap().into_text().unwrap().as_str() == "hello from b" {
            on_b = Some(ws);
            break;
        }
    }
    let mut ws = on_b.expect("a websocket on b");
    let r = proxy.admin("/admin/servers/b/state", r#"{"state":"drain"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(proxy.server_stats("api", "b").await["status"], "DRAIN");
    // New sessions go to a, HTTP and WebSocket alike...
    let b_hits = b.hits();
    for _ in 0..20 {
        assert_eq!(
            client::get(&proxy.plain(), "/").await.unwrap().header("x-server"),
            Some("a")
        );
    }
    let mut fresh = client::websocket(&proxy.plain(), "/ws").await.unwrap();
    assert_eq!(
        fresh.next().await.unwrap().unwrap().into_text().unwrap().as_str(),
        "hello from a"
    );
    assert_eq!(b.hits(), b_hits);
    // ...while the open one on b keeps flowing.
    for i in 0..10 {
        ws.send(Message::Text(format!("d{i}").into())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("d{i}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // MAINT: nothing goes there, and its open tunnel is closed with a close frame.
    let r = proxy.admin("/admin/servers/b/state", r#"{"state":"maint"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(client::close_code(&mut ws, Duration::from_secs(3)).await, Some(1001));
    // The server's end of the tunnel was closed first; its socket task notices at once.
    let gone = crate::harness::eventually(Duration::from_secs(1), async || b.open_websockets() == 0).await;
    assert!(gone, "b still holds {} WebSockets", b.open_websockets());
    let _ = fresh.close(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_weight_change_takes_effect_at_once() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::builder(&body(&[&a, &b], FAST_CHECKS, ""))
        .stats_auth("admin", "pw")
        .start();
    let r = proxy.admin("/admin/servers/a/weight", r#"{"weight":3}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..400 {
        conn.get("/").await.unwrap();
    }
    assert_eq!((a.hits() - a0, b.hits() - b0), (300, 100));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_refuses_at_once() {
    let a = Backend::start("a");
    let yaml = body(&[&a], FAST_CHECKS, "timeouts: { queue: 5s }\n")
        .replace("servers: [a] }", "servers: [a], max_queue: 1 }")
        .replace(
            &format!("address: {} }}", a.addr),
            &format!("address: {}, max_connections: 1 }}", a.addr),
        );
    let proxy = Proxy::start(&yaml);
    let (t1, t2) = (proxy.plain(), proxy.plain());
    let slow = tokio::spawn(async move { client::get(&t1, "/slow/1500").await.map(|r| r.status) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = tokio::spawn(async move { client::get(&t2, "/").await.map(|r| r.status) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("queue full"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    assert_eq!(
        queued.await.unwrap().unwrap(),
        200,
        "the queued one was served when the slot freed"
    );
    assert_eq!(proxy.backend_stats("api").await["queue_full"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn least_conn_sends_new_requests_to_the_server_with_fewer_open() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(
        &body(&[&a, &b], FAST_CHECKS, "").replace("{ servers: [a, b] }", "{ balance: least_conn, servers: [a, b] }"),
    );
    let t = proxy.plain();
    // While one slow request is open on one server, quick ones all go to the other.
    let slow = tokio::spawn(async move {
        client::get(&t, "/slow/1500")
            .await
            .map(|r| r.header("x-server").map(str::to_string))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = if a.hits() == 1 { "a" } else { "b" };
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for _ in 0..10 {
        let r = conn.get("/").await.unwrap();
        assert_ne!(
            r.header("x-server"),
            Some(busy),
            "a request went to the server with one open"
        );
    }
    assert_eq!(slow.await.unwrap().unwrap().as_deref(), Some(busy));
}
