//! Precise send times for open loops, without spinning.
//!
//! tokio's timers fire on millisecond ticks, so a request woken by one goes out up to a millisecond
//! after it was due, and an open loop counts that lateness in its latency: more than a loopback round
//! trip. Spinning until the instant (yielding to the runtime in between) was precise, but it kept the
//! load generator's core busy in proportion to the rate, and with many connections it starved the
//! runtime: at 10,000 requests/s over 10,000 QUIC connections p99 went from 3 ms to hundreds.
//!
//! A [`Pacer`] is one thread that sleeps on a precise timeout (a futex wait, which the kernel times with
//! a high-resolution timer; the thread's timer slack is lowered to 1 µs) until the earliest instant a
//! task waits for, then wakes that task. A task first waits on tokio's timer until [`LEAD`] before its
//! instant and only then asks the pacer, so the pacer's list holds the next millisecond or two of the
//! schedule, not all of it. Each open-loop connection has a [`Timer`] of its own, which keeps its one
//! entry in that list while the loop's `select!` drops and remakes the future that waits on it.
//!
//! A request's latency counts from its release by the pacer: the wake-up of the pacer's thread (tens of
//! µs on a VM) is the load generator's, not the server's; see [`Timer::until`] and [`EARLY`].

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;

use futures_util::task::AtomicWaker;
use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::time::{Duration, Instant};

/// How long before its instant a task hands its wait from tokio's timer to the pacer: more than
/// tokio's timer can be late by (a millisecond tick, and a busy runtime), so the pacer still has time.
const LEAD: Duration = Duration::from_millis(2);

/// How far ahead of its instant the pacer may release a request: about what waking a sleeping thread
/// takes on this project's VMs (45–50 µs measured), so sleeping for less would be late anyway. The
/// pacer releases everything due within it at each wake-up, and a task due within it does not wait.
/// Latency counts from the release, so going out early makes it no shorter; the schedule stays even
/// to within this, and its rate exact.
const EARLY: Duration = Duration::from_micros(50);

/// The pacer thread, or none: then timers are tokio's alone (for tests on tokio's paused clock, where
/// they are exact and a thread on the real clock would be wrong).
pub struct Pacer {
    thread: Option<(Arc<Shared>, JoinHandle<()>)>,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

struct Queue {
    due: BinaryHeap<Entry>,
    /// What the pacer thread is doing, so that a new entry wakes it only when it must.
    pacer: Pacing,
}

#[derive(Clone, Copy, PartialEq)]
enum Pacing {
    /// Releasing entries; it looks at the heap again before it sleeps.
    Awake,
    /// Sleeping until this instant, its earliest entry's.
    Until(std::time::Instant),
    /// Sleeping until an entry comes.
    Idle,
    Stopped,
}

/// An instant some timer waits for; the heap's top is the earliest.
struct Entry {
    at: std::time::Instant,
    slot: Arc<Slot>,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

/// One timer's state, shared with the pacer's entry for it.
#[derive(Default)]
struct Slot {
    waker: AtomicWaker,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The instant this timer's entry in the pacer is for, if it has one.
    entered: Option<std::time::Instant>,
    /// When the pacer released that entry, once it has.
    released: Option<std::time::Instant>,
}

impl Pacer {
    /// A pacer thread; if the thread cannot be started, tokio's timers alone (and a warning).
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { due: BinaryHeap::new(), pacer: Pacing::Awake }),
            changed: Condvar::new(),
        });
        let run = Arc::clone(&shared);
        match std::thread::Builder::new().name("qkv-pacer".into()).spawn(move || run.run()) {
            Ok(handle) => Pacer { thread: Some((shared, handle)) },
            Err(error) => {
                tracing::warn!(%error, "no pacer thread: open-loop requests may go out up to 1 ms late");
                Pacer::tokio()
            }
        }
    }

    /// tokio's timers alone: exact on tokio's paused clock, up to a millisecond late on the real one.
    pub fn tokio() -> Self {
        Pacer { thread: None }
    }

    /// A timer for one task (an open-loop connection).
    pub fn timer(&self) -> Timer {
        Timer { shared: self.thread.as_ref().map(|(shared, _)| Arc::clone(shared)), slot: Arc::default() }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        if let Some((shared, handle)) = self.thread.take() {
            shared.queue.lock().pacer = Pacing::Stopped;
            shared.changed.notify_one();
            // It is waiting on the condition variable, or about to look at its state: it returns at once.
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn run(&self) {
        lower_timer_slack();
        let mut queue = self.queue.lock();
        let mut released = Vec::new();
        while queue.pacer != Pacing::Stopped {
            let now = std::time::Instant::now();
            while queue.due.peek().is_some_and(|entry| entry.at <= now + EARLY) {
                released.extend(queue.due.pop());
            }
            if !released.is_empty() {
                MutexGuard::unlocked(&mut queue, || {
                    for Entry { at, slot } in released.drain(..) {
                        let mut state = slot.state.lock();
                        if state.entered == Some(at) {
                            state.released = Some(now);
                        }
                        drop(state);
                        slot.waker.wake();
                    }
                });
                continue;
            }
            match queue.due.peek().map(|entry| entry.at) {
                Some(at) => {
                    queue.pacer = Pacing::Until(at);
                    self.changed.wait_until(&mut queue, at.checked_sub(EARLY).unwrap_or(at));
                }
                None => {
                    queue.pacer = Pacing::Idle;
                    self.changed.wait(&mut queue);
                }
            }
            if queue.pacer != Pacing::Stopped {
                queue.pacer = Pacing::Awake;
            }
        }
    }

    /// Enters `slot` for `at`; false if the pacer has stopped.
    fn enter(&self, at: std::time::Instant, slot: &Arc<Slot>) -> bool {
        let mut queue = self.queue.lock();
        let wake = match queue.pacer {
            Pacing::Stopped => return false,
            Pacing::Awake => false,
            Pacing::Until(until) => at < until,
            Pacing::Idle => true,
        };
        queue.due.push(Entry { at, slot: Arc::clone(slot) });
        if wake {
            queue.pacer = Pacing::Awake; // one wake-up is enough
            drop(queue);
            self.changed.notify_one();
        }
        true
    }
}

/// The kernel may delay a thread's timed wait by its timer slack (50 µs by default) to group wake-ups;
/// the pacer's are what it is for.
fn lower_timer_slack() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000)) {
        tracing::debug!(%error, "the pacer keeps the default timer slack");
    }
}

/// One task's way to wait for instants, precisely.
pub struct Timer {
    shared: Option<Arc<Shared>>,
    slot: Arc<Slot>,
}

impl Timer {
    /// Waits until `due` (less [`EARLY`] at most) and returns the instant the request counts as sent
    /// from: when the pacer released it, which is a little after `due` when the pacer thread woke late
    /// (the load generator's lateness, not the server's; waking a sleeping thread takes 45–50 µs on
    /// this project's VMs, where the host must wake an idle vCPU) and up to [`EARLY`] before it; or
    /// `due` itself if the task got here late on its own (a busy runtime: that lateness counts, as a
    /// server that keeps the load generator busy causes it). On tokio's timers alone, `due`.
    pub async fn until(&self, due: Instant) -> Instant {
        let Some(shared) = &self.shared else {
            tokio::time::sleep_until(due).await;
            return due;
        };
        if let Some(early) = due.checked_sub(LEAD)
            && early > Instant::now()
        {
            tokio::time::sleep_until(early).await;
        }
        let at = due.into_std();
        let mut coarse = false;
        let released = poll_fn(|cx| {
            let mut state = self.slot.state.lock();
            if state.entered == Some(at)
                && let Some(released) = state.released
            {
                return Poll::Ready(Instant::from_std(released));
            }
            let now = std::time::Instant::now();
            if now >= at {
                return Poll::Ready(due);
            }
            if now + EARLY >= at {
                return Poll::Ready(Instant::from_std(now));
            }
            self.slot.waker.register(cx.waker());
            if state.entered != Some(at) {
                *state = SlotState { entered: Some(at), released: None };
                drop(state);
                coarse = !shared.enter(at, &self.slot);
            }
            if coarse { Poll::Ready(due) } else { Poll::Pending }
        })
        .await;
        if coarse {
            tokio::time::sleep_until(due).await;
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_timer_releases_no_earlier_than_its_instant_less_the_margin() {
        let pacer = Pacer::start();
        let start = Instant::now();
        // Out of order, some within the pacer's lead and some beyond it.
        let waits = [2_500u64, 300, 1_200, 50, 4_000, 700].map(|us| {
            let timer = pacer.timer();
            let due = start + Duration::from_micros(us);
            async move {
                let released = timer.until(due).await;
                let now = Instant::now();
                assert!(released + EARLY >= due, "the {us} µs timer released {:?} early", due - released);
                assert!(released <= now, "the {us} µs timer returned before it was released");
            }
        });
        within_a_while(futures_util::future::join_all(waits)).await;
    }

    #[tokio::test]
    async fn a_timer_whose_wait_is_dropped_and_remade_still_returns() {
        let pacer = Pacer::start();
        let timer = pacer.timer();
        let due = Instant::now() + Duration::from_millis(1);
        // Polled once (entered with the pacer, as it is within the lead) and dropped, as the open
        // loop's select! does when an answer comes first: the next wait for the instant reuses the entry.
        let _ = timer.until(due).now_or_never();
        let released = within_a_while(timer.until(due)).await;
        assert!(released + EARLY >= due);
    }

    async fn within_a_while<T>(future: impl Future<Output = T>) -> T {
        match tokio::time::timeout(Duration::from_secs(10), future).await {
            Ok(output) => output,
            Err(_) => panic!("a timer never returned"),
        }
    }

    #[tokio::test]
    async fn timers_outliving_their_pacer_fall_back_to_tokio() {
        let pacer = Pacer::start();
        let timer = pacer.timer();
        drop(pacer);
        let due = Instant::now() + Duration::from_micros(200);
        assert_eq!(within_a_while(timer.until(due)).await, due);
        assert!(Instant::now() >= due);
    }
}
