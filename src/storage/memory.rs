//! The in-memory backend: a concurrent map of tables, each a concurrent map of keys.
//!
//! Both levels are `scc::HashMap`s, chosen by measurement against dashmap, papaya and lock-guarded std
//! maps (`benches/map_choice.rs`, docs/DESIGN.md): on two threads it was the fastest at reads mixed with
//! writes and at atomic read-modify-write. Per-key atomicity comes from scc's bucket locks: a key's
//! version is assigned while its bucket is held, so versions of one key always increase.
//!
//! A table that becomes empty is unlinked so that abandoned tables do not accumulate. The hazard is a
//! writer that looked the table up just before it was unlinked and then inserts into the orphan, losing
//! the write. `Table::unlinked` closes that gap: writers hold it shared while they write and re-fetch the
//! table if it is set; unlinking holds it exclusively, so it only ever unlinks a table no writer is in.
//!
//! Every change is also told to the store's [`Journal`] while the key's bucket is held: the plain store's
//! journal only counts versions; the durable store's ([`super::DiskStore`]) appends the change to its
//! log, so that a key's changes reach the log in the order they were made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use prost::Message;
use scc::hash_map::{Entry as MapEntry, OccupiedEntry};

use super::{
    PageLimit, ScanPage, Storage, StorageError, StorageResult, StorageUsage, TableScan, Versioned,
    WriteOutcome,
};
use bytes::Bytes;

use crate::pb::{Value, value};

/// Keys handled between two yields to the runtime in multi-key operations, so that one request with a
/// million keys cannot hold the (single) runtime thread for long.
pub(crate) const BATCH: usize = 1024;

/// Tables with more keys than this are snapshotted for a scan on a blocking thread.
const INLINE_SNAPSHOT_KEYS: usize = 4096;

/// Bytes an entry costs beyond its key and encoded value: the map slot, the key's `Arc` header, the
/// version and the value's enum. Measured, with `TABLE_OVERHEAD`, by `memory_accounting_tracks_the_heap`.
const ENTRY_OVERHEAD: usize = 160;

/// Bytes a table costs beyond its name: its maps and their first buckets.
const TABLE_OVERHEAD: usize = 4608;

/// Where a store's changes go, besides its maps. Both methods are called while the key's bucket lock is
/// held, after the change is decided and before it is made visible, so they must be quick (no I/O).
pub trait Journal: Send + Sync + 'static {
    /// Records that `key` of `table` is set to `value`, and returns its new version: greater than every
    /// version handed out before.
    fn set(&self, table: &str, key: &str, value: &Value) -> u64;
    /// Records that `key` of `table` is deleted.
    fn delete(&self, table: &str, key: &str);
}

impl<J: Journal> Journal for Arc<J> {
    fn set(&self, table: &str, key: &str, value: &Value) -> u64 {
        (**self).set(table, key, value)
    }

    fn delete(&self, table: &str, key: &str) {
        (**self).delete(table, key)
    }
}

/// The journal of a store that keeps nothing beyond the process: a version counter. It starts at
/// `first_version_floor`, so versions also keep growing across restarts.
pub struct Versions(AtomicU64);

impl Default for Versions {
    fn default() -> Self {
        Versions(AtomicU64::new(super::first_version_floor()))
    }
}

impl Journal for Versions {
    fn set(&self, _: &str, _: &str, _: &Value) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn delete(&self, _: &str, _: &str) {}
}

/// A concurrent in-memory store. All data is lost when the process exits, unless its journal keeps it.
///
/// It keeps an account of the memory its entries take (keys, encoded values and the estimated overheads
/// above) and refuses, with [`StorageError::Full`], a write that would take the account over its
/// budget. A single-key write is charged only what its entry grows by (an overwrite with a value no
/// larger always fits), and only once its condition holds, so a conditional write that cannot match is
/// a conflict however full the store is. A multi-key write needs room for all its new entries before
/// the ones they replace are released. Deletes always work.
pub struct MemoryStore<J: Journal = Versions> {
    tables: scc::HashMap<Arc<str>, Arc<Table>>,
    /// Hands out versions: one counter for the whole store keeps versions unique, so a key that is
    /// deleted and re-created can never reuse a version a client still holds.
    journal: J,
    /// Bytes accounted to the entries and tables held now.
    used: AtomicUsize,
    /// Keys held now, in every table (for the metrics).
    keys: AtomicU64,
    budget: usize,
}

/// What a store's entries take, against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub used: usize,
    pub budget: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_budget(usize::MAX)
    }
}

#[derive(Default)]
struct Table {
    entries: scc::HashMap<Arc<str>, Versioned>,
    /// True once the table has been removed from `MemoryStore::tables`; see the module docs.
    unlinked: RwLock<bool>,
    /// Counts changes to the table's set of keys (a key added or deleted, not a value replaced).
    key_changes: AtomicU64,
    /// The last sorted snapshot of the keys, and `key_changes` when it was taken: a scan of a table
    /// whose keys have not changed since reuses it, so that paging through a large table (one scan
    /// per page, each starting after a key) sorts it once, not once per page. 16 bytes per key, kept
    /// until a scan finds it out of date.
    sorted: parking_lot::Mutex<Option<(u64, SortedKeys)>>,
}

/// A table's keys in order, shared by the scans that read them.
type SortedKeys = Arc<[Arc<str>]>;

impl MemoryStore {
    /// A store without a memory budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose entries may take at most `budget` bytes (see the type's documentation).
    pub fn with_budget(budget: usize) -> Self {
        Self::with_journal(budget, Versions::default())
    }
}

impl<J: Journal> MemoryStore<J> {
    /// A store whose changes also go to `journal`.
    pub fn with_journal(budget: usize, journal: J) -> Self {
        MemoryStore {
            tables: scc::HashMap::default(),
            journal,
            used: AtomicUsize::new(0),
            keys: AtomicU64::new(0),
            budget,
        }
    }

    pub fn journal(&self) -> &J {
        &self.journal
    }

    pub fn memory(&self) -> MemoryUsage {
        MemoryUsage { used: self.used.load(Ordering::Relaxed), budget: self.budget }
    }

    /// Takes `bytes` from the budget, or fails without taking anything.
    fn reserve(&self, bytes: usize) -> StorageResult<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.budget)
            })
            .map(drop)
            .map_err(|used| {
                crate::metrics::limit_hit(crate::metrics::Limit::MemoryBudget);
                StorageError::Full { needed: bytes, used, budget: self.budget }
            })
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn table(&self, name: &str) -> Option<Arc<Table>> {
        self.tables.read_sync(name, |_, table| table.clone())
    }

    /// `read` applied to each key's entry, in order; `None` for absent keys.
    fn read_each<R>(&self, table: &str, keys: &[String], read: impl Fn(&Versioned) -> R) -> Vec<Option<R>> {
        let table = self.table(table);
        keys.iter()
            .map(|key| table.as_ref().and_then(|t| t.entries.read_sync(key.as_str(), |_, v| read(v))))
            .collect()
    }

    /// Runs `write` on the named table while guaranteeing the table stays linked. When the table does
    /// not exist, `if_absent` says whether to create it (if the budget has room for it) or what to
    /// answer instead. A table created for a write that then wrote nothing (it did not fit) is removed
    /// again, so that a refused write leaves nothing behind.
    fn write_to_table<R>(
        &self,
        name: &str,
        if_absent: IfAbsent<R>,
        write: impl FnOnce(&Table) -> R,
    ) -> StorageResult<R> {
        loop {
            let mut created = false;
            let table = match self.table(name) {
                Some(table) => table,
                None => match self.tables.entry_sync(Arc::from(name)) {
                    MapEntry::Occupied(entry) => entry.get().clone(),
                    MapEntry::Vacant(entry) => match if_absent {
                        IfAbsent::Answer(answer) => return Ok(answer),
                        IfAbsent::Create => {
                            self.reserve(table_size(name))?;
                            created = true;
                            entry.insert_entry(Arc::default()).get().clone()
                        }
                    },
                },
            };
            let unlinked = table.unlinked.read();
            if *unlinked {
                // Lost a race with `unlink_if_empty`; the next lookup finds or creates a linked table.
                continue;
            }
            let written = write(&table);
            drop(unlinked);
            if created {
                self.unlink_if_empty(name, &table);
            }
            return Ok(written);
        }
    }

    /// Removes the table from the store if it holds no keys.
    fn unlink_if_empty(&self, name: &str, table: &Arc<Table>) {
        // Cheap check first: most deletes leave keys behind, and must not contend with writers.
        if !table.entries.is_empty() {
            return;
        }
        let mut unlinked = table.unlinked.write();
        if *unlinked || !table.entries.is_empty() {
            return;
        }
        *unlinked = true;
        if self.tables.remove_if_sync(name, |current| Arc::ptr_eq(current, table)).is_some() {
            self.release(table_size(name));
        }
    }

    /// Brings the account from `held` bytes (what an entry being replaced takes, and what the caller
    /// reserved for the write) to `needed` (what the new entry takes), or fails without changing it.
    fn settle(&self, held: usize, needed: usize) -> StorageResult<()> {
        match needed.checked_sub(held) {
            Some(growth) => self.reserve(growth),
            None => {
                self.release(held - needed);
                Ok(())
            }
        }
    }

    /// Replaces an existing key's value if `expected_version` allows it and the budget has room for
    /// what the entry grows by; see [`Self::set_in`] for `prepaid`.
    fn replace(
        &self,
        table: &str,
        mut entry: OccupiedEntry<'_, Arc<str>, Versioned>,
        value: Value,
        expected_version: Option<u64>,
        prepaid: usize,
    ) -> StorageResult<WriteOutcome> {
        let current = entry.get();
        if expected_version.is_some_and(|expected| expected != current.version) {
            return Ok(WriteOutcome::Conflict { current: Some(current.clone()) });
        }
        let held = entry_size(entry.key(), &current.value) + prepaid;
        self.settle(held, entry_size(entry.key(), &value))?;
        let version = self.journal.set(table, entry.key(), &value);
        let previous = std::mem::replace(entry.get_mut(), Versioned { value, version });
        Ok(WriteOutcome::Written { previous: Some(previous), version })
    }

    /// Writes the key if `expected_version` allows it and the budget has room. The condition is
    /// decided first, and the room taken after it while the key's bucket is held, so that a write that
    /// cannot match is a conflict (with the current value) even when the store is full, and an
    /// overwrite is charged only what the entry grows by. `prepaid` bytes were reserved by the caller
    /// for this write (`set_many` reserves for all its pairs at once): they count toward the new entry,
    /// and are released when nothing is written.
    fn set_in(
        &self,
        name: &str,
        table: &Table,
        key: &str,
        value: Value,
        expected_version: Option<u64>,
        prepaid: usize,
    ) -> StorageResult<WriteOutcome> {
        let value = owned(value);
        // The common case, overwriting a key, must not allocate a new `Arc<str>` for the key.
        let outcome = match table.entries.get_sync(key) {
            Some(entry) => self.replace(name, entry, value, expected_version, prepaid),
            None => match table.entries.entry_sync(Arc::from(key)) {
                MapEntry::Occupied(entry) => self.replace(name, entry, value, expected_version, prepaid),
                MapEntry::Vacant(_) if expected_version.is_some_and(|expected| expected != 0) => {
                    Ok(WriteOutcome::Conflict { current: None })
                }
                MapEntry::Vacant(entry) => self.settle(prepaid, entry_size(key, &value)).map(|()| {
                    let version = self.journal.set(name, key, &value);
                    entry.insert_entry(Versioned { value, version });
                    table.key_changes.fetch_add(1, Ordering::Release);
                    self.keys.fetch_add(1, Ordering::Relaxed);
                    WriteOutcome::Written { previous: None, version }
                }),
            },
        };
        if !matches!(outcome, Ok(WriteOutcome::Written { .. })) {
            self.release(prepaid);
        }
        outcome
    }

    fn delete_in(&self, name: &str, table: &Table, key: &str, expected_version: Option<u64>) -> WriteOutcome {
        let Some(entry) = table.entries.get_sync(key) else {
            return absent_delete(expected_version);
        };
        if expected_version.is_some_and(|expected| expected != entry.get().version) {
            return WriteOutcome::Conflict { current: Some(entry.get().clone()) };
        }
        self.journal.delete(name, key);
        let (key, previous) = entry.remove_entry();
        table.key_changes.fetch_add(1, Ordering::Release);
        self.keys.fetch_sub(1, Ordering::Relaxed);
        self.release(entry_size(&key, &previous.value));
        WriteOutcome::Written { previous: Some(previous), version: 0 }
    }
}

/// Recovery and snapshots of a journaled store (the durable store's).
impl<J: Journal> MemoryStore<J> {
    /// Puts `key` back as a journal recorded it: without telling the journal, and without the budget's
    /// refusal (a store restored over a budget that was lowered meanwhile refuses writes until deletes
    /// bring it under).
    pub(crate) fn restore(&self, name: &str, key: &str, versioned: Versioned) {
        let table = match self.table(name) {
            Some(table) => table,
            None => {
                self.used.fetch_add(table_size(name), Ordering::Relaxed);
                self.tables.entry_sync(Arc::from(name)).or_default().get().clone()
            }
        };
        self.used.fetch_add(entry_size(key, &versioned.value), Ordering::Relaxed);
        let replaced = match table.entries.get_sync(key) {
            Some(mut entry) => Some(std::mem::replace(entry.get_mut(), versioned)),
            None => {
                table.entries.upsert_sync(Arc::from(key), versioned);
                table.key_changes.fetch_add(1, Ordering::Release);
                self.keys.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if let Some(previous) = replaced {
            self.release(entry_size(key, &previous.value));
        }
    }

    /// Removes `key` as a journal recorded it, without telling the journal.
    pub(crate) fn forget(&self, name: &str, key: &str) {
        let Some(table) = self.table(name) else { return };
        if let Some((key, previous)) = table.entries.remove_sync(key) {
            table.key_changes.fetch_add(1, Ordering::Release);
            self.keys.fetch_sub(1, Ordering::Relaxed);
            self.release(entry_size(&key, &previous.value));
        }
        self.unlink_if_empty(name, &table);
    }

    /// Shows `visitor` every entry, table by table, while writes go on: an entry that does not change
    /// during the walk is visited once, as it is; one that changes is visited as it is at some moment of
    /// the walk, or not at all.
    pub(crate) fn walk(&self, visitor: &mut impl Visitor) -> std::io::Result<()> {
        let mut tables = Vec::with_capacity(self.tables.len());
        self.tables.iter_sync(|name, table| {
            tables.push((name.clone(), table.clone()));
            true
        });
        for (name, table) in tables {
            let mut keys = Vec::with_capacity(table.entries.len());
            let mut stopped = false;
            table.entries.iter_sync(|key, _| {
                keys.push(key.clone());
                // Listing millions of keys takes seconds: a stop need not wait for it.
                stopped = keys.len() % 4096 == 0 && visitor.stopped();
                !stopped
            });
            if stopped {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "the walk was stopped"));
            }
            for key in keys {
                table.entries.read_sync(&*key, |key, versioned| visitor.entry(&name, key, versioned));
                visitor.between()?;
            }
        }
        Ok(())
    }
}

/// What [`MemoryStore::walk`] shows the entries to.
pub(crate) trait Visitor {
    /// One entry; called while its key's bucket is held, so it must be quick (no I/O).
    fn entry(&mut self, table: &str, key: &str, versioned: &Versioned);
    /// Called after each key, outside every lock; an error stops the walk.
    fn between(&mut self) -> std::io::Result<()>;
    /// Whether the walk should stop; asked now and then while keys are listed (under a bucket's lock,
    /// so it must be quick).
    fn stopped(&self) -> bool {
        false
    }
}

/// The memory budget of a store unless configured otherwise: half of the memory this process may use
/// (the machine's, or its cgroup's limit if lower: [`crate::memory::available_memory`]). Half leaves
/// room for connections (a quarter: `transport::default_connection_memory`), the allocator's slack and
/// everything else on the machine.
pub fn default_memory_budget() -> usize {
    crate::memory::available_memory() / 2
}

/// What an entry is accounted.
fn entry_size(key: &str, value: &Value) -> usize {
    key.len() + value.encoded_len() + ENTRY_OVERHEAD
}

/// What a table is accounted.
fn table_size(name: &str) -> usize {
    name.len() + TABLE_OVERHEAD
}

/// What [`MemoryStore::write_to_table`] does when the table does not exist.
enum IfAbsent<R> {
    /// Creates it.
    Create,
    /// Answers this, without creating it.
    Answer(R),
}

/// Applies `work` to `items` a batch at a time, letting other tasks run between batches.
async fn batched<T, R>(items: &[T], mut work: impl FnMut(&[T]) -> Vec<R>) -> Vec<R> {
    let mut results = Vec::with_capacity(items.len());
    for (i, batch) in items.chunks(BATCH).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        results.extend(work(batch));
    }
    results
}

fn snapshot_keys(table: &Table) -> SortedKeys {
    let mut keys = Vec::with_capacity(table.entries.len());
    table.entries.iter_sync(|key, _| {
        keys.push(key.clone());
        true
    });
    // In key order, as every backend scans: 11 ms for 100,000 short keys, 241 ms for a million
    // (docs/DESIGN.md, "Web front doors"); off the runtime for large tables, like the snapshot.
    keys.sort_unstable();
    // scc visits an entry twice when another thread resizes the table meanwhile (its `retain_sync`
    // says so, and `iter_sync` walks the same way): a scan gives each key once.
    keys.dedup();
    keys.into()
}

/// A value that owns exactly its bytes. Binary values are decoded as slices of the request frame they
/// arrived in; stored as they are, a one-byte value would keep a whole frame (up to 16 MiB) alive.
fn owned(value: Value) -> Value {
    match value.value {
        Some(value::Value::Binary(bytes)) => Value::from(Bytes::copy_from_slice(&bytes)),
        _ => value,
    }
}

/// Deleting a key that is not there: fine unconditionally or when absence was expected.
fn absent_delete(expected_version: Option<u64>) -> WriteOutcome {
    match expected_version {
        Some(expected) if expected != 0 => WriteOutcome::Conflict { current: None },
        _ => WriteOutcome::Written { previous: None, version: 0 },
    }
}

impl<J: Journal> Storage for MemoryStore<J> {
    type Scan = MemoryScan;

    fn usage(&self) -> StorageUsage {
        StorageUsage { keys: Some(self.keys.load(Ordering::Relaxed)), memory: Some(self.memory()) }
    }

    async fn get(&self, table: &str, key: &str) -> StorageResult<Option<Versioned>> {
        Ok(self.table(table).and_then(|t| t.entries.read_sync(key, |_, v| v.clone())))
    }

    async fn get_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<Option<Versioned>>> {
        Ok(batched(keys, |batch| self.read_each(table, batch, Versioned::clone)).await)
    }

    async fn versions(&self, table: &str, keys: &[String]) -> StorageResult<Vec<u64>> {
        let versions = batched(keys, |batch| self.read_each(table, batch, |v| v.version)).await;
        Ok(versions.into_iter().map(Option::unwrap_or_default).collect())
    }

    async fn set(
        &self,
        table: &str,
        key: &str,
        value: Value,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        // A write that needs the key to exist cannot match in a table that does not: it is a conflict,
        // and creates no table (for which the budget may have no room).
        let if_absent = match expected_version {
            Some(expected) if expected != 0 => IfAbsent::Answer(Ok(WriteOutcome::Conflict { current: None })),
            _ => IfAbsent::Create,
        };
        self.write_to_table(table, if_absent, |t| self.set_in(table, t, key, value, expected_version, 0))?
    }

    async fn set_many(&self, table: &str, pairs: Vec<(String, Value)>) -> StorageResult<Vec<WriteOutcome>> {
        // Room for every pair first: a write that does not fit changes nothing.
        let mut unspent: usize = pairs.iter().map(|(key, value)| entry_size(key, value)).sum();
        self.reserve(unspent)?;
        let mut outcomes = Vec::with_capacity(pairs.len());
        let mut pairs = pairs.into_iter().peekable();
        while pairs.peek().is_some() {
            if !outcomes.is_empty() {
                tokio::task::yield_now().await;
            }
            let batch = pairs.by_ref().take(BATCH);
            let written = self.write_to_table(table, IfAbsent::Create, |t| {
                for (key, value) in batch {
                    let size = entry_size(&key, &value);
                    unspent -= size;
                    // Paid for in full, so it always has room.
                    outcomes.push(self.set_in(table, t, &key, value, None, size)?);
                }
                Ok(())
            });
            if let Err(e) = written.and_then(|written| written) {
                // The table was emptied and unlinked by others between batches, and there is no room
                // to create it again: the batches before were written.
                self.release(unspent);
                return Err(match outcomes.len() {
                    0 => e,
                    done => StorageError::Uncertain(format!(
                        "{e}; the first {done} pairs were written before the table was emptied by others"
                    )),
                });
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
        let Some(t) = self.table(table) else {
            return Ok(absent_delete(expected_version));
        };
        let outcome = self.delete_in(table, &t, key, expected_version);
        self.unlink_if_empty(table, &t);
        Ok(outcome)
    }

    async fn delete_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<WriteOutcome>> {
        let Some(t) = self.table(table) else {
            return Ok(keys.iter().map(|_| absent_delete(None)).collect());
        };
        let outcomes =
            batched(keys, |batch| batch.iter().map(|key| self.delete_in(table, &t, key, None)).collect())
                .await;
        self.unlink_if_empty(table, &t);
        Ok(outcomes)
    }

    async fn scan(&self, table: &str, after: Option<&str>) -> StorageResult<MemoryScan> {
        let Some(table) = self.table(table) else {
            return Ok(MemoryScan { table: None, keys: Arc::from([]), next: 0 });
        };
        // Read before the snapshot: a change made while it is taken makes it out of date at once.
        let changes = table.key_changes.load(Ordering::Acquire);
        let cached =
            table.sorted.lock().as_ref().filter(|(at, _)| *at == changes).map(|(_, keys)| keys.clone());
        let keys = match cached {
            Some(keys) => keys,
            // Snapshotting and sorting a million keys takes a quarter of a second: not on the runtime.
            None if table.entries.len() > INLINE_SNAPSHOT_KEYS => {
                let snapshot_of = table.clone();
                tokio::task::spawn_blocking(move || snapshot_keys(&snapshot_of))
                    .await
                    .map_err(|e| StorageError::Backend(format!("the key snapshot failed: {e}")))?
            }
            None => snapshot_keys(&table),
        };
        *table.sorted.lock() = Some((changes, keys.clone()));
        // The snapshot is sorted, so the scan can start after a key.
        let next = after.map_or(0, |after| keys.partition_point(|key| **key <= *after));
        Ok(MemoryScan { table: Some(table), keys, next })
    }
}

/// A scan over a sorted snapshot of the table's keys (reference-counted, so 16 bytes per key); values are
/// read page by page, so keys deleted meanwhile are skipped and values are never copied all at once.
pub struct MemoryScan {
    table: Option<Arc<Table>>,
    keys: SortedKeys,
    next: usize,
}

impl TableScan for MemoryScan {
    async fn next_page(&mut self, limit: PageLimit) -> StorageResult<ScanPage> {
        let mut page = ScanPage::default();
        let Some(table) = &self.table else {
            page.done = true;
            return Ok(page);
        };
        let mut bytes = 0;
        // Always at least one entry per page when any remain, whatever the limits, so scans progress.
        let room =
            |entries: usize, bytes: usize| entries == 0 || (entries < limit.entries && bytes < limit.bytes);
        while self.next < self.keys.len() && room(page.entries.len(), bytes) {
            let key = &self.keys[self.next];
            self.next += 1;
            if let Some(versioned) = table.entries.read_sync(key, |_, v| v.clone()) {
                bytes += key.len() + versioned.value.encoded_len();
                page.entries.push((key.to_string(), versioned));
            }
        }
        page.done = self.next >= self.keys.len();
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    crate::storage::suite::storage_conformance!(MemoryStore::new());
    crate::storage::suite::full_store_conformance!(MemoryStore::with_budget(256 * 1024));

    fn bytes(byte: u8, len: usize) -> Value {
        Value::from(Bytes::from(vec![byte; len]))
    }

    /// On a full store, an overwrite that does not grow its entry is written, so read-modify-write
    /// loops still make progress; one that grows it is refused. The account stays exact throughout.
    #[tokio::test]
    async fn at_a_full_budget_an_overwrite_that_does_not_grow_its_entry_is_written() {
        let store = MemoryStore::with_budget(256 * 1024);
        let WriteOutcome::Written { version, .. } = store.set("t", "k", bytes(1, 100), None).await.unwrap()
        else {
            panic!("unconditional writes do not conflict")
        };
        crate::storage::suite::fill(&store, "fill").await;

        let same_size = store.set("t", "k", bytes(2, 100), Some(version)).await;
        assert!(matches!(same_size, Ok(WriteOutcome::Written { .. })), "{same_size:?}");
        let smaller = store.set("t", "k", bytes(3, 10), None).await;
        assert!(matches!(smaller, Ok(WriteOutcome::Written { .. })), "{smaller:?}");
        let larger = store.set("t", "k", bytes(4, 4096), None).await;
        assert!(matches!(larger, Err(StorageError::Full { .. })), "{larger:?}");
        assert_eq!(store.get("t", "k").await.unwrap().map(|v| v.value), Some(bytes(3, 10)));
        assert!(store.memory().used <= store.memory().budget);

        let filled: Vec<String> = (0..10_000).map(|i| format!("fill-{i}")).collect();
        store.delete_many("fill", &filled).await.unwrap();
        store.delete("t", "k", None).await.unwrap();
        assert_eq!(store.memory().used, 0, "the account gives back all it took");
    }

    /// A write refused for want of room for its entry, in a table created for it, leaves no table.
    #[tokio::test]
    async fn a_write_that_does_not_fit_leaves_no_empty_table_behind() {
        let store = MemoryStore::with_budget(table_size("t") + 100);
        let refused = store.set("t", "k", bytes(1, 4096), None).await;
        assert!(matches!(refused, Err(StorageError::Full { .. })), "{refused:?}");
        assert_eq!((store.tables.len(), store.memory().used), (0, 0));
        store.set("t", "k", bytes(1, 1), Some(0)).await.unwrap_err();
        assert_eq!((store.tables.len(), store.memory().used), (0, 0));
    }

    /// A snapshot being cancelled (the server stopping) stops its walk while it still lists a large
    /// table's keys, before any entry is shown.
    #[tokio::test]
    async fn a_walk_stops_while_it_lists_keys() {
        struct Stopping(usize);
        impl Visitor for Stopping {
            fn entry(&mut self, _: &str, _: &str, _: &Versioned) {
                self.0 += 1;
            }
            fn between(&mut self) -> std::io::Result<()> {
                Ok(())
            }
            fn stopped(&self) -> bool {
                true
            }
        }
        let store = MemoryStore::new();
        let pairs: Vec<_> = (0..10_000).map(|i| (format!("k{i}"), Value::from(1i64))).collect();
        store.set_many("t", pairs).await.unwrap();
        let mut visitor = Stopping(0);
        let stopped = store.walk(&mut visitor).unwrap_err();
        assert_eq!((stopped.kind(), visitor.0), (std::io::ErrorKind::Interrupted, 0));
    }

    #[tokio::test]
    async fn versions_start_above_the_clock_so_a_restarted_store_does_not_reissue_them() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        let store = MemoryStore::new();
        let WriteOutcome::Written { version, .. } = store.set("t", "k", "v".into(), None).await.unwrap()
        else {
            panic!("unconditional writes do not conflict")
        };
        assert!(version > before, "version {version} is not above the clock at start ({before} µs)");
        assert!(version < 1 << 53, "versions must stay exact in a double");
    }

    #[tokio::test]
    async fn a_stored_binary_value_does_not_keep_its_request_frame_alive() {
        let frame = Bytes::from(vec![7u8; 1 << 20]);
        let store = MemoryStore::new();
        store.set("t", "k", Value::from(frame.slice(0..1)), None).await.unwrap();
        assert!(frame.is_unique(), "the store holds a reference to the 1 MiB frame for a 1-byte value");
        assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, Value::from(vec![7u8]));
    }

    #[tokio::test]
    async fn emptied_tables_are_unlinked() {
        let store = MemoryStore::new();
        store.set("t", "k", "v".into(), None).await.unwrap();
        assert_eq!(store.tables.len(), 1);
        store.delete("t", "k", None).await.unwrap();
        assert_eq!(store.tables.len(), 0, "an empty table must not linger");
    }

    /// Writers racing with the unlinking of an emptied table must never lose a write into an orphan.
    #[test]
    fn no_write_is_lost_while_tables_are_unlinked() {
        let store = Arc::new(MemoryStore::new());
        let rounds = 20_000;
        std::thread::scope(|s| {
            let remover = store.clone();
            s.spawn(move || {
                for _ in 0..rounds {
                    let _ = tokio_test::block_on(remover.delete("t", "churn", None));
                    let _ = tokio_test::block_on(remover.set("t", "churn", 1i64.into(), None));
                }
            });
            let writer = store.clone();
            s.spawn(move || {
                for i in 0..rounds {
                    let key = format!("k{i}");
                    tokio_test::block_on(writer.set("t", &key, (i as i64).into(), None)).unwrap();
                    let read = tokio_test::block_on(writer.get("t", &key)).unwrap();
                    assert!(read.is_some(), "write of {key} was lost");
                    tokio_test::block_on(writer.delete("t", &key, None)).unwrap();
                }
            });
        });
    }
}
