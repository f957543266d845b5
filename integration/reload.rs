//! Hot reload on SIGHUP: nothing in flight is dropped, a bad file changes nothing, a
//! removed server drains, certificates rotate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::load::{echoing_websockets, steady_load};
use crate::harness::node::HeldClients;
use crate::harness::redis::Redis;
use crate::harness::worker::Worker;
use crate::harness::{Backend, Proxy, api_body, certs, client};

/// sessions_total of every backend and (backend, server) the stats list now.
async fn totals(proxy: &Proxy) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for b in proxy.stats().await["backends"].as_array().cloned().unwrap_or_default() {
        let name = b["name"].as_str().unwrap_or("?").to_string();
        out.insert(name.clone(), b["counters"]["sessions_total"].as_u64().unwrap_or(0));
        for s in b["servers"].as_array().cloned().unwrap_or_default() {
            let key = format!("{name}/{}", s["name"].as_str().unwrap_or("?"));
            out.insert(key, s["counters"]["sessions_total"].as_u64().unwrap_or(0));
        }
    }
    out
}

/// Config body number `k` of the storm: w5 in every other one, w1's weight cycling.
fn storm_body(k: usize, api: &[Backend], nodes: &[Worker]) -> String {
    let mut names: Vec<&str> = api.iter().take(4).map(|b| b.name.as_str()).collect();
    if k % 2 == 1 {
        names.push(api[4].name.as_str());
    }
    let node_names: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let mut y = format!(
        "access_log: false\nroutes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [{}] }}\n  sockets: {{ balance: sticky, servers: [{}], timeouts: {{ server: 60s }} }}\n\
         health: {{ interval: 500ms, timeout: 300ms }}\nservers:\n",
        names.join(", "),
        node_names.join(", ")
    );
    for (i, b) in api.iter().enumerate() {
        if names.contains(&b.name.as_str()) {
            let weight = if i == 0 { 1 + k % 3 } else { 1 };
            y.push_str(&format!("  {}: {{ address: {}, weight: {weight} }}\n", b.name, b.addr));
        }
    }
    for n in nodes {
        y.push_str(&format!("  {}: {{ address: {} }}\n", n.id, n.addr));
    }
    y
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_reloads_under_load_drop_no_request_and_no_websocket() {
    let api: Vec<Backend> = (1..=5).map(|i| Backend::start(&format!("w{i}"))).collect();
    let redis = Redis::start();
    let nodes: Vec<Worker> = (1..=2)
        .map(|i| Worker::start_node(&format!("n{i}"), &redis.url()))
        .collect();
    // Certificates the test rotates in place: A (the shared test CA) now, B later.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("edge.crt"), dir.path().join("edge.key"));
    std::fs::copy(&certs().cert, &cert).unwrap();
    std::fs::copy(&certs().key, &key).unwrap();
    let other = edgepin::certs::generate(&dir.path().join("b")).unwrap();

    let proxy = Proxy::builder(&storm_body(0, &api, &nodes))
        .drain_timeout("60s")
        .tls_files(&cert, &key)
        .start();
    let url = format!("http://127.0.0.1:{}", proxy.http.port());
    let polling = [
        "--url",
        &url,
        "--clients",
        "20",
        "--addresses",
        "5",
        "--rooms",
        "4",
        "--transports",
        "polling",
    ];
    let mut clients = HeldClients::start(&polling, Duration::from_secs(90));
    clients.wait_held(Duration::from_secs(30));

    let stop = Arc::new(AtomicBool::new(false));
    let rest = steady_load(&proxy, 4, Arc::clone(&stop));
    let plain = proxy.plain();
    let sockets = echoing_websockets(&plain, "/ws", 200, Arc::clone(&stop));
    let storm = async {
        let mut expected = 1;
        for k in 1..=20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if k == 10 {
                // Valid YAML, wrong meaning: a route to a backend that does not exist.
                proxy.write_config(&storm_body(k, &api, &nodes).replace("backend: api }", "backend: nope }"));
            } else {
                proxy.write_config(&storm_body(k, &api, &nodes));
            }
            if k == 15 {
                std::fs::copy(&other.cert, &cert).unwrap();
                std::fs::copy(&other.key, &key).unwrap();
            }
            let before = Instant::now();
            let counted_before = totals(&proxy).await;
            proxy.sighup();
            if k == 10 {
                // Rejected: the old config stays; the error names the file position.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !proxy.proc.log().contains("reload rejected") {
                    assert!(Instant::now() < deadline, "no rejection logged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(proxy.generation().await, expected);
                // The stats page shows the generation and the failed reload with its error.
                let page = client::get(&proxy.stats_target(), "/").await.unwrap().text();
                assert!(
                    page.contains("\"nope\" is not defined") || page.contains("&quot;nope&quot; is not defined"),
                    "failed reload not on the page"
                );
                let reload = &proxy.stats().await["reload"];
                assert_eq!(reload["reloads_failed"], 1, "{reload}");
                assert_eq!(reload["last"]["ok"], false, "{reload}");
                assert_eq!(reload["last"]["generation"], expected, "{reload}");
            } else {
                expected += 1;
                proxy.wait_generation(expected).await;
                assert!(
                    before.elapsed() < Duration::from_secs(2),
                    "reload {k} took {:?}",
                    before.elapsed()
                );
            }
            // Counters of what stays in the config only grow.
            let counted_after = totals(&proxy).await;
            for (key, was) in &counted_before {
                if let Some(now) = counted_after.get(key) {
                    assert!(now >= was, "{key} went from {was} to {now} across reload {k}");
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        expected
    };
    let ((sent, failures, per), (echoed, ws_problems), last) = tokio::join!(rest, sockets, storm);
    let report = clients.release_and_finish(Duration::from_secs(60));

    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        ws_problems.is_empty(),
        "{} websocket problems: {:?}",
        ws_problems.len(),
        &ws_problems[..ws_problems.len().min(10)]
    );
    assert!(echoed > 200 * 50, "websockets kept echoing: {echoed}");
    assert_eq!(last, 20, "19 reloads applied, 1 rejected");
    assert!(
        per.get("w5").copied().unwrap_or(0) > 0,
        "w5 served while it was in the config: {per:?}"
    );
    let log = proxy.proc.log();
    let rejected = log.lines().find(|l| l.contains("reload rejected")).expect("rejection");
    assert!(
        rejected.contains("proxy.yaml:") && rejected.contains("\"nope\" is not defined"),
        "{rejected}"
    );
    // Polling sessions stayed on their worker through it all.
    assert_eq!(report["reconnects"], 0, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["moved"], 0, "{report}");
    assert_eq!(report["broadcasts"]["received"], 20, "{report}");
    // The rotated certificate is served to new connections.
    assert!(
        client::get(&proxy.tls().trusting(&other.ca_cert), "/").await.is_ok(),
        "new certificate in use"
    );
    assert!(
        client::get(&proxy.tls(), "/").await.is_err(),
        "old certificate no longer served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_servers_websocket_flows_until_the_drain_timeout_then_closes_cleanly() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::builder(&api_body(&[&a, &b], &[])).drain_timeout("2s").start();
    // Open WebSockets until one lands on b.
    let mut ws = None;
    for _ in 0..10 {
        let mut s = client::websocket(&proxy.plain(), "/ws").await.unwrap();
        let hello = s.next().await.unwrap().unwrap().into_text().unwrap();
        if hello.as_str() == "hello from b" {
            ws = Some(s);
            break;
        }
    }
    let mut ws = ws.expect("a websocket on b");
    proxy.write_config(&api_body(&[&a], &[]));
    proxy.sighup();
    proxy.wait_generation(2).await;
    let removed_at = Instant::now();
    // New traffic avoids b at once.
    for _ in 0..10 {
        assert_eq!(
            client::get(&proxy.plain(), "/").await.unwrap().header("x-server"),
            Some("a")
        );
    }
    // The open tunnel keeps flowing until the drain timeout...
    let mut echoed = 0;
    let close = loop {
        assert!(removed_at.elapsed() < Duration::from_secs(6), "tunnel never closed");
        if ws.send(Message::Text(format!("m{echoed}").into())).await.is_err() {
            break None;
        }
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                assert_eq!(t.as_str(), format!("m{echoed}"));
                echoed += 1;
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let closed_after = removed_at.elapsed();
    assert!(echoed >= 10, "kept flowing while draining: {echoed} echoes");
    assert!(
        closed_after >= Duration::from_millis(1800),
        "closed too early: {closed_after:?}"
    );
    // ...then closes cleanly, with a close frame saying the server is going away.
    let frame = close.expect("a close frame, not a bare disconnect");
    assert_eq!(u16::from(frame.code), 1001);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_moved_to_another_address_is_served_there_and_its_old_tunnels_end() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let mut ws = client::websocket(&proxy.plain(), "/ws").await.unwrap();
    let hello = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(hello.as_str(), "hello from a");
    // Server `a` now lives at b's address: another process, which knows none of the
    // old one's sessions.
    let moved = api_body(&[&a], &[]).replace(&a.addr.to_string(), &b.addr.to_string());
    proxy.write_config(&moved);
    proxy.sighup();
    proxy.wait_generation(2).await;
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("the old address's tunnel was not closed: {other:?}"),
        }
    };
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
    for _ in 0..4 {
        let r = client::get(&proxy.plain(), "/").await.unwrap();
        assert_eq!(r.header("x-server"), Some("b"), "served at the new address");
    }
    assert!(
        proxy.proc.log().contains("server moved by reload"),
        "{}",
        proxy.proc.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_diff_shows_what_a_reload_would_change_and_edgepin_reload_applies_it() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let edgepin = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgepin"))
            .args(args)
            .arg("-c")
            .arg(&proxy.config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = edgepin(&["check", "--diff"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no changes"), "{out}");

    proxy.write_config(&api_body(&[&a, &b], &[]));
    let (code, out) = edgepin(&["check", "--diff"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("+ server b {}", b.addr)), "{out}");
    assert!(out.contains("~ backend api servers: a -> a, b"), "{out}");
    assert_eq!(proxy.generation().await, 1, "check changes nothing");

    let (code, out) = edgepin(&["reload"]);
    assert_eq!(code, Some(0), "{out}");
    proxy.wait_generation(2).await;
    let (_, out) = edgepin(&["check", "--diff"]);
    assert!(
        out.contains("no changes"),
        "the reload is now the running config: {out}"
    );

    // A stale pidfile naming some other process is refused, not signalled.
    let pidfile = proxy.config.parent().expect("config dir").join("edgepin.pid");
    let own = std::fs::read_to_string(&pidfile).expect("pidfile");
    let mut bystander = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
    std::fs::write(&pidfile, format!("{}\n", bystander.id())).expect("write pidfile");
    let (code, out) = edgepin(&["reload"]);
    let survived = bystander.try_wait().expect("try_wait").is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    std::fs::write(&pidfile, own).expect("restore pidfile");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("is not a running"), "{out}");
    assert!(survived, "the other process was not signalled");
}
