//! Answers sent a piece at a time, charged and timed while they wait for their client.
//!
//! hyper hands a body's data frame to the connection whole: an answer of a 16 MiB value, or a gRPC
//! `Execute`'s message, would sit in HTTP/2's send queue (or HTTP/1.1's) until the client's window let
//! it out, uncharged, for as long as the client liked. [`Paced`] gives hyper a larger frame a piece at
//! a time, each piece a copy (a slice would keep the whole frame's allocation alive for as long as
//! hyper or h2 holds it). hyper takes pieces while the stream's send queue has room (HTTP/2: h2 takes
//! one more while its queue is not full, and hyper holds one more while it waits; HTTP/1.1: its write
//! buffer), so pieces of a fifth of what a stream may queue keep what they hold within the share each
//! stream is charged when its connection is admitted. The frame is charged to the connection memory
//! budget until its last piece is handed on, or it is abandoned.
//!
//! A client that makes too little progress for `--reply-timeout` (`--reply-min-progress` bytes: on
//! HTTP/1.1, whose answers go one at a time, sent on the connection; on HTTP/2 handed on to the
//! stream, which takes more only as its client reads) has the rest dropped and the answer fails, as a
//! long answer of any other transport is abandoned. Then HTTP/1.1's connection is closed, as TCP's is;
//! an HTTP/2 stream is reset if its client ever reads on. hyper does not poll a body while it waits
//! for the client, so a body cannot fail itself on time: a watchdog task does it, one per frame larger
//! than a piece, ending as soon as that frame has been handed on.
//!
//! A request counts as open (the connection's idle timer, `web::Activity`) until its answer's end has
//! been handed on or the answer is abandoned, not until hyper drops the body: an HTTP/2 client that
//! grants no window would otherwise keep its connection from ever being idle (it answers keep-alive
//! PINGs), with whatever its streams hold.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, Bytes};
use hyper::body::{Body as _, Frame, SizeHint};
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
    /// What progress is: this many bytes (`--reply-min-progress`, at least 1).
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
    /// The whole frame, whose allocation `rest` keeps; `None` when the budget could not hold it (it is
    /// sent all the same: the answer was made, a write's included, and its headers have gone).
    _charge: Option<Charge>,
    /// The bytes handed on so far.
    handed: u64,
    /// The client made too little progress: `rest` was dropped.
    abandoned: bool,
    /// Ends the watchdog when the frame has been handed on (or the answer dropped).
    _handed_on: DropGuard,
}

/// An answer's body, its data frames larger than a piece handed on a piece at a time ([`Pacing`]),
/// which keeps its request open (for the connection's idle timer) until its end is handed on or it is
/// abandoned.
pub struct Paced {
    /// Shared with the watchdog, which drops it when the answer is abandoned: what the answer has yet
    /// to produce (a long answer's frames, charged, or a listing's next page) goes too.
    body: Arc<Mutex<Body>>,
    pacing: Pacing,
    held: Option<Arc<Mutex<Held>>>,
    open: Arc<Mutex<Option<OpenRequest>>>,
}

impl Paced {
    pub fn new(body: Body, pacing: Pacing, open: OpenRequest) -> Self {
        Paced { body: Arc::new(Mutex::new(body)), pacing, held: None, open: Arc::new(Mutex::new(Some(open))) }
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
        // Unpin: nothing in it is pinned.
        let this = self.get_mut();
        let polled = this.poll_paced(cx);
        if polled.is_ready() && this.is_end_stream() {
            drop(this.open.lock().take());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.body.lock().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |held| held.lock().rest.len() as u64);
        let inner = self.body.lock().size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

impl Paced {
    fn poll_paced(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(held) = self.held.take() {
            let mut state = held.lock();
            if state.abandoned {
                return Poll::Ready(Some(Err(axum::Error::new(Abandoned(self.pacing.stall)))));
            }
            let piece = take_piece(&mut state.rest, self.pacing.piece);
            state.handed += piece.len() as u64;
            let left = state.rest.len();
            drop(state);
            // The last piece handed on: the frame's charge and allocation go with `held`.
            if left > 0 {
                self.held = Some(held);
            }
            if !piece.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
        }
        let frame = match ready!(Pin::new(&mut *self.body.lock()).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => return Poll::Ready(other),
        };
        let mut rest = match frame.into_data() {
            Ok(data) if data.len() > self.pacing.piece => data,
            Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        let charge = self.pacing.memory.try_charge(rest.len());
        if charge.is_none() {
            crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
        }
        let piece = take_piece(&mut rest, self.pacing.piece);
        let handed_on = CancellationToken::new();
        let held = Arc::new(Mutex::new(Held {
            rest,
            _charge: charge,
            handed: piece.len() as u64,
            abandoned: false,
            _handed_on: handed_on.clone().drop_guard(),
        }));
        let answer = Answer { body: Arc::downgrade(&self.body), open: self.open.clone() };
        watch(Arc::downgrade(&held), handed_on, answer, self.pacing.clone());
        self.held = Some(held);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }
}

/// A copy of the first `size` bytes of `rest` (at most), which it no longer holds.
fn take_piece(rest: &mut Bytes, size: usize) -> Bytes {
    let piece = Bytes::copy_from_slice(&rest[..rest.len().min(size)]);
    rest.advance(piece.len());
    piece
}

/// What the watchdog of an answer's frame drops when it abandons the answer.
struct Answer {
    /// The body, which the watchdog must not keep alive.
    body: Weak<Mutex<Body>>,
    open: Arc<Mutex<Option<OpenRequest>>>,
}

/// Drops what `held` has left once its client has made too little progress for the reply timeout, and
/// the rest of its answer; lets its request count as closed, and closes an HTTP/1.1 connection. Ends
/// as soon as `handed_on` is cancelled (the frame is handed on, or the answer dropped).
fn watch(held: Weak<Mutex<Held>>, handed_on: CancellationToken, answer: Answer, pacing: Pacing) {
    // Progress in bytes: sent on an HTTP/1.1 connection, handed on to an HTTP/2 stream (a piece at a
    // time: a client reading exactly the minimum may fall a piece short of it in a window).
    let http1 = pacing.http1.clone();
    let needed = match &http1 {
        Some(_) => pacing.min_progress.max(1),
        None => pacing.min_progress.saturating_sub(pacing.piece).max(1),
    } as u64;
    let progress = move |held: &Held| match &http1 {
        Some(http1) => http1.bytes.sent.load(Ordering::Relaxed),
        None => held.handed,
    };
    let Some(mut mark) = held.upgrade().map(|state| (Instant::now(), progress(&state.lock()))) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = handed_on.cancelled() => return,
                _ = tokio::time::sleep_until(mark.0 + pacing.stall) => {}
            }
            let Some(held) = held.upgrade() else { return };
            let mut state = held.lock();
            let now = progress(&state);
            if now.saturating_sub(mark.1) >= needed {
                mark = (Instant::now(), now);
                continue;
            }
            // Handed on in full meanwhile: nothing to abandon.
            if state.rest.is_empty() {
                return;
            }
            state.rest = Bytes::new();
            state._charge = None;
            state.abandoned = true;
            drop(state);
            crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
            if let Some(body) = answer.body.upgrade() {
                let rest_of_answer = std::mem::replace(&mut *body.lock(), Body::empty());
                drop(rest_of_answer);
            }
            drop(answer.open.lock().take());
            if let Some(http1) = &pacing.http1 {
                http1.close.cancel();
            }
            return;
        }
    });
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::web::Activity;

    const MIN_PROGRESS: usize = 16 * 1024;
    const STALL: Duration = Duration::from_secs(30);
    const PIECE: usize = 1024;

    /// Pieces of 1 KiB, charged to a budget of 1 GiB, within a reply timeout of 30 s.
    fn pacing(min_progress: usize, http1: Option<Http1>) -> Pacing {
        Pacing { memory: MemoryBudget::new(1 << 30), piece: PIECE, stall: STALL, min_progress, http1 }
    }

    /// A 1 MiB answer paced in pieces of 1 KiB, its first piece taken; the budget it is charged to,
    /// the connection's count of requests open, and the answer's frame.
    async fn answer(http1: Option<Http1>) -> (Paced, MemoryBudget, Activity, Bytes) {
        let pacing = pacing(MIN_PROGRESS, http1);
        let memory = pacing.memory.clone();
        let activity = Activity::new();
        let frame = Bytes::from(vec![1u8; 1 << 20]);
        let mut body = Paced::new(Body::from(frame.clone()), pacing, activity.open());
        assert_eq!(piece(&mut body).await, Some(PIECE));
        assert_eq!(memory.used(), 1 << 20, "the frame is charged while its pieces wait");
        (body, memory, activity, frame)
    }

    /// The length of the next piece, if the next frame is data.
    async fn piece(body: &mut Paced) -> Option<usize> {
        body.frame().await.and_then(|frame| frame.ok()?.into_data().ok()).map(|piece| piece.len())
    }

    fn open_requests(activity: &Activity) -> usize {
        activity.0.lock().0
    }

    /// On HTTP/1.1 hyper takes no piece while it flushes its write buffer: a client that reads the
    /// minimum progress in every reply timeout keeps its answer all the same, one that stops has it
    /// abandoned: the rest dropped and given back, the connection closed, the request no longer open.
    #[tokio::test(start_paused = true)]
    async fn an_http_1_1_answer_lasts_while_its_client_reads_the_minimum_progress() {
        let bytes = Arc::new(ByteCounts::default());
        let close = CancellationToken::new();
        let http1 = Http1 { bytes: bytes.clone(), close: close.clone() };
        let (mut body, memory, activity, _) = answer(Some(http1)).await;
        for _ in 0..10 {
            tokio::time::sleep(STALL * 2 / 3).await;
            bytes.sent.fetch_add(MIN_PROGRESS as u64, Ordering::Relaxed);
        }
        assert!(!close.is_cancelled(), "a client reading the minimum progress is not cut");
        assert_eq!(open_requests(&activity), 1);
        tokio::time::sleep(STALL * 2).await;
        assert!(close.is_cancelled(), "a client that stopped reading is cut");
        assert_eq!(memory.used(), 0, "what was left is given back");
        assert_eq!(open_requests(&activity), 0, "the request no longer counts as open");
        assert!(body.frame().await.is_some_and(|frame| frame.is_err()), "the answer fails");
    }

    /// Over HTTP/2 progress is what the stream takes (h2 takes the next piece once its queue has
    /// room, as the client reads): the minimum progress in every reply timeout keeps the answer, a
    /// trickle (a piece at a time) has it abandoned, and the watchdog closes nothing (the
    /// connection's other streams go on).
    #[tokio::test(start_paused = true)]
    async fn an_http_2_answer_lasts_while_its_stream_takes_the_minimum_progress() {
        let (mut body, memory, activity, _) = answer(None).await;
        for _ in 0..5 {
            tokio::time::sleep(STALL * 2 / 3).await;
            for _ in 0..MIN_PROGRESS / PIECE {
                assert_eq!(piece(&mut body).await, Some(PIECE));
            }
        }
        assert_eq!(open_requests(&activity), 1, "the minimum progress keeps the answer");
        let mut trickled = 0;
        while piece(&mut body).await == Some(PIECE) {
            trickled += 1;
            assert!(trickled < 10, "a trickle is abandoned");
            tokio::time::sleep(STALL * 2 / 3).await;
        }
        assert_eq!(memory.used(), 0, "abandoned, what was left is given back");
        assert_eq!(open_requests(&activity), 0);
    }

    /// The pieces are copies: once the answer is abandoned, the pieces hyper and h2 may still hold
    /// do not keep the whole frame's allocation (which the budget no longer counts) alive.
    #[tokio::test(start_paused = true)]
    async fn pieces_held_after_an_answer_is_abandoned_keep_nothing_else_alive() {
        let (mut body, _, _, frame) = answer(None).await;
        let held = body.frame().await;
        tokio::time::sleep(STALL * 2).await;
        assert!(body.frame().await.is_some_and(|frame| frame.is_err()), "abandoned");
        assert!(frame.is_unique(), "the frame is freed but for the test's own reference");
        drop(held);
    }

    /// `--reply-min-progress 0` does not turn the rule off: a client that reads nothing is cut.
    #[tokio::test(start_paused = true)]
    async fn a_minimum_progress_of_nothing_still_cuts_a_client_that_reads_nothing() {
        let close = CancellationToken::new();
        let http1 = Http1 { bytes: Arc::new(ByteCounts::default()), close: close.clone() };
        let mut body =
            Paced::new(Body::from(vec![1u8; 1 << 20]), pacing(0, Some(http1)), Activity::new().open());
        assert_eq!(piece(&mut body).await, Some(PIECE));
        tokio::time::sleep(STALL * 2).await;
        assert!(close.is_cancelled());
    }

    /// Abandoning an answer drops what it has yet to produce too (a long answer's next frames, a
    /// listing's next page), not only the frame it was sending.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_answer_drops_its_next_frames() {
        let next = Bytes::from(vec![2u8; 1 << 20]);
        let frames = vec![Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 1 << 20])), Ok(next.clone())];
        let body = Body::from_stream(futures_util::stream::iter(frames));
        let mut body = Paced::new(body, pacing(MIN_PROGRESS, None), Activity::new().open());
        assert_eq!(piece(&mut body).await, Some(PIECE));
        assert!(!next.is_unique(), "the answer holds its next frame");
        tokio::time::sleep(STALL * 2).await;
        assert!(next.is_unique(), "abandoned, it holds it no more");
        assert!(body.frame().await.is_some_and(|frame| frame.is_err()));
    }

    /// An answer of small frames counts as closed once its end is handed on, though hyper still
    /// holds it (waiting for a client that grants no window).
    #[tokio::test]
    async fn a_small_answer_counts_as_closed_once_its_end_is_handed_on() {
        let activity = Activity::new();
        let mut body = Paced::new(Body::from("not found"), pacing(MIN_PROGRESS, None), activity.open());
        assert_eq!(open_requests(&activity), 1);
        assert_eq!(piece(&mut body).await, Some(9));
        assert_eq!(open_requests(&activity), 0);
    }
}
