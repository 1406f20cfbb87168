//! The typed async client. One connection at a time, shared by every clone of the [`Client`] and by
//! any number of concurrent calls: over QUIC each call is a request on a stream of its own; over TCP
//! (TLS or plaintext) the calls are pipelined on the connection and answered in order.
//!
//! Made for links that fail: a lost connection is replaced on the next call (at once, then with
//! exponential backoff and jitter while attempts fail); a call that failed where it certainly was not
//! executed, or a read-only one, is sent again; every call has a deadline; a resumed QUIC connection
//! sends its first requests in 0-RTT early data; [`Client::rebind`] moves a QUIC connection to a new
//! local socket without losing it (for an app's network-change callback).
//!
//! ```no_run
//! # async fn demo() -> Result<(), qkv::client::ClientError> {
//! let client = qkv::Client::connect("127.0.0.1:9527", "certs/ca.pem").await?;
//! let written = client.hset("users", "ada", "Ada Lovelace").await?;
//! let current = client.hget("users", "ada").await?.expect("just written");
//! assert_eq!(current.version, written.version);
//! # Ok(()) }
//! ```

mod backoff;
mod endpoint;
mod error;
mod frames;
mod inbox;
mod quic;
mod subscription;
mod tcp;
#[cfg(feature = "web-client")]
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The quinn a [`Cause`] holds the errors of, to match them with (`Cause::QuicConnection(quinn::ConnectionError::Reset)`).
pub use quinn;
/// The rustls a [`Cause`] holds the errors of, to match them with (`Cause::Tls(rustls::Error::AlertReceived(..))`).
pub use rustls;

pub use backoff::RetryPolicy;
pub use endpoint::ClientEndpoint;
pub use error::{Cause, ClientError, Executed};
pub use frames::ResponseFrames;
pub use inbox::SubscriptionQueue;
pub use subscription::{Event, Subscription};

use crate::pb::command_request::RequestData;
use crate::pb::{CommandRequest, CommandResponse, Kvpair, Value, Versioned, status, value};
use crate::tls::{ClientCertFiles, Tickets};
use crate::transport::frame::encode_frame;
use crate::transport::quic::QuicOptions;
use crate::transport::{Limits, Transport};
use backoff::Backoff;

/// What a client call returns.
pub type ClientResult<T> = Result<T, ClientError>;

/// How often a client keeps an idle connection alive unless told otherwise ([`ClientConfig::keep_alive`],
/// `--keep-alive`). QUIC closes a connection idle for the smaller of the two sides' idle timeouts, so
/// a server whose `--idle-timeout` is not well above this closes its default clients' quiet
/// connections; it warns at start when it is under three times this.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How to reach a server, and how to behave on a link that fails.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`; the host may be a DNS name or an IP address. A name is resolved once, when the
    /// client (or its [`ClientEndpoint`]) is made: connections made again later go to the same address.
    /// To follow a name that moves (a DNS failover), make a new client.
    pub addr: String,
    /// QUIC (the default), TLS over TCP, or plaintext TCP.
    pub transport: Transport,
    /// PEM file of the CA certificates the server's certificate must chain to (unused for plaintext).
    pub ca_file: PathBuf,
    /// Name to verify the certificate against; defaults to the host part of `addr`.
    pub server_name: Option<String>,
    /// Certificate and key to present to servers that require client certificates (mutual TLS).
    pub client_cert: Option<ClientCertFiles>,
    /// Frame size, idle timeout and socket buffers; the server's limits apply on its side.
    pub limits: Limits,
    /// How long to wait for a connection: over TCP and TLS for the TCP connection and the TLS
    /// handshake together, over QUIC for the handshake.
    pub connect_timeout: Duration,
    /// Deadline of a whole call, from the call until its complete answer, retries included.
    pub request_timeout: Duration,
    /// Interval of keep-alives on an idle connection (QUIC PINGs; qkv Pings over TCP): well under
    /// the idle timeout, and under the 30 s after which many NATs forget a UDP binding.
    pub keep_alive: Duration,
    /// Congestion controller, initial RTT and segmentation offload of QUIC connections.
    pub quic: QuicOptions,
    /// Session tickets for resumption. Clones of a config share them, so clients made from clones
    /// resume each other's sessions.
    pub tickets: Tickets,
    /// Send the first requests of a resumed QUIC connection in 0-RTT early data.
    pub zero_rtt: bool,
    /// Retries and reconnection backoff.
    pub retry: RetryPolicy,
    /// How much of each subscription that shares the client's connection (QUIC's, or HTTP/2's for
    /// REST, gRPC and gRPC pipelines) the client holds while its subscriber has not read it; beyond it,
    /// messages are dropped and reported as [`Event::Missed`]. `None`: a subscription is read from its
    /// stream only as its subscriber reads, so the server's flow control and lag policy
    /// (`--lag-policy drop` included) apply to it, but subscriptions left unread stall every call on
    /// the connection once they have filled its receive window. Over TCP and TLS a subscription has a
    /// connection of its own, read as its subscriber reads.
    pub subscription_queue: Option<SubscriptionQueue>,
    /// Subscriptions the client holds at once (until each ends or is dropped); `subscribe()` beyond
    /// it fails at once with [`ClientError::TooManySubscriptions`], sending nothing. At least one. Over QUIC each holds one of the connection's
    /// streams for its life, and the server runs at most `--max-concurrent-requests` (256) of a
    /// connection's streams: beyond them every call would wait for a stream that never frees. Over
    /// TCP and TLS each has a connection of its own, which counts against the server's connection
    /// limit. Default 128, half of the server's default streams, leaving the rest to calls.
    pub max_subscriptions: usize,
}

/// Subscriptions a client holds at once by default ([`ClientConfig::max_subscriptions`]).
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 128;

impl ClientConfig {
    /// The defaults, for the server at `addr` (`host:port`), trusting the CA certificates in
    /// `ca_file` (PEM): QUIC, the server's name taken from `addr`, 0-RTT on, 3 attempts a call.
    pub fn new(addr: impl Into<String>, ca_file: impl Into<PathBuf>) -> Self {
        ClientConfig {
            addr: addr.into(),
            transport: Transport::Quic,
            ca_file: ca_file.into(),
            server_name: None,
            client_cert: None,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_alive: DEFAULT_KEEP_ALIVE,
            quic: QuicOptions::default(),
            tickets: Tickets::default(),
            zero_rtt: true,
            retry: RetryPolicy::default(),
            subscription_queue: Some(SubscriptionQueue::default()),
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
        }
    }
}

/// The longest connect or request timeout a client takes (a year): long enough to mean "wait", short
/// enough that a deadline computed from it cannot overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

impl ClientConfig {
    /// Checks that the settings can work together; the error says which to change.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
            ("keep-alive interval", self.keep_alive),
        ] {
            if value.is_zero() {
                return Err(format!("the {name} must be longer than zero"));
            }
        }
        // A deadline is now + the timeout (a wait, now + the backoff): `Duration::MAX` ("no timeout")
        // would overflow it.
        for (name, value) in [
            ("connect timeout", self.connect_timeout),
            ("request timeout", self.request_timeout),
            ("initial backoff", self.retry.initial_backoff),
            ("maximum backoff", self.retry.max_backoff),
        ] {
            if value > MAX_TIMEOUT {
                return Err(format!("the {name} ({value:?}) must be at most a year ({MAX_TIMEOUT:?})"));
            }
        }
        if self.keep_alive >= self.limits.idle_timeout {
            return Err(format!(
                "the keep-alive interval ({:?}) must be shorter than the idle timeout ({:?}), or idle connections close",
                self.keep_alive, self.limits.idle_timeout
            ));
        }
        if self.retry.attempts == 0 {
            return Err("a call needs at least one attempt".into());
        }
        if self.max_subscriptions == 0 {
            return Err("max_subscriptions must be at least one".into());
        }
        if self.subscription_queue.is_some_and(|queue| queue.messages == 0) {
            return Err("a subscription's queue must hold at least one message".into());
        }
        Ok(())
    }
}

/// The result of a successful write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// What the key held before, if anything.
    pub previous: Option<Value>,
    /// The key's version now (0 after a delete).
    pub version: u64,
}

/// What a client has done so far, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(serde::Serialize, serde::Deserialize))]
pub struct ClientStats {
    /// Connections established, the first included.
    pub connections: u64,
    /// QUIC connections whose 0-RTT early data the server accepted.
    pub zero_rtt_accepted: u64,
    /// QUIC connections whose 0-RTT early data the server refused (their requests were sent again).
    pub zero_rtt_rejected: u64,
    /// TLS-over-TCP connections that resumed a session.
    pub resumed: u64,
    /// Calls sent again after a failure, and first connections tried again after a refusal.
    pub retries: u64,
    /// QUIC packets the closed connections sent.
    #[cfg_attr(feature = "cli", serde(default))]
    pub packets_sent: u64,
    /// QUIC packets the closed connections took for lost (quinn's loss detection; on a path that
    /// loses nothing, a late acknowledgement).
    #[cfg_attr(feature = "cli", serde(default))]
    pub packets_lost: u64,
}

impl std::ops::AddAssign for ClientStats {
    fn add_assign(&mut self, other: ClientStats) {
        self.connections += other.connections;
        self.zero_rtt_accepted += other.zero_rtt_accepted;
        self.zero_rtt_rejected += other.zero_rtt_rejected;
        self.resumed += other.resumed;
        self.retries += other.retries;
        self.packets_sent += other.packets_sent;
        self.packets_lost += other.packets_lost;
    }
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    zero_rtt_accepted: AtomicU64,
    zero_rtt_rejected: AtomicU64,
    resumed: AtomicU64,
    retries: AtomicU64,
    packets_sent: AtomicU64,
    packets_lost: AtomicU64,
}

/// A client of a qkv server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What a client is to a person reading a log: where it goes, how, and whether it was closed.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.config.addr)
            .field("transport", &self.inner.config.transport)
            .field("remote", &self.remote_address())
            .field("closed", &self.inner.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

// Applications hold these in their own types, which derive Debug.
const _: fn() = || {
    fn debug<T: std::fmt::Debug>() {}
    debug::<Client>();
    debug::<ClientEndpoint>();
    debug::<Subscription>();
};

struct Inner {
    config: ClientConfig,
    server_name: String,
    remote: SocketAddr,
    /// `None` for plaintext TCP.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// QUIC only: the endpoint (one UDP socket) that every connection of this client uses.
    endpoint: Option<quinn::Endpoint>,
    /// QUIC only: the settings of this client's connections (an endpoint may carry other clients').
    quic: Option<quinn::ClientConfig>,
    /// Whether other clients use the endpoint too (made by [`ClientEndpoint::connect`]): then closing
    /// this client does not wait for the endpoint to fall idle, and rebinding it moves them all.
    endpoint_shared: bool,
    /// The connection calls use; replaced when it is found broken.
    current: parking_lot::Mutex<Option<Connection>>,
    /// Held while connecting, so that concurrent calls wait for one new connection.
    reconnect: tokio::sync::Mutex<Backoff>,
    /// Cancelled by [`Client::close`]: calls and subscriptions end.
    closed: CancellationToken,
    /// Subscriptions held now (at most `config.max_subscriptions`).
    subscriptions: Arc<AtomicUsize>,
    stats: Arc<Stats>,
}

#[derive(Clone)]
enum Connection {
    Quic(quic::QuicConnection),
    Tcp(Arc<tcp::TcpConnection>),
    #[cfg(feature = "web-client")]
    Web(web::WebConnection),
}

impl Connection {
    fn is_usable(&self) -> bool {
        match self {
            Connection::Quic(quic) => quic.is_usable(),
            Connection::Tcp(tcp) => tcp.is_usable(),
            #[cfg(feature = "web-client")]
            Connection::Web(web) => web.is_usable(),
        }
    }
}

impl Client {
    /// Connects over QUIC to `addr` (`host:port`), trusting the CA certificates in `ca_file`.
    pub async fn connect(addr: &str, ca_file: impl Into<PathBuf>) -> ClientResult<Self> {
        Self::connect_with(ClientConfig::new(addr, ca_file)).await
    }

    /// Connects as `config` says, on an endpoint (a UDP socket, over QUIC) of its own. Returns once the
    /// connection is established, or at once when it is resumed in 0-RTT. A server that refuses the
    /// connection (restarting, shutting down, at its connection limit) is tried again after the
    /// reconnection backoff, as many times as the retry policy's attempts allow, all within the request
    /// timeout (each attempt for up to the connect timeout), as a call's retries would; a connect
    /// timeout is not tried again (it has waited already: a call made later tries again).
    pub async fn connect_with(config: ClientConfig) -> ClientResult<Self> {
        Self::connect_on(&ClientEndpoint::new(config).await?, false).await
    }

    /// A client on `endpoint`, connected; `shared` when other clients may use the endpoint too.
    async fn connect_on(endpoint: &ClientEndpoint, shared: bool) -> ClientResult<Self> {
        let client = Self::on(endpoint, shared);
        let config = &client.inner.config;
        let deadline = Instant::now() + config.request_timeout;
        // The first attempt as well: a connect timeout longer than the request timeout must not
        // make the client wait past it.
        let mut error = match tokio::time::timeout_at(deadline, client.connection()).await {
            Ok(Ok(_)) => return Ok(client),
            Ok(Err(e)) => e,
            // Said as a connect timeout of the request timeout's length, with its hint.
            Err(_) => {
                let hint = if config.transport == Transport::Quic { quic::UDP_HINT } else { "" };
                return Err(ClientError::connect_timeout(&config.addr, config.request_timeout, hint));
            }
        };
        for attempt in 2..=config.retry.attempts {
            if !error.is_retryable() || matches!(error, ClientError::ConnectTimeout { .. }) {
                break;
            }
            client.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %error, attempt, "connecting again");
            error = match tokio::time::timeout_at(deadline, client.connection()).await {
                Ok(Ok(_)) => return Ok(client),
                Ok(Err(e)) => e,
                // Out of time for another: what the last attempt found.
                Err(_) => break,
            };
        }
        Err(error)
    }

    /// A client on `endpoint` that connects when first used.
    fn on(endpoint: &ClientEndpoint, shared: bool) -> Self {
        Client {
            inner: Arc::new(Inner {
                config: endpoint.config.clone(),
                server_name: endpoint.server_name.clone(),
                remote: endpoint.remote,
                tls: endpoint.tls.clone(),
                endpoint: endpoint.endpoint.clone(),
                quic: endpoint.quic.clone(),
                endpoint_shared: shared,
                current: parking_lot::Mutex::new(None),
                reconnect: tokio::sync::Mutex::new(Backoff::default()),
                closed: CancellationToken::new(),
                subscriptions: Arc::new(AtomicUsize::new(0)),
                stats: Arc::default(),
            }),
        }
    }

    /// The current connection if it still works; otherwise a new one (one for all concurrent callers,
    /// after the backoff that earlier failures call for).
    async fn connection(&self) -> ClientResult<Connection> {
        let inner = &self.inner;
        let usable = || inner.current.lock().clone().filter(Connection::is_usable);
        if let Some(connection) = usable() {
            return Ok(connection);
        }
        let mut backoff = inner.reconnect.lock().await;
        // Another caller may have reconnected while this one waited.
        if let Some(connection) = usable() {
            return Ok(connection);
        }
        if inner.closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        let wait = backoff.delay(&inner.config.retry, &mut rand::rng());
        tokio::time::sleep(wait).await;
        match self.open().await {
            Ok(connection) => {
                backoff.succeeded();
                inner.stats.connections.fetch_add(1, Ordering::Relaxed);
                {
                    let mut current = inner.current.lock();
                    // `close()` may have run while this one was opened, and found no connection to close:
                    // kept, it served calls after the close, and kept the close waiting for ever.
                    if !inner.closed.is_cancelled() {
                        *current = Some(connection.clone());
                        return Ok(connection);
                    }
                }
                close_connection(Some(connection), &inner.stats).await;
                Err(ClientError::Closed)
            }
            Err(e) => {
                backoff.failed();
                Err(e)
            }
        }
    }

    async fn open(&self) -> ClientResult<Connection> {
        let inner = &self.inner;
        let (config, name, remote) = (&inner.config, inner.server_name.as_str(), inner.remote);
        Ok(match (&inner.endpoint, &inner.quic) {
            (Some(endpoint), Some(quic)) => Connection::Quic(
                quic::QuicConnection::connect(endpoint, quic, config, name, remote, &inner.stats).await?,
            ),
            #[cfg(feature = "web-client")]
            _ if config.transport == Transport::GrpcPipeline => {
                let tls = inner.tls.clone().ok_or(ClientError::Unsupported("the web transports need TLS"))?;
                let (stream, more) = web::open_pipeline(config, tls, name, remote, &inner.stats).await?;
                Connection::Tcp(Arc::new(tcp::TcpConnection::start(stream, remote, config, Some(more))))
            }
            #[cfg(feature = "web-client")]
            _ if config.transport.is_web() => {
                let tls = inner.tls.clone().ok_or(ClientError::Unsupported("the web transports need TLS"))?;
                Connection::Web(web::WebConnection::connect(config, tls, name, remote, &inner.stats).await?)
            }
            #[cfg(not(feature = "web-client"))]
            _ if config.transport.is_web() => {
                return Err(ClientError::Unsupported(
                    "the web transports need the crate's `web-client` feature",
                ));
            }
            _ => Connection::Tcp(Arc::new(
                tcp::TcpConnection::connect(config, inner.tls.clone(), name, remote, &inner.stats).await?,
            )),
        })
    }

    /// Sends one request and returns its reply as a stream of frames, for answers too large to collect.
    /// The request deadline covers the wait for the first frame; the rest come as the caller reads.
    pub async fn call_frames(&self, request: &CommandRequest) -> ClientResult<ResponseFrames> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        self.call_frames_until(request, deadline, &mut 0).await
    }

    /// `attempts`: how many attempts the call has made before (a read whose answer broke off after
    /// its first frame, `Client::call`); counted on, so that a call makes at most the policy's
    /// attempts in all.
    async fn call_frames_until(
        &self,
        request: &CommandRequest,
        deadline: Instant,
        attempts: &mut u32,
    ) -> ClientResult<ResponseFrames> {
        let max_frame_len = self.inner.config.limits.max_frame_len;
        let frame = encode_frame(request, max_frame_len).map_err(ClientError::from_encode)?;
        if let Some(RequestData::Subscribe(_)) = request.request_data {
            // Over TCP its endless answer would hold up every call after it on the shared connection.
            return Err(ClientError::Unsupported(
                "a Subscribe is sent with Client::subscribe, not as a call",
            ));
        }
        let idempotent = request.is_idempotent();
        *attempts += 1;
        let attempt = attempts;
        let retry = &self.inner.config.retry;
        // The first failure of an attempt that may have reached the server: once there is one, no
        // later failure can make the call certainly not executed.
        let mut reached: Option<ClientError> = None;
        let mut last_error = None;
        // The last attempt was answered 503: the next waits a moment for what the server lacked.
        let mut refused_for_now = false;
        // Attempts that found no server within the connect timeout, for the error to say so.
        let mut connect_timeouts = 0;
        loop {
            // Until there is a connection nothing has been sent: running out of time then leaves the
            // request certainly not executed, unless an earlier attempt may have run it.
            let sent = match tokio::time::timeout_at(deadline, self.connection()).await {
                Ok(Ok(connection)) => {
                    self.send_until(connection, request, frame.clone(), max_frame_len, deadline).await
                }
                Ok(Err(e)) => Some(Err(e)),
                Err(_) => {
                    let cause = Cause::NoConnectionWithin(self.inner.config.request_timeout);
                    let error = reached.or(last_error).unwrap_or(ClientError::NotSent { cause });
                    // The call's timeout cut this attempt's connecting short: it tried too.
                    return Err(error.after_connect_timeouts(connect_timeouts + 1));
                }
            };
            let error = match sent {
                // A 503 was not executed, for want of what comes back (PROTOCOL.md, section 8): it is
                // sent again as the other refusals are, while attempts are left; the last is answered.
                Some(Ok(frames)) => match frames.unavailable() {
                    Some(reason) if *attempt < retry.attempts => {
                        refused_for_now = true;
                        ClientError::Unavailable { reason }
                    }
                    _ => return Ok(frames),
                },
                Some(Err(e)) => e,
                // This attempt was sent and its answer did not come in time: the server may have
                // executed it, whatever became of the attempts before.
                None => return Err(self.timed_out_retrying(reached.or(last_error))),
            };
            self.forget_tickets_if_refused(&error);
            if matches!(error, ClientError::ConnectTimeout { .. }) {
                connect_timeouts += 1;
            }
            let out_of_time = Instant::now() >= deadline;
            if out_of_time || *attempt >= retry.attempts || !error.may_retry(idempotent) {
                let error = match (error.executed(), reached) {
                    (Executed::No, Some(earlier)) => earlier,
                    _ => error,
                };
                return Err(error.after_connect_timeouts(connect_timeouts));
            }
            *attempt += 1;
            if std::mem::take(&mut refused_for_now) {
                // Three attempts at once would only triple the load on a server short of memory.
                tokio::time::sleep_until((Instant::now() + self.pause_before(*attempt)).min(deadline)).await;
            }
            self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %error, attempt = *attempt, "sending the request again");
            match error.executed() {
                Executed::Maybe if reached.is_none() => reached = Some(error),
                _ => last_error = Some(error),
            }
        }
    }

    /// A server that refused this client's certificate may have done so for a session it resumed: its
    /// tickets are forgotten, so that the next connection makes a full handshake, whose refusal says
    /// why (an expired certificate, say), or which a renewed certificate passes.
    fn forget_tickets_if_refused(&self, error: &ClientError) {
        if let ClientError::ClientCertificateRefused { .. } = error {
            self.inner.config.tickets.forget(&self.inner.server_name);
        }
    }

    /// How long to pause before attempt number `attempt` (2 and on) of a call the server refused for
    /// now (503): full jitter over a bound that doubles per attempt, as reconnections wait.
    fn pause_before(&self, attempt: u32) -> Duration {
        let policy = &self.inner.config.retry;
        let bound = policy
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(2).min(30))
            .min(policy.max_backoff);
        bound.mul_f64(rand::random::<f64>())
    }

    /// One attempt on `connection`, up to the first frame of the answer; `None` once `deadline` passes.
    async fn send_until(
        &self,
        connection: Connection,
        request: &CommandRequest,
        frame: Bytes,
        max_frame_len: usize,
        deadline: Instant,
    ) -> Option<ClientResult<ResponseFrames>> {
        match connection {
            Connection::Quic(quic) => {
                quic.call(frame, max_frame_len, deadline, request.is_idempotent()).await
            }
            // Not pushed by the deadline (the connection full): certainly not sent, and the
            // connection is left as it is.
            Connection::Tcp(tcp) => match tokio::time::timeout_at(deadline, tcp.send(frame)).await {
                Err(_) => {
                    let cause = Cause::NotSentWithin(self.inner.config.request_timeout);
                    Some(Err(ClientError::NotSent { cause }))
                }
                Ok(sent) => first_frame_until(deadline, std::future::ready(sent)).await,
            },
            #[cfg(feature = "web-client")]
            Connection::Web(web) => {
                first_frame_until(deadline, web.send(request, self.inner.config.request_timeout)).await
            }
        }
    }

    /// The deadline passed. Over TCP the connection is given up too: the late answer holds back every
    /// answer behind it. Over QUIC only this request's stream is abandoned.
    fn timed_out(&self) -> ClientError {
        if let Some(Connection::Tcp(tcp)) = self.inner.current.lock().as_ref() {
            tcp.abandon();
        }
        ClientError::Timeout(self.inner.config.request_timeout)
    }

    /// [`Client::timed_out`] for an attempt after a failed one, keeping why the first failed.
    fn timed_out_retrying(&self, earlier: Option<ClientError>) -> ClientError {
        let timeout = self.timed_out();
        match earlier {
            None => timeout,
            Some(earlier) => ClientError::TimeoutRetrying {
                timeout: self.inner.config.request_timeout,
                earlier: Box::new(earlier),
            },
        }
    }

    /// Moves the client to a new local UDP socket (a new port, and the address the system now routes
    /// from), keeping its QUIC connection: for an app's network-change callback. The server sees the
    /// connection migrate and carries on, and so do the calls in flight and the subscriptions. On a
    /// [`ClientEndpoint`] shared with other clients this moves the endpoint, so every client on it
    /// moves too. Over TCP, where a connection cannot move, the connection is closed instead and the
    /// next call opens a new one: calls in flight on it fail ([`Cause::ClientClosed`], their outcome
    /// unknown), and subscriptions, which have connections of their own, are left as they are (one on
    /// a network that is gone ends with a lost connection once TCP gives up on it, or is dropped and
    /// made again by the app).
    pub fn rebind(&self) -> ClientResult<()> {
        match &self.inner.endpoint {
            Some(endpoint) => endpoint::rebind(endpoint, self.inner.remote, &self.inner.config),
            None => {
                let mut current = self.inner.current.lock();
                match current.as_ref() {
                    Some(Connection::Tcp(tcp)) => tcp.abandon(),
                    // The next call opens a new connection; calls in flight finish on the old one.
                    _ => *current = None,
                }
                Ok(())
            }
        }
    }

    /// The local address the client sends from (for QUIC, its endpoint's socket, which the clients of a
    /// shared [`ClientEndpoint`] have in common); `None` over TCP and TLS, whose connections come and go.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.inner.endpoint.as_ref().and_then(|endpoint| endpoint.local_addr().ok())
    }

    /// What the client has done so far.
    pub fn stats(&self) -> ClientStats {
        let stats = &self.inner.stats;
        ClientStats {
            connections: stats.connections.load(Ordering::Relaxed),
            zero_rtt_accepted: stats.zero_rtt_accepted.load(Ordering::Relaxed),
            zero_rtt_rejected: stats.zero_rtt_rejected.load(Ordering::Relaxed),
            resumed: stats.resumed.load(Ordering::Relaxed),
            retries: stats.retries.load(Ordering::Relaxed),
            packets_sent: stats.packets_sent.load(Ordering::Relaxed),
            packets_lost: stats.packets_lost.load(Ordering::Relaxed),
        }
    }

    /// Sends one request and returns its whole reply: the frames' values, pairs and versions
    /// concatenated, with the status and message of the last frame. Any status is returned as is,
    /// but a 503 (not executed) is first sent again within the retry policy's attempts, after a
    /// jittered pause; the last attempt's answer is returned. The request deadline covers the whole
    /// reply.
    pub async fn call(&self, request: &CommandRequest) -> ClientResult<CommandResponse> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        // A read-only request whose answer broke off after its first frame (a lost connection, a reset
        // stream) is sent again too, within the call's attempts and deadline, as one that failed
        // before its first frame is (`call_frames_until`): it changes nothing.
        let mut attempts = 0;
        loop {
            let mut frames = self.call_frames_until(request, deadline, &mut attempts).await?;
            let collected = tokio::time::timeout_at(deadline, collect(&mut frames)).await;
            match collected {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(e))
                    if request.is_idempotent()
                        && e.may_retry(true)
                        && attempts < self.inner.config.retry.attempts
                        && Instant::now() < deadline =>
                {
                    self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "the answer broke off; sending the request again");
                }
                Ok(collected) => return collected,
            }
        }
    }

    /// Round trip with an arbitrary payload, which the server echoes.
    pub async fn ping(&self, payload: impl Into<Bytes>) -> ClientResult<Bytes> {
        let response = ok(self.call(&CommandRequest::ping(payload)).await?)?;
        match response.values.into_iter().next().and_then(|v| v.value) {
            Some(value::Value::Binary(payload)) => Ok(payload),
            other => Err(ClientError::Protocol(format!("Ping answered with {other:?}"))),
        }
    }

    /// Who the server takes this client for: the subject of the client certificate it presented
    /// (e.g. `CN=alice`), or `None` when the server does not require client certificates.
    pub async fn whoami(&self) -> ClientResult<Option<String>> {
        let response = ok(self.call(&CommandRequest::ping(Bytes::new())).await?)?;
        match response.values.into_iter().nth(1).and_then(|v| v.value) {
            None => Ok(None),
            Some(value::Value::String(identity)) => Ok(Some(identity)),
            Some(other) => Err(ClientError::Protocol(format!("Ping answered an identity of {other:?}"))),
        }
    }

    /// The key's value and version, or `None` when it does not exist.
    pub async fn hget(&self, table: &str, key: &str) -> ClientResult<Option<Versioned>> {
        let response = self.call(&CommandRequest::hget(table, key)).await?;
        if response.status == status::NOT_FOUND {
            return Ok(None);
        }
        Ok(versioned_values(ok(response)?).into_iter().next().flatten())
    }

    /// One answer per key, in order; `None` for keys that do not exist. Keys may be `&str`s or
    /// `String`s (`&["a", "b"]`, `&names`).
    pub async fn hmget(&self, table: &str, keys: &[impl AsRef<str>]) -> ClientResult<Vec<Option<Versioned>>> {
        let response = self.call(&CommandRequest::hmget(table, keys.iter().map(AsRef::as_ref))).await?;
        Ok(versioned_values(ok(response)?))
    }

    /// Every key of the table with its value and version, in no particular order.
    pub async fn hgetall(&self, table: &str) -> ClientResult<Vec<(String, Versioned)>> {
        let response = ok(self.call(&CommandRequest::hgetall(table)).await?)?;
        let mut versions = response.versions.into_iter();
        Ok(response
            .pairs
            .into_iter()
            .map(|pair| {
                let version = versions.next().unwrap_or_default();
                (pair.key, Versioned { value: pair.value.unwrap_or_default(), version })
            })
            .collect())
    }

    /// Sets `key` in `table` to `value`; the answer holds the value it replaced and the new version.
    pub async fn hset(&self, table: &str, key: &str, value: impl Into<Value>) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hset(table, key, value)).await?)
    }

    /// Writes only if the key's version is `expected_version` (0: only if the key does not exist);
    /// otherwise fails with [`ClientError::Conflict`], which carries the key's current value and version.
    pub async fn hset_if_version(
        &self,
        table: &str,
        key: &str,
        value: impl Into<Value>,
        expected_version: u64,
    ) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hset_if_version(table, key, value, expected_version)).await?)
    }

    /// Sets several keys of one table; one result per pair, in order.
    pub async fn hmset(
        &self,
        table: &str,
        pairs: impl IntoIterator<Item = Kvpair>,
    ) -> ClientResult<Vec<Written>> {
        all_written(self.call(&CommandRequest::hmset(table, pairs)).await?)
    }

    /// Deletes the key; the result's `previous` is what it held (`None` if it did not exist).
    pub async fn hdel(&self, table: &str, key: &str) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hdel(table, key)).await?)
    }

    /// Deletes only if the key's version is `expected_version`; otherwise [`ClientError::Conflict`].
    pub async fn hdel_if_version(
        &self,
        table: &str,
        key: &str,
        expected_version: u64,
    ) -> ClientResult<Written> {
        written(self.call(&CommandRequest::hdel_if_version(table, key, expected_version)).await?)
    }

    /// Deletes each of `keys` from `table`: for each, the value it removed (none if it was missing).
    pub async fn hmdel(&self, table: &str, keys: &[impl AsRef<str>]) -> ClientResult<Vec<Written>> {
        all_written(self.call(&CommandRequest::hmdel(table, keys.iter().map(AsRef::as_ref))).await?)
    }

    /// Whether `key` exists in `table`.
    pub async fn hexist(&self, table: &str, key: &str) -> ClientResult<bool> {
        let found = booleans(ok(self.call(&CommandRequest::hexist(table, key)).await?)?)?;
        found.into_iter().next().ok_or_else(|| ClientError::Protocol("Hexist answered no value".into()))
    }

    /// Whether each of `keys` exists in `table`, in order.
    pub async fn hmexist(&self, table: &str, keys: &[impl AsRef<str>]) -> ClientResult<Vec<bool>> {
        booleans(ok(self.call(&CommandRequest::hmexist(table, keys.iter().map(AsRef::as_ref))).await?)?)
    }

    /// The server's address as the current connection sees it.
    pub fn remote_address(&self) -> SocketAddr {
        let current = self.inner.current.lock().clone();
        match current {
            Some(Connection::Quic(quic)) => quic.remote_address(),
            Some(Connection::Tcp(tcp)) => tcp.remote_address(),
            _ => self.inner.remote,
        }
    }

    /// Closes the connection and waits until the server has been told, so it need not time it out.
    /// Calls made afterwards fail with [`ClientError::Closed`]. On a shared [`ClientEndpoint`] the close
    /// is sent without waiting (the endpoint falls idle only once all its clients have closed):
    /// [`ClientEndpoint::wait_idle`] waits for them all.
    pub async fn close(&self) {
        // Before the connection is taken: a call that opens one from now on closes it itself.
        self.inner.closed.cancel();
        let current = self.inner.current.lock().take();
        close_connection(current, &self.inner.stats).await;
        if let (Some(endpoint), false) = (&self.inner.endpoint, self.inner.endpoint_shared) {
            endpoint.wait_idle().await;
        }
    }
}

/// Closes `connection`, waiting until the server has been told (QUIC, TCP); dropping the last clone of
/// an HTTP/2 connection's sender closes it.
async fn close_connection(connection: Option<Connection>, stats: &Stats) {
    match connection {
        Some(Connection::Quic(quic)) => quic.close(stats).await,
        Some(Connection::Tcp(tcp)) => tcp.close().await,
        _ => {}
    }
}

/// The unspecified address of `remote`'s family, any port: the system picks the source address
/// per packet, so a client follows the route to the server when its addresses change.
fn any_port(remote: SocketAddr) -> SocketAddr {
    match remote {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Resolves `host:port`, returning the host (for certificate verification) and the first address.
async fn resolve(addr: &str) -> ClientResult<(String, SocketAddr)> {
    let resolve_error = |cause: std::io::Error| ClientError::Resolve { addr: addr.to_owned(), cause };
    let host = match addr.parse::<SocketAddr>() {
        Ok(socket_addr) => socket_addr.ip().to_string(),
        Err(_) => match addr.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            None => {
                return Err(resolve_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected host:port",
                )));
            }
        },
    };
    let remote = tokio::net::lookup_host(addr).await.map_err(resolve_error)?.next().ok_or_else(|| {
        resolve_error(std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses found"))
    })?;
    Ok((host, remote))
}

/// Passes 200 responses through; turns every other status into the matching error.
fn ok(response: CommandResponse) -> ClientResult<CommandResponse> {
    match response.status {
        status::OK => Ok(response),
        // Over TCP: the server is shutting down and did not execute this request.
        // The server did not execute this request (it is shutting down, or at its connection limit).
        status::UNAVAILABLE => Err(ClientError::Unavailable { reason: response.message }),
        status::CONFLICT => {
            Err(ClientError::Conflict { current: versioned_values(response).into_iter().next().flatten() })
        }
        // Every qkv answer has a status: one without came from something else (a floor server,
        // which echoes requests back).
        0 => Err(ClientError::Protocol(
            "the answer has no status: is this a qkv server? (a floor server only echoes: bench it with --workload echo)"
                .into(),
        )),
        status => Err(ClientError::Status { status, message: response.message }),
    }
}

/// Pairs each value with its version; an empty value (a miss) becomes `None`.
fn versioned_values(response: CommandResponse) -> Vec<Option<Versioned>> {
    let mut versions = response.versions.into_iter();
    response
        .values
        .into_iter()
        .map(|value| {
            let version = versions.next().unwrap_or_default();
            (!value.is_empty()).then_some(Versioned { value, version })
        })
        .collect()
}

fn booleans(response: CommandResponse) -> ClientResult<Vec<bool>> {
    response
        .values
        .into_iter()
        .map(|v| match v.value {
            Some(value::Value::Bool(exists)) => Ok(exists),
            other => Err(ClientError::Protocol(format!("expected a bool, got {other:?}"))),
        })
        .collect()
}

/// `sending`, then the first frame of its answer (kept for the caller's `next`).
async fn first_frame(
    sending: impl Future<Output = ClientResult<ResponseFrames>>,
) -> ClientResult<ResponseFrames> {
    let mut frames = sending.await?;
    frames.wait_first().await?;
    Ok(frames)
}

/// [`first_frame`] by `deadline` (`None` past it).
async fn first_frame_until(
    deadline: Instant,
    sending: impl Future<Output = ClientResult<ResponseFrames>>,
) -> Option<ClientResult<ResponseFrames>> {
    tokio::time::timeout_at(deadline, first_frame(sending)).await.ok()
}

/// Every frame of an answer, concatenated into its first (most answers are one frame).
async fn collect(frames: &mut ResponseFrames) -> ClientResult<CommandResponse> {
    let Some(first) = frames.next().await else {
        return Err(ClientError::Protocol("the reply had no frame".into()));
    };
    let mut whole = first?;
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        whole.values.extend(frame.values);
        whole.pairs.extend(frame.pairs);
        whole.versions.extend(frame.versions);
        (whole.status, whole.message, whole.more) = (frame.status, frame.message, frame.more);
    }
    Ok(whole)
}

fn all_written(response: CommandResponse) -> ClientResult<Vec<Written>> {
    let response = ok(response)?;
    let mut versions = response.versions.into_iter();
    Ok(response
        .values
        .into_iter()
        .map(|previous| Written {
            previous: (!previous.is_empty()).then_some(previous),
            version: versions.next().unwrap_or_default(),
        })
        .collect())
}

fn written(response: CommandResponse) -> ClientResult<Written> {
    all_written(response)?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Protocol("a write was answered without a result".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "No timeout" spelled `Duration::MAX` is refused with a clear error; a call's deadline (now +
    /// the timeout) would otherwise overflow and panic.
    #[tokio::test]
    async fn a_timeout_too_long_for_a_deadline_is_refused_as_a_setting() {
        let (long, second) = (Duration::MAX, Duration::from_secs(1));
        let base = || ClientConfig::new("127.0.0.1:1", "ca.pem");
        let configs = [
            ClientConfig { connect_timeout: long, ..base() },
            ClientConfig { request_timeout: long, ..base() },
            ClientConfig { retry: RetryPolicy { initial_backoff: long, ..Default::default() }, ..base() },
            ClientConfig {
                retry: RetryPolicy { max_backoff: long, initial_backoff: second, ..Default::default() },
                ..base()
            },
        ];
        for config in configs {
            match Client::connect_with(config).await {
                Err(ClientError::InvalidConfig(why)) => assert!(why.contains("at most a year"), "{why}"),
                other => panic!("expected the setting refused, got {other:?}"),
            }
        }
    }
}
