//! Opening a data directory: the newest snapshot, then every log segment after it, replayed in order.
//!
//! The last segment may end in a torn record (the machine stopped during a write): it is cut off there,
//! which loses nothing acknowledged (a write is acknowledged only once every byte up to its record's end
//! is durable), unless a whole record follows it: a strict log's crash tears only the last write, so
//! that is damage, refused like damage elsewhere until `qkv repair` ([`repair`]) cuts it (a relaxed
//! log is cut so at once: [`settle_damaged_tail`]). Damage anywhere else (a snapshot, an earlier
//! segment, a missing segment) is not what a crash leaves behind: the store refuses to open and says
//! which file is damaged where, rather than serve data with a hole in it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::committer::Durability;
use super::files::{self, Listing};
use super::format::{self, Header, LOG_MAGIC, Next, Reader, Record};
use super::snapshot::{self, Store};

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The generation of the log segment to start.
    pub next_generation: u64,
    /// The last segment, when it holds no record (a start, or starts, with no write since): the store
    /// goes on in it rather than start another, so that restarts do not pile up empty segments that
    /// every later recovery must open.
    pub empty_last_segment: Option<u64>,
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
/// `durability` is the mode the store opens in, taken for the one its log was written in: a relaxed log
/// may end in damage that a crash left (see [`settle_damaged_tail`]).
pub fn recover(dir: &Path, store: &Store, durability: Durability) -> io::Result<Recovered> {
    let listing = files::list(dir)?;
    for partial in &listing.partial {
        tracing::info!(file = %partial.display(), "removing a snapshot that was not finished");
        fs::remove_file(partial)?;
    }
    let Listing { mut segments, snapshots, damage_kept, .. } = listing;
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
        if let Some(missing) = missing_after_snapshot(dir, generation, &segments) {
            return Err(missing);
        }
    }
    // Without a snapshot nothing was ever removed, so the log starts at segment 1.
    let mut expected = base.unwrap_or(1);
    let last = segments.keys().next_back().copied();
    for (generation, path) in &segments {
        if *generation != expected {
            // The first segment of a log: what comes before it is a snapshot, which is missing too.
            let missing = match (base, expected == base.unwrap_or(1)) {
                (None, true) if expected < *generation => {
                    "the segments before it, or the snapshot that replaced them, are missing".to_owned()
                }
                // Numbered from 1: a segment 0 is none of the store's.
                _ if *generation == 0 => {
                    "the store numbers its segments from 1: a file of another kind? (if it is none of \
                     this store's, remove it)"
                        .to_owned()
                }
                _ => format!("the segment before it (number {}) is missing", generation - 1),
            };
            return Err(damaged(path, Mend::Backup, missing));
        }
        expected = generation + 1;
        let is_last = Some(*generation) == last;
        let replayed = replay_segment(path, *generation, store, is_last, durability, recovered.last_version)
            .map_err(files::naming(path))
            .map_err(|e| match !is_last && only_headers_after(&segments, *generation) {
                true => mendable_by_repair(e, dir),
                false => e,
            })?;
        recovered.last_version = recovered.last_version.max(replayed.last_number);
        recovered.records += replayed.records;
        recovered.log_bytes += replayed.valid_len;
        recovered.torn_bytes += replayed.torn_bytes;
        recovered.unwritten_bytes += replayed.unwritten_bytes;
        // Not one whose damage was kept beside it, now or by an earlier start or `qkv repair`.
        if is_last && replayed.records == 0 && !replayed.kept_damage && !damage_kept.contains(generation) {
            recovered.empty_last_segment = Some(*generation);
        }
    }
    recovered.next_generation = expected;
    Ok(recovered)
}

/// Why a segment's header is refused: not a log segment's, another number's, or its version damaged.
const NOT_THIS_SEGMENTS_HEADER: &str = "its header is not a qkv log segment's of this number, or is damaged";

/// The segment a snapshot of `generation` is followed by, when it is missing from `segments`. Segment
/// N is made, durable, before snapshot N is begun (and the import of a redb file makes segment 1 before
/// it names the import done), so a snapshot without it has lost the writes since: removed by hand, say,
/// or left out of a copy.
fn missing_after_snapshot(
    dir: &Path,
    generation: u64,
    segments: &BTreeMap<u64, PathBuf>,
) -> Option<io::Error> {
    if segments.contains_key(&generation) {
        return None;
    }
    let what = format!(
        "the log segment {} is missing: the snapshot {} is followed by it, and it holds the writes made \
         since (was it removed, or left out of a copy?). {RESTORE}",
        files::segment(dir, generation).display(),
        files::snapshot(dir, generation).display(),
    );
    Some(io::Error::new(io::ErrorKind::InvalidData, what))
}

/// What to do about damage that `qkv repair` does not mend.
pub(super) const RESTORE: &str = "qkv repair mends only damage in the last log segment: \
    restore the directory from a backup (docs/OPERATIONS.md)";

/// Whether every segment of `segments` after `generation` holds its header alone (the state a restart
/// with no write since leaves): then damage in `generation` costs no more to cut than damage in the last
/// segment would, and `qkv repair` cuts it.
fn only_headers_after(segments: &BTreeMap<u64, PathBuf>, generation: u64) -> bool {
    segments
        .range(generation + 1..)
        .all(|(_, path)| fs::metadata(path).is_ok_and(|m| m.len() == format::HEADER_LEN as u64))
}

/// `damage` (in a segment followed by headers alone: [`only_headers_after`]) saying that `qkv repair`
/// mends it, where it said only a backup would, if a cut mends it; other errors as they are.
fn mendable_by_repair(damage: io::Error, dir: &Path) -> io::Error {
    match found(&damage) {
        Some(Damage { path, what, mend: Mend::Cut }) => Damage {
            path: path.clone(),
            what: format!(
                "{what}. Every later segment holds no record (a restart with no write since), so `qkv repair \
                 --data-dir {}` cuts this one at the damage as it would the last, keeping the bytes it cuts \
                 in a file beside it; the writes in them are lost to the store",
                dir.display()
            ),
            mend: Mend::Said,
        }
        .into(),
        _ => damage,
    }
}

/// Whether `error` (found reading a segment) is damage of a kind cutting the segment there mends.
fn a_cut_mends(error: &io::Error) -> bool {
    matches!(found(error), Some(Damage { mend: Mend::Cut, .. }))
}

/// The damage `error` reports, if it is damage in a segment.
fn found(error: &io::Error) -> Option<&Damage> {
    error.get_ref()?.downcast_ref()
}

/// How damage by a whole record this version does not know is said.
const NOT_KNOWN: &str = "a whole record it does not know";

/// Damage found in the log segment at `path`, and what mends it: kept typed in the `io::Error` (of
/// kind `InvalidData`) that reports it, so that what decides whether `qkv repair` may cut it does not
/// read its message back.
#[derive(Debug)]
struct Damage {
    path: PathBuf,
    what: String,
    mend: Mend,
}

/// What mends damage in a segment.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mend {
    /// A record damaged, or zeros where one should be: a cut there mends it, which `qkv repair` makes
    /// in the last segment, or in one followed by headers alone; elsewhere, a backup ([`RESTORE`]).
    Cut,
    /// Only a backup ([`RESTORE`]): the segment's header damaged, a segment missing, or a whole record
    /// of a kind this version does not know (written by another version: a cut would lose it).
    Backup,
    /// `what` says what to do.
    Said,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the log segment {} is damaged: {}", self.path.display(), self.what)?;
        match self.mend {
            Mend::Cut | Mend::Backup => write!(f, ". {RESTORE}"),
            Mend::Said => Ok(()),
        }
    }
}

impl std::error::Error for Damage {}

impl From<Damage> for io::Error {
    fn from(damage: Damage) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, damage)
    }
}

/// Damage in the segment at `path`, `mend` saying what mends it.
fn damaged(path: &Path, mend: Mend, what: impl Into<String>) -> io::Error {
    Damage { path: path.to_owned(), what: what.into(), mend }.into()
}

#[derive(Default)]
struct Replayed {
    records: u64,
    last_number: u64,
    valid_len: u64,
    torn_bytes: u64,
    unwritten_bytes: u64,
    /// Damage was cut off and kept beside the segment (`cut_keeping`): the segment is not written
    /// again, so that a later cut at the same byte cannot replace what was kept.
    kept_damage: bool,
}

/// Replays one segment. The last one, if it was being created, is finished as an empty segment whose
/// header says `last_version`.
fn replay_segment(
    path: &Path,
    generation: u64,
    store: &Store,
    is_last: bool,
    durability: Durability,
    last_version: u64,
) -> io::Result<Replayed> {
    let file = files::open(path)?;
    // What the disk holds, not what a failed writeback left in the cache.
    files::drop_cached(&file);
    let len = file.metadata()?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let header = Header::read(&mut input, LOG_MAGIC)?;
    let Some(header) = header.filter(|header| header.generation == generation) else {
        if is_last && len <= format::HEADER_LEN as u64 {
            // A segment is created with its header and fsynced before any record goes into it: the last
            // one without a whole header was being created when the process stopped, and holds nothing.
            // It is finished, not removed: a snapshot's segment is never missing but by damage.
            tracing::warn!(file = %path.display(), "finishing a log segment that was being created");
            files::finish_segment(path, generation, last_version)?;
            return Ok(Replayed { valid_len: format::HEADER_LEN as u64, ..Replayed::default() });
        }
        return Err(damaged(path, Mend::Backup, NOT_THIS_SEGMENTS_HEADER));
    };
    let mut reader = Reader::new(input, format::HEADER_LEN as u64, len);
    let replayed = replay(&mut reader, store)?;
    let mut result = Replayed {
        records: replayed.records,
        last_number: replayed.last_number.max(header.last_version),
        valid_len: reader.offset(),
        torn_bytes: 0,
        unwritten_bytes: 0,
        kept_damage: false,
    };
    let cut_at = |offset: u64| -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(offset)?;
        file.sync_all()
    };
    match replayed.stop {
        Stop::End => {}
        Stop::Torn { offset, what } if is_last => {
            if let Some(cut) = settle_damaged_tail(path, offset, len, what, replayed.last_number, durability)?
            {
                return Ok(Replayed {
                    kept_damage: true,
                    last_number: result.last_number.max(cut),
                    ..result
                });
            }
            // The zeros the segment had written ahead follow the torn bytes: told apart, so that the
            // warning does not count a megabyte of them as what the crash cut.
            let written = written_end(path, offset, len)?;
            (result.torn_bytes, result.unwritten_bytes) = (written - offset, len - written);
            tracing::warn!(
                file = %path.display(), offset, bytes = result.torn_bytes, zeros_after = result.unwritten_bytes, what,
                "the log ends in a torn write (the machine or process stopped during it): cutting it off; no acknowledged write was in it, unless the disk itself damaged its last record"
            );
            cut_at(offset)?;
        }
        // The space the segment had written ahead when the process stopped without finishing it.
        Stop::Unwritten { offset } if is_last => {
            let what = "zeros where a record should be";
            if let Some(cut) = settle_damaged_tail(path, offset, len, what, replayed.last_number, durability)?
            {
                return Ok(Replayed {
                    kept_damage: true,
                    last_number: result.last_number.max(cut),
                    ..result
                });
            }
            result.unwritten_bytes = len - offset;
            tracing::debug!(file = %path.display(), offset, bytes = result.unwritten_bytes, "cutting off the log's unwritten space");
            cut_at(offset)?;
        }
        Stop::Unwritten { offset } => {
            return Err(damaged(
                path,
                Mend::Cut,
                format!("zeros where a record should be, at byte {offset}"),
            ));
        }
        Stop::Torn { offset, what } => {
            return Err(damaged(path, Mend::Cut, format!("{what} at byte {offset}")));
        }
        Stop::Unknown { offset, what } => {
            return Err(damaged(
                path,
                Mend::Said,
                format!("{what} at byte {offset}: written by another version of qkv? Nothing was cut off"),
            ));
        }
    }
    Ok(result)
}

/// Where the bytes written in `path` from `offset` to `len` end: after its last byte that is not zero
/// (`offset` if all are zeros, the space a segment writes ahead of its records). Read backwards a
/// window at a time: the tail may be long.
fn written_end(path: &Path, offset: u64, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const WINDOW: u64 = 64 << 10;
    let file = files::open(path)?;
    let mut window = vec![0u8; WINDOW as usize];
    let mut end = len;
    while end > offset {
        let start = end.saturating_sub(WINDOW).max(offset);
        let bytes = &mut window[..(end - start) as usize];
        file.read_exact_at(bytes, start)?;
        if let Some(last) = bytes.iter().rposition(|&b| b != 0) {
            return Ok(start + last as u64 + 1);
        }
        end = start;
    }
    Ok(offset)
}

/// A strict log's committer writes a batch only once the one before it is durable, so a crash tears
/// only the last write: after a torn record (or the zeros a segment writes ahead) come more zeros, the
/// rest of that write, or nothing. A whole record further on says the bytes were damaged after they were
/// written, and the records after the damage may have been acknowledged: the store refuses to open, and
/// cuts nothing, until `qkv repair` has been run. A relaxed log acknowledges writes before they are
/// durable, so a machine's crash may leave several unsynced batches in any state: the tail is cut as it
/// would be by `qkv repair`, keeping the bytes cut in a file beside the segment, with an error logged.
/// Returns the highest number among the whole records it cut, if it cut the tail so (`None`: nothing
/// whole follows, the tail is a torn write's).
fn settle_damaged_tail(
    path: &Path,
    offset: u64,
    len: u64,
    what: &str,
    last_number: u64,
    durability: Durability,
) -> io::Result<Option<u64>> {
    let (found, first_whole) = match whole_record_after(&files::open(path)?, offset, len, last_number)? {
        Scan::Nothing => return Ok(None),
        Scan::Found(at) => (format!("a whole record follows at byte {at}"), Some(at)),
        Scan::GaveUp { hashed } => (
            format!(
                "whether a whole record follows could not be told within {} of checksums",
                bytesize::ByteSize(hashed).display().iec()
            ),
            None,
        ),
    };
    if let Durability::Relaxed { .. } = durability {
        let cut = cut_keeping(path, offset, first_whole)?;
        tracing::error!(
            file = %path.display(), offset, what, %found, saved = %cut.saved.display(),
            "the log is damaged where a crash of the machine may have left it (relaxed durability acknowledges writes before they are durable): cut there, the writes after it lost to the store, the bytes cut kept"
        );
        return Ok(Some(cut.highest));
    }
    Err(damaged(
        path,
        Mend::Said,
        format!(
            "{what} at byte {offset}, yet {found}: damage, not a write torn by a crash, and the records \
             after it may have been acknowledged. Nothing was cut off; `qkv repair --data-dir {}` cuts \
             the log at byte {offset} and keeps the bytes it cuts in a file beside it",
            path.parent().unwrap_or(Path::new(".")).display(),
        ),
    ))
}

/// What looking for a whole record past damage found.
#[derive(Debug, PartialEq)]
pub(super) enum Scan {
    /// Nothing whole: zeros, pieces of records, or nothing at all.
    Nothing,
    /// A whole record at this offset.
    Found(u64),
    /// The checksums it may compute ran out first, having hashed this many bytes.
    GaveUp { hashed: u64 },
}

/// Bytes [`whole_record_after`] may hash, at least; or 8 times the bytes it looks through, if more.
/// Chance candidates are few, but a value can be made of fake record heads, each claiming a body up to
/// the end of the file: checking them all would take time quadratic in the tail.
const SCAN_BUDGET: u64 = 256 << 20;

/// Where the first whole record after byte `from` of a segment of `len` bytes starts: a head that
/// [`format::candidate`] finds plausible, numbered above `last_number` (a log's numbers grow), whose
/// body's checksum holds. Reads the file a megabyte at a time; zeros, the usual tail, are passed over
/// at once.
pub(super) fn whole_record_after(file: &File, from: u64, len: u64, last_number: u64) -> io::Result<Scan> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let allowed = SCAN_BUDGET.max(8 * (len - from));
    let mut budget = allowed;
    let mut window = Vec::with_capacity(CHUNK + format::PEEK);
    let mut start = from + 1;
    while start + format::MIN_RECORD as u64 <= len {
        window.resize((len - start).min((CHUNK + format::PEEK) as u64) as usize, 0);
        file.read_exact_at(&mut window, start)?;
        let candidates = (window.len() + 1 - format::MIN_RECORD).min(CHUNK);
        for i in 0..candidates {
            let at = start + i as u64;
            let peek = &window[i..window.len().min(i + format::PEEK)];
            let Some((length, crc, number)) = format::candidate(peek, len - at) else { continue };
            if number <= last_number {
                continue;
            }
            if length > budget {
                return Ok(Scan::GaveUp { hashed: allowed - budget });
            }
            budget -= length;
            if checksum(file, at + format::RECORD_HEAD as u64, length)? == crc {
                return Ok(Scan::Found(at));
            }
        }
        start += CHUNK as u64;
    }
    Ok(Scan::Nothing)
}

/// The CRC-32 of `length` bytes of `file` from `offset`, read in pieces.
fn checksum(file: &File, mut offset: u64, length: u64) -> io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut hasher = crc32fast::Hasher::new();
    let mut piece = vec![0; length.min(64 << 10) as usize];
    let end = offset + length;
    while offset < end {
        let n = (end - offset).min(piece.len() as u64) as usize;
        file.read_exact_at(&mut piece[..n], offset)?;
        hasher.update(&piece[..n]);
        offset += n as u64;
    }
    Ok(hasher.finalize())
}

/// What `qkv repair` did to a data directory.
#[derive(Debug, PartialEq)]
pub enum Repaired {
    /// The last segment needs no repair: whole, or torn by a crash (which opening the store cuts off).
    Nothing,
    /// The directory is damaged in a way repair does not mend, `what` says where (naming the file):
    /// a snapshot, an earlier segment or a missing one, or the last segment's header or a whole record
    /// of a kind this version does not know.
    Unrepairable { file: PathBuf, what: String },
    /// The last segment was cut at `offset`: damage followed by whole records (the first at
    /// `first_whole`, when the scan could tell). The bytes cut off, `records_after` whole records from
    /// there among them, are in `saved`.
    Cut { segment: PathBuf, offset: u64, first_whole: Option<u64>, records_after: u64, saved: PathBuf },
}

/// Cuts the last log segment of `dir` where it is damaged when whole records follow the damage (the
/// case [`recover`] refuses), after copying the bytes cut off to `<segment>.damaged-at-<offset>` (durable
/// before the cut). The writes in them are lost to the store; the copy is for whoever wants to look.
/// Damage anywhere else (a snapshot, an earlier segment) is not repaired: `qkv serve` names it, and
/// a backup is the way back.
pub fn repair(dir: &Path) -> io::Result<Repaired> {
    let _lock = files::lock(dir)?;
    let listing = files::list(dir)?;
    let (generation, path, is_last) = match damage_before_the_last_segment(dir, &listing)? {
        Before::Unrepairable(unrepairable) => return Ok(unrepairable),
        Before::Mendable { generation, path } => (generation, path, false),
        Before::Whole => {
            // The log after the snapshot, as `recover` reads it (segments before it are left over).
            let base = listing.snapshots.keys().next_back().copied().unwrap_or(1);
            let Some((&generation, path)) = listing.segments.range(base..).next_back() else {
                return match listing.snapshots.is_empty() {
                    true => Err(io::Error::new(io::ErrorKind::NotFound, "it holds no qkv log segment")),
                    false => Ok(Repaired::Nothing),
                };
            };
            (generation, path.clone(), true)
        }
    };
    let file = files::open(&path)?;
    let len = file.metadata()?.len();
    let mut input = BufReader::new(&file);
    let header = Header::read(&mut input, LOG_MAGIC)?.filter(|header| header.generation == generation);
    if header.is_none() {
        if is_last && len <= format::HEADER_LEN as u64 {
            // Being created when the process stopped: `recover` finishes it.
            return Ok(Repaired::Nothing);
        }
        let what = damaged(&path, Mend::Backup, NOT_THIS_SEGMENTS_HEADER).to_string();
        return Ok(Repaired::Unrepairable { file: path, what });
    }
    let mut reader = Reader::new(input, format::HEADER_LEN as u64, len);
    // The records' own numbers, as `recover` takes them: a segment's header is no bound for its records,
    // which may include writes appended before it was created but not yet committed then.
    let mut last_number = 0;
    let offset = loop {
        match reader.next()? {
            Next::Record(Record::Set { versioned, .. }) => last_number = last_number.max(versioned.version),
            Next::Record(Record::Delete { sequence, .. }) => last_number = last_number.max(sequence),
            Next::Damaged { offset, .. } | Next::Unwritten { offset } => break offset,
            Next::End if is_last => return Ok(Repaired::Nothing),
            Next::End => {
                let what =
                    damaged(&path, Mend::Backup, "it ends whole, yet was found damaged (changed meanwhile?)");
                return Ok(Repaired::Unrepairable { file: path, what: what.to_string() });
            }
            Next::Record(Record::End { .. }) | Next::Unknown { .. } => {
                let what = damaged(&path, Mend::Backup, format!("{NOT_KNOWN}, at byte {}", reader.offset()));
                return Ok(Repaired::Unrepairable { file: path, what: what.to_string() });
            }
        }
    };
    let first_whole = match whole_record_after(&file, offset, len, last_number)? {
        // A torn write, which opening the store cuts off: only in the last segment, since one is
        // finished whole before the next is made.
        Scan::Nothing if is_last => return Ok(Repaired::Nothing),
        Scan::Nothing => None,
        Scan::Found(at) => Some(at),
        Scan::GaveUp { .. } => None,
    };
    let cut = cut_keeping(&path, offset, first_whole)?;
    Ok(Repaired::Cut { segment: path, offset, first_whole, records_after: cut.records, saved: cut.saved })
}

/// What [`recover`] would refuse before it reaches the last segment, which repair does not mend: the
/// snapshot it starts from, and every segment after it but the last (each there, in sequence, whole).
/// Reads the snapshot and those segments through, keeping nothing.
fn damage_before_the_last_segment(dir: &Path, listing: &Listing) -> io::Result<Before> {
    let unrepairable = |file: &Path, e: io::Error| match e.kind() {
        io::ErrorKind::InvalidData => {
            Ok(Before::Unrepairable(Repaired::Unrepairable { file: file.to_owned(), what: e.to_string() }))
        }
        _ => Err(e),
    };
    let base = listing.snapshots.keys().next_back().copied();
    if let Some(generation) = base {
        if let Err(e) = snapshot::check(dir, generation) {
            return unrepairable(&files::snapshot(dir, generation), e);
        }
        if let Some(e) = missing_after_snapshot(dir, generation, &listing.segments) {
            return unrepairable(&files::segment(dir, generation), e);
        }
    }
    let segments: Vec<_> = listing.segments.range(base.unwrap_or(1)..).collect();
    let mut expected = base.unwrap_or(1);
    for (position, &(&generation, path)) in segments.iter().enumerate() {
        if generation != expected {
            let what = format!("the segment before it (number {}) is missing", generation - 1);
            return unrepairable(path, damaged(path, Mend::Backup, what));
        }
        expected = generation + 1;
        if position + 1 == segments.len() {
            break;
        }
        match check_segment(path, generation) {
            Ok(()) => {}
            // Damage a cut mends (not a header, nor a record of another version), with nothing after.
            Err(e) if a_cut_mends(&e) && only_headers_after(&listing.segments, generation) => {
                return Ok(Before::Mendable { generation, path: path.clone() });
            }
            Err(e) => return unrepairable(path, e),
        }
    }
    Ok(Before::Whole)
}

/// What [`damage_before_the_last_segment`] found.
enum Before {
    /// No damage before the last segment.
    Whole,
    /// Damage `qkv repair` does not mend.
    Unrepairable(Repaired),
    /// Damage in a segment followed by headers alone ([`only_headers_after`]): mended as the last
    /// segment's would be.
    Mendable { generation: u64, path: PathBuf },
}

/// Reads a segment that is not the last through: an error of kind `InvalidData` if it is not whole.
fn check_segment(path: &Path, generation: u64) -> io::Result<()> {
    let file = files::open(path)?;
    // What the disk holds, not what a failed writeback left in the cache.
    files::drop_cached(&file);
    let len = file.metadata()?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    if Header::read(&mut input, LOG_MAGIC)?.filter(|header| header.generation == generation).is_none() {
        return Err(damaged(path, Mend::Backup, NOT_THIS_SEGMENTS_HEADER));
    }
    let mut reader = Reader::new(input, format::HEADER_LEN as u64, len);
    loop {
        let (mend, what) = match reader.next()? {
            Next::Record(Record::Set { .. } | Record::Delete { .. }) => continue,
            Next::End => return Ok(()),
            Next::Damaged { offset, what } => (Mend::Cut, format!("{what} at byte {offset}")),
            Next::Unwritten { offset } => {
                (Mend::Cut, format!("zeros where a record should be, at byte {offset}"))
            }
            Next::Record(Record::End { .. }) | Next::Unknown { .. } => {
                (Mend::Backup, format!("{NOT_KNOWN}, at byte {}", reader.offset()))
            }
        };
        return Err(damaged(path, mend, what));
    }
}

/// Cuts the segment at `path` at `offset`, after copying what it cuts to `<segment>.damaged-at-<offset>`
/// (written under a temporary name, then renamed, and durable with its directory before the cut: a
/// repair stopped half way and run again finds the segment as it was). Returns the copy's path.
/// The whole records from `first_whole` on are counted, and the highest number among them is kept as a
/// floor under the versions to come (their writes may have been acknowledged, and their versions held
/// by clients, which a version handed out again would fool): the segment's header, which recovery
/// takes for one, is raised to it in place first.
fn cut_keeping(path: &Path, offset: u64, first_whole: Option<u64>) -> io::Result<Cut> {
    let (records, highest) = match first_whole {
        Some(at) => records_from(path, at)?,
        None => (0, 0),
    };
    raise_header_floor(path, highest)?;
    let saved = PathBuf::from(format!("{}{}{offset}", path.display(), files::DAMAGED_AT));
    let partial = PathBuf::from(format!("{}.partial", saved.display()));
    let mut copy = files::private().write(true).create(true).truncate(true).open(&partial)?;
    let mut tail = BufReader::new(files::open(path)?);
    io::Seek::seek(&mut tail, io::SeekFrom::Start(offset))?;
    io::copy(&mut tail, &mut copy)?;
    copy.sync_all()?;
    fs::rename(&partial, &saved)?;
    files::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    let cut = OpenOptions::new().write(true).open(path)?;
    cut.set_len(offset)?;
    cut.sync_all()?;
    Ok(Cut { saved, records, highest })
}

/// What [`cut_keeping`] cut.
struct Cut {
    /// The file that keeps the bytes cut.
    saved: PathBuf,
    /// Whole records among them, and the highest number (version or delete's) of those.
    records: u64,
    highest: u64,
}

/// The whole records of the segment at `path` from byte `at` on: how many, and their highest number.
fn records_from(path: &Path, at: u64) -> io::Result<(u64, u64)> {
    let file = files::open(path)?;
    let len = file.metadata()?.len();
    let mut after = BufReader::new(file);
    io::Seek::seek(&mut after, io::SeekFrom::Start(at))?;
    let mut reader = Reader::new(after, at, len);
    let (mut count, mut highest) = (0, 0);
    loop {
        let number = match reader.next()? {
            Next::Record(Record::Set { versioned, .. }) => versioned.version,
            Next::Record(Record::Delete { sequence, .. }) => sequence,
            Next::Record(Record::End { .. }) => 0,
            _ => return Ok((count, highest)),
        };
        count += 1;
        highest = highest.max(number);
    }
}

/// Raises the last version the header of the segment at `path` says to `floor`, if it says less: in
/// place and durable (24 bytes in the file's first block), as `files::restart_segment` rewrites one.
fn raise_header_floor(path: &Path, floor: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let Some(header) = Header::read(&mut BufReader::new(&file), LOG_MAGIC)? else { return Ok(()) };
    if header.last_version >= floor || floor >= format::VERSION_LIMIT {
        return Ok(());
    }
    file.write_all_at(&Header { last_version: floor, ..header }.encode(), 0)?;
    file.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A torn record is counted apart from the zeros written ahead after it: a crash that tore a
    /// 32-byte record in a segment written ahead by a megabyte cut 32 bytes of data, not a megabyte.
    #[test]
    fn the_written_end_of_a_tail_is_after_its_last_byte_that_is_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut bytes = vec![7u8; 100];
        bytes.extend_from_slice(&[1, 0, 2]); // a torn record may hold zeros of its own
        bytes.resize(1 << 20, 0);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(written_end(&path, 100, bytes.len() as u64).unwrap(), 103);
        assert_eq!(written_end(&path, 103, bytes.len() as u64).unwrap(), 103, "zeros only");
        assert_eq!(written_end(&path, 50, 60).unwrap(), 60, "within the range asked for");
        // Across windows of the backward scan.
        let mut long = vec![0u8; 3 << 20];
        long[100_000] = 1;
        std::fs::write(&path, &long).unwrap();
        assert_eq!(written_end(&path, 24, long.len() as u64).unwrap(), 100_001);
    }
}
