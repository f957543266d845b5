//! Acknowledgements of a broadcast that spans servers: this worker's clients' acks (from
//! `sio`) merged with those other servers relay over Redis. The other servers first
//! say how many acks to expect (`BROADCAST_CLIENT_COUNT`), then relay each one
//! (`BROADCAST_ACK`); the stream ends when every server's acks are in or the timeout passes.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::stream::FusedStream;
use socketioxide_core::adapter::AckStreamItem;
use socketioxide_core::{Sid, Value};
use tokio::sync::mpsc;

use super::redis_link::Responses;

/// Local acks, then or meanwhile remote ones. A remote ack carries no socket id on the
/// wire: it comes with `Sid::ZERO`.
pub struct MergedAcks<S, Err> {
    local: Pin<Box<S>>,
    local_done: bool,
    remote: Option<mpsc::UnboundedReceiver<Value>>,
    _error: PhantomData<fn() -> Err>,
}

impl<S, Err> MergedAcks<S, Err>
where
    S: Stream<Item = AckStreamItem<Err>> + FusedStream + Send + 'static,
{
    /// This worker's acks only.
    pub fn local(local: S) -> Self {
        MergedAcks {
            local: Box::pin(local),
            local_done: false,
            remote: None,
            _error: PhantomData,
        }
    }

    /// Also the acks relayed in `responses` by `servers` other servers, up to `timeout`.
    pub fn with_remote(local: S, responses: Responses, servers: usize, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(relay(responses, servers, timeout, tx));
        MergedAcks {
            remote: Some(rx),
            ..MergedAcks::local(local)
        }
    }
}

/// Forward remote acks until every server's count is reached or `timeout` passes.
async fn relay(mut responses: Responses, servers: usize, timeout: Duration, tx: mpsc::UnboundedSender<Value>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut counted, mut expected, mut got) = (0usize, 0u64, 0u64);
    while counted < servers || got < expected {
        let Ok(Some(response)) = tokio::time::timeout_at(deadline, responses.next()).await else {
            break;
        };
        if let Some(n) = response.client_count() {
            counted += 1;
            expected += n;
        } else if let Some(ack) = response.ack() {
            got += 1;
            if tx.send(ack).is_err() {
                break;
            }
        }
    }
}

impl<S, Err> Stream for MergedAcks<S, Err>
where
    S: Stream<Item = AckStreamItem<Err>> + FusedStream,
{
    type Item = AckStreamItem<Err>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if !this.local_done {
            match this.local.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
                Poll::Ready(None) => this.local_done = true,
                Poll::Pending => {}
            }
        }
        if let Some(remote) = this.remote.as_mut() {
            match remote.poll_recv(cx) {
                Poll::Ready(Some(value)) => return Poll::Ready(Some((Sid::ZERO, Ok(value)))),
                Poll::Ready(None) => this.remote = None,
                Poll::Pending => {}
            }
        }
        if this.local_done && this.remote.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl<S, Err> FusedStream for MergedAcks<S, Err>
where
    S: Stream<Item = AckStreamItem<Err>> + FusedStream,
{
    fn is_terminated(&self) -> bool {
        self.local_done && self.remote.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    type Item = AckStreamItem<std::io::Error>;

    fn value(s: &str) -> Value {
        Value::Str(socketioxide_core::Str::from(s.to_string()), None)
    }

    #[tokio::test]
    async fn local_and_remote_acks_are_merged_and_the_stream_ends() {
        let sid = Sid::new();
        let local = futures_util::stream::iter(vec![(sid, Ok(value("[1]")))] as Vec<Item>).fuse();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut merged = MergedAcks {
            remote: Some(rx),
            ..MergedAcks::local(local)
        };
        tx.send(value("[2]")).unwrap();
        drop(tx);
        let items: Vec<(Sid, Value)> = merged.by_ref().map(|(s, v)| (s, v.unwrap())).collect().await;
        assert_eq!(items, vec![(sid, value("[1]")), (Sid::ZERO, value("[2]"))]);
        assert!(merged.is_terminated());
    }
}
