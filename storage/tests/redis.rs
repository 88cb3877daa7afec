//! Presence, event bus and global rate limiter against a real `redis-server` (Debian's,
//! started here on a private Unix socket per test).

use std::time::{Duration, Instant};

use futures::StreamExt;
use selfie_storage::StoreError;
use selfie_storage::redis::{
    self as sredis, EventBus, GlobalRateLimiter, PresenceEntry, PresenceRegistry, RateDecision,
};

struct RedisServer;

impl RedisServer {
    fn start() -> sredis::testing::RedisServer {
        sredis::testing::RedisServer::start()
            .expect("redis-server must be installed (apt-get install redis-server)")
    }
}

fn entry(node: &str, connection: u64) -> PresenceEntry {
    PresenceEntry {
        node: node.into(),
        shard: 1,
        connection,
    }
}

#[tokio::test]
async fn presence_lists_live_connections_and_forgets_expired_ones() -> Result<(), StoreError> {
    let server = RedisServer::start();
    let (_, conn) = sredis::connect(&server.url).await?;
    let long = PresenceRegistry::new(conn.clone(), "t:", Duration::from_secs(60));
    let short = PresenceRegistry::new(conn, "t:", Duration::from_millis(300));
    long.heartbeat(7, &entry("edge-a", 1)).await?;
    short.heartbeat(7, &entry("edge-b", 2)).await?;
    long.heartbeat(8, &entry("edge-a", 3)).await?;
    let mut now = long.connections(7).await?;
    now.sort();
    assert_eq!(now, vec![entry("edge-a", 1), entry("edge-b", 2)]);
    // The short-lived entry expires without a heartbeat.
    let start = Instant::now();
    while long.connections(7).await?.len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "entry never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(long.connections(7).await?, vec![entry("edge-a", 1)]);
    long.remove(7, &entry("edge-a", 1)).await?;
    assert!(long.connections(7).await?.is_empty());
    assert_eq!(
        long.connections_of(&[7, 8, 9]).await?,
        vec![vec![], vec![entry("edge-a", 3)], vec![]]
    );
    Ok(())
}

#[tokio::test]
async fn events_published_on_one_node_reach_the_nodes_subscribed_to_the_topic()
-> Result<(), StoreError> {
    let server = RedisServer::start();
    let (client, conn) = sredis::connect(&server.url).await?;
    let bus = EventBus::new(client, conn, "t:");
    let (mut node_a, stream_a) = bus.subscribe().await?;
    let (mut node_b, stream_b) = bus.subscribe().await?;
    let (mut stream_a, mut stream_b) = (Box::pin(stream_a), Box::pin(stream_b));
    node_a.subscribe("user:1").await?;
    node_b.subscribe("user:1").await?;
    node_b.subscribe("user:2").await?;
    assert_eq!(bus.publish("user:1", b"hello").await?, 2);
    assert_eq!(bus.publish("user:2", b"only b").await?, 1);
    let timeout = Duration::from_secs(5);
    let a1 = tokio::time::timeout(timeout, stream_a.next())
        .await
        .expect("a receives")
        .expect("open");
    assert_eq!(
        (a1.topic.as_str(), a1.payload.as_ref()),
        ("user:1", &b"hello"[..])
    );
    let b1 = tokio::time::timeout(timeout, stream_b.next())
        .await
        .expect("b receives")
        .expect("open");
    let b2 = tokio::time::timeout(timeout, stream_b.next())
        .await
        .expect("b receives")
        .expect("open");
    assert_eq!((b1.topic.as_str(), b2.topic.as_str()), ("user:1", "user:2"));
    node_a.unsubscribe("user:1").await?;
    assert_eq!(
        bus.publish("user:1", b"after").await?,
        1,
        "only node b still listens"
    );
    Ok(())
}

#[tokio::test]
async fn sequenced_publishes_from_racing_publishers_arrive_numbered_in_order()
-> Result<(), StoreError> {
    let server = RedisServer::start();
    let (client, conn) = sredis::connect(&server.url).await?;
    let bus = EventBus::new(client.clone(), conn, "t:");
    let (_, conn_b) = sredis::connect(&server.url).await?;
    let other = EventBus::new(client, conn_b, "t:");
    let (mut node, stream) = bus.subscribe().await?;
    let mut stream = Box::pin(stream);
    node.subscribe("events").await?;
    // Two publishers (two connections) race on one sequence, with binary payloads.
    let keep = Duration::from_secs(60);
    let publish = |bus: &EventBus, i: u8| {
        let bus = bus.clone();
        async move {
            bus.publish_sequenced("events", "topic:7", &[i, b':', 0], keep)
                .await
        }
    };
    let mut given = Vec::new();
    for i in 0..20u8 {
        let (a, b) = tokio::join!(publish(&bus, i), publish(&other, 100 + i));
        given.extend([a?, b?]);
    }
    given.sort_unstable();
    assert_eq!(given, (1..=40).collect::<Vec<u64>>(), "no number twice");
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("in time")
            .expect("open");
        let (seq, payload) = m.sequenced().expect("sequenced");
        assert_eq!(
            payload.len(),
            3,
            "the payload survives whole, colons included"
        );
        seen.push(seq);
    }
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<u64>>(),
        "received in sequence order"
    );
    Ok(())
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_every_node() -> Result<(), StoreError> {
    let server = RedisServer::start();
    let (_, conn_a) = sredis::connect(&server.url).await?;
    let (_, conn_b) = sredis::connect(&server.url).await?;
    // 10 per minute, bursts of 5: two "nodes" share one budget.
    let a = GlobalRateLimiter::new(conn_a, "t:", "login_ip", 10, Duration::from_secs(60), 5);
    let b = GlobalRateLimiter::new(conn_b, "t:", "login_ip", 10, Duration::from_secs(60), 5);
    let mut allowed = 0;
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        if node.check("198.51.100.0/24").await? == RateDecision::Allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "the burst is global, not per node");
    match a.check("198.51.100.0/24").await? {
        RateDecision::Limited { retry_after } => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(6));
        }
        RateDecision::Allowed => panic!("over the limit"),
    }
    // Another subject has its own budget.
    assert_eq!(b.check("203.0.113.0/24").await?, RateDecision::Allowed);
    Ok(())
}

#[tokio::test]
async fn revocations_are_shared_until_they_expire() -> Result<(), StoreError> {
    use selfie_storage::redis::RevocationList;
    let server = RedisServer::start();
    let (_, conn) = sredis::connect(&server.url).await?;
    let node_a = RevocationList::new(conn.clone(), "t:");
    let node_b = RevocationList::new(conn, "t:");
    node_a.add(7, Duration::from_secs(60)).await?;
    node_a.add(8, Duration::from_millis(300)).await?;
    // Another node revoking the same session for less time changes nothing.
    node_b.add(7, Duration::from_millis(10)).await?;
    let mut live = node_b.live().await?;
    live.sort();
    assert_eq!(live, vec![7, 8]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(node_b.live().await?, vec![7]);
    assert_eq!(node_a.live().await?, vec![7]);
    Ok(())
}

#[tokio::test]
async fn lockouts_double_across_nodes_and_a_success_clears_them() -> Result<(), StoreError> {
    use selfie_storage::redis::LoginLockouts;
    let server = RedisServer::start();
    let (_, conn) = sredis::connect(&server.url).await?;
    let node_a = LoginLockouts::new(conn.clone(), "t:", 3, Duration::from_secs(8));
    let node_b = LoginLockouts::new(conn, "t:", 3, Duration::from_secs(8));
    // Failures on two nodes add up: the third starts a 1 s lockout, seen by both.
    assert_eq!(node_a.fail("acct").await?, None);
    assert_eq!(node_b.fail("acct").await?, None);
    let first = node_a.fail("acct").await?.expect("locked");
    assert!(first <= Duration::from_secs(1) && first > Duration::from_millis(500));
    assert!(node_b.locked_for("acct").await?.is_some());
    assert_eq!(node_b.locked_for("other").await?, None);
    // Each further failure doubles it, up to the cap.
    let second = node_b.fail("acct").await?.expect("locked");
    assert!(second > Duration::from_millis(1_500), "{second:?}");
    for _ in 0..10 {
        node_a.fail("acct").await?;
    }
    let capped = node_b.locked_for("acct").await?.expect("locked");
    assert!(capped <= Duration::from_secs(8), "{capped:?}");
    assert!(capped > Duration::from_secs(7), "{capped:?}");
    // A success clears the account everywhere.
    node_a.succeed("acct").await?;
    assert_eq!(node_b.locked_for("acct").await?, None);
    Ok(())
}

#[tokio::test]
async fn a_lock_has_one_holder_and_expires_by_itself() -> Result<(), StoreError> {
    use selfie_storage::redis::Locks;
    let server = RedisServer::start();
    let (_, conn) = sredis::connect(&server.url).await?;
    let node_a = Locks::new(conn.clone(), "t:");
    let node_b = Locks::new(conn, "t:");
    let ttl = Duration::from_millis(300);
    assert!(node_a.try_lock("pair:1:2", 1, ttl).await?);
    assert!(!node_b.try_lock("pair:1:2", 2, ttl).await?);
    assert!(
        node_b.try_lock("pair:1:3", 2, ttl).await?,
        "other names are free"
    );
    // Only the holder releases it.
    assert!(!node_b.unlock("pair:1:2", 2).await?);
    assert!(node_a.unlock("pair:1:2", 1).await?);
    assert!(node_b.try_lock("pair:1:2", 2, ttl).await?);
    // A holder that never releases blocks others for the TTL only.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(node_a.try_lock("pair:1:2", 3, ttl).await?);
    assert!(
        !node_b.unlock("pair:1:2", 2).await?,
        "the expired holder cannot free it"
    );
    Ok(())
}
