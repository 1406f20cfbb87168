//! The memory store's account of its size follows what its entries really take from the heap, so that a
//! memory budget (`--memory-budget`) bounds the process's memory and not just a number. Alone in its
//! test binary, so that no other test's allocations move the process's resident size meanwhile.

use qkv::storage::{MemoryStore, Storage};

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

/// Resident growth over accounted growth while `fill` runs.
async fn heap_per_accounted_byte(store: &MemoryStore, fill: impl AsyncFnOnce(&MemoryStore)) -> f64 {
    let (rss, used) = (resident_bytes(), store.memory().used);
    fill(store).await;
    (resident_bytes() - rss) as f64 / (store.memory().used - used) as f64
}

#[tokio::test(flavor = "current_thread")]
async fn memory_accounting_tracks_the_heap() {
    let store = MemoryStore::new();
    // Small entries, where overheads dominate: 300,000 keys with 16-byte values in one table.
    let small = heap_per_accounted_byte(&store, async |store| {
        for i in 0..300_000 {
            store.set("small", &format!("key-{i:08}"), vec![1u8; 16].into(), None).await.unwrap();
        }
    })
    .await;
    // Many tables of one key each, where the tables' own cost dominates.
    let tables = heap_per_accounted_byte(&store, async |store| {
        for i in 0..20_000 {
            store.set(&format!("table-{i}"), "k", vec![1u8; 16].into(), None).await.unwrap();
        }
    })
    .await;
    // Large values, where the bytes themselves dominate.
    let large = heap_per_accounted_byte(&store, async |store| {
        for i in 0..200 {
            store.set("large", &format!("{i}"), vec![1u8; 100_000].into(), None).await.unwrap();
        }
    })
    .await;
    for (what, ratio) in [("small entries", small), ("one-key tables", tables), ("large values", large)] {
        eprintln!("{what}: {ratio:.2} resident bytes per accounted byte");
        assert!((0.7..=1.4).contains(&ratio), "{what}: {ratio:.2} resident bytes per accounted byte");
    }
}
