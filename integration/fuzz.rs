//! A bounded fuzz of the plain listener: mutated HTTP/1 requests from a seed corpus
//! (GETs, bodies with Content-Length and chunked, upgrades, Engine.IO polls, odd header
//! casing, pipelining, smuggling shapes), sent on fresh connections for a fixed time with
//! a deterministic seed. The proxy must stay up, log no panic, and keep answering a valid
//! request with 200 throughout.
//!
//! `EDGEPIN_FUZZ_SECS` (default 25) sets the time, `EDGEPIN_FUZZ_SEED` the seed (printed
//! either way, so a failure can be replayed: the cases of each lane depend only on it).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Backend, Proxy, client};

const DEFAULT_SECS: u64 = 25;
const DEFAULT_SEED: u64 = 0x6564_6765_7069_6e21;
/// Connections fuzzing at once.
const LANES: u64 = 6;
/// How long a case waits for the proxy's answer before closing the connection.
const CASE_WAIT: Duration = Duration::from_millis(300);
/// How often a valid request is checked during the run.
const PROBE_EVERY: Duration = Duration::from_secs(2);

pub(crate) const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/whoami?x=1&y=%20 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: fuzz/1\r\nAccept: */*\r\nCookie: a=1; EDGEPIN=0123456789abcdef; b=\"q\"\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"hello\":\"x\"}",
    b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=polling&t=N8hyd6w HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    b"GET /socket.io/?EIO=4&transport=polling&sid=lv_VI97HAXpY6yYWAAAC HTTP/1.1\r\nHost: localhost\r\nCookie: EDGEPIN=0123456789abcdef; io=lv_VI97HAXpY6yYWAAAC\r\n\r\n",
    b"POST /socket.io/?EIO=4&transport=polling&sid=abc_DEF-1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 2\r\n\r\n40",
    b"GET /Mixed/Case HTTP/1.1\r\nhOsT: LocalHost:80\r\nX-FORWARDED-FOR: 1.2.3.4, 5.6.7.8\r\ncOnNeCtIoN: keep-alive\r\ncontent-LENGTH: 0\r\n\r\n",
    b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\n\r\nHEAD /three HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET http://localhost/absolute?q HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /continue HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
    b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /.well-known/acme-challenge/token HTTP/1.1\r\nHost: localhost\r\n\r\n",
];

/// Header lines that stress parsers and the proxy's own rules.
const HEADERS: &[&[u8]] = &[
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: 5, 6",
    b"Content-Length: 0x10",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"Host: other.example\r\nHost: localhost",
    b"Host: ",
    b"Connection: Upgrade\r\nUpgrade: h2c",
    b"Upgrade: websocket",
    b"Cookie: EDGEPIN=\"\"; ;;=; EDGEPIN",
    b"X-Forwarded-For: ::ffff:999.1.1.1, garbage",
    b"Expect: 100-continue",
    b"Te: trailers",
    b": empty-name",
    b"Bad Header Name: x",
];

/// splitmix64: small, deterministic, good enough to pick mutations.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Byte offsets just after each `\n` (starts of lines), the first line included.
fn line_starts(req: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(req.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
        .filter(|&i| i < req.len())
        .collect()
}

/// The line (with its line end) starting at a random line start; empty for no bytes.
fn random_line(rng: &mut Rng, req: &[u8]) -> (usize, usize) {
    let starts = line_starts(req);
    if starts.is_empty() {
        return (0, 0);
    }
    let start = *rng.pick(&starts);
    let end = req[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(req.len(), |i| start + i + 1);
    (start, end)
}

/// Just after the request line (where a header line can go).
fn after_request_line(req: &[u8]) -> usize {
    req.iter().position(|&b| b == b'\n').map_or(req.len(), |i| i + 1)
}

pub(crate) fn mutate(rng: &mut Rng, req: &mut Vec<u8>) {
    let len = req.len().max(1);
    match rng.below(14) {
        // Flip some bits of one byte.
        0 => {
            let i = rng.below(len).min(req.len().saturating_sub(1));
            if let Some(b) = req.get_mut(i) {
                *b ^= (rng.next() as u8) | 1;
            }
        }
        // Truncate.
        1 => req.truncate(rng.below(len)),
        // Duplicate a line.
        2 => {
            let (s, e) = random_line(rng, req);
            let line = req[s..e].to_vec();
            req.splice(e..e, line);
        }
        // Delete a line.
        3 => {
            let (s, e) = random_line(rng, req);
            req.drain(s..e);
        }
        // A huge header value (around the 16 KiB head limit, and far over it).
        4 => {
            let n = *rng.pick(&[100usize, 8 * 1024, 16 * 1024 - 40, 20 * 1024, 70 * 1024]);
            let mut line = b"X-Big: ".to_vec();
            line.extend(std::iter::repeat_n(b'A' + (rng.below(26) as u8), n));
            line.extend_from_slice(b"\r\n");
            let at = after_request_line(req);
            req.splice(at..at, line);
        }
        // A huge request target.
        5 => {
            let at = req.iter().position(|&b| b == b' ').map_or(0, |i| i + 1);
            let n = *rng.pick(&[1000usize, 17 * 1024, 64 * 1024]);
            req.splice(at..at, std::iter::repeat_n(b'a', n));
        }
        // CRLF → LF everywhere, or one LF → CRLF / lone CR.
        6 => {
            if rng.below(2) == 0 {
                let mut out = Vec::with_capacity(req.len());
                for (i, &b) in req.iter().enumerate() {
                    if !(b == b'\r' && req.get(i + 1) == Some(&b'\n')) {
                        out.push(b);
                    }
                }
                *req = out;
            } else {
                let i = rng.below(len).min(req.len());
                req.insert(i, b'\r');
            }
        }
        // NUL somewhere.
        7 => {
            let i = rng.below(len + 1).min(req.len());
            req.insert(i, 0);
        }
        // obs-fold: a continuation line after a header.
        8 => {
            let (_, e) = random_line(rng, req);
            let fold: &[u8] = rng.pick::<&[u8]>(&[&b" folded value\r\n"[..], b"\tfolded\r\n", b" \r\n"]);
            req.splice(e..e, fold.iter().copied());
        }
        // An interesting header.
        9 => {
            let mut line = rng.pick(HEADERS).to_vec();
            line.extend_from_slice(b"\r\n");
            let at = after_request_line(req);
            req.splice(at..at, line);
        }
        // A huge chunk size.
        10 => {
            let at = req
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(req.len(), |i| i + 4);
            let size: &[u8] = rng.pick::<&[u8]>(&[
                &b"fffffffffffffffffff\r\n"[..],
                b"-1\r\n",
                b"1;a=\"\r\n",
                b"0000000000000000000000001\r\n",
            ]);
            req.splice(at..at, size.iter().copied());
        }
        // Another method, or garbage in its place.
        11 => {
            let end = req.iter().position(|&b| b == b' ').unwrap_or(0);
            let method: &[u8] = rng.pick::<&[u8]>(&[
                &b"PUT"[..],
                b"DELETE",
                b"CONNECT",
                b"TRACE",
                b"PRI",
                b"G\x00T",
                b"",
                b"get",
            ]);
            req.splice(0..end, method.iter().copied());
        }
        // Odd bytes in the target.
        12 => {
            let at = req.iter().position(|&b| b == b' ').map_or(0, |i| i + 1);
            let junk: &[u8] = rng.pick::<&[u8]>(&[
                &b"%00%ff/../../"[..],
                b"\xc3\x28\xf0\x28\x8c\x28",
                b"?sid=a&sid=b&EIO=3&EIO",
                b"#frag",
                b"//double//",
                b"socket.io/?EIO=4&sid=",
            ]);
            req.splice(at..at, junk.iter().copied());
        }
        // Pipeline a copy of the whole request.
        _ => {
            let copy = req.clone();
            req.extend_from_slice(&copy);
        }
    }
}

/// One case on a fresh connection: send (in up to three writes), read what comes back
/// for a while, close. Errors are expected: the proxy may refuse or cut anything here.
async fn send_case(target: &client::Target, bytes: &[u8], rng: &mut Rng) {
    let Ok(mut stream) = client::connect(target).await else {
        return;
    };
    let mut rest = bytes;
    for _ in 0..rng.below(3) {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(rng.below(rest.len()) + 1);
        if stream.write_all(now).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        rest = later;
    }
    if stream.write_all(rest).await.is_err() {
        return;
    }
    if rng.below(4) == 0 {
        let _ = stream.shutdown().await;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + CASE_WAIT;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

/// Fuzz for `until` on one connection at a time; the number of cases sent.
async fn lane(target: client::Target, seed: u64, until: Instant) -> u64 {
    let mut rng = Rng(seed);
    let mut cases = 0;
    while Instant::now() < until {
        let mut req = rng.pick(SEEDS).to_vec();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut req);
        }
        send_case(&target, &req, &mut rng).await;
        cases += 1;
    }
    cases
}

pub(crate) fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A valid request still gets 200 from a server (not an answer of the proxy's own).
async fn assert_serves(proxy: &mut Proxy, when: &str) {
    assert!(
        proxy.proc.alive(),
        "edgepin exited {when}:\n{}",
        proxy.proc.log_tail(40)
    );
    let r = client::get(&proxy.plain(), "/api/ok").await;
    let ok = r
        .as_ref()
        .is_ok_and(|r| r.status == 200 && r.header("x-server").is_some());
    assert!(ok, "a valid request {when}: {r:?}\n{}", proxy.proc.log_tail(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn mutated_requests_neither_crash_the_proxy_nor_stop_it_serving() {
    let secs = env_u64("EDGEPIN_FUZZ_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("EDGEPIN_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    println!("fuzz: EDGEPIN_FUZZ_SEED={seed:#x} EDGEPIN_FUZZ_SECS={secs}");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let body = format!(
        "access_log: false\n\
         timeouts: {{ header: 2s, client: 2s, server: 5s, keepalive: 2s }}\n\
         routes:\n  - {{ path_prefix: /socket.io/, backend: sockets }}\n  - {{ path_prefix: /, backend: api }}\n\
         acme: {{ backend: api }}\n\
         backends:\n  api: {{ servers: [a, b] }}\n  sockets: {{ balance: sticky, servers: [a, b] }}\n\
         servers:\n  a: {{ address: {} }}\n  b: {{ address: {} }}\n\
         sticky: {{ handshake_rate: {{ per_second: 0 }} }}\n\
         health: {{ interval: 1s, timeout: 500ms }}\n",
        a.addr, b.addr
    );
    let mut proxy = Proxy::start(&body);
    assert_serves(&mut proxy, "before the fuzz").await;

    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let lanes: Vec<_> = (0..LANES)
        .map(|i| tokio::spawn(lane(proxy.plain(), seed ^ (i + 1).wrapping_mul(0x9e37_79b9), until)))
        .collect();
    let mut probes = 0;
    while Instant::now() < until {
        tokio::time::sleep(PROBE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
        assert_serves(&mut proxy, &format!("{:?} into the fuzz", started.elapsed())).await;
        probes += 1;
    }
    let mut cases = 0;
    for l in lanes {
        cases += l.await.expect("fuzz lane");
    }
    println!("fuzz: {cases} cases, {probes} probes in {:?}", started.elapsed());
    assert_serves(&mut proxy, "after the fuzz").await;
    let log = proxy.proc.log();
    assert!(
        !log.contains("panicked"),
        "the proxy panicked (replay with EDGEPIN_FUZZ_SEED={seed:#x}):\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(cases > 0);
}
