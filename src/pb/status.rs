//! Status codes carried in `CommandResponse.status`. HTTP's meanings, so they need no explanation.

/// The command succeeded.
pub const OK: u32 = 200;
/// The request was malformed: undecodable protobuf, no command, a missing field, trailing bytes.
pub const BAD_REQUEST: u32 = 400;
/// Unsubscribe of a subscription that another connection owns.
pub const FORBIDDEN: u32 = 403;
/// `Hget` of a key that does not exist; Unsubscribe of a subscription that does not exist.
pub const NOT_FOUND: u32 = 404;
/// The request frame did not arrive (whole, with the end of its stream) within the server's deadline.
pub const REQUEST_TIMEOUT: u32 = 408;
/// A conditional write's expected version did not match; nothing was written.
pub const CONFLICT: u32 = 409;
/// The last frame of a subscription the server ended because it is shutting down: subscribe again,
/// to this server when it is back or to another.
pub const GONE: u32 = 410;
/// The request frame's declared length exceeds the server's maximum frame size.
pub const PAYLOAD_TOO_LARGE: u32 = 413;
/// The last frame of a subscription dropped because it fell behind: its queue was full and the server's
/// lag policy is to drop such subscribers.
pub const TOO_MANY_REQUESTS: u32 = 429;
/// The server failed; the message says how. The command may or may not have taken effect.
pub const INTERNAL_ERROR: u32 = 500;
/// The command exists in the protocol but this server does not serve it yet.
pub const NOT_IMPLEMENTED: u32 = 501;
/// The server is shutting down and did not execute the command; retry elsewhere or later.
pub const UNAVAILABLE: u32 = 503;
/// The storage backend (Redis) did not confirm the command: the connection to it broke, it failed
/// over, or its replicas did not confirm a write in time (`--redis-wait`). The command may or may not
/// have taken effect: a read can be sent again; before sending a write again, read the key (or send
/// it as a conditional write, which cannot apply twice).
pub const GATEWAY_TIMEOUT: u32 = 504;
/// A write would take the store over its memory budget; nothing was written. Reads and deletes still
/// work; retry after data is deleted.
pub const INSUFFICIENT_STORAGE: u32 = 507;

/// Every status a response may carry (docs/PROTOCOL.md, "Status codes").
pub const ALL: [u32; 14] = [
    OK,
    BAD_REQUEST,
    FORBIDDEN,
    NOT_FOUND,
    REQUEST_TIMEOUT,
    CONFLICT,
    GONE,
    PAYLOAD_TOO_LARGE,
    TOO_MANY_REQUESTS,
    INTERNAL_ERROR,
    NOT_IMPLEMENTED,
    UNAVAILABLE,
    GATEWAY_TIMEOUT,
    INSUFFICIENT_STORAGE,
];
