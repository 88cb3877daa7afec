//! Profiles, settings, reply policies, media ids and the graph's lists and timed mutes:
//! the same test bodies on the embedded store and on the real CQL server
//! (`SELFIE_CQL_NODES`, started by `scripts/test`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use selfie_services::Error;
use selfie_services::graph::{Graph, MAX_MUTE};
use selfie_services::posts::{Audience, MAX_MEDIA, NewPost, PostEdit, Posts, ReplyPolicy};
use selfie_services::schema;
use selfie_services::users::{
    Link, MAX_LINKS, Permission, ProfileUpdate, Settings, SettingsUpdate, Users,
};
use selfie_storage::cql::{CqlConfig, CqlStore};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Store, SystemClock};
use support::ManualClock;

async fn cql() -> CqlStore {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let config = CqlConfig::from_url(&format!(
        "cql://{nodes}/settings_{:08x}",
        rand::random::<u32>()
    ))
    .expect("url");
    CqlStore::open(&config, schema::MIGRATIONS, &schema::tables())
        .await
        .expect("store")
        .drop_keyspace_when_dropped(&config)
}

const OWNER: u64 = 1;
const FAN: u64 = 2; // follows OWNER
const FRIEND: u64 = 3; // followed by OWNER
const STRANGER: u64 = 4;

struct World<S> {
    users: Users<S>,
    graph: Graph<S>,
    posts: Posts<S>,
}

async fn world<S: Store + Clone + 'static>(store: &S) -> World<S> {
    let users = Users::new(store.clone());
    for (id, name) in [
        (OWNER, "owner"),
        (FAN, "fan"),
        (FRIEND, "friend"),
        (STRANGER, "stranger"),
    ] {
        users.create(id, name).await.expect("profile");
        // Usernames resolve as accounts would register them.
        store
            .insert_if_absent(
                &selfie_services::tables::auth::USERNAMES,
                &KeyBuilder::new().str(name).build(),
                &[],
                &id.to_be_bytes(),
                None,
            )
            .await
            .expect("username");
    }
    let graph = Graph::new(store.clone());
    graph.follow(FAN, OWNER).await.expect("follow");
    graph.follow(OWNER, FRIEND).await.expect("follow");
    let posts = Posts::new(store.clone(), Arc::new(SystemClock), 1, 0).expect("posts");
    World {
        users,
        graph,
        posts,
    }
}

async fn commenters<S: Store + 'static>(w: &World<S>, post_id: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for viewer in [OWNER, FAN, FRIEND, STRANGER] {
        match w.posts.comment(viewer, post_id, 0, "hi").await {
            Ok(_) => out.push(viewer),
            Err(Error::Forbidden(_)) => {}
            Err(e) => panic!("viewer {viewer}: {e}"),
        }
    }
    out
}

async fn reply_policies_and_settings<S: Store + Clone + 'static>(store: S) {
    let w = world(&store).await;
    // The post's reply policy.
    let mut expected = vec![
        (ReplyPolicy::Everyone, vec![OWNER, FAN, FRIEND, STRANGER]),
        (ReplyPolicy::Followers, vec![OWNER, FAN]),
        (ReplyPolicy::Mentioned, vec![OWNER, STRANGER]),
        (ReplyPolicy::Nobody, vec![OWNER]),
    ];
    for (policy, who) in expected.drain(..) {
        let p = w
            .posts
            .publish(
                OWNER,
                NewPost {
                    reply_policy: policy,
                    ..NewPost::text("thoughts, @stranger?")
                },
            )
            .await
            .expect("post");
        assert_eq!(commenters(&w, p.post_id).await, who, "{policy:?}");
    }
    // The author's setting narrows every post further (the stricter one wins).
    assert_eq!(
        w.users.settings(OWNER).await.expect("settings"),
        Settings::default()
    );
    w.users
        .update_settings(
            OWNER,
            SettingsUpdate {
                who_can_comment: Some(Permission::Following),
                ..Default::default()
            },
        )
        .await
        .expect("settings");
    let p = w
        .posts
        .create(OWNER, "open to all?", Audience::Public, None)
        .await
        .expect("post");
    assert_eq!(commenters(&w, p.post_id).await, vec![OWNER, FRIEND]);
    // Mentions: who may link the owner.
    let mentions = |author| {
        let posts = &w.posts;
        async move {
            posts
                .create(author, "hey @owner", Audience::Public, None)
                .await
                .expect("post")
                .mentions
        }
    };
    assert_eq!(mentions(STRANGER).await, vec![OWNER]);
    for (permission, linked) in [
        (Permission::Nobody, vec![]),
        (Permission::Following, vec![FRIEND]),
        (Permission::Followers, vec![FAN]),
        (Permission::Everyone, vec![FAN, FRIEND, STRANGER]),
    ] {
        w.users
            .update_settings(
                OWNER,
                SettingsUpdate {
                    who_can_mention: Some(permission),
                    ..Default::default()
                },
            )
            .await
            .expect("settings");
        let mut got = Vec::new();
        for author in [FAN, FRIEND, STRANGER] {
            if mentions(author).await == vec![OWNER] {
                got.push(author);
            }
        }
        assert_eq!(got, linked, "{permission:?}");
        // The owner may always mention themselves.
        assert_eq!(mentions(OWNER).await, vec![OWNER]);
    }
    // A bad field refuses the whole update.
    let before = w.users.settings(OWNER).await.expect("settings");
    let err = w
        .users
        .update_settings(
            OWNER,
            SettingsUpdate {
                show_read_receipts: Some(false),
                language: Some("english please".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(
        err,
        Err(Error::InvalidArgument { field: "language" })
    ));
    assert_eq!(w.users.settings(OWNER).await.expect("settings"), before);
    let s = w
        .users
        .update_settings(
            OWNER,
            SettingsUpdate {
                show_read_receipts: Some(false),
                language: Some("pt-BR".into()),
                timezone: Some("America/Sao_Paulo".into()),
                ..Default::default()
            },
        )
        .await
        .expect("settings");
    assert!(!s.show_read_receipts && s.language == "pt-BR");
    assert_eq!(w.users.settings(OWNER).await.expect("settings"), s);
}

async fn profiles_and_lookup<S: Store + Clone + 'static>(store: S) {
    let w = world(&store).await;
    for (id, owner) in [(77, OWNER), (78, OWNER), (79, STRANGER)] {
        support::ready_media(&store, owner, id).await;
    }
    // Only the owner's own ready images: someone else's, or none at all, are refused.
    for bad in [79, 80] {
        let update = ProfileUpdate {
            avatar_media_id: Some(bad),
            ..Default::default()
        };
        assert!(
            matches!(
                w.users.update(OWNER, update).await,
                Err(Error::InvalidArgument {
                    field: "avatar_media_id"
                })
            ),
            "{bad}"
        );
    }
    let links = vec![Link {
        title: "portfolio".into(),
        url: "https://example.com/me".into(),
    }];
    let p = w
        .users
        .update(
            OWNER,
            ProfileUpdate {
                avatar_media_id: Some(77),
                banner_media_id: Some(78),
                links: Some(links.clone()),
                pronouns: Some("she/her".into()),
                location: Some("Lisbon".into()),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!((p.avatar_media_id, p.banner_media_id), (77, 78));
    assert!(p.created_at_ms > 0);
    // Every field is checked before anything is written.
    let bad = [
        ProfileUpdate {
            bio: Some("new bio".into()),
            links: Some(vec![Link {
                title: "x".into(),
                url: "javascript:alert(1)".into(),
            }]),
            ..Default::default()
        },
        ProfileUpdate {
            bio: Some("new bio".into()),
            links: Some(vec![links[0].clone(); MAX_LINKS + 1]),
            ..Default::default()
        },
        ProfileUpdate {
            bio: Some("new bio".into()),
            location: Some("far\u{0}away".into()),
            ..Default::default()
        },
    ];
    for update in bad {
        assert!(matches!(
            w.users.update(OWNER, update).await,
            Err(Error::InvalidArgument { .. })
        ));
    }
    let read = w.users.get(STRANGER, OWNER).await.expect("profile");
    assert_eq!(read, p);
    assert_eq!(read.links, links);
    // By username, in any case; lookups leave out the hidden and the unknown.
    assert_eq!(
        w.users
            .get_by_username(STRANGER, "OWNER")
            .await
            .expect("profile")
            .user_id,
        OWNER
    );
    w.graph.block(FRIEND, STRANGER).await.expect("block");
    w.users.mark_deleted(FAN).await.expect("deleted");
    let found = w
        .users
        .lookup(
            STRANGER,
            &[FRIEND, OWNER, 999, FAN, OWNER],
            &["stranger".into(), "nobody".into()],
        )
        .await
        .expect("lookup");
    let ids: Vec<u64> = found.iter().map(|p| p.user_id).collect();
    assert_eq!(ids, vec![OWNER, STRANGER]);
    assert!(matches!(
        w.users.lookup(STRANGER, &[1; 101], &[]).await,
        Err(Error::InvalidArgument { .. })
    ));
    // A deleted account's profile keeps nothing of what it showed.
    w.users.mark_deleted(OWNER).await.expect("deleted");
    assert!(matches!(
        w.users.get(STRANGER, OWNER).await,
        Err(Error::NotFound(_))
    ));
}

async fn graph_lists_and_relationships<S: Store + Clone + 'static>(store: S) {
    let w = world(&store).await;
    // Removing a follower keeps both counts exact.
    assert_eq!(w.graph.counts(OWNER).await.expect("counts"), (1, 1));
    w.graph.remove_follower(OWNER, FAN).await.expect("removed");
    w.graph.remove_follower(OWNER, FAN).await.expect("again");
    assert_eq!(w.graph.counts(OWNER).await.expect("counts"), (0, 1));
    assert_eq!(w.graph.counts(FAN).await.expect("counts"), (0, 0));
    // Blocks and mutes are listed for their owner.
    w.graph.mute(STRANGER, OWNER, None).await.expect("mute");
    w.graph.block(OWNER, STRANGER).await.expect("block");
    w.graph.mute(OWNER, FAN, None).await.expect("mute");
    w.graph
        .mute(OWNER, FRIEND, Some(Duration::from_secs(3600)))
        .await
        .expect("timed mute");
    assert_eq!(
        w.graph.blocks(OWNER, 10, None).await.expect("blocks").ids,
        vec![STRANGER]
    );
    assert_eq!(
        w.graph.mutes(OWNER, 10, None).await.expect("mutes").ids,
        vec![FAN, FRIEND]
    );
    for bad in [Duration::ZERO, MAX_MUTE + Duration::from_secs(1)] {
        assert!(matches!(
            w.graph.mute(OWNER, FAN, Some(bad)).await,
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(matches!(
        w.graph.mute(OWNER, 999, None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(w.graph.mute(FAN, STRANGER, None).await, Ok(())));
    // Batch relationships: the stranger does not learn that the owner blocks them.
    let rels = w
        .graph
        .relationships(STRANGER, &[OWNER, FAN])
        .await
        .expect("relationships");
    assert_eq!(rels[0].0, OWNER);
    assert!(!rels[0].1.blocked_by && !rels[0].1.blocking);
    // What the stranger did themselves still shows (hiding it would reveal the block).
    assert!(rels[0].1.muting);
    let mine = w
        .graph
        .relationships(OWNER, &[STRANGER, FRIEND, FAN])
        .await
        .expect("relationships");
    assert!(mine[0].1.blocking);
    assert!(mine[1].1.following && mine[1].1.muting);
    assert!(mine[2].1.muting && !mine[2].1.followed_by);
    // Requests sent are listed for their sender.
    w.users
        .update(
            FRIEND,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    w.graph.follow(FAN, FRIEND).await.expect("requested");
    assert_eq!(
        w.graph
            .requests_sent(FAN, 10, None)
            .await
            .expect("sent")
            .ids,
        vec![FRIEND]
    );
    assert!(
        w.graph
            .relationship(FRIEND, FAN)
            .await
            .expect("rel")
            .request_received
    );
    // Close friends: listed for their owner, shown in the relationship, checked on the
    // way in, and cleaned up with a deleted account.
    w.graph
        .update_close_friends(FRIEND, &[OWNER, FAN], &[])
        .await
        .expect("close friends");
    w.graph
        .update_close_friends(FRIEND, &[OWNER], &[])
        .await
        .expect("idempotent");
    assert_eq!(
        w.graph
            .close_friends(FRIEND, 10, None)
            .await
            .expect("list")
            .ids,
        vec![OWNER, FAN]
    );
    assert!(
        w.graph
            .relationship(FRIEND, OWNER)
            .await
            .expect("rel")
            .close_friend
    );
    assert!(matches!(
        w.graph.update_close_friends(FRIEND, &[FRIEND], &[]).await,
        Err(Error::SelfTarget)
    ));
    assert!(matches!(
        w.graph.update_close_friends(FRIEND, &[999], &[]).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.graph
            .update_close_friends(FRIEND, &[OWNER; 101], &[])
            .await,
        Err(Error::InvalidArgument { .. })
    ));
    w.graph.remove_user(FAN).await.expect("removed");
    assert_eq!(
        w.graph
            .close_friends(FRIEND, 10, None)
            .await
            .expect("list")
            .ids,
        vec![OWNER]
    );
    // An account being deleted (profile already hidden) follows no one.
    w.users.mark_deleted(OWNER).await.expect("deleted");
    assert!(matches!(
        w.graph.follow(OWNER, FAN).await,
        Err(Error::NotFound(_))
    ));
}

async fn media_history_and_counts<S: Store + Clone + 'static>(store: S) {
    let w = world(&store).await;
    for id in [11, 12, 13] {
        support::ready_media(&store, OWNER, id).await;
    }
    support::ready_media(&store, STRANGER, 14).await;
    let media = |ids: Vec<u64>| NewPost {
        media_ids: ids,
        ..NewPost::text("")
    };
    // A media-only post is fine; an empty one is not.
    let p = w
        .posts
        .publish(OWNER, media(vec![11, 12]))
        .await
        .expect("post");
    assert_eq!(p.media_ids, vec![11, 12]);
    // Empty, zero, repeated, too many, unknown, or another user's media is refused.
    for bad in [
        vec![],
        vec![0],
        vec![11, 11],
        (1..=MAX_MEDIA as u64 + 1).collect(),
        vec![11, 99],
        vec![14],
    ] {
        assert!(
            matches!(
                w.posts.publish(OWNER, media(bad.clone())).await,
                Err(Error::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
    }
    // Editing the media keeps the old set in the visible history.
    let edited = w
        .posts
        .edit_with(
            OWNER,
            p.post_id,
            PostEdit {
                text: Some("now with words".into()),
                media_ids: Some(vec![13]),
                sensitive: Some(true),
            },
        )
        .await
        .expect("edit");
    assert_eq!(
        (
            edited.media_ids.clone(),
            edited.edit_count,
            edited.sensitive
        ),
        (vec![13], 1, true)
    );
    let history = w.posts.history(FAN, p.post_id).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].media_ids, vec![11, 12]);
    assert!(history[0].text.is_empty());
    // A deleted post is a tombstone: even its author edits, comments on, reacts to or
    // quotes it no more.
    let gone = w
        .posts
        .create(OWNER, "soon gone", Audience::Public, None)
        .await
        .expect("post");
    w.posts.delete(OWNER, gone.post_id).await.expect("delete");
    assert!(matches!(
        w.posts.edit(OWNER, gone.post_id, "back").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.posts.comment(OWNER, gone.post_id, 0, "hello?").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.posts.react(OWNER, gone.post_id, "🔥").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.posts
            .create(OWNER, "quoting", Audience::Public, Some(gone.post_id))
            .await,
        Err(Error::NotFound(_))
    ));
    // Per-author counts follow posts, reposts and deletes.
    let q = w
        .posts
        .create(FAN, "mine", Audience::Public, None)
        .await
        .expect("post");
    w.posts.repost(OWNER, q.post_id).await.expect("repost");
    assert_eq!(w.posts.posts_count(OWNER).await.expect("count"), 2);
    w.posts.delete(OWNER, p.post_id).await.expect("delete");
    w.posts.delete(OWNER, p.post_id).await.err();
    assert_eq!(w.posts.posts_count(OWNER).await.expect("count"), 1);
    assert_eq!(w.users.posts_count(FAN).await.expect("count"), 1);
    // Comments on a repost go to the original.
    let repost = w
        .posts
        .by_user(OWNER, OWNER, 1, None)
        .await
        .expect("page")
        .0;
    assert!(matches!(
        w.posts.comment(FAN, repost[0].post_id, 0, "hi").await,
        Err(Error::InvalidArgument { .. })
    ));
}

async fn interactions<S: Store + Clone + 'static>(store: S) {
    let w = world(&store).await;
    let post = w
        .posts
        .create(OWNER, "react to this", Audience::Public, None)
        .await
        .expect("post");
    let id = post.post_id;
    // Reactions: one per user, a new one replaces, counts per emoji stay exact.
    w.posts.react(FAN, id, "❤️").await.expect("react");
    w.posts.react(FRIEND, id, "🔥").await.expect("react");
    w.posts.react(STRANGER, id, "🔥").await.expect("react");
    w.posts.react(FAN, id, "🔥").await.expect("replace");
    w.posts.react(FAN, id, "🔥").await.expect("same again");
    for bad in ["!", "ok", "🔥 🔥", ""] {
        assert!(matches!(
            w.posts.react(STRANGER, id, bad).await,
            Err(Error::InvalidArgument { .. })
        ));
    }
    let (counts, entries, _) = w
        .posts
        .reactions(OWNER, id, None, 10, None)
        .await
        .expect("reactions");
    assert_eq!(counts, vec![("🔥".to_string(), 3)]);
    assert_eq!(entries.len(), 3);
    assert_eq!(w.posts.count(id, "reactions").await.expect("n"), 3);
    w.posts.unreact(FAN, id).await.expect("unreact");
    w.posts.unreact(FAN, id).await.expect("idempotent");
    w.posts.react(FRIEND, id, "😂").await.expect("replace");
    let (counts, _, _) = w
        .posts
        .reactions(OWNER, id, None, 10, None)
        .await
        .expect("reactions");
    assert_eq!(
        counts,
        // Ties in code-point order.
        vec![("🔥".to_string(), 1), ("😂".to_string(), 1)]
    );
    let (_, only, _) = w
        .posts
        .reactions(OWNER, id, Some("😂"), 10, None)
        .await
        .expect("reactions");
    assert_eq!(
        only.iter().map(|r| r.user_id).collect::<Vec<_>>(),
        vec![FRIEND]
    );
    assert_eq!(
        w.posts.viewer_reaction(FRIEND, id).await.expect("mine"),
        Some("😂".to_string())
    );
    // Users across a block with the viewer are left out of the list.
    w.graph.block(FRIEND, STRANGER).await.expect("block");
    let (_, seen, _) = w
        .posts
        .reactions(FRIEND, id, None, 10, None)
        .await
        .expect("reactions");
    assert!(seen.iter().all(|r| r.user_id != STRANGER));
    // Reposts: once per user; undone cleanly.
    let first = w.posts.repost(FAN, id).await.expect("repost");
    let again = w.posts.repost(FAN, id).await.expect("again");
    assert_eq!(first.post_id, again.post_id);
    assert_eq!(w.posts.count(id, "reposts").await.expect("n"), 1);
    assert!(w.posts.viewer_reposted(FAN, id).await.expect("reposted"));
    assert_eq!(w.posts.posts_count(FAN).await.expect("n"), 1);
    // Deleting the repost itself is undoing it.
    w.posts
        .delete(FAN, first.post_id)
        .await
        .expect("delete repost");
    assert!(!w.posts.viewer_reposted(FAN, id).await.expect("not now"));
    let third = w.posts.repost(FAN, id).await.expect("repost again");
    assert_ne!(third.post_id, first.post_id);
    w.posts.undo_repost(FAN, id).await.expect("undo");
    w.posts.undo_repost(FAN, id).await.expect("idempotent");
    assert_eq!(w.posts.count(id, "reposts").await.expect("n"), 0);
    assert_eq!(w.posts.posts_count(FAN).await.expect("n"), 0);
    assert!(!w.posts.viewer_reposted(FAN, id).await.expect("not now"));
    // Comments: the author edits, the author or the post's author deletes, once.
    let c = w
        .posts
        .comment(FAN, id, 0, "first!")
        .await
        .expect("comment");
    let reply = w
        .posts
        .comment(FRIEND, id, c.comment_id, "second")
        .await
        .expect("reply");
    let edited = w
        .posts
        .edit_comment(FAN, c.comment_id, "first, edited")
        .await
        .expect("edit");
    assert!(edited.edited_at_ms > 0);
    assert!(matches!(
        w.posts.edit_comment(OWNER, c.comment_id, "mine now").await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        w.posts.delete_comment(FRIEND, c.comment_id).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(w.posts.count(id, "comments").await.expect("n"), 2);
    w.posts
        .delete_comment(OWNER, c.comment_id)
        .await
        .expect("the post's author moderates");
    assert!(matches!(
        w.posts.delete_comment(FAN, c.comment_id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.posts.edit_comment(FAN, c.comment_id, "back").await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(w.posts.count(id, "comments").await.expect("n"), 1);
    assert!(matches!(
        w.posts
            .comment(FAN, id, c.comment_id, "to a tombstone")
            .await,
        Err(Error::InvalidArgument { .. })
    ));
    let (listed, _) = w.posts.comments(OWNER, id, 10, None).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed[0].deleted && listed[0].text.is_empty());
    assert_eq!(listed[1].comment_id, reply.comment_id);
    w.posts
        .delete_comment(FRIEND, reply.comment_id)
        .await
        .expect("own reply");
    assert_eq!(w.posts.count(id, "comments").await.expect("n"), 0);
    // The post's author removes a comment even from someone they block.
    let troll = w
        .posts
        .comment(STRANGER, id, 0, "troll")
        .await
        .expect("comment");
    w.graph.block(OWNER, STRANGER).await.expect("block");
    w.posts
        .delete_comment(OWNER, troll.comment_id)
        .await
        .expect("moderated across the block");
    w.graph.unblock(OWNER, STRANGER).await.expect("unblock");
    // Batch reads: what the viewer may read, in request order.
    let friends_only = w
        .posts
        .create(OWNER, "followers only", Audience::Followers, None)
        .await
        .expect("post");
    let got = w
        .posts
        .get_many(STRANGER, &[friends_only.post_id, id, 12345, id])
        .await
        .expect("batch");
    assert_eq!(got.iter().map(|p| p.post_id).collect::<Vec<_>>(), vec![id]);
    let got = w
        .posts
        .get_many(FAN, &[friends_only.post_id, id])
        .await
        .expect("batch");
    assert_eq!(got.len(), 2);
    assert!(matches!(
        w.posts.get_many(FAN, &[id; 101]).await,
        Err(Error::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn interactions_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    interactions(store).await;
}

#[tokio::test]
async fn interactions_on_cql() {
    interactions(cql().await).await;
}

#[tokio::test]
async fn settings_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    reply_policies_and_settings(store.clone()).await;
}

#[tokio::test]
async fn settings_on_cql() {
    reply_policies_and_settings(cql().await).await;
}

#[tokio::test]
async fn profiles_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    profiles_and_lookup(store).await;
}

#[tokio::test]
async fn profiles_on_cql() {
    profiles_and_lookup(cql().await).await;
}

#[tokio::test]
async fn graph_lists_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    graph_lists_and_relationships(store).await;
}

#[tokio::test]
async fn graph_lists_on_cql() {
    graph_lists_and_relationships(cql().await).await;
}

#[tokio::test]
async fn media_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    media_history_and_counts(store).await;
}

#[tokio::test]
async fn media_on_cql() {
    media_history_and_counts(cql().await).await;
}

#[tokio::test]
async fn a_timed_mute_ends_by_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let clock = ManualClock::new();
    let store = EmbeddedStore::open(dir.path(), &schema::tables(), clock.clone()).expect("store");
    let w = world(&store).await;
    w.graph
        .mute(OWNER, STRANGER, Some(Duration::from_secs(3600)))
        .await
        .expect("mute");
    w.graph.mute(OWNER, FAN, None).await.expect("mute");
    let muting = |other| {
        let graph = &w.graph;
        async move {
            graph
                .relationship(OWNER, other)
                .await
                .expect("relationship")
                .muting
        }
    };
    assert!(muting(STRANGER).await && muting(FAN).await);
    clock.advance(Duration::from_millis(3_599_000));
    assert!(muting(STRANGER).await);
    clock.advance(Duration::from_millis(2_000));
    assert!(!muting(STRANGER).await, "the hour is over");
    assert!(muting(FAN).await, "an indefinite mute stays");
    assert_eq!(
        w.graph.mutes(OWNER, 10, None).await.expect("mutes").ids,
        vec![FAN]
    );
}
