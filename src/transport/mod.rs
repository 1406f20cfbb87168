//! Transports: how frames travel. Everything above the byte stream is shared: [`frame`] is the codec,
//! [`exchange`] reads a request and writes its reply over any `AsyncRead`/`AsyncWrite`, and each transport
//! ([`quic`]) only adapts its streams to those.

pub mod budget;
pub mod exchange;
pub mod frame;
pub mod quic;
pub mod stall;

use std::time::Duration;

pub use frame::DEFAULT_MAX_FRAME_LEN;

/// Limits that protect the server (and the client) from peers, with safe defaults. Every one is
/// configurable from the command line; docs/PROTOCOL.md says what a peer sees when it hits one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted or sent (payload bytes, excluding the 4-byte prefix).
    pub max_frame_len: usize,
    /// Request streams one QUIC connection may have open at once (QUIC's stream credit).
    pub max_streams_per_connection: u32,
    /// Connections served at once; further ones are refused.
    pub max_connections: usize,
    /// Request bytes one connection may have buffered at once, over all its streams; a stream waits
    /// (and its peer, through flow control) until there is room. At least `max_frame_len` + 4.
    pub max_request_buffer: usize,
    /// QUIC connection-wide flow-control window: request bytes a peer may send ahead of what the
    /// server has read.
    pub connection_receive_window: usize,
    /// Time a client has to deliver a whole request frame and finish its side of the stream.
    pub request_timeout: Duration,
    /// A reply the client reads none of for this long is abandoned, so that a client that stops
    /// reading cannot pin the server's resources.
    pub reply_timeout: Duration,
    /// A connection without any traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Requested size of the UDP socket's kernel buffers (capped by `net.core.{r,w}mem_max`).
    pub udp_socket_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_streams_per_connection: 256,
            max_connections: 10_000,
            max_request_buffer: 2 * DEFAULT_MAX_FRAME_LEN,
            connection_receive_window: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            udp_socket_buffer: 4 * 1024 * 1024,
        }
    }
}

/// The smallest maximum frame size accepted: room for any error response.
pub const MIN_MAX_FRAME_LEN: usize = 1024;

impl Limits {
    /// Checks that the limits are usable together; the error says which one to change.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_MAX_FRAME_LEN..=u32::MAX as usize).contains(&self.max_frame_len) {
            return Err(format!(
                "the maximum frame size must be between {MIN_MAX_FRAME_LEN} and {} bytes, not {}",
                u32::MAX,
                self.max_frame_len
            ));
        }
        if self.max_request_buffer < self.max_frame_len + frame::HEADER_LEN {
            return Err(format!(
                "the request buffer per connection ({} bytes) must hold at least one maximum-size frame ({} bytes)",
                self.max_request_buffer,
                self.max_frame_len + frame::HEADER_LEN
            ));
        }
        for (name, value) in [
            ("streams per connection", self.max_streams_per_connection as usize),
            ("connections", self.max_connections),
        ] {
            if value == 0 {
                return Err(format!("the maximum number of {name} must be at least 1"));
            }
        }
        for (name, value) in [
            ("request timeout", self.request_timeout),
            ("reply timeout", self.reply_timeout),
            ("idle timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("the {name} must be longer than zero"));
            }
        }
        Ok(())
    }
}
