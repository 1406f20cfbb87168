//! One async lock per key (a pub/sub channel, a Redis node), so that what waits for a silent node
//! holds up only what concerns the same key.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// A key's entry lives while anyone holds its lock or waits for it, however they stop waiting (a
/// request dropped while it waits takes its place in the count with it).
#[derive(Default)]
pub(super) struct KeyedLocks(Mutex<HashMap<String, Entry>>);

/// A key's lock, and how many hold it or wait for it.
type Entry = (Arc<tokio::sync::Mutex<()>>, usize);

impl KeyedLocks {
    pub(super) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = {
            let mut locks = self.0.lock();
            let (lock, users) = locks.entry(key.to_owned()).or_default();
            *users += 1;
            lock.clone()
        };
        let mut guard = KeyGuard { locks: self, key: key.to_owned(), held: None };
        guard.held = Some(lock.lock_owned().await);
        guard
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// A place among a key's users: its lock once held.
pub(super) struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    held: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.0.lock();
        self.held.take();
        if let Some((_, users)) = locks.get_mut(&self.key) {
            *users -= 1;
            if *users == 0 {
                locks.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// A key's lock holds up that key alone; the entry of a key nobody holds or waits for takes no
    /// room, whether its last waiter got the lock or gave up waiting.
    #[tokio::test]
    async fn a_keys_lock_holds_up_that_key_alone_and_goes_once_unused() {
        let locks = KeyedLocks::default();
        let held = locks.lock("qkv:dead-shard").await;
        assert!(locks.lock("qkv:healthy-shard").now_or_never().is_some(), "another key's is free");
        let mut waiting = Box::pin(locks.lock("qkv:dead-shard"));
        assert!((&mut waiting).now_or_never().is_none(), "the same key's waits");
        let mut given_up = Box::pin(locks.lock("qkv:dead-shard"));
        assert!((&mut given_up).now_or_never().is_none());
        drop(held);
        drop(given_up);
        drop(waiting.await);
        assert_eq!(locks.len(), 0);
    }
}
