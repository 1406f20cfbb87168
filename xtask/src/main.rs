//! Project automation: `cargo xtask test` (the tests, with what they need installed first), `cargo
//! xtask bench-report` (the side-by-side benchmark report of docs/bench/),
//! `cargo xtask durable-report` (the disk store: writes against Redis, reads against the memory store,
//! restart and space, see `durable`), `cargo xtask
//! pubsub-report` (pub/sub fan-out, see `pubsub`), `cargo xtask lab` (QUIC against TLS over emulated
//! mobile links, see `lab`), `cargo xtask storm-report` (reconnect storms through an emulated link,
//! see `storm`) and `cargo xtask scale-report` (10,000 connections and subscribers, see `scale`) and `cargo xtask
//! cluster-report` (gateways over Redis Cluster, see `cluster`) and `cargo xtask browser-report` (the JS
//! client in headless Chromium beside the native clients, see `browser`).
//!
//! `bench-report`:
//! On this machine kind (2 vCPUs), every server runs pinned to core 0 and every load generator to core
//! 1: qkv over QUIC, TLS and plaintext TCP; the transport floor (bare quinn and bare TLS echo, same
//! message size, no KV work, `qkv floor`); and Redis 7 in plaintext and TLS (Debian's redis-server and
//! redis-benchmark, installed if missing). Each point of the sweep (connections × requests in flight)
//! runs every target in turn, the whole sweep is repeated, and the report gives medians and the ratios
//! of the performance targets, all from the same run. Everything started is stopped at the end, and on
//! Ctrl-C (which reaches the whole process group).

mod browser;
mod cluster;
mod durable;
mod lab;
mod metrics_cost;
mod plot;
mod proc;
mod pubsub;
mod report;
mod run;
mod scale;
mod storm;
mod web;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use run::{Processes, Scenario, Target};

#[derive(Parser)]
#[command(name = "xtask")]
enum Task {
    /// Install what the tests need (Debian's redis-server, redis-tools, prometheus and curl; Python's
    /// grpcio packages and schemathesis), if missing, then run `cargo test --workspace` with any further arguments: the
    /// README's test command.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the side-by-side benchmark and write the report, tables and plots.
    BenchReport(ReportArgs),
    /// Run the network lab (root only): QUIC against TLS over emulated mobile links, and its report.
    Lab(lab::LabArgs),
    /// The disk store: writes against Redis with appendfsync always, reads against the memory store,
    /// restart time and space on disk, and its report.
    DurableReport(ReportArgs),
    /// Pub/sub fan-out to 100 subscribers over QUIC, TLS and TCP, and its report.
    PubsubReport(SweepArgs),
    /// Reconnect storms (root only): connection setups per second and their latency with 1 to 1024
    /// clients connecting at once through an emulated 25 ms link, QUIC 0-RTT, QUIC full and TLS.
    StormReport(storm::StormArgs),
    /// qkv gateways over a real Redis Cluster beside the in-memory server and Redis: throughput, latency,
    /// CPU per request, and a failover with and without --redis-wait.
    ClusterReport(SweepArgs),
    /// 10,000 connections and 10,000 subscribers over QUIC and TLS: latency, errors, the server's
    /// memory and CPU, the time to open them all.
    ScaleReport(scale::ScaleArgs),
    /// What recording metrics costs: HGET over QUIC against two servers, with and without --admin.
    MetricsReport(SweepArgs),
    /// The web doors (gRPC, REST) beside QUIC and TLS: HGET throughput, latency and server CPU per
    /// request at 1 × 64 and 64 × 1.
    WebReport(SweepArgs),
    /// The JS client in headless Chromium (WebTransport, WebSocket) beside the native QUIC and TLS
    /// clients, 1 session × 64 HGETs: on loopback, and through the lab's target profile (root).
    BrowserReport(browser::BrowserArgs),
}

/// How long and how often a benchmark report measures, and where it goes.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// A short run (a few points, one repetition, 2 s each) to check that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of the whole sweep; the report gives medians.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Seconds measured per run, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where the report goes.
    #[arg(long, default_value = "docs/bench")]
    pub out: PathBuf,
}

#[derive(clap::Args)]
struct ReportArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Write the report from the measurements of an earlier run (its results.json) instead of measuring.
    #[arg(long, value_name = "RESULTS_JSON")]
    from: Option<PathBuf>,
}

impl Task {
    /// Whether the task measures: the reports. This tool then runs optimised (the durable report loads
    /// its servers with a qkv client of its own, for one); the tests and the lab, which measures in
    /// other processes, run in the build `cargo xtask` makes, a debug build that shares most of its
    /// compilation with the tests' (a release build of the tool alone took CI five minutes).
    fn measures(&self) -> bool {
        !matches!(self, Task::Test { .. } | Task::Lab(_))
    }
}

fn main() -> anyhow::Result<()> {
    let task = Task::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root).context("cannot enter the workspace root")?;
    if cfg!(debug_assertions) && task.measures() {
        // Ctrl-C reaches the whole process group, the release build's run included, which stops
        // what it started.
        let status = std::process::Command::new(env!("CARGO"))
            .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
            .args(std::env::args_os().skip(1))
            .status()
            .context("cannot run the release build of xtask")?;
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        std::process::exit(status.code().or(signal.map(|signal| 128 + signal)).unwrap_or(1));
    }
    match task {
        Task::Test { args } => test(&args),
        Task::BenchReport(args) => bench_report(args),
        Task::Lab(args) => lab::run(args),
        Task::DurableReport(args) => durable::run(args),
        Task::PubsubReport(args) => pubsub::run(args),
        Task::StormReport(args) => storm::run(args),
        Task::ScaleReport(args) => scale::run(args),
        Task::ClusterReport(args) => cluster::run(args),
        Task::MetricsReport(args) => metrics_cost::run(args),
        Task::WebReport(args) => web::run(args),
        Task::BrowserReport(args) => browser::run(args),
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    run::ensure_redis()?;
    run::ensure_prometheus()?;
    run::ensure_curl()?;
    run::ensure_python_tools()?;
    run::ensure_chromium()?;
    run::ensure_node_packages("tests/browser")?;
    run::ensure_node_packages("clients/js")?;
    let status = std::process::Command::new(env!("CARGO"))
        .args(["test", "--workspace"])
        .args(args)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("the tests failed");
    }
    Ok(())
}

fn bench_report(args: ReportArgs) -> anyhow::Result<()> {
    let from = args.from;
    let args = args.sweep;
    if let Some(from) = &from {
        let measurements: Vec<run::Measurement> = serde_json::from_slice(&std::fs::read(from)?)?;
        let mut sweep: Vec<Scenario> = Vec::new();
        for m in &measurements {
            if !sweep.contains(&m.scenario) {
                sweep.push(m.scenario);
            }
        }
        let reps = measurements.len() / (sweep.len() * Target::ALL.len()).max(1);
        let runs = report::Runs {
            measurements,
            sweep,
            reps,
            duration: Duration::from_secs(args.seconds),
            quick: args.quick,
        };
        report::write(&runs, &args.out)?;
        eprintln!("report rewritten in {} from {}", args.out.display(), from.display());
        return Ok(());
    }
    run::require_two_cores()?;
    run::ensure_redis()?;
    run::build_qkv()?;

    let (sweep, reps, duration) = if args.quick {
        (vec![Scenario::new(1, 1), Scenario::new(1, 64), Scenario::new(64, 1)], 1, Duration::from_secs(2))
    } else {
        (Scenario::sweep(), args.reps, Duration::from_secs(args.seconds))
    };
    let work = std::env::temp_dir().join(format!("qkv-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut processes = Processes::default();
    let servers = run::start_servers(&work, &mut processes)?;

    let total = reps * sweep.len() * Target::ALL.len();
    let mut measurements = Vec::new();
    for rep in 1..=reps {
        for scenario in &sweep {
            for target in Target::ALL {
                eprintln!(
                    "[{}/{total}] {} {}x{} (run {rep})",
                    measurements.len() + 1,
                    target.label(),
                    scenario.connections,
                    scenario.inflight
                );
                let measurement = run::measure(&servers, target, *scenario, duration).with_context(|| {
                    format!("{} at {}x{}", target.label(), scenario.connections, scenario.inflight)
                })?;
                measurements.push(measurement);
            }
        }
    }
    drop(processes);
    let _ = std::fs::remove_dir_all(&work);

    std::fs::create_dir_all(&args.out)?;
    let runs = report::Runs { measurements, sweep, reps, duration, quick: args.quick };
    report::write(&runs, &args.out)?;
    eprintln!("report written to {}", args.out.join("REPORT.md").display());
    Ok(())
}
