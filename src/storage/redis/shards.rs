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
use std::time::Instant;

use futures_util::future::join_all;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisError, Value as RedisValue};

use super::connection::{Connection, RedisConfig, counted, storage_error};
use super::keyed_locks::KeyedLocks;
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
    /// Held while a link to a node is being made: one connection at a time per node.
    connecting: KeyedLocks,
    /// Each node's last failure to connect, and when: callers that waited for that attempt share it.
    failures: Mutex<HashMap<Arc<str>, (Instant, StorageError)>>,
    /// The link each channel is subscribed on: its pushes, and only its, are delivered.
    homes: Mutex<HashMap<Vec<u8>, Link>>,
}

impl Shards {
    pub(super) fn new(config: RedisConfig, pushes: Pushes) -> Self {
        Shards {
            config,
            pushes,
            serial: AtomicU64::new(0),
            links: Mutex::default(),
            connecting: KeyedLocks::default(),
            failures: Mutex::default(),
            homes: Mutex::default(),
        }
    }

    /// Subscribes to `channel` on `node` (the master of its slot, as the caller's [`Masters`] say).
    /// Its home is set before SSUBSCRIBE is sent, so that what follows the confirmation is delivered.
    /// If the link itself failed (no answer in time, a closed connection), it is dropped and the
    /// other channels it was the home of are lost like those of any lost link (see [`Shards::broken`]).
    pub(super) async fn subscribe(&self, node: &str, channel: &str) -> StorageResult<()> {
        let (link, mut connection) = self.link(node).await?;
        self.homes.lock().insert(channel.as_bytes().to_vec(), link.clone());
        let subscribed =
            redis::cmd("SSUBSCRIBE").arg(channel).query_async::<RedisValue>(&mut connection).await;
        if let Err(e) = subscribed {
            self.end(channel.as_bytes(), &link);
            if is_link_failure(&e) {
                self.broken(&link);
            }
            return counted(Err(storage_error(e)));
        }
        // The link was let go while SSUBSCRIBE was on its way (a reset, another command's failure):
        // once this handle goes, nothing holds it open, and its channels would end without a word.
        // Told as a lost link is, their subscribers hear of a gap and the repair subscribes again.
        if !self.links.lock().get(&link.node).is_some_and(|(l, _)| *l == link) {
            self.broken(&link);
        }
        counted(Ok(()))
    }

    /// Unsubscribes from `channel` on its home, if it has one; its pushes are not delivered from now on.
    pub(super) async fn unsubscribe(&self, channel: &str) {
        let Some(home) = self.homes.lock().remove(channel.as_bytes()) else { return };
        let connection =
            self.links.lock().get(&home.node).filter(|(l, _)| *l == home).map(|(_, c)| c.clone());
        if let Some(mut connection) = connection {
            let sent =
                redis::cmd("SUNSUBSCRIBE").arg(channel).query_async::<RedisValue>(&mut connection).await;
            // A link that does not answer is dropped, so that a sweep of many channels waits for it
            // once, not once per channel.
            if let Err(e) = &sent
                && is_link_failure(e)
            {
                self.broken(&home);
            }
            let _ = counted(sent.map_err(storage_error));
        }
    }

    /// Sends PING on every link at once; a link that does not answer within `--redis-timeout` is
    /// dropped and its channels lost. A subscriber link sends nothing else, and redis-rs notices a
    /// lost connection only when reading or writing fails: without this a node that vanished without
    /// closing the connection (powered off, cut off by the network) would go unnoticed until TCP
    /// keepalive ends the connection, its subscribers receiving nothing meanwhile.
    pub(super) async fn ping(&self) {
        let links: Vec<(Link, MultiplexedConnection)> = self.links.lock().values().cloned().collect();
        join_all(links.into_iter().map(|(link, mut connection)| async move {
            match redis::cmd("ROLE").query_async::<RedisValue>(&mut connection).await {
                Err(e) if is_link_failure(&e) => {
                    tracing::debug!(node = %link.node, error = %e, "a subscription link did not answer ROLE; dropping it");
                    self.broken(&link);
                }
                // A node subscribed on as master can have turned replica without ending the
                // subscriptions: a killed master restarted reads its old configuration and calls
                // itself master until the cluster tells it otherwise, and a repair that believed its
                // CLUSTER SLOTS meanwhile subscribed there, where the master's SPUBLISH does not count
                // them. The link is dropped as a lost one (closing it ends them on the replica): its
                // channels' subscribers are told of a gap, and they are made again on the master.
                Ok(RedisValue::Array(role)) if role.first().is_some_and(is_replica) => {
                    tracing::debug!(node = %link.node, "a subscription link's node is a replica now; subscribing on the master");
                    self.broken(&link);
                }
                Ok(RedisValue::ServerError(e)) => refused_role(&link, &e.to_string()),
                Err(e) => refused_role(&link, &e.to_string()),
                _ => {}
            }
        }))
        .await;
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
        self.forget(link);
        let mut homes = self.homes.lock();
        let channels: Vec<Vec<u8>> =
            homes.iter().filter(|(_, l)| *l == link).map(|(c, _)| c.clone()).collect();
        for channel in &channels {
            homes.remove(channel);
        }
        channels
    }

    /// `link` failed under a command of ours (no answer in time, a closed connection): it is not
    /// used again, and the relay is told as redis-rs tells it of a connection that broke, with a
    /// disconnection push from that link. So the channels it was the home of take the one way of a
    /// lost link's (their subscribers told, their subscriptions made again), in order after what the
    /// link pushed before. A timeout gives no push of redis-rs's own; a closed connection may, and
    /// the second push then finds nothing left to lose.
    fn broken(&self, link: &Link) {
        self.forget(link);
        let disconnected = PushInfo { kind: PushKind::Disconnection, data: Vec::new() };
        let _ = self.pushes.sender(Some(link.clone()))(disconnected);
    }

    /// `link` is not used again (a link made to its node since stays).
    fn forget(&self, link: &Link) {
        let mut links = self.links.lock();
        if links.get(&link.node).is_some_and(|(l, _)| l == link) {
            links.remove(&link.node);
        }
    }

    /// Forgets every link and home (news of a lost link may have been dropped): the channels that had
    /// a home. Dropping the links closes them, and with them their subscriptions in Redis.
    pub(super) fn reset(&self) -> Vec<Vec<u8>> {
        self.links.lock().clear();
        self.homes.lock().drain().map(|(channel, _)| channel).collect()
    }

    /// The link to `node`, made if there is none. Callers that need one at once share one attempt:
    /// the link it made, or its failure (each waiting out its own connect timeout for a dead node
    /// made a burst of joins take that long one after the other).
    async fn link(&self, node: &str) -> StorageResult<(Link, MultiplexedConnection)> {
        if let Some(existing) = self.links.lock().get(node) {
            return Ok(existing.clone());
        }
        let asked = Instant::now();
        let _connecting = self.connecting.lock(node).await;
        if let Some(existing) = self.links.lock().get(node) {
            return Ok(existing.clone());
        }
        if let Some((failed, e)) = self.failures.lock().get(node)
            && *failed >= asked
        {
            return Err(e.clone());
        }
        let link = Link { node: node.into(), serial: self.serial.fetch_add(1, Ordering::Relaxed) };
        let url = self.node_url(node)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.response_timeout))
            .set_push_sender(self.pushes.sender(Some(link.clone())));
        let connecting =
            async { self.config.client(&url)?.get_multiplexed_async_connection_with_config(&config).await };
        let connection = match counted(connecting.await.map_err(storage_error)) {
            Ok(connection) => connection,
            Err(e) => {
                self.failures.lock().insert(link.node.clone(), (Instant::now(), e.clone()));
                return Err(e);
            }
        };
        self.failures.lock().remove(node);
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

/// Whether `e` means the link itself failed (it did not answer in time, or its connection is gone),
/// rather than that Redis refused the command (MOVED after a slot moved, CLUSTERDOWN), after which
/// the link still serves its other channels.
/// ROLE refused (an ACL user without it: it is in `@admin`): a channel left on a replica is not noticed
/// by the heartbeat. Said once per process.
fn refused_role(link: &Link, error: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(node = %link.node, error, "Redis refused ROLE on a subscription link: give the gateway's user ROLE (docs/DEPLOY.md), or a subscription left on a replica after a failover is not moved to its master");
    }
}

/// The first item of ROLE's answer on a replica.
fn is_replica(role: &RedisValue) -> bool {
    matches!(role, RedisValue::BulkString(r) if r == b"slave")
        || matches!(role, RedisValue::SimpleString(r) if r == "slave")
}

fn is_link_failure(e: &RedisError) -> bool {
    e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Which node serves each slot as master, as one node of the cluster says now (one `CLUSTER SLOTS`):
/// fetched once for a join, and once for a whole pass of the repair task.
pub(super) struct Masters(Vec<(u16, u16, String)>);

impl Masters {
    pub(super) async fn fetch(mut cluster: Connection) -> StorageResult<Self> {
        let RedisValue::Array(ranges) = cluster.query(redis::cmd("CLUSTER").arg("SLOTS")).await? else {
            return Err(StorageError::Backend("unexpected reply to CLUSTER SLOTS".into()));
        };
        let mut masters = Vec::new();
        // Each range: first slot, last slot, then the master ([host, port, id, …]), then its replicas.
        for range in ranges {
            let RedisValue::Array(range) = range else { continue };
            let (Some(RedisValue::Int(first)), Some(RedisValue::Int(last)), Some(RedisValue::Array(master))) =
                (range.first(), range.get(1), range.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(RedisValue::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
                Some(RedisValue::SimpleString(host)) => host.clone(),
                _ => String::new(),
            };
            if let (false, Some(RedisValue::Int(port)), Ok(first), Ok(last)) =
                (host.is_empty() || host == "?", master.get(1), u16::try_from(*first), u16::try_from(*last))
            {
                masters.push((first, last, format!("{host}:{port}")));
            }
        }
        Ok(Masters(masters))
    }

    /// The node (`host:port`) that serves `channel`'s slot as master.
    pub(super) fn of(&self, channel: &str) -> StorageResult<&str> {
        let slot = slot(channel.as_bytes());
        self.0
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.as_str())
            .ok_or_else(|| {
                StorageError::Unavailable(format!("no Redis master known for slot {slot} (of {channel})"))
            })
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (what lies between its first `{` and the
/// next `}`, if not empty) or else of all of it, modulo 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter().position(|b| *b == b'}').map(|close| &rest[..close]).filter(|tag| !tag.is_empty())
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % 16_384
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;
    use crate::storage::redis::relay::RedisRelay;

    /// A repair and a join that need the same node at once get one link: two would each hold
    /// channels, and the one not kept in the map would close under its channels without a word.
    #[tokio::test]
    async fn links_made_at_once_to_one_node_are_one_link() {
        let redis = qkv_testkit::RedisNode::start(&[]).expect("redis-server starts");
        let config = RedisConfig { urls: vec![redis.url()], ..RedisConfig::default() };
        let (pushes, _relay) = RedisRelay::new(&config);
        let shards = Shards::new(config, pushes);
        let node = format!("127.0.0.1:{}", redis.port);
        let clients =
            || qkv_testkit::cli(redis.port, &["CLIENT", "LIST"]).expect("redis-cli runs").lines().count();
        let before = clients();
        let (first, second) = tokio::join!(shards.link(&node), shards.link(&node));
        let (first, second) = (first.expect("a link").0, second.expect("a link").0);
        assert_eq!(first, second);
        assert_eq!(shards.links.lock().get(node.as_str()).map(|(link, _)| link.clone()), Some(first));
        assert_eq!(clients(), before + 1, "one connection made");
    }

    #[test]
    fn a_slot_is_the_one_redis_rs_computes() {
        for key in
            ["", "qkv:news", "{", "}{", "a{}b", "a{b}c{d}", "{tag}x", "x{tag}", "ü{ß}", "{{a}}", "qkv:{t}"]
        {
            assert_eq!(Slot::new(slot(key.as_bytes())), Some(Slot::for_key(key)), "{key:?}");
        }
    }
}
