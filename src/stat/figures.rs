//! From two scrapes to one interval's figures: counters become deltas and rates, histogram buckets
//! become the interval's own distribution (and its quantiles), gauges are read from the later scrape.
//!
//! A counter that went down means the server restarted between the scrapes: its new value is all it
//! counted since, so that value is the delta (as Prometheus's `rate()` treats a reset).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::exposition::Sample;

/// The metric names this module reads (docs/OPERATIONS.md, "Metrics").
pub mod names {
    pub const REQUESTS: &str = "qkv_requests_total";
    pub const REQUEST_DURATION_BUCKET: &str = "qkv_request_duration_seconds_bucket";
    pub const REQUEST_LATENCY_BUCKET: &str = "qkv_request_latency_seconds_bucket";
    pub const CONNECTIONS_OPEN: &str = "qkv_connections_open";
    pub const LIMITS_HIT: &str = "qkv_limits_hit_total";
    pub const STORAGE_KEYS: &str = "qkv_storage_keys";
    pub const STORAGE_MEMORY_USED: &str = "qkv_storage_memory_used_bytes";
    pub const STORAGE_MEMORY_BUDGET: &str = "qkv_storage_memory_budget_bytes";
    pub const SUBSCRIPTIONS: &str = "qkv_subscriptions";
    pub const PUBSUB_PUBLISHED: &str = "qkv_pubsub_published_total";
    pub const PUBSUB_DELIVERED: &str = "qkv_pubsub_delivered_total";
    pub const PUBSUB_MISSED: &str = "qkv_pubsub_missed_total";
    pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
}

/// One series: a metric name and its labels, sorted by name.
type SeriesKey = (String, Vec<(String, String)>);

/// One scrape: every series's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    series: BTreeMap<SeriesKey, f64>,
}

impl Snapshot {
    pub fn new(samples: Vec<Sample>) -> Snapshot {
        Snapshot { series: samples.into_iter().map(|s| ((s.name, s.labels), s.value)).collect() }
    }

    fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.series
            .iter()
            .filter(move |((n, _), _)| n == name)
            .map(|((_, labels), v)| (labels.as_slice(), *v))
    }

    fn value(&self, name: &str, labels: &[(String, String)]) -> Option<f64> {
        self.series.get(&(name.to_owned(), labels.to_vec())).copied()
    }

    /// A gauge's value, summed over its series; `None` if the server does not export it.
    fn gauge(&self, name: &str) -> Option<f64> {
        let mut values = self.of(name).map(|(_, v)| v).peekable();
        values.peek()?;
        Some(values.sum())
    }

    /// A gauge by one of its labels.
    fn gauge_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut by = BTreeMap::new();
        for (labels, value) in self.of(name) {
            *by.entry(label_of(labels, label).to_owned()).or_insert(0.0) += value;
        }
        by
    }
}

fn label_of<'a>(labels: &'a [(String, String)], name: &str) -> &'a str {
    labels.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.as_str())
}

/// Each series of counter `name` in `now`, with what it counted since `before`.
struct CounterDeltas {
    deltas: Vec<(Vec<(String, String)>, f64)>,
    reset: bool,
}

fn counter_deltas(before: &Snapshot, now: &Snapshot, name: &str) -> CounterDeltas {
    let mut reset = false;
    let deltas = now
        .of(name)
        .map(|(labels, value)| {
            let previous = before.value(name, labels).unwrap_or(0.0);
            let delta = if value < previous {
                reset = true;
                value
            } else {
                value - previous
            };
            (labels.to_vec(), delta)
        })
        .collect();
    CounterDeltas { deltas, reset }
}

impl CounterDeltas {
    fn total(&self) -> f64 {
        self.deltas.iter().map(|(_, d)| d).sum()
    }

    fn by(&self, label: &str) -> BTreeMap<String, f64> {
        let mut by = BTreeMap::new();
        for (labels, delta) in &self.deltas {
            *by.entry(label_of(labels, label).to_owned()).or_insert(0.0) += delta;
        }
        by
    }
}

/// A histogram's buckets over the interval: cumulative counts by upper bound (`le`), ascending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    /// Adds another series's buckets bound by bound (Prometheus's `sum by (le)`).
    fn add(&mut self, other: &[(f64, f64)]) {
        for &(le, count) in other {
            match self.0.iter_mut().find(|(l, _)| *l == le) {
                Some((_, total)) => *total += count,
                None => self.0.push((le, count)),
            }
        }
        self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Observations in the interval: the `+Inf` bucket's count.
    pub fn count(&self) -> f64 {
        self.0.last().filter(|(le, _)| *le == f64::INFINITY).map_or(0.0, |(_, count)| *count)
    }

    /// The `q` quantile (0 ≤ q ≤ 1) as Prometheus's `histogram_quantile` estimates it: linear
    /// interpolation within the bucket the rank falls in, the first bucket starting at 0, and the
    /// highest finite bound when the rank falls in the `+Inf` bucket. `None` without observations or
    /// without a `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let buckets = &self.0;
        let total = self.count();
        if total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // Cumulative counts can only grow with the bound; a scrape racing observations may not show
        // that, and Prometheus evens such dips out the same way.
        let mut cumulative = Vec::with_capacity(buckets.len());
        let mut highest: f64 = 0.0;
        for &(le, count) in buckets {
            highest = highest.max(count);
            cumulative.push((le, highest));
        }
        let rank = q * total;
        let index = cumulative.iter().position(|&(_, count)| count >= rank)?;
        let (upper, count) = cumulative[index];
        if upper == f64::INFINITY {
            return Some(if index == 0 { 0.0 } else { cumulative[index - 1].0 });
        }
        let (lower, below) = if index == 0 { (0.0_f64.min(upper), 0.0) } else { cumulative[index - 1] };
        let in_bucket = count - below;
        if in_bucket <= 0.0 {
            return Some(upper);
        }
        Some(lower + (upper - lower) * (rank - below) / in_bucket)
    }
}

/// Each series of histogram `name`'s buckets over the interval, keyed by its labels other than `le`.
/// A series any of whose buckets went down was reset: its new counts are the interval's.
fn bucket_deltas(
    before: &Snapshot,
    now: &Snapshot,
    name: &str,
) -> (BTreeMap<Vec<(String, String)>, Buckets>, bool) {
    type Bounds = Vec<(f64, f64, f64)>; // le, count before, count now
    let mut series: BTreeMap<Vec<(String, String)>, Bounds> = BTreeMap::new();
    for (labels, value) in now.of(name) {
        let Some(le) = labels.iter().find(|(n, _)| n == "le").and_then(|(_, v)| parse_le(v)) else {
            continue;
        };
        let previous = before.value(name, labels).unwrap_or(0.0);
        let others: Vec<(String, String)> = labels.iter().filter(|(n, _)| n != "le").cloned().collect();
        series.entry(others).or_default().push((le, previous, value));
    }
    let mut any_reset = false;
    let deltas = series
        .into_iter()
        .map(|(labels, bounds)| {
            let reset = bounds.iter().any(|&(_, previous, value)| value < previous);
            any_reset |= reset;
            let mut buckets = Buckets::default();
            let counts: Vec<(f64, f64)> = bounds
                .iter()
                .map(|&(le, previous, value)| (le, if reset { value } else { value - previous }))
                .collect();
            buckets.add(&counts);
            (labels, buckets)
        })
        .collect();
    (deltas, any_reset)
}

fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => text.parse().ok().filter(|le: &f64| le.is_finite()),
    }
}

/// What happened between two scrapes: `qkv stat`'s line, and its `--json` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// Seconds between the two scrapes: what the rates are per.
    pub interval_seconds: f64,
    /// The server restarted in the interval (its process start time changed, or a counter went
    /// down): its new counts are the deltas.
    pub restarted: bool,
    /// Every request answered in the interval (its fields sit at the top level of the JSON).
    #[serde(flatten)]
    pub all: RequestFigures,
    /// The same, by command, for the commands that were answered in the interval.
    pub commands: BTreeMap<String, RequestFigures>,
    /// Connections open at the second scrape, by transport.
    pub connections: BTreeMap<String, u64>,
    /// Requests and connections refused by a limit, in all and by limit.
    pub limits_hit: u64,
    pub limits_hit_per_second: f64,
    pub limits: BTreeMap<String, u64>,
    pub storage: StorageFigures,
    pub pubsub: PubsubFigures,
}

/// Requests answered in the interval, of all commands or of one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestFigures {
    pub requests: u64,
    pub requests_per_second: f64,
    /// Answers whose status was not 2xx.
    pub errors: u64,
    pub errors_per_second: f64,
    /// Request latency quantiles over the interval's requests (`qkv_request_latency_seconds`, or
    /// `qkv_request_duration_seconds` from a server without it), in milliseconds; `null` without
    /// requests (or without the histogram).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl RequestFigures {
    fn new(count: f64, errors: f64, buckets: Option<&Buckets>, seconds: f64) -> RequestFigures {
        let ms = |q: f64| buckets.and_then(|b| b.quantile(q)).map(|s| s * 1e3);
        RequestFigures {
            requests: whole(count),
            requests_per_second: per_second(count, seconds),
            errors: whole(errors),
            errors_per_second: per_second(errors, seconds),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// The storage gauges at the second scrape; `null` for what the backend does not export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageFigures {
    pub keys: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_budget_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PubsubFigures {
    /// Subscriptions open at the second scrape.
    pub subscriptions: Option<u64>,
    pub published: u64,
    pub published_per_second: f64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    pub missed: u64,
    pub missed_per_second: f64,
}

impl Interval {
    /// The figures of the `elapsed` time between scrapes `before` and `now`.
    pub fn between(before: &Snapshot, now: &Snapshot, elapsed: Duration) -> Interval {
        let seconds = elapsed.as_secs_f64();
        let per_second = |count: f64| per_second(count, seconds);
        // A new start time is a restart even when the new counts have passed the old ones: everything
        // counted is then the interval's.
        let started_again = matches!(
            (before.gauge(names::PROCESS_START_TIME), now.gauge(names::PROCESS_START_TIME)),
            (Some(then), Some(since)) if then != since
        );
        let nothing = Snapshot::default();
        let before = if started_again { &nothing } else { before };

        let requests = counter_deltas(before, now, names::REQUESTS);
        // The quantiles are of what clients wait, queueing included: the latency histogram. A server
        // that exports none (older versions; the REST API alone) has its service time only.
        let histogram = if now.of(names::REQUEST_LATENCY_BUCKET).next().is_some() {
            names::REQUEST_LATENCY_BUCKET
        } else {
            names::REQUEST_DURATION_BUCKET
        };
        let (durations, durations_reset) = bucket_deltas(before, now, histogram);
        let limits = counter_deltas(before, now, names::LIMITS_HIT);
        let published = counter_deltas(before, now, names::PUBSUB_PUBLISHED);
        let delivered = counter_deltas(before, now, names::PUBSUB_DELIVERED);
        let missed = counter_deltas(before, now, names::PUBSUB_MISSED);

        let mut by_command: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (labels, delta) in &requests.deltas {
            let (count, errors) = by_command.entry(label_of(labels, "command").to_owned()).or_default();
            *count += delta;
            if !is_success(label_of(labels, "status")) {
                *errors += delta;
            }
        }
        let errors: f64 = by_command.values().map(|(_, errors)| errors).sum();
        let mut all_buckets = Buckets::default();
        let mut command_buckets: BTreeMap<String, Buckets> = BTreeMap::new();
        for (labels, buckets) in &durations {
            all_buckets.add(&buckets.0);
            command_buckets.entry(label_of(labels, "command").to_owned()).or_default().add(&buckets.0);
        }
        let commands = by_command
            .into_iter()
            .filter(|(_, (count, _))| *count > 0.0)
            .map(|(command, (count, errors))| {
                let figures = RequestFigures::new(count, errors, command_buckets.get(&command), seconds);
                (command, figures)
            })
            .collect();

        Interval {
            interval_seconds: seconds,
            restarted: started_again
                || requests.reset
                || durations_reset
                || limits.reset
                || published.reset
                || delivered.reset
                || missed.reset,
            all: RequestFigures::new(requests.total(), errors, Some(&all_buckets), seconds),
            commands,
            connections: now
                .gauge_by(names::CONNECTIONS_OPEN, "transport")
                .into_iter()
                .map(|(transport, open)| (transport, whole(open)))
                .collect(),
            limits_hit: whole(limits.total()),
            limits_hit_per_second: per_second(limits.total()),
            limits: limits
                .by("limit")
                .into_iter()
                .filter(|(_, hits)| *hits > 0.0)
                .map(|(limit, hits)| (limit, whole(hits)))
                .collect(),
            storage: StorageFigures {
                keys: now.gauge(names::STORAGE_KEYS).map(whole),
                memory_used_bytes: now.gauge(names::STORAGE_MEMORY_USED).map(whole),
                memory_budget_bytes: now.gauge(names::STORAGE_MEMORY_BUDGET).map(whole),
            },
            pubsub: PubsubFigures {
                subscriptions: now.gauge(names::SUBSCRIPTIONS).map(whole),
                published: whole(published.total()),
                published_per_second: per_second(published.total()),
                delivered: whole(delivered.total()),
                delivered_per_second: per_second(delivered.total()),
                missed: whole(missed.total()),
                missed_per_second: per_second(missed.total()),
            },
        }
    }
}

fn per_second(count: f64, seconds: f64) -> f64 {
    // `+ 0.0`: a sum of nothing is -0.0 in Rust, and a rate of nothing should print as 0.
    if seconds > 0.0 { count / seconds + 0.0 } else { 0.0 }
}

/// A status label that says the request succeeded: 2xx.
fn is_success(status: &str) -> bool {
    status.parse::<u16>().is_ok_and(|code| (200..300).contains(&code))
}

/// A count or gauge as a whole number (counters are integers written as floats; NaN and negatives,
/// which no count can be, become 0).
fn whole(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 { value.round() as u64 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stat::exposition::parse;

    fn snapshot(text: &str) -> Snapshot {
        Snapshot::new(parse(text).unwrap())
    }

    fn buckets(pairs: &[(f64, f64)]) -> Buckets {
        Buckets(pairs.to_vec())
    }

    fn close(actual: Option<f64>, expected: f64) -> bool {
        actual.is_some_and(|a| (a - expected).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        // 10 in (0, 1], 30 in (1, 2], 60 in (2, 4].
        let b = buckets(&[(1.0, 10.0), (2.0, 40.0), (4.0, 100.0), (f64::INFINITY, 100.0)]);
        assert!(close(b.quantile(0.05), 0.5), "rank 5 of 10 in the first bucket, from 0");
        assert!(close(b.quantile(0.25), 1.5), "rank 25: 15 of 30 into (1, 2]");
        assert!(close(b.quantile(0.5), 2.0 + 2.0 * 10.0 / 60.0));
        assert!(close(b.quantile(0.99), 2.0 + 2.0 * 59.0 / 60.0));
        assert!(close(b.quantile(1.0), 4.0));
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() {
        let b = buckets(&[(1.0, 10.0), (2.0, 10.0), (f64::INFINITY, 20.0)]);
        assert!(close(b.quantile(0.99), 2.0));
    }

    #[test]
    fn no_quantile_without_observations_or_without_inf() {
        assert_eq!(buckets(&[(1.0, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5), None);
        assert_eq!(buckets(&[(1.0, 5.0), (2.0, 5.0)]).quantile(0.5), None);
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn dips_in_cumulative_counts_are_evened_out() {
        let b = buckets(&[(1.0, 10.0), (2.0, 8.0), (f64::INFINITY, 10.0)]);
        assert!(close(b.quantile(0.5), 0.5));
    }

    const BEFORE: &str = r#"
# TYPE qkv_requests_total counter
qkv_requests_total{command="Hget",transport="quic",status="200"} 1000
qkv_requests_total{command="Hget",transport="tcp",status="200"} 500
qkv_requests_total{command="Hget",transport="quic",status="404"} 10
qkv_requests_total{command="Hset",transport="quic",status="200"} 300
# TYPE qkv_request_duration_seconds histogram
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.001"} 900
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.002"} 1000
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.004"} 1010
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="+Inf"} 1010
qkv_request_duration_seconds_sum{command="Hget",transport="quic"} 0.9
qkv_request_duration_seconds_count{command="Hget",transport="quic"} 1010
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="0.001"} 500
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="0.002"} 500
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="0.004"} 500
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="+Inf"} 500
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.001"} 0
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.002"} 300
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.004"} 300
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="+Inf"} 300
qkv_connections_open{transport="quic"} 3
qkv_limits_hit_total{limit="max_value_size"} 2
qkv_pubsub_delivered_total 100
qkv_storage_keys 10
"#;

    const AFTER: &str = r#"
qkv_requests_total{command="Hget",transport="quic",status="200"} 1100
qkv_requests_total{command="Hget",transport="tcp",status="200"} 600
qkv_requests_total{command="Hget",transport="quic",status="404"} 10
qkv_requests_total{command="Hset",transport="quic",status="200"} 300
qkv_requests_total{command="Hset",transport="quic",status="507"} 20
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.001"} 900
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.002"} 1000
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.004"} 1110
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="+Inf"} 1110
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="0.001"} 500
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="0.002"} 600
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="0.004"} 600
qkv_request_duration_seconds_bucket{command="Hget",transport="tcp",le="+Inf"} 600
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.001"} 0
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.002"} 300
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.004"} 320
qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="+Inf"} 320
qkv_connections_open{transport="quic"} 4
qkv_connections_open{transport="tcp"} 1
qkv_limits_hit_total{limit="max_value_size"} 2
qkv_limits_hit_total{limit="memory_budget"} 20
qkv_pubsub_delivered_total 150
qkv_storage_keys 12
qkv_storage_memory_used_bytes 4096
qkv_storage_memory_budget_bytes 1048576
qkv_subscriptions 2
"#;

    #[test]
    fn an_interval_has_rates_errors_quantiles_and_gauges() {
        let interval = Interval::between(&snapshot(BEFORE), &snapshot(AFTER), Duration::from_secs(2));
        assert_eq!(interval.interval_seconds, 2.0);
        assert!(!interval.restarted);
        assert_eq!(interval.all.requests, 220, "100 + 100 Hget, 20 Hset (a new series counts from 0)");
        assert_eq!(interval.all.requests_per_second, 110.0);
        assert_eq!((interval.all.errors, interval.all.errors_per_second), (20, 10.0), "the 507s");

        let hget = &interval.commands["Hget"];
        assert_eq!((hget.requests, hget.errors), (200, 0));
        // Hget's interval: 100 quic in (2, 4] ms, 100 tcp in (1, 2] ms.
        assert!(close(hget.p50_ms, 2.0), "{:?}", hget.p50_ms);
        assert!(close(hget.p99_ms, 2.0 + 2.0 * 98.0 / 100.0), "{:?}", hget.p99_ms);
        let hset = &interval.commands["Hset"];
        assert_eq!((hset.requests, hset.errors, hset.errors_per_second), (20, 20, 10.0));
        assert!(close(hset.p50_ms, 3.0), "{:?}", hset.p50_ms);
        // All 220: 100 in (1, 2], 120 in (2, 4]; rank 110 is 10 of 120 into (2, 4].
        assert!(close(interval.all.p50_ms, 2.0 + 2.0 * 10.0 / 120.0), "{:?}", interval.all.p50_ms);

        assert_eq!(interval.connections, BTreeMap::from([("quic".into(), 4), ("tcp".into(), 1)]));
        assert_eq!((interval.limits_hit, interval.limits_hit_per_second), (20, 10.0));
        assert_eq!(interval.limits, BTreeMap::from([("memory_budget".into(), 20)]));
        assert_eq!(interval.storage.keys, Some(12));
        assert_eq!(interval.storage.memory_used_bytes, Some(4096));
        assert_eq!(interval.storage.memory_budget_bytes, Some(1 << 20));
        assert_eq!(interval.pubsub.subscriptions, Some(2));
        assert_eq!((interval.pubsub.delivered, interval.pubsub.delivered_per_second), (50, 25.0));
        assert_eq!(interval.pubsub.missed, 0);
    }

    /// What a client waits, queueing included, not the service time: under overload the service time
    /// stays at microseconds while the latency grows.
    #[test]
    fn quantiles_are_of_the_latency_when_the_server_exports_it() {
        let latency = |count: u32| {
            format!(
                "qkv_request_latency_seconds_bucket{{command=\"Hget\",transport=\"quic\",le=\"0.01\"}} 0\n\
                 qkv_request_latency_seconds_bucket{{command=\"Hget\",transport=\"quic\",le=\"0.02\"}} {count}\n\
                 qkv_request_latency_seconds_bucket{{command=\"Hget\",transport=\"quic\",le=\"+Inf\"}} {count}\n"
            )
        };
        let before = snapshot(&format!("{BEFORE}{}", latency(1010)));
        let after = snapshot(&format!("{AFTER}{}", latency(1210)));
        let interval = Interval::between(&before, &after, Duration::from_secs(2));
        // 200 Hget in (10, 20] ms: rank 100 is half way.
        assert!(close(interval.commands["Hget"].p50_ms, 15.0), "{:?}", interval.commands["Hget"].p50_ms);
        assert!(close(interval.all.p50_ms, 15.0), "{:?}", interval.all.p50_ms);
        assert_eq!(interval.commands["Hset"].p50_ms, None, "no Hset latency was exported");
    }

    /// A server restarted and, by the next scrape, counted past what it had: only its start time says so.
    #[test]
    fn a_new_process_start_time_is_a_restart_even_when_the_counts_grew() {
        let before = snapshot(&format!("{BEFORE}process_start_time_seconds 1000\n"));
        let same = snapshot(&format!("{AFTER}process_start_time_seconds 1000\n"));
        let restarted = snapshot(&format!("{AFTER}process_start_time_seconds 2000\n"));
        let interval = Interval::between(&before, &same, Duration::from_secs(2));
        assert!(!interval.restarted);
        assert_eq!(interval.all.requests, 220);
        let interval = Interval::between(&before, &restarted, Duration::from_secs(2));
        assert!(interval.restarted, "a new start time");
        assert_eq!(interval.all.requests, 1100 + 600 + 10 + 300 + 20, "everything the new process counted");
        assert_eq!(interval.pubsub.delivered, 150);
    }

    #[test]
    fn a_counter_that_went_down_is_a_restart_and_its_new_value_the_delta() {
        let before = snapshot(AFTER);
        let after = snapshot(
            r#"
qkv_requests_total{command="Hget",transport="quic",status="200"} 7
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.001"} 7
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.002"} 7
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.004"} 7
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="+Inf"} 7
qkv_pubsub_delivered_total 3
"#,
        );
        let interval = Interval::between(&before, &after, Duration::from_secs(1));
        assert!(interval.restarted);
        assert_eq!(interval.all.requests, 7);
        assert_eq!(interval.commands["Hget"].requests, 7);
        assert!(close(interval.all.p50_ms, 0.5), "{:?}", interval.all.p50_ms);
        assert_eq!(interval.pubsub.delivered, 3);
        assert_eq!(interval.connections, BTreeMap::new(), "no series, no transports");
        assert_eq!(interval.storage.keys, None);
    }

    #[test]
    fn a_quiet_interval_has_no_quantiles_and_no_commands() {
        let interval = Interval::between(&snapshot(AFTER), &snapshot(AFTER), Duration::from_secs(1));
        assert_eq!((interval.all.requests, interval.all.errors), (0, 0));
        assert_eq!((interval.all.p50_ms, interval.all.p99_ms), (None, None));
        assert!(interval.commands.is_empty());
        assert!(!interval.restarted);
    }

    #[test]
    fn no_rates_over_no_time() {
        let interval = Interval::between(&snapshot(BEFORE), &snapshot(AFTER), Duration::ZERO);
        assert_eq!((interval.all.requests, interval.all.requests_per_second), (220, 0.0));
    }
}
