//! Fleet-wide state through Redis (`storage.redis_url`): what one edge node must know of
//! the others to enforce security decisions everywhere.
//!
//! - **Session revocations.** A session revoked on any node (logout, password change,
//!   "sign out other devices", refresh-token reuse, account deletion) is refused by every
//!   node's `Hello`, and its open connections on every node close at once. Revocations
//!   made here are written to a shared [`RevocationList`] (kept as long as the session's
//!   access tokens could still be presented) and announced on the event bus; this node
//!   applies the others' announcements as they arrive, and re-reads the list every few
//!   seconds and at start, so a node that missed messages (pub/sub is at-most-once, Redis
//!   may restart) still converges.
//! - **Login throttling.** [`RedisLoginThrottle`] applies the per-address rate and the
//!   per-account lockout across all nodes, as a second layer after the node's own.
//! - **Graph pair locks.** Changes to one pair of users (follow, unfollow, block, a
//!   follower's removal...) made on two nodes at once take turns through short Redis
//!   leases, as they already do across the shards of one node.
//! - **The delivery plane.** Events published on any node reach the subscribers of every
//!   node, numbered in one fleet-wide sequence per topic, through one Redis subscription
//!   per node (`selfie_services::plane::RedisBus`).
//!
//! The Redis connections and the bridge tasks run on their own small runtime; shard
//! threads wait on Redis only inside credential checks (login, registration, password
//! re-entry, second-factor and e-mail codes, resets) and while a graph change holds its
//! pair. If Redis is unreachable the node
//! keeps enforcing its own revocations and limits, logs, counts the failures in
//! `selfie_fleet_errors_total` (with `selfie_fleet_revocations_{sent,received}_total`),
//! and catches up when Redis returns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use selfie_services::auth::throttle::{FleetThrottle, RedisLoginThrottle, ThrottleConfig};
use selfie_services::auth::tokens::RevokedSessions;
use selfie_services::graph::{FleetLocks, RedisFleetLocks};
use selfie_services::plane::{Plane, RedisBus};
use selfie_storage::redis::{EventBus, Locks, RevocationList};

use crate::metrics::{FLEET, FleetCounters};

/// Bus topic of revocations: payload is the session id, 8 bytes big-endian.
const TOPIC: &str = "revocations";
/// Most revocations held for Redis while it is unreachable.
const MAX_PENDING: usize = 100_000;
/// How often the shared list is re-read.
const RESYNC: Duration = Duration::from_secs(5);

/// This node's link to the fleet; dropping it stops the bridge.
pub struct Fleet {
    runtime: Option<tokio::runtime::Runtime>,
    throttle: Arc<RedisLoginThrottle>,
    locks: Arc<RedisFleetLocks>,
}

impl Fleet {
    /// Connects to Redis at `url` (keys under `prefix`), loads the fleet's revocations
    /// into `revoked`, connects `plane`'s delivery to the other nodes, and starts the
    /// bridge. Fails if Redis cannot be reached at start.
    pub fn start(
        url: &str,
        prefix: &str,
        revoked: RevokedSessions,
        throttle: ThrottleConfig,
        plane: Arc<Plane>,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("selfie-fleet-io")
            .enable_all()
            .build()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (url, prefix) = (url.to_string(), prefix.to_string());
        let c: &'static FleetCounters = &FLEET;
        runtime.spawn(async move {
            let started = async {
                let (client, conn) = selfie_storage::redis::connect(&url).await?;
                let list = RevocationList::new(conn.clone(), &prefix);
                let bus = EventBus::new(client, conn.clone(), &prefix);
                for id in list.live().await? {
                    revoked.revoke_from_fleet(id);
                }
                anyhow::Ok((conn, list, bus))
            }
            .await;
            match started {
                Ok((conn, list, bus)) => {
                    let locks = Arc::new(RedisFleetLocks::new(Locks::new(conn.clone(), &prefix)));
                    let throttle = Arc::new(RedisLoginThrottle::new(conn, &prefix, throttle));
                    // The delivery plane: this node's one subscription is confirmed
                    // before the node serves, so no event published after it is missed.
                    let (subscribed, ready) = tokio::sync::oneshot::channel();
                    tokio::spawn(selfie_services::plane::run_inbox(
                        bus.clone(),
                        plane.clone(),
                        Some(subscribed),
                    ));
                    if tokio::time::timeout(Duration::from_secs(10), ready)
                        .await
                        .is_err()
                    {
                        let _ = tx.send(Err(anyhow::anyhow!(
                            "cannot subscribe to the fleet's event channel"
                        )));
                        return;
                    }
                    if plane.set_bus(Arc::new(RedisBus::new(bus.clone()))).is_err() {
                        let _ = tx.send(Err(anyhow::anyhow!("the plane already has a bus")));
                        return;
                    }
                    let _ = tx.send(Ok((throttle, locks)));
                    tokio::spawn(outbox(revoked.clone(), list.clone(), bus.clone(), c));
                    tokio::spawn(inbox(revoked.clone(), bus, c));
                    resync(revoked, list, c).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let (throttle, locks) = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(e.context("cannot reach Redis (storage.redis_url)"));
            }
            Err(_) => {
                runtime.shutdown_background();
                anyhow::bail!("Redis (storage.redis_url) did not answer within 10 s");
            }
        };
        Ok(Self {
            runtime: Some(runtime),
            throttle,
            locks,
        })
    }

    /// The fleet-wide pair locks, for [`Graph::with_fleet_locks`](selfie_services::graph::Graph::with_fleet_locks).
    pub fn graph_locks(&self) -> Arc<dyn FleetLocks> {
        self.locks.clone()
    }

    /// The fleet-wide login throttle, for [`LoginThrottle::with_fleet`](selfie_services::auth::throttle::LoginThrottle::with_fleet).
    pub fn login_throttle(&self) -> Arc<dyn FleetThrottle> {
        self.throttle.clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so a fleet may be dropped from async code.
            rt.shutdown_background();
        }
    }
}

/// Shares this node's revocations: into the list first (durable for the retention), then
/// announced. What fails is retried every second, in order.
async fn outbox(
    revoked: RevokedSessions,
    list: RevocationList,
    bus: EventBus,
    counters: &'static FleetCounters,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut local = revoked.local_revocations();
    let mut pending: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    loop {
        // With nothing pending, wait for the next revocation; otherwise wake up within a
        // second to retry what Redis refused.
        let next = if pending.is_empty() {
            Some(local.recv().await)
        } else {
            tokio::time::timeout(Duration::from_secs(1), local.recv())
                .await
                .ok()
        };
        match next {
            Some(Ok(id)) => {
                if pending.len() >= MAX_PENDING {
                    // Redis has been away for very long: the oldest entries' tokens are
                    // expiring anyway; this node still refuses them itself.
                    pending.pop_front();
                    counters.errors.inc();
                }
                pending.push_back(id);
            }
            Some(Err(RecvError::Closed)) => return,
            Some(Err(RecvError::Lagged(n))) => {
                // Over 4096 revocations queued at once: they are in this node's set, and
                // their sessions' refresh tokens are dead in storage; other nodes miss
                // them only until the access tokens expire.
                counters.errors.inc_by(n);
                tracing::error!(missed = n, "fleet: revocations not shared");
            }
            None => {}
        }
        while let Some(&id) = pending.front() {
            let shared = async {
                list.add(id, revoked.retention()).await?;
                bus.publish(TOPIC, &id.to_be_bytes()).await
            }
            .await;
            match shared {
                Ok(_) => {
                    pending.pop_front();
                    counters.sent.inc();
                }
                Err(e) => {
                    counters.errors.inc();
                    tracing::warn!(error = %e, pending = pending.len(), "fleet: cannot share revocations yet");
                    break;
                }
            }
        }
    }
}

/// Applies the other nodes' announcements; resubscribes after a lost connection.
async fn inbox(revoked: RevokedSessions, bus: EventBus, counters: &'static FleetCounters) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match bus.subscribe().await {
            Ok((mut sub, messages)) => {
                let mut messages = std::pin::pin!(messages);
                if let Err(e) = sub.subscribe(TOPIC).await {
                    counters.errors.inc();
                    tracing::warn!(error = %e, "fleet: cannot subscribe to revocations");
                } else {
                    backoff = Duration::from_millis(100);
                    while let Some(m) = messages.next().await {
                        match <[u8; 8]>::try_from(m.payload.as_ref()) {
                            Ok(b) => {
                                let id = u64::from_be_bytes(b);
                                if !revoked.contains(id) {
                                    revoked.revoke_from_fleet(id);
                                    counters.received.inc();
                                }
                            }
                            Err(_) => {
                                counters.errors.inc();
                                tracing::warn!(
                                    len = m.payload.len(),
                                    "fleet: malformed revocation"
                                );
                            }
                        }
                    }
                    tracing::warn!("fleet: revocation subscription lost; resubscribing");
                }
            }
            Err(e) => {
                counters.errors.inc();
                tracing::warn!(error = %e, "fleet: cannot open the event bus");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Re-reads the shared list: whatever pub/sub dropped arrives within [`RESYNC`].
async fn resync(revoked: RevokedSessions, list: RevocationList, counters: &'static FleetCounters) {
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match list.live().await {
            Ok(ids) => {
                let fresh: HashSet<u64> = ids
                    .into_iter()
                    .filter(|&id| !revoked.contains(id))
                    .collect();
                for id in fresh {
                    revoked.revoke_from_fleet(id);
                    counters.received.inc();
                }
            }
            Err(e) => {
                counters.errors.inc();
                tracing::warn!(error = %e, "fleet: cannot read the revocation list");
            }
        }
    }
}
