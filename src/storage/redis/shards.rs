//! Sharded subscriptions on a cluster, on connections the relay makes itself: one link per node that
//! holds any, each push tagged with the link it came from.
//!
//! Not through redis-rs's cluster connection, which makes subscriptions again by itself: after it
//! reconnects to a node, with the slot map it had (after a failover, one that still names the failed
//! master), and after it refreshes its map, which it does only when a command of this gateway meets
//! the change. A gateway whose subscribers were idle then stayed unsubscribed after a failover; once
//! the old master came back as a replica it held the channel there and on the new master (a replica
//! accepts SSUBSCRIBE for its master's slots, and SPUBLISH reaches every node of the shard), and
//! delivered every message twice. Here only the relay subscribes, each channel on one link (its
//! home: one to the master of its slot when it subscribed), and only pushes from a channel's home are
//! delivered, so a message is delivered once however many nodes send it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value as RedisValue};

use super::connection::{Connection, RedisConfig, counted, storage_error};
use super::relay::Pushes;
use crate::storage::{StorageError, StorageResult};

/// One connection to one node (`host:port`). A link made again to the same node is another link, so
/// that what a lost one had sent is told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    node: Arc<str>,
    serial: u64,
}

pub(super) struct Shards {
    config: RedisConfig,
    pushes: Pushes,
    serial: AtomicU64,
    links: Mutex<HashMap<Arc<str>, (Link, MultiplexedConnection)>>,
    /// The link each channel is subscribed on: its pushes, and only its, are delivered.
    homes: Mutex<HashMap<Vec<u8>, Link>>,
}

impl Shards {
    pub(super) fn new(config: RedisConfig, pushes: Pushes) -> Self {
        Shards { config, pushes, serial: AtomicU64::new(0), links: Mutex::default(), homes: Mutex::default() }
    }

    /// Subscribes to `channel` on the master of its slot, as the cluster says now. Its home is set
    /// before SSUBSCRIBE is sent, so that what follows the confirmation is delivered.
    pub(super) async fn subscribe(&self, cluster: Connection, channel: &str) -> StorageResult<()> {
        let node = master_of(cluster, channel).await?;
        let (link, mut connection) = self.link(&node).await?;
        self.homes.lock().insert(channel.as_bytes().to_vec(), link.clone());
        let subscribed =
            redis::cmd("SSUBSCRIBE").arg(channel).query_async::<RedisValue>(&mut connection).await;
        if let Err(e) = counted(subscribed.map_err(storage_error)) {
            self.end(channel.as_bytes(), &link);
            if matches!(e, StorageError::Unavailable(_) | StorageError::Uncertain(_)) {
                self.lost(&link);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Unsubscribes from `channel` on its home, if it has one; its pushes are not delivered from now on.
    pub(super) async fn unsubscribe(&self, channel: &str) {
        let Some(home) = self.homes.lock().remove(channel.as_bytes()) else { return };
        let connection =
            self.links.lock().get(&home.node).filter(|(l, _)| *l == home).map(|(_, c)| c.clone());
        if let Some(mut connection) = connection {
            let sent =
                redis::cmd("SUNSUBSCRIBE").arg(channel).query_async::<RedisValue>(&mut connection).await;
            let _ = counted(sent.map_err(storage_error));
        }
    }

    /// Whether `channel`'s pushes from `link` are to be delivered.
    pub(super) fn is_home(&self, channel: &[u8], link: &Link) -> bool {
        self.homes.lock().get(channel) == Some(link)
    }

    pub(super) fn has_home(&self, channel: &[u8]) -> bool {
        self.homes.lock().contains_key(channel)
    }

    /// Redis ended `channel`'s subscription on `link` (its slot moved): whether that was its home,
    /// which it then no longer is.
    pub(super) fn end(&self, channel: &[u8], link: &Link) -> bool {
        let mut homes = self.homes.lock();
        let home = homes.get(channel) == Some(link);
        if home {
            homes.remove(channel);
        }
        home
    }

    /// `link` is lost: it is made again when next needed; the channels it was the home of, which now
    /// have none.
    pub(super) fn lost(&self, link: &Link) -> Vec<Vec<u8>> {
        let mut links = self.links.lock();
        if links.get(&link.node).is_some_and(|(l, _)| l == link) {
            links.remove(&link.node);
        }
        let mut homes = self.homes.lock();
        let channels: Vec<Vec<u8>> =
            homes.iter().filter(|(_, l)| *l == link).map(|(c, _)| c.clone()).collect();
        for channel in &channels {
            homes.remove(channel);
        }
        channels
    }

    /// Forgets every link and home (news of a lost link may have been dropped): the channels that had
    /// a home. Dropping the links closes them, and with them their subscriptions in Redis.
    pub(super) fn reset(&self) -> Vec<Vec<u8>> {
        self.links.lock().clear();
        self.homes.lock().drain().map(|(channel, _)| channel).collect()
    }

    /// The link to `node`, made if there is none.
    async fn link(&self, node: &str) -> StorageResult<(Link, MultiplexedConnection)> {
        if let Some(existing) = self.links.lock().get(node) {
            return Ok(existing.clone());
        }
        let link = Link { node: node.into(), serial: self.serial.fetch_add(1, Ordering::Relaxed) };
        let url = self.node_url(node)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout))
            .set_push_sender(self.pushes.sender(Some(link.clone())));
        let connecting =
            async { self.config.client(&url)?.get_multiplexed_async_connection_with_config(&config).await };
        let connection = counted(connecting.await.map_err(storage_error))?;
        self.links.lock().insert(link.node.clone(), (link.clone(), connection.clone()));
        Ok((link, connection))
    }

    /// The first seed's URL (scheme, credentials, options) with `node`'s host and port.
    fn node_url(&self, node: &str) -> StorageResult<String> {
        let unusable = || StorageError::Backend(format!("cannot make a URL for the Redis node {node}"));
        let (host, port) = node.rsplit_once(':').ok_or_else(unusable)?;
        let mut url =
            self.config.urls.first().and_then(|seed| redis::parse_redis_url(seed)).ok_or_else(unusable)?;
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        url.set_host(Some(&host)).map_err(|_| unusable())?;
        url.set_port(port.parse().ok()).map_err(|_| unusable())?;
        Ok(url.into())
    }
}

/// The node (`host:port`) that serves `channel`'s slot as master, as a node of the cluster says now.
async fn master_of(mut cluster: Connection, channel: &str) -> StorageResult<String> {
    let slot = match cluster.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel)).await? {
        RedisValue::Int(slot) => slot,
        other => {
            return Err(StorageError::Backend(format!("unexpected reply to CLUSTER KEYSLOT: {other:?}")));
        }
    };
    let RedisValue::Array(ranges) = cluster.query(redis::cmd("CLUSTER").arg("SLOTS")).await? else {
        return Err(StorageError::Backend("unexpected reply to CLUSTER SLOTS".into()));
    };
    // Each range: first slot, last slot, then the master ([host, port, id, …]), then its replicas.
    for range in ranges {
        let RedisValue::Array(range) = range else { continue };
        let (Some(RedisValue::Int(first)), Some(RedisValue::Int(last)), Some(RedisValue::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            continue;
        };
        if !(*first..=*last).contains(&slot) {
            continue;
        }
        let host = match master.first() {
            Some(RedisValue::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(RedisValue::SimpleString(host)) => host.clone(),
            _ => String::new(),
        };
        if let (false, Some(RedisValue::Int(port))) = (host.is_empty() || host == "?", master.get(1)) {
            return Ok(format!("{host}:{port}"));
        }
    }
    Err(StorageError::Unavailable(format!("no Redis master known for slot {slot} (of {channel})")))
}
