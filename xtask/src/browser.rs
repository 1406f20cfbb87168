//! `cargo xtask browser-report`: qkv's JavaScript client in headless Chromium beside the native
//! clients. Every run is 1 session × 64 HGETs in flight (a closed loop): the JS client over
//! WebTransport and over WebSocket (tests/browser/bench.mjs, which drives Debian's Chromium), and
//! `qkv bench` over QUIC and TLS.
//!
//! 1. Loopback: one `qkv serve --web` pinned to core 0, every client pinned to core 1; the four
//!    clients once per repetition, interleaved, `--reps` repetitions; medians, and ratios to native
//!    QUIC. The server's CPU time per request comes from /proc, sampled while each load runs.
//! 2. The network lab's `target` profile (25 ms and 1% loss each way; root only): the same four
//!    through the emulated link, from the lab's client namespace, server in its server namespace
//!    (`crate::lab`'s `Session` and `Link`, namespaces of this task's own). Goal: WebTransport p99 ≤
//!    0.5 × WebSocket p99, judged on the medians and shown for each repetition.
//!
//! Writes docs/bench/BROWSER.md, browser-results.json and browser-latency.svg.

use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::lab::{self, Build, Link, Namespaces, Profile, Session};
use crate::plot;
use crate::proc::{cpu_seconds, tree_cpu_seconds, watch_log};
use crate::report::{self, median};
use crate::run::{self, CLIENT_CORE, Processes, Scenario};

#[derive(clap::Args)]
pub struct BrowserArgs {
    /// A short run (one repetition, 2 s on loopback and 4 s in the lab) to check that everything works.
    #[arg(long)]
    quick: bool,
    /// Repetitions of each part; the report gives medians.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds measured per loopback run, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds measured per run in the lab (at 50 ms RTT a closed loop of 64 makes ~1,300 requests/s).
    #[arg(long, default_value_t = 10)]
    lab_seconds: u64,
    /// In the lab, a paced variant besides the closed loop: this many requests per second (at most 64
    /// in flight, latency from each request's due time), below what every client sustains, so that
    /// the tails show the link and not a client's queue.
    #[arg(long, default_value_t = 300.0)]
    lab_rate: f64,
    /// Loopback only: skip the lab part (which needs root).
    #[arg(long)]
    no_lab: bool,
    /// Write the report from the measurements of an earlier run (its browser-results.json) instead of
    /// measuring.
    #[arg(long, value_name = "RESULTS_JSON")]
    from: Option<std::path::PathBuf>,
    /// Where BROWSER.md, browser-results.json and browser-latency.svg go.
    #[arg(long, default_value = "docs/bench")]
    out: std::path::PathBuf,
}

/// The four clients, in the order each repetition runs them.
const CLIENTS: [Client; 4] = [
    Client { transport: "quic", label: "native QUIC (qkv bench)", browser: false },
    Client { transport: "webtransport", label: "JS WebTransport (Chromium)", browser: true },
    Client { transport: "tls", label: "native TLS (qkv bench)", browser: false },
    Client { transport: "websocket", label: "JS WebSocket (Chromium)", browser: true },
];
const INFLIGHT: u32 = 64;
/// Keys preloaded and read on loopback (as in the other reports) and in the lab (as in its own).
const LOOPBACK_KEYS: usize = run::KEYS;
const LAB_KEYS: usize = 1000;
const WARMUP: Duration = Duration::from_secs(1);
/// This task's own namespaces, so that it can run beside `cargo xtask lab` and `storm-report`.
const NAMESPACES: Namespaces =
    Namespaces { client: "qkvbrowser-client", router: "qkvbrowser-router", server: "qkvbrowser-server" };
/// The lab server's web listener port (its QUIC and TLS port is the lab's 9527).
const LAB_WEB_PORT: u16 = 9528;

#[derive(Clone, Copy)]
struct Client {
    transport: &'static str,
    label: &'static str,
    browser: bool,
}

/// One run of one client.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measurement {
    /// "loopback" or the lab profile's name.
    part: String,
    transport: String,
    rep: usize,
    /// Requests per second of the paced (open) loop; `None` for the closed loop.
    rate: Option<f64>,
    requests: u64,
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// The server's CPU time over the load (browser: warm-up and measured; native: measured), per request.
    server_cpu_us_per_request: Option<f64>,
    /// The same of the client: `qkv bench`, or node with every Chromium process.
    client_cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Results {
    quick: bool,
    reps: usize,
    seconds: u64,
    lab_seconds: u64,
    lab_rate: f64,
    inflight: u32,
    loopback: Vec<Measurement>,
    lab: Option<LabPart>,
    /// Why the lab part is missing, when it is.
    lab_not_measured: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LabPart {
    /// The profile's name, and what it does to the link.
    profile: String,
    conditions: String,
    rtt_ms: f64,
    /// What the linkem daemons report: packets, mean delay, losses.
    link: Vec<String>,
    runs: Vec<Measurement>,
}

/// What bench.mjs prints.
#[derive(Deserialize)]
struct BrowserJson {
    transport: String,
    requests: u64,
    throughput_rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    warmup_requests: u64,
    first_error: Option<String>,
    rate: Option<f64>,
}

pub fn run(args: BrowserArgs) -> anyhow::Result<()> {
    if let Some(from) = &args.from {
        let results: Results = serde_json::from_slice(&std::fs::read(from)?)
            .with_context(|| format!("cannot read the results in {}", from.display()))?;
        return write(&results, &args.out);
    }
    run::require_two_cores()?;
    run::ensure_chromium()?;
    run::ensure_node_packages("tests/browser")?;
    let (reps, seconds, lab_seconds) = match args.quick {
        true => (1, 2, 4),
        false => (args.reps, args.seconds, args.lab_seconds),
    };
    // The lab builds qkv and linkem itself (and needs root); loopback needs qkv only.
    let lab_ready = if args.no_lab { Err("--no-lab".to_owned()) } else { prepare_lab() };
    if lab_ready.is_err() {
        run::build_qkv()?;
    }
    let loopback = measure_loopback(reps, Duration::from_secs(seconds))?;
    let (lab, lab_not_measured) = match lab_ready {
        Ok(()) => match measure_lab(reps, Duration::from_secs(lab_seconds), args.lab_rate) {
            Ok(lab) => (Some(lab), None),
            Err(error) => {
                eprintln!("the lab part failed: {error:#}");
                (None, Some(format!("{error:#}")))
            }
        },
        Err(why) => (None, Some(why)),
    };
    lab::cleanup();
    let results = Results {
        quick: args.quick,
        reps,
        seconds,
        lab_seconds,
        lab_rate: args.lab_rate,
        inflight: INFLIGHT,
        loopback,
        lab,
        lab_not_measured,
    };
    write(&results, &args.out)
}

fn prepare_lab() -> Result<(), String> {
    lab::prepare(Build::Release).map_err(|error| {
        let why = format!("{error:#}");
        eprintln!("no lab part: {why}");
        why
    })
}

fn measure_loopback(reps: usize, duration: Duration) -> anyhow::Result<Vec<Measurement>> {
    let work = std::env::temp_dir().join(format!("qkv-browser-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = (|| {
        let certs = run::make_certs(&work)?;
        let (port, web) = (run::free_port()?, run::free_port()?);
        let server =
            run::serve_pinned(&work, &certs, port, &["--web".into(), format!("127.0.0.1:{web}")], "qkv")?;
        let pid = server.id();
        let _server = Processes(vec![server]);
        run::wait_for_tcp(web, "the web listener")?;
        let ca = certs.join("ca.pem");
        // An address, not `localhost`: Chromium would try ::1 first for WebTransport, where the server
        // does not listen. The certificate names 127.0.0.1 too.
        let origin = format!("https://127.0.0.1:{web}");
        let mut measurements = Vec::new();
        let total = reps * CLIENTS.len();
        for rep in 1..=reps {
            for client in CLIENTS {
                eprintln!("[{}/{total}] loopback {} (run {rep})", measurements.len() + 1, client.label);
                let measured = if client.browser {
                    let mut command = run::pinned(CLIENT_CORE, "node");
                    browser_args(&mut command, client.transport, &origin, &ca, duration, LOOPBACK_KEYS, None);
                    run_browser(command, pid, duration, false)
                } else {
                    let mut command = run::qkv_bench_command(
                        port,
                        &certs,
                        client.transport,
                        "hget",
                        Scenario::new(1, INFLIGHT),
                        duration,
                    );
                    command.stdout(Stdio::piped());
                    run_native(command, pid, duration, false)
                };
                let mut measured = measured.with_context(|| format!("loopback {}", client.label))?;
                check_transport(&measured, client)?;
                measured.part = "loopback".into();
                measured.rep = rep;
                measurements.push(measured);
            }
        }
        Ok(measurements)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn measure_lab(reps: usize, duration: Duration, rate: f64) -> anyhow::Result<LabPart> {
    let profile = Profile::named("target").context("the lab has no target profile")?;
    let work = lab::scratch("qkv-browser-lab")?;
    let web = format!("{}:{LAB_WEB_PORT}", lab::SERVER_ADDR);
    let session =
        Session::start(NAMESPACES, &Build::Release.qkv(), &work, duration, &["--web", web.as_str()])?;
    eprintln!("lab, profile {}: {}", profile.name, profile.describe());
    let link = Link::apply(NAMESPACES, &profile, &work, &Build::Release.linkem())?;
    let measured = (|| {
        let rtt_ms = lab::calibrate(&session.bench, &profile)?;
        let pid = session.server_pid();
        let ca = session.bench.ca.clone();
        let mut runs = Vec::new();
        let total = reps * CLIENTS.len() * 2;
        for rep in 1..=reps {
            let loads = CLIENTS.iter().map(|c| (*c, None)).chain(CLIENTS.iter().map(|c| (*c, Some(rate))));
            for (client, rate) in loads {
                let load = rate.map_or("closed loop".to_owned(), |r| format!("paced at {r}/s"));
                eprintln!(
                    "[{}/{total}] lab {} {} {load} (run {rep})",
                    runs.len() + 1,
                    profile.name,
                    client.label
                );
                let measured = if client.browser {
                    let mut command = lab::command_in(NAMESPACES.client, "node");
                    browser_args(
                        &mut command,
                        client.transport,
                        &format!("https://{web}"),
                        &ca,
                        duration,
                        LAB_KEYS,
                        rate,
                    );
                    run_browser(command, pid, duration, true)
                } else {
                    let rate = rate.map(|r| r.to_string());
                    let mut load = vec!["--workload", "hget", "--connections", "1", "--inflight", "64"];
                    load.extend(rate.as_deref().map(|r| ["--rate", r]).into_iter().flatten());
                    let command = session.bench.command(client.transport, WARMUP, &load);
                    run_native(command, pid, duration, true)
                };
                let mut measured = measured.with_context(|| format!("lab {}", client.label))?;
                check_transport(&measured, client)?;
                measured.part = profile.name.into();
                measured.rep = rep;
                runs.push(measured);
            }
        }
        Ok::<_, anyhow::Error>((rtt_ms, runs))
    })();
    let link_report = link.remove();
    session.stop()?;
    let (rtt_ms, runs) = measured?;
    let (profile, conditions) = (profile.name.to_owned(), profile.describe());
    Ok(LabPart { profile, conditions, rtt_ms, link: link_report?, runs })
}

/// Each load says which transport it used; a browser that fell back to another would be caught here
/// (bench.mjs checks it too).
fn check_transport(measured: &Measurement, client: Client) -> anyhow::Result<()> {
    if measured.transport != client.transport {
        bail!("{} ran over {}", client.label, measured.transport);
    }
    Ok(())
}

/// bench.mjs's arguments and environment, added to `command` (node, pinned or in a namespace).
fn browser_args(
    command: &mut Command,
    transport: &str,
    web: &str,
    ca: &Path,
    duration: Duration,
    keys: usize,
    rate: Option<f64>,
) {
    command
        .arg("tests/browser/bench.mjs")
        .arg(transport)
        .args(["--seconds", &duration.as_secs().to_string(), "--warmup", &WARMUP.as_secs().to_string()])
        .args(["--concurrency", &INFLIGHT.to_string(), "--keys", &keys.to_string()])
        .args(rate.map(|r| ["--rate".to_owned(), r.to_string()]).into_iter().flatten())
        .env("QKV_WEB_URL", web)
        .env("QKV_CA", ca)
        .stdout(Stdio::piped());
}

/// Runs bench.mjs (Chromium and all), sampling the server's CPU time between its "loop started" and
/// "loop ended".
fn run_browser(
    command: Command,
    server: u32,
    duration: Duration,
    in_lab: bool,
) -> anyhow::Result<Measurement> {
    let (stdout, cpu) = run_load(command, server, duration, &["loop started", "loop ended"], in_lab)?;
    let json: BrowserJson = serde_json::from_slice(&stdout)
        .with_context(|| format!("bench.mjs printed {}", String::from_utf8_lossy(&stdout).trim()))?;
    if let Some(error) = &json.first_error {
        eprintln!("  first error: {error}");
    }
    let (server_cpu_us_per_request, client_cpu_us_per_request) =
        Cpu::per_request(cpu, json.requests + json.warmup_requests);
    Ok(Measurement {
        part: String::new(),
        transport: json.transport,
        rep: 0,
        rate: json.rate,
        requests: json.requests,
        throughput_rps: json.throughput_rps,
        p50_us: json.p50_us,
        p99_us: json.p99_us,
        errors: json.errors,
        server_cpu_us_per_request,
        client_cpu_us_per_request,
    })
}

/// Runs `qkv bench --json`, sampling the server's CPU time from "measuring" to its end.
fn run_native(
    mut command: Command,
    server: u32,
    duration: Duration,
    in_lab: bool,
) -> anyhow::Result<Measurement> {
    command.env("RUST_LOG", "qkv::bench=info");
    let (stdout, cpu) = run_load(command, server, duration, &["measuring"], in_lab)?;
    let json: qkv::bench::JsonReport = serde_json::from_slice(&stdout)
        .with_context(|| format!("qkv bench printed {}", String::from_utf8_lossy(&stdout).trim()))?;
    let (server_cpu_us_per_request, client_cpu_us_per_request) = Cpu::per_request(cpu, json.requests);
    Ok(Measurement {
        part: String::new(),
        transport: json.transport.to_lowercase(),
        rep: 0,
        rate: json.target_rps,
        requests: json.requests,
        throughput_rps: json.throughput_rps,
        p50_us: json.latency_us.p50 as f64,
        p99_us: json.latency_us.p99 as f64,
        errors: json.errors,
        server_cpu_us_per_request,
        client_cpu_us_per_request,
    })
}

/// Starts a load (its own process group; in the lab, recorded for the lab's cleanup), samples the
/// server's CPU time at the first marker of its log and at the second (or at its end), and returns its
/// stdout. A load that outlives its duration by 90 s is killed, group and all (Chromium with it).
fn run_load(
    mut command: Command,
    server: u32,
    duration: Duration,
    markers: &'static [&'static str],
    in_lab: bool,
) -> anyhow::Result<(Vec<u8>, Option<Cpu>)> {
    command.stderr(Stdio::piped()).process_group(0);
    let mut child: Child = if in_lab { lab::spawn(command)? } else { command.spawn()? };
    let pid = child.id();
    let stderr = child.stderr.take().context("the load's stderr")?;
    let (events, log) = watch_log(stderr, markers);
    let deadline = Instant::now() + duration + WARMUP + Duration::from_secs(90);
    let sample = || -> anyhow::Result<(f64, f64)> { Ok((cpu_seconds(server)?, tree_cpu_seconds(pid))) };
    let since = |start: Option<(f64, f64)>| -> anyhow::Result<Option<Cpu>> {
        let Some((server, client)) = start else { return Ok(None) };
        let now = sample()?;
        Ok(Some(Cpu { server: now.0 - server, client: now.1 - client }))
    };
    let (mut started, mut cpu) = (None, None);
    loop {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(0) => started = Some(sample()?),
            Ok(_) => cpu = since(started)?,
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(RecvTimeoutError::Timeout) => {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
                let _ = child.wait();
                bail!("the load did not finish in time: {}", log.join().unwrap_or_default());
            }
            // The log ended: the load has exited.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if markers.len() == 1 {
        // Exited but not yet reaped: its CPU time is still readable.
        cpu = since(started)?;
    }
    let mut stdout = Vec::new();
    child.stdout.take().context("the load's stdout")?.read_to_end(&mut stdout)?;
    let status = if in_lab { lab::wait_output(child)?.status } else { child.wait()? };
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("the load failed ({status}): {log}");
    }
    Ok((stdout, cpu))
}

/// CPU seconds used while a load ran: by the server, and by the client (its whole process tree).
#[derive(Clone, Copy)]
struct Cpu {
    server: f64,
    client: f64,
}

impl Cpu {
    /// Microseconds per request of the server's and the client's.
    fn per_request(cpu: Option<Cpu>, requests: u64) -> (Option<f64>, Option<f64>) {
        let per = |seconds: f64| seconds * 1e6 / requests.max(1) as f64;
        (cpu.map(|c| per(c.server)), cpu.map(|c| per(c.client)))
    }
}

fn med(runs: &[Measurement], transport: &str, field: fn(&Measurement) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().filter(|m| m.transport == transport).map(field).collect();
    median(&mut values)
}

/// The median of a figure some runs lack (NaN when none has it).
fn med_known(runs: &[Measurement], transport: &str, field: fn(&Measurement) -> Option<f64>) -> f64 {
    let mut values: Vec<f64> = runs.iter().filter(|m| m.transport == transport).filter_map(field).collect();
    median(&mut values)
}

fn label(transport: &str) -> &'static str {
    CLIENTS.iter().find(|c| c.transport == transport).map_or("?", |c| c.label)
}

/// The medians of one part, one row per client, with ratios to native QUIC.
fn table(md: &mut String, runs: &[Measurement]) -> anyhow::Result<()> {
    writeln!(
        md,
        "| client | requests/s | × QUIC | p50 µs | × QUIC | p99 µs | × QUIC | server CPU µs/request | \
         client CPU µs/request | errors |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let quic = |field: fn(&Measurement) -> f64| med(runs, "quic", field);
    for client in CLIENTS {
        let t = client.transport;
        let (rps, p50, p99) =
            (med(runs, t, |m| m.throughput_rps), med(runs, t, |m| m.p50_us), med(runs, t, |m| m.p99_us));
        let cpu = |field: fn(&Measurement) -> Option<f64>| match med_known(runs, t, field) {
            cpu if cpu.is_nan() => "–".to_owned(),
            cpu => format!("{cpu:.1}"),
        };
        let errors: u64 = runs.iter().filter(|m| m.transport == t).map(|m| m.errors).sum();
        writeln!(
            md,
            "| {} | {rps:.0} | {:.2} | {p50:.0} | {:.2} | {p99:.0} | {:.2} | {} | {} | {errors} |",
            client.label,
            rps / quic(|m| m.throughput_rps),
            p50 / quic(|m| m.p50_us),
            p99 / quic(|m| m.p99_us),
            cpu(|m| m.server_cpu_us_per_request),
            cpu(|m| m.client_cpu_us_per_request),
        )?;
    }
    Ok(())
}

fn runs_table(md: &mut String, runs: &[Measurement]) -> anyhow::Result<()> {
    writeln!(
        md,
        "| run | client | load | requests | requests/s | p50 µs | p99 µs | server CPU µs/request | \
         client CPU µs/request | errors |"
    )?;
    writeln!(md, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for m in runs {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            m.rep,
            label(&m.transport),
            m.rate.map_or("closed, 64".to_owned(), |r| format!("paced {r}/s")),
            m.requests,
            m.throughput_rps,
            m.p50_us,
            m.p99_us,
            m.server_cpu_us_per_request.map_or("–".to_owned(), |c| format!("{c:.1}")),
            m.client_cpu_us_per_request.map_or("–".to_owned(), |c| format!("{c:.1}")),
            m.errors
        )?;
    }
    Ok(())
}

/// The closed-loop runs (`true`) or the paced ones.
fn closed(runs: &[Measurement], closed: bool) -> Vec<Measurement> {
    runs.iter().filter(|m| m.rate.is_none() == closed).cloned().collect()
}

/// WebTransport p99 / WebSocket p99 of the medians, and of each repetition.
fn wt_ws_ratio(runs: &[Measurement], reps: usize) -> (f64, f64, Vec<String>) {
    let (wt, ws) = (med(runs, "webtransport", |m| m.p99_us), med(runs, "websocket", |m| m.p99_us));
    let per_rep = (1..=reps)
        .filter_map(|rep| {
            let p99 = |t: &str| runs.iter().find(|m| m.rep == rep && m.transport == t).map(|m| m.p99_us);
            Some(format!("{:.2}", p99("webtransport")? / p99("websocket")?))
        })
        .collect();
    (wt, ws, per_rep)
}

fn lab_section(md: &mut String, lab: &LabPart, results: &Results) -> anyhow::Result<()> {
    writeln!(
        md,
        "The lab of `cargo xtask lab` (docs/bench/LAB-METHOD.md) in namespaces of this report's own: the \
         server (not pinned) in the server namespace, every client (Chromium too, not pinned) in the client \
         namespace, the router between them emulating the link with linkem (NFQUEUE): {}. Measured round \
         trip (QUIC pings): {:.1} ms. {} keys; {} s measured after 1 s of warm-up. Each repetition runs the \
         four clients in a closed loop, then the four paced.\n",
        lab.conditions, lab.rtt_ms, LAB_KEYS, results.lab_seconds
    )?;
    let closed_runs = closed(&lab.runs, true);
    writeln!(md, "### Closed loop, 64 in flight (the issue's measurement)\n")?;
    writeln!(
        md,
        "At 50 ms a closed loop of 64 makes at most ~1,280 requests/s; a client that cannot make that many \
         has its requests queue in the client, and that queueing is in its latency.\n"
    )?;
    table(md, &closed_runs)?;
    writeln!(md)?;
    let (wt, ws, per_rep) = wt_ws_ratio(&closed_runs, results.reps);
    let ratio = wt / ws;
    writeln!(
        md,
        "**Goal: WebTransport p99 ≤ 0.5 × WebSocket p99. Medians: {:.1} ms / {:.1} ms = {ratio:.2}: {}.** \
         In each repetition: {}.\n",
        wt / 1000.0,
        ws / 1000.0,
        if ratio <= 0.5 { "met" } else { "not met" },
        per_rep.join(", ")
    )?;
    let met = per_rep.iter().filter(|r| r.parse::<f64>().is_ok_and(|r| r <= 0.5)).count();
    let client_cpu = |t: &str| med_known(&closed_runs, t, |m| m.client_cpu_us_per_request);
    writeln!(
        md,
        "Met in {met} of {} repetitions. How to read it: WebSocket's p99 depends on whether the run's \
         losses hit TCP where it must wait for a retransmission timeout (every request behind the lost \
         segment waits with it), so it swings from run to run; WebTransport's is set mostly by Chromium: \
         at {:.0} µs of the browser's CPU per request (WebSocket: {:.0} µs), it made {:.0} requests/s, \
         short of the ~1,280/s the loop allows, so its requests queue in the browser (p50 {:.1} ms \
         against a 50 ms round trip). The paced variant below takes that queue away.\n",
        per_rep.len(),
        client_cpu("webtransport"),
        client_cpu("websocket"),
        med(&closed_runs, "webtransport", |m| m.throughput_rps),
        med(&closed_runs, "webtransport", |m| m.p50_us) / 1000.0,
    )?;
    let (quic, tls) = (med(&closed_runs, "quic", |m| m.p99_us), med(&closed_runs, "tls", |m| m.p99_us));
    writeln!(
        md,
        "The native clients, for comparison: QUIC p99 / TLS p99 = {:.1} ms / {:.1} ms = {:.2}.\n",
        quic / 1000.0,
        tls / 1000.0,
        quic / tls
    )?;
    let paced_runs = closed(&lab.runs, false);
    writeln!(md, "### Paced at {} requests/s (at most 64 in flight)\n", results.lab_rate)?;
    writeln!(
        md,
        "The same clients sending on a fixed schedule below what each sustains (bench.mjs --rate, `qkv \
         bench --rate`; latency from each request's due time, or in the browser from when its caller's \
         timer fired if a caller was free by then, since page timers run a millisecond or more late): the \
         tails show what losses do on each transport, without a client's own queue.\n"
    )?;
    table(md, &paced_runs)?;
    writeln!(md)?;
    let (wt, ws, per_rep) = wt_ws_ratio(&paced_runs, results.reps);
    let (quic, tls) = (med(&paced_runs, "quic", |m| m.p99_us), med(&paced_runs, "tls", |m| m.p99_us));
    writeln!(
        md,
        "Paced: WebTransport p99 / WebSocket p99 = {:.1} ms / {:.1} ms = **{:.2}** (each repetition: {}); \
         native QUIC p99 / TLS p99 = {:.1} ms / {:.1} ms = {:.2}.\n",
        wt / 1000.0,
        ws / 1000.0,
        wt / ws,
        per_rep.join(", "),
        quic / 1000.0,
        tls / 1000.0,
        quic / tls
    )?;
    writeln!(md, "What the link did (linkem, each direction, whole lab part): {}.\n", lab.link.join("; "))?;
    Ok(())
}

fn write(results: &Results, out: &Path) -> anyhow::Result<()> {
    let mut md = report::header(
        "qkv's JavaScript client in a browser, beside the native clients",
        "browser-report",
        results.quick,
        "[Method](#method), below",
    );
    writeln!(md, "\n## Method\n")?;
    writeln!(
        md,
        "xtask/src/browser.rs and tests/browser/bench.mjs. Every run is one session (connection) carrying \
         a closed loop of {} HGETs in flight, 64-byte values, uniformly random keys:\n",
        results.inflight
    )?;
    writeln!(
        md,
        "- **JS WebTransport / JS WebSocket**: the JS client (clients/js, the bundle the server serves at \
         /console/qkv-client.js) in Debian's headless Chromium driven by playwright-core, on a page of the \
         web listener's origin; `connect({{ transport }})` with WebTransport (QUIC port, ALPN h3, the \
         self-issued certificate pinned by the hash of /webtransport-cert) or WebSocket (`/ws`, HTTPS). \
         {} callers each await `client.hget()` and send the next; latency is `performance.now()` around \
         each call (Chromium coarsens it to 100 µs on pages that are not cross-origin isolated). Each run \
         checks that the client connected over the transport asked for and that the page opened no \
         WebSocket over WebTransport (exactly one over WebSocket).\n\
         - **native QUIC / native TLS**: `qkv bench --workload hget --connections 1 --inflight {}`, \
         the Rust client.\n",
        results.inflight, results.inflight
    )?;
    writeln!(
        md,
        "Each client once per repetition, interleaved (QUIC, WebTransport, TLS, WebSocket), {} \
         repetition(s); the tables give medians over the repetitions. Server CPU per request is the \
         server's CPU time (/proc) while the load ran, over the requests it answered meanwhile (for the \
         browser, warm-up included; for `qkv bench`, the measured period); client CPU per request the \
         same of the client's whole process tree (`qkv bench`; or node, Chromium's browser, network \
         service and renderer processes). The machine has 2 vCPUs and \
         other work ran beside this report, so absolute figures are noisy: the ratios between clients \
         within one run are what counts.\n",
        results.reps
    )?;

    writeln!(md, "## Loopback\n")?;
    writeln!(
        md,
        "One `qkv serve --web` (in-memory store) pinned to core 0; the client (`qkv bench`, or node with \
         its Chromium) pinned to core 1; {} keys; {} s measured after 1 s of warm-up.\n",
        LOOPBACK_KEYS, results.seconds
    )?;
    table(&mut md, &results.loopback)?;
    writeln!(md)?;
    let client_cpu = |t: &str| med_known(&results.loopback, t, |m| m.client_cpu_us_per_request);
    writeln!(
        md,
        "On one core, the browser is the bottleneck of both JS transports: Chromium (renderer, network \
         service and browser processes together) spends {:.0} µs of CPU per request over WebTransport, \
         where each request is a bidirectional stream of its own (docs/PROTOCOL.md, section 2.1), and \
         {:.0} µs over WebSocket, where all requests share one stream; the native clients spend {:.1} \
         (QUIC) and {:.1} (TLS).\n",
        client_cpu("webtransport"),
        client_cpu("websocket"),
        client_cpu("quic"),
        client_cpu("tls"),
    )?;

    writeln!(md, "## Through the network lab's `target` profile\n")?;
    match (&results.lab, &results.lab_not_measured) {
        (Some(lab), _) => lab_section(&mut md, lab, results)?,
        (None, why) => {
            writeln!(md, "Not measured: {}.\n", why.as_deref().unwrap_or("unknown"))?;
        }
    }

    writeln!(md, "![p50 and p99 of each client](browser-latency.svg)\n")?;
    writeln!(md, "## Each run, in order\n")?;
    writeln!(md, "Loopback:\n")?;
    runs_table(&mut md, &results.loopback)?;
    if let Some(lab) = &results.lab {
        writeln!(md, "\nLab, profile `{}` (closed loop, then paced, in each repetition):\n", lab.profile)?;
        runs_table(&mut md, &lab.runs)?;
    }
    std::fs::create_dir_all(out)?;
    plot_latency(results, &out.join("browser-latency.svg"))?;
    std::fs::write(out.join("BROWSER.md"), md)?;
    std::fs::write(out.join("browser-results.json"), serde_json::to_vec_pretty(results)?)?;
    eprintln!("report written to {}", out.join("BROWSER.md").display());
    Ok(())
}

/// p50 and p99 (medians) of each client, loopback and lab, on a logarithmic axis.
fn plot_latency(results: &Results, path: &Path) -> anyhow::Result<()> {
    let mut parts: Vec<(&str, Vec<Measurement>)> = vec![("loopback", results.loopback.clone())];
    if let Some(lab) = &results.lab {
        parts.push(("lab closed", closed(&lab.runs, true)));
        parts.push(("lab paced", closed(&lab.runs, false)));
    }
    let values: Vec<f64> = parts
        .iter()
        .flat_map(|(_, runs)| {
            CLIENTS
                .iter()
                .flat_map(|c| [med(runs, c.transport, |m| m.p50_us), med(runs, c.transport, |m| m.p99_us)])
        })
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (low, high) = values.iter().fold((f64::MAX, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
    if values.is_empty() {
        return Ok(());
    }
    let root = plot::canvas(path)?;
    let mut chart =
        plot::builder(&root, "HGET latency of each client, medians of p50 and p99 (µs, log scale)")
            .build_cartesian_2d(-0.5f64..3.5f64, (low / 30.0..high * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || !(0.0..4.0).contains(&i) {
                return String::new();
            }
            CLIENTS[i as usize].label.split(" (").next().unwrap_or("").to_owned()
        })
        .y_label_formatter(&plot::short_number)
        .y_desc("µs")
        .draw()?;
    let colors = [BLUE, CYAN, RED, MAGENTA, GREEN, RGBColor(120, 120, 0)];
    for (n, (name, runs)) in parts.iter().enumerate() {
        for (quantile, field) in
            [("p50", (|m: &Measurement| m.p50_us) as fn(&Measurement) -> f64), ("p99", |m| m.p99_us)]
        {
            let color = colors[(n * 2 + usize::from(quantile == "p99")) % colors.len()];
            let points =
                CLIENTS.iter().enumerate().map(|(i, c)| (i as f64, med(runs, c.transport, field))).collect();
            plot::dotted_line(&mut chart, points, color, Some(&format!("{name} {quantile}")))?;
        }
    }
    // Room below the lowest point for the legend.
    plot::finish(&mut chart, &root, SeriesLabelPosition::LowerRight)
}
