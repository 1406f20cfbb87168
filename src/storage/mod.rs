//! Storage: where tables of versioned values live. Knows nothing of networks or the wire format's framing.
//!
//! [`Storage`] is async so that backends that do I/O fit behind it without blocking the runtime: the
//! in-memory backend ([`MemoryStore`]) answers immediately; the durable one ([`DiskStore`]) serves from
//! memory too and acknowledges writes once a group commit has made them durable in its log. Every backend runs the
//! same conformance suite (`suite.rs`), so the semantics below are checked, not just described.
//!
//! Semantics every backend provides:
//! - Tables and keys are arbitrary UTF-8 strings, the empty string included. A table exists while it
//!   holds at least one key.
//! - Each write gives the key a new version, greater than every version the key had before, including
//!   versions it had before being deleted and re-created (so an old version can never match by accident).
//!   Version 0 means "absent".
//! - Single-key operations are atomic. Multi-key operations (`set_many`, `delete_many`, `get_many`) are
//!   a sequence of single-key operations, not a transaction.
//! - Scans are weakly consistent: a key present for the whole scan is returned exactly once; a key
//!   written or deleted during the scan may or may not be. Order is unspecified.

pub(crate) mod disk;
mod memory;
mod redis;
#[cfg(test)]
pub(crate) mod suite;

use std::future::Future;

pub use disk::{Deferred, Ticket, deferring, when_settled};
pub use disk::{
    DiskConfig, DiskScan, DiskStore, Durability, Repaired, RetainedMemory, RuntimeIdle, StoreClosed,
};
pub use memory::{Journal, MemoryScan, MemoryStore, MemoryUsage, Versions, default_memory_budget};
pub use redis::{
    MAX_WRITE_TIME as MAX_REDIS_WRITE_TIME, RedisConfig, RedisScan, RedisStore, redacted_url,
    url_without_password,
};

use crate::pb::Value;
pub use crate::pb::Versioned;

/// Where a store's version counter starts, at the least: the current time in microseconds. Versions
/// then keep growing across restarts even without a stored counter (as long as the clock does not go
/// back and the store averages under a million writes a second), and stay below 2^53, exact in every
/// language's numbers.
fn first_version_floor() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The most keys a multi-key write may have to be applied whole on its first poll (see
/// [`Storage::APPLIES_WRITES_IN_ISSUE_ORDER`]); larger ones are applied in batches of this many, with
/// other requests served between them.
pub const ORDERED_WRITE_KEYS: usize = memory::BATCH;

/// A key and its versioned value, as scans return them.
pub type Entry = (String, Versioned);

/// The outcome of a (possibly conditional) write of one key.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// The write happened. `previous` is what it replaced; `version` is the key's version now
    /// (0 after a delete).
    Written { previous: Option<Versioned>, version: u64 },
    /// The expected version did not match `current`; nothing was written.
    Conflict { current: Option<Versioned> },
}

/// How much one scan page may hold; a page stops at whichever limit it reaches first, and always holds
/// at least one entry when any remain.
#[derive(Debug, Clone, Copy)]
pub struct PageLimit {
    pub entries: usize,
    /// Approximate: the sum of key and encoded value lengths.
    pub bytes: usize,
}

/// One page of a scan.
#[derive(Debug, Default)]
pub struct ScanPage {
    pub entries: Vec<Entry>,
    /// True when this is the last page: the scan has nothing more to return.
    pub done: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend failed; the message says how. Whether the operation took effect is unknown.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The write would take the store over its memory budget; nothing was written.
    #[error(
        "the store is full: this write needs {needed} bytes and {used} of the {budget}-byte memory budget are in use; delete data or raise the budget (--memory-budget)"
    )]
    Full { needed: usize, used: usize, budget: usize },
    /// A backend outside this process (Redis) is out of memory; nothing was written.
    #[error("{0}; delete data or give the backend more memory")]
    OutOfMemory(String),
    /// The backend cannot be reached or refused the operation before doing anything (it is starting,
    /// failing over, or moving the data): nothing was done, and it can be retried.
    #[error("the storage backend is unavailable: {0}")]
    Unavailable(String),
    /// The operation was sent to the backend, whose answer did not come (a lost connection, a
    /// failover, a timeout, replicas that did not confirm): it may or may not have taken effect.
    #[error(
        "the storage backend did not confirm the operation ({0}): a write may or may not have taken effect; a read can be sent again"
    )]
    Uncertain(String),
}

impl StorageError {
    /// What went wrong, without what the error means for a write (whether it took effect): for what
    /// writes nothing, a health check or a subscription.
    pub fn cause(self) -> String {
        match self {
            StorageError::Unavailable(why) | StorageError::Uncertain(why) | StorageError::Backend(why) => why,
            other => other.to_string(),
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A backend for tables of versioned values. Cheap operations are expected to be fast; nothing here
/// may block the calling thread for long (backends that do I/O must offload it).
pub trait Storage: Send + Sync + 'static {
    /// An in-progress scan of one table; see [`Storage::scan`].
    type Scan: TableScan;

    /// True when writes issued one after another (each future polled once, in turn) are applied in
    /// that order even if the earlier ones have not completed, for writes of at most
    /// [`ORDERED_WRITE_KEYS`] keys (larger ones may yield between batches). A pipelined connection may
    /// then issue such a write before the one before it is done, so that consecutive writes share a
    /// (group) commit instead of waiting for each other's.
    const APPLIES_WRITES_IN_ISSUE_ORDER: bool = false;

    /// The key's value and version, or `None` when absent.
    fn get(&self, table: &str, key: &str) -> impl Future<Output = StorageResult<Option<Versioned>>> + Send;

    /// One answer per key, in the order given.
    fn get_many(
        &self,
        table: &str,
        keys: &[String],
    ) -> impl Future<Output = StorageResult<Vec<Option<Versioned>>>> + Send;

    /// Each key's current version (0 when absent), in the order given; cheaper than `get_many`
    /// because values are not copied.
    fn versions(&self, table: &str, keys: &[String]) -> impl Future<Output = StorageResult<Vec<u64>>> + Send;

    /// Sets the key to `value`. With `expected_version`, writes only if the key's current version equals
    /// it (0: only if the key is absent), and otherwise reports the conflict, even when the store is
    /// full: the version is compared before the room is looked for.
    fn set(
        &self,
        table: &str,
        key: &str,
        value: Value,
        expected_version: Option<u64>,
    ) -> impl Future<Output = StorageResult<WriteOutcome>> + Send;

    /// Sets each pair unconditionally, in order; one outcome per pair.
    fn set_many(
        &self,
        table: &str,
        pairs: Vec<(String, Value)>,
    ) -> impl Future<Output = StorageResult<Vec<WriteOutcome>>> + Send;

    /// Deletes the key. With `expected_version`, deletes only if the key's current version equals it.
    /// Deleting an absent key (unconditionally) is a successful write with `previous: None`.
    fn delete(
        &self,
        table: &str,
        key: &str,
        expected_version: Option<u64>,
    ) -> impl Future<Output = StorageResult<WriteOutcome>> + Send;

    /// Deletes each key unconditionally, in order; one outcome per key.
    fn delete_many(
        &self,
        table: &str,
        keys: &[String],
    ) -> impl Future<Output = StorageResult<Vec<WriteOutcome>>> + Send;

    /// Starts a scan of the table's entries in key order (by the keys' UTF-8 bytes), from the first
    /// key after `after` if given, read page by page so that a huge table is never copied whole.
    /// Scanning a table that does not exist yields one empty, final page.
    fn scan(
        &self,
        table: &str,
        after: Option<&str>,
    ) -> impl Future<Output = StorageResult<Self::Scan>> + Send;

    /// What carries published messages to the other servers sharing this store, if any: a store of
    /// this server alone has none, and its subscribers are all there are.
    fn relay(&self) -> Option<std::sync::Arc<dyn crate::pubsub::Relay>> {
        None
    }

    /// Whether the backend answers now (for `/readyz`): `Err` says why not. A backend of this process
    /// alone always does.
    fn health(&self) -> impl Future<Output = Result<(), String>> + Send {
        std::future::ready(Ok(()))
    }

    /// A failure that only a restart of the process mends (for `/healthz`, and the exit status): what
    /// failed, or `None`. The disk store's log, once a write to it has failed.
    fn broken(&self) -> Option<String> {
        None
    }

    /// What the backend holds, as far as it knows cheaply (for the metrics).
    fn usage(&self) -> StorageUsage {
        StorageUsage::default()
    }
}

/// What a backend holds; `None` for what it does not count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageUsage {
    pub keys: Option<u64>,
    pub memory: Option<MemoryUsage>,
}

/// A scan in progress. Owns what it needs, so it can outlive the request that started it.
pub trait TableScan: Send + 'static {
    /// The next page. After a page with `done`, further calls return empty final pages.
    fn next_page(&mut self, limit: PageLimit) -> impl Future<Output = StorageResult<ScanPage>> + Send;
}
