//! A closed-loop load generator: `connections` connections, each with `inflight` requests outstanding
//! at all times, for a fixed duration after a warm-up. Latencies go into an HdrHistogram.
//!
//! Every load loop is bounded in time: nothing here runs past `warmup + duration` (plus the time the
//! requests already in flight take to finish).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::{Client, ClientConfig, ClientError};
use crate::pb::Value;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Ping with an empty payload: the transport and framing alone.
    Ping,
    /// Hget of existing keys.
    Hget,
    /// Hset of existing keys.
    Hset,
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub client: ClientConfig,
    pub workload: Workload,
    pub connections: usize,
    pub inflight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub value_size: usize,
    pub keys: usize,
}

/// The outcome of a run, over the measured period only.
#[derive(Debug)]
pub struct BenchReport {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
}

impl BenchReport {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

const TABLE: &str = "bench";

fn key(i: usize) -> String {
    format!("key:{i:010}")
}

/// Runs the benchmark: loads the keys, warms up, measures.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, ClientError> {
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        clients.push(Client::connect_with(config.client.clone()).await?);
    }
    let value = Value::from(vec![b'v'; config.value_size]);
    if config.workload != Workload::Ping {
        preload(&clients[0], config.keys.max(1), &value).await?;
    }

    let start = Instant::now();
    let measure_from = start + config.warmup;
    let deadline = measure_from + config.duration;
    let mut workers = tokio::task::JoinSet::new();
    for (c, client) in clients.iter().enumerate() {
        for i in 0..config.inflight {
            let worker = Worker {
                client: client.clone(),
                workload: config.workload,
                keys: config.keys.max(1),
                value: value.clone(),
                next_key: (c * config.inflight + i) * 7919,
            };
            workers.spawn(worker.run(measure_from, deadline));
        }
    }
    let mut report = BenchReport {
        requests: 0,
        errors: 0,
        elapsed: config.duration,
        latency_us: new_histogram(),
        first_error: None,
    };
    while let Some(result) = workers.join_next().await {
        let tally = result.map_err(|e| ClientError::Protocol(format!("a bench worker panicked: {e}")))?;
        report.requests += tally.requests;
        report.errors += tally.errors;
        report.first_error = report.first_error.or(tally.first_error);
        let _ = report.latency_us.add(&tally.latency_us);
    }
    for client in &clients {
        client.close().await;
    }
    Ok(report)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; values above are clamped, never dropped.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

async fn preload(client: &Client, keys: usize, value: &Value) -> Result<(), ClientError> {
    const BATCH: usize = 1000;
    for start in (0..keys).step_by(BATCH) {
        let pairs = (start..(start + BATCH).min(keys)).map(|i| crate::pb::Kvpair::new(key(i), value.clone()));
        client.hmset(TABLE, pairs).await?;
    }
    Ok(())
}

struct Worker {
    client: Client,
    workload: Workload,
    keys: usize,
    value: Value,
    next_key: usize,
}

struct Tally {
    requests: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    first_error: Option<String>,
}

impl Worker {
    async fn run(mut self, measure_from: Instant, deadline: Instant) -> Tally {
        let mut tally = Tally { requests: 0, errors: 0, latency_us: new_histogram(), first_error: None };
        loop {
            let sent = Instant::now();
            if sent >= deadline {
                return tally;
            }
            let result = self.request().await;
            if sent < measure_from {
                continue;
            }
            match result {
                Ok(()) => {
                    tally.requests += 1;
                    tally.latency_us.saturating_record(sent.elapsed().as_micros() as u64);
                }
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }

    async fn request(&mut self) -> Result<(), ClientError> {
        self.next_key = (self.next_key + 1) % self.keys;
        match self.workload {
            Workload::Ping => self.client.ping(bytes::Bytes::new()).await.map(drop),
            Workload::Hget => match self.client.hget(TABLE, &key(self.next_key)).await? {
                Some(_) => Ok(()),
                None => Err(ClientError::Protocol("a preloaded key is missing".into())),
            },
            Workload::Hset => {
                self.client.hset(TABLE, &key(self.next_key), self.value.clone()).await.map(drop)
            }
        }
    }
}
