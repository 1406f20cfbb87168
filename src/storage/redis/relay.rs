//! Pub/sub across gateways through Redis: a gateway publishes with SPUBLISH (PUBLISH on a plain
//! Redis), and holds one SSUBSCRIBE per topic that any of its subscribers listens to; what Redis
//! pushes is delivered to them through the gateway's own [`Broker`], with its bounded queues and lag
//! reporting.
//!
//! Every message, the publishing gateway's own subscribers' included, comes back through Redis, so all
//! subscribers see one order: Redis keeps each connection's publishes to a channel in order, and a
//! gateway delivers what it receives one message at a time.
//!
//! On a cluster each topic is subscribed on one link to one node, and only that link's pushes are
//! delivered (`shards.rs`): each message once, however many nodes of its shard send it.
//!
//! Gaps are reported, never hidden: when a link to Redis breaks (a failover, a restart: on a cluster
//! the topics subscribed on that link; on a plain Redis every topic) or Redis ends a subscription
//! itself (its slot moved), the subscribers concerned get a `Missed` of 1 (at least one message may be
//! missing) and the subscription is made again, by a task of its own that tries until it succeeds
//! (on the new master once a replica has taken over); so do the subscribers of a topic whose message
//! was dropped because the queue of pushes was full.
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

use super::connection::{Connection, Connector, RedisConfig, counted, storage_error};
use super::shards::{Link, Shards};
use crate::pb::CommandResponse;
use crate::pubsub::{Broker, Relay};
use crate::storage::{StorageError, StorageResult};

/// Pushes from Redis waiting to be delivered, in number; in bytes of messages, `--redis-push-buffer`
/// ([`super::RedisConfig::push_buffer`]). Beyond either, messages are dropped and their subscribers
/// told. (Bounded apart from the connection memory budget: a gateway holds at most this much of
/// Redis's pushes.)
const PUSH_QUEUE: usize = 4_096;

/// How often topics without subscribers left are unsubscribed from.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Waits between attempts to make lost subscriptions again: from the first to the last, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LAST: Duration = Duration::from_secs(1);

/// A push and the link it came from: `None` from a plain Redis's one connection.
type Push = (Option<Link>, PushInfo);

/// Where Redis's pushes go: a bounded queue, so that a flood of published messages cannot grow this
/// process without bound. A message that does not fit is dropped and its topic remembered; a dropped
/// push of another kind (a lost connection, a subscription confirmed or ended) could concern any
/// topic, so every topic is then told it may have missed messages.
#[derive(Clone)]
pub(super) struct Pushes {
    queue: mpsc::Sender<Push>,
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
    /// What a connection (`link`, on a cluster) is given to push with: never blocks.
    pub(super) fn sender(
        &self,
        link: Option<Link>,
    ) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
        let pushes = self.clone();
        move |info: PushInfo| {
            let overflow = &pushes.shared;
            let len = message_len(&info);
            let dropped = if overflow.queued_bytes.load(Ordering::Acquire) + len > pushes.max_bytes {
                info
            } else {
                overflow.queued_bytes.fetch_add(len, Ordering::AcqRel);
                match pushes.queue.try_send((link.clone(), info)) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        overflow.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                        e.into_inner().1
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
    pushes: Mutex<Option<mpsc::Receiver<Push>>>,
    overflow: Arc<Overflow>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
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
    /// A cluster's subscriptions, on the relay's own links.
    shards: Shards,
    /// Wakes the task that makes lost subscriptions again.
    repair: tokio::sync::Notify,
}

impl State {
    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    fn topic<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(channel.strip_prefix(self.prefix.as_bytes())?).ok()
    }

    /// Whether `channel` is subscribed to now (on a cluster: it has a home; on a plain Redis: Redis
    /// confirmed it since the connection was last lost).
    fn subscribed(&self, channel: &str) -> bool {
        self.shards.has_home(channel.as_bytes()) || self.confirmed.lock().contains(channel.as_bytes())
    }

    /// Receives `channel`'s messages from now on (SSUBSCRIBE on a cluster, on the master of its
    /// slot; SUBSCRIBE on a plain Redis). Called under the `joined` lock.
    async fn subscribe(&self, connector: &Connector, channel: &str) -> StorageResult<()> {
        match connector.connection()? {
            Connection::Cluster(cluster) => {
                self.shards.subscribe(Connection::Cluster(cluster), channel).await
            }
            Connection::Single(mut single) => counted(single.subscribe(channel).await.map_err(storage_error)),
        }
    }

    /// Called under the `joined` lock.
    async fn unsubscribe(&self, connector: &Connector, channel: &str) {
        match connector.connection() {
            Ok(Connection::Cluster(_)) => self.shards.unsubscribe(channel).await,
            Ok(Connection::Single(mut single)) => {
                let _ = counted(single.unsubscribe(channel).await.map_err(storage_error));
            }
            Err(_) => {}
        }
    }
}

impl RedisRelay {
    /// The relay (once given its connector) and the push channel its connection must deliver to.
    pub(super) fn new(config: &RedisConfig) -> (Pushes, impl FnOnce(Arc<Connector>) -> Self + use<>) {
        let (queue, receiver) = mpsc::channel(PUSH_QUEUE);
        let overflow = Arc::new(Overflow::default());
        let pushes = Pushes { queue, max_bytes: config.push_buffer, shared: overflow.clone() };
        let state = Arc::new(State {
            prefix: config.prefix.clone(),
            joined: tokio::sync::Mutex::default(),
            confirmed: Mutex::default(),
            shards: Shards::new(config.clone(), pushes.clone()),
            repair: tokio::sync::Notify::new(),
        });
        let make = move |connector| RedisRelay {
            connector,
            state,
            pushes: Mutex::new(Some(receiver)),
            overflow,
            tasks: Mutex::default(),
        };
        (pushes, make)
    }
}

impl Drop for RedisRelay {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
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
        let repair = repair(self.connector.clone(), self.state.clone());
        *self.tasks.lock() = vec![tokio::spawn(delivery.run(pushes)), tokio::spawn(repair)];
    }

    fn join(&self, topic: String) -> BoxFuture<'static, Result<(), String>> {
        let (connector, state) = (self.connector.clone(), self.state.clone());
        async move {
            let channel = state.channel(&topic);
            let mut joined = state.joined.lock().await;
            // Joined and linked now: nothing to do. Joined but not linked (the link was lost and is
            // being made again): subscribe now, so that this subscriber misses nothing from its answer on.
            if joined.contains(&channel) && state.subscribed(&channel) {
                return Ok(());
            }
            state.subscribe(&connector, &channel).await.map_err(|e| e.to_string())?;
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
    async fn run(self, mut pushes: mpsc::Receiver<Push>) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some((link, info)) => {
                        self.overflow.queued_bytes.fetch_sub(message_len(&info), Ordering::AcqRel);
                        self.report_overflow().await;
                        self.handle(link, info).await;
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
            // On a cluster a link may have been lost without the news: every subscription is made
            // again, on new links, and the old links' pushes are not delivered any more. (Channels
            // without a home were told when they lost it.)
            let homed = self.state.shards.reset();
            if homed.is_empty() {
                self.gap_everywhere().await;
            }
            self.lost(homed);
        }
        let dropped: Vec<Vec<u8>> = self.overflow.topics.lock().drain().collect();
        for channel in dropped {
            self.gap(&channel);
        }
    }

    /// Every topic this gateway listens to may have missed messages: the connection to a plain Redis
    /// was lost, or news of a lost link was dropped.
    async fn gap_everywhere(&self) {
        let joined: Vec<String> = self.state.joined.lock().await.iter().cloned().collect();
        for channel in joined {
            self.gap(channel.as_bytes());
        }
    }

    /// Channels whose subscriptions were lost: their subscribers are told, and they are made again.
    fn lost(&self, channels: Vec<Vec<u8>>) {
        if channels.is_empty() {
            return;
        }
        let mut confirmed = self.state.confirmed.lock();
        for channel in channels {
            confirmed.remove(&channel);
            self.gap(&channel);
        }
        self.state.repair.notify_one();
    }

    /// What `link` (`None`: a plain Redis's connection) pushed.
    async fn handle(&self, link: Option<Link>, info: PushInfo) {
        let channel = match info.data.first() {
            Some(RedisValue::BulkString(channel)) => channel.as_slice(),
            _ => &[],
        };
        // On a cluster, a channel's messages and news come from its home only: another node of its
        // shard may send them too, or a link lost or left since.
        let shards = &self.state.shards;
        if let Some(link) = &link
            && info.kind != PushKind::Disconnection
            && !shards.is_home(channel, link)
        {
            return;
        }
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(RedisValue::BulkString(message)) = info.data.get(1) else { return };
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
            // A second confirmation is a subscription made again, after a gap.
            PushKind::Subscribe | PushKind::SSubscribe
                if !channel.is_empty() && !self.state.confirmed.lock().insert(channel.to_vec()) =>
            {
                self.gap(channel);
            }
            // Not asked for (an unsubscription asked for has taken the channel's home or its place
            // in `joined` first): Redis ended it, its slot moved, say. Subscribe again, wherever the
            // topic lives now (the repair task skips channels no longer joined).
            PushKind::Unsubscribe | PushKind::SUnsubscribe if !channel.is_empty() => {
                if let Some(link) = &link {
                    shards.end(channel, link);
                }
                self.lost(vec![channel.to_vec()]);
            }
            // A cluster's link: the channels subscribed on it. redis-rs's cluster connection does not
            // make them again (it has no push sender, so keeps no subscriptions): the repair task does.
            PushKind::Disconnection if let Some(link) = &link => self.lost(shards.lost(link)),
            // A plain Redis: redis-rs's connection manager makes every subscription again itself.
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
            self.state.unsubscribe(&self.connector, &channel).await;
        }
    }
}

/// Makes the lost subscriptions of joined channels again, whenever told to, and until each is made:
/// after a failover, on the replica that took over, once the cluster says it has. Apart from the
/// delivery task, so that deliveries of other topics go on meanwhile.
async fn repair(connector: Arc<Connector>, state: Arc<State>) {
    loop {
        state.repair.notified().await;
        let mut pause = RETRY_FIRST;
        loop {
            let mut failed = 0;
            {
                let joined = state.joined.lock().await;
                for channel in joined.iter().filter(|channel| !state.subscribed(channel)) {
                    if let Err(e) = state.subscribe(&connector, channel).await {
                        tracing::debug!(channel, error = %e, "cannot subscribe again yet; retrying");
                        failed += 1;
                    }
                }
            }
            if failed == 0 {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_LAST);
        }
    }
}
