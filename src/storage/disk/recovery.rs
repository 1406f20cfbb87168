//! Opening a data directory: the newest snapshot, then every log segment after it, replayed in order.
//!
//! The last segment may end in a torn record (the machine stopped during a write): it is cut off there,
//! which loses nothing acknowledged (a write is acknowledged only once every byte up to its record's end
//! is durable). Damage anywhere else (a snapshot, an earlier segment, a missing segment) is not what a
//! crash leaves behind: the store refuses to open and says which file is damaged where, rather than
//! serve data with a hole in it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::files::{self, Listing};
use super::format::{self, Header, LOG_MAGIC, Next, Reader, Record};
use super::snapshot::{self, Store};

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The generation of the log segment to start.
    pub next_generation: u64,
    /// The highest version (or delete's number) found anywhere.
    pub last_version: u64,
    /// Entries in the snapshot loaded.
    pub snapshot_entries: u64,
    pub snapshot_size: u64,
    /// Records replayed from the log, and their segments' bytes.
    pub records: u64,
    pub log_bytes: u64,
    /// Bytes cut off the end of the last segment: a torn record.
    pub torn_bytes: u64,
    /// Bytes cut off the end of the last segment: space written ahead of its records (zeros).
    pub unwritten_bytes: u64,
}

/// Loads the directory's data into `store` (empty, or holding what the import of a redb file put there,
/// which the snapshot replaces).
pub fn recover(dir: &Path, store: &Store) -> io::Result<Recovered> {
    let listing = files::list(dir)?;
    for partial in &listing.partial {
        tracing::info!(file = %partial.display(), "removing a snapshot that was not finished");
        fs::remove_file(partial)?;
    }
    let Listing { mut segments, snapshots, .. } = listing;
    let mut recovered = Recovered::default();
    let base = snapshots.keys().next_back().copied();
    if let Some(generation) = base {
        let loaded = snapshot::load(dir, generation, store)?;
        recovered.last_version = loaded.last_version;
        recovered.snapshot_entries = loaded.entries;
        recovered.snapshot_size = loaded.size;
        // Left by a crash between a snapshot's rename and the removal of what it replaced.
        files::remove_before(dir, generation)?;
        segments.retain(|g, _| *g >= generation);
    }
    // Without a snapshot nothing was ever removed, so the log starts at segment 1.
    let mut expected = Some(base.unwrap_or(1));
    let last = segments.keys().next_back().copied();
    let mut next_generation = base.unwrap_or(1);
    for (generation, path) in &segments {
        if expected.is_some_and(|expected| *generation != expected) {
            return Err(damaged(
                path,
                format!("the segment before it (number {}) is missing", generation - 1),
            ));
        }
        expected = Some(generation + 1);
        let is_last = Some(*generation) == last;
        let Some(replayed) = replay_segment(path, *generation, store, is_last)? else {
            // The last segment was being created: its number is free again.
            break;
        };
        next_generation = generation + 1;
        recovered.last_version = recovered.last_version.max(replayed.last_number);
        recovered.records += replayed.records;
        recovered.log_bytes += replayed.valid_len;
        recovered.torn_bytes += replayed.torn_bytes;
        recovered.unwritten_bytes += replayed.unwritten_bytes;
    }
    recovered.next_generation = next_generation;
    Ok(recovered)
}

fn damaged(path: &Path, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the log segment {} is damaged: {what}", path.display()),
    )
}

struct Replayed {
    records: u64,
    last_number: u64,
    valid_len: u64,
    torn_bytes: u64,
    unwritten_bytes: u64,
}

/// Replays one segment; `None` when it is the last and was being created (it is removed).
fn replay_segment(
    path: &Path,
    generation: u64,
    store: &Store,
    is_last: bool,
) -> io::Result<Option<Replayed>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let header = Header::read(&mut input, LOG_MAGIC)?;
    let Some(header) = header.filter(|header| header.generation == generation) else {
        if is_last && len <= format::HEADER_LEN as u64 {
            // A segment is created with its header and fsynced before any record goes into it: the last
            // one without a whole header was being created when the process stopped, and holds nothing.
            tracing::warn!(file = %path.display(), "removing a log segment that was being created");
            fs::remove_file(path)?;
            files::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            return Ok(None);
        }
        return Err(damaged(path, "its header is not a qkv log segment's of this number".into()));
    };
    let mut reader = Reader::new(input, format::HEADER_LEN as u64, len);
    let replayed = replay(&mut reader, store)?;
    let mut result = Replayed {
        records: replayed.records,
        last_number: replayed.last_number.max(header.last_version),
        valid_len: reader.offset(),
        torn_bytes: 0,
        unwritten_bytes: 0,
    };
    let cut_at = |offset: u64| -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(offset)?;
        file.sync_all()
    };
    match replayed.stop {
        Stop::End => {}
        Stop::Torn { offset, what } if is_last => {
            result.torn_bytes = len - offset;
            tracing::warn!(
                file = %path.display(), offset, bytes = result.torn_bytes, what,
                "the log ends in a torn write (the machine or process stopped during it): cutting it off; no acknowledged write was in it"
            );
            cut_at(offset)?;
        }
        // The space the segment had written ahead when the process stopped without finishing it.
        Stop::Unwritten { offset } if is_last => {
            result.unwritten_bytes = len - offset;
            tracing::debug!(file = %path.display(), offset, bytes = result.unwritten_bytes, "cutting off the log's unwritten space");
            cut_at(offset)?;
        }
        Stop::Unwritten { offset } => {
            return Err(damaged(path, format!("zeros where a record should be, at byte {offset}")));
        }
        Stop::Torn { offset, what } => return Err(damaged(path, format!("{what} at byte {offset}"))),
        Stop::Unknown { offset, what } => {
            return Err(damaged(
                path,
                format!("{what} at byte {offset}: written by another version of qkv? Nothing was cut off"),
            ));
        }
    }
    Ok(Some(result))
}

/// What replaying a segment's records did.
#[derive(Debug, Default, PartialEq)]
pub struct Replay {
    pub records: u64,
    /// The highest version or delete's number replayed.
    pub last_number: u64,
    /// Why replay stopped.
    pub stop: Stop,
}

/// Why replay stopped.
#[derive(Debug, Default, PartialEq)]
pub enum Stop {
    /// At the end, after a whole record.
    #[default]
    End,
    /// At a torn or damaged record (see [`Next::Damaged`]).
    Torn { offset: u64, what: &'static str },
    /// At a whole record that does not belong in a log: unknown, or a snapshot's end.
    Unknown { offset: u64, what: &'static str },
    /// At space written ahead of the records (zeros), from `offset` on.
    Unwritten { offset: u64 },
}

/// Applies every whole record from `reader` to `store`, in order, up to the end or the first record
/// that is not a whole log record.
pub fn replay(reader: &mut Reader<impl Read>, store: &Store) -> io::Result<Replay> {
    let mut replay = Replay::default();
    loop {
        let at = reader.offset();
        replay.stop = match reader.next()? {
            Next::Record(Record::Set { table, key, versioned }) => {
                replay.last_number = replay.last_number.max(versioned.version);
                store.restore(&table, &key, versioned);
                replay.records += 1;
                continue;
            }
            Next::Record(Record::Delete { sequence, table, key }) => {
                replay.last_number = replay.last_number.max(sequence);
                store.forget(&table, &key);
                replay.records += 1;
                continue;
            }
            Next::Record(Record::End { .. }) => Stop::Unknown { offset: at, what: "a snapshot's end record" },
            Next::Unknown { offset } => Stop::Unknown { offset, what: "a record of an unknown kind" },
            Next::End => Stop::End,
            Next::Damaged { offset, what } => Stop::Torn { offset, what },
            Next::Unwritten { offset } => Stop::Unwritten { offset },
        };
        return Ok(replay);
    }
}
