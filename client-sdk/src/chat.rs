//! Chat in the client: typed requests ([`ChatApi`], from [`Client::chat`]) and a
//! device's offline-first chat state ([`ChatStore`]).
//!
//! A [`ChatStore`] is an embedded store (fjall, under a directory the app chooses) of
//! what the device has: per conversation the log entries received (messages, edits,
//! deletions, membership…) and the last sequence number held — together the device's
//! sync cursor — plus a durable **outbox** of messages written while offline.
//!
//! - **Exactly what was missed.** Live pushes ([`ChatStore::apply_push`]) and syncs
//!   ([`ChatStore::sync`]) both feed [`ChatStore::apply`]: an entry at or below the
//!   conversation's position is a duplicate and dropped; the next number is stored and
//!   the position moves; a jump is a gap, which [`ChatStore::sync_conversation`] fills
//!   from the server before the pushed entry is applied. So pushes and syncs can overlap
//!   in any order and each entry is applied once, in order.
//! - **The outbox.** [`ChatStore::queue`] writes a send to disk (with its transaction
//!   id) before anything goes on the network; [`ChatStore::flush`] sends the queue in
//!   order and removes each entry only once the server answered. A crash between the
//!   answer and the removal only means the send goes again, and the server answers it
//!   as a duplicate of the first: the message exists once.
//! - **Gaps the server no longer covers** come back as `limited`: the conversation's
//!   local entries are dropped and its recent history refetched
//!   ([`SyncReport::refetched`]).
//!
//! Writes are made durable (`fsync`) before the functions return.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use selfie_protocol::chat::{self as pc, ChatOpT};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::{BodyT, EnvelopeT};

use crate::{Client, ClientError, Subscription};

/// Typed chat requests over one session.
pub struct ChatApi<'a>(&'a Client);

impl Client {
    /// This session's chat requests.
    pub fn chat(&self) -> ChatApi<'_> {
        ChatApi(self)
    }
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what}"))
}

impl ChatApi<'_> {
    /// Sends a chat operation and returns the answer's operation.
    pub async fn call(&self, op: ChatOpT) -> Result<ChatOpT, ClientError> {
        let frame = self
            .0
            .request(|b, id| {
                let mut chat = pc::ChatT::default();
                chat.op = op;
                let mut e = EnvelopeT::default();
                e.id = id;
                e.body = BodyT::Chat(Box::new(chat));
                e.pack(b)
            })
            .await?;
        match frame.envelope().unpack().body {
            BodyT::Chat(c) => Ok(c.op),
            BodyT::Control(_) => Ok(ChatOpT::NONE),
            _ => Err(unexpected("a chat answer")),
        }
    }

    async fn ack(&self, op: ChatOpT) -> Result<(), ClientError> {
        self.call(op).await.map(|_| ())
    }

    async fn conversation(&self, op: ChatOpT) -> Result<pc::ConversationT, ClientError> {
        match self.call(op).await? {
            ChatOpT::ConversationResponse(r) => r
                .conversation
                .map(|c| *c)
                .ok_or_else(|| unexpected("a conversation")),
            _ => Err(unexpected("ConversationResponse")),
        }
    }

    /// Starts (or returns) the direct conversation with `user`.
    pub async fn direct(&self, user: u64) -> Result<pc::ConversationT, ClientError> {
        let mut r = pc::CreateConversationRequestT::default();
        r.kind = pc::ConversationKind::Direct;
        r.member_ids = Some(vec![user]);
        self.conversation(ChatOpT::CreateConversationRequest(Box::new(r)))
            .await
    }

    /// Makes a group; a retry with the same `key` returns the first one.
    pub async fn group(
        &self,
        members: &[u64],
        title: &str,
        key: &str,
    ) -> Result<pc::ConversationT, ClientError> {
        let mut r = pc::CreateConversationRequestT::default();
        r.kind = pc::ConversationKind::Group;
        r.member_ids = Some(members.to_vec());
        r.title = Some(title.to_string());
        r.idempotency_key = Some(key.to_string());
        self.conversation(ChatOpT::CreateConversationRequest(Box::new(r)))
            .await
    }

    /// The conversation as this user sees it.
    pub async fn get(&self, conversation_id: u64) -> Result<pc::ConversationT, ClientError> {
        let mut r = pc::GetConversationRequestT::default();
        r.conversation_id = conversation_id;
        self.conversation(ChatOpT::GetConversationRequest(Box::new(r)))
            .await
    }

    /// One page of conversations of `folder`.
    pub async fn list(
        &self,
        folder: pc::ConversationFolder,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pc::ConversationsListResponseT, ClientError> {
        let mut r = pc::ConversationsListRequestT::default();
        r.folder = folder;
        let mut page = selfie_protocol::common::PageRequestT::default();
        page.limit = limit;
        page.cursor = cursor;
        r.page = Some(Box::new(page));
        match self
            .call(ChatOpT::ConversationsListRequest(Box::new(r)))
            .await?
        {
            ChatOpT::ConversationsListResponse(l) => Ok(*l),
            _ => Err(unexpected("ConversationsListResponse")),
        }
    }

    /// Sends a message (built in full by the caller).
    pub async fn send_request(
        &self,
        r: pc::SendMessageRequestT,
    ) -> Result<pc::SendMessageResponseT, ClientError> {
        match self.call(ChatOpT::SendMessageRequest(Box::new(r))).await? {
            ChatOpT::SendMessageResponse(s) => Ok(*s),
            _ => Err(unexpected("SendMessageResponse")),
        }
    }

    /// Sends a text message with the transaction id `client_msg_id`.
    pub async fn send(
        &self,
        conversation_id: u64,
        client_msg_id: &str,
        text: &str,
    ) -> Result<pc::SendMessageResponseT, ClientError> {
        self.send_request(text_message(conversation_id, client_msg_id, text))
            .await
    }

    /// Edits a message.
    pub async fn edit(
        &self,
        conversation_id: u64,
        seq: u64,
        text: &str,
    ) -> Result<(), ClientError> {
        let mut r = pc::EditMessageRequestT::default();
        r.conversation_id = conversation_id;
        r.seq = seq;
        r.text = Some(text.to_string());
        self.ack(ChatOpT::EditMessageRequest(Box::new(r))).await
    }

    /// Deletes a message for everyone.
    pub async fn delete(&self, conversation_id: u64, seq: u64) -> Result<(), ClientError> {
        let mut r = pc::DeleteMessageRequestT::default();
        r.conversation_id = conversation_id;
        r.seq = seq;
        r.for_everyone = true;
        self.ack(ChatOpT::DeleteMessageRequest(Box::new(r))).await
    }

    /// Reacts to a message (`None` takes the reaction back).
    pub async fn react(
        &self,
        conversation_id: u64,
        seq: u64,
        emoji: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut r = pc::MessageReactRequestT::default();
        r.conversation_id = conversation_id;
        r.seq = seq;
        r.emoji = emoji.map(str::to_string);
        r.remove = emoji.is_none();
        self.ack(ChatOpT::MessageReactRequest(Box::new(r))).await
    }

    /// Marks the conversation read up to `seq`.
    pub async fn read(&self, conversation_id: u64, up_to_seq: u64) -> Result<(), ClientError> {
        let mut r = pc::ReadReceiptRequestT::default();
        r.conversation_id = conversation_id;
        r.up_to_seq = up_to_seq;
        self.ack(ChatOpT::ReadReceiptRequest(Box::new(r))).await
    }

    /// Acknowledges that this device holds everything up to `seq`.
    pub async fn delivered(&self, conversation_id: u64, up_to_seq: u64) -> Result<(), ClientError> {
        let mut r = pc::DeliveryReceiptRequestT::default();
        r.conversation_id = conversation_id;
        r.up_to_seq = up_to_seq;
        self.ack(ChatOpT::DeliveryReceiptRequest(Box::new(r))).await
    }

    /// Accepts or declines a message request.
    pub async fn answer_request(
        &self,
        conversation_id: u64,
        accept: bool,
    ) -> Result<(), ClientError> {
        let mut r = pc::MessageRequestAnswerRequestT::default();
        r.conversation_id = conversation_id;
        r.accept = accept;
        self.ack(ChatOpT::MessageRequestAnswerRequest(Box::new(r)))
            .await
    }

    /// Messages before `before_seq` (0: the newest), newest first.
    pub async fn history(
        &self,
        conversation_id: u64,
        before_seq: u64,
        limit: u16,
    ) -> Result<pc::MessagesPageT, ClientError> {
        let mut r = pc::HistoryRequestT::default();
        r.conversation_id = conversation_id;
        r.before_seq = before_seq;
        r.limit = limit;
        match self.call(ChatOpT::HistoryRequest(Box::new(r))).await? {
            ChatOpT::MessagesPage(p) => Ok(*p),
            _ => Err(unexpected("MessagesPage")),
        }
    }

    /// What follows `cursor` (one conversation, or all when `conversation_id` is 0).
    pub async fn sync(
        &self,
        cursor: &[u8],
        conversation_id: u64,
        limit: u16,
    ) -> Result<pc::SyncResponseT, ClientError> {
        let mut r = pc::SyncRequestT::default();
        r.since_cursor = Some(cursor.to_vec());
        r.conversation_id = conversation_id;
        r.limit = limit;
        match self.call(ChatOpT::SyncRequest(Box::new(r))).await? {
            ChatOpT::SyncResponse(s) => Ok(*s),
            _ => Err(unexpected("SyncResponse")),
        }
    }

    /// Says that this user started (or stopped) typing in `conversation_id`: a
    /// datagram, latest wins (the server fills in who and when).
    pub fn typing(&self, conversation_id: u64, typing: bool) -> Result<(), ClientError> {
        use selfie_protocol::datagram as dg;
        self.0.send_datagram(|b| {
            let t = dg::Typing::create(
                b,
                &dg::TypingArgs {
                    conversation_id,
                    typing,
                    ..Default::default()
                },
            );
            dg::Datagram::create(
                b,
                &dg::DatagramArgs {
                    seq: 0,
                    body_type: dg::DatagramBody::Typing,
                    body: Some(t.as_union_value()),
                },
            )
        })
    }

    /// Says this user's presence (repeat it while in the foreground: a status older than
    /// 90 seconds reads as offline).
    pub fn presence(
        &self,
        status: selfie_protocol::datagram::PresenceStatus,
    ) -> Result<(), ClientError> {
        use selfie_protocol::datagram as dg;
        self.0.send_datagram(|b| {
            let p = dg::Presence::create(
                b,
                &dg::PresenceArgs {
                    status,
                    ..Default::default()
                },
            );
            dg::Datagram::create(
                b,
                &dg::DatagramArgs {
                    seq: 0,
                    body_type: dg::DatagramBody::Presence,
                    body: Some(p.as_union_value()),
                },
            )
        })
    }

    /// Typing and presence signals for this user, which then arrive as datagrams
    /// ([`Client::recv_datagram`], read with [`signal`]); the subscription itself carries
    /// nothing.
    pub async fn subscribe_signals(&self) -> Result<Subscription, ClientError> {
        self.0.subscribe(SubscriptionKind::Presence, 0, None).await
    }

    /// Every change of every conversation of this user, live.
    pub async fn subscribe(&self) -> Result<Subscription, ClientError> {
        self.0
            .subscribe(SubscriptionKind::AllConversations, 0, None)
            .await
    }
}

/// A text message request.
pub fn text_message(
    conversation_id: u64,
    client_msg_id: &str,
    text: &str,
) -> pc::SendMessageRequestT {
    let mut r = pc::SendMessageRequestT::default();
    r.conversation_id = conversation_id;
    r.client_msg_id = Some(client_msg_id.to_string());
    r.kind = pc::MessageKind::Text;
    r.text = Some(text.to_string());
    r
}

/// A typing or presence signal received as a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `user` started (`typing`) or stopped typing in `conversation_id`.
    Typing {
        /// The conversation.
        conversation_id: u64,
        /// Who.
        user: u64,
        /// Started or stopped.
        typing: bool,
        /// The sender's order: keep the newest.
        seq: u64,
    },
    /// `user`'s presence.
    Presence {
        /// Who.
        user: u64,
        /// The status.
        status: selfie_protocol::datagram::PresenceStatus,
        /// When they were last active.
        last_active_ms: u64,
        /// The order: keep the newest.
        seq: u64,
    },
}

/// The signal a datagram carries, if it is one.
pub fn signal(d: &selfie_codec::DatagramFrame) -> Option<Signal> {
    let d = d.datagram();
    let seq = d.seq();
    if let Some(t) = d.body_as_typing() {
        return Some(Signal::Typing {
            conversation_id: t.conversation_id(),
            user: t.user_id(),
            typing: t.typing(),
            seq,
        });
    }
    d.body_as_presence().map(|p| Signal::Presence {
        user: p.user_id(),
        status: p.status(),
        last_active_ms: p.last_active_ms(),
        seq,
    })
}

/// The chat event a push frame carries, if it is one.
pub fn push_event(frame: &selfie_codec::Frame) -> Option<pc::ChatEventT> {
    let env = frame.envelope();
    let event = env.body_as_chat()?.op_as_chat_event()?;
    Some(event.unpack())
}

/// What [`ChatStore::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new log entry, stored; the conversation's position moved to it.
    New,
    /// Already held (at or below the position): dropped.
    Duplicate,
    /// Numbers were skipped: the conversation holds `have`, the event is `got`. Fill the
    /// gap with [`ChatStore::sync_conversation`].
    Gap {
        /// The conversation.
        conversation_id: u64,
        /// Its position.
        have: u64,
        /// The event's number.
        got: u64,
    },
    /// Not a log entry (a receipt): nothing stored.
    State,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// New log entries stored.
    pub new: usize,
    /// Entries received that were already held.
    pub duplicates: usize,
    /// Conversations whose gap the server no longer covers: local entries dropped and
    /// the newest page refetched.
    pub refetched: Vec<u64>,
}

/// Conversations a sync cursor names at most (the server's
/// `chat::MAX_CURSOR_CONVERSATIONS`): older ones the device holds are kept, not synced.
pub const MAX_CURSOR: usize = 4000;

const CURSOR_VERSION: u8 = 1;

fn key2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}

fn store_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("local store: {e}"))
}

/// Packs a table of the object API as a standalone FlatBuffer.
macro_rules! packed {
    ($t:expr) => {{
        let mut b = flatbuffers::FlatBufferBuilder::new();
        let o = $t.pack(&mut b);
        b.finish_minimal(o);
        b.finished_data().to_vec()
    }};
}

/// Whether the server refused a send for good (a block, a declined request, a bad
/// field): it leaves the outbox. Anything else (the network, overload, a rate limit, a
/// storage failure) keeps it for the next flush.
fn is_refusal(e: &ClientError) -> bool {
    use selfie_protocol::ErrorCode as C;
    match e {
        ClientError::Server { code, .. } => !matches!(
            *code,
            C::RateLimited
                | C::Overloaded
                | C::Draining
                | C::Unavailable
                | C::Timeout
                | C::StorageFailure
                | C::Internal
                | C::TokenExpired
                | C::Unauthenticated
        ),
        _ => false,
    }
}

/// A device's chat state on disk (see the module docs).
pub struct ChatStore {
    db: Database,
    /// conversation → the last number held.
    positions: Keyspace,
    /// (conversation, number) → the `ChatEvent`.
    log: Keyspace,
    /// local order → a `SendMessageRequest`.
    outbox: Keyspace,
    /// `next_place` → the next outbox place (never reused: a flush working from an
    /// older snapshot can never remove a newer send).
    meta: Keyspace,
    /// Held while a send takes its place: two sends queued at once (from two tasks)
    /// get two places, never one overwriting the other.
    queue_lock: std::sync::Mutex<()>,
    /// One flush at a time.
    flush_lock: tokio::sync::Mutex<()>,
}

impl ChatStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ClientError> {
        let db = Database::builder(dir.as_ref()).open().map_err(store_err)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(store_err)
        };
        Ok(Self {
            positions: ks("chat_positions")?,
            log: ks("chat_log")?,
            outbox: ks("chat_outbox")?,
            meta: ks("chat_outbox_meta")?,
            queue_lock: std::sync::Mutex::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            db,
        })
    }

    fn persist(&self) -> Result<(), ClientError> {
        self.db.persist(PersistMode::SyncAll).map_err(store_err)
    }

    /// The last number held of `conversation` (0: nothing).
    pub fn position(&self, conversation: u64) -> Result<u64, ClientError> {
        let v = self
            .positions
            .get(conversation.to_be_bytes())
            .map_err(store_err)?;
        Ok(v.and_then(|v| u64_at(&v, 0)).unwrap_or(0))
    }

    /// The device's sync cursor (the positions of its newest [`MAX_CURSOR`]
    /// conversations, in the server's cursor format: a version byte, then
    /// (conversation, number) pairs, big-endian).
    pub fn cursor(&self) -> Result<Vec<u8>, ClientError> {
        let mut out = vec![CURSOR_VERSION];
        // Conversation ids grow with time: the newest come last.
        for kv in self.positions.iter().rev().take(MAX_CURSOR) {
            let (k, v) = kv.into_inner().map_err(store_err)?;
            out.extend_from_slice(&k);
            out.extend_from_slice(&v);
        }
        Ok(out)
    }

    /// Applies one event (from a push or a sync), durably.
    pub fn apply(&self, event: &pc::ChatEventT) -> Result<Applied, ClientError> {
        let applied = self.apply_one(event)?;
        if applied == Applied::New {
            self.persist()?;
        }
        Ok(applied)
    }

    fn apply_one(&self, event: &pc::ChatEventT) -> Result<Applied, ClientError> {
        self.apply_at(event, false)
    }

    /// Applies an event; `synced`: from a sync page, where numbers hidden from this user
    /// (a block, an MLS welcome for others) are skipped and the page's cursor moves the
    /// position past them ([`ChatStore::advance`]).
    fn apply_at(&self, event: &pc::ChatEventT, synced: bool) -> Result<Applied, ClientError> {
        let (conversation, seq) = (event.conversation_id, event.event_seq);
        if seq == 0 {
            return Ok(Applied::State);
        }
        let have = self.position(conversation)?;
        if seq <= have {
            return Ok(Applied::Duplicate);
        }
        // A conversation's first entry is its creation, or (for someone added later)
        // their joining: both may start past 1.
        let starts = have == 0
            && matches!(
                event.kind,
                pc::ChatEventKind::ConversationCreated | pc::ChatEventKind::MemberJoined
            );
        if seq != have + 1 && !starts && !synced {
            return Ok(Applied::Gap {
                conversation_id: conversation,
                have,
                got: seq,
            });
        }
        let mut batch = self.db.batch();
        batch.insert(&self.log, key2(conversation, seq), packed!(event));
        batch.insert(
            &self.positions,
            conversation.to_be_bytes(),
            seq.to_be_bytes(),
        );
        batch.commit().map_err(store_err)?;
        Ok(Applied::New)
    }

    /// Applies a pushed frame; a gap is filled from the server first (through `client`).
    pub async fn apply_push(
        &self,
        client: &Client,
        frame: &selfie_codec::Frame,
    ) -> Result<Applied, ClientError> {
        let Some(event) = push_event(frame) else {
            return Ok(Applied::State);
        };
        match self.apply(&event)? {
            Applied::Gap {
                conversation_id, ..
            } => {
                self.sync_conversation(client, conversation_id).await?;
                // The sync brought the pushed entry too (or it is a duplicate now).
                Ok(self.apply(&event)?)
            }
            other => Ok(other),
        }
    }

    /// Catches up on every conversation from the device's cursor.
    pub async fn sync(&self, client: &Client) -> Result<SyncReport, ClientError> {
        self.sync_from(client, 0).await
    }

    /// Catches up on one conversation.
    pub async fn sync_conversation(
        &self,
        client: &Client,
        conversation_id: u64,
    ) -> Result<SyncReport, ClientError> {
        self.sync_from(client, conversation_id).await
    }

    async fn sync_from(&self, client: &Client, only: u64) -> Result<SyncReport, ClientError> {
        let mut report = SyncReport::default();
        loop {
            let cursor = self.cursor()?;
            let page = client.chat().sync(&cursor, only, 500).await?;
            for event in page.events.iter().flatten() {
                match self.apply_at(event, true)? {
                    Applied::New => report.new += 1,
                    Applied::Duplicate => report.duplicates += 1,
                    Applied::Gap { .. } | Applied::State => {}
                }
            }
            let limited: Vec<u64> = page.limited.iter().flatten().copied().collect();
            for &conversation in &limited {
                self.refetch(client, conversation, &page.next_cursor)
                    .await?;
                report.refetched.push(conversation);
            }
            let moved = self.advance(page.next_cursor.as_deref().unwrap_or(&[]), &limited)?;
            self.persist()?;
            let empty = page.events.as_ref().is_none_or(Vec::is_empty);
            if !page.has_more || (empty && !moved) {
                return Ok(report);
            }
        }
    }

    /// Moves positions on to a sync's cursor (past entries hidden from this user), never
    /// back, leaving out the `refetched` conversations; whether any moved.
    fn advance(&self, cursor: &[u8], refetched: &[u64]) -> Result<bool, ClientError> {
        if cursor.first() != Some(&CURSOR_VERSION) {
            return Ok(false);
        }
        let mut moved = false;
        let mut batch = self.db.batch();
        for pair in cursor[1..].chunks_exact(16) {
            let (Some(conversation), Some(seq)) = (u64_at(pair, 0), u64_at(pair, 8)) else {
                continue;
            };
            if refetched.contains(&conversation) || seq <= self.position(conversation)? {
                continue;
            }
            batch.insert(
                &self.positions,
                conversation.to_be_bytes(),
                seq.to_be_bytes(),
            );
            moved = true;
        }
        batch.commit().map_err(store_err)?;
        Ok(moved)
    }

    /// Drops what the device held of `conversation` and starts over from the newest
    /// page (or forgets it, when the user is no longer in it).
    async fn refetch(
        &self,
        client: &Client,
        conversation: u64,
        next_cursor: &Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let prefix = conversation.to_be_bytes();
        let keys: Vec<_> = self
            .log
            .prefix(prefix)
            .map(|kv| kv.key().map_err(store_err))
            .collect::<Result<_, _>>()?;
        let mut batch = self.db.batch();
        for k in keys {
            batch.remove(&self.log, k);
        }
        batch.remove(&self.positions, prefix);
        batch.commit().map_err(store_err)?;
        let position = next_cursor.as_deref().and_then(|c| {
            c.get(1..)?
                .chunks_exact(16)
                .find(|p| u64_at(p, 0) == Some(conversation))
                .and_then(|p| u64_at(p, 8))
        });
        let Some(position) = position else {
            return Ok(()); // no longer a member
        };
        let page = match client.chat().history(conversation, 0, 50).await {
            Ok(p) => p,
            Err(e) if e.code() == Some(selfie_protocol::ErrorCode::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut batch = self.db.batch();
        for m in page.messages.into_iter().flatten() {
            let mut e = pc::ChatEventT::default();
            e.kind = pc::ChatEventKind::MessageCreated;
            e.conversation_id = conversation;
            e.event_seq = m.seq;
            e.actor_id = m.sender_id;
            e.at_ms = m.created_at_ms;
            e.message = Some(Box::new(m));
            batch.insert(&self.log, key2(conversation, e.event_seq), packed!(e));
        }
        batch.insert(&self.positions, prefix, position.to_be_bytes());
        batch.commit().map_err(store_err)?;
        Ok(())
    }

    /// The stored log entries of `conversation`, in order.
    pub fn events(&self, conversation: u64) -> Result<Vec<pc::ChatEventT>, ClientError> {
        let mut out = Vec::new();
        for kv in self.log.prefix(conversation.to_be_bytes()) {
            let v = kv.value().map_err(store_err)?;
            let e = flatbuffers::root::<pc::ChatEvent>(&v).map_err(store_err)?;
            out.push(e.unpack());
        }
        Ok(out)
    }

    /// The messages of `conversation` the device holds, oldest first, with later
    /// edits and deletions applied.
    pub fn messages(&self, conversation: u64) -> Result<Vec<pc::MessageT>, ClientError> {
        let mut out: Vec<pc::MessageT> = Vec::new();
        for e in self.events(conversation)? {
            let target = e.message.as_ref().map_or(0, |m| m.seq);
            let find = |out: &mut Vec<pc::MessageT>| out.iter_mut().position(|m| m.seq == target);
            match e.kind {
                pc::ChatEventKind::MessageCreated => {
                    if let Some(m) = e.message {
                        out.push(*m);
                    }
                }
                pc::ChatEventKind::MessageEdited => {
                    if let Some(i) = find(&mut out) {
                        out[i].text = e.message.and_then(|m| m.text);
                        out[i].edited_at_ms = e.at_ms;
                        out[i].edit_count += 1;
                    }
                }
                pc::ChatEventKind::MessageDeleted => {
                    if let Some(i) = find(&mut out) {
                        out[i].deleted = true;
                        out[i].text = None;
                        out[i].media = None;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Writes a send to the outbox (durable before it returns); returns its place.
    pub fn queue(&self, request: &pc::SendMessageRequestT) -> Result<u64, ClientError> {
        let _place = self
            .queue_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = self
            .outbox
            .last_key_value()
            .map(|kv| kv.key().map_err(store_err))
            .transpose()?
            .and_then(|k| u64_at(&k, 0))
            .unwrap_or(0);
        let next = self
            .meta
            .get(b"next_place")
            .map_err(store_err)?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(1);
        let place = next.max(last + 1);
        self.outbox
            .insert(place.to_be_bytes(), packed!(request))
            .map_err(store_err)?;
        self.meta
            .insert(b"next_place", (place + 1).to_be_bytes())
            .map_err(store_err)?;
        self.persist()?;
        Ok(place)
    }

    /// The sends waiting, in order.
    pub fn outbox(&self) -> Result<Vec<(u64, pc::SendMessageRequestT)>, ClientError> {
        let mut out = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv.into_inner().map_err(store_err)?;
            let r = flatbuffers::root::<pc::SendMessageRequest>(&v).map_err(store_err)?;
            out.push((u64_at(&k, 0).unwrap_or(0), r.unpack()));
        }
        Ok(out)
    }

    /// Sends the outbox in order; each send leaves it once answered (a refusal, such as
    /// a block, leaves it too and is returned: an MLS message refused with `Conflict`
    /// was made in an epoch the group has left, and the app encrypts it again in the
    /// current one). Stops at the first transport failure or retryable answer, keeping
    /// the rest for the next flush.
    pub async fn flush(
        &self,
        client: &Client,
    ) -> Result<Vec<Result<pc::SendMessageResponseT, ClientError>>, ClientError> {
        let _one = self.flush_lock.lock().await;
        let mut results = Vec::new();
        for (place, request) in self.outbox()? {
            let result = client.chat().send_request(request).await;
            match &result {
                Err(e) if !is_refusal(e) => {
                    return Err(result.err().unwrap_or(ClientError::Timeout));
                }
                _ => {}
            }
            self.outbox.remove(place.to_be_bytes()).map_err(store_err)?;
            self.persist()?;
            results.push(result);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends queued from several threads at once each get their own place: none is
    /// overwritten (the outbox is what survives an app restart).
    #[test]
    fn concurrent_queues_lose_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = std::sync::Arc::new(ChatStore::open(dir.path()).expect("store"));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25u64 {
                        let mut r = pc::SendMessageRequestT::default();
                        r.conversation_id = 7;
                        r.client_msg_id = Some(format!("{t}-{i}"));
                        store.queue(&r).expect("queued");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let queued = store.outbox().expect("outbox");
        assert_eq!(queued.len(), 100);
        let mut ids: Vec<String> = queued
            .into_iter()
            .filter_map(|(_, r)| r.client_msg_id)
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100);
    }
}
