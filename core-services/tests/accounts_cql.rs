//! The storage-sensitive account flows on the CQL backend (a real Cassandra started by
//! `scripts/test`, address in `SELFIE_CQL_NODES`): claims under a race (lightweight
//! transactions), e-mail verification, single-use refresh tokens, durable revocations,
//! session scans, deletion.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use argon2::Params;
use selfie_services::Error;
use selfie_services::auth::accounts::{Accounts, load_recent_revocations};
use selfie_services::auth::password::PasswordHasher;
use selfie_services::auth::throttle::LoginThrottle;
use selfie_services::auth::tokens::{AccessTokens, TokenError};
use selfie_services::schema;
use selfie_storage::SystemClock;
use selfie_storage::cql::{CqlConfig, CqlStore};

use support::{Outbox, code_in};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

async fn accounts() -> (Accounts<CqlStore>, AccessTokens, Arc<Outbox>, CqlStore) {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let ks = format!("accounts_{:08x}", rand::random::<u32>());
    let config = CqlConfig::from_url(&format!("cql://{nodes}/{ks}")).expect("url");
    let store = CqlStore::open(&config, schema::MIGRATIONS, &schema::tables())
        .await
        .expect("migrated store")
        .drop_keyspace_when_dropped(&config);
    let tokens = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    let hasher = PasswordHasher::with_params(
        Params::new(64, 1, 1, None).expect("params"),
        4,
        Duration::from_secs(5),
    )
    .expect("hasher");
    let outbox = Arc::new(Outbox::default());
    let accounts = Accounts::new(
        store.clone(),
        tokens.clone(),
        hasher,
        Arc::new(SystemClock),
        1,
        0,
        LoginThrottle::default(),
    )
    .expect("accounts")
    .with_mailer(outbox.clone());
    (accounts, tokens, outbox, store)
}

#[tokio::test]
async fn account_flows_hold_on_the_cql_backend() {
    let (accounts, tokens, outbox, store) = accounts().await;
    // Eight concurrent registrations of one name: exactly one owner (LWT).
    let a = &accounts;
    let attempts = futures::future::join_all((0..8u8).map(|i| async move {
        let email = format!("olga{i}@example.com");
        let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, i));
        a.register("olga", &email, "long enough pw".into(), "phone", ip)
            .await
    }))
    .await;
    let owners: Vec<_> = attempts.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(owners.len(), 1, "exactly one owner of the name");
    let reg = owners[0].clone();
    let email = {
        let i = attempts.iter().position(|r| r.is_ok()).expect("winner");
        format!("olga{i}@example.com")
    };
    let code = code_in(&outbox.take(&email).await);
    accounts
        .verify_email(reg.user_id, &code)
        .await
        .expect("verified");
    let err = accounts.verify_email(reg.user_id, &code).await;
    assert!(err.is_err(), "a code works once");
    let login = accounts
        .login(&email.to_uppercase(), "long enough pw".into(), "laptop", IP)
        .await
        .expect("login");
    assert_eq!(login.user_id, reg.user_id);
    assert_eq!(
        accounts
            .sessions(reg.user_id)
            .await
            .expect("sessions")
            .len(),
        2
    );
    // Refresh tokens are single use; reuse revokes the session.
    let next = accounts
        .refresh(&login.refresh_token)
        .await
        .expect("rotated");
    let err = accounts
        .refresh(&login.refresh_token)
        .await
        .expect_err("reused");
    assert!(matches!(err, Error::TokenReused));
    assert_eq!(tokens.verify(&next.access_token), Err(TokenError::Revoked));
    // The revocation is durable: a node starting with the same key reloads it.
    let restarted =
        AccessTokens::from_secret_key(&tokens.secret_key_bytes(), "selfie-test", tokens.ttl())
            .expect("key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let loaded = load_recent_revocations(&store, restarted.revoked(), now, tokens.ttl())
        .await
        .expect("reloaded");
    assert_eq!(loaded, 1);
    assert_eq!(
        restarted.verify(&next.access_token),
        Err(TokenError::Revoked)
    );
    // Deletion frees the e-mail and keeps the name.
    accounts
        .delete_account(reg.user_id, "long enough pw".into(), None)
        .await
        .expect("deleted");
    let olga2 = accounts
        .register("olga2", &email, "long enough pw".into(), "x", IP)
        .await
        .expect("e-mail free again");
    let code = code_in(&outbox.take(&email).await);
    accounts
        .verify_email(olga2.user_id, &code)
        .await
        .expect("the address is claimed anew");
    let err = accounts
        .register(
            "olga",
            "olga-new@example.com",
            "long enough pw".into(),
            "x",
            IP,
        )
        .await
        .expect_err("reserved");
    assert!(matches!(err, Error::Taken { field: "username" }));
}
