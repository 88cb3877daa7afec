//! Per-user request rates of one shard (GCRA buckets from `governor`), for the paths a
//! user can make expensive: each service keeps its own buckets on the user's owner shard.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::Duration;

use governor::clock::{Clock as _, QuantaClock, QuantaInstant};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};

use crate::{Error, Result};

static CLOCK: LazyLock<QuantaClock> = LazyLock::new(QuantaClock::default);

/// The process's one limiter clock, for every limiter made at run time (per
/// connection, per service) via `RateLimiter::*_with_clock`. `QuantaClock::default()`,
/// which `governor` uses for a limiter made without a clock and which its callers used
/// to read "now" for a refusal's wait, runs `quanta::Clock::new()`: its counter-support
/// checks are several `cpuid` instructions each time, each a trap to the hypervisor on
/// a VM (about 60 µs of a connection's setup when the edge made two limiters per
/// connection that way). quanta calibrates once per process, so instants of any
/// `QuantaClock`, this one or a limiter's own, compare (what [`wait_until`] relies on).
pub fn clock() -> QuantaClock {
    CLOCK.clone()
}

/// How long until `not_until`, at least 1 ms: a refusal's retry hint.
pub fn wait_until(not_until: &NotUntil<QuantaInstant>) -> Duration {
    not_until
        .wait_time_from(CLOCK.now())
        .max(Duration::from_millis(1))
}

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
            buckets: RateLimiter::dashmap_with_clock(
                Quota::per_minute(n(per_minute)).allow_burst(n(burst)),
                clock(),
            ),
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
        self.buckets
            .check_key(&user)
            .map_err(|not_until| Error::RateLimited(wait_until(&not_until)))
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
