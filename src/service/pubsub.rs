//! Subscribe, Unsubscribe and Publish, on the [`Broker`]. A subscription is answered as a reply that
//! does not end until the subscription does (docs/PROTOCOL.md, section 6.1):
//!
//! 1. a first frame with the subscription id (`values = [integer id]`),
//! 2. a frame per message published to the topic, its data in `values`, and a "missed" frame
//!    (`missed = n`, no values) where the subscriber's queue overflowed,
//! 3. a last frame (`more = false`) whose status says why it ended.
//!
//! All but the last have `more = true`, so the transports carry it like any multi-frame reply.

use std::sync::Arc;

use futures_util::StreamExt;
use prost::Message as _;
use prost::encoding::encoded_len_varint;

use super::{Caller, Reply, ServiceError};
use crate::pb::{CommandResponse, Publish, Subscribe, Unsubscribe, Value, status};
use crate::pubsub::{Broker, Delivery, EndReason, Subscription, UnsubscribeError};

pub fn subscribe(broker: &Broker, cmd: Subscribe, caller: &Caller) -> Reply {
    let subscription = match broker.subscribe(&cmd.topic, caller.connection) {
        Ok(subscription) => subscription,
        Err(closed) => return CommandResponse::error(status::UNAVAILABLE, closed.to_string()).into(),
    };
    let first = CommandResponse {
        more: true,
        ..CommandResponse::with_values(vec![Value::from(i64::from(subscription.id()))], Vec::new())
    };
    Reply::Stream(Box::pin(futures_util::stream::once(std::future::ready(first)).chain(frames(subscription))))
}

/// A frame for every delivery of `subscription`, the last one saying why it ended.
fn frames(subscription: Subscription) -> impl futures_util::Stream<Item = CommandResponse> {
    subscription.map(|delivery| match delivery {
        Delivery::Message(message) => {
            CommandResponse { more: true, ..CommandResponse::with_values(message.to_vec(), Vec::new()) }
        }
        Delivery::Missed(missed) => CommandResponse { more: true, missed, ..CommandResponse::ok() },
        Delivery::Ended(reason) => ended(reason),
    })
}

fn ended(reason: EndReason) -> CommandResponse {
    match reason {
        EndReason::Unsubscribed => {
            CommandResponse { message: "unsubscribed".into(), ..CommandResponse::ok() }
        }
        EndReason::ConnectionEnding => CommandResponse {
            message: "the connection is ending: the client closed its side, or the server is closing it after a bad request or a failure".into(),
            ..CommandResponse::ok()
        },
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

pub fn unsubscribe(
    broker: &Broker,
    cmd: Unsubscribe,
    caller: &Caller,
) -> Result<CommandResponse, ServiceError> {
    broker.unsubscribe(&cmd.topic, cmd.id, caller.connection)?;
    Ok(CommandResponse::ok())
}

/// Publishes to every current subscriber; answers `[receivers, lagging]`: how many it was queued for,
/// and how many did not get it because their queues were full.
pub fn publish(broker: &Broker, max_entry_len: usize, cmd: Publish) -> Result<CommandResponse, ServiceError> {
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
    let published = broker.publish(&cmd.topic, Arc::from(cmd.data));
    let count = |n: usize| Value::from(i64::try_from(n).unwrap_or(i64::MAX));
    Ok(CommandResponse::with_values(vec![count(published.receivers), count(published.lagging)], Vec::new()))
}

impl From<UnsubscribeError> for ServiceError {
    fn from(e: UnsubscribeError) -> Self {
        match e {
            UnsubscribeError::NotFound { .. } => ServiceError::NoSubscription(e.to_string()),
            UnsubscribeError::NotOwner(_) => ServiceError::NotOwner(e.to_string()),
        }
    }
}
