//! The write-ahead log as the store's writers and readers see it: an in-memory tail that writes append
//! to (while the key they change is locked), and a mark of how far the log is durable, which the
//! committer ([`super::committer`]) moves on after each write and fsync.
//!
//! Versions are handed out here, under the same lock that orders the records, so the log holds records
//! in version order and "durable up to version v" is a single number: a reader that saw version v waits
//! until the mark reaches v (almost always already true: an atomic load), and so never answers with a
//! write that a crash could still take back. A delete takes a number from the same counter; a reader
//! that found a key absent waits for the last delete's.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use super::format;
use crate::pb::Value;
use crate::storage::StorageError;
use crate::storage::memory::Journal;

/// The shared state of one store's log.
pub struct Log {
    pending: Mutex<Pending>,
    /// Wakes the committer when records arrive while it waits, or when the store closes.
    wake: Condvar,
    /// The last version (or delete's number) handed out, which is its record's, the last appended.
    appended: AtomicU64,
    /// Every record up to this number is as durable as the store's mode promises (on disk when strict,
    /// handed to the operating system when relaxed).
    durable: AtomicU64,
    /// The number of the last delete appended.
    deleted: AtomicU64,
    /// Notified whenever `durable` moves on or the log fails.
    advanced: Notify,
    /// Why the log stopped: once writing or fsyncing it failed, nothing later can be made durable.
    failed: OnceLock<String>,
}

/// Records appended and not yet taken by the committer.
pub struct Pending {
    pub records: Vec<u8>,
    /// How many records `records` holds.
    pub count: usize,
    /// The last number handed out.
    last: u64,
    /// True while the committer waits for records (so appending must wake it).
    pub committer_waiting: bool,
    /// The store is gone: the committer finishes and stops.
    pub closing: bool,
}

impl Log {
    /// A log whose versions continue after `last_version`, all of it durable so far.
    pub fn new(last_version: u64) -> Self {
        Log {
            pending: Mutex::new(Pending {
                records: Vec::new(),
                count: 0,
                last: last_version,
                committer_waiting: false,
                closing: false,
            }),
            wake: Condvar::new(),
            appended: AtomicU64::new(last_version),
            durable: AtomicU64::new(last_version),
            deleted: AtomicU64::new(0),
            advanced: Notify::new(),
            failed: OnceLock::new(),
        }
    }

    /// Continues versions after `last_version` (after recovery, before any write): everything recovered
    /// is durable.
    pub fn start_after(&self, last_version: u64) {
        let mut pending = self.pending.lock();
        pending.last = pending.last.max(last_version);
        self.appended.store(pending.last, Ordering::Release);
        self.durable.store(pending.last, Ordering::Release);
    }

    /// The number of the last record appended.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// The number of the last delete appended.
    pub fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::Acquire)
    }

    /// Whether new writes may be made: not once the log has failed.
    pub fn writable(&self) -> Result<(), StorageError> {
        match self.failed.get() {
            Some(why) => Err(StorageError::Backend(format!(
                "the data log cannot be written ({why}); writes are refused until the server restarts"
            ))),
            None => Ok(()),
        }
    }

    /// Whether every record up to `number` is durable.
    pub fn is_durable(&self, number: u64) -> bool {
        self.durable.load(Ordering::Acquire) >= number
    }

    /// Waits until every record up to `number` is durable; `Err` says why it never will be.
    pub async fn durable(&self, number: u64) -> Result<(), String> {
        // The common case (a read of data long durable) takes no lock: the waiter list is Notify's.
        if self.is_durable(number) {
            return Ok(());
        }
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            // Registered before the checks, so a notification between them is not missed.
            advanced.as_mut().enable();
            if self.durable.load(Ordering::Acquire) >= number {
                return Ok(());
            }
            if let Some(why) = self.failed.get() {
                return Err(why.clone());
            }
            advanced.await;
        }
    }

    /// The committer's side: waits until records are pending or the store closes (or `timeout` passes),
    /// then swaps them out into `into` (which must be empty). Returns the number of the last record
    /// taken and how many were, or `None` when the store is closing and nothing is left.
    pub(super) fn take(
        &self,
        into: &mut Vec<u8>,
        timeout: Option<std::time::Duration>,
    ) -> Option<(u64, usize)> {
        let mut pending = self.pending.lock();
        if pending.records.is_empty() && !pending.closing {
            pending.committer_waiting = true;
            match timeout {
                Some(timeout) => {
                    self.wake.wait_for(&mut pending, timeout);
                }
                None => self.wake.wait(&mut pending),
            }
            pending.committer_waiting = false;
        }
        if pending.records.is_empty() && pending.closing {
            return None;
        }
        std::mem::swap(&mut pending.records, into);
        let count = std::mem::take(&mut pending.count);
        Some((pending.last, count))
    }

    /// Everything up to `number` is durable now.
    pub(super) fn made_durable(&self, number: u64) {
        self.durable.fetch_max(number, Ordering::AcqRel);
        self.advanced.notify_waiters();
    }

    /// The log cannot be written any more: every waiter, present and future, is told why.
    pub(super) fn fail(&self, why: String) {
        let _ = self.failed.set(why);
        self.advanced.notify_waiters();
    }

    /// The store is gone: the committer writes what is left and stops.
    pub(super) fn close(&self) {
        self.pending.lock().closing = true;
        self.wake.notify_one();
    }

    /// Appends a record made by `encode` with the next number, which it returns.
    fn append(&self, encode: impl FnOnce(&mut Vec<u8>, u64)) -> u64 {
        let mut pending = self.pending.lock();
        pending.last += 1;
        let number = pending.last;
        encode(&mut pending.records, number);
        pending.count += 1;
        self.appended.store(number, Ordering::Release);
        if pending.committer_waiting {
            self.wake.notify_one();
        }
        number
    }
}

impl Journal for Log {
    fn set(&self, table: &str, key: &str, value: &Value) -> u64 {
        self.append(|records, version| format::encode_set(records, version, table, key, value))
    }

    fn delete(&self, table: &str, key: &str) {
        let number = self.append(|records, number| format::encode_delete(records, number, table, key));
        self.deleted.fetch_max(number, Ordering::AcqRel);
    }
}
