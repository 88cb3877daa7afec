//! Feeds, stories and notifications through real edges and real SDK clients: a post
//! reaches followers' timelines and their live `HomeFeed` subscriptions across shards,
//! pushes are coalesced per reader, a resumed subscription says what arrived while away;
//! privacy holds on every read path and its changes propagate at once; a large author
//! merged at read time reads like one fanned out; pages neither repeat nor skip; stories
//! expire on an injected clock while highlights stay; and on a fleet (one store, real
//! Redis) posts, stories and notifications made on one node are pushed to users on
//! another. Every test runs on both storage backends: `embedded::…` and `cql::…` (the
//! real CQL server at `SELFIE_CQL_NODES`, started by `scripts/test`).

mod support;

use std::time::Duration;

use selfie_client::feed::push_update;
use selfie_client::{Client, Subscription};
use selfie_protocol::feed::{FeedReason, FeedUpdateT};
use selfie_protocol::graph::{FollowRequestT, GraphOpT};
use support::{Backend, User, call, config, create_post, graph, sign_up};

/// Fresh parts on `backend`, on the system clock.
async fn parts(backend: Backend) -> support::Parts {
    support::parts_on(backend, std::sync::Arc::new(selfie_storage::SystemClock)).await
}

async fn follow(u: &User, target: u64) {
    let mut r = FollowRequestT::default();
    r.target_id = target;
    call(&u.client, graph(GraphOpT::FollowRequest(Box::new(r))))
        .await
        .expect("followed");
}

/// The next notification event pushed to `s`.
async fn next_notification(
    s: &mut Subscription,
) -> selfie_protocol::notifications::NotificationEventT {
    let frame = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("in time")
        .expect("an event");
    selfie_client::notifications::push_event(&frame).expect("a notification event")
}

/// The next story update pushed to `s`.
async fn next_story(s: &mut Subscription) -> selfie_protocol::stories::StoryUpdateT {
    let frame = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("in time")
        .expect("an update");
    selfie_client::stories::push_update(&frame).expect("a story update")
}

/// The next feed update pushed to `s`.
async fn next_update(s: &mut Subscription) -> FeedUpdateT {
    let frame = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("in time")
        .expect("an update");
    push_update(&frame).expect("a feed update")
}

async fn posts_reach_followers_feeds_live_and_coalesced(backend: Backend) {
    let mut parts = parts(backend).await;
    parts.feed.push_interval = Duration::from_secs(3);
    let node = support::start_parts(&parts);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    // Followers enough that both shards own some of them.
    let mut readers = Vec::new();
    for i in 0..4 {
        let u = sign_up(&node, &anon, &format!("reader{i}")).await;
        follow(&u, ana.id).await;
        readers.push(u);
    }
    let mut live = Vec::new();
    for r in &readers {
        live.push(r.client.feed().subscribe(None).await.expect("subscribed"));
    }
    let first = create_post(&ana.client, "hello followers").await;
    for s in &mut live {
        let u = next_update(s).await;
        assert_eq!((u.new_items, u.latest_post_id), (1, first));
    }
    // Five more within the interval: one more push per reader, carrying all five.
    let mut last = 0;
    for i in 0..5 {
        last = create_post(&ana.client, &format!("more {i}")).await;
    }
    for s in &mut live {
        let mut total = 0;
        let mut pushes = 0;
        while total < 5 {
            let u = next_update(s).await;
            total += u.new_items;
            pushes += 1;
            if total == 5 {
                assert_eq!(u.latest_post_id, last);
            }
        }
        assert_eq!(total, 5);
        assert!(pushes < 5, "the updates were coalesced ({pushes} pushes)");
    }
    // The page has all six, newest first, with their counts.
    let page = readers[0].client.feed().home(10, None).await.expect("page");
    let items = page.items.expect("items");
    assert_eq!(items.len(), 6);
    let top = items[0].post.as_ref().expect("post");
    assert_eq!(top.post_id, last);
    assert_eq!(items[0].reason, FeedReason::Followed);
    assert!(top.counts.is_some());
    assert_eq!(
        items
            .last()
            .and_then(|i| i.post.as_ref())
            .map(|p| p.post_id),
        Some(first)
    );
    // The ranked feed has the same six, each scored, one ranking paged without repeats.
    let ranked = readers[2]
        .client
        .feed()
        .for_you(4, None)
        .await
        .expect("for you");
    let first: Vec<u64> = ranked
        .items
        .iter()
        .flatten()
        .map(|i| i.post.as_ref().map_or(0, |p| p.post_id))
        .collect();
    assert_eq!(first.len(), 4);
    assert!(ranked.items.iter().flatten().all(|i| i.score > 0.0));
    let cursor = ranked.page.and_then(|p| p.next_cursor).expect("more");
    let rest = readers[2]
        .client
        .feed()
        .for_you(4, Some(cursor))
        .await
        .expect("next page");
    let rest: Vec<u64> = rest
        .items
        .iter()
        .flatten()
        .map(|i| i.post.as_ref().map_or(0, |p| p.post_id))
        .collect();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|id| !first.contains(id)));
    // A reader who was away resumes from the newest item they had: the server first says
    // how many arrived since.
    let newer = page.newer_cursor.expect("newer cursor");
    let away = &readers[1];
    let mut before = away.client.feed().home(3, None).await.expect("page");
    let cursor = before.newer_cursor.take().expect("newer cursor");
    assert_eq!(cursor, newer, "both readers' newest item is the same");
    for i in 0..2 {
        create_post(&ana.client, &format!("while away {i}")).await;
    }
    // The fan-out is asynchronous: wait until both are in the timeline.
    let mut fresh = Vec::new();
    for _ in 0..100 {
        fresh = away
            .client
            .feed()
            .home(10, Some(cursor.clone()))
            .await
            .expect("newer page")
            .items
            .unwrap_or_default();
        if fresh.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fresh.len(), 2);
    let mut resumed = away
        .client
        .feed()
        .subscribe(Some(&cursor))
        .await
        .expect("resumed");
    let u = next_update(&mut resumed).await;
    assert_eq!(u.new_items, 2);
    // Someone else's home feed cannot be followed.
    let refused = away
        .client
        .subscribe(
            selfie_protocol::control::SubscriptionKind::HomeFeed,
            ana.id,
            None,
        )
        .await;
    assert!(refused.is_err());
}

/// Two edges of one fleet (one store, one signing key, one real `redis-server`): a post
/// made on one node is pushed to a follower subscribed on the other.
async fn a_post_on_one_node_is_pushed_to_a_reader_on_another(backend: Backend) {
    let redis = selfie_storage::redis::testing::RedisServer::start()
        .expect("redis-server must be installed");
    let parts = parts(backend).await;
    let a = support::fleet_node(&parts, &redis.url);
    let b = support::fleet_node(&parts, &redis.url);
    let anon_a = Client::connect(config(&a.node, None))
        .await
        .expect("session");
    let anon_b = Client::connect(config(&b.node, None))
        .await
        .expect("session");
    let ana = sign_up(&a.node, &anon_a, "ana").await;
    let ben = sign_up(&b.node, &anon_b, "ben").await;
    follow(&ben, ana.id).await;
    let mut live = ben.client.feed().subscribe(None).await.expect("subscribed");
    let id = create_post(&ana.client, "from node a").await;
    let u = next_update(&mut live).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, id));
    let page = ben.client.feed().home(10, None).await.expect("page");
    let items = page.items.expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].post.as_ref().and_then(|p| p.text.as_deref()),
        Some("from node a")
    );
}

/// A story reaches the trays of followers on both shards live; the author sees views
/// and reactions live; a reply arrives in the author's chat as a `StoryReply` message.
async fn stories_reach_trays_live_and_replies_arrive_in_chat(backend: Backend) {
    use selfie_client::chat::push_event;
    use selfie_protocol::chat::{ChatEventKind, MessageKind};
    use selfie_protocol::common::Audience;
    use selfie_protocol::stories::StoryEventKind;

    let node = support::start_parts(&parts(backend).await);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let mut readers = Vec::new();
    for i in 0..4 {
        let u = sign_up(&node, &anon, &format!("viewer{i}")).await;
        follow(&u, ana.id).await;
        readers.push(u);
    }
    // Ana follows the first reader back: the reply is not a message request.
    follow(&ana, readers[0].id).await;
    let mut trays = Vec::new();
    for r in &readers {
        trays.push(r.client.stories().subscribe().await.expect("subscribed"));
    }
    let mut own = ana.client.stories().subscribe().await.expect("subscribed");
    let mut ana_chat = ana.client.chat().subscribe().await.expect("subscribed");
    let photo = support::photo(&ana.client).await;
    let story = ana
        .client
        .stories()
        .create(photo, "morning", Audience::Followers, Some("s-1"))
        .await
        .expect("story");
    for t in &mut trays {
        let u = next_story(t).await;
        assert_eq!(
            (u.kind, u.author_id, u.story_id),
            (StoryEventKind::Created, ana.id, story.story_id)
        );
    }
    let viewer = &readers[0];
    let tray = viewer.client.stories().tray(20, None).await.expect("tray");
    let entries = tray.entries.expect("entries");
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].all_seen);
    viewer
        .client
        .stories()
        .seen(&[story.story_id])
        .await
        .expect("seen");
    let u = next_story(&mut own).await;
    assert_eq!(u.kind, StoryEventKind::Viewed);
    assert_eq!(u.actor.as_ref().map(|a| a.user_id), Some(viewer.id));
    viewer
        .client
        .stories()
        .react(story.story_id, "😍")
        .await
        .expect("reacted");
    assert_eq!(next_story(&mut own).await.kind, StoryEventKind::Reacted);
    let viewers = ana
        .client
        .stories()
        .viewers(story.story_id, 10, None)
        .await
        .expect("viewers");
    assert_eq!(viewers.total_count, 1);
    viewer
        .client
        .stories()
        .reply(story.story_id, "gorgeous", "r-1")
        .await
        .expect("replied");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ana_chat.next())
            .await
            .expect("in time")
            .expect("an event");
        let e = push_event(&frame).expect("a chat event");
        if e.kind == ChatEventKind::MessageCreated {
            let m = e.message.expect("message");
            assert_eq!(m.kind, MessageKind::StoryReply);
            assert_eq!(m.text.as_deref(), Some("gorgeous"));
            break;
        }
    }
    // Only the author lists viewers; nobody follows someone else's tray.
    assert!(
        viewer
            .client
            .stories()
            .viewers(story.story_id, 10, None)
            .await
            .is_err()
    );
}

/// Notifications through real edges: a follow, a mention and reactions by users on other
/// shards reach the recipient live, aggregated, with the unread count; mark-read clears
/// it.
async fn notifications_arrive_live_and_aggregate(backend: Backend) {
    use selfie_protocol::notifications::NotificationKind;
    use selfie_protocol::posts::{PostsOpT, ReactRequestT};

    let node = support::start_parts(&parts(backend).await);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let mut fans = Vec::new();
    for i in 0..3 {
        fans.push(sign_up(&node, &anon, &format!("fan{i}")).await);
    }
    let mut live = ana
        .client
        .notifications()
        .subscribe()
        .await
        .expect("subscribed");
    follow(&fans[0], ana.id).await;
    let e = next_notification(&mut live).await;
    let n = e.notification.expect("notification");
    assert_eq!(n.kind, NotificationKind::Follow);
    assert_eq!(n.actor.map(|a| a.user_id), Some(fans[0].id));
    assert_eq!(e.unread_notifications, 1);
    create_post(&fans[1].client, "look @ana").await;
    let e = next_notification(&mut live).await;
    assert_eq!(
        e.notification.map(|n| n.kind),
        Some(NotificationKind::Mention)
    );
    // Mentioned in a followers-only post of someone she does not follow: she may not
    // read it, so she is not told (the count of notifications below says so).
    let mut hidden = selfie_protocol::posts::CreatePostRequestT::default();
    hidden.text = Some("psst @ana".into());
    hidden.audience = selfie_protocol::common::Audience::Followers;
    call(
        &fans[2].client,
        support::posts(PostsOpT::CreatePostRequest(Box::new(hidden))),
    )
    .await
    .expect("posted");
    let post = create_post(&ana.client, "react to this").await;
    for f in &fans {
        let mut r = ReactRequestT::default();
        r.target_kind = selfie_protocol::common::ObjectKind::Post;
        r.target_id = post;
        r.emoji = Some("🔥".into());
        call(
            &f.client,
            support::posts(PostsOpT::ReactRequest(Box::new(r))),
        )
        .await
        .expect("reacted");
    }
    let mut last = None;
    for _ in 0..3 {
        last = next_notification(&mut live).await.notification;
    }
    let last = last.expect("notification");
    assert_eq!(
        (last.kind, last.actors_count, last.target_id),
        (NotificationKind::Reaction, 3, post)
    );
    let page = ana
        .client
        .notifications()
        .list(false, 20, None)
        .await
        .expect("page");
    assert_eq!(page.unread_count, 3);
    let items = page.notifications.expect("items");
    assert_eq!(items.len(), 3, "follow, mention, reactions");
    ana.client
        .notifications()
        .mark_read(items[0].notification_id, &[])
        .await
        .expect("read");
    let page = ana
        .client
        .notifications()
        .list(true, 20, None)
        .await
        .expect("page");
    assert_eq!(page.unread_count, 0);
    assert!(page.notifications.unwrap_or_default().is_empty());
}

/// A post by `c` with `audience`.
async fn post_to(c: &Client, text: &str, audience: selfie_protocol::common::Audience) -> u64 {
    let mut r = selfie_protocol::posts::CreatePostRequestT::default();
    r.text = Some(text.into());
    r.audience = audience;
    c.posts().create(r).await.expect("posted").post_id
}

/// Waits until `reader`'s home page shows `post_id` (a large author's post is merged at
/// read time once the author is on the large-authors list).
async fn until_in_home(reader: &User, post_id: u64) {
    for _ in 0..200 {
        let page = readable(|| async { reader.client.feed().home(20, None).await })
            .await
            .expect("a page");
        if page
            .items
            .iter()
            .flatten()
            .any(|i| i.post.as_ref().is_some_and(|p| p.post_id == post_id))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("post {post_id} never reached the home page");
}

/// A large author (more followers than `fanout_threshold`) is not fanned out, yet the
/// connected followers on both shards get the "new posts" push and the new story, each
/// re-checked: a muting or blocked follower gets nothing, a close-friends post reaches
/// only the close friend. Closing the tray subscription leaves the home feed's watch;
/// when every subscription closes, the watches end after their linger (no topic left).
async fn large_authors_posts_and_stories_are_pushed_live(backend: Backend) {
    use selfie_protocol::common::Audience;
    use selfie_protocol::graph::{CloseFriendsUpdateRequestT, MuteRequestT};
    use selfie_protocol::stories::StoryEventKind;

    let mut parts = parts(backend).await;
    parts.feed.fanout_threshold = 2;
    parts.feed.large_refresh = Duration::ZERO;
    parts.feed.push_interval = Duration::from_millis(100);
    parts.feed.watch_linger = Duration::from_millis(300);
    let node = support::start_parts(&parts);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let star = sign_up(&node, &anon, "star").await;
    let small = sign_up(&node, &anon, "small").await;
    let mut readers = Vec::new();
    for i in 0..4 {
        let u = sign_up(&node, &anon, &format!("fan{i}")).await;
        follow(&u, star.id).await;
        readers.push(u);
    }
    follow(&readers[3], small.id).await;
    follow(&readers[2], small.id).await;
    // Four followers: the first post puts the star on the large-authors list.
    let warm = create_post(&star.client, "warm-up").await;
    until_in_home(&readers[0], warm).await;
    let mut m = MuteRequestT::default();
    m.target_id = star.id;
    call(
        &readers[3].client,
        graph(GraphOpT::MuteRequest(Box::new(m))),
    )
    .await
    .expect("muted");
    let mut cf = CloseFriendsUpdateRequestT::default();
    cf.add = Some(vec![readers[0].id]);
    call(
        &star.client,
        graph(GraphOpT::CloseFriendsUpdateRequest(Box::new(cf))),
    )
    .await
    .expect("close friend");
    let mut live = Vec::new();
    for r in &readers {
        live.push(r.client.feed().subscribe(None).await.expect("subscribed"));
        // What an app does next: read the page (which also refreshes the watch).
        r.client.feed().home(20, None).await.expect("page");
    }
    let mut trays = Vec::new();
    for r in &readers[..2] {
        trays.push(r.client.stories().subscribe().await.expect("subscribed"));
        r.client.stories().tray(20, None).await.expect("tray");
    }

    let p1 = create_post(&star.client, "to everyone").await;
    for s in &mut live[..3] {
        let u = next_update_past(s, warm).await;
        assert_eq!((u.new_items, u.latest_post_id), (1, p1));
    }
    // The muting follower's first push is the small account's post, not the star's (the
    // third follower follows both).
    let s1 = create_post(&small.client, "from a small account").await;
    let u = next_update(&mut live[2]).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, s1));
    let u = next_update_past(&mut live[3], warm).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, s1));

    // The star blocks a watching follower: told of nothing more from the star (its first
    // push from now on is the small account's).
    star.client
        .graph()
        .block(readers[2].id)
        .await
        .expect("blocked");

    // Close friends only: the close friend is told; the next push to another follower is
    // the public post after it, alone.
    tokio::time::sleep(parts.feed.push_interval).await;
    let p2 = post_to(&star.client, "close friends", Audience::CloseFriends).await;
    let u = next_update(&mut live[0]).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, p2));
    tokio::time::sleep(parts.feed.push_interval).await;
    let p3 = create_post(&star.client, "public again").await;
    let u = next_update(&mut live[1]).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, p3));
    let page = readers[1].client.feed().home(20, None).await.expect("page");
    let ids: Vec<u64> = page
        .items
        .iter()
        .flatten()
        .filter_map(|i| i.post.as_ref().map(|p| p.post_id))
        .collect();
    assert_eq!(ids, vec![p3, p1, warm], "the push matches the page");
    let s2 = create_post(&small.client, "after the block").await;
    let u = next_update(&mut live[2]).await;
    assert_eq!(
        (u.new_items, u.latest_post_id),
        (1, s2),
        "the blocked follower"
    );

    // A story reaches the tray subscribers live.
    let photo = support::photo(&star.client).await;
    let story = star
        .client
        .stories()
        .create(photo, "live", Audience::Followers, Some("s-1"))
        .await
        .expect("story");
    for t in &mut trays {
        let u = next_story(t).await;
        assert_eq!(
            (u.kind, u.author_id, u.story_id),
            (StoryEventKind::Created, star.id, story.story_id)
        );
    }

    // Closing one kind of subscription leaves the other's watch: the home feed is still
    // told.
    drop(trays.remove(0));
    tokio::time::sleep(parts.feed.watch_linger * 2).await;
    let p4 = create_post(&star.client, "after the tray closed").await;
    // (The push of the earlier public post may still be unread.)
    while next_update(&mut live[0]).await.latest_post_id != p4 {}

    // The author's internal activity topic is not for clients.
    let refused = readers[2]
        .client
        .subscribe(
            selfie_protocol::control::SubscriptionKind(200),
            star.id,
            None,
        )
        .await;
    assert!(refused.is_err());

    // Every subscription closed: the watches end with them.
    drop(live);
    drop(trays);
    for r in readers {
        r.client.close();
    }
    let m = &node.plane.metrics.delivery;
    let settled = tokio::time::timeout(Duration::from_secs(20), async {
        while m.topics.get() != 0 || m.subscribers.get() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "topics {} subscribers {} left",
        m.topics.get(),
        m.subscribers.get()
    );
}

/// On a fleet (one store, real Redis), a large author's post made on one node is pushed
/// to a connected follower on another: one activity event crosses the bus, and the
/// follower's node re-checks and pushes.
async fn a_large_authors_post_on_one_node_is_pushed_to_a_reader_on_another(backend: Backend) {
    let redis = selfie_storage::redis::testing::RedisServer::start()
        .expect("redis-server must be installed");
    let mut parts = parts(backend).await;
    parts.feed.fanout_threshold = 0;
    parts.feed.large_refresh = Duration::ZERO;
    let a = support::fleet_node(&parts, &redis.url);
    let b = support::fleet_node(&parts, &redis.url);
    let anon_a = Client::connect(config(&a.node, None))
        .await
        .expect("session");
    let anon_b = Client::connect(config(&b.node, None))
        .await
        .expect("session");
    let star = sign_up(&a.node, &anon_a, "star").await;
    let ben = sign_up(&b.node, &anon_b, "ben").await;
    follow(&ben, star.id).await;
    let warm = create_post(&star.client, "warm-up").await;
    until_in_home(&ben, warm).await;
    let mut live = ben.client.feed().subscribe(None).await.expect("subscribed");
    ben.client.feed().home(20, None).await.expect("page");
    let id = create_post(&star.client, "from node a").await;
    let u = next_update_past(&mut live, warm).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, id));
}

/// The next feed update pushed to `s`, past a late one for `warm` (the post that made
/// an author large is fanned out, and its push may land after the subscription).
async fn next_update_past(s: &mut Subscription, warm: u64) -> FeedUpdateT {
    let u = next_update(s).await;
    if u.latest_post_id == warm {
        return next_update(s).await;
    }
    u
}

/// Rows in one partition of `table`.
async fn rows_in(
    store: &selfie_storage::any::AnyStore,
    table: &'static selfie_storage::Table,
    id: u64,
) -> usize {
    use selfie_storage::Store;
    store
        .scan(
            table,
            &selfie_services::tables::key(id),
            &selfie_storage::Scan::all(1000),
        )
        .await
        .expect("scan")
        .rows
        .len()
}

/// Deleting an account erases what the feed, stories and notifications kept for it —
/// home timeline, "not interested" marks, stories with their viewer lists, highlights,
/// tray, inbox, push tokens — and deletes its posts, not only hides them.
async fn a_deleted_accounts_feed_stories_and_notifications_are_erased(backend: Backend) {
    use selfie_protocol::auth::{AccountDeleteRequestT, AuthOpT};
    use selfie_protocol::common::Audience;
    use selfie_protocol::notifications::PushPlatform;
    use selfie_services::tables::{feed, notifications, posts, stories};

    let parts = parts(backend).await;
    let node = support::start_parts(&parts);
    let store = &parts.store;
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    follow(&ana, ben.id).await;
    follow(&ben, ana.id).await;
    let from_ben = create_post(&ben.client, "from ben").await;
    until_in_home(&ana, from_ben).await;
    let other = create_post(&ben.client, "not for me").await;
    until_in_home(&ana, other).await;
    ana.client
        .feed()
        .not_interested(other, 0)
        .await
        .expect("marked");
    let own = create_post(&ana.client, "ana's post").await;
    until_in_home(&ben, own).await;
    let photo = support::photo(&ana.client).await;
    let story = ana
        .client
        .stories()
        .create(photo, "kept", Audience::Followers, Some("s-1"))
        .await
        .expect("story");
    ana.client
        .stories()
        .highlight(story.story_id)
        .await
        .expect("highlighted");
    ben.client
        .stories()
        .seen(&[story.story_id])
        .await
        .expect("seen");
    ana.client
        .notifications()
        .register_push_token(PushPlatform::Fcm, "fcm-token-of-ana", "phone")
        .await
        .expect("token");
    // The follow notification (recorded asynchronously on Ana's owner shard).
    for _ in 0..200 {
        if rows_in(store, &notifications::INBOX, ana.id).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tables: [(&str, &'static selfie_storage::Table, u64); 9] = [
        ("home", &feed::HOME, ana.id),
        ("not interested", &feed::HIDDEN, ana.id),
        ("posts", &posts::USER_POSTS, ana.id),
        ("stories", &stories::BY_AUTHOR, ana.id),
        ("highlights", &stories::HIGHLIGHTS, ana.id),
        ("viewers", &stories::SEEN, story.story_id),
        ("inbox", &notifications::INBOX, ana.id),
        ("groups", &notifications::GROUPS, ana.id),
        ("push tokens", &notifications::PUSH_TOKENS, ana.id),
    ];
    for (what, table, id) in tables {
        assert!(rows_in(store, table, id).await > 0, "{what} written");
    }

    let mut r = AccountDeleteRequestT::default();
    r.password = Some(ana.password.clone());
    call(
        &ana.client,
        support::auth(AuthOpT::AccountDeleteRequest(Box::new(r))),
    )
    .await
    .expect("account deleted");
    for (what, table, id) in tables {
        assert_eq!(rows_in(store, table, id).await, 0, "{what} erased");
    }
    assert_eq!(
        rows_in(store, &stories::STORIES, story.story_id).await,
        0,
        "the story erased"
    );
    // The post is a tombstone now: no text left in storage.
    let stored = selfie_storage::Store::get(
        store,
        &posts::POSTS,
        &selfie_services::tables::key(own),
        &[],
    )
    .await
    .expect("read")
    .unwrap_or_default();
    assert!(!stored.windows(10).any(|w| w == b"ana's post"));
    // Nothing of Ben's went with it.
    assert_eq!(rows_in(store, &posts::USER_POSTS, ben.id).await, 2);
    assert!(rows_in(store, &feed::HOME, ben.id).await >= 2);
    assert!(rows_in(store, &notifications::INBOX, ben.id).await > 0);
    assert!(ben.client.posts().get(own).await.is_err());
}

/// Followers already connected when an account becomes large: the post that makes it
/// large is fanned out to them as before, and their owner shards adopt the new large
/// author by themselves (no page read), so the next post is pushed through the watch.
async fn followers_connected_when_an_account_becomes_large_keep_getting_pushes(backend: Backend) {
    let mut parts = parts(backend).await;
    parts.feed.fanout_threshold = 2;
    parts.feed.large_refresh = Duration::ZERO;
    parts.feed.adopt_every = Duration::from_millis(50);
    let node = support::start_parts(&parts);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let star = sign_up(&node, &anon, "star").await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let u = sign_up(&node, &anon, &format!("fan{i}")).await;
        follow(&u, star.id).await;
        readers.push(u);
    }
    let mut live = Vec::new();
    for r in &readers {
        live.push(r.client.feed().subscribe(None).await.expect("subscribed"));
    }
    let m = &node.plane.metrics.delivery;
    let before = m.topics.get();
    // Three followers: this post makes the star large, and still reaches everyone.
    let first = create_post(&star.client, "now large").await;
    for s in &mut live {
        let u = next_update(s).await;
        assert_eq!((u.new_items, u.latest_post_id), (1, first));
    }
    // Each reader's owner shard adopts the star: one activity topic per such shard.
    let shards: std::collections::HashSet<usize> = readers
        .iter()
        .map(|r| node.plane.shards().owner_of(r.id))
        .collect();
    let adopted = tokio::time::timeout(Duration::from_secs(20), async {
        while m.topics.get() < before + shards.len() as i64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(adopted.is_ok(), "the new large author was adopted");
    let next = create_post(&star.client, "through the watch").await;
    for s in &mut live {
        let u = next_update(s).await;
        assert_eq!((u.new_items, u.latest_post_id), (1, next));
    }
    // The page shows each post once (the first is in the timeline and in the merge).
    let page = readers[0].client.feed().home(20, None).await.expect("page");
    let ids: Vec<u64> = page
        .items
        .iter()
        .flatten()
        .filter_map(|i| i.post.as_ref().map(|p| p.post_id))
        .collect();
    assert_eq!(ids, vec![next, first]);
}

/// A connected reader who follows an account that is already large is told of its next
/// post without reading a page first: the new follow edge starts the watch.
async fn a_new_follow_of_a_large_account_is_pushed_live_without_a_page_read(backend: Backend) {
    let mut parts = parts(backend).await;
    parts.feed.fanout_threshold = 1;
    parts.feed.large_refresh = Duration::ZERO;
    parts.feed.push_interval = Duration::from_millis(50);
    let node = support::start_parts(&parts);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let star = sign_up(&node, &anon, "star").await;
    let reader = sign_up(&node, &anon, "reader").await;
    for i in 0..2 {
        let fan = sign_up(&node, &anon, &format!("fan{i}")).await;
        follow(&fan, star.id).await;
    }
    // Two followers over a threshold of one: this post puts the star on the list.
    let warm = create_post(&star.client, "warm-up").await;
    let mut live = reader
        .client
        .feed()
        .subscribe(None)
        .await
        .expect("subscribed");
    let page = reader.client.feed().home(20, None).await.expect("page");
    assert!(
        page.items.iter().flatten().next().is_none(),
        "follows no one yet"
    );
    let m = &node.plane.metrics.delivery;
    let before = m.topics.get();
    follow(&reader, star.id).await;
    // The reader's owner shard starts following the star's activity: one topic more.
    let watched = tokio::time::timeout(Duration::from_secs(20), async {
        while m.topics.get() <= before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(watched.is_ok(), "the new follow was watched");
    let id = create_post(&star.client, "to the new follower").await;
    let u = next_update(&mut live).await;
    assert_eq!((u.new_items, u.latest_post_id), (1, id));
    let page = reader.client.feed().home(20, None).await.expect("page");
    let ids: Vec<u64> = page
        .items
        .iter()
        .flatten()
        .filter_map(|i| i.post.as_ref().map(|p| p.post_id))
        .collect();
    assert_eq!(ids, vec![id, warm], "the push matches the page");
}

/// Runs `read` again while it is rate limited (a polling test reaches the read limits):
/// its answer, or `None` for a refusal that hides what was asked for (not found,
/// forbidden, blocked). Any other error fails the test.
async fn readable<T, F, Fut>(mut read: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, selfie_client::ClientError>>,
{
    use selfie_protocol::ErrorCode;
    loop {
        match read().await {
            Ok(v) => return Some(v),
            Err(e) => match e.code() {
                Some(ErrorCode::RateLimited) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Some(ErrorCode::NotFound | ErrorCode::Forbidden | ErrorCode::Blocked) => {
                    return None;
                }
                _ => panic!("not a refusal that hides: {e}"),
            },
        }
    }
}

/// The items of `reader`'s home feed as (text, reposted by), newest first, paged
/// through in pages of `limit`.
async fn home_items(reader: &User, limit: u16) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = readable(|| async { reader.client.feed().home(limit, cursor.clone()).await })
            .await
            .expect("a page");
        out.extend(page.items.iter().flatten().map(|i| {
            (
                i.post
                    .as_ref()
                    .and_then(|p| p.text.clone())
                    .unwrap_or_default(),
                i.reposted_by.as_ref().and_then(|u| u.username.clone()),
            )
        }));
        match page.page.and_then(|p| p.next_cursor) {
            Some(next) if !next.is_empty() => cursor = Some(next),
            _ => return out,
        }
    }
}

/// The texts of `reader`'s home feed, newest first.
async fn home_texts(reader: &User) -> Vec<String> {
    home_items(reader, 50)
        .await
        .into_iter()
        .map(|(text, _)| text)
        .collect()
}

/// Waits until `reader`'s home feed reads `expected`, newest first (the fan-out is
/// asynchronous).
async fn until_home(reader: &User, expected: &[&str]) {
    let mut texts = Vec::new();
    for _ in 0..200 {
        texts = home_texts(reader).await;
        if texts == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{}'s home feed reads {texts:?}, not {expected:?}",
        reader.name
    );
}

/// The texts of `user_id`'s posts on their profile feed as `reader` may read it (a
/// refusal reads as nothing).
async fn profile_texts(reader: &User, user_id: u64) -> Vec<String> {
    readable(|| async { reader.client.feed().user(user_id, 50, None).await })
        .await
        .map(|page| {
            page.items
                .iter()
                .flatten()
                .filter_map(|i| i.post.as_ref().and_then(|p| p.text.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `reader`'s tray: (author, story ids), sorted.
async fn tray(reader: &User) -> Vec<(u64, Vec<u64>)> {
    let tray = readable(|| async { reader.client.stories().tray(50, None).await })
        .await
        .expect("a tray");
    let mut out: Vec<(u64, Vec<u64>)> = tray
        .entries
        .iter()
        .flatten()
        .map(|e| {
            (
                e.author.as_ref().map_or(0, |a| a.user_id),
                e.stories.iter().flatten().map(|s| s.story_id).collect(),
            )
        })
        .collect();
    for (_, stories) in &mut out {
        stories.sort();
    }
    out.sort();
    out
}

/// Waits until `reader`'s tray reads `expected` (stories reach trays asynchronously).
async fn until_tray(reader: &User, expected: &[(u64, Vec<u64>)]) {
    let mut got = Vec::new();
    for _ in 0..200 {
        got = tray(reader).await;
        if got == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{}'s tray reads {got:?}, not {expected:?}", reader.name);
}

/// The ids of `author`'s live stories that `reader` may see (a refusal reads as none).
async fn stories_of(reader: &User, author: u64) -> Vec<u64> {
    readable(|| async { reader.client.stories().of_user(author).await })
        .await
        .map(|stories| stories.iter().map(|s| s.story_id).collect())
        .unwrap_or_default()
}

/// `reader` may not read post `id`, and is not told that it exists.
async fn assert_hidden(reader: &User, id: u64) {
    let got = reader.client.posts().get(id).await;
    assert_eq!(
        got.as_ref().err().and_then(|e| e.code()),
        Some(selfie_protocol::ErrorCode::NotFound),
        "{} reads post {id}: {got:?}",
        reader.name
    );
}

/// Privacy and its propagation through real edges and SDK clients: a private account's
/// posts and stories reach approved followers only; close-friends posts and stories
/// reach close friends only; a mentioned-only post reaches the mentioned; direct reads
/// (by id, profile feed, a user's stories) re-check the same rules; removing a close
/// friend, muting, unfollowing, blocking and deleting take effect at once.
async fn privacy_rules_hold_on_every_read_path(backend: Backend) {
    use selfie_protocol::common::Audience;
    use selfie_protocol::graph::{Direction, FollowState};

    let node = support::start_parts(&parts(backend).await);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    let dan = sign_up(&node, &anon, "dan").await;
    let eve = sign_up(&node, &anon, "eve").await;
    let fay = sign_up(&node, &anon, "fay").await;
    // Ben is private; Cat's request to follow him is approved, Dan's waits. Cat is Ana's
    // close friend; Eve follows only Fay.
    support::make_private(&ben).await;
    for (who, whom) in [(&cat, &ana), (&dan, &ana), (&eve, &fay)] {
        let state = who.client.graph().follow(whom.id).await.expect("follow");
        assert_eq!(state, FollowState::Following);
    }
    for who in [&cat, &dan] {
        let state = who.client.graph().follow(ben.id).await.expect("follow");
        assert_eq!(state, FollowState::Requested);
    }
    let incoming = ben
        .client
        .graph()
        .follow_requests(Direction::Incoming, 10, None)
        .await
        .expect("requests");
    let mut asking: Vec<u64> = incoming.users.iter().flatten().map(|u| u.user_id).collect();
    asking.sort();
    assert_eq!(asking, vec![cat.id, dan.id]);
    ben.client.graph().approve(cat.id).await.expect("approved");
    ana.client
        .graph()
        .close_friends(&[cat.id], &[])
        .await
        .expect("close friend");

    let ana_public = post_to(&ana.client, "ana public", Audience::Public).await;
    let ben_private = post_to(&ben.client, "ben private", Audience::Public).await;
    let ana_cf = post_to(&ana.client, "ana close friends", Audience::CloseFriends).await;
    let ana_followers = post_to(&ana.client, "ana followers", Audience::Followers).await;
    let ana_mention = post_to(&ana.client, "ana to @eve only", Audience::MentionedOnly).await;
    until_home(
        &cat,
        &[
            "ana followers",
            "ana close friends",
            "ben private",
            "ana public",
        ],
    )
    .await;
    until_home(&dan, &["ana followers", "ana public"]).await;
    until_home(
        &ana,
        &[
            "ana to @eve only",
            "ana followers",
            "ana close friends",
            "ana public",
        ],
    )
    .await;
    // Eve follows neither: her home feed has nothing of Ana's, though she is mentioned
    // (told once a later post of the account she follows has reached it).
    create_post(&fay.client, "fay hello").await;
    until_home(&eve, &["fay hello"]).await;
    // Every direct read re-checks.
    for (reader, id) in [
        (&dan, ben_private),
        (&eve, ben_private),
        (&dan, ana_cf),
        (&eve, ana_cf),
        (&eve, ana_followers),
        (&cat, ana_mention),
        (&dan, ana_mention),
    ] {
        assert_hidden(reader, id).await;
    }
    let mentioned = eve
        .client
        .posts()
        .get(ana_mention)
        .await
        .expect("mentioned");
    assert_eq!(mentioned.text.as_deref(), Some("ana to @eve only"));
    assert!(profile_texts(&dan, ben.id).await.is_empty());
    assert_eq!(profile_texts(&cat, ben.id).await, vec!["ben private"]);
    let eve_reads = profile_texts(&eve, ana.id).await;
    assert!(
        eve_reads.contains(&"ana public".to_string()),
        "{eve_reads:?}"
    );
    assert!(
        !eve_reads
            .iter()
            .any(|t| t == "ana followers" || t == "ana close friends"),
        "{eve_reads:?}"
    );
    assert_eq!(
        profile_texts(&dan, ana.id).await,
        vec!["ana followers", "ana public"]
    );

    // Stories: the private Ben's reach Cat (approved), not Dan (who asked); Ana's
    // close-friends story reaches Cat alone, her followers story both.
    let photo = support::photo(&ben.client).await;
    let ben_story = ben
        .client
        .stories()
        .create(photo, "private story", Audience::Followers, Some("b-1"))
        .await
        .expect("story")
        .story_id;
    let photo = support::photo(&ana.client).await;
    let ana_cf_story = ana
        .client
        .stories()
        .create(
            photo,
            "for close friends",
            Audience::CloseFriends,
            Some("a-1"),
        )
        .await
        .expect("story")
        .story_id;
    let photo = support::photo(&ana.client).await;
    let ana_story = ana
        .client
        .stories()
        .create(photo, "for followers", Audience::Followers, Some("a-2"))
        .await
        .expect("story")
        .story_id;
    let photo = support::photo(&fay.client).await;
    let fay_story = fay
        .client
        .stories()
        .create(photo, "fay's", Audience::Followers, Some("f-1"))
        .await
        .expect("story")
        .story_id;
    let mut ana_both = vec![ana_cf_story, ana_story];
    ana_both.sort();
    let mut expected = vec![(ana.id, ana_both), (ben.id, vec![ben_story])];
    expected.sort();
    until_tray(&cat, &expected).await;
    until_tray(&dan, &[(ana.id, vec![ana_story])]).await;
    until_tray(&eve, &[(fay.id, vec![fay_story])]).await;
    assert!(stories_of(&dan, ben.id).await.is_empty());
    assert_eq!(stories_of(&dan, ana.id).await, vec![ana_story]);
    assert!(stories_of(&eve, ana.id).await.is_empty());
    assert_eq!(stories_of(&cat, ben.id).await, vec![ben_story]);
    // Marking seen a story one may not see records nothing; reacting to it is refused as
    // if it did not exist.
    dan.client
        .stories()
        .seen(&[ben_story])
        .await
        .expect("accepted, ignored");
    let viewers = ben
        .client
        .stories()
        .viewers(ben_story, 10, None)
        .await
        .expect("viewers");
    assert_eq!(viewers.total_count, 0);
    let refused = dan.client.stories().react(ben_story, "👀").await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(selfie_protocol::ErrorCode::NotFound)
    );

    // No longer a close friend: the post and the story are gone for Cat at once.
    ana.client
        .graph()
        .close_friends(&[], &[cat.id])
        .await
        .expect("removed");
    assert_eq!(
        home_texts(&cat).await,
        vec!["ana followers", "ben private", "ana public"]
    );
    assert_hidden(&cat, ana_cf).await;
    let mut expected = vec![(ana.id, vec![ana_story]), (ben.id, vec![ben_story])];
    expected.sort();
    assert_eq!(tray(&cat).await, expected);
    assert_eq!(stories_of(&cat, ana.id).await, vec![ana_story]);

    // Mute hides, unmute shows again; unfollow hides.
    dan.client.graph().mute(ana.id, None).await.expect("muted");
    assert!(home_texts(&dan).await.is_empty());
    dan.client.graph().unmute(ana.id).await.expect("unmuted");
    assert_eq!(home_texts(&dan).await, vec!["ana followers", "ana public"]);
    dan.client
        .graph()
        .unfollow(ana.id)
        .await
        .expect("unfollowed");
    assert!(home_texts(&dan).await.is_empty());

    // Ana blocks Cat: nothing of Ana's reaches Cat by any path, and Cat cannot follow
    // her again.
    ana.client.graph().block(cat.id).await.expect("blocked");
    assert_eq!(home_texts(&cat).await, vec!["ben private"]);
    assert_hidden(&cat, ana_public).await;
    assert!(profile_texts(&cat, ana.id).await.is_empty());
    assert_eq!(tray(&cat).await, vec![(ben.id, vec![ben_story])]);
    assert!(stories_of(&cat, ana.id).await.is_empty());
    assert_eq!(
        code(cat.client.graph().follow(ana.id).await),
        Some(selfie_protocol::ErrorCode::Blocked)
    );
    // Unblocking does not bring back the follow the block ended.
    ana.client.graph().unblock(cat.id).await.expect("unblocked");
    assert_eq!(home_texts(&cat).await, vec!["ben private"]);

    // Deleting a post takes it out of every feed and every read.
    ben.client
        .posts()
        .delete(ben_private)
        .await
        .expect("deleted");
    assert!(home_texts(&cat).await.is_empty());
    assert_hidden(&cat, ben_private).await;
    assert!(profile_texts(&cat, ben.id).await.is_empty());
    // Deleting a story takes it out of the tray.
    ben.client
        .stories()
        .delete(ben_story)
        .await
        .expect("deleted");
    assert!(tray(&cat).await.is_empty());
}

/// The error code of a refused call.
fn code<T: std::fmt::Debug>(
    r: Result<T, selfie_client::ClientError>,
) -> Option<selfie_protocol::ErrorCode> {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e.code(),
    }
}

/// Stories through real edges on an injected clock (no waiting a day): a story vanishes
/// from the tray, the author's stories, the viewer list and every action 24 hours after
/// it was posted, on both backends; a highlight outlives it, for the author's followers
/// only, until the author removes it. (On CQL the rows' real-time TTLs do not fire
/// within the test: there it is the services' read-time expiry on the injected clock
/// that hides them.)
async fn stories_expire_everywhere_and_highlights_stay(backend: Backend) {
    use selfie_protocol::ErrorCode;
    use selfie_protocol::common::Audience;

    let clock = support::ManualClock::new();
    let node = support::start_parts(&support::parts_on(backend, clock.clone()).await);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let cat = sign_up(&node, &anon, "cat").await;
    let eve = sign_up(&node, &anon, "eve").await;
    follow(&cat, ana.id).await;
    follow(&ana, cat.id).await;
    let photo = support::photo(&ana.client).await;
    let s1 = ana
        .client
        .stories()
        .create(photo, "first", Audience::Followers, Some("s-1"))
        .await
        .expect("story")
        .story_id;
    clock.advance(Duration::from_secs(2 * 3600));
    let photo = support::photo(&ana.client).await;
    let s2 = ana
        .client
        .stories()
        .create(photo, "second", Audience::Followers, Some("s-2"))
        .await
        .expect("story")
        .story_id;
    until_tray(&cat, &[(ana.id, vec![s1, s2])]).await;
    cat.client.stories().seen(&[s1, s2]).await.expect("seen");
    ana.client
        .stories()
        .highlight(s1)
        .await
        .expect("highlighted");
    assert_eq!(
        code(cat.client.stories().highlight(s2).await),
        Some(ErrorCode::NotFound),
        "only the author highlights"
    );
    let viewers = ana
        .client
        .stories()
        .viewers(s1, 10, None)
        .await
        .expect("viewers");
    assert_eq!(viewers.total_count, 1);

    // 25 hours after the first: it is gone everywhere; the second (23 hours) is not.
    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(tray(&cat).await, vec![(ana.id, vec![s2])]);
    assert_eq!(stories_of(&cat, ana.id).await, vec![s2]);
    assert_eq!(stories_of(&ana, ana.id).await, vec![s2]);
    assert_eq!(
        code(ana.client.stories().viewers(s1, 10, None).await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(cat.client.stories().react(s1, "😍").await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(cat.client.stories().reply(s1, "late", "r-1").await),
        Some(ErrorCode::NotFound)
    );

    // Two more hours: nothing is left but the highlight.
    clock.advance(Duration::from_secs(2 * 3600));
    assert!(tray(&cat).await.is_empty());
    assert!(stories_of(&cat, ana.id).await.is_empty());
    assert!(stories_of(&ana, ana.id).await.is_empty());
    assert_eq!(
        code(ana.client.stories().viewers(s2, 10, None).await),
        Some(ErrorCode::NotFound)
    );
    let kept = cat
        .client
        .stories()
        .highlights(ana.id, 10, None)
        .await
        .expect("highlights");
    let kept: Vec<u64> = kept.stories.iter().flatten().map(|s| s.story_id).collect();
    assert_eq!(kept, vec![s1]);
    // Eve does not follow Ana: a followers-only highlight is not hers to see.
    let none = readable(|| async { eve.client.stories().highlights(ana.id, 10, None).await }).await;
    assert!(none.is_none_or(|h| h.stories.unwrap_or_default().is_empty()));
    ana.client
        .stories()
        .remove_highlight(s1)
        .await
        .expect("removed");
    let none = ana
        .client
        .stories()
        .highlights(ana.id, 10, None)
        .await
        .expect("highlights");
    assert!(none.stories.unwrap_or_default().is_empty());
}

/// The same story told to a node that fans every author out and to one where Ana is a
/// large account (merged into timelines at read time): through real edges, every
/// reader's home feed reads the same, paged in pages of 1, 3 and 20.
async fn hybrid_merge_reads_like_fan_out(backend: Backend) {
    use selfie_protocol::common::Audience;

    let fan_out = support::start_parts(&parts(backend).await);
    let mut merged_parts = parts(backend).await;
    merged_parts.feed.fanout_threshold = 2;
    merged_parts.feed.large_refresh = Duration::ZERO;
    let merged = support::start_parts(&merged_parts);
    let mut worlds = Vec::new();
    for node in [&fan_out, &merged] {
        let anon = Client::connect(config(node, None)).await.expect("session");
        let mut users = Vec::new();
        for name in ["ana", "ben", "cat", "dan", "eve"] {
            users.push(sign_up(node, &anon, name).await);
        }
        let [ana, ben, cat, dan, _eve] = &users[..] else {
            unreachable!()
        };
        // Ana has three followers (a large account on the second node), Ben one.
        for (x, y) in [(ben, ana), (cat, ana), (dan, ana), (cat, ben)] {
            follow(x, y.id).await;
        }
        ana.client
            .graph()
            .close_friends(&[dan.id], &[])
            .await
            .expect("close friend");
        let mut ana_posts = Vec::new();
        for i in 0..7 {
            ana_posts.push(post_to(&ana.client, &format!("ana {i}"), Audience::Public).await);
            post_to(&ben.client, &format!("ben {i}"), Audience::Public).await;
            if i % 3 == 0 {
                post_to(&ana.client, &format!("ana cf {i}"), Audience::CloseFriends).await;
            }
        }
        ana.client
            .posts()
            .delete(ana_posts[2])
            .await
            .expect("deleted");
        // Ben reposts one of Ana's posts: Cat, who follows both, sees it once.
        ben.client
            .posts()
            .repost(ana_posts[5])
            .await
            .expect("reposted");
        post_to(&ben.client, "ben last", Audience::Public).await;
        worlds.push((anon, users));
    }
    // The second node merges Ana, and only Ana, at read time.
    let large = selfie_storage::Store::scan(
        &merged_parts.store,
        &selfie_services::tables::feed::LARGE_AUTHORS,
        &selfie_services::tables::key(0),
        &selfie_storage::Scan::all(10),
    )
    .await
    .expect("scan");
    assert_eq!(large.rows.len(), 1, "Ana alone is a large account");
    // What each reader's feed holds once the fan-out is done (Ana's own included).
    for (reader, count) in [(0, 9), (1, 14), (2, 14), (3, 9), (4, 0)] {
        let user = &worlds[0].1[reader];
        let mut items = Vec::new();
        for _ in 0..200 {
            items = home_items(user, 50).await;
            if items.len() == count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(items.len(), count, "{}: {items:?}", user.name);
        assert!(!items.iter().any(|(t, _)| t == "ana 2"));
    }
    for reader in 0..5 {
        let expected = home_items(&worlds[0].1[reader], 50).await;
        for limit in [1, 3, 20] {
            let user = &worlds[1].1[reader];
            let mut got = Vec::new();
            for _ in 0..200 {
                got = home_items(user, limit).await;
                if got == expected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(got, expected, "{}, pages of {limit}", user.name);
            assert_eq!(home_items(&worlds[0].1[reader], limit).await, expected);
        }
    }
}

/// Posts arriving between pages through a real edge neither repeat nor skip anything;
/// the newer cursor then brings exactly the new ones, oldest page first.
async fn pages_neither_repeat_nor_skip_while_posts_arrive(backend: Backend) {
    let node = support::start_parts(&parts(backend).await);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    follow(&ben, ana.id).await;
    let old: Vec<String> = (0..12).rev().map(|i| format!("old {i}")).collect();
    for i in 0..12 {
        create_post(&ana.client, &format!("old {i}")).await;
    }
    let old_refs: Vec<&str> = old.iter().map(String::as_str).collect();
    until_home(&ben, &old_refs).await;
    let first = ben.client.feed().home(5, None).await.expect("page");
    let newer = first.newer_cursor.clone().expect("a newer cursor");
    let texts = |page: &selfie_protocol::feed::FeedPageT| -> Vec<String> {
        page.items
            .iter()
            .flatten()
            .filter_map(|i| i.post.as_ref().and_then(|p| p.text.clone()))
            .collect()
    };
    let next = |page: &selfie_protocol::feed::FeedPageT| {
        page.page
            .as_ref()
            .and_then(|p| p.next_cursor.clone())
            .filter(|c| !c.is_empty())
    };
    let mut seen = texts(&first);
    let mut at = next(&first);
    let mut n = 0;
    while let Some(cursor) = at {
        let new = create_post(&ana.client, &format!("new {n}")).await;
        // In the timeline before the next page is read: a pager counting by position
        // instead of by entry would repeat an item.
        until_in_home(&ben, new).await;
        n += 1;
        let page = ben.client.feed().home(5, Some(cursor)).await.expect("page");
        seen.extend(texts(&page));
        at = next(&page);
    }
    assert_eq!(seen, old);
    assert!(n >= 2);
    let mut fresh = Vec::new();
    let mut at = Some(newer);
    while let Some(cursor) = at {
        let page = ben.client.feed().home(2, Some(cursor)).await.expect("page");
        let mut t = texts(&page);
        t.reverse();
        fresh.extend(t);
        at = next(&page);
    }
    let expected: Vec<String> = (0..n).map(|i| format!("new {i}")).collect();
    assert_eq!(fresh, expected);
}

/// On a fleet (one store, real Redis), a story posted on one node reaches the tray
/// subscription of a follower connected to another, and that follower's view, reaction
/// and follow-back reach the author's story and notification subscriptions on the first.
async fn stories_and_notifications_are_pushed_across_nodes(backend: Backend) {
    use selfie_protocol::common::Audience;
    use selfie_protocol::notifications::NotificationKind;
    use selfie_protocol::stories::StoryEventKind;

    let redis = selfie_storage::redis::testing::RedisServer::start()
        .expect("redis-server must be installed");
    let parts = parts(backend).await;
    let a = support::fleet_node(&parts, &redis.url);
    let b = support::fleet_node(&parts, &redis.url);
    let anon_a = Client::connect(config(&a.node, None))
        .await
        .expect("session");
    let anon_b = Client::connect(config(&b.node, None))
        .await
        .expect("session");
    let ana = sign_up(&a.node, &anon_a, "ana").await;
    let ben = sign_up(&b.node, &anon_b, "ben").await;
    let mut ana_notes = ana
        .client
        .notifications()
        .subscribe()
        .await
        .expect("subscribed");
    let mut ana_stories = ana.client.stories().subscribe().await.expect("subscribed");
    follow(&ben, ana.id).await;
    let e = next_notification(&mut ana_notes).await;
    let n = e.notification.expect("notification");
    assert_eq!(
        (n.kind, n.actor.map(|u| u.user_id)),
        (NotificationKind::Follow, Some(ben.id))
    );
    let mut ben_tray = ben.client.stories().subscribe().await.expect("subscribed");
    let photo = support::photo(&ana.client).await;
    let story = ana
        .client
        .stories()
        .create(photo, "from node a", Audience::Followers, Some("s-1"))
        .await
        .expect("story")
        .story_id;
    let u = next_story(&mut ben_tray).await;
    assert_eq!(
        (u.kind, u.author_id, u.story_id),
        (StoryEventKind::Created, ana.id, story)
    );
    ben.client.stories().seen(&[story]).await.expect("seen");
    let u = next_story(&mut ana_stories).await;
    assert_eq!(
        (u.kind, u.actor.map(|a| a.user_id)),
        (StoryEventKind::Viewed, Some(ben.id))
    );
    ben.client
        .stories()
        .react(story, "😍")
        .await
        .expect("reacted");
    assert_eq!(
        next_story(&mut ana_stories).await.kind,
        StoryEventKind::Reacted
    );
    let e = next_notification(&mut ana_notes).await;
    assert_eq!(
        e.notification.map(|n| (n.kind, n.target_id)),
        Some((NotificationKind::StoryReaction, story))
    );
    assert_eq!(e.unread_notifications, 2);
}

/// `user`'s notifications as (kind, actors, target), sorted (waiting out the read rate
/// limit, which a polling test reaches).
async fn inbox(user: &User) -> Vec<(u8, u32, u64)> {
    let page = loop {
        match user.client.notifications().list(false, 50, None).await {
            Ok(page) => break page,
            Err(e) if e.code() == Some(selfie_protocol::ErrorCode::RateLimited) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("page: {e}"),
        }
    };
    let mut out: Vec<(u8, u32, u64)> = page
        .notifications
        .iter()
        .flatten()
        .map(|n| (n.kind.0, n.actors_count, n.target_id))
        .collect();
    out.sort();
    out
}

/// Waits until `user`'s notifications are `expected` (they are written asynchronously).
async fn until_inbox(
    user: &User,
    expected: &[(selfie_protocol::notifications::NotificationKind, u32, u64)],
) {
    let mut expected: Vec<(u8, u32, u64)> =
        expected.iter().map(|(k, n, t)| (k.0, *n, *t)).collect();
    expected.sort();
    let mut got = Vec::new();
    for _ in 0..200 {
        got = inbox(user).await;
        if got == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{}'s notifications are {got:?}, not {expected:?}",
        user.name
    );
}

/// Every kind of in-app notification through real edges, each to its recipient alone:
/// follows, follow requests and approvals, reactions, comments (aggregated per post),
/// replies, reposts, quotes, mentions in posts and in stories.
async fn every_kind_of_notification_reaches_its_recipient(backend: Backend) {
    use selfie_protocol::common::Audience;
    use selfie_protocol::graph::FollowState;
    use selfie_protocol::notifications::NotificationKind as Kind;

    let node = support::start_parts(&parts(backend).await);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    let dan = sign_up(&node, &anon, "dan").await;
    support::make_private(&dan).await;

    follow(&ben, ana.id).await;
    let state = ben.client.graph().follow(dan.id).await.expect("asked");
    assert_eq!(state, FollowState::Requested);
    until_inbox(&dan, &[(Kind::FollowRequest, 1, 0)]).await;
    dan.client.graph().approve(ben.id).await.expect("approved");

    let post = create_post(&ana.client, "hello").await;
    ben.client.posts().react(post, "🔥").await.expect("reacted");
    let comment = ben
        .client
        .posts()
        .comment(post, None, "nice", Some("c-1"))
        .await
        .expect("commented");
    cat.client
        .posts()
        .comment(post, Some(comment.comment_id), "agreed", Some("c-2"))
        .await
        .expect("replied");
    cat.client.posts().repost(post).await.expect("reposted");
    let mut quote = selfie_protocol::posts::CreatePostRequestT::default();
    quote.text = Some("look at this".into());
    quote.audience = Audience::Public;
    quote.quote_of = post;
    cat.client.posts().create(quote).await.expect("quoted");
    let mention = create_post(&ben.client, "hi @ana").await;
    let photo = support::photo(&cat.client).await;
    let mut story = selfie_protocol::stories::CreateStoryRequestT::default();
    story.media_id = photo;
    story.audience = Audience::Public;
    story.mentions = Some(vec![ana.id]);
    let story = match cat
        .client
        .stories()
        .call(selfie_protocol::stories::StoriesOpT::CreateStoryRequest(
            Box::new(story),
        ))
        .await
        .expect("story")
    {
        selfie_protocol::stories::StoriesOpT::StoryResponse(s) => s.story.expect("story").story_id,
        other => panic!("not a story: {other:?}"),
    };

    until_inbox(
        &ana,
        &[
            (Kind::Follow, 1, 0),
            (Kind::Reaction, 1, post),
            (Kind::Comment, 2, post),
            (Kind::Repost, 1, post),
            // Quotes are told of (and aggregated) on the quoted post.
            (Kind::Quote, 1, post),
            (Kind::Mention, 1, mention),
            (Kind::StoryMention, 1, story),
        ],
    )
    .await;
    until_inbox(
        &ben,
        &[
            (Kind::FollowAccepted, 1, 0),
            (Kind::Reply, 1, comment.comment_id),
        ],
    )
    .await;
    until_inbox(&dan, &[(Kind::FollowRequest, 1, 0)]).await;
    // Cat acted on all of it and was told of nothing (until someone acts on her).
    dan.client.graph().follow(cat.id).await.expect("followed");
    until_inbox(&cat, &[(Kind::Follow, 1, 0)]).await;
}

/// Each test above, on each storage backend (`embedded::…`, `cql::…`).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Embedded).await
                }
            )*
        }
        mod cql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Cql).await
                }
            )*
        }
    };
}

on_both_backends!(
    posts_reach_followers_feeds_live_and_coalesced,
    a_post_on_one_node_is_pushed_to_a_reader_on_another,
    stories_reach_trays_live_and_replies_arrive_in_chat,
    notifications_arrive_live_and_aggregate,
    large_authors_posts_and_stories_are_pushed_live,
    a_large_authors_post_on_one_node_is_pushed_to_a_reader_on_another,
    a_deleted_accounts_feed_stories_and_notifications_are_erased,
    followers_connected_when_an_account_becomes_large_keep_getting_pushes,
    a_new_follow_of_a_large_account_is_pushed_live_without_a_page_read,
    privacy_rules_hold_on_every_read_path,
    stories_expire_everywhere_and_highlights_stay,
    hybrid_merge_reads_like_fan_out,
    pages_neither_repeat_nor_skip_while_posts_arrive,
    stories_and_notifications_are_pushed_across_nodes,
    every_kind_of_notification_reaches_its_recipient,
);
