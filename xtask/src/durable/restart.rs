//! The restart test: how long a disk store takes to answer again with millions of keys, what they
//! take on disk, and what in memory.
//!
//! For each size, twice, on a fresh data directory each time: a server is started and, once it
//! answers a read, its resident memory is taken (the empty server's); this process writes the keys
//! into it, 64-byte values, over one QUIC connection as HMSETs of [`BATCH`] keys with
//! [`BATCHES_IN_FLIGHT`] in flight; the server is stopped, cleanly (SIGTERM, and its exit awaited) or
//! with SIGKILL as soon as the last write is acknowledged; the directory is measured; a new server is
//! started on it. Its restart time runs from its spawn until a read of the last key written succeeds
//! (plaintext TCP, polled every few milliseconds). Then its resident memory is taken, a sample of keys
//! spread over the range is read back and compared, and `qkv_storage_keys` is read from its /metrics
//! when the store reports it (a cross-check, not a measurement).
//!
//! Both servers run with `--admin`, so that the memory difference between them holds the keys and
//! nothing else.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qkv::Client;
use qkv::client::{ClientConfig, RetryPolicy};
use qkv::pb::{Kvpair, Value};
use qkv::transport::Transport;
use serde::{Deserialize, Serialize};

use super::{DirSize, TABLE, key};
use crate::proc;
use crate::run::{self, Processes, VALUE_SIZE};

/// Keys per HMSET while loading.
const BATCH: usize = 1000;
/// HMSETs in flight while loading: enough for group commit to share each fsync among several.
const BATCHES_IN_FLIGHT: usize = 8;
/// Keys read back after a restart, spread evenly over those written.
const SAMPLE: usize = 1000;
/// The slowest loading accepted, in keys per second; a slower one is an error.
const SLOWEST_LOAD: f64 = 2_000.0;
/// The longest a server may take to start empty, to stop after SIGTERM, and to restart.
const START_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(300);
const RESTART_LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stop {
    /// SIGTERM, and the server's exit awaited.
    Clean,
    /// SIGKILL as soon as the last write was acknowledged.
    Kill,
}

impl Stop {
    fn label(self) -> &'static str {
        match self {
            Stop::Clean => "SIGTERM (clean)",
            Stop::Kill => "SIGKILL",
        }
    }
}

/// One restart: the raw figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restart {
    pub keys: usize,
    pub stop: Stop,
    /// Seconds to write the keys.
    pub load_s: f64,
    /// Seconds from SIGTERM to the server's exit; `None` after SIGKILL.
    pub stop_s: Option<f64>,
    /// Seconds from spawning the new server until a read of a known key succeeded.
    pub restart_s: f64,
    /// The data directory once the loaded server had stopped, and once the new one had answered.
    pub disk_stopped: DirSize,
    pub disk_restarted: DirSize,
    /// VmRSS of the server before it was loaded (empty, having answered one read), and of the
    /// restarted one after it answered the reads.
    pub rss_empty_bytes: u64,
    pub rss_restarted_bytes: u64,
    /// Keys of the sample read back after the restart, and those missing or with another value.
    pub sampled: usize,
    pub wrong: usize,
    /// `qkv_storage_keys` of the restarted server's /metrics, if the store reports it.
    pub reported_keys: Option<f64>,
}

impl Restart {
    fn disk_per_key(&self) -> f64 {
        self.disk_stopped.bytes as f64 / self.keys as f64
    }

    fn memory_per_key(&self) -> f64 {
        (self.rss_restarted_bytes as f64 - self.rss_empty_bytes as f64) / self.keys as f64
    }
}

/// Both restarts for each size in `sizes`.
pub fn run(work: &Path, certs: &Path, sizes: &[usize]) -> anyhow::Result<Vec<Restart>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut restarts = Vec::new();
    let total = sizes.len() * 2;
    for &keys in sizes {
        for stop in [Stop::Clean, Stop::Kill] {
            eprintln!("[restart {}/{total}] {keys} keys, stopped by {}", restarts.len() + 1, stop.label());
            let restart = measure(&runtime, work, certs, keys, stop)
                .with_context(|| format!("restart of {keys} keys after {}", stop.label()))?;
            eprintln!(
                "  loaded in {:.1} s, {} bytes on disk, restarted in {:.3} s",
                restart.load_s, restart.disk_stopped.bytes, restart.restart_s
            );
            restarts.push(restart);
        }
    }
    Ok(restarts)
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    certs: &Path,
    keys: usize,
    stop: Stop,
) -> anyhow::Result<Restart> {
    let name = format!("restart-{keys}-{stop:?}").to_lowercase();
    let dir = work.join(&name);
    let mut processes = Processes::default();

    let (first, child) = Server::spawn(work, certs, &dir, &format!("{name}-loaded"))?;
    processes.0.push(child);
    let loaded = &mut processes.0[0];
    runtime.block_on(read_until(loaded, &first, certs, &key(0), None, START_LIMIT))?;
    let rss_empty_bytes = proc::memory_bytes(loaded.id(), "VmRSS")?;
    let loading = Instant::now();
    let limit = Duration::from_secs(60) + Duration::from_secs_f64(keys as f64 / SLOWEST_LOAD);
    runtime
        .block_on(async { tokio::time::timeout(limit, load(&first.client(certs), keys)).await })
        .with_context(|| format!("loading took longer than {limit:?}"))??;
    let load_s = loading.elapsed().as_secs_f64();
    let stop_s = match stop {
        Stop::Clean => Some(run::terminate(loaded, STOP_LIMIT)?.as_secs_f64()),
        Stop::Kill => {
            loaded.kill()?;
            loaded.wait()?;
            None
        }
    };
    let disk_stopped = DirSize::of(&dir)?;

    let spawned = Instant::now();
    let (second, child) = Server::spawn(work, certs, &dir, &format!("{name}-restarted"))?;
    processes.0.push(child);
    let restarted = &mut processes.0[1];
    let last = keys - 1;
    let expected = Some(value(last));
    runtime.block_on(read_until(restarted, &second, certs, &key(last), expected, RESTART_LIMIT))?;
    let restart_s = spawned.elapsed().as_secs_f64();
    let indices: Vec<usize> = (0..SAMPLE.min(keys)).map(|i| i * keys / SAMPLE.min(keys)).collect();
    let wrong = runtime.block_on(count_wrong(&second.client(certs), &indices))?;
    let rss_restarted_bytes = proc::memory_bytes(restarted.id(), "VmRSS")?;
    let reported_keys = second.reported_keys();
    let disk_restarted = DirSize::of(&dir)?;
    run::terminate(restarted, STOP_LIMIT)?;
    drop(processes);
    std::fs::remove_dir_all(&dir)?;
    Ok(Restart {
        keys,
        stop,
        load_s,
        stop_s,
        restart_s,
        disk_stopped,
        disk_restarted,
        rss_empty_bytes,
        rss_restarted_bytes,
        sampled: indices.len(),
        wrong,
        reported_keys,
    })
}

/// Where a `qkv serve --store disk` listens.
struct Server {
    port: u16,
    admin: u16,
}

impl Server {
    /// A server on `dir`, just spawned (not yet listening), and its process.
    fn spawn(work: &Path, certs: &Path, dir: &Path, name: &str) -> anyhow::Result<(Server, Child)> {
        let (port, admin) = (run::free_port()?, run::free_port()?);
        let args = ["--tcp-plaintext", "--store", "disk", "--durability", "strict", "--data-dir"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([dir.display().to_string(), "--admin".into(), format!("127.0.0.1:{admin}")]);
        let child = run::spawn_serve(work, certs, port, &args, name)?;
        Ok((Server { port, admin }, child))
    }

    /// Settings of a client of this server over QUIC; [`read_until`] switches to plaintext TCP.
    fn client(&self, certs: &Path) -> ClientConfig {
        ClientConfig::new(format!("127.0.0.1:{}", self.port), certs.join("ca.pem"))
    }

    /// `qkv_storage_keys` from /metrics, if the store reports it (the memory store does).
    fn reported_keys(&self) -> Option<f64> {
        let admin = SocketAddr::from(([127, 0, 0, 1], self.admin));
        let (status, body) = qkv_testkit::http_get(admin, "/metrics").ok()?;
        let samples = qkv::stat::exposition::parse(&body).ok().filter(|_| status == 200)?;
        samples.into_iter().find(|s| s.name == "qkv_storage_keys").map(|s| s.value)
    }
}

/// Key `i`'s value: 64 bytes of a SplitMix64 sequence seeded with `i`, which no store can compress
/// and which differ from key to key.
fn value(i: usize) -> Value {
    let mut state = i as u64;
    let bytes: Vec<u8> = (0..VALUE_SIZE.div_ceil(8))
        .flat_map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .take(VALUE_SIZE)
        .collect();
    Value::from(bytes)
}

/// Writes keys 0 to `keys` − 1, [`BATCHES_IN_FLIGHT`] HMSETs of [`BATCH`] keys at a time on one
/// connection.
async fn load(config: &ClientConfig, keys: usize) -> anyhow::Result<()> {
    let client = Client::connect_with(config.clone()).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..BATCHES_IN_FLIGHT {
        let (client, next) = (client.clone(), next.clone());
        writers.spawn(async move {
            loop {
                let start = next.fetch_add(BATCH, Ordering::Relaxed);
                if start >= keys {
                    return Ok(());
                }
                let pairs = (start..(start + BATCH).min(keys)).map(|i| Kvpair::new(key(i), value(i)));
                client.hmset(TABLE, pairs).await?;
            }
        });
    }
    let mut result = Ok(());
    while let Some(writer) = writers.join_next().await {
        let written: Result<(), qkv::client::ClientError> = writer?;
        result = result.and(written);
    }
    client.close().await;
    Ok(result?)
}

/// Reads `key` over plaintext TCP, a new connection each time, every few milliseconds, until the
/// `server` answers with `expected` (`None`: that the key is missing). Fails once `child` (its process)
/// exits, or after `limit`.
async fn read_until(
    child: &mut Child,
    server: &Server,
    certs: &Path,
    key: &str,
    expected: Option<Value>,
    limit: Duration,
) -> anyhow::Result<()> {
    let mut config = server.client(certs);
    config.transport = Transport::Tcp;
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    config.retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    let read = async |config: &ClientConfig| {
        let client = Client::connect_with(config.clone()).await?;
        let found = client.hget(TABLE, key).await;
        client.close().await;
        anyhow::Ok(found?.map(|versioned| versioned.value))
    };
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        // Connecting before the server listens would be refused, and thousands of attempts to a port
        // in the ephemeral range can connect a socket to itself (TCP simultaneous open), taking the
        // very port the server is about to bind: look for its listening socket first.
        if !run::tcp_listening(server.port)? {
            last = "not listening yet".into();
        } else {
            match read(&config).await {
                Ok(found) if found == expected => return Ok(()),
                Ok(found) => {
                    last = format!("it answered {}", if found.is_some() { "another value" } else { "none" })
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited ({status}) before it answered a read of {key}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("no read of {key} answered as expected within {limit:?}: {last}")
}

/// How many of the keys `indices` the server does not hold with the value they were written with.
async fn count_wrong(config: &ClientConfig, indices: &[usize]) -> anyhow::Result<usize> {
    let client = Client::connect_with(config.clone()).await?;
    let keys: Vec<String> = indices.iter().map(|&i| key(i)).collect();
    let found = client.hmget(TABLE, &keys.iter().map(String::as_str).collect::<Vec<_>>()).await;
    client.close().await;
    let wrong = indices
        .iter()
        .zip(found?)
        .filter(|(i, found)| found.as_ref().map(|versioned| &versioned.value) != Some(&value(**i)))
        .count();
    Ok(wrong)
}

/// The report's section.
pub fn write(md: &mut String, restarts: &[Restart]) -> anyhow::Result<()> {
    writeln!(
        md,
        "## Restart\n\nEach row is one measurement on a fresh data directory: N keys ({} bytes of key + \
         {VALUE_SIZE}-byte incompressible values, {} bytes of data a key) written by HMSETs of {BATCH} \
         keys, {BATCHES_IN_FLIGHT} in flight on one QUIC connection; the server then stopped cleanly \
         (SIGTERM, exit awaited) or killed (SIGKILL as soon as the last write was acknowledged); a new \
         server started on the directory. **Restart**: from its spawn until a read of the last key \
         written returns its value (plaintext TCP, polled every 2 ms). **On disk**: the directory's files \
         after the stop, their lengths summed (allocated: their blocks, as `du`). **Memory per key**: \
         (VmRSS of the restarted server after it answered − VmRSS of the empty server before loading) ÷ \
         N. Afterwards {SAMPLE} keys spread over the range are read back and compared.\n",
        key(0).len(),
        key(0).len() + VALUE_SIZE
    )?;
    writeln!(
        md,
        "| keys | stopped by | load (keys/s) | stop (s) | restart (s) | sampled keys wrong or missing |\n\
         |---:|---|---:|---:|---:|---:|"
    )?;
    for r in restarts {
        writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.3} | {} of {} |",
            r.keys,
            r.stop.label(),
            r.keys as f64 / r.load_s,
            r.stop_s.map_or("–".to_owned(), |s| format!("{s:.2}")),
            r.restart_s,
            r.wrong,
            r.sampled
        )?;
    }
    writeln!(
        md,
        "\n| keys | stopped by | on disk (bytes) | allocated (bytes) | on disk per key (bytes) | on disk after \
         restart (bytes) | VmRSS empty (bytes) | VmRSS restarted (bytes) | memory per key (bytes) | keys in \
         /metrics |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in restarts {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {} |",
            r.keys,
            r.stop.label(),
            r.disk_stopped.bytes,
            r.disk_stopped.allocated,
            r.disk_per_key(),
            r.disk_restarted.bytes,
            r.rss_empty_bytes,
            r.rss_restarted_bytes,
            r.memory_per_key(),
            r.reported_keys.map_or("not reported".to_owned(), |k| format!("{k:.0}"))
        )?;
    }
    writeln!(md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_64_bytes_and_differ_from_key_to_key() {
        let bytes = |i| match value(i).value {
            Some(qkv::pb::value::Value::Binary(bytes)) => bytes.to_vec(),
            other => panic!("not binary: {other:?}"),
        };
        assert_eq!(bytes(0).len(), VALUE_SIZE);
        assert_ne!(bytes(0), bytes(1));
        assert_eq!(bytes(7), bytes(7));
    }
}
