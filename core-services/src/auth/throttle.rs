//! Brute-force protection for every credential check, sans-IO (the caller passes the
//! time).
//!
//! - **Per address** (an IPv4 address — IPv4-mapped IPv6 addresses count as the IPv4
//!   address they carry — or the /64 of an IPv6 address): a token bucket, `ip_burst`
//!   attempts then `ip_per_minute` a minute. An attacker's address is slowed to that
//!   rate whatever account it targets. Registrations have their own, slower bucket
//!   (`register_burst`, then `register_per_hour`): each costs an Argon2 hash.
//! - **Per account**, keyed by user id (so a username and an e-mail address of one
//!   account share one count): after `free_failures` consecutive failures the account
//!   locks for 1 s, doubling with every further failure up to `max_lockout`. A success
//!   resets it. During a lockout every attempt is refused *without checking the
//!   credential* (no oracle, no Argon2 cost). The lockout ends on its own, so the real
//!   user can sign in from another address once it has passed. Logins, password
//!   re-entry (password change, second-factor changes, deletion) and second-factor codes
//!   all count here.
//!
//! State is per process, shared by the shards; entries are dropped once idle, and each
//! map holds at most `max_entries` (past that, the entries that matter least go first:
//! full buckets, then the oldest), so memory stays bounded whatever an attacker sends.
//! On a fleet, [`RedisLoginThrottle`] applies the same limits across every node as a
//! second layer ([`LoginThrottle::with_fleet`]).

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
    /// Registrations an address may make at once.
    pub register_burst: u32,
    /// Sustained registrations per address per hour.
    pub register_per_hour: u32,
    /// Most addresses (per bucket kind) and accounts remembered.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            ip_burst: 20,
            ip_per_minute: 10,
            free_failures: 5,
            max_lockout: Duration::from_secs(15 * 60),
            register_burst: 5,
            register_per_hour: 20,
            max_entries: 100_000,
        }
    }
}

/// Why an attempt was refused before the credential was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The address is over its rate; retry after this long.
    Address(Duration),
    /// The account is locked; retry after this long.
    Account(Duration),
}

/// The throttle key of an account: its user id.
pub fn account_key(user_id: u64) -> String {
    format!("user:{user_id}")
}

/// The throttle key of an identifier that names no account (so that guesses at unknown
/// names are limited too, and look the same from outside).
pub fn unknown_key(identifier: &str) -> String {
    format!("unknown:{}", identifier.to_ascii_lowercase())
}

/// Token buckets per address.
#[derive(Debug, Default)]
struct Buckets {
    /// Address key -> (tokens, last refill ms).
    map: HashMap<u128, (f64, u64)>,
}

impl Buckets {
    /// Spends a token of `ip`'s bucket (`burst` tokens, refilled at `per_ms`).
    fn take(
        &mut self,
        ip: IpAddr,
        burst: u32,
        per_ms: f64,
        now_ms: u64,
        max: usize,
    ) -> Result<(), Throttled> {
        let burst = f64::from(burst.max(1));
        let key = address_key(ip);
        if !self.map.contains_key(&key) && self.map.len() >= max {
            self.make_room(burst, per_ms, now_ms, max);
        }
        let entry = self.map.entry(key).or_insert((burst, now_ms));
        let tokens = (entry.0 + now_ms.saturating_sub(entry.1) as f64 * per_ms).min(burst);
        entry.1 = now_ms;
        if tokens < 1.0 {
            entry.0 = tokens;
            let wait = ((1.0 - tokens) / per_ms).ceil() as u64;
            return Err(Throttled::Address(Duration::from_millis(wait.max(1))));
        }
        entry.0 = tokens - 1.0;
        Ok(())
    }

    /// Drops full buckets (the same as none), then the least recently used half.
    fn make_room(&mut self, burst: f64, per_ms: f64, now_ms: u64, max: usize) {
        self.map.retain(|_, (tokens, last)| {
            *tokens + now_ms.saturating_sub(*last) as f64 * per_ms < burst
        });
        if self.map.len() >= max {
            let mut last: Vec<u64> = self.map.values().map(|(_, l)| *l).collect();
            let cut = *last.select_nth_unstable(max / 2).1;
            self.map.retain(|_, (_, l)| *l > cut);
        }
    }

    fn sweep(&mut self, burst: u32, per_ms: f64, now_ms: u64) {
        let burst = f64::from(burst.max(1));
        self.map.retain(|_, (tokens, last)| {
            *tokens + now_ms.saturating_sub(*last) as f64 * per_ms < burst
        });
    }
}

#[derive(Debug, Default)]
struct State {
    logins: Buckets,
    registrations: Buckets,
    /// Account key -> (consecutive failures, locked until ms, last failure ms).
    accounts: HashMap<String, (u32, u64, u64)>,
    /// Account key -> start times (ms) of checks under way: they count against the free
    /// failures until recorded (or [`PENDING_MS`] old), so a burst of parallel guesses
    /// cannot all pass before the first failure is recorded.
    pending: HashMap<String, Vec<u64>>,
    last_sweep_ms: u64,
}

impl State {
    /// Frees the place of one of `account`'s checks under way.
    fn finish_check(&mut self, account: &str) {
        if let Some(under_way) = self.pending.get_mut(account) {
            under_way.pop();
            if under_way.is_empty() {
                self.pending.remove(account);
            }
        }
    }
}

/// How long a check under way may hold its place (longer than an Argon2 check waits).
const PENDING_MS: u64 = 10_000;

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

/// Throttling shared by every node of a fleet, so that spreading guesses over nodes
/// gains an attacker nothing. `account` is an [`account_key`] or [`unknown_key`].
pub trait FleetThrottle: Send + Sync {
    /// Refuses an attempt while the account is locked or the address is over its rate.
    fn check<'a>(&'a self, account: &'a str, ip: IpAddr) -> BoxFuture<'a, Result<(), Throttled>>;
    /// Refuses a credential check on a signed-in account while it is locked.
    fn check_account<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<(), Throttled>>;
    /// Refuses a registration while the address is over its registration rate.
    fn check_registration(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), Throttled>>;
    /// Records the outcome of a credential check.
    fn record<'a>(&'a self, account: &'a str, success: bool) -> BoxFuture<'a, ()>;
}

/// [`FleetThrottle`] over Redis: the address limits as GCRA limiters, the account
/// lockouts as [`LoginLockouts`], each evaluated atomically in Redis. Accounts are keyed
/// by a SHA-256 of the key (no identifiers in Redis keys). If Redis cannot be reached
/// the attempt goes on under the node's own limits (logged), rather than locking every
/// user out.
pub struct RedisLoginThrottle {
    addresses: GlobalRateLimiter,
    registrations: GlobalRateLimiter,
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
            registrations: GlobalRateLimiter::new(
                conn.clone(),
                prefix,
                "register_ip",
                config.register_per_hour.max(1),
                Duration::from_secs(3600),
                config.register_burst,
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

async fn fleet_rate(limiter: &GlobalRateLimiter, ip: IpAddr) -> Result<(), Throttled> {
    match limiter.check(&format!("{:x}", address_key(ip))).await {
        Ok(RateDecision::Limited { retry_after }) => Err(Throttled::Address(retry_after)),
        Ok(RateDecision::Allowed) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "fleet rate limit unavailable");
            Ok(())
        }
    }
}

impl FleetThrottle for RedisLoginThrottle {
    fn check<'a>(&'a self, account: &'a str, ip: IpAddr) -> BoxFuture<'a, Result<(), Throttled>> {
        Box::pin(async move {
            self.check_account(account).await?;
            fleet_rate(&self.addresses, ip).await
        })
    }

    fn check_account<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<(), Throttled>> {
        Box::pin(async move {
            match self.lockouts.locked_for(&account_subject(account)).await {
                Ok(Some(left)) => Err(Throttled::Account(left)),
                Ok(None) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "fleet login lockouts unavailable");
                    Ok(())
                }
            }
        })
    }

    fn check_registration(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), Throttled>> {
        Box::pin(fleet_rate(&self.registrations, ip))
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

/// One bucket per IPv4 address, per IPv6 /64 (one subscriber usually holds a whole /64);
/// an IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client) is its
/// IPv4 address.
fn address_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
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

    fn state(&self, now_ms: u64) -> Result<std::sync::MutexGuard<'_, State>, Throttled> {
        // Poisoned: fail closed.
        let mut s = self
            .state
            .lock()
            .map_err(|_| Throttled::Address(Duration::from_secs(1)))?;
        self.sweep(&mut s, now_ms);
        Ok(s)
    }

    /// The cap on each map (at least 16, so that halving always leaves room).
    fn max_entries(&self) -> usize {
        self.config.max_entries.max(16)
    }

    fn login_rate(&self) -> f64 {
        f64::from(self.config.ip_per_minute.max(1)) / 60_000.0
    }

    fn register_rate(&self) -> f64 {
        f64::from(self.config.register_per_hour.max(1)) / 3_600_000.0
    }

    /// Whether an attempt on `account` may proceed at `now_ms`: it is not locked, and
    /// its failures plus the checks under way leave room for one more before the lockout.
    /// The attempt then counts as under way until [`LoginThrottle::record`].
    pub fn check_account(&self, account: &str, now_ms: u64) -> Result<(), Throttled> {
        let mut s = self.state(now_ms)?;
        let failures = match s.accounts.get(account) {
            Some(&(_, until, _)) if until > now_ms => {
                return Err(Throttled::Account(Duration::from_millis(until - now_ms)));
            }
            Some(&(n, _, _)) => n,
            None => 0,
        };
        let max = self.max_entries();
        if !s.pending.contains_key(account) && s.pending.len() >= max {
            s.pending
                .retain(|_, v| v.iter().any(|&t| now_ms.saturating_sub(t) < PENDING_MS));
            if s.pending.len() >= max {
                return Err(Throttled::Account(Duration::from_secs(1)));
            }
        }
        let under_way = s.pending.entry(account.to_string()).or_default();
        under_way.retain(|&t| now_ms.saturating_sub(t) < PENDING_MS);
        // Before the lockout, the free failures left; past it, one attempt at a time.
        let free = self.config.free_failures.max(1);
        let room = free.saturating_sub(failures).max(1) as usize;
        if under_way.len() >= room {
            return Err(Throttled::Account(Duration::from_secs(1)));
        }
        under_way.push(now_ms);
        Ok(())
    }

    /// Spends one of `ip`'s login tokens, if it has one.
    pub fn check_address(&self, ip: IpAddr, now_ms: u64) -> Result<(), Throttled> {
        let (burst, rate, max) = (self.config.ip_burst, self.login_rate(), self.max_entries());
        self.state(now_ms)?
            .logins
            .take(ip, burst, rate, now_ms, max)
    }

    /// Whether an attempt on `account` from `ip` may proceed at `now_ms`: the account is
    /// not locked and the address has a token (spent when it may).
    pub fn check(&self, account: &str, ip: IpAddr, now_ms: u64) -> Result<(), Throttled> {
        self.check_account(account, now_ms)?;
        self.check_address(ip, now_ms)
            .inspect_err(|_| self.abandon(account))
    }

    /// Gives back the place of a check that ended without an outcome to record (refused
    /// by the fleet, or a right password still waiting for its second factor).
    pub fn abandon(&self, account: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.finish_check(account);
        }
    }

    /// Spends one of `ip`'s registration tokens, if it has one.
    pub fn check_registration(&self, ip: IpAddr, now_ms: u64) -> Result<(), Throttled> {
        let (burst, rate, max) = (
            self.config.register_burst,
            self.register_rate(),
            self.max_entries(),
        );
        self.state(now_ms)?
            .registrations
            .take(ip, burst, rate, now_ms, max)
    }

    /// Records the outcome of a checked attempt.
    pub fn record(&self, account: &str, success: bool, now_ms: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        s.finish_check(account);
        if success {
            s.accounts.remove(account);
            return;
        }
        let max = self.max_entries();
        if !s.accounts.contains_key(account) && s.accounts.len() >= max {
            // Keep the lockouts that end last; the others matter least.
            let mut ends: Vec<(u64, u64)> = s.accounts.values().map(|v| (v.1, v.2)).collect();
            let cut = *ends.select_nth_unstable(max / 2).1;
            s.accounts.retain(|_, v| (v.1, v.2) > cut);
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

    /// Entries held (addresses of both kinds, accounts): what memory the throttle uses.
    pub fn entries(&self) -> usize {
        self.state.lock().map_or(0, |s| {
            s.logins.map.len() + s.registrations.map.len() + s.accounts.len()
        })
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
        s.pending
            .retain(|_, v| v.iter().any(|&t| now_ms.saturating_sub(t) < PENDING_MS));
        let (login_rate, register_rate) = (self.login_rate(), self.register_rate());
        s.logins.sweep(self.config.ip_burst, login_rate, now_ms);
        s.registrations
            .sweep(self.config.register_burst, register_rate, now_ms);
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

    /// Review finding: checks under way counted for nothing, so a burst of parallel
    /// guesses all passed the check before the first failure was recorded.
    #[test]
    fn checks_under_way_count_against_the_free_failures() {
        let t = LoginThrottle::default();
        let free = ThrottleConfig::default().free_failures;
        for _ in 0..free {
            t.check_account("user:9", 1_000).expect("room left");
        }
        assert!(matches!(
            t.check_account("user:9", 1_000),
            Err(Throttled::Account(_))
        ));
        // One fails: a failure plus four under way still fill the five.
        t.record("user:9", false, 1_001);
        assert!(t.check_account("user:9", 1_002).is_err());
        // One succeeds: the failures are forgotten and its place is free.
        t.record("user:9", true, 1_003);
        t.check_account("user:9", 1_004).expect("room again");
        // Checks that never reported free their place after a while.
        t.check_account("user:9", 1_004 + PENDING_MS)
            .expect("expired places");
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

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        let t = LoginThrottle::new(ThrottleConfig {
            ip_burst: 1,
            ..ThrottleConfig::default()
        });
        assert!(t.check_address(ip("::ffff:198.51.100.7"), T0).is_ok());
        // The same client seen as IPv4, and another IPv4 client seen as mapped.
        assert!(t.check_address(ip("198.51.100.7"), T0).is_err());
        assert!(t.check_address(ip("::ffff:203.0.113.1"), T0).is_ok());
    }

    #[test]
    fn registrations_have_their_own_slower_bucket() {
        let t = LoginThrottle::new(ThrottleConfig::default());
        for _ in 0..5 {
            assert!(t.check_registration(ip("198.51.100.7"), T0).is_ok());
        }
        assert!(matches!(
            t.check_registration(ip("198.51.100.7"), T0),
            Err(Throttled::Address(_))
        ));
        // Logins from that address are not affected; 20 an hour: one more after 3 min.
        assert!(t.check_address(ip("198.51.100.7"), T0).is_ok());
        assert!(
            t.check_registration(ip("198.51.100.7"), T0 + 180_000)
                .is_ok()
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses_and_accounts() {
        let t = LoginThrottle::new(ThrottleConfig {
            max_entries: 1_000,
            ..ThrottleConfig::default()
        });
        for i in 0..20_000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = t.check_address(addr, T0 + u64::from(i));
            t.record(&format!("junk{i}"), false, T0 + u64::from(i));
        }
        assert!(t.entries() <= 2_000, "{} entries", t.entries());
        // The newest are kept: the last address is still spent.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 19_999));
        for _ in 0..19 {
            let _ = t.check_address(last, T0 + 20_000);
        }
        assert!(t.check_address(last, T0 + 20_000).is_err());
    }
}
