//! In-app notifications: follows, follow requests and approvals, reactions, comments,
//! replies, mentions, reposts, quotes, story reactions and mentions — aggregated, with an
//! unread count, mark-read, per-kind preferences, live pushes, and a seam for device push.
//!
//! - **Raising.** Services raise notes through a [`Notifier`] the registry wires; it hands
//!   each to the recipient's owner shard ([`Notifications::record`]), fire-and-forget: a
//!   notification never fails the action that caused it (a full mailbox or a crash can
//!   lose one; the action itself is durable).
//! - **Aggregation.** Notes of one kind about one target (reactions, comments, reposts,
//!   quotes on a post; replies to a comment; reactions to a story; follows and follow
//!   requests of one day) form a group with one notification: "A, B and 5 others liked
//!   your post". A new actor moves the group's notification to the top with a new id;
//!   an actor already counted is not counted twice (like, unlike, like). Once the
//!   recipient has read the group's notification, the next actor starts a new one.
//!   Mentions and approvals are never grouped. The group row is versioned
//!   (compare-and-set), so concurrent actors on different nodes each count once.
//! - **Rules.** Nothing is recorded across a block either way, from a muted account, or
//!   of a kind the recipient turned off; mentions reach only users who may read what
//!   mentions them. Blocks and mutes made later hide the actors a notification shows
//!   (its count keeps the others it does not name); a notification with no actor left,
//!   or about a deleted post or comment or an expired story, is not shown or counted.
//! - **Read state.** A read position (every notification up to an id, never past the
//!   newest) and read flags by id (`notifications_read`, apart from the inbox rows a
//!   growing group rewrites); the unread count counts what the list would show, up to
//!   [`MAX_UNREAD_COUNTED`] (clients show "99+").
//! - **Live.** A new or grown notification is pushed on the recipient's `Notifications`
//!   topic with the unread count. Device push (APNs, FCM, Web Push) is a seam: tokens are
//!   stored, and a [`DevicePush`] given to the service is told of each notification for
//!   users with tokens; no sender ships yet.

mod wire;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use selfie_protocol::control::SubscriptionKind;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::{KeyBuilder, KeyReader};
use selfie_storage::{Clock, Cursor, Scan, Store};
use serde::{Deserialize, Serialize};

use crate::plane::{Delivery, Topic};
use crate::tables::notifications::{GROUP_ACTORS, GROUPS, INBOX, PUSH_TOKENS, READ, STATE};
pub use crate::tables::notifications::{Kind, Note, Notifier, Target};
use crate::tables::{self, decode, encode, key as k};
use crate::{Error, Result};
pub use wire::NotificationsWire;

/// Actors shown by name on one notification (the rest are counted).
pub const SHOWN_ACTORS: usize = 3;
/// Unread notifications counted exactly; clients show more as "99+".
pub const MAX_UNREAD_COUNTED: usize = 100;
/// Most notifications marked read by id in one request.
pub const MAX_MARK_IDS: usize = 100;
/// Most device push tokens per user.
pub const MAX_PUSH_TOKENS: usize = 20;
/// Longest push token.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Attempts at one group update before giving up (`Busy`).
const ATTEMPTS: usize = 8;

/// One notification as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Id (time-ordered; a grown group gets a new one).
    pub notification_id: u64,
    /// What happened.
    pub kind: Kind,
    /// About what.
    pub target: Target,
    /// The newest actors, newest first (at most [`SHOWN_ACTORS`]).
    pub actors: Vec<u64>,
    /// How many actors in all.
    pub actors_count: u32,
    /// When the newest actor acted.
    pub created_at_ms: u64,
    /// Marked read by id.
    pub read: bool,
    /// The group it belongs to.
    group: Vec<u8>,
}

/// A group's current notification.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    notification_id: u64,
    generation: u32,
    actors: Vec<u64>,
    actors_count: u32,
}

/// Per-kind switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    /// The kind.
    pub kind: Kind,
    /// Shown in the app.
    pub in_app: bool,
    /// Sent to devices (when device push ships).
    pub push: bool,
    /// Sent by e-mail (when e-mail digests ship).
    pub email: bool,
}

/// A user's read position and preferences (versioned).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    read_up_to: u64,
    in_app_off: Vec<Kind>,
    push_off: Vec<Kind>,
    email_on: Vec<Kind>,
}

/// A device's push registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushToken {
    /// `apns`, `fcm` or `webpush`.
    pub platform: String,
    /// The provider's token (or Web Push endpoint).
    pub token: String,
    /// The app's device id.
    pub device_id: String,
    /// Web Push keys (p256dh, auth), when `platform` is `webpush`.
    pub web_push_keys: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where device push plugs in: told of every new or grown notification of a user who
/// has tokens and has push on for its kind.
pub trait DevicePush {
    /// Sends `notification` to `tokens` (best effort).
    fn send(&self, user: u64, tokens: &[PushToken], notification: &Notification);
}

/// A page of notifications.
#[derive(Debug, Clone)]
pub struct NotificationsPage {
    /// Newest first.
    pub notifications: Vec<Notification>,
    /// Where the next page starts.
    pub next: Option<Cursor>,
    /// Unread notifications (at most [`MAX_UNREAD_COUNTED`]).
    pub unread: u32,
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Follow => "follow",
        Kind::FollowRequest => "follow_request",
        Kind::FollowAccepted => "follow_accepted",
        Kind::Reaction => "reaction",
        Kind::Comment => "comment",
        Kind::Reply => "reply",
        Kind::Mention => "mention",
        Kind::Repost => "repost",
        Kind::Quote => "quote",
        Kind::StoryReaction => "story_reaction",
        Kind::StoryMention => "story_mention",
    }
}

fn target_id(t: Target) -> u64 {
    match t {
        Target::Account => 0,
        Target::Post(id) | Target::Comment(id) | Target::Story(id) => id,
    }
}

/// The group a note joins: by kind and target; follows by day; mentions and approvals
/// alone (by actor).
fn group_key(note: &Note, now_ms: u64) -> Vec<u8> {
    let b = KeyBuilder::new()
        .str(kind_name(note.kind))
        .u64(target_id(note.target));
    let extra = match note.kind {
        Kind::Follow | Kind::FollowRequest => now_ms / 86_400_000,
        Kind::Mention | Kind::StoryMention | Kind::FollowAccepted => note.actor,
        _ => 0,
    };
    b.u64(extra).build().to_vec()
}

/// The services' notifications of one shard.
pub struct Notifications<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: RefCell<IdGenerator>,
    delivery: Option<Rc<Delivery>>,
    device_push: Option<Rc<dyn DevicePush>>,
    limits: limits::Limits,
}

mod limits {
    use std::num::NonZeroU32;

    use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

    use crate::{Error, Result};

    /// Per-user buckets of one shard for the user's own requests.
    pub(super) struct Limits {
        requests: DefaultKeyedRateLimiter<u64>,
        calls: std::cell::Cell<u32>,
    }

    impl Default for Limits {
        fn default() -> Self {
            let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
            Self {
                requests: RateLimiter::keyed(Quota::per_minute(n(600)).allow_burst(n(60))),
                calls: Default::default(),
            }
        }
    }

    impl Limits {
        pub(super) fn check(&self, user: u64) -> Result<()> {
            let calls = self.calls.get().wrapping_add(1);
            self.calls.set(calls);
            if calls.is_multiple_of(4096) {
                self.requests.retain_recent();
                self.requests.shrink_to_fit();
            }
            self.requests
                .check_key(&user)
                .map_err(|not_until| Error::RateLimited(crate::rate::wait_until(&not_until)))
        }
    }
}

impl<S: Store + Clone + 'static> Notifications<S> {
    /// The notifications service of shard `shard` of node `node`.
    pub fn new(store: S, clock: Arc<dyn Clock>, node: u16, shard: u16) -> Result<Self> {
        let ids =
            IdGenerator::new(node, shard).map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: RefCell::new(ids),
            delivery: None,
            device_push: None,
            limits: Default::default(),
        })
    }

    /// Pushes new notifications to the recipients' subscribers through `delivery`.
    pub fn with_delivery(mut self, delivery: Rc<Delivery>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Tells `push` of notifications for users with device tokens.
    pub fn with_device_push(mut self, push: Rc<dyn DevicePush>) -> Self {
        self.device_push = Some(push);
        self
    }

    pub(crate) fn delivery(&self) -> Result<&Rc<Delivery>> {
        self.delivery
            .as_ref()
            .ok_or(Error::Unavailable("live updates"))
    }

    /// Spends one of `user`'s requests.
    pub(crate) fn spend(&self, user: u64) -> Result<()> {
        self.limits.check(user)
    }

    async fn state(&self, user: u64) -> Result<(Option<Bytes>, State)> {
        let raw = self.store.get(&STATE, &k(user), &[]).await?;
        let state = match &raw {
            Some(b) => decode("notification state", b)?,
            None => State::default(),
        };
        Ok((raw, state))
    }

    /// Changes `user`'s state with `f`, versioned (concurrent devices each apply once).
    async fn update_state(&self, user: u64, f: impl Fn(&mut State)) -> Result<State> {
        for _ in 0..ATTEMPTS {
            let (raw, mut state) = self.state(user).await?;
            f(&mut state);
            let new = encode("notification state", &state)?;
            let done = match raw {
                Some(old) => {
                    self.store
                        .compare_and_set(&STATE, &k(user), &[], &old, Some(&new), None)
                        .await?
                }
                None => {
                    self.store
                        .insert_if_absent(&STATE, &k(user), &[], &new, None)
                        .await?
                }
            };
            if done {
                return Ok(state);
            }
        }
        Err(Error::Busy)
    }

    /// Whether `user` should hear from `actor` now: no block either way, no mute.
    async fn hears_from(&self, user: u64, actor: u64) -> Result<bool> {
        Ok(
            !tables::graph::blocked_either_way(&self.store, user, actor).await?
                && self
                    .store
                    .get(&tables::graph::MUTES, &k(user), &k(actor))
                    .await?
                    .is_none(),
        )
    }

    /// Records `note` in its recipient's inbox (on the recipient's owner shard): a new
    /// notification, or its group's grown and moved to the top. Returns the notification,
    /// or `None` when the rules leave it out or the actor was already counted.
    pub async fn record(&self, note: Note) -> Result<Option<Notification>> {
        if note.actor == note.recipient
            || tables::users::live_profile(&self.store, note.recipient)
                .await?
                .is_none()
            || !self.hears_from(note.recipient, note.actor).await?
        {
            return Ok(None);
        }
        let (_, state) = self.state(note.recipient).await?;
        if state.in_app_off.contains(&note.kind) {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let gkey = group_key(&note, now);
        let user = k(note.recipient);
        for _ in 0..ATTEMPTS {
            let raw = self.store.get(&GROUPS, &user, &gkey).await?;
            let group: Option<Group> = raw
                .as_deref()
                .map(|b| decode("notification group", b))
                .transpose()?;
            // The group's notification, if the recipient has not read it yet.
            let unread = match &group {
                Some(g) if g.notification_id > self.state(note.recipient).await?.1.read_up_to => {
                    let read = self
                        .store
                        .get(&READ, &user, &k(g.notification_id))
                        .await?
                        .is_some();
                    self.load(note.recipient, g.notification_id)
                        .await?
                        .filter(|_| !read)
                        .map(|_| g)
                }
                _ => None,
            };
            let generation = match (&group, unread) {
                (_, Some(g)) => g.generation,
                (Some(g), None) => g.generation.wrapping_add(1),
                (None, None) => 0,
            };
            let claim = KeyBuilder::new()
                .bytes(&gkey)
                .u64(u64::from(generation))
                .u64(note.actor)
                .build();
            if !self
                .store
                .insert_if_absent(&GROUP_ACTORS, &user, &claim, b"", None)
                .await?
            {
                // Counted already in this generation (like, unlike, like).
                return Ok(None);
            }
            let (mut actors, count) = match unread {
                Some(g) => (g.actors.clone(), g.actors_count),
                None => (Vec::new(), 0),
            };
            actors.retain(|&a| a != note.actor);
            actors.insert(0, note.actor);
            actors.truncate(SHOWN_ACTORS);
            let notification = Notification {
                notification_id: self.ids.borrow_mut().next(now).0,
                kind: note.kind,
                target: note.target,
                actors,
                actors_count: count.saturating_add(1),
                created_at_ms: now,
                read: false,
                group: gkey.clone(),
            };
            let next = Group {
                notification_id: notification.notification_id,
                generation,
                actors: notification.actors.clone(),
                actors_count: notification.actors_count,
            };
            let row = k(notification.notification_id);
            self.store
                .put(
                    &INBOX,
                    &user,
                    &row,
                    &encode("notification", &notification)?,
                    None,
                )
                .await?;
            let new = encode("notification group", &next)?;
            let swapped = match &raw {
                Some(old) => {
                    self.store
                        .compare_and_set(&GROUPS, &user, &gkey, old, Some(&new), None)
                        .await?
                }
                None => {
                    self.store
                        .insert_if_absent(&GROUPS, &user, &gkey, &new, None)
                        .await?
                }
            };
            if !swapped {
                // Another actor moved the group first: undo and count again.
                self.store.delete(&INBOX, &user, &row).await?;
                self.store
                    .delete_if_present(&GROUP_ACTORS, &user, &claim)
                    .await?;
                continue;
            }
            if let Some(g) = unread {
                self.store
                    .delete(&INBOX, &user, &k(g.notification_id))
                    .await?;
            }
            self.announce(note.recipient, &notification, &state).await;
            return Ok(Some(notification));
        }
        Err(Error::Busy)
    }

    async fn load(&self, user: u64, id: u64) -> Result<Option<Notification>> {
        self.store
            .get(&INBOX, &k(user), &k(id))
            .await?
            .map(|b| decode("notification", &b))
            .transpose()
    }

    /// Pushes a new notification to the recipient's subscribers and the device seam.
    async fn announce(&self, user: u64, n: &Notification, state: &State) {
        if let Some(delivery) = &self.delivery {
            let unread = self.unread(user).await.unwrap_or(0);
            let topic = Topic::new(SubscriptionKind::Notifications, user);
            let published = match wire::event(delivery, n.clone(), unread) {
                Ok(frame) => delivery.publish(topic, frame).await,
                Err(e) => Err(e),
            };
            if let Err(e) = published {
                tracing::debug!(error = %e, "notification not published");
            }
        }
        if let Some(push) = &self.device_push
            && !state.push_off.contains(&n.kind)
        {
            match self.push_tokens(user).await {
                Ok(tokens) if !tokens.is_empty() => push.send(user, &tokens, n),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "push tokens not read"),
            }
        }
    }

    /// `user`'s unread notifications as the list shows them, counted up to
    /// [`MAX_UNREAD_COUNTED`].
    pub async fn unread(&self, user: u64) -> Result<u32> {
        let (_, state) = self.state(user).await?;
        let page = self
            .store
            .scan(&INBOX, &k(user), &Scan::all(MAX_UNREAD_COUNTED).reversed())
            .await?;
        let mut hears = HashMap::new();
        let mut n = 0;
        for r in &page.rows {
            let note: Notification = decode("notification", &r.value)?;
            if note.notification_id <= state.read_up_to {
                break;
            }
            if let Some(shown) = self.shown(user, note, &state, &mut hears).await?
                && !shown.read
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A stored notification as `user` may see it now: read or not, with the actors
    /// they no longer hear from (a later block or mute) left out — the count keeps the
    /// actors not shown — and nothing when none is left or the target is gone.
    async fn shown(
        &self,
        user: u64,
        mut n: Notification,
        state: &State,
        hears: &mut HashMap<u64, bool>,
    ) -> Result<Option<Notification>> {
        n.read = n.notification_id <= state.read_up_to
            || self
                .store
                .get(&READ, &k(user), &k(n.notification_id))
                .await?
                .is_some();
        let mut visible = Vec::with_capacity(n.actors.len());
        for &a in &n.actors {
            let ok = match hears.get(&a) {
                Some(&ok) => ok,
                None => {
                    let ok = self.hears_from(user, a).await?;
                    hears.insert(a, ok);
                    ok
                }
            };
            if ok {
                visible.push(a);
            }
        }
        let hidden = (n.actors.len() - visible.len()) as u32;
        if visible.is_empty() || !self.target_exists(n.target).await? {
            return Ok(None);
        }
        n.actors = visible;
        n.actors_count = n.actors_count.saturating_sub(hidden).max(1);
        Ok(Some(n))
    }

    /// A page of `user`'s notifications, newest first, as the rules allow them now.
    pub async fn list(
        &self,
        user: u64,
        unread_only: bool,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<NotificationsPage> {
        let (_, state) = self.state(user).await?;
        let mut out = Vec::with_capacity(limit);
        let mut hears = HashMap::new();
        let mut cursor = cursor;
        let mut next = None;
        // At most a few pages of rows for one page of answers; past that the page is
        // short and says where to go on.
        'pages: for _ in 0..4 {
            let page = self
                .store
                .scan(
                    &INBOX,
                    &k(user),
                    &Scan::all(limit).reversed().after(cursor.clone()),
                )
                .await?;
            for r in &page.rows {
                let looked = Cursor(r.clustering.clone());
                let n: Notification = decode("notification", &r.value)?;
                if let Some(n) = self.shown(user, n, &state, &mut hears).await?
                    && !(unread_only && n.read)
                {
                    out.push(n);
                }
                cursor = Some(looked);
                if out.len() == limit {
                    next = cursor.clone();
                    break 'pages;
                }
            }
            if page.cursor.is_none() {
                next = None;
                break;
            }
            next = cursor.clone();
        }
        Ok(NotificationsPage {
            notifications: out,
            next,
            unread: self.unread(user).await?,
        })
    }

    /// Whether what a notification is about still exists (deleted posts take theirs).
    async fn target_exists(&self, target: Target) -> Result<bool> {
        match target {
            Target::Post(id) => {
                /// The one field of a stored post this needs.
                #[derive(Deserialize)]
                struct Tombstone {
                    #[serde(default)]
                    deleted: bool,
                }
                let stored = self.store.get(&tables::posts::POSTS, &k(id), &[]).await?;
                Ok(match stored {
                    Some(b) => !decode::<Tombstone>("post", &b)?.deleted,
                    None => false,
                })
            }
            Target::Story(id) => Ok(tables::stories::load(&self.store, id)
                .await?
                .is_some_and(|s| s.expires_at_ms > self.clock.now_ms())),
            Target::Comment(id) => Ok(self
                .store
                .get(&tables::posts::COMMENT_POSTS, &k(id), &[])
                .await?
                .is_some()),
            Target::Account => Ok(true),
        }
    }

    /// Marks read every notification up to `up_to_id` (0: none; at most the newest the
    /// user has) and those in `ids`.
    pub async fn mark_read(&self, user: u64, up_to_id: u64, ids: &[u64]) -> Result<u32> {
        if ids.len() > MAX_MARK_IDS {
            return Err(Error::InvalidArgument { field: "ids" });
        }
        if up_to_id != 0 {
            // Never past the newest notification: a position in the future would mark
            // notifications read before they exist.
            let newest = self
                .store
                .scan(&INBOX, &k(user), &Scan::all(1).reversed())
                .await?
                .rows
                .first()
                .and_then(|r| KeyReader::new(&r.clustering).u64())
                .unwrap_or(0);
            let up_to = up_to_id.min(newest);
            self.update_state(user, |s| s.read_up_to = s.read_up_to.max(up_to))
                .await?;
        }
        for &id in ids {
            // A flag apart from the row: a group growing meanwhile replaces the row, and
            // the flag of the old one is harmless.
            if self.load(user, id).await?.is_some() {
                self.store.put(&READ, &k(user), &k(id), b"", None).await?;
            }
        }
        self.unread(user).await
    }

    /// `user`'s preferences, one per kind.
    pub async fn preferences(&self, user: u64) -> Result<Vec<Preference>> {
        let (_, s) = self.state(user).await?;
        Ok(Kind::ALL
            .iter()
            .map(|&kind| Preference {
                kind,
                in_app: !s.in_app_off.contains(&kind),
                push: !s.push_off.contains(&kind),
                email: s.email_on.contains(&kind),
            })
            .collect())
    }

    /// Sets `user`'s preferences for the kinds given.
    pub async fn set_preferences(&self, user: u64, prefs: &[Preference]) -> Result<()> {
        if prefs.len() > Kind::ALL.len() * 2 {
            return Err(Error::InvalidArgument {
                field: "preferences",
            });
        }
        self.update_state(user, |s| {
            for p in prefs {
                let set = |list: &mut Vec<Kind>, on: bool| {
                    list.retain(|&k| k != p.kind);
                    if on {
                        list.push(p.kind);
                    }
                };
                set(&mut s.in_app_off, !p.in_app);
                set(&mut s.push_off, !p.push);
                set(&mut s.email_on, p.email);
            }
        })
        .await?;
        Ok(())
    }

    fn token_key(platform: &str, token: &str) -> Bytes {
        KeyBuilder::new().str(platform).str(token).build()
    }

    /// Registers a device push token (at most [`MAX_PUSH_TOKENS`] per user; the same
    /// token again replaces its registration).
    pub async fn register_push_token(&self, user: u64, t: PushToken) -> Result<()> {
        tables::users::refuse_deleted(&self.store, user).await?;
        if t.token.is_empty() || t.token.len() > MAX_TOKEN_BYTES {
            return Err(Error::InvalidArgument { field: "token" });
        }
        if t.device_id.len() > 256 {
            return Err(Error::InvalidArgument { field: "device_id" });
        }
        if let Some((p256dh, auth)) = &t.web_push_keys
            && (p256dh.len() != 65 || auth.len() != 16)
        {
            return Err(Error::InvalidArgument {
                field: "web_push_p256dh",
            });
        }
        let key = Self::token_key(&t.platform, &t.token);
        let known = self
            .store
            .get(&PUSH_TOKENS, &k(user), &key)
            .await?
            .is_some();
        if !known && self.push_tokens(user).await?.len() >= MAX_PUSH_TOKENS {
            return Err(Error::Forbidden("too many push tokens; remove one first"));
        }
        self.store
            .put(
                &PUSH_TOKENS,
                &k(user),
                &key,
                &encode("push token", &t)?,
                None,
            )
            .await?;
        Ok(())
    }

    /// Removes a device push token.
    pub async fn unregister_push_token(
        &self,
        user: u64,
        platform: &str,
        token: &str,
    ) -> Result<()> {
        self.store
            .delete(&PUSH_TOKENS, &k(user), &Self::token_key(platform, token))
            .await?;
        Ok(())
    }

    /// `user`'s push tokens.
    pub async fn push_tokens(&self, user: u64) -> Result<Vec<PushToken>> {
        let page = self
            .store
            .scan(&PUSH_TOKENS, &k(user), &Scan::all(MAX_PUSH_TOKENS + 1))
            .await?;
        page.rows
            .iter()
            .map(|r| decode("push token", &r.value))
            .collect()
    }
}

impl<S: Store + Clone + 'static> crate::workflows::Erase for Notifications<S> {
    /// A deleted account's inbox, groups, read marks, state and preferences, and device
    /// push tokens.
    fn erase_user(&self, user: u64) -> futures::future::LocalBoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut rows = 0;
            for table in [&INBOX, &GROUPS, &GROUP_ACTORS, &READ, &STATE, &PUSH_TOKENS] {
                rows += tables::clear_partition(&self.store, table, &k(user)).await?;
            }
            Ok(rows)
        })
    }
}
