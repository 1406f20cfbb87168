//! Everything a client call can fail with, each with a message a user can act on, the error that
//! caused it kept whole as its [`source`](std::error::Error::source), and a verdict a caller can act on
//! without parsing text: [`ClientError::executed`] says whether the request may have taken effect.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, ReadError, WriteError};

use crate::pb::{Versioned, status};
use crate::tls::TlsError;
use crate::transport::frame::FrameError;
use crate::transport::quic::codes;

/// Why a call (or connecting, or subscribing) failed. Match on the variant for what happened, or ask
/// [`ClientError::executed`] whether the request may have taken effect and
/// [`ClientError::may_retry`] whether sending it again is safe; [`ClientError::cause`] (and
/// `source()`) holds the error underneath, quinn's, rustls's or the socket's, as it was raised
/// ([`qkv::client::quinn`](crate::client::quinn) and [`qkv::client::rustls`](crate::client::rustls)
/// are the versions to match them with). More kinds may come: a `match` needs a wildcard arm, and
/// `executed()` and `may_retry()` answer for every kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A [`ClientConfig`](super::ClientConfig) setting is out of range or contradicts another; the
    /// message says which. Nothing was sent.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// A certificate or key file of the configuration could not be used (the CA file, or the client
    /// certificate's): the message names the file. Nothing was sent.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server's address did not resolve. Nothing was sent.
    #[error("cannot resolve {addr}: {cause}")]
    Resolve {
        /// The address as configured (`host:port`).
        addr: String,
        /// What the lookup said.
        #[source]
        cause: io::Error,
    },
    /// The client's UDP socket (QUIC) could not be opened. Nothing was sent.
    #[error("cannot open a UDP socket: {0}")]
    Socket(#[source] io::Error),
    /// No connection within [`ClientConfig::connect_timeout`](super::ClientConfig); `hint` (empty, or a parenthesised remark starting with a space) suggests what to check.
    #[error("no answer from {addr} within {timeout:?}{}: is the server running there?{hint}", each_of(*attempts))]
    #[non_exhaustive]
    ConnectTimeout {
        /// The address as configured.
        addr: String,
        /// The connect timeout that passed: one attempt's.
        timeout: Duration,
        /// How many attempts of a call tried to connect, each for up to the connect timeout (the last
        /// may have been cut short by the call's own timeout); 1 for a connection made outside a call.
        attempts: u32,
        /// Empty, or a parenthesised remark starting with a space.
        hint: &'static str,
    },
    /// The server's certificate was refused: not signed by a CA of the CA file, or not valid for the
    /// name dialled (`cause` holds rustls's `InvalidCertificate`). Nothing was sent.
    #[error(
        "TLS handshake with {addr} failed: {cause} (the server's certificate must be signed by a CA in {} and be valid for the name dialled)",
        ca_file.display()
    )]
    Handshake {
        /// The address as configured.
        addr: String,
        /// The CA file the server's certificate was checked against.
        ca_file: PathBuf,
        /// rustls's reason.
        #[source]
        cause: Cause,
    },
    /// The connection could not be established; `hint` (empty, or a parenthesised remark starting
    /// with a space) suggests what to check.
    #[error("cannot connect to {addr}: {cause}{hint}")]
    Connect {
        /// The address as configured.
        addr: String,
        /// The socket's, quinn's or rustls's error.
        #[source]
        cause: Cause,
        /// Empty, or a parenthesised remark starting with a space.
        hint: &'static str,
    },
    /// The server does not speak the protocol asked for on that port (ALPN: `qkv/1` on a qkv server's
    /// main port, `h2` on its web listener). Nothing was sent.
    #[error(
        "cannot connect to {addr}: the server did not agree to the protocol asked for (ALPN: qkv/1 on qkv's main port for QUIC, TLS and TCP; h2 on its --web listener for http and grpc)"
    )]
    NoApplicationProtocol {
        /// The address as configured.
        addr: String,
    },
    /// The server requires a client certificate signed by its client CA (mutual TLS) and refused
    /// this one, or its absence: set [`ClientConfig::client_cert`](super::ClientConfig) (the CLI's
    /// `--cert` and `--key`). Nothing was executed.
    #[error(
        "the server refused this client ({cause}): it requires a client certificate signed by its client CA (--cert and --key; in Rust, ClientConfig::client_cert)"
    )]
    ClientCertificateRefused {
        /// The TLS alert the server sent.
        #[source]
        cause: Cause,
    },
    /// The server said it did not execute the request (a 503, or a QUIC close for shutdown); `reason`
    /// is what it said.
    #[error("the server is unavailable ({reason}); the request was not executed and can be retried")]
    Unavailable {
        /// The server's message.
        reason: String,
    },
    /// The request never left the client (its connection failed first).
    #[error("the request was not sent ({cause}); it can be retried")]
    NotSent {
        /// Why the connection failed.
        #[source]
        cause: Cause,
    },
    /// A resumed QUIC connection's early data was refused by the server, the request with it: it
    /// was not executed (the client sends it again after the handshake, within its attempts).
    #[error("the server refused the 0-RTT early data that carried the request; it was not executed")]
    ZeroRttRejected,
    /// The call's [`ClientConfig::request_timeout`](super::ClientConfig) passed, retries included,
    /// without a complete answer. The request may have been executed: a timeout is final
    /// ([`ClientError::may_retry`] is false), as the call's time is spent.
    #[error("no complete answer within {0:?}; the request may or may not have been executed")]
    Timeout(Duration),
    /// A retry was sent and its answer did not come by the call's deadline; `earlier` is why the
    /// attempt before it failed. The retry may have reached the server, so whether the request was
    /// executed is unknown, even if the earlier attempt certainly was not.
    #[error(
        "no complete answer within {timeout:?} to a retry (the attempt before failed: {earlier}); the request may or may not have been executed"
    )]
    TimeoutRetrying {
        /// The call's request timeout.
        timeout: Duration,
        /// Why the attempt before the retry failed.
        #[source]
        earlier: Box<ClientError>,
    },
    /// [`Client::close`](super::Client::close) was called: nothing more is sent, and its
    /// subscriptions end with this.
    #[error("the client has been closed")]
    Closed,
    /// The connection failed after the request was sent.
    #[error(
        "connection to the server lost after the request was sent (it may or may not have been executed): {0}"
    )]
    ConnectionLost(#[source] Cause),
    /// The request's own stream failed after the request was sent; the connection may carry on.
    #[error("request stream failed: {0}")]
    Stream(#[source] Cause),
    /// The server executed the request but had no memory to hold its answer (its connection memory
    /// budget was spent: QUIC reset code 0x14).
    #[error(
        "the server executed the request but had no memory to hold its answer (its connection memory budget is spent); a read can be sent again"
    )]
    AnswerDropped,
    /// The server refused the request with an error answer it could not deliver (QUIC reset code
    /// 0x10 on the answer: its memory or the client's reading ran out); nothing was executed.
    #[error("the server refused the request and could not deliver why; it was not executed")]
    RefusedUnanswered,
    /// The server answered in another protocol than the client speaks (TLS, to a plaintext TCP
    /// client): it cannot have taken anything the client sent for a request.
    #[error("the server does not speak this transport: {0}; the request was not executed")]
    OtherProtocol(#[source] Cause),
    /// The request does not fit in a frame of the configured maximum size
    /// (`limits.max_frame_len`); nothing was sent.
    #[error("request of {len} bytes exceeds the maximum frame size of {max} bytes")]
    RequestTooLarge {
        /// The encoded request's length.
        len: u64,
        /// The largest frame the configuration allows.
        max: usize,
    },
    /// The server's reply, though well framed, did not say what the request asks for.
    #[error("malformed reply from the server: {0}")]
    Protocol(String),
    /// The server's reply was not a valid frame.
    #[error("malformed reply from the server (is it a qkv server, and does it speak this transport?): {0}")]
    MalformedReply(#[source] FrameError),
    /// A conditional write's expected version did not match (409): nothing was written. `current`
    /// is the key's value and version now (`None`: the key does not exist), to decide the next try.
    #[error("version conflict: {}", match current {
        Some(current) => format!("the key's current version is {}", current.version),
        None => "the key does not exist (version 0)".to_owned(),
    })]
    Conflict {
        /// The key's value and version now; `None` if it does not exist.
        current: Option<Versioned>,
    },
    /// The server answered with an error status (docs/PROTOCOL.md, section 8, says what each
    /// means and whether the request was executed); `message` is the server's.
    #[error("server answered {status}: {message}")]
    Status {
        /// The status code (`pb::status`).
        status: u32,
        /// The server's message.
        message: String,
    },
    /// `subscribe()` while the client holds [`ClientConfig::max_subscriptions`](super::ClientConfig)
    /// subscriptions that have not ended: refused here, nothing sent. A subscription's slot comes back
    /// once it ends (unsubscribed, ended by the server, its connection lost) or is dropped.
    #[error(
        "too many subscriptions: the client holds {limit} (ClientConfig::max_subscriptions); end one, or raise it"
    )]
    TooManySubscriptions {
        /// [`ClientConfig::max_subscriptions`](super::ClientConfig).
        limit: usize,
    },
    /// A subscription the server ended: 429 (it lagged and the lag policy is `drop`), 410 (the
    /// server is shutting down: subscribe again), 408 (its subscriber read none of it for the
    /// server's reply timeout).
    #[error("the server ended the subscription ({status}): {reason}")]
    SubscriptionEnded {
        /// 429, 410 or 408.
        status: u32,
        /// The server's message.
        reason: String,
    },
    /// The transport needs a feature this build does not have (`web-client` for HTTP and gRPC).
    #[error("{0}")]
    Unsupported(&'static str),
}

/// What failed underneath a [`ClientError`]: quinn's, rustls's and the operating system's errors as
/// they were raised, for a caller that wants more than the message (a reset code, a TLS alert, an
/// `io::ErrorKind`). Cheap to clone: a TCP connection's failure is reported to every request that was
/// waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// quinn could not start a connection (a stopped endpoint, an address it cannot send to).
    #[error(transparent)]
    QuicConnect(#[from] quinn::ConnectError),
    /// A QUIC connection failed or was closed: by the server, by this client, or by a timeout.
    #[error(transparent)]
    QuicConnection(#[from] ConnectionError),
    /// Writing the request on its QUIC stream failed.
    #[error(transparent)]
    QuicWrite(#[from] WriteError),
    /// Reading the reply from its QUIC stream failed (for example, the server reset it).
    #[error(transparent)]
    QuicRead(#[from] ReadError),
    /// TLS: rustls refused the server, or the server sent an alert.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// The socket failed.
    #[error(transparent)]
    Io(Arc<io::Error>),
    /// The bytes on a TCP connection were not a valid reply frame.
    #[error(transparent)]
    Frame(Arc<FrameError>),
    /// The server closed the connection (TCP: its end of the stream came before the answer).
    #[error("the server closed the connection")]
    ServerClosed,
    /// The server refused the connection, and said why.
    #[error("{0}")]
    Refused(String),
    /// This client closed the connection: [`Client::close`](super::Client::close), or a rebind
    /// over TCP (calls in flight on the old connection fail with it).
    #[error("the client closed the connection")]
    ClientClosed,
    /// The connection ended with nothing more said (a web transport's).
    #[error("the connection ended")]
    ConnectionEnded,
    /// The server sent a frame no request asked for: the connection is out of step, so it is
    /// dropped.
    #[error("the server sent a frame no request asked for")]
    UnaskedFrame,
    /// The call's deadline passed while the client was still connecting (or backing off between
    /// tries).
    #[error("no connection to the server within the call's deadline of {0:?}")]
    NoConnectionWithin(Duration),
    /// The call's deadline passed before its request was all sent: the connection's flow control
    /// held it back (a server that reads slowly, or requests ahead of it filling the way).
    #[error("the request could not be sent within the call's deadline of {0:?}: the connection was full")]
    NotSentWithin(Duration),
    /// HTTP/2 failed (the web transports).
    #[error(transparent)]
    Http(Arc<dyn std::error::Error + Send + Sync>),
    /// A gRPC call failed without a qkv answer.
    #[cfg(feature = "web-client")]
    #[error(transparent)]
    Grpc(Arc<tonic::Status>),
}

impl From<io::Error> for Cause {
    fn from(e: io::Error) -> Self {
        Cause::Io(Arc::new(e))
    }
}

impl From<FrameError> for Cause {
    fn from(e: FrameError) -> Self {
        Cause::Frame(Arc::new(e))
    }
}

/// Whether a request whose call failed may have taken effect on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executed {
    /// Certainly not: it never reached the server, or the server said it did not act on it (it was
    /// shutting down, refused the request, or found its condition false). Sending it again cannot
    /// apply it twice.
    No,
    /// Perhaps: it was sent, and what became of it is unknown (the connection failed, the answer
    /// came too late or garbled, the server failed while executing it).
    Maybe,
}

/// TLS alerts that a server sends when it does not accept a client's certificate: bad_certificate (42),
/// unsupported_certificate (43), certificate_revoked (44), certificate_expired (45),
/// certificate_unknown (46), unknown_ca (48), access_denied (49), certificate_required (116).
fn refuses_client_certificate(alert: u8) -> bool {
    matches!(alert, 42..=46 | 48 | 49 | 116)
}

/// How a [`ClientError::ConnectTimeout`] says that several attempts tried.
fn each_of(attempts: u32) -> String {
    if attempts > 1 { format!(" ({attempts} attempts)") } else { String::new() }
}

impl ClientError {
    /// A connect timeout of one attempt.
    pub(super) fn connect_timeout(addr: impl Into<String>, timeout: Duration, hint: &'static str) -> Self {
        ClientError::ConnectTimeout { addr: addr.into(), timeout, attempts: 1, hint }
    }

    /// This error, saying (if it is a connect timeout) that `attempts` attempts each timed out.
    pub(super) fn after_connect_timeouts(mut self, timed_out: u32) -> Self {
        if let ClientError::ConnectTimeout { attempts, .. } = &mut self {
            *attempts = timed_out.max(1);
        }
        self
    }

    /// Whether the request may have taken effect, whatever else went wrong.
    pub fn executed(&self) -> Executed {
        use ClientError::*;
        match self {
            InvalidConfig(_)
            | Tls(_)
            | Resolve { .. }
            | Socket(_)
            | ConnectTimeout { .. }
            | Handshake { .. }
            | Connect { .. }
            | NoApplicationProtocol { .. }
            // A server that refuses the client's certificate fails the handshake: it runs nothing.
            | ClientCertificateRefused { .. }
            | Unavailable { .. }
            | NotSent { .. }
            | RefusedUnanswered
            | ZeroRttRejected
            | Closed
            | RequestTooLarge { .. }
            | OtherProtocol(_)
            | Unsupported(_)
            | TooManySubscriptions { .. }
            // A conditional write whose expected version did not match wrote nothing.
            | Conflict { .. } => Executed::No,
            Status { status, .. } => match *status {
                // The request was refused before it was executed, or executing it changed nothing.
                status::BAD_REQUEST
                | status::FORBIDDEN
                | status::NOT_FOUND
                | status::REQUEST_TIMEOUT
                | status::PAYLOAD_TOO_LARGE
                // As a whole answer (a subscription's 429 end is `SubscriptionEnded`): refused.
                | status::TOO_MANY_REQUESTS
                | status::NOT_IMPLEMENTED
                | status::UNAVAILABLE
                | status::INSUFFICIENT_STORAGE => Executed::No,
                // INTERNAL_ERROR: "the command may or may not have taken effect"; and codes unknown here.
                _ => Executed::Maybe,
            },
            Timeout(_)
            | TimeoutRetrying { .. }
            | ConnectionLost(_)
            | Stream(_)
            | AnswerDropped
            | Protocol(_)
            | MalformedReply(_)
            | SubscriptionEnded { .. } => Executed::Maybe,
        }
    }

    /// Whether the same request could succeed if sent again now: the failure came from the link or the
    /// server's state, not from the request, the configuration or a deadline that has passed.
    fn is_transient(&self) -> bool {
        use ClientError::*;
        matches!(
            self,
            ConnectTimeout { .. }
                | Connect { .. }
                | Unavailable { .. }
                | NotSent { .. }
                | RefusedUnanswered
                | ZeroRttRejected
                | ConnectionLost(_)
                | Stream(_)
                | AnswerDropped
        )
    }

    /// True when the request certainly was not executed ([`Executed::No`]) and trying again could
    /// succeed, so retrying it cannot apply it twice.
    pub fn is_retryable(&self) -> bool {
        self.executed() == Executed::No && self.is_transient()
    }

    /// Whether a call that failed like this may be sent again: when it certainly was not executed,
    /// or, when it may have been, if it is idempotent (executing it twice changes nothing) — but
    /// never after a refusal by the server (a status, a conflict: the same answer would come) nor a
    /// timeout (the call's time is spent, whatever `executed()` says: a timed-out read is `false`
    /// too). A write whose fate is unknown is best sent again as a conditional write, which cannot
    /// apply twice; but its [`ClientError::Conflict`] then does not say whether the first attempt
    /// made the current version or someone else did: docs/PROTOCOL.md, section 7, says how to tell.
    pub fn may_retry(&self, idempotent: bool) -> bool {
        self.is_transient()
            && match self.executed() {
                Executed::No => true,
                Executed::Maybe => idempotent,
            }
    }

    /// The error underneath, if this one has a transport or TLS cause.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            ClientError::Handshake { cause, .. }
            | ClientError::Connect { cause, .. }
            | ClientError::ClientCertificateRefused { cause }
            | ClientError::NotSent { cause }
            | ClientError::OtherProtocol(cause)
            | ClientError::ConnectionLost(cause)
            | ClientError::Stream(cause) => Some(cause),
            _ => None,
        }
    }

    /// A stream could not be opened: nothing of the request was sent.
    pub(crate) fn before_sending(e: ConnectionError) -> Self {
        match Self::from_connection(e) {
            ClientError::ConnectionLost(cause) => ClientError::NotSent { cause },
            other => other,
        }
    }

    pub(crate) fn from_connection(e: ConnectionError) -> Self {
        match &e {
            ConnectionError::ApplicationClosed(close) if close.error_code == codes::SHUTTING_DOWN => {
                ClientError::Unavailable { reason: "it is shutting down".into() }
            }
            // A resumed session whose certificate the server no longer trusts: closed before anything
            // on the connection was served.
            ConnectionError::ApplicationClosed(close)
                if close.error_code == codes::CLIENT_CERTIFICATE_UNTRUSTED =>
            {
                ClientError::ClientCertificateRefused { cause: e.into() }
            }
            // A TLS alert (QUIC crypto error 0x100 + alert) from the server about certificates can only
            // be about the client's: the client already verified the server's.
            ConnectionError::ConnectionClosed(close)
                if u64::from(close.error_code)
                    .checked_sub(0x100)
                    .and_then(|alert| u8::try_from(alert).ok())
                    .is_some_and(refuses_client_certificate) =>
            {
                ClientError::ClientCertificateRefused { cause: e.into() }
            }
            _ => ClientError::ConnectionLost(e.into()),
        }
    }

    /// The server's TLS alert over TCP, if it refused the client's certificate (or its absence).
    pub(crate) fn certificate_alert(e: &io::Error) -> Option<rustls::Error> {
        let alert @ rustls::Error::AlertReceived(description) =
            e.get_ref()?.downcast_ref::<rustls::Error>()?
        else {
            return None;
        };
        refuses_client_certificate(u8::from(*description)).then(|| alert.clone())
    }

    /// Writing the request failed before its stream was finished: the server executes a request only
    /// once it has its stream's end (docs/PROTOCOL.md, section 2.1), so this one was not executed.
    pub(crate) fn before_finish(e: WriteError) -> Self {
        match Self::from_write(e) {
            ClientError::ConnectionLost(cause) | ClientError::Stream(cause) => ClientError::NotSent { cause },
            other => other,
        }
    }

    pub(crate) fn from_write(e: WriteError) -> Self {
        match e {
            WriteError::ConnectionLost(e) => Self::from_connection(e),
            WriteError::ZeroRttRejected => ClientError::ZeroRttRejected,
            other => ClientError::Stream(other.into()),
        }
    }

    pub(crate) fn from_read(e: ReadError) -> Self {
        match e {
            ReadError::ConnectionLost(e) => Self::from_connection(e),
            ReadError::ZeroRttRejected => ClientError::ZeroRttRejected,
            ReadError::Reset(code) if code == codes::ANSWER_DROPPED => ClientError::AnswerDropped,
            ReadError::Reset(code) if code == codes::REQUEST_REJECTED => ClientError::RefusedUnanswered,
            other => ClientError::Stream(other.into()),
        }
    }

    /// Frames are read through `AsyncRead`, which wraps quinn's `ReadError` (or, over TLS, rustls's
    /// error) in an `io::Error`.
    pub(crate) fn from_frame(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) => {
                if let Some(read) = io.get_ref().and_then(|inner| inner.downcast_ref::<ReadError>()) {
                    return Self::from_read(read.clone());
                }
                match Self::certificate_alert(&io) {
                    Some(alert) => ClientError::ClientCertificateRefused { cause: alert.into() },
                    None => ClientError::Stream(io.into()),
                }
            }
            other => ClientError::MalformedReply(other),
        }
    }

    /// A request that cannot be framed: the only way is to be too large.
    pub(crate) fn from_encode(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { declared, max } => ClientError::RequestTooLarge { len: declared, max },
            other => ClientError::Protocol(format!("the request could not be framed: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use quinn::VarInt;

    use super::*;

    fn lost() -> ConnectionError {
        ConnectionError::TimedOut
    }

    #[test]
    fn failures_before_sending_are_not_executed_and_retryable() {
        for error in [
            ClientError::before_sending(lost()),
            ClientError::NotSent { cause: Cause::NoConnectionWithin(Duration::from_secs(1)) },
            ClientError::Unavailable { reason: "shutting down".into() },
            ClientError::from_write(WriteError::ZeroRttRejected),
            ClientError::Connect { addr: "a:1".into(), cause: Cause::ServerClosed, hint: "" },
            // A refusal whose error answer the server could not deliver.
            ClientError::from_read(ReadError::Reset(codes::REQUEST_REJECTED)),
        ] {
            assert_eq!(error.executed(), Executed::No, "{error}");
            assert!(error.is_retryable() && error.may_retry(false), "{error}");
        }
    }

    #[test]
    fn failures_after_sending_may_have_executed_and_are_retried_only_when_idempotent() {
        for error in [
            ClientError::from_connection(lost()),
            ClientError::from_read(ReadError::Reset(VarInt::from_u32(3))),
            ClientError::from_write(WriteError::Stopped(VarInt::from_u32(0))),
            ClientError::from_frame(FrameError::Io(io::Error::from(io::ErrorKind::ConnectionReset))),
        ] {
            assert_eq!(error.executed(), Executed::Maybe, "{error}");
            assert!(!error.is_retryable(), "{error}");
            assert!(error.may_retry(true) && !error.may_retry(false), "{error}");
        }
    }

    #[test]
    fn final_answers_are_never_retried() {
        let conflict = ClientError::Conflict { current: None };
        let refused = ClientError::Status { status: status::BAD_REQUEST, message: "no".into() };
        let failed = ClientError::Status { status: status::INTERNAL_ERROR, message: "disk".into() };
        let late = ClientError::Timeout(Duration::from_secs(1));
        let garbled = ClientError::from_frame(FrameError::Truncated { buffered: 3 });
        assert_eq!((conflict.executed(), refused.executed()), (Executed::No, Executed::No));
        assert_eq!((failed.executed(), late.executed()), (Executed::Maybe, Executed::Maybe));
        assert_eq!(garbled.executed(), Executed::Maybe);
        for error in [conflict, refused, failed, late, garbled] {
            assert!(!error.may_retry(true) && !error.is_retryable(), "{error}");
        }
    }

    #[test]
    fn typed_causes_are_kept_as_sources() {
        let reset = ClientError::from_read(ReadError::Reset(VarInt::from_u32(7)));
        assert!(
            matches!(reset.cause(), Some(Cause::QuicRead(ReadError::Reset(code))) if *code == VarInt::from_u32(7))
        );
        assert!(reset.source().is_some());

        // quinn wraps its ReadError in an io::Error under AsyncRead: it is taken out again.
        let wrapped = io::Error::other(ReadError::ConnectionLost(lost()));
        let error = ClientError::from_frame(FrameError::Io(wrapped));
        assert!(matches!(error.cause(), Some(Cause::QuicConnection(ConnectionError::TimedOut))), "{error:?}");

        // A TLS alert about the client's certificate, under TLS over TCP.
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let error =
            ClientError::from_frame(FrameError::Io(io::Error::new(io::ErrorKind::InvalidData, alert)));
        assert!(matches!(error, ClientError::ClientCertificateRefused { cause: Cause::Tls(_) }), "{error:?}");
        assert_eq!(error.executed(), Executed::No);

        let socket = ClientError::Socket(io::Error::from(io::ErrorKind::AddrInUse));
        let source = socket.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::AddrInUse));
    }

    #[test]
    fn messages_still_say_what_happened() {
        let shutdown =
            ClientError::from_connection(ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: codes::SHUTTING_DOWN,
                reason: "bye".into(),
            }));
        assert!(shutdown.to_string().contains("not executed"), "{shutdown}");
        let refused = ClientError::Connect {
            addr: "db:9527".into(),
            cause: io::Error::from(io::ErrorKind::ConnectionRefused).into(),
            hint: " (is the server running, with TCP on?)",
        };
        assert_eq!(
            refused.to_string(),
            "cannot connect to db:9527: connection refused (is the server running, with TCP on?)"
        );
        let reset = ClientError::from_read(ReadError::Reset(VarInt::from_u32(3)));
        assert!(reset.to_string().contains("reset"), "{reset}");
    }
}
