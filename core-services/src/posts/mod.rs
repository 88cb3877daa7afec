//! Posts: create (text, media ids, hashtags and mentions parsed), edit with visible
//! history, delete; comments with one level of replies; reactions; reposts; per-post
//! audience and reply policy.
//!
//! Who may read a post is decided in one place ([`Posts::can_read`]): the author always;
//! nobody across a block or for a deleted author; otherwise by the post's audience —
//! public (for a private author: approved followers only), followers, mentioned only,
//! close friends (the author's list, followers or not). Everything that touches a post
//! (reading, history, comments, reactions, reposts) goes through it, and a post the viewer
//! may not read is `NotFound` — its existence is not revealed.
//!
//! Who may comment on a readable post is the stricter of the post's reply policy and the
//! author's `who_can_comment` setting; a mention only links (and later notifies) a user
//! whose `who_can_mention` setting admits the author.
//!
//! Media (at most [`MAX_MEDIA`] objects) must be ready objects of the author's
//! (`tables::media::check`); a post records its use of them, which lets its readers
//! download them, and a deleted post releases them.

mod comments;
mod interactions;
mod wire;

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyReader;
use selfie_storage::{Cell, Clock, Commit, Condition, Cursor, Scan, Store};
use serde::{Deserialize, Serialize};

use crate::locks::KeyedLocks;
use crate::plane::{Delivery, Topic};
pub use crate::tables::Audience;
use crate::tables::notifications::{Kind, Note, Notifier, Target};
use crate::tables::posts::*;
pub use comments::Comment;
pub use interactions::Reaction;
use selfie_protocol::control::SubscriptionKind;
pub use wire::PostsWire;
pub(crate) use wire::{Viewer, post_t};

use crate::tables::{self, decode, encode, key as k, name_key};
use crate::{Error, Result};

/// Most emoji kinds listed with a post's reactions.
pub const MAX_REACTION_KINDS: usize = 50;

/// Most posts in one batch read.
pub const MAX_BATCH: usize = 100;

/// Longest post, in characters.
pub const MAX_POST_CHARS: usize = 500;
/// Longest comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 500;
/// Most media objects on one post.
pub const MAX_MEDIA: usize = 10;

/// Who may comment on a post (besides its author, who always may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReplyPolicy {
    /// Anyone who can read it.
    #[default]
    Everyone,
    /// The author's followers.
    Followers,
    /// The users mentioned in it.
    Mentioned,
    /// Nobody.
    Nobody,
}

/// A new post, for [`Posts::publish`].
#[derive(Debug, Clone)]
pub struct NewPost {
    /// Text (may be empty when there is media).
    pub text: String,
    /// Media objects, in display order.
    pub media_ids: Vec<u64>,
    /// Audience.
    pub audience: Audience,
    /// Who may comment.
    pub reply_policy: ReplyPolicy,
    /// The quoted post, for a quote post.
    pub quote_of: Option<u64>,
    /// Marked sensitive by the author.
    pub sensitive: bool,
    /// The client's key for this create: a retry with the same key (within
    /// [`IDEMPOTENCY_TTL`]) returns the first post instead of making another.
    pub idempotency_key: Option<String>,
}

impl NewPost {
    /// A public text post.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            media_ids: Vec::new(),
            audience: Audience::Public,
            reply_policy: ReplyPolicy::Everyone,
            quote_of: None,
            sensitive: false,
            idempotency_key: None,
        }
    }
}

/// Hashtags of one post indexed for hashtag feeds (the first ones).
pub const MAX_INDEXED_HASHTAGS: usize = 10;
/// Longest hashtag, in characters.
pub const MAX_HASHTAG_CHARS: usize = 100;

/// A hashtag as the index keys it (lower case, no `#`), or `None` when `tag` is not one.
pub fn normalize_hashtag(tag: &str) -> Option<String> {
    let t = tag.strip_prefix('#').unwrap_or(tag).to_lowercase();
    let ok = !t.is_empty()
        && t.chars().count() <= MAX_HASHTAG_CHARS
        && t.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.');
    ok.then_some(t)
}

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The row remembering `user`'s create of `kind` with `key`.
pub(crate) fn idempotency_cell(user: u64, kind: &str, key: &str) -> Result<Cell> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(Error::InvalidArgument {
            field: "idempotency_key",
        });
    }
    let clustering = selfie_storage::key::KeyBuilder::new()
        .str(kind)
        .str(key)
        .build();
    Ok(Cell::new(&IDEMPOTENCY, k(user), clustering))
}

/// Changes to a post, for [`Posts::edit_with`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PostEdit {
    /// New text.
    pub text: Option<String>,
    /// New media.
    pub media_ids: Option<Vec<u64>>,
    /// New sensitive flag.
    pub sensitive: Option<bool>,
}

/// A post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Id (time-ordered).
    pub post_id: u64,
    /// Author.
    pub author_id: u64,
    /// Text.
    pub text: String,
    /// `#hashtags`, lower case, in order of appearance.
    pub hashtags: Vec<String>,
    /// Mentioned users that exist.
    pub mentions: Vec<u64>,
    /// Audience.
    pub audience: Audience,
    /// The quoted post, for a quote post.
    pub quote_of: Option<u64>,
    /// The reposted post, for a repost.
    pub repost_of: Option<u64>,
    /// Creation time.
    pub created_at_ms: u64,
    /// Last edit, 0 when never edited.
    pub edited_at_ms: u64,
    /// Deleted posts keep their id (replies and quotes point at them) and nothing else.
    pub deleted: bool,
    /// Media objects, in display order.
    #[serde(default)]
    pub media_ids: Vec<u64>,
    /// Who may comment.
    #[serde(default)]
    pub reply_policy: ReplyPolicy,
    /// Marked sensitive by the author.
    #[serde(default)]
    pub sensitive: bool,
    /// How many times it was edited.
    #[serde(default)]
    pub edit_count: u32,
}

/// An earlier version of an edited post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The text then.
    pub text: String,
    /// The media then.
    #[serde(default)]
    pub media_ids: Vec<u64>,
    /// When it was replaced.
    pub replaced_at_ms: u64,
}

/// How a viewer stands towards an author, for [`Posts::can_read`].
#[derive(Debug, Clone, Copy)]
enum AuthorView {
    /// The viewer is the author.
    Own,
    /// A block either way, or a deleted author: nothing is visible.
    Hidden,
    /// Anyone else.
    Other {
        private: bool,
        follows: bool,
        close_friend: bool,
    },
}

impl AuthorView {
    /// The rule: the author always; nobody across a block or for a deleted author; for a
    /// private author only followers; otherwise by the post's audience.
    fn allows(self, viewer: u64, post: &Post) -> bool {
        match self {
            AuthorView::Other { .. } if post.deleted => false,
            _ => self.admits(viewer, post.audience, &post.mentions),
        }
    }

    /// The same rule for any audience (stories share it).
    fn admits(self, viewer: u64, audience: Audience, mentions: &[u64]) -> bool {
        match self {
            AuthorView::Own => true,
            AuthorView::Hidden => false,
            AuthorView::Other {
                private,
                follows,
                close_friend,
            } => match audience {
                Audience::MentionedOnly => mentions.contains(&viewer),
                Audience::CloseFriends => close_friend,
                Audience::Followers => follows,
                Audience::Public => !private || follows,
            },
        }
    }
}

fn counter(which: &str) -> Bytes {
    name_key(which)
}

/// `#tags` (lower case, deduplicated) and `@names` (as written) in `text`.
pub fn parse_tags(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut tags, mut names) = (Vec::new(), Vec::new());
    for word in text.split(|c: char| c.is_whitespace()) {
        let clean = |w: &str| -> String {
            w.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect::<String>()
                .trim_end_matches('.')
                .to_string()
        };
        if let Some(t) = word.strip_prefix('#') {
            let t = clean(t).to_lowercase();
            if !t.is_empty() && !tags.contains(&t) {
                tags.push(t);
            }
        } else if let Some(n) = word.strip_prefix('@') {
            let n = clean(n);
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    (tags, names)
}

/// The posts service of one shard.
pub struct Posts<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: std::cell::RefCell<IdGenerator>,
    /// One change at a time per (post, user) for reactions and reposts (the edge routes
    /// a post's interactions to one shard), so per-emoji counts stay exact on a node. The
    /// totals are claimed with insert-if-absent and stay exact across nodes too; two
    /// nodes changing one user's reaction at once could only skew the per-emoji split.
    locks: KeyedLocks,
    /// Where counter changes are published, for the post's subscribers.
    delivery: Option<Rc<Delivery>>,
    /// Where new posts and reposts are handed for fan-out, when feeds run.
    fanout: Option<FanoutHook>,
    /// Where reactions, comments, replies, mentions, reposts and quotes are told.
    notifier: Notifier,
    /// Where the media of deleted posts is released, when media runs.
    media_release: Option<tables::media::Release>,
}

/// How posts hand new posts to the feed's fan-out: a job row written in the post's own
/// commit (so a fan-out is never lost to a crash between the two), and a wake-up for the
/// worker that owns the job partition.
#[derive(Clone)]
pub struct FanoutHook {
    /// The worker's job partition (`tables::feed::worker`).
    pub worker: Bytes,
    /// Tells the worker that a job waits.
    pub wake: Rc<dyn Fn(tables::feed::Job)>,
}

/// What a viewer may see of one author's posts (read once, applied to many posts).
#[derive(Debug, Clone, Copy)]
pub struct Access(AuthorView);

impl Access {
    /// Whether `viewer` may read `post` (by this author): the single read rule.
    pub fn allows(self, viewer: u64, post: &Post) -> bool {
        self.0.allows(viewer, post)
    }

    /// Whether `viewer` may see something of this author's for `audience` (a story).
    pub fn admits(self, viewer: u64, audience: Audience, mentions: &[u64]) -> bool {
        self.0.admits(viewer, audience, mentions)
    }

    /// Whether a block (either way) or a deleted author hides everything.
    pub fn hidden(self) -> bool {
        matches!(self.0, AuthorView::Hidden)
    }

    /// Whether the viewer follows the author (the author counts as followed by
    /// themselves; `false` when [`Access::hidden`], which shows nothing anyway).
    pub fn follows(self) -> bool {
        match self.0 {
            AuthorView::Own => true,
            AuthorView::Hidden => false,
            AuthorView::Other { follows, .. } => follows,
        }
    }
}

/// A post's counters, in the order of `PostCounts`.
#[derive(Debug, Clone, Copy)]
enum Count {
    Reactions,
    Comments,
    Reposts,
    Quotes,
}

impl Count {
    const ALL: [Count; 4] = [
        Count::Reactions,
        Count::Comments,
        Count::Reposts,
        Count::Quotes,
    ];

    fn name(self) -> &'static str {
        match self {
            Count::Reactions => "reactions",
            Count::Comments => "comments",
            Count::Reposts => "reposts",
            Count::Quotes => "quotes",
        }
    }
}

impl<S: Store + 'static> Posts<S> {
    /// Over `store`; `node`/`shard` make its ids unique.
    pub fn new(store: S, clock: Arc<dyn Clock>, node: u16, shard: u16) -> Result<Self> {
        let ids =
            IdGenerator::new(node, shard).map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: std::cell::RefCell::new(ids),
            locks: Default::default(),
            delivery: None,
            fanout: None,
            notifier: Default::default(),
            media_release: None,
        })
    }

    /// Raises notifications through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Releases the media of deleted posts through `release`.
    pub fn with_media_release(mut self, release: tables::media::Release) -> Self {
        self.media_release = Some(release);
        self
    }

    /// Tells `recipient` that `actor` did `kind` to `target`.
    fn tell(&self, recipient: u64, actor: u64, kind: Kind, target: Target) {
        self.notifier.send(Note {
            recipient,
            actor,
            kind,
            target,
        });
    }

    /// `actor` engaged with `author`'s post or comment: counted for ranking (the "For
    /// you" feed's affinity) and told to the author.
    async fn engaged(&self, author: u64, actor: u64, kind: Kind, target: Target) -> Result<()> {
        if author != actor {
            self.store
                .counter_add(&AFFINITY, &k(actor), &k(author), 1)
                .await?;
        }
        self.tell(author, actor, kind, target);
        Ok(())
    }

    /// Hands every new post and repost to a feed's fan-out through `hook`.
    pub fn with_fanout(mut self, hook: FanoutHook) -> Self {
        self.fanout = Some(hook);
        self
    }

    /// Adds the fan-out job of `post` to its commit, when feeds run.
    fn with_job(&self, commit: Commit, post: &Post) -> Commit {
        match &self.fanout {
            Some(h) => {
                let (cell, value) = Self::job(post).row(&h.worker);
                commit.put(cell, value, None)
            }
            None => commit,
        }
    }

    /// Wakes the fan-out worker for a committed post.
    fn fan_out(&self, post: &Post) {
        if let Some(h) = &self.fanout {
            (h.wake)(Self::job(post));
        }
    }

    fn job(post: &Post) -> tables::feed::Job {
        tables::feed::Job {
            id: post.post_id,
            author: post.author_id,
            kind: tables::feed::JobKind::Post,
        }
    }

    /// The hashtags of a post that its hashtag feeds list.
    fn indexed(tags: &[String]) -> impl Iterator<Item = &String> {
        tags.iter()
            .filter(|t| t.chars().count() <= MAX_HASHTAG_CHARS)
            .take(MAX_INDEXED_HASHTAGS)
    }

    /// What `viewer` may see of `author`'s posts.
    pub async fn access(&self, viewer: u64, author: u64) -> Result<Access> {
        Ok(Access(self.author_view(viewer, author).await?))
    }

    /// [`Posts::access`] with the author's profile already read (`None`: no profile
    /// row), for a caller that checks many viewers of one author.
    pub(crate) async fn access_given(
        &self,
        viewer: u64,
        author: u64,
        profile: Option<&tables::users::Profile>,
    ) -> Result<Access> {
        Ok(Access(
            self.author_view_given(viewer, author, profile).await?,
        ))
    }

    /// A stored post (or its tombstone), unchecked: for services that apply
    /// [`Access::allows`] themselves.
    pub async fn stored(&self, post_id: u64) -> Result<Option<Post>> {
        self.load(post_id).await
    }

    /// Publishes counter changes to the post's subscribers through `delivery`.
    pub fn with_delivery(mut self, delivery: Rc<Delivery>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// The delivery plane (`Unavailable` when the service runs without one).
    fn delivery(&self) -> Result<&Rc<Delivery>> {
        self.delivery
            .as_ref()
            .ok_or(Error::Unavailable("live updates"))
    }

    /// The cell of one of a post's counters.
    fn count_cell(post_id: u64, which: Count) -> Cell {
        Cell::new(&COUNTS, k(post_id), counter(which.name()))
    }

    /// The cell of a user's posts-and-reposts counter, which counts `USER_POSTS` rows.
    fn author_posts_cell(author: u64) -> Cell {
        Cell::new(&AUTHOR_COUNTS, k(author), counter("posts"))
    }

    /// Tells a post's subscribers that one of its counters moved by `delta`. The counter
    /// is durable first (written in the change's [`Commit`]); the event is best effort (a
    /// lost one makes the subscribers resync, and the counter is right on the next read).
    async fn notify(&self, post_id: u64, which: Count, delta: i32) -> Result<()> {
        let Some(delivery) = &self.delivery else {
            return Ok(());
        };
        let mut change = [0; 4];
        change[which as usize] = delta;
        // The counts are read and the event numbered on the topic's owner shard, under
        // the post's counts lock: each event then carries counts at least as new as every
        // event before it, and the last one the final counts.
        let owner = delivery.owner(Self::topic(post_id));
        let announced = if owner == delivery.shard() {
            self.announce(post_id, change).await
        } else {
            let shards = delivery.plane().shards();
            shards
                .invoke_on(owner, move |posts: Rc<Posts<S>>| async move {
                    posts.announce(post_id, change).await
                })
                .await
                .and_then(|r| r)
        };
        if let Err(e) = announced {
            tracing::debug!(error = %e, post_id, "counter change not announced");
            delivery.plane().lost(Self::topic(post_id));
        }
        Ok(())
    }

    /// The topic of a post's live counters.
    fn topic(post_id: u64) -> Topic {
        Topic::new(SubscriptionKind::Post, post_id)
    }

    /// The lock key serialising a post's counter reads with its events.
    fn counts_lock(post_id: u64) -> (u64, u64) {
        (post_id, u64::MAX)
    }

    /// On the topic's owner shard: reads the counts and publishes the change with them.
    async fn announce(&self, post_id: u64, change: [i32; 4]) -> Result<()> {
        let delivery = self.delivery()?;
        let _counts = self.locks.lock(Self::counts_lock(post_id)).await;
        let counts = self.counts(post_id).await?;
        let frame = wire::counts_event(delivery, post_id, counts, change, None)?;
        delivery.publish(Self::topic(post_id), frame).await
    }

    /// On the topic's owner shard: the counts and the last event they include.
    async fn snapshot(&self, post_id: u64) -> Result<([i64; 4], u64)> {
        let delivery = self.delivery()?;
        let _counts = self.locks.lock(Self::counts_lock(post_id)).await;
        let counts = self.counts(post_id).await?;
        Ok((counts, delivery.current_seq(Self::topic(post_id))))
    }

    /// A post's counters: reactions, comments, reposts, quotes.
    pub async fn counts(&self, post_id: u64) -> Result<[i64; 4]> {
        let mut out = [0; 4];
        for (slot, which) in out.iter_mut().zip(Count::ALL) {
            *slot = self
                .store
                .counter_get(&COUNTS, &k(post_id), &counter(which.name()))
                .await?;
        }
        Ok(out)
    }

    /// The id a create remembered under `cell` made, if any.
    pub(super) async fn first_created(&self, cell: &Cell) -> Result<Option<u64>> {
        let v = self
            .store
            .get(cell.table, &cell.partition, &cell.clustering)
            .await?;
        Ok(v.as_deref().and_then(tables::id_value))
    }

    /// The post a concurrent create made (on CQL its rows follow its claim, so wait for
    /// them a little).
    async fn load_created(&self, post_id: u64) -> Result<Post> {
        for _ in 0..20 {
            if let Some(p) = self.load(post_id).await? {
                return Ok(p);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(Error::Busy)
    }

    fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next(self.clock.now_ms()).0
    }

    async fn load(&self, post_id: u64) -> Result<Option<Post>> {
        self.store
            .get(&POSTS, &k(post_id), &[])
            .await?
            .map(|b| decode("post", &b))
            .transpose()
    }

    async fn save(&self, post: &Post) -> Result<()> {
        let b = encode("post", post)?;
        self.store
            .put(&POSTS, &k(post.post_id), &[], &b, None)
            .await?;
        Ok(())
    }

    /// The users `author` may mention among `names`: existing, not deleted, with no
    /// block between them (a blocked user is neither notified nor shown the post), and
    /// whose `who_can_mention` setting admits the author.
    async fn resolve_mentions(&self, author: u64, names: &[String]) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for name in names {
            if let Some(id) = tables::auth::user_by_username(&self.store, name).await? {
                let live = tables::users::live_profile(&self.store, id)
                    .await?
                    .is_some();
                if live
                    && !ids.contains(&id)
                    && !tables::graph::blocked_either_way(&self.store, author, id).await?
                    && self.admits(id, author, |s| s.who_can_mention).await?
                {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// Whether `owner`'s setting (picked by `which`) admits `actor`.
    async fn admits(
        &self,
        owner: u64,
        actor: u64,
        which: fn(&tables::users::Settings) -> tables::users::Permission,
    ) -> Result<bool> {
        let settings = tables::users::settings(&self.store, owner).await?;
        tables::users::permits(&self.store, owner, actor, which(&settings)).await
    }

    fn check_media(ids: &[u64]) -> Result<Vec<u64>> {
        let mut out: Vec<u64> = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == 0 || out.contains(&id) {
                return Err(Error::InvalidArgument { field: "media_ids" });
            }
            out.push(id);
        }
        if out.len() > MAX_MEDIA {
            return Err(Error::InvalidArgument { field: "media_ids" });
        }
        Ok(out)
    }

    fn check_text(text: &str, has_media: bool) -> Result<()> {
        if (text.trim().is_empty() && !has_media) || text.chars().count() > MAX_POST_CHARS {
            return Err(Error::InvalidArgument { field: "text" });
        }
        Ok(())
    }

    /// What decides `viewer`'s access to `author`'s posts, read once per author (a
    /// page of one author's posts shares it).
    async fn author_view(&self, viewer: u64, author: u64) -> Result<AuthorView> {
        if author == viewer {
            return Ok(AuthorView::Own);
        }
        let profile = tables::users::profile(&self.store, author).await?;
        self.author_view_given(viewer, author, profile.as_ref())
            .await
    }

    async fn author_view_given(
        &self,
        viewer: u64,
        author: u64,
        profile: Option<&tables::users::Profile>,
    ) -> Result<AuthorView> {
        if author == viewer {
            return Ok(AuthorView::Own);
        }
        if profile.is_some_and(|p| p.deleted)
            || tables::graph::blocked_either_way(&self.store, viewer, author).await?
        {
            return Ok(AuthorView::Hidden);
        }
        let follows = tables::graph::follows(&self.store, viewer, author).await?;
        Ok(AuthorView::Other {
            private: profile.is_some_and(|p| p.private),
            follows,
            close_friend: tables::graph::is_close_friend(&self.store, author, viewer).await?,
        })
    }

    /// Whether `viewer` may read `post` (the single authorization rule for posts).
    pub async fn can_read(&self, viewer: u64, post: &Post) -> Result<bool> {
        Ok(self
            .author_view(viewer, post.author_id)
            .await?
            .allows(viewer, post))
    }

    async fn readable(&self, viewer: u64, post_id: u64) -> Result<Post> {
        let post = self.load(post_id).await?.ok_or(Error::NotFound("post"))?;
        if self.can_read(viewer, &post).await? {
            Ok(post)
        } else {
            Err(Error::NotFound("post"))
        }
    }

    /// A readable post that is not deleted (its author sees the tombstone, but nobody
    /// edits, quotes, comments on or reacts to it).
    async fn live(&self, viewer: u64, post_id: u64) -> Result<Post> {
        let post = self.readable(viewer, post_id).await?;
        if post.deleted {
            return Err(Error::NotFound("post"));
        }
        Ok(post)
    }

    /// Publishes a text post (or a quote of `quote_of`); see [`Posts::publish`].
    pub async fn create(
        &self,
        author: u64,
        text: &str,
        audience: Audience,
        quote_of: Option<u64>,
    ) -> Result<Post> {
        self.publish(
            author,
            NewPost {
                audience,
                quote_of,
                ..NewPost::text(text)
            },
        )
        .await
    }

    /// Publishes a post (or a quote of `quote_of`, which the author must be able to read).
    pub async fn publish(&self, author: u64, new: NewPost) -> Result<Post> {
        let remembered = match new.idempotency_key.as_deref() {
            Some(key) => Some(idempotency_cell(author, "post", key)?),
            None => None,
        };
        if let Some(cell) = &remembered
            && let Some(first) = self.first_created(cell).await?
        {
            return self.load_created(first).await;
        }
        tables::users::refuse_deleted(&self.store, author).await?;
        let media_ids = Self::check_media(&new.media_ids)?;
        Self::check_text(&new.text, !media_ids.is_empty())?;
        self.own_media(author, &media_ids).await?;
        let quoted = match new.quote_of {
            Some(q) => Some(self.live(author, q).await?.author_id),
            None => None,
        };
        let (hashtags, names) = parse_tags(&new.text);
        let post = Post {
            post_id: self.next_id(),
            author_id: author,
            hashtags,
            mentions: self.resolve_mentions(author, &names).await?,
            text: new.text,
            audience: new.audience,
            quote_of: new.quote_of,
            repost_of: None,
            created_at_ms: self.clock.now_ms(),
            edited_at_ms: 0,
            deleted: false,
            media_ids,
            reply_policy: new.reply_policy,
            sensitive: new.sensitive,
            edit_count: 0,
        };
        // The post, its place in the author's listing and the counters, as one commit:
        // all or nothing with one fsync on the embedded store; on CQL a commit cut short
        // is finished by the repair pass, which recounts the author's posts.
        // With an idempotency key, claiming the key is the commit's condition: of two
        // concurrent retries, one creates and the other returns its post.
        let listed = Cell::new(&USER_POSTS, k(author), k(post.post_id));
        let mut commit = match &remembered {
            Some(cell) => Commit::new()
                .when(Condition::Absent {
                    row: cell.clone(),
                    value: k(post.post_id),
                    ttl: None,
                })
                .put(listed, Bytes::new(), None),
            None => Commit::new().when(Condition::Absent {
                row: listed,
                value: Bytes::new(),
                ttl: None,
            }),
        };
        commit = commit
            .put(
                Cell::new(&POSTS, k(post.post_id), Bytes::new()),
                encode("post", &post)?,
                None,
            )
            .add(
                Self::author_posts_cell(author),
                1,
                Some((&USER_POSTS, k(author))),
            );
        if let Some(q) = post.quote_of {
            commit = commit.add(Self::count_cell(q, Count::Quotes), 1, None);
        }
        // The media's uses first: a use by a post that never commits grants nothing
        // (viewers are checked against the post).
        tables::media::attach(
            &self.store,
            &post.media_ids,
            tables::media::Use::Post(post.post_id),
            "media_ids",
        )
        .await?;
        let mut commit = self.with_job(commit, &post);
        for tag in Self::indexed(&post.hashtags) {
            commit = commit.put(
                Cell::new(&BY_HASHTAG, tables::name_key(tag), k(post.post_id)),
                k(author),
                None,
            );
        }
        if !self.store.commit(&commit).await? {
            let Some(cell) = &remembered else {
                return Err(Error::Internal("a fresh post id was already taken"));
            };
            // A concurrent retry with this key won.
            let first = self.first_created(cell).await?.ok_or(Error::Busy)?;
            return self.load_created(first).await;
        }
        self.fan_out(&post);
        for &m in &post.mentions {
            // Only those who may read it learn of it.
            if self.can_read(m, &post).await? {
                self.tell(m, author, Kind::Mention, Target::Post(post.post_id));
            }
        }
        if let Some(q) = post.quote_of {
            if let Some(quoted_author) = quoted {
                self.engaged(quoted_author, author, Kind::Quote, Target::Post(q))
                    .await?;
            }
            self.notify(q, Count::Quotes, 1).await?;
        }
        Ok(post)
    }

    /// Edits the text of the author's own post; see [`Posts::edit_with`].
    pub async fn edit(&self, author: u64, post_id: u64, text: &str) -> Result<Post> {
        let edit = PostEdit {
            text: Some(text.to_string()),
            ..PostEdit::default()
        };
        self.edit_with(author, post_id, edit).await
    }

    /// Edits the author's own post; the previous text and media join the visible history.
    pub async fn edit_with(&self, author: u64, post_id: u64, edit: PostEdit) -> Result<Post> {
        let mut post = self.live(author, post_id).await?;
        if post.author_id != author || post.repost_of.is_some() {
            return Err(Error::Forbidden("only the author may do this"));
        }
        let media_ids = match &edit.media_ids {
            Some(ids) => Self::check_media(ids)?,
            None => post.media_ids.clone(),
        };
        let text = edit.text.unwrap_or_else(|| post.text.clone());
        Self::check_text(&text, !media_ids.is_empty())?;
        // New media must be the author's; replaced media stays in use by the history.
        let added: Vec<u64> = media_ids
            .iter()
            .copied()
            .filter(|m| !post.media_ids.contains(m))
            .collect();
        self.own_media(author, &added).await?;
        tables::media::attach(
            &self.store,
            &added,
            tables::media::Use::Post(post_id),
            "media_ids",
        )
        .await?;
        let now = self.clock.now_ms();
        let old = encode(
            "post version",
            &Version {
                text: post.text.clone(),
                media_ids: post.media_ids.clone(),
                replaced_at_ms: now,
            },
        )?;
        self.store
            .put(&HISTORY, &k(post_id), &k(now), &old, None)
            .await?;
        let (hashtags, names) = parse_tags(&text);
        post.mentions = self.resolve_mentions(author, &names).await?;
        post.text = text;
        // Tags the edit adds join their feeds (a dropped tag's row stays; hashtag feeds
        // check the post's current tags).
        for tag in Self::indexed(&hashtags) {
            if !post.hashtags.contains(tag) {
                self.store
                    .put(
                        &BY_HASHTAG,
                        &tables::name_key(tag),
                        &k(post_id),
                        &k(author),
                        None,
                    )
                    .await?;
            }
        }
        post.hashtags = hashtags;
        post.media_ids = media_ids;
        post.sensitive = edit.sensitive.unwrap_or(post.sensitive);
        post.edited_at_ms = now;
        post.edit_count = post.edit_count.saturating_add(1);
        self.save(&post).await?;
        Ok(post)
    }

    /// Earlier versions of a post the viewer may read, oldest first.
    pub async fn history(&self, viewer: u64, post_id: u64) -> Result<Vec<Version>> {
        self.readable(viewer, post_id).await?;
        let page = self
            .store
            .scan(&HISTORY, &k(post_id), &Scan::all(1000))
            .await?;
        page.rows
            .iter()
            .map(|r| decode("post version", &r.value))
            .collect()
    }

    /// Deletes the author's own post (text and history go; the id stays as a tombstone).
    pub async fn delete(&self, author: u64, post_id: u64) -> Result<()> {
        let mut post = self.readable(author, post_id).await?;
        if post.author_id != author {
            return Err(Error::Forbidden("only the author may do this"));
        }
        // Deleting a repost is undoing it (its bookkeeping lives with the original).
        if let Some(original) = post.repost_of
            && !post.deleted
        {
            return self.undo_repost(author, original).await;
        }
        let mut media = std::mem::take(&mut post.media_ids);
        post.deleted = true;
        post.text.clear();
        post.hashtags.clear();
        post.mentions.clear();
        // Tombstone, listing and counter together (see `publish`).
        let commit = Commit::new()
            .when(Condition::Present {
                row: Cell::new(&USER_POSTS, k(author), k(post_id)),
            })
            .put(
                Cell::new(&POSTS, k(post_id), Bytes::new()),
                encode("post", &post)?,
                None,
            )
            .add(
                Self::author_posts_cell(author),
                -1,
                Some((&USER_POSTS, k(author))),
            );
        if !self.store.commit(&commit).await? {
            // Already out of the listing (a retry): the tombstone alone.
            self.save(&post).await?;
        }
        loop {
            let page = self
                .store
                .scan(&HISTORY, &k(post_id), &Scan::all(500))
                .await?;
            if page.rows.is_empty() {
                break;
            }
            for r in page.rows {
                if let Ok(v) = decode::<Version>("post version", &r.value) {
                    for m in v.media_ids {
                        if !media.contains(&m) {
                            media.push(m);
                        }
                    }
                }
                self.store
                    .delete(&HISTORY, &k(post_id), &r.clustering)
                    .await?;
            }
        }
        // The post's media is released: objects nothing else uses are deleted.
        tables::media::detach(&self.store, &media, tables::media::Use::Post(post_id)).await?;
        if !media.is_empty()
            && let Some(release) = &self.media_release
        {
            release(media);
        }
        Ok(())
    }

    /// Deletes every post and undoes every repost of `author` (account deletion); how
    /// many went. Idempotent: a retry goes on where a failure stopped.
    pub async fn erase_author(&self, author: u64) -> Result<usize> {
        let mut erased = 0;
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&USER_POSTS, &k(author), &Scan::all(100).after(cursor))
                .await?;
            for r in &page.rows {
                let Some(post_id) = KeyReader::new(&r.clustering).u64() else {
                    continue;
                };
                match self.delete(author, post_id).await {
                    Ok(()) | Err(Error::NotFound(_)) => erased += 1,
                    Err(e) => return Err(e),
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(erased),
            }
        }
    }

    /// Checks that `ids` are ready media objects of `author`.
    async fn own_media(&self, author: u64, ids: &[u64]) -> Result<()> {
        use tables::media::Kind;
        if ids.is_empty() {
            return Ok(());
        }
        let kinds = [Kind::Image, Kind::Gif, Kind::Video];
        tables::media::check(&self.store, author, ids, &kinds, "media_ids").await?;
        Ok(())
    }

    /// A post as the viewer may see it.
    pub async fn get(&self, viewer: u64, post_id: u64) -> Result<Post> {
        self.readable(viewer, post_id).await
    }

    /// The posts among `ids` the viewer may read, in request order (at most
    /// [`MAX_BATCH`]; the others are left out).
    pub async fn get_many(&self, viewer: u64, ids: &[u64]) -> Result<Vec<Post>> {
        if ids.len() > MAX_BATCH {
            return Err(Error::InvalidArgument { field: "post_ids" });
        }
        let mut out: Vec<Post> = Vec::with_capacity(ids.len());
        for &id in ids {
            if out.iter().any(|p| p.post_id == id) {
                continue;
            }
            match self.readable(viewer, id).await {
                Ok(p) => out.push(p),
                Err(Error::NotFound("post")) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// How many posts (and reposts) `author` has.
    pub async fn posts_count(&self, author: u64) -> Result<i64> {
        author_count(&self.store, author).await
    }

    /// The author's posts the viewer may read, newest first.
    pub async fn by_user(
        &self,
        viewer: u64,
        author: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Post>, Option<Cursor>)> {
        let page = self
            .store
            .scan(
                &USER_POSTS,
                &k(author),
                &Scan::all(limit).reversed().after(cursor),
            )
            .await?;
        let view = self.author_view(viewer, author).await?;
        let mut out = Vec::new();
        for r in &page.rows {
            let Some(id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            if let Some(p) = self.load(id).await?
                && view.allows(viewer, &p)
            {
                out.push(p);
            }
        }
        Ok((out, page.cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashtags_and_mentions_are_parsed() {
        let (tags, names) =
            parse_tags("Sunset at #Harbour with @ana_k and @ben. #harbour #film! @ana_k");
        assert_eq!(tags, vec!["harbour", "film"]);
        assert_eq!(names, vec!["ana_k", "ben"]);
        assert_eq!(parse_tags("# @ nothing"), (vec![], vec![]));
    }
}
