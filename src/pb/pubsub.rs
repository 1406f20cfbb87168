//! What the protocol says of publish/subscribe beyond its messages, shared by the server's broker and
//! the client.

/// A subscription's id, as Subscribe answers it and Unsubscribe names it (a `uint32` on the wire).
pub type SubscriptionId = u32;

/// What a publish did: `Publish`'s answer, `values = [receivers, lagging]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// Subscribers the message was queued for.
    pub receivers: usize,
    /// Subscribers whose queue was full, so that they missed it (or, with the `drop` lag policy, were
    /// dropped): a count of subscribers, not of messages.
    pub lagging: usize,
}
