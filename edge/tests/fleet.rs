//! A fleet of edge nodes sharing one store, one signing key and one real `redis-server`:
//! a session revoked on one node is refused, and its connections closed, on every node
//! (including one started later); login guesses spread over nodes add up to one lockout.

mod support;

use std::time::{Duration, Instant};

use selfie_client::{Client, ClientError};
use selfie_edge::fleet::Fleet;
use selfie_protocol::auth::{self as pa, AuthOpT};
use selfie_protocol::{BodyT, ErrorCode};
use selfie_services::auth::throttle::LoginThrottle;
use selfie_storage::redis::testing::RedisServer;
use support::{Node, Parts, auth, call, config, sign_up, start_with, tokens};

/// A node of the fleet: its edge and its Redis bridge.
struct FleetNode {
    node: Node,
    _fleet: Fleet,
}

fn node(parts: &Parts, redis: &RedisServer) -> FleetNode {
    let tokens = tokens(parts);
    let fleet = Fleet::start(
        &redis.url,
        "test:",
        tokens.revoked().clone(),
        parts.throttle,
    )
    .expect("fleet");
    let throttle = LoginThrottle::new(parts.throttle).with_fleet(fleet.login_throttle());
    FleetNode {
        node: start_with(parts, tokens, throttle),
        _fleet: fleet,
    }
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
