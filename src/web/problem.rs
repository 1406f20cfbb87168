//! Errors as `application/problem+json` (RFC 9457): the HTTP status, a title, a detail that says what
//! to do, and qkv's own status when the service answered it (docs/HTTP.md, "Errors").

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::openapi;
use crate::pb::json::to_json;
use crate::pb::{CommandResponse, Value, status};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// qkv's status code, when the service answered this error.
    pub qkv_status: Option<u32>,
    /// The key's current value and version, on a 412 about a key that exists: what the client needs
    /// to decide what to write instead.
    pub current: Option<(Value, u64)>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem { status, detail: detail.into(), qkv_status: None, current: None }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// An error the service answered: qkv's statuses are HTTP's (docs/PROTOCOL.md), so the status
    /// carries over as it is.
    pub fn from_response(response: &CommandResponse) -> Self {
        let status = StatusCode::from_u16(response.status as u16)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Problem { status, detail: response.message.clone(), qkv_status: Some(response.status), current: None }
    }

    /// A conditional request (`If-Match`, `If-None-Match`) whose condition does not hold: 412, with
    /// the key's current value and version when it exists; what to do next depends on `verb`.
    pub fn precondition_failed(verb: Verb, current: Option<(Value, u64)>) -> Self {
        let detail = match (&current, verb) {
            (Some((_, version)), Verb::Read) => format!(
                "the key's current version is {version} (ETag \"{version}\"), which the condition does not allow: read it without one"
            ),
            (Some((_, version)), Verb::Write) => format!(
                "the key's current version is {version} (ETag \"{version}\"): read it again and retry with If-Match: \"{version}\", or without a condition to overwrite it"
            ),
            (Some((_, version)), Verb::Delete) => format!(
                "the key's current version is {version} (ETag \"{version}\"): read it again and retry with If-Match: \"{version}\", or without a condition to delete it whatever its version"
            ),
            (None, Verb::Read) => "the key does not exist, and If-Match asked for a version of it".into(),
            (None, Verb::Write) => "the key does not exist: retry without If-Match (a PUT with If-None-Match: * creates it only if it is still absent)".into(),
            (None, Verb::Delete) => "the key does not exist: there is nothing to delete".into(),
        };
        Problem {
            status: StatusCode::PRECONDITION_FAILED,
            detail,
            qkv_status: Some(status::CONFLICT),
            current,
        }
    }
}

/// What a conditional request was for, which says what to do when its condition fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Read,
    Write,
    Delete,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = openapi::Problem {
            kind: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").into(),
            status: self.status.as_u16(),
            detail: self.detail,
            qkv_status: self.qkv_status,
            current: self
                .current
                .as_ref()
                .map(|(value, version)| openapi::Current { value: to_json(value), version: *version }),
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some((_, version)) = self.current
            && let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\""))
        {
            headers.insert(header::ETAG, etag);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
