//! The lab's network: three namespaces joined by veth pairs, and everything needed to take them down
//! again, also when the lab is interrupted.
//!
//! ```text
//!  qkvlab-client             qkvlab-router                 qkvlab-server    (the storm report: qkvstorm-*)
//!  c0 10.77.1.2/24 ──veth── rc 10.77.1.1   rs 10.77.2.1 ──veth── s0 10.77.2.2/24
//!                            FORWARD: from rc → NFQUEUE 0 (uplink), from rs → NFQUEUE 1 (downlink)
//!                            egress tbf on rc and rs (bandwidth)
//! ```
//!
//! Every process started in a namespace, the namespaces themselves and the one root-namespace sysctl
//! the lab changes are recorded in [`CLEANUP`] as they are made, so that a Ctrl-C or SIGTERM handler
//! and the normal end both undo exactly what was done.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, bail};

/// The names of one lab's three namespaces. Each task has its own (`cargo xtask lab`, `cargo xtask
/// storm-report`), so that one can run while the other does: nothing else is shared but the root
/// namespace's list of allowed congestion controllers, to which both only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    pub client: &'static str,
    pub router: &'static str,
    pub server: &'static str,
}

impl Namespaces {
    pub const LAB: Namespaces =
        Namespaces { client: "qkvlab-client", router: "qkvlab-router", server: "qkvlab-server" };
    pub const STORM: Namespaces =
        Namespaces { client: "qkvstorm-client", router: "qkvstorm-router", server: "qkvstorm-server" };

    fn all(self) -> [&'static str; 3] {
        [self.client, self.router, self.server]
    }
}
pub const SERVER_ADDR: &str = "10.77.2.2";
/// The client's address, and the one it moves to in the migration experiment.
pub const CLIENT_ADDRS: [&str; 2] = ["10.77.1.2", "10.77.1.3"];
const CLIENT_GATEWAY: &str = "10.77.1.1";
/// Netfilter queues of the two directions.
pub const UPLINK_QUEUE: u16 = 0;
pub const DOWNLINK_QUEUE: u16 = 1;
/// Router interfaces whose egress carries each direction (for tbf).
pub const UPLINK_EGRESS: &str = "rs";
pub const DOWNLINK_EGRESS: &str = "rc";
const ALLOWED_CONGESTION: &str = "net.ipv4.tcp_allowed_congestion_control";

/// What to undo.
#[derive(Default)]
struct Cleanup {
    pids: Vec<u32>,
    namespaces: Vec<&'static str>,
    /// The root namespace's allowed congestion controllers before the lab added cubic.
    allowed_congestion: Option<String>,
    /// Scratch directories (certificates, logs).
    directories: Vec<std::path::PathBuf>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    pids: Vec::new(),
    namespaces: Vec::new(),
    allowed_congestion: None,
    directories: Vec::new(),
});

fn cleanup_state() -> std::sync::MutexGuard<'static, Cleanup> {
    CLEANUP.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Kills what the lab started, deletes its namespaces, restores the sysctl. Safe to call twice.
pub fn cleanup() {
    let mut state = cleanup_state();
    for pid in state.pids.drain(..) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
    }
    for namespace in state.namespaces.drain(..) {
        let _ = Command::new("ip").args(["netns", "del", namespace]).stderr(Stdio::null()).status();
    }
    if let Some(allowed) = state.allowed_congestion.take() {
        let _ = sysctl(None, ALLOWED_CONGESTION, &allowed);
    }
    for directory in state.directories.drain(..) {
        let _ = std::fs::remove_dir_all(directory);
    }
}

/// Makes a scratch directory, removed by [`cleanup`].
pub fn scratch_directory(path: std::path::PathBuf) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(&path)?;
    cleanup_state().directories.push(path.clone());
    Ok(path)
}

/// Runs a command to completion, failing with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output =
        Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command inside `namespace`.
pub fn run_in(namespace: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", namespace, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// A command to run inside `namespace` (`ip netns exec` execs it, so the child is the program).
pub fn command_in(namespace: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace]).arg(program);
    command
}

/// Starts a long-running process and records it for cleanup.
pub fn spawn(mut command: Command) -> anyhow::Result<Child> {
    let child = command.spawn().context("cannot start a lab process")?;
    cleanup_state().pids.push(child.id());
    Ok(child)
}

/// Waits for a process started with [`spawn`] to end by itself, and collects its output.
pub fn wait_output(child: Child) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let output = child.wait_with_output();
    cleanup_state().pids.retain(|p| *p != pid);
    Ok(output?)
}

/// Stops a process started with [`spawn`] (SIGTERM, so it can report) and waits for it.
pub fn stop(mut child: Child) -> anyhow::Result<()> {
    let pid = child.id();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    child.wait()?;
    cleanup_state().pids.retain(|p| *p != pid);
    Ok(())
}

fn sysctl(namespace: Option<&str>, key: &str, value: &str) -> anyhow::Result<()> {
    let setting = format!("{key}={value}");
    match namespace {
        Some(namespace) => run_in(namespace, "sysctl", &["-q", "-w", &setting]).map(drop),
        None => run("sysctl", &["-q", "-w", &setting]).map(drop),
    }
}

/// Creates the namespaces and links, with no impairment yet (packets pass the NFQUEUE rules while
/// no daemon listens: `--queue-bypass`).
pub fn create(ns: Namespaces) -> anyhow::Result<()> {
    // Leftovers of a lab that was killed outright (SIGKILL) would make every step below fail.
    for namespace in ns.all() {
        let _ = Command::new("ip").args(["netns", "del", namespace]).stderr(Stdio::null()).status();
    }
    for namespace in ns.all() {
        run("ip", &["netns", "add", namespace])?;
        cleanup_state().namespaces.push(namespace);
    }
    run(
        "ip",
        &["link", "add", "c0", "netns", ns.client, "type", "veth", "peer", "name", "rc", "netns", ns.router],
    )?;
    run(
        "ip",
        &["link", "add", "s0", "netns", ns.server, "type", "veth", "peer", "name", "rs", "netns", ns.router],
    )?;

    // TCP's congestion controller must match quinn's (Cubic); this kernel defaults to BBR, and a
    // namespace may only pick a controller the root namespace allows.
    let allowed = std::fs::read_to_string(format!("/proc/sys/{}", ALLOWED_CONGESTION.replace('.', "/")))?;
    let allowed = allowed.trim().to_owned();
    if !allowed.split_whitespace().any(|c| c == "cubic") {
        sysctl(None, ALLOWED_CONGESTION, &format!("{allowed} cubic"))?;
        cleanup_state().allowed_congestion = Some(allowed);
    }

    let client = ns.client;
    run_in(client, "ip", &["link", "set", "lo", "up"])?;
    // Without promote_secondaries, removing the first address would remove the second with it.
    sysctl(Some(client), "net.ipv4.conf.all.promote_secondaries", "1")?;
    sysctl(Some(client), "net.ipv4.conf.c0.promote_secondaries", "1")?;
    run_in(client, "ip", &["addr", "add", &format!("{}/24", CLIENT_ADDRS[0]), "dev", "c0"])?;
    run_in(client, "ip", &["link", "set", "c0", "up"])?;
    run_in(client, "ip", &["route", "add", "default", "via", CLIENT_GATEWAY])?;
    sysctl(Some(client), "net.ipv4.tcp_congestion_control", "cubic")?;

    let server = ns.server;
    run_in(server, "ip", &["link", "set", "lo", "up"])?;
    run_in(server, "ip", &["addr", "add", &format!("{SERVER_ADDR}/24"), "dev", "s0"])?;
    run_in(server, "ip", &["link", "set", "s0", "up"])?;
    run_in(server, "ip", &["route", "add", "default", "via", "10.77.2.1"])?;
    sysctl(Some(server), "net.ipv4.tcp_congestion_control", "cubic")?;

    let router = ns.router;
    run_in(router, "ip", &["link", "set", "lo", "up"])?;
    run_in(router, "ip", &["addr", "add", &format!("{CLIENT_GATEWAY}/24"), "dev", "rc"])?;
    run_in(router, "ip", &["addr", "add", "10.77.2.1/24", "dev", "rs"])?;
    run_in(router, "ip", &["link", "set", "rc", "up"])?;
    run_in(router, "ip", &["link", "set", "rs", "up"])?;
    sysctl(Some(router), "net.ipv4.ip_forward", "1")?;
    for (from, queue) in [("rc", UPLINK_QUEUE), ("rs", DOWNLINK_QUEUE)] {
        let queue = queue.to_string();
        let rule = ["-A", "FORWARD", "-i", from, "-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"];
        run_in(router, "iptables", &rule)?;
    }
    Ok(())
}

/// Limits the rate of both directions with tbf on the router's egress, or removes the limit.
pub fn set_bandwidth(ns: Namespaces, mbit: Option<u32>) -> anyhow::Result<()> {
    for device in [UPLINK_EGRESS, DOWNLINK_EGRESS] {
        let _ = run_in(ns.router, "tc", &["qdisc", "del", "dev", device, "root"]);
        if let Some(mbit) = mbit {
            // A queue of 100 ms at the link rate, and bursts of 64 KB: a GSO packet must fit a burst.
            let rate = format!("{mbit}mbit");
            run_in(
                ns.router,
                "tc",
                &[
                    "qdisc", "add", "dev", device, "root", "tbf", "rate", &rate, "burst", "64kb", "latency",
                    "100ms",
                ],
            )?;
        }
    }
    Ok(())
}

/// Moves the client to its other address, as a phone does from Wi-Fi to cellular: the new address
/// is added, then the old one removed (sockets bound to it lose their path).
pub fn move_client(ns: Namespaces, from: &str, to: &str) -> anyhow::Result<()> {
    run_in(ns.client, "ip", &["addr", "add", &format!("{to}/24"), "dev", "c0"])?;
    run_in(ns.client, "ip", &["addr", "del", &format!("{from}/24"), "dev", "c0"])?;
    // Removing the primary address may take the default route with it.
    run_in(ns.client, "ip", &["route", "replace", "default", "via", CLIENT_GATEWAY])?;
    Ok(())
}

/// True when running as root (the lab creates namespaces).
pub fn is_root() -> bool {
    run("id", &["-u"]).is_ok_and(|uid| uid.trim() == "0")
}
