//! Accounts end to end: a real edge with the accounts service over the embedded store,
//! the real SDK speaking the protocol.

use std::sync::Arc;
use std::time::Duration;

mod support;

use selfie_client::{Client, ClientError};
use selfie_codec::Frame;
use selfie_protocol::auth::{self as pa, AuthOp};
use selfie_protocol::{Body, Envelope, EnvelopeArgs, ErrorCode};
use support::{config, start};

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
    let closed = tokio::time::timeout(Duration::from_secs(5), on_a.connection().closed())
        .await
        .expect("the logged-out connection closes");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code.into_inner() == u64::from(ErrorCode::SessionRevoked.0)),
        "{closed:?}"
    );
    let err = Client::connect(config(&node, Some(a.access)))
        .await
        .err()
        .expect("logged out");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
}

/// A scripted attack: 1,000 password guesses against one account from one address.
#[tokio::test]
async fn a_password_guessing_attack_is_throttled_and_the_owner_still_gets_in() {
    let node = start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    register(&anon, "victim", "victim@example.com", "the real password")
        .await
        .expect("registered");
    let attacker = Client::connect(config(&node, None)).await.expect("session");
    let start = std::time::Instant::now();
    let (mut checked, mut throttled) = (0u32, 0u32);
    for i in 0..1_000 {
        match login(&attacker, "victim", &format!("guess number {i}")).await {
            Err(e) if e.code() == Some(ErrorCode::InvalidCredentials) => checked += 1,
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::RateLimited | ErrorCode::AccountLocked)
                ) =>
            {
                throttled += 1
            }
            other => panic!("guess {i}: {:?}", other.map(|t| t.user_id)),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "1000 guesses in {elapsed:.2} s: {checked} reached the password check ({:.1}/s), {throttled} throttled",
        f64::from(checked) / elapsed
    );
    assert_eq!(checked + throttled, 1_000);
    assert!(
        checked <= 20,
        "only the address burst reaches the password check: {checked}"
    );
    // The owner, from another address, gets in once the account lockout has passed.
    let endpoint =
        selfie_client::endpoint("127.0.0.2:0".parse().expect("addr")).expect("second address");
    let owner = Client::connect_on(&endpoint, config(&node, None))
        .await
        .expect("session");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match login(&owner, "victim", "the real password").await {
            Ok(t) => {
                assert!(t.user_id > 0);
                break;
            }
            Err(e) if e.code() == Some(ErrorCode::AccountLocked) => {
                assert!(std::time::Instant::now() < deadline, "still locked");
                let wait = match e {
                    ClientError::Server { retry_after_ms, .. } => u64::from(retry_after_ms),
                    _ => 100,
                };
                tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
            }
            Err(e) => panic!("owner refused: {e}"),
        }
    }
}

/// Logs of every crate, at TRACE, captured while a user registers, logs in and refreshes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_appear_in_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // This test binary's global subscriber (shard threads log through it).
    let _ = tracing::subscriber::set_global_default(subscriber);
    let node = start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let password = "Tr0ub4dor&3-unique-in-logs";
    let reg = register(&anon, "logtest", "logtest@example.com", password)
        .await
        .expect("registered");
    let again = login(&anon, "logtest", password).await.expect("login");
    let _ = login(&anon, "logtest", "wrong-password-unique-in-logs").await;
    let rotated = refresh(&anon, &again.refresh).await.expect("refresh");
    Client::connect(config(&node, Some(rotated.access.clone())))
        .await
        .expect("welcome");
    drop(node);
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("logs")).to_string();
    assert!(
        logs.len() > 1_000,
        "logging was captured ({} bytes)",
        logs.len()
    );
    for secret in [
        password,
        "wrong-password-unique-in-logs",
        reg.access.as_str(),
        reg.refresh.as_str(),
        again.refresh.as_str(),
        rotated.access.as_str(),
        rotated.refresh.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}

#[tokio::test]
async fn two_factor_enrolment_and_login_over_the_protocol() {
    let node = start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let reg = register(&anon, "judy", "judy@example.com", "correct horse battery")
        .await
        .expect("registered");
    let judy = Client::connect(config(&node, Some(reg.access)))
        .await
        .expect("welcome");
    let enrol = judy
        .request(|b, id| {
            let p = b.create_string("correct horse battery");
            let r =
                pa::TotpEnrollRequest::create(b, &pa::TotpEnrollRequestArgs { password: Some(p) });
            auth_envelope(b, id, AuthOp::TotpEnrollRequest, r.as_union_value())
        })
        .await
        .expect("enrol");
    let secret = enrol
        .envelope()
        .body_as_auth()
        .and_then(|a| a.op_as_totp_enroll_response())
        .and_then(|r| r.secret_base32())
        .expect("secret")
        .to_string();
    let code = support::totp_code(&secret, 0);
    let confirm = judy
        .request(|b, id| {
            let c = b.create_string(&code);
            let r =
                pa::TotpConfirmRequest::create(b, &pa::TotpConfirmRequestArgs { code: Some(c) });
            auth_envelope(b, id, AuthOp::TotpConfirmRequest, r.as_union_value())
        })
        .await
        .expect("confirm");
    let recovery: Vec<String> = confirm
        .envelope()
        .body_as_auth()
        .and_then(|a| a.op_as_totp_confirm_response())
        .and_then(|r| r.recovery_codes())
        .map(|c| c.iter().map(str::to_string).collect())
        .expect("recovery codes");
    assert_eq!(recovery.len(), 10);
    let err = login(&anon, "judy", "correct horse battery")
        .await
        .err()
        .expect("needs a code");
    assert_eq!(err.code(), Some(ErrorCode::SecondFactorRequired));
    let next = support::totp_code(&secret, 1);
    let ok = anon
        .request(|b, id| {
            let (i, p, t) = (
                b.create_string("judy"),
                b.create_string("correct horse battery"),
                b.create_string(&next),
            );
            let r = pa::LoginRequest::create(
                b,
                &pa::LoginRequestArgs {
                    identifier: Some(i),
                    password: Some(p),
                    totp_code: Some(t),
                    ..Default::default()
                },
            );
            auth_envelope(b, id, AuthOp::LoginRequest, r.as_union_value())
        })
        .await
        .expect("login with a code");
    assert_eq!(tokens_of(&ok).user_id, reg.user_id);
    // New recovery codes (password + an old code) replace every old one.
    let regenerate = |code: String| {
        let judy = &judy;
        async move {
            judy.request(|b, id| {
                let (p, c) = (
                    b.create_string("correct horse battery"),
                    b.create_string(&code),
                );
                let r = pa::RecoveryCodesRegenerateRequest::create(
                    b,
                    &pa::RecoveryCodesRegenerateRequestArgs {
                        password: Some(p),
                        code: Some(c),
                    },
                );
                auth_envelope(
                    b,
                    id,
                    AuthOp::RecoveryCodesRegenerateRequest,
                    r.as_union_value(),
                )
            })
            .await
        }
    };
    let fresh: Vec<String> = regenerate(recovery[0].clone())
        .await
        .expect("regenerated")
        .envelope()
        .body_as_auth()
        .and_then(|a| a.op_as_recovery_codes_response())
        .and_then(|r| r.recovery_codes())
        .map(|c| c.iter().map(str::to_string).collect())
        .expect("codes");
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !recovery.contains(c)));
    let err = regenerate(recovery[1].clone())
        .await
        .expect_err("old codes are void");
    assert_eq!(err.code(), Some(ErrorCode::SecondFactorInvalid));
    regenerate(fresh[0].clone())
        .await
        .expect("a new code works");
}

#[tokio::test]
async fn revoking_a_session_closes_its_open_connections_at_once() {
    let node = start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    register(
        &anon,
        "mallory",
        "mallory@example.com",
        "correct horse battery",
    )
    .await
    .expect("registered");
    let stolen = login(&anon, "mallory", "correct horse battery")
        .await
        .expect("login");
    let mine = login(&anon, "mallory", "correct horse battery")
        .await
        .expect("login");
    let thief = Client::connect(config(&node, Some(stolen.access)))
        .await
        .expect("welcome");
    let owner = Client::connect(config(&node, Some(mine.access)))
        .await
        .expect("welcome");
    thief.ping().await.expect("serves");
    simple(&owner, AuthOp::SessionRevokeOthersRequest, 0)
        .await
        .expect("revoked");
    let closed = tokio::time::timeout(Duration::from_secs(5), thief.connection().closed())
        .await
        .expect("closed promptly");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code.into_inner() == u64::from(ErrorCode::SessionRevoked.0)),
        "{closed:?}"
    );
    owner.ping().await.expect("the owner's session goes on");
}

fn graph_op(
    b: &mut selfie_codec::Builder,
    id: u64,
    op_type: selfie_protocol::graph::GraphOp,
    op: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> flatbuffers::WIPOffset<Envelope<'static>> {
    let body = selfie_protocol::graph::Graph::create(
        b,
        &selfie_protocol::graph::GraphArgs {
            op_type,
            op: Some(op),
        },
    );
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type: Body::Graph,
            body: Some(body.as_union_value()),
            ..Default::default()
        },
    )
}

async fn graph_call(
    c: &Client,
    op: selfie_protocol::graph::GraphOp,
    target: u64,
) -> Result<Frame, ClientError> {
    use selfie_protocol::graph::{self as g, GraphOp};
    c.request(|b, id| {
        let value = match op {
            GraphOp::FollowRequest => {
                g::FollowRequest::create(b, &g::FollowRequestArgs { target_id: target })
                    .as_union_value()
            }
            GraphOp::FollowRequestApproveRequest => g::FollowRequestApproveRequest::create(
                b,
                &g::FollowRequestApproveRequestArgs {
                    requester_id: target,
                },
            )
            .as_union_value(),
            GraphOp::BlockRequest => {
                g::BlockRequest::create(b, &g::BlockRequestArgs { target_id: target })
                    .as_union_value()
            }
            GraphOp::FollowersListRequest => g::FollowersListRequest::create(
                b,
                &g::FollowersListRequestArgs {
                    user_id: target,
                    page: None,
                },
            )
            .as_union_value(),
            _ => g::UnfollowRequest::create(b, &g::UnfollowRequestArgs { target_id: target })
                .as_union_value(),
        };
        graph_op(b, id, op, value)
    })
    .await
}

async fn profile(c: &Client, user_id: u64, make_private: bool) -> Result<Frame, ClientError> {
    use selfie_protocol::users as u;
    c.request(|b, id| {
        let (op_type, value) = if make_private {
            let r = u::UpdateProfileRequest::create(
                b,
                &u::UpdateProfileRequestArgs {
                    private: Some(true),
                    ..Default::default()
                },
            );
            (u::UsersOp::UpdateProfileRequest, r.as_union_value())
        } else {
            let r = u::GetProfileRequest::create(
                b,
                &u::GetProfileRequestArgs {
                    user_id,
                    username: None,
                },
            );
            (u::UsersOp::GetProfileRequest, r.as_union_value())
        };
        let body = u::Users::create(
            b,
            &u::UsersArgs {
                op_type,
                op: Some(value),
            },
        );
        Envelope::create(
            b,
            &EnvelopeArgs {
                id,
                body_type: Body::Users,
                body: Some(body.as_union_value()),
                ..Default::default()
            },
        )
    })
    .await
}

#[tokio::test]
async fn profiles_follows_privacy_and_blocks_over_the_protocol() {
    use selfie_protocol::graph::GraphOp;
    let node = start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let mut clients = Vec::new();
    for name in ["ana", "ben", "cat"] {
        let t = register(
            &anon,
            name,
            &format!("{name}@example.com"),
            "correct horse battery",
        )
        .await
        .expect("registered");
        clients.push((
            t.user_id,
            Client::connect(config(&node, Some(t.access)))
                .await
                .expect("welcome"),
        ));
    }
    let [(ana, a), (ben, b), (cat, c)] = <[_; 3]>::try_from(clients).ok().expect("three users");
    // Ben goes private; Ana asks to follow; Ben approves.
    profile(&b, 0, true).await.expect("private");
    let state = graph_call(&a, GraphOp::FollowRequest, ben)
        .await
        .expect("follow");
    let state = state
        .envelope()
        .body_as_graph()
        .and_then(|g| g.op_as_follow_response())
        .map(|r| r.state());
    assert_eq!(state, Some(selfie_protocol::graph::FollowState::Requested));
    // Ana cannot approve her own request on Ben's behalf: approvals act on the caller's inbox.
    let err = graph_call(&a, GraphOp::FollowRequestApproveRequest, ana)
        .await
        .expect_err("not hers");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    graph_call(&b, GraphOp::FollowRequestApproveRequest, ana)
        .await
        .expect("approved");
    // Followers of a private account: the follower may look, others may not.
    let list = graph_call(&a, GraphOp::FollowersListRequest, ben)
        .await
        .expect("follower sees");
    let ids: Vec<u64> = list
        .envelope()
        .body_as_graph()
        .and_then(|g| g.op_as_user_list_response())
        .and_then(|r| r.users())
        .map(|u| u.iter().map(|x| x.user_id()).collect())
        .expect("list");
    assert_eq!(ids, vec![ana]);
    let err = graph_call(&c, GraphOp::FollowersListRequest, ben)
        .await
        .expect_err("private list");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // Profiles carry counts and the viewer's relationship.
    let p = profile(&a, ben, false).await.expect("profile");
    let env = p.envelope();
    let prof = env
        .body_as_users()
        .and_then(|u| u.op_as_get_profile_response())
        .and_then(|r| r.profile())
        .expect("profile");
    assert_eq!(prof.followers_count(), 1);
    assert!(prof.relationship().is_some_and(|r| r.following()));
    assert!(
        prof.user()
            .is_some_and(|u| u.private() && u.username() == Some("ben"))
    );
    // A block hides each from the other and stops follows.
    graph_call(&b, GraphOp::BlockRequest, cat)
        .await
        .expect("blocked");
    let err = profile(&c, ben, false).await.expect_err("hidden");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = graph_call(&c, GraphOp::FollowRequest, ben)
        .await
        .expect_err("blocked");
    assert_eq!(err.code(), Some(ErrorCode::Blocked));
    // Anonymous sessions get nothing.
    let err = profile(&anon, ben, false).await.expect_err("anonymous");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
}

fn posts_op(
    b: &mut selfie_codec::Builder,
    id: u64,
    op_type: selfie_protocol::posts::PostsOp,
    op: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> flatbuffers::WIPOffset<Envelope<'static>> {
    let body = selfie_protocol::posts::Posts::create(
        b,
        &selfie_protocol::posts::PostsArgs {
            op_type,
            op: Some(op),
        },
    );
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type: Body::Posts,
            body: Some(body.as_union_value()),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn posts_over_the_protocol_respect_audiences_and_authorship() {
    use selfie_protocol::common;
    use selfie_protocol::posts::{self as pp, PostsOp};
    let node = start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let a = register(
        &anon,
        "poster",
        "poster@example.com",
        "correct horse battery",
    )
    .await
    .expect("registered");
    let b = register(
        &anon,
        "reader",
        "reader@example.com",
        "correct horse battery",
    )
    .await
    .expect("registered");
    let author = Client::connect(config(&node, Some(a.access)))
        .await
        .expect("welcome");
    let reader = Client::connect(config(&node, Some(b.access)))
        .await
        .expect("welcome");
    let create = |audience: common::Audience| {
        let author = &author;
        async move {
            let f = author
                .request(|bb, id| {
                    let text = bb.create_string("golden hour #film with @reader");
                    let r = pp::CreatePostRequest::create(
                        bb,
                        &pp::CreatePostRequestArgs {
                            text: Some(text),
                            audience,
                            ..Default::default()
                        },
                    );
                    posts_op(bb, id, PostsOp::CreatePostRequest, r.as_union_value())
                })
                .await
                .expect("created");
            let env = f.envelope();
            let post = env
                .body_as_posts()
                .and_then(|p| p.op_as_post_response())
                .and_then(|r| r.post())
                .expect("post");
            assert_eq!(
                post.hashtags().map(|h| h.iter().collect::<Vec<_>>()),
                Some(vec!["film"])
            );
            assert_eq!(
                post.mentions().map(|m| m.iter().collect::<Vec<_>>()),
                Some(vec![b.user_id])
            );
            post.post_id()
        }
    };
    let public = create(common::Audience::Public).await;
    let friends = create(common::Audience::Followers).await;
    async fn get(c: &Client, post_id: u64) -> Result<Frame, ClientError> {
        c.request(|bb, id| {
            let r = pp::GetPostRequest::create(bb, &pp::GetPostRequestArgs { post_id });
            posts_op(bb, id, PostsOp::GetPostRequest, r.as_union_value())
        })
        .await
    }
    get(&reader, public).await.expect("public post is readable");
    let err = get(&reader, friends).await.expect_err("followers only");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    // The reader reacts and comments on the public post; counts show on the author's read.
    reader
        .request(|bb, id| {
            let e = bb.create_string("🔥");
            let r = pp::ReactRequest::create(
                bb,
                &pp::ReactRequestArgs {
                    target_kind: common::ObjectKind::Post,
                    target_id: public,
                    emoji: Some(e),
                },
            );
            posts_op(bb, id, PostsOp::ReactRequest, r.as_union_value())
        })
        .await
        .expect("reacted");
    reader
        .request(|bb, id| {
            let t = bb.create_string("lovely");
            let r = pp::CreateCommentRequest::create(
                bb,
                &pp::CreateCommentRequestArgs {
                    post_id: public,
                    text: Some(t),
                    ..Default::default()
                },
            );
            posts_op(bb, id, PostsOp::CreateCommentRequest, r.as_union_value())
        })
        .await
        .expect("commented");
    let f = get(&author, public).await.expect("read");
    let counts = f
        .envelope()
        .body_as_posts()
        .and_then(|p| p.op_as_post_response())
        .and_then(|r| r.post())
        .and_then(|p| p.counts())
        .map(|c| (c.reactions(), c.comments()));
    assert_eq!(counts, Some((1, 1)));
    // Only the author edits.
    let err = reader
        .request(|bb, id| {
            let t = bb.create_string("hijacked");
            let r = pp::EditPostRequest::create(
                bb,
                &pp::EditPostRequestArgs {
                    post_id: public,
                    text: Some(t),
                    ..Default::default()
                },
            );
            posts_op(bb, id, PostsOp::EditPostRequest, r.as_union_value())
        })
        .await
        .expect_err("not the author");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}
