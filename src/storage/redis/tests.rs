//! The Redis backend against real Redis servers started for these tests (qkv-testkit): the
//! conformance suite on one plain Redis and on a 3-master, 3-replica cluster (and the full-store suite
//! on a full Redis and a full cluster), then what only this
//! backend has (hash tags, a lost version counter, Redis's memory limit, Redis away and back, WAIT).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use qkv_testkit::{RedisCluster, RedisNode};

use super::*;
use crate::storage::suite::storage_conformance;

fn single() -> &'static RedisNode {
    static NODE: OnceLock<RedisNode> = OnceLock::new();
    NODE.get_or_init(|| RedisNode::start(&[]).expect("redis-server starts"))
}

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(3, 1).expect("a 3 + 3 Redis Cluster starts"))
}

/// A prefix of its own for each store, so that tests sharing a Redis do not see each other's tables.
fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("test-{}-{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn config(urls: Vec<String>) -> RedisConfig {
    RedisConfig { urls, prefix: unique_prefix(), ..RedisConfig::default() }
}

async fn connected(config: RedisConfig) -> RedisStore {
    let store = RedisStore::start(config);
    tokio::time::timeout(Duration::from_secs(20), store.connected()).await.expect("connects to Redis");
    store
}

mod single_redis {
    use super::*;
    storage_conformance!(connected(config(vec![single().url()])).await);
}

/// What `fill` can use up: a few MiB, and no eviction (Redis refuses writes with OOM instead).
const SMALL_REDIS: [&str; 4] = ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"];

mod full_redis {
    use super::*;

    fn small() -> &'static RedisNode {
        static NODE: OnceLock<RedisNode> = OnceLock::new();
        NODE.get_or_init(|| RedisNode::start(&SMALL_REDIS).expect("redis-server starts"))
    }

    crate::storage::suite::full_store_conformance!(connected(config(vec![small().url()])).await);
}

/// A full cluster: a table lives in one slot, so `fill` fills the master that holds it, and the
/// cluster client must bring its refusal back as a single Redis's is.
mod full_redis_cluster {
    use super::*;

    fn small() -> &'static RedisCluster {
        static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            RedisCluster::start_with(3, 0, &SMALL_REDIS).expect("a 3-master Redis Cluster starts")
        })
    }

    crate::storage::suite::full_store_conformance!(connected(config(small().urls())).await);
}

mod redis_cluster {
    use super::*;
    storage_conformance!(connected(config(cluster().urls())).await);
}

fn written_version(outcome: WriteOutcome) -> u64 {
    match outcome {
        WriteOutcome::Written { version, .. } => version,
        WriteOutcome::Conflict { current } => panic!("unexpected conflict with {current:?}"),
    }
}

#[test]
fn any_table_name_gets_one_nonempty_hash_tag() {
    for (table, tag) in [("", "{t}"), ("users", "{tusers}"), ("a{b}c", "{ta%7Bb%7Dc}"), ("%7B", "{t%257B}")] {
        let keys = TableKeys::new("p:", table).all();
        for key in &keys {
            assert!(key.starts_with(&format!("p:{tag}:")), "{table:?}: {key}");
        }
    }
    // Escaping keeps different names apart.
    assert_ne!(TableKeys::new("", "{").all(), TableKeys::new("", "%7B").all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_lives_in_one_cluster_slot() {
    let cluster = cluster();
    for table in ["", "users", "a{b}c", "}{", "ü"] {
        let keys = TableKeys::new("qkv:", table).all();
        let slots: Vec<Option<u16>> = keys.iter().map(|k| cluster.slot_of(k)).collect();
        assert!(slots[0].is_some() && slots.iter().all(|s| *s == slots[0]), "{table:?}: {slots:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_stay_above_the_clock_when_the_counter_is_lost() {
    let store = connected(config(vec![single().url()])).await;
    let first = written_version(store.set("t", "k", "a".into(), None).await.unwrap());
    // What a failover that lost the last increments, or a table dropped by hand, leaves behind.
    let mut connection = store.connector.connection().unwrap();
    connection.query(redis::cmd("DEL").arg(store.keys("t").key(":counter"))).await.unwrap();
    let second = written_version(store.set("t", "k", "b".into(), None).await.unwrap());
    assert!(second > first, "version {second} handed out after {first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_refuses_writes_whole_and_still_deletes() {
    let node = RedisNode::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]).unwrap();
    let store = connected(config(vec![node.url()])).await;
    let big = Value::from(bytes::Bytes::from(vec![7u8; 256 * 1024]));
    let mut stored = 0;
    let refused = loop {
        match store.set("t", &stored.to_string(), big.clone(), None).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 64, "4 MiB of Redis memory took more than 16 MiB of values");
    };
    assert!(matches!(refused, StorageError::OutOfMemory(_)), "{refused:?}");
    // A multi-key write is refused whole: none of its keys appear.
    let pairs = vec![("m1".to_owned(), big.clone()), ("m2".to_owned(), big.clone())];
    assert!(matches!(store.set_many("t", pairs).await, Err(StorageError::OutOfMemory(_))));
    let absent = store.get_many("t", &["m1".into(), "m2".into()]).await.unwrap();
    assert_eq!(absent, vec![None, None]);
    // Reads and deletes go on, and deleting makes room.
    assert!(store.get("t", "0").await.unwrap().is_some());
    store.delete_many("t", &(0..stored).map(|i| i.to_string()).collect::<Vec<_>>()).await.unwrap();
    store.set("t", "again", big, None).await.expect("room after deleting");
}

/// A Redis that refuses writes for want of replicas (min-replicas-to-write) ran none of the write:
/// 503, to send again (it was a 500, which says nothing of whether it ran). Reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_want_of_replicas_is_unavailable() {
    let node = RedisNode::start(&["--min-replicas-to-write", "1"]).unwrap();
    let store = connected(config(vec![node.url()])).await;
    let refused = store.set("t", "k", "v".into(), None).await.unwrap_err();
    assert!(
        matches!(&refused, StorageError::Unavailable(reason) if reason.contains("NOREPLICAS")),
        "{refused:?}"
    );
    let pairs = vec![("a".to_owned(), Value::from("1")), ("b".to_owned(), Value::from("2"))];
    assert!(matches!(store.set_many("t", pairs).await, Err(StorageError::Unavailable(_))));
    assert_eq!(store.get("t", "k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_at_start_is_unavailable_with_the_reason_then_serves_when_it_comes() {
    let mut node = RedisNode::start(&[]).unwrap();
    node.kill();
    let store = RedisStore::start(config(vec![node.url()]));
    let error = store.get("t", "k").await.unwrap_err();
    let StorageError::Unavailable(reason) = &error else { panic!("{error:?}") };
    assert!(reason.contains(&format!("127.0.0.1:{}", node.port)), "the reason names the seed: {reason}");
    node.restart().unwrap();
    tokio::time::timeout(Duration::from_secs(20), store.connected())
        .await
        .expect("connects once Redis is back");
    store.set("t", "k", "v".into(), None).await.unwrap();
    // And after it goes away again and comes back, without a restart of the store.
    node.restart().unwrap();
    // A plain Redis without persistence comes back empty.
    reading_until(&store, "the store did not reconnect", |read| read.as_ref().ok().map(drop)).await;
}

/// Reads t/k from `store` until `done` takes the result, waiting out (at most 20 s, then failing with
/// `waited_for`) results it does not take that mean Redis is away or being reached again: any
/// value, 503, an unknown outcome. Any other error fails the test.
async fn reading_until<T>(
    store: &RedisStore,
    waited_for: &str,
    mut done: impl FnMut(&StorageResult<Option<Versioned>>) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read = store.get("t", "k").await;
        if let Some(done) = done(&read) {
            return done;
        }
        match read {
            Ok(_) | Err(StorageError::Unavailable(_) | StorageError::Uncertain(_)) => {
                assert!(tokio::time::Instant::now() < deadline, "{waited_for}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// Redis restarted with another password refuses the gateway (503: nothing was run); once its password
/// is the gateway's again, the gateway serves again by itself. redis-rs's connection manager alone
/// would answer the refusal for ever: it connects again only after I/O errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refused_its_credentials_serves_again_once_redis_takes_them() {
    let node = RedisNode::start(&["--requirepass", "first"]).unwrap();
    let store = connected(RedisConfig { password: Some("first".into()), ..config(vec![node.url()]) }).await;
    store.set("t", "k", "v".into(), None).await.unwrap();
    // As a restart with another password would: the gateway's connection ends, and it is refused.
    testkit_cli(node.port, &["-a", "first", "CONFIG", "SET", "requirepass", "second"]);
    testkit_cli(node.port, &["-a", "second", "CLIENT", "KILL", "TYPE", "normal"]);
    let refused = reading_until(&store, "the gateway was not refused", |read| match read {
        Err(StorageError::Unavailable(reason)) if reason.contains("credentials") => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(refused.contains("WRONGPASS"), "{refused}");
    testkit_cli(node.port, &["-a", "second", "CONFIG", "SET", "requirepass", "first"]);
    let found =
        reading_until(&store, "the gateway did not connect again", |read| read.as_ref().ok().cloned()).await;
    assert_eq!(found.map(|v| v.value), Some("v".into()));
}

/// The same on a cluster, whose client keeps a connection per node and makes them again itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_gateway_refused_its_credentials_serves_again_once_the_cluster_takes_them() {
    let cluster = RedisCluster::start(3, 0).unwrap();
    for node in &cluster.nodes {
        testkit_cli(node.port, &["CONFIG", "SET", "requirepass", "first"]);
    }
    let store = connected(RedisConfig { password: Some("first".into()), ..config(cluster.urls()) }).await;
    let tables = ["a", "b", "c", "d", "e", "f"];
    for table in tables {
        store.set(table, "k", "v".into(), None).await.unwrap();
    }
    for node in &cluster.nodes {
        testkit_cli(node.port, &["-a", "first", "CONFIG", "SET", "requirepass", "second"]);
        testkit_cli(node.port, &["-a", "second", "CLIENT", "KILL", "TYPE", "normal"]);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Refused, however the cluster client puts it: no connection to the node, 503.
        let failed = store.get("a", "k").await;
        if let Err(StorageError::Unavailable(_)) = &failed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the gateway was not refused: {failed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &cluster.nodes {
        testkit_cli(node.port, &["-a", "second", "CONFIG", "SET", "requirepass", "first"]);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for table in tables {
        loop {
            match store.get(table, "k").await {
                Ok(found) => break assert_eq!(found.map(|v| v.value), Some("v".into())),
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the gateway did not connect again: {e:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// redis-cli against `port`, which must succeed.
fn testkit_cli(port: u16, args: &[&str]) {
    let out = qkv_testkit::cli(port, args).expect("redis-cli runs");
    assert!(out.trim() == "OK" || out.trim().parse::<u64>().is_ok(), "redis-cli {args:?}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_replicas_do_not_confirm_is_uncertain() {
    // A plain Redis has no replicas: WAIT 1 cannot be satisfied.
    let store = connected(RedisConfig {
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(50),
        ..config(vec![single().url()])
    })
    .await;
    let error = store.set("t", "k", "v".into(), None).await.unwrap_err();
    let StorageError::Uncertain(reason) = &error else { panic!("{error:?}") };
    assert!(reason.contains("0 of the 1 replicas"), "{reason}");
}

/// Redis reads nothing more from a connection while a WAIT on it waits. A master that has just failed
/// over has no replica until its old master returns, so each WAIT there lasts its whole timeout; on
/// one shared connection the node's reads and other writes waited behind it (the gateway answered 504
/// for minutes). Each waiting write has a connection of its own, and reads go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_for_replicas_holds_up_no_other_request() {
    // A Redis of its own (no other test's WAIT in its client list), without replicas: WAIT 1 lasts its
    // whole timeout, longer than this test.
    let node = RedisNode::start(&[]).expect("redis-server starts");
    let store = connected(RedisConfig {
        wait_replicas: 1,
        wait_timeout: Duration::from_secs(60),
        response_timeout: Duration::from_secs(120),
        wait_connections: 2,
        ..config(vec![node.url()])
    })
    .await;
    // The scripts cached, so that each write is one EVALSHA (a NOSCRIPT would be waited for too).
    let warm = connected(config(vec![node.url()])).await;
    warm.set("t", "warm", "v".into(), None).await.unwrap();
    let writes: Vec<_> = ["a", "b"]
        .map(|key| {
            let store = store.clone();
            tokio::spawn(async move { store.set("t", key, "v".into(), None).await })
        })
        .into();
    // Both writes wait in Redis at once, each on its own connection.
    let waiting = || {
        let clients = qkv_testkit::cli(node.port, &["CLIENT", "LIST"]).expect("redis-cli runs");
        clients.lines().filter(|client| client.contains(" cmd=wait ")).count()
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while waiting() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both writes wait for their replicas at once");
    // Their keys are written (WAIT comes after the write), and a read answers while they wait.
    let read = tokio::time::timeout(Duration::from_secs(20), store.get("t", "a")).await;
    assert!(read.expect("a read is not held up by a WAIT").unwrap().is_some());
    assert!(writes.iter().all(|write| !write.is_finished()), "the writes still wait");
    for write in writes {
        write.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_a_replica_in_the_cluster() {
    let store = connected(RedisConfig { wait_replicas: 1, ..config(cluster().urls()) }).await;
    for table in ["a", "b", "c", "d"] {
        written_version(store.set(table, "k", "v".into(), None).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_call_sent_twice_is_applied_once_and_its_repeat_is_uncertain() {
    // What redis-rs does when the connection broke after Redis ran the write: it sends it again.
    let store = connected(config(vec![single().url()])).await;
    let keys = store.keys("t");
    let mut call = keys.write_call(&scripts::SET);
    call.arg("k").arg(Value::from("v").encode_to_vec()).arg("0");
    let mut connection = store.connector.connection().unwrap();
    let first = write_outcome(connection.invoke(call.cmd.clone(), call.script, None).await.unwrap()).unwrap();
    let WriteOutcome::Written { previous: None, version } = first else { panic!("{first:?}") };
    let again = connection.invoke(call.cmd, call.script, None).await.unwrap();
    assert_eq!(
        again,
        RedisValue::Array(vec![RedisValue::Int(scripts::REPEATED)]),
        "not a conflict with itself"
    );
    let stored = store.get("t", "k").await.unwrap().unwrap();
    assert_eq!(stored.version, version, "not a second write");
    // Another call with the same condition is a conflict.
    let other = store.set("t", "k", "w".into(), Some(0)).await.unwrap();
    assert!(matches!(other, WriteOutcome::Conflict { .. }), "{other:?}");

    // The table's calls are one key, and the next write of the table forgets those whose time is up.
    let calls = keys.key(TableKeys::CALLS);
    connection.query(redis::cmd("ZADD").arg(&calls).arg(1).arg("long gone")).await.unwrap();
    written_version(store.set("t", "k2", "v".into(), None).await.unwrap());
    let gone = connection.query(redis::cmd("ZSCORE").arg(&calls).arg("long gone")).await.unwrap();
    assert_eq!(gone, RedisValue::Nil, "an id past its time is dropped");
    let count = connection.query(redis::cmd("ZCARD").arg(&calls)).await.unwrap();
    assert_eq!(count, RedisValue::Int(2), "the first call and the last (a conflict wrote nothing)");
}

/// Redis runs a script on a slot that is being moved to another node (`CLUSTER SETSLOT … MIGRATING`)
/// only while every key it names is still there (else `TRYAGAIN` until the move ends): a table whose
/// keys have not moved yet takes writes (a key made per call, never there, held every write of the
/// slot back for the whole move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_in_a_slot_being_moved_takes_writes_until_its_keys_move() {
    let cluster = cluster();
    let store = connected(config(cluster.urls())).await;
    let table = "on-the-move";
    written_version(store.set(table, "k", "before".into(), None).await.unwrap());
    let slot = cluster.slot_of(&store.keys(table).key(":values")).expect("the table's slot");
    let moving = cluster.begin_slot_move(slot).expect("the slot set moving");
    let written = store.set(table, "k", "during".into(), None).await;
    let deleted = store.delete(table, "k", None).await;
    // The move is called off, whatever the writes did.
    drop(moving);
    written_version(written.expect("a write while the slot is being moved"));
    deleted.expect("a delete while the slot is being moved");
    assert_eq!(store.get(table, "k").await.unwrap(), None);
}

/// A multi-key delete that empties its table while the table's slot is being moved: the table is gone
/// from Redis once its last key is deleted, and Redis stops a script that then names it ("a non local
/// key"), after the delete: answered as failed, though made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_key_delete_that_empties_a_table_in_a_slot_being_moved_is_answered() {
    let cluster = cluster();
    let store = connected(config(cluster.urls())).await;
    let table = "emptied-on-the-move";
    let version = written_version(store.set(table, "k", "last".into(), None).await.unwrap());
    let slot = cluster.slot_of(&store.keys(table).key(":values")).expect("the table's slot");
    let moving = cluster.begin_slot_move(slot).expect("the slot set moving");
    let keys = ["k", "k", "absent"].map(String::from);
    let deleted = store.delete_many(table, &keys).await;
    drop(moving);
    let previous: Vec<_> = deleted
        .expect("a delete emptying the table while its slot is being moved")
        .into_iter()
        .map(|outcome| match outcome {
            WriteOutcome::Written { previous, .. } => previous.map(|p| p.version),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(previous, [Some(version), None, None], "a key named twice is deleted once");
    assert_eq!(store.get(table, "k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password() {
    let certs = tempfile::tempdir().unwrap();
    let dir = crate::certs::CertDir::new(certs.path());
    dir.issue_server_certificate(&[], false).unwrap();
    let tls_port = qkv_testkit::free_port().unwrap();
    let file = |path: std::path::PathBuf| path.display().to_string();
    let (cert, key, ca) = (file(dir.server_cert()), file(dir.server_key()), file(dir.ca_cert()));
    let port = tls_port.to_string();
    let _node = RedisNode::start(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret",
    ])
    .unwrap();
    let store = connected(RedisConfig {
        password: Some("s3cret".into()),
        ca_pem: Some(std::fs::read(dir.ca_cert()).unwrap()),
        ..config(vec![format!("rediss://127.0.0.1:{tls_port}")])
    })
    .await;
    let version = written_version(store.set("t", "k", "over TLS".into(), None).await.unwrap());
    assert_eq!(store.get("t", "k").await.unwrap().map(|v| v.version), Some(version));
}
