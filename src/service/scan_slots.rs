//! The `--max-concurrent-scans` slots of `Hgetall` listings. Each listing holds a slot while it reads
//! its table (with the memory store, a snapshot of the table's keys: the slots bound what those hold
//! server-wide). A listing whose client stops reading holds nothing the others need for long: once it
//! has sat idle for [`IDLE_BEFORE_YIELDING`] while another listing waits for a slot, it gives its slot
//! and its scan up, and takes a slot and a new scan from where it stopped when its client reads on
//! (`hash::hgetall`). Before, 16 clients that stopped reading listings made every other listing on
//! the server wait up to `--reply-timeout` (30 s).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a listing waits for its client before it yields its slot to a listing that wants one. A
/// client that keeps up asks for the next page within far less; one that is slower only pays for a
/// new scan (with the memory store, a new snapshot if the table changed meanwhile) when its slot was
/// wanted.
pub(crate) const IDLE_BEFORE_YIELDING: Duration = Duration::from_millis(250);

pub(crate) struct ScanSlots {
    slots: Arc<Semaphore>,
    demand: Mutex<Demand>,
    /// Told whenever a listing begins to wait.
    wanted: Notify,
}

/// Listings waiting for a slot, and slots yielded to them not yet taken: a listing yields only while
/// the waiting outnumber the slots already yielded, so one listing that waits makes one idle listing
/// yield, not all of them.
#[derive(Default)]
struct Demand {
    waiting: usize,
    yielded: usize,
}

impl ScanSlots {
    pub(crate) fn new(slots: usize) -> Self {
        ScanSlots { slots: Arc::new(Semaphore::new(slots)), demand: Mutex::default(), wanted: Notify::new() }
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

    /// Completes once a listing waits for a slot that no other listing has yielded to it yet: the
    /// caller is to yield its slot then.
    pub(crate) async fn wanted(&self) {
        loop {
            let notified = self.wanted.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so that a listing that begins to wait in between is not missed.
            notified.as_mut().enable();
            {
                let mut demand = self.demand.lock();
                if demand.yielded < demand.waiting {
                    demand.yielded += 1;
                    return;
                }
            }
            notified.await;
        }
    }

    /// A listing that claimed a yield ([`ScanSlots::wanted`]) had nothing to give (its client read on
    /// meanwhile): the claim goes back, for another idle listing to take.
    pub(crate) fn unclaim(&self) {
        {
            let mut demand = self.demand.lock();
            demand.yielded = demand.yielded.saturating_sub(1);
        }
        self.wanted.notify_waiters();
    }
}

/// Counts a listing among those waiting, until it has its slot or gives up waiting (dropped); a slot
/// yielded to the waiting is taken with it.
struct Waiting<'a>(&'a ScanSlots);

impl<'a> Waiting<'a> {
    fn begin(slots: &'a ScanSlots) -> Self {
        slots.demand.lock().waiting += 1;
        Waiting(slots)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut demand = self.0.demand.lock();
        demand.waiting -= 1;
        demand.yielded = demand.yielded.saturating_sub(1).min(demand.waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One listing waiting for a slot makes one idle listing yield, not every idle one; a yield
    /// claimed with nothing to give goes back to the others. On tokio's paused clock, so "does not
    /// complete" is decided once every task is idle.
    #[tokio::test(start_paused = true)]
    async fn one_waiting_listing_makes_one_idle_listing_yield() {
        let slots = Arc::new(ScanSlots::new(2));
        let held = [slots.acquire().await, slots.acquire().await];
        assert!(held.iter().all(Option::is_some));
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.is_some() }
        });
        let idle = |slots: &Arc<ScanSlots>| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.wanted().await })
        };
        let (mut first, mut second) = (idle(&slots), idle(&slots));
        let yielding = tokio::select! {
            _ = &mut first => second,
            _ = &mut second => first,
        };
        let mut other = yielding;
        let again = tokio::time::timeout(Duration::from_secs(60), &mut other).await;
        assert!(again.is_err(), "a second idle listing yielded for one waiting listing");
        // The first found nothing to give (its client read on): the claim goes to the other.
        slots.unclaim();
        tokio::time::timeout(Duration::from_secs(60), &mut other)
            .await
            .expect("the claim went back")
            .unwrap();
        drop(held);
        assert!(waiter.await.unwrap(), "the waiting listing got a slot");
        let demand = slots.demand.lock();
        assert_eq!((demand.waiting, demand.yielded), (0, 0));
    }
}
