//! A backend that breaks the rules on purpose, for the tests of what edgepin does then:
//! plain tokio on a raw socket, in the test's runtime.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a [`rude_backend`] answers requests other than `/health`.
#[derive(Clone, Copy)]
pub enum Rude {
    /// `101` with `Upgrade: foo` to anything with `transport=websocket`, else 200.
    Always101,
    /// Never answers `/hang…`, else 200.
    Hang,
    /// Answers the first request of a connection (keep-alive, 200), then closes the
    /// connection when the next request comes, without an answer.
    OncePerConnection,
    /// Answers a request with a body `413` as soon as its head is in, and closes without
    /// reading the body (Go, nginx and hyper servers do this); 200 otherwise.
    RefuseBodies,
}

/// A backend that breaks the rules on purpose (plain tokio, in the test's runtime).
pub fn rude_backend(mode: Rude) -> std::net::SocketAddr {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0u32;
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let answer: &[u8] = match mode {
                            _ if head.starts_with("GET /health") => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                            Rude::Always101 if head.contains("transport=websocket") => {
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"
                            }
                            Rude::Hang if head.contains(" /hang") => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            Rude::OncePerConnection if answered > 0 => return,
                            Rude::RefuseBodies if head.to_ascii_lowercase().contains("content-length") => {
                                let _ = s
                                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                    .await;
                                return;
                            }
                            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
                        };
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                }
            });
        }
    });
    addr
}
