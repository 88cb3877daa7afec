//! Home feeds on both storage backends (the embedded store, and the real CQL server named
//! by `SELFIE_CQL_NODES`, started by `scripts/test`): the same test bodies on each.
//! Fan-outs run through the durable job rows the posts commit (`fan_out_pending`), so
//! the tests see exactly what a worker would do, without timing.

use std::rc::Rc;
use std::sync::Arc;

use selfie_services::Error;
use selfie_services::feed::{Direction, Feed, FeedConfig, FeedPage, PageAt, fanout_queue};
use selfie_services::graph::Graph;
use selfie_services::posts::{Audience, Posts};
use selfie_services::schema;
use selfie_services::users::{ProfileUpdate, Users};
use selfie_storage::cql::{CqlConfig, CqlStore};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{Store, SystemClock};

fn embedded() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    (store, dir)
}

async fn cql() -> CqlStore {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let config = CqlConfig::from_url(&format!("cql://{nodes}/feed_{:08x}", rand::random::<u32>()))
        .expect("url");
    CqlStore::open(&config, schema::MIGRATIONS, &schema::tables())
        .await
        .expect("store")
        .drop_keyspace_when_dropped(&config)
}

const ANA: u64 = 1;
const BEN: u64 = 2;
const CAT: u64 = 3;
const DAN: u64 = 4;
const EVE: u64 = 5;

struct World<S> {
    store: S,
    users: Users<S>,
    graph: Graph<S>,
    posts: Rc<Posts<S>>,
    feed: Feed<S>,
}

/// A node's posts and feed over `store`, as shard 0 of node `node`, with `config`.
fn node<S: Store + Clone + 'static>(
    store: &S,
    node: u16,
    config: FeedConfig,
) -> (Rc<Posts<S>>, Feed<S>) {
    let (hook, jobs) = fanout_queue(node, 0);
    let posts = Rc::new(
        Posts::new(store.clone(), Arc::new(SystemClock), node, 0)
            .expect("posts")
            .with_fanout(hook),
    );
    let lists = Rc::new(
        selfie_services::graph::lists::Lists::new(store.clone(), Arc::new(SystemClock), node, 0)
            .expect("lists"),
    );
    let feed = Feed::new(
        store.clone(),
        posts.clone(),
        Arc::new(SystemClock),
        jobs,
        config,
    )
    .with_lists(lists);
    (posts, feed)
}

async fn world<S: Store + Clone + 'static>(store: S, config: FeedConfig) -> World<S> {
    let users = Users::new(store.clone());
    for (id, name) in [
        (ANA, "ana"),
        (BEN, "ben"),
        (CAT, "cat"),
        (DAN, "dan"),
        (EVE, "eve"),
    ] {
        users.create(id, name).await.expect("profile");
    }
    let (posts, feed) = node(&store, 1, config);
    World {
        graph: Graph::new(store.clone()),
        users,
        posts,
        feed,
        store,
    }
}

impl<S: Store + Clone + 'static> World<S> {
    async fn post(&self, author: u64, text: &str, audience: Audience) -> u64 {
        let p = self
            .posts
            .create(author, text, audience, None)
            .await
            .expect("posted");
        self.feed.fan_out_pending().await.expect("fanned out");
        p.post_id
    }

    /// Every item of `reader`'s home feed, paging `limit` at a time: (text, reposted by).
    async fn home(&self, reader: u64, limit: usize) -> Vec<(String, Option<u64>)> {
        let mut out = Vec::new();
        let mut at = None;
        loop {
            let page: FeedPage = self.feed.home(reader, at, limit).await.expect("page");
            out.extend(
                page.items
                    .iter()
                    .map(|i| (i.post.text.clone(), i.reposted_by)),
            );
            match page.next {
                Some(n) => at = Some(n),
                None => return out,
            }
        }
    }

    async fn texts(&self, reader: u64) -> Vec<String> {
        self.home(reader, 4)
            .await
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn privacy_and_propagation<S: Store + Clone + 'static>(store: S) {
    let w = world(store, FeedConfig::default()).await;
    // Ana is public; Ben is private. Cat and Dan follow Ana; Cat is approved by Ben,
    // Dan's request to Ben waits. Cat is Ana's close friend.
    w.users
        .update(
            BEN,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    for (a, b) in [(CAT, ANA), (DAN, ANA), (CAT, BEN), (DAN, BEN), (EVE, CAT)] {
        w.graph.follow(a, b).await.expect("follow");
    }
    w.graph.approve(BEN, CAT).await.expect("approved");
    w.graph
        .update_close_friends(ANA, &[CAT], &[])
        .await
        .expect("close friends");
    w.post(ANA, "ana public", Audience::Public).await;
    w.post(BEN, "ben private", Audience::Public).await;
    w.post(ANA, "ana close friends", Audience::CloseFriends)
        .await;
    w.post(ANA, "ana followers", Audience::Followers).await;
    w.post(ANA, "ana to @eve only", Audience::MentionedOnly)
        .await;
    assert_eq!(
        w.texts(CAT).await,
        strings(&[
            "ana followers",
            "ana close friends",
            "ben private",
            "ana public"
        ])
    );
    // Dan: no close-friends post, nothing from Ben until approved.
    assert_eq!(
        w.texts(DAN).await,
        strings(&["ana followers", "ana public"])
    );
    // Eve follows nobody but Cat: Ana's mention of her does not reach a non-follower's
    // home feed, and nothing else does either.
    assert!(w.texts(EVE).await.is_empty());
    // The author sees all of her own posts.
    assert_eq!(w.texts(ANA).await.len(), 4);
    // Cat reposts Ana's public post: Eve (who follows Cat) sees it, as a repost.
    w.posts
        .repost(CAT, w.home_post(CAT, "ana public").await)
        .await
        .expect("repost");
    w.feed.fan_out_pending().await.expect("fanned out");
    assert_eq!(
        w.home(EVE, 10).await,
        vec![("ana public".to_string(), Some(CAT))]
    );
    // Cat sees Ana's post once, at its own place, although her own repost is newer.
    let cat = w.texts(CAT).await;
    assert_eq!(cat.iter().filter(|t| *t == "ana public").count(), 1);
    assert_eq!(cat.last().map(String::as_str), Some("ana public"));
    // Ana makes Cat no longer a close friend: the entry already in Cat's timeline is
    // re-checked and gone.
    w.graph
        .update_close_friends(ANA, &[], &[CAT])
        .await
        .expect("removed");
    assert!(
        !w.texts(CAT)
            .await
            .contains(&"ana close friends".to_string())
    );
    // Mute hides, unmute shows again; unfollow hides.
    w.graph.mute(DAN, ANA, None).await.expect("muted");
    assert!(w.texts(DAN).await.is_empty());
    w.graph.unmute(DAN, ANA).await.expect("unmuted");
    assert_eq!(w.texts(DAN).await.len(), 2);
    w.graph.unfollow(DAN, ANA).await.expect("unfollowed");
    assert!(w.texts(DAN).await.is_empty());
    // A block either way hides everything, reposts of the blocker's posts included.
    w.graph.block(ANA, EVE).await.expect("blocked");
    assert!(w.home(EVE, 10).await.is_empty());
    w.graph.unblock(ANA, EVE).await.expect("unblocked");
    assert_eq!(w.home(EVE, 10).await.len(), 1);
    // Undoing the repost takes it out of Eve's feed.
    let ana_public = w.home_post(ANA, "ana public").await;
    w.posts.undo_repost(CAT, ana_public).await.expect("undone");
    assert!(w.home(EVE, 10).await.is_empty());
    // Deleting a post removes it from every timeline.
    let followers_post = w.home_post(CAT, "ana followers").await;
    w.posts.delete(ANA, followers_post).await.expect("deleted");
    assert!(!w.texts(CAT).await.contains(&"ana followers".to_string()));
    // Not interested in a post, then in an author.
    let ben_post = w.home_post(CAT, "ben private").await;
    w.feed
        .not_interested(CAT, ben_post, 0)
        .await
        .expect("not interested");
    assert!(!w.texts(CAT).await.contains(&"ben private".to_string()));
    w.feed
        .not_interested(CAT, 0, ANA)
        .await
        .expect("not interested");
    assert!(w.texts(CAT).await.is_empty());
    assert!(matches!(
        w.feed.not_interested(CAT, 0, CAT).await,
        Err(Error::SelfTarget)
    ));
    // A post the reader cannot see cannot be marked (its existence stays hidden).
    let secret = w.post(BEN, "ben again", Audience::Public).await;
    assert!(matches!(
        w.feed.not_interested(DAN, secret, 0).await,
        Err(Error::NotFound(_))
    ));
}

impl<S: Store + Clone + 'static> World<S> {
    /// The id of the post with `text` in `reader`'s home feed.
    async fn home_post(&self, reader: u64, text: &str) -> u64 {
        let page = self.feed.home(reader, None, 100).await.expect("page");
        page.items
            .iter()
            .find(|i| i.post.text == text)
            .map(|i| i.post.post_id)
            .expect("in the feed")
    }
}

/// The same story told to a world that fans every author out and to one where Ana is a
/// large account (merged at read time): every reader's feed reads the same, page by page.
async fn hybrid_reads_like_fan_out<S: Store + Clone + 'static>(a: S, b: S) {
    let fan_out = world(a, FeedConfig::default()).await;
    let merged = world(
        b,
        FeedConfig {
            fanout_threshold: 2,
            large_refresh: std::time::Duration::ZERO,
            ..FeedConfig::default()
        },
    )
    .await;
    for w in [&fan_out, &merged] {
        // Ana has 3 followers (large in the second world), Ben 1.
        for (x, y) in [(BEN, ANA), (CAT, ANA), (DAN, ANA), (CAT, BEN)] {
            w.graph.follow(x, y).await.expect("follow");
        }
        w.graph
            .update_close_friends(ANA, &[DAN], &[])
            .await
            .expect("close friends");
        for i in 0..7 {
            w.post(ANA, &format!("ana {i}"), Audience::Public).await;
            w.post(BEN, &format!("ben {i}"), Audience::Public).await;
            if i % 3 == 0 {
                w.post(ANA, &format!("ana cf {i}"), Audience::CloseFriends)
                    .await;
            }
        }
        let ana_2 = w.home_post(ANA, "ana 2").await;
        w.posts.delete(ANA, ana_2).await.expect("deleted");
        // Ben reposts one of Ana's posts: Cat sees it once (she follows both).
        let ana_5 = w.home_post(ANA, "ana 5").await;
        w.posts.repost(BEN, ana_5).await.expect("repost");
        w.feed.fan_out_pending().await.expect("fanned out");
        w.post(BEN, "ben last", Audience::Public).await;
    }
    assert_eq!(
        merged
            .store
            .scan(
                &selfie_services::tables::feed::LARGE_AUTHORS,
                &selfie_services::tables::key(0),
                &selfie_storage::Scan::all(10),
            )
            .await
            .expect("scan")
            .rows
            .len(),
        1,
        "Ana, and only Ana, is merged at read time"
    );
    for reader in [ANA, BEN, CAT, DAN, EVE] {
        for limit in [1, 3, 20] {
            let expected = fan_out.home(reader, limit).await;
            assert_eq!(
                merged.home(reader, limit).await,
                expected,
                "reader {reader}, pages of {limit}"
            );
        }
    }
    // Ben's repost of "ana 5" is not shown to Cat, who follows Ana and sees the original.
    let cat = fan_out.texts(CAT).await;
    assert_eq!(cat.len(), 14, "{cat:?}");
    assert!(!cat.contains(&"ana 2".to_string()));
    assert_eq!(fan_out.texts(DAN).await.len(), 6 + 3);
}

/// New posts arriving between pages neither repeat nor skip anything; the newer cursor
/// then brings exactly the new ones.
async fn pagination_is_stable<S: Store + Clone + 'static>(store: S) {
    let w = world(store, FeedConfig::default()).await;
    w.graph.follow(BEN, ANA).await.expect("follow");
    for i in 0..12 {
        w.post(ANA, &format!("old {i}"), Audience::Public).await;
    }
    let first = w.feed.home(BEN, None, 5).await.expect("page");
    let newer = first.newer.expect("a newer cursor");
    let mut seen: Vec<String> = first.items.iter().map(|i| i.post.text.clone()).collect();
    let mut at = first.next;
    let mut n = 0;
    while let Some(cursor) = at {
        w.post(ANA, &format!("new {n}"), Audience::Public).await;
        n += 1;
        let page = w.feed.home(BEN, Some(cursor), 5).await.expect("page");
        seen.extend(page.items.iter().map(|i| i.post.text.clone()));
        at = page.next;
    }
    let expected: Vec<String> = (0..12).rev().map(|i| format!("old {i}")).collect();
    assert_eq!(seen, expected);
    // What arrived meanwhile, from the newer cursor, in pages of 2 (oldest pages first,
    // each newest first).
    let mut fresh = Vec::new();
    let mut at = Some(newer);
    while let Some(cursor) = at {
        let page = w.feed.home(BEN, Some(cursor), 2).await.expect("page");
        assert_eq!(cursor.direction, Direction::Newer);
        let mut texts: Vec<String> = page.items.iter().map(|i| i.post.text.clone()).collect();
        texts.reverse();
        fresh.extend(texts);
        at = page.next;
    }
    let expected: Vec<String> = (0..n).map(|i| format!("new {i}")).collect();
    assert_eq!(fresh, expected);
    assert_eq!(
        w.feed
            .new_since(BEN, newer.entry_id)
            .await
            .expect("count")
            .0,
        n
    );
    // A cursor that is not one is refused.
    assert!(PageAt::parse(&[7, 0, 0]).is_err());
    assert!(PageAt::parse(&[2, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
}

/// A fan-out committed with its post survives a crash before the worker ran: the next
/// worker of that node and shard delivers it. Timelines are trimmed to their length.
async fn fan_outs_survive_restarts_and_timelines_stay_bounded<S: Store + Clone + 'static>(
    store: S,
) {
    let config = FeedConfig {
        home_max: 5,
        ..FeedConfig::default()
    };
    let w = world(store.clone(), config).await;
    w.graph.follow(BEN, ANA).await.expect("follow");
    // Posted, but the worker never ran (the node "crashed").
    w.posts
        .create(ANA, "before the crash", Audience::Public, None)
        .await
        .expect("posted");
    drop(w.feed);
    let (_posts, feed) = node(&store, 1, config);
    assert_eq!(feed.fan_out_pending().await.expect("resumed"), 1);
    let page = feed.home(BEN, None, 10).await.expect("page");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].post.text, "before the crash");
    assert_eq!(feed.fan_out_pending().await.expect("nothing left"), 0);
    // Twenty entries, trimmed to the newest five.
    for i in 0..20 {
        w.posts
            .create(ANA, &format!("p {i}"), Audience::Public, None)
            .await
            .expect("posted");
    }
    feed.fan_out_pending().await.expect("fanned out");
    feed.trim(BEN).await.expect("trimmed");
    let page = feed.home(BEN, None, 100).await.expect("page");
    let texts: Vec<&str> = page.items.iter().map(|i| i.post.text.as_str()).collect();
    assert_eq!(texts, ["p 19", "p 18", "p 17", "p 16", "p 15"]);
}

/// "For you": affinity and engagement lift older posts, no more than two in a row from
/// one author, pages of a ranking never shift, a refresh leaves out what was served.
async fn for_you_ranks_diversifies_and_pages_stably<S: Store + Clone + 'static>(store: S) {
    let w = world(store, FeedConfig::default()).await;
    for a in [ANA, BEN, CAT] {
        w.graph.follow(DAN, a).await.expect("follow");
    }
    let cat = w.post(CAT, "cat, older", Audience::Public).await;
    w.posts.react(DAN, cat, "🔥").await.expect("react");
    w.post(BEN, "ben", Audience::Public).await;
    for i in 0..4 {
        w.post(ANA, &format!("ana {i}"), Audience::Public).await;
    }
    let first = w.feed.for_you(DAN, None, 3).await.expect("page");
    let texts = |p: &selfie_services::feed::RankedPage| -> Vec<String> {
        p.items.iter().map(|i| i.item.post.text.clone()).collect()
    };
    let page1 = texts(&first);
    assert_eq!(page1[0], "cat, older", "affinity and engagement first");
    assert!(first.items[0].score > first.items[1].score);
    // New posts meanwhile do not shift the ranking being paged.
    w.post(ANA, "ana later", Audience::Public).await;
    let mut all = page1.clone();
    let mut at = first.next;
    while let Some(cursor) = at {
        let page = w.feed.for_you(DAN, Some(cursor), 3).await.expect("page");
        all.extend(texts(&page));
        at = page.next;
    }
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(!all.contains(&"ana later".to_string()));
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "no duplicates");
    // Never three of Ana's in a row while others wait.
    let authors: Vec<bool> = all.iter().map(|t| t.starts_with("ana")).collect();
    assert!(!authors.windows(3).any(|w| w.iter().all(|&a| a)), "{all:?}");
    // A refresh ranks only what was not served yet.
    let fresh = w.feed.for_you(DAN, None, 10).await.expect("page");
    assert_eq!(texts(&fresh), vec!["ana later".to_string()]);
    // A cursor that is not one, or a snapshot that is gone, is refused.
    assert!(selfie_services::feed::RankedAt::parse(&[2, 1]).is_err());
    let gone = selfie_services::feed::RankedAt {
        snapshot: 12345,
        offset: 0,
    };
    assert!(matches!(
        w.feed.for_you(DAN, Some(gone), 3).await,
        Err(Error::Stale(_))
    ));
}

#[tokio::test]
async fn for_you_ranks_diversifies_and_pages_stably_embedded() {
    let (s, _d) = embedded();
    for_you_ranks_diversifies_and_pages_stably(s).await;
}

#[tokio::test]
async fn for_you_ranks_diversifies_and_pages_stably_cql() {
    for_you_ranks_diversifies_and_pages_stably(cql().await).await;
}

/// Hashtag and list feeds show anyone's posts the reader may read, with the same checks.
async fn hashtag_and_list_feeds<S: Store + Clone + 'static>(store: S) {
    let w = world(store.clone(), FeedConfig::default()).await;
    w.users
        .update(
            BEN,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    w.graph.follow(DAN, BEN).await.expect("request");
    w.graph.approve(BEN, DAN).await.expect("approved");
    let ana_tagged = w.post(ANA, "golden #Sunset", Audience::Public).await;
    w.post(BEN, "#sunset from a private account", Audience::Public)
        .await;
    w.post(ANA, "no tag here", Audience::Public).await;
    let tagged = |reader| {
        let feed = &w.feed;
        async move {
            feed.hashtag(reader, "#SUNSET", None, 20)
                .await
                .expect("page")
                .items
                .into_iter()
                .map(|i| i.post.text)
                .collect::<Vec<_>>()
        }
    };
    // Cat follows nobody: the public post only. Dan (Ben's approved follower): both.
    assert_eq!(tagged(CAT).await, vec!["golden #Sunset".to_string()]);
    assert_eq!(tagged(DAN).await.len(), 2);
    // An edit that drops the tag takes the post out; a block hides the author.
    w.posts
        .edit(ANA, ana_tagged, "golden hour")
        .await
        .expect("edited");
    assert!(tagged(CAT).await.is_empty());
    w.graph.block(BEN, DAN).await.expect("blocked");
    assert!(tagged(DAN).await.is_empty());
    assert!(matches!(
        w.feed.hashtag(CAT, "not a tag!", None, 20).await,
        Err(Error::InvalidArgument { .. })
    ));
    // A list of Ana and Ben: Cat sees Ana's posts, not the private account's.
    let lists = selfie_services::graph::lists::Lists::new(store, Arc::new(SystemClock), 9, 0)
        .expect("lists");
    let list = lists.create(CAT, "friends", "", false).await.expect("list");
    lists
        .add_members(CAT, list.list_id, &[ANA, BEN])
        .await
        .expect("members");
    let page = w
        .feed
        .list(CAT, list.list_id, None, 20)
        .await
        .expect("page");
    let authors: Vec<u64> = page.items.iter().map(|i| i.post.author_id).collect();
    assert_eq!(authors, vec![ANA, ANA]);
    // Someone else's private list is not found.
    let private = lists.create(CAT, "secret", "", true).await.expect("list");
    assert!(matches!(
        w.feed.list(DAN, private.list_id, None, 20).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn hashtag_and_list_feeds_embedded() {
    let (s, _d) = embedded();
    hashtag_and_list_feeds(s).await;
}

#[tokio::test]
async fn hashtag_and_list_feeds_cql() {
    hashtag_and_list_feeds(cql().await).await;
}

#[tokio::test]
async fn privacy_and_propagation_embedded() {
    let (s, _d) = embedded();
    privacy_and_propagation(s).await;
}

#[tokio::test]
async fn privacy_and_propagation_cql() {
    privacy_and_propagation(cql().await).await;
}

#[tokio::test]
async fn hybrid_reads_like_fan_out_embedded() {
    let (a, _da) = embedded();
    let (b, _db) = embedded();
    hybrid_reads_like_fan_out(a, b).await;
}

#[tokio::test]
async fn hybrid_reads_like_fan_out_cql() {
    hybrid_reads_like_fan_out(cql().await, cql().await).await;
}

#[tokio::test]
async fn pagination_is_stable_embedded() {
    let (s, _d) = embedded();
    pagination_is_stable(s).await;
}

#[tokio::test]
async fn pagination_is_stable_cql() {
    pagination_is_stable(cql().await).await;
}

#[tokio::test]
async fn fan_outs_survive_restarts_and_timelines_stay_bounded_embedded() {
    let (s, _d) = embedded();
    fan_outs_survive_restarts_and_timelines_stay_bounded(s).await;
}

#[tokio::test]
async fn fan_outs_survive_restarts_and_timelines_stay_bounded_cql() {
    fan_outs_survive_restarts_and_timelines_stay_bounded(cql().await).await;
}
