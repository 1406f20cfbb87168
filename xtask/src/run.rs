//! Starting the servers and running one measurement of one target.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub const QKV: &str = "target/release/qkv";
pub const SERVER_CORE: &str = "0";
pub const CLIENT_CORE: &str = "1";
/// Every workload reads among this many keys of 64-byte values.
pub const KEYS: usize = 10_000;
pub const VALUE_SIZE: usize = 64;

/// One point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scenario {
    pub connections: u32,
    pub inflight: u32,
}

impl Scenario {
    pub fn new(connections: u32, inflight: u32) -> Self {
        Scenario { connections, inflight }
    }

    /// 1 and 50 connections × 1, 8, 64, 256 in flight, and 64 × 1 for the Redis TLS target.
    pub fn sweep() -> Vec<Scenario> {
        let mut sweep: Vec<Scenario> =
            [1, 50].into_iter().flat_map(|c| [1, 8, 64, 256].map(|m| Scenario::new(c, m))).collect();
        sweep.push(Scenario::new(64, 1));
        sweep
    }

    pub fn label(&self) -> String {
        format!("{}×{}", self.connections, self.inflight)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    QkvQuic,
    QkvTls,
    QkvTcp,
    FloorQuic,
    FloorTls,
    Redis,
    RedisTls,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::QkvQuic,
        Target::QkvTls,
        Target::QkvTcp,
        Target::FloorQuic,
        Target::FloorTls,
        Target::Redis,
        Target::RedisTls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Target::QkvQuic => "qkv QUIC",
            Target::QkvTls => "qkv TLS",
            Target::QkvTcp => "qkv TCP",
            Target::FloorQuic => "floor QUIC",
            Target::FloorTls => "floor TLS",
            Target::Redis => "Redis",
            Target::RedisTls => "Redis TLS",
        }
    }
}

/// One run of one target at one point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub target: Target,
    pub scenario: Scenario,
    pub throughput_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// Children killed and reaped when this is dropped.
#[derive(Default)]
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where each server listens.
pub struct Servers {
    pub certs: PathBuf,
    qkv: u16,
    qkv_plaintext: u16,
    floor: u16,
    redis: u16,
    redis_tls: u16,
}

/// The reports pin servers to one core and load generators to another.
pub fn require_two_cores() -> anyhow::Result<()> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("the report pins servers and load generators to different cores: it needs at least 2");
    }
    Ok(())
}

/// Whether `program --version` runs and succeeds.
fn present(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

pub fn ensure_redis() -> anyhow::Result<()> {
    if present("redis-server") && present("redis-benchmark") {
        return Ok(());
    }
    apt_install(&["redis-server", "redis-tools"])
}

/// Prometheus and promtool (one Debian package) for the tests of the admin listener's metrics.
pub fn ensure_prometheus() -> anyhow::Result<()> {
    if present("prometheus") && present("promtool") {
        return Ok(());
    }
    apt_install(&["prometheus"])
}

/// curl, the independent HTTP client of the REST API's tests (tests/web.rs).
pub fn ensure_curl() -> anyhow::Result<()> {
    if present("curl") {
        return Ok(());
    }
    apt_install(&["curl"])
}

/// The tests' Python tools (tests/requirements.txt), from PyPI: grpcio and its tools, for the gRPC
/// test's client of another implementation; schemathesis, for requests made from the OpenAPI document.
pub fn ensure_python_tools() -> anyhow::Result<()> {
    let imports = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_reflection, schemathesis"])
        .output();
    if imports.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("installing the tests' Python tools (tests/requirements.txt)");
    let installed = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", "tests/requirements.txt"])
        .status()
        .context("python3 with pip is needed for the tests' Python tools")?;
    if !installed.success() {
        bail!("installing tests/requirements.txt with pip failed");
    }
    Ok(())
}

/// A directory's npm packages, as its package-lock.json pins them: `npm ci` when its node_modules is
/// missing or older than the lock file (a lock file changed since the last install).
pub fn ensure_node_packages(dir: &str) -> anyhow::Result<()> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let dir = Path::new(dir);
    let installed = modified(&dir.join("node_modules"));
    if installed.is_some() && installed >= modified(&dir.join("package-lock.json")) {
        return Ok(());
    }
    eprintln!("installing the npm packages of {} (npm ci)", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .context("npm (Node.js) is needed for the tests' JavaScript packages")?;
    if !status.success() {
        bail!("npm ci in {} failed", dir.display());
    }
    Ok(())
}

/// Debian's Chromium, which the console's browser test drives headless (tests/browser.rs), and
/// certutil (libnss3-tools), with which the test makes it trust the server's development CA.
pub fn ensure_chromium() -> anyhow::Result<()> {
    let certutil =
        Command::new("certutil").arg("-H").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if Path::new("/usr/bin/chromium").exists() && certutil {
        return Ok(());
    }
    apt_install(&["chromium", "libnss3-tools"])
}

/// Installs Debian packages, without their recommendations and without starting the services they
/// ship: the tests start their own servers on free ports, and a Redis on :6379 or a Prometheus on
/// :9090 left running would outlive them. A machine without package lists yet gets them first.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    eprintln!("installing Debian's {}", packages.join(" and "));
    let _no_starts = NoServiceStarts::forbid();
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get is needed to install the tests' servers")
    };
    let mut installed = install()?.success();
    if !installed {
        let updated = Command::new("apt-get").args(["update", "-q"]).status()?.success();
        installed = updated && install()?.success();
    }
    if !installed {
        bail!("installing {} failed (apt-get needs root; or install them yourself)", packages.join(", "));
    }
    Ok(())
}

/// Debian's policy-rc.d, which a package's maintainer scripts ask (through invoke-rc.d and
/// deb-systemd-invoke) before they start its service: while this lives, one that answers 101
/// ("action forbidden"), unless the machine already has one (a container's usually forbids it too).
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    const POLICY: &'static str = "/usr/sbin/policy-rc.d";

    fn forbid() -> Self {
        let path = Path::new(Self::POLICY);
        if path.exists() {
            return NoServiceStarts(None);
        }
        let written = std::fs::write(
            path,
            "#!/bin/sh\n# cargo xtask test: no service starts while it installs\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        });
        // Without root, apt-get fails too, and says so.
        NoServiceStarts(written.is_ok().then_some(path))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub fn build_qkv() -> anyhow::Result<()> {
    let status =
        Command::new("cargo").args(["build", "--release", "--quiet", "--package", "qkv"]).status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    Ok(())
}

pub fn pinned(core: &str, program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", core, program]);
    command
}

/// Starts `qkv serve` on core 0, on loopback `port` with the certificates in `certs` and `extra` flags,
/// logging to `work/NAME.log`, and waits until it listens.
pub fn serve_pinned(
    work: &Path,
    certs: &Path,
    port: u16,
    extra: &[String],
    name: &str,
) -> anyhow::Result<Child> {
    let child = spawn_serve(work, certs, port, extra, name)?;
    wait_for_tcp(port, name)?;
    Ok(child)
}

/// Whether a socket listens on TCP `port` (IPv4 or IPv6), from /proc/net/tcp*: asks the kernel without
/// connecting.
pub fn tcp_listening(port: u16) -> anyhow::Result<bool> {
    const LISTEN: &str = "0A";
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1).and_then(|local| local.rsplit_once(':')).map(|(_, port)| port);
            if local_port.and_then(|port| u16::from_str_radix(port, 16).ok()) == Some(port)
                && fields.get(3) == Some(&LISTEN)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// [`serve_pinned`] without the wait: for callers that time the server's start themselves.
pub fn spawn_serve(
    work: &Path,
    certs: &Path,
    port: u16,
    extra: &[String],
    name: &str,
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(work.join(format!("{name}.log")))?;
    Ok(pinned(SERVER_CORE, QKV)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--certs"])
        .arg(certs)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Runs `work` on a thread of its own pinned to `core`, as are the threads it starts: for reports whose
/// xtask process is itself a load generator. The rest of the process keeps every core.
pub fn on_core<T: Send>(core: &str, work: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    let pinned_work = || {
        // /proc/thread-self links to PID/task/TID.
        let thread = std::fs::read_link("/proc/thread-self")?;
        let tid = thread.file_name().and_then(|tid| tid.to_str()).context("no thread id in /proc")?;
        let status = Command::new("taskset")
            .args(["--pid", "--cpu-list", core, tid])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("taskset could not pin thread {tid} to core {core}");
        }
        work()
    };
    std::thread::scope(|scope| {
        scope.spawn(pinned_work).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Stops `child` with SIGTERM, as a service manager would, and waits for it to exit: how long that
/// took. After `limit` it is killed (SIGKILL) and this is an error.
pub fn terminate(child: &mut Child, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    if !status.success() {
        bail!("kill -TERM {} failed", child.id());
    }
    while child.try_wait()?.is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} did not exit within {limit:?} of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(started.elapsed())
}

pub fn free_port() -> anyhow::Result<u16> {
    // Probe UDP and TCP together: qkv listens on both with one port number.
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port")
}

pub fn wait_for_tcp(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not start listening on port {port}")
}

/// A CA and server certificate in `work/certs`, made by `qkv cert`.
pub fn make_certs(work: &Path) -> anyhow::Result<PathBuf> {
    let certs = work.join("certs");
    let status = Command::new(QKV).args(["cert", "--dir"]).arg(&certs).stdout(Stdio::null()).status()?;
    if !status.success() {
        bail!("qkv cert failed");
    }
    Ok(certs)
}

pub fn start_servers(work: &Path, processes: &mut Processes) -> anyhow::Result<Servers> {
    let certs = make_certs(work)?;
    let servers = Servers {
        qkv: free_port()?,
        qkv_plaintext: free_port()?,
        floor: free_port()?,
        redis: free_port()?,
        redis_tls: free_port()?,
        certs,
    };
    let log = |name: &str| std::fs::File::create(work.join(format!("{name}.log")));
    let qkv = |command: &str, port: u16, extra: &[&str], name: &str| -> anyhow::Result<Child> {
        Ok(pinned(SERVER_CORE, QKV)
            .args([command, "--listen", &format!("127.0.0.1:{port}"), "--certs"])
            .arg(&servers.certs)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log(name)?)
            .spawn()?)
    };
    processes.0.push(qkv("serve", servers.qkv, &[], "qkv")?);
    processes.0.push(qkv("serve", servers.qkv_plaintext, &["--tcp-plaintext"], "qkv-plaintext")?);
    processes.0.push(qkv("floor", servers.floor, &[], "floor")?);
    let redis = |port: u16, tls: bool, name: &str| -> anyhow::Result<Child> {
        let mut command = pinned(SERVER_CORE, "redis-server");
        command.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--protected-mode", "no"]);
        if tls {
            let file = |name: &str| servers.certs.join(name).display().to_string();
            command.args(["--port", "0", "--tls-port", &port.to_string()]);
            command.args(["--tls-cert-file", &file("server.pem"), "--tls-key-file", &file("server-key.pem")]);
            command.args(["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &port.to_string()]);
        }
        Ok(command.stdout(log(name)?).stderr(Stdio::null()).spawn()?)
    };
    processes.0.push(redis(servers.redis, false, "redis")?);
    processes.0.push(redis(servers.redis_tls, true, "redis-tls")?);
    for (port, what) in [
        (servers.qkv, "qkv"),
        (servers.qkv_plaintext, "qkv (plaintext)"),
        (servers.floor, "the floor"),
        (servers.redis, "Redis"),
        (servers.redis_tls, "Redis (TLS)"),
    ] {
        wait_for_tcp(port, what)?;
    }
    // The same table for Redis as for qkv (qkv bench loads its own): 10,000 fields of 64 bytes.
    for tls in [false, true] {
        let value = "v".repeat(VALUE_SIZE);
        let keys = KEYS.to_string();
        let args = [
            "-r",
            &keys,
            "-n",
            "200000",
            "-c",
            "16",
            "-P",
            "16",
            "-q",
            "HSET",
            "bench",
            "key:__rand_int__",
            &value,
        ];
        let status = servers.redis_benchmark(tls).args(args).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("loading Redis failed");
        }
    }
    Ok(servers)
}

impl Servers {
    fn redis_benchmark(&self, tls: bool) -> Command {
        let mut command = pinned(CLIENT_CORE, "redis-benchmark");
        let port = if tls { self.redis_tls } else { self.redis };
        command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if tls {
            command.args(["--tls", "--cacert"]).arg(self.certs.join("ca.pem"));
        }
        command
    }
}

/// One run of `target` at `scenario`.
pub fn measure(
    servers: &Servers,
    target: Target,
    scenario: Scenario,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    match target {
        Target::Redis | Target::RedisTls => redis(servers, target, scenario, duration),
        _ => qkv_bench(servers, target, scenario, duration),
    }
}

fn qkv_bench(
    servers: &Servers,
    target: Target,
    scenario: Scenario,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let (port, transport, workload) = match target {
        Target::QkvQuic => (servers.qkv, "quic", "hget"),
        Target::QkvTls => (servers.qkv, "tls", "hget"),
        Target::QkvTcp => (servers.qkv_plaintext, "tcp", "hget"),
        Target::FloorQuic => (servers.floor, "quic", "echo"),
        Target::FloorTls => (servers.floor, "tls", "echo"),
        Target::Redis | Target::RedisTls => unreachable!("Redis has its own benchmark"),
    };
    let json = qkv_bench_json(port, &servers.certs, transport, workload, scenario, duration, &[])?;
    Ok(Measurement {
        target,
        scenario,
        throughput_rps: json.throughput_rps,
        p50_us: json.latency_us.p50 as f64,
        p99_us: json.latency_us.p99 as f64,
        errors: json.errors,
    })
}

/// `qkv bench --json` pinned to the client core against the server on `port`, not yet started.
pub fn qkv_bench_command(
    port: u16,
    certs: &Path,
    transport: &str,
    workload: &str,
    scenario: Scenario,
    duration: Duration,
) -> Command {
    let mut command = pinned(CLIENT_CORE, QKV);
    command
        .args(["bench", "--json", "--workload", workload, "--transport", transport])
        .args([
            "--connections",
            &scenario.connections.to_string(),
            "--inflight",
            &scenario.inflight.to_string(),
        ])
        .args(["--value-size", &VALUE_SIZE.to_string()])
        .args(["--duration", &format!("{}s", duration.as_secs()), "--warmup", "1s"])
        .args(["--addr", &format!("127.0.0.1:{port}"), "--ca"])
        .arg(certs.join("ca.pem"));
    // Only these workloads read keys (the bench refuses flags a workload would ignore).
    if matches!(workload, "hget" | "hset" | "mixed" | "connect") {
        command.args(["--keys", &KEYS.to_string()]);
    }
    command
}

/// Runs `qkv bench --json` pinned to the client core against the server on `port`.
pub fn qkv_bench_json(
    port: u16,
    certs: &Path,
    transport: &str,
    workload: &str,
    scenario: Scenario,
    duration: Duration,
    extra: &[String],
) -> anyhow::Result<qkv::bench::JsonReport> {
    let output = qkv_bench_command(port, certs, transport, workload, scenario, duration)
        .args(extra)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("qkv bench failed: {}", String::from_utf8_lossy(&output.stdout));
    }
    serde_json::from_slice(&output.stdout).context("qkv bench --json output")
}

/// Throughput and p50/p99 latency (µs) from `redis-benchmark --csv` output.
pub fn parse_redis_csv(stdout: &[u8]) -> anyhow::Result<(f64, f64, f64)> {
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().context("redis-benchmark printed nothing")?;
    let fields: Vec<f64> =
        line.split("\",\"").skip(1).filter_map(|f| f.trim_matches('"').parse().ok()).collect();
    let [rps, _avg, _min, p50, _p95, p99, ..] = fields[..] else {
        bail!("unexpected redis-benchmark output: {line}");
    };
    Ok((rps, p50 * 1000.0, p99 * 1000.0))
}

/// redis-benchmark runs a request count, not a duration: a short calibration run sets the count.
fn redis(
    servers: &Servers,
    target: Target,
    scenario: Scenario,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let tls = target == Target::RedisTls;
    let in_flight = u64::from(scenario.connections * scenario.inflight);
    let calibration = redis_run(servers, tls, scenario, (in_flight * 50).max(20_000))?;
    let requests = ((calibration.throughput_rps * duration.as_secs_f64()) as u64).max(in_flight * 10);
    let mut measurement = redis_run(servers, tls, scenario, requests)?;
    measurement.target = target;
    Ok(measurement)
}

fn redis_run(servers: &Servers, tls: bool, scenario: Scenario, requests: u64) -> anyhow::Result<Measurement> {
    let output = servers
        .redis_benchmark(tls)
        .args(["-c", &scenario.connections.to_string(), "-P", &scenario.inflight.to_string()])
        .args(["-n", &requests.to_string(), "-r", &KEYS.to_string(), "--csv"])
        .args(["HGET", "bench", "key:__rand_int__"])
        .output()?;
    if !output.status.success() {
        bail!("redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let (rps, p50_us, p99_us) = parse_redis_csv(&output.stdout)?;
    Ok(Measurement {
        target: if tls { Target::RedisTls } else { Target::Redis },
        scenario,
        throughput_rps: rps,
        p50_us,
        p99_us,
        errors: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_on_a_core_has_that_core_alone_and_the_process_keeps_the_others() {
        let cores = || std::thread::available_parallelism().map_or(1, |n| n.get());
        let before = cores();
        assert_eq!(on_core("0", || Ok(cores())).unwrap(), 1);
        assert_eq!(cores(), before);
    }
}
