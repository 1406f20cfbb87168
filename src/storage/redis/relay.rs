//! Pub/sub across gateways through Redis: a gateway publishes with SPUBLISH (PUBLISH on a plain
//! Redis), and holds one SSUBSCRIBE per topic that any of its subscribers listens to; what Redis
//! pushes is delivered to them through the gateway's own [`Broker`], with its bounded queues and lag
//! reporting.
//!
//! Every message, the publishing gateway's own subscribers' included, comes back through Redis, so all
//! subscribers see one order: Redis keeps each connection's publishes to a channel in order, and a
//! gateway delivers what it receives one message at a time.
//!
//! Gaps are reported, never hidden: when a link to Redis breaks (a failover, a restart: redis-rs does
//! not say which shard's, so every topic of the gateway is told) or Redis ends a subscription itself
//! (its slot moved), the subscribers concerned get a `Missed` of 1 (at least one message may be
//! missing) and the subscription is made again; so do the subscribers of a topic whose message was
//! dropped because the queue of pushes was full.
//!
//! A topic's channel is `--redis-prefix` + its name; only messages that decode as answer frames (what
//! a gateway publishes) are passed on.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prost::Message as _;
use redis::{PushInfo, PushKind, Value as RedisValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connection::Connector;
use crate::pb::CommandResponse;
use crate::pubsub::{Broker, Relay};
use crate::storage::StorageError;

/// Pushes from Redis waiting to be delivered, in number; in bytes of messages, `--redis-push-buffer`
/// ([`super::RedisConfig::push_buffer`]). Beyond either, messages are dropped and their subscribers
/// told. (Bounded apart from the connection memory budget: a gateway holds at most this much of
/// Redis's pushes.)
const PUSH_QUEUE: usize = 4_096;

/// How often topics without subscribers left are unsubscribed from.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Where Redis's pushes go: a bounded queue, so that a flood of published messages cannot grow this
/// process without bound. A message that does not fit is dropped and its topic remembered; a dropped
/// push of another kind (a lost connection, a subscription confirmed or ended) could concern any
/// topic, so every topic is then told it may have missed messages.
#[derive(Clone)]
pub(super) struct Pushes {
    queue: mpsc::Sender<PushInfo>,
    max_bytes: usize,
    shared: Arc<Overflow>,
}

#[derive(Default)]
struct Overflow {
    queued_bytes: AtomicUsize,
    topics: Mutex<HashSet<Vec<u8>>>,
    everything: AtomicBool,
}

fn message_len(info: &PushInfo) -> usize {
    match info.data.get(1) {
        Some(RedisValue::BulkString(bytes)) => bytes.len(),
        _ => 0,
    }
}

impl Pushes {
    /// What the connection is given to push with: never blocks.
    pub(super) fn sender(&self) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
        let pushes = self.clone();
        move |info: PushInfo| {
            let overflow = &pushes.shared;
            let len = message_len(&info);
            let dropped = if overflow.queued_bytes.load(Ordering::Acquire) + len > pushes.max_bytes {
                info
            } else {
                overflow.queued_bytes.fetch_add(len, Ordering::AcqRel);
                match pushes.queue.try_send(info) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        overflow.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                        e.into_inner()
                    }
                }
            };
            match (&dropped.kind, dropped.data.first()) {
                (PushKind::Message | PushKind::SMessage, Some(RedisValue::BulkString(channel))) => {
                    overflow.topics.lock().insert(channel.clone());
                }
                _ => overflow.everything.store(true, Ordering::Release),
            }
            Ok(())
        }
    }
}

pub(super) struct RedisRelay {
    connector: Arc<Connector>,
    state: Arc<State>,
    pushes: Mutex<Option<mpsc::Receiver<PushInfo>>>,
    overflow: Arc<Overflow>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct State {
    /// Put before a topic's name to make its channel: `--redis-prefix`, so that qkv's channels are
    /// told apart from others' in a shared Redis.
    prefix: String,
    /// Channels this gateway subscribes to in Redis; changed only under this lock, across the Redis
    /// call, so a join and a sweep of the same topic cannot cross.
    joined: tokio::sync::Mutex<HashSet<String>>,
    /// Channels whose subscription Redis has confirmed since the link was last lost: a second
    /// confirmation is a subscription made again, after a gap.
    confirmed: Mutex<HashSet<Vec<u8>>>,
}

impl State {
    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    fn topic<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(channel.strip_prefix(self.prefix.as_bytes())?).ok()
    }
}

impl RedisRelay {
    /// The relay (once given its connector) and the push channel its connection must deliver to.
    pub(super) fn new(
        prefix: &str,
        max_bytes: usize,
    ) -> (Pushes, impl FnOnce(Arc<Connector>) -> Self + use<>) {
        let (queue, receiver) = mpsc::channel(PUSH_QUEUE);
        let overflow = Arc::new(Overflow::default());
        let pushes = Pushes { queue, max_bytes, shared: overflow.clone() };
        let state = Arc::new(State {
            prefix: prefix.to_owned(),
            joined: tokio::sync::Mutex::default(),
            confirmed: Mutex::default(),
        });
        let make = move |connector| RedisRelay {
            connector,
            state,
            pushes: Mutex::new(Some(receiver)),
            overflow,
            task: Mutex::new(None),
        };
        (pushes, make)
    }
}

impl Drop for RedisRelay {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

impl Relay for RedisRelay {
    fn attach(&self, broker: Broker) {
        let Some(pushes) = self.pushes.lock().take() else { return };
        let delivery = Delivery {
            connector: self.connector.clone(),
            state: self.state.clone(),
            overflow: self.overflow.clone(),
            broker,
        };
        *self.task.lock() = Some(tokio::spawn(delivery.run(pushes)));
    }

    fn join(&self, topic: String) -> BoxFuture<'static, Result<(), String>> {
        let (connector, state) = (self.connector.clone(), self.state.clone());
        async move {
            let channel = state.channel(&topic);
            let mut joined = state.joined.lock().await;
            // Joined and linked now: nothing to do. Joined but not linked (the link was lost and is
            // being made again): subscribe now, so that this subscriber misses nothing from its answer on.
            if joined.contains(&channel) && state.confirmed.lock().contains(channel.as_bytes()) {
                return Ok(());
            }
            let mut connection = connector.connection().map_err(|e| e.to_string())?;
            connection.subscribe(&channel).await.map_err(|e| e.to_string())?;
            joined.insert(channel);
            Ok(())
        }
        .boxed()
    }

    fn publish(&self, topic: String, message: Vec<u8>) -> BoxFuture<'static, Result<usize, StorageError>> {
        let (connector, channel) = (self.connector.clone(), self.state.channel(&topic));
        async move { connector.connection()?.publish(&channel, &message).await }.boxed()
    }
}

/// The task that delivers what Redis pushes.
struct Delivery {
    connector: Arc<Connector>,
    state: Arc<State>,
    overflow: Arc<Overflow>,
    broker: Broker,
}

impl Delivery {
    async fn run(self, mut pushes: mpsc::Receiver<PushInfo>) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(info) => {
                        self.overflow.queued_bytes.fetch_sub(message_len(&info), Ordering::AcqRel);
                        self.report_overflow().await;
                        self.handle(info).await;
                    }
                    None => return,
                },
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    fn gap(&self, channel: &[u8]) {
        if let Some(topic) = self.state.topic(channel) {
            self.broker.report_gap(topic);
        }
    }

    /// Gaps for what the push queue had no room for.
    async fn report_overflow(&self) {
        if self.overflow.everything.swap(false, Ordering::AcqRel) {
            self.gap_everywhere().await;
        }
        let dropped: Vec<Vec<u8>> = self.overflow.topics.lock().drain().collect();
        for channel in dropped {
            self.gap(&channel);
        }
    }

    /// Every topic this gateway listens to may have missed messages: the link to some shard was lost
    /// (redis-rs does not say which), or news of it was dropped.
    async fn gap_everywhere(&self) {
        let joined: Vec<String> = self.state.joined.lock().await.iter().cloned().collect();
        for channel in joined {
            self.gap(channel.as_bytes());
        }
    }

    async fn handle(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(RedisValue::BulkString(channel)), Some(RedisValue::BulkString(message))) =
                    (info.data.first(), info.data.get(1))
                else {
                    return;
                };
                let Some(topic) = self.state.topic(channel) else { return };
                // Only what a qkv gateway published is passed on: an answer frame, as subscribers get it.
                if CommandResponse::decode(message.as_slice()).is_err() {
                    tracing::debug!(
                        topic,
                        "dropped a message on a qkv channel that no qkv gateway published"
                    );
                    return;
                }
                // A message the memory budget cannot hold is missed by every subscriber, and they are told.
                if self.broker.publish(topic, message.clone()).await.is_err() {
                    self.broker.report_gap(topic);
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                let Some(RedisValue::BulkString(channel)) = info.data.first() else { return };
                if !self.state.confirmed.lock().insert(channel.clone()) {
                    self.gap(channel);
                }
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                let Some(RedisValue::BulkString(channel)) = info.data.first() else { return };
                self.state.confirmed.lock().remove(channel);
                let Ok(channel) = String::from_utf8(channel.clone()) else { return };
                // Not asked for (its slot moved, say): subscribe again, wherever the topic lives now.
                let mut joined = self.state.joined.lock().await;
                if joined.contains(&channel) {
                    self.gap(channel.as_bytes());
                    let subscribed = match self.connector.connection() {
                        Ok(mut connection) => connection.subscribe(&channel).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = subscribed {
                        // The next subscriber to join subscribes again.
                        tracing::warn!(channel, error = %e, "cannot subscribe again after Redis ended the subscription");
                        joined.remove(&channel);
                    }
                }
            }
            PushKind::Disconnection => {
                self.state.confirmed.lock().clear();
                self.gap_everywhere().await;
            }
            _ => {}
        }
    }

    /// Unsubscribes from topics that no subscriber of this gateway listens to any more.
    async fn sweep(&self) {
        let mut joined = self.state.joined.lock().await;
        let idle: Vec<String> = joined
            .iter()
            .filter(|channel| {
                self.state.topic(channel.as_bytes()).is_none_or(|t| self.broker.subscribers(t) == 0)
            })
            .cloned()
            .collect();
        for channel in idle {
            joined.remove(&channel);
            if let Ok(mut connection) = self.connector.connection() {
                let _ = connection.unsubscribe(&channel).await;
            }
        }
    }
}
