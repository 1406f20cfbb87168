//! The disk store: the storage conformance suite, restarts, torn and damaged logs, snapshots.

use super::*;
use crate::storage::ORDERED_WRITE_KEYS;

crate::storage::suite::storage_conformance!(DiskStore::temporary());
crate::storage::suite::full_store_conformance!(DiskStore::temporary_with(DiskConfig {
    memory_budget: 256 * 1024,
    ..test_config()
}));

/// The suite again on a store attached to the runtime as the server attaches it, with a signal that
/// never hears of a park: every commit then goes by the commit wait fallback, and every answer
/// is woken through the relay task.
mod attached {
    use super::*;

    fn attached() -> DiskStore {
        let store = DiskStore::temporary();
        store.attach_runtime(&RuntimeIdle::default());
        store
    }

    crate::storage::suite::storage_conformance!(attached());
}

/// As `qkv serve` runs a disk store: attached to a current-thread runtime whose parking commits.
/// Writes and reads issued together all complete, and every acknowledged write is on disk after.
#[test]
fn a_store_attached_to_the_serving_runtime_answers_bursts_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let idle = RuntimeIdle::default();
    let runtime =
        crate::server::runtime(crate::server::RuntimeLayout::CurrentThread, Some(idle.clone())).unwrap();
    let (acknowledged, closed) = runtime.block_on(async {
        let store = Arc::new(DiskStore::open_when_free(dir.path(), test_config()).unwrap());
        store.attach_runtime(&idle);
        let mut acknowledged = Model::new();
        for round in 0..20 {
            let writes: Vec<_> = (0..64)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let key = format!("k{i}");
                        let written = store.set(TABLE, &key, format!("{round}").into(), None).await;
                        let read = store.get(TABLE, &key).await;
                        (key, written, read)
                    })
                })
                .collect();
            let answered = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                let mut answers = Vec::new();
                for write in writes {
                    answers.push(write.await.unwrap());
                }
                answers
            });
            for (key, written, read) in answered.await.expect("a burst of writes is answered") {
                let WriteOutcome::Written { version, .. } = written.unwrap() else { panic!("unconditional") };
                let stored = Versioned { value: format!("{round}").into(), version };
                assert_eq!(read.unwrap(), Some(stored.clone()), "a read after an acknowledged write sees it");
                acknowledged.insert(key, stored);
            }
        }
        let closed = store.closed();
        drop(store);
        (acknowledged, closed)
    });
    drop(runtime);
    closed.wait_blocking().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
        assert_holds(&store, &acknowledged, "after the attached store closed").await;
    });
}

#[tokio::test]
async fn data_versions_and_conditional_writes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (version, deleted_version, closed) = {
        let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
        let WriteOutcome::Written { version, .. } =
            store.set("a:b", "", vec![0u8; 100_000].into(), None).await.unwrap()
        else {
            panic!("an unconditional write")
        };
        let WriteOutcome::Written { version: deleted, .. } =
            store.set("t", "gone", 1i64.into(), None).await.unwrap()
        else {
            panic!("an unconditional write")
        };
        store.delete("t", "gone", None).await.unwrap();
        (version, deleted, store.closed())
    };
    closed.wait().await.unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let stored = store.get("a:b", "").await.unwrap().unwrap();
    assert_eq!((stored.value, stored.version), (vec![0u8; 100_000].into(), version));
    assert_eq!(store.get("t", "gone").await.unwrap(), None);
    // A conditional write on the version from before the restart succeeds; a stale one conflicts.
    let outcome = store.set("a:b", "", "next".into(), Some(version)).await.unwrap();
    let WriteOutcome::Written { version: next, .. } = outcome else { panic!("{outcome:?}") };
    assert!(next > version && next > deleted_version, "versions keep growing across restarts");
    assert!(matches!(
        store.set("a:b", "", "x".into(), Some(version)).await.unwrap(),
        WriteOutcome::Conflict { .. }
    ));
}

#[tokio::test]
async fn relaxed_writes_are_on_disk_once_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let relaxed = Durability::Relaxed { flush_interval: std::time::Duration::from_secs(3600) };
    let store =
        DiskStore::open_when_free(dir.path(), DiskConfig { durability: relaxed, ..test_config() }).unwrap();
    store.set("t", "k", "v".into(), None).await.unwrap();
    let closed = store.closed();
    drop(store);
    closed.wait().await.unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    assert_eq!(store.get("t", "k").await.unwrap().unwrap().value, "v".into());
}

/// What a store should hold: key → value and version.
type Model = std::collections::BTreeMap<String, Versioned>;

const TABLE: &str = "t";

async fn close(store: DiskStore) {
    let closed = store.closed();
    drop(store);
    closed.wait().await.unwrap();
}

/// Checks that `store` holds exactly `model` in `TABLE`.
async fn assert_holds(store: &DiskStore, model: &Model, case: &str) {
    let mut scan = store.scan(TABLE, None).await.unwrap();
    let mut held = Model::new();
    loop {
        let page = scan.next_page(PageLimit { entries: 1000, bytes: usize::MAX }).await.unwrap();
        held.extend(page.entries);
        if page.done {
            break;
        }
    }
    assert_eq!(&held, model, "{case}");
}

/// Writes that each append one record (sets, conditional sets, deletes of present keys), and the model
/// after each: `states[i]` is what the first `i` records make.
async fn write_history(store: &DiskStore, writes: usize) -> Vec<Model> {
    let mut model = Model::new();
    let mut states = vec![model.clone()];
    for i in 0..writes {
        let key = format!("k{}", i % 7);
        let outcome = match (i % 5, model.get(&key)) {
            (3, Some(_)) => store.delete(TABLE, &key, None).await.unwrap(),
            (4, current) => {
                let expected = current.map_or(0, |v| v.version);
                store.set(TABLE, &key, Value::from(vec![i as u8; i % 13]), Some(expected)).await.unwrap()
            }
            _ => store.set(TABLE, &key, Value::from(format!("value {i}")), None).await.unwrap(),
        };
        let WriteOutcome::Written { version, .. } = outcome else { panic!("{outcome:?}") };
        match version {
            0 => model.remove(&key),
            version => model.insert(
                key.clone(),
                store.get(TABLE, &key).await.unwrap().map(|v| Versioned { version, ..v }).unwrap(),
            ),
        };
        states.push(model.clone());
    }
    states
}

/// A store's directory after `writes` records of [`write_history`], closed: the states they made, and
/// the last log segment's path and bytes.
async fn closed_history(writes: usize) -> (tempfile::TempDir, Vec<Model>, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let states = write_history(&store, writes).await;
    close(store).await;
    let (_, path) = files::list(dir.path()).unwrap().segments.pop_last().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (dir, states, path, bytes)
}

/// Where each record of a log segment ends.
fn record_ends(segment: &[u8]) -> Vec<u64> {
    let mut reader =
        format::Reader::new(&segment[format::HEADER_LEN..], format::HEADER_LEN as u64, segment.len() as u64);
    let mut ends = Vec::new();
    while let format::Next::Record(_) = reader.next().unwrap() {
        ends.push(reader.offset());
    }
    assert_eq!(*ends.last().unwrap(), segment.len() as u64, "the log is whole before it is damaged");
    ends
}

/// A crash can tear the log's last write anywhere; a disk can damage any byte. Cut or damaged at every
/// byte of its last records, and each either where the file ends or followed by the zeros the segment
/// had written ahead (a crash leaves them: only a closed store cuts them off):
/// - where nothing whole follows the damage (what a crash leaves), the log recovers every write before
///   it, and the store goes on;
/// - where whole records follow it (a damaged byte, not a torn write: they may have been acknowledged),
///   the store refuses to open and changes nothing; `qkv repair` then cuts the log at the damage,
///   keeping the bytes it cuts, and the store opens with every write before it.
#[tokio::test]
async fn a_torn_or_damaged_tail_loses_no_write_before_it() {
    let (_dir, states, segment_path, segment) = closed_history(40).await;
    let ends = record_ends(&segment);
    assert_eq!(ends.len(), 40);
    let last_records_start = ends[ends.len() - 4];
    let (mut cases, mut refused) = (0, 0);
    for at in last_records_start..segment.len() as u64 {
        // Records wholly before the cut or the damaged byte survive; the one it falls in and any after
        // it are gone.
        let whole = ends.iter().filter(|&&end| end <= at).count();
        let truncated = segment[..at as usize].to_vec();
        let mut flipped = segment.clone();
        flipped[at as usize] ^= 0x5a;
        let zeroed_ahead = |bytes: &[u8]| {
            let mut bytes = bytes.to_vec();
            bytes.resize(files::ZEROED_AHEAD as usize, 0);
            bytes
        };
        // Zeros after a cut restore the record it fell in if the bytes cut off were zeros themselves
        // (a value ending in zeros): the record is whole, and an unacknowledged write may be kept.
        let restored = ends
            .iter()
            .filter(|&&end| end <= at || segment[at as usize..end as usize].iter().all(|&b| b == 0))
            .count();
        let followed = whole + 1 < ends.len();
        let damaged = [
            ("cut, then zeros", zeroed_ahead(&truncated), restored, false),
            ("flipped, then zeros", zeroed_ahead(&flipped), whole, followed),
            ("cut", truncated, whole, false),
            ("flipped", flipped, whole, followed),
        ];
        for (damage, bytes, whole, followed) in damaged {
            let case = format!("log {damage} at byte {at}: {whole} whole records");
            let copy = tempfile::tempdir().unwrap();
            let path = copy.path().join(segment_path.file_name().unwrap());
            std::fs::write(&path, &bytes).unwrap();
            if followed {
                let Err(StorageError::Backend(error)) = DiskStore::open_when_free(copy.path(), test_config())
                else {
                    panic!("{case}: opened, with whole records after the damage")
                };
                assert!(
                    error.contains("yet a whole record follows") && error.contains("qkv repair"),
                    "{case}: {error}"
                );
                assert_eq!(std::fs::read(&path).unwrap(), bytes, "{case}: the segment was changed");
                let Repaired::Cut { offset, saved, records_after, .. } =
                    DiskStore::repair_when_free(copy.path()).unwrap()
                else {
                    panic!("{case}: nothing repaired")
                };
                assert_eq!(
                    offset,
                    if whole == 0 { format::HEADER_LEN as u64 } else { ends[whole - 1] },
                    "{case}"
                );
                assert!(
                    records_after >= (ends.len() - whole - 1) as u64,
                    "{case}: {records_after} records after"
                );
                assert_eq!(
                    std::fs::read(saved).unwrap(),
                    bytes[offset as usize..],
                    "{case}: the bytes cut off"
                );
                refused += 1;
            } else {
                assert_eq!(DiskStore::repair_when_free(copy.path()).unwrap(), Repaired::Nothing, "{case}");
            }
            let store = DiskStore::open_when_free(copy.path(), test_config()).expect(&case);
            assert_holds(&store, &states[whole], &case).await;
            // The damage is gone for good: a write after it survives the next restart.
            store.set(TABLE, "after", "x".into(), None).await.unwrap();
            close(store).await;
            let store = DiskStore::open_when_free(copy.path(), test_config()).expect(&case);
            let mut model = states[whole].clone();
            model.insert("after".into(), store.get(TABLE, "after").await.unwrap().unwrap());
            assert_holds(&store, &model, &case).await;
            close(store).await;
            cases += 1;
        }
    }
    assert!(cases > 200 && refused > 50, "{cases} cases, {refused} refused");
}

/// A snapshot takes the log's place only once the records it may have seen are on disk: relaxed
/// durability acknowledges them (durable) before they are fsynced, and a snapshot renamed before then
/// could keep, through a crash of the machine, a write whose earlier writes the log lost.
#[test]
fn a_snapshot_waits_for_the_records_on_disk_not_only_acknowledged() {
    use std::sync::atomic::AtomicBool;
    let log = Log::new(10, std::time::Duration::ZERO);
    log.made_durable(12);
    let closing = AtomicBool::new(true);
    let waited = snapshot::wait_until_synced(&log, 12, &closing);
    assert!(waited.is_err_and(|e| e.kind() == std::io::ErrorKind::Interrupted), "it waits for the fsync");
    log.made_synced(12);
    snapshot::wait_until_synced(&log, 12, &closing).unwrap();
}

/// A relaxed store's snapshot asks the committer for the fsync it waits for, rather than wait for the
/// flush interval (an hour here) with compaction held all the while.
#[tokio::test]
async fn a_relaxed_store_snapshots_without_waiting_for_its_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let relaxed = Durability::Relaxed { flush_interval: std::time::Duration::from_secs(3600) };
    let config = DiskConfig { durability: relaxed, snapshot_log_size: 16 << 10, ..test_config() };
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    for i in 0..1000 {
        store.set(TABLE, &format!("k{}", i % 50), Value::from(format!("{i:0>60}")), None).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while files::list(dir.path()).unwrap().snapshots.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no snapshot within a minute");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    close(store).await;
}

/// A segment's header says the last version handed out when it was created, but records appended
/// before then and committed after go into it too, numbered at or below that. Damage in front of them
/// is refused by the store and cut by `qkv repair` alike: repair took the header's number for a bound,
/// found no whole record after the damage and did nothing, and the store went on refusing to open.
#[tokio::test]
async fn repair_cuts_the_damage_the_store_refuses_whatever_the_header_says() {
    let (dir, states, path, mut segment) = closed_history(10).await;
    let ends = record_ends(&segment);
    let header = format::Header::read(&mut &segment[..], format::LOG_MAGIC).unwrap().unwrap();
    let ahead = format::Header { last_version: header.last_version + 1_000_000_000, ..header };
    segment[..format::HEADER_LEN].copy_from_slice(&ahead.encode());
    // The second record damaged, eight whole ones after it.
    segment[ends[0] as usize + 2] ^= 0x5a;
    std::fs::write(&path, &segment).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
        panic!("opened with whole records after the damage")
    };
    assert!(error.contains("yet a whole record follows"), "{error}");
    let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
    let Repaired::Cut { offset, first_whole, records_after, .. } = repaired else {
        panic!("repair left the damage the store refuses: {repaired:?}")
    };
    assert_eq!((offset, first_whole, records_after), (ends[0], Some(ends[1]), 8));
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    assert_holds(&store, &states[1], "after the repair").await;
    close(store).await;
}

/// The writes `qkv repair` cuts may have been acknowledged, their versions held by clients: the
/// highest stays a floor under the versions to come (the segment's header is raised to it), so that a
/// clock behind them cannot hand one out again for another value.
#[tokio::test]
async fn repair_keeps_the_cut_records_versions_as_a_floor() {
    let (dir, states, path, mut segment) = closed_history(10).await;
    let ends = record_ends(&segment);
    segment[ends[0] as usize + 2] ^= 0x5a;
    std::fs::write(&path, &segment).unwrap();
    let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
    assert!(matches!(repaired, Repaired::Cut { records_after: 8, .. }), "{repaired:?}");
    let cut_versions = states.last().unwrap().values().map(|v| v.version).max().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = format::Header::read(&mut &bytes[..], format::LOG_MAGIC).unwrap().unwrap();
    assert!(header.last_version >= cut_versions, "{} < {cut_versions}", header.last_version);
}

/// When a write to the log fails (a full disk), the writes waiting for it are answered as uncertain,
/// later ones are refused, and the store's end says what it cost, so that `qkv serve` exits with a
/// failure rather than as if all were well: with relaxed durability, acknowledged writes may be lost.
#[tokio::test]
async fn a_log_that_failed_ends_the_store_saying_what_it_cost() {
    let relaxed = Durability::Relaxed { flush_interval: std::time::Duration::from_secs(3600) };
    for (durability, cost) in [(Durability::Strict, "refused"), (relaxed, "may be lost")] {
        let dir = tempfile::tempdir().unwrap();
        let store =
            DiskStore::open_when_free(dir.path(), DiskConfig { durability, ..test_config() }).unwrap();
        store.set(TABLE, "before", "v".into(), None).await.unwrap();
        files::fail_in(dir.path(), files::Fault::Writes, true);
        let why = breaks_at_the_next_write(store).await;
        assert!(why.contains("writing the data log failed") && why.contains("No space left"), "{why}");
        assert!(why.contains(cost), "{durability}: {why}");
    }
}

/// A write whose fsync failed is not in the log a restart reads: the kernel keeps its pages cached and
/// looking whole while the disk may not hold them, so the segment is cut back to the last fsync that
/// succeeded. (Read back, the write was served as durable, and after a reboot the segment was damaged
/// in the middle with acknowledged writes behind it: a directory that never opened again.)
#[tokio::test]
async fn a_write_whose_fsync_failed_is_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    store.set(TABLE, "before", "v".into(), None).await.unwrap();
    files::fail_in(dir.path(), files::Fault::Syncs, true);
    let failed = store.set(TABLE, "k", "v".into(), None).await;
    assert!(matches!(failed, Err(StorageError::Uncertain(_))), "{failed:?}");
    let closed = store.closed();
    drop(store);
    let why = closed.wait().await.unwrap_err();
    assert!(why.contains("a test's failed fsync"), "{why}");
    files::fail_in(dir.path(), files::Fault::Syncs, false);
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    assert!(store.get(TABLE, "before").await.unwrap().is_some());
    assert_eq!(store.get(TABLE, "k").await.unwrap(), None);
    close(store).await;
}

/// With relaxed durability, a write to the log that fails (a full disk) leaves the writes acknowledged
/// before it durable: no fsync failed, so one is made, not left to the kernel's writeback.
#[tokio::test]
async fn a_relaxed_log_whose_write_failed_makes_what_it_acknowledged_durable() {
    let relaxed = Durability::Relaxed { flush_interval: std::time::Duration::from_secs(3600) };
    let dir = tempfile::tempdir().unwrap();
    let store =
        DiskStore::open_when_free(dir.path(), DiskConfig { durability: relaxed, ..test_config() }).unwrap();
    let written = store.set(TABLE, "before", "v".into(), None).await.unwrap();
    let WriteOutcome::Written { version: acknowledged, .. } = written else { panic!("{written:?}") };
    assert!(!store.log.is_synced(acknowledged), "not fsynced before the failure");
    files::fail_in(dir.path(), files::Fault::Writes, true);
    let failed = store.set(TABLE, "k", "v".into(), None).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(store.log.is_synced(acknowledged));
    let closed = store.closed();
    drop(store);
    closed.wait().await.unwrap_err();
}

/// A new log segment that cannot be made (out of file descriptors, or of space for one more file) costs
/// the snapshot it was for, not the store: writes go on in the current segment (they were all refused
/// from then on), and a restart finds every one.
#[tokio::test]
async fn a_segment_that_cannot_be_started_delays_the_snapshot_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig { snapshot_log_size: 16 << 10, ..test_config() };
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    files::fail_in(dir.path(), files::Fault::NewSegments, true);
    // Four times the log a snapshot waits for.
    for i in 0..1000 {
        store.set(TABLE, &format!("k{i}"), format!("{i:0>60}").into(), None).await.unwrap();
    }
    let listing = files::list(dir.path()).unwrap();
    assert_eq!((listing.segments.len(), listing.snapshots.len()), (1, 0), "{listing:?}");
    close(store).await;
    files::fail_in(dir.path(), files::Fault::NewSegments, false);
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    for i in [0, 500, 999] {
        assert!(store.get(TABLE, &format!("k{i}")).await.unwrap().is_some(), "k{i}");
    }
    close(store).await;
}

/// A data directory removed under a running server: the next commit finds its segment gone, and the
/// store stops acknowledging writes it could never recover (they were acknowledged as durable into
/// deleted files, and a restart started empty).
#[tokio::test]
async fn a_data_directory_removed_under_the_store_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    store.set(TABLE, "before", "v".into(), None).await.unwrap();
    std::fs::remove_dir_all(dir.path()).unwrap();
    let why = breaks_at_the_next_write(store).await;
    assert!(why.contains("deleted while the server ran"), "{why}");
}

/// The next write to `store`, whose log can no longer be written, is answered as perhaps done
/// (`Uncertain`), the one after it refused (`Unavailable`); returns why the store says it ended.
async fn breaks_at_the_next_write(store: DiskStore) -> String {
    let failed = store.set(TABLE, "k", "v".into(), None).await;
    assert!(matches!(failed, Err(StorageError::Uncertain(_))), "{failed:?}");
    let refused = store.set(TABLE, "later", "v".into(), None).await;
    assert!(matches!(refused, Err(StorageError::Unavailable(_))), "{refused:?}");
    let closed = store.closed();
    drop(store);
    closed.wait().await.unwrap_err()
}

/// A relaxed log waits for records at most until its flush interval is up, but a failed one only for
/// records: it is never fsynced again, and a timeout due at once spun a core until the restart.
#[test]
fn a_failed_relaxed_log_waits_for_records_alone() {
    use super::committer::flush_timeout;
    use std::time::{Duration, Instant};
    let relaxed = Durability::Relaxed { flush_interval: Duration::from_millis(10) };
    let long_ago = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
    assert_eq!(flush_timeout(relaxed, Some(long_ago), false), Some(Duration::ZERO));
    assert_eq!(flush_timeout(relaxed, Some(long_ago), true), None);
    assert_eq!(flush_timeout(relaxed, None, false), None);
    assert_eq!(flush_timeout(Durability::Strict, Some(long_ago), false), None);
}

/// Damage in the segment before the last when every later one holds its header alone (a restart with
/// no write since: the usual layout) is mended by `qkv repair` as the last segment's would be, and the
/// store's refusal says so: it sent the operator to a backup, though the cut loses no more.
#[tokio::test]
async fn damage_followed_by_empty_segments_alone_is_mended_by_repair() {
    for (case, damage) in [("a flipped byte", None), ("zeros after the records", Some(100))] {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
        let states = write_history(&store, 40).await;
        close(store).await;
        // A restart with no write: a second segment, its header alone.
        close(DiskStore::open_when_free(dir.path(), test_config()).unwrap()).await;
        let segments = files::list(dir.path()).unwrap().segments;
        assert_eq!(segments.len(), 2, "{case}: {segments:?}");
        let first = segments.values().next().unwrap().clone();
        let mut bytes = std::fs::read(&first).unwrap();
        let cut_at = match damage {
            None => {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 1;
                None
            }
            Some(zeros) => {
                let end = bytes.len() as u64;
                bytes.resize(bytes.len() + zeros, 0);
                Some(end)
            }
        };
        std::fs::write(&first, &bytes).unwrap();
        let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
            panic!("{case}: a damaged segment was accepted")
        };
        assert!(error.contains("qkv repair") && !error.contains("backup"), "{case}: {error}");
        let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
        let Repaired::Cut { segment, offset, .. } = repaired else { panic!("{case}: {repaired:?}") };
        assert_eq!(segment, first, "{case}");
        if let Some(end) = cut_at {
            assert_eq!(offset, end, "{case}: the records were all whole");
        }
        let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
        if cut_at.is_some() {
            assert_holds(&store, states.last().unwrap(), case).await;
        }
        // Versions go on above every one the cut segment held (the empty segment's header says so).
        let last = states.last().unwrap().values().map(|v| v.version).max().unwrap();
        let WriteOutcome::Written { version, .. } =
            store.set(TABLE, "after", "v".into(), None).await.unwrap()
        else {
            panic!("{case}: a write after the repair")
        };
        assert!(version > last, "{case}: {version} after {last}");
        close(store).await;
    }
}

/// A damaged header before empty segments is not what a cut mends: the store's refusal does not send
/// the operator to `qkv repair` (which would refuse it), but to a backup.
#[tokio::test]
async fn a_damaged_header_before_empty_segments_is_not_offered_to_repair() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    write_history(&store, 10).await;
    close(store).await;
    close(DiskStore::open_when_free(dir.path(), test_config()).unwrap()).await;
    let first = files::list(dir.path()).unwrap().segments.values().next().unwrap().clone();
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[9] ^= 0xff; // the generation, in the header
    std::fs::write(&first, &bytes).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
        panic!("a damaged header was accepted")
    };
    assert!(error.contains("backup") && !error.contains("cuts this one"), "{error}");
    let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
    assert!(matches!(repaired, Repaired::Unrepairable { .. }), "{repaired:?}");
}

/// Damage that a crash cannot cause (in a log segment that is not the last) stops the store from
/// opening, with a message that names the file.
#[tokio::test]
async fn damage_before_the_last_segment_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    write_history(&store, 10).await;
    close(store).await;
    // A second segment, so that the first is not the last.
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    store.set(TABLE, "second", "v".into(), None).await.unwrap();
    close(store).await;
    let (_, first) = files::list(dir.path()).unwrap().segments.pop_first().unwrap();
    let original = std::fs::read(&first).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    // Zeros are cut off a segment before the next one starts: after its records they are damage too.
    let mut zeros = original.clone();
    zeros.resize(zeros.len() + 100, 0);
    for (case, bytes) in [("a flipped byte", flipped), ("zeros after the records", zeros)] {
        std::fs::write(&first, bytes).unwrap();
        let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
            panic!("{case}: a damaged segment was accepted")
        };
        assert!(error.contains(&first.display().to_string()) && error.contains("damaged"), "{case}: {error}");
        assert!(error.contains("restore the directory from a backup"), "{case}: what to do: {error}");
        // `qkv repair` mends only the last segment's end: it says so, naming the segment, and changes
        // nothing (it said there was nothing to repair, and the store still refused to open).
        let bytes = std::fs::read(&first).unwrap();
        let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
        assert!(
            matches!(&repaired, Repaired::Unrepairable { file, what } if *file == first && what.contains("damaged")),
            "{case}: {repaired:?}"
        );
        assert_eq!(std::fs::read(&first).unwrap(), bytes, "{case}: the segment was changed");
    }
    // A segment missing between two others: named too.
    std::fs::write(&first, &original).unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    close(store).await;
    let segments = files::list(dir.path()).unwrap().segments;
    assert!(segments.len() >= 3, "{segments:?}");
    let (_, second) = segments.iter().nth(1).unwrap();
    std::fs::remove_file(second).unwrap();
    let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
    assert!(
        matches!(&repaired, Repaired::Unrepairable { what, .. } if what.contains("is missing")),
        "{repaired:?}"
    );
}

/// A header's version has no checksum of its own: one beyond any a store hands out (a flipped high
/// bit) is damage, not the floor of every version after it (which it would have been for good, past
/// the 2^53 that keeps versions exact in a double, or wrapping to 0, which means "absent"). And a
/// segment numbered 0, which no store makes, is named as what is wrong (its number less one was
/// computed for the message: an overflow).
#[tokio::test]
async fn a_header_version_no_store_hands_out_and_a_segment_0_are_damage() {
    let (dir, _, path, segment) = closed_history(3).await;
    // The version is the header's last 8 bytes, little-endian.
    for (case, byte, bit) in [("bit 63", 7, 0x80), ("bit 53", 6, 0x20)] {
        let mut damaged = segment.clone();
        damaged[format::HEADER_LEN - 8 + byte] ^= bit;
        std::fs::write(&path, &damaged).unwrap();
        let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
            panic!("{case}: a header version beyond 2^53 was taken")
        };
        assert!(error.contains("damaged") && error.contains(&path.display().to_string()), "{case}: {error}");
    }
    std::fs::write(&path, &segment).unwrap();
    let zero = files::segment(dir.path(), 0);
    let header = format::Header { magic: format::LOG_MAGIC, generation: 0, last_version: 1 };
    std::fs::write(&zero, header.encode()).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
        panic!("a segment 0 was taken")
    };
    assert!(error.contains("numbers its segments from 1"), "{error}");
    std::fs::remove_file(&zero).unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    close(store).await;
}

/// A store whose versions would reach 2^53 (a clock centuries ahead, or data written under one) does
/// not open, saying why: it went on handing out versions that its next recovery took for damage, and
/// the directory never opened again.
#[tokio::test]
async fn a_store_whose_versions_would_reach_2_to_the_53_does_not_open() {
    let (dir, _, path, segment) = closed_history(3).await;
    let mut near = segment.clone();
    let last = (format::VERSION_LIMIT - 5).to_le_bytes();
    near[format::HEADER_LEN - 8..format::HEADER_LEN].copy_from_slice(&last);
    std::fs::write(&path, &near).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
        panic!("a store about to pass 2^53 opened")
    };
    assert!(error.contains("2^53") && error.contains("clock"), "{error}");
    // Nothing was written: the directory opens as it was once the header is.
    std::fs::write(&path, &segment).unwrap();
    close(DiskStore::open_when_free(dir.path(), test_config()).unwrap()).await;
}

/// A segment whose header was being written when the process stopped holds nothing: `qkv repair` has
/// nothing to do (the store finishes it when it opens, and goes on in it), and says so rather than
/// asking for a backup.
#[tokio::test]
async fn a_segment_stopped_while_being_created_needs_no_repair() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let states = write_history(&store, 5).await;
    close(store).await;
    let (last, _) = files::list(dir.path()).unwrap().segments.pop_last().unwrap();
    std::fs::write(files::segment(dir.path(), last + 1), [0x71, 0x6b]).unwrap();
    assert_eq!(DiskStore::repair_when_free(dir.path()).unwrap(), Repaired::Nothing);
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    assert_holds(&store, states.last().unwrap(), "after the half-made segment").await;
    close(store).await;
    // It was finished, not removed (a snapshot's segment is then missing only by damage), and the
    // log goes on in it, since it holds no record.
    let segments = files::list(dir.path()).unwrap().segments;
    assert_eq!(segments.keys().rev().take(2).copied().collect::<Vec<_>>(), [last + 1, last]);
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    assert_holds(&store, states.last().unwrap(), "opened again").await;
    close(store).await;
}

/// The data is its owner's alone: the directory the store creates is 0700, and every file in it 0600
/// (a snapshot and a segment included), whatever the umask.
#[tokio::test]
async fn the_data_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let config = DiskConfig { snapshot_log_size: 16 << 10, ..test_config() };
    let store = DiskStore::open_when_free(&dir, config).unwrap();
    let mut i = 0;
    while files::list(&dir).unwrap().snapshots.is_empty() {
        store.set(TABLE, &format!("k{i}"), format!("{i:0>60}").into(), None).await.unwrap();
        i += 1;
    }
    close(store).await;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the directory");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// A file a snapshot made unnecessary that cannot be removed (here a directory in its name's place) is
/// left with a warning: the snapshot counts as written, and the next one comes when the log has grown
/// again. (The snapshot failed, and each retry, a minute apart, wrote another whole one that could not
/// clean up either.) And an error reading a file of the store names it.
#[tokio::test]
async fn a_file_that_cannot_be_removed_fails_no_snapshot_and_errors_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig { snapshot_log_size: 16 << 10, ..test_config() };
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    let stuck = files::snapshot(dir.path(), 1);
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("held"), "x").unwrap();
    let mut i = 0;
    let two_snapshots = async {
        while files::list(dir.path()).unwrap().snapshots.keys().next_back() < Some(&3) {
            store.set(TABLE, &format!("k{i}"), format!("{i:0>60}").into(), None).await.unwrap();
            i += 1;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), two_snapshots)
        .await
        .expect("a second snapshot within 30 s: the first was taken for a failure, retried a minute later");
    close(store).await;
    close(DiskStore::open_when_free(dir.path(), config).unwrap()).await;
    // A directory where the newest snapshot should be: the error says which file.
    let odd = files::snapshot(dir.path(), 99);
    std::fs::create_dir(&odd).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), config) else {
        panic!("a directory was read as a snapshot")
    };
    assert!(error.contains(&odd.display().to_string()), "{error}");
}

/// A data directory given as the path of a file says so ("File exists" said nothing of the kind).
#[test]
fn a_file_where_the_data_directory_should_be_is_named_as_not_a_directory() {
    let parent = tempfile::tempdir().unwrap();
    let file = parent.path().join("data");
    std::fs::write(&file, "not a directory").unwrap();
    let refused = DiskStore::open(&file, test_config()).err().expect("a file is no data directory");
    assert!(refused.to_string().contains("not a directory"), "{refused}");
}

/// The log after a snapshot holds every write since: a directory whose snapshot is there without it
/// (the log files removed by hand to save space, or left out of a copy) is refused, not opened with
/// those writes gone, and `qkv repair` says it cannot mend it.
#[tokio::test]
async fn a_snapshot_without_the_log_after_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig { snapshot_log_size: 16 << 10, ..test_config() };
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    let mut i = 0;
    while files::list(dir.path()).unwrap().snapshots.is_empty() {
        store.set(TABLE, &format!("k{i}"), format!("{i:0>60}").into(), None).await.unwrap();
        i += 1;
    }
    close(store).await;
    let listing = files::list(dir.path()).unwrap();
    let (&snapshot, _) = listing.snapshots.iter().next_back().unwrap();
    for (_, segment) in listing.segments.range(snapshot..) {
        std::fs::remove_file(segment).unwrap();
    }
    let missing = files::segment(dir.path(), snapshot).display().to_string();
    let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), config) else {
        panic!("opened a snapshot without the log after it")
    };
    assert!(error.contains(&missing) && error.contains("is missing"), "{error}");
    assert!(error.contains("restore the directory from a backup"), "what to do: {error}");
    let repaired = DiskStore::repair_when_free(dir.path()).unwrap();
    assert!(
        matches!(&repaired, Repaired::Unrepairable { file, what } if file.display().to_string() == missing && what.contains("is missing")),
        "{repaired:?}"
    );
}

/// A store that stops without closing (a crash) leaves its segment's zeros; they are cut off when it
/// opens, the records before them all recovered, and a closed store leaves none.
#[tokio::test]
async fn the_zeros_written_ahead_are_cut_off_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let states = write_history(&store, 10).await;
    let (_, path) = files::list(dir.path()).unwrap().segments.pop_last().unwrap();
    let written = std::fs::read(&path).unwrap();
    assert_eq!(written.len() as u64, files::ZEROED_AHEAD, "room written ahead of the records");
    let records_end = *record_ends_before_zeros(&written).last().unwrap();
    assert!(written[records_end as usize..].iter().all(|&b| b == 0), "zeros after the records");
    // The crash: the files as they are now, copied before the store is closed.
    let crashed = tempfile::tempdir().unwrap();
    std::fs::write(crashed.path().join(path.file_name().unwrap()), &written).unwrap();
    close(store).await;
    assert_eq!(std::fs::read(&path).unwrap().len() as u64, records_end, "a closed store cuts its zeros off");
    for _ in 0..2 {
        let store = DiskStore::open_when_free(crashed.path(), test_config()).unwrap();
        assert_holds(&store, states.last().unwrap(), "after a crash").await;
        close(store).await;
    }
    let (_, first) = files::list(crashed.path()).unwrap().segments.pop_first().unwrap();
    assert_eq!(std::fs::read(first).unwrap().len() as u64, records_end, "cut off where the records end");
}

/// Where each record of a log segment that ends in zeros ends.
fn record_ends_before_zeros(segment: &[u8]) -> Vec<u64> {
    let mut reader =
        format::Reader::new(&segment[format::HEADER_LEN..], format::HEADER_LEN as u64, segment.len() as u64);
    let mut ends = Vec::new();
    loop {
        match reader.next().unwrap() {
            format::Next::Record(_) => ends.push(reader.offset()),
            format::Next::Unwritten { .. } => return ends,
            other => panic!("{other:?}"),
        }
    }
}

/// A process stopped while it wrote a snapshot leaves a partial file (cut anywhere), or a complete one
/// whose older segments were not yet removed: either way, every write is recovered.
#[tokio::test]
async fn a_crash_while_a_snapshot_is_written_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let states = write_history(&store, 300).await;
    let expected = states.last().unwrap().clone();
    // The snapshot the next rotation would write, taken from the live store.
    let side = tempfile::tempdir().unwrap();
    let full = side.path().join("snapshot");
    snapshot::write_partial(&full, 3, &store.memory, &std::sync::atomic::AtomicBool::new(false)).unwrap();
    close(store).await;
    let snapshot = std::fs::read(&full).unwrap();
    let copy_with = |snapshot_file: std::path::PathBuf, bytes: &[u8]| {
        let copy = tempfile::tempdir().unwrap();
        for (_, path) in files::list(dir.path()).unwrap().segments {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        // The rotation that started the snapshot started segment 3 before it, as the committer does
        // (2 stands for the segments between).
        files::create_segment(copy.path(), 2, 0).unwrap();
        files::create_segment(copy.path(), 3, 0).unwrap();
        std::fs::write(copy.path().join(snapshot_file.file_name().unwrap()), bytes).unwrap();
        copy
    };
    let cuts = (0..snapshot.len()).step_by(61).chain(snapshot.len() - 30..snapshot.len() + 1);
    for cut in cuts {
        let copy = copy_with(files::partial_snapshot(dir.path(), 3), &snapshot[..cut]);
        let store = DiskStore::open_when_free(copy.path(), test_config()).unwrap();
        assert_holds(&store, &expected, &format!("snapshot cut at byte {cut}")).await;
        close(store).await;
        assert!(files::list(copy.path()).unwrap().partial.is_empty(), "the partial snapshot is removed");
    }
    // Renamed into place, older segments not yet removed.
    let copy = copy_with(files::snapshot(dir.path(), 3), &snapshot);
    let store = DiskStore::open_when_free(copy.path(), test_config()).unwrap();
    assert_holds(&store, &expected, "a complete snapshot beside the segments it replaces").await;
    close(store).await;
    let listing = files::list(copy.path()).unwrap();
    assert!(listing.segments.keys().all(|&g| g >= 3), "{listing:?}");
    // A complete snapshot damaged afterwards is refused, not half-loaded.
    let mut damaged = snapshot.clone();
    damaged[snapshot.len() / 2] ^= 1;
    let copy = copy_with(files::snapshot(dir.path(), 3), &damaged);
    assert!(
        matches!(DiskStore::open_when_free(copy.path(), test_config()), Err(StorageError::Backend(e)) if e.contains("damaged"))
    );
    // `qkv repair` says so, naming the snapshot, and changes nothing.
    let snapshot_path = files::snapshot(copy.path(), 3);
    let repaired = DiskStore::repair_when_free(copy.path()).unwrap();
    assert!(
        matches!(&repaired, Repaired::Unrepairable { file, what } if *file == snapshot_path && what.contains("snapshot")),
        "{repaired:?}"
    );
    assert_eq!(std::fs::read(&snapshot_path).unwrap(), damaged);
}

/// Snapshots keep the log short: with a small threshold, an overwrite-heavy load leaves a snapshot and
/// the segments after it, not the whole history; and everything is there after a restart.
#[tokio::test]
async fn snapshots_compact_the_log_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = DiskConfig { snapshot_log_size: 16 << 10, ..test_config() };
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    let mut model = Model::new();
    let mut snapshots_seen = 0;
    for i in 0..5000 {
        let key = format!("k{}", i % 50);
        let value = Value::from(format!("{i:0>60}"));
        let WriteOutcome::Written { version, .. } =
            store.set(TABLE, &key, value.clone(), None).await.unwrap()
        else {
            panic!("an unconditional write")
        };
        model.insert(key, Versioned { value, version });
        if i % 100 == 99 {
            let listing = files::list(dir.path()).unwrap();
            snapshots_seen = snapshots_seen.max(listing.snapshots.keys().next_back().copied().unwrap_or(0));
        }
    }
    close(store).await;
    assert!(
        snapshots_seen >= 3,
        "5000 writes of ~90 bytes over a 16 KiB threshold: {snapshots_seen} snapshots"
    );
    let listing = files::list(dir.path()).unwrap();
    let (&latest, _) = listing.snapshots.iter().next_back().unwrap();
    assert_eq!(listing.snapshots.len(), 1, "older snapshots are removed: {listing:?}");
    assert!(
        listing.segments.keys().all(|&g| g >= latest),
        "segments before the snapshot are removed: {listing:?}"
    );
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    assert_holds(&store, &model, "after snapshots and a restart").await;
    close(store).await;
}

#[tokio::test]
async fn a_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open(dir.path(), test_config()) else {
        panic!("a second store opened the same directory")
    };
    assert!(error.contains("another process"), "{error}");
    // The directory itself is locked too: deleting the lock file (by hand, a cleanup of stray files)
    // lets no second store in.
    std::fs::remove_file(dir.path().join("qkv.lock")).unwrap();
    let Err(StorageError::Backend(error)) = DiskStore::open(dir.path(), test_config()) else {
        panic!("a second store opened the directory once its lock file was gone")
    };
    assert!(error.contains("another process"), "{error}");
    close(store).await;
    close(DiskStore::open_when_free(dir.path(), test_config()).unwrap()).await;
}

/// What lets a pipelined connection overlap its writes (`APPLIES_WRITES_IN_ISSUE_ORDER`): a write is
/// applied on its first poll, before it waits for its fsync, so writes polled once each, in turn, are
/// applied in that order and share a commit.
#[tokio::test]
async fn writes_are_applied_in_the_order_they_are_first_polled() {
    use std::future::Future;
    use std::task::Context;

    let store = DiskStore::temporary();
    let keys: Vec<String> = (0..ORDERED_WRITE_KEYS).map(|i| format!("k{i}")).collect();
    let pairs = |value: i64| keys.iter().map(|k| (k.clone(), Value::from(value))).collect::<Vec<_>>();
    type Write<'a> = std::pin::Pin<Box<dyn Future<Output = StorageResult<Vec<WriteOutcome>>> + Send + 'a>>;
    let mut writes: Vec<Write<'_>> = vec![
        Box::pin(store.set_many(TABLE, pairs(1))),
        Box::pin(async { Ok(vec![store.set(TABLE, "k7", 2i64.into(), None).await?]) }),
        Box::pin(store.delete_many(TABLE, &keys[..3])),
        Box::pin(async { Ok(vec![store.set(TABLE, "k1", 3i64.into(), None).await?]) }),
    ];
    let mut context = Context::from_waker(std::task::Waker::noop());
    for write in &mut writes {
        let _ = write.as_mut().poll(&mut context);
    }
    // Applied already, durable or not: the store's memory shows the outcome of the order above.
    let held = |key: &str| {
        let read = futures_util::FutureExt::now_or_never(store.memory.get(TABLE, key))
            .expect("memory answers at once");
        read.unwrap().map(|v| v.value)
    };
    assert_eq!(held("k7"), Some(2i64.into()));
    assert_eq!(held("k0"), None);
    assert_eq!(held("k1"), Some(3i64.into()));
    assert_eq!(held("k9"), Some(1i64.into()));
    for write in writes {
        write.await.unwrap();
    }
}

/// A process stopped while it created a log segment leaves it empty or with part of its header: it is
/// removed and its number reused, so the next opens find no gap in the log.
#[tokio::test]
async fn a_crash_while_a_segment_is_created_leaves_no_gap() {
    for leftover in [&[][..], &format::LOG_MAGIC[..5], &[0; format::HEADER_LEN][..]] {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
        let states = write_history(&store, 10).await;
        close(store).await;
        let (&last, _) = files::list(dir.path()).unwrap().segments.iter().next_back().unwrap();
        std::fs::write(files::segment(dir.path(), last + 1), leftover).unwrap();
        for _ in 0..3 {
            let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
            assert_holds(&store, states.last().unwrap(), &format!("leftover segment {leftover:?}")).await;
            close(store).await;
        }
    }
}

/// What a crash cannot leave in the last segment is not cut off as if it were torn: a damaged header
/// on a segment that holds records, or a whole record this version does not know (another version's
/// format). The store refuses to open, and the records stay on disk.
#[tokio::test]
async fn the_last_segment_is_cut_only_where_a_write_was_torn() {
    let (dir, _, path, original) = closed_history(10).await;
    let mut bad_header = original.clone();
    bad_header[3] ^= 1;
    // A record of kind 9 with a valid checksum, then a whole set record after it.
    let mut unknown = original.clone();
    let body = [9u8; 12];
    unknown.extend_from_slice(&(body.len() as u32).to_le_bytes());
    unknown.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    unknown.extend_from_slice(&body);
    format::encode_set(&mut unknown, u64::MAX >> 12, TABLE, "later", &"v".into());
    for (case, bytes) in [("a damaged header", bad_header), ("an unknown record", unknown)] {
        std::fs::write(&path, &bytes).unwrap();
        let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
            panic!("{case}: the store opened")
        };
        assert!(error.contains("damaged"), "{case}: {error}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{case}: the segment was changed");
    }
}

/// A start with no write since the last goes on in the last segment rather than add an empty one (a
/// server in a restart loop left one more file per start for every recovery to open); once the last
/// segment holds records, a start begins the next one, and every write and version survives.
#[tokio::test]
async fn restarts_without_writes_leave_no_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    let segments = || files::list(dir.path()).unwrap().segments.keys().copied().collect::<Vec<_>>();
    // The reused segment's header is rewritten with each start's version floor, never lower.
    let header_floor = || {
        let mut file = std::fs::File::open(files::segment(dir.path(), 1)).unwrap();
        format::Header::read(&mut file, format::LOG_MAGIC).unwrap().expect("a header").last_version
    };
    let mut floors = Vec::new();
    for _ in 0..3 {
        close(DiskStore::open_when_free(dir.path(), test_config()).unwrap()).await;
        floors.push(header_floor());
    }
    assert_eq!(segments(), [1]);
    assert!(floors.windows(2).all(|w| w[0] < w[1]), "each start raises the floor: {floors:?}");
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let written = store.set(TABLE, "k", "v".into(), None).await.unwrap();
    close(store).await;
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    close(store).await;
    assert_eq!(segments(), [1, 2], "a segment with records is kept, the start after it begins another");
    let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
    let found = store.get(TABLE, "k").await.unwrap().expect("the write survived");
    let WriteOutcome::Written { version, .. } = written else { panic!("{written:?}") };
    assert_eq!(found.version, version);
    // Versions go on after the last one handed out, through the restarted segment's header too.
    let WriteOutcome::Written { version: later, .. } = store.set(TABLE, "k", "w".into(), None).await.unwrap()
    else {
        panic!("not written")
    };
    assert!(later > version, "{later} after {version}");
    close(store).await;
    assert_eq!(segments(), [1, 2]);
}

/// A batch is split in half only when the last cycle left the runtime room, and never into halves
/// smaller than the minimum.
#[test]
fn batches_split_only_when_the_runtime_idled() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    assert_eq!(log::split_point(ms(4), ms(2), 250), 125, "half idle: lockstep, split");
    assert_eq!(log::split_point(ms(4), ms(1), 250), 125, "a quarter idle is room enough");
    assert_eq!(log::split_point(ms(4), Duration::from_micros(500), 250), usize::MAX, "saturated");
    assert_eq!(log::split_point(ms(4), ms(4), 15), usize::MAX, "halves too small to pay an fsync");
    assert_eq!(log::split_point(ms(4), ms(4), 16), 8, "16 in flight: two commits of 8");
    assert_eq!(log::split_point(Duration::ZERO, Duration::ZERO, 250), usize::MAX);
}

/// A store attached to a runtime whose parks it never hears of, with a long commit wait: nothing is
/// committed before its test says (or its log fails).
fn uncommitted_store() -> (tempfile::TempDir, DiskStore) {
    let config = DiskConfig { commit_wait: std::time::Duration::from_secs(30), ..test_config() };
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open_when_free(dir.path(), config).unwrap();
    store.attach_runtime(&RuntimeIdle::default());
    (dir, store)
}

/// Within `deferring`, a write and a read answer in their first poll and hand their wait to the
/// caller as a ticket, which passes once the log is durable, and turns into what the store itself
/// would have answered when the log fails: 504 (the write may be on disk) and 503 (for a read, which
/// changed nothing).
#[tokio::test]
async fn deferred_answers_wait_for_their_ticket_and_fail_as_the_store_would() {
    let (_dir, store) = uncommitted_store();
    let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());

    let mut write = Box::pin(store.set(TABLE, "k", "v".into(), None));
    let (polled, write_ticket) = deferring(|| write.as_mut().poll(noop));
    assert!(matches!(polled, std::task::Poll::Ready(Ok(WriteOutcome::Written { .. }))), "{polled:?}");
    let write_ticket = write_ticket.expect("a write not yet durable hands over a ticket").ticket;
    assert!(!write_ticket.is_durable());

    let mut read = Box::pin(store.get(TABLE, "k"));
    let (polled, read_ticket) = deferring(|| read.as_mut().poll(noop));
    assert!(matches!(polled, std::task::Poll::Ready(Ok(Some(_)))), "{polled:?}");
    let read_ticket = read_ticket.expect("a read of a write not yet durable hands over a ticket").ticket;

    // Outside `deferring`, the store waits itself.
    let mut waiting = Box::pin(store.get(TABLE, "k"));
    assert!(waiting.as_mut().poll(noop).is_pending());

    store.log.fail("the disk is gone".into());
    let failed = |e: &StorageError| e.to_string().contains("the disk is gone");
    match write_ticket.wait().await {
        Err(e @ StorageError::Uncertain(_)) if failed(&e) => {}
        other => panic!("a write's ticket fails as uncertain: {other:?}"),
    }
    match read_ticket.wait().await {
        Err(e @ StorageError::Unavailable(_)) if failed(&e) => {}
        other => panic!("a read's ticket fails as not executed: {other:?}"),
    }
}

/// Once a write to the log has failed, the store says it is broken (`/healthz` answers 503 and the
/// server exits with an error, so that a supervisor restarts it), and refuses writes.
#[tokio::test]
async fn a_failed_log_leaves_the_store_broken_until_a_restart() {
    let store = DiskStore::temporary();
    assert_eq!(store.broken(), None);
    store.set(TABLE, "k", "v".into(), None).await.unwrap();
    store.log.fail("No space left on device".into());
    let broken = store.broken().expect("broken");
    assert!(broken.contains("No space left on device") && broken.contains("restarts"), "{broken}");
    // Refused before anything is done: not executed (503), whether a write or a delete.
    let refused = store.set(TABLE, "k", "w".into(), None).await;
    assert!(
        matches!(&refused, Err(StorageError::Unavailable(e)) if e.contains("No space left")),
        "{refused:?}"
    );
    assert!(matches!(store.delete(TABLE, "k", None).await, Err(StorageError::Unavailable(_))));
    assert_eq!(store.get(TABLE, "k").await.unwrap().map(|v| v.value), Some("v".into()), "reads go on");
}

/// Who asks to hear when a deferred answer goes out ([`when_settled`]) hears its final status, once;
/// an answer that was not deferred gives the asker back, to record at once.
#[tokio::test]
async fn a_deferred_answer_tells_its_final_status_when_it_is_settled() {
    let (_dir, store) = uncommitted_store();
    let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
    let heard = Arc::new(Mutex::new(Vec::new()));
    let hear = |heard: &Arc<Mutex<Vec<u32>>>| {
        let heard = heard.clone();
        move |status| heard.lock().push(status)
    };

    let mut write = Box::pin(store.set(TABLE, "k", "v".into(), None));
    let (_, deferred) = deferring(|| {
        let polled = write.as_mut().poll(noop);
        assert!(when_settled(hear(&heard)).is_ok(), "a deferred write takes the asker");
        polled
    });
    let deferred = deferred.expect("deferred");
    assert!(heard.lock().is_empty(), "nothing heard before the answer goes out");
    deferred.settle(504);
    assert_eq!(*heard.lock(), [504]);
    // Nothing deferred (outside `deferring`, or a store that answered as it was): given back.
    assert!(when_settled(hear(&heard)).is_err());
    let (given_back, nothing) = deferring(|| when_settled(hear(&heard)).is_err());
    assert!(given_back && nothing.is_none());
}

/// A relaxed log acknowledges writes before they are durable, so a machine's crash may leave damage with
/// whole records after it: the store opens, cutting the log there and keeping what it cut beside it.
#[tokio::test]
async fn a_relaxed_log_damaged_before_whole_records_is_cut_keeping_what_it_cuts() {
    let (dir, states, path, mut bytes) = closed_history(10).await;
    let ends = record_ends(&bytes);
    // The first byte of the fifth record's body.
    bytes[ends[3] as usize + 8] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let relaxed = DiskConfig {
        durability: Durability::Relaxed { flush_interval: std::time::Duration::from_millis(10) },
        ..test_config()
    };
    let store = DiskStore::open_when_free(dir.path(), relaxed).expect("a relaxed log opens");
    assert_holds(&store, &states[4], "cut at the damage").await;
    close(store).await;
    let saved = std::path::PathBuf::from(format!("{}.damaged-at-{}", path.display(), ends[3]));
    assert_eq!(std::fs::read(saved).unwrap(), bytes[ends[3] as usize..], "the bytes cut, kept");
    // Strict, the same damage is refused (a_torn_or_damaged_tail_loses_no_write_before_it).

    // Damaged at its first record, a segment keeps no record once cut: it is not gone on with (a
    // start goes on in an empty last segment), so the same damage there later could not replace the
    // bytes kept the first time.
    let (dir, _, path, mut bytes) = closed_history(10).await;
    let first = format::HEADER_LEN;
    bytes[first + 8] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let generation = files::list(dir.path()).unwrap().segments.keys().copied().next_back().unwrap();
    close(DiskStore::open_when_free(dir.path(), relaxed).expect("a relaxed log opens")).await;
    let segments: Vec<u64> = files::list(dir.path()).unwrap().segments.keys().copied().collect();
    assert_eq!(segments.last(), Some(&(generation + 1)), "a new segment after the cut one: {segments:?}");
    let saved = std::path::PathBuf::from(format!("{}.damaged-at-{first}", path.display()));
    assert_eq!(std::fs::read(saved).unwrap(), bytes[first..], "the bytes cut, kept");

    // Cut by `qkv repair` (a strict log refuses to open), the segment is left with no record, and the
    // kept file beside it is what says, at every later start, not to go on in it.
    let (dir, _, path, mut bytes) = closed_history(10).await;
    bytes[first + 8] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let generation = files::list(dir.path()).unwrap().segments.keys().copied().next_back().unwrap();
    assert!(DiskStore::open_when_free(dir.path(), test_config()).is_err(), "whole records follow the damage");
    assert!(matches!(DiskStore::repair_when_free(dir.path()).unwrap(), Repaired::Cut { .. }));
    close(DiskStore::open_when_free(dir.path(), test_config()).unwrap()).await;
    let segments: Vec<u64> = files::list(dir.path()).unwrap().segments.keys().copied().collect();
    assert_eq!(
        segments.last(),
        Some(&(generation + 1)),
        "a new segment after the repaired one: {segments:?}"
    );
    assert_eq!(files::list(dir.path()).unwrap().damage_kept.into_iter().collect::<Vec<_>>(), [generation]);
}

/// A tail made of fake record heads, each claiming a body to the end of the file, is not checked head
/// by head (time quadratic in the tail): the scan gives up once it has hashed its budget.
#[test]
fn a_scan_past_damage_gives_up_on_fake_heads_within_its_budget() {
    let mut fake = Vec::new();
    fake.extend_from_slice(&(1u32 << 20).to_le_bytes()); // a body of 1 MiB
    fake.extend_from_slice(&0u32.to_le_bytes()); // a checksum that never holds
    fake.push(1); // a set
    fake.extend_from_slice(&(u64::MAX >> 1).to_le_bytes()); // numbered above anything before it
    fake.extend_from_slice(&0u32.to_le_bytes()); // an empty table name
    let mut bytes = vec![0xff; 8]; // the damage
    while bytes.len() < 4 << 20 {
        bytes.extend_from_slice(&fake);
    }
    let file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut &file, &bytes).unwrap();
    match recovery::whole_record_after(&file, 0, bytes.len() as u64, 0).unwrap() {
        recovery::Scan::GaveUp { hashed } => assert!(hashed <= 256 << 20, "hashed {hashed} bytes"),
        other => panic!("{other:?}"),
    }
}

/// A segment missing from the log is named as what it is: the ones before the first (or the snapshot
/// that replaced them), or one between two others.
#[tokio::test]
async fn a_missing_segment_is_named_for_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["a", "b", "c"] {
        let store = DiskStore::open_when_free(dir.path(), test_config()).unwrap();
        store.set(TABLE, key, "v".into(), None).await.unwrap();
        close(store).await;
    }
    let segments = files::list(dir.path()).unwrap().segments;
    assert_eq!(segments.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    for (removed, said) in [
        (2, "the segment before it (number 2) is missing"),
        (1, "the segments before it, or the snapshot that replaced them, are missing"),
    ] {
        std::fs::remove_file(&segments[&removed]).unwrap();
        let Err(StorageError::Backend(error)) = DiskStore::open_when_free(dir.path(), test_config()) else {
            panic!("opened without segment {removed}")
        };
        assert!(error.contains(said), "{error}");
    }
}
