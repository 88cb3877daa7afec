//! Chat through real edges and real SDK clients: live delivery with receipts across
//! shards, ordering under concurrent senders, exactly-once sends across a lost answer and
//! an edge restart, a device away for over a thousand messages resuming exactly, a client
//! moved by `GoAway` to a second edge of a fleet (one store, real Redis), blocks, and
//! the durable outbox.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use selfie_client::chat::{Applied, ChatStore, push_event, text_message};
use selfie_client::{Client, Subscription};
use selfie_protocol::ErrorCode;
use selfie_protocol::chat::{ChatEventKind, ChatEventT};
use selfie_protocol::graph::{BlockRequestT, FollowRequestT, GraphOpT};
use support::{User, call, config, graph, sign_up};

async fn follow(u: &User, target: u64) {
    let mut r = FollowRequestT::default();
    r.target_id = target;
    call(&u.client, graph(GraphOpT::FollowRequest(Box::new(r))))
        .await
        .expect("followed");
}

async fn friends(a: &User, b: &User) {
    follow(a, b.id).await;
    follow(b, a.id).await;
}

/// The next chat event pushed to `s`.
async fn next_event(s: &mut Subscription) -> ChatEventT {
    let frame = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("in time")
        .expect("an event");
    push_event(&frame).expect("a chat event")
}

/// Events until one of `kind` arrives.
async fn until(s: &mut Subscription, kind: ChatEventKind) -> ChatEventT {
    loop {
        let e = next_event(s).await;
        if e.kind == kind {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_receipts_arrive_live_across_shards() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    friends(&ana, &ben).await;
    let mut ana_live = ana.client.chat().subscribe().await.expect("subscribed");
    let mut ben_live = ben.client.chat().subscribe().await.expect("subscribed");
    let c = ana.client.chat().direct(ben.id).await.expect("direct");
    let id = c.conversation_id;
    assert!(!c.request, "ben follows ana: no request");
    let created = next_event(&mut ben_live).await;
    assert_eq!(
        (created.kind, created.event_seq),
        (ChatEventKind::ConversationCreated, 1)
    );
    let sent = ana
        .client
        .chat()
        .send(id, "t-1", "hi ben")
        .await
        .expect("sent");
    let got = until(&mut ben_live, ChatEventKind::MessageCreated).await;
    let m = got.message.expect("message");
    assert_eq!((got.event_seq, m.seq), (sent.seq, sent.seq));
    assert_eq!(m.text.as_deref(), Some("hi ben"));
    assert_eq!(m.sender_id, ana.id);
    // Ben's device acknowledges, then reads: Ana sees "delivered", then "read".
    ben.client
        .chat()
        .delivered(id, sent.seq)
        .await
        .expect("ack");
    let d = until(&mut ana_live, ChatEventKind::DeliveredUpTo).await;
    assert_eq!(
        (d.actor_id, d.up_to_seq, d.event_seq),
        (ben.id, sent.seq, 0)
    );
    ben.client.chat().read(id, sent.seq).await.expect("read");
    let r = until(&mut ana_live, ChatEventKind::ReadUpTo).await;
    assert_eq!((r.actor_id, r.up_to_seq), (ben.id, sent.seq));
    // The conversation as Ana sees it now.
    let view = ana.client.chat().get(id).await.expect("view");
    let ben_row = view
        .members
        .iter()
        .flatten()
        .find(|m| m.user.as_ref().map(|u| u.user_id) == Some(ben.id))
        .expect("ben")
        .clone();
    assert_eq!(ben_row.last_read_seq, sent.seq);
    assert_eq!(ben_row.last_delivered_seq, sent.seq);
    // An edit and a reaction are log entries too, pushed in order.
    ana.client
        .chat()
        .edit(id, sent.seq, "hi ben!")
        .await
        .expect("edit");
    ben.client
        .chat()
        .react(id, sent.seq, Some("👋"))
        .await
        .expect("react");
    let e = until(&mut ben_live, ChatEventKind::MessageEdited).await;
    let x = until(&mut ben_live, ChatEventKind::ReactionAdded).await;
    assert_eq!(x.event_seq, e.event_seq + 1);
    // A stranger can do nothing with the conversation.
    let cat = sign_up(&node, &anon, "cat").await;
    let refused = cat.client.chat().send(id, "x", "let me in").await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::NotFound)
    );
    let refused = cat.client.chat().history(id, 0, 10).await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::NotFound)
    );
    // Only your own conversations can be followed.
    let other = cat
        .client
        .subscribe(
            selfie_protocol::control::SubscriptionKind::AllConversations,
            ana.id,
            None,
        )
        .await;
    assert_eq!(
        other.err().and_then(|e| e.code()),
        Some(ErrorCode::Forbidden)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_are_seen_by_everyone_in_one_dense_order() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    for (a, b) in [(&ana, &ben), (&ana, &cat), (&ben, &cat)] {
        friends(a, b).await;
    }
    let users = [&ana, &ben, &cat];
    let mut subs = Vec::new();
    for u in users {
        subs.push(u.client.chat().subscribe().await.expect("subscribed"));
    }
    let group = ana
        .client
        .chat()
        .group(&[ben.id, cat.id], "busy", "busy-1")
        .await
        .expect("group");
    let id = group.conversation_id;
    let per_sender = 40;
    let sends = users.iter().map(|u| async move {
        for i in 0..per_sender {
            let txn = format!("{}-{i}", u.id);
            u.client.chat().send(id, &txn, &txn).await.expect("sent");
        }
    });
    futures::future::join_all(sends).await;
    let total = 1 + 3 * per_sender as u64;
    // Every member receives every entry once, numbered 1..=total in order, each
    // sender's messages in the order they were sent.
    for sub in &mut subs {
        let mut seqs = Vec::new();
        let mut last_of: HashMap<u64, usize> = HashMap::new();
        while seqs.len() < total as usize {
            let e = next_event(sub).await;
            if e.event_seq == 0 {
                continue;
            }
            seqs.push(e.event_seq);
            if let Some(m) = e.message {
                let text = m.text.unwrap_or_default();
                let i: usize = text
                    .split('-')
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .expect("i");
                if let Some(prev) = last_of.insert(m.sender_id, i) {
                    assert_eq!(i, prev + 1, "sender order");
                }
            }
        }
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_stored_once_even_across_an_edge_restart() {
    let parts = support::parts();
    let tokens = support::tokens(&parts);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(parts.throttle);
    let first = support::start_with(&parts, tokens.clone(), throttle.clone());
    let anon = Client::connect(config(&first, None))
        .await
        .expect("session");
    let ana = sign_up(&first, &anon, "ana").await;
    let ben = sign_up(&first, &anon, "ben").await;
    friends(&ana, &ben).await;
    let id = ana
        .client
        .chat()
        .direct(ben.id)
        .await
        .expect("direct")
        .conversation_id;
    let sent = ana
        .client
        .chat()
        .send(id, "once", "only once")
        .await
        .expect("sent");
    // The answer was "lost": the same send again on the same connection.
    let again = ana
        .client
        .chat()
        .send(id, "once", "only once")
        .await
        .expect("retry");
    assert_eq!((again.seq, again.message_id), (sent.seq, sent.message_id));
    assert!(again.duplicate && !sent.duplicate);
    // The edge restarts (the store stays); the client reconnects and retries.
    drop((anon, ana.client, ben.client));
    first.edge.drain();
    drop(first);
    let second = support::start_with(&parts, tokens, throttle);
    let ana2 = Client::connect(config(&second, Some(ana.token.clone())))
        .await
        .expect("reconnected");
    let third = ana2
        .chat()
        .send(id, "once", "only once")
        .await
        .expect("retry");
    assert_eq!((third.seq, third.message_id), (sent.seq, sent.message_id));
    assert!(third.duplicate);
    let page = ana2.chat().history(id, 0, 50).await.expect("history");
    let texts: Vec<_> = page
        .messages
        .iter()
        .flatten()
        .filter_map(|m| m.text.clone())
        .collect();
    assert_eq!(texts, vec!["only once".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_away_for_a_thousand_messages_resumes_exactly_and_the_outbox_survives() {
    // Ana sends a thousand in a row: far past a person's send rate, which is the
    // operator's to raise.
    let mut parts = support::parts();
    parts.chat.send = selfie_services::chat::SendRate {
        burst: 10_000,
        per_minute: 10_000,
    };
    let node = support::start_parts(&parts);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    friends(&ana, &ben).await;
    let dir = tempfile::tempdir().expect("dir");
    let store = ChatStore::open(dir.path()).expect("store");
    let id = ana
        .client
        .chat()
        .direct(ben.id)
        .await
        .expect("direct")
        .conversation_id;
    ana.client
        .chat()
        .send(id, "hello", "hello")
        .await
        .expect("sent");
    // Ben's device is up to date, then goes away.
    let report = store.sync(&ben.client).await.expect("sync");
    assert_eq!(report.new, 2, "creation and hello");
    drop(ben.client);
    let away = 1_050;
    for i in 0..away {
        ana.client
            .chat()
            .send(id, &format!("m{i}"), &i.to_string())
            .await
            .expect("sent");
    }
    // While offline Ben writes two messages: queued on disk only.
    for (txn, text) in [("o1", "written offline"), ("o2", "and another")] {
        store.queue(&text_message(id, txn, text)).expect("queued");
    }
    // The app restarts: the store is opened again from disk.
    drop(store);
    let store = ChatStore::open(dir.path()).expect("reopened");
    assert_eq!(store.outbox().expect("outbox").len(), 2);
    // Back online: subscribe first, then sync from the cursor.
    let ben_client = Client::connect(config(&node, Some(ben.token.clone())))
        .await
        .expect("back");
    let mut live = ben_client.chat().subscribe().await.expect("subscribed");
    let report = store.sync(&ben_client).await.expect("sync");
    assert_eq!(report.new, away, "exactly what was missed");
    assert_eq!(report.duplicates, 0);
    let texts: Vec<String> = store
        .messages(id)
        .expect("messages")
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    let mut expected = vec!["hello".to_string()];
    expected.extend((0..away).map(|i| i.to_string()));
    assert!(texts == expected, "{} messages held", texts.len());
    // The outbox goes out once, in order, and leaves the disk.
    let results = store.flush(&ben_client).await.expect("flushed");
    let seqs: Vec<u64> = results
        .into_iter()
        .map(|r| r.expect("accepted").seq)
        .collect();
    assert_eq!(seqs.len(), 2);
    assert!(seqs[1] == seqs[0] + 1);
    assert!(store.outbox().expect("outbox").is_empty());
    // Flushing again after a crash that lost the removal: answered as duplicates.
    store
        .queue(&text_message(id, "o1", "written offline"))
        .expect("queued");
    let again = store.flush(&ben_client).await.expect("flushed");
    let dup = again.into_iter().next().expect("one").expect("answered");
    assert!(dup.duplicate && dup.seq == seqs[0]);
    // Live pushes (own sends included) then apply without gaps or repeats.
    let mut applied = 0;
    while applied < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(20), live.next())
            .await
            .expect("in time")
            .expect("push");
        match store
            .apply_push(&ben_client, &frame)
            .await
            .expect("applied")
        {
            Applied::New => applied += 1,
            Applied::Duplicate | Applied::State => {}
            Applied::Gap { .. } => panic!("a gap the store should have filled"),
        }
    }
    assert_eq!(store.position(id).expect("position"), seqs[1]);
}

/// Two edges of one fleet (one store, one signing key, one real `redis-server`): a
/// message sent on one node reaches a subscriber on the other live; when that node drains,
/// its client moves to the other node and resumes without loss or repeats, and live
/// pushes continue there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moved_by_goaway_resumes_on_another_edge_without_loss() {
    let redis = selfie_storage::redis::testing::RedisServer::start()
        .expect("redis-server must be installed");
    let parts = support::parts();
    let a = support::fleet_node(&parts, &redis.url);
    let b = support::fleet_node(&parts, &redis.url);
    let (a, b) = (&a.node, &b.node);
    let anon = Client::connect(config(a, None)).await.expect("session");
    let ana = sign_up(a, &anon, "ana").await;
    let ben = sign_up(a, &anon, "ben").await;
    friends(&ana, &ben).await;
    let ana_b = Client::connect(config(b, Some(ana.token.clone())))
        .await
        .expect("ana on b");
    let id = ana_b
        .chat()
        .direct(ben.id)
        .await
        .expect("direct")
        .conversation_id;
    let dir = tempfile::tempdir().expect("dir");
    let store = ChatStore::open(dir.path()).expect("store");
    store.sync(&ben.client).await.expect("sync");
    // Live across nodes: Ana writes on b, Ben hears it on a through the fleet's bus.
    let mut live = ben.client.chat().subscribe().await.expect("subscribed");
    ana_b.chat().send(id, "x0", "across").await.expect("sent");
    let pushed = until(&mut live, ChatEventKind::MessageCreated).await;
    assert_eq!(
        pushed.message.and_then(|m| m.text).as_deref(),
        Some("across")
    );
    store.sync(&ben.client).await.expect("sync");
    // Node a drains: Ben is told to go.
    a.edge.drain();
    ben.client
        .goaway(Duration::from_secs(5))
        .await
        .expect("GoAway");
    // Meanwhile Ana keeps writing through node b.
    for i in 0..30 {
        ana_b
            .chat()
            .send(id, &format!("g{i}"), &i.to_string())
            .await
            .expect("sent");
    }
    // Ben reconnects to node b and resumes from his cursor: exactly the 30 he missed.
    let ben_b = Client::connect(config(b, Some(ben.token.clone())))
        .await
        .expect("ben on b");
    let mut live_b = ben_b.chat().subscribe().await.expect("subscribed");
    let report = store.sync(&ben_b).await.expect("sync");
    assert_eq!((report.new, report.duplicates), (30, 0));
    let texts: Vec<String> = store
        .messages(id)
        .expect("messages")
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    let mut expected = vec!["across".to_string()];
    expected.extend((0..30).map(|i| i.to_string()));
    assert_eq!(texts, expected);
    // And live delivery goes on on the new node, straight after the resumed entries.
    ana_b.chat().send(id, "after", "after").await.expect("sent");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), live_b.next())
            .await
            .expect("in time")
            .expect("push");
        match store.apply_push(&ben_b, &frame).await.expect("applied") {
            Applied::New => break,
            Applied::Duplicate | Applied::State => {}
            Applied::Gap { .. } => panic!("a gap the store should have filled"),
        }
    }
    let last = store.messages(id).expect("messages").pop().expect("one");
    assert_eq!(last.text.as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_users_messages_are_refused_and_requests_wait() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    // Ben does not follow Ana: her conversation is a request for him.
    let id = ana
        .client
        .chat()
        .direct(ben.id)
        .await
        .expect("direct")
        .conversation_id;
    ana.client
        .chat()
        .send(id, "r1", "hi stranger")
        .await
        .expect("sent");
    let requests = ben
        .client
        .chat()
        .list(
            selfie_protocol::chat::ConversationFolder::Requests,
            20,
            None,
        )
        .await
        .expect("requests");
    let list = requests.conversations.unwrap_or_default();
    assert_eq!(list.len(), 1);
    assert!(list[0].request);
    assert_eq!(list[0].unread_count, 1);
    ben.client
        .chat()
        .answer_request(id, true)
        .await
        .expect("accepted");
    // A block refuses the conversation both ways.
    let mut r = BlockRequestT::default();
    r.target_id = ana.id;
    call(&ben.client, graph(GraphOpT::BlockRequest(Box::new(r))))
        .await
        .expect("blocked");
    for (u, txn) in [(&ana, "b1"), (&ben, "b2")] {
        let refused = u.client.chat().send(id, txn, "?").await;
        assert_eq!(
            refused.err().and_then(|e| e.code()),
            Some(ErrorCode::Blocked)
        );
    }
    // Bad input is a typed refusal.
    let long = "x".repeat(5_000);
    let refused = ana.client.chat().send(id, "long", &long).await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::InvalidArgument)
    );
    let refused = ana.client.chat().sync(&[7, 7, 7], 0, 10).await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::InvalidArgument)
    );
}

/// The next typing or presence signal `c` receives.
async fn next_signal(c: &Client) -> selfie_client::chat::Signal {
    let d = tokio::time::timeout(Duration::from_secs(20), c.recv_datagram())
        .await
        .expect("in time")
        .expect("a datagram");
    selfie_client::chat::signal(&d).expect("a signal")
}

async fn show_activity(u: &User, show: bool) {
    use selfie_protocol::users::{UpdateSettingsRequestT, UsersOpT};
    let mut r = UpdateSettingsRequestT::default();
    r.show_activity_status = Some(show);
    call(
        &u.client,
        support::users(UsersOpT::UpdateSettingsRequest(Box::new(r))),
    )
    .await
    .expect("settings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_arrive_as_datagrams_and_respect_privacy() {
    use selfie_client::chat::Signal;
    use selfie_protocol::datagram::PresenceStatus;
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    friends(&ana, &ben).await;
    let id = ana
        .client
        .chat()
        .direct(ben.id)
        .await
        .expect("direct")
        .conversation_id;
    let _signals = ben
        .client
        .chat()
        .subscribe_signals()
        .await
        .expect("subscribed");
    // A stranger's typing in the conversation goes nowhere; Ana's reaches Ben, named by
    // the server (whatever the datagram claimed).
    cat.client.chat().typing(id, true).expect("sent");
    ana.client.chat().typing(id, true).expect("sent");
    match next_signal(&ben.client).await {
        Signal::Typing {
            conversation_id,
            user,
            typing,
            ..
        } => assert_eq!((conversation_id, user, typing), (id, ana.id, true)),
        other => panic!("not typing: {other:?}"),
    }
    // Presence: Ana comes online; Ben, her direct partner, hears it and reads it.
    ana.client
        .chat()
        .presence(PresenceStatus::Online)
        .expect("sent");
    let (status, at) = loop {
        if let Signal::Presence {
            user,
            status,
            last_active_ms,
            ..
        } = next_signal(&ben.client).await
        {
            assert_eq!(user, ana.id);
            break (status, last_active_ms);
        }
    };
    assert_eq!(status, PresenceStatus::Online);
    assert!(at > 0);
    let member = |c: &selfie_protocol::chat::ConversationT, u: u64| {
        c.members
            .iter()
            .flatten()
            .find(|m| m.user.as_ref().map(|x| x.user_id) == Some(u))
            .expect("member")
            .clone()
    };
    let view = ben.client.chat().get(id).await.expect("view");
    assert_eq!(member(&view, ana.id).presence, PresenceStatus::Online);
    // Ana hides her activity: nobody reads it any more.
    show_activity(&ana, false).await;
    let view = ben.client.chat().get(id).await.expect("view");
    let hidden = member(&view, ana.id);
    assert_eq!(
        (hidden.presence, hidden.last_active_ms),
        (PresenceStatus::Offline, 0)
    );
    // And a user who hides theirs sees nobody's.
    show_activity(&ana, true).await;
    show_activity(&ben, false).await;
    let view = ben.client.chat().get(id).await.expect("view");
    assert_eq!(member(&view, ana.id).last_active_ms, 0);
    // The refused stranger and the delivered signals are counted.
    let start = std::time::Instant::now();
    loop {
        let m = node.edge.metrics().encode();
        if m.contains("outcome=\"refused\"") && m.contains("selfie_edge_datagrams_sent_total") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The MLS entries of `id` that `u` sees, after `after`: (seq, content type, epoch, data).
async fn mls_entries(u: &Client, id: u64, after: u64) -> Vec<(u64, u8, u64, Vec<u8>)> {
    let cursor = {
        let mut c = vec![1u8];
        c.extend_from_slice(&id.to_be_bytes());
        c.extend_from_slice(&after.to_be_bytes());
        c
    };
    let page = u.chat().sync(&cursor, id, 500).await.expect("sync");
    page.events
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let m = e.message?;
            let mls = m.mls?;
            Some((
                e.event_seq,
                mls.content_type.0,
                mls.epoch,
                mls.data.unwrap_or_default(),
            ))
        })
        .collect()
}

/// `device` catches up on the log of `id` after `after`: joins from a Welcome addressed
/// to it, applies commits, decrypts messages. Returns the plaintexts and the last seq.
fn catch_up(
    device: &mut selfie_client::mls::MlsDevice,
    group: &[u8],
    entries: &[(u64, u8, u64, Vec<u8>)],
) -> Vec<String> {
    use selfie_client::mls::Received;
    let mut texts = Vec::new();
    for (_, content, epoch, data) in entries {
        match *content {
            3 if device.epoch(group).is_none() => {
                device.join(data).expect("joined");
            }
            3 => {}
            _ if device.epoch(group).is_none() => {} // before this device joined
            _ => match device.receive(group, *epoch, data).expect("processed") {
                Received::Message(p) => texts.push(String::from_utf8(p).expect("utf-8")),
                Received::Commit | Received::Earlier | Received::Removed => {}
            },
        }
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_group_survives_a_removal_and_the_server_holds_no_plaintext() {
    use selfie_client::mls::MlsDevice;
    use selfie_storage::{Scan, Store};
    let parts = support::parts();
    let tokens = support::tokens(&parts);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(parts.throttle);
    let node = support::start_with(&parts, tokens, throttle);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    for (a, b) in [(&ana, &ben), (&ana, &cat), (&ben, &cat)] {
        friends(a, b).await;
    }
    // Each device publishes key packages.
    let mut devices: Vec<MlsDevice> = [&ana, &ben, &cat]
        .iter()
        .map(|u| MlsDevice::new(u.id).expect("device"))
        .collect();
    for (u, d) in [&ana, &ben, &cat].iter().zip(&devices) {
        let packages = d.key_packages(3).expect("packages");
        let last_resort = d.last_resort_package().expect("last resort");
        u.client
            .chat()
            .upload_key_packages("phone", packages, Some(last_resort))
            .await
            .expect("uploaded");
    }
    // Ana makes the encrypted conversation and the MLS group, adding Ben and Cat.
    let group = b"selfie-test-group".to_vec();
    let c = ana
        .client
        .chat()
        .encrypted_group(&[ben.id, cat.id], &group, "enc-1")
        .await
        .expect("conversation");
    let id = c.conversation_id;
    assert!(c.encrypted);
    let (claimed, left_out) = ana
        .client
        .chat()
        .claim_key_packages(&[ben.id, cat.id])
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 2);
    assert!(left_out.is_empty());
    let packages: Vec<(u64, Vec<u8>)> = claimed
        .into_iter()
        .map(|p| (p.user_id, p.key_package.unwrap_or_default()))
        .collect();
    let (ana_d, rest) = devices.split_at_mut(1);
    let ana_d = &mut ana_d[0];
    ana_d.create_group(&group).expect("group");
    // A package passed off as another user's is refused before anything is committed.
    let forged = vec![(packages[1].0, packages[0].1.clone())];
    let refused = ana_d.add(&group, &forged);
    assert!(
        refused.is_err(),
        "a package under another user's name was added"
    );
    let add = ana_d.add(&group, &packages).expect("add");
    ana.client
        .chat()
        .mls_commit(id, &add, &[ben.id, cat.id])
        .await
        .expect("accepted");
    ana_d.confirm(&group).expect("merged");
    // Plaintext is refused in an encrypted conversation.
    let refused = ana.client.chat().send(id, "plain", "in the clear").await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::InvalidArgument)
    );
    let (epoch, secret) = ana_d.encrypt(&group, b"hello both").expect("encrypted");
    ana.client
        .chat()
        .send_mls(id, "e-1", epoch, secret)
        .await
        .expect("sent");
    let (ben_d, cat_d) = rest.split_at_mut(1);
    let (ben_d, cat_d) = (&mut ben_d[0], &mut cat_d[0]);
    let ben_log = mls_entries(&ben.client, id, 0).await;
    assert_eq!(
        catch_up(ben_d, &group, &ben_log),
        vec!["hello both".to_string()]
    );
    let cat_log = mls_entries(&cat.client, id, 0).await;
    assert_eq!(
        catch_up(cat_d, &group, &cat_log),
        vec!["hello both".to_string()]
    );
    let mut ben_at = ben_log.last().map_or(0, |e| e.0);
    let cat_at = cat_log.last().map_or(0, |e| e.0);
    // Ben and Cat race a commit for the same epoch: one is accepted, one refused.
    let (b_up, c_up) = (
        ben_d.update(&group).expect("update"),
        cat_d.update(&group).expect("update"),
    );
    assert_eq!(b_up.epoch, c_up.epoch);
    let (ben_chat, cat_chat) = (ben.client.chat(), cat.client.chat());
    let (b_res, c_res) = tokio::join!(
        ben_chat.mls_commit(id, &b_up, &[]),
        cat_chat.mls_commit(id, &c_up, &[]),
    );
    assert!(b_res.is_ok() != c_res.is_ok(), "exactly one commit wins");
    let loser_code = b_res
        .as_ref()
        .err()
        .or(c_res.as_ref().err())
        .and_then(|e| e.code());
    assert_eq!(loser_code, Some(ErrorCode::Conflict));
    if b_res.is_ok() {
        ben_d.confirm(&group).expect("merged");
        cat_d.discard(&group).expect("dropped");
    } else {
        cat_d.confirm(&group).expect("merged");
        ben_d.discard(&group).expect("dropped");
    }
    // Everyone applies the winner from the log and stays in one epoch.
    let a_new = mls_entries(&ana.client, id, 0).await;
    catch_up(
        ana_d,
        &group,
        &a_new[a_new
            .iter()
            .position(|e| e.0 > cat_at.max(ben_at))
            .unwrap_or(a_new.len())..],
    );
    let b_new = mls_entries(&ben.client, id, ben_at).await;
    catch_up(ben_d, &group, &b_new);
    ben_at = b_new.last().map_or(ben_at, |e| e.0);
    let c_new = mls_entries(&cat.client, id, cat_at).await;
    catch_up(cat_d, &group, &c_new);
    let epoch_now = ana_d.epoch(&group);
    assert_eq!(ben_d.epoch(&group), epoch_now);
    assert_eq!(cat_d.epoch(&group), epoch_now);
    // Ana removes Cat: the commit first, then the server membership.
    let remove = ana_d.remove(&group, &[cat.id]).expect("remove");
    ana.client
        .chat()
        .mls_commit(id, &remove, &[])
        .await
        .expect("accepted");
    ana_d.confirm(&group).expect("merged");
    let c_last = mls_entries(&cat.client, id, c_new.last().map_or(cat_at, |e| e.0)).await;
    catch_up(cat_d, &group, &c_last);
    assert_eq!(
        cat_d.epoch(&group),
        None,
        "cat's device knows it was removed"
    );
    let mut r = selfie_protocol::chat::RemoveMemberRequestT::default();
    r.conversation_id = id;
    r.user_id = cat.id;
    call(
        &ana.client,
        support::chat(selfie_protocol::chat::ChatOpT::RemoveMemberRequest(
            Box::new(r),
        )),
    )
    .await
    .expect("removed");
    let (epoch, secret) = ana_d.encrypt(&group, b"after cat").expect("encrypted");
    let stolen = secret.clone();
    ana.client
        .chat()
        .send_mls(id, "e-2", epoch, secret)
        .await
        .expect("sent");
    let b_last = mls_entries(&ben.client, id, ben_at).await;
    let texts = catch_up(ben_d, &group, &b_last);
    assert_eq!(texts, vec!["after cat".to_string()]);
    // Cat can neither fetch it nor decrypt it.
    let refused = cat.client.chat().history(id, 0, 10).await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::NotFound)
    );
    assert!(cat_d.receive(&group, epoch, &stolen).is_err());
    // What the server stored: ciphertext only.
    let store = parts.store.clone();
    let mut seen = 0;
    for bucket_seq in [0u64] {
        let page = store
            .scan(
                &selfie_services::tables::chat::LOG,
                &selfie_services::tables::chat::log_partition(id, bucket_seq),
                &Scan::all(1000),
            )
            .await
            .expect("scan");
        for row in page.rows {
            seen += 1;
            let raw = row.value.to_vec();
            for plain in [&b"hello both"[..], b"after cat"] {
                assert!(
                    !raw.windows(plain.len()).any(|w| w == plain),
                    "plaintext stored"
                );
            }
        }
    }
    assert!(seen >= 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_inside_a_group_stops_pushes_between_those_two_only() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    for (a, b) in [(&ana, &ben), (&ana, &cat), (&ben, &cat)] {
        friends(a, b).await;
    }
    let id = ana
        .client
        .chat()
        .group(&[ben.id, cat.id], "three", "three-1")
        .await
        .expect("group")
        .conversation_id;
    let mut r = BlockRequestT::default();
    r.target_id = ben.id;
    call(&cat.client, graph(GraphOpT::BlockRequest(Box::new(r))))
        .await
        .expect("blocked");
    let mut ana_live = ana.client.chat().subscribe().await.expect("subscribed");
    let mut cat_live = cat.client.chat().subscribe().await.expect("subscribed");
    ben.client
        .chat()
        .send(id, "b", "from ben")
        .await
        .expect("sent");
    ana.client
        .chat()
        .send(id, "a", "from ana")
        .await
        .expect("sent");
    // Ana (no block) receives both; Cat receives Ana's and never Ben's.
    let first = until(&mut ana_live, ChatEventKind::MessageCreated).await;
    assert_eq!(
        first.message.and_then(|m| m.text).as_deref(),
        Some("from ben")
    );
    let seen = until(&mut cat_live, ChatEventKind::MessageCreated).await;
    assert_eq!(
        seen.message.and_then(|m| m.text).as_deref(),
        Some("from ana")
    );
    // Nor in her history.
    let page = cat.client.chat().history(id, 0, 10).await.expect("history");
    let texts: Vec<_> = page
        .messages
        .iter()
        .flatten()
        .filter_map(|m| m.text.clone())
        .collect();
    assert_eq!(texts, vec!["from ana".to_string()]);
    // Her device syncs past the hidden entry (a hole in its numbers), and a push after
    // another hidden one fills its gap by a sync, without stopping.
    let dir = tempfile::tempdir().expect("dir");
    let store = ChatStore::open(dir.path()).expect("store");
    store
        .sync(&cat.client)
        .await
        .expect("sync past a hidden entry");
    let head = store.position(id).expect("position");
    let held: Vec<_> = store
        .messages(id)
        .expect("messages")
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert_eq!(held, vec!["from ana".to_string()]);
    ben.client
        .chat()
        .send(id, "b2", "ben again")
        .await
        .expect("sent");
    ana.client
        .chat()
        .send(id, "a2", "ana again")
        .await
        .expect("sent");
    let frame = loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), cat_live.next())
            .await
            .expect("in time")
            .expect("a push");
        if push_event(&frame).is_some_and(|e| e.kind == ChatEventKind::MessageCreated) {
            break frame;
        }
    };
    store
        .apply_push(&cat.client, &frame)
        .await
        .expect("a push past a hidden entry");
    assert_eq!(store.position(id).expect("position"), head + 2);
    let held: Vec<_> = store
        .messages(id)
        .expect("messages")
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert_eq!(held, vec!["from ana".to_string(), "ana again".to_string()]);
}
