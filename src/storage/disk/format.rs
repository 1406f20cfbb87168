//! The bytes of the log and of snapshots: a header, then records, each checksummed.
//!
//! ```text
//! file    := header record* zero*                                (zeros: a log segment's unwritten space)
//! header  := magic[8] generation:u64 last_version:u64            (24 bytes, little-endian)
//! record  := length:u32 crc:u32 body[length]                     (crc: CRC-32 of body)
//! body    := 1 version:u64 table_len:u32 table key_len:u32 key value   a key set (value: protobuf Value)
//!          | 2 sequence:u64 table_len:u32 table key_len:u32 key        a key deleted
//!          | 3 count:u64                                               the end of a snapshot
//! ```
//!
//! A log is appended to and may end in a torn record (the machine stopped in the middle of a write):
//! reading stops at the first record that is short, runs past the end or fails its checksum, and says
//! where, so recovery can cut the tail off. The segment being appended to also ends in zeros written
//! ahead of its records (files.rs, `Segment`): a record head of zeros (length 0, which no record has)
//! is unwritten space, where reading stops too. A whole record (checksum intact) that does not decode is
//! told apart: it is another format, never a torn write. Nothing acknowledged can be in or after a torn record, since
//! a write is acknowledged only once every byte before its end is on disk. A snapshot is complete only
//! with its end record, whose count must match.

use std::io::{self, Read};

use prost::Message;

use crate::pb::{Value, Versioned};

pub const LOG_MAGIC: [u8; 8] = *b"qkvlog\0\x01";
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"qkvsnap\x01";
pub const HEADER_LEN: usize = 24;
pub const RECORD_HEAD: usize = 8;

const SET: u8 = 1;
const DELETE: u8 = 2;
const END: u8 = 3;

/// A file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    /// The log segment's number; a snapshot's is the segment that was started when it was.
    pub generation: u64,
    /// The last version handed out when the file was started (or, for a log segment a start went on
    /// in, last started: `files::restart_segment`).
    pub last_version: u64,
}

/// Versions stay below this: they start from the clock's microseconds and are exact in a double
/// (`storage::first_version_floor`); a header saying more is damaged.
pub const VERSION_LIMIT: u64 = 1 << 53;

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[..8].copy_from_slice(&self.magic);
        bytes[8..16].copy_from_slice(&self.generation.to_le_bytes());
        bytes[16..].copy_from_slice(&self.last_version.to_le_bytes());
        bytes
    }

    /// Reads a header; `None` when the input ends before one, it does not start with `magic`, or the
    /// version it says is one no store hands out ([`VERSION_LIMIT`]): the header has no checksum of its
    /// own, and a damaged version taken for the floor of all later ones would be kept for good.
    pub fn read(input: &mut impl Read, magic: [u8; 8]) -> io::Result<Option<Header>> {
        let mut bytes = [0; HEADER_LEN];
        match input.read_exact(&mut bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let header = Header {
            magic: bytes[..8].try_into().unwrap_or_default(),
            generation: u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
            last_version: u64::from_le_bytes(bytes[16..].try_into().unwrap_or_default()),
        };
        Ok((header.magic == magic && header.last_version < VERSION_LIMIT).then_some(header))
    }
}

/// One record, as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Set {
        table: String,
        key: String,
        versioned: Versioned,
    },
    /// `sequence` was taken from the version counter, so that versions stay above it after a restart.
    Delete {
        sequence: u64,
        table: String,
        key: String,
    },
    End {
        count: u64,
    },
}

/// Appends a set record to `out`.
pub fn encode_set(out: &mut Vec<u8>, version: u64, table: &str, key: &str, value: &Value) {
    let start = begin(out, SET, version);
    put_str(out, table);
    put_str(out, key);
    value.encode(out).unwrap_or_default(); // A Vec grows to fit: encoding cannot fail.
    finish(out, start);
}

/// Appends a delete record to `out`.
pub fn encode_delete(out: &mut Vec<u8>, sequence: u64, table: &str, key: &str) {
    let start = begin(out, DELETE, sequence);
    put_str(out, table);
    put_str(out, key);
    finish(out, start);
}

/// Appends a snapshot's end record to `out`.
pub fn encode_end(out: &mut Vec<u8>, count: u64) {
    let start = begin(out, END, count);
    finish(out, start);
}

/// Encodes any record (tests and the fuzz harness).
pub fn encode(out: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Set { table, key, versioned } => {
            encode_set(out, versioned.version, table, key, &versioned.value)
        }
        Record::Delete { sequence, table, key } => encode_delete(out, *sequence, table, key),
        Record::End { count } => encode_end(out, *count),
    }
}

/// Starts a record: room for its length and checksum, then its kind and number. Returns where it starts.
fn begin(out: &mut Vec<u8>, kind: u8, number: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEAD]);
    out.push(kind);
    out.extend_from_slice(&number.to_le_bytes());
    start
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are limited far below 4 GiB by the frame size; saturate rather than wrap regardless.
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Fills in the length and checksum of the record that starts at `start`.
fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + RECORD_HEAD..];
    let length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + RECORD_HEAD].copy_from_slice(&crc.to_le_bytes());
}

/// What reading found next.
#[derive(Debug, PartialEq)]
pub enum Next {
    Record(Record),
    /// The input ended cleanly, after a whole record (or the header).
    End,
    /// The input is torn (or damaged) from `offset` on: a record is cut short, runs past the end or fails
    /// its checksum. Everything before it was whole.
    Damaged {
        offset: u64,
        what: &'static str,
    },
    /// The record at `offset` is whole (its checksum holds) but is not one this version of qkv knows:
    /// not what a crash leaves, so nothing may be cut off because of it.
    Unknown {
        offset: u64,
    },
    /// From `offset` on the file holds what was never written as a record: a head of zeros, where
    /// the log segment being appended to has space written ahead.
    Unwritten {
        offset: u64,
    },
}

/// Reads records from a file's contents after its header, one at a time, never trusting a length
/// further than the bytes that remain.
pub struct Reader<R> {
    input: R,
    /// Bytes of the file, header included, read so far: where the next record starts.
    offset: u64,
    /// Bytes of the file in all.
    len: u64,
    body: Vec<u8>,
}

impl<R: Read> Reader<R> {
    /// A reader of a file of `len` bytes whose header (already read from `input`) ends at `offset`.
    pub fn new(input: R, offset: u64, len: u64) -> Self {
        Reader { input, offset, len, body: Vec::new() }
    }

    /// Where the next record starts: after the last whole record read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn next(&mut self) -> io::Result<Next> {
        let left = self.len.saturating_sub(self.offset);
        if left == 0 {
            return Ok(Next::End);
        }
        let damaged = |what| Ok(Next::Damaged { offset: self.offset, what });
        if left < RECORD_HEAD as u64 {
            return damaged("a record's head is cut short");
        }
        let mut head = [0; RECORD_HEAD];
        self.input.read_exact(&mut head)?;
        if head == [0; RECORD_HEAD] {
            return Ok(Next::Unwritten { offset: self.offset });
        }
        let length = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if length > left - RECORD_HEAD as u64 {
            return damaged("a record runs past the end");
        }
        self.body.resize(length as usize, 0);
        self.input.read_exact(&mut self.body)?;
        if crc32fast::hash(&self.body) != crc {
            return damaged("a record fails its checksum");
        }
        let Some(record) = decode(&self.body) else {
            return Ok(Next::Unknown { offset: self.offset });
        };
        self.offset += RECORD_HEAD as u64 + length;
        Ok(Next::Record(record))
    }
}

/// How many bytes of a record [`candidate`] looks at: its head, kind, number and table name's length.
pub const PEEK: usize = RECORD_HEAD + 13;
/// The shortest record: a snapshot's end.
pub const MIN_RECORD: usize = RECORD_HEAD + 9;

/// Whether a record could start at `bytes` (at most [`PEEK`] bytes, fewer where the file ends), with
/// `left` bytes of the file from there: a head that is not zeros, a length that fits, a kind this
/// version writes, and a table name that fits in the body. Returns the body's length and checksum,
/// which the caller checks (together they tell a whole record found past damage from chance bytes),
/// and its number (a version, a delete's number, or an end's count).
pub fn candidate(bytes: &[u8], left: u64) -> Option<(u64, u32, u64)> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let (crc, body) = rest.split_first_chunk::<4>()?;
    let length = u64::from(u32::from_le_bytes(*length));
    if length < (MIN_RECORD - RECORD_HEAD) as u64 || length > left.saturating_sub(RECORD_HEAD as u64) {
        return None;
    }
    let fits = match *body.first()? {
        END => length == (MIN_RECORD - RECORD_HEAD) as u64,
        SET | DELETE => {
            let table_len = body.get(9..13)?.try_into().map(u32::from_le_bytes).ok()?;
            length >= 17 && u64::from(table_len) <= length - 17
        }
        _ => false,
    };
    let number = body.get(1..9)?.try_into().map(u64::from_le_bytes).ok()?;
    fits.then_some((length, u32::from_le_bytes(*crc), number))
}

fn decode(body: &[u8]) -> Option<Record> {
    let (&kind, rest) = body.split_first()?;
    let (number, rest) = rest.split_first_chunk::<8>()?;
    let number = u64::from_le_bytes(*number);
    if kind == END {
        return rest.is_empty().then_some(Record::End { count: number });
    }
    let (table, rest) = take_str(rest)?;
    let (key, rest) = take_str(rest)?;
    match kind {
        SET => {
            let value = Value::decode(rest).ok()?;
            Some(Record::Set { table, key, versioned: Versioned { value, version: number } })
        }
        DELETE if rest.is_empty() => Some(Record::Delete { sequence: number, table, key }),
        _ => None,
    }
}

fn take_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_le_bytes(*length)).ok()?;
    if length > rest.len() {
        return None;
    }
    let (s, rest) = rest.split_at(length);
    Some((String::from_utf8(s.to_vec()).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        vec![
            Record::Set {
                table: "t".into(),
                key: "k".into(),
                versioned: Versioned { value: "v".into(), version: 7 },
            },
            Record::Delete { sequence: 8, table: "".into(), key: "a:b\0".into() },
            Record::Set {
                table: "ünï".into(),
                key: "".into(),
                versioned: Versioned { value: vec![0u8; 300].into(), version: 9 },
            },
            Record::End { count: 2 },
        ]
    }

    fn read_all(bytes: &[u8]) -> (Vec<Record>, Next) {
        let mut reader = Reader::new(bytes, 0, bytes.len() as u64);
        let mut read = Vec::new();
        loop {
            match reader.next().unwrap() {
                Next::Record(record) => read.push(record),
                other => return (read, other),
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let mut bytes = Vec::new();
        for record in records() {
            encode(&mut bytes, &record);
        }
        assert_eq!(read_all(&bytes), (records(), Next::End));
    }

    #[test]
    fn headers_round_trip_and_other_files_are_refused() {
        let header = Header { magic: LOG_MAGIC, generation: 3, last_version: 1 << 50 };
        let bytes = header.encode();
        assert_eq!(Header::read(&mut &bytes[..], LOG_MAGIC).unwrap(), Some(header));
        assert_eq!(Header::read(&mut &bytes[..], SNAPSHOT_MAGIC).unwrap(), None);
        assert_eq!(Header::read(&mut &bytes[..10], LOG_MAGIC).unwrap(), None);
    }
}
