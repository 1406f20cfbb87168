//! The REST API (docs/HTTP.md, "REST"): keys as resources whose ETag is their version, so HTTP's
//! conditional requests (`If-Match`, `If-None-Match`) are qkv's conditional writes; tables listed page
//! by page as streamed JSON; topics published to with POST and subscribed to as server-sent events.
//!
//! Every handler builds a [`CommandRequest`] and hands it to the service's [`Handler`], like every
//! other front door: limits, identity and dispatch are the service's, not this module's.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{StreamExt, stream};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::problem::Problem;
use super::{complete, first_frame};
use crate::pb::json::{from_json, to_json};
use crate::pb::{CommandRequest, CommandResponse, Kvpair, Value, status, value};
use crate::service::{Caller, Handler};

/// The REST routes, on `handler`.
pub fn router<H: Handler>(handler: H) -> Router {
    Router::new()
        .route("/v1/tables/{table}/keys/{key}", get(get_key::<H>).put(put_key::<H>).delete(delete_key::<H>))
        .route("/v1/tables/{table}", get(list_table::<H>))
        .route("/v1/tables/{table}/mget", post(mget::<H>))
        .route("/v1/tables/{table}/mset", post(mset::<H>))
        .route("/v1/tables/{table}/mdel", post(mdel::<H>))
        .route("/v1/topics/{topic}", get(subscribe::<H>).post(publish::<H>))
        .route("/v1/openapi.json", get(super::openapi::document))
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "no such resource: see /v1/openapi.json for the API")
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this resource does not take that method: see /v1/openapi.json",
            )
        })
        .with_state(Arc::new(handler))
}

type Shared<H> = State<Arc<H>>;

/// A key's ETag: its version, as a strong entity tag.
fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// What a conditional header asks for.
#[derive(Debug, PartialEq)]
enum Condition {
    /// `*`: any current representation.
    Any,
    /// A list of entity tags: the versions of the strong ones, and whether a weak one was listed.
    Tags { strong: Vec<u64>, weak: Vec<u64> },
}

impl Condition {
    fn parse(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<Condition>, Problem> {
        let mut values = headers.get_all(&name).iter().peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let bad = || Problem::bad_request(format!("{name} must be * or a list of ETags such as \"42\""));
        let mut strong = Vec::new();
        let mut weak = Vec::new();
        for value in values {
            for tag in value.to_str().map_err(|_| bad())?.split(',').map(str::trim).filter(|t| !t.is_empty())
            {
                if tag == "*" {
                    return Ok(Some(Condition::Any));
                }
                let (list, quoted) = match tag.strip_prefix("W/") {
                    Some(quoted) => (&mut weak, quoted),
                    None => (&mut strong, tag),
                };
                let inner = quoted.strip_prefix('"').and_then(|t| t.strip_suffix('"')).ok_or_else(bad)?;
                // An ETag this server never made matches nothing (RFC 9110: it is not an error).
                if let Ok(version) = inner.parse() {
                    list.push(version);
                }
            }
        }
        Ok(Some(Condition::Tags { strong, weak }))
    }

    /// Strong comparison (If-Match): weak tags never match.
    fn matches_strongly(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (Condition::Any, current) => current.is_some(),
            (Condition::Tags { strong, .. }, Some(version)) => strong.contains(&version),
            (Condition::Tags { .. }, None) => false,
        }
    }

    /// Weak comparison (If-None-Match).
    fn matches_weakly(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (Condition::Any, current) => current.is_some(),
            (Condition::Tags { strong, weak }, Some(version)) => {
                strong.contains(&version) || weak.contains(&version)
            }
            (Condition::Tags { .. }, None) => false,
        }
    }
}

/// The table and key of a URL, or a problem that says what is wrong with it.
fn names(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String), Problem> {
    path.map(|Path(names)| names)
        .map_err(|e| Problem::bad_request(format!("bad table or key in the URL: {e}")))
}

fn name(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    path.map(|Path(name)| name).map_err(|e| Problem::bad_request(format!("bad name in the URL: {e}")))
}

/// The request's Accept header lists `application/json` (with a q above 0).
fn wants_json(headers: &HeaderMap) -> bool {
    accepts(headers, "application/json")
}

fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "").parse::<QZero>().is_ok());
            media.eq_ignore_ascii_case(wanted) && !refused
        },
    )
}

/// A `q=0` parameter: the media range is not acceptable.
struct QZero;

impl std::str::FromStr for QZero {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.strip_prefix("q=").map(|q| q.parse::<f32>()) {
            Some(Ok(q)) if q == 0.0 => Ok(QZero),
            _ => Err(()),
        }
    }
}

/// A value as a response body: JSON when the client asked for it; otherwise strings as text, binary as
/// octets, numbers and booleans as JSON.
fn representation(value: &Value, json: bool) -> Response {
    let (content_type, body): (&'static str, Body) = match (&value.value, json) {
        (_, true) => ("application/json", to_json(value).to_string().into()),
        (Some(value::Value::String(s)), false) => ("text/plain; charset=utf-8", s.clone().into()),
        (Some(value::Value::Binary(b)), false) => ("application/octet-stream", b.clone().into()),
        (_, false) => ("application/json", to_json(value).to_string().into()),
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A request body as a value, by its content type.
fn value_of(headers: &HeaderMap, body: Bytes) -> Result<Value, Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut parts = content_type.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default().to_ascii_lowercase();
    let unsupported = || {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "a value's content type is text/plain (a string), application/octet-stream (binary) or application/json (a JSON scalar), not {content_type:?}"
            ),
        )
    };
    match media.as_str() {
        "text/plain" => {
            let charset = parts.find_map(|p| p.strip_prefix("charset=")).map(|c| c.trim_matches('"'));
            if charset.is_some_and(|c| !c.eq_ignore_ascii_case("utf-8")) {
                return Err(unsupported());
            }
            String::from_utf8(body.to_vec()).map(Value::from).map_err(|_| {
                Problem::bad_request(
                    "a text/plain value must be UTF-8: send binary as application/octet-stream",
                )
            })
        }
        "application/octet-stream" => Ok(Value::from(body)),
        "application/json" => {
            let json: Json = serde_json::from_slice(&body)
                .map_err(|e| Problem::bad_request(format!("the body is not JSON: {e}")))?;
            from_json(json).map_err(Problem::bad_request)
        }
        _ => Err(unsupported()),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, expected: &str) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body must be {expected}: {e}")))
}

/// Runs `request` and returns its complete answer when it succeeded, the problem otherwise.
async fn run<H: Handler>(
    handler: &H,
    request: CommandRequest,
    caller: &Caller,
) -> Result<CommandResponse, Problem> {
    let response = complete(handler.execute(request, caller).await).await;
    if response.status == status::OK { Ok(response) } else { Err(Problem::from_response(&response)) }
}

/// The key's current value and version, or `None` when absent.
async fn current<H: Handler>(
    handler: &H,
    table: &str,
    key: &str,
    caller: &Caller,
) -> Result<Option<(Value, u64)>, Problem> {
    let response = complete(handler.execute(CommandRequest::hget(table, key), caller).await).await;
    match response.status {
        status::OK => Ok(current_of(response)),
        status::NOT_FOUND => Ok(None),
        _ => Err(Problem::from_response(&response)),
    }
}

/// The value and version an answer carries (a read's, or a conflict's), if the key exists.
fn current_of(response: CommandResponse) -> Option<(Value, u64)> {
    let version = response.versions.first().copied().filter(|&v| v > 0)?;
    Some((response.values.into_iter().next().unwrap_or_default(), version))
}

/// `GET` (and `HEAD`) a key: its value and ETag; 304 when `If-None-Match` names the current ETag.
async fn get_key<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (table, key) = names(path)?;
    let unless = Condition::parse(&headers, header::IF_NONE_MATCH)?;
    let response = complete(handler.execute(CommandRequest::hget(&table, &key), &caller).await).await;
    if response.status != status::OK {
        return Err(Problem::from_response(&response));
    }
    let version = response.versions.first().copied().unwrap_or_default();
    if unless.is_some_and(|c| c.matches_weakly(Some(version))) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(version))]).into_response());
    }
    let value = response.values.into_iter().next().unwrap_or_default();
    let mut answer = representation(&value, wants_json(&headers));
    answer.headers_mut().insert(header::ETAG, etag(version));
    Ok(answer)
}

/// What a `PUT` or `DELETE` expects of the key's version, from its conditional headers: `None` for an
/// unconditional write, `Some(0)` for "absent".
async fn expected_version<H: Handler>(
    handler: &H,
    caller: &Caller,
    table: &str,
    key: &str,
    headers: &HeaderMap,
) -> Result<Option<u64>, Problem> {
    let if_match = Condition::parse(headers, header::IF_MATCH)?;
    let if_none_match = Condition::parse(headers, header::IF_NONE_MATCH)?;
    match (if_match, if_none_match) {
        (None, None) => Ok(None),
        // The common case, one ETag: the write itself checks it, atomically.
        (Some(Condition::Tags { strong, .. }), None) if strong.len() == 1 => Ok(Some(strong[0])),
        // `If-None-Match: *`: create only.
        (None, Some(Condition::Any)) => Ok(Some(0)),
        // Anything else is decided on the current version, and the write then expects that version,
        // so that a change in between still fails it.
        (if_match, if_none_match) => {
            let current = current(handler, table, key, caller).await?;
            let version = current.as_ref().map(|(_, version)| *version);
            let holds = if_match.is_none_or(|c| c.matches_strongly(version))
                && if_none_match.is_none_or(|c| !c.matches_weakly(version));
            if holds { Ok(Some(version.unwrap_or(0))) } else { Err(Problem::precondition_failed(current)) }
        }
    }
}

/// An error answer to a write; a 409 from a conditional write is HTTP's 412, with the key's current
/// value and version.
fn write_failed(response: CommandResponse, conditional: bool) -> Problem {
    if conditional && response.status == status::CONFLICT {
        Problem::precondition_failed(current_of(response))
    } else {
        Problem::from_response(&response)
    }
}

/// `PUT` a key: 201 when it was created, 200 when it replaced a value; the new ETag, and a JSON body
/// with the version and the value replaced.
async fn put_key<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (table, key) = names(path)?;
    let value = value_of(&headers, body)?;
    let expected = expected_version(&*handler, &caller, &table, &key, &headers).await?;
    let request = CommandRequest::hset_expecting(&table, &key, value, expected);
    let response = complete(handler.execute(request, &caller).await).await;
    if response.status != status::OK {
        return Err(write_failed(response, expected.is_some()));
    }
    let version = response.versions.first().copied().unwrap_or_default();
    let previous = response.values.into_iter().next().filter(|v| !v.is_empty());
    let created = previous.is_none();
    let body = json!({ "version": version, "previous": previous.as_ref().map(to_json) });
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut answer = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    answer.headers_mut().insert(header::ETAG, etag(version));
    if created {
        // The path as requested, so the header is a relative reference to this very resource.
        if let Ok(location) =
            HeaderValue::from_str(&format!("/v1/tables/{}/keys/{}", encode(&table), encode(&key)))
        {
            answer.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(answer)
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `DELETE` a key: 200 with the value it held, 404 when there was none, 412 when `If-Match` fails.
async fn delete_key<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (table, key) = names(path)?;
    let expected = expected_version(&*handler, &caller, &table, &key, &headers).await?;
    let request = match expected {
        Some(version) => CommandRequest::hdel_if_version(&table, &key, version),
        None => CommandRequest::hdel(&table, &key),
    };
    let response = complete(handler.execute(request, &caller).await).await;
    if response.status != status::OK {
        return Err(write_failed(response, expected.is_some()));
    }
    match response.values.into_iter().next().filter(|v| !v.is_empty()) {
        Some(previous) => Ok(representation(&previous, wants_json(&headers))),
        None => Err(Problem {
            qkv_status: Some(status::NOT_FOUND),
            ..Problem::new(StatusCode::NOT_FOUND, format!("key {key:?} of table {table:?} does not exist"))
        }),
    }
}

#[derive(Debug, Deserialize)]
struct Page {
    /// At most this many entries (0 or absent: all of them).
    #[serde(default)]
    limit: u32,
    /// Start after this key.
    #[serde(default)]
    after: String,
}

/// `GET` a table: `{"items": [{"key", "value", "version"}…], "next": <key or null>}`, streamed page by
/// page as the service reads them. `next` is the key to pass as `after` for the next page, when a
/// `limit` was reached.
async fn list_table<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Page>, QueryRejection>,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Query(page) =
        query.map_err(|e| Problem::bad_request(format!("bad query: {e}: use limit=N&after=KEY")))?;
    let request = CommandRequest::hgetall_page(&table, page.after, page.limit);
    let (first, rest) = first_frame(handler.execute(request, &caller).await).await;
    if first.status != status::OK {
        return Err(Problem::from_response(&first));
    }
    let limit = page.limit as usize;
    let frames = stream::once(std::future::ready(Ok(first))).chain(rest);
    let body = stream::unfold(
        (Box::pin(frames), 0usize, None::<String>, false),
        move |(mut frames, mut count, mut last, ended)| async move {
            if ended {
                return None;
            }
            let Some(frame) = frames.next().await else {
                // The reply ended before its last frame: cut the body short, so the client cannot take
                // it for the whole table.
                return Some((
                    Err(std::io::Error::other("the table listing ended early")),
                    (frames, count, last, true),
                ));
            };
            let frame = match frame {
                Ok(frame) if frame.status == status::OK => frame,
                Ok(frame) => {
                    let error = std::io::Error::other(format!("the table listing failed: {}", frame.message));
                    return Some((Err(error), (frames, count, last, true)));
                }
                Err(e) => return Some((Err(std::io::Error::other(e)), (frames, count, last, true))),
            };
            let mut chunk = if count == 0 { String::from("{\"items\":[") } else { String::new() };
            let mut versions = frame.versions.iter();
            for pair in &frame.pairs {
                if count > 0 {
                    chunk.push(',');
                }
                count += 1;
                let value = pair.value.as_ref().map_or(Json::Null, to_json);
                let item = json!({ "key": pair.key, "value": value, "version": versions.next().copied().unwrap_or_default() });
                chunk.push_str(&item.to_string());
                last = Some(pair.key.clone());
            }
            let ended = !frame.more;
            if ended {
                let next = if limit > 0 && count == limit { last.clone() } else { None };
                chunk.push_str(&format!("],\"next\":{}}}", json!(next)));
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (frames, count, last, ended)))
        },
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    keys: Vec<String>,
}

/// `POST /mget`: `{"keys": [...]}` → `{"items": [{"key", "value", "version"}…]}` in request order, with
/// `value: null, version: 0` for absent keys.
async fn mget<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Keys { keys } = json_body(&body, r#"{"keys": ["key", …]}"#)?;
    let response = run(&*handler, CommandRequest::hmget(&table, keys.iter()), &caller).await?;
    let items: Vec<Json> = keys
        .iter()
        .zip(response.values.iter().zip(response.versions.iter().chain(std::iter::repeat(&0))))
        .map(|(key, (value, version))| json!({ "key": key, "value": to_json(value), "version": version }))
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

/// `POST /mdel`: `{"keys": [...]}` → `{"items": [{"key", "previous"}…]}`, `previous: null` for keys that
/// did not exist.
async fn mdel<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Keys { keys } = json_body(&body, r#"{"keys": ["key", …]}"#)?;
    let response = run(&*handler, CommandRequest::hmdel(&table, keys.iter()), &caller).await?;
    let items: Vec<Json> = keys
        .iter()
        .zip(response.values.iter())
        .map(|(key, previous)| json!({ "key": key, "previous": (!previous.is_empty()).then(|| to_json(previous)) }))
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Items {
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    key: String,
    value: Json,
}

/// `POST /mset`: `{"items": [{"key", "value"}…]}` → `{"items": [{"key", "version", "previous"}…]}`.
async fn mset<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Items { items } = json_body(&body, r#"{"items": [{"key": "k", "value": "v"}, …]}"#)?;
    let mut pairs = Vec::with_capacity(items.len());
    for (i, Item { key, value }) in items.into_iter().enumerate() {
        let value = from_json(value).map_err(|e| Problem::bad_request(format!("items[{i}].value: {e}")))?;
        pairs.push(Kvpair::new(key, value));
    }
    let keys: Vec<String> = pairs.iter().map(|p| p.key.clone()).collect();
    let response = run(&*handler, CommandRequest::hmset(&table, pairs), &caller).await?;
    let items: Vec<Json> = keys
        .iter()
        .zip(response.values.iter().zip(response.versions.iter().chain(std::iter::repeat(&0))))
        .map(|(key, (previous, version))| {
            let previous = (!previous.is_empty()).then(|| to_json(previous));
            json!({ "key": key, "version": version, "previous": previous })
        })
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

/// `POST` to a topic: a JSON array of values, published as one message; answers
/// `{"subscribers": n, "lagging": m}` (how many subscribers got it, and how many of them are behind).
async fn publish<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, Problem> {
    let topic = name(path)?;
    let data: Vec<Json> = json_body(&body, "a JSON array of values")?;
    let data = data
        .into_iter()
        .enumerate()
        .map(|(i, v)| from_json(v).map_err(|e| Problem::bad_request(format!("[{i}]: {e}"))))
        .collect::<Result<Vec<Value>, Problem>>()?;
    let response = run(&*handler, CommandRequest::publish(&topic, data), &caller).await?;
    let count = |i: usize| match response.values.get(i).and_then(|v| v.value.as_ref()) {
        Some(value::Value::Integer(n)) => *n,
        _ => 0,
    };
    Ok(axum::Json(json!({ "subscribers": count(0), "lagging": count(1) })).into_response())
}

/// `GET` a topic as server-sent events: `subscribed` (`{"id": n}`), then a `message` per message (its
/// values as a JSON array), `missed` (`{"missed": n}`) where this subscriber fell behind, and `end`
/// (`{"status", "detail"}`) when the subscription ends (the server shuts down, for one).
async fn subscribe<H: Handler>(
    State(handler): Shared<H>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let topic = name(path)?;
    if !accepts(&headers, "text/event-stream") {
        return Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "a topic is read as server-sent events: send Accept: text/event-stream",
        ));
    }
    let (first, rest) = first_frame(handler.execute(CommandRequest::subscribe(&topic), &caller).await).await;
    if first.status != status::OK || !first.more {
        return Err(Problem::from_response(&first));
    }
    let id = match first.values.first().and_then(|v| v.value.as_ref()) {
        Some(value::Value::Integer(id)) => *id,
        _ => 0,
    };
    let subscribed = Event::default().event("subscribed").data(json!({ "id": id }).to_string());
    let events = stream::once(std::future::ready(Ok::<_, Infallible>(subscribed))).chain(rest.map(|frame| {
        Ok(match frame {
            Ok(frame) if frame.more && frame.missed > 0 => {
                Event::default().event("missed").data(json!({ "missed": frame.missed }).to_string())
            }
            Ok(frame) if frame.more => {
                let values: Vec<Json> = frame.values.iter().map(to_json).collect();
                Event::default().event("message").data(Json::Array(values).to_string())
            }
            Ok(frame) => Event::default()
                .event("end")
                .data(json!({ "status": frame.status, "detail": frame.message }).to_string()),
            Err(e) => Event::default()
                .event("end")
                .data(json!({ "status": status::INTERNAL_ERROR, "detail": e.to_string() }).to_string()),
        })
    }));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn conditions_parse_as_rfc_9110_writes_them() {
        let parse = |v: &str| Condition::parse(&headers(&[(header::IF_MATCH, v)]), header::IF_MATCH).unwrap();
        assert_eq!(parse("*"), Some(Condition::Any));
        assert_eq!(parse("\"7\""), Some(Condition::Tags { strong: vec![7], weak: vec![] }));
        assert_eq!(parse("\"7\", W/\"8\", \"x\""), Some(Condition::Tags { strong: vec![7], weak: vec![8] }));
        assert!(Condition::parse(&headers(&[(header::IF_MATCH, "7")]), header::IF_MATCH).is_err());
        assert_eq!(Condition::parse(&HeaderMap::new(), header::IF_MATCH).unwrap(), None);
        let weak = parse("W/\"8\"").unwrap();
        assert!(!weak.matches_strongly(Some(8)));
        assert!(weak.matches_weakly(Some(8)));
        assert!(!Condition::Any.matches_strongly(None));
    }

    #[test]
    fn accept_lists_are_read_with_their_q_values() {
        assert!(wants_json(&headers(&[(header::ACCEPT, "text/html, application/json;q=0.9")])));
        assert!(!wants_json(&headers(&[(header::ACCEPT, "application/json; q=0")])));
        assert!(!wants_json(&headers(&[(header::ACCEPT, "*/*")])));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("a b/ä"), "a%20b%2F%C3%A4");
    }
}
