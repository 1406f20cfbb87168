//! Many requests on one byte stream (TCP, TLS over TCP): requests are read frame after frame, executed
//! concurrently where that cannot be observed, and answered strictly in request order, every frame of
//! one answer before the next.
//!
//! One task serves a connection. Its loop reads bytes and decodes frames itself (with the same
//! `FrameCodec` as everywhere), so that it sees a partial frame the moment it arrives and can hold it to
//! the request timeout. Decoded requests enter an `InOrder` queue, which runs them and hands their
//! answers back in request order:
//!
//! - What may run beside what is the handler's to say ([`Sequencing`], from `Handler::class`), so
//!   that this module knows nothing of commands or storage backends: reads run concurrently with each
//!   other; a barrier (a write to most backends, a publish) starts once everything before it has
//!   finished, and nothing starts while it runs; an ordered write (a write to a backend that applies
//!   writes in the order they are issued, such as the disk store) waits only for earlier reads and
//!   barriers, so consecutive writes run together and share a group commit, each issued (polled once)
//!   as it starts, in request order. Each request sees exactly the effects of the requests sent before
//!   it, though multi-key commands take several steps.
//! - A connection carries one subscription at a time (`Caller::max_subscriptions`): its answer lasts
//!   until it is ended, and a second one could only start answering after that, while holding a queue
//!   of messages nobody can be sent. The requests after a subscription go on running: an
//!   `Unsubscribe` sent on the same connection runs at once (it is a read) and ends it; then its own
//!   answer follows (docs/PROTOCOL.md, section 6.1). Once the requests behind it reach the limits
//!   below, nothing more can be read, an Unsubscribe included, until it ends: the handler ends it then
//!   (`Handler::connection_stalled`, a 429 as its last frame), and the answers behind it follow.
//! - Reading stops while `max_concurrent_requests` requests are unanswered or while their bytes (requests
//!   running, plus answers finished but not yet written, an answer spread over frames whole included)
//!   reach `max_request_buffer`; TCP's flow control then holds the client back. The connection holds at
//!   most that, plus one frame being received, the answer that crossed the limit and the one being
//!   written. A request still running counts by its own bytes, not its answer's, which is not known
//!   yet: requests that do not finish at once (a Redis backend's, an Hmget of over a thousand keys)
//!   may each still build an answer of up to `--max-answer-size`.
//! - The bytes held beyond the connection's fixed share (the partial frame received so far, requests
//!   running, answers waiting) are charged to the server-wide memory budget, and nothing more is read
//!   while they are not covered. A connection that waits for the budget longer than the memory wait
//!   ends with a 503 frame (like shutdown's: this request and the later ones were not executed).
//! - A request's store may answer before the answer may be sent (the disk store, before the write's
//!   fsync): its first poll runs within `storage::deferring`, and the answer waits in its slot for
//!   the ticket it came with, the connection waiting once for the oldest answer's that still waits. A
//!   barrier starts only once no earlier answer waits so, so what it makes visible (a publish) never
//!   precedes a write a crash could still take back. Each turn of the loop looks at the tickets once
//!   (`InOrder::look_at_tickets`) and decides by what it saw, so a ticket that becomes durable during
//!   the turn is still waited for, and the wait returns at once.
//! - Answers ready together are written with one flush.
//! - An answer that is a stream of frames (a large `Hgetall`, a subscription) is written frame by frame
//!   as the frames come and the socket takes them, while the loop goes on reading and running
//!   requests; answers after it wait their turn.
//!
//! A connection ends when the client closes it, after its last answer: on TCP, a client that closes
//! its sending side (a half-close) still gets every answer, a subscription's messages until it ends by
//! other means included (the course's client subscribes so: [`AfterClose`]); on a stream that cannot
//! stay half open, its subscriptions end first, each with its last frame. It ends too when a frame is
//! bad (an error frame, then close: on a byte stream there is no way to resynchronise); when a frame takes longer than the request timeout to arrive (408);
//! when it is idle for the idle timeout; or at shutdown, with a 503 frame meaning "this request and all
//! later ones on this connection were not executed". Every last frame that says so ends with
//! `frame::CLOSING_SUFFIX`: a 503 without it refused its own request alone, even when the connection
//! ends right after it (an answer the memory budget could not hold, written behind a publish's 503,
//! ends the connection without a frame: its request may have been executed).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Limits;
use super::exchange::{AnswerBudget, REFUSAL_ROOM, RequestError, is_refusal, write_refusal};
use super::frame::{self, FrameCodec, FrameError};
use super::log_throttle::{HeldBack, LogThrottle};
use super::timeouts::Stalled;
use super::woken::PolledWhenWoken;
use super::writer::FrameWriter;
use crate::memory::{Charge, MemoryBudget};
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::pubsub::ConnectionEnd;
use crate::service::{Arrival, Caller, Handler, Reply, ReplyFrame, ReplyStream, Sequencing, ServiceError};
use crate::storage::{Deferred, StorageError, Ticket};

/// After its last frame the server keeps reading (and discarding) for this long before closing, so the
/// client's unread requests do not turn the close into a reset that could destroy the answers in flight.
const LINGER: Duration = Duration::from_secs(1);

/// Bytes asked of the socket per read, beyond what the frame being decoded needs.
const READ_CHUNK: usize = 16 * 1024;

/// Room made in the read buffer before a read, when it has less: a small request then arrives in one
/// read, which, having left room, also tells the runtime the socket is drained (no second read that
/// finds nothing). Part of the connection's fixed share, as `READ_CHUNK` is.
const READ_ROOM: usize = 2048;

/// A read buffer grown beyond this (for a large frame) is replaced by a small one once it holds little:
/// otherwise the connection keeps the whole allocation for good, uncharged (the budget covers the
/// bytes it holds), as `bytes` takes it back whenever room is reserved in it again.
const KEEP_READ_CAPACITY: usize = 64 * 1024;

/// What a pipelined connection holds beyond what it charges as it goes: the chunk it may read into and
/// the room made before a read, the allocation it keeps for its next request's execution (1,512 bytes
/// for a TCP connection's), and room for one refusal. Each transport's fixed share covers it. So a
/// refusal is delivered when the server-wide budget is spent: a service's refusal in the middle of
/// the pipeline from the room for one (see `feed_answer`), the connection's last frame (see
/// `Ending::last_frame`) from the read chunk's place once reading has stopped.
pub const FIXED_HOLDINGS: usize = READ_CHUNK + READ_ROOM + 2 * 1024 + REFUSAL_ROOM;

const _: () = assert!(READ_CHUNK >= REFUSAL_ROOM);

/// What a client's end of its sending side (its stream's end) means for its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// TCP's half-close: no more requests, but the client reads on. Its subscription, when no request
    /// waits behind it, goes on until it ends otherwise (the server's shutdown, the lag policy, the
    /// reply timeout when the client stops reading, a write that fails once the client has gone: a
    /// client that closed the whole connection is found at the next message sent to it), or until the
    /// idle timeout passes without a message to it: nothing else would find a client that vanished.
    ReadOn,
    /// The stream is over (a WebSocket's close, a gRPC call's end of requests): its subscriptions end,
    /// each with its last frame, so that the answers after them can be written.
    EndSubscriptions,
}

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
    /// The server-wide memory budget stayed spent for the memory wait.
    NoMemory,
    /// Reading failed: the connection is gone.
    Failed(std::io::Error),
}

impl Ending {
    /// The frame that ends the connection, if the client should get one.
    fn last_frame(&self) -> Option<CommandResponse> {
        match self {
            Ending::Rejected(e) => Some(e.response(frame::CLOSING_SUFFIX)),
            Ending::ShuttingDown => Some(CommandResponse::error(
                status::UNAVAILABLE,
                format!(
                    "the server is shutting down; this request and any later ones on this connection were not executed{}",
                    frame::CLOSING_SUFFIX
                ),
            )),
            Ending::NoMemory => Some(CommandResponse::error(
                status::UNAVAILABLE,
                format!(
                    "the server has no memory for more requests now (its connection memory budget is spent); this request and any later ones on this connection were not executed, retry later{}",
                    frame::CLOSING_SUFFIX
                ),
            )),
            Ending::ClientClosed | Ending::Idle | Ending::Failed(_) => None,
        }
    }

    /// What the connection's subscriptions are told of this ending (`after_close`: what the client's
    /// end of its sending side means on this stream).
    fn connection_end(&self, after_close: AfterClose) -> ConnectionEnd {
        match (self, after_close) {
            (Ending::ClientClosed, AfterClose::ReadOn) => ConnectionEnd::ClosedWithRequestBehind,
            (Ending::ClientClosed | Ending::Failed(_) | Ending::ShuttingDown, _) => {
                ConnectionEnd::StreamEnded
            }
            (Ending::Idle, _) => ConnectionEnd::Idle,
            (Ending::Rejected(_), _) => ConnectionEnd::BadRequest,
            (Ending::NoMemory, _) => ConnectionEnd::NoMemory,
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
            Ending::NoMemory => f.write_str("no memory for more requests within the memory wait"),
            Ending::Failed(e) => write!(f, "reading failed: {e}"),
        }
    }
}

/// Serves one pipelined connection from `caller` until it ends; see the module documentation. What it
/// holds beyond its fixed share is charged to `memory`. Returns how many requests it read.
///
/// `io`'s writes must fail when its peer stops reading: wrap it in `timeouts::StallTimeout` (a
/// socket beneath its TLS, which is where the bytes are seen to leave).
pub async fn serve_pipelined<IO, H>(
    io: IO,
    handler: H,
    limits: Arc<Limits>,
    memory: MemoryBudget,
    shutdown: CancellationToken,
    caller: Caller,
    after_close: AfterClose,
) -> u64
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    // The byte stream is a connection of its own (a WebSocket or gRPC Pipeline call among others on
    // one HTTP/2 connection): its subscription is its own, and ends with it.
    let caller = Caller { max_subscriptions: Some(1), ..caller.on_new_connection() };
    let (mut read, write) = tokio::io::split(io);
    // The course's client compresses its larger frames (docs/PROTOCOL.md, section 12).
    let mut codec = FrameCodec::<CommandRequest>::new(limits.max_frame_len).taking_compressed();
    let mut received = BytesMut::new();
    let mut answers = FrameWriter::new(write, limits.max_frame_len, &memory);
    // A service's refusals, when the budget is spent: room for one, in the fixed share.
    let refusals = AnswerBudget::new(memory.clone(), 1);
    // Covers the bytes received and not yet decoded, and the queue's requests and answers.
    let mut charge = memory.empty_charge();
    let mut memory_wait = pin!(tokio::time::sleep(limits.memory_wait));
    let mut waiting_for_memory = false;
    let mut queue = InOrder::new();
    // The answer being written when it is a stream of frames (a large answer, a subscription): its
    // frames are written as they come, while the loop goes on reading and running requests.
    let mut current: Option<ReplyStream> = None;
    // A decoded request the queue cannot take yet; nothing more is decoded or read until it can.
    let mut waiting: Option<CommandRequest> = None;
    // What `waiting` holds, charged like the queue's requests (its bytes left `received` when it was
    // decoded; a compressed one inflated to them).
    let mut waiting_bytes = 0;
    let mut unflushed = false;
    let mut requests = 0u64;
    let mut ending: Option<Ending> = None;
    let mut subscriptions_ended = false;
    // Whether `current` is endless (a subscription), which only its end, not its client, ends.
    let mut current_endless = false;
    // Whether the connection's subscriptions were ended for the stall the request `waiting` is in.
    let mut stall_ended = false;
    let mut partial_since: Option<Instant> = None;
    let mut idle_since = Instant::now();
    // When the last read ended: the moment the frames it completed were whole. Frames left in the
    // buffer are decoded before anything more is read, so this is each decoded frame's arrival.
    let mut read_at = idle_since;
    let mut deadline = pin!(tokio::time::sleep(limits.idle_timeout));
    let mut armed: Option<Timer> = None;
    // Polled on every turn of the loop, so only once it has something to say.
    let mut shutting_down = PolledWhenWoken::new(shutdown.cancelled_owned());

    loop {
        // Which answers still wait for their tickets, as this turn sees it: everything below decides
        // by that, and the turn waits for the first of them, so that a ticket that becomes durable
        // meanwhile (the committer is another thread) wakes the next turn rather than going unseen.
        queue.look_at_tickets();
        // Start every request that may start now, decoding as many as are buffered. `inflating`: room
        // for the compressed frame at the front of `received` to inflate into, which the budget cannot
        // give yet; nothing more is decoded (or read) until it can.
        let mut inflating = 0;
        // A request held back by the queue held back reading too: the frames after it are the
        // server's to have waited for, and their time starts now.
        let held_back = waiting.is_some();
        while ending.is_none() {
            // A compressed frame is inflated only into room charged for it first: its gzip says how
            // much (and is held to it), so the budget bounds what inflating can make it hold.
            if waiting.is_none()
                && let Some(room) = frame::inflated_len(&received, limits.max_frame_len)
            {
                let needed = received.len() + queue.bytes + room;
                if charge.bytes() < needed && !charge.try_grow(needed - charge.bytes()) {
                    inflating = room;
                    break;
                }
            }
            waiting_bytes = 0;
            let request = match waiting.take() {
                Some(request) => request,
                None => match codec.decode(&mut received) {
                    Ok(Some(request)) => {
                        // The next frame's clock starts when its first bytes came, not its
                        // predecessor's.
                        partial_since = None;
                        request
                    }
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
            let class = handler.class(&request);
            let sequencing = class.sequencing;
            if !queue.may_start(sequencing, &limits) {
                waiting_bytes = request.encoded_len();
                waiting = Some(request);
                break;
            }
            stall_ended = false;
            let bytes = request.encoded_len();
            let arrival = Arrival { command: request.command_index(), at: read_at.into_std() };
            let (handler, caller) = (handler.clone(), caller.clone());
            let execution = async move { handler.execute(request, &caller).await };
            queue.start(sequencing, class.endless, bytes, arrival, execution);
            requests += 1;
        }
        // Write every answer whose turn has come, up to one that is a stream of frames.
        while current.is_none()
            && let Some((reply, arrival, endless)) = queue.next_answer()
        {
            handler.answered(arrival);
            match reply {
                Reply::One(response) => {
                    // What the connection holds once the answer is the writer's.
                    let held = received.len() + queue.bytes + waiting_bytes + inflating;
                    let fed = feed_answer(&mut answers, response, (&mut charge, held), &refusals, &limits);
                    if let Err(e) = fed.await {
                        // What the connection held for requests goes back first, as at any end.
                        drop((received, charge, queue, current, waiting));
                        close_on_write_failure(answers, read, e, &limits).await;
                        return requests;
                    }
                    unflushed = true;
                }
                Reply::Stream(stream) => (current, current_endless) = (Some(stream), endless),
            }
        }
        // Every request is answered: nothing more can be written before the next read, so flush now
        // rather than in another turn of the loop. (While requests run, answers gather and go out
        // together, flushed below.)
        if unflushed && current.is_none() && queue.is_empty() && waiting.is_none() {
            match std::future::poll_fn(|cx| Poll::Ready(answers.poll_flush_unpin(cx))).await {
                Poll::Ready(Ok(())) => unflushed = false,
                Poll::Ready(Err(e)) => {
                    log_write_failure(&e);
                    return requests;
                }
                Poll::Pending => {}
            }
        }
        // Stalled for good: the next request cannot start for the limits (nothing running can free a
        // slot, no answer waits for its ticket, so the order is not what holds it), and the answer
        // being written holds the answers behind it. A long answer ends as its client reads it; a
        // subscription never would, nor could its Unsubscribe be read: the subscriptions end (a last
        // frame saying why), so that the answers behind them go out and reading resumes. Otherwise a
        // client that closed such a connection would leave it open, its subscription counted, for good.
        // (Whether the waiting request may start is asked again: the answer that just became `current`
        // gave up its place in the queue, after this turn tried to start it.)
        if current_endless
            && current.is_some()
            && ending.is_none()
            && !stall_ended
            && queue.running.is_empty()
            && !queue.holds_answers()
            && waiting
                .as_ref()
                .is_some_and(|request| !queue.may_start(handler.class(request).sequencing, &limits))
        {
            handler.connection_stalled(&caller);
            stall_ended = true;
        }
        // A half-closed connection whose subscription goes on: nothing more is read from it, so only a
        // write can find that its client has gone; the idle timeout bounds how long it goes without one.
        let mut half_closed_subscription = false;
        if let Some(ending) = &ending {
            // A half-closed connection's subscription goes on while nothing waits behind it: an answer
            // after it could only be written once it ends, which the client can no longer ask for.
            let behind_endless = (current_endless && (!queue.is_empty() || waiting.is_some()))
                || queue.holds_request_after_endless(waiting.is_some());
            let reads_on = matches!(ending, Ending::ClientClosed)
                && after_close == AfterClose::ReadOn
                && !behind_endless;
            half_closed_subscription = reads_on && !subscriptions_ended;
            if !subscriptions_ended && !reads_on {
                // The connection takes no more requests: its subscriptions end (each with a last
                // frame), so that the answers before the ending can all be written.
                handler.connection_closing(&caller, ending.connection_end(after_close));
                subscriptions_ended = true;
            }
            if queue.is_empty() && current.is_none() {
                break;
            }
        }

        // One timer serves two timeouts: the request timeout from the moment a frame starts arriving
        // (taken as the last read, which brought its first bytes or came after them: a frame that
        // began in the read that ended the one before it has its own time, not the time since that
        // one's first byte; or as now, for one the queue held back), the idle timeout while nothing
        // at all is going on. It is set only when that changes.
        // (Once the connection is ending nothing more is read: a frame cut short by it is refused
        // already, and its request timeout must not overwrite why.)
        // A compressed frame waiting for room to inflate into has all come: the wait is the server's,
        // which the memory wait bounds (503), not the request timeout (408).
        let partial = waiting.is_none() && !received.is_empty() && ending.is_none() && inflating == 0;
        let wanted = if partial {
            let began = if held_back { Instant::now() } else { read_at };
            Some(Timer::PartialFrame(*partial_since.get_or_insert(began)))
        } else {
            partial_since = None;
            let idle = queue.is_empty() && current.is_none() && ending.is_none();
            ((idle || half_closed_subscription) && !unflushed).then_some(Timer::Idle)
        };
        if wanted != armed {
            armed = wanted;
            match armed {
                Some(Timer::PartialFrame(since)) => deadline.as_mut().reset(since + limits.request_timeout),
                Some(Timer::Idle) => deadline.as_mut().reset(idle_since + limits.idle_timeout),
                None => {}
            }
        }
        // What is held beyond the fixed share must be charged before more is read; the charge
        // follows what is held down at once.
        let held = received.len() + queue.bytes + waiting_bytes + inflating;
        charge.shrink_to(held);
        let covered = charge.bytes() >= held || charge.try_grow(held - charge.bytes());
        if !covered && !waiting_for_memory {
            memory_wait.as_mut().reset(Instant::now() + limits.memory_wait);
        }
        if waiting_for_memory && (covered || ending.is_some()) {
            // Covered without the wait (what the connection holds went down), or given up with the
            // connection's end: the wait leaves the budget's queue, or it would take what others give
            // back until the connection's last answers are out.
            charge.stop_waiting();
        }
        waiting_for_memory = !covered;
        let may_read = ending.is_none() && waiting.is_none() && covered;
        let waited_for = queue.held_ticket();
        let answer_waits = waited_for.is_some();

        tokio::select! {
            biased;
            _ = &mut shutting_down, if ending.is_none() => ending = Some(Ending::ShuttingDown),
            () = charge.cover(held), if waiting_for_memory && ending.is_none() => {}
            () = memory_wait.as_mut(), if waiting_for_memory && ending.is_none() => ending = Some(Ending::NoMemory),
            // At most a chunk at a time: the fixed share covers one chunk beyond what is charged.
            bytes = read_chunk(&mut read, &mut received), if may_read => match bytes {
                Ok(0) if partial => {
                    ending = Some(Ending::Rejected(FrameError::Truncated { buffered: received.len() }.into()));
                }
                Ok(0) => ending = Some(Ending::ClientClosed),
                Ok(_) => {
                    idle_since = Instant::now();
                    read_at = idle_since;
                }
                // TLS: the client's FIN came without its close_notify (many a client shuts its socket
                // down rather than its TLS session). Taken as the half-close it is on plaintext TCP:
                // a request cut short by it is refused as truncated, and what came before it stands.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    ending = Some(match partial {
                        true => Ending::Rejected(FrameError::Truncated { buffered: received.len() }.into()),
                        false => Ending::ClientClosed,
                    });
                }
                Err(e) => ending = Some(Ending::Failed(e)),
            },
            Some(done) = queue.running.next(), if !queue.running.is_empty() => queue.finish(done),
            // The oldest answer held for its ticket may go once that is durable (a barrier waiting
            // behind it, too): not always the front one, which may be running, or done but behind the
            // stream being written (a subscription).
            durable = async move { match waited_for { Some(ticket) => ticket.wait().await, None => Ok(()) } },
                if answer_waits => if let Err(e) = durable { queue.fail_held(e) },
            written = std::future::poll_fn(|cx| poll_write(cx, &mut answers, &mut current, unflushed)),
                if current.is_some() || unflushed => match written {
                Ok(Written::NextFrame(frame)) => {
                    if let Err(e) = answers.start_send_unpin(frame) {
                        drop((received, charge, queue, current, waiting));
                        close_on_write_failure(answers, read, e, &limits).await;
                        return requests;
                    }
                    (unflushed, idle_since) = (true, Instant::now());
                }
                // A long answer just ended: the idle timeout counts from now, not from the last read.
                Ok(Written::StreamEnded) => (current, idle_since) = (None, Instant::now()),
                Ok(Written::Flushed) => unflushed = false,
                Err(e) => {
                    log_write_failure(&e);
                    return requests;
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
    let limit = match &ending {
        Ending::Rejected(e) => e.limit(),
        Ending::NoMemory => Some(crate::metrics::Limit::ConnectionMemory),
        _ => None,
    };
    if let Some(limit) = limit {
        crate::metrics::limit_hit(limit);
    }
    if matches!(&ending, Ending::Rejected(e) if e.status() == status::BAD_REQUEST) {
        crate::metrics::malformed_request();
    }
    match &ending {
        // A client can send bad frames, and fail, at will; an operator wants to see the budget turn
        // clients away, as a QUIC answer it drops is seen. Throttled, in the connection's span (the
        // client's address).
        Ending::Rejected(_) | Ending::Failed(_) | Ending::NoMemory => {
            static CLOSED: LogThrottle = LogThrottle::new();
            if let Some(HeldBack { suppressed, crowded_out }) = CLOSED.admit() {
                info!(
                    target: "qkv::connection",
                    reason = %ending,
                    suppressed,
                    crowded_out,
                    "closing the connection"
                );
            }
        }
        _ => debug!(target: "qkv::connection", reason = %ending, "closing the connection"),
    }
    // Nothing more is read or executed: what the connection held for requests (the frame it was
    // receiving, which may be what spent the budget) goes back before the last frame is written.
    drop((received, charge));
    let flushed = SinkExt::<ReplyFrame>::flush(&mut answers).await;
    let mut write = answers.into_inner();
    if let Some(last) = ending.last_frame()
        && flushed.is_ok()
    {
        // A refusal: written from the budget if it has room, otherwise from the read chunk's place in
        // the connection's fixed share, so a connection refused for want of memory is still told so.
        let room = AnswerBudget::new(memory, 1);
        if let Err(e) = write_refusal(&mut write, last, &limits, &room).await {
            debug!(error = %e, "could not send the last frame");
        }
    }
    // Bounded too: a TLS stream's shutdown writes its close_notify, and waits for as long as the peer
    // reads nothing (the connection's place and share held all the while).
    let _ = tokio::time::timeout(limits.reply_timeout, write.shutdown()).await;
    linger(read).await;
    requests
}

/// Feeds `response` to the writer, to be written with the answers fed before it. A refusal (a service's
/// answer saying its request was not executed) the budget has no room for is delivered all the same:
/// the answers before it are written out, and it is written from `refusals`, the room for one in the
/// connection's fixed share. Nothing is read or written meanwhile, so the room holds one at a time.
/// Any other answer the budget cannot hold fails with `MemoryExhausted`: the connection closes.
async fn feed_answer<W: AsyncWrite + Unpin>(
    answers: &mut FrameWriter<W>,
    response: CommandResponse,
    (charge, held): (&mut Charge, usize),
    refusals: &AnswerBudget,
    limits: &Limits,
) -> Result<(), FrameError> {
    // (A refusal carries a message of at most ~1 KiB: cheap to keep until it is known to be held.)
    let refusal = is_refusal(&response).then(|| response.clone());
    // The answer's charge moves from the connection's `charge` (which covered it in the queue) to the
    // writer's once the writer has room: given back before, the answer would be held uncharged while
    // the writer waits for the client; given back after, it would be charged twice for a moment, and a
    // spent budget refused it.
    std::future::poll_fn(|cx| SinkExt::<ReplyFrame>::poll_ready_unpin(answers, cx)).await?;
    charge.shrink_to(held);
    match (answers.feed(ReplyFrame::Response(response)).await, refusal) {
        (Err(FrameError::MemoryExhausted { .. }), Some(refusal)) => {
            SinkExt::<ReplyFrame>::flush(answers).await?;
            write_refusal(answers.get_mut(), refusal, limits, refusals).await
        }
        (fed, _) => fed,
    }
}

/// Writing an answer failed (`e`): the connection closes, and its client sees it lost (so the answers
/// it did not get may or may not have been executed). When the writer is sound (the answer found no
/// memory), the answers it holds already are written first, as at any other end: their requests ran,
/// and they were dropped, up to 16 KiB of them, with the connection.
async fn close_on_write_failure<W, R>(mut answers: FrameWriter<W>, read: R, e: FrameError, limits: &Limits)
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    log_write_failure(&e);
    if let FrameError::MemoryExhausted { .. } = e
        && SinkExt::<ReplyFrame>::flush(&mut answers).await.is_ok()
    {
        let mut write = answers.into_inner();
        let _ = tokio::time::timeout(limits.reply_timeout, write.shutdown()).await;
        linger(read).await;
    }
}

/// Writing an answer failed: says why.
fn log_write_failure(e: &FrameError) {
    match e {
        FrameError::MemoryExhausted { .. } => {
            crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
            static NO_MEMORY: LogThrottle = LogThrottle::new();
            if let Some(HeldBack { suppressed, crowded_out }) = NO_MEMORY.admit() {
                info!(
                    target: "qkv::connection",
                    error = %e,
                    suppressed,
                    crowded_out,
                    "no memory for an answer; closing the connection"
                );
            }
        }
        // The client read less than the minimum progress within the reply timeout (StallTimeout).
        FrameError::Io(e) if Stalled::is(e) => {
            crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
            debug!(error = %e, "abandoned answers the client does not read; closing the connection");
        }
        _ => debug!(error = %e, "writing answers failed; closing the connection"),
    }
}

/// What writing answers came to.
enum Written {
    /// The next frame of the stream being written, for which the writer has room: to write now.
    NextFrame(ReplyFrame),
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
    W: Sink<ReplyFrame, Error = FrameError> + Unpin,
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
    /// The allocation of the last request that finished on its first poll, kept for the next: most do
    /// (a memory store's, a disk store's deferred write), and a request's future takes about 1.5 KiB,
    /// which the allocator would otherwise hand out and take back per request.
    spare: Option<Pin<Box<Numbered<F>>>>,
    /// One slot per unanswered request, oldest first; `first` is the number of the front one.
    slots: VecDeque<Slot>,
    first: u64,
    /// Requests running, by how they are sequenced.
    running_reads: usize,
    running_writes: usize,
    running_barrier: bool,
    /// Bytes held: requests running plus answers waiting (charged to the budget by the connection).
    bytes: usize,
    /// Bytes of answers waiting that were built ahead as streams of frames (`ReplyStream::built`):
    /// charged by the service (when the budget can hold them), but held for this connection, so counted
    /// in its limit.
    built: usize,
    /// Slots `held` (see `Slot`): so that a turn with none looks at no ticket.
    held: usize,
}

/// `held`: its ticket was not durable when the connection last looked (`InOrder::look_at_tickets`),
/// so its answer waits, and so does a barrier; the ticket stays until the answer goes out, to be settled.
enum Slot {
    /// `ticket`: what its answer must wait for, as the store said in its first poll.
    Running {
        sequencing: Sequencing,
        endless: bool,
        request_bytes: usize,
        ticket: Option<Deferred>,
        arrival: Arrival,
    },
    Done {
        reply: Reply,
        endless: bool,
        reply_bytes: usize,
        ticket: Option<Deferred>,
        held: bool,
        arrival: Arrival,
    },
}

impl<F: Future<Output = Reply>> InOrder<F> {
    fn new() -> Self {
        InOrder {
            running: FuturesUnordered::new(),
            spare: None,
            slots: VecDeque::new(),
            first: 0,
            running_reads: 0,
            running_writes: 0,
            running_barrier: false,
            bytes: 0,
            built: 0,
            held: 0,
        }
    }

    fn count_running(&mut self, sequencing: Sequencing, delta: isize) {
        match sequencing {
            Sequencing::Read => self.running_reads = self.running_reads.saturating_add_signed(delta),
            Sequencing::OrderedWrite => {
                self.running_writes = self.running_writes.saturating_add_signed(delta)
            }
            Sequencing::Barrier => self.running_barrier = delta > 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether a request comes after an endless answer (a subscription) in the queue, or, when
    /// `waiting`, after any endless answer in it.
    fn holds_request_after_endless(&self, waiting: bool) -> bool {
        let endless = |slot: &Slot| {
            matches!(slot, Slot::Running { endless: true, .. } | Slot::Done { endless: true, .. })
        };
        match self.slots.iter().position(endless) {
            Some(first) => waiting || first + 1 < self.slots.len(),
            None => false,
        }
    }

    /// Whether a request sequenced so may start now: within the limits, and in its order against the
    /// requests before it (see the module documentation).
    fn may_start(&self, sequencing: Sequencing, limits: &Limits) -> bool {
        let within_limits = self.slots.len() < limits.max_concurrent_requests as usize
            && self.bytes + self.built < limits.max_request_buffer;
        let ordered = match sequencing {
            Sequencing::Read => self.running_writes == 0 && !self.running_barrier,
            Sequencing::OrderedWrite => self.running_reads == 0 && !self.running_barrier,
            // A barrier's effects (a publish) must not be seen before what came before it is durable.
            Sequencing::Barrier => {
                self.running_reads == 0
                    && self.running_writes == 0
                    && !self.running_barrier
                    && !self.holds_answers()
            }
        };
        within_limits && ordered
    }

    /// Starts a request, polling it once at once: that issues its storage operation now, so requests
    /// started one after another are issued in request order.
    fn start(
        &mut self,
        sequencing: Sequencing,
        endless: bool,
        request_bytes: usize,
        arrival: Arrival,
        execution_future: F,
    ) {
        let number = self.first + self.slots.len() as u64;
        self.slots.push_back(Slot::Running { sequencing, endless, request_bytes, ticket: None, arrival });
        self.count_running(sequencing, 1);
        self.bytes += request_bytes;
        let mut execution = self.spare.take().unwrap_or_else(|| Box::pin(Numbered::vacant()));
        execution.as_mut().occupy(number, execution_future);
        // A no-op waker is enough for this first poll: the set of running requests polls it again with
        // its own waker (a pushed future starts out ready to be polled).
        // The store may answer before its answer may be sent (a disk store's write before its fsync):
        // the answer then waits here, in its slot, for the ticket.
        let (polled, ticket) = crate::storage::deferring(|| {
            execution.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        });
        if let Some(Slot::Running { ticket: slot, .. }) = self.slots.back_mut() {
            *slot = ticket;
        }
        match polled {
            std::task::Poll::Ready(done) => {
                execution.as_mut().vacate();
                self.spare = Some(execution);
                self.finish(done)
            }
            std::task::Poll::Pending => self.running.push(execution),
        }
    }

    fn finish(&mut self, (number, reply): (u64, Reply)) {
        let index = (number - self.first) as usize;
        let Some(Slot::Running { sequencing, endless, request_bytes, ticket, arrival }) =
            self.slots.get_mut(index)
        else {
            return;
        };
        let (sequencing, endless, request_bytes, ticket, arrival) =
            (*sequencing, *endless, *request_bytes, ticket.take(), *arrival);
        self.count_running(sequencing, -1);
        if let Some(slot) = self.slots.get_mut(index) {
            let reply_bytes = match &reply {
                Reply::One(response) => response.encoded_len(),
                // Produced as it is written, or built ahead and charged by the service (`built`).
                Reply::Stream(_) => 0,
            };
            self.bytes = self.bytes - request_bytes + reply_bytes;
            if let Reply::Stream(stream) = &reply {
                self.built += stream.built_bytes();
            }
            let held = ticket.as_ref().is_some_and(|deferred| !deferred.ticket.is_durable());
            self.held += usize::from(held);
            *slot = Slot::Done { reply, endless, reply_bytes, ticket, held, arrival };
        }
    }

    /// Looks at the tickets of the answers held for them: those durable now are held no longer. Only
    /// here: the other methods decide by what was seen, so that what they decide in one turn of the
    /// loop agrees, and the turn waits for `held_ticket`, which a ticket that became durable since
    /// completes at once. (Deciding by a fresh look each time lost a wakeup: `next_answer` saw the
    /// front ticket not durable, `front_ticket` then saw it durable and gave nothing to wait for, and
    /// the connection, its answer unsent and its publish unstarted, waited for nothing.)
    fn look_at_tickets(&mut self) {
        if self.held == 0 {
            return;
        }
        for slot in &mut self.slots {
            if let Slot::Done { ticket: Some(deferred), held, .. } = slot
                && *held
                && deferred.ticket.is_durable()
            {
                *held = false;
                self.held -= 1;
            }
        }
    }

    /// The ticket of the oldest answer held for one (see `look_at_tickets`): once it is durable, the
    /// answer may go, or a barrier start, or the next held answer be waited for.
    fn held_ticket(&self) -> Option<Ticket> {
        self.slots.iter().find_map(|slot| match slot {
            Slot::Done { ticket: Some(deferred), held: true, .. } => Some(deferred.ticket.clone()),
            _ => None,
        })
    }

    /// The ticket of `held_ticket`'s answer failed: it is answered with `error` instead.
    fn fail_held(&mut self, error: StorageError) {
        let held = self.slots.iter_mut().find(|slot| matches!(slot, Slot::Done { held: true, .. }));
        if let Some(Slot::Done { reply, ticket, held, .. }) = held {
            let response = ServiceError::from(error).into_response();
            if let Some(deferred) = ticket.take() {
                deferred.settle(response.status);
            }
            if let Reply::Stream(stream) = &*reply {
                self.built -= stream.built_bytes();
            }
            *reply = Reply::One(response);
            *held = false;
            self.held -= 1;
        }
    }

    /// Whether an answer that has finished still waits for its ticket.
    fn holds_answers(&self) -> bool {
        self.held > 0
    }

    /// The oldest answer, if it is ready, when its request arrived, and whether it is endless.
    fn next_answer(&mut self) -> Option<(Reply, Arrival, bool)> {
        if !matches!(self.slots.front(), Some(Slot::Done { held: false, .. })) {
            return None;
        }
        let Some(Slot::Done { reply, endless, reply_bytes, ticket, arrival, .. }) = self.slots.pop_front()
        else {
            return None;
        };
        if let Some(deferred) = ticket {
            deferred.settle(match &reply {
                Reply::One(response) => response.status,
                Reply::Stream(_) => status::OK,
            });
        }
        self.first += 1;
        self.bytes -= reply_bytes;
        if let Reply::Stream(stream) = &reply {
            self.built -= stream.built_bytes();
        }
        Some((reply, arrival, endless))
    }
}

pin_project_lite::pin_project! {
    /// A request's execution, tagged with its place in the connection's order; vacant between two
    /// requests while its allocation waits to be reused.
    struct Numbered<F> {
        number: u64,
        #[pin]
        future: Option<F>,
    }
}

impl<F> Numbered<F> {
    fn vacant() -> Self {
        Numbered { number: 0, future: None }
    }

    /// Holds the execution of request `number` from now on (dropping what it held).
    fn occupy(self: Pin<&mut Self>, number: u64, future: F) {
        let mut this = self.project();
        *this.number = number;
        this.future.set(Some(future));
    }

    /// Drops the execution it holds.
    fn vacate(self: Pin<&mut Self>) {
        self.project().future.set(None);
    }
}

impl<F: Future<Output = Reply>> Future for Numbered<F> {
    type Output = (u64, Reply);

    /// A vacant one is never ready (and never polled: only occupied ones run).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(u64, Reply)> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => future.poll(cx).map(|reply| (*this.number, reply)),
            None => {
                debug_assert!(false, "a vacant request was polled");
                Poll::Pending
            }
        }
    }
}

/// Reads at most `READ_CHUNK` bytes into `buffer`, which grows as they arrive.
async fn read_chunk<R: AsyncRead + Unpin>(read: &mut R, buffer: &mut BytesMut) -> std::io::Result<usize> {
    if buffer.capacity() - buffer.len() < READ_ROOM {
        buffer.reserve(READ_ROOM);
    }
    if buffer.capacity() > KEEP_READ_CAPACITY && buffer.len() < buffer.capacity() / 4 {
        let mut smaller = BytesMut::with_capacity(buffer.len() + READ_ROOM);
        smaller.extend_from_slice(buffer);
        *buffer = smaller;
    }
    read.read_buf(&mut buffer.limit(READ_CHUNK)).await
}

/// Reads and discards what the client still sends, until it closes or `LINGER` passes.
pub(super) async fn linger<R: AsyncRead + Unpin>(mut read: R) {
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

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use tokio::io::DuplexStream;
    use tokio::sync::Semaphore;
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::pb::Value;
    use crate::pb::command_request::RequestData;
    use crate::service::RequestClass;
    use crate::storage::disk::ManualLog;
    use crate::transport::frame::encode_frame;

    /// A handler whose writes are ordered writes that complete only when the test lets them (as a
    /// disk store's do when their group commit is durable), and whose publishes are barriers; it
    /// records when each request starts and ends.
    #[derive(Clone)]
    struct Gated {
        log: Arc<Mutex<Vec<String>>>,
        commits: Arc<Semaphore>,
    }

    impl Gated {
        fn new() -> Self {
            Gated { log: Arc::default(), commits: Arc::new(Semaphore::new(0)) }
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().clone()
        }

        fn record(&self, event: String) {
            self.log.lock().push(event);
        }
    }

    /// How the test handlers class requests, as a disk store's service would: Hset an ordered write,
    /// Publish a barrier, a subscription endless, the rest reads.
    fn class_of(request: &CommandRequest) -> RequestClass {
        let sequencing = match request.request_data {
            Some(RequestData::Hset(_)) => Sequencing::OrderedWrite,
            Some(RequestData::Publish(_)) => Sequencing::Barrier,
            _ => Sequencing::Read,
        };
        let endless = matches!(request.request_data, Some(RequestData::Subscribe(_)));
        RequestClass { sequencing, endless, replay_safe: false }
    }

    impl Handler for Gated {
        fn class(&self, request: &CommandRequest) -> RequestClass {
            class_of(request)
        }

        async fn execute(&self, request: CommandRequest, _caller: &Caller) -> Reply {
            match request.request_data {
                Some(RequestData::Hset(set)) => {
                    let key = set.pair.map(|p| p.key).unwrap_or_default();
                    self.record(format!("write {key} issued"));
                    let _ = self.commits.acquire().await.map(|permit| permit.forget());
                    self.record(format!("write {key} durable"));
                }
                Some(RequestData::Publish(_)) => self.record("publish".into()),
                _ => self.record("read".into()),
            }
            Reply::One(CommandResponse::ok())
        }

        fn connection_closing(&self, _caller: &Caller, _why: crate::pubsub::ConnectionEnd) {}

        fn connection_stalled(&self, _caller: &Caller) {}
    }

    /// Once a large frame is taken, the read buffer gives its room back: `bytes` takes the whole
    /// allocation back whenever room is reserved in it, and a connection kept 16 MiB, uncharged.
    #[tokio::test]
    async fn the_read_buffer_gives_back_a_large_frames_room() {
        let mut buffer = BytesMut::with_capacity(16 << 20);
        buffer.resize(16 << 20, 1);
        drop(buffer.split_to((16 << 20) - 10));
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"abc").await.unwrap();
        read_chunk(&mut server, &mut buffer).await.unwrap();
        assert_eq!(&buffer[..], [&[1; 10][..], b"abc"].concat());
        assert!(buffer.capacity() <= KEEP_READ_CAPACITY, "{}", buffer.capacity());
    }

    /// A byte stream whose shutdown never ends, as a TLS stream's does while its peer reads nothing and
    /// the close_notify cannot be written.
    struct ShutdownHangs(DuplexStream);

    impl AsyncRead for ShutdownHangs {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for ShutdownHangs {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    /// A connection ends, and gives back its place, even when its stream's shutdown never does: it
    /// waited for ever on a TLS peer that read nothing.
    #[tokio::test(start_paused = true)]
    async fn a_connection_ends_though_its_shutdown_does_not() {
        let (client, server) = tokio::io::duplex(1 << 10);
        drop(client);
        let serving = serve_pipelined(
            ShutdownHangs(server),
            Gated::new(),
            Arc::new(Limits::default()),
            MemoryBudget::unlimited(),
            CancellationToken::new(),
            Caller::default(),
            AfterClose::ReadOn,
        );
        let ended = tokio::time::timeout(Duration::from_secs(3600), serving).await;
        assert!(ended.is_ok(), "the connection never ended");
    }

    /// Answers spread over frames whole (a large Hmget's) count against the connection's limit
    /// (`max_request_buffer`) while they wait, as single-frame answers do: a connection that sends
    /// many and reads none is no longer read once they reach it, rather than taking the whole memory
    /// budget (which they are charged to, by the service).
    #[tokio::test(start_paused = true)]
    async fn answers_built_ahead_count_against_the_connections_limit() {
        let memory = MemoryBudget::new(1 << 30);
        let config = crate::service::ServiceConfig { response_frame_target: 16 * 1024, ..Default::default() };
        let service = crate::service::Service::with_memory(
            crate::storage::MemoryStore::new(),
            config,
            16 << 20,
            memory.clone(),
        );
        // Eight values of 64 KiB: an Hmget of them all answers 512 KiB, in frames of 16 KiB.
        let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        let pairs = keys.iter().map(|key| crate::pb::Kvpair::new(key.as_str(), vec![7u8; 64 * 1024]));
        service.execute(CommandRequest::hmset("t", pairs), &Caller::default()).await;
        let before = memory.used();

        let limits = Limits { max_request_buffer: 2 << 20, ..Limits::default() };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = serve_pipelined(
            server,
            service,
            Arc::new(limits),
            memory.clone(),
            CancellationToken::new(),
            Caller::default(),
            AfterClose::ReadOn,
        );
        tokio::spawn(serving);
        // 64 of them, 32 MiB of answers, none read.
        let hmget = encode_frame(&CommandRequest::hmget("t", &keys), 1 << 20).unwrap();
        for _ in 0..64 {
            client.write_all(&hmget).await.unwrap();
        }
        // The clock is paused: it moves on once every task waits, the connection's for its client.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let held = memory.used() - before;
        // The limit, the answer being written and the one that crossed the limit, and the frames in
        // the writer.
        assert!(held <= (2 << 20) + 2 * (512 << 10) + (128 << 10), "the connection holds {held} bytes");
        drop(client);
    }

    /// A connection served to `handler` with `limits`, drawing on `memory`: the client's end.
    fn serve<H: Handler>(handler: H, limits: Limits, memory: &MemoryBudget) -> DuplexStream {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve_pipelined(
            server,
            handler,
            Arc::new(limits),
            memory.clone(),
            CancellationToken::new(),
            Caller::default(),
            AfterClose::ReadOn,
        ));
        client
    }

    /// A connection to a memory store's service drawing on `memory`, with `limits`: the client's end.
    fn served(
        limits: Limits,
        memory: &MemoryBudget,
    ) -> (DuplexStream, crate::service::Service<crate::storage::MemoryStore>) {
        let service = crate::service::Service::with_memory(
            crate::storage::MemoryStore::new(),
            Default::default(),
            16 << 20,
            memory.clone(),
        );
        (serve(service.clone(), limits, memory), service)
    }

    /// The request timeout runs from each frame's first bytes: a frame that began in the read that
    /// ended the one before it is not held to the time since that one's first byte (a steady upload of
    /// large values, whose reads seldom end on a frame's end, was cut off with 408 once the request
    /// timeout had passed since the run of frames began).
    #[tokio::test(start_paused = true)]
    async fn each_frame_has_the_whole_request_timeout() {
        let limits = Limits { request_timeout: Duration::from_secs(1), ..Limits::default() };
        let (client, _service) = served(limits, &MemoryBudget::unlimited());
        let (read, mut write) = tokio::io::split(client);
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                encode_frame(&CommandRequest::hset("t", format!("k{i}"), "v"), 1 << 20).unwrap().to_vec()
            })
            .collect();
        // Each write ends a frame and begins the next, 0.6 s apart: every frame takes 0.6 s to come,
        // the three 1.2 s.
        write.write_all(&[&frames[0][..], &frames[1][..3]].concat()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        write.write_all(&[&frames[1][3..], &frames[2][..3]].concat()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        write.write_all(&frames[2][3..]).await.unwrap();
        let mut answers = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
        for i in 0..3 {
            let answer = answers.next().await.expect("an answer").unwrap();
            assert_eq!((i, answer.status, answer.message.as_str()), (i, status::OK, ""));
        }
    }

    /// A frame that began arriving behind a request the queue held back (nothing is read meanwhile)
    /// has its time from when the queue let it be read on, not from its first bytes: the wait was the
    /// server's.
    #[tokio::test(start_paused = true)]
    async fn a_frame_behind_a_request_held_back_has_its_time_from_then() {
        let handler = Gated::new();
        let limits = Limits { request_timeout: Duration::from_secs(1), ..Limits::default() };
        let client = serve(handler.clone(), limits, &MemoryBudget::unlimited());
        let (read, mut write) = tokio::io::split(client);
        let last = encode_frame(&CommandRequest::hget("t", "a"), 1 << 20).unwrap();
        let mut first = Vec::new();
        for request in
            [CommandRequest::hset("t", "a", "1"), CommandRequest::publish("t", vec![Value::from("x")])]
        {
            first.extend_from_slice(&encode_frame(&request, 1 << 20).unwrap());
        }
        first.extend_from_slice(&last[..3]);
        write.write_all(&first).await.unwrap();
        // The write takes 2 s to commit; the publish waits for it, and the Hget's frame behind both.
        tokio::time::sleep(Duration::from_secs(2)).await;
        handler.commits.add_permits(1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        write.write_all(&last[3..]).await.unwrap();
        let mut answers = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
        for i in 0..3 {
            let answer = answers.next().await.expect("an answer").unwrap();
            assert_eq!((i, answer.status), (i, status::OK), "{answer:?}");
        }
    }

    /// A compressed frame that has all come and waits for room to inflate into is the server's to wait
    /// for: it is answered 503 once the memory wait is over, not 408 at the request timeout (which
    /// came first when the memory wait was the longer).
    #[tokio::test(start_paused = true)]
    async fn a_whole_compressed_frame_waiting_for_room_is_refused_for_memory_not_timed_out() {
        use std::io::Write;
        let memory = MemoryBudget::new(1 << 20);
        let limits = Limits {
            request_timeout: Duration::from_secs(1),
            memory_wait: Duration::from_secs(5),
            ..Limits::default()
        };
        let (mut client, _service) = served(limits, &memory);
        // All but 16 KiB of the budget is held elsewhere; the request inflates to 3 MB.
        let _elsewhere = memory.try_charge(memory.available() - (16 << 10)).unwrap();
        let request = CommandRequest::hset("t", "zeros", vec![0u8; 3_000_000]).encode_to_vec();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(&request).unwrap();
        let gzip = gzip.finish().unwrap();
        client.write_all(&((gzip.len() as u32) | 1 << 31).to_be_bytes()).await.unwrap();
        client.write_all(&gzip).await.unwrap();
        let mut answers = FramedRead::new(client, FrameCodec::<CommandResponse>::new(1 << 20));
        let answer = answers.next().await.expect("an answer").unwrap();
        assert_eq!(answer.status, status::UNAVAILABLE, "{answer:?}");
    }

    /// When an answer finds no memory and the connection closes, the answers before it that the writer
    /// holds go out first: their requests ran (an Hset's 200, buffered, was dropped with the
    /// connection, and its client told the write may or may not have been made).
    #[tokio::test(start_paused = true)]
    async fn answers_held_go_out_before_a_close_for_want_of_memory() {
        let memory = MemoryBudget::new(4 << 20);
        let (client, service) = served(Limits::default(), &memory);
        let big = crate::pb::Kvpair::new("big", vec![7u8; 1 << 20]);
        service.execute(CommandRequest::hmset("t", [big]), &Caller::default()).await;
        // All but 64 KiB of the budget is held elsewhere: the Hget's answer of 1 MiB finds no room.
        let _elsewhere = memory.try_charge(memory.available() - (64 << 10)).unwrap();
        let (read, mut write) = tokio::io::split(client);
        let requests = [CommandRequest::hset("t", "small", "v"), CommandRequest::hget("t", "big")];
        for request in &requests {
            write.write_all(&encode_frame(request, 1 << 20).unwrap()).await.unwrap();
        }
        let mut answers = FramedRead::new(read, FrameCodec::<CommandResponse>::new(2 << 20));
        let first = answers.next().await.expect("the Hset's answer").unwrap();
        assert_eq!(first.status, status::OK, "{first:?}");
        assert!(answers.next().await.is_none(), "then the connection closes");
    }

    /// Serves a connection to `handler` and sends it `requests`, all at once.
    async fn pipelined<H: Handler>(handler: &H, requests: &[CommandRequest]) -> DuplexStream {
        let mut client = serve(handler.clone(), Limits::default(), &MemoryBudget::unlimited());
        for request in requests {
            client.write_all(&encode_frame(request, 1 << 20).unwrap()).await.unwrap();
        }
        // The pipeline task runs on this thread: let it do all it can before looking.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        client
    }

    /// A handler whose writes are answered at once with a ticket, as a disk store's first poll answers
    /// within `storage::deferring`: the write of key "n" waits for record n of a log the test makes
    /// durable by hand. A subscription is an answer that never ends; publishes are barriers.
    #[derive(Clone)]
    struct Deferring {
        log: Arc<Mutex<Vec<String>>>,
        tickets: Arc<ManualLog>,
    }

    impl Handler for Deferring {
        fn class(&self, request: &CommandRequest) -> RequestClass {
            class_of(request)
        }

        async fn execute(&self, request: CommandRequest, _caller: &Caller) -> Reply {
            match request.request_data {
                Some(RequestData::Hset(set)) => {
                    let key = set.pair.map(|p| p.key).unwrap_or_default();
                    assert!(self.tickets.defer(key.parse().unwrap()), "first polled within deferring");
                    self.log.lock().push(format!("write {key}"));
                }
                Some(RequestData::Subscribe(_)) => {
                    return Reply::Stream(ReplyStream::new(futures_util::stream::pending()));
                }
                Some(RequestData::Publish(_)) => self.log.lock().push("publish".into()),
                _ => {}
            }
            Reply::One(CommandResponse::ok())
        }

        fn connection_closing(&self, _caller: &Caller, _why: crate::pubsub::ConnectionEnd) {}

        fn connection_stalled(&self, _caller: &Caller) {}
    }

    /// The message of an answer.
    fn message(reply: Option<(Reply, Arrival, bool)>) -> String {
        match reply.map(|(reply, ..)| reply) {
            Some(Reply::One(response)) => response.message,
            Some(Reply::Stream(_)) => "a stream".into(),
            None => "no answer yet".into(),
        }
    }

    #[tokio::test]
    async fn a_request_that_finishes_at_once_leaves_its_allocation_to_the_next_and_answers_keep_their_order()
    {
        type Execution = Pin<Box<dyn Future<Output = Reply> + Send>>;
        let answer = |text: &'static str| {
            Reply::One(CommandResponse { message: text.into(), ..CommandResponse::ok() })
        };
        let mut queue = InOrder::<Execution>::new();
        let arrival = Arrival { command: 0, at: std::time::Instant::now() };
        queue.start(Sequencing::Read, false, 10, arrival, Box::pin(async move { answer("first") }));
        assert!(queue.spare.is_some(), "finished in its first poll: its allocation is kept");
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        queue.start(
            Sequencing::Read,
            false,
            10,
            arrival,
            Box::pin(async move {
                let _ = released.await;
                answer("second")
            }),
        );
        assert!(queue.spare.is_none(), "the request still running took the kept allocation");
        queue.start(Sequencing::Read, false, 10, arrival, Box::pin(async move { answer("third") }));

        assert_eq!(message(queue.next_answer()), "first");
        assert_eq!(message(queue.next_answer()), "no answer yet", "the second is still running");
        release.send(()).unwrap();
        let done = queue.running.next().await.unwrap();
        queue.finish(done);
        assert!(queue.running.is_empty());
        assert_eq!(message(queue.next_answer()), "second");
        assert_eq!(message(queue.next_answer()), "third");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn ordered_writes_share_a_commit_but_a_publish_waits_until_they_are_durable() {
        let handler = Gated::new();
        let requests = [
            CommandRequest::hset("t", "a", "1"),
            CommandRequest::hset("t", "b", "2"),
            CommandRequest::publish("t", vec![Value::from("changed")]),
            CommandRequest::hget("t", "a"),
        ];
        let client = pipelined(&handler, &requests).await;
        assert_eq!(
            handler.log(),
            ["write a issued", "write b issued"],
            "both writes run together, and nothing after them"
        );
        handler.commits.add_permits(2);
        let mut answers = FramedRead::new(client, FrameCodec::<CommandResponse>::new(1 << 20));
        for _ in 0..requests.len() {
            assert_eq!(answers.next().await.unwrap().unwrap().status, status::OK);
        }
        let log = handler.log();
        assert_eq!(
            &log[2..],
            ["write a durable", "write b durable", "publish", "read"],
            "the publish follows the writes it was sent after, and the read follows the publish"
        );
    }

    /// The committer is another thread: a ticket can become durable in the middle of a turn of the
    /// loop, after the answer was found held and before the turn picks what to wait for. The turn
    /// must still wait for it (the wait then returns at once); before, it found nothing to wait for
    /// and the connection, its write's answer unsent and the publish behind it unstarted, hung.
    #[tokio::test]
    async fn a_ticket_that_becomes_durable_during_a_turn_is_still_waited_for() {
        type Execution = Pin<Box<dyn Future<Output = Reply> + Send>>;
        let tickets = Arc::new(ManualLog::new());
        let limits = Limits::default();
        let mut queue = InOrder::<Execution>::new();
        let arrival = Arrival { command: 0, at: std::time::Instant::now() };
        let write = tickets.clone();
        queue.start(
            Sequencing::OrderedWrite,
            false,
            10,
            arrival,
            Box::pin(async move {
                assert!(write.defer(1));
                Reply::One(CommandResponse::ok())
            }),
        );
        // One turn: it looks at the tickets, then decides.
        queue.look_at_tickets();
        assert!(!queue.may_start(Sequencing::Barrier, &limits), "a publish waits for the write");
        assert!(queue.next_answer().is_none(), "the write's answer waits for its ticket");
        tickets.made_durable(1);
        let ticket = queue.held_ticket().expect("what the turn found held is what it waits for");
        tokio::time::timeout(Duration::from_secs(1), ticket.wait()).await.unwrap().unwrap();
        // The next turn sees it durable.
        queue.look_at_tickets();
        assert!(queue.may_start(Sequencing::Barrier, &limits));
        assert_eq!(message(queue.next_answer()), "");
        assert!(queue.held_ticket().is_none());
    }

    /// Behind a subscription being written, answers done wait (in order) and a publish waits for
    /// their tickets. Once the front one's is durable, the loop must wait for the next one's: before,
    /// it waited only for the front answer's ticket, so when the second write became durable nothing
    /// woke the loop and the publish never started (nor could anything more be read).
    #[tokio::test]
    async fn a_publish_behind_a_subscription_starts_once_every_answer_before_it_is_durable() {
        let handler = Deferring { log: Arc::default(), tickets: Arc::new(ManualLog::new()) };
        let requests = [
            CommandRequest::subscribe("news"),
            CommandRequest::hset("t", "1", "a"),
            CommandRequest::hset("t", "2", "b"),
            CommandRequest::publish("news", vec![Value::from("changed")]),
        ];
        let _client = pipelined(&handler, &requests).await;
        assert_eq!(handler.log.lock().clone(), ["write 1", "write 2"], "the publish waits for the writes");
        handler.tickets.made_durable(1);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(handler.log.lock().clone(), ["write 1", "write 2"], "the second write is not durable yet");
        handler.tickets.made_durable(2);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            handler.log.lock().clone(),
            ["write 1", "write 2", "publish"],
            "both writes durable: the publish starts"
        );
    }
}
