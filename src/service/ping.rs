//! Ping: the cheapest round trip, for liveness checks and for measuring the transport alone. It also
//! tells a client who the server takes it for, so that a mutual-TLS setup can be checked end to end.

use super::{Caller, ServiceError};
use crate::pb::{CommandResponse, Ping, Value};

/// Echoes the payload back as one binary value, followed by the caller's identity (a string) when it
/// authenticated with a client certificate.
pub fn ping(max_entry_len: usize, cmd: Ping, caller: &Caller) -> Result<CommandResponse, ServiceError> {
    if cmd.payload.len() > max_entry_len {
        return Err(ServiceError::TooLarge(format!(
            "a ping payload of {} bytes cannot be echoed in one frame; the most that fits is {} bytes",
            cmd.payload.len(),
            max_entry_len
        )));
    }
    // Copied: decoded as a slice of the request's frame, the payload would keep the whole frame (up to
    // --max-frame-size, whatever else it carried) alive, uncharged, for as long as the answer waits.
    let mut values = vec![Value::from(bytes::Bytes::copy_from_slice(&cmd.payload))];
    values.extend(caller.identity.as_deref().map(Value::from));
    Ok(CommandResponse::with_values(values, Vec::new()))
}
