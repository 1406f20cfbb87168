//! Which concurrent map backs the in-memory store? This bench answers it by measurement (see
//! docs/DESIGN.md, "Choosing the in-memory map"). Each candidate stores `key -> (value, version)` for one
//! table and does the two operations on the request path: a read that clones the value out, and an atomic
//! read-modify-write that assigns a fresh version from a shared counter (what a conditional write needs).
//! Run on 1 and 2 threads: `cargo bench --bench map_choice`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parking_lot::RwLock;

const KEYS: usize = 100_000;
const SHARDS: usize = 64;

#[derive(Clone)]
struct Entry {
    value: String,
    version: u64,
}

trait Candidate: Send + Sync {
    fn get(&self, key: &str) -> Option<Entry>;
    /// Replace the value and assign a new version, atomically with respect to other writers of the key.
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64);
    fn insert(&self, key: String, entry: Entry);
}

struct LockedHashMap(RwLock<HashMap<String, Entry>>);
impl Candidate for LockedHashMap {
    fn get(&self, key: &str) -> Option<Entry> {
        self.0.read().get(key).cloned()
    }
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64) {
        let mut map = self.0.write();
        if let Some(e) = map.get_mut(key) {
            e.value = value.to_owned();
            e.version = versions.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn insert(&self, key: String, entry: Entry) {
        self.0.write().insert(key, entry);
    }
}

struct LockedBTreeMap(RwLock<BTreeMap<String, Entry>>);
impl Candidate for LockedBTreeMap {
    fn get(&self, key: &str) -> Option<Entry> {
        self.0.read().get(key).cloned()
    }
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64) {
        let mut map = self.0.write();
        if let Some(e) = map.get_mut(key) {
            e.value = value.to_owned();
            e.version = versions.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn insert(&self, key: String, entry: Entry) {
        self.0.write().insert(key, entry);
    }
}

/// `SHARDS` ordered maps, a key's shard chosen by hash: ordered paging within each shard.
struct ShardedBTreeMap {
    hasher: RandomState,
    shards: Vec<RwLock<BTreeMap<String, Entry>>>,
}
impl ShardedBTreeMap {
    fn shard(&self, key: &str) -> &RwLock<BTreeMap<String, Entry>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }
}
impl Candidate for ShardedBTreeMap {
    fn get(&self, key: &str) -> Option<Entry> {
        self.shard(key).read().get(key).cloned()
    }
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64) {
        let mut map = self.shard(key).write();
        if let Some(e) = map.get_mut(key) {
            e.value = value.to_owned();
            e.version = versions.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn insert(&self, key: String, entry: Entry) {
        self.shard(&key).write().insert(key, entry);
    }
}

struct Dash(dashmap::DashMap<String, Entry>);
impl Candidate for Dash {
    fn get(&self, key: &str) -> Option<Entry> {
        self.0.get(key).map(|e| e.clone())
    }
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64) {
        if let Some(mut e) = self.0.get_mut(key) {
            e.value = value.to_owned();
            e.version = versions.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn insert(&self, key: String, entry: Entry) {
        self.0.insert(key, entry);
    }
}

struct Scc(scc::HashMap<String, Entry>);
impl Candidate for Scc {
    fn get(&self, key: &str) -> Option<Entry> {
        self.0.read_sync(key, |_, e| e.clone())
    }
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64) {
        self.0.update_sync(key, |_, e| {
            e.value = value.to_owned();
            e.version = versions.fetch_add(1, Ordering::Relaxed);
        });
    }
    fn insert(&self, key: String, entry: Entry) {
        let _ = self.0.insert_sync(key, entry);
    }
}

struct Papaya(papaya::HashMap<String, Entry>);
impl Candidate for Papaya {
    fn get(&self, key: &str) -> Option<Entry> {
        self.0.pin().get(key).cloned()
    }
    fn rmw(&self, key: &str, value: &str, versions: &AtomicU64) {
        self.0.pin().update(key.to_owned(), |_| Entry {
            value: value.to_owned(),
            version: versions.fetch_add(1, Ordering::Relaxed),
        });
    }
    fn insert(&self, key: String, entry: Entry) {
        self.0.pin().insert(key, entry);
    }
}

fn candidates() -> Vec<(&'static str, Arc<dyn Candidate>)> {
    let all: Vec<(&'static str, Arc<dyn Candidate>)> = vec![
        ("rwlock-hashmap", Arc::new(LockedHashMap(RwLock::default()))),
        ("rwlock-btreemap", Arc::new(LockedBTreeMap(RwLock::default()))),
        (
            "sharded-btreemap",
            Arc::new(ShardedBTreeMap {
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            }),
        ),
        ("dashmap", Arc::new(Dash(dashmap::DashMap::new()))),
        ("scc", Arc::new(Scc(scc::HashMap::new()))),
        ("papaya", Arc::new(Papaya(papaya::HashMap::new()))),
    ];
    for (_, map) in &all {
        for i in 0..KEYS {
            map.insert(key(i), Entry { value: "v".repeat(64), version: 1 });
        }
    }
    all
}

fn key(i: usize) -> String {
    format!("user:{i:08}")
}

/// Runs `iters` operations on each of `threads` threads at once; returns the wall time.
fn run(map: &Arc<dyn Candidate>, threads: usize, iters: u64, write_every: u64) -> Duration {
    let versions = Arc::new(AtomicU64::new(2));
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(key).collect());
    let value = "w".repeat(64);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (map, keys, versions, value) = (map.clone(), keys.clone(), versions.clone(), &value);
            s.spawn(move || {
                // A cheap LCG spreads accesses without measuring a random number generator.
                let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(t as u64 + 1);
                for i in 0..iters {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let k = &keys[(x >> 33) as usize % KEYS];
                    if write_every != 0 && i % write_every == 0 {
                        map.rmw(k, value, &versions);
                    } else {
                        std::hint::black_box(map.get(k));
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let maps = candidates();
    for (workload, write_every) in [("read", 0), ("rmw", 1), ("read90", 10)] {
        let mut group = c.benchmark_group(format!("map/{workload}"));
        group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
        for threads in [1, 2] {
            for (name, map) in &maps {
                group.bench_with_input(BenchmarkId::new(*name, threads), &threads, |b, &threads| {
                    b.iter_custom(|iters| run(map, threads, iters, write_every))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
