//! The same odd-but-valid HTTP/1 requests through edgepin's own engine and through
//! pingora's (`EDGEPIN_H1_ENGINE=pingora`, a switch for this test only): what the server
//! receives must mean the same — method, target, end-to-end headers, body — so edgepin's
//! parser is held to a second, independent one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{Proxy, client};

/// What a server received in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    method: String,
    target: String,
    /// Lowercase name → values in order; headers that are the hop's own left out.
    headers: BTreeMap<String, Vec<String>>,
    /// The body, decoded if it was chunked.
    body: Vec<u8>,
}

/// Headers a proxy writes for its own hop, which may differ between engines.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "expect",
];

/// A server that records every request (head and body by its framing) and answers 200.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    // One request: head, then body by its framing.
                    let (head_len, mut r) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 128];
                        let mut req = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                            let mut h: BTreeMap<String, Vec<String>> = BTreeMap::new();
                            for x in req.headers.iter() {
                                h.entry(x.name.to_ascii_lowercase())
                                    .or_default()
                                    .push(String::from_utf8_lossy(x.value).into_owned());
                            }
                            let r = Received {
                                method: req.method.unwrap_or("").to_string(),
                                target: req.path.unwrap_or("").to_string(),
                                headers: h,
                                body: Vec::new(),
                            };
                            break (n, r);
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..head_len);
                    let chunked = r
                        .headers
                        .get("transfer-encoding")
                        .is_some_and(|v| v.iter().any(|v| v.eq_ignore_ascii_case("chunked")));
                    let length: usize = r
                        .headers
                        .get("content-length")
                        .and_then(|v| v.first()?.parse().ok())
                        .unwrap_or(0);
                    if chunked {
                        loop {
                            // size line, data, CRLF; then trailers up to an empty line.
                            let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
                                match s.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                                continue;
                            };
                            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
                            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                                .unwrap_or(0);
                            if size == 0 {
                                while !buf.windows(4).any(|w| w == b"\r\n\r\n")
                                    && !buf[line_end..].starts_with(b"\r\n\r\n")
                                {
                                    match s.read(&mut chunk).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                    }
                                }
                                let end =
                                    buf[line_end..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + line_end + 4;
                                buf.drain(..end);
                                break;
                            }
                            while buf.len() < line_end + 2 + size + 2 {
                                match s.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            r.body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                            buf.drain(..line_end + 2 + size + 2);
                        }
                    } else {
                        while buf.len() < length {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        r.body = buf.drain(..length).collect();
                    }
                    for h in HOP {
                        r.headers.remove(*h);
                    }
                    let head = r.method == "HEAD";
                    log.lock().unwrap().push(r);
                    let answer: &[u8] = if head {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Odd but valid requests (RFC 9112): each is sent alone, on its own connection.
fn corpus() -> Vec<Vec<u8>> {
    let long = "v".repeat(8000);
    let mut c: Vec<Vec<u8>> = vec![
        b"GET /a?b=c&d=%20e HTTP/1.1\r\nhOsT: app.example\r\nACCEPT: */*\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /multi HTTP/1.1\r\nHost: x\r\nX-Multi: 1\r\nX-Multi: 2\r\nx-multi: 3\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\nConnection: close\r\n\r\na=1&b=2&c=3".to_vec(),
        b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n".to_vec(),
        b"GET /ten HTTP/1.0\r\nHost: x\r\nUser-Agent: old\r\n\r\n".to_vec(),
        b"GET http://app.example/abs?q=1 HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        b"HEAD /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /odd HTTP/1.1\r\nHost: x\r\nX-Odd: a\tb  c\r\nX-Empty:\r\nX-Spaces:    padded   \r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET /long HTTP/1.1\r\nHost: x\r\nX-Long: {long}\r\nConnection: close\r\n\r\n").into_bytes(),
        b"GET /cookie HTTP/1.1\r\nHost: x\r\nCookie: a=1; EDGEPIN=zzz; b=\"q\"\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /continue HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(),
        b"\r\nGET /leading-crlf HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /a%2Fb/..c;p=1?x=/../%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"DELETE /thing/7 HTTP/1.1\r\nHost: x:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        b"PATCH /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"k\":\"\xc3\xa9\"}  ".to_vec(),
        b"GET /socket.io/?EIO=4&transport=polling&t=Nx1 HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    // A body in many small chunks.
    let mut many = b"PUT /many HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for i in 0..50 {
        many.extend_from_slice(format!("3\r\n{i:03}\r\n").as_bytes());
    }
    many.extend_from_slice(b"0\r\n\r\n");
    c.push(many);
    c
}

/// One known difference, by design: for an absolute-form target (`GET http://h/p`),
/// edgepin forwards origin-form with `Host` and `X-Forwarded-Host` from the URI (RFC 9112
/// §3.2.2: the URI's host wins), where pingora forwards the target as sent and, having no
/// `Host` yet when the filters run, no forwarded host. Both are compared as origin-form
/// without the forwarded host.
fn comparable(r: &Received, absolute: bool) -> Received {
    let mut r = r.clone();
    if let Some(rest) = r.target.strip_prefix("http://") {
        r.target = rest.find('/').map_or("/".to_string(), |i| rest[i..].to_string());
    }
    if absolute {
        r.headers.remove("x-forwarded-host");
        if let Some(f) = r.headers.get_mut("forwarded") {
            for v in f.iter_mut() {
                if let Some(i) = v.find(";host=") {
                    v.truncate(i);
                }
            }
        }
    }
    r
}

async fn send_all(proxy: &Proxy) {
    for req in corpus() {
        let mut s = client::connect(&proxy.plain()).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"),
            "{}: {}",
            String::from_utf8_lossy(&req[..req.len().min(60)]),
            String::from_utf8_lossy(&answer)
        );
    }
}

fn body(addr: SocketAddr) -> String {
    format!(
        "routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ balance: sticky, servers: [r], cookie: EDGEPIN }}\nservers:\n  r: {{ address: {addr} }}\n\
         health: {{ mode: tcp, interval: 5s }}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn what_servers_receive_means_the_same_through_either_engine() {
    let (ours_addr, ours) = recorder().await;
    let (theirs_addr, theirs) = recorder().await;
    let edgepin = Proxy::start(&body(ours_addr));
    let pingora = Proxy::builder(&body(theirs_addr))
        .env("EDGEPIN_H1_ENGINE", "pingora")
        .start();
    send_all(&edgepin).await;
    send_all(&pingora).await;
    let (ours, theirs) = (ours.lock().unwrap().clone(), theirs.lock().unwrap().clone());
    assert_eq!(ours.len(), corpus().len(), "{ours:#?}");
    assert_eq!(theirs.len(), ours.len(), "{theirs:#?}");
    for (a, b) in ours.iter().zip(&theirs) {
        let absolute = b.target.starts_with("http://");
        assert_eq!(
            comparable(a, absolute),
            comparable(b, absolute),
            "the engines disagree on what the server gets"
        );
    }
}
