//! Group commit: one thread takes every record appended since its last turn, writes them to the log
//! segment with one `write` and makes them durable with one `fdatasync`, then moves the log's durable
//! mark on, which answers every write that was waiting for it. Records appended during an fsync wait for
//! the next one, so the more writes are in flight, the more share each fsync, as in Redis's
//! `appendfsync always`.
//!
//! The committer also decides when to compact: once the log since the last snapshot has outgrown both
//! `snapshot_log_size` and the last snapshot, it starts a new segment and a thread that writes a
//! snapshot of that generation ([`super::snapshot`]), after which the older segments go.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::files::{self, Segment};
use super::log::Log;
use super::snapshot::{self, Store};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Once it is on disk (fsync). Nothing acknowledged is lost, whatever happens to the process or
    /// the machine.
    Strict,
    /// Once the operating system has it (it survives the process's crash); what it has reaches the disk
    /// within `flush_interval`. A crash of the machine loses at most that much acknowledged time of
    /// writes.
    Relaxed { flush_interval: Duration },
}

/// As the flags say it: `strict`, or `relaxed (flushed every 10ms)`.
impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Strict => f.write_str("strict"),
            Durability::Relaxed { flush_interval } => {
                write!(f, "relaxed (flushed every {flush_interval:?})")
            }
        }
    }
}

/// How long a failed snapshot waits before the next try.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(60);

/// A batch buffer larger than this is not kept for the next batch.
const KEEP_BUFFER: usize = 4 << 20;

pub struct Committer {
    pub log: Arc<Log>,
    pub dir: PathBuf,
    pub segment: Segment,
    pub generation: u64,
    pub durability: Durability,
    /// The store, for snapshots; the committer must not keep it alive.
    pub store: Weak<Store>,
    pub snapshot_log_size: u64,
    /// Log bytes written to the current segment, begun when the last snapshot began (at a start: the
    /// log after the snapshot loaded).
    pub log_bytes: u64,
    /// Log bytes of the segments before the current one that no whole snapshot covers yet: those of
    /// a snapshot being written, or of one that failed (its successor must cover them too).
    pub earlier_log_bytes: u64,
    pub snapshot_size: u64,
    /// The number of the last record written to the log (on disk once the segment is synced).
    pub written: u64,
    /// Held until the committer is done with the directory.
    pub lock: files::DirLock,
}

/// How long the committer may wait for records before it must fsync what it left unsynced (relaxed
/// durability); `None`: until records come. A failed log is never fsynced again (its unsynced writes
/// cannot be made safe), so it waits for records alone: a timeout due at once would spin a core.
pub(super) fn flush_timeout(
    durability: Durability,
    unsynced_since: Option<Instant>,
    failed: bool,
) -> Option<Duration> {
    match (durability, unsynced_since) {
        (Durability::Relaxed { flush_interval }, Some(since)) if !failed => {
            Some(flush_interval.saturating_sub(since.elapsed()))
        }
        _ => None,
    }
}

/// A snapshot being written.
struct Snapshotting {
    thread: JoinHandle<std::io::Result<u64>>,
    cancelled: Arc<AtomicBool>,
}

impl Committer {
    /// Runs until the store closes; then makes everything durable, stops any snapshot and returns.
    /// `Err` says what went wrong with the log on the way, and what of the writes it may have cost.
    pub fn run(mut self) -> Result<(), String> {
        let _fail_on_panic = FailOnPanic(self.log.clone());
        let mut batch = Vec::new();
        let mut unsynced_since: Option<Instant> = None;
        let mut snapshotting: Option<Snapshotting> = None;
        let mut retry_snapshot_at = Instant::now();
        let mut failure: Option<String> = None;
        loop {
            let failed = failure.is_some();
            let timeout = flush_timeout(self.durability, unsynced_since, failed);
            let Some((last, count)) = self.log.take(&mut batch, timeout) else { break };
            let sync_wanted = self.log.take_sync_wanted();
            if failed {
                batch.clear();
                continue;
            }
            // A snapshot written meanwhile is taken in before this commit, so that the writes it
            // answers find the log's figures as the snapshot left them.
            if let Some(running) = snapshotting.take_if(|s| s.thread.is_finished()) {
                match running.thread.join() {
                    Ok(Ok(size)) => {
                        self.snapshot_size = size;
                        // What it covers is compacted: a restart replays the current segment alone.
                        self.earlier_log_bytes = 0;
                        crate::metrics::disk_log(self.log_bytes);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "writing a snapshot failed; the log keeps everything meanwhile");
                        crate::metrics::disk_snapshot_failed();
                        retry_snapshot_at = Instant::now() + SNAPSHOT_RETRY;
                    }
                    Err(_) => {
                        tracing::error!("the snapshot thread panicked; the log keeps everything meanwhile");
                        crate::metrics::disk_snapshot_failed();
                        retry_snapshot_at = Instant::now() + SNAPSHOT_RETRY;
                    }
                }
            }
            if let Err(e) = self.commit(&batch, count, last, &mut unsynced_since, sync_wanted) {
                tracing::error!(error = %e, "writing the data log failed: the store refuses writes from now on");
                self.log.fail(e.to_string());
                failure = Some(format!("writing the data log failed ({e})"));
            }
            batch.clear();
            if batch.capacity() > KEEP_BUFFER {
                batch = Vec::new();
            }

            // Counted from the last whole snapshot: after a failed one, the next is due as soon as
            // its retry time has come.
            let unsnapshotted = self.earlier_log_bytes + self.log_bytes;
            let due = unsnapshotted >= self.snapshot_log_size.max(self.snapshot_size);
            if due && failure.is_none() && snapshotting.is_none() && Instant::now() >= retry_snapshot_at {
                match self.rotate(&mut unsynced_since) {
                    Ok(()) => match self.start_snapshot() {
                        Ok(started) => snapshotting = started,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a snapshot; the log keeps everything meanwhile");
                            crate::metrics::disk_snapshot_failed();
                            retry_snapshot_at = Instant::now() + SNAPSHOT_RETRY;
                        }
                    },
                    // The current segment is whole and durable, and takes appends as before: only the
                    // snapshot waits (a full disk, or out of file descriptors, for a moment).
                    Err(Rotation::NoNewSegment(e)) => {
                        tracing::error!(error = %e, "cannot start a new log segment for a snapshot: the log goes on in the current one, and the snapshot is tried again in a minute");
                        crate::metrics::disk_snapshot_failed();
                        retry_snapshot_at = Instant::now() + SNAPSHOT_RETRY;
                    }
                    Err(Rotation::Unfinished(e)) => {
                        tracing::error!(error = %e, "finishing a log segment failed: the store refuses writes from now on");
                        self.log.fail(e.to_string());
                        failure = Some(format!("finishing a log segment failed ({e})"));
                    }
                }
            }
        }
        if failure.is_none()
            && let Err(e) = self.segment.finish()
        {
            tracing::error!(error = %e, "the last flush failed: writes of the last moments may be lost");
            failure = Some(format!("the last flush of the data log failed ({e})"));
        }
        if let Some(running) = snapshotting {
            running.cancelled.store(true, Ordering::Relaxed);
            let _ = running.thread.join();
        }
        drop(self.lock);
        match (failure, self.durability) {
            (None, _) => Ok(()),
            (Some(what), Durability::Strict) => Err(format!(
                "{what}: every write acknowledged before it is on disk, and the writes since were refused"
            )),
            (Some(what), Durability::Relaxed { .. }) => Err(format!(
                "{what}: writes acknowledged within a flush interval before it may be lost (relaxed durability)"
            )),
        }
    }

    /// Writes `batch` (`count` records, the last numbered `last`) and makes it as durable as the mode
    /// asks, or on disk when `sync_wanted` (a snapshot waits for it); an empty batch only fsyncs what
    /// earlier ones left unsynced (relaxed mode's timer).
    fn commit(
        &mut self,
        batch: &[u8],
        count: usize,
        last: u64,
        unsynced_since: &mut Option<Instant>,
        sync_wanted: bool,
    ) -> std::io::Result<()> {
        if !batch.is_empty() {
            crate::metrics::disk_batch(count);
            if let Err(e) = self.segment.append(batch) {
                if self.segment.salvage_after_failed_append() {
                    self.log.made_synced(self.written);
                }
                return Err(e);
            }
            // Counted before the writes are answered, so that whoever wrote sees them in the figure.
            self.log_bytes += batch.len() as u64;
            crate::metrics::disk_log(self.earlier_log_bytes + self.log_bytes);
        }
        let sync = match self.durability {
            Durability::Strict => true,
            Durability::Relaxed { flush_interval } => {
                // Acknowledged once written: the operating system has it.
                self.log.made_durable(last);
                let since = *unsynced_since.get_or_insert_with(Instant::now);
                since.elapsed() >= flush_interval || sync_wanted
            }
        };
        if sync {
            let started = Instant::now();
            if let Err(e) = self.segment.sync() {
                self.segment.cut_to_synced();
                return Err(e);
            }
            crate::metrics::disk_fsync(started.elapsed());
            *unsynced_since = None;
            self.log.made_synced(last);
        }
        self.written = last;
        Ok(())
    }

    /// Starts the next log segment (after making the current one durable).
    fn rotate(&mut self, unsynced_since: &mut Option<Instant>) -> Result<(), Rotation> {
        // Only the last segment may end in zeros: recovery refuses them anywhere else.
        if let Err(e) = self.segment.finish() {
            self.segment.cut_to_synced();
            return Err(Rotation::Unfinished(e));
        }
        *unsynced_since = None;
        self.log.made_synced(self.written);
        let generation = self.generation + 1;
        match files::create_segment(&self.dir, generation, self.log.appended()) {
            Ok(segment) => self.segment = segment,
            Err(e) => {
                // The current segment may go on only while it is the last: a restart takes any later
                // one for the last, and the current one's end (a torn write, after a crash) for damage.
                // What part of the new one was made is removed; a name taken by something else (the
                // creation found it there) leaves nothing to go on in.
                let path = files::segment(&self.dir, generation);
                let in_the_way = match e.kind() == std::io::ErrorKind::AlreadyExists {
                    true => Err(std::io::Error::other("something else has its name")),
                    false if path.exists() => {
                        std::fs::remove_file(&path).and_then(|()| files::sync_dir(&self.dir))
                    }
                    false => Ok(()),
                };
                return match in_the_way {
                    Ok(()) => Err(Rotation::NoNewSegment(e)),
                    Err(left) => Err(Rotation::Unfinished(std::io::Error::new(
                        left.kind(),
                        format!("cannot start {} ({e}), and it is in the way: {left}", path.display()),
                    ))),
                };
            }
        }
        self.generation = generation;
        self.earlier_log_bytes += std::mem::take(&mut self.log_bytes);
        Ok(())
    }

    /// Starts a thread that writes the snapshot of the current segment's generation.
    fn start_snapshot(&self) -> std::io::Result<Option<Snapshotting>> {
        let Some(store) = self.store.upgrade() else { return Ok(None) };
        let cancelled = Arc::new(AtomicBool::new(false));
        let (dir, stop, generation) = (self.dir.clone(), cancelled.clone(), self.generation);
        let thread = std::thread::Builder::new().name("qkv-snapshot".into()).spawn(move || {
            let started = Instant::now();
            let size = snapshot::write(&dir, generation, &store, &stop)?;
            let elapsed = started.elapsed();
            tracing::info!(
                generation,
                bytes = size,
                elapsed_ms = elapsed.as_millis() as u64,
                "snapshot written"
            );
            crate::metrics::disk_snapshot_written(size, elapsed);
            Ok(size)
        })?;
        Ok(Some(Snapshotting { thread, cancelled }))
    }
}

/// Why a rotation to the next log segment failed.
enum Rotation {
    /// The current segment could not be finished (its fsync failed): nothing more can be made durable.
    Unfinished(std::io::Error),
    /// The next segment could not be made: the current one goes on taking appends.
    NoNewSegment(std::io::Error),
}

/// Fails the log if the committer thread panics, so that writers waiting for it are answered.
struct FailOnPanic(Arc<Log>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail("the committer thread panicked".into());
        }
    }
}
