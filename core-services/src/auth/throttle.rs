//! Brute-force protection for logins, sans-IO (the caller passes the time).
//!
//! - **Per address** (IPv4 address, or the /64 of an IPv6 address): a token bucket,
//!   `ip_burst` attempts then `ip_per_minute` a minute. An attacker's address is slowed
//!   to that rate whatever account it targets.
//! - **Per account**: after `free_failures` consecutive failures the account locks for
//!   1 s, doubling with every further failure up to `max_lockout`. A success resets it.
//!   During a lockout every attempt is refused *without checking the password* (no
//!   oracle, no Argon2 cost). The lockout ends on its own, so the real user can sign in
//!   from another address once it has passed.
//!
//! State is per process, shared by the shards (logins are rare next to other requests);
//! entries are dropped once idle, so memory stays bounded by recent attackers. On a
//! fleet, [`RedisLoginThrottle`] applies the same limits across every node as a second
//! layer ([`LoginThrottle::with_fleet`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use selfie_storage::redis::{GlobalRateLimiter, LoginLockouts, RateDecision};

/// Throttle settings.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Attempts an address may make at once.
    pub ip_burst: u32,
    /// Sustained attempts per address per minute.
    pub ip_per_minute: u32,
    /// Consecutive failures allowed before an account locks.
    pub free_failures: u32,
    /// Longest lockout.
    pub max_lockout: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            ip_burst: 20,
            ip_per_minute: 10,
            free_failures: 5,
            max_lockout: Duration::from_secs(15 * 60),
        }
    }
}

/// Why an attempt was refused before the password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The address is over its rate; retry after this long.
    Address(Duration),
    /// The account is locked; retry after this long.
    Account(Duration),
}

#[derive(Debug, Default)]
struct State {
    /// Address key -> (tokens, last refill ms).
    addresses: HashMap<u128, (f64, u64)>,
    /// Account key -> (consecutive failures, locked until ms, last failure ms).
    accounts: HashMap<String, (u32, u64, u64)>,
    last_sweep_ms: u64,
}

/// The login throttle, shared by every shard of a node, with an optional fleet-wide
/// layer ([`FleetThrottle`]) consulted after the node's own.
#[derive(Clone, Default)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    state: Arc<Mutex<State>>,
    fleet: Option<Arc<dyn FleetThrottle>>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("config", &self.config)
            .field("fleet", &self.fleet.is_some())
            .finish_non_exhaustive()
    }
}

pub use crate::BoxFuture;

/// Login throttling shared by every node of a fleet, so that spreading guesses over
/// nodes gains an attacker nothing. `account` is the lower-cased identifier.
pub trait FleetThrottle: Send + Sync {
    /// Refuses an attempt while the account is locked or the address is over its rate.
    fn check<'a>(&'a self, account: &'a str, ip: IpAddr) -> BoxFuture<'a, Result<(), Throttled>>;
    /// Records the outcome of a password (or second-factor) check.
    fn record<'a>(&'a self, account: &'a str, success: bool) -> BoxFuture<'a, ()>;
}

/// [`FleetThrottle`] over Redis: the address limit as a GCRA limiter, the account
/// lockouts as [`LoginLockouts`], both evaluated atomically in Redis. Accounts are keyed
/// by a SHA-256 of the identifier (no e-mail addresses in Redis keys). If Redis cannot be
/// reached the attempt goes on under the node's own limits (logged), rather than locking
/// every user out.
pub struct RedisLoginThrottle {
    addresses: GlobalRateLimiter,
    lockouts: LoginLockouts,
}

impl RedisLoginThrottle {
    /// Over a Redis connection, with the same limits as the node's throttle.
    pub fn new(
        conn: selfie_storage::redis::Connection,
        prefix: &str,
        config: ThrottleConfig,
    ) -> Self {
        Self {
            addresses: GlobalRateLimiter::new(
                conn.clone(),
                prefix,
                "login_ip",
                config.ip_per_minute.max(1),
                Duration::from_secs(60),
                config.ip_burst,
            ),
            lockouts: LoginLockouts::new(conn, prefix, config.free_failures, config.max_lockout),
        }
    }
}

fn account_subject(account: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(account.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl FleetThrottle for RedisLoginThrottle {
    fn check<'a>(&'a self, account: &'a str, ip: IpAddr) -> BoxFuture<'a, Result<(), Throttled>> {
        Box::pin(async move {
            match self.lockouts.locked_for(&account_subject(account)).await {
                Ok(Some(left)) => return Err(Throttled::Account(left)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "fleet login lockouts unavailable"),
            }
            match self
                .addresses
                .check(&format!("{:x}", address_key(ip)))
                .await
            {
                Ok(RateDecision::Limited { retry_after }) => Err(Throttled::Address(retry_after)),
                Ok(RateDecision::Allowed) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "fleet login rate limit unavailable");
                    Ok(())
                }
            }
        })
    }

    fn record<'a>(&'a self, account: &'a str, success: bool) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let subject = account_subject(account);
            let result = if success {
                self.lockouts.succeed(&subject).await
            } else {
                self.lockouts.fail(&subject).await.map(|_| ())
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "fleet login lockouts unavailable");
            }
        })
    }
}

fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        // One subscriber usually holds a whole /64.
        IpAddr::V6(v6) => u128::from(v6) >> 64 << 64 | 1 << 32,
    }
}

impl LoginThrottle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            state: Arc::default(),
            fleet: None,
        }
    }

    /// Adds a fleet-wide layer, consulted after this node's limits.
    pub fn with_fleet(mut self, fleet: Arc<dyn FleetThrottle>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The limits.
    pub fn config(&self) -> ThrottleConfig {
        self.config
    }

    /// The fleet-wide layer, if any.
    pub fn fleet(&self) -> Option<&Arc<dyn FleetThrottle>> {
        self.fleet.as_ref()
    }

    /// Whether an attempt on `account` (the normalised identifier) from `ip` may proceed
    /// at `now_ms`. Spends one address token when it may.
    pub fn check(&self, account: &str, ip: IpAddr, now_ms: u64) -> Result<(), Throttled> {
        let Ok(mut s) = self.state.lock() else {
            // Poisoned: fail closed.
            return Err(Throttled::Address(Duration::from_secs(1)));
        };
        self.sweep(&mut s, now_ms);
        if let Some(&(_, locked_until, _)) = s.accounts.get(account)
            && locked_until > now_ms
        {
            return Err(Throttled::Account(Duration::from_millis(
                locked_until - now_ms,
            )));
        }
        let per_ms = f64::from(self.config.ip_per_minute.max(1)) / 60_000.0;
        let burst = f64::from(self.config.ip_burst.max(1));
        let entry = s
            .addresses
            .entry(address_key(ip))
            .or_insert((burst, now_ms));
        let tokens = (entry.0 + (now_ms.saturating_sub(entry.1)) as f64 * per_ms).min(burst);
        entry.1 = now_ms;
        if tokens < 1.0 {
            entry.0 = tokens;
            let wait = ((1.0 - tokens) / per_ms).ceil() as u64;
            return Err(Throttled::Address(Duration::from_millis(wait.max(1))));
        }
        entry.0 = tokens - 1.0;
        Ok(())
    }

    /// Records the outcome of a checked attempt.
    pub fn record(&self, account: &str, success: bool, now_ms: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        if success {
            s.accounts.remove(account);
            return;
        }
        let entry = s
            .accounts
            .entry(account.to_string())
            .or_insert((0, 0, now_ms));
        entry.0 += 1;
        entry.2 = now_ms;
        if entry.0 >= self.config.free_failures {
            let doublings = (entry.0 - self.config.free_failures).min(20);
            let lock = Duration::from_secs(1u64 << doublings).min(self.config.max_lockout);
            entry.1 = now_ms + lock.as_millis() as u64;
        }
    }

    /// Drops idle entries (at most once a minute).
    fn sweep(&self, s: &mut State, now_ms: u64) {
        if now_ms.saturating_sub(s.last_sweep_ms) < 60_000 {
            return;
        }
        s.last_sweep_ms = now_ms;
        let idle = (self.config.max_lockout.as_millis() as u64).max(3_600_000);
        s.accounts
            .retain(|_, (_, until, last)| *until > now_ms || now_ms.saturating_sub(*last) < idle);
        let refill_ms =
            60_000 * u64::from(self.config.ip_burst) / u64::from(self.config.ip_per_minute.max(1));
        s.addresses
            .retain(|_, (_, last)| now_ms.saturating_sub(*last) < refill_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_address_gets_its_burst_then_its_rate() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        for i in 0..20 {
            assert!(t.check(&format!("user{i}"), ip("198.51.100.7"), T0).is_ok());
        }
        assert!(matches!(
            t.check("user99", ip("198.51.100.7"), T0),
            Err(Throttled::Address(_))
        ));
        // Another address is unaffected.
        assert!(t.check("user99", ip("203.0.113.1"), T0).is_ok());
        // 10 a minute: one more after 6 s.
        assert!(t.check("user99", ip("198.51.100.7"), T0 + 6_000).is_ok());
        assert!(t.check("user99", ip("198.51.100.7"), T0 + 6_100).is_err());
    }

    #[test]
    fn an_ipv6_subscriber_is_one_address() {
        let t = LoginThrottle::new(ThrottleConfig {
            ip_burst: 1,
            ..ThrottleConfig::default()
        });
        assert!(t.check("a", ip("2001:db8:1:2::1"), T0).is_ok());
        assert!(t.check("a", ip("2001:db8:1:2::ffff"), T0).is_err());
        assert!(t.check("a", ip("2001:db8:1:3::1"), T0).is_ok());
    }

    #[test]
    fn failures_lock_the_account_with_doubling_lockouts_and_success_resets() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        let mut now = T0;
        for _ in 0..5 {
            t.record("ada", false, now);
        }
        // Locked for 1 s, from every address.
        assert_eq!(
            t.check("ada", ip("203.0.113.9"), now),
            Err(Throttled::Account(Duration::from_secs(1)))
        );
        now += 1_000;
        assert!(t.check("ada", ip("203.0.113.9"), now).is_ok());
        t.record("ada", false, now);
        assert_eq!(
            t.check("ada", ip("203.0.113.9"), now),
            Err(Throttled::Account(Duration::from_secs(2)))
        );
        now += 2_000;
        t.record("ada", true, now);
        assert!(t.check("ada", ip("203.0.113.9"), now).is_ok());
    }

    #[test]
    fn lockouts_are_capped() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        for _ in 0..100 {
            t.record("ada", false, T0);
        }
        assert_eq!(
            t.check("ada", ip("203.0.113.9"), T0),
            Err(Throttled::Account(Duration::from_secs(900)))
        );
    }
}
