//! A fleet of edge nodes sharing one store, one signing key and one real `redis-server`:
//! a session revoked on one node is refused, and its connections closed, on every node
//! (including one started later); login guesses spread over nodes add up to one lockout.

mod support;

use std::time::{Duration, Instant};

use selfie_client::{Client, ClientError};
use selfie_protocol::auth::{self as pa, AuthOpT};
use selfie_protocol::{BodyT, ErrorCode};
use selfie_storage::redis::testing::RedisServer;
use support::{FleetNode, Node, Parts, auth, call, config, graph, sign_up, users};

fn node(parts: &Parts, redis: &RedisServer) -> FleetNode {
    support::fleet_node(parts, &redis.url)
}

async fn login(c: &Client, name: &str, password: &str) -> Result<String, ClientError> {
    let mut r = pa::LoginRequestT::default();
    r.identifier = Some(name.to_string());
    r.password = Some(password.to_string());
    match call(c, auth(AuthOpT::LoginRequest(Box::new(r)))).await? {
        BodyT::Auth(a) => match a.op {
            AuthOpT::LoginResponse(r) => {
                Ok(r.tokens.and_then(|t| t.access_token).expect("access token"))
            }
            other => panic!("not a login response: {other:?}"),
        },
        other => panic!("not an auth answer: {other:?}"),
    }
}

#[tokio::test]
async fn a_revocation_on_one_node_reaches_every_node() {
    let redis = RedisServer::start().expect("redis-server must be installed");
    let parts = support::parts();
    let a = node(&parts, &redis);
    let b = node(&parts, &redis);
    let anon_a = Client::connect(config(&a.node, None))
        .await
        .expect("session");
    let user = sign_up(&a.node, &anon_a, "roamer").await;
    // A second device signs in on node A and also holds a connection on node B.
    let token = login(&anon_a, "roamer", &user.password)
        .await
        .expect("login");
    let on_b = Client::connect(config(&b.node, Some(token.clone())))
        .await
        .expect("the shared key verifies on B");
    on_b.ping().await.expect("live");
    // The first device signs the second out, on node A.
    call(
        &user.client,
        auth(AuthOpT::SessionRevokeOthersRequest(Box::default())),
    )
    .await
    .expect("revoked");
    // Node B closes the revoked session's connection promptly...
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), on_b.connection().closed())
        .await
        .expect("node B closed the revoked session");
    println!("revocation reached node B in {:?}", started.elapsed());
    // ...and refuses its token from now on, as does a node started afterwards.
    let err = Client::connect(config(&b.node, Some(token.clone())))
        .await
        .err()
        .expect("refused on B");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked), "{err}");
    let c = node(&parts, &redis);
    let err = Client::connect(config(&c.node, Some(token)))
        .await
        .err()
        .expect("refused on a new node");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked), "{err}");
    // The signing-out device itself is unaffected everywhere.
    user.client.ping().await.expect("still signed in");
    let token = login(&anon_a, "roamer", &user.password)
        .await
        .expect("login");
    Client::connect(config(&c.node, Some(token)))
        .await
        .expect("a fresh session works on every node");
    let metrics = b.node.edge.metrics().encode();
    assert!(
        metrics.contains("selfie_fleet_revocations_received_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn guesses_spread_over_nodes_lock_the_account_on_every_node() {
    let redis = RedisServer::start().expect("redis-server must be installed");
    let parts = support::parts();
    let a = node(&parts, &redis);
    let b = node(&parts, &redis);
    let anon_a = Client::connect(config(&a.node, None))
        .await
        .expect("session");
    let anon_b = Client::connect(config(&b.node, None))
        .await
        .expect("session");
    let user = sign_up(&a.node, &anon_a, "target").await;
    // Three wrong guesses on each node: under each node's own limit (5), over the
    // fleet's.
    let mut locked = 0;
    for anon in [&anon_a, &anon_b, &anon_a, &anon_b, &anon_a, &anon_b] {
        let err = login(anon, "target", "not the password")
            .await
            .expect_err("wrong");
        match err.code() {
            Some(ErrorCode::InvalidCredentials) => {}
            Some(ErrorCode::AccountLocked) => locked += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(locked >= 1, "the fleet counted the guesses together");
    // Now even the right password waits, on both nodes...
    for anon in [&anon_a, &anon_b] {
        let err = login(anon, "target", &user.password)
            .await
            .expect_err("locked");
        assert_eq!(err.code(), Some(ErrorCode::AccountLocked));
    }
    // ...until the lockout (capped at 2 s here) has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match login(&anon_b, "target", &user.password).await {
            Ok(_) => break,
            Err(e) if e.code() == Some(ErrorCode::AccountLocked) => {
                assert!(Instant::now() < deadline, "still locked");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("owner refused: {e}"),
        }
    }
}

/// Another session of `user` on `node` (a fresh login there).
async fn session_on(node: &Node, user: &support::User) -> Client {
    let anon = Client::connect(config(node, None)).await.expect("session");
    let token = login(&anon, &user.name, &user.password)
        .await
        .expect("login");
    Client::connect(config(node, Some(token)))
        .await
        .expect("welcome")
}

#[tokio::test]
async fn racing_changes_to_one_pair_on_two_nodes_take_turns() {
    use selfie_protocol::graph::{self as pg, GraphOpT};
    use selfie_protocol::users::{self as pu, UsersOpT};
    let redis = RedisServer::start().expect("redis-server must be installed");
    let parts = support::parts();
    let a = node(&parts, &redis);
    let b = node(&parts, &redis);
    let anon = Client::connect(config(&a.node, None))
        .await
        .expect("session");
    let ana = sign_up(&a.node, &anon, "ana").await;
    let ben = sign_up(&a.node, &anon, "ben").await;
    // Ben works on node A, Ana on node B.
    let mut bens = Vec::new();
    let mut anas = Vec::new();
    for _ in 0..3 {
        bens.push(session_on(&a.node, &ben).await);
        anas.push(session_on(&b.node, &ana).await);
    }
    for round in 0..40 {
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
        // However the race went, Ana's follower list, her count and Ben's view agree.
        let mut l = pg::FollowersListRequestT::default();
        l.user_id = ana.id;
        let listed: Vec<u64> = match call(
            &ana.client,
            graph(GraphOpT::FollowersListRequest(Box::new(l))),
        )
        .await
        .expect("followers")
        {
            BodyT::Graph(g) => match g.op {
                GraphOpT::UserListResponse(r) => r
                    .users
                    .unwrap_or_default()
                    .iter()
                    .map(|u| u.user_id)
                    .collect(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let mut r = pu::GetProfileRequestT::default();
        r.user_id = ana.id;
        let profile = match call(&ben.client, users(UsersOpT::GetProfileRequest(Box::new(r))))
            .await
            .expect("profile")
        {
            BodyT::Users(u) => match u.op {
                UsersOpT::GetProfileResponse(r) => *r.profile.expect("profile"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let following = profile.relationship.as_ref().is_some_and(|r| r.following);
        assert_eq!(
            profile.followers_count as usize,
            listed.len(),
            "round {round}"
        );
        assert_eq!(following, listed == vec![ben.id], "round {round}");
    }
}
