//! Service errors, mapped to wire statuses in exactly one place: [`ServiceError::into_response`].

use crate::pb::{CommandResponse, Value, status};
use crate::storage::{StorageError, Versioned};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("key {key:?} not found in table {table:?}")]
    NotFound { table: String, key: String },
    #[error("version conflict: expected version {expected}, but the key's version is {}", current.as_ref().map_or(0, |c| c.version))]
    Conflict { expected: u64, current: Option<Versioned> },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} is not implemented by this server")]
    NotImplemented(&'static str),
}

impl ServiceError {
    pub fn status(&self) -> u32 {
        match self {
            ServiceError::InvalidRequest(_) => status::BAD_REQUEST,
            ServiceError::NotFound { .. } => status::NOT_FOUND,
            ServiceError::Conflict { .. } => status::CONFLICT,
            ServiceError::Storage(_) => status::INTERNAL_ERROR,
            ServiceError::NotImplemented(_) => status::NOT_IMPLEMENTED,
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
