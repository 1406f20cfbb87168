//! `cargo xtask durable-report`: durable writes, qkv's disk store against Redis with `appendonly yes`
//! and `appendfsync always`, at 1, 16, 64 and 256 writes in flight. Both acknowledge a write only once
//! it is on disk, and both share one fsync among the writes that arrive together.
//!
//! Servers are pinned to core 0 (qkv's committer thread included), load generators to core 1. Each
//! point runs every target in turn; the sweep is repeated and the report gives medians. HSET of 64-byte
//! values among 10,000 keys. qkv over QUIC carries the N writes on one connection (a stream each), qkv
//! over plaintext TCP and Redis on N connections with one write each, as redis-benchmark's clients do.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::SweepArgs;
use crate::run::{self, CLIENT_CORE, KEYS, Processes, QKV, SERVER_CORE, Scenario, VALUE_SIZE, pinned};
use crate::{plot, report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    QkvQuic,
    QkvTcp,
    Redis,
}

impl Target {
    const ALL: [Target; 3] = [Target::QkvQuic, Target::QkvTcp, Target::Redis];

    fn label(self) -> &'static str {
        match self {
            Target::QkvQuic => "qkv QUIC (1 connection × N streams)",
            Target::QkvTcp => "qkv TCP (N connections × 1)",
            Target::Redis => "Redis appendfsync always (N connections × 1)",
        }
    }

    /// Connections × in flight for `n` writes in flight.
    fn scenario(self, n: u32) -> Scenario {
        match self {
            Target::QkvQuic => Scenario::new(1, n),
            Target::QkvTcp | Target::Redis => Scenario::new(n, 1),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    target: Target,
    in_flight: u32,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

struct Servers {
    certs: PathBuf,
    qkv: u16,
    redis: u16,
}

fn start(work: &Path, processes: &mut Processes) -> anyhow::Result<Servers> {
    let certs = run::make_certs(work)?;
    let servers = Servers { qkv: run::free_port()?, redis: run::free_port()?, certs };
    let log = |name: &str| std::fs::File::create(work.join(format!("{name}.log")));
    processes.0.push(
        pinned(SERVER_CORE, QKV)
            .args(["serve", "--tcp-plaintext", "--store", "disk", "--durability", "strict"])
            .args(["--listen", &format!("127.0.0.1:{}", servers.qkv), "--certs"])
            .arg(&servers.certs)
            .arg("--data-dir")
            .arg(work.join("qkv-data"))
            .stdout(Stdio::null())
            .stderr(log("qkv")?)
            .spawn()?,
    );
    let redis_dir = work.join("redis-data");
    std::fs::create_dir_all(&redis_dir)?;
    processes.0.push(
        pinned(SERVER_CORE, "redis-server")
            .args(["--port", &servers.redis.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&redis_dir)
            .stdout(log("redis")?)
            .stderr(Stdio::null())
            .spawn()?,
    );
    run::wait_for_tcp(servers.qkv, "qkv")?;
    run::wait_for_tcp(servers.redis, "Redis")?;
    Ok(servers)
}

fn measure(servers: &Servers, target: Target, n: u32, duration: Duration) -> anyhow::Result<Measurement> {
    let scenario = target.scenario(n);
    let (throughput, p50_us, p99_us, errors) = match target {
        Target::QkvQuic | Target::QkvTcp => {
            let transport = if target == Target::QkvQuic { "quic" } else { "tcp" };
            let json =
                run::qkv_bench_json(servers.qkv, &servers.certs, transport, "hset", scenario, duration, &[])?;
            (json.throughput_rps, json.latency_us.p50 as f64, json.latency_us.p99 as f64, json.errors)
        }
        Target::Redis => {
            // redis-benchmark runs a request count: a calibration run sizes it to the duration.
            let calibration = redis_hset(servers, n, u64::from(n) * 200)?;
            let requests = ((calibration.0 * duration.as_secs_f64()) as u64).max(u64::from(n) * 20);
            let (rps, p50, p99) = redis_hset(servers, n, requests)?;
            (rps, p50, p99, 0)
        }
    };
    Ok(Measurement { target, in_flight: n, throughput, p50_us, p99_us, errors })
}

fn redis_hset(servers: &Servers, clients: u32, requests: u64) -> anyhow::Result<(f64, f64, f64)> {
    let value = "w".repeat(VALUE_SIZE);
    let output = pinned(CLIENT_CORE, "redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &servers.redis.to_string(), "-c", &clients.to_string(), "-P", "1"])
        .args(["-n", &requests.to_string(), "-r", &KEYS.to_string(), "--csv"])
        .args(["HSET", "bench", "key:__rand_int__", &value])
        .output()?;
    if !output.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    run::parse_redis_csv(&output.stdout)
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    run::require_two_cores()?;
    run::ensure_redis()?;
    run::build_qkv()?;
    let (points, reps, duration) = match args.quick {
        true => (vec![1, 64], 1, Duration::from_secs(2)),
        false => (vec![1, 16, 64, 256], args.reps, Duration::from_secs(args.seconds)),
    };
    let work = std::env::temp_dir().join(format!("qkv-durable-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut processes = Processes::default();
    let servers = start(&work, &mut processes)?;
    let mut measurements = Vec::new();
    let total = reps * points.len() * Target::ALL.len();
    for rep in 1..=reps {
        for &n in &points {
            for target in Target::ALL {
                eprintln!(
                    "[{}/{total}] {} at {n} in flight (run {rep})",
                    measurements.len() + 1,
                    target.label()
                );
                let m = measure(&servers, target, n, duration)
                    .with_context(|| format!("{} at {n} in flight", target.label()))?;
                measurements.push(m);
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
    let med = |target: Target, n: u32, value: fn(&Measurement) -> f64| {
        report::median_where(measurements, |m| m.target == target && m.in_flight == n, value)
    };
    let title = "Durable writes: qkv's disk store against Redis";
    let mut md = report::header(title, "durable-report", quick, "[README.md](README.md#durable-writes)");
    writeln!(
        md,
        "## Method\n\nLoopback; servers pinned to core 0, load generators to core 1. HSET of 64-byte values \
         among 10,000 keys; qkv `--store disk --durability strict` (redb, fsync before every \
         acknowledgement, group commit), Redis `--appendonly yes --appendfsync always`. Each point: every \
         target in turn, {} s measured after 1 s of warm-up; the sweep repeated {reps} time(s); medians.\n",
        duration.as_secs()
    )?;
    let ratio =
        |n: u32| Some(med(Target::QkvQuic, n, |m| m.throughput)? / med(Target::Redis, n, |m| m.throughput)?);
    if let Some(ratio) = ratio(64) {
        writeln!(
            md,
            "## Target\n\n| target | measured | met |\n|---|---|---|\n| durable HSET at 64 in flight, qkv QUIC ÷ Redis ≥ 1 | {ratio:.2} | {} |\n",
            if ratio >= 1.0 { "yes" } else { "**no**" }
        )?;
    }
    for (title, value, unit) in [
        ("Throughput (writes/s)", (|m: &Measurement| m.throughput) as fn(&Measurement) -> f64, ""),
        ("p50 latency (µs)", |m: &Measurement| m.p50_us, ""),
        ("p99 latency (µs)", |m: &Measurement| m.p99_us, ""),
    ] {
        writeln!(md, "## {title}\n")?;
        write!(md, "| writes in flight |")?;
        for target in Target::ALL {
            write!(md, " {} |", target.label())?;
        }
        writeln!(md, "\n|---:|{}", "---:|".repeat(Target::ALL.len()))?;
        for &n in points {
            write!(md, "| {n} |")?;
            for target in Target::ALL {
                match med(target, n, value) {
                    Some(v) => write!(md, " {v:.0}{unit} |")?,
                    None => write!(md, " – |")?,
                }
            }
            writeln!(md)?;
        }
        writeln!(md)?;
    }
    writeln!(md, "![throughput](durable-throughput.svg)\n")?;
    let errors: u64 = measurements.iter().map(|m| m.errors).sum();
    writeln!(
        md,
        "Errors counted by qkv bench over all runs: {errors}. Raw: [durable-results.json](durable-results.json)."
    )?;
    std::fs::create_dir_all(out)?;
    let throughput =
        |target| points.iter().filter_map(|&n| Some((n, med(target, n, |m| m.throughput)?))).collect();
    plot(&out.join("durable-throughput.svg"), points, Target::ALL.map(|t| (t.label(), throughput(t))))?;
    std::fs::write(out.join("durable-results.json"), serde_json::to_string_pretty(measurements)?)?;
    std::fs::write(out.join("DURABLE.md"), md)?;
    eprintln!("report written to {}", out.join("DURABLE.md").display());
    Ok(())
}

/// Throughput against writes in flight, one line per target, both axes logarithmic.
fn plot(path: &Path, points: &[u32], series: [(&str, Vec<(u32, f64)>); 3]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = plot::canvas(path)?;
    let high = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(1.0, f64::max);
    let low = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(high, f64::min);
    let widest = points.iter().copied().max().unwrap_or(1);
    let mut chart = plot::builder(&root, "Durable HSET throughput (writes/s)").build_cartesian_2d(
        (0.8..f64::from(widest) * 1.25).log_scale(),
        (low * 0.8..high * 1.25).log_scale(),
    )?;
    chart
        .configure_mesh()
        .x_desc("writes in flight")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&plot::short_number)
        .draw()?;
    for ((label, points), color) in series.into_iter().zip([RED, BLUE, BLACK]) {
        let points = points.into_iter().map(|(n, v)| (f64::from(n), v)).collect();
        plot::dotted_line(&mut chart, points, color, Some(label))?;
    }
    plot::finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
}
