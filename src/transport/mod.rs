//! Transports: how frames travel. Everything above the byte stream is shared: [`frame`] is the codec,
//! [`exchange`] serves one request on a stream of its own (QUIC), [`pipeline`] serves many requests in
//! order on one byte stream (TCP), both over any `AsyncRead`/`AsyncWrite`; [`budget`] and [`timeouts`]
//! bound what a peer can make the server hold. [`quic`] and [`tcp`] only adapt their sockets to those.

pub mod budget;
pub mod exchange;
pub mod frame;
pub mod pipeline;
pub mod quic;
pub mod tcp;
pub mod timeouts;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Endpoint;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use rustls::pki_types::CertificateDer;

use crate::service::Caller;
use crate::tls::{self, ServerTls};
use tcp::TcpSecurity;

pub use frame::DEFAULT_MAX_FRAME_LEN;

/// How a client reaches the server. All three carry the same frames (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP, one stream per request.
    Quic,
    /// TLS 1.3 over TCP, requests pipelined on one connection.
    Tls,
    /// Plaintext TCP, requests pipelined on one connection (trusted networks only).
    Tcp,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Quic, Transport::Tls, Transport::Tcp];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
        }
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
        Transport::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown transport {s:?}: expected quic, tls or tcp"))
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
    /// (and its peer, through flow control) until there is room. At least `max_frame_len` + 4.
    pub max_request_buffer: usize,
    /// QUIC connection-wide flow-control window: request bytes a peer may send ahead of what the
    /// server has read.
    pub connection_receive_window: usize,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_concurrent_requests: 256,
            max_connections: 10_000,
            max_request_buffer: 2 * DEFAULT_MAX_FRAME_LEN,
            connection_receive_window: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            reply_min_progress: timeouts::DEFAULT_MIN_PROGRESS,
            idle_timeout: Duration::from_secs(30),
            udp_socket_buffer: 4 * 1024 * 1024,
        }
    }
}

/// The smallest maximum frame size accepted: room for any error response.
pub const MIN_MAX_FRAME_LEN: usize = 1024;

impl Limits {
    /// The most memory one connection can make the server hold in buffers: its request buffer, what
    /// QUIC flow control lets it send ahead, and replies written but not yet acknowledged. (TCP holds
    /// less: one frame being received on top of the request buffer, and the kernel's socket buffers.)
    pub fn worst_case_connection_memory(&self) -> u64 {
        self.max_request_buffer as u64 + self.connection_receive_window as u64 + quic::SEND_WINDOW
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
                "the request buffer per connection ({} bytes) must hold at least one maximum-size frame ({} bytes)",
                self.max_request_buffer,
                self.max_frame_len + frame::HEADER_LEN
            ));
        }
        for (name, value) in [
            ("concurrent requests per connection", self.max_concurrent_requests as usize),
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

/// What a server offers on TCP, beside QUIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// TLS 1.3 with the QUIC endpoint's certificate and ALPN.
    Tls,
    /// Plaintext: for trusted networks and course clients only.
    Plaintext,
    /// No TCP listener.
    Off,
}

/// Attempts at finding a port number free on both UDP and TCP when the address asks for any (0).
const PORT_ATTEMPTS: usize = 16;

/// The sockets of a server: the QUIC endpoint, and the TCP listener unless TCP is off.
pub struct Bound {
    pub quic: Endpoint,
    pub tcp: Option<(TcpListener, TcpSecurity)>,
}

/// Binding failed; `protocol` is "UDP" or "TCP".
#[derive(Debug)]
pub struct BindError {
    pub protocol: &'static str,
    pub cause: io::Error,
}

/// Binds QUIC (UDP) and, unless `tcp` is off, TCP on the same port number. With port 0 the UDP port is
/// chosen first and TCP tries the same number, starting over if it is taken. Must be called within a
/// tokio runtime.
pub fn bind(
    listen: SocketAddr,
    tls: ServerTls,
    tcp: TcpMode,
    limits: &Limits,
    quic_options: &quic::QuicOptions,
) -> Result<Bound, BindError> {
    let udp = |cause| BindError { protocol: "UDP", cause };
    let security = match tcp {
        TcpMode::Tls => Some(TcpSecurity::Tls(TlsAcceptor::from(Arc::new(tls.tcp)))),
        TcpMode::Plaintext => Some(TcpSecurity::Plaintext),
        TcpMode::Off => None,
    };
    let attempts = if listen.port() == 0 { PORT_ATTEMPTS } else { 1 };
    let mut last_error = io::Error::other("no port could be bound");
    for _ in 0..attempts {
        let quic = quic::server_endpoint(listen, tls.quic.clone(), limits, quic_options).map_err(udp)?;
        let Some(security) = security.clone() else {
            return Ok(Bound { quic, tcp: None });
        };
        let addr = quic.local_addr().map_err(udp)?;
        match tcp::bind(addr) {
            Ok(listener) => return Ok(Bound { quic, tcp: Some((listener, security)) }),
            Err(e) => last_error = e,
        }
    }
    Err(BindError { protocol: "TCP", cause: last_error })
}

/// Whom a connection's requests come from: the subject of the certificate its client presented, if the
/// server asked for one. Recorded on the connection's span (its `client` field), and logged once.
fn authenticated_caller(peer_certificates: Option<&[CertificateDer<'_>]>) -> Caller {
    let identity: Option<Arc<str>> =
        peer_certificates.and_then(|chain| chain.first()).and_then(tls::certificate_subject).map(Arc::from);
    if let Some(identity) = &identity {
        tracing::Span::current().record("client", &**identity);
        tracing::info!("client authenticated");
    }
    Caller::new(identity)
}
