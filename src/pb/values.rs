//! Conversions between Rust values and the wire `Value`.

use std::fmt;

use bytes::Bytes;

use super::{Value, value};

/// A value and its version: what a key holds. Versions are positive; 0 stands for "absent".
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub value: Value,
    pub version: u64,
}

impl Value {
    /// True when no variant is set: the "empty Value" that stands for a miss in multi-key answers.
    pub fn is_empty(&self) -> bool {
        self.value.is_none()
    }
}

impl From<value::Value> for Value {
    fn from(v: value::Value) -> Self {
        Value { value: Some(v) }
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        value::Value::String(s).into()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        s.to_owned().into()
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        value::Value::Integer(i).into()
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        value::Value::Float(f).into()
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        value::Value::Bool(b).into()
    }
}

impl From<Bytes> for Value {
    fn from(b: Bytes) -> Self {
        value::Value::Binary(b).into()
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Bytes::from(b).into()
    }
}

/// Prints the value plainly: strings without quotes, numbers and booleans as Rust prints them, binary
/// with printable ASCII as is and other bytes as `\xNN`. An empty Value prints as nothing.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => Ok(()),
            Some(value::Value::String(s)) => f.write_str(s),
            Some(value::Value::Binary(b)) => write!(f, "{}", b.escape_ascii()),
            Some(value::Value::Integer(i)) => write!(f, "{i}"),
            Some(value::Value::Float(x)) => write!(f, "{x}"),
            Some(value::Value::Bool(b)) => write!(f, "{b}"),
        }
    }
}
