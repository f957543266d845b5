//! HTTP/2 server limits for the https listener (`tls.h2: true`): how many streams a
//! client may open at once, how big its header lists may be, and how many streams it may
//! get reset before the connection is closed with `GOAWAY(ENHANCE_YOUR_CALM)` — the
//! guard against "rapid reset" floods (CVE-2023-44487), where a client opens and cancels
//! streams faster than any concurrency limit can see them.
//!
//! It only builds `h2::server::Builder` options; the engine that runs HTTP/2 (pingora's
//! `HttpProxy`, through its `h2_options` field) applies them.

use std::time::Duration;

use pingora::protocols::http::v2::server::H2Options;

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
}

pub const H2_LIMITS: H2Limits = H2Limits {
    max_concurrent_streams: 128,
    max_pending_accept_reset_streams: 20,
    max_local_error_reset_streams: 64,
    max_concurrent_reset_streams: 64,
    reset_stream_duration: Duration::from_secs(1),
    max_send_buffer_size: 256 * 1024,
};

/// `h2::server::Builder` options for client connections. `max_header_bytes` is
/// `limits.max_header_bytes`: the header list a client may send (HTTP/2 counts each
/// field as name + value + 32 bytes, so the cap is set a little higher and the proxy's
/// own 431 check applies the exact limit).
pub fn h2_options(max_header_bytes: usize) -> H2Options {
    let l = H2_LIMITS;
    let mut b = H2Options::new();
    b.max_concurrent_streams(l.max_concurrent_streams)
        .max_header_list_size(u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(l.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(l.max_local_error_reset_streams))
        .max_concurrent_reset_streams(l.max_concurrent_reset_streams)
        .reset_stream_duration(l.reset_stream_duration)
        .max_send_buffer_size(l.max_send_buffer_size);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_the_limits() {
        let b = h2_options(16 * 1024);
        let debug = format!("{b:?}");
        assert!(debug.contains("max_concurrent_streams: 128"), "{debug}");
        assert!(debug.contains("max_header_list_size: 32768"), "{debug}");
        assert!(debug.contains("pending_accept_reset_stream_max: 20"), "{debug}");
        assert!(debug.contains("local_max_error_reset_streams: Some(64)"), "{debug}");
    }
}
