//! Shared by the end-to-end tests: a real edge with every social service over a fresh
//! store (embedded, or a keyspace of the real CQL server at `SELFIE_CQL_NODES`, started
//! by `scripts/test`), and requests written with the protocol's object API.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use selfie_client::{Client, ClientConfig, ClientError, Trust};
use selfie_edge::auth::TokenAuthenticator;
use selfie_edge::{Authenticator, Call, Config, Edge, Plane, Principal, Service};
use selfie_protocol::ErrorCode;
use selfie_protocol::auth::{self as pa, AuthOpT, AuthT};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::graph::{GraphOpT, GraphT};
use selfie_protocol::posts::{PostsOpT, PostsT};
use selfie_protocol::users::{UsersOpT, UsersT};
use selfie_protocol::{BodyT, EnvelopeT};
use selfie_services::auth::password::PasswordHasher;
use selfie_services::auth::throttle::{LoginThrottle, ThrottleConfig};
use selfie_services::auth::tokens::AccessTokens;
use selfie_services::plane::{Delivery, Subscription, Topic};
use selfie_storage::any::AnyStore;
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{Clock, SystemClock};

/// A running edge, its service plane and the directory of its store.
pub struct Node {
    pub edge: Edge,
    pub plane: Arc<Plane>,
    _dir: Arc<tempfile::TempDir>,
}

/// What a node is built from; nodes built from clones of one `Parts` share the store and
/// the signing key, like the nodes of a fleet.
#[derive(Clone)]
pub struct Parts {
    pub store: AnyStore,
    /// The services' clock (a [`ManualClock`] where a test moves time on; the embedded
    /// store's TTLs follow it too).
    pub clock: Arc<dyn Clock>,
    /// The signing key every node loads (each node has its own revocation set).
    pub secret_key: Vec<u8>,
    pub throttle: ThrottleConfig,
    /// Sends password-reset mail, when set.
    pub mailer: Option<Arc<dyn selfie_services::auth::mail::Mailer>>,
    /// Feed settings of the nodes.
    pub feed: selfie_services::feed::FeedConfig,
    /// Media limits of the nodes.
    pub media: selfie_services::media::MediaConfig,
    /// HTTPS (`[web]`) of the nodes: on a free loopback port.
    pub web: selfie_edge::config::WebConfig,
    /// The nodes' `limits.idle_timeout_ms` (also how long an unread answer is kept).
    pub idle_timeout_ms: u64,
    /// Chat's sync limits and send rate (the defaults).
    pub chat: selfie_services::chat::SyncLimits,
    dir: Arc<tempfile::TempDir>,
}

/// A fresh store and signing key; the default login limits, with a short lockout cap
/// so that a test can wait it out, and room for the many registrations a suite makes
/// from 127.0.0.1 (the registration throttle is tested in core-services).
pub fn parts() -> Parts {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = embedded(&dir, Arc::new(SystemClock));
    parts_over(AnyStore::Embedded(store), Arc::new(SystemClock), dir)
}

/// A storage backend of the tests.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// fjall in a temporary directory.
    Embedded,
    /// A fresh keyspace on the real CQL server at `SELFIE_CQL_NODES` (dropped with the
    /// store's last clone).
    Cql,
}

/// [`parts`] over `backend`, with `clock` for the services (and the embedded store).
pub async fn parts_on(backend: Backend, clock: Arc<dyn Clock>) -> Parts {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = match backend {
        Backend::Embedded => AnyStore::Embedded(embedded(&dir, clock.clone())),
        Backend::Cql => AnyStore::Cql(cql().await),
    };
    parts_over(store, clock, dir)
}

fn embedded(dir: &tempfile::TempDir, clock: Arc<dyn Clock>) -> EmbeddedStore {
    EmbeddedStore::open(
        dir.path().join("storage"),
        &selfie_services::schema::tables(),
        clock,
    )
    .expect("store")
}

/// A store on a fresh keyspace of the CQL server at `SELFIE_CQL_NODES`.
pub async fn cql() -> selfie_storage::cql::CqlStore {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let config = selfie_storage::cql::CqlConfig::from_url(&format!(
        "cql://{nodes}/edge_{:08x}",
        rand::random::<u32>()
    ))
    .expect("url");
    selfie_storage::cql::CqlStore::open(
        &config,
        selfie_services::schema::MIGRATIONS,
        &selfie_services::schema::tables(),
    )
    .await
    .expect("store")
    .drop_keyspace_when_dropped(&config)
}

/// A clock that only moves when told, starting at the real time (so that access tokens,
/// which keep the system clock, stay valid).
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at the current time.
    pub fn new() -> Arc<Self> {
        Arc::new(Self(std::sync::atomic::AtomicU64::new(
            SystemClock.now_ms(),
        )))
    }

    /// Moves the clock on by `d`.
    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn parts_over(store: AnyStore, clock: Arc<dyn Clock>, dir: tempfile::TempDir) -> Parts {
    let tokens = AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key");
    Parts {
        store,
        clock,
        secret_key: tokens.secret_key_bytes(),
        throttle: ThrottleConfig {
            max_lockout: Duration::from_secs(2),
            register_burst: 10_000,
            register_per_hour: 1_000_000,
            ..ThrottleConfig::default()
        },
        mailer: None,
        feed: Default::default(),
        media: Default::default(),
        web: selfie_edge::config::WebConfig {
            listen: Some("127.0.0.1:0".parse().expect("addr")),
            ..Default::default()
        },
        idle_timeout_ms: selfie_edge::config::LimitsConfig::default().idle_timeout_ms,
        chat: Default::default(),
        dir: Arc::new(dir),
    }
}

/// The access tokens of one node built from `parts`.
pub fn tokens(parts: &Parts) -> AccessTokens {
    AccessTokens::from_secret_key(&parts.secret_key, "selfie-test", Duration::from_secs(900))
        .expect("key")
}

/// Starts an edge (2 shards) with accounts, users, graph and posts over a fresh store.
pub fn start() -> Node {
    start_parts(&parts())
}

/// Starts an edge (2 shards) over `parts`, with its own token keys and login throttle.
pub fn start_parts(parts: &Parts) -> Node {
    start_with(parts, tokens(parts), LoginThrottle::new(parts.throttle))
}

/// Shards of a test node.
pub const SHARDS: usize = 2;

/// A plane for a test node.
pub fn plane() -> Arc<Plane> {
    Plane::new(SHARDS, selfie_services::plane::DeliveryConfig::default())
}

/// Starts an edge (2 shards) over `parts`, signing with `tokens` and throttling logins
/// with `throttle` (shared by its shards).
pub fn start_with(parts: &Parts, tokens: AccessTokens, throttle: LoginThrottle) -> Node {
    start_in_fleet(parts, tokens, throttle, None, plane())
}

/// A node of a fleet: its edge and its Redis bridge (revocations, login throttle, graph
/// locks and the delivery plane's bus).
pub struct FleetNode {
    pub node: Node,
    pub fleet: selfie_edge::fleet::Fleet,
}

/// Starts a node over `parts` that joins the fleet on the Redis server at `redis_url`.
pub fn fleet_node(parts: &Parts, redis_url: &str) -> FleetNode {
    let tokens = tokens(parts);
    let plane = plane();
    let fleet = selfie_edge::fleet::Fleet::start(
        redis_url,
        "test:",
        tokens.revoked().clone(),
        parts.throttle,
        plane.clone(),
    )
    .expect("fleet");
    let throttle = LoginThrottle::new(parts.throttle).with_fleet(fleet.login_throttle());
    FleetNode {
        node: start_in_fleet(parts, tokens, throttle, Some(fleet.graph_locks()), plane),
        fleet,
    }
}

/// [`start_with`] on `plane` (connected to a fleet's bus, or not), taking the fleet's graph
/// locks when given.
pub fn start_in_fleet(
    parts: &Parts,
    tokens: AccessTokens,
    throttle: LoginThrottle,
    graph_locks: Option<Arc<dyn selfie_services::graph::FleetLocks>>,
    plane: Arc<Plane>,
) -> Node {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shards = SHARDS;
    config.server.pin_cores = false;
    config.server.data_dir = parts
        .dir
        .path()
        .join(format!("node-{:08x}", rand::random::<u32>()));
    config.server.drain_deadline_ms = 1_000;
    // No busy polling: these nodes share two cores with their clients and each other
    // (`edge.rs` keeps the default and tests the polling itself).
    config.server.busy_poll_us = 0;
    // Every test client connects from 127.0.0.1 (the delivery test opens a thousand).
    config.limits.max_connections_per_address = 4_096;
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    // HTTPS for signed media URLs.
    config.web = parts.web.clone();
    config.limits.idle_timeout_ms = parts.idle_timeout_ms;
    let store = parts.store.clone();
    let mailer = parts.mailer.clone();
    // Distinct node numbers keep ids unique across the nodes of one store.
    static NODES: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let node = NODES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250 + 1;
    // Cheap Argon2 parameters: these tests check the flows, not hashing cost.
    let hasher = PasswordHasher::with_params(
        argon2::Params::new(64, 1, 1, None).expect("params"),
        2,
        Duration::from_secs(5),
    )
    .expect("hasher");
    let auth = Arc::new(TokenAuthenticator::new(tokens.clone()));
    let media = selfie_services::media::MediaNode::local(
        &config.server.data_dir.join("media"),
        parts.media,
    )
    .expect("media");
    let deps = selfie_services::Deps {
        store,
        clock: parts.clock.clone(),
        node,
        tokens,
        hasher,
        throttle,
        mailer,
        graph_locks,
        access_ttl: Duration::from_secs(900),
        plane: plane.clone(),
        chat: parts.chat,
        feed: parts.feed,
        media: Some(media.clone()),
    };
    let factory: selfie_edge::ServiceFactory =
        Arc::new(move |shard| selfie_services::registry(shard, &deps).expect("services"));
    let edge = Edge::start(config, plane.clone(), factory, auth).expect("edge");
    edge.serve_media(&media, &parts.secret_key)
        .expect("an HTTPS listener");
    Node {
        edge,
        plane,
        _dir: parts.dir.clone(),
    }
}

/// A client configuration for `node`, signed in with `token` when given.
pub fn config(node: &Node, token: Option<String>) -> ClientConfig {
    let mut c = ClientConfig::new(
        node.edge.addr,
        Trust::pinned_hex(&node.edge.fingerprint).expect("pin"),
    );
    c.access_token = token;
    c
}

/// Sends `body` and returns the answer's body.
pub async fn call(c: &Client, body: BodyT) -> Result<BodyT, ClientError> {
    let f = c
        .request(|b, id| {
            let mut e = EnvelopeT::default();
            e.id = id;
            e.body = body;
            e.pack(b)
        })
        .await?;
    Ok(f.envelope().unpack().body)
}

/// An auth operation.
pub fn auth(op: AuthOpT) -> BodyT {
    let mut t = AuthT::default();
    t.op = op;
    BodyT::Auth(Box::new(t))
}

/// A users operation.
pub fn users(op: UsersOpT) -> BodyT {
    let mut t = UsersT::default();
    t.op = op;
    BodyT::Users(Box::new(t))
}

/// A graph operation.
pub fn graph(op: GraphOpT) -> BodyT {
    let mut t = GraphT::default();
    t.op = op;
    BodyT::Graph(Box::new(t))
}

/// A chat operation.
pub fn chat(op: selfie_protocol::chat::ChatOpT) -> BodyT {
    let mut t = selfie_protocol::chat::ChatT::default();
    t.op = op;
    BodyT::Chat(Box::new(t))
}

/// A posts operation.
pub fn posts(op: PostsOpT) -> BodyT {
    let mut t = PostsT::default();
    t.op = op;
    BodyT::Posts(Box::new(t))
}

/// A signed-in user: id, password, access token and a session.
pub struct User {
    pub id: u64,
    pub name: String,
    pub password: String,
    pub token: String,
    pub client: Client,
}

/// Registers `name` through `anon` and opens a session with its access token.
pub async fn sign_up(node: &Node, anon: &Client, name: &str) -> User {
    let password = format!("{name} correct horse battery");
    let t = register(anon, name).await;
    let token = t.access_token.expect("access token");
    let client = Client::connect(config(node, Some(token.clone())))
        .await
        .expect("welcome");
    User {
        id: t.user_id,
        name: name.to_string(),
        password,
        token,
        client,
    }
}

/// Makes `user`'s account private (new followers need approval).
pub async fn make_private(user: &User) {
    let mut r = selfie_protocol::users::UpdateProfileRequestT::default();
    r.private = Some(true);
    user.client
        .users()
        .update_profile(r)
        .await
        .expect("private");
}

/// Publishes a public text post as `c`'s user; returns its id.
pub async fn create_post(c: &Client, text: &str) -> u64 {
    use selfie_protocol::posts::{CreatePostRequestT, PostsOpT};
    let mut r = CreatePostRequestT::default();
    r.text = Some(text.to_string());
    r.audience = selfie_protocol::common::Audience::Public;
    match call(c, posts(PostsOpT::CreatePostRequest(Box::new(r)))).await {
        Ok(BodyT::Posts(p)) => match p.op {
            PostsOpT::PostResponse(r) => r.post.expect("post").post_id,
            other => panic!("not a post: {other:?}"),
        },
        other => panic!("not a posts answer: {other:?}"),
    }
}

/// Tokens `user-N` sign in as user N (for edges without the accounts service).
pub struct TokenAuth;

impl Authenticator for TokenAuth {
    fn authenticate(&self, token: &str) -> Result<Principal, ErrorCode> {
        let id = token
            .strip_prefix("user-")
            .and_then(|n| n.parse().ok())
            .ok_or(ErrorCode::TokenInvalid)?;
        Ok(Principal {
            user_id: id,
            session_id: id,
            roles: vec![],
        })
    }
}

/// A `Notifications` service whose subscription to target T joins topic
/// (Notifications, T) and nothing else: tests publish on it themselves, through the
/// plane, as a service would.
pub struct Listener(pub std::rc::Rc<Delivery>);

impl Service for Listener {
    fn owner_key(&self, _caller: Option<u64>, _env: &selfie_protocol::Envelope<'_>) -> Option<u64> {
        None
    }

    fn handle(&self, _call: Call) -> LocalBoxFuture<'static, selfie_services::Result<Bytes>> {
        Box::pin(async { Err(selfie_services::Error::Unavailable("push only")) })
    }

    fn subscribe(
        &self,
        kind: SubscriptionKind,
        call: Call,
    ) -> LocalBoxFuture<'static, selfie_services::Result<Subscription>> {
        let d = self.0.clone();
        Box::pin(async move {
            let target = call
                .op(|e| e.body_as_control()?.op_as_subscribe_request())?
                .target_id();
            Ok(Subscription::new(
                Vec::new(),
                d.subscribe(Topic::new(kind, target)).await?,
            ))
        })
    }
}

/// Registers `name` through `anon`; returns the new account's tokens.
pub async fn register(anon: &Client, name: &str) -> pa::AuthTokensT {
    let mut r = pa::RegisterRequestT::default();
    r.username = Some(name.to_string());
    r.email = Some(format!("{name}@example.com"));
    r.password = Some(format!("{name} correct horse battery"));
    let BodyT::Auth(a) = call(anon, auth(AuthOpT::RegisterRequest(Box::new(r))))
        .await
        .expect("registered")
    else {
        panic!("not an auth answer")
    };
    let AuthOpT::RegisterResponse(r) = a.op else {
        panic!("not a register response")
    };
    *r.tokens.expect("tokens")
}

/// A PNG of `width` x `height` (a gradient, so renditions have something to show).
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 120])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

/// Uploads a small photo as `client`'s user and waits until it is ready: its media id.
pub async fn photo(client: &Client) -> u64 {
    let media = client.media();
    let info = media
        .upload(
            selfie_protocol::common::MediaKind::Image,
            png(64, 48).into(),
            &selfie_client::media::UploadOptions::default(),
        )
        .await
        .expect("uploaded");
    let ready = media
        .wait_ready(info.media_id, Duration::from_secs(30))
        .await
        .expect("processed");
    assert_eq!(ready.state, selfie_protocol::media::MediaState::Ready);
    ready.media_id
}

/// The TOTP code of `secret_b32` (base32) now, or `offset_steps` 30-second steps away.
pub fn totp_code(secret_b32: &str, offset_steps: i64) -> String {
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

/// An HTTPS client as a browser is, accepting the test node's self-signed certificate.
/// reqwest is built without a provider of its own, so this installs the build's one
/// (aws-lc-rs) as the process default first.
pub fn https_client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("https client")
}
