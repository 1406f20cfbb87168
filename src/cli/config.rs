//! `qkv serve`'s settings from a TOML file and from the environment (docs/OPERATIONS.md,
//! "Configuration").
//!
//! Every `serve` flag is a key: its long name with `-` as `_` (`max_connections = 100`), and an
//! environment variable `QKV_<KEY IN CAPITALS>` (`QKV_MAX_CONNECTIONS`). Precedence: flag >
//! environment > file > default.
//!
//! clap stays the one place that knows the flags, their types, ranges and defaults: the environment
//! is clap's `env` on every flag, and each key of a file becomes the flag it names, checked on its own
//! (so an error names the file and the key) and then added to the command line unless a flag or the
//! environment already set it.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::args::Cli;
use super::output::CliError;

/// What the command line asks for.
pub enum Invocation {
    /// Run this command.
    Run(Box<Cli>),
    /// `qkv serve --print-config`: print this TOML and exit, once the settings it prints have
    /// passed the checks `serve` runs.
    PrintConfig { toml: String, cli: Box<Cli> },
}

/// The environment variable that names the config file (the `--config` flag's).
pub const CONFIG_VARIABLE: &str = "QKV_CONFIG";

/// Parses the command line, the environment and `serve --config FILE`. clap's own errors (and
/// `--help`) exit the process as `Cli::parse` would; a bad config file is an `InvalidInput` error.
pub fn parse() -> anyhow::Result<Invocation> {
    parse_from(std::env::args_os().collect())
}

pub fn parse_from(mut args: Vec<OsString>) -> anyhow::Result<Invocation> {
    let mut matches = matches_from(&args)?;
    if let Some(("serve", serve)) = matches.subcommand()
        && let Some(path) = serve.get_one::<std::path::PathBuf>("config")
    {
        let from_file = file_arguments(path, serve)?;
        args.extend(from_file.into_iter().map(OsString::from));
        matches = matches_from(&args)?;
    }
    if let Some(("serve", serve)) = matches.subcommand()
        && serve.get_flag("print_config")
    {
        let toml = print_config(serve);
        return Ok(Invocation::PrintConfig { toml, cli: Box::new(Cli::from_arg_matches(&matches)?) });
    }
    Ok(Invocation::Run(Box::new(Cli::from_arg_matches(&matches)?)))
}

/// The command line parsed, with the environment. clap's errors exit as `get_matches_from` would,
/// except for a bad value from an environment variable: clap names the flag, which the operator never
/// typed, so the error names the variable (and its flag) instead.
fn matches_from(args: &[OsString]) -> anyhow::Result<ArgMatches> {
    let command = command();
    match command.clone().try_get_matches_from(args) {
        Ok(matches) => Ok(matches),
        Err(error) => match from_environment(&command, &error, args) {
            Some(message) => Err(CliError::InvalidInput(message).into()),
            None => error.exit(),
        },
    }
}

/// `QKV_IDLE_TIMEOUT=30 (for --idle-timeout): ...` when `error` is about a value that came from an
/// environment variable: one the command line does not override.
fn from_environment(command: &clap::Command, error: &clap::Error, args: &[OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (error.get(ContextKind::InvalidArg), error.get(ContextKind::InvalidValue))
    else {
        return None;
    };
    let flag = arg.split([' ', '=']).next()?;
    let long = flag.strip_prefix("--")?;
    let on_command_line =
        args.iter().filter_map(|a| a.to_str()).any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if on_command_line {
        return None;
    }
    let variable = all_arguments(command)
        .filter(|a| a.get_long() == Some(long))
        .filter_map(|a| a.get_env()?.to_str().map(str::to_owned))
        .find(|variable| std::env::var(variable).is_ok_and(|set| set == *value))?;
    let message = clap_message(error);
    let why = message
        .strip_prefix(&format!("invalid value '{value}' for '{arg}'"))
        .map(|rest| rest.trim_start_matches([':', ';', ' ']))
        .filter(|rest| !rest.is_empty())
        .unwrap_or(&message);
    Some(format!("{variable}={value} (for {flag}): {why}"))
}

/// The arguments of `command` and of all its subcommands.
fn all_arguments(command: &clap::Command) -> Box<dyn Iterator<Item = &Arg> + '_> {
    Box::new(command.get_arguments().chain(command.get_subcommands().flat_map(all_arguments)))
}

/// The command line's definition, with `QKV_<KEY>` as the environment variable of every `serve` flag
/// that has a key (a flag that names its variable itself already uses that name).
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("serve", |serve| {
        serve.mut_args(|arg| match (key(&arg), arg.get_env()) {
            (Some(key), None) => arg.env(format!("QKV_{}", key.to_uppercase())),
            _ => arg,
        })
    })
}

/// The `QKV_*` variables of the environment that no flag of any command reads (a misspelt
/// `QKV_MAX_CONECTIONS` would otherwise be ignored without a word): for a warning at start.
pub fn unknown_variables() -> Vec<String> {
    let mut known = vec![super::args::REDIS_PASSWORD_VARIABLE.to_owned()];
    collect_env(&command(), &mut known);
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("QKV_") && !known.contains(name))
        .collect()
}

fn collect_env(command: &clap::Command, known: &mut Vec<String>) {
    known.extend(command.get_arguments().filter_map(|arg| arg.get_env()?.to_str().map(str::to_owned)));
    for sub in command.get_subcommands() {
        collect_env(sub, known);
    }
}

/// The key of a `serve` flag in a config file: its long name with `-` as `_`. `--config` and
/// `--print-config` have none, nor have `--help` and `--version`.
fn key(arg: &Arg) -> Option<String> {
    let long = arg.get_long()?;
    match long {
        "help" | "version" | "config" | "print-config" => None,
        long => Some(long.replace('-', "_")),
    }
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// The flags that `path` adds to the command line: its keys that neither a flag nor the environment
/// set (`given` holds what those set). Every key is checked, set or not.
fn file_arguments(path: &Path, given: &ArgMatches) -> anyhow::Result<Vec<String>> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::InvalidInput(format!("cannot read the config file {shown}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        CliError::InvalidInput(format!("config file {shown}: {}", e.to_string().trim_end()))
    })?;
    let serve = command().find_subcommand("serve").cloned().context("no serve command")?;
    // Checked one key at a time, without the environment: an error is about the key alone.
    let alone = serve.clone().no_binary_name(true).mut_args(|arg| arg.env(None));
    let mut arguments = Vec::new();
    for (name, value) in &table {
        let invalid =
            |what: String| CliError::InvalidInput(format!("config file {shown}: key `{name}`: {what}"));
        let arg = serve.get_arguments().find(|arg| key(arg).as_deref() == Some(name.as_str())).ok_or_else(
            || {
                CliError::InvalidInput(format!(
                    "config file {shown}: unknown key `{name}` (keys are `qkv serve` flags with - as _; \
                 `qkv serve --print-config` lists them all)"
                ))
            },
        )?;
        let flags = flags_for(arg, value).map_err(invalid)?;
        if let Err(error) = alone.clone().try_get_matches_from(&flags) {
            return Err(invalid(clap_message(&error)).into());
        }
        let set_already = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !set_already {
            arguments.extend(flags);
        }
    }
    Ok(arguments)
}

/// The command-line flags that say what `value` says for `arg`.
fn flags_for(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let long = arg.get_long().unwrap_or_default();
    if is_switch(arg) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}")]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expected true or false, found {}", other.type_str())),
        };
    }
    let scalars = match value {
        toml::Value::Array(items) if items.is_empty() => return Err("expected at least one value".into()),
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items.iter().collect(),
        toml::Value::Array(_) => return Err("expected one value, found an array".into()),
        scalar => vec![scalar],
    };
    scalars
        .into_iter()
        .map(|scalar| {
            let text = match scalar {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => return Err(format!("expected a string or a number, found {}", other.type_str())),
            };
            Ok(format!("--{long}={text}"))
        })
        .collect()
}

/// A clap error on one line, without its "error: " prefix and its pointer to `--help`: what was wrong
/// and what was expected (the possible values, a similar value).
fn clap_message(error: &clap::Error) -> String {
    let text = error.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect();
    let joined = lines.join("; ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// The effective configuration as TOML: every key with its value (defaults included), a key without
/// a value commented out, each after its flag's help. Redis URLs lose their password (not their user).
fn print_config(matches: &ArgMatches) -> String {
    let serve = command();
    let serve = serve.find_subcommand("serve").cloned().unwrap_or_default();
    let mut out = String::from(
        "# qkv serve's configuration, as printed by `qkv serve --print-config`.\n\
         # Every key is a `qkv serve` flag with - as _ (see `qkv serve --help`), and can also be set by the\n\
         # environment variable QKV_<KEY IN CAPITALS>. Precedence: flag > environment > this file > default.\n",
    );
    for arg in serve.get_arguments() {
        let Some(key) = key(arg) else { continue };
        out.push('\n');
        if let Some(help) = arg.get_help() {
            for line in wrap(&help.to_string(), 98) {
                let _ = writeln!(out, "# {line}");
            }
        }
        let values: Vec<String> = matches
            .get_raw(arg.get_id().as_str())
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let values: Vec<String> = match key.as_str() {
            "redis" => values.iter().map(|url| qkv::storage::url_without_password(url)).collect(),
            _ => values,
        };
        let _ = match (values.as_slice(), is_switch(arg), arg.get_action()) {
            ([], _, _) => writeln!(out, "# {key} ="),
            ([one], true, _) => writeln!(out, "{key} = {}", one == "true"),
            (many, _, ArgAction::Append) => {
                let items: Vec<String> = many.iter().map(|v| toml_scalar(v)).collect();
                writeln!(out, "{key} = [{}]", items.join(", "))
            }
            ([one, ..], _, _) => writeln!(out, "{key} = {}", toml_scalar(one)),
        };
    }
    out
}

/// A value as TOML: an integer if it reads as one, a string otherwise (a file's values are read back
/// as text, so either spelling means the same).
fn toml_scalar(value: &str) -> String {
    match value.parse::<i64>() {
        Ok(i) => i.to_string(),
        Err(_) => toml::Value::String(value.to_owned()).to_string(),
    }
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wraps_at_spaces() {
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
        assert!(wrap("", 6).is_empty());
    }

    #[test]
    fn values_print_as_integers_when_they_are() {
        assert_eq!(toml_scalar("100"), "100");
        assert_eq!(toml_scalar("16MiB"), "\"16MiB\"");
        assert_eq!(toml_scalar("a\"b"), "'a\"b'");
    }
}
