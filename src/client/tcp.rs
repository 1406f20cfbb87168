//! The client over TCP (TLS 1.3 or plaintext): one connection, requests pipelined on it.
//!
//! Requests go out through an [`Outbox`] in call order, each routed to the reader before its bytes can
//! leave, so the reader knows where its answer goes. A call that finds the connection idle (nothing
//! waiting to be written, no answer outstanding) writes its frame itself; otherwise it leaves the
//! frame in the outbox for the writer task, which writes everything waiting in one go. So a lone call
//! costs no task switch on its way out, and concurrent calls still share writes.
//!
//! The reader task routes incoming frames to the oldest unanswered request until one says
//! `more = false`. Nothing ever waits for a caller: answers are queued for callers without limit, so
//! a caller that holds a reply without reading it cannot stall the connection (it only keeps that
//! reply in memory), and a writer blocked on a full socket never stops answers from being read.
//!
//! A refusal whose message ends with `CLOSING_SUFFIX` (a 503 at shutdown, at the connection limit or
//! out of memory; a bad frame's 400, 408 or 413) means the server executes nothing more on this
//! connection: every later request fails as not executed, safe to retry elsewhere. Any other 503
//! refused its own request alone, even when the connection ends right after it.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::error::Cause;
use super::frames::ResponseFrames;
use super::{ClientConfig, ClientError, ClientResult, Stats};
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::transport::frame::{CLOSING_SUFFIX, FrameCodec, FrameError, encode_frame};

/// Why a TCP connection stopped carrying requests, as each unanswered request learns it.
#[derive(Debug, Clone)]
pub(super) enum Closed {
    /// The server refused a request and closed the connection (`CLOSING_SUFFIX`): it executed no
    /// later one on the connection.
    Unavailable(String),
    /// The request was never written to the connection.
    NotSent(Cause),
    /// The connection failed with the request sent; it may or may not have been executed.
    Lost(Cause),
    /// The server refused the client's certificate, or its lack of one, after the handshake.
    CertificateRefused(Cause),
    /// The server answered in another protocol (TLS, to a plaintext client): it took nothing sent
    /// on the connection for a request.
    OtherProtocol(Cause),
}

impl Closed {
    /// What a request that was never pushed onto the connection meets: it cannot have been
    /// executed, whatever the connection's end means for those sent before it.
    fn before_sending(&self) -> Closed {
        match self {
            Closed::Lost(cause) => Closed::NotSent(cause.clone()),
            other => other.clone(),
        }
    }

    pub(super) fn error(&self) -> ClientError {
        match self.clone() {
            Closed::Unavailable(reason) => ClientError::Unavailable { reason },
            Closed::NotSent(cause) => ClientError::NotSent { cause },
            Closed::Lost(cause) => ClientError::ConnectionLost(cause),
            Closed::CertificateRefused(cause) => ClientError::ClientCertificateRefused { cause },
            Closed::OtherProtocol(cause) => ClientError::OtherProtocol(cause),
        }
    }
}

/// One frame of an answer, or why the answer ends early.
pub(super) type FrameResult = Result<CommandResponse, Closed>;

/// Where the reader sends one request's frames. (futures' channel allocates as frames come; tokio's
/// allocates room for 32 at once, a few KiB for every call.)
type AnswerSender = futures_channel::mpsc::UnboundedSender<FrameResult>;
pub(super) type AnswerReceiver = futures_channel::mpsc::UnboundedReceiver<FrameResult>;

/// What both tasks and the callers share.
pub(super) struct State {
    /// Set once, when the connection stops carrying requests.
    closed: OnceLock<Closed>,
    /// The number of the last request its byte stream took whole: requests numbered above it never
    /// reached the server.
    written: AtomicU64,
    /// Requests (and keep-alive pings) routed whose answer has not ended.
    outstanding: AtomicUsize,
}

impl State {
    /// Why frames stopped coming for a request whose queue ended without saying.
    pub(super) fn reason(&self) -> Closed {
        self.closed.get().cloned().unwrap_or(Closed::Lost(Cause::ConnectionEnded))
    }
}

/// Where the reader sends the frames of request `number`; `None` for keep-alive pings.
struct Route {
    number: u64,
    answer: Option<AnswerSender>,
}

/// Bytes waiting in an outbox beyond which callers wait for the writer to catch up.
const OUTBOX_LIMIT: usize = 256 * 1024;

/// What callers and the writer task share: the byte stream's write half and the frames waiting for it.
struct Outbox {
    write: Box<dyn AsyncWrite + Send + Unpin>,
    /// Frames the byte stream has not taken yet, in request order.
    waiting: BytesMut,
    /// The number and the length still waiting of each frame in `waiting`.
    frames: VecDeque<(u64, usize)>,
    /// Taken by the byte stream and not flushed yet.
    unflushed: bool,
    /// Where the reader learns each request's number and where its answer goes.
    routes: mpsc::UnboundedSender<Route>,
    /// The number of the last request routed.
    number: u64,
    /// A request was routed since the writer last looked (keep-alive pings go only on a quiet
    /// connection).
    active: bool,
    /// A caller's write failed: the writer ends the connection with this.
    failed: Option<io::Error>,
    /// The writer has stopped: nothing more is written.
    stopped: bool,
}

impl Outbox {
    /// Numbers `frame`, routes it to the reader and puts it in line; false if the reader has gone.
    fn push(&mut self, frame: &[u8], answer: Option<AnswerSender>, state: &State) -> bool {
        let number = self.number + 1;
        if self.routes.send(Route { number, answer }).is_err() {
            return false;
        }
        self.number = number;
        self.active = true;
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        self.waiting.extend_from_slice(frame);
        self.frames.push_back((number, frame.len()));
        true
    }

    /// Whether a caller may add a frame, or must wait for the writer to catch up.
    fn has_room(&self) -> bool {
        self.waiting.len() < OUTBOX_LIMIT
    }

    /// Nothing waits to be written or flushed.
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && !self.unflushed
    }

    /// Gives the byte stream everything waiting, then flushes it; `Pending` while the stream cannot
    /// take more (`cx` hears when it can).
    fn poll_write(&mut self, cx: &mut Context<'_>, state: &State) -> Poll<io::Result<()>> {
        // Once the reader has told the requests left which were sent, nothing more may be.
        if self.stopped {
            return Poll::Ready(Ok(()));
        }
        while !self.waiting.is_empty() {
            let taken = ready!(Pin::new(&mut self.write).poll_write(cx, &self.waiting))?;
            if taken == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.waiting.advance(taken);
            self.unflushed = true;
            let mut left = taken;
            while let Some((number, len)) = self.frames.front_mut() {
                if *len > left {
                    *len -= left;
                    break;
                }
                left -= *len;
                state.written.store(*number, Ordering::Release);
                self.frames.pop_front();
            }
        }
        if self.waiting.capacity() > OUTBOX_LIMIT {
            // Room made for a large request is not kept for the connection's life.
            self.waiting = BytesMut::new();
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.write).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// What the callers, the writer and the reader share.
struct Shared {
    outbox: parking_lot::Mutex<Outbox>,
    state: Arc<State>,
    /// Wakes the writer: frames wait for it, a caller's write failed, or the connection was dropped.
    wake_writer: Notify,
    /// The outbox has room again (or the writer has stopped).
    room: Notify,
    /// Every handle on the connection is gone: the writer writes what waits, then closes its side.
    dropped: AtomicBool,
}

pub(super) struct TcpConnection {
    shared: Arc<Shared>,
    /// Cancelled by `close()`.
    closing: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    remote: SocketAddr,
    /// Where the byte stream shares its connection with others: what opens them.
    #[cfg_attr(not(feature = "web-client"), allow(dead_code))]
    more: Option<StreamOpener>,
}

/// A TCP connection's byte stream, encrypted or not.
pub(super) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// Opens another byte stream to the server on the connection a [`TcpConnection`]'s runs on, where
/// one connection carries many (gRPC `Pipeline` calls on one HTTP/2 connection).
pub(super) type StreamOpener = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ClientResult<Box<dyn ByteStream>>> + Send>>
        + Send
        + Sync,
>;

/// Connects a byte stream; with `tls`, verifies the server and requires ALPN `qkv/1`.
pub(super) async fn open_stream(
    config: &ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: &str,
    remote: SocketAddr,
    stats: &Stats,
    closing: Closing,
) -> ClientResult<Box<dyn ByteStream>> {
    let timed_out = || ClientError::connect_timeout(&config.addr, config.connect_timeout, "");
    // One deadline for connecting and the TLS handshake: the connect timeout bounds both together.
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(remote))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| ClientError::Connect {
            addr: config.addr.clone(),
            cause: e.into(),
            hint: " (is the server running, with TCP on?)",
        })?;
    // Requests are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    // A subscription's connection sends nothing while it waits for messages: keep-alive probes find a
    // server that has gone (and keep NAT bindings), as QUIC's keep-alives do.
    let probes = socket2::TcpKeepalive::new().with_time(config.keep_alive).with_interval(config.keep_alive);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&probes.with_retries(3));
    if closing == Closing::Reset {
        let _ = stream.set_zero_linger();
    }
    let Some(tls) = tls else {
        return Ok(Box::new(stream));
    };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| {
        ClientError::InvalidConfig(format!("{server_name:?} is not a valid server name: {e}"))
    })?;
    let offered = tls.alpn_protocols.clone();
    let handshake = TlsConnector::from(tls).connect(name, stream);
    let stream = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| handshake_error(config, e))?;
    let session = stream.get_ref().1;
    if session.alpn_protocol().is_none_or(|agreed| !offered.iter().any(|p| p == agreed)) {
        return Err(ClientError::NoApplicationProtocol { addr: config.addr.clone() });
    }
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        stats.resumed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Box::new(stream))
}

impl TcpConnection {
    /// Connects (see [`open_stream`]) and starts carrying requests.
    pub(super) async fn connect(
        config: &ClientConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: &str,
        remote: SocketAddr,
        stats: &Stats,
    ) -> ClientResult<Self> {
        let stream = open_stream(config, tls, server_name, remote, stats, Closing::Graceful).await?;
        Ok(Self::start(stream, remote, config, None))
    }

    /// Carries requests on `io`, a connected byte stream to the server at `remote`; `more` opens more
    /// streams on the connection `io` runs on, if it carries many.
    pub(super) fn start<IO>(
        io: IO,
        remote: SocketAddr,
        config: &ClientConfig,
        more: Option<StreamOpener>,
    ) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (max_frame_len, keepalive) = (config.limits.max_frame_len, config.keep_alive);
        let (read, write) = tokio::io::split(io);
        let (routes, routed) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            closed: OnceLock::new(),
            written: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
        });
        let outbox = Outbox {
            write: Box::new(write),
            waiting: BytesMut::new(),
            frames: VecDeque::new(),
            unflushed: false,
            routes,
            number: 0,
            active: false,
            failed: None,
            stopped: false,
        };
        let shared = Arc::new(Shared {
            outbox: parking_lot::Mutex::new(outbox),
            state: state.clone(),
            wake_writer: Notify::new(),
            room: Notify::new(),
            dropped: AtomicBool::new(false),
        });
        let closing = CancellationToken::new();
        // The reader stops the writer when the connection is over.
        let over = closing.child_token();
        let writer = Writer { shared: shared.clone(), over: over.clone(), max_frame_len, keepalive };
        let reader = Reader { routed, shared: shared.clone(), over, closing: closing.clone(), max_frame_len };
        let tasks = vec![tokio::spawn(writer.run()), tokio::spawn(reader.run(read))];
        TcpConnection { shared, closing, tasks: Mutex::new(tasks), remote, more }
    }

    /// Another byte stream on this one's connection, if it can carry more.
    #[cfg(feature = "web-client")]
    pub(super) fn opener(&self) -> Option<StreamOpener> {
        self.more.clone()
    }

    pub(super) async fn send(&self, frame: Bytes) -> ClientResult<ResponseFrames> {
        let (shared, state) = (&*self.shared, &*self.shared.state);
        let (answer, frames) = futures_channel::mpsc::unbounded();
        loop {
            {
                let mut outbox = shared.outbox.lock();
                // Not pushed, so not sent: a connection lost meanwhile took nothing of this request.
                if let Some(closed) = state.closed.get() {
                    return Err(closed.before_sending().error());
                }
                if outbox.stopped {
                    return Err(state.reason().before_sending().error());
                }
                if outbox.has_room() {
                    let idle = outbox.is_empty() && state.outstanding.load(Ordering::Relaxed) == 0;
                    if !outbox.push(&frame, Some(answer), state) {
                        return Err(state.reason().before_sending().error());
                    }
                    // Alone on the connection: write it now rather than wake the writer to. Frames that
                    // follow while answers are outstanding wait for the writer, and go out together.
                    let written = match idle {
                        true => outbox.poll_write(&mut Context::from_waker(Waker::noop()), state),
                        false => Poll::Pending,
                    };
                    match written {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            outbox.failed = Some(e);
                            shared.wake_writer.notify_one();
                        }
                        Poll::Pending => shared.wake_writer.notify_one(),
                    }
                    return Ok(ResponseFrames::tcp(frames, self.shared.state.clone()));
                }
            }
            // Registered before looking again, so room made in between is not missed.
            let mut room = pin!(shared.room.notified());
            room.as_mut().enable();
            let full = {
                let outbox = shared.outbox.lock();
                !outbox.has_room() && !outbox.stopped
            };
            if full {
                room.await;
            }
        }
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// False once the connection has stopped carrying requests: the next call needs a new one.
    pub(super) fn is_usable(&self) -> bool {
        self.shared.state.closed.get().is_none()
    }

    /// Gives the connection up without waiting: its unanswered requests fail at once. A call that
    /// timed out does this, because its answer holds back every later one on the connection.
    pub(super) fn abandon(&self) {
        // Said here as the reader will say it, so that no call starts on the connection meanwhile.
        let _ = self.shared.state.closed.set(Closed::Lost(Cause::ClientClosed));
        self.closing.cancel();
    }

    pub(super) async fn close(&self) {
        self.abandon();
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for TcpConnection {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::Release);
        self.shared.wake_writer.notify_one();
    }
}

/// How a connection [`open_stream`] opens is closed when it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    /// TCP's FIN, after what was written: the server answers what it read (calls' connections).
    Graceful,
    /// A reset: a subscription's own connection, which the server keeps on a FIN (a half-close, which
    /// the course's client subscribes with: docs/PROTOCOL.md, section 6.1) until a message to it fails;
    /// the reset ends it at once, as dropping a subscription promises.
    Reset,
}

/// Only certificate failures are about the CA file; a reset or non-TLS data means something else.
fn handshake_error(config: &ClientConfig, e: std::io::Error) -> ClientError {
    let addr = config.addr.clone();
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned() {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => {
            ClientError::Handshake { addr, ca_file: config.ca_file.clone(), cause: tls.into() }
        }
        // The server speaks TLS, but not the protocol asked for: the web listener's port for qkv/1, or
        // the main port for HTTP.
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            ClientError::NoApplicationProtocol { addr }
        }
        Some(tls) => ClientError::Connect {
            addr,
            cause: tls.into(),
            hint: " (the TLS handshake failed: does the server serve TLS on TCP, not plaintext?)",
        },
        None => ClientError::Connect {
            addr,
            cause: e.into(),
            hint: " (the connection failed during the TLS handshake: the server may be at its connection limit)",
        },
    }
}

struct Writer {
    shared: Arc<Shared>,
    over: CancellationToken,
    max_frame_len: usize,
    keepalive: Duration,
}

impl Writer {
    async fn run(self) {
        let Writer { shared, over, max_frame_len, keepalive } = self;
        let state = &*shared.state;
        let mut keepalive = tokio::time::interval(keepalive);
        keepalive.tick().await;
        let mut over = pin!(over.cancelled());
        loop {
            tokio::select! {
                biased;
                _ = over.as_mut() => break,
                _ = shared.wake_writer.notified() => {}
                _ = keepalive.tick() => {
                    // Keep an idle connection (and the NATs on its way) open, as QUIC's keep-alives do.
                    let mut outbox = shared.outbox.lock();
                    let quiet = !std::mem::replace(&mut outbox.active, false);
                    if quiet && let Ok(ping) = encode_frame(&CommandRequest::ping(Bytes::new()), max_frame_len) {
                        outbox.push(&ping, None, state);
                        // The ping is not the caller's activity: the next interval, quiet again, pings
                        // again (else an idle connection was pinged every other interval).
                        outbox.active = false;
                    }
                }
            }
            if let Some(e) = shared.outbox.lock().failed.take() {
                let _ = state.closed.set(Closed::Lost(e.into()));
                break;
            }
            let written = tokio::select! {
                biased;
                _ = over.as_mut() => break,
                written = std::future::poll_fn(|cx| shared.outbox.lock().poll_write(cx, state)) => written,
            };
            shared.room.notify_waiters();
            if let Err(e) = written {
                let _ = state.closed.set(Closed::Lost(e.into()));
                break;
            }
            // Every handle on the client is gone and what they asked for is written: the reader goes on
            // until the answers have come.
            if shared.dropped.load(Ordering::Acquire) {
                break;
            }
        }
        // Frames still waiting were never written: their requests fail as not sent (the reader tells
        // them), and so does every later call.
        let mut write = {
            let mut outbox = shared.outbox.lock();
            outbox.stopped = true;
            std::mem::replace(&mut outbox.write, Box::new(tokio::io::sink()))
        };
        shared.room.notify_waiters();
        // Close this side: the server answers what it has read and closes its side, and the reader sees
        // that through.
        // Bounded: over TLS both write what rustls holds (the close_notify among it), and a server that
        // reads nothing (stopped, its window shut) would keep them, and `close()`, waiting for ever.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let _ = write.flush().await;
            let _ = write.shutdown().await;
        })
        .await;
    }
}

/// How long a connection's end waits for the server to take what is left to write.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

struct Reader {
    routed: mpsc::UnboundedReceiver<Route>,
    shared: Arc<Shared>,
    /// Cancelled here when the connection is over, to stop the writer.
    over: CancellationToken,
    closing: CancellationToken,
    max_frame_len: usize,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(mut self, read: R) {
        let mut answers = FramedRead::new(read, FrameCodec::<CommandResponse>::new(self.max_frame_len));
        // The request whose answer is arriving, once its first frame is in.
        let mut current: Option<Route> = None;
        // A refusal the server closes the connection after (its message ends with `CLOSING_SUFFIX`:
        // a bad frame, shutdown, its connection limit or memory), once one has come: whatever ends the
        // connection then (its close, a reset while the client still sends), what was behind it was
        // not executed. A 503 without it refused its own request alone, even when the connection ends
        // right after it: the server also closes when it cannot hold an answer, after executing its
        // request, and that may come right behind another request's 503.
        let mut closed_by_refusal: Option<String> = None;
        let closing = self.closing.clone();
        let mut closing = pin!(closing.cancelled());
        let closed = loop {
            let frame = tokio::select! {
                biased;
                _ = closing.as_mut() => break Closed::Lost(Cause::ClientClosed),
                frame = answers.next() => frame,
            };
            let frame = match frame {
                Some(Ok(frame)) => frame,
                Some(Err(FrameError::Io(e))) => match ClientError::certificate_alert(&e) {
                    Some(alert) => break Closed::CertificateRefused(alert.into()),
                    None => break Closed::Lost(e.into()),
                },
                Some(Err(e)) if e.is_other_protocol() => break Closed::OtherProtocol(e.into()),
                Some(Err(e)) => break Closed::Lost(e.into()),
                None => break Closed::Lost(Cause::ServerClosed),
            };
            // A resumed session whose client certificate the server no longer trusts: refused before
            // anything on the connection was read (docs/PROTOCOL.md, section 8).
            if !frame.more && frame.status == status::FORBIDDEN && frame.message.ends_with(CLOSING_SUFFIX) {
                break Closed::CertificateRefused(Cause::Refused(frame.message));
            }
            let unavailable = !frame.more && frame.status == status::UNAVAILABLE;
            // A refusal the server closes the connection after (docs/PROTOCOL.md, section 8): it reads
            // nothing more, so what was sent behind it was not executed, and nothing more goes on it.
            let closes = !frame.more && frame.status != status::OK && frame.message.ends_with(CLOSING_SUFFIX);
            let reason = if closes {
                let reason = format!(
                    "the server refused an earlier request on the connection and closed it ({})",
                    frame.message
                );
                let _ = self.shared.state.closed.set(Closed::Unavailable(reason.clone()));
                closed_by_refusal = Some(reason.clone());
                Some(reason)
            } else {
                unavailable.then(|| frame.message.clone())
            };
            // Each request is routed before it is written, so its route is here before its answer.
            let Some(route) = current.take().or_else(|| self.routed.try_recv().ok()) else {
                // Only a 503 may come unasked: the server announcing that it closes.
                match reason {
                    Some(reason) => break Closed::Unavailable(reason),
                    None => break Closed::Lost(Cause::UnaskedFrame),
                }
            };
            let more = frame.more;
            if !more {
                // Before the caller hears: its next call may find the connection idle.
                self.shared.state.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(answer) = &route.answer {
                // A caller that dropped its reply still has its frames read here, and discarded.
                let _ = answer.unbounded_send(Ok(frame));
            }
            if more {
                current = Some(route);
            }
        };
        let closed = closed_by_refusal.map_or(closed, Closed::Unavailable);
        let state = &*self.shared.state;
        let _ = state.closed.set(closed.clone());
        self.over.cancel();
        // Nothing more is written from here on, so `written` is final: read while a write was under way
        // (the writer's, or a caller's on an idle connection, on another thread), it said "not sent" of
        // requests that write then gave the stream, which sent them (`close()` under load).
        let written = {
            let mut outbox = self.shared.outbox.lock();
            outbox.stopped = true;
            state.written.load(Ordering::Acquire)
        };
        self.shared.room.notify_waiters();
        // Tell every request still waiting why its answer will not come.
        let waiting = current.into_iter().chain(std::iter::from_fn(|| self.routed.try_recv().ok()));
        for route in waiting.collect::<VecDeque<_>>() {
            let reason = match &closed {
                Closed::Lost(reason) if route.number > written => Closed::NotSent(reason.clone()),
                other => other.clone(),
            };
            if let Some(answer) = route.answer {
                let _ = answer.unbounded_send(Err(reason));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::client::Executed;

    const MAX_FRAME: usize = 1 << 20;

    /// A connection over an in-memory pipe of `capacity` bytes each way, and the server's end of it.
    fn connection(capacity: usize) -> (TcpConnection, DuplexStream) {
        let (client, server) = tokio::io::duplex(capacity);
        let config = ClientConfig::new("127.0.0.1:7000", "unused-ca.pem");
        let remote = "127.0.0.1:7000".parse().unwrap();
        (TcpConnection::start(client, remote, &config, None), server)
    }

    fn ping(payload_len: usize) -> Bytes {
        encode_frame(&CommandRequest::ping(vec![7u8; payload_len]), MAX_FRAME).unwrap()
    }

    /// Reads one whole request frame from the server's end; returns its length.
    async fn read_frame(server: &mut DuplexStream) -> usize {
        let len = server.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len];
        server.read_exact(&mut body).await.unwrap();
        4 + len
    }

    async fn answer(server: &mut DuplexStream, message: &str) {
        let frame = encode_frame(&CommandResponse::error(status::OK, message), MAX_FRAME).unwrap();
        server.write_all(&frame).await.unwrap();
    }

    /// Polls `future` once: whether it has finished.
    fn finished<F: Future + Unpin>(future: &mut F) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx).is_ready()
    }

    #[tokio::test]
    async fn answers_reach_their_callers_whether_a_frame_went_out_at_once_or_through_the_writer() {
        let (connection, mut server) = connection(64 * 1024);
        // Alone on the connection: written by the call itself.
        let mut first = connection.send(ping(10)).await.unwrap();
        // An answer is outstanding: these wait for the writer, and go out after the first, in order.
        let mut second = connection.send(ping(20)).await.unwrap();
        let mut third = connection.send(ping(30)).await.unwrap();
        let lengths =
            [read_frame(&mut server).await, read_frame(&mut server).await, read_frame(&mut server).await];
        assert_eq!(lengths, [ping(10).len(), ping(20).len(), ping(30).len()]);
        for name in ["first", "second", "third"] {
            answer(&mut server, name).await;
        }
        for (frames, name) in [(&mut first, "first"), (&mut second, "second"), (&mut third, "third")] {
            assert_eq!(frames.next().await.unwrap().unwrap().message, name);
            assert!(frames.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn requests_the_connection_never_took_fail_as_not_sent_and_the_rest_as_maybe_executed() {
        // Room for the first two frames only, and a server that reads nothing.
        let frame = ping(40);
        let (connection, server) = connection(2 * frame.len());
        let mut calls = Vec::new();
        for _ in 0..4 {
            calls.push(connection.send(frame.clone()).await.unwrap());
        }
        // Once the writer has filled the pipe, the server goes away.
        while connection.shared.state.written.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        drop(server);
        let mut executed = Vec::new();
        for mut frames in calls {
            let error = frames.next().await.unwrap().unwrap_err();
            executed.push(error.executed());
        }
        assert_eq!(executed, [Executed::Maybe, Executed::Maybe, Executed::No, Executed::No]);
    }

    /// A refusal the server closes the connection after: the requests sent behind it were not executed
    /// (it reads nothing more), and none is sent on the connection after it.
    #[tokio::test]
    async fn requests_behind_a_refusal_that_closes_the_connection_were_not_executed() {
        let (connection, mut server) = connection(64 * 1024);
        let mut calls = Vec::new();
        for _ in 0..3 {
            calls.push(connection.send(ping(10)).await.unwrap());
        }
        for _ in 0..3 {
            read_frame(&mut server).await;
        }
        let refusal = "frame of 99 bytes exceeds the maximum frame size of 64 bytes; closing the connection";
        let frame =
            encode_frame(&CommandResponse::error(status::PAYLOAD_TOO_LARGE, refusal), MAX_FRAME).unwrap();
        server.write_all(&frame).await.unwrap();
        let first = calls.remove(0).next().await.unwrap().unwrap();
        assert_eq!(first.status, status::PAYLOAD_TOO_LARGE);
        let after = connection.send(ping(10)).await.map(drop).expect_err("nothing more is sent on it");
        assert_eq!(after.executed(), Executed::No, "{after}");
        // However the connection then ends: here with an error, as a reset would.
        drop(server);
        for mut frames in calls {
            let error = frames.next().await.unwrap().unwrap_err();
            assert_eq!(error.executed(), Executed::No, "{error}");
        }
    }

    /// A 503 that does not say it closes the connection refused its own request alone, even when the
    /// connection ends right after it: the server also ends a connection when it cannot hold an answer,
    /// after executing its request, and that answer may have been the next one (a publish's 503, then
    /// the write behind it, executed, its answer dropped). The requests behind it may have run.
    #[tokio::test]
    async fn a_503_then_the_end_of_the_connection_leaves_the_requests_behind_it_uncertain() {
        let (connection, mut server) = connection(64 * 1024);
        let mut calls = Vec::new();
        for _ in 0..2 {
            calls.push(connection.send(ping(10)).await.unwrap());
        }
        for _ in 0..2 {
            read_frame(&mut server).await;
        }
        let refusal = CommandResponse::error(status::UNAVAILABLE, "no memory to queue the message");
        server.write_all(&encode_frame(&refusal, MAX_FRAME).unwrap()).await.unwrap();
        server.shutdown().await.unwrap();
        let first = calls.remove(0).next().await.unwrap().unwrap();
        assert_eq!(first.status, status::UNAVAILABLE);
        let behind = calls.remove(0).next().await.unwrap().unwrap_err();
        assert_eq!(behind.executed(), Executed::Maybe, "{behind}");
    }

    /// A request that meets a connection already given up was never sent: it was not executed (it
    /// is retried), whatever the requests sent before it met.
    #[tokio::test]
    async fn a_request_refused_by_a_connection_given_up_was_not_executed() {
        let (connection, _server) = connection(64 * 1024);
        connection.abandon();
        let error = connection.send(ping(10)).await.map(drop).expect_err("the connection is given up");
        assert_eq!(error.executed(), Executed::No, "{error}");
    }

    /// An idle connection is pinged once every keep-alive interval (the server's idle timeout counts on
    /// it), not every other one: the ping itself is not activity. On tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_pinged_every_keep_alive_interval() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let config = ClientConfig {
            keep_alive: Duration::from_secs(10),
            ..ClientConfig::new("127.0.0.1:7000", "ca.pem")
        };
        let _connection = TcpConnection::start(client, "127.0.0.1:7000".parse().unwrap(), &config, None);
        let empty_ping = encode_frame(&CommandRequest::ping(Bytes::new()), MAX_FRAME).unwrap().len();
        let started = tokio::time::Instant::now();
        for n in 1..=4u32 {
            assert_eq!(read_frame(&mut server).await, empty_ping);
            assert_eq!(started.elapsed(), n * Duration::from_secs(10), "ping {n}");
        }
    }

    /// A byte stream whose first write holds its thread inside the write until the test lets it go on:
    /// a write under way on another thread while the connection ends.
    struct HeldWrite {
        stream: DuplexStream,
        entered: Option<std::sync::mpsc::Sender<()>>,
        release: std::sync::mpsc::Receiver<()>,
    }

    impl AsyncRead for HeldWrite {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HeldWrite {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if let Some(entered) = this.entered.take() {
                let _ = entered.send(());
                let _ = this.release.recv();
            }
            Pin::new(&mut this.stream).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
        }
    }

    /// A call whose frame the stream takes while the client closes, on another thread, reached the
    /// server: it is not "not sent" (`Executed::No`), which would let it be sent again and applied twice.
    // Threads: the held write's, and the reader's and the writer's, which wait for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn a_request_written_as_the_client_closes_may_have_been_executed() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let (entered, inside) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        let stream = HeldWrite { stream: client, entered: Some(entered), release: released };
        let config = ClientConfig::new("127.0.0.1:7000", "unused-ca.pem");
        let remote = "127.0.0.1:7000".parse().unwrap();
        let connection = Arc::new(TcpConnection::start(stream, remote, &config, None));
        // On an idle connection the call writes its frame itself: held there, on a worker thread.
        let sending = tokio::spawn({
            let connection = connection.clone();
            async move { connection.send(ping(10)).await }
        });
        tokio::task::spawn_blocking(move || inside.recv()).await.unwrap().unwrap();
        connection.abandon();
        // The reader may now tell the call what became of it, and must wait for the write to end: the
        // write is let go once the reader has finished or half a second has passed (the reader before
        // said "not sent" at once). On a thread of its own: with the workers held, no timer runs.
        let reader = connection.tasks.lock().await.pop().expect("the reader's task");
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !reader.is_finished() && start.elapsed() < Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = release.send(());
        });
        let mut frames = sending.await.unwrap().expect("the call was taken");
        let error = frames.next().await.expect("an end").expect_err("no answer comes");
        assert_eq!(error.executed(), Executed::Maybe, "{error}");
        assert_eq!(read_frame(&mut server).await, ping(10).len(), "the server got it");
    }

    #[tokio::test]
    async fn callers_wait_for_room_while_the_server_reads_nothing() {
        let (connection, mut server) = connection(1024);
        let big = ping(OUTBOX_LIMIT / 2);
        let _first = connection.send(big.clone()).await.unwrap();
        // The pipe takes 1 KiB of the first; the rest of it and the next two fill the outbox.
        let _second = connection.send(big.clone()).await.unwrap();
        let _third = connection.send(big.clone()).await.unwrap();
        let mut fourth = Box::pin(connection.send(ping(10)));
        assert!(!finished(&mut fourth), "a call was queued beyond the outbox's limit");
        // The server reads: the waiting call goes out after the others.
        for _ in 0..3 {
            assert_eq!(read_frame(&mut server).await, big.len());
        }
        let _fourth = fourth.await.unwrap();
        assert_eq!(read_frame(&mut server).await, ping(10).len());
    }
}
