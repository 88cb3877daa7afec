//! Two `selfie serve` processes make a fleet: one real CQL server (`SELFIE_CQL_NODES`,
//! started by `scripts/test`), one real `redis-server`, one signing key. A change made
//! on node A reaches a subscriber connected to node B through the delivery plane's one
//! Redis subscription per node, numbered in the same fleet-wide sequence that A's own
//! subscribers see; each process drains and exits 0 on SIGTERM. Media blobs live in the
//! real S3 server (`SELFIE_S3_URL`): a photo uploaded on A downloads from B. Node numbers
//! are leased in the shared backend: two live nodes never hold one.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use selfie_client::media::UploadOptions;
use selfie_client::{Client, ClientConfig, Subscription, Trust};
use selfie_codec::Frame;
use selfie_protocol::common;
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::media::MediaState;
use selfie_protocol::posts::{PostsOpT, ReactRequestT};
use selfie_storage::redis::testing::RedisServer;
use sha2::{Digest, Sha256};
use support::{call, posts};

/// A `selfie serve` child process.
struct Serve {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
    /// The node number it leased.
    number: u16,
    /// Its HTTPS (signed media URLs) and ops addresses.
    web: Option<SocketAddr>,
    ops: Option<SocketAddr>,
}

impl Serve {
    fn start(dir: &Path, node: u16, cql: &str, redis: &str, key: &Path) -> Serve {
        let s = Self::try_start(dir, Some(node), cql, redis, key).expect("the node starts");
        assert_eq!(s.number, node, "the configured node number");
        s
    }

    /// Starts a node (with `node` as its configured number, if any); `Err` with what it
    /// printed when it exits instead.
    fn try_start(
        dir: &Path,
        node: Option<u16>,
        cql: &str,
        redis: &str,
        key: &Path,
    ) -> Result<Serve, String> {
        // Media blobs in the shared S3 bucket (started by `scripts/test`).
        let media_url = std::env::var("SELFIE_S3_URL").ok();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfie"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SELFIE_") {
                cmd.env_remove(k);
            }
        }
        if let Some(n) = node {
            cmd.env("SELFIE_SERVER_NODE_NUMBER", n.to_string());
        }
        if let Some(url) = media_url {
            cmd.env("SELFIE_STORAGE_MEDIA_URL", url);
        }
        let id = node.map_or_else(
            || format!("edge-{:04x}", rand::random::<u16>()),
            |n| format!("edge-{n}"),
        );
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--data-dir",
            ])
            .arg(dir)
            .env("SELFIE_OPS_LISTEN", "127.0.0.1:0")
            .env("SELFIE_WEB_LISTEN", "127.0.0.1:0")
            .env("SELFIE_SERVER_PIN_CORES", "false")
            .env("SELFIE_SERVER_NODE_ID", id)
            // A short lease, so that a refused claim gives up soon; a short drain, so
            // that the node can renew well within it.
            .env("SELFIE_SERVER_NODE_LEASE_S", "10")
            .env("SELFIE_SERVER_DRAIN_DEADLINE_MS", "1000")
            .env("SELFIE_STORAGE_BACKEND", "cql")
            .env("SELFIE_STORAGE_CQL_URL", cql)
            .env("SELFIE_STORAGE_REDIS_URL", redis)
            .env("SELFIE_AUTH_KEY_FILE", key)
            .env("SELFIE_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start selfie serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut addr, mut fingerprint, mut number) = (None, None, None);
        let (mut web, mut ops) = (None, None);
        for line in lines.by_ref() {
            let line = line.expect("stdout line");
            if let Some(n) = line.strip_prefix("node number ") {
                number = n.trim().parse().ok();
            }
            if let Some(rest) = line.split("udp://").nth(1) {
                addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("ops on http://").nth(1) {
                ops = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("https on tcp://") {
                web = rest.split(',').next().and_then(|a| a.parse().ok());
            }
            if let Some(f) = line.strip_prefix("certificate sha-256: ") {
                fingerprint = Some(f.trim().to_string());
            }
            if addr.is_some() && fingerprint.is_some() {
                break;
            }
        }
        let (Some(addr), Some(fingerprint), Some(number)) = (addr, fingerprint, number) else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let status = child.wait().expect("exit status");
            return Err(format!("{status}: {err}"));
        };
        std::thread::spawn(move || for _ in lines {});
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(e).lines() {});
        }
        Ok(Serve {
            child,
            addr,
            fingerprint,
            number,
            web,
            ops,
        })
    }

    fn client(&self, token: Option<String>) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.addr,
            Trust::pinned_hex(&self.fingerprint).expect("pin"),
        );
        c.access_token = token;
        c
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGTERM sent");
        self.child.wait().expect("exit status")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn register(anon: &Client, name: &str) -> String {
    support::register(anon, name)
        .await
        .access_token
        .expect("access token")
}

async fn next(s: &mut Subscription) -> Frame {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("in time")
        .expect("an event")
}

/// (sequence, reactions delta) of a `PostCountsEvent`.
fn change(f: &Frame) -> (u64, i32) {
    let env = f.envelope();
    let e = env
        .body_as_posts()
        .and_then(|p| p.op_as_post_counts_event())
        .expect("a PostCountsEvent");
    (env.id(), e.reactions_delta())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_reaches_subscribers_on_another_in_one_fleet_sequence() {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let redis = RedisServer::start().expect("redis-server must be installed");
    let dir = tempfile::tempdir().expect("temp dir");
    // One signing key for the fleet.
    let tokens =
        selfie_services::auth::tokens::AccessTokens::generate("selfie", Duration::from_secs(900))
            .expect("key");
    let key = dir.path().join("token-key.hex");
    let hex: String = tokens
        .secret_key_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&key, hex).expect("key file");
    let cql = format!("cql://{nodes}/fleet_{:08x}", rand::random::<u32>());
    // A migrates the keyspace first; then B joins.
    let a = Serve::start(&dir.path().join("a"), 1, &cql, &redis.url, &key);
    let b = Serve::start(&dir.path().join("b"), 2, &cql, &redis.url, &key);

    let anon = Client::connect(a.client(None)).await.expect("session on A");
    let author_token = register(&anon, "author").await;
    let author = Client::connect(a.client(Some(author_token.clone())))
        .await
        .expect("author on A");
    let post_id = support::create_post(&author, "seen everywhere").await;
    let fans = [
        register(&anon, "fan_a").await,
        register(&anon, "fan_b").await,
    ];

    // One subscriber on each node.
    let on_a = Client::connect(a.client(Some(author_token.clone())))
        .await
        .expect("A");
    let on_b = Client::connect(b.client(Some(author_token)))
        .await
        .expect("the key verifies on B");
    let mut sub_a = on_a
        .subscribe(SubscriptionKind::Post, post_id, None)
        .await
        .expect("subscribed on A");
    let mut sub_b = on_b
        .subscribe(SubscriptionKind::Post, post_id, None)
        .await
        .expect("subscribed on B, reading the post from the shared store");
    assert_eq!(next(&mut sub_a).await.id(), 0, "snapshot");
    assert_eq!(next(&mut sub_b).await.id(), 0, "snapshot");

    // Reactions made on A and on B.
    for (i, token) in fans.iter().enumerate() {
        let node = if i == 0 { &a } else { &b };
        let fan = Client::connect(node.client(Some(token.clone())))
            .await
            .expect("fan");
        let mut r = ReactRequestT::default();
        r.target_kind = common::ObjectKind::Post;
        r.target_id = post_id;
        r.emoji = Some("🔥".into());
        call(&fan, posts(PostsOpT::ReactRequest(Box::new(r))))
            .await
            .expect("reacted");
    }
    let seen_a = [
        change(&next(&mut sub_a).await),
        change(&next(&mut sub_a).await),
    ];
    let seen_b = [
        change(&next(&mut sub_b).await),
        change(&next(&mut sub_b).await),
    ];
    assert_eq!(
        seen_a,
        [(1, 1), (2, 1)],
        "one fleet-wide sequence, in order"
    );
    assert_eq!(
        seen_a, seen_b,
        "both nodes deliver the same events, numbered alike"
    );

    // Media uploaded on A (its blobs in the shared S3 bucket) downloads from B, original
    // and renditions byte for byte.
    let photo = jpeg();
    let info = on_a
        .media()
        .upload(
            common::MediaKind::Image,
            Bytes::from(photo.clone()),
            &UploadOptions::default(),
        )
        .await
        .expect("uploaded on A");
    let ready = on_b
        .media()
        .wait_ready(info.media_id, Duration::from_secs(60))
        .await
        .expect("processed on A, seen from B");
    assert_eq!(ready.state, MediaState::Ready);
    let (_, original) = on_b
        .media()
        .download(info.media_id, "", 0, 0)
        .await
        .expect("the original from B");
    assert_eq!(
        Sha256::digest(&original),
        Sha256::digest(&photo),
        "the same bytes"
    );
    let (_, from_a) = on_a
        .media()
        .download(info.media_id, "small", 0, 0)
        .await
        .expect("a rendition from A");
    let (_, from_b) = on_b
        .media()
        .download(info.media_id, "small", 0, 0)
        .await
        .expect("the rendition from B");
    assert!(!from_b.is_empty());
    assert_eq!(from_a, from_b, "one rendition for the whole fleet");
    // A URL minted on A is served by B: every node of the fleet verifies the signature.
    let (url, _) = on_a
        .media()
        .url(info.media_id, "small")
        .await
        .expect("minted on A");
    let a_origin = format!("https://{}", a.web.expect("A's HTTPS"));
    assert!(url.starts_with(&a_origin), "{url}");
    let via_b = url.replacen(
        &a_origin,
        &format!("https://{}", b.web.expect("B's HTTPS")),
        1,
    );
    let web = support::https_client();
    let r = web.get(&via_b).send().await.expect("GET on B");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("body"), from_b);
    // B's cache in front of S3 is observable: it fetched what it served.
    let metrics = web
        .get(format!("http://{}/metrics", b.ops.expect("B's ops")))
        .send()
        .await
        .expect("scraped")
        .text()
        .await
        .expect("text");
    let fills: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("selfie_media_cache_fills_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no cache fills metric in {metrics}"));
    assert!(fills >= 1, "{fills}");
    assert!(
        metrics.contains("selfie_media_store_info{store="),
        "the store in use is reported"
    );

    drop((sub_a, sub_b, on_a, on_b, author, anon));
    assert!(a.stop().success(), "A drains and exits 0");
    assert!(b.stop().success(), "B drains and exits 0");
}

/// A small photo.
fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 200, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .expect("jpeg");
    out
}

/// Defect: every node defaulted to node number 0, so two nodes on one backend minted the
/// same user, session and post ids. Numbers are now leased: nodes without one get
/// distinct numbers, a number held by a live node is refused, and a drained node's
/// number is free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_nodes_never_share_a_node_number() {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let redis = RedisServer::start().expect("redis-server must be installed");
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("token-key.hex");
    let hex: String =
        selfie_services::auth::tokens::AccessTokens::generate("selfie", Duration::from_secs(900))
            .expect("key")
            .secret_key_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    std::fs::write(&key, hex).expect("key file");
    let cql = format!("cql://{nodes}/lease_{:08x}", rand::random::<u32>());
    let a = Serve::try_start(&dir.path().join("a"), None, &cql, &redis.url, &key).expect("A");
    let b = Serve::try_start(&dir.path().join("b"), None, &cql, &redis.url, &key).expect("B");
    assert_ne!(a.number, b.number, "two nodes, two numbers");
    // A third node configured with A's number is refused while A lives.
    let refused = Serve::try_start(
        &dir.path().join("c"),
        Some(a.number),
        &cql,
        &redis.url,
        &key,
    )
    .err()
    .expect("refused");
    assert!(refused.contains("node number"), "{refused}");
    // Once A has drained, its number is free at once.
    let number = a.number;
    assert!(a.stop().success());
    let c = Serve::try_start(&dir.path().join("c"), Some(number), &cql, &redis.url, &key)
        .expect("the drained node's number");
    assert_eq!(c.number, number);
    assert!(b.stop().success());
    assert!(c.stop().success());
}
