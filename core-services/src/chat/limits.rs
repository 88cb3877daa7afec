//! Per-user rate limits on chat's expensive paths (a shard's own; the edge's
//! per-connection limit comes first). Each path has a token bucket per user: a burst,
//! then a sustained rate. Refusals are `RateLimited` with the wait, which the edge counts
//! in `selfie_edge_protocol_errors_total{code="RateLimited"}`.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Duration;

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
}

impl Costly {
    /// (burst, sustained per minute).
    fn quota(self) -> (u32, u32) {
        match self {
            Costly::List => (30, 120),
            Costly::Create => (20, 20),
            Costly::Claim => (20, 30),
            // A device syncs on every reconnect and to fill a gap in pushes.
            Costly::Sync => (60, 300),
            Costly::View => (60, 300),
        }
    }
}

/// Calls between sweeps of idle buckets.
const SWEEP_EVERY: u32 = 4096;

/// The buckets of one shard.
pub(super) struct Limits {
    list: DefaultKeyedRateLimiter<u64>,
    create: DefaultKeyedRateLimiter<u64>,
    claim: DefaultKeyedRateLimiter<u64>,
    sync: DefaultKeyedRateLimiter<u64>,
    view: DefaultKeyedRateLimiter<u64>,
    calls: Cell<u32>,
}

fn limiter(path: Costly) -> DefaultKeyedRateLimiter<u64> {
    let (burst, per_minute) = path.quota();
    let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(n(per_minute)).allow_burst(n(burst)))
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            list: limiter(Costly::List),
            create: limiter(Costly::Create),
            claim: limiter(Costly::Claim),
            sync: limiter(Costly::Sync),
            view: limiter(Costly::View),
            calls: Cell::new(0),
        }
    }
}

impl Limits {
    /// Spends one of `user`'s tokens for `path`, or says how long to wait.
    pub(super) fn check(&self, user: u64, path: Costly) -> Result<()> {
        let limiter = match path {
            Costly::List => &self.list,
            Costly::Create => &self.create,
            Costly::Claim => &self.claim,
            Costly::Sync => &self.sync,
            Costly::View => &self.view,
        };
        let calls = self.calls.get().wrapping_add(1);
        self.calls.set(calls);
        if calls.is_multiple_of(SWEEP_EVERY) {
            // Full buckets are the same as none: memory stays bounded by active users.
            for l in [
                &self.list,
                &self.create,
                &self.claim,
                &self.sync,
                &self.view,
            ] {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        limiter.check_key(&user).map_err(|not_until| {
            let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
            let wait: Duration = not_until.wait_time_from(now);
            Error::RateLimited(wait.max(Duration::from_millis(1)))
        })
    }
}
