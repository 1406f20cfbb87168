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
//! the topics subscribed on that link; on a plain Redis every topic), does not answer a command in
//! time (a SSUBSCRIBE, a SUNSUBSCRIBE, on a cluster the ROLE every [`HEARTBEAT`]) or Redis ends a subscription
//! itself (its slot moved), the subscribers concerned get a `Missed` of 1 (at least one message may be
//! missing) and the subscription is made again, by a task of its own that tries until it succeeds
//! (on the new master once a replica has taken over; on a plain Redis, by redis-rs's connection
//! manager as it connects again, which the heartbeat makes it do by sending PING until Redis answers,
//! whether or not anything else goes through this gateway, or by the repair task on a new manager,
//! when Redis had refused the gateway's credentials: see `SingleRedis`); so do the subscribers of a
//! topic whose message was dropped because the queue of pushes was full.
//!
//! Four tasks: delivery (pushes to the broker; never waits on Redis), repair, sweep and heartbeat.
//!
//! A topic's channel is `--redis-prefix` + its name; only messages that decode as answer frames (what
//! a gateway publishes) are passed on.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prost::Message as _;
use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value as RedisValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connection::{Connection, Connector, REPLACED, RedisConfig, SingleRedis, counted, storage_error};
use super::keyed_locks::KeyedLocks;
use super::shards::{Link, Masters, Shards};
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

/// How often each of a cluster's subscription links is sent ROLE (a replica's channels are made again on
/// their master: `Shards::demoted`). A link that does not answer within
/// `--redis-timeout` is lost: a node gone silent (powered off, cut off, stalled) is noticed within
/// this plus `--redis-timeout`, 7 s by default, where nothing else would notice it before TCP
/// keepalive (`connection.rs`). A plain Redis's connection is sent PING as often, so that a connection
/// lost without news reaching the relay is made again all the same.
const HEARTBEAT: Duration = Duration::from_secs(5);

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
    /// Pushes queued so far, in all: where in the order of deliveries a push dropped falls.
    queued: AtomicU64,
    /// What was dropped, by the number of pushes queued before it: its gap is reported once that many
    /// have been delivered, so that no message published before what was lost comes after the gap
    /// (PROTOCOL.md, 6.1). Drops with no push queued between them share an entry, so there are at most
    /// as many entries as pushes in the queue, plus one.
    dropped: Mutex<DroppedQueue>,
}

/// The channel names the drops waiting to be told may hold, in all; past it a drop tells every topic.
const DROPPED_NAMES: usize = 4_096;

#[derive(Default)]
struct DroppedQueue {
    entries: VecDeque<(u64, Dropped)>,
    /// Channel names in `entries`, at most [`DROPPED_NAMES`].
    names: usize,
}

/// What pushes dropped at one place in the queue concerned.
#[derive(Default)]
struct Dropped {
    /// Channels whose messages were dropped.
    topics: HashSet<Vec<u8>>,
    /// A push of another kind (a lost connection, a subscription confirmed or ended), which could
    /// concern any topic.
    everything: bool,
    /// The news of a new connection manager (`SingleRedis`): its subscriptions must be made again all
    /// the same.
    replaced: bool,
    /// Messages of more channels than [`DROPPED_NAMES`] allows to keep: every topic is told.
    all_topics: bool,
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
                    Ok(()) => {
                        overflow.queued.fetch_add(1, Ordering::AcqRel);
                        return Ok(());
                    }
                    Err(e) => {
                        overflow.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                        e.into_inner().1
                    }
                }
            };
            let mut queue = overflow.dropped.lock();
            let DroppedQueue { entries, names } = &mut *queue;
            let position = overflow.queued.load(Ordering::Acquire);
            if entries.back().is_none_or(|(at, _)| *at != position) {
                entries.push_back((position, Dropped::default()));
            }
            let Some((_, here)) = entries.back_mut() else { return Ok(()) };
            match (&dropped.kind, dropped.data.first()) {
                (PushKind::Message | PushKind::SMessage, Some(RedisValue::BulkString(channel))) => {
                    if *names >= DROPPED_NAMES {
                        here.all_topics = true;
                    } else if here.topics.insert(channel.clone()) {
                        *names += 1;
                    }
                }
                (PushKind::Disconnection, Some(RedisValue::SimpleString(marker))) if marker == REPLACED => {
                    here.replaced = true;
                }
                _ => here.everything = true,
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
    /// Channels this gateway subscribes to in Redis. Never held across an await.
    joined: Mutex<HashSet<String>>,
    /// A channel's, held by a join and a sweep across their Redis calls for it, so that a join and a
    /// sweep of the same topic cannot cross; and by the repair task only to undo what a sweep took
    /// back meanwhile. Never by the delivery task, which must not wait for Redis.
    changing: KeyedLocks,
    /// On a plain Redis, channels whose subscription Redis has confirmed since the connection was last
    /// lost: a second confirmation is a subscription made again (by redis-rs), after a gap. (On a
    /// cluster the relay makes every subscription again itself, and reports the gap when it finds the
    /// subscription lost.)
    confirmed: Mutex<HashSet<Vec<u8>>>,
    /// A cluster's subscriptions, on the relay's own links.
    shards: Shards,
    /// Wakes the task that makes lost subscriptions again.
    repair: tokio::sync::Notify,
    /// Wakes the heartbeat: a plain Redis's connection was lost.
    reconnect: tokio::sync::Notify,
}

impl State {
    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    fn topic<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(channel.strip_prefix(self.prefix.as_bytes())?).ok()
    }

    /// Whether `channel` is subscribed to now. On a cluster: it has a home (a lost home is a lost
    /// subscription, whatever Redis confirmed before). On a plain Redis: Redis confirmed it since the
    /// connection was last lost.
    fn subscribed(&self, connector: &Connector, channel: &str) -> bool {
        if connector.is_cluster() {
            self.shards.has_home(channel.as_bytes())
        } else {
            self.confirmed.lock().contains(channel.as_bytes())
        }
    }

    /// Joined, and without a subscription now: the repair task's to make.
    fn to_repair(&self, connector: &Connector, channel: &str) -> bool {
        self.joined.lock().contains(channel) && !self.subscribed(connector, channel)
    }

    /// Receives `channel`'s messages from now on (SSUBSCRIBE on a cluster, on the master of its
    /// slot; SUBSCRIBE on a plain Redis).
    async fn subscribe(&self, connector: &Connector, channel: &str) -> StorageResult<()> {
        match connector.connection()? {
            Connection::Cluster(cluster) => {
                let masters = Masters::fetch(Connection::Cluster(cluster)).await?;
                // No master known for its slot (the cluster lost a shard): the join fails as if the
                // cluster had refused it, and is counted as such.
                let node = masters.of(channel).or_else(|e| counted(Err(e)))?;
                self.shards.subscribe(node, channel).await
            }
            Connection::Single(single) => {
                let subscribed = single.run(async |manager| manager.subscribe(channel).await).await;
                counted(subscribed.map_err(storage_error))
            }
        }
    }

    /// Called under `channel`'s `changing` lock, once it has left `joined`.
    async fn unsubscribe(&self, connector: &Connector, channel: &str) {
        // A later subscription's confirmation is then a first one, not a gap.
        self.confirmed.lock().remove(channel.as_bytes());
        match connector.connection() {
            Ok(Connection::Cluster(_)) => self.shards.unsubscribe(channel).await,
            Ok(Connection::Single(single)) => {
                let unsubscribed = single.run(async |manager| manager.unsubscribe(channel).await).await;
                let _ = counted(unsubscribed.map_err(storage_error));
            }
            Err(_) => {}
        }
    }

    /// One pass of the repair task: makes the subscriptions of joined channels that have none, without
    /// holding `changing` across the Redis calls (joins go on meanwhile). On a cluster the masters are
    /// fetched once for the pass, and a node that fails one channel is not tried again for the others
    /// in this pass: a dead master costs one connect or response timeout per pass, not one per
    /// channel. Whether every one was made.
    async fn resubscribe(&self, connector: &Connector) -> bool {
        let pending: Vec<String> = {
            let joined = self.joined.lock();
            joined.iter().filter(|channel| !self.subscribed(connector, channel)).cloned().collect()
        };
        if pending.is_empty() {
            return true;
        }
        let connection = match connector.connection() {
            Ok(connection) => connection,
            Err(_) => return false,
        };
        let mut made = Vec::new();
        let mut failed = 0;
        match connection {
            Connection::Cluster(cluster) => {
                let masters = match Masters::fetch(Connection::Cluster(cluster)).await {
                    Ok(masters) => masters,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot learn the cluster's masters yet; retrying");
                        return false;
                    }
                };
                let mut by_node: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for channel in pending {
                    match masters.of(&channel) {
                        Ok(node) => by_node.entry(node).or_default().push(channel),
                        Err(_) => failed += 1,
                    }
                }
                for (node, channels) in by_node {
                    for channel in channels {
                        // A join may have made it, or a sweep taken it back, since the pass began.
                        if !self.to_repair(connector, &channel) {
                            continue;
                        }
                        match self.shards.subscribe(node, &channel).await {
                            Ok(()) => {
                                tracing::debug!(channel, node, "subscribed again");
                                made.push(channel)
                            }
                            Err(e) => {
                                tracing::debug!(channel, node, error = %e, "cannot subscribe again yet; retrying");
                                failed += 1;
                                break;
                            }
                        }
                    }
                }
            }
            Connection::Single(_) => {
                for channel in pending {
                    if !self.to_repair(connector, &channel) {
                        continue;
                    }
                    match self.subscribe(connector, &channel).await {
                        Ok(()) => made.push(channel),
                        Err(e) => {
                            tracing::debug!(channel, error = %e, "cannot subscribe again yet; retrying");
                            failed += 1;
                            break;
                        }
                    }
                }
            }
        }
        // A sweep may have left a channel while it was being subscribed: undone, as the sweep would.
        for channel in made {
            let _changing = self.changing.lock(&channel).await;
            if !self.joined.lock().contains(&channel) {
                self.unsubscribe(connector, &channel).await;
            }
        }
        // Not made again for what was lost after the pass began: that loss wakes the task again.
        // (Nor judged by `subscribed`: a plain Redis's confirmation may still be on its way.)
        failed == 0
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
            joined: Mutex::default(),
            changing: KeyedLocks::default(),
            confirmed: Mutex::default(),
            shards: Shards::new(config.clone(), pushes.clone()),
            repair: tokio::sync::Notify::new(),
            reconnect: tokio::sync::Notify::new(),
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
        let delivery = Delivery { state: self.state.clone(), overflow: self.overflow.clone(), broker };
        let repair = repair(self.connector.clone(), self.state.clone());
        let sweep = sweep(self.connector.clone(), self.state.clone(), delivery.broker.clone());
        let heartbeat = heartbeat(self.connector.clone(), self.state.clone());
        *self.tasks.lock() = vec![
            tokio::spawn(delivery.run(pushes)),
            tokio::spawn(repair),
            tokio::spawn(sweep),
            tokio::spawn(heartbeat),
        ];
    }

    fn join(&self, topic: String) -> BoxFuture<'static, Result<(), String>> {
        let (connector, state) = (self.connector.clone(), self.state.clone());
        async move {
            let channel = state.channel(&topic);
            let _changing = state.changing.lock(&channel).await;
            // Joined and linked now: nothing to do. Joined but not linked (the link was lost and is
            // being made again): subscribe now, so that this subscriber misses nothing from its answer on.
            if state.joined.lock().contains(&channel) && state.subscribed(&connector, &channel) {
                return Ok(());
            }
            state.subscribe(&connector, &channel).await.map_err(StorageError::cause)?;
            state.joined.lock().insert(channel.clone());
            // On a cluster its link may have been lost while it subscribed (a reset, or a node found
            // demoted): the loss found it not joined yet, so no repair took it, and the subscription
            // answered on a link already let go. The repair task makes it again (its subscribers were
            // told of the gap). (A plain Redis's confirmation may still be on its way: not a loss.)
            if connector.is_cluster() && !state.subscribed(&connector, &channel) {
                state.repair.notify_one();
            }
            Ok(())
        }
        .boxed()
    }

    fn publish(&self, topic: String, message: Vec<u8>) -> BoxFuture<'static, Result<usize, StorageError>> {
        let (connector, channel) = (self.connector.clone(), self.state.channel(&topic));
        async move { connector.connection()?.publish(&channel, &message).await }.boxed()
    }
}

/// The task that delivers what Redis pushes. It never waits for Redis: a full push queue drops
/// messages, so nothing that can take a Redis timeout runs here.
struct Delivery {
    state: Arc<State>,
    overflow: Arc<Overflow>,
    broker: Broker,
}

impl Delivery {
    async fn run(self, mut pushes: mpsc::Receiver<Push>) {
        let mut delivered = 0;
        while let Some((link, info)) = pushes.recv().await {
            self.overflow.queued_bytes.fetch_sub(message_len(&info), Ordering::AcqRel);
            // Drops with nothing queued before them (a message larger than the whole buffer) wait
            // for the next push to be told.
            self.report_overflow(delivered);
            self.handle(link, info).await;
            delivered += 1;
            self.report_overflow(delivered);
        }
    }

    fn gap(&self, channel: &[u8]) {
        if let Some(topic) = self.state.topic(channel) {
            self.broker.report_gap(topic);
        }
    }

    /// Gaps for what the push queue had no room for, once the `delivered` pushes queued before it are.
    fn report_overflow(&self, delivered: u64) {
        loop {
            let due = {
                let mut queue = self.overflow.dropped.lock();
                match queue.entries.front() {
                    Some((at, _)) if *at <= delivered => {
                        let due = queue.entries.pop_front().map(|(_, what)| what);
                        queue.names -= due.as_ref().map_or(0, |what| what.topics.len());
                        due
                    }
                    _ => None,
                }
            };
            let Some(dropped) = due else { return };
            self.report_dropped(dropped);
        }
    }

    fn report_dropped(&self, dropped: Dropped) {
        if dropped.everything {
            // On a cluster a link may have been lost without the news: every subscription is made
            // again, on new links, and the old links' pushes are not delivered any more. (Channels
            // without a home were told when they lost it.)
            let homed = self.state.shards.reset();
            if homed.is_empty() {
                self.gap_everywhere();
            }
            self.lost(homed);
        }
        if dropped.replaced {
            // As the news itself would have done (`handle`).
            self.state.confirmed.lock().clear();
            self.gap_everywhere();
            self.state.repair.notify_one();
        }
        if dropped.all_topics {
            self.gap_everywhere();
        }
        for channel in dropped.topics {
            self.gap(&channel);
        }
    }

    /// Every topic this gateway listens to may have missed messages: the connection to a plain Redis
    /// was lost, or news of a lost link was dropped.
    fn gap_everywhere(&self) {
        let joined: Vec<String> = self.state.joined.lock().iter().cloned().collect();
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
            // On a plain Redis, a second confirmation is a subscription redis-rs made again, after a gap.
            PushKind::Subscribe | PushKind::SSubscribe
                if link.is_none()
                    && !channel.is_empty()
                    && !self.state.confirmed.lock().insert(channel.to_vec()) =>
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
            // A plain Redis: a new connection manager in place of one that could not connect again
            // by itself (`SingleRedis`). It has no subscriptions: the repair task makes them.
            PushKind::Disconnection
                if info.data.first() == Some(&RedisValue::SimpleString(REPLACED.into())) =>
            {
                self.state.confirmed.lock().clear();
                self.gap_everywhere();
                self.state.repair.notify_one();
            }
            // A plain Redis: redis-rs's connection manager makes every subscription again itself once
            // it has connected again, which it tries once at once, then at the next command only: the
            // heartbeat is woken to send PING until Redis answers, so that it connects again as soon
            // as Redis is back, however idle this gateway is.
            PushKind::Disconnection => {
                self.state.confirmed.lock().clear();
                self.gap_everywhere();
                self.state.reconnect.notify_one();
            }
            _ => {}
        }
    }
}

/// Makes the lost subscriptions of joined channels again, whenever told to, and until each is made:
/// after a failover, on the replica that took over, once the cluster says it has. It holds no lock
/// across its Redis calls (see [`State::resubscribe`]): joins, sweeps and deliveries go on meanwhile.
async fn repair(connector: Arc<Connector>, state: Arc<State>) {
    loop {
        state.repair.notified().await;
        let mut pause = RETRY_FIRST;
        while !state.resubscribe(&connector).await {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_LAST);
        }
    }
}

/// Every [`SWEEP_INTERVAL`], unsubscribes from topics that no subscriber of this gateway listens to
/// any more. A task of its own: its Redis calls must not hold up deliveries.
async fn sweep(connector: Arc<Connector>, state: Arc<State>, broker: Broker) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        interval.tick().await;
        let unused =
            |channel: &str| state.topic(channel.as_bytes()).is_none_or(|t| broker.subscribers(t) == 0);
        let idle: Vec<String> =
            state.joined.lock().iter().filter(|channel| unused(channel)).cloned().collect();
        for channel in idle {
            // Looked at again under its lock: a join may have come for it meanwhile.
            let _changing = state.changing.lock(&channel).await;
            if unused(&channel) && state.joined.lock().remove(&channel) {
                state.unsubscribe(&connector, &channel).await;
            }
        }
    }
}

/// Every [`HEARTBEAT`], tests the links to Redis: a cluster's subscription links (see
/// [`Shards::ping`]), or a plain Redis's one connection, at once too when that connection was lost
/// (see [`ping_until_answered`]). Neither is counted in `qkv_backend_requests_total`: no request
/// asked for them.
async fn heartbeat(connector: Arc<Connector>, state: Arc<State>) {
    let mut interval = tokio::time::interval(HEARTBEAT);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = state.reconnect.notified() => {}
        }
        match connector.established() {
            Some(Connection::Single(single)) => ping_until_answered(&single).await,
            Some(Connection::Cluster(_)) => state.shards.ping().await,
            None => {}
        }
    }
}

/// Sends PING to a plain Redis until it answers. redis-rs's connection manager connects again as its
/// connection breaks and then only when a command finds it broken, trying twice each time
/// (`connect_single`): without this a gateway that nothing else goes through would stay unconnected
/// after a Redis restart longer than that, its subscribers receiving nothing and its next request
/// answered 503. Each PING that fails makes the manager connect again; the
/// one that succeeds comes after it has, and has made the subscriptions again, which their
/// confirmations then show the relay. A manager that Redis refused the gateway's credentials would
/// not connect again: the failed PING has a new one made (`SingleRedis::run`).
async fn ping_until_answered(single: &Arc<SingleRedis>) {
    let mut pause = RETRY_FIRST;
    let mut lost = false;
    let ping =
        async |manager: &mut ConnectionManager| redis::cmd("PING").query_async::<RedisValue>(manager).await;
    while let Err(e) = single.run(ping).await {
        if !lost {
            tracing::warn!(error = %e, "Redis does not answer; trying again until it does");
            lost = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_LAST);
    }
    if lost {
        tracing::info!("Redis answers again");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qkv_testkit::RedisCluster;
    use tokio::time::{Instant, timeout};

    use super::*;
    use crate::memory::MemoryBudget;
    use crate::pubsub::{ConnectionId, Delivery, LagPolicy, Subscription};

    /// A relay on `cluster`, once connected, attached to a broker of its own.
    async fn relay_on(cluster: &RedisCluster) -> (RedisRelay, Broker) {
        let config = RedisConfig { urls: cluster.urls(), ..RedisConfig::default() };
        let (pushes, relay) = RedisRelay::new(&config);
        let connector = Connector::start(config, pushes);
        timeout(Duration::from_secs(30), connector.connected()).await.expect("connects to the cluster");
        let relay = relay(connector);
        let broker = Broker::new(64, usize::MAX, LagPolicy::Skip, MemoryBudget::unlimited());
        relay.attach(broker.clone());
        (relay, broker)
    }

    /// The index in `cluster.nodes` of the master of `topic`'s channel.
    fn master_of(cluster: &RedisCluster, topic: &str) -> usize {
        let slot = cluster.slot_of(&format!("qkv:{topic}")).expect("a slot");
        cluster.master_of_slot(slot).expect("a master")
    }

    /// The port of the replica of the master on `master` (ROLE: `slave`, then its master's address).
    fn replica_of(cluster: &RedisCluster, master: u16) -> u16 {
        cluster
            .nodes
            .iter()
            .map(|node| node.port)
            .find(|&port| {
                let role = qkv_testkit::cli(port, &["ROLE"]).expect("redis-cli runs");
                role.lines().next() == Some("slave") && role.lines().any(|line| line == master.to_string())
            })
            .expect("the master's replica")
    }

    /// What `subscription` receives next that is not a gap (gaps before it are let pass).
    async fn past_gaps(subscription: &mut Subscription) -> Option<Delivery> {
        loop {
            match subscription.next().await {
                Some(Delivery::Missed(_)) => {}
                other => return other,
            }
        }
    }

    /// What `subscription` receives next that is not a message (messages before it are let pass).
    async fn past_messages(subscription: &mut Subscription) -> Option<Delivery> {
        loop {
            match subscription.next().await {
                Some(Delivery::Message(_)) => {}
                other => return other,
            }
        }
    }

    /// Publishes through `relay` until `subscription` receives something: what it receives first.
    async fn publish_until_delivered(
        relay: &RedisRelay,
        topic: &str,
        subscription: &mut Subscription,
    ) -> Delivery {
        let deadline = Instant::now() + Duration::from_secs(30);
        let message = CommandResponse::default().encode_to_vec();
        while Instant::now() < deadline {
            let _ = relay.publish(topic.into(), message.clone()).await;
            if let Ok(delivery) = timeout(Duration::from_millis(250), subscription.next()).await {
                return delivery.expect("the subscription goes on");
            }
        }
        panic!("nothing reached the subscriber within 30 s")
    }

    /// A message dropped for want of room in the push queue is reported as a gap after the messages
    /// queued before it, not before them: every message after a gap was published after what it lost
    /// (PROTOCOL.md, 6.1), and a client that reads again on a gap must not then take older messages.
    #[tokio::test]
    async fn a_gap_for_a_dropped_message_comes_after_the_messages_queued_before_it() {
        let config = RedisConfig {
            urls: vec!["redis://127.0.0.1:1".into()],
            push_buffer: 100,
            ..RedisConfig::default()
        };
        let (pushes, relay) = RedisRelay::new(&config);
        let relay = relay(Connector::start(config, pushes.clone()));
        let broker = Broker::new(64, usize::MAX, LagPolicy::Skip, MemoryBudget::unlimited());
        let mut subscription = broker.subscribe("t", ConnectionId::unique(), None).unwrap();
        let message = |text: &str| {
            let frame =
                CommandResponse { message: format!("{text:<50}"), ..Default::default() }.encode_to_vec();
            let data = vec![RedisValue::BulkString(b"qkv:t".to_vec()), RedisValue::BulkString(frame.clone())];
            (PushInfo { kind: PushKind::Message, data }, frame)
        };
        let send = pushes.sender(None);
        let (first, first_frame) = message("first");
        let (second, _) = message("second");
        send(first).unwrap();
        // Over the 100 bytes the queue may hold with the first: dropped.
        send(second).unwrap();
        let receiver = relay.pushes.lock().take().unwrap();
        let delivery =
            super::Delivery { state: relay.state.clone(), overflow: relay.overflow.clone(), broker };
        tokio::spawn(delivery.run(receiver));
        assert_eq!(subscription.next().await, Some(Delivery::Message(first_frame.into())));
        assert_eq!(subscription.next().await, Some(Delivery::Missed(1)));
    }

    /// A plain Redis that refused the gateway's credentials for a while (its password changed, its
    /// connections ended): its subscribers are told of the gap, and once the password is put right the
    /// subscriptions are made on the new connection manager, each message delivered once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriptions_are_made_again_on_the_manager_that_replaces_a_refused_one() {
        let node = qkv_testkit::RedisNode::start(&["--requirepass", "first"]).unwrap();
        let config = RedisConfig {
            password: Some("first".into()),
            ..RedisConfig { urls: vec![node.url()], ..RedisConfig::default() }
        };
        let (pushes, relay) = RedisRelay::new(&config);
        let connector = Connector::start(config, pushes);
        timeout(Duration::from_secs(30), connector.connected()).await.expect("connects");
        let relay = relay(connector.clone());
        let broker = Broker::new(64, usize::MAX, LagPolicy::Skip, MemoryBudget::unlimited());
        relay.attach(broker.clone());
        let mut subscription = broker.subscribe("news", ConnectionId::unique(), None).unwrap();
        relay.join("news".into()).await.unwrap();
        let first = publish_until_delivered(&relay, "news", &mut subscription).await;
        assert!(matches!(first, Delivery::Message(_)), "{first:?}");

        let cli = |args: &[&str]| qkv_testkit::cli(node.port, args).expect("redis-cli runs");
        cli(&["-a", "first", "CONFIG", "SET", "requirepass", "second"]);
        cli(&["-a", "second", "CLIENT", "KILL", "TYPE", "pubsub"]);
        cli(&["-a", "second", "CLIENT", "KILL", "TYPE", "normal"]);
        // The lost connection is told (after what the last publishes may still deliver).
        loop {
            match timeout(Duration::from_secs(10), subscription.next()).await.expect("told within 10 s") {
                Some(Delivery::Message(_)) => {}
                told => break assert_eq!(told, Some(Delivery::Missed(1))),
            }
        }
        // Connecting again, the gateway is refused: its manager would stay so for ever.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let published = relay.publish("news".into(), CommandResponse::default().encode_to_vec()).await;
            match published {
                Err(StorageError::Unavailable(reason)) if reason.contains("credentials") => break,
                other => assert!(Instant::now() < deadline, "not refused: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cli(&["-a", "second", "CONFIG", "SET", "requirepass", "first"]);
        loop {
            match publish_until_delivered(&relay, "news", &mut subscription).await {
                Delivery::Message(_) => break,
                Delivery::Missed(_) => {}
                ended => panic!("{ended:?}"),
            }
        }
        let Some(Connection::Single(single)) = connector.established() else { panic!("a plain Redis") };
        assert!(single.replacements() >= 1, "served again without a new manager");
        // Subscribed once: a message of its own is delivered once.
        let marked = CommandResponse { message: "once".into(), ..Default::default() }.encode_to_vec();
        let receivers = relay.publish("news".into(), marked.clone()).await;
        assert!(matches!(receivers, Ok(1)), "one gateway subscribed: {receivers:?}");
        let mut deliveries = 0;
        while let Ok(Some(delivery)) = timeout(Duration::from_millis(500), subscription.next()).await {
            if delivery == Delivery::Message(marked.clone().into()) {
                deliveries += 1;
            }
        }
        assert_eq!(deliveries, 1);
    }

    /// A relay on `cluster` and a subscriber of `topic` through it, once a message has reached it.
    async fn listening(cluster: &RedisCluster, topic: &str) -> (RedisRelay, Broker, Subscription) {
        let (relay, broker) = relay_on(cluster).await;
        let mut subscription = broker.subscribe(topic, ConnectionId::unique(), None).unwrap();
        relay.join(topic.into()).await.unwrap();
        let first = publish_until_delivered(&relay, topic, &mut subscription).await;
        assert!(matches!(first, Delivery::Message(_)), "{first:?}");
        (relay, broker, subscription)
    }

    /// A channel's slot being moved to another node (`MIGRATING` on its master, `IMPORTING` on the
    /// other) stays the master's until the move ends: what is published meanwhile reaches the
    /// subscriptions there, and says so (the script naming the channel as a key was sent on to the
    /// other node, ASK, whose shard has no subscribers: every message was lost, answered 0).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_published_while_a_channels_slot_is_moved_reaches_its_subscribers() {
        let cluster = RedisCluster::start(3, 0).expect("a cluster of its own, to move a slot");
        let (relay, _broker, mut news) = listening(&cluster, "news").await;
        let slot = cluster.slot_of("qkv:news").expect("a slot");
        let moving = cluster.begin_slot_move(slot).expect("the slot set moving");
        let mine = CommandResponse::ok().encode_to_vec();
        let published = relay.publish("news".into(), mine.clone()).await;
        let delivered = timeout(Duration::from_secs(10), async {
            loop {
                match news.next().await {
                    Some(Delivery::Message(message)) if message == mine => break Ok(()),
                    // One of `listening`'s, published before it saw the first arrive.
                    Some(Delivery::Message(_)) => {}
                    other => break Err(other),
                }
            }
        })
        .await;
        drop(moving);
        assert_eq!(published.expect("published"), 1, "it reached the subscription");
        assert_eq!(delivered.expect("delivered within 10 s"), Ok(()));
    }

    /// A node that stalls (here CLIENT PAUSE) while a channel is subscribed there: the SSUBSCRIBE gets
    /// no answer within the response timeout, and no disconnection push comes, since the connection
    /// is not closed. The link is dropped, and the other channels it carried must take a lost link's
    /// way: their subscribers told at once, their subscriptions made again once the node answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_a_stalled_node_leaves_unanswered_loses_that_links_other_channels_with_a_gap() {
        let cluster = RedisCluster::start(3, 0).expect("a cluster of its own, to stall");
        let (relay, _broker, mut news) = listening(&cluster, "news").await;

        let master = master_of(&cluster, "news");
        let late = (0..).map(|i| format!("late-{i}")).find(|t| master_of(&cluster, t) == master).unwrap();
        let port = cluster.nodes[master].port;
        qkv_testkit::cli(port, &["CLIENT", "PAUSE", "4000", "ALL"]).unwrap();
        let subscribed =
            relay.state.shards.subscribe(&format!("127.0.0.1:{port}"), &format!("qkv:{late}")).await;
        assert!(subscribed.is_err(), "a stalled node answers nothing");

        // Told now, not once the node answers again.
        let told = timeout(Duration::from_secs(10), news.next()).await;
        assert!(matches!(told, Ok(Some(Delivery::Missed(1)))), "{told:?}");
        let again = publish_until_delivered(&relay, "news", &mut news).await;
        assert!(matches!(again, Delivery::Message(_)), "{again:?}");
        assert!(relay.state.shards.has_home(b"qkv:news"), "subscribed again");
    }

    /// A channel subscribed on a node that turns out to be a replica (a killed master restarted calls
    /// itself master from its old configuration until the cluster tells it otherwise, and a CLUSTER
    /// SLOTS of its believed then) still gets the shard's messages there, but the master's SPUBLISH
    /// does not count it. The heartbeat's ROLE finds the replica: the subscriber is told of a gap, and
    /// the channel is subscribed on its master, where publishes count it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_left_on_a_replica_moves_to_its_master() {
        let cluster = RedisCluster::start(3, 1).expect("a cluster of its own, with replicas");
        let (relay, _broker, mut news) = listening(&cluster, "news").await;
        let master = cluster.nodes[master_of(&cluster, "news")].port;
        let replica = replica_of(&cluster, master);
        // Where the stale topology would have put it.
        relay.state.shards.unsubscribe("qkv:news").await;
        relay.state.shards.subscribe(&format!("127.0.0.1:{replica}"), "qkv:news").await.unwrap();
        let message = CommandResponse::default().encode_to_vec();
        assert_eq!(
            relay.publish("news".into(), message.clone()).await.unwrap(),
            0,
            "not counted on the master"
        );

        let told = timeout(HEARTBEAT + Duration::from_secs(10), past_messages(&mut news)).await;
        // At least one gap: the replica may end the subscriptions itself too, each a gap of its own.
        assert!(matches!(told, Ok(Some(Delivery::Missed(n))) if n >= 1), "{told:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while relay.publish("news".into(), message.clone()).await.unwrap() == 0 {
            assert!(Instant::now() < deadline, "the channel was not subscribed on its master again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let again = publish_until_delivered(&relay, "news", &mut news).await;
        assert!(matches!(again, Delivery::Message(_)), "{again:?}");
    }

    /// After a failover that no command of a gateway's has met (here a manual one: nothing breaks),
    /// redis-rs's map of the slots still names the old master, a replica now, which takes SPUBLISH
    /// for its own subscribers only. A gateway that only publishes must still reach the subscribers,
    /// which are on the new master once their relay has moved them there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publish_reaches_the_new_master_through_a_map_that_names_the_old_one() {
        let cluster = RedisCluster::start(3, 1).expect("a cluster of its own, to fail over");
        let (publisher, _) = relay_on(&cluster).await;
        let (_subscriber, _broker, mut news) = listening(&cluster, "news").await;
        let message = CommandResponse::default().encode_to_vec();
        assert_eq!(publisher.publish("news".into(), message.clone()).await.unwrap(), 1);
        let old = cluster.nodes[master_of(&cluster, "news")].port;
        let role = |port: u16| qkv_testkit::cli(port, &["ROLE"]).expect("redis-cli runs");
        let new = replica_of(&cluster, old);
        qkv_testkit::cli(new, &["CLUSTER", "FAILOVER"]).expect("a manual failover");
        let subscribed_on = |port: u16| {
            let counts =
                qkv_testkit::cli(port, &["PUBSUB", "SHARDNUMSUB", "qkv:news"]).expect("redis-cli runs");
            counts.lines().nth(1) == Some("1")
        };
        // The subscriber's relay moves its channel to the new master (telling it of a gap).
        let deadline = Instant::now() + HEARTBEAT + Duration::from_secs(20);
        while !(role(new).starts_with("master") && subscribed_on(new)) {
            assert!(Instant::now() < deadline, "the channel did not move to the new master");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let told = timeout(Duration::from_secs(10), past_messages(&mut news)).await;
        // At least one gap: the replica may end the subscriptions itself too, each a gap of its own.
        assert!(matches!(told, Ok(Some(Delivery::Missed(n))) if n >= 1), "{told:?}");
        // The publisher, whose map still names the old master, reaches the new one at its first
        // publish (the replica refuses the script, READONLY, and redis-rs refreshes its map).
        assert_eq!(publisher.publish("news".into(), message).await.unwrap(), 1, "counted on the new master");
        let delivered = timeout(Duration::from_secs(10), past_gaps(&mut news)).await;
        assert!(matches!(delivered, Ok(Some(Delivery::Message(_)))), "{delivered:?}");
    }

    /// A node that goes silent without closing its connections (powered off, cut off; here a long
    /// CLIENT PAUSE) while a gateway only listens: nothing is sent on the link but the heartbeat's
    /// ROLE, whose lack of answer loses the link, so the subscribers are told within HEARTBEAT plus
    /// the response timeout, and the subscription is made again when the node answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_gone_silent_under_an_idle_subscription_is_noticed_by_the_heartbeat() {
        let cluster = RedisCluster::start(3, 0).expect("a cluster of its own, to stall");
        let (relay, _broker, mut news) = listening(&cluster, "news").await;

        // Longer than a heartbeat and its answer may take, so that one ROLE falls in it unanswered.
        let silence = HEARTBEAT + RedisConfig::default().response_timeout + Duration::from_secs(2);
        let port = cluster.nodes[master_of(&cluster, "news")].port;
        qkv_testkit::cli(port, &["CLIENT", "PAUSE", &silence.as_millis().to_string(), "ALL"]).unwrap();
        let told = timeout(silence + Duration::from_secs(5), news.next()).await;
        assert!(matches!(told, Ok(Some(Delivery::Missed(1)))), "{told:?}");
        let again = publish_until_delivered(&relay, "news", &mut news).await;
        assert!(matches!(again, Delivery::Message(_)), "{again:?}");
    }

    /// The repair task making many subscriptions again on a node that does not answer (here paused,
    /// so that each attempt waits for a timeout) holds up no join: it holds no lock across Redis
    /// calls, and gives up a node for the pass at its first failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_repair_stuck_on_a_silent_node_holds_up_no_join_elsewhere() {
        let cluster = RedisCluster::start(3, 0).expect("a cluster of its own, to stall");
        let (relay, broker) = relay_on(&cluster).await;
        let stalled = master_of(&cluster, "elsewhere");
        let topics: Vec<String> = (0..)
            .map(|i| format!("stalled-{i}"))
            .filter(|t| master_of(&cluster, t) == stalled)
            .take(20)
            .collect();
        let mut subscriptions = Vec::new();
        for topic in &topics {
            subscriptions.push(broker.subscribe(topic, ConnectionId::unique(), None).unwrap());
            relay.join(topic.clone()).await.unwrap();
        }

        // Every subscription lost (as when news of a lost link was dropped), while their node is silent.
        let port = cluster.nodes[stalled].port;
        qkv_testkit::cli(port, &["CLIENT", "PAUSE", "20000", "ALL"]).unwrap();
        relay.state.shards.reset();
        relay.state.repair.notify_one();
        // Joins on healthy nodes, one after the other: the repair task is woken already, so it is
        // under way before the second (it would have its turn at the lock before it, if it held one).
        // A join may still fail when its CLUSTER SLOTS goes to the silent node (a random one is
        // asked): it is tried again.
        for topic in
            (0..).map(|i| format!("healthy-{i}")).filter(|t| master_of(&cluster, t) != stalled).take(3)
        {
            let started = Instant::now();
            let joined =
                timeout(Duration::from_secs(10), async { while relay.join(topic.clone()).await.is_err() {} })
                    .await;
            assert!(joined.is_ok(), "{topic} not joined within 10 s, the repair task holding it up");
            eprintln!("{topic} joined in {:?}", started.elapsed());
        }
        qkv_testkit::cli(port, &["CLIENT", "UNPAUSE"]).unwrap();
    }
}
