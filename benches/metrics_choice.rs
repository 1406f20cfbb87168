//! Which metrics library records a request most cheaply? What each request records on the server:
//! one counter increment (`qkv_requests_total{command,transport,status}`) and one histogram sample
//! (`qkv_request_duration_seconds{command,transport}`), through handles registered once, as
//! `qkv::metrics::Metered` does. Candidates: `metrics` + `metrics-exporter-prometheus` (what qkv uses)
//! and `prometheus-client`. Also what rendering 300 series for a scrape costs in each.
//! Run: `cargo bench --bench metrics_choice` (docs/OPERATIONS.md, "Where they come from").

use criterion::{Criterion, criterion_group, criterion_main};
use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

const BUCKETS: [f64; 14] =
    [50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    command: String,
    transport: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    command: String,
    transport: String,
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("record one request");

    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("duration_seconds".into()), &BUCKETS)
        .expect("buckets")
        .build_recorder();
    let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
    let labels = |pairs: &[(&'static str, &'static str)]| -> Vec<Label> {
        pairs.iter().map(|&(k, v)| Label::new(k, v)).collect()
    };
    let counter = recorder.register_counter(
        &Key::from_parts(
            "requests_total",
            labels(&[("command", "Hget"), ("transport", "quic"), ("status", "200")]),
        ),
        &metadata,
    );
    let histogram = recorder.register_histogram(
        &Key::from_parts("duration_seconds", labels(&[("command", "Hget"), ("transport", "quic")])),
        &metadata,
    );
    let handle = recorder.handle();
    group.bench_function("metrics-exporter-prometheus", |b| {
        let mut n = 0u64;
        b.iter(|| {
            counter.increment(1);
            histogram.record(0.000_2);
            n += 1;
            // Upkeep folds the samples in, as the admin listener does every few seconds.
            if n.is_multiple_of(100_000) {
                handle.run_upkeep();
            }
        })
    });

    let mut registry = Registry::default();
    let requests = Family::<RequestLabels, Counter>::default();
    let durations = Family::<DurationLabels, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
    registry.register("requests", "Requests answered", requests.clone());
    registry.register("duration_seconds", "Request durations", durations.clone());
    let counter = requests
        .get_or_create(&RequestLabels {
            command: "Hget".into(),
            transport: "quic".into(),
            status: "200".into(),
        })
        .clone();
    let histogram =
        durations.get_or_create(&DurationLabels { command: "Hget".into(), transport: "quic".into() }).clone();
    group.bench_function("prometheus-client", |b| {
        b.iter(|| {
            counter.inc();
            histogram.observe(0.000_2);
        })
    });
    group.finish();
}

criterion_group!(benches, request);
criterion_main!(benches);
