//! `cargo xtask storm-report` (root only): reconnect storms. N clients connect at once, again and again,
//! through an emulated 25 ms each way link without loss, over QUIC with 0-RTT, QUIC with full
//! handshakes and TLS over TCP; docs/bench/STORM.md gives connection setups per second and the setup
//! latency's p50 and p99 at N = 1, 16, 64, 256 and 1024, judges the goals of issue 14 (item 3), and
//! shows where the time goes: CPU per setup in the server, the load generator and the link, packets
//! per setup, and every drop counter on the way.
//!
//! It runs in network namespaces of its own (`qkvstorm-*`, see `lab::Namespaces`), with the lab's
//! link emulator, so it can run beside `cargo xtask lab`. Each point runs the three variants in turn;
//! the sweep is repeated and the report gives medians. CPU and counters are read at the start and the
//! end of each run's measured period (the bench logs when it begins), so warm-up and draining are not
//! counted.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::SweepArgs;
use crate::lab::{self, Link, Namespaces, Profile, Session};
use crate::plot;
use crate::proc::{Counters, cpu_seconds, watch_log};
use crate::report;

/// Clients connecting at once.
const CONCURRENCY: [u32; 5] = [1, 16, 64, 256, 1024];
const QUICK_CONCURRENCY: [u32; 2] = [16, 256];
/// Long enough for 1024 clients' first (full) handshakes: the 0-RTT variant measures resumptions.
const WARMUP: Duration = Duration::from_secs(2);

#[derive(clap::Args)]
pub struct StormArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Write the report from the measurements of an earlier run (its storm-results.json, or
    /// storm-no-mtu-discovery-results.json).
    #[arg(long, value_name = "RESULTS_JSON")]
    from: Option<PathBuf>,
    /// Measure this qkv binary (an older build, to compare) instead of the workspace's release build.
    #[arg(long, value_name = "PATH", default_value = lab::QKV)]
    qkv: PathBuf,
    /// Run the server and the clients with `--no-mtu-discovery` (docs/DESIGN.md, "reconnect storms");
    /// the report says so.
    #[arg(long, conflicts_with = "from")]
    no_mtu_discovery: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Variant {
    /// QUIC, every client resuming with its own session tickets: the request goes out with the
    /// handshake (1 round trip).
    QuicZeroRtt,
    /// QUIC without tickets: a full handshake, then the request (2 round trips).
    QuicFull,
    /// TLS 1.3 over TCP without tickets: TCP, TLS, then the request (3 round trips).
    Tls,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::QuicZeroRtt, Variant::QuicFull, Variant::Tls];

    fn label(self) -> &'static str {
        match self {
            Variant::QuicZeroRtt => "QUIC 0-RTT",
            Variant::QuicFull => "QUIC full",
            Variant::Tls => "TLS",
        }
    }

    fn transport(self) -> &'static str {
        match self {
            Variant::QuicZeroRtt | Variant::QuicFull => "quic",
            Variant::Tls => "tls",
        }
    }

    fn extra(self) -> &'static [&'static str] {
        match self {
            Variant::QuicZeroRtt => &["--zero-rtt"],
            Variant::QuicFull | Variant::Tls => &[],
        }
    }
}

/// One bench run; everything per setup is over its measured period.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    variant: Variant,
    concurrency: u32,
    rep: usize,
    setups_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Setups started in the measured period (answered or failed).
    setups: u64,
    errors: u64,
    /// Measured connections the server accepted with 0-RTT.
    zero_rtt_accepted: u64,
    connections: u64,
    /// QUIC packets the measured connections of the clients sent, and took for lost (on this path,
    /// which loses nothing, a retransmission timer that fired before the answer came).
    #[serde(default)]
    client_packets_sent: u64,
    #[serde(default)]
    client_packets_lost: u64,
    /// CPU time per setup, in milliseconds.
    server_cpu_ms: f64,
    client_cpu_ms: f64,
    link_cpu_ms: f64,
    /// Datagrams (QUIC) or segments (TCP) the server received and sent, per setup.
    server_packets_in: f64,
    server_packets_out: f64,
    /// UDP datagrams dropped on receipt (full socket buffer, bad checksum) at the server and client.
    udp_receive_errors: u64,
    /// TCP connections the server's listen queue had no room for.
    listen_overflows: u64,
    /// TCP segments sent again, by the server and the client.
    tcp_retransmits: u64,
}

impl Measurement {
    /// CPU cores the server, the clients and the link kept busy during the measured period.
    fn cores_busy(&self) -> f64 {
        (self.server_cpu_ms + self.client_cpu_ms + self.link_cpu_ms) * self.setups_per_s / 1000.0
    }
}

pub fn run(args: StormArgs) -> anyhow::Result<()> {
    let sweep = args.sweep;
    if let Some(from) = &args.from {
        let results: StormResults = serde_json::from_slice(&std::fs::read(from)?)
            .with_context(|| format!("cannot read {}", from.display()))?;
        write(&results, &sweep.out)?;
        eprintln!("report rewritten in {} from {}", sweep.out.display(), from.display());
        return Ok(());
    }
    let (points, reps, duration) = match sweep.quick {
        true => (QUICK_CONCURRENCY.to_vec(), 1, Duration::from_secs(2)),
        false => (CONCURRENCY.to_vec(), sweep.reps.max(1), Duration::from_secs(sweep.seconds)),
    };
    let started = std::time::Instant::now();
    lab::prepare(lab::Build::Release)?;
    let work = lab::scratch("qkv-storm")?;
    let flags: &[&str] = if args.no_mtu_discovery { &["--no-mtu-discovery"] } else { &[] };
    let measured = measure_all(&args.qkv, flags, &points, reps, duration, &work);
    lab::cleanup();
    let (measurements, rtt_ms, link) = measured?;
    let results = StormResults {
        quick: sweep.quick,
        no_mtu_discovery: args.no_mtu_discovery,
        reps,
        seconds: duration.as_secs(),
        minutes: started.elapsed().as_secs_f64() / 60.0,
        points,
        rtt_ms,
        link,
        measurements,
    };
    write(&results, &sweep.out)?;
    let markdown = Files::of(results.no_mtu_discovery).markdown;
    eprintln!("storm report written to {}", sweep.out.join(markdown).display());
    for line in verdicts(&results).iter().map(Verdict::line) {
        eprintln!("{line}");
    }
    Ok(())
}

/// What storm-results.json holds: the runs and how they were made.
#[derive(Debug, Serialize, Deserialize)]
struct StormResults {
    quick: bool,
    /// Server and clients ran with `--no-mtu-discovery` (absent in reports before the flag).
    #[serde(default)]
    no_mtu_discovery: bool,
    reps: usize,
    seconds: u64,
    /// How long the whole report took, building included.
    minutes: f64,
    points: Vec<u32>,
    /// The round trip measured before the runs (sequential QUIC pings).
    rtt_ms: f64,
    /// What the link daemons say they did over all runs.
    link: Vec<String>,
    measurements: Vec<Measurement>,
}

type Measured = (Vec<Measurement>, f64, Vec<String>);

/// `flags` go to the server and to every run of the bench.
fn measure_all(
    qkv: &Path,
    flags: &[&str],
    points: &[u32],
    reps: usize,
    duration: Duration,
    work: &Path,
) -> anyhow::Result<Measured> {
    let session = Session::start(Namespaces::STORM, qkv, work, duration, flags)?;
    let link = Link::apply(Namespaces::STORM, &Profile::STORM, work, &lab::Build::Release.linkem())?;
    let rtt_ms = lab::calibrate(&session.bench, &Profile::STORM)?;
    let total = reps * points.len() * Variant::ALL.len();
    let mut measurements = Vec::with_capacity(total);
    for rep in 1..=reps {
        for &concurrency in points {
            for variant in Variant::ALL {
                eprintln!(
                    "[{}/{total}] {} with {concurrency} concurrent connects (run {rep})",
                    measurements.len() + 1,
                    variant.label()
                );
                let measurement = measure(&session, &link, variant, concurrency, rep, flags)
                    .with_context(|| format!("{} at {concurrency}", variant.label()))?;
                measurements.push(measurement);
            }
        }
    }
    let link_report = link.remove()?;
    session.stop()?;
    Ok((measurements, rtt_ms, link_report))
}

/// One `qkv bench --workload connect` run, with the processes' CPU and the namespaces' counters read
/// when its measured period begins and ends.
fn measure(
    session: &Session,
    link: &Link,
    variant: Variant,
    concurrency: u32,
    rep: usize,
    flags: &[&str],
) -> anyhow::Result<Measurement> {
    let concurrency_arg = concurrency.to_string();
    let mut extra = vec!["--workload", "connect", "--connections", &concurrency_arg, "--inflight", "1"];
    extra.extend_from_slice(variant.extra());
    // QUIC's flags (the bench refuses them over TLS, which would ignore them).
    if variant.transport() == "quic" {
        extra.extend_from_slice(flags);
    }
    let mut command = session.bench.command(variant.transport(), WARMUP, &extra);
    command.env("RUST_LOG", "qkv::bench=info");
    let mut child = lab::spawn(command)?;
    let client_pid = child.id();
    let stderr = child.stderr.take().context("the bench's stderr")?;
    let (started, log) = watch_log(stderr, &["measuring"]);
    let pids = Pids { server: session.server_pid(), client: client_pid, link: link.daemon_pids() };
    if started.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = lab::wait_output(child);
        bail!("the bench never started measuring: {}", log.join().unwrap_or_default());
    }
    let before = Snapshot::take(&pids)?;
    std::thread::sleep(session.bench.duration);
    let after = Snapshot::take(&pids)?;
    let mut output = lab::wait_output(child)?;
    output.stderr = log.join().unwrap_or_default().into_bytes();
    let json = lab::Bench::parse(output, variant.label())?;

    let setups = json.requests + json.errors;
    let per_setup = |delta: f64| delta / setups.max(1) as f64;
    let cpu_ms = |f: fn(&Snapshot) -> f64| per_setup(1000.0 * (f(&after) - f(&before)));
    let (packets_in, packets_out) = match variant.transport() {
        "quic" => ("Udp.InDatagrams", "Udp.OutDatagrams"),
        _ => ("Tcp.InSegs", "Tcp.OutSegs"),
    };
    let server = |counter: &str| after.server.get(counter) - before.server.get(counter);
    let client = |counter: &str| after.client.get(counter) - before.client.get(counter);
    Ok(Measurement {
        variant,
        concurrency,
        rep,
        setups_per_s: json.throughput_rps,
        p50_ms: json.latency_us.p50 as f64 / 1000.0,
        p99_ms: json.latency_us.p99 as f64 / 1000.0,
        setups,
        errors: json.errors,
        zero_rtt_accepted: json.client_stats.zero_rtt_accepted,
        connections: json.client_stats.connections,
        client_packets_sent: json.client_stats.packets_sent,
        client_packets_lost: json.client_stats.packets_lost,
        server_cpu_ms: cpu_ms(|s| s.server_cpu),
        client_cpu_ms: cpu_ms(|s| s.client_cpu),
        link_cpu_ms: cpu_ms(|s| s.link_cpu),
        server_packets_in: per_setup(server(packets_in) as f64),
        server_packets_out: per_setup(server(packets_out) as f64),
        // InErrors counts every datagram dropped on receipt, a full receive buffer (RcvbufErrors) included.
        udp_receive_errors: server("Udp.InErrors") + client("Udp.InErrors"),
        listen_overflows: server("TcpExt.ListenOverflows"),
        tcp_retransmits: server("Tcp.RetransSegs") + client("Tcp.RetransSegs"),
    })
}

struct Pids {
    server: u32,
    client: u32,
    link: Vec<u32>,
}

/// CPU time used so far by the server, the bench and the link daemons, and the network counters of
/// the server's and the client's namespaces.
struct Snapshot {
    server_cpu: f64,
    client_cpu: f64,
    link_cpu: f64,
    server: Counters,
    client: Counters,
}

impl Snapshot {
    fn take(pids: &Pids) -> anyhow::Result<Snapshot> {
        let mut link_cpu = 0.0;
        for pid in &pids.link {
            link_cpu += cpu_seconds(*pid)?;
        }
        Ok(Snapshot {
            server_cpu: cpu_seconds(pids.server)?,
            client_cpu: cpu_seconds(pids.client)?,
            link_cpu,
            server: Counters::of(pids.server)?,
            client: Counters::of(pids.client)?,
        })
    }
}

/// Medians over the repetitions of one variant at one concurrency.
#[derive(Debug, Clone, Copy)]
struct Median {
    setups_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn median_of(
    results: &StormResults,
    variant: Variant,
    concurrency: u32,
    value: fn(&Measurement) -> f64,
) -> f64 {
    report::median_where(
        &results.measurements,
        |m| m.variant == variant && m.concurrency == concurrency,
        value,
    )
    .unwrap_or(f64::NAN)
}

fn medians(results: &StormResults, variant: Variant, concurrency: u32) -> Median {
    Median {
        setups_per_s: median_of(results, variant, concurrency, |m| m.setups_per_s),
        p50_ms: median_of(results, variant, concurrency, |m| m.p50_ms),
        p99_ms: median_of(results, variant, concurrency, |m| m.p99_ms),
    }
}

/// One goal at one concurrency: `measured` (a ratio of medians) against `goal`.
struct Verdict {
    concurrency: u32,
    name: &'static str,
    measured: f64,
    goal: f64,
    at_least: bool,
}

impl Verdict {
    fn met(&self) -> bool {
        if self.at_least { self.measured >= self.goal } else { self.measured <= self.goal }
    }

    /// The ratio to two decimals, rounded towards failing the goal: a ratio just short of it is not
    /// shown as the goal itself.
    fn shown(&self) -> String {
        let hundredths = self.measured * 100.0;
        let rounded = if self.at_least { hundredths.floor() } else { hundredths.ceil() };
        format!("{:.2}", rounded / 100.0)
    }

    fn line(&self) -> String {
        format!(
            "{} concurrent: {} = {} (goal {} {}): {}",
            self.concurrency,
            self.name,
            self.shown(),
            if self.at_least { "≥" } else { "≤" },
            self.goal,
            if self.met() { "met" } else { "NOT met" }
        )
    }
}

/// The goals of issue 14, item 3, at every concurrency measured.
fn verdicts(results: &StormResults) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for &concurrency in &results.points {
        let zero_rtt = medians(results, Variant::QuicZeroRtt, concurrency);
        let full = medians(results, Variant::QuicFull, concurrency);
        let tls = medians(results, Variant::Tls, concurrency);
        verdicts.push(Verdict {
            concurrency,
            name: "QUIC 0-RTT setups/s ÷ TLS setups/s",
            measured: zero_rtt.setups_per_s / tls.setups_per_s,
            goal: 1.0,
            at_least: true,
        });
        verdicts.push(Verdict {
            concurrency,
            name: "QUIC full setups/s ÷ TLS setups/s",
            measured: full.setups_per_s / tls.setups_per_s,
            goal: 0.8,
            at_least: true,
        });
        verdicts.push(Verdict {
            concurrency,
            name: "QUIC 0-RTT p50 ÷ TLS p50",
            measured: zero_rtt.p50_ms / tls.p50_ms,
            goal: 0.5,
            at_least: false,
        });
    }
    verdicts
}

/// The report's files: STORM.md, storm.svg and storm-results.json, or with `--no-mtu-discovery`
/// STORM-NO-MTU-DISCOVERY.md and the like, so both can sit in docs/bench.
struct Files {
    markdown: &'static str,
    plot: &'static str,
    results: &'static str,
}

impl Files {
    fn of(no_mtu_discovery: bool) -> Files {
        match no_mtu_discovery {
            false => Files { markdown: "STORM.md", plot: "storm.svg", results: "storm-results.json" },
            true => Files {
                markdown: "STORM-NO-MTU-DISCOVERY.md",
                plot: "storm-no-mtu-discovery.svg",
                results: "storm-no-mtu-discovery-results.json",
            },
        }
    }
}

fn write(results: &StormResults, out: &Path) -> anyhow::Result<()> {
    let files = Files::of(results.no_mtu_discovery);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(files.results), serde_json::to_string_pretty(results)?)?;
    plot_storm(results, &out.join(files.plot))?;
    let (title, command) = match results.no_mtu_discovery {
        false => ("Reconnect storms: connection setup under a burst of clients", "storm-report"),
        true => (
            "Reconnect storms, path MTU discovery off: connection setup under a burst of clients",
            "storm-report --no-mtu-discovery",
        ),
    };
    let mut md =
        report::header(title, command, results.quick, "[the method below](#method) and issue 14, item 3");
    writeln!(md, "## Method\n\n{}", method(results))?;

    writeln!(md, "## Goals (ratios of medians from this run)\n")?;
    writeln!(
        md,
        "| concurrent | QUIC 0-RTT ÷ TLS setups/s (≥ 1) | QUIC full ÷ TLS setups/s (≥ 0.8) | QUIC 0-RTT ÷ TLS p50 (≤ 0.5) |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|")?;
    let verdicts = verdicts(results);
    for chunk in verdicts.chunks(3) {
        write!(md, "| {} |", chunk[0].concurrency)?;
        for verdict in chunk {
            let met = if verdict.met() { "met" } else { "**not met**" };
            write!(md, " {}: {met} |", verdict.shown())?;
        }
        writeln!(md)?;
    }

    let misses = misses(results, &verdicts);
    if !misses.is_empty() {
        writeln!(md, "\nWhere a goal is not met, from the same runs (see the last table):\n")?;
        for line in misses {
            writeln!(md, "- {line}")?;
        }
    }

    writeln!(md, "\n## Setups per second, p50 / p99 of the setup latency\n")?;
    writeln!(md, "| concurrent | {} |", Variant::ALL.map(Variant::label).join(" | "))?;
    writeln!(md, "|---:|{}", "---|".repeat(Variant::ALL.len()))?;
    for &concurrency in &results.points {
        write!(md, "| {concurrency} |")?;
        for variant in Variant::ALL {
            let m = medians(results, variant, concurrency);
            write!(md, " {:.0}/s, {:.0} / {:.0} ms |", m.setups_per_s, m.p50_ms, m.p99_ms)?;
        }
        writeln!(md)?;
    }
    writeln!(md, "\n![setups per second and p99 against concurrency]({})\n", files.plot)?;

    writeln!(md, "## Where the time goes (medians per setup, over the measured periods)\n")?;
    writeln!(
        md,
        "CPU in milliseconds per setup: the server process, the load generator (`qkv bench`, which is the \
         clients' side of every handshake) and the two link daemons (whose share includes the kernel's \
         forwarding and, for TCP, much of its protocol work, which runs where the packets are released). \
         Cores busy: the three together, times setups per second; this machine has {} cores, shared \
         with anything else that runs on it, so a point near that is limited by CPU, not by round trips. \
         Packets: UDP datagrams (QUIC) or TCP segments (TLS) the server received / sent per setup. Drops \
         and retransmissions: totals over all runs of the point.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    writeln!(
        md,
        "| concurrent | variant | CPU server | CPU clients | CPU link | cores busy | server packets in / out | QUIC packets lost (clients) | 0-RTT accepted | UDP receive errors | listen overflows | TCP retransmits | errors |"
    )?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for &concurrency in &results.points {
        for variant in Variant::ALL {
            let median = |value: fn(&Measurement) -> f64| median_of(results, variant, concurrency, value);
            let runs: Vec<&Measurement> = results
                .measurements
                .iter()
                .filter(|m| m.variant == variant && m.concurrency == concurrency)
                .collect();
            let sum = |value: fn(&Measurement) -> u64| runs.iter().map(|m| value(m)).sum::<u64>();
            let lost = match variant {
                Variant::Tls => "–".to_owned(),
                _ => {
                    let (lost, sent) = (sum(|m| m.client_packets_lost), sum(|m| m.client_packets_sent));
                    format!(
                        "{:.2}% of {:.1}/setup",
                        100.0 * lost as f64 / sent.max(1) as f64,
                        median(|m| m.client_packets_sent as f64 / m.connections.max(1) as f64)
                    )
                }
            };
            let accepted = match variant {
                Variant::QuicZeroRtt => {
                    format!(
                        "{:.0}%",
                        100.0 * median(|m| m.zero_rtt_accepted as f64 / m.connections.max(1) as f64)
                    )
                }
                _ => "–".to_owned(),
            };
            writeln!(
                md,
                "| {concurrency} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} | {lost} | {accepted} | {} | {} | {} | {} |",
                variant.label(),
                median(|m| m.server_cpu_ms),
                median(|m| m.client_cpu_ms),
                median(|m| m.link_cpu_ms),
                median(Measurement::cores_busy),
                median(|m| m.server_packets_in),
                median(|m| m.server_packets_out),
                sum(|m| m.udp_receive_errors),
                sum(|m| m.listen_overflows),
                sum(|m| m.tcp_retransmits),
                sum(|m| m.errors),
            )?;
        }
    }
    writeln!(
        md,
        "\nThe link as measured: round trip {:.1} ms before the runs (QUIC pings, one at a time).",
        results.rtt_ms
    )?;
    for line in &results.link {
        writeln!(md, "- linkem {line}")?;
    }
    writeln!(
        md,
        "\nThe whole report took {:.0} minutes. Raw measurements: [{}]({}).",
        results.minutes, files.results, files.results
    )?;
    std::fs::write(out.join(files.markdown), md)?;
    Ok(())
}

/// For each concurrency where a goal is not met, what limited it: the cores kept busy, the CPU each
/// variant spent per setup, and the drops that cost retransmission timers.
fn misses(results: &StormResults, verdicts: &[Verdict]) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut lines = Vec::new();
    for &concurrency in &results.points {
        if verdicts.iter().filter(|v| v.concurrency == concurrency).all(Verdict::met) {
            continue;
        }
        let median = |variant, value| median_of(results, variant, concurrency, value);
        let busy = |variant| median(variant, Measurement::cores_busy);
        let cpu = |variant| median(variant, |m| m.server_cpu_ms + m.client_cpu_ms + m.link_cpu_ms);
        let mut line = format!(
            "{concurrency} concurrent: cores busy {:.2} (QUIC 0-RTT), {:.2} (QUIC full), {:.2} (TLS) of {cores}; \
             CPU per setup (server + clients + link) {:.2}, {:.2} and {:.2} ms.",
            busy(Variant::QuicZeroRtt),
            busy(Variant::QuicFull),
            busy(Variant::Tls),
            cpu(Variant::QuicZeroRtt),
            cpu(Variant::QuicFull),
            cpu(Variant::Tls),
        );
        if busy(Variant::QuicZeroRtt) >= 0.9 * cores {
            line.push_str(
                " QUIC is limited by CPU here, not by round trips: its setups per second (and, the \
                 clients waiting in line, its latency) follow the CPU each setup costs.",
            );
        }
        let drops: u64 = results
            .measurements
            .iter()
            .filter(|m| m.concurrency == concurrency && m.variant != Variant::Tls)
            .map(|m| m.udp_receive_errors)
            .sum();
        if drops > 0 {
            line.push_str(&format!(
                " {drops} UDP datagrams were dropped on receipt (a socket buffer full while its process \
                 waited for a CPU): each costs its sender a retransmission timer, about 1 s for a first \
                 flight with QUIC's initial RTT of 333 ms."
            ));
        }
        lines.push(line);
    }
    lines
}

fn method(results: &StormResults) -> String {
    let (server, flag) = match results.no_mtu_discovery {
        false => ("`qkv serve` with its defaults", ""),
        true => (
            "`qkv serve --no-mtu-discovery` (path MTU discovery off; its defaults otherwise)",
            " [--no-mtu-discovery over QUIC]",
        ),
    };
    format!(
        "Three network namespaces on this machine (client, router, server; see [LAB-METHOD.md](LAB-METHOD.md) \
         for the topology and the link emulator). The link: {} ms each way, no loss, no bandwidth limit. One \
         {server} in the server namespace; every run is `qkv bench --workload connect \
         --connections N --inflight 1{flag}` in the client namespace: N clients, each opening a new connection, \
         sending one HGET on it and, once answered, doing it again (a closed loop). A setup's latency runs \
         from the connect call to the answer. The clients share one UDP socket (one quinn endpoint); each \
         keeps session tickets of its own.\n\n\
         - **QUIC 0-RTT**: every connection after a client's first resumes and sends its request in 0-RTT \
           early data (1 round trip).\n\
         - **QUIC full**: no tickets; a full handshake, then the request (2 round trips).\n\
         - **TLS**: TLS 1.3 over TCP, no tickets: TCP's handshake, TLS's, then the request (3 round trips).\n\n\
         Each concurrency runs the three variants one after the other; the sweep is repeated {} time(s), and \
         every figure is a median over the repetitions. A run warms up for {} s, then measures for {} s; CPU \
         times and counters are read when the measured period begins and ends. The server, the clients and \
         the link daemons share this machine's cores.\n",
        Profile::STORM.one_way_delay_ms,
        results.reps,
        WARMUP.as_secs(),
        results.seconds,
    )
}

/// A panel of the plot: its title, its y axis, and the median it shows.
type Panel = (&'static str, &'static str, fn(&Median) -> f64);

/// Setups per second (left) and p99 (right) against concurrency, both axes logarithmic.
fn plot_storm(results: &StormResults, path: &Path) -> anyhow::Result<()> {
    let root = plot::canvas(path)?;
    let (left, right) = root.split_horizontally(450);
    let colors = [RED, BLUE, GREEN];
    let max_n = results.points.iter().copied().max().unwrap_or(1) as f64;
    let panels: [Panel; 2] = [
        ("Setups per second", "setups/s", |m| m.setups_per_s),
        ("Setup latency p99 (ms)", "p99 ms", |m| m.p99_ms),
    ];
    for ((title, y_desc, value), area) in panels.into_iter().zip([&left, &right]) {
        let values: Vec<f64> = Variant::ALL
            .iter()
            .flat_map(|v| results.points.iter().map(move |&n| value(&medians(results, *v, n))))
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let (low, high) = values.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        if values.is_empty() {
            continue;
        }
        let mut chart = plot::builder(area, title)
            .build_cartesian_2d((0.8..max_n * 1.25).log_scale(), (low * 0.7..high * 1.4).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent connects")
            .y_desc(y_desc)
            .x_label_formatter(&plot::short_number)
            .y_label_formatter(&plot::short_number)
            .draw()?;
        for (variant, color) in Variant::ALL.into_iter().zip(colors) {
            let points: Vec<(f64, f64)> = results
                .points
                .iter()
                .map(|&n| (n as f64, value(&medians(results, variant, n))))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect();
            plot::dotted_line(&mut chart, points, color, Some(variant.label()))?;
        }
        // `plot::finish` would write the file after the first panel; the legend is drawn here instead.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(variant: Variant, concurrency: u32, setups_per_s: f64, p50_ms: f64) -> Measurement {
        Measurement {
            variant,
            concurrency,
            rep: 1,
            setups_per_s,
            p50_ms,
            p99_ms: p50_ms * 2.0,
            setups: 0,
            errors: 0,
            zero_rtt_accepted: 0,
            connections: 0,
            client_packets_sent: 0,
            client_packets_lost: 0,
            server_cpu_ms: 0.0,
            client_cpu_ms: 0.0,
            link_cpu_ms: 0.0,
            server_packets_in: 0.0,
            server_packets_out: 0.0,
            udp_receive_errors: 0,
            listen_overflows: 0,
            tcp_retransmits: 0,
        }
    }

    #[test]
    fn goals_are_judged_on_ratios_of_medians() {
        let results = StormResults {
            quick: false,
            no_mtu_discovery: false,
            reps: 3,
            seconds: 5,
            minutes: 1.0,
            points: vec![64],
            rtt_ms: 50.0,
            link: Vec::new(),
            measurements: vec![
                // 0-RTT: medians 1000/s, 40 ms (the outlier run does not count).
                measurement(Variant::QuicZeroRtt, 64, 1000.0, 40.0),
                measurement(Variant::QuicZeroRtt, 64, 10.0, 4000.0),
                measurement(Variant::QuicZeroRtt, 64, 1100.0, 35.0),
                measurement(Variant::QuicFull, 64, 700.0, 100.0),
                measurement(Variant::Tls, 64, 900.0, 150.0),
            ],
        };
        let verdicts: Vec<(f64, bool)> = verdicts(&results).iter().map(|v| (v.measured, v.met())).collect();
        let expected = [(1000.0 / 900.0, true), (700.0 / 900.0, false), (40.0 / 150.0, true)];
        for ((measured, met), (want, want_met)) in verdicts.into_iter().zip(expected) {
            assert!((measured - want).abs() < 1e-9, "{measured} ≠ {want}");
            assert_eq!(met, want_met, "{measured}");
        }
    }
}
