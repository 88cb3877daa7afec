//! Redis: what is live rather than durable, shared by every edge node of a fleet.
//!
//! - [`PresenceRegistry`]: user → the connections (node, shard, connection id) that have
//!   heartbeated within a TTL. One sorted set per user, scored by expiry, so a crashed
//!   node's entries vanish on their own.
//! - [`EventBus`]: cross-node fan-out over Redis pub/sub. A node subscribes to the topics
//!   of the users and conversations it serves and receives what any node publishes.
//!   Pub/sub is at-most-once: the durable copy of every event lives in the store, and
//!   clients catch up with sync cursors after a gap.
//! - [`GlobalRateLimiter`]: a GCRA limiter evaluated atomically in Redis (Lua), using
//!   Redis's clock so that nodes with skewed clocks agree.
//! - [`RevocationList`]: revoked sessions every node must refuse, kept as long as their
//!   access tokens could still be presented.
//! - [`LoginLockouts`]: per-account failed-login counting and doubling lockouts, shared
//!   by every node so that spreading guesses over nodes gains an attacker nothing.
//! - [`Locks`]: short leases on named locks, for the few operations that must not
//!   interleave across nodes (changes to one pair of users in the graph).
//!
//! Every key is prefixed (`selfie:` by default) so one Redis can serve several
//! deployments. Connections reconnect by themselves (`ConnectionManager`).

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use redis::aio::{ConnectionManager, PubSubSink};
use redis::{AsyncCommands, Client, Script};

use crate::StoreError;

/// A reconnecting, multiplexed Redis connection (cheap to clone).
pub type Connection = ConnectionManager;

/// Connects a reconnecting Redis connection from a URL (`redis://host:port/db`,
/// `redis+unix:///path/to/socket`).
pub async fn connect(url: &str) -> Result<(Client, ConnectionManager), StoreError> {
    let client = Client::open(url)?;
    let conn = ConnectionManager::new(client.clone()).await?;
    Ok((client, conn))
}

/// Where a user is connected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceEntry {
    /// Edge node id.
    pub node: String,
    /// Shard on that node.
    pub shard: u16,
    /// Connection id, unique on the node.
    pub connection: u64,
}

impl PresenceEntry {
    fn member(&self) -> String {
        format!("{}|{}|{}", self.node, self.shard, self.connection)
    }

    fn parse(member: &str) -> Option<Self> {
        let mut it = member.rsplitn(3, '|');
        let connection = it.next()?.parse().ok()?;
        let shard = it.next()?.parse().ok()?;
        let node = it.next()?.to_string();
        Some(Self {
            node,
            shard,
            connection,
        })
    }
}

/// User → live connections, with heartbeat expiry.
#[derive(Clone)]
pub struct PresenceRegistry {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

/// Adds or refreshes one connection and purges expired ones, atomically. Scores are
/// expiry times on Redis's clock.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The key lives as long as its longest-lived entry: extend, never shorten.
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

/// Live members (score in the future) of each key.
const LOOKUP: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')
end
return out
";

// Scripts are hashed once; `invoke_async` uses EVALSHA and loads them when missing.
static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT));
static LOOKUP_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOOKUP));
static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

impl PresenceRegistry {
    /// A registry whose entries expire `ttl` after their last heartbeat.
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            ttl,
        }
    }

    fn key(&self, user: u64) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    /// Records (or refreshes) a connection of `user`.
    pub async fn heartbeat(&self, user: u64, entry: &PresenceEntry) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        let _: i64 = HEARTBEAT_SCRIPT
            .key(self.key(user))
            .arg(entry.member())
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes a connection (on disconnect).
    pub async fn remove(&self, user: u64, entry: &PresenceEntry) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(self.key(user), entry.member()).await?;
        Ok(())
    }

    /// The live connections of `user`.
    pub async fn connections(&self, user: u64) -> Result<Vec<PresenceEntry>, StoreError> {
        Ok(self
            .connections_of(&[user])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// The live connections of each user, in order (one round trip).
    pub async fn connections_of(
        &self,
        users: &[u64],
    ) -> Result<Vec<Vec<PresenceEntry>>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut script = LOOKUP_SCRIPT.prepare_invoke();
        for &u in users {
            script.key(self.key(u));
        }
        let members: Vec<Vec<String>> = script.invoke_async(&mut conn).await?;
        Ok(members
            .into_iter()
            .map(|m| m.iter().filter_map(|s| PresenceEntry::parse(s)).collect())
            .collect())
    }
}

/// Cross-node publish/subscribe.
#[derive(Clone)]
pub struct EventBus {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
}

/// One node's subscription: change its topics at any time; messages arrive on
/// [`Subscription::messages`].
pub struct Subscription {
    sink: PubSubSink,
    prefix: String,
}

/// A message received from the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// Topic, without the prefix.
    pub topic: String,
    /// Payload as published.
    pub payload: Bytes,
}

impl EventBus {
    /// A bus whose channels are named `{prefix}bus:{topic}`.
    pub fn new(client: Client, conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            client,
            conn,
            prefix: prefix.to_string(),
        }
    }

    /// Publishes to a topic; returns how many node subscriptions received it.
    pub async fn publish(&self, topic: &str, payload: &[u8]) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn
            .publish(format!("{}bus:{topic}", self.prefix), payload)
            .await?)
    }

    /// Publishes `payload` to `topic` with the next number of the sequence named
    /// `sequence` (one atomic script: the numbers reach every subscriber in order, and
    /// no two publishers get the same one). The message is `"<seq>:" + payload`
    /// ([`BusMessage::sequenced`] splits it). The sequence is forgotten `keep` after its
    /// last use. Returns the number given.
    pub async fn publish_sequenced(
        &self,
        topic: &str,
        sequence: &str,
        payload: &[u8],
        keep: Duration,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        // EVAL with the script itself, every time: EVALSHA would retry a NOSCRIPT (after a
        // Redis restart) behind later commands and number it after them.
        Ok(redis::cmd("EVAL")
            .arg(PUBLISH_SEQUENCED)
            .arg(2)
            .arg(format!("{}seq:{sequence}", self.prefix))
            .arg(format!("{}bus:{topic}", self.prefix))
            .arg(payload)
            .arg(keep.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?)
    }

    /// Opens this node's subscription (its own Redis connection) and its message stream.
    pub async fn subscribe(
        &self,
    ) -> Result<(Subscription, impl Stream<Item = BusMessage> + use<>), StoreError> {
        let pubsub = self.client.get_async_pubsub().await?;
        let (sink, stream) = pubsub.split();
        let strip = format!("{}bus:", self.prefix);
        let messages = stream.filter_map(move |msg| {
            let topic = msg
                .get_channel_name()
                .strip_prefix(strip.as_str())
                .map(str::to_string);
            let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
            async move { topic.map(|topic| BusMessage { topic, payload }) }
        });
        Ok((
            Subscription {
                sink,
                prefix: self.prefix.clone(),
            },
            messages,
        ))
    }
}

impl BusMessage {
    /// The sequence number and payload of a message sent with
    /// [`EventBus::publish_sequenced`].
    pub fn sequenced(&self) -> Option<(u64, Bytes)> {
        let colon = self.payload.iter().position(|&b| b == b':')?;
        let seq = std::str::from_utf8(&self.payload[..colon])
            .ok()?
            .parse()
            .ok()?;
        Some((seq, self.payload.slice(colon + 1..)))
    }
}

/// `INCR` a sequence and `PUBLISH` with its number, atomically (scripts run alone).
const PUBLISH_SEQUENCED: &str = r"
local seq = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], seq .. ':' .. ARGV[1])
return seq
";

impl Subscription {
    /// Starts receiving `topic`. Returns once Redis has confirmed the subscription.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), StoreError> {
        self.sink
            .subscribe(format!("{}bus:{topic}", self.prefix))
            .await?;
        Ok(())
    }

    /// Stops receiving `topic`.
    pub async fn unsubscribe(&mut self, topic: &str) -> Result<(), StoreError> {
        self.sink
            .unsubscribe(format!("{}bus:{topic}", self.prefix))
            .await?;
        Ok(())
    }
}

/// GCRA (generic cell rate algorithm): one theoretical arrival time per key, on Redis's
/// clock. Returns `{allowed, retry_after_ms}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
return {1, 0}
";

/// The decision of a rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead.
    Allowed,
    /// Refused; retrying after this long may succeed.
    Limited {
        /// Wait before retrying.
        retry_after: Duration,
    },
}

/// A rate limit shared by every node: `rate` requests per `period`, bursts up to `burst`.
#[derive(Clone)]
pub struct GlobalRateLimiter {
    conn: ConnectionManager,
    prefix: String,
    name: String,
    interval_ms: u64,
    burst: u32,
}

impl GlobalRateLimiter {
    /// A limiter named `name` (e.g. `login_ip`), allowing `rate` per `period` with bursts
    /// of `burst`.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        name: &str,
        rate: u32,
        period: Duration,
        burst: u32,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            name: name.to_string(),
            interval_ms: (period.as_millis() as u64 / u64::from(rate.max(1))).max(1),
            burst: burst.max(1),
        }
    }

    /// Spends one unit for `subject` (an account id, an IP prefix...).
    pub async fn check(&self, subject: &str) -> Result<RateDecision, StoreError> {
        let mut conn = self.conn.clone();
        let (allowed, retry_ms): (i64, i64) = GCRA_SCRIPT
            .key(format!("{}rl:{}:{subject}", self.prefix, self.name))
            .arg(self.interval_ms)
            .arg(self.burst)
            .arg(1)
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_millis(retry_ms.max(1) as u64),
            }
        })
    }
}

/// Revoked sessions, shared by every node: a sorted set of session ids scored by the time
/// after which remembering them is pointless (the last access token of the session has
/// expired by then). Nodes add what they revoke and read the live entries when they
/// start and after a gap in pub/sub. Times are Redis's (Lua `TIME`), so nodes with skewed
/// clocks agree on what has expired.
#[derive(Clone)]
pub struct RevocationList {
    conn: ConnectionManager,
    key: String,
}

/// `KEYS[1]` = the set; `ARGV` = session id, retention ms. A later expiry wins.
const REVOKE_ADD: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZADD', KEYS[1], 'GT', string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
";

/// `KEYS[1]` = the set. Forgets expired entries, returns the live ones.
const REVOKE_LIVE: &str = r"
local t = redis.call('TIME')
local now = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

static REVOKE_ADD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REVOKE_ADD));
static REVOKE_LIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REVOKE_LIVE));

impl RevocationList {
    /// The list `{prefix}revoked`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            key: format!("{prefix}revoked"),
        }
    }

    /// Records `session_id` as revoked for `retention` from now.
    pub async fn add(&self, session_id: u64, retention: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = REVOKE_ADD_SCRIPT
            .key(&self.key)
            .arg(session_id)
            .arg(retention.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The sessions still remembered; forgets the expired ones.
    pub async fn live(&self) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = REVOKE_LIVE_SCRIPT
            .key(&self.key)
            .invoke_async(&mut conn)
            .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }
}

/// Per-account login lockouts shared by every node: failures counted in Redis, and once
/// `free_failures` have failed, a lockout that doubles with every further
/// failure (1 s, 2 s, 4 s ... up to `max_lockout`). A success clears the account. Evaluated
/// atomically in Redis (Lua) with Redis's clock.
#[derive(Clone)]
pub struct LoginLockouts {
    conn: ConnectionManager,
    prefix: String,
    free_failures: u32,
    max_lockout: Duration,
}

/// `KEYS[1]` = account hash; `ARGV` = free failures, max lockout ms, idle expiry ms.
/// Returns the lockout left in ms (0 when none).
const LOCKOUT_FAIL: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local free = tonumber(ARGV[1])
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if n >= free then
  local doublings = math.min(n - free, 20)
  local lock = math.min(1000 * (2 ^ doublings), tonumber(ARGV[2]))
  until_ms = now + lock
  redis.call('HSET', KEYS[1], 'until', string.format('%.0f', until_ms))
end
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[3]), until_ms - now))
return math.max(until_ms - now, 0)
";

/// `KEYS[1]` = account hash. Returns the lockout left in ms (0 when none).
const LOCKOUT_CHECK: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
return math.max(until_ms - now, 0)
";

static LOCKOUT_FAIL_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOCKOUT_FAIL));
static LOCKOUT_CHECK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LOCKOUT_CHECK));

impl LoginLockouts {
    /// Lockouts under `{prefix}lockout:{account}`.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        free_failures: u32,
        max_lockout: Duration,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
            free_failures: free_failures.max(1),
            max_lockout,
        }
    }

    fn key(&self, account: &str) -> String {
        format!("{}lockout:{account}", self.prefix)
    }

    /// The lockout left for `account`, if any.
    pub async fn locked_for(&self, account: &str) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let left: i64 = LOCKOUT_CHECK_SCRIPT
            .key(self.key(account))
            .invoke_async(&mut conn)
            .await?;
        Ok((left > 0).then(|| Duration::from_millis(left as u64)))
    }

    /// Records a failed attempt; returns the lockout it starts, if any.
    pub async fn fail(&self, account: &str) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let max_ms = self.max_lockout.as_millis().max(1) as u64;
        let left: i64 = LOCKOUT_FAIL_SCRIPT
            .key(self.key(account))
            .arg(self.free_failures)
            .arg(max_ms)
            // Failures are forgotten after an hour without any (or the lockout, if longer).
            .arg(max_ms.max(3_600_000))
            .invoke_async(&mut conn)
            .await?;
        Ok((left > 0).then(|| Duration::from_millis(left as u64)))
    }

    /// Records a success: the account starts afresh.
    pub async fn succeed(&self, account: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(self.key(account)).await?;
        Ok(())
    }
}

/// Short leases on named locks shared by every node (`SET NX PX`; released only by the
/// holder, atomically in Lua). A lease expires by itself after its TTL, so a crashed
/// holder blocks no one for longer than that; callers keep their critical sections far
/// shorter than the TTL.
#[derive(Clone)]
pub struct Locks {
    conn: ConnectionManager,
    prefix: String,
}

/// `KEYS[1]` = lock; `ARGV[1]` = the holder's token. Deletes the lock only if still held.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

static UNLOCK_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK));

impl Locks {
    /// Locks under `{prefix}lock:{name}`.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_string(),
        }
    }

    /// Takes `name` for `ttl` with `token` (unique per holder) if no one holds it.
    pub async fn try_lock(
        &self,
        name: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let ok: Option<String> = redis::cmd("SET")
            .arg(format!("{}lock:{name}", self.prefix))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(ok.is_some())
    }

    /// Releases `name` if `token` still holds it; returns whether it did.
    pub async fn unlock(&self, name: &str, token: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let n: i64 = UNLOCK_SCRIPT
            .key(format!("{}lock:{name}", self.prefix))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }
}

/// A private `redis-server` for tests (Debian's `redis-server` on a Unix socket in a
/// temporary directory, no persistence), stopped when dropped. Not for production use.
pub mod testing {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A running test server.
    pub struct RedisServer {
        child: Child,
        _dir: tempfile::TempDir,
        /// `redis+unix://` URL of the server.
        pub url: String,
    }

    impl RedisServer {
        /// Starts one; fails if `redis-server` is not installed or does not come up.
        pub fn start() -> std::io::Result<Self> {
            let dir = tempfile::tempdir()?;
            let sock = dir.path().join("redis.sock");
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--unixsocket",
                ])
                .arg(&sock)
                .stdout(Stdio::null())
                .spawn()?;
            let start = Instant::now();
            while !sock.exists() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(std::io::Error::other("redis-server did not start"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let url = format!("redis+unix://{}", sock.display());
            Ok(Self {
                child,
                _dir: dir,
                url,
            })
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_members_round_trip_even_with_separators_in_the_node_id() {
        let e = PresenceEntry {
            node: "edge|eu-1".into(),
            shard: 7,
            connection: 99,
        };
        assert_eq!(PresenceEntry::parse(&e.member()), Some(e));
        assert_eq!(PresenceEntry::parse("garbage"), None);
    }
}
