//! Profiles, settings, lookups, lists, timed mutes, media ids and reply policies over the
//! protocol: a real edge, real SDK clients.

mod support;

use selfie_client::Client;
use selfie_protocol::graph::{self as pg, GraphOpT};
use selfie_protocol::posts::{self as pp, PostsOpT};
use selfie_protocol::users::{self as pu, UsersOpT};
use selfie_protocol::{BodyT, ErrorCode, common};
use support::{call, graph, posts, sign_up, start, users};

fn users_answer(b: BodyT) -> UsersOpT {
    match b {
        BodyT::Users(u) => u.op,
        other => panic!("not a users answer: {other:?}"),
    }
}

fn graph_answer(b: BodyT) -> GraphOpT {
    match b {
        BodyT::Graph(g) => g.op,
        other => panic!("not a graph answer: {other:?}"),
    }
}

fn post_answer(b: BodyT) -> pp::PostT {
    match b {
        BodyT::Posts(p) => match p.op {
            PostsOpT::PostResponse(r) => *r.post.expect("post"),
            other => panic!("not a post: {other:?}"),
        },
        other => panic!("not a posts answer: {other:?}"),
    }
}

fn ids(op: GraphOpT) -> Vec<u64> {
    match op {
        GraphOpT::UserListResponse(r) => r
            .users
            .unwrap_or_default()
            .iter()
            .map(|u| u.user_id)
            .collect(),
        other => panic!("not a user list: {other:?}"),
    }
}

#[tokio::test]
async fn profiles_and_settings_over_the_protocol() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    // Ana fills in her profile.
    let mut r = pu::UpdateProfileRequestT::default();
    r.bio = Some("film photographer\nLisbon".into());
    let avatar = support::photo(&ana.client).await;
    r.avatar_media_id = Some(avatar);
    r.pronouns = Some("she/her".into());
    r.location = Some("Lisbon".into());
    let mut link = pu::ProfileLinkT::default();
    link.title = Some("portfolio".into());
    link.url = Some("https://example.com/ana".into());
    r.links = Some(vec![link.clone()]);
    call(
        &ana.client,
        users(UsersOpT::UpdateProfileRequest(Box::new(r))),
    )
    .await
    .expect("updated");
    // A hostile link is refused with a typed error and changes nothing.
    let mut r = pu::UpdateProfileRequestT::default();
    r.bio = Some("changed".into());
    let mut bad = link.clone();
    bad.url = Some("javascript:alert(document.cookie)".into());
    r.links = Some(vec![bad]);
    let err = call(
        &ana.client,
        users(UsersOpT::UpdateProfileRequest(Box::new(r))),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    // Ben reads it by username.
    let mut r = pu::GetProfileRequestT::default();
    r.username = Some("ANA".into());
    let UsersOpT::GetProfileResponse(p) = users_answer(
        call(&ben.client, users(UsersOpT::GetProfileRequest(Box::new(r))))
            .await
            .expect("profile"),
    ) else {
        panic!("not a profile")
    };
    let p = p.profile.expect("profile");
    let user = p.user.as_ref().expect("summary");
    assert_eq!((user.user_id, user.avatar_media_id), (ana.id, avatar));
    assert_eq!(p.bio.as_deref(), Some("film photographer\nLisbon"));
    assert_eq!(p.pronouns.as_deref(), Some("she/her"));
    assert_eq!(p.links.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        p.links.as_ref().and_then(|l| l[0].url.clone()).as_deref(),
        Some("https://example.com/ana")
    );
    assert!(p.created_at_ms > 0);
    // Settings: defaults, a change, a refused value.
    let UsersOpT::SettingsResponse(s) = users_answer(
        call(
            &ana.client,
            users(UsersOpT::GetSettingsRequest(Box::default())),
        )
        .await
        .expect("settings"),
    ) else {
        panic!("not settings")
    };
    let s = s.settings.expect("settings");
    assert_eq!(s.who_can_comment, pu::Permission::Everyone);
    assert!(s.show_read_receipts && s.email_notifications);
    let mut r = pu::UpdateSettingsRequestT::default();
    r.who_can_comment = Some(pu::Permission::Followers);
    r.show_activity_status = Some(false);
    r.timezone = Some("Europe/Lisbon".into());
    let UsersOpT::SettingsResponse(s) = users_answer(
        call(
            &ana.client,
            users(UsersOpT::UpdateSettingsRequest(Box::new(r))),
        )
        .await
        .expect("settings"),
    ) else {
        panic!("not settings")
    };
    let s = s.settings.expect("settings");
    assert_eq!(s.who_can_comment, pu::Permission::Followers);
    assert!(!s.show_activity_status);
    assert_eq!(s.timezone.as_deref(), Some("Europe/Lisbon"));
    let mut r = pu::UpdateSettingsRequestT::default();
    r.who_can_mention = Some(pu::Permission(77));
    let err = call(
        &ana.client,
        users(UsersOpT::UpdateSettingsRequest(Box::new(r))),
    )
    .await
    .expect_err("out of range");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    // Lookups: known and visible users, in request order, once each.
    let mut r = pu::LookupUsersRequestT::default();
    r.user_ids = Some(vec![ben.id, 123_456, ana.id, ben.id]);
    r.usernames = Some(vec!["nobody".into()]);
    let UsersOpT::LookupUsersResponse(l) = users_answer(
        call(
            &ben.client,
            users(UsersOpT::LookupUsersRequest(Box::new(r))),
        )
        .await
        .expect("lookup"),
    ) else {
        panic!("not a lookup")
    };
    let found: Vec<u64> = l
        .users
        .unwrap_or_default()
        .iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(found, vec![ben.id, ana.id]);
}

async fn comment(c: &Client, post_id: u64) -> Result<BodyT, selfie_client::ClientError> {
    let mut r = pp::CreateCommentRequestT::default();
    r.post_id = post_id;
    r.text = Some("lovely".into());
    call(c, posts(PostsOpT::CreateCommentRequest(Box::new(r)))).await
}

#[tokio::test]
async fn lists_mutes_media_and_reply_policies_over_the_protocol() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    let req = |op: GraphOpT| graph(op);
    let mut f = pg::FollowRequestT::default();
    f.target_id = ana.id;
    call(&ben.client, req(GraphOpT::FollowRequest(Box::new(f))))
        .await
        .expect("follow");
    // Ana mutes Ben for an hour and Cat for good; a zero-length mute is refused.
    for (who, duration_ms) in [(ben.id, 3_600_000), (cat.id, 0)] {
        let mut m = pg::MuteRequestT::default();
        m.target_id = who;
        m.duration_ms = duration_ms;
        call(&ana.client, req(GraphOpT::MuteRequest(Box::new(m))))
            .await
            .expect("muted");
    }
    let mut m = pg::MuteRequestT::default();
    m.target_id = ben.id;
    m.mute_reposts_only = true;
    let err = call(&ana.client, req(GraphOpT::MuteRequest(Box::new(m))))
        .await
        .expect_err("not supported yet");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let mut m = pg::MuteRequestT::default();
    m.target_id = ben.id;
    m.duration_ms = u64::MAX;
    let err = call(&ana.client, req(GraphOpT::MuteRequest(Box::new(m))))
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    let mutes = ids(graph_answer(
        call(&ana.client, req(GraphOpT::MutesListRequest(Box::default())))
            .await
            .expect("mutes"),
    ));
    assert_eq!(mutes.len(), 2);
    // Relationships in one call.
    let mut r = pg::RelationshipsRequestT::default();
    r.user_ids = Some(vec![ben.id, cat.id]);
    let GraphOpT::RelationshipsResponse(rels) = graph_answer(
        call(
            &ana.client,
            req(GraphOpT::RelationshipsRequest(Box::new(r))),
        )
        .await
        .expect("relationships"),
    ) else {
        panic!("not relationships")
    };
    let rels = rels.entries.expect("entries");
    assert!(rels[0].followed_by && rels[0].muting);
    assert!(!rels[1].followed_by && rels[1].muting);
    // Ana takes comments from followers only and posts with media.
    let mut s = pu::UpdateSettingsRequestT::default();
    s.who_can_comment = Some(pu::Permission::Followers);
    call(
        &ana.client,
        users(UsersOpT::UpdateSettingsRequest(Box::new(s))),
    )
    .await
    .expect("settings");
    let mut p = pp::CreatePostRequestT::default();
    let photos = vec![
        support::photo(&ana.client).await,
        support::photo(&ana.client).await,
    ];
    p.media_ids = Some(photos.clone());
    p.audience = common::Audience::Public;
    p.reply_policy = pp::ReplyPolicy::Everyone;
    let post = post_answer(
        call(&ana.client, posts(PostsOpT::CreatePostRequest(Box::new(p))))
            .await
            .expect("media post"),
    );
    let media: Vec<u64> = post
        .media
        .unwrap_or_default()
        .iter()
        .map(|m| m.media_id)
        .collect();
    assert_eq!(media, photos);
    let mut p = pp::CreatePostRequestT::default();
    p.text = Some("too much".into());
    p.media_ids = Some((1..=11).collect());
    let err = call(&ana.client, posts(PostsOpT::CreatePostRequest(Box::new(p))))
        .await
        .expect_err("too many");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    comment(&ben.client, post.post_id)
        .await
        .expect("a follower comments");
    let err = comment(&cat.client, post.post_id)
        .await
        .expect_err("not a follower");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // Ana removes Ben from her followers, then blocks Cat; both lists show it.
    let mut r = pg::RemoveFollowerRequestT::default();
    r.follower_id = ben.id;
    call(
        &ana.client,
        req(GraphOpT::RemoveFollowerRequest(Box::new(r))),
    )
    .await
    .expect("removed");
    let mut l = pg::FollowersListRequestT::default();
    l.user_id = ana.id;
    let followers = ids(graph_answer(
        call(
            &ana.client,
            req(GraphOpT::FollowersListRequest(Box::new(l))),
        )
        .await
        .expect("followers"),
    ));
    assert!(followers.is_empty());
    let mut b = pg::BlockRequestT::default();
    b.target_id = cat.id;
    call(&ana.client, req(GraphOpT::BlockRequest(Box::new(b))))
        .await
        .expect("blocked");
    let blocks = ids(graph_answer(
        call(
            &ana.client,
            req(GraphOpT::BlocksListRequest(Box::default())),
        )
        .await
        .expect("blocks"),
    ));
    assert_eq!(blocks, vec![cat.id]);
    // Close friends: Ana lists Ben; a close-friends post reaches him and no one else.
    let mut r = pg::CloseFriendsUpdateRequestT::default();
    r.add = Some(vec![ben.id]);
    call(
        &ana.client,
        req(GraphOpT::CloseFriendsUpdateRequest(Box::new(r))),
    )
    .await
    .expect("close friends");
    let close = ids(graph_answer(
        call(
            &ana.client,
            req(GraphOpT::CloseFriendsListRequest(Box::default())),
        )
        .await
        .expect("list"),
    ));
    assert_eq!(close, vec![ben.id]);
    let mut p = pp::CreatePostRequestT::default();
    p.text = Some("just for you".into());
    p.audience = common::Audience::CloseFriends;
    let inner = post_answer(
        call(&ana.client, posts(PostsOpT::CreatePostRequest(Box::new(p))))
            .await
            .expect("close friends post"),
    );
    assert_eq!(inner.audience, common::Audience::CloseFriends);
    let mut g = pp::GetPostRequestT::default();
    g.post_id = inner.post_id;
    call(
        &ben.client,
        posts(PostsOpT::GetPostRequest(Box::new(g.clone()))),
    )
    .await
    .expect("a close friend reads it");
    let err = call(&cat.client, posts(PostsOpT::GetPostRequest(Box::new(g))))
        .await
        .expect_err("not for cat");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    // The profile's post count includes both posts.
    let mut r = pu::GetProfileRequestT::default();
    r.user_id = ana.id;
    let UsersOpT::GetProfileResponse(p) = users_answer(
        call(&ben.client, users(UsersOpT::GetProfileRequest(Box::new(r))))
            .await
            .expect("profile"),
    ) else {
        panic!("not a profile")
    };
    assert_eq!(p.profile.expect("profile").posts_count, 2);
    // Ana sees Ben as her close friend on his profile.
    let mut r = pu::GetProfileRequestT::default();
    r.user_id = ben.id;
    let UsersOpT::GetProfileResponse(p) = users_answer(
        call(&ana.client, users(UsersOpT::GetProfileRequest(Box::new(r))))
            .await
            .expect("profile"),
    ) else {
        panic!("not a profile")
    };
    let rel = p
        .profile
        .and_then(|p| p.relationship)
        .expect("relationship");
    assert!(rel.close_friend);
}

#[tokio::test]
async fn racing_changes_to_one_pair_from_both_sides_keep_lists_and_counts_in_step() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    // Several connections per user, so that requests arrive on both shards.
    let mut bens = Vec::new();
    for _ in 0..4 {
        bens.push(sign_up_again(&node, &anon, &ben).await);
    }
    let mut anas = Vec::new();
    for _ in 0..4 {
        anas.push(sign_up_again(&node, &anon, &ana).await);
    }
    for round in 0..60 {
        let mut calls = Vec::new();
        for (i, c) in bens.iter().enumerate() {
            let op = if (round + i) % 2 == 0 {
                let mut f = pg::FollowRequestT::default();
                f.target_id = ana.id;
                GraphOpT::FollowRequest(Box::new(f))
            } else {
                let mut u = pg::UnfollowRequestT::default();
                u.target_id = ana.id;
                GraphOpT::UnfollowRequest(Box::new(u))
            };
            calls.push(call(c, graph(op)));
        }
        for c in &anas {
            let mut r = pg::RemoveFollowerRequestT::default();
            r.follower_id = ben.id;
            calls.push(call(c, graph(GraphOpT::RemoveFollowerRequest(Box::new(r)))));
        }
        for r in futures::future::join_all(calls).await {
            r.expect("graph call");
        }
        // However the race went, the list and both counts agree.
        let mut l = pg::FollowersListRequestT::default();
        l.user_id = ana.id;
        let listed = ids(graph_answer(
            call(
                &ana.client,
                graph(GraphOpT::FollowersListRequest(Box::new(l))),
            )
            .await
            .expect("followers"),
        ));
        let mut r = pu::GetProfileRequestT::default();
        r.user_id = ana.id;
        let UsersOpT::GetProfileResponse(p) = users_answer(
            call(&ben.client, users(UsersOpT::GetProfileRequest(Box::new(r))))
                .await
                .expect("profile"),
        ) else {
            panic!("not a profile")
        };
        let p = p.profile.expect("profile");
        let following = p.relationship.as_ref().is_some_and(|r| r.following);
        assert_eq!(p.followers_count as usize, listed.len(), "round {round}");
        assert_eq!(following, listed == vec![ben.id], "round {round}");
    }
}

/// Another session of `user` (a fresh login through `anon`).
async fn sign_up_again(node: &support::Node, anon: &Client, user: &support::User) -> Client {
    use selfie_protocol::auth::{self as pa, AuthOpT};
    let mut r = pa::LoginRequestT::default();
    r.identifier = Some(user.name.clone());
    r.password = Some(user.password.clone());
    let BodyT::Auth(a) = call(anon, support::auth(AuthOpT::LoginRequest(Box::new(r))))
        .await
        .expect("login")
    else {
        panic!("not an auth answer")
    };
    let AuthOpT::LoginResponse(r) = a.op else {
        panic!("not a login response")
    };
    let t = r.tokens.expect("tokens");
    Client::connect(support::config(node, t.access_token))
        .await
        .expect("welcome")
}

#[tokio::test]
async fn user_lists_over_the_protocol() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    let list_of = |b: BodyT| match graph_answer(b) {
        GraphOpT::ListResponse(r) => *r.list.expect("list"),
        other => panic!("not a list: {other:?}"),
    };
    let mut r = pg::ListCreateRequestT::default();
    r.name = Some("film people".into());
    r.description = Some("35 mm forever".into());
    let list = list_of(
        call(&ana.client, graph(GraphOpT::ListCreateRequest(Box::new(r))))
            .await
            .expect("created"),
    );
    assert_eq!(list.owner_id, ana.id);
    let mut r = pg::ListMembersAddRequestT::default();
    r.list_id = list.list_id;
    r.user_ids = Some(vec![ben.id, cat.id]);
    call(
        &ana.client,
        graph(GraphOpT::ListMembersAddRequest(Box::new(r.clone()))),
    )
    .await
    .expect("added");
    // Ben may look but not touch.
    let err = call(
        &ben.client,
        graph(GraphOpT::ListMembersAddRequest(Box::new(r))),
    )
    .await
    .expect_err("not his list");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let mut m = pg::ListMembersRequestT::default();
    m.list_id = list.list_id;
    let members = ids(graph_answer(
        call(
            &ben.client,
            graph(GraphOpT::ListMembersRequest(Box::new(m.clone()))),
        )
        .await
        .expect("members"),
    ));
    assert_eq!(members, vec![ben.id, cat.id]);
    // Ana makes it private: gone for Ben.
    let mut u = pg::ListUpdateRequestT::default();
    u.list_id = list.list_id;
    u.private = Some(true);
    let updated = list_of(
        call(&ana.client, graph(GraphOpT::ListUpdateRequest(Box::new(u))))
            .await
            .expect("updated"),
    );
    assert!(updated.private && updated.members_count == 2);
    let err = call(
        &ben.client,
        graph(GraphOpT::ListMembersRequest(Box::new(m))),
    )
    .await
    .expect_err("private now");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    // Ana's own lists (owner 0 = the caller) include it; Ben sees none of hers.
    let lists_of = |b: BodyT| match graph_answer(b) {
        GraphOpT::ListsResponse(r) => r
            .lists
            .unwrap_or_default()
            .iter()
            .map(|l| l.list_id)
            .collect::<Vec<_>>(),
        other => panic!("not lists: {other:?}"),
    };
    let mine = lists_of(
        call(
            &ana.client,
            graph(GraphOpT::ListsGetRequest(Box::default())),
        )
        .await
        .expect("lists"),
    );
    assert_eq!(mine, vec![list.list_id]);
    let mut g = pg::ListsGetRequestT::default();
    g.owner_id = ana.id;
    let hers = lists_of(
        call(&ben.client, graph(GraphOpT::ListsGetRequest(Box::new(g))))
            .await
            .expect("lists"),
    );
    assert!(hers.is_empty());
    let mut d = pg::ListDeleteRequestT::default();
    d.list_id = list.list_id;
    call(&ana.client, graph(GraphOpT::ListDeleteRequest(Box::new(d))))
        .await
        .expect("deleted");
}

#[tokio::test]
async fn reactions_reposts_comments_and_batches_over_the_protocol() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let mut p = pp::CreatePostRequestT::default();
    p.text = Some("sunset".into());
    let post = post_answer(
        call(&ana.client, posts(PostsOpT::CreatePostRequest(Box::new(p))))
            .await
            .expect("post"),
    );
    let id = post.post_id;
    // Ben reacts, reposts (twice: one repost), comments and edits his comment.
    let mut r = pp::ReactRequestT::default();
    r.target_kind = common::ObjectKind::Post;
    r.target_id = id;
    r.emoji = Some("🔥".into());
    call(&ben.client, posts(PostsOpT::ReactRequest(Box::new(r))))
        .await
        .expect("react");
    for _ in 0..2 {
        let mut r = pp::RepostRequestT::default();
        r.post_id = id;
        call(&ben.client, posts(PostsOpT::RepostRequest(Box::new(r))))
            .await
            .expect("repost");
    }
    let mut c = pp::CreateCommentRequestT::default();
    c.post_id = id;
    c.text = Some("wow".into());
    let comment = match call(
        &ben.client,
        posts(PostsOpT::CreateCommentRequest(Box::new(c))),
    )
    .await
    .expect("comment")
    {
        BodyT::Posts(p) => match p.op {
            PostsOpT::CommentResponse(r) => *r.comment.expect("comment"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let mut e = pp::EditCommentRequestT::default();
    e.comment_id = comment.comment_id;
    e.text = Some("wow, really".into());
    call(
        &ben.client,
        posts(PostsOpT::EditCommentRequest(Box::new(e.clone()))),
    )
    .await
    .expect("edit own comment");
    let err = call(
        &ana.client,
        posts(PostsOpT::EditCommentRequest(Box::new(e))),
    )
    .await
    .expect_err("not hers");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // Ben's read shows his reaction, his repost and the counts.
    let mut g = pp::GetPostRequestT::default();
    g.post_id = id;
    let seen = post_answer(
        call(
            &ben.client,
            posts(PostsOpT::GetPostRequest(Box::new(g.clone()))),
        )
        .await
        .expect("read"),
    );
    assert_eq!(seen.viewer_reaction.as_deref(), Some("🔥"));
    assert!(seen.viewer_reposted);
    let counts = seen.counts.expect("counts");
    assert_eq!(
        (counts.reactions, counts.reposts, counts.comments),
        (1, 1, 1)
    );
    // Who reacted.
    let mut l = pp::ReactionsListRequestT::default();
    l.target_kind = common::ObjectKind::Post;
    l.target_id = id;
    let BodyT::Posts(answer) = call(
        &ana.client,
        posts(PostsOpT::ReactionsListRequest(Box::new(l))),
    )
    .await
    .expect("reactions") else {
        panic!("not posts")
    };
    let PostsOpT::ReactionsListResponse(list) = answer.op else {
        panic!("not reactions")
    };
    let entries = list.entries.unwrap_or_default();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].user.as_ref().map(|u| u.user_id), Some(ben.id));
    let counts = list.counts.unwrap_or_default();
    assert_eq!(counts[0].emoji.as_deref(), Some("🔥"));
    assert_eq!(counts[0].count, 1);
    // Ana removes Ben's comment from her post; Ben undoes his repost.
    let mut d = pp::DeleteCommentRequestT::default();
    d.comment_id = comment.comment_id;
    call(
        &ana.client,
        posts(PostsOpT::DeleteCommentRequest(Box::new(d))),
    )
    .await
    .expect("moderated");
    let mut u = pp::UndoRepostRequestT::default();
    u.post_id = id;
    call(&ben.client, posts(PostsOpT::UndoRepostRequest(Box::new(u))))
        .await
        .expect("undone");
    let seen = post_answer(
        call(&ben.client, posts(PostsOpT::GetPostRequest(Box::new(g))))
            .await
            .expect("read"),
    );
    assert!(!seen.viewer_reposted);
    let counts = seen.counts.expect("counts");
    assert_eq!((counts.reposts, counts.comments), (0, 0));
    // A batch read returns what the reader may read, in order.
    let mut b = pp::GetPostsRequestT::default();
    b.post_ids = Some(vec![999, id]);
    let BodyT::Posts(answer) = call(&ben.client, posts(PostsOpT::GetPostsRequest(Box::new(b))))
        .await
        .expect("batch")
    else {
        panic!("not posts")
    };
    let PostsOpT::PostsResponse(list) = answer.op else {
        panic!("not a batch")
    };
    let got: Vec<u64> = list
        .posts
        .unwrap_or_default()
        .iter()
        .map(|p| p.post_id)
        .collect();
    assert_eq!(got, vec![id]);
}
