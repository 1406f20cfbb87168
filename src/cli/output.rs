//! How results are printed: values plainly, one per line; errors on stderr with an exit code that
//! says what kind of failure it was.

use std::process::ExitCode;

use qkv::client::{ClientError, Written};
use qkv::pb::{Value, Versioned, value};

use super::args::ValueType;

/// Exit codes, as the README documents them.
pub mod exit {
    /// The server refused: not found, version conflict, bad request...
    pub const SERVER_SAID_NO: u8 = 1;
    /// Bad usage or input (clap uses 2 for its own usage errors too).
    pub const INVALID_INPUT: u8 = 2;
    /// The server could not be reached or trusted, or the connection was lost.
    pub const UNREACHABLE: u8 = 3;
    /// Anything else that failed here: files, sockets, the runtime, a server that could not start.
    pub const LOCAL_FAILURE: u8 = 4;
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
}

/// Prints `error` on stderr and picks the exit code.
pub fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    let code = if let Some(error) = error.downcast_ref::<ClientError>() {
        match error {
            ClientError::Status { .. } | ClientError::Conflict { .. } => exit::SERVER_SAID_NO,
            ClientError::RequestTooLarge { .. } => exit::INVALID_INPUT,
            ClientError::Tls(_) => exit::LOCAL_FAILURE,
            _ => exit::UNREACHABLE,
        }
    } else {
        match error.downcast_ref::<CliError>() {
            Some(CliError::Refused(_)) => exit::SERVER_SAID_NO,
            Some(CliError::InvalidInput(_)) => exit::INVALID_INPUT,
            None => exit::LOCAL_FAILURE,
        }
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

fn invalid(raw: &str, expected: &str, error: impl std::fmt::Display) -> CliError {
    CliError::InvalidInput(format!("{raw:?} is not {expected}: {error}"))
}

/// Reads a command-line argument as a value of the requested type.
pub fn parse_value(raw: &str, value_type: ValueType) -> Result<Value, CliError> {
    let parsed = match value_type {
        ValueType::String => value::Value::String(raw.to_owned()),
        ValueType::Binary => value::Value::Binary(raw.as_bytes().to_vec().into()),
        ValueType::Int => value::Value::Integer(raw.parse().map_err(|e| invalid(raw, "an integer", e))?),
        ValueType::Float => value::Value::Float(raw.parse().map_err(|e| invalid(raw, "a number", e))?),
        ValueType::Bool => value::Value::Bool(raw.parse().map_err(|e| invalid(raw, "true or false", e))?),
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
