//! Each operation of the in-memory backend, on a table of 100,000 keys with 64-byte values.
//! `cargo bench --bench storage`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use qkv::pb::Value;
use qkv::storage::{MemoryStore, PageLimit, Storage, TableScan};

const KEYS: usize = 100_000;

fn key(i: usize) -> String {
    format!("key:{i:010}")
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = &MemoryStore::new();
    let value = &Value::from(vec![b'v'; 64]);
    runtime.block_on(async {
        for start in (0..KEYS).step_by(1000) {
            let pairs = (start..start + 1000).map(|i| (key(i), (*value).clone())).collect();
            store.set_many("t", pairs).await.unwrap();
        }
    });
    let ten: Vec<String> = (0..10).map(|i| key(i * 7919 % KEYS)).collect();
    let mut group = c.benchmark_group("storage");
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 7919) % KEYS;
        key(i)
    };

    group
        .bench_function("get", |b| b.to_async(&runtime).iter(|| store.get("t", black_box("key:0000004242"))));
    group.bench_function("get_many/10", |b| {
        b.to_async(&runtime).iter(|| store.get_many("t", black_box(&ten)))
    });
    group.bench_function("versions/10", |b| {
        b.to_async(&runtime).iter(|| store.versions("t", black_box(&ten)))
    });
    group.bench_function("set (overwrite)", |b| {
        b.to_async(&runtime).iter_batched(
            &mut next,
            |k| async move { store.set("t", &k, value.clone(), None).await },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("set (conditional, conflicting)", |b| {
        b.to_async(&runtime).iter(|| store.set("t", "key:0000004242", value.clone(), Some(1)))
    });
    group.bench_function("set_many/10", |b| {
        let pairs: Vec<(String, Value)> = ten.iter().map(|k| (k.clone(), value.clone())).collect();
        b.to_async(&runtime).iter_batched(
            || pairs.clone(),
            |pairs| store.set_many("t", pairs),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("delete + set", |b| {
        b.to_async(&runtime).iter_batched(
            &mut next,
            |k| async move {
                store.delete("t", &k, None).await.unwrap();
                store.set("t", &k, value.clone(), None).await.unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("scan (first 64 KiB page of 100,000 keys)", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut scan = store.scan("t", None).await.unwrap();
            scan.next_page(PageLimit { entries: 8192, bytes: 64 * 1024 }).await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
