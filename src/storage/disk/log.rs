//! The write-ahead log as the store's writers and readers see it: an in-memory tail that writes append
//! to (while the key they change is locked), and a mark of how far the log is durable, which the
//! committer ([`super::committer`]) moves on after each write and fsync.
//!
//! Versions are handed out here, under the same lock that orders the records, so the log holds records
//! in version order and "durable up to version v" is a single number: a reader that saw version v waits
//! until the mark reaches v (almost always already true: an atomic load), and so never answers with a
//! write that a crash could still take back. A delete takes a number from the same counter; a reader
//! that found a key absent waits for the last delete's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
    /// Every record up to this number is on disk (fsynced): `durable` when strict, behind it when
    /// relaxed. What a snapshot waits for before it takes the place of the log.
    synced: AtomicU64,
    /// Someone waits for `synced` (a snapshot): the committer fsyncs at its next turn, not at the end
    /// of the flush interval.
    sync_wanted: AtomicBool,
    /// The number of the last delete appended.
    deleted: AtomicU64,
    /// Notified whenever `durable` moves on or the log fails.
    advanced: Notify,
    /// Whether `advanced` is notified by a task on the serving runtime ([`Log::relay_on_runtime`]).
    relayed: AtomicBool,
    /// What the committer notifies instead of `advanced` when relayed.
    committed: Notify,
    /// Why the log stopped: once writing or fsyncing it failed, nothing later can be made durable.
    failed: OnceLock<String>,
    /// Whether the committer holds records back until the runtime runs out of work
    /// ([`Log::batch_until_idle`]).
    batch_until_idle: AtomicBool,
    /// How long it holds them back at most while the runtime stays busy.
    commit_wait: Duration,
    /// Nanoseconds the serving runtime's threads have spent parked, summed ([`Log::runtime_unparked`]).
    idle_ns: AtomicU64,
}

/// A batch is split ([`Pending::split_at`]) only when the runtime spent at least this share of the
/// last commit's cycle parked: then the core has room for the extra fsync, and the requests of the
/// two halves overlap with each other's commit instead of waiting for one commit all together.
const SPARE_SHARE: f64 = 0.25;

/// Nor into halves smaller than this: an fsync costs the core about as much as 100 requests, but a
/// core with room to spare has it to give (measured: 16 writes in flight gained a quarter from halves
/// of 8; docs/DESIGN.md, "How writes caught up", item 10).
const MIN_SPLIT: usize = 8;

/// Where to split a batch after a cycle of `cycle` in which the runtime idled for `idle` and the
/// committer took `last_batch` records: half that when the runtime had room, else nowhere.
pub(super) fn split_point(cycle: Duration, idle: Duration, last_batch: usize) -> usize {
    let spare = !cycle.is_zero() && idle.as_secs_f64() / cycle.as_secs_f64() >= SPARE_SHARE;
    match spare && last_batch >= 2 * MIN_SPLIT {
        true => last_batch / 2,
        false => usize::MAX,
    }
}

thread_local! {
    /// When this runtime thread parked, if it is parked.
    static PARKED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
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
    /// True while the committer holds records back until the runtime runs out of work (so the runtime's
    /// parking must wake it).
    committer_waiting_for_idle: bool,
    /// A runtime thread parked since the first of `records` was appended: the requests that came
    /// with them have all been handled.
    runtime_idle: bool,
    /// The store is gone: the committer finishes and stops.
    pub closing: bool,
    /// While the committer holds records back, a batch this long goes without waiting for the
    /// runtime to park (`usize::MAX`: never). Set to half the last batch when the last cycle left the
    /// runtime idle ([`SPARE_SHARE`]): a closed loop whose every request waits for the same commit
    /// moves in lockstep (the clients, the runtime and the disk each idle while another works), and
    /// committing the first half early lets them overlap. A saturated runtime gets no split: there
    /// every extra fsync takes core time from the requests.
    split_at: usize,
    /// The batch reached `split_at`.
    split: bool,
    /// The committer's view of the last cycle: when it took its batch, the runtime's idle time then,
    /// and the batch's length in records.
    last_take: Instant,
    last_idle_ns: u64,
    last_batch: usize,
}

impl Log {
    /// A log whose versions continue after `last_version`, all of it durable so far, whose committer
    /// holds records back for at most `commit_wait` once it batches until the runtime is idle.
    pub fn new(last_version: u64, commit_wait: Duration) -> Self {
        Log {
            pending: Mutex::new(Pending {
                records: Vec::new(),
                count: 0,
                last: last_version,
                committer_waiting: false,
                committer_waiting_for_idle: false,
                runtime_idle: false,
                closing: false,
                split_at: usize::MAX,
                split: false,
                last_take: Instant::now(),
                last_idle_ns: 0,
                last_batch: 0,
            }),
            wake: Condvar::new(),
            appended: AtomicU64::new(last_version),
            durable: AtomicU64::new(last_version),
            synced: AtomicU64::new(last_version),
            sync_wanted: AtomicBool::new(false),
            deleted: AtomicU64::new(0),
            advanced: Notify::new(),
            relayed: AtomicBool::new(false),
            committed: Notify::new(),
            failed: OnceLock::new(),
            batch_until_idle: AtomicBool::new(false),
            commit_wait,
            idle_ns: AtomicU64::new(0),
        }
    }

    /// From now on the committer takes records only once a runtime thread has run out of work since
    /// they were appended ([`Log::runtime_parked`]), or the commit wait after they woke it: Redis's
    /// shape (it writes and fsyncs the log once per turn of its event loop, after handling every
    /// request that had arrived). A committer woken by the first write of a burst would otherwise
    /// take that write alone; on a busy core it even preempts the thread that is handling the rest.
    pub fn batch_until_idle(&self) {
        self.batch_until_idle.store(true, Ordering::Relaxed);
    }

    /// From now on the committer wakes one task on the current runtime, which wakes every waiting
    /// writer and reader, instead of waking each of them itself. A task woken from outside its runtime
    /// is queued there one at a time, with a syscall each to wake the runtime's thread, which then often
    /// runs it alone and sends its answer in a packet of its own; woken from inside, the whole batch
    /// runs together and its answers share packets. Must be called from within the runtime that
    /// serves the store, and that runtime must outlive every wait on the log.
    pub fn relay_on_runtime(self: &Arc<Self>) {
        self.relayed.store(true, Ordering::Release);
        let log = self.clone();
        tokio::spawn(async move {
            loop {
                // A notification while the task is busy is kept as a permit: none is missed.
                log.committed.notified().await;
                log.advanced.notify_waiters();
            }
        });
    }

    /// A runtime thread has no more work and is about to park: records pending now can go.
    pub fn runtime_parked(&self) {
        PARKED_AT.set(Some(Instant::now()));
        let mut pending = self.pending.lock();
        if pending.records.is_empty() {
            return;
        }
        pending.runtime_idle = true;
        if pending.committer_waiting_for_idle {
            self.wake.notify_one();
        }
    }

    /// A runtime thread has work again: the time it was parked counts as the runtime's idle time.
    pub fn runtime_unparked(&self) {
        if let Some(parked_at) = PARKED_AT.take() {
            let parked = parked_at.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
            self.idle_ns.fetch_add(parked, Ordering::Relaxed);
        }
    }

    /// Continues versions after `last_version` (after recovery, before any write): everything recovered
    /// is durable.
    pub fn start_after(&self, last_version: u64) {
        let mut pending = self.pending.lock();
        pending.last = pending.last.max(last_version);
        self.appended.store(pending.last, Ordering::Release);
        self.durable.store(pending.last, Ordering::Release);
        self.synced.store(pending.last, Ordering::Release);
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
            // Refused before anything is done: not executed (503).
            Some(why) => Err(StorageError::Unavailable(format!(
                "the data log cannot be written ({why}); writes are refused until the server restarts: free disk space or mend the disk first, or the first write after the restart fails the same way"
            ))),
            None => Ok(()),
        }
    }

    /// Whether every record up to `number` is durable.
    pub fn is_durable(&self, number: u64) -> bool {
        self.durable.load(Ordering::Acquire) >= number
    }

    /// Whether every record up to `number` is on disk (fsynced), whatever the mode.
    pub fn is_synced(&self, number: u64) -> bool {
        self.synced.load(Ordering::Acquire) >= number
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
        if pending.records.is_empty() && !pending.closing && !self.sync_wanted.load(Ordering::Acquire) {
            pending.committer_waiting = true;
            match timeout {
                Some(timeout) => {
                    self.wake.wait_for(&mut pending, timeout);
                }
                None => self.wake.wait(&mut pending),
            }
            pending.committer_waiting = false;
        }
        if self.batch_until_idle.load(Ordering::Relaxed) && !pending.records.is_empty() {
            let deadline = Instant::now() + self.commit_wait;
            pending.split_at = self.split_at(&pending);
            pending.split = pending.count >= pending.split_at;
            pending.committer_waiting_for_idle = true;
            while !pending.runtime_idle && !pending.split && !pending.closing {
                if self.wake.wait_until(&mut pending, deadline).timed_out() {
                    break;
                }
            }
            pending.committer_waiting_for_idle = false;
            pending.split = false;
            pending.split_at = usize::MAX;
        }
        pending.runtime_idle = false;
        pending.last_take = Instant::now();
        pending.last_idle_ns = self.idle_ns.load(Ordering::Relaxed);
        pending.last_batch = pending.count;
        if pending.records.is_empty() && pending.closing {
            return None;
        }
        std::mem::swap(&mut pending.records, into);
        let count = std::mem::take(&mut pending.count);
        Some((pending.last, count))
    }

    /// Where the batch being gathered is split, from the cycle since the last one was taken.
    fn split_at(&self, pending: &Pending) -> usize {
        let cycle = pending.last_take.elapsed();
        let idle = self.idle_ns.load(Ordering::Relaxed).saturating_sub(pending.last_idle_ns);
        split_point(cycle, Duration::from_nanos(idle), pending.last_batch)
    }

    /// Everything up to `number` is durable now.
    pub(super) fn made_durable(&self, number: u64) {
        self.durable.fetch_max(number, Ordering::AcqRel);
        if self.relayed.load(Ordering::Acquire) {
            self.committed.notify_one();
        } else {
            self.advanced.notify_waiters();
        }
    }

    /// Asks the committer to fsync what it has written at its next turn, waking it if it waits.
    pub(super) fn want_sync(&self) {
        self.sync_wanted.store(true, Ordering::Release);
        let _pending = self.pending.lock();
        self.wake.notify_one();
    }

    /// Whether an fsync was asked for since the last call ([`Log::want_sync`]).
    pub(super) fn take_sync_wanted(&self) -> bool {
        self.sync_wanted.swap(false, Ordering::AcqRel)
    }

    /// Everything up to `number` is on disk now (and so durable in either mode).
    pub(super) fn made_synced(&self, number: u64) {
        self.synced.fetch_max(number, Ordering::AcqRel);
        self.made_durable(number);
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
        if pending.records.is_empty() {
            // A park before this record does not mean its request has been handled to the end.
            pending.runtime_idle = false;
        }
        pending.last += 1;
        let number = pending.last;
        encode(&mut pending.records, number);
        pending.count += 1;
        if pending.count >= pending.split_at && pending.committer_waiting_for_idle && !pending.split {
            pending.split = true;
            self.wake.notify_one();
        }
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
