//! HTTP/2 clients for the tests: the h2 crate's client over TLS with ALPN h2, a request
//! helper, WebSockets over HTTP/2 (RFC 8441 extended CONNECT, framed by
//! tokio-tungstenite), and raw frames for the hostile shapes a real client never sends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::client;

/// TLS with ALPN h2 to the https listener, nothing sent yet.
pub async fn tls(addr: SocketAddr) -> TlsStream<tokio::net::TcpStream> {
    let mut config = (*client::tls_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    // The harness waits for the http listener; pingora binds each listener in a task of
    // its own, so the https one may come a moment later (refused until then: bounded).
    let mut tries = 0;
    let tcp = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 40 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => break other.unwrap(),
        }
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// An HTTP/2 connection (ALPN h2 only) to the https listener.
pub async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    connect_with(addr, &h2::client::Builder::new()).await
}

/// An HTTP/2 connection with the client settings of `builder`.
pub async fn connect_with(addr: SocketAddr, builder: &h2::client::Builder) -> SendRequest<Bytes> {
    let tls = tls(addr).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 negotiated");
    let (send, conn) = builder.handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// GET `path` over an h2 connection: status and body.
pub async fn get(send: &mut SendRequest<Bytes>, path: &str) -> Option<(u16, Vec<u8>)> {
    let req = http::Request::get(format!("https://localhost{path}")).body(()).ok()?;
    request(send, req).await
}

/// Send `req` (no body) and read the whole answer: status and body.
pub async fn request(send: &mut SendRequest<Bytes>, req: http::Request<()>) -> Option<(u16, Vec<u8>)> {
    let mut ready = send.clone().ready().await.ok()?;
    let (resp, _) = ready.send_request(req, true).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    *send = ready;
    Some((status, out))
}

/// A WebSocket over HTTP/2 (RFC 8441): an extended CONNECT to `path` on `send`'s
/// connection. `Err(status)` when the proxy or the server refuses it.
pub async fn websocket(send: &SendRequest<Bytes>, path: &str) -> Result<WebSocketStream<ClientStream>, u16> {
    let mut ready = send.clone().ready().await.map_err(|_| 0u16)?;
    // The server's SETTINGS say whether it takes extended CONNECT.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready.is_extended_connect_protocol_enabled() {
        assert!(
            Instant::now() < deadline,
            "no SETTINGS_ENABLE_CONNECT_PROTOCOL from the proxy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        ready = ready.ready().await.map_err(|_| 0u16)?;
    }
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())
        .unwrap();
    let (resp, sending) = ready.send_request(req, false).map_err(|_| 0u16)?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .map_err(|_| 0u16)?
        .map_err(|_| 0u16)?;
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let io = ClientStream {
        send: sending,
        recv: resp.into_body(),
        unread: Bytes::new(),
    };
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, None).await)
}

/// A client's extended-CONNECT stream as a byte pipe.
pub struct ClientStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    unread: Bytes,
}

fn io_error(e: h2::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.send.reserve_capacity(data.len());
        loop {
            let room = this.send.capacity();
            if room > 0 || data.is_empty() {
                let n = room.min(data.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&data[..n]), false)
                    .map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.get_mut().send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// The client preface and an empty SETTINGS frame: what a raw client sends first.
pub fn preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    out
}

/// One HTTP/2 frame.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK: `GET https://localhost/` from the static table, `:authority` literal.
pub fn get_root() -> Vec<u8> {
    [&[0x82u8, 0x87, 0x84, 0x01, 0x09][..], b"localhost"].concat()
}

/// HPACK: a literal field, not indexed, new name (RFC 7541 §6.2.2), lengths < 127.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// HPACK: a literal field with a value of any length (7-bit prefix integer).
pub fn literal_long(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    assert!(name.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    let mut n = value.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(value);
}

/// A frame the proxy sent.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Read frames until `stop` says so, the connection closes or `wait` passes; returns
/// them all (the server's preface included).
pub async fn read_frames<S>(io: &mut S, wait: Duration, mut stop: impl FnMut(&Frame) -> bool) -> Vec<Frame>
where
    S: AsyncRead + Unpin,
{
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            let done = stop(&f);
            frames.push(f);
            if done {
                return frames;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return frames,
        }
    }
}

/// The error code of a GOAWAY frame.
pub fn goaway_code(f: &Frame) -> Option<u32> {
    (f.kind == 0x7 && f.payload.len() >= 8)
        .then(|| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}

/// The status of a HEADERS frame the proxy sent (`:status` from the static table, or a
/// literal `:status` with incremental indexing as the h2 crate encodes uncommon codes).
pub fn status_of(f: &Frame) -> Option<u16> {
    if f.kind != 0x1 {
        return None;
    }
    let p = &f.payload;
    let indexed = [
        (0x88u8, 200u16),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
        (0x8d, 404),
        (0x8e, 500),
    ];
    if let Some((_, s)) = indexed.iter().find(|(b, _)| p.first() == Some(b)) {
        return Some(*s);
    }
    // Literal with an indexed name (:status is index 8): 0x48 or 0x08, then length 3.
    if p.len() >= 5 && (p[0] & 0x0f) == 0x08 && p[1] == 3 {
        return std::str::from_utf8(&p[2..5]).ok()?.parse().ok();
    }
    None
}
