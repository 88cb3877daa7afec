//! Shard-local locks by key: one operation at a time on a key (a pair of users, a post
//! and a user, a list), forgotten once no one holds or waits for them.
//!
//! They order work *within one shard*; the edge routes every operation on a key to the
//! key's owner shard, so on a node this is all the ordering needed. Across the nodes of a
//! fleet, the graph adds Redis leases on top ([`crate::graph::FleetLocks`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Locks by `(u64, u64)` key.
#[derive(Default)]
pub struct KeyedLocks {
    map: RefCell<HashMap<(u64, u64), SharedMutex>>,
}

type SharedMutex = Arc<tokio::sync::Mutex<()>>;

/// Holds one key of [`KeyedLocks`].
pub struct KeyGuard<'a> {
    key: (u64, u64),
    locks: &'a KeyedLocks,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Waits for `key`.
    pub async fn lock(&self, key: (u64, u64)) -> KeyGuard<'_> {
        let lock = self.map.borrow_mut().entry(key).or_default().clone();
        let guard = lock.lock_owned().await;
        KeyGuard {
            key,
            locks: self,
            guard: Some(guard),
        }
    }

    /// Keys held or waited for (tests, metrics).
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.borrow_mut();
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_held_by_one_at_a_time_and_forgotten_after() {
        let locks = KeyedLocks::default();
        let first = locks.lock((1, 2)).await;
        let other = locks.lock((2, 1)).await; // another key: no wait
        let waiting = async { drop(locks.lock((1, 2)).await) };
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(first);
        waiting.await;
        drop(other);
        assert!(locks.is_empty());
    }
}
