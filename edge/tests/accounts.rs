//! Accounts end to end: a real edge with the accounts service over the embedded store,
//! the real SDK speaking the protocol.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use selfie_client::{Client, ClientConfig, ClientError, Trust};
use selfie_codec::Frame;
use selfie_edge::api::auth::AuthApi;
use selfie_edge::auth::TokenAuthenticator;
use selfie_edge::{Config, Edge, Registry};
use selfie_protocol::auth::{self as pa, AuthOp};
use selfie_protocol::{Body, Envelope, EnvelopeArgs, ErrorCode};
use selfie_services::auth::accounts::{Accounts, TABLES};
use selfie_services::auth::password::PasswordHasher;
use selfie_services::auth::tokens::AccessTokens;
use selfie_storage::SystemClock;
use selfie_storage::embedded::EmbeddedStore;

struct Node {
    edge: Edge,
    _dir: tempfile::TempDir,
}

fn start() -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shards = 2;
    config.server.pin_cores = false;
    config.server.data_dir = dir.path().to_path_buf();
    config.server.drain_deadline_ms = 1_000;
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    let store = EmbeddedStore::open(dir.path().join("storage"), TABLES, Arc::new(SystemClock))
        .expect("store");
    let tokens = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    // Cheap Argon2 parameters: these tests check the flows, not hashing cost.
    let hasher = PasswordHasher::with_params(
        argon2::Params::new(64, 1, 1, None).expect("params"),
        2,
        Duration::from_secs(5),
    )
    .expect("hasher");
    let auth = Arc::new(TokenAuthenticator::new(tokens.clone()));
    let factory: selfie_edge::ServiceFactory = Arc::new(move |shard| {
        let mut r = Registry::new();
        let accounts = Accounts::new(
            store.clone(),
            tokens.clone(),
            hasher.clone(),
            Arc::new(SystemClock),
            1,
            shard as u16,
        )
        .expect("accounts");
        r.register(
            selfie_protocol::Service::Auth,
            Rc::new(AuthApi::new(accounts, Duration::from_secs(900))),
        );
        r
    });
    let edge = Edge::start(config, factory, auth).expect("edge");
    Node { edge, _dir: dir }
}

fn config(node: &Node, token: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::new(
        node.edge.addr,
        Trust::pinned_hex(&node.edge.fingerprint).expect("pin"),
    );
    c.access_token = token;
    c
}

fn auth_envelope(
    b: &mut selfie_codec::Builder,
    id: u64,
    op_type: AuthOp,
    op: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> flatbuffers::WIPOffset<Envelope<'static>> {
    let body = pa::Auth::create(
        b,
        &pa::AuthArgs {
            op_type,
            op: Some(op),
        },
    );
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type: Body::Auth,
            body: Some(body.as_union_value()),
            ..Default::default()
        },
    )
}

struct Tokens {
    user_id: u64,
    session_id: u64,
    access: String,
    refresh: String,
}

fn tokens_of(frame: &Frame) -> Tokens {
    let env = frame.envelope();
    let auth = env.body_as_auth().expect("auth answer");
    let t = auth
        .op_as_register_response()
        .and_then(|r| r.tokens())
        .or_else(|| auth.op_as_login_response().and_then(|r| r.tokens()))
        .or_else(|| auth.op_as_refresh_response().and_then(|r| r.tokens()))
        .expect("tokens");
    Tokens {
        user_id: t.user_id(),
        session_id: t.session_id(),
        access: t.access_token().expect("access").to_string(),
        refresh: t.refresh_token().expect("refresh").to_string(),
    }
}

async fn register(
    c: &Client,
    username: &str,
    email: &str,
    password: &str,
) -> Result<Tokens, ClientError> {
    let f = c
        .request(|b, id| {
            let (u, e, p) = (
                b.create_string(username),
                b.create_string(email),
                b.create_string(password),
            );
            let r = pa::RegisterRequest::create(
                b,
                &pa::RegisterRequestArgs {
                    username: Some(u),
                    email: Some(e),
                    password: Some(p),
                    ..Default::default()
                },
            );
            auth_envelope(b, id, AuthOp::RegisterRequest, r.as_union_value())
        })
        .await?;
    Ok(tokens_of(&f))
}

async fn login(c: &Client, identifier: &str, password: &str) -> Result<Tokens, ClientError> {
    let f = c
        .request(|b, id| {
            let (i, p) = (b.create_string(identifier), b.create_string(password));
            let r = pa::LoginRequest::create(
                b,
                &pa::LoginRequestArgs {
                    identifier: Some(i),
                    password: Some(p),
                    ..Default::default()
                },
            );
            auth_envelope(b, id, AuthOp::LoginRequest, r.as_union_value())
        })
        .await?;
    Ok(tokens_of(&f))
}

async fn refresh(c: &Client, token: &str) -> Result<Tokens, ClientError> {
    let f = c
        .request(|b, id| {
            let t = b.create_string(token);
            let r = pa::RefreshRequest::create(
                b,
                &pa::RefreshRequestArgs {
                    refresh_token: Some(t),
                },
            );
            auth_envelope(b, id, AuthOp::RefreshRequest, r.as_union_value())
        })
        .await?;
    Ok(tokens_of(&f))
}

async fn simple(c: &Client, op: AuthOp, session_id: u64) -> Result<Frame, ClientError> {
    c.request(|b, id| {
        let value = match op {
            AuthOp::LogoutRequest => {
                pa::LogoutRequest::create(b, &pa::LogoutRequestArgs {}).as_union_value()
            }
            AuthOp::SessionsListRequest => {
                pa::SessionsListRequest::create(b, &pa::SessionsListRequestArgs {}).as_union_value()
            }
            AuthOp::SessionRevokeOthersRequest => {
                pa::SessionRevokeOthersRequest::create(b, &pa::SessionRevokeOthersRequestArgs {})
                    .as_union_value()
            }
            _ => pa::SessionRevokeRequest::create(b, &pa::SessionRevokeRequestArgs { session_id })
                .as_union_value(),
        };
        auth_envelope(b, id, op, value)
    })
    .await
}

#[tokio::test]
async fn register_login_and_connect_as_the_user() {
    let node = start();
    let anon = Client::connect(config(&node, None))
        .await
        .expect("anonymous session");
    let reg = register(&anon, "ada", "ada@example.com", "correct horse battery")
        .await
        .expect("registered");
    // The access token opens an authenticated session for that user.
    let ada = Client::connect(config(&node, Some(reg.access.clone())))
        .await
        .expect("welcome");
    assert_eq!(ada.welcome().user_id, reg.user_id);
    let again = login(&anon, "ADA", "correct horse battery")
        .await
        .expect("login");
    assert_eq!(again.user_id, reg.user_id);
    assert_ne!(again.session_id, reg.session_id);
    // Duplicate username: a typed conflict.
    let err = register(&anon, "Ada", "other@example.com", "correct horse battery")
        .await
        .err()
        .expect("taken");
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    // Wrong password and unknown user: one error.
    let wrong = login(&anon, "ada", "wrong password!")
        .await
        .err()
        .expect("refused");
    let unknown = login(&anon, "nobody", "correct horse battery")
        .await
        .err()
        .expect("refused");
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidCredentials));
    assert_eq!(unknown.code(), Some(ErrorCode::InvalidCredentials));
    // Session management needs a signed-in session.
    let err = simple(&anon, AuthOp::SessionsListRequest, 0)
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    let list = simple(&ada, AuthOp::SessionsListRequest, 0)
        .await
        .expect("sessions");
    let sessions = list
        .envelope()
        .body_as_auth()
        .and_then(|a| a.op_as_sessions_list_response())
        .and_then(|r| r.sessions())
        .map(|s| s.len())
        .expect("list");
    assert_eq!(sessions, 2);
}

#[tokio::test]
async fn refresh_rotates_reuse_revokes_and_revoked_tokens_no_longer_open_sessions() {
    let node = start();
    let anon = Client::connect(config(&node, None))
        .await
        .expect("anonymous session");
    let first = register(&anon, "bob", "bob@example.com", "correct horse battery")
        .await
        .expect("registered");
    let second = refresh(&anon, &first.refresh).await.expect("rotated");
    assert_eq!(second.session_id, first.session_id);
    Client::connect(config(&node, Some(second.access.clone())))
        .await
        .expect("new access token works");
    // Replaying the spent token revokes the session: its access tokens stop working.
    let err = refresh(&anon, &first.refresh).await.err().expect("reuse");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
    let err = Client::connect(config(&node, Some(second.access)))
        .await
        .err()
        .expect("revoked");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
    // Signing out other devices keeps this one.
    let a = login(&anon, "bob", "correct horse battery")
        .await
        .expect("login");
    let b = login(&anon, "bob", "correct horse battery")
        .await
        .expect("login");
    let on_a = Client::connect(config(&node, Some(a.access.clone())))
        .await
        .expect("welcome");
    simple(&on_a, AuthOp::SessionRevokeOthersRequest, 0)
        .await
        .expect("revoked others");
    assert!(
        Client::connect(config(&node, Some(a.access.clone())))
            .await
            .is_ok()
    );
    let err = Client::connect(config(&node, Some(b.access)))
        .await
        .err()
        .expect("revoked");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
    // Another user's session id cannot be revoked from here.
    let carol = register(&anon, "carol", "carol@example.com", "correct horse battery")
        .await
        .expect("registered");
    let err = simple(&on_a, AuthOp::SessionRevokeRequest, carol.session_id)
        .await
        .expect_err("not ours");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    Client::connect(config(&node, Some(carol.access)))
        .await
        .expect("carol unaffected");
    // Logout ends this session.
    simple(&on_a, AuthOp::LogoutRequest, 0)
        .await
        .expect("logged out");
    let err = Client::connect(config(&node, Some(a.access)))
        .await
        .err()
        .expect("logged out");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
}
