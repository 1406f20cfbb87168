//! The REST API (docs/HTTP.md, "REST"): keys as resources whose ETag is their version, so HTTP's
//! conditional requests (`If-Match`, `If-None-Match`) are qkv's conditional writes; tables listed page
//! by page as streamed JSON; topics published to with POST and subscribed to as server-sent events.
//!
//! Every handler builds a [`CommandRequest`] and hands it to the service's [`Handler`], like every
//! other front door: limits, identity and dispatch are the service's, not this module's.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value as Json, json};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{self, JsonValue};
use super::problem::{Problem, Verb};
use super::{Run, complete, first_frame, unstalled};
use crate::pb::json::{from_json_text, to_json};
use crate::pb::{CommandRequest, CommandResponse, Kvpair, Value, status, value};
use crate::service::{Caller, Handler};
use crate::transport::Limits;

/// The header of a ping's answer that names the client's certificate (mutual TLS).
pub const IDENTITY_HEADER: &str = "qkv-identity";

/// The REST routes, on `handler`, and `/v1/openapi.json`: the document generated from the routes
/// themselves, so that it cannot leave one out.
pub fn router<H: Handler>(handler: H, limits: &Limits) -> Router {
    let door = Door {
        handler: Arc::new(handler),
        reply_timeout: limits.reply_timeout,
        max_answer: limits.max_frame_len,
    };
    let (router, api) = empty_names(api()).with_state(door).split_for_parts();
    let document = openapi::document(&api);
    router
        .route("/v1/openapi.json", get(move || std::future::ready(axum::Json(document.clone()))))
        .fallback(|| async {
            Problem::new(StatusCode::NOT_FOUND, "no such resource: see /v1/openapi.json for the API")
        })
        .layer(axum::middleware::from_fn(well_formed))
}

/// Refuses what the routes would misread: a path with a `%` that two hex digits do not follow (the
/// path extractor would take it as it is, so `/keys/%zz` and `/keys/%25zz` would name the same key),
/// a query on a resource that takes none (a misspelt `?dry_run=1` on a DELETE would otherwise delete),
/// a gRPC content type the gRPC door does not serve (`super::is_grpc`), and a body in a content coding (gzip, say), which would be stored as the coded bytes (415, RFC
/// 9110, 8.4.1).
async fn well_formed(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(query) = request.uri().query().filter(|q| !q.is_empty())
        && !takes_a_query(request.uri().path())
    {
        return Problem::bad_request(format!(
            "this resource takes no query parameters (got {query:?}): only a table's listing does, limit and after"
        ))
        .into_response();
    }
    let conditional =
        [header::IF_MATCH, header::IF_NONE_MATCH].into_iter().find(|h| request.headers().contains_key(h));
    if let Some(condition) = conditional
        && !takes_conditions(request.uri().path())
    {
        return Problem::bad_request(format!(
            "this resource takes no {condition} header: conditions apply to one key (/v1/tables/{{table}}/keys/{{key}}); a batch or a listing would otherwise run unconditionally"
        ))
        .into_response();
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if let Some(media) = content_type.and_then(super::media_type)
        && media.starts_with("application/grpc")
    {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "gRPC is served as application/grpc or application/grpc+proto (protobuf), not {media}: gRPC-Web needs a proxy that translates it (Envoy, say)"
            ),
        )
        .into_response();
    }
    let path = request.uri().path().as_bytes();
    let bad = path.iter().enumerate().any(|(i, &b)| {
        b == b'%' && !(path.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)))
    });
    if bad {
        return Problem::bad_request(
            "the path has a % not followed by two hex digits: write a % in a name as %25",
        )
        .into_response();
    }
    let coded = request.headers().get_all(header::CONTENT_ENCODING).iter().any(|coding| {
        coding.to_str().map_or(true, |c| c.split(',').any(|c| !c.trim().eq_ignore_ascii_case("identity")))
    });
    if coded {
        return Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the server takes request bodies without a content coding: send them as they are (no Content-Encoding)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a query string on `path` is for its route to read: the API's resources take none but a
/// table's listing (`/v1/tables/{table}`, whose name has no `/` once encoded); paths outside the
/// resources (the OpenAPI document, unknown paths) are left to their routes.
fn takes_a_query(path: &str) -> bool {
    let resource = path.starts_with("/v1/tables/") || path.starts_with("/v1/topics/") || path == "/v1/ping";
    let listing = path.strip_prefix("/v1/tables/").is_some_and(|table| !table.contains('/'));
    !resource || listing
}

/// Whether `If-Match` and `If-None-Match` on `path` are for its route to read: of the API's resources
/// only a key's (`/v1/tables/{table}/keys/{key}`, whose names have no `/` once encoded); paths outside
/// the resources are left to their routes.
fn takes_conditions(path: &str) -> bool {
    let resource = path.starts_with("/v1/tables/") || path.starts_with("/v1/topics/") || path == "/v1/ping";
    let key = path
        .strip_prefix("/v1/tables/")
        .is_some_and(|rest| matches!(rest.split('/').collect::<Vec<_>>()[..], [_, "keys", _]));
    !resource || key
}

/// The answer to a method a route does not take (axum adds the `Allow` header): set on the web
/// listener's whole router, the browser routes' included, once they are merged.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this resource does not take that method: see /v1/openapi.json",
    )
}

/// The documented routes: each handler's `#[utoipa::path]` gives both its route and its operation.
pub fn api() -> OpenApiRouter<Door> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(get_key, put_key, delete_key))
        .routes(routes!(list_table))
        .routes(routes!(mget))
        .routes(routes!(mset))
        .routes(routes!(mdel))
        .routes(routes!(subscribe, publish))
        .routes(routes!(ping))
}

/// The routes of empty names, the same handlers: a path parameter matches an empty segment inside a
/// path (`/v1/tables//keys/k` is key `k` of the empty table) but never at its end, so the empty key of a
/// table is `/v1/tables/{table}/keys/`, the empty table `/v1/tables/` and the empty topic
/// `/v1/topics/`. Left out of the OpenAPI document, which cannot say "this parameter may be empty".
fn empty_names(router: OpenApiRouter<Door>) -> OpenApiRouter<Door> {
    type Named = Result<Path<String>, PathRejection>;
    let key = |table: Named| table.map(|Path(table)| Path((table, String::new())));
    let empty = || -> Named { Ok(Path(String::new())) };
    router
        .route(
            "/v1/tables/{table}/keys/",
            get(move |s, c, table: Named, h| get_key(s, c, key(table), h))
                .put(move |s, c, table: Named, u, h, b| put_key(s, c, key(table), u, h, b))
                .delete(move |s, c, table: Named, h| delete_key(s, c, key(table), h)),
        )
        .route("/v1/tables/", get(move |s, c, q, r| list_table(s, c, empty(), q, r)))
        .route(
            "/v1/topics/",
            get(move |s, c, m, h| subscribe(s, c, empty(), m, h))
                .post(move |s, c, h, b| publish(s, c, empty(), h, b)),
        )
}

/// The service behind the REST handlers, one type whatever the handler (so that the handlers, and the
/// OpenAPI document generated from them, are not generic), and how long an answer may wait for its
/// client to read on.
#[derive(Clone)]
pub struct Door {
    handler: Arc<dyn Run>,
    reply_timeout: Duration,
    /// The most bytes one answer may carry, gathered whole (`web::complete`).
    max_answer: usize,
}

impl Run for Door {
    fn run(
        &self,
        request: CommandRequest,
        caller: Caller,
    ) -> futures_util::future::BoxFuture<'static, crate::service::Reply> {
        self.handler.run(request, caller)
    }

    fn answered_at_door(&self, command: usize, status: u32) {
        self.handler.answered_at_door(command, status);
    }
}

impl Door {
    /// `request`'s whole answer, for a handler that answers once (`web::complete`, within the most
    /// bytes one answer may carry unless it is a write's).
    async fn answer(&self, request: CommandRequest, caller: &Caller) -> CommandResponse {
        let max_answer = super::answer_limit(&request, self.max_answer);
        complete(self.run(request, caller.clone()).await, max_answer).await
    }
}

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
        let (mut tags, mut any) = (0, false);
        for value in values {
            // RFC 9110: `*`, or a comma-separated list of entity tags, each `"opaque"` or `W/"opaque"`,
            // where the opaque part may hold commas.
            let mut rest = value.to_str().map_err(|_| bad())?;
            loop {
                rest = rest.trim_start_matches([' ', '\t', ',']);
                if rest.is_empty() {
                    break;
                }
                tags += 1;
                let after = if let Some(after) = rest.strip_prefix('*') {
                    any = true;
                    after
                } else {
                    let (list, quoted) = match rest.strip_prefix("W/") {
                        Some(quoted) => (&mut weak, quoted),
                        None => (&mut strong, rest),
                    };
                    let opaque = quoted.strip_prefix('"').ok_or_else(bad)?;
                    let end = opaque.find('"').ok_or_else(bad)?;
                    // An ETag this server never made matches nothing (RFC 9110: it is not an error), and
                    // comparison is character by character: "+42" and "042" are not "42". Versions start
                    // above 0: "0" is one of those, not the protocol's "absent".
                    let inner = &opaque[..end];
                    if let Ok(version @ 1..) = inner.parse::<u64>()
                        && version.to_string() == inner
                    {
                        list.push(version);
                    }
                    &opaque[end + 1..]
                };
                rest = after.trim_start_matches([' ', '\t']);
                if !rest.is_empty() && !rest.starts_with(',') {
                    return Err(bad());
                }
            }
        }
        match (tags, any) {
            (0, _) => return Err(bad()),
            (1, true) => return Ok(Some(Condition::Any)),
            // `*` stands alone.
            (_, true) => return Err(bad()),
            _ => {}
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

/// Whether `value` is answered as JSON rather than as a body of its own (text, octets; a number or a
/// boolean is JSON either way), by the request's `Accept` (RFC 9110, 12.5.1): each of the two media
/// types takes the q of the most specific range that matches it (`type/subtype`, then `type/*`, then
/// `*/*`); JSON is chosen when its q is higher, or equal with a more specific range, or equal and as
/// specific but listed first (`application/json, text/plain, */*`, as some HTTP libraries send, is
/// JSON). Without `Accept`, when neither is acceptable, and on a tie, the value's own form.
fn wants_json(headers: &HeaderMap, value: &Value) -> bool {
    let own = match &value.value {
        Some(value::Value::String(_)) => "text/plain",
        Some(value::Value::Binary(_)) => "application/octet-stream",
        _ => return false,
    };
    match (acceptance(headers, "application/json"), acceptance(headers, own)) {
        (Some(json), Some(own)) => json.q > 0.0 && json.preferred_to(&own),
        (Some(json), None) => json.q > 0.0,
        (None, _) => false,
    }
}

/// How a request's `Accept` takes one media type: the most specific range that matches it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Acceptance {
    q: f32,
    /// 2 for `type/subtype`, 1 for `type/*`, 0 for `*/*`.
    specificity: u8,
    /// Where the range is listed: earlier is preferred among equals.
    position: usize,
}

impl Acceptance {
    fn preferred_to(&self, other: &Acceptance) -> bool {
        (self.q, self.specificity, std::cmp::Reverse(self.position))
            > (other.q, other.specificity, std::cmp::Reverse(other.position))
    }
}

/// How `Accept` takes `media` (`type/subtype`): `None` when it has no range that matches it. A range's
/// parameters other than `q` are not weighed; a `q` that is not a number counts as 1.
fn acceptance(headers: &HeaderMap, media: &str) -> Option<Acceptance> {
    let (kind, _) = media.split_once('/')?;
    let ranges =
        headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let mut best: Option<Acceptance> = None;
    for (position, range) in ranges.enumerate() {
        let mut parts = range.split(';').map(str::trim);
        let listed = parts.next().unwrap_or_default().to_ascii_lowercase();
        let specificity = match listed.split_once('/') {
            _ if listed == media => 2,
            Some((listed_kind, "*")) if listed_kind == kind => 1,
            _ if listed == "*/*" => 0,
            _ => continue,
        };
        let q = parts.find_map(q_value).unwrap_or(1.0);
        if best.is_none_or(|best| specificity > best.specificity) {
            best = Some(Acceptance { q, specificity, position });
        }
    }
    best
}

/// The request's Accept header lists `wanted` itself with a q above 0.
fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    acceptance(headers, wanted).is_some_and(|a| a.specificity == 2 && a.q > 0.0)
}

/// A range's `q` parameter, if this is one: its weight, 1 if it is not a number.
fn q_value(parameter: &str) -> Option<f32> {
    let q = parameter.replace(' ', "");
    let q = q.strip_prefix("q=").or_else(|| q.strip_prefix("Q="))?;
    Some(q.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)).unwrap_or(1.0))
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
    // The ETag names the key's version, which each representation shares: caches must keep them apart.
    ([(header::CONTENT_TYPE, content_type), (header::VARY, "accept")], body).into_response()
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
    // Text is read as UTF-8: a body that says it is in another charset is refused, not misread.
    if matches!(media.as_str(), "text/plain" | "application/json") && !charset_is_utf8(content_type) {
        return Err(unsupported());
    }
    match media.as_str() {
        "text/plain" => String::from_utf8(body.to_vec()).map(Value::from).map_err(|_| {
            Problem::bad_request("a text/plain value must be UTF-8: send binary as application/octet-stream")
        }),
        "application/octet-stream" => Ok(Value::from(body)),
        "application/json" => {
            let text = std::str::from_utf8(&body)
                .map_err(|_| Problem::bad_request("the body is not JSON: it is not UTF-8"))?;
            from_json_text(text).map_err(Problem::bad_request)
        }
        _ => Err(unsupported()),
    }
}

/// Whether a content type's charset, if it names one, is UTF-8 (JSON is UTF-8 by RFC 8259; a
/// `charset=utf-16` JSON body was read as UTF-8). Parameter names are case-insensitive (RFC 9110,
/// 5.6.6).
fn charset_is_utf8(content_type: &str) -> bool {
    let charset = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, c)| c.trim().trim_matches('"'));
    charset.is_none_or(|c| c.eq_ignore_ascii_case("utf-8"))
}

/// A JSON request body. Its content type must say so: a browser sends a form or text/plain to another
/// origin without asking first, never application/json, so this also keeps other origins' pages from
/// writing.
fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    expected: &str,
) -> Result<T, Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if super::media_type(content_type).as_deref() != Some("application/json")
        || !charset_is_utf8(content_type)
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the body must be application/json ({expected}), not {content_type:?}"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body must be {expected}: {e}")))
}

/// Runs `request` and returns its complete answer when it succeeded, the problem otherwise.
async fn run(door: &Door, request: CommandRequest, caller: &Caller) -> Result<CommandResponse, Problem> {
    let response = door.answer(request, caller).await;
    if response.status == status::OK { Ok(response) } else { Err(Problem::from_response(&response)) }
}

/// The key's current value and version, or `None` when absent.
async fn current(
    door: &Door,
    table: &str,
    key: &str,
    caller: &Caller,
) -> Result<Option<(Value, u64)>, Problem> {
    let response = door.answer(CommandRequest::hget(table, key), caller).await;
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
#[utoipa::path(
    get,
    path = "/v1/tables/{table}/keys/{key}",
    tag = "keys",
    summary = "Read a key (HEAD: whether it exists, and its ETag)",
    params(
        ("table" = String, Path, description = "The table (percent-encoded)"),
        ("key" = String, Path, description = "The key (percent-encoded; a / in it as %2F)"),
        ("Accept" = Option<String>, Header, description = "application/json: the value as JSON whatever its kind"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag, a list of them or *: 304 when the key's matches", pattern = r#"^(\*|(W/)?"[^"]*"([ \t]*,[ \t]*(W/)?"[^"]*")*)$"#),
        ("If-Match" = Option<String>, Header, description = "An ETag, a list of them or *: 412 unless the key's matches", pattern = r#"^(\*|(W/)?"[^"]*"([ \t]*,[ \t]*(W/)?"[^"]*")*)$"#),
    ),
    responses(
        (status = 200, description = "The value: a string as text/plain, binary as application/octet-stream, numbers and booleans (or anything, with Accept: application/json) as JSON", headers(("ETag" = String, description = "The key's version, quoted")),
            content((String = "text/plain"), (openapi::Binary = "application/octet-stream"), (JsonValue = "application/json"))),
        (status = 304, description = "Not modified: If-None-Match named the key's ETag"),
        (status = 400, description = "A bad name or header", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A name over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match named no ETag of the key (or the key does not exist)", headers(("ETag" = String, description = "The key's current version, quoted, when the key exists")), body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn get_key(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (table, key) = names(path)?;
    let only_if = Condition::parse(&headers, header::IF_MATCH)?;
    let unless = Condition::parse(&headers, header::IF_NONE_MATCH)?;
    let response = door.answer(CommandRequest::hget(&table, &key), &caller).await;
    // If-Match first, even on a missing key (RFC 9110, 13.2.2): a read of another version is a 412. A
    // failure (5xx, 413) is not a missing key, and is answered as it is.
    if let Some(only_if) = only_if
        && matches!(response.status, status::OK | status::NOT_FOUND)
    {
        let version = response.versions.first().copied().filter(|&v| v > 0 && response.status == status::OK);
        if !only_if.matches_strongly(version) {
            let value = response.values.into_iter().next().unwrap_or_default();
            return Err(Problem::precondition_failed(Verb::Read, version.map(|version| (value, version))));
        }
    }
    if response.status != status::OK {
        return Err(Problem::from_response(&response));
    }
    let version = response.versions.first().copied().unwrap_or_default();
    let value = response.values.into_iter().next().unwrap_or_default();
    let mut answer = representation(&value, wants_json(&headers, &value));
    if unless.is_some_and(|c| c.matches_weakly(Some(version))) {
        // Without the body, but with the length the 200 would have had: a Content-Length a 304 carries
        // must be that (RFC 9110, 8.6), and HTTP/2 would otherwise say 0.
        let length = axum::body::HttpBody::size_hint(answer.body()).exact().unwrap_or_default();
        let headers = [
            (header::ETAG, etag(version)),
            (header::VARY, HeaderValue::from_static("accept")),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
        ];
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    answer.headers_mut().insert(header::ETAG, etag(version));
    Ok(answer)
}

/// What a `PUT` or `DELETE` expects of the key's version, from its conditional headers: `None` for an
/// unconditional write, `Some(0)` for "absent".
async fn expected_version(
    verb: Verb,
    door: &Door,
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
            let current = current(door, table, key, caller).await?;
            let version = current.as_ref().map(|(_, version)| *version);
            let holds = if_match.is_none_or(|c| c.matches_strongly(version))
                && if_none_match.is_none_or(|c| !c.matches_weakly(version));
            if holds {
                return Ok(Some(version.unwrap_or(0)));
            }
            // Answered here, without the write (which could only fail): counted as the write's 409,
            // beside the read that decided it.
            let write = match verb {
                Verb::Delete => CommandRequest::hdel(table, key),
                _ => CommandRequest::hset_expecting(table, key, Value::default(), Some(0)),
            };
            door.answered_at_door(write.command_index(), status::CONFLICT);
            Err(Problem::precondition_failed(verb, current))
        }
    }
}

/// An error answer to a write; a 409 from a conditional write is HTTP's 412, with the key's current
/// value and version.
fn write_failed(verb: Verb, response: CommandResponse, conditional: bool) -> Problem {
    if conditional && response.status == status::CONFLICT {
        Problem::precondition_failed(verb, current_of(response))
    } else {
        Problem::from_response(&response)
    }
}

/// `PUT` a key: 201 when it was created, 200 when it replaced a value; the new ETag, and a JSON body
/// with the version and the value replaced.
#[utoipa::path(
    put,
    path = "/v1/tables/{table}/keys/{key}",
    tag = "keys",
    summary = "Write a key, unconditionally or if its version is as expected",
    params(
        ("table" = String, Path, description = "The table"),
        ("key" = String, Path, description = "The key"),
        ("If-Match" = Option<String>, Header, description = "Write only if the key's ETag is this one (or, with *, if the key exists)", pattern = r#"^(\*|(W/)?"[^"]*"([ \t]*,[ \t]*(W/)?"[^"]*")*)$"#),
        ("If-None-Match" = Option<String>, Header, description = "*: write only if the key does not exist", pattern = r#"^(\*|(W/)?"[^"]*"([ \t]*,[ \t]*(W/)?"[^"]*")*)$"#),
    ),
    request_body(description = "The value, by its content type", content(
        (String = "text/plain"), (openapi::Binary = "application/octet-stream"), (JsonValue = "application/json"))),
    responses(
        (status = 200, description = "Replaced a value", body = Written, headers(("ETag" = String, description = "The new version"))),
        (status = 201, description = "Created the key", body = Written, headers(("ETag" = String), ("Location" = String))),
        (status = 400, description = "Not a value of its content type", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "The condition does not hold; the key's current value and version come with it", headers(("ETag" = String, description = "The key's current version, quoted, when the key exists")), body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A name or value over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "A content type that is not a value's", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The store is full", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn put_key(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let (table, key) = names(path)?;
    let value = value_of(&headers, body)?;
    let expected = expected_version(Verb::Write, &door, &caller, &table, &key, &headers).await?;
    let request = CommandRequest::hset_expecting(&table, &key, value, expected);
    let response = door.answer(request, &caller).await;
    if response.status != status::OK {
        return Err(write_failed(Verb::Write, response, expected.is_some()));
    }
    let version = response.versions.first().copied().unwrap_or_default();
    let previous = response.values.into_iter().next().filter(|v| !v.is_empty());
    let created = previous.is_none();
    let body = Written { version, previous: previous.as_ref().map(to_json) };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut answer = (status, axum::Json(body)).into_response();
    answer.headers_mut().insert(header::ETAG, etag(version));
    if created {
        // The path as requested: a reference to this very resource, encoded as the client encoded it.
        if let Ok(location) = HeaderValue::from_str(uri.path()) {
            answer.headers_mut().insert(header::LOCATION, location);
        }
    }
    Ok(answer)
}

/// `DELETE` a key: 200 with the value it held, 404 when there was none, 412 when `If-Match` fails.
#[utoipa::path(
    delete,
    path = "/v1/tables/{table}/keys/{key}",
    tag = "keys",
    summary = "Delete a key, unconditionally or if its version is as expected",
    params(
        ("table" = String, Path, description = "The table"),
        ("key" = String, Path, description = "The key"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the key's ETag is this one", pattern = r#"^(\*|(W/)?"[^"]*"([ \t]*,[ \t]*(W/)?"[^"]*")*)$"#),
        ("If-None-Match" = Option<String>, Header, description = "Delete only if the key's ETag is none of these (*: only if the key does not exist, which deletes nothing)", pattern = r#"^(\*|(W/)?"[^"]*"([ \t]*,[ \t]*(W/)?"[^"]*")*)$"#),
        ("Accept" = Option<String>, Header, description = "application/json: the old value as JSON"),
    ),
    responses(
        (status = 200, description = "Deleted; the value it held, represented as GET would",
            content((String = "text/plain"), (openapi::Binary = "application/octet-stream"), (JsonValue = "application/json"))),
        (status = 400, description = "A bad name or header", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A name over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "The condition does not hold", headers(("ETag" = String, description = "The key's current version, quoted, when the key exists")), body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn delete_key(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (table, key) = names(path)?;
    let expected = expected_version(Verb::Delete, &door, &caller, &table, &key, &headers).await?;
    let request = match expected {
        Some(version) => CommandRequest::hdel_if_version(&table, &key, version),
        None => CommandRequest::hdel(&table, &key),
    };
    let response = door.answer(request, &caller).await;
    if response.status != status::OK {
        return Err(write_failed(Verb::Delete, response, expected.is_some()));
    }
    match response.values.into_iter().next().filter(|v| !v.is_empty()) {
        Some(previous) => Ok(representation(&previous, wants_json(&headers, &previous))),
        // The service deleted nothing (its Hdel answers 200 either way): this 404 is the HTTP
        // layer's, so it carries no qkv_status.
        None => {
            Err(Problem::new(StatusCode::NOT_FOUND, format!("key {key:?} of table {table:?} does not exist")))
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter (`limt=2`) is refused rather than ignored, as a misspelt JSON member is.
#[serde(deny_unknown_fields)]
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
#[utoipa::path(
    get,
    path = "/v1/tables/{table}",
    tag = "tables",
    summary = "List a table's keys, values and versions in key order, streamed; page with limit and after",
    params(("table" = String, Path, description = "The table"), Page),
    responses(
        (status = 200, description = "The entries in key order (by UTF-8 bytes). A body cut short (no closing bracket) means the listing failed part way", body = TablePage),
        (status = 400, description = "A bad name or query", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A name over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn list_table(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Page>, QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Query(page) =
        query.map_err(|e| Problem::bad_request(format!("bad query: {e}: use limit=N&after=KEY")))?;
    // Form decoding replaces what is not UTF-8 with U+FFFD, which would start after another key.
    let utf8 = |value: &str| percent_encoding::percent_decode_str(value).decode_utf8().is_ok();
    if !raw.iter().flat_map(|raw| raw.split('&')).all(utf8) {
        return Err(Problem::bad_request("a query parameter is not UTF-8 once percent-decoded"));
    }
    let request = CommandRequest::hgetall_page(&table, page.after, page.limit);
    let (first, rest) = first_frame(door.run(request, caller.clone()).await).await;
    if first.status != status::OK {
        return Err(Problem::from_response(&first));
    }
    let limit = page.limit as usize;
    // A client that stops reading must not hold the scan (and its slot) for ever.
    let frames =
        unstalled(Box::pin(stream::once(std::future::ready(Ok(first))).chain(rest)), door.reply_timeout);
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
            let mut chunk = String::new();
            let mut versions = frame.versions.iter();
            for pair in &frame.pairs {
                if count > 0 {
                    chunk.push(',');
                }
                count += 1;
                let value = pair.value.as_ref().map_or(Json::Null, to_json);
                let version = versions.next().copied().unwrap_or_default();
                let entry = Entry { key: pair.key.clone(), value, version };
                chunk.push_str(&serde_json::to_string(&entry).unwrap_or_default());
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
    let opening = stream::once(std::future::ready(Ok(Bytes::from_static(b"{\"items\":["))));
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(opening.chain(body))).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Keys {
    keys: Vec<String>,
}

/// A key with its value and version (`null` and 0 for a key that does not exist).
#[derive(Debug, Serialize, ToSchema)]
struct Entry {
    key: String,
    #[schema(value_type = Option<JsonValue>)]
    value: Json,
    version: u64,
}

/// A page of a table.
#[derive(Debug, Serialize, ToSchema)]
struct TablePage {
    items: Vec<Entry>,
    /// The last key, to pass as `after` for the next page, when `limit` entries were listed.
    next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Entries {
    items: Vec<Entry>,
}

/// What a write did: the key's new version, and the value it replaced (`null`: none).
#[derive(Debug, Serialize, ToSchema)]
struct Written {
    version: u64,
    #[schema(value_type = Option<JsonValue>)]
    previous: Option<Json>,
}

#[derive(Debug, Serialize, ToSchema)]
struct WrittenItem {
    key: String,
    version: u64,
    #[schema(value_type = Option<JsonValue>)]
    previous: Option<Json>,
}

#[derive(Debug, Serialize, ToSchema)]
struct WrittenItems {
    items: Vec<WrittenItem>,
}

/// A deleted key and the value it held (`null`: none).
#[derive(Debug, Serialize, ToSchema)]
struct DeletedItem {
    key: String,
    #[schema(value_type = Option<JsonValue>)]
    previous: Option<Json>,
}

#[derive(Debug, Serialize, ToSchema)]
struct DeletedItems {
    items: Vec<DeletedItem>,
}

/// How many subscribers got a message, and how many of them are behind.
#[derive(Debug, Serialize, ToSchema)]
struct Published {
    subscribers: i64,
    lagging: i64,
}

/// `POST /mget`: `{"keys": [...]}` → `{"items": [{"key", "value", "version"}…]}` in request order, with
/// `value: null, version: 0` for absent keys.
#[utoipa::path(
    post,
    path = "/v1/tables/{table}/mget",
    tag = "tables",
    summary = "Read many keys of a table in one request",
    params(("table" = String, Path, description = "The table")),
    request_body = Keys,
    responses(
        (status = 200, description = "One entry per key, in request order", body = Entries),
        (status = 400, description = "Not the body described", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A name over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn mget(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Keys { keys } = json_body(&headers, &body, r#"{"keys": ["key", …]}"#)?;
    let response = run(&door, CommandRequest::hmget(&table, keys.iter()), &caller).await?;
    let items: Vec<_> = keys
        .iter()
        .zip(response.values.iter().zip(response.versions.iter().chain(std::iter::repeat(&0))))
        .map(|(key, (value, version))| Entry { key: key.clone(), value: to_json(value), version: *version })
        .collect();
    Ok(axum::Json(Entries { items }).into_response())
}

/// `POST /mdel`: `{"keys": [...]}` → `{"items": [{"key", "previous"}…]}`, `previous: null` for keys that
/// did not exist.
#[utoipa::path(
    post,
    path = "/v1/tables/{table}/mdel",
    tag = "tables",
    summary = "Delete many keys of a table in one request",
    params(("table" = String, Path, description = "The table")),
    request_body = Keys,
    responses(
        (status = 200, description = "One item per key, in request order", body = DeletedItems),
        (status = 400, description = "Not the body described", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A name over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn mdel(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Keys { keys } = json_body(&headers, &body, r#"{"keys": ["key", …]}"#)?;
    let response = run(&door, CommandRequest::hmdel(&table, keys.iter()), &caller).await?;
    let items: Vec<_> = keys
        .iter()
        .zip(response.values.iter())
        .map(|(key, previous)| DeletedItem {
            key: key.clone(),
            previous: (!previous.is_empty()).then(|| to_json(previous)),
        })
        .collect();
    Ok(axum::Json(DeletedItems { items }).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Items {
    items: Vec<Item>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Item {
    key: String,
    /// Read from its text (`from_json_text`), so that an integer stays one.
    #[schema(value_type = JsonValue)]
    value: Box<RawValue>,
}

/// `POST /mset`: `{"items": [{"key", "value"}…]}` → `{"items": [{"key", "version", "previous"}…]}`.
#[utoipa::path(
    post,
    path = "/v1/tables/{table}/mset",
    tag = "tables",
    summary = "Write many keys of a table in one request (unconditionally)",
    params(("table" = String, Path, description = "The table")),
    request_body = Items,
    responses(
        (status = 200, description = "One item per key, in request order", body = WrittenItems),
        (status = 400, description = "Not the body described", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Names or values over the server's limits; nothing written", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The store is full; nothing written", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn mset(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let table = name(path)?;
    let Items { items } = json_body(&headers, &body, r#"{"items": [{"key": "k", "value": "v"}, …]}"#)?;
    let mut pairs = Vec::with_capacity(items.len());
    for (i, Item { key, value }) in items.into_iter().enumerate() {
        let value = from_json_text(value.get())
            .map_err(|e| Problem::bad_request(format!("items[{i}].value: {e}")))?;
        pairs.push(Kvpair::new(key, value));
    }
    let keys: Vec<String> = pairs.iter().map(|p| p.key.clone()).collect();
    let response = run(&door, CommandRequest::hmset(&table, pairs), &caller).await?;
    let items: Vec<_> = keys
        .iter()
        .zip(response.values.iter().zip(response.versions.iter().chain(std::iter::repeat(&0))))
        .map(|(key, (previous, version))| {
            let previous = (!previous.is_empty()).then(|| to_json(previous));
            WrittenItem { key: key.clone(), version: *version, previous }
        })
        .collect();
    Ok(axum::Json(WrittenItems { items }).into_response())
}

/// `POST` to a topic: a JSON array of values, published as one message; answers
/// `{"subscribers": n, "lagging": m}` (how many subscribers got it, and how many of them are behind).
#[utoipa::path(
    post,
    path = "/v1/topics/{topic}",
    tag = "topics",
    summary = "Publish a message: a JSON array of values",
    params(("topic" = String, Path, description = "The topic")),
    request_body(content = Vec<JsonValue>, content_type = "application/json"),
    responses(
        (status = 200, description = "Published", body = Published),
        (status = 400, description = "Not a JSON array of values", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A topic name (or, for a publish, the message) over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn publish(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let topic = name(path)?;
    let data: Vec<Box<RawValue>> = json_body(&headers, &body, "a JSON array of values")?;
    let data = data
        .into_iter()
        .enumerate()
        .map(|(i, v)| from_json_text(v.get()).map_err(|e| Problem::bad_request(format!("[{i}]: {e}"))))
        .collect::<Result<Vec<Value>, Problem>>()?;
    let response = run(&door, CommandRequest::publish(&topic, data), &caller).await?;
    let count = |i: usize| match response.values.get(i).and_then(|v| v.value.as_ref()) {
        Some(value::Value::Integer(n)) => *n,
        _ => 0,
    };
    Ok(axum::Json(Published { subscribers: count(0), lagging: count(1) }).into_response())
}

/// `GET` a topic as server-sent events: `subscribed` (`{"id": n}`), then a `message` per message (its
/// values as a JSON array), `missed` (`{"missed": n}`) where this subscriber fell behind, and `end`
/// (`{"status", "detail"}`) when the subscription ends (the server shuts down, for one).
#[utoipa::path(
    get,
    path = "/v1/topics/{topic}",
    tag = "topics",
    summary = "Subscribe, as server-sent events",
    params(
        ("topic" = String, Path, description = "The topic"),
        ("Accept" = String, Header, description = "text/event-stream", pattern = "text/event-stream"),
    ),
    responses(
        (status = 200, description = "Events: subscribed {\"id\"}, message [values], missed {\"missed\"}, end {\"status\", \"detail\"}", content_type = "text/event-stream", body = openapi::ServerSentEvent),
        (status = 400, description = "A bad name", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "A topic name (or, for a publish, the message) over the server's limits", body = openapi::Problem, content_type = "application/problem+json"),
        (status = 406, description = "Accept does not list text/event-stream", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn subscribe(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let topic = name(path)?;
    if !accepts(&headers, "text/event-stream") {
        return Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "a topic is read as server-sent events: send Accept: text/event-stream",
        ));
    }
    // HEAD says what a GET would answer without subscribing (which would register, and count, a
    // subscription for nothing). A body of unknown length, as the GET's endless one: an empty body
    // would be announced as `content-length: 0`, which a GET does not send (RFC 9110, 8.6).
    if method == axum::http::Method::HEAD {
        let unknown_length = Body::from_stream(stream::empty::<Result<Bytes, Infallible>>());
        let headers = [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")];
        return Ok((headers, unknown_length).into_response());
    }
    let (first, rest) = first_frame(door.run(CommandRequest::subscribe(&topic), caller.clone()).await).await;
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

/// `POST /v1/ping`: the body echoed back, and who the server takes the client for (`qkv-identity`,
/// with mutual TLS).
#[utoipa::path(
    post,
    path = "/v1/ping",
    tag = "server",
    summary = "Echo the body: a round trip through the service",
    request_body(content = openapi::Binary, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The body, echoed", content_type = "application/octet-stream", body = openapi::Binary,
            headers(("qkv-identity" = String, description = "The subject of the client's certificate, with mutual TLS"))),
        (status = 413, description = "A payload over what one answer can carry", body = openapi::Problem, content_type = "application/problem+json"),
    )
)]
async fn ping(
    State(door): State<Door>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, Problem> {
    let response = run(&door, CommandRequest::ping(body), &caller).await?;
    let mut values = response.values.into_iter();
    let payload = match values.next().and_then(|v| v.value) {
        Some(value::Value::Binary(payload)) => payload,
        _ => Bytes::new(),
    };
    let mut answer = ([(header::CONTENT_TYPE, "application/octet-stream")], payload).into_response();
    if let Some(value::Value::String(identity)) = values.next().and_then(|v| v.value)
        && let Ok(identity) = HeaderValue::from_str(&identity)
    {
        answer.headers_mut().insert(IDENTITY_HEADER, identity);
    }
    Ok(answer)
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
    fn accept_lists_are_weighed_by_q_then_specificity_then_order() {
        let text = Value::from("Ada");
        let bytes = Value { value: Some(value::Value::Binary(vec![0, 255].into())) };
        let json = |accept: &str, value: &Value| wants_json(&headers(&[(header::ACCEPT, accept)]), value);
        assert!(json("text/html, application/json;q=0.9", &text), "text/plain is not acceptable");
        assert!(!json("application/json; q=0", &text));
        assert!(!json("*/*", &text), "a tie: the value's own form");
        assert!(!wants_json(&HeaderMap::new(), &text));
        assert!(json("application/json, text/plain, */*", &text), "listed first");
        assert!(!json("text/plain, application/json", &text));
        assert!(!json("text/plain;q=0.5, application/json;q=0.4", &text), "the higher q");
        assert!(json("text/plain;q=0.4, application/json;q=0.5", &text));
        assert!(!json("application/octet-stream, application/json;q=0.1", &bytes));
        assert!(
            json("application/octet-stream, application/json;q=0.1", &text),
            "text/plain is not acceptable"
        );
        assert!(json("application/json, */*;q=0.8", &bytes), "more specific, higher q");
        assert!(!json("application/*;q=0.5, application/octet-stream;q=0.9", &bytes));
        assert!(!json("text/*, application/json;q=0.2", &text), "text/* takes text/plain");
        assert!(!json("APPLICATION/OCTET-STREAM, application/json;q=0.5", &bytes), "case-blind");
        assert!(!json("application/json", &Value::from(7)), "a number is JSON either way");
        assert!(json("application/json;q=bad, text/plain;q=0.9", &text), "a q that is no number counts as 1");
        // The most specific range decides, even when a wildcard would allow more.
        assert!(json("text/plain;q=0, */*", &text));
        assert!(!accepts(&headers(&[(header::ACCEPT, "*/*")]), "text/event-stream"));
        assert!(accepts(&headers(&[(header::ACCEPT, "text/event-stream")]), "text/event-stream"));
        assert!(!accepts(&headers(&[(header::ACCEPT, "text/event-stream;q=0")]), "text/event-stream"));
    }
}
