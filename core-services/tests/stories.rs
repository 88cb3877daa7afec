//! Stories on both storage backends (the embedded store, and the real CQL server named by
//! `SELFIE_CQL_NODES`, started by `scripts/test`), with an injected clock: privacy,
//! the tray's order, viewers and reactions, replies as chat messages sent once, expiry
//! everywhere and highlights past it — 24 hours pass without sleeping.

mod support;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use selfie_services::Error;
use selfie_services::chat::{Chat, MessageKind};
use selfie_services::feed::{Feed, FeedConfig, fanout_queue};
use selfie_services::graph::Graph;
use selfie_services::posts::{Audience, Posts};
use selfie_services::schema;
use selfie_services::stories::{NewStory, Stories};
use selfie_services::users::{ProfileUpdate, Users};
use selfie_storage::Store;
use selfie_storage::cql::{CqlConfig, CqlStore};
use selfie_storage::embedded::EmbeddedStore;
use support::ManualClock;

fn clock() -> Arc<ManualClock> {
    ManualClock::new()
}

fn embedded(clock: Arc<ManualClock>) -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), &schema::tables(), clock).expect("store");
    (store, dir)
}

async fn cql() -> CqlStore {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let url = format!("cql://{nodes}/stories_{:08x}", rand::random::<u32>());
    let config = CqlConfig::from_url(&url).expect("url");
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
    clock: Arc<ManualClock>,
    users: Users<S>,
    graph: Graph<S>,
    feed: Rc<Feed<S>>,
    chat: Rc<Chat<S>>,
    stories: Stories<S>,
}

async fn world<S: Store + Clone + 'static>(store: S, clock: Arc<ManualClock>) -> World<S> {
    let users = Users::new(store.clone());
    for (id, name) in [
        (ANA, "ana"),
        (BEN, "ben"),
        (CAT, "cat"),
        (DAN, "dan"),
        (EVE, "eve"),
    ] {
        users.create(id, name).await.expect("profile");
        support::ready_media(&store, id, MEDIA + id).await;
    }
    let (hook, jobs) = fanout_queue(1, 0);
    let posts = Rc::new(
        Posts::new(store.clone(), clock.clone(), 1, 0)
            .expect("posts")
            .with_fanout(hook.clone()),
    );
    let feed = Rc::new(Feed::new(
        store.clone(),
        posts.clone(),
        clock.clone(),
        jobs,
        FeedConfig::default(),
    ));
    let chat = Rc::new(Chat::new(store.clone(), clock.clone(), 1, 0).expect("chat"));
    let stories = Stories::new(store.clone(), clock.clone(), 1, 0, posts, feed.clone())
        .expect("stories")
        .with_fanout(hook)
        .with_chat(chat.clone());
    World {
        clock,
        graph: Graph::new(store),
        users,
        feed,
        chat,
        stories,
    }
}

/// Each user's ready image is `MEDIA + user`.
const MEDIA: u64 = 7_000;

fn story(author: u64, audience: Audience) -> NewStory {
    NewStory {
        media_id: MEDIA + author,
        caption: "sunset".into(),
        link_url: String::new(),
        audience,
        duration: None,
        mentions: Vec::new(),
        idempotency_key: None,
    }
}

impl<S: Store + Clone + 'static> World<S> {
    async fn post(&self, author: u64, audience: Audience) -> u64 {
        let s = self
            .stories
            .create(author, story(author, audience))
            .await
            .expect("story");
        self.feed.fan_out_pending().await.expect("fanned out");
        s.story_id
    }

    /// `reader`'s tray: (author, story ids, all seen).
    async fn tray(&self, reader: u64) -> Vec<(u64, Vec<u64>, bool)> {
        let (entries, next) = self.stories.tray(reader, 0, 100).await.expect("tray");
        assert!(next.is_none());
        entries
            .into_iter()
            .map(|e| {
                let ids = e.stories.iter().map(|s| s.story.story_id).collect();
                (e.author_id, ids, e.all_seen)
            })
            .collect()
    }
}

async fn privacy_tray_and_viewers<S: Store + Clone + 'static>(store: S, clock: Arc<ManualClock>) {
    let w = world(store, clock).await;
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
    for (a, b) in [(CAT, ANA), (CAT, BEN), (DAN, ANA), (DAN, BEN), (DAN, CAT)] {
        w.graph.follow(a, b).await.expect("follow");
    }
    w.graph.approve(BEN, CAT).await.expect("approved");
    w.graph
        .update_close_friends(ANA, &[CAT], &[])
        .await
        .expect("close friends");
    // Dan has seen Cat's earlier story: Cat is closer to him than Ana.
    let c0 = w.post(CAT, Audience::Followers).await;
    w.stories.seen(DAN, &[c0]).await.expect("seen");
    assert_eq!(w.stories.affinity(DAN, CAT).await.expect("affinity"), 1);
    w.clock.advance(Duration::from_secs(60));
    let c1 = w.post(CAT, Audience::Followers).await;
    let a1 = w.post(ANA, Audience::Followers).await;
    let a2 = w.post(ANA, Audience::CloseFriends).await;
    let b1 = w.post(BEN, Audience::Public).await;
    // Cat: Ana's two (she is a close friend) and Ben's (approved); her own first.
    let cat = w.tray(CAT).await;
    assert_eq!(cat[0], (CAT, vec![c0, c1], false));
    assert_eq!(cat.len(), 3);
    assert!(cat.contains(&(ANA, vec![a1, a2], false)));
    assert!(cat.contains(&(BEN, vec![b1], false)));
    // Dan: no close-friends story, nothing of Ben's until approved; Cat (affinity) comes
    // before Ana although Ana's story is newer.
    assert_eq!(
        w.tray(DAN).await,
        vec![(CAT, vec![c0, c1], false), (ANA, vec![a1], false)]
    );
    // Eve follows nobody: an empty tray, and no story of theirs is visible to her.
    assert!(w.tray(EVE).await.is_empty());
    assert!(w.stories.of_user(EVE, ANA).await.expect("none").is_empty());
    assert!(w.stories.of_user(EVE, BEN).await.expect("none").is_empty());
    assert!(matches!(
        w.stories.react(EVE, a1, "🔥").await,
        Err(Error::NotFound(_))
    ));
    // Seen stories go after unseen ones.
    w.stories.seen(CAT, &[a1, a2]).await.expect("seen");
    let cat = w.tray(CAT).await;
    assert_eq!(cat[1], (BEN, vec![b1], false));
    assert_eq!(cat[2], (ANA, vec![a1, a2], true));
    // Viewers, with reactions, for the author only.
    w.stories.seen(DAN, &[a1]).await.expect("seen");
    w.stories.react(DAN, a1, "🔥").await.expect("reacted");
    w.stories
        .seen(DAN, &[a1])
        .await
        .expect("seen again: nothing new");
    let (viewers, _, total) = w.stories.viewers(ANA, a1, 10, None).await.expect("viewers");
    assert_eq!(total, 2);
    let dan = viewers.iter().find(|v| v.user_id == DAN).expect("dan");
    assert_eq!(dan.reaction.as_deref(), Some("🔥"));
    assert!(matches!(
        w.stories.viewers(CAT, a1, 10, None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.stories.react(ANA, a1, "🔥").await,
        Err(Error::SelfTarget)
    ));
    // A block hides everything both ways; a mute keeps an author out of the tray.
    w.graph.block(ANA, DAN).await.expect("blocked");
    assert_eq!(w.tray(DAN).await, vec![(CAT, vec![c0, c1], false)]);
    let (viewers, _, _) = w.stories.viewers(ANA, a1, 10, None).await.expect("viewers");
    assert_eq!(
        viewers.iter().map(|v| v.user_id).collect::<Vec<_>>(),
        vec![CAT],
        "a blocked viewer is not listed"
    );
    assert!(w.stories.of_user(DAN, ANA).await.expect("none").is_empty());
    w.graph.mute(CAT, BEN, None).await.expect("muted");
    assert!(!w.tray(CAT).await.iter().any(|(a, _, _)| *a == BEN));
    // A retried create with the same key is one story.
    let keyed = NewStory {
        idempotency_key: Some("k-1".into()),
        ..story(EVE, Audience::Followers)
    };
    let first = w.stories.create(EVE, keyed.clone()).await.expect("story");
    let again = w.stories.create(EVE, keyed).await.expect("story");
    assert_eq!(first.story_id, again.story_id);
    // Bad input is refused with the field at fault.
    let bad_link = NewStory {
        link_url: "javascript:alert(1)".into(),
        ..story(EVE, Audience::Followers)
    };
    assert!(matches!(
        w.stories.create(EVE, bad_link).await,
        Err(Error::InvalidArgument { field: "link_url" })
    ));
    assert!(matches!(
        w.stories
            .create(EVE, story(EVE, Audience::MentionedOnly))
            .await,
        Err(Error::InvalidArgument { field: "audience" })
    ));
}

async fn expiry_highlights_and_replies<S: Store + Clone + 'static>(
    store: S,
    clock: Arc<ManualClock>,
) {
    let w = world(store, clock).await;
    for (a, b) in [(CAT, ANA), (ANA, CAT)] {
        w.graph.follow(a, b).await.expect("follow");
    }
    let s1 = w.post(ANA, Audience::Followers).await;
    let s2 = w.post(ANA, Audience::Followers).await;
    let short = w
        .stories
        .create(
            ANA,
            NewStory {
                duration: Some(Duration::from_secs(3600)),
                ..story(ANA, Audience::Followers)
            },
        )
        .await
        .expect("story")
        .story_id;
    w.stories.seen(CAT, &[s1]).await.expect("seen");
    w.stories.highlight(ANA, s1).await.expect("highlighted");
    assert!(matches!(
        w.stories.highlight(CAT, s2).await,
        Err(Error::NotFound(_))
    ));
    // A reply is a chat message to the author, sent once however often it is retried.
    let (conversation, seq) = w
        .stories
        .reply(CAT, s2, "love this", "reply-1")
        .await
        .expect("replied");
    let (again, seq_again) = w
        .stories
        .reply(CAT, s2, "love this", "reply-1")
        .await
        .expect("retried");
    assert_eq!((again, seq_again), (conversation, seq));
    let (messages, _) = w
        .chat
        .history(ANA, conversation, 0, 50)
        .await
        .expect("history");
    let replies: Vec<_> = messages
        .iter()
        .filter(|m| m.kind == MessageKind::StoryReply)
        .collect();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].ref_id, s2);
    // Two hours on: the one-hour story is gone, the others are not.
    w.clock.advance(Duration::from_secs(2 * 3600));
    let live: Vec<u64> = w
        .stories
        .of_user(CAT, ANA)
        .await
        .expect("stories")
        .iter()
        .map(|s| s.story.story_id)
        .collect();
    assert_eq!(live, vec![s1, s2]);
    assert!(!live.contains(&short));
    // A day on: gone from the tray, the author's stories and the viewer list; the
    // highlight stays, for the author and her followers.
    w.clock.advance(Duration::from_secs(23 * 3600));
    assert!(w.tray(CAT).await.is_empty());
    assert!(w.stories.of_user(CAT, ANA).await.expect("none").is_empty());
    assert!(w.stories.of_user(ANA, ANA).await.expect("none").is_empty());
    assert!(matches!(
        w.stories.viewers(ANA, s1, 10, None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.stories.reply(CAT, s2, "late", "reply-2").await,
        Err(Error::NotFound(_))
    ));
    let (kept, _) = w
        .stories
        .highlights(CAT, ANA, 10, None)
        .await
        .expect("highlights");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].story.story_id, s1);
    assert!(kept[0].highlighted);
    // Eve does not follow Ana: the followers-only highlight is not hers to see.
    let (none, _) = w
        .stories
        .highlights(EVE, ANA, 10, None)
        .await
        .expect("highlights");
    assert!(none.is_empty());
    // The author removes it.
    w.stories.remove_highlight(ANA, s1).await.expect("removed");
    let (none, _) = w
        .stories
        .highlights(ANA, ANA, 10, None)
        .await
        .expect("highlights");
    assert!(none.is_empty());
}

#[tokio::test]
async fn privacy_tray_and_viewers_embedded() {
    let c = clock();
    let (s, _d) = embedded(c.clone());
    privacy_tray_and_viewers(s, c).await;
}

#[tokio::test]
async fn privacy_tray_and_viewers_cql() {
    privacy_tray_and_viewers(cql().await, clock()).await;
}

#[tokio::test]
async fn expiry_highlights_and_replies_embedded() {
    let c = clock();
    let (s, _d) = embedded(c.clone());
    expiry_highlights_and_replies(s, c).await;
}

#[tokio::test]
async fn expiry_highlights_and_replies_cql() {
    expiry_highlights_and_replies(cql().await, clock()).await;
}
