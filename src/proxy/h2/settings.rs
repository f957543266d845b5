//! The HTTP/2 settings edgepin offers and the limits it holds a client connection to:
//! how many streams a client may open at once, how big its header lists may be, how
//! many streams it may get reset before the connection is closed with
//! `GOAWAY(ENHANCE_YOUR_CALM)` (the guard against "rapid reset" floods, CVE-2023-44487,
//! where a client opens and cancels streams faster than any concurrency limit sees
//! them), how much it may make edgepin buffer, and that WebSockets may ride a stream
//! (RFC 8441's `SETTINGS_ENABLE_CONNECT_PROTOCOL`).
//!
//! The h2 crate enforces these; CONTINUATION floods (CVE-2024-27316: header blocks that
//! never end) are bounded by the header list size, from which the crate derives how many
//! CONTINUATION frames one block may take. This module only builds the
//! `h2::server::Builder`; it does no I/O.

use std::time::Duration;

/// The HTTP/2 limits edgepin applies. Documented in README ("HTTP/2").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Streams reset by the client before edgepin accepted them, pending at once: more
    /// is a flood, answered with GOAWAY(ENHANCE_YOUR_CALM).
    pub max_pending_accept_reset_streams: usize,
    /// Streams edgepin had to reset because the client broke the protocol, over the
    /// connection's life: more closes it with GOAWAY(ENHANCE_YOUR_CALM).
    pub max_local_error_reset_streams: usize,
    /// Reset streams whose state is kept (to tell late frames from protocol errors).
    pub max_concurrent_reset_streams: usize,
    /// How long a reset stream's state is kept.
    pub reset_stream_duration: Duration,
    /// Bytes buffered per stream toward the client before flow control pushes back.
    pub max_send_buffer_size: usize,
    /// Request body bytes a stream may send before edgepin has passed them on
    /// (SETTINGS_INITIAL_WINDOW_SIZE), and all streams of a connection together (the
    /// connection window): what a client can make edgepin hold of its uploads.
    pub receive_window: u32,
    /// Longest wait for the client's window while an answer is being passed on (at most
    /// `timeouts.client`): a stream that gets none is reset, and gives back the server
    /// connection it holds.
    pub window_stall: Duration,
}

pub const H2_LIMITS: H2Limits = H2Limits {
    max_concurrent_streams: 128,
    max_pending_accept_reset_streams: 20,
    max_local_error_reset_streams: 64,
    max_concurrent_reset_streams: 64,
    reset_stream_duration: Duration::from_secs(1),
    max_send_buffer_size: 256 * 1024,
    receive_window: 65_535,
    window_stall: Duration::from_secs(10),
};

/// How long a stream may wait for the client's window: [`H2Limits::window_stall`], or
/// `timeouts.client` if shorter.
pub fn stall_deadline(client_timeout: Duration) -> Duration {
    H2_LIMITS.window_stall.min(client_timeout)
}

/// The header list a client may send, for `limits.max_header_bytes`: HTTP/2 counts each
/// field as name + value + 32 bytes, so the cap is set a little higher and the engine's
/// own 431 check applies the exact limit.
pub fn header_list_limit(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// `h2::server::Builder` for a client connection.
pub fn builder(max_header_bytes: usize) -> h2::server::Builder {
    let l = H2_LIMITS;
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(l.max_concurrent_streams)
        .max_header_list_size(header_list_limit(max_header_bytes))
        .max_pending_accept_reset_streams(l.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(l.max_local_error_reset_streams))
        .max_concurrent_reset_streams(l.max_concurrent_reset_streams)
        .reset_stream_duration(l.reset_stream_duration)
        .max_send_buffer_size(l.max_send_buffer_size)
        .initial_window_size(l.receive_window)
        .initial_connection_window_size(l.receive_window)
        .enable_connect_protocol();
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_carries_the_limits() {
        let b = builder(16 * 1024);
        let debug = format!("{b:?}");
        assert!(debug.contains("max_concurrent_streams: 128"), "{debug}");
        assert!(debug.contains("max_header_list_size: 32768"), "{debug}");
        assert!(debug.contains("enable_connect_protocol: 1"), "{debug}");
        assert!(debug.contains("pending_accept_reset_stream_max: 20"), "{debug}");
        assert!(debug.contains("local_max_error_reset_streams: Some(64)"), "{debug}");
    }

    #[test]
    fn a_huge_header_limit_saturates() {
        assert_eq!(header_list_limit(usize::MAX), u32::MAX);
    }
}
