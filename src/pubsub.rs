//! Publish/subscribe: topics, their subscribers, and each subscriber's bounded queue. Knows nothing of
//! the wire; the service and the transports build Subscribe, Unsubscribe and Publish on it (issue 8).
//!
//! The course server's pub/sub let one slow subscriber stall a whole topic (publishing waited for
//! every subscriber's unbounded channel to accept) and leaked subscriptions whose connections had gone.
//! Here:
//!
//! - Publishing never waits: each message is offered to every subscriber's queue with `try_send`. A
//!   subscriber whose queue is full does not get it, and by the [`LagPolicy`] either learns how many
//!   messages it missed (a "lagged" item before its next message) or is dropped.
//! - A subscription is a value with an owner: dropping it (its stream ended, its connection went away)
//!   removes it from its topic at once, and a topic without subscribers is removed too.
//! - Unsubscribing by id succeeds only for the connection that owns the subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::pb::Value;

/// What happens to a subscriber whose queue is full when a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagPolicy {
    /// The message is not queued for it; before its next message it receives [`Delivery::Lagged`] with
    /// the number it missed. The default: a slow subscriber loses messages, not its subscription.
    Skip,
    /// It is dropped: its subscription ends with [`Delivery::Dropped`].
    Drop,
}

/// The identity of a connection, for ownership of subscriptions.
pub type ConnectionId = u64;

/// A published message: the values of one Publish.
pub type Message = Arc<[Value]>;

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Message(Message),
    /// This many messages were not delivered because the queue was full ([`LagPolicy::Skip`]).
    Lagged(u64),
    /// The subscription was ended because the queue was full ([`LagPolicy::Drop`]); nothing follows.
    Dropped,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsubscribeError {
    #[error("no subscription {0}")]
    NotFound(u64),
    #[error("subscription {0} belongs to another connection")]
    NotOwner(u64),
}

/// A message in a subscriber's queue, with how many were missed just before it.
struct Queued {
    missed_before: u64,
    message: Message,
}

/// One subscriber, as the topic sees it.
struct Subscriber {
    owner: ConnectionId,
    queue: mpsc::Sender<Queued>,
    /// Messages not queued since the last one that was (publishers are serialised by the topics lock).
    missed: u64,
    /// Set when the subscriber was dropped for lagging.
    dropped: Arc<AtomicBool>,
}

#[derive(Default)]
struct Topics {
    by_name: HashMap<Arc<str>, HashMap<u64, Subscriber>>,
    /// Which topic each subscription id is on.
    topic_of: HashMap<u64, Arc<str>>,
}

struct Inner {
    topics: Mutex<Topics>,
    next_id: AtomicU64,
    queue_len: usize,
    policy: LagPolicy,
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
            next_id: AtomicU64::new(1),
            queue_len: queue_len.max(1),
            policy,
        };
        Broker { inner: Arc::new(inner) }
    }

    /// Subscribes connection `owner` to `topic`.
    pub fn subscribe(&self, topic: &str, owner: ConnectionId) -> Subscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, receiver) = mpsc::channel(self.inner.queue_len);
        let dropped = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber { owner, queue, missed: 0, dropped: dropped.clone() };
        let mut topics = self.inner.topics.lock();
        let name: Arc<str> = match topics.by_name.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => Arc::from(topic),
        };
        topics.by_name.entry(name.clone()).or_default().insert(id, subscriber);
        topics.topic_of.insert(id, name);
        Subscription { id, broker: self.clone(), receiver, after_lag: None, dropped }
    }

    /// Offers `message` to every subscriber of `topic`; returns how many it was queued for. Never
    /// waits: a full queue is handled by the lag policy.
    pub fn publish(&self, topic: &str, message: Message) -> usize {
        let mut topics = self.inner.topics.lock();
        let Some(subscribers) = topics.by_name.get_mut(topic) else { return 0 };
        let mut delivered = 0;
        let mut lagged_out = Vec::new();
        for (&id, subscriber) in subscribers.iter_mut() {
            let queued = Queued { missed_before: subscriber.missed, message: message.clone() };
            match subscriber.queue.try_send(queued) {
                Ok(()) => {
                    subscriber.missed = 0;
                    delivered += 1;
                }
                Err(mpsc::error::TrySendError::Full(_)) => match self.inner.policy {
                    LagPolicy::Skip => subscriber.missed += 1,
                    LagPolicy::Drop => {
                        subscriber.dropped.store(true, Ordering::Relaxed);
                        lagged_out.push(id);
                    }
                },
                // The subscription is being dropped; it removes itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for id in lagged_out {
            // Dropping its sender ends the subscriber's stream once it has read what is queued.
            remove(&mut topics, id);
        }
        delivered
    }

    /// Ends subscription `id`, if connection `owner` owns it.
    pub fn unsubscribe(&self, id: u64, owner: ConnectionId) -> Result<(), UnsubscribeError> {
        let mut topics = self.inner.topics.lock();
        let topic = topics.topic_of.get(&id).ok_or(UnsubscribeError::NotFound(id))?;
        let subscriber =
            topics.by_name.get(topic).and_then(|s| s.get(&id)).ok_or(UnsubscribeError::NotFound(id))?;
        if subscriber.owner != owner {
            return Err(UnsubscribeError::NotOwner(id));
        }
        remove(&mut topics, id);
        Ok(())
    }

    /// Subscribers of `topic` now.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.inner.topics.lock().by_name.get(topic).map_or(0, HashMap::len)
    }

    /// Subscriptions on every topic now.
    pub fn total_subscriptions(&self) -> usize {
        self.inner.topics.lock().topic_of.len()
    }
}

/// Removes subscription `id` and, if it was its topic's last, the topic.
fn remove(topics: &mut Topics, id: u64) {
    let Some(topic) = topics.topic_of.remove(&id) else { return };
    if let Some(subscribers) = topics.by_name.get_mut(&topic) {
        subscribers.remove(&id);
        if subscribers.is_empty() {
            topics.by_name.remove(&topic);
        }
    }
}

/// One subscription: the messages published to its topic, in publish order. Dropping it
/// unsubscribes.
pub struct Subscription {
    id: u64,
    broker: Broker,
    receiver: mpsc::Receiver<Queued>,
    /// A message that arrived after a gap, returned after the `Lagged` that reports the gap.
    after_lag: Option<Message>,
    dropped: Arc<AtomicBool>,
}

impl Subscription {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next delivery; `None` once the subscription has ended (unsubscribed) and everything queued
    /// has been read.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if let Some(message) = self.after_lag.take() {
            return Poll::Ready(Some(Delivery::Message(message)));
        }
        match self.receiver.poll_recv(cx) {
            // Missed messages are reported where they were missed: before the next one that arrived.
            Poll::Ready(Some(Queued { missed_before, message })) if missed_before > 0 => {
                self.after_lag = Some(message);
                Poll::Ready(Some(Delivery::Lagged(missed_before)))
            }
            Poll::Ready(Some(Queued { message, .. })) => Poll::Ready(Some(Delivery::Message(message))),
            Poll::Ready(None) if self.dropped.swap(false, Ordering::Relaxed) => {
                Poll::Ready(Some(Delivery::Dropped))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
        remove(&mut self.broker.inner.topics.lock(), self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: i64) -> Message {
        Arc::from(vec![Value::from(n)])
    }

    #[tokio::test]
    async fn every_subscriber_receives_every_message_in_publish_order() {
        let broker = Broker::new(64, LagPolicy::Skip);
        let mut subscriptions: Vec<Subscription> = (0..1000).map(|c| broker.subscribe("news", c)).collect();
        for n in 0..50 {
            assert_eq!(broker.publish("news", message(n)), 1000);
        }
        for subscription in &mut subscriptions {
            for n in 0..50 {
                assert_eq!(subscription.next().await, Some(Delivery::Message(message(n))));
            }
        }
        assert_eq!(broker.publish("elsewhere", message(0)), 0, "a topic nobody listens to");
    }

    #[tokio::test]
    async fn a_full_queue_never_holds_up_the_publisher_or_others_and_says_how_much_it_missed() {
        let broker = Broker::new(4, LagPolicy::Skip);
        let mut slow = broker.subscribe("t", 1);
        let mut fast = broker.subscribe("t", 2);
        for n in 0..10 {
            // Returns at once whether or not `slow` reads: the fast one still gets everything.
            broker.publish("t", message(n));
            assert_eq!(fast.next().await, Some(Delivery::Message(message(n))));
        }
        for n in 0..4 {
            assert_eq!(slow.next().await, Some(Delivery::Message(message(n))));
        }
        broker.publish("t", message(10));
        assert_eq!(slow.next().await, Some(Delivery::Lagged(6)), "messages 4..=9 were missed");
        assert_eq!(slow.next().await, Some(Delivery::Message(message(10))));
    }

    #[tokio::test]
    async fn with_the_drop_policy_a_lagging_subscriber_is_ended_after_what_it_had() {
        let broker = Broker::new(2, LagPolicy::Drop);
        let mut slow = broker.subscribe("t", 1);
        for n in 0..3 {
            broker.publish("t", message(n));
        }
        assert_eq!(broker.subscribers("t"), 0, "dropped at once");
        assert_eq!(slow.next().await, Some(Delivery::Message(message(0))));
        assert_eq!(slow.next().await, Some(Delivery::Message(message(1))));
        assert_eq!(slow.next().await, Some(Delivery::Dropped));
        assert_eq!(slow.next().await, None);
    }

    #[tokio::test]
    async fn only_the_owner_unsubscribes_and_dropping_a_subscription_leaves_nothing_behind() {
        let broker = Broker::new(8, LagPolicy::Skip);
        let mut mine = broker.subscribe("t", 1);
        let theirs = broker.subscribe("t", 2);
        assert_eq!(broker.unsubscribe(mine.id(), 2), Err(UnsubscribeError::NotOwner(mine.id())));
        assert_eq!(broker.unsubscribe(999, 1), Err(UnsubscribeError::NotFound(999)));
        broker.unsubscribe(mine.id(), 1).unwrap();
        assert_eq!(mine.next().await, None, "an unsubscribed stream ends");
        assert_eq!(broker.subscribers("t"), 1);
        drop(theirs);
        drop(mine);
        assert_eq!((broker.subscribers("t"), broker.total_subscriptions()), (0, 0));
        assert!(broker.inner.topics.lock().by_name.is_empty(), "an empty topic is removed");
    }
}
