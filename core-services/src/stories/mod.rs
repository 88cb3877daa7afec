//! Stories: photos and videos that vanish after 24 hours, a tray of the accounts whose
//! stories the reader has not seen, viewers, reactions, replies by chat, highlights.
//!
//! - **Life.** A story lives [`STORY_TTL`] (or less, when asked) and its rows carry that
//!   TTL in storage: the story, its place among the author's stories and its viewers
//!   vanish with it. Reads also compare the expiry with
//!   the clock, so an expired story is gone everywhere at once, whatever the storage's
//!   purge schedule (and with an injected clock in tests). A tray row lives as long as
//!   the author's longest-lived story that reached it. A highlighted story is copied
//!   to the author's highlights, which do not expire; its viewer list still does.
//! - **Who sees what.** The posts service's read rule ([`crate::posts::Access`]) decides,
//!   with the story's audience: public (for a private author: approved followers),
//!   followers, or close friends; blocks hide everything both ways. The author always
//!   sees their own. A story the viewer may not see is `NotFound`.
//! - **The tray.** A new story is fanned out (by the feed's worker, from a job row
//!   committed with the story) to its audience's tray rows; large authors are merged at
//!   read time, as for posts. The tray lists the reader's own stories first, then the
//!   accounts with unseen stories, then the seen ones; within each, by affinity (how often
//!   the reader viewed, reacted to and replied to that author's stories), then by the
//!   newest story. Muted authors stay out. A new story pushes a `StoryUpdate` to each
//!   connected reader's `StoryTray` subscription.
//! - **Viewers.** Marking seen records the first view; the first view, each reaction and
//!   each reply count towards affinity. The author pages through viewers (viewer-id
//!   order, blocks either way left out) with their reactions and the count.
//! - **Replies** become chat messages to the author (`StoryReply`, referencing the story)
//!   through the chat service, with its rules (message requests, blocks, "who may
//!   message me") and its exactly-once transaction ids.
//!
//! A story's media must be a ready object of its author's; the story records its use (its
//! viewers may download it while it lives or is highlighted) and a deleted story releases
//! it. An expired story's use stays recorded (it grants nothing once the story is gone).

mod wire;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use selfie_protocol::control::SubscriptionKind;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyReader;
use selfie_storage::{Cell, Clock, Commit, Condition, Cursor, Scan, Store};

use crate::chat::{Chat, MessageKind, NewMessage};
use crate::feed::Feed;
use crate::plane::{Delivery, Topic};
use crate::posts::{Access, Audience, FanoutHook, Posts};
use crate::tables::notifications::{Kind, Note, Notifier, Target};
use crate::tables::stories::{
    AFFINITY, BY_AUTHOR, HIGHLIGHTS, SEEN, STORIES, STORY_TTL, Story, TRAY,
};
use crate::tables::{self, decode, encode, id_value, key as k};
use crate::{Error, Result};
pub use wire::StoriesWire;

/// Longest caption, in characters.
pub const MAX_CAPTION_CHARS: usize = 500;
/// Longest link.
pub const MAX_LINK_BYTES: usize = 2048;
/// Most users mentioned in one story.
pub const MAX_MENTIONS: usize = 20;
/// Most live stories per author (a day's worth).
pub const MAX_LIVE_STORIES: usize = 100;
/// Most authors in one reader's tray.
pub const MAX_TRAY_AUTHORS: usize = 300;
/// Most stories marked seen in one request.
pub const MAX_SEEN_BATCH: usize = 100;
/// Most viewers counted exactly for one story (the count is given with the first page).
pub const MAX_COUNTED_VIEWERS: usize = 100_000;

/// A new story, for [`Stories::create`].
#[derive(Debug, Clone)]
pub struct NewStory {
    /// The photo or video.
    pub media_id: u64,
    /// Caption.
    pub caption: String,
    /// A link (https), or empty.
    pub link_url: String,
    /// Public, followers or close friends.
    pub audience: Audience,
    /// Life; `None` or zero is [`STORY_TTL`], longer is capped to it.
    pub duration: Option<Duration>,
    /// Users mentioned.
    pub mentions: Vec<u64>,
    /// A retry with the same key returns the first story.
    pub idempotency_key: Option<String>,
}

/// A story as one viewer sees it.
#[derive(Debug, Clone)]
pub struct StoryView {
    /// The story.
    pub story: Story,
    /// Whether the viewer saw it.
    pub seen: bool,
    /// The viewer's reaction.
    pub reaction: Option<String>,
    /// Whether it is in the author's highlights.
    pub highlighted: bool,
}

/// One author's entry in a tray.
#[derive(Debug, Clone)]
pub struct TrayEntry {
    /// The author.
    pub author_id: u64,
    /// Their live stories the reader may see, oldest first.
    pub stories: Vec<StoryView>,
    /// Whether the reader saw all of them.
    pub all_seen: bool,
    /// The newest one's time.
    pub latest_at_ms: u64,
    /// Whether any is for close friends.
    pub close_friends: bool,
}

/// One viewer of a story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// Who.
    pub user_id: u64,
    /// When they first saw it.
    pub seen_at_ms: u64,
    /// Their reaction, if any.
    pub reaction: Option<String>,
}

/// A viewer row: first-seen time, then the reaction (UTF-8), if any.
fn seen_value(seen_at_ms: u64, reaction: Option<&str>) -> Vec<u8> {
    let mut v = seen_at_ms.to_be_bytes().to_vec();
    if let Some(r) = reaction {
        v.extend_from_slice(r.as_bytes());
    }
    v
}

fn parse_seen(v: &[u8]) -> Option<(u64, Option<String>)> {
    let at = id_value(v.get(..8)?)?;
    let reaction = v
        .get(8..)
        .filter(|r| !r.is_empty())
        .map(|r| String::from_utf8_lossy(r).into_owned());
    Some((at, reaction))
}

/// The stories service of one shard.
pub struct Stories<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: RefCell<IdGenerator>,
    posts: Rc<Posts<S>>,
    feed: Rc<Feed<S>>,
    chat: Option<Rc<Chat<S>>>,
    fanout: Option<FanoutHook>,
    delivery: Option<Rc<Delivery>>,
    notifier: Notifier,
    limits: limits::Limits,
    media_release: Option<tables::media::Release>,
}

mod limits {
    use std::num::NonZeroU32;

    use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

    use crate::{Error, Result};

    /// The per-user buckets of one shard.
    pub(super) struct Limits {
        create: DefaultKeyedRateLimiter<u64>,
        read: DefaultKeyedRateLimiter<u64>,
        react: DefaultKeyedRateLimiter<u64>,
        calls: std::cell::Cell<u32>,
    }

    fn limiter(burst: u32, per_minute: u32) -> DefaultKeyedRateLimiter<u64> {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        RateLimiter::keyed(Quota::per_minute(n(per_minute)).allow_burst(n(burst)))
    }

    /// Which bucket.
    #[derive(Clone, Copy)]
    pub(super) enum Path {
        /// Posting a story.
        Create,
        /// Trays, viewer lists, highlights (each reads many rows).
        Read,
        /// Reactions and replies.
        React,
    }

    impl Default for Limits {
        fn default() -> Self {
            Self {
                create: limiter(10, 10),
                read: limiter(60, 600),
                react: limiter(30, 120),
                calls: Default::default(),
            }
        }
    }

    impl Limits {
        pub(super) fn check(&self, user: u64, path: Path) -> Result<()> {
            let calls = self.calls.get().wrapping_add(1);
            self.calls.set(calls);
            if calls.is_multiple_of(4096) {
                for l in [&self.create, &self.read, &self.react] {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
            }
            let l = match path {
                Path::Create => &self.create,
                Path::Read => &self.read,
                Path::React => &self.react,
            };
            l.check_key(&user)
                .map_err(|not_until| Error::RateLimited(crate::rate::wait_until(&not_until)))
        }
    }
}

use limits::Path;

impl<S: Store + Clone + 'static> Stories<S> {
    /// The stories service of shard `shard` of node `node`.
    pub fn new(
        store: S,
        clock: Arc<dyn Clock>,
        node: u16,
        shard: u16,
        posts: Rc<Posts<S>>,
        feed: Rc<Feed<S>>,
    ) -> Result<Self> {
        let ids =
            IdGenerator::new(node, shard).map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: RefCell::new(ids),
            posts,
            feed,
            chat: None,
            fanout: None,
            delivery: None,
            media_release: None,
            notifier: Default::default(),
            limits: Default::default(),
        })
    }

    /// Fans new stories out to trays through `hook` (the feed's worker).
    pub fn with_fanout(mut self, hook: FanoutHook) -> Self {
        self.fanout = Some(hook);
        self
    }

    /// Raises story reactions and mentions through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Sends replies as chat messages through `chat`.
    pub fn with_chat(mut self, chat: Rc<Chat<S>>) -> Self {
        self.chat = Some(chat);
        self
    }

    /// Releases the media of deleted stories through `release`.
    pub fn with_media_release(mut self, release: tables::media::Release) -> Self {
        self.media_release = Some(release);
        self
    }

    /// Pushes views and reactions to authors through `delivery`.
    pub fn with_delivery(mut self, delivery: Rc<Delivery>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Spends one of `user`'s reads (opening a tray subscription costs one, like a tray
    /// read: it starts a watch of the large authors they follow).
    pub(crate) fn spend_read(&self, user: u64) -> Result<()> {
        self.limits.check(user, Path::Read)
    }

    /// The feed service of this shard (which watches large authors for live trays).
    pub(crate) fn feed(&self) -> &Rc<Feed<S>> {
        &self.feed
    }

    pub(crate) fn delivery(&self) -> Result<&Rc<Delivery>> {
        self.delivery
            .as_ref()
            .ok_or(Error::Unavailable("live updates"))
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A story still alive.
    async fn live(&self, story_id: u64) -> Result<Option<Story>> {
        let now = self.now();
        Ok(tables::stories::load(&self.store, story_id)
            .await?
            .filter(|s| s.expires_at_ms > now))
    }

    /// A live story `viewer` may see (`NotFound` otherwise), with the viewer's access to
    /// its author.
    async fn visible(&self, viewer: u64, story_id: u64) -> Result<(Story, Access)> {
        let story = self.live(story_id).await?.ok_or(Error::NotFound("story"))?;
        let access = self.posts.access(viewer, story.author_id).await?;
        if !access.admits(viewer, story.audience, &story.mentions) {
            return Err(Error::NotFound("story"));
        }
        Ok((story, access))
    }

    /// Posts a story.
    pub async fn create(&self, author: u64, new: NewStory) -> Result<Story> {
        let remembered = match new.idempotency_key.as_deref() {
            Some(key) => Some(crate::posts::idempotency_cell(author, "story", key)?),
            None => None,
        };
        if let Some(cell) = &remembered
            && let Some(first) = self.first_created(cell).await?
        {
            return self.live(first).await?.ok_or(Error::NotFound("story"));
        }
        self.limits.check(author, Path::Create)?;
        tables::users::refuse_deleted(&self.store, author).await?;
        {
            use tables::media::Kind;
            let kinds = [Kind::Image, Kind::Gif, Kind::Video];
            tables::media::check(&self.store, author, &[new.media_id], &kinds, "media_id").await?;
        }
        if new.caption.chars().count() > MAX_CAPTION_CHARS {
            return Err(Error::InvalidArgument { field: "caption" });
        }
        if !new.link_url.is_empty()
            && (new.link_url.len() > MAX_LINK_BYTES
                || !new.link_url.starts_with("https://")
                || new
                    .link_url
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(Error::InvalidArgument { field: "link_url" });
        }
        if new.audience == Audience::MentionedOnly {
            return Err(Error::InvalidArgument { field: "audience" });
        }
        if new.mentions.len() > MAX_MENTIONS {
            return Err(Error::InvalidArgument { field: "mentions" });
        }
        let live = self
            .store
            .scan(&BY_AUTHOR, &k(author), &Scan::all(MAX_LIVE_STORIES + 1))
            .await?;
        if live.rows.len() >= MAX_LIVE_STORIES {
            return Err(Error::Forbidden("at most 100 live stories"));
        }
        let mut mentions = Vec::new();
        for &m in &new.mentions {
            if !mentions.contains(&m) && self.may_mention(author, m).await? {
                mentions.push(m);
            }
        }
        let life = new
            .duration
            .filter(|d| !d.is_zero())
            .map_or(STORY_TTL, |d| d.min(STORY_TTL))
            .max(Duration::from_secs(1));
        let now = self.now();
        let story = Story {
            story_id: self.ids.borrow_mut().next(now).0,
            author_id: author,
            media_id: new.media_id,
            caption: new.caption,
            link_url: new.link_url,
            audience: new.audience,
            mentions,
            created_at_ms: now,
            expires_at_ms: now + life.as_millis() as u64,
        };
        let used = tables::media::Use::Story(story.story_id);
        tables::media::attach(&self.store, &[story.media_id], used, "media_id").await?;
        // The story, its place among the author's, and its fan-out job in one commit
        // (claiming the idempotency key when there is one).
        let listed = Cell::new(&BY_AUTHOR, k(author), k(story.story_id));
        let mut commit = match &remembered {
            Some(cell) => Commit::new().when(Condition::Absent {
                row: cell.clone(),
                value: k(story.story_id),
                ttl: None,
            }),
            None => Commit::new(),
        };
        commit = commit
            .put(
                Cell::new(&STORIES, k(story.story_id), Bytes::new()),
                encode("story", &story)?,
                Some(life),
            )
            .put(listed, Bytes::new(), Some(life));
        let job = tables::feed::Job {
            id: story.story_id,
            author,
            kind: tables::feed::JobKind::Story,
        };
        if let Some(h) = &self.fanout {
            let (cell, value) = job.row(&h.worker);
            commit = commit.put(cell, value, None);
        }
        if !self.store.commit(&commit).await? {
            let cell = remembered
                .as_ref()
                .ok_or(Error::Internal("an unconditional commit refused"))?;
            let first = self.first_created(cell).await?.ok_or(Error::Busy)?;
            return self.live(first).await?.ok_or(Error::Busy);
        }
        if let Some(h) = &self.fanout {
            (h.wake)(job);
        }
        for &m in &story.mentions {
            // Only those who may see it learn of it.
            let access = self.posts.access(m, author).await?;
            if !access.admits(m, story.audience, &story.mentions) {
                continue;
            }
            self.notifier.send(Note {
                recipient: m,
                actor: author,
                kind: Kind::StoryMention,
                target: Target::Story(story.story_id),
            });
        }
        Ok(story)
    }

    async fn first_created(&self, cell: &Cell) -> Result<Option<u64>> {
        Ok(self
            .store
            .get(cell.table, &cell.partition, &cell.clustering)
            .await?
            .as_deref()
            .and_then(id_value))
    }

    /// Whether `author` may mention `user` in a story: the user exists, no block, and
    /// their `who_can_mention` admits the author.
    async fn may_mention(&self, author: u64, user: u64) -> Result<bool> {
        if user == author
            || tables::users::live_profile(&self.store, user)
                .await?
                .is_none()
        {
            return Ok(false);
        }
        if tables::graph::blocked_either_way(&self.store, author, user).await? {
            return Ok(false);
        }
        let settings = tables::users::settings(&self.store, user).await?;
        tables::users::permits(&self.store, user, author, settings.who_can_mention).await
    }

    /// Deletes the author's own story (and its highlight).
    pub async fn delete(&self, author: u64, story_id: u64) -> Result<()> {
        let story = tables::stories::load(&self.store, story_id).await?;
        let highlighted = self.highlighted(author, story_id).await?;
        let media = match (&story, &highlighted) {
            (Some(s), _) if s.author_id != author => return Err(Error::NotFound("story")),
            (None, None) => return Err(Error::NotFound("story")),
            (Some(s), _) | (None, Some(s)) => s.media_id,
        };
        self.store.delete(&STORIES, &k(story_id), &[]).await?;
        self.store
            .delete(&BY_AUTHOR, &k(author), &k(story_id))
            .await?;
        self.store
            .delete(&HIGHLIGHTS, &k(author), &k(story_id))
            .await?;
        tables::media::detach(&self.store, &[media], tables::media::Use::Story(story_id)).await?;
        if let Some(release) = &self.media_release {
            release(vec![media]);
        }
        Ok(())
    }

    async fn highlighted(&self, author: u64, story_id: u64) -> Result<Option<Story>> {
        self.store
            .get(&HIGHLIGHTS, &k(author), &k(story_id))
            .await?
            .map(|b| decode("story", &b))
            .transpose()
    }

    /// `viewer`'s row for a story: (first seen, reaction).
    async fn seen_row(&self, story_id: u64, viewer: u64) -> Result<Option<(u64, Option<String>)>> {
        Ok(self
            .store
            .get(&SEEN, &k(story_id), &k(viewer))
            .await?
            .as_deref()
            .and_then(parse_seen))
    }

    async fn view(&self, viewer: u64, story: Story) -> Result<StoryView> {
        let seen = self.seen_row(story.story_id, viewer).await?;
        let highlighted = if story.author_id == viewer {
            self.highlighted(viewer, story.story_id).await?.is_some()
        } else {
            false
        };
        Ok(StoryView {
            seen: seen.is_some(),
            reaction: seen.and_then(|(_, r)| r),
            highlighted,
            story,
        })
    }

    /// `author`'s live stories `viewer` may see, oldest first.
    pub async fn of_user(&self, viewer: u64, author: u64) -> Result<Vec<StoryView>> {
        if viewer != author {
            self.limits.check(viewer, Path::Read)?;
        }
        let access = self.posts.access(viewer, author).await?;
        self.live_of(viewer, author, access).await
    }

    async fn live_of(&self, viewer: u64, author: u64, access: Access) -> Result<Vec<StoryView>> {
        if access.hidden() {
            return Ok(Vec::new());
        }
        let rows = self
            .store
            .scan(&BY_AUTHOR, &k(author), &Scan::all(MAX_LIVE_STORIES))
            .await?
            .rows;
        let mut out = Vec::new();
        for r in rows {
            let Some(id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            if let Some(story) = self.live(id).await?
                && story.author_id == author
                && access.admits(viewer, story.audience, &story.mentions)
            {
                out.push(self.view(viewer, story).await?);
            }
        }
        Ok(out)
    }

    /// `reader`'s tray: their own stories first, then followed accounts with unseen
    /// stories, then seen ones; each group by affinity, then newest. `offset`/`limit`
    /// page through it.
    pub async fn tray(
        &self,
        reader: u64,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<TrayEntry>, Option<usize>)> {
        self.limits.check(reader, Path::Read)?;
        let now = self.now();
        let mut authors: Vec<u64> = Vec::new();
        let rows = self
            .store
            .scan(&TRAY, &k(reader), &Scan::all(MAX_TRAY_AUTHORS))
            .await?
            .rows;
        for r in rows {
            let live = r
                .value
                .get(8..16)
                .and_then(id_value)
                .is_some_and(|at| at > now);
            if let Some(a) = KeyReader::new(&r.clustering).u64()
                && live
            {
                authors.push(a);
            }
        }
        for a in self.feed.large_followed(reader).await? {
            if !authors.contains(&a) {
                authors.push(a);
            }
        }
        let mut entries: Vec<(bool, i64, TrayEntry)> = Vec::new();
        let own = self.live_of(reader, reader, self.posts.access(reader, reader).await?);
        let own = own.await?;
        if !own.is_empty() {
            entries.push((true, i64::MAX, Self::entry(reader, own)));
        }
        for author in authors {
            if author == reader
                || !tables::graph::follows(&self.store, reader, author).await?
                || self
                    .store
                    .get(&tables::graph::MUTES, &k(reader), &k(author))
                    .await?
                    .is_some()
            {
                continue;
            }
            let access = self.posts.access(reader, author).await?;
            let stories = self.live_of(reader, author, access).await?;
            if stories.is_empty() {
                continue;
            }
            let affinity = self
                .store
                .counter_get(&AFFINITY, &k(reader), &k(author))
                .await?;
            entries.push((false, affinity, Self::entry(author, stories)));
        }
        // Own first; then unseen before seen; then affinity; then the newest story.
        entries.sort_by(|(own_a, aff_a, a), (own_b, aff_b, b)| {
            own_b
                .cmp(own_a)
                .then(a.all_seen.cmp(&b.all_seen))
                .then(aff_b.cmp(aff_a))
                .then(b.latest_at_ms.cmp(&a.latest_at_ms))
                .then(a.author_id.cmp(&b.author_id))
        });
        let total = entries.len();
        let page: Vec<TrayEntry> = entries
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, _, e)| e)
            .collect();
        let next = (offset + page.len() < total).then_some(offset + page.len());
        Ok((page, next))
    }

    fn entry(author_id: u64, stories: Vec<StoryView>) -> TrayEntry {
        TrayEntry {
            author_id,
            all_seen: stories.iter().all(|s| s.seen),
            latest_at_ms: stories
                .iter()
                .map(|s| s.story.created_at_ms)
                .max()
                .unwrap_or(0),
            close_friends: stories
                .iter()
                .any(|s| s.story.audience == Audience::CloseFriends),
            stories,
        }
    }

    /// `viewer` saw `story_ids` (at most [`MAX_SEEN_BATCH`]); stories they may not see
    /// are skipped, as are their own. The first view of each is recorded.
    pub async fn seen(&self, viewer: u64, story_ids: &[u64]) -> Result<()> {
        if story_ids.len() > MAX_SEEN_BATCH {
            return Err(Error::InvalidArgument { field: "story_ids" });
        }
        self.limits.check(viewer, Path::Read)?;
        for &id in story_ids {
            let story = match self.visible(viewer, id).await {
                Ok((s, _)) => s,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if story.author_id == viewer {
                continue;
            }
            self.record_view(viewer, &story, None).await?;
        }
        Ok(())
    }

    /// Records `viewer`'s view (and reaction, replacing an earlier one), for as long as
    /// the story lives; the first view counts towards affinity and is pushed to the
    /// author.
    async fn record_view(&self, viewer: u64, story: &Story, reaction: Option<&str>) -> Result<()> {
        let now = self.now();
        let left = story.expires_at_ms.saturating_sub(now);
        if left == 0 {
            return Err(Error::NotFound("story"));
        }
        let before = self.seen_row(story.story_id, viewer).await?;
        if before.is_some() && reaction.is_none() {
            return Ok(());
        }
        let seen_at = before.as_ref().map_or(now, |(at, _)| *at);
        self.store
            .put(
                &SEEN,
                &k(story.story_id),
                &k(viewer),
                &seen_value(seen_at, reaction),
                Some(Duration::from_millis(left)),
            )
            .await?;
        if before.is_none() || reaction.is_some() {
            self.store
                .counter_add(&AFFINITY, &k(viewer), &k(story.author_id), 1)
                .await?;
        }
        let kind = if reaction.is_some() {
            selfie_protocol::stories::StoryEventKind::Reacted
        } else {
            selfie_protocol::stories::StoryEventKind::Viewed
        };
        self.tell_author(story, viewer, kind).await;
        Ok(())
    }

    /// Pushes a view or reaction to the author's `StoryTray` subscription (best effort).
    async fn tell_author(
        &self,
        story: &Story,
        actor: u64,
        kind: selfie_protocol::stories::StoryEventKind,
    ) {
        let Some(delivery) = &self.delivery else {
            return;
        };
        let topic = Topic::new(SubscriptionKind::StoryTray, story.author_id);
        let published = match wire::update_event(delivery, kind, story, actor) {
            Ok(frame) => delivery.publish(topic, frame).await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::debug!(error = %e, "story update not published");
        }
    }

    /// The viewers of the author's own live story (in viewer-id order; those across a
    /// block either way left out), and, with the first page, how many there are (up to
    /// [`MAX_COUNTED_VIEWERS`]; 0 on later pages).
    pub async fn viewers(
        &self,
        author: u64,
        story_id: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Viewer>, Option<Cursor>, u64)> {
        self.limits.check(author, Path::Read)?;
        let story = self
            .live(story_id)
            .await?
            .filter(|s| s.author_id == author)
            .ok_or(Error::NotFound("story"))?;
        let first = cursor.is_none();
        let page = self
            .store
            .scan(&SEEN, &k(story.story_id), &Scan::all(limit).after(cursor))
            .await?;
        let mut viewers = Vec::with_capacity(page.rows.len());
        for r in &page.rows {
            if let (Some(user_id), Some((seen_at_ms, reaction))) =
                (KeyReader::new(&r.clustering).u64(), parse_seen(&r.value))
                && !tables::graph::blocked_either_way(&self.store, author, user_id).await?
            {
                viewers.push(Viewer {
                    user_id,
                    seen_at_ms,
                    reaction,
                });
            }
        }
        let total = if first {
            self.count_viewers(story_id).await?
        } else {
            0
        };
        Ok((viewers, page.cursor, total))
    }

    async fn count_viewers(&self, story_id: u64) -> Result<u64> {
        let mut n = 0u64;
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&SEEN, &k(story_id), &Scan::all(1000).after(cursor))
                .await?;
            n += page.rows.len() as u64;
            match page.cursor {
                Some(c) if (n as usize) < MAX_COUNTED_VIEWERS => cursor = Some(c),
                _ => return Ok(n),
            }
        }
    }

    /// `viewer` reacts to a story they may see (not their own); a new reaction replaces
    /// theirs.
    pub async fn react(&self, viewer: u64, story_id: u64, emoji: &str) -> Result<()> {
        self.limits.check(viewer, Path::React)?;
        if emoji.is_empty()
            || emoji.chars().count() > 8
            || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
            || emoji.is_ascii()
        {
            return Err(Error::InvalidArgument { field: "emoji" });
        }
        let (story, _) = self.visible(viewer, story_id).await?;
        if story.author_id == viewer {
            return Err(Error::SelfTarget);
        }
        self.record_view(viewer, &story, Some(emoji)).await?;
        self.notifier.send(Note {
            recipient: story.author_id,
            actor: viewer,
            kind: Kind::StoryReaction,
            target: Target::Story(story_id),
        });
        Ok(())
    }

    /// `viewer` replies to a story: a chat message (`StoryReply`) to the author in their
    /// direct conversation, under the chat service's rules. `client_msg_id` makes a retry
    /// send once. Returns (conversation, message sequence).
    pub async fn reply(
        &self,
        viewer: u64,
        story_id: u64,
        text: &str,
        client_msg_id: &str,
    ) -> Result<(u64, u64)> {
        self.limits.check(viewer, Path::React)?;
        let chat = self.chat.clone().ok_or(Error::Unavailable("chat"))?;
        let (story, _) = self.visible(viewer, story_id).await?;
        if story.author_id == viewer {
            return Err(Error::SelfTarget);
        }
        if text.trim().is_empty() {
            return Err(Error::InvalidArgument { field: "text" });
        }
        let conversation = chat.direct(viewer, story.author_id).await?;
        let message = NewMessage {
            client_msg_id: client_msg_id.to_string(),
            kind: MessageKind::StoryReply,
            text: text.to_string(),
            media_ids: Vec::new(),
            reply_to_seq: 0,
            ref_id: story_id,
            thread_seq: 0,
            forward: None,
            mls: None,
        };
        // Sent where the conversation's sends take turns (its owner shard).
        let sent = match &self.delivery {
            Some(d) if d.plane().shards().owner_of(conversation) != d.shard() => {
                let owner = d.plane().shards().owner_of(conversation);
                d.plane()
                    .shards()
                    .invoke_on(owner, move |chat: Rc<Chat<S>>| async move {
                        chat.send(viewer, conversation, message).await
                    })
                    .await??
            }
            _ => chat.send(viewer, conversation, message).await?,
        };
        self.store
            .counter_add(&AFFINITY, &k(viewer), &k(story.author_id), 1)
            .await?;
        Ok((conversation, sent.seq))
    }

    /// Keeps the author's own live story in their highlights.
    pub async fn highlight(&self, author: u64, story_id: u64) -> Result<()> {
        let story = self
            .live(story_id)
            .await?
            .filter(|s| s.author_id == author)
            .ok_or(Error::NotFound("story"))?;
        self.store
            .put(
                &HIGHLIGHTS,
                &k(author),
                &k(story_id),
                &encode("story", &story)?,
                None,
            )
            .await?;
        // Deleted meanwhile: the delete wins.
        if tables::stories::load(&self.store, story_id)
            .await?
            .is_none()
        {
            self.store
                .delete(&HIGHLIGHTS, &k(author), &k(story_id))
                .await?;
            return Err(Error::NotFound("story"));
        }
        Ok(())
    }

    /// Takes a story out of the author's highlights.
    pub async fn remove_highlight(&self, author: u64, story_id: u64) -> Result<()> {
        self.store
            .delete(&HIGHLIGHTS, &k(author), &k(story_id))
            .await?;
        Ok(())
    }

    /// `author`'s highlights `viewer` may see, newest first.
    pub async fn highlights(
        &self,
        viewer: u64,
        author: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<StoryView>, Option<Cursor>)> {
        if viewer != author {
            self.limits.check(viewer, Path::Read)?;
        }
        let access = self.posts.access(viewer, author).await?;
        if access.hidden() {
            return Ok((Vec::new(), None));
        }
        let page = self
            .store
            .scan(
                &HIGHLIGHTS,
                &k(author),
                &Scan::all(limit).reversed().after(cursor),
            )
            .await?;
        let mut out = Vec::new();
        for r in &page.rows {
            let story: Story = decode("story", &r.value)?;
            if access.admits(viewer, story.audience, &story.mentions) {
                let mut view = self.view(viewer, story).await?;
                view.highlighted = true;
                out.push(view);
            }
        }
        Ok((out, page.cursor))
    }

    /// How much `reader` engaged with `author`'s stories (the tray's affinity).
    pub async fn affinity(&self, reader: u64, author: u64) -> Result<i64> {
        Ok(self
            .store
            .counter_get(&AFFINITY, &k(reader), &k(author))
            .await?)
    }
}

impl<S: Store + Clone + 'static> crate::workflows::Erase for Stories<S> {
    /// A deleted account's stories (live and kept as highlights) with their viewer
    /// lists, and its tray. (Their media goes with the account's media.)
    fn erase_user(&self, user: u64) -> futures::future::LocalBoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut rows = 0;
            for table in [&BY_AUTHOR, &HIGHLIGHTS] {
                let mut cursor = None;
                loop {
                    let page = self
                        .store
                        .scan(table, &k(user), &Scan::all(100).after(cursor))
                        .await?;
                    for r in &page.rows {
                        let Some(story_id) = KeyReader::new(&r.clustering).u64() else {
                            continue;
                        };
                        rows += tables::clear_partition(&self.store, &SEEN, &k(story_id)).await?;
                        self.store.delete(&STORIES, &k(story_id), &[]).await?;
                    }
                    match page.cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                rows += tables::clear_partition(&self.store, table, &k(user)).await?;
            }
            rows += tables::clear_partition(&self.store, &TRAY, &k(user)).await?;
            Ok(rows)
        })
    }
}
