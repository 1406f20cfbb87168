//! The OpenAPI 3.1 document of the REST API, generated from the handlers' annotations (`rest`) and the
//! types below, which are the JSON the API reads and writes; served at `/v1/openapi.json`.

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use utoipa::openapi::{RefOr, schema::Schema};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// The document's frame: what the handlers' annotations do not say.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "qkv REST API",
        description = "Keys as resources whose ETag is their version: If-Match and If-None-Match are qkv's conditional writes. Tables listed page by page, batch reads and writes, topics published to with POST and read as server-sent events. Errors are application/problem+json (RFC 9457). docs/HTTP.md is the full specification.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "keys", description = "One key of a table"),
        (name = "tables", description = "A table's keys, listed or read and written many at a time"),
        (name = "topics", description = "Publish and subscribe"),
        (name = "server", description = "The server itself"),
    ),
    components(schemas(JsonValue, Binary, Problem, Current, ServerSentEvent))
)]
pub struct ApiDoc;

/// Standard base64, padded.
const BASE64_PATTERN: &str = "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// A value as JSON: a string, an integer (64-bit signed), a number with a fraction or an exponent (a
/// float), a boolean; binary as `{"binary": "<base64>"}`, and the floats JSON cannot write as
/// `{"float": "NaN" | "Infinity" | "-Infinity"}`.
pub struct JsonValue;

impl PartialSchema for JsonValue {
    fn schema() -> RefOr<Schema> {
        let schema = json!({
            "description": "A value: string, integer (int64), float (written with a fraction or an exponent), boolean, {\"binary\": base64} or {\"float\": \"NaN\"|\"Infinity\"|\"-Infinity\"}",
            // anyOf, not oneOf: in JSON Schema 7 is an integer and a number both.
            "anyOf": [
                { "type": "string" },
                { "type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX },
                { "type": "number", "format": "double" },
                { "type": "boolean" },
                {
                    "type": "object",
                    "required": ["binary"],
                    "additionalProperties": false,
                    "properties": {
                        "binary": { "type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN }
                    }
                },
                {
                    "type": "object",
                    "required": ["float"],
                    "additionalProperties": false,
                    "properties": { "float": { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] } }
                }
            ]
        });
        // A literal of this module's own, held to deserialize by a test.
        serde_json::from_value(schema).map(RefOr::T).unwrap_or_else(|_| RefOr::T(Schema::default()))
    }
}

impl ToSchema for JsonValue {}

/// Bytes as they are: an `application/octet-stream` body (utoipa would describe `Vec<u8>` as an array
/// of integers).
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        let schema =
            json!({ "type": "string", "format": "binary", "contentMediaType": "application/octet-stream" });
        serde_json::from_value(schema).map(RefOr::T).unwrap_or_else(|_| RefOr::T(Schema::default()))
    }
}

impl ToSchema for Binary {}

/// An error: `application/problem+json` (RFC 9457).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong and what to do about it.
    pub detail: String,
    /// qkv's status code, when the service answered (a 412 is qkv's 409).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qkv_status: Option<u32>,
    /// On a 412 about a key that exists: its current value and version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<Current>,
}

/// A key's current value and version.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Current {
    #[schema(value_type = JsonValue)]
    pub value: Json,
    pub version: u64,
}

/// One server-sent event of a subscription (docs/HTTP.md, 2.5): `subscribed` (`{"id": n}`), `message`
/// (a JSON array of values), `missed` (`{"missed": n}`) or `end` (`{"status": s, "detail": "…"}`).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ServerSentEvent {
    #[schema(pattern = "^(subscribed|message|missed|end)$")]
    pub event: String,
    /// JSON, as the event's name says.
    pub data: String,
}

/// The document as served: the handlers' own responses, and those any operation may meet whatever
/// it is (docs/HTTP.md, 1 and 2.7): 503 when the connection memory budget is spent (or the Redis backend
/// is unreachable), 421 for a host name the listener does not answer to (`--web-plaintext`), 431 for a
/// request head over `--web-max-header-size` (no body: it is refused before any route runs), and for
/// those with a body 408 when it does not arrive in time.
pub fn document(api: &utoipa::openapi::OpenApi) -> Json {
    let mut document = serde_json::to_value(api).unwrap_or(Json::Null);
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
        })
    };
    let mut unavailable = problem(
        "Nothing was executed: the server's connection memory budget is spent, or the store (Redis backend) is unreachable; retry",
    );
    unavailable["headers"] =
        json!({ "Retry-After": { "description": "Seconds to wait", "schema": { "type": "integer" } } });
    let late = problem("The request's body did not arrive within the server's request timeout");
    let misdirected = problem(
        "With --web-plaintext: a Host (HTTP/2: :authority) the listener does not answer to (an IP address, localhost, a name of its certificate or one given with --web-host); nothing was run",
    );
    let head_too_large = json!({ "description": "The request head is over the server's --web-max-header-size; nothing was run (no body)" });
    let operations = document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut());
    for operation in operations.filter_map(Json::as_object_mut).flat_map(|item| item.values_mut()) {
        let has_body = operation.get("requestBody").is_some();
        let Some(responses) = operation.get_mut("responses").and_then(Json::as_object_mut) else { continue };
        responses.entry("503").or_insert_with(|| unavailable.clone());
        responses.entry("421").or_insert_with(|| misdirected.clone());
        responses.entry("431").or_insert_with(|| head_too_large.clone());
        if has_body {
            responses.entry("408").or_insert_with(|| late.clone());
        }
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_schema_is_well_formed() {
        let RefOr::T(schema) = JsonValue::schema() else { panic!("an inline schema") };
        assert_ne!(serde_json::to_value(schema).unwrap(), serde_json::to_value(Schema::default()).unwrap());
    }
}
