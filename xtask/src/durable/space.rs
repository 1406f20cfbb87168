//! The space test: what the disk store's data directory grows to when the same 10,000 keys are
//! overwritten again and again, as a log-structured store's must until it compacts.
//!
//! A fresh `qkv serve --store disk --durability strict` takes `qkv bench --workload hset` (64-byte
//! values, 10,000 keys, 1 QUIC connection × 64) for the run's duration, while this process sums the
//! sizes of the directory's files every second, from the bench's start (its loading of the keys and
//! warm-up included) until it has exited.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::{DirSize, key};
use crate::plot;
use crate::run::{self, KEYS, Processes, Scenario, VALUE_SIZE};

/// The bench's loading, warm-up and closing, beyond its measured duration, may take this long.
const SLACK: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Space {
    /// The bench's measured duration, in seconds.
    pub seconds: u64,
    pub keys: usize,
    /// What the keys and values hold: keys × (key + value) bytes.
    pub live_bytes: u64,
    /// The directory's size, every second from the bench's start, and once more after its exit.
    pub samples: Vec<Sample>,
    pub writes_per_s: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the bench started.
    pub at_s: f64,
    #[serde(flatten)]
    pub size: DirSize,
}

impl Space {
    fn max(&self) -> DirSize {
        let largest =
            |value: fn(&DirSize) -> u64| self.samples.iter().map(|s| value(&s.size)).max().unwrap_or(0);
        DirSize { bytes: largest(|size| size.bytes), allocated: largest(|size| size.allocated) }
    }

    fn last(&self) -> DirSize {
        self.samples.last().map(|s| s.size).unwrap_or_default()
    }
}

pub fn run(work: &Path, certs: &Path, duration: Duration) -> anyhow::Result<Space> {
    eprintln!("[space] HSET of {KEYS} keys for {} s on a fresh disk store", duration.as_secs());
    let dir = work.join("space-data");
    let port = run::free_port()?;
    let args = ["--store", "disk", "--durability", "strict", "--data-dir", &dir.display().to_string()]
        .map(String::from);
    let mut processes = Processes::default();
    processes.0.push(run::serve_pinned(work, certs, port, &args, "qkv-space")?);
    let bench = run::qkv_bench_command(port, certs, "quic", "hset", Scenario::new(1, 64), duration)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    processes.0.push(bench);
    let bench = &mut processes.0[1];
    let mut samples = vec![Sample { at_s: 0.0, size: DirSize::of(&dir)? }];
    let limit = duration + SLACK;
    let status = loop {
        let next = Duration::from_secs(samples.len() as u64);
        std::thread::sleep(next.saturating_sub(started.elapsed()));
        // Whether it had exited before this sample: then the sample is the final size.
        let exited = bench.try_wait()?;
        samples.push(Sample { at_s: started.elapsed().as_secs_f64(), size: DirSize::of(&dir)? });
        if let Some(status) = exited {
            break status;
        }
        if started.elapsed() > limit {
            bail!("qkv bench did not finish within {limit:?}");
        }
    };
    let mut stdout = Vec::new();
    bench.stdout.take().context("the bench's output")?.read_to_end(&mut stdout)?;
    if !status.success() {
        bail!("qkv bench failed: {}", String::from_utf8_lossy(&stdout));
    }
    let json: qkv::bench::JsonReport = serde_json::from_slice(&stdout).context("qkv bench --json output")?;
    drop(processes);
    std::fs::remove_dir_all(&dir)?;
    Ok(Space {
        seconds: duration.as_secs(),
        keys: KEYS,
        live_bytes: (KEYS * (key(0).len() + VALUE_SIZE)) as u64,
        samples,
        writes_per_s: json.throughput_rps,
        errors: json.errors,
    })
}

/// The report's section.
pub fn write(md: &mut String, space: &Space) -> anyhow::Result<()> {
    let (max, last) = (space.max(), space.last());
    writeln!(
        md,
        "## Space under overwrites\n\nA fresh disk store; `qkv bench --workload hset` over 1 QUIC connection \
         × 64 in flight, {} keys of {VALUE_SIZE}-byte values, {} s measured (after writing every key once \
         and 1 s of warm-up); the data directory's file sizes summed every second from the bench's start \
         until after its exit. Live data: keys × (key + value) bytes.\n",
        space.keys, space.seconds
    )?;
    writeln!(
        md,
        "| live data (bytes) | largest on disk (bytes) | final on disk (bytes) | largest ÷ live | largest \
         allocated (bytes) | writes/s |\n|---:|---:|---:|---:|---:|---:|"
    )?;
    writeln!(
        md,
        "| {} | {} | {} | {:.1} | {} | {:.0} |\n",
        space.live_bytes,
        max.bytes,
        last.bytes,
        max.bytes as f64 / space.live_bytes as f64,
        max.allocated,
        space.writes_per_s
    )?;
    writeln!(md, "![space](durable-space.svg)\n")?;
    Ok(())
}

/// The directory's size over time, its blocks allocated, and the live data.
pub fn plot(path: &Path, space: &Space) -> anyhow::Result<()> {
    use plotters::prelude::*;
    const MIB: f64 = 1024.0 * 1024.0;
    let root = plot::canvas(path)?;
    let end = space.samples.last().map_or(1.0, |s| s.at_s).max(1.0);
    let high = (space.max().bytes.max(space.max().allocated).max(space.live_bytes) as f64 / MIB).max(0.1);
    let mut chart = plot::builder(&root, "Data directory under overwrites (MiB)")
        .build_cartesian_2d(0.0..end * 1.02, 0.0..high * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the bench started")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    let series = |value: fn(&DirSize) -> u64| {
        space.samples.iter().map(|s| (s.at_s, value(&s.size) as f64 / MIB)).collect::<Vec<_>>()
    };
    plot::dotted_line(&mut chart, series(|size| size.bytes), RED, Some("file sizes"))?;
    plot::dotted_line(&mut chart, series(|size| size.allocated), BLUE, Some("allocated (du)"))?;
    let live = space.live_bytes as f64 / MIB;
    plot::dotted_line(&mut chart, vec![(0.0, live), (end, live)], BLACK, Some("live data"))?;
    plot::finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
}
