//! Live pushes of large authors' posts and stories.
//!
//! A large author's post is not fanned out, so no per-follower write carries its push.
//! Instead, a reader with a live `HomeFeed` or `StoryTray` subscription on this node is
//! *watched* on their owner shard: that shard keeps the large authors the reader follows
//! (the ones their pages merge: [`Feed::large_followed`], at most
//! [`super::MAX_MERGED_AUTHORS`]) and, for each author watched by at least one of its
//! readers, one subscriber of the author's internal activity topic
//! ([`AUTHOR_ACTIVITY`]). A large author's post or story publishes one event there — one
//! job per interested shard, one Redis message per post on a fleet, never one per
//! follower — and each watching shard re-checks every watching reader with the read rule
//! the pages use (follow, mute, block, the audience, "not interested") before it pushes,
//! through the same coalescing as fanned-out posts.
//!
//! Whom a reader watches is taken when the watch starts and again at each of their
//! page reads that merges large authors (home and tray pages, and "For you" when its
//! snapshot is rebuilt). A new follow of a large account is watched at once: the graph
//! tells each new edge ([`crate::graph::FollowHook`]) to the follower's owner shard on
//! the node that made it (a reader watched only on another node of a fleet picks it up
//! at their next page read there). An account that has just become large is adopted sooner: when a
//! shard with watched readers reads the large-authors list again (at a page read, or
//! every [`super::FeedConfig::adopt_every`] at least) and finds it, each reader watched
//! there who follows it starts watching it. (The post that makes an author large is
//! itself still fanned out, up to twice the threshold's followers, so connected followers
//! are told of it too.) A watch lives while one
//! of the reader's subscriptions on this node does (a count per kind; the subscription
//! holds a [`WatchGuard`] that ends it), and lingers for
//! [`super::FeedConfig::watch_linger`] after the last one ends, so a client that
//! reconnects (or cycles subscriptions) reuses it rather than having it redone. An
//! activity event the plane drops (the watch fell behind) costs a hint, never an item:
//! the next page read has it.
//!
//! The checks are the page's: for posts, follow, mute, block, the audience, deletion
//! and "not interested"; for stories, the tray's (follow, mute, block, the audience —
//! "not interested" applies to posts only). A reader whose check fails to read is
//! skipped and logged; the others are still told. The post (or story) and the author's
//! profile are read once per event: one deleted while its readers are being checked
//! may still be announced to the rest — a hint with its id, which their page read
//! re-checks and does not show.

use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use selfie_codec::{Frame, Limits};
use selfie_protocol::Body;
use selfie_protocol::control::SubscriptionKind;
use selfie_storage::Store;

use super::{Entry, Feed, wire};
use crate::graph::FollowHook;
use crate::plane::{AUTHOR_ACTIVITY, Delivery, Plane, Shards, SubscriberEvent, Topic};
use crate::{Result, tables};

/// Readers checked at once on one shard for one activity event.
const CHECKS_IN_FLIGHT: usize = 128;
/// Readers checked between two yields of an activity's check loop.
const YIELD_EVERY: usize = 64;
/// A shard watching more readers than this leaves new large authors to their next page
/// read (a follow check per watched reader would cost too much).
const MAX_ADOPT_READERS: usize = 100_000;

/// Which subscription a watch serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// `HomeFeed`: "new posts" updates.
    Home,
    /// `StoryTray`: new stories.
    Tray,
}

/// What a large author published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activity {
    Post(u64),
    Story(u64),
}

/// The watches of one shard.
#[derive(Default)]
pub(super) struct Watches {
    readers: HashMap<u64, Watch>,
    authors: HashMap<u64, Watched>,
    /// The shard's feed, for the listeners (set by the first watch).
    feed: Option<Weak<dyn Listener>>,
    /// Whether the task that reads the large-authors list now and then runs.
    ticking: bool,
}

/// One reader's watch: how many subscriptions of each kind, and whom.
#[derive(Default)]
struct Watch {
    home: u32,
    tray: u32,
    /// Sorted.
    authors: Vec<u64>,
}

/// One watched author: the readers, and the task following the author's activity.
struct Watched {
    readers: HashSet<u64>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// What a listener task calls on its shard's feed (type-erased over the store).
trait Listener {
    fn activity(self: Rc<Self>, author: u64, activity: Activity) -> LocalBoxFuture<'static, ()>;
    fn adopt(self: Rc<Self>, added: Vec<u64>) -> LocalBoxFuture<'static, ()>;
    fn refresh(self: Rc<Self>) -> LocalBoxFuture<'static, bool>;
    fn linger_over(&self, reader: u64);
}

impl<S: Store + Clone + 'static> Listener for Feed<S> {
    fn activity(self: Rc<Self>, author: u64, activity: Activity) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move { self.on_activity(author, activity).await })
    }

    fn adopt(self: Rc<Self>, added: Vec<u64>) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move { self.adopt_now(&added).await })
    }

    /// Reads the large-authors list again when due (which adopts new ones); `false` once
    /// nobody is watched here (the ticker stops).
    fn refresh(self: Rc<Self>) -> LocalBoxFuture<'static, bool> {
        Box::pin(async move {
            {
                let mut w = self.watches.borrow_mut();
                if w.readers.is_empty() {
                    w.ticking = false;
                    return false;
                }
            }
            if let Err(e) = self.large_authors().await {
                tracing::debug!(error = %e, "large authors not read");
            }
            true
        })
    }

    fn linger_over(&self, reader: u64) {
        self.end_watch(reader);
    }
}

/// Ends a reader's watch (one subscription's share of it) when dropped.
pub struct WatchGuard<S: Store + Clone + 'static> {
    plane: Arc<Plane>,
    owner: usize,
    reader: u64,
    kind: LiveKind,
    _store: std::marker::PhantomData<fn() -> S>,
}

impl<S: Store + Clone + 'static> Drop for WatchGuard<S> {
    fn drop(&mut self) {
        let (owner, reader, kind) = (self.owner, self.reader, self.kind);
        let job = move || {
            Shards::job(move |feed: Rc<Feed<S>>| async move {
                feed.unwatch(reader, kind);
            })
        };
        let posted = self.plane.shards().submit_on(
            owner,
            "feed_unwatch",
            move |feed: Rc<Feed<S>>| async move { feed.unwatch(reader, kind) },
        );
        if posted.is_ok() {
            return;
        }
        // The owner's mailbox is full: wait for room (a lost end would keep the watch for
        // good), on whatever runtime this runs in; none means the node is stopping.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let plane = self.plane.clone();
        runtime.spawn(async move {
            let waited = tokio::time::timeout(
                UNWATCH_WAIT,
                plane.shards().post_waiting(owner, "feed_unwatch", job()),
            )
            .await;
            if !matches!(waited, Ok(Ok(()))) {
                tracing::warn!(reader, "watch not ended (owner shard stopping or stuck)");
            }
        });
    }
}

/// How long an unwatch waits for room in a full mailbox.
const UNWATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The activity an event of an author's topic announces.
fn parse_activity(frame: &Bytes) -> Option<Activity> {
    let frame = Frame::verify(frame.clone(), &Limits::DEFAULT).ok()?;
    let env = frame.envelope();
    match env.body_type() {
        Body::Feed => Some(Activity::Post(
            env.body_as_feed()?.op_as_feed_update()?.latest_post_id(),
        )),
        Body::Stories => Some(Activity::Story(
            env.body_as_stories()?.op_as_story_update()?.story_id(),
        )),
        _ => None,
    }
}

impl<S: Store + Clone + 'static> Feed<S> {
    /// Watches `reader`'s large follows for a subscription of `kind` on this node, until
    /// the returned guard drops (`None` without a delivery plane, or when the reader's
    /// owner shard is too busy to take the watch: then only fanned-out items push).
    pub fn watch_guard(&self, reader: u64, kind: LiveKind) -> Option<WatchGuard<S>> {
        let delivery = self.delivery.as_ref()?;
        let plane = delivery.plane().clone();
        let owner = delivery.owner(Topic::new(SubscriptionKind::HomeFeed, reader));
        // Posted, not awaited: once the job is in the owner's mailbox the guard exists,
        // so no cancelled await can leave a watch without its end.
        let posted =
            plane
                .shards()
                .submit_on(owner, "feed_watch", move |feed: Rc<Feed<S>>| async move {
                    feed.watch(reader, kind).await
                });
        if let Err(e) = posted {
            tracing::debug!(error = %e, reader, "large authors not watched");
            return None;
        }
        Some(WatchGuard {
            plane,
            owner,
            reader,
            kind,
            _store: std::marker::PhantomData,
        })
    }

    /// On the reader's owner shard: one more subscription of `kind`; the first one
    /// takes whom the reader watches.
    async fn watch(self: Rc<Self>, reader: u64, kind: LiveKind) {
        {
            let mut w = self.watches.borrow_mut();
            if w.feed.is_none() {
                let me: Rc<dyn Listener> = self.clone();
                w.feed = Some(Rc::downgrade(&me));
            }
            if !w.ticking {
                // While readers are watched here, the large-authors list is read again
                // now and then even without page reads, so new large authors are adopted.
                w.ticking = true;
                let feed = w.feed.clone();
                let every = self
                    .config
                    .adopt_every
                    .max(std::time::Duration::from_millis(10));
                tokio::task::spawn_local(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let Some(feed) = feed.as_ref().and_then(Weak::upgrade) else {
                            return;
                        };
                        if !feed.refresh().await {
                            return;
                        }
                    }
                });
            }
            let known = w.readers.contains_key(&reader);
            let watch = w.readers.entry(reader).or_default();
            match kind {
                LiveKind::Home => watch.home += 1,
                LiveKind::Tray => watch.tray += 1,
            }
            // Already watched (or lingering): nothing to redo.
            if known {
                return;
            }
        }
        // `large_followed` records what it finds for a watched reader.
        if let Err(e) = self.large_followed(reader).await {
            tracing::debug!(error = %e, reader, "large follows not read");
        }
    }

    /// On the reader's owner shard: one subscription of `kind` fewer; the watch ends
    /// [`super::FeedConfig::watch_linger`] after the last one, unless one comes back.
    fn unwatch(&self, reader: u64, kind: LiveKind) {
        let idle = {
            let mut w = self.watches.borrow_mut();
            let Some(watch) = w.readers.get_mut(&reader) else {
                return;
            };
            let n = match kind {
                LiveKind::Home => &mut watch.home,
                LiveKind::Tray => &mut watch.tray,
            };
            *n = n.saturating_sub(1);
            watch.home + watch.tray == 0
        };
        if !idle {
            return;
        }
        let linger = self.config.watch_linger;
        if linger.is_zero() {
            self.end_watch(reader);
            return;
        }
        let feed = self.watches.borrow().feed.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(linger).await;
            if let Some(feed) = feed.and_then(|f| f.upgrade()) {
                feed.linger_over(reader);
            }
        });
    }

    /// Ends `reader`'s watch if no subscription came back.
    fn end_watch(&self, reader: u64) {
        let idle = self
            .watches
            .borrow()
            .readers
            .get(&reader)
            .is_some_and(|w| w.home + w.tray == 0);
        if idle {
            self.rewatch(reader, &[]);
            self.watches.borrow_mut().readers.remove(&reader);
        }
    }

    /// Records that a watched `reader` follows the large `authors` now (a no-op for
    /// readers not watched on this shard).
    pub(super) fn rewatch(&self, reader: u64, authors: &[u64]) {
        let mut w = self.watches.borrow_mut();
        let w = &mut *w;
        let Some(watch) = w.readers.get_mut(&reader) else {
            return;
        };
        let mut now = authors.to_vec();
        now.sort_unstable();
        now.dedup();
        if now == watch.authors {
            return;
        }
        let before = std::mem::replace(&mut watch.authors, now.clone());
        for a in before.iter().filter(|a| now.binary_search(a).is_err()) {
            if let Some(watched) = w.authors.get_mut(a) {
                watched.readers.remove(&reader);
                if watched.readers.is_empty() {
                    // Dropping it stops its listener (and leaves the author's topic).
                    w.authors.remove(a);
                }
            }
        }
        for &a in now.iter().filter(|a| before.binary_search(a).is_err()) {
            let feed = w.feed.clone();
            w.authors
                .entry(a)
                .or_insert_with(|| Watched {
                    readers: HashSet::new(),
                    listener: listen(self.delivery.clone(), feed, a),
                })
                .readers
                .insert(reader);
        }
    }

    /// Adopts `added` (authors that have just become large) for the readers watched
    /// here who follow them, in a task of its own.
    pub(super) fn adopt_later(&self, added: Vec<u64>) {
        let feed = {
            let w = self.watches.borrow();
            if w.readers.is_empty() {
                return;
            }
            w.feed.clone()
        };
        if let Some(feed) = feed.and_then(|f| f.upgrade()) {
            tokio::task::spawn_local(feed.adopt(added));
        }
    }

    /// Each watched reader here who follows one of `added` starts watching it (up to
    /// [`super::MAX_MERGED_AUTHORS`], as their pages merge).
    async fn adopt_now(&self, added: &[u64]) {
        let readers: Vec<u64> = {
            let w = self.watches.borrow();
            if w.readers.len() > MAX_ADOPT_READERS {
                return;
            }
            w.readers.keys().copied().collect()
        };
        for &author in added {
            let follows = futures::stream::iter(readers.iter().filter(|&&r| r != author).map(
                |&reader| async move {
                    let f = tables::graph::follows(&self.store, reader, author).await;
                    (reader, f)
                },
            ))
            .buffer_unordered(CHECKS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
            for (reader, follows) in follows {
                match follows {
                    Ok(true) => self.watch_one_more(reader, author),
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, reader, "follow not read"),
                }
            }
        }
    }

    /// A watched `reader` starts watching `author` too, when they watch fewer than
    /// [`super::MAX_MERGED_AUTHORS`] (what their pages merge).
    fn watch_one_more(&self, reader: u64, author: u64) {
        let next = {
            let w = self.watches.borrow();
            match w.readers.get(&reader) {
                Some(watch)
                    if watch.authors.len() < super::MAX_MERGED_AUTHORS
                        && watch.authors.binary_search(&author).is_err() =>
                {
                    let mut next = watch.authors.clone();
                    next.push(author);
                    Some(next)
                }
                _ => None,
            }
        };
        if let Some(next) = next {
            self.rewatch(reader, &next);
        }
    }

    /// The graph's [`FollowHook`]: each new follow edge is told to the follower's
    /// owner shard on this node ([`Feed::followed`]); a job that cannot be posted (the
    /// mailbox is full) leaves the follow to the reader's next page read.
    pub fn follow_hook(delivery: Rc<Delivery>) -> FollowHook {
        Rc::new(move |reader: u64, author: u64| {
            let owner = delivery.owner(Topic::new(SubscriptionKind::HomeFeed, reader));
            let posted = delivery.plane().shards().submit_on(
                owner,
                "feed_followed",
                move |feed: Rc<Feed<S>>| async move { feed.followed(reader, author).await },
            );
            if let Err(e) = posted {
                tracing::debug!(error = %e, reader, "new follow not told to the feed");
            }
        })
    }

    /// On the reader's owner shard: `reader` now follows `author`. A reader watched here
    /// starts watching `author` at once when it is a large author (its posts are not
    /// fanned out, so without this they would show live only after the next page read).
    pub(crate) async fn followed(&self, reader: u64, author: u64) {
        if !self.watches.borrow().readers.contains_key(&reader) {
            return;
        }
        match self.large_authors().await {
            Ok(large) if large.contains(&author) => self.watch_one_more(reader, author),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, reader, "large authors not read"),
        }
    }

    /// Publishes `activity` of large `author` to the shards watching them.
    pub(super) async fn announce(&self, author: u64, activity: Activity) {
        let Some(delivery) = &self.delivery else {
            return;
        };
        let frame = match activity {
            Activity::Post(id) => wire::update_event(delivery, 1, id),
            Activity::Story(id) => wire::story_event(delivery, author, id),
        };
        let published = match frame {
            Ok(frame) => {
                delivery
                    .publish(Topic::new(AUTHOR_ACTIVITY, author), frame)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::debug!(error = %e, author, "large author's activity not announced");
        }
    }

    /// Pushes `author`'s new post or story to the watching readers who may see it.
    async fn on_activity(&self, author: u64, activity: Activity) {
        let readers: Vec<u64> = {
            let w = self.watches.borrow();
            let Some(watched) = w.authors.get(&author) else {
                return;
            };
            watched
                .readers
                .iter()
                .copied()
                .filter(|r| {
                    w.readers.get(r).is_some_and(|watch| match activity {
                        Activity::Post(_) => watch.home > 0,
                        Activity::Story(_) => watch.tray > 0,
                    })
                })
                .collect()
        };
        if readers.is_empty() {
            return;
        }
        let outcome = match activity {
            Activity::Post(post_id) => self.push_post(&readers, author, post_id).await,
            Activity::Story(story_id) => self.push_story(&readers, author, story_id).await,
        };
        if let Err(e) = outcome {
            tracing::debug!(error = %e, author, "large author's activity not pushed");
        }
    }

    async fn push_post(&self, readers: &[u64], author: u64, post_id: u64) -> Result<()> {
        let post = match self.posts.stored(post_id).await? {
            Some(p) if !p.deleted && p.author_id == author => p,
            // Deleted meanwhile, or not this author's: nobody is told.
            _ => return Ok(()),
        };
        // Read once for every reader: the post and its author's profile (the page's
        // rule then reads only what depends on the reader).
        let profile = tables::users::profile(&self.store, author).await?;
        let (post, profile) = (&post, profile.as_ref());
        let entry = Entry {
            id: post_id,
            author,
        };
        let checks = futures::stream::iter(readers.iter().map(|&reader| async move {
            let shown = async {
                let access = self.posts.access_given(reader, author, profile).await?;
                let state = self.author_state_from(reader, author, access).await?;
                if !state.follows || state.muted || state.hidden {
                    return Ok(false);
                }
                let mut authors = HashMap::from([(author, state)]);
                self.check_post(
                    reader,
                    entry,
                    state,
                    post.clone(),
                    &mut authors,
                    &mut HashSet::new(),
                )
                .await
                .map(|item| item.is_some())
            };
            (reader, shown.await)
        }))
        .buffer_unordered(CHECKS_IN_FLIGHT);
        futures::pin_mut!(checks);
        // Each reader is told as soon as their check is done, and the pushes go out
        // while later readers are checked (the embedded store answers without
        // suspending, so this loop yields now and then).
        let mut done = 0usize;
        while let Some((reader, shown)) = checks.next().await {
            done += 1;
            if done.is_multiple_of(YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
            match shown {
                Ok(true) => self.push(reader, post_id),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, reader, "reader not checked: not told"),
            }
        }
        Ok(())
    }

    async fn push_story(&self, readers: &[u64], author: u64, story_id: u64) -> Result<()> {
        let Some(delivery) = self.delivery.clone() else {
            return Ok(());
        };
        let story = match tables::stories::load(&self.store, story_id).await? {
            Some(s) if s.author_id == author && s.expires_at_ms > self.clock.now_ms() => s,
            _ => return Ok(()),
        };
        let story = &story;
        let profile = tables::users::profile(&self.store, author).await?;
        let profile = profile.as_ref();
        let checks = futures::stream::iter(readers.iter().map(|&reader| async move {
            let state = async {
                let access = self.posts.access_given(reader, author, profile).await?;
                self.author_state_from(reader, author, access).await
            };
            let admitted = state.await.map(|state| {
                state.follows
                    && !state.muted
                    && !state.access.hidden()
                    && state.access.admits(reader, story.audience, &story.mentions)
            });
            (reader, admitted)
        }))
        .buffer_unordered(CHECKS_IN_FLIGHT);
        futures::pin_mut!(checks);
        let mut done = 0usize;
        while let Some((reader, admitted)) = checks.next().await {
            done += 1;
            if done.is_multiple_of(YIELD_EVERY) {
                tokio::task::yield_now().await;
            }
            match admitted {
                Ok(true) => publish_story(&delivery, reader, author, story_id),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, reader, "reader not checked: not told"),
            }
        }
        Ok(())
    }
}

/// Tells `reader`'s tray subscribers of `author`'s new story (best effort, as for
/// fanned-out stories).
pub(super) fn publish_story(delivery: &Rc<Delivery>, reader: u64, author: u64, story_id: u64) {
    let topic = Topic::new(SubscriptionKind::StoryTray, reader);
    match wire::story_event(delivery, author, story_id) {
        Ok(frame) => delivery.publish_soon(topic, frame),
        Err(e) => tracing::debug!(error = %e, reader, "story update not encoded"),
    }
}

/// Follows `author`'s activity topic on this shard for as long as the task runs,
/// handing each event to `feed`.
fn listen(
    delivery: Option<Rc<Delivery>>,
    feed: Option<Weak<dyn Listener>>,
    author: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        let (Some(delivery), Some(feed)) = (delivery, feed) else {
            return;
        };
        let topic = Topic::new(AUTHOR_ACTIVITY, author);
        loop {
            let events = match delivery.subscribe(topic).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::debug!(error = %e, author, "author's activity not followed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let SubscriberEvent::Event(frame) = events.next().await {
                let Some(activity) = parse_activity(&frame) else {
                    continue;
                };
                let Some(feed) = feed.upgrade() else {
                    return;
                };
                feed.activity(author, activity).await;
            }
            // Cut off (it fell behind, or events were lost): the pages have what was
            // missed; follow again from here.
        }
    })
}
