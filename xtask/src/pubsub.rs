//! `cargo xtask pubsub-report`: pub/sub fan-out, messages delivered per second to 100 subscribers, over
//! QUIC, TLS over TCP and plaintext TCP (`qkv bench --workload fanout`). Each subscriber is a client of
//! its own (a QUIC connection; over TCP a connection for its subscription), as separate devices would
//! be; one publisher connection keeps 1 or 16 publishes in flight. Each point runs again with one more
//! subscriber that never reads, to show what a stalled subscriber costs the others.
//!
//! The server is pinned to core 0, the load generator (publisher and subscribers together) to core 1.
//! Every point runs every transport in turn; the sweep is repeated and the report gives medians.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::SweepArgs;
use crate::report;
use crate::run::{self, Processes, Scenario};

const SUBSCRIBERS: usize = 100;
const TRANSPORTS: [&str; 3] = ["quic", "tls", "tcp"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    transport: String,
    in_flight: u32,
    stalled: usize,
    deliveries_per_s: f64,
    publishes_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    missed: u64,
    /// Deliveries the server could not queue (the stalled subscriber's, once full).
    #[serde(default)]
    lagging: u64,
    /// Publishes answered in the measured period.
    #[serde(default)]
    published: u64,
    errors: u64,
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    run::require_two_cores()?;
    run::build_qkv()?;
    let (reps, duration) = match args.quick {
        true => (1, Duration::from_secs(2)),
        false => (args.reps, Duration::from_secs(args.seconds)),
    };
    let work = std::env::temp_dir().join(format!("qkv-pubsub-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let certs = run::make_certs(&work)?;
    let (tls_port, plaintext_port) = (run::free_port()?, run::free_port()?);
    let mut processes = Processes::default();
    for (port, extra, name) in
        [(tls_port, vec![], "qkv"), (plaintext_port, vec!["--tcp-plaintext".to_owned()], "qkv-plaintext")]
    {
        processes.0.push(run::serve_pinned(&work, &certs, port, &extra, name)?);
    }
    let points = [1u32, 16];
    let mut measurements = Vec::new();
    let total = reps * points.len() * 2 * TRANSPORTS.len();
    for rep in 1..=reps {
        for &n in &points {
            for stalled in [0, 1] {
                for transport in TRANSPORTS {
                    eprintln!(
                        "[{}/{total}] {transport}, {n} in flight, {stalled} stalled (run {rep})",
                        measurements.len() + 1
                    );
                    let port = if transport == "tcp" { plaintext_port } else { tls_port };
                    let extra = [
                        "--subscribers".to_owned(),
                        SUBSCRIBERS.to_string(),
                        "--stalled".to_owned(),
                        stalled.to_string(),
                    ];
                    let json = run::qkv_bench_json(
                        port,
                        &certs,
                        transport,
                        "fanout",
                        Scenario::new(1, n),
                        duration,
                        &extra,
                    )
                    .with_context(|| format!("{transport} at {n} in flight"))?;
                    let fanout = json.fanout.context("qkv bench reported no fan-out figures")?;
                    measurements.push(Measurement {
                        transport: transport.to_owned(),
                        in_flight: n,
                        stalled,
                        deliveries_per_s: json.throughput_rps,
                        publishes_per_s: fanout.published as f64 / json.duration_s,
                        p50_us: json.latency_us.p50 as f64,
                        p99_us: json.latency_us.p99 as f64,
                        missed: fanout.missed,
                        lagging: fanout.lagging,
                        published: fanout.published,
                        errors: json.errors,
                    });
                }
            }
        }
    }
    drop(processes);
    let _ = std::fs::remove_dir_all(&work);
    write(&measurements, &points, reps, duration, args.quick, &args.out)
}

fn write(
    measurements: &[Measurement],
    points: &[u32],
    reps: usize,
    duration: Duration,
    quick: bool,
    out: &Path,
) -> anyhow::Result<()> {
    let med = |transport: &str, n: u32, stalled: usize, value: fn(&Measurement) -> f64| {
        let matches = |m: &Measurement| m.transport == transport && m.in_flight == n && m.stalled == stalled;
        report::median_where(measurements, matches, value)
    };
    let mut md =
        report::header("Pub/sub fan-out", "pubsub-report", quick, "[README.md](README.md#pubsub-fan-out)");
    writeln!(
        md,
        "## Method\n\nLoopback; the server pinned to core 0, the load generator (publisher and subscribers, \
         one process) to core 1. {SUBSCRIBERS} subscribers to one topic, each a client of its own (QUIC: a \
         connection; TCP: a connection for its subscription); one publisher connection with 1 or 16 \
         publishes in flight; messages of a send time and 64 bytes. A delivery is a message received by a \
         subscriber; its latency runs from the Publish being sent to the message being read. \"+1 stalled\" \
         adds a subscriber that never reads. Each point: every transport in turn, {} s measured after 1 s \
         of warm-up; the sweep repeated {reps} time(s); medians.\n",
        duration.as_secs()
    )?;
    for (title, value) in [
        ("Deliveries per second", (|m: &Measurement| m.deliveries_per_s) as fn(&Measurement) -> f64),
        ("Publishes per second", |m: &Measurement| m.publishes_per_s),
        ("Delivery latency p50 (µs)", |m: &Measurement| m.p50_us),
        ("Delivery latency p99 (µs)", |m: &Measurement| m.p99_us),
    ] {
        writeln!(md, "## {title}\n")?;
        writeln!(
            md,
            "| publishes in flight | subscribers | {} |",
            TRANSPORTS.map(transport_label).join(" | ")
        )?;
        writeln!(md, "|---:|---|{}", "---:|".repeat(TRANSPORTS.len()))?;
        for &n in points {
            for stalled in [0, 1] {
                let who =
                    if stalled == 0 { format!("{SUBSCRIBERS}") } else { format!("{SUBSCRIBERS} +1 stalled") };
                write!(md, "| {n} | {who} |")?;
                for transport in TRANSPORTS {
                    match med(transport, n, stalled, value) {
                        Some(v) => write!(md, " {v:.0} |")?,
                        None => write!(md, " – |")?,
                    }
                }
                writeln!(md)?;
            }
        }
        writeln!(md)?;
    }
    writeln!(md, "## A stalled subscriber's cost to the others\n")?;
    writeln!(
        md,
        "Deliveries per second to the {SUBSCRIBERS} reading subscribers with one stalled subscriber, ÷ without (1.00: no cost).\n"
    )?;
    ratio_table(&mut md, points, |transport, n| {
        let rate = |stalled| med(transport, n, stalled, |m| m.deliveries_per_s);
        Some(rate(1)? / rate(0)?)
    })?;
    writeln!(
        md,
        "\nThat it stalled at the server: the share of publishes that found a subscriber lagging (its \
         transport's buffers and its queue on the server full: `Publish`'s lagging count ÷ publishes), \
         with the stalled subscriber.\n"
    )?;
    ratio_table(&mut md, points, |transport, n| {
        med(transport, n, 1, |m| m.lagging as f64 / m.published.max(1) as f64)
    })?;
    let errors: u64 = measurements.iter().map(|m| m.errors).sum();
    let missed: u64 = measurements.iter().map(|m| m.missed).sum();
    writeln!(
        md,
        "\nOver all runs: {errors} errors; {missed} messages reported missed to reading subscribers. Raw: \
         [pubsub-results.json](pubsub-results.json)."
    )?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("pubsub-results.json"), serde_json::to_string_pretty(measurements)?)?;
    std::fs::write(out.join("PUBSUB.md"), md)?;
    eprintln!("report written to {}", out.join("PUBSUB.md").display());
    Ok(())
}

fn transport_label(transport: &str) -> &'static str {
    match transport {
        "quic" => "qkv QUIC",
        "tls" => "qkv TLS",
        _ => "qkv TCP",
    }
}

/// A table of one figure per transport (columns) and publishes in flight (rows), with two decimals;
/// `value` is `None` where a point was not measured.
fn ratio_table(
    md: &mut String,
    points: &[u32],
    value: impl Fn(&str, u32) -> Option<f64>,
) -> std::fmt::Result {
    writeln!(md, "| publishes in flight | {} |", TRANSPORTS.map(transport_label).join(" | "))?;
    writeln!(md, "|---:|{}", "---:|".repeat(TRANSPORTS.len()))?;
    for &n in points {
        write!(md, "| {n} |")?;
        for transport in TRANSPORTS {
            match value(transport, n) {
                Some(value) => write!(md, " {value:.2} |")?,
                None => write!(md, " – |")?,
            }
        }
        writeln!(md)?;
    }
    Ok(())
}
