//! A small HTTP/1.1 client for tests: exact bytes on the wire, keep-alive, a chosen
//! source address (127.0.0.x), TLS trusting the test CA, and WebSocket upgrades.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A client TLS config trusting the test CA.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    tls_config_trusting(&super::certs().ca_cert)
}

/// A client TLS config trusting the CA in `ca`.
pub fn tls_config_trusting(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(ca).expect("read CA");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A plain or TLS client connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// TLS with this server name (SNI).
    pub tls: Option<String>,
    /// Bind this source address (e.g. 127.0.0.7) to look like another client.
    pub source: Option<IpAddr>,
    /// Trust this CA instead of the shared test CA.
    pub ca: Option<std::path::PathBuf>,
    /// Bytes sent first, before TLS or HTTP (a PROXY protocol header).
    pub preface: Option<Vec<u8>>,
}

impl Target {
    pub fn plain(addr: SocketAddr) -> Target {
        Target {
            addr,
            tls: None,
            source: None,
            ca: None,
            preface: None,
        }
    }
    pub fn tls(addr: SocketAddr) -> Target {
        Target {
            addr,
            tls: Some("localhost".into()),
            source: None,
            ca: None,
            preface: None,
        }
    }
    pub fn preface(mut self, bytes: &[u8]) -> Target {
        self.preface = Some(bytes.to_vec());
        self
    }
    pub fn trusting(mut self, ca: &std::path::Path) -> Target {
        self.ca = Some(ca.to_path_buf());
        self
    }
    pub fn from(mut self, ip: &str) -> Target {
        self.source = Some(ip.parse().expect("source ip"));
        self
    }
}

pub async fn connect(t: &Target) -> std::io::Result<Stream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = t.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(t.addr))
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    if let Some(p) = &t.preface {
        tcp.write_all(p).await?;
    }
    match &t.tls {
        None => Ok(Stream::Plain(tcp)),
        Some(name) => {
            let config = match &t.ca {
                Some(ca) => tls_config_trusting(ca),
                None => tls_config(),
            };
            let connector = TlsConnector::from(config);
            let name = ServerName::try_from(name.clone()).map_err(std::io::Error::other)?;
            Ok(Stream::Tls(Box::new(connector.connect(name, tcp).await?)))
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercase; repeated headers joined with "\n".
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive connection.
pub struct Conn {
    io: BufReader<Stream>,
    host: String,
}

impl Conn {
    pub async fn open(t: &Target) -> std::io::Result<Conn> {
        Ok(Conn {
            io: BufReader::new(connect(t).await?),
            host: "localhost".into(),
        })
    }

    /// Send a request (`extra` are full header lines without CRLF) and read the answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[String],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let io = self.io.get_mut();
        io.write_all(head.as_bytes()).await?;
        io.write_all(body).await?;
        io.flush().await?;
        tokio::time::timeout(Duration::from_secs(30), read_response(&mut self.io, method == "HEAD"))
            .await
            .map_err(|_| std::io::Error::other("response timeout"))?
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[], b"").await
    }

    pub fn with_host(mut self, host: &str) -> Conn {
        self.host = host.to_string();
        self
    }
}

async fn read_response(io: &mut BufReader<Stream>, head_only: bool) -> std::io::Result<Response> {
    let mut line = String::new();
    if io.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers: HashMap<String, String> = HashMap::new();
    loop {
        line.clear();
        io.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            headers.entry(k).and_modify(|e| *e = format!("{e}\n{v}")).or_insert(v);
        }
    }
    let mut body = Vec::new();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        io.read_exact(&mut body).await?;
    } else if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            io.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            if size == 0 {
                line.clear();
                io.read_line(&mut line).await?;
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            io.read_exact(&mut body[start..]).await?;
            line.clear();
            io.read_line(&mut line).await?;
        }
    } else {
        io.read_to_end(&mut body).await?;
    }
    Ok(Response { status, headers, body })
}

/// One request on a fresh connection.
pub async fn get(t: &Target, path: &str) -> std::io::Result<Response> {
    Conn::open(t).await?.get(path).await
}

/// Read a WebSocket until its close frame (within `wait`); the close code, if any.
/// Anything else than messages and a close frame is a failure.
pub async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, wait: Duration) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let frame = tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time");
    frame.map(|f| u16::from(f.code))
}

/// A WebSocket through `t` at `path`.
pub async fn websocket(
    t: &Target,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<Stream>, tokio_tungstenite::tungstenite::Error> {
    let stream = connect(t).await?;
    let scheme = if t.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://localhost{path}");
    let (ws, _resp) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}
