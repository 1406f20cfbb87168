//! Publish/subscribe: topics, their subscribers, and each subscriber's bounded queue. Knows nothing of
//! the wire; `service::pubsub` builds Subscribe, Unsubscribe and Publish on it.
//!
//! The course server's pub/sub let one slow subscriber stall a whole topic (publishing waited for
//! every subscriber's unbounded channel to accept) and leaked subscriptions whose connections had gone.
//! Here:
//!
//! - Publishing never waits for a subscriber: each message is offered to every subscriber's queue with
//!   `try_send`. A subscriber whose queue is full (in messages or in bytes) does not get it, and by the
//!   [`LagPolicy`] either learns how many messages it missed (a [`Delivery::Missed`] where they would
//!   have been: after what was queued before them, before anything queued after them) or is dropped.
//! - A message is opaque bytes, stored once and shared by every queue it is in; while any queue holds
//!   it, its size is charged to the server-wide memory budget. A publish the budget cannot hold is
//!   refused ([`PublishError::MemoryExhausted`]) rather than delivered to some and not others.
//! - A topic's publishes are delivered one after another, in the order they were published, and every
//!   subscriber sees them in that order. Nothing else waits for a fan-out: each topic has its own lock,
//!   held only to copy its list of subscribers, and a fan-out to many subscribers yields to other tasks
//!   every [`DELIVERY_BATCH`] subscribers past the first [`UNINTERRUPTED`], so that requests on other
//!   connections are not held up.
//! - A subscription is a value with an owner: dropping it (its stream ended, its connection went away)
//!   removes it from its topic at once, and a topic without subscribers is removed too.
//! - Unsubscribing by id succeeds only for the connection that owns the subscription.
//! - Every way a subscription can end is a [`Delivery::Ended`] with its reason, after everything queued
//!   before it: the subscriber always knows whether it saw every message.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::memory::{Charge, MemoryBudget};

/// Carries published messages between servers that serve the same topics: the gateways of the Redis
/// backend. Messages a relay brings in are delivered through [`Broker::publish`], one at a time and in
/// the order they came, so each publisher's messages keep their order on every server.
pub trait Relay: Send + Sync + 'static {
    /// Delivers the messages published anywhere to `broker`'s subscribers from now on.
    fn attach(&self, broker: Broker);
    /// Makes sure this server receives `topic`'s messages from when this completes: called after a
    /// subscriber of this server subscribes, and before it is told it is subscribed.
    fn join(&self, topic: String) -> futures_util::future::BoxFuture<'static, Result<(), String>>;
    /// Publishes to every server; answers how many servers' subscribers were sent the message.
    fn publish(
        &self,
        topic: String,
        message: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'static, Result<usize, crate::storage::StorageError>>;
}

/// What happens to a subscriber whose queue is full when a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagPolicy {
    /// The message is not queued for it; before its next message it receives [`Delivery::Missed`] with
    /// the number it missed. The default: a slow subscriber loses messages, not its subscription.
    Skip,
    /// It is dropped: its subscription ends with [`EndReason::Lagged`].
    Drop,
}

impl LagPolicy {
    pub const ALL: [LagPolicy; 2] = [LagPolicy::Skip, LagPolicy::Drop];

    pub fn name(self) -> &'static str {
        match self {
            LagPolicy::Skip => "skip",
            LagPolicy::Drop => "drop",
        }
    }
}

impl std::fmt::Display for LagPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LagPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        LagPolicy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown lag policy {s:?}: expected skip or drop"))
    }
}

/// The identity of a connection, for ownership of subscriptions: unique within the process, over every
/// transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// An id no other connection of this process has.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub use crate::pb::{Published, SubscriptionId};

/// A published message: opaque bytes, shared by every subscriber's queue.
pub type Message = Bytes;

/// Subscribers a fan-out delivers to before it lets other tasks run. Each delivery wakes the
/// subscriber's writer (and, over QUIC, its connection's driver), and a task woken now runs after every
/// task already queued: a request on another connection, which takes several such steps (over QUIC:
/// endpoint, connection, stream), waits at each for what the fan-out queued since. Small batches keep
/// that wait short. Measured with 10,000 QUIC subscribers and a publish per second, a Hget from another
/// client waited p99 50 ms with 16, and was not answered within a second with 256 (SCALE.md). The first
/// [`UNINTERRUPTED`] deliveries go without a break.
pub const DELIVERY_BATCH: usize = 16;

/// Subscribers a fan-out delivers to before its first break ([`DELIVERY_BATCH`]). A break lets the
/// writers woken so far run, and each then writes what its queue holds: one message. Without it, the
/// publishes that wait behind this one deliver too before they run, and each writes several in one go:
/// with 100 subscribers and 16 publishes in flight, 1.6 M deliveries/s over QUIC against 0.18 M with a
/// break every 16 (a packet per message; 2026-12-05, `qkv bench --workload fanout`). A fan-out this
/// small holds other requests up for a few hundred microseconds at most.
pub const UNINTERRUPTED: usize = 256;

/// Why a connection stopped taking requests, as its subscriptions' last frames tell their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client closed its sending side (TCP's half-close) with a request sent after the
    /// subscription, which can be answered only once the subscription ends.
    ClosedWithRequestBehind,
    /// The client half-closed its connection, and nothing was sent to the subscriber for the idle
    /// timeout: nothing else would find a client that vanished.
    Idle,
    /// The server closes the connection after a request it cannot read past (400, 408, 413).
    BadRequest,
    /// The server closes the connection: it had no memory for more of its requests.
    NoMemory,
    /// The stream that carried it ended (a WebSocket's close, a gRPC call's end, an HTTP connection's)
    /// or failed.
    StreamEnded,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its connection unsubscribed it.
    Unsubscribed,
    /// Its queue was full and the lag policy is [`LagPolicy::Drop`].
    Lagged,
    /// Its connection stopped taking requests, for the reason given.
    ConnectionEnding(ConnectionEnd),
    /// Its connection answers in request order and reached its limits with requests behind it: they
    /// could be answered, and more read (an Unsubscribe among them), only once it ended.
    Stalled,
    /// The server is shutting down.
    ServerClosing,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Message(Message),
    /// This many messages were not delivered because the queue was full ([`LagPolicy::Skip`]).
    Missed(u64),
    /// The subscription has ended, for this reason; nothing follows.
    Ended(EndReason),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsubscribeError {
    #[error("there is no subscription {id} on topic {topic:?}")]
    NotFound { id: SubscriptionId, topic: String },
    #[error(
        "subscription {0} belongs to another connection; only the connection that subscribed may unsubscribe"
    )]
    NotOwner(SubscriptionId),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("the server is shutting down and takes no new subscriptions")]
    Closed,
    #[error(
        "this connection already carries {limit} subscription(s), the most it can: its answers come in request order, so another could only start once one ends (unsubscribe first, or subscribe on another connection)"
    )]
    TooMany { limit: usize },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// The server-wide memory budget cannot hold the message while subscribers' queues do; it was
    /// delivered to nobody.
    #[error(
        "the server has no memory to queue a message of {bytes} bytes for its subscribers (its connection memory budget is spent); it was not published"
    )]
    MemoryExhausted { bytes: usize },
}

/// A message's bytes and the charge on the memory budget that they hold while any queue has them.
struct Charged {
    bytes: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A message in a subscriber's queue, with how many were missed just before it.
struct Queued {
    missed_before: u64,
    message: Message,
    /// This entry's place in its subscriber's queue, charged to the memory budget ([`QUEUED_ENTRY`]):
    /// a message's bytes are one copy for all its subscribers, charged once, but every subscriber's
    /// queue holds an entry of its own (a thousand empty messages to 256 unread subscriptions of one
    /// connection held ~10 MiB uncharged).
    _slot: Charge,
}

/// What a queued entry costs besides the message's bytes.
const QUEUED_ENTRY: usize = std::mem::size_of::<Queued>();

/// What a subscriber's two ends share besides its queue.
#[derive(Default)]
struct Shared {
    /// Messages missed and not yet reported: taken by the next message queued, or by the subscription
    /// once it has read everything queued (the gap is at the end then). A publisher holds the lock
    /// while it takes the count and queues the message that carries it, and the subscription while it
    /// looks at its queue and takes the count, so that the two never interleave: a count the
    /// subscription takes is of misses after every message it has read and before any it has not.
    missed: Mutex<u64>,
    /// Bytes of the messages in the queue.
    queued_bytes: AtomicUsize,
    /// Wakes a subscription waiting on an empty queue when it misses a message, so that it reports
    /// the gap at once rather than with the next message that fits.
    waker: AtomicWaker,
    /// Why it was ended, set by whoever ends it before removing it.
    ended: OnceLock<EndReason>,
}

/// One subscriber, as its topic sees it.
#[derive(Clone)]
struct Subscriber {
    queue: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

/// A topic: its subscribers, and the lock that puts its publishes in one order.
struct Topic {
    name: Arc<str>,
    subscribers: Mutex<HashMap<SubscriptionId, Subscriber>>,
    /// Held for a whole fan-out, across its yields: publishes to the topic are delivered one after
    /// another, so every subscriber sees them in the same order. (Fair: first come, first delivered.)
    publishing: tokio::sync::Mutex<()>,
}

/// Where a subscription is registered.
struct Registration {
    topic: Arc<Topic>,
    owner: ConnectionId,
}

/// Topics by name, and who owns which subscription. Its lock is held only briefly, never during a
/// fan-out; a topic's subscriber lock may be taken while it is held, never the other way round.
#[derive(Default)]
struct Registry {
    by_name: HashMap<Arc<str>, Arc<Topic>>,
    registrations: HashMap<SubscriptionId, Registration>,
    by_owner: HashMap<ConnectionId, HashSet<SubscriptionId>>,
    next_id: SubscriptionId,
    closed: bool,
}

impl Registry {
    /// The next id not in use (ids wrap around after 2^32 subscriptions; 0 is never used).
    fn allocate_id(&mut self) -> SubscriptionId {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.registrations.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Removes subscription `id`, recording why, and its topic if it was the last subscriber. Dropping
    /// the subscriber's sender ends its stream once it has read what is queued (and once a fan-out in
    /// progress, which holds a copy of the sender, has finished).
    fn remove(&mut self, id: SubscriptionId, reason: EndReason) {
        let Some(Registration { topic, owner }) = self.registrations.remove(&id) else { return };
        let emptied = {
            let mut subscribers = topic.subscribers.lock();
            if let Some(subscriber) = subscribers.remove(&id) {
                let _ = subscriber.shared.ended.set(reason);
            }
            subscribers.is_empty()
        };
        if emptied && self.by_name.get(&topic.name).is_some_and(|t| Arc::ptr_eq(t, &topic)) {
            self.by_name.remove(&topic.name);
        }
        if let Some(owned) = self.by_owner.get_mut(&owner) {
            owned.remove(&id);
            if owned.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

/// How large a subscriber's queue may grow.
#[derive(Debug, Clone, Copy)]
struct QueueLimits {
    messages: usize,
    bytes: usize,
}

struct Inner {
    registry: Mutex<Registry>,
    queue: QueueLimits,
    policy: LagPolicy,
    memory: MemoryBudget,
    /// The number of subscriptions, for whoever wants to watch it (tests, metrics).
    count: watch::Sender<usize>,
}

impl Inner {
    fn count_changed(&self, registry: &Registry) {
        self.count.send_replace(registry.registrations.len());
        crate::metrics::subscriptions(registry.registrations.len());
    }
}

/// The registry of topics and subscribers. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// A broker whose subscribers each have a queue of `queue_len` messages and `queue_bytes` bytes
    /// (at least one message either way), and whose queued messages are charged to `memory`.
    pub fn new(queue_len: usize, queue_bytes: usize, policy: LagPolicy, memory: MemoryBudget) -> Self {
        let inner = Inner {
            registry: Mutex::default(),
            queue: QueueLimits { messages: queue_len.max(1), bytes: queue_bytes.max(1) },
            policy,
            memory,
            count: watch::Sender::new(0),
        };
        Broker { inner: Arc::new(inner) }
    }

    /// Subscribes connection `owner` to `topic`; refused once the broker is closed, or when `owner`
    /// already has `limit` subscriptions.
    pub fn subscribe(
        &self,
        topic: &str,
        owner: ConnectionId,
        limit: Option<usize>,
    ) -> Result<Subscription, SubscribeError> {
        let (queue, receiver) = mpsc::channel(self.inner.queue.messages);
        let shared = Arc::new(Shared::default());
        let mut registry = self.inner.registry.lock();
        if registry.closed {
            return Err(SubscribeError::Closed);
        }
        if let Some(limit) = limit
            && registry.by_owner.get(&owner).map_or(0, HashSet::len) >= limit
        {
            return Err(SubscribeError::TooMany { limit });
        }
        let id = registry.allocate_id();
        let topic = registry
            .by_name
            .entry(Arc::from(topic))
            .or_insert_with_key(|name| {
                Arc::new(Topic {
                    name: name.clone(),
                    subscribers: Mutex::default(),
                    publishing: tokio::sync::Mutex::new(()),
                })
            })
            .clone();
        topic.subscribers.lock().insert(id, Subscriber { queue, shared: shared.clone() });
        registry.registrations.insert(id, Registration { topic, owner });
        registry.by_owner.entry(owner).or_default().insert(id);
        self.inner.count_changed(&registry);
        drop(registry);
        Ok(Subscription { id, broker: self.clone(), receiver, after_gap: None, shared, end_reported: false })
    }

    /// Offers `message` to every subscriber of `topic`, after the publishes to it before this one. Waits
    /// for no subscriber: a full queue is handled by the lag policy. Refused, for every subscriber,
    /// when the memory budget cannot hold the message.
    pub async fn publish(&self, topic: &str, message: Vec<u8>) -> Result<Published, PublishError> {
        let published = self.fan_out(topic, message).await;
        if let Ok(published) = &published {
            crate::metrics::published(published.receivers as u64, published.lagging as u64);
        }
        published
    }

    async fn fan_out(&self, topic: &str, message: Vec<u8>) -> Result<Published, PublishError> {
        let Some(topic) = self.inner.registry.lock().by_name.get(topic).cloned() else {
            return Ok(Published::default());
        };
        let bytes = message.len();
        let Some(charge) = self.inner.memory.try_charge(bytes) else {
            return Err(PublishError::MemoryExhausted { bytes });
        };
        let message = Bytes::from_owner(Charged { bytes: message, _charge: charge });
        let _in_order = topic.publishing.lock().await;
        let subscribers: Vec<(SubscriptionId, Subscriber)> =
            topic.subscribers.lock().iter().map(|(&id, s)| (id, s.clone())).collect();
        let mut fan_out = FanOut {
            broker: self,
            subscribers,
            message,
            next: 0,
            published: Published::default(),
            lagged_out: Vec::new(),
        };
        loop {
            let n = fan_out.next;
            if n >= UNINTERRUPTED && n.is_multiple_of(DELIVERY_BATCH) && n < fan_out.subscribers.len() {
                tokio::task::yield_now().await;
            }
            if !fan_out.offer_next() {
                break;
            }
        }
        Ok(fan_out.finish())
    }

    /// Queues `message` for one subscriber, or records that it missed it.
    fn offer(&self, subscriber: &Subscriber, message: &Message) -> Offered {
        let shared = &subscriber.shared;
        let queued_bytes = shared.queued_bytes.load(Ordering::Acquire);
        // An empty queue takes any message, so a message larger than the byte limit still arrives.
        let fits = queued_bytes == 0 || queued_bytes + message.len() <= self.inner.queue.bytes;
        let mut missed = shared.missed.lock();
        // A slot the budget cannot hold is a message missed, as a full queue's is.
        if let Some(slot) = fits.then(|| self.inner.memory.try_charge(QUEUED_ENTRY)).flatten() {
            let queued = Queued { missed_before: *missed, message: message.clone(), _slot: slot };
            match subscriber.queue.try_send(queued) {
                Ok(()) => {
                    *missed = 0;
                    shared.queued_bytes.fetch_add(message.len(), Ordering::AcqRel);
                    return Offered::Queued;
                }
                // Unsubscribed since this fan-out copied the list of subscribers.
                Err(mpsc::error::TrySendError::Closed(_)) => return Offered::Gone,
                // The misses stay for the next message, or for the subscription.
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
        if self.inner.policy == LagPolicy::Skip {
            *missed += 1;
            drop(missed);
            shared.waker.wake();
        }
        Offered::Missed
    }

    /// Ends subscription `id` on `topic`, if connection `owner` owns it.
    pub fn unsubscribe(
        &self,
        topic: &str,
        id: SubscriptionId,
        owner: ConnectionId,
    ) -> Result<(), UnsubscribeError> {
        let mut registry = self.inner.registry.lock();
        match registry.registrations.get(&id) {
            Some(registration) if *registration.topic.name == *topic => {
                if registration.owner != owner {
                    return Err(UnsubscribeError::NotOwner(id));
                }
            }
            _ => return Err(UnsubscribeError::NotFound { id, topic: topic.to_owned() }),
        }
        registry.remove(id, EndReason::Unsubscribed);
        self.inner.count_changed(&registry);
        Ok(())
    }

    /// Ends every subscription of connection `owner`, for `reason`: it takes no more requests
    /// ([`EndReason::ConnectionEnding`]), or it cannot take more until they end ([`EndReason::Stalled`]).
    pub fn end_connection(&self, owner: ConnectionId, reason: EndReason) {
        let mut registry = self.inner.registry.lock();
        let Some(owned) = registry.by_owner.remove(&owner) else { return };
        for id in owned {
            registry.remove(id, reason);
        }
        self.inner.count_changed(&registry);
    }

    /// Ends every subscription and refuses new ones: the server is shutting down.
    pub fn close(&self) {
        let mut registry = self.inner.registry.lock();
        registry.closed = true;
        let ids: Vec<SubscriptionId> = registry.registrations.keys().copied().collect();
        for id in ids {
            registry.remove(id, EndReason::ServerClosing);
        }
        self.inner.count_changed(&registry);
    }

    /// Tells every subscriber of `topic` that it may have missed messages (a [`Delivery::Missed`] of 1
    /// before its next message): a relay lost its link to where they are published for a while.
    pub fn report_gap(&self, topic: &str) {
        let Some(topic) = self.inner.registry.lock().by_name.get(topic).cloned() else { return };
        for subscriber in topic.subscribers.lock().values() {
            *subscriber.shared.missed.lock() += 1;
            subscriber.shared.waker.wake();
        }
    }

    /// Subscribers of `topic` now.
    pub fn subscribers(&self, topic: &str) -> usize {
        let topic = self.inner.registry.lock().by_name.get(topic).cloned();
        topic.map_or(0, |topic| topic.subscribers.lock().len())
    }

    /// Subscriptions on every topic now.
    pub fn total_subscriptions(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// The number of subscriptions on every topic, as it changes.
    pub fn watch_subscriptions(&self) -> watch::Receiver<usize> {
        self.inner.count.subscribe()
    }
}

/// What offering a message to one subscriber came to.
/// A publish's fan-out under way. Dropped part way (its future dropped at a yield: the publisher's
/// stream reset, a gRPC deadline, a REST client gone), it offers the message to the subscribers left
/// without yielding and ends the lagging ones as the policy says: a publish reaches every subscriber
/// or is told missed by each, never delivered to some and silently skipped by the others.
struct FanOut<'a> {
    broker: &'a Broker,
    subscribers: Vec<(SubscriptionId, Subscriber)>,
    message: Message,
    /// The next subscriber to offer the message to.
    next: usize,
    published: Published,
    lagged_out: Vec<SubscriptionId>,
}

impl FanOut<'_> {
    /// Offers the message to the next subscriber; false when none is left.
    fn offer_next(&mut self) -> bool {
        let Some((id, subscriber)) = self.subscribers.get(self.next) else { return false };
        self.next += 1;
        match self.broker.offer(subscriber, &self.message) {
            Offered::Queued => self.published.receivers += 1,
            Offered::Missed => {
                self.published.lagging += 1;
                if self.broker.inner.policy == LagPolicy::Drop {
                    self.lagged_out.push(*id);
                }
            }
            Offered::Gone => {}
        }
        true
    }

    /// Offers the message to every subscriber left, ends the lagging ones (`LagPolicy::Drop`), and
    /// says what the publish did.
    fn finish(&mut self) -> Published {
        while self.offer_next() {}
        self.subscribers.clear();
        if !self.lagged_out.is_empty() {
            let mut registry = self.broker.inner.registry.lock();
            for id in self.lagged_out.drain(..) {
                registry.remove(id, EndReason::Lagged);
            }
            self.broker.inner.count_changed(&registry);
        }
        std::mem::take(&mut self.published)
    }
}

impl Drop for FanOut<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

enum Offered {
    Queued,
    /// Its queue was full.
    Missed,
    /// It was unsubscribed meanwhile.
    Gone,
}

/// One subscription: the messages published to its topic, in publish order, then why it ended.
/// Dropping it unsubscribes.
pub struct Subscription {
    id: SubscriptionId,
    broker: Broker,
    receiver: mpsc::Receiver<Queued>,
    /// A message that arrived after a gap, returned after the `Missed` that reports the gap.
    after_gap: Option<Message>,
    shared: Arc<Shared>,
    end_reported: bool,
}

impl Subscription {
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The next delivery; `None` after [`Delivery::Ended`].
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.poll_next_with(cx, || ())
    }

    /// [`Self::poll_next`], running `meanwhile` once the subscription has taken the count of what it
    /// missed and before it answers: where a publish racing with it can happen, so that tests can
    /// make one happen there.
    fn poll_next_with(&mut self, cx: &mut Context<'_>, meanwhile: impl FnOnce()) -> Poll<Option<Delivery>> {
        if let Some(message) = self.after_gap.take() {
            return Poll::Ready(Some(Delivery::Message(message)));
        }
        if self.end_reported {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(queued)) => Poll::Ready(Some(self.deliver(queued))),
            Poll::Ready(None) => match std::mem::take(&mut *self.shared.missed.lock()) {
                0 => {
                    self.end_reported = true;
                    // Whoever removed the subscriber set the reason first; only a broker dropped while
                    // subscriptions live could leave it unset.
                    let reason = self.shared.ended.get().copied().unwrap_or(EndReason::ServerClosing);
                    Poll::Ready(Some(Delivery::Ended(reason)))
                }
                missed => Poll::Ready(Some(Delivery::Missed(missed))),
            },
            Poll::Pending => {
                // Everything queued has been read. The waker is registered before looking, so a miss
                // after the look wakes this.
                self.shared.waker.register(cx.waker());
                // A publisher may have queued a message since the first look: it carries the misses
                // before it, and any counted now came after it. Looking again with the count held
                // keeps a publisher from queuing one between the look and the taking of the count.
                let missed = {
                    let mut count = self.shared.missed.lock();
                    match self.receiver.try_recv() {
                        Ok(queued) => {
                            drop(count);
                            return Poll::Ready(Some(self.deliver(queued)));
                        }
                        // Nothing queued: a gap now is the last thing that happened.
                        Err(_) => std::mem::take(&mut *count),
                    }
                };
                if missed == 0 {
                    return Poll::Pending;
                }
                meanwhile();
                Poll::Ready(Some(Delivery::Missed(missed)))
            }
        }
    }

    /// A queued message, after the gap just before it if there was one: missed messages are reported
    /// where they were missed.
    fn deliver(&mut self, Queued { missed_before, message, .. }: Queued) -> Delivery {
        self.shared.queued_bytes.fetch_sub(message.len(), Ordering::AcqRel);
        if missed_before == 0 {
            return Delivery::Message(message);
        }
        self.after_gap = Some(message);
        Delivery::Missed(missed_before)
    }

    pub async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

impl futures_util::Stream for Subscription {
    type Item = Delivery;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        Subscription::poll_next(self.get_mut(), cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let inner = &self.broker.inner;
        let mut registry = inner.registry.lock();
        // Still registered, as this subscription and not a later one that reuses its id (ids wrap).
        let registered = registry
            .registrations
            .get(&self.id)
            .and_then(|registration| {
                let subscribers = registration.topic.subscribers.lock();
                subscribers.get(&self.id).map(|subscriber| Arc::ptr_eq(&subscriber.shared, &self.shared))
            })
            .unwrap_or(false);
        if registered {
            registry.remove(self.id, EndReason::Unsubscribed);
            inner.count_changed(&registry);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn message(n: i64) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    fn delivered(n: i64) -> Option<Delivery> {
        Some(Delivery::Message(Bytes::from(message(n))))
    }

    fn broker(queue_len: usize, policy: LagPolicy) -> Broker {
        Broker::new(queue_len, usize::MAX, policy, MemoryBudget::unlimited())
    }

    async fn publish(broker: &Broker, topic: &str, n: i64) -> Published {
        broker.publish(topic, message(n)).await.unwrap()
    }

    fn connection() -> ConnectionId {
        ConnectionId::unique()
    }

    /// A publish whose future is dropped part way through a large fan-out (its publisher gone, a
    /// deadline) still offers the message to every subscriber: none of them receives the next message
    /// without it or a gap before it; and with `drop`, one that missed it is ended.
    #[tokio::test]
    async fn a_publish_dropped_part_way_reaches_every_subscriber_all_the_same() {
        for policy in [LagPolicy::Skip, LagPolicy::Drop] {
            let broker = broker(4, policy);
            let count = UNINTERRUPTED + DELIVERY_BATCH + 1;
            let mut subscriptions: Vec<Subscription> =
                (0..count).map(|_| broker.subscribe("t", connection(), None).unwrap()).collect();
            // The last one's queue is full: it misses the cut publish.
            let mut full = subscriptions.pop().unwrap();
            for n in 0..4 {
                publish(&broker, "t", 100 + n).await;
            }
            for subscription in &mut subscriptions {
                for n in 0..4 {
                    assert_eq!(subscription.next().await, delivered(100 + n));
                }
            }
            // Pending at its first yield, then dropped (unconstrained: the reads above spent this
            // task's cooperative budget, which would make it pending before it began).
            let cut = tokio::task::unconstrained(broker.publish("t", message(1))).now_or_never();
            assert!(cut.is_none(), "{policy:?}");
            publish(&broker, "t", 2).await;
            for (i, subscription) in subscriptions.iter_mut().enumerate() {
                assert_eq!(subscription.next().await, delivered(1), "{policy:?}: subscriber {i}");
            }
            for n in 0..4 {
                assert_eq!(full.next().await, delivered(100 + n), "{policy:?}");
            }
            match policy {
                // It missed the publish cut short and the next.
                LagPolicy::Skip => assert_eq!(full.next().await, Some(Delivery::Missed(2))),
                LagPolicy::Drop => assert_eq!(full.next().await, Some(Delivery::Ended(EndReason::Lagged))),
            }
        }
    }

    /// Every subscriber's queued entry is charged to the memory budget, besides the message's bytes
    /// (charged once), and given back as it is read: empty messages to many unread subscribers held
    /// memory the budget never saw.
    #[tokio::test]
    async fn each_queued_entry_is_charged_to_the_memory_budget_until_read() {
        let memory = MemoryBudget::new(64 << 20);
        let broker = Broker::new(64, usize::MAX, LagPolicy::Skip, memory.clone());
        let mut subscriptions: Vec<Subscription> =
            (0..1000).map(|_| broker.subscribe("t", connection(), None).unwrap()).collect();
        for _ in 0..10 {
            broker.publish("t", Vec::new()).await.unwrap();
        }
        assert!(memory.used() >= 1000 * 10 * QUEUED_ENTRY, "{} charged", memory.used());
        for subscription in &mut subscriptions {
            for _ in 0..10 {
                assert_eq!(subscription.next().await, Some(Delivery::Message(Bytes::new())));
            }
        }
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn every_subscriber_receives_every_message_in_publish_order() {
        let broker = broker(64, LagPolicy::Skip);
        let mut subscriptions: Vec<Subscription> =
            (0..1000).map(|_| broker.subscribe("news", connection(), None).unwrap()).collect();
        for n in 0..50 {
            assert_eq!(publish(&broker, "news", n).await, Published { receivers: 1000, lagging: 0 });
        }
        for subscription in &mut subscriptions {
            for n in 0..50 {
                assert_eq!(subscription.next().await, delivered(n));
            }
        }
        assert_eq!(publish(&broker, "elsewhere", 0).await.receivers, 0, "a topic nobody listens to");
    }

    #[tokio::test]
    async fn a_full_queue_never_holds_up_the_publisher_or_others_and_says_how_much_it_missed() {
        let broker = broker(4, LagPolicy::Skip);
        let mut slow = broker.subscribe("t", connection(), None).unwrap();
        let mut fast = broker.subscribe("t", connection(), None).unwrap();
        for n in 0..10 {
            // Returns at once whether or not `slow` reads: the fast one still gets everything.
            let published = publish(&broker, "t", n).await;
            assert_eq!(
                published,
                Published { receivers: 2 - usize::from(n >= 4), lagging: usize::from(n >= 4) }
            );
            assert_eq!(fast.next().await, delivered(n));
        }
        for n in 0..4 {
            assert_eq!(slow.next().await, delivered(n));
        }
        assert_eq!(slow.next().await, Some(Delivery::Missed(6)), "messages 4..=9 were missed");
        // A gap followed by a message that fits is reported before it.
        for n in 10..16 {
            publish(&broker, "t", n).await;
        }
        for n in 10..14 {
            assert_eq!(slow.next().await, delivered(n));
        }
        publish(&broker, "t", 16).await;
        assert_eq!(slow.next().await, Some(Delivery::Missed(2)), "messages 14 and 15");
        assert_eq!(slow.next().await, delivered(16));
    }

    /// A message published while the subscription takes the count of what it missed came after what
    /// it missed: it is delivered after the "missed".
    #[tokio::test]
    async fn a_message_published_while_a_gap_is_being_reported_follows_the_gap() {
        let broker = broker(1, LagPolicy::Skip);
        let mut slow = broker.subscribe("t", connection(), None).unwrap();
        publish(&broker, "t", 0).await;
        assert_eq!(publish(&broker, "t", 1).await.lagging, 1, "the queue of one is full");
        assert_eq!(slow.next().await, delivered(0));
        let mut publisher = Some(broker.clone());
        let racing_publish = std::future::poll_fn(|cx| {
            slow.poll_next_with(cx, || {
                let Some(broker) = publisher.take() else { return };
                let published = broker.publish("t", message(2)).now_or_never();
                assert_eq!(published, Some(Ok(Published { receivers: 1, lagging: 0 })));
            })
        });
        assert_eq!(racing_publish.await, Some(Delivery::Missed(1)), "message 1 was missed before 2");
        assert_eq!(slow.next().await, delivered(2));
        assert!(publisher.is_none(), "the publish raced with the subscription");
    }

    #[tokio::test]
    async fn with_the_drop_policy_a_lagging_subscriber_is_ended_after_what_it_had() {
        let broker = broker(2, LagPolicy::Drop);
        let mut slow = broker.subscribe("t", connection(), None).unwrap();
        for n in 0..3 {
            publish(&broker, "t", n).await;
        }
        assert_eq!(broker.subscribers("t"), 0, "dropped at once");
        assert_eq!(slow.next().await, delivered(0));
        assert_eq!(slow.next().await, delivered(1));
        assert_eq!(slow.next().await, Some(Delivery::Ended(EndReason::Lagged)));
        assert_eq!(slow.next().await, None);
    }

    #[tokio::test]
    async fn only_the_owner_unsubscribes_and_dropping_a_subscription_leaves_nothing_behind() {
        let broker = broker(8, LagPolicy::Skip);
        let (me, them) = (connection(), connection());
        let mut mine = broker.subscribe("t", me, None).unwrap();
        let theirs = broker.subscribe("t", them, None).unwrap();
        assert_eq!(broker.unsubscribe("t", mine.id(), them), Err(UnsubscribeError::NotOwner(mine.id())));
        assert!(matches!(broker.unsubscribe("other", mine.id(), me), Err(UnsubscribeError::NotFound { .. })));
        assert!(matches!(broker.unsubscribe("t", 999, me), Err(UnsubscribeError::NotFound { .. })));
        broker.unsubscribe("t", mine.id(), me).unwrap();
        assert_eq!(mine.next().await, Some(Delivery::Ended(EndReason::Unsubscribed)));
        assert_eq!(mine.next().await, None);
        assert_eq!(broker.subscribers("t"), 1);
        drop(theirs);
        drop(mine);
        assert_eq!((broker.subscribers("t"), broker.total_subscriptions()), (0, 0));
        let registry = broker.inner.registry.lock();
        assert!(registry.by_name.is_empty() && registry.by_owner.is_empty(), "nothing is left behind");
    }

    #[tokio::test]
    async fn a_closing_connection_ends_only_its_own_subscriptions_and_a_closed_broker_takes_none() {
        let broker = broker(8, LagPolicy::Skip);
        let (closing, staying) = (connection(), connection());
        let mut gone =
            [broker.subscribe("a", closing, None).unwrap(), broker.subscribe("b", closing, None).unwrap()];
        let mut kept = broker.subscribe("a", staying, None).unwrap();
        let ending = EndReason::ConnectionEnding(ConnectionEnd::StreamEnded);
        broker.end_connection(closing, ending);
        for subscription in &mut gone {
            assert_eq!(subscription.next().await, Some(Delivery::Ended(ending)));
        }
        assert_eq!(broker.total_subscriptions(), 1);
        broker.close();
        assert_eq!(kept.next().await, Some(Delivery::Ended(EndReason::ServerClosing)));
        assert_eq!(broker.subscribe("a", staying, None).err(), Some(SubscribeError::Closed));
        assert_eq!(broker.total_subscriptions(), 0);
    }

    #[tokio::test]
    async fn a_queue_is_bounded_in_bytes_too_but_an_empty_one_takes_any_message() {
        let broker = Broker::new(1000, 250, LagPolicy::Skip, MemoryBudget::unlimited());
        let mut subscription = broker.subscribe("t", connection(), None).unwrap();
        let mut receivers = Vec::new();
        for _ in 0..3 {
            receivers.push(broker.publish("t", vec![1; 100]).await.unwrap().receivers);
        }
        assert_eq!(receivers, [1, 1, 0], "the third would take the queue past 250 bytes");
        for _ in 0..2 {
            assert!(matches!(subscription.next().await, Some(Delivery::Message(m)) if m.len() == 100));
        }
        assert_eq!(subscription.next().await, Some(Delivery::Missed(1)));
        assert_eq!(broker.publish("t", vec![2; 1000]).await.unwrap().receivers, 1, "larger than the limit");
        assert!(matches!(subscription.next().await, Some(Delivery::Message(m)) if m.len() == 1000));
    }

    #[tokio::test]
    async fn a_queued_message_is_charged_once_until_every_queue_has_given_it_up() {
        let memory = MemoryBudget::new(1000);
        let broker = Broker::new(16, usize::MAX, LagPolicy::Skip, memory.clone());
        let (mut a, mut b) = (
            broker.subscribe("t", connection(), None).unwrap(),
            broker.subscribe("t", connection(), None).unwrap(),
        );
        assert_eq!(broker.publish("t", vec![0; 600]).await.unwrap().receivers, 2);
        assert_eq!(memory.used(), 600 + 2 * QUEUED_ENTRY, "one copy for both subscribers, and their entries");
        assert_eq!(
            broker.publish("t", vec![0; 600]).await,
            Err(PublishError::MemoryExhausted { bytes: 600 }),
            "refused for everyone, not delivered to some"
        );
        assert!(matches!(a.next().await, Some(Delivery::Message(_))));
        assert_eq!(memory.used(), 600 + QUEUED_ENTRY, "b's queue still holds it");
        assert!(matches!(b.next().await, Some(Delivery::Message(_))));
        assert_eq!(memory.used(), 0);
        assert_eq!(
            broker.publish("nobody", vec![0; 5000]).await.map(|p| p.receivers),
            Ok(0),
            "no charge without subscribers"
        );
    }

    #[tokio::test]
    async fn a_fan_out_to_many_subscribers_lets_other_tasks_run() {
        // On this single-threaded test runtime a spawned task runs only when the test's task yields.
        for (subscribers, yields) in [(UNINTERRUPTED, false), (UNINTERRUPTED + DELIVERY_BATCH + 1, true)] {
            let broker = broker(4, LagPolicy::Skip);
            let _subscriptions: Vec<Subscription> =
                (0..subscribers).map(|_| broker.subscribe("t", connection(), None).unwrap()).collect();
            let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = ran.clone();
            let other = tokio::spawn(async move { flag.store(true, Ordering::Release) });
            assert_eq!(publish(&broker, "t", 1).await.receivers, subscribers);
            assert_eq!(ran.load(Ordering::Acquire), yields, "{subscribers} subscribers");
            other.await.unwrap();
        }
    }
}
