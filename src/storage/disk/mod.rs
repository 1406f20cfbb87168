//! The durable backend: redb, one file in the data directory, every write acknowledged only once it
//! is on disk, with group commit ([`committer`]).
//!
//! redb was chosen over fjall by measurement on this workload (docs/DESIGN.md, "Durable storage"):
//! faster reads and scans, steady read latency under writes, one file, real transactions, no
//! background threads, and a version line that builds with qkv's minimum Rust.
//!
//! Reads and scans run on tokio's blocking threads, each in a read transaction of its own (MVCC: they
//! never wait for the committer). Every write goes through the committer thread.
//!
//! Dropping the store never blocks (the last handle may go on a runtime thread, which must not wait
//! for an fsync): the committer finishes the writes it was given, makes every commit durable and
//! exits on its own. [`StoreClosed`], taken from the store beforehand, waits for that, so that a
//! process exits, or opens the directory again, only once every acknowledged write is on disk.

mod committer;
mod encoding;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

pub use committer::Durability;
use committer::{Job, LAST_VERSION, Write};
use encoding::{decode_version, decode_versioned, entry_key, key_of, table_prefix};

use super::{PageLimit, ScanPage, Storage, StorageError, StorageResult, TableScan, Versioned, WriteOutcome};
use crate::pb::Value;

/// Every qkv table's entries, keyed as `encoding` describes.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// Bookkeeping: the last version handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The database file in a data directory.
pub const DATA_FILE: &str = "qkv.redb";

fn backend(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Backend(e.into().to_string())
}

/// A store on disk. Cheap operations stay cheap: a read is one read transaction on a blocking
/// thread; a write waits for the next group commit.
pub struct DiskStore {
    db: Arc<Database>,
    /// To the committer, which stops once this (the only sender) is dropped.
    jobs: mpsc::Sender<Job>,
    closed: StoreClosed,
    /// Keeps a temporary data directory (tests only) alive as long as the store.
    _temporary: Option<TemporaryDir>,
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`. After a crash, redb repairs the file on open, which
    /// takes time proportional to its size.
    pub fn open(dir: &Path, durability: Durability) -> StorageResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path: PathBuf = dir.join(DATA_FILE);
        let db = Database::create(&path).map_err(|e| {
            StorageError::Backend(format!("cannot open {}: {}", path.display(), redb::Error::from(e)))
        })?;
        // Create both tables now, so that reads never meet a missing one; read the version counter.
        let txn = db.begin_write().map_err(backend)?;
        let stored_version = {
            txn.open_table(ENTRIES).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(LAST_VERSION).map_err(backend)?.map(|v| v.value())
        };
        txn.commit().map_err(backend)?;

        let db = Arc::new(db);
        let (jobs, queue) = mpsc::channel();
        let first_version = committer::first_version(stored_version);
        let for_committer = db.clone();
        let committer = std::thread::Builder::new()
            .name("qkv-committer".into())
            .spawn(move || committer::run(for_committer, queue, durability, first_version))
            .map_err(|e| StorageError::Backend(format!("cannot start the committer thread: {e}")))?;
        let closed = StoreClosed { committer: Arc::new(Mutex::new(Some(committer))) };
        Ok(DiskStore { db, jobs, closed, _temporary: None })
    }

    /// A handle that completes once this store has been dropped and its committer has made every write
    /// it acknowledged durable and stopped. The database file is closed then, unless a scan still
    /// reads it (a [`DiskScan`] keeps it open until it is dropped).
    pub fn closed(&self) -> StoreClosed {
        self.closed.clone()
    }

    /// A store in a new temporary directory, removed when the store is dropped.
    #[cfg(test)]
    pub(crate) fn temporary() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Self::open(dir.path(), Durability::Strict).expect("a store in a temporary directory");
        store._temporary = Some(dir);
        store
    }

    /// Runs `read` on a blocking thread, in a read transaction, with the entries table.
    async fn read<R: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadOnlyTable<&[u8], &[u8]>) -> StorageResult<R> + Send + 'static,
    ) -> StorageResult<R> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let entries = txn.open_table(ENTRIES).map_err(backend)?;
            read(&entries)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("a read failed: {e}")))?
    }

    /// Hands `write` to the committer and waits until it is durable.
    async fn write(&self, write: Write) -> StorageResult<Vec<WriteOutcome>> {
        let (done, outcome) = oneshot::channel();
        let gone = || StorageError::Backend("the store is shutting down".into());
        self.jobs.send(Job { write, done }).map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }

    async fn write_one(&self, write: Write) -> StorageResult<WriteOutcome> {
        self.write(write).await?.pop().ok_or_else(|| StorageError::Backend("a write had no outcome".into()))
    }
}

/// The end of a [`DiskStore`]'s committer: see [`DiskStore::closed`]. Dropping the store (its last
/// handle, the job sender) tells the committer to finish; this waits until it has.
#[derive(Clone)]
pub struct StoreClosed {
    /// Taken by the first waiter, which joins it while holding the lock, so that every other waiter
    /// returns only once the committer has finished too.
    committer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl StoreClosed {
    /// Blocks the calling thread until the store has been dropped and every write it acknowledged is
    /// durable. Not for a runtime's worker thread: use [`StoreClosed::wait`] there.
    pub fn wait_blocking(&self) {
        let mut committer = self.committer.lock();
        if let Some(committer) = committer.take()
            && committer.join().is_err()
        {
            tracing::error!("the committer thread panicked: writes of its last moments may be lost");
        }
    }

    /// [`StoreClosed::wait_blocking`] on one of tokio's blocking threads.
    pub async fn wait(self) {
        let _ = tokio::task::spawn_blocking(move || self.wait_blocking()).await;
    }
}

/// A temporary data directory: only tests make one (tempfile is a test dependency).
#[cfg(test)]
type TemporaryDir = tempfile::TempDir;
#[cfg(not(test))]
type TemporaryDir = std::convert::Infallible;

fn get_in(
    entries: &redb::ReadOnlyTable<&[u8], &[u8]>,
    table: &str,
    key: &str,
) -> StorageResult<Option<Versioned>> {
    match entries.get(entry_key(table, key).as_slice()).map_err(backend)? {
        Some(stored) => decode_versioned(stored.value()).map(Some),
        None => Ok(None),
    }
}

impl Storage for DiskStore {
    type Scan = DiskScan;

    /// A write's first poll hands it to the committer's FIFO queue, which applies writes in the order
    /// they arrive.
    const APPLIES_WRITES_IN_ISSUE_ORDER: bool = true;

    async fn get(&self, table: &str, key: &str) -> StorageResult<Option<Versioned>> {
        let (table, key) = (table.to_owned(), key.to_owned());
        self.read(move |entries| get_in(entries, &table, &key)).await
    }

    async fn get_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<Option<Versioned>>> {
        let (table, keys) = (table.to_owned(), keys.to_vec());
        self.read(move |entries| keys.iter().map(|key| get_in(entries, &table, key)).collect()).await
    }

    async fn versions(&self, table: &str, keys: &[String]) -> StorageResult<Vec<u64>> {
        let (table, keys) = (table.to_owned(), keys.to_vec());
        self.read(move |entries| {
            keys.iter()
                .map(|key| match entries.get(entry_key(&table, key).as_slice()).map_err(backend)? {
                    Some(stored) => decode_version(stored.value()),
                    None => Ok(0),
                })
                .collect()
        })
        .await
    }

    async fn set(
        &self,
        table: &str,
        key: &str,
        value: Value,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        let write =
            Write::Set { table: table.to_owned(), key: key.to_owned(), value, expected: expected_version };
        self.write_one(write).await
    }

    async fn set_many(&self, table: &str, pairs: Vec<(String, Value)>) -> StorageResult<Vec<WriteOutcome>> {
        self.write(Write::SetMany { table: table.to_owned(), pairs }).await
    }

    async fn delete(
        &self,
        table: &str,
        key: &str,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        let write =
            Write::Delete { table: table.to_owned(), key: key.to_owned(), expected: expected_version };
        self.write_one(write).await
    }

    async fn delete_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<WriteOutcome>> {
        self.write(Write::DeleteMany { table: table.to_owned(), keys: keys.to_vec() }).await
    }

    async fn scan(&self, table: &str, after: Option<&str>) -> StorageResult<DiskScan> {
        let after = after.map(|key| entry_key(table, key));
        Ok(DiskScan { db: self.db.clone(), prefix: table_prefix(table), after, done: false })
    }
}

/// A scan of one table in key order, a page per read transaction: no snapshot is held between pages,
/// and each page resumes after the last key returned, so a key present for the whole scan is returned
/// exactly once.
pub struct DiskScan {
    db: Arc<Database>,
    prefix: Vec<u8>,
    /// The last key returned; the next page starts after it.
    after: Option<Vec<u8>>,
    done: bool,
}

impl TableScan for DiskScan {
    async fn next_page(&mut self, limit: PageLimit) -> StorageResult<ScanPage> {
        if self.done {
            return Ok(ScanPage { entries: Vec::new(), done: true });
        }
        let (db, prefix, after) = (self.db.clone(), self.prefix.clone(), self.after.clone());
        let (page, last) =
            tokio::task::spawn_blocking(move || read_page(&db, &prefix, after.as_deref(), limit))
                .await
                .map_err(|e| StorageError::Backend(format!("a scan failed: {e}")))??;
        self.done = page.done;
        self.after = last.or(self.after.take());
        Ok(page)
    }
}

/// Up to `limit` entries of the table with `prefix`, after key `after`; and the last key read.
fn read_page(
    db: &Database,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: PageLimit,
) -> StorageResult<(ScanPage, Option<Vec<u8>>)> {
    let txn = db.begin_read().map_err(backend)?;
    let entries = txn.open_table(ENTRIES).map_err(backend)?;
    let start = match after {
        Some(after) => Bound::Excluded(after),
        None => Bound::Included(prefix),
    };
    let mut page = ScanPage { entries: Vec::new(), done: true };
    let mut last = None;
    let mut bytes = 0;
    for item in entries.range::<&[u8]>((start, Bound::Unbounded)).map_err(backend)? {
        let (key, value) = item.map_err(backend)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        // Always at least one entry per page when any remain, whatever the limits.
        if !page.entries.is_empty() && (page.entries.len() >= limit.entries || bytes >= limit.bytes) {
            page.done = false;
            break;
        }
        let versioned = decode_versioned(value.value())?;
        let name = key_of(key, prefix.len())?;
        bytes += name.len() + value.value().len();
        page.entries.push((name, versioned));
        last = Some(key.to_vec());
    }
    Ok((page, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::storage::suite::storage_conformance!(DiskStore::temporary());

    #[tokio::test]
    async fn data_versions_and_conditional_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (version, deleted_version, closed) = {
            let store = DiskStore::open(dir.path(), Durability::Strict).unwrap();
            let WriteOutcome::Written { version, .. } =
                store.set("a:b", "", vec![0u8; 100_000].into(), None).await.unwrap()
            else {
                panic!("an unconditional write")
            };
            let WriteOutcome::Written { version: deleted, .. } =
                store.set("t", "gone", 1i64.into(), None).await.unwrap()
            else {
                panic!("an unconditional write")
            };
            store.delete("t", "gone", None).await.unwrap();
            (version, deleted, store.closed())
        };
        closed.wait().await;
        let store = DiskStore::open(dir.path(), Durability::Strict).unwrap();
        let stored = store.get("a:b", "").await.unwrap().unwrap();
        assert_eq!((stored.value, stored.version), (vec![0u8; 100_000].into(), version));
        assert_eq!(store.get("t", "gone").await.unwrap(), None);
        // A conditional write on the version from before the restart succeeds; a stale one conflicts.
        let outcome = store.set("a:b", "", "next".into(), Some(version)).await.unwrap();
        let WriteOutcome::Written { version: next, .. } = outcome else { panic!("{outcome:?}") };
        assert!(next > version && next > deleted_version, "versions keep growing across restarts");
        assert!(matches!(
            store.set("a:b", "", "x".into(), Some(version)).await.unwrap(),
            WriteOutcome::Conflict { .. }
        ));
    }

    #[tokio::test]
    async fn relaxed_writes_are_on_disk_once_the_store_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let relaxed = Durability::Relaxed { flush_interval: std::time::Duration::from_secs(3600) };
        let store = DiskStore::open(dir.path(), relaxed).unwrap();
        store.set("t", "k", "v".into(), None).await.unwrap();
        let closed = store.closed();
        drop(store);
        closed.wait().await;
        let store = DiskStore::open(dir.path(), Durability::Strict).unwrap();
        assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, "v".into());
    }
}
