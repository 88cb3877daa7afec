//! Per-user rate limits on chat's expensive paths (a shard's own; the edge's
//! per-connection limit comes first). Each path has a token bucket per user: a burst,
//! then a sustained rate. Refusals are `RateLimited` with the wait, which the edge counts
//! in `selfie_edge_protocol_errors_total{code="RateLimited"}`.

use std::cell::Cell;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::{Error, Result};

/// An expensive chat path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Costly {
    /// Listing conversations (a view of each, up to a page).
    List,
    /// Starting a conversation (a direct one or a group).
    Create,
    /// Claiming key packages (each one handed out is gone for its owner).
    Claim,
    /// Syncing (every conversation the user has, and every one the cursor names).
    Sync,
    /// Viewing one conversation (every member's settings and positions).
    View,
    /// A page of history (a scan of up to `HISTORY_SCAN` log entries).
    History,
    /// A typing signal that reaches the members (a repeat of the same one is dropped
    /// before it costs anything).
    Typing,
    /// A receipt that moves the sender's position (a write, and a push to every member,
    /// a read receipt after a look at each one's settings). Receipts that move nothing
    /// are free.
    Receipt,
    /// Sending a message (a commit, and a push to every member): its rate is the
    /// operator's ([`SendRate`]).
    Send,
}

/// The paths, in their order of declaration (the index of each one's bucket).
const PATHS: [Costly; 9] = [
    Costly::List,
    Costly::Create,
    Costly::Claim,
    Costly::Sync,
    Costly::View,
    Costly::History,
    Costly::Typing,
    Costly::Receipt,
    Costly::Send,
];

// Every path has its bucket, at its own index: a variant left out of PATHS, or PATHS
// out of order, would go unlimited or take another path's bucket.
const _: () = {
    let mut i = 0;
    while i < PATHS.len() {
        assert!(PATHS[i] as usize == i);
        i += 1;
    }
    assert!(PATHS.len() == Costly::COUNT);
};

impl Costly {
    /// How many paths there are (the exhaustive match makes a new one a compile error
    /// here until it is counted).
    const COUNT: usize = {
        const fn counted(p: Costly) -> usize {
            match p {
                Costly::List
                | Costly::Create
                | Costly::Claim
                | Costly::Sync
                | Costly::View
                | Costly::History
                | Costly::Typing
                | Costly::Receipt
                | Costly::Send => 9,
            }
        }
        counted(Costly::List)
    };
}

/// How fast one user may send messages (on one shard): a burst, then a sustained rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRate {
    /// Messages sent at once after a quiet spell.
    pub burst: u32,
    /// Messages per minute, sustained.
    pub per_minute: u32,
}

impl Default for SendRate {
    /// 60 at once, then one a second on average (a person types slower; a script
    /// replaying a backlog waits).
    fn default() -> Self {
        Self {
            burst: 60,
            per_minute: 60,
        }
    }
}

impl Costly {
    /// (burst, sustained per minute).
    fn quota(self, send: SendRate) -> (u32, u32) {
        match self {
            Costly::List => (30, 120),
            Costly::Create => (20, 20),
            Costly::Claim => (20, 30),
            // A device syncs on every reconnect and to fill a gap in pushes.
            Costly::Sync => (60, 300),
            Costly::View => (60, 300),
            // Scrolling back through a long conversation.
            Costly::History => (60, 600),
            // Start and stop, in a few conversations at once.
            Costly::Typing => (30, 240),
            // Reading through many conversations at once.
            Costly::Receipt => (120, 1200),
            Costly::Send => (send.burst, send.per_minute),
        }
    }
}

/// Calls between sweeps of idle buckets.
const SWEEP_EVERY: u32 = 4096;

/// The buckets of one shard, one per path.
pub(super) struct Limits {
    buckets: Vec<DefaultKeyedRateLimiter<u64>>,
    calls: Cell<u32>,
}

fn limiter(path: Costly, send: SendRate) -> DefaultKeyedRateLimiter<u64> {
    let (burst, per_minute) = path.quota(send);
    let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(n(per_minute)).allow_burst(n(burst)))
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(SendRate::default())
    }
}

impl Limits {
    /// The buckets, with sends held to `send`.
    pub(super) fn new(send: SendRate) -> Self {
        Self {
            buckets: PATHS.iter().map(|p| limiter(*p, send)).collect(),
            calls: Cell::new(0),
        }
    }

    /// Spends one of `user`'s tokens for `path`, or says how long to wait.
    pub(super) fn check(&self, user: u64, path: Costly) -> Result<()> {
        self.check_n(user, path, 1)
    }

    /// Spends `n` of `user`'s tokens for `path` (a call that costs as much as `n`; at
    /// most a whole burst), or says how long to wait.
    pub(super) fn check_n(&self, user: u64, path: Costly, n: u32) -> Result<()> {
        let calls = self.calls.get().wrapping_add(1);
        self.calls.set(calls);
        if calls.is_multiple_of(SWEEP_EVERY) {
            // Full buckets are the same as none: memory stays bounded by active users.
            for l in &self.buckets {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        let Some(limiter) = self.buckets.get(path as usize) else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        let verdict = match limiter.check_key_n(&user, n) {
            Ok(verdict) => verdict,
            // More than a burst: a whole burst.
            Err(governor::InsufficientCapacity(burst)) => match NonZeroU32::new(burst) {
                Some(burst) => limiter.check_key_n(&user, burst).unwrap_or(Ok(())),
                None => Ok(()),
            },
        };
        verdict.map_err(|not_until| Error::RateLimited(crate::rate::wait_until(&not_until)))
    }
}
