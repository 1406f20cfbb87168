//! Subscriptions: [`Client::subscribe`] returns a [`Subscription`], a `Stream` of what is published to
//! the topic, and [`Client::publish`] publishes.
//!
//! Over QUIC a subscription is one more stream on the client's connection: subscriptions are cheap,
//! and they survive a change of network with the connection. Over HTTP/2 (REST, gRPC, gRPC
//! pipelines) it is one more stream on the client's HTTP/2 connection. Either way the client reads
//! that stream as frames arrive, into a queue of the subscription's own ([`SubscriptionQueue`]), so
//! that a subscriber that does not read cannot stall the calls that share the connection's
//! flow-control window; what arrives while the queue is full is reported as [`Event::Missed`]. Over
//! TCP and TLS its answer would hold up every answer after it on a shared connection (answers come in
//! request order), so each subscription has a connection of its own, and the subscriber reads at its
//! own pace: the server's flow control holds back what it has not read. Either way the server's lag
//! policy decides what happens when its queue there fills (docs/PROTOCOL.md, section 6.1).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::SubscriptionQueue;
use super::error::Cause;
use super::inbox::Inbox;
use super::tcp::{ByteStream, Closing, open_stream};
use super::{Client, ClientError, ClientResult, Connection, ResponseFrames, ok, quic};
use crate::pb::{CommandRequest, CommandResponse, Value, status, value};
use crate::pb::{Published, SubscriptionId};
use crate::transport::Transport;
use crate::transport::frame::{CLOSING_SUFFIX, FrameCodec, FrameError, encode_frame};

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message published to the topic: the values of its Publish.
    Message(Vec<Value>),
    /// This many messages were published but not delivered here, because this subscriber's queue on
    /// the server, or its queue in the client ([`SubscriptionQueue`]), was full (it read too
    /// slowly). The next message follows them.
    Missed(u64),
}

/// A subscription to a topic: a `Stream` of [`Event`]s in publish order. It ends (`None`) when it is
/// unsubscribed; it fails with [`ClientError::SubscriptionEnded`] when the server ends it (status 429:
/// dropped for lagging; 410: the server is shutting down; 408: it read nothing for the server's reply
/// timeout) and with a connection error when the connection is lost. Dropping it unsubscribes: the
/// server removes it at once.
pub struct Subscription {
    id: SubscriptionId,
    topic: String,
    channel: Channel,
    /// The subscription's last frame has been read, or reading failed.
    ended: bool,
    request_timeout: Duration,
    max_frame_len: usize,
    /// The client's [`Client::close`]: the subscription ends with [`ClientError::Closed`].
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Given back once the subscription has ended, or when it is dropped.
    slot: Option<SubscriptionSlot>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .field("id", &self.id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// One of the subscriptions a client may hold ([`ClientConfig::max_subscriptions`](super::ClientConfig)),
/// given back when the subscription ends or is dropped.
struct SubscriptionSlot(Arc<AtomicUsize>);

impl SubscriptionSlot {
    fn take(held: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(SubscriptionSlot(held.clone()))
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Channel {
    /// The subscription's stream on the client's QUIC connection, and the connection: an Unsubscribe
    /// must come from it.
    Quic { frames: Frames<ResponseFrames>, connection: quic::QuicConnection },
    /// A byte stream of the subscription's own, which its Unsubscribe is sent on: a TCP or TLS
    /// connection, or a gRPC pipeline call on the client's HTTP/2 connection.
    Tcp { frames: Frames<OwnFrames>, requests: WriteHalf<Box<dyn ByteStream>> },
    /// A stream of the shared HTTP/2 connection (gRPC's ExecuteStream, REST's event stream), and the
    /// connection (an Unsubscribe must come from it). Dropping the stream ends the subscription.
    #[cfg(feature = "web-client")]
    Web { frames: Frames<ResponseFrames>, connection: super::web::WebConnection },
    /// Let go when the client was closed: its stream or connection is gone, and the server told.
    Ended,
}

/// A subscription's frames: read from its stream as its subscriber reads them (until its first frame
/// has been read, or without a [`SubscriptionQueue`]), or read as they arrive into a queue in the
/// client ([`Inbox`]). (Boxed: a QUIC stream's reader is large beside the other variants.)
enum Frames<S> {
    Direct(Box<S>),
    Queued(Inbox<S>),
}

impl<S: Stream<Item = ClientResult<CommandResponse>> + Send + Unpin + 'static> Frames<S> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientResult<CommandResponse>>> {
        match self {
            Frames::Direct(frames) => frames.poll_next_unpin(cx),
            Frames::Queued(inbox) => inbox.poll_frame(cx),
        }
    }

    /// The frames read into a queue bounded by `limits`, if given.
    fn queued(self, limits: Option<SubscriptionQueue>) -> Self {
        match (self, limits) {
            (Frames::Direct(frames), Some(limits)) => Frames::Queued(Inbox::start(*frames, limits)),
            (frames, _) => frames,
        }
    }
}

/// A byte stream of the subscription's own, read as frames: its end is a lost connection (a
/// subscription's last frame, or the answer to its Unsubscribe, comes before it).
struct OwnFrames(FramedRead<ReadHalf<Box<dyn ByteStream>>, FrameCodec<CommandResponse>>);

impl Stream for OwnFrames {
    type Item = ClientResult<CommandResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(Some(match ready!(self.0.poll_next_unpin(cx)) {
            // The stream is the connection: its failure is the connection's.
            Some(Err(FrameError::Io(e))) if ClientError::certificate_alert(&e).is_none() => {
                Err(ClientError::ConnectionLost(e.into()))
            }
            Some(frame) => frame.map_err(ClientError::from_frame),
            None => Err(ClientError::ConnectionLost(Cause::ServerClosed)),
        }))
    }
}

impl Client {
    /// Subscribes to `topic`. Returns once the server has registered the subscription: every message
    /// published after that is delivered (or reported missed).
    pub async fn subscribe(&self, topic: &str) -> ClientResult<Subscription> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.request_timeout;
        let mut attempt = 1;
        loop {
            let subscribed = tokio::time::timeout_at(deadline, self.subscribe_once(topic))
                .await
                .unwrap_or_else(|_| Err(ClientError::Timeout(config.request_timeout)));
            if let Err(e) = &subscribed {
                self.forget_tickets_if_refused(e);
            }
            match subscribed {
                // A failed attempt left nothing behind: its subscription ended with its stream.
                Err(e) if attempt < config.retry.attempts && e.may_retry(true) => {
                    attempt += 1;
                    self.inner.stats.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(error = %e, attempt, "subscribing again");
                    // After a pause, as a call refused for now waits: a server short of connections
                    // or memory (a subscription over TCP is a connection of its own, which the
                    // reconnection's backoff does not pace) got every attempt at once.
                    tokio::time::sleep_until((Instant::now() + self.pause_before(attempt)).min(deadline))
                        .await;
                    if Instant::now() >= deadline {
                        // Out of time for another: what this attempt found, not a bare timeout.
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    async fn subscribe_once(&self, topic: &str) -> ClientResult<Subscription> {
        let config = &self.inner.config;
        if self.inner.closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        let Some(slot) = SubscriptionSlot::take(&self.inner.subscriptions, config.max_subscriptions) else {
            return Err(ClientError::TooManySubscriptions { limit: config.max_subscriptions });
        };
        let max_frame_len = config.limits.max_frame_len;
        let frame = encode_frame(&CommandRequest::subscribe(topic), max_frame_len)
            .map_err(ClientError::from_encode)?;
        let mut channel = match config.transport {
            Transport::Quic => {
                let Connection::Quic(connection) = self.connection().await? else {
                    return Err(ClientError::Protocol("a QUIC client holds a TCP connection".into()));
                };
                let frames = Frames::Direct(Box::new(connection.send(frame, max_frame_len).await?));
                Channel::Quic { frames, connection }
            }
            // A byte stream of its own: over TCP and TLS a connection, made directly (the shared one is
            // not needed, nor connected); over gRPC a call on the client's HTTP/2 connection.
            Transport::Tls | Transport::Tcp | Transport::GrpcPipeline => {
                let inner = &self.inner;
                let stream = match config.transport {
                    // A call of its own on the client's HTTP/2 connection.
                    #[cfg(feature = "web-client")]
                    Transport::GrpcPipeline => {
                        let opener = match self.connection().await? {
                            Connection::Tcp(connection) => connection.opener(),
                            _ => None,
                        };
                        let Some(open) = opener else {
                            return Err(ClientError::Protocol(
                                "a gRPC client holds another connection".into(),
                            ));
                        };
                        open().await?
                    }
                    #[cfg(not(feature = "web-client"))]
                    Transport::GrpcPipeline => {
                        return Err(ClientError::Unsupported(
                            "the web transports need the crate's `web-client` feature",
                        ));
                    }
                    _ => {
                        let (name, remote, stats) = (&inner.server_name, inner.remote, &inner.stats);
                        open_stream(config, inner.tls.clone(), name, remote, stats, Closing::Reset).await?
                    }
                };
                let (read, mut requests) = tokio::io::split(stream);
                let not_sent = |e: std::io::Error| ClientError::NotSent { cause: e.into() };
                requests.write_all(&frame).await.map_err(not_sent)?;
                requests.flush().await.map_err(not_sent)?;
                let frames = OwnFrames(FramedRead::new(read, FrameCodec::new(max_frame_len)));
                Channel::Tcp { frames: Frames::Direct(Box::new(frames)), requests }
            }
            #[cfg(feature = "web-client")]
            Transport::Http | Transport::Grpc => {
                let Connection::Web(connection) = self.connection().await? else {
                    return Err(ClientError::Protocol("a web client holds another connection".into()));
                };
                let request = CommandRequest::subscribe(topic);
                let frames =
                    Frames::Direct(Box::new(connection.send(&request, config.request_timeout).await?));
                Channel::Web { frames, connection }
            }
            #[cfg(not(feature = "web-client"))]
            Transport::Http | Transport::Grpc => {
                return Err(ClientError::Unsupported(
                    "the web transports need the crate's `web-client` feature",
                ));
            }
        };
        let first = match channel.next_frame().await {
            Some(frame) => frame?,
            None => return Err(ClientError::Protocol("the subscription was answered with nothing".into())),
        };
        if !first.more {
            // Over TLS a connection of its own: its refusal of a resumed session's certificate comes
            // as this frame (docs/PROTOCOL.md, section 8), not through the shared connection's reader.
            if first.status == crate::pb::status::FORBIDDEN && first.message.ends_with(CLOSING_SUFFIX) {
                return Err(ClientError::ClientCertificateRefused { cause: Cause::Refused(first.message) });
            }
            ok(first)?;
            return Err(ClientError::Protocol("the subscription ended in its first frame".into()));
        }
        let id = match first.values.first().and_then(|v| v.value.as_ref()) {
            Some(value::Value::Integer(id)) => SubscriptionId::try_from(*id)
                .map_err(|_| ClientError::Protocol(format!("subscription id {id} out of range")))?,
            other => return Err(ClientError::Protocol(format!("Subscribe answered an id of {other:?}"))),
        };
        // A subscription that shares its connection's flow-control window with the client's calls
        // (QUIC's, HTTP/2's) is read as it arrives; a connection of its own (TCP, TLS) is left to the
        // server's flow control and lag policy.
        if self.inner.closed.is_cancelled() {
            // Closed while it subscribed: it goes with the rest.
            return Err(ClientError::Closed);
        }
        let queue = config.subscription_queue;
        let channel = match channel {
            Channel::Quic { frames, connection } => {
                Channel::Quic { frames: frames.queued(queue), connection }
            }
            Channel::Tcp { frames, requests } if config.transport == Transport::GrpcPipeline => {
                Channel::Tcp { frames: frames.queued(queue), requests }
            }
            #[cfg(feature = "web-client")]
            Channel::Web { frames, connection } => Channel::Web { frames: frames.queued(queue), connection },
            channel => channel,
        };
        Ok(Subscription {
            id,
            topic: topic.to_owned(),
            channel,
            ended: false,
            request_timeout: config.request_timeout,
            max_frame_len,
            closed: Box::pin(self.inner.closed.clone().cancelled_owned()),
            slot: Some(slot),
        })
    }

    /// Publishes `data` to `topic`: every current subscriber gets it (or is told it missed it).
    pub async fn publish(
        &self,
        topic: &str,
        data: impl IntoIterator<Item = Value>,
    ) -> ClientResult<Published> {
        let response = ok(self.call(&CommandRequest::publish(topic, data)).await?)?;
        let count = |i: usize| match response.values.get(i).and_then(|v| v.value.as_ref()) {
            Some(value::Value::Integer(n)) => {
                usize::try_from(*n).map_err(|_| ClientError::Protocol(format!("a count of {n}")))
            }
            other => Err(ClientError::Protocol(format!("Publish answered a count of {other:?}"))),
        };
        Ok(Published { receivers: count(0)?, lagging: count(1)? })
    }
}

impl Channel {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientResult<CommandResponse>>> {
        match self {
            Channel::Quic { frames, .. } => frames.poll_frame(cx),
            Channel::Tcp { frames, .. } => frames.poll_frame(cx),
            #[cfg(feature = "web-client")]
            Channel::Web { frames, .. } => frames.poll_frame(cx),
            Channel::Ended => Poll::Ready(None),
        }
    }

    async fn next_frame(&mut self) -> Option<ClientResult<CommandResponse>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }
}

impl Subscription {
    /// The id the server gave the subscription.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Ends the subscription and waits until the server has confirmed it. Events not yet read are
    /// discarded. A subscription the server has already ended (a 429 or 410 read, or about to be) is
    /// simply gone: that is success too.
    pub async fn unsubscribe(mut self) -> ClientResult<()> {
        if self.ended {
            return Ok(());
        }
        let request = CommandRequest::unsubscribe(self.topic.as_str(), self.id);
        let frame = encode_frame(&request, self.max_frame_len).map_err(ClientError::from_encode)?;
        let (max_frame_len, ended) = (self.max_frame_len, self.ended);
        let unsubscribing = async {
            match &mut self.channel {
                Channel::Quic { connection, .. } => {
                    let mut answer = connection.send(frame, max_frame_len).await?;
                    let response = answer.next().await.unwrap_or_else(|| {
                        Err(ClientError::Protocol("Unsubscribe was answered with nothing".into()))
                    })?;
                    ok(response).map(drop)
                }
                Channel::Tcp { frames, requests } => {
                    let failed = |e: std::io::Error| ClientError::ConnectionLost(e.into());
                    requests.write_all(&frame).await.map_err(failed)?;
                    requests.flush().await.map_err(failed)?;
                    // Answers come in order: the subscription's frames up to its last, then this one's.
                    let lost = || ClientError::ConnectionLost(Cause::ServerClosed);
                    let answer = match frames {
                        Frames::Direct(frames) => {
                            let mut subscription_over = ended;
                            loop {
                                let frame = frames.next().await.ok_or_else(lost)??;
                                if subscription_over {
                                    break frame;
                                }
                                subscription_over = !frame.more;
                            }
                        }
                        // Its reader stops after the subscription's last frame.
                        Frames::Queued(inbox) => {
                            let failed = || ClientError::Protocol("the subscription's reader failed".into());
                            let mut frames = inbox.rest().await.ok_or_else(failed)?;
                            frames.next().await.ok_or_else(lost)??
                        }
                    };
                    ok(answer).map(drop)
                }
                Channel::Ended => Ok(()),
                // Over REST the server removes a subscription whose event stream ends; over gRPC it
                // confirms an Unsubscribe from the same connection.
                #[cfg(feature = "web-client")]
                Channel::Web { connection, .. } => {
                    match connection.send(&request, self.request_timeout).await {
                        Err(ClientError::Unsupported(_)) => Ok(()),
                        Ok(mut answer) => {
                            let response = answer.next().await.unwrap_or_else(|| {
                                Err(ClientError::Protocol("Unsubscribe was answered with nothing".into()))
                            })?;
                            ok(response).map(drop)
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, unsubscribing).await {
            Ok(Err(ClientError::Status { status: status::NOT_FOUND, .. })) => Ok(()),
            Ok(Err(e)) if self.gone_with_its_connection(&e) => Ok(()),
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }

    /// Whether `e`, an Unsubscribe's failure, says the subscription's connection is gone (lost, or
    /// closed by the server: shutting down, say): nothing of a subscription outlives its connection,
    /// so the subscription is gone too, as the Unsubscribe wanted.
    fn gone_with_its_connection(&self, e: &ClientError) -> bool {
        match &self.channel {
            // The connection says so itself (lost, closed with `0x1`).
            Channel::Quic { connection, .. } => !connection.is_usable(),
            #[cfg(feature = "web-client")]
            Channel::Web { connection, .. } => !connection.is_usable(),
            // A connection of the subscription's own: lost, or closed by the server's last frame.
            Channel::Tcp { .. } => match e {
                ClientError::ConnectionLost(_) | ClientError::NotSent { .. } => true,
                ClientError::Unavailable { reason } => reason.ends_with(CLOSING_SUFFIX),
                _ => false,
            },
            Channel::Ended => true,
        }
    }

    /// The event a frame carries; `None` for the last frame of a subscription that was unsubscribed.
    fn event(&mut self, frame: CommandResponse) -> Option<ClientResult<Event>> {
        if !frame.more {
            self.ended = true;
            return match frame.status {
                status::OK => None,
                status => Some(Err(ClientError::SubscriptionEnded { status, reason: frame.message })),
            };
        }
        Some(Ok(match frame.missed {
            0 => Event::Message(frame.values),
            missed => Event::Missed(missed),
        }))
    }
}

impl futures_util::Stream for Subscription {
    type Item = ClientResult<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.poll_event(cx);
        if this.ended && this.slot.is_some() {
            // An ended subscription holds nothing more: its stream or connection goes, and a new one
            // may take its place while the subscriber still holds this one (to read why it ended, say).
            (this.slot, this.channel) = (None, Channel::Ended);
        }
        next
    }
}

impl Subscription {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientResult<Event>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.closed.as_mut().poll(cx).is_ready() {
            // Let go of the stream (a TCP connection of its own is reset), so that the server ends
            // the subscription now, not when it is dropped.
            (self.ended, self.channel) = (true, Channel::Ended);
            return Poll::Ready(Some(Err(ClientError::Closed)));
        }
        match ready!(self.channel.poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(self.event(frame)),
            Some(Err(e)) => {
                self.ended = true;
                Poll::Ready(Some(Err(ended_by_server(e))))
            }
            None => {
                self.ended = true;
                Poll::Ready(None)
            }
        }
    }
}

/// `e`, or, for a subscription stream the server reset because its subscriber read none of it for the
/// server's reply timeout (QUIC code 0x13), the end of the subscription it is.
fn ended_by_server(e: ClientError) -> ClientError {
    match e {
        ClientError::Stream(Cause::QuicRead(quinn::ReadError::Reset(code)))
            if code == crate::transport::quic::codes::REPLY_TIMEOUT =>
        {
            ClientError::SubscriptionEnded {
                status: status::REQUEST_TIMEOUT,
                reason: "the subscriber read none of it for the server's reply timeout".into(),
            }
        }
        other => other,
    }
}
