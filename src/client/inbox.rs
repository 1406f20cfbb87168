//! A subscription's inbox: its frames read off its stream as they arrive into a bounded queue.
//!
//! A subscription's stream may share its connection's flow-control window with every call on that
//! connection: a QUIC connection's (`connection_receive_window`), or an HTTP/2 connection's (REST's
//! event streams, gRPC's calls and pipelines; hyper's client gives each stream up to 2 MiB of the
//! connection's 5 MiB). Left unread on the stream, a subscription whose subscriber is not reading
//! fills its share of that window, and once the shares fill the window no answer to any call can
//! arrive. So the stream is always read, into a queue bounded in messages and bytes
//! ([`SubscriptionQueue`]); messages that
//! arrive while it is full are counted and reported as [`Event::Missed`](super::Event::Missed), as the
//! server's `skip` lag policy reports those its own queue had no room for. The last frame (why the
//! subscription ended) and a failure are always kept.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use tokio_util::task::AbortOnDropHandle;

use super::ClientResult;
use crate::pb::{CommandResponse, status};

/// How much of a subscription the client holds that its subscriber has not read yet. An empty queue
/// takes a message of any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionQueue {
    /// Messages held at most.
    pub messages: usize,
    /// Bytes of messages held at most (as encoded on the wire).
    pub bytes: usize,
}

impl Default for SubscriptionQueue {
    /// The server's default queue length (`--subscriber-queue`), and a quarter of its byte bound: a
    /// client holds the queues of all its subscriptions.
    fn default() -> Self {
        SubscriptionQueue { messages: 1024, bytes: 4 << 20 }
    }
}

/// The frames of one subscription (`S`, which ends with the subscription's last frame or a failure),
/// read by a task of their own. Dropping it stops the task and drops the stream (a QUIC stream's
/// STOP_SENDING 0x12, an HTTP/2 stream's RST_STREAM): the server removes the subscription.
pub(super) struct Inbox<S> {
    queue: Arc<Mutex<Queue>>,
    /// Gives the stream back once it has read the last frame.
    reader: AbortOnDropHandle<S>,
}

#[derive(Default)]
struct Queue {
    /// Frames not yet read by the subscriber: messages, "missed" frames, and the last frame or the
    /// failure that ended the stream.
    frames: VecDeque<ClientResult<CommandResponse>>,
    /// The messages in `frames`, and their encoded bytes.
    messages: usize,
    bytes: usize,
    /// Messages not delivered (dropped here for want of room, or reported missed by the server) and
    /// not yet reported.
    missed: u64,
    /// The reader has read the last frame, or failed.
    finished: bool,
    waker: Option<Waker>,
}

impl Queue {
    fn has_room(&self, limits: &SubscriptionQueue, len: usize) -> bool {
        self.messages == 0 || (self.messages < limits.messages && self.bytes + len <= limits.bytes)
    }

    /// Queues `frame`, after a "missed" frame for what was dropped before it.
    fn push(&mut self, frame: ClientResult<CommandResponse>) {
        if self.missed > 0 {
            self.frames.push_back(Ok(missed(std::mem::take(&mut self.missed))));
        }
        self.frames.push_back(frame);
    }
}

/// A "missed" frame, as the server sends it.
fn missed(count: u64) -> CommandResponse {
    CommandResponse { status: status::OK, more: true, missed: count, ..Default::default() }
}

impl<S: Stream<Item = ClientResult<CommandResponse>> + Send + Unpin + 'static> Inbox<S> {
    /// Starts reading `frames` (a subscription's, its first frame already read) into a queue bounded
    /// by `limits`.
    pub(super) fn start(mut frames: S, limits: SubscriptionQueue) -> Self {
        let queue = Arc::new(Mutex::new(Queue::default()));
        let shared = queue.clone();
        let reader = tokio::spawn(async move {
            loop {
                let frame = frames.next().await;
                let mut queue = shared.lock();
                match frame {
                    Some(Ok(frame)) if frame.more && frame.missed > 0 => {
                        queue.missed = queue.missed.saturating_add(frame.missed)
                    }
                    Some(Ok(frame)) if frame.more => {
                        let len = frame.encoded_len();
                        if queue.has_room(&limits, len) {
                            queue.messages += 1;
                            queue.bytes += len;
                            queue.push(Ok(frame));
                        } else {
                            queue.missed = queue.missed.saturating_add(1);
                        }
                    }
                    Some(last) => {
                        queue.push(last);
                        queue.finished = true;
                    }
                    None => queue.finished = true,
                }
                if let Some(waker) = queue.waker.take() {
                    waker.wake();
                }
                if queue.finished {
                    return frames;
                }
            }
        });
        Inbox { queue, reader: AbortOnDropHandle::new(reader) }
    }

    /// The stream, once its reader has read the subscription's last frame (or failed): what follows
    /// on it, such as the answer to an Unsubscribe sent on the same stream. `None` if the reader
    /// panicked.
    pub(super) async fn rest(&mut self) -> Option<S> {
        (&mut self.reader).await.ok()
    }
}

impl<S> Inbox<S> {
    /// The next frame; `None` once the last one has been read.
    pub(super) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientResult<CommandResponse>>> {
        let mut queue = self.queue.lock();
        if let Some(frame) = queue.frames.pop_front() {
            if let Ok(frame) = &frame
                && frame.more
                && frame.missed == 0
            {
                queue.messages = queue.messages.saturating_sub(1);
                queue.bytes = queue.bytes.saturating_sub(frame.encoded_len());
            }
            return Poll::Ready(Some(frame));
        }
        if queue.missed > 0 {
            return Poll::Ready(Some(Ok(missed(std::mem::take(&mut queue.missed)))));
        }
        if queue.finished {
            return Poll::Ready(None);
        }
        queue.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
