//! Ping: the cheapest round trip, for liveness checks and for measuring the transport alone.

use crate::pb::{CommandResponse, Ping, Value};

/// Echoes the payload back as one binary value.
pub fn ping(cmd: Ping) -> CommandResponse {
    CommandResponse::with_values(vec![Value::from(cmd.payload)], Vec::new())
}
