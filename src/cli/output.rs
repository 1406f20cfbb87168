//! How results are printed: values plainly, one per line; errors on stderr with an exit code that
//! says what kind of failure it was.

use std::process::ExitCode;

use qkv::client::{ClientError, Written};
use qkv::pb::{Value, Versioned, value};

use super::args::ValueType;

/// Exit code when the server answered with an error (not found, conflict, bad request...).
pub const EXIT_SERVER_SAID_NO: u8 = 1;
/// Exit code when the server could not be reached or trusted.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Prints `error` on stderr and picks the exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    let code = match error.downcast_ref::<ClientError>() {
        Some(ClientError::Status { .. } | ClientError::Conflict { .. }) => EXIT_SERVER_SAID_NO,
        Some(_) => EXIT_UNREACHABLE,
        None => EXIT_SERVER_SAID_NO,
    };
    ExitCode::from(code)
}

pub fn versioned(entry: &Versioned, with_version: bool) -> String {
    if with_version { format!("{}\t{}", entry.value, entry.version) } else { entry.value.to_string() }
}

pub fn optional(entry: Option<&Versioned>, with_version: bool) -> String {
    entry.map_or_else(|| "(nil)".to_owned(), |e| versioned(e, with_version))
}

pub fn previous(written: &Written) -> String {
    written.previous.as_ref().map_or_else(|| "(nil)".to_owned(), Value::to_string)
}

/// Reads a command-line argument as a value of the requested type.
pub fn parse_value(raw: &str, value_type: ValueType) -> anyhow::Result<Value> {
    let parsed = match value_type {
        ValueType::String => value::Value::String(raw.to_owned()),
        ValueType::Binary => value::Value::Binary(raw.as_bytes().to_vec().into()),
        ValueType::Int => {
            value::Value::Integer(raw.parse().map_err(|e| anyhow::anyhow!("{raw:?} is not an integer: {e}"))?)
        }
        ValueType::Float => {
            value::Value::Float(raw.parse().map_err(|e| anyhow::anyhow!("{raw:?} is not a number: {e}"))?)
        }
        ValueType::Bool => {
            value::Value::Bool(raw.parse().map_err(|e| anyhow::anyhow!("{raw:?} is not true or false: {e}"))?)
        }
    };
    Ok(parsed.into())
}

pub fn bench_summary(config: &qkv::bench::BenchConfig, report: &qkv::bench::BenchReport) {
    let latency = &report.latency_us;
    println!(
        "{:?}: {} connection(s) x {} in flight, {:.1} s: {} requests, {} errors, {:.0} req/s",
        config.workload,
        config.connections,
        config.inflight,
        report.elapsed.as_secs_f64(),
        report.requests,
        report.errors,
        report.throughput()
    );
    println!(
        "latency (us): p50 {} p90 {} p99 {} p99.9 {} max {}",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.9),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max()
    );
    if let Some(error) = &report.first_error {
        eprintln!("first error: {error}");
    }
}
