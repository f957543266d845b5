//! The PROXY protocol (v1 text and v2 binary), as sent by an L4 load balancer in front
//! of edgepin: the real client address arrives before any HTTP or TLS byte.
//!
//! Only peers in `trusted_proxies` are read this way, and from them the header is
//! required (like HAProxy's `accept-proxy` limited to known sources); a connection from
//! anyone else is served as it is, so nobody outside can claim another address.
//!
//! A relayed connection whose client the balancer cannot name (`UNKNOWN`, or an address
//! family we do not read) gets the unspecified address as its peer: an L4 balancer does
//! not clean HTTP headers, so the client's X-Forwarded-For must not ride on the
//! balancer's trust. `LOCAL` (the balancer's own connection, e.g. a health check) keeps
//! the balancer as the peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use pingora::{Error, ErrorType, OrErr, Result};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::Network;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes; v2 headers we accept are at most this long.
const MAX_HEADER: usize = 1024;

/// The result of looking at the first bytes of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// More bytes are needed.
    Incomplete,
    /// Not a PROXY header.
    Invalid(&'static str),
    /// A header of `len` bytes.
    Complete { len: usize, source: Source },
}

/// Who the header says the connection is from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// A relayed client at this address.
    Client(SocketAddr),
    /// A relayed client the balancer cannot name.
    Unknown,
    /// The balancer itself (v2 LOCAL).
    Local,
}

pub fn parse(buf: &[u8]) -> Header {
    if buf.len() >= 12 && &buf[..12] == V2_SIGNATURE {
        return parse_v2(buf);
    }
    if !V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) || buf.is_empty() {
        return parse_v1(buf);
    }
    Header::Incomplete
}

fn parse_v1(buf: &[u8]) -> Header {
    if !b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return Header::Invalid("not a PROXY protocol header");
    }
    // At most 107 bytes with the CRLF (the spec's limit), however the bytes arrived.
    let end = match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= 105 => end,
        Some(_) => return Header::Invalid("PROXY v1 line too long"),
        None if buf.len() > 107 => return Header::Invalid("PROXY v1 line too long"),
        None => return Header::Incomplete,
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Header::Invalid("PROXY v1 line is not text");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Complete {
            len,
            source: Source::Unknown,
        },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| match (*family, s.parse::<IpAddr>()) {
                ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => Some(ip),
                _ => None,
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(ip), Some(_), Some(port), Some(_)) => Header::Complete {
                    len,
                    source: Source::Client(SocketAddr::new(ip, port)),
                },
                _ => Header::Invalid("PROXY v1 addresses do not parse"),
            }
        }
        _ => Header::Invalid("PROXY v1 line is malformed"),
    }
}

/// A v1 port: 1 to 5 digits, nothing else (no sign), 0–65535.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Header {
    if buf.len() < 16 {
        return Header::Incomplete;
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Header::Invalid("PROXY v2 version is not 2");
    }
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > MAX_HEADER {
        return Header::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Header::Incomplete;
    }
    let addrs = &buf[16..len];
    let source = match (ver_cmd & 0x0f, family >> 4) {
        // LOCAL: the balancer's own connection (a health check); keep the peer address.
        (0, _) => Source::Local,
        (1, 1) if addrs.len() >= 12 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            Source::Client(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([addrs[8], addrs[9]]),
            ))
        }
        (1, 2) if addrs.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addrs[..16]);
            Source::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([addrs[32], addrs[33]]),
            ))
        }
        (1, 1 | 2) => return Header::Invalid("PROXY v2 address block too short"),
        (1, _) => Source::Unknown,
        _ => return Header::Invalid("PROXY v2 command is unknown"),
    };
    Header::Complete { len, source }
}

/// If `peer` is trusted, read its PROXY header from `stream` (within `timeout`) and
/// return the declared client as the connection's peer; anyone else's `peer` as it is.
/// The header is taken by peeking and then reading exactly its bytes, so the bytes after
/// it stay in the socket for TLS or HTTP.
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[Network],
    timeout: Duration,
) -> Result<SocketAddr> {
    if !Network::any_contains(trusted, peer.ip()) {
        return Ok(peer);
    }
    let read = async {
        // The header's bytes seen so far (taken from the socket, but for the last peek's).
        let mut buf = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        loop {
            let n = stream
                .peek(&mut chunk)
                .await
                .or_err(ErrorType::ReadError, "reading the PROXY header")?;
            if n == 0 {
                return Error::e_explain(ErrorType::ConnectionClosed, "closed before the PROXY header");
            }
            let taken = buf.len();
            buf.extend_from_slice(&chunk[..n]);
            // Until the header is complete, every byte seen belongs to it (or it is refused).
            let (source, header_bytes) = match parse(&buf) {
                Header::Complete { len, source } => (Some(source), len - taken),
                Header::Invalid(why) => return Error::e_explain(ErrorType::InvalidHTTPHeader, why),
                Header::Incomplete if buf.len() >= MAX_HEADER => {
                    return Error::e_explain(ErrorType::InvalidHTTPHeader, "PROXY header too long");
                }
                Header::Incomplete => (None, n),
            };
            stream
                .read_exact(&mut chunk[..header_bytes])
                .await
                .or_err(ErrorType::ReadError, "reading the PROXY header")?;
            if let Some(source) = source {
                return Ok(source);
            }
        }
    };
    let source = tokio::time::timeout(timeout, read)
        .await
        .or_err(ErrorType::ReadTimedout, "waiting for the PROXY header")??;
    Ok(match source {
        Source::Client(client) => client,
        Source::Unknown if peer.is_ipv6() => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        Source::Unknown => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        Source::Local => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Header::Complete {
                len: 41,
                source: Source::Client("192.0.2.7:51234".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 ::1 5 443\r\n"),
            Header::Complete {
                len: 34,
                source: Source::Client("[2001:db8::1]:5".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Header::Complete {
                len: 15,
                source: Source::Unknown
            }
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Header::Incomplete);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Header::Invalid(_)));
        assert!(matches!(parse(b"PROXY TCP4 nope 1.2.3.4 1 2\r\n"), Header::Invalid(_)));
        for bad in [
            &b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 +80 443\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 80 99999\r\n",
        ] {
            assert!(
                matches!(parse(bad), Header::Invalid(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Longer than 107 bytes, even when the CRLF arrived in the same read.
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert!(matches!(parse(long.as_bytes()), Header::Invalid(_)));
    }

    #[test]
    fn parses_v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 9, 10, 0, 0, 1, 0x1f, 0x90, 1, 187]);
        h.extend_from_slice(b"rest");
        assert_eq!(
            parse(&h),
            Header::Complete {
                len: 28,
                source: Source::Client("192.0.2.9:8080".parse().unwrap())
            }
        );
        assert_eq!(parse(&h[..20]), Header::Incomplete);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Header::Complete {
                len: 16,
                source: Source::Local
            }
        );
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 0]);
        assert_eq!(
            parse(&unix),
            Header::Complete {
                len: 16,
                source: Source::Unknown
            }
        );
        assert_eq!(parse(&V2_SIGNATURE[..5]), Header::Incomplete);
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 192, 0, 2, 9]);
        assert!(matches!(parse(&short), Header::Invalid(_)), "an INET block of 4 bytes");
    }

    /// A header in one segment with the request, then one dripped in pieces (v2): the
    /// declared client is returned and exactly the bytes after the header stay unread.
    #[tokio::test]
    async fn takes_exactly_the_header_from_the_socket() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let trusted = [Network {
            addr: "127.0.0.1".parse().unwrap(),
            prefix: 32,
        }];
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 9, 10, 0, 0, 1, 0x1f, 0x90, 1, 187]);
        let cases: [(Vec<Vec<u8>>, &str); 2] = [
            (
                vec![b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n".to_vec()],
                "203.0.113.7:5555",
            ),
            (
                vec![
                    v2[..7].to_vec(),
                    v2[7..20].to_vec(),
                    [&v2[20..], &b"GET / HTTP/1.1\r\n"[..]].concat(),
                ],
                "192.0.2.9:8080",
            ),
        ];
        for (pieces, declared) in cases {
            let client = tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                for piece in pieces {
                    c.write_all(&piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                c
            });
            let (mut tcp, peer) = listener.accept().await.unwrap();
            let got = accept(&mut tcp, peer, &trusted, Duration::from_secs(5)).await.unwrap();
            assert_eq!(got, declared.parse::<SocketAddr>().unwrap());
            let _client = client.await.unwrap();
            let mut rest = [0u8; 16];
            tcp.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
        }
    }
}
