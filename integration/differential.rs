//! Differential testing (issue 21, item 7): the same request bytes through edgepin,
//! HAProxy and nginx, each in front of a server of its own that records what it receives
//! (`Recorder`). A request one proxy forwards and another refuses is fine; one that two
//! forward with a different meaning — how many requests, method, target, Host, body — is
//! a failure to look at, since a server behind one of them would act on a request the
//! others' servers never see (the shape of request smuggling and cache poisoning).
//!
//! Two tests: odd-but-valid requests (every proxy must forward each, and the servers must
//! get the same end-to-end fields too), then hostile shapes and requests generated from a
//! seed by the fuzzer's mutations (`fuzz::mutate`), for `EDGEPIN_DIFF_SECS` (default 15;
//! `make fuzz` runs longer) with `EDGEPIN_DIFF_SEED` (printed, so a failure replays).
//!
//! What counts as the same meaning, and the differences that are decisions rather than
//! bugs, are in [`meaning`] and [`KNOWN`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fuzz::{Rng, SEEDS, env_u64, mutate};
use crate::harness::recorder::{Arrival, Received};
use crate::harness::reference::Reference;
use crate::harness::{Proxy, Recorder, client};

const DEFAULT_SECS: u64 = 15;
const DEFAULT_SEED: u64 = 0x6469_6666_6564_6765;
/// A case's answer is over when the connection closes or stays quiet this long.
const QUIET: Duration = Duration::from_millis(150);
/// Longest a case waits for answers.
const CASE_WAIT: Duration = Duration::from_secs(2);

/// Fields a proxy writes for its own hop or about the client, which differ by design.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "expect",
    "upgrade",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "via",
];

/// What a forwarded request means to the server that gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meaning {
    method: String,
    /// Origin-form (an absolute-form target's path and query).
    target: String,
    /// The authority the server acts for: an absolute-form target's, else `Host`'s (lowercase).
    host: Option<String>,
    body: Vec<u8>,
    /// End-to-end fields (not [`HOP`]) by lowercase name, values in order; compared for
    /// the valid corpus only.
    fields: BTreeMap<String, Vec<Vec<u8>>>,
}

fn meaning(r: &Received) -> Meaning {
    let (target, authority) = match r.target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            let (authority, path) = rest.find(['/', '?']).map_or((rest, "/"), |i| rest.split_at(i));
            let path = if path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_string()
            };
            (path, Some(authority.to_ascii_lowercase()))
        }
        _ => (r.target.clone(), None),
    };
    let host = authority.or_else(|| r.value("host").map(|h| h.trim().to_ascii_lowercase()));
    let mut fields: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (name, value) in &r.fields {
        if !HOP.contains(&name.as_str()) && name != "host" {
            fields
                .entry(name.clone())
                .or_default()
                .push(value.trim_ascii().to_vec());
        }
    }
    Meaning {
        method: r.method.clone(),
        target,
        host,
        body: r.body.clone(),
        fields,
    }
}

/// What one proxy did with a case.
#[derive(Debug, Clone)]
struct Verdict {
    /// The first status line the client got, if any.
    status: Option<u16>,
    forwarded: Vec<Meaning>,
    /// Bytes the server could not read as a request (a partial body cut off, or worse).
    unparsable: usize,
}

/// A proxy under test and the server behind it.
struct Under {
    name: &'static str,
    target: client::Target,
    recorder: Recorder,
}

/// Send `bytes` on a fresh connection; read until the proxy closes or goes quiet.
async fn run_case(under: &Under, bytes: &[u8]) -> Verdict {
    let mut answer = Vec::new();
    if let Ok(s) = client::connect(&under.target).await {
        let (mut r, mut w) = tokio::io::split(s);
        let bytes = bytes.to_vec();
        let writer = tokio::spawn(async move {
            let _ = w.write_all(&bytes).await;
            w
        });
        let deadline = Instant::now() + CASE_WAIT;
        let mut buf = [0u8; 16384];
        loop {
            let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, r.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        writer.abort();
    }
    // What the server got was recorded before it answered; give a refused case's cut-off
    // upstream connection a moment to be seen, so it is not counted with the next case.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (mut forwarded, mut unparsable) = (Vec::new(), 0);
    for a in under.recorder.take() {
        match a {
            Arrival::Request(r) => forwarded.push(meaning(&r)),
            Arrival::Unparsable(_) => unparsable += 1,
        }
    }
    Verdict {
        status: final_status(&answer),
        forwarded,
        unparsable,
    }
}

/// The status of the first answer that is not interim (`100 Continue`), or of the first.
fn final_status(answer: &[u8]) -> Option<u16> {
    let statuses: Vec<u16> = answer
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"HTTP/1.")?.get(2..5))
        .filter_map(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .collect();
    statuses
        .iter()
        .copied()
        .find(|&s| s >= 200)
        .or(statuses.first().copied())
}

/// The three proxies, each before its own recorder.
struct Proxies {
    under: Vec<Under>,
    _edgepin: Proxy,
    _references: Vec<Reference>,
}

async fn start() -> Proxies {
    assert!(
        Reference::installed(),
        "the differential test needs haproxy and nginx: `make proxies` installs them"
    );
    let recorders = [
        Recorder::start().await,
        Recorder::start().await,
        Recorder::start().await,
    ];
    let edgepin = Proxy::start(&format!(
        "access_log: false\n\
         timeouts: {{ header: 3s, client: 3s, keepalive: 3s }}\n\
         routes:\n  - {{ path_prefix: /, backend: api }}\nbackends:\n  api: {{ servers: [r] }}\n\
         servers:\n  r: {{ address: {} }}\nhealth: {{ mode: tcp, interval: 5s }}\n",
        recorders[0].addr
    ));
    let haproxy = Reference::haproxy(recorders[1].addr);
    let nginx = Reference::nginx(recorders[2].addr);
    let [r0, r1, r2] = recorders;
    Proxies {
        under: vec![
            Under {
                name: "edgepin",
                target: edgepin.plain(),
                recorder: r0,
            },
            Under {
                name: "haproxy",
                target: client::Target::plain(haproxy.addr),
                recorder: r1,
            },
            Under {
                name: "nginx",
                target: client::Target::plain(nginx.addr),
                recorder: r2,
            },
        ],
        _edgepin: edgepin,
        _references: vec![haproxy, nginx],
    }
}

impl Proxies {
    /// One case through all three at once.
    async fn run(&self, bytes: &[u8]) -> Vec<Verdict> {
        let [a, b, c] = &self.under[..] else {
            unreachable!("three proxies")
        };
        let (a, b, c) = tokio::join!(run_case(a, bytes), run_case(b, bytes), run_case(c, bytes));
        vec![a, b, c]
    }
}

/// A difference between what two proxies forwarded: the first request (in order) they
/// both forwarded and read differently. Requests one forwarded past the other's last are
/// refusals of the other, not differences.
fn disagreement(a: &[Meaning], b: &[Meaning], with_fields: bool) -> Option<(usize, String)> {
    a.iter().zip(b).enumerate().find_map(|(i, (x, y))| {
        let (mut x, mut y) = (x.clone(), y.clone());
        if !with_fields {
            x.fields.clear();
            y.fields.clear();
        }
        (x != y).then(|| (i, format!("{x:?}\n     vs {y:?}")))
    })
}

/// Differences examined and kept as decisions: (the proxy that differs, why, whether it
/// applies to these request bytes). Each holds only when the two meanings differ in
/// their Host alone.
type Known = (&'static str, &'static str, fn(&[u8]) -> bool);
const KNOWN: &[Known] = &[
    (
        "nginx",
        "an absolute-form target names the authority (RFC 9112 §3.2.2: the Host field is \
         ignored); nginx's $http_host, which the reference config passes on, is the Host \
         field as sent (its $host would drop the port)",
        |bytes| {
            let target = bytes.split(|&b| b == b' ').nth(1).unwrap_or_default();
            target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://")
        },
    ),
    (
        "edgepin",
        "an HTTP/1.0 request may come without Host; edgepin speaks HTTP/1.1 to servers, \
         where Host is required, and sends the server's address (HAProxy and nginx send none)",
        |bytes| {
            let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(bytes.len());
            let head = bytes[..head_end].to_ascii_lowercase();
            let head = head.trim_ascii_start();
            let line_end = head
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(head.len());
            head[..line_end].ends_with(b"http/1.0") && !head.windows(6).any(|w| w == b"\nhost:")
        },
    ),
];

/// The decision that explains how `a` and `b` (proxy names) read `bytes`, if one does.
fn known(a: &str, b: &str, bytes: &[u8], x: &Meaning, y: &Meaning) -> Option<&'static str> {
    let host_only = (&x.method, &x.target, &x.body) == (&y.method, &y.target, &y.body);
    KNOWN
        .iter()
        .find(|(who, _, applies)| host_only && (*who == a || *who == b) && applies(bytes))
        .map(|(_, why, _)| *why)
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]);
    format!("{:?}{}", text, if bytes.len() > 400 { " …" } else { "" })
}

/// Compare every pair; the failures found, as text. With `valid` (the valid corpus),
/// end-to-end fields count too, and so does a difference between HAProxy and nginx (the
/// reference configs must agree); otherwise that one is only printed: it says nothing of
/// edgepin.
fn compare(under: &[Under], verdicts: &[Verdict], bytes: &[u8], valid: bool) -> Vec<String> {
    let mut failures = Vec::new();
    for i in 0..verdicts.len() {
        for j in i + 1..verdicts.len() {
            let (a, b) = (&verdicts[i], &verdicts[j]);
            if let Some((at, diff)) = disagreement(&a.forwarded, &b.forwarded, valid) {
                let (x, y) = (&a.forwarded[at], &b.forwarded[at]);
                if known(under[i].name, under[j].name, bytes, x, y).is_some() {
                    continue;
                }
                let text = format!(
                    "{} and {} forward request #{at} of {} differently:\n     {diff}",
                    under[i].name,
                    under[j].name,
                    show(bytes)
                );
                if valid || under[i].name == "edgepin" {
                    failures.push(text);
                } else {
                    println!("between the references: {text}");
                }
            }
        }
    }
    failures
}

/// An HTTP/1.1 request without `Host` must be refused (RFC 9112 §3.2), even with an
/// absolute-form target: nginx does; edgepin and HAProxy take the target's authority.
const NO_HOST: &[u8] = b"GET http://app.example/abs?q=1 HTTP/1.1\r\nConnection: close\r\n\r\n";

/// Odd but valid requests (RFC 9112): each is sent alone, on its own connection.
fn corpus() -> Vec<Vec<u8>> {
    let long = "v".repeat(8000);
    let mut c: Vec<Vec<u8>> = vec![
        b"GET /a?b=c&d=%20e HTTP/1.1\r\nhOsT: app.example\r\nACCEPT: */*\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /multi HTTP/1.1\r\nHost: x\r\nX-Multi: 1\r\nX-Multi: 2\r\nx-multi: 3\r\nConnection: close\r\n\r\n".to_vec(),
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\nConnection: close\r\n\r\na=1&b=2&c=3".to_vec(),
        b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n".to_vec(),
        b"GET /ten HTTP/1.0\r\nHost: x\r\nUser-Agent: old\r\n\r\n".to_vec(),
        NO_HOST.to_vec(),
        b"HEAD /head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /odd HTTP/1.1\r\nHost: x\r\nX-Odd: a\tb  c\r\nX-Spaces:    padded   \r\nConnection: close\r\n\r\n".to_vec(),
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

/// Shapes that parsers are known to read differently (request smuggling, Host
/// confusion, framing edge cases). Most should be refused by someone; none may be
/// forwarded with two meanings.
const HOSTILE: &[&[u8]] = &[
    b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST /smuggled HTTP/1.1\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
    b"POST /te-list HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /te-x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /te-space HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /te-tab HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /te-vt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /te-twice HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /te-10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /cl-twice HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcdeGET /x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /cl-same HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /cl-list HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"POST /cl-plus HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    b"POST /cl-zero HTTP/1.1\r\nHost: x\r\nContent-Length: 003\r\n\r\nabc",
    b"POST /cl-fold HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\nabc",
    b"POST /chunk-lf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    b"POST /chunk-junk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 junk\r\nabc\r\n0\r\n\r\n",
    b"POST /chunk-big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
    b"POST /chunk-ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\r\nc\"\r\nabc\r\n0\r\n\r\n",
    b"POST /chunk-short HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /trailer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 50\r\nGET /admin HTTP/1.1\r\n\r\n",
    b"GET /host-userinfo HTTP/1.1\r\nHost: a@evil.example\r\n\r\n",
    b"GET /host-path HTTP/1.1\r\nHost: evil.example/foo\r\n\r\n",
    b"GET /host-twice HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n",
    b"GET /host-empty HTTP/1.1\r\nHost:\r\n\r\n",
    b"GET /host-none HTTP/1.1\r\n\r\n",
    b"GET /host-space HTTP/1.1\r\nHost: good.example evil.example\r\n\r\n",
    b"GET http://good.example/abs HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    b"GET http://good.example:8080?q HTTP/1.1\r\nHost: good.example:8080\r\n\r\n",
    b"GET /fold HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n X-B: 2\r\n\r\n",
    b"GET /lf-only HTTP/1.1\nHost: x\n\n",
    b"GET /cr-only HTTP/1.1\rHost: x\r\r\n",
    b"GET /nul HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET /space-name HTTP/1.1\r\nHost: x\r\nX A: 1\r\n\r\n",
    b"GET /frag#x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  /two-spaces HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /ver HTTP/1.10\r\nHost: x\r\n\r\n",
    b"GET /ver2 HTTP/2.0\r\nHost: x\r\n\r\n",
    b"get /lower HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /get-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n40GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
];

/// Run `cases` (name for the report, bytes), comparing every pair of proxies.
async fn differ(
    proxies: &Proxies,
    cases: impl Iterator<Item = (String, Vec<u8>)>,
    until: Instant,
) -> (usize, Vec<String>) {
    let (mut ran, mut failures) = (0, Vec::new());
    for (name, bytes) in cases {
        if Instant::now() >= until {
            break;
        }
        let verdicts = proxies.run(&bytes).await;
        for f in compare(&proxies.under, &verdicts, &bytes, false) {
            failures.push(format!("{name}: {f}"));
        }
        ran += 1;
    }
    (ran, failures)
}

/// A table of who forwarded what, for the log.
fn summary(proxies: &Proxies, verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    for (u, v) in proxies.under.iter().zip(verdicts) {
        let _ = write!(
            out,
            " {}={}/{}{}",
            u.name,
            v.status.map_or("-".to_string(), |s| s.to_string()),
            v.forwarded.len(),
            if v.unparsable > 0 { "!" } else { "" }
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_requests_mean_the_same_through_edgepin_haproxy_and_nginx() {
    let proxies = start().await;
    let mut failures = Vec::new();
    for bytes in corpus() {
        let verdicts = proxies.run(&bytes).await;
        for (u, v) in proxies.under.iter().zip(&verdicts) {
            if bytes == NO_HOST && u.name == "nginx" && v.status == Some(400) && v.forwarded.is_empty() {
                continue;
            }
            if v.status != Some(200) || v.forwarded.len() != 1 {
                failures.push(format!(
                    "{} answered {:?} and forwarded {} request(s) for {}",
                    u.name,
                    v.status,
                    v.forwarded.len(),
                    show(&bytes)
                ));
            }
        }
        failures.extend(compare(&proxies.under, &verdicts, &bytes, true));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_and_generated_requests_never_mean_two_things() {
    let secs = env_u64("EDGEPIN_DIFF_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("EDGEPIN_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    println!("differential: EDGEPIN_DIFF_SEED={seed:#x} EDGEPIN_DIFF_SECS={secs}");
    let proxies = start().await;

    let mut failures = Vec::new();
    for (i, bytes) in HOSTILE.iter().enumerate() {
        let verdicts = proxies.run(bytes).await;
        println!(
            "hostile {i:2}:{}  {}",
            summary(&proxies, &verdicts),
            show(&bytes[..bytes.len().min(40)])
        );
        for f in compare(&proxies.under, &verdicts, bytes, false) {
            failures.push(format!("hostile {i}: {f}"));
        }
    }

    let until = Instant::now() + Duration::from_secs(secs);
    let mut rng = Rng(seed);
    let generated = std::iter::from_fn(|| {
        let mut req = rng.pick(SEEDS).to_vec();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut req);
        }
        Some(req)
    })
    .enumerate()
    .map(|(i, bytes)| (format!("generated {i} (seed {seed:#x})"), bytes));
    let (ran, more) = differ(&proxies, generated, until).await;
    failures.extend(more);
    println!("differential: {} hostile and {ran} generated cases", HOSTILE.len());
    assert!(ran > 0, "no generated case ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
