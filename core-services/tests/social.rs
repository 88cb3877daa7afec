//! Profiles and the follow graph, the same test bodies on the embedded store and on the
//! real CQL server (`SELFIE_CQL_NODES`, started by `scripts/test`).

use std::sync::Arc;

use selfie_services::Error;
use selfie_services::graph::{FollowState, Graph};
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
    let config = CqlConfig::from_url(&format!(
        "cql://{nodes}/social_{:08x}",
        rand::random::<u32>()
    ))
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

async fn people<S: Store + Clone + 'static>(store: &S) -> (Users<S>, Graph<S>) {
    let users = Users::new(store.clone());
    for (id, name) in [(ANA, "ana"), (BEN, "ben"), (CAT, "cat"), (DAN, "dan")] {
        users.create(id, name).await.expect("profile");
    }
    (users, Graph::new(store.clone()))
}

async fn follows_requests_blocks_and_privacy<S: Store + Clone + 'static>(store: S) {
    let (users, graph) = people(&store).await;
    // Public account: following at once; counts on both sides.
    assert_eq!(
        graph.follow(ANA, BEN).await.expect("follow"),
        FollowState::Following
    );
    assert_eq!(
        graph.follow(ANA, BEN).await.expect("again"),
        FollowState::Following
    );
    assert_eq!(graph.counts(BEN).await.expect("counts"), (1, 0));
    assert_eq!(graph.counts(ANA).await.expect("counts"), (0, 1));
    assert!(matches!(
        graph.follow(ANA, ANA).await,
        Err(Error::SelfTarget)
    ));
    // Private account: a request, approved or denied.
    users
        .update(
            CAT,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    assert_eq!(
        graph.follow(ANA, CAT).await.expect("request"),
        FollowState::Requested
    );
    assert_eq!(
        graph.follow(BEN, CAT).await.expect("request"),
        FollowState::Requested
    );
    assert_eq!(
        graph.requests(CAT, 10, None).await.expect("requests").ids,
        vec![ANA, BEN]
    );
    assert!(graph.relationship(ANA, CAT).await.expect("rel").requested);
    // Before approval, a private account's lists are closed to others.
    assert!(matches!(
        graph.followers(ANA, CAT, 10, None).await,
        Err(Error::Forbidden(_))
    ));
    graph.approve(CAT, ANA).await.expect("approved");
    graph.deny(CAT, BEN).await.expect("denied");
    assert!(matches!(
        graph.approve(CAT, BEN).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        graph
            .followers(ANA, CAT, 10, None)
            .await
            .expect("follower sees")
            .ids,
        vec![ANA]
    );
    assert!(matches!(
        graph.followers(BEN, CAT, 10, None).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(
        graph
            .followers(CAT, CAT, 10, None)
            .await
            .expect("owner sees")
            .ids,
        vec![ANA]
    );
    // Cancel a pending request.
    assert_eq!(
        graph.follow(DAN, CAT).await.expect("request"),
        FollowState::Requested
    );
    graph.cancel_request(DAN, CAT).await.expect("cancelled");
    assert!(
        graph
            .requests(CAT, 10, None)
            .await
            .expect("none")
            .ids
            .is_empty()
    );
    // Block: follows both ways end, each side hidden, no new follow.
    graph.follow(BEN, ANA).await.expect("follow");
    graph.block(ANA, BEN).await.expect("blocked");
    let rel = graph.relationship(ANA, BEN).await.expect("rel");
    assert!(rel.blocking && !rel.following && !rel.followed_by);
    assert_eq!(graph.counts(BEN).await.expect("counts"), (0, 0));
    assert!(matches!(graph.follow(BEN, ANA).await, Err(Error::Blocked)));
    assert!(
        matches!(users.get(BEN, ANA).await, Err(Error::NotFound(_))),
        "hidden from the blocked"
    );
    assert!(
        matches!(users.get(ANA, BEN).await, Err(Error::NotFound(_))),
        "and from the blocker"
    );
    assert!(matches!(
        graph.followers(BEN, ANA, 10, None).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        users
            .get(CAT, ANA)
            .await
            .expect("others still see")
            .username,
        "ana"
    );
    graph.unblock(ANA, BEN).await.expect("unblocked");
    assert_eq!(
        graph.follow(BEN, ANA).await.expect("follow again"),
        FollowState::Following
    );
    // Mutes are private to the muter.
    graph.mute(ANA, DAN, None).await.expect("muted");
    assert!(graph.relationship(ANA, DAN).await.expect("rel").muting);
    assert!(!graph.relationship(DAN, ANA).await.expect("rel").muting);
    // Unfollow.
    graph.unfollow(ANA, CAT).await.expect("unfollowed");
    assert_eq!(graph.counts(CAT).await.expect("counts"), (0, 0));
    // Profile limits.
    let long = "x".repeat(301);
    assert!(matches!(
        users
            .update(
                ANA,
                ProfileUpdate {
                    bio: Some(long),
                    ..Default::default()
                }
            )
            .await,
        Err(Error::InvalidArgument { field: "bio" })
    ));
}

async fn counts_stay_exact_under_racing_follows<S: Store + Clone + 'static>(store: S) {
    let (users, graph) = people(&store).await;
    for id in 10..40u64 {
        users
            .create(id, &format!("fan{id}"))
            .await
            .expect("profile");
    }
    let g = &graph;
    // Every fan follows BEN twice and unfollows once, all at the same time.
    futures::future::join_all((10..40u64).flat_map(|id| {
        [0, 1, 2].map(move |op| async move {
            if op < 2 {
                g.follow(id, BEN).await.map(|_| ())
            } else {
                g.unfollow(id, BEN).await
            }
        })
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .expect("all succeed");
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = graph.followers(BEN, BEN, 7, cursor).await.expect("page");
        all.extend(page.ids);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let (followers, _) = graph.counts(BEN).await.expect("counts");
    assert_eq!(
        followers,
        all.len() as i64,
        "the count equals the list, whatever the interleaving"
    );
    for id in &all {
        assert!(graph.relationship(*id, BEN).await.expect("rel").following);
    }
}

async fn a_deleted_user_leaves_no_edges<S: Store + Clone + 'static>(store: S) {
    let (users, graph) = people(&store).await;
    users
        .update(
            DAN,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    graph.follow(ANA, BEN).await.expect("follow");
    graph.follow(BEN, ANA).await.expect("follow");
    graph.follow(CAT, ANA).await.expect("follow");
    graph.follow(ANA, DAN).await.expect("request");
    graph.block(ANA, CAT).await.expect("block");
    graph.follow(BEN, CAT).await.expect("follow");
    assert!(graph.remove_user(ANA).await.expect("removed") >= 4);
    users.mark_deleted(ANA).await.expect("anonymised");
    assert!(matches!(users.get(BEN, ANA).await, Err(Error::NotFound(_))));
    assert!(matches!(
        graph.follow(BEN, ANA).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        graph.counts(BEN).await.expect("counts"),
        (0, 1),
        "only ben -> cat remains"
    );
    assert_eq!(graph.counts(ANA).await.expect("counts"), (0, 0));
    assert!(
        graph
            .requests(DAN, 10, None)
            .await
            .expect("requests")
            .ids
            .is_empty()
    );
    assert!(!graph.relationship(CAT, ANA).await.expect("rel").blocked_by);
    assert_eq!(
        graph.followers(BEN, CAT, 10, None).await.expect("list").ids,
        vec![BEN]
    );
}

#[tokio::test]
async fn deletion_cleanup_on_the_embedded_store() {
    let (store, _dir) = embedded();
    a_deleted_user_leaves_no_edges(store).await;
}

#[tokio::test]
async fn deletion_cleanup_on_cql() {
    a_deleted_user_leaves_no_edges(cql().await).await;
}

#[tokio::test]
async fn social_rules_on_the_embedded_store() {
    let (store, _dir) = embedded();
    follows_requests_blocks_and_privacy(store).await;
}

#[tokio::test]
async fn social_rules_on_cql() {
    follows_requests_blocks_and_privacy(cql().await).await;
}

#[tokio::test]
async fn exact_counts_on_the_embedded_store() {
    let (store, _dir) = embedded();
    counts_stay_exact_under_racing_follows(store).await;
}

#[tokio::test]
async fn exact_counts_on_cql() {
    counts_stay_exact_under_racing_follows(cql().await).await;
}

/// Defect: `idempotency_key` was ignored, so a retried create made a second post (the
/// SDK retries with the key). Eight concurrent retries and a late one make one post and
/// one comment; the count moves once.
async fn retried_creates_return_the_first<S: Store + Clone + 'static>(store: S) {
    use selfie_services::posts::{NewPost, Posts};
    let _ = people(&store).await;
    let posts = Posts::new(store.clone(), Arc::new(SystemClock), 1, 0).expect("posts");
    let create = |key: &'static str| {
        let posts = &posts;
        async move {
            let new = NewPost {
                idempotency_key: Some(key.into()),
                ..NewPost::text("once")
            };
            posts.publish(ANA, new).await
        }
    };
    let first = futures::future::join_all((0..8).map(|_| create("k-1"))).await;
    let ids: Vec<u64> = first
        .iter()
        .map(|r| r.as_ref().expect("created").post_id)
        .collect();
    assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    assert_eq!(create("k-1").await.expect("late retry").post_id, ids[0]);
    assert_ne!(create("k-2").await.expect("another key").post_id, ids[0]);
    assert_eq!(
        selfie_services::tables::posts::author_count(&store, ANA)
            .await
            .expect("count"),
        2
    );
    let post_id = ids[0];
    let comments = futures::future::join_all(
        (0..8).map(|_| posts.comment_once(BEN, post_id, 0, "hi", Some("c-1"))),
    )
    .await;
    let cids: Vec<u64> = comments
        .iter()
        .map(|r| r.as_ref().expect("commented").comment_id)
        .collect();
    assert!(cids.iter().all(|&id| id == cids[0]), "{cids:?}");
    assert_eq!(posts.count(post_id, "comments").await.expect("count"), 1);
    let err = posts
        .comment_once(BEN, post_id, 0, "hi", Some(&"x".repeat(200)))
        .await
        .expect_err("too long");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[tokio::test]
async fn idempotent_creates_on_the_embedded_store() {
    let (store, _dir) = embedded();
    retried_creates_return_the_first(store).await;
}

#[tokio::test]
async fn idempotent_creates_on_cql() {
    retried_creates_return_the_first(cql().await).await;
}
