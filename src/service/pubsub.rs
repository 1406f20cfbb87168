//! Subscribe, Unsubscribe and Publish, on the [`Broker`]. A subscription is answered as a reply that
//! does not end until the subscription does (docs/PROTOCOL.md, section 6.1):
//!
//! 1. a first frame with the subscription id (`values = [integer id]`),
//! 2. a frame per message published to the topic, its data in `values`, and a "missed" frame
//!    (`missed = n`, no values) where the subscriber's queue overflowed,
//! 3. a last frame (`more = false`) whose status says why it ended.
//!
//! All but the last have `more = true`, so the transports carry it like any multi-frame reply.

use futures_util::StreamExt;
use prost::Message as _;
use prost::encoding::encoded_len_varint;

use super::{Caller, Reply, ReplyFrame, ReplyStream, ServiceError};
use crate::pb::{CommandResponse, Publish, Subscribe, Unsubscribe, Value, status};
use crate::pubsub::{
    Broker, ConnectionEnd, Delivery, EndReason, PublishError, Relay, SubscribeError, Subscription,
    UnsubscribeError,
};

/// Subscribes; with a relay, the subscription is confirmed only once this server receives the topic's
/// messages from every gateway.
pub fn subscribe(broker: &Broker, relay: Option<&dyn Relay>, cmd: Subscribe, caller: &Caller) -> Reply {
    let subscription = match broker.subscribe(&cmd.topic, caller.connection, caller.max_subscriptions) {
        Ok(subscription) => subscription,
        Err(e @ SubscribeError::Closed) => {
            return CommandResponse::error(status::UNAVAILABLE, e.to_string()).into();
        }
        Err(e @ SubscribeError::TooMany { .. }) => {
            crate::metrics::limit_hit(crate::metrics::Limit::SubscriptionsPerConnection);
            return CommandResponse::error(status::TOO_MANY_REQUESTS, e.to_string()).into();
        }
    };
    let first = CommandResponse {
        more: true,
        ..CommandResponse::with_values(vec![Value::from(i64::from(subscription.id()))], Vec::new())
    };
    let Some(relay) = relay else {
        let first = futures_util::stream::once(std::future::ready(ReplyFrame::from(first)));
        return Reply::Stream(ReplyStream::new(first.chain(frames(subscription))));
    };
    let joined = relay.join(cmd.topic);
    let stream = futures_util::stream::once(async move {
        match joined.await {
            Ok(()) => futures_util::stream::once(std::future::ready(ReplyFrame::from(first)))
                .chain(frames(subscription))
                .boxed(),
            Err(reason) => {
                let error = CommandResponse::error(
                    status::UNAVAILABLE,
                    format!("cannot subscribe: the other gateways' messages cannot be received ({reason})"),
                );
                futures_util::stream::once(std::future::ready(ReplyFrame::from(error))).boxed()
            }
        }
    })
    .flatten();
    Reply::Stream(ReplyStream::new(stream))
}

/// A frame for every delivery of `subscription`, the last one saying why it ended. A message is sent as
/// the publish encoded it, once for every subscriber.
fn frames(subscription: Subscription) -> impl futures_util::Stream<Item = ReplyFrame> {
    subscription.map(|delivery| match delivery {
        Delivery::Message(encoded) => ReplyFrame::Encoded(encoded),
        Delivery::Missed(missed) => CommandResponse { more: true, missed, ..CommandResponse::ok() }.into(),
        Delivery::Ended(reason) => ended(reason).into(),
    })
}

fn ended(reason: EndReason) -> CommandResponse {
    match reason {
        EndReason::Unsubscribed => {
            CommandResponse { message: "unsubscribed".into(), ..CommandResponse::ok() }
        }
        EndReason::ConnectionEnding(why) => CommandResponse {
            message: format!("the connection is ending: {}", connection_end(why)),
            ..CommandResponse::ok()
        },
        EndReason::Stalled => CommandResponse::error(
            status::TOO_MANY_REQUESTS,
            "ended: the requests sent after this subscription on its connection reached the connection's limits (--max-concurrent-requests, --max-request-buffer) and their answers wait behind it, so the server could read nothing more, not even an Unsubscribe; their answers follow. Give a subscription a connection of its own",
        ),
        EndReason::Lagged => CommandResponse::error(
            status::TOO_MANY_REQUESTS,
            "dropped: this subscriber did not keep up, its queue was full, and the server's lag policy drops such subscribers",
        ),
        EndReason::ServerClosing => CommandResponse::error(
            status::GONE,
            "the server is shutting down and ended the subscription; subscribe again when it is back",
        ),
    }
}

fn connection_end(why: ConnectionEnd) -> &'static str {
    match why {
        ConnectionEnd::ClosedWithRequestBehind => {
            "the client closed its sending side with a request sent after this subscription, which is answered once it ends"
        }
        ConnectionEnd::Idle => {
            "its client closed its sending side, and nothing was sent to this subscriber for the idle timeout (--idle-timeout); subscribe again on a connection left open both ways to keep a quiet subscription"
        }
        ConnectionEnd::BadRequest => {
            "the server closes it after a request it cannot read past, whose answer follows"
        }
        ConnectionEnd::NoMemory => "the server had no memory for more of its requests",
        ConnectionEnd::StreamEnded => "the stream that carried it ended",
    }
}

pub fn unsubscribe(
    broker: &Broker,
    cmd: Unsubscribe,
    caller: &Caller,
) -> Result<CommandResponse, ServiceError> {
    broker.unsubscribe(&cmd.topic, cmd.id, caller.connection)?;
    Ok(CommandResponse::ok())
}

/// Publishes to every current subscriber; answers `[receivers, lagging]`: how many it was queued for,
/// and how many did not get it because their queues were full. The message frame is encoded here, once:
/// every subscriber is sent the same bytes.
///
/// With a relay, the message goes to every gateway through it, this one included (so that all see one
/// order), and the answer is `[gateways, 0]`: how many gateways had subscribers for it; their
/// subscribers' queues are not counted.
pub async fn publish(
    broker: &Broker,
    relay: Option<&dyn Relay>,
    max_entry_len: usize,
    cmd: Publish,
) -> Result<CommandResponse, ServiceError> {
    // Every subscriber receives the data in one frame.
    let len: usize = cmd
        .data
        .iter()
        .map(|value| {
            let value_len = value.encoded_len();
            1 + encoded_len_varint(value_len as u64) + value_len
        })
        .sum();
    if len > max_entry_len {
        return Err(ServiceError::TooLarge(format!(
            "a message of {len} bytes cannot be delivered in one frame; the most that fits is {max_entry_len} bytes"
        )));
    }
    let frame = CommandResponse { more: true, ..CommandResponse::with_values(cmd.data, Vec::new()) };
    let count = |n: usize| Value::from(i64::try_from(n).unwrap_or(i64::MAX));
    if let Some(relay) = relay {
        let gateways = relay.publish(cmd.topic, frame.encode_to_vec()).await?;
        return Ok(CommandResponse::with_values(vec![count(gateways), count(0)], Vec::new()));
    }
    let published = broker.publish(&cmd.topic, frame.encode_to_vec()).await?;
    Ok(CommandResponse::with_values(vec![count(published.receivers), count(published.lagging)], Vec::new()))
}

impl From<PublishError> for ServiceError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::MemoryExhausted { .. } => {
                crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
                ServiceError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<UnsubscribeError> for ServiceError {
    fn from(e: UnsubscribeError) -> Self {
        match e {
            UnsubscribeError::NotFound { .. } => ServiceError::NoSubscription(e.to_string()),
            UnsubscribeError::NotOwner(_) => ServiceError::NotOwner(e.to_string()),
        }
    }
}
