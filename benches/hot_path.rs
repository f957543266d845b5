//! criterion micro-benchmarks of the code edgepin runs on every request:
//! `cargo bench --bench hot_path` (add `-- cookie` to run one group).
//!
//! The inputs are what a browser's Socket.IO client sends: a cookie header with the
//! usual analytics cookies around ours, an Engine.IO long-poll query, four servers.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pingora::http::RequestHeader;

use edgepin::balance::{HashCandidate, RoundRobin, addr_key, name_id, pick_bounded};
use edgepin::proxy::headers;
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

/// A browser's long-poll request as the proxy sees it.
fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", format!("/socket.io/?{QUERY}").as_bytes(), None).expect("request");
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "*/*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://app.example.com/"),
    ] {
        req.insert_header(k, v).expect("header");
    }
    req.insert_header("cookie", COOKIE).expect("cookie");
    req
}

fn bench_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let req = request();
    let peer = Some(client());
    g.bench_function("client_ip", |b| {
        b.iter(|| headers::client_ip(black_box(peer), None, &[]))
    });
    g.bench_function("sticky_cookie", |b| {
        b.iter(|| headers::sticky_cookie(black_box(&req), "EDGEPIN").is_some())
    });
    g.bench_function("set_forwarded", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                headers::set_forwarded(&mut r, peer, peer, false, true, Some("app.example.com")).expect("headers");
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("strip_sticky_cookie", |b| {
        b.iter_batched(
            || req.clone(),
            |mut r| {
                headers::strip_sticky_cookie(&mut r, "EDGEPIN").expect("strip");
                r
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("clone_request_baseline", |b| {
        b.iter_batched(|| (), |()| req.clone(), BatchSize::SmallInput)
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
