//! The edge basics: balancing, TLS, redirects, WebSockets, forwarded headers, limits,
//! errors, config checking and stopping.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Backend, Conn, Proxy, Target, api_body, blocking_get, client};

fn four_backends() -> Vec<Backend> {
    (0..4).map(|i| Backend::start(&format!("b{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_400_requests_exactly_100_each() {
    let backends = four_backends();
    let proxy = Proxy::start(&api_body(&backends.iter().collect::<Vec<_>>(), &[]));
    let mut conn = Conn::open(&proxy.tls()).await.unwrap();
    for _ in 0..400 {
        assert_eq!(conn.get("/x").await.unwrap().status, 200);
    }
    let hits: Vec<u64> = backends.iter().map(Backend::hits).collect();
    assert_eq!(hits, vec![100, 100, 100, 100]);
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_3_to_1_give_300_and_100() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&api_body(&[&a, &b], &[3, 1]));
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    for _ in 0..400 {
        assert_eq!(conn.get("/").await.unwrap().status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (300, 100));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_is_served_with_the_dev_certificate() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let r = client::get(&proxy.tls(), "/hello").await.unwrap();
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["server"], "a");
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_redirected_to_https_except_acme_challenges() {
    let (app, acme) = (Backend::start("app"), Backend::start("acme"));
    let body = format!(
        "routes:\n  - {{ path_prefix: /, backend: api }}\nacme: {{ backend: certbot }}\n\
         backends:\n  api: {{ servers: [app] }}\n  certbot: {{ servers: [acme] }}\n\
         servers:\n  app: {{ address: {} }}\n  acme: {{ address: {} }}\n",
        app.addr, acme.addr
    );
    let proxy = Proxy::builder(&body).redirect(true).start();
    let r = Conn::open(&proxy.plain())
        .await
        .unwrap()
        .with_host("example.test:80")
        .get("/a/b?c=1&d=2")
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    let expected = format!("https://example.test:{}/a/b?c=1&d=2", proxy.https.port());
    assert_eq!(r.header("location"), Some(expected.as_str()));

    let r = client::get(&proxy.plain(), "/.well-known/acme-challenge/token123")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "ACME challenges are proxied, not redirected");
    assert_eq!(r.json()["server"], "acme");
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_without_backend_is_404_and_redirect_port_is_configurable() {
    let app = Backend::start("app");
    let proxy = Proxy::builder(&api_body(&[&app], &[]))
        .redirect(true)
        .listen("  redirect_port: 443\n")
        .start();
    let r = client::get(&proxy.plain(), "/.well-known/acme-challenge/x")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let r = client::get(&proxy.plain(), "/p").await.unwrap();
    assert_eq!(
        r.header("location"),
        Some("https://localhost/p"),
        "port 443 is left out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_1000_messages_over_ws_and_wss() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    for target in [proxy.plain(), proxy.tls()] {
        let mut ws = client::websocket(&target, "/ws").await.unwrap();
        let hello = ws.next().await.unwrap().unwrap();
        assert_eq!(hello.into_text().unwrap().as_str(), "hello from a");
        for i in 0..1000 {
            ws.send(Message::Text(format!("m{i}").into())).await.unwrap();
        }
        for i in 0..1000 {
            let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(m.into_text().unwrap().as_str(), format!("m{i}"));
        }
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_websocket_outlives_the_client_timeout_but_not_the_tunnel_timeout() {
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace("routes:", "timeouts: { client: 1s, server: 1s, tunnel: 3s }\nroutes:");
    let proxy = Proxy::start(&body);
    let mut ws = client::websocket(&proxy.plain(), "/ws").await.unwrap();
    ws.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ws.send(Message::Text("still here".into())).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_text().unwrap().as_str(), "still here");
    // Now idle past the tunnel timeout: the proxy closes it.
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle tunnel was not closed after its timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_refused_on_a_route_that_disallows_it() {
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace(
        "- { path_prefix: /, backend: api }",
        "- { path_prefix: /, backend: api, websocket: false }",
    );
    let proxy = Proxy::start(&body);
    let err = client::websocket(&proxy.plain(), "/ws")
        .await
        .err()
        .expect("upgrade must fail");
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(a.open_websockets(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_carry_the_real_client_and_ignore_client_values() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let mut conn = Conn::open(&proxy.plain().from("127.0.0.7"))
        .await
        .unwrap()
        .with_host("shop.test");
    let forged = [
        "X-Forwarded-For: 6.6.6.6".to_string(),
        "X-Real-IP: 6.6.6.6".to_string(),
        "X-Forwarded-Proto: https".to_string(),
    ];
    let r = conn.request("GET", "/", &forged, b"").await.unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.7");
    assert_eq!(h["x-real-ip"], "127.0.0.7");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.test");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_not_listening_gives_502_or_503_within_the_connect_timeout() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = format!(
        "timeouts: {{ connect: 1s }}\nroutes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [gone] }}\n\
         servers:\n  gone: {{ address: {dead} }}\nhealth: {{ interval: 10s, timeout: 1s }}\n"
    );
    let proxy = Proxy::start(&body);
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/").await.unwrap();
    assert!(r.status == 502 || r.status == 503, "status {}", r.status);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_does_not_answer_gives_504_after_the_server_timeout() {
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace("routes:", "timeouts: { server: 1s }\nroutes:");
    let proxy = Proxy::start(&body);
    let started = Instant::now();
    let r = client::get(&proxy.plain(), "/slow/5000").await.unwrap();
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64k_request_header_gets_431_and_a_big_body_413() {
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace("routes:", "limits: { max_body_bytes: 1000 }\nroutes:");
    let proxy = Proxy::start(&body);
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    let big = format!("X-Big: {}", "a".repeat(64 * 1024));
    let r = conn.request("GET", "/", &[big], b"").await.unwrap();
    assert_eq!(r.status, 431);
    let r = Conn::open(&proxy.plain())
        .await
        .unwrap()
        .request("POST", "/", &[], &[b'x'; 2000])
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    let r = Conn::open(&proxy.plain())
        .await
        .unwrap()
        .request("POST", "/", &[], &[b'x'; 900])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(a.hits(), 1, "refused requests never reach the server");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_routing_sends_each_host_to_its_backend() {
    let (shop, blog, rest) = (Backend::start("shop"), Backend::start("blog"), Backend::start("rest"));
    let body = format!(
        "routes:\n  - {{ host: shop.test, path_prefix: /, backend: shop }}\n  - {{ host: '*.blog.test', path_prefix: /, backend: blog }}\n\
         \x20 - {{ path_prefix: /, backend: rest }}\nbackends:\n  shop: {{ servers: [shop] }}\n  blog: {{ servers: [blog] }}\n  rest: {{ servers: [rest] }}\n\
         servers:\n  shop: {{ address: {} }}\n  blog: {{ address: {} }}\n  rest: {{ address: {} }}\n",
        shop.addr, blog.addr, rest.addr
    );
    let proxy = Proxy::start(&body);
    for (host, expect) in [
        ("shop.test", "shop"),
        ("SHOP.test:8443", "shop"),
        ("a.blog.test", "blog"),
        ("blog.test", "rest"),
        ("other", "rest"),
    ] {
        let r = Conn::open(&proxy.tls())
            .await
            .unwrap()
            .with_host(host)
            .get("/")
            .await
            .unwrap();
        assert_eq!(r.json()["server"], expect, "host {host}");
    }
}

#[test]
fn check_accepts_the_shipped_config_shape_and_rejects_ten_bad_ones_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::harness::certs();
    let good = format!(
        "listen: {{ https: 127.0.0.1:8443, http: 127.0.0.1:8080, stats: 127.0.0.1:8404 }}\n\
         tls: {{ cert: {}, key: {} }}\n\
         routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
         backends:\n  api: {{ servers: [w1, w2] }}\n  sockets: {{ balance: sticky, servers: [w1, w2], timeouts: {{ server: 60s }} }}\n\
         servers:\n  w1: {{ address: 127.0.0.1:3001 }}\n  w2: {{ address: 127.0.0.1:3002 }}\n",
        certs.cert.display(),
        certs.key.display()
    );
    let check = |text: &str| {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgepin"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("sockets (sticky, cookie EDGEPIN)"), "{out}");

    // (replace this, with that, expected "line:col" and a word of the message)
    let bad: [(&str, &str, &str, &str); 10] = [
        ("listen: {", "listen: {{", "1:10", "expected"),
        ("backend: api }", "backend: apy }", "5:32", "\"apy\" is not defined"),
        (
            "[w1, w2] }\n  sockets",
            "[w1, w9] }\n  sockets",
            "7:24",
            "\"w9\" is not defined",
        ),
        ("127.0.0.1:3002", "127.0.0.1", "11:18", "HOST:PORT"),
        ("server: 60s", "server: soon", "8:70", "invalid duration \"soon\""),
        (
            "https: 127.0.0.1:8443",
            "https: localhost",
            "1:18",
            "\"localhost\" must be IP:PORT",
        ),
        (
            "  w2: { address: 127.0.0.1:3002 }\n",
            "  w1: { address: 127.0.0.1:3002 }\n",
            "11:3",
            "duplicate mapping key: w1",
        ),
        ("  - { path_prefix: /, backend: api }\n", "", "4:3", "catch-all"),
        (
            "api: { servers: [w1, w2] }",
            "api: { servers: [] }",
            "7:19",
            "has no servers",
        ),
        (
            "balance: sticky",
            "balance: sticky, wieght: 2",
            "8:31",
            "unknown field `wieght`",
        ),
    ];
    for (from, to, at, word) in bad {
        assert!(good.contains(from), "test setup: {from:?} not in config");
        let (code, out) = check(&good.replacen(from, to, 1));
        assert_eq!(code, Some(1), "{from:?} -> {to:?} should fail: {out}");
        let expected = format!("c.yaml:{at}: ");
        assert!(
            out.contains(&expected),
            "{from:?} -> {to:?}: expected {expected} in:\n{out}"
        );
        assert!(out.contains(word), "{from:?} -> {to:?}: expected {word:?} in:\n{out}");
    }
    // A missing certificate file is named with its position.
    let (code, out) = check(&good.replace(&certs.key.display().to_string(), "/nonexistent/edge.key"));
    assert_eq!(code, Some(1));
    assert!(
        out.contains("c.yaml:2:") && out.contains("/nonexistent/edge.key"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_in_flight_finish_then_exits() {
    let a = Backend::start("a");
    let mut proxy = Proxy::start(&api_body(&[&a], &[]));
    let target = proxy.plain();
    let slow = tokio::spawn(async move { client::get(&target, "/slow/1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "the request in flight completes");
    let status = proxy
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(blocking_get(proxy.http, "/").is_none(), "no longer serving");
    let pidfile = proxy.config.parent().expect("config dir").join("edgepin.pid");
    assert!(!pidfile.exists(), "the pidfile is removed at exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_at_once() {
    let a = Backend::start("a");
    let mut proxy = Proxy::start(&api_body(&[&a], &[]));
    let target = proxy.plain();
    let _slow = tokio::spawn(async move { client::get(&target, "/slow/10000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    proxy.proc.signal(nix::sys::signal::Signal::SIGINT);
    assert!(proxy.proc.wait_exit(Duration::from_secs(3)).is_some());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_reports_its_own_health_on_the_stats_listener() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let s = proxy.status().await;
    assert_eq!(s["status"], "ok");
    assert_eq!(s["generation"], 1);
    let _ = Target::plain(proxy.stats);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_names_the_client_only_for_trusted_peers() {
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace("routes:", "trusted_proxies: [127.0.0.5/32]\nroutes:");
    let proxy = Proxy::builder(&body).listen("  proxy_protocol: true\n").start();
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\n";
    for target in [proxy.plain(), proxy.tls()] {
        let r = client::get(&target.from("127.0.0.5").preface(v1), "/").await.unwrap();
        assert_eq!(r.json()["headers"]["x-real-ip"], "203.0.113.7");
        assert_eq!(r.json()["headers"]["x-forwarded-for"], "203.0.113.7");
    }
    // A client the balancer cannot name is not trusted with its own X-Forwarded-For.
    let unknown = b"PROXY UNKNOWN\r\n";
    let mut conn = Conn::open(&proxy.plain().from("127.0.0.5").preface(unknown))
        .await
        .unwrap();
    let r = conn
        .request("GET", "/", &["X-Forwarded-For: 6.6.6.6".into()], b"")
        .await
        .unwrap();
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "0.0.0.0");
    assert_eq!(r.json()["headers"]["x-real-ip"], "0.0.0.0");
    // Anyone else is served as themselves, and cannot claim another address.
    let r = client::get(&proxy.plain().from("127.0.0.6"), "/").await.unwrap();
    assert_eq!(r.json()["headers"]["x-real-ip"], "127.0.0.6");
    let r = client::get(&proxy.plain().from("127.0.0.6").preface(v1), "/")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "a PROXY line from an untrusted peer is not HTTP");
    // A trusted peer must send the header.
    assert!(client::get(&proxy.plain().from("127.0.0.5"), "/").await.is_err());
    assert_eq!(a.hits(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_is_offered_by_alpn_only_when_enabled() {
    let a = Backend::start("a");
    let offered = |addr: std::net::SocketAddr| async move {
        let mut config = (*crate::harness::client::tls_config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    };
    let h1 = Proxy::start(&api_body(&[&a], &[]));
    assert_eq!(offered(h1.https).await.as_deref(), Some("http/1.1"));
    let h2 = Proxy::builder(&api_body(&[&a], &[])).h2().start();
    assert_eq!(offered(h2.https).await.as_deref(), Some("h2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_max_connections_wait_and_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace(
        "routes:",
        "limits: { max_connections: 2 }\ntimeouts: { client: 1s }\nroutes:",
    );
    let proxy = Proxy::start(&body);
    // Two connections with a request in progress (a head begun): neither is idle, so
    // neither gives its place up (idle ones do: client_limits.rs).
    let begun = async || {
        let mut s = client::connect(&proxy.plain()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
        s
    };
    let c1 = begun().await;
    let mut c2 = begun().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third connection is accepted by the kernel but not served while two are busy...
    let started = Instant::now();
    let third = client::get(&proxy.plain(), "/").await;
    assert!(third.is_err(), "served beyond max_connections: {third:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for a place first"
    );
    // ...and is served once one closes.
    drop(c1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client::get(&proxy.plain(), "/").await.unwrap().status, 200);
    c2.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c2.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_has_one_structured_line_per_request() {
    let a = Backend::start("a");
    let proxy = Proxy::builder(&api_body(&[&a], &[]))
        .env("RUST_LOG", "info,pingora=error")
        .start();
    client::get(&proxy.plain().from("127.0.0.8"), "/hello?secret=1")
        .await
        .unwrap();
    // The line is written when the request ends, just after the answer.
    crate::harness::eventually(Duration::from_secs(3), async || {
        proxy.proc.log().contains("edgepin::access")
    })
    .await;
    let log = proxy.proc.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("edgepin::access")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = lines[0];
    for field in [
        "client=127.0.0.8",
        "listener=\"http\"",
        "method=GET",
        "path=\"/hello\"",
        "route=\"/\"",
        "backend=\"api\"",
        "server=\"a\"",
        "status=200",
        "bytes_out=",
        "duration_ms=",
        "connect_ms=",
        "ttfb_ms=",
        "upgrade=false",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!line.contains("secret"), "query strings stay out of the log: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_can_be_turned_off() {
    let a = Backend::start("a");
    let body = format!("access_log: false\n{}", api_body(&[&a], &[]));
    let proxy = Proxy::builder(&body).env("RUST_LOG", "info,pingora=error").start();
    client::get(&proxy.plain(), "/").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!proxy.proc.log().contains("edgepin::access"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_header_client_is_cut_at_the_header_deadline_but_keepalive_and_tunnels_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a");
    let body = api_body(&[&a], &[]).replace(
        "routes:",
        "timeouts: { header: 1500ms, client: 10s, keepalive: 10s }\nroutes:",
    );
    let proxy = Proxy::start(&body);
    // Blank lines before the request line (parsers skip them) do not count as a head.
    let starts: [&[u8]; 3] = [b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n\r\nGET / HTTP/1.1\r\n", b"\n\n"];
    for (target, start) in [
        (proxy.plain(), starts[0]),
        (proxy.tls(), starts[0]),
        (proxy.plain(), starts[1]),
        (proxy.plain(), starts[2]),
    ] {
        // One header byte every 300 ms: every read is quick, the head never completes.
        let mut s = client::connect(&target).await.unwrap();
        s.write_all(start).await.unwrap();
        let started = Instant::now();
        let cut = loop {
            if s.write_all(b"X").await.is_err() {
                break started.elapsed();
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
                _ => {}
            }
            assert!(started.elapsed() < Duration::from_secs(6), "slow head never cut");
        };
        assert!(
            cut >= Duration::from_millis(1300) && cut < Duration::from_secs(4),
            "cut after {cut:?}"
        );
    }
    // A kept-alive connection may idle between requests longer than the head deadline.
    let mut conn = Conn::open(&proxy.plain()).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(conn.get("/").await.unwrap().status, 200);
    // And a WebSocket is not an HTTP head: quiet for longer than the deadline, it lives on.
    let mut ws = client::websocket(&proxy.plain(), "/ws").await.unwrap();
    ws.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ws.send(Message::Text("late".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "late");
}
