//! Notifications on both storage backends (the embedded store, and the real CQL server
//! named by `SELFIE_CQL_NODES`, started by `scripts/test`): raised by the graph and posts
//! services through a notifier, recorded, aggregated, read, and filtered by blocks,
//! mutes, preferences and deletions; concurrent actors on two "nodes" each count once.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use selfie_services::Error;
use selfie_services::graph::Graph;
use selfie_services::notifications::{
    DevicePush, Kind, Note, Notification, Notifications, Notifier, Preference, PushToken, Target,
};
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
    let url = format!("cql://{nodes}/notif_{:08x}", rand::random::<u32>());
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
const ALL: [u64; 5] = [ANA, BEN, CAT, DAN, EVE];

/// What a device-push sender was asked to send: (user, kind).
#[derive(Default)]
struct Pushed(RefCell<Vec<(u64, Kind)>>);

impl DevicePush for Pushed {
    fn send(&self, user: u64, tokens: &[PushToken], n: &Notification) {
        assert!(!tokens.is_empty());
        self.0.borrow_mut().push((user, n.kind));
    }
}

struct World<S> {
    users: Users<S>,
    graph: Graph<S>,
    posts: Posts<S>,
    notes: Rc<RefCell<Vec<Note>>>,
    /// "Node" 1 and "node" 2 over the same store.
    a: Notifications<S>,
    b: Notifications<S>,
    pushed: Rc<Pushed>,
}

async fn world<S: Store + Clone + 'static>(store: S) -> World<S> {
    let users = Users::new(store.clone());
    for (id, name) in ALL.iter().zip(["ana", "ben", "cat", "dan", "eve"]) {
        users.create(*id, name).await.expect("profile");
    }
    let notes: Rc<RefCell<Vec<Note>>> = Rc::default();
    let queue = notes.clone();
    let notifier = Notifier::new(move |n| queue.borrow_mut().push(n));
    let pushed = Rc::new(Pushed::default());
    let node =
        |n| Notifications::new(store.clone(), Arc::new(SystemClock), n, 0).expect("notifications");
    World {
        graph: Graph::new(store.clone()).with_notifier(notifier.clone()),
        posts: Posts::new(store.clone(), Arc::new(SystemClock), 1, 0)
            .expect("posts")
            .with_notifier(notifier),
        users,
        notes,
        a: node(1).with_device_push(pushed.clone()),
        b: node(2),
        pushed,
    }
}

impl<S: Store + Clone + 'static> World<S> {
    /// Records what the services raised (as the owner shards would).
    async fn deliver(&self) {
        let notes: Vec<Note> = self.notes.borrow_mut().drain(..).collect();
        for n in notes {
            self.a.record(n).await.expect("recorded");
        }
    }

    /// `user`'s notifications: (kind, target, actors, count, read).
    async fn inbox(&self, user: u64) -> Vec<(Kind, Target, Vec<u64>, u32, bool)> {
        let page = self.a.list(user, false, 50, None).await.expect("list");
        page.notifications
            .into_iter()
            .map(|n| (n.kind, n.target, n.actors, n.actors_count, n.read))
            .collect()
    }
}

async fn aggregation_and_rules<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    // Follows of one day form one notification.
    w.graph.follow(BEN, ANA).await.expect("follow");
    w.graph.follow(CAT, ANA).await.expect("follow");
    w.deliver().await;
    assert_eq!(
        w.inbox(ANA).await,
        vec![(Kind::Follow, Target::Account, vec![CAT, BEN], 2, false)]
    );
    // Reactions on one post aggregate; an actor counts once (react, unreact, react).
    let post = w
        .posts
        .create(ANA, "hello", Audience::Public, None)
        .await
        .expect("post")
        .post_id;
    for u in [BEN, CAT, DAN] {
        w.posts.react(u, post, "🔥").await.expect("react");
    }
    w.posts.unreact(BEN, post).await.expect("unreact");
    w.posts.react(BEN, post, "🎉").await.expect("react");
    w.deliver().await;
    let inbox = w.inbox(ANA).await;
    assert_eq!(
        inbox[0],
        (
            Kind::Reaction,
            Target::Post(post),
            vec![DAN, CAT, BEN],
            3,
            false
        )
    );
    assert_eq!(w.a.unread(ANA).await.expect("unread"), 2);
    // Comments aggregate on the post; a reply tells the comment's author too.
    let c = w
        .posts
        .comment(BEN, post, 0, "nice")
        .await
        .expect("comment");
    w.posts
        .comment(CAT, post, c.comment_id, "agreed")
        .await
        .expect("reply");
    w.deliver().await;
    assert_eq!(
        w.inbox(ANA).await[0],
        (Kind::Comment, Target::Post(post), vec![CAT, BEN], 2, false)
    );
    assert_eq!(
        w.inbox(BEN).await[0],
        (
            Kind::Reply,
            Target::Comment(c.comment_id),
            vec![CAT],
            1,
            false
        )
    );
    // Read: the next reaction starts a new notification.
    let newest =
        w.a.list(ANA, false, 1, None)
            .await
            .expect("list")
            .notifications[0]
            .notification_id;
    assert_eq!(w.a.mark_read(ANA, newest, &[]).await.expect("read"), 0);
    w.posts.react(EVE, post, "🔥").await.expect("react");
    w.deliver().await;
    let inbox = w.inbox(ANA).await;
    assert_eq!(
        inbox[0],
        (Kind::Reaction, Target::Post(post), vec![EVE], 1, false)
    );
    assert!(inbox[1..].iter().all(|n| n.4), "the older ones read");
    assert_eq!(w.a.unread(ANA).await.expect("unread"), 1);
    // Unread only.
    let unread = w.a.list(ANA, true, 50, None).await.expect("list");
    assert_eq!(unread.notifications.len(), 1);
    // Mark one by id.
    let id = unread.notifications[0].notification_id;
    assert_eq!(w.a.mark_read(ANA, 0, &[id]).await.expect("read"), 0);
    // A later block hides that actor's part; a mute stops new ones.
    w.graph.block(ANA, CAT).await.expect("block");
    let inbox = w.inbox(ANA).await;
    let reactions = inbox
        .iter()
        .find(|n| n.0 == Kind::Reaction && n.2.contains(&DAN))
        .expect("the first reactions");
    assert_eq!((reactions.2.clone(), reactions.3), (vec![DAN, BEN], 2));
    assert!(!inbox.iter().any(|n| n.2.contains(&CAT)));
    w.graph.mute(ANA, DAN, None).await.expect("mute");
    w.posts
        .comment(DAN, post, 0, "muted words")
        .await
        .expect("comment");
    w.deliver().await;
    let inbox = w.inbox(ANA).await;
    assert!(!inbox.iter().any(|n| n.2.contains(&DAN)), "{inbox:?}");
    // Preferences: reactions off in the app.
    w.a.set_preferences(
        ANA,
        &[Preference {
            kind: Kind::Reaction,
            in_app: false,
            push: true,
            email: false,
        }],
    )
    .await
    .expect("prefs");
    let other = w
        .posts
        .create(ANA, "second", Audience::Public, None)
        .await
        .expect("post")
        .post_id;
    w.posts.react(BEN, other, "🔥").await.expect("react");
    w.deliver().await;
    assert!(
        !w.inbox(ANA)
            .await
            .iter()
            .any(|n| n.1 == Target::Post(other))
    );
    let prefs = w.a.preferences(ANA).await.expect("prefs");
    assert!(prefs.iter().any(|p| p.kind == Kind::Reaction && !p.in_app));
    // Deleting the post takes its notifications with it.
    w.posts.delete(ANA, post).await.expect("deleted");
    assert!(!w.inbox(ANA).await.iter().any(|n| n.1 == Target::Post(post)));
    // Private accounts: a request, then an approval.
    w.users
        .update(
            EVE,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    w.graph.follow(DAN, EVE).await.expect("request");
    w.deliver().await;
    assert_eq!(w.inbox(EVE).await[0].0, Kind::FollowRequest);
    w.graph.approve(EVE, DAN).await.expect("approve");
    w.deliver().await;
    assert_eq!(
        w.inbox(DAN).await[0],
        (Kind::FollowAccepted, Target::Account, vec![EVE], 1, false)
    );
    // A read position in the future does not mark later notifications read.
    w.a.mark_read(BEN, u64::MAX, &[]).await.expect("read");
    assert_eq!(w.a.unread(BEN).await.expect("unread"), 0);
    w.graph.follow(DAN, BEN).await.expect("follow");
    w.deliver().await;
    assert_eq!(w.a.unread(BEN).await.expect("unread"), 1);
    assert_eq!(
        w.inbox(BEN).await[0],
        (Kind::Follow, Target::Account, vec![DAN], 1, false)
    );
}

/// Actors raising one group at once on two nodes each count once, and the group keeps
/// one notification.
async fn concurrent_actors_count_once<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    let post = w
        .posts
        .create(ANA, "repost me", Audience::Public, None)
        .await
        .expect("post")
        .post_id;
    let note = |actor| Note {
        recipient: ANA,
        actor,
        kind: Kind::Repost,
        target: Target::Post(post),
    };
    // Every actor twice, on both nodes, all at once.
    let (a, b) = (&w.a, &w.b);
    let runs = [BEN, CAT, DAN, EVE]
        .into_iter()
        .flat_map(|u| [a.record(note(u)), b.record(note(u))]);
    for r in futures::future::join_all(runs).await {
        r.expect("recorded");
    }
    let page = w.a.list(ANA, false, 50, None).await.expect("list");
    assert_eq!(page.notifications.len(), 1, "{:?}", page.notifications);
    assert_eq!(page.notifications[0].actors_count, 4);
    assert_eq!(page.unread, 1);
}

/// Push tokens: stored for the device-push seam, bounded, told of new notifications.
async fn push_tokens<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    let token = |i: usize| PushToken {
        platform: "fcm".into(),
        token: format!("token-{i}"),
        device_id: format!("device-{i}"),
        web_push_keys: None,
    };
    for i in 0..20 {
        w.a.register_push_token(ANA, token(i)).await.expect("token");
    }
    w.a.register_push_token(ANA, token(3))
        .await
        .expect("the same token again");
    assert!(w.a.register_push_token(ANA, token(20)).await.is_err());
    w.a.unregister_push_token(ANA, "fcm", "token-0")
        .await
        .expect("removed");
    assert_eq!(w.a.push_tokens(ANA).await.expect("tokens").len(), 19);
    let bad = PushToken {
        web_push_keys: Some((vec![0; 3], vec![0; 16])),
        ..token(99)
    };
    assert!(w.a.register_push_token(ANA, bad).await.is_err());
    w.graph.follow(BEN, ANA).await.expect("follow");
    w.deliver().await;
    assert_eq!(*w.pushed.0.borrow(), vec![(ANA, Kind::Follow)]);
}

/// Rows in `user`'s partition of `table`.
async fn rows<S: Store>(store: &S, table: &'static selfie_storage::Table, user: u64) -> usize {
    store
        .scan(
            table,
            &selfie_services::tables::key(user),
            &selfie_storage::Scan::all(2000),
        )
        .await
        .expect("scan")
        .rows
        .len()
}

/// Account deletion's share here: everything kept for the user goes (plain, conditional
/// and single-row tables, partitions longer than a page), and nobody else's rows.
async fn erase_user<S: Store + Clone + 'static>(store: S) {
    use selfie_services::tables::{clear_partition, feed, key, notifications as t};
    use selfie_services::workflows::Erase;
    let w = world(store.clone()).await;
    for actor in [BEN, CAT, DAN] {
        w.graph.follow(actor, ANA).await.expect("follow");
    }
    w.graph.follow(ANA, BEN).await.expect("follow");
    w.deliver().await;
    let newest =
        w.a.list(ANA, false, 10, None)
            .await
            .expect("list")
            .notifications[0]
            .notification_id;
    w.a.mark_read(ANA, 0, &[newest]).await.expect("read");
    w.a.set_preferences(ANA, &[]).await.expect("preferences");
    w.a.register_push_token(
        ANA,
        PushToken {
            platform: "fcm".into(),
            token: "t".into(),
            device_id: "d".into(),
            web_push_keys: None,
        },
    )
    .await
    .expect("token");
    let tables = [
        &t::INBOX,
        &t::GROUPS,
        &t::GROUP_ACTORS,
        &t::READ,
        &t::STATE,
        &t::PUSH_TOKENS,
    ];
    for table in tables {
        assert!(rows(&store, table, ANA).await > 0, "{} written", table.name);
    }
    // Once the profile is marked deleted (the deletion's first step), the account's
    // session can no longer write what the erasers would miss.
    w.users.mark_deleted(ANA).await.expect("marked");
    let refused = w
        .posts
        .create(ANA, "during the deletion", Audience::Public, None);
    assert!(matches!(refused.await, Err(Error::Forbidden(_))));
    let token = PushToken {
        platform: "fcm".into(),
        token: "later".into(),
        device_id: "d2".into(),
        web_push_keys: None,
    };
    let refused = w.a.register_push_token(ANA, token).await;
    assert!(matches!(refused, Err(Error::Forbidden(_))));
    let erased = w.a.erase_user(ANA).await.expect("erased");
    assert!(erased >= tables.len());
    for table in tables {
        assert_eq!(rows(&store, table, ANA).await, 0, "{} erased", table.name);
    }
    assert_eq!(w.inbox(BEN).await.len(), 1, "Ben's notification stays");
    assert_eq!(w.a.erase_user(ANA).await.expect("again"), 0, "idempotent");

    // A partition longer than one page of the helper, next to another that stays.
    for (user, n) in [(ANA, 1_234u64), (BEN, 3)] {
        for post in 0..n {
            store
                .put(&feed::HOME, &key(user), &key(post + 1), b"x", None)
                .await
                .expect("row");
        }
    }
    let cleared = clear_partition(&store, &feed::HOME, &key(ANA))
        .await
        .expect("cleared");
    assert_eq!(cleared, 1_234);
    assert_eq!(rows(&store, &feed::HOME, ANA).await, 0);
    assert_eq!(rows(&store, &feed::HOME, BEN).await, 3);
}

#[tokio::test]
async fn erase_user_embedded() {
    let (s, _d) = embedded();
    erase_user(s).await;
}

#[tokio::test]
async fn erase_user_cql() {
    erase_user(cql().await).await;
}

#[tokio::test]
async fn aggregation_and_rules_embedded() {
    let (s, _d) = embedded();
    aggregation_and_rules(s).await;
}

#[tokio::test]
async fn aggregation_and_rules_cql() {
    aggregation_and_rules(cql().await).await;
}

#[tokio::test]
async fn concurrent_actors_count_once_embedded() {
    let (s, _d) = embedded();
    concurrent_actors_count_once(s).await;
}

#[tokio::test]
async fn concurrent_actors_count_once_cql() {
    concurrent_actors_count_once(cql().await).await;
}

#[tokio::test]
async fn push_tokens_embedded() {
    let (s, _d) = embedded();
    push_tokens(s).await;
}
