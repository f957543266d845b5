//! The dashboard's charts: small inline SVG line charts of the history (`history`),
//! drawn on the server, so the page needs no script and loads nothing (its auto-refresh
//! redraws them). One chart per question an operator asks: how much traffic per backend
//! and per server, how many errors, where the WebSockets are, how many 5xx and retries,
//! how the sid table does.
//!
//! The newest point is at the right edge and a full window spans the width, so a young
//! process fills in from the right. A missing point (before a series' first rate, or
//! while a server was out of the config) breaks its line. Each line is a `<path>` with
//! `data-series` naming it and each chart a `<figure id="chart-…">`, so tests and
//! scrapers can find them. This module only draws: the numbers come from the view.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::history::HistoryView;

/// Line colours, chosen to stay apart on white; a name keeps its colour in every chart
/// (its index among the backends or the servers).
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
];
const GOOD: &str = "#2ca02c";
const BAD: &str = "#d62728";
const WARN: &str = "#ff7f0e";

/// Size of one chart (CSS pixels) and of its plot area inside.
const WIDTH: f64 = 430.0;
const HEIGHT: f64 = 120.0;
const LEFT: f64 = 34.0;
const RIGHT: f64 = 6.0;
const TOP: f64 = 6.0;
const BOTTOM: f64 = 16.0;

/// One line of a chart.
pub struct Line<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub points: &'a [Option<f64>],
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `max` (at least 1): the top of the scale.
pub fn scale_top(max: f64) -> f64 {
    if max.is_nan() || max <= 1.0 {
        return 1.0;
    }
    let mut step = 10f64.powf(max.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * step >= max {
                return m * step;
            }
        }
        step *= 10.0;
    }
}

/// The SVG path of `points` in a window of `capacity` points, newest at the right edge,
/// on a scale of 0..`top`; a missing point starts a new segment. `None` when no point
/// is there to draw.
pub fn path(points: &[Option<f64>], capacity: usize, top: f64) -> Option<String> {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = plot_w / capacity.saturating_sub(1).max(1) as f64;
    let first_x = LEFT + plot_w - step * points.len().saturating_sub(1) as f64;
    let mut d = String::new();
    let mut pen_down = false;
    for (i, p) in points.iter().enumerate() {
        let Some(v) = p else {
            pen_down = false;
            continue;
        };
        let x = first_x + step * i as f64;
        let y = TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
        let cmd = if pen_down { 'L' } else { 'M' };
        d.push_str(&format!("{cmd}{x:.1} {y:.1}"));
        pen_down = true;
    }
    (!d.is_empty()).then_some(d)
}

/// `1234`, `12.5`, `0.25`: short numbers for axes and legends.
pub fn short(v: f64) -> String {
    let text = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// `15m`, `1h`, `90s`, `2m30s`: the window's length under the left edge.
fn span_label(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => super::html::human_duration(s),
    }
}

/// One chart: a title, a legend with each line's latest value, and the SVG.
fn chart(id: &str, title: &str, unit: &str, lines: &[Line<'_>], capacity: usize, span: &str) -> Markup {
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().flatten())
        .fold(0.0f64, |m, v| m.max(*v));
    let top = scale_top(max);
    let plot_h = HEIGHT - TOP - BOTTOM;
    let grid = [(top, TOP), (top / 2.0, TOP + plot_h / 2.0), (0.0, TOP + plot_h)];
    html! {
        figure.chart id=(format!("chart-{id}")) {
            figcaption { b { (title) } " " span.unit { (unit) } }
            div.keys {
                @for l in lines {
                    span.key data-series=(l.name) {
                        i style=(format!("background:{}", l.colour)) {}
                        (l.name) " "
                        b.now { (l.points.iter().rev().flatten().next().map_or("–".to_string(), |v| short(*v))) }
                    }
                }
            }
            svg xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(HEIGHT)
                viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                @for (value, y) in grid {
                    line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y) y2=(y) {}
                    text.axis x=(LEFT - 3.0) y=(y + 3.0) text-anchor="end" { (short(value)) }
                }
                text.axis x=(LEFT) y=(HEIGHT - 3.0) { "−" (span) }
                text.axis x=(WIDTH - RIGHT) y=(HEIGHT - 3.0) text-anchor="end" { "now" }
                @for l in lines {
                    @if let Some(d) = path(l.points, capacity, top) {
                        path.series data-series=(l.name) d=(d) stroke=(l.colour) {}
                    }
                }
            }
        }
    }
}

/// One line per entry of `by_name` (a backend or a server), coloured by its place.
fn lines<T>(by_name: &BTreeMap<String, T>, pick: fn(&T) -> &Vec<Option<f64>>) -> Vec<Line<'_>> {
    by_name
        .iter()
        .enumerate()
        .map(|(i, (name, t))| Line {
            name,
            colour: PALETTE[i % PALETTE.len()],
            points: pick(t),
        })
        .collect()
}

/// The charts of `h`, for the page.
pub fn section(h: &HistoryView) -> Markup {
    let capacity = h.points;
    let span = span_label((h.interval_seconds * capacity as f64).round() as u64);
    let failures = [
        Line {
            name: "5xx",
            colour: BAD,
            points: &h.responses_5xx_per_second,
        },
        Line {
            name: "retries",
            colour: WARN,
            points: &h.retries_per_second,
        },
    ];
    let sids = [
        Line {
            name: "hits",
            colour: GOOD,
            points: &h.sid_hits_per_second,
        },
        Line {
            name: "misses",
            colour: BAD,
            points: &h.sid_misses_per_second,
        },
    ];
    html! {
        section.charts #charts data-points=(h.times_unix_ms.len()) {
            (chart("backend-requests", "Requests by backend", "per second", &lines(&h.backends, |b| &b.requests_per_second), capacity, &span))
            (chart("backend-errors", "Server errors by backend", "connection + response errors per second", &lines(&h.backends, |b| &b.errors_per_second), capacity, &span))
            (chart("server-requests", "Requests by server", "per second", &lines(&h.servers, |s| &s.requests_per_second), capacity, &span))
            (chart("websockets", "Open WebSockets by server", "tunnels", &lines(&h.servers, |s| &s.websockets_open), capacity, &span))
            (chart("failures", "5xx answers and retries", "per second", &failures, capacity, &span))
            (chart("sids", "Sid table lookups", "per second", &sids, capacity, &span))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::history::{BackendHistory, ServerHistory};

    #[test]
    fn the_scale_tops_at_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(scale_top(0.0), 1.0);
        assert_eq!(scale_top(0.4), 1.0);
        assert_eq!(scale_top(1.5), 2.0);
        assert_eq!(scale_top(3.0), 5.0);
        assert_eq!(scale_top(7.0), 10.0);
        assert_eq!(scale_top(10.0), 10.0);
        assert_eq!(scale_top(101.0), 200.0);
        assert_eq!(scale_top(4321.0), 5000.0);
    }

    #[test]
    fn a_path_ends_at_the_right_edge_and_breaks_at_gaps() {
        let d = path(&[Some(0.0), Some(10.0), None, Some(5.0)], 4, 10.0).unwrap();
        // Plot 34..424 wide, 6..104 high; 4 points fill the width.
        assert_eq!(d, "M34.0 104.0L164.0 6.0M424.0 55.0");
        let young = path(&[Some(10.0)], 100, 10.0).unwrap();
        assert_eq!(young, "M424.0 6.0", "one point of a long window: at the right edge");
        assert_eq!(path(&[None, None], 10, 1.0), None);
        let over = path(&[Some(50.0)], 2, 10.0).unwrap();
        assert!(over.ends_with(" 6.0"), "clamped to the top: {over}");
    }

    #[test]
    fn every_backend_and_server_gets_a_line_in_its_charts_with_its_latest_value() {
        let mut h = HistoryView {
            interval_seconds: 5.0,
            points: 180,
            times_unix_ms: vec![0, 5000, 10000],
            sid_hits_per_second: vec![None, Some(3.0), Some(4.5)],
            ..HistoryView::default()
        };
        for b in ["api", "sockets"] {
            h.backends.insert(
                b.into(),
                BackendHistory {
                    requests_per_second: vec![None, Some(20.0), Some(30.0)],
                    errors_per_second: vec![None, Some(0.0), Some(1.0)],
                },
            );
        }
        for (s, open) in [("w1", 0.0), ("w2", 12.0)] {
            h.servers.insert(
                s.into(),
                ServerHistory {
                    requests_per_second: vec![None, Some(10.0), Some(15.0)],
                    websockets_open: vec![Some(6.0), Some(6.0), Some(open)],
                },
            );
        }
        let page = section(&h).into_string();
        for id in [
            "backend-requests",
            "backend-errors",
            "server-requests",
            "websockets",
            "failures",
            "sids",
        ] {
            assert!(page.contains(&format!(r#"id="chart-{id}""#)), "{id}");
        }
        assert_eq!(page.matches(r#"<path class="series" data-series="api""#).count(), 2);
        assert_eq!(page.matches(r#"<path class="series" data-series="w2""#).count(), 2);
        assert!(
            page.contains(r#"data-series="hits"><i style="background:#2ca02c"></i>hits <b class="now">4.5</b>"#),
            "{page}"
        );
        assert!(page.contains("−15m"), "the window's span: {page}");
        assert!(
            !page.contains(r#"<path class="series" data-series="5xx""#),
            "no point, no line"
        );
    }
}
