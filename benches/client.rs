//! `bench-client`: the client side of `make bench` that wrk does not cover. Prints
//! `key=value` lines for `benches/run.sh`.
//!
//! - `handshake ADDR PATH`: one Engine.IO polling handshake; prints the sid and the
//!   cookie the proxy set (`sid=… cookie=NAME=VALUE`), for the sticky scenario.
//! - `ws-idle ADDR PATH N PIDS`: open N WebSockets (each reads its first message, the
//!   Engine.IO open packet), let them idle, and print how much the resident memory of
//!   the processes PIDS (comma-separated: the proxy) grew per connection.
//! - `wss-idle ADDR PATH N PIDS`: the same over TLS (the certificate is not verified).
//! - `keepalive-idle ADDR PATH N PIDS`: open N HTTP/1.1 connections, send one GET on
//!   each (keep-alive), read the whole answer, let them idle, and print the growth of
//!   the resident memory of PIDS per connection, as `ws-idle` does.
//! - `keepalive-idle-tls ADDR PATH N PIDS`: the same over TLS.
//! - `ws-echo ADDR PATH N SECONDS INTERVAL_MS [SLICE_MS]`: N WebSockets each send a small
//!   Engine.IO message every INTERVAL_MS and wait for its echo; prints round-trip
//!   p50/p99. ADDR may name several targets, `LABEL=ADDR,…`: N sockets to each, and
//!   the targets take turns of SLICE_MS (as `rate`).
//! - `h2-idle ADDR PATH N PIDS`: open N HTTP/2 connections over TLS (ALPN h2), send one
//!   GET of PATH on each, let them idle, and print the memory growth per connection.
//! - `ws-h2-idle ADDR PATH N PIDS`: N HTTP/2 connections, each with one WebSocket over it
//!   (RFC 8441 extended CONNECT to PATH) that read its first message, then idle.
//! - `tls-handshake ADDR PATH N SECONDS`: N clients each open a TLS connection, send one
//!   request with `Connection: close`, read the answer, and start over: every connection
//!   a full handshake (resumption off, unlike wrk, which resumes its previous session).
//!   The certificate is not verified: the load generator should cost little.
//! - `ws-hold ADDR PATH N SECONDS INTERVAL_MS`: N WebSockets held open (`opened=N` once
//!   they are), each echoing a numbered message every INTERVAL_MS for SECONDS; prints
//!   how many were dropped (closed or silent) before the end. For the `upgrade` scenario.
//! - `first-new ADDR PATH OLD_PIDS SECONDS [AFTER_MS [PROXY_ADDR PROXY_PATH]]`: new
//!   connections until one is answered by a process not in OLD_PIDS (`X-Proxy-Pid` header
//!   or `"pid"` in the body), then AFTER_MS more; prints when, and how many probes (of
//!   PROXY_ADDR too, when the pid comes from elsewhere) got no answer.
//! - `rate ADDR PATH RPS SECONDS CONNECTIONS WARMUP plain|tls [SLICE_MS]`: keep-alive GETs
//!   at a fixed open-loop rate over CONNECTIONS connections, latency counted from each
//!   request's due time (no coordinated omission); prints p50/p90/p99/p99.9, the achieved
//!   rate, errors. With several targets (`LABEL=ADDR,…`) they take turns of SLICE_MS.
//!
//! One thread (pinned with the load generator), 127.0.0.1 only, every phase bounded.

mod h2client;
mod rate;
mod upgrade_watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Ws = WebSocketStream<TcpStream>;
type Failure = Box<dyn std::error::Error>;

/// Longest wait for one connection, handshake or first message.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket upgrades in flight at once while opening many.
const OPEN_CONCURRENCY: usize = 64;
/// Pause after the last connection opened, before reading memory.
const SETTLE: Duration = Duration::from_secs(2);
const ECHO_PAYLOAD: &str = "4{\"bench\":\"echo\",\"pad\":\"xxxxx\"}";

fn usage() -> ! {
    eprintln!(
        "usage: bench-client handshake ADDR PATH\n       \
         bench-client ws-idle ADDR PATH CONNECTIONS PID[,PID...]\n       \
         bench-client wss-idle ADDR PATH CONNECTIONS PID[,PID...]\n       \
         bench-client keepalive-idle ADDR PATH CONNECTIONS PID[,PID...]\n       \
         bench-client keepalive-idle-tls ADDR PATH CONNECTIONS PID[,PID...]\n       \
         bench-client h2-idle ADDR PATH CONNECTIONS PID[,PID...]\n       \
         bench-client ws-h2-idle ADDR PATH CONNECTIONS PID[,PID...]\n       \
         bench-client ws-echo ADDR|LABEL=ADDR,... PATH CONNECTIONS SECONDS INTERVAL_MS [SLICE_MS]\n       \
         bench-client tls-handshake ADDR PATH CLIENTS SECONDS\n       \
         bench-client ws-hold ADDR PATH CONNECTIONS SECONDS INTERVAL_MS\n       \
         bench-client first-new ADDR PATH OLD_PID[,OLD_PID...] SECONDS [AFTER_MS [PROXY_ADDR PROXY_PATH]]\n       \
         bench-client rate ADDR|LABEL=ADDR,LABEL=ADDR... PATH RPS SECONDS CONNECTIONS WARMUP_SECONDS plain|tls [SLICE_MS]"
    );
    std::process::exit(2);
}

/// `LABEL=ADDR,LABEL=ADDR…` as (label, address) pairs; a plain `ADDR` is one target
/// without a label.
fn labelled_targets(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .map(|item| match item.split_once('=') {
            Some((label, addr)) => (label.to_string(), addr.to_string()),
            None => (String::new(), item.to_string()),
        })
        .collect()
}

/// What the output lines of a target start with: its label and a space, if it has one.
fn label_prefix(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("{label} ")
    }
}

/// The optional SLICE_MS at `i`: how long each target's turn is (500 ms when absent).
fn slice_arg(args: &[String], i: usize) -> Duration {
    Duration::from_millis(if args.len() > i { arg(args, i) } else { 500 })
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (addr, path): (String, String) = (arg(&args, 1), arg(&args, 2));
    let result = runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("handshake") => handshake(&addr, &path).await,
            Some("ws-idle") => ws_idle(&addr, &path, arg(&args, 3), &arg::<String>(&args, 4), false).await,
            Some("wss-idle") => ws_idle(&addr, &path, arg(&args, 3), &arg::<String>(&args, 4), true).await,
            Some("keepalive-idle") => {
                keepalive_idle(&addr, &path, arg(&args, 3), &arg::<String>(&args, 4), false).await
            }
            Some("keepalive-idle-tls") => {
                keepalive_idle(&addr, &path, arg(&args, 3), &arg::<String>(&args, 4), true).await
            }
            Some("h2-idle") => h2client::idle(&addr, &path, arg(&args, 3), &arg::<String>(&args, 4), false).await,
            Some("ws-h2-idle") => h2client::idle(&addr, &path, arg(&args, 3), &arg::<String>(&args, 4), true).await,
            Some("ws-echo") => {
                let echo = Echo {
                    interval: Duration::from_millis(arg::<u64>(&args, 5).max(1)),
                    slice: slice_arg(&args, 6),
                };
                ws_echo(&labelled_targets(&addr), &path, arg(&args, 3), arg(&args, 4), echo).await
            }
            Some("ws-hold") => {
                let (seconds, interval) = (arg(&args, 4), arg(&args, 5));
                upgrade_watch::hold(&addr, &path, arg(&args, 3), seconds, interval).await
            }
            Some("first-new") => {
                let after_ms = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(0);
                let proxied = match (args.get(6), args.get(7)) {
                    (Some(a), Some(p)) => (a.as_str(), p.as_str()),
                    _ => (addr.as_str(), path.as_str()),
                };
                let probes = upgrade_watch::Probes {
                    named: (&addr, &path),
                    proxied,
                };
                upgrade_watch::first_new(&probes, &arg::<String>(&args, 3), arg(&args, 4), after_ms).await
            }
            Some("rate") => {
                let tls = match arg::<String>(&args, 7).as_str() {
                    "plain" => false,
                    "tls" => true,
                    _ => usage(),
                };
                let plan = rate::Plan {
                    rps: arg(&args, 3),
                    seconds: arg(&args, 4),
                    connections: arg(&args, 5),
                    warmup: arg(&args, 6),
                    tls,
                    slice: slice_arg(&args, 8),
                };
                rate::run(&labelled_targets(&addr), &path, &plan).await
            }
            Some("tls-handshake") => tls_handshakes(&addr, &path, arg(&args, 3), arg(&args, 4)).await,
            _ => usage(),
        }
    });
    if let Err(e) = result {
        eprintln!("bench-client: {e}");
        std::process::exit(1);
    }
}

/// GET `path` once and print the session id of the open packet and the cookie set.
async fn handshake(addr: &str, path: &str) -> Result<(), Failure> {
    let mut stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    let sid = answer
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| format!("no sid in the answer: {answer}"))?;
    let cookie = answer
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    println!("sid={sid}");
    println!("cookie={cookie}");
    Ok(())
}

/// Open a WebSocket and read its first message (the Engine.IO open packet).
async fn open(addr: &str, path: &str) -> Result<Ws, Failure> {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let step = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{addr}{path}");
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        match ws.next().await {
            Some(Ok(Message::Text(_))) => Ok(ws),
            other => Err(format!("expected an open packet, got {other:?}").into()),
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step).await?
}

/// Open a WebSocket over TLS and read its first message.
async fn open_tls(
    connector: &TlsConnector,
    addr: &str,
    path: &str,
) -> Result<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>, Failure> {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let step = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let tls = connector.connect(ServerName::try_from("localhost")?, stream).await?;
        let url = format!("wss://{addr}{path}");
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(config)).await?;
        match ws.next().await {
            Some(Ok(Message::Text(_))) => Ok(ws),
            other => Err(format!("expected an open packet, got {other:?}").into()),
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step).await?
}

/// Open `n` WebSockets, at most `OPEN_CONCURRENCY` at a time.
async fn open_many(addr: &str, path: &str, n: usize) -> Result<Vec<Ws>, Failure> {
    let opening = futures_util::stream::iter(0..n)
        .map(|_| open(addr, path))
        .buffer_unordered(OPEN_CONCURRENCY);
    let all: Vec<Result<Ws, Failure>> = opening.collect().await;
    all.into_iter().collect()
}

/// Resident memory of these processes together, KiB (VmRSS in /proc/PID/status).
fn rss_kib(pids: &str) -> Result<u64, Failure> {
    let mut total = 0;
    for pid in pids.split(',').filter(|p| !p.is_empty()) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no VmRSS for pid {pid}"))?;
        total += kib;
    }
    Ok(total)
}

async fn ws_idle(addr: &str, path: &str, n: usize, pids: &str, tls: bool) -> Result<(), Failure> {
    let before = rss_kib(pids)?;
    let started = Instant::now();
    let (plain, secure) = if tls {
        let connector = insecure_connector(true, &[])?;
        let opening = futures_util::stream::iter(0..n)
            .map(|_| open_tls(&connector, addr, path))
            .buffer_unordered(OPEN_CONCURRENCY);
        let all: Vec<Result<_, Failure>> = opening.collect().await;
        (Vec::new(), all.into_iter().collect::<Result<Vec<_>, _>>()?)
    } else {
        (open_many(addr, path, n).await?, Vec::new())
    };
    let opened = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pids)?;
    println!("connections={}", plain.len() + secure.len());
    println!("open_seconds={:.2}", opened.as_secs_f64());
    println!("rss_before_kib={before}");
    println!("rss_after_kib={after}");
    println!("kib_per_conn={:.2}", after.saturating_sub(before) as f64 / n as f64);
    Ok(())
}

/// Send one keep-alive GET on `s` and read its whole answer (`200` with a
/// Content-Length), leaving the connection open and idle.
async fn one_keepalive_request<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    request: &[u8],
) -> Result<(), Failure> {
    s.write_all(request).await?;
    // Over TLS the request may still sit in the session until flushed.
    s.flush().await?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("the proxy closed a keep-alive connection".into());
        }
        answer.extend_from_slice(&chunk[..n]);
        let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(format!("unexpected answer: {}", &head[..head.len().min(64)]).into());
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no content-length in the answer")?;
        if answer.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// `n` keep-alive connections, one request each, then idle: RSS growth per connection.
async fn keepalive_idle(addr: &str, path: &str, n: usize, pids: &str, tls: bool) -> Result<(), Failure> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let connector = insecure_connector(true, &[])?;
    let before = rss_kib(pids)?;
    let started = Instant::now();
    let open_one = |_| {
        let (connector, request) = (connector.clone(), request.as_bytes());
        async move {
            let step = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                if tls {
                    let mut s = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
                    one_keepalive_request(&mut s, request).await?;
                    Ok::<_, Failure>(Box::new(s) as Box<dyn std::any::Any>)
                } else {
                    let mut s = tcp;
                    one_keepalive_request(&mut s, request).await?;
                    Ok(Box::new(s) as Box<dyn std::any::Any>)
                }
            };
            tokio::time::timeout(STEP_TIMEOUT, step).await?
        }
    };
    let opening = futures_util::stream::iter(0..n)
        .map(open_one)
        .buffer_unordered(OPEN_CONCURRENCY);
    let all: Vec<Result<Box<dyn std::any::Any>, Failure>> = opening.collect().await;
    let open = all.into_iter().collect::<Result<Vec<_>, _>>()?;
    let opened = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pids)?;
    println!("connections={}", open.len());
    println!("open_seconds={:.2}", opened.as_secs_f64());
    println!("rss_before_kib={before}");
    println!("rss_after_kib={after}");
    println!("kib_per_conn={:.2}", after.saturating_sub(before) as f64 / n as f64);
    drop(open);
    Ok(())
}

/// `ws-echo`: `n` WebSockets per target, each sending a message every `interval` and
/// timing its echo. Several targets (`LABEL=ADDR,…`, as `rate`) take turns of `slice`:
/// a socket sends only in its target's turns, and each target gets `seconds` of them.
async fn ws_echo(targets: &[(String, String)], path: &str, n: usize, seconds: u64, echo: Echo) -> Result<(), Failure> {
    let mut sockets = Vec::with_capacity(targets.len());
    for (_, addr) in targets {
        sockets.push(open_many(addr, path, n).await?);
    }
    let turns = rate::Turns {
        start: Instant::now(),
        slice: echo.slice,
        targets: targets.len() as u64,
    };
    let until = turns.start + Duration::from_secs(seconds) * targets.len() as u32;
    let tasks = sockets.into_iter().enumerate().map(|(target, own)| {
        let loops = own.into_iter().enumerate().map(move |(i, ws)| {
            // Spread the connections' send times over one interval.
            let offset = echo.interval * i as u32 / n as u32;
            echo_loop(ws, until, echo.interval, offset, (turns, target))
        });
        futures_util::future::join_all(loops)
    });
    let results = futures_util::future::join_all(tasks).await;
    for ((label, _), own) in targets.iter().zip(results) {
        let mut rtts: Vec<u32> = Vec::new();
        for r in own {
            rtts.extend(r?);
        }
        let prefix = label_prefix(label);
        println!("{prefix}messages={}", rtts.len());
        print_percentiles(&prefix, &mut rtts);
    }
    Ok(())
}

/// How often each echo socket sends, and each target's turn when there are several.
#[derive(Clone, Copy)]
struct Echo {
    interval: Duration,
    slice: Duration,
}

/// Print p50 and p99 of round trips given in microseconds, as milliseconds, each line
/// after `prefix`.
fn print_percentiles(prefix: &str, micros: &mut [u32]) {
    micros.sort_unstable();
    println!("{prefix}p50_ms={:.3}", percentile_ms(micros, 0.50));
    println!("{prefix}p99_ms={:.3}", percentile_ms(micros, 0.99));
}

/// The `p` quantile (0 to 1, nearest rank) of sorted microseconds, in milliseconds; 0 for none.
fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    f64::from(sorted.get(i).copied().unwrap_or(0)) / 1000.0
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Send a message every `interval` until `until`, each after the previous echo; returns
/// the round trips in microseconds.
async fn echo_loop(
    mut ws: Ws,
    until: Instant,
    interval: Duration,
    offset: Duration,
    (turns, target): (rate::Turns, usize),
) -> Result<Vec<u32>, Failure> {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rtts = Vec::new();
    loop {
        ticks.tick().await;
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        if turns.owner(sent) != target {
            // Not this target's turn: sleep until it, at this socket's place in the interval.
            ticks.reset_at((turns.next_start(target, sent) + offset).into());
            continue;
        }
        ws.send(Message::text(ECHO_PAYLOAD)).await?;
        loop {
            match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await? {
                Some(Ok(Message::Text(t))) if t.as_str() == ECHO_PAYLOAD => break,
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                other => return Err(format!("echo failed: {other:?}").into()),
            }
        }
        rtts.push(micros(sent.elapsed()));
    }
    let _ = ws.close(None).await;
    Ok(rtts)
}

/// Accepts any certificate: the benchmark measures the proxy's handshakes, not the client's.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client that accepts any certificate; with or without session resumption,
/// offering `alpn`.
fn insecure_connector(resume: bool, alpn: &[&[u8]]) -> Result<TlsConnector, Failure> {
    let provider = Arc::new(ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls_handshakes(addr: &str, path: &str, clients: usize, seconds: u64) -> Result<(), Failure> {
    let connector = insecure_connector(false, &[])?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks = (0..clients).map(|_| {
        let (connector, request) = (connector.clone(), request.as_bytes());
        async move {
            let (mut times, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < until {
                let begun = Instant::now();
                match one_tls_request(&connector, addr, request).await {
                    Ok(()) => times.push(micros(begun.elapsed())),
                    Err(e) => {
                        // The first few, with why, for the run's log (stderr).
                        if errors < 3 {
                            eprintln!("tls-handshake error after {:?}: {e}", begun.elapsed());
                        }
                        errors += 1;
                    }
                }
            }
            (times, errors)
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    let elapsed = started.elapsed().as_secs_f64();
    let errors: u64 = results.iter().map(|(_, e)| e).sum();
    let mut times: Vec<u32> = results.into_iter().flat_map(|(t, _)| t).collect();
    println!("handshakes={}", times.len());
    println!("per_second={:.1}", times.len() as f64 / elapsed);
    println!("errors={errors}");
    print_percentiles("", &mut times);
    Ok(())
}

/// One new connection: full TLS handshake, one request, the whole answer (`200`). Each
/// step has `STEP_TIMEOUT`; an error names the step that failed.
async fn one_tls_request(connector: &TlsConnector, addr: &str, request: &[u8]) -> Result<(), Failure> {
    async fn step<T, E: std::fmt::Display>(name: &str, f: impl Future<Output = Result<T, E>>) -> Result<T, Failure> {
        match tokio::time::timeout(STEP_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{name}: {e}").into()),
            Err(_) => Err(format!("{name}: nothing within {STEP_TIMEOUT:?}").into()),
        }
    }
    let tcp = step("connect", TcpStream::connect(addr)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    let mut tls = step("TLS handshake", connector.connect(name, tcp)).await?;
    step("request", tls.write_all(request)).await?;
    // tokio-rustls may keep the request in the session after `write_all` (its socket
    // write was pending): without a flush the proxy never gets it. This was the
    // `tls_handshake` errors of the full run of 2026-12-07 (1-5 per 10 s, edgepin only:
    // its quicker answers made the race show; each hung a step for `STEP_TIMEOUT`).
    step("flush", tls.flush()).await?;
    let mut answer = Vec::with_capacity(512);
    // The proxy closes after the answer; a missing close_notify is not an error here.
    let _ = step("answer", tls.read_to_end(&mut answer)).await;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(64)])
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::labelled_targets;

    #[test]
    fn targets_are_an_address_or_labelled_addresses() {
        assert_eq!(
            labelled_targets("127.0.0.1:1"),
            [(String::new(), "127.0.0.1:1".to_string())]
        );
        assert_eq!(
            labelled_targets("a=127.0.0.1:1,b.2=127.0.0.1:2"),
            [
                ("a".to_string(), "127.0.0.1:1".to_string()),
                ("b.2".to_string(), "127.0.0.1:2".to_string())
            ]
        );
    }
}
