//! Conversions between Rust values and the wire `Value`.

use std::fmt;

use bytes::Bytes;

use super::{Value, value};

/// A value and its version: what a key holds. Versions are positive; 0 stands for "absent".
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The value.
    pub value: Value,
    /// The version its last write gave it.
    pub version: u64,
}

impl Value {
    /// True when no variant is set: the "empty Value" that stands for a miss in multi-key answers.
    pub fn is_empty(&self) -> bool {
        self.value.is_none()
    }

    /// The text, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Some(value::Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if it is binary.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.value {
            Some(value::Value::Binary(b)) => Some(b),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            Some(value::Value::Integer(i)) => Some(i),
            _ => None,
        }
    }

    /// The float, if it is one (an integer is not taken for one).
    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            Some(value::Value::Float(f)) => Some(f),
            _ => None,
        }
    }

    /// The boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Some(value::Value::Bool(b)) => Some(b),
            _ => None,
        }
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

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        s.clone().into()
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Bytes::copy_from_slice(b).into()
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

/// Prints the value plainly: strings without quotes, integers and booleans as Rust prints them, floats
/// always with a fraction or an exponent (Rust's `{:?}`: `1.0`, `2.5e300`, `NaN`, `inf`), so that
/// one is not taken for an integer nor printed as 301 digits, binary with printable ASCII as is and
/// other bytes as `\xNN`. An empty Value prints as nothing.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => Ok(()),
            Some(value::Value::String(s)) => f.write_str(s),
            Some(value::Value::Binary(b)) => write!(f, "{}", b.escape_ascii()),
            Some(value::Value::Integer(i)) => write!(f, "{i}"),
            Some(value::Value::Float(x)) => write!(f, "{x:?}"),
            Some(value::Value::Bool(b)) => write!(f, "{b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_accessor_reads_its_own_kind_and_no_other() {
        let kinds = [
            Value::from("text"),
            Value::from(&b"\x00\xff"[..]),
            Value::from(-7),
            Value::from(2.5),
            Value::from(true),
            Value::default(),
        ];
        let read = |v: &Value| {
            (
                v.as_str().map(str::to_owned),
                v.as_bytes().map(|b| b.to_vec()),
                v.as_i64(),
                v.as_f64(),
                v.as_bool(),
            )
        };
        assert_eq!(read(&kinds[0]), (Some("text".into()), None, None, None, None));
        assert_eq!(read(&kinds[1]), (None, Some(vec![0, 255]), None, None, None));
        assert_eq!(read(&kinds[2]), (None, None, Some(-7), None, None));
        assert_eq!(read(&kinds[3]), (None, None, None, Some(2.5), None));
        assert_eq!(read(&kinds[4]), (None, None, None, None, Some(true)));
        assert_eq!(read(&kinds[5]), (None, None, None, None, None));
        assert_eq!(Value::from(&"owned".to_owned()), Value::from("owned"));
    }
}
