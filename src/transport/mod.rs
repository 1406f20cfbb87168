//! Transports: how frames travel. Everything above the byte stream is shared: [`frame`] is the codec,
//! `writer` writes reply frames, `exchange` serves one request on a stream of its own (QUIC),
//! `pipeline` serves many requests in order on one byte stream (TCP), both over any
//! `AsyncRead`/`AsyncWrite` and generic over the service's `Handler` behind them; `admission`,
//! `budget` and [`timeouts`] bound what a peer can make the server hold. [`quic`] and `tcp` only adapt
//! their sockets to those. (Names without links are the server's: a client-only build has none of them.)

pub mod frame;
pub mod messages;
pub mod quic;
pub mod timeouts;

#[cfg(feature = "server")]
pub mod admission;
#[cfg(feature = "server")]
pub mod budget;
#[cfg(feature = "server")]
pub mod exchange;
#[cfg(feature = "server")]
pub mod log_throttle;
#[cfg(feature = "server")]
pub mod origin;
#[cfg(feature = "server")]
pub mod pipeline;
#[cfg(feature = "server")]
pub mod tcp;
#[cfg(feature = "server")]
pub(crate) mod woken;
#[cfg(feature = "server")]
pub mod writer;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[cfg(feature = "server")]
mod listen;
#[cfg(feature = "server")]
pub use listen::{BindError, Bound, TcpMode, bind, default_connection_memory};
#[cfg(feature = "server")]
use listen::{authenticated_caller, untrusted_resumption};

pub use frame::DEFAULT_MAX_FRAME_LEN;

/// How a client reaches the server. The first three carry the protocol's frames (docs/PROTOCOL.md);
/// the web listener's two doors carry the same requests over HTTP (docs/HTTP.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP, one stream per request.
    Quic,
    /// TLS 1.3 over TCP, requests pipelined on one connection.
    Tls,
    /// Plaintext TCP, requests pipelined on one connection (trusted networks only).
    Tcp,
    /// The REST API on the web listener.
    Http,
    /// gRPC (service `qkv.v1.Kv`) on the web listener, a call per request.
    Grpc,
    /// gRPC's `Pipeline` call on the web listener: requests pipelined on one call as over TCP.
    GrpcPipeline,
}

impl Transport {
    /// Every transport, in the order metrics list them.
    pub const ALL: [Transport; 6] = [
        Transport::Quic,
        Transport::Tls,
        Transport::Tcp,
        Transport::Http,
        Transport::Grpc,
        Transport::GrpcPipeline,
    ];

    /// Its name: as the CLI's `--transport` takes it, and as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
            Transport::Http => "http",
            Transport::Grpc => "grpc",
            Transport::GrpcPipeline => "grpc-pipeline",
        }
    }

    /// Served by the web listener (`--web`) rather than on the main port.
    pub fn is_web(self) -> bool {
        matches!(self, Transport::Http | Transport::Grpc | Transport::GrpcPipeline)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Transport::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            format!("unknown transport {s:?}: expected quic, tls, tcp, http, grpc or grpc-pipeline")
        })
    }
}

/// Limits that protect the server (and the client) from peers, with safe defaults. Every one is
/// configurable from the command line; docs/PROTOCOL.md says what a peer sees when it hits one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame accepted or sent (payload bytes, excluding the 4-byte prefix).
    pub max_frame_len: usize,
    /// Requests one connection may have in progress at once: open streams on QUIC (its stream
    /// credit), requests read but not yet answered on TCP (the server stops reading beyond it).
    pub max_concurrent_requests: u32,
    /// Connections served at once; further ones are refused.
    pub max_connections: usize,
    /// Request bytes one connection may have buffered at once, over all its streams; a stream waits
    /// (and its peer, through flow control) until there is room. At least `max_frame_len` + 4. Also
    /// what a connection's answers not yet written may hold: on a pipelined byte stream counted with
    /// its requests, on QUIC and the web listener in a share of their own (`exchange::AnswerShare`).
    pub max_request_buffer: usize,
    /// QUIC connection-wide flow-control window: request bytes a peer may send ahead of what the
    /// server has read. Reserved from the connection memory budget for every QUIC connection.
    pub connection_receive_window: usize,
    /// QUIC: reply bytes a connection may have written but not yet acknowledged by the peer (what a
    /// client that stops reading can make the server hold for it). Reserved from the connection
    /// memory budget for every QUIC connection.
    pub send_window: usize,
    /// How long a request waits for the server-wide connection memory budget before it is refused with
    /// 503 (not executed).
    pub memory_wait: Duration,
    /// Time a client has to deliver a whole request frame and finish its side of the stream.
    pub request_timeout: Duration,
    /// A reply the client reads less than `reply_min_progress` bytes of within this long, once the
    /// server has had to wait for it, is abandoned, so that a client that stops reading (or reads a
    /// trickle) cannot pin the server's resources.
    pub reply_timeout: Duration,
    /// See `reply_timeout`.
    pub reply_min_progress: usize,
    /// A connection without any traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Requested size of the UDP socket's kernel buffers (capped by `net.core.{r,w}mem_max`).
    pub udp_socket_buffer: usize,
    /// QUIC handshakes from addresses not yet validated that may be in progress at once; beyond it,
    /// new connections are asked to prove their address with a Retry first (one more round trip).
    pub max_unvalidated_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_concurrent_requests: 256,
            max_connections: 10_000,
            max_request_buffer: 2 * DEFAULT_MAX_FRAME_LEN,
            connection_receive_window: DEFAULT_WINDOW,
            send_window: DEFAULT_WINDOW,
            memory_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            reply_min_progress: timeouts::DEFAULT_MIN_PROGRESS,
            idle_timeout: Duration::from_secs(30),
            udp_socket_buffer: 4 * 1024 * 1024,
            max_unvalidated_handshakes: 1024,
        }
    }
}

/// The smallest maximum frame size accepted: room for any error response.
pub const MIN_MAX_FRAME_LEN: usize = 1024;

/// The longest timeout or wait the server takes: a year (longer is no use, and far longer overflowed
/// the clock's arithmetic).
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The default QUIC flow-control windows, each way: 256 KiB, enough for 5 MB/s per connection at a
/// mobile RTT of 50 ms (and for any rate on a LAN), small enough that the memory budget reserves them
/// for 10,000 connections in about 5 GiB.
pub const DEFAULT_WINDOW: usize = 256 * 1024;

/// The smallest flow-control window accepted: one full-size UDP datagram's payload and then some.
pub const MIN_WINDOW: usize = 16 * 1024;

/// What a QUIC connection holds besides its windows: quinn's connection state, its tasks, its
/// request streams' bookkeeping, and room for 4 refusals (4,112 bytes) written when the memory budget is
/// spent (`exchange::AnswerBudget`). An idle connection takes about 53 KiB of the server's RSS
/// (docs/bench/SCALE.md, "server memory per connection").
pub const QUIC_CONNECTION_OVERHEAD: usize = 64 * 1024;

/// The most requests a connection may have unanswered (`--max-concurrent-requests`). quinn sets up the
/// state of every stream a QUIC connection may open when it accepts the connection, on the runtime's
/// thread: at a million streams that took 1.4 s and 180 MB per connection, stalling every client.
/// At this maximum, about 3 MB and a few milliseconds.
pub const MAX_CONCURRENT_REQUESTS: u32 = 16_384;

/// quinn's state for each stream a QUIC connection may open (measured: about 180 bytes). A connection
/// that uses all its streams is granted `quic::STREAM_CREDIT` times as many, and quinn sets up every
/// one: charged beyond what the default (256) grants, which `QUIC_CONNECTION_OVERHEAD` was measured with.
const QUIC_STREAM_STATE: usize = 192;
const DEFAULT_STREAMS_COVERED: usize = 256 * quic::STREAM_CREDIT as usize;

/// What a TCP connection holds whatever it sends: the pipeline's read chunk and the allocation it keeps
/// for its next request's execution (1.5 KiB), rustls's buffers (a record each way and its bounded
/// plaintext buffer), its task. An idle one takes about 36 KiB of the server's RSS
/// (docs/bench/SCALE.md); the rest is room for full buffers.
pub const TCP_CONNECTION_OVERHEAD: usize = 128 * 1024;

#[cfg(feature = "server")]
const _: () = assert!(TCP_CONNECTION_OVERHEAD > pipeline::FIXED_HOLDINGS);

impl Limits {
    /// The fixed share of the connection memory budget a QUIC connection is admitted with: its two
    /// flow-control windows and its bookkeeping.
    pub fn quic_connection_share(&self) -> usize {
        let granted = self.max_concurrent_requests as usize * quic::STREAM_CREDIT as usize;
        let streams = granted.saturating_sub(DEFAULT_STREAMS_COVERED);
        self.connection_receive_window
            + self.send_window
            + QUIC_CONNECTION_OVERHEAD
            + streams * QUIC_STREAM_STATE
    }

    /// The fixed share a TCP connection is admitted with.
    pub fn tcp_connection_share(&self) -> usize {
        TCP_CONNECTION_OVERHEAD
    }

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
                "the request buffer per connection (--max-request-buffer, {} bytes) must hold at least one maximum-size frame and its header (--max-frame-size + 4: {} bytes)",
                self.max_request_buffer,
                self.max_frame_len + frame::HEADER_LEN
            ));
        }
        if !(1..=MAX_CONCURRENT_REQUESTS).contains(&self.max_concurrent_requests) {
            return Err(format!(
                "the concurrent requests per connection (--max-concurrent-requests) must be between 1 and {MAX_CONCURRENT_REQUESTS}, not {}: a QUIC connection sets up the state of every stream it may open when it is accepted",
                self.max_concurrent_requests
            ));
        }
        if self.max_connections == 0 {
            return Err("the maximum number of connections must be at least 1".into());
        }
        for (name, value) in
            [("connection window", self.connection_receive_window), ("send window", self.send_window)]
        {
            if !(MIN_WINDOW as u64..=1 << 40).contains(&(value as u64)) {
                return Err(format!("the {name} must be between {MIN_WINDOW} bytes and 1 TiB, not {value}"));
            }
        }
        for (name, value) in [
            ("request timeout", self.request_timeout),
            ("reply timeout", self.reply_timeout),
            ("idle timeout", self.idle_timeout),
            ("memory wait", self.memory_wait),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(format!("the {name} must be longer than zero and at most a year, not {value:?}"));
            }
        }
        Ok(())
    }
}
