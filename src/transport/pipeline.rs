//! Many requests on one byte stream (TCP, TLS over TCP): requests are read frame after frame, executed
//! concurrently, and answered strictly in request order, every frame of one answer before the next.
//!
//! One task per connection does it all. A `FuturesOrdered` holds the requests in progress: they run
//! concurrently whenever the task polls them, and their answers come out in request order. The loop
//! prefers reading (so a burst of pipelined requests is taken in at once), then writes every answer that
//! is ready, and flushes only when there is nothing else to do, so many answers share one write. Reading
//! stops while `max_concurrent_requests` requests, or `max_request_buffer` request bytes, are in
//! progress: a client that writes faster than it reads is held back by TCP's own flow control.
//!
//! A connection ends when the client closes it, after its last answer; when a frame is bad (an error
//! frame, then close: on a byte stream there is no way to resynchronise); when a frame takes longer than
//! the request timeout to arrive (408); when it is idle for the idle timeout; or at shutdown, with a 503
//! frame meaning "this request and all later ones on this connection were not executed".

use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Limits;
use super::frame::{FrameCodec, FrameError};
use super::stall::StallTimeout;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Reply, Service};
use crate::storage::Storage;

/// After its last frame the server keeps reading (and discarding) for this long before closing, so the
/// client's unread requests do not turn the close into a reset that could destroy the answers in flight.
const LINGER: Duration = Duration::from_secs(1);

/// Why a connection stopped taking requests.
#[derive(Debug)]
enum Ending {
    /// The client closed its side after a whole frame.
    ClientClosed,
    /// A bad frame: answered with `response`, then the connection closes.
    Rejected { response: CommandResponse, reason: String },
    /// The client stopped mid-frame for the request timeout.
    TimedOut,
    /// Nothing happened for the idle timeout.
    Idle,
    /// The server is shutting down.
    ShuttingDown,
    /// Reading failed: the connection is gone.
    Failed(std::io::Error),
}

impl Ending {
    /// The frame that ends the connection, if the client should get one.
    fn last_frame(&self, limits: &Limits) -> Option<CommandResponse> {
        match self {
            Ending::Rejected { response, .. } => Some(response.clone()),
            Ending::TimedOut => Some(CommandResponse::error(
                status::REQUEST_TIMEOUT,
                format!(
                    "the request did not arrive within {:?}; closing the connection",
                    limits.request_timeout
                ),
            )),
            Ending::ShuttingDown => Some(CommandResponse::error(
                status::UNAVAILABLE,
                "the server is shutting down; this request and any later ones on this connection were not executed",
            )),
            Ending::ClientClosed | Ending::Idle | Ending::Failed(_) => None,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::ClientClosed => f.write_str("the client closed the connection"),
            Ending::Rejected { reason, .. } => write!(f, "bad frame: {reason}"),
            Ending::TimedOut => f.write_str("a request frame did not arrive within the request timeout"),
            Ending::Idle => f.write_str("idle for the idle timeout"),
            Ending::ShuttingDown => f.write_str("the server is shutting down"),
            Ending::Failed(e) => write!(f, "reading failed: {e}"),
        }
    }
}

/// An answer and the request bytes it was holding.
struct Answered {
    reply: Reply,
    request_bytes: usize,
}

/// Serves one pipelined connection until it ends; see the module documentation.
pub async fn serve_pipelined<IO, S>(
    io: IO,
    service: Service<S>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Storage,
{
    let (read, write) = tokio::io::split(io);
    let mut requests = FramedRead::new(read, FrameCodec::<CommandRequest>::new(limits.max_frame_len));
    let mut answers = FramedWrite::new(
        StallTimeout::new(write, limits.reply_timeout),
        FrameCodec::<CommandResponse>::new(limits.max_frame_len),
    );
    let mut in_flight = FuturesOrdered::new();
    let mut in_flight_bytes = 0;
    let mut unflushed = false;
    let mut ending: Option<Ending> = None;
    // One deadline serves both timeouts: the request timeout while a frame is partly received, the
    // idle timeout while nothing at all is going on.
    let mut deadline = pin!(tokio::time::sleep(limits.idle_timeout));
    let mut watching: Option<Watch> = None;

    loop {
        // Room for one more request of any size: stop reading otherwise, and let TCP push back.
        let can_read = ending.is_none()
            && in_flight.len() < limits.max_concurrent_requests as usize
            && in_flight_bytes + limits.max_frame_len <= limits.max_request_buffer;
        if ending.is_some() && in_flight.is_empty() {
            break;
        }
        let watch = match (can_read, requests.read_buffer().is_empty(), in_flight.is_empty()) {
            (true, false, _) => Some(Watch::PartialFrame),
            (true, true, true) if !unflushed => Some(Watch::Idle),
            _ => None,
        };
        if watch != watching {
            watching = watch;
            let timeout = match watch {
                Some(Watch::PartialFrame) => limits.request_timeout,
                _ => limits.idle_timeout,
            };
            deadline.as_mut().reset(Instant::now() + timeout);
        }

        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if ending.is_none() => ending = Some(Ending::ShuttingDown),
            frame = requests.next(), if can_read => match frame {
                Some(Ok(request)) => {
                    let request_bytes = request.encoded_len();
                    in_flight_bytes += request_bytes;
                    let service = service.clone();
                    in_flight.push_back(async move {
                        tracing::trace!(command = request.command_name(), "request");
                        Answered { reply: service.execute(request).await, request_bytes }
                    });
                    watching = None; // a new frame starts a new request-timeout period
                }
                Some(Err(FrameError::Io(e))) => ending = Some(Ending::Failed(e)),
                Some(Err(e)) => ending = Some(rejected(e)),
                None => ending = Some(Ending::ClientClosed),
            },
            Some(answered) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_bytes -= answered.request_bytes;
                if let Err(e) = feed_reply(&mut answers, answered.reply).await {
                    debug!(error = %e, "writing an answer failed; closing the connection");
                    return;
                }
                unflushed = true;
            }
            flushed = SinkExt::<CommandResponse>::flush(&mut answers), if unflushed => {
                if let Err(e) = flushed {
                    debug!(error = %e, "writing answers failed; closing the connection");
                    return;
                }
                unflushed = false;
            }
            _ = deadline.as_mut(), if watching.is_some() => {
                ending = Some(if watching == Some(Watch::PartialFrame) { Ending::TimedOut } else { Ending::Idle });
            }
        }
    }

    let ending = ending.unwrap_or(Ending::ClientClosed);
    match &ending {
        Ending::Rejected { .. } | Ending::TimedOut => warn!(reason = %ending, "closing the connection"),
        Ending::Failed(_) => info!(reason = %ending, "closing the connection"),
        _ => debug!(reason = %ending, "closing the connection"),
    }
    if let Some(last) = ending.last_frame(&limits)
        && let Err(e) = answers.send(last).await
    {
        debug!(error = %e, "could not send the last frame");
    }
    let _ = SinkExt::<CommandResponse>::flush(&mut answers).await;
    let _ = answers.get_mut().shutdown().await;
    linger(requests.into_inner()).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    PartialFrame,
    Idle,
}

fn rejected(e: FrameError) -> Ending {
    let status = match e {
        FrameError::TooLarge { .. } => status::PAYLOAD_TOO_LARGE,
        _ => status::BAD_REQUEST,
    };
    let reason = e.to_string();
    Ending::Rejected {
        response: CommandResponse::error(status, format!("{reason}; closing the connection")),
        reason,
    }
}

/// Writes a reply's frames into the sink's buffer. One frame is left unflushed (the caller flushes when
/// nothing else is ready); a stream of frames is flushed whenever its producer has to wait.
async fn feed_reply<W: AsyncWrite + Unpin>(
    answers: &mut FramedWrite<W, FrameCodec<CommandResponse>>,
    reply: Reply,
) -> Result<(), FrameError> {
    match reply {
        Reply::One(response) => answers.feed(response).await,
        Reply::Stream(mut frames) => answers.send_all(&mut frames.by_ref().map(Ok)).await,
    }
}

/// Reads and discards what the client still sends, until it closes or `LINGER` passes.
async fn linger<R: AsyncRead + Unpin>(mut read: R) {
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = read.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
