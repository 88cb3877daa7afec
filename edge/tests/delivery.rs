//! The live delivery plane through real edges and real SDK clients: one publish reaches a
//! thousand subscribers spread over two shards, in order and exactly once; a subscriber
//! that stops reading is cut off with `ResyncRequired` while the others keep receiving;
//! unsubscribing and disconnecting leave nothing behind.

mod support;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use selfie_client::{Client, Subscription, SubscriptionEnd};
use selfie_codec::Frame;
use selfie_edge::{Config, Edge, Plane, Registry};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::posts::{PostsOpT, ReactRequestT, UnreactRequestT};
use selfie_protocol::{Body, Envelope, EnvelopeArgs, ErrorCode, common};
use selfie_services::plane::{Delivery, ReasonLabel, Topic};
use support::{call, config, posts, sign_up};

/// The counters event a post's subscriber received: (sequence, reactions delta, reactions
/// after it, the sequence a snapshot includes).
fn counts_event(f: &Frame) -> (u64, i32, u64, u64) {
    let env = f.envelope();
    let e = env
        .body_as_posts()
        .and_then(|p| p.op_as_post_counts_event())
        .expect("a PostCountsEvent");
    let reactions = e.counts().map(|c| c.reactions()).expect("counts");
    (env.id(), e.reactions_delta(), reactions, e.as_of_seq())
}

async fn next(s: &mut Subscription) -> Frame {
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("in time")
        .expect("an event")
}

/// Waits until `f` holds (the metrics settle after connections close).
async fn settles(what: &str, f: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} never settled");
}

async fn react(c: &Client, post_id: u64, emoji: &str) {
    let mut r = ReactRequestT::default();
    r.target_kind = common::ObjectKind::Post;
    r.target_id = post_id;
    r.emoji = Some(emoji.into());
    call(c, posts(PostsOpT::ReactRequest(Box::new(r))))
        .await
        .expect("reacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_over_two_shards_get_each_change_once_and_in_order() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let author = sign_up(&node, &anon, "author").await;
    let fans: Vec<_> = join_all(["fan_a", "fan_b"].map(|n| sign_up(&node, &anon, n))).await;
    let post_id = support::create_post(&author.client, "live counters").await;

    // A thousand connections of one reader, each subscribed to the post.
    let reader = sign_up(&node, &anon, "reader").await;
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    // Opened 50 at a time: a thousand handshakes at once on two shared cores would only
    // test the handshake timeout.
    let mut subscribers = Vec::with_capacity(1000);
    for _ in 0..20 {
        subscribers.extend(
            join_all((0..50).map(|_| {
                let (endpoint, config) =
                    (endpoint.clone(), config(&node, Some(reader.token.clone())));
                async move {
                    let c = Client::connect_on(&endpoint, config)
                        .await
                        .expect("connect");
                    let s = c
                        .subscribe(SubscriptionKind::Post, post_id, None)
                        .await
                        .expect("subscribed");
                    (c, s)
                }
            }))
            .await,
        );
    }
    let shards: std::collections::HashSet<u16> =
        subscribers.iter().map(|(c, _)| c.welcome().shard).collect();
    assert_eq!(shards.len(), 2, "subscribers on both shards");
    let m = &node.plane.metrics.delivery;
    assert_eq!(m.subscribers.get(), 1000);

    // Three changes, published on whichever shard owns the post's interactions.
    react(&fans[0].client, post_id, "🔥").await;
    react(&fans[1].client, post_id, "🎉").await;
    react(&author.client, post_id, "👍").await;
    // A fourth: the frame after the third must be this one, so nothing came twice.
    let mut u = UnreactRequestT::default();
    u.target_kind = common::ObjectKind::Post;
    u.target_id = post_id;
    call(&author.client, posts(PostsOpT::UnreactRequest(Box::new(u))))
        .await
        .expect("unreacted");
    let seen = join_all(subscribers.into_iter().map(|(c, mut s)| async move {
        let snapshot = counts_event(&next(&mut s).await);
        let mut events = Vec::new();
        for _ in 0..4 {
            events.push(counts_event(&next(&mut s).await));
        }
        (c, s, snapshot, events)
    }))
    .await;
    for (_, _, snapshot, events) in &seen {
        assert_eq!(
            *snapshot,
            (0, 0, 0, 0),
            "a snapshot (id 0) of no reaction, before any event"
        );
        assert_eq!(
            events,
            &vec![(1, 1, 1, 0), (2, 1, 2, 0), (3, 1, 3, 0), (4, -1, 2, 0)],
            "every change, in order, exactly once, each with the counts after it"
        );
    }
    assert_eq!(m.delivered.get(), 4000);

    // A late subscriber's snapshot says which sequence it includes, so the next event
    // it sees follows on from it with nothing missed and nothing counted twice.
    let late = Client::connect_on(&endpoint, config(&node, Some(reader.token.clone())))
        .await
        .expect("connect");
    let mut s = late
        .subscribe(SubscriptionKind::Post, post_id, None)
        .await
        .expect("subscribed");
    assert_eq!(
        counts_event(&next(&mut s).await),
        (0, 0, 2, 4),
        "a snapshot of the two reactions left, as of the fourth change"
    );
    react(&reader.client, post_id, "🔥").await;
    assert_eq!(counts_event(&next(&mut s).await), (5, 1, 3, 0));
    drop((s, late));
    // Disconnecting frees everything, down to the owner's record of the topic.
    drop(seen);
    settles("subscribers", || {
        m.subscribers.get() == 0 && m.topics.get() == 0 && m.owned_topics.get() == 0
    })
    .await;
}

struct Listening {
    edge: Edge,
    plane: Arc<Plane>,
    _dir: tempfile::TempDir,
}

fn listening(subscriber_queue: usize) -> Listening {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shards = 2;
    config.server.pin_cores = false;
    config.server.data_dir = dir.path().to_path_buf();
    config.server.drain_deadline_ms = 1_000;
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    config.delivery.subscriber_queue = subscriber_queue;
    let plane = Plane::new(2, config.delivery.plane());
    let shards = plane.clone();
    let factory: selfie_edge::ServiceFactory = Arc::new(move |shard| {
        let mut r = Registry::new(shard, &shards);
        let listener = support::Listener(r.delivery().clone());
        r.register(selfie_protocol::Service::Notifications, Rc::new(listener));
        r
    });
    let edge =
        Edge::start(config, plane.clone(), factory, Arc::new(support::TokenAuth)).expect("edge");
    Listening {
        edge,
        plane,
        _dir: dir,
    }
}

fn client_config(t: &Listening, user: u64) -> selfie_client::ClientConfig {
    let mut c = selfie_client::ClientConfig::new(
        t.edge.addr,
        selfie_client::Trust::pinned_hex(&t.edge.fingerprint).expect("pin"),
    );
    c.access_token = Some(format!("user-{user}"));
    c
}

/// Publishes event `n` (with `pad` bytes of payload) on `topic` from shard 0.
async fn publish(plane: &Plane, topic: Topic, n: u64, pad: usize) {
    plane
        .shards()
        .invoke_on(0, move |d: Rc<Delivery>| async move {
            let frame = d
                .encode_event(|b, id| {
                    use selfie_protocol::notifications as nt;
                    let text = b.create_string(&"x".repeat(pad));
                    let notification = nt::Notification::create(
                        b,
                        &nt::NotificationArgs {
                            notification_id: n,
                            text: Some(text),
                            ..Default::default()
                        },
                    );
                    let ev = nt::NotificationEvent::create(
                        b,
                        &nt::NotificationEventArgs {
                            notification: Some(notification),
                            ..Default::default()
                        },
                    );
                    let body = nt::Notifications::create(
                        b,
                        &nt::NotificationsArgs {
                            op_type: nt::NotificationsOp::NotificationEvent,
                            op: Some(ev.as_union_value()),
                        },
                    );
                    Envelope::create(
                        b,
                        &EnvelopeArgs {
                            id,
                            body_type: Body::Notifications,
                            body: Some(body.as_union_value()),
                            ..Default::default()
                        },
                    )
                })
                .expect("encoded");
            d.publish(topic, frame).await
        })
        .await
        .expect("the shard answered")
        .expect("published");
}

fn notification_id(f: &Frame) -> u64 {
    f.envelope()
        .body_as_notifications()
        .and_then(|n| n.op_as_notification_event())
        .and_then(|e| e.notification())
        .map(|n| n.notification_id())
        .expect("a notification event")
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_and_the_others_keep_receiving() {
    let t = listening(8);
    let topic = Topic::new(SubscriptionKind::Notifications, 77);
    let slow = Client::connect(client_config(&t, 1))
        .await
        .expect("connect");
    let mut stalled = slow
        .subscribe(SubscriptionKind::Notifications, 77, None)
        .await
        .expect("subscribed");
    let fast = Client::connect(client_config(&t, 2))
        .await
        .expect("connect");
    let mut reading = fast
        .subscribe(SubscriptionKind::Notifications, 77, None)
        .await
        .expect("subscribed");
    // 32 KiB events: the stalled client's buffers (its SDK queue, QUIC's stream window)
    // fill after a few hundred; then the server's queue of 8 overflows.
    let m = &t.plane.metrics.delivery;
    let cut = || {
        m.resyncs
            .get_or_create(&ReasonLabel {
                reason: "slow_subscriber",
            })
            .get()
    };
    let mut n = 0;
    while cut() == 0 {
        n += 1;
        assert!(n <= 2000, "the stalled subscriber was never cut off");
        publish(&t.plane, topic, n, 32 * 1024).await;
        let f = next(&mut reading).await;
        assert_eq!((f.id(), notification_id(&f)), (n, n), "the reader keeps up");
    }
    for _ in 0..20 {
        n += 1;
        publish(&t.plane, topic, n, 32 * 1024).await;
        let f = next(&mut reading).await;
        assert_eq!(f.id(), n, "the reader keeps receiving after the cut");
    }
    assert_eq!(m.subscribers.get(), 1, "only the reader is left");
    // The stalled client finds what it had buffered, in order, then the signal.
    let mut last = 0;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(20), stalled.next())
        .await
        .expect("in time")
    {
        assert_eq!(f.id(), last + 1, "in order, no hole");
        last = f.id();
    }
    assert_eq!(stalled.end(), Some(&SubscriptionEnd::Resync));
    assert!(last > 0 && last < n, "{last} of {n}");
}

#[tokio::test]
async fn subscriptions_run_in_order_until_unsubscribed_and_leave_nothing_behind() {
    let t = listening(64);
    let m = &t.plane.metrics.delivery;
    let c = Client::connect(client_config(&t, 3))
        .await
        .expect("connect");
    let other = Client::connect(client_config(&t, 4))
        .await
        .expect("connect");
    let mut subs = Vec::new();
    for target in [1, 2, 3] {
        subs.push(
            c.subscribe(SubscriptionKind::Notifications, target, None)
                .await
                .expect("subscribed"),
        );
    }
    let mut on_other = other
        .subscribe(SubscriptionKind::Notifications, 1, None)
        .await
        .expect("subscribed");
    assert_eq!(
        (m.subscribers.get(), m.topics.get()),
        (
            4,
            if c.welcome().shard == other.welcome().shard {
                3
            } else {
                4
            }
        )
    );
    // Events arrive in order on each subscription's own stream, numbered per topic.
    let two = Topic::new(SubscriptionKind::Notifications, 2);
    for n in 1..=20 {
        publish(&t.plane, two, n, 0).await;
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        let f = next(&mut subs[1]).await;
        got.push((notification_id(&f), f.id()));
    }
    assert_eq!(got, (1..=20).map(|n| (n, n)).collect::<Vec<_>>());
    // Unsubscribing one ends its stream and leaves the others.
    let mut first = subs.remove(0);
    c.unsubscribe(first.id()).await.expect("unsubscribed");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while first.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the push stream ends after unsubscribe");
    assert_eq!(first.end(), Some(&SubscriptionEnd::Finished));
    let err = c.unsubscribe(first.id()).await.expect_err("already gone");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    settles("unsubscribe", || m.subscribers.get() == 3).await;
    let one = Topic::new(SubscriptionKind::Notifications, 1);
    publish(&t.plane, one, 1, 0).await;
    let f = next(&mut on_other).await;
    assert_eq!(f.id(), 1, "the other subscriber still receives");
    // Anonymous sessions cannot subscribe to user data.
    let mut anonymous = client_config(&t, 0);
    anonymous.access_token = None;
    let anon = Client::connect(anonymous).await.expect("connect");
    let err = anon
        .subscribe(SubscriptionKind::Notifications, 1, None)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    // Closing the connections frees the rest, the owners' records too.
    c.close();
    other.close();
    drop((subs, on_other));
    settles("disconnect", || {
        m.subscribers.get() == 0 && m.topics.get() == 0 && m.owned_topics.get() == 0
    })
    .await;
}
