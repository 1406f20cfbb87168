//! What the server counts, named by Prometheus's conventions; every metric is listed with its meaning in
//! docs/OPERATIONS.md, "Metrics".
//!
//! Code records through the `metrics` facade, wherever it is (a listener, the broker, the disk
//! committer's thread), without a handle passed down to it. Until [`install`] sets the process's
//! recorder, which `qkv serve --admin` does, every record is a no-op, and [`Metered`] skips even
//! reading the clock. What is recorded per request goes through handles registered once
//! ([`RequestMetrics`]): an atomic add and a histogram sample, not a registry lookup.

mod request_histograms;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Unit, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::pb::{COMMAND_NAMES, CommandRequest, status};
use crate::service::{Arrival, Caller, Handler, Reply, RequestClass};
use crate::transport::Transport;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once [`install`] has set the recorder.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// fsync durations: 50 µs (a fast device's floor) to 10 s.
const FSYNC_BUCKETS: [f64; 14] =
    [50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0, 10.0];
/// Path RTTs: 100 µs to 5 s.
const RTT_BUCKETS: [f64; 12] =
    [100e-6, 500e-6, 1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 5.0];
/// Congestion windows: 2 packets to 64 MiB.
const WINDOW_BUCKETS: [f64; 10] = [
    2_400.0,
    12_000.0,
    32_768.0,
    65_536.0,
    131_072.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// Writes per disk commit.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Where the rendered metrics come from, once installed.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
}

impl Exporter {
    /// Every metric in Prometheus's text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut rendered = self.handle.render();
        request_histograms::render(&mut rendered);
        rendered
    }

    /// Folds the samples recorded since the last render into the histograms, so that memory does not
    /// grow between scrapes; call it every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics: {0}")]
pub struct MetricsError(String);

/// Sets the process's recorder (once: later calls return the same exporter) and describes every
/// metric, so that each has its HELP line from the start.
pub fn install() -> Result<Exporter, MetricsError> {
    static INSTALLED: OnceLock<Result<Exporter, String>> = OnceLock::new();
    INSTALLED.get_or_init(|| set_recorder().map_err(|e| e.0)).clone().map_err(MetricsError)
}

fn set_recorder() -> Result<Exporter, MetricsError> {
    let error = |e: metrics_exporter_prometheus::BuildError| MetricsError(e.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("qkv_disk_fsync_duration_seconds".into()), &FSYNC_BUCKETS)
        .map_err(error)?
        .set_buckets_for_metric(Matcher::Full("qkv_quic_rtt_seconds".into()), &RTT_BUCKETS)
        .map_err(error)?
        .set_buckets_for_metric(Matcher::Full("qkv_quic_congestion_window_bytes".into()), &WINDOW_BUCKETS)
        .map_err(error)?
        .set_buckets_for_metric(Matcher::Full("qkv_disk_commit_batch_size".into()), &BATCH_BUCKETS)
        .map_err(error)?
        .build_recorder();
    let exporter = Exporter { handle: recorder.handle() };
    metrics::set_global_recorder(recorder).map_err(|e| MetricsError(e.to_string()))?;
    // Histogram samples wait in buckets until folded in: fold them every few seconds for as long as
    // the process records, scraped or not, so that they cannot pile up.
    let upkeep = exporter.clone();
    std::thread::Builder::new()
        .name("qkv-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.upkeep();
            }
        })
        .map_err(|e| MetricsError(format!("cannot start the upkeep thread: {e}")))?;
    describe();
    process().describe();
    process().collect();
    gauge!("qkv_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    subscriptions(0);
    register_at_zero();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(exporter)
}

fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    c!("qkv_requests_total", "Requests answered, by command, transport and status code.");
    c!(
        "qkv_malformed_requests_total",
        "Request frames refused (400) before a command could be read: not a request, an empty stream, bytes after the frame."
    );
    g!("qkv_requests_in_flight", "Requests being executed.");
    c!("qkv_connections_accepted_total", "Connections admitted.");
    c!("qkv_connections_refused_total", "Connections refused, by reason.");
    g!("qkv_connections_open", "Connections being served.");
    c!(
        "qkv_bytes_received_total",
        Unit::Bytes,
        "Bytes received: QUIC UDP payloads; TLS and TCP socket bytes."
    );
    c!("qkv_bytes_sent_total", Unit::Bytes, "Bytes sent: QUIC UDP payloads; TLS and TCP socket bytes.");
    c!("qkv_handshakes_total", "TLS handshakes, by result.");
    c!(
        "qkv_tls_resumptions_total",
        "Session tickets presented: resumed, or unknown (full handshake, 0-RTT rejected)."
    );
    c!("qkv_zero_rtt_requests_total", "QUIC requests that arrived as 0-RTT early data.");
    c!("qkv_quic_retries_total", "QUIC Retry packets sent to validate client addresses.");
    c!("qkv_quic_migrations_total", "QUIC connections seen on a new client address.");
    h!(
        "qkv_quic_rtt_seconds",
        Unit::Seconds,
        "Smoothed RTT of QUIC connections, sampled every 10 s and at their end."
    );
    h!(
        "qkv_quic_congestion_window_bytes",
        Unit::Bytes,
        "Congestion window of QUIC connections, sampled every 10 s and at their end."
    );
    c!("qkv_quic_sent_packets_total", "QUIC packets sent.");
    c!("qkv_quic_lost_packets_total", "QUIC packets declared lost.");
    c!("qkv_quic_lost_bytes_total", Unit::Bytes, "QUIC bytes declared lost.");
    c!("qkv_quic_congestion_events_total", "QUIC congestion events (window reductions).");
    c!("qkv_limits_hit_total", "Requests or connections refused by a limit, named by its flag.");
    g!("qkv_storage_keys", "Keys stored (memory and disk stores).");
    g!(
        "qkv_storage_memory_used_bytes",
        Unit::Bytes,
        "Memory the store's data takes (memory and disk stores)."
    );
    g!("qkv_storage_memory_budget_bytes", Unit::Bytes, "The store's memory budget (--memory-budget).");
    g!("qkv_connection_memory_used_bytes", Unit::Bytes, "Memory connections hold now.");
    g!(
        "qkv_connection_memory_budget_bytes",
        Unit::Bytes,
        "The connection memory budget (--connection-memory)."
    );
    h!("qkv_disk_commit_batch_size", "Log records per disk commit.");
    h!(
        "qkv_disk_fsync_duration_seconds",
        Unit::Seconds,
        "Time of one durable disk commit: the fsync of the log's new records."
    );
    g!(
        "qkv_disk_log_bytes",
        Unit::Bytes,
        "Bytes of the data log since the last whole snapshot: what a restart replays on top of it."
    );
    g!("qkv_disk_snapshot_bytes", Unit::Bytes, "Size of the last whole snapshot of the disk store.");
    c!("qkv_disk_snapshots_total", "Snapshots of the disk store, by result: written or failed.");
    g!(
        "qkv_disk_snapshot_duration_seconds",
        Unit::Seconds,
        "Time the last written snapshot of the disk store took."
    );
    g!(
        "qkv_disk_recovery_duration_seconds",
        Unit::Seconds,
        "Time the disk store took to load its snapshot and replay its log when the server started."
    );
    c!("qkv_backend_requests_total", "Round trips to the storage backend (Redis), by result.");
    g!("qkv_subscriptions", "Subscriptions open.");
    c!("qkv_pubsub_published_total", "Messages published.");
    c!("qkv_pubsub_delivered_total", "Messages queued for a subscriber.");
    c!("qkv_pubsub_missed_total", "Deliveries that did not happen because a subscriber's queue was full.");
    g!("qkv_build_info", "The server's version; always 1.");
    g!("qkv_ready", "1 when the server is ready to serve (as /readyz), 0 otherwise.");
    g!("qkv_healthy", "1 unless the store has failed in a way only a restart mends (as /healthz), 0 then.");
    g!(
        "qkv_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the server's certificate in use expires (its notAfter), in seconds since the Unix epoch: set at start and at each SIGHUP reload."
    );
    c!(
        "qkv_tls_certificate_reloads_total",
        "SIGHUP reloads of the certificates, by result: reloaded, or refused (the old ones stay in use)."
    );
}

/// Declares an enum of a label's values, with `ALL` listing every one and `name` the label's text: the
/// one list that [`register_at_zero`] exports from the start, so that a new value cannot be left out.
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$variant_meta])* $variant,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// As the metrics label it.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
    };
}

label_values! {
    /// A limit that refused a request or a connection, as `qkv_limits_hit_total` labels it: its
    /// flag's name with `_`.
    pub enum Limit {
        MaxFrameSize => "max_frame_size",
        MaxTableSize => "max_table_size",
        MaxKeySize => "max_key_size",
        MaxValueSize => "max_value_size",
        MaxAnswerSize => "max_answer_size",
        ConnectionMemory => "connection_memory",
        MaxRequestBuffer => "max_request_buffer",
        MemoryBudget => "memory_budget",
        MaxConnections => "max_connections",
        RequestTimeout => "request_timeout",
        ReplyTimeout => "reply_timeout",
        SubscriberQueue => "subscriber_queue",
        SubscriptionsPerConnection => "subscriptions_per_connection",
    }
}

impl Limit {
    /// The flag that sets it, as an error names it: `--max-key-size`.
    pub fn flag(self) -> String {
        format!("--{}", self.name().replace('_', "-"))
    }
}

label_values! {
    /// How a TLS handshake ended (`qkv_handshakes_total`).
    pub enum HandshakeResult {
        Completed => "completed",
        /// A TLS error, e.g. a bad client certificate.
        Failed => "failed",
        TimedOut => "timed_out",
    }
}

label_values! {
    /// What a session ticket came to (`qkv_tls_resumptions_total`).
    pub enum Resumption {
        /// The handshake skipped the certificate.
        Resumed => "resumed",
        /// Not in the session cache: a full handshake, and 0-RTT rejected.
        Unknown => "unknown",
    }
}

label_values! {
    /// How a round trip to the storage backend ended (`qkv_backend_requests_total`).
    pub enum BackendResult {
        Ok => "ok",
        Unavailable => "unavailable",
        Uncertain => "uncertain",
        OutOfMemory => "out_of_memory",
        Error => "error",
    }
}

label_values! {
    /// How a SIGHUP reload of the certificates ended (`qkv_tls_certificate_reloads_total`).
    pub enum ReloadResult {
        Reloaded => "reloaded",
        /// The new files were refused: the ones in use stay in use.
        Refused => "refused",
    }
}

/// The server's certificate in use expires at `not_after` (`None`: it could not be read).
pub fn server_certificate(not_after: Option<std::time::SystemTime>) {
    let seconds = not_after.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    if let Some(seconds) = seconds {
        gauge!("qkv_tls_certificate_expiry_timestamp_seconds").set(seconds.as_secs_f64());
    }
}

/// A SIGHUP reload of the certificates ended.
pub fn certificate_reload(result: ReloadResult) {
    counter!("qkv_tls_certificate_reloads_total", "result" => result.name()).increment(1);
}

label_values! {
    /// How a snapshot of the disk store ended (`qkv_disk_snapshots_total`).
    enum SnapshotResult {
        Written => "written",
        /// Not started, not written, or its thread panicked: the log keeps everything meanwhile.
        Failed => "failed",
    }
}

/// The transports that carry connections of their own (the web listener's as `http`): what the
/// connection and byte counters are labelled with.
const CONNECTION_TRANSPORTS: [Transport; 4] =
    [Transport::Quic, Transport::Tls, Transport::Tcp, Transport::Http];

/// The transports whose connections begin with a TLS handshake (QUIC's included).
const HANDSHAKE_TRANSPORTS: [Transport; 3] = [Transport::Quic, Transport::Tls, Transport::Http];

/// The backends that count round trips.
const BACKENDS: [&str; 1] = ["redis"];

/// Exports every counter whose labels are all known in advance at 0 (and the connection gauges), so
/// that a series exists before its first event: Prometheus's `rate()` and `increase()` need a
/// sample before an increment to see it, and a series that appears at 1 is a first burst lost.
/// (`qkv_requests_total`, by command, transport and status, would be thousands of series: each
/// appears with its first request.)
fn register_at_zero() {
    for limit in Limit::ALL {
        counter!("qkv_limits_hit_total", "limit" => limit.name()).absolute(0);
    }
    for transport in CONNECTION_TRANSPORTS {
        let t = transport.name();
        counter!("qkv_connections_accepted_total", "transport" => t).absolute(0);
        gauge!("qkv_connections_open", "transport" => t).increment(0.0);
        counter!("qkv_bytes_received_total", "transport" => t).absolute(0);
        counter!("qkv_bytes_sent_total", "transport" => t).absolute(0);
        for reason in [Limit::MaxConnections, Limit::ConnectionMemory] {
            counter!("qkv_connections_refused_total", "transport" => t, "reason" => reason.name())
                .absolute(0);
        }
    }
    for transport in HANDSHAKE_TRANSPORTS {
        let t = transport.name();
        for result in HandshakeResult::ALL {
            counter!("qkv_handshakes_total", "transport" => t, "result" => result.name()).absolute(0);
        }
        for result in Resumption::ALL {
            counter!("qkv_tls_resumptions_total", "transport" => t, "result" => result.name()).absolute(0);
        }
    }
    for result in ReloadResult::ALL {
        counter!("qkv_tls_certificate_reloads_total", "result" => result.name()).absolute(0);
    }
    for backend in BACKENDS {
        for result in BackendResult::ALL {
            counter!("qkv_backend_requests_total", "backend" => backend, "result" => result.name())
                .absolute(0);
        }
    }
    for name in [
        "qkv_malformed_requests_total",
        "qkv_zero_rtt_requests_total",
        "qkv_quic_retries_total",
        "qkv_quic_migrations_total",
        "qkv_quic_sent_packets_total",
        "qkv_quic_lost_packets_total",
        "qkv_quic_lost_bytes_total",
        "qkv_quic_congestion_events_total",
        "qkv_pubsub_published_total",
        "qkv_pubsub_delivered_total",
        "qkv_pubsub_missed_total",
    ] {
        counter!(name).absolute(0);
    }
}

/// Whether the server is ready, as /readyz last found it (0 from the moment shutdown begins).
pub fn ready(ready: bool) {
    gauge!("qkv_ready").set(if ready { 1.0 } else { 0.0 });
}

/// Whether the store works, as /healthz last found it: 0 once it has failed in a way only a restart
/// mends (a disk store whose log could not be written).
pub fn healthy(healthy: bool) {
    gauge!("qkv_healthy").set(if healthy { 1.0 } else { 0.0 });
}

/// A request frame was refused before a command could be read from it (400).
pub fn malformed_request() {
    counter!("qkv_malformed_requests_total").increment(1);
}

/// A limit refused a request or a connection.
pub fn limit_hit(limit: Limit) {
    counter!("qkv_limits_hit_total", "limit" => limit.name()).increment(1);
}

/// Requests being executed, by transport (in `Transport::ALL`'s order): plain atomics, read into the
/// `qkv_requests_in_flight` gauges when metrics are rendered ([`refresh`]), so that a request does not
/// pay for two float updates.
static IN_FLIGHT: [AtomicI64; Transport::ALL.len()] = [const { AtomicI64::new(0) }; Transport::ALL.len()];

/// Sets the gauges of what the store and the connections hold, which are read rather than recorded:
/// called before every render, by the admin listener's /metrics and the web listener's /v1/stats alike.
pub fn record_usage(storage: crate::storage::StorageUsage, connections: &crate::memory::MemoryBudget) {
    if let Some(keys) = storage.keys {
        gauge!("qkv_storage_keys").set(keys as f64);
    }
    if let Some(memory) = storage.memory {
        gauge!("qkv_storage_memory_used_bytes").set(memory.used as f64);
        gauge!("qkv_storage_memory_budget_bytes").set(memory.budget as f64);
    }
    gauge!("qkv_connection_memory_used_bytes").set(connections.used() as f64);
    gauge!("qkv_connection_memory_budget_bytes").set(connections.total() as f64);
    refresh();
}

/// The process's own figures, Prometheus's standard `process_*` metrics (start time, CPU, resident
/// memory, open files, threads), read from /proc at each render: a restart shows as a new start time,
/// whatever the counters did meanwhile.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Sets the gauges that are read rather than recorded; called before every render.
pub fn refresh() {
    process().collect();
    for (transport, in_flight) in Transport::ALL.iter().zip(&IN_FLIGHT) {
        gauge!("qkv_requests_in_flight", "transport" => transport.name())
            .set(in_flight.load(Ordering::Relaxed) as f64);
    }
}

/// The per-request handles of one transport, registered on first use.
pub struct RequestMetrics {
    transport: &'static str,
    /// `qkv_requests_total`, by command and status (`status::ALL`, and one for any other).
    requests: Vec<OnceLock<Counter>>,
    /// `qkv_request_duration_seconds` and `qkv_request_latency_seconds`, by command.
    histograms: std::sync::Arc<request_histograms::TransportHistograms>,
    in_flight: &'static AtomicI64,
}

/// A counter slot per status the protocol lists, and one for any other.
const STATUS_SLOTS: usize = status::ALL.len() + 1;

impl RequestMetrics {
    pub fn new(transport: Transport) -> Self {
        Self::labelled(transport, transport.name())
    }

    /// Counted with `transport`'s requests in flight, labelled `label`.
    fn labelled(transport: Transport, label: &'static str) -> Self {
        let index = Transport::ALL.iter().position(|&t| t == transport).unwrap_or_default();
        RequestMetrics {
            transport: label,
            requests: (0..COMMAND_NAMES.len() * STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            histograms: request_histograms::for_transport(label),
            in_flight: &IN_FLIGHT[index],
        }
    }

    fn record(&self, command: usize, status: u32, elapsed: Duration) {
        self.count(command, status);
        self.histograms.duration(command, elapsed);
    }

    /// Counts a request answered `status`, untimed.
    fn count(&self, command: usize, status: u32) {
        // A status the protocol does not list shares the last slot, labelled "other".
        let slot = status::ALL.iter().position(|&s| s == status).unwrap_or(status::ALL.len());
        let (command_name, transport) = (COMMAND_NAMES[command], self.transport);
        self.requests[command * STATUS_SLOTS + slot]
            .get_or_init(|| {
                let label = status::ALL.get(slot).map_or_else(|| "other".to_owned(), u32::to_string);
                counter!("qkv_requests_total", "command" => command_name, "transport" => transport, "status" => label)
            })
            .increment(1);
    }

    fn record_latency(&self, arrival: Arrival) {
        self.histograms.latency(arrival.command, arrival.at.elapsed());
    }
}

/// A handler that counts what `H` answers on one transport: requests by command and status, their
/// durations, those in flight. A streamed answer (Hgetall, Subscribe) counts as its first frame's
/// status is not known before it is sent: 200, timed to the start of the stream. An answer the disk
/// store deferred to its fsync (`storage::deferring`) counts when it may be sent, with its final status.
/// Its duration is service time only; what the transports tell it of answers handed to them
/// ([`Handler::answered`]) is the latency, which includes the time a request waited to run and its
/// answer waited for its turn: under overload the one grows while the other does not.
#[derive(Clone)]
pub struct Metered<H> {
    inner: H,
    metrics: Option<std::sync::Arc<RequestMetrics>>,
}

impl<H: Handler> Metered<H> {
    /// `inner`, counted as serving `transport` when metrics are installed, as it is otherwise.
    pub fn new(inner: H, transport: Transport) -> Self {
        Metered { inner, metrics: enabled().then(|| std::sync::Arc::new(RequestMetrics::new(transport))) }
    }

    /// `inner`, counted as serving a door of `transport` that has its own label (`websocket`).
    pub fn labelled(inner: H, transport: Transport, label: &'static str) -> Self {
        let metrics = enabled().then(|| std::sync::Arc::new(RequestMetrics::labelled(transport, label)));
        Metered { inner, metrics }
    }
}

impl<H: Handler> Handler for Metered<H> {
    fn class(&self, request: &CommandRequest) -> RequestClass {
        self.inner.class(request)
    }

    async fn execute<'a>(&'a self, request: CommandRequest, caller: &'a Caller) -> Reply {
        let Some(metrics) = &self.metrics else {
            return self.inner.execute(request, caller).await;
        };
        let command = request.command_index();
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = DecrementOnDrop(metrics.in_flight);
        let started = Instant::now();
        let reply = self.inner.execute(request, caller).await;
        let status = match &reply {
            Reply::One(response) => response.status,
            Reply::Stream(_) => status::OK,
        };
        // An answer the disk store deferred (the TCP pipeline's) is final only once its ticket is: it is
        // timed to then, and counted with the status it goes out with (an error if its fsync failed).
        // The store defers only within the pipeline's first poll, so this finds the deferral as long as
        // the handler answers within that poll after its store call, as the service does.
        let metrics = metrics.clone();
        let record = move |status| {
            metrics.record(command, status, started.elapsed());
            drop(in_flight);
        };
        if let Err(record) = crate::storage::when_settled(record) {
            record(status);
        }
        reply
    }

    fn connection_closing(&self, caller: &Caller, why: crate::pubsub::ConnectionEnd) {
        self.inner.connection_closing(caller, why)
    }

    fn answered_at_door(&self, command: usize, status: u32) {
        if let Some(metrics) = &self.metrics {
            metrics.count(command, status);
        }
    }

    fn connection_stalled(&self, caller: &Caller) {
        self.inner.connection_stalled(caller)
    }

    fn times_answers(&self) -> bool {
        self.metrics.is_some()
    }

    fn answered(&self, arrival: Arrival) {
        if let Some(metrics) = &self.metrics {
            metrics.record_latency(arrival);
        }
    }
}

/// Takes one off a count when dropped, so that a request whose connection goes away mid-way still
/// leaves the in-flight count.
struct DecrementOnDrop(&'static AtomicI64);

impl Drop for DecrementOnDrop {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One more connection open on `transport` until dropped.
#[derive(Debug)]
pub struct OpenConnection(Option<Gauge>);

impl OpenConnection {
    pub fn new(transport: Transport) -> Self {
        if !enabled() {
            return OpenConnection(None);
        }
        counter!("qkv_connections_accepted_total", "transport" => transport.name()).increment(1);
        let open = gauge!("qkv_connections_open", "transport" => transport.name());
        open.increment(1.0);
        OpenConnection(Some(open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(open) = &self.0 {
            open.decrement(1.0);
        }
    }
}

/// A connection on `transport` was refused by `reason`.
pub fn connection_refused(transport: Transport, reason: Limit) {
    counter!("qkv_connections_refused_total", "transport" => transport.name(), "reason" => reason.name())
        .increment(1);
    limit_hit(reason);
}

/// A TLS handshake on `transport` ended.
pub fn handshake(transport: Transport, result: HandshakeResult) {
    counter!("qkv_handshakes_total", "transport" => transport.name(), "result" => result.name()).increment(1);
}

/// A session ticket was presented on `transport`.
pub fn resumption(transport: &'static str, result: Resumption) {
    counter!("qkv_tls_resumptions_total", "transport" => transport, "result" => result.name()).increment(1);
}

/// A QUIC Retry was sent to validate a client's address.
pub fn retry_sent() {
    counter!("qkv_quic_retries_total").increment(1);
}

/// A QUIC request arrived as 0-RTT early data.
pub fn zero_rtt_request() {
    counter!("qkv_zero_rtt_requests_total").increment(1);
}

/// The disk committer is about to write `writes` log records and fsync them (group commit).
pub fn disk_batch(writes: usize) {
    if writes > 0 {
        histogram!("qkv_disk_commit_batch_size").record(writes as f64);
    }
}

/// An fsync of the disk store's log took `elapsed`.
pub fn disk_fsync(elapsed: Duration) {
    histogram!("qkv_disk_fsync_duration_seconds").record(elapsed.as_secs_f64());
}

/// The disk store was recovered in `elapsed`: its last snapshot has `snapshot_bytes`, the log after it
/// `log_bytes`. Its snapshot counters start at 0 (only a server with a disk store has them).
pub fn disk_recovered(elapsed: Duration, snapshot_bytes: u64, log_bytes: u64) {
    gauge!("qkv_disk_recovery_duration_seconds").set(elapsed.as_secs_f64());
    gauge!("qkv_disk_snapshot_bytes").set(snapshot_bytes as f64);
    disk_log(log_bytes);
    for result in SnapshotResult::ALL {
        counter!("qkv_disk_snapshots_total", "result" => result.name()).absolute(0);
    }
}

/// The disk store's log holds `bytes` since the last snapshot began.
pub fn disk_log(bytes: u64) {
    gauge!("qkv_disk_log_bytes").set(bytes as f64);
}

/// A snapshot of the disk store of `bytes` was written in `elapsed`.
pub fn disk_snapshot_written(bytes: u64, elapsed: Duration) {
    counter!("qkv_disk_snapshots_total", "result" => SnapshotResult::Written.name()).increment(1);
    gauge!("qkv_disk_snapshot_bytes").set(bytes as f64);
    gauge!("qkv_disk_snapshot_duration_seconds").set(elapsed.as_secs_f64());
}

/// A snapshot of the disk store could not be started or written (the log keeps everything meanwhile).
pub fn disk_snapshot_failed() {
    counter!("qkv_disk_snapshots_total", "result" => SnapshotResult::Failed.name()).increment(1);
}

/// A round trip to the storage backend (one of `BACKENDS`) ended.
pub fn backend_request(backend: &'static str, result: BackendResult) {
    counter!("qkv_backend_requests_total", "backend" => backend, "result" => result.name()).increment(1);
}

/// Subscriptions open now.
pub fn subscriptions(open: usize) {
    gauge!("qkv_subscriptions").set(open as f64);
}

/// A message was published: queued for `delivered` subscribers, missed by `missed` whose queues were
/// full (each one a hit of the subscriber queue's limit).
pub fn published(delivered: u64, missed: u64) {
    counter!("qkv_pubsub_published_total").increment(1);
    if delivered > 0 {
        counter!("qkv_pubsub_delivered_total").increment(delivered);
    }
    if missed > 0 {
        counter!("qkv_pubsub_missed_total").increment(missed);
        counter!("qkv_limits_hit_total", "limit" => Limit::SubscriberQueue.name()).increment(missed);
    }
}

/// The counters of bytes received and sent on `transport`, for a connection to add to as it goes.
pub fn byte_counters(transport: Transport) -> (Counter, Counter) {
    (
        counter!("qkv_bytes_received_total", "transport" => transport.name()),
        counter!("qkv_bytes_sent_total", "transport" => transport.name()),
    )
}

/// Bytes received and sent on `transport`.
pub fn bytes(transport: Transport, received: u64, sent: u64) {
    if received > 0 {
        counter!("qkv_bytes_received_total", "transport" => transport.name()).increment(received);
    }
    if sent > 0 {
        counter!("qkv_bytes_sent_total", "transport" => transport.name()).increment(sent);
    }
}

/// The figures of a QUIC connection's path, sampled now and then: adds what changed since the last
/// sample to the counters and observes its RTT and window.
pub struct PathSampler {
    last: Option<quinn::ConnectionStats>,
    address: std::net::SocketAddr,
    migrations: u64,
}

/// How often a QUIC connection's path is sampled (besides at its end).
pub const PATH_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Samples `connection`'s path into `sampler` every [`PATH_SAMPLE_INTERVAL`] until `stop` is
/// cancelled: a task of its own, so that the connection's loop does not poll a timer for every
/// stream it accepts.
pub async fn sample_path(
    connection: quinn::Connection,
    sampler: std::sync::Arc<parking_lot::Mutex<PathSampler>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PATH_SAMPLE_INTERVAL) => sampler.lock().sample(&connection),
        }
    }
}

impl PathSampler {
    /// A sampler of `connection`, on the client address it has now.
    pub fn new(connection: &quinn::Connection) -> Self {
        PathSampler { last: None, address: connection.remote_address(), migrations: 0 }
    }

    /// New client addresses seen, sample to sample (a migration between two samples that came back is
    /// not seen).
    pub fn migrations(&self) -> u64 {
        self.migrations
    }

    pub fn sample(&mut self, connection: &quinn::Connection) {
        let address = connection.remote_address();
        if address != self.address {
            self.migrations += 1;
            counter!("qkv_quic_migrations_total").increment(1);
        }
        self.address = address;
        if !enabled() {
            return;
        }
        let stats = connection.stats();
        let last = self.last.unwrap_or_default();
        bytes(
            Transport::Quic,
            stats.udp_rx.bytes.saturating_sub(last.udp_rx.bytes),
            stats.udp_tx.bytes.saturating_sub(last.udp_tx.bytes),
        );
        let (path, before) = (&stats.path, &last.path);
        for (name, now, then) in [
            ("qkv_quic_sent_packets_total", path.sent_packets, before.sent_packets),
            ("qkv_quic_lost_packets_total", path.lost_packets, before.lost_packets),
            ("qkv_quic_lost_bytes_total", path.lost_bytes, before.lost_bytes),
            ("qkv_quic_congestion_events_total", path.congestion_events, before.congestion_events),
        ] {
            if now > then {
                counter!(name).increment(now - then);
            }
        }
        histogram!("qkv_quic_rtt_seconds").record(path.rtt.as_secs_f64());
        histogram!("qkv_quic_congestion_window_bytes").record(path.cwnd as f64);
        self.last = Some(stats);
    }
}
