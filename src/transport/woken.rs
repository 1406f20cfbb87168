//! A future that is polled only once it has asked to be, for a loop that polls the same rarely ready
//! future on every turn: the shutdown signal in each connection's `select!`, whose every poll takes
//! two locks (the cancellation token's and its `Notify`'s), once or twice per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps a future so that, after its first poll, polling it again does nothing (one atomic swap) until
/// the future's own waker has fired. The task polling it is woken as the future's waker would wake it.
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

    /// A task's waker that counts its wakes.
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

    #[test]
    fn polls_the_future_again_only_once_it_has_woken_the_task() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut wrapped = PolledWhenWoken::new(Probe(seen.clone()));
        let woken = Arc::new(Wakes::default());
        let task = Waker::from(woken.clone());
        let cx = &mut Context::from_waker(&task);
        for _ in 0..10 {
            assert!(Pin::new(&mut wrapped).poll(cx).is_pending());
        }
        assert_eq!(seen.lock().polls, 1, "polled once, then not before it asked to be");

        seen.lock().ready = true;
        assert!(Pin::new(&mut wrapped).poll(cx).is_pending(), "ready, but it has not said so yet");
        let waker = seen.lock().waker.take().unwrap();
        waker.wake();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "the polling task is woken");
        assert!(Pin::new(&mut wrapped).poll(cx).is_ready());
        assert_eq!(seen.lock().polls, 2);
    }

    #[tokio::test]
    async fn a_cancellation_reaches_the_task_that_waits_on_the_wrapped_signal() {
        let token = CancellationToken::new();
        let waiting = tokio::spawn(PolledWhenWoken::new(token.clone().cancelled_owned()));
        tokio::task::yield_now().await;
        token.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the task waiting on the signal is woken by the cancellation")
            .unwrap();
    }
}
