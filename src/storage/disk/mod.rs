//! The durable backend: the memory store as the working set, and a write-ahead log on disk that every
//! change goes to, with group commit; snapshots compact the log. Redis's design (an append-only file
//! with `appendfsync always`, rewritten when it grows), chosen by measurement over B-tree and LSM
//! engines: docs/DESIGN.md, "Durable storage".
//!
//! - A write is applied to the memory store, which appends its record to the log's tail while the key
//!   is locked ([`log`]), and is acknowledged once the committer ([`committer`]) has written and fsynced
//!   it (strict), or handed it to the operating system (relaxed).
//! - A read is a memory store read, answered once what it saw is durable (at once, unless it saw a
//!   write whose fsync is still under way), so no answer shows a write that a crash could take back.
//! - Opening a directory loads the newest snapshot and replays the log after it ([`recovery`]).
//!
//! All data must fit in memory: the store has the memory store's budget (`--memory-budget`), and writes
//! beyond it are refused with status 507, as the memory store's are.
//!
//! Dropping the store never blocks (the last handle may go on a runtime thread, which must not wait
//! for an fsync): the committer writes what it was given, makes it durable and exits on its own.
//! [`StoreClosed`], taken from the store beforehand, waits for that, so that a process exits, or opens
//! the directory again, only once every acknowledged write is on disk.

mod committer;
mod files;
pub(crate) mod format;
mod import;
pub(crate) mod log;
pub(crate) mod recovery;

pub use recovery::Repaired;
pub(crate) mod snapshot;

use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use committer::Durability;
use log::Log;
use snapshot::Store;

use super::memory::{MemoryScan, MemoryStore};
use super::{
    PageLimit, ScanPage, Storage, StorageError, StorageResult, StorageUsage, TableScan, Versioned,
    WriteOutcome,
};
use crate::pb::Value;

/// How a disk store keeps its data.
#[derive(Debug, Clone, Copy)]
pub struct DiskConfig {
    pub durability: Durability,
    /// What the entries may take in memory (see [`MemoryStore::with_budget`]).
    pub memory_budget: usize,
    /// A snapshot is written once the log since the last one is larger than this and than the last
    /// snapshot: the log, and so the directory and the time to restart, stay within a few times the
    /// data.
    pub snapshot_log_size: u64,
    /// While the runtime serving the store stays busy, how long the committer lets writes gather
    /// before it writes and fsyncs them (`Log::batch_until_idle`): the longer, the fewer fsyncs
    /// share a saturated core with the requests, and the longer writes wait there. A runtime that
    /// runs out of work has its writes committed at once.
    pub commit_wait: Duration,
}

impl DiskConfig {
    pub const DEFAULT_SNAPSHOT_LOG_SIZE: u64 = 64 << 20;
    /// Measured at TCP 256 × 1 durable HSETs, server on one core (docs/DESIGN.md, "Durable
    /// storage"): 2 ms commits ~10 % more writes a second there than 0.5 ms, longer gains nothing.
    pub const DEFAULT_COMMIT_WAIT: Duration = Duration::from_millis(2);

    /// The defaults, with `durability`.
    pub fn new(durability: Durability) -> Self {
        DiskConfig {
            durability,
            memory_budget: super::default_memory_budget(),
            snapshot_log_size: Self::DEFAULT_SNAPSHOT_LOG_SIZE,
            commit_wait: Self::DEFAULT_COMMIT_WAIT,
        }
    }
}

/// Tells a disk store when the runtime that serves it runs out of work, so that its committer writes
/// and fsyncs once per burst of requests rather than once per first write of a burst
/// (`Log::batch_until_idle`), and how much it idles, so that a batch is split when the core has
/// room (`log::split_point`). Call [`RuntimeIdle::parked`] from the runtime's `on_thread_park` hook
/// and [`RuntimeIdle::unparked`] from `on_thread_unpark`, and hand the signal to the store with
/// [`DiskStore::attach_runtime`]; a store with no signal commits as soon as records arrive.
#[derive(Clone, Default)]
pub struct RuntimeIdle(Arc<OnceLock<Weak<Log>>>);

impl RuntimeIdle {
    /// A runtime thread is about to park.
    pub fn parked(&self) {
        if let Some(log) = self.0.get().and_then(Weak::upgrade) {
            log.runtime_parked();
        }
    }

    /// A runtime thread has unparked (call from `on_thread_unpark`): how long the runtime idles tells
    /// the committer whether it may split a batch (`Log::runtime_unparked`).
    pub fn unparked(&self) {
        if let Some(log) = self.0.get().and_then(Weak::upgrade) {
            log.runtime_unparked();
        }
    }
}

/// A disk store's data, kept: see [`DiskStore::retain_memory`].
pub struct RetainedMemory(#[allow(dead_code)] Arc<Store>);

/// A store on disk, served from memory.
pub struct DiskStore {
    memory: Arc<Store>,
    log: Arc<Log>,
    closed: StoreClosed,
    /// Keeps a temporary data directory (tests only) alive as long as the store.
    _temporary: Option<TemporaryDir>,
}

/// How far below [`format::VERSION_LIMIT`] a store must start: 2^40 versions, 12 days of the clock's
/// microseconds (which versions follow when writes average under a million a second), so that a store
/// that opens never hands out one its recovery would refuse.
const VERSION_HEADROOM: u64 = 1 << 40;

fn io_error(what: &str, dir: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    move |e| StorageError::Backend(format!("{what} {}: {e}", dir.display()))
}

impl DiskStore {
    /// Opens (or creates) the store in `dir`: loads its snapshot and replays its log, which takes time
    /// proportional to the data (docs/bench/DURABLE.md).
    pub fn open(dir: &Path, config: DiskConfig) -> StorageResult<Self> {
        let existed = dir.exists();
        files::create_dir(dir).map_err(io_error("cannot create", dir))?;
        if !existed {
            // A mistyped --data-dir, or a volume not mounted, would otherwise serve an empty store
            // as ready without a word.
            tracing::warn!(dir = %dir.display(), "the data directory did not exist: created it, and the store starts empty (is --data-dir mistyped, or its volume not mounted?)");
        }
        let lock = files::lock(dir).map_err(io_error("cannot lock", dir))?;
        // New segments and snapshots are files made in it, later: a directory this process can read
        // and lock but not add to would start, and break at the first new segment.
        files::check_writable(dir)
            .map_err(io_error("cannot create files (new log segments, snapshots) in", dir))?;
        let started = Instant::now();
        let log = Arc::new(Log::new(0, config.commit_wait));
        let memory = Arc::new(MemoryStore::with_journal(config.memory_budget, log.clone()));
        let imported =
            import::from_redb(dir, &memory).map_err(io_error("cannot import the redb file in", dir))?;
        let recovered = recovery::recover(dir, &memory, config.durability)
            .map_err(io_error("cannot recover the data in", dir))?;
        let floor = super::first_version_floor();
        let last_version = recovered.last_version.max(imported).max(floor);
        if last_version >= format::VERSION_LIMIT - VERSION_HEADROOM {
            // Its next segment's header would say a version that recovery takes for damage: a store
            // that would not open again.
            return Err(StorageError::Backend(format!(
                "cannot open the data in {}: its versions would reach 2^53, the most a double holds exactly (the data's last is {}, and they start above the clock's microseconds since 1970, {floor} now): is the system clock right?",
                dir.display(),
                recovered.last_version.max(imported),
            )));
        }
        log.start_after(last_version);
        // A last segment with no record is gone on with: a new one at every start would leave one
        // more empty file for every later recovery to open (a server in a restart loop).
        let (generation, segment) = match recovered.empty_last_segment {
            Some(generation) => (generation, files::restart_segment(dir, generation, log.appended())),
            None => (
                recovered.next_generation,
                files::create_segment(dir, recovered.next_generation, log.appended()),
            ),
        };
        let segment = segment.map_err(io_error("cannot start a log segment in", dir))?;
        let usage = memory.usage();
        tracing::info!(
            dir = %dir.display(),
            keys = usage.keys.unwrap_or_default(),
            snapshot_entries = recovered.snapshot_entries,
            log_records = recovered.records,
            torn_bytes = recovered.torn_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data recovered"
        );
        crate::metrics::disk_recovered(started.elapsed(), recovered.snapshot_size, recovered.log_bytes);
        if let Some(memory) = usage.memory
            && memory.used > memory.budget
        {
            tracing::warn!(
                used = memory.used,
                budget = memory.budget,
                "the data is larger than the memory budget: writes are refused until deletes bring it under"
            );
        }
        let committer = committer::Committer {
            log: log.clone(),
            dir: dir.to_owned(),
            segment,
            generation,
            durability: config.durability,
            store: Arc::downgrade(&memory),
            snapshot_log_size: config.snapshot_log_size,
            log_bytes: recovered.log_bytes,
            earlier_log_bytes: 0,
            snapshot_size: recovered.snapshot_size,
            written: log.appended(),
            lock,
        };
        let committer = std::thread::Builder::new()
            .name("qkv-committer".into())
            .spawn(move || committer.run())
            .map_err(|e| StorageError::Backend(format!("cannot start the committer thread: {e}")))?;
        let closed = StoreClosed { committer: Arc::new(Mutex::new(Some(committer))) };
        Ok(DiskStore { memory, log, closed, _temporary: None })
    }

    /// Cuts the last log segment of `dir` where it is damaged, when whole records follow the damage
    /// (which [`DiskStore::open`] refuses: a crash does not leave that), keeping the bytes it cuts in
    /// a file beside the segment (`recovery::repair`). For `qkv repair`; run it on a directory no
    /// server has open.
    pub fn repair(dir: &Path) -> StorageResult<Repaired> {
        recovery::repair(dir).map_err(io_error("cannot repair the data in", dir))
    }

    /// Serves the store from the current runtime, which `idle` hears from: each batch is committed
    /// once the runtime has handled the requests that came with it (or after the commit wait), and
    /// the writers and readers a commit releases are woken by one task on the runtime
    /// (`Log::relay_on_runtime`). Call from within that runtime, which must outlive every request
    /// to the store. One signal serves one store: a second store given the same signal is not
    /// batched.
    pub fn attach_runtime(&self, idle: &RuntimeIdle) {
        self.log.relay_on_runtime();
        if idle.0.set(Arc::downgrade(&self.log)).is_ok() {
            self.log.batch_until_idle();
        }
    }

    /// Keeps the store's data in memory after the store itself is dropped (its log closes and its
    /// committer finishes as usual). A process about to exit forgets this handle, so that the data is
    /// never freed entry by entry, which took 28 s for 20 million keys; the operating system takes the
    /// memory back at once.
    pub fn retain_memory(&self) -> RetainedMemory {
        RetainedMemory(self.memory.clone())
    }

    /// A handle that completes once this store has been dropped and its committer has made every write
    /// it acknowledged durable and stopped.
    pub fn closed(&self) -> StoreClosed {
        self.closed.clone()
    }

    /// [`DiskStore::open`] for tests, waiting (at most 10 s) while the directory's lock is busy. Other
    /// tests of the binary start Redis servers and redis-cli, and a child process holds a copy of every
    /// descriptor of its parent, the lock's among them, from its fork until its exec: a store closed in
    /// those moments still looks held. (A server starts no process, so `open` need not wait.)
    #[cfg(test)]
    pub(crate) fn open_when_free(dir: &Path, config: DiskConfig) -> StorageResult<Self> {
        when_free(|| Self::open(dir, config))
    }

    /// [`DiskStore::repair`] for tests, waiting while the directory's lock is busy, as
    /// [`DiskStore::open_when_free`] does.
    #[cfg(test)]
    pub(crate) fn repair_when_free(dir: &Path) -> StorageResult<Repaired> {
        when_free(|| Self::repair(dir))
    }

    /// A store in a new temporary directory, removed when the store is dropped.
    #[cfg(test)]
    pub(crate) fn temporary() -> Self {
        Self::temporary_with(test_config())
    }

    /// A store in a new temporary directory, removed when the store is dropped.
    #[cfg(test)]
    pub(crate) fn temporary_with(config: DiskConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = Self::open(dir.path(), config).expect("a store in a temporary directory");
        store._temporary = Some(dir);
        store
    }

    /// Answers with `read` once everything it saw is durable: the versions it returns, and, when it
    /// found a key absent, the last delete.
    async fn answer<R>(&self, read: R, versions: impl Iterator<Item = Option<u64>>) -> StorageResult<R> {
        let mut seen = 0;
        for version in versions {
            seen = seen.max(version.unwrap_or_else(|| self.log.deleted()));
        }
        self.durable(seen, Failure::Read).await?;
        Ok(read)
    }

    /// Waits until the log is durable up to `number`, or, within [`deferring`], hands that wait to
    /// whoever holds the answer.
    async fn durable(&self, number: u64, on_failure: Failure) -> StorageResult<()> {
        if self.log.is_durable(number) || defer(&self.log, number, on_failure) {
            return Ok(());
        }
        Ticket { number, log: self.log.clone(), on_failure }.wait().await
    }

    /// Acknowledges an applied write once it is durable, with everything it saw (all of it appended
    /// before it returned).
    async fn acknowledge<R>(&self, written: R) -> StorageResult<R> {
        self.durable(self.log.appended(), Failure::Write).await?;
        Ok(written)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.log.close();
    }
}

/// The end of a [`DiskStore`]'s committer: see [`DiskStore::closed`]. Dropping the store tells the
/// committer to finish; this waits until it has.
#[derive(Clone)]
pub struct StoreClosed {
    /// Taken by the first waiter, which joins it while holding the lock, so that every other waiter
    /// returns only once the committer has finished too.
    committer: Arc<Mutex<Option<Committing>>>,
}

/// The committer's thread: it ends with what went wrong with the log, if anything (`committer::Committer::run`).
type Committing = JoinHandle<Result<(), String>>;

impl StoreClosed {
    /// Blocks the calling thread until the store has been dropped and every write it acknowledged is
    /// durable. Not for a runtime's worker thread: use [`StoreClosed::wait`] there. `Err` says why some
    /// may not be, or why writes were refused (the log failed), for the first waiter; later ones get
    /// `Ok` once it has returned.
    pub fn wait_blocking(&self) -> Result<(), String> {
        let mut committer = self.committer.lock();
        match committer.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(why))) => Err(why),
            Some(Err(_)) => {
                tracing::error!("the committer thread panicked: writes of its last moments may be lost");
                Err("the data log's committer thread panicked: writes of its last moments may be lost".into())
            }
        }
    }

    /// [`StoreClosed::wait_blocking`] on one of tokio's blocking threads.
    pub async fn wait(self) -> Result<(), String> {
        tokio::task::spawn_blocking(move || self.wait_blocking())
            .await
            .unwrap_or_else(|e| Err(format!("waiting for the data log's committer failed: {e}")))
    }
}

thread_local! {
    /// While [`deferring`] runs: `Some`, holding what was deferred so far.
    static DEFERRED: std::cell::RefCell<Option<Option<Deferred>>> = const { std::cell::RefCell::new(None) };
}

/// What [`deferring`] gathered: the ticket an answer waits for, and who wants to hear when it is sent.
pub struct Deferred {
    pub ticket: Ticket,
    settled: Vec<Box<dyn FnOnce(u32) + Send>>,
}

impl Deferred {
    /// The answer goes out now with `status` (its own, or the error its ticket failed with): tells
    /// those who asked ([`when_settled`]).
    pub fn settle(self, status: u32) {
        for settled in self.settled {
            settled(status);
        }
    }
}

/// Within [`deferring`]: adds `number` to the ticket and says so (the caller answers without waiting).
fn defer(log: &Arc<Log>, number: u64, on_failure: Failure) -> bool {
    DEFERRED.with(|deferred| match &mut *deferred.borrow_mut() {
        Some(deferred) => {
            let this = Ticket { number, log: log.clone(), on_failure };
            *deferred = Some(match deferred.take() {
                Some(before) => Deferred { ticket: before.ticket.merge(this), settled: before.settled },
                None => Deferred { ticket: this, settled: Vec::new() },
            });
            true
        }
        None => false,
    })
}

/// Within [`deferring`], once the store has deferred an answer: `settled` is called with the status the
/// answer goes out with, when its holder sends it ([`Deferred::settle`]), and dropped if it never does.
/// Otherwise (nothing deferred: the answer is final as it is) `settled` is given back. The request
/// metrics time an answer to when it may be sent, and count the error it may become.
pub fn when_settled<F: FnOnce(u32) + Send + 'static>(settled: F) -> Result<(), F> {
    DEFERRED.with(|deferred| match &mut *deferred.borrow_mut() {
        Some(Some(deferred)) => {
            deferred.settled.push(Box::new(settled));
            Ok(())
        }
        _ => Err(settled),
    })
}

/// Runs `poll` (one poll of a request's future) letting the disk store answer at once what it would
/// otherwise answer only once the log is durable: what that answer must wait for comes back as a
/// ticket. Whoever holds the answer must not send it before [`Ticket::wait`] succeeds, and sends
/// the error it returns instead if it fails, then calls [`Deferred::settle`]. A connection that answers
/// in order (the TCP pipeline) so waits once for all its answers instead of once in each request's
/// future.
pub fn deferring<R>(poll: impl FnOnce() -> R) -> (R, Option<Deferred>) {
    let outer = DEFERRED.with(|deferred| deferred.borrow_mut().replace(None));
    let polled = poll();
    let deferred = DEFERRED.with(|deferred| std::mem::replace(&mut *deferred.borrow_mut(), outer)).flatten();
    (polled, deferred)
}

/// What an answer held for a ticket becomes if the log fails first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// A read's: nothing was changed, and the answer is not sent (503, not executed).
    Read,
    /// A write's: it was applied in memory and may or may not be on disk (504).
    Write,
}

impl Failure {
    /// The error an answer becomes when the log fails for `why`.
    fn error(self, why: String) -> StorageError {
        let message = format!("the data log cannot be written ({why}); restart the server");
        match self {
            Failure::Read => StorageError::Unavailable(message),
            Failure::Write => StorageError::Uncertain(message),
        }
    }
}

/// What an answer must wait for before it is sent: see [`deferring`].
#[derive(Clone)]
pub struct Ticket {
    number: u64,
    log: Arc<Log>,
    on_failure: Failure,
}

impl Ticket {
    pub fn is_durable(&self) -> bool {
        self.log.is_durable(self.number)
    }

    /// Waits until the answer may be sent; `Err` is the error to send instead.
    pub async fn wait(self) -> Result<(), StorageError> {
        self.log.durable(self.number).await.map_err(|why| self.on_failure.error(why))
    }

    /// One ticket for both answers: the later number, and a write's failure if either was a write.
    fn merge(self, other: Ticket) -> Ticket {
        let on_failure = match (self.on_failure, other.on_failure) {
            (Failure::Read, Failure::Read) => Failure::Read,
            _ => Failure::Write,
        };
        Ticket { number: self.number.max(other.number), log: self.log, on_failure }
    }
}

/// For tests of what holds answers for tickets (the TCP pipeline): a log whose durability the test
/// moves by hand, with no store and no committer.
#[cfg(test)]
pub(crate) struct ManualLog(Arc<Log>);

#[cfg(test)]
impl ManualLog {
    pub(crate) fn new() -> Self {
        ManualLog(Arc::new(Log::new(0, Duration::ZERO)))
    }

    /// Within [`deferring`]: defers the answer being produced until record `number` is durable, as a
    /// disk write's first poll does. False outside `deferring`.
    pub(crate) fn defer(&self, number: u64) -> bool {
        defer(&self.0, number, Failure::Write)
    }

    /// Every record up to `number` is durable now.
    pub(crate) fn made_durable(&self, number: u64) {
        self.0.made_durable(number);
    }
}

/// A temporary data directory: only tests make one (tempfile is a test dependency).
#[cfg(test)]
type TemporaryDir = tempfile::TempDir;
#[cfg(not(test))]
type TemporaryDir = std::convert::Infallible;

fn versions_of<'a>(
    found: impl IntoIterator<Item = &'a Option<Versioned>>,
) -> impl Iterator<Item = Option<u64>> {
    found.into_iter().map(|found| found.as_ref().map(|v| v.version))
}

impl Storage for DiskStore {
    type Scan = DiskScan;

    /// A write is applied to memory, its records appended, on its first poll (up to
    /// `ORDERED_WRITE_KEYS` keys: the memory store's first batch); only then does it wait.
    const APPLIES_WRITES_IN_ISSUE_ORDER: bool = true;

    fn usage(&self) -> StorageUsage {
        self.memory.usage()
    }

    async fn health(&self) -> Result<(), String> {
        self.log.writable().map_err(|e| e.to_string())
    }

    fn broken(&self) -> Option<String> {
        self.log.writable().err().map(|e| e.to_string())
    }

    async fn get(&self, table: &str, key: &str) -> StorageResult<Option<Versioned>> {
        let found = self.memory.get(table, key).await?;
        let version = found.as_ref().map(|v| v.version);
        self.answer(found, std::iter::once(version)).await
    }

    async fn get_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<Option<Versioned>>> {
        let found = self.memory.get_many(table, keys).await?;
        let versions: Vec<_> = versions_of(&found).collect();
        self.answer(found, versions.into_iter()).await
    }

    async fn versions(&self, table: &str, keys: &[String]) -> StorageResult<Vec<u64>> {
        let found = self.memory.versions(table, keys).await?;
        let versions: Vec<_> = found.iter().map(|&v| (v != 0).then_some(v)).collect();
        self.answer(found, versions.into_iter()).await
    }

    async fn set(
        &self,
        table: &str,
        key: &str,
        value: Value,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        self.log.writable()?;
        let written = self.memory.set(table, key, value, expected_version).await?;
        self.acknowledge(written).await
    }

    async fn set_many(&self, table: &str, pairs: Vec<(String, Value)>) -> StorageResult<Vec<WriteOutcome>> {
        self.log.writable()?;
        let written = self.memory.set_many(table, pairs).await?;
        self.acknowledge(written).await
    }

    async fn delete(
        &self,
        table: &str,
        key: &str,
        expected_version: Option<u64>,
    ) -> StorageResult<WriteOutcome> {
        self.log.writable()?;
        let written = self.memory.delete(table, key, expected_version).await?;
        self.acknowledge(written).await
    }

    async fn delete_many(&self, table: &str, keys: &[String]) -> StorageResult<Vec<WriteOutcome>> {
        self.log.writable()?;
        let written = self.memory.delete_many(table, keys).await?;
        self.acknowledge(written).await
    }

    async fn scan(&self, table: &str, after: Option<&str>) -> StorageResult<DiskScan> {
        Ok(DiskScan { scan: self.memory.scan(table, after).await?, log: self.log.clone() })
    }
}

/// A scan of the memory store whose pages are answered once what they hold is durable.
pub struct DiskScan {
    scan: MemoryScan,
    log: Arc<Log>,
}

impl TableScan for DiskScan {
    async fn next_page(&mut self, limit: PageLimit) -> StorageResult<ScanPage> {
        let page = self.scan.next_page(limit).await?;
        // Keys deleted meanwhile are missing from the page: the last delete must be durable too.
        let seen = page.entries.iter().map(|(_, v)| v.version).fold(self.log.deleted(), u64::max);
        self.log.durable(seen).await.map_err(|why| Failure::Read.error(why))?;
        Ok(page)
    }
}

#[cfg(test)]
fn test_config() -> DiskConfig {
    // A short commit wait: the attached suite commits every write by it, one after another.
    DiskConfig {
        memory_budget: usize::MAX,
        commit_wait: Duration::from_micros(200),
        ..DiskConfig::new(Durability::Strict)
    }
}

/// Runs `attempt` until the lock it takes is not busy (at most 10 s): see [`DiskStore::open_when_free`].
#[cfg(test)]
fn when_free<T>(mut attempt: impl FnMut() -> StorageResult<T>) -> StorageResult<T> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match attempt() {
            Err(StorageError::Backend(e)) if e.contains(files::LOCK_BUSY) && Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests;
