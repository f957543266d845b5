//! What a parked HTTP/1 connection (`idle`) holds: nothing but its socket and a small
//! task. When a connection parks, its buffers — the client read buffer, the write
//! buffer, the server read buffer, the head and the response fields — go to a small
//! per-thread stock of spares, and it waits for the client's next bytes by reading into
//! a buffer shared by the thread (used within one poll, never held across one). When
//! bytes come, it takes a set of buffers back (a spare, or new empty ones). So thousands
//! of idle keep-alive connections hold no buffers, and a connection that wakes up reuses
//! warm buffers.
//!
//! This module owns the stock and the idle read; it knows nothing of HTTP.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

use super::head::Field;
use crate::proxy::upstream::AnswerBuf;

/// Sets of buffers kept per thread for the next busy connection.
const STOCK: usize = 16;
/// A buffer bigger than this after a request is freed, not kept (a large head or body).
const KEEP_CAPACITY: usize = 64 * 1024;
/// The shared read buffer's size: what one idle read may take.
const SCRATCH_SIZE: usize = 16 * 1024;

/// The buffers of a connection serving a request.
#[derive(Default)]
pub struct Buffers {
    pub rbuf: Vec<u8>,
    pub wbuf: Vec<u8>,
    /// The server's bytes and answer fields.
    pub answer: AnswerBuf,
    pub raw: Vec<u8>,
    pub fields: Vec<Field>,
}

impl Buffers {
    /// Emptied, and whether each is small enough to keep.
    fn cleared(mut self) -> Option<Buffers> {
        let small = [
            self.rbuf.capacity(),
            self.wbuf.capacity(),
            self.answer.bytes.capacity(),
            self.raw.capacity(),
        ]
        .iter()
        .all(|&c| c <= KEEP_CAPACITY);
        if !small || self.fields.capacity() > super::head::MAX_HEADERS * 2 {
            return None;
        }
        self.rbuf.clear();
        self.wbuf.clear();
        self.answer.bytes.clear();
        self.raw.clear();
        self.fields.clear();
        self.answer.headers.clear();
        Some(self)
    }
}

thread_local! {
    static STOCKED: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Give a connection's buffers back to this thread's stock (or free them).
pub fn put(buffers: Buffers) {
    let Some(b) = buffers.cleared() else { return };
    STOCKED.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < STOCK {
            s.push(b);
        }
    });
}

/// A set of buffers for a connection that has bytes to handle: from the stock, or new.
pub fn take() -> Buffers {
    STOCKED.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Read once from `io` into the thread's shared buffer and hand the bytes to `got`
/// (within the poll); `Ok(0)` is end of stream.
pub async fn read_with<S, F>(io: &mut S, mut got: F) -> std::io::Result<usize>
where
    S: AsyncRead + Unpin,
    F: FnMut(&[u8]),
{
    std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let data = buf.filled();
                    if !data.is_empty() {
                        got(data);
                    }
                    Poll::Ready(Ok(data.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_big_ones_are_freed() {
        let mut b = take();
        b.rbuf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        b.answer.bytes.reserve(16 * 1024);
        put(b);
        let again = take();
        assert!(again.rbuf.is_empty() && again.rbuf.capacity() >= 18, "reused, cleared");
        assert!(again.answer.bytes.capacity() >= 16 * 1024);
        let mut big = again;
        big.wbuf.reserve(KEEP_CAPACITY + 1);
        put(big);
        assert_eq!(take().wbuf.capacity(), 0, "a big set is not kept");
    }

    #[test]
    fn the_stock_is_bounded() {
        for _ in 0..STOCK * 2 {
            let mut b = Buffers::default();
            b.rbuf.reserve(10);
            put(b);
        }
        assert_eq!(STOCKED.with(|s| s.borrow().len()), STOCK);
    }

    #[tokio::test]
    async fn an_idle_read_hands_over_what_arrived() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"hello").await.unwrap();
        let mut got = Vec::new();
        let n = read_with(&mut b, |d| got.extend_from_slice(d)).await.unwrap();
        assert_eq!((n, got.as_slice()), (5, &b"hello"[..]));
        drop(a);
        assert_eq!(read_with(&mut b, |_| panic!("no bytes")).await.unwrap(), 0);
    }
}
