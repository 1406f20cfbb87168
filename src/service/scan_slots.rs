//! The `--max-concurrent-scans` slots of `Hgetall` listings. Each listing holds a slot while it reads
//! its table (with the memory store, a snapshot of the table's keys: the slots bound what those hold
//! server-wide). A listing whose client stops reading holds nothing the others need for long: once it
//! has sat idle for [`IDLE_BEFORE_YIELDING`] while another listing waits for a slot, it gives its slot
//! and its scan up, and takes a slot and a new scan from where it stopped when its client reads on
//! (`hash::hgetall`). Before, 16 clients that stopped reading listings made every other listing on
//! the server wait up to `--reply-timeout` (30 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a listing waits for its client before it yields its slot to a listing that wants one. A
/// client that keeps up asks for the next page within far less; one that is slower only pays for a
/// new scan (with the memory store, a new snapshot if the table changed meanwhile) when its slot was
/// wanted.
pub(crate) const IDLE_BEFORE_YIELDING: Duration = Duration::from_millis(250);

pub(crate) struct ScanSlots {
    slots: Arc<Semaphore>,
    /// Listings waiting for a slot now.
    waiting: AtomicUsize,
    /// Told whenever a listing begins to wait.
    wanted: Notify,
}

impl ScanSlots {
    pub(crate) fn new(slots: usize) -> Self {
        ScanSlots {
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            wanted: Notify::new(),
        }
    }

    /// Waits for a slot. (The semaphore is never closed, so a permit always comes.)
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        let _waiting = Waiting::begin(self);
        self.wanted.notify_waiters();
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Completes once some listing waits for a slot.
    pub(crate) async fn wanted(&self) {
        loop {
            let notified = self.wanted.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so that a listing that begins to wait in between is not missed.
            notified.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) > 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a listing among those waiting, until it has its slot or gives up waiting (dropped).
struct Waiting<'a>(&'a ScanSlots);

impl<'a> Waiting<'a> {
    fn begin(slots: &'a ScanSlots) -> Self {
        slots.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(slots)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
