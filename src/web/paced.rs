//! Answers sent a piece at a time, charged and timed while they wait for their client.
//!
//! hyper hands a body's data frame to the connection whole: an answer of a 16 MiB value, or a gRPC
//! `Execute`'s message, would sit in HTTP/2's send queue (or HTTP/1.1's) until the client's window let
//! it out, uncharged, for as long as the client liked. [`Paced`] gives hyper a large frame one piece
//! at a time (what a stream may queue for sending, `stream_send_buffer`): hyper asks for the next
//! piece only once the last has left. What is still to be sent is charged to the connection memory
//! budget meanwhile, and once a piece waits longer than `--reply-timeout` to be taken, the rest is
//! dropped and the answer fails, as a long answer of any other transport is abandoned: HTTP/1.1's
//! connection is closed, as TCP's is; an HTTP/2 stream is reset if its client ever reads on.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::memory::{Charge, MemoryBudget};

/// How a connection's answers are paced.
#[derive(Clone)]
pub struct Pacing {
    pub memory: MemoryBudget,
    /// The most of an answer handed to hyper at once.
    pub piece: usize,
    /// How long a piece may wait for the client (`--reply-timeout`).
    pub stall: Duration,
    /// Cancelled when an answer is abandoned, to close its connection: HTTP/1.1's, whose answers go
    /// one after the other, so that nothing more can be sent on it. (hyper waits for the client before
    /// it polls a body again, so the body's failure alone would never be seen; an HTTP/2 stream whose
    /// client does not read holds one piece, within the connection's share, until the client resets
    /// it or the connection ends.)
    pub close: Option<CancellationToken>,
}

/// The rest of a data frame larger than a piece.
struct Held {
    rest: Bytes,
    /// What `rest` is charged; `None` when the budget could not hold it (it is sent all the same: the
    /// answer was made, a write's included, and its headers have gone).
    charge: Option<Charge>,
    /// When the last piece was taken.
    taken: Instant,
    /// The client took no piece for `stall`: `rest` was dropped.
    abandoned: bool,
}

pin_project_lite::pin_project! {
    /// `body`, its data frames larger than a piece handed on a piece at a time ([`Pacing`]).
    pub struct Paced {
        #[pin]
        body: Body,
        pacing: Pacing,
        held: Option<Arc<Mutex<Held>>>,
    }
}

impl Paced {
    pub fn new(body: Body, pacing: Pacing) -> Self {
        Paced { body, pacing, held: None }
    }
}

/// Why an answer ended unsent.
#[derive(Debug)]
struct Abandoned(Duration);

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client did not read the answer for {:?} (--reply-timeout); it was abandoned", self.0)
    }
}

impl std::error::Error for Abandoned {}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        if let Some(held) = this.held.take() {
            let mut state = held.lock();
            if state.abandoned {
                return Poll::Ready(Some(Err(axum::Error::new(Abandoned(this.pacing.stall)))));
            }
            let size = state.rest.len().min(this.pacing.piece);
            let piece = state.rest.split_to(size);
            state.taken = Instant::now();
            let left = state.rest.len();
            if let Some(charge) = &mut state.charge {
                charge.shrink_to(left);
            }
            drop(state);
            if left > 0 {
                *this.held = Some(held);
            }
            if !piece.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
        }
        let frame = match ready!(this.body.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let mut data = match frame.into_data() {
            Ok(data) if data.len() > this.pacing.piece => data,
            Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        let piece = data.split_to(this.pacing.piece);
        let charge = this.pacing.memory.try_charge(data.len());
        if charge.is_none() {
            crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
        }
        let held = Arc::new(Mutex::new(Held { rest: data, charge, taken: Instant::now(), abandoned: false }));
        watch(Arc::downgrade(&held), this.pacing.stall, this.pacing.close.clone());
        *this.held = Some(held);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |held| held.lock().rest.len() as u64);
        let inner = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// Drops what `held` has left once its client has taken no piece for `stall` (and cancels `close`);
/// ends when the answer is sent or dropped.
fn watch(held: Weak<Mutex<Held>>, stall: Duration, close: Option<CancellationToken>) {
    tokio::spawn(async move {
        loop {
            let Some(due) = held.upgrade().map(|held| held.lock().taken + stall) else { return };
            tokio::time::sleep_until(due).await;
            let Some(held) = held.upgrade() else { return };
            let mut state = held.lock();
            if state.rest.is_empty() {
                return;
            }
            if state.taken.elapsed() >= stall {
                state.rest = Bytes::new();
                state.charge = None;
                state.abandoned = true;
                crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
                if let Some(close) = close {
                    close.cancel();
                }
                return;
            }
        }
    });
}
