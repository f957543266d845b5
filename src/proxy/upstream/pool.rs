//! Upstream connections: opened under `timeouts.connect`, and kept alive between
//! requests in a pool per server address. The pool is a stack per address behind one
//! lock: no task per idle connection; an idle connection is checked before reuse (a
//! server that closed it while idle has made it readable) and closed once it has been
//! idle longer than [`IDLE`], by the sweep that housekeeping runs and at the next take.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// How long an idle upstream connection is kept. Node.js closes idle keep-alive
/// connections after 5 s by default; staying under that avoids reusing a connection the
/// server is closing.
pub const IDLE: Duration = Duration::from_secs(4);

/// Idle connections kept per server address.
pub const PER_SERVER: usize = 64;

/// Why a connection to a server could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    Refused,
    TimedOut,
    Other,
}

/// Open a connection to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(ConnectError::TimedOut),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(ConnectError::Refused),
        Ok(Err(_)) => Err(ConnectError::Other),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// Idle keep-alive connections by server address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.len()).finish()
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection to `addr` that is still good.
    pub fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let now = Instant::now();
        loop {
            let idle = {
                let mut pool = self.lock();
                pool.get_mut(&addr)?.pop()?
            };
            if now.duration_since(idle.since) < IDLE && still_open(&idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Keep `stream` for the next request to `addr`.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut pool = self.lock();
        let stack = pool.entry(addr).or_default();
        if stack.len() < PER_SERVER {
            stack.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    /// Close connections idle longer than [`IDLE`]; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut closed = 0;
        let mut pool = self.lock();
        pool.retain(|_, stack| {
            let before = stack.len();
            // Oldest first: the stack grows at the end.
            let fresh = stack.partition_point(|i| now.duration_since(i.since) >= IDLE);
            stack.drain(..fresh);
            closed += before - stack.len();
            !stack.is_empty()
        });
        closed
    }

    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An idle connection is good if reading would block: no EOF and no unasked bytes.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let client = connect(addr, Duration::from_secs(1)).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        pool.put(addr, client);
        assert_eq!(pool.len(), 1);
        server.shutdown().await.unwrap();
        drop(server);
        // Let the close arrive and the runtime see it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(addr).is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn a_live_idle_connection_is_reused_and_old_ones_are_swept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let client = connect(addr, Duration::from_secs(1)).await.unwrap();
        let _server = listener.accept().await.unwrap();
        pool.put(addr, client);
        let again = pool.take(addr).expect("reused");
        pool.put(addr, again);
        assert_eq!(pool.sweep(), 0);
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(
            connect(addr, Duration::from_secs(1)).await.unwrap_err(),
            ConnectError::Refused
        );
    }
}
