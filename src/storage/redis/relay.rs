//! Pub/sub across gateways through Redis: a gateway publishes with SPUBLISH (PUBLISH on a plain
//! Redis), and holds one SSUBSCRIBE per topic that any of its subscribers listens to; what Redis
//! pushes is delivered to them through the gateway's own [`Broker`], with its bounded queues and lag
//! reporting.
//!
//! Every message, the publishing gateway's own subscribers' included, comes back through Redis, so all
//! subscribers see one order: Redis keeps each connection's publishes to a channel in order, and a
//! gateway delivers what it receives one message at a time.
//!
//! Gaps are reported, never hidden: when the link to a shard breaks (a failover, a restart) or Redis
//! ends a subscription itself (its slot moved), every subscriber of the topics concerned gets a
//! `Missed` of 1 (at least one message may be missing) and the subscription is made again; so does a
//! topic whose message was dropped because the queue of pushes was full.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::{PushInfo, PushKind, Value as RedisValue};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connection::{Connector, Pushes};
use crate::pubsub::{Broker, Relay};
use crate::storage::StorageError;

/// Pushes from Redis waiting to be delivered; beyond, messages are dropped and reported as missed.
pub(super) const PUSH_QUEUE: usize = 4_096;

/// How often topics without subscribers left are unsubscribed from.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub(super) struct RedisRelay {
    connector: Arc<Connector>,
    state: Arc<State>,
    pushes: Mutex<Option<mpsc::Receiver<PushInfo>>>,
    overflowed: Arc<Mutex<HashSet<Vec<u8>>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// Topics this gateway subscribes to in Redis; changed only under this lock, across the Redis
    /// call, so a join and a sweep of the same topic cannot cross.
    joined: tokio::sync::Mutex<HashSet<String>>,
    /// Topics whose subscription Redis has confirmed since the link was last lost: a second
    /// confirmation is a subscription made again, after a gap.
    confirmed: Mutex<HashSet<Vec<u8>>>,
}

impl RedisRelay {
    /// The relay and the push channel its connection must deliver to.
    pub(super) fn new() -> (Pushes, impl FnOnce(Arc<Connector>, Pushes) -> Self) {
        let (queue, receiver) = mpsc::channel(PUSH_QUEUE);
        let pushes = Pushes { queue, overflowed: Arc::default() };
        let make = move |connector, pushes: Pushes| RedisRelay {
            connector,
            state: Arc::default(),
            pushes: Mutex::new(Some(receiver)),
            overflowed: pushes.overflowed,
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
            overflowed: self.overflowed.clone(),
            broker,
        };
        *self.task.lock() = Some(tokio::spawn(delivery.run(pushes)));
    }

    fn join(&self, topic: String) -> BoxFuture<'static, Result<(), String>> {
        let (connector, state) = (self.connector.clone(), self.state.clone());
        async move {
            let mut joined = state.joined.lock().await;
            if joined.contains(&topic) {
                return Ok(());
            }
            let mut connection = connector.connection().map_err(|e| e.to_string())?;
            connection.subscribe(&topic).await.map_err(|e| e.to_string())?;
            joined.insert(topic);
            Ok(())
        }
        .boxed()
    }

    fn publish(&self, topic: String, message: Vec<u8>) -> BoxFuture<'static, Result<usize, StorageError>> {
        let connector = self.connector.clone();
        async move { connector.connection()?.publish(&topic, &message).await }.boxed()
    }
}

/// The task that delivers what Redis pushes.
struct Delivery {
    connector: Arc<Connector>,
    state: Arc<State>,
    overflowed: Arc<Mutex<HashSet<Vec<u8>>>>,
    broker: Broker,
}

fn topic_of(info: &PushInfo) -> Option<String> {
    match info.data.first() {
        Some(RedisValue::BulkString(bytes)) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    }
}

impl Delivery {
    async fn run(self, mut pushes: mpsc::Receiver<PushInfo>) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                push = pushes.recv() => match push {
                    Some(info) => self.handle(info).await,
                    None => return,
                },
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn handle(&self, info: PushInfo) {
        let overflowed: Vec<Vec<u8>> = self.overflowed.lock().drain().collect();
        for topic in overflowed {
            self.broker.report_gap(&String::from_utf8_lossy(&topic));
        }
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(topic), Some(RedisValue::BulkString(message))) =
                    (topic_of(&info), info.data.get(1))
                else {
                    return;
                };
                // A message the memory budget cannot hold is missed by every subscriber, and they are told.
                if self.broker.publish(&topic, message.clone()).await.is_err() {
                    self.broker.report_gap(&topic);
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                let Some(RedisValue::BulkString(topic)) = info.data.first() else { return };
                if !self.state.confirmed.lock().insert(topic.clone()) {
                    self.broker.report_gap(&String::from_utf8_lossy(topic));
                }
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                let Some(topic) = topic_of(&info) else { return };
                self.state.confirmed.lock().remove(topic.as_bytes());
                // Not asked for (its slot moved, say): subscribe again, wherever the topic lives now.
                if self.state.joined.lock().await.contains(&topic) {
                    self.broker.report_gap(&topic);
                    if let Ok(mut connection) = self.connector.connection()
                        && let Err(e) = connection.subscribe(&topic).await
                    {
                        tracing::warn!(topic, error = %e, "cannot subscribe again after Redis ended the subscription");
                    }
                }
            }
            PushKind::Disconnection => {
                let confirmed: Vec<Vec<u8>> = self.state.confirmed.lock().drain().collect();
                for topic in confirmed {
                    self.broker.report_gap(&String::from_utf8_lossy(&topic));
                }
            }
            _ => {}
        }
    }

    /// Unsubscribes from topics that no subscriber of this gateway listens to any more.
    async fn sweep(&self) {
        let mut joined = self.state.joined.lock().await;
        let idle: Vec<String> = joined.iter().filter(|t| self.broker.subscribers(t) == 0).cloned().collect();
        for topic in idle {
            joined.remove(&topic);
            if let Ok(mut connection) = self.connector.connection() {
                let _ = connection.unsubscribe(&topic).await;
            }
        }
    }
}
