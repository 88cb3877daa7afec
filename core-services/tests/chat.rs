//! Chat on both storage backends (the embedded store, and the real CQL server named by
//! `SELFIE_CQL_NODES`, started by `scripts/test`): the same test bodies on each. Two
//! `Chat` instances over one store stand for two nodes of a fleet (distinct node numbers,
//! no shared locks), so the races between nodes run for real.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Gate, Gated, Op};

use selfie_services::Error;
use selfie_services::chat::{
    Chat, Entry, EventKind, Folder, MessageKind, Mls, NewMessage, Receipt, Role, SendRate,
    SyncCursor, SyncLimits, Update,
};
use selfie_services::graph::Graph;
use selfie_services::schema;
use selfie_services::tables::chat as t;
use selfie_services::tables::users::Permission;
use selfie_services::users::{SettingsUpdate, Users};
use selfie_storage::cql::{CqlConfig, CqlStore};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{Scan, Store, SystemClock};

fn embedded() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        EmbeddedStore::open(dir.path(), &schema::tables(), Arc::new(SystemClock)).expect("store");
    (store, dir)
}

async fn cql() -> CqlStore {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let config = CqlConfig::from_url(&format!("cql://{nodes}/chat_{:08x}", rand::random::<u32>()))
        .expect("url");
    CqlStore::open(&config, schema::MIGRATIONS, &schema::tables())
        .await
        .expect("store")
        .drop_keyspace_when_dropped(&config)
}

const ANA: u64 = 1;
const BEN: u64 = 2;
const CAT: u64 = 3;
const DAN: u64 = 4;

struct World<S> {
    store: S,
    users: Users<S>,
    graph: Graph<S>,
    /// "Node" 1 and "node" 2.
    a: Chat<S>,
    b: Chat<S>,
}

async fn world<S: Store + Clone + 'static>(store: S) -> World<S> {
    let users = Users::new(store.clone());
    for (id, name) in [(ANA, "ana"), (BEN, "ben"), (CAT, "cat"), (DAN, "dan")] {
        users.create(id, name).await.expect("profile");
    }
    let chat = |node| {
        Chat::new(store.clone(), Arc::new(SystemClock), node, 0)
            .expect("chat")
            .with_limits(SyncLimits {
                window: 10_000,
                max_events: 1_000,
                // The suites send hundreds in a row; `expensive_paths_are_rate_limited`
                // holds a node to the default.
                send: SendRate {
                    burst: 1_000_000,
                    per_minute: 1_000_000,
                },
            })
    };
    World {
        graph: Graph::new(store.clone()),
        users,
        a: chat(1),
        b: chat(2),
        store,
    }
}

fn text(txn: &str, body: &str) -> NewMessage {
    NewMessage {
        client_msg_id: txn.into(),
        kind: MessageKind::Text,
        text: body.into(),
        media_ids: Vec::new(),
        reply_to_seq: 0,
        ref_id: 0,
        thread_seq: 0,
        forward: None,
        mls: None,
    }
}

/// `user`'s stored key package rows.
async fn package_rows<S: Store>(store: &S, user: u64) -> Vec<selfie_storage::Row> {
    store
        .scan(
            &t::KEY_PACKAGES,
            &selfie_services::tables::key(user),
            &Scan::all(100),
        )
        .await
        .expect("scan")
        .rows
}

/// Everyone follows everyone: conversations start active.
async fn friends<S: Store + Clone + 'static>(w: &World<S>) {
    for a in [ANA, BEN, CAT, DAN] {
        for b in [ANA, BEN, CAT, DAN] {
            if a != b {
                w.graph.follow(a, b).await.expect("follow");
            }
        }
    }
}

async fn requests_blocks_and_permissions<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    // Ben does not follow Ana: her first message is a request in his requests folder.
    let id = w.a.direct(ANA, BEN).await.expect("direct");
    assert_eq!(w.b.direct(ANA, BEN).await.expect("same pair"), id);
    assert!(matches!(w.a.direct(ANA, ANA).await, Err(Error::SelfTarget)));
    w.a.send(ANA, id, text("t1", "hi ben")).await.expect("sent");
    let (inbox, _) = w.a.list(BEN, Folder::Inbox, 20, None).await.expect("inbox");
    assert!(inbox.is_empty());
    let (requests, _) =
        w.a.list(BEN, Folder::Requests, 20, None)
            .await
            .expect("requests");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].unread, 1);
    // He declines: Ana may not send any more, and the request is gone from his lists.
    w.a.answer_request(BEN, id, false).await.expect("declined");
    assert!(matches!(
        w.a.send(ANA, id, text("t2", "hello?")).await,
        Err(Error::Forbidden(_))
    ));
    let (requests, _) =
        w.a.list(BEN, Folder::Requests, 20, None)
            .await
            .expect("requests");
    assert!(requests.is_empty());
    // Starting the conversation himself takes it back.
    assert_eq!(w.a.direct(BEN, ANA).await.expect("again"), id);
    w.a.send(ANA, id, text("t3", "hello again"))
        .await
        .expect("sent");

    // Cat takes messages from nobody; Dan from people he follows only.
    let nobody = SettingsUpdate {
        who_can_message: Some(Permission::Nobody),
        ..Default::default()
    };
    w.users
        .update_settings(CAT, nobody)
        .await
        .expect("settings");
    assert!(matches!(
        w.a.direct(ANA, CAT).await,
        Err(Error::Forbidden(_))
    ));
    let following = SettingsUpdate {
        who_can_message: Some(Permission::Following),
        ..Default::default()
    };
    w.users
        .update_settings(DAN, following)
        .await
        .expect("settings");
    assert!(matches!(
        w.a.direct(ANA, DAN).await,
        Err(Error::Forbidden(_))
    ));
    w.graph.follow(DAN, ANA).await.expect("follow");
    let with_dan = w.a.direct(ANA, DAN).await.expect("allowed now");
    // Dan follows Ana, so no request: straight to his inbox.
    let (inbox, _) = w.a.list(DAN, Folder::Inbox, 20, None).await.expect("inbox");
    assert_eq!(inbox.len(), 1);

    // A block stops the conversation both ways, and nobody can start one.
    w.graph.block(DAN, ANA).await.expect("block");
    assert!(matches!(
        w.a.send(ANA, with_dan, text("t4", "?")).await,
        Err(Error::Blocked)
    ));
    assert!(matches!(
        w.a.send(DAN, with_dan, text("t5", "!")).await,
        Err(Error::Blocked)
    ));
    // Strangers see nothing of a conversation.
    assert!(matches!(
        w.a.history(CAT, id, 0, 10).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        w.a.send(CAT, id, text("t6", "let me in")).await,
        Err(Error::NotFound(_))
    ));
}

async fn groups_roles_and_blocked_members<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    friends(&w).await;
    let id =
        w.a.group(ANA, &[BEN, CAT], "trip", false, Vec::new(), Some("g-1"))
            .await
            .expect("group");
    // The creation key makes a retried create return the same group.
    let again =
        w.b.group(ANA, &[BEN, CAT], "trip", false, Vec::new(), Some("g-1"));
    assert_eq!(again.await.expect("retry"), id);
    // Members cannot add; admins can; the owner sets roles.
    assert!(matches!(
        w.a.add_members(BEN, id, &[DAN]).await,
        Err(Error::Forbidden(_))
    ));
    w.a.set_role(ANA, id, BEN, Role::Admin)
        .await
        .expect("admin");
    assert!(matches!(
        w.a.set_role(BEN, id, CAT, Role::Admin).await,
        Err(Error::Forbidden(_))
    ));
    w.a.send(ANA, id, text("before-dan", "before dan"))
        .await
        .expect("sent");
    w.a.add_members(BEN, id, &[DAN]).await.expect("added");
    // Dan sees the log from his joining on: not what was said before.
    let (seen, _) = w.a.history(DAN, id, 0, 50).await.expect("history");
    assert!(seen.is_empty(), "{seen:?}");
    // An admin may not remove another admin; the owner may.
    assert!(matches!(
        w.a.remove_member(BEN, id, ANA).await,
        Err(Error::Forbidden(_))
    ));
    w.a.update(
        BEN,
        id,
        Update {
            title: Some("summer trip".into()),
            ..Default::default()
        },
    )
    .await
    .expect("renamed");
    assert!(matches!(
        w.a.update(
            CAT,
            id,
            Update {
                title: Some("mine".into()),
                ..Default::default()
            }
        )
        .await,
        Err(Error::Forbidden(_))
    ));
    // A block hides each side's messages from the other inside the group.
    w.graph.block(CAT, DAN).await.expect("block");
    w.a.send(DAN, id, text("from-dan", "hi all"))
        .await
        .expect("sent");
    w.a.send(CAT, id, text("from-cat", "hey"))
        .await
        .expect("sent");
    let texts = |v: Vec<selfie_services::chat::Message>| -> Vec<String> {
        v.into_iter().map(|m| m.text).collect()
    };
    let (cat_sees, _) = w.a.history(CAT, id, 0, 50).await.expect("history");
    assert!(!texts(cat_sees).contains(&"hi all".to_string()));
    let (dan_sees, _) = w.a.history(DAN, id, 0, 50).await.expect("history");
    assert_eq!(texts(dan_sees), vec!["hi all".to_string()]);
    let (ana_sees, _) = w.a.history(ANA, id, 0, 50).await.expect("history");
    assert_eq!(
        texts(ana_sees),
        vec!["hey".to_string(), "hi all".into(), "before dan".into()]
    );
    // The owner leaves: the longest-standing admin owns the group.
    w.a.remove_member(ANA, id, ANA).await.expect("left");
    assert!(matches!(
        w.a.history(ANA, id, 0, 10).await,
        Err(Error::NotFound(_))
    ));
    let view = w.a.view(BEN, id).await.expect("view");
    let ben = view.members.iter().find(|(u, _)| *u == BEN).expect("ben");
    assert_eq!(ben.1.role, Role::Owner);
    assert_eq!(view.rec.title, "summer trip");
    assert_eq!(view.members.len(), 3);
}

async fn messages_edits_reactions_and_receipts<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    friends(&w).await;
    let id = w.a.direct(ANA, BEN).await.expect("direct");
    let first = w.a.send(ANA, id, text("m1", "hello")).await.expect("sent");
    assert!(!first.duplicate);
    // A retry on the other node, with the same transaction id: the same message.
    let retry = w.b.send(ANA, id, text("m1", "hello")).await.expect("retry");
    assert_eq!((retry.seq, retry.message_id), (first.seq, first.message_id));
    assert!(retry.duplicate);
    let mut reply = text("m2", "hi ana");
    reply.reply_to_seq = first.seq;
    let second = w.a.send(BEN, id, reply).await.expect("reply");
    assert_eq!(second.seq, first.seq + 1);
    let mut bad = text("m3", "to nothing");
    bad.reply_to_seq = 999;
    assert!(matches!(
        w.a.send(BEN, id, bad).await,
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        w.a.send(BEN, id, text("", "no id")).await,
        Err(Error::InvalidArgument { .. })
    ));
    let mut plain_mls = text("m4", "");
    plain_mls.kind = MessageKind::Mls;
    assert!(matches!(
        w.a.send(BEN, id, plain_mls).await,
        Err(Error::InvalidArgument { .. })
    ));
    // Edits keep their history; only the sender edits.
    w.a.edit(ANA, id, first.seq, "hello there")
        .await
        .expect("edit");
    assert!(matches!(
        w.a.edit(BEN, id, first.seq, "hijack").await,
        Err(Error::Forbidden(_))
    ));
    let versions = w.a.versions(BEN, id, first.seq).await.expect("versions");
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].text, "hello");
    // Reactions: one per member, replaced, taken back.
    w.a.react(BEN, id, first.seq, Some("👍"))
        .await
        .expect("react");
    w.a.react(BEN, id, first.seq, Some("❤️"))
        .await
        .expect("replace");
    w.a.react(ANA, id, first.seq, Some("❤️"))
        .await
        .expect("react");
    let m =
        w.a.readable_message(ANA, id, first.seq)
            .await
            .expect("message");
    assert_eq!(m.reaction_counts(), vec![("❤️".to_string(), 2)]);
    assert_eq!(m.text, "hello there");
    assert_eq!(m.edit_count, 1);
    w.a.react(ANA, id, first.seq, None).await.expect("unreact");
    assert!(matches!(
        w.a.react(ANA, id, first.seq, None).await,
        Err(Error::NotFound(_))
    ));
    // Forwarding into a group copies the content and marks it.
    let group =
        w.a.group(BEN, &[CAT], "", false, Vec::new(), None)
            .await
            .expect("group");
    let mut fwd = text("f1", "");
    fwd.forward = Some((id, first.seq));
    let forwarded = w.a.send(BEN, group, fwd).await.expect("forward");
    let copy =
        w.a.readable_message(CAT, group, forwarded.seq)
            .await
            .expect("copy");
    assert!(copy.forwarded);
    assert_eq!(copy.text, "hello there");
    // Cat cannot forward from a conversation she is not in.
    let mut steal = text("f2", "");
    steal.forward = Some((id, first.seq));
    assert!(matches!(
        w.a.send(CAT, group, steal).await,
        Err(Error::NotFound(_))
    ));
    // Delete for everyone: a tombstone, history gone.
    assert!(matches!(
        w.a.delete(BEN, id, first.seq).await,
        Err(Error::Forbidden(_))
    ));
    w.a.delete(ANA, id, first.seq).await.expect("delete");
    let gone =
        w.a.readable_message(BEN, id, first.seq)
            .await
            .expect("tombstone");
    assert!(gone.deleted && gone.text.is_empty() && gone.reactions.is_empty());
    assert!(
        w.a.versions(BEN, id, first.seq)
            .await
            .expect("none")
            .is_empty()
    );
    // Receipts: unread counts follow the read position; a member who hides receipts
    // shows no read position (and sees none).
    let view = w.a.view(ANA, id).await.expect("view");
    assert_eq!(view.unread, 1, "ben's reply");
    w.a.receipt(ANA, id, Receipt::Read, second.seq)
        .await
        .expect("read");
    let view = w.a.view(ANA, id).await.expect("view");
    assert_eq!(view.unread, 0);
    let from_ben = w.a.view(BEN, id).await.expect("view");
    let ana = from_ben
        .members
        .iter()
        .find(|(u, _)| *u == ANA)
        .expect("ana");
    assert_eq!(ana.1.last_read_seq, second.seq);
    let hide = SettingsUpdate {
        show_read_receipts: Some(false),
        ..Default::default()
    };
    w.users.update_settings(ANA, hide).await.expect("settings");
    let from_ben = w.a.view(BEN, id).await.expect("view");
    let ana = from_ben
        .members
        .iter()
        .find(|(u, _)| *u == ANA)
        .expect("ana");
    assert_eq!(ana.1.last_read_seq, 0);
    assert_eq!(
        ana.1.last_delivered_seq, second.seq,
        "delivery is not hidden"
    );
}

async fn racing_nodes_keep_one_dense_order_and_one_copy<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    friends(&w).await;
    let id =
        w.a.group(ANA, &[BEN, CAT], "race", false, Vec::new(), None)
            .await
            .expect("group");
    // Three senders on two "nodes" at once, each message retried on the other node at
    // the same moment.
    let n = 20;
    async fn send<S: Store + 'static>(
        chat: &Chat<S>,
        id: u64,
        user: u64,
        i: usize,
    ) -> Result<selfie_services::chat::Sent, Error> {
        let txn = format!("{user}-{i}");
        chat.send(user, id, text(&txn, &txn)).await
    }
    let mut all = Vec::new();
    for i in 0..n {
        let round = futures::future::join_all(vec![
            send(&w.a, id, ANA, i),
            send(&w.b, id, ANA, i),
            send(&w.b, id, BEN, i),
            send(&w.a, id, BEN, i),
            send(&w.a, id, CAT, i),
            send(&w.b, id, CAT, i),
        ])
        .await;
        all.extend(round.into_iter().map(|r| r.expect("sent")));
    }
    // Each pair of attempts made one message: same number, one of them a duplicate.
    for pair in all.chunks(2) {
        assert_eq!(pair[0].seq, pair[1].seq, "{pair:?}");
        assert_eq!(pair[0].message_id, pair[1].message_id);
        assert!(pair[0].duplicate != pair[1].duplicate, "{pair:?}");
    }
    // The log is dense and holds each message once, in the order the numbers say.
    let synced =
        w.a.sync(ANA, &SyncCursor::default(), Some(id), 1000)
            .await
            .expect("sync");
    let seqs: Vec<u64> = synced.items.iter().map(|i| i.seq).collect();
    let expected: Vec<u64> = (1..=1 + 3 * n as u64).collect();
    assert_eq!(seqs, expected);
    let mut txns: Vec<String> = synced
        .items
        .iter()
        .filter_map(|i| match &i.entry {
            Entry::Message(m) => Some(m.client_msg_id.clone()),
            Entry::Event(_) => None,
        })
        .collect();
    let count = txns.len();
    txns.sort();
    txns.dedup();
    assert_eq!(txns.len(), count);
    assert_eq!(count, 3 * n);
}

async fn sync_resumes_exactly_and_history_pages_across_partitions<S: Store + Clone + 'static>(
    store: S,
    messages: u64,
) {
    let w = world(store).await;
    friends(&w).await;
    let id = w.a.direct(ANA, BEN).await.expect("direct");
    let other = w.a.direct(ANA, CAT).await.expect("direct");
    w.a.send(ANA, id, text("first", "first"))
        .await
        .expect("sent");
    // Ben's device is up to date here.
    let synced =
        w.a.sync(BEN, &SyncCursor::default(), None, 1000)
            .await
            .expect("sync");
    assert!(!synced.has_more);
    let cursor = synced.cursor;
    for i in 0..messages {
        w.a.send(ANA, id, text(&format!("m{i}"), &format!("{i}")))
            .await
            .expect("sent");
    }
    w.a.send(ANA, other, text("c", "not for ben"))
        .await
        .expect("sent");
    // Ben resumes: exactly the messages he missed, in order, over as many pages as it
    // takes, and nothing of a conversation he is not in.
    let mut cursor = cursor;
    let mut got = Vec::new();
    loop {
        let page = w.b.sync(BEN, &cursor, None, 500).await.expect("sync");
        assert!(page.limited.is_empty());
        for item in &page.items {
            assert_eq!(item.conversation_id, id);
            if let Entry::Message(m) = &item.entry {
                got.push(m.text.clone());
            }
        }
        cursor = page.cursor;
        if !page.has_more {
            break;
        }
    }
    let expected: Vec<String> = (0..messages).map(|i| i.to_string()).collect();
    assert!(
        got == expected,
        "got {} messages, from {:?} to {:?}",
        got.len(),
        got.first(),
        got.last()
    );
    // Nothing more to get.
    let again = w.a.sync(BEN, &cursor, None, 500).await.expect("sync");
    assert!(again.items.is_empty() && !again.has_more);
    // History pages backwards across the log's partitions without gaps or repeats.
    let mut before = 0;
    let mut back = Vec::new();
    loop {
        let (page, next) = w.a.history(BEN, id, before, 100).await.expect("history");
        back.extend(page.iter().map(|m| m.text.clone()));
        let Some(next) = next else { break };
        assert!(next <= page.last().map_or(u64::MAX, |m| m.seq));
        before = next;
    }
    back.reverse();
    let mut all = vec!["first".to_string()];
    all.extend(expected);
    assert!(
        back == all,
        "paged {} messages back, from {:?} to {:?}",
        back.len(),
        back.first(),
        back.last()
    );
}

async fn limited_when_the_gap_is_too_large<S: Store + Clone + 'static>(store: S) {
    let users = Users::new(store.clone());
    for (id, name) in [(ANA, "ana"), (BEN, "ben")] {
        users.create(id, name).await.expect("profile");
    }
    let graph = Graph::new(store.clone());
    graph.follow(BEN, ANA).await.expect("follow");
    let chat = Chat::new(store.clone(), Arc::new(SystemClock), 1, 0)
        .expect("chat")
        .with_limits(SyncLimits {
            window: 5,
            max_events: 100,
            ..SyncLimits::default()
        });
    let id = chat.direct(ANA, BEN).await.expect("direct");
    let start = chat
        .sync(BEN, &SyncCursor::default(), None, 100)
        .await
        .expect("sync")
        .cursor;
    for i in 0..10 {
        chat.send(ANA, id, text(&format!("{i}"), "x"))
            .await
            .expect("sent");
    }
    let synced = chat.sync(BEN, &start, None, 100).await.expect("sync");
    assert_eq!(synced.limited, vec![id]);
    assert!(synced.items.is_empty());
    assert_eq!(synced.cursor.0.get(&id), Some(&11));
    // A conversation the device knew and its user left is limited too (refetch: gone).
    let group = chat
        .group(BEN, &[], "solo", false, Vec::new(), None)
        .await
        .expect("group");
    let known = chat
        .sync(BEN, &synced.cursor, None, 100)
        .await
        .expect("sync");
    assert!(known.cursor.0.contains_key(&group));
    chat.remove_member(BEN, group, BEN).await.expect("left");
    let after = chat
        .sync(BEN, &known.cursor, None, 100)
        .await
        .expect("sync");
    assert_eq!(after.limited, vec![group]);
    assert!(!after.cursor.0.contains_key(&group));
}

async fn encrypted_groups_hold_no_plaintext<S: Store + Clone + 'static>(store: S) {
    let w = world(store.clone()).await;
    friends(&w).await;
    let id =
        w.a.group(ANA, &[BEN], "", true, b"group-1".to_vec(), None)
            .await
            .expect("group");
    assert!(matches!(
        w.a.send(ANA, id, text("p", "plaintext!")).await,
        Err(Error::InvalidArgument { .. })
    ));
    let secret = b"opaque ciphertext".to_vec();
    let mut m = text("e1", "");
    m.kind = MessageKind::Mls;
    m.mls = Some(Mls {
        epoch: 0,
        content_type: 0,
        data: secret.clone(),
        recipients: Vec::new(),
    });
    let sent = w.a.send(ANA, id, m).await.expect("sent");
    let got = w.a.readable_message(BEN, id, sent.seq).await.expect("read");
    assert_eq!(got.mls.expect("mls").data, secret);
    assert!(matches!(
        w.a.edit(ANA, id, sent.seq, "plaintext edit").await,
        Err(Error::InvalidArgument { .. })
    ));
    // A reaction would be plaintext next to the ciphertext: refused on an application
    // message too (reactions travel inside MLS messages).
    let reacted = w.a.react(BEN, id, sent.seq, Some("👍")).await;
    assert!(
        reacted.is_err(),
        "a plaintext reaction was stored: {reacted:?}"
    );
    assert!(
        w.a.readable_message(ANA, id, sent.seq)
            .await
            .expect("read")
            .reactions
            .is_empty()
    );
    // The stored log holds the ciphertext and no text.
    let page = w
        .store
        .scan(&t::LOG, &t::log_partition(id, sent.seq), &Scan::all(100))
        .await
        .expect("scan");
    let mut found = false;
    for row in page.rows {
        let entry: Entry = serde_json::from_slice(&row.value).expect("entry");
        if let Entry::Message(m) = entry {
            assert!(m.text.is_empty() && m.media_ids.is_empty());
            found = true;
        }
        let raw = String::from_utf8_lossy(&row.value).to_string();
        assert!(!raw.contains("plaintext"), "{raw}");
    }
    assert!(found);
    let _ = EventKind::Created;
}

async fn key_packages_and_commit_order<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    friends(&w).await;
    // Ben's device uploads three packages; two claims racing on two nodes get two
    // different ones; the last one stays as the last resort.
    let packages: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40]).collect();
    w.a.upload_key_packages(BEN, "phone", &packages, None)
        .await
        .expect("uploaded");
    let (x, y) = futures::join!(
        w.a.claim_key_packages(ANA, &[BEN]),
        w.b.claim_key_packages(CAT, &[BEN])
    );
    let (x, y) = (x.expect("claim"), y.expect("claim"));
    assert_ne!(x[0].key_package, y[0].key_package);
    let last = w.a.claim_key_packages(DAN, &[BEN]).await.expect("claim");
    let again = w.a.claim_key_packages(DAN, &[BEN]).await.expect("claim");
    assert_eq!(
        last[0].key_package, again[0].key_package,
        "the last resort stays"
    );
    assert!(matches!(
        w.a.upload_key_packages(BEN, "", &packages, None).await,
        Err(Error::InvalidArgument { .. })
    ));
    // A device's marked last-resort package comes out only once its others are gone,
    // is never used up, and a new one replaces it.
    let (first, second) = (vec![21u8; 40], vec![22u8; 40]);
    w.a.upload_key_packages(BEN, "tablet", &[vec![20; 40]], Some(&first))
        .await
        .expect("uploaded");
    let tablet = |got: Vec<selfie_services::chat::KeyPackage>| {
        got.into_iter()
            .find(|p| p.device_id == "tablet")
            .map(|p| p.key_package)
    };
    let got = w.a.claim_key_packages(DAN, &[BEN]).await.expect("claim");
    assert_eq!(tablet(got), Some(vec![20; 40]), "the ordinary one first");
    for _ in 0..2 {
        let got = w.a.claim_key_packages(DAN, &[BEN]).await.expect("claim");
        assert_eq!(
            tablet(got),
            Some(first.clone()),
            "then the last resort, kept"
        );
    }
    w.a.upload_key_packages(BEN, "tablet", &[], Some(&second))
        .await
        .expect("replaced");
    let got = w.a.claim_key_packages(DAN, &[BEN]).await.expect("claim");
    assert_eq!(tablet(got), Some(second.clone()), "the new one replaced it");
    let rows = package_rows(&w.store, BEN).await;
    let tablet_rows = rows
        .iter()
        .filter(|r| r.value[..] == first[..] || r.value[..] == second[..])
        .count();
    assert_eq!(tablet_rows, 1, "the old last resort is gone");
    // A claim refused for one user hands out nothing for the others.
    w.a.upload_key_packages(ANA, "phone", &[vec![30; 40], vec![31; 40]], None)
        .await
        .expect("uploaded");
    let count = |user: u64| {
        let store = w.store.clone();
        async move { package_rows(&store, user).await.len() }
    };
    w.graph.block(BEN, DAN).await.expect("block");
    assert!(matches!(
        w.a.claim_key_packages(DAN, &[BEN]).await,
        Err(Error::Blocked)
    ));
    assert!(matches!(
        w.a.claim_key_packages(DAN, &[ANA, BEN]).await,
        Err(Error::Blocked)
    ));
    assert_eq!(count(ANA).await, 2, "a refused claim used up a package");
    // Commits: one per epoch, whichever node takes it; messages in the current epoch.
    let id =
        w.a.group(ANA, &[BEN, CAT], "", true, b"g".to_vec(), None)
            .await
            .expect("group");
    let (p, q) = futures::join!(
        w.a.mls_commit(BEN, id, 0, b"commit-b".to_vec(), Vec::new(), Vec::new()),
        w.b.mls_commit(CAT, id, 0, b"commit-c".to_vec(), Vec::new(), Vec::new())
    );
    assert!(p.is_ok() != q.is_ok(), "one commit per epoch: {p:?} {q:?}");
    // The winner resends its commit (its answer was lost): the first acceptance again,
    // not a refusal for the epoch it moved on, and nothing new in the log.
    let (winner, bytes, first) = match &p {
        Ok(sent) => (BEN, b"commit-b".to_vec(), sent.clone()),
        Err(_) => (
            CAT,
            b"commit-c".to_vec(),
            q.as_ref().expect("one won").clone(),
        ),
    };
    let head = w.a.head(id).await.expect("head");
    let again =
        w.b.mls_commit(winner, id, 0, bytes, Vec::new(), Vec::new())
            .await
            .expect("resent");
    assert!(again.duplicate);
    assert_eq!((again.seq, again.message_id), (first.seq, first.message_id));
    assert_eq!(w.a.head(id).await.expect("head").last_seq, head.last_seq);
    assert!(matches!(p.err().or(q.err()), Some(Error::Stale(_))));
    assert_eq!(w.a.head(id).await.expect("head").mls_epoch, 1);
    let mut stale = text("s1", "");
    stale.kind = MessageKind::Mls;
    stale.mls = Some(Mls {
        epoch: 0,
        content_type: 0,
        data: vec![1, 2, 3],
        recipients: Vec::new(),
    });
    assert!(matches!(
        w.a.send(ANA, id, stale).await,
        Err(Error::Stale(_))
    ));
    // A Welcome reaches only its recipients.
    w.a.mls_commit(ANA, id, 1, b"add".to_vec(), b"welcome".to_vec(), vec![CAT])
        .await
        .expect("commit");
    let chat = &w.a;
    let welcomes = |user| async move {
        let synced = chat.sync(user, &SyncCursor::default(), Some(id), 100).await;
        synced
            .expect("sync")
            .items
            .into_iter()
            .filter(|i| {
                matches!(&i.entry, Entry::Message(m)
                if m.mls.as_ref().is_some_and(|x| x.content_type == 3))
            })
            .count()
    };
    assert_eq!(welcomes(CAT).await, 1);
    assert_eq!(welcomes(BEN).await, 0);
    // Commits and Welcomes carry the key schedule: nobody deletes or reacts to them,
    // not even the admin who sent them; a plaintext reaction has no place here either.
    let head = w.a.head(id).await.expect("head");
    let commit_seq = head.last_seq - 1;
    assert!(matches!(
        w.a.delete(ANA, id, commit_seq).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        w.a.react(ANA, id, head.last_seq, Some("👍")).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(w.a.head(id).await.expect("head").last_seq, head.last_seq);
    // Claims: one package per device, each user once however often named, and a
    // device's last package stays as its last resort.
    w.a.upload_key_packages(CAT, "phone", &[vec![7; 40], vec![8; 40]], None)
        .await
        .expect("uploaded");
    w.a.upload_key_packages(CAT, "laptop", &[vec![9; 40]], None)
        .await
        .expect("uploaded");
    let claimed =
        w.a.claim_key_packages(ANA, &[CAT, CAT, CAT])
            .await
            .expect("claim");
    let mut devices: Vec<&str> = claimed.iter().map(|p| p.device_id.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["laptop", "phone"]);
    let again = w.a.claim_key_packages(ANA, &[CAT]).await.expect("claim");
    assert_eq!(again.len(), 2, "each device keeps its last resort");
    assert!(
        again
            .iter()
            .all(|p| claimed.iter().all(|c| c.key_package != p.key_package)
                || p.device_id == "laptop")
    );
    // A block hides the blocked member's messages, not the group's commits: hidden,
    // they would leave the blocker in an old epoch, unable to send again.
    w.graph.block(CAT, BEN).await.expect("block");
    let epoch = w.a.head(id).await.expect("head").mls_epoch;
    w.a.mls_commit(BEN, id, epoch, b"rotate".to_vec(), Vec::new(), Vec::new())
        .await
        .expect("commit");
    let synced =
        w.a.sync(CAT, &SyncCursor::default(), Some(id), 100)
            .await
            .expect("sync");
    assert!(
        synced
            .items
            .iter()
            .any(|i| matches!(&i.entry, Entry::Message(m)
        if m.mls.as_ref().is_some_and(|x| x.data == b"rotate")))
    );
    let mut next = text("s2", "");
    next.kind = MessageKind::Mls;
    next.mls = Some(Mls {
        epoch: epoch + 1,
        content_type: 0,
        data: vec![4, 5, 6],
        recipients: Vec::new(),
    });
    w.a.send(CAT, id, next)
        .await
        .expect("the blocker sends in the new epoch");
}

#[tokio::test]
async fn mls_delivery_on_embedded() {
    let (s, _d) = embedded();
    key_packages_and_commit_order(s).await;
}

#[tokio::test]
async fn mls_delivery_on_cql() {
    key_packages_and_commit_order(cql().await).await;
}

#[tokio::test]
async fn requests_blocks_and_permissions_on_embedded() {
    let (s, _d) = embedded();
    requests_blocks_and_permissions(s).await;
}

#[tokio::test]
async fn requests_blocks_and_permissions_on_cql() {
    requests_blocks_and_permissions(cql().await).await;
}

#[tokio::test]
async fn groups_on_embedded() {
    let (s, _d) = embedded();
    groups_roles_and_blocked_members(s).await;
}

#[tokio::test]
async fn groups_on_cql() {
    groups_roles_and_blocked_members(cql().await).await;
}

#[tokio::test]
async fn messages_on_embedded() {
    let (s, _d) = embedded();
    messages_edits_reactions_and_receipts(s).await;
}

#[tokio::test]
async fn messages_on_cql() {
    messages_edits_reactions_and_receipts(cql().await).await;
}

#[tokio::test]
async fn racing_nodes_on_embedded() {
    let (s, _d) = embedded();
    racing_nodes_keep_one_dense_order_and_one_copy(s).await;
}

#[tokio::test]
async fn racing_nodes_on_cql() {
    racing_nodes_keep_one_dense_order_and_one_copy(cql().await).await;
}

#[tokio::test]
async fn sync_and_history_on_embedded() {
    let (s, _d) = embedded();
    // More than two log partitions hold.
    sync_resumes_exactly_and_history_pages_across_partitions(s, 2_100).await;
}

#[tokio::test]
async fn sync_and_history_on_cql() {
    let s = cql().await;
    sync_resumes_exactly_and_history_pages_across_partitions(s, 1_100).await;
}

#[tokio::test]
async fn limited_sync_on_embedded() {
    let (s, _d) = embedded();
    limited_when_the_gap_is_too_large(s).await;
}

#[tokio::test]
async fn encrypted_on_embedded() {
    let (s, _d) = embedded();
    encrypted_groups_hold_no_plaintext(s).await;
}

#[tokio::test]
async fn encrypted_on_cql() {
    encrypted_groups_hold_no_plaintext(cql().await).await;
}

/// The attacks and races a review found: privacy of presence and receipts across
/// requests and blocks, removal in one commit, history past a run of reactions, edit
/// versions, list pages with pins, declined requests leaving the list.
async fn privacy_and_consistency<S: Store + Clone + 'static>(store: S) {
    use selfie_services::chat::presence_status as status;
    let w = world(store).await;
    // Ana and Cat are friends; Ben follows nobody, so Ana's message to him is a request.
    for (a, b) in [
        (ANA, CAT),
        (CAT, ANA),
        (ANA, DAN),
        (DAN, ANA),
        (CAT, DAN),
        (DAN, CAT),
    ] {
        w.graph.follow(a, b).await.expect("follow");
    }
    let request = w.a.direct(ANA, BEN).await.expect("direct");
    let first =
        w.a.send(ANA, request, text("r1", "hi ben"))
            .await
            .expect("sent");
    // Presence never crosses a pending request, in either direction.
    let friendly = w.a.direct(ANA, CAT).await.expect("direct");
    assert_eq!(
        w.a.presence_audience(ANA).await.expect("audience"),
        vec![CAT]
    );
    assert!(
        w.a.presence_audience(BEN)
            .await
            .expect("audience")
            .is_empty()
    );
    // Ben's device got the request: Ana must not learn that, nor see his presence.
    w.a.receipt(BEN, request, Receipt::Delivered, first.seq)
        .await
        .expect("receipt");
    let _ = w.a.presence(BEN, status::ONLINE).await; // no delivery plane here
    let view = w.a.view(ANA, request).await.expect("view");
    let ben = view.members.iter().find(|(u, _)| *u == BEN).expect("ben");
    assert_eq!((ben.1.last_read_seq, ben.1.last_delivered_seq), (0, 0));
    assert!(view.presence.is_empty(), "{:?}", view.presence);
    // A block hides presence both ways, in the audience and on every read.
    let _ = w.a.presence(CAT, status::ONLINE).await;
    assert!(w.a.presence_for(ANA, CAT).await.expect("read").is_some());
    w.graph.block(CAT, ANA).await.expect("block");
    assert!(w.a.presence_for(ANA, CAT).await.expect("read").is_none());
    assert!(w.a.presence_for(CAT, ANA).await.expect("read").is_none());
    assert!(
        w.a.presence_audience(ANA)
            .await
            .expect("audience")
            .is_empty()
    );
    assert!(
        w.a.view(ANA, friendly)
            .await
            .expect("view")
            .presence
            .is_empty()
    );
    w.graph.unblock(CAT, ANA).await.expect("unblock");
    for (a, b) in [(ANA, CAT), (CAT, ANA)] {
        w.graph.follow(a, b).await.expect("follow");
    }
    // Going invisible does not say "active now".
    let _ = w.a.presence(DAN, status::ONLINE).await;
    let before =
        w.a.presence_for(ANA, DAN)
            .await
            .expect("read")
            .expect("shown");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let _ = w.a.presence(DAN, status::INVISIBLE).await;
    let after =
        w.a.presence_for(ANA, DAN)
            .await
            .expect("read")
            .expect("shown");
    assert_eq!(after.status, status::OFFLINE);
    assert_eq!(after.last_active_ms, before.last_active_ms);
    // Alternating statuses cannot buy a write and a fan-out each: they are rate limited.
    let mut limited = false;
    for i in 0..(selfie_services::chat::PRESENCE_CHANGES + 2) {
        let s = if i % 2 == 0 { status::ONLINE } else { 2 };
        if let Err(Error::RateLimited(wait)) = w.b.presence(DAN, s).await {
            assert!(wait > std::time::Duration::ZERO);
            limited = true;
            break;
        }
    }
    assert!(limited, "presence changes were not limited");

    // Removal: the leaver's membership, list entry and positions go with the entry.
    let group =
        w.a.group(ANA, &[CAT, DAN], "g", false, Vec::new(), None)
            .await
            .expect("group");
    let hi = w.a.send(CAT, group, text("g1", "hi")).await.expect("sent");
    w.a.receipt(DAN, group, Receipt::Read, hi.seq)
        .await
        .expect("read");
    // Presence is between direct partners: Cat's shows in Ana's direct conversation
    // with her, never in a group.
    let _ = w.b.presence(CAT, status::ONLINE).await;
    let shown = |v: selfie_services::chat::View| v.presence.contains_key(&CAT);
    assert!(shown(w.a.view(ANA, friendly).await.expect("view")));
    assert!(!shown(w.a.view(ANA, group).await.expect("view")));
    // Two nodes remove Dan at once: one removal, one decrement of the member count.
    let members = w.a.head(group).await.expect("head").members;
    let (x, y) = futures::join!(
        w.a.remove_member(ANA, group, DAN),
        w.b.remove_member(ANA, group, DAN)
    );
    assert!(
        matches!(
            (&x, &y),
            (Ok(()), Err(Error::NotFound(_))) | (Err(Error::NotFound(_)), Ok(()))
        ),
        "{x:?} {y:?}"
    );
    assert_eq!(w.a.head(group).await.expect("head").members, members - 1);
    // Nor can a role change write the removed member back.
    assert!(matches!(
        w.b.set_role(ANA, group, DAN, Role::Admin).await,
        Err(Error::NotFound(_))
    ));
    for (table, partition, clustering) in [
        (&t::MEMBERS, group, DAN),
        (&t::USER_CONVERSATIONS, DAN, group),
        (&t::RECEIPTS, group, DAN),
    ] {
        let row = w
            .store
            .get(
                table,
                &selfie_services::tables::key(partition),
                &selfie_services::tables::key(clustering),
            )
            .await
            .expect("get");
        assert!(row.is_none(), "{} row left behind", table.name);
    }
    assert!(matches!(
        w.a.view(DAN, group).await,
        Err(Error::NotFound(_))
    ));
    let synced =
        w.a.sync(
            DAN,
            &SyncCursor([(group, hi.seq)].into_iter().collect()),
            None,
            10,
        )
        .await
        .expect("sync");
    assert_eq!(synced.limited, vec![group]);

    // History pages past a run of non-message entries instead of stalling on them.
    let old =
        w.a.send(ANA, group, text("old", "old news"))
            .await
            .expect("sent");
    let target =
        w.a.send(CAT, group, text("t", "react to me"))
            .await
            .expect("sent");
    for i in 0..2050 {
        let emoji = if i % 2 == 0 { "👍" } else { "🎉" };
        w.a.react(ANA, group, target.seq, Some(emoji))
            .await
            .expect("react");
    }
    // The same reaction again is no change and no entry.
    let head = w.a.head(group).await.expect("head");
    w.a.react(ANA, group, target.seq, Some("🎉"))
        .await
        .expect("react");
    assert_eq!(w.a.head(group).await.expect("head").last_seq, head.last_seq);
    let mut before = 0;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (page, next) = w.a.history(CAT, group, before, 1).await.expect("history");
        seen.extend(page.into_iter().map(|m| m.seq));
        match next {
            Some(n) => {
                assert!(before == 0 || n < before, "history did not move: {n}");
                before = n;
            }
            None => break,
        }
    }
    assert!(
        seen.contains(&old.seq) && seen.contains(&hi.seq),
        "{seen:?}"
    );

    // Edits in one millisecond keep every version; a message has at most MAX_EDITS.
    for i in 0..5 {
        w.a.edit(CAT, group, hi.seq, &format!("edit {i}"))
            .await
            .expect("edit");
    }
    let versions = w.a.versions(ANA, group, hi.seq).await.expect("versions");
    let texts: Vec<&str> = versions.iter().map(|v| v.text.as_str()).collect();
    assert_eq!(texts, ["hi", "edit 0", "edit 1", "edit 2", "edit 3"]);

    // List pages with pinned conversations: every conversation once, pinned first.
    for with in [BEN, CAT, DAN] {
        w.b.direct(ANA, with).await.ok();
    }
    let extra =
        w.a.group(ANA, &[CAT], "two", false, Vec::new(), None)
            .await
            .expect("group");
    let pin = Update {
        pinned: Some(true),
        ..Default::default()
    };
    w.a.update(ANA, extra, pin.clone()).await.expect("pin");
    w.a.update(ANA, friendly, pin).await.expect("pin");
    let (all, _) = w.a.list(ANA, Folder::Inbox, 100, None).await.expect("list");
    let all: Vec<u64> = all.iter().map(|v| v.conversation_id).collect();
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = w.a.list(ANA, Folder::Inbox, 1, after).await.expect("list");
        paged.extend(page.iter().map(|v| v.conversation_id));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(paged.len() <= all.len(), "{paged:?} vs {all:?}");
    }
    assert_eq!(paged, all);
    let mut pinned_first: Vec<u64> = all[..2].to_vec();
    pinned_first.sort_unstable();
    let mut expected = vec![extra, friendly];
    expected.sort_unstable();
    assert_eq!(pinned_first, expected);

    // A declined request leaves the decliner's list and syncs; starting it again from
    // that side brings it back.
    w.a.answer_request(BEN, request, false)
        .await
        .expect("declined");
    let (requests, _) =
        w.a.list(BEN, Folder::Requests, 20, None)
            .await
            .expect("list");
    assert!(requests.is_empty());
    let synced =
        w.a.sync(BEN, &SyncCursor::default(), None, 100)
            .await
            .expect("sync");
    assert!(synced.items.iter().all(|i| i.conversation_id != request));
    assert_eq!(w.a.direct(BEN, ANA).await.expect("again"), request);
    let (inbox, _) = w.a.list(BEN, Folder::Inbox, 20, None).await.expect("list");
    assert!(inbox.iter().any(|v| v.conversation_id == request));

    // Two of Dan's devices answer one request at once, on two nodes: one answer wins,
    // and his lists agree with it (listed when accepted, in neither list when declined).
    w.graph.unfollow(DAN, CAT).await.expect("unfollow");
    let asked =
        w.a.group(CAT, &[DAN], "ask", false, Vec::new(), None)
            .await
            .expect("group");
    let (x, y) = futures::join!(
        w.a.answer_request(DAN, asked, true),
        w.b.answer_request(DAN, asked, false)
    );
    assert!(x.is_ok() != y.is_ok(), "{x:?} {y:?}");
    let row = |table: &'static selfie_storage::Table| {
        let store = w.store.clone();
        async move {
            store
                .get(
                    table,
                    &selfie_services::tables::key(DAN),
                    &selfie_services::tables::key(asked),
                )
                .await
                .expect("get")
                .is_some()
        }
    };
    assert!(!row(&t::USER_REQUESTS).await);
    assert_eq!(row(&t::USER_CONVERSATIONS).await, x.is_ok());

    // Dan, removed above, is added back: the head forgets his removal, and roles and
    // removal apply to him again.
    w.a.add_members(ANA, group, &[DAN])
        .await
        .expect("added back");
    w.a.set_role(ANA, group, DAN, Role::Admin)
        .await
        .expect("role for the returning member");
    w.a.remove_member(ANA, group, DAN)
        .await
        .expect("removed again");
}

#[tokio::test]
async fn privacy_and_consistency_on_embedded() {
    let (s, _d) = embedded();
    privacy_and_consistency(s).await;
}

#[tokio::test]
async fn privacy_and_consistency_on_cql() {
    privacy_and_consistency(cql().await).await;
}

/// Starting conversations and claiming key packages are rate limited per user.
#[tokio::test]
async fn expensive_paths_are_rate_limited() {
    let (s, _d) = embedded();
    let w = world(s).await;
    friends(&w).await;
    let mut refused = None;
    for i in 0..100 {
        match w
            .a
            .group(ANA, &[BEN], &format!("g{i}"), false, Vec::new(), None)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (made, e) = refused.expect("group creation was never limited");
    assert!(matches!(e, Error::RateLimited(_)), "{e:?}");
    assert!(made >= 10, "limited too early: {made}");
    // Another user is not affected.
    w.a.group(BEN, &[ANA], "bens", false, Vec::new(), None)
        .await
        .expect("ben's own bucket");
    w.a.upload_key_packages(BEN, "phone", &[vec![1; 40]], None)
        .await
        .expect("uploaded");
    let mut limited = false;
    for _ in 0..100 {
        if let Err(e) = w.a.claim_key_packages(CAT, &[BEN]).await {
            assert!(matches!(e, Error::RateLimited(_)), "{e:?}");
            limited = true;
            break;
        }
    }
    assert!(limited, "key package claims were never limited");
    // Lists and syncs: each its own bucket per user.
    macro_rules! calls_before_limit {
        ($call:expr) => {{
            let mut allowed = None;
            for i in 0..1000 {
                if matches!($call.await, Err(Error::RateLimited(_))) {
                    allowed = Some(i);
                    break;
                }
            }
            allowed
        }};
    }
    let lists = calls_before_limit!(w.a.list(DAN, Folder::Inbox, 10, None));
    assert!(matches!(lists, Some(n) if n >= 10), "lists: {lists:?}");
    let syncs = calls_before_limit!(w.a.sync(DAN, &SyncCursor::default(), None, 10));
    assert!(matches!(syncs, Some(n) if n >= 10), "syncs: {syncs:?}");
    // Dan's lists and syncs used up nothing of Cat's.
    w.a.list(CAT, Folder::Inbox, 10, None)
        .await
        .expect("cat's list");
    w.a.sync(CAT, &SyncCursor::default(), None, 10)
        .await
        .expect("cat's sync");
    // A cursor naming thousands of conversations costs a sync per hundred of them: the
    // second such sync in a row waits.
    let huge = SyncCursor((1u64 << 40..(1u64 << 40) + 3000).map(|c| (c, 1)).collect());
    let first = w.a.sync(CAT, &huge, None, 10).await.expect("first");
    assert!(first.cursor.0.len() <= 3000);
    let second = w.a.sync(CAT, &huge, None, 10).await;
    assert!(matches!(second, Err(Error::RateLimited(_))), "{second:?}");
    // History pages and typing signals (flipping start and stop), whether or not the
    // caller is a member.
    let id = w.b.direct(ANA, BEN).await.expect("direct");
    let pages = calls_before_limit!(w.a.history(DAN, id, 0, 10));
    assert!(matches!(pages, Some(n) if n >= 10), "history: {pages:?}");
    let mut flips = 0;
    let typing = calls_before_limit!({
        flips += 1;
        w.a.typing(DAN, id, flips % 2 == 0)
    });
    assert!(matches!(typing, Some(n) if n >= 10), "typing: {typing:?}");
    // Sends, on a node with the default rate: a burst, then a wait; a retry of a send
    // already accepted is still answered; Ben's own sends are his.
    let node = Chat::new(w.store.clone(), Arc::new(SystemClock), 3, 0).expect("chat");
    let burst = SendRate::default().burst as usize;
    let mut sent = 0;
    let refused = loop {
        match node.send(ANA, id, text(&format!("s{sent}"), "hi")).await {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= 10 * burst, "sends were never limited");
    };
    assert!(matches!(refused, Error::RateLimited(_)), "{refused:?}");
    // (A token comes back each second: a slow machine may fit one or two more.)
    assert!((burst..2 * burst).contains(&sent), "sends: {sent}");
    let again = node.send(ANA, id, text("s1", "hi")).await.expect("retry");
    assert!(again.duplicate);
    node.send(BEN, id, text("b1", "hi ana"))
        .await
        .expect("ben's own bucket");
    // Receipts that move a position, one entry at a time: a burst, then a wait; one
    // that moves nothing costs nothing.
    for i in 0..200 {
        w.a.send(BEN, id, text(&format!("r{i}"), "more"))
            .await
            .expect("sent");
    }
    let head = w.a.head(id).await.expect("head").last_seq;
    let mut moved = 0;
    let refused = loop {
        let up_to = head - 250 + moved;
        match w.b.receipt(ANA, id, Receipt::Read, up_to).await {
            Ok(()) => moved += 1,
            Err(e) => break e,
        }
        assert!(moved < 250, "receipts were never limited");
    };
    assert!(matches!(refused, Error::RateLimited(_)), "{refused:?}");
    assert!(moved >= 100, "limited too early: {moved}");
    w.b.receipt(ANA, id, Receipt::Read, 1)
        .await
        .expect("moves nothing: free");
}

/// A claim hands out whole users within one answer and names those left out, whose
/// packages stay untouched.
#[tokio::test]
async fn claims_stop_at_whole_users() {
    use selfie_services::chat::MAX_KEY_PACKAGE_BYTES;
    let (s, _d) = embedded();
    let w = world(s).await;
    friends(&w).await;
    for user in [BEN, CAT] {
        for device in 0..16u8 {
            let packages: Vec<Vec<u8>> = (0..2u8)
                .map(|i| vec![device ^ (i << 5) ^ (user as u8); MAX_KEY_PACKAGE_BYTES])
                .collect();
            w.a.upload_key_packages(user, &format!("d{device}"), &packages, None)
                .await
                .expect("uploaded");
        }
    }
    let (packages, left_out) =
        w.a.claim_key_packages_within(DAN, &[CAT, BEN])
            .await
            .expect("claim");
    assert_eq!(packages.len(), 16);
    assert!(
        packages.iter().all(|p| p.user_id == BEN),
        "users in id order"
    );
    assert_eq!(left_out, vec![CAT]);
    let cat_rows = package_rows(&w.store, CAT).await.len();
    assert_eq!(cat_rows, 32, "a user left out lost a package");
    let (again, left_out) =
        w.a.claim_key_packages_within(DAN, &left_out)
            .await
            .expect("claim");
    assert_eq!((again.len(), left_out.len()), (16, 0));
}

/// One claimer takes one ordinary package of each device per window, on whichever node
/// it claims, and the device's last resort meanwhile: nobody drains a user's packages
/// (each claim it makes would burn one that another claimer needs).
async fn a_claimer_cannot_drain_packages<S: Store + Clone + 'static>(store: S) {
    let w = world(store).await;
    friends(&w).await;
    let packages: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 40]).collect();
    let last_resort = vec![99u8; 40];
    w.a.upload_key_packages(BEN, "phone", &packages, Some(&last_resort))
        .await
        .expect("uploaded");
    let first = w.a.claim_key_packages(DAN, &[BEN]).await.expect("claim");
    assert_ne!(first[0].key_package, last_resort, "an ordinary one first");
    for node in [&w.a, &w.b, &w.a, &w.b] {
        let again = node.claim_key_packages(DAN, &[BEN]).await.expect("claim");
        assert_eq!(again[0].key_package, last_resort, "then the last resort");
    }
    assert_eq!(package_rows(&w.store, BEN).await.len(), 6, "one used up");
    // Another claimer is not held back by Dan's claims.
    let cat = w.b.claim_key_packages(CAT, &[BEN]).await.expect("claim");
    assert_ne!(cat[0].key_package, last_resort);
    assert_ne!(cat[0].key_package, first[0].key_package);
    assert_eq!(package_rows(&w.store, BEN).await.len(), 5);
    // Ben's own other devices are not held to it.
    w.a.upload_key_packages(BEN, "laptop", &[vec![50; 40], vec![51; 40]], None)
        .await
        .expect("uploaded");
    let own = |got: Vec<selfie_services::chat::KeyPackage>| {
        got.into_iter()
            .find(|p| p.device_id == "phone")
            .map(|p| p.key_package)
    };
    let mine = own(w.a.claim_key_packages(BEN, &[BEN]).await.expect("own"));
    let mine_again = own(w.a.claim_key_packages(BEN, &[BEN]).await.expect("own"));
    assert_ne!(mine, Some(last_resort.clone()));
    assert_ne!(mine_again, Some(last_resort));
    assert_ne!(mine, mine_again);
}

#[tokio::test]
async fn a_claimer_cannot_drain_packages_on_embedded() {
    let (s, _d) = embedded();
    a_claimer_cannot_drain_packages(s).await;
}

#[tokio::test]
async fn a_claimer_cannot_drain_packages_on_cql() {
    a_claimer_cannot_drain_packages(cql().await).await;
}

/// A message keeps at most MAX_EDITS edits, every version readable.
#[tokio::test]
async fn edits_are_bounded() {
    use selfie_services::chat::MAX_EDITS;
    let (s, _d) = embedded();
    let w = world(s).await;
    friends(&w).await;
    let id = w.a.direct(ANA, BEN).await.expect("direct");
    let sent = w.a.send(ANA, id, text("m", "v0")).await.expect("sent");
    for i in 1..=MAX_EDITS {
        w.a.edit(ANA, id, sent.seq, &format!("v{i}"))
            .await
            .expect("edit");
    }
    assert!(
        w.a.edit(ANA, id, sent.seq, "one too many").await.is_err(),
        "more than MAX_EDITS edits"
    );
    let versions = w.a.versions(BEN, id, sent.seq).await.expect("versions");
    assert_eq!(versions.len(), MAX_EDITS as usize);
    assert_eq!(versions[0].text, "v0");
    let now = w.a.readable_message(BEN, id, sent.seq).await.expect("read");
    assert_eq!(now.text, format!("v{MAX_EDITS}"));
}

/// Races a change or a send loses to another node: each attempt after the first starts
/// over from the message and the members as the winner left them. On CQL a commit's
/// writes land after its condition; `Op::CommitWrites` holds them there.
async fn lost_races_start_over<S: Store + Clone + 'static>(inner: S) {
    let gate = Gate::default();
    let w = world(Gated {
        inner,
        gate: gate.clone(),
    })
    .await;
    friends(&w).await;
    let id = w.a.direct(ANA, BEN).await.expect("direct");

    // Ana's edit reads her message, then node 2 deletes it for everyone before the
    // edit's commit: the edit, retried, finds it deleted (it once wrote the text back).
    let m = w.a.send(ANA, id, text("r1", "oops")).await.expect("sent");
    let mut held = gate.arm(Op::Commit, "");
    let race = async {
        held.reached().await;
        w.b.delete(ANA, id, m.seq).await.expect("delete");
        held.release();
    };
    let (edited, ()) = tokio::join!(w.a.edit(ANA, id, m.seq, "fixed"), race);
    assert!(matches!(edited, Err(Error::Forbidden(_))), "{edited:?}");
    let now = w.a.readable_message(BEN, id, m.seq).await.expect("read");
    assert!(now.deleted && now.text.is_empty(), "{now:?}");

    // The same with the delete's head in and its row not yet (CQL): the edit does not
    // build on the row the head has moved past; it waits for it, then finds it deleted.
    let m =
        w.a.send(ANA, id, text("r2", "oops again"))
            .await
            .expect("sent");
    let mut held = gate.arm(Op::CommitWrites, "");
    let race = async {
        held.reached().await;
        let edit = w.b.edit(ANA, id, m.seq, "fixed");
        tokio::pin!(edit);
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(50), &mut edit).await {
            panic!("the edit was decided on a row its head had moved past: {done:?}");
        }
        held.release();
        edit.await
    };
    let (deleted, edited) = tokio::join!(w.a.delete(ANA, id, m.seq), race);
    deleted.expect("delete");
    assert!(matches!(edited, Err(Error::Forbidden(_))), "{edited:?}");
    let now = w.b.readable_message(BEN, id, m.seq).await.expect("read");
    assert!(now.deleted && now.text.is_empty(), "{now:?}");
    assert!(
        w.a.versions(ANA, id, m.seq)
            .await
            .expect("versions")
            .is_empty()
    );

    // Two reactions racing on two nodes: both are kept.
    let m = w.a.send(ANA, id, text("r3", "react")).await.expect("sent");
    let mut held = gate.arm(Op::Commit, "");
    let race = async {
        held.reached().await;
        w.b.react(BEN, id, m.seq, Some("🔥")).await.expect("ben");
        held.release();
    };
    let (ana, ()) = tokio::join!(w.a.react(ANA, id, m.seq, Some("👍")), race);
    ana.expect("ana");
    let now = w.a.readable_message(ANA, id, m.seq).await.expect("read");
    let mut reactions = now.reactions.clone();
    reactions.sort();
    assert_eq!(
        reactions,
        vec![(ANA, "👍".to_string()), (BEN, "🔥".to_string())]
    );

    // Ben, an admin, deletes Cat's message while node 2 takes his role away before his
    // commit: the retry is decided by the role he has now, and refused.
    let g =
        w.a.group(ANA, &[BEN, CAT], "roles", false, Vec::new(), None)
            .await
            .expect("group");
    w.a.set_role(ANA, g, BEN, Role::Admin).await.expect("admin");
    let cats = w.a.send(CAT, g, text("c1", "mine")).await.expect("sent");
    let mut held = gate.arm(Op::Commit, "");
    let race = async {
        held.reached().await;
        w.b.set_role(ANA, g, BEN, Role::Member)
            .await
            .expect("demoted");
        held.release();
    };
    let (deleted, ()) = tokio::join!(w.a.delete(BEN, g, cats.seq), race);
    assert!(matches!(deleted, Err(Error::Forbidden(_))), "{deleted:?}");
    let now = w.a.readable_message(CAT, g, cats.seq).await.expect("read");
    assert!(!now.deleted, "{now:?}");
    // The same for adding a member: Ben, an admin again, adds Dan while node 2 takes
    // his role away before his commit.
    w.a.set_role(ANA, g, BEN, Role::Admin).await.expect("admin");
    let mut held = gate.arm(Op::Commit, "");
    let race = async {
        held.reached().await;
        w.b.set_role(ANA, g, BEN, Role::Member)
            .await
            .expect("demoted");
        held.release();
    };
    let (added, ()) = tokio::join!(w.a.add_members(BEN, g, &[DAN]), race);
    assert!(matches!(added, Err(Error::Forbidden(_))), "{added:?}");
    assert!(matches!(
        w.a.history(DAN, g, 0, 10).await,
        Err(Error::NotFound(_))
    ));

    // Dan's claim marks Ben's phone as claimed, then loses its one ordinary package to
    // Cat's claim on node 2: Dan gets the last resort, and his mark is taken back (he
    // took nothing fresh), so his next claim gets the package Ben uploads next.
    let last_resort = vec![90u8; 40];
    w.a.upload_key_packages(BEN, "phone", &[vec![91; 40]], Some(&last_resort))
        .await
        .expect("uploaded");
    let mut held = gate.arm(Op::DeleteIfPresent, "chat_mls_key_packages");
    let race = async {
        held.reached().await;
        let cat = w.b.claim_key_packages(CAT, &[BEN]).await.expect("cat");
        held.release();
        cat
    };
    let (dan, cat) = tokio::join!(w.a.claim_key_packages(DAN, &[BEN]), race);
    assert_eq!(cat[0].key_package, vec![91; 40]);
    assert_eq!(dan.expect("dan")[0].key_package, last_resort);
    w.a.upload_key_packages(BEN, "phone", &[vec![92; 40]], None)
        .await
        .expect("uploaded");
    let again =
        w.a.claim_key_packages(DAN, &[BEN])
            .await
            .expect("dan again");
    assert_eq!(
        again[0].key_package,
        vec![92; 40],
        "the mark was taken back"
    );

    // Cat's send reads the members, then node 2 removes her before its commit: the
    // retry is refused, and nobody reads a message from someone no longer there.
    let g =
        w.a.group(ANA, &[BEN, CAT], "trip", false, Vec::new(), None)
            .await
            .expect("group");
    let mut held = gate.arm(Op::Commit, "");
    let race = async {
        held.reached().await;
        w.b.remove_member(ANA, g, CAT).await.expect("removed");
        held.release();
    };
    let (sent, ()) = tokio::join!(w.a.send(CAT, g, text("late", "still here?")), race);
    assert!(matches!(sent, Err(Error::NotFound(_))), "{sent:?}");
    let (seen, _) = w.a.history(BEN, g, 0, 50).await.expect("history");
    assert!(seen.iter().all(|m| m.sender_id != CAT), "{seen:?}");
}

#[tokio::test]
async fn lost_races_start_over_on_embedded() {
    let (s, _d) = embedded();
    lost_races_start_over(s).await;
}

#[tokio::test]
async fn lost_races_start_over_on_cql() {
    lost_races_start_over(cql().await).await;
}

/// A flood of message requests (from a thousand throwaway accounts) pushes none of a
/// user's conversations out of his inbox or his syncs; a conversation older than the
/// newest thousand still syncs while its cursor names it; one he left is answered gone.
#[tokio::test]
async fn floods_crowd_out_no_conversation() {
    use selfie_services::chat::{MAX_USER_CONVERSATIONS, MAX_USER_REQUESTS};
    let (s, _d) = embedded();
    let w = world(s).await;
    friends(&w).await;
    let ours = w.a.direct(ANA, BEN).await.expect("direct");
    w.a.send(ANA, ours, text("o1", "hi")).await.expect("sent");
    let left =
        w.a.group(ANA, &[BEN], "left", false, Vec::new(), None)
            .await
            .expect("group");
    let cursor =
        w.a.sync(BEN, &SyncCursor::default(), None, 1000)
            .await
            .expect("sync")
            .cursor;
    w.a.remove_member(BEN, left, BEN).await.expect("left");
    let flooders = 10_000..10_000 + (MAX_USER_CONVERSATIONS as u64 + 20);
    for u in flooders.clone() {
        w.users.create(u, &format!("f{u}")).await.expect("profile");
        w.a.direct(u, BEN).await.expect("request");
    }
    let (inbox, _) = w.a.list(BEN, Folder::Inbox, 20, None).await.expect("inbox");
    assert!(inbox.iter().any(|v| v.conversation_id == ours));
    let (requests, next) =
        w.a.list(BEN, Folder::Requests, 20, None)
            .await
            .expect("requests");
    assert_eq!(requests.len(), 20);
    assert!(next.is_some());
    // The requests folder shows the newest MAX_USER_REQUESTS.
    let (mut shown, mut after) = (0, None);
    loop {
        let (page, next) =
            w.a.list(BEN, Folder::Requests, 100, after)
                .await
                .expect("requests");
        shown += page.len();
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(shown, MAX_USER_REQUESTS);
    w.a.send(ANA, ours, text("o2", "still here"))
        .await
        .expect("sent");
    // Whether a sync from `cursor` brought news of `ours`.
    let news = |synced: &selfie_services::chat::Synced, cursor: &SyncCursor| {
        synced
            .items
            .iter()
            .any(|i| i.conversation_id == ours && i.seq > cursor.0[&ours])
    };
    let synced = w.a.sync(BEN, &cursor, None, 1000).await.expect("sync");
    assert!(
        news(&synced, &cursor),
        "the flood hid a real conversation's news"
    );
    assert_eq!(synced.limited, vec![left], "only the one he left is gone");
    assert!(!synced.cursor.0.contains_key(&left));
    // A device that heard of every request (pushes reach requests too) cannot be made
    // to carry them all: requests beyond the newest a sync lists leave its cursor.
    let mut everything = synced.cursor.clone();
    for u in flooders.clone() {
        everything
            .0
            .insert(w.a.direct(u, BEN).await.expect("id"), 1);
    }
    let trimmed = w.a.sync(BEN, &everything, None, 1000).await.expect("sync");
    assert!(trimmed.cursor.0.len() <= selfie_services::chat::SYNC_REQUESTS + 10);
    assert!(trimmed.cursor.0.contains_key(&ours));
    assert!(trimmed.limited.len() >= flooders.clone().count() - 100);
    // Ben now has more active conversations than a sync considers by itself: the old
    // one still syncs because his cursor names it.
    for u in flooders.clone().take(MAX_USER_CONVERSATIONS + 5) {
        w.a.answer_request(BEN, w.a.direct(u, BEN).await.expect("id"), true)
            .await
            .expect("accepted");
    }
    let cursor = synced.cursor;
    w.a.send(ANA, ours, text("o3", "old but here"))
        .await
        .expect("sent");
    let synced = w.a.sync(BEN, &cursor, None, 1000).await.expect("sync");
    assert!(
        news(&synced, &cursor),
        "an old conversation stopped syncing"
    );
    assert!(synced.limited.is_empty(), "{:?}", synced.limited);
}
