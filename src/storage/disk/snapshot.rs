//! Snapshots: every entry of the store written to one file, so that the log before it can go.
//!
//! A snapshot of generation g is started right after log segment g is, and is taken while writes go on
//! (a fuzzy snapshot): each entry is read as it is at some moment after segment g began. Replaying
//! segments g, g+1, … over it gives the exact state, because a key's records are replayed in the order
//! its writes were made, and a key with no record from segment g on was read as it was throughout.
//!
//! It is written to `qkv-snapshot.g.tmp`, fsynced, renamed to `qkv-snapshot.g` and the directory
//! fsynced; only then are older segments and snapshots removed. A crash at any moment leaves either the
//! old snapshot with every segment after it, or the new one with every segment after it.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::files;
use super::format::{self, Header, Next, Reader, Record, SNAPSHOT_MAGIC};
use super::log::Log;
use super::recovery::RESTORE;
use crate::pb::Versioned;
use crate::storage::memory::{MemoryStore, Visitor};

/// Bytes encoded before they are written to the file.
const CHUNK: usize = 1 << 20;

/// Bytes written between two syncs of the snapshot file. Left to the end, the sync of a large snapshot
/// wrote hundreds of megabytes at once, and the log's fsyncs (every durable write's) queued behind it
/// for seconds; synced as it goes, a log fsync waits for at most this much, and stopping the store
/// during a snapshot waits for at most this much too.
const SYNC_EVERY: u64 = 8 << 20;

pub type Store = MemoryStore<Arc<Log>>;

/// Writes the snapshot of `generation` (whose log segment has been started) and removes what it makes
/// unnecessary. Returns its size. Stops early, removing the partial file, when `cancelled` is set.
pub fn write(dir: &Path, generation: u64, store: &Store, cancelled: &AtomicBool) -> io::Result<u64> {
    let partial = files::partial_snapshot(dir, generation);
    let done = files::snapshot(dir, generation);
    // Errors name the file: "Is a directory (os error 21)" alone sends an operator nowhere.
    let named = |doing: String| move |e: io::Error| io::Error::new(e.kind(), format!("{doing}: {e}"));
    let written = write_partial(&partial, generation, store, cancelled)
        .map_err(named(format!("writing {}", partial.display())))
        .and_then(|size| {
            // The walk may have seen writes whose records are not on disk yet (relaxed durability
            // acknowledges them before). Renamed before they are, a crash could leave the snapshot with
            // a write but the log without an earlier one it follows: a state no moment of the store had.
            wait_until_synced(store.journal(), store.journal().appended(), cancelled)?;
            fs::rename(&partial, &done).map_err(named(format!(
                "renaming {} to {}",
                partial.display(),
                done.display()
            )))?;
            files::sync_dir(dir).map_err(named(format!("syncing the directory {}", dir.display())))?;
            Ok(size)
        });
    if written.is_err() {
        let _ = fs::remove_file(&partial);
        return written;
    }
    files::remove_before(dir, generation)?;
    written
}

/// Blocks until the log is on disk up to `number` (a few fsyncs at most: with relaxed durability it
/// asks the committer for one rather than wait for --flush-interval; this thread is not a runtime's).
pub(super) fn wait_until_synced(log: &Log, number: u64, cancelled: &AtomicBool) -> io::Result<()> {
    while !log.is_synced(number) {
        if cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "the store is closing"));
        }
        log.writable().map_err(io::Error::other)?;
        log.want_sync();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

pub(crate) fn write_partial(
    path: &Path,
    generation: u64,
    store: &Store,
    cancelled: &AtomicBool,
) -> io::Result<u64> {
    let header = Header { magic: SNAPSHOT_MAGIC, generation, last_version: store.journal().appended() };
    let mut writer = Writer {
        file: files::private().write(true).create(true).truncate(true).open(path)?,
        buffer: Vec::with_capacity(CHUNK + CHUNK / 4),
        count: 0,
        size: 0,
        unsynced: 0,
        cancelled,
    };
    writer.buffer.extend_from_slice(&header.encode());
    store.walk(&mut writer)?;
    format::encode_end(&mut writer.buffer, writer.count);
    writer.flush()?;
    writer.file.sync_all()?;
    Ok(writer.size)
}

struct Writer<'a> {
    file: File,
    buffer: Vec<u8>,
    count: u64,
    size: u64,
    /// Bytes written since the file was last synced.
    unsynced: u64,
    cancelled: &'a AtomicBool,
}

impl Writer<'_> {
    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buffer)?;
        self.size += self.buffer.len() as u64;
        self.unsynced += self.buffer.len() as u64;
        self.buffer.clear();
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }
}

impl Visitor for Writer<'_> {
    fn entry(&mut self, table: &str, key: &str, versioned: &Versioned) {
        format::encode_set(&mut self.buffer, versioned.version, table, key, &versioned.value);
        self.count += 1;
    }

    fn stopped(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    fn between(&mut self) -> io::Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "the store is closing"));
        }
        if self.buffer.len() >= CHUNK { self.flush() } else { Ok(()) }
    }
}

/// What loading a snapshot found.
pub struct Loaded {
    pub entries: u64,
    /// The highest version in it, or handed out before it was started.
    pub last_version: u64,
    pub size: u64,
}

/// Loads the snapshot of `generation` into `store`. A snapshot is whole (it was renamed into place only
/// once fsynced), so anything amiss in it is damage, reported with the file and the offset.
pub fn load(dir: &Path, generation: u64, store: &Store) -> io::Result<Loaded> {
    walk(dir, generation, |table, key, versioned| store.restore(&table, &key, versioned))
}

/// Reads the snapshot of `generation` through, as [`load`] would, keeping nothing: whether it is whole.
pub fn check(dir: &Path, generation: u64) -> io::Result<Loaded> {
    walk(dir, generation, |_, _, _| {})
}

/// Reads the snapshot of `generation`, giving each entry to `each`.
fn walk(dir: &Path, generation: u64, each: impl FnMut(String, String, Versioned)) -> io::Result<Loaded> {
    let path = files::snapshot(dir, generation);
    walk_file(&path, generation, each).map_err(files::naming(&path))
}

fn walk_file(
    path: &Path,
    generation: u64,
    mut each: impl FnMut(String, String, Versioned),
) -> io::Result<Loaded> {
    let damaged = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the snapshot {} is damaged: {what}. {RESTORE}", path.display()),
        )
    };
    let file = files::open(path)?;
    let size = file.metadata()?.len();
    let mut input = BufReader::with_capacity(CHUNK, file);
    let header = match Header::read(&mut input, SNAPSHOT_MAGIC)? {
        Some(header) if header.generation == generation => header,
        _ => {
            return Err(damaged(
                "its header is not a qkv snapshot's of this generation, or is damaged".into(),
            ));
        }
    };
    let mut reader = Reader::new(input, format::HEADER_LEN as u64, size);
    let mut loaded = Loaded { entries: 0, last_version: header.last_version, size };
    loop {
        match reader.next()? {
            Next::Record(Record::Set { table, key, versioned }) => {
                loaded.last_version = loaded.last_version.max(versioned.version);
                loaded.entries += 1;
                each(table, key, versioned);
            }
            Next::Record(Record::End { count }) if count == loaded.entries && reader.offset() == size => {
                return Ok(loaded);
            }
            Next::Record(Record::End { .. }) => {
                return Err(damaged(format!(
                    "its end at byte {} does not match what precedes it",
                    reader.offset()
                )));
            }
            Next::Record(Record::Delete { .. }) => {
                return Err(damaged(format!("a delete before byte {}", reader.offset())));
            }
            Next::End => return Err(damaged("it ends without its end record".into())),
            Next::Damaged { offset, what } => return Err(damaged(format!("{what} at byte {offset}"))),
            Next::Unwritten { offset } => return Err(damaged(format!("zeros at byte {offset}"))),
            Next::Unknown { offset } => {
                return Err(damaged(format!("a record this version of qkv does not know at byte {offset}")));
            }
        }
    }
}
