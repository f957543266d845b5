//! A stream's request body as an attempt sends it: the HTTP/2 engine's side of
//! `upstream::Client`. DATA frames are framed for HTTP/1.1 as they come (chunked when the
//! client gave no length), bounded by `limits.max_body_bytes` and `timeouts.client`, and
//! credited back to the client (its flow-control window) only once the server has them.
//! The client is "gone" when it resets the stream or the connection breaks; a `103`
//! goes on to it as an informational response.

use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;

use crate::failure::Failure;
use crate::proxy::upstream::Client;
use crate::proxy::upstream::head::{Header, Parsed};

use super::answer;
use super::flow::{self, RecvStop};

/// One attempt's view of the stream's request body.
pub(super) struct Upload<'a> {
    recv: &'a mut RecvStream,
    respond: &'a mut SendResponse<Bytes>,
    /// Framed body bytes the server has not had yet (`ready[sent..]`).
    ready: Vec<u8>,
    sent: usize,
    /// DATA bytes in `ready` not yet credited back to the client.
    uncredited: usize,
    chunked: bool,
    /// No more DATA will come.
    ended: bool,
    limit: u64,
    wait: Duration,
    /// DATA bytes received.
    pub received: u64,
}

impl<'a> Upload<'a> {
    /// A body to stream (`chunked`: of unknown length) or, with `ended`, none (no body, or
    /// one read whole and sent with the head).
    pub fn new(
        recv: &'a mut RecvStream,
        respond: &'a mut SendResponse<Bytes>,
        chunked: bool,
        ended: bool,
        limit: u64,
        wait: Duration,
    ) -> Self {
        Upload {
            recv,
            respond,
            ready: Vec::new(),
            sent: 0,
            uncredited: 0,
            chunked,
            ended,
            limit,
            wait,
            received: 0,
        }
    }
}

impl Client for Upload<'_> {
    fn ready(&self) -> &[u8] {
        &self.ready[self.sent..]
    }

    fn sent(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.ready.len() {
            self.ready.clear();
            self.sent = 0;
            flow::credit(self.recv, std::mem::take(&mut self.uncredited));
        }
    }

    fn complete(&self) -> bool {
        self.ended
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        if self.ended {
            return Ok(());
        }
        match flow::next_data(self.recv, self.wait).await {
            Ok(Some(data)) => {
                self.received += data.len() as u64;
                if self.received > self.limit {
                    return Err(Failure::BodyTooLarge);
                }
                if self.chunked {
                    self.ready.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    self.ready.extend_from_slice(&data);
                    self.ready.extend_from_slice(b"\r\n");
                } else {
                    self.ready.extend_from_slice(&data);
                }
                self.uncredited += data.len();
                Ok(())
            }
            Ok(None) => {
                self.ended = true;
                if self.chunked {
                    self.ready.extend_from_slice(b"0\r\n\r\n");
                }
                Ok(())
            }
            Err(RecvStop::Stalled) => Err(Failure::BodyStalled),
            Err(RecvStop::Gone) => Err(Failure::ClientGone),
        }
    }

    async fn left(&mut self) {
        let _ = std::future::poll_fn(|cx| self.respond.poll_reset(cx)).await;
    }

    async fn interim(&mut self, raw: &[u8], parsed: &Parsed, headers: &[Header]) -> Result<(), Failure> {
        // 103 Early Hints goes on; other interim answers mean nothing to an HTTP/2 client.
        if parsed.status == 103
            && let Some(resp) = answer::response(raw, parsed, headers, answer::Added::default())
        {
            let _ = self.respond.send_informational(resp);
        }
        Ok(())
    }
}
