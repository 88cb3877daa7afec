//! Accounts over the embedded store (a real fjall database in a temporary directory),
//! behind a gate that can hold one store operation to drive races deterministically.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use argon2::Params;
use selfie_services::Error;
use selfie_services::auth::accounts::{Accounts, load_recent_revocations};
use selfie_services::auth::password::PasswordHasher;
use selfie_services::auth::throttle::{LoginThrottle, ThrottleConfig, Throttled};
use selfie_services::auth::tokens::{AccessTokens, RevokedSessions, TokenError};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{Store, SystemClock};
use support::{Gated, Op, Outbox, code_in};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// A distinct address per registration (registrations are throttled per address).
fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
}

struct Fixture {
    accounts: Accounts<Gated<EmbeddedStore>>,
    store: Gated<EmbeddedStore>,
    tokens: AccessTokens,
    outbox: Arc<Outbox>,
    _dir: tempfile::TempDir,
}

fn hasher() -> PasswordHasher {
    // Cheap Argon2 parameters: these tests check behaviour, not hashing cost.
    PasswordHasher::with_params(
        Params::new(64, 1, 1, None).expect("params"),
        4,
        Duration::from_secs(5),
    )
    .expect("hasher")
}

fn fixture() -> Fixture {
    fixture_with(ThrottleConfig::default())
}

fn fixture_with(throttle: ThrottleConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let tables = selfie_services::schema::tables();
    let store = EmbeddedStore::open(dir.path(), &tables, Arc::new(SystemClock)).expect("store");
    let store = Gated {
        inner: store,
        gate: Default::default(),
    };
    let tokens = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    let outbox = Arc::new(Outbox::default());
    let accounts = Accounts::new(
        store.clone(),
        tokens.clone(),
        hasher(),
        Arc::new(SystemClock),
        1,
        0,
        LoginThrottle::new(throttle),
    )
    .expect("accounts")
    .with_mailer(outbox.clone());
    Fixture {
        accounts,
        store,
        tokens,
        outbox,
        _dir: dir,
    }
}

impl Fixture {
    /// Types the code mailed to `email` for `user_id`.
    async fn verify(&self, user_id: u64, email: &str) {
        let mail = self.outbox.take(email).await;
        self.accounts
            .verify_email(user_id, &code_in(&mail))
            .await
            .expect("address verified");
    }
}

#[tokio::test]
async fn register_then_login_gives_tokens_for_that_user_only() {
    let f = fixture();
    let reg = f
        .accounts
        .register(
            "Ada",
            "ada@example.com",
            "correct horse".into(),
            "phone",
            IP,
        )
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
    // The address signs in only once its owner has typed the code mailed to it.
    let err = f
        .accounts
        .login("ada@example.com", "correct horse".into(), "tablet", IP)
        .await
        .expect_err("unverified address");
    assert!(matches!(err, Error::InvalidCredentials));
    f.verify(reg.user_id, "ada@example.com").await;
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
        .register(
            "bob",
            "bob@example.com",
            "hunter2hunter2".into(),
            "phone",
            IP,
        )
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
    let attempts = futures::future::join_all((0..8u8).map(|i| async move {
        let email = format!("carol{i}@example.com");
        accounts
            .register("Carol", &email, "long enough pw".into(), "phone", ip(i))
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
        .register(
            "carol",
            "other@example.com",
            "long enough pw".into(),
            "x",
            IP,
        )
        .await
        .expect_err("taken");
    assert!(matches!(err, Error::Taken { field: "username" }));
    let dave = f
        .accounts
        .register(
            "dave",
            "dave@example.com",
            "long enough pw".into(),
            "x",
            ip(20),
        )
        .await
        .expect("ok");
    f.verify(dave.user_id, "dave@example.com").await;
    // Registering with an address that has an account answers as any registration
    // does (nothing to enumerate); the address's owner is told, no code goes out, and
    // the address stays with its owner.
    let other = f
        .accounts
        .register(
            "dave2",
            "DAVE@example.com",
            "long enough pw".into(),
            "x",
            ip(21),
        )
        .await
        .expect("same answer");
    let warning = f.outbox.take("dave@example.com").await;
    assert!(warning.subject.contains("tried to sign up"), "{warning:?}");
    assert!(
        !f.outbox
            .pending()
            .iter()
            .any(|m| m.to.eq_ignore_ascii_case("dave@example.com")),
        "no code for the newcomer"
    );
    let err = f.accounts.verify_email(other.user_id, "ABCDEFGHJK").await;
    assert!(err.is_err());
    let by_mail = f
        .accounts
        .login("dave@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("the owner signs in by address");
    assert_eq!(by_mail.user_id, dave.user_id);
    for (u, e) in [
        ("a", "a@example.com"),
        ("bad name", "x@example.com"),
        ("erin", "not-an-email"),
    ] {
        let err = f
            .accounts
            .register(u, e, "long enough pw".into(), "x", IP)
            .await
            .expect_err("invalid");
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{u} {e}: {err}"
        );
    }
    let err = f
        .accounts
        .register("frank", "frank@example.com", "short".into(), "x", IP)
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
            IP,
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
            IP,
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
        .register(
            "ivan",
            "ivan@example.com",
            "long enough pw".into(),
            "phone",
            IP,
        )
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
        .register(
            "kim",
            "kim@example.com",
            "first password".into(),
            "phone",
            IP,
        )
        .await
        .expect("ok");
    f.verify(a.user_id, "kim@example.com").await;
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
    let kim2 = f
        .accounts
        .register("kim2", "kim@example.com", "third password".into(), "x", IP)
        .await
        .expect("e-mail reusable");
    f.verify(kim2.user_id, "kim@example.com").await;
    let err = f
        .accounts
        .register("kim", "kim3@example.com", "third password".into(), "x", IP)
        .await
        .expect_err("reserved");
    assert!(matches!(err, Error::Taken { field: "username" }));
}

/// Defect: a refresh read the session, then wrote it back whole, un-revoking a logout
/// that landed in between.
#[tokio::test]
async fn a_refresh_racing_a_logout_cannot_bring_the_session_back() {
    let f = fixture();
    let reg = f
        .accounts
        .register("lena", "lena@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    // Hold the refresh just before it writes the session record back.
    let mut held = f.store.gate.arm(Op::Put, "auth_sessions");
    let refresh = f.accounts.refresh(&reg.refresh_token);
    let logout = async {
        held.reached().await;
        f.accounts
            .revoke(reg.user_id, reg.session_id)
            .await
            .expect("logged out");
        held.release();
    };
    let (refreshed, ()) = tokio::join!(refresh, logout);
    // Whatever the refresh answered, the session stays revoked.
    if let Ok(t) = refreshed {
        assert_eq!(f.tokens.verify(&t.access_token), Err(TokenError::Revoked));
        let err = f
            .accounts
            .refresh(&t.refresh_token)
            .await
            .expect_err("revoked");
        assert!(matches!(err, Error::SessionRevoked), "{err}");
    }
    let sessions = f.accounts.sessions(reg.user_id).await.expect("sessions");
    assert!(sessions.iter().all(|s| s.revoked), "{sessions:?}");
}

/// Defect: revocations lived only in memory, so a node that restarted honoured revoked
/// access tokens again.
#[tokio::test]
async fn revocations_outlive_a_restart() {
    let f = fixture();
    let reg = f
        .accounts
        .register("mona", "mona@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    f.accounts
        .revoke(reg.user_id, reg.session_id)
        .await
        .expect("revoked");
    // A node starting with the same signing key knows nothing yet...
    let restarted =
        AccessTokens::from_secret_key(&f.tokens.secret_key_bytes(), "selfie-test", f.tokens.ttl())
            .expect("key");
    assert!(restarted.verify(&reg.access_token).is_ok());
    // ...until it reloads the recent revocations, as `selfie serve` does at start.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let loaded = load_recent_revocations(&f.store, restarted.revoked(), now, f.tokens.ttl())
        .await
        .expect("loaded");
    assert_eq!(loaded, 1);
    assert_eq!(
        restarted.verify(&reg.access_token),
        Err(TokenError::Revoked)
    );
    // Older revocations are out of the window (their tokens have expired anyway).
    let fresh = RevokedSessions::default();
    let later = now + 3 * 3_600_000;
    let loaded = load_recent_revocations(&f.store, &fresh, later, Duration::from_secs(900))
        .await
        .expect("loaded");
    assert_eq!(loaded, 0);
}

/// Defect: a login that checked the password before a reset finished created a session
/// after the reset had signed every session out.
#[tokio::test]
async fn a_login_racing_a_password_reset_is_signed_out() {
    let f = fixture();
    let reg = f
        .accounts
        .register("nina", "nina@example.com", "old password!".into(), "x", IP)
        .await
        .expect("registered");
    f.verify(reg.user_id, "nina@example.com").await;
    f.accounts
        .password_reset_start("nina@example.com", IP)
        .await
        .expect("reset started");
    let code = code_in(&f.outbox.take("nina@example.com").await);
    // Hold the login after its password check, just before its session is written.
    let mut held = f.store.gate.arm(Op::Put, "auth_sessions");
    let login = f.accounts.login("nina", "old password!".into(), "x", IP);
    let reset = async {
        held.reached().await;
        f.accounts
            .password_reset_finish("nina@example.com", &code, "new password!".into(), IP)
            .await
            .expect("reset");
        held.release();
    };
    let (login, ()) = tokio::join!(login, reset);
    assert!(matches!(login, Err(Error::InvalidCredentials)), "{login:?}");
    let sessions = f.accounts.sessions(reg.user_id).await.expect("sessions");
    assert!(sessions.iter().all(|s| s.revoked), "{sessions:?}");
}

/// Defect: two concurrent logins could both spend one TOTP code (the account record
/// was written back unconditionally).
#[tokio::test]
async fn one_totp_code_signs_in_once_even_under_a_race() {
    let f = fixture();
    let reg = f
        .accounts
        .register("omar", "omar@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    let (_, secret) = f
        .accounts
        .totp_enrol(reg.user_id, "long enough pw".into(), "Selfie")
        .await
        .expect("enrol");
    f.accounts
        .totp_confirm(reg.user_id, &totp_now(&secret, -1))
        .await
        .expect("confirmed");
    let code = totp_now(&secret, 0);
    let login = |code: String| {
        let accounts = &f.accounts;
        async move {
            accounts
                .login_with_second_factor(
                    "omar",
                    "long enough pw".into(),
                    Some(&code),
                    None,
                    "x",
                    IP,
                )
                .await
        }
    };
    // Hold the first login just before it records the spent step.
    let mut held = f.store.gate.arm(Op::CompareAndSet, "auth_accounts");
    let first = login(code.clone());
    let second = async {
        held.reached().await;
        let second = login(code.clone()).await;
        held.release();
        second
    };
    let (first, second) = tokio::join!(first, second);
    assert!(second.is_ok(), "{second:?}");
    assert!(
        matches!(first, Err(Error::SecondFactorInvalid)),
        "{first:?}"
    );
}

/// Defect: password re-entry (password change, 2FA changes, deletion) was never
/// throttled, so a stolen session could guess the password online.
#[tokio::test]
async fn reauthentication_is_throttled_per_account() {
    let f = fixture();
    let reg = f
        .accounts
        .register("pia", "pia@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    let change = |current: &str| {
        let accounts = &f.accounts;
        let current = current.to_string();
        async move {
            accounts
                .change_password(
                    reg.user_id,
                    reg.session_id,
                    current,
                    "another password".into(),
                    None,
                )
                .await
        }
    };
    let free = ThrottleConfig::default().free_failures;
    for _ in 0..free {
        assert!(matches!(
            change("wrong guess").await,
            Err(Error::InvalidCredentials)
        ));
    }
    let err = change("long enough pw").await.expect_err("locked");
    assert!(
        matches!(err, Error::Throttled(Throttled::Account(_))),
        "{err}"
    );
    // One lock for the account, whatever checks the credential.
    let err = f
        .accounts
        .login("pia", "long enough pw".into(), "x", IP)
        .await
        .expect_err("locked");
    assert!(
        matches!(err, Error::Throttled(Throttled::Account(_))),
        "{err}"
    );
    let err = f
        .accounts
        .totp_enrol(reg.user_id, "long enough pw".into(), "Selfie")
        .await
        .expect_err("locked");
    assert!(
        matches!(err, Error::Throttled(Throttled::Account(_))),
        "{err}"
    );
}

/// Defect: lockouts were keyed by the typed identifier, so guesses by username and by
/// e-mail address had separate allowances.
#[tokio::test]
async fn one_lockout_per_account_whatever_the_identifier() {
    let f = fixture();
    let reg = f
        .accounts
        .register(
            "quinn",
            "quinn@example.com",
            "long enough pw".into(),
            "x",
            IP,
        )
        .await
        .expect("registered");
    f.verify(reg.user_id, "quinn@example.com").await;
    for i in 0..ThrottleConfig::default().free_failures {
        let who = if i % 2 == 0 {
            "quinn"
        } else {
            "QUINN@example.com"
        };
        let err = f
            .accounts
            .login(who, "wrong guess".into(), "x", ip(i as u8))
            .await
            .expect_err("wrong");
        assert!(matches!(err, Error::InvalidCredentials));
    }
    let err = f
        .accounts
        .login("quinn@example.com", "long enough pw".into(), "x", ip(99))
        .await
        .expect_err("locked");
    assert!(
        matches!(err, Error::Throttled(Throttled::Account(_))),
        "{err}"
    );
}

/// Defect: registration was not throttled (each one costs an Argon2 hash).
#[tokio::test]
async fn registrations_are_throttled_per_address() {
    let f = fixture();
    let burst = ThrottleConfig::default().register_burst;
    for i in 0..burst {
        f.accounts
            .register(
                &format!("rex{i}"),
                &format!("rex{i}@example.com"),
                "long enough pw".into(),
                "x",
                IP,
            )
            .await
            .expect("within the burst");
    }
    let err = f
        .accounts
        .register(
            "rexmore",
            "rexmore@example.com",
            "long enough pw".into(),
            "x",
            IP,
        )
        .await
        .expect_err("throttled");
    assert!(
        matches!(err, Error::Throttled(Throttled::Address(_))),
        "{err}"
    );
    // Refused before anything was claimed: the name is still free.
    f.accounts
        .register(
            "rexmore",
            "rexmore@example.com",
            "long enough pw".into(),
            "x",
            ip(7),
        )
        .await
        .expect("another address");
    // IPv4 through a dual-stack socket is the same address.
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
    let err = f
        .accounts
        .register(
            "rexmapped",
            "rexmapped@example.com",
            "long enough pw".into(),
            "x",
            mapped,
        )
        .await
        .expect_err("throttled");
    assert!(
        matches!(err, Error::Throttled(Throttled::Address(_))),
        "{err}"
    );
}

/// Defect: reset and recovery codes were stored as plain SHA-256, so a copy of the
/// database let anyone test guesses offline. They are keyed by the node's secret: a
/// service with another key cannot use the stored hashes.
#[tokio::test]
async fn reset_codes_are_keyed_hashes() {
    let f = fixture();
    let reg = f
        .accounts
        .register("sam", "sam@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    f.verify(reg.user_id, "sam@example.com").await;
    f.accounts
        .password_reset_start("sam@example.com", IP)
        .await
        .expect("started");
    let code = code_in(&f.outbox.take("sam@example.com").await);
    let other_key = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    let thief = Accounts::new(
        f.store.clone(),
        other_key,
        hasher(),
        Arc::new(SystemClock),
        2,
        0,
        LoginThrottle::default(),
    )
    .expect("accounts");
    let err = thief
        .password_reset_finish("sam@example.com", &code, "stolen password".into(), IP)
        .await
        .expect_err("another key");
    assert!(matches!(err, Error::InvalidCredentials));
    f.accounts
        .password_reset_finish("sam@example.com", &code, "new password!".into(), IP)
        .await
        .expect("the right key");
}

/// Review finding: sessions revoked before revocations had markers (a `revoked: true` in
/// the session record) must stay revoked after the upgrade.
#[tokio::test]
async fn a_session_revoked_before_the_markers_existed_stays_revoked() {
    let f = fixture();
    let reg = f
        .accounts
        .register("tess", "tess@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    // The record as the previous version wrote it for a revoked session.
    let old = serde_json::json!({
        "session_id": reg.session_id,
        "device_name": "x",
        "created_at_ms": 1,
        "last_seen_at_ms": 1,
        "revoked": true,
    });
    let key = |id: u64| selfie_storage::key::KeyBuilder::new().u64(id).build();
    f.store
        .put(
            &selfie_services::tables::auth::SESSIONS,
            &key(reg.user_id),
            &key(reg.session_id),
            old.to_string().as_bytes(),
            None,
        )
        .await
        .expect("old record");
    let err = f
        .accounts
        .refresh(&reg.refresh_token)
        .await
        .expect_err("still revoked");
    assert!(matches!(err, Error::SessionRevoked), "{err}");
    let sessions = f.accounts.sessions(reg.user_id).await.expect("sessions");
    assert!(sessions.iter().all(|s| s.revoked), "{sessions:?}");
}

/// Review finding: a password-only re-authentication (TOTP enrolment) cleared the
/// lockout of an account with a second factor, so a caller with the password could
/// guess codes forever by enrolling between guesses.
#[tokio::test]
async fn a_password_alone_does_not_clear_the_lockout_of_an_account_with_a_second_factor() {
    let f = fixture();
    let reg = f
        .accounts
        .register("uma", "uma@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    let (_, secret) = f
        .accounts
        .totp_enrol(reg.user_id, "long enough pw".into(), "Selfie")
        .await
        .expect("enrol");
    f.accounts
        .totp_confirm(reg.user_id, &totp_now(&secret, 0))
        .await
        .expect("confirmed");
    let free = ThrottleConfig::default().free_failures;
    for _ in 0..free - 1 {
        let err = f
            .accounts
            .totp_disable(reg.user_id, "long enough pw".into(), "000000x")
            .await
            .expect_err("wrong code");
        assert!(matches!(err, Error::SecondFactorInvalid), "{err}");
    }
    // The password is right; the enrolment is refused (2FA is on) and clears nothing.
    let err = f
        .accounts
        .totp_enrol(reg.user_id, "long enough pw".into(), "Selfie")
        .await
        .expect_err("already on");
    assert!(matches!(err, Error::SecondFactorState), "{err}");
    let err = f
        .accounts
        .totp_disable(reg.user_id, "long enough pw".into(), "000000x")
        .await
        .expect_err("wrong code");
    assert!(matches!(err, Error::SecondFactorInvalid), "{err}");
    let err = f
        .accounts
        .totp_disable(reg.user_id, "long enough pw".into(), &totp_now(&secret, 1))
        .await
        .expect_err("locked");
    assert!(
        matches!(err, Error::Throttled(Throttled::Account(_))),
        "{err}"
    );
}

/// Review finding: a verification code could not be sent again (a lost mail left the
/// account without e-mail login or reset for good).
#[tokio::test]
async fn a_verification_code_can_be_sent_again_and_only_the_newest_works() {
    let f = fixture();
    let reg = f
        .accounts
        .register("vera", "vera@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    let lost = code_in(&f.outbox.take("vera@example.com").await);
    f.accounts
        .resend_verification(reg.user_id, IP)
        .await
        .expect("sent again");
    let fresh = code_in(&f.outbox.take("vera@example.com").await);
    assert_ne!(lost, fresh);
    assert!(f.accounts.verify_email(reg.user_id, &lost).await.is_err());
    f.accounts
        .verify_email(reg.user_id, &fresh)
        .await
        .expect("the newest code works");
    let err = f
        .accounts
        .resend_verification(reg.user_id, IP)
        .await
        .expect_err("verified already");
    assert!(matches!(err, Error::Forbidden(_)), "{err}");
    // Mailing codes in bulk is throttled.
    let other = f
        .accounts
        .register("walt", "walt@example.com", "long enough pw".into(), "x", IP)
        .await
        .expect("registered");
    let mut throttled = false;
    for _ in 0..ThrottleConfig::default().free_failures + 1 {
        if let Err(Error::Throttled(_)) = f.accounts.resend_verification(other.user_id, IP).await {
            throttled = true;
        }
    }
    assert!(throttled, "resends are throttled");
}
