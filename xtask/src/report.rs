//! The report: medians, the performance targets as ratios from this run, tables, plots, the machine.

use anyhow::Context as _;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use plotters::prelude::*;

use crate::plot;
use crate::run::{Measurement, Scenario, Target};

pub struct Runs {
    pub measurements: Vec<Measurement>,
    pub sweep: Vec<Scenario>,
    pub reps: usize,
    pub duration: Duration,
    pub quick: bool,
}

/// Medians over the repetitions of one target at one point.
#[derive(Debug, Clone, Copy)]
struct Median {
    throughput: f64,
    p50: f64,
    p99: f64,
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn medians(runs: &Runs) -> HashMap<(Target, Scenario), Median> {
    let mut groups: HashMap<(Target, Scenario), Vec<&Measurement>> = HashMap::new();
    for m in &runs.measurements {
        groups.entry((m.target, m.scenario)).or_default().push(m);
    }
    groups
        .into_iter()
        .map(|(key, ms)| {
            let pick = |f: fn(&Measurement) -> f64| median(&mut ms.iter().map(|m| f(m)).collect::<Vec<_>>());
            (
                key,
                Median {
                    throughput: pick(|m| m.throughput_rps),
                    p50: pick(|m| m.p50_us),
                    p99: pick(|m| m.p99_us),
                },
            )
        })
        .collect()
}

/// A performance target of issue 4: `metric` of `target` at `point`, divided by the same metric of
/// `baseline` at `baseline_point`, must be at least (or at most) `goal`.
struct Goal {
    name: &'static str,
    metric: fn(&Median) -> f64,
    target: (Target, u32, u32),
    baseline: (Target, u32, u32),
    goal: f64,
    at_least: bool,
}

const GOALS: [Goal; 4] = [
    Goal {
        name: "QUIC 1×64 HGET throughput ÷ bare-quinn floor 1×64",
        metric: |m| m.throughput,
        target: (Target::QkvQuic, 1, 64),
        baseline: (Target::FloorQuic, 1, 64),
        goal: 0.85,
        at_least: true,
    },
    Goal {
        name: "QUIC 1×64 HGET throughput ÷ Redis TLS -c 64 -P 1",
        metric: |m| m.throughput,
        target: (Target::QkvQuic, 1, 64),
        baseline: (Target::RedisTls, 64, 1),
        goal: 2.0,
        at_least: true,
    },
    Goal {
        name: "QUIC 1×1 HGET p50 ÷ bare-quinn floor 1×1 p50",
        metric: |m| m.p50,
        target: (Target::QkvQuic, 1, 1),
        baseline: (Target::FloorQuic, 1, 1),
        goal: 1.2,
        at_least: false,
    },
    Goal {
        name: "TLS 64×1 HGET throughput ÷ Redis TLS -c 64 -P 1",
        metric: |m| m.throughput,
        target: (Target::QkvTls, 64, 1),
        baseline: (Target::RedisTls, 64, 1),
        goal: 1.0,
        at_least: true,
    },
];

/// A goal checked on this run's medians.
struct Check {
    name: &'static str,
    measured: String,
    met: bool,
}

/// The goals whose two points were both measured (a `--quick` run skips some).
fn checks(medians: &HashMap<(Target, Scenario), Median>) -> Vec<Check> {
    let get = |(target, connections, inflight), metric: fn(&Median) -> f64| {
        medians.get(&(target, Scenario::new(connections, inflight))).map(metric)
    };
    GOALS
        .iter()
        .filter_map(|goal| {
            let ratio = get(goal.target, goal.metric)? / get(goal.baseline, goal.metric)?;
            let met = if goal.at_least { ratio >= goal.goal } else { ratio <= goal.goal };
            let relation = if goal.at_least { "≥" } else { "≤" };
            Some(Check {
                name: goal.name,
                measured: format!("{ratio:.2} (goal {relation} {})", goal.goal),
                met,
            })
        })
        .collect()
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .map_or("unknown".into(), |kib| format!("{} GiB", kib / 1024 / 1024));
    let congestion = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    format!(
        "- CPU: {cpu}, {cores} vCPUs; memory {memory}\n- Kernel: {}\n- TCP congestion control: {} (QUIC: quinn's default, Cubic)\n- {}\n- {}\n- Date: {}\n",
        command_output("uname", &["-sr"]),
        congestion.trim(),
        command_output("rustc", &["--version"]),
        command_output("redis-server", &["--version"]),
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

pub fn write(runs: &Runs, out: &Path) -> anyhow::Result<()> {
    let medians = medians(runs);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&runs.measurements)?)?;
    plot(runs, &medians, out, "throughput.svg", "Throughput (requests/s)", |m| m.throughput)?;
    plot(runs, &medians, out, "latency-p50.svg", "p50 latency (µs)", |m| m.p50)?;
    plot(runs, &medians, out, "latency-p99.svg", "p99 latency (µs)", |m| m.p99)?;

    let mut md = String::new();
    writeln!(md, "# qkv benchmark report\n")?;
    writeln!(
        md,
        "Generated by `cargo xtask bench-report{}`: do not edit by hand. How it was made and what was changed \
         along the way: [README.md](README.md).\n",
        if runs.quick { " --quick" } else { "" }
    )?;
    writeln!(md, "## Machine\n\n{}", machine())?;
    writeln!(
        md,
        "## Method\n\nLoopback. Every server pinned to core 0, every load generator to core 1. Each point: every \
         target in turn, {} s measured after 1 s of warm-up (qkv bench; redis-benchmark runs a request count \
         sized to the same duration). The sweep repeated {} time(s); figures are medians. HGET of 64-byte values \
         among 10,000 keys; the floor echoes 64-byte messages. Points are connections × requests in flight per \
         connection (Redis: `-c` × `-P`).\n",
        runs.duration.as_secs(),
        runs.reps
    )?;
    writeln!(md, "## Targets (ratios from this run)\n")?;
    writeln!(md, "| target | measured | met |\n|---|---|---|")?;
    for check in checks(&medians) {
        writeln!(
            md,
            "| {} | {} | {} |",
            check.name,
            check.measured,
            if check.met { "yes" } else { "**no**" }
        )?;
    }
    let table = |md: &mut String, title: &str, value: fn(&Median) -> f64, unit: &str| -> anyhow::Result<()> {
        writeln!(md, "\n## {title}\n")?;
        write!(md, "| connections × in flight |")?;
        for target in Target::ALL {
            write!(md, " {} |", target.label())?;
        }
        writeln!(md, "\n|---|{}", "---:|".repeat(Target::ALL.len()))?;
        for scenario in &runs.sweep {
            write!(md, "| {} |", scenario.label())?;
            for target in Target::ALL {
                match medians.get(&(target, *scenario)) {
                    Some(m) => write!(md, " {:.0}{unit} |", value(m))?,
                    None => write!(md, " – |")?,
                }
            }
            writeln!(md)?;
        }
        Ok(())
    };
    table(&mut md, "Throughput (requests/s)", |m| m.throughput, "")?;
    table(&mut md, "p50 latency (µs)", |m| m.p50, "")?;
    table(&mut md, "p99 latency (µs)", |m| m.p99, "")?;
    writeln!(md, "\n![throughput](throughput.svg)\n\n![p50](latency-p50.svg)\n\n![p99](latency-p99.svg)")?;
    let errors: u64 = runs.measurements.iter().map(|m| m.errors).sum();
    writeln!(
        md,
        "\nErrors counted by qkv bench over all runs: {errors}. Raw measurements: [results.json](results.json)."
    )?;
    std::fs::write(out.join("REPORT.md"), md)?;
    Ok(())
}

fn plot(
    runs: &Runs,
    medians: &HashMap<(Target, Scenario), Median>,
    out: &Path,
    file: &str,
    title: &str,
    value: fn(&Median) -> f64,
) -> anyhow::Result<()> {
    let path = out.join(file);
    let root = plot::canvas(&path)?;
    let points = runs.sweep.len();
    let values: Vec<f64> = medians.values().map(value).filter(|v| v.is_finite() && *v > 0.0).collect();
    let (low, high) = values.iter().fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let labels: Vec<String> = runs.sweep.iter().map(Scenario::label).collect();
    let x_label = |x: &f64| labels.get(x.round() as usize).cloned().unwrap_or_default();
    // Points with the same number of connections are joined; a new connection count starts a new line.
    let indexed: Vec<(usize, Scenario)> = runs.sweep.iter().copied().enumerate().collect();
    let groups: Vec<&[(usize, Scenario)]> =
        indexed.chunk_by(|(_, a), (_, b)| a.connections == b.connections).collect();
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK, RGBColor(255, 140, 0)];
    // Log scale: the sweep spans 10k to 2.5M requests/s and 50 µs to 300 ms, and a linear axis would
    // flatten every low-concurrency point onto the x axis.
    let x_range = -0.3..(points as f64 - 0.7);
    let mut chart =
        plot::builder(&root, title).build_cartesian_2d(x_range, (low * 0.8..high * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(points)
        .x_label_formatter(&x_label)
        .y_label_formatter(&plot::short_number)
        .x_desc("connections × requests in flight")
        .draw()?;
    for (target, color) in Target::ALL.into_iter().zip(colors) {
        for (g, group) in groups.iter().enumerate() {
            let series: Vec<(f64, f64)> = group
                .iter()
                .filter_map(|(i, s)| medians.get(&(target, *s)).map(|m| (*i as f64, value(m))))
                .collect();
            // Only the first line of a target goes in the legend.
            plot::dotted_line(&mut chart, series, color, (g == 0).then(|| target.label()))?;
        }
    }
    plot::finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn targets_are_judged_on_the_ratio_of_medians() {
        let point = |throughput, p50| Median { throughput, p50, p99: p50 * 2.0 };
        let medians = HashMap::from([
            ((Target::QkvQuic, Scenario::new(1, 64)), point(90_000.0, 300.0)),
            ((Target::FloorQuic, Scenario::new(1, 64)), point(100_000.0, 250.0)),
            ((Target::RedisTls, Scenario::new(64, 1)), point(50_000.0, 900.0)),
            ((Target::QkvQuic, Scenario::new(1, 1)), point(8_000.0, 130.0)),
            ((Target::FloorQuic, Scenario::new(1, 1)), point(9_000.0, 100.0)),
        ]);
        let checks = checks(&medians);
        let verdicts: Vec<(&str, bool)> = checks.iter().map(|c| (c.measured.as_str(), c.met)).collect();
        assert_eq!(
            verdicts,
            [("0.90 (goal ≥ 0.85)", true), ("1.80 (goal ≥ 2)", false), ("1.30 (goal ≤ 1.2)", false)],
            "the TLS target has no measurement and is left out"
        );
    }
}
