//! The connection to Redis: made in the background from any seed, to a cluster or one plain Redis,
//! and its errors sorted into what a client needs to know (executed or not, retry or not).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Client, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, RedisResult, ServerErrorKind, TlsCertificates, Value as RedisValue,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::WaitReplicas;
use super::relay::Pushes;
use super::scripts::{self, Lua};
use crate::storage::{StorageError, StorageResult};

/// Where Redis is and how to talk to it.
#[derive(Clone)]
pub struct RedisConfig {
    /// Seed URLs (`redis://` or `rediss://`, with `user:password@` if need be): a cluster is
    /// discovered from any of them; a plain Redis is used as it is.
    pub urls: Vec<String>,
    /// Credentials for every node, when the URLs do not carry them.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM certificates to trust for `rediss://` instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Put before every key qkv writes, so that qkv's keys are told apart from others in a shared Redis.
    pub prefix: String,
    /// Acknowledge a write only once this many replicas have it (`WAIT`); 0: do not wait.
    pub wait_replicas: u32,
    /// How long a write waits for its replicas before it is answered as uncertain.
    pub wait_timeout: Duration,
    /// How many writes may wait for their replicas at once, each on a connection of its own (Redis
    /// holds a connection still while a WAIT on it waits): see `WaitingLinks`.
    pub wait_connections: usize,
    /// How long one Redis command may take.
    pub response_timeout: Duration,
    /// How long connecting to one node may take.
    pub connect_timeout: Duration,
    /// How many times a command is sent again after a redirect (MOVED, ASK), TRYAGAIN or a lost node.
    pub retries: u32,
    /// Bytes of published messages Redis has pushed that may wait for delivery to this server's
    /// subscribers; beyond, messages are dropped and their subscribers told (a "missed" frame).
    pub push_buffer: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            username: None,
            password: None,
            ca_pem: None,
            prefix: "qkv:".into(),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            wait_connections: 16,
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            retries: 8,
            push_buffer: 64 << 20,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("seeds", &self.seeds())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(redacted)"))
            .field("prefix", &self.prefix)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// The seeds as they may be logged: scheme, host and port, without credentials.
    pub fn seeds(&self) -> String {
        let shown: Vec<String> = self.urls.iter().map(|url| redacted_url(url)).collect();
        shown.join(", ")
    }

    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, RedisError> {
        let info = url.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        // Push messages (pub/sub) need RESP3.
        settings = settings.set_protocol(ProtocolVersion::RESP3);
        Ok(info.set_redis_settings(settings).set_tcp_settings(tcp_settings()))
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) })
    }

    pub(super) fn client(&self, url: &str) -> Result<Client, RedisError> {
        let info = self.connection_info(url)?;
        match self.certificates() {
            Some(certificates) if url.starts_with("rediss://") => Client::build_with_tls(info, certificates),
            _ => Client::open(info),
        }
    }
}

/// TCP keepalive on every connection to Redis: first probe after this long without traffic, then
/// one every [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_RETRIES`] unanswered ending the connection. So a
/// node that vanished without closing its connections (powered off, cut off) is noticed on an idle
/// connection within about 5 + 3 × 2 = 11 s, on one waiting for an acknowledgement within
/// [`USER_TIMEOUT`] (on Linux; which also bounds the probes); redis-rs
/// then sees the connection fail, reconnects (the cluster connection, a plain Redis's manager) or
/// tells the relay (a subscription link, which its PING every few seconds tests sooner: see
/// `relay.rs`).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent but not acknowledged by the node for this long ends the connection (Linux's
/// TCP_USER_TIMEOUT; elsewhere retransmissions go on for many minutes).
#[cfg(target_os = "linux")]
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands go out at once (TCP_NODELAY): a request waits for its Redis round trip, never for Nagle.
/// A node that vanished is noticed (see [`KEEPALIVE_IDLE`]).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let settings = redis::io::tcp::TcpSettings::default().set_nodelay(true).set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(USER_TIMEOUT);
    settings
}

/// A Redis URL without its user and password, as it may be logged or printed.
/// Whatever comes before an `@` is taken for credentials, even in a URL malformed otherwise (say
/// `redis//user:secret@host`), which is printed only to be refused.
pub fn redacted_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        (None, Some(at)) => format!("…@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A Redis URL without its password, its user kept: for `qkv serve --print-config`, whose output
/// starts a config file, and a server started from it must connect as the same user (its password
/// given apart, as `QKV_REDIS_PASSWORD`). A URL whose credentials cannot be told apart from the rest
/// loses them all, as in [`redacted_url`].
pub fn url_without_password(url: &str) -> String {
    let (Some((scheme, rest)), Some(at)) = (url.split_once("://"), url.rfind('@')) else {
        return redacted_url(url);
    };
    let Some(credentials) = at.checked_sub(scheme.len() + 3).and_then(|end| rest.get(..end)) else {
        return redacted_url(url);
    };
    let user = credentials.split_once(':').map_or(credentials, |(user, _)| user);
    match user {
        "" => format!("{scheme}://{}", &url[at + 1..]),
        user => format!("{scheme}://{user}@{}", &url[at + 1..]),
    }
}

/// A connection to one plain Redis, or to a cluster. Cheap to clone; both kinds reconnect by themselves
/// when their connection breaks.
#[derive(Clone)]
pub(super) enum Connection {
    Single(Arc<SingleRedis>),
    Cluster(ClusterConnection),
}

/// A plain Redis, through redis-rs's connection manager. The manager connects again when its
/// connection breaks, but once connecting has failed for another reason than I/O it answers every
/// command with that failure for ever, even once Redis would take the connection. The one such
/// failure that can pass is Redis refusing the gateway's credentials (a restart with another
/// password, an ACL changed, then put right): after it, a new manager is made in the background
/// ([`SingleRedis::after_failure`]), whichever command met it (a request's, or the relay's heartbeat
/// PING, which an idle gateway sends every few seconds).
pub(super) struct SingleRedis {
    current: Mutex<Managed>,
    replacing: Mutex<Replacing>,
    config: RedisConfig,
    url: String,
    pushes: Pushes,
}

/// A connection manager, and which of the gateway's it is: a failure met on one that has since been
/// replaced asks for nothing more.
#[derive(Clone)]
struct Managed {
    manager: ConnectionManager,
    generation: u64,
}

/// When a new manager was last asked for, and whether one is being made.
#[derive(Default)]
struct Replacing {
    last: Option<std::time::Instant>,
    busy: bool,
}

impl SingleRedis {
    /// Runs `command` on the manager now; a credentials refusal has a new one made
    /// ([`SingleRedis::after_failure`]).
    pub(super) async fn run<T>(
        self: &Arc<Self>,
        command: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let mut managed = self.current.lock().clone();
        let result = command(&mut managed.manager).await;
        if let Err(e) = &result {
            self.after_failure(&managed, e);
        }
        result
    }

    /// How many managers have been replaced.
    #[cfg(test)]
    pub(super) fn replacements(&self) -> u64 {
        self.current.lock().generation
    }

    /// After a command on `failed` failed with `e`: if Redis refused the gateway's credentials and
    /// `failed` is still the current manager, a new one is made in the background, one attempt at a
    /// time and at most one every [`RETRY_LAST`].
    fn after_failure(self: &Arc<Self>, failed: &Managed, e: &RedisError) {
        if !is_credentials_refusal(e) {
            return;
        }
        {
            let mut replacing = self.replacing.lock();
            // Checked under `replacing`, after `busy`: a replacement sets `busy` back only once its
            // manager is current, so a failure of the manager it replaced asks for nothing.
            if replacing.busy
                || replacing.last.is_some_and(|at| at.elapsed() < RETRY_LAST)
                || self.current.lock().generation != failed.generation
            {
                return;
            }
            *replacing = Replacing { last: Some(std::time::Instant::now()), busy: true };
        }
        let this = self.clone();
        tokio::spawn(async move {
            match connect_single(&this.config, &this.url, &this.pushes).await {
                Ok(manager) => {
                    let mut current = this.current.lock();
                    // The old manager's subscriptions end with it: the relay is told, before anything
                    // the new one pushes and before anyone can use it (the push is queued without
                    // waiting), and makes them again on the new one (`relay.rs`).
                    let _ = (this.pushes.sender(None))(replaced_push());
                    *current = Managed { manager, generation: current.generation + 1 };
                    drop(current);
                    tracing::info!(url = %redacted_url(&this.url), "connected to Redis again");
                }
                Err(e) => tracing::debug!(error = %e, "cannot connect to Redis again yet"),
            }
            this.replacing.lock().busy = false;
        });
    }
}

/// What tells the relay that a plain Redis's connection manager was replaced: a disconnection, whose
/// data says so (redis-rs's own carry none).
pub(super) fn replaced_push() -> PushInfo {
    PushInfo { kind: PushKind::Disconnection, data: vec![RedisValue::SimpleString(REPLACED.into())] }
}

/// See [`replaced_push`].
pub(super) const REPLACED: &str = "qkv: connection manager replaced";

impl Connection {
    async fn send(&mut self, cmd: &Cmd) -> Result<RedisValue, RedisError> {
        match self {
            Connection::Single(c) => c.run(async |manager| cmd.query_async(manager).await).await,
            Connection::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Publishes; answers how many Redis clients (gateways) received the message.
    ///
    /// On a cluster, SPUBLISH goes inside a script ([`scripts::SHARD_PUBLISH`]), sent to the master
    /// of the channel's slot as redis-rs's map has it. A replica of the channel's shard takes SPUBLISH
    /// itself and tells only its own subscribers (none: the relays subscribe on masters), and
    /// redis-rs's map can name such a replica for as long as no command of this gateway is redirected
    /// (a failed master back as its successor's replica, met by a map refreshed while it still called
    /// itself master): a gateway that only published lost every message meanwhile, answered 0
    /// receivers. A replica refuses the script (it is a writing one: READONLY), after which redis-rs
    /// refreshes its map and sends it to the master. The script names no key: a master whose slot is
    /// being moved (`MIGRATING`) sends a command for a key it does not hold on to the slot's new node
    /// (ASK), and a channel is never a key it holds, so the new node published to its own shard only
    /// while the subscriptions stayed on the master, which serves a moving slot's channels itself
    /// until the move ends.
    pub(super) async fn publish(&mut self, topic: &str, message: &[u8]) -> StorageResult<usize> {
        let reply = match self {
            Connection::Cluster(cluster) => {
                let script = &scripts::SHARD_PUBLISH;
                let mut call = redis::cmd("EVALSHA");
                call.arg(&script.hash).arg(0).arg(topic).arg(message);
                let master = Route::new(super::shards::slot(topic.as_bytes()), SlotAddr::Master);
                let mut sent = send_routed(cluster, &call, script, master).await;
                if sent.as_ref().is_err_and(is_not_local) {
                    // The map names a node that does not serve the slot (its master failed over, or
                    // the slot moved), which refuses a script naming no key without redirecting it:
                    // a command naming the channel as a key is redirected (MOVED), which puts the
                    // map right, and the publish is sent again.
                    let _ = redis::cmd("GET").arg(topic).query_async::<RedisValue>(&mut *cluster).await;
                    sent = send_routed(cluster, &call, script, master).await;
                }
                counted(sent.map_err(publish_error))?
            }
            Connection::Single(_) => self.query(redis::cmd("PUBLISH").arg(topic).arg(message)).await?,
        };
        match reply {
            RedisValue::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            other => {
                Err(StorageError::Backend(format!("unexpected reply from Redis to a publish: {other:?}")))
            }
        }
    }

    /// One command; errors sorted.
    pub(super) async fn query(&mut self, cmd: &Cmd) -> StorageResult<RedisValue> {
        counted(self.send(cmd).await.map_err(storage_error))
    }

    /// A script call (`EVALSHA`, built by `TableKeys`); sent as the script itself when Redis has not cached it
    /// (a node that just took over after a failover, a restarted one). With `wait`, it goes on a
    /// connection of those links, then waits for their replicas.
    pub(super) async fn invoke(
        &mut self,
        cmd: Cmd,
        script: &Lua,
        wait: Option<&WaitingLinks>,
    ) -> StorageResult<RedisValue> {
        counted(self.invoke_uncounted(cmd, script, wait).await)
    }

    async fn invoke_uncounted(
        &mut self,
        cmd: Cmd,
        script: &Lua,
        wait: Option<&WaitingLinks>,
    ) -> StorageResult<RedisValue> {
        let Some(links) = wait else {
            let started = tokio::time::Instant::now();
            return match self.send(&cmd).await {
                // Sent again as the script itself only within what is left of the longest a write
                // may take (each send may last `--redis-timeout`): a repeat of a call that had run
                // before the first's retries met NOSCRIPT (a node just promoted) is recognised only
                // while Redis remembers the call, twice that time. (A send already on its way when
                // the time is up still arrives.)
                Err(e) if is_noscript(&e) => {
                    let left = super::MAX_WRITE_TIME.saturating_sub(started.elapsed());
                    match tokio::time::timeout(left, self.send(&eval(&cmd, script))).await {
                        Ok(result) => result,
                        Err(_) => {
                            return Err(StorageError::Uncertain(format!(
                                "Redis did not answer a script sent again as itself (NOSCRIPT) within {:?} of the first send",
                                super::MAX_WRITE_TIME
                            )));
                        }
                    }
                }
                result => result,
            }
            .map_err(storage_error);
        };
        links.write(self, &cmd, script).await
    }
}

/// Connections of their own for the writes that wait for replicas (`--redis-wait`). Redis blocks the
/// connection a WAIT came on until the replicas confirm or its timeout passes, and reads nothing more
/// from it meanwhile: on the shared, multiplexed connection every command sent to that node after a
/// WAIT waited behind it. A master that has just failed over has no replica until its old master
/// returns, so every WAIT there lasts its whole timeout: with four clients writing, the node's reads
/// and writes queued behind one WAIT after another, beyond `--redis-timeout`, and the gateway answered
/// 504 for that node (and `/readyz` timed out) until the replica came back, minutes later. Here a
/// write and its WAIT have a connection to themselves: a WAIT holds up no other request, and at most
/// `--redis-wait-connections` writes wait at once; more wait for a connection (and are answered 503,
/// nothing run, if none frees within `--redis-timeout`).
pub(super) struct WaitingLinks {
    wait: WaitReplicas,
    links: Vec<tokio::sync::Mutex<Option<Link>>>,
    free: tokio::sync::Semaphore,
    config: RedisConfig,
}

/// One connection of [`WaitingLinks`]: to the plain Redis the gateway uses, or to the cluster (which
/// redis-rs keeps one connection to each node of, made again when one breaks).
enum Link {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl WaitingLinks {
    /// The links `config` asks for: none without `--redis-wait`.
    pub(super) fn new(config: &RedisConfig) -> Option<Self> {
        let count = config.wait_connections.max(1);
        (config.wait_replicas > 0).then(|| WaitingLinks {
            wait: WaitReplicas { replicas: config.wait_replicas, timeout: config.wait_timeout },
            links: (0..count).map(|_| tokio::sync::Mutex::new(None)).collect(),
            free: tokio::sync::Semaphore::new(count),
            config: config.clone(),
        })
    }

    /// The write `cmd`, then WAIT, answered once enough replicas have it (else uncertain).
    async fn write(&self, main: &Connection, cmd: &Cmd, script: &Lua) -> StorageResult<RedisValue> {
        let (reply, waited) = self.send_waiting(main, cmd, script).await?;
        let wait = self.wait;
        // The write ran: whatever stopped WAIT (a master turned replica answers UNBLOCKED) leaves its
        // fate unknown.
        let replicas = match waited {
            RedisValue::Int(replicas) => replicas,
            other => {
                return Err(StorageError::Uncertain(format!(
                    "the write was made on the Redis master, but waiting for its replicas failed: {other:?}"
                )));
            }
        };
        if replicas < i64::from(wait.replicas) {
            return Err(StorageError::Uncertain(format!(
                "the write was made on the Redis master but only {replicas} of the {} replicas asked for (--redis-wait) confirmed it within {:?}; it may be lost if that master fails",
                wait.replicas, wait.timeout
            )));
        }
        Ok(reply)
    }

    /// `cmd`, sent as its script if Redis has not cached it, then WAIT, on a connection nothing else
    /// uses meanwhile (made when first needed, of the kind `main` is; see [`keeps_link`] for when it
    /// is used again).
    async fn send_waiting(
        &self,
        main: &Connection,
        cmd: &Cmd,
        script: &Lua,
    ) -> StorageResult<(RedisValue, RedisValue)> {
        let busy = || {
            StorageError::Unavailable(format!(
                "every connection for writes that wait for replicas ({}, --redis-wait-connections) stayed busy for {:?} (--redis-timeout); nothing was run",
                self.links.len(),
                self.config.response_timeout
            ))
        };
        let _permit = tokio::time::timeout(self.config.response_timeout, self.free.acquire())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        // A permit leaves at least one link unlocked.
        let mut slot = self.links.iter().find_map(|link| link.try_lock().ok()).ok_or_else(busy)?;
        // One bound for the whole write, however many connections it takes: a link made again after a
        // failed one, each bounded by its own timeouts, could otherwise add up to three times as much.
        let bound = self.config.response_timeout + self.wait.timeout;
        let sent = AtomicBool::new(false);
        tokio::time::timeout(bound, self.send_on(&mut slot, main, cmd, script, &sent)).await.map_err(|_| {
            let why = format!("within {bound:?} (--redis-timeout + --redis-wait-timeout)");
            match sent.load(Ordering::Relaxed) {
                true => StorageError::Uncertain(format!("Redis did not answer a write and its WAIT {why}")),
                false => StorageError::Unavailable(format!(
                    "no connection to Redis for a write that waits for replicas could be made {why}; nothing was run"
                )),
            }
        })?
    }

    /// [`WaitingLinks::send_waiting`] on the link in `slot`, made if there is none.
    async fn send_on(
        &self,
        slot: &mut Option<Link>,
        main: &Connection,
        cmd: &Cmd,
        script: &Lua,
        sent: &AtomicBool,
    ) -> StorageResult<(RedisValue, RedisValue)> {
        // Taken out while in use, and put back unless it failed: a request dropped half way (its
        // client gone) drops the link with it, whose WAIT may still be waiting.
        let connect = async || {
            self.connect(main).await.map_err(|e| {
                StorageError::Unavailable(format!(
                    "cannot connect to Redis for a write that waits for replicas: {e}"
                ))
            })
        };
        let (mut link, reused) = match slot.take() {
            Some(link) => (link, true),
            None => (connect().await?, false),
        };
        sent.store(true, Ordering::Relaxed);
        let mut result = link.write_and_wait(cmd, script, self.wait).await;
        let mut resent = false;
        // A link that sat idle may have been closed since (Redis restarted, its idle timeout): the
        // write is sent once more on a new one. A write call is applied once however often it is sent
        // (`scripts`): if the first did run, the second answers that it was repeated (uncertain).
        if reused && result.as_ref().is_err_and(|e| e.is_io_error() || e.is_connection_dropped()) {
            // The first may have run before its link failed: no new link is then uncertain, not
            // "nothing was run" (a client sends a 503 again, and the write would run twice).
            link = connect().await.map_err(|e| {
                StorageError::Uncertain(format!(
                    "{e} (after a link failed under the write, which may have run)"
                ))
            })?;
            result = link.write_and_wait(cmd, script, self.wait).await;
            resent = true;
        }
        if result.as_ref().err().is_none_or(keeps_link) {
            *slot = Some(link);
        }
        result.map_err(|e| match storage_error(e) {
            // Whatever the second attempt met (a refusal of a restarted Redis still loading its log,
            // which may hold the first; out of memory), the first may have run.
            uncertain @ StorageError::Uncertain(_) => uncertain,
            other if resent => StorageError::Uncertain(format!(
                "{other} (after a link failed under the write, which may have run)"
            )),
            other => other,
        })
    }

    async fn connect(&self, main: &Connection) -> Result<Link, RedisError> {
        // Room for the whole WAIT, and then for the round trip --redis-timeout bounds.
        let response_timeout = self.config.response_timeout + self.wait.timeout;
        match main {
            Connection::Cluster(_) => {
                let config = RedisConfig { response_timeout, ..self.config.clone() };
                connect_cluster(&config).await.map(Link::Cluster)
            }
            Connection::Single(single) => {
                let settings = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.config.connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let client = self.config.client(&single.url)?;
                client.get_multiplexed_async_connection_with_config(&settings).await.map(Link::Single)
            }
        }
    }
}

/// Whether a link whose write failed with `e` is used again: after an answer of Redis's (out of
/// memory, a script error), yes; not after a connection that broke or an answer that did not come
/// (its WAIT may still be waiting), nor after a redirect (MOVED, ASK) or a cluster that is not whole,
/// which the pipeline returns as replies, so that redis-rs neither follows them nor refreshes the
/// link's map of the slots: a new link learns the map afresh.
fn keeps_link(e: &RedisError) -> bool {
    !(e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN")))
}

impl Link {
    /// [`Link::send_waiting`] of `cmd`, sent as its script if Redis has not cached it.
    async fn write_and_wait(
        &mut self,
        cmd: &Cmd,
        script: &Lua,
        wait: WaitReplicas,
    ) -> Result<(RedisValue, RedisValue), RedisError> {
        match self.send_waiting(cmd, wait).await {
            Err(e) if is_noscript(&e) => self.send_waiting(&eval(cmd, script), wait).await,
            result => result,
        }
    }

    /// The write, then WAIT: one pipeline, so that the WAIT goes to the shard that ran the write, right
    /// after it. Each reply comes back on its own (an error of WAIT is not one of the write).
    async fn send_waiting(
        &mut self,
        cmd: &Cmd,
        wait: WaitReplicas,
    ) -> Result<(RedisValue, RedisValue), RedisError> {
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        pipeline.add_command(cmd.clone()).cmd("WAIT").arg(wait.replicas).arg(wait.timeout.as_millis() as u64);
        let replies: Vec<RedisValue> = match self {
            Link::Single(c) => pipeline.query_async(c).await,
            Link::Cluster(c) => pipeline.query_async(c).await,
        }?;
        let mut replies = replies.into_iter();
        match (replies.next(), replies.next()) {
            (Some(RedisValue::ServerError(e)), _) => Err(e.into()),
            (Some(reply), Some(waited)) => Ok((reply, waited)),
            _ => Err(RedisError::from((ErrorKind::Parse, "a short reply to a write and WAIT"))),
        }
    }
}

/// The same call as `EVAL <code> ...`.
fn eval(evalsha: &Cmd, script: &Lua) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(&script.code);
    for arg in evalsha.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            cmd.arg(bytes);
        }
    }
    cmd
}

/// `evalsha` to the node of `route`, sent as its script if that node has not cached it. A routed
/// command's error can come back as a reply: taken as the error it is.
async fn send_routed(
    cluster: &mut ClusterConnection,
    evalsha: &Cmd,
    script: &Lua,
    route: Route,
) -> RedisResult<RedisValue> {
    let routing = || RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
    let errors = |sent: RedisResult<RedisValue>| match sent {
        Ok(RedisValue::ServerError(e)) => Err(RedisError::from(e)),
        sent => sent,
    };
    match errors(cluster.route_command(evalsha.clone(), routing()).await) {
        Err(e) if is_noscript(&e) => errors(cluster.route_command(eval(evalsha, script), routing()).await),
        sent => sent,
    }
}

/// A publish's error, sorted: refused as a script touching another node's channel (its slot's master
/// failing over, the map not yet put right) it was not run, since the script's one call is the
/// SPUBLISH that was refused. (Any other script's refusal so may come after writes it made: only the
/// publish's means nothing ran.)
fn publish_error(e: RedisError) -> StorageError {
    match is_not_local(&e) {
        true => StorageError::Unavailable(format!(
            "Redis did not take the publish (its channel's slot is failing over or moving): {e}"
        )),
        false => storage_error(e),
    }
}

/// A script naming no key sent to a node that does not serve the slot of what it touches.
fn is_not_local(e: &RedisError) -> bool {
    e.to_string().contains("non local key")
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) || e.code() == Some("NOSCRIPT")
}

/// Redis did not run the command, and says why: it cannot now (loading, a failover, a script
/// running too long: BUSY), or the command is another node's.
fn is_refusal(e: &RedisError) -> bool {
    e.is_connection_refusal()
        // BUSY: a script runs; NOREPLICAS (min-replicas-to-write) and MISCONF (a failed RDB save with
        // stop-writes-on-bgsave-error): refused at a command's, or a script's first, write.
        || matches!(e.code(), Some("BUSY" | "NOREPLICAS" | "MISCONF"))
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

/// Redis refused the credentials the gateway connects with (or asks for some it was not given).
pub(super) fn is_credentials_refusal(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// Redis's ACL refused the gateway's user a command: one it sent (`NOPERM`), or one a script ran
/// (an error without a code of its own, in Redis 7).
fn is_permission_refusal(e: &RedisError) -> bool {
    e.code() == Some("NOPERM") || e.to_string().contains("can't run this command")
}

/// `result`, counted in `qkv_backend_requests_total` by its outcome.
pub(super) fn counted<T>(result: StorageResult<T>) -> StorageResult<T> {
    use crate::metrics::BackendResult;
    let outcome = match &result {
        Ok(_) => BackendResult::Ok,
        Err(StorageError::Unavailable(_)) => BackendResult::Unavailable,
        Err(StorageError::Uncertain(_)) => BackendResult::Uncertain,
        Err(StorageError::OutOfMemory(_)) => BackendResult::OutOfMemory,
        Err(_) => BackendResult::Error,
    };
    crate::metrics::backend_request("redis", outcome);
    result
}

/// Sorts a Redis error by what it means for the request: refused before anything was done (retry),
/// out of memory, or unknown outcome.
pub(super) fn storage_error(e: RedisError) -> StorageError {
    if e.code() == Some("OOM") {
        return StorageError::OutOfMemory(format!("Redis is out of memory: {e}"));
    }
    if is_refusal(&e) {
        return StorageError::Unavailable(format!("Redis did not take the command: {e}"));
    }
    // Connecting again, the gateway was refused: nothing was run.
    if is_credentials_refusal(&e) {
        return StorageError::Unavailable(format!("Redis refused the gateway's credentials: {e}"));
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return StorageError::Uncertain(format!("Redis did not answer: {e}"));
    }
    if is_permission_refusal(&e) {
        return StorageError::Backend(format!(
            "Redis refused the gateway's user a command it needs (grant the commands docs/DEPLOY.md lists): {e}"
        ));
    }
    StorageError::Backend(format!("Redis: {e}"))
}

/// Makes the first connection in the background, retrying until it succeeds; redis-rs makes it again
/// whenever it breaks after that.
pub(super) struct Connector {
    connection: OnceLock<Connection>,
    /// Why there is no connection yet.
    failure: Mutex<String>,
    connected: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    seeds: String,
}

/// Waits between attempts to connect: from the first to the last, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LAST: Duration = Duration::from_secs(2);

impl Connector {
    /// Starts connecting; what a plain Redis pushes (published messages, subscription confirmations,
    /// a lost connection) goes to `pushes`. A cluster's subscriptions are not made on this
    /// connection but on the relay's own links (`shards.rs`).
    pub(super) fn start(config: RedisConfig, pushes: Pushes) -> Arc<Self> {
        let connector = Arc::new(Connector {
            connection: OnceLock::new(),
            failure: Mutex::new("connecting".into()),
            connected: watch::Sender::new(false),
            task: Mutex::new(None),
            seeds: config.seeds(),
        });
        let task = tokio::spawn(connect_until_connected(Arc::downgrade(&connector), config, pushes));
        *connector.task.lock() = Some(task);
        connector
    }

    /// The connection, for a round trip to Redis. Before the first connection is made, the round trip
    /// fails here, and is counted in `qkv_backend_requests_total` as `unavailable` like one Redis
    /// refused: so a gateway that never reached Redis (wrong seeds, the cluster down at start) shows
    /// its failures there, and the alerts on that metric see them.
    pub(super) fn connection(&self) -> StorageResult<Connection> {
        match self.connection.get() {
            Some(connection) => Ok(connection.clone()),
            None => counted(Err(StorageError::Unavailable(
                self.unavailable().unwrap_or_else(|| "not connected to Redis".into()),
            ))),
        }
    }

    /// The connection once made, without counting anything: for the relay's own upkeep (its
    /// heartbeat), which is not a round trip asked for by anyone.
    pub(super) fn established(&self) -> Option<Connection> {
        self.connection.get().cloned()
    }

    pub(super) fn unavailable(&self) -> Option<String> {
        match self.connection.get() {
            Some(_) => None,
            None => Some(format!("cannot reach Redis at {}: {}; retrying", self.seeds, self.failure.lock())),
        }
    }

    /// Whether the connection is made, to a cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.connection.get(), Some(Connection::Cluster(_)))
    }

    pub(super) async fn connected(&self) {
        let mut connected = self.connected.subscribe();
        // The sender lives as long as `self`.
        let _ = connected.wait_for(|c| *c).await;
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

async fn connect_until_connected(connector: Weak<Connector>, config: RedisConfig, pushes: Pushes) {
    let mut pause = RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        let result = connect(&config, &pushes).await;
        let Some(connector) = connector.upgrade() else { return };
        match result {
            Ok(connection) => {
                let kind = if matches!(connection, Connection::Cluster(_)) { "cluster" } else { "single" };
                tracing::info!(seeds = %connector.seeds, kind, "connected to Redis");
                let _ = connector.connection.set(connection);
                connector.connected.send_replace(true);
                return;
            }
            Err(e) => {
                // Every failure for the first few, then one in ten: clear at start, quiet while waiting.
                if attempts < 3 || attempts.is_multiple_of(10) {
                    tracing::warn!(seeds = %connector.seeds, error = %e, "cannot reach Redis; answering 503 until it can be reached");
                }
                *connector.failure.lock() = e.to_string();
            }
        }
        drop(connector);
        attempts += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_LAST);
    }
}

/// Connects to the cluster the seeds belong to, or to the first seed that answers if it is a plain
/// Redis.
async fn connect(config: &RedisConfig, pushes: &Pushes) -> Result<Connection, RedisError> {
    let mut last_error = None;
    for url in &config.urls {
        match probe(config, url).await {
            Ok(true) => return connect_cluster(config).await.map(Connection::Cluster),
            Ok(false) => {
                let manager = connect_single(config, url, pushes).await?;
                return Ok(Connection::Single(Arc::new(SingleRedis {
                    current: Mutex::new(Managed { manager, generation: 0 }),
                    replacing: Mutex::new(Replacing::default()),
                    config: config.clone(),
                    url: url.clone(),
                    pushes: pushes.clone(),
                })));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error
        .unwrap_or_else(|| RedisError::from((ErrorKind::InvalidClientConfig, "no Redis URL given"))))
}

/// Whether the seed is a member of a cluster.
async fn probe(config: &RedisConfig, url: &str) -> Result<bool, RedisError> {
    let client = config.client(url)?;
    let mut connection =
        tokio::time::timeout(config.connect_timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| RedisError::from((ErrorKind::Io, "connecting timed out")))??;
    let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut connection).await?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

async fn connect_single(
    config: &RedisConfig,
    url: &str,
    pushes: &Pushes,
) -> Result<ConnectionManager, RedisError> {
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        // Reconnecting is tried again at the next command, and by the relay's heartbeat until Redis
        // answers (`relay.rs`): one attempt each, so a command fails within about --redis-timeout
        // while Redis is away, rather than waiting through a backoff.
        .set_number_of_retries(1)
        .set_max_delay(RETRY_FIRST)
        .set_push_sender(pushes.sender(None))
        .set_automatic_resubscription();
    config.client(url)?.get_connection_manager_with_config(manager).await
}

/// Without a push sender: redis-rs then keeps no subscriptions, and never makes one again by itself
/// (see `shards.rs`).
async fn connect_cluster(config: &RedisConfig) -> Result<ClusterConnection, RedisError> {
    let seeds = config.urls.iter().map(|url| config.connection_info(url)).collect::<Result<Vec<_>, _>>()?;
    let mut builder = ClusterClientBuilder::new(seeds)
        .tcp_settings(tcp_settings())
        .use_protocol(ProtocolVersion::RESP3)
        .retries(config.retries)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.response_timeout);
    if let Some(certificates) = config.certificates() {
        builder = builder.certs(certificates);
    }
    builder.build()?.get_async_connection().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish's script refused by a node that no longer serves its channel's slot (its master
    /// failing over) was not run: 503, which a client sends again, not a 500 whose outcome is unknown.
    /// Another script refused so may have written before (a key emptied, then touched again, in a
    /// slot being moved): its outcome stays unknown.
    #[test]
    fn only_a_publish_refused_for_another_nodes_channel_was_certainly_not_run() {
        let reply = b"-ERR Script attempted to access a non local key in a cluster node script: 658469cf, on @user_script:2.\r\n";
        let refusal = || match redis::parse_redis_value(reply) {
            Ok(RedisValue::ServerError(refusal)) => RedisError::from(refusal),
            other => panic!("not parsed as a server error: {other:?}"),
        };
        let publish = publish_error(refusal());
        assert!(matches!(publish, StorageError::Unavailable(_)), "{publish:?}");
        let write = storage_error(refusal());
        assert!(!matches!(write, StorageError::Unavailable(_)), "{write:?}");
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(redacted_url("redis://user:secret@10.0.0.1:6379"), "redis://10.0.0.1:6379");
        assert_eq!(redacted_url("rediss://:p@ss@host:7000/0"), "rediss://host:7000/0");
        assert_eq!(redacted_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redacted_url("redis//u:hunter2@host"), "…@host");
    }

    #[test]
    fn a_url_without_its_password_keeps_its_user() {
        assert_eq!(url_without_password("redis://user:secret@10.0.0.1:6379"), "redis://user@10.0.0.1:6379");
        assert_eq!(url_without_password("rediss://user:p@ss@host:7000/0"), "rediss://user@host:7000/0");
        assert_eq!(url_without_password("rediss://:secret@host:7000"), "rediss://host:7000");
        assert_eq!(url_without_password("redis://user@host"), "redis://user@host");
        assert_eq!(url_without_password("redis://host:6379"), "redis://host:6379");
        assert_eq!(url_without_password("redis//u:hunter2@host"), "…@host");
        assert_eq!(url_without_password("re@dis://host"), redacted_url("re@dis://host"));
        let config = RedisConfig {
            urls: vec!["redis://u:hunter2@h:1".into()],
            password: Some("hunter3".into()),
            ..RedisConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter"), "{shown}");
    }
}
