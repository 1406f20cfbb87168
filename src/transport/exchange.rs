//! Requests and replies over any byte stream. What both drivers share (how a bad request is answered)
//! is here, and so is the driver for a stream that carries exactly one request
//! (QUIC): one frame, then the end of the stream; the reply is one or more frames, the last with
//! `more = false` (docs/PROTOCOL.md, "Exchanges"). `pipeline` drives a stream of many requests (TCP).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::FramedRead;

use super::frame::{FrameCodec, FrameError, HEADER_LEN};
use super::timeouts::{self, StallTimeout};
use super::writer::FrameWriter;
use super::{Limits, MIN_MAX_FRAME_LEN};
use crate::memory::{Charge, MemoryBudget};
use crate::metrics::Limit;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Arrival, Caller, Handler, Reply, ReplyFrame};

/// Initial size of a request stream's read buffer.
const REQUEST_BUFFER: usize = 256;

/// The longest refusal's payload: what the smallest maximum frame size a server accepts leaves room
/// for. A longer message is cut short to fit.
pub const MAX_REFUSAL_LEN: usize = MIN_MAX_FRAME_LEN;

/// The bytes one refusal takes, its length prefix included: what [`AnswerBudget`] sets aside for it.
pub const REFUSAL_ROOM: usize = HEADER_LEN + MAX_REFUSAL_LEN;

/// What a connection's answers are charged to: the server-wide budget and, for refusals, room set
/// aside for them in the connection's fixed share.
///
/// A refusal is an error response to a request that was not executed (400, 408, 413, 503; the
/// transport's, or a service's 503). It must reach the client whether or not the budget has memory:
/// a request is often refused *because* the budget is spent, and an answer that cannot be held is
/// dropped, which tells the client it was executed. So a refusal is charged to the budget when it can
/// be, and otherwise to the connection's room, which holds `refusals_at_once` of them
/// ([`REFUSAL_ROOM`] bytes each) and was charged to the budget with the connection's fixed share
/// when the connection was admitted. A refusal that finds the room full waits until one before it
/// has been written out (each within the reply timeout). So however many requests a peer has refused,
/// their answers hold at most the room beyond what the budget allows: memory stays bounded by the
/// budget.
#[derive(Clone, Debug)]
pub struct AnswerBudget {
    memory: MemoryBudget,
    refusals: MemoryBudget,
}

impl AnswerBudget {
    /// Answers charged to `memory`, and room for `refusals_at_once` refusals when it is spent (which
    /// the caller has counted in the connection's fixed share).
    pub fn new(memory: MemoryBudget, refusals_at_once: usize) -> Self {
        AnswerBudget { memory, refusals: MemoryBudget::new(refusals_at_once.max(1) * REFUSAL_ROOM) }
    }

    /// The server-wide budget, which every other answer is charged to.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// A charge for a refusal of `len` bytes (at most [`REFUSAL_ROOM`]): from the budget if it has
    /// them now, otherwise from the room, once it has them.
    async fn refusal(&self, len: usize) -> Charge {
        if let Some(charge) = self.memory.try_charge(len) {
            return charge;
        }
        let mut charge = self.refusals.empty_charge();
        charge.cover(len.min(self.refusals.total())).await;
        charge
    }
}

/// A connection's share of memory for answers: the bytes of its answers made and not yet written to
/// their streams, and how many it may hold before its next request waits to run
/// (`--max-request-buffer`, as a pipelined connection's answers count against it).
///
/// An answer is made whole before it is written (an Hmget spread over frames included): charged, it
/// cannot take the server past its budget, but one connection whose client opens many streams and
/// reads none of their answers could spend the whole budget, every other client then refused with 503
/// until the reply timeout abandoned them. With the share, a request runs only while the answers held
/// are under it. It is a gate, not a reservation: the answer that crosses the share is held whole, and
/// so is that of every request that passed while it had room and had not made its answer yet (one that
/// does not finish at once, a Redis backend's; when the share falls under its limit, every request
/// waiting is let through together). Those that wait run as the client reads (or the reply timeout
/// abandons what it does not), holding their stream and their turn meanwhile. A QUIC connection's
/// requests use it here (`Exchange::answer_share`); the web listener's connections count their
/// answers' large frames in one too (web/paced.rs).
#[derive(Debug)]
pub struct AnswerShare {
    held: AtomicUsize,
    limit: usize,
    /// Told when the answers held fall under the limit.
    freed: Notify,
}

impl AnswerShare {
    /// A share of `limit` bytes of answers.
    pub fn new(limit: usize) -> Self {
        AnswerShare { held: AtomicUsize::new(0), limit, freed: Notify::new() }
    }

    /// Waits until the answers held are under the share: counted once (limit `max_request_buffer`)
    /// if the request has to wait.
    pub(crate) async fn room(&self) {
        if self.has_room() {
            return;
        }
        crate::metrics::limit_hit(Limit::MaxRequestBuffer);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so that a release in between is not missed.
            freed.as_mut().enable();
            if self.has_room() {
                return;
            }
            freed.await;
        }
    }

    /// Counts an answer of `bytes` as held until the returned guard is dropped.
    fn hold(&self, bytes: usize) -> HeldAnswer<&Self> {
        HeldAnswer::new(self, bytes)
    }

    /// Whether the answers held are under the share: a request may run at once.
    pub fn has_room(&self) -> bool {
        self.held.load(Ordering::Acquire) < self.limit
    }

    /// The bytes of answers held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn release(&self, bytes: usize) {
        let before = self.held.fetch_sub(bytes, Ordering::AcqRel);
        // Only a fall from at or over the limit to under it can end a wait.
        if before >= self.limit && before - bytes < self.limit {
            self.freed.notify_waiters();
        }
    }
}

/// An answer counted in its connection's [`AnswerShare`] until it is dropped (once written, or handed
/// on whole); `S` is how the share is reached: borrowed, or shared (an `Arc`) by an answer that
/// outlives the code that made it (the web listener's).
pub(crate) struct HeldAnswer<S: std::ops::Deref<Target = AnswerShare>> {
    share: S,
    bytes: usize,
}

impl<S: std::ops::Deref<Target = AnswerShare>> HeldAnswer<S> {
    pub(crate) fn new(share: S, bytes: usize) -> Self {
        share.held.fetch_add(bytes, Ordering::AcqRel);
        HeldAnswer { share, bytes }
    }
}

impl<S: std::ops::Deref<Target = AnswerShare>> Drop for HeldAnswer<S> {
    fn drop(&mut self) {
        self.share.release(self.bytes);
    }
}

/// The bytes an answer holds once made: a single frame's, or those of frames built ahead
/// (`ReplyStream::built_bytes`; none for a stream made as it is written, a subscription's).
fn answer_bytes(reply: &Reply) -> usize {
    match reply {
        Reply::One(response) => response.encoded_len(),
        Reply::Stream(stream) => stream.built_bytes(),
    }
}

/// Cuts `refusal`'s message short, at a character boundary, so that it takes at most
/// [`MAX_REFUSAL_LEN`] bytes encoded.
fn fit_refusal(refusal: &mut CommandResponse) {
    let excess = refusal.encoded_len().saturating_sub(MAX_REFUSAL_LEN);
    if excess > 0 {
        let mut end = refusal.message.len().saturating_sub(excess);
        while !refusal.message.is_char_boundary(end) {
            end -= 1;
        }
        refusal.message.truncate(end);
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the request stream ended before a request frame")]
    Empty,
    #[error("unexpected bytes after the request frame: a request stream carries exactly one frame")]
    TrailingData,
    #[error("the request did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error(
        "the server has no memory for this request now (its connection memory budget is spent); it was not executed: retry later"
    )]
    NoMemory,
}

impl RequestError {
    /// The status of the error response. (A failed stream, `FrameError::Io`, cannot be answered at all;
    /// the drivers handle it before asking.)
    pub fn status(&self) -> u32 {
        match self {
            RequestError::Frame(FrameError::TooLarge { .. } | FrameError::InflatesTooLarge { .. }) => {
                status::PAYLOAD_TOO_LARGE
            }
            RequestError::TimedOut(_) => status::REQUEST_TIMEOUT,
            RequestError::NoMemory => status::UNAVAILABLE,
            RequestError::Frame(_) | RequestError::Empty | RequestError::TrailingData => status::BAD_REQUEST,
        }
    }

    /// The limit that refused the request, named by its flag, if one did.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            RequestError::Frame(FrameError::TooLarge { .. } | FrameError::InflatesTooLarge { .. }) => {
                Some(Limit::MaxFrameSize)
            }
            RequestError::TimedOut(_) => Some(Limit::RequestTimeout),
            RequestError::NoMemory => Some(Limit::ConnectionMemory),
            _ => None,
        }
    }

    /// The error response; `consequence` is appended to the message (", closing the connection").
    pub fn response(&self, consequence: &str) -> CommandResponse {
        // The server's limit that refused it, named by its flag as the service's are.
        let flag = match self.limit() {
            Some(limit @ (Limit::MaxFrameSize | Limit::RequestTimeout)) => format!(" ({})", limit.flag()),
            _ => String::new(),
        };
        CommandResponse::error(self.status(), format!("{self}{flag}{consequence}"))
    }
}

/// How a request stream was served.
#[derive(Debug)]
pub enum Served {
    /// The request was read whole and answered.
    Answered,
    /// The request was refused with an error response; unread input may remain on the stream.
    Rejected(RequestError),
    /// The request was not executed, and the refusal saying so could not be written: the stream
    /// failed, or its peer did not read it within the reply timeout. (Never for want of memory: see
    /// [`AnswerBudget`].) Unread input may remain on the stream.
    RefusalLost(FrameError),
    /// The request never arrived whole (the client reset its stream, or the connection failed) and
    /// nothing of it was executed; `io::Error` says what ended it.
    Unread(io::Error),
}

/// Reads one request (one frame, then the end of the stream) within `limits.request_timeout`.
pub async fn read_request<R: AsyncRead + Unpin>(
    recv: R,
    limits: &Limits,
) -> Result<CommandRequest, RequestError> {
    let codec = FrameCodec::<CommandRequest>::new(limits.max_frame_len);
    // Requests are small; the codec makes room for a large one once its header says so.
    let mut frames = FramedRead::with_capacity(recv, codec, REQUEST_BUFFER);
    let read = async {
        let request = match frames.next().await.ok_or(RequestError::Empty)? {
            Ok(request) => request,
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::OutOfMemory => {
                return Err(RequestError::NoMemory);
            }
            Err(e) => return Err(e.into()),
        };
        // Any byte after the frame is an error. Check what is buffered, then wait for one more byte
        // or the end of the stream, rather than for a whole second frame.
        if !frames.read_buffer().is_empty() {
            return Err(RequestError::TrailingData);
        }
        match frames.into_inner().read(&mut [0u8; 1]).await {
            Ok(0) => Ok(request),
            Ok(_) => Err(RequestError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => Err(RequestError::NoMemory),
            Err(e) => Err(FrameError::Io(e).into()),
        }
    };
    timeouts::deadline(limits.request_timeout, read)
        .await
        .unwrap_or(Err(RequestError::TimedOut(limits.request_timeout)))
}

/// Writes every frame of `reply`, each charged to `memory` while it is held; fails with `TimedOut` if
/// the peer reads nothing of it for `limits.reply_timeout`, and with `MemoryExhausted` if a frame does
/// not fit in the budget.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    send: W,
    reply: Reply,
    limits: &Limits,
    memory: &MemoryBudget,
) -> Result<(), FrameError> {
    let send = StallTimeout::new(send, limits.reply_timeout, limits.reply_min_progress);
    let mut frames = FrameWriter::new(send, limits.max_frame_len, memory);
    match reply {
        Reply::One(response) => frames.send(ReplyFrame::Response(response)).await,
        // A stream of frames (a large answer, a subscription): `send_all` flushes whenever the producer
        // has to wait, so a slow producer's frames are not held back, and once more at the end.
        Reply::Stream(mut stream) => frames.send_all(&mut stream.by_ref().map(Ok)).await,
    }
}

/// A service's answer that says its request was not executed, and carries nothing but a message.
pub(super) fn is_refusal(response: &CommandResponse) -> bool {
    matches!(
        response.status,
        status::BAD_REQUEST
            | status::FORBIDDEN
            | status::PAYLOAD_TOO_LARGE
            | status::NOT_IMPLEMENTED
            | status::UNAVAILABLE
            | status::INSUFFICIENT_STORAGE
    )
}

/// Writes `refusal`, an error response to a request that was not executed, charged to `answers`'
/// budget or, when that is spent, to its room for refusals (see [`AnswerBudget`]): never refused for
/// want of memory. Fails with `TimedOut` if the peer reads nothing of it for `limits.reply_timeout`.
pub async fn write_refusal<W: AsyncWrite + Unpin>(
    send: W,
    mut refusal: CommandResponse,
    limits: &Limits,
    answers: &AnswerBudget,
) -> Result<(), FrameError> {
    fit_refusal(&mut refusal);
    let charge = answers.refusal(HEADER_LEN + refusal.encoded_len()).await;
    let send = StallTimeout::new(send, limits.reply_timeout, limits.reply_min_progress);
    let mut frames = FrameWriter::with_charge(send, limits.max_frame_len, charge);
    frames.send(ReplyFrame::Response(refusal)).await
}

/// A request that arrived in 0-RTT early data, before the handshake completed. An attacker who
/// captured it could replay it, so only a read-only command is executed at once; anything else waits
/// until the handshake completes (which a replay never does). docs/PROTOCOL.md, "0-RTT".
#[derive(Clone)]
pub struct EarlyData {
    /// Resolves to true when the handshake completes, false when the connection fails first.
    handshake: Shared<BoxFuture<'static, bool>>,
}

impl EarlyData {
    pub fn new(handshake: impl Future<Output = bool> + Send + 'static) -> Self {
        EarlyData { handshake: handshake.boxed().shared() }
    }

    /// Resolves to true when the handshake completes, false when the connection fails first.
    pub fn completed(&self) -> impl Future<Output = bool> + Send + 'static {
        self.handshake.clone()
    }

    /// Whether a request may be executed now that it has been read: at once if it is replay-safe,
    /// otherwise once the handshake has completed; false if it never will.
    async fn allows(&self, replay_safe: bool) -> bool {
        replay_safe || self.handshake.clone().await
    }
}

/// What a connection serves each of its request streams with, cloned into each stream's task.
#[derive(Clone)]
pub struct Exchange<H> {
    pub handler: H,
    pub limits: std::sync::Arc<Limits>,
    /// What the connection's answers are charged to.
    pub answers: AnswerBudget,
    /// Who the connection's peer is, as requests are executed for it.
    pub caller: Caller,
    /// When set, how many of the connection's requests may execute at once: a request read whole
    /// waits for one of its permits, and holds it until its answer is written. It is taken only once
    /// the request has been read, so that requests waiting their turn never hold back the bytes of
    /// those that have it (a QUIC connection's flow-control window is shared by all its streams).
    pub in_progress: Option<std::sync::Arc<Semaphore>>,
    /// When set, the connection's share for answers: a request runs only while its answers held are
    /// under it (see [`AnswerShare`]).
    pub answer_share: Option<std::sync::Arc<AnswerShare>>,
}

/// Serves one request stream: reads the request, executes it, writes the reply. An unreadable request
/// is answered with an error response (docs/PROTOCOL.md, "Errors"). `early` is set when the request
/// came in 0-RTT early data; `accepted`, when given, is when the stream was accepted: what the
/// handler is told its client waited counts from then. The reply's frames are charged to the
/// connection's answers while held; refusals (a rejected request, a service's 503) always can be
/// (see [`AnswerBudget`]), and a refusal that cannot be delivered is `Served::RefusalLost`; a request
/// whose stream failed before it arrived whole is `Served::Unread`. Returns an error only when the
/// stream failed while the reply was written, or when an executed request's reply could not be held
/// (`MemoryExhausted`), or when a write sent in 0-RTT is dropped because the handshake failed.
pub async fn serve_request<R, W, H>(
    mut recv: R,
    send: W,
    exchange: &Exchange<H>,
    early: Option<&EarlyData>,
    accepted: Option<std::time::Instant>,
) -> Result<Served, FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    H: Handler,
{
    let Exchange { handler, limits, answers, caller, in_progress, answer_share } = exchange;
    let (refusal, served) = match read_request(&mut recv, limits).await {
        Ok(request) => {
            tracing::Span::current().record("command", request.command_name());
            // Its latency counts from the moment its stream was accepted (waiting for the runtime, for
            // its bytes and for a turn included), or else from now, its frame being whole.
            let arrival = handler.times_answers().then(|| Arrival {
                command: request.command_index(),
                at: accepted.unwrap_or_else(std::time::Instant::now),
            });
            if let Some(early) = early
                && !early.allows(handler.class(&request).replay_safe).await
            {
                let failed = "the handshake failed: a write sent in 0-RTT early data was not executed";
                return Err(FrameError::Io(io::Error::new(io::ErrorKind::ConnectionAborted, failed)));
            }
            // (The semaphore is never closed; were it, the request would run without a turn.)
            let _turn = match in_progress {
                Some(in_progress) => in_progress.acquire().await.ok(),
                None => None,
            };
            if let Some(share) = answer_share {
                share.room().await;
            }
            let reply = handler.execute(request, caller).await;
            if let Some(arrival) = arrival {
                handler.answered(arrival);
            }
            match reply {
                // Not executed either (a name over its limit, a `Publish` the budget cannot queue, an
                // unreachable backend, a full store): it must reach the client as surely as the
                // transport's own refusals.
                Reply::One(response) if is_refusal(&response) => (response, Served::Answered),
                // `recv` lives until the reply is written: a budgeted reader keeps its request's bytes
                // charged while the request executes and is answered.
                reply => {
                    let not_executed = matches!(&reply, Reply::One(r) if r.status == status::CONFLICT);
                    let _held = answer_share.as_ref().map(|share| share.hold(answer_bytes(&reply)));
                    return match write_reply(send, reply, limits, &answers.memory).await {
                        Ok(()) => Ok(Served::Answered),
                        // A conflict's answer carries the key's value, which may not fit in what is
                        // left: it is lost, but the client must not hear "executed" (0x14).
                        Err(e @ FrameError::MemoryExhausted { .. }) if not_executed => {
                            Ok(Served::RefusalLost(e))
                        }
                        Err(e) => Err(e),
                    };
                }
            }
        }
        Err(RequestError::Frame(FrameError::Io(e))) => return Ok(Served::Unread(e)),
        Err(e) => {
            // Request-level: at debug only, in the request's span (and so the connection's).
            tracing::debug!(target: "qkv::connection", error = %e, "rejected a request");
            if let Some(limit) = e.limit() {
                crate::metrics::limit_hit(limit);
            }
            if e.status() == status::BAD_REQUEST {
                crate::metrics::malformed_request();
            }
            (e.response(""), Served::Rejected(e))
        }
    };
    // Nothing of this request will run: its bytes go back to the budget before its refusal is
    // written, which may need them (the request may be what spent the budget).
    drop(recv);
    match write_refusal(send, refusal, limits, answers).await {
        Ok(()) => Ok(served),
        Err(lost) => Ok(Served::RefusalLost(lost)),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, DuplexStream};
    use tokio::sync::oneshot;

    use super::*;
    use crate::service::{Service, ServiceConfig};
    use crate::storage::MemoryStore;
    use crate::transport::frame::encode_frame;

    const MAX: usize = 1 << 20;

    fn unlimited() -> AnswerBudget {
        AnswerBudget::new(MemoryBudget::unlimited(), 1)
    }

    fn service() -> Service<MemoryStore> {
        Service::new(MemoryStore::new(), ServiceConfig::default(), MAX)
    }

    /// The server's end of a request stream that holds `request` and is finished, and a reply stream:
    /// the server's end and the client's.
    async fn stream_of(request: &CommandRequest) -> (DuplexStream, (DuplexStream, DuplexStream)) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&encode_frame(request, MAX).unwrap()).await.unwrap();
        client.shutdown().await.unwrap();
        (server, tokio::io::duplex(64 * 1024))
    }

    /// A handshake that completes (true) or fails (false) when the test says so.
    fn pending_handshake() -> (EarlyData, oneshot::Sender<bool>) {
        let (done, outcome) = oneshot::channel();
        (EarlyData::new(async { outcome.await.unwrap_or(false) }), done)
    }

    /// Serves the request on `recv` with default limits, no budget, no limit on requests in progress
    /// and no arrival to tell of; `early` as `serve_request` takes it.
    async fn serve(
        recv: impl AsyncRead + Unpin,
        send: impl AsyncWrite + Unpin,
        service: &Service<MemoryStore>,
        early: Option<&EarlyData>,
    ) -> Result<Served, FrameError> {
        serve_request(recv, send, &exchange(service, unlimited()), early, None).await
    }

    /// What a connection with default limits, answers charged to `answers` and no limit on requests
    /// in progress serves its streams with.
    fn exchange(service: &Service<MemoryStore>, answers: AnswerBudget) -> Exchange<Service<MemoryStore>> {
        Exchange {
            handler: service.clone(),
            limits: std::sync::Arc::new(Limits::default()),
            answers,
            caller: Caller::default(),
            in_progress: None,
            answer_share: None,
        }
    }

    async fn stored(service: &Service<MemoryStore>, key: &str) -> bool {
        let (recv, (mut send, reply)) = stream_of(&CommandRequest::hexist("t", key)).await;
        serve(recv, &mut send, service, None).await.unwrap();
        let mut frames = FramedRead::new(reply, FrameCodec::<CommandResponse>::new(MAX));
        frames.next().await.unwrap().unwrap().values[0] == true.into()
    }

    /// Serves an Hset of t/k that arrived in early data, gated by `early`.
    async fn serve_early_write(
        service: &Service<MemoryStore>,
        early: &EarlyData,
    ) -> Result<Served, FrameError> {
        let (recv, (mut send, _reply)) = stream_of(&CommandRequest::hset("t", "k", "v")).await;
        serve(recv, &mut send, service, Some(early)).await
    }

    #[tokio::test]
    async fn a_write_in_early_data_waits_for_the_handshake() {
        let service = service();
        let (early, handshake) = pending_handshake();
        let serving = serve_early_write(&service, &early);
        tokio::pin!(serving);
        // Everything the request needs is there; only the handshake is missing.
        for _ in 0..10 {
            tokio::select! {
                biased;
                _ = &mut serving => panic!("a write from early data was served before the handshake"),
                _ = tokio::task::yield_now() => {}
            }
        }
        assert!(!stored(&service, "k").await, "the write ran before the handshake completed");
        handshake.send(true).unwrap();
        serving.await.unwrap();
        assert!(stored(&service, "k").await);
    }

    #[tokio::test]
    async fn a_write_in_early_data_of_a_failed_handshake_is_never_executed() {
        let service = service();
        let (early, handshake) = pending_handshake();
        let serving = serve_early_write(&service, &early);
        handshake.send(false).unwrap();
        assert!(serving.await.is_err());
        assert!(!stored(&service, "k").await);
    }

    #[tokio::test]
    async fn a_read_in_early_data_is_answered_at_once() {
        let service = service();
        let (early, _handshake) = pending_handshake();
        let (recv, (mut send, _reply)) = stream_of(&CommandRequest::hget("t", "k")).await;
        let served = serve(recv, &mut send, &service, Some(&early)).await;
        assert!(matches!(served, Ok(Served::Answered)), "{served:?}");
    }

    /// A request runs only while its connection's answers held are under the share, and one that
    /// waits runs once an answer held is written.
    #[tokio::test]
    async fn a_request_waits_while_its_connections_answers_fill_their_share() {
        let share = AnswerShare::new(10);
        let under = share.hold(9);
        let room = share.room();
        tokio::pin!(room);
        assert!(futures_util::poll!(&mut room).is_ready(), "under the share: at once");
        let over = share.hold(3);
        let room = share.room();
        tokio::pin!(room);
        assert!(futures_util::poll!(&mut room).is_pending(), "12 bytes held of 10");
        drop(under);
        assert!(futures_util::poll!(&mut room).is_ready(), "3 held once the first is written");
        drop(over);
        assert_eq!(share.held(), 0);
    }

    /// Refusals written while the budget is spent: a client that reads none of them holds at most the
    /// room (one here), and the next waits for it, then goes out once the first has been read.
    #[tokio::test]
    async fn refusals_need_no_budget_and_hold_at_most_their_room() {
        let memory = MemoryBudget::new(64 * 1024);
        let _spent = memory.try_charge(64 * 1024).unwrap();
        let answers = AnswerBudget::new(memory.clone(), 1);
        let refusal = || CommandResponse::error(status::UNAVAILABLE, "x".repeat(5000));
        let limits = Limits::default();
        // Too small for a refusal: the first one stays in its writer, charged to the room.
        let (first_send, first_reply) = tokio::io::duplex(64);
        let first = write_refusal(first_send, refusal(), &limits, &answers);
        let (second_send, second_reply) = tokio::io::duplex(64 * 1024);
        let second = write_refusal(second_send, refusal(), &limits, &answers);
        tokio::pin!(first, second);
        assert!(futures_util::poll!(&mut first).is_pending(), "the client has not read it");
        assert!(futures_util::poll!(&mut second).is_pending(), "the room holds one refusal");

        let mut first_reply = FramedRead::new(first_reply, FrameCodec::<CommandResponse>::new(MAX));
        let (written, answer) = tokio::join!(first, first_reply.next());
        written.unwrap();
        let answer = answer.unwrap().unwrap();
        assert_eq!(answer.status, status::UNAVAILABLE);
        assert!(answer.encoded_len() <= MAX_REFUSAL_LEN, "a long message is cut to fit the room");
        second.await.unwrap();
        let mut second_reply = FramedRead::new(second_reply, FrameCodec::<CommandResponse>::new(MAX));
        assert_eq!(second_reply.next().await.unwrap().unwrap().status, status::UNAVAILABLE);
        assert_eq!(memory.available(), 0, "the spent budget gave nothing to the refusals");
    }

    /// A service's refusals (here a key over its limit: 413) are delivered while the budget is spent, as
    /// the transport's own are, and a conflict whose answer cannot be held is lost as not executed.
    #[tokio::test]
    async fn a_services_refusals_need_no_budget_and_a_lost_conflict_is_not_executed() {
        let service = service();
        let (recv, (mut send, _reply)) = stream_of(&CommandRequest::hset("t", "k", "v")).await;
        serve(recv, &mut send, &service, None).await.unwrap();
        let memory = MemoryBudget::new(64 * 1024);
        let _spent = memory.try_charge(64 * 1024).unwrap();
        let exchange = exchange(&service, AnswerBudget::new(memory.clone(), 1));
        let long_key = "k".repeat(ServiceConfig::default().items.max_key_len + 1);
        let (recv, (mut send, reply)) = stream_of(&CommandRequest::hget("t", long_key)).await;
        let served = serve_request(recv, &mut send, &exchange, None, None).await;
        assert!(matches!(served, Ok(Served::Answered)), "{served:?}");
        let mut frames = FramedRead::new(reply, FrameCodec::<CommandResponse>::new(MAX));
        assert_eq!(frames.next().await.unwrap().unwrap().status, status::PAYLOAD_TOO_LARGE);

        // Versions start from the clock: 1 is never the key's.
        let conflict = CommandRequest::hset_if_version("t", "k", "w", 1);
        let (recv, (mut send, _reply)) = stream_of(&conflict).await;
        let served = serve_request(recv, &mut send, &exchange, None, None).await;
        assert!(matches!(served, Ok(Served::RefusalLost(FrameError::MemoryExhausted { .. }))), "{served:?}");
    }
}
