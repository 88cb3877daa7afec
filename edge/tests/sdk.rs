//! The SDK's typed API (accounts, profiles, graph, posts, feed), its offline outbox and
//! its reconnecting client, through a real edge.

mod support;

use selfie_client::offline::OfflineStore;
use selfie_client::{Backoff, Client, ClientError, ReconnectingClient};
use selfie_protocol::feed::FeedKind;
use selfie_protocol::graph::FollowState;
use selfie_protocol::posts::{CreatePostRequestT, PostsOpT, PostsT};
use selfie_protocol::{BodyT, ErrorCode, common};
use support::start;

fn public_post(text: &str) -> CreatePostRequestT {
    let mut r = CreatePostRequestT::default();
    r.text = Some(text.into());
    r.audience = common::Audience::Public;
    r
}

fn post_body(text: &str) -> BodyT {
    let mut p = PostsT::default();
    p.op = PostsOpT::CreatePostRequest(Box::new(public_post(text)));
    BodyT::Posts(Box::new(p))
}

#[tokio::test]
async fn the_typed_api_covers_accounts_profiles_the_graph_posts_and_the_feed() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana_in = anon
        .accounts()
        .register("ana", "ana@example.com", "ana correct horse battery")
        .await
        .expect("registered");
    let ben_in = anon
        .accounts()
        .register("ben", "ben@example.com", "ben correct horse battery")
        .await
        .expect("registered");
    assert_eq!(ana_in.user.username.as_deref(), Some("ana"));
    let ana = Client::connect(support::config(&node, ana_in.tokens.access_token.clone()))
        .await
        .expect("ana's session");
    let ben = Client::connect(support::config(&node, ben_in.tokens.access_token.clone()))
        .await
        .expect("ben's session");

    // Graph: Ben follows Ana, and shows up among her followers.
    let state = ben
        .graph()
        .follow(ana_in.user.user_id)
        .await
        .expect("followed");
    assert_eq!(state, FollowState::Following);
    let followers = ana
        .graph()
        .followers(ana_in.user.user_id, 10, None)
        .await
        .expect("followers");
    let ids: Vec<u64> = followers
        .users
        .unwrap_or_default()
        .iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(ids, vec![ben_in.user.user_id]);

    // Posts and the feed: Ana posts, Ben reads it at the top of his home feed.
    let post = ana
        .posts()
        .create(public_post("first light"))
        .await
        .expect("posted");
    assert_eq!(post.text.as_deref(), Some("first light"));
    assert_eq!(
        ben.posts().get(post.post_id).await.expect("read").post_id,
        post.post_id
    );
    let page = ben.feed().home(10, None).await.expect("home feed");
    let first = page
        .items
        .unwrap_or_default()
        .into_iter()
        .next()
        .and_then(|i| i.post)
        .map(|p| p.post_id);
    assert_eq!(first, Some(post.post_id));
    let mine = ana
        .posts()
        .by_user(ana_in.user.user_id, 10, None)
        .await
        .expect("ana's posts");
    assert_eq!(mine.posts.unwrap_or_default().len(), 1);

    // Profiles: with the relationship as the caller sees it.
    let profile = ben
        .users()
        .profile(ana_in.user.user_id)
        .await
        .expect("profile");
    assert_eq!(
        profile.user.as_ref().and_then(|u| u.username.as_deref()),
        Some("ana")
    );
    assert!(profile.relationship.expect("relationship").following);
    let by_name = ben.users().profile_by_name("ana").await.expect("by name");
    assert_eq!(by_name.user.map(|u| u.user_id), Some(ana_in.user.user_id));

    // Errors are typed with the protocol's code.
    match anon.accounts().login("ana", "wrong password", None).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials)),
        Ok(_) => panic!("a wrong password signed in"),
    }
    match ben.posts().delete(post.post_id).await {
        Err(e) => assert!(
            matches!(e.code(), Some(ErrorCode::Forbidden | ErrorCode::NotFound)),
            "deleting someone else's post: {e}"
        ),
        Ok(()) => panic!("ben deleted ana's post"),
    }

    // Two-factor login: TotpRequired without a code, signed in with one.
    let enrol = ana
        .accounts()
        .totp_enroll("ana correct horse battery")
        .await
        .expect("enrolment");
    let secret = enrol.secret_base32.expect("secret");
    let recovery = ana
        .accounts()
        .totp_confirm(&support::totp_code(&secret, 0))
        .await
        .expect("confirmed");
    assert!(!recovery.is_empty());
    match anon
        .accounts()
        .login("ana", "ana correct horse battery", None)
        .await
    {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::SecondFactorRequired)),
        Ok(_) => panic!("signed in without the second factor"),
    }
    // The code that confirmed enrolment is spent: the next step's is accepted.
    let again = anon
        .accounts()
        .login(
            "ana",
            "ana correct horse battery",
            Some(&support::totp_code(&secret, 1)),
        )
        .await
        .expect("signed in with the second factor");
    assert_eq!(again.user.user_id, ana_in.user.user_id);
    let sessions = ana.accounts().sessions().await.expect("sessions");
    assert!(
        sessions.len() >= 2,
        "registration and login sessions: {sessions:?}"
    );
    let refreshed = anon
        .accounts()
        .refresh(
            again
                .tokens
                .refresh_token
                .as_deref()
                .expect("refresh token"),
        )
        .await
        .expect("refreshed");
    assert_ne!(refreshed.access_token, again.tokens.access_token);
    ben.graph()
        .unfollow(ana_in.user.user_id)
        .await
        .expect("unfollowed");
}

/// Writes queued offline survive an app restart and are each created once, even the
/// one whose answer was lost after the server had made it.
#[tokio::test]
async fn the_outbox_survives_a_restart_and_delivers_each_write_once() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = support::sign_up(&node, &anon, "ana").await;
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = OfflineStore::open(dir.path()).expect("store");
        for i in 0..3 {
            store
                .queue(post_body(&format!("offline {i}")))
                .expect("queued");
        }
    } // the app is killed
    let store = OfflineStore::open(dir.path()).expect("reopened");
    let queued = store.outbox().expect("outbox");
    assert_eq!(queued.len(), 3);
    // The first write reached the server once already, but its answer was lost before
    // it left the outbox.
    let first = ana
        .client
        .call(queued[0].1.clone())
        .await
        .expect("sent once");
    let BodyT::Posts(p) = first else {
        panic!("not a posts answer")
    };
    let PostsOpT::PostResponse(r) = p.op else {
        panic!("not a post")
    };
    let first_id = r.post.expect("post").post_id;

    let flushed = store.flush(&ana.client).await.expect("flushed");
    assert_eq!(flushed.len(), 3);
    assert!(flushed.iter().all(|f| f.answer.is_ok()), "{flushed:?}");
    assert!(store.outbox().expect("outbox").is_empty());
    let posts = ana
        .client
        .posts()
        .by_user(ana.id, 10, None)
        .await
        .expect("posts")
        .posts
        .unwrap_or_default();
    let mut texts: Vec<String> = posts.iter().filter_map(|p| p.text.clone()).collect();
    texts.sort();
    assert_eq!(
        texts,
        vec!["offline 0", "offline 1", "offline 2"],
        "each once"
    );
    assert!(posts.iter().any(|p| p.post_id == first_id));
    // A second flush sends nothing.
    assert!(store.flush(&ana.client).await.expect("flushed").is_empty());
}

/// A write the server refuses for good leaves the outbox with its refusal; a lost
/// connection keeps it for the next flush.
#[tokio::test]
async fn a_refused_write_leaves_the_outbox_and_a_lost_connection_keeps_it() {
    let node = start();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = support::sign_up(&node, &anon, "ana").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = OfflineStore::open(dir.path()).expect("store");
    let mut delete = selfie_protocol::posts::DeletePostRequestT::default();
    delete.post_id = 999_999;
    let mut p = PostsT::default();
    p.op = PostsOpT::DeletePostRequest(Box::new(delete));
    store.queue(BodyT::Posts(Box::new(p))).expect("queued");
    store.queue(post_body("after the refusal")).expect("queued");
    let gone = Client::connect(support::config(&node, Some(ana.token.clone())))
        .await
        .expect("session");
    gone.close();
    match store.flush(&gone).await {
        Err(ClientError::Connection(_)) => {}
        other => panic!("a closed connection flushed: {other:?}"),
    }
    assert_eq!(store.outbox().expect("outbox").len(), 2, "nothing lost");
    let flushed = store.flush(&ana.client).await.expect("flushed");
    assert_eq!(flushed.len(), 2);
    assert!(
        flushed[0].answer.is_err(),
        "the delete of a missing post is refused"
    );
    assert!(flushed[1].answer.is_ok());
    assert!(store.outbox().expect("outbox").is_empty());
}

/// The reconnecting client signs in after a login (a new session with the token), keeps
/// it across a socket rebind, and reads the home feed through it.
#[tokio::test]
async fn a_reconnecting_client_signs_in_after_login_and_keeps_its_session_across_a_rebind() {
    let node = start();
    let rc = ReconnectingClient::connect(
        support::config(&node, None),
        vec![node.edge.addr],
        Backoff::default(),
    )
    .await
    .expect("connected");
    let mut r = selfie_protocol::auth::RegisterRequestT::default();
    r.username = Some("ana".into());
    r.email = Some("ana@example.com".into());
    r.password = Some("ana correct horse battery".into());
    let mut a = selfie_protocol::auth::AuthT::default();
    a.op = selfie_protocol::auth::AuthOpT::RegisterRequest(Box::new(r));
    let BodyT::Auth(a) = rc.call(BodyT::Auth(Box::new(a))).await.expect("registered") else {
        panic!("not an auth answer")
    };
    let selfie_protocol::auth::AuthOpT::RegisterResponse(r) = a.op else {
        panic!("not a register response")
    };
    let tokens = r.tokens.expect("tokens");
    rc.set_access_token(tokens.access_token.clone()).await;
    let client = rc.client().await.expect("signed-in session");
    assert_eq!(client.welcome().user_id, tokens.user_id);
    let before = rc.local_port();
    rc.rebind(std::net::UdpSocket::bind("127.0.0.1:0").expect("socket"))
        .expect("rebound");
    assert_ne!(rc.local_port(), before);
    let page = rc
        .client()
        .await
        .expect("same session")
        .feed()
        .page(FeedKind::Following, 0, 5, None)
        .await
        .expect("home feed after the rebind");
    assert!(page.items.unwrap_or_default().is_empty());
    assert_eq!(
        rc.reconnects(),
        1,
        "one reconnect: the login; none for the rebind"
    );

    // The app goes to the background and back: the first read reconnects and travels
    // with `Hello` in 0-RTT early data (the session ticket of the earlier connection).
    rc.disconnect().await;
    assert!(rc.current().await.is_none());
    let resumed = rc.zero_rtt_resumes();
    let mut get = selfie_protocol::users::GetProfileRequestT::default();
    get.user_id = tokens.user_id;
    let mut u = selfie_protocol::users::UsersT::default();
    u.op = selfie_protocol::users::UsersOpT::GetProfileRequest(Box::new(get));
    let BodyT::Users(u) = rc.call(BodyT::Users(Box::new(u))).await.expect("profile") else {
        panic!("not a users answer")
    };
    assert!(matches!(
        u.op,
        selfie_protocol::users::UsersOpT::GetProfileResponse(_)
    ));
    assert_eq!(rc.reconnects(), 2);
    assert_eq!(
        rc.zero_rtt_resumes(),
        resumed + 1,
        "resumed with early data"
    );
    assert!(rc.current().await.expect("connected").used_0rtt());
    // A write after another disconnect: `Hello` may go early, the write itself waits
    // for the handshake (a replayed flight must not post twice), and it is answered.
    rc.disconnect().await;
    let BodyT::Posts(_) = rc
        .call(post_body("after the handshake"))
        .await
        .expect("posted")
    else {
        panic!("not a posts answer")
    };
}
