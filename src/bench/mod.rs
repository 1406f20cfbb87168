//! The load generator behind `qkv bench`: connections, a closed or open loop of requests, latencies in
//! an HdrHistogram, a report for people and one for programs (JSON).
//!
//! - `connections`: opening the run's connections concurrently (sharing QUIC sockets), closing them.
//! - `workload`: what a request is (ping, hget, hset, mixed, or the floor's echo), which key it touches.
//! - `load`: when requests are sent (closed loop, or open loop without coordinated omission).
//! - `progress`: how far a run has got, for a progress bar or whoever acts during a run.
//! - `floor`: bare echo servers and clients, to measure what the transports cost without qkv.
//! - `fanout`: publishers and subscribers, to measure pub/sub deliveries.
//! - `timeline`: when requests completed, to see a network change's gap in service.
//!
//! Every run is bounded in time: warm-up plus duration, plus at most a few seconds for the requests in
//! flight at the end.

mod connections;
mod fanout;
pub mod floor;
mod load;
mod pacer;
mod progress;
mod timeline;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use fanout::FanoutReport;
pub use load::Tally;
pub use progress::Progress;
pub use timeline::TimelineReport;
pub use workload::{KeyDist, Workload};

use crate::client::{Client, ClientConfig, ClientError, ClientStats};
use crate::pb::Value;
use crate::tls::Tickets;
use connections::Connections;
use load::Window;
use pacer::Pacer;
use workload::{KeyPicker, RequestMaker};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where and how to connect (address, transport, CA, limits).
    pub client: ClientConfig,
    pub workload: Workload,
    pub connections: usize,
    /// How many connections are opened at once: handshakes in flight at a time.
    pub connect_concurrency: usize,
    /// QUIC: how many connections share one client endpoint (one UDP socket).
    pub connections_per_socket: usize,
    /// Requests in flight per connection: exactly (closed loop) or at most (open loop).
    pub inflight: usize,
    /// Requests per second over all connections; `None` for a closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub value_size: usize,
    pub keys: usize,
    pub key_dist: KeyDist,
    /// Makes runs reproducible: the same seed picks the same keys.
    pub seed: u64,
    /// Connect workload: keep session tickets between connections, so that each after the first
    /// resumes (with 0-RTT over QUIC). Without it every connection makes a full handshake.
    pub zero_rtt: bool,
    /// Report completions per slot of this width (a multiple of 10 ms) in the JSON.
    pub timeline: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot set up the benchmark: {0}")]
    Setup(String),
    /// The floor server (`qkv floor`) could not start.
    #[error("cannot start the floor server: {0}")]
    Floor(String),
    #[error(
        "this run needs about {needed} open files, but the process may open only {limit}: raise the hard \
         limit (ulimit -Hn, or LimitNOFILE= for a service), or put more QUIC connections on each socket \
         (--connections-per-socket)"
    )]
    TooFewOpenFiles { needed: u64, limit: u64 },
    #[error("cannot read or raise the limit of open files (this run needs about {needed})")]
    OpenFileLimit {
        needed: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of a run, over the measured period only.
#[derive(Debug)]
pub struct BenchReport {
    pub requests: u64,
    pub errors: u64,
    /// Requests sent (open loop: due) in the warm-up and answered successfully in the measured period
    /// (see [`load::Tally::earlier`]).
    pub earlier: u64,
    /// Requests of the measured period answered successfully after it (see [`load::Tally::late`]).
    pub late: u64,
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
    /// What the clients did: connections, resumptions, 0-RTT, retries.
    pub client_stats: ClientStats,
    /// When the measured period began (after connecting, preloading and warming up).
    pub measured_from: std::time::SystemTime,
    /// The longest time in the measured period during which no request succeeded.
    pub longest_gap: Duration,
    pub timeline: Option<TimelineReport>,
    /// The fan-out workload's figures; its `requests` are deliveries.
    pub fanout: Option<FanoutReport>,
    /// How long opening the measured connections took (fan-out: subscribing the subscribers), and
    /// closing them; `None` for the connect workload, which does not keep connections.
    pub connection_times: Option<ConnectionTimes>,
}

/// Time to open all of a run's connections before it measures, and to close them after.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimes {
    pub open: Duration,
    pub close: Duration,
}

impl BenchReport {
    /// Successes answered within the measured period, per second: the period's own requests answered
    /// in it and those of the warm-up answered in it, not those answered after it (with many
    /// connections × requests in flight and a short period, counting by when sent inflated it).
    pub fn throughput(&self) -> f64 {
        let answered = (self.requests + self.earlier).saturating_sub(self.late);
        answered as f64 / self.elapsed.as_secs_f64()
    }

    /// The report as `qkv bench --json` prints it.
    pub fn to_json(&self, config: &BenchConfig) -> JsonReport {
        let quantile = |q| self.latency_us.value_at_quantile(q);
        JsonReport {
            transport: config.client.transport.to_string(),
            workload: config.workload.name().to_owned(),
            connections: config.connections,
            inflight: config.inflight,
            value_size: config.value_size,
            duration_s: self.elapsed.as_secs_f64(),
            requests: self.requests,
            errors: self.errors,
            earlier_answered: self.earlier,
            throughput_rps: self.throughput(),
            target_rps: config.rate,
            latency_us: Latencies {
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
                p999: quantile(0.999),
                max: self.latency_us.max(),
                held_up: held_up(&self.latency_us),
            },
            measured_from_unix_ms: self
                .measured_from
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            longest_gap_ms: self.longest_gap.as_millis() as u64,
            client_stats: self.client_stats,
            timeline: self.timeline.clone(),
            fanout: self.fanout,
            open_s: self.connection_times.map(|times| times.open.as_secs_f64()),
            close_s: self.connection_times.map(|times| times.close.as_secs_f64()),
        }
    }
}

/// One run, for programs: `qkv bench --json`.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct JsonReport {
    pub transport: String,
    pub workload: String,
    pub connections: usize,
    pub inflight: usize,
    pub value_size: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    /// Requests sent (open loop: due) in the warm-up and answered successfully in the measured period:
    /// in neither `requests` nor the latencies. Many, with few `requests`, mean a backlog: an open
    /// loop beyond what the server (or this client) sustains, or a stall across the period's start.
    #[serde(default)]
    pub earlier_answered: u64,
    pub throughput_rps: f64,
    /// The open loop's rate; `null` for a closed loop.
    pub target_rps: Option<f64>,
    pub latency_us: Latencies,
    /// When the measured period began, in milliseconds since the Unix epoch: to place outside events
    /// (a network change, say) on the timeline.
    pub measured_from_unix_ms: u64,
    /// The longest stretch of the measured period in which no request succeeded (10 ms resolution):
    /// how long a network change interrupted service.
    pub longest_gap_ms: u64,
    /// Summed over the run's clients (not counted for the echo workload).
    pub client_stats: ClientStats,
    /// Completions per slot, with `--timeline`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeline: Option<TimelineReport>,
    /// With the fan-out workload (whose `requests` and latencies are deliveries).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fanout: Option<FanoutReport>,
    /// Seconds to open all connections before the run (`--connect-concurrency` at a time; for the
    /// fan-out workload, to subscribe every subscriber), and to close them after; `null` for the
    /// connect workload.
    #[serde(default)]
    pub open_s: Option<f64>,
    #[serde(default)]
    pub close_s: Option<f64>,
}

#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct Latencies {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// The share of requests (0 to 1) slower than [`HELD_UP`] × the median: those held up by
    /// something other than the round trip itself, such as a lost packet (their own or, on one TCP
    /// connection, one ahead of them). Over a lossy link this is what head-of-line blocking costs,
    /// where a percentile only says how long the held-up requests waited, if it falls among them.
    #[serde(default)]
    pub held_up: f64,
}

/// See [`Latencies::held_up`].
pub const HELD_UP: f64 = 1.5;

fn held_up(latency_us: &Histogram<u64>) -> f64 {
    let total = latency_us.len();
    if total == 0 {
        return 0.0;
    }
    let threshold = (latency_us.value_at_quantile(0.5) as f64 * HELD_UP) as u64;
    let held_up: u64 = latency_us
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > threshold)
        .map(|v| v.count_at_value())
        .sum();
    held_up as f64 / total as f64
}

/// Runs the benchmark: connects, loads the keys, warms up, measures; `progress` follows it as it goes.
pub async fn run(config: &BenchConfig, progress: Progress) -> Result<BenchReport, BenchError> {
    let report = run_until_done(config, &progress).await;
    progress.finish();
    report
}

async fn run_until_done(config: &BenchConfig, progress: &Progress) -> Result<BenchReport, BenchError> {
    connections::ensure_open_files(connections::files_needed(config))?;
    if let Workload::Fanout { subscribers, stalled } = config.workload {
        return fanout::run(config, subscribers, stalled, progress).await;
    }
    // Preloaded and written values differ, so that what a run wrote can be told apart afterwards.
    let preloaded = Value::from(vec![b'p'; config.value_size]);
    let written = Value::from(vec![b'w'; config.value_size]);
    if config.workload.needs_keys() {
        // On a connection of its own, so that the measured connections start alike.
        let mut loader_config = config.client.clone();
        loader_config.tickets = Tickets::none();
        let loader = Client::connect_with(loader_config).await?;
        let max_frame_len = config.client.limits.max_frame_len;
        // Many keys take a while: said, not a bar standing still.
        if let Some(bar) = progress.bar() {
            bar.set_message(format!("writing the {} keys the run reads first", config.keys.max(1)));
        }
        let loaded = workload::preload(&loader, config.keys.max(1), &preloaded, max_frame_len).await;
        if let Some(bar) = progress.bar() {
            bar.set_message("");
        }
        loader.close().await;
        loaded?;
    }
    let opening = Instant::now();
    let connections = Connections::open(config).await?;
    let open = opening.elapsed();
    tracing::info!(connections = connections.targets.len(), ?open, "connections open");
    let keys = KeyPicker::new(config.key_dist, config.keys);
    let message = Bytes::from(vec![b'm'; config.value_size]);

    let window = Window::new(config.warmup, config.duration);
    let measured_from = std::time::SystemTime::now() + config.warmup;
    let mut workers = JoinSet::new();
    let mut open_loop = Vec::new();
    for (c, target) in connections.targets.iter().enumerate() {
        let maker = Arc::new(RequestMaker {
            target: target.clone(),
            workload: config.workload,
            keys: keys.clone(),
            value: written.clone(),
            message: message.clone(),
        });
        // Every request draws its key from its own seed, so a run's keys depend only on --seed.
        let connection_seed = config.seed.wrapping_add((c as u64) << 40);
        let requests = move |worker: u64| {
            let maker = maker.clone();
            let seed = connection_seed.wrapping_add(worker << 32);
            move |n: u64, counted_by: Instant| {
                let maker = maker.clone();
                async move { maker.request(&mut SmallRng::seed_from_u64(seed.wrapping_add(n)), counted_by).await }
            }
        };
        match config.rate {
            Some(_) => open_loop.push(requests(0)),
            None => {
                for i in 0..config.inflight {
                    workers.spawn(load::closed_worker(requests(i as u64), window, progress.clone()));
                }
            }
        }
    }
    // Lives until every worker has finished (the open loop's timers use it).
    let pacer = if config.rate.is_some() { Pacer::start() } else { Pacer::tokio() };
    if let Some(rate) = config.rate {
        for connection in load::open_loop(open_loop, rate, config.inflight, window, progress, &pacer) {
            workers.spawn(connection);
        }
    }
    let ticker = progress.bar().map(|bar| tokio::spawn(show_progress(bar.clone(), window, progress.clone())));
    let announcer = announce_measuring(window, config.duration);
    let mut tally = Tally::new();
    while let Some(worker) = workers.join_next().await {
        let worker = worker.map_err(|e| BenchError::Setup(format!("a worker failed: {e}")))?;
        tally.merge(worker);
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    announcer.abort();
    let closing = Instant::now();
    let client_stats = connections.close(window.measure_from).await;
    let close = closing.elapsed();
    Ok(BenchReport {
        requests: tally.requests,
        errors: tally.errors,
        earlier: tally.earlier,
        late: tally.late,
        elapsed: config.duration,
        latency_us: tally.latency_us(),
        first_error: tally.first_error,
        client_stats,
        measured_from,
        longest_gap: tally.timeline.longest_gap(config.duration),
        timeline: config.timeline.map(|slot| tally.timeline.report(slot, config.duration)),
        fanout: None,
        connection_times: (config.workload != Workload::Connect).then_some(ConnectionTimes { open, close }),
    })
}

/// Logs when the measured period begins, for tools that act during a run (the network lab moves the
/// client, the reports read the server's CPU). Abort the task when the run is over.
fn announce_measuring(window: Window, duration: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep_until(window.measure_from).await;
        tracing::info!(?duration, "warm-up over, measuring");
    })
}

async fn show_progress(bar: indicatif::ProgressBar, window: Window, progress: Progress) {
    let total = (window.deadline - window.measure_from).as_millis() as u64;
    bar.set_length(total);
    let mut last = (Instant::now(), 0);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let done = progress.completed();
        let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, done);
        if now < window.measure_from {
            bar.set_message(format!("warming up, {rate:.0} req/s"));
        } else {
            bar.set_position((now - window.measure_from).as_millis() as u64);
            bar.set_message(format!("{rate:.0} req/s"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_up_counts_the_requests_slower_than_one_and_a_half_medians() {
        let mut latency_us = load::new_histogram();
        assert_eq!(held_up(&latency_us), 0.0);
        // 96 requests in one round trip of 50 ms, 4 held up by a loss (two and three round trips),
        // none just under the line.
        for _ in 0..96 {
            latency_us.record(50_000).unwrap();
        }
        latency_us.record(74_000).unwrap();
        for held in [101_000, 102_000, 150_000, 152_000] {
            latency_us.record(held).unwrap();
        }
        let share = held_up(&latency_us);
        assert!((share - 4.0 / 101.0).abs() < 1e-9, "{share}");
    }
}
