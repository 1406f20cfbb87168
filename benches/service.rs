//! Dispatch: `Service::execute` from a decoded request to its answer, without any transport.
//! `cargo bench --bench service`

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt;
use qkv::pb::{CommandRequest, Kvpair};
use qkv::service::{Caller, Reply, Service, ServiceConfig};
use qkv::storage::MemoryStore;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let service = Service::new(MemoryStore::new(), ServiceConfig::default(), 16 << 20);
    runtime.block_on(async {
        let pairs = (0..10_000).map(|i| Kvpair::new(format!("key:{i:010}"), vec![b'v'; 64]));
        service.execute(CommandRequest::hmset("t", pairs), &Caller::default()).await;
        let small = (0..100).map(|i| Kvpair::new(format!("k{i}"), vec![b'v'; 64]));
        service.execute(CommandRequest::hmset("small", small), &Caller::default()).await;
    });
    let mut group = c.benchmark_group("service");
    let cases = [
        ("ping", CommandRequest::ping("")),
        ("hget", CommandRequest::hget("t", "key:0000004242")),
        ("hget (miss)", CommandRequest::hget("t", "nope")),
        ("hset", CommandRequest::hset("t", "key:0000004242", vec![b'w'; 64])),
        ("hmget/10", CommandRequest::hmget("t", (0..10).map(|i| format!("key:{:010}", i * 997)))),
        ("hexist", CommandRequest::hexist("t", "key:0000004242")),
    ];
    let caller = Caller::default();
    for (name, request) in cases {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| service.execute(request.clone(), &caller))
        });
    }
    group.bench_function("hgetall (100 keys, all frames)", |b| {
        b.to_async(&runtime).iter(|| async {
            match service.execute(CommandRequest::hgetall("small"), &Caller::default()).await {
                Reply::Stream(frames) => frames.count().await,
                Reply::One(_) => 1,
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
