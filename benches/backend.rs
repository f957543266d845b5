//! `bench-backend`: the upstream servers of `make bench`, one process serving every
//! address given on the command line (`bench-backend w1=127.0.0.1:18101 w2=…`).
//!
//! Built to cost the proxies' load core as little as possible: one thread, HTTP/1.1
//! keep-alive parsed by `httparse`, a fixed 100-byte JSON answer written in one syscall.
//! Under `/socket.io/` it plays Engine.IO just enough for the sticky rules of each proxy:
//! a polling handshake (`EIO=` without `sid=`) gets an open packet with a fresh sid, a
//! WebSocket upgrade gets an open packet as its first frame when it is a handshake, then
//! every text or binary message is echoed. Everything else gets the JSON answer.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Size of the JSON answer, like the anchors in notes/anchors.md.
const ANSWER_BYTES: usize = 100;
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body skipped over (the benchmarks send none).
const MAX_BODY: u64 = 1 << 20;

/// One upstream server: its name and precomputed answers.
struct Server {
    name: String,
    /// The whole keep-alive response: head and 100-byte body.
    answer: Vec<u8>,
    /// Counter for session ids.
    sessions: Cell<u64>,
}

impl Server {
    fn new(name: &str) -> Server {
        let mut body = format!(r#"{{"server":"{name}","status":"ok","items":[1,2,3],"note":""#);
        let pad = ANSWER_BYTES - body.len() - 2;
        body.extend(std::iter::repeat_n('x', pad));
        body.push_str("\"}");
        assert_eq!(body.len(), ANSWER_BYTES);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {ANSWER_BYTES}\r\n\r\n{body}"
        );
        Server {
            name: name.to_string(),
            answer: answer.into_bytes(),
            sessions: Cell::new(0),
        }
    }

    /// A new Engine.IO session id, unique per server.
    fn new_sid(&self) -> String {
        let n = self.sessions.get();
        self.sessions.set(n + 1);
        format!("{}-{n:012x}", self.name)
    }

    fn open_packet(&self) -> String {
        let sid = self.new_sid();
        format!(
            r#"0{{"sid":"{sid}","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
        )
    }
}

/// What one parsed request asks for.
struct Head {
    /// Bytes of the head, to drop from the buffer.
    len: usize,
    body: u64,
    close: bool,
    /// `Sec-WebSocket-Key` of an upgrade request.
    ws_key: Option<Vec<u8>>,
    /// An Engine.IO request without a session id.
    handshake: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let path = req.path.unwrap_or("/");
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let has = |key: &str| query.split('&').any(|p| p.split('=').next() == Some(key));
    let mut head = Head {
        len,
        body: 0,
        close: req.version == Some(0),
        ws_key: None,
        handshake: path.starts_with("/socket.io/") && has("EIO") && !has("sid"),
    };
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            head.body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad content-length")?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close |= h.value.eq_ignore_ascii_case(b"close");
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = h.value.eq_ignore_ascii_case(b"websocket");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = Some(h.value.to_vec());
        }
    }
    if !upgrade {
        head.ws_key = None;
    }
    Ok(Some(head))
}

/// Serve one client connection until it closes or upgrades.
async fn serve(server: Rc<Server>, mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        // Answer every complete request in the buffer (pipelining), then write once.
        let mut close = false;
        while let Some(head) = parse_head(&buf).map_err(std::io::Error::other)? {
            if head.body > MAX_BODY {
                return Err(std::io::Error::other("body too large"));
            }
            let need = head.len + head.body as usize;
            if buf.len() < need {
                break;
            }
            buf.drain(..need);
            if let Some(key) = head.ws_key {
                stream.write_all(&out).await?;
                return websocket(server, stream, &key, head.handshake).await;
            }
            if head.handshake {
                let body = server.open_packet();
                out.extend_from_slice(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            } else {
                out.extend_from_slice(&server.answer);
            }
            if head.close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return stream.shutdown().await;
        }
        if buf.len() >= MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Complete the upgrade, send the Engine.IO open packet for a handshake, then echo.
async fn websocket(server: Rc<Server>, mut stream: TcpStream, key: &[u8], handshake: bool) -> std::io::Result<()> {
    let accept = derive_accept_key(key);
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    let io = std::io::Error::other;
    if handshake {
        ws.send(Message::text(server.open_packet())).await.map_err(io)?;
    }
    while let Some(msg) = ws.next().await {
        match msg.map_err(io)? {
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m).await.map_err(io)?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

fn parse_args() -> Result<Vec<(String, SocketAddr)>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return Err("usage: bench-backend NAME=ADDR [NAME=ADDR ...]".into());
    }
    args.iter()
        .map(|a| {
            let (name, addr) = a.split_once('=').ok_or(format!("{a}: expected NAME=ADDR"))?;
            let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
            Ok((name.to_string(), addr))
        })
        .collect()
}

fn main() {
    let servers = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut accepting = Vec::new();
        for (name, addr) in servers {
            let listener = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("bench-backend: cannot listen on {addr}: {e}");
                    std::process::exit(1);
                }
            };
            let server = Rc::new(Server::new(&name));
            accepting.push(tokio::task::spawn_local(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::task::spawn_local(serve(Rc::clone(&server), stream));
                        }
                        Err(e) => {
                            eprintln!("bench-backend: accept on {addr}: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
        eprintln!("bench-backend: serving {} servers", accepting.len());
        for task in accepting {
            let _ = task.await;
        }
    });
}
