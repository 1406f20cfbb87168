//! Everything a client call can fail with, each with a message a user can act on.

use std::path::PathBuf;
use std::time::Duration;

use quinn::{ConnectionError, ReadError, WriteError};

use crate::pb::Versioned;
use crate::tls::TlsError;
use crate::transport::frame::FrameError;
use crate::transport::quic::codes;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    #[error("no answer from {addr} within {timeout:?}: is the server running there? (QUIC uses UDP)")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error(
        "TLS handshake with {addr} failed: {reason} (the server's certificate must be signed by a CA in {} and be valid for the name dialled)",
        ca_file.display()
    )]
    Handshake { addr: String, ca_file: PathBuf, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "the server refused this client ({reason}): it requires a client certificate signed by its client CA (--cert and --key)"
    )]
    ClientCertificateRefused { reason: String },
    #[error("the server is unavailable ({reason}); the request was not executed and can be retried")]
    Unavailable { reason: String },
    #[error("the request was not sent ({reason}); it can be retried")]
    NotSent { reason: String },
    #[error("the server refused the 0-RTT early data that carried the request; it was not executed")]
    ZeroRttRejected,
    #[error("no complete answer within {0:?}; the request may or may not have been executed")]
    Timeout(Duration),
    #[error("the client has been closed")]
    Closed,
    #[error("connection to the server lost: {0}")]
    ConnectionLost(ConnectionError),
    #[error("request stream failed: {0}")]
    Stream(String),
    #[error("request of {len} bytes exceeds the maximum frame size of {max} bytes")]
    RequestTooLarge { len: u64, max: usize },
    #[error("malformed reply from the server: {0}")]
    Protocol(String),
    #[error("version conflict: the key's current version is {}", current.as_ref().map_or(0, |c| c.version))]
    Conflict { current: Option<Versioned> },
    #[error("server answered {status}: {message}")]
    Status { status: u32, message: String },
    #[error("the server ended the subscription ({status}): {reason}")]
    SubscriptionEnded { status: u32, reason: String },
    #[error("{0}")]
    Unsupported(&'static str),
}

/// TLS alerts that a server sends when it does not accept a client's certificate: bad_certificate (42),
/// unsupported_certificate (43), certificate_revoked (44), certificate_expired (45),
/// certificate_unknown (46), unknown_ca (48), access_denied (49), certificate_required (116).
fn refuses_client_certificate(alert: u8) -> bool {
    matches!(alert, 42..=46 | 48 | 49 | 116)
}

impl ClientError {
    /// True when the request certainly was not executed, so retrying it cannot apply it twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. }
                | ClientError::NotSent { .. }
                | ClientError::ZeroRttRejected
                | ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
        )
    }

    /// Whether a call that failed like this may be sent again: always when it certainly was not
    /// executed; when it may have been, only if it is idempotent, because executing it twice changes
    /// nothing. Refusals by the server (a status, a conflict) and timeouts are final.
    pub fn may_retry(&self, idempotent: bool) -> bool {
        self.is_retryable()
            || (idempotent && matches!(self, ClientError::ConnectionLost(_) | ClientError::Stream(_)))
    }

    /// A stream could not be opened: nothing of the request was sent.
    pub(crate) fn before_sending(e: ConnectionError) -> Self {
        match Self::from_connection(e) {
            ClientError::ConnectionLost(e) => ClientError::NotSent { reason: e.to_string() },
            other => other,
        }
    }

    pub(crate) fn from_connection(e: ConnectionError) -> Self {
        match &e {
            ConnectionError::ApplicationClosed(close) if close.error_code == codes::SHUTTING_DOWN => {
                ClientError::Unavailable { reason: "it is shutting down".into() }
            }
            // A TLS alert (QUIC crypto error 0x100 + alert) from the server about certificates can only
            // be about the client's: the client already verified the server's.
            ConnectionError::ConnectionClosed(close)
                if u64::from(close.error_code)
                    .checked_sub(0x100)
                    .and_then(|alert| u8::try_from(alert).ok())
                    .is_some_and(refuses_client_certificate) =>
            {
                ClientError::ClientCertificateRefused { reason: e.to_string() }
            }
            _ => ClientError::ConnectionLost(e),
        }
    }

    /// The server's TLS alert over TCP, if it refused the client's certificate (or its absence).
    pub(crate) fn from_tls_alert(e: &std::io::Error) -> Option<Self> {
        let Some(rustls::Error::AlertReceived(alert)) = e.get_ref()?.downcast_ref::<rustls::Error>() else {
            return None;
        };
        refuses_client_certificate(u8::from(*alert))
            .then(|| ClientError::ClientCertificateRefused { reason: format!("TLS alert {alert:?}") })
    }

    pub(crate) fn from_write(e: WriteError) -> Self {
        match e {
            WriteError::ConnectionLost(e) => Self::from_connection(e),
            WriteError::ZeroRttRejected => ClientError::ZeroRttRejected,
            other => ClientError::Stream(other.to_string()),
        }
    }

    pub(crate) fn from_read(e: ReadError) -> Self {
        match e {
            ReadError::ConnectionLost(e) => Self::from_connection(e),
            ReadError::ZeroRttRejected => ClientError::ZeroRttRejected,
            ReadError::Reset(code) => {
                ClientError::Stream(format!("the server reset the reply (code {code})"))
            }
            other => ClientError::Stream(other.to_string()),
        }
    }

    /// Frames are read through `AsyncRead`, which wraps quinn's `ReadError` in an `io::Error`.
    pub(crate) fn from_frame(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) => match io.into_inner().map(|inner| inner.downcast::<ReadError>()) {
                Some(Ok(read)) => Self::from_read(*read),
                Some(Err(other)) => ClientError::Stream(other.to_string()),
                None => ClientError::Stream("reading the reply failed".into()),
            },
            other => ClientError::Protocol(other.to_string()),
        }
    }
}
