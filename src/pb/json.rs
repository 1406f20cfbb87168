//! qkv values as JSON, both ways (docs/HTTP.md, "Values"): strings, integers, floats and booleans as
//! JSON scalars of their kind; what JSON has no scalar for as an object that says what it is.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Number, Value as Json, json};

use super::{Value, value};

/// A value as JSON: `"text"`, `7`, `1.5`, `true`; binary as `{"binary": "<base64>"}`; a float JSON
/// cannot write (NaN, ±infinity) as `{"float": "NaN" | "Infinity" | "-Infinity"}`; no value as `null`.
/// A float is always written with a fraction or an exponent (`1.0`), so it reads back as a float.
pub fn to_json(value: &Value) -> Json {
    match &value.value {
        None => Json::Null,
        Some(value::Value::String(s)) => Json::String(s.clone()),
        Some(value::Value::Integer(i)) => Json::Number((*i).into()),
        Some(value::Value::Bool(b)) => Json::Bool(*b),
        Some(value::Value::Binary(b)) => json!({ "binary": BASE64.encode(b) }),
        Some(value::Value::Float(f)) => match Number::from_f64(*f) {
            Some(number) => Json::Number(number),
            None => {
                json!({ "float": if f.is_nan() { "NaN" } else if *f > 0.0 { "Infinity" } else { "-Infinity" } })
            }
        },
    }
}

/// A value from its JSON text, as [`from_json`] reads it, except that a number written as an integer
/// (an optional `-` and digits: no fraction, no exponent) is an integer: one outside the 64-bit signed
/// range is an error, and `-0` is 0. (Parsed to a `serde_json::Value` first, an integer beyond
/// ±2⁶⁴ comes back as a float, losing digits, and `-0` as the float -0.0.)
#[cfg(feature = "server")]
pub fn from_json_text(text: &str) -> Result<Value, String> {
    let text = text.trim_matches([' ', '\t', '\n', '\r']);
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(format!("{text} is not JSON: a number has no leading zeros"));
        }
        return match text.parse::<i64>() {
            Ok(integer) => Ok(integer.into()),
            Err(_) => Err(format!("{text} is out of range: integers are 64-bit signed")),
        };
    }
    let StrictJson(json) = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    from_json(json)
}

/// JSON read as `serde_json::Value` reads it, except that an object naming a member twice is refused
/// (serde_json keeps the last): `{"binary": "AA==", "binary": "AQ=="}` is not one value or the other.
#[cfg(feature = "server")]
struct StrictJson(Json);

#[cfg(feature = "server")]
impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

#[cfg(feature = "server")]
struct StrictVisitor;

#[cfg(feature = "server")]
impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Json, E> {
        Ok(Json::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Json, E> {
        Ok(Json::Number(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Json, E> {
        Ok(Number::from_f64(f).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the member {key:?} is given twice")));
            }
            let StrictJson(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Json::Object(object))
    }
}

/// A JSON scalar (or one of [`to_json`]'s objects) as a value; the error says what was wrong.
pub fn from_json(json: Json) -> Result<Value, String> {
    Ok(match json {
        Json::String(s) => s.into(),
        Json::Bool(b) => b.into(),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !n.is_f64() => i.into(),
            (_, Some(f)) if n.is_f64() => f.into(),
            _ => return Err(format!("{n} is out of range: integers are 64-bit signed")),
        },
        Json::Object(object) => tagged(object)?,
        Json::Null => {
            return Err(
                "null is not a value: a value is a string, number, boolean or {\"binary\": \"<base64>\"} (a key is deleted with DELETE)"
                    .into(),
            );
        }
        Json::Array(_) => {
            return Err(
                "an array is not a value: a value is a string, number, boolean or {\"binary\": \"<base64>\"}"
                    .into(),
            );
        }
    })
}

fn tagged(object: Map<String, Json>) -> Result<Value, String> {
    let mut entries = object.into_iter();
    let (Some((kind, content)), None) = (entries.next(), entries.next()) else {
        return Err(
            r#"an object value has exactly one member: {"binary": "<base64>"} or {"float": "NaN"}"#.into()
        );
    };
    match (kind.as_str(), content) {
        ("binary", Json::String(encoded)) => BASE64
            .decode(encoded.as_bytes())
            .map(|bytes| Value::from(Bytes::from(bytes)))
            .map_err(|e| format!("the binary value is not standard base64: {e}")),
        ("float", Json::String(name)) => match name.as_str() {
            "NaN" => Ok(f64::NAN.into()),
            "Infinity" => Ok(f64::INFINITY.into()),
            "-Infinity" => Ok(f64::NEG_INFINITY.into()),
            _ => Err(format!("{name:?} is not a float JSON cannot write: NaN, Infinity or -Infinity")),
        },
        (kind, _) => Err(format!(
            r#"unknown value object {{"{kind}": …}}: expected {{"binary": "<base64>"}} or {{"float": "NaN"}}"#
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "server")]
    fn a_member_given_twice_is_refused_not_taken_last() {
        for text in [r#"{"binary":"AA==","binary":"AQ=="}"#, r#"{"float":"NaN","float":"Infinity"}"#] {
            let refused = from_json_text(text).unwrap_err();
            assert!(refused.contains("is given twice"), "{text}: {refused}");
        }
        assert_eq!(from_json_text(r#"{"binary":"AQ=="}"#).unwrap(), Value::from(vec![1u8]));
        assert_eq!(from_json_text(" 2.5 ").unwrap(), Value::from(2.5));
    }

    #[test]
    fn every_kind_of_value_round_trips_and_keeps_its_kind() {
        let values: Vec<Value> = vec![
            "text".into(),
            "".into(),
            Value::from(vec![0u8, 255, 10]),
            (-7i64).into(),
            i64::MAX.into(),
            1.0f64.into(),
            1.5e300f64.into(),
            f64::INFINITY.into(),
            f64::NEG_INFINITY.into(),
            true.into(),
        ];
        for value in values {
            let text = to_json(&value).to_string();
            let back = from_json(serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back, value, "{text}");
        }
        let nan = from_json(to_json(&f64::NAN.into())).unwrap();
        assert!(matches!(nan.value, Some(value::Value::Float(f)) if f.is_nan()));
        assert_eq!(to_json(&1.0f64.into()).to_string(), "1.0");
    }

    #[test]
    fn what_is_not_a_value_is_refused_with_a_reason() {
        for (json, says) in [
            ("null", "null"),
            ("[1]", "array"),
            ("18446744073709551615", "out of range"),
            (r#"{"binary": "!!"}"#, "base64"),
            (r#"{"binary": "AA==", "x": 1}"#, "exactly one"),
            (r#"{"text": "a"}"#, "unknown value object"),
            (r#"{"float": "nan"}"#, "not a float"),
        ] {
            let error = from_json(serde_json::from_str(json).unwrap()).unwrap_err();
            assert!(error.contains(says), "{json}: {error}");
        }
    }
}
