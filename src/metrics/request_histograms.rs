//! The two per-request histograms, `qkv_request_duration_seconds` and `qkv_request_latency_seconds`,
//! counted into fixed buckets as they are recorded and rendered beside the exporter's metrics.
//!
//! metrics-exporter-prometheus keeps every histogram sample, with a timestamp of its own, in a queue
//! that its upkeep later folds into buckets: for these two, recorded with every request, that was
//! two thirds of what metrics cost a small request (docs/bench/METRICS.md). Here a sample costs a
//! search among the bounds, a relaxed atomic addition to its bucket and a compare-and-swap of the sum,
//! and nothing waits to be folded.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use crate::pb::COMMAND_NAMES;

/// Request durations and latencies: 1 µs to 10 s, about ×2.5 apart. A memory store executes a
/// request in about a microsecond, so the fine buckets are what resolve its service time.
const BOUNDS_SECONDS: [f64; 19] = [
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
    100e-3, 250e-3, 1.0, 10.0,
];

/// [`BOUNDS_SECONDS`] in nanoseconds, which is what a sample is compared in.
const BOUNDS_NANOS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// One series: how many samples fell in each bucket (not cumulative; the last is above every bound)
/// and their sum.
struct Histogram {
    counts: [AtomicU64; BOUNDS_NANOS.len() + 1],
    /// An `f64` of seconds, as its bits: nanoseconds in a `u64` would wrap after 584 years of
    /// latency summed, which a busy, overloaded server reaches in hours.
    sum_seconds: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_seconds: AtomicU64::new(0) }
    }

    fn record(&self, sample: Duration) {
        let nanos = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        // Prometheus's buckets are "less than or equal to": the first bound not below the sample.
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = sample.as_secs_f64();
        let _ = self.sum_seconds.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + seconds).to_bits())
        });
    }

    /// Appends the series, labelled `labels`, unless it has no sample. Read while requests record,
    /// the buckets are each exact but not of one instant: the count is their total, so it always
    /// equals the `+Inf` bucket, and the sum may include a sample or two more or fewer.
    fn render(&self, name: &str, labels: impl FnOnce() -> String, out: &mut String) {
        let counts: Vec<u64> = self.counts.iter().map(|count| count.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return;
        }
        let labels = labels();
        let mut cumulative = 0;
        for (bound, count) in BOUNDS_SECONDS.iter().zip(&counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
        let sum = f64::from_bits(self.sum_seconds.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

/// The two families: their names and help, in the order [`TransportHistograms::families`] holds them.
const FAMILIES: [(&str, &str); 2] = [
    (
        "qkv_request_duration_seconds",
        "Service time: from a request's execution starting to its answer (to the start of a streamed answer); no queueing.",
    ),
    (
        "qkv_request_latency_seconds",
        "What a client waits, as the server sees it: from a request's frame read whole to its answer handed to the transport, queueing included.",
    ),
];
const DURATION: usize = 0;
const LATENCY: usize = 1;

/// The histograms of one transport label: of each family, one per command (in [`COMMAND_NAMES`]'s
/// order).
pub struct TransportHistograms {
    transport: &'static str,
    families: [[Histogram; COMMAND_NAMES.len()]; FAMILIES.len()],
}

impl TransportHistograms {
    /// A request of `command` (its index in [`COMMAND_NAMES`]) was executed in `elapsed`.
    pub fn duration(&self, command: usize, elapsed: Duration) {
        self.record(DURATION, command, elapsed);
    }

    /// A request of `command` was answered `elapsed` after it arrived.
    pub fn latency(&self, command: usize, elapsed: Duration) {
        self.record(LATENCY, command, elapsed);
    }

    fn record(&self, family: usize, command: usize, sample: Duration) {
        if let Some(histogram) = self.families[family].get(command) {
            histogram.record(sample);
        }
    }
}

/// Every transport label's histograms, in the order first asked for: few, and looked up only when a
/// listener starts.
static ALL: Mutex<Vec<Arc<TransportHistograms>>> = parking_lot::const_mutex(Vec::new());

/// The histograms labelled `transport`, shared by everything that records with that label.
pub fn for_transport(transport: &'static str) -> Arc<TransportHistograms> {
    let mut all = ALL.lock();
    if let Some(found) = all.iter().find(|histograms| histograms.transport == transport) {
        return found.clone();
    }
    let histograms = Arc::new(TransportHistograms {
        transport,
        families: std::array::from_fn(|_| std::array::from_fn(|_| Histogram::new())),
    });
    all.push(histograms.clone());
    histograms
}

/// The two families in Prometheus's text format (0.0.4), each series with a sample, each family with
/// a series.
pub fn render(out: &mut String) {
    let all: Vec<Arc<TransportHistograms>> = ALL.lock().clone();
    for (family, (name, help)) in FAMILIES.iter().enumerate() {
        let mut series = String::new();
        for histograms in &all {
            for (command, histogram) in COMMAND_NAMES.iter().zip(&histograms.families[family]) {
                let labels = || format!("command=\"{command}\",transport=\"{}\"", histograms.transport);
                histogram.render(name, labels, &mut series);
            }
        }
        if !series.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            out.push_str(&series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanosecond_bounds_are_the_bounds_in_seconds() {
        for (seconds, nanos) in BOUNDS_SECONDS.iter().zip(BOUNDS_NANOS) {
            assert_eq!(Duration::from_secs_f64(*seconds), Duration::from_nanos(nanos));
        }
    }

    #[test]
    fn a_sample_counts_in_every_bucket_from_the_first_bound_not_below_it() {
        let histogram = Histogram::new();
        histogram.record(Duration::from_nanos(1_000)); // on a bound: in it ("le")
        histogram.record(Duration::from_nanos(1_001));
        histogram.record(Duration::from_secs(60)); // above every bound
        let mut out = String::new();
        histogram.render("h", || "a=\"b\"".into(), &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "h_bucket{a=\"b\",le=\"0.000001\"} 1");
        assert_eq!(lines[1], "h_bucket{a=\"b\",le=\"0.0000025\"} 2");
        assert_eq!(lines[18], "h_bucket{a=\"b\",le=\"10\"} 2");
        assert_eq!(lines[19], "h_bucket{a=\"b\",le=\"+Inf\"} 3");
        assert_eq!(lines[20], "h_sum{a=\"b\"} 60.000002001");
        assert_eq!(lines[21], "h_count{a=\"b\"} 3");
        assert_eq!(lines.len(), 22);
    }

    #[test]
    fn a_series_without_samples_is_not_rendered() {
        let mut out = String::new();
        Histogram::new().render("h", || unreachable!("labels of an empty series"), &mut out);
        assert_eq!(out, "");
    }
}
