//! The lab's experiments, each QUIC against TLS, each a `qkv bench --json` run in the client namespace.
//!
//! 1. Head-of-line blocking: 1 connection × 64 HGETs in flight.
//! 2. Connection setup: a new connection per HGET, from connect to the first answer; TLS full and
//!    resumed, QUIC full and 0-RTT (`--workload connect [--zero-rtt]`).
//! 3. Migration: 16 HGETs in flight while the client moves to a new address a third into the run.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qkv::bench::JsonReport;
use serde::Serialize;

use super::profiles::Profile;
use super::report::ProfileResults;
use super::topology::{self, CLIENT_ADDRS, Namespaces};

/// Keys preloaded and read: few, so that preloading is quick even at 2 Mbit/s.
const KEYS: &str = "1000";
const WARMUP: Duration = Duration::from_secs(1);

/// The shortest run of the connection set-up experiments: longer than TCP's backoff after a SYN lost
/// three times over (1 + 2 + 4 s), which at 1 % loss each way is rare enough not to matter.
const SETUP_MIN_DURATION: Duration = Duration::from_secs(8);
/// Per-request deadline in the migration experiment: how long a client waits before it gives up on
/// a connection that went silent. It bounds the TLS outage; QUIC should never need it.
pub const MIGRATION_TIMEOUT: &str = "3s";

/// One bench run of one experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `quic`, `tls`, `quic 0-RTT`, `tls resumed`...
    pub variant: String,
    pub result: JsonReport,
    /// When the client moved, from the start of the measured period (migration only).
    pub moved_at_ms: Option<u64>,
}

#[derive(Clone)]
pub struct Bench {
    /// The namespaces of the lab the server runs in; benches run in its client namespace.
    pub ns: Namespaces,
    /// The qkv binary, for the server and the benches.
    pub qkv: PathBuf,
    pub addr: String,
    pub ca: PathBuf,
    pub duration: Duration,
}

/// Whether the workload `extra` names reads keys (every one but ping; the lab runs no other).
fn keyed(extra: &[&str]) -> bool {
    !extra.windows(2).any(|pair| pair == ["--workload", "ping"])
}

impl Bench {
    /// A `qkv bench --json` against the lab's server, in the client namespace.
    pub fn command(&self, transport: &str, warmup: Duration, extra: &[&str]) -> Command {
        let mut command = topology::command_in(self.ns.client, &self.qkv);
        let ca = self.ca.to_string_lossy().into_owned();
        command
            .args(["bench", "--json", "--addr", &self.addr, "--ca", &ca, "--transport", transport])
            .args(["--warmup", &format!("{}ms", warmup.as_millis())])
            .args(["--duration", &format!("{}ms", self.duration.as_millis())])
            .args(extra)
            // Keys for the workloads that read them (the bench refuses flags a workload would ignore).
            .args(if keyed(extra) { &["--keys", KEYS][..] } else { &[][..] })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub fn parse(output: Output, what: &str) -> anyhow::Result<JsonReport> {
        if !output.status.success() {
            bail!("{what}: qkv bench failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        serde_json::from_slice(&output.stdout).with_context(|| format!("{what}: qkv bench --json output"))
    }

    fn run(&self, variant: &str, transport: &str, extra: &[&str]) -> anyhow::Result<Run> {
        eprintln!("  {variant} {}", extra.join(" "));
        // Spawned through the topology, so that an interrupted lab stops it too.
        let output = topology::wait_output(topology::spawn(self.command(transport, WARMUP, extra))?)?;
        Ok(Run { variant: variant.to_owned(), result: Self::parse(output, variant)?, moved_at_ms: None })
    }

    /// Waits until the server in its namespace answers (it has just been started).
    pub fn wait_for_server(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let ca = self.ca.to_string_lossy().into_owned();
        loop {
            let ping = topology::command_in(self.ns.client, &self.qkv)
                .args(["ping", "--addr", &self.addr, "--ca", &ca])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if ping.success() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the lab's server did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Measures the round trip the profile gives (QUIC pings, one at a time), and refuses to go on if it
/// is far from what the profile asks for: a daemon that is not running would pass packets unimpaired.
pub fn calibrate(bench: &Bench, profile: &Profile) -> anyhow::Result<f64> {
    let short = Bench { duration: Duration::from_secs(2), ..bench.clone() };
    let run =
        short.run("calibration", "quic", &["--workload", "ping", "--connections", "1", "--inflight", "1"])?;
    let measured_ms = run.result.latency_us.p50 as f64 / 1000.0;
    let expected_ms = profile.rtt().as_secs_f64() * 1000.0;
    if (measured_ms - expected_ms).abs() > expected_ms * 0.25 + 2.0 {
        bail!(
            "profile {}: the round trip is {measured_ms:.1} ms, expected {expected_ms:.0} ms",
            profile.name
        );
    }
    eprintln!("  round trip {measured_ms:.1} ms (expected {expected_ms:.0} ms)");
    Ok(measured_ms)
}

pub fn run_all(bench: &Bench, profile: &Profile) -> anyhow::Result<ProfileResults> {
    let rtt_ms = calibrate(bench, profile)?;
    let hol_load = ["--workload", "hget", "--connections", "1", "--inflight", "64"];
    let hol = vec![bench.run("quic", "quic", &hol_load)?, bench.run("tls", "tls", &hol_load)?];

    let connect = ["--workload", "connect", "--connections", "1", "--inflight", "1"];
    let with_zero_rtt = [&connect[..], &["--zero-rtt"]].concat();
    // One connection at a time, each a new handshake: a SYN lost on a lossy link waits 1 s, lost
    // twice 3 s, and a run as short as the smoke's (2 s) then measured nothing at all (seen once in
    // CI: "no request of the measured period succeeded").
    let setup_bench = Bench { duration: bench.duration.max(SETUP_MIN_DURATION), ..bench.clone() };
    let setup = vec![
        setup_bench.run("tls full", "tls", &connect)?,
        setup_bench.run("tls resumed", "tls", &with_zero_rtt)?,
        setup_bench.run("quic full", "quic", &connect)?,
        setup_bench.run("quic 0-RTT", "quic", &with_zero_rtt)?,
    ];

    let migration = vec![migrate(bench, "quic")?, migrate(bench, "tls")?];
    Ok(ProfileResults { profile: *profile, rtt_ms, link: Vec::new(), hol, setup, migration })
}

/// Runs a load during which the client moves from its first address to its second, then moves it back.
fn migrate(bench: &Bench, transport: &str) -> anyhow::Result<Run> {
    eprintln!("  {transport} migration");
    let load = [
        "--workload",
        "hget",
        "--connections",
        "1",
        "--inflight",
        "16",
        "--timeline",
        "100ms",
        "--timeout",
        MIGRATION_TIMEOUT,
    ];
    // Connecting and preloading take a few round trips before the warm-up starts; a long warm-up
    // makes sure the move falls into the measured period, and the bench's report says exactly when
    // that period began.
    let mut command = bench.command(transport, WARMUP, &load);
    command.env("RUST_LOG", "qkv::bench=info");
    let mut child = topology::spawn(command)?;
    // The bench logs when its measured period begins (after connecting, preloading, warming up).
    let stderr = child.stderr.take().context("bench stderr")?;
    let (started, log) = crate::proc::watch_log(stderr, &["measuring"]);
    if started.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        bail!("{transport} migration: the bench never started measuring");
    }
    std::thread::sleep(bench.duration / 3);
    let moved_at = std::time::SystemTime::now();
    let moved = topology::move_client(bench.ns, CLIENT_ADDRS[0], CLIENT_ADDRS[1]);
    let output = topology::wait_output(child);
    let back = topology::move_client(bench.ns, CLIENT_ADDRS[1], CLIENT_ADDRS[0]);
    moved?;
    back?;
    let mut output = output?;
    output.stderr = log.join().unwrap_or_default().into_bytes();
    let result = Bench::parse(output, &format!("{transport} migration"))?;
    let moved_at_unix_ms = moved_at.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let Some(moved_at_ms) = moved_at_unix_ms.checked_sub(result.measured_from_unix_ms) else {
        bail!("{transport} migration: the client moved before the measured period began");
    };
    Ok(Run { variant: transport.to_owned(), result, moved_at_ms: Some(moved_at_ms) })
}
