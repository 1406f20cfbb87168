//! Ping: the cheapest round trip, for liveness checks and for measuring the transport alone.

use super::ServiceError;
use crate::pb::{CommandResponse, Ping, Value};

/// Echoes the payload back as one binary value.
pub fn ping(max_entry_len: usize, cmd: Ping) -> Result<CommandResponse, ServiceError> {
    if cmd.payload.len() > max_entry_len {
        return Err(ServiceError::TooLarge(format!(
            "a ping payload of {} bytes cannot be echoed in one frame; the most that fits is {} bytes",
            cmd.payload.len(),
            max_entry_len
        )));
    }
    Ok(CommandResponse::with_values(vec![Value::from(cmd.payload)], Vec::new()))
}
