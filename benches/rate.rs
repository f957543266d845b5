//! The `rest_rate_*` scenarios' side of `bench-client`: keep-alive HTTP/1.1 GETs at a
//! fixed, open-loop rate, with each latency counted from when the request was *due*,
//! not from when it was sent (as wrk2 does). A closed loop (wrk) at saturation hides
//! stalls: a stalled connection sends nothing, so its stall is counted once
//! (coordinated omission). Here request `i` is due at `start + i / RPS` on connection
//! `i % CONNECTIONS`; a connection whose previous answer is late sends as soon as it
//! can, and every request it delayed counts the delay. It only measures: the proxies
//! are started and stopped by `benches/run.sh`.
//!
//! Several targets (`LABEL=ADDR,LABEL=ADDR…`) take turns in slices of the one schedule
//! (run.sh's `PAIRED=1`): slice `k` goes to one target, the next to another, each round
//! starting one target later, so every target meets the same spells of the machine. Each
//! has its own connections and its own figures, printed after its label. On a VM whose
//! host slows down for seconds at a time, two runs of one proxy ten seconds apart often
//! differ by more than two proxies do; targets in neighbouring slices of half a second
//! meet the same slow seconds (not the same single stalls: see benches/README.md,
//! "Proxies in turns").
//!
//! The connections run on the caller's current-thread runtime, like `wrk -t1`; the
//! schedule is kept by a pacer thread (`pace`): tokio's timer wheel has 1 ms ticks,
//! which would add up to 1 ms to every latency. (Pacing on the runtime's thread with
//! short thread sleeps between polls was tried: p50 direct to a backend 0.45-0.50 ms
//! against 0.11-0.15 ms with the thread, at the same CPU cost.)

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::{Failure, STEP_TIMEOUT, insecure_connector, label_prefix, micros, percentile_ms};

/// After the last due time, how long late answers are still awaited; a request not
/// answered by then is an error.
const DRAIN: Duration = Duration::from_secs(5);
/// Errors described on stderr (with why); the rest are only counted.
const ERRORS_SHOWN: u64 = 3;
/// Bytes of an answer head and body at most (the bench backends send ~100).
const ANSWER_LIMIT: usize = 64 * 1024;

/// What to run: `rps` requests a second over `connections` keep-alive connections (per
/// target), the first `warmup` seconds not recorded, then `seconds` measured. With
/// several targets those are each one's: the schedule is as many times longer, and each
/// target holds it for a `slice` in turn.
pub struct Plan {
    pub rps: f64,
    pub seconds: u64,
    pub warmup: u64,
    pub connections: usize,
    pub tls: bool,
    pub slice: Duration,
}

/// A connection to the proxy, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// Where the requests go and what they are.
struct Target<'a> {
    addr: &'a str,
    request: &'a [u8],
    tls: Option<&'a TlsConnector>,
}

impl Target<'_> {
    async fn connect(&self) -> Result<Box<dyn Io>, Failure> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(match self.tls {
            Some(connector) => Box::new(connector.connect(ServerName::try_from("localhost")?, tcp).await?),
            None => Box::new(tcp),
        })
    }
}

/// The times that decide what is recorded.
#[derive(Clone, Copy)]
struct Window {
    /// Requests due from here on are recorded (the warm-up is over).
    measured_from: Instant,
    /// Requests not answered by here are errors.
    give_up: Instant,
}

/// What one connection saw of the measured requests.
#[derive(Default)]
struct Tally {
    /// Microseconds from due to the whole answer read, per answered request.
    latencies: Vec<u32>,
    errors: u64,
    /// Answered requests, the warm-up's too (for per-request figures of the whole run).
    answered_all: u64,
    /// The last recorded request's due time, and when its answer was in.
    last_due: Option<Instant>,
    last_answer: Option<Instant>,
}

/// `rate ADDR PATH RPS SECONDS CONNECTIONS WARMUP plain|tls [SLICE_MS]`: prints `requests`
/// (measured), `requests_all` (with the warm-up), `errors`, `achieved_rps`, `p50_ms`,
/// `p90_ms`, `p99_ms`, `p999_ms`, `max_ms`, how late the pacer was at worst
/// (`pacer_late_max_ms`) and the client's own `client_cpu_pct` (of one core, over the
/// whole schedule). The lines of a target given as `LABEL=ADDR` start with its label.
pub async fn run(targets: &[(String, String)], path: &str, plan: &Plan) -> Result<(), Failure> {
    if !plan.rps.is_finite() || plan.rps <= 0.0 || plan.connections == 0 || plan.seconds == 0 {
        return Err("RPS, SECONDS and CONNECTIONS must be positive".into());
    }
    if targets.is_empty() || plan.slice.is_zero() {
        return Err("a target and a positive SLICE_MS are needed".into());
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();
    let connector = if plan.tls {
        Some(insecure_connector(true, &[])?)
    } else {
        None
    };
    let targets: Vec<(&str, Target)> = targets
        .iter()
        .map(|(label, addr)| {
            let target = Target {
                addr,
                request: &request,
                tls: connector.as_ref(),
            };
            (label.as_str(), target)
        })
        .collect();
    let mut streams = Vec::with_capacity(targets.len());
    for (_, target) in &targets {
        let mut own = Vec::with_capacity(plan.connections);
        for _ in 0..plan.connections {
            own.push(tokio::time::timeout(STEP_TIMEOUT, target.connect()).await??);
        }
        streams.push(own);
    }

    // Each target's warm-up and measured seconds, the targets' slices side by side.
    let turns = targets.len() as u32;
    let start = Instant::now() + Duration::from_millis(10);
    let measured_from = start + Duration::from_secs(plan.warmup) * turns;
    let end = measured_from + Duration::from_secs(plan.seconds) * turns;
    let window = Window {
        measured_from,
        give_up: end + DRAIN,
    };
    let errors_shown = std::sync::atomic::AtomicU64::new(0);
    let mut senders = Vec::with_capacity(targets.len());
    let mut connections = FuturesUnordered::new();
    for (index, ((_, target), own)) in targets.iter().zip(streams).enumerate() {
        let (to, from): (Vec<_>, Vec<_>) = (0..plan.connections).map(|_| mpsc::unbounded_channel()).unzip();
        senders.push(to);
        for (stream, due) in own.into_iter().zip(from) {
            let tally = connection(target, Some(stream), due, window, &errors_shown);
            connections.push(async move { (index, tally.await) });
        }
    }
    let schedule = Schedule {
        rps: plan.rps,
        count: ((plan.warmup + plan.seconds) as f64 * f64::from(turns) * plan.rps) as u64,
        turns: Turns {
            start,
            slice: plan.slice,
            targets: targets.len() as u64,
        },
    };
    let cpu_before = cpu_seconds();
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pace(&schedule, &senders))?;

    let mut tallies: Vec<Vec<Tally>> = targets.iter().map(|_| Vec::new()).collect();
    while let Some((index, tally)) = connections.next().await {
        tallies[index].push(tally);
    }
    let late_by = pacer.join().map_err(|_| "the pacer thread panicked")?;
    let cpu = cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
    let elapsed = start.elapsed().as_secs_f64();

    for ((label, _), tallies) in targets.iter().zip(tallies) {
        let prefix = label_prefix(label);
        let mut lines = figures(tallies, plan.seconds);
        lines.push(format!("pacer_late_max_ms={:.3}", late_by.as_secs_f64() * 1000.0));
        if let Some(cpu) = cpu {
            lines.push(format!("client_cpu_pct={:.1}", 100.0 * cpu / elapsed));
        }
        for line in lines {
            println!("{prefix}{line}");
        }
    }
    Ok(())
}

/// One target's figures, as `key=value` lines. `achieved_rps` divides its measured
/// requests by its measured seconds plus how late its last answer was: a proxy that
/// falls behind the schedule answers the last request late.
fn figures(tallies: Vec<Tally>, seconds: u64) -> Vec<String> {
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let answered_all: u64 = tallies.iter().map(|t| t.answered_all).sum();
    let behind = tallies
        .iter()
        .filter_map(|t| Some(t.last_answer?.saturating_duration_since(t.last_due?)))
        .max()
        .unwrap_or_default();
    let mut latencies: Vec<u32> = tallies.into_iter().flat_map(|t| t.latencies).collect();
    latencies.sort_unstable();
    let span = seconds as f64 + behind.as_secs_f64();
    let mut lines = vec![
        format!("requests={}", latencies.len()),
        format!("requests_all={answered_all}"),
        format!("errors={errors}"),
        format!("achieved_rps={:.1}", latencies.len() as f64 / span),
    ];
    for (name, p) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p999", 0.999),
        ("max", 1.0),
    ] {
        lines.push(format!("{name}_ms={:.3}", percentile_ms(&latencies, p)));
    }
    lines
}

/// The due times to hand out: `count` of them, `1/rps` apart from the turns' start.
struct Schedule {
    rps: f64,
    count: u64,
    turns: Turns,
}

/// Whose turn it is, of the targets sharing one run, `slice` at a time from `start`
/// (also `ws-echo`'s).
#[derive(Clone, Copy)]
pub struct Turns {
    pub start: Instant,
    pub slice: Duration,
    pub targets: u64,
}

impl Turns {
    fn slice(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.start).as_nanos() / self.slice.as_nanos().max(1)) as u64
    }

    /// The target whose turn `at` falls in.
    pub fn owner(&self, at: Instant) -> usize {
        slice_owner(self.slice(at), self.targets)
    }

    /// When `target`'s next turn after `at` begins (each round holds one turn of each).
    pub fn next_start(&self, target: usize, at: Instant) -> Instant {
        let now = self.slice(at);
        let next = (now + 1..=now + 2 * self.targets)
            .find(|&k| slice_owner(k, self.targets) == target)
            .unwrap_or(now + 1);
        self.start + self.slice * next as u32
    }
}

/// Which of `n` targets holds slice `k`: in turn, each round starting one target later
/// (for two: A B B A A B …), so none always comes after the same one.
fn slice_owner(k: u64, n: u64) -> usize {
    ((k % n + k / n) % n) as usize
}

/// Hand out the schedule's due times, each when it is due (on its own thread:
/// `std::thread::sleep` wakes within ~0.1 ms on an idle core), to the target whose
/// slice it falls in, round-robin over that target's connections. Returns how late the
/// pacer itself was at worst: a client that cannot keep its own schedule blames the
/// proxy for it.
fn pace(schedule: &Schedule, targets: &[Vec<mpsc::UnboundedSender<Instant>>]) -> Duration {
    let mut late_by = Duration::ZERO;
    let mut sent = vec![0usize; targets.len()];
    for i in 0..schedule.count {
        let due = schedule.turns.start + Duration::from_secs_f64(i as f64 / schedule.rps);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            late_by = late_by.max(now - due);
        }
        let owner = schedule.turns.owner(due);
        let connections = &targets[owner];
        // A connection gone (it never is before its channel closes) just loses its turn.
        let _ = connections[sent[owner] % connections.len()].send(due);
        sent[owner] += 1;
    }
    late_by
}

/// One connection: for each due time, send the request as soon as the previous answer
/// is in, read the whole answer, and record from the due time. A failed request is an
/// error; the next one opens a new connection.
async fn connection(
    target: &Target<'_>,
    mut stream: Option<Box<dyn Io>>,
    mut due: mpsc::UnboundedReceiver<Instant>,
    window: Window,
    errors_shown: &std::sync::atomic::AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let mut answer = Vec::with_capacity(4096);
    while let Some(at) = due.recv().await {
        let recorded = at >= window.measured_from;
        let outcome = if Instant::now() >= window.give_up {
            Err("not sent before the drain ended".into())
        } else {
            let exchange = async {
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => stream.insert(target.connect().await?),
                };
                exchange(s, target.request, &mut answer).await
            };
            match tokio::time::timeout_at(window.give_up.into(), exchange).await {
                Ok(result) => result,
                Err(_) => Err("no answer before the drain ended".into()),
            }
        };
        let done = Instant::now();
        match outcome {
            Ok(keep) => {
                tally.answered_all += 1;
                if !keep {
                    stream = None;
                }
                if recorded {
                    tally.latencies.push(micros(done.duration_since(at)));
                    tally.last_due = Some(at);
                    tally.last_answer = Some(done);
                }
            }
            Err(e) => {
                stream = None;
                if recorded {
                    tally.errors += 1;
                    if errors_shown.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ERRORS_SHOWN {
                        eprintln!(
                            "bench-client rate: error {:.1} ms after due: {e}",
                            micros(done - at) as f64 / 1e3
                        );
                    }
                }
            }
        }
    }
    tally
}

/// Send one GET and read its whole answer into `buf` (a `200` with a Content-Length).
/// Returns whether the connection stays open (no `Connection: close`).
async fn exchange(s: &mut Box<dyn Io>, request: &[u8], buf: &mut Vec<u8>) -> Result<bool, Failure> {
    s.write_all(request).await?;
    // Over TLS the request may sit in the session until flushed.
    s.flush().await?;
    buf.clear();
    loop {
        if s.read_buf(buf).await? == 0 {
            return Err("the proxy closed the connection before the whole answer".into());
        }
        if let Some((length, close)) = answer_head(buf)?
            && buf.len() >= length
        {
            return Ok(!close);
        }
        if buf.len() > ANSWER_LIMIT {
            return Err(format!("an answer over {ANSWER_LIMIT} bytes").into());
        }
    }
}

/// The answer's head, once whole: the total length (head and body) and whether the
/// proxy closes after it; `None` while incomplete.
fn answer_head(buf: &[u8]) -> Result<Option<(usize, bool)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    if response.code != Some(200) {
        return Err(format!("status {:?}", response.code).into());
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or("no Content-Length in the answer")?;
    let close = header("connection").is_some_and(|v| v == "close");
    Ok(Some((head_len + length, close)))
}

/// This process's user + system CPU time so far (/proc/self/stat, USER_HZ = 100).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::{Turns, answer_head, slice_owner};
    use std::time::{Duration, Instant};

    #[test]
    fn slices_go_round_each_round_starting_one_target_later() {
        let owners = |n, slices| (0..slices).map(|k| slice_owner(k, n)).collect::<Vec<_>>();
        assert_eq!(owners(1, 4), [0, 0, 0, 0]);
        assert_eq!(owners(2, 8), [0, 1, 1, 0, 0, 1, 1, 0]);
        assert_eq!(owners(3, 9), [0, 1, 2, 1, 2, 0, 2, 0, 1]);
        // Over n rounds each target holds each place in a round once, and as many slices.
        for n in 1..=4u64 {
            let all = owners(n, n * n);
            for target in 0..n as usize {
                assert_eq!(all.iter().filter(|&&o| o == target).count(), n as usize);
            }
        }
    }

    #[test]
    fn a_target_out_of_turn_waits_for_its_next_slice() {
        let start = Instant::now();
        let slice = Duration::from_millis(100);
        let turns = Turns {
            start,
            slice,
            targets: 2,
        };
        // Two targets: slices 0 1 1 0 0 1 1 0 …
        assert_eq!(turns.owner(start), 0);
        assert_eq!(turns.owner(start + slice * 2), 1);
        assert_eq!(turns.next_start(1, start), start + slice);
        assert_eq!(turns.next_start(0, start + slice / 2), start + slice * 3);
        assert_eq!(turns.next_start(1, start + slice * 2), start + slice * 5);
        let one = Turns { targets: 1, ..turns };
        assert_eq!(one.next_start(0, start), start + slice);
    }

    #[test]
    fn answer_head_needs_the_whole_head_and_tells_length_and_close() {
        assert!(
            answer_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
                .unwrap()
                .is_none()
        );
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(answer_head(head).unwrap(), Some((head.len() + 5, false)));
        let closing = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: Close\r\n\r\n";
        assert_eq!(answer_head(closing).unwrap(), Some((closing.len(), true)));
        assert!(answer_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").is_err());
    }
}
