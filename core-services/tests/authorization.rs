//! The authorization matrix for posts: for each relationship between a viewer and an
//! author, and each audience (public, followers, mentioned only, close friends), who may
//! read, comment and react. A post the viewer may not
//! read is `NotFound` for every action (its existence is not revealed).

use std::sync::Arc;

use selfie_services::Error;
use selfie_services::graph::Graph;
use selfie_services::posts::{Audience, Posts};
use selfie_services::schema;
use selfie_services::users::{ProfileUpdate, Users};
use selfie_storage::Store;
use selfie_storage::SystemClock;
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::key::KeyBuilder;

const AUTHOR: u64 = 1; // public account
const PRIVATE: u64 = 2; // private account
const FOLLOWER: u64 = 10; // follows both (approved for PRIVATE)
const STRANGER: u64 = 11; // no relationship
const PENDING: u64 = 12; // asked to follow PRIVATE, not approved
const BLOCKED: u64 = 13; // blocked by both authors
const BLOCKER: u64 = 14; // blocks both authors
const MENTIONED: u64 = 15; // mentioned in the mentioned-only posts
const CLOSE: u64 = 16; // a close friend of both authors, following neither

#[tokio::test]
async fn who_may_read_comment_and_react() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    let users = Users::new(store.clone());
    let graph = Graph::new(store.clone());
    let posts = Posts::new(store.clone(), Arc::new(SystemClock), 1, 0).expect("posts");
    for (id, name) in [
        (AUTHOR, "author"),
        (PRIVATE, "private"),
        (FOLLOWER, "follower"),
        (STRANGER, "stranger"),
        (PENDING, "pending"),
        (BLOCKED, "blocked"),
        (BLOCKER, "blocker"),
        (MENTIONED, "mentioned"),
        (CLOSE, "close"),
    ] {
        users.create(id, name).await.expect("profile");
        // Usernames resolve for @mentions as accounts would register them.
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
    users
        .update(
            PRIVATE,
            ProfileUpdate {
                private: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("private");
    for author in [AUTHOR, PRIVATE] {
        graph.follow(FOLLOWER, author).await.expect("follow");
        graph.block(author, BLOCKED).await.expect("block");
        graph.block(BLOCKER, author).await.expect("block");
    }
    graph.approve(PRIVATE, FOLLOWER).await.expect("approve");
    for author in [AUTHOR, PRIVATE] {
        graph
            .update_close_friends(author, &[CLOSE], &[])
            .await
            .expect("close friend");
        // Blocked users cannot be added.
        assert!(
            graph
                .update_close_friends(author, &[BLOCKED], &[])
                .await
                .is_err()
        );
    }
    graph.follow(PENDING, PRIVATE).await.expect("request");

    let mut cases = Vec::new();
    for author in [AUTHOR, PRIVATE] {
        for audience in [
            Audience::Public,
            Audience::Followers,
            Audience::MentionedOnly,
            Audience::CloseFriends,
        ] {
            let p = posts
                .create(author, "hello @mentioned #matrix", audience, None)
                .await
                .expect("post");
            cases.push((author, audience, p.post_id));
        }
    }
    // (author, audience) -> viewers allowed to read.
    let allowed = |author: u64, audience: Audience| -> Vec<u64> {
        let mut v = vec![author];
        match (author, audience) {
            (AUTHOR, Audience::Public) => {
                v.extend([PRIVATE, FOLLOWER, STRANGER, PENDING, MENTIONED, CLOSE])
            }
            (_, Audience::CloseFriends) => v.push(CLOSE),
            (_, Audience::Followers) | (PRIVATE, Audience::Public) => v.push(FOLLOWER),
            (_, Audience::MentionedOnly) => v.push(MENTIONED),
            _ => {}
        }
        v
    };
    let viewers = [
        AUTHOR, PRIVATE, FOLLOWER, STRANGER, PENDING, BLOCKED, BLOCKER, MENTIONED, CLOSE,
    ];
    let mut checked = 0;
    for (author, audience, post_id) in cases {
        let ok = allowed(author, audience);
        for viewer in viewers {
            let may = ok.contains(&viewer);
            let what = format!("author {author}, {audience:?}, viewer {viewer}");
            let read = posts.get(viewer, post_id).await;
            assert_eq!(read.is_ok(), may, "read: {what}");
            let comment = posts.comment(viewer, post_id, 0, "nice").await;
            assert_eq!(comment.is_ok(), may, "comment: {what}");
            let react = posts.react(viewer, post_id, "🔥").await;
            assert_eq!(react.is_ok(), may, "react: {what}");
            let history = posts.history(viewer, post_id).await;
            assert_eq!(history.is_ok(), may, "history: {what}");
            if !may {
                assert!(
                    matches!(read, Err(Error::NotFound(_))),
                    "hidden, not forbidden: {what}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 4 * 9);
    // Leaving the list ends access; a block removes a close friend for good.
    let cf = posts
        .create(AUTHOR, "for close friends", Audience::CloseFriends, None)
        .await
        .expect("post");
    graph
        .update_close_friends(AUTHOR, &[], &[CLOSE])
        .await
        .expect("removed");
    assert!(matches!(
        posts.get(CLOSE, cf.post_id).await,
        Err(Error::NotFound(_))
    ));
    graph
        .update_close_friends(AUTHOR, &[CLOSE], &[])
        .await
        .expect("again");
    posts.get(CLOSE, cf.post_id).await.expect("readable again");
    graph.block(CLOSE, AUTHOR).await.expect("block");
    graph.unblock(CLOSE, AUTHOR).await.expect("unblock");
    assert!(matches!(
        posts.get(CLOSE, cf.post_id).await,
        Err(Error::NotFound(_))
    ));
    assert!(
        graph
            .close_friends(AUTHOR, 10, None)
            .await
            .expect("list")
            .ids
            .is_empty()
    );
    // Mentions: a user across a block is not mentioned (not notified, not shown).
    let m = posts
        .create(
            AUTHOR,
            "hi @mentioned @blocked @blocker @nobody",
            Audience::MentionedOnly,
            None,
        )
        .await
        .expect("post");
    assert_eq!(m.mentions, vec![MENTIONED]);
    assert!(matches!(
        posts.get(BLOCKED, m.post_id).await,
        Err(Error::NotFound(_))
    ));
    // Only the author edits or deletes.
    let public_post = posts
        .create(AUTHOR, "mine", Audience::Public, None)
        .await
        .expect("post")
        .post_id;
    assert!(matches!(
        posts.edit(FOLLOWER, public_post, "hijack").await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        posts.delete(STRANGER, public_post).await,
        Err(Error::Forbidden(_))
    ));
    posts
        .edit(AUTHOR, public_post, "mine, edited")
        .await
        .expect("edit");
    assert_eq!(
        posts
            .history(STRANGER, public_post)
            .await
            .expect("visible history")
            .len(),
        1
    );
    posts.delete(AUTHOR, public_post).await.expect("delete");
    assert!(matches!(
        posts.get(AUTHOR, public_post).await.map(|p| p.deleted),
        Ok(true)
    ));
    assert!(matches!(
        posts.get(STRANGER, public_post).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn comments_replies_reactions_reposts_and_quotes_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    let users = Users::new(store.clone());
    let posts = Posts::new(store.clone(), Arc::new(SystemClock), 1, 0).expect("posts");
    for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
        users.create(id, name).await.expect("profile");
    }
    let p = posts
        .create(1, "original #one", Audience::Public, None)
        .await
        .expect("post");
    let top = posts
        .comment(2, p.post_id, 0, "first")
        .await
        .expect("comment");
    let reply = posts
        .comment(3, p.post_id, top.comment_id, "reply")
        .await
        .expect("reply");
    // One level of replies only.
    assert!(matches!(
        posts
            .comment(1, p.post_id, reply.comment_id, "deeper")
            .await,
        Err(Error::InvalidArgument { .. })
    ));
    posts.react(2, p.post_id, "❤️").await.expect("react");
    posts.react(2, p.post_id, "🔥").await.expect("replace");
    posts.react(3, p.post_id, "🔥").await.expect("react");
    posts.unreact(3, p.post_id).await.expect("unreact");
    posts.unreact(3, p.post_id).await.expect("idempotent");
    posts.repost(2, p.post_id).await.expect("repost");
    posts
        .create(3, "quoting", Audience::Public, Some(p.post_id))
        .await
        .expect("quote");
    assert_eq!(posts.count(p.post_id, "comments").await.expect("n"), 2);
    assert_eq!(posts.count(p.post_id, "reactions").await.expect("n"), 1);
    assert_eq!(posts.count(p.post_id, "reposts").await.expect("n"), 1);
    assert_eq!(posts.count(p.post_id, "quotes").await.expect("n"), 1);
    let followers_only = posts
        .create(1, "friends", Audience::Followers, None)
        .await
        .expect("post");
    assert!(
        posts.repost(1, followers_only.post_id).await.is_err(),
        "followers-only posts are not reposted"
    );
    let (mine, _) = posts.by_user(3, 1, 10, None).await.expect("by user");
    assert_eq!(
        mine.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
        vec!["original #one"],
        "the followers-only post is hidden"
    );
}

/// Defect: a deleted account's comments and reactions stayed listed with its user id.
#[tokio::test]
async fn a_deleted_accounts_comments_and_reactions_are_not_listed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    let users = Users::new(store.clone());
    let posts = Posts::new(store.clone(), Arc::new(SystemClock), 1, 0).expect("posts");
    for (id, name) in [
        (AUTHOR, "author"),
        (FOLLOWER, "leaver"),
        (STRANGER, "stayer"),
    ] {
        users.create(id, name).await.expect("profile");
    }
    let post = posts
        .create(AUTHOR, "hello", Audience::Public, None)
        .await
        .expect("post");
    for who in [FOLLOWER, STRANGER] {
        posts
            .comment(who, post.post_id, 0, "nice")
            .await
            .expect("comment");
        posts.react(who, post.post_id, "🔥").await.expect("react");
    }
    users.mark_deleted(FOLLOWER).await.expect("deleted");
    let (comments, _) = posts
        .comments(AUTHOR, post.post_id, 10, None)
        .await
        .expect("comments");
    assert_eq!(
        comments.iter().map(|c| c.author_id).collect::<Vec<_>>(),
        vec![STRANGER]
    );
    let (_, reactions, _) = posts
        .reactions(AUTHOR, post.post_id, None, 10, None)
        .await
        .expect("reactions");
    assert_eq!(
        reactions.iter().map(|r| r.user_id).collect::<Vec<_>>(),
        vec![STRANGER]
    );
}
