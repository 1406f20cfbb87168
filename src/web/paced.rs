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
//! budget until its last piece is handed on, or it is abandoned, and counts in its connection's share
//! for answers meanwhile (`Pacing::share`: while such frames fill it, the connection's next requests
//! wait to run).
//!
//! A client that stops reading, or reads a trickle (less than `--reply-min-progress` in
//! `--reply-timeout`), loses its answer, as a long answer of any other transport is abandoned. On
//! HTTP/1.1, whose answers go one at a time, the connection's writes time out (web::Connection wraps
//! its socket in `transport::timeouts::StallTimeout`, as the TCP transport does its own), which
//! closes it. On HTTP/2 the connection goes on for its other streams, and progress is what a stream
//! takes: a watchdog has the rest of a frame dropped (and the stream reset if its client ever reads
//! on) when the stream took too little of it. hyper does not poll a body while it waits for the
//! client, so a body cannot fail itself on time: the watchdog is a task, one per frame larger than a
//! piece, ending as soon as that frame has been handed on.
//!
//! A request counts as open (the connection's idle timer, `web::Activity`) until its answer's end has
//! been handed on or the answer is abandoned, not until hyper drops the body; and not while the answer
//! waits for hyper to ask for a frame, which it does once the client has room (the answer made, or a
//! frame handed on: [`OpenRequest::waiting`]). An HTTP/2 client that grants no window would otherwise
//! keep its connection from ever being idle (it answers keep-alive PINGs), with whatever its streams
//! hold.

use std::pin::Pin;
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
use crate::transport::exchange::{AnswerShare, HeldAnswer};

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
    /// Watch each frame larger than a piece for its stream's progress (HTTP/2; an HTTP/1.1
    /// connection's writes time out instead).
    pub watch: bool,
    /// The connection's share for answers (`--max-request-buffer`): a frame larger than a piece
    /// counts in it, as it is charged, until its last piece is handed on.
    pub share: Arc<AnswerShare>,
}

/// The rest of a data frame larger than a piece.
struct Held {
    rest: Bytes,
    /// The whole frame, whose allocation `rest` keeps; `None` when the budget could not hold it (it is
    /// sent all the same: the answer was made, a write's included, and its headers have gone).
    _charge: Option<Charge>,
    /// The whole frame, counted in the connection's share.
    _share: Option<HeldAnswer<Arc<AnswerShare>>>,
    /// The bytes handed on so far.
    handed: u64,
    /// The client made too little progress: `rest` was dropped.
    abandoned: bool,
    /// Ends the watchdog, if the frame has one, when it has been handed on (or the answer dropped).
    _handed_on: Option<DropGuard>,
}

/// An answer's body, its data frames larger than a piece handed on a piece at a time ([`Pacing`]),
/// which keeps its request open (for the connection's idle timer) until its end is handed on or it is
/// abandoned, but for while it waits for hyper to ask for a frame (see the module documentation).
pub struct Paced {
    /// Shared with the watchdog, which drops it when the answer is abandoned: what the answer has yet
    /// to produce (a long answer's frames, charged, or a listing's next page) goes too.
    body: Arc<Mutex<Body>>,
    pacing: Pacing,
    held: Option<Arc<Mutex<Held>>>,
    open: Arc<Mutex<Option<OpenRequest>>>,
}

impl Paced {
    /// `body`, whose request is `open`: made, the answer waits for hyper to ask for its first frame
    /// (which it does once the client has room for it).
    pub fn new(body: Body, pacing: Pacing, mut open: OpenRequest) -> Self {
        open.waiting(true);
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
        // Asked for more: the answer is the server's to make again.
        this.waiting(false);
        let polled = this.poll_paced(cx);
        match &polled {
            // The answer's next frame is the server's to make.
            Poll::Pending => {}
            // Handed on: hyper asks for the next once its client has read on.
            Poll::Ready(Some(Ok(_))) if !this.is_end_stream() => this.waiting(true),
            Poll::Ready(_) => drop(this.open.lock().take()),
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
    fn waiting(&self, waiting: bool) {
        if let Some(open) = self.open.lock().as_mut() {
            open.waiting(waiting);
        }
    }

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
        let share = HeldAnswer::new(self.pacing.share.clone(), rest.len());
        let piece = take_piece(&mut rest, self.pacing.piece);
        let handed_on = self.pacing.watch.then(CancellationToken::new);
        let held = Arc::new(Mutex::new(Held {
            rest,
            _charge: charge,
            _share: Some(share),
            handed: piece.len() as u64,
            abandoned: false,
            _handed_on: handed_on.as_ref().map(|token| token.clone().drop_guard()),
        }));
        if let Some(handed_on) = handed_on {
            let answer = Answer { body: Arc::downgrade(&self.body), open: self.open.clone() };
            watch(Arc::downgrade(&held), handed_on, answer, self.pacing.clone());
        }
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
/// the rest of its answer, and lets its request count as closed. Ends as soon as `handed_on` is
/// cancelled (the frame is handed on, or the answer dropped).
fn watch(held: Weak<Mutex<Held>>, handed_on: CancellationToken, answer: Answer, pacing: Pacing) {
    // Progress: the bytes handed on to the stream, a piece at a time (a client reading exactly the
    // minimum may fall a piece short of it in a window).
    let needed = pacing.min_progress.saturating_sub(pacing.piece).max(1) as u64;
    let Some(mut mark) = held.upgrade().map(|state| (Instant::now(), state.lock().handed)) else {
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
            if state.handed.saturating_sub(mark.1) >= needed {
                mark = (Instant::now(), state.handed);
                continue;
            }
            // Handed on in full meanwhile: nothing to abandon.
            if state.rest.is_empty() {
                return;
            }
            state.rest = Bytes::new();
            state._charge = None;
            state._share = None;
            state.abandoned = true;
            drop(state);
            crate::metrics::limit_hit(crate::metrics::Limit::ReplyTimeout);
            if let Some(body) = answer.body.upgrade() {
                let rest_of_answer = std::mem::replace(&mut *body.lock(), Body::empty());
                drop(rest_of_answer);
            }
            drop(answer.open.lock().take());
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

    /// Pieces of 1 KiB, charged to a budget of 1 GiB, within a reply timeout of 30 s, watched as an
    /// HTTP/2 stream's are.
    fn pacing(min_progress: usize) -> Pacing {
        Pacing {
            memory: MemoryBudget::new(1 << 30),
            piece: PIECE,
            stall: STALL,
            min_progress,
            watch: true,
            share: Arc::new(AnswerShare::new(usize::MAX)),
        }
    }

    /// A 1 MiB answer paced in pieces of 1 KiB, its first piece taken; the budget it is charged to,
    /// the connection's count of requests open, and the answer's frame.
    async fn answer(pacing: Pacing) -> (Paced, MemoryBudget, Activity, Bytes) {
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

    /// Over HTTP/2 progress is what the stream takes (h2 takes the next piece once its queue has
    /// room, as the client reads): the minimum progress in every reply timeout keeps the answer, a
    /// trickle (a piece at a time) has it abandoned, and the watchdog closes nothing (the
    /// connection's other streams go on).
    #[tokio::test(start_paused = true)]
    async fn an_http_2_answer_lasts_while_its_stream_takes_the_minimum_progress() {
        let (mut body, memory, activity, _) = answer(pacing(MIN_PROGRESS)).await;
        for _ in 0..5 {
            tokio::time::sleep(STALL * 2 / 3).await;
            for _ in 0..MIN_PROGRESS / PIECE {
                assert_eq!(piece(&mut body).await, Some(PIECE));
            }
        }
        assert!(memory.used() > 0, "the minimum progress keeps the answer");
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
        let (mut body, _, _, frame) = answer(pacing(MIN_PROGRESS)).await;
        let held = body.frame().await;
        tokio::time::sleep(STALL * 2).await;
        assert!(body.frame().await.is_some_and(|frame| frame.is_err()), "abandoned");
        assert!(frame.is_unique(), "the frame is freed but for the test's own reference");
        drop(held);
    }

    /// `--reply-min-progress 0` does not turn the rule off: a stream that takes nothing is cut.
    #[tokio::test(start_paused = true)]
    async fn a_minimum_progress_of_nothing_still_cuts_a_client_that_reads_nothing() {
        let (mut body, memory, _, _) = answer(pacing(0)).await;
        tokio::time::sleep(STALL * 2).await;
        assert_eq!(memory.used(), 0);
        assert!(body.frame().await.is_some_and(|frame| frame.is_err()));
    }

    /// On HTTP/1.1 the connection's writes time out instead (`StallTimeout`): no watchdog abandons
    /// the answer, which stays charged for as long as its connection lives.
    #[tokio::test(start_paused = true)]
    async fn an_http_1_1_answer_is_left_to_its_connection() {
        let (mut body, memory, _, _) = answer(Pacing { watch: false, ..pacing(MIN_PROGRESS) }).await;
        tokio::time::sleep(STALL * 4).await;
        assert_eq!(memory.used(), 1 << 20);
        assert_eq!(piece(&mut body).await, Some(PIECE));
        drop(body);
        assert_eq!(memory.used(), 0, "given back with the answer");
    }

    /// A request whose answer was handed on, and not yet asked for its next frame, waits for its
    /// client: it does not keep the connection from being idle. Asked for more, it is open again.
    #[tokio::test]
    async fn a_request_whose_answer_waits_for_its_client_does_not_count_as_open() {
        let activity = Activity::new();
        let (frames, mut events) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
        let events = futures_util::stream::poll_fn(move |cx| events.poll_recv(cx));
        let mut body = Paced::new(Body::from_stream(events), pacing(MIN_PROGRESS), activity.open());
        let poll = |body: &mut Paced| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            Pin::new(body).poll_frame(&mut cx).map(|frame| frame.map(|frame| frame.is_ok()))
        };
        assert_eq!(open_requests(&activity), 0, "made, the answer waits for hyper to ask for it");
        assert_eq!(poll(&mut body), Poll::Pending);
        assert_eq!(open_requests(&activity), 1, "waiting for its next event, the request is open");
        frames.send(Ok(Bytes::from("event"))).unwrap();
        assert_eq!(poll(&mut body), Poll::Ready(Some(true)));
        assert_eq!(open_requests(&activity), 0, "handed on, the answer waits for the client");
        assert_eq!(poll(&mut body), Poll::Pending);
        assert_eq!(open_requests(&activity), 1, "asked for more");
        drop(frames);
        assert_eq!(poll(&mut body), Poll::Ready(None));
        assert_eq!(open_requests(&activity), 0, "ended");
        drop(body);
        assert_eq!(open_requests(&activity), 0, "counted closed once");
    }

    /// Abandoning an answer drops what it has yet to produce too (a long answer's next frames, a
    /// listing's next page), not only the frame it was sending.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_answer_drops_its_next_frames() {
        let next = Bytes::from(vec![2u8; 1 << 20]);
        let frames = vec![Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 1 << 20])), Ok(next.clone())];
        let body = Body::from_stream(futures_util::stream::iter(frames));
        let mut body = Paced::new(body, pacing(MIN_PROGRESS), Activity::new().open());
        assert_eq!(piece(&mut body).await, Some(PIECE));
        assert!(!next.is_unique(), "the answer holds its next frame");
        tokio::time::sleep(STALL * 2).await;
        assert!(next.is_unique(), "abandoned, it holds it no more");
        assert!(body.frame().await.is_some_and(|frame| frame.is_err()));
    }

    /// An answer counts as closed once its end is handed on, though hyper still holds it (waiting
    /// for a client that grants no window), and once only.
    #[tokio::test]
    async fn an_answer_counts_as_closed_once_its_end_is_handed_on() {
        let activity = Activity::new();
        let other = activity.open();
        let mut body = Paced::new(Body::from("not found"), pacing(MIN_PROGRESS), activity.open());
        assert_eq!(piece(&mut body).await, Some(9));
        assert_eq!(piece(&mut body).await, None);
        drop(body);
        assert_eq!(open_requests(&activity), 1, "the other request is still open");
        drop(other);
    }
}
