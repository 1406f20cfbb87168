//! Command-line arguments. Defaults come from the library, so the CLI and the library never disagree.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use qkv::bench::{KeyDist, Workload};
use qkv::pubsub::LagPolicy;
use qkv::server::{DEFAULT_LISTEN, RuntimeLayout, ServerConfig, TcpMode};
use qkv::service::{DEFAULT_RESPONSE_FRAME_TARGET, ItemLimits, ServiceConfig};
use qkv::stat::AdminAddr;
use qkv::storage::Durability;
use qkv::transport::quic::{Congestion, QuicOptions};
use qkv::transport::{Limits, Transport};

use super::output::CliError;

#[derive(Parser)]
#[command(
    name = "qkv",
    version,
    about = "A key-value server over QUIC, and its client",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server (QUIC on UDP; certificates generated in --certs on first start).
    Serve(Box<ServeArgs>),
    /// Create a CA (if the directory has none) and a server certificate signed by it.
    Cert(CertArgs),
    /// Print the value of KEY in TABLE.
    Hget {
        table: String,
        key: String,
        /// Write the value's bytes to FILE as they are (`-`: standard output), with nothing added: a
        /// binary value byte for byte, where printing shows it with \xNN escapes; text as UTF-8; a
        /// number or boolean as it prints.
        #[arg(long, short = 'o', value_name = "FILE", conflicts_with = "with_version")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        show: ShowArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print every key and value of TABLE, sorted by key.
    Hgetall {
        table: String,
        #[command(flatten)]
        show: ShowArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the values of several keys of TABLE, one per line, "(nil)" for a missing key.
    Hmget {
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        show: ShowArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY in TABLE to VALUE and print the key's new version.
    Hset {
        table: String,
        key: String,
        /// The value (any bytes with --type binary); or --value-file.
        #[arg(allow_hyphen_values = true, required_unless_present = "value_file")]
        value: Option<OsString>,
        /// Read the value from FILE instead, whole (`-`: standard input): its bytes with --type binary,
        /// its UTF-8 text otherwise (with int, float and bool, without the newline it ends with).
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        typed: TypeArgs,
        /// Write only if the key's current version is N (as printed by hset or hget --with-version).
        #[arg(long, value_name = "N", conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Write only if the key does not exist yet.
        #[arg(long)]
        if_absent: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set several KEY=VALUE pairs in TABLE and print their new versions, one per line.
    Hmset {
        table: String,
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = clap::builder::TypedValueParser::try_map(clap::builder::OsStringValueParser::new(), parse_pair))]
        pairs: Vec<(String, Vec<u8>)>,
        #[command(flatten)]
        typed: TypeArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete KEY from TABLE and print the value it held.
    Hdel {
        table: String,
        key: String,
        /// Delete only if the key's current version is N.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete several keys from TABLE and print the values they held ("(nil)" if none).
    Hmdel {
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print "true" if KEY exists in TABLE, "false" if not.
    Hexist {
        table: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print "true" or "false" for each key, one per line.
    Hmexist {
        table: String,
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Subscribe to TOPIC and print each message published to it as it arrives, one per line (its
    /// values tab-separated); until Ctrl-C, or --count messages. Says `subscribed to "TOPIC"` on
    /// stderr once the server has registered the subscription.
    Subscribe {
        topic: String,
        /// Exit after this many messages (at least 1).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish a message of one or more VALUEs to TOPIC and print how many subscribers it was
    /// delivered to.
    Publish {
        topic: String,
        /// The message's values (a value that starts with '-' and is not a number goes after `--`); or
        /// --value-file.
        #[arg(required_unless_present = "value_file", allow_negative_numbers = true)]
        values: Vec<OsString>,
        /// Publish one value read from FILE instead, whole (`-`: standard input), as hset reads one: for
        /// values that do not fit on a command line.
        #[arg(long, value_name = "FILE", conflicts_with = "values")]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        typed: TypeArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Load the server for a while and report throughput and latency.
    Bench(BenchArgs),
    /// Run a floor server: echo on QUIC and TCP with qkv's settings but no KV work, to measure what the
    /// transports cost (`qkv bench --workload echo` against it).
    Floor(FloorArgs),
    /// Watch a server live from its admin listener (qkv serve --admin ADDR): each interval, requests/s
    /// and errors/s, p50 and p99, connections by transport, storage, pub/sub and limits hit.
    Stat(StatArgs),
    /// Make a disk store's directory open again when `qkv serve` refused it because its last log
    /// segment is damaged with whole records after the damage: cuts the log where the damage starts and
    /// keeps the bytes cut off in a file beside it. Run it with no server on the directory.
    Repair(RepairArgs),
    /// Measure round trips to the server.
    Ping {
        /// Text (UTF-8) to send, echoed by the server.
        #[arg(default_value = "", allow_hyphen_values = true)]
        payload: String,
        /// Number of pings, one after the other (at least 1).
        #[arg(long, short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct StatArgs {
    /// The admin listener, HOST:PORT or http://HOST:PORT, as given to qkv serve --admin.
    #[arg(long, value_name = "ADDR", env = "QKV_ADMIN")]
    pub admin: AdminAddr,
    /// Time between two lines, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: Duration,
    /// Stop after N intervals (at least 1; default: until Ctrl-C).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Print one JSON object per interval, one per line, instead of the table (fields in
    /// docs/OPERATIONS.md).
    #[arg(long)]
    pub json: bool,
    /// Under each line, one per command answered in the interval: requests/s, errors/s, p50, p99.
    #[arg(long, conflicts_with = "json")]
    pub by_command: bool,
    /// How long one scrape of /metrics may take, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Args)]
pub struct RepairArgs {
    /// The disk store's directory, as given to qkv serve --data-dir.
    #[arg(long, default_value = "data", env = "QKV_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// `--read-ratio`'s default.
const DEFAULT_READ_RATIO: f64 = 0.9;

/// `--subscribers`'s default.
const DEFAULT_SUBSCRIBERS: usize = 100;

/// Defaults of the bench's flags that some workloads or transports do not use: one given otherwise is
/// refused there (`BenchArgs::validate`).
const DEFAULT_VALUE_SIZE: usize = 64;
const DEFAULT_KEYS: u64 = 10_000;
const DEFAULT_CONNECT_CONCURRENCY: u32 = 64;
const DEFAULT_CONNECTIONS_PER_SOCKET: u32 = 16;
const DEFAULT_INITIAL_RTT: Duration = Duration::from_millis(333);

#[derive(Args)]
pub struct BenchArgs {
    /// What each request does; echo needs a floor server (qkv floor).
    #[arg(long, value_enum, default_value_t = WorkloadArg::Hget)]
    pub workload: WorkloadArg,
    /// For the mixed workload: the share of reads (Hget); the rest are writes (Hset).
    #[arg(long, default_value_t = DEFAULT_READ_RATIO, allow_negative_numbers = true)]
    pub read_ratio: f64,
    /// For the fan-out workload: subscribers that read every message, each on a connection of its own.
    #[arg(long, default_value_t = DEFAULT_SUBSCRIBERS)]
    pub subscribers: usize,
    /// For the fan-out workload: subscribers that never read (each on a connection of its own).
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Connections to open.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// How many connections to open at once (handshakes in flight at a time) before the run: enough to
    /// hide round trips on a slow path, few enough not to pile handshakes up at the server.
    #[arg(long, default_value_t = DEFAULT_CONNECT_CONCURRENCY, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// QUIC: how many connections share one UDP socket (one client endpoint); 1 gives each its own, as
    /// separate devices would have. 16 keeps 10,000 connections under the usual 1024 open files.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS_PER_SOCKET, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections_per_socket: u32,
    /// Requests in flight per connection: always this many in a closed loop, at most this many with --rate.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub inflight: u32,
    /// Open loop: send this many requests per second in all, whatever the answers do; latency counts
    /// from when each request was due (released by a pacer thread, within tens of µs), so queueing is
    /// not hidden. For the fan-out workload: publishes per second.
    #[arg(long, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// How long to measure, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Size of the values written and read (echo: of the message), in bytes.
    #[arg(long, default_value_t = DEFAULT_VALUE_SIZE)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = DEFAULT_KEYS, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = KeyDistArg::Uniform)]
    pub key_dist: KeyDistArg,
    /// Seed of the key choices, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Connect workload: keep session tickets between connections, so that each after the first
    /// resumes (0-RTT over QUIC, a resumed session over TLS).
    #[arg(long)]
    pub zero_rtt: bool,
    /// Add completions and errors per slot of this width (e.g. 100ms) to the JSON.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeline: Option<Duration>,
    /// Print exactly one JSON object on stdout at the end, and nothing else there.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WorkloadArg {
    Ping,
    Hget,
    Hset,
    Mixed,
    Echo,
    /// A new connection for every request, then one Hget: latency from connect to first answer.
    Connect,
    /// Publish to --subscribers readers (and --stalled that never read); reports deliveries per second
    /// and publish-to-delivery latency. --connections × --inflight publishers.
    Fanout,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyDistArg {
    Uniform,
    /// Zipfian, exponent 0.99: a few keys take most of the requests.
    Zipf,
}

/// The highest `--rate`: a pacer releases a request every 100 ns at it, beyond what a server answers.
const MAX_RATE: f64 = 10_000_000.0;

impl BenchArgs {
    /// Refuses values the bench cannot run with, and flags the workload chosen would ignore (a run
    /// that silently measured something else than asked would mislead).
    pub fn validate(&self) -> Result<(), CliError> {
        let invalid = |what: String| Err(CliError::InvalidInput(what));
        let workload = self.workload.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
        if let Some(rate) = self.rate
            && !(rate > 0.0 && rate <= MAX_RATE)
        {
            return invalid(format!(
                "--rate must be a number of requests per second above 0 and at most {MAX_RATE}, not {rate}"
            ));
        }
        if self.duration.is_zero() {
            return invalid("--duration must be longer than zero".into());
        }
        // A request carries its value with a table and key name besides: a value of the whole frame
        // could never be sent (the client refused every request, "request of N bytes exceeds...").
        let max_value = qkv::transport::DEFAULT_MAX_FRAME_LEN - 1024;
        if self.value_size > max_value {
            return invalid(format!(
                "--value-size {} is more than a request can carry: at most {max_value} bytes (a frame is at most {} bytes, table, key and framing included)",
                self.value_size,
                qkv::transport::DEFAULT_MAX_FRAME_LEN
            ));
        }
        if self.timeline.is_some_and(|slot| slot.is_zero()) {
            return invalid("--timeline must be a slot longer than zero, e.g. 100ms".into());
        }
        if self.timeline.is_some() && !self.json {
            return invalid("--timeline adds a timeline to the JSON report: use it with --json".into());
        }
        let fanout = matches!(self.workload, WorkloadArg::Fanout);
        let ignored = [
            (self.zero_rtt && !matches!(self.workload, WorkloadArg::Connect), "--zero-rtt", "connect"),
            (self.stalled > 0 && !fanout, "--stalled", "fanout"),
            (self.subscribers != DEFAULT_SUBSCRIBERS && !fanout, "--subscribers", "fanout"),
            (
                self.read_ratio != DEFAULT_READ_RATIO && !matches!(self.workload, WorkloadArg::Mixed),
                "--read-ratio",
                "mixed",
            ),
        ];
        if let Some((_, flag, for_workload)) = ignored.iter().find(|(ignored, ..)| *ignored) {
            return invalid(format!(
                "{flag} is for the {for_workload} workload only; the {workload} workload would ignore it"
            ));
        }
        let keyed = matches!(
            self.workload,
            WorkloadArg::Hget | WorkloadArg::Hset | WorkloadArg::Mixed | WorkloadArg::Connect
        );
        let connect = matches!(self.workload, WorkloadArg::Connect);
        let unused = [
            (
                self.value_size != DEFAULT_VALUE_SIZE && matches!(self.workload, WorkloadArg::Ping),
                "--value-size",
            ),
            (self.keys != DEFAULT_KEYS && !keyed, "--keys"),
            (!matches!(self.key_dist, KeyDistArg::Uniform) && !keyed, "--key-dist"),
            // The connect workload opens a connection per request, all on one socket.
            (self.connect_concurrency != DEFAULT_CONNECT_CONCURRENCY && connect, "--connect-concurrency"),
            (
                self.connections_per_socket != DEFAULT_CONNECTIONS_PER_SOCKET && connect,
                "--connections-per-socket",
            ),
        ];
        if let Some((_, flag)) = unused.iter().find(|(unused, _)| *unused) {
            return invalid(format!("the {workload} workload does not use {flag}: it would be ignored"));
        }
        if self.zero_rtt && self.client.no_0rtt {
            return invalid(
                "--zero-rtt (resume, sending in 0-RTT over QUIC) and --no-0rtt contradict each other".into(),
            );
        }
        if self.client.transport != Transport::Quic {
            let quic = &self.client.quic;
            let quic_only = [
                (self.client.no_0rtt, "--no-0rtt"),
                (quic.no_gso, "--no-gso"),
                (quic.no_mtu_discovery, "--no-mtu-discovery"),
                (quic.congestion != Congestion::Cubic, "--congestion"),
                (quic.initial_rtt != DEFAULT_INITIAL_RTT, "--initial-rtt"),
                (self.connections_per_socket != DEFAULT_CONNECTIONS_PER_SOCKET, "--connections-per-socket"),
            ];
            if let Some((_, flag)) = quic_only.iter().find(|(given, _)| *given) {
                return invalid(format!(
                    "{flag} is for QUIC; over --transport {} it would be ignored",
                    self.client.transport
                ));
            }
        }
        Ok(())
    }

    pub fn workload(&self) -> Result<Workload, CliError> {
        Ok(match self.workload {
            WorkloadArg::Ping => Workload::Ping,
            WorkloadArg::Hget => Workload::Hget,
            WorkloadArg::Hset => Workload::Hset,
            WorkloadArg::Mixed if (0.0..=1.0).contains(&self.read_ratio) => {
                Workload::Mixed { read_ratio: self.read_ratio }
            }
            WorkloadArg::Mixed => {
                return Err(CliError::InvalidInput(format!(
                    "--read-ratio must be between 0 and 1, not {}",
                    self.read_ratio
                )));
            }
            WorkloadArg::Echo => Workload::Echo,
            WorkloadArg::Connect => Workload::Connect,
            WorkloadArg::Fanout => Workload::Fanout { subscribers: self.subscribers, stalled: self.stalled },
        })
    }

    pub fn key_dist(&self) -> KeyDist {
        match self.key_dist {
            KeyDistArg::Uniform => KeyDist::Uniform,
            KeyDistArg::Zipf => KeyDist::Zipf,
        }
    }
}

#[derive(Args)]
pub struct FloorArgs {
    /// Address for QUIC (UDP) and TCP (the same port number).
    #[arg(long, default_value = "127.0.0.1:9528")]
    pub listen: SocketAddr,
    /// Certificate directory, as for qkv serve.
    #[arg(long, default_value = "certs")]
    pub certs: PathBuf,
    /// Plaintext TCP instead of TLS.
    #[arg(long, conflicts_with = "no_tcp")]
    pub tcp_plaintext: bool,
    /// QUIC only.
    #[arg(long)]
    pub no_tcp: bool,
    #[command(flatten)]
    pub quic: QuicArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl FloorArgs {
    pub fn tcp(&self) -> TcpMode {
        tcp_mode(self.no_tcp, self.tcp_plaintext)
    }
}

fn tcp_mode(no_tcp: bool, plaintext: bool) -> TcpMode {
    match (no_tcp, plaintext) {
        (true, _) => TcpMode::Off,
        (false, true) => TcpMode::Plaintext,
        (false, false) => TcpMode::Tls,
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file: every key is one of these flags with - as _ (`qkv serve
    /// --print-config` prints them all). A flag or a QKV_<KEY> environment variable overrides a key.
    #[arg(long, value_name = "FILE", env = super::config::CONFIG_VARIABLE)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file, environment and flags applied; every default included;
    /// credentials removed) as TOML and exit: the way to start a config file.
    #[arg(long)]
    pub print_config: bool,
    /// Address for QUIC (UDP) and TCP (the same port number).
    #[arg(long, default_value_t = DEFAULT_LISTEN, env = "QKV_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the admin listener: plaintext HTTP with /metrics (Prometheus), /healthz and /readyz,
    /// for loopback or a private network only (docs/OPERATIONS.md). Off unless set; metrics are
    /// recorded only with it.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Address of the web listener: the REST API and gRPC (service qkv.v1.Kv) on one port, over HTTPS
    /// with the server's certificates (HTTP/2 and HTTP/1.1), mutual TLS with --client-ca
    /// (docs/HTTP.md). Off unless set.
    #[arg(long, value_name = "ADDR")]
    pub web: Option<SocketAddr>,
    /// Serve the web listener in plaintext HTTP (HTTP/1.1, and HTTP/2 with prior knowledge, as gRPC
    /// clients speak it): for loopback behind a TLS-terminating proxy only. Needs --web (checked once
    /// the flags, the environment and the config file are put together: either may come from any).
    #[arg(long)]
    pub web_plaintext: bool,
    /// Largest request head on the web listener (HTTP/1.1's request line and headers; HTTP/2's decoded
    /// header list): names travel in URLs, so this also bounds the table and key names REST can address.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub web_max_header_size: usize,
    /// A web page origin allowed to open WebTransport and WebSocket sessions (scheme://host[:port], or
    /// `*` for any), besides the web listener's own (its console); repeatable or comma-separated.
    /// Pages of other origins are refused with 403 (docs/SECURITY.md, "Browsers").
    #[arg(long = "web-origin", value_name = "ORIGIN", value_delimiter = ',')]
    pub web_origins: Vec<String>,
    /// A host name the web listener answers to besides IP addresses, `localhost` and its certificate's
    /// names, such as the public name a proxy forwards (or `*` for any); repeatable or comma-separated.
    /// Requests for other names are refused with 421, which stops DNS rebinding (docs/SECURITY.md,
    /// "Browsers").
    #[arg(long = "web-host", value_name = "NAME", value_delimiter = ',')]
    pub web_hosts: Vec<String>,
    /// The certificate WebTransport sessions (browsers, on the QUIC port) are presented: one the
    /// server issues itself every week (ECDSA P-256, valid 13 days), which browsers trust by the hash
    /// published at /webtransport-cert; or the server's own, when browsers trust its CA.
    #[arg(long, value_name = "WHICH", default_value = "self-issued")]
    pub webtransport_cert: qkv::tls::WebTransportCert,
    /// Largest WebSocket message a client may send on /ws, and the largest gRPC Pipeline message
    /// (clients split larger frames); the server sends none larger either.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub websocket_max_message: usize,
    /// Log lines as text, or as JSON objects one per line (for log shippers). RUST_LOG sets what is
    /// logged, e.g. RUST_LOG=info,qkv::connection=warn drops the line each connection logs as it ends.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve plaintext TCP instead of TLS over TCP (QUIC is unaffected). For trusted networks and
    /// clients without TLS, such as the course's.
    #[arg(long, conflicts_with = "no_tcp")]
    pub tcp_plaintext: bool,
    /// Serve QUIC only.
    #[arg(long)]
    pub no_tcp: bool,
    /// Certificate directory: ca.pem, server.pem and keys; generated when it holds none (with a warning
    /// when the directory itself was missing).
    #[arg(long, default_value = "certs", env = "QKV_CERTS")]
    pub certs: PathBuf,
    /// Require every client to present a certificate signed by a CA in this PEM file (mutual TLS, on
    /// QUIC and TLS over TCP), e.g. certs/ca.pem with certificates from `qkv cert --client NAME`.
    #[arg(long, value_name = "FILE", env = "QKV_CLIENT_CA", conflicts_with = "tcp_plaintext")]
    pub client_ca: Option<PathBuf>,
    /// Storage backend: memory (the default), disk (durable, in --data-dir) or redis (Redis Cluster or
    /// one Redis at --redis: this server is then a stateless gateway, one of many).
    #[arg(long, value_enum, default_value_t = Store::Memory)]
    pub store: Store,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Where the disk store keeps its data (its log and snapshots); created if missing, with a warning.
    #[arg(long, default_value = "data", env = "QKV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The disk store writes a snapshot (and drops the log before it) once its log since the last one
    /// is larger than this and than the last snapshot, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub snapshot_log_size: usize,
    /// When a write to the disk store is acknowledged: strict, once it is on disk (fsync); relaxed,
    /// once the operating system has it (it survives the server's crash), with what it has flushed to
    /// disk every --flush-interval (a crash of the machine loses at most that much).
    #[arg(long, value_enum, default_value_t = DurabilityMode::Strict)]
    pub durability: DurabilityMode,
    /// With --durability relaxed: how often committed writes are flushed to disk, e.g. 10ms (with
    /// strict durability, which makes every write durable before its answer, any other value than the
    /// default is refused; the default passes, since --print-config writes it).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// With --store disk: while the server stays busy, how long writes gather before they are written
    /// and fsynced together, e.g. 2ms. A server that runs out of work commits at once; longer means
    /// fewer fsyncs on a saturated server, and its writes answered that much later.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    pub commit_wait: Duration,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Largest frame accepted or sent, e.g. 16MiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_frame_size)]
    pub max_frame_size: usize,
    /// Requests in progress per connection (QUIC: streams being served, with up to as many more open and
    /// waiting; TCP: pipelined requests read but not yet answered). At most 16384.
    #[arg(long, alias = "max-streams", default_value_t = Limits::default().max_concurrent_requests, value_parser = clap::value_parser!(u32).range(1..=i64::from(qkv::transport::MAX_CONCURRENT_REQUESTS)))]
    pub max_concurrent_requests: u32,
    /// Connections served at once; more are refused.
    #[arg(long, default_value_t = Limits::default().max_connections, value_parser = parse_at_least_one)]
    pub max_connections: usize,
    /// Request bytes one connection may have buffered at once (at least one maximum-size frame); on a
    /// pipelined byte stream (TCP, TLS, a WebSocket, a gRPC Pipeline call), answers waiting to be
    /// written count too; on QUIC, answers not yet written, and on the web listener, answer frames
    /// larger than a piece, have a share of this size of their own (while they fill it, the
    /// connection's next requests wait to run).
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub max_request_buffer: usize,
    /// Request bytes a QUIC connection may send ahead of what the server has read (flow control);
    /// reserved from --connection-memory for every QUIC connection.
    #[arg(long, default_value = "256KiB", value_parser = parse_window)]
    pub connection_window: usize,
    /// Reply bytes a QUIC connection may have unacknowledged (what a client that stops reading can make
    /// the server hold for it); reserved from --connection-memory for every QUIC connection.
    #[arg(long, default_value = "256KiB", value_parser = parse_window)]
    pub send_window: usize,
    /// Memory all connections together can make the server hold: their windows and buffers, request
    /// bytes, answers waiting, published messages queued for subscribers. New connections are refused
    /// when it cannot take their share; requests wait (then 503). Default: a quarter of the machine's
    /// (or cgroup's) memory.
    #[arg(long, value_parser = parse_nonzero_size)]
    pub connection_memory: Option<usize>,
    /// How long a request waits for --connection-memory before it is refused with 503, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    pub memory_wait: Duration,
    /// QUIC handshakes from unvalidated addresses in progress at once; beyond it, new clients must
    /// prove their address with a Retry (one more round trip), so spoofed Initials cannot hold places.
    #[arg(long, default_value_t = Limits::default().max_unvalidated_handshakes)]
    pub max_unvalidated_handshakes: usize,
    /// Longest table name accepted.
    #[arg(long, default_value = "1KiB", value_parser = parse_nonzero_size)]
    pub max_table_size: usize,
    /// Longest key accepted.
    #[arg(long, default_value = "16KiB", value_parser = parse_nonzero_size)]
    pub max_key_size: usize,
    /// Largest value accepted (encoded).
    #[arg(long, default_value = "4MiB", value_parser = parse_nonzero_size)]
    pub max_value_size: usize,
    /// Memory the store's data may take (memory and disk stores: the disk store serves from memory);
    /// writes beyond it are refused with status 507 while reads and deletes keep working. Default:
    /// half of the machine's (or cgroup's) memory.
    #[arg(long, value_parser = parse_nonzero_size)]
    pub memory_budget: Option<usize>,
    /// Hgetall scans running at once; more wait. Each holds a snapshot of its table's keys; one whose
    /// client stops reading gives its slot to a waiting one after 250 ms.
    #[arg(long, default_value_t = ServiceConfig::default().max_concurrent_scans, value_parser = parse_at_least_one)]
    pub max_concurrent_scans: usize,
    /// Messages each subscriber's queue holds before --lag-policy applies to it.
    #[arg(long, default_value_t = ServiceConfig::default().subscriber_queue, value_parser = parse_at_least_one)]
    pub subscriber_queue: usize,
    /// Bytes of messages each subscriber's queue holds before --lag-policy applies to it (an empty
    /// queue takes any message), e.g. 16MiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_nonzero_size)]
    pub subscriber_queue_bytes: usize,
    /// What happens to a subscriber whose queue is full when a message is published: skip (it misses
    /// the message and is told how many it missed) or drop (its subscription ends with status 429).
    #[arg(
        long,
        default_value_t = ServiceConfig::default().lag_policy,
        value_parser = clap::builder::TypedValueParser::try_map(
            clap::builder::PossibleValuesParser::new(qkv::pubsub::LagPolicy::ALL.map(|p| p.name())),
            |s| s.parse::<LagPolicy>()
        )
    )]
    pub lag_policy: LagPolicy,
    /// Abandon a reply the client reads less than --reply-min-progress of in this long, once it has to
    /// wait, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub reply_timeout: Duration,
    /// What a client must read of a waiting reply within --reply-timeout, e.g. 16KiB.
    #[arg(long, default_value = "16KiB", value_parser = parse_size)]
    pub reply_min_progress: usize,
    /// Time a client has to send a whole request, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,
    /// Close connections idle for this long, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before connections are closed regardless.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Requested UDP socket buffer size, at least 64 KiB (the kernel caps it at net.core.rmem_max /
    /// wmem_max; the server warns when it did).
    #[arg(long, default_value = "4MiB", value_parser = parse_udp_socket_buffer)]
    pub udp_socket_buffer: usize,
    /// The most bytes of values one Hmget answer may carry (it is built whole before it is sent, and a
    /// request may name one large value many times); beyond, 413.
    #[arg(long, default_value = "64MiB", value_parser = parse_nonzero_size)]
    pub max_answer_size: usize,
    /// Responses larger than this are sent as several frames. Default: 64 KiB, or --max-frame-size if
    /// that is smaller.
    #[arg(long, value_parser = parse_nonzero_size)]
    pub response_frame_target: Option<usize>,
    /// TLS sessions remembered for resumption (0-RTT over QUIC), per transport; each ticket resumes
    /// one connection.
    #[arg(long, default_value_t = qkv::tls::DEFAULT_SESSION_CACHE, value_parser = parse_session_cache)]
    pub session_cache: usize,
    /// Accept no 0-RTT early data (QUIC): a resuming client then sends its requests after the
    /// handshake, one round trip later. By default read-only requests are served from early data and
    /// writes wait for the handshake.
    #[arg(long)]
    pub no_0rtt: bool,
    #[command(flatten)]
    pub quic: QuicArgs,
}

/// QUIC path settings, the same for servers and clients.
#[derive(Args)]
pub struct QuicArgs {
    /// QUIC congestion controller: cubic (as Linux TCP, the fair comparison), newreno, or bbr.
    #[arg(long, default_value_t = Congestion::Cubic)]
    pub congestion: Congestion,
    /// RTT assumed before the first measurement; it sets the first retransmission timeout, e.g. 333ms.
    #[arg(long, default_value = "333ms", value_parser = humantime::parse_duration)]
    pub initial_rtt: Duration,
    /// Turn off generic segmentation offload (several UDP packets per system call).
    #[arg(long)]
    pub no_gso: bool,
    /// Turn off path MTU discovery on this side: what it sends stays within 1200-byte packets, QUIC's
    /// minimum. Saves its probe, and the peer's acknowledgement, on every connection: for fleets of
    /// short connections (reconnect storms), on the server and on those clients. Costs about 21% more
    /// packets for anything larger than one.
    #[arg(long)]
    pub no_mtu_discovery: bool,
}

impl QuicArgs {
    pub fn options(&self) -> QuicOptions {
        QuicOptions {
            congestion: self.congestion,
            initial_rtt: self.initial_rtt,
            segmentation_offload: !self.no_gso,
            mtu_discovery: !self.no_mtu_discovery,
        }
    }
}

/// `--flush-interval`'s default, which strict durability ignores.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// The longest `--commit-wait`: beyond it a busy server's writes would look stuck.
const MAX_COMMIT_WAIT: Duration = Duration::from_millis(100);

impl ServeArgs {
    pub fn durability(&self) -> Result<Durability, CliError> {
        match self.durability {
            // A setting that would be ignored is a mistake to point out, not to pass over.
            DurabilityMode::Strict if self.flush_interval != DEFAULT_FLUSH_INTERVAL => {
                Err(CliError::InvalidInput(format!(
                    "--flush-interval {} applies only with --durability relaxed: strict durability makes every \
                     write durable before its answer; leave it out, or choose relaxed",
                    humantime::format_duration(self.flush_interval)
                )))
            }
            DurabilityMode::Strict => Ok(Durability::Strict),
            DurabilityMode::Relaxed if self.flush_interval.is_zero() => Err(CliError::InvalidInput(
                "--flush-interval must be longer than zero (or use --durability strict)".into(),
            )),
            DurabilityMode::Relaxed => Ok(Durability::Relaxed { flush_interval: self.flush_interval }),
        }
    }

    /// `--commit-wait`, within what a write may sensibly be held for.
    pub fn commit_wait(&self) -> Result<Duration, CliError> {
        if self.commit_wait > MAX_COMMIT_WAIT {
            return Err(CliError::InvalidInput(format!(
                "--commit-wait {} holds writes too long: at most {}",
                humantime::format_duration(self.commit_wait),
                humantime::format_duration(MAX_COMMIT_WAIT)
            )));
        }
        Ok(self.commit_wait)
    }

    pub fn config(&self) -> ServerConfig {
        let tcp = tcp_mode(self.no_tcp, self.tcp_plaintext);
        let mut config = ServerConfig {
            listen: self.listen,
            tcp,
            certs_dir: self.certs.clone(),
            client_ca: self.client_ca.clone(),
            shutdown_grace: self.shutdown_grace,
            admin: self.admin,
            web: self.web,
            web_plaintext: self.web_plaintext,
            web_max_header_size: self.web_max_header_size,
            web_origins: self.web_origins.clone(),
            web_hosts: self.web_hosts.clone(),
            webtransport_cert: self.webtransport_cert,
            websocket_max_message: self.websocket_max_message,
            ..ServerConfig::default()
        };
        config.limits.max_frame_len = self.max_frame_size;
        config.limits.max_concurrent_requests = self.max_concurrent_requests;
        config.limits.max_connections = self.max_connections;
        config.limits.request_timeout = self.request_timeout;
        config.limits.idle_timeout = self.idle_timeout;
        config.limits.udp_socket_buffer = self.udp_socket_buffer;
        config.limits.max_request_buffer = self.max_request_buffer;
        config.limits.connection_receive_window = self.connection_window;
        config.limits.send_window = self.send_window;
        config.limits.memory_wait = self.memory_wait;
        config.limits.max_unvalidated_handshakes = self.max_unvalidated_handshakes;
        if let Some(bytes) = self.connection_memory {
            config.connection_memory = bytes;
        }
        config.limits.reply_timeout = self.reply_timeout;
        config.limits.reply_min_progress = self.reply_min_progress;
        config.service.max_concurrent_scans = self.max_concurrent_scans;
        config.service.response_frame_target =
            self.response_frame_target.unwrap_or(DEFAULT_RESPONSE_FRAME_TARGET.min(self.max_frame_size));
        config.service.max_answer = self.max_answer_size;
        config.service.subscriber_queue = self.subscriber_queue;
        config.service.subscriber_queue_bytes = self.subscriber_queue_bytes;
        config.service.lag_policy = self.lag_policy;
        config.service.items = ItemLimits {
            max_table_len: self.max_table_size,
            max_key_len: self.max_key_size,
            max_value_len: self.max_value_size,
        };
        config.session_cache = self.session_cache;
        config.zero_rtt = !self.no_0rtt;
        config.quic = self.quic.options();
        config
    }
}

#[derive(Args)]
pub struct RuntimeArgs {
    /// Runtime layout: one thread for everything (fastest measured on 2 cores, docs/DESIGN.md), or a
    /// work-stealing pool of --threads workers.
    #[arg(long, value_enum, default_value_t = RuntimeKind::CurrentThread)]
    pub runtime: RuntimeKind,
    /// Worker threads of the multi-thread runtime (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    CurrentThread,
    MultiThread,
}

impl RuntimeArgs {
    pub fn layout(&self) -> Result<RuntimeLayout, CliError> {
        Ok(match self.runtime {
            RuntimeKind::CurrentThread if self.threads.is_some() => {
                return Err(CliError::InvalidInput(
                    "--threads needs --runtime multi-thread (the current-thread runtime has one thread)"
                        .into(),
                ));
            }
            RuntimeKind::CurrentThread => RuntimeLayout::CurrentThread,
            RuntimeKind::MultiThread => RuntimeLayout::MultiThread {
                workers: self.threads.map(usize::from).unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
                }),
            },
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Store {
    /// In memory; everything is lost when the server stops.
    Memory,
    /// On disk, in --data-dir; every acknowledged write survives a crash (with --durability strict).
    Disk,
    /// In Redis Cluster, or one plain Redis (for development), at --redis.
    Redis,
}

/// Where the Redis backend finds Redis (`--store redis`); docs/DEPLOY.md.
#[derive(Args)]
pub struct RedisArgs {
    /// Seed URL of Redis Cluster or of one Redis: redis://HOST:PORT, or rediss:// for TLS, with
    /// USER:PASSWORD@ if it needs them (repeatable, or comma-separated; the cluster is discovered from
    /// any seed that answers). A password is better given in the environment, as QKV_REDIS_PASSWORD,
    /// where the process list does not show it; it is never logged.
    #[arg(
        long = "redis",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379",
        env = "QKV_REDIS",
        hide_env_values = true
    )]
    pub urls: Vec<String>,
    /// Redis user, when the URLs do not name one.
    #[arg(long, value_name = "NAME", env = "QKV_REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// PEM file of the CA(s) to trust for rediss:// instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,
    /// Acknowledge a write only once this many replicas of its shard have it (Redis WAIT); 0: do not
    /// wait. Narrows, but does not close, the window in which a failover loses acknowledged writes.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub redis_wait: u32,
    /// How long a write waits for --redis-wait replicas; one that is not confirmed in time is answered
    /// 504 (it may or may not survive a failover), e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_wait_timeout: Duration,
    /// How many writes may wait for --redis-wait replicas at once, each on a Redis connection of its
    /// own (Redis reads nothing more from a connection while a WAIT on it waits, so a shared one would
    /// hold up every request behind it); more wait for one, and are answered 503 (nothing run) if none
    /// frees within --redis-timeout. On a cluster each is a connection to every node.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub redis_wait_connections: u32,
    /// How long one Redis command may take before it is answered 504, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    pub redis_timeout: Duration,
    /// How long connecting to one Redis node may take, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration)]
    pub redis_connect_timeout: Duration,
    /// How many times a command is sent again after a redirect (MOVED, ASK), TRYAGAIN or a lost node.
    #[arg(long, default_value_t = 8)]
    pub redis_retries: u32,
    /// Bytes of published messages from Redis that may wait for delivery to this server's subscribers;
    /// beyond, messages are dropped and the subscribers told they missed some, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub redis_push_buffer: usize,
    /// Put before the name of every Redis key qkv uses, to share a Redis with other programs.
    #[arg(long, default_value = "qkv:")]
    pub redis_prefix: String,
}

/// The environment variable that carries the Redis password.
pub const REDIS_PASSWORD_VARIABLE: &str = "QKV_REDIS_PASSWORD";

impl RedisArgs {
    /// `--redis-ca`'s certificates, read: a file that cannot be is a local failure (exit code 4), as
    /// other certificates are, not bad input.
    pub fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(path) = &self.redis_ca else { return Ok(None) };
        let pem = anyhow::Context::with_context(std::fs::read(path), || {
            format!("cannot read --redis-ca {}", path.display())
        })?;
        Ok(Some(pem))
    }

    /// The settings, checked, without `--redis-ca`'s certificates, which [`RedisArgs::ca_pem`] reads
    /// when the server starts (`--print-config` opens no file).
    pub fn config(&self) -> Result<qkv::storage::RedisConfig, CliError> {
        if self.urls.iter().any(|url| !url.starts_with("redis://") && !url.starts_with("rediss://")) {
            return Err(CliError::InvalidInput("--redis takes redis:// or rediss:// URLs".into()));
        }
        // Refused now rather than retried for ever (a port that is not a number, a bad host).
        if let Some(url) = self.urls.iter().find(|url| redis::Client::open(url.as_str()).is_err()) {
            let shown = qkv::storage::redacted_url(url);
            return Err(CliError::InvalidInput(format!(
                "--redis {shown} is not a Redis URL redis-rs can use"
            )));
        }
        if self.redis_wait > 0 && self.redis_wait_timeout.is_zero() {
            // WAIT with a timeout of 0 waits for ever.
            return Err(CliError::InvalidInput(
                "--redis-wait-timeout must be longer than zero with --redis-wait".into(),
            ));
        }
        if self.redis_wait > 0 && self.redis_wait_timeout >= self.redis_timeout {
            // The write and its WAIT are one round trip, which --redis-timeout bounds.
            return Err(CliError::InvalidInput(format!(
                "--redis-wait-timeout ({}) must be shorter than --redis-timeout ({}): a write that meets a master just taken over is sent twice, each waiting for its replicas",
                humantime::format_duration(self.redis_wait_timeout),
                humantime::format_duration(self.redis_timeout)
            )));
        }
        let write_time =
            self.redis_timeout + if self.redis_wait > 0 { self.redis_wait_timeout } else { Duration::ZERO };
        if write_time > qkv::storage::MAX_REDIS_WRITE_TIME {
            let what = match self.redis_wait > 0 {
                true => "--redis-timeout with --redis-wait-timeout added",
                false => "--redis-timeout",
            };
            return Err(CliError::InvalidInput(format!(
                "{what} ({}) must be at most {}: a write redis-rs sends again within that time is recognised and not applied twice, for twice as long",
                humantime::format_duration(write_time),
                humantime::format_duration(qkv::storage::MAX_REDIS_WRITE_TIME)
            )));
        }
        if self.redis_prefix.contains(['{', '}']) {
            return Err(CliError::InvalidInput(
                "--redis-prefix must not contain { or }: a hash tag there would put every table in one slot"
                    .into(),
            ));
        }
        Ok(qkv::storage::RedisConfig {
            urls: self.urls.clone(),
            username: self.redis_username.clone(),
            password: std::env::var(REDIS_PASSWORD_VARIABLE).ok().filter(|p| !p.is_empty()),
            ca_pem: None,
            prefix: self.redis_prefix.clone(),
            wait_replicas: self.redis_wait,
            wait_timeout: self.redis_wait_timeout,
            wait_connections: self.redis_wait_connections as usize,
            response_timeout: self.redis_timeout,
            connect_timeout: self.redis_connect_timeout,
            retries: self.redis_retries,
            push_buffer: self.redis_push_buffer,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityMode {
    Strict,
    Relaxed,
}

#[derive(Args)]
pub struct CertArgs {
    /// Directory to write to (created if missing).
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// An extra DNS name or IP address for the server certificate (repeatable); localhost,
    /// 127.0.0.1 and ::1 are always included.
    #[arg(long = "name", value_name = "DNS-OR-IP")]
    pub names: Vec<String>,
    /// Issue a client certificate for NAME instead (DIR/NAME.pem and DIR/NAME-key.pem, subject
    /// CN=NAME), for servers started with --client-ca DIR/ca.pem.
    #[arg(long, value_name = "NAME", conflicts_with = "names")]
    pub client: Option<String>,
    /// With --client: how long the certificate is valid, at most 397 days (the default). Short-lived
    /// client certificates stand in for revocation, which qkv does not check (docs/SECURITY.md).
    #[arg(long, value_name = "DURATION", requires = "client", value_parser = humantime::parse_duration)]
    pub valid_for: Option<std::time::Duration>,
    /// Replace an existing server (or client) certificate (the CA is kept).
    #[arg(long)]
    pub force: bool,
}

/// `--ca`'s default: the development CA that `qkv serve` writes in `certs/` of the directory it runs in.
pub const DEFAULT_CA: &str = "certs/ca.pem";

/// How to reach the server; accepted after every client subcommand.
#[derive(Args)]
pub struct ClientArgs {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:9527", env = "QKV_ADDR")]
    pub addr: String,
    /// quic (the default), tls (TLS 1.3 over TCP) or tcp (plaintext TCP, for servers started with
    /// --tcp-plaintext); http (the REST API), grpc (a call per request) or grpc-pipeline (requests
    /// pipelined on one gRPC call), with --addr the server's web listener (--web).
    #[arg(long, default_value_t = Transport::Quic, env = "QKV_TRANSPORT")]
    pub transport: Transport,
    /// CA certificate file the server's certificate must chain to.
    #[arg(long, default_value = DEFAULT_CA, env = "QKV_CA")]
    pub ca: PathBuf,
    /// Name to verify the server's certificate against (default: the host in --addr).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Client certificate to present to a server that requires one (mutual TLS), e.g.
    /// certs/alice.pem from `qkv cert --client alice`.
    #[arg(long = "cert", value_name = "FILE", env = "QKV_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key of --cert, e.g. certs/alice-key.pem.
    #[arg(long = "key", value_name = "FILE", env = "QKV_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// How long to wait for the server to answer the handshake, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Deadline of each call, retries included, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Attempts per call: a call that failed where it certainly was not executed, or a read-only one,
    /// is sent again (on a new connection if need be); a first connection the server refuses is tried
    /// again as often.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
    /// Keep-alive interval on idle connections, under NAT binding timeouts, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// Close a connection without traffic for this long, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Never send requests in 0-RTT early data (QUIC).
    #[arg(long)]
    pub no_0rtt: bool,
    #[command(flatten)]
    pub quic: QuicArgs,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Also print each value's version, after a tab.
    #[arg(long)]
    pub with_version: bool,
}

#[derive(Args)]
pub struct TypeArgs {
    /// How to read VALUE: binary takes the bytes of the argument as they are (any bytes, UTF-8 or
    /// not); the others need UTF-8.
    #[arg(long = "type", value_enum, default_value_t = ValueType::String)]
    pub value_type: ValueType,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ValueType {
    String,
    Int,
    Float,
    Bool,
    Binary,
}

/// `KEY=VALUE`: the key UTF-8, the value any bytes (for --type binary; on Unix an argument's bytes are
/// its own).
fn parse_pair(s: OsString) -> Result<(String, Vec<u8>), String> {
    let bytes = s.as_encoded_bytes();
    let Some(at) = bytes.iter().position(|&b| b == b'=') else {
        return Err(format!("expected KEY=VALUE, got {s:?}"));
    };
    let key = std::str::from_utf8(&bytes[..at]).map_err(|_| format!("the key of {s:?} is not UTF-8"))?;
    Ok((key.to_owned(), bytes[at + 1..].to_vec()))
}

fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.parse()?;
    usize::try_from(size.as_u64()).map_err(|e| e.to_string())
}

/// A size of at least one byte.
fn parse_nonzero_size(s: &str) -> Result<usize, String> {
    Some(parse_size(s)?).filter(|&size| size > 0).ok_or_else(|| "must be at least 1 byte".to_owned())
}

/// A UDP socket buffer of at least 64 KiB: one of a few KiB drops most of a burst of datagrams, and
/// QUIC's retransmission timers turn each drop into a stall (4 connections × 32 requests timed out).
fn parse_udp_socket_buffer(s: &str) -> Result<usize, String> {
    Some(parse_size(s)?).filter(|&size| size >= 64 * 1024).ok_or_else(|| {
        "must be at least 64KiB: a smaller UDP buffer drops bursts of QUIC datagrams".to_owned()
    })
}

/// A maximum frame size: from 1 KiB to 4 GiB - 1 (the length prefix is 32 bits).
fn parse_frame_size(s: &str) -> Result<usize, String> {
    let size = parse_size(s)?;
    let range = qkv::transport::MIN_MAX_FRAME_LEN..=u32::MAX as usize;
    range
        .contains(&size)
        .then_some(size)
        .ok_or_else(|| format!("must be between 1KiB and {} bytes", u32::MAX))
}

/// A QUIC flow-control window: from 16 KiB to 1 TiB.
fn parse_window(s: &str) -> Result<usize, String> {
    let size = parse_size(s)?;
    (qkv::transport::MIN_WINDOW as u64..=1 << 40)
        .contains(&(size as u64))
        .then_some(size)
        .ok_or_else(|| "must be between 16KiB and 1TiB".to_owned())
}

/// At most [`qkv::tls::MAX_SESSION_CACHE`] sessions.
fn parse_session_cache(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > qkv::tls::MAX_SESSION_CACHE => {
            Err(format!("must be at most {} (it is allocated at start)", qkv::tls::MAX_SESSION_CACHE))
        }
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration longer than zero and at most a year (`qkv::transport::MAX_TIMEOUT`), e.g. 10s.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".into()),
        Ok(duration) if duration > qkv::transport::MAX_TIMEOUT => Err("must be at most a year".into()),
        Ok(duration) => Ok(duration),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// `BenchArgs::validate` tells a flag given from its default by comparing with constants: they must
    /// be clap's defaults, or every run over TLS would be refused (or a given flag let through).
    #[test]
    fn the_bench_refuses_nothing_left_at_its_defaults_on_any_transport_or_workload() {
        for transport in ["quic", "tls", "tcp", "http", "grpc", "grpc-pipeline"] {
            for workload in ["ping", "hget", "hset", "mixed", "echo", "connect", "fanout"] {
                let args = ["qkv", "bench", "--transport", transport, "--workload", workload];
                let Ok(Cli { command: Command::Bench(bench), .. }) = Cli::try_parse_from(args) else {
                    panic!("{args:?} parses");
                };
                bench.validate().unwrap_or_else(|e| panic!("{args:?}: {e}"));
            }
        }
    }
}
