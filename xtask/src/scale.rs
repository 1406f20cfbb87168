//! `cargo xtask scale-report`: qkv at the scale of a mobile fleet, on loopback, server pinned to core 0
//! and `qkv bench` to core 1. docs/bench/SCALE.md gives, for QUIC and for TLS over TCP:
//!
//! - 10,000 connections held open, each sending 1 request per second (one open-loop schedule spread
//!   over them): errors, latency, the time to open them all, the server's CPU per request, its peak
//!   RSS, and its memory per connection (RSS once every connection is open, before any request, less
//!   RSS before);
//! - the command of issue 14 (`qkv bench --connections 1000 --inflight 1 --rate 1000 --duration 5s`),
//!   timed from start to exit;
//! - 10,000 subscribers to one topic and one publisher: delivery latency (publish to receipt), and the
//!   latency of Hgets another connection sends meanwhile (what a fan-out costs everyone else);
//! - the connection memory budget, as the server logs it at start.
//!
//! Every run starts a server of its own, so that its peak RSS is that run's. The sweep is repeated and
//! the report gives medians. Reconnect storms have a report of their own (`cargo xtask storm-report`,
//! root only: it emulates a link).

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::SweepArgs;
use crate::proc::{Counters, cpu_seconds, memory_bytes, watch_log};
use crate::report;
use crate::run::{self, CLIENT_CORE, Processes, QKV, SERVER_CORE, pinned};

const TRANSPORTS: [&str; 2] = ["quic", "tls"];
/// Connections of the open-loop runs, and subscribers of the fan-out.
const CONNECTIONS: u32 = 10_000;
const QUICK_CONNECTIONS: u32 = 1_000;
/// The servers' connection limit: the default (10,000) and room for the bench's other connections (the
/// one that loads the keys, the fan-out's publisher and probe).
const MAX_CONNECTIONS: u32 = CONNECTIONS + 100;
/// Targets of issue 14.
const P99_GOAL_MS: f64 = 5.0;
const PEAK_RSS_GOAL: u64 = 1 << 30;
const COMMAND_GOAL_S: f64 = 40.0;
/// Hgets per second the probe sends during a fan-out.
const PROBE_RATE: u32 = 200;
/// Publishes per second of the paced fan-out: with 10,000 subscribers, 10,000 deliveries per second, the
/// request rate of the open-loop runs.
const PUBLISH_RATE: f64 = 1.0;
/// How long opening 10,000 connections (or subscribing 10,000 subscribers) may take before the run is
/// abandoned.
const OPEN_LIMIT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Connections of the open-loop runs and subscribers of the fan-out (default 10,000; 1,000 with
    /// --quick).
    #[arg(long)]
    connections: Option<u32>,
    /// Write the report from the measurements of an earlier run (its scale-results.json).
    #[arg(long, value_name = "RESULTS_JSON")]
    from: Option<PathBuf>,
}

/// What scale-results.json holds.
#[derive(Debug, Serialize, Deserialize)]
struct ScaleResults {
    quick: bool,
    reps: usize,
    seconds: u64,
    connections: u32,
    /// How long the whole report took, building included.
    minutes: f64,
    /// The server's log line on its connection memory budget, as it printed it.
    budget: String,
    many: Vec<Many>,
    fanout: Vec<Fanout>,
    command: Vec<CommandRun>,
}

/// One open-loop run over many connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Many {
    transport: String,
    rep: usize,
    connections: u32,
    requests: u64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    open_s: f64,
    server: Server,
}

/// One fan-out run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fanout {
    transport: String,
    rep: usize,
    /// Publishes per second of a paced run; `None` for one Publish in flight, as fast as it goes.
    rate: Option<f64>,
    subscribers: u32,
    subscribe_s: f64,
    deliveries_per_s: f64,
    publishes_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    hget_requests: u64,
    hget_p50_us: f64,
    hget_p99_us: f64,
    hget_max_us: f64,
    missed: u64,
    errors: u64,
    server: Server,
}

/// One run of issue 14's 1000-connection command.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CommandRun {
    transport: String,
    rep: usize,
    total_s: f64,
    open_s: f64,
    errors: u64,
}

/// What the server of a run used.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Server {
    /// RSS after start, and once every connection was open (every subscriber subscribed).
    rss_before: u64,
    rss_open: u64,
    /// Peak RSS over the whole run (VmHWM).
    peak_rss: u64,
    /// CPU time per request (fan-out: per delivery) over the measured period, in microseconds.
    cpu_us: f64,
    /// UDP datagrams dropped on receipt on this host during the measured period.
    udp_receive_errors: u64,
    /// Cores the load generator (`qkv bench`) kept busy during the measured period: near 1, it, not the
    /// server, may set the latency.
    #[serde(default)]
    client_cores: f64,
}

impl Server {
    fn per_connection(&self, connections: u32) -> f64 {
        self.rss_open.saturating_sub(self.rss_before) as f64 / f64::from(connections.max(1))
    }
}

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    let sweep = args.sweep;
    if let Some(from) = &args.from {
        let results: ScaleResults = serde_json::from_slice(&std::fs::read(from)?)
            .with_context(|| format!("cannot read {}", from.display()))?;
        write(&results, &sweep.out)?;
        eprintln!("report rewritten in {} from {}", sweep.out.display(), from.display());
        return Ok(());
    }
    run::require_two_cores()?;
    let started = Instant::now();
    run::build_qkv()?;
    let (reps, duration) = match sweep.quick {
        true => (1, Duration::from_secs(2)),
        false => (sweep.reps.max(1), Duration::from_secs(sweep.seconds)),
    };
    let connections = args.connections.unwrap_or(if sweep.quick { QUICK_CONNECTIONS } else { CONNECTIONS });
    let work = std::env::temp_dir().join(format!("qkv-scale-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let certs = run::make_certs(&work)?;
    let mut results = ScaleResults {
        quick: sweep.quick,
        reps,
        seconds: duration.as_secs(),
        connections,
        minutes: 0.0,
        budget: String::new(),
        many: Vec::new(),
        fanout: Vec::new(),
        command: Vec::new(),
    };
    let total = reps * TRANSPORTS.len() * 4;
    let mut done = 0;
    let mut step = |what: String| {
        done += 1;
        eprintln!("[{done}/{total}] {what}");
    };
    for rep in 1..=reps {
        for transport in TRANSPORTS {
            step(format!("{transport}: {connections} connections at 1 request/s each (run {rep})"));
            let (many, budget) = many(&work, &certs, transport, connections, duration, rep)
                .with_context(|| format!("{transport} with {connections} connections"))?;
            results.many.push(many);
            results.budget = budget;
            for rate in [Some(PUBLISH_RATE), None] {
                let pace = rate.map_or("flat out".to_owned(), |rate| format!("{rate} publish/s"));
                step(format!("{transport}: {connections} subscribers to one topic, {pace} (run {rep})"));
                let fanout = fanout(&work, &certs, transport, connections, rate, duration, rep)
                    .with_context(|| format!("{transport} with {connections} subscribers, {pace}"))?;
                results.fanout.push(fanout);
            }
            step(format!("{transport}: the 1000-connection command (run {rep})"));
            let command = command(&work, &certs, transport, rep)
                .with_context(|| format!("{transport}: the command"))?;
            results.command.push(command);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    results.minutes = started.elapsed().as_secs_f64() / 60.0;
    write(&results, &sweep.out)?;
    eprintln!("scale report written to {}", sweep.out.join("SCALE.md").display());
    Ok(())
}

/// A server of the run's own on a free port, pinned to the server core; its log goes to `work`.
fn start_server(work: &Path, certs: &Path, name: &str) -> anyhow::Result<(Processes, u16, u32)> {
    let port = run::free_port()?;
    let child = pinned(SERVER_CORE, QKV)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--certs"])
        .arg(certs)
        .args(["--max-connections", &MAX_CONNECTIONS.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join(format!("{name}.log")))?)
        .spawn()?;
    let pid = child.id();
    let processes = Processes(vec![child]);
    run::wait_for_tcp(port, name)?;
    Ok((processes, port, pid))
}

fn many(
    work: &Path,
    certs: &Path,
    transport: &str,
    connections: u32,
    duration: Duration,
    rep: usize,
) -> anyhow::Result<(Many, String)> {
    let name = format!("many-{transport}-{rep}");
    let (processes, port, pid) = start_server(work, certs, &name)?;
    let n = connections.to_string();
    let args = ["--workload", "hget", "--connections", &n, "--inflight", "1", "--rate", &n];
    let run = bench((port, pid), certs, transport, &args, duration, Opened::Connections, false)?;
    drop(processes);
    let budget = std::fs::read_to_string(work.join(format!("{name}.log")))?
        .lines()
        .find(|line| line.contains("connection memory budget"))
        .map(|line| line.split_once("qkv::server: ").map_or(line, |(_, rest)| rest).to_owned())
        .unwrap_or_default();
    let json = &run.json;
    let many = Many {
        transport: transport.to_owned(),
        rep,
        connections,
        requests: json.requests,
        errors: json.errors,
        p50_us: json.latency_us.p50 as f64,
        p99_us: json.latency_us.p99 as f64,
        p999_us: json.latency_us.p999 as f64,
        max_us: json.latency_us.max as f64,
        open_s: json.open_s.unwrap_or(f64::NAN),
        server: run.server,
    };
    Ok((many, budget))
}

fn fanout(
    work: &Path,
    certs: &Path,
    transport: &str,
    subscribers: u32,
    rate: Option<f64>,
    duration: Duration,
    rep: usize,
) -> anyhow::Result<Fanout> {
    let (processes, port, pid) = start_server(work, certs, &format!("fanout-{transport}-{rep}"))?;
    let n = subscribers.to_string();
    let mut args = vec!["--workload", "fanout", "--subscribers", &n, "--connections", "1", "--inflight", "1"];
    let rate_arg = rate.map(|rate| rate.to_string());
    if let Some(rate) = &rate_arg {
        args.extend(["--rate", rate]);
    }
    let run = bench((port, pid), certs, transport, &args, duration, Opened::Subscribers, true)?;
    drop(processes);
    let json = &run.json;
    let fanout = json.fanout.context("qkv bench reported no fan-out figures")?;
    let probe = run.probe.context("no probe")?;
    Ok(Fanout {
        transport: transport.to_owned(),
        rep,
        rate,
        subscribers,
        subscribe_s: json.open_s.unwrap_or(f64::NAN),
        deliveries_per_s: json.throughput_rps,
        publishes_per_s: fanout.published as f64 / json.duration_s,
        p50_us: json.latency_us.p50 as f64,
        p99_us: json.latency_us.p99 as f64,
        hget_requests: probe.requests,
        hget_p50_us: probe.latency_us.p50 as f64,
        hget_p99_us: probe.latency_us.p99 as f64,
        hget_max_us: probe.latency_us.max as f64,
        missed: fanout.missed,
        errors: json.errors,
        server: run.server,
    })
}

/// Issue 14's command, as written there, timed from start to exit.
fn command(work: &Path, certs: &Path, transport: &str, rep: usize) -> anyhow::Result<CommandRun> {
    let (processes, port, _) = start_server(work, certs, &format!("command-{transport}-{rep}"))?;
    let started = Instant::now();
    let output = pinned(CLIENT_CORE, QKV)
        .args(["bench", "--transport", transport, "--connections", "1000", "--inflight", "1"])
        .args(["--rate", "1000", "--duration", "5s", "--json"])
        .args(["--addr", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(certs.join("ca.pem"))
        .stderr(Stdio::inherit())
        .output()?;
    let total_s = started.elapsed().as_secs_f64();
    drop(processes);
    if !output.status.success() {
        bail!("qkv bench failed: {}", String::from_utf8_lossy(&output.stdout));
    }
    let json: qkv::bench::JsonReport = serde_json::from_slice(&output.stdout)?;
    Ok(CommandRun {
        transport: transport.to_owned(),
        rep,
        total_s,
        open_s: json.open_s.unwrap_or(f64::NAN),
        errors: json.errors,
    })
}

struct BenchRun {
    json: qkv::bench::JsonReport,
    server: Server,
    /// The probe's report, if one ran.
    probe: Option<qkv::bench::JsonReport>,
}

/// Runs `qkv bench --json` with `args` against the server (its port and pid), reading the server's RSS
/// when the bench logs that its connections are open (`opened` says how it puts it), and the server's
/// CPU, the bench's and the host's UDP drops when the measured period begins and ends. With `probe`, a second `qkv bench` (a process of
/// its own, as another device would be, on the load generator's core) sends [`PROBE_RATE`] Hgets per
/// second on one connection from when the first has opened its connections until it stops measuring.
fn bench(
    (port, pid): (u16, u32),
    certs: &Path,
    transport: &str,
    args: &[&str],
    duration: Duration,
    opened: Opened,
    probe: bool,
) -> anyhow::Result<BenchRun> {
    let rss_before = memory_bytes(pid, "VmRSS")?;
    let mut child = pinned(CLIENT_CORE, QKV)
        .args(["bench", "--json", "--transport", transport])
        .args(args)
        .args(["--value-size", &run::VALUE_SIZE.to_string()])
        // The fan-out has no keys (the bench refuses flags a workload would ignore).
        .args(if args.contains(&"fanout") {
            vec![]
        } else {
            vec!["--keys".to_owned(), run::KEYS.to_string()]
        })
        .args(["--duration", &format!("{}s", duration.as_secs()), "--warmup", "1s"])
        .args(["--addr", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(certs.join("ca.pem"))
        .env("RUST_LOG", "warn,qkv::bench=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let killed = |mut child: Child, log: std::thread::JoinHandle<String>, what: &str| {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::anyhow!("{what}: {}", log.join().unwrap_or_default())
    };
    let stderr = child.stderr.take().context("the bench's stderr")?;
    let (event, log) = watch_log(stderr, opened.markers());
    if event.recv_timeout(OPEN_LIMIT) != Ok(OPENED) {
        return Err(killed(child, log, "the bench never finished opening its connections"));
    }
    let rss_open = memory_bytes(pid, "VmRSS")?;
    // Measures a little less long than the main run, as it starts a little later (it loads its key).
    let probe = match probe {
        false => None,
        true => Some(
            pinned(CLIENT_CORE, QKV)
                .args(["bench", "--json", "--transport", transport, "--workload", "hget", "--keys", "1"])
                .args(["--connections", "1", "--inflight", "16", "--rate", &PROBE_RATE.to_string()])
                .args(["--duration", &format!("{}ms", duration.as_millis().saturating_sub(1000).max(1000))])
                .args(["--warmup", "1s", "--addr", &format!("127.0.0.1:{port}"), "--ca"])
                .arg(certs.join("ca.pem"))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?,
        ),
    };
    let mut probe = Processes(probe.into_iter().collect());
    if event.recv_timeout(Duration::from_secs(60)) != Ok(MEASURING) {
        return Err(killed(child, log, "the bench never started measuring"));
    }
    let client = child.id();
    let snapshot = || -> anyhow::Result<(f64, u64, f64)> {
        Ok((cpu_seconds(pid)?, Counters::of(pid)?.get("Udp.InErrors"), cpu_seconds(client)?))
    };
    let before = snapshot()?;
    std::thread::sleep(duration);
    let after = snapshot()?;
    let mut stdout = Vec::new();
    child.stdout.take().context("the bench's stdout")?.read_to_end(&mut stdout)?;
    let status = child.wait()?;
    let peak_rss = memory_bytes(pid, "VmHWM")?;
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("qkv bench failed: {}\n{log}", String::from_utf8_lossy(&stdout));
    }
    let json: qkv::bench::JsonReport = serde_json::from_slice(&stdout).context("qkv bench --json output")?;
    let probe = match std::mem::take(&mut probe.0).pop() {
        None => None,
        Some(probe) => {
            let output = probe.wait_with_output()?;
            if !output.status.success() {
                bail!("the probe failed: {}", String::from_utf8_lossy(&output.stdout));
            }
            Some(serde_json::from_slice(&output.stdout).context("the probe's --json output")?)
        }
    };
    let requests = json.requests.max(1) as f64;
    let server = Server {
        rss_before,
        rss_open,
        peak_rss,
        cpu_us: (after.0 - before.0) * 1e6 / requests,
        udp_receive_errors: after.1.saturating_sub(before.1),
        client_cores: (after.2 - before.2) / duration.as_secs_f64(),
    };
    Ok(BenchRun { json, server, probe })
}

/// What the bench logs once its connections are open (the index of [`Opened::markers`] is
/// [`OPENED`]), and once its measured period begins ([`MEASURING`]).
#[derive(Clone, Copy)]
enum Opened {
    Connections,
    Subscribers,
}

const OPENED: usize = 0;
const MEASURING: usize = 1;

impl Opened {
    fn markers(self) -> &'static [&'static str] {
        match self {
            Opened::Connections => &["connections open", "measuring"],
            Opened::Subscribers => &["subscribed", "measuring"],
        }
    }
}

fn write(results: &ScaleResults, out: &Path) -> anyhow::Result<()> {
    let n = results.connections;
    let mut md = report::header("Scale", "scale-report", results.quick, "[README.md](README.md#scale)");
    writeln!(
        md,
        "## Method\n\nLoopback; every run starts a server of its own (defaults, but `--max-connections \
         {MAX_CONNECTIONS}` for the bench's extra connections), pinned to core 0; `qkv bench` pinned to core \
         1. {} s measured after 1 s of warm-up; the sweep repeated {} time(s), medians; {:.0} minutes in all. \
         The server's and the load generator's CPU and the host's UDP receive errors are read when the \
         measured period begins and ends; \
         memory per connection is the server's RSS once every connection is open (every subscriber \
         subscribed), less its RSS before the bench started, ÷ connections (10,000 keys of 64 bytes, \
         about 2 MB, are loaded in between); peak RSS is the server's VmHWM over the whole run. Raw: \
         [scale-results.json](scale-results.json).\n",
        results.seconds, results.reps, results.minutes
    )?;

    let many = |transport: &str, value: fn(&Many) -> f64| {
        report::median_where(&results.many, |m| m.transport == transport, value)
    };
    writeln!(
        md,
        "## {n} connections at 1 request/s each\n\n`qkv bench --workload hget --connections {n} --inflight 1 \
         --rate {n}`: one open-loop schedule of {n} requests/s dealt out to the connections in turn. Goals \
         (issue 14): 0 errors, p99 ≤ {P99_GOAL_MS} ms, server peak RSS ≤ 1 GiB.\n"
    )?;
    let rows: [Row<Many>; 11] = [
        ("errors (sum over runs)", |m| m.errors as f64, Format::Sum),
        ("latency p50 (ms)", |m| m.p50_us / 1000.0, Format::Ms),
        ("latency p99 (ms)", |m| m.p99_us / 1000.0, Format::Ms),
        ("latency p99.9 (ms)", |m| m.p999_us / 1000.0, Format::Ms),
        ("latency max (ms)", |m| m.max_us / 1000.0, Format::Ms),
        ("time to open every connection (s)", |m| m.open_s, Format::Seconds),
        ("server CPU per request (µs)", |m| m.server.cpu_us, Format::Whole),
        ("server peak RSS (MiB)", |m| m.server.peak_rss as f64 / MIB, Format::Whole),
        (
            "server memory per connection (KiB)",
            |m| m.server.per_connection(m.connections) / 1024.0,
            Format::Tenth,
        ),
        ("UDP datagrams dropped on receipt", |m| m.server.udp_receive_errors as f64, Format::Whole),
        ("load generator's cores busy", |m| m.server.client_cores, Format::Hundredth),
    ];
    table(&mut md, &rows, |transport, value, format| match format {
        Format::Sum => Some(results.many.iter().filter(|m| m.transport == transport).map(value).sum()),
        _ => many(transport, value),
    })?;
    let mut verdicts = Vec::new();
    for transport in TRANSPORTS {
        let errors: u64 = results.many.iter().filter(|m| m.transport == transport).map(|m| m.errors).sum();
        let p99 = many(transport, |m| m.p99_us / 1000.0).unwrap_or(f64::NAN);
        let peak = many(transport, |m| m.server.peak_rss as f64).unwrap_or(f64::NAN);
        verdicts.push(format!(
            "{}: {errors} errors {}; p99 {p99:.2} ms {}; peak RSS {:.0} MiB {}",
            label(transport),
            met(errors == 0),
            met(p99 <= P99_GOAL_MS),
            peak / MIB,
            met(peak <= PEAK_RSS_GOAL as f64),
        ));
    }
    let command = |transport: &str| {
        report::median_where(&results.command, |c| c.transport == transport, |c| c.total_s)
            .unwrap_or(f64::NAN)
    };
    for transport in TRANSPORTS {
        verdicts.push(format!(
            "{}: the 1000-connection command took {:.1} s {}",
            label(transport),
            command(transport),
            met(command(transport) < COMMAND_GOAL_S)
        ));
    }
    writeln!(md, "Against the goals:\n")?;
    for verdict in &verdicts {
        writeln!(md, "- {verdict}")?;
    }

    writeln!(
        md,
        "\n## Opening 1,000 connections\n\nIssue 14's command, `qkv bench --transport T --connections 1000 \
         --inflight 1 --rate 1000 --duration 5s`, timed from start to exit (goal: under {COMMAND_GOAL_S} s; \
         before this work, QUIC took about 145 s to open its connections).\n"
    )?;
    writeln!(md, "| | {} |", TRANSPORTS.map(label).join(" | "))?;
    writeln!(md, "|---|{}", "---:|".repeat(TRANSPORTS.len()))?;
    let command_rows: [(&str, Figure<CommandRun>); 3] = [
        ("total (s)", |c| c.total_s),
        ("of which opening (s)", |c| c.open_s),
        ("errors", |c| c.errors as f64),
    ];
    for (name, value) in command_rows {
        write!(md, "| {name} |")?;
        for transport in TRANSPORTS {
            let v = report::median_where(&results.command, |c| c.transport == transport, value);
            write!(md, " {} |", v.map_or("–".into(), |v| format!("{v:.1}")))?;
        }
        writeln!(md)?;
    }

    writeln!(
        md,
        "\n## {n} subscribers to one topic\n\n`qkv bench --workload fanout --subscribers {n} --connections 1 \
         --inflight 1`, each message delivered to all {n}, paced (`--rate {PUBLISH_RATE}`: {PUBLISH_RATE} \
         publish/s, as many deliveries per second as the open-loop runs make requests) and flat out (the \
         next Publish sent when the last is answered). A delivery's latency runs from its Publish being \
         sent to the subscriber reading it. Meanwhile a probe, another `qkv bench` process on the load \
         generator's core, sends {} Hgets/s (open loop) on a connection of its own: what a publish to {n} \
         subscribers makes other clients' requests wait.\n",
        PROBE_RATE
    )?;
    let fan_rows: [Row<Fanout>; 14] = [
        ("time to subscribe every subscriber (s)", |f| f.subscribe_s, Format::Seconds),
        ("publishes per second", |f| f.publishes_per_s, Format::Tenth),
        ("deliveries per second", |f| f.deliveries_per_s, Format::Whole),
        ("delivery latency p50 (ms)", |f| f.p50_us / 1000.0, Format::Ms),
        ("delivery latency p99 (ms)", |f| f.p99_us / 1000.0, Format::Ms),
        ("concurrent Hget p50 (ms)", |f| f.hget_p50_us / 1000.0, Format::Ms),
        ("concurrent Hget p99 (ms)", |f| f.hget_p99_us / 1000.0, Format::Ms),
        ("concurrent Hget max (ms)", |f| f.hget_max_us / 1000.0, Format::Ms),
        ("messages reported missed (sum)", |f| f.missed as f64, Format::Sum),
        ("errors (sum)", |f| f.errors as f64, Format::Sum),
        ("server CPU per delivery (µs)", |f| f.server.cpu_us, Format::Tenth),
        ("server peak RSS (MiB)", |f| f.server.peak_rss as f64 / MIB, Format::Whole),
        (
            "server memory per subscriber (KiB)",
            |f| f.server.per_connection(f.subscribers) / 1024.0,
            Format::Tenth,
        ),
        ("load generator's cores busy", |f| f.server.client_cores, Format::Hundredth),
    ];
    for (title, rate) in
        [(format!("Paced, {PUBLISH_RATE} publish/s"), Some(PUBLISH_RATE)), ("Flat out".into(), None)]
    {
        writeln!(md, "### {title}\n")?;
        let runs: Vec<&Fanout> = results.fanout.iter().filter(|f| f.rate == rate).collect();
        table(&mut md, &fan_rows, |transport, value, format| {
            let of = runs.iter().copied().filter(|f| f.transport == transport);
            match format {
                Format::Sum => Some(of.map(value).sum()),
                _ => report::median_where(&of.collect::<Vec<_>>(), |_| true, |f| value(f)),
            }
        })?;
    }

    writeln!(
        md,
        "## Memory budget\n\nWhat connections can make the server hold is bounded by one budget for all of \
         them (docs/DESIGN.md, \"Memory: one budget for every connection\"). The server logs it at start; \
         on this machine, with defaults:\n\n```\n{}\n```\n\nA QUIC connection is admitted with a fixed share \
         of the budget (its two flow-control windows and its bookkeeping) whatever it holds; the table \
         above shows what an idle one really takes. The difference is the room a connection may fill.\n",
        results.budget
    )?;
    writeln!(
        md,
        "## Reconnect storms\n\nConnection setups per second and their latency with 1 to 1024 clients \
         connecting at once through an emulated 25 ms link: [STORM.md](STORM.md).\n"
    )?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("scale-results.json"), serde_json::to_string_pretty(results)?)?;
    std::fs::write(out.join("SCALE.md"), md)?;
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// A figure of one run.
type Figure<M> = fn(&M) -> f64;
/// A row of a table: its name, the figure, how it is shown.
type Row<M> = (&'static str, Figure<M>, Format);

#[derive(Clone, Copy)]
enum Format {
    /// Summed over runs, not a median.
    Sum,
    Ms,
    Seconds,
    Whole,
    Tenth,
    Hundredth,
}

/// A table of one row per figure and one column per transport; `value` gives a cell.
fn table<M>(
    md: &mut String,
    rows: &[Row<M>],
    value: impl Fn(&str, Figure<M>, Format) -> Option<f64>,
) -> anyhow::Result<()> {
    writeln!(md, "| | {} |", TRANSPORTS.map(label).join(" | "))?;
    writeln!(md, "|---|{}", "---:|".repeat(TRANSPORTS.len()))?;
    for &(name, f, format) in rows {
        write!(md, "| {name} |")?;
        for transport in TRANSPORTS {
            let cell = match (value(transport, f, format), format) {
                (None, _) => "–".to_owned(),
                (Some(v), Format::Ms | Format::Hundredth) => format!("{v:.2}"),
                (Some(v), Format::Seconds | Format::Tenth) => format!("{v:.1}"),
                (Some(v), Format::Sum | Format::Whole) => format!("{v:.0}"),
            };
            write!(md, " {cell} |")?;
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    Ok(())
}

fn label(transport: &str) -> &'static str {
    match transport {
        "quic" => "QUIC",
        _ => "TLS over TCP",
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "(met)" } else { "(**missed**)" }
}
