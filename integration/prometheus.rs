//! A real Prometheus (Debian's, installed by `make prometheus`) on loopback, scraping
//! edgepin's /metrics and three workers' every second, with packaging/prometheus's rules
//! loaded: every query of the Grafana dashboard (packaging/grafana/edgepin.json) parses
//! and returns data; after a worker is killed, the query behind EdgepinServerDown returns
//! that server (and its alert is pending); after Redis dies, the query behind
//! EdgepinWorkerRedisDown returns the workers left.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value as Json;

use crate::harness::redis::Redis;
use crate::harness::worker::socketio_body;
use crate::harness::{Conn, Proc, Proxy, Target, Worker, certs, client, eventually, free_port};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    #[serde(default)]
    alert: Option<String>,
    expr: String,
}

/// The expression of alert `name` in the shipped rules.
fn alert_expr(name: &str) -> String {
    let text = std::fs::read_to_string(repo("packaging/prometheus/edgepin.rules.yml")).expect("rules file");
    let rules: RuleFile = serde_saphyr::from_str(&text).expect("rules YAML");
    rules
        .groups
        .into_iter()
        .flat_map(|g| g.rules)
        .find(|r| r.alert.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no alert {name}"))
        .expr
}

/// Percent-encoding of a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query: `Ok(result)` (the list of samples) or `Err(what Prometheus said)`.
async fn query(prometheus: SocketAddr, expr: &str) -> Result<Vec<Json>, String> {
    let path = format!("/api/v1/query?query={}", encode(expr));
    let r = client::get(&Target::plain(prometheus), &path)
        .await
        .map_err(|e| e.to_string())?;
    let body = r.json();
    if body["status"] != "success" {
        return Err(format!("{} {}", r.status, body));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The value of `label` in each sample.
fn labels(samples: &[Json], label: &str) -> Vec<String> {
    let mut v: Vec<String> = samples
        .iter()
        .filter_map(|s| s["metric"][label].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Every query of the Grafana dashboard, as Grafana would send it with every variable
/// at "All": panel targets (rows included) and the variables' `label_values(metric,
/// label)`, read as `count by (label) (metric)`.
fn dashboard_queries(dashboard: &Json, rate_interval: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Json> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            let title = panel["title"].as_str().unwrap_or("?");
            out.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let Some(q) = v["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .expect("variables are label_values(metric, label)");
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let name = v["name"].as_str().unwrap_or("?");
        out.push((
            format!("variable {name}"),
            format!("count by ({}) ({metric})", label.trim()),
        ));
    }
    out.into_iter()
        .map(|(what, e)| {
            let e = e
                .replace("$__rate_interval", rate_interval)
                .replace("$instance", ".*")
                .replace("$backend", ".*")
                .replace("$worker", ".*");
            assert!(!e.contains('$'), "{what}: a variable this test does not know: {e}");
            (what, e)
        })
        .collect()
}

/// Prometheus on a free loopback port with its own data directory, scraping `edgepin`
/// and `workers` every second and evaluating the shipped rules every second.
fn start_prometheus(dir: &Path, edgepin: SocketAddr, workers: &[SocketAddr]) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let targets: Vec<String> = workers.iter().map(|w| format!("'{w}'")).collect();
    let config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
         rule_files: ['{}']\n\
         scrape_configs:\n\
         \x20 - {{ job_name: edgepin, static_configs: [{{ targets: ['{edgepin}'] }}] }}\n\
         \x20 - {{ job_name: edgepin-worker, static_configs: [{{ targets: [{}] }}] }}\n",
        repo("packaging/prometheus/edgepin.rules.yml").display(),
        targets.join(", ")
    );
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).expect("prometheus.yml");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", file.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let mut proc = Proc::spawn("prometheus", cmd, dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::harness::blocking_get(addr, "/-/ready").is_none_or(|(s, _)| s != 200) {
        assert!(proc.alive(), "prometheus exited:\n{}", proc.log_tail(20));
        assert!(
            Instant::now() < deadline,
            "prometheus not ready:\n{}",
            proc.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (proc, addr)
}

/// Traffic of every kind the dashboard shows: REST, WebSockets from several addresses,
/// and Engine.IO polling with a known and an unknown sid, until `stop`.
async fn traffic(proxy_plain: Target, stop: Arc<AtomicBool>) {
    let mut sockets = Vec::new();
    for i in 0..6 {
        let t = proxy_plain.clone().from(&format!("127.0.2.{}", 10 + i));
        if let Ok(ws) = client::websocket(&t, "/socket.io/?EIO=4&transport=websocket").await {
            sockets.push(ws);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn = Conn::open(&proxy_plain).await.ok();
    let mut n = 0u64;
    while !stop.load(Relaxed) && Instant::now() < deadline {
        n += 1;
        let path = match n % 10 {
            0 => "/socket.io/?EIO=4&transport=polling&sid=unknown-sid-0000".to_string(),
            _ => "/api/whoami".to_string(),
        };
        match conn.as_mut() {
            Some(c) => {
                if c.get(&path).await.is_err() {
                    conn = None;
                }
            }
            None => conn = Conn::open(&proxy_plain).await.ok(),
        }
        if n.is_multiple_of(25) {
            // A polling handshake, then a request on its sid (a sid-table hit).
            if let Ok(r) = client::get(&proxy_plain, "/socket.io/?EIO=4&transport=polling").await {
                let text = r.text();
                if let Some(sid) = text.split("\"sid\":\"").nth(1).and_then(|s| s.split('"').next()) {
                    let _ = client::get(&proxy_plain, &format!("/socket.io/?EIO=4&transport=polling&sid={sid}")).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for mut ws in sockets {
        let _ = tokio::time::timeout(Duration::from_millis(10), ws.next()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_edgepin_and_workers_and_every_dashboard_query_returns_data() {
    let started = Instant::now();
    let mut redis = Redis::start();
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|w| Worker::start(w, &redis.url()))
        .collect();
    let body = socketio_body(&workers, "");
    // A certificate from files, and an ACME one whose directory nobody answers (on a
    // closed loopback port): its renewal fails, so the ACME panels have data too.
    let dir = tempfile::Builder::new()
        .prefix("edgepin-prometheus-")
        .tempdir()
        .expect("temp dir");
    let c = certs();
    let tls = format!(
        "{{ cert: {}, key: {}, acme: {{ domains: [a.acme.test], directory: \"https://127.0.0.1:{}/dir\", storage: {} }} }}",
        c.cert.display(),
        c.key.display(),
        free_port(),
        dir.path().join("acme").display()
    );
    let proxy = Proxy::builder(&body).tls_yaml(&tls).start();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(proxy.plain(), Arc::clone(&stop)));

    let worker_addrs: Vec<SocketAddr> = workers.iter().map(|w| w.addr).collect();
    let (mut prometheus, prom) = start_prometheus(dir.path(), proxy.stats, &worker_addrs);
    let scraped = eventually(Duration::from_secs(30), async || {
        let up = query(prom, "up == 1").await.unwrap_or_default();
        // Two scrapes of each target at least, so rates have data.
        let counted = query(prom, "count_over_time(up[10s]) >= 3").await.unwrap_or_default();
        up.len() == 4 && counted.len() == 4
    })
    .await;
    assert!(scraped, "every target scraped:\n{}", prometheus.log_tail(20));

    // Every dashboard query parses and has data.
    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(repo("packaging/grafana/edgepin.json")).expect("dashboard"))
            .expect("dashboard JSON");
    let queries = dashboard_queries(&dashboard, "10s");
    assert!(queries.len() >= 40, "{} queries", queries.len());
    let mut empty = Vec::new();
    let all_data = eventually(Duration::from_secs(20), async || {
        empty.clear();
        for (what, expr) in &queries {
            match query(prom, expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => empty.push(format!("{what}: no data: {expr}")),
                Err(e) => panic!("{what}: {expr} does not run: {e}"),
            }
        }
        empty.is_empty()
    })
    .await;
    assert!(all_data, "dashboard queries without data:\n{}", empty.join("\n"));
    let p99 = query(
        prom,
        "instance_proxy:edgepin_backend_http_request_duration_seconds:p99_rate5m{proxy=\"api\"}",
    )
    .await
    .expect("recording rule");
    let p99: f64 = p99[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    assert!(p99 > 0.0 && p99 < 5.0, "a p99 from the histogram: {p99}");

    // A worker dies: the query behind EdgepinServerDown names it, and only it.
    let down_expr = alert_expr("EdgepinServerDown");
    assert!(
        query(prom, &down_expr).await.expect("alert query").is_empty(),
        "nothing DOWN yet"
    );
    workers[1].kill();
    let mut found = Vec::new();
    let named = eventually(Duration::from_secs(20), async || {
        found = labels(&query(prom, &down_expr).await.unwrap_or_default(), "server");
        found == ["w2"]
    })
    .await;
    assert!(named, "{down_expr} returns w2 only: {found:?}");
    let pending = eventually(Duration::from_secs(10), async || {
        let alerts = query(prom, "ALERTS{alertname=\"EdgepinServerDown\", alertstate=\"pending\"}")
            .await
            .unwrap_or_default();
        labels(&alerts, "server") == ["w2"]
    })
    .await;
    assert!(pending, "the rule loaded into Prometheus holds w2 pending (for: 1m)");

    // Redis dies: the workers left say so, and EdgepinWorkerRedisDown's query names them.
    redis.kill();
    let redis_expr = alert_expr("EdgepinWorkerRedisDown");
    let w1w3 = vec![workers[0].addr.to_string(), workers[2].addr.to_string()];
    let mut lost = Vec::new();
    let told = eventually(Duration::from_secs(20), async || {
        lost = labels(&query(prom, &redis_expr).await.unwrap_or_default(), "instance");
        let mut want = w1w3.clone();
        want.sort();
        lost == want
    })
    .await;
    assert!(told, "{redis_expr} returns the live workers: {lost:?}");

    stop.store(true, Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), load).await;
    prometheus.stop();
    eprintln!(
        "{} dashboard queries checked; test {:.1} s",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
}
