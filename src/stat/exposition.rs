//! Prometheus's text exposition format (0.0.4), read into samples: `name{label="value",...} value
//! [timestamp]`, one per line; `#` lines (HELP, TYPE, comments) and blank lines carry no sample.
//!
//! Written here rather than taken from a crate: the parsers on crates.io either split label pairs on
//! `,` and `=` (so a label value holding either is misread) or bring a regex engine and a date library
//! for what is a few dozen lines. This one reads label values with their escapes (`\\`, `\"`, `\n`)
//! and refuses a line it does not understand, naming it, rather than guessing.

use std::fmt;

/// One line's sample. Labels are sorted by name, so two scrapes of the same series compare equal.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(label, _)| label == name).map(|(_, value)| value.as_str())
    }
}

/// Why a text is not in the exposition format: the line (counted from 1) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ExpositionError {
    pub line: usize,
    pub reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoMetricName,
    BadLabel,
    UnterminatedLabels,
    NoValue,
    BadValue,
    BadTimestamp,
    TrailingText,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NoMetricName => "no metric name",
            Reason::BadLabel => "a label is not name=\"value\"",
            Reason::UnterminatedLabels => "the labels are not closed with }",
            Reason::NoValue => "no value after the metric",
            Reason::BadValue => "the value is not a number",
            Reason::BadTimestamp => "the timestamp is not an integer",
            Reason::TrailingText => "text after the timestamp",
        })
    }
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, ExpositionError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|reason| ExpositionError { line: index + 1, reason })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, Reason> {
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Reason::NoMetricName);
    }
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    labels.sort();
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or(Reason::NoValue)?;
    let value = parse_float(value).ok_or(Reason::BadValue)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| Reason::BadTimestamp)?;
    }
    if fields.next().is_some() {
        return Err(Reason::TrailingText);
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Reads `name="value",...}` into `labels` and returns what follows the closing brace.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str, Reason> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let name_end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let (name, after_name) = rest.split_at(name_end);
        if name.is_empty() {
            return Err(if rest.is_empty() { Reason::UnterminatedLabels } else { Reason::BadLabel });
        }
        let after_eq = after_name.trim_start().strip_prefix('=').ok_or(Reason::BadLabel)?;
        let quoted = after_eq.trim_start().strip_prefix('"').ok_or(Reason::BadLabel)?;
        let (value, after_value) = unescape_until_quote(quoted).ok_or(Reason::UnterminatedLabels)?;
        labels.push((name.to_owned(), value));
        rest = after_value.trim_start();
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return Err(if rest.is_empty() { Reason::UnterminatedLabels } else { Reason::BadLabel });
        }
    }
}

/// A label value up to its closing quote, unescaped, and the text after that quote.
fn unescape_until_quote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Go's float syntax as Prometheus writes it: `+Inf`, `-Inf` and `NaN` besides decimals.
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok().filter(|value: &f64| value.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn reads_samples_with_and_without_labels_skipping_comments() {
        let text = "# HELP qkv_storage_keys keys stored\n\
                    # TYPE qkv_storage_keys gauge\n\
                    qkv_storage_keys 42\n\
                    \n\
                    qkv_requests_total{transport=\"quic\",command=\"Hget\",status=\"200\"} 1027 1700000000000\n\
                    qkv_request_duration_seconds_bucket{command=\"Hget\",le=\"+Inf\"} 3\n\
                    qkv_request_duration_seconds_sum{command=\"Hget\"} 1.5e-3\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0], Sample { name: "qkv_storage_keys".into(), labels: vec![], value: 42.0 });
        assert_eq!(samples[1].name, "qkv_requests_total");
        assert_eq!(
            samples[1].labels,
            labels(&[("command", "Hget"), ("status", "200"), ("transport", "quic")]),
            "labels are sorted by name"
        );
        assert_eq!(samples[1].value, 1027.0);
        assert_eq!(samples[2].label("le"), Some("+Inf"));
        assert_eq!(samples[3].value, 1.5e-3);
    }

    #[test]
    fn reads_escapes_commas_and_braces_in_label_values_and_a_trailing_comma() {
        let samples = parse(r#"m{a="x,y=z}",b="say \"hi\"\\\n",} 1"#).unwrap();
        assert_eq!(samples[0].labels, labels(&[("a", "x,y=z}"), ("b", "say \"hi\"\\\n")]));
    }

    #[test]
    fn reads_go_special_floats() {
        let samples = parse("a +Inf\nb -Inf\nc NaN\nd 1e3\n").unwrap();
        assert_eq!(samples[0].value, f64::INFINITY);
        assert_eq!(samples[1].value, f64::NEG_INFINITY);
        assert!(samples[2].value.is_nan());
        assert_eq!(samples[3].value, 1000.0);
    }

    #[test]
    fn refuses_what_is_not_the_format_naming_the_line() {
        let cases = [
            ("ok 1\n<html>", 2, Reason::NoMetricName),
            ("m{a=\"1\" 2", 1, Reason::BadLabel),
            ("m{a=\"1", 1, Reason::UnterminatedLabels),
            ("m{a=1} 2", 1, Reason::BadLabel),
            ("m", 1, Reason::NoValue),
            ("m one", 1, Reason::BadValue),
            ("m 1 later", 1, Reason::BadTimestamp),
            ("m 1 2 3", 1, Reason::TrailingText),
        ];
        for (text, line, reason) in cases {
            assert_eq!(parse(text), Err(ExpositionError { line, reason }), "{text:?}");
        }
    }
}
