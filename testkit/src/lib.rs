//! Real Redis servers and Redis Clusters on loopback, for qkv's tests and reports: started from
//! Debian's `redis-server`, each in a temporary directory, on free ports, and gone when their handle
//! is dropped or the process that started them ends (even by SIGKILL: each node runs under a `sh`
//! that kills it when its standard input, a pipe from this process, closes). And a real Prometheus
//! scraping a test's targets, with `promtool check metrics` (see [`prometheus`]).
#![forbid(unsafe_code)]

pub mod prometheus;

pub use prometheus::{
    Prometheus, Sample, http_get, promtool_check_config, promtool_check_metrics, promtool_check_rules,
    promtool_test_rules,
};

use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a node may take to answer PING after it was started, and a cluster to agree that it is up.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One redis-server process.
pub struct RedisNode {
    pub port: u16,
    dir: TempDir,
    args: Vec<String>,
    supervisor: Option<Child>,
}

/// Runs redis-cli against `port`; its standard output.
pub fn cli(port: u16, args: &[&str]) -> io::Result<String> {
    let output =
        Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("redis-cli: {e} (install Debian's redis-tools, or run `cargo xtask test`)"),
            )
        })?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A TCP port free now, whose cluster bus port (+10000) is free too.
pub fn free_port() -> io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port pair"))
}

impl RedisNode {
    /// Starts redis-server with `args` (options as `--name value` pairs), without persistence unless
    /// `args` ask for it.
    pub fn start(args: &[&str]) -> io::Result<Self> {
        let mut last = None;
        // A port found free may be taken before redis-server binds it: try again on another.
        for _ in 0..5 {
            let port = free_port()?;
            let dir = tempfile::tempdir()?;
            let mut node =
                RedisNode { port, dir, args: args.iter().map(|a| a.to_string()).collect(), supervisor: None };
            match node.launch() {
                Ok(()) => return Ok(node),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    fn launch(&mut self) -> io::Result<()> {
        let mut command = Command::new("sh");
        // The node dies with this process: `cat` ends when the pipe to it closes.
        command
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; cat >/dev/null; kill -9 $pid 2>/dev/null"#)
            .arg("sh")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        which("redis-server", "redis-server redis-tools")?;
        self.supervisor = Some(command.spawn()?);
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            // A node that asks for a password is up too.
            let answer = cli(self.port, &["PING"])?;
            if answer.trim() == "PONG" || answer.contains("NOAUTH") {
                return Ok(());
            }
            if let Some(supervisor) = &mut self.supervisor
                && supervisor.try_wait()?.is_some()
            {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        self.stop();
        Err(io::Error::other(format!("redis-server on port {} did not start: {log}", self.port)))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The redis-server process's id.
    fn pid(&self) -> Option<u32> {
        let info = cli(self.port, &["INFO", "server"]).ok()?;
        info.lines().find_map(|line| line.trim().strip_prefix("process_id:")?.parse().ok())
    }

    /// SIGKILL: the node is gone at once, without a goodbye to its clients or its cluster.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        self.stop();
    }

    /// Starts the node again on the same port and directory (a cluster node keeps its identity, in
    /// its nodes.conf).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.launch()
    }

    fn stop(&mut self) {
        if let Some(mut supervisor) = self.supervisor.take() {
            // Closing its standard input makes the supervisor kill the node; then reap it.
            drop(supervisor.stdin.take());
            let _ = supervisor.wait();
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `program` runs; if not, an error saying which Debian `packages` provide it.
fn which(program: &str, packages: &str) -> io::Result<()> {
    match Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "{program} is not installed: `cargo xtask test` installs it, or `apt-get install {packages}`"
            ),
        )),
    }
}

/// A Redis Cluster on loopback: `masters` masters with `replicas` replicas each.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

/// Cluster options for every node: a node is judged failed after 2 s, so that a replica takes over
/// in about 4 s.
const CLUSTER_ARGS: [&str; 6] =
    ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> io::Result<Self> {
        Self::start_with(masters, replicas, &[])
    }

    /// A cluster whose every node also gets `args` (such as a memory limit).
    pub fn start_with(masters: usize, replicas: usize, args: &[&str]) -> io::Result<Self> {
        let node_args: Vec<&str> = CLUSTER_ARGS.iter().copied().chain(args.iter().copied()).collect();
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            nodes.push(RedisNode::start(&node_args)?);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()?;
        if !created.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            )));
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_until_healthy()?;
        Ok(cluster)
    }

    /// Waits until every live node says the cluster is ok and knows the same masters, and every live
    /// replica's link to its master is up (so that `WAIT` can be satisfied).
    pub fn wait_until_healthy(&self) -> io::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let live: Vec<&RedisNode> = self.nodes.iter().filter(|n| n.supervisor.is_some()).collect();
            let ok = live.iter().all(|n| {
                cli(n.port, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
                    && cli(n.port, &["INFO", "replication"])
                        .is_ok_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
            });
            let views: Vec<String> = live.iter().map(|n| masters_seen_by(n.port)).collect();
            if ok && views.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("the cluster did not become healthy: {views:?}")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// The index in `nodes` of the master that now serves `slot`, as the live nodes see it.
    pub fn master_of_slot(&self, slot: u16) -> Option<usize> {
        let seen = self.nodes.iter().find(|n| n.supervisor.is_some())?;
        let nodes = cli(seen.port, &["CLUSTER", "NODES"]).ok()?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                matches!((first.parse::<u16>(), last.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            let port = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse::<u16>().ok());
            if serves && let Some(port) = port {
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// `slot` set moving from its master to another master (`MIGRATING` on the first, `IMPORTING`
    /// on the other) without moving any key, until the returned move is dropped, which calls it off
    /// (`STABLE` on both), whatever the test found meanwhile.
    pub fn begin_slot_move(&self, slot: u16) -> io::Result<SlotMove> {
        let no_master = || io::Error::other(format!("no master serves slot {slot}"));
        let source = self.nodes[self.master_of_slot(slot).ok_or_else(no_master)?].port;
        // Three masters split the slots into 5461, 5461 and 5462: a slot 5462 further on is always
        // another master's.
        let target = self.nodes[self.master_of_slot((slot + 5462) % 16384).ok_or_else(no_master)?].port;
        if source == target {
            return Err(io::Error::other(format!("slot {slot} and the one a third further share a master")));
        }
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).map(|id| id.trim().to_owned());
        let (from, to) = (id(source)?, id(target)?);
        let slot = slot.to_string();
        let setslot = |port: u16, state: &str, node: &str| match cli(
            port,
            &["CLUSTER", "SETSLOT", &slot, state, node],
        )? {
            answer if answer.trim() == "OK" => Ok(()),
            answer => Err(io::Error::other(format!("CLUSTER SETSLOT {slot} {state} on {port}: {answer}"))),
        };
        setslot(target, "IMPORTING", &from)?;
        let moving = SlotMove { slot: slot.clone(), ports: [source, target] };
        setslot(source, "MIGRATING", &to)?;
        Ok(moving)
    }

    /// The slot of a Redis key, as the cluster computes it.
    pub fn slot_of(&self, key: &str) -> Option<u16> {
        let seen = self.nodes.iter().find(|n| n.supervisor.is_some())?;
        cli(seen.port, &["CLUSTER", "KEYSLOT", key]).ok()?.trim().parse().ok()
    }
}

/// A slot set moving between two masters ([`RedisCluster::begin_slot_move`]), called off when dropped.
pub struct SlotMove {
    slot: String,
    ports: [u16; 2],
}

impl SlotMove {
    /// Moves every key of the slot to the node it is moving to (`MIGRATE`), as a reshard does before
    /// it hands the slot over: the old master then sends commands for them on (ASK).
    pub fn move_keys(&self) -> io::Result<()> {
        let [source, target] = self.ports;
        let keys = cli(source, &["CLUSTER", "GETKEYSINSLOT", &self.slot, "1000"])?;
        let keys: Vec<&str> = keys.lines().map(str::trim).filter(|key| !key.is_empty()).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let target = target.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &target, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        match cli(source, &args)? {
            answer if answer.trim() == "OK" => Ok(()),
            answer => Err(io::Error::other(format!("MIGRATE of slot {}: {answer}", self.slot))),
        }
    }
}

impl Drop for SlotMove {
    fn drop(&mut self) {
        for port in self.ports {
            let _ = cli(port, &["CLUSTER", "SETSLOT", &self.slot, "STABLE"]);
        }
    }
}

/// The sorted ids and slots of the masters that a node knows, as a string to compare.
fn masters_seen_by(port: u16) -> String {
    let nodes = cli(port, &["CLUSTER", "NODES"]).unwrap_or_default();
    let mut masters: Vec<String> = nodes
        .lines()
        .filter(|line| line.contains("master") && !line.contains("fail"))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            format!(
                "{} {}",
                fields.first().unwrap_or(&""),
                fields.get(8..).map(|s| s.join(" ")).unwrap_or_default()
            )
        })
        .collect();
    masters.sort();
    masters.join("; ")
}
