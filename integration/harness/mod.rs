//! What every end-to-end test needs: the proxy binary on free ports, backends it talks
//! to, a Redis, HTTP/WebSocket clients, and cleanup of everything started.

pub mod backend;
pub mod browser;
pub mod client;
pub mod dns;
pub mod h2c;
pub mod l4;
pub mod load;
pub mod node;
pub mod pebble;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod recorder;
pub mod redis;
pub mod reference;
pub mod rude;
pub mod sio;
pub mod worker;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use backend::{Backend, HealthMode};
pub use client::{Conn, Target};
pub use process::Proc;
pub use proxy::Proxy;
pub use recorder::Recorder;
pub use sio::SioClients;
pub use worker::Worker;

/// Dev certificates shared by every test of this run.
pub fn certs() -> &'static edgepin::certs::DevCerts {
    static CERTS: OnceLock<(tempfile::TempDir, edgepin::certs::DevCerts)> = OnceLock::new();
    &CERTS
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("edgepin-certs-")
                .tempdir()
                .expect("temp dir");
            let c = edgepin::certs::generate(dir.path()).expect("generate certs");
            (dir, c)
        })
        .1
}

/// The edgepin binary the tests run: this build's, or `EDGEPIN_TEST_BIN` (to check that a
/// new test fails on an older build).
pub fn edgepin_bin() -> std::path::PathBuf {
    std::env::var_os("EDGEPIN_TEST_BIN").map_or_else(|| env!("CARGO_BIN_EXE_edgepin").into(), Into::into)
}

/// An `Authorization` header value for HTTP basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    // The kernel may hand the same free port to two binds in a row once the first is
    // closed: never give one out twice in this test process (two listeners of one proxy
    // once got the same port).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind :0")
            .local_addr()
            .expect("addr")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh free port in 100 tries");
}

/// A one-shot blocking GET (for readiness polls outside async code).
pub fn blocking_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// One JSON request (`Content-Type: application/json` and `headers`) to `target`, for
/// blocking tests: the async client on a runtime of its own, in a thread of its own.
pub fn blocking_json(
    target: Target,
    method: &'static str,
    path: &str,
    body: &str,
    headers: &[&str],
) -> client::Response {
    let (path, body) = (path.to_string(), body.to_string());
    let mut extra = vec!["Content-Type: application/json".to_string()];
    extra.extend(headers.iter().map(|h| h.to_string()));
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let mut conn = Conn::open(&target).await?;
                conn.request(method, &path, &extra, body.as_bytes()).await
            })
    })
    .join()
    .expect("request thread")
    .expect("request")
}

/// Poll `check` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// YAML for one backend `api` over `backends`, with optional weights.
pub fn api_body(backends: &[&Backend], weights: &[u32]) -> String {
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let mut y = format!(
        "routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [{}] }}\nservers:\n",
        names.join(", ")
    );
    for (i, b) in backends.iter().enumerate() {
        let w = weights.get(i).copied().unwrap_or(1);
        y.push_str(&format!("  {}: {{ address: {}, weight: {w} }}\n", b.name, b.addr));
    }
    y.push_str("health: { interval: 1s, timeout: 500ms }\n");
    y
}
