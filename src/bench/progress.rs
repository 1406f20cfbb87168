//! How far a run has got, while it goes: what a progress bar shows, and what an in-process test or
//! tool waits on to act during a run (move the client to a new address once requests flow, say)
//! without guessing with sleeps how long the set-up takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use indicatif::ProgressBar;
use tokio::sync::Notify;

/// A run's completed requests (warm-up included), counted as they complete. Cheap to clone; clones
/// count together.
#[derive(Clone, Default)]
pub struct Progress {
    shared: Arc<Shared>,
    bar: Option<ProgressBar>,
}

#[derive(Default)]
struct Shared {
    completed: AtomicU64,
    /// Tasks in [`Progress::completed_at_least`]: only while there are some does a completion pay
    /// for a wake-up, so that a run nobody waits on costs one atomic add per request.
    waiting: AtomicUsize,
    changed: Notify,
    /// The run is over: no count will grow any more.
    finished: AtomicBool,
}

impl Progress {
    pub fn new() -> Self {
        Progress::default()
    }

    /// Progress shown on `bar` as well.
    pub fn shown_on(bar: ProgressBar) -> Self {
        Progress { bar: Some(bar), ..Progress::default() }
    }

    pub(super) fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }

    /// Requests completed so far, answered or failed, warm-up included.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have completed; false if the run ended before they had.
    pub async fn completed_at_least(&self, n: u64) -> bool {
        let shared = &self.shared;
        shared.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(shared);
        loop {
            // Registered before the count is read: a completion after the read wakes this one.
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if shared.completed.load(Ordering::SeqCst) >= n {
                return true;
            }
            if shared.finished.load(Ordering::SeqCst) {
                return false;
            }
            changed.await;
        }
    }

    pub(super) fn add_completed(&self) {
        let shared = &self.shared;
        shared.completed.fetch_add(1, Ordering::SeqCst);
        if shared.waiting.load(Ordering::SeqCst) > 0 {
            shared.changed.notify_waiters();
        }
    }

    pub(super) fn finish(&self) {
        self.shared.finished.store(true, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }
}

/// Counts a waiter out again, however its wait ends (returned, or dropped).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_count_is_reached_or_the_run_is_over() {
        let progress = Progress::new();
        let reached = tokio::spawn({
            let progress = progress.clone();
            async move { progress.completed_at_least(3).await }
        });
        let never = tokio::spawn({
            let progress = progress.clone();
            async move { progress.completed_at_least(10).await }
        });
        for _ in 0..3 {
            tokio::task::yield_now().await;
            progress.add_completed();
        }
        assert!(reached.await.unwrap(), "three completions reached 3");
        progress.finish();
        assert!(!never.await.unwrap(), "the run ended at 3 of 10");
        assert!(progress.completed_at_least(2).await, "a count already reached returns at once");
    }
}
