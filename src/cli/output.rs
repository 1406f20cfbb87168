//! How results are printed: values plainly, one per line; errors on stderr with an exit code that
//! says what kind of failure it was.

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use qkv::client::{ClientError, Written};
use qkv::pb::{Value, Versioned, value};

use super::args::ValueType;

/// `println!` for what a command prints on stdout. A reader that has gone (`qkv hgetall t | head -1`)
/// ends the program quietly with success, as it ends a Unix filter, where `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes one line to stdout (see [`out!`]).
pub fn write_line(line: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(line).and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(i32::from(exit::LOCAL_FAILURE));
        }
    }
}

/// Exit codes, as the README documents them.
pub mod exit {
    /// The server refused: not found, version conflict, bad request...
    pub const SERVER_SAID_NO: u8 = 1;
    /// Bad usage or input (clap uses 2 for its own usage errors too).
    pub const INVALID_INPUT: u8 = 2;
    /// The server (or, for `qkv stat`, its admin listener) could not be reached or trusted, or the
    /// connection was lost.
    pub const UNREACHABLE: u8 = 3;
    /// Anything else that failed here: files, sockets, the runtime, a server that could not start.
    pub const LOCAL_FAILURE: u8 = 4;
    /// The request was sent and nothing says whether it took effect (a 504, a connection lost after
    /// sending): a write may have been made.
    pub const OUTCOME_UNKNOWN: u8 = 5;
}

/// Failures the CLI itself recognises, so that they get the right exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server's answer was a refusal, though not an error status (a missing key for `hget`).
    #[error("{0}")]
    Refused(String),
    /// A command-line argument could not be used.
    #[error("{0}")]
    InvalidInput(String),
    /// What was going on ended (a subscription the server ended, or whose connection was lost): try
    /// again later.
    #[error("{0}")]
    Ended(String),
    /// Something here failed: a file that cannot be read.
    #[error("{0}")]
    Local(String),
}

/// Prints `error` on stderr and picks the exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", one_line(error));
    exit_code(error)
}

/// [`report`] as a JSON line of the log's shape (for `--log-format json`, whose every line a log
/// shipper parses): written straight to stderr, not through the log, whose filter (`RUST_LOG`) could
/// leave it out.
pub fn report_in_log(error: &anyhow::Error) -> ExitCode {
    let line = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": "ERROR",
        "fields": { "message": "stopped", "error": one_line(error) },
        "target": "qkv",
    });
    eprintln!("{line}");
    exit_code(error)
}

/// The exit code the README gives for `error`.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    // `qkv bench` fails as the client it runs does.
    let client_error = error.downcast_ref::<ClientError>().or_else(|| match error.downcast_ref() {
        Some(qkv::bench::BenchError::Client(error)) => Some(error),
        _ => None,
    });
    let code = if let Some(error) = client_error {
        match error {
            error if error.executed() == qkv::client::Executed::Maybe => exit::OUTCOME_UNKNOWN,
            ClientError::Status { .. } | ClientError::Conflict { .. } => exit::SERVER_SAID_NO,
            ClientError::RequestTooLarge { .. } | ClientError::InvalidConfig(_) => exit::INVALID_INPUT,
            // An address that is no `host:port` (or whose port is no number) is a typo, not a server
            // to try again later.
            ClientError::Resolve { cause, .. } if cause.kind() == std::io::ErrorKind::InvalidInput => {
                exit::INVALID_INPUT
            }
            ClientError::Tls(_) => exit::LOCAL_FAILURE,
            _ => exit::UNREACHABLE,
        }
    } else if error.downcast_ref::<qkv::stat::ScrapeError>().is_some() {
        exit::UNREACHABLE
    } else if let Some(error) = error.downcast_ref::<qkv::certs::CertError>() {
        use qkv::certs::CertError;
        match error {
            CertError::Exists { .. }
            | CertError::InvalidClientName { .. }
            | CertError::InvalidName { .. } => exit::INVALID_INPUT,
            _ => exit::LOCAL_FAILURE,
        }
    } else {
        match error.downcast_ref::<CliError>() {
            Some(CliError::Refused(_)) => exit::SERVER_SAID_NO,
            Some(CliError::InvalidInput(_)) => exit::INVALID_INPUT,
            Some(CliError::Ended(_)) => exit::UNREACHABLE,
            Some(CliError::Local(_)) | None => exit::LOCAL_FAILURE,
        }
    };
    ExitCode::from(code)
}

/// The error and its causes on one line. A cause whose text is already shown is not repeated: the
/// client's errors name their cause in their message and also keep it as their source.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

pub fn versioned(entry: &Versioned, with_version: bool) -> String {
    if with_version { format!("{}\t{}", entry.value, entry.version) } else { entry.value.to_string() }
}

/// Writes `value`'s bytes to `path` (`-`: standard output) as they are: `hget --output`.
pub fn write_value(path: &std::path::Path, value: &Value) -> Result<(), CliError> {
    let text;
    let bytes = match (value.as_bytes(), value.as_str()) {
        (Some(bytes), _) => &bytes[..],
        (None, Some(text)) => text.as_bytes(),
        (None, None) => {
            text = value.to_string();
            text.as_bytes()
        }
    };
    if path.as_os_str() == "-" {
        let mut stdout = std::io::stdout().lock();
        return match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(CliError::Local(format!("cannot write to stdout: {e}")))
            }
            _ => Ok(()),
        };
    }
    std::fs::write(path, bytes)
        .map_err(|e| CliError::Local(format!("cannot write the value to {}: {e}", path.display())))
}

pub fn optional(entry: Option<&Versioned>, with_version: bool) -> String {
    entry.map_or_else(|| "(nil)".to_owned(), |e| versioned(e, with_version))
}

pub fn previous(written: &Written) -> String {
    written.previous.as_ref().map_or_else(|| "(nil)".to_owned(), Value::to_string)
}

fn invalid(raw: &str, expected: &str, error: impl std::fmt::Display) -> CliError {
    CliError::InvalidInput(format!("{raw:?} is not {expected}: {error}"))
}

/// A float as Rust reads it (`inf`, `NaN` and exponents included), but never one that a number written
/// out would silently become: past ±1.8e308 it would be infinite, and a non-zero number under 5e-324
/// would be 0 (as REST refuses them: "number out of range").
fn parse_float(raw: &str) -> Result<f64, CliError> {
    let x: f64 = raw.parse().map_err(|e| invalid(raw, "a number", e))?;
    let mantissa = raw.split(['e', 'E']).next().unwrap_or(raw);
    let written_out = mantissa.bytes().any(|b| b.is_ascii_digit());
    if x.is_infinite() && written_out {
        return Err(invalid(
            raw,
            "a float",
            "out of range: a float holds at most ±1.7976931348623157e308 (write inf for infinity)",
        ));
    }
    if x == 0.0 && mantissa.bytes().any(|b| matches!(b, b'1'..=b'9')) {
        return Err(invalid(
            raw,
            "a float",
            "out of range: too small to tell from 0 (a float holds down to ±5e-324)",
        ));
    }
    Ok(x)
}

/// Reads a command-line argument (or a file's bytes) as a value of the requested type: binary takes
/// the bytes as they are, whatever they are; the other types need UTF-8.
pub fn parse_value(raw: &[u8], value_type: ValueType) -> Result<Value, CliError> {
    if let ValueType::Binary = value_type {
        return Ok(value::Value::Binary(raw.to_vec().into()).into());
    }
    let raw = std::str::from_utf8(raw).map_err(|_| {
        CliError::InvalidInput(
            "the value is not UTF-8 text: pass --type binary to store its bytes as they are".into(),
        )
    })?;
    let parsed = match value_type {
        ValueType::String => value::Value::String(raw.to_owned()),
        ValueType::Binary => value::Value::Binary(raw.as_bytes().to_vec().into()),
        ValueType::Int => value::Value::Integer(raw.parse().map_err(|e| invalid(raw, "an integer", e))?),
        ValueType::Float => value::Value::Float(parse_float(raw)?),
        ValueType::Bool => value::Value::Bool(raw.parse().map_err(|e| invalid(raw, "true or false", e))?),
    };
    Ok(parsed.into())
}

/// Reads a value from a file, whole (`-`: standard input), as [`parse_value`] reads an argument; a
/// number or a boolean without the newline its file ends with. At most what one request can carry
/// (`max`, the client's maximum frame size) is read: a larger file (or `/dev/zero`) is refused, not
/// read into memory to its end.
pub fn parse_value_file(
    path: &std::path::Path,
    value_type: ValueType,
    max: usize,
) -> Result<Value, CliError> {
    use std::io::Read;
    let cannot =
        |e: std::io::Error| CliError::Local(format!("cannot read the value from {}: {e}", path.display()));
    let input: Box<dyn Read> = match path.as_os_str() == "-" {
        true => Box::new(std::io::stdin()),
        false => Box::new(std::fs::File::open(path).map_err(cannot)?),
    };
    let mut bytes = Vec::new();
    input.take(max as u64 + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() > max {
        let what = format!(
            "{} holds more than {max} bytes: one request carries at most that, table and key included",
            path.display()
        );
        return Err(CliError::InvalidInput(what));
    }
    let bytes = match value_type {
        ValueType::Int | ValueType::Float | ValueType::Bool => bytes.trim_ascii(),
        ValueType::String | ValueType::Binary => &bytes[..],
    };
    parse_value(bytes, value_type)
}

pub fn bench_progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{duration} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// The run, as a table for people.
pub fn bench_summary(config: &qkv::bench::BenchConfig, report: &qkv::bench::BenchReport) {
    let json = report.to_json(config);
    let load = match config.rate {
        Some(rate) => format!("{rate}/s, <= {} in flight", config.inflight),
        None => format!("{} in flight", config.inflight),
    };
    let header = [
        "transport",
        "workload",
        "conns",
        "load",
        "value",
        "requests",
        "errors",
        "req/s",
        "p50 us",
        "p90",
        "p99",
        "p99.9",
        "max",
    ];
    let l = &json.latency_us;
    // No success, no latency: a 0 would read as a fast run.
    let latency = |us: u64| if json.requests == 0 { "-".to_owned() } else { us.to_string() };
    let row = [
        json.transport.clone(),
        json.workload.clone(),
        json.connections.to_string(),
        load,
        format!("{} B", json.value_size),
        json.requests.to_string(),
        json.errors.to_string(),
        format!("{:.0}", json.throughput_rps),
        latency(l.p50),
        latency(l.p90),
        latency(l.p99),
        latency(l.p999),
        latency(l.max),
    ];
    let widths: Vec<usize> = header.iter().zip(&row).map(|(h, r)| h.len().max(r.len())).collect();
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ")
    };
    out!("{}", line(header.to_vec()));
    out!("{}", line(row.iter().map(String::as_str).collect()));
    out!(
        "measured {:.1} s after {:.1} s of warm-up",
        report.elapsed.as_secs_f64(),
        config.warmup.as_secs_f64()
    );
    if let Some(times) = &report.connection_times {
        let sharing = match config.client.transport {
            qkv::transport::Transport::Quic => format!(", {} per UDP socket", config.connections_per_socket),
            _ => String::new(),
        };
        let (opened, what) = match &json.fanout {
            Some(fanout) => (fanout.subscribers + fanout.stalled, "subscribers"),
            None => (config.connections, "connections"),
        };
        out!(
            "opened {opened} {what} in {:.2} s ({} at a time{sharing}), closed them in {:.2} s",
            times.open.as_secs_f64(),
            config.connect_concurrency,
            times.close.as_secs_f64()
        );
    }
    if let Some(fanout) = &json.fanout {
        out!(
            "fan-out: {} messages/s published to {} reading subscribers ({} stalled); the req/s and latencies above are deliveries (publish to receipt); {} reported missed to readers; {} deliveries the server could not queue (lagging subscribers); {} stalled subscribers ended by the server for falling behind (--lag-policy drop)",
            (fanout.published as f64 / report.elapsed.as_secs_f64()).round(),
            fanout.subscribers,
            fanout.stalled,
            fanout.missed,
            fanout.lagging,
            fanout.dropped
        );
        return;
    }
    let stats = &json.client_stats;
    out!(
        "connections {}, 0-RTT accepted {} / rejected {}, TLS resumed {}, retries {}; longest time without a success {} ms",
        stats.connections,
        stats.zero_rtt_accepted,
        stats.zero_rtt_rejected,
        stats.resumed,
        stats.retries,
        json.longest_gap_ms
    );
}
