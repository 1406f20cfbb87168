//! A future that is polled only once it has asked to be, for a loop that polls the same rarely ready
//! future on every turn: the shutdown signal in each connection's `select!`, whose every poll takes
//! two locks (the cancellation token's and its `Notify`'s), once or twice per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps a future so that, after its first poll, polling it again reaches the future only once the
/// future's own waker has fired; until then a poll takes no lock (it registers the task's waker,
/// without a clone while that waker is unchanged, and swaps a flag). The task polling it is woken as
/// the future's waker would wake it. Like most futures, it must not be polled after it returned
/// `Ready`.
pub struct PolledWhenWoken<F> {
    future: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// The waker the wrapped future sees: it marks the signal woken and wakes the polling task.
    waker: Waker,
}

struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> PolledWhenWoken<F> {
    pub fn new(future: F) -> Self {
        // Woken to begin with: the first poll reaches the future.
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        PolledWhenWoken { future: Box::pin(future), waker: Waker::from(signal.clone()), signal }
    }
}

impl<F: Future> Future for PolledWhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the check: a wake in between finds this task's waker.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.future.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// What a probe future has seen: how often it was polled, and the waker it was last given.
    #[derive(Default)]
    struct Seen {
        polls: usize,
        waker: Option<Waker>,
        ready: bool,
    }

    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ready once its `ready` is set; pending until then.
    struct Probe(Arc<Mutex<Seen>>);

    impl Future for Probe {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut seen = self.0.lock();
            seen.polls += 1;
            seen.waker = Some(cx.waker().clone());
            if seen.ready { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    /// A task's waker that counts its wakes.
    fn counting_waker() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        (wakes.clone(), Waker::from(wakes))
    }

    fn wakes(wakes: &Wakes) -> usize {
        wakes.0.load(Ordering::Relaxed)
    }

    #[test]
    fn polls_the_future_again_only_once_it_has_woken_the_task() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut wrapped = PolledWhenWoken::new(Probe(seen.clone()));
        let (woken, task) = counting_waker();
        let cx = &mut Context::from_waker(&task);
        for _ in 0..10 {
            assert!(Pin::new(&mut wrapped).poll(cx).is_pending());
        }
        assert_eq!(seen.lock().polls, 1, "polled once, then not before it asked to be");

        seen.lock().ready = true;
        assert!(Pin::new(&mut wrapped).poll(cx).is_pending(), "ready, but it has not said so yet");
        let waker = seen.lock().waker.take().unwrap();
        waker.wake();
        assert_eq!(wakes(&woken), 1, "the polling task is woken");
        assert!(Pin::new(&mut wrapped).poll(cx).is_ready());
        assert_eq!(seen.lock().polls, 2);
    }

    #[test]
    fn a_wake_during_the_futures_own_poll_is_not_lost() {
        // Wakes itself on its first poll and is ready on its second (as a future that yields does).
        let mut polls = 0;
        let mut wrapped = PolledWhenWoken::new(std::future::poll_fn(move |cx| {
            polls += 1;
            if polls == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(polls)
        }));
        let (woken, task) = counting_waker();
        let cx = &mut Context::from_waker(&task);
        assert!(Pin::new(&mut wrapped).poll(cx).is_pending());
        assert_eq!(wakes(&woken), 1, "the task is woken to poll again");
        assert_eq!(Pin::new(&mut wrapped).poll(cx), Poll::Ready(2));
    }

    #[test]
    fn the_task_woken_is_the_one_that_polled_last() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut wrapped = PolledWhenWoken::new(Probe(seen.clone()));
        let (first, first_task) = counting_waker();
        let (second, second_task) = counting_waker();
        assert!(Pin::new(&mut wrapped).poll(&mut Context::from_waker(&first_task)).is_pending());
        assert!(Pin::new(&mut wrapped).poll(&mut Context::from_waker(&second_task)).is_pending());
        seen.lock().waker.take().unwrap().wake();
        assert_eq!((wakes(&first), wakes(&second)), (0, 1));
    }

    #[test]
    fn a_cancellation_wakes_the_task_that_waits_on_the_wrapped_signal() {
        let token = CancellationToken::new();
        let mut waiting = tokio_test::task::spawn(PolledWhenWoken::new(token.clone().cancelled_owned()));
        assert!(waiting.poll().is_pending());
        assert!(waiting.poll().is_pending());
        token.cancel();
        assert!(waiting.is_woken(), "the cancellation wakes the task");
        assert!(waiting.poll().is_ready());
    }
}
