//! The client over TCP (TLS 1.3 or plaintext): one connection, requests pipelined on it.
//!
//! Two tasks own the connection. The writer takes callers' request frames in arrival order, writes them
//! (many per flush when they come in bursts), and before each one tells the reader where its answer
//! goes. The reader routes incoming frames to the oldest unanswered request until one says
//! `more = false`. Neither ever waits for the other or for a caller: answers are queued for callers
//! without limit, so a caller that holds a reply without reading it cannot stall the connection (it
//! only keeps that reply in memory), and a writer blocked on a full socket never stops answers from
//! being read.
//!
//! A 503 frame means the server executes nothing more on this connection: that request and every later
//! one fail with [`ClientError::Unavailable`], safe to retry elsewhere.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{BytesCodec, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::error::Cause;
use super::frames::ResponseFrames;
use super::{ClientConfig, ClientError, ClientResult, Stats};
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::transport::frame::{FrameCodec, FrameError, encode_frame};

/// Why a TCP connection stopped carrying requests, as each unanswered request learns it.
#[derive(Debug, Clone)]
pub(super) enum Closed {
    /// The server said 503: it executed neither this request nor any later one on the connection.
    Unavailable(String),
    /// The request was never written to the connection.
    NotSent(Cause),
    /// The connection failed with the request sent; it may or may not have been executed.
    Lost(Cause),
    /// The server refused the client's certificate, or its lack of one, after the handshake.
    CertificateRefused(Cause),
}

impl Closed {
    pub(super) fn error(&self) -> ClientError {
        match self.clone() {
            Closed::Unavailable(reason) => ClientError::Unavailable { reason },
            Closed::NotSent(cause) => ClientError::NotSent { cause },
            Closed::Lost(cause) => ClientError::ConnectionLost(cause),
            Closed::CertificateRefused(cause) => ClientError::ClientCertificateRefused { cause },
        }
    }
}

/// One frame of an answer, or why the answer ends early.
pub(super) type FrameResult = Result<CommandResponse, Closed>;

/// What both tasks and the callers share.
pub(super) struct State {
    /// Set once, when the connection stops carrying requests.
    closed: OnceLock<Closed>,
    /// The number of the last request written whole into the writer's buffer: requests numbered above
    /// it never reached the server.
    written: AtomicU64,
}

impl State {
    /// Why frames stopped coming for a request whose queue ended without saying.
    pub(super) fn reason(&self) -> Closed {
        self.closed.get().cloned().unwrap_or(Closed::Lost(Cause::ConnectionEnded))
    }
}

/// A request for the writer, and where its answer's frames go.
struct Call {
    frame: Bytes,
    answer: mpsc::UnboundedSender<FrameResult>,
}

/// Where the reader sends the frames of request `number`; `None` for keep-alive pings.
struct Route {
    number: u64,
    answer: Option<mpsc::UnboundedSender<FrameResult>>,
}

pub(super) struct TcpConnection {
    calls: mpsc::Sender<Call>,
    state: Arc<State>,
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
) -> ClientResult<Box<dyn ByteStream>> {
    let timed_out =
        || ClientError::ConnectTimeout { addr: config.addr.clone(), timeout: config.connect_timeout };
    let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(remote))
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
    let Some(tls) = tls else {
        return Ok(Box::new(stream));
    };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| {
        ClientError::InvalidConfig(format!("{server_name:?} is not a valid server name: {e}"))
    })?;
    let offered = tls.alpn_protocols.clone();
    let handshake = TlsConnector::from(tls).connect(name, stream);
    let stream = tokio::time::timeout(config.connect_timeout, handshake)
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
        let stream = open_stream(config, tls, server_name, remote, stats).await?;
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
        // Enough room that a burst of concurrent callers is written in one go.
        let (calls, queue) = mpsc::channel(1024);
        let (routes, routed) = mpsc::unbounded_channel();
        let state = Arc::new(State { closed: OnceLock::new(), written: AtomicU64::new(0) });
        let closing = CancellationToken::new();
        // The reader stops the writer when the connection is over.
        let over = closing.child_token();
        let writer =
            Writer { queue, routes, state: state.clone(), over: over.clone(), max_frame_len, keepalive };
        let reader = Reader { routed, state: state.clone(), over, closing: closing.clone(), max_frame_len };
        let tasks = vec![tokio::spawn(writer.run(write)), tokio::spawn(reader.run(read))];
        TcpConnection { calls, state, closing, tasks: Mutex::new(tasks), remote, more }
    }

    /// Another byte stream on this one's connection, if it can carry more.
    #[cfg(feature = "web-client")]
    pub(super) fn opener(&self) -> Option<StreamOpener> {
        self.more.clone()
    }

    pub(super) async fn send(&self, frame: Bytes) -> ClientResult<ResponseFrames> {
        if let Some(closed) = self.state.closed.get() {
            return Err(closed.error());
        }
        let (answer, frames) = mpsc::unbounded_channel();
        if self.calls.send(Call { frame, answer }).await.is_err() {
            return Err(self.state.reason().error());
        }
        Ok(ResponseFrames::tcp(frames, self.state.clone()))
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// False once the connection has stopped carrying requests: the next call needs a new one.
    pub(super) fn is_usable(&self) -> bool {
        self.state.closed.get().is_none() && !self.closing.is_cancelled()
    }

    /// Gives the connection up without waiting: its unanswered requests fail at once. A call that
    /// timed out does this, because its answer holds back every later one on the connection.
    pub(super) fn abandon(&self) {
        self.closing.cancel();
    }

    pub(super) async fn close(&self) {
        self.closing.cancel();
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
    }
}

/// Only certificate failures are about the CA file; a reset or non-TLS data means something else.
fn handshake_error(config: &ClientConfig, e: std::io::Error) -> ClientError {
    let addr = config.addr.clone();
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned() {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => {
            ClientError::Handshake { addr, ca_file: config.ca_file.clone(), cause: tls.into() }
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
    queue: mpsc::Receiver<Call>,
    routes: mpsc::UnboundedSender<Route>,
    state: Arc<State>,
    over: CancellationToken,
    max_frame_len: usize,
    keepalive: Duration,
}

impl Writer {
    async fn run<W: AsyncWrite + Unpin>(mut self, write: W) {
        let mut requests = FramedWrite::new(write, BytesCodec::new());
        let mut number = 0;
        let mut unflushed = false;
        let mut quiet = true;
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.tick().await;
        loop {
            let frame = tokio::select! {
                biased;
                _ = self.over.cancelled() => break,
                call = self.queue.recv() => {
                    // `None`: every handle on the client is gone. Stop writing; the reader goes on until
                    // the answers already asked for have come.
                    let Some(call) = call else { break };
                    Some((call.frame, Some(call.answer)))
                }
                flushed = SinkExt::<Bytes>::flush(&mut requests), if unflushed => {
                    if let Err(e) = flushed {
                        let _ = self.state.closed.set(Closed::Lost(e.into()));
                        break;
                    }
                    unflushed = false;
                    None
                }
                _ = keepalive.tick() => {
                    // Keep an idle connection (and the NATs on its way) open, as QUIC's keep-alives do.
                    let idle = std::mem::replace(&mut quiet, true);
                    let ping = encode_frame(&CommandRequest::ping(Bytes::new()), self.max_frame_len);
                    match ping {
                        Ok(ping) if idle => Some((ping, None)),
                        _ => None,
                    }
                }
            };
            let Some((frame, answer)) = frame else { continue };
            number += 1;
            // Routed first, so the reader knows where the answer goes before it can arrive.
            if self.routes.send(Route { number, answer }).is_err() {
                break;
            }
            if let Err(e) = requests.feed(frame).await {
                let _ = self.state.closed.set(Closed::Lost(e.into()));
                break;
            }
            self.state.written.store(number, Ordering::Release);
            (unflushed, quiet) = (true, false);
        }
        // Whatever is still queued was never written.
        self.queue.close();
        while let Ok(call) = self.queue.try_recv() {
            let reason = self.state.reason();
            let _ = call.answer.send(Err(match reason {
                Closed::Lost(reason) => Closed::NotSent(reason),
                other => other,
            }));
        }
        // Send what was written, then close this side: the server answers what it has read and closes
        // its side, and the reader sees that through.
        let _ = SinkExt::<Bytes>::flush(&mut requests).await;
        let _ = requests.get_mut().shutdown().await;
    }
}

struct Reader {
    routed: mpsc::UnboundedReceiver<Route>,
    state: Arc<State>,
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
        let closed = loop {
            let frame = tokio::select! {
                biased;
                _ = self.closing.cancelled() => break Closed::Lost(Cause::ClientClosed),
                frame = answers.next() => frame,
            };
            let frame = match frame {
                Some(Ok(frame)) => frame,
                Some(Err(FrameError::Io(e))) => match ClientError::certificate_alert(&e) {
                    Some(alert) => break Closed::CertificateRefused(alert.into()),
                    None => break Closed::Lost(e.into()),
                },
                Some(Err(e)) => break Closed::Lost(e.into()),
                None => break Closed::Lost(Cause::ServerClosed),
            };
            let unavailable = !frame.more && frame.status == status::UNAVAILABLE;
            let reason = unavailable.then(|| frame.message.clone());
            // The writer routes each request before writing it, so its route is here before its answer.
            let Some(route) = current.take().or_else(|| self.routed.try_recv().ok()) else {
                // Only a 503 may come unasked: the server announcing that it closes.
                match reason {
                    Some(reason) => break Closed::Unavailable(reason),
                    None => break Closed::Lost(Cause::UnaskedFrame),
                }
            };
            let more = frame.more;
            if let Some(answer) = &route.answer {
                // A caller that dropped its reply still has its frames read here, and discarded.
                let _ = answer.send(Ok(frame));
            }
            if more {
                current = Some(route);
            }
            if let Some(reason) = reason {
                break Closed::Unavailable(reason);
            }
        };
        let _ = self.state.closed.set(closed.clone());
        self.over.cancel();
        // Tell every request still waiting why its answer will not come.
        let written = self.state.written.load(Ordering::Acquire);
        let waiting = current.into_iter().chain(std::iter::from_fn(|| self.routed.try_recv().ok()));
        for route in waiting.collect::<VecDeque<_>>() {
            let reason = match &closed {
                Closed::Lost(reason) if route.number > written => Closed::NotSent(reason.clone()),
                other => other.clone(),
            };
            if let Some(answer) = route.answer {
                let _ = answer.send(Err(reason));
            }
        }
    }
}
