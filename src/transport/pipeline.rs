//! Many requests on one byte stream (TCP, TLS over TCP): requests are read frame after frame, executed
//! concurrently where that cannot be observed, and answered strictly in request order, every frame of
//! one answer before the next.
//!
//! One task serves a connection. Its loop reads bytes and decodes frames itself (with the same
//! `FrameCodec` as everywhere), so that it sees a partial frame the moment it arrives and can hold it to
//! the request timeout. Decoded requests enter an [`InOrder`] queue, which runs them and hands their
//! answers back in request order:
//!
//! - Reads run concurrently with each other. A write starts only once every earlier request has
//!   finished, and nothing starts while a write runs: each request sees exactly the writes sent before
//!   it, though multi-key commands take several steps. With a backend that applies writes in the order
//!   they are issued (`Storage::APPLIES_WRITES_IN_ISSUE_ORDER`: the disk store), a write waits only for
//!   earlier reads, so consecutive writes run together and share a group commit; each is issued (polled
//!   once) as it starts, so they are issued in request order.
//! - Reading stops while `max_concurrent_requests` requests are unanswered or while their bytes (requests
//!   running, plus answers finished but not yet written) reach `max_request_buffer`; TCP's flow control
//!   then holds the client back. The connection holds at most that, plus one frame being received.
//! - Answers ready together are written with one flush.
//! - An answer that is a stream of frames (a large `Hgetall`, a subscription) is written frame by frame
//!   as the frames come and the socket takes them, while the loop goes on reading and running
//!   requests; answers after it wait their turn. A subscription's answer lasts until it is ended, so an
//!   `Unsubscribe` sent on the same connection runs at once (it is not a write) and ends it; then its
//!   own answer follows (docs/PROTOCOL.md, section 6.1).
//!
//! A connection ends when the client closes it, after its last answer (its subscriptions end first,
//! each with its last frame); when a frame is bad (an error frame, then close: on a byte stream there
//! is no way to resynchronise); when a frame takes longer than the request timeout to arrive (408);
//! when it is idle for the idle timeout; or at shutdown, with a 503 frame meaning "this request and all
//! later ones on this connection were not executed".

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Limits;
use super::exchange::RequestError;
use super::frame::{FrameCodec, FrameError};
use super::timeouts::StallTimeout;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Caller, Reply, ReplyStream, Service};
use crate::storage::Storage;

/// After its last frame the server keeps reading (and discarding) for this long before closing, so the
/// client's unread requests do not turn the close into a reset that could destroy the answers in flight.
const LINGER: Duration = Duration::from_secs(1);

/// Bytes asked of the socket per read, beyond what the frame being decoded needs.
const READ_CHUNK: usize = 16 * 1024;

/// Why a connection stopped taking requests.
#[derive(Debug)]
enum Ending {
    /// The client closed its side after a whole frame.
    ClientClosed,
    /// A bad frame, a frame cut short, or one too slow to arrive: answered, then the connection closes.
    Rejected(RequestError),
    /// Nothing happened for the idle timeout.
    Idle,
    /// The server is shutting down.
    ShuttingDown,
    /// Reading failed: the connection is gone.
    Failed(std::io::Error),
}

impl Ending {
    /// The frame that ends the connection, if the client should get one.
    fn last_frame(&self) -> Option<CommandResponse> {
        match self {
            Ending::Rejected(e) => Some(e.response("; closing the connection")),
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
            Ending::Rejected(e) => write!(f, "bad request: {e}"),
            Ending::Idle => f.write_str("idle for the idle timeout"),
            Ending::ShuttingDown => f.write_str("the server is shutting down"),
            Ending::Failed(e) => write!(f, "reading failed: {e}"),
        }
    }
}

/// Serves one pipelined connection from `caller` until it ends; see the module documentation.
pub async fn serve_pipelined<IO, S>(
    io: IO,
    service: Service<S>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    caller: Caller,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Storage,
{
    let (mut read, write) = tokio::io::split(io);
    let mut codec = FrameCodec::<CommandRequest>::new(limits.max_frame_len);
    let mut received = BytesMut::new();
    let mut answers = FramedWrite::new(
        StallTimeout::new(write, limits.reply_timeout, limits.reply_min_progress),
        FrameCodec::<CommandResponse>::new(limits.max_frame_len),
    );
    let mut queue = InOrder::new();
    // The answer being written when it is a stream of frames (a large answer, a subscription): its
    // frames are written as they come, while the loop goes on reading and running requests.
    let mut current: Option<ReplyStream> = None;
    // A decoded request the queue cannot take yet; nothing more is decoded or read until it can.
    let mut waiting: Option<CommandRequest> = None;
    let mut unflushed = false;
    let mut ending: Option<Ending> = None;
    let mut subscriptions_ended = false;
    let mut partial_since: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let mut deadline = pin!(tokio::time::sleep(limits.idle_timeout));
    let mut armed: Option<Timer> = None;

    loop {
        // Start every request that may start now, decoding as many as are buffered.
        while ending.is_none() {
            let request = match waiting.take() {
                Some(request) => request,
                None => match codec.decode(&mut received) {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(FrameError::Io(e)) => {
                        ending = Some(Ending::Failed(e));
                        break;
                    }
                    Err(e) => {
                        ending = Some(Ending::Rejected(e.into()));
                        break;
                    }
                },
            };
            if !queue.may_start(&request, &limits, S::APPLIES_WRITES_IN_ISSUE_ORDER) {
                waiting = Some(request);
                break;
            }
            let (write, bytes) = (request.is_write(), request.encoded_len());
            let (service, caller) = (service.clone(), caller.clone());
            queue.start(write, bytes, async move { service.execute(request, &caller).await });
        }
        // Write every answer whose turn has come, up to one that is a stream of frames.
        while current.is_none()
            && let Some(reply) = queue.next_answer()
        {
            match reply {
                Reply::One(response) => {
                    if let Err(e) = answers.feed(response).await {
                        debug!(error = %e, "writing an answer failed; closing the connection");
                        let _ = answers.get_mut().shutdown().await;
                        return;
                    }
                    unflushed = true;
                }
                Reply::Stream(stream) => current = Some(stream),
            }
        }
        if ending.is_some() {
            if !subscriptions_ended {
                // The connection takes no more requests: its subscriptions end (each with a last
                // frame), so that the answers before the ending can all be written.
                service.connection_closing(&caller);
                subscriptions_ended = true;
            }
            if queue.is_empty() && current.is_none() {
                break;
            }
        }

        // One timer serves two timeouts: the request timeout from the moment a frame starts arriving,
        // the idle timeout while nothing at all is going on. It is set only when that changes.
        let partial = waiting.is_none() && (codec.inside_frame() || !received.is_empty());
        let wanted = if partial {
            Some(Timer::PartialFrame(*partial_since.get_or_insert_with(Instant::now)))
        } else {
            partial_since = None;
            (queue.is_empty() && current.is_none() && !unflushed && ending.is_none()).then_some(Timer::Idle)
        };
        if wanted != armed {
            armed = wanted;
            match armed {
                Some(Timer::PartialFrame(since)) => deadline.as_mut().reset(since + limits.request_timeout),
                Some(Timer::Idle) => deadline.as_mut().reset(idle_since + limits.idle_timeout),
                None => {}
            }
        }
        let may_read = ending.is_none() && waiting.is_none();
        if may_read {
            received.reserve(READ_CHUNK);
        }

        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if ending.is_none() => ending = Some(Ending::ShuttingDown),
            bytes = read.read_buf(&mut received), if may_read => match bytes {
                Ok(0) if partial => {
                    ending = Some(Ending::Rejected(FrameError::Truncated { buffered: received.len() }.into()));
                }
                Ok(0) => ending = Some(Ending::ClientClosed),
                Ok(_) => idle_since = Instant::now(),
                Err(e) => ending = Some(Ending::Failed(e)),
            },
            Some(done) = queue.running.next(), if !queue.running.is_empty() => queue.finish(done),
            written = std::future::poll_fn(|cx| poll_write(cx, &mut answers, &mut current, unflushed)),
                if current.is_some() || unflushed => match written {
                Ok(Written::NextFrame(frame)) => {
                    if let Err(e) = answers.start_send_unpin(frame) {
                        debug!(error = %e, "writing an answer failed; closing the connection");
                        return;
                    }
                    (unflushed, idle_since) = (true, Instant::now());
                }
                // A long answer just ended: the idle timeout counts from now, not from the last read.
                Ok(Written::StreamEnded) => (current, idle_since) = (None, Instant::now()),
                Ok(Written::Flushed) => unflushed = false,
                Err(e) => {
                    debug!(error = %e, "writing answers failed; closing the connection");
                    return;
                }
            },
            _ = deadline.as_mut(), if armed.is_some() => match armed {
                Some(Timer::PartialFrame(_)) => ending = Some(Ending::Rejected(RequestError::TimedOut(limits.request_timeout))),
                // The connection may have been busy since the timer was set: idle only if still so.
                _ if Instant::now() >= idle_since + limits.idle_timeout => ending = Some(Ending::Idle),
                _ => deadline.as_mut().reset(idle_since + limits.idle_timeout),
            },
        }
    }

    let ending = ending.unwrap_or(Ending::ClientClosed);
    match &ending {
        Ending::Rejected(_) => warn!(reason = %ending, "closing the connection"),
        Ending::Failed(_) => info!(reason = %ending, "closing the connection"),
        _ => debug!(reason = %ending, "closing the connection"),
    }
    if let Some(last) = ending.last_frame()
        && let Err(e) = answers.send(last).await
    {
        debug!(error = %e, "could not send the last frame");
    }
    let _ = SinkExt::<CommandResponse>::flush(&mut answers).await;
    let _ = answers.get_mut().shutdown().await;
    linger(read).await;
}

/// What writing answers came to.
enum Written {
    /// The next frame of the stream being written, for which the writer has room: to write now.
    NextFrame(CommandResponse),
    /// The stream being written has ended.
    StreamEnded,
    /// Everything written so far has been flushed.
    Flushed,
}

/// Takes the next frame of the stream answer being written once the writer has room for it (so a
/// client that does not read leaves a subscription's messages in its queue, where the lag policy deals
/// with them, rather than in the server's buffers); flushes when there is nothing else to write.
fn poll_write<W>(
    cx: &mut Context<'_>,
    answers: &mut W,
    current: &mut Option<ReplyStream>,
    unflushed: bool,
) -> Poll<Result<Written, FrameError>>
where
    W: Sink<CommandResponse, Error = FrameError> + Unpin,
{
    if let Some(stream) = current {
        ready!(answers.poll_ready_unpin(cx))?;
        if let Poll::Ready(frame) = stream.poll_next_unpin(cx) {
            return Poll::Ready(Ok(frame.map_or(Written::StreamEnded, Written::NextFrame)));
        }
    }
    if unflushed {
        ready!(answers.poll_flush_unpin(cx))?;
        return Poll::Ready(Ok(Written::Flushed));
    }
    Poll::Pending
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// A frame started arriving at this instant and is not whole yet.
    PartialFrame(Instant),
    Idle,
}

/// Requests in request order: running, or finished with their answer waiting for its turn.
struct InOrder<F> {
    running: FuturesUnordered<Pin<Box<Numbered<F>>>>,
    /// One slot per unanswered request, oldest first; `first` is the number of the front one.
    slots: VecDeque<Slot>,
    first: u64,
    running_writes: usize,
    /// Bytes held: requests running plus answers waiting.
    bytes: usize,
}

enum Slot {
    Running { write: bool, request_bytes: usize },
    Done { reply: Reply, reply_bytes: usize },
}

impl<F: Future<Output = Reply>> InOrder<F> {
    fn new() -> Self {
        InOrder {
            running: FuturesUnordered::new(),
            slots: VecDeque::new(),
            first: 0,
            running_writes: 0,
            bytes: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `request` may start now: within the limits, and not crossing a write (see the module
    /// documentation). `writes_in_issue_order`: the backend applies writes in the order they are
    /// issued, so a write need not wait for earlier writes.
    fn may_start(&self, request: &CommandRequest, limits: &Limits, writes_in_issue_order: bool) -> bool {
        let within_limits = self.slots.len() < limits.max_concurrent_requests as usize
            && self.bytes < limits.max_request_buffer;
        let ordered = if request.is_write() {
            let running_reads = self.running.len() - self.running_writes;
            running_reads == 0 && (self.running_writes == 0 || writes_in_issue_order)
        } else {
            self.running_writes == 0
        };
        within_limits && ordered
    }

    /// Starts a request, polling it once at once: that issues its storage operation now, so requests
    /// started one after another are issued in request order.
    fn start(&mut self, write: bool, request_bytes: usize, execution: F) {
        let number = self.first + self.slots.len() as u64;
        self.slots.push_back(Slot::Running { write, request_bytes });
        self.running_writes += usize::from(write);
        self.bytes += request_bytes;
        let mut execution = Box::pin(Numbered { number, future: execution });
        // A no-op waker is enough for this first poll: the set of running requests polls it again with
        // its own waker (a pushed future starts out ready to be polled).
        match execution.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(done) => self.finish(done),
            std::task::Poll::Pending => self.running.push(execution),
        }
    }

    fn finish(&mut self, (number, reply): (u64, Reply)) {
        let Some(slot) = self.slots.get_mut((number - self.first) as usize) else { return };
        if let Slot::Running { write, request_bytes } = *slot {
            self.running_writes -= usize::from(write);
            let reply_bytes = match &reply {
                Reply::One(response) => response.encoded_len(),
                // Produced as it is written, so it holds nothing yet.
                Reply::Stream(_) => 0,
            };
            self.bytes = self.bytes - request_bytes + reply_bytes;
            *slot = Slot::Done { reply, reply_bytes };
        }
    }

    /// The oldest answer, if it is ready.
    fn next_answer(&mut self) -> Option<Reply> {
        if !matches!(self.slots.front(), Some(Slot::Done { .. })) {
            return None;
        }
        let Some(Slot::Done { reply, reply_bytes }) = self.slots.pop_front() else { return None };
        self.first += 1;
        self.bytes -= reply_bytes;
        Some(reply)
    }
}

pin_project_lite::pin_project! {
    /// A request's execution, tagged with its place in the connection's order.
    struct Numbered<F> {
        number: u64,
        #[pin]
        future: F,
    }
}

impl<F: Future<Output = Reply>> Future for Numbered<F> {
    type Output = (u64, Reply);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<(u64, Reply)> {
        let this = self.project();
        this.future.poll(cx).map(|reply| (*this.number, reply))
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
