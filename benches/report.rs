//! `bench-report RESULTS.tsv OUT.json`: the table at the end of `make bench`.
//!
//! RESULTS.tsv holds one figure per line, `target<TAB>scenario<TAB>metric<TAB>value`,
//! one line per repetition (written by `benches/run.sh`), and `meta<TAB>key<TAB>value`
//! lines describing the run. This takes the median of each figure, prints a table with
//! the ratios edgepin/HAProxy and edgepin/nginx, and writes everything (runs, medians,
//! ratios, meta) as JSON so runs can be compared.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

/// Columns of the table, in order; `direct` is wrk straight to one backend.
const TARGETS: [&str; 4] = ["direct", "edgepin", "haproxy", "nginx"];

/// Which way is better for a metric, from its name (`_tls` at the end: as without).
fn better(metric: &str) -> &'static str {
    let metric = metric.strip_suffix("_tls").unwrap_or(metric);
    let lower = ["_ms", "_kib", "_seconds"].iter().any(|s| metric.ends_with(s));
    let wakes = metric.starts_with("nvcsw_") || metric.starts_with("wakeups_");
    // Failures: errors of any kind, WebSockets dropped, old processes left behind.
    let failures = metric.ends_with("errors") || metric.ends_with("_dropped") || metric == "old_after_close";
    if lower || wakes || failures || metric.starts_with("kib_") {
        "lower"
    } else if metric.contains("cpu_pct") || ["messages", "reloads", "upgrades", "old_at_end"].contains(&metric) {
        ""
    } else {
        "higher"
    }
}

/// Tail latency, compared repetition by repetition as well as by medians.
fn is_tail(metric: &str) -> bool {
    let metric = metric.strip_suffix("_tls").unwrap_or(metric);
    metric == "p99_ms" || metric == "p999_ms"
}

/// edgepin's value over `other`'s in each repetition both ran (the N-th run of each ran in
/// the same repetition, seconds apart: see run.sh).
fn per_repetition(targets: &BTreeMap<String, Vec<f64>>, other: &str) -> Option<Vec<f64>> {
    let (e, o) = (targets.get("edgepin")?, targets.get(other)?);
    let ratios: Vec<f64> = e.iter().zip(o).map(|(e, o)| e / o).collect();
    (!ratios.is_empty()).then_some(ratios)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A figure for the table: integers without decimals, small numbers with more.
fn show(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x.is_nan() => "-".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// One figure: (scenario, metric), and the values of each run per target.
type Row = ((String, String), BTreeMap<String, Vec<f64>>);

struct Results {
    meta: BTreeMap<String, String>,
    /// Grouped by scenario, each in the order first seen.
    rows: Vec<Row>,
}

impl Results {
    fn parse(text: &str) -> Result<Results, String> {
        let mut r = Results {
            meta: BTreeMap::new(),
            rows: Vec::new(),
        };
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["meta", key, value] => {
                    r.meta.insert(key.to_string(), value.to_string());
                }
                [target, scenario, metric, value] => {
                    let v: f64 = value.parse().map_err(|e| format!("line {}: {value}: {e}", n + 1))?;
                    r.add(target, scenario, metric, v);
                }
                _ => return Err(format!("line {}: expected 4 tab-separated fields: {line}", n + 1)),
            }
        }
        r.derive_sticky_cost();
        Ok(r)
    }

    fn add(&mut self, target: &str, scenario: &str, metric: &str, v: f64) {
        let key = (scenario.to_string(), metric.to_string());
        let i = match self.rows.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                // A new figure goes after the last one of its scenario, so scenarios stay
                // together whichever target reported first.
                let at = self
                    .rows
                    .iter()
                    .rposition(|((s, _), _)| s == scenario)
                    .map_or(self.rows.len(), |last| last + 1);
                self.rows.insert(at, (key, BTreeMap::new()));
                at
            }
        };
        self.rows[i].1.entry(target.to_string()).or_default().push(v);
    }

    fn values(&self, scenario: &str, metric: &str) -> Option<&BTreeMap<String, Vec<f64>>> {
        self.rows
            .iter()
            .find(|((s, m), _)| s == scenario && m == metric)
            .map(|(_, t)| t)
    }

    /// Sticky routing cost: sticky req/s as a share of plain round-robin req/s.
    fn derive_sticky_cost(&mut self) {
        let (Some(sticky), Some(plain)) = (self.values("sticky", "rps"), self.values("rest_plain", "rps")) else {
            return;
        };
        let shares: Vec<(String, f64)> = sticky
            .iter()
            .filter_map(|(t, v)| Some((t.clone(), median(v) / median(plain.get(t)?))))
            .collect();
        for (t, share) in shares {
            self.add(&t, "sticky", "rps_share_of_plain", share);
        }
    }

    fn median_of(targets: &BTreeMap<String, Vec<f64>>, t: &str) -> Option<f64> {
        targets.get(t).map(|v| median(v))
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let header = [
            "scenario",
            "metric",
            "better",
            "direct",
            "edgepin",
            "haproxy",
            "nginx",
            "e/haproxy",
            "e/nginx",
        ];
        let mut lines = vec![header.map(String::from).to_vec()];
        for ((scenario, metric), targets) in &self.rows {
            let m = |t| Self::median_of(targets, t);
            let ratio = |t| Some(m("edgepin")? / m(t)?).filter(|r| r.is_finite());
            let mut line = vec![scenario.clone(), metric.clone(), better(metric).to_string()];
            line.extend(TARGETS.iter().map(|t| show(m(t))));
            line.push(show(ratio("haproxy")));
            line.push(show(ratio("nginx")));
            lines.push(line);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if c < 3 {
                        format!("{s:<w$}", w = widths[c])
                    } else {
                        format!("{s:>w$}", w = widths[c])
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        out
    }

    /// The tail figures' ratios to HAProxy repetition by repetition: a median can hide
    /// one bad repetition, and the goal is every repetition.
    fn tail_by_repetition(&self) -> String {
        let mut out = String::new();
        for ((scenario, metric), targets) in self.rows.iter().filter(|((_, m), _)| is_tail(m)) {
            if let Some(ratios) = per_repetition(targets, "haproxy") {
                let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                let _ = writeln!(out, "{scenario} {metric}: {}", shown.join(" / "));
            }
        }
        out
    }

    fn json(&self) -> Value {
        let mut results = serde_json::Map::new();
        for ((scenario, metric), targets) in &self.rows {
            let mut per_target = serde_json::Map::new();
            for (t, runs) in targets {
                per_target.insert(t.clone(), json!({ "median": median(runs), "runs": runs }));
            }
            let m = |t| Self::median_of(targets, t);
            for other in ["haproxy", "nginx"] {
                if let (Some(e), Some(o)) = (m("edgepin"), m(other)) {
                    per_target.insert(format!("edgepin/{other}"), json!(e / o));
                }
                if let Some(ratios) = per_repetition(targets, other).filter(|_| is_tail(metric)) {
                    per_target.insert(format!("edgepin/{other} runs"), json!(ratios));
                }
            }
            per_target.insert("better".into(), json!(better(metric)));
            let entry = results
                .entry(scenario.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(map) = entry {
                map.insert(metric.clone(), Value::Object(per_target));
            }
        }
        json!({ "meta": self.meta, "results": results })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: bench-report RESULTS.tsv OUT.json");
        std::process::exit(2);
    };
    let report = std::fs::read_to_string(input)
        .map_err(|e| format!("{input}: {e}"))
        .and_then(|text| Results::parse(&text));
    let results = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench-report: {e}");
            std::process::exit(1);
        }
    };
    for (k, v) in &results.meta {
        println!("{k}: {v}");
    }
    println!();
    print!("{}", results.table());
    let tail = results.tail_by_repetition();
    if !tail.is_empty() {
        println!("\ntail per repetition, edgepin/HAProxy:");
        print!("{tail}");
    }
    let json = serde_json::to_string_pretty(&results.json()).expect("JSON of plain values");
    if let Err(e) = std::fs::write(output, json + "\n") {
        eprintln!("bench-report: {output}: {e}");
        std::process::exit(1);
    }
    println!("\nJSON: {output}");
}
