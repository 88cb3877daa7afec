//! Per-user request rates of one shard (GCRA buckets from `governor`), for the paths a
//! user can make expensive: each service keeps its own buckets on the user's owner shard.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::{Error, Result};

/// Buckets by user: `per_minute` requests a minute, `burst` at once.
pub struct PerUser {
    buckets: DefaultKeyedRateLimiter<u64>,
    calls: Cell<u32>,
}

impl PerUser {
    /// Buckets allowing `per_minute` a minute with bursts of `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        Self {
            buckets: RateLimiter::keyed(Quota::per_minute(n(per_minute)).allow_burst(n(burst))),
            calls: Cell::new(0),
        }
    }

    /// Takes one request from `user`'s bucket: `RateLimited` with the wait when empty.
    /// Idle buckets are dropped now and then, so memory follows active users.
    pub fn check(&self, user: u64) -> Result<()> {
        let calls = self.calls.get().wrapping_add(1);
        self.calls.set(calls);
        if calls.is_multiple_of(4096) {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets.check_key(&user).map_err(|not_until| {
            let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
            let wait: Duration = not_until.wait_time_from(now);
            Error::RateLimited(wait.max(Duration::from_millis(1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_with_a_wait_and_users_apart() {
        let r = PerUser::new(60, 3);
        for _ in 0..3 {
            r.check(1).expect("within the burst");
        }
        match r.check(1) {
            Err(Error::RateLimited(w)) => assert!(w > Duration::ZERO),
            other => panic!("{other:?}"),
        }
        r.check(2).expect("another user's bucket");
    }
}
