//! What a server needs to listen: its sockets bound on one port number for QUIC and TCP, the default
//! connection memory budget, and who a connection's client is.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::Endpoint;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

use super::tcp::{self, TcpSecurity};
use super::{Limits, quic};
use crate::service::Caller;
use crate::tls::{self, ServerTls};
use crate::transport::log_throttle::{HeldBack, LogThrottle};

/// The server-wide connection memory budget unless configured otherwise: a quarter of the memory this
/// process may use (the store's budget is half).
pub fn default_connection_memory() -> usize {
    crate::memory::available_memory() / 4
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
        TcpMode::Tls => Some(TcpSecurity::Tls(tls.credentials.door(tls.tcp))),
        TcpMode::Plaintext => Some(TcpSecurity::Plaintext),
        TcpMode::Off => None,
    };
    let attempts = if listen.port() == 0 { PORT_ATTEMPTS } else { 1 };
    let mut last_error = io::Error::other("no port could be bound");
    for _ in 0..attempts {
        let endpoint = tls.quic_endpoint.clone();
        let quic =
            quic::server_endpoint(listen, tls.quic.clone(), endpoint, limits, quic_options).map_err(udp)?;
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
pub(super) fn authenticated_caller(peer_certificates: Option<&[CertificateDer<'_>]>) -> Caller {
    let identity: Option<Arc<str>> =
        peer_certificates.and_then(|chain| chain.first()).and_then(tls::certificate_subject).map(Arc::from);
    if let Some(identity) = &identity {
        tracing::Span::current().record("client", &**identity);
        tracing::info!("client authenticated");
    }
    Caller::new(identity)
}

/// Says that a handshake resumed a session whose client certificate is no longer trusted (`e`): it
/// expired, or a reload replaced its CA. Any client can do so at will: throttled, in the connection's
/// span (its address).
pub(super) fn untrusted_resumption(e: &rustls::Error) {
    static UNTRUSTED: LogThrottle = LogThrottle::new();
    if let Some(HeldBack { suppressed, crowded_out }) = UNTRUSTED.admit() {
        tracing::info!(
            target: "qkv::connection",
            error = %e,
            suppressed,
            crowded_out,
            "the client certificate of the session this handshake resumed is no longer trusted; closing the connection"
        );
    }
}
