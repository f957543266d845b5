//! An L4 balancer in front of two edges, as tests need one: plain TCP relayed to each
//! edge in turn, with a PROXY protocol v1 header naming the client (the edges list
//! 127.0.0.1 in `trusted_proxies`). Runs on its own runtime, stopped when dropped (so
//! create and drop it outside async code).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// An L4 balancer: accepts on one port and relays each new connection to the next edge in
/// turn, with a PROXY v1 header naming the client. Counts connections per edge.
pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Connections relayed to each edge.
    pub per_edge: Arc<[AtomicU64; 2]>,
    _runtime: tokio::runtime::Runtime,
}

impl RoundRobin {
    pub fn start(edges: [SocketAddr; 2]) -> RoundRobin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind round robin");
        let addr = listener.local_addr().expect("addr");
        let per_edge: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let counts = Arc::clone(&per_edge);
        // Runs until the runtime is dropped with the RoundRobin.
        runtime.spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, peer)) = listener.accept().await {
                let i = next % 2;
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let edge = edges[i];
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(edge).await else {
                        return;
                    };
                    let header = format!(
                        "PROXY TCP4 {} {} {} {}\r\n",
                        peer.ip(),
                        edge.ip(),
                        peer.port(),
                        edge.port()
                    );
                    if up.write_all(header.as_bytes()).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    }
                });
            }
        });
        RoundRobin {
            addr,
            per_edge,
            _runtime: runtime,
        }
    }
}
