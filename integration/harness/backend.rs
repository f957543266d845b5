//! A small HTTP + WebSocket backend run inside the test process on its own runtime, so a
//! test can kill it (every socket closes at once), make its health check fail or hang,
//! and count what reached it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::runtime::Runtime;

/// How the backend answers `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HealthMode {
    Ok = 0,
    Fail = 1,
    Hang = 2,
}

#[derive(Default)]
struct Shared {
    name: String,
    hits: AtomicU64,
    health_checks: AtomicU64,
    health: AtomicU8,
    /// WebSockets open now.
    sockets: AtomicU64,
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<Runtime>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            ..Default::default()
        });
        let (runtime, addr) = serve(Arc::clone(&shared), addr);
        Backend {
            name: name.to_string(),
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Requests served, not counting health checks.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Relaxed)
    }

    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Relaxed)
    }

    pub fn open_websockets(&self) -> u64 {
        self.shared.sockets.load(Relaxed)
    }

    pub fn set_health(&self, mode: HealthMode) {
        self.shared.health.store(mode as u8, Relaxed);
    }

    /// Stop at once: the listener and every open connection close.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Start again on the same address (counters carry on).
    pub fn restart(&mut self) {
        self.kill();
        self.shared.health.store(HealthMode::Ok as u8, Relaxed);
        // The port may take a moment to be bindable again.
        for _ in 0..50 {
            if std::net::TcpListener::bind(self.addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (runtime, _) = serve(Arc::clone(&self.shared), self.addr);
        self.runtime = Some(runtime);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(shared: Arc<Shared>, addr: SocketAddr) -> (Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("backend runtime");
    // Bind with std: a test may call this from inside its own runtime.
    let std_listener = std::net::TcpListener::bind(addr).expect("bind backend");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("backend addr");
    let listener = {
        let _enter = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener).expect("tokio listener")
    };
    let app = Router::new().fallback(handle).with_state(shared);
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (runtime, addr)
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/health" {
        s.health_checks.fetch_add(1, Relaxed);
        return match s.health.load(Relaxed) {
            0 => (StatusCode::OK, "ok").into_response(),
            1 => (StatusCode::INTERNAL_SERVER_ERROR, "failing").into_response(),
            _ => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                StatusCode::OK.into_response()
            }
        };
    }
    s.hits.fetch_add(1, Relaxed);
    let is_ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws {
        // `/push/N`: the server sends N bytes (in 64 KiB messages) and then waits.
        let push = path.strip_prefix("/push/").and_then(|n| n.parse::<usize>().ok());
        return match WebSocketUpgrade::from_request(req, &s).await {
            Ok(ws) => {
                let shared = Arc::clone(&s);
                match push {
                    Some(n) => ws
                        .on_upgrade(move |socket| push_bytes(socket, shared, n))
                        .into_response(),
                    None => ws.on_upgrade(move |socket| echo(socket, shared)).into_response(),
                }
            }
            Err(e) => e.into_response(),
        };
    }
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // `/big/N`: an answer of N bytes.
    if let Some(n) = path.strip_prefix("/big/").and_then(|n| n.parse::<usize>().ok()) {
        return ([("x-server", s.name.clone())], vec![b'x'; n]).into_response();
    }
    let headers = req.headers().clone();
    let method = req.method().to_string();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .map(|b| b.len())
        .unwrap_or(0);
    let json = serde_json::json!({
        "server": s.name,
        "method": method,
        "path": path,
        "body_len": body,
        "headers": header_json(&headers),
    });
    ([("x-server", s.name.clone())], axum::Json(json)).into_response()
}

fn header_json(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        m.insert(
            k.to_string(),
            serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
        );
    }
    serde_json::Value::Object(m)
}

async fn push_bytes(mut socket: WebSocket, s: Arc<Shared>, mut n: usize) {
    s.sockets.fetch_add(1, Relaxed);
    while n > 0 {
        let len = n.min(64 * 1024);
        if socket.send(Message::Binary(vec![7u8; len].into())).await.is_err() {
            break;
        }
        n -= len;
    }
    // Hold the socket until the client goes.
    while let Some(Ok(_)) = socket.recv().await {}
    s.sockets.fetch_sub(1, Relaxed);
}

async fn echo(mut socket: WebSocket, s: Arc<Shared>) {
    s.sockets.fetch_add(1, Relaxed);
    let hello = format!("hello from {}", s.name);
    if socket.send(Message::Text(hello.into())).await.is_ok() {
        while let Some(Ok(msg)) = socket.recv().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    }
    s.sockets.fetch_sub(1, Relaxed);
}
