//! Crash safety of the disk store: a loader writes and records every acknowledged write while the
//! server is killed with SIGKILL at random moments; after each restart on the same data directory,
//! every acknowledged write is there with its value and version, and conditional writes carry on from
//! those versions. The snapshot threshold is tiny, so that snapshots are written all the time and the
//! kills land in the middle of them too.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::ServerProcess;
use qkv::Client;
use qkv::client::{ClientConfig, RetryPolicy};
use qkv::pb::Value;
use qkv::transport::Transport;
use rand::{RngExt, SeedableRng};
use tokio_util::sync::CancellationToken;

const CYCLES: usize = 20;
const WRITERS: usize = 16;

/// What the loader knows of one key: the last write acknowledged (0: the key was deleted), and the one
/// in flight when the server died (which may or may not have been made durable: it was never
/// acknowledged).
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    acknowledged: i64,
    version: u64,
    in_flight: Option<i64>,
    /// The writer's next value: values are never reused, so a value tells which write made it.
    next: i64,
    /// Writes acknowledged so far.
    writes: usize,
}

async fn start(data: &Path) -> ServerProcess {
    let data = data.to_str().expect("a UTF-8 path");
    ServerProcess::start(&["--store", "disk", "--data-dir", data, "--snapshot-log-size", "8KiB"]).await
}

async fn client(server: &ServerProcess) -> Client {
    let config = ClientConfig {
        retry: RetryPolicy { attempts: 1, ..RetryPolicy::default() },
        request_timeout: Duration::from_secs(5),
        ..server.client_config(Transport::Quic)
    };
    Client::connect_with(config).await.expect("the client connects")
}

/// Checks what survived against what was acknowledged, and returns what the keys hold now.
async fn verify(client: &Client, known: &[Known], cycle: usize) -> Vec<Known> {
    let mut now = Vec::with_capacity(known.len());
    for (w, k) in known.iter().enumerate() {
        let key = format!("writer:{w}");
        let stored = client.hget("crash", &key).await.expect("a read after restart");
        let (value, version) = match stored {
            Some(stored) => match stored.value.value {
                Some(qkv::pb::value::Value::Integer(v)) => (v, stored.version),
                other => panic!("cycle {cycle}, {key}: {other:?}"),
            },
            None => (0, 0),
        };
        if value == k.acknowledged {
            assert_eq!(version, k.version, "cycle {cycle}, {key}: the acknowledged write's version changed");
        } else {
            assert_eq!(Some(value), k.in_flight, "cycle {cycle}, {key}: {k:?} acknowledged, {value} stored");
        }
        now.push(Known {
            acknowledged: value,
            version,
            in_flight: None,
            next: k.next.max(value),
            writes: k.writes,
        });
    }
    now
}

/// One writer: conditional writes of 1, 2, 3... on its key, each expecting the version the last one
/// made, and every fourth a conditional delete, until the server is killed (the write then in flight
/// may or may not have been made).
async fn write_until_killed(client: Client, w: usize, mut known: Known, killed: CancellationToken) -> Known {
    let key = format!("writer:{w}");
    loop {
        let delete = known.acknowledged != 0 && known.writes % 4 == 3;
        let next = if delete { 0 } else { known.next + 1 };
        known.in_flight = Some(next);
        let write = async {
            match delete {
                true => client.hdel_if_version("crash", &key, known.version).await,
                false => client.hset_if_version("crash", &key, Value::from(next), known.version).await,
            }
        };
        let outcome = tokio::select! {
            outcome = write => outcome,
            _ = killed.cancelled() => return known,
        };
        match outcome {
            Ok(written) => {
                known = Known {
                    acknowledged: next,
                    version: written.version,
                    in_flight: None,
                    next: next.max(known.next),
                    writes: known.writes + 1,
                }
            }
            Err(qkv::client::ClientError::Conflict { current }) => {
                panic!(
                    "{key}: a conditional write on the version just acknowledged conflicted with {current:?}"
                )
            }
            Err(_) => return known,
        }
    }
}

#[tokio::test]
async fn every_acknowledged_write_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut known = vec![Known::default(); WRITERS];
    let mut total = 0;
    for cycle in 0..CYCLES {
        let server = start(data.path()).await;
        let client = client(&server).await;
        known = verify(&client, &known, cycle).await;
        let killed = CancellationToken::new();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(write_until_killed(client.clone(), w, known[w], killed.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..300))).await;
        server.kill().await;
        killed.cancel();
        for (w, writer) in writers.into_iter().enumerate() {
            let after = writer.await.expect("writer");
            total += after.writes - known[w].writes;
            known[w] = after;
        }
    }
    let server = start(data.path()).await;
    verify(&client(&server).await, &known, CYCLES).await;
    eprintln!("{total} acknowledged writes over {CYCLES} crashes");
    assert!(total >= CYCLES * WRITERS, "the loader barely wrote: {total} acknowledged writes");
    let snapshots = std::fs::read_dir(data.path())
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().starts_with("qkv-snapshot."))
        .count();
    assert!(snapshots >= 1, "no snapshot was written: the kills never met one");
}

/// A byte damaged in the log with whole records after it is not a crash's torn write: the records
/// after it may have been acknowledged, so the server refuses to start (exit 4) and says what to run.
/// `qkv repair` then cuts the log at the damage, keeping the bytes it cuts in a file beside it, and the
/// server starts with every write before the damage.
#[tokio::test]
async fn a_damaged_log_is_refused_until_qkv_repair_cuts_it() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path()).await;
    let writer = client(&server).await;
    for key in ["a", "b", "c"] {
        writer.hset("crash", key, Value::from(key)).await.unwrap();
    }
    writer.close().await;
    server.terminate();
    let (status, _) = server.exit().await;
    assert!(status.success(), "{status}");
    let segment = std::fs::read_dir(data.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("qkv-log."))
        .expect("a log segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    // Key "b" of table "crash": its length, then the key.
    let at = bytes.windows(10).position(|w| w == b"crash\x01\0\0\0b").expect("b's record") + 9;
    bytes[at] = b'x';
    std::fs::write(&segment, &bytes).unwrap();

    let qkv = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
        command.args(args).kill_on_drop(true);
        async move {
            let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await;
            output.expect("qkv ended within a minute").expect("qkv runs")
        }
    };
    let dir = data.path().to_str().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let serve = ["serve", "--store", "disk", "--data-dir", dir, "--listen", "127.0.0.1:0"];
    let refused = qkv(&[&serve[..], &["--certs", certs.path().to_str().unwrap()]].concat()).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{said}");
    assert!(
        said.contains("yet a whole record follows") && said.contains(&format!("qkv repair --data-dir {dir}")),
        "{said}"
    );
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "the refusal changed the log");

    let repaired = qkv(&["repair", "--data-dir", dir]).await;
    let said = String::from_utf8_lossy(&repaired.stdout);
    assert!(repaired.status.success(), "{said}{}", String::from_utf8_lossy(&repaired.stderr));
    assert!(said.contains("1 whole record after the damage"), "{said}");
    let saved = std::fs::read_dir(data.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().contains(".damaged-at-"))
        .expect("the bytes cut off, kept");
    assert!(bytes.ends_with(&std::fs::read(saved).unwrap()), "the file holds the log's tail");
    let again = qkv(&["repair", "--data-dir", dir]).await;
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("nothing to repair"));

    let server = start(data.path()).await;
    let reader = client(&server).await;
    let found = reader.hmget("crash", &["a", "b", "c"]).await.unwrap();
    assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false, false]);
}

#[tokio::test]
async fn a_server_restarted_after_sigkill_resets_the_connections_of_the_process_before_it() {
    let server = ServerProcess::start(&[]).await;
    let (addr, ca) = (server.addr, server.ca());
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    client.ping("before").await.unwrap();
    let raw = common::raw_quic(addr, &ca).await;

    let certs = server.crash().await;
    let listen = addr.to_string();
    let _server = ServerProcess::start_in(certs, &["--listen", &listen], &[]).await;

    // The new process knows nothing of the connection, and answers its next packet with a stateless
    // reset the client recognises: the connection ends now, not at the idle timeout.
    if let Ok((mut send, _recv)) = raw.open_bi().await {
        let _ = send.write_all(&[0u8; 100]).await;
    }
    assert_eq!(raw.closed().await, quinn::ConnectionError::Reset);
    // The qkv client's call finds its connection reset too, and is answered on a new one.
    assert_eq!(client.ping("after").await.unwrap(), "after".as_bytes());
    assert_eq!(client.stats().connections, 2);
}
