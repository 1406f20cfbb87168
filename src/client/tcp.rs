//! The client over TCP (TLS 1.3 or plaintext): one connection, requests pipelined on it.
//!
//! One task owns the connection. Callers hand it request frames; it writes them in arrival order (many
//! per flush when they come in bursts) and remembers, in the same order, where each answer goes. Frames
//! coming back belong to the oldest unanswered request until one says `more = false`.
//!
//! A 503 frame means the server is shutting down and executes nothing more on this connection: that
//! request and every later one fail with [`ClientError::ServerShuttingDown`], safe to retry elsewhere.

use std::collections::VecDeque;
use std::net::SocketAddr;
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

use super::frames::ResponseFrames;
use super::{ClientConfig, ClientError, ClientResult};
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::tls::ALPN;
use crate::transport::frame::{FrameCodec, encode_frame};

/// Frames of one answer the connection task may queue before waiting for the caller to read them.
const FRAMES_QUEUED_PER_REPLY: usize = 4;

/// Why a TCP connection stopped carrying requests.
#[derive(Debug, Clone)]
pub(super) enum Closed {
    /// The server said 503: it is shutting down and executed none of the unanswered requests.
    ShuttingDown,
    Lost(String),
}

impl Closed {
    pub(super) fn error(&self) -> ClientError {
        match self {
            Closed::ShuttingDown => ClientError::ServerShuttingDown,
            Closed::Lost(reason) => ClientError::Stream(format!("the TCP connection was lost: {reason}")),
        }
    }
}

/// A request for the connection task, and where its answer's frames go.
struct Call {
    frame: Bytes,
    frames: mpsc::Sender<CommandResponse>,
}

pub(super) struct TcpConnection {
    calls: mpsc::Sender<Call>,
    closed: Arc<OnceLock<Closed>>,
    closing: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
    remote: SocketAddr,
}

impl TcpConnection {
    /// Connects; with `tls`, verifies the server and requires ALPN `qkv/1`.
    pub(super) async fn connect(
        config: &ClientConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: &str,
        remote: SocketAddr,
    ) -> ClientResult<Self> {
        let connect_error = |reason: String| ClientError::Connect { addr: config.addr.clone(), reason };
        let timed_out =
            || ClientError::ConnectTimeout { addr: config.addr.clone(), timeout: config.connect_timeout };
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(remote))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| connect_error(format!("{e} (is the server running, with TCP on?)")))?;
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let keepalive = config.limits.idle_timeout / 3;
        let max_frame_len = config.limits.max_frame_len;
        let Some(tls) = tls else {
            return Ok(Self::start(stream, remote, max_frame_len, keepalive));
        };
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| connect_error(format!("{server_name:?} is not a valid server name: {e}")))?;
        let handshake = TlsConnector::from(tls).connect(name, stream);
        let stream = tokio::time::timeout(config.connect_timeout, handshake)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| {
                // Only certificate failures are about the CA file; anything else is usually a server that
                // does not speak TLS on TCP at all.
                let certificate = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
                match certificate {
                    Some(rustls::Error::InvalidCertificate(_)) => ClientError::Handshake {
                        addr: config.addr.clone(),
                        ca_file: config.ca_file.clone(),
                        reason: e.to_string(),
                    },
                    _ => connect_error(format!(
                        "TLS handshake failed: {e} (does the server serve TLS on TCP, not plaintext?)"
                    )),
                }
            })?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(connect_error("the server did not agree to the qkv/1 protocol (ALPN)".into()));
        }
        Ok(Self::start(stream, remote, max_frame_len, keepalive))
    }

    fn start<IO>(io: IO, remote: SocketAddr, max_frame_len: usize, keepalive: Duration) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        // Enough room that a burst of concurrent callers is written in one go.
        let (calls, queue) = mpsc::channel(1024);
        let closed = Arc::new(OnceLock::new());
        let closing = CancellationToken::new();
        let task =
            Connection { queue, closed: closed.clone(), closing: closing.clone(), max_frame_len, keepalive };
        let task = tokio::spawn(task.run(io));
        TcpConnection { calls, closed, closing, task: Mutex::new(Some(task)), remote }
    }

    pub(super) async fn send(&self, frame: Bytes) -> ClientResult<ResponseFrames> {
        let (frames, receiver) = mpsc::channel(FRAMES_QUEUED_PER_REPLY);
        if self.calls.send(Call { frame, frames }).await.is_err() {
            return Err(self
                .closed
                .get()
                .map_or_else(|| Closed::Lost("the connection ended".into()).error(), Closed::error));
        }
        Ok(ResponseFrames::tcp(receiver, self.closed.clone()))
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    pub(super) async fn close(&self) {
        self.closing.cancel();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// The task that owns the connection.
struct Connection {
    queue: mpsc::Receiver<Call>,
    closed: Arc<OnceLock<Closed>>,
    closing: CancellationToken,
    max_frame_len: usize,
    keepalive: Duration,
}

impl Connection {
    async fn run<IO: AsyncRead + AsyncWrite>(mut self, io: IO) {
        let (read, write) = tokio::io::split(io);
        let mut answers = FramedRead::new(read, FrameCodec::<CommandResponse>::new(self.max_frame_len));
        let mut requests = FramedWrite::new(write, BytesCodec::new());
        // Where the frames of each unanswered request go, oldest first; `None` for keep-alive pings.
        let mut pending: VecDeque<Option<mpsc::Sender<CommandResponse>>> = VecDeque::new();
        let mut unflushed = false;
        let mut quiet = true;
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.tick().await;

        let closed = loop {
            tokio::select! {
                biased;
                _ = self.closing.cancelled() => break Closed::Lost("the client closed the connection".into()),
                call = self.queue.recv() => {
                    let Some(call) = call else { break Closed::Lost("the client was dropped".into()) };
                    if let Err(e) = requests.feed(call.frame).await {
                        break Closed::Lost(format!("writing failed: {e}"));
                    }
                    pending.push_back(Some(call.frames));
                    (unflushed, quiet) = (true, false);
                }
                frame = answers.next() => {
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => break Closed::Lost(format!("bad answer from the server: {e}")),
                        None => break Closed::Lost("the server closed the connection".into()),
                    };
                    quiet = false;
                    let last = !frame.more;
                    let shutting_down = last && frame.status == status::UNAVAILABLE;
                    match pending.front() {
                        // A caller that dropped its reply still has its frames read here, and discarded.
                        Some(Some(caller)) => {
                            let _ = caller.send(frame).await;
                        }
                        Some(None) => {}
                        // Not an answer to anything: only a 503 announcing shutdown may do that.
                        None if shutting_down => break Closed::ShuttingDown,
                        None => break Closed::Lost("the server sent a frame no request asked for".into()),
                    }
                    if last {
                        pending.pop_front();
                    }
                    if shutting_down {
                        break Closed::ShuttingDown;
                    }
                }
                flushed = SinkExt::<Bytes>::flush(&mut requests), if unflushed => {
                    if let Err(e) = flushed {
                        break Closed::Lost(format!("writing failed: {e}"));
                    }
                    unflushed = false;
                }
                _ = keepalive.tick() => {
                    // Keep an idle connection (and the NATs on its way) open, as QUIC's keep-alives do.
                    if quiet && pending.is_empty() {
                        let Ok(ping) = encode_frame(&CommandRequest::ping(Bytes::new()), self.max_frame_len) else {
                            continue;
                        };
                        if requests.feed(ping.freeze()).await.is_err() {
                            break Closed::Lost("writing a keep-alive failed".into());
                        }
                        pending.push_back(None);
                        unflushed = true;
                    }
                    quiet = true;
                }
            }
        };
        // Record why before dropping the senders: callers read it when their frames stop.
        let _ = self.closed.set(closed);
        drop(pending);
        self.queue.close();
        let _ = requests.get_mut().shutdown().await;
    }
}
