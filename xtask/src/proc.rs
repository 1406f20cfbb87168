//! What /proc tells about a process: the CPU time it has used, and its memory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;

/// User and system CPU time of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The command name (in parentheses) may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime: fields 14 and 15 of proc(5), 11 and 12 after the command name.
    Ok((ticks(11) + ticks(12)) as f64 / clock_ticks())
}

/// User and system CPU time of process `root` and all its descendants (a browser's processes), in
/// seconds; processes that have already ended (and been reaped) are not counted.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The parent's id is the second field after the command name.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &parents {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                grew = true;
            }
        }
    }
    tree.iter().filter_map(|pid| cpu_seconds(*pid).ok()).sum()
}

/// Clock ticks per second of /proc's CPU times (USER_HZ; 100 on every Linux build we know).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A memory figure of /proc/PID/status in bytes: `VmRSS` (resident now), `VmHWM` (the peak resident).
pub fn memory_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .with_context(|| format!("/proc/{pid}/status has no {field}"))?;
    Ok(kib * 1024)
}

/// The SNMP and extended TCP counters of a process's network namespace (/proc/PID/net/snmp and
/// netstat), by `Group.Name`, e.g. `Udp.RcvbufErrors`.
pub struct Counters(HashMap<String, u64>);

impl Counters {
    pub fn of(pid: u32) -> anyhow::Result<Counters> {
        let mut counters = HashMap::new();
        for file in ["snmp", "netstat"] {
            let path = format!("/proc/{pid}/net/{file}");
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
            counters.extend(parse_counters(&text));
        }
        Ok(Counters(counters))
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// /proc/net/snmp's format: for each group a line of names and a line of values, both starting with
/// `Group:`.
pub fn parse_counters(text: &str) -> HashMap<String, u64> {
    let lines: Vec<&str> = text.lines().collect();
    let mut counters = HashMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            // Some counters (Tcp.MaxConn) are signed; they are not used here.
            if let Ok(value) = value.parse() {
                counters.insert(format!("{group}.{name}"), value);
            }
        }
    }
    counters
}

/// Reads a child's log (its stderr) on a thread of its own, telling the receiver the index in
/// `markers` of each line that contains one of them, as it comes: how the reports learn that a bench
/// has opened its connections or begun its measured period. The thread returns the whole log.
pub fn watch_log(
    log: impl Read + Send + 'static,
    markers: &'static [&'static str],
) -> (mpsc::Receiver<usize>, JoinHandle<String>) {
    let (seen, events) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if let Some(marker) = markers.iter().position(|marker| line.contains(marker)) {
                let _ = seen.send(marker);
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    (events, reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_holds_memory() {
        let pid = std::process::id();
        let rss = memory_bytes(pid, "VmRSS").unwrap();
        let peak = memory_bytes(pid, "VmHWM").unwrap();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(tree_cpu_seconds(pid) >= cpu_seconds(pid).unwrap());
        assert!(memory_bytes(pid, "NoSuchField").is_err());
    }

    #[test]
    fn a_watched_log_reports_its_markers_in_order_and_returns_every_line() {
        let log = "connecting\nconnections open\nwarm-up over, measuring\ndone\n";
        let (events, reader) = watch_log(std::io::Cursor::new(log), &["connections open", "measuring"]);
        assert_eq!(events.iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(reader.join().unwrap(), log.trim_end());
    }

    #[test]
    fn counters_are_read_by_group_and_name() {
        let snmp = "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 100 0 3 90 2\n\
                    Tcp: RtoAlgorithm MaxConn RetransSegs\n\
                    Tcp: 1 -1 7\n";
        let counters = parse_counters(snmp);
        assert_eq!(counters.get("Udp.InErrors"), Some(&3));
        assert_eq!(counters.get("Udp.RcvbufErrors"), Some(&2));
        assert_eq!(counters.get("Tcp.RetransSegs"), Some(&7));
        assert_eq!(counters.get("Tcp.MaxConn"), None, "a negative counter is left out");
    }
}
