//! The fan-out workload: one topic, `subscribers` subscriptions that read everything (each on a client
//! of its own, as separate devices would be), `stalled` more that never read, and publishers: a closed
//! loop (`connections` × `inflight`), or with `rate` an open loop of that many publishes per second. What it measures is deliveries: messages received by the
//! reading subscribers per second, and each one's latency from the moment its Publish was sent.
//!
//! Subscribers subscribe concurrently, `connect_concurrency` at a time; over QUIC their connections
//! share client endpoints (`connections_per_socket` to a UDP socket), over TCP each subscription has a
//! connection of its own (and nothing else). So 10,000 subscribers take seconds to set up, not minutes.
//!
//! Every message carries its send time (nanoseconds since the run's start, as its first value; the
//! publishers and subscribers share one process and clock) and `value_size` bytes of payload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connections::CLOSE_LIMIT;
use super::load::{self, Tally, Window};
use super::pacer::Pacer;
use super::workload::RequestError;
use super::{BenchConfig, BenchError, BenchReport, ConnectionTimes, Progress};
use crate::client::{Client, ClientConfig, ClientEndpoint, ClientError, ClientStats, Event, Subscription};
use crate::pb::{Value, status, value};
use crate::transport::Transport;

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
    /// Of the deliveries the publishes answered in the measured period asked for, those the server
    /// could not queue (`Publish`'s lagging count): the stalled subscribers' once their queues filled.
    #[serde(default)]
    pub lagging: u64,
    /// Stalled subscribers the server ended for falling behind (`--lag-policy drop`), warm-up
    /// included: one dropped then is neither lagging nor missed in the measured period.
    #[serde(default)]
    pub dropped: usize,
}

pub async fn run(
    config: &BenchConfig,
    subscribers: usize,
    stalled: usize,
    progress: &Progress,
) -> Result<BenchReport, BenchError> {
    // Subscribers first: a subscription receives only what is published after it is made.
    let subscribing = Instant::now();
    let (mut endpoints, mut clients, subscriptions) = subscribe(config, &config.client, subscribers).await?;
    // A stalled subscriber reads nothing, and its client holds nothing for it either: over QUIC a
    // client's queue would read it all as it came (`ClientConfig::subscription_queue`), and the server
    // would see no stall at all.
    let unread = ClientConfig { subscription_queue: None, ..config.client.clone() };
    let (stalled_endpoints, stalled_clients, idle) = subscribe(config, &unread, stalled).await?;
    endpoints.extend(stalled_endpoints);
    clients.extend(stalled_clients);
    let open = subscribing.elapsed();
    tracing::info!(subscriptions = subscriptions.len() + idle.len(), ?open, "subscribed");
    let mut publishers = Vec::with_capacity(config.connections);
    for _ in 0..config.connections.max(1) {
        publishers.push(Client::connect_with(config.client.clone()).await?);
    }

    let window = Window::new(config.warmup, config.duration);
    let measured_from = std::time::SystemTime::now() + config.warmup;
    let announcer = super::announce_measuring(window, config.duration);
    let mut reading = JoinSet::new();
    for subscription in subscriptions {
        reading.spawn(read(subscription, window));
    }
    let payload = Value::from(vec![b'm'; config.value_size]);
    let lagging = Arc::new(AtomicU64::new(0));
    let publish = |publisher: &Client| {
        let (publisher, payload, lagging) = (publisher.clone(), payload.clone(), lagging.clone());
        move |_: u64, counted_by: Instant| {
            let (publisher, payload, lagging) = (publisher.clone(), payload.clone(), lagging.clone());
            async move {
                let sent_at = Value::from(window.start.elapsed().as_nanos() as i64);
                let published =
                    publisher.publish(TOPIC, [sent_at, payload]).await.map_err(RequestError::from)?;
                // Counted as the publishes are (by the instant the loop counts them by), so that the
                // lagging count is of the publishes the report counts.
                if counted_by >= window.measure_from && counted_by < window.deadline {
                    lagging.fetch_add(published.lagging as u64, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    };
    let mut publishing = JoinSet::new();
    // Lives until every publisher has finished (the open loop's timers use it).
    let pacer = if config.rate.is_some() { Pacer::start() } else { Pacer::tokio() };
    match config.rate {
        // Paced: `rate` publishes per second over all publishers (each a delivery to every subscriber).
        Some(rate) => {
            let schedule = publishers.iter().map(publish).collect();
            for publisher in load::open_loop(schedule, rate, config.inflight, window, progress, &pacer) {
                publishing.spawn(publisher);
            }
        }
        None => {
            for publisher in &publishers {
                for _ in 0..config.inflight {
                    publishing.spawn(load::closed_worker(publish(publisher), window, progress.clone()));
                }
            }
        }
    }
    let failed = |what: &str, e: tokio::task::JoinError| BenchError::Setup(format!("{what} failed: {e}"));
    let mut published = Tally::new();
    while let Some(tally) = publishing.join_next().await {
        published.merge(tally.map_err(|e| failed("a publisher", e))?);
    }
    let mut delivered = Tally::new();
    let mut missed = 0;
    while let Some(outcome) = reading.join_next().await {
        let (tally, reader_missed) = outcome.map_err(|e| failed("a subscriber", e))?;
        delivered.merge(tally);
        missed += reader_missed;
    }
    announcer.abort();
    let dropped = join_all(idle.into_iter().map(ended_for_lagging)).await.into_iter().filter(|d| *d).count();
    let closing = Instant::now();
    let everyone = clients.iter().chain(&publishers);
    let closed = tokio::time::timeout(CLOSE_LIMIT, async {
        join_all(everyone.map(Client::close)).await;
        join_all(endpoints.iter().map(ClientEndpoint::wait_idle)).await;
    })
    .await;
    if closed.is_err() {
        tracing::warn!(limit = ?CLOSE_LIMIT, "the connections did not all close in time");
    }
    let close = closing.elapsed();
    let mut client_stats = ClientStats::default();
    for client in clients.iter().chain(&publishers) {
        client_stats += client.stats();
    }
    let first_error = published.first_error.clone().or(delivered.first_error.clone());
    Ok(BenchReport {
        requests: delivered.requests,
        errors: delivered.errors + published.errors,
        earlier: delivered.earlier,
        late: delivered.late,
        elapsed: config.duration,
        latency_us: delivered.latency_us(),
        first_error,
        client_stats,
        measured_from,
        longest_gap: delivered.timeline.longest_gap(config.duration),
        timeline: config.timeline.map(|slot| delivered.timeline.report(slot, config.duration)),
        fanout: Some(FanoutReport {
            subscribers,
            stalled,
            published: published.requests,
            missed,
            lagging: lagging.load(Ordering::Relaxed),
            dropped,
        }),
        connection_times: Some(ConnectionTimes { open, close }),
    })
}

/// Subscribes `n` clients to the topic, `connect_concurrency` at a time. Returns the endpoints they
/// share, the clients (to close at the end) and their subscriptions, in the same order.
async fn subscribe(
    config: &BenchConfig,
    client: &ClientConfig,
    n: usize,
) -> Result<(Vec<ClientEndpoint>, Vec<Client>, Vec<Subscription>), BenchError> {
    let per_endpoint = match client.transport {
        Transport::Quic => config.connections_per_socket.max(1),
        _ => n.max(1),
    };
    let mut endpoints = Vec::with_capacity(n.div_ceil(per_endpoint));
    for _ in 0..n.div_ceil(per_endpoint) {
        endpoints.push(ClientEndpoint::new(client.clone()).await?);
    }
    let clients: Vec<Client> = (0..n).map(|i| endpoints[i / per_endpoint].client()).collect();
    let subscriptions = futures_util::stream::iter(&clients)
        .map(|client| client.subscribe(TOPIC))
        .buffered(config.connect_concurrency.max(1))
        .try_collect()
        .await?;
    Ok((endpoints, clients, subscriptions))
}

/// Reads one subscription until the run is over: every message published in the measured period is a
/// delivery, timed from its send time.
async fn read(mut subscription: Subscription, window: Window) -> (Tally, u64) {
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
    (tally, missed)
}

/// Whether the server ended a stalled `subscription` for falling behind (a 429), found by reading
/// what it holds to its end, within `DRAIN` (one still open, under `--lag-policy skip`, reads its
/// backlog and then waits).
async fn ended_for_lagging(mut subscription: Subscription) -> bool {
    let reading = async {
        loop {
            match subscription.next().await {
                Some(Ok(_)) => {}
                Some(Err(ClientError::SubscriptionEnded { status, .. })) => {
                    return status == status::TOO_MANY_REQUESTS;
                }
                Some(Err(_)) | None => return false,
            }
        }
    };
    tokio::time::timeout(DRAIN, reading).await.unwrap_or(false)
}

fn sent_at(values: &[Value], start: Instant) -> Option<Instant> {
    match values.first()?.value {
        Some(value::Value::Integer(nanos)) => Some(start + Duration::from_nanos(u64::try_from(nanos).ok()?)),
        _ => None,
    }
}
