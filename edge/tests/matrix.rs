//! The authorization matrix, end to end: every cell of the table in
//! `core-services/AUTHORIZATION.md` (relationship × action), checked through a real edge
//! with real SDK clients, plus the rule that a token for one user never acts for another.

mod support;

use std::collections::HashMap;

use selfie_client::{Client, ClientError};
use selfie_protocol::auth::{self as pa, AuthOpT};
use selfie_protocol::graph::{self as pg, GraphOpT};
use selfie_protocol::posts::{self as pp, PostsOpT};
use selfie_protocol::users::{self as pu, UsersOpT};
use selfie_protocol::{BodyT, ErrorCode, common};
use support::{User, auth, call, graph, posts, sign_up, start, users};

const TABLE: &str = include_str!("../../core-services/AUTHORIZATION.md");

/// The table's rows: (relationship, owner kind, outcomes by action name).
fn documented() -> Vec<(String, String, HashMap<String, String>)> {
    let mut lines = TABLE.lines().filter(|l| l.starts_with('|')).map(|l| {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    });
    let header = lines.next().expect("table header");
    lines
        .filter(|cells| !cells[0].starts_with("---"))
        .map(|cells| {
            assert_eq!(cells.len(), header.len(), "row {cells:?}");
            let outcomes = header[2..]
                .iter()
                .cloned()
                .zip(cells[2..].iter().cloned())
                .collect();
            (cells[0].clone(), cells[1].clone(), outcomes)
        })
        .collect()
}

fn outcome<T>(r: Result<T, ClientError>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => match e.code() {
            Some(ErrorCode::NotFound) => "not found".into(),
            Some(ErrorCode::Forbidden) => "forbidden".into(),
            Some(ErrorCode::Blocked) => "blocked".into(),
            Some(ErrorCode::InvalidArgument) => "invalid".into(),
            _ => format!("unexpected error: {e}"),
        },
    }
}

fn post_of(body: BodyT) -> pp::PostT {
    match body {
        BodyT::Posts(p) => match p.op {
            PostsOpT::PostResponse(r) => *r.post.expect("post"),
            other => panic!("not a post: {other:?}"),
        },
        other => panic!("not a posts answer: {other:?}"),
    }
}

async fn create_post(c: &Client, text: &str) -> Result<pp::PostT, ClientError> {
    let mut r = pp::CreatePostRequestT::default();
    r.text = Some(text.to_string());
    r.audience = common::Audience::Public;
    call(c, posts(PostsOpT::CreatePostRequest(Box::new(r))))
        .await
        .map(post_of)
}

async fn follow(c: &Client, target: u64) -> Result<BodyT, ClientError> {
    let mut r = pg::FollowRequestT::default();
    r.target_id = target;
    call(c, graph(GraphOpT::FollowRequest(Box::new(r)))).await
}

async fn approve(c: &Client, requester: u64) -> Result<BodyT, ClientError> {
    let mut r = pg::FollowRequestApproveRequestT::default();
    r.requester_id = requester;
    call(c, graph(GraphOpT::FollowRequestApproveRequest(Box::new(r)))).await
}

async fn block(c: &Client, target: u64) {
    let mut r = pg::BlockRequestT::default();
    r.target_id = target;
    call(c, graph(GraphOpT::BlockRequest(Box::new(r))))
        .await
        .expect("blocked");
}

/// Runs one action as `viewer` against `owner` (whose public post is `post_id`).
async fn act(action: &str, viewer: &User, owner: &User, post_id: u64) -> String {
    let c = &viewer.client;
    match action {
        "read profile" => {
            let mut r = pu::GetProfileRequestT::default();
            r.user_id = owner.id;
            outcome(
                call(c, users(UsersOpT::GetProfileRequest(Box::new(r)))).await,
                |_| "ok".into(),
            )
        }
        "read post" => {
            let mut r = pp::GetPostRequestT::default();
            r.post_id = post_id;
            outcome(
                call(c, posts(PostsOpT::GetPostRequest(Box::new(r)))).await,
                |_| "ok".into(),
            )
        }
        "comment" => {
            let mut r = pp::CreateCommentRequestT::default();
            r.post_id = post_id;
            r.text = Some("nice one".into());
            outcome(
                call(c, posts(PostsOpT::CreateCommentRequest(Box::new(r)))).await,
                |_| "ok".into(),
            )
        }
        "react" => {
            let mut r = pp::ReactRequestT::default();
            r.target_kind = common::ObjectKind::Post;
            r.target_id = post_id;
            r.emoji = Some("🔥".into());
            outcome(
                call(c, posts(PostsOpT::ReactRequest(Box::new(r)))).await,
                |_| "ok".into(),
            )
        }
        "see followers" => {
            let mut r = pg::FollowersListRequestT::default();
            r.user_id = owner.id;
            outcome(
                call(c, graph(GraphOpT::FollowersListRequest(Box::new(r)))).await,
                |_| "ok".into(),
            )
        }
        "mention" => {
            let post = create_post(c, &format!("hello @{}", owner.name))
                .await
                .expect("a post with a mention is published");
            if post.mentions.unwrap_or_default().contains(&owner.id) {
                "ok".into()
            } else {
                "not linked".into()
            }
        }
        "follow" => outcome(follow(c, owner.id).await, |b| match b {
            BodyT::Graph(g) => match g.op {
                GraphOpT::FollowResponse(r) => match r.state {
                    pg::FollowState::Following => "following".into(),
                    pg::FollowState::Requested => "requested".into(),
                    s => format!("{s:?}"),
                },
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        }),
        other => panic!("the table names an unknown action {other:?}"),
    }
}

#[tokio::test]
async fn every_documented_cell_holds_end_to_end() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("anonymous session");
    let mut u = HashMap::new();
    for name in [
        "public", "private", "picky", "gone", "fan", "stranger", "pending", "victim", "blocker",
    ] {
        u.insert(name, sign_up(&node, &anon, name).await);
    }
    // The private account; the picky one takes mentions and comments from followers only.
    support::make_private(&u["private"]).await;
    let mut r = pu::UpdateSettingsRequestT::default();
    r.who_can_mention = Some(pu::Permission::Followers);
    r.who_can_comment = Some(pu::Permission::Followers);
    call(
        &u["picky"].client,
        users(UsersOpT::UpdateSettingsRequest(Box::new(r))),
    )
    .await
    .expect("settings");
    // The fan follows everyone (approved by the private account); pending only asks.
    for owner in ["public", "private", "picky", "gone"] {
        follow(&u["fan"].client, u[owner].id).await.expect("follow");
    }
    approve(&u["private"].client, u["fan"].id)
        .await
        .expect("approved");
    follow(&u["pending"].client, u["private"].id)
        .await
        .expect("requested");
    for owner in ["public", "private"] {
        block(&u[owner].client, u["victim"].id).await;
        block(&u["blocker"].client, u[owner].id).await;
    }
    // Each owner's public post; then `gone` deletes the account.
    let mut post_of_owner = HashMap::new();
    for owner in ["public", "private", "picky", "gone"] {
        let p = create_post(&u[owner].client, "a post for the matrix")
            .await
            .expect("post");
        post_of_owner.insert(owner, p.post_id);
    }
    let mut r = pa::AccountDeleteRequestT::default();
    r.password = Some(u["gone"].password.clone());
    call(
        &u["gone"].client,
        auth(AuthOpT::AccountDeleteRequest(Box::new(r))),
    )
    .await
    .expect("deleted");

    let mut failures = Vec::new();
    let mut cells = 0;
    let rows = documented();
    assert_eq!(rows.len(), 15, "every row of the table is read");
    for (relationship, kind, outcomes) in rows {
        let owner = match kind.as_str() {
            "public" => "public",
            "private" => "private",
            "deleted" => "gone",
            k if k.starts_with("public, mentions and comments") => "picky",
            k => panic!("unknown owner kind {k:?}"),
        };
        let viewer = match relationship.as_str() {
            "self" => owner,
            "follower" | "former follower" => "fan",
            "non-follower" => "stranger",
            "pending request" => "pending",
            "blocked by owner" => "victim",
            "blocks owner" => "blocker",
            r => panic!("unknown relationship {r:?}"),
        };
        // Follow last: it changes the relationship the other cells are about.
        let mut actions: Vec<_> = outcomes.keys().cloned().collect();
        actions.sort_by_key(|a| (a == "follow", a.clone()));
        for action in actions {
            let got = act(&action, &u[viewer], &u[owner], post_of_owner[owner]).await;
            let want = &outcomes[&action];
            cells += 1;
            if &got != want {
                failures.push(format!(
                    "{relationship} / {kind} / {action}: documented {want:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "cells differ:\n{}",
        failures.join("\n")
    );
    assert_eq!(cells, 15 * 7);
}

async fn profile_of(c: &Client, user_id: u64) -> pu::ProfileT {
    let mut r = pu::GetProfileRequestT::default();
    r.user_id = user_id;
    match call(c, users(UsersOpT::GetProfileRequest(Box::new(r))))
        .await
        .expect("profile")
    {
        BodyT::Users(u) => match u.op {
            UsersOpT::GetProfileResponse(r) => *r.profile.expect("profile"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_token_for_one_user_never_acts_for_another() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("anonymous session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let post = create_post(&ana.client, "ana's words").await.expect("post");
    // Ben cannot edit or delete Ana's post.
    let mut r = pp::EditPostRequestT::default();
    r.post_id = post.post_id;
    r.text = Some("ben's words".into());
    let err = call(&ben.client, posts(PostsOpT::EditPostRequest(Box::new(r))))
        .await
        .expect_err("not his");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let mut r = pp::DeletePostRequestT::default();
    r.post_id = post.post_id;
    let err = call(&ben.client, posts(PostsOpT::DeletePostRequest(Box::new(r))))
        .await
        .expect_err("not his");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // Ana goes private; Ben asks to follow; Ben cannot approve his own request.
    let mut r = pu::UpdateProfileRequestT::default();
    r.private = Some(true);
    call(
        &ana.client,
        users(UsersOpT::UpdateProfileRequest(Box::new(r))),
    )
    .await
    .expect("private");
    follow(&ben.client, ana.id).await.expect("requested");
    let err = approve(&ben.client, ben.id)
        .await
        .expect_err("not his inbox");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    // A profile update from Ben changes Ben's profile, whatever he reads.
    let mut r = pu::UpdateProfileRequestT::default();
    r.display_name = Some("Ana (really Ben)".into());
    call(
        &ben.client,
        users(UsersOpT::UpdateProfileRequest(Box::new(r))),
    )
    .await
    .expect("updated");
    let name = |p: &pu::ProfileT| p.user.as_ref().and_then(|u| u.display_name.clone());
    assert_eq!(
        name(&profile_of(&ana.client, ana.id).await).as_deref(),
        Some("ana")
    );
    assert_eq!(
        name(&profile_of(&ana.client, ben.id).await).as_deref(),
        Some("Ana (really Ben)")
    );
    // Settings are one's own: Ben reads his, never Ana's.
    let got = call(
        &ben.client,
        users(UsersOpT::GetSettingsRequest(Box::default())),
    )
    .await
    .expect("settings");
    assert!(matches!(got, BodyT::Users(u) if matches!(u.op, UsersOpT::SettingsResponse(_))));
}
