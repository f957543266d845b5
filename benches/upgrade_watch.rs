//! The `upgrade` scenario's side of `bench-client`: WebSockets held open across binary
//! upgrades, each echoing a numbered message every interval, so a tunnel that is cut or
//! stalls is counted (`ws-hold`); and the first new connection answered by a process
//! that was not serving before (`first-new`), for the time from the upgrade command to
//! the new process serving. It only observes: the upgrades themselves are run by
//! `benches/run.sh`.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Failure, OPEN_CONCURRENCY, Ws, micros, open, print_percentiles};

/// A message whose echo has not come back within this is a stalled tunnel.
const ECHO_DEADLINE: Duration = Duration::from_secs(5);
/// Drops described on stderr (with when and why); the rest are only counted.
const DROPS_SHOWN: usize = 10;
/// Pause between two probes of `first-new`.
const PROBE_PAUSE: Duration = Duration::from_millis(2);
/// Longest wait for one probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How one held WebSocket ended.
struct Held {
    round_trips: Vec<u32>,
    /// Seconds after the hold began, and why, if it did not last to the end.
    dropped: Option<(f64, String)>,
}

/// `ws-hold ADDR PATH N SECONDS INTERVAL_MS`: open `n` WebSockets, print `opened=…`
/// (the script starts its upgrades after that line), then each sends a numbered message
/// every `interval_ms` and waits for its echo, for `seconds`. Prints how many were
/// dropped (closed, failed or silent for `ECHO_DEADLINE`) before the end.
pub async fn hold(addr: &str, path: &str, n: usize, seconds: u64, interval_ms: u64) -> Result<(), Failure> {
    let opening = futures_util::stream::iter(0..n)
        .map(|_| open(addr, path))
        .buffer_unordered(OPEN_CONCURRENCY);
    let results: Vec<Result<Ws, Failure>> = opening.collect().await;
    let open_failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        eprintln!("bench-client: a WebSocket did not open: {e}");
    }
    let sockets: Vec<Ws> = results.into_iter().filter_map(Result::ok).collect();
    println!("opened={}", sockets.len());
    std::io::stdout().flush()?;

    let begun = Instant::now();
    let until = begun + Duration::from_secs(seconds);
    let interval = Duration::from_millis(interval_ms.max(1));
    let count = sockets.len().max(1) as u32;
    let tasks = sockets.into_iter().enumerate().map(|(i, ws)| {
        let offset = interval * i as u32 / count;
        hold_one(ws, i, begun, until, interval, offset)
    });
    let held: Vec<Held> = futures_util::future::join_all(tasks).await;

    let mut drops: Vec<&(f64, String)> = held.iter().filter_map(|h| h.dropped.as_ref()).collect();
    drops.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, why) in drops.iter().take(DROPS_SHOWN) {
        eprintln!("bench-client: WebSocket dropped {at:.2} s into the hold: {why}");
    }
    let mut round_trips: Vec<u32> = held.iter().flat_map(|h| h.round_trips.iter().copied()).collect();
    println!("ws_open_failed={open_failed}");
    println!("ws_dropped={}", drops.len() + open_failed);
    println!("messages={}", round_trips.len());
    println!(
        "echo_max_ms={:.1}",
        f64::from(round_trips.iter().copied().max().unwrap_or(0)) / 1000.0
    );
    print_percentiles("", &mut round_trips);
    Ok(())
}

/// One WebSocket: a numbered message every `interval` after `offset`, each answered by
/// its own echo within `ECHO_DEADLINE`, until `until`.
async fn hold_one(
    mut ws: Ws,
    index: usize,
    begun: Instant,
    until: Instant,
    interval: Duration,
    offset: Duration,
) -> Held {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = Held {
        round_trips: Vec::new(),
        dropped: None,
    };
    for sequence in 0u64.. {
        ticks.tick().await;
        if Instant::now() >= until {
            break;
        }
        let message = format!("4{{\"ws\":{index},\"n\":{sequence}}}");
        let sent = Instant::now();
        match echo(&mut ws, &message).await {
            Ok(()) => held.round_trips.push(micros(sent.elapsed())),
            Err(why) => {
                held.dropped = Some((begun.elapsed().as_secs_f64(), why));
                return held;
            }
        }
    }
    let _ = ws.close(None).await;
    held
}

/// Send `message` and wait for that very text to come back.
async fn echo(ws: &mut Ws, message: &str) -> Result<(), String> {
    ws.send(Message::text(message))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = tokio::time::Instant::now() + ECHO_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("no echo within {ECHO_DEADLINE:?}")),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == message => return Ok(()),
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => return Err(format!("closed by the proxy: {frame:?}")),
            Ok(Some(Ok(other))) => return Err(format!("unexpected message: {other:?}")),
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(None) => return Err("the connection ended".into()),
        }
    }
}

/// Where `first-new` probes: the address and path that name the process answering, and
/// the proxy address and path whose new connections must all be answered (the same, when
/// the proxy names itself in its proxied answers).
pub struct Probes<'a> {
    pub named: (&'a str, &'a str),
    pub proxied: (&'a str, &'a str),
}

/// `first-new ADDR PATH OLD_PIDS SECONDS [AFTER_MS [PROXY_ADDR PROXY_PATH]]`: GET `path` on
/// a new connection every `PROBE_PAUSE` until an answer 200 names a process (an
/// `X-Proxy-Pid` header, or `"pid":N` in the body) not among `old_pids`; prints when
/// (`ready_unix_ms`) and which process. Probing goes on for `after_ms` more (while the old
/// process stops accepting); `probe_failures` counts every probe that got no 200 (a
/// refused or reset connect too), of the proxy's listener as well when it is another.
pub async fn first_new(probes_at: &Probes<'_>, old_pids: &str, seconds: u64, after_ms: u64) -> Result<(), Failure> {
    let old: Vec<u32> = old_pids.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    let until = Instant::now() + Duration::from_secs(seconds);
    let get = |(addr, path): (&str, &str)| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (addr, request) = (probes_at.named.0, get(probes_at.named));
    let proxied = (probes_at.proxied != probes_at.named).then(|| (probes_at.proxied.0, get(probes_at.proxied)));
    let (mut probes, mut failed) = (0u64, 0u64);
    let mut last_failure = String::new();
    let mut found: Option<(u128, u32, Instant)> = None;
    loop {
        let now = Instant::now();
        match found {
            Some((_, _, at)) if now >= at + Duration::from_millis(after_ms) => break,
            None if now >= until => {
                return Err(format!(
                    "no new process answered in {seconds} s ({probes} probes, {failed} failed; last: {last_failure})"
                )
                .into());
            }
            _ => {}
        }
        if let Some((proxy, request)) = &proxied {
            probes += 1;
            match tokio::time::timeout(PROBE_TIMEOUT, answer_200(proxy, request.as_bytes())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => (failed, last_failure) = (failed + 1, e.to_string()),
                Err(_) => (failed, last_failure) = (failed + 1, format!("no answer within {PROBE_TIMEOUT:?}")),
            }
        }
        probes += 1;
        match tokio::time::timeout(PROBE_TIMEOUT, probe(addr, request.as_bytes())).await {
            Ok(Ok(pid)) if found.is_none() && !old.contains(&pid) => {
                let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
                found = Some((unix_ms, pid, Instant::now()));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failed += 1;
                last_failure = e.to_string();
            }
            Err(_) => {
                failed += 1;
                last_failure = format!("no answer within {PROBE_TIMEOUT:?}");
            }
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    if failed > 0 {
        eprintln!("bench-client: {failed} of {probes} probes failed; last: {last_failure}");
    }
    let (unix_ms, pid, _) = found.ok_or("no new process")?;
    println!("ready_unix_ms={unix_ms}");
    println!("new_pid={pid}");
    println!("probes={probes}");
    println!("probe_failures={failed}");
    Ok(())
}

/// One GET on a new connection: the pid of the process that answered 200.
async fn probe(addr: &str, request: &[u8]) -> Result<u32, Failure> {
    let text = answer_200(addr, request).await?;
    answering_pid(&text).ok_or_else(|| "the answer names no pid".into())
}

/// One GET on a new connection, answered 200: the whole answer.
async fn answer_200(addr: &str, request: &[u8]) -> Result<String, Failure> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::with_capacity(1024);
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {}", text.lines().next().unwrap_or("(empty)")).into());
    }
    Ok(text)
}

/// The pid in an answer: an `X-Proxy-Pid` header, else the first `"pid":N` of the body.
fn answering_pid(answer: &str) -> Option<u32> {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let header = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-proxy-pid")
            .then(|| value.trim().parse().ok())?
    });
    header.or_else(|| {
        let rest = body.split("\"pid\":").nth(1)?;
        let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::answering_pid;

    #[test]
    fn the_pid_comes_from_the_header_or_the_body() {
        let header = "HTTP/1.1 200 OK\r\nx-proxy-pid: 41\r\n\r\n{\"pid\":7}";
        assert_eq!(answering_pid(header), Some(41));
        let body = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"status\":\"ok\",\"pid\": 1234,\"generation\":2}";
        assert_eq!(answering_pid(body), Some(1234));
        assert_eq!(answering_pid("HTTP/1.1 200 OK\r\n\r\nok"), None);
    }
}
