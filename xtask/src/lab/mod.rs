//! `cargo xtask lab`: QUIC against TLS over emulated mobile links, in network namespaces (root only).
//!
//! - `topology`: the namespaces, links and cleanup.
//! - `profiles`: what each link does to packets.
//! - `experiments`: the three measurements, each a `qkv bench` run in the client namespace.
//! - `report`: LAB.md, its plots and the raw results.
//!
//! Delay, jitter and loss come from `linkem` (lab/linkem), an NFQUEUE daemon in the router namespace,
//! because this kernel has no netem; bandwidth from tbf on the router's egress.

mod experiments;
mod profiles;
mod report;
mod topology;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub use profiles::Profile;

#[derive(clap::Args)]
pub struct LabArgs {
    /// A few seconds per experiment, the target profile only: checks that the lab works (CI).
    #[arg(long)]
    smoke: bool,
    /// Profiles to run (default: all): clean, target, lte, 3g, lossy-wifi.
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where LAB.md, its plots and lab-results.json go (default: docs/bench; a temporary directory
    /// with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
}

const LINKEM: &str = "target/release/linkem";
const QKV: &str = "target/release/qkv";

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    if !topology::is_root() {
        bail!("the lab creates network namespaces: run it as root (sudo -E cargo xtask lab)");
    }
    let profiles: Vec<Profile> = match (&args.profiles[..], args.smoke) {
        ([], true) => vec![Profile::TARGET],
        ([], false) => Profile::ALL.to_vec(),
        (names, _) => names
            .iter()
            .map(|n| Profile::named(n).with_context(|| format!("no profile named {n}")))
            .collect::<anyhow::Result<_>>()?,
    };
    let seconds = if args.smoke { 2 } else { args.seconds };
    let out = match (&args.out, args.smoke) {
        (Some(out), _) => out.clone(),
        (None, true) => std::env::temp_dir().join("qkv-lab-smoke"),
        (None, false) => PathBuf::from("docs/bench"),
    };
    ensure_tools()?;
    build()?;
    ctrlc::set_handler(|| {
        eprintln!("interrupted: removing the lab's namespaces");
        topology::cleanup();
        std::process::exit(130);
    })
    .context("cannot install the interrupt handler")?;

    let scratch = std::env::temp_dir().join(format!("qkv-lab-{}", std::process::id()));
    let work = topology::scratch_directory(scratch)?;
    let result = run_lab(&profiles, Duration::from_secs(seconds), &work);
    topology::cleanup();
    let results = result?;

    std::fs::create_dir_all(&out)?;
    let results = report::LabResults { smoke: args.smoke, seconds, profiles: results };
    let checks = report::write(&results, &out)?;
    eprintln!("lab report written to {}", out.join("LAB.md").display());
    for check in &checks {
        eprintln!("{check}");
    }
    if args.smoke {
        report::smoke_checks(&results)?;
    }
    Ok(())
}

fn run_lab(
    profiles: &[Profile],
    duration: Duration,
    work: &Path,
) -> anyhow::Result<Vec<report::ProfileResults>> {
    topology::create()?;
    let certs = work.join("certs");
    let certs_arg = certs.to_string_lossy().into_owned();
    let status = std::process::Command::new(QKV)
        .args(["cert", "--dir", &certs_arg, "--name", topology::SERVER_ADDR])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("qkv cert failed");
    }
    let mut server = topology::command_in(topology::SERVER, QKV);
    let listen = format!("{}:9527", topology::SERVER_ADDR);
    server
        .args(["serve", "--listen", &listen, "--certs", &certs_arg])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("server.log"))?);
    let server = topology::spawn(server)?;
    let bench = experiments::Bench { addr: listen, ca: certs.join("ca.pem"), duration };
    bench.wait_for_server()?;

    let mut results = Vec::new();
    for profile in profiles {
        eprintln!("profile {}: {}", profile.name, profile.describe());
        let link = Link::apply(profile, work)?;
        let measured = experiments::run_all(&bench, profile);
        let link_report = link.remove()?;
        let mut measured = measured?;
        measured.link = link_report;
        results.push(measured);
    }
    topology::stop(server)?;
    Ok(results)
}

/// A profile in force: its linkem daemons and tbf qdiscs.
struct Link {
    daemons: Vec<(Child, PathBuf)>,
}

impl Link {
    fn apply(profile: &Profile, work: &Path) -> anyhow::Result<Link> {
        topology::set_bandwidth(profile.mbit)?;
        let mut daemons = Vec::new();
        if profile.impairs() {
            for (queue, seed) in [(topology::UPLINK_QUEUE, 1), (topology::DOWNLINK_QUEUE, 2)] {
                let log = work.join(format!("linkem-{}-{queue}.log", profile.name));
                let mut command = topology::command_in(topology::ROUTER, LINKEM);
                command
                    .args(["--queue", &queue.to_string(), "--seed", &seed.to_string()])
                    .args(["--delay", &format!("{}ms", profile.one_way_delay_ms)])
                    .args(["--jitter", &format!("{}ms", profile.jitter_ms)])
                    .args(["--loss", &profile.loss.to_string()])
                    .stderr(std::fs::File::create(&log)?);
                daemons.push((topology::spawn(command)?, log));
            }
            // Bound within milliseconds; until then packets bypass the queue unimpaired, so wait.
            std::thread::sleep(Duration::from_millis(300));
            for (daemon, log) in &mut daemons {
                if daemon.try_wait()?.is_some() {
                    bail!("linkem exited: {}", std::fs::read_to_string(log).unwrap_or_default());
                }
            }
        }
        Ok(Link { daemons })
    }

    /// Removes the profile and returns what each daemon says it did.
    fn remove(self) -> anyhow::Result<Vec<String>> {
        let mut reports = Vec::new();
        for (daemon, log) in self.daemons {
            topology::stop(daemon)?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            reports.extend(text.lines().last().map(|l| l.trim_start_matches("linkem: ").to_owned()));
        }
        topology::set_bandwidth(None)?;
        Ok(reports)
    }
}

fn ensure_tools() -> anyhow::Result<()> {
    let present = |program: &str| {
        std::process::Command::new("which").arg(program).output().is_ok_and(|o| o.status.success())
    };
    if ["ip", "iptables", "tc"].iter().all(|p| present(p)) {
        return Ok(());
    }
    eprintln!("installing iproute2 and iptables");
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q", "iproute2", "iptables"])
        .status()?;
    if !status.success() {
        bail!("cannot install iproute2 and iptables");
    }
    Ok(())
}

fn build() -> anyhow::Result<()> {
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--quiet", "--package", "qkv", "--package", "linkem"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}
