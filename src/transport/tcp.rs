//! TCP: the same frames over TLS 1.3 (same certificates, ALPN `qkv/1`) or plaintext, on the same port
//! number as QUIC. A task per connection runs [`serve_pipelined`].
//!
//! Shutdown, once `shutdown` is cancelled: stop accepting; each connection answers what it has read,
//! sends its 503 and closes (see `pipeline`). Connections still open after the grace period are dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::tls::TlsDoor;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::admission::{Admission, Admitted, Refusal};
use super::frame::{self, encode_frame};
use super::log_throttle::{self, HeldBack, LogThrottle};
use super::pipeline::{AfterClose, linger, serve_pipelined};
use super::timeouts::StallTimeout;
use super::woken::PolledWhenWoken;
use super::{Limits, Transport, authenticated_caller, untrusted_resumption};
use crate::memory::MemoryBudget;
use crate::metrics;
use crate::pb::{CommandResponse, status};
use crate::service::{Caller, Handler};

/// How TCP connections are secured.
#[derive(Clone)]
pub enum TcpSecurity {
    /// TLS 1.3 with this configuration (the same as QUIC's).
    Tls(TlsDoor),
    /// No encryption, no authentication: for trusted networks and course clients.
    Plaintext,
}

impl TcpSecurity {
    /// The transport this security makes of TCP.
    pub fn transport(&self) -> Transport {
        match self {
            TcpSecurity::Tls(_) => Transport::Tls,
            TcpSecurity::Plaintext => Transport::Tcp,
        }
    }
}

/// Binds a TCP listener on `addr`. Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves `listener` until `shutdown` is cancelled, then shuts down gracefully within `grace`.
/// `admission` is shared with the other transports.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    security: TcpSecurity,
    handler: H,
    limits: Arc<Limits>,
    admission: Admission,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let transport = security.transport();
    let share = limits.tcp_connection_share();
    let memory = admission.memory().clone();
    let refusals = security.clone();
    accept_loop(
        listener,
        Accepting { transport, share, admission, shutdown: shutdown.clone(), grace },
        move |stream, refusal, tasks| refuse(stream, &refusals, refusal, tasks),
        move |stream, admitted| {
            let (security, handler, limits, memory, shutdown) =
                (security.clone(), handler.clone(), limits.clone(), memory.clone(), shutdown.clone());
            handle_connection(stream, security, handler, limits, memory, shutdown, admitted)
        },
    )
    .await
}

/// How a TCP listener admits its connections.
pub(crate) struct Accepting {
    /// What its connections are counted as.
    pub transport: Transport,
    /// The memory each connection is charged on admission.
    pub share: usize,
    pub admission: Admission,
    pub shutdown: CancellationToken,
    pub grace: Duration,
}

/// The one accept loop of every TCP listener (qkv/1 over TCP and TLS, the web listener): accepts until
/// `shutdown` is cancelled, backing off when accepting fails; admits each connection against the
/// server-wide limits (or hands it to `refuse`); runs `connection` for it in a task of its own, in a
/// span; then waits up to `grace` for the connections to end and drops the rest.
pub(crate) async fn accept_loop<C, F>(
    listener: TcpListener,
    accepting: Accepting,
    mut refuse: impl FnMut(TcpStream, Refusal, &TaskTracker),
    mut connection: C,
) where
    C: FnMut(TcpStream, Admitted) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Accepting { transport, share, admission, shutdown, grace } = accepting;
    let connections = TaskTracker::new();
    let cut_off = CancellationToken::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admitted = match admission.admit(transport, share) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                refuse(stream, refusal, &connections);
                continue;
            }
        };
        let connection = connection(stream, admitted);
        let cut_off = cut_off.clone();
        let span =
            info_span!("connection", %remote, transport = transport.name(), client = tracing::field::Empty);
        let serving = log_throttle::serving(remote.ip(), async move {
            // Polled whenever the connection is: only once it has something to say. Biased: the
            // connection first, with no random pick of an order on every poll.
            let cut_off = PolledWhenWoken::new(cut_off.cancelled_owned());
            tokio::select! {
                biased;
                _ = connection => {}
                _ = cut_off => debug!("closed: the grace period ran out"),
            }
        });
        connections.spawn(serving.instrument(span));
    }
    drop(listener);
    connections.close();
    info!(
        transport = transport.name(),
        connections = connections.len(),
        "shutting down: finishing in-flight requests"
    );
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        warn!(
            ?grace,
            connections = connections.len(),
            transport = transport.name(),
            "grace period over; closing the remaining connections"
        );
        cut_off.cancel();
        connections.wait().await;
    }
}

/// Closes a connection that was not admitted. A plaintext client is told why first, with the 503 that
/// means "nothing was executed here", by a task in `tasks` (which shutdown waits for: it takes at most
/// `REFUSAL_TIMEOUT`); a TLS client would need a handshake first, so it just sees the close.
fn refuse(stream: TcpStream, security: &TcpSecurity, refusal: Refusal, tasks: &TaskTracker) {
    if let TcpSecurity::Plaintext = security {
        tasks.spawn(async move {
            let mut stream = stream;
            let refusal = CommandResponse::error(
                status::UNAVAILABLE,
                format!(
                    "the server refused the connection: {refusal}; nothing was executed on this connection{}",
                    frame::CLOSING_SUFFIX
                ),
            );
            let tell = async {
                if let Ok(frame) = encode_frame(&refusal, 1024) {
                    stream.write_all(&frame).await?;
                }
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, tell).await;
        });
    }
}

/// Keep-alive probes, sent a third of the idle timeout apart once a connection has been silent for the
/// idle timeout, before the kernel gives the connection up: a vanished client is found within about
/// twice the idle timeout.
const KEEPALIVE_PROBES: u32 = 3;

/// How long a refused plaintext client gets to take its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(100);

/// Sets up an accepted connection's socket: no delay for small answers, keep-alive probes.
pub(crate) fn tune(stream: &TcpStream, limits: &Limits) {
    // Requests and answers are small and latency matters more than packet count.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    // A connection with a subscription is never idle-closed, and sends nothing while nothing is
    // published: keep-alive probes find a client that vanished (a phone that lost its network) so that
    // its subscription is removed, as QUIC's idle timeout does.
    let probes = socket2::TcpKeepalive::new()
        .with_time(limits.idle_timeout)
        .with_interval(limits.idle_timeout / KEEPALIVE_PROBES)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&probes) {
        debug!(error = %e, "could not enable TCP keep-alive");
    }
    // Keep-alive probes are not sent while data is unacknowledged: a vanished subscriber sent a
    // message would be found by retransmission's own end (tcp_retries2, about 15 minutes). Data
    // unacknowledged for twice the idle timeout ends the connection too; and as Linux counts a window
    // kept shut (a client that does not read) against it, never before twice the reply timeout, which
    // gives a client that pauses its reading that long.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let user_timeout = 2 * limits.idle_timeout.max(limits.reply_timeout);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(user_timeout)) {
        debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
}

async fn handle_connection<H: Handler>(
    stream: TcpStream,
    security: TcpSecurity,
    handler: H,
    limits: Arc<Limits>,
    memory: MemoryBudget,
    shutdown: CancellationToken,
    _admitted: Admitted,
) {
    tune(&stream, &limits);
    let transport = security.transport();
    let bytes = Arc::new(ByteCounts::default());
    let state = match security {
        TcpSecurity::Plaintext => Ended::CutOff,
        TcpSecurity::Tls(_) => Ended::NoHandshake,
    };
    let mut ended = EndLine { transport, started: std::time::Instant::now(), bytes: bytes.clone(), state };
    let stream = Counted::new(stream, transport, bytes.clone());
    // Writes time out beneath TLS, where the bytes are seen to leave.
    let stream = StallTimeout::new(stream, limits.reply_timeout, limits.reply_min_progress);
    let requests = match security {
        TcpSecurity::Plaintext => {
            serve_pipelined(stream, handler, limits, memory, shutdown, Caller::default(), AfterClose::ReadOn)
                .await
        }
        TcpSecurity::Tls(door) => match tls_handshake(&door, stream, &limits, transport).await {
            Some((tls, caller)) => {
                ended.state = Ended::CutOff;
                serve_pipelined(tls, handler, limits, memory, shutdown, caller, AfterClose::ReadOn).await
            }
            None => return,
        },
    };
    ended.state = Ended::Served { requests: Some(requests) };
}

/// A connection's last line in the log, with its statistics, however its task ends: one the grace
/// period cut off is dropped mid-way, and had no line at all.
pub(crate) struct EndLine {
    pub transport: Transport,
    pub started: std::time::Instant,
    pub bytes: Arc<ByteCounts>,
    pub state: Ended,
}

pub(crate) enum Ended {
    /// Dropped before its end: the grace period cut it off (its requests are not counted).
    CutOff,
    /// It ended by itself, having read this many requests (where they are counted).
    Served { requests: Option<u64> },
    /// Its TLS handshake has not completed: a failure is logged as such, and one cut off (at the end
    /// of the grace period) was never a connection to log.
    NoHandshake,
}

impl Drop for EndLine {
    fn drop(&mut self) {
        let (requests, cut_off) = match self.state {
            Ended::NoHandshake => return,
            Ended::CutOff => (None, Some(true)),
            Ended::Served { requests } => (requests, None),
        };
        info!(
            target: "qkv::connection",
            transport = self.transport.name(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            requests,
            bytes_in = self.bytes.received.load(Ordering::Relaxed),
            bytes_out = self.bytes.sent.load(Ordering::Relaxed),
            cut_off,
            "connection ended"
        );
    }
}

/// The TLS handshake of a connection on `transport`, within the request timeout, counted in the
/// metrics; the client it authenticated, if the server asks for certificates. `None` when it failed
/// (and was logged).
pub(crate) async fn tls_handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    door: &TlsDoor,
    stream: IO,
    limits: &Limits,
    transport: Transport,
) -> Option<(tokio_rustls::server::TlsStream<IO>, Caller)> {
    match tokio::time::timeout(limits.request_timeout, door.acceptor.accept(stream)).await {
        Ok(Ok(mut tls)) => {
            let chain = tls.get_ref().1.peer_certificates();
            if let Some(Err(e)) = door.client_auth.as_ref().map(|auth| auth.verify(chain)) {
                // Closed before a request is read: nothing is executed on it. A qkv client is told
                // why (a web client, whose protocol has not begun, sees the connection close).
                metrics::handshake(transport, metrics::HandshakeResult::Failed);
                untrusted_resumption(&e);
                let tell = async {
                    if transport == Transport::Tls {
                        let refusal =
                            CommandResponse::error(status::FORBIDDEN, untrusted_certificate_message());
                        if let Ok(frame) = encode_frame(&refusal, 1024) {
                            tls.write_all(&frame).await?;
                        }
                    }
                    tls.shutdown().await
                };
                if let Ok(Ok(())) = tokio::time::timeout(limits.reply_timeout, tell).await {
                    // What the client sent meanwhile is read and dropped, as at any end, so that the
                    // close is a FIN, not a reset that could take the 403 with it.
                    linger(&mut tls).await;
                }
                return None;
            }
            metrics::handshake(transport, metrics::HandshakeResult::Completed);
            let caller = authenticated_caller(chain);
            Some((tls, caller))
        }
        // Any client can fail a handshake at will: throttled, in the connection's span (its address).
        Ok(Err(e)) => {
            metrics::handshake(transport, metrics::HandshakeResult::Failed);
            static FAILED: LogThrottle = LogThrottle::new();
            if let Some(HeldBack { suppressed, crowded_out }) = FAILED.admit() {
                info!(target: "qkv::connection", error = %e, suppressed, crowded_out, "TLS handshake failed");
            }
            None
        }
        Err(_) => {
            metrics::handshake(transport, metrics::HandshakeResult::TimedOut);
            metrics::limit_hit(metrics::Limit::RequestTimeout);
            static TIMED_OUT: LogThrottle = LogThrottle::new();
            if let Some(HeldBack { suppressed, crowded_out }) = TIMED_OUT.admit() {
                info!(
                    target: "qkv::connection",
                    timeout = ?limits.request_timeout,
                    suppressed,
                    crowded_out,
                    "TLS handshake did not complete in time"
                );
            }
            None
        }
    }
}

/// What a TLS client whose resumed session's certificate is no longer trusted is told, in a 403 frame
/// before the connection closes (docs/PROTOCOL.md, section 8).
fn untrusted_certificate_message() -> String {
    format!(
        "the client certificate of the session this connection resumed is no longer trusted (expired, or its CA replaced): nothing was executed on this connection{}",
        frame::CLOSING_SUFFIX
    )
}

/// The bytes a connection has read and written, for its last log line.
#[derive(Default)]
pub(crate) struct ByteCounts {
    pub received: AtomicU64,
    pub sent: AtomicU64,
}

pin_project_lite::pin_project! {
    /// A TCP stream that counts the bytes it reads and writes into `qkv_bytes_received_total` and
    /// `qkv_bytes_sent_total` (handles registered once) and into the connection's own counts.
    pub(crate) struct Counted {
        #[pin]
        stream: TcpStream,
        received: ::metrics::Counter,
        sent: ::metrics::Counter,
        counts: Arc<ByteCounts>,
    }
}

impl Counted {
    pub(crate) fn new(stream: TcpStream, transport: Transport, counts: Arc<ByteCounts>) -> Self {
        let (received, sent) = metrics::byte_counters(transport);
        Counted { stream, received, sent, counts }
    }

    fn count_sent(counter: &::metrics::Counter, counts: &ByteCounts, n: usize) {
        counter.increment(n as u64);
        counts.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.stream.poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        this.received.increment(read);
        this.counts.received.fetch_add(read, Ordering::Relaxed);
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.stream.poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            Counted::count_sent(this.sent, this.counts, *n);
        }
        polled
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.stream.poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            Counted::count_sent(this.sent, this.counts, *n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose data goes unacknowledged (a subscriber whose phone lost its network, sent a
    /// message) ends after twice the idle timeout, not retransmission's 15 minutes: keep-alive probes
    /// alone do not run while data is in flight. Never before twice the reply timeout, which a client
    /// may pause its reading for (a shut window counts).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn an_accepted_connection_gives_up_on_unacknowledged_data_after_twice_the_idle_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let timeouts =
            |idle_timeout, reply_timeout| Limits { idle_timeout, reply_timeout, ..Limits::default() };
        for (idle, reply, expected) in [(30, 10, 60), (1, 5, 10)] {
            tune(&accepted, &timeouts(Duration::from_secs(idle), Duration::from_secs(reply)));
            let user_timeout = socket2::SockRef::from(&accepted).tcp_user_timeout().unwrap();
            assert_eq!(user_timeout, Some(Duration::from_secs(expected)));
        }
    }
}
