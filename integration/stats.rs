//! The stats listener end to end: the dashboard in a real browser, Prometheus text read
//! by a real parser, JSON/CSV/page agreement, counters across reloads, basic auth, and
//! admin actions (CSRF-checked forms, JSON with basic auth).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::browser::{self, Browser};
use crate::harness::client::Response;
use crate::harness::{Backend, Conn, Proxy, Target, client, eventually};

const PASSWORD_ENV: &str = "EDGEPIN_TEST_STATS_PASSWORD";
const PASSWORD: &str = "correct-horse-battery-staple";

/// Backends `api` (round robin) and `sockets` (sticky, WebSocket route) over `servers`,
/// with quick health checks so a killed server is DOWN within a second or two.
fn body(servers: &[&Backend], extra: &str) -> String {
    let names: Vec<&str> = servers.iter().map(|b| b.name.as_str()).collect();
    let list = names.join(", ");
    let mut y = format!(
        "routes:\n  - {{ path_prefix: /socket.io/, backend: sockets, websocket: true }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [{list}] }}\n  sockets: {{ balance: sticky, servers: [{list}] }}\nservers:\n"
    );
    for b in servers {
        y.push_str(&format!("  {}: {{ address: {} }}\n", b.name, b.addr));
    }
    y.push_str("health: { interval: 300ms, timeout: 200ms, rise: 1, fall: 1 }\n");
    y.push_str(extra);
    y
}

fn with_auth() -> String {
    format!("stats: {{ auth: {{ user: admin, password_env: {PASSWORD_ENV} }} }}\n")
}

/// Start with stats auth, once every server passed its first check (so no check result
/// replaces the reason an admin action gives).
async fn start_with_auth(servers: &[&Backend]) -> Proxy {
    let proxy = Proxy::builder(&body(servers, &with_auth()))
        .env(PASSWORD_ENV, PASSWORD)
        .start();
    let checked = eventually(Duration::from_secs(10), async || {
        let stats = stats_json(&proxy, Some(("admin", PASSWORD))).await;
        stats["backends"][0]["servers"]
            .as_array()
            .is_some_and(|ss| ss.iter().all(|s| s["health"] == "UP"))
    })
    .await;
    assert!(checked, "every server checked UP");
    proxy
}

fn basic(user: &str, password: &str) -> String {
    format!("Authorization: {}", crate::harness::basic_auth(user, password))
}

/// GET `path` on the stats listener, with credentials when given.
async fn stats_get(proxy: &Proxy, path: &str, auth: Option<(&str, &str)>) -> Response {
    let headers: Vec<String> = auth.map(|(u, p)| basic(u, p)).into_iter().collect();
    Conn::open(&proxy.stats_target())
        .await
        .expect("connect to stats")
        .request("GET", path, &headers, b"")
        .await
        .expect("stats answer")
}

/// POST to the stats listener as `admin` with the right password.
async fn stats_post(proxy: &Proxy, path: &str, content_type: &str, extra: &[&str], body: &str) -> Response {
    let mut headers = vec![basic("admin", PASSWORD), format!("Content-Type: {content_type}")];
    headers.extend(extra.iter().map(|h| h.to_string()));
    Conn::open(&proxy.stats_target())
        .await
        .expect("connect to stats")
        .request("POST", path, &headers, body.as_bytes())
        .await
        .expect("stats answer")
}

/// POST JSON to the stats listener without credentials.
async fn post_json_without_credentials(proxy: &Proxy, path: &str, body: &str) -> Response {
    Conn::open(&proxy.stats_target())
        .await
        .expect("connect to stats")
        .request(
            "POST",
            path,
            &["Content-Type: application/json".into()],
            body.as_bytes(),
        )
        .await
        .expect("stats answer")
}

async fn stats_json(proxy: &Proxy, auth: Option<(&str, &str)>) -> serde_json::Value {
    let r = stats_get(proxy, "/stats.json", auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Wait until no request is in progress: the proxy counts a request's bytes and status
/// after its answer went out, so a client may see the answer before the counters move.
async fn settled(proxy: &Proxy, auth: Option<(&str, &str)>) {
    let idle = eventually(Duration::from_secs(10), async || {
        stats_json(proxy, auth).await["process"]["requests_in_flight"] == 0
    })
    .await;
    assert!(idle, "requests still in flight");
}

/// The JSON of server `server` in backend `backend`.
fn server_json<'a>(stats: &'a serde_json::Value, backend: &str, server: &str) -> &'a serde_json::Value {
    stats["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == backend))
        .and_then(|b| b["servers"].as_array())
        .and_then(|ss| ss.iter().find(|s| s["name"] == server))
        .unwrap_or_else(|| panic!("no server {backend}/{server} in {stats}"))
}

/// The opening tag of the element with `id` in `html`.
fn tag_with_id<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    Some(&html[start..=end])
}

/// An attribute of an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// `data-status` of the row with `id`.
fn row_status<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    attr(tag_with_id(html, id)?, "data-status")
}

/// The row with `id`, from its `<tr` to its `</tr>`.
fn row<'a>(html: &'a str, id: &str) -> &'a str {
    let tag = tag_with_id(html, id).unwrap_or_else(|| panic!("no row {id}"));
    let start = html.find(tag).unwrap_or(0);
    let end = start + html[start..].find("</tr>").unwrap_or(html.len() - start);
    &html[start..end]
}

/// The number in the cell of class `class` of a row: its `title` (exact bytes) if it has
/// one, else its text.
fn cell(row: &str, class: &str) -> u64 {
    let at = row
        .find(&format!("class=\"{class}\""))
        .unwrap_or_else(|| panic!("no cell {class} in {row}"));
    let start = row[..at].rfind('<').unwrap_or(0);
    let end = at + row[at..].find('>').unwrap_or(0);
    let tag = &row[start..=end];
    let text = match attr(tag, "title") {
        Some(title) => title,
        None => {
            let rest = &row[end + 1..];
            &rest[..rest.find('<').unwrap_or(rest.len())]
        }
    };
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("cell {class} is {text:?}"))
}

/// The CSV as (pxname, svname) → column → value.
fn csv_rows(text: &str) -> HashMap<(String, String), HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("csv header")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    lines
        .map(|line| {
            // Quoted cells only hold check details, which come after every number compared.
            let cells: Vec<&str> = line.split(',').collect();
            let map: HashMap<String, String> = header
                .iter()
                .zip(cells.iter())
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect();
            ((map["pxname"].clone(), map["svname"].clone()), map)
        })
        .collect()
}

/// Parse `/metrics` with a Prometheus text-format parser.
async fn scrape(proxy: &Proxy) -> prometheus_parse::Scrape {
    let r = stats_get(proxy, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4"))
    );
    let text = r.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

/// The value of `metric` with exactly these `labels` (and maybe others).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric}{labels:?}"));
    match found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric} is {other:?}"),
    }
}

fn is_counter(scrape: &prometheus_parse::Scrape, metric: &str) -> bool {
    scrape
        .samples
        .iter()
        .any(|s| s.metric == metric && matches!(s.value, prometheus_parse::Value::Counter(_)))
}

async fn get_ok(target: &Target, path: &str, n: usize) {
    let mut conn = Conn::open(target).await.expect("connect");
    for _ in 0..n {
        assert_eq!(conn.get(path).await.expect("answer").status, 200);
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium_lists_every_server_and_shows_a_killed_one_down_after_refresh() {
    let (b0, mut b1, b2) = (Backend::start("b0"), Backend::start("b1"), Backend::start("b2"));
    let proxy = Proxy::start(&body(&[&b0, &b1, &b2], ""));
    get_ok(&proxy.tls(), "/hello", 12).await;
    let mut ws = client::websocket(&proxy.tls(), "/socket.io/?EIO=4&transport=websocket")
        .await
        .expect("websocket through the proxy");
    assert!(ws.next().await.is_some(), "hello from the backend");

    let url = format!("http://{}/?refresh=1", proxy.stats);
    let page = Browser::open(&url);
    let ids: Vec<String> = ["api", "sockets"]
        .iter()
        .flat_map(|b| ["b0", "b1", "b2"].map(|s| format!("server-{b}-{s}")))
        .collect();
    let mut first_load = None;
    let all_up = eventually(Duration::from_secs(15), async || {
        let Some(dom) = page.dom().await else { return false };
        let up = dom.contains("id=\"backend-api\"")
            && dom.contains("id=\"backend-sockets\"")
            && ids.iter().all(|id| row_status(&dom, id) == Some("UP"));
        if up {
            first_load = page.eval("performance.timeOrigin").await;
        }
        up && first_load.is_some()
    })
    .await;
    assert!(all_up, "every server UP in the page:\n{}", page.log_tail(20));
    let dom = page.dom().await.unwrap_or_default();
    assert!(dom.contains("<meta http-equiv=\"refresh\" content=\"1\">"));
    assert!(cell(row(&dom, "frontend-https"), "stot") >= 1, "connections counted");

    b1.kill();
    let mut last = String::new();
    let down = eventually(Duration::from_secs(20), async || {
        let Some(dom) = page.dom().await else { return false };
        let reloaded = page.eval("performance.timeOrigin").await;
        last = dom;
        reloaded.is_some()
            && reloaded != first_load
            && row_status(&last, "server-api-b1") == Some("DOWN")
            && row_status(&last, "server-sockets-b1") == Some("DOWN")
            && row_status(&last, "admin-b1") == Some("DOWN")
    })
    .await;
    assert!(down, "b1 DOWN after the page refreshed itself; last DOM:\n{last}");
    for id in [
        "server-api-b0",
        "server-api-b2",
        "server-sockets-b0",
        "server-sockets-b2",
    ] {
        assert_eq!(row_status(&last, id), Some("UP"), "{id}");
    }
    assert!(
        row(&last, "server-api-b1").contains("L4CON"),
        "the failed check is shown"
    );

    let shot = screenshot_path("stats-dashboard.png");
    browser::screenshot(&format!("http://{}/?refresh=0", proxy.stats), &shot, (1400, 1000));
    let _ = ws.send(Message::Close(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_counters_move_with_traffic() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&body(&[&a, &b], ""));
    let before = scrape(&proxy).await;
    for metric in [
        "edgepin_server_sessions_total",
        "edgepin_server_bytes_out_total",
        "edgepin_server_check_up_down_total",
        "edgepin_backend_redispatch_warnings_total",
        "edgepin_frontend_http_responses_total",
        "edgepin_server_websocket_tunnels_total",
    ] {
        assert!(is_counter(&before, metric), "{metric} is a counter");
    }
    assert!(!is_counter(&before, "edgepin_server_current_sessions"), "a gauge");
    let api_a = [("proxy", "api"), ("server", "a")];
    assert_eq!(
        sample(
            &before,
            "edgepin_server_status",
            &[("proxy", "api"), ("server", "a"), ("state", "UP")]
        ),
        1.0
    );
    let sessions_a = sample(&before, "edgepin_server_sessions_total", &api_a);
    let responses = sample(
        &before,
        "edgepin_backend_http_responses_total",
        &[("proxy", "api"), ("code", "2xx")],
    );
    let requests = sample(&before, "edgepin_frontend_http_requests_total", &[("proxy", "https")]);

    get_ok(&proxy.tls(), "/x", 10).await;
    settled(&proxy, None).await;
    let after = scrape(&proxy).await;
    assert_eq!(
        sample(&after, "edgepin_server_sessions_total", &api_a),
        sessions_a + 5.0,
        "round robin: 5 of 10"
    );
    assert_eq!(
        sample(
            &after,
            "edgepin_backend_http_responses_total",
            &[("proxy", "api"), ("code", "2xx")]
        ),
        responses + 10.0
    );
    assert_eq!(
        sample(&after, "edgepin_frontend_http_requests_total", &[("proxy", "https")]),
        requests + 10.0
    );
    assert!(sample(&after, "edgepin_server_bytes_out_total", &api_a) > 0.0);

    let mut ws = client::websocket(&proxy.tls(), "/socket.io/?EIO=4&transport=websocket")
        .await
        .expect("websocket");
    assert!(ws.next().await.is_some());
    ws.send(Message::Text("ping".into())).await.expect("send");
    assert!(ws.next().await.is_some(), "echo");
    let during = scrape(&proxy).await;
    assert_eq!(
        sample(
            &during,
            "edgepin_backend_websocket_tunnels_current",
            &[("proxy", "sockets")]
        ),
        1.0
    );
    assert_eq!(sample(&during, "edgepin_process_current_tunnels", &[]), 1.0);
    assert_eq!(
        sample(
            &during,
            "edgepin_backend_sticky_decisions_total",
            &[("proxy", "sockets"), ("decision", "hash")]
        ),
        1.0
    );
    assert!(sample(&during, "edgepin_process_resident_memory_bytes", &[]) > 1e6);

    ws.send(Message::Close(None)).await.expect("close");
    drop(ws);
    let closed = eventually(Duration::from_secs(10), async || {
        let s = scrape(&proxy).await;
        sample(&s, "edgepin_backend_websocket_tunnels_current", &[("proxy", "sockets")]) == 0.0
            && sample(&s, "edgepin_backend_websocket_bytes_in_total", &[("proxy", "sockets")]) > 0.0
            && sample(&s, "edgepin_backend_websocket_bytes_out_total", &[("proxy", "sockets")]) > 0.0
    })
    .await;
    assert!(closed, "the closed tunnel's bytes are counted per direction");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_csv_metrics_and_page_hold_the_same_numbers() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&body(&[&a, &b], ""));
    get_ok(&proxy.tls(), "/one", 7).await;
    get_ok(&proxy.plain(), "/two", 4).await;
    let nothing = client::get(&proxy.tls(), "/socket.io/?EIO=4&transport=polling")
        .await
        .expect("poll");
    assert_eq!(nothing.status, 200);

    settled(&proxy, None).await;
    let json = stats_json(&proxy, None).await;
    let csv = csv_rows(&stats_get(&proxy, "/stats.csv", None).await.text());
    let page = stats_get(&proxy, "/", None).await.text();
    let metrics = scrape(&proxy).await;
    for (backend, server) in [("api", "a"), ("api", "b"), ("sockets", "a"), ("sockets", "b")] {
        let j = &server_json(&json, backend, server)["counters"];
        let c = &csv[&(backend.to_string(), server.to_string())];
        let r = row(&page, &format!("server-{backend}-{server}"));
        let labels = [("proxy", backend), ("server", server)];
        for (csv_name, json_value, metric) in [
            ("stot", &j["sessions_total"], "edgepin_server_sessions_total"),
            ("bout", &j["bytes_out"], "edgepin_server_bytes_out_total"),
            ("bin", &j["bytes_in"], "edgepin_server_bytes_in_total"),
        ] {
            let v = json_value.as_u64().expect("a number");
            assert_eq!(c[csv_name], v.to_string(), "{backend}/{server} {csv_name} CSV vs JSON");
            assert_eq!(cell(r, csv_name), v, "{backend}/{server} {csv_name} page vs JSON");
            assert_eq!(
                sample(&metrics, metric, &labels),
                v as f64,
                "{backend}/{server} {metric}"
            );
        }
        let ok = j["responses"]["r2xx"].as_u64().expect("2xx");
        assert_eq!(c["hrsp_2xx"], ok.to_string());
        assert_eq!(cell(r, "hrsp_2xx"), ok);
    }
    let api_total: u64 = ["a", "b"]
        .iter()
        .map(|s| {
            server_json(&json, "api", s)["counters"]["sessions_total"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(api_total, 11, "7 over TLS and 4 over plain http");
    for listener in ["https", "http"] {
        let f = json["frontends"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == listener))
            .expect("listener in JSON");
        let c = &csv[&(listener.to_string(), "FRONTEND".to_string())];
        let r = row(&page, &format!("frontend-{listener}"));
        let total = f["requests_total"].as_u64().expect("requests");
        assert_eq!(c["req_tot"], total.to_string());
        assert_eq!(cell(r, "req_tot"), total);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_survive_reloads_and_the_page_shows_the_last_outcome() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&body(&[&a, &b], ""));
    get_ok(&proxy.plain(), "/", 20).await;
    settled(&proxy, None).await;
    let before = stats_json(&proxy, None).await;
    assert_eq!(server_json(&before, "api", "a")["counters"]["sessions_total"], 10);

    // An applied reload: a third server joins (without slow start, so that the next 30
    // requests split exactly); a and b keep their counters.
    let c = Backend::start("c");
    proxy.write_config(&body(&[&a, &b, &c], "").replace("api: { servers:", "api: { slow_start: 0s, servers:"));
    proxy.sighup();
    assert!(
        eventually(Duration::from_secs(10), async || proxy.status().await["generation"]
            == 2)
        .await,
        "reload applied"
    );
    let after = stats_json(&proxy, None).await;
    assert_eq!(after["process"]["generation"], 2);
    assert_eq!(after["reload"]["last"]["ok"], true);
    for s in ["a", "b"] {
        for counter in ["sessions_total", "bytes_out", "responses"] {
            assert_eq!(
                server_json(&after, "api", s)["counters"][counter],
                server_json(&before, "api", s)["counters"][counter],
                "{s} keeps {counter} across the reload"
            );
        }
    }
    assert_eq!(server_json(&after, "api", "c")["counters"]["sessions_total"], 0);
    get_ok(&proxy.plain(), "/", 30).await;
    settled(&proxy, None).await;
    let grown = stats_json(&proxy, None).await;
    assert_eq!(
        server_json(&grown, "api", "a")["counters"]["sessions_total"],
        20,
        "counting on"
    );

    // A rejected reload: the running config stays and the page says why.
    let broken = body(&[&a, &b, &c], "").replace("backend: api }", "backend: nowhere }");
    proxy.write_config(&broken);
    proxy.sighup();
    assert!(
        eventually(Duration::from_secs(10), async || {
            stats_json(&proxy, None).await["reload"]["reloads_failed"] == 1
        })
        .await,
        "the failed reload is counted"
    );
    let failed = stats_json(&proxy, None).await;
    assert_eq!(failed["process"]["generation"], 2);
    assert_eq!(failed["reload"]["last"]["ok"], false);
    let message = failed["reload"]["last"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("nowhere"), "{message}");
    let page = stats_get(&proxy, "/", None).await.text();
    assert!(page.contains("FAILED"));
    assert!(
        page.contains("backend \"nowhere\"") || page.contains("backend &quot;nowhere&quot;"),
        "{message}"
    );
    let metrics = scrape(&proxy).await;
    assert_eq!(
        sample(&metrics, "edgepin_process_reloads_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(sample(&metrics, "edgepin_process_last_reload_success", &[]), 0.0);
    assert_eq!(
        sample(
            &metrics,
            "edgepin_server_sessions_total",
            &[("proxy", "api"), ("server", "a")]
        ),
        20.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_auth_answers_401_without_or_with_wrong_credentials() {
    let a = Backend::start("a");
    let proxy = start_with_auth(&[&a]).await;
    // Each path from its own address: two wrong attempts per path would otherwise add up
    // to a lockout of one address (wrong_passwords_lock_out_that_address_only).
    for (i, path) in ["/", "/stats.json", "/stats.csv", "/metrics"].into_iter().enumerate() {
        let from = format!("127.0.0.{}", 11 + i);
        let none = stats_get(&proxy, path, None).await;
        assert_eq!(none.status, 401, "{path} without credentials");
        assert!(
            none.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Basic realm="))
        );
        assert_eq!(
            stats_get_from(&proxy, &from, path, ("admin", "wrong")).await.status,
            401,
            "{path}"
        );
        assert_eq!(
            stats_get_from(&proxy, &from, path, ("root", PASSWORD)).await.status,
            401,
            "{path}"
        );
        assert_eq!(
            stats_get(&proxy, path, Some(("admin", PASSWORD))).await.status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        stats_get(&proxy, "/health", None).await.status,
        200,
        "probes need no password"
    );
    let log = proxy.proc.log();
    assert!(!log.contains(PASSWORD), "the password is never logged");
}

/// The CSRF token in the page's admin forms.
fn csrf_token(page: &str) -> String {
    let key = "name=\"csrf\" value=\"";
    let at = page.find(key).expect("an admin form") + key.len();
    page[at..at + page[at..].find('"').unwrap_or(0)].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_form_without_csrf_token_is_403_and_with_it_drain_sends_new_traffic_elsewhere() {
    let (a, b, c) = (Backend::start("a"), Backend::start("b"), Backend::start("c"));
    let proxy = start_with_auth(&[&a, &b, &c]).await;
    let page = stats_get(&proxy, "/", Some(("admin", PASSWORD))).await.text();
    assert!(page.contains("action=\"/admin/servers/a/state\""));
    let token = csrf_token(&page);
    let form = "application/x-www-form-urlencoded";
    let path = "/admin/servers/a/state";
    let ours = "Origin: http://localhost";

    let r = stats_post(&proxy, path, form, &[ours], "state=drain").await;
    assert_eq!(r.status, 403, "no token: {}", r.text());
    let r = stats_post(&proxy, path, form, &[ours], &format!("state=drain&csrf={token}A")).await;
    assert_eq!(r.status, 403, "wrong token");
    let r = stats_post(
        &proxy,
        path,
        form,
        &["Origin: http://evil.test"],
        &format!("state=drain&csrf={token}"),
    )
    .await;
    assert_eq!(r.status, 403, "another site's form");
    assert_eq!(
        server_json(&stats_json(&proxy, Some(("admin", PASSWORD))).await, "api", "a")["admin"],
        "READY"
    );

    let r = stats_post(&proxy, path, form, &[ours], &format!("state=drain&csrf={token}")).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/"));
    let stats = stats_json(&proxy, Some(("admin", PASSWORD))).await;
    let drained = server_json(&stats, "api", "a");
    assert_eq!(
        (drained["status"].as_str(), drained["admin"].as_str()),
        (Some("DRAIN"), Some("DRAIN"))
    );
    assert!(
        drained["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("by admin")
    );

    let a_before = a.hits();
    get_ok(&proxy.tls(), "/after-drain", 30).await;
    assert_eq!(a.hits(), a_before, "a DRAIN server takes no new requests");
    assert_eq!(b.hits() + c.hits(), 30);
    let logged = proxy.proc.log();
    assert!(
        logged.contains("stats admin action action=\"state\" server=\"a\" from=Ready to=Drain user=admin"),
        "the action is logged with who and what:\n{logged}"
    );

    let page = stats_get(&proxy, "/", Some(("admin", PASSWORD))).await.text();
    assert_eq!(row_status(&page, "server-api-a"), Some("DRAIN"));
    let shot = screenshot_path("stats-dashboard-admin.png");
    browser::screenshot(
        &format!("http://admin:{PASSWORD}@{}/?refresh=0", proxy.stats),
        &shot,
        (1400, 1000),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_admin_with_basic_auth_sets_weight_and_maint() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = start_with_auth(&[&a, &b]).await;
    let json = "application/json";
    let r = stats_post(&proxy, "/admin/servers/a/weight", json, &[], r#"{"weight":3}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["previous"], 1);
    let (a0, b0) = (a.hits(), b.hits());
    get_ok(&proxy.plain(), "/weighted", 40).await;
    assert_eq!((a.hits() - a0, b.hits() - b0), (30, 10), "weights 3:1");

    let r = stats_post(&proxy, "/admin/servers/a/state", json, &[], r#"{"state":"maint"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "MAINT");
    let a1 = a.hits();
    get_ok(&proxy.plain(), "/maint", 10).await;
    assert_eq!(a.hits(), a1, "MAINT takes nothing");
    let r = stats_post(&proxy, "/admin/servers/a/state", json, &[], r#"{"state":"ready"}"#).await;
    assert_eq!(r.json()["status"], "UP");

    let no_auth = post_json_without_credentials(&proxy, "/admin/servers/a/state", r#"{"state":"drain"}"#).await;
    assert_eq!(no_auth.status, 401);
    let r = stats_post(&proxy, "/admin/servers/zz/state", json, &[], r#"{"state":"drain"}"#).await;
    assert_eq!(r.status, 404);
    let metrics = stats_get(&proxy, "/metrics", Some(("admin", PASSWORD))).await.text();
    assert!(
        metrics.contains("edgepin_server_weight{proxy=\"api\",server=\"a\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_actions_do_not_exist_without_auth() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&body(&[&a], ""));
    let r = post_json_without_credentials(&proxy, "/admin/servers/a/state", r#"{"state":"maint"}"#).await;
    assert_eq!(r.status, 404);
    let page = stats_get(&proxy, "/", None).await.text();
    assert!(!page.contains("<form"), "no admin forms");
    assert_eq!(
        server_json(&stats_json(&proxy, None).await, "api", "a")["admin"],
        "READY"
    );
}

/// GET `path` on the stats listener from source address `from`, with credentials.
async fn stats_get_from(proxy: &Proxy, from: &str, path: &str, auth: (&str, &str)) -> Response {
    Conn::open(&proxy.stats_target().from(from))
        .await
        .expect("connect to stats")
        .request("GET", path, &[basic(auth.0, auth.1)], b"")
        .await
        .expect("stats answer")
}

/// GET `path` on the stats listener with this `Host` header.
async fn stats_get_host(proxy: &Proxy, host: &str, path: &str) -> Response {
    Conn::open(&proxy.stats_target())
        .await
        .expect("connect to stats")
        .with_host(host)
        .get(path)
        .await
        .expect("stats answer")
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_cannot_starve_health_nor_cut_a_request_in_progress() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = start_with_auth(&[&a, &b]).await;

    // An admin action whose head is complete and whose body is on its way.
    let body = r#"{"state":"drain"}"#;
    let mut in_progress = tokio::net::TcpStream::connect(proxy.stats).await.expect("connect");
    let head = format!(
        "POST /admin/servers/a/state HTTP/1.1\r\nHost: localhost\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        basic("admin", PASSWORD),
        body.len()
    );
    in_progress.write_all(head.as_bytes()).await.expect("head");
    in_progress
        .write_all(&body.as_bytes()[..5])
        .await
        .expect("part of the body");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 80 connections that never send a byte: more than the listener's 64 slots.
    let mut silent = Vec::new();
    for _ in 0..80 {
        silent.push(tokio::net::TcpStream::connect(proxy.stats).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(3), client::get(&proxy.stats_target(), "/health")).await;
    let health = health
        .expect("/health answers within 3 s (the head deadline is 5 s)")
        .expect("/health answers while 80 silent connections are open");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert!(started.elapsed() < Duration::from_secs(3));

    // The oldest silent connections made room; the request in progress was not cut.
    let mut first = [0u8; 1];
    let oldest = tokio::time::timeout(Duration::from_secs(1), silent[0].read(&mut first)).await;
    assert!(
        matches!(oldest, Ok(Ok(0)) | Ok(Err(_))),
        "the connection idle the longest was closed: {oldest:?}"
    );
    in_progress
        .write_all(&body.as_bytes()[5..])
        .await
        .expect("rest of the body");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), in_progress.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""admin":"DRAIN""#), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_stats_connection_is_closed_at_the_5s_head_deadline() {
    use tokio::io::AsyncReadExt;
    let a = Backend::start("a");
    let proxy = Proxy::start(&body(&[&a], ""));
    let mut silent = tokio::net::TcpStream::connect(proxy.stats).await.expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut buf)).await;
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed, unanswered, within the 5 s deadline + 3 s margin: {read:?}"
    );
    assert!(waited >= Duration::from_secs(4), "not before the deadline: {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_answers_only_a_host_that_names_it() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&body(&[&a], ""));
    for path in ["/", "/stats.json", "/stats.csv", "/metrics"] {
        for host in ["evil.example", "evil.example:80", "localhost.evil.example", ""] {
            let r = stats_get_host(&proxy, host, path).await;
            assert_eq!(r.status, 421, "Host {host:?} {path}: {}", r.text());
            assert!(!r.text().contains("backends"), "nothing of the stats leaks");
        }
    }
    let port = proxy.stats.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "LOCALHOST:9000".to_string(),
        "[::1]:8404".to_string(),
    ] {
        let r = stats_get_host(&proxy, &host, "/stats.json").await;
        assert_eq!(r.status, 200, "Host {host:?}: {}", r.text());
    }
    let probe = stats_get_host(&proxy, "lb-probe.internal", "/health").await;
    assert_eq!(probe.status, 200, "probes send any Host to /health");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_hosts_adds_names_the_listener_answers_to_and_reloads() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&body(&[&a], "stats: { hosts: [stats.example.com] }\n"));
    let port = proxy.stats.port();
    for host in ["stats.example.com".to_string(), format!("Stats.Example.com:{port}")] {
        assert_eq!(stats_get_host(&proxy, &host, "/stats.json").await.status, 200, "{host}");
    }
    assert_eq!(
        stats_get_host(&proxy, "other.example.com", "/stats.json").await.status,
        421
    );
    proxy.write_config(&body(&[&a], ""));
    proxy.sighup();
    proxy.wait_generation(2).await;
    assert_eq!(
        stats_get_host(&proxy, "stats.example.com", "/stats.json").await.status,
        421,
        "the name left stats.hosts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_lock_out_that_address_only() {
    let a = Backend::start("a");
    let proxy = start_with_auth(&[&a]).await;
    let guesser = "127.0.0.3";
    for i in 1..=5 {
        let r = stats_get_from(&proxy, guesser, "/stats.json", ("admin", &format!("guess-{i}"))).await;
        assert_eq!(r.status, 401, "wrong password {i}");
    }
    let r = stats_get_from(&proxy, guesser, "/stats.json", ("admin", PASSWORD)).await;
    assert_eq!(r.status, 429, "locked out, even with the right password: {}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("www-authenticate"), None, "no login prompt while locked out");
    let r = stats_get_from(&proxy, guesser, "/metrics", ("admin", "guess-6")).await;
    assert_eq!(r.status, 429, "every protected path");

    let other = stats_get_from(&proxy, "127.0.0.4", "/stats.json", ("admin", PASSWORD)).await;
    assert_eq!(other.status, 200, "another address is not throttled");
    let health = client::get(&proxy.stats_target().from(guesser), "/health")
        .await
        .expect("health");
    assert_eq!(health.status, 200, "probes from a locked-out address still pass");
    let log = proxy.proc.log();
    assert!(log.contains("stats: too many wrong passwords"), "{log}");
    assert!(!log.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_run_warn_about_a_short_stats_password_without_showing_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(
        &path,
        "listen: { http: 127.0.0.1:1, stats: 127.0.0.1:2 }\n\
         routes:\n  - { path_prefix: /, backend: api }\n\
         backends:\n  api: { servers: [a] }\n\
         servers:\n  a: { address: 127.0.0.1:3 }\n\
         stats: { auth: { user: admin, password_env: EDGEPIN_TEST_PW } }\n",
    )
    .expect("write config");
    let check = |password: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgepin"))
            .args(["check", "-c"])
            .arg(&path)
            .env("EDGEPIN_TEST_PW", password)
            .output()
            .expect("run check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let expected = format!(
        "{}:8:45: warning: stats.auth: the password from environment variable EDGEPIN_TEST_PW is shorter than 12 characters",
        path.display()
    );
    let (code, out) = check("x");
    assert_eq!(code, Some(0), "a warning, not a failure: {out}");
    assert!(out.contains(&expected), "{out}");
    let (code, out) = check("Qz7!shortpw");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&expected), "{out}");
    assert!(!out.contains("Qz7!shortpw"), "the password is never printed: {out}");
    let (code, out) = check("Qz7!long-enough");
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");

    let a = Backend::start("a");
    let proxy = Proxy::builder(&body(&[&a], ""))
        .stats_auth("admin", "Qz7!shortpw")
        .start();
    let log = proxy.proc.log();
    assert!(log.contains("stats: weak password"), "{log}");
    assert!(log.contains("is shorter than 12 characters"), "{log}");
    assert!(!log.contains("Qz7!shortpw"), "{log}");
}
