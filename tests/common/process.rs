//! `qkv serve` as a child process: for tests about the process itself (its memory, its signals, its
//! log), which an in-process server cannot show.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use qkv::client::ClientConfig;
use qkv::transport::Transport;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

pub struct ServerProcess {
    child: Child,
    /// The server's log lines, read as they come by a task of their own, so that a server logging
    /// much is never blocked on a full pipe.
    log: mpsc::UnboundedReceiver<String>,
    /// The lines `log_line` read past: just after `start`, what the server logged before it served.
    pub startup_log: Vec<String>,
    /// Where it serves (loopback, whatever address it was told to listen on).
    pub addr: SocketAddr,
    pub certs: TempDir,
}

impl ServerProcess {
    /// Starts `qkv serve --certs TEMPDIR ARGS...` (listening on an ephemeral loopback port unless
    /// ARGS say `--listen`), and waits until it serves.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// [`ServerProcess::start`] with environment variables set for the server (`RUST_LOG`, say, for a
    /// test that waits for a debug line).
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temporary directory"), args, env).await
    }

    /// [`ServerProcess::start_with_env`] with the certificates in `certs` (made if missing): a server
    /// restarted on them after [`ServerProcess::crash`] is the same server to its clients.
    pub async fn start_in(certs: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut server = Self::launch_in(certs, args, env);
        server.wait_until_serving(args).await;
        server
    }

    /// Starts `qkv serve` as [`ServerProcess::start_with_env`] does, without waiting until it serves
    /// (its `addr` is unknown until [`ServerProcess::wait_until_serving`]): for a test of what it does
    /// before, such as recovering its store.
    pub fn launch(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch_in(tempfile::tempdir().expect("temporary directory"), args, env)
    }

    /// [`ServerProcess::launch`] with the certificates in `certs`.
    fn launch_in(certs: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
        command.arg("serve").arg("--certs").arg(certs.path()).args(args);
        command.envs(env.iter().copied());
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command.stderr(Stdio::piped()).kill_on_drop(true).spawn().expect("qkv serve starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let (lines, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        ServerProcess { child, log, startup_log: Vec::new(), addr: ([0, 0, 0, 0], 0).into(), certs }
    }

    /// Waits until the server launched with `args` serves, and sets `addr` from its log.
    pub async fn wait_until_serving(&mut self, args: &[&str]) {
        let server = self;
        // Where it serves, in its text log or, with --log-format json, its JSON one.
        let json = args.windows(2).any(|pair| pair == ["--log-format", "json"]);
        let (words, addr) = if json {
            (["INFO", "\"message\":\"serving\"", "\"addr\":\""], "\"addr\":\"")
        } else {
            // Not the admin listener's `admin listener serving` line, which may come first.
            (["INFO", "qkv::server: serving", "addr="], "addr=")
        };
        let serving = server.log_line(&words).await;
        let port = serving
            .rsplit(addr)
            .next()
            .and_then(|a| a.split(|c: char| c.is_whitespace() || c == '"').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|port| port.parse::<u16>().ok())
            .expect("the port in the log");
        server.addr = ([127, 0, 0, 1], port).into();
    }

    pub fn ca(&self) -> PathBuf {
        self.certs.path().join("ca.pem")
    }

    pub fn client_config(&self, transport: Transport) -> ClientConfig {
        ClientConfig { transport, ..ClientConfig::new(self.addr.to_string(), self.ca()) }
    }

    /// Reads log lines until one contains all of `words`, and returns it; the lines before it are added
    /// to `startup_log`.
    pub async fn log_line(&mut self, words: &[&str]) -> String {
        let wait = async {
            while let Some(line) = self.log.recv().await {
                if words.iter().all(|w| line.contains(w)) {
                    return line;
                }
                self.startup_log.push(line);
            }
            panic!("the server exited without logging {words:?}; it logged {:#?}", self.startup_log);
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("the log line")
    }

    fn status_field_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    /// The server's resident memory now, in MiB.
    pub fn resident_mib(&self) -> u64 {
        self.status_field_kib("VmRSS:") / 1024
    }

    /// The most resident memory the server has had, in MiB.
    pub fn peak_mib(&self) -> u64 {
        self.status_field_kib("VmHWM:") / 1024
    }

    /// The most virtual memory the server has had mapped, in MiB: what it reserved, touched or not.
    pub fn virtual_peak_mib(&self) -> u64 {
        self.status_field_kib("VmPeak:") / 1024
    }

    /// Sends SIGTERM: the server shuts down gracefully.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `STOP`, `CONT`...) to the server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the server is running");
        let sent = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
        assert!(sent.expect("kill runs").success(), "SIG{name} to {pid}");
    }

    /// The admin listener's address (a server started with `--admin`), from its `admin listener
    /// serving ... addr=IP:PORT` log line.
    pub async fn admin_addr(&mut self) -> SocketAddr {
        self.listener_addr("admin listener serving").await
    }

    /// The web listener's address (a server started with `--web`), from its `web listener serving ...
    /// addr=IP:PORT` log line.
    pub async fn web_addr(&mut self) -> SocketAddr {
        self.listener_addr("web listener serving").await
    }

    async fn listener_addr(&mut self, logged: &str) -> SocketAddr {
        // The admin listener may serve before the server does (while its store opens), so its line
        // may be among those read already.
        let line = match self.startup_log.iter().find(|line| line.contains(logged)) {
            Some(line) => line.clone(),
            None => self.log_line(&[logged]).await,
        };
        // `addr=IP:PORT`, or in JSON logs `"addr":"IP:PORT"`.
        let text = line.rsplit("addr=").next().and_then(|a| a.split_whitespace().next());
        let json = line.split("\"addr\":\"").nth(1).and_then(|a| a.split('"').next());
        [text, json]
            .into_iter()
            .flatten()
            .find_map(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr=IP:PORT in the log line: {line}"))
    }

    /// Sends SIGHUP: the server reloads its certificates.
    pub fn hang_up(&self) {
        self.signal("HUP");
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL to the server");
    }

    /// [`ServerProcess::kill`], keeping the certificates for a restart ([`ServerProcess::start_in`]).
    pub async fn crash(mut self) -> TempDir {
        self.child.kill().await.expect("SIGKILL to the server");
        self.certs
    }

    /// Waits for the server to exit; returns how it exited and what it logged since the last line
    /// read.
    pub async fn exit(mut self) -> (ExitStatus, Vec<String>) {
        let mut lines = Vec::new();
        while let Some(line) = self.log.recv().await {
            lines.push(line);
        }
        (self.child.wait().await.expect("the server's exit status"), lines)
    }
}
