//! Answers sent a piece at a time, charged and timed while they wait for their client.
//!
//! hyper hands a body's data frame to the connection whole: an answer of a 16 MiB value, or a gRPC
//! `Execute`'s message, would sit in HTTP/2's send queue (or HTTP/1.1's) until the client's window let
//! it out, uncharged, for as long as the client liked. [`Paced`] gives hyper a large frame a piece at
//! a time. hyper takes pieces while the stream's send queue has room (HTTP/2: under what a stream may
//! queue, with one more piece waiting in hyper; HTTP/1.1: its write buffer), so pieces of a third of
//! what a stream may queue keep what hyper and h2 hold within the share each stream is charged when
//! its connection is admitted. What is still to be sent is charged to the connection memory budget
//! meanwhile. A client that makes no progress for `--reply-timeout` has the rest dropped and the answer
//! fails, as a long answer of any other transport is abandoned: progress is a piece taken, or on
//! HTTP/1.1 (one answer at a time, whose progress is the connection's) `--reply-min-progress` bytes
//! sent. Then HTTP/1.1's connection is closed, as TCP's is; an HTTP/2 stream is reset if its client
//! ever reads on, and meanwhile no longer counts as a request open, so a connection with nothing else
//! open is closed after the idle timeout. hyper does not poll a body while it waits for the client,
//! so a body cannot fail itself on time: a watchdog task does it, one per frame larger than a piece,
//! ending as soon as that frame has been handed on.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::OpenRequest;
use crate::memory::{Charge, MemoryBudget};
use crate::transport::tcp::ByteCounts;

/// How a connection's answers are paced.
#[derive(Clone)]
pub struct Pacing {
    pub memory: MemoryBudget,
    /// The most of an answer handed to hyper at once.
    pub piece: usize,
    /// How long an answer may wait for its client to make progress (`--reply-timeout`).
    pub stall: Duration,
    /// What progress is on HTTP/1.1: this many bytes sent (`--reply-min-progress`).
    pub min_progress: usize,
    /// HTTP/1.1's connection, for requests that came on one.
    pub http1: Option<Http1>,
}

/// An HTTP/1.1 connection, as its answers' pacing sees it.
#[derive(Clone)]
pub struct Http1 {
    /// The bytes it has sent.
    pub bytes: Arc<ByteCounts>,
    /// Cancelled when an answer is abandoned, to close the connection: its answers go one after
    /// the other, so nothing more can be sent on it.
    pub close: CancellationToken,
}

/// The rest of a data frame larger than a piece.
struct Held {
    rest: Bytes,
    /// What `rest` is charged; `None` when the budget could not hold it (it is sent all the same: the
    /// answer was made, a write's included, and its headers have gone).
    charge: Option<Charge>,
    /// When the last piece was taken.
    taken: Instant,
    /// The client made no progress for the reply timeout: `rest` was dropped.
    abandoned: bool,
    /// Ends the watchdog when the frame has been handed on (or the answer dropped).
    _handed_on: DropGuard,
}

pin_project_lite::pin_project! {
    /// An answer's body, its data frames larger than a piece handed on a piece at a time
    /// ([`Pacing`]), which keeps its request open (for the connection's idle timer) until it is
    /// dropped or abandoned.
    pub struct Paced {
        #[pin]
        body: Body,
        pacing: Pacing,
        held: Option<Arc<Mutex<Held>>>,
        open: Arc<Mutex<Option<OpenRequest>>>,
    }
}

impl Paced {
    pub fn new(body: Body, pacing: Pacing, open: OpenRequest) -> Self {
        Paced { body, pacing, held: None, open: Arc::new(Mutex::new(Some(open))) }
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
        let handed_on = CancellationToken::new();
        let held = Arc::new(Mutex::new(Held {
            rest: data,
            charge,
            taken: Instant::now(),
            abandoned: false,
            _handed_on: handed_on.clone().drop_guard(),
        }));
        watch(Arc::downgrade(&held), handed_on, this.open.clone(), this.pacing.clone());
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

/// Drops what `held` has left once its client has made no progress for the reply timeout, lets its
/// request count as closed, and closes an HTTP/1.1 connection; ends as soon as `handed_on` is
/// cancelled (the frame is sent, or the answer dropped).
fn watch(
    held: Weak<Mutex<Held>>,
    handed_on: CancellationToken,
    open: Arc<Mutex<Option<OpenRequest>>>,
    pacing: Pacing,
) {
    let http1 = pacing.http1.clone();
    let sent = move || http1.as_ref().map(|http1| http1.bytes.sent.load(Ordering::Relaxed));
    tokio::spawn(async move {
        // Progress on HTTP/1.1 counted in bytes: when it was last seen, and the bytes sent then.
        let mut progress = (Instant::now(), sent());
        loop {
            let Some(taken) = held.upgrade().map(|held| held.lock().taken) else { return };
            let due = taken.max(progress.0) + pacing.stall;
            tokio::select! {
                _ = handed_on.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            let Some(held) = held.upgrade() else { return };
            let mut state = held.lock();
            let now = Instant::now();
            if now < state.taken.max(progress.0) + pacing.stall {
                continue;
            }
            let bytes = sent();
            if let (Some(now_sent), Some(then)) = (bytes, progress.1)
                && now_sent.saturating_sub(then) >= pacing.min_progress as u64
            {
                progress = (now, bytes);
                continue;
            }
            state.rest = Bytes::new();
            state.charge = None;
            state.abandoned = true;
            drop(state);
            crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
            drop(open.lock().take());
            if let Some(http1) = &pacing.http1 {
                http1.close.cancel();
            }
            return;
        }
    });
}
