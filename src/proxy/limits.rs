//! Limits on what a client controls in a request: head and body size.

use pingora::http::RequestHeader;

/// Size of the request head as received: request line and headers.
pub fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The body length the request declares, if any.
pub fn declared_body(req: &RequestHeader) -> Option<u64> {
    req.headers.get("content-length")?.to_str().ok()?.trim().parse().ok()
}
