//! The follow graph: follows, follow requests for private accounts, blocks, mutes,
//! follower and following lists, counts.
//!
//! Every edge is stored twice, once per direction, so that both lists are a partition
//! scan. The forward edge is the source of truth: it is claimed with `insert_if_absent`
//! and released with `delete_if_present` (linearizable on both backends), and only the
//! caller that changed it updates the reverse edge and the counters — so counts stay
//! exact however many follows and unfollows race.
//!
//! The reverse edge follows the forward edge only if changes to one pair of users are
//! applied one at a time: the graph serialises them per pair (a shard-local lock; the
//! edge routes every change to a pair, from either user, to the pair's owner shard).
//! Without it a follow and an unfollow racing on one pair could leave a reverse edge
//! behind (the test for exact counts caught exactly that). On a fleet, the nodes also
//! take turns on a pair through [`FleetLocks`] (Redis leases), which also covers account
//! deletions. On a single node without them one limit remains: a deletion removes edges
//! from the shard that handles it, so a follow racing it on another shard can leave a
//! stale reverse entry — never a wrong count.
//!
//! A block removes follows and pending requests in both directions and hides each
//! side from the other; a blocked user can neither follow nor request. Lists of a private
//! account are for its approved followers (and itself) only.

pub mod lists;
mod wire;

pub use wire::GraphWire;

use std::rc::Rc;

use bytes::Bytes;
use selfie_storage::key::KeyReader;
use selfie_storage::{Cell, Commit, Condition, Cursor, Scan, Store, Table};

use crate::locks::{KeyGuard, KeyedLocks};
pub use crate::tables::graph::blocked_either_way;
use crate::tables::graph::*;
use crate::tables::notifications::{Kind, Note, Notifier, Target};
use crate::tables::{key as k, name_key, users::live_profile};
use crate::{Error, Result};

/// The outcome of a follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowState {
    /// Following now.
    Following,
    /// The account is private: a request waits for approval.
    Requested,
}

fn followers_key() -> Bytes {
    name_key("followers")
}

fn following_key() -> Bytes {
    name_key("following")
}

fn close_friends_key() -> Bytes {
    name_key("close_friends")
}

/// A page of user ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPage {
    /// Ids in order (oldest edge key first).
    pub ids: Vec<u64>,
    /// Where the next page starts.
    pub cursor: Option<Cursor>,
}

/// How `viewer` relates to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relationship {
    /// The viewer follows them.
    pub following: bool,
    /// They follow the viewer.
    pub followed_by: bool,
    /// The viewer has a pending request to them.
    pub requested: bool,
    /// They have a pending request to the viewer.
    pub request_received: bool,
    /// The viewer blocks them.
    pub blocking: bool,
    /// They block the viewer.
    pub blocked_by: bool,
    /// The viewer mutes them.
    pub muting: bool,
    /// The viewer counts them among their close friends.
    pub close_friend: bool,
}

/// Longest timed mute (a longer duration is refused; no duration mutes indefinitely).
pub const MAX_MUTE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Most users in one relationships request.
pub const MAX_RELATIONSHIPS: usize = 100;

/// Most users added or removed in one close-friends update.
pub const MAX_CLOSE_FRIENDS_CHANGE: usize = 100;

/// Longest close-friends list.
pub const MAX_CLOSE_FRIENDS: i64 = 1_000;

/// Locks shared by the nodes of a fleet, so that changes to one pair of users made on two
/// nodes at once still apply one at a time. `acquire` waits a bounded time; `Ok(None)`
/// means the fleet cannot be asked (the node's own lock still applies), `Err` that the
/// lock stayed taken.
pub trait FleetLocks: Send + Sync {
    /// Takes the lock named `name`.
    fn acquire(&self, name: String) -> crate::BoxFuture<'_, Result<Option<Lease>>>;
    /// Releases a lease (best effort: leases also expire by themselves).
    fn release(&self, lease: Lease) -> crate::BoxFuture<'static, ()>;
}

/// A held fleet lock.
#[derive(Debug)]
pub struct Lease {
    /// The lock's name.
    pub name: String,
    /// The holder's token.
    pub token: u64,
}

/// [`FleetLocks`] over Redis leases ([`selfie_storage::redis::Locks`]): 15 s leases —
/// longer than the CQL request timeouts (10 s), so a holder's storage calls end before its
/// lease does — waited for up to 2 s (a graph change takes milliseconds; a longer wait
/// answers `Busy`, which clients retry).
#[derive(Clone)]
pub struct RedisFleetLocks {
    locks: selfie_storage::redis::Locks,
}

impl RedisFleetLocks {
    /// Over `locks`.
    pub fn new(locks: selfie_storage::redis::Locks) -> Self {
        Self { locks }
    }
}

impl FleetLocks for RedisFleetLocks {
    fn acquire(&self, name: String) -> crate::BoxFuture<'_, Result<Option<Lease>>> {
        Box::pin(async move {
            let token: u64 = rand::random();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let mut wait = std::time::Duration::from_millis(1);
            loop {
                match self
                    .locks
                    .try_lock(&name, token, std::time::Duration::from_secs(15))
                    .await
                {
                    Ok(true) => return Ok(Some(Lease { name, token })),
                    Ok(false) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_millis(50));
                    }
                    Ok(false) => return Err(Error::Busy),
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet graph locks unavailable");
                        return Ok(None);
                    }
                }
            }
        })
    }

    fn release(&self, lease: Lease) -> crate::BoxFuture<'static, ()> {
        let locks = self.locks.clone();
        Box::pin(async move {
            if let Err(e) = locks.unlock(&lease.name, lease.token).await {
                tracing::warn!(error = %e, "fleet graph lock not released (it will expire)");
            }
        })
    }
}

/// The graph service of one shard.
pub struct Graph<S> {
    store: S,
    /// One lock per pair of users with an operation in progress.
    pairs: KeyedLocks,
    /// The fleet's locks, when nodes share the store.
    fleet: Option<std::sync::Arc<dyn FleetLocks>>,
    /// Where follows, requests and approvals are told.
    notifier: Notifier,
    /// Told of each new follow edge (follower, followee), once it is stored.
    followed: Option<FollowHook>,
}

/// Told of each new follow edge `(follower, followee)` once it is stored (a follow of a
/// public account, or an approved request); the feed uses it to push a newly followed
/// large account's posts live at once. Called on the shard that made the edge.
pub type FollowHook = Rc<dyn Fn(u64, u64)>;

/// Holds a pair's lock; forgets the lock when no one else waits for it.
struct PairGuard<'a> {
    _local: KeyGuard<'a>,
    lease: Option<(std::sync::Arc<dyn FleetLocks>, Lease)>,
}

impl Drop for PairGuard<'_> {
    fn drop(&mut self) {
        // The lease is handed back first; the shard-local lock goes with the fields.
        if let Some((fleet, lease)) = self.lease.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(fleet.release(lease));
        }
    }
}

impl<S: Store> Graph<S> {
    /// Over `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            pairs: Default::default(),
            fleet: None,
            notifier: Default::default(),
            followed: None,
        }
    }

    /// Tells `hook` of each new follow edge.
    pub fn with_follow_hook(mut self, hook: FollowHook) -> Self {
        self.followed = Some(hook);
        self
    }

    fn edge_made(&self, follower: u64, followee: u64) {
        if let Some(hook) = &self.followed {
            hook(follower, followee);
        }
    }

    /// Raises follow, request and approval notifications through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    fn tell(&self, recipient: u64, actor: u64, kind: Kind) {
        self.notifier.send(Note {
            recipient,
            actor,
            kind,
            target: Target::Account,
        });
    }

    /// Also serialises pair changes with the other nodes of a fleet.
    pub fn with_fleet_locks(mut self, fleet: std::sync::Arc<dyn FleetLocks>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Serialises operations on the pair {a, b} (in either direction): this shard's lock,
    /// then the fleet's.
    async fn lock(&self, a: u64, b: u64) -> Result<PairGuard<'_>> {
        let key = (a.min(b), a.max(b));
        let mut pair = PairGuard {
            _local: self.pairs.lock(key).await,
            lease: None,
        };
        if let Some(fleet) = &self.fleet
            && let Some(lease) = fleet.acquire(format!("pair:{}:{}", key.0, key.1)).await?
        {
            pair.lease = Some((fleet.clone(), lease));
        }
        Ok(pair)
    }

    async fn counted_edge(&self, from: u64, to: u64, add: bool) -> Result<bool> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .to_be_bytes();
        // The forward edge (the condition), the reverse index and both counts as one
        // commit: all or nothing on the embedded store; on CQL the repair pass finishes
        // a commit cut short and recounts the edges.
        let forward = Cell::new(&FOLLOWING, k(from), k(to));
        let reverse = Cell::new(&FOLLOWERS, k(to), k(from));
        let delta = if add { 1 } else { -1 };
        let commit = if add {
            Commit::new()
                .when(Condition::Absent {
                    row: forward,
                    value: Bytes::copy_from_slice(&now),
                    ttl: None,
                })
                .put(reverse, Bytes::copy_from_slice(&now), None)
        } else {
            Commit::new()
                .when(Condition::Present { row: forward })
                .delete(reverse)
        };
        let commit = commit
            .add(
                Cell::new(&COUNTS, k(from), following_key()),
                delta,
                Some((&FOLLOWING, k(from))),
            )
            .add(
                Cell::new(&COUNTS, k(to), followers_key()),
                delta,
                Some((&FOLLOWERS, k(to))),
            );
        let changed = self.store.commit(&commit).await?;
        Ok(changed)
    }

    /// `viewer` follows `target` (or asks to, when the account is private).
    pub async fn follow(&self, viewer: u64, target: u64) -> Result<FollowState> {
        if viewer == target {
            return Err(Error::SelfTarget);
        }
        let _pair = self.lock(viewer, target).await?;
        if blocked_either_way(&self.store, viewer, target).await? {
            return Err(Error::Blocked);
        }
        let profile = live_profile(&self.store, target)
            .await?
            .ok_or(Error::NotFound("user"))?;
        // An account being deleted follows no one (its sessions live until the end).
        if live_profile(&self.store, viewer).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        if self
            .store
            .get(&FOLLOWING, &k(viewer), &k(target))
            .await?
            .is_some()
        {
            return Ok(FollowState::Following);
        }
        if profile.private {
            if self
                .store
                .insert_if_absent(&REQUESTS_OUT, &k(viewer), &k(target), b"", None)
                .await?
            {
                self.store
                    .put(&REQUESTS_IN, &k(target), &k(viewer), b"", None)
                    .await?;
                self.tell(target, viewer, Kind::FollowRequest);
            }
            return Ok(FollowState::Requested);
        }
        if self.counted_edge(viewer, target, true).await? {
            self.tell(target, viewer, Kind::Follow);
            self.edge_made(viewer, target);
        }
        Ok(FollowState::Following)
    }

    /// `viewer` stops following `target` (and withdraws a pending request).
    pub async fn unfollow(&self, viewer: u64, target: u64) -> Result<()> {
        let _pair = self.lock(viewer, target).await?;
        self.counted_edge(viewer, target, false).await?;
        self.withdraw(viewer, target).await.map(|_| ())
    }

    /// `me` approves `requester`'s request.
    pub async fn approve(&self, me: u64, requester: u64) -> Result<()> {
        let _pair = self.lock(me, requester).await?;
        if !self
            .store
            .delete_if_present(&REQUESTS_IN, &k(me), &k(requester))
            .await?
        {
            return Err(Error::NotFound("follow request"));
        }
        self.store
            .delete(&REQUESTS_OUT, &k(requester), &k(me))
            .await?;
        if blocked_either_way(&self.store, me, requester).await? {
            return Err(Error::Blocked);
        }
        // A requester whose account is being deleted does not become a follower.
        if live_profile(&self.store, requester).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        if self.counted_edge(requester, me, true).await? {
            self.tell(requester, me, Kind::FollowAccepted);
            self.edge_made(requester, me);
        }
        Ok(())
    }

    /// `me` denies `requester`'s request.
    pub async fn deny(&self, me: u64, requester: u64) -> Result<()> {
        let _pair = self.lock(me, requester).await?;
        if !self
            .store
            .delete_if_present(&REQUESTS_IN, &k(me), &k(requester))
            .await?
        {
            return Err(Error::NotFound("follow request"));
        }
        self.store
            .delete(&REQUESTS_OUT, &k(requester), &k(me))
            .await?;
        Ok(())
    }

    /// `me` withdraws a request to `target`.
    pub async fn cancel_request(&self, me: u64, target: u64) -> Result<()> {
        let _pair = self.lock(me, target).await?;
        if self.withdraw(me, target).await? {
            Ok(())
        } else {
            Err(Error::NotFound("follow request"))
        }
    }

    /// Removes `me`'s request to `target`, if any (the caller holds the pair's lock).
    async fn withdraw(&self, me: u64, target: u64) -> Result<bool> {
        if !self
            .store
            .delete_if_present(&REQUESTS_OUT, &k(me), &k(target))
            .await?
        {
            return Ok(false);
        }
        self.store.delete(&REQUESTS_IN, &k(target), &k(me)).await?;
        Ok(true)
    }

    /// `me` blocks `target`: follows and requests both ways end; each is hidden from the
    /// other.
    pub async fn block(&self, me: u64, target: u64) -> Result<()> {
        if me == target {
            return Err(Error::SelfTarget);
        }
        let _pair = self.lock(me, target).await?;
        self.store
            .put(&BLOCKS, &k(me), &k(target), b"", None)
            .await?;
        self.store
            .put(&BLOCKED_BY, &k(target), &k(me), b"", None)
            .await?;
        self.counted_edge(me, target, false).await?;
        self.counted_edge(target, me, false).await?;
        for (a, b) in [(me, target), (target, me)] {
            if self
                .store
                .delete_if_present(&REQUESTS_OUT, &k(a), &k(b))
                .await?
            {
                self.store.delete(&REQUESTS_IN, &k(b), &k(a)).await?;
            }
            self.drop_close_friend(a, b).await?;
        }
        Ok(())
    }

    /// `me` unblocks `target` (nothing else is restored).
    pub async fn unblock(&self, me: u64, target: u64) -> Result<()> {
        let _pair = self.lock(me, target).await?;
        self.store.delete(&BLOCKS, &k(me), &k(target)).await?;
        self.store.delete(&BLOCKED_BY, &k(target), &k(me)).await?;
        Ok(())
    }

    /// `me` mutes `target` (their content leaves `me`'s feeds; nothing is revealed to
    /// them), for `duration` or until unmuted. A muted user must exist and be visible.
    pub async fn mute(
        &self,
        me: u64,
        target: u64,
        duration: Option<std::time::Duration>,
    ) -> Result<()> {
        if me == target {
            return Err(Error::SelfTarget);
        }
        if duration.is_some_and(|d| d.is_zero() || d > MAX_MUTE) {
            return Err(Error::InvalidArgument {
                field: "duration_ms",
            });
        }
        if blocked_either_way(&self.store, me, target).await?
            || live_profile(&self.store, target).await?.is_none()
        {
            return Err(Error::NotFound("user"));
        }
        self.store
            .put(&MUTES, &k(me), &k(target), b"", duration)
            .await?;
        Ok(())
    }

    /// `me` removes `follower` from their followers (the follower is not told).
    pub async fn remove_follower(&self, me: u64, follower: u64) -> Result<()> {
        if me == follower {
            return Err(Error::SelfTarget);
        }
        let _pair = self.lock(me, follower).await?;
        self.counted_edge(follower, me, false).await?;
        Ok(())
    }

    /// Whom `me` blocks.
    pub async fn blocks(&self, me: u64, limit: usize, cursor: Option<Cursor>) -> Result<IdPage> {
        self.page(&BLOCKS, me, limit, cursor).await
    }

    /// Whom `me` mutes (expired timed mutes are gone).
    pub async fn mutes(&self, me: u64, limit: usize, cursor: Option<Cursor>) -> Result<IdPage> {
        self.page(&MUTES, me, limit, cursor).await
    }

    /// How `viewer` relates to each of `others` (at most [`MAX_RELATIONSHIPS`]); a block
    /// by the other user is not revealed (it reads as no relationship).
    pub async fn relationships(
        &self,
        viewer: u64,
        others: &[u64],
    ) -> Result<Vec<(u64, Relationship)>> {
        if others.len() > MAX_RELATIONSHIPS {
            return Err(Error::InvalidArgument { field: "user_ids" });
        }
        let mut out = Vec::with_capacity(others.len());
        for &other in others {
            let rel = self.relationship(viewer, other).await?;
            // A block by the other side is not revealed: it reads as no relationship.
            let rel = if rel.blocked_by {
                // What the viewer did themselves stays; what comes from the other side
                // (following back, their requests, the block) is not shown.
                Relationship {
                    blocking: rel.blocking,
                    muting: rel.muting,
                    close_friend: rel.close_friend,
                    ..Relationship::default()
                }
            } else {
                rel
            };
            out.push((other, rel));
        }
        Ok(out)
    }

    /// `me` unmutes `target`.
    pub async fn unmute(&self, me: u64, target: u64) -> Result<()> {
        self.store.delete(&MUTES, &k(me), &k(target)).await?;
        Ok(())
    }

    /// (followers, following) of `user`.
    pub async fn counts(&self, user: u64) -> Result<(i64, i64)> {
        Ok((
            self.store
                .counter_get(&COUNTS, &k(user), &followers_key())
                .await?,
            self.store
                .counter_get(&COUNTS, &k(user), &following_key())
                .await?,
        ))
    }

    /// How `viewer` relates to `other`.
    pub async fn relationship(&self, viewer: u64, other: u64) -> Result<Relationship> {
        let has = |t: &'static Table, a: u64, b: u64| {
            let store = &self.store;
            async move { Ok::<_, Error>(store.get(t, &k(a), &k(b)).await?.is_some()) }
        };
        Ok(Relationship {
            following: has(&FOLLOWING, viewer, other).await?,
            followed_by: has(&FOLLOWING, other, viewer).await?,
            requested: has(&REQUESTS_OUT, viewer, other).await?,
            request_received: has(&REQUESTS_IN, viewer, other).await?,
            blocking: has(&BLOCKS, viewer, other).await?,
            blocked_by: has(&BLOCKS, other, viewer).await?,
            muting: has(&MUTES, viewer, other).await?,
            close_friend: has(&CLOSE_FRIENDS, viewer, other).await?,
        })
    }

    async fn may_see_lists(&self, viewer: u64, user: u64) -> Result<()> {
        if blocked_either_way(&self.store, viewer, user).await? {
            return Err(Error::NotFound("user"));
        }
        let profile = live_profile(&self.store, user)
            .await?
            .ok_or(Error::NotFound("user"))?;
        if profile.private
            && viewer != user
            && self
                .store
                .get(&FOLLOWING, &k(viewer), &k(user))
                .await?
                .is_none()
        {
            return Err(Error::Forbidden(
                "this account's lists are for its followers",
            ));
        }
        Ok(())
    }

    async fn page(
        &self,
        table: &'static Table,
        user: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<IdPage> {
        let page = self
            .store
            .scan(table, &k(user), &Scan::all(limit).after(cursor))
            .await?;
        let ids = page
            .rows
            .iter()
            .filter_map(|r| KeyReader::new(&r.clustering).u64())
            .collect();
        Ok(IdPage {
            ids,
            cursor: page.cursor,
        })
    }

    /// Followers of `user`, as `viewer` may see them.
    pub async fn followers(
        &self,
        viewer: u64,
        user: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<IdPage> {
        self.may_see_lists(viewer, user).await?;
        self.page(&FOLLOWERS, user, limit, cursor).await
    }

    /// Whom `user` follows, as `viewer` may see it.
    pub async fn following(
        &self,
        viewer: u64,
        user: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<IdPage> {
        self.may_see_lists(viewer, user).await?;
        self.page(&FOLLOWING, user, limit, cursor).await
    }

    /// Removes every edge of a deleted account, in both directions, keeping the other
    /// users' counts exact. Returns the number of edges removed.
    pub async fn remove_user(&self, user: u64) -> Result<usize> {
        let mut removed = 0;
        for (table, outgoing) in [(&FOLLOWING, true), (&FOLLOWERS, false)] {
            loop {
                let page = self.page(table, user, 500, None).await?;
                if page.ids.is_empty() {
                    break;
                }
                for other in page.ids {
                    let (from, to) = if outgoing {
                        (user, other)
                    } else {
                        (other, user)
                    };
                    let _pair = self.lock(from, to).await?;
                    if !self.counted_edge(from, to, false).await? {
                        // A reverse edge without its forward edge: drop it too.
                        self.store.delete(table, &k(user), &k(other)).await?;
                    }
                    removed += 1;
                }
            }
        }
        for (table, mirror) in [
            (&REQUESTS_OUT, &REQUESTS_IN),
            (&REQUESTS_IN, &REQUESTS_OUT),
            (&BLOCKS, &BLOCKED_BY),
            (&BLOCKED_BY, &BLOCKS),
            (&MUTES, &MUTES),
        ] {
            loop {
                let page = self.page(table, user, 500, None).await?;
                if page.ids.is_empty() {
                    break;
                }
                for other in page.ids {
                    self.store.delete(table, &k(user), &k(other)).await?;
                    if !std::ptr::eq(table, mirror) {
                        self.store.delete(mirror, &k(other), &k(user)).await?;
                    }
                    removed += 1;
                }
            }
        }
        removed += lists::remove_user(&self.store, user).await?;
        // Close friends: the user's own list, and their place in others' lists (whose
        // counts drop with it).
        for (table, outgoing) in [(&CLOSE_FRIENDS, true), (&CLOSE_FRIEND_OF, false)] {
            loop {
                let page = self.page(table, user, 500, None).await?;
                if page.ids.is_empty() {
                    break;
                }
                for other in page.ids {
                    let (owner, friend) = if outgoing {
                        (user, other)
                    } else {
                        (other, user)
                    };
                    if !self.drop_close_friend(owner, friend).await? {
                        self.store.delete(table, &k(user), &k(other)).await?;
                    }
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Removes `friend` from `owner`'s close friends, if there.
    async fn drop_close_friend(&self, owner: u64, friend: u64) -> Result<bool> {
        let removed = self
            .store
            .delete_if_present(&CLOSE_FRIENDS, &k(owner), &k(friend))
            .await?;
        if removed {
            self.store
                .delete(&CLOSE_FRIEND_OF, &k(friend), &k(owner))
                .await?;
            self.store
                .counter_add(&COUNTS, &k(owner), &close_friends_key(), -1)
                .await?;
        }
        Ok(removed)
    }

    /// Adds users to and removes users from `me`'s close friends (who see posts and
    /// stories shared with close friends). Added users must exist and have no block
    /// with `me`; the list holds at most [`MAX_CLOSE_FRIENDS`]. Nobody is told.
    pub async fn update_close_friends(&self, me: u64, add: &[u64], remove: &[u64]) -> Result<()> {
        if add.len() > MAX_CLOSE_FRIENDS_CHANGE || remove.len() > MAX_CLOSE_FRIENDS_CHANGE {
            return Err(Error::InvalidArgument { field: "add" });
        }
        if add.contains(&me) {
            return Err(Error::SelfTarget);
        }
        for &friend in add {
            if blocked_either_way(&self.store, me, friend).await?
                || live_profile(&self.store, friend).await?.is_none()
            {
                return Err(Error::NotFound("user"));
            }
        }
        // One update of a user's list at a time (the edge routes them to one shard), so the
        // size limit holds.
        let _own = self.lock(me, me).await?;
        for &friend in remove {
            self.drop_close_friend(me, friend).await?;
        }
        for &friend in add {
            let now = self
                .store
                .counter_get(&COUNTS, &k(me), &close_friends_key())
                .await?;
            if now >= MAX_CLOSE_FRIENDS {
                return Err(Error::InvalidArgument { field: "add" });
            }
            if self
                .store
                .insert_if_absent(&CLOSE_FRIENDS, &k(me), &k(friend), b"", None)
                .await?
            {
                self.store
                    .put(&CLOSE_FRIEND_OF, &k(friend), &k(me), b"", None)
                    .await?;
                self.store
                    .counter_add(&COUNTS, &k(me), &close_friends_key(), 1)
                    .await?;
                // Written, then checked again: a block racing this add either is seen
                // here or runs its own removal after the entry exists.
                if blocked_either_way(&self.store, me, friend).await? {
                    self.drop_close_friend(me, friend).await?;
                    return Err(Error::NotFound("user"));
                }
            }
        }
        Ok(())
    }

    /// `me`'s close friends.
    pub async fn close_friends(
        &self,
        me: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<IdPage> {
        self.page(&CLOSE_FRIENDS, me, limit, cursor).await
    }

    /// Pending requests `me` sent.
    pub async fn requests_sent(
        &self,
        me: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<IdPage> {
        self.page(&REQUESTS_OUT, me, limit, cursor).await
    }

    /// Pending requests to `me`.
    pub async fn requests(&self, me: u64, limit: usize, cursor: Option<Cursor>) -> Result<IdPage> {
        self.page(&REQUESTS_IN, me, limit, cursor).await
    }
}
