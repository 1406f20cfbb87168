//! `cargo xtask cluster-report`: qkv gateways over a real Redis Cluster (3 masters on loopback),
//! beside the in-memory server and Redis itself: throughput of HGET and HSET at 1 connection × 64 in
//! flight over QUIC through one and through two gateways; latency at low load (1 × 1); the servers' CPU
//! per request, at full speed and at the same load (an open loop at half of what one gateway sustains,
//! sent to the gateway and to the in-memory server alike); and a failover (the master of the bench
//! table's slot killed under load, in a 3 + 3 cluster) with and without `--redis-wait 1`: the longest
//! time without an answer, the failed requests.
//!
//! qkv servers (the in-memory one and the gateways) are pinned to core 0, load generators to core 1;
//! Redis's nodes are not pinned (everything shares two cores here: the report gives CPU time per
//! request beside throughput). Each point runs every target in turn; repeated; medians.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qkv_testkit::RedisCluster;
use serde::{Deserialize, Serialize};

use crate::SweepArgs;
use crate::run::{self, CLIENT_CORE, KEYS, Processes, QKV, SERVER_CORE, Scenario, VALUE_SIZE, pinned};
use crate::{plot, proc, report};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    Memory,
    Gateway,
    TwoGateways,
    Redis,
}

impl Target {
    const ALL: [Target; 4] = [Target::Memory, Target::Gateway, Target::TwoGateways, Target::Redis];

    fn label(self) -> &'static str {
        match self {
            Target::Memory => "qkv in-memory server",
            Target::Gateway => "qkv gateway → cluster",
            Target::TwoGateways => "two qkv gateways → cluster",
            Target::Redis => "Redis directly",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    target: Target,
    workload: String,
    inflight: u32,
    /// The open loop's rate (requests/s), or none for a closed loop (as fast as answers come).
    rate: Option<u64>,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of the qkv server(s) per request, µs (none for Redis).
    cpu_us_per_request: Option<f64>,
    errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failover {
    redis_wait: u32,
    requests: u64,
    errors: u64,
    longest_gap_ms: u64,
}

/// A qkv server this report started.
struct Qkv {
    port: u16,
    pid: u32,
}

fn start_qkv(
    work: &Path,
    certs: &Path,
    processes: &mut Processes,
    name: &str,
    args: &[&str],
) -> anyhow::Result<Qkv> {
    let port = run::free_port()?;
    let log = std::fs::File::create(work.join(format!("{name}.log")))?;
    let child = pinned(SERVER_CORE, QKV)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--certs"])
        .arg(certs)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    processes.0.push(child);
    run::wait_for_tcp(port, name)?;
    if args.contains(&"redis") {
        wait_for_log(&work.join(format!("{name}.log")), "connected to Redis")?;
    }
    Ok(Qkv { port, pid })
}

fn wait_for_log(path: &Path, words: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(path).unwrap_or_default().contains(words) {
        if Instant::now() > deadline {
            bail!("{} never said {words:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `qkv bench` against each of `servers` at once, one process each; returns their reports and the
/// servers' CPU seconds over the run.
fn bench(
    servers: &[&Qkv],
    certs: &Path,
    workload: &str,
    scenario: Scenario,
    rate: Option<u64>,
    duration: Duration,
) -> anyhow::Result<(Vec<qkv::bench::JsonReport>, f64)> {
    let cpu = |servers: &[&Qkv]| -> anyhow::Result<f64> {
        servers.iter().map(|s| proc::cpu_seconds(s.pid)).sum::<anyhow::Result<f64>>()
    };
    let before = cpu(servers)?;
    let runs: Vec<Child> = servers
        .iter()
        .map(|server| {
            let mut command =
                run::qkv_bench_command(server.port, certs, "quic", workload, scenario, duration);
            if let Some(rate) = rate {
                command.args(["--rate", &rate.to_string()]);
            }
            started(command)
        })
        .collect::<Result<_, _>>()?;
    let reports = runs.into_iter().map(report_of).collect::<anyhow::Result<Vec<_>>>()?;
    Ok((reports, cpu(servers)? - before))
}

/// A `qkv bench --json` started, its report to be read by [`report_of`].
fn started(mut command: Command) -> std::io::Result<Child> {
    command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()
}

fn report_of(run: Child) -> anyhow::Result<qkv::bench::JsonReport> {
    let output = run.wait_with_output()?;
    if !output.status.success() {
        bail!("qkv bench failed");
    }
    serde_json::from_slice(&output.stdout).context("qkv bench --json output")
}

/// redis-benchmark straight to `port` (the master of the key's slot), HSET or HGET of 64-byte values
/// among 10,000 fields of one hash; a calibration run sizes the request count to the duration.
fn redis_benchmark(
    port: u16,
    workload: &str,
    clients: u32,
    duration: Duration,
) -> anyhow::Result<(f64, f64, f64)> {
    let run = |requests: u64| -> anyhow::Result<(f64, f64, f64)> {
        let value = "w".repeat(VALUE_SIZE);
        let mut command = pinned(CLIENT_CORE, "redis-benchmark");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", &clients.to_string(), "-P", "1"])
            .args(["-n", &requests.to_string(), "-r", &KEYS.to_string(), "--csv"]);
        match workload {
            "hset" => command.args(["HSET", "{bench}", "key:__rand_int__", &value]),
            _ => command.args(["HGET", "{bench}", "key:__rand_int__"]),
        };
        let output = command.output()?;
        if !output.status.success() {
            bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        run::parse_redis_csv(&output.stdout)
    };
    let calibration = run(u64::from(clients) * 500)?;
    run(((calibration.0 * duration.as_secs_f64()) as u64).max(u64::from(clients) * 20))
}

/// What one measurement runs: a workload at 1 connection × `inflight`, closed loop or at `rate`.
#[derive(Debug, Clone, Copy)]
struct Point {
    workload: &'static str,
    inflight: u32,
    rate: Option<u64>,
}

impl Point {
    fn label(&self) -> String {
        let rate = self.rate.map_or(String::new(), |rate| format!(" at {rate}/s"));
        format!("{} 1 × {}{rate}", self.workload, self.inflight)
    }
}

/// What every measurement shares: the servers, Redis, and how long each runs.
struct Runs<'a> {
    memory: &'a Qkv,
    gateways: [&'a Qkv; 2],
    redis_port: u16,
    certs: &'a Path,
    duration: Duration,
    /// Measurements in the whole report, for progress lines.
    total: usize,
}

impl Runs<'_> {
    fn run(
        &self,
        measurements: &mut Vec<Measurement>,
        target: Target,
        point: Point,
        rep: usize,
    ) -> anyhow::Result<()> {
        eprintln!(
            "[{}/{}] {}, {} (run {rep})",
            measurements.len() + 1,
            self.total,
            point.label(),
            target.label()
        );
        let measurement =
            self.measure(target, point).with_context(|| format!("{}, {}", point.label(), target.label()))?;
        measurements.push(measurement);
        Ok(())
    }

    fn measure(&self, target: Target, point: Point) -> anyhow::Result<Measurement> {
        let Runs { memory, gateways, redis_port, certs, duration, .. } = *self;
        let Point { workload, inflight, rate } = point;
        let scenario = Scenario::new(1, inflight);
        let servers: Vec<&Qkv> = match target {
            Target::Memory => vec![memory],
            Target::Gateway => vec![gateways[0]],
            Target::TwoGateways => gateways.to_vec(),
            Target::Redis => {
                let (throughput, p50_us, p99_us) = redis_benchmark(redis_port, workload, inflight, duration)?;
                return Ok(Measurement {
                    target,
                    workload: workload.into(),
                    inflight,
                    rate: None,
                    throughput,
                    p50_us,
                    p99_us,
                    cpu_us_per_request: None,
                    errors: 0,
                });
            }
        };
        let (reports, cpu) = bench(&servers, certs, workload, scenario, rate, duration)?;
        let throughput: f64 = reports.iter().map(|r| r.throughput_rps).sum();
        // The CPU was measured over the warm-up second too: requests at the measured rate over it.
        let requests = throughput * (duration.as_secs_f64() + 1.0);
        let mean =
            |f: fn(&qkv::bench::JsonReport) -> f64| reports.iter().map(f).sum::<f64>() / reports.len() as f64;
        Ok(Measurement {
            target,
            workload: workload.into(),
            inflight,
            rate,
            throughput,
            p50_us: mean(|r| r.latency_us.p50 as f64),
            p99_us: mean(|r| r.latency_us.p99 as f64),
            cpu_us_per_request: Some(cpu * 1e6 / requests),
            errors: reports.iter().map(|r| r.errors).sum(),
        })
    }
}

/// The same load for the gateway and the in-memory server: half of what one gateway answered at
/// 1 × 64 (`measured`), in thousands: a rate both sustain (a request the open loop cannot send on
/// time counts as an error), though the gateway's tail already grows there (CLUSTER.md's p99).
fn same_load(measured: f64) -> u64 {
    ((measured / 2.0 / 1000.0).floor() as u64).max(1) * 1000
}

/// Kills the master of the bench table's slot 5 s into a 20 s HSET run through a gateway, and brings
/// it back (as the new master's replica) once the replica has taken over.
fn failover(work: &Path, certs: &Path, redis_wait: u32) -> anyhow::Result<Failover> {
    let mut cluster = RedisCluster::start(3, 1).context("a 3 + 3 Redis Cluster")?;
    let mut processes = Processes::default();
    let seeds = cluster.urls().join(",");
    let wait = redis_wait.to_string();
    let gateway = start_qkv(
        work,
        certs,
        &mut processes,
        &format!("failover-{redis_wait}"),
        &["--store", "redis", "--redis", &seeds, "--redis-wait", &wait],
    )?;
    let slot = cluster.slot_of("qkv:{tbench}:values").context("the bench table's slot")?;
    let master = cluster.master_of_slot(slot).context("its master")?;
    let load = Scenario::new(1, 16);
    let run =
        started(run::qkv_bench_command(gateway.port, certs, "quic", "hset", load, Duration::from_secs(20)))?;
    std::thread::sleep(Duration::from_secs(6));
    cluster.nodes[master].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.master_of_slot(slot).is_none_or(|m| m == master) {
        if Instant::now() > deadline {
            bail!("no replica took over");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.nodes[master].restart()?;
    let report = report_of(run)?;
    Ok(Failover {
        redis_wait,
        requests: report.requests,
        errors: report.errors,
        longest_gap_ms: report.longest_gap_ms,
    })
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    run::require_two_cores()?;
    run::ensure_redis()?;
    run::build_qkv()?;
    let (reps, duration) = match args.quick {
        true => (1, Duration::from_secs(2)),
        false => (args.reps, Duration::from_secs(args.seconds)),
    };
    let work = std::env::temp_dir().join(format!("qkv-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let certs = run::make_certs(&work)?;
    let cluster = RedisCluster::start(3, 0).context("a 3-master Redis Cluster")?;
    let seeds = cluster.urls().join(",");
    let mut processes = Processes::default();
    let gateway_args = ["--store", "redis", "--redis", &seeds];
    let memory = start_qkv(&work, &certs, &mut processes, "memory", &[])?;
    let a = start_qkv(&work, &certs, &mut processes, "gateway-a", &gateway_args)?;
    let b = start_qkv(&work, &certs, &mut processes, "gateway-b", &gateway_args)?;
    let redis_port = cluster
        .slot_of("{bench}")
        .and_then(|slot| cluster.master_of_slot(slot))
        .map(|i| cluster.nodes[i].port)
        .context("the master of redis-benchmark's key")?;

    let saturated: [(Point, &[Target]); 3] = [
        (Point { workload: "hset", inflight: 64, rate: None }, &Target::ALL),
        (Point { workload: "hget", inflight: 64, rate: None }, &Target::ALL),
        (
            Point { workload: "hget", inflight: 1, rate: None },
            &[Target::Memory, Target::Gateway, Target::Redis],
        ),
    ];
    let same_load_targets = [Target::Memory, Target::Gateway];
    let runs = Runs {
        memory: &memory,
        gateways: [&a, &b],
        redis_port,
        certs: &certs,
        duration,
        total: reps * (saturated.iter().map(|p| p.1.len()).sum::<usize>() + 2 * same_load_targets.len()),
    };
    let mut measurements: Vec<Measurement> = Vec::new();
    // Set from the first repetition's gateway at 1 × 64, then kept: every repetition measures the
    // same load.
    let mut rates: [Option<u64>; 2] = [None; 2];
    for rep in 1..=reps {
        for (point, targets) in saturated {
            for &target in targets {
                runs.run(&mut measurements, target, point, rep)?;
            }
        }
        for (workload, rate) in ["hset", "hget"].into_iter().zip(&mut rates) {
            let gateway = measurements
                .iter()
                .find(|m| {
                    m.target == Target::Gateway
                        && m.workload == workload
                        && m.inflight == 64
                        && m.rate.is_none()
                })
                .map(|m| m.throughput)
                .context("the gateway's closed-loop run, which sets the same load")?;
            let point =
                Point { workload, inflight: 64, rate: Some(*rate.get_or_insert_with(|| same_load(gateway))) };
            for target in same_load_targets {
                runs.run(&mut measurements, target, point, rep)?;
            }
        }
    }
    drop(processes);
    drop(cluster);
    let mut failovers = Vec::new();
    for redis_wait in [0, 1] {
        eprintln!("failover with --redis-wait {redis_wait}");
        failovers.push(failover(&work, &certs, redis_wait)?);
    }
    let _ = std::fs::remove_dir_all(&work);
    write(&measurements, &failovers, reps, duration, args.quick, &args.out)
}

fn write(
    measurements: &[Measurement],
    failovers: &[Failover],
    reps: usize,
    duration: Duration,
    quick: bool,
    out: &Path,
) -> anyhow::Result<()> {
    // Closed loops (as fast as answers come) and, apart, open loops at the same load.
    let med_where =
        |target: Target, workload: &str, inflight: u32, rated: bool, value: fn(&Measurement) -> f64| {
            report::median_where(
                measurements,
                |m| {
                    m.target == target
                        && m.workload == workload
                        && m.inflight == inflight
                        && m.rate.is_some() == rated
                },
                value,
            )
        };
    let med = |target, workload, inflight, value| med_where(target, workload, inflight, false, value);
    let at_same_load = |target, workload, value| med_where(target, workload, 64, true, value);
    let rate_of = |workload: &str| {
        measurements.iter().find(|m| m.workload == workload && m.rate.is_some()).and_then(|m| m.rate)
    };
    let cpu = |m: &Measurement| m.cpu_us_per_request.unwrap_or(f64::NAN);
    let mut md = report::header(
        "qkv gateways over Redis Cluster",
        "cluster-report",
        quick,
        "[docs/DEPLOY.md](../DEPLOY.md) and [DESIGN.md](../DESIGN.md#redis-cluster-stateless-gateways---store-redis)",
    );
    writeln!(
        md,
        "## Method\n\nLoopback, 2 cores. A 3-master Redis Cluster (Debian's redis-server, no replicas, no \
         persistence, not pinned); qkv servers (the in-memory server, and two gateways `--store redis`) \
         pinned to core 0; load generators pinned to core 1. `qkv bench` over QUIC, 1 connection, 64-byte \
         values among 10,000 keys of one table (so one Redis shard); through two gateways, one bench \
         process each, at once (throughput summed; both gateways share core 0, so two gateways show \
         what a second one adds when the first is not the only thing on its core, not scaling out). Redis: `redis-benchmark -c N` HSET/HGET of 10,000 \
         fields of one hash, straight to the master of its slot (`--cluster` does not route custom \
         commands). CPU: the qkv servers' user + system time over the run and its warm-up second, per \
         request (Redis's own CPU is not counted). The CPU target is checked at the same load, as the issue \
         asks: an open loop (`qkv bench --rate`, 1 × 64) at half of what one gateway answered at 1 × 64 in \
         the first repetition, sent to the gateway and to the in-memory server alike; at full speed each \
         server runs at its own rate, and the faster one spreads its fixed costs (wake-ups, system calls) \
         over more requests per wake-up, so that ratio is shown beside it, not taken as the target. \
         Each point: every target in turn, {} s after 1 s of warm-up; repeated {reps} time(s); medians.\n",
        duration.as_secs()
    )?;

    let p50 = |target| med(target, "hget", 1, |m| m.p50_us);
    let latency_added = p50(Target::Gateway).zip(p50(Target::Redis)).map(|(gateway, redis)| gateway - redis);
    let ratio =
        |value: &dyn Fn(Target) -> Option<f64>| Some(value(Target::Gateway)? / value(Target::Memory)?);
    writeln!(md, "## Targets\n\n| target | measured | met |\n|---|---|---|")?;
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    if let Some(added) = latency_added {
        writeln!(
            md,
            "| latency a gateway adds at low load, p50, over Redis directly ≤ 150 µs | {added:.0} µs | {} |",
            met(added <= 150.0)
        )?;
    }
    for workload in ["hget", "hset"] {
        let same_load = ratio(&|target| at_same_load(target, workload, cpu));
        let full_speed = ratio(&|target| med(target, workload, 64, cpu));
        if let (Some(same_load), Some(rate)) = (same_load, rate_of(workload)) {
            let full_speed = full_speed
                .map_or(String::new(), |r| format!(" (at full speed, each at its own rate: {r:.2} ×)"));
            writeln!(
                md,
                "| gateway CPU per {} ≤ 1.5 × the in-memory server's, at the same load ({rate}/s) | {same_load:.2} ×{full_speed} | {} |",
                workload.to_uppercase(),
                met(same_load <= 1.5)
            )?;
        }
    }
    writeln!(md)?;

    writeln!(md, "## Throughput, 1 connection × 64 in flight (requests/s)\n")?;
    writeln!(
        md,
        "| target | HGET | HSET | qkv CPU per HGET (µs) | qkv CPU per HSET (µs) |\n|---|---:|---:|---:|---:|"
    )?;
    let show = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or("–".to_owned(), |v| format!("{v:.0}"));
    let show1 = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or("–".to_owned(), |v| format!("{v:.1}"));
    for target in Target::ALL {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            target.label(),
            show(med(target, "hget", 64, |m| m.throughput)),
            show(med(target, "hset", 64, |m| m.throughput)),
            show1(med(target, "hget", 64, cpu)),
            show1(med(target, "hset", 64, cpu)),
        )?;
    }
    writeln!(md, "\n![throughput](cluster-throughput.svg)\n")?;
    writeln!(
        md,
        "## CPU per request at the same load: 1 connection × 64, open loop\n\n| target | HGET: CPU (µs) | \
         p50 / p99 (µs) | HSET: CPU (µs) | p50 / p99 (µs) |\n|---|---:|---:|---:|---:|"
    )?;
    for target in [Target::Memory, Target::Gateway] {
        let cells = ["hget", "hset"].map(|workload| {
            let latency = |value| show(at_same_load(target, workload, value));
            format!(
                "{} | {} / {}",
                show1(at_same_load(target, workload, cpu)),
                latency(|m| m.p50_us),
                latency(|m| m.p99_us)
            )
        });
        writeln!(md, "| {} | {} | {} |", target.label(), cells[0], cells[1])?;
    }
    let rates = ["hget", "hset"].map(|w| rate_of(w).map_or("–".to_owned(), |r| r.to_string()));
    writeln!(
        md,
        "\nRates: HGET {}/s, HSET {}/s. Where a gateway's CPU goes: \
         [DESIGN.md](../DESIGN.md#redis-cluster-stateless-gateways---store-redis), \"Cost\".\n",
        rates[0], rates[1]
    )?;
    writeln!(
        md,
        "## Latency at low load: HGET, 1 connection × 1 (µs)\n\n| target | p50 | p99 |\n|---|---:|---:|"
    )?;
    for target in [Target::Memory, Target::Gateway, Target::Redis] {
        writeln!(
            md,
            "| {} | {} | {} |",
            target.label(),
            show(med(target, "hget", 1, |m| m.p50_us)),
            show(med(target, "hget", 1, |m| m.p99_us))
        )?;
    }
    writeln!(
        md,
        "\n## Failover\n\nA 3 + 3 cluster; HSET 1 × 16 for 20 s through one gateway; 6 s in, the master of \
         the bench table's slot is killed (SIGKILL); once its replica has taken over, it is started again \
         and rejoins as the new master's replica. One run each.\n\n| `--redis-wait` | requests answered \
         | failed requests | longest time without an answer (ms) |\n|---:|---:|---:|---:|"
    )?;
    for f in failovers {
        writeln!(md, "| {} | {} | {} | {} |", f.redis_wait, f.requests, f.errors, f.longest_gap_ms)?;
    }
    writeln!(
        md,
        "\nWith `--redis-wait 1` writes are answered 504 while the new master has no replica (until the \
         old master is back as one): the gap is longer, and no acknowledged write can be lost with the \
         master (tests/gateways.rs counts them).\n"
    )?;
    let errors: u64 = measurements.iter().map(|m| m.errors).sum();
    writeln!(
        md,
        "Errors counted by qkv bench over the throughput and latency runs: {errors}. Raw: [cluster-results.json](cluster-results.json)."
    )?;
    std::fs::create_dir_all(out)?;
    let throughput: Vec<[f64; 2]> = Target::ALL
        .iter()
        .map(|&t| ["hget", "hset"].map(|w| med(t, w, 64, |m| m.throughput).unwrap_or(0.0)))
        .collect();
    plot_throughput(&out.join("cluster-throughput.svg"), &throughput)?;
    std::fs::write(
        out.join("cluster-results.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "measurements": measurements, "failovers": failovers }),
        )?,
    )?;
    std::fs::write(out.join("CLUSTER.md"), md)?;
    eprintln!("report written to {}", out.join("CLUSTER.md").display());
    Ok(())
}

/// Bars: HGET and HSET throughput at 1 × 64 for each target.
fn plot_throughput(path: &Path, values: &[[f64; 2]]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = plot::canvas(path)?;
    let high = values.iter().flatten().copied().fold(1.0, f64::max) * 1.2;
    let n = Target::ALL.len() as f64;
    let mut chart = plot::builder(&root, "Throughput at 1 connection × 64 in flight (requests/s)")
        .build_cartesian_2d(0.0..n, 0.0..high)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(Target::ALL.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                Target::ALL.get(i).map_or(String::new(), |t| t.label().to_owned())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&plot::short_number)
        .draw()?;
    for (w, (label, color)) in [("HGET", BLUE), ("HSET", RED)].into_iter().enumerate() {
        let bars = values.iter().enumerate().map(|(i, v)| {
            let left = i as f64 + 0.15 + 0.35 * w as f64;
            Rectangle::new([(left, 0.0), (left + 0.3, v[w])], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    plot::finish(&mut chart, &root, SeriesLabelPosition::UpperRight)
}
