//! Property test of the whole config pipeline on mutated files: from a few valid seeds,
//! random edits (bytes, YAML punctuation, hostile scalars, moved and duplicated lines,
//! deep nesting, truncation) must never make `parse` panic, and every rejection must
//! name a real position (`file:line:col`, line and column ≥ 1, inside the text) and say
//! something. Test-only; the seeds are checked to be valid first.

use std::path::Path;

use proptest::prelude::*;

use super::parse_and_validate;

const SEEDS: &[&str] = &[
    super::tests::MINIMAL,
    "\
listen: { http: 127.0.0.1:8080, stats: 127.0.0.1:8404, redirect: false, proxy_protocol: true }
trusted_proxies: [10.0.0.0/8, \"::1\"]
timeouts: { connect: 2s, client: 30s, server: 30s, tunnel: 1h, keepalive: 60s, queue: 5s, header: 10s }
limits: { max_header_bytes: 16384, max_body_bytes: 10485760, max_connections: 10000 }
access_log: true
threads: 2
routes:
  - { host: \"*.example.com\", path_prefix: /socket.io/, backend: sockets, websocket: true }
  - { path_prefix: /, backend: api }
acme: { backend: api }
backends:
  api: { balance: round_robin, servers: [w1, w2], retries: 3, max_queue: 100, timeouts: { server: 10s } }
  sockets: { balance: sticky, cookie: EDGEPIN, servers: [w1, w2], hash_balance_factor: 1.1, slow_start: 30s,
             new_sessions: { per_second: 500, burst: 1000 } }
servers:
  w1: { address: 127.0.0.1:3001, weight: 2, max_connections: 100, slow_start: 0s }
  w2: { address: 127.0.0.1:3002 }
health: { path: /health, mode: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, expect: 200-399, passive_fall: 3 }
stats: { refresh: 5 }
sticky: { same_site: Lax, sid_ttl: 2m, max_sids: 100000, handshake_rate: { per_second: 20, burst: 200 },
          shared: { redis: \"redis://10.0.0.5:6379\", timeout: 50ms, key_prefix: \"edgepin:sid:\" } }
reload: { drain_timeout: 5m, pidfile: run/edgepin.pid }
workers: { redis: spawn, redis_port: 6380 }
",
    "\
# block style, as in proxy.yaml
listen:
  http: 0.0.0.0:80            # plain
  stats: 127.0.0.1:8404
routes:
  - path_prefix: /socket.io/
    backend: sockets
    websocket: true
  - path_prefix: /
    backend: api
backends:
  api:
    balance: least_conn
    servers: [w1, w2, w3]
  sockets:
    balance: sticky
    servers:
      - w1
      - w2
    timeouts:
      server: 60s
servers:
  w1:
    address: 127.0.0.1:3001
  w2:
    address: 127.0.0.1:3002
    weight: 0
  w3: { address: \"[::1]:3003\" }
health:
  mode: tcp
sticky:
  handshake_rate:
    per_second: 0
workers:
  redis: \"redis://127.0.0.1:6379\"
",
];

/// Scalars and punctuation that stress the parser and the validators.
const TOKENS: &[&str] = &[
    "~",
    "null",
    "-1",
    "99999999999999999999",
    "1e309",
    ".nan",
    "0",
    "\"\"",
    "[]",
    "{}",
    "*a",
    "&a x",
    "!!binary aGk=",
    "<<: *a",
    "yes",
    "0x1F",
    "1_000",
    "1h1h",
    "300000000000000000000s",
    "::",
    "[::1]:0",
    "256.1.1.1:80",
    "/",
    "? x",
    "- - -",
    "|\n  x",
    ">-",
    "'",
    "\"\\u0000\"",
    "\t",
    "%YAML 1.2",
    "---",
    "...",
    "é",
    "\u{feff}",
    "a: b: c",
    ": ",
    "#",
    "&x [*x]",
];

/// Plausible values in the wrong place: these reach the validators, not the parser.
const SCALARS: &[&str] = &[
    "0s",
    "0",
    "65536",
    "-5",
    "0.0.0.0:0",
    "1.2.3.4",
    "nonsense",
    "strict",
    "tcp",
    "/x",
    "*.x",
    "w9",
    "api",
    "1000000000",
    "1.5",
    "true",
    "127.0.0.1:3001",
    "[w1, w1]",
    "{}",
    "2s",
    "600-100",
    "x:1",
    "\"\"",
    "10.0.0.0/33",
    "rediss://h:1",
    "sticky",
    "source",
    "least_conn",
    "None",
];

const PUNCTUATION: &[char] = &[
    ':', '-', '[', ']', '{', '}', ',', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '\n', '\t', ' ', '0', 'a',
    '\0', '\r', '\\',
];

fn line_bounds(text: &[char], at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let start = text[..at].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1);
    let end = text[at..]
        .iter()
        .position(|&c| c == '\n')
        .map_or(text.len(), |i| at + i + 1);
    (start, end)
}

/// Apply one edit, chosen and placed by the numbers.
fn mutate(text: &mut Vec<char>, op: u8, a: u32, b: u32) {
    let len = text.len();
    let at = a as usize % (len + 1);
    match op % 13 {
        0 => text.insert(at, PUNCTUATION[b as usize % PUNCTUATION.len()]),
        1 => text.insert(at, char::from_u32(b % 0x3_0000).unwrap_or('\u{fffd}')),
        2 => {
            let end = (at + 1 + b as usize % 12).min(len);
            text.drain(at..end);
        }
        3 => {
            let token = TOKENS[b as usize % TOKENS.len()];
            // Replace the word at `at` (up to a space or separator) by the token.
            let end = text[at..]
                .iter()
                .position(|c| c.is_whitespace() || ",:{}[]".contains(*c))
                .map_or(len, |i| at + i);
            text.splice(at..end, token.chars());
        }
        4 => {
            let (s, e) = line_bounds(text, at);
            let line: Vec<char> = text[s..e].to_vec();
            let (_, to) = line_bounds(text, b as usize % (len + 1));
            text.splice(to..to, line);
        }
        5 => {
            let (s, e) = line_bounds(text, at);
            text.drain(s..e);
        }
        6 => {
            let (s, _) = line_bounds(text, at);
            if b.is_multiple_of(2) {
                text.splice(s..s, "  ".chars());
            } else if text[s..].starts_with(&[' ', ' ']) {
                text.drain(s..s + 2);
            }
        }
        7 => text.truncate(at),
        8 => {
            // Deep nesting or a long run.
            let unit = ["[", "{", "- ", "a: ", "x"][b as usize % 5];
            let n = [10usize, 200, 3000][(b / 5) as usize % 3];
            text.splice(at..at, unit.repeat(n).chars());
        }
        9 => {
            // Swap two lines.
            let (s1, e1) = line_bounds(text, at);
            let first: Vec<char> = text.drain(s1..e1).collect();
            let (s2, _) = line_bounds(text, b as usize % (text.len() + 1));
            text.splice(s2..s2, first);
        }
        _ => {
            // Another value for the next key from `at`.
            let Some(colon) = text[at..].windows(2).position(|w| w == [':', ' ']).map(|i| at + i + 2) else {
                return;
            };
            let end = text[colon..]
                .iter()
                .position(|c| ",}\n#".contains(*c))
                .map_or(text.len(), |i| colon + i);
            text.splice(colon..end, SCALARS[b as usize % SCALARS.len()].chars());
        }
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn the_seeds_are_valid() {
    for seed in SEEDS {
        let r = parse_and_validate(Path::new("t.yaml"), seed, &no_env);
        assert!(r.is_ok(), "{r:?}\n{seed}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn a_mutated_config_is_accepted_or_rejected_with_positions(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<u8>(), any::<u32>(), any::<u32>()), 1..6),
    ) {
        let mut text: Vec<char> = SEEDS[seed].chars().collect();
        for (op, a, b) in edits {
            mutate(&mut text, op, a, b);
        }
        let text: String = text.into_iter().collect();
        let lines = text.split('\n').count() as u32;
        if let Err(errors) = parse_and_validate(Path::new("t.yaml"), &text, &no_env) {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                let shown = e.to_string();
                prop_assert!(e.pos.line >= 1 && e.pos.col >= 1, "no position: {}\n---\n{}", shown, text);
                prop_assert!(e.pos.line <= lines + 1, "past the end: {}\n---\n{}", shown, text);
                let prefix = format!("t.yaml:{}:{}: ", e.pos.line, e.pos.col);
                prop_assert!(shown.starts_with(&prefix) && shown.len() > prefix.len(), "{}", shown);
            }
        }
    }
}
