//! Transports: how frames travel. Everything above the byte stream is shared: [`frame`] is the codec,
//! [`exchange`] reads a request and writes its reply over any `AsyncRead`/`AsyncWrite`, and each transport
//! ([`quic`]) only adapts its streams to those.

pub mod exchange;
pub mod frame;
pub mod quic;

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
    /// Time a client has to deliver a whole request frame and finish its side of the stream.
    pub request_timeout: Duration,
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
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            udp_socket_buffer: 4 * 1024 * 1024,
        }
    }
}
