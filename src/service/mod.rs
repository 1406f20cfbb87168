//! The service: what each command does. Shared by every connection of every transport, cheap to clone,
//! and ignorant of QUIC and TCP. Transports see it as a [`Handler`]: they hand it decoded requests,
//! ask it how each may be ordered against the others ([`RequestClass`]), and write out the [`Reply`]
//! frames.
//!
//! `execute` is the one place that dispatches commands; each command family has its own module.

mod error;
mod hash;
mod items;
mod ping;
mod pubsub;
mod scan_slots;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use prost::Message;

pub use error::{ServiceError, shown};
pub use items::ItemLimits;

use crate::memory::MemoryBudget;
use crate::pb::{CommandRequest, CommandResponse, command_request::RequestData, split_response};
use crate::pubsub::{Broker, ConnectionEnd, ConnectionId, EndReason, LagPolicy, Relay};
use crate::storage::Storage;

/// The default target size of one response frame: big enough that framing overhead is negligible,
/// small enough that a client sees the first part of a large answer early.
pub const DEFAULT_RESPONSE_FRAME_TARGET: usize = 64 * 1024;

/// Tuning of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Responses larger than this are sent as several frames (`more = true` on all but the last).
    pub response_frame_target: usize,
    /// `Hgetall` scans running at once; more wait. Each holds a snapshot of its table's keys; one whose
    /// client stops reading gives its slot to a waiting one (`scan_slots`).
    pub max_concurrent_scans: usize,
    /// The largest table name (and topic), key and value accepted.
    pub items: ItemLimits,
    /// Messages each subscriber's queue holds before the lag policy applies. A queued message is a
    /// pointer to the published message, which all subscribers share.
    pub subscriber_queue: usize,
    /// Bytes of messages each subscriber's queue holds before the lag policy applies (a queue always
    /// takes a message when it is empty, however large).
    pub subscriber_queue_bytes: usize,
    /// What happens to a subscriber whose queue is full when a message is published.
    pub lag_policy: LagPolicy,
    /// The most bytes of values one `Hmget` answer may carry: it is built whole before it is sent.
    pub max_answer: usize,
}

/// The default of [`ServiceConfig::max_answer`].
pub const DEFAULT_MAX_ANSWER: usize = 64 * 1024 * 1024;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            response_frame_target: DEFAULT_RESPONSE_FRAME_TARGET,
            max_concurrent_scans: 16,
            items: ItemLimits::default(),
            subscriber_queue: 1024,
            subscriber_queue_bytes: 16 * 1024 * 1024,
            lag_policy: LagPolicy::Skip,
            max_answer: DEFAULT_MAX_ANSWER,
        }
    }
}

/// Bytes every answer about a key or payload may need beyond the key and value themselves: status,
/// tags, lengths, a version, and a 409's message.
pub const ANSWER_OVERHEAD: usize = 256;

impl ServiceConfig {
    /// Checks the settings against the transports' maximum frame size; the error says what to change.
    pub fn validate(&self, max_frame_len: usize) -> Result<(), String> {
        if max_frame_len <= ANSWER_OVERHEAD {
            return Err(format!("the maximum frame size must exceed {ANSWER_OVERHEAD} bytes"));
        }
        if self.response_frame_target == 0 || self.response_frame_target > max_frame_len {
            return Err(format!(
                "the response frame target (--response-frame-target) must be between 1 and the maximum frame size (--max-frame-size, {max_frame_len} bytes), not {}",
                self.response_frame_target
            ));
        }
        if self.max_concurrent_scans == 0 {
            return Err("at least one concurrent scan must be allowed".into());
        }
        if self.subscriber_queue == 0 || self.subscriber_queue_bytes == 0 {
            return Err("a subscriber's queue must hold at least one message".into());
        }
        if self.max_answer < self.items.max_value_len {
            return Err(format!(
                "the answer limit (--max-answer-size, {} bytes) must hold at least one value at the value limit (--max-value-size, {} bytes)",
                self.max_answer, self.items.max_value_len
            ));
        }
        self.items.validate()
    }

    /// Warns of what `validate` allows but a user may not expect (see `ItemLimits`).
    pub fn warn_of_surprises(&self, max_frame_len: usize) {
        self.items.warn_if_entries_cannot_fit(max_frame_len - ANSWER_OVERHEAD);
    }
}

/// What a command answers: most commands one frame, some (large answers, `Hgetall`, subscriptions) a
/// stream of frames whose `more` flags are already set.
pub enum Reply {
    One(CommandResponse),
    Stream(ReplyStream),
}

/// The frames of a streamed answer, and how many bytes of them were built before it was handed on.
/// An answer spread over frames whole (`Service::framed`) holds them until they are taken, and a
/// connection counts them among what it holds (the TCP pipeline, against `--max-request-buffer`), so
/// that one connection's unread answers cannot take the whole memory budget. Frames made as they are
/// taken (a listing's pages, a subscription's messages) are built as none.
pub struct ReplyStream {
    frames: Pin<Box<dyn Stream<Item = ReplyFrame> + Send>>,
    built: usize,
}

impl ReplyStream {
    /// Frames made as they are taken.
    pub fn new(frames: impl Stream<Item = ReplyFrame> + Send + 'static) -> Self {
        ReplyStream { frames: Box::pin(frames), built: 0 }
    }

    /// Frames built already, `bytes` of them (encoded).
    pub fn built(frames: impl Stream<Item = ReplyFrame> + Send + 'static, bytes: usize) -> Self {
        ReplyStream { frames: Box::pin(frames), built: bytes }
    }

    /// The bytes built when the answer was made (not less as its frames are taken).
    pub fn built_bytes(&self) -> usize {
        self.built
    }
}

impl Stream for ReplyStream {
    type Item = ReplyFrame;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ReplyFrame>> {
        self.frames.as_mut().poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.frames.size_hint()
    }
}

/// One frame of a streamed answer: a response for the transport to encode, or one encoded already.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyFrame {
    Response(CommandResponse),
    /// The protobuf encoding of a `CommandResponse` (without the frame's length prefix), encoded once
    /// and shared: a published message, sent as is to every subscriber.
    Encoded(Bytes),
}

impl ReplyFrame {
    /// The length of the frame's protobuf payload.
    pub fn encoded_len(&self) -> usize {
        match self {
            ReplyFrame::Response(response) => response.encoded_len(),
            ReplyFrame::Encoded(payload) => payload.len(),
        }
    }

    /// The frame as a response (decoding it if it was encoded already): for adapters that carry
    /// responses rather than bytes, and for tests.
    pub fn into_response(self) -> Result<CommandResponse, prost::DecodeError> {
        match self {
            ReplyFrame::Response(response) => Ok(response),
            ReplyFrame::Encoded(payload) => CommandResponse::decode(payload),
        }
    }
}

impl From<CommandResponse> for ReplyFrame {
    fn from(response: CommandResponse) -> Self {
        ReplyFrame::Response(response)
    }
}

/// How a request may be ordered against the others of a connection that answers in request order
/// (the TCP pipeline). The handler declares it, so that transports know nothing of commands or
/// storage backends, and each request sees exactly the effects of the requests sent before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequencing {
    /// Changes nothing: runs beside other reads; starts after the writes before it have completed.
    Read,
    /// A write that the backend applies in the order writes are issued: it may start while earlier
    /// writes still run (so that they share a group commit), once the reads before it have completed.
    OrderedWrite,
    /// Runs alone: starts once everything before it has completed, and nothing after it starts until
    /// it has. Writes to a backend without issue order, and anything whose effect is visible outside
    /// the store (a publish must not overtake the writes before it).
    Barrier,
}

/// What a transport needs to know about a request before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestClass {
    pub sequencing: Sequencing,
    /// Its answer lasts until something ends it (a subscription), rather than ending by itself once
    /// its client has read it: a connection that answers in order and cannot read on until it ends
    /// must end it (`Handler::connection_stalled`).
    pub endless: bool,
    /// Safe to run from 0-RTT early data, which an attacker may replay: it changes nothing.
    pub replay_safe: bool,
}

/// What serves the requests behind every front door: the transports are generic over it, and the
/// [`Service`] is the one implementation.
pub trait Handler: Clone + Send + Sync + 'static {
    /// How `request` may be ordered against others, and whether it may run from early data.
    fn class(&self, request: &CommandRequest) -> RequestClass;

    /// Executes one request from `caller`. Never fails: errors are answered as error responses.
    fn execute<'a>(
        &'a self,
        request: CommandRequest,
        caller: &'a Caller,
    ) -> impl Future<Output = Reply> + Send + 'a;

    /// `caller`'s connection takes no more requests and must end (see `transport::pipeline::AfterClose`),
    /// `why` says for what: end what it owns that would otherwise keep its answers going (its
    /// subscriptions, each with a last frame saying why).
    fn connection_closing(&self, caller: &Caller, why: ConnectionEnd);

    /// `caller`'s connection answers in request order and can take no more requests until the answer
    /// being written ends, which only ending its subscriptions can bring about (see
    /// `transport::pipeline`): end them, each with a last frame saying why.
    fn connection_stalled(&self, caller: &Caller);

    /// A request its door answered without executing it, with `status` (a REST write whose
    /// precondition failed on the key's current version: 409, HTTP's 412), for handlers that count
    /// requests (`metrics::Metered`): `command` is its [`CommandRequest::command_index`].
    fn answered_at_door(&self, command: usize, status: u32) {
        let _ = (command, status);
    }

    /// Whether [`Handler::answered`] wants to hear of answers. A transport reads the clock for it
    /// only then, so that a server without metrics does not pay for it.
    fn times_answers(&self) -> bool {
        false
    }

    /// The answer to a request was handed to its transport to be written: after the request waited
    /// for its turn, ran, and waited for the answers before it. `arrival` says when its frame was
    /// whole. What a client waits is this, not [`Handler::execute`]'s time alone: a handler that
    /// measures it (`metrics::Metered`) is told here.
    fn answered(&self, arrival: Arrival) {
        let _ = arrival;
    }
}

/// A request as its transport received it, for [`Handler::answered`]: its command
/// ([`CommandRequest::command_index`]) and the moment its frame was whole.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub command: usize,
    pub at: std::time::Instant,
}

impl From<CommandResponse> for Reply {
    fn from(response: CommandResponse) -> Self {
        Reply::One(response)
    }
}

/// Who sent a request, as its transport established it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The subject of the client's certificate, e.g. `CN=alice`, when the server requires client
    /// certificates (mutual TLS); `None` otherwise.
    pub identity: Option<Arc<str>>,
    /// The connection the request came on: it owns the subscriptions it makes.
    pub connection: ConnectionId,
    /// Subscriptions the connection can carry at once, if limited: one on a connection that answers in
    /// request order (TCP), since a second subscription's answer could start only once the first ends.
    pub max_subscriptions: Option<usize>,
}

impl Caller {
    /// A caller on a new connection.
    pub fn new(identity: Option<Arc<str>>) -> Self {
        Caller { identity, connection: ConnectionId::unique(), max_subscriptions: None }
    }

    /// The same caller on a new connection of its own, which owns its own subscriptions.
    pub fn on_new_connection(&self) -> Caller {
        Caller { connection: ConnectionId::unique(), ..self.clone() }
    }
}

impl Default for Caller {
    /// An anonymous caller on a connection of its own.
    fn default() -> Self {
        Caller::new(None)
    }
}

/// The KV service over storage backend `S`.
pub struct Service<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    storage: S,
    config: ServiceConfig,
    /// The largest key plus value (encoded) the service stores: every answer carrying them must fit
    /// in one frame of the transports.
    max_entry_len: usize,
    scans: Arc<scan_slots::ScanSlots>,
    broker: Broker,
    /// Carries publishes to and from the other gateways of a shared store (Redis), if any.
    relay: Option<Arc<dyn Relay>>,
    /// The server-wide budget of what connections make the server hold: answers built ahead of their
    /// writing are charged to it ([`Service::framed`]), published messages too (the broker's).
    memory: MemoryBudget,
}

/// Whether `command` changes stored data: its answer must reach its client whatever its size or the
/// memory it finds, since the change is made by then (a refusal would say it was not).
pub fn is_write(command: &RequestData) -> bool {
    matches!(
        command,
        RequestData::Hset(_) | RequestData::Hmset(_) | RequestData::Hdel(_) | RequestData::Hmdel(_)
    )
}

impl<S> Clone for Service<S> {
    fn clone(&self) -> Self {
        Service { inner: self.inner.clone() }
    }
}

impl<S: Storage> Service<S> {
    /// A service whose answers must fit in frames of `max_frame_len` bytes, with no limit on the memory
    /// published messages may hold (see [`Service::with_memory`]).
    pub fn new(storage: S, config: ServiceConfig, max_frame_len: usize) -> Self {
        Self::with_memory(storage, config, max_frame_len, MemoryBudget::unlimited())
    }

    /// A service whose published messages, while subscribers' queues hold them, and answers built ahead
    /// of their writing are charged to `memory` (the server-wide budget the transports charge too).
    pub fn with_memory(
        storage: S,
        config: ServiceConfig,
        max_frame_len: usize,
        memory: MemoryBudget,
    ) -> Self {
        let scans = Arc::new(scan_slots::ScanSlots::new(config.max_concurrent_scans));
        let max_entry_len = max_frame_len.saturating_sub(ANSWER_OVERHEAD);
        let broker = Broker::new(
            config.subscriber_queue,
            config.subscriber_queue_bytes,
            config.lag_policy,
            memory.clone(),
        );
        let relay = storage.relay();
        if let Some(relay) = &relay {
            relay.attach(broker.clone());
        }
        Service { inner: Arc::new(Inner { storage, config, max_entry_len, scans, broker, relay, memory }) }
    }

    /// See [`Handler::class`].
    pub fn class(&self, request: &CommandRequest) -> RequestClass {
        let sequencing = match &request.request_data {
            Some(RequestData::Hmset(m)) if m.pairs.len() > crate::storage::ORDERED_WRITE_KEYS => {
                Sequencing::Barrier
            }
            Some(RequestData::Hmdel(m)) if m.keys.len() > crate::storage::ORDERED_WRITE_KEYS => {
                Sequencing::Barrier
            }
            Some(
                RequestData::Hset(_) | RequestData::Hmset(_) | RequestData::Hdel(_) | RequestData::Hmdel(_),
            ) if S::APPLIES_WRITES_IN_ISSUE_ORDER => Sequencing::OrderedWrite,
            Some(
                RequestData::Hset(_) | RequestData::Hmset(_) | RequestData::Hdel(_) | RequestData::Hmdel(_),
            ) => Sequencing::Barrier,
            // Applied at once, outside the store: it must follow the writes before it to completion.
            Some(RequestData::Publish(_)) => Sequencing::Barrier,
            // A subscription registers as a read runs; Unsubscribe runs at once, so that it can end
            // a subscription being answered on its own connection.
            None
            | Some(
                RequestData::Subscribe(_)
                | RequestData::Hget(_)
                | RequestData::Hgetall(_)
                | RequestData::Hmget(_)
                | RequestData::Hexist(_)
                | RequestData::Hmexist(_)
                | RequestData::Ping(_)
                | RequestData::Unsubscribe(_),
            ) => Sequencing::Read,
        };
        let endless = matches!(request.request_data, Some(RequestData::Subscribe(_)));
        RequestClass { sequencing, endless, replay_safe: request.is_read_only() }
    }

    /// The topics and their subscribers.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// Ends the subscriptions of `caller`'s connection, which takes no more requests and must end
    /// (`Handler::connection_closing`). Each ends with its last frame, so that its answers can end.
    pub fn connection_closing(&self, caller: &Caller, why: ConnectionEnd) {
        self.inner.broker.end_connection(caller.connection, EndReason::ConnectionEnding(why));
    }

    /// Ends the subscriptions of `caller`'s connection, which can take no more requests until they end
    /// (`Handler::connection_stalled`). Each ends with its last frame, a 429 saying why.
    pub fn connection_stalled(&self, caller: &Caller) {
        self.inner.broker.end_connection(caller.connection, EndReason::Stalled);
    }

    /// Ends every subscription, each with its last frame, and takes no new ones: the server is
    /// shutting down, and an endless answer must not hold its grace period.
    pub fn close_subscriptions(&self) {
        self.inner.broker.close();
    }

    pub fn max_entry_len(&self) -> usize {
        self.inner.max_entry_len
    }

    pub fn storage(&self) -> &S {
        &self.inner.storage
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The `max_concurrent_scans` slots of listings.
    fn scan_slots(&self) -> &Arc<scan_slots::ScanSlots> {
        &self.inner.scans
    }

    /// Executes one request from `caller`. Never fails: errors become error responses with a status
    /// and a message.
    pub async fn execute(&self, request: CommandRequest, caller: &Caller) -> Reply {
        let Some(command) = request.request_data else {
            // Also what a command newer than this server looks like: protobuf decoders skip unknown fields.
            return ServiceError::InvalidRequest("the request carries no command this server knows".into())
                .into_response()
                .into();
        };
        if let Err(e) = self.config().items.check(&command) {
            return e.into_response().into();
        }
        let storage = self.storage();
        // A write's answer is sent whatever memory it finds: the write was made.
        let refusable = !is_write(&command);
        let result = match command {
            RequestData::Hget(cmd) => hash::hget(storage, cmd).await,
            RequestData::Hgetall(cmd) => return hash::hgetall(self, cmd).await,
            RequestData::Hmget(cmd) => hash::hmget(storage, self.inner.config.max_answer, cmd).await,
            RequestData::Hset(cmd) => hash::hset(storage, self.max_entry_len(), cmd).await,
            RequestData::Hmset(cmd) => hash::hmset(storage, self.max_entry_len(), cmd).await,
            RequestData::Hdel(cmd) => hash::hdel(storage, cmd).await,
            RequestData::Hmdel(cmd) => hash::hmdel(storage, cmd).await,
            RequestData::Hexist(cmd) => hash::hexist(storage, cmd).await,
            RequestData::Hmexist(cmd) => hash::hmexist(storage, cmd).await,
            RequestData::Ping(cmd) => ping::ping(self.max_entry_len(), cmd, caller),
            RequestData::Subscribe(cmd) => {
                return pubsub::subscribe(self.broker(), self.inner.relay.as_deref(), cmd, caller);
            }
            RequestData::Unsubscribe(cmd) => pubsub::unsubscribe(self.broker(), cmd, caller),
            RequestData::Publish(cmd) => {
                pubsub::publish(self.broker(), self.inner.relay.as_deref(), self.max_entry_len(), cmd).await
            }
        };
        let response = result.unwrap_or_else(ServiceError::into_response);
        self.framed(response, refusable)
    }

    /// Spreads a response over several frames when it is larger than the frame target. Such an answer
    /// is built whole before its turn to be written, so its frames are charged to the memory budget
    /// until they are taken (the writer charges each as it writes it): a connection's 256 Hmgets of up
    /// to --max-answer-size each held gigabytes uncharged while its client read nothing. When the
    /// budget cannot hold them, a `refusable` request (not a write) is answered 503, nothing changed; a
    /// write's answer goes uncharged (its values were the store's, charged there, a moment before).
    fn framed(&self, response: CommandResponse, refusable: bool) -> Reply {
        let mut frames = split_response(response, self.config().response_frame_target);
        if frames.len() == 1 {
            return Reply::One(frames.remove(0));
        }
        let mut left: usize = frames.iter().map(CommandResponse::encoded_len).sum();
        let mut charge = self.inner.memory.try_charge(left);
        if charge.is_none() && refusable {
            crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
            let why = format!(
                "the server has no memory for an answer of {left} bytes now (its connection memory budget \
                 is spent); nothing was changed: try again later, or ask for less at a time"
            );
            return ServiceError::Unavailable(why).into_response().into();
        }
        let built = left;
        let frames = futures_util::stream::iter(frames.into_iter().map(move |frame| {
            left = left.saturating_sub(frame.encoded_len());
            if let Some(charge) = &mut charge {
                charge.shrink_to(left);
            }
            ReplyFrame::from(frame)
        }));
        Reply::Stream(ReplyStream::built(frames, built))
    }
}

impl<S: Storage> Handler for Service<S> {
    fn class(&self, request: &CommandRequest) -> RequestClass {
        Service::class(self, request)
    }

    fn execute<'a>(
        &'a self,
        request: CommandRequest,
        caller: &'a Caller,
    ) -> impl Future<Output = Reply> + Send + 'a {
        Service::execute(self, request, caller)
    }

    fn connection_closing(&self, caller: &Caller, why: ConnectionEnd) {
        Service::connection_closing(self, caller, why)
    }

    fn connection_stalled(&self, caller: &Caller) {
        Service::connection_stalled(self, caller)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::pb::{Value, Versioned, status};
    use crate::storage::{
        MemoryScan, MemoryStore, PageLimit, ScanPage, StorageError, StorageResult, TableScan, WriteOutcome,
    };

    /// The memory store, except that scans fail after their first page: the storage failure a long
    /// Hgetall can meet half way.
    struct FailingScans(MemoryStore);

    struct FailAfterFirstPage(MemoryScan, bool);

    impl TableScan for FailAfterFirstPage {
        async fn next_page(&mut self, limit: PageLimit) -> StorageResult<ScanPage> {
            if std::mem::replace(&mut self.1, true) {
                return Err(StorageError::Backend("disk on fire".into()));
            }
            self.0.next_page(limit).await
        }
    }

    impl Storage for FailingScans {
        type Scan = FailAfterFirstPage;
        async fn get(&self, t: &str, k: &str) -> StorageResult<Option<Versioned>> {
            self.0.get(t, k).await
        }
        async fn get_many(&self, t: &str, k: &[String]) -> StorageResult<Vec<Option<Versioned>>> {
            self.0.get_many(t, k).await
        }
        async fn versions(&self, t: &str, k: &[String]) -> StorageResult<Vec<u64>> {
            self.0.versions(t, k).await
        }
        async fn set(&self, t: &str, k: &str, v: Value, e: Option<u64>) -> StorageResult<WriteOutcome> {
            self.0.set(t, k, v, e).await
        }
        async fn set_many(&self, t: &str, p: Vec<(String, Value)>) -> StorageResult<Vec<WriteOutcome>> {
            self.0.set_many(t, p).await
        }
        async fn delete(&self, t: &str, k: &str, e: Option<u64>) -> StorageResult<WriteOutcome> {
            self.0.delete(t, k, e).await
        }
        async fn delete_many(&self, t: &str, k: &[String]) -> StorageResult<Vec<WriteOutcome>> {
            self.0.delete_many(t, k).await
        }
        async fn scan(&self, t: &str, after: Option<&str>) -> StorageResult<FailAfterFirstPage> {
            Ok(FailAfterFirstPage(self.0.scan(t, after).await?, false))
        }
    }

    #[tokio::test]
    async fn a_storage_failure_mid_scan_ends_the_reply_with_a_500_frame() {
        let config = ServiceConfig { response_frame_target: 1024, ..ServiceConfig::default() };
        let service = Service::new(FailingScans(MemoryStore::new()), config, 1 << 20);
        let pairs = (0..500).map(|i| crate::pb::Kvpair::new(format!("key-{i}"), i as i64));
        service.execute(CommandRequest::hmset("t", pairs), &Caller::default()).await;

        let Reply::Stream(stream) = service.execute(CommandRequest::hgetall("t"), &Caller::default()).await
        else {
            panic!("Hgetall answers with a stream")
        };
        let frames: Vec<CommandResponse> = stream.map(|f| f.into_response().unwrap()).collect().await;
        let (last, before) = frames.split_last().unwrap();
        assert!(!before.is_empty(), "the first page arrived before the failure");
        assert!(before.iter().all(|f| f.more && f.status == status::OK));
        assert_eq!(last.status, status::INTERNAL_ERROR);
        assert!(!last.more, "the error frame ends the reply");
        assert!(last.message.contains("disk on fire"), "{}", last.message);
    }

    /// An answer built whole ahead of its writing (an Hmget over several frames) is charged to the
    /// memory budget until its frames are taken, and a read's is refused (503, nothing changed) when
    /// the budget cannot hold it: a connection's Hmgets, unread, held gigabytes uncharged.
    #[tokio::test]
    async fn an_answer_built_ahead_is_charged_until_its_frames_are_taken() {
        let memory = MemoryBudget::new(1 << 20);
        let service =
            Service::with_memory(MemoryStore::new(), ServiceConfig::default(), 16 << 20, memory.clone());
        let caller = Caller::default();
        service.execute(CommandRequest::hset("t", "k", "x".repeat(100_000)), &caller).await;
        let hmget = |n: usize| CommandRequest::hmget("t", vec!["k"; n]);
        let Reply::Stream(mut frames) = service.execute(hmget(8), &caller).await else {
            panic!("an answer of 800 kB in frames of 64 KiB")
        };
        assert!(memory.used() > 800_000, "charged: {}", memory.used());
        let mut values = 0;
        while let Some(frame) = frames.next().await {
            values += frame.into_response().unwrap().values.len();
            assert!(memory.used() <= 800_000 + 1000 - values * 100_000 + 100_000, "{}", memory.used());
        }
        assert_eq!((values, memory.used()), (8, 0));
        let Reply::One(refused) = service.execute(hmget(11), &caller).await else { panic!("a refusal") };
        assert_eq!(refused.status, status::UNAVAILABLE, "{}", refused.message);
        assert_eq!(memory.used(), 0);
        // A write's answer is sent, charged or not: the write was made.
        let values = (0..11).map(|i| crate::pb::Kvpair::new(format!("k{i}"), "y".repeat(100_000)));
        service.execute(CommandRequest::hmset("t", values.clone()), &caller).await;
        let Reply::Stream(frames) = service.execute(CommandRequest::hmset("t", values), &caller).await else {
            panic!("an answer of 1.1 MB carrying the previous values")
        };
        let frames: Vec<_> = frames.collect().await;
        let previous: usize = frames.into_iter().map(|f| f.into_response().unwrap().values.len()).sum();
        assert_eq!(previous, 11);
    }

    #[test]
    fn requests_declare_their_order_by_what_the_backend_promises() {
        let sequencing = |service: &dyn Fn(&CommandRequest) -> RequestClass, request: CommandRequest| {
            service(&request).sequencing
        };
        let memory = Service::new(MemoryStore::new(), ServiceConfig::default(), 1 << 20);
        let disk = Service::new(crate::storage::DiskStore::temporary(), ServiceConfig::default(), 1 << 20);
        let (memory, disk) = (|r: &CommandRequest| memory.class(r), |r: &CommandRequest| disk.class(r));
        let publish = || CommandRequest::publish("t", [crate::pb::Value::from(1)]);
        // A backend that applies writes in issue order lets writes overlap; a publish never does.
        assert_eq!(sequencing(&disk, CommandRequest::hset("t", "k", 1)), Sequencing::OrderedWrite);
        assert_eq!(sequencing(&memory, CommandRequest::hset("t", "k", 1)), Sequencing::Barrier);
        assert_eq!(sequencing(&disk, publish()), Sequencing::Barrier);
        assert_eq!(sequencing(&memory, publish()), Sequencing::Barrier);
        assert_eq!(sequencing(&disk, CommandRequest::hget("t", "k")), Sequencing::Read);
        // A multi-key write the backend applies in batches, with other requests between them, is a
        // barrier: a later write of one of its keys must not be applied before its last batch.
        let hmset =
            |n: usize| CommandRequest::hmset("t", (0..n).map(|i| crate::pb::Kvpair::new(format!("k{i}"), 1)));
        let hmdel = |n: usize| CommandRequest::hmdel("t", (0..n).map(|i| format!("k{i}")));
        let most = crate::storage::ORDERED_WRITE_KEYS;
        assert_eq!(sequencing(&disk, hmset(most)), Sequencing::OrderedWrite);
        assert_eq!(sequencing(&disk, hmset(most + 1)), Sequencing::Barrier);
        assert_eq!(sequencing(&disk, hmdel(most)), Sequencing::OrderedWrite);
        assert_eq!(sequencing(&disk, hmdel(most + 1)), Sequencing::Barrier);
        assert!(memory(&CommandRequest::hget("t", "k")).replay_safe);
        assert!(!memory(&CommandRequest::hset("t", "k", 1)).replay_safe);
    }

    #[test]
    fn settings_that_cannot_work_together_are_refused() {
        let max_frame = 1 << 20;
        assert!(ServiceConfig::default().validate(max_frame).is_ok());
        for config in [
            ServiceConfig { response_frame_target: 0, ..ServiceConfig::default() },
            ServiceConfig { response_frame_target: max_frame + 1, ..ServiceConfig::default() },
            ServiceConfig { max_concurrent_scans: 0, ..ServiceConfig::default() },
            ServiceConfig { subscriber_queue: 0, ..ServiceConfig::default() },
        ] {
            assert!(config.validate(max_frame).is_err(), "{config:?}");
        }
    }
}
