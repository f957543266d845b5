//! criterion micro-benchmarks of the code edgepin runs on every request:
//! `cargo bench --bench hot_path` (add `-- cookie` to run one group).
//!
//! The inputs are what a browser's Socket.IO client sends: a cookie header with the
//! usual analytics cookies around ours, an Engine.IO long-poll query, four servers.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use edgepin::balance::{HashCandidate, RoundRobin, addr_key, name_id, pick_bounded};
use edgepin::proxy::forwarding;
use edgepin::proxy::hot_path::{RequestHead, Upstream, write_head};
use edgepin::state::ServerState;
use edgepin::sticky::engineio::{EngineQuery, open_packet_sid};
use edgepin::sticky::{cookie, sid::SidTable};

const COOKIE: &[u8] = b"_ga=GA1.1.1234567890.1700000000; theme=dark; EDGEPIN=0123456789abcdef; \
    io=lv_VI97HAXpY6yYWAAAC; _gid=GA1.2.987654321.1700000000";
const QUERY: &str = "EIO=4&transport=polling&t=OxyZ12a&sid=lv_VI97HAXpY6yYWAAAC";
const OPEN_PACKET: &[u8] =
    br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

fn client() -> IpAddr {
    IpAddr::from([203, 0, 113, 77])
}

fn bench_cookie(c: &mut Criterion) {
    let mut g = c.benchmark_group("cookie");
    g.bench_function("find", |b| b.iter(|| cookie::find(black_box(COOKIE), "EDGEPIN")));
    g.bench_function("find_absent", |b| b.iter(|| cookie::find(black_box(COOKIE), "OTHER")));
    g.bench_function("strip", |b| b.iter(|| cookie::strip(black_box(COOKIE), "EDGEPIN")));
    g.finish();
}

fn bench_engineio(c: &mut Criterion) {
    let mut g = c.benchmark_group("engineio");
    g.bench_function("query_parse", |b| b.iter(|| EngineQuery::parse(black_box(Some(QUERY)))));
    g.bench_function("open_packet_sid", |b| {
        b.iter(|| open_packet_sid(black_box(OPEN_PACKET)))
    });
    g.finish();
}

fn bench_selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    let rr = RoundRobin::default();
    let weights = [1u32; 4];
    g.bench_function("round_robin_4", |b| {
        b.iter(|| rr.pick(|i| weights[i], black_box(4), |_| true, |_| edgepin::state::FULL_SHARE))
    });
    // One of four in slow start at a quarter of its weight.
    g.bench_function("round_robin_4_one_ramping", |b| {
        b.iter(|| {
            rr.pick(
                |i| weights[i],
                black_box(4),
                |_| true,
                |i| if i == 3 { 250 } else { edgepin::state::FULL_SHARE },
            )
        })
    });
    let candidates: Vec<HashCandidate> = ["w1", "w2", "w3", "w4"]
        .iter()
        .enumerate()
        .map(|(index, name)| HashCandidate {
            index,
            id: name_id(name),
            weight: 1,
            load: 10 + index as u64,
        })
        .collect();
    g.bench_function("addr_key", |b| b.iter(|| addr_key(black_box(client()))));
    g.bench_function("pick_bounded_4", |b| {
        b.iter(|| pick_bounded(addr_key(black_box(client())), black_box(&candidates), 1.05))
    });
    g.finish();
}

fn bench_sid_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("sid_table");
    let table = SidTable::new(100_000, Duration::from_secs(120));
    let servers: Vec<Arc<ServerState>> = (1..=4)
        .map(|i| Arc::new(ServerState::new(&format!("w{i}"), 1)))
        .collect();
    for i in 0..10_000 {
        table.learn(&format!("sid{i:017}"), &servers[i % 4]);
    }
    g.bench_function("lookup_hit_10k", |b| {
        b.iter(|| table.lookup(black_box("sid00000000000004242")))
    });
    g.bench_function("lookup_miss_10k", |b| {
        b.iter(|| table.lookup(black_box("unknown-session-id")))
    });
    g.bench_function("learn_forget", |b| {
        b.iter(|| {
            table.learn(black_box("fresh-session-id-0001"), &servers[0]);
            table.forget(black_box("fresh-session-id-0001"));
        })
    });
    g.finish();
}

/// A browser's long-poll request as it arrives.
fn request() -> Vec<u8> {
    let mut head = format!("GET /socket.io/?{QUERY} HTTP/1.1\r\n").into_bytes();
    for (k, v) in [
        ("Host", "app.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("Accept", "*/*"),
        ("Accept-Language", "en-US,en;q=0.5"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Referer", "https://app.example.com/"),
        ("Connection", "keep-alive"),
    ] {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    head.extend_from_slice(b"Cookie: ");
    head.extend_from_slice(COOKIE);
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// The HTTP/1 engine's own per-request head work: parse and check the client's head,
/// then write the head the server receives (hop-by-hop fields out, the sticky cookie
/// stripped, the forwarding fields added).
fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let raw = request();
    let peer = Some(client());
    g.bench_function("client_ip", |b| {
        b.iter(|| forwarding::client_ip(black_box(peer), None, &[]))
    });
    let mut head = RequestHead::default();
    g.bench_function("parse_head", |b| {
        b.iter(|| head.parse(black_box(&raw), 16 * 1024).expect("valid").expect("complete"))
    });
    let strip = edgepin::config::HeaderSet::new(
        edgepin::config::STRIP_FROM_UNTRUSTED
            .iter()
            .map(|n| n.as_bytes().into()),
    );
    let peer_text = client().to_string();
    let fwd = forwarding::Forwarding {
        peer,
        peer_text: peer_text.as_bytes(),
        client: peer,
        peer_trusted: false,
        tls: true,
    };
    let up = Upstream {
        strip_cookie: Some("EDGEPIN"),
        server: None,
        strip: &strip,
    };
    let mut out = Vec::with_capacity(4096);
    g.bench_function("write_upstream_head", |b| {
        b.iter(|| {
            out.clear();
            write_head(&mut out, black_box(&head), &fwd, up);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(
    hot_path,
    bench_cookie,
    bench_engineio,
    bench_selection,
    bench_sid_table,
    bench_headers
);
criterion_main!(hot_path);
