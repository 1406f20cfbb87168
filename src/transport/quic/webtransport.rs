//! Browsers on the QUIC port: a connection that chose ALPN `h3` carries an HTTP/3 WebTransport session
//! (`wtransport` speaks the HTTP/3 part). The session is a qkv connection: each bidirectional stream the
//! browser opens carries exactly one exchange (one request frame, the answer's frames, FIN), served by
//! the same loop as QUIC's own request streams. docs/PROTOCOL.md, "WebTransport".
//!
//! A session must ask for path `/`, from an allowed origin ([`Origins`]), within the request timeout
//! (handshake included). 0-RTT does not apply: `wtransport` completes the handshake before the session
//! request is read.

use std::sync::Arc;

use quinn::Connecting;
use quinn::crypto::rustls::HandshakeData;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use wtransport::endpoint::IncomingSessionFuture;

use super::listener::{
    Hold, Session, handshake_timed_out, peer_certificates, serve_connection, still_trusted,
};
use crate::metrics;
use crate::service::Handler;
use crate::tls::ClientAuth;
use crate::tls::H3_ALPN;
use crate::transport::exchange::EarlyData;
use crate::transport::log_throttle::{HeldBack, LogThrottle};
use crate::transport::origin::{Origins, host_of};
use crate::transport::{Limits, Transport, authenticated_caller};

/// The path a WebTransport session asks for: the server's root.
pub const SESSION_PATH: &str = "/";

/// Whether the connection's client chose HTTP/3: a browser about to ask for a WebTransport session.
pub(super) async fn is_browser(connecting: &mut Connecting) -> bool {
    let Ok(data) = connecting.handshake_data().await else { return false };
    data.downcast::<HandshakeData>().is_ok_and(|data| data.protocol.as_deref() == Some(H3_ALPN))
}

/// Completes the handshake, reads the session request, and serves the session if it is allowed.
pub(super) async fn accept<H: Handler>(
    connecting: Connecting,
    handler: H,
    (limits, shutdown): (Arc<Limits>, CancellationToken),
    hold: Hold,
    origins: Arc<Origins>,
    client_auth: Option<ClientAuth>,
) {
    let incoming = IncomingSessionFuture::with_quic_connecting(connecting);
    let request = match tokio::time::timeout_at(hold.handshake_deadline, incoming).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            metrics::handshake(Transport::Quic, metrics::HandshakeResult::Failed);
            debug!(error = %e, "WebTransport session failed before its request");
            return;
        }
        Err(_) => {
            return handshake_timed_out(&limits, None);
        }
    };
    metrics::handshake(Transport::Quic, metrics::HandshakeResult::Completed);
    // Any client can ask for these at will: throttled, in the connection's span (its address).
    static REFUSED: LogThrottle = LogThrottle::new();
    if request.path() != SESSION_PATH {
        if let Some(HeldBack { suppressed, crowded_out }) = REFUSED.admit() {
            info!(
                target: "qkv::connection",
                path = request.path(),
                suppressed,
                crowded_out,
                "refused a WebTransport session for another path than /"
            );
        }
        request.not_found().await;
        return;
    }
    if !origins.allows(request.origin(), host_of(request.authority())) {
        if let Some(HeldBack { suppressed, crowded_out }) = REFUSED.admit() {
            info!(
                target: "qkv::connection",
                origin = request.origin(),
                suppressed,
                crowded_out,
                "refused a WebTransport session from an origin not allowed (--web-origin)"
            );
        }
        request.forbidden().await;
        return;
    }
    let session = match request.accept().await {
        Ok(session) => session,
        Err(e) => {
            debug!(error = %e, "WebTransport session failed as it was accepted");
            return;
        }
    };
    // (Its handshake was counted completed when its session request came.)
    if !still_trusted(session.quic_connection(), client_auth.as_ref(), true) {
        return;
    }
    let caller = authenticated_caller(peer_certificates(session.quic_connection()).as_deref());
    // The handshake is complete: nothing on the session is early data.
    let handshake = EarlyData::new(std::future::ready(true));
    serve_connection(Session::WebTransport(session), handshake, handler, limits, shutdown, caller, hold).await
}
