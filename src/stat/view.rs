//! `qkv stat`'s table for people: one line per interval under a two-row header repeated every
//! [`HEADER_EVERY`] lines (as `redis-cli --stat` does), at most 100 columns wide, and with
//! `--by-command` a line per command under each.

use super::figures::Interval;

/// Interval lines between two headers.
pub const HEADER_EVERY: usize = 20;

/// The transports whose connections have a column, as the server labels them.
const TRANSPORTS: [&str; 3] = ["quic", "tls", "tcp"];

/// The columns, in groups; each cell is right-aligned to its width.
const GROUPS: [(&str, &[(&str, usize)]); 5] = [
    ("requests", &[("req/s", 6), ("err/s", 6), ("p50", 7), ("p99", 7)]),
    ("connections", &[("quic", 5), ("tls", 5), ("tcp", 5)]),
    ("storage", &[("keys", 6), ("mem/budget", 11)]),
    ("pub/sub", &[("subs", 5), ("deliv/s", 7), ("miss/s", 6)]),
    ("limits", &[("hit/s", 8)]),
];

/// Renders intervals, remembering when the header is due again.
#[derive(Debug)]
pub struct Table {
    by_command: bool,
    lines: usize,
}

impl Table {
    pub fn new(by_command: bool) -> Table {
        Table { by_command, lines: 0 }
    }

    /// What to print for `interval`: the header when due, its line, and the per-command lines.
    pub fn render(&mut self, interval: &Interval) -> String {
        let mut text = String::new();
        if self.lines.is_multiple_of(HEADER_EVERY) {
            text.push_str(&header());
        }
        self.lines += 1;
        text.push_str(&row(&cells(interval)));
        text.push('\n');
        if interval.restarted {
            text.push_str("  (the server restarted, and counts start again)\n");
        }
        if self.by_command {
            text.push_str(&by_command(interval));
        }
        text
    }
}

/// The two header rows: the groups' names over dashes, then the columns' names.
pub fn header() -> String {
    let groups: Vec<String> = GROUPS
        .iter()
        .map(|(name, columns)| {
            let width = columns.iter().map(|(_, w)| w).sum::<usize>() + columns.len() - 1;
            let title = format!(" {name} ");
            let dashes = width.saturating_sub(title.len());
            format!("{}{title}{}", "-".repeat(dashes / 2), "-".repeat(dashes - dashes / 2))
        })
        .collect();
    let titles: Vec<Vec<String>> = GROUPS
        .iter()
        .map(|(_, columns)| columns.iter().map(|(title, _)| (*title).to_owned()).collect())
        .collect();
    format!("{}\n{}\n", groups.join("  ").trim_end(), row(&titles))
}

fn row(cells: &[Vec<String>]) -> String {
    GROUPS
        .iter()
        .zip(cells)
        .map(|((_, columns), cells)| {
            columns
                .iter()
                .zip(cells)
                .map(|((_, w), cell)| format!("{cell:>w$}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn cells(interval: &Interval) -> Vec<Vec<String>> {
    let storage = &interval.storage;
    let memory = match (storage.memory_used_bytes, storage.memory_budget_bytes) {
        (Some(used), Some(budget)) => format!("{}/{}", bytes(used), bytes(budget)),
        (Some(used), None) => bytes(used),
        (None, _) => "-".to_owned(),
    };
    let connections = TRANSPORTS
        .iter()
        .map(|transport| match interval.connections.get(*transport) {
            Some(open) => count(*open),
            None if interval.connections.is_empty() => "-".to_owned(),
            None => "0".to_owned(),
        })
        .collect();
    let pubsub = &interval.pubsub;
    vec![
        vec![
            rate(interval.all.requests_per_second),
            rate(interval.all.errors_per_second),
            latency(interval.all.p50_ms),
            latency(interval.all.p99_ms),
        ],
        connections,
        vec![storage.keys.map_or_else(|| "-".to_owned(), count), memory],
        vec![
            pubsub.subscriptions.map_or_else(|| "-".to_owned(), count),
            rate(pubsub.delivered_per_second),
            rate(pubsub.missed_per_second),
        ],
        vec![rate(interval.limits_hit_per_second)],
    ]
}

/// A line per command answered in the interval, the busiest first.
fn by_command(interval: &Interval) -> String {
    let mut commands: Vec<_> = interval.commands.iter().collect();
    commands.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
    commands
        .into_iter()
        .map(|(command, f)| {
            format!(
                "  {command:<12} {:>7} req/s  {:>6} err/s  p50 {:>7}  p99 {:>7}\n",
                rate(f.requests_per_second),
                rate(f.errors_per_second),
                latency(f.p50_ms),
                latency(f.p99_ms),
            )
        })
        .collect()
}

/// A rate in at most 5 characters: 0, 0.5, 42, 999, 1.2k, 12.5k, 123k, 3.4M.
fn rate(per_second: f64) -> String {
    if per_second <= 0.0 || !per_second.is_finite() {
        return "0".to_owned();
    }
    if per_second < 10.0 {
        return format!("{per_second:.1}");
    }
    scaled(per_second, 1000.0, ["", "k", "M", "G"])
}

fn count(value: u64) -> String {
    if value < 10_000 { value.to_string() } else { scaled(value as f64, 1000.0, ["", "k", "M", "G"]) }
}

fn bytes(value: u64) -> String {
    scaled(value as f64, 1024.0, ["B", "K", "M", "G"])
}

fn scaled(mut value: f64, step: f64, units: [&str; 4]) -> String {
    let mut unit = 0;
    while value.round() >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit > 0 && value < 99.95 {
        format!("{value:.1}{}", units[unit])
    } else {
        format!("{value:.0}{}", units[unit])
    }
}

/// A duration given in milliseconds, in at most 7 characters: 850us, 1.25ms, 12.5ms, 1.20s.
fn latency(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        // Below 999.5 us, lest it be written 1000us.
        Some(ms) if ms < 0.9995 => format!("{:.0}us", ms * 1e3),
        Some(ms) if ms < 10.0 => format!("{ms:.2}ms"),
        Some(ms) if ms < 1000.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{:.2}s", ms / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::stat::figures::{PubsubFigures, RequestFigures, StorageFigures};

    fn interval() -> Interval {
        let hget = RequestFigures {
            requests: 12_000,
            requests_per_second: 12_000.0,
            errors: 3,
            errors_per_second: 3.0,
            p50_ms: Some(0.12),
            p99_ms: Some(0.85),
        };
        let hset = RequestFigures { requests: 500, requests_per_second: 500.0, ..hget.clone() };
        Interval {
            interval_seconds: 1.0,
            restarted: false,
            all: RequestFigures {
                requests: 12_500,
                requests_per_second: 12_500.0,
                p99_ms: Some(1.5),
                ..hget.clone()
            },
            commands: BTreeMap::from([("Hget".into(), hget), ("Hset".into(), hset)]),
            connections: BTreeMap::from([("quic".into(), 1200), ("tcp".into(), 3)]),
            limits_hit: 0,
            limits_hit_per_second: 0.0,
            limits: BTreeMap::new(),
            storage: StorageFigures {
                keys: Some(1_234_567),
                memory_used_bytes: Some(300 << 20),
                memory_budget_bytes: Some(4 << 30),
            },
            pubsub: PubsubFigures {
                subscriptions: Some(7),
                published: 0,
                published_per_second: 0.0,
                delivered: 0,
                delivered_per_second: 0.5,
                missed: 0,
                missed_per_second: 0.0,
            },
        }
    }

    #[test]
    fn one_aligned_line_per_interval_under_a_header_every_20_lines() {
        let mut table = Table::new(false);
        let first = table.render(&interval());
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 3, "{first}");
        assert!(lines.iter().all(|line| line.len() <= 100), "{first}");
        assert_eq!(lines[1].len(), lines[2].len(), "{first}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            ["12.5k", "3.0", "120us", "1.50ms", "1200", "0", "3", "1.2M", "300M/4.0G", "7", "0.5", "0", "0"]
        );
        for _ in 1..HEADER_EVERY {
            assert_eq!(table.render(&interval()).lines().count(), 1);
        }
        assert_eq!(table.render(&interval()).lines().count(), 3, "the header again");
    }

    #[test]
    fn by_command_lists_the_busiest_first() {
        let text = Table::new(true).render(&interval());
        let lines: Vec<&str> = text.lines().skip(3).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].trim_start().starts_with("Hget") && lines[0].contains("12.0k req/s"), "{text}");
        assert!(lines[1].trim_start().starts_with("Hset"), "{text}");
    }

    #[test]
    fn figures_fit_their_columns() {
        assert_eq!([rate(0.0), rate(0.26), rate(42.4), rate(999.4)], ["0", "0.3", "42", "999"]);
        assert_eq!(
            [rate(999.6), rate(1234.0), rate(56_789.0), rate(123_456.0), rate(3.4e6)],
            ["1.0k", "1.2k", "56.8k", "123k", "3.4M"]
        );
        assert_eq!([bytes(512), bytes(1536), bytes(1023 << 20)], ["512B", "1.5K", "1023M"]);
        assert_eq!(
            [latency(Some(0.85)), latency(Some(0.9996)), latency(Some(1.25)), latency(Some(12.5))],
            ["850us", "1.00ms", "1.25ms", "12.5ms"]
        );
        assert_eq!([latency(Some(1200.0)), latency(None)], ["1.20s", "-"]);
    }
}
