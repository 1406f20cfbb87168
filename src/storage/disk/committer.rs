//! Group commit: every write goes to one committer thread, which applies all the writes waiting at
//! that moment in one redb transaction and makes it durable with one fsync, then answers each of them.
//! Writes that arrive during an fsync wait for the next one, so the more writes are in flight, the
//! more share each fsync: throughput grows with concurrency while every acknowledged write is on disk.
//!
//! redb allows one write transaction at a time, so a single thread owning the write path costs
//! nothing in parallelism, keeps blocking I/O off the async runtime, and makes the version counter a
//! plain variable.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, Table};
use tokio::sync::oneshot;

use super::encoding::{decode_versioned, encode_versioned, entry_key};
use super::{ENTRIES, META, backend};
use crate::pb::{Value, Versioned};
use crate::storage::{StorageError, StorageResult, WriteOutcome};

/// The most writes applied in one transaction; more wait for the next.
const MAX_BATCH: usize = 4096;

/// The key in `META` of the last version handed out.
pub const LAST_VERSION: &str = "last_version";

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once it is on disk (fsync). Nothing acknowledged is lost, whatever happens to the process or
    /// the machine.
    Strict,
    /// Once it is committed in memory; what was committed reaches the disk within `flush_interval`.
    /// A crash (of the process or the machine) loses at most that much acknowledged time of writes.
    Relaxed { flush_interval: Duration },
}

/// One write, as a command asked for it.
pub enum Write {
    Set { table: String, key: String, value: Value, expected: Option<u64> },
    SetMany { table: String, pairs: Vec<(String, Value)> },
    Delete { table: String, key: String, expected: Option<u64> },
    DeleteMany { table: String, keys: Vec<String> },
}

/// A write and where its outcomes go once they are durable.
pub struct Job {
    pub write: Write,
    pub done: oneshot::Sender<StorageResult<Vec<WriteOutcome>>>,
}

/// Runs until every sender of `jobs` is gone; then makes everything durable and returns.
pub fn run(db: Arc<Database>, jobs: Receiver<Job>, durability: Durability, mut last_version: u64) {
    // Relaxed: when the oldest commit not yet on disk was made.
    let mut unflushed_since: Option<Instant> = None;
    loop {
        let first = match (durability, unflushed_since) {
            (Durability::Relaxed { flush_interval }, Some(since)) => {
                let left = flush_interval.saturating_sub(since.elapsed());
                match jobs.recv_timeout(left) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let flush = match durability {
            Durability::Strict => true,
            Durability::Relaxed { flush_interval } => {
                unflushed_since.is_some_and(|since| since.elapsed() >= flush_interval)
            }
        };
        let (writes, waiting): (Vec<Write>, Vec<_>) =
            batch.into_iter().map(|job| (job.write, job.done)).unzip();
        match commit(&db, writes, &mut last_version, flush) {
            Ok(outcomes) => {
                unflushed_since = match flush {
                    true => None,
                    false => unflushed_since.or(Some(Instant::now())),
                };
                for (done, outcome) in waiting.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = waiting.len(), "a commit failed; its writes were not made");
                for done in waiting {
                    let _ = done.send(Err(StorageError::Backend(e.to_string())));
                }
            }
        }
    }
    if unflushed_since.is_some()
        && let Err(e) = commit(&db, Vec::new(), &mut last_version, true)
    {
        tracing::error!(error = %e, "the last flush failed: writes of the last moments may be lost");
    }
}

/// Applies `batch` in one transaction and commits it, durably if `flush`. An empty batch with `flush`
/// makes earlier non-durable commits durable.
fn commit(
    db: &Database,
    writes: Vec<Write>,
    last_version: &mut u64,
    flush: bool,
) -> StorageResult<Vec<Vec<WriteOutcome>>> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(if flush { redb::Durability::Immediate } else { redb::Durability::None });
    crate::metrics::disk_batch(writes.len());
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut next = *last_version;
    {
        let mut entries = txn.open_table(ENTRIES).map_err(backend)?;
        for write in writes {
            outcomes.push(apply(&mut entries, write, &mut next)?);
        }
        if next != *last_version {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(LAST_VERSION, next).map_err(backend)?;
        }
    }
    let started = std::time::Instant::now();
    txn.commit().map_err(backend)?;
    if flush {
        crate::metrics::disk_fsync(started.elapsed());
    }
    *last_version = next;
    Ok(outcomes)
}

type Entries<'txn> = Table<'txn, &'static [u8], &'static [u8]>;

fn apply(entries: &mut Entries<'_>, write: Write, next: &mut u64) -> StorageResult<Vec<WriteOutcome>> {
    Ok(match write {
        Write::Set { table, key, value, expected } => {
            vec![set(entries, &entry_key(&table, &key), value, expected, next)?]
        }
        Write::SetMany { table, pairs } => pairs
            .into_iter()
            .map(|(key, value)| set(entries, &entry_key(&table, &key), value, None, next))
            .collect::<StorageResult<_>>()?,
        Write::Delete { table, key, expected } => vec![delete(entries, &entry_key(&table, &key), expected)?],
        Write::DeleteMany { table, keys } => keys
            .iter()
            .map(|key| delete(entries, &entry_key(&table, key), None))
            .collect::<StorageResult<_>>()?,
    })
}

fn current(entries: &Entries<'_>, key: &[u8]) -> StorageResult<Option<Versioned>> {
    match entries.get(key).map_err(backend)? {
        Some(stored) => decode_versioned(stored.value()).map(Some),
        None => Ok(None),
    }
}

fn set(
    entries: &mut Entries<'_>,
    key: &[u8],
    value: Value,
    expected: Option<u64>,
    next: &mut u64,
) -> StorageResult<WriteOutcome> {
    if let Some(expected) = expected {
        let previous = current(entries, key)?;
        if expected != previous.as_ref().map_or(0, |p| p.version) {
            return Ok(WriteOutcome::Conflict { current: previous });
        }
    }
    *next += 1;
    // The insert hands back what it replaced: one walk down the tree, not two, for the common write.
    let replaced = entries.insert(key, encode_versioned(*next, &value).as_slice()).map_err(backend)?;
    let previous = replaced.map(|old| decode_versioned(old.value())).transpose()?;
    Ok(WriteOutcome::Written { previous, version: *next })
}

fn delete(entries: &mut Entries<'_>, key: &[u8], expected: Option<u64>) -> StorageResult<WriteOutcome> {
    let previous = current(entries, key)?;
    let current_version = previous.as_ref().map_or(0, |p| p.version);
    if expected.is_some_and(|expected| expected != current_version) {
        return Ok(WriteOutcome::Conflict { current: previous });
    }
    if previous.is_some() {
        entries.remove(key).map_err(backend)?;
    }
    Ok(WriteOutcome::Written { previous, version: 0 })
}

/// The version to continue from: above every version stored, and, as in the memory store, at least
/// the current time in microseconds, so versions keep growing even if the counter were lost.
pub fn first_version(stored: Option<u64>) -> u64 {
    stored.unwrap_or(0).max(crate::storage::first_version_floor())
}
