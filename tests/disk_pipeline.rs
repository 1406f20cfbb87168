//! The disk store behind the real transports: a TCP pipeline issues consecutive writes to it before
//! the earlier ones are durable (they share a group commit), so this is where the order of a write and
//! what follows it can go wrong.

mod common;

use common::process::ServerProcess;
use common::{admin_get, sample};
use qkv::Client;
use qkv::transport::Transport;

use prost::Message;
use qkv::pb::{CommandRequest, CommandResponse, Value, value};
use qkv::pubsub::{ConnectionId, Delivery};
use qkv::server::{Server, ServerConfig, TcpMode};
use qkv::storage::{DiskConfig, DiskStore, Durability, Storage};
use tokio::io::AsyncWriteExt;

/// A subscriber told of a write (pipelined Hset, then Publish, on one connection) finds the write in
/// the store, and on disk: the publish waited until the write was durable and visible, so a crash
/// right after it cannot take the write back (a copy of the data directory taken on delivery is
/// opened as a crash would leave it). The subscriber and its read are in-process, so that nothing but
/// the write's own commit stands between them and the publish.
#[tokio::test]
async fn a_publish_pipelined_after_a_write_is_seen_only_once_the_write_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = DiskStore::open(&data, DiskConfig::new(Durability::Strict)).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tcp: TcpMode::Plaintext,
        certs_dir: dir.path().join("certs"),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, store).unwrap();
    let addr = server.local_addr().unwrap();
    let service = server.service().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut subscription = service.broker().subscribe("changes", ConnectionId::unique(), None).unwrap();

    let mut writer = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A round at a time, so that every write starts a commit of its own and every publish has the
    // whole of that commit to overtake it in.
    for round in 1..=20 {
        let mut burst = common::frame(&CommandRequest::hset("t", "k", round)).to_vec();
        burst.extend_from_slice(&common::frame(&CommandRequest::publish("changes", [Value::from(round)])));
        writer.write_all(&burst).await.unwrap();
        let Some(Delivery::Message(encoded)) = subscription.next().await else {
            panic!("round {round}: the subscription ended")
        };
        let message = CommandResponse::decode(encoded).unwrap();
        assert_eq!(message.values, [Value::from(round)]);
        // First the disk (a read of the store would wait for the write's commit itself).
        let on_disk = after_a_crash(&data).await;
        assert!(on_disk >= round, "told of write {round} but the disk held {on_disk}: a crash would lose it");
        let stored = service.storage().get("t", "k").await.unwrap().map(|v| v.value.value);
        let Some(Some(value::Value::Integer(seen))) = stored else {
            panic!("told of write {round} but found {stored:?}: the publish overtook the write")
        };
        assert!(seen >= round, "told of write {round} but read {seen}: the publish overtook the write");
    }
    let _ = stop.send(());
    serving.await.unwrap();
}

/// The integer at `t`/`k` in a copy of the data directory `data` as it is now, opened as a store:
/// what a crash at this moment would leave (0 if absent).
async fn after_a_crash(data: &std::path::Path) -> i64 {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(data).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("qkv-log") || name.to_string_lossy().starts_with("qkv-snapshot")
        {
            std::fs::copy(entry.path(), copy.path().join(&name)).unwrap();
        }
    }
    let store = DiskStore::open(copy.path(), DiskConfig::new(Durability::Strict)).unwrap();
    let found = store.get("t", "k").await.unwrap().map(|v| v.value.value);
    match found {
        Some(Some(value::Value::Integer(n))) => n,
        _ => 0,
    }
}

/// The request metrics of a TCP pipeline time a durable write to when its answer may go out, after its
/// commit's fsync, not to when the store applied it in memory (the pipeline holds the answer for the
/// fsync). One write at a time, each request's time holds its own fsync: the requests' total is at
/// least the fsyncs'.
#[tokio::test]
async fn request_metrics_time_a_pipelined_durable_write_through_its_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--store", "disk", "--data-dir", data, "--tcp-plaintext", "--admin", "127.0.0.1:0"];
    let mut server = ServerProcess::start(&args).await;
    let admin = server.admin_addr().await;
    let client = Client::connect_with(server.client_config(Transport::Tcp)).await.unwrap();
    for i in 0..20 {
        client.hset("t", &format!("k{i}"), "v").await.unwrap();
    }
    let metrics = admin_get(admin, "/metrics").await.1;
    let series = |what| format!("qkv_request_duration_seconds_{what}{{command=\"Hset\",transport=\"tcp\"}}");
    assert_eq!(sample(&metrics, &series("count")), 20.0, "{metrics}");
    let (requests, fsyncs) =
        (sample(&metrics, &series("sum")), sample(&metrics, "qkv_disk_fsync_duration_seconds_sum"));
    assert!(fsyncs > 0.0 && requests >= fsyncs, "requests {requests} s in all, their fsyncs {fsyncs} s");
}
