//! A server that records what it receives: every byte (to look for what must never
//! arrive) and every request it could parse (method, target, fields in order, the body
//! decoded by its framing, trailers), answering each `200 ok`. Strict where a server
//! should be (httparse, CRLF chunk framing); bytes it cannot parse as a request are kept
//! as an [`Arrival::Unparsable`] and the connection is closed. Plain tokio on a raw
//! socket in the test's runtime; for the hardening tests and the differential harness.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Raw bytes kept per recorder (the count goes on beyond it).
const RAW_KEPT: usize = 16 << 20;
/// Longest head or chunk-size line the recorder reads before it gives up.
const MAX_HEAD: usize = 256 * 1024;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// How a received request's body was framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// One request as the server got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// Lowercase name and raw value, in order.
    pub fields: Vec<(String, Vec<u8>)>,
    pub framing: Framing,
    /// Decoded.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl Received {
    /// Values of the fields named `name` (lowercase).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn value(&self, name: &str) -> Option<String> {
        self.values(name)
            .next()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// What arrived on a connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    Request(Received),
    /// Bytes that are not a request this server accepts (the connection was closed).
    Unparsable(Vec<u8>),
}

#[derive(Default)]
struct Log {
    arrivals: Mutex<Vec<Arrival>>,
    raw: Mutex<Vec<u8>>,
    bytes: AtomicU64,
    connections: AtomicU64,
}

/// The recorder: its address and what it has seen so far.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Log>,
}

impl Recorder {
    /// Listen on a free loopback port, in the current tokio runtime.
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind recorder");
        let addr = listener.local_addr().expect("recorder addr");
        let log = Arc::new(Log::default());
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Relaxed);
                tokio::spawn(serve(s, Arc::clone(&shared)));
            }
        });
        Recorder { addr, log }
    }

    /// Every arrival so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.log.arrivals.lock().unwrap().clone()
    }

    /// The requests parsed so far.
    pub fn requests(&self) -> Vec<Received> {
        self.arrivals()
            .into_iter()
            .filter_map(|a| match a {
                Arrival::Request(r) => Some(r),
                Arrival::Unparsable(_) => None,
            })
            .collect()
    }

    /// Take the arrivals so far, leaving none.
    pub fn take(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.log.arrivals.lock().unwrap())
    }

    /// Bytes received on all connections.
    pub fn bytes(&self) -> u64 {
        self.log.bytes.load(Relaxed)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.log.connections.load(Relaxed)
    }

    /// Whether `needle` arrived anywhere in the bytes kept (the first 16 MiB).
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.log.raw.lock().unwrap().windows(needle.len()).any(|w| w == needle)
    }
}

/// Read more bytes into `buf`; false when the connection ended or idled out.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, log: &Log) -> bool {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(IDLE, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            log.bytes.fetch_add(n as u64, Relaxed);
            let mut raw = log.raw.lock().unwrap();
            let room = RAW_KEPT.saturating_sub(raw.len()).min(n);
            raw.extend_from_slice(&chunk[..room]);
            drop(raw);
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Why a request could not be read.
enum Stop {
    /// The connection ended (or idled out) between or inside requests.
    Ended,
    /// What came is not a request.
    Unparsable,
}

async fn serve(mut s: TcpStream, log: Arc<Log>) {
    let mut buf = Vec::new();
    loop {
        match read_request(&mut s, &mut buf, &log).await {
            Ok(r) => {
                let (head_only, close) = (
                    r.method == "HEAD",
                    r.values("connection").any(|v| v.eq_ignore_ascii_case(b"close")),
                );
                log.arrivals.lock().unwrap().push(Arrival::Request(r));
                let answer: &[u8] = if head_only {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if s.write_all(answer).await.is_err() || close {
                    return;
                }
            }
            Err(Stop::Ended) => {
                if !buf.is_empty() {
                    log.arrivals.lock().unwrap().push(Arrival::Unparsable(buf));
                }
                return;
            }
            Err(Stop::Unparsable) => {
                log.arrivals.lock().unwrap().push(Arrival::Unparsable(buf));
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
        }
    }
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, log: &Log) -> Result<Received, Stop> {
    let (len, mut r) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let r = Received {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    minor: req.version.unwrap_or(1),
                    fields: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect(),
                    framing: Framing::None,
                    body: Vec::new(),
                    trailers: Vec::new(),
                };
                break (n, r);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Err(Stop::Unparsable),
        }
        if !fill(s, buf, log).await {
            return Err(Stop::Ended);
        }
    };
    let chunked = r
        .values("transfer-encoding")
        .any(|v| v.eq_ignore_ascii_case(b"chunked"));
    let lengths: Vec<&[u8]> = r.values("content-length").collect();
    r.framing = match (chunked, lengths.as_slice()) {
        (true, []) => Framing::Chunked,
        (false, []) => Framing::None,
        (false, [one]) => {
            let n = std::str::from_utf8(one).ok().and_then(|t| t.parse().ok());
            Framing::Length(n.ok_or(Stop::Unparsable)?)
        }
        _ => return Err(Stop::Unparsable),
    };
    let mut at = len;
    match r.framing {
        Framing::None => {}
        Framing::Length(n) => {
            let end = len + n as usize;
            while buf.len() < end {
                if !fill(s, buf, log).await {
                    return Err(Stop::Ended);
                }
            }
            r.body = buf[len..end].to_vec();
            at = end;
        }
        Framing::Chunked => at = read_chunked(s, buf, len, &mut r, log).await?,
    }
    buf.drain(..at);
    Ok(r)
}

/// The line starting at `at` (without its CRLF) and where the next starts; reads more
/// as needed. A bare LF is not a line end here.
async fn line(s: &mut TcpStream, buf: &mut Vec<u8>, at: usize, log: &Log) -> Result<(Vec<u8>, usize), Stop> {
    loop {
        if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
            let text = buf[at..at + i].to_vec();
            if text.contains(&b'\n') || text.contains(&b'\r') {
                return Err(Stop::Unparsable);
            }
            return Ok((text, at + i + 2));
        }
        if buf.len() - at > MAX_HEAD {
            return Err(Stop::Unparsable);
        }
        if !fill(s, buf, log).await {
            return Err(Stop::Ended);
        }
    }
}

async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut at: usize,
    r: &mut Received,
    log: &Log,
) -> Result<usize, Stop> {
    loop {
        let (size_line, next) = line(s, buf, at, log).await?;
        let digits = size_line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| u64::from_str_radix(d, 16).ok())
            .ok_or(Stop::Unparsable)? as usize;
        at = next;
        if size == 0 {
            loop {
                let (trailer, next) = line(s, buf, at, log).await?;
                at = next;
                if trailer.is_empty() {
                    return Ok(at);
                }
                let (name, value) = trailer
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| (&trailer[..i], &trailer[i + 1..]))
                    .ok_or(Stop::Unparsable)?;
                r.trailers.push((
                    String::from_utf8_lossy(name).to_ascii_lowercase(),
                    value.trim_ascii().to_vec(),
                ));
            }
        }
        while buf.len() < at + size + 2 {
            if !fill(s, buf, log).await {
                return Err(Stop::Ended);
            }
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(Stop::Unparsable);
        }
        r.body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}
