//! The storage conformance suite: the semantics documented in `storage/mod.rs`, written once and run
//! against every backend. A backend opts in with one line in its test module:
//!
//! ```ignore
//! crate::storage::suite::storage_conformance!(MyBackend::new());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{PageLimit, Storage, StorageError, TableScan, Versioned, WriteOutcome};
use crate::pb::Value;

/// Instantiates every conformance test for the backend built by `$make` (evaluated once per test).
macro_rules! storage_conformance {
    ($make:expr) => {
        $crate::storage::suite::storage_conformance!(@tests $make;
            missing_keys_and_tables_read_as_absent,
            set_then_get_returns_value_and_version,
            set_returns_previous_value_and_increasing_versions,
            delete_returns_previous_value,
            recreated_key_never_reuses_a_version,
            conditional_set_writes_only_on_matching_version,
            conditional_delete_deletes_only_on_matching_version,
            multi_key_reads_answer_in_request_order,
            multi_key_operations_on_thousands_of_keys_keep_request_order,
            multi_key_writes_answer_in_request_order,
            names_are_arbitrary_utf8_and_tables_are_isolated,
            every_value_type_round_trips,
            scan_of_missing_table_is_one_empty_final_page,
            scan_pages_respect_limits_and_cover_every_key_once,
            scan_skips_keys_deleted_before_they_are_reached,
            scan_pages_hold_at_least_one_entry_whatever_the_limits,
            scan_is_in_key_order_and_starts_after_a_key,
            concurrent_conditional_increments_are_atomic,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = std::sync::Arc::new($make);
                $crate::storage::suite::$name(store).await;
            }
        )*
    };
}
pub(crate) use storage_conformance;

/// Instantiates the conformance tests of a full store for the backend built by `$make`, which must
/// have a memory limit that [`fill`] can reach in a few hundred writes (a few MiB).
macro_rules! full_store_conformance {
    ($make:expr) => {
        $crate::storage::suite::storage_conformance!(@tests $make;
            conditional_writes_that_cannot_match_are_conflicts_when_the_store_is_full,
        );
    };
}
pub(crate) use full_store_conformance;

fn written(outcome: WriteOutcome) -> (Option<Versioned>, u64) {
    match outcome {
        WriteOutcome::Written { previous, version } => (previous, version),
        WriteOutcome::Conflict { current } => panic!("unexpected conflict, current = {current:?}"),
    }
}

fn conflict(outcome: WriteOutcome) -> Option<Versioned> {
    match outcome {
        WriteOutcome::Conflict { current } => current,
        WriteOutcome::Written { .. } => panic!("expected a conflict, but the write happened"),
    }
}

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

pub async fn missing_keys_and_tables_read_as_absent<S: Storage>(s: Arc<S>) {
    assert_eq!(s.get("no-table", "k").await.unwrap(), None);
    s.set("t", "present", "v".into(), None).await.unwrap();
    assert_eq!(s.get("t", "absent").await.unwrap(), None);
    assert_eq!(s.versions("t", &strings(&["absent"])).await.unwrap(), vec![0]);
}

pub async fn set_then_get_returns_value_and_version<S: Storage>(s: Arc<S>) {
    let (previous, version) = written(s.set("t", "k", "v1".into(), None).await.unwrap());
    assert_eq!(previous, None);
    assert!(version > 0, "versions of existing keys are positive");
    let got = s.get("t", "k").await.unwrap().expect("just written");
    assert_eq!(got, Versioned { value: "v1".into(), version });
}

pub async fn set_returns_previous_value_and_increasing_versions<S: Storage>(s: Arc<S>) {
    let (_, v1) = written(s.set("t", "k", "v1".into(), None).await.unwrap());
    let (previous, v2) = written(s.set("t", "k", "v2".into(), None).await.unwrap());
    assert_eq!(previous, Some(Versioned { value: "v1".into(), version: v1 }));
    assert!(v2 > v1, "each write must give a newer version ({v2} after {v1})");
    assert_eq!(s.versions("t", &strings(&["k"])).await.unwrap(), vec![v2]);
}

pub async fn delete_returns_previous_value<S: Storage>(s: Arc<S>) {
    let (_, version) = written(s.set("t", "k", "v".into(), None).await.unwrap());
    let (previous, after) = written(s.delete("t", "k", None).await.unwrap());
    assert_eq!(previous, Some(Versioned { value: "v".into(), version }));
    assert_eq!(after, 0, "a deleted key's version is 0");
    assert_eq!(s.get("t", "k").await.unwrap(), None);
    assert_eq!(written(s.delete("t", "k", None).await.unwrap()), (None, 0));
}

pub async fn recreated_key_never_reuses_a_version<S: Storage>(s: Arc<S>) {
    let (_, first) = written(s.set("t", "k", "v".into(), None).await.unwrap());
    s.delete("t", "k", None).await.unwrap();
    let (_, second) = written(s.set("t", "k", "v".into(), None).await.unwrap());
    assert!(second > first, "a re-created key must not reuse version {first}");
    let stale = s.set("t", "k", "w".into(), Some(first)).await.unwrap();
    assert_eq!(conflict(stale).map(|c| c.version), Some(second));
}

pub async fn conditional_set_writes_only_on_matching_version<S: Storage>(s: Arc<S>) {
    // Expected 0 means "only if absent".
    let (_, v1) = written(s.set("t", "k", "a".into(), Some(0)).await.unwrap());
    let current = conflict(s.set("t", "k", "b".into(), Some(0)).await.unwrap());
    assert_eq!(current, Some(Versioned { value: "a".into(), version: v1 }));

    let current = conflict(s.set("t", "k", "b".into(), Some(v1 + 1000)).await.unwrap());
    assert_eq!(current.map(|c| c.version), Some(v1));
    assert_eq!(
        s.get("t", "k").await.unwrap().map(|v| v.value),
        Some("a".into()),
        "a conflict writes nothing"
    );

    let (previous, v2) = written(s.set("t", "k", "b".into(), Some(v1)).await.unwrap());
    assert_eq!(previous.map(|p| p.value), Some("a".into()));
    assert!(v2 > v1);

    assert_eq!(conflict(s.set("t", "absent", "x".into(), Some(v2)).await.unwrap()), None);
    assert_eq!(s.get("t", "absent").await.unwrap(), None);
}

pub async fn conditional_delete_deletes_only_on_matching_version<S: Storage>(s: Arc<S>) {
    let (_, version) = written(s.set("t", "k", "a".into(), None).await.unwrap());
    let current = conflict(s.delete("t", "k", Some(version + 1)).await.unwrap());
    assert_eq!(current.map(|c| c.version), Some(version));
    assert!(s.get("t", "k").await.unwrap().is_some(), "a conflicting delete deletes nothing");
    assert_eq!(conflict(s.delete("t", "k", Some(0)).await.unwrap()).map(|c| c.version), Some(version));

    let (previous, after) = written(s.delete("t", "k", Some(version)).await.unwrap());
    assert_eq!(previous.map(|p| p.version), Some(version));
    assert_eq!(after, 0);

    assert_eq!(conflict(s.delete("t", "k", Some(version)).await.unwrap()), None);
    assert_eq!(written(s.delete("t", "k", Some(0)).await.unwrap()), (None, 0));
}

pub async fn multi_key_reads_answer_in_request_order<S: Storage>(s: Arc<S>) {
    let (_, va) = written(s.set("t", "a", "1".into(), None).await.unwrap());
    let (_, vc) = written(s.set("t", "c", "3".into(), None).await.unwrap());
    let keys = strings(&["c", "b", "a", "c"]);
    let got = s.get_many("t", &keys).await.unwrap();
    let expected = vec![
        Some(Versioned { value: "3".into(), version: vc }),
        None,
        Some(Versioned { value: "1".into(), version: va }),
        Some(Versioned { value: "3".into(), version: vc }),
    ];
    assert_eq!(got, expected);
    assert_eq!(s.versions("t", &keys).await.unwrap(), vec![vc, 0, va, vc]);
    assert_eq!(s.get_many("no-table", &keys).await.unwrap(), vec![None; 4]);
    assert_eq!(s.get_many("t", &[]).await.unwrap(), vec![]);
}

pub async fn multi_key_operations_on_thousands_of_keys_keep_request_order<S: Storage>(s: Arc<S>) {
    // Enough keys for backends that work in batches to cross several batch boundaries.
    let n = 5_000;
    let keys: Vec<String> = (0..n).rev().map(|i| format!("k{i}")).collect();
    let pairs = keys.iter().enumerate().map(|(i, k)| (k.clone(), Value::from(i as i64))).collect();
    let versions: Vec<u64> =
        s.set_many("t", pairs).await.unwrap().into_iter().map(|o| written(o).1).collect();
    let got = s.get_many("t", &keys).await.unwrap();
    for (i, entry) in got.iter().enumerate() {
        assert_eq!(
            entry.as_ref().map(|e| (&e.value, e.version)),
            Some((&Value::from(i as i64), versions[i]))
        );
    }
    assert_eq!(s.versions("t", &keys).await.unwrap(), versions);
    let deleted = s.delete_many("t", &keys).await.unwrap();
    for (i, outcome) in deleted.into_iter().enumerate() {
        assert_eq!(written(outcome).0.map(|p| p.value), Some(Value::from(i as i64)));
    }
}

pub async fn multi_key_writes_answer_in_request_order<S: Storage>(s: Arc<S>) {
    s.set("t", "b", "old".into(), None).await.unwrap();
    let pairs = vec![("a".to_string(), Value::from(1i64)), ("b".to_string(), Value::from(2i64))];
    let outcomes: Vec<_> = s.set_many("t", pairs).await.unwrap().into_iter().map(written).collect();
    assert_eq!(outcomes[0].0, None);
    assert_eq!(outcomes[1].0.as_ref().map(|p| p.value.clone()), Some("old".into()));
    assert!(outcomes[0].1 > 0 && outcomes[1].1 > 0);

    let deleted: Vec<_> = s
        .delete_many("t", &strings(&["b", "missing", "a", "b"]))
        .await
        .unwrap()
        .into_iter()
        .map(written)
        .collect();
    assert_eq!(deleted[0].0.as_ref().map(|p| p.value.clone()), Some(2i64.into()));
    assert_eq!(deleted[1], (None, 0));
    assert_eq!(deleted[2].0.as_ref().map(|p| p.value.clone()), Some(1i64.into()));
    assert_eq!(deleted[3], (None, 0), "a key named twice is deleted once, as by two deletes");
    assert_eq!(s.get_many("t", &strings(&["a", "b"])).await.unwrap(), vec![None, None]);
}

pub async fn names_are_arbitrary_utf8_and_tables_are_isolated<S: Storage>(s: Arc<S>) {
    // The course's sled backend split "table:key" on ':' and confused these; every pair must stay apart.
    let names = [
        ("a:b", "c"),
        ("a", "b:c"),
        ("", ""),
        ("", "k"),
        ("t", ""),
        ("tab\0le", "k\0ey"),
        ("表", "ключ 🔑"),
        ("a/b", "c\nd"),
    ];
    for (i, (table, key)) in names.iter().enumerate() {
        s.set(table, key, (i as i64).into(), None).await.unwrap();
    }
    for (i, (table, key)) in names.iter().enumerate() {
        let got = s.get(table, key).await.unwrap().map(|v| v.value);
        assert_eq!(got, Some((i as i64).into()), "table {table:?} key {key:?}");
    }
    assert_eq!(s.get("a:b", "b:c").await.unwrap(), None);
}

pub async fn every_value_type_round_trips<S: Storage>(s: Arc<S>) {
    let large = Bytes::from((0..(1 << 20)).map(|i| i as u8).collect::<Vec<u8>>());
    let values: Vec<Value> = vec![
        "".into(),
        "text".into(),
        Value::from(Bytes::new()),
        Value::from(large),
        i64::MIN.into(),
        i64::MAX.into(),
        (-0.5f64).into(),
        f64::INFINITY.into(),
        true.into(),
        false.into(),
    ];
    for (i, value) in values.iter().enumerate() {
        s.set("values", &i.to_string(), value.clone(), None).await.unwrap();
    }
    for (i, value) in values.iter().enumerate() {
        let got = s.get("values", &i.to_string()).await.unwrap().map(|v| v.value);
        assert_eq!(got.as_ref(), Some(value), "value #{i}");
    }
}

pub async fn scan_of_missing_table_is_one_empty_final_page<S: Storage>(s: Arc<S>) {
    let mut scan = s.scan("nothing-here", None).await.unwrap();
    let page = scan.next_page(PageLimit { entries: 10, bytes: 1 << 20 }).await.unwrap();
    assert!(page.entries.is_empty());
    assert!(page.done);
}

pub async fn scan_pages_respect_limits_and_cover_every_key_once<S: Storage>(s: Arc<S>) {
    let n = 2_500;
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let key = format!("key-{i}");
        let (_, version) = written(s.set("big", &key, (i as i64).into(), None).await.unwrap());
        expected.insert(key, Versioned { value: (i as i64).into(), version });
    }
    s.set("other", "key-0", "elsewhere".into(), None).await.unwrap();

    let mut seen = BTreeMap::new();
    let mut scan = s.scan("big", None).await.unwrap();
    let limit = PageLimit { entries: 100, bytes: 1 << 20 };
    let mut pages = 0;
    loop {
        let page = scan.next_page(limit).await.unwrap();
        pages += 1;
        assert!(page.entries.len() <= 100, "page of {} entries over the limit", page.entries.len());
        for (key, versioned) in page.entries {
            assert!(seen.insert(key.clone(), versioned).is_none(), "{key} returned twice");
        }
        if page.done {
            break;
        }
        assert!(pages <= n, "scan does not terminate");
    }
    assert_eq!(seen, expected);
    assert!(pages >= 25);

    // A byte limit smaller than one entry still makes progress, one entry per page.
    let mut scan = s.scan("big", None).await.unwrap();
    let page = scan.next_page(PageLimit { entries: 100, bytes: 1 }).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert!(!page.done);
}

pub async fn scan_skips_keys_deleted_before_they_are_reached<S: Storage>(s: Arc<S>) {
    for i in 0..10 {
        s.set("t", &i.to_string(), (i as i64).into(), None).await.unwrap();
    }
    let mut scan = s.scan("t", None).await.unwrap();
    let first = scan.next_page(PageLimit { entries: 1, bytes: 1 << 20 }).await.unwrap();
    let seen_first: Vec<String> = first.entries.iter().map(|(k, _)| k.clone()).collect();
    let to_delete: Vec<String> = (0..10).map(|i| i.to_string()).filter(|k| !seen_first.contains(k)).collect();
    s.delete_many("t", &to_delete).await.unwrap();
    let rest = scan.next_page(PageLimit { entries: 100, bytes: 1 << 20 }).await.unwrap();
    assert!(rest.entries.is_empty(), "deleted keys returned: {:?}", rest.entries);
    assert!(rest.done);
}

pub async fn scan_pages_hold_at_least_one_entry_whatever_the_limits<S: Storage>(s: Arc<S>) {
    for i in 0..3 {
        s.set("t", &i.to_string(), "v".into(), None).await.unwrap();
    }
    let mut scan = s.scan("t", None).await.unwrap();
    let mut seen = 0;
    for _ in 0..10 {
        let page = scan.next_page(PageLimit { entries: 0, bytes: 0 }).await.unwrap();
        assert_eq!(page.entries.len(), 1, "each page makes progress");
        seen += 1;
        if page.done {
            break;
        }
    }
    assert_eq!(seen, 3);
}

/// Paging by key (REST's `after`, Hgetall's `after`) needs one order in every backend: the keys'
/// UTF-8 bytes.
pub async fn scan_is_in_key_order_and_starts_after_a_key<S: Storage>(s: Arc<S>) {
    let keys = ["b", "a", "ä", "ab", "B", "a0", "z"];
    for key in keys {
        s.set("ordered", key, key.into(), None).await.unwrap();
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    let all = |after: Option<&'static str>| {
        let s = s.clone();
        async move {
            let mut scan = s.scan("ordered", after).await.unwrap();
            let mut seen = Vec::new();
            loop {
                let page = scan.next_page(PageLimit { entries: 3, bytes: 1 << 20 }).await.unwrap();
                seen.extend(page.entries.into_iter().map(|(key, _)| key));
                if page.done {
                    return seen;
                }
            }
        }
    };
    assert_eq!(all(None).await, sorted);
    // After a present key, after an absent one, after the last.
    assert_eq!(all(Some("a")).await, sorted[2..]);
    assert_eq!(all(Some("aa")).await, sorted[3..]);
    assert_eq!(all(Some("z")).await, vec!["ä"]);
    assert!(all(Some("ä")).await.is_empty());
    // A scan after keys were added and deleted sees them so (however a backend keeps its order).
    s.set("ordered", "aa", "aa".into(), None).await.unwrap();
    s.delete("ordered", "b", None).await.unwrap();
    s.set("ordered", "a", "replaced".into(), None).await.unwrap();
    assert_eq!(all(Some("a0")).await, vec!["aa", "ab", "z", "ä"]);
}

pub async fn concurrent_conditional_increments_are_atomic<S: Storage>(s: Arc<S>) {
    let (tasks, increments) = (8, 50);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..increments {
                loop {
                    let current = s.get("counter", "n").await.unwrap();
                    let (n, version) = match &current {
                        Some(Versioned { value, version }) => match value.value {
                            Some(crate::pb::value::Value::Integer(n)) => (n, *version),
                            _ => panic!("counter is not an integer: {value:?}"),
                        },
                        None => (0, 0),
                    };
                    match s.set("counter", "n", (n + 1).into(), Some(version)).await.unwrap() {
                        WriteOutcome::Written { .. } => break,
                        WriteOutcome::Conflict { .. } => conflicts += 1,
                    }
                }
            }
            conflicts
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let total = s.get("counter", "n").await.unwrap().map(|v| v.value);
    assert_eq!(total, Some(((tasks * increments) as i64).into()), "an increment was lost");
}

/// True for the refusal of a write that does not fit: the memory store's budget, Redis's `maxmemory`.
pub fn is_full<T: std::fmt::Debug>(result: &Result<T, StorageError>) -> bool {
    matches!(result, Err(StorageError::Full { .. } | StorageError::OutOfMemory(_)))
}

/// Writes values into `table` (keys "fill-0", "fill-1"…), halving their size at each refusal, until the
/// store refuses one of 16 bytes: what room is left is less than a small entry takes. On a Redis
/// Cluster a table lives in one slot: what fills up is the master that holds `table`.
pub async fn fill<S: Storage>(s: &S, table: &str) {
    let (mut size, mut written) = (64 * 1024, 0);
    while size >= 16 {
        let value = Value::from(Bytes::from(vec![0u8; size]));
        let result = s.set(table, &format!("fill-{written}"), value, None).await;
        if is_full(&result) {
            size /= 2;
        } else {
            result.unwrap();
            written += 1;
            assert!(written < 10_000, "the store is not full after {written} writes");
        }
    }
}

/// A conditional write whose condition fails is a conflict that carries the current value, however
/// full the store is: the compare comes before the room. A CAS loop then retries with that value,
/// where being told "the store is full" would make it give up.
pub async fn conditional_writes_that_cannot_match_are_conflicts_when_the_store_is_full<S: Storage>(
    s: Arc<S>,
) {
    let (_, version) = written(s.set("t", "k", "v".into(), None).await.unwrap());
    let current = Some(Versioned { value: "v".into(), version });
    fill(&*s, "t").await;
    let large = Value::from(Bytes::from(vec![1u8; 4096]));
    assert!(is_full(&s.set("t", "new", large.clone(), None).await), "the store has room left");

    let stale = s.set("t", "k", large.clone(), Some(version + 1)).await;
    assert_eq!(conflict(stale.unwrap()), current, "a stale version");
    let create_only = s.set("t", "k", large.clone(), Some(0)).await;
    assert_eq!(conflict(create_only.unwrap()), current, "create-only on an existing key");
    let absent = s.set("t", "absent", large.clone(), Some(version)).await;
    assert_eq!(conflict(absent.unwrap()), None, "a version for an absent key");
    let no_table = s.set("no-table", "k", large.clone(), Some(version)).await;
    assert_eq!(conflict(no_table.unwrap()), None, "a version for a key of a table that does not exist");
    assert_eq!(s.get("t", "k").await.unwrap(), current, "nothing was written");
    assert_eq!(s.get("no-table", "k").await.unwrap(), None);
    // Deletes go on when the store is full, of absent keys too (nothing to delete is a success).
    let absent = s.delete("t", "absent", None).await.expect("a delete of an absent key on a full store");
    assert!(matches!(absent, WriteOutcome::Written { previous: None, .. }), "{absent:?}");
    s.delete_many("t", &["absent".into(), "other".into()]).await.expect("a multi-key delete of absent keys");
    let deleted = s.delete("t", "k", None).await.expect("a delete on a full store");
    assert!(matches!(deleted, WriteOutcome::Written { previous: Some(_), .. }), "{deleted:?}");
}
