//! Node numbers for a fleet. Every id a node mints carries its node number
//! (`selfie_storage::id`), so two live nodes on one backend must never hold the same
//! one. A node claims its number at start with a conditional write carrying a TTL (the
//! lease), renews it while it runs, and releases it when it drains; a number whose
//! holder died frees itself when the TTL runs out.
//!
//! - A configured number is claimed or refused: if another live node holds it, the
//!   claim retries until one lease period has passed (the holder may be this node's own
//!   previous process, killed before it could release), then gives up.
//! - Without a configured number, the first free one is taken, starting from a random
//!   number so that nodes starting together rarely contend.
//! - A node that fails to renew in time has lost its number: it must stop minting ids
//!   (the edge drains and exits).
//!
//! Holders are `node_id/instance`: a random instance token per process, so a second
//! process started with the same node id and number is refused too.

use std::time::Duration;

use bytes::Bytes;
use selfie_storage::id::MAX_NODE;
use selfie_storage::{Store, StoreError};

use crate::tables::fleet::NODE_NUMBERS;
use crate::tables::key;

/// Why a node has no number.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live node holds the configured number.
    #[error("node number {number} is held by {holder}")]
    Taken {
        /// The number asked for.
        number: u16,
        /// Who holds it (`node_id/instance`).
        holder: String,
    },
    /// Every node number is held.
    #[error("all {} node numbers are held by live nodes", MAX_NODE as u32 + 1)]
    NoneFree,
    /// The configured number is out of range.
    #[error("node number {0} is out of range (0..={MAX_NODE})")]
    OutOfRange(u16),
    /// The lease ran out or was taken over: this node must stop minting ids.
    #[error("the lease on node number {0} was lost")]
    Lost(u16),
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held node number.
pub struct NodeLease<S> {
    store: S,
    number: u16,
    holder: Bytes,
    ttl: Duration,
}

impl<S> std::fmt::Debug for NodeLease<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLease")
            .field("number", &self.number)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<S: Store> NodeLease<S> {
    /// Claims `wanted` (or the first free number) for `node_id`, for `ttl` at a time.
    pub async fn claim(
        store: S,
        wanted: Option<u16>,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let holder = Bytes::from(format!("{node_id}/{:016x}", rand::random::<u64>()));
        match wanted {
            Some(n) if n > MAX_NODE => Err(LeaseError::OutOfRange(n)),
            Some(number) => {
                // Retry for one lease period: a previous process of this node, killed
                // before it released, holds the number until its lease runs out.
                let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
                loop {
                    if Self::try_take(&store, number, &holder, ttl).await? {
                        return Ok(Self {
                            store,
                            number,
                            holder,
                            ttl,
                        });
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let current = store
                            .get(&NODE_NUMBERS, &key(u64::from(number)), &[])
                            .await?;
                        return Err(LeaseError::Taken {
                            number,
                            holder: current
                                .map(|h| String::from_utf8_lossy(&h).into_owned())
                                .unwrap_or_default(),
                        });
                    }
                    tokio::time::sleep((ttl / 10).max(Duration::from_millis(100))).await;
                }
            }
            None => {
                let count = u32::from(MAX_NODE) + 1;
                let start = rand::random_range(0..count);
                for i in 0..count {
                    let number = ((start + i) % count) as u16;
                    if Self::try_take(&store, number, &holder, ttl).await? {
                        return Ok(Self {
                            store,
                            number,
                            holder,
                            ttl,
                        });
                    }
                }
                Err(LeaseError::NoneFree)
            }
        }
    }

    async fn try_take(
        store: &S,
        number: u16,
        holder: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        store
            .insert_if_absent(
                &NODE_NUMBERS,
                &key(u64::from(number)),
                &[],
                holder,
                Some(ttl),
            )
            .await
    }

    /// The number held.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// How long one renewal lasts; renew well within it (every third of it).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extends the lease by its TTL; [`LeaseError::Lost`] when it had run out (and
    /// perhaps been claimed by another node).
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let k = key(u64::from(self.number));
        let renewed = self
            .store
            .compare_and_set(
                &NODE_NUMBERS,
                &k,
                &[],
                &self.holder,
                Some(&self.holder),
                Some(self.ttl),
            )
            .await?;
        if renewed {
            Ok(())
        } else {
            Err(LeaseError::Lost(self.number))
        }
    }

    /// Gives the number back (a draining node), if this node still holds it.
    pub async fn release(self) -> Result<(), LeaseError> {
        let k = key(u64::from(self.number));
        self.store
            .compare_and_set(&NODE_NUMBERS, &k, &[], &self.holder, None, None)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use selfie_storage::SystemClock;
    use selfie_storage::embedded::EmbeddedStore;

    use super::*;

    fn store() -> (EmbeddedStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let tables = crate::schema::tables();
        let store = EmbeddedStore::open(dir.path(), &tables, Arc::new(SystemClock)).expect("store");
        (store, dir)
    }

    #[tokio::test]
    async fn two_nodes_get_distinct_numbers_and_a_held_number_is_refused() {
        let (store, _dir) = store();
        let ttl = Duration::from_secs(2);
        let a = NodeLease::claim(store.clone(), None, "edge-a", ttl)
            .await
            .expect("a");
        let b = NodeLease::claim(store.clone(), None, "edge-b", ttl)
            .await
            .expect("b");
        assert_ne!(a.number(), b.number());
        // The same number, asked for explicitly while `a` renews it: refused.
        let renewing = async {
            for _ in 0..8 {
                a.renew().await.expect("renewed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let (taken, ()) = tokio::join!(
            NodeLease::claim(store.clone(), Some(a.number()), "edge-a", ttl),
            renewing
        );
        assert!(
            matches!(taken, Err(LeaseError::Taken { number, .. }) if number == a.number()),
            "{taken:?}"
        );
        // Released: free at once.
        let n = a.number();
        a.release().await.expect("released");
        let c = NodeLease::claim(store.clone(), Some(n), "edge-c", ttl)
            .await
            .expect("free again");
        assert_eq!(c.number(), n);
        // A lease left to run out is lost, and its number can be claimed by another.
        let m = b.number();
        tokio::time::sleep(ttl + Duration::from_millis(1200)).await;
        let d = NodeLease::claim(store.clone(), Some(m), "edge-d", ttl)
            .await
            .expect("expired lease taken over");
        assert!(matches!(b.renew().await, Err(LeaseError::Lost(x)) if x == m));
        d.renew().await.expect("the new holder renews");
        assert!(matches!(
            NodeLease::claim(store, Some(300), "edge-e", ttl).await,
            Err(LeaseError::OutOfRange(300))
        ));
    }
}
