//! Accounts over the embedded store (a real fjall database in a temporary directory).

use std::sync::Arc;
use std::time::Duration;

use argon2::Params;
use selfie_services::Error;
use selfie_services::auth::accounts::Accounts;
use selfie_services::auth::password::PasswordHasher;
use selfie_services::auth::throttle::LoginThrottle;
use selfie_services::auth::tokens::{AccessTokens, TokenError};
use selfie_services::tables::auth::TABLES;
use selfie_storage::SystemClock;
use selfie_storage::embedded::EmbeddedStore;

const IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

struct Fixture {
    accounts: Accounts<EmbeddedStore>,
    tokens: AccessTokens,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path(), TABLES, Arc::new(SystemClock)).expect("store");
    let tokens = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    // Cheap Argon2 parameters: these tests check behaviour, not hashing cost.
    let hasher = PasswordHasher::with_params(
        Params::new(64, 1, 1, None).expect("params"),
        4,
        Duration::from_secs(5),
    )
    .expect("hasher");
    let accounts = Accounts::new(
        store,
        tokens.clone(),
        hasher,
        Arc::new(SystemClock),
        1,
        0,
        LoginThrottle::default(),
    )
    .expect("accounts");
    Fixture {
        accounts,
        tokens,
        _dir: dir,
    }
}

#[tokio::test]
async fn register_then_login_gives_tokens_for_that_user_only() {
    let f = fixture();
    let reg = f
        .accounts
        .register("Ada", "ada@example.com", "correct horse".into(), "phone")
        .await
        .expect("registered");
    let claims = f
        .tokens
        .verify(&reg.access_token)
        .expect("access token verifies");
    assert_eq!(
        (claims.user_id, claims.session_id),
        (reg.user_id, reg.session_id)
    );
    let by_name = f
        .accounts
        .login("ada", "correct horse".into(), "laptop", IP)
        .await
        .expect("login by name");
    let by_mail = f
        .accounts
        .login("ADA@example.com", "correct horse".into(), "tablet", IP)
        .await
        .expect("login by e-mail");
    assert_eq!(by_name.user_id, reg.user_id);
    assert_eq!(by_mail.user_id, reg.user_id);
    assert_ne!(
        by_name.session_id, by_mail.session_id,
        "one session per login"
    );
    assert_eq!(
        f.accounts
            .sessions(reg.user_id)
            .await
            .expect("sessions")
            .len(),
        3
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_error() {
    let f = fixture();
    f.accounts
        .register("bob", "bob@example.com", "hunter2hunter2".into(), "phone")
        .await
        .expect("registered");
    let wrong = f
        .accounts
        .login("bob", "hunter3hunter3".into(), "x", IP)
        .await
        .expect_err("wrong password");
    let unknown = f
        .accounts
        .login("nobody", "hunter2hunter2".into(), "x", IP)
        .await
        .expect_err("unknown user");
    assert!(matches!(wrong, Error::InvalidCredentials));
    assert!(matches!(unknown, Error::InvalidCredentials));
    assert_eq!(wrong.to_string(), unknown.to_string());
}

#[tokio::test]
async fn usernames_and_emails_are_unique_whatever_the_case_and_the_race() {
    let f = fixture();
    let accounts = &f.accounts;
    let attempts = futures::future::join_all((0..8).map(|i| async move {
        let email = format!("carol{i}@example.com");
        accounts
            .register("Carol", &email, "long enough pw".into(), "phone")
            .await
    }))
    .await;
    assert_eq!(
        attempts.iter().filter(|r| r.is_ok()).count(),
        1,
        "exactly one owner of the name"
    );
    assert!(
        attempts
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, Error::Taken { field: "username" }))
    );
    let err = f
        .accounts
        .register("carol", "other@example.com", "long enough pw".into(), "x")
        .await
        .expect_err("taken");
    assert!(matches!(err, Error::Taken { field: "username" }));
    f.accounts
        .register("dave", "dave@example.com", "long enough pw".into(), "x")
        .await
        .expect("ok");
    let err = f
        .accounts
        .register("dave2", "DAVE@example.com", "long enough pw".into(), "x")
        .await
        .expect_err("taken");
    assert!(matches!(err, Error::Taken { field: "email" }));
    // The username of the refused registration was given back.
    f.accounts
        .register("dave2", "dave2@example.com", "long enough pw".into(), "x")
        .await
        .expect("free again");
    for (u, e) in [
        ("a", "a@example.com"),
        ("bad name", "x@example.com"),
        ("erin", "not-an-email"),
    ] {
        let err = f
            .accounts
            .register(u, e, "long enough pw".into(), "x")
            .await
            .expect_err("invalid");
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{u} {e}: {err}"
        );
    }
    let err = f
        .accounts
        .register("frank", "frank@example.com", "short".into(), "x")
        .await
        .expect_err("weak");
    assert!(matches!(err, Error::Password(_)));
}

#[tokio::test]
async fn refresh_rotates_and_reuse_of_a_spent_token_revokes_the_session() {
    let f = fixture();
    let first = f
        .accounts
        .register(
            "grace",
            "grace@example.com",
            "long enough pw".into(),
            "phone",
        )
        .await
        .expect("ok");
    let second = f
        .accounts
        .refresh(&first.refresh_token)
        .await
        .expect("rotated");
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(f.tokens.verify(&second.access_token).is_ok());
    // A thief replays the first token: the whole session goes.
    let err = f
        .accounts
        .refresh(&first.refresh_token)
        .await
        .expect_err("reuse");
    assert!(matches!(err, Error::TokenReused));
    assert_eq!(
        f.tokens.verify(&second.access_token),
        Err(TokenError::Revoked)
    );
    let err = f
        .accounts
        .refresh(&second.refresh_token)
        .await
        .expect_err("session revoked");
    assert!(matches!(err, Error::SessionRevoked));
    let err = f.accounts.refresh("0123").await.expect_err("unknown");
    assert!(matches!(err, Error::TokenInvalid));
}

#[tokio::test]
async fn revoking_other_sessions_keeps_the_current_one() {
    let f = fixture();
    let a = f
        .accounts
        .register(
            "heidi",
            "heidi@example.com",
            "long enough pw".into(),
            "phone",
        )
        .await
        .expect("ok");
    let b = f
        .accounts
        .login("heidi", "long enough pw".into(), "laptop", IP)
        .await
        .expect("ok");
    let c = f
        .accounts
        .login("heidi", "long enough pw".into(), "tablet", IP)
        .await
        .expect("ok");
    assert_eq!(
        f.accounts
            .revoke_others(a.user_id, b.session_id)
            .await
            .expect("revoked"),
        2
    );
    assert!(f.tokens.verify(&b.access_token).is_ok());
    assert_eq!(f.tokens.verify(&a.access_token), Err(TokenError::Revoked));
    assert_eq!(f.tokens.verify(&c.access_token), Err(TokenError::Revoked));
    let sessions = f.accounts.sessions(a.user_id).await.expect("sessions");
    assert_eq!(sessions.iter().filter(|s| !s.revoked).count(), 1);
    assert!(matches!(
        f.accounts.revoke(a.user_id, 12345).await,
        Err(Error::NotFound(_))
    ));
}

fn totp_now(secret_b32: &str, offset_steps: i64) -> String {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .expect("base32");
    let t = totp_rs::TOTP::new_unchecked(
        totp_rs::Algorithm::SHA1,
        6,
        0,
        30,
        secret,
        None,
        String::new(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    t.generate((now + offset_steps * 30) as u64)
}

#[tokio::test]
async fn a_second_factor_is_required_at_login_once_confirmed() {
    let f = fixture();
    let reg = f
        .accounts
        .register("ivan", "ivan@example.com", "long enough pw".into(), "phone")
        .await
        .expect("ok");
    // Enrolment needs the password again.
    let err = f
        .accounts
        .totp_enrol(reg.user_id, "wrong password".into(), "Selfie")
        .await
        .expect_err("reauth");
    assert!(matches!(err, Error::InvalidCredentials));
    let (uri, secret) = f
        .accounts
        .totp_enrol(reg.user_id, "long enough pw".into(), "Selfie")
        .await
        .expect("enrol");
    assert!(uri.starts_with("otpauth://totp/Selfie:ivan?"), "{uri}");
    // Pending until confirmed: login still needs only the password.
    f.accounts
        .login("ivan", "long enough pw".into(), "x", IP)
        .await
        .expect("not yet required");
    let err = f.accounts.totp_confirm(reg.user_id, "000000").await;
    assert!(err.is_err() || totp_now(&secret, 0) == "000000");
    let recovery = f
        .accounts
        .totp_confirm(reg.user_id, &totp_now(&secret, 0))
        .await
        .expect("confirmed");
    assert_eq!(recovery.len(), 10);

    let login = |totp: Option<String>, recovery: Option<String>| {
        let accounts = &f.accounts;
        async move {
            accounts
                .login_with_second_factor(
                    "ivan",
                    "long enough pw".into(),
                    totp.as_deref(),
                    recovery.as_deref(),
                    "x",
                    IP,
                )
                .await
        }
    };
    assert!(matches!(
        login(None, None).await,
        Err(Error::SecondFactorRequired)
    ));
    // The next step's code (allowed by the ±1 window) signs in, once.
    let code = totp_now(&secret, 1);
    login(Some(code.clone()), None).await.expect("with a code");
    assert!(
        matches!(
            login(Some(code), None).await,
            Err(Error::SecondFactorInvalid)
        ),
        "a code works once"
    );
    // A recovery code works once too.
    login(None, Some(recovery[0].clone()))
        .await
        .expect("recovery code");
    assert!(matches!(
        login(None, Some(recovery[0].clone())).await,
        Err(Error::SecondFactorInvalid)
    ));
    // A wrong password never reveals that a second factor is on.
    let err = f
        .accounts
        .login_with_second_factor("ivan", "not the password".into(), None, None, "x", IP)
        .await
        .expect_err("wrong password");
    assert!(matches!(err, Error::InvalidCredentials));
    // Disabling needs the password and a code.
    let err = f
        .accounts
        .totp_disable(reg.user_id, "long enough pw".into(), "nope")
        .await
        .expect_err("needs a code");
    assert!(matches!(err, Error::SecondFactorInvalid));
    f.accounts
        .totp_disable(reg.user_id, "long enough pw".into(), &recovery[1])
        .await
        .expect("disabled with a recovery code");
    f.accounts
        .login("ivan", "long enough pw".into(), "x", IP)
        .await
        .expect("password alone again");
}

#[tokio::test]
async fn changing_the_password_signs_out_other_sessions_and_deletion_erases_the_account() {
    let f = fixture();
    let a = f
        .accounts
        .register("kim", "kim@example.com", "first password".into(), "phone")
        .await
        .expect("ok");
    let b = f
        .accounts
        .login("kim", "first password".into(), "laptop", IP)
        .await
        .expect("ok");
    let err = f
        .accounts
        .change_password(
            a.user_id,
            a.session_id,
            "wrong password".into(),
            "second password".into(),
            None,
        )
        .await
        .expect_err("needs the current password");
    assert!(matches!(err, Error::InvalidCredentials));
    let signed_out = f
        .accounts
        .change_password(
            a.user_id,
            a.session_id,
            "first password".into(),
            "second password".into(),
            None,
        )
        .await
        .expect("changed");
    assert_eq!(signed_out, 1);
    assert!(f.tokens.verify(&a.access_token).is_ok());
    assert_eq!(f.tokens.verify(&b.access_token), Err(TokenError::Revoked));
    assert!(
        f.accounts
            .login("kim", "first password".into(), "x", IP)
            .await
            .is_err()
    );
    f.accounts
        .login("kim", "second password".into(), "x", IP)
        .await
        .expect("new password");

    f.accounts
        .delete_account(a.user_id, "second password".into(), None)
        .await
        .expect("deleted");
    assert_eq!(f.tokens.verify(&a.access_token), Err(TokenError::Revoked));
    let err = f
        .accounts
        .login("kim", "second password".into(), "x", IP)
        .await
        .expect_err("gone");
    assert!(matches!(err, Error::InvalidCredentials));
    // The e-mail address is free again; the username stays reserved.
    f.accounts
        .register("kim2", "kim@example.com", "third password".into(), "x")
        .await
        .expect("e-mail reusable");
    let err = f
        .accounts
        .register("kim", "kim3@example.com", "third password".into(), "x")
        .await
        .expect_err("reserved");
    assert!(matches!(err, Error::Taken { field: "username" }));
}
