//! Access tokens in `Hello`, verified at the edge (real edge, real SDK): the session
//! belongs to the token's user; tampered, expired, foreign and revoked tokens are refused
//! with their typed codes.

use std::sync::Arc;
use std::time::Duration;

use selfie_client::{Client, ClientConfig, Trust};
use selfie_edge::auth::TokenAuthenticator;
use selfie_edge::{Config, Edge, Plane, Registry};
use selfie_protocol::ErrorCode;
use selfie_services::auth::tokens::AccessTokens;

struct Node {
    edge: Edge,
    tokens: AccessTokens,
    _dir: tempfile::TempDir,
}

fn start() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shards = 1;
    config.server.pin_cores = false;
    config.server.data_dir = dir.path().to_path_buf();
    config.server.drain_deadline_ms = 1_000;
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    let tokens = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    let auth = Arc::new(TokenAuthenticator::new(tokens.clone()));
    let plane = Plane::new(config.shard_count(), config.delivery.plane());
    let shards = plane.clone();
    let factory = Arc::new(move |shard| Registry::new(shard, &shards));
    let edge = Edge::start(config, plane, factory, auth).expect("edge");
    Node {
        edge,
        tokens,
        _dir: dir,
    }
}

fn config(node: &Node, token: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::new(
        node.edge.addr,
        Trust::pinned_hex(&node.edge.fingerprint).expect("pin"),
    );
    c.access_token = token;
    c
}

#[tokio::test]
async fn a_valid_token_makes_the_session_its_users_and_no_one_elses() {
    let node = start();
    let token = node.tokens.issue(1001, 1, &[]).expect("token");
    let client = Client::connect(config(&node, Some(token)))
        .await
        .expect("welcome");
    assert_eq!(client.welcome().user_id, 1001);
    client.ping().await.expect("serves");
    let other = node.tokens.issue(2002, 2, &[]).expect("token");
    let client = Client::connect(config(&node, Some(other)))
        .await
        .expect("welcome");
    assert_eq!(client.welcome().user_id, 2002);
}

#[tokio::test]
async fn tampered_expired_foreign_and_revoked_tokens_are_refused_with_their_codes() {
    let node = start();
    let refuse = |token: String| {
        let c = config(&node, Some(token));
        async move { Client::connect(c).await.err().expect("refused").code() }
    };
    // Tampered: one character of the signature changed.
    let mut t = node.tokens.issue(1, 1, &[]).expect("token").into_bytes();
    let i = t.len() - 5;
    t[i] = if t[i] == b'x' { b'y' } else { b'x' };
    assert_eq!(
        refuse(String::from_utf8(t).expect("ascii")).await,
        Some(ErrorCode::TokenInvalid)
    );
    // Expired (valid signature, validity over).
    let expired = node
        .tokens
        .issue_valid_between(1, 1, &[], 1_735_689_600, 1_735_690_500)
        .expect("token");
    assert_eq!(refuse(expired).await, Some(ErrorCode::TokenExpired));
    // Signed by another deployment's key.
    let foreign = AccessTokens::generate("selfie-test", Duration::from_secs(900))
        .expect("key")
        .issue(1, 1, &[])
        .expect("token");
    assert_eq!(refuse(foreign).await, Some(ErrorCode::TokenInvalid));
    // Revoked session.
    let revoked = node.tokens.issue(1, 77, &[]).expect("token");
    node.tokens.revoked().revoke(77);
    assert_eq!(refuse(revoked).await, Some(ErrorCode::TokenRevoked));
    // The edge keeps serving good clients.
    let good = node.tokens.issue(1, 1, &[]).expect("token");
    Client::connect(config(&node, Some(good)))
        .await
        .expect("welcome")
        .ping()
        .await
        .expect("serves");
}
