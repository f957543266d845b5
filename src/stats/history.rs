//! The short history behind the dashboard's charts: one point per
//! `stats.history.interval` over the last `span` (a point every 5 s for 15 minutes by
//! default), in this process's memory only.
//!
//! A sampler task reads the stats view once per interval; [`Store::record`] turns what it
//! read into one point per series: the per-second change of a total since the previous
//! point (requests and server errors per backend, requests per server, 5xx answers,
//! retries, sid-table hits and misses) or a level as it is (open WebSockets per server).
//! Series are kept by name, so they go on across reloads like the counters they come
//! from; a series the config no longer has is dropped once its last point left the
//! window. Memory is bounded: at most `points` values of 8 bytes per series. This module
//! reads the view; it changes nothing and draws nothing (`charts` does).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::rates::Rates;
use super::view::StatsView;
use crate::config::StatsHistory;
use crate::runtime::Shared;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// Requests (and tunnels) started per second on a backend.
    BackendRequests(String),
    /// Connection and response errors per second on a backend (HAProxy's econ + eresp).
    BackendErrors(String),
    /// Requests started per second on a server, over every backend listing it.
    ServerRequests(String),
    /// WebSocket tunnels open to a server, over every backend listing it.
    ServerWebSockets(String),
    /// 5xx answers per second to clients, every listener.
    Responses5xx,
    /// Retries per second, every backend.
    Retries,
    /// Sid-table lookups per second that found the sid, and that did not.
    SidHits,
    SidMisses,
}

/// What a series reads at a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A total that only grows: the point is its change per second.
    Total(u64),
    /// A level: the point is the value.
    Level(u64),
}

/// What the series read in `view`.
pub fn readings(view: &StatsView) -> Vec<(Series, Reading)> {
    let mut out = Vec::new();
    let mut per_server: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut retries = 0;
    for b in &view.backends {
        let c = &b.counters;
        let errors = c.connect_errors.unwrap_or(0) + c.response_errors.unwrap_or(0);
        out.push((
            Series::BackendRequests(b.name.clone()),
            Reading::Total(c.sessions_total),
        ));
        out.push((Series::BackendErrors(b.name.clone()), Reading::Total(errors)));
        retries += c.retries.unwrap_or(0);
        for s in &b.servers {
            let sum = per_server.entry(&s.name).or_default();
            sum.0 += s.counters.sessions_total;
            sum.1 += s.counters.websocket.map_or(0, |w| w.open);
        }
    }
    for (name, (requests, websockets)) in per_server {
        out.push((Series::ServerRequests(name.to_string()), Reading::Total(requests)));
        out.push((Series::ServerWebSockets(name.to_string()), Reading::Level(websockets)));
    }
    let r5xx = view.frontends.iter().map(|f| f.counters.responses.r5xx).sum();
    out.push((Series::Responses5xx, Reading::Total(r5xx)));
    out.push((Series::Retries, Reading::Total(retries)));
    out.push((Series::SidHits, Reading::Total(view.sids.hits)));
    out.push((Series::SidMisses, Reading::Total(view.sids.misses)));
    out
}

/// The points kept, oldest first; `times` and every series have the same length.
#[derive(Debug, Default)]
pub struct Store {
    /// Unix milliseconds of each point.
    times: VecDeque<u64>,
    values: BTreeMap<Series, VecDeque<Option<f32>>>,
    /// The totals of the previous point, and when it was taken.
    last: Option<(Instant, HashMap<Series, u64>)>,
}

impl Store {
    /// Add a point read at `at` (`unix_ms` on the wall clock), keeping the last `points`.
    pub fn record(&mut self, readings: Vec<(Series, Reading)>, at: Instant, unix_ms: u64, points: usize) {
        let elapsed = self
            .last
            .as_ref()
            .map(|(then, _)| at.saturating_duration_since(*then).as_secs_f64());
        let mut totals = HashMap::new();
        let mut read = HashSet::with_capacity(readings.len());
        let n = self.times.len();
        for (series, reading) in readings {
            read.insert(series.clone());
            let value = match reading {
                Reading::Level(v) => Some(v as f32),
                Reading::Total(total) => {
                    let before = self.last.as_ref().and_then(|(_, t)| t.get(&series).copied());
                    totals.insert(series.clone(), total);
                    match (before, elapsed) {
                        (Some(before), Some(secs)) if secs > 0.0 => {
                            Some((total.saturating_sub(before) as f64 / secs) as f32)
                        }
                        _ => None,
                    }
                }
            };
            let line = self
                .values
                .entry(series)
                .or_insert_with(|| std::iter::repeat_n(None, n).collect());
            line.push_back(value);
        }
        self.times.push_back(unix_ms);
        // Series not read this time (gone from the config) get a gap.
        for line in self.values.values_mut() {
            if line.len() < self.times.len() {
                line.push_back(None);
            }
        }
        self.last = Some((at, totals));
        self.keep(points, &read);
    }

    /// Keep the last `points` points; drop series not `read` now with no point left.
    fn keep(&mut self, points: usize, read: &HashSet<Series>) {
        let extra = self.times.len().saturating_sub(points);
        self.times.drain(..extra);
        self.values.retain(|series, line| {
            line.drain(..extra);
            line.iter().any(Option::is_some) || read.contains(series)
        });
    }

    /// The series' points, oldest first (empty for a series never read).
    #[cfg(test)]
    pub fn line(&self, series: &Series) -> Vec<Option<f64>> {
        self.values
            .get(series)
            .map(|l| l.iter().map(|v| v.map(round)).collect())
            .unwrap_or_default()
    }

    /// What `/stats.json` and the charts show.
    pub fn view(&self, settings: StatsHistory) -> HistoryView {
        let mut view = HistoryView {
            interval_seconds: settings.interval.as_secs_f64(),
            points: settings.points,
            times_unix_ms: self.times.iter().copied().collect(),
            ..HistoryView::default()
        };
        for (series, line) in &self.values {
            let line: Vec<Option<f64>> = line.iter().map(|v| v.map(round)).collect();
            match series {
                Series::BackendRequests(b) => view.backends.entry(b.clone()).or_default().requests_per_second = line,
                Series::BackendErrors(b) => view.backends.entry(b.clone()).or_default().errors_per_second = line,
                Series::ServerRequests(s) => view.servers.entry(s.clone()).or_default().requests_per_second = line,
                Series::ServerWebSockets(s) => view.servers.entry(s.clone()).or_default().websockets_open = line,
                Series::Responses5xx => view.responses_5xx_per_second = line,
                Series::Retries => view.retries_per_second = line,
                Series::SidHits => view.sid_hits_per_second = line,
                Series::SidMisses => view.sid_misses_per_second = line,
            }
        }
        view
    }
}

/// Two decimals are plenty for a chart, and keep the JSON short.
fn round(v: f32) -> f64 {
    (f64::from(v) * 100.0).round() / 100.0
}

/// The history as `/stats.json` shows it: every list has one entry per time (`null`
/// where the series has no point: before its first rate, or while absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistoryView {
    pub interval_seconds: f64,
    /// Points kept at most (the window is `interval_seconds × points`).
    pub points: usize,
    pub times_unix_ms: Vec<u64>,
    pub backends: BTreeMap<String, BackendHistory>,
    pub servers: BTreeMap<String, ServerHistory>,
    pub responses_5xx_per_second: Vec<Option<f64>>,
    pub retries_per_second: Vec<Option<f64>>,
    pub sid_hits_per_second: Vec<Option<f64>>,
    pub sid_misses_per_second: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackendHistory {
    pub requests_per_second: Vec<Option<f64>>,
    pub errors_per_second: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerHistory {
    pub requests_per_second: Vec<Option<f64>>,
    pub websockets_open: Vec<Option<f64>>,
}

/// The history shared by the sampler and the handlers.
#[derive(Debug, Default)]
pub struct History(Mutex<Store>);

impl History {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Sample `shared` now and then every `stats.history.interval` (read again after each
/// point, so a reload changes it) until `stop` resolves.
pub async fn run(
    shared: Arc<Shared>,
    rates: Arc<Rates>,
    history: Arc<History>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let settings = shared.snapshot().config.stats.history;
        let view = StatsView::gather(&shared, &rates);
        let readings = readings(&view);
        history
            .lock()
            .record(readings, Instant::now(), unix_ms(SystemTime::now()), settings.points);
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::gather::tests::shared;

    fn record(store: &mut Store, t0: Instant, secs: u64, readings: Vec<(Series, Reading)>, points: usize) {
        store.record(readings, t0 + Duration::from_secs(secs), 1000 * secs, points);
    }

    #[test]
    fn totals_become_rates_per_second_and_levels_stay_as_they_are() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let hits = Series::SidHits;
        let open = Series::ServerWebSockets("w1".into());
        record(
            &mut store,
            t0,
            0,
            vec![(hits.clone(), Reading::Total(100)), (open.clone(), Reading::Level(3))],
            10,
        );
        record(
            &mut store,
            t0,
            5,
            vec![(hits.clone(), Reading::Total(150)), (open.clone(), Reading::Level(7))],
            10,
        );
        record(
            &mut store,
            t0,
            10,
            vec![(hits.clone(), Reading::Total(150)), (open.clone(), Reading::Level(0))],
            10,
        );
        assert_eq!(
            store.line(&hits),
            [None, Some(10.0), Some(0.0)],
            "no rate before a second point"
        );
        assert_eq!(store.line(&open), [Some(3.0), Some(7.0), Some(0.0)]);
        let view = store.view(StatsHistory::default());
        assert_eq!(view.times_unix_ms, [0, 5000, 10000]);
        assert_eq!(view.sid_hits_per_second, [None, Some(10.0), Some(0.0)]);
        assert_eq!(view.servers["w1"].websockets_open, [Some(3.0), Some(7.0), Some(0.0)]);
    }

    #[test]
    fn the_window_is_bounded_and_series_gone_from_the_config_leave_with_their_last_point() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let a = Series::BackendRequests("a".into());
        let b = Series::BackendRequests("b".into());
        for s in 0..5 {
            record(
                &mut store,
                t0,
                s,
                vec![(a.clone(), Reading::Total(10 * s)), (b.clone(), Reading::Total(s))],
                3,
            );
        }
        assert_eq!(store.times.len(), 3, "at most `points` points");
        assert_eq!(store.line(&a), [Some(10.0); 3]);
        // A reload removed backend b, added c: b's points age out, c starts with gaps.
        let c = Series::BackendRequests("c".into());
        record(
            &mut store,
            t0,
            5,
            vec![(a.clone(), Reading::Total(50)), (c.clone(), Reading::Total(0))],
            3,
        );
        assert_eq!(store.line(&b), [Some(1.0), Some(1.0), None]);
        assert_eq!(store.line(&c), [None, None, None]);
        record(
            &mut store,
            t0,
            6,
            vec![(a.clone(), Reading::Total(60)), (c.clone(), Reading::Total(4))],
            3,
        );
        record(
            &mut store,
            t0,
            7,
            vec![(a.clone(), Reading::Total(70)), (c.clone(), Reading::Total(8))],
            3,
        );
        assert!(store.line(&b).is_empty(), "dropped once no point is left");
        assert_eq!(store.line(&c), [None, Some(4.0), Some(4.0)]);
        assert!(store.values.values().all(|l| l.len() == store.times.len()));
        // A smaller window after a reload.
        record(&mut store, t0, 8, vec![(a.clone(), Reading::Total(80))], 2);
        assert_eq!(store.line(&a), [Some(10.0), Some(10.0)]);
    }

    #[test]
    fn a_counter_that_restarts_reads_zero_not_a_huge_rate() {
        let mut store = Store::default();
        let t0 = Instant::now();
        let r = Series::Retries;
        record(&mut store, t0, 0, vec![(r.clone(), Reading::Total(500))], 5);
        record(&mut store, t0, 1, vec![(r.clone(), Reading::Total(2))], 5);
        assert_eq!(store.line(&r), [None, Some(0.0)]);
    }

    #[test]
    fn readings_sum_a_server_over_the_backends_listing_it() {
        let shared = shared();
        let snapshot = shared.snapshot();
        // Server b is in backends api and ws.
        let api = snapshot.backend("api").unwrap();
        let ws = snapshot.backend("ws").unwrap();
        api.members[1].traffic.sessions_total.add(3);
        ws.members[0].traffic.sessions_total.add(4);
        ws.members[0].traffic.tunnels.inc();
        api.counters.traffic.connect_errors.add(2);
        api.counters.traffic.response_errors.add(1);
        shared.http.responses.count(502);
        let view = StatsView::gather(&shared, &Rates::default());
        let got: HashMap<Series, Reading> = readings(&view).into_iter().collect();
        assert_eq!(got[&Series::ServerRequests("b".into())], Reading::Total(7));
        assert_eq!(got[&Series::ServerWebSockets("b".into())], Reading::Level(1));
        assert_eq!(got[&Series::ServerWebSockets("a".into())], Reading::Level(0));
        assert_eq!(got[&Series::BackendErrors("api".into())], Reading::Total(3));
        assert_eq!(got[&Series::Responses5xx], Reading::Total(1));
    }
}
