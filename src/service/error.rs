//! Service errors, mapped to wire statuses in exactly one place: [`ServiceError::into_response`].

use crate::pb::{CommandResponse, Value, status};
use crate::storage::{StorageError, Versioned};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("key {} not found in table {}", shown(key), shown(table))]
    NotFound { table: String, key: String },
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("version conflict: expected version {expected}, but the key's version is {}", current.as_ref().map_or(0, |c| c.version))]
    Conflict { expected: u64, current: Option<Versioned> },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    NoSubscription(String),
    #[error("{0}")]
    NotOwner(String),
    /// Not executed, for want of a resource that may come free: retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl ServiceError {
    pub fn status(&self) -> u32 {
        match self {
            ServiceError::InvalidRequest(_) => status::BAD_REQUEST,
            ServiceError::NotFound { .. } => status::NOT_FOUND,
            ServiceError::TooLarge(_) => status::PAYLOAD_TOO_LARGE,
            ServiceError::Conflict { .. } => status::CONFLICT,
            ServiceError::Storage(StorageError::Full { .. }) => status::INSUFFICIENT_STORAGE,
            ServiceError::Storage(StorageError::OutOfMemory(_)) => status::INSUFFICIENT_STORAGE,
            ServiceError::Storage(StorageError::Backend(_)) => status::INTERNAL_ERROR,
            ServiceError::Storage(StorageError::Unavailable(_)) => status::UNAVAILABLE,
            ServiceError::Storage(StorageError::Uncertain(_)) => status::GATEWAY_TIMEOUT,
            ServiceError::NoSubscription(_) => status::NOT_FOUND,
            ServiceError::NotOwner(_) => status::FORBIDDEN,
            ServiceError::Unavailable(_) => status::UNAVAILABLE,
        }
    }

    /// The error as a response. A conflict also carries the key's current value and version
    /// (empty value and version 0 when absent), so a client can retry without another read.
    pub fn into_response(self) -> CommandResponse {
        let mut response = CommandResponse::error(self.status(), self.to_string());
        if let ServiceError::Conflict { current, .. } = self {
            let (value, version) = current.map_or((Value::default(), 0), |c| (c.value, c.version));
            response.values.push(value);
            response.versions.push(version);
        }
        response
    }
}

/// A name as error messages show it: quoted, and cut short so that a message about a huge key stays
/// small (an answer must fit in a frame, and logs should stay readable).
pub fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    match name.char_indices().nth(MAX_CHARS) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &name[..cut], name.len()),
    }
}
