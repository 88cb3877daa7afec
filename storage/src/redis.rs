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
