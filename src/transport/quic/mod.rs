//! QUIC with quinn: endpoints, transport settings and the application error codes qkv uses.
//!
//! Each request has its own client-opened bidirectional stream (docs/PROTOCOL.md). qkv's protocol uses
//! no unidirectional streams; a server grants a client three, which a browser's HTTP/3 needs for a
//! WebTransport session (the `webtransport` module).

#[cfg(feature = "server")]
mod listener;
#[cfg(feature = "server")]
mod webtransport;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TokioRuntime, TransportConfig, VarInt,
    congestion,
};
use socket2::{Domain, Protocol, Socket, Type};

#[cfg(feature = "server")]
pub use listener::serve;

use super::Limits;

/// Application error codes, carried in CONNECTION_CLOSE, RESET_STREAM and STOP_SENDING frames.
pub mod codes {
    use quinn::VarInt;

    /// Connection: closed normally (a client that is done).
    pub const NO_ERROR: VarInt = VarInt::from_u32(0);
    /// Connection: the server is shutting down. It answered every request stream it had accepted before
    /// closing; requests on other streams were not executed and may be retried on a new connection.
    pub const SHUTTING_DOWN: VarInt = VarInt::from_u32(1);
    /// Connection: the server shut down before some requests were answered (its grace period ran out).
    /// A request without its complete reply may or may not have been executed.
    pub const SHUTDOWN_FORCED: VarInt = VarInt::from_u32(2);
    /// Stream (STOP_SENDING from the server): the request was refused with an error response (413, 400,
    /// 408, 503) and the server will read no more of it. As RESET_STREAM from the server: the request was
    /// not executed, and its error response could not be delivered.
    pub const REQUEST_REJECTED: VarInt = VarInt::from_u32(0x10);
    /// Stream (RESET_STREAM from the server): the server could not complete the reply.
    pub const REPLY_FAILED: VarInt = VarInt::from_u32(0x11);
    /// Stream (STOP_SENDING or RESET_STREAM from the client): the request was abandoned by the client.
    /// As RESET_STREAM from the server: the client reset its request before it was whole, and nothing
    /// was executed.
    pub const CANCELLED: VarInt = VarInt::from_u32(0x12);
    /// Stream (RESET_STREAM from the server): the client read none of the reply for the reply timeout;
    /// the request was executed.
    pub const REPLY_TIMEOUT: VarInt = VarInt::from_u32(0x13);
    /// Stream (RESET_STREAM from the server): the server had no memory to hold the answer (its
    /// connection memory budget was spent); the request was executed.
    pub const ANSWER_DROPPED: VarInt = VarInt::from_u32(0x14);
    /// Connection: the handshake did not complete within the server's request timeout.
    pub const HANDSHAKE_TIMEOUT: VarInt = VarInt::from_u32(3);
    /// Connection: the handshake resumed a session whose client certificate the server no longer
    /// trusts (it expired, or the client CA was replaced since). Nothing was executed on it.
    pub const CLIENT_CERTIFICATE_UNTRUSTED: VarInt = VarInt::from_u32(4);
}

fn invalid_input(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// The congestion controllers quinn offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 9438), as Linux TCP uses by default on most systems: the fair comparison with TCP.
    #[default]
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// BBR (quinn's implementation is marked experimental).
    Bbr,
}

impl Congestion {
    /// Every controller.
    pub const ALL: [Congestion; 3] = [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr];

    /// Its name, as `--congestion` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Congestion::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown congestion controller {s:?}: expected cubic, newreno or bbr"))
    }
}

/// QUIC settings that matter on mobile paths, the same for servers and clients.
#[derive(Debug, Clone)]
pub struct QuicOptions {
    /// The congestion controller (Cubic by default).
    pub congestion: Congestion,
    /// The RTT assumed before the first measurement: it sets the first retransmission timeout. quinn's
    /// default (333 ms, RFC 9002's) suits unknown paths; a lower one recovers a lost first flight sooner.
    pub initial_rtt: Duration,
    /// Generic segmentation offload: many packets handed to the kernel in one call. Off only to
    /// measure its effect, or on a path (some VPNs, old kernels) that mishandles it.
    pub segmentation_offload: bool,
    /// Path MTU discovery, one probe from this side per connection (the `mtu_discovery` function
    /// below), for packets of up to 1452 bytes instead of 1200. Off on both sides, a connection that
    /// makes one request (a fleet that reconnects for each, a reconnect storm) takes ~15% fewer
    /// packets and ~6% less of the server's CPU to set up (docs/DESIGN.md, "reconnect storms"); on,
    /// one that carries answers larger than a packet sends 17% fewer packets for them.
    pub mtu_discovery: bool,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            congestion: Congestion::Cubic,
            initial_rtt: Duration::from_millis(333),
            segmentation_offload: true,
            mtu_discovery: true,
        }
    }
}

/// Path MTU discovery with one probe: straight to quinn's upper bound (a 1452-byte UDP payload, what a
/// 1500-byte Ethernet MTU carries), and 1200 bytes if that probe is lost. quinn's default searches
/// between the two, four probes one round trip after another, each a full-size datagram and an
/// acknowledgement: on a connection that makes one request (a reconnect storm is made of them) that
/// doubled the packets each side sent (docs/bench/STORM.md). A path whose MTU lies between the two
/// (a tunnel, some mobile carriers) keeps 1200 bytes, QUIC's minimum; it is probed again after
/// quinn's interval (10 minutes).
fn mtu_discovery() -> MtuDiscoveryConfig {
    let mut config = MtuDiscoveryConfig::default();
    // Larger than half the distance between 1200 and the upper bound: the binary search's first
    // step is too small to take, so it probes the upper bound alone.
    config.minimum_change(MTU_PROBE_STEP);
    config
}

/// See [`mtu_discovery`]: any step from 1200 bytes smaller than this is not probed.
const MTU_PROBE_STEP: u16 = 200;

/// The unidirectional streams a server lets a client open: HTTP/3's control stream and QPACK's
/// encoder and decoder streams, which a browser opens for a WebTransport session. A qkv client opens
/// none; one that does has them stopped at once.
pub const HTTP3_UNI_STREAMS: u32 = 3;

/// Bidirectional streams a client that uses all of `--max-concurrent-requests` may have open, as a
/// multiple of it. quinn gives a stream's credit back only once the client has acknowledged all of its
/// answer, which a client does after its ack delay (25 ms) unless more packets prompt it: at credit
/// equal to the limit, a client keeping that many requests in flight waited for those acknowledgements
/// (4 in flight at a limit of 4: 152 requests/s; 256 at 256: 269k/s, against 57k/s and 453k/s with
/// twice the credit, docs/DESIGN.md). The server itself runs at most the limit at once
/// (`listener::serve_connection`); the other streams are read, and their requests wait for a turn
/// (left unread, they held their bytes in the flow-control window all streams share, and starved the
/// requests running). A connection starts with credit equal to the limit, raised only once it
/// uses it all: quinn allocates the state of every stream it grants when it grants it, which a
/// connection of a few requests (a reconnect storm's) would pay for nothing. A WebTransport session
/// starts with it raised, since a browser refuses a stream beyond the credit rather than waiting
/// (`listener::serve_connection`).
pub(crate) const STREAM_CREDIT: u32 = 2;

/// QUIC datagrams (RFC 9221) waiting to be read. qkv reads none, but a browser's WebTransport needs the
/// extension on; a peer's datagrams are dropped beyond this (quinn's default, 1.25 MB, would be held
/// outside every budget).
const DATAGRAM_BUFFER: usize = 8 * 1024;

/// Transport settings shared by both sides; `peer_streams` is how many bidirectional streams the peer
/// may open at once, `peer_uni_streams` how many unidirectional ones.
fn transport_config(
    limits: &Limits,
    options: &QuicOptions,
    peer_streams: u32,
    peer_uni_streams: u32,
) -> io::Result<TransportConfig> {
    let mut transport = TransportConfig::default();
    let window = |bytes: usize| VarInt::from_u64(bytes as u64).map_err(invalid_input);
    transport
        .receive_window(window(limits.connection_receive_window)?)
        .send_window(limits.send_window as u64)
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(peer_uni_streams))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .max_idle_timeout(Some(IdleTimeout::try_from(limits.idle_timeout).map_err(invalid_input)?))
        .initial_rtt(options.initial_rtt)
        .enable_segmentation_offload(options.segmentation_offload);
    transport.mtu_discovery_config(options.mtu_discovery.then(mtu_discovery));
    match options.congestion {
        Congestion::Cubic => {
            transport.congestion_controller_factory(Arc::new(congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            transport.congestion_controller_factory(Arc::new(congestion::NewRenoConfig::default()))
        }
        Congestion::Bbr => {
            transport.congestion_controller_factory(Arc::new(congestion::BbrConfig::default()))
        }
    };
    Ok(transport)
}

/// A UDP socket with enlarged kernel buffers: QUIC sends and receives in bursts, and the defaults
/// (about 200 KiB) drop packets under load.
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps both at net.core.{r,w}mem_max, and a smaller buffer still works.
    if let Err(e) = socket.set_recv_buffer_size(buffer_bytes) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_bytes) {
        tracing::debug!(error = %e, "could not enlarge the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A server endpoint on `addr`, serving TLS configuration `tls` (which must offer TLS 1.3; with
/// `max_early_data_size` at `u32::MAX` it accepts 0-RTT). Clients may migrate to new addresses.
/// `endpoint` holds the keys of its stateless resets and connection IDs: keys that outlive the process
/// (see `tls::quic_endpoint_config`) let a restarted server end its predecessor's connections at once.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    endpoint: EndpointConfig,
    limits: &Limits,
    options: &QuicOptions,
) -> io::Result<Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(invalid_input)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        limits,
        options,
        limits.max_concurrent_requests,
        HTTP3_UNI_STREAMS,
    )?));
    // A phone moving from Wi-Fi to cellular keeps its connection (quinn's default, stated here).
    config.migration(true);
    let socket = bind_udp(addr, limits.udp_socket_buffer)?;
    warn_if_capped(&socket, limits.udp_socket_buffer);
    Endpoint::new(endpoint, Some(config), socket, Arc::new(TokioRuntime))
}

/// Warns when the kernel gave the server's UDP socket a smaller receive buffer than asked for
/// (`net.core.rmem_max` caps it), which drops datagrams under bursts: the operator asked for more.
fn warn_if_capped(socket: &std::net::UdpSocket, asked: usize) {
    // Linux reports twice what it grants (the rest is its bookkeeping).
    let granted = socket2::SockRef::from(socket).recv_buffer_size().map(|reported| reported / 2);
    if let Ok(granted) = granted
        && granted < asked
    {
        tracing::warn!(
            asked,
            granted,
            "the kernel capped the QUIC socket's receive buffer (--udp-socket-buffer) at net.core.rmem_max: raise it (sysctl -w net.core.rmem_max=...) or bursts of datagrams are dropped"
        );
    }
}

/// The settings of a client's connections: TLS configuration `tls` (whose ticket store decides
/// resumption), keep-alives every `keep_alive` so that idle connections and the NAT bindings on their
/// way stay open.
pub fn client_config(
    tls: Arc<rustls::ClientConfig>,
    limits: &Limits,
    options: &QuicOptions,
    keep_alive: Duration,
) -> io::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(invalid_input)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(limits, options, 0, 0)?;
    transport.keep_alive_interval(Some(keep_alive));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint bound to `bind` (port 0 for any) whose connections use `config`.
pub fn client_endpoint(
    bind: SocketAddr,
    config: quinn::ClientConfig,
    limits: &Limits,
) -> io::Result<Endpoint> {
    let socket = bind_udp(bind, limits.udp_socket_buffer)?;
    let mut endpoint = Endpoint::new(EndpointConfig::default(), None, socket, Arc::new(TokioRuntime))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
