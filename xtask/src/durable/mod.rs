//! `cargo xtask durable-report`: issue 19's goals for qkv's disk store, "durable writes at least as
//! fast as Redis `appendfsync always`, durable reads at memory speed", checked on one run:
//!
//! - **Writes**: HSET to `qkv serve --store disk --durability strict` against Redis with `appendonly
//!   yes` and `appendfsync always`, at 1, 16, 64 and 256 writes in flight. Both acknowledge a write
//!   only once it is on disk, and both share one fsync among the writes that arrive together. qkv over
//!   QUIC carries the N writes on one connection (a stream each), qkv over plaintext TCP and Redis on N
//!   connections with one write each, as redis-benchmark's clients do.
//! - **The load generator's ceiling**: HSET over TCP at the same points to `qkv serve --store memory`,
//!   which does no I/O: at 256 connections × 1 it is `qkv bench`, not the server, that runs out of core
//!   first, so no durable store can show more than this against redis-benchmark there.
//! - **Reads**: HGET from the same disk store against `qkv serve --store memory`, 1 QUIC connection ×
//!   64 in flight, on keys that fit in memory.
//! - **Restart** ([`restart`]): the time from starting a server on a data directory of 1 million and
//!   10 million keys until it answers a read, after a clean stop and after a kill; the directory's
//!   size and the server's memory per key.
//! - **Space** ([`space`]): the data directory's size over a minute of overwrites of 10,000 keys.
//!
//! Servers are pinned to core 0 (qkv's committer thread included), load generators to core 1 (as is
//! the thread of this process that loads and probes the restart test's servers). Each sweep point runs
//! every target in turn; the sweep is repeated and the report gives medians. HSET and HGET of 64-byte
//! values among 10,000 keys. Only one server is loaded at a time.

mod restart;
mod space;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::ReportArgs;
use crate::run::{self, CLIENT_CORE, KEYS, Processes, SERVER_CORE, Scenario, VALUE_SIZE, pinned};
use crate::{plot, report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    QkvQuic,
    QkvTcp,
    Redis,
    /// HSET over TCP to the memory store: what the load generator can send at all.
    MemoryTcp,
    /// HGET from the disk store.
    DiskReads,
    /// HGET from the memory store.
    MemoryReads,
}

impl Target {
    const WRITES: [Target; 3] = [Target::QkvQuic, Target::QkvTcp, Target::Redis];
    /// Every target run at each write point.
    const WRITE_POINT: [Target; 4] = [Target::QkvQuic, Target::QkvTcp, Target::Redis, Target::MemoryTcp];
    const READS: [Target; 2] = [Target::DiskReads, Target::MemoryReads];

    fn label(self) -> &'static str {
        match self {
            Target::QkvQuic => "qkv QUIC (1 connection × N streams)",
            Target::QkvTcp => "qkv TCP (N connections × 1)",
            Target::Redis => "Redis appendfsync always (N connections × 1)",
            Target::MemoryTcp => "qkv memory store, TCP (N connections × 1)",
            Target::DiskReads => "qkv disk store",
            Target::MemoryReads => "qkv memory store",
        }
    }

    /// Connections × in flight for `n` requests in flight.
    fn scenario(self, n: u32) -> Scenario {
        match self {
            Target::QkvQuic | Target::DiskReads | Target::MemoryReads => Scenario::new(1, n),
            Target::QkvTcp | Target::Redis | Target::MemoryTcp => Scenario::new(n, 1),
        }
    }
}

/// Reads are measured at this many in flight, on one QUIC connection.
const READS_IN_FLIGHT: u32 = 64;
/// The write points that issue 19 sets a goal for.
const GOAL_POINTS: [u32; 3] = [16, 64, 256];
/// Durable HSET ÷ Redis `appendfsync always` must be at least this, and HGET disk ÷ memory this.
const WRITE_GOAL: f64 = 1.0;
const READ_GOAL: f64 = 0.9;

/// One run of one target at one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    target: Target,
    in_flight: u32,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Everything one report is made from: results.json.
#[derive(Debug, Serialize, Deserialize)]
struct Results {
    quick: bool,
    reps: usize,
    seconds: u64,
    sweep: Vec<Measurement>,
    restarts: Vec<restart::Restart>,
    space: space::Space,
}

struct Servers {
    certs: PathBuf,
    disk: u16,
    memory: u16,
    redis: u16,
}

fn start(work: &Path, certs: &Path, processes: &mut Processes) -> anyhow::Result<Servers> {
    let certs = certs.to_owned();
    let servers =
        Servers { disk: run::free_port()?, memory: run::free_port()?, redis: run::free_port()?, certs };
    let qkv = |store: &[&str]| -> Vec<String> {
        ["--tcp-plaintext", "--store"].iter().chain(store).map(|s| s.to_string()).collect()
    };
    let disk_dir = work.join("qkv-data").display().to_string();
    let disk = qkv(&["disk", "--durability", "strict", "--data-dir", &disk_dir]);
    processes.0.push(run::serve_pinned(work, &servers.certs, servers.disk, &disk, "qkv")?);
    processes.0.push(run::serve_pinned(
        work,
        &servers.certs,
        servers.memory,
        &qkv(&["memory"]),
        "qkv-memory",
    )?);
    let redis_dir = work.join("redis-data");
    std::fs::create_dir_all(&redis_dir)?;
    processes.0.push(
        pinned(SERVER_CORE, "redis-server")
            .args(["--port", &servers.redis.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&redis_dir)
            .stdout(std::fs::File::create(work.join("redis.log"))?)
            .stderr(Stdio::null())
            .spawn()?,
    );
    run::wait_for_tcp(servers.redis, "Redis")?;
    Ok(servers)
}

/// One run of `target` at `n` in flight. `qkv bench --workload hget` writes every key it reads before
/// it starts (the same 10,000 keys and values on either store), and counts a missing one as an error.
fn measure(servers: &Servers, target: Target, n: u32, duration: Duration) -> anyhow::Result<Measurement> {
    let scenario = target.scenario(n);
    let qkv = |port, transport, workload| {
        let json = run::qkv_bench_json(port, &servers.certs, transport, workload, scenario, duration, &[])?;
        anyhow::Ok((json.throughput_rps, json.latency_us.p50 as f64, json.latency_us.p99 as f64, json.errors))
    };
    let (throughput, p50_us, p99_us, errors) = match target {
        Target::QkvQuic => qkv(servers.disk, "quic", "hset")?,
        Target::QkvTcp => qkv(servers.disk, "tcp", "hset")?,
        Target::MemoryTcp => qkv(servers.memory, "tcp", "hset")?,
        Target::DiskReads => qkv(servers.disk, "quic", "hget")?,
        Target::MemoryReads => qkv(servers.memory, "quic", "hget")?,
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

/// The writes and reads, `reps` times: every write point for every target, then the reads from
/// either store.
fn sweep(
    work: &Path,
    certs: &Path,
    points: &[u32],
    reps: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Measurement>> {
    let mut processes = Processes::default();
    let servers = start(work, certs, &mut processes)?;
    let runs: Vec<(Target, u32)> = points
        .iter()
        .flat_map(|&n| Target::WRITE_POINT.map(|target| (target, n)))
        .chain(Target::READS.map(|target| (target, READS_IN_FLIGHT)))
        .collect();
    let total = reps * runs.len();
    let mut measurements = Vec::new();
    for rep in 1..=reps {
        for &(target, n) in &runs {
            eprintln!("[{}/{total}] {} at {n} in flight (run {rep})", measurements.len() + 1, target.label());
            let m = measure(&servers, target, n, duration)
                .with_context(|| format!("{} at {n} in flight", target.label()))?;
            measurements.push(m);
        }
    }
    Ok(measurements)
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let ReportArgs { sweep: args, from } = args;
    if let Some(from) = &from {
        let results: Results = serde_json::from_slice(&std::fs::read(from)?)
            .with_context(|| format!("cannot read {}", from.display()))?;
        let mut points: Vec<u32> = results.sweep.iter().map(|m| m.in_flight).collect();
        points.sort_unstable();
        points.dedup();
        points.retain(|&n| {
            results.sweep.iter().any(|m| m.in_flight == n && Target::WRITES.contains(&m.target))
        });
        write(&results, &points, &args.out)?;
        eprintln!("report rewritten in {} from {}", args.out.display(), from.display());
        return Ok(());
    }
    run::require_two_cores()?;
    run::ensure_redis()?;
    run::build_qkv()?;
    let (points, reps, duration) = match args.quick {
        true => (GOAL_POINTS.to_vec(), 1, Duration::from_secs(2)),
        false => (vec![1, 16, 64, 256], args.reps, Duration::from_secs(args.seconds)),
    };
    let (restart_keys, space_duration) = match args.quick {
        true => (vec![100_000], Duration::from_secs(10)),
        false => (vec![1_000_000, 10_000_000], Duration::from_secs(60)),
    };
    let work = std::env::temp_dir().join(format!("qkv-durable-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let measured = (|| {
        let certs = run::make_certs(&work)?;
        let sweep = sweep(&work, &certs, &points, reps, duration)?;
        // This process samples the space test's directory, and loads and probes the restart test's
        // servers: a load generator.
        let (space, restarts) = run::on_core(CLIENT_CORE, || {
            anyhow::Ok((
                space::run(&work, &certs, space_duration)?,
                restart::run(&work, &certs, &restart_keys)?,
            ))
        })?;
        anyhow::Ok(Results { quick: args.quick, reps, seconds: duration.as_secs(), sweep, restarts, space })
    })();
    match &measured {
        Ok(_) => drop(std::fs::remove_dir_all(&work)),
        Err(_) => eprintln!("the servers' logs are kept in {}", work.display()),
    }
    write(&measured?, &points, &args.out)
}

/// The table and key names of `qkv bench` (src/bench/workload.rs), which the restart and space tests
/// share, so that their keys are as long as the sweep's.
const TABLE: &str = "bench";

fn key(i: usize) -> String {
    format!("key:{i:010}")
}

/// What a directory's files take, summed over the tree: their lengths, and the blocks the file system
/// gave them (as `du` counts; less for sparse files, more for files with preallocated space).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct DirSize {
    bytes: u64,
    allocated: u64,
}

impl DirSize {
    /// Files removed while the tree is walked (a compaction's) are not counted.
    fn of(dir: &Path) -> anyhow::Result<DirSize> {
        use std::os::unix::fs::MetadataExt;
        let mut size = DirSize::default();
        let entries = match std::fs::read_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(size),
            entries => entries.with_context(|| format!("cannot list {}", dir.display()))?,
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                let inner = DirSize::of(&entry.path())?;
                size.bytes += inner.bytes;
                size.allocated += inner.allocated;
            } else {
                size.bytes += metadata.len();
                // st_blocks counts 512-byte units, whatever the file system's block size.
                size.allocated += metadata.blocks() * 512;
            }
        }
        Ok(size)
    }
}

fn write(results: &Results, points: &[u32], out: &Path) -> anyhow::Result<()> {
    let measurements = &results.sweep;
    let med = |target: Target, n: u32, value: fn(&Measurement) -> f64| {
        report::median_where(measurements, |m| m.target == target && m.in_flight == n, value)
    };
    let title = "Durable writes and reads: qkv's disk store against Redis and its memory store";
    let mut md =
        report::header(title, "durable-report", results.quick, "[README.md](README.md#durable-writes)");
    writeln!(
        md,
        "## Method\n\nLoopback; servers pinned to core 0, load generators to core 1, one server loaded at a \
         time. qkv `--store disk --durability strict` (fsync before every acknowledgement, group commit), \
         Redis `--appendonly yes --appendfsync always`. Writes: HSET of 64-byte values among 10,000 keys. \
         Reads: HGET of the same keys over 1 QUIC connection × {READS_IN_FLIGHT}, from the disk store and \
         from a `--store memory` server (`qkv bench` writes every key it reads before it starts, so both \
         hold the same data and every read hits). Each point: every target in turn, {} s measured after \
         1 s of warm-up; the writes and reads repeated {} time(s), interleaved; medians. Restart and \
         space: see their sections; each is one measurement.\n",
        results.seconds, results.reps
    )?;
    // Each repetition runs the targets back to back, so a ratio is taken within a repetition (the
    // machine's speed drifts between them far more than within one) and the median of those is given.
    let ratios = |target: Target, baseline: Target, n: u32| -> Vec<f64> {
        let throughputs = |t: Target| -> Vec<f64> {
            measurements.iter().filter(|m| m.target == t && m.in_flight == n).map(|m| m.throughput).collect()
        };
        throughputs(target).iter().zip(throughputs(baseline)).map(|(a, b)| a / b).collect()
    };
    writeln!(
        md,
        "## Targets (issue 19)\n\nEach ratio is taken within one repetition (the two targets measured one \
         after the other); the median of the repetitions' ratios is given, each repetition's in brackets.\n\n\
         | target | measured | met |\n|---|---|---|"
    )?;
    let row = |md: &mut String, name: String, ratios: Vec<f64>, goal: f64| {
        let Some((ratio, each)) = median_and_each(ratios) else {
            return writeln!(md, "| {name} | not measured | – |");
        };
        writeln!(
            md,
            "| {name} | {ratio:.2} ({each}; goal ≥ {goal}) | {} |",
            if ratio >= goal { "yes" } else { "**no**" }
        )
    };
    for target in [Target::QkvQuic, Target::QkvTcp] {
        for n in GOAL_POINTS {
            let name =
                format!("durable HSET at {n} in flight, {} ÷ Redis appendfsync always", target.label());
            row(&mut md, name, ratios(target, Target::Redis, n), WRITE_GOAL)?;
        }
    }
    let name = format!(
        "HGET at 1 QUIC connection × {READS_IN_FLIGHT}, disk store ÷ memory store (reads/s; data in memory)"
    );
    row(&mut md, name, ratios(Target::DiskReads, Target::MemoryReads, READS_IN_FLIGHT), READ_GOAL)?;
    writeln!(
        md,
        "\nThe load generator's ceiling: the same TCP HSETs to a `--store memory` server (no I/O at all) ÷ \
         Redis appendfsync always. Where it is near 1, `qkv bench` (or the core it has) is what runs out \
         first, and the TCP row above cannot rise past it whatever the disk store does.\n\n\
         | writes in flight | memory store TCP ÷ Redis | disk store TCP ÷ memory store TCP |\n|---:|---|---|"
    )?;
    let each = |ratios| {
        median_and_each(ratios).map_or("–".to_owned(), |(ratio, each)| format!("{ratio:.2} ({each})"))
    };
    for &n in points {
        writeln!(
            md,
            "| {n} | {} | {} |",
            each(ratios(Target::MemoryTcp, Target::Redis, n)),
            each(ratios(Target::QkvTcp, Target::MemoryTcp, n))
        )?;
    }
    writeln!(md)?;

    for (title, value) in [
        ("Write throughput (writes/s)", (|m: &Measurement| m.throughput) as fn(&Measurement) -> f64),
        ("Write p50 latency (µs)", |m: &Measurement| m.p50_us),
        ("Write p99 latency (µs)", |m: &Measurement| m.p99_us),
    ] {
        writeln!(md, "## {title}\n")?;
        write!(md, "| writes in flight |")?;
        for target in Target::WRITE_POINT {
            write!(md, " {} |", target.label())?;
        }
        writeln!(md, "\n|---:|{}", "---:|".repeat(Target::WRITE_POINT.len()))?;
        for &n in points {
            write!(md, "| {n} |")?;
            for target in Target::WRITE_POINT {
                match med(target, n, value) {
                    Some(v) => write!(md, " {v:.0} |")?,
                    None => write!(md, " – |")?,
                }
            }
            writeln!(md)?;
        }
        writeln!(md)?;
    }
    writeln!(md, "![throughput](durable-throughput.svg)\n")?;

    writeln!(
        md,
        "## Reads, 1 QUIC connection × {READS_IN_FLIGHT} in flight\n\n| store | reads/s | p50 (µs) | p99 (µs) \
         |\n|---|---:|---:|---:|"
    )?;
    let read = |target, value| med(target, READS_IN_FLIGHT, value);
    let cell = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0}"));
    for target in Target::READS {
        writeln!(
            md,
            "| {} | {} | {} | {} |",
            target.label(),
            cell(read(target, |m| m.throughput)),
            cell(read(target, |m| m.p50_us)),
            cell(read(target, |m| m.p99_us))
        )?;
    }
    let quotient = |value: fn(&Measurement) -> f64| {
        let quotient = || Some(read(Target::DiskReads, value)? / read(Target::MemoryReads, value)?);
        quotient().map_or("–".to_owned(), |q| format!("{q:.2}"))
    };
    writeln!(
        md,
        "| disk ÷ memory | {} | {} | {} |\n",
        quotient(|m| m.throughput),
        quotient(|m| m.p50_us),
        quotient(|m| m.p99_us)
    )?;

    restart::write(&mut md, &results.restarts)?;
    space::write(&mut md, &results.space)?;

    let errors: u64 = measurements.iter().map(|m| m.errors).sum();
    writeln!(
        md,
        "Errors counted by qkv bench over all runs of the sweep: {errors}; in the space run: {}. Raw: \
         [durable-results.json](durable-results.json).",
        results.space.errors
    )?;
    std::fs::create_dir_all(out)?;
    let throughput =
        |target| points.iter().filter_map(|&n| Some((n, med(target, n, |m| m.throughput)?))).collect();
    plot(&out.join("durable-throughput.svg"), points, Target::WRITES.map(|t| (t.label(), throughput(t))))?;
    space::plot(&out.join("durable-space.svg"), &results.space)?;
    std::fs::write(out.join("durable-results.json"), serde_json::to_string_pretty(results)?)?;
    std::fs::write(out.join("DURABLE.md"), md)?;
    eprintln!("report written to {}", out.join("DURABLE.md").display());
    Ok(())
}

/// The median of `ratios` and each of them, as the report shows them; `None` if there are none.
fn median_and_each(mut ratios: Vec<f64>) -> Option<(f64, String)> {
    if ratios.is_empty() {
        return None;
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    Some((report::median(&mut ratios), each.join(" / ")))
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
