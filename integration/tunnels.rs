//! WebSocket tunnels through edgepin's relay: memory when clients stop reading, and
//! byte-for-byte transparency for what RFC 6455 allows on the wire (fragmented messages,
//! a 16 MiB frame, control frames between fragments, close handshakes started by either
//! end), over ws and wss.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::process::rss_bytes;
use crate::harness::{Backend, Proxy, api_body, client};

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_clients_that_never_read_hold_little_of_the_proxys_memory() {
    let a = Backend::start("a");
    let proxy = Proxy::start(&api_body(&[&a], &[]));
    let pid = proxy.proc.pid();
    // Warm the proxy up (threads, buffers) before the baseline.
    for _ in 0..4 {
        let mut ws = client::websocket(&proxy.plain(), "/ws").await.unwrap();
        let _ = futures_util::StreamExt::next(&mut ws).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(pid);
    let mut held = Vec::new();
    for _ in 0..1000 {
        // Each server pushes 1 MiB; the client takes the 101 and never reads again.
        let ws = tokio::time::timeout(
            Duration::from_secs(10),
            client::websocket(&proxy.plain(), "/push/1048576"),
        )
        .await
        .expect("upgrade in time")
        .expect("upgrade");
        held.push(ws);
    }
    // Let the servers push until every tunnel is stalled.
    let started = Instant::now();
    let mut peak = rss_bytes(pid);
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes(pid));
    }
    let per_tunnel = peak.saturating_sub(before) / 1000;
    eprintln!("proxy RSS grew {} KiB per stalled tunnel", per_tunnel / 1024);
    assert!(per_tunnel < 256 * 1024, "{} KiB per stalled tunnel", per_tunnel / 1024);
    // The proxy goes on serving others meanwhile.
    for _ in 0..10 {
        assert_eq!(client::get(&proxy.plain(), "/").await.unwrap().status, 200);
    }
    let stats = proxy.backend_stats("api").await;
    assert_eq!(stats["counters"]["websocket"]["open"].as_u64(), Some(1000), "{stats}");
    drop(held);
}

/// A WebSocket frame as RFC 6455 §5.2 lays it out.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A server that completes the WebSocket handshake itself and then hands over the raw
/// stream. Health checks (TCP connects, `GET /health`) on the listener are passed over.
async fn raw_ws_server(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        if !text.ends_with("\r\n\r\n") || text.starts_with("GET /health") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
            continue;
        }
        let key = text
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
            })
            .map(|(_, v)| v.trim().to_string())
            .expect("key");
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        return s;
    }
}

/// Read exactly `n` bytes within `wait`.
async fn read_n<S: AsyncRead + Unpin>(s: &mut S, n: usize, wait: Duration) -> Vec<u8> {
    let mut out = vec![0u8; n];
    tokio::time::timeout(wait, s.read_exact(&mut out))
        .await
        .expect("bytes in time")
        .expect("read");
    out
}

/// The client's upgrade through the proxy; returns the stream after the 101 head.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(
        b"GET /raw HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
}

/// Both directions carry the same conversation a WebSocket library would have, and
/// each end receives exactly the bytes the other sent.
async fn conversation<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    server: &mut tokio::net::TcpStream,
    server_closes: bool,
) {
    let key = Some([1, 2, 3, 4]);
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    // Client → server: a text message in three fragments with a ping between them, then
    // the 16 MiB binary message.
    let mut up = Vec::new();
    up.extend(frame(false, 0x1, b"frag", key));
    up.extend(frame(false, 0x0, b"men", key));
    up.extend(frame(true, 0x9, b"ping!", key));
    up.extend(frame(true, 0x0, b"ted", key));
    up.extend(frame(true, 0x2, &big, key));
    let (mut cr, mut cw) = tokio::io::split(client);
    let writer = async {
        cw.write_all(&up).await.unwrap();
        // Over TLS the last records may still sit in the client's session (tokio-rustls
        // takes plaintext it cannot send yet): without a flush they never leave.
        cw.flush().await.unwrap();
        cw
    };
    let reader = read_n(server, up.len(), Duration::from_secs(30));
    let (cw, got) = tokio::join!(writer, reader);
    assert!(got == up, "the server got other bytes than the client sent");
    // Server → client: the pong, a fragmented binary message, a large text frame.
    let mut down = Vec::new();
    down.extend(frame(true, 0xA, b"ping!", None));
    down.extend(frame(false, 0x2, &big[..1000], None));
    down.extend(frame(true, 0x0, &big[1000..300_000], None));
    down.extend(frame(true, 0x1, "é".repeat(40_000).as_bytes(), None));
    let writer = async { server.write_all(&down).await.unwrap() };
    let reader = read_n(&mut cr, down.len(), Duration::from_secs(30));
    let ((), got) = tokio::join!(writer, reader);
    assert!(got == down, "the client got other bytes than the server sent");
    let mut client = cr.unsplit(cw);
    // The close handshake, started by either end, goes through as sent.
    let close_up = frame(true, 0x8, &[0x03, 0xE8, b'b', b'y', b'e'], key);
    let close_down = frame(true, 0x8, &[0x03, 0xE8], None);
    if server_closes {
        server.write_all(&close_down).await.unwrap();
        assert_eq!(
            read_n(&mut client, close_down.len(), Duration::from_secs(5)).await,
            close_down
        );
        client.write_all(&close_up).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_n(server, close_up.len(), Duration::from_secs(5)).await, close_up);
        server.shutdown().await.unwrap();
    } else {
        client.write_all(&close_up).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_n(server, close_up.len(), Duration::from_secs(5)).await, close_up);
        server.write_all(&close_down).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(
            read_n(&mut client, close_down.len(), Duration::from_secs(5)).await,
            close_down
        );
    }
    // Then the server's end reaches the client as the end of the stream.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("end in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the close: {rest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_passes_every_frame_byte_for_byte_both_ways_over_ws_and_wss() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let body = format!(
        "routes:\n  - {{ path_prefix: /, backend: raw }}\nbackends:\n  raw: {{ servers: [r] }}\nservers:\n  r: {{ address: {addr} }}\n\
         health: {{ mode: tcp, interval: 5s }}\n"
    );
    let proxy = Proxy::start(&body);
    for (tls, server_closes) in [(false, false), (false, true), (true, false), (true, true)] {
        let target = if tls { proxy.tls() } else { proxy.plain() };
        let mut c = client::connect(&target).await.unwrap();
        let (_, mut server) = tokio::join!(upgrade(&mut c), raw_ws_server(&listener));
        conversation(&mut c, &mut server, server_closes).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_tunnels_with_a_close_frame_then_exits() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let a = Backend::start("a");
    let mut proxy = Proxy::start(&api_body(&[&a], &[]));
    let mut sockets = Vec::new();
    for target in [proxy.plain(), proxy.tls()] {
        let mut ws = client::websocket(&target, "/ws").await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))), "the hello");
        sockets.push(ws);
    }
    proxy.proc.signal(nix::sys::signal::Signal::SIGTERM);
    for mut ws in sockets {
        assert_eq!(client::close_code(&mut ws, Duration::from_secs(5)).await, Some(1001));
    }
    let status = proxy.proc.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}
