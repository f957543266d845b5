//! The opening request of a Socket.IO session, made to own its bytes before socketioxide
//! keeps it. engineioxide stores the head of the request that opened a session (its URI,
//! headers and extensions) for as long as the session lives, and hyper parses that head
//! without copying: the URI and every header value are slices of the connection's read
//! buffer (8 to 16 KiB). Kept, they keep the whole buffer alive, which was half of an idle
//! client's memory (massif, benches/README.md). [`own`] copies the URI and the values into
//! allocations of their own size, and so the copy of the URI axum keeps as an extension.
//!
//! It changes no value a handler can see (same URI, same headers in the same order, same
//! peer address) and must stay cheap: it runs once per session, never per message.

use axum::extract::OriginalUri;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Uri};

/// Make `parts` own its bytes: the URI (also axum's `OriginalUri`) and the header values
/// are copied. (The other extensions, the peer address and hyper's, hold no slice of the
/// request.)
pub fn own(parts: &mut Parts) {
    parts.uri = owned_uri(&parts.uri);
    if let Some(OriginalUri(original)) = parts.extensions.get_mut::<OriginalUri>() {
        *original = owned_uri(original);
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        headers.append(name.clone(), owned_value(value));
    }
    parts.headers = headers;
}

/// The same URI in a buffer of its own. (Header names need no copy: `HeaderName` copies
/// the names it does not know when it parses them, and the known ones are static.)
fn owned_uri(uri: &Uri) -> Uri {
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

fn owned_value(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(mut copy) => {
            copy.set_sensitive(value.is_sensitive());
            copy
        }
        // Bytes hyper let through that `from_bytes` refuses (obs-text is allowed by both):
        // keep the original rather than lose the header.
        Err(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::extract::connect_info::ConnectInfo;
    use axum::http::Request;
    use std::net::SocketAddr;

    /// Whether `part` lies inside `buffer`'s allocation.
    fn inside(part: &[u8], buffer: &Bytes) -> bool {
        let (start, end) = (buffer.as_ptr() as usize, buffer.as_ptr() as usize + buffer.len());
        (start..end).contains(&(part.as_ptr() as usize))
    }

    /// Request parts whose URI and header values are slices of one read buffer, as
    /// hyper's parser makes them.
    fn parsed(buffer: &Bytes) -> Parts {
        let text = std::str::from_utf8(buffer).unwrap();
        let slice = |s: &str| {
            let at = text.find(s).unwrap();
            buffer.slice(at..at + s.len())
        };
        let uri = Uri::from_maybe_shared(slice("/socket.io/?EIO=4&transport=websocket")).unwrap();
        let (mut parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
        parts
            .headers
            .append("host", HeaderValue::from_maybe_shared(slice("example.com")).unwrap());
        parts
            .headers
            .append("x-custom", HeaderValue::from_maybe_shared(slice("one")).unwrap());
        parts
            .headers
            .append("x-custom", HeaderValue::from_maybe_shared(slice("two")).unwrap());
        let mut secret = HeaderValue::from_maybe_shared(slice("Bearer t")).unwrap();
        secret.set_sensitive(true);
        parts.headers.append("authorization", secret);
        let peer: SocketAddr = "127.0.0.7:4000".parse().unwrap();
        parts.extensions.insert(ConnectInfo(peer));
        parts.extensions.insert(OriginalUri(parts.uri.clone()));
        parts.extensions.insert(7u32); // anything else a layer added
        parts
    }

    #[test]
    fn the_kept_head_owns_its_bytes_and_says_the_same() {
        let buffer = Bytes::from(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: example.com\r\n\
             x-custom: one\r\nx-custom: two\r\nauthorization: Bearer t\r\n\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut parts = parsed(&buffer);
        let before = (parts.uri.clone(), parts.headers.clone());
        assert!(
            inside(parts.uri.path().as_bytes(), &buffer),
            "the test builds shared parts"
        );

        own(&mut parts);

        assert_eq!((&parts.uri, &parts.headers), (&before.0, &before.1));
        let order: Vec<_> = parts.headers.get_all("x-custom").iter().collect();
        assert_eq!(order, ["one", "two"]);
        assert!(parts.headers["authorization"].is_sensitive());
        assert!(!inside(parts.uri.path().as_bytes(), &buffer));
        assert!(!inside(parts.uri.query().unwrap().as_bytes(), &buffer));
        for value in parts.headers.values() {
            assert!(!inside(value.as_bytes(), &buffer), "{value:?} still in the read buffer");
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().unwrap().0;
        assert_eq!(peer, "127.0.0.7:4000".parse::<SocketAddr>().unwrap());
        let original = &parts.extensions.get::<OriginalUri>().unwrap().0;
        assert_eq!(original, &before.0);
        assert!(!inside(original.path().as_bytes(), &buffer));
        assert_eq!(parts.extensions.get::<u32>(), Some(&7));
    }
}
