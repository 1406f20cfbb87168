//! The Redis backend: tables kept in Redis Cluster (or, for development, one plain Redis), so that
//! several qkv servers can serve the same data as stateless gateways (docs/DESIGN.md, "Redis Cluster";
//! docs/DEPLOY.md).
//!
//! Each table lives in five Redis keys that share the table's hash tag, and so one slot and one shard
//! ([`TableKeys`]); each write is one Lua script ([`scripts`]), atomic on that shard. The connection
//! is made in the background and made again by redis-rs when it breaks: until it is up, every
//! operation fails at once with [`StorageError::Unavailable`] and the reason, so that the server can
//! start (and answer 503) while Redis is away, and serve as soon as it is back.

mod connection;
mod keyed_locks;
mod relay;
mod scripts;
mod shards;

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redis::{Cmd, Value as RedisValue};

use connection::{Connector, WaitingLinks};
pub use connection::{RedisConfig, redacted_url, url_without_password};

/// The longest a write may take, its wait for replicas included (`--redis-timeout` plus
/// `--redis-wait-timeout`): half the time a write call is remembered for (`scripts::REMEMBERED_MS`, 10 s),
/// so that a repeat redis-rs sends while the call lasts is always recognised and never applied twice.
pub const MAX_WRITE_TIME: std::time::Duration = std::time::Duration::from_millis(scripts::REMEMBERED_MS / 2);
use scripts::Lua;

use super::{PageLimit, ScanPage, Storage, StorageError, StorageResult, TableScan, Versioned, WriteOutcome};
use crate::pb::Value;

/// How many keys one script call handles at most: a multi-key command of more keys is split into
/// calls of this many, so that no script holds its shard for long (Redis runs one script at a time).
const KEYS_PER_CALL: usize = 1_000;

/// A store in Redis or Redis Cluster. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    connector: Arc<Connector>,
    relay: Arc<relay::RedisRelay>,
    prefix: Arc<str>,
    /// With `--redis-wait`: the connections writes wait for their replicas on.
    wait: Option<Arc<WaitingLinks>>,
}

/// `WAIT numreplicas timeout` after every write: the write is acknowledged only once that many
/// replicas have it.
#[derive(Debug, Clone, Copy)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The Redis keys of one table: its base name, `prefix{tag}`, and one of [`TableKeys::PARTS`] after it.
/// The hash tag (between the braces) is the table's name with `%`, `{` and `}` escaped, after a `t` (so
/// that it is never empty, which would hash the whole key): any UTF-8 table name maps to its own keys,
/// all in one slot.
struct TableKeys {
    base: String,
}

impl TableKeys {
    /// The keys every script gets, in this order (see `scripts`).
    const PARTS: [&'static str; 4] = [":values", ":versions", ":names", ":counter"];

    /// The key writing scripts get after [`TableKeys::PARTS`]: the table's recent write calls (see
    /// `scripts`).
    const CALLS: &'static str = ":calls";

    fn new(prefix: &str, table: &str) -> Self {
        let mut base = String::with_capacity(prefix.len() + table.len() + 3);
        base.push_str(prefix);
        base.push_str("{t");
        for c in table.chars() {
            match c {
                '%' => base.push_str("%25"),
                '{' => base.push_str("%7B"),
                '}' => base.push_str("%7D"),
                c => base.push(c),
            }
        }
        base.push('}');
        TableKeys { base }
    }

    /// The key of one of [`TableKeys::PARTS`].
    fn key(&self, part: &str) -> String {
        format!("{}{part}", self.base)
    }

    /// All five keys: those every script gets, in script order, then the calls'.
    #[cfg(test)]
    fn all(&self) -> Vec<String> {
        Self::PARTS.iter().chain([&Self::CALLS]).map(|part| self.key(part)).collect()
    }

    /// A call of a reading `script` on this table, to which the caller adds the arguments.
    fn call(&self, script: &'static Lua) -> Call {
        self.calling(script, false)
    }

    /// A call of a writing `script`: the table's keys, then [`TableKeys::CALLS`], and an id of the
    /// call's own as its first argument, which marks the call as run (see `scripts`).
    fn write_call(&self, script: &'static Lua) -> Call {
        let mut call = self.calling(script, true);
        call.arg(format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()));
        call
    }

    /// `EVALSHA <hash> <number of keys> <keys>`, each key written straight into the command.
    fn calling(&self, script: &'static Lua, writes: bool) -> Call {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.hash).arg(Self::PARTS.len() + usize::from(writes));
        let mut key = Vec::with_capacity(self.base.len() + 16);
        for part in Self::PARTS.iter().copied().chain(writes.then_some(Self::CALLS)) {
            key.clear();
            key.extend_from_slice(self.base.as_bytes());
            key.extend_from_slice(part.as_bytes());
            cmd.arg(key.as_slice());
        }
        Call { cmd, script }
    }
}

/// A script call being built.
struct Call {
    cmd: Cmd,
    script: &'static Lua,
}

impl Call {
    fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }
}

impl RedisStore {
    /// Starts connecting to the Redis (Cluster) that `config` names, in the background, and returns at
    /// once; see [`RedisStore::connected`]. Needs a tokio runtime.
    pub fn start(config: RedisConfig) -> Self {
        let prefix = Arc::from(config.prefix.as_str());
        let wait = WaitingLinks::new(&config).map(Arc::new);
        let (pushes, relay) = relay::RedisRelay::new(&config);
        let connector = Connector::start(config, pushes);
        let relay = Arc::new(relay(connector.clone()));
        RedisStore { connector, relay, prefix, wait }
    }

    /// Waits until the first connection is made (there is no deadline: wrap it in one).
    pub async fn connected(&self) {
        self.connector.connected().await
    }

    fn keys(&self, table: &str) -> TableKeys {
        TableKeys::new(&self.prefix, table)
    }

    /// Runs a script that reads.
    async fn read(&self, call: Call) -> StorageResult<RedisValue> {
        let mut connection = self.connector.connection()?;
        connection.invoke(call.cmd, call.script, None).await
    }

    /// Runs a script that writes, then waits for replicas if so configured.
    async fn write(&self, call: Call) -> StorageResult<RedisValue> {
        let mut connection = self.connector.connection()?;
        let reply = connection.invoke(call.cmd, call.script, self.wait.as_deref()).await?;
        match &reply {
            RedisValue::Array(items) if matches!(items[..], [RedisValue::Int(scripts::REPEATED)]) => {
                Err(StorageError::Uncertain(
                    "Redis ran the write, then the connection broke before its answer came; it was sent again and not applied twice, but its answer is lost: read the key".into(),
                ))
            }
            _ => Ok(reply),
        }
    }
}

/// The error of a multi-key write that failed after `done` of its `total` keys were written (in calls
/// of [`KEYS_PER_CALL`]): whatever it was, the write as a whole was partly applied.
fn partly(e: StorageError, done: usize, total: usize) -> StorageError {
    if done == 0 {
        return e;
    }
    StorageError::Uncertain(format!("the first {done} of the {total} keys were written, then: {e}"))
}

/// One entry of a script's reply, as the scripts return it.
fn bytes(value: RedisValue) -> StorageResult<Option<Vec<u8>>> {
    match value {
        RedisValue::Nil | RedisValue::Boolean(false) => Ok(None),
        RedisValue::BulkString(bytes) => Ok(Some(bytes)),
        RedisValue::SimpleString(s) => Ok(Some(s.into_bytes())),
        other => Err(unexpected(&other)),
    }
}

fn version(value: RedisValue) -> StorageResult<u64> {
    match value {
        RedisValue::Int(n) => u64::try_from(n).map_err(|_| unexpected(&RedisValue::Int(n))),
        RedisValue::Nil => Ok(0),
        RedisValue::BulkString(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StorageError::Backend(format!("a stored version is not a number: {bytes:?}"))),
        other => Err(unexpected(&other)),
    }
}

fn decode_value(bytes: &[u8]) -> StorageResult<Value> {
    Value::decode(bytes).map_err(|e| StorageError::Backend(format!("a stored value is not a qkv value: {e}")))
}

/// A value and its version, as scripts return them (value nil when the key is absent).
fn versioned(value: RedisValue, version_value: RedisValue) -> StorageResult<Option<Versioned>> {
    let version = version(version_value)?;
    match bytes(value)? {
        Some(bytes) if version > 0 => Ok(Some(Versioned { value: decode_value(&bytes)?, version })),
        _ => Ok(None),
    }
}

fn unexpected(value: &RedisValue) -> StorageError {
    StorageError::Backend(format!("unexpected reply from Redis: {value:?}"))
}

fn array(value: RedisValue) -> StorageResult<std::vec::IntoIter<RedisValue>> {
    match value {
        RedisValue::Array(items) => Ok(items.into_iter()),
        other => Err(unexpected(&other)),
    }
}

/// The next `N` items of a script's reply.
fn take<const N: usize>(items: &mut impl Iterator<Item = RedisValue>) -> StorageResult<[RedisValue; N]> {
    let mut out = [const { RedisValue::Nil }; N];
    for slot in &mut out {
        *slot = items.next().ok_or_else(|| StorageError::Backend("short reply from Redis".into()))?;
    }
    Ok(out)
}

/// The outcome of a conditional write, from `{written, version, value, [new version]}`.
fn write_outcome(reply: RedisValue) -> StorageResult<WriteOutcome> {
    let mut items = array(reply)?;
    let [written, current_version, current_value] = take(&mut items)?;
    let current = versioned(current_value, current_version)?;
    if version(written)? == 0 {
        return Ok(WriteOutcome::Conflict { current });
    }
    let version = match items.next() {
        Some(new_version) => version(new_version)?,
        None => 0,
    };
    Ok(WriteOutcome::Written { previous: current, version })
}

impl Storage for RedisStore {
    type Scan = RedisScan;

    async fn get(&self, table: &str, key: &str) -> StorageResult<Option<Versioned>> {
        Ok(self.get_many(table, &[key.to_owned()]).await?.pop().flatten())
    }

    async fn get_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<Option<Versioned>>> {
        let table_keys = self.keys(table);
        let mut answers = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_CALL) {
            let mut call = table_keys.call(&scripts::GET_MANY);
            call.arg(chunk);
            let mut items = array(self.read(call).await?)?;
            for _ in chunk {
                let [value, version] = take(&mut items)?;
                answers.push(versioned(value, version)?);
            }
        }
        Ok(answers)
    }

    async fn versions(&self, table: &str, keys: &[String]) -> StorageResult<Vec<u64>> {
        let table_keys = self.keys(table);
        let mut answers = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_CALL) {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(table_keys.key(":versions")).arg(chunk);
            let mut connection = self.connector.connection()?;
            for item in array(connection.query(&hmget).await?)? {
                answers.push(version(item)?);
            }
        }
        Ok(answers)
    }

    async fn set(
        &self,
        table: &str,
        key: &str,
        value: Value,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        let keys = self.keys(table);
        let mut call = keys.write_call(&scripts::SET);
        call.arg(key)
            .arg(value.encode_to_vec())
            .arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
        write_outcome(self.write(call).await?)
    }

    async fn set_many(&self, table: &str, pairs: Vec<(String, Value)>) -> StorageResult<Vec<WriteOutcome>> {
        let keys = self.keys(table);
        let mut outcomes = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(KEYS_PER_CALL) {
            let mut call = keys.write_call(&scripts::SET_MANY);
            for (key, value) in chunk {
                call.arg(key).arg(value.encode_to_vec());
            }
            let reply = self.write(call).await.map_err(|e| partly(e, outcomes.len(), pairs.len()))?;
            let mut items = array(reply)?;
            for _ in chunk {
                let [previous_value, previous_version, new_version] = take(&mut items)?;
                let previous = versioned(previous_value, previous_version)?;
                outcomes.push(WriteOutcome::Written { previous, version: version(new_version)? });
            }
        }
        Ok(outcomes)
    }

    async fn delete(
        &self,
        table: &str,
        key: &str,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        let keys = self.keys(table);
        let mut call = keys.write_call(&scripts::DELETE);
        call.arg(key).arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
        write_outcome(self.write(call).await?)
    }

    async fn delete_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<WriteOutcome>> {
        let table_keys = self.keys(table);
        let mut outcomes = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_CALL) {
            let mut call = table_keys.write_call(&scripts::DELETE_MANY);
            call.arg(chunk);
            let reply = self.write(call).await.map_err(|e| partly(e, outcomes.len(), keys.len()))?;
            let mut items = array(reply)?;
            for _ in chunk {
                let [value, version] = take(&mut items)?;
                outcomes.push(WriteOutcome::Written { previous: versioned(value, version)?, version: 0 });
            }
        }
        Ok(outcomes)
    }

    fn relay(&self) -> Option<Arc<dyn crate::pubsub::Relay>> {
        Some(self.relay.clone())
    }

    /// Redis answers a PING (on a cluster, the node redis-rs picks) within `--redis-timeout`.
    async fn health(&self) -> Result<(), String> {
        let mut connection = self.connector.connection().map_err(StorageError::cause)?;
        connection.query(&redis::cmd("PING")).await.map(drop).map_err(StorageError::cause)
    }

    async fn scan(&self, table: &str, after: Option<&str>) -> StorageResult<RedisScan> {
        // Fail now, not at the first page, when Redis is away.
        self.connector.connection()?;
        let after = after.map(str::to_owned);
        Ok(RedisScan { store: self.clone(), keys: self.keys(table), after, done: false })
    }
}

/// A scan of one table, page by page in key order: each page starts after the last key of the one
/// before, so a key present for the whole scan is returned exactly once, however the table changes.
pub struct RedisScan {
    store: RedisStore,
    keys: TableKeys,
    after: Option<String>,
    done: bool,
}

impl TableScan for RedisScan {
    async fn next_page(&mut self, limit: PageLimit) -> StorageResult<ScanPage> {
        if self.done {
            return Ok(ScanPage { entries: Vec::new(), done: true });
        }
        let mut call = self.keys.call(&scripts::SCAN_PAGE);
        match &self.after {
            Some(after) => call.arg("1").arg(after),
            None => call.arg("0").arg(""),
        };
        call.arg(limit.entries).arg(limit.bytes);
        let mut items = array(self.store.read(call).await?)?;
        let [done, last_read] = take(&mut items)?;
        let done = version(done)? == 1;
        // From the last name read, not the last entry returned: a name whose value was missing (a key
        // written by another program, say) is passed over, not read again forever.
        if let Some(last_read) = bytes(last_read)? {
            self.after = Some(
                String::from_utf8(last_read)
                    .map_err(|e| StorageError::Backend(format!("a stored key name is not UTF-8: {e}")))?,
            );
        }
        let mut entries = Vec::with_capacity(items.len() / 3);
        while items.len() >= 3 {
            let [key, value, version] = take(&mut items)?;
            let key = bytes(key)?.ok_or_else(|| unexpected(&RedisValue::Nil))?;
            let key = String::from_utf8(key)
                .map_err(|e| StorageError::Backend(format!("a stored key name is not UTF-8: {e}")))?;
            if let Some(versioned) = versioned(value, version)? {
                entries.push((key, versioned));
            }
        }
        self.done = done;
        Ok(ScanPage { entries, done })
    }
}

#[cfg(test)]
mod tests;
