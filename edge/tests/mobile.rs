//! The mobile SDK (`selfie-ffi`'s `SelfieClient`, as Kotlin and Swift drive it) through a
//! real edge: expired sessions refreshed once for many callers, refused sessions signed
//! out at start, an offline start, and per-account stores.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use selfie_ffi::{
    AuthTokens, Body, CreatePostRequest, Posts, PostsOp, SelfieClient, SelfieConfig, SelfieError,
    TokenStore,
};

/// An app's token store: what it holds, and how often it was written.
#[derive(Default)]
struct Tokens {
    held: Mutex<Option<AuthTokens>>,
    saves: AtomicUsize,
}

impl TokenStore for Tokens {
    fn load(&self) -> Option<AuthTokens> {
        self.held.lock().expect("tokens").clone()
    }
    fn save(&self, tokens: AuthTokens) {
        self.saves.fetch_add(1, Ordering::SeqCst);
        *self.held.lock().expect("tokens") = Some(tokens);
    }
    fn clear(&self) {
        *self.held.lock().expect("tokens") = None;
    }
}

fn config(node: &support::Node, data_dir: Option<&std::path::Path>) -> SelfieConfig {
    SelfieConfig {
        servers: vec![node.edge.addr.to_string()],
        server_name: None,
        certificate_sha256: Some(node.edge.fingerprint.clone()),
        ca_certificates_pem: None,
        device_id: "test-device".into(),
        app_name: "selfie-tests".into(),
        app_version: "1".into(),
        data_dir: data_dir.map(|d| d.display().to_string()),
        keep_connected_in_background: false,
        connect_timeout_ms: 10_000,
    }
}

fn post(text: &str) -> CreatePostRequest {
    CreatePostRequest {
        text: Some(text.into()),
        media_ids: None,
        audience: selfie_ffi::Audience::Public,
        reply_policy: selfie_ffi::ReplyPolicy::Everyone,
        quote_of: 0,
        language: None,
        sensitive: false,
        idempotency_key: None,
    }
}

/// Access tokens live two seconds: the session expires (the edge closes it), and eight
/// concurrent reads then refresh it once, on the app's behalf, and all succeed.
#[tokio::test]
async fn an_expired_session_is_refreshed_once_for_concurrent_calls() {
    let parts = support::parts();
    let tokens = selfie_services::auth::tokens::AccessTokens::from_secret_key(
        &parts.secret_key,
        "selfie-test",
        Duration::from_secs(2),
    )
    .expect("key");
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(parts.throttle);
    let node = support::start_with(&parts, tokens, throttle);
    let store = Arc::new(Tokens::default());
    let client = SelfieClient::connect(config(&node, None), store.clone())
        .await
        .expect("connected");
    let me = client
        .register(
            "ana".into(),
            "ana@example.com".into(),
            "ana correct horse battery".into(),
        )
        .await
        .expect("registered");
    assert_eq!(store.saves.load(Ordering::SeqCst), 1);
    let first = store.load().and_then(|t| t.access_token);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let reads = (0..8).map(|_| client.profile(me.user_id));
    for read in futures::future::join_all(reads).await {
        let profile = read.expect("read after the refresh");
        assert_eq!(profile.user.map(|u| u.user_id), Some(me.user_id));
    }
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        2,
        "one refresh for every caller"
    );
    assert_ne!(store.load().and_then(|t| t.access_token), first);
    assert_eq!(client.user_id(), Some(me.user_id));
}

/// A saved session the server refuses (a forged token) signs the device out at start
/// instead of failing every start; the app can then sign in again.
#[tokio::test]
async fn a_refused_saved_session_signs_the_device_out_at_start() {
    let node = support::start();
    let store = Arc::new(Tokens::default());
    *store.held.lock().expect("tokens") = Some(AuthTokens {
        user_id: 42,
        session_id: 1,
        access_token: Some("v4.public.forged".into()),
        access_expires_at_ms: 0,
        refresh_token: Some("forged".into()),
        refresh_expires_at_ms: 0,
    });
    let client = SelfieClient::connect(config(&node, None), store.clone())
        .await
        .expect("started signed out");
    assert_eq!(client.user_id(), None);
    assert!(store.load().is_none(), "the app's store was cleared");
    client
        .register(
            "ben".into(),
            "ben@example.com".into(),
            "ben correct horse battery".into(),
        )
        .await
        .expect("signed up afresh");
    assert!(client.user_id().is_some());
}

/// Without a network the client still starts, signed in from the app's store, with its
/// cache and outbox; what it queued goes out once the edge is reachable.
#[tokio::test]
async fn an_offline_start_works_from_the_store_and_sends_later() {
    let node = support::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Tokens::default());
    let online = SelfieClient::connect(config(&node, Some(dir.path())), store.clone())
        .await
        .expect("connected");
    let me = online
        .register(
            "cam".into(),
            "cam@example.com".into(),
            "cam correct horse battery".into(),
        )
        .await
        .expect("registered");
    online.profile(me.user_id).await.expect("profile");
    online.disconnect().await;
    drop(online);

    // Nothing answers on this port: the start gives up quickly and works offline.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut offline = config(&node, Some(dir.path()));
    offline.servers = vec![silent.local_addr().expect("addr").to_string()];
    offline.connect_timeout_ms = 300;
    let client = SelfieClient::connect(offline, store.clone())
        .await
        .expect("started offline");
    assert_eq!(client.user_id(), Some(me.user_id));
    let cached = client.cached_profile(me.user_id).expect("cache");
    assert_eq!(
        cached.and_then(|p| p.user).map(|u| u.user_id),
        Some(me.user_id)
    );
    client
        .queue(Body::Posts {
            value: Posts {
                op: Some(PostsOp::CreatePostRequest {
                    value: post("written offline"),
                }),
            },
        })
        .expect("queued");
    assert_eq!(client.outbox_len().expect("outbox"), 1);
    drop(client);

    // A server name that does not resolve (no DNS yet): the start does not wait on it.
    let mut unnamed = config(&node, Some(dir.path()));
    unnamed.servers = vec!["selfie-edge.invalid:4460".into()];
    unnamed.connect_timeout_ms = 300;
    let named = SelfieClient::connect(unnamed, store.clone())
        .await
        .expect("started offline without DNS");
    assert_eq!(named.outbox_len().expect("outbox"), 1);
    drop(named);

    let back = SelfieClient::connect(config(&node, Some(dir.path())), store)
        .await
        .expect("online again");
    let sent = back.flush_outbox().await.expect("flushed");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].refused.is_none());
    assert_eq!(back.outbox_len().expect("outbox"), 0);
}

/// One account's queued writes and cache are not another's: after a logout and a
/// different login on the same device, nothing of the first is sent or shown; it is
/// all there again when the first account signs back in.
#[tokio::test]
async fn each_account_has_its_own_outbox_and_cache() {
    let node = support::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let client =
        SelfieClient::connect(config(&node, Some(dir.path())), Arc::new(Tokens::default()))
            .await
            .expect("connected");
    let dee = client
        .register(
            "dee".into(),
            "dee@example.com".into(),
            "dee correct horse battery".into(),
        )
        .await
        .expect("registered");
    client.profile(dee.user_id).await.expect("profile");
    client
        .queue(Body::Posts {
            value: Posts {
                op: Some(PostsOp::CreatePostRequest {
                    value: post("dee's draft"),
                }),
            },
        })
        .expect("queued");
    client.logout().await.expect("logged out");
    assert!(matches!(
        client.outbox_len(),
        Err(SelfieError::Config { .. })
    ));
    let eve = client
        .register(
            "eve".into(),
            "eve@example.com".into(),
            "eve correct horse battery".into(),
        )
        .await
        .expect("registered");
    assert_eq!(client.outbox_len().expect("eve's outbox"), 0);
    assert!(
        client
            .cached_profile(dee.user_id)
            .expect("eve's cache")
            .is_none()
    );
    assert!(client.flush_outbox().await.expect("flushed").is_empty());
    client.logout().await.expect("eve logged out");
    assert_ne!(dee.user_id, eve.user_id);
    client
        .login("dee".into(), "dee correct horse battery".into(), None)
        .await
        .expect("dee again");
    assert_eq!(client.outbox_len().expect("dee's outbox"), 1);
    let sent = client.flush_outbox().await.expect("flushed");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].refused.is_none());
}

/// A session revoked from another device is closed by the edge: the next call fails,
/// the device is signed out (the app's store cleared), and it can sign in again on the
/// same client.
#[tokio::test]
async fn a_session_revoked_elsewhere_signs_the_device_out() {
    let node = support::start();
    let store = Arc::new(Tokens::default());
    let phone = SelfieClient::connect(config(&node, None), store.clone())
        .await
        .expect("connected");
    let me = phone
        .register(
            "fay".into(),
            "fay@example.com".into(),
            "fay correct horse battery".into(),
        )
        .await
        .expect("registered");
    let session = store.load().expect("tokens").session_id;
    // The laptop signs in and revokes the phone's session.
    let anon = selfie_client::Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let laptop = anon
        .accounts()
        .login("fay", "fay correct horse battery", None)
        .await
        .expect("laptop");
    let laptop = selfie_client::Client::connect(support::config(&node, laptop.tokens.access_token))
        .await
        .expect("laptop session");
    laptop
        .accounts()
        .revoke_session(session)
        .await
        .expect("revoked");
    let mut refused = None;
    for _ in 0..50 {
        match phone.profile(me.user_id).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(refused.is_some(), "the revoked session kept working");
    assert_eq!(phone.user_id(), None, "signed out");
    assert!(store.load().is_none(), "the app's store was cleared");
    let again = phone
        .login("fay".into(), "fay correct horse battery".into(), None)
        .await
        .expect("signed in again on the same client");
    assert_eq!(again.user_id, me.user_id);
    assert!(phone.profile(me.user_id).await.is_ok());
}
