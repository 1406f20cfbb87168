//! QUIC with quinn: endpoints, transport settings and the application error codes qkv uses.
//!
//! Each request has its own client-opened bidirectional stream (docs/PROTOCOL.md). Unidirectional
//! streams are not used, so neither side grants any.

mod listener;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TokioRuntime, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

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
    /// 408) and the server will read no more of it.
    pub const REQUEST_REJECTED: VarInt = VarInt::from_u32(0x10);
    /// Stream (RESET_STREAM from the server): the server could not complete the reply.
    pub const REPLY_FAILED: VarInt = VarInt::from_u32(0x11);
    /// Stream (either side): the request was abandoned by the client.
    pub const CANCELLED: VarInt = VarInt::from_u32(0x12);
    /// Stream (RESET_STREAM from the server): the client read none of the reply for the reply timeout;
    /// the request was executed.
    pub const REPLY_TIMEOUT: VarInt = VarInt::from_u32(0x13);
}

fn invalid_input(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// Transport settings shared by both sides; `peer_streams` is how many bidirectional streams the peer
/// may open at once.
fn transport_config(limits: &Limits, peer_streams: u32) -> io::Result<TransportConfig> {
    let mut transport = TransportConfig::default();
    let window = |bytes: usize| VarInt::from_u64(bytes as u64).map_err(invalid_input);
    transport
        .receive_window(window(limits.connection_receive_window)?)
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IdleTimeout::try_from(limits.idle_timeout).map_err(invalid_input)?));
    Ok(transport)
}

/// A UDP socket with enlarged kernel buffers: QUIC sends and receives in bursts, and the defaults
/// (about 200 KiB) drop packets under load.
fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> io::Result<std::net::UdpSocket> {
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

/// A server endpoint on `addr`, serving TLS configuration `tls` (which must offer TLS 1.3).
pub fn server_endpoint(addr: SocketAddr, tls: rustls::ServerConfig, limits: &Limits) -> io::Result<Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(invalid_input)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(limits, limits.max_concurrent_requests)?));
    let socket = bind_udp(addr, limits.udp_socket_buffer)?;
    Endpoint::new(EndpointConfig::default(), Some(config), socket, Arc::new(TokioRuntime))
}

/// A client endpoint bound to `bind` (port 0 for any), connecting with TLS configuration `tls`.
/// Keep-alives every third of the idle timeout keep idle connections (and NAT bindings) open.
pub fn client_endpoint(
    bind: SocketAddr,
    tls: impl Into<Arc<rustls::ClientConfig>>,
    limits: &Limits,
) -> io::Result<Endpoint> {
    let crypto = QuicClientConfig::try_from(tls.into()).map_err(invalid_input)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(limits, 0)?;
    transport.keep_alive_interval(Some(limits.idle_timeout / 3));
    config.transport_config(Arc::new(transport));
    let socket = bind_udp(bind, limits.udp_socket_buffer)?;
    let mut endpoint = Endpoint::new(EndpointConfig::default(), None, socket, Arc::new(TokioRuntime))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
