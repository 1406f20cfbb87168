//! Data directories written before the log: one redb file, `qkv.redb`. Opening such a directory imports
//! it once: every entry, with its version, and the version counter, go into a first snapshot; then the
//! file is renamed `qkv.redb.imported` (kept, not deleted: remove it once the new store has served).
//!
//! The redb layout: one table `entries`, keyed by the qkv table name's length (4 bytes, big-endian), the
//! name, then the key; valued by the version (8 bytes, big-endian), then the protobuf `Value`. A table
//! `meta` holds `last_version`.

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};

use super::files;
use super::snapshot::{self, Store};
use crate::pb::{Value, Versioned};

/// The redb file of the stores before the log.
pub const REDB_FILE: &str = "qkv.redb";
const IMPORTED: &str = "qkv.redb.imported";

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Imports `dir/qkv.redb` into `store` and a first snapshot, if the directory has one and nothing newer;
/// returns the last version it had handed out (0 when there was nothing to import).
pub fn from_redb(dir: &Path, store: &Store) -> io::Result<u64> {
    let path = dir.join(REDB_FILE);
    if !path.exists() {
        return Ok(0);
    }
    let listing = files::list(dir)?;
    if listing.segments.is_empty() && listing.snapshots.is_empty() {
        let started = std::time::Instant::now();
        let (entries, last_version) = read(&path, store).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("reading {}: {e}", path.display()))
        })?;
        store.journal().start_after(last_version);
        snapshot::write(dir, 1, store, &AtomicBool::new(false))?;
        tracing::info!(
            entries,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "imported {} into a snapshot; it is kept as {IMPORTED}",
            path.display()
        );
    }
    // Imported now, or by an earlier open that stopped before this rename: the snapshot holds it all.
    // Its segment is made before the import is named done, as the committer makes a snapshot's before
    // the snapshot: a snapshot without its segment is then only ever damage (recovery refuses it).
    if listing.segments.is_empty() {
        files::create_segment(dir, 1, store.journal().appended())?;
    }
    std::fs::rename(&path, dir.join(IMPORTED))?;
    files::sync_dir(dir)?;
    Ok(store.journal().appended())
}

fn read(path: &Path, store: &Store) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let db = Database::open(path)?;
    let txn = db.begin_read()?;
    let mut last_version = txn.open_table(META)?.get("last_version")?.map_or(0, |v| v.value());
    let mut entries = 0;
    for item in txn.open_table(ENTRIES)?.iter()? {
        let (key, value) = item?;
        let (table, key) = split_key(key.value()).ok_or("a key that is not a qkv table and key")?;
        let (version, value) = value.value().split_first_chunk::<8>().ok_or("a value without its version")?;
        let versioned = Versioned { value: Value::decode(value)?, version: u64::from_be_bytes(*version) };
        last_version = last_version.max(versioned.version);
        store.restore(&table, &key, versioned);
        entries += 1;
    }
    // Beyond what the store hands out (exact in a double), and what its headers may say.
    if last_version >= super::format::VERSION_LIMIT {
        return Err(format!(
            "its last version, {last_version}, is 2^53 or more, which no qkv store hands out"
        )
        .into());
    }
    Ok((entries, last_version))
}

fn split_key(bytes: &[u8]) -> Option<(String, String)> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    let (table, key) = (rest.get(..length)?, rest.get(length..)?);
    Some((String::from_utf8(table.to_vec()).ok()?, String::from_utf8(key.to_vec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use crate::storage::disk::{DiskStore, test_config};

    /// Writes a redb file as the store before the log did.
    fn write_redb(dir: &Path, entries: &[(&str, &str, Value, u64)], last_version: u64) {
        let db = Database::create(dir.join(REDB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ENTRIES).unwrap();
            for (name, key, value, version) in entries {
                let mut k = (name.len() as u32).to_be_bytes().to_vec();
                k.extend_from_slice(name.as_bytes());
                k.extend_from_slice(key.as_bytes());
                let mut v = version.to_be_bytes().to_vec();
                value.encode(&mut v).unwrap();
                table.insert(k.as_slice(), v.as_slice()).unwrap();
            }
            txn.open_table(META).unwrap().insert("last_version", last_version).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn a_redb_directory_is_imported_with_its_versions() {
        let dir = tempfile::tempdir().unwrap();
        // Beyond the clock (a century on), not beyond what versions may be.
        let far_future = super::super::format::VERSION_LIMIT - (1 << 50);
        write_redb(dir.path(), &[("a:b", "", "x".into(), 5), ("t", "k", 7i64.into(), 9)], far_future);
        for _ in 0..2 {
            let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
            assert_eq!(
                store.get("a:b", "").await.unwrap(),
                Some(Versioned { value: "x".into(), version: 5 })
            );
            assert_eq!(
                store.get("t", "k").await.unwrap(),
                Some(Versioned { value: 7i64.into(), version: 9 })
            );
            let crate::storage::WriteOutcome::Written { version, .. } =
                store.set("t", "new", "v".into(), None).await.unwrap()
            else {
                panic!("an unconditional write")
            };
            assert!(version > far_future, "versions go on from the redb store's counter");
            store.delete("t", "new", None).await.unwrap();
            let closed = store.closed();
            drop(store);
            closed.wait().await.unwrap();
        }
        assert!(!dir.path().join(REDB_FILE).exists());
        assert!(dir.path().join(IMPORTED).exists());
    }

    /// A redb store whose counter is past 2^53 is refused, saying why, before anything is written: its
    /// snapshot's header would be taken for damage at every start after.
    #[tokio::test]
    async fn a_redb_directory_beyond_the_versions_a_store_hands_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_redb(dir.path(), &[("t", "k", "x".into(), 5)], 1 << 60);
        let Err(crate::storage::StorageError::Backend(error)) =
            DiskStore::open_when_free(dir.path(), test_config())
        else {
            panic!("imported")
        };
        assert!(error.contains("2^53"), "{error}");
        assert!(files::list(dir.path()).unwrap().snapshots.is_empty(), "nothing written");
        assert!(dir.path().join(REDB_FILE).exists());
    }
}
