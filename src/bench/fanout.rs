//! The fan-out workload: one topic, `subscribers` subscriptions that read everything (each on a client
//! of its own, as separate devices would be), `stalled` more that never read, and publishers in a
//! closed loop (`connections` × `inflight`). What it measures is deliveries: messages received by the
//! reading subscribers per second, and each one's latency from the moment its Publish was sent.
//!
//! Every message carries its send time (nanoseconds since the run's start, as its first value; the
//! publishers and subscribers share one process and clock) and `value_size` bytes of payload.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::load::{self, Tally, Window};
use super::workload::RequestError;
use super::{BenchConfig, BenchError, BenchReport};
use crate::client::{Client, Event, Subscription};
use crate::pb::{Value, value};

/// The topic the run publishes to.
const TOPIC: &str = "bench-fanout";

/// How long subscribers keep reading after the last publish, for the messages still on their way.
const DRAIN: Duration = Duration::from_secs(1);

/// What the fan-out run adds to the report.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct FanoutReport {
    /// Subscribers that read everything, and those that never read.
    pub subscribers: usize,
    pub stalled: usize,
    /// Publishes answered in the measured period.
    pub published: u64,
    /// Messages the reading subscribers were told they missed (their queues were full).
    pub missed: u64,
}

pub async fn run(
    config: &BenchConfig,
    subscribers: usize,
    stalled: usize,
) -> Result<BenchReport, BenchError> {
    // Subscribers first: a subscription receives only what is published after it is made.
    let mut readers = Vec::with_capacity(subscribers);
    let mut idle = Vec::with_capacity(stalled);
    for i in 0..subscribers + stalled {
        let client = Client::connect_with(config.client.clone()).await?;
        let subscription = client.subscribe(TOPIC).await?;
        match i < subscribers {
            true => readers.push((client, subscription)),
            false => idle.push((client, subscription)),
        }
    }
    let mut publishers = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        publishers.push(Client::connect_with(config.client.clone()).await?);
    }

    let window = Window::new(config.warmup, config.duration);
    let measured_from = std::time::SystemTime::now() + config.warmup;
    let mut reading = JoinSet::new();
    for (client, subscription) in readers {
        reading.spawn(read(client, subscription, window));
    }
    let payload = Value::from(vec![b'm'; config.value_size]);
    let completed = Arc::new(AtomicU64::new(0));
    let mut publishing = JoinSet::new();
    for publisher in &publishers {
        for _ in 0..config.inflight {
            let (publisher, payload) = (publisher.clone(), payload.clone());
            let publish = move |_: u64| {
                let (publisher, payload) = (publisher.clone(), payload.clone());
                async move {
                    let sent_at = Value::from(window.start.elapsed().as_nanos() as i64);
                    publisher.publish(TOPIC, [sent_at, payload]).await.map(drop).map_err(RequestError::from)
                }
            };
            publishing.spawn(load::closed_worker(publish, window, completed.clone()));
        }
    }
    let mut published = Tally::new();
    while let Some(tally) = publishing.join_next().await {
        published.merge(tally.map_err(|e| BenchError::Setup(format!("a publisher failed: {e}")))?);
    }
    let mut delivered = Tally::new();
    let mut missed = 0;
    while let Some(outcome) = reading.join_next().await {
        let (tally, reader_missed) =
            outcome.map_err(|e| BenchError::Setup(format!("a subscriber failed: {e}")))?;
        delivered.merge(tally);
        missed += reader_missed;
    }
    for client in publishers.iter().chain(idle.iter().map(|(client, _)| client)) {
        client.close().await;
    }
    let first_error = published.first_error.clone().or(delivered.first_error.clone());
    Ok(BenchReport {
        requests: delivered.requests,
        errors: delivered.errors + published.errors,
        elapsed: config.duration,
        latency_us: delivered.latency_us,
        first_error,
        client_stats: Default::default(),
        measured_from,
        longest_gap: delivered.timeline.longest_gap(config.duration),
        timeline: config.timeline.map(|slot| delivered.timeline.report(slot, config.duration)),
        fanout: Some(FanoutReport { subscribers, stalled, published: published.requests, missed }),
    })
}

/// Reads one subscription until the run is over: every message published in the measured period is a
/// delivery, timed from its send time.
async fn read(client: Client, mut subscription: Subscription, window: Window) -> (Tally, u64) {
    let mut tally = Tally::new();
    let mut missed = 0;
    let until = window.deadline + DRAIN;
    loop {
        let event = tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            event = subscription.next() => event,
        };
        match event {
            Some(Ok(Event::Message(values))) => match sent_at(&values, window.start) {
                Some(sent) => tally.record(&window, sent, Ok(())),
                None => tally.record(
                    &window,
                    Instant::now(),
                    Err(RequestError::Other(format!("not a bench message: {values:?}"))),
                ),
            },
            Some(Ok(Event::Missed(n))) => missed += n,
            Some(Err(e)) => {
                tally.record(&window, Instant::now(), Err(e.into()));
                break;
            }
            None => break,
        }
    }
    drop(subscription);
    client.close().await;
    (tally, missed)
}

fn sent_at(values: &[Value], start: Instant) -> Option<Instant> {
    match values.first()?.value {
        Some(value::Value::Integer(nanos)) => Some(start + Duration::from_nanos(u64::try_from(nanos).ok()?)),
        _ => None,
    }
}
