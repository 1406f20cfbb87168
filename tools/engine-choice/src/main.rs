//! The engine choice of the durable store, measured: redb against fjall on qkv's workload (see Cargo.toml).
use rand::{Rng, SeedableRng};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type KV = (Vec<u8>, Vec<u8>);

// ---------- key/value encoding ----------
/// (table, key) -> u32-BE(len(table)) ++ table ++ key. Injective for any byte strings,
/// keeps keys of one table contiguous and byte-ordered, and `table_prefix` is a pure prefix.
fn enc_key(table: &str, key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + table.len() + key.len());
    v.extend_from_slice(&(table.len() as u32).to_be_bytes());
    v.extend_from_slice(table.as_bytes());
    v.extend_from_slice(key.as_bytes());
    v
}
fn dec_key(b: &[u8]) -> (String, String) {
    let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    (
        String::from_utf8(b[4..4 + n].to_vec()).unwrap(),
        String::from_utf8(b[4 + n..].to_vec()).unwrap(),
    )
}
fn table_prefix(table: &str) -> Vec<u8> {
    enc_key(table, "")
}
/// smallest byte string greater than every string starting with `p` (None = unbounded)
fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut e = p.to_vec();
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return Some(e);
        }
    }
    None
}
fn enc_val(version: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

// ---------- engine abstraction ----------
trait Engine: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// one atomic, durable (fsync'd) commit containing all items
    fn commit_durable(&self, items: &[KV]);
    fn get(&self, k: &[u8]) -> Option<Vec<u8>>;
    fn scan_prefix(&self, p: &[u8]) -> (usize, usize); // (count, bytes)
    /// MVCC check: open a writer / take a snapshot, write k=new while a reader reads; return what reader saw
    fn mvcc_check(self: Arc<Self>, k: &[u8]) -> String;
}

// ---- redb 2 ----
mod r2 {
    use super::*;
    use redb2::{Database, Durability, TableDefinition};
    pub const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
    pub struct R(pub Database);
    pub fn open(p: &Path) -> R {
        let db = Database::create(p.join("db.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(T).unwrap();
        w.commit().unwrap();
        R(db)
    }
    impl Engine for R {
        fn name(&self) -> &'static str { "redb 2.6.4" }
        fn commit_durable(&self, items: &[KV]) {
            let mut w = self.0.begin_write().unwrap();
            w.set_durability(Durability::Immediate); // the default, explicit here
            {
                let mut t = w.open_table(T).unwrap();
                for (k, v) in items { t.insert(k.as_slice(), v.as_slice()).unwrap(); }
            }
            w.commit().unwrap(); // returns after fsync
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            let r = self.0.begin_read().unwrap();
            let t = r.open_table(T).unwrap();
            t.get(k).unwrap().map(|g| g.value().to_vec())
        }
        fn scan_prefix(&self, p: &[u8]) -> (usize, usize) {
            let r = self.0.begin_read().unwrap();
            let t = r.open_table(T).unwrap();
            let end = prefix_end(p).unwrap();
            let mut n = 0; let mut b = 0;
            for e in t.range(p..end.as_slice()).unwrap() {
                let (k, v) = e.unwrap(); n += 1; b += k.value().len() + v.value().len();
            }
            (n, b)
        }
        fn mvcc_check(self: Arc<Self>, k: &[u8]) -> String {
            let w = self.0.begin_write().unwrap();
            { let mut t = w.open_table(T).unwrap(); t.insert(k, b"NEW".as_slice()).unwrap(); }
            // write txn open & dirty; read from another thread
            let me = self.clone(); let kk = k.to_vec();
            let t0 = Instant::now();
            let seen = std::thread::spawn(move || me.get(&kk)).join().unwrap();
            let dt = t0.elapsed();
            w.commit().unwrap();
            let after = self.get(k);
            format!("reader during open write txn saw {:?} in {:?} (not blocked); after commit {:?}",
                seen.map(|v| String::from_utf8_lossy(&v[..3.min(v.len())]).to_string()), dt,
                after.map(|v| String::from_utf8_lossy(&v).to_string()))
        }
    }
}

// ---- redb 3 ----
mod r3 {
    use super::*;
    use redb3::{Database, Durability, ReadableDatabase, TableDefinition};
    pub const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
    pub struct R(pub Database);
    pub fn open(p: &Path) -> R {
        let db = Database::create(p.join("db.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(T).unwrap();
        w.commit().unwrap();
        R(db)
    }
    impl Engine for R {
        fn name(&self) -> &'static str { "redb 3.1.3" }
        fn commit_durable(&self, items: &[KV]) {
            let mut w = self.0.begin_write().unwrap();
            w.set_durability(Durability::Immediate).unwrap();
            {
                let mut t = w.open_table(T).unwrap();
                for (k, v) in items { t.insert(k.as_slice(), v.as_slice()).unwrap(); }
            }
            w.commit().unwrap();
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            let r = self.0.begin_read().unwrap();
            let t = r.open_table(T).unwrap();
            t.get(k).unwrap().map(|g| g.value().to_vec())
        }
        fn scan_prefix(&self, p: &[u8]) -> (usize, usize) {
            let r = self.0.begin_read().unwrap();
            let t = r.open_table(T).unwrap();
            let end = prefix_end(p).unwrap();
            let mut n = 0; let mut b = 0;
            for e in t.range(p..end.as_slice()).unwrap() {
                let (k, v) = e.unwrap(); n += 1; b += k.value().len() + v.value().len();
            }
            (n, b)
        }
        fn mvcc_check(self: Arc<Self>, k: &[u8]) -> String {
            let w = self.0.begin_write().unwrap();
            { let mut t = w.open_table(T).unwrap(); t.insert(k, b"NEW".as_slice()).unwrap(); }
            let me = self.clone(); let kk = k.to_vec();
            let t0 = Instant::now();
            let seen = std::thread::spawn(move || me.get(&kk)).join().unwrap();
            let dt = t0.elapsed();
            w.commit().unwrap();
            let after = self.get(k);
            format!("reader during open write txn saw {:?} in {:?} (not blocked); after commit {:?}",
                seen.map(|v| String::from_utf8_lossy(&v[..3.min(v.len())]).to_string()), dt,
                after.map(|v| String::from_utf8_lossy(&v).to_string()))
        }
    }
}

// ---- fjall 2 ----
mod f2 {
    use super::*;
    use fjall2::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
    pub struct F(pub Keyspace, pub PartitionHandle, pub PersistMode);
    pub fn open(p: &Path, mode: PersistMode) -> F {
        let ks = Config::new(p.join("fjall")).open().unwrap();
        let part = ks.open_partition("kv", PartitionCreateOptions::default()).unwrap();
        F(ks, part, mode)
    }
    impl Engine for F {
        fn name(&self) -> &'static str {
            if self.2 == PersistMode::SyncAll { "fjall 2.11.2 SyncAll" } else { "fjall 2.11.2 SyncData" }
        }
        fn commit_durable(&self, items: &[KV]) {
            let mut b = self.0.batch().durability(Some(self.2));
            for (k, v) in items { b.insert(&self.1, k.as_slice(), v.as_slice()); }
            b.commit().unwrap(); // journal write + fsync under the journal lock, then memtable apply
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.1.get(k).unwrap().map(|v| v.to_vec())
        }
        fn scan_prefix(&self, p: &[u8]) -> (usize, usize) {
            let mut n = 0; let mut b = 0;
            for e in self.1.prefix(p) { let (k, v) = e.unwrap(); n += 1; b += k.len() + v.len(); }
            (n, b)
        }
        fn mvcc_check(self: Arc<Self>, k: &[u8]) -> String {
            let snap = self.1.snapshot();
            let me = self.clone(); let kk = k.to_vec();
            let w = std::thread::spawn(move || me.commit_durable(&[(kk, b"NEW".to_vec())]));
            let t0 = Instant::now();
            let seen = snap.get(k).unwrap();
            let dt = t0.elapsed();
            w.join().unwrap();
            format!("snapshot read concurrent with commit saw {:?} in {:?}; latest {:?}",
                seen.map(|v| String::from_utf8_lossy(&v[..3.min(v.len())]).to_string()), dt,
                self.get(k).map(|v| String::from_utf8_lossy(&v).to_string()))
        }
    }
}

// ---- fjall 3 ----
mod f3 {
    use super::*;
    use fjall3::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
    pub struct F(pub Database, pub Keyspace);
    pub fn open(p: &Path) -> F {
        let db = Database::builder(p.join("fjall3")).open().unwrap();
        let ks = db.keyspace("kv", KeyspaceCreateOptions::default).unwrap();
        F(db, ks)
    }
    impl Engine for F {
        fn name(&self) -> &'static str { "fjall 3.1.13 SyncAll" }
        fn commit_durable(&self, items: &[KV]) {
            let mut b = self.0.batch().durability(Some(PersistMode::SyncAll));
            for (k, v) in items { b.insert(&self.1, k.as_slice(), v.as_slice()); }
            b.commit().unwrap();
        }
        fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
            self.1.get(k).unwrap().map(|v| v.to_vec())
        }
        fn scan_prefix(&self, p: &[u8]) -> (usize, usize) {
            let mut n = 0; let mut b = 0;
            for g in self.1.prefix(p) { let (k, v) = g.into_inner().unwrap(); n += 1; b += k.len() + v.len(); }
            (n, b)
        }
        fn mvcc_check(self: Arc<Self>, k: &[u8]) -> String {
            let snap = self.0.snapshot();
            let me = self.clone(); let kk = k.to_vec();
            let w = std::thread::spawn(move || me.commit_durable(&[(kk, b"NEW".to_vec())]));
            let t0 = Instant::now();
            let seen = snap.get(&self.1, k).unwrap();
            let dt = t0.elapsed();
            w.join().unwrap();
            format!("snapshot read concurrent with commit saw {:?} in {:?}; latest {:?}",
                seen.map(|v| String::from_utf8_lossy(&v[..3.min(v.len())]).to_string()), dt,
                self.get(k).map(|v| String::from_utf8_lossy(&v).to_string()))
        }
    }
}

// object-safe wrapper so we can use Arc<dyn ..>
trait EngineDyn: Send + Sync {
    fn name(&self) -> &'static str;
    fn commit_durable(&self, items: &[KV]);
    fn get(&self, k: &[u8]) -> Option<Vec<u8>>;
    fn scan_prefix(&self, p: &[u8]) -> (usize, usize);
    fn mvcc(&self, k: &[u8]) -> String;
}
struct Wrap<E: Engine>(Arc<E>);
impl<E: Engine> EngineDyn for Wrap<E> {
    fn name(&self) -> &'static str { self.0.name() }
    fn commit_durable(&self, i: &[KV]) { self.0.commit_durable(i) }
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> { self.0.get(k) }
    fn scan_prefix(&self, p: &[u8]) -> (usize, usize) { self.0.scan_prefix(p) }
    fn mvcc(&self, k: &[u8]) -> String { self.0.clone().mvcc_check(k) }
}
fn dynify<E: Engine>(e: E) -> Arc<dyn EngineDyn> { Arc::new(Wrap(Arc::new(e))) }
macro_rules! arcdyn { ($e:expr) => { dynify($e) } }

fn open_dyn(name: &str, dir: &Path) -> Arc<dyn EngineDyn> {
    match name {
        "redb2" => arcdyn!(r2::open(dir)),
        "redb3" => arcdyn!(r3::open(dir)),
        "fjall2" => arcdyn!(f2::open(dir, fjall2::PersistMode::SyncAll)),
        "fjall2d" => arcdyn!(f2::open(dir, fjall2::PersistMode::SyncData)),
        "fjall3" => arcdyn!(f3::open(dir)),
        _ => panic!("unknown engine {name}"),
    }
}

// ---------- workload helpers ----------
const NKEYS: usize = 100_000;
const TABLE: &str = "users:shard/1"; // contains ':' on purpose
fn key_of(i: usize) -> Vec<u8> { enc_key(TABLE, &format!("key:{i:08}")) }
fn val(rng: &mut impl Rng, ver: u64) -> Vec<u8> {
    let mut p = [0u8; 64]; rng.fill(&mut p[..]); enc_val(ver, &p)
}
fn pct(v: &mut Vec<Duration>, p: f64) -> Duration {
    v.sort(); v[((v.len() as f64 - 1.0) * p) as usize]
}

fn bench(engine: &str, base: &Path) {
    let dir = base.join(engine);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let e = open_dyn(engine, &dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut ver = 0u64;
    println!("=== {} ===", e.name());

    // 1. single-key durable commits: 2000 or 20 s
    {
        let mut lat = Vec::new();
        let t0 = Instant::now();
        while lat.len() < 2000 && t0.elapsed() < Duration::from_secs(20) {
            ver += 1;
            let item = (key_of(rng.gen_range(0..NKEYS)), val(&mut rng, ver));
            let t = Instant::now();
            e.commit_durable(std::slice::from_ref(&item));
            lat.push(t.elapsed());
        }
        let el = t0.elapsed();
        let n = lat.len();
        println!("single: {n} commits in {:.2}s = {:.0} commits/s; p50 {:?} p99 {:?}",
            el.as_secs_f64(), n as f64 / el.as_secs_f64(), pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    }
    // 2. group commit batches: 12 s or 400 commits each
    for bs in [16usize, 64, 256] {
        let mut lat = Vec::new();
        let t0 = Instant::now();
        let mut writes = 0;
        while lat.len() < 400 && t0.elapsed() < Duration::from_secs(12) {
            let items: Vec<KV> = (0..bs).map(|_| { ver += 1; (key_of(rng.gen_range(0..NKEYS)), val(&mut rng, ver)) }).collect();
            let t = Instant::now();
            e.commit_durable(&items);
            lat.push(t.elapsed());
            writes += bs;
        }
        let el = t0.elapsed();
        println!("batch {bs}: {} commits, {writes} writes in {:.2}s = {:.0} writes/s; commit p50 {:?}",
            lat.len(), el.as_secs_f64(), writes as f64 / el.as_secs_f64(), pct(&mut lat, 0.5));
    }
    // 2b. real group commit: 64 producer threads, one committer draining a channel (max 256/commit), 10 s
    {
        let (tx, rx) = std::sync::mpsc::channel::<(KV, std::sync::mpsc::SyncSender<()>)>();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ec = e.clone();
        let committer = std::thread::spawn(move || {
            let mut commits = 0u64; let mut items = 0u64;
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < 256 { match rx.try_recv() { Ok(x) => batch.push(x), Err(_) => break } }
                let kvs: Vec<KV> = batch.iter().map(|(kv, _)| kv.clone()).collect();
                ec.commit_durable(&kvs);
                commits += 1; items += kvs.len() as u64;
                for (_, ack) in batch { let _ = ack.send(()); }
            }
            (commits, items)
        });
        let t0 = Instant::now();
        let mut hs = Vec::new();
        for p in 0..64u64 {
            let tx = tx.clone(); let stop = stop.clone(); let acked = acked.clone();
            hs.push(std::thread::spawn(move || {
                let mut r = rand::rngs::StdRng::seed_from_u64(1000 + p);
                let mut v = 0;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    let (atx, arx) = std::sync::mpsc::sync_channel(1);
                    tx.send(((key_of(r.gen_range(0..NKEYS)), val(&mut r, v)), atx)).unwrap();
                    arx.recv().unwrap();
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        drop(tx);
        std::thread::sleep(Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        for h in hs { h.join().unwrap(); }
        let el = t0.elapsed();
        let (c, i) = committer.join().unwrap();
        println!("groupcommit 64 in-flight: {} acked writes in {:.2}s = {:.0} writes/s, {c} commits, avg {:.1} writes/commit",
            acked.load(Ordering::Relaxed), el.as_secs_f64(), acked.load(Ordering::Relaxed) as f64 / el.as_secs_f64(), i as f64 / c as f64);
    }
    // preload all 100k keys (batches of 10k, durable)
    {
        let t0 = Instant::now();
        for chunk in 0..10 {
            let items: Vec<KV> = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| { ver += 1; (key_of(i), val(&mut rng, ver)) }).collect();
            e.commit_durable(&items);
        }
        println!("preload 100k keys (10 durable commits of 10k): {:.2}s", t0.elapsed().as_secs_f64());
    }
    // 3. point reads, one thread: 300k reads or 10 s
    {
        let t0 = Instant::now();
        let mut n = 0; let mut hit = 0;
        while n < 300_000 && t0.elapsed() < Duration::from_secs(10) {
            for _ in 0..1000 { if e.get(&key_of(rng.gen_range(0..NKEYS))).is_some() { hit += 1; } n += 1; }
        }
        let el = t0.elapsed();
        assert_eq!(hit, n);
        println!("reads 1 thread: {n} in {:.2}s = {:.0} reads/s", el.as_secs_f64(), n as f64 / el.as_secs_f64());
    }
    // 3b. reads while a writer thread continuously commits durable batches of 64 (8 s)
    {
        let stop = Arc::new(AtomicBool::new(false));
        let ew = e.clone(); let st = stop.clone();
        let w = std::thread::spawn(move || {
            let mut r = rand::rngs::StdRng::seed_from_u64(7); let mut c = 0u64;
            while !st.load(Ordering::Relaxed) {
                let items: Vec<KV> = (0..64).map(|_| (key_of(r.gen_range(0..NKEYS)), val(&mut r, 1))).collect();
                ew.commit_durable(&items); c += 1;
            }
            c
        });
        let t0 = Instant::now(); let mut n = 0; let mut lat = Vec::new();
        while n < 300_000 && t0.elapsed() < Duration::from_secs(8) {
            let t = Instant::now();
            assert!(e.get(&key_of(rng.gen_range(0..NKEYS))).is_some());
            lat.push(t.elapsed()); n += 1;
        }
        let el = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let c = w.join().unwrap();
        println!("reads with concurrent durable writer: {n} in {:.2}s = {:.0} reads/s, read p50 {:?} max {:?}; writer did {c} commits",
            el.as_secs_f64(), n as f64 / el.as_secs_f64(), pct(&mut lat, 0.5), lat[lat.len() - 1]);
    }
    println!("mvcc: {}", e.mvcc(&key_of(5)));
    // 4. scan a 10k-key table (neighbour tables exist on both sides in key order)
    {
        let scan_t = "scan:table";
        for t in ["scan:tabl", scan_t, "scan:table\u{0}", "scan:tablf"] {
            let items: Vec<KV> = (0..10_000).map(|i| (enc_key(t, &format!("k{i:06}")), val(&mut rng, 1))).collect();
            e.commit_durable(&items);
        }
        let mut times = Vec::new(); let mut res = (0, 0);
        for _ in 0..7 { let t = Instant::now(); res = e.scan_prefix(&table_prefix(scan_t)); times.push(t.elapsed()); }
        assert_eq!(res.0, 10_000);
        println!("scan 10k-key table: {} keys / {} bytes, median of 7 = {:?} (min {:?})", res.0, res.1, pct(&mut times, 0.5), times[0]);
    }
    // 6. encoding round-trip with nasty names
    {
        let cases = [("", ""), ("", ":"), (":", ""), ("a", ":b"), ("a:", "b"), ("a:b", ""), ("ünï\u{0}code", "🔑:\u{0}"), ("\u{0}", "x")];
        let items: Vec<KV> = cases.iter().enumerate().map(|(i, (t, k))| (enc_key(t, k), enc_val(i as u64, t.as_bytes()))).collect();
        e.commit_durable(&items);
        for (i, (t, k)) in cases.iter().enumerate() {
            let v = e.get(&enc_key(t, k)).unwrap();
            assert_eq!(u64::from_be_bytes(v[..8].try_into().unwrap()), i as u64);
            assert_eq!(dec_key(&enc_key(t, k)), (t.to_string(), k.to_string()));
        }
        assert_eq!(e.scan_prefix(&table_prefix("a")).0, 1);
        assert_eq!(e.scan_prefix(&table_prefix("")).0, 2);
        println!("encoding round-trip OK for {} nasty (table,key) pairs", cases.len());
    }
    // large value
    {
        let big = vec![7u8; 4 << 20];
        let t = Instant::now();
        e.commit_durable(&[(enc_key("big", "v"), enc_val(1, &big))]);
        let w = t.elapsed(); let t = Instant::now();
        assert_eq!(e.get(&enc_key("big", "v")).unwrap().len(), 8 + (4 << 20));
        println!("4 MiB value: durable write {:?}, read {:?}", w, t.elapsed());
    }
    drop(e);
    let size: u64 = walk(&dir).iter().map(|p| p.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    println!("on-disk: {} files, {:.1} MiB", walk(&dir).len(), size as f64 / 1048576.0);
    // reopen time after clean shutdown
    let t = Instant::now();
    let e = open_dyn(engine, &dir);
    assert!(e.get(&key_of(1)).is_some());
    println!("clean reopen: {:?}", t.elapsed());
    drop(e);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)); } else { out.push(p); }
        }
    }
    out
}

/// child: preload 100k keys, then durable single-key commits forever (bounded by parent kill / 30 s), printing acked index
fn crash_child(engine: &str, dir: &Path) {
    let e = open_dyn(engine, dir);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for chunk in 0..10 {
        let items: Vec<KV> = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| (key_of(i), val(&mut rng, 1))).collect();
        e.commit_durable(&items);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "ready").unwrap(); out.flush().unwrap();
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(30) {
        e.commit_durable(&[(enc_key("crash", &i.to_string()), enc_val(i, &[1u8; 64]))]);
        writeln!(out, "{i}").unwrap(); out.flush().unwrap();
        i += 1;
    }
}

fn crash_test(engine: &str, base: &Path) {
    let dir = base.join(format!("crash-{engine}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash-child", engine, dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let (rtx, rrx) = std::sync::mpsc::channel();
    let l2 = last.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = match line { Ok(l) => l, Err(_) => break };
            if line == "ready" { let _ = rtx.send(()); continue; }
            l2.store(line.parse().unwrap(), Ordering::SeqCst);
        }
    });
    rrx.recv_timeout(Duration::from_secs(40)).expect("child ready");
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    reader.join().unwrap();
    let acked = last.load(Ordering::SeqCst);
    let t = Instant::now();
    let e = open_dyn(engine, &dir);
    let open = t.elapsed();
    let mut missing = 0;
    if acked != u64::MAX {
        for i in 0..=acked { if e.get(&enc_key("crash", &i.to_string())).is_none() { missing += 1; } }
    }
    let preload_ok = (0..NKEYS).step_by(97).all(|i| e.get(&key_of(i)).is_some());
    let extra = e.get(&enc_key("crash", &(acked.wrapping_add(1)).to_string())).is_some();
    println!("crash {}: SIGKILL after {} acked commits; reopen {:?}; missing acked: {missing}; preload intact: {preload_ok}; unacked next commit present: {extra}",
        e.name(), acked.wrapping_add(1), open);
    drop(e);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = PathBuf::from("/tmp/enginebench/data");
    match args[1].as_str() {
        "bench" => bench(&args[2], &base),
        "crash" => crash_test(&args[2], &base),
        "crash-child" => crash_child(&args[2], Path::new(&args[3])),
        _ => panic!("usage: bench|crash <engine>"),
    }
}
