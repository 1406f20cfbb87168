//! `cargo xtask lab`: QUIC against TLS over emulated mobile links, in network namespaces (root only).
//!
//! - `topology`: the namespaces, links and cleanup.
//! - `profiles`: what each link does to packets.
//! - `experiments`: the three measurements, each a `qkv bench` run in the client namespace.
//! - `report`: LAB.md, its plots and the raw results.
//!
//! Delay, jitter and loss come from `linkem` (lab/linkem), an NFQUEUE daemon in the router namespace,
//! because this kernel has no netem; bandwidth from tbf on the router's egress.
//!
//! The pieces other tasks reuse (`cargo xtask storm-report`, `browser-report`): [`prepare`], [`Session`]
//! (the namespaces and a server in them), [`Link`] (a profile in force) and [`command_in`].

mod experiments;
mod profiles;
mod report;
mod topology;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

pub use experiments::{Bench, calibrate};
pub use profiles::Profile;
pub use topology::{Namespaces, SERVER_ADDR, command_in};

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

pub const QKV: &str = "target/release/qkv";

/// Which build of qkv and linkem a task runs: measurements need release builds; a smoke run only checks
/// that the lab works, so it reuses the debug build the tests made (CI saves a release build's minutes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Release,
    Dev,
}

impl Build {
    fn dir(self) -> &'static str {
        match self {
            Build::Release => "target/release",
            Build::Dev => "target/debug",
        }
    }

    pub fn qkv(self) -> PathBuf {
        Path::new(self.dir()).join("qkv")
    }

    pub fn linkem(self) -> PathBuf {
        Path::new(self.dir()).join("linkem")
    }
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
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
    let build = if args.smoke { Build::Dev } else { Build::Release };
    prepare(build)?;
    let work = scratch("qkv-lab")?;
    let result = run_lab(build, &profiles, Duration::from_secs(seconds), &work);
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

/// What every task in namespaces needs first: root, the tools, `build`s of qkv and linkem, and an
/// interrupt handler that takes everything down again.
pub fn prepare(build: Build) -> anyhow::Result<()> {
    if !topology::is_root() {
        bail!("the lab creates network namespaces: run it as root (sudo -E cargo xtask ...)");
    }
    ensure_tools()?;
    cargo_build(build)?;
    ctrlc::set_handler(|| {
        eprintln!("interrupted: removing the lab's namespaces");
        topology::cleanup();
        std::process::exit(130);
    })
    .context("cannot install the interrupt handler")
}

/// A scratch directory named after `task` and this process, removed by [`cleanup`].
pub fn scratch(task: &str) -> anyhow::Result<PathBuf> {
    topology::scratch_directory(std::env::temp_dir().join(format!("{task}-{}", std::process::id())))
}

/// Kills what was started, removes the namespaces, restores the sysctl and the scratch directories.
pub fn cleanup() {
    topology::cleanup();
}

fn run_lab(
    build: Build,
    profiles: &[Profile],
    duration: Duration,
    work: &Path,
) -> anyhow::Result<Vec<report::ProfileResults>> {
    let session = Session::start(Namespaces::LAB, &build.qkv(), work, duration, &[])?;
    let mut results = Vec::new();
    for profile in profiles {
        eprintln!("profile {}: {}", profile.name, profile.describe());
        let link = Link::apply(session.bench.ns, profile, work, &build.linkem())?;
        let measured = experiments::run_all(&session.bench, profile);
        let link_report = link.remove()?;
        let mut measured = measured?;
        measured.link = link_report;
        results.push(measured);
    }
    session.stop()?;
    Ok(results)
}

/// The lab's namespaces with one `qkv serve` in the server namespace (QUIC and TLS on
/// 10.77.2.2:9527, a certificate issued for that address), and how to bench it from the client
/// namespace.
pub struct Session {
    pub bench: Bench,
    server: Child,
}

impl Session {
    /// Creates the namespaces `ns`, issues a certificate in `work`, starts the server (binary `qkv`)
    /// with `server_args` added, and waits until it answers. Benches use the same binary and measure
    /// for `duration`.
    pub fn start(
        ns: Namespaces,
        qkv: &Path,
        work: &Path,
        duration: Duration,
        server_args: &[&str],
    ) -> anyhow::Result<Session> {
        topology::create(ns)?;
        let certs = work.join("certs");
        let certs_arg = certs.to_string_lossy().into_owned();
        let status = std::process::Command::new(qkv)
            .args(["cert", "--dir", &certs_arg, "--name", topology::SERVER_ADDR])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("qkv cert failed");
        }
        let mut server = topology::command_in(ns.server, qkv);
        let listen = format!("{}:9527", topology::SERVER_ADDR);
        server
            .args(["serve", "--listen", &listen, "--certs", &certs_arg])
            .args(server_args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("server.log"))?);
        let server = topology::spawn(server)?;
        let bench = Bench { ns, qkv: qkv.to_owned(), addr: listen, ca: certs.join("ca.pem"), duration };
        bench.wait_for_server()?;
        Ok(Session { bench, server })
    }

    /// The server's process id (`ip netns exec` execs the server, so it is the child's).
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    pub fn stop(self) -> anyhow::Result<()> {
        topology::stop(self.server)
    }
}

/// A profile in force: its linkem daemons and tbf qdiscs.
pub struct Link {
    ns: Namespaces,
    daemons: Vec<(Child, PathBuf)>,
}

impl Link {
    /// Puts `profile` in force between the namespaces, with the `linkem` binary at that path.
    pub fn apply(ns: Namespaces, profile: &Profile, work: &Path, linkem: &Path) -> anyhow::Result<Link> {
        topology::set_bandwidth(ns, profile.mbit)?;
        let mut daemons = Vec::new();
        if profile.impairs() {
            for (queue, seed) in [(topology::UPLINK_QUEUE, 1), (topology::DOWNLINK_QUEUE, 2)] {
                let log = work.join(format!("linkem-{}-{queue}.log", profile.name));
                let mut command = topology::command_in(ns.router, linkem);
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
        Ok(Link { ns, daemons })
    }

    /// The process ids of the link daemons (none for a profile that does not impair).
    pub fn daemon_pids(&self) -> Vec<u32> {
        self.daemons.iter().map(|(daemon, _)| daemon.id()).collect()
    }

    /// Removes the profile and returns what each daemon says it did.
    pub fn remove(self) -> anyhow::Result<Vec<String>> {
        let mut reports = Vec::new();
        for (daemon, log) in self.daemons {
            topology::stop(daemon)?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            reports.extend(text.lines().last().map(|l| l.trim_start_matches("linkem: ").to_owned()));
        }
        topology::set_bandwidth(self.ns, None)?;
        Ok(reports)
    }
}

/// Starts a process in the lab and records it, so that an interrupted task stops it too.
pub fn spawn(command: std::process::Command) -> anyhow::Result<Child> {
    topology::spawn(command)
}

/// Waits for a process started with [`spawn`] to end by itself, and collects its output.
pub fn wait_output(child: Child) -> anyhow::Result<std::process::Output> {
    topology::wait_output(child)
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

fn cargo_build(build: Build) -> anyhow::Result<()> {
    let mut command = std::process::Command::new("cargo");
    command.args(["build", "--quiet", "--package", "qkv", "--package", "linkem"]);
    if build == Build::Release {
        command.arg("--release");
    }
    if !command.status()?.success() {
        bail!("cargo build of qkv and linkem failed");
    }
    Ok(())
}
