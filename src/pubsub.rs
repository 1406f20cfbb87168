//! Publish/subscribe: topics, their subscribers, and each subscriber's bounded queue. Knows nothing of
//! the wire; `service::pubsub` builds Subscribe, Unsubscribe and Publish on it.
//!
//! The course server's pub/sub let one slow subscriber stall a whole topic (publishing waited for
//! every subscriber's unbounded channel to accept) and leaked subscriptions whose connections had gone.
//! Here:
//!
//! - Publishing never waits: each message is offered to every subscriber's queue with `try_send`. A
//!   subscriber whose queue is full does not get it, and by the [`LagPolicy`] either learns how many
//!   messages it missed (a [`Delivery::Missed`] where they would have been: after what was queued
//!   before them, before anything queued after them) or is dropped.
//! - A subscription is a value with an owner: dropping it (its stream ended, its connection went away)
//!   removes it from its topic at once, and a topic without subscribers is removed too.
//! - Unsubscribing by id succeeds only for the connection that owns the subscription.
//! - Every way a subscription can end is a [`Delivery::Ended`] with its reason, after everything queued
//!   before it: the subscriber always knows whether it saw every message.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::pb::Value;

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

/// A subscription's id, as Subscribe answers it and Unsubscribe names it (a `uint32` on the wire).
pub type SubscriptionId = u32;

/// A published message: the values of one Publish, shared by every subscriber's queue.
pub type Message = Arc<[Value]>;

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its connection unsubscribed it.
    Unsubscribed,
    /// Its queue was full and the lag policy is [`LagPolicy::Drop`].
    Lagged,
    /// Its connection stopped taking requests (a TCP client closed its side, or the connection is being
    /// closed after a bad request or a failure).
    ConnectionEnding,
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

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Subscribers the message was queued for.
    pub receivers: usize,
    /// Subscribers whose queue was full, so that they missed it (or, with [`LagPolicy::Drop`], were
    /// dropped): a count of subscribers, not of messages.
    pub lagging: usize,
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
#[error("the server is shutting down and takes no new subscriptions")]
pub struct BrokerClosed;

/// A message in a subscriber's queue, with how many were missed just before it.
struct Queued {
    missed_before: u64,
    message: Message,
}

/// What a subscriber's two ends share besides its queue.
#[derive(Default)]
struct Shared {
    /// Messages missed and not yet reported: taken by the next message queued, or by the subscription
    /// once it has read everything queued (the gap is at the end then).
    missed: AtomicU64,
    /// Wakes a subscription waiting on an empty queue when it misses a message, so that it reports
    /// the gap at once rather than with the next message that fits.
    waker: AtomicWaker,
    /// Why it was ended, set by whoever ends it before removing it.
    ended: OnceLock<EndReason>,
}

/// One subscriber, as its topic sees it.
struct Subscriber {
    queue: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

/// Where a subscription is registered.
struct Registration {
    topic: Arc<str>,
    owner: ConnectionId,
}

#[derive(Default)]
struct Topics {
    by_name: HashMap<Arc<str>, HashMap<SubscriptionId, Subscriber>>,
    registrations: HashMap<SubscriptionId, Registration>,
    by_owner: HashMap<ConnectionId, HashSet<SubscriptionId>>,
    next_id: SubscriptionId,
    closed: bool,
}

impl Topics {
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
    /// the subscriber's sender ends its stream once it has read what is queued.
    fn remove(&mut self, id: SubscriptionId, reason: EndReason) {
        let Some(Registration { topic, owner }) = self.registrations.remove(&id) else { return };
        if let Some(subscribers) = self.by_name.get_mut(&topic) {
            if let Some(subscriber) = subscribers.remove(&id) {
                let _ = subscriber.shared.ended.set(reason);
            }
            if subscribers.is_empty() {
                self.by_name.remove(&topic);
            }
        }
        if let Some(owned) = self.by_owner.get_mut(&owner) {
            owned.remove(&id);
            if owned.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }
}

struct Inner {
    topics: Mutex<Topics>,
    queue_len: usize,
    policy: LagPolicy,
    /// The number of subscriptions, for whoever wants to watch it (tests, metrics).
    count: watch::Sender<usize>,
}

impl Inner {
    fn count_changed(&self, topics: &Topics) {
        self.count.send_replace(topics.registrations.len());
    }
}

/// The registry of topics and subscribers. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// A broker whose subscribers each have a queue of `queue_len` messages (at least 1).
    pub fn new(queue_len: usize, policy: LagPolicy) -> Self {
        let inner = Inner {
            topics: Mutex::default(),
            queue_len: queue_len.max(1),
            policy,
            count: watch::Sender::new(0),
        };
        Broker { inner: Arc::new(inner) }
    }

    /// Subscribes connection `owner` to `topic`; refused once the broker is closed.
    pub fn subscribe(&self, topic: &str, owner: ConnectionId) -> Result<Subscription, BrokerClosed> {
        let (queue, receiver) = mpsc::channel(self.inner.queue_len);
        let shared = Arc::new(Shared::default());
        let mut topics = self.inner.topics.lock();
        if topics.closed {
            return Err(BrokerClosed);
        }
        let id = topics.allocate_id();
        let name: Arc<str> = match topics.by_name.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => Arc::from(topic),
        };
        let subscriber = Subscriber { queue, shared: shared.clone() };
        topics.by_name.entry(name.clone()).or_default().insert(id, subscriber);
        topics.registrations.insert(id, Registration { topic: name, owner });
        topics.by_owner.entry(owner).or_default().insert(id);
        self.inner.count_changed(&topics);
        drop(topics);
        Ok(Subscription { id, broker: self.clone(), receiver, after_gap: None, shared, end_reported: false })
    }

    /// Offers `message` to every subscriber of `topic`. Never waits: a full queue is handled by the lag
    /// policy.
    pub fn publish(&self, topic: &str, message: Message) -> Published {
        let mut topics = self.inner.topics.lock();
        let Some(subscribers) = topics.by_name.get_mut(topic) else { return Published::default() };
        let mut published = Published::default();
        let mut lagged_out = Vec::new();
        for (&id, subscriber) in subscribers.iter() {
            let missed = &subscriber.shared.missed;
            let queued = Queued { missed_before: missed.swap(0, Ordering::AcqRel), message: message.clone() };
            match subscriber.queue.try_send(queued) {
                Ok(()) => published.receivers += 1,
                Err(mpsc::error::TrySendError::Full(queued)) => {
                    published.lagging += 1;
                    match self.inner.policy {
                        LagPolicy::Skip => {
                            missed.fetch_add(queued.missed_before + 1, Ordering::AcqRel);
                            subscriber.shared.waker.wake();
                        }
                        LagPolicy::Drop => lagged_out.push(id),
                    }
                }
                // Cannot happen: a subscription unregisters itself before its receiver is dropped.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if !lagged_out.is_empty() {
            for id in lagged_out {
                topics.remove(id, EndReason::Lagged);
            }
            self.inner.count_changed(&topics);
        }
        published
    }

    /// Ends subscription `id` on `topic`, if connection `owner` owns it.
    pub fn unsubscribe(
        &self,
        topic: &str,
        id: SubscriptionId,
        owner: ConnectionId,
    ) -> Result<(), UnsubscribeError> {
        let mut topics = self.inner.topics.lock();
        match topics.registrations.get(&id) {
            Some(registration) if *registration.topic == *topic => {
                if registration.owner != owner {
                    return Err(UnsubscribeError::NotOwner(id));
                }
            }
            _ => return Err(UnsubscribeError::NotFound { id, topic: topic.to_owned() }),
        }
        topics.remove(id, EndReason::Unsubscribed);
        self.inner.count_changed(&topics);
        Ok(())
    }

    /// Ends every subscription of connection `owner`: it takes no more requests.
    pub fn end_connection(&self, owner: ConnectionId) {
        let mut topics = self.inner.topics.lock();
        let Some(owned) = topics.by_owner.remove(&owner) else { return };
        for id in owned {
            topics.remove(id, EndReason::ConnectionEnding);
        }
        self.inner.count_changed(&topics);
    }

    /// Ends every subscription and refuses new ones: the server is shutting down.
    pub fn close(&self) {
        let mut topics = self.inner.topics.lock();
        topics.closed = true;
        let ids: Vec<SubscriptionId> = topics.registrations.keys().copied().collect();
        for id in ids {
            topics.remove(id, EndReason::ServerClosing);
        }
        self.inner.count_changed(&topics);
    }

    /// Subscribers of `topic` now.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.inner.topics.lock().by_name.get(topic).map_or(0, HashMap::len)
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
        if let Some(message) = self.after_gap.take() {
            return Poll::Ready(Some(Delivery::Message(message)));
        }
        if self.end_reported {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(queued)) => Poll::Ready(Some(self.deliver(queued))),
            Poll::Ready(None) => match self.shared.missed.swap(0, Ordering::AcqRel) {
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
                // Everything queued has been read: a gap now is the last thing that happened. The waker
                // is registered before looking, so a miss after the look wakes this.
                self.shared.waker.register(cx.waker());
                let missed = self.shared.missed.swap(0, Ordering::AcqRel);
                if missed == 0 {
                    return Poll::Pending;
                }
                // Publishers may have queued a message between the two looks; it came before the gap
                // (a miss before it would ride on it), so it goes first and the count goes back.
                match self.receiver.try_recv() {
                    Ok(queued) => {
                        self.shared.missed.fetch_add(missed, Ordering::AcqRel);
                        Poll::Ready(Some(self.deliver(queued)))
                    }
                    Err(_) => Poll::Ready(Some(Delivery::Missed(missed))),
                }
            }
        }
    }

    /// A queued message, after the gap just before it if there was one: missed messages are reported
    /// where they were missed.
    fn deliver(&mut self, Queued { missed_before, message }: Queued) -> Delivery {
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
        let mut topics = inner.topics.lock();
        // Still registered, as this subscription and not a later one that reuses its id (ids wrap).
        let registered = topics
            .registrations
            .get(&self.id)
            .and_then(|registration| topics.by_name.get(&registration.topic)?.get(&self.id))
            .is_some_and(|subscriber| Arc::ptr_eq(&subscriber.shared, &self.shared));
        if registered {
            topics.remove(self.id, EndReason::Unsubscribed);
            inner.count_changed(&topics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: i64) -> Message {
        Arc::from(vec![Value::from(n)])
    }

    fn connection() -> ConnectionId {
        ConnectionId::unique()
    }

    #[tokio::test]
    async fn every_subscriber_receives_every_message_in_publish_order() {
        let broker = Broker::new(64, LagPolicy::Skip);
        let mut subscriptions: Vec<Subscription> =
            (0..1000).map(|_| broker.subscribe("news", connection()).unwrap()).collect();
        for n in 0..50 {
            assert_eq!(broker.publish("news", message(n)), Published { receivers: 1000, lagging: 0 });
        }
        for subscription in &mut subscriptions {
            for n in 0..50 {
                assert_eq!(subscription.next().await, Some(Delivery::Message(message(n))));
            }
        }
        assert_eq!(broker.publish("elsewhere", message(0)).receivers, 0, "a topic nobody listens to");
    }

    #[tokio::test]
    async fn a_full_queue_never_holds_up_the_publisher_or_others_and_says_how_much_it_missed() {
        let broker = Broker::new(4, LagPolicy::Skip);
        let mut slow = broker.subscribe("t", connection()).unwrap();
        let mut fast = broker.subscribe("t", connection()).unwrap();
        for n in 0..10 {
            // Returns at once whether or not `slow` reads: the fast one still gets everything.
            let published = broker.publish("t", message(n));
            assert_eq!(
                published,
                Published { receivers: 2 - usize::from(n >= 4), lagging: usize::from(n >= 4) }
            );
            assert_eq!(fast.next().await, Some(Delivery::Message(message(n))));
        }
        for n in 0..4 {
            assert_eq!(slow.next().await, Some(Delivery::Message(message(n))));
        }
        assert_eq!(slow.next().await, Some(Delivery::Missed(6)), "messages 4..=9 were missed");
        // A gap followed by a message that fits is reported before it.
        for n in 10..16 {
            broker.publish("t", message(n));
        }
        for n in 10..14 {
            assert_eq!(slow.next().await, Some(Delivery::Message(message(n))));
        }
        broker.publish("t", message(16));
        assert_eq!(slow.next().await, Some(Delivery::Missed(2)), "messages 14 and 15");
        assert_eq!(slow.next().await, Some(Delivery::Message(message(16))));
    }

    #[tokio::test]
    async fn with_the_drop_policy_a_lagging_subscriber_is_ended_after_what_it_had() {
        let broker = Broker::new(2, LagPolicy::Drop);
        let mut slow = broker.subscribe("t", connection()).unwrap();
        for n in 0..3 {
            broker.publish("t", message(n));
        }
        assert_eq!(broker.subscribers("t"), 0, "dropped at once");
        assert_eq!(slow.next().await, Some(Delivery::Message(message(0))));
        assert_eq!(slow.next().await, Some(Delivery::Message(message(1))));
        assert_eq!(slow.next().await, Some(Delivery::Ended(EndReason::Lagged)));
        assert_eq!(slow.next().await, None);
    }

    #[tokio::test]
    async fn only_the_owner_unsubscribes_and_dropping_a_subscription_leaves_nothing_behind() {
        let broker = Broker::new(8, LagPolicy::Skip);
        let (me, them) = (connection(), connection());
        let mut mine = broker.subscribe("t", me).unwrap();
        let theirs = broker.subscribe("t", them).unwrap();
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
        let topics = broker.inner.topics.lock();
        assert!(topics.by_name.is_empty() && topics.by_owner.is_empty(), "nothing is left behind");
    }

    #[tokio::test]
    async fn a_closing_connection_ends_only_its_own_subscriptions_and_a_closed_broker_takes_none() {
        let broker = Broker::new(8, LagPolicy::Skip);
        let (closing, staying) = (connection(), connection());
        let mut gone = [broker.subscribe("a", closing).unwrap(), broker.subscribe("b", closing).unwrap()];
        let mut kept = broker.subscribe("a", staying).unwrap();
        broker.end_connection(closing);
        for subscription in &mut gone {
            assert_eq!(subscription.next().await, Some(Delivery::Ended(EndReason::ConnectionEnding)));
        }
        assert_eq!(broker.total_subscriptions(), 1);
        broker.close();
        assert_eq!(kept.next().await, Some(Delivery::Ended(EndReason::ServerClosing)));
        assert_eq!(broker.subscribe("a", staying).err(), Some(BrokerClosed));
        assert_eq!(broker.total_subscriptions(), 0);
    }
}
