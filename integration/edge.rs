//! The production edge: certificates from a real ACME server (pebble) by HTTP-01 and
//! TLS-ALPN-01 and their renewal, certificates chosen by SNI, HSTS, HTTP/2 clients beside
//! Socket.IO clients on one listener, an HTTP/2 stream-reset flood, and `run_as`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use edgepin::tls::CertInfo;

use crate::harness::client::{self, Stream, Target};
use crate::harness::pebble::Pebble;
use crate::harness::redis::Redis;
use crate::harness::{Backend, Proxy, SioClients, Worker, api_body, certs, eventually, free_port, h2c};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A TLS target naming `sni` and trusting `ca`.
fn named(addr: SocketAddr, sni: &str, ca: &Path) -> Target {
    let mut t = Target::tls(addr).trusting(ca);
    t.tls = Some(sni.to_string());
    t
}

/// The leaf certificate the https listener serves to a client naming `sni`, verified
/// against `ca`.
async fn served(addr: SocketAddr, sni: &str, ca: &Path) -> std::io::Result<CertInfo> {
    match client::connect(&named(addr, sni, ca)).await? {
        Stream::Tls(tls) => {
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
            let leaf = leaf.ok_or_else(|| std::io::Error::other("no certificate"))?;
            CertInfo::of(&leaf, sni).map_err(std::io::Error::other)
        }
        Stream::Plain(_) => Err(std::io::Error::other("not TLS")),
    }
}

/// Wait (up to `timeout`) for the listener to serve, for `sni`, a certificate `ca`
/// verifies and `accept` likes.
async fn wait_served(
    addr: SocketAddr,
    sni: &str,
    ca: &Path,
    timeout: Duration,
    accept: impl Fn(&CertInfo) -> bool,
) -> Option<CertInfo> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(info) = served(addr, sni, ca).await
            && accept(&info)
        {
            return Some(info);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn acme_tls(pebble: &Pebble, domains: &str, challenge: &str, storage: &Path) -> String {
    format!(
        "{{ acme: {{ domains: [{domains}], email: ops@acme.test, directory: \"{}\", ca: {}, storage: {}, challenge: {challenge} }} }}",
        pebble.directory(),
        certs().ca_cert.display(),
        storage.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_http01_issues_serves_and_renews_without_dropping_a_websocket() {
    let backend = Backend::start("b0");
    let (https, http) = (loopback(), loopback());
    // 30 s certificates: renewed at two-thirds, 20 s after issue.
    let pebble = Pebble::start(http.port(), https.port(), Some(Duration::from_secs(30)));
    let storage = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&api_body(&[&backend], &[]))
        .at(https, http)
        .tls_yaml(&acme_tls(&pebble, "a.acme.test", "http-01", storage.path()))
        .start();
    let root = pebble.root().await;
    let first = wait_served(https, "a.acme.test", &root, Duration::from_secs(60), |_| true)
        .await
        .unwrap_or_else(|| panic!("no certificate from pebble:\n{}", proxy.proc.log_tail(30)));
    assert_eq!(first.names, vec!["a.acme.test"]);
    assert!(first.issuer.contains("Pebble"), "{}", first.issuer);
    let t = named(https, "a.acme.test", &root);
    assert_eq!(client::get(&t, "/").await.unwrap().status, 200);

    // A WebSocket opened on the first certificate lives through the renewal.
    let mut ws = client::websocket(&t, "/socket.io/?EIO=4&transport=websocket")
        .await
        .unwrap();
    assert!(ws.next().await.is_some(), "hello from the backend");
    let renewed = wait_served(https, "a.acme.test", &root, Duration::from_secs(60), |c| {
        c.not_after > first.not_after
    })
    .await
    .unwrap_or_else(|| panic!("not renewed:\n{}", proxy.proc.log_tail(30)));
    assert!(renewed.issuer.contains("Pebble"));
    ws.send(Message::Text("still here".into())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::Text("still here".into()));

    let stats = proxy.stats().await;
    let cert = &stats["certificates"][0];
    assert_eq!(cert["names"], json!(["a.acme.test"]));
    assert_eq!(cert["default"], true);
    assert_eq!(cert["acme"]["issued"], true);
    assert_eq!(cert["acme"]["last_ok"], true);
    assert_eq!(cert["acme"]["failures"], 0);
    use std::os::unix::fs::PermissionsExt;
    for (file, mode) in [
        ("account.json", 0o600),
        ("a.acme.test.key", 0o600),
        ("a.acme.test.crt", 0o644),
    ] {
        let m = std::fs::metadata(storage.path().join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    // A restart serves the stored certificate at once (no new order).
    drop(proxy);
    let proxy = Proxy::builder(&api_body(&[&backend], &[]))
        .at(https, http)
        .tls_yaml(&acme_tls(&pebble, "a.acme.test", "http-01", storage.path()))
        .start();
    let again = served(https, "a.acme.test", &root).await.expect("stored certificate");
    assert!(again.not_after >= renewed.not_after);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_tls_alpn01_issues_a_certificate_on_the_https_listener() {
    let backend = Backend::start("b0");
    let (https, http) = (loopback(), loopback());
    let pebble = Pebble::start(http.port(), https.port(), None);
    let storage = tempfile::tempdir().unwrap();
    let proxy = Proxy::builder(&api_body(&[&backend], &[]))
        .at(https, http)
        .tls_yaml(&acme_tls(
            &pebble,
            "b.acme.test, c.acme.test",
            "tls-alpn-01",
            storage.path(),
        ))
        .start();
    let root = pebble.root().await;
    let info = wait_served(https, "c.acme.test", &root, Duration::from_secs(60), |_| true)
        .await
        .unwrap_or_else(|| panic!("no certificate from pebble:\n{}", proxy.proc.log_tail(30)));
    let mut names = info.names.clone();
    names.sort();
    assert_eq!(names, vec!["b.acme.test", "c.acme.test"]);
    let r = client::get(&named(https, "b.acme.test", &root), "/").await.unwrap();
    assert_eq!(r.status, 200);
    let metrics = client::get(&proxy.stats_target(), "/metrics").await.unwrap().text();
    for line in [
        "edgepin_certificate_acme_issued{names=\"b.acme.test,c.acme.test\"} 1",
        "edgepin_certificate_acme_last_renewal_success{names=\"b.acme.test,c.acme.test\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // A client that offers only acme-tls/1 gets no certificate once no challenge is open.
    assert!(served_acme_alpn(https, "b.acme.test").await.is_err());
}

/// A TLS-ALPN-01 style handshake (ALPN `acme-tls/1` only), without verification.
async fn served_acme_alpn(addr: SocketAddr, sni: &str) -> std::io::Result<()> {
    #[derive(Debug)]
    struct Anything;
    impl rustls::client::danger::ServerCertVerifier for Anything {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Anything))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_each_hosts_certificate_unknown_names_get_the_default_and_files_swap() {
    let backend = Backend::start("b0");
    let dir = tempfile::tempdir().unwrap();
    let ca = certs();
    let day = time::Duration::days(1);
    let (a_crt, a_key) = edgepin::certs::issue(ca, &dir.path().join("a"), &["a.test"], day * 30).unwrap();
    let (w_crt, w_key) = edgepin::certs::issue(ca, &dir.path().join("w"), &["*.b.test"], day * 30).unwrap();
    let tls = format!(
        "{{ cert: {}, key: {}, watch: 200ms, certificates: [{{ cert: {}, key: {} }}, {{ cert: {}, key: {}, names: [\"*.b.test\", extra.test] }}] }}",
        ca.cert.display(),
        ca.key.display(),
        a_crt.display(),
        a_key.display(),
        w_crt.display(),
        w_key.display()
    );
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).tls_yaml(&tls).start();
    let names = async |sni: &str| served(proxy.https, sni, &ca.ca_cert).await.map(|c| c.names);
    assert_eq!(names("a.test").await.unwrap(), vec!["a.test"]);
    assert_eq!(names("x.b.test").await.unwrap(), vec!["*.b.test"]);
    assert_eq!(names("localhost").await.unwrap(), vec!["localhost"]);
    // An unknown name (and no SNI at all, as for an IP) gets the default: tls.cert.
    let unknown = served(proxy.https, "unknown.test", &ca.ca_cert).await;
    assert!(
        unknown.is_err(),
        "the default does not name unknown.test, so verification fails"
    );
    assert_eq!(names("127.0.0.1").await.unwrap(), vec!["localhost"]);
    let r = client::get(&named(proxy.https, "a.test", &ca.ca_cert), "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let stats = proxy.stats().await;
    let listed: Vec<&str> = stats["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["names"][0].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["localhost", "a.test", "*.b.test"]);

    // New files for a.test are picked up by tls.watch.
    let before = served(proxy.https, "a.test", &ca.ca_cert).await.unwrap();
    edgepin::certs::issue(ca, &dir.path().join("a"), &["a.test"], day * 60).unwrap();
    let after = wait_served(proxy.https, "a.test", &ca.ca_cert, Duration::from_secs(10), |c| {
        c.not_after > before.not_after
    })
    .await;
    assert!(after.is_some(), "the new a.test certificate was not served");
    assert_eq!(names("x.b.test").await.unwrap(), vec!["*.b.test"], "the others stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn hsts_is_sent_on_https_only_when_configured() {
    let backend = Backend::start("b0");
    let c = certs();
    let plain = Proxy::start(&api_body(&[&backend], &[]));
    let r = client::get(&plain.tls(), "/").await.unwrap();
    assert_eq!((r.status, r.header("strict-transport-security")), (200, None));
    drop(plain);
    let tls = format!(
        "{{ cert: {}, key: {}, hsts: {{ max_age: 365d, include_subdomains: true, preload: true }} }}",
        c.cert.display(),
        c.key.display()
    );
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).tls_yaml(&tls).start();
    let r = client::get(&proxy.tls(), "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    let r = client::get(&proxy.plain(), "/").await.unwrap();
    assert_eq!(
        (r.status, r.header("strict-transport-security")),
        (200, None),
        "never on plain http"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_rest_answers_while_fifty_socketio_clients_use_the_same_listener() {
    let redis = Redis::start();
    let workers: Vec<Worker> = (1..=2).map(|i| Worker::start(&format!("w{i}"), &redis.url())).collect();
    let body = format!(
        "routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [w1, w2] }}\n  sockets: {{ balance: sticky, servers: [w1, w2], timeouts: {{ server: 60s }} }}\nservers:\n  w1: {{ address: {} }}\n  w2: {{ address: {} }}\nhealth: {{ interval: 1s, timeout: 500ms }}\n",
        workers[0].addr, workers[1].addr
    );
    let proxy = Proxy::builder(&body).h2().start();

    // REST over h2 the whole time the Socket.IO clients work.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let rest = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let addr = proxy.https;
        tokio::spawn(async move {
            let mut send = h2c::connect(addr).await;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Relaxed) && Instant::now() < deadline {
                match h2c::get(&mut send, "/api/whoami").await {
                    Some((200, b)) if String::from_utf8_lossy(&b).contains("\"id\":\"w") => ok.fetch_add(1, Relaxed),
                    _ => failed.fetch_add(1, Relaxed),
                };
            }
        })
    };
    let url = format!("https://localhost:{}", proxy.https.port());
    let ca = certs().ca_cert.display().to_string();
    let delivered = tokio::task::spawn_blocking(move || {
        let mut c = SioClients::start_with_env(&[("NODE_EXTRA_CA_CERTS", &ca)]);
        let names: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
        for n in &names {
            c.connect_with(n, &url, &["polling", "websocket"]);
        }
        for (i, n) in names.iter().enumerate() {
            c.join(n, &format!("room{}", i % 5));
        }
        for (r, speaker) in names.iter().take(5).enumerate() {
            c.emit(speaker, "say", json!([format!("room{r}"), format!("hello {r}")]));
        }
        let mut delivered = 0;
        for (i, n) in names.iter().enumerate() {
            let room = format!("room{}", i % 5);
            if c.wait_event(n, "said", Duration::from_secs(10), |a| a[0]["room"] == room.as_str()) {
                delivered += 1;
            }
        }
        delivered
    })
    .await
    .unwrap();
    stop.store(true, Relaxed);
    rest.await.unwrap();
    assert_eq!(delivered, 50, "every client got its room's broadcast");
    assert_eq!(failed.load(Relaxed), 0, "h2 REST requests failed");
    assert!(ok.load(Relaxed) > 10, "h2 REST answers: {}", ok.load(Relaxed));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_h2_connection_is_closed_after_the_keepalive_timeout() {
    let backend = Backend::start("b0");
    let body = format!("{}timeouts: {{ keepalive: 1s }}\n", api_body(&[&backend], &[]));
    let proxy = Proxy::builder(&body).h2().start();
    let tls = h2c::tls(proxy.https).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let mut send = send;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
    let answered = Instant::now();
    // Silent from now on: the proxy closes it, as it closes an idle HTTP/1.1 connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("an idle HTTP/2 connection held past 10 s")
        .unwrap();
    let idle = ended - answered;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle"
    );
    drop(send);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_client_that_never_sends_its_preface_is_cut_at_the_handshake_deadline() {
    let backend = Backend::start("b0");
    let body = format!("{}timeouts: {{ handshake: 1s }}\n", api_body(&[&backend], &[]));
    let proxy = Proxy::builder(&body).h2().start();
    let mut silent = h2c::tls(proxy.https).await;
    let started = Instant::now();
    // The proxy may say its own SETTINGS first (its half of the preface); then it closes.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 64];
        while let Ok(n) = silent.read(&mut buf).await
            && n > 0
        {}
    })
    .await;
    assert!(closed.is_ok(), "the connection was not closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );
    let https = proxy.frontend_stats("https").await;
    assert_eq!(https["handshake_timeouts"], 1, "{https}");
    // A client that sends its preface is served as before.
    let mut send = h2c::connect(proxy.https).await;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_stream_whose_client_grants_no_window_ends_at_the_client_timeout() {
    let backend = Backend::start("b0");
    let body = format!("{}timeouts: {{ client: 1s }}\n", api_body(&[&backend], &[]));
    let proxy = Proxy::builder(&body).h2().start();
    let tls = h2c::tls(proxy.https).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("https://localhost/").body(()).unwrap();
    let (resp, _) = send.ready().await.unwrap().send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("response head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    // The body cannot flow (no window, never released): the proxy gives up on the stream.
    let mut body = resp.into_body();
    let end = tokio::time::timeout(Duration::from_secs(10), body.data()).await;
    assert!(matches!(end, Ok(Some(Err(_)))), "the stream was not reset: {end:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reset after {:?}",
        started.elapsed()
    );
    // Its server's session is given back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = proxy.stats().await;
        let scur = stats["backends"][0]["servers"][0]["counters"]["sessions_current"].as_u64();
        if scur == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "session still held: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_body_over_the_limit_gets_413_and_is_not_the_servers_error() {
    let backend = Backend::start("b0");
    let body = format!("{}limits: {{ max_body_bytes: 1000 }}\n", api_body(&[&backend], &[]));
    let proxy = Proxy::builder(&body).h2().start();
    let mut send = h2c::connect(proxy.https).await;
    // No content-length: the limit is found while the body streams.
    let req = http::Request::post("https://localhost/upload").body(()).unwrap();
    let mut ready = send.clone().ready().await.unwrap();
    let (resp, mut upload) = ready.send_request(req, false).unwrap();
    for _ in 0..4 {
        upload.reserve_capacity(600);
        let _ = upload.send_data(bytes::Bytes::from(vec![b'x'; 600]), false);
    }
    let _ = upload.send_data(bytes::Bytes::new(), true);
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(resp.status(), 413);
    let stats = proxy.stats().await;
    let server = &stats["backends"][0]["servers"][0];
    assert_eq!(server["counters"]["response_errors"], 0, "{server}");
    assert_eq!(server["status"], "UP");
    send = ready;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_connection_is_one_place_and_its_extra_streams_at_servers_take_their_own() {
    let backend = Backend::start("b0");
    let body = format!("{}limits: {{ max_connections: 3 }}\n", api_body(&[&backend], &[]));
    let proxy = Proxy::builder(&body).h2().start();
    // One connection (a place, which covers one server connection) and three slow
    // streams: the second and third take a place each for their server connections, and
    // a fourth finds none left.
    let mut send = h2c::connect(proxy.https).await;
    let slow = |send: &h2::client::SendRequest<bytes::Bytes>| {
        let mut send = send.clone();
        tokio::spawn(async move { h2c::get(&mut send, "/slow/1500").await.map(|r| r.0) })
    };
    let (a, b, c) = (slow(&send), slow(&send), slow(&send));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(503));
    let done = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
    assert_eq!(done, (Some(200), Some(200), Some(200)));
    // Their places are given back; a stream alone uses its connection's.
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
    let a = slow(&send);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        assert_eq!(client::get(&proxy.tls(), "/").await.unwrap().status, 200);
    }
    assert_eq!(a.await.unwrap(), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2_stream_reset_flood_is_cut_and_the_proxy_keeps_serving() {
    let backend = Backend::start("b0");
    let proxy = Proxy::builder(&api_body(&[&backend], &[])).h2().start();
    let mut tls = h2c::tls(proxy.https).await;
    // GET / with :authority localhost (HPACK static entries, authority not indexed).
    let headers = [&[0x82u8, 0x87, 0x84, 0x01, 0x09][..], b"localhost"].concat();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2c::frame(&mut out, 0x4, 0, 0, &[]);
    const FLOOD: u32 = 5000;
    for i in 0..FLOOD {
        let id = 1 + 2 * i;
        h2c::frame(&mut out, 0x1, 0x5, id, &headers); // HEADERS, END_STREAM | END_HEADERS
        h2c::frame(&mut out, 0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
    }
    // The server may stop reading once it has had enough: write what it takes.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.write_all(&out)).await;
    let mut goaway = None;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 16384];
    'read: while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 0x7 && len >= 8 {
                goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
                break 'read;
            }
            buf.drain(..9 + len);
        }
    }
    assert_eq!(goaway, Some(0xb), "GOAWAY(ENHANCE_YOUR_CALM) ends the flood");
    assert!(
        backend.hits() < u64::from(FLOOD) / 10,
        "most reset streams never reached the backend: {}",
        backend.hits()
    );
    // The proxy serves on, over h2 and HTTP/1.1.
    let mut send = h2c::connect(proxy.https).await;
    assert_eq!(h2c::get(&mut send, "/").await.map(|r| r.0), Some(200));
    assert_eq!(client::get(&proxy.tls(), "/").await.unwrap().status, 200);
}

/// `Uid:` and `Gid:` of a process, as /proc shows them (real, effective, saved, fs).
fn ids(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (line("Uid:"), line("Gid:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn run_as_nobody_serves_as_nobody_and_still_swaps_a_certificate_it_can_read() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to drop privileges");
        return;
    }
    let backend = Backend::start("b0");
    let ca = certs();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let day = time::Duration::days(1);
    let files = dir.path().join("tls");
    let (crt, key) = edgepin::certs::issue(ca, &files, &["localhost", "127.0.0.1"], day * 30).unwrap();
    let give = |p: &Path| std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    for p in [files.as_path(), &crt, &key] {
        give(p);
    }
    let tls = format!("{{ cert: {}, key: {}, watch: 200ms }}", crt.display(), key.display());
    let body = api_body(&[&backend], &[]) + "run_as: { user: nobody }\n";
    let proxy = Proxy::builder(&body).tls_yaml(&tls).start();
    assert_eq!(client::get(&proxy.tls(), "/").await.unwrap().status, 200);
    let (uid, gid) = ids(proxy.proc.pid());
    assert_eq!(uid, "65534 65534 65534 65534", "every uid is nobody's");
    assert_eq!(gid, "65534 65534 65534 65534");
    let threads = std::fs::read_dir(format!("/proc/{}/task", proxy.proc.pid())).unwrap();
    for t in threads.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        assert!(!status.contains("Uid:\t0"), "a thread runs as root: {status}");
    }
    // A new certificate the user can read is swapped in.
    let before = served(proxy.https, "localhost", &ca.ca_cert).await.unwrap();
    // Made aside and given to nobody, then renamed into place.
    let staging = dir.path().join("staging");
    let (new_crt, new_key) = edgepin::certs::issue(ca, &staging, &["localhost", "127.0.0.1"], day * 60).unwrap();
    for p in [&new_crt, &new_key] {
        give(p);
    }
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_crt, &crt).unwrap();
    let swapped = eventually(Duration::from_secs(10), async || {
        served(proxy.https, "localhost", &ca.ca_cert)
            .await
            .is_ok_and(|c| c.not_after > before.not_after)
    })
    .await;
    assert!(swapped, "not swapped:\n{}", proxy.proc.log_tail(20));
    assert_eq!(client::get(&proxy.tls(), "/").await.unwrap().status, 200);
}
