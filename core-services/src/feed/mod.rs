//! Feeds: home timelines materialized by fan-out on write, a hybrid read path for large
//! accounts, per-author feeds, "not interested", and live "new posts" pushes.
//!
//! **Write path.** A post (or repost) commits a fan-out job row with itself
//! ([`crate::posts::FanoutHook`]), so a crash between the two cannot lose a fan-out; the
//! shard's worker then pages through the author's audience (followers; for close-friends
//! and mentioned-only posts, those of the list who follow) and hands each page to the
//! readers' owner shards as one typed call per shard ([`Feed::deliver`]), awaiting them
//! before the next page (back-pressure: one page of one fan-out in flight per worker).
//! Each reader's timeline is a `feed_home` partition of (post id → author, original)
//! rows, time-ordered, with a TTL and trimmed to [`FeedConfig::home_max`] entries. The
//! job row goes when the fan-out is done; a restarted worker resumes what is left
//! (fan-out is idempotent: a timeline row written twice is one row).
//!
//! **Hybrid path.** An author with more than [`FeedConfig::fanout_threshold`] followers
//! is not fanned out (only their own timeline gets the post; the one post that puts a
//! modestly large author on the list still is, see [`live`]): they join the large-authors
//! list, and a reader's page merges, at read time, the recent posts of the large authors
//! they follow with their timeline (as Twitter's timeline service does). A reader's merge
//! considers at most [`MAX_MERGED_AUTHORS`] large authors, the most recently active ones
//! — the cap bounds read cost for readers who follow very many large accounts; posts of
//! the others are still in their profile feeds. A shard keeps the [`MAX_LARGE_AUTHORS`]
//! most recently active large authors (of at most 20,000 listed); a fleet with more
//! large accounts than that needs a per-reader index, which does not exist yet. An author stays on the list for
//! [`crate::tables::feed::LARGE_TTL`] after their last unfanned post, so crossing the
//! threshold either way hides nothing. The reader cannot tell the two paths apart.
//!
//! **Read path.** Every entry is re-checked when read, with the posts service's single
//! read rule ([`crate::posts::Access`]): the author must still be followed and not muted,
//! no block either way, the audience must still admit the reader (close friends, private
//! accounts), deleted posts and undone reposts vanish, and posts or authors the reader
//! marked "not interested" are left out; a repost of a post whose author the reader
//! follows is left out too (the reader sees the original at its own place, not twice on
//! different pages). So unfollow, block, mute and deletion take effect
//! at once, however the entry got there. Pages are cursor-based on entry ids (strictly
//! older, or strictly newer, than the cursor), so posts arriving meanwhile never shift a
//! page: no duplicates, no gaps. A page examines at most [`SCAN_BUDGET`] entries per
//! item asked for; past that it returns what it found with `has_more`.
//!
//! **Live.** A reader whose timeline got entries is told on their `HomeFeed` topic
//! ([`crate::plane::Delivery`], every shard and node), coalesced: at most one push per
//! reader per [`FeedConfig::push_interval`], the later ones folded into one that follows
//! the interval. Large authors' posts and stories, which no per-follower write carries,
//! are pushed to the connected followers through a watch on their owner shards ([`live`]).
//!
//! **For you** ([`rank`]): the same candidates, scored by a documented formula behind
//! the [`Scorer`] trait, diversified, seen-filtered, and paged from a snapshot.
//!
//! Stories share the fan-out (their jobs write `stories_tray` rows; see
//! [`crate::stories`]). **Hashtag feeds** read an index the posts service writes with
//! each post (`posts_by_hashtag`, 30 days); **list feeds** merge the posts of a user
//! list's first [`MAX_LIST_MEMBERS_MERGED`] members; both show anyone's posts the reader
//! may read (not only followed accounts), with the same checks.
//!
//! Feeds stand on posts (one way): they read posts through `Posts`, so the read rule
//! stays in one place. Posts know nothing of feeds beyond the hook the registry wires.

mod live;
mod rank;
mod wire;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use selfie_protocol::control::SubscriptionKind;
use selfie_storage::key::{KeyBuilder, KeyReader};
use selfie_storage::{Clock, Cursor, Scan, Store, Table};

use crate::plane::{Delivery, Topic};
use crate::posts::{Access, Post, Posts};
use crate::tables::feed::{FANOUT_JOBS, HIDDEN, HOME, Job, JobKind, LARGE_AUTHORS};
use crate::tables::{self, id_value, key as k};
use crate::{Error, Result};
pub use live::{LiveKind, WatchGuard};
pub use rank::{Candidate, Formula, RankedAt, RankedItem, RankedPage, Scorer, diversify};
pub use wire::FeedWire;

/// Most members of a user list merged into its feed.
pub const MAX_LIST_MEMBERS_MERGED: usize = 100;
/// Most large authors merged into one reader's page.
pub const MAX_MERGED_AUTHORS: usize = 100;
/// Most large authors a shard considers (the most recently active).
pub const MAX_LARGE_AUTHORS: usize = 5_000;
/// Up to this many large authors, a reader's are found by point reads; past it, by a
/// scan of whom the reader follows.
const SHORT_LARGE_LIST: usize = 64;
/// Most rows of a reader's follows scanned to find the large authors among them.
pub const MAX_FOLLOWING_SCANNED: usize = 10_000;
/// An author newly on the large-authors list with at most this many times
/// [`FeedConfig::fanout_threshold`] followers gets that one post fanned out too.
const TRANSITION_MAX: u64 = 2;
/// Readers per page of a fan-out.
pub const FANOUT_PAGE: usize = 1_000;
/// Timeline writes in flight at once on one shard, per fan-out batch: a page's share of
/// one shard fits (the embedded store makes them durable with one group commit, up to
/// its `GROUP_MAX` of 512, instead of one per 128).
const WRITES_IN_FLIGHT: usize = 512;
/// Rows deleted per batch when trimming.
const TRIM_BATCH: usize = 500;
/// One timeline write in this many trims the timeline to its length.
const TRIM_ONE_IN: u32 = 64;
/// Entries examined per item asked for, at most, in one page.
pub const SCAN_BUDGET: usize = 10;
/// Attempts at one fan-out in a row.
const JOB_ATTEMPTS: u32 = 3;
/// How long a fan-out that kept failing waits before its next round of attempts.
const JOB_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Feed settings.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// Authors with more followers than this are merged at read time, not fanned out.
    pub fanout_threshold: u64,
    /// At most one "new posts" push per reader per this interval.
    pub push_interval: Duration,
    /// Entries kept per home timeline.
    pub home_max: usize,
    /// How long a shard reuses its copy of the large-authors list.
    pub large_refresh: Duration,
    /// How long a reader's watch of the large authors they follow outlives their last
    /// live subscription on this node (a reconnect reuses it instead of redoing it).
    pub watch_linger: Duration,
    /// How often, at least, a shard with watched readers reads the large-authors list
    /// again, so that its readers start watching authors that have just become large.
    pub adopt_every: Duration,
    /// "For you": most items in a row from one author.
    pub max_consecutive: usize,
    /// "For you": the age at which a post's recency halves.
    pub half_life: Duration,
    /// "For you": weight of the reader's affinity with the author (see [`Formula`]).
    pub affinity_weight: f64,
    /// "For you": weight of the post's engagement (see [`Formula`]).
    pub engagement_weight: f64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            fanout_threshold: 50_000,
            push_interval: Duration::from_secs(1),
            home_max: 800,
            large_refresh: Duration::from_secs(2),
            watch_linger: Duration::from_secs(30),
            adopt_every: Duration::from_secs(30),
            max_consecutive: 2,
            half_life: Formula::default().half_life,
            affinity_weight: Formula::default().affinity_weight,
            engagement_weight: Formula::default().engagement_weight,
        }
    }
}

/// Which side of a cursor a page reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Entries older than the cursor (or the newest, without one), newest first.
    Older,
    /// Entries newer than the cursor, the closest to it first in the scan; the page is
    /// still returned newest first.
    Newer,
}

/// Where a page starts: `None` for the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageAt {
    /// Which side.
    pub direction: Direction,
    /// The entry id the page starts after (exclusive).
    pub entry_id: u64,
}

impl PageAt {
    /// The wire form: a direction byte and the entry id.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(9);
        b.push(match self.direction {
            Direction::Older => 0,
            Direction::Newer => 1,
        });
        b.extend_from_slice(&self.entry_id.to_be_bytes());
        b
    }

    /// Parses a cursor from a client (`InvalidArgument` when it is not one).
    pub fn parse(b: &[u8]) -> Result<Self> {
        let bad = || Error::InvalidArgument { field: "cursor" };
        let (&d, id) = b.split_first().ok_or_else(bad)?;
        let entry_id = id_value(id).ok_or_else(bad)?;
        let direction = match d {
            0 => Direction::Older,
            1 => Direction::Newer,
            _ => return Err(bad()),
        };
        Ok(Self {
            direction,
            entry_id,
        })
    }
}

/// One item of a feed, as the reader may see it.
#[derive(Debug, Clone)]
pub struct Item {
    /// The timeline entry (the post, or the repost that brought it).
    pub entry_id: u64,
    /// The post shown (for a repost, the original).
    pub post: Post,
    /// Who reposted it, when it came by a repost.
    pub reposted_by: Option<u64>,
}

/// One page of a feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// Items, newest first.
    pub items: Vec<Item>,
    /// Where the next page in the same direction starts, when there may be more.
    pub next: Option<PageAt>,
    /// Where to ask later for entries newer than this page.
    pub newer: Option<PageAt>,
}

/// What a fan-out writes for each reader.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// A home-timeline entry.
    Post { post_id: u64 },
    /// A tray entry.
    Story { story_id: u64, expires_at_ms: u64 },
}

impl Payload {
    /// The kind of the readers' topic (whose owner shard writes their rows).
    fn topic_kind(self) -> SubscriptionKind {
        match self {
            Payload::Post { .. } => SubscriptionKind::HomeFeed,
            Payload::Story { .. } => SubscriptionKind::StoryTray,
        }
    }
}

/// Which authors a feed may show, besides the read rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Only accounts the reader follows (and the reader): home feeds.
    Followed,
    /// Anyone whose post the reader may read: hashtag and list feeds.
    Readable,
}

/// A timeline entry before its checks.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    author: u64,
}

/// One source merged into a page: the reader's timeline or a large author's posts.
struct Source {
    table: &'static Table,
    partition: Bytes,
    /// The author of every row, for a large author's posts.
    author: Option<u64>,
    buffered: VecDeque<Entry>,
    cursor: Option<Cursor>,
    done: bool,
}

/// What a reader sees of one author, read once per page.
#[derive(Clone, Copy)]
struct AuthorState {
    follows: bool,
    muted: bool,
    hidden: bool,
    access: Access,
}

/// Pending pushes to one reader.
struct PushSlot {
    last: Instant,
    pending: u32,
    latest: u64,
    scheduled: bool,
}

/// The feed service of one shard.
pub struct Feed<S> {
    store: S,
    posts: Rc<Posts<S>>,
    config: FeedConfig,
    clock: Arc<dyn Clock>,
    delivery: Option<Rc<Delivery>>,
    /// This shard's job partition.
    worker: Bytes,
    jobs: RefCell<Option<tokio::sync::mpsc::UnboundedReceiver<Job>>>,
    /// Puts a job that kept failing back on the queue, later.
    retry: tokio::sync::mpsc::UnboundedSender<Job>,
    large: RefCell<Option<(Instant, Rc<Vec<u64>>)>>,
    /// Whether the large-authors list is being read again now.
    large_reading: std::cell::Cell<bool>,
    /// The copy above is to be read again at next use (an author joined or left).
    large_stale: std::cell::Cell<bool>,
    /// Every author this shard has seen on the list (bounded), so that only new ones are
    /// adopted by the watches.
    large_seen: RefCell<HashSet<u64>>,
    pushes: Rc<RefCell<HashMap<u64, PushSlot>>>,
    limits: limits::Limits,
    scorer: Rc<dyn Scorer>,
    lists: Option<Rc<crate::graph::lists::Lists<S>>>,
    /// Connected readers' watches of the large authors they follow ([`live`]).
    watches: RefCell<live::Watches>,
}

mod limits {
    use std::num::NonZeroU32;

    use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

    use crate::{Error, Result};

    /// Per-user buckets of one shard: page reads, and "not interested" marks.
    pub(super) struct Limits {
        pages: DefaultKeyedRateLimiter<u64>,
        marks: DefaultKeyedRateLimiter<u64>,
        calls: std::cell::Cell<u32>,
    }

    fn limiter(burst: u32, per_minute: u32) -> DefaultKeyedRateLimiter<u64> {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        RateLimiter::keyed(Quota::per_minute(n(per_minute)).allow_burst(n(burst)))
    }

    impl Default for Limits {
        fn default() -> Self {
            Self {
                pages: limiter(120, 1_200),
                marks: limiter(60, 300),
                calls: Default::default(),
            }
        }
    }

    impl Limits {
        /// Spends one of `user`'s page reads (`mark`: a "not interested" instead).
        pub(super) fn check(&self, user: u64, mark: bool) -> Result<()> {
            let calls = self.calls.get().wrapping_add(1);
            self.calls.set(calls);
            if calls.is_multiple_of(4096) {
                for l in [&self.pages, &self.marks] {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
            }
            let l = if mark { &self.marks } else { &self.pages };
            l.check_key(&user)
                .map_err(|not_until| Error::RateLimited(crate::rate::wait_until(&not_until)))
        }
    }
}

/// The clustering key of a hidden post or author.
fn hidden_key(kind: &str, id: u64) -> Bytes {
    KeyBuilder::new().str(kind).u64(id).build()
}

/// A timeline row's value: the entry's author.
fn home_value(author: u64) -> Bytes {
    Bytes::copy_from_slice(&author.to_be_bytes())
}

/// The jobs side of a shard's fan-out queue (see [`fanout_queue`]).
pub struct FanoutJobs {
    worker: Bytes,
    rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
}

/// Shard `shard` of node `node`'s fan-out queue: the hook its posts service writes jobs
/// through, and the jobs its feed service runs.
pub fn fanout_queue(node: u16, shard: u16) -> (crate::posts::FanoutHook, FanoutJobs) {
    let (wake, rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = tables::feed::worker(node, shard);
    let tx = wake.clone();
    let hook = crate::posts::FanoutHook {
        worker: worker.clone(),
        wake: Rc::new(move |job| {
            // Only fails once the worker is gone (the shard is stopping): the job row
            // stays for the next start.
            let _ = wake.send(job);
        }),
    };
    (hook, FanoutJobs { worker, rx, tx })
}

impl<S: Store + Clone + 'static> Feed<S> {
    /// The feed service of a shard, reading posts through `posts` and running the fan-out
    /// `jobs` of the shard's queue.
    pub fn new(
        store: S,
        posts: Rc<Posts<S>>,
        clock: Arc<dyn Clock>,
        jobs: FanoutJobs,
        config: FeedConfig,
    ) -> Self {
        Self {
            store,
            posts,
            config,
            clock,
            delivery: None,
            worker: jobs.worker,
            jobs: RefCell::new(Some(jobs.rx)),
            retry: jobs.tx,
            large: RefCell::new(None),
            large_reading: Default::default(),
            large_stale: Default::default(),
            large_seen: Default::default(),
            pushes: Default::default(),
            limits: Default::default(),
            scorer: Rc::new(Formula {
                half_life: config.half_life,
                affinity_weight: config.affinity_weight,
                engagement_weight: config.engagement_weight,
            }),
            lists: None,
            watches: Default::default(),
        }
    }

    /// Serves list feeds from the members of `lists`.
    pub fn with_lists(mut self, lists: Rc<crate::graph::lists::Lists<S>>) -> Self {
        self.lists = Some(lists);
        self
    }

    /// Ranks "For you" with `scorer` instead of the formula (a learned model).
    pub fn with_scorer(mut self, scorer: Rc<dyn Scorer>) -> Self {
        self.scorer = scorer;
        self
    }

    /// Pushes "new posts" to readers through `delivery`, and fans out across its shards.
    pub fn with_delivery(mut self, delivery: Rc<Delivery>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Runs this shard's fan-out worker (on the shard's `LocalSet`): first the jobs a
    /// previous run left, then new ones as posts are made. Call once.
    pub fn start(self: &Rc<Self>) {
        let Some(mut jobs) = self.jobs.borrow_mut().take() else {
            return;
        };
        let feed = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = feed.fan_out_pending().await {
                tracing::warn!(error = %e, "pending fan-outs not resumed");
            }
            while let Some(job) = jobs.recv().await {
                feed.run_job(job).await;
            }
        });
    }

    /// Runs every fan-out job waiting in this shard's partition (a restart's leftovers;
    /// tests without a worker call it to fan out what they posted).
    pub async fn fan_out_pending(&self) -> Result<usize> {
        let mut done = 0;
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&FANOUT_JOBS, &self.worker, &Scan::all(100).after(cursor))
                .await?;
            for r in &page.rows {
                let Some(job) = Job::parse(&r.clustering, &r.value) else {
                    continue;
                };
                self.run_job(job).await;
                done += 1;
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(done),
            }
        }
    }

    /// One fan-out, retried a few times; a job that keeps failing stays for the next
    /// start.
    async fn run_job(&self, job: Job) {
        for attempt in 0..JOB_ATTEMPTS {
            let span = tracing::debug_span!("fan_out", id = job.id, author = job.author, attempt);
            let work = async {
                match job.kind {
                    JobKind::Post => self.fan_out(job.id, job.author).await,
                    JobKind::Story => self.fan_out_story(job.id, job.author).await,
                }
            };
            match tracing::Instrument::instrument(work, span).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, id = job.id, attempt, "fan-out failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        // Still failing (storage down?): the job row stays, and the job goes back on the
        // queue a while later, behind the others.
        let retry = self.retry.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(JOB_RETRY_AFTER).await;
            let _ = retry.send(job);
        });
    }

    /// Fans `post_id` out to its audience's home timelines, then forgets the job.
    async fn fan_out(&self, post_id: u64, author: u64) -> Result<()> {
        let post = match self.posts.stored(post_id).await? {
            Some(p) if !p.deleted && p.author_id == author => p,
            // Deleted meanwhile (or a commit cut short on CQL): nothing to deliver.
            _ => return self.forget_job(post_id).await,
        };
        // The author's own timeline always has it: written alongside the first page of
        // the audience's (one durable write less to wait for before the first push).
        let payload = Payload::Post { post_id };
        let (own, audience) = futures::future::join(
            self.send_batch(vec![author], payload, author),
            self.fan_out_to(payload, author, post.audience, &post.mentions),
        )
        .await;
        own?;
        let large = audience?;
        self.forget_job(post_id).await?;
        // Announced once the job is gone, so a retried job never announces twice.
        if large {
            self.announce(author, live::Activity::Post(post_id)).await;
        }
        Ok(())
    }

    /// Fans a story out to its audience's trays, then forgets the job.
    async fn fan_out_story(&self, story_id: u64, author: u64) -> Result<()> {
        let story = match tables::stories::load(&self.store, story_id).await? {
            Some(s) if s.author_id == author && s.expires_at_ms > self.clock.now_ms() => s,
            _ => return self.forget_job(story_id).await,
        };
        let payload = Payload::Story {
            story_id,
            expires_at_ms: story.expires_at_ms,
        };
        let large = self
            .fan_out_to(payload, author, story.audience, &story.mentions)
            .await?;
        self.forget_job(story_id).await?;
        if large {
            self.announce(author, live::Activity::Story(story_id)).await;
        }
        Ok(())
    }

    /// Sends `payload` to every reader of `author`'s `audience` page by page, unless the
    /// author is large: then they join the large-authors list (merged at read time) and
    /// the answer is `true` (the caller announces the item to the watching shards).
    async fn fan_out_to(
        &self,
        payload: Payload,
        author: u64,
        audience: crate::posts::Audience,
        mentions: &[u64],
    ) -> Result<bool> {
        let followers = self
            .store
            .counter_get(
                &tables::graph::COUNTS,
                &k(author),
                &tables::name_key("followers"),
            )
            .await?;
        if u64::try_from(followers).unwrap_or(0) > self.config.fanout_threshold {
            let listed = self
                .store
                .get(&LARGE_AUTHORS, &k(0), &k(author))
                .await?
                .is_some();
            self.store
                .put(
                    &LARGE_AUTHORS,
                    &k(0),
                    &k(author),
                    &self.clock.now_ms().to_be_bytes(),
                    None,
                )
                .await?;
            if listed {
                return Ok(true);
            }
            self.large_stale.set(true);
            // The post that makes the author large is still fanned out (the readers
            // watching large authors do not watch this one yet); a page shows it once,
            // from either source. Not for an account far past the threshold (back after
            // its row expired, or grown fast): that would be an unbounded fan-out.
            if u64::try_from(followers).unwrap_or(0)
                > self.config.fanout_threshold.saturating_mul(TRANSITION_MAX)
            {
                return Ok(true);
            }
        }
        use crate::posts::Audience;
        let (list, needs_follow): (&'static Table, bool) = match audience {
            Audience::Public | Audience::Followers => (&tables::graph::FOLLOWERS, false),
            Audience::CloseFriends => (&tables::graph::CLOSE_FRIENDS, true),
            Audience::MentionedOnly => {
                let mut readers = Vec::new();
                for &m in mentions {
                    if tables::graph::follows(&self.store, m, author).await? {
                        readers.push(m);
                    }
                }
                return self
                    .send_batch(readers, payload, author)
                    .await
                    .map(|()| false);
            }
        };
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(list, &k(author), &Scan::all(FANOUT_PAGE).after(cursor))
                .await?;
            let mut readers = Vec::with_capacity(page.rows.len());
            for r in &page.rows {
                let Some(reader) = KeyReader::new(&r.clustering).u64() else {
                    continue;
                };
                if reader == author
                    || (needs_follow
                        && !tables::graph::follows(&self.store, reader, author).await?)
                {
                    continue;
                }
                readers.push(reader);
            }
            self.send_batch(readers, payload, author).await?;
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(false),
            }
        }
    }

    async fn forget_job(&self, post_id: u64) -> Result<()> {
        Ok(self
            .store
            .delete(&FANOUT_JOBS, &self.worker, &k(post_id))
            .await?)
    }

    /// Hands `readers` to their owner shards, one typed call per shard, and waits for
    /// all of them (the fan-out's back-pressure).
    async fn send_batch(&self, readers: Vec<u64>, payload: Payload, author: u64) -> Result<()> {
        if readers.is_empty() {
            return Ok(());
        }
        let Some(delivery) = &self.delivery else {
            return self.deliver_payload(&readers, payload, author).await;
        };
        let shards = delivery.plane().shards();
        let topic = payload.topic_kind();
        let mut by_shard: HashMap<usize, Vec<u64>> = HashMap::new();
        for r in readers {
            by_shard
                .entry(delivery.owner(Topic::new(topic, r)))
                .or_default()
                .push(r);
        }
        let calls = by_shard.into_iter().map(|(shard, readers)| {
            shards.invoke_on(shard, move |feed: Rc<Feed<S>>| async move {
                feed.deliver_payload(&readers, payload, author).await
            })
        });
        for answer in futures::future::join_all(calls).await {
            answer??;
        }
        Ok(())
    }

    async fn deliver_payload(&self, readers: &[u64], payload: Payload, author: u64) -> Result<()> {
        match payload {
            Payload::Post { post_id } => self.deliver(readers, post_id, author).await,
            Payload::Story {
                story_id,
                expires_at_ms,
            } => {
                self.deliver_story(readers, story_id, author, expires_at_ms)
                    .await
            }
        }
    }

    /// On the readers' owner shard: puts `author` (newest story `story_id`) in each
    /// reader's tray until the story expires, and tells the connected ones.
    pub async fn deliver_story(
        &self,
        readers: &[u64],
        story_id: u64,
        author: u64,
        expires_at_ms: u64,
    ) -> Result<()> {
        let left = expires_at_ms.saturating_sub(self.clock.now_ms());
        if left == 0 {
            return Ok(());
        }
        let ttl = Some(Duration::from_millis(left));
        let value = tables::stories::tray_value(story_id, expires_at_ms);
        let writes = futures::stream::iter(readers.iter().map(|&reader| {
            let value = value.clone();
            async move {
                // A row for a story that lives longer stays (a late or resumed job of an
                // older story must not shorten the author's place in the tray).
                let current = self
                    .store
                    .get(&tables::stories::TRAY, &k(reader), &k(author))
                    .await?;
                if current
                    .as_deref()
                    .and_then(|v| v.get(8..16))
                    .and_then(id_value)
                    .is_some_and(|at| at >= expires_at_ms)
                {
                    return Ok(());
                }
                self.store
                    .put(&tables::stories::TRAY, &k(reader), &k(author), &value, ttl)
                    .await
            }
        }))
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
        for w in writes {
            w?;
        }
        if let Some(delivery) = &self.delivery {
            for &reader in readers {
                live::publish_story(delivery, reader, author, story_id);
            }
        }
        Ok(())
    }

    /// On the readers' owner shard: writes the entry to each reader's timeline, trims
    /// now and then, and tells the connected ones.
    pub async fn deliver(&self, readers: &[u64], post_id: u64, author: u64) -> Result<()> {
        let value = home_value(author);
        let writes = futures::stream::iter(readers.iter().map(|&reader| {
            let value = value.clone();
            async move {
                self.store
                    .put(&HOME, &k(reader), &k(post_id), &value, None)
                    .await
            }
        }))
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
        for w in writes {
            w?;
        }
        for &reader in readers {
            self.push(reader, post_id);
        }
        let trims = readers
            .iter()
            .filter(|_| rand::random::<u32>().is_multiple_of(TRIM_ONE_IN))
            .map(|&reader| self.trim(reader));
        for t in futures::future::join_all(trims).await {
            t?;
        }
        Ok(())
    }

    /// Cuts `reader`'s timeline to its newest [`FeedConfig::home_max`] entries (the
    /// older ones go in batches: one durable write each).
    pub async fn trim(&self, reader: u64) -> Result<usize> {
        let keep = self.config.home_max.max(1);
        let mut cursor = None;
        let mut seen = 0usize;
        let mut old = Vec::new();
        loop {
            let page = self
                .store
                .scan(&HOME, &k(reader), &Scan::all(1000).reversed().after(cursor))
                .await?;
            for r in &page.rows {
                seen += 1;
                if seen > keep {
                    old.push(selfie_storage::Mutation::Delete {
                        clustering: r.clustering.clone(),
                    });
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for chunk in old.chunks(TRIM_BATCH) {
            self.store.batch(&HOME, &k(reader), chunk).await?;
        }
        Ok(old.len())
    }

    /// Tells `reader` of a new entry: now, or folded into one push after the interval.
    fn push(&self, reader: u64, post_id: u64) {
        let Some(delivery) = self.delivery.clone() else {
            return;
        };
        let now = Instant::now();
        let interval = self.config.push_interval;
        let mut pushes = self.pushes.borrow_mut();
        if pushes.len() > 100_000 {
            pushes.retain(|_, s| s.scheduled || now.duration_since(s.last) < interval);
        }
        match pushes.get_mut(&reader) {
            Some(slot) if now.duration_since(slot.last) < interval || slot.scheduled => {
                slot.pending += 1;
                slot.latest = slot.latest.max(post_id);
                if !slot.scheduled {
                    slot.scheduled = true;
                    let at = slot.last + interval;
                    let feed_pushes = self.pushes.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let due = {
                            let mut map = feed_pushes.borrow_mut();
                            map.get_mut(&reader).and_then(|s| {
                                s.scheduled = false;
                                s.last = Instant::now();
                                let n = std::mem::take(&mut s.pending);
                                (n > 0).then_some((n, s.latest))
                            })
                        };
                        if let Some((n, latest)) = due {
                            publish_update(&delivery, reader, n, latest);
                        }
                    });
                }
            }
            _ => {
                pushes.insert(
                    reader,
                    PushSlot {
                        last: now,
                        pending: 0,
                        latest: post_id,
                        scheduled: false,
                    },
                );
                // No task per reader: the plane sequences or posts it now when it can.
                publish_update(&delivery, reader, 1, post_id);
            }
        }
    }
}

/// Publishes a `FeedUpdate` to `reader`'s home-feed subscribers (best effort: a lost
/// push makes the subscribers resync, and the next page read has the posts anyway).
fn publish_update(delivery: &Rc<Delivery>, reader: u64, new_items: u32, latest: u64) {
    let topic = Topic::new(SubscriptionKind::HomeFeed, reader);
    match wire::update_event(delivery, new_items, latest) {
        Ok(frame) => delivery.publish_soon(topic, frame),
        Err(e) => tracing::debug!(error = %e, reader, "feed update not encoded"),
    }
}

impl<S: Store + Clone + 'static> Feed<S> {
    /// The large authors (the most recently active first), from this shard's copy.
    /// One read of the list at a time per shard: while it is being read again, callers
    /// get the copy they would have had (a burst of follows or page reads at expiry
    /// costs one scan, not one each).
    async fn large_authors(&self) -> Result<Rc<Vec<u64>>> {
        if let Some((at, list)) = &*self.large.borrow()
            && ((at.elapsed() < self.config.large_refresh && !self.large_stale.get())
                || self.large_reading.get())
        {
            return Ok(list.clone());
        }
        /// Ends the read however it ends; a read that did not finish (failed, or
        /// dropped mid-scan) leaves the stale mark as it found it.
        struct Reading<'a> {
            reading: &'a std::cell::Cell<bool>,
            stale: &'a std::cell::Cell<bool>,
            was_stale: bool,
            done: bool,
        }
        impl Drop for Reading<'_> {
            fn drop(&mut self) {
                self.reading.set(false);
                if !self.done && self.was_stale {
                    self.stale.set(true);
                }
            }
        }
        self.large_reading.set(true);
        // Cleared before the read: an author who joins during it marks the list again.
        let mut reading = Reading {
            reading: &self.large_reading,
            stale: &self.large_stale,
            was_stale: self.large_stale.replace(false),
            done: false,
        };
        let mut found: Vec<(u64, u64)> = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&LARGE_AUTHORS, &k(0), &Scan::all(1000).after(cursor))
                .await?;
            for r in &page.rows {
                if let (Some(author), Some(at)) =
                    (KeyReader::new(&r.clustering).u64(), id_value(&r.value))
                {
                    found.push((at, author));
                }
            }
            match page.cursor {
                Some(c) if found.len() < 4 * MAX_LARGE_AUTHORS => cursor = Some(c),
                _ => break,
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        found.truncate(MAX_LARGE_AUTHORS);
        let list = Rc::new(found.into_iter().map(|(_, a)| a).collect::<Vec<_>>());
        reading.done = true;
        let before = self.large.replace(Some((Instant::now(), list.clone())));
        // Authors this shard has never seen on the list (not ones moving back into its
        // most recent part): the readers watched here who follow one start watching it
        // now, not at their next page read.
        let added: Vec<u64> = {
            let mut seen = self.large_seen.borrow_mut();
            if seen.len() > 4 * MAX_LARGE_AUTHORS {
                seen.clear();
            }
            list.iter().copied().filter(|&a| seen.insert(a)).collect()
        };
        if before.is_some() && !added.is_empty() {
            self.adopt_later(added);
        }
        Ok(list)
    }

    /// The large authors `reader` follows, at most [`MAX_MERGED_AUTHORS`]: by point reads
    /// when the large-authors list is short, else by one scan of whom the reader follows
    /// (at most [`MAX_FOLLOWING_SCANNED`] rows), whichever costs less.
    pub(crate) async fn large_followed(&self, reader: u64) -> Result<Vec<u64>> {
        let large = self.large_authors().await?;
        if large.is_empty() {
            self.rewatch(reader, &[]);
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if large.len() <= SHORT_LARGE_LIST {
            let checks = large.iter().filter(|&&a| a != reader).map(|&a| async move {
                tables::graph::follows(&self.store, reader, a)
                    .await
                    .map(|f| f.then_some(a))
            });
            for f in futures::future::join_all(checks).await {
                if let Some(a) = f? {
                    out.push(a);
                }
            }
        } else {
            let wanted: HashSet<u64> = large.iter().copied().collect();
            let mut cursor = None;
            let mut scanned = 0;
            loop {
                let page = self
                    .store
                    .scan(
                        &tables::graph::FOLLOWING,
                        &k(reader),
                        &Scan::all(1000).after(cursor),
                    )
                    .await?;
                scanned += page.rows.len();
                for r in &page.rows {
                    if let Some(a) = KeyReader::new(&r.clustering).u64()
                        && wanted.contains(&a)
                    {
                        out.push(a);
                    }
                }
                match page.cursor {
                    Some(c) if scanned < MAX_FOLLOWING_SCANNED => cursor = Some(c),
                    _ => break,
                }
            }
            // The most recently active first, as the list is ordered.
            let rank: HashMap<u64, usize> =
                large.iter().enumerate().map(|(i, &a)| (a, i)).collect();
            out.sort_by_key(|a| rank.get(a).copied().unwrap_or(usize::MAX));
        }
        out.truncate(MAX_MERGED_AUTHORS);
        self.rewatch(reader, &out);
        Ok(out)
    }

    async fn author_state(&self, reader: u64, author: u64) -> Result<AuthorState> {
        let access = self.posts.access(reader, author).await?;
        self.author_state_from(reader, author, access).await
    }

    /// `reader`'s standing towards `author`, given the read rule's [`Access`] (which
    /// also says whether the reader follows).
    async fn author_state_from(
        &self,
        reader: u64,
        author: u64,
        access: Access,
    ) -> Result<AuthorState> {
        let own = author == reader;
        Ok(AuthorState {
            follows: access.follows(),
            muted: !own
                && self
                    .store
                    .get(&tables::graph::MUTES, &k(reader), &k(author))
                    .await?
                    .is_some(),
            hidden: !own && self.hidden(reader, "a", author).await?,
            access,
        })
    }

    async fn hidden(&self, reader: u64, kind: &str, id: u64) -> Result<bool> {
        Ok(self
            .store
            .get(&HIDDEN, &k(reader), &hidden_key(kind, id))
            .await?
            .is_some())
    }

    /// The item an entry shows `reader`, if any: every rule re-checked now (the author
    /// followed, too, unless `rule` is [`Rule::Readable`]).
    async fn check(
        &self,
        reader: u64,
        entry: Entry,
        authors: &mut HashMap<u64, AuthorState>,
        shown: &mut HashSet<u64>,
        rule: Rule,
    ) -> Result<Option<Item>> {
        let state = match authors.get(&entry.author) {
            Some(s) => *s,
            None => {
                let s = self.author_state(reader, entry.author).await?;
                authors.insert(entry.author, s);
                s
            }
        };
        if (rule == Rule::Followed && !state.follows) || state.muted || state.hidden {
            return Ok(None);
        }
        let Some(post) = self.posts.stored(entry.id).await? else {
            return Ok(None);
        };
        self.check_post(reader, entry, state, post, authors, shown)
            .await
    }

    /// The rest of [`Feed::check`], with the entry's post read and the reader's
    /// standing towards its author known (and already found to pass the rule).
    async fn check_post(
        &self,
        reader: u64,
        entry: Entry,
        state: AuthorState,
        post: Post,
        authors: &mut HashMap<u64, AuthorState>,
        shown: &mut HashSet<u64>,
    ) -> Result<Option<Item>> {
        if post.deleted || post.author_id != entry.author || !state.access.allows(reader, &post) {
            return Ok(None);
        }
        let (shown_post, reposted_by) = match post.repost_of {
            Some(original_id) => {
                let Some(original) = self.posts.stored(original_id).await? else {
                    return Ok(None);
                };
                let by = match authors.get(&original.author_id) {
                    Some(s) => *s,
                    None => {
                        let s = self.author_state(reader, original.author_id).await?;
                        authors.insert(original.author_id, s);
                        s
                    }
                };
                // A reader who follows the original's author sees it at its own place:
                // the repost would show it twice, on different pages.
                if original.deleted
                    || by.follows
                    || by.muted
                    || by.hidden
                    || !by.access.allows(reader, &original)
                {
                    return Ok(None);
                }
                (original, Some(entry.author))
            }
            None => (post, None),
        };
        if !shown.insert(shown_post.post_id) || self.hidden(reader, "p", shown_post.post_id).await?
        {
            return Ok(None);
        }
        Ok(Some(Item {
            entry_id: entry.id,
            post: shown_post,
            reposted_by,
        }))
    }

    /// Fills `source`'s buffer with its next rows.
    async fn refill(&self, source: &mut Source, direction: Direction, chunk: usize) -> Result<()> {
        let mut scan = Scan::all(chunk).after(source.cursor.clone());
        if direction == Direction::Older {
            scan = scan.reversed();
        }
        let page = self
            .store
            .scan(source.table, &source.partition, &scan)
            .await?;
        for r in &page.rows {
            let Some(id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            let author = match source.author {
                Some(a) => a,
                None => match id_value(&r.value) {
                    Some(a) => a,
                    None => continue,
                },
            };
            source.buffered.push_back(Entry { id, author });
        }
        source.done = page.cursor.is_none();
        source.cursor = page.cursor;
        Ok(())
    }

    /// A page of `reader`'s home timeline ("Following", chronological): their timeline
    /// merged with the recent posts of the large authors they follow, every entry
    /// re-checked. `limit` is 1..=100.
    pub async fn home(&self, reader: u64, at: Option<PageAt>, limit: usize) -> Result<FeedPage> {
        let limit = limit.clamp(1, crate::plane::PAGE_MAX);
        let start = at.map(|a| Cursor(k(a.entry_id)));
        let mut sources = vec![Source {
            table: &HOME,
            partition: k(reader),
            author: None,
            buffered: VecDeque::new(),
            cursor: start.clone(),
            done: false,
        }];
        for author in self.large_followed(reader).await? {
            sources.push(Source {
                table: &tables::posts::USER_POSTS,
                partition: k(author),
                author: Some(author),
                buffered: VecDeque::new(),
                cursor: start.clone(),
                done: false,
            });
        }
        self.merged(reader, sources, at, limit, Rule::Followed)
            .await
    }

    /// A page merged from `sources` (k-way, by entry id, in the page's direction), every
    /// entry checked under `rule`.
    async fn merged(
        &self,
        reader: u64,
        mut sources: Vec<Source>,
        at: Option<PageAt>,
        limit: usize,
        rule: Rule,
    ) -> Result<FeedPage> {
        let direction = at.map_or(Direction::Older, |a| a.direction);
        // Many sources (a list's members) each read a little at a time.
        let chunk = if sources.len() > 4 {
            (limit / 2).max(4)
        } else {
            limit + limit / 2 + 1
        };
        let budget = limit * SCAN_BUDGET;
        let mut authors = HashMap::new();
        let mut shown = HashSet::new();
        let mut entries = HashSet::new();
        let mut items = Vec::with_capacity(limit);
        let mut examined = 0;
        let mut last = None;
        let mut exhausted = false;
        while items.len() < limit {
            if examined == budget {
                break;
            }
            for s in sources.iter_mut() {
                if s.buffered.is_empty() && !s.done {
                    self.refill(s, direction, chunk).await?;
                }
            }
            // The next entry in the page's order, from whichever source holds it.
            let best = sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.buffered.front().map(|e| (i, e.id)))
                .reduce(|a, b| match direction {
                    Direction::Older if b.1 > a.1 => b,
                    Direction::Newer if b.1 < a.1 => b,
                    _ => a,
                });
            let Some((i, _)) = best else {
                exhausted = true;
                break;
            };
            let Some(entry) = sources[i].buffered.pop_front() else {
                break;
            };
            examined += 1;
            last = Some(entry.id);
            if !entries.insert(entry.id) {
                continue;
            }
            if let Some(item) = self
                .check(reader, entry, &mut authors, &mut shown, rule)
                .await?
            {
                items.push(item);
            }
        }
        if !exhausted {
            // Stopped on a full page or the budget: there may be more only if a source
            // still holds rows.
            exhausted = sources.iter().all(|s| s.buffered.is_empty() && s.done);
        }
        if direction == Direction::Newer {
            items.reverse();
        }
        let next = match (exhausted, last) {
            (false, Some(entry_id)) => Some(PageAt {
                direction,
                entry_id,
            }),
            _ => None,
        };
        // Asking for newer entries later starts at the newest shown (or, for a newer
        // page that found none, where it started).
        let newest = items.first().map(|i| i.entry_id).or(match direction {
            Direction::Newer => at.map(|a| a.entry_id),
            Direction::Older => None,
        });
        Ok(FeedPage {
            items,
            next,
            newer: newest.map(|entry_id| PageAt {
                direction: Direction::Newer,
                entry_id,
            }),
        })
    }

    /// A page of the posts tagged `#tag` (the last [`tables::posts::HASHTAG_TTL`]) that
    /// `reader` may read, newest first (older pages only).
    pub async fn hashtag(
        &self,
        reader: u64,
        tag: &str,
        at: Option<PageAt>,
        limit: usize,
    ) -> Result<FeedPage> {
        let tag = crate::posts::normalize_hashtag(tag)
            .ok_or(Error::InvalidArgument { field: "hashtag" })?;
        if at.is_some_and(|a| a.direction == Direction::Newer) {
            return Err(Error::InvalidArgument { field: "cursor" });
        }
        let limit = limit.clamp(1, crate::plane::PAGE_MAX);
        let source = Source {
            table: &tables::posts::BY_HASHTAG,
            partition: tables::name_key(&tag),
            author: None,
            buffered: VecDeque::new(),
            cursor: at.map(|a| Cursor(k(a.entry_id))),
            done: false,
        };
        let mut page = self
            .merged(reader, vec![source], at, limit, Rule::Readable)
            .await?;
        // An edit can drop a tag: the index keeps the row, the post says.
        page.items.retain(|i| i.post.hashtags.contains(&tag));
        page.newer = None;
        Ok(page)
    }

    /// A page of the posts and reposts of the members of the user list `list_id` (the
    /// reader's own, or a public one), merged newest first from at most
    /// [`MAX_LIST_MEMBERS_MERGED`] members, each post by the read rule.
    pub async fn list(
        &self,
        reader: u64,
        list_id: u64,
        at: Option<PageAt>,
        limit: usize,
    ) -> Result<FeedPage> {
        if at.is_some_and(|a| a.direction == Direction::Newer) {
            return Err(Error::InvalidArgument { field: "cursor" });
        }
        let lists = self.lists.as_ref().ok_or(Error::Unavailable("lists"))?;
        // The list's visibility and its members' blocks are the lists service's rule.
        let members = lists
            .members(reader, list_id, MAX_LIST_MEMBERS_MERGED, None)
            .await?
            .ids;
        let limit = limit.clamp(1, crate::plane::PAGE_MAX);
        let start = at.map(|a| Cursor(k(a.entry_id)));
        let sources = members
            .into_iter()
            .map(|m| Source {
                table: &tables::posts::USER_POSTS,
                partition: k(m),
                author: Some(m),
                buffered: VecDeque::new(),
                cursor: start.clone(),
                done: false,
            })
            .collect();
        let mut page = self
            .merged(reader, sources, at, limit, Rule::Readable)
            .await?;
        page.newer = None;
        Ok(page)
    }

    /// A page of `author`'s posts and reposts as `reader` may see them.
    pub async fn user(
        &self,
        reader: u64,
        author: u64,
        at: Option<PageAt>,
        limit: usize,
    ) -> Result<FeedPage> {
        let limit = limit.clamp(1, crate::plane::PAGE_MAX);
        if at.is_some_and(|a| a.direction == Direction::Newer) {
            return Err(Error::InvalidArgument { field: "cursor" });
        }
        let cursor = at.map(|a| Cursor(k(a.entry_id)));
        let (posts, next) = self.posts.by_user(reader, author, limit, cursor).await?;
        let mut items = Vec::with_capacity(posts.len());
        let mut authors = HashMap::new();
        for post in posts {
            let entry_id = post.post_id;
            let Some(original_id) = post.repost_of else {
                if !post.deleted {
                    items.push(Item {
                        entry_id,
                        post,
                        reposted_by: None,
                    });
                }
                continue;
            };
            let Some(original) = self.posts.stored(original_id).await? else {
                continue;
            };
            let access = match authors.get(&original.author_id) {
                Some(a) => *a,
                None => {
                    let a = self.posts.access(reader, original.author_id).await?;
                    authors.insert(original.author_id, a);
                    a
                }
            };
            if !post.deleted && !original.deleted && access.allows(reader, &original) {
                items.push(Item {
                    entry_id,
                    post: original,
                    reposted_by: Some(author),
                });
            }
        }
        let next = next
            .and_then(|c| KeyReader::new(&c.0).u64())
            .map(|entry_id| PageAt {
                direction: Direction::Older,
                entry_id,
            });
        // A profile is paged older only (`Newer` cursors are for the home feed).
        Ok(FeedPage {
            items,
            next,
            newer: None,
        })
    }

    /// `reader` is not interested in `post_id` and/or `author_id` (0: neither): they
    /// leave `reader`'s home feed for [`tables::feed::HIDDEN_TTL`].
    pub async fn not_interested(&self, reader: u64, post_id: u64, author_id: u64) -> Result<()> {
        if post_id == 0 && author_id == 0 {
            return Err(Error::InvalidArgument { field: "post_id" });
        }
        if author_id == reader {
            return Err(Error::SelfTarget);
        }
        if post_id != 0 {
            // Only a post the reader can see (nothing is learned about the others).
            self.posts.get(reader, post_id).await?;
            self.store
                .put(&HIDDEN, &k(reader), &hidden_key("p", post_id), b"", None)
                .await?;
        }
        if author_id != 0 {
            self.store
                .put(&HIDDEN, &k(reader), &hidden_key("a", author_id), b"", None)
                .await?;
        }
        Ok(())
    }

    /// How many items newer than `since` `reader`'s home feed has (at most 100), and the
    /// newest: what a resumed subscription is told first.
    pub async fn new_since(&self, reader: u64, since: u64) -> Result<(u32, u64)> {
        let page = self
            .home(
                reader,
                Some(PageAt {
                    direction: Direction::Newer,
                    entry_id: since,
                }),
                crate::plane::PAGE_MAX,
            )
            .await?;
        let newest = page.items.first().map_or(0, |i| i.entry_id);
        Ok((page.items.len() as u32, newest))
    }

    /// Spends one of `user`'s page reads (`mark`: a "not interested").
    pub(crate) fn spend(&self, user: u64, mark: bool) -> Result<()> {
        self.limits.check(user, mark)
    }

    /// The delivery plane (`Unavailable` without one).
    pub(crate) fn delivery(&self) -> Result<&Rc<Delivery>> {
        self.delivery
            .as_ref()
            .ok_or(Error::Unavailable("live updates"))
    }

    /// The posts service feeds read through.
    pub(crate) fn posts(&self) -> &Rc<Posts<S>> {
        &self.posts
    }
}

impl<S: Store + Clone + 'static> crate::workflows::Erase for Feed<S> {
    /// A deleted account's home timeline, "not interested" marks, "For you" snapshots
    /// and seen list, and its place on the large-authors list.
    fn erase_user(&self, user: u64) -> futures::future::LocalBoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut rows = 0;
            for table in [&HOME, &HIDDEN, &tables::feed::FOR_YOU, &tables::feed::SEEN] {
                rows += tables::clear_partition(&self.store, table, &k(user)).await?;
            }
            self.store.delete(&LARGE_AUTHORS, &k(0), &k(user)).await?;
            self.large_stale.set(true);
            Ok(rows)
        })
    }
}
