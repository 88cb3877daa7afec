//! Chat: direct and group conversations, messages, receipts and sync.
//!
//! **The log.** Every change to a conversation — a message, an edit, a deletion, a
//! reaction, a member joining or leaving, a rename — takes the conversation's next
//! sequence number (1, 2, 3, … with no holes) and is one entry of its log
//! (`chat_log`, partitioned by conversation and by [`LOG_BUCKET`] numbers, so partitions
//! stay bounded as Discord's buckets do). A message's entry holds its current state (an
//! edit rewrites it and adds an edit entry). Numbers are taken by a versioned write of the
//! conversation's head (`chat_heads`): on one node the conversation's owner shard takes
//! them one at a time; across the nodes of a fleet the head's compare-and-set lets one
//! writer win each number, so numbers are strictly increasing and dense fleet-wide.
//!
//! **Exactly once.** A send carries the client's transaction id. The first send with an
//! id stores the message and the id (`chat_txns`, kept for good) in one commit; a retry —
//! after a lost answer, a reconnect, a restart of the edge, on any node — finds it and is
//! answered with the original message, `duplicate: true`, storing and delivering nothing.
//! The head also remembers the last [`RECENT_TXNS`] sends, so a retry racing its original
//! on another node is recognised even before the original's transaction row lands.
//!
//! **Delivery and sync.** Each change is pushed, after it is stored, on every active
//! member's `AllConversations` topic of the delivery plane (each member's events in log
//! order on a node). A device keeps one cursor (per conversation, the last number it
//! has); [`Chat::sync`] returns what follows it, in order, and says which conversations
//! have a gap larger than [`SyncLimits::window`] (`limited`, still in the answer's
//! cursor: the client refetches those with history) or are gone for this device
//! (`limited` and out of the cursor: the user left, or a request only the cursor named). Clients drop what they already have (a number at or below their cursor)
//! and fill a jump in numbers with a sync, so pushes and syncs can overlap freely.
//!
//! **Who sees what.** A member sees the log from the moment they joined; a removed member
//! sees nothing more. Messages between two users with a block either way are refused in
//! a direct conversation and hidden from each other in groups. A direct conversation
//! started by someone the recipient does not follow is a message request (when the
//! recipient's `who_can_message` admits the sender at all): it waits in the requests
//! folder (`chat_user_requests`, apart from the user's conversations, so that a flood of
//! requests crowds none of them out of lists and syncs), read receipts are not sent
//! while it waits, and a declined request refuses further messages. An answer moves the
//! membership and the list entries in one commit conditioned on the membership row.
//! Read positions of a member who turned read receipts off are shown to
//! nobody, and such a member sees nobody's.
//!
//! Attachments are ready media objects of the sender's (a forward carries the
//! original's, which its forwarder may read); each is recorded as used by its message
//! (`tables::media`), so the conversation's members may download it, and a message
//! deleted for everyone releases it.
//!
//! Not here yet: deleting a message for oneself only.

mod ephemeral;
mod limits;
mod mls;
mod pipeline;
mod wire;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use selfie_protocol::control::SubscriptionKind;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::{KeyBuilder, KeyReader};
use selfie_storage::{Cell, Clock, Commit, Condition, Scan, Store, Write};
use serde::{Deserialize, Serialize};

use crate::locks::KeyedLocks;
use crate::plane::{Delivery, Topic, pair_key};
use crate::tables::chat::*;
use crate::tables::{self, decode, encode, key as k};
use crate::{Error, Result};

pub use ephemeral::{
    PRESENCE_CHANGES, PRESENCE_STALE_MS, PRESENCE_WINDOW, PRESENCE_WRITE_EVERY, Presence,
    TYPING_REPEAT, status as presence_status,
};
pub use limits::{Costly, SendRate};
pub use mls::{KeyPackage, MAX_KEY_PACKAGE_BYTES};
pub use wire::ChatWire;

/// Longest message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 10;
/// Most members of a group.
pub const MAX_MEMBERS: usize = 256;
/// Longest client transaction id, in bytes.
pub const MAX_TXN_ID: usize = 64;
/// Longest conversation title, in characters.
pub const MAX_TITLE_CHARS: usize = 100;
/// Longest MLS message carried, in bytes.
pub const MAX_MLS_BYTES: usize = 64 * 1024;
/// Sends the head remembers (see the module docs).
pub const RECENT_TXNS: usize = 32;
/// Conversations of one user that lists and syncs consider (the most recently active
/// first once sorted).
pub const MAX_USER_CONVERSATIONS: usize = 1000;
/// Message requests a user's requests folder shows (the newest).
pub const MAX_USER_REQUESTS: usize = 500;
/// Message requests a sync considers (the newest), besides the user's conversations.
pub const SYNC_REQUESTS: usize = 100;
/// Conversations a device cursor may name (the SDK sends its newest this many): more
/// than a sync lists by itself, so that a device keeps syncing older conversations it
/// knows; a sync's answer never names more.
pub const MAX_CURSOR_CONVERSATIONS: usize = 4 * MAX_USER_CONVERSATIONS;
/// Conversations named only by a sync's cursor that cost one more sync token.
pub const CURSOR_CONVERSATIONS_PER_TOKEN: usize = 100;
/// Most distinct emoji on one message.
pub const MAX_REACTION_KINDS: usize = 20;
/// Unread counts stop here (shown as "99+").
pub const UNREAD_CAP: u32 = 100;
/// Versioned head writes tried before a change gives up with `Busy`.
const APPEND_TRIES: u32 = 32;
/// Log entries one history page examines at most (a page of reactions and edits only
/// ends early with `has_more`).
const HISTORY_SCAN: usize = 2000;

/// How far [`Chat::sync`] goes, and how fast one user may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    /// A conversation more than this many entries behind is `limited` instead of
    /// replayed.
    pub window: u64,
    /// Most events in one sync response.
    pub max_events: usize,
    /// Sends per user (on one shard).
    pub send: SendRate,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            window: 10_000,
            max_events: 1000,
            send: SendRate::default(),
        }
    }
}

/// Direct (two people) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Two users; at most one per pair.
    Direct,
    /// Up to [`MAX_MEMBERS`] users with roles.
    Group,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Sends and reads.
    Member,
    /// Also adds and removes members, renames.
    Admin,
    /// Also sets roles; one per group.
    Owner,
}

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// In the conversation.
    Active,
    /// A message request waiting for this member's answer.
    Request,
    /// This member declined the request: the other side may not send.
    Declined,
}

/// A conversation's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRec {
    /// Direct or group.
    pub kind: Kind,
    /// Group title.
    #[serde(default)]
    pub title: String,
    /// Group avatar (a media id).
    #[serde(default)]
    pub avatar_media_id: u64,
    /// Creation time.
    pub created_at_ms: u64,
    /// Who created it.
    pub creator: u64,
    /// MLS end-to-end encrypted: messages are opaque MLS ciphertext only.
    #[serde(default)]
    pub encrypted: bool,
    /// The MLS group id, for encrypted conversations.
    #[serde(default)]
    pub mls_group_id: Vec<u8>,
}

/// The head of a conversation's log (versioned: every change swaps it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The newest sequence number.
    pub last_seq: u64,
    /// The newest message's number.
    #[serde(default)]
    pub last_message_seq: u64,
    /// When the newest entry was written.
    #[serde(default)]
    pub last_activity_ms: u64,
    /// Members (active, requested or declined).
    #[serde(default)]
    pub members: u32,
    /// The last sends: (transaction hash, number), oldest first.
    #[serde(default)]
    pub recent: Vec<(u64, u64)>,
    /// Encrypted conversations: the MLS epoch the group is in (commits move it on).
    #[serde(default)]
    pub mls_epoch: u64,
    /// The last users removed (at most [`RECENT_LEFT`]; adding a user again takes them
    /// off). The head is the one row every change swaps, so a removal or role change
    /// that lost a race learns of a removal here even where the member rows it reads
    /// still hold the old member (on CQL a commit's writes land after its condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<u64>,
    /// The last messages changed (edited, deleted, reacted to): (number, digest of the
    /// row the change wrote, when, Unix ms), oldest first, at most [`RECENT_CHANGED`]. A
    /// change that lost a race re-reads the message; on CQL the winner's row may land
    /// after its head, so a row whose digest is not the one named here is read again,
    /// never changed on top of (an edit would bring back a message deleted for
    /// everyone). A row still not there [`LOST_CHANGE_MS`] later never will be (its
    /// node failed between the head and the row): the stored row is the message then.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "changed_entries"
    )]
    pub changed: Vec<(u64, u64, u64)>,
}

impl Head {
    /// Notes that the change it commits writes the row of `seq` (0: the conversation's
    /// record) with digest `digest` at `now_ms` (see [`Head::changed`]).
    fn remember_change(&mut self, seq: u64, digest: u64, now_ms: u64) {
        self.changed.retain(|(s, _, _)| *s != seq);
        self.changed.push((seq, digest, now_ms));
        let extra = self.changed.len().saturating_sub(RECENT_CHANGED);
        self.changed.drain(..extra);
    }

    /// Whether `stored`, the row of message `seq` (0: the conversation's record) read
    /// after this head, is the one the head's last change of it wrote, or that change is
    /// taken as lost (see [`Head::changed`]); `false`: read it again.
    fn landed(&self, seq: u64, stored: &[u8], now_ms: u64) -> bool {
        match self.changed.iter().rev().find(|(s, _, _)| *s == seq) {
            Some(&(_, digest, at)) => {
                digest == row_digest(stored) || now_ms.saturating_sub(at) >= LOST_CHANGE_MS
            }
            None => true,
        }
    }
}

/// [`Head::changed`] as stored: entries of three numbers, or of two (written before the
/// time was kept: taken as long ago).
fn changed_entries<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<(u64, u64, u64)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Timed(u64, u64, u64),
        Untimed(u64, u64),
    }
    let stored: Vec<Stored> = Deserialize::deserialize(d)?;
    Ok(stored
        .into_iter()
        .map(|e| match e {
            Stored::Timed(s, d, at) => (s, d, at),
            Stored::Untimed(s, d) => (s, d, 0),
        })
        .collect())
}

/// Removed users a head remembers (see [`Head::left`]).
pub const RECENT_LEFT: usize = 16;

/// Changed messages a head remembers (see [`Head::changed`]).
pub const RECENT_CHANGED: usize = 8;

/// How long after a change its row is awaited before it is taken as lost (see
/// [`Head::changed`]). Measured between the clocks of the node that made the change and
/// the node that reads it: the fleet's clocks are kept in step (NTP), as its ids and
/// TTLs already need.
pub const LOST_CHANGE_MS: u64 = 5_000;

/// One member's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRec {
    /// Role (groups).
    pub role: Role,
    /// Active, request or declined.
    pub state: MemberState,
    /// When they joined.
    pub joined_at_ms: u64,
    /// They see the log after this number.
    pub joined_seq: u64,
    /// Read up to this number.
    #[serde(default)]
    pub last_read_seq: u64,
    /// One of their devices has everything up to this number.
    #[serde(default)]
    pub last_delivered_seq: u64,
}

/// A user's own state of a conversation (in their list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConv {
    /// Muted until then.
    #[serde(default)]
    pub muted_until_ms: u64,
    /// In the archive.
    #[serde(default)]
    pub archived: bool,
    /// Pinned to the top.
    #[serde(default)]
    pub pinned: bool,
}

/// What kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// Text (and attachments).
    Text,
    /// Attachments first.
    Media,
    /// A member joined, left...
    System,
    /// MLS ciphertext (encrypted conversations only).
    Mls,
    /// A reply to a story (`ref_id`).
    StoryReply,
    /// A shared post (`ref_id`).
    PostShare,
}

/// An MLS message carried opaquely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mls {
    /// The group epoch it was made in.
    pub epoch: u64,
    /// Application, proposal, commit or welcome (the protocol's numbers).
    pub content_type: u8,
    /// The MLS bytes.
    pub data: Vec<u8>,
    /// A Welcome's recipients: only they (and its sender) see it.
    #[serde(default)]
    pub recipients: Vec<u64>,
}

/// MLS content types, as the protocol numbers them.
pub mod mls_content {
    /// An application message.
    pub const APPLICATION: u8 = 0;
    /// A commit.
    pub const COMMIT: u8 = 2;
    /// A welcome.
    pub const WELCOME: u8 = 3;
}

impl Message {
    /// Whether it is an MLS Commit or Welcome: the group's key schedule, which every
    /// member it is addressed to must process whoever sent it (hidden by a block, it
    /// would leave the blocker in an old epoch, unable to send or read again).
    pub fn carries_group_state(&self) -> bool {
        self.mls.as_ref().is_some_and(|m| {
            m.content_type == mls_content::COMMIT || m.content_type == mls_content::WELCOME
        })
    }

    /// Whether `viewer` may see this message at all (an MLS Welcome is for its
    /// recipients and its sender only).
    pub fn addressed_to(&self, viewer: u64) -> bool {
        match &self.mls {
            Some(m) if m.content_type == mls_content::WELCOME => {
                viewer == self.sender_id || m.recipients.contains(&viewer)
            }
            _ => true,
        }
    }
}

/// A message in its current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its id (unique; ordered per shard).
    pub message_id: u64,
    /// Its number in the conversation's log.
    #[serde(default)]
    pub seq: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// The sender's transaction id.
    pub client_msg_id: String,
    /// Kind.
    pub kind: MessageKind,
    /// Text.
    #[serde(default)]
    pub text: String,
    /// Attachments (media ids).
    #[serde(default)]
    pub media_ids: Vec<u64>,
    /// The message this one replies to (quotes).
    #[serde(default)]
    pub reply_to_seq: u64,
    /// A shared post or replied story.
    #[serde(default)]
    pub ref_id: u64,
    /// The thread it belongs to (its root's number), 0 for the main line.
    #[serde(default)]
    pub thread_seq: u64,
    /// Forwarded from another conversation.
    #[serde(default)]
    pub forwarded: bool,
    /// Sent at.
    pub created_at_ms: u64,
    /// Last edited at (0: never).
    #[serde(default)]
    pub edited_at_ms: u64,
    /// Times edited.
    #[serde(default)]
    pub edit_count: u32,
    /// Deleted for everyone: a tombstone without content.
    #[serde(default)]
    pub deleted: bool,
    /// (user, emoji): one reaction per member.
    #[serde(default)]
    pub reactions: Vec<(u64, String)>,
    /// The MLS message, in encrypted conversations.
    #[serde(default)]
    pub mls: Option<Mls>,
}

impl Message {
    /// (emoji, count), most used first.
    pub fn reaction_counts(&self) -> Vec<(String, u64)> {
        let mut counts: Vec<(String, u64)> = Vec::new();
        for (_, e) in &self.reactions {
            match counts.iter_mut().find(|(x, _)| x == e) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.clone(), 1)),
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }
}

/// What happened, for an entry that is not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The conversation was made (its first entry).
    Created,
    /// A message was edited (`target_seq`, the new `text`).
    Edited,
    /// A message was deleted for everyone (`target_seq`).
    Deleted,
    /// A reaction (`target_seq`, `emoji`).
    Reacted,
    /// A reaction taken back (`target_seq`).
    Unreacted,
    /// `user` joined (added, or accepted a request).
    Joined,
    /// `user` left or was removed.
    Left,
    /// Title or avatar changed (`text` the title).
    Updated,
    /// `user`'s role changed (`text` the role).
    RoleChanged,
}

/// An entry of the log that is not a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Who did it.
    pub actor: u64,
    /// The message it is about.
    #[serde(default)]
    pub target_seq: u64,
    /// The member it is about.
    #[serde(default)]
    pub user: u64,
    /// The emoji.
    #[serde(default)]
    pub emoji: String,
    /// New text or title.
    #[serde(default)]
    pub text: String,
    /// When.
    pub at_ms: u64,
}

/// One entry of a conversation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A message (in its current state).
    Message(Message),
    /// Anything else.
    Event(Event),
}

/// A log entry as a reader sees it: its number and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogItem {
    /// The conversation.
    pub conversation_id: u64,
    /// Its number.
    pub seq: u64,
    /// The entry.
    pub entry: Entry,
}

/// A receipt pushed to the other members (not a log entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Read up to a number.
    Read,
    /// Delivered to a device up to a number.
    Delivered,
}

/// A new message, for [`Chat::send`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The client's transaction id.
    pub client_msg_id: String,
    /// Kind.
    pub kind: MessageKind,
    /// Text.
    pub text: String,
    /// Attachments.
    pub media_ids: Vec<u64>,
    /// Replied message.
    pub reply_to_seq: u64,
    /// Shared post or story.
    pub ref_id: u64,
    /// Thread root.
    pub thread_seq: u64,
    /// Forward this message instead: (conversation, number).
    pub forward: Option<(u64, u64)>,
    /// MLS payload.
    pub mls: Option<Mls>,
}

/// What a send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message's id.
    pub message_id: u64,
    /// Its number.
    pub seq: u64,
    /// When it was first stored.
    pub created_at_ms: u64,
    /// A retry of an earlier send: nothing new was stored.
    pub duplicate: bool,
}

/// A conversation as one member sees it.
#[derive(Debug, Clone)]
pub struct View {
    /// Its id.
    pub conversation_id: u64,
    /// Settings.
    pub rec: ConversationRec,
    /// Head.
    pub head: Head,
    /// Members (user, row), read positions hidden where privacy asks.
    pub members: Vec<(u64, MemberRec)>,
    /// The viewer's row.
    pub me: MemberRec,
    /// The viewer's own state.
    pub mine: UserConv,
    /// Messages from others after the viewer's read position (capped).
    pub unread: u32,
    /// The newest message the viewer may see.
    pub last_message: Option<Message>,
    /// Other members' presence, where both sides show activity status.
    pub presence: HashMap<u64, Presence>,
}

/// Which of a user's conversations a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// Active and not archived.
    Inbox,
    /// Message requests waiting for an answer.
    Requests,
    /// Archived.
    Archived,
}

/// Changes to a conversation, for [`Chat::update`]; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// New title (groups; admins).
    pub title: Option<String>,
    /// New avatar (groups; admins).
    pub avatar_media_id: Option<u64>,
    /// Mute until (the caller's own).
    pub muted_until_ms: Option<u64>,
    /// Archive (the caller's own).
    pub archived: Option<bool>,
    /// Pin (the caller's own).
    pub pinned: Option<bool>,
}

/// What a sync returns.
#[derive(Debug, Clone, Default)]
pub struct Synced {
    /// Entries, in order within each conversation.
    pub items: Vec<LogItem>,
    /// The cursor after them.
    pub cursor: SyncCursor,
    /// More to fetch with the new cursor.
    pub has_more: bool,
    /// Conversations the client must refetch (gap too large, or no longer a member).
    pub limited: Vec<u64>,
}

/// A device's position: per conversation, the last number it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncCursor(pub HashMap<u64, u64>);

impl SyncCursor {
    const VERSION: u8 = 1;

    /// The opaque bytes a client keeps.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut pairs: Vec<_> = self.0.iter().map(|(c, s)| (*c, *s)).collect();
        pairs.sort_unstable();
        let mut b = Vec::with_capacity(1 + 16 * pairs.len());
        b.push(Self::VERSION);
        for (c, s) in pairs {
            b.extend_from_slice(&c.to_be_bytes());
            b.extend_from_slice(&s.to_be_bytes());
        }
        b
    }

    /// Reads bytes made by [`SyncCursor::to_bytes`] (empty: the beginning).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bad = Error::InvalidArgument {
            field: "since_cursor",
        };
        let Some((&version, rest)) = b.split_first() else {
            return Ok(Self::default());
        };
        if version != Self::VERSION
            || !rest.len().is_multiple_of(16)
            || rest.len() / 16 > MAX_CURSOR_CONVERSATIONS
        {
            return Err(bad);
        }
        let map = rest
            .chunks_exact(16)
            .map(|c| {
                let (a, s) = c.split_at(8);
                let n = |x: &[u8]| <[u8; 8]>::try_from(x).map(u64::from_be_bytes);
                Ok((n(a).map_err(|_| bad_arg())?, n(s).map_err(|_| bad_arg())?))
            })
            .collect::<Result<_>>()?;
        Ok(Self(map))
    }
}

fn bad_arg() -> Error {
    Error::InvalidArgument {
        field: "since_cursor",
    }
}

/// A 64-bit hash of (sender, transaction id), for the head's recent sends.
fn txn_hash(sender: u64, client_msg_id: &str) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(sender.to_be_bytes());
    h.update(client_msg_id.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// The digest of a stored log row a change wrote (see [`Head::changed`]).
fn row_digest(row: &[u8]) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(row);
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

fn seq_key(seq: u64) -> Bytes {
    k(seq)
}

fn txn_clustering(conversation: u64, client_msg_id: &str) -> Bytes {
    KeyBuilder::new()
        .u64(conversation)
        .str(client_msg_id)
        .build()
}

/// A transaction row: the message a send made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TxnRec {
    seq: u64,
    message_id: u64,
    created_at_ms: u64,
}

/// A member's read and delivered positions (`chat_receipts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Positions {
    read: u64,
    delivered: u64,
}

/// Whether two users may see each other (no block either way), by pair, within one
/// operation.
type Memo = HashMap<(u64, u64), bool>;

/// An append queued in the store's writer (see [`Chat::queue_append`]). Dropped before
/// it is settled (the request went away meanwhile), it ends its chain: the next change
/// reads the stored head, not one that may never be written.
struct QueuedAppend<'a> {
    queued: Option<selfie_storage::Queued>,
    epoch: u64,
    id: u64,
    heads: &'a pipeline::PendingHeads,
    settled: bool,
}

impl Drop for QueuedAppend<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.heads.settled(self.id, self.epoch, false);
        }
    }
}

/// What [`Chat::append_once`] did.
enum Appended {
    /// Stored with these numbers.
    Done(Vec<u64>),
    /// The send was already stored.
    Exists,
}

/// What a change to a message did.
enum Change {
    /// Nothing (the same reaction again): no entry is appended.
    Unchanged,
    /// Changed; an edit keeps the old text as version number `.0`.
    Changed(Option<(u64, Version)>),
}

/// Most edits of one message (its versions are kept).
pub const MAX_EDITS: u32 = 100;

/// An earlier version of an edited message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its text.
    pub text: String,
    /// When it was replaced.
    pub replaced_at_ms: u64,
}

/// Where `user`'s entry for conversation `id` lives while their membership is `state`:
/// their requests while a request waits, their conversations otherwise.
fn list_row(user: u64, id: u64, state: MemberState) -> Cell {
    let table = if state == MemberState::Request {
        &USER_REQUESTS
    } else {
        &USER_CONVERSATIONS
    };
    Cell::new(table, k(user), k(id))
}

/// `user`'s row among `members`.
fn member_of(members: &[(u64, MemberRec)], user: u64) -> Option<MemberRec> {
    members
        .iter()
        .find(|(m, _)| *m == user)
        .map(|(_, r)| r.clone())
}

/// A new list entry's value (no per-user state yet).
fn list_value() -> Result<Bytes> {
    Ok(encode("chat user state", &UserConv::default())?.into())
}

/// Waits a little before attempt `attempt` of a versioned write (none before the first):
/// each lost race means another writer came first, and a growing, jittered wait spreads
/// a crowd of writers out.
async fn backoff(attempt: u32) {
    if attempt > 0 {
        let wait = rand::random::<u64>() % (2 * u64::from(attempt) + 1);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
}

/// A put of a commit (the table's default time to live).
fn put(row: Cell, value: impl Into<Bytes>) -> Write {
    Write::Put {
        row,
        value: value.into(),
        ttl: None,
    }
}

fn chars_within(s: &str, max: usize) -> bool {
    s.chars().nth(max).is_none()
}

/// The chat service of one shard.
pub struct Chat<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: RefCell<IdGenerator>,
    /// One change at a time per conversation on this shard (the edge routes every
    /// change of a conversation to its owner shard).
    locks: KeyedLocks,
    delivery: Option<Rc<Delivery>>,
    limits: SyncLimits,
    memo: RefCell<ephemeral::Memo>,
    rates: limits::Limits,
    shapes: RefCell<HashMap<u64, Shape>>,
    /// Where the attachments of deleted messages are released, when media runs.
    media_release: Option<tables::media::Release>,
    /// Heads queued and not yet durable: the next change chains on them.
    pending: pipeline::PendingHeads,
    /// Push order of queued entries, per conversation.
    turns: pipeline::Turns,
}

/// What never changes about a conversation (see [`Chat::shape`]).
#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: Kind,
    encrypted: bool,
}

/// Conversations whose shape a shard remembers before it starts over.
const SHAPES_MAX: usize = 65_536;

impl<S: Store + 'static> Chat<S> {
    /// Over `store`; `node`/`shard` make its ids unique.
    pub fn new(store: S, clock: Arc<dyn Clock>, node: u16, shard: u16) -> Result<Self> {
        let ids =
            IdGenerator::new(node, shard).map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: RefCell::new(ids),
            locks: KeyedLocks::default(),
            delivery: None,
            limits: SyncLimits::default(),
            memo: RefCell::default(),
            rates: limits::Limits::default(),
            shapes: RefCell::default(),
            pending: pipeline::PendingHeads::default(),
            turns: pipeline::Turns::default(),
            media_release: None,
        })
    }

    /// Releases the attachments of messages deleted for everyone through `release`.
    pub fn with_media_release(mut self, release: tables::media::Release) -> Self {
        self.media_release = Some(release);
        self
    }

    /// Pushes changes to members through `delivery`.
    pub fn with_delivery(mut self, delivery: Rc<Delivery>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Syncs, and holds sends, within `limits`.
    pub fn with_limits(mut self, limits: SyncLimits) -> Self {
        self.limits = limits;
        self.rates = limits::Limits::new(limits.send);
        self
    }

    /// The delivery plane (`Unavailable` without one).
    pub fn delivery(&self) -> Result<&Rc<Delivery>> {
        self.delivery
            .as_ref()
            .ok_or(Error::Unavailable("live updates"))
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn next_id(&self) -> u64 {
        let now = self.now();
        self.ids.borrow_mut().next(now).0
    }

    // ---- reading rows ----

    /// The parts of a conversation's record that never change (kind, encryption), from
    /// a bounded shard-local memo: safe on a fleet, where only the title and avatar of
    /// a record are ever rewritten.
    async fn shape(&self, id: u64) -> Result<Shape> {
        if let Some(s) = self.shapes.borrow().get(&id) {
            return Ok(*s);
        }
        let rec = self
            .conversation(id)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        let shape = Shape {
            kind: rec.kind,
            encrypted: rec.encrypted,
        };
        let mut shapes = self.shapes.borrow_mut();
        if shapes.len() >= SHAPES_MAX {
            shapes.clear();
        }
        shapes.insert(id, shape);
        Ok(shape)
    }

    async fn conversation(&self, id: u64) -> Result<Option<ConversationRec>> {
        match self.store.get(&CONVERSATIONS, &k(id), &[]).await? {
            Some(v) => Ok(Some(decode("conversation", &v)?)),
            None => Ok(None),
        }
    }

    async fn head_raw(&self, id: u64) -> Result<(Bytes, Head)> {
        let v = self
            .store
            .get(&HEADS, &k(id), &[])
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        let head = decode("conversation head", &v)?;
        Ok((v, head))
    }

    /// The conversation's head.
    pub async fn head(&self, id: u64) -> Result<Head> {
        Ok(self.head_raw(id).await?.1)
    }

    async fn member(&self, id: u64, user: u64) -> Result<Option<MemberRec>> {
        match self.store.get(&MEMBERS, &k(id), &k(user)).await? {
            Some(v) => Ok(Some(decode("chat member", &v)?)),
            None => Ok(None),
        }
    }

    async fn members(&self, id: u64) -> Result<Vec<(u64, MemberRec)>> {
        let mut out = Vec::new();
        let mut scan = Scan::all(MAX_MEMBERS + 1);
        loop {
            let page = self.store.scan(&MEMBERS, &k(id), &scan).await?;
            for row in &page.rows {
                let user = KeyReader::new(&row.clustering)
                    .u64()
                    .ok_or(Error::Corrupt("chat member"))?;
                out.push((user, decode("chat member", &row.value)?));
            }
            match page.cursor {
                Some(c) if out.len() <= MAX_MEMBERS => scan = scan.after(Some(c)),
                _ => return Ok(out),
            }
        }
    }

    async fn user_conv(&self, user: u64, id: u64) -> Result<Option<UserConv>> {
        match self
            .store
            .get(&USER_CONVERSATIONS, &k(user), &k(id))
            .await?
        {
            Some(v) => Ok(Some(decode("chat user state", &v)?)),
            None => Ok(None),
        }
    }

    async fn entry(&self, id: u64, seq: u64) -> Result<Option<Entry>> {
        let v = self
            .store
            .get(&LOG, &log_partition(id, seq), &seq_key(seq))
            .await?;
        v.map(|v| decode("chat log entry", &v)).transpose()
    }

    /// `user`'s membership of `id`, or `NotFound` (whether it exists is not revealed).
    async fn membership(&self, id: u64, user: u64) -> Result<(ConversationRec, MemberRec)> {
        let not_found = Error::NotFound("conversation");
        let member = self.member(id, user).await?.ok_or(not_found)?;
        let rec = self
            .conversation(id)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        Ok((rec, member))
    }

    /// Entries of `id` with numbers in `(after, up_to]`, at most `limit`, in order.
    async fn entries_forward(
        &self,
        id: u64,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>> {
        self.entries(id, after.saturating_add(1), up_to, false, limit)
            .await
    }

    /// Entries of `id` below `before` and above `floor`, newest first, at most `limit`.
    async fn entries_backward(
        &self,
        id: u64,
        before: u64,
        floor: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>> {
        if before <= floor.saturating_add(1) {
            return Ok(Vec::new());
        }
        self.entries(id, floor + 1, before - 1, true, limit).await
    }

    /// Entries of `id` with numbers in `[lo, hi]`, at most `limit`, in order (newest
    /// first when `reverse`), partition by partition.
    async fn entries(
        &self,
        id: u64,
        mut lo: u64,
        mut hi: u64,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(u64, Entry)>> {
        let mut out = Vec::new();
        while lo <= hi && out.len() < limit {
            // The partition holding the next number to read.
            let next = if reverse { hi } else { lo };
            let bucket_lo = next / LOG_BUCKET * LOG_BUCKET;
            let (start, end) = (lo.max(bucket_lo), hi.min(bucket_lo + (LOG_BUCKET - 1)));
            let scan = Scan {
                start: Bound::Included(seq_key(start)),
                end: Bound::Included(seq_key(end)),
                reverse,
                limit: (limit - out.len()).min(selfie_storage::MAX_PAGE_ROWS),
                cursor: None,
            };
            let page = self
                .store
                .scan(&LOG, &log_partition(id, next), &scan)
                .await?;
            let mut last = None;
            for row in &page.rows {
                let seq = tables::id_value(&row.clustering).ok_or(Error::Corrupt("chat log"))?;
                out.push((seq, decode("chat log entry", &row.value)?));
                last = Some(seq);
            }
            // Within the partition after the last row read, or past the partition.
            match (page.cursor.is_some(), last, reverse) {
                (true, Some(l), false) => lo = l + 1,
                (true, Some(l), true) => hi = l.saturating_sub(1),
                (_, _, false) if end == hi => break,
                (_, _, false) => lo = end + 1,
                (_, _, true) if start == 0 => break,
                (_, _, true) => hi = start - 1,
            }
            if reverse && hi < lo {
                break;
            }
        }
        Ok(out)
    }

    // ---- visibility ----

    /// Whether `viewer` may see what `author` wrote (no block either way).
    async fn sees(&self, memo: &mut Memo, viewer: u64, author: u64) -> Result<bool> {
        if viewer == author {
            return Ok(true);
        }
        // A block is symmetric: one entry per pair, whichever side asks.
        let pair = (viewer.min(author), viewer.max(author));
        if let Some(&v) = memo.get(&pair) {
            return Ok(v);
        }
        let v = !tables::graph::blocked_either_way(&self.store, viewer, author).await?;
        memo.insert(pair, v);
        Ok(v)
    }

    /// What `viewer` sees of an entry: messages of blocked users are left out (but for
    /// MLS Commits and Welcomes, opaque key-schedule bytes every member needs), and
    /// events a blocked user made (their edits carry the new text). An event someone
    /// else made about a blocked user's message (a reaction, an admin's delete) carries
    /// none of its content and is kept: the viewer's client has no such message.
    async fn visible(&self, memo: &mut Memo, viewer: u64, entry: &Entry) -> Result<bool> {
        match entry {
            Entry::Message(m) => Ok(m.addressed_to(viewer)
                && (m.carries_group_state() || self.sees(memo, viewer, m.sender_id).await?)),
            Entry::Event(e) => self.sees(memo, viewer, e.actor).await,
        }
    }

    // ---- writing the log ----

    /// Appends entries to `id`'s log in one commit that also swaps the head (`extra` are
    /// further writes of the same commit), retrying from the head as it is when another
    /// node took the number (the entries and writes must not depend on what the head
    /// moved past: changes that read rows build each attempt themselves, see
    /// [`Chat::change_message`]). Stops with [`Appended::Exists`] when the head it
    /// reads already remembers the send `txn` (a retry on another node won the race).
    /// The caller holds the conversation's lock throughout.
    async fn append_once(
        &self,
        id: u64,
        entries: Vec<Entry>,
        txn: Option<u64>,
        check: &dyn Fn(&Head) -> Result<()>,
        change: impl Fn(&mut Head, &[u64]),
        extra: impl Fn(&[u64]) -> Result<Vec<Write>>,
    ) -> Result<Appended> {
        for attempt in 0..APPEND_TRIES {
            backoff(attempt).await;
            let (raw, head) = self.current_head(id).await?;
            if let Some(hash) = txn
                && head.recent.iter().any(|(h, _)| *h == hash)
            {
                return Ok(Appended::Exists);
            }
            check(&head)?;
            let (seqs, _, queued) = self
                .queue_append(id, raw, head, &entries, &change, &extra)
                .await?;
            if self.settle(id, queued).await? {
                self.after_earlier_pushes(id).await;
                return Ok(Appended::Done(seqs));
            }
        }
        Err(Error::Busy)
    }

    /// Waits until the sends queued before now have pushed their entries. A change made
    /// under the conversation's lock calls it before pushing its own: the sends queued
    /// after it wait for the lock, so pushes stay in log order.
    async fn after_earlier_pushes(&self, id: u64) {
        self.turns.take(id).ready().await;
    }

    /// The head the next change of `id` builds on: the newest one queued, while a commit
    /// is in flight, else the stored one. Call it holding the conversation's lock.
    async fn current_head(&self, id: u64) -> Result<(Bytes, Head)> {
        match self.pending.get(id) {
            Some(queued) => Ok(queued),
            None => self.head_raw(id).await,
        }
    }

    /// Queues an append over the head `raw` (decoded: `head`) in the store's writer, in
    /// order (see [`pipeline`]): returns the numbers given, the new head, and the commit
    /// to [`Chat::settle`]. Call it holding the conversation's lock.
    async fn queue_append(
        &self,
        id: u64,
        raw: Bytes,
        mut head: Head,
        entries: &[Entry],
        change: &dyn Fn(&mut Head, &[u64]),
        extra: &dyn Fn(&[u64]) -> Result<Vec<Write>>,
    ) -> Result<(Vec<u64>, Head, QueuedAppend<'_>)> {
        let seqs: Vec<u64> = (1..=entries.len() as u64)
            .map(|i| head.last_seq + i)
            .collect();
        if let Some(&last) = seqs.last() {
            head.last_seq = last;
        }
        head.last_activity_ms = self.now();
        change(&mut head, &seqs);
        let new: Bytes = encode("conversation head", &head)?.into();
        let mut commit = Commit::new().when(Condition::Equals {
            row: Cell::new(&HEADS, k(id), Bytes::new()),
            expected: raw,
            new: Some(new.clone()),
            ttl: None,
        });
        for (seq, entry) in seqs.iter().zip(entries) {
            let mut entry = entry.clone();
            if let Entry::Message(m) = &mut entry {
                m.seq = *seq;
            }
            let row = Cell::new(&LOG, log_partition(id, *seq), seq_key(*seq));
            commit = commit.put(row, encode("chat log entry", &entry)?, None);
        }
        commit.writes.extend(extra(&seqs)?);
        let queued = self.store.commit_queued(&commit).await?;
        let epoch = self.pending.queued(id, new, head.clone());
        let queued = QueuedAppend {
            queued: Some(queued),
            epoch,
            id,
            heads: &self.pending,
            settled: false,
        };
        Ok((seqs, head, queued))
    }

    /// One append over the head as read, durable before it returns: `None` when another
    /// writer changed the head first.
    async fn try_append(
        &self,
        id: u64,
        raw: Bytes,
        head: Head,
        entries: &[Entry],
        change: &dyn Fn(&mut Head, &[u64]),
        extra: &dyn Fn(&[u64]) -> Result<Vec<Write>>,
    ) -> Result<Option<(Vec<u64>, Head)>> {
        let (seqs, head, queued) = self
            .queue_append(id, raw, head, entries, change, extra)
            .await?;
        if !self.settle(id, queued).await? {
            return Ok(None);
        }
        self.after_earlier_pushes(id).await;
        Ok(Some((seqs, head)))
    }

    /// Waits for a queued append to be durable: `false` when another writer changed the
    /// head first (the append is not stored; its chain ends).
    async fn settle(&self, id: u64, mut append: QueuedAppend<'_>) -> Result<bool> {
        let Some(queued) = append.queued.take() else {
            return Ok(false);
        };
        // Dropped during this wait, the guard ends the chain instead.
        let outcome = queued.outcome().await;
        append.settled = true;
        self.pending
            .settled(id, append.epoch, matches!(outcome, Ok(true)));
        Ok(outcome?)
    }

    /// Pushes `item` to the active members who may see it.
    async fn push(&self, id: u64, item: &LogItem) -> Result<()> {
        if self.delivery.is_none() {
            return Ok(());
        }
        let members = self.members(id).await?;
        self.push_to_members(item, &members, &mut HashMap::new())
            .await
    }

    /// [`Chat::push`] to `members` as read by the caller, with what it already knows of
    /// blocks.
    async fn push_to_members(
        &self,
        item: &LogItem,
        members: &[(u64, MemberRec)],
        memo: &mut Memo,
    ) -> Result<()> {
        let Some(delivery) = &self.delivery else {
            return Ok(());
        };
        let frame = wire::event_frame(delivery, item)?;
        let author = match &item.entry {
            Entry::Message(m) => m.sender_id,
            Entry::Event(e) => e.actor,
        };
        let mut targets: Vec<u64> = Vec::new();
        for (user, m) in members {
            // A removed member learns of their own removal.
            let leaving = matches!(&item.entry, Entry::Event(e)
                if e.kind == EventKind::Left && e.user == *user);
            if (m.state == MemberState::Declined || item.seq <= m.joined_seq) && !leaving {
                continue;
            }
            let group_state = matches!(&item.entry, Entry::Message(m) if m.carries_group_state());
            if !group_state && !self.sees(memo, *user, author).await? {
                continue;
            }
            if let Entry::Message(m) = &item.entry
                && !m.addressed_to(*user)
            {
                continue;
            }
            targets.push(*user);
        }
        if let Entry::Event(e) = &item.entry
            && e.kind == EventKind::Left
            && !targets.contains(&e.user)
        {
            targets.push(e.user);
        }
        self.push_to(delivery, &targets, frame).await;
        Ok(())
    }

    async fn push_to(&self, delivery: &Rc<Delivery>, users: &[u64], frame: Bytes) {
        let sends = users.iter().map(|u| {
            let topic = Topic::new(SubscriptionKind::AllConversations, *u);
            delivery.publish(topic, frame.clone())
        });
        // A lost push is repaired by the subscriber's resync (the plane cuts the topic);
        // the change itself is stored.
        for r in futures::future::join_all(sends).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "chat push lost");
            }
        }
    }

    // ---- conversations ----

    /// Starts (or returns) the direct conversation of `me` and `other`.
    pub async fn direct(&self, me: u64, other: u64) -> Result<u64> {
        if me == other {
            return Err(Error::SelfTarget);
        }
        let cell = Cell::new(&DIRECT, k(pair_key(me, other)), Bytes::new());
        let existing = self
            .store
            .get(cell.table, &cell.partition, &cell.clustering)
            .await?;
        if let Some(v) = existing {
            let id = tables::id_value(&v).ok_or(Error::Corrupt("direct conversation"))?;
            // Starting it again from the side that declined takes the request back.
            let _g = self.locks.lock((id, 0)).await;
            if let Some(m) = self.member(id, me).await?
                && m.state != MemberState::Active
            {
                self.activate(id, me, m.state).await?;
            }
            return Ok(id);
        }
        if tables::graph::blocked_either_way(&self.store, me, other).await? {
            return Err(Error::Blocked);
        }
        self.rates.check(me, Costly::Create)?;
        let state = self.arrival(me, other).await?;
        let id = self.next_id();
        let now = self.now();
        let rec = ConversationRec {
            kind: Kind::Direct,
            title: String::new(),
            avatar_media_id: 0,
            created_at_ms: now,
            creator: me,
            encrypted: false,
            mls_group_id: Vec::new(),
        };
        let members = [(me, MemberState::Active), (other, state)];
        let commit = self.creation(id, &rec, &members, Role::Member, me, now)?;
        let commit = commit.when(Condition::Absent {
            row: cell,
            value: k(id),
            ttl: None,
        });
        if !self.store.commit(&commit).await? {
            // Another request made it first.
            return Box::pin(self.direct(me, other)).await;
        }
        self.push(id, &created_item(id, me, now)).await?;
        Ok(id)
    }

    /// How `other` receives a conversation from `me`: active when they follow `me`, a
    /// request when their `who_can_message` admits `me`, refused otherwise.
    async fn arrival(&self, me: u64, other: u64) -> Result<MemberState> {
        if tables::users::live_profile(&self.store, other)
            .await?
            .is_none()
        {
            return Err(Error::NotFound("user"));
        }
        let settings = tables::users::settings(&self.store, other).await?;
        if !tables::users::permits(&self.store, other, me, settings.who_can_message).await? {
            return Err(Error::Forbidden(
                "this user does not accept messages from you",
            ));
        }
        Ok(if tables::graph::follows(&self.store, other, me).await? {
            MemberState::Active
        } else {
            MemberState::Request
        })
    }

    /// The writes that make a conversation (record, head, members, the members' lists,
    /// the creation entry).
    fn creation(
        &self,
        id: u64,
        rec: &ConversationRec,
        members: &[(u64, MemberState)],
        role_of_others: Role,
        creator: u64,
        now: u64,
    ) -> Result<Commit> {
        let head = Head {
            last_seq: 1,
            last_message_seq: 0,
            last_activity_ms: now,
            members: members.len() as u32,
            recent: Vec::new(),
            mls_epoch: 0,
            left: Vec::new(),
            changed: Vec::new(),
        };
        let created = Entry::Event(Event {
            kind: EventKind::Created,
            actor: creator,
            target_seq: 0,
            user: 0,
            emoji: String::new(),
            text: rec.title.clone(),
            at_ms: now,
        });
        let mut c = Commit::new()
            .put(
                Cell::new(&CONVERSATIONS, k(id), Bytes::new()),
                encode("conversation", rec)?,
                None,
            )
            .put(
                Cell::new(&HEADS, k(id), Bytes::new()),
                encode("conversation head", &head)?,
                None,
            )
            .put(
                Cell::new(&LOG, log_partition(id, 1), seq_key(1)),
                encode("chat log entry", &created)?,
                None,
            );
        for (user, state) in members {
            let role = if *user == creator && rec.kind == Kind::Group {
                Role::Owner
            } else {
                role_of_others
            };
            let m = MemberRec {
                role,
                state: *state,
                joined_at_ms: now,
                joined_seq: 0,
                last_read_seq: if *user == creator { 1 } else { 0 },
                last_delivered_seq: 0,
            };
            c = c
                .put(
                    Cell::new(&MEMBERS, k(id), k(*user)),
                    encode("chat member", &m)?,
                    None,
                )
                .put(list_row(*user, id, *state), list_value()?, None);
        }
        Ok(c)
    }

    /// Makes a group of `me` and `members` (each admitting `me` by their
    /// `who_can_message`; those who do not follow `me` get it as a request). A retry with
    /// the same `idempotency_key` returns the first group.
    pub async fn group(
        &self,
        me: u64,
        members: &[u64],
        title: &str,
        encrypted: bool,
        mls_group_id: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<u64> {
        if !chars_within(title, MAX_TITLE_CHARS) {
            return Err(Error::InvalidArgument { field: "title" });
        }
        let mut others: Vec<u64> = members.iter().copied().filter(|u| *u != me).collect();
        others.sort_unstable();
        others.dedup();
        if others.len() + 1 > MAX_MEMBERS {
            return Err(Error::InvalidArgument {
                field: "member_ids",
            });
        }
        if mls_group_id.len() > 256 || (encrypted && mls_group_id.is_empty()) {
            return Err(Error::InvalidArgument {
                field: "mls_group_id",
            });
        }
        let key_cell = match idempotency_key.filter(|k| !k.is_empty()) {
            Some(key) => {
                if key.len() > MAX_TXN_ID {
                    return Err(Error::InvalidArgument {
                        field: "idempotency_key",
                    });
                }
                let clustering = KeyBuilder::new().str("conversation").str(key).build();
                let cell = Cell::new(&tables::posts::IDEMPOTENCY, k(me), clustering);
                if let Some(v) = self
                    .store
                    .get(cell.table, &cell.partition, &cell.clustering)
                    .await?
                {
                    return tables::id_value(&v).ok_or(Error::Corrupt("idempotency key"));
                }
                Some(cell)
            }
            None => None,
        };
        self.rates.check(me, Costly::Create)?;
        let mut list = vec![(me, MemberState::Active)];
        for &other in &others {
            if tables::graph::blocked_either_way(&self.store, me, other).await? {
                return Err(Error::Blocked);
            }
            list.push((other, self.arrival(me, other).await?));
        }
        let id = self.next_id();
        let now = self.now();
        let rec = ConversationRec {
            kind: Kind::Group,
            title: title.to_string(),
            avatar_media_id: 0,
            created_at_ms: now,
            creator: me,
            encrypted,
            mls_group_id,
        };
        let mut commit = self.creation(id, &rec, &list, Role::Member, me, now)?;
        if let Some(cell) = key_cell.clone() {
            commit = commit.when(Condition::Absent {
                row: cell,
                value: k(id),
                ttl: None,
            });
        }
        if !self.store.commit(&commit).await? {
            let cell = key_cell.ok_or(Error::Busy)?;
            let v = self
                .store
                .get(cell.table, &cell.partition, &cell.clustering)
                .await?
                .ok_or(Error::Busy)?;
            return tables::id_value(&v).ok_or(Error::Corrupt("idempotency key"));
        }
        self.push(id, &created_item(id, me, now)).await?;
        Ok(id)
    }

    /// `user`'s (read, delivered) positions in `id`.
    async fn positions(&self, id: u64, user: u64, member: &MemberRec) -> Result<(u64, u64)> {
        let floor = member.joined_seq;
        Ok(match self.store.get(&RECEIPTS, &k(id), &k(user)).await? {
            Some(v) => {
                let p: Positions = decode("chat receipt", &v)?;
                (p.read.max(floor), p.delivered.max(floor))
            }
            None => (
                member.last_read_seq.max(floor),
                member.last_delivered_seq.max(floor),
            ),
        })
    }

    /// Moves `user`'s position of `kind` (a read moves delivery too) up to `up_to`,
    /// never back (a versioned write, retried on a race).
    async fn move_positions(&self, id: u64, user: u64, kind: Receipt, up_to: u64) -> Result<()> {
        for _ in 0..APPEND_TRIES {
            let raw = self.store.get(&RECEIPTS, &k(id), &k(user)).await?;
            let mut p: Positions = match &raw {
                Some(v) => decode("chat receipt", v)?,
                None => Positions::default(),
            };
            if kind == Receipt::Read {
                p.read = p.read.max(up_to);
            }
            p.delivered = p.delivered.max(up_to);
            let new = encode("chat receipt", &p)?;
            let done = match &raw {
                Some(old) if old[..] == new[..] => true,
                Some(old) => {
                    self.store
                        .compare_and_set(&RECEIPTS, &k(id), &k(user), old, Some(&new), None)
                        .await?
                }
                None => {
                    self.store
                        .insert_if_absent(&RECEIPTS, &k(id), &k(user), &new, None)
                        .await?
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(Error::Busy)
    }

    /// Every member's positions, laid over their rows.
    async fn with_positions(&self, id: u64, members: &mut [(u64, MemberRec)]) -> Result<()> {
        let page = self
            .store
            .scan(&RECEIPTS, &k(id), &Scan::all(MAX_MEMBERS + 1))
            .await?;
        let mut by_user = HashMap::with_capacity(page.rows.len());
        for row in &page.rows {
            let user = tables::id_value(&row.clustering).ok_or(Error::Corrupt("chat receipt"))?;
            let p: Positions = decode("chat receipt", &row.value)?;
            by_user.insert(user, p);
        }
        for (user, m) in members.iter_mut() {
            let floor = m.joined_seq;
            if let Some(p) = by_user.get(user) {
                m.last_read_seq = p.read;
                m.last_delivered_seq = p.delivered;
            }
            m.last_read_seq = m.last_read_seq.max(floor);
            m.last_delivered_seq = m.last_delivered_seq.max(floor);
        }
        Ok(())
    }

    /// The conversation as `me` sees it (rate limited per user: a view reads every
    /// member's settings).
    pub async fn view(&self, me: u64, id: u64) -> Result<View> {
        self.rates.check(me, Costly::View)?;
        self.view_unlimited(me, id).await
    }

    /// [`Chat::view`] without spending a token (for a list page, already paid for).
    async fn view_unlimited(&self, me: u64, id: u64) -> Result<View> {
        let (rec, caller) = self.membership(id, me).await?;
        if caller.state == MemberState::Declined {
            return Err(Error::NotFound("conversation"));
        }
        let head = self.head(id).await?;
        let mine = self.user_conv(me, id).await?.unwrap_or_default();
        let mut members = self.members(id).await?;
        self.with_positions(id, &mut members).await?;
        let mine_member = members
            .iter()
            .find(|(u, _)| *u == me)
            .map(|(_, m)| m.clone())
            .ok_or(Error::NotFound("conversation"))?;
        // Read positions: hidden for members who turned receipts off, and from a viewer
        // who did; a request's recipient shows none until they answer.
        // Delivery positions: hidden while a request waits (its sender must not learn
        // that it arrived), and across a block either way.
        let my_settings = tables::users::settings(&self.store, me).await?;
        let mut memo = HashMap::new();
        for (user, m) in &mut members {
            if *user == me {
                continue;
            }
            let theirs = tables::users::settings(&self.store, *user).await?;
            let apart = m.state != MemberState::Active || !self.sees(&mut memo, me, *user).await?;
            if !theirs.show_read_receipts || !my_settings.show_read_receipts || apart {
                m.last_read_seq = 0;
            }
            if apart {
                m.last_delivered_seq = 0;
            }
        }
        let mut last_message = None;
        let floor = mine_member.joined_seq;
        if head.last_message_seq > floor {
            let recent = self
                .entries_backward(id, head.last_message_seq + 1, floor, 50)
                .await?;
            for (seq, e) in recent {
                if let Entry::Message(mut m) = e
                    && self.sees(&mut memo, me, m.sender_id).await?
                {
                    m.seq = seq;
                    last_message = Some(m);
                    break;
                }
            }
        }
        let from = mine_member.last_read_seq.max(floor);
        let mut unread = 0u32;
        if head.last_message_seq > from {
            let after = self
                .entries_forward(id, from, head.last_message_seq, 4 * UNREAD_CAP as usize)
                .await?;
            for (_, e) in after {
                if let Entry::Message(m) = e
                    && m.sender_id != me
                    && !m.deleted
                    && self.sees(&mut memo, me, m.sender_id).await?
                {
                    unread += 1;
                    if unread >= UNREAD_CAP {
                        break;
                    }
                }
            }
        }
        // Presence is shared between the two sides of a direct conversation only (see
        // `ephemeral`): a group does not reveal its members' activity to each other.
        let mut presence = HashMap::new();
        for (user, m) in &members {
            if *user != me
                && rec.kind == Kind::Direct
                && mine_member.state == MemberState::Active
                && m.state == MemberState::Active
                && let Some(p) = self.presence_for(me, *user).await?
            {
                presence.insert(*user, p);
            }
        }
        Ok(View {
            presence,
            conversation_id: id,
            rec,
            head,
            members,
            me: mine_member,
            mine,
            unread,
            last_message,
        })
    }

    /// `me`'s conversations of `folder`, most recently active first (pinned ones first
    /// in the inbox): `limit` after the position `after` (an opaque rank, id) of the
    /// previous page.
    pub async fn list(
        &self,
        me: u64,
        folder: Folder,
        limit: usize,
        after: Option<(u64, u64)>,
    ) -> Result<(Vec<View>, Option<(u64, u64)>)> {
        self.rates.check(me, Costly::List)?;
        let mut entries = Vec::new();
        let candidates = match folder {
            Folder::Requests => self
                .user_requests(me, MAX_USER_REQUESTS)
                .await?
                .into_iter()
                .map(|id| (id, UserConv::default()))
                .collect(),
            Folder::Inbox | Folder::Archived => self.user_conversations(me).await?,
        };
        for (id, mine) in candidates {
            let Some(member) = self.member(id, me).await? else {
                continue;
            };
            let shown = match folder {
                Folder::Requests => member.state == MemberState::Request,
                Folder::Archived => member.state == MemberState::Active && mine.archived,
                Folder::Inbox => member.state == MemberState::Active && !mine.archived,
            };
            if !shown {
                continue;
            }
            let head = self.head(id).await?;
            let pinned = folder == Folder::Inbox && mine.pinned;
            // Pinned first: the rank's top bit (activity times are far below 2^63), so
            // the page position (rank, id) orders pinned and unpinned alike.
            let rank = (u64::from(pinned) << 63) | (head.last_activity_ms & (u64::MAX >> 1));
            entries.push((rank, id));
        }
        // Pinned first, then newest activity, then id (stable across pages).
        entries.sort_by(|a, b| b.cmp(a));
        let start = match after {
            None => 0,
            Some(position) => entries
                .iter()
                .position(|e| *e < position)
                .unwrap_or(entries.len()),
        };
        let page: Vec<_> = entries.iter().skip(start).take(limit).collect();
        let mut views = Vec::with_capacity(page.len());
        for (_, id) in &page {
            views.push(self.view_unlimited(me, *id).await?);
        }
        let next = (start + page.len() < entries.len())
            .then(|| page.last().map(|e| **e))
            .flatten();
        Ok((views, next))
    }

    /// `me`'s conversations, the most recently made first, at most
    /// [`MAX_USER_CONVERSATIONS`] (ids grow with time: the oldest fall off). Message
    /// requests waiting for `me` are not among them (see [`Chat::user_requests`]).
    async fn user_conversations(&self, me: u64) -> Result<Vec<(u64, UserConv)>> {
        self.newest_rows(&USER_CONVERSATIONS, me, MAX_USER_CONVERSATIONS)
            .await
    }

    /// The message requests waiting for `me`, the newest first, at most `max`.
    async fn user_requests(&self, me: u64, max: usize) -> Result<Vec<u64>> {
        let rows = self.newest_rows(&USER_REQUESTS, me, max).await?;
        Ok(rows.into_iter().map(|(id, _)| id).collect())
    }

    /// The newest `max` rows of `me`'s partition of a per-user conversation table.
    async fn newest_rows(
        &self,
        table: &'static selfie_storage::Table,
        me: u64,
        max: usize,
    ) -> Result<Vec<(u64, UserConv)>> {
        let mut out = Vec::new();
        let mut scan = Scan::all(selfie_storage::MAX_PAGE_ROWS.min(max.max(1))).reversed();
        loop {
            let page = self.store.scan(table, &k(me), &scan).await?;
            for row in page.rows.iter().take(max - out.len()) {
                let id = tables::id_value(&row.clustering).ok_or(Error::Corrupt("chat list"))?;
                out.push((id, decode("chat user state", &row.value)?));
            }
            match page.cursor {
                Some(c) if out.len() < max => scan = scan.after(Some(c)),
                _ => return Ok(out),
            }
        }
    }

    /// Renames, sets the avatar (group admins), mutes, archives or pins (the caller's own).
    pub async fn update(&self, me: u64, id: u64, u: Update) -> Result<()> {
        let _g = self.locks.lock((id, 0)).await;
        let (rec, member) = self.membership(id, me).await?;
        if u.title.is_some() || u.avatar_media_id.is_some() {
            if rec.kind != Kind::Group {
                return Err(Error::InvalidArgument { field: "title" });
            }
            if u.title
                .as_ref()
                .is_some_and(|t| !chars_within(t, MAX_TITLE_CHARS))
            {
                return Err(Error::InvalidArgument { field: "title" });
            }
            self.update_group(me, id, &u).await?;
        }
        if u.muted_until_ms.is_some() || u.archived.is_some() || u.pinned.is_some() {
            // A request is answered first; a declined one is not in the list at all.
            if member.state != MemberState::Active {
                return Err(Error::Forbidden("answer the message request first"));
            }
            let mut mine = self.user_conv(me, id).await?.unwrap_or_default();
            if let Some(m) = u.muted_until_ms {
                mine.muted_until_ms = m;
            }
            if let Some(a) = u.archived {
                mine.archived = a;
            }
            if let Some(p) = u.pinned {
                mine.pinned = p;
            }
            self.store
                .put(
                    &USER_CONVERSATIONS,
                    &k(me),
                    &k(id),
                    &encode("chat user state", &mine)?,
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// The group part of [`Chat::update`] (title, avatar; admins), under the
    /// conversation's lock. Each attempt reads the head, then the admin's membership
    /// and the group's record (again, once the head's change of it has landed: see
    /// [`Head::changed`], where number 0 stands for the record), so that a change
    /// another node made meanwhile (a title, an avatar, a role) is built on, not undone.
    async fn update_group(&self, me: u64, id: u64, u: &Update) -> Result<()> {
        // An avatar is one of the admin's own ready images, used by the group from now
        // on (never collected as unused, shown to its members).
        let avatar = tables::media::Use::ChatAvatar(id);
        let new_avatar = u.avatar_media_id.filter(|a| *a != 0);
        if let Some(a) = new_avatar {
            tables::media::check(
                &self.store,
                me,
                &[a],
                &[tables::media::Kind::Image],
                "avatar_media_id",
            )
            .await?;
            tables::media::attach(&self.store, &[a], avatar, "avatar_media_id").await?;
        }
        let made = self.update_group_attempts(me, id, u).await;
        match made {
            Ok(Some((seqs, event, replaced))) => {
                self.push_entry(id, seqs, event).await?;
                // The avatar replaced (as it was when this change won) is no longer the
                // group's; a failure here leaves a use a later sweep may keep, never a
                // change unpushed.
                if let Some(old) = replaced
                    && let Err(e) = tables::media::detach(&self.store, &[old], avatar).await
                {
                    tracing::warn!(conversation = id, error = %e, "old group avatar not detached");
                }
                Ok(())
            }
            outcome => {
                // Not made: the avatar attached for it goes back to being unused (unless
                // it is the group's already).
                if let Some(a) = new_avatar
                    && self.conversation(id).await?.map(|r| r.avatar_media_id) != Some(a)
                {
                    tables::media::detach(&self.store, &[a], avatar).await?;
                }
                match outcome {
                    Err(e) => Err(e),
                    Ok(_) => Err(Error::Busy),
                }
            }
        }
    }

    /// The attempts of [`Chat::update_group`]: the numbers and event of the change made
    /// and the avatar it replaced, or `None` when every attempt lost its race.
    async fn update_group_attempts(
        &self,
        me: u64,
        id: u64,
        u: &Update,
    ) -> Result<Option<(Vec<u64>, Entry, Option<u64>)>> {
        let row = Cell::new(&CONVERSATIONS, k(id), Bytes::new());
        for attempt in 0..APPEND_TRIES {
            backoff(attempt).await;
            let (raw, head) = self.current_head(id).await?;
            if head.left.contains(&me) {
                return Err(Error::NotFound("conversation"));
            }
            let (_, member) = self.membership(id, me).await?;
            if member.role < Role::Admin || member.state != MemberState::Active {
                return Err(Error::Forbidden("only admins may change the group"));
            }
            let stored = self
                .store
                .get(row.table, &row.partition, &row.clustering)
                .await?
                .ok_or(Error::NotFound("conversation"))?;
            let now = self.now();
            if !head.landed(0, &stored, now) {
                continue;
            }
            let mut rec: ConversationRec = decode("conversation", &stored)?;
            let old_avatar = rec.avatar_media_id;
            if let Some(t) = &u.title {
                rec.title = t.clone();
            }
            if let Some(a) = u.avatar_media_id {
                rec.avatar_media_id = a;
            }
            let event = self.event(EventKind::Updated, me, 0, 0, "", &rec.title);
            let value: Bytes = encode("conversation", &rec)?.into();
            let digest = row_digest(&value);
            let change = |h: &mut Head, _: &[u64]| h.remember_change(0, digest, now);
            let extra = |_: &[u64]| Ok(vec![put(row.clone(), value.clone())]);
            let (seqs, _, queued) = self
                .queue_append(id, raw, head, std::slice::from_ref(&event), &change, &extra)
                .await?;
            if self.settle(id, queued).await? {
                self.after_earlier_pushes(id).await;
                let replaced =
                    (old_avatar != 0 && old_avatar != rec.avatar_media_id).then_some(old_avatar);
                return Ok(Some((seqs, event, replaced)));
            }
        }
        Ok(None)
    }

    fn event(
        &self,
        kind: EventKind,
        actor: u64,
        target_seq: u64,
        user: u64,
        emoji: &str,
        text: &str,
    ) -> Entry {
        Entry::Event(Event {
            kind,
            actor,
            target_seq,
            user,
            emoji: emoji.to_string(),
            text: text.to_string(),
            at_ms: self.now(),
        })
    }

    async fn push_entry(&self, id: u64, seqs: Vec<u64>, entry: Entry) -> Result<()> {
        let seq = seqs.first().copied().unwrap_or(0);
        let mut entry = entry;
        if let Entry::Message(m) = &mut entry {
            m.seq = seq;
        }
        self.push(
            id,
            &LogItem {
                conversation_id: id,
                seq,
                entry,
            },
        )
        .await
    }

    /// Adds `users` to a group (admins; each must admit `me` by `who_can_message`).
    pub async fn add_members(&self, me: u64, id: u64, users: &[u64]) -> Result<()> {
        let _g = self.locks.lock((id, 0)).await;
        let (rec, member) = self.membership(id, me).await?;
        if rec.kind != Kind::Group {
            return Err(Error::InvalidArgument {
                field: "conversation_id",
            });
        }
        if member.role < Role::Admin || member.state != MemberState::Active {
            return Err(Error::Forbidden("only admins may add members"));
        }
        if users.len() > MAX_MEMBERS {
            return Err(Error::InvalidArgument { field: "user_ids" });
        }
        for &user in users {
            if user == me || self.member(id, user).await?.is_some() {
                continue;
            }
            if tables::graph::blocked_either_way(&self.store, me, user).await? {
                return Err(Error::Blocked);
            }
            let state = self.arrival(me, user).await?;
            let event = self.event(EventKind::Joined, me, 0, user, "", "");
            let now = self.now();
            // Each attempt checks again, after the head it builds on, that `me` is still
            // an admin, `user` not in yet and the group not full (another node may have
            // changed any of them meanwhile).
            let mut added = None;
            for attempt in 0..APPEND_TRIES {
                backoff(attempt).await;
                let (raw, head) = self.current_head(id).await?;
                if head.left.contains(&me) {
                    return Err(Error::NotFound("conversation"));
                }
                let members = self.members(id).await?;
                let still_admin = member_of(&members, me)
                    .is_some_and(|m| m.role >= Role::Admin && m.state == MemberState::Active);
                if !still_admin {
                    return Err(Error::Forbidden("only admins may add members"));
                }
                if member_of(&members, user).is_some() && !head.left.contains(&user) {
                    break; // Added meanwhile.
                }
                // Counted from the member rows, not the head's counter: on CQL two nodes
                // racing one removal can both decrement it.
                if members.len() >= MAX_MEMBERS {
                    return Err(Error::Forbidden("the group is full"));
                }
                let change = |h: &mut Head, _: &[u64]| {
                    h.members += 1;
                    h.left.retain(|u| *u != user);
                };
                let extra = |seqs: &[u64]| {
                    let joined_seq = seqs[0] - 1;
                    let m = MemberRec {
                        role: Role::Member,
                        state,
                        joined_at_ms: now,
                        joined_seq,
                        last_read_seq: joined_seq,
                        last_delivered_seq: joined_seq,
                    };
                    Ok(vec![
                        put(
                            Cell::new(&MEMBERS, k(id), k(user)),
                            encode("chat member", &m)?,
                        ),
                        put(list_row(user, id, state), list_value()?),
                    ])
                };
                let (seqs, _, queued) = self
                    .queue_append(id, raw, head, std::slice::from_ref(&event), &change, &extra)
                    .await?;
                if self.settle(id, queued).await? {
                    self.after_earlier_pushes(id).await;
                    added = Some(seqs);
                    break;
                }
                if attempt + 1 == APPEND_TRIES {
                    return Err(Error::Busy);
                }
            }
            if let Some(seqs) = added {
                self.push_entry(id, seqs, event).await?;
            }
        }
        Ok(())
    }

    /// Removes `user` (admins remove members; the owner anyone; anyone themselves).
    pub async fn remove_member(&self, me: u64, id: u64, user: u64) -> Result<()> {
        let _g = self.locks.lock((id, 0)).await;
        let (rec, _) = self.membership(id, me).await?;
        if rec.kind != Kind::Group {
            return Err(Error::InvalidArgument {
                field: "conversation_id",
            });
        }
        // Each attempt decides on the members as they are after the head it read: a
        // lost race (another node removed or promoted someone) re-reads them, so a
        // removal is never applied twice and never writes back a stale member row.
        for attempt in 0..APPEND_TRIES {
            backoff(attempt).await;
            let (raw, head) = self.current_head(id).await?;
            let mut members = self.members(id).await?;
            let member = member_of(&members, me).ok_or(Error::NotFound("conversation"))?;
            if head.left.contains(&user) || head.left.contains(&me) {
                return Err(Error::NotFound("member"));
            }
            let target = member_of(&members, user).ok_or(Error::NotFound("member"))?;
            if user != me {
                let allowed = member.state == MemberState::Active
                    && (member.role == Role::Owner
                        || (member.role == Role::Admin && target.role == Role::Member));
                if !allowed {
                    return Err(Error::Forbidden("you may not remove this member"));
                }
            }
            // An owner who leaves hands the group to the longest-standing admin (or
            // member).
            let mut successor = None;
            if target.role == Role::Owner {
                let mut rest: Vec<_> = members
                    .iter()
                    .filter(|(u, m)| *u != user && m.state == MemberState::Active)
                    .cloned()
                    .collect();
                rest.sort_by_key(|(u, m)| (std::cmp::Reverse(m.role), m.joined_seq, *u));
                successor = rest.into_iter().next();
            }
            let mut entries = vec![self.event(EventKind::Left, me, 0, user, "", "")];
            // One commit: the entries, the successor's role, and the leaver's rows
            // (membership, list entries, positions), so no reader sees the member gone
            // from the log but still in the member list, or the reverse.
            let mut rows = Vec::new();
            if let Some((s, m)) = &successor {
                entries.push(self.event(EventKind::RoleChanged, me, 0, *s, "", "owner"));
                let mut m = m.clone();
                m.role = Role::Owner;
                rows.push(put(
                    Cell::new(&MEMBERS, k(id), k(*s)),
                    encode("chat member", &m)?,
                ));
            }
            for row in [
                Cell::new(&MEMBERS, k(id), k(user)),
                Cell::new(&USER_CONVERSATIONS, k(user), k(id)),
                Cell::new(&USER_REQUESTS, k(user), k(id)),
                Cell::new(&RECEIPTS, k(id), k(user)),
            ] {
                rows.push(Write::Delete { row });
            }
            let change = |h: &mut Head, _: &[u64]| {
                h.members = h.members.saturating_sub(1);
                h.left.push(user);
                let extra = h.left.len().saturating_sub(RECENT_LEFT);
                h.left.drain(..extra);
            };
            let Some((seqs, _)) = self
                .try_append(id, raw, head, &entries, &change, &|_| Ok(rows.clone()))
                .await?
            else {
                continue;
            };
            // The leaver is no longer a member: only their own removal reaches them.
            members.retain(|(u, _)| *u != user);
            if let Some((s, _)) = &successor
                && let Some((_, r)) = members.iter_mut().find(|(u, _)| u == s)
            {
                r.role = Role::Owner;
            }
            let mut memo = Memo::new();
            for (i, (seq, entry)) in seqs.iter().zip(entries).enumerate() {
                let item = LogItem {
                    conversation_id: id,
                    seq: *seq,
                    entry,
                };
                if i == 0 {
                    members.push((user, target.clone()));
                    self.push_to_members(&item, &members, &mut memo).await?;
                    members.pop();
                } else {
                    self.push_to_members(&item, &members, &mut memo).await?;
                }
            }
            return Ok(());
        }
        Err(Error::Busy)
    }

    /// Sets `user`'s role (the owner; making someone owner makes the caller an admin).
    pub async fn set_role(&self, me: u64, id: u64, user: u64, role: Role) -> Result<()> {
        let _g = self.locks.lock((id, 0)).await;
        let (rec, _) = self.membership(id, me).await?;
        if rec.kind != Kind::Group || user == me {
            return Err(Error::InvalidArgument { field: "user_id" });
        }
        let name = match role {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        };
        // As in `remove_member`, each attempt decides on the rows as they are after the
        // head it read.
        for attempt in 0..APPEND_TRIES {
            backoff(attempt).await;
            let (raw, head) = self.current_head(id).await?;
            let members = self.members(id).await?;
            let member = member_of(&members, me).ok_or(Error::NotFound("conversation"))?;
            if head.left.contains(&user) || head.left.contains(&me) {
                return Err(Error::NotFound("member"));
            }
            if member.role != Role::Owner {
                return Err(Error::Forbidden("only the owner may set roles"));
            }
            let mut target = member_of(&members, user).ok_or(Error::NotFound("member"))?;
            if target.state != MemberState::Active {
                return Err(Error::Forbidden("this member has not joined yet"));
            }
            target.role = role;
            let mut rows = vec![put(
                Cell::new(&MEMBERS, k(id), k(user)),
                encode("chat member", &target)?,
            )];
            if role == Role::Owner {
                let mut mine = member.clone();
                mine.role = Role::Admin;
                rows.push(put(
                    Cell::new(&MEMBERS, k(id), k(me)),
                    encode("chat member", &mine)?,
                ));
            }
            let event = self.event(EventKind::RoleChanged, me, 0, user, "", name);
            let entries = [event.clone()];
            if let Some((seqs, _)) = self
                .try_append(id, raw, head, &entries, &|_, _| {}, &|_| Ok(rows.clone()))
                .await?
            {
                return self.push_entry(id, seqs, event).await;
            }
        }
        Err(Error::Busy)
    }

    /// Accepts or declines a message request.
    pub async fn answer_request(&self, me: u64, id: u64, accept: bool) -> Result<()> {
        let _g = self.locks.lock((id, 0)).await;
        let (_, member) = self.membership(id, me).await?;
        if member.state != MemberState::Request {
            return Err(Error::Forbidden("no message request to answer"));
        }
        let state = if accept {
            MemberState::Active
        } else {
            MemberState::Declined
        };
        // The request leaves the requests folder; an accepted one joins the list, a
        // declined one leaves every list (and the decliner's syncs).
        let mut rows = vec![Write::Delete {
            row: Cell::new(&USER_REQUESTS, k(me), k(id)),
        }];
        if accept {
            rows.push(put(list_row(me, id, state), list_value()?));
        } else {
            rows.push(Write::Delete {
                row: Cell::new(&USER_CONVERSATIONS, k(me), k(id)),
            });
        }
        self.change_state(id, me, MemberState::Request, state, rows)
            .await
    }

    /// Makes `me` an active member of `id` (from `from`: a request, or a declined one
    /// started again): the request leaves the requests folder and the conversation
    /// joins `me`'s list (keeping a list state from before), with the membership in one
    /// commit. When another device of `me` changed the state first, fine if it is now
    /// active, `NotFound` otherwise (it declined).
    async fn activate(&self, id: u64, me: u64, from: MemberState) -> Result<()> {
        let mut rows = vec![Write::Delete {
            row: Cell::new(&USER_REQUESTS, k(me), k(id)),
        }];
        if self.user_conv(me, id).await?.is_none() {
            rows.push(put(list_row(me, id, MemberState::Active), list_value()?));
        }
        match self
            .change_state(id, me, from, MemberState::Active, rows)
            .await
        {
            Ok(()) => Ok(()),
            Err(Error::Forbidden(_)) => {
                let now = self.member(id, me).await?.map(|m| m.state);
                if now == Some(MemberState::Active) {
                    Ok(())
                } else {
                    Err(Error::NotFound("conversation"))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Moves `user`'s membership of `id` from `from` to `to` together with `rows`, in
    /// one commit conditioned on the membership row, so that the state and the user's
    /// list entries change together or not at all. `Forbidden` when the state is no
    /// longer `from` (another answer came first).
    async fn change_state(
        &self,
        id: u64,
        user: u64,
        from: MemberState,
        to: MemberState,
        rows: Vec<Write>,
    ) -> Result<()> {
        for attempt in 0..APPEND_TRIES {
            backoff(attempt).await;
            let raw = self
                .store
                .get(&MEMBERS, &k(id), &k(user))
                .await?
                .ok_or(Error::NotFound("conversation"))?;
            let mut m: MemberRec = decode("chat member", &raw)?;
            if m.state != from {
                return Err(Error::Forbidden("no message request to answer"));
            }
            m.state = to;
            let mut commit = Commit::new().when(Condition::Equals {
                row: Cell::new(&MEMBERS, k(id), k(user)),
                expected: raw,
                new: Some(encode("chat member", &m)?.into()),
                ttl: None,
            });
            commit.writes.extend(rows.iter().cloned());
            if self.store.commit(&commit).await? {
                return Ok(());
            }
        }
        Err(Error::Busy)
    }

    // ---- messages ----

    /// Sends a message (exactly once per transaction id; see the module docs).
    pub async fn send(&self, me: u64, id: u64, new: NewMessage) -> Result<Sent> {
        if new.client_msg_id.is_empty() || new.client_msg_id.len() > MAX_TXN_ID {
            return Err(Error::InvalidArgument {
                field: "client_msg_id",
            });
        }
        let txn_cell = Cell::new(&TXNS, k(me), txn_clustering(id, &new.client_msg_id));
        let mut new = new;
        // A forward's attachments are those its original used.
        let mut forwarded_from = None;
        if let Some((from, seq)) = new.forward {
            // A retry is answered before anything else is checked: the send was
            // accepted, even if the original has been deleted since.
            if let Some(sent) = self.txn(&txn_cell).await? {
                return Ok(sent);
            }
            let original = self.readable_message(me, from, seq).await?;
            if original.kind == MessageKind::Mls || original.deleted {
                return Err(Error::InvalidArgument {
                    field: "forward_seq",
                });
            }
            new.kind = original.kind;
            new.text = original.text;
            forwarded_from = Some(tables::media::Use::Chat(from, original.message_id));
            new.media_ids = original.media_ids;
            new.ref_id = original.ref_id;
        }
        // Held for the checks and the queueing of the commit, not for its durability: the
        // next send of this conversation queues behind it meanwhile (see `pipeline`).
        let mut guard = Some(self.locks.lock((id, 0)).await);
        if let Some(sent) = self.txn(&txn_cell).await? {
            return Ok(sent);
        }
        // A retry of an accepted send was answered above, free.
        self.rates.check(me, Costly::Send)?;
        // The members: the sender's membership and the checks here, the push after the
        // commit (read again when an attempt loses a race).
        let mut members = self.members(id).await?;
        let member = members
            .iter()
            .find(|(u, _)| *u == me)
            .map(|(_, m)| m.clone())
            .ok_or(Error::NotFound("conversation"))?;
        let shape = self.shape(id).await?;
        self.check_content(shape.encrypted, &new)?;
        if member.state == MemberState::Declined {
            return Err(Error::NotFound("conversation"));
        }
        let mut memo = Memo::new();
        if shape.kind == Kind::Direct {
            for (user, m) in &members {
                if *user == me {
                    continue;
                }
                if !self.sees(&mut memo, *user, me).await? {
                    return Err(Error::Blocked);
                }
                if m.state == MemberState::Declined {
                    return Err(Error::Forbidden("your message request was declined"));
                }
            }
        }
        if new.reply_to_seq != 0 || new.thread_seq != 0 {
            let (_, head) = self.current_head(id).await?;
            for seq in [new.reply_to_seq, new.thread_seq] {
                if seq != 0 && (seq <= member.joined_seq || seq > head.last_seq) {
                    return Err(Error::InvalidArgument {
                        field: "reply_to_seq",
                    });
                }
            }
        }
        // Attachments: the sender's own ready media; a forward's are the original's.
        if !new.media_ids.is_empty() {
            if let Some(original) = forwarded_from {
                tables::media::check_used_by(&self.store, &new.media_ids, original, "media_ids")
                    .await?;
            } else {
                tables::media::check(
                    &self.store,
                    me,
                    &new.media_ids,
                    &[
                        tables::media::Kind::Image,
                        tables::media::Kind::Video,
                        tables::media::Kind::Gif,
                    ],
                    "media_ids",
                )
                .await?;
            }
        }
        // Answering a request by replying accepts it: once the reply passed its checks.
        if member.state == MemberState::Request {
            self.activate(id, me, MemberState::Request).await?;
            if let Some((_, m)) = members.iter_mut().find(|(u, _)| *u == me) {
                m.state = MemberState::Active;
            }
        }
        let now = self.now();
        let message = Message {
            message_id: self.next_id(),
            seq: 0,
            sender_id: me,
            client_msg_id: new.client_msg_id.clone(),
            kind: new.kind,
            text: new.text,
            media_ids: new.media_ids,
            reply_to_seq: new.reply_to_seq,
            ref_id: new.ref_id,
            thread_seq: new.thread_seq,
            forwarded: new.forward.is_some(),
            created_at_ms: now,
            edited_at_ms: 0,
            edit_count: 0,
            deleted: false,
            reactions: Vec::new(),
            mls: new.mls,
        };
        let hash = txn_hash(me, &message.client_msg_id);
        let (message_id, created_at_ms) = (message.message_id, now);
        // The uses go first (a use of an object deleted meanwhile is refused), and get
        // the message's number once it has one.
        let attached = tables::media::Use::Chat(id, message_id);
        let media_ids = message.media_ids.clone();
        if !media_ids.is_empty() {
            tables::media::attach(&self.store, &media_ids, attached, "media_ids").await?;
        }
        let epoch = message.mls.as_ref().map(|m| m.epoch);
        let entries = [Entry::Message(message.clone())];
        let change = |h: &mut Head, seqs: &[u64]| {
            h.last_message_seq = seqs[0];
            h.recent.push((hash, seqs[0]));
            let extra = h.recent.len().saturating_sub(RECENT_TXNS);
            h.recent.drain(..extra);
        };
        let extra = |seqs: &[u64]| {
            let txn = TxnRec {
                seq: seqs[0],
                message_id,
                created_at_ms,
            };
            let mut writes = vec![put(txn_cell.clone(), encode("chat txn", &txn)?)];
            writes.extend(tables::media::settled(&media_ids, attached, seqs[0]));
            Ok(writes)
        };
        let (mut stored, mut exists) = (None, false);
        for attempt in 0..APPEND_TRIES {
            if guard.is_none() {
                backoff(attempt).await;
                guard = Some(self.locks.lock((id, 0)).await);
            }
            let (raw, head) = self.current_head(id).await?;
            if head.recent.iter().any(|(h, _)| *h == hash) {
                exists = true; // A retry of this very send took a number first.
                break;
            }
            // Removed meanwhile (by another node: the head says so even where the
            // member rows have not caught up yet).
            if head.left.contains(&me) {
                return Err(Error::NotFound("conversation"));
            }
            if attempt > 0 {
                // Lost a race: the members may have changed with the head.
                members = self.members(id).await?;
                if member_of(&members, me).is_none() {
                    return Err(Error::NotFound("conversation"));
                }
            }
            members.retain(|(u, _)| !head.left.contains(u));
            if let Some(e) = epoch
                && e != head.mls_epoch
            {
                return Err(Error::Stale(
                    "the group is in another epoch: process its commits first",
                ));
            }
            let (seqs, _, queued) = self
                .queue_append(id, raw, head, &entries, &change, &extra)
                .await?;
            // Its place in the push order is its place in the log.
            let turn = self.turns.take(id);
            guard = None;
            if self.settle(id, queued).await? {
                stored = Some((seqs, turn));
                break;
            }
            // Another writer changed the head first (or a send chained before this one
            // failed): start over from the head as it is.
        }
        drop(guard);
        let (seqs, turn) = match stored {
            Some(stored) => stored,
            None if !exists => return Err(Error::Busy),
            // A retry of this very send took a number first (here or on another node).
            // On CQL its entry may not be readable yet: the client retries and gets it
            // then.
            None => {
                for _ in 0..40 {
                    if let Some(sent) = self.txn(&txn_cell).await? {
                        return Ok(sent);
                    }
                    if let Some(sent) = self.recent_send(id, me, &message.client_msg_id).await? {
                        return Ok(sent);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                return Err(Error::Busy);
            }
        };
        let seq = seqs[0];
        let mut message = message;
        message.seq = seq;
        let item = LogItem {
            conversation_id: id,
            seq,
            entry: Entry::Message(message),
        };
        // After every entry queued before it: subscribers get the log in order.
        turn.ready().await;
        self.push_to_members(&item, &members, &mut memo).await?;
        drop(turn);
        Ok(Sent {
            message_id,
            seq,
            created_at_ms,
            duplicate: false,
        })
    }

    async fn txn(&self, cell: &Cell) -> Result<Option<Sent>> {
        let Some(v) = self
            .store
            .get(cell.table, &cell.partition, &cell.clustering)
            .await?
        else {
            return Ok(None);
        };
        let t: TxnRec = decode("chat txn", &v)?;
        Ok(Some(Sent {
            message_id: t.message_id,
            seq: t.seq,
            created_at_ms: t.created_at_ms,
            duplicate: true,
        }))
    }

    /// The send of `client_msg_id` by `me`, if the head remembers it.
    async fn recent_send(&self, id: u64, me: u64, client_msg_id: &str) -> Result<Option<Sent>> {
        let hash = txn_hash(me, client_msg_id);
        let head = self.head(id).await?;
        for &(h, seq) in head.recent.iter().rev() {
            if h != hash {
                continue;
            }
            if let Some(Entry::Message(m)) = self.entry(id, seq).await?
                && m.sender_id == me
                && m.client_msg_id == client_msg_id
            {
                return Ok(Some(Sent {
                    message_id: m.message_id,
                    seq,
                    created_at_ms: m.created_at_ms,
                    duplicate: true,
                }));
            }
        }
        Ok(None)
    }

    fn check_content(&self, encrypted: bool, new: &NewMessage) -> Result<()> {
        if encrypted {
            // The server carries MLS ciphertext only: no plaintext field may be set.
            let mls_ok = new.kind == MessageKind::Mls
                && new.mls.as_ref().is_some_and(|m| {
                    !m.data.is_empty()
                        && m.content_type == mls_content::APPLICATION
                        && m.recipients.is_empty()
                })
                && new.text.is_empty()
                && new.media_ids.is_empty()
                && new.ref_id == 0
                && new.forward.is_none();
            return if mls_ok {
                Ok(())
            } else {
                Err(Error::InvalidArgument { field: "mls" })
            };
        }
        match new.kind {
            MessageKind::Mls | MessageKind::System => {
                return Err(Error::InvalidArgument { field: "kind" });
            }
            MessageKind::StoryReply | MessageKind::PostShare if new.ref_id == 0 => {
                return Err(Error::InvalidArgument { field: "ref_id" });
            }
            _ => {}
        }
        if new.mls.is_some() {
            return Err(Error::InvalidArgument { field: "mls" });
        }
        if !chars_within(&new.text, MAX_MESSAGE_CHARS) {
            return Err(Error::InvalidArgument { field: "text" });
        }
        if new.media_ids.len() > MAX_ATTACHMENTS {
            return Err(Error::InvalidArgument { field: "media_ids" });
        }
        if new.text.trim().is_empty() && new.media_ids.is_empty() && new.ref_id == 0 {
            return Err(Error::InvalidArgument { field: "text" });
        }
        Ok(())
    }

    /// Message `seq` of `id`, when `me` is an active member who may see it.
    pub async fn readable_message(&self, me: u64, id: u64, seq: u64) -> Result<Message> {
        let (_, member) = self.membership(id, me).await?;
        if member.state == MemberState::Declined || seq <= member.joined_seq {
            return Err(Error::NotFound("message"));
        }
        match self.entry(id, seq).await? {
            Some(Entry::Message(mut m))
                if m.addressed_to(me)
                    && self.sees(&mut HashMap::new(), me, m.sender_id).await? =>
            {
                m.seq = seq;
                Ok(m)
            }
            _ => Err(Error::NotFound("message")),
        }
    }

    /// Changes message `seq` with `f` and appends `event`, in one commit. Each attempt
    /// reads the head, then the message, and runs `f` on what it read: an attempt that
    /// lost the race to another node starts over from the message as that node left it.
    async fn change_message(
        &self,
        me: u64,
        id: u64,
        seq: u64,
        event: Entry,
        f: impl Fn(&mut Message, &MemberRec, &ConversationRec) -> Result<Change>,
    ) -> Result<()> {
        let _g = self.locks.lock((id, 0)).await;
        let row = Cell::new(&LOG, log_partition(id, seq), seq_key(seq));
        let mut memo = Memo::new();
        for attempt in 0..APPEND_TRIES {
            backoff(attempt).await;
            // The head first: a change committed after this read fails this attempt's
            // condition, so the message read next is never older than the head, nor is
            // the membership on the embedded store (on CQL a role change's row lands a
            // moment after its head: within that moment the old role may still count).
            let (raw, head) = self.current_head(id).await?;
            if head.left.contains(&me) {
                return Err(Error::NotFound("conversation"));
            }
            let (rec, member) = self.membership(id, me).await?;
            if member.state != MemberState::Active {
                return Err(Error::Forbidden("answer the message request first"));
            }
            if seq <= member.joined_seq {
                return Err(Error::NotFound("message"));
            }
            let stored = self
                .store
                .get(row.table, &row.partition, &row.clustering)
                .await?
                .ok_or(Error::NotFound("message"))?;
            let now = self.now();
            if !head.landed(seq, &stored, now) {
                // The last change's row has not landed yet (CQL): read it again.
                continue;
            }
            let mut message = match decode("chat log entry", &stored)? {
                Entry::Message(m)
                    if m.addressed_to(me) && self.sees(&mut memo, me, m.sender_id).await? =>
                {
                    m
                }
                _ => return Err(Error::NotFound("message")),
            };
            message.seq = seq;
            // Commits and Welcomes carry the group's key schedule: nobody may change them.
            if message
                .mls
                .as_ref()
                .is_some_and(|m| m.content_type != mls_content::APPLICATION)
            {
                return Err(Error::Forbidden("MLS handshake messages cannot be changed"));
            }
            let version = match f(&mut message, &member, &rec)? {
                Change::Unchanged => return Ok(()),
                Change::Changed(v) => v,
            };
            let value: Bytes = encode("chat log entry", &Entry::Message(message))?.into();
            let digest = row_digest(&value);
            let version_row = match version {
                Some((n, v)) => Some(put(
                    Cell::new(&EDITS, k(id), KeyBuilder::new().u64(seq).u64(n).build()),
                    encode("message version", &v)?,
                )),
                None => None,
            };
            let change = |h: &mut Head, _: &[u64]| h.remember_change(seq, digest, now);
            let extra = |_: &[u64]| {
                let mut rows = vec![put(row.clone(), value.clone())];
                rows.extend(version_row.clone());
                Ok(rows)
            };
            let (seqs, _, queued) = self
                .queue_append(id, raw, head, std::slice::from_ref(&event), &change, &extra)
                .await?;
            if self.settle(id, queued).await? {
                self.after_earlier_pushes(id).await;
                return self.push_entry(id, seqs, event).await;
            }
        }
        Err(Error::Busy)
    }

    /// Edits `me`'s message `seq` (plain conversations; the old text is kept).
    pub async fn edit(&self, me: u64, id: u64, seq: u64, text: &str) -> Result<()> {
        if !chars_within(text, MAX_MESSAGE_CHARS) || text.trim().is_empty() {
            return Err(Error::InvalidArgument { field: "text" });
        }
        let now = self.now();
        let event = self.event(EventKind::Edited, me, seq, 0, "", text);
        self.change_message(me, id, seq, event, |m, _, _| {
            if m.sender_id != me || m.deleted {
                return Err(Error::Forbidden("only the sender may edit a message"));
            }
            if m.kind == MessageKind::Mls {
                return Err(Error::InvalidArgument { field: "mls" });
            }
            if m.edit_count >= MAX_EDITS {
                return Err(Error::Forbidden("this message was edited too many times"));
            }
            let old = Version {
                text: std::mem::replace(&mut m.text, text.to_string()),
                replaced_at_ms: now,
            };
            m.edited_at_ms = now;
            m.edit_count += 1;
            // Versions are keyed by their number: two edits in one millisecond stay two.
            Ok(Change::Changed(Some((u64::from(m.edit_count), old))))
        })
        .await
    }

    /// The earlier versions of message `seq`, oldest first.
    pub async fn versions(&self, me: u64, id: u64, seq: u64) -> Result<Vec<Version>> {
        let m = self.readable_message(me, id, seq).await?;
        if m.deleted {
            return Ok(Vec::new());
        }
        let scan = Scan {
            start: Bound::Included(KeyBuilder::new().u64(seq).build()),
            end: Bound::Excluded(KeyBuilder::new().u64(seq + 1).build()),
            reverse: false,
            limit: selfie_storage::MAX_PAGE_ROWS,
            cursor: None,
        };
        let page = self.store.scan(&EDITS, &k(id), &scan).await?;
        page.rows
            .iter()
            .map(|r| decode("message version", &r.value))
            .collect()
    }

    /// Deletes message `seq` for everyone (its sender, or a group admin): a tombstone.
    pub async fn delete(&self, me: u64, id: u64, seq: u64) -> Result<()> {
        let event = self.event(EventKind::Deleted, me, seq, 0, "", "");
        let attachments = RefCell::new((0u64, Vec::new()));
        self.change_message(me, id, seq, event, |m, member, _| {
            if m.deleted {
                return Err(Error::NotFound("message"));
            }
            if m.sender_id != me && member.role < Role::Admin {
                return Err(Error::Forbidden("only the sender or an admin may delete"));
            }
            m.deleted = true;
            m.text.clear();
            *attachments.borrow_mut() = (m.message_id, std::mem::take(&mut m.media_ids));
            m.mls = None;
            m.reactions.clear();
            Ok(Change::Changed(None))
        })
        .await?;
        // Earlier versions go with it.
        let scan = Scan {
            start: Bound::Included(KeyBuilder::new().u64(seq).build()),
            end: Bound::Excluded(KeyBuilder::new().u64(seq + 1).build()),
            reverse: false,
            limit: selfie_storage::MAX_PAGE_ROWS,
            cursor: None,
        };
        let page = self.store.scan(&EDITS, &k(id), &scan).await?;
        for r in page.rows {
            self.store.delete(&EDITS, &k(id), &r.clustering).await?;
        }
        // Its attachments are no longer used by it: objects nothing else uses go.
        let (message_id, media) = attachments.into_inner();
        if !media.is_empty() {
            let used = tables::media::Use::Chat(id, message_id);
            tables::media::detach(&self.store, &media, used).await?;
            if let Some(release) = &self.media_release {
                release(media);
            }
        }
        Ok(())
    }

    /// Sets (or with `None` takes back) `me`'s reaction to message `seq`.
    pub async fn react(&self, me: u64, id: u64, seq: u64, emoji: Option<&str>) -> Result<()> {
        if let Some(e) = emoji
            && (e.is_empty() || e.len() > 32)
        {
            return Err(Error::InvalidArgument { field: "emoji" });
        }
        let event = match emoji {
            Some(e) => self.event(EventKind::Reacted, me, seq, 0, e, ""),
            None => self.event(EventKind::Unreacted, me, seq, 0, "", ""),
        };
        self.change_message(me, id, seq, event, |m, _, rec| {
            if rec.encrypted {
                // A plaintext emoji would sit next to the ciphertext: reactions in an
                // encrypted conversation are MLS application messages of their own.
                return Err(Error::InvalidArgument {
                    field: "conversation_id",
                });
            }
            if m.deleted {
                return Err(Error::NotFound("message"));
            }
            let mine = m.reactions.iter().find(|(u, _)| *u == me);
            if emoji.is_some() && mine.map(|(_, e)| e.as_str()) == emoji {
                return Ok(Change::Unchanged);
            }
            let had = mine.is_some();
            m.reactions.retain(|(u, _)| *u != me);
            match emoji {
                Some(e) => {
                    let kinds: HashSet<&str> =
                        m.reactions.iter().map(|(_, x)| x.as_str()).collect();
                    if !kinds.contains(e) && kinds.len() >= MAX_REACTION_KINDS {
                        return Err(Error::InvalidArgument { field: "emoji" });
                    }
                    m.reactions.push((me, e.to_string()));
                }
                None if !had => return Err(Error::NotFound("reaction")),
                None => {}
            }
            Ok(Change::Changed(None))
        })
        .await
    }

    /// Moves `me`'s read (or delivered) position up to `up_to` and tells the others
    /// (read positions only when both sides show read receipts).
    pub async fn receipt(&self, me: u64, id: u64, kind: Receipt, up_to: u64) -> Result<()> {
        let (_, member) = self.membership(id, me).await?;
        let head = self.head(id).await?;
        let up_to = up_to.min(head.last_seq);
        let (read, delivered) = self.positions(id, me, &member).await?;
        let before = match kind {
            Receipt::Read => read,
            Receipt::Delivered => delivered,
        };
        if up_to <= before {
            return Ok(());
        }
        self.rates.check(me, Costly::Receipt)?;
        self.move_positions(id, me, kind, up_to).await?;
        if member.state != MemberState::Active {
            return Ok(());
        }
        let Some(delivery) = &self.delivery else {
            return Ok(());
        };
        let mine = tables::users::settings(&self.store, me).await?;
        let mut targets = Vec::new();
        let mut memo = Memo::new();
        for (user, m) in self.members(id).await? {
            if user == me || m.state != MemberState::Active {
                continue;
            }
            if !self.sees(&mut memo, user, me).await? {
                continue;
            }
            if kind == Receipt::Read {
                let theirs = tables::users::settings(&self.store, user).await?;
                if !mine.show_read_receipts || !theirs.show_read_receipts {
                    continue;
                }
            }
            targets.push(user);
        }
        let frame = wire::receipt_frame(delivery, id, me, kind, up_to, self.now())?;
        self.push_to(delivery, &targets, frame).await;
        Ok(())
    }

    /// Messages of `id` before `before` (0: the newest), newest first, at most `limit`;
    /// when older entries remain, the `before` of the next page (which may lie below
    /// the last message: a page examines at most a bounded number of entries, so a run
    /// of reactions and edits ends a page early without stalling the next).
    pub async fn history(
        &self,
        me: u64,
        id: u64,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<Message>, Option<u64>)> {
        self.rates.check(me, Costly::History)?;
        let (_, member) = self.membership(id, me).await?;
        if member.state == MemberState::Declined {
            return Err(Error::NotFound("conversation"));
        }
        let head = self.head(id).await?;
        let mut below = if before == 0 {
            head.last_seq + 1
        } else {
            before.min(head.last_seq + 1)
        };
        let floor = member.joined_seq;
        let mut out = Vec::new();
        let mut memo = HashMap::new();
        let mut examined = 0;
        while out.len() < limit && below > floor + 1 && examined < HISTORY_SCAN {
            let batch = self
                .entries_backward(id, below, floor, selfie_storage::MAX_PAGE_ROWS)
                .await?;
            let Some(&(lowest, _)) = batch.last() else {
                below = floor + 1;
                break;
            };
            examined += batch.len();
            // Where the next page starts: below the last message taken when the page
            // fills, else below everything this batch covered.
            let mut next = lowest;
            for (seq, e) in batch {
                if let Entry::Message(mut m) = e
                    && m.addressed_to(me)
                    && (m.carries_group_state() || self.sees(&mut memo, me, m.sender_id).await?)
                {
                    m.seq = seq;
                    out.push(m);
                    if out.len() == limit {
                        next = seq;
                        break;
                    }
                }
            }
            below = next;
        }
        Ok((out, (below > floor + 1).then_some(below)))
    }

    /// What `me`'s device is missing since `cursor` (one conversation, or all).
    pub async fn sync(
        &self,
        me: u64,
        cursor: &SyncCursor,
        only: Option<u64>,
        limit: usize,
    ) -> Result<Synced> {
        self.rates.check(me, Costly::Sync)?;
        let limit = limit.clamp(1, self.limits.max_events);
        let mut out = Synced {
            cursor: cursor.clone(),
            ..Default::default()
        };
        let mut conversations: Vec<u64> = match only {
            Some(id) => vec![id],
            None => {
                let mut ids: Vec<u64> = self
                    .user_conversations(me)
                    .await?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                ids.extend(self.user_requests(me, SYNC_REQUESTS).await?);
                let mut seen = HashSet::with_capacity(ids.len());
                ids.retain(|id| seen.insert(*id));
                ids
            }
        };
        // Conversations the device knows beyond the newest considered above (an old
        // conversation, one made after a sync): synced still while `me` is an active
        // member, newest first, as many as keep the cursor within
        // MAX_CURSOR_CONVERSATIONS (the rest are left out of the answer's cursor, not
        // `limited`: the device keeps what it has of them). A request named only by the cursor leaves it (`limited`:
        // the requests folder still shows it), so a flood of requests cannot grow a
        // device's cursor; one `me` no longer belongs to is answered gone the same way.
        let listed = conversations.len();
        if only.is_none() {
            let current: HashSet<u64> = conversations.iter().copied().collect();
            let mut known: Vec<u64> = cursor
                .0
                .keys()
                .filter(|c| !current.contains(c))
                .copied()
                .collect();
            known.sort_unstable_by(|a, b| b.cmp(a));
            let room = MAX_CURSOR_CONVERSATIONS.saturating_sub(listed);
            for id in known.iter().skip(room) {
                out.cursor.0.remove(id);
            }
            known.truncate(room);
            // Each one costs reads of its own: a sync naming many is charged as that
            // many syncs' worth, one more for every CURSOR_CONVERSATIONS_PER_TOKEN.
            let extra = known.len() / CURSOR_CONVERSATIONS_PER_TOKEN;
            self.rates
                .check_n(me, Costly::Sync, u32::try_from(extra).unwrap_or(u32::MAX))?;
            conversations.extend(known);
        }
        let mut memo = HashMap::new();
        for (i, id) in conversations.into_iter().enumerate() {
            let cursor_only = i >= listed;
            let member = match self.member(id, me).await? {
                Some(m)
                    if m.state == MemberState::Active
                        || (m.state == MemberState::Request && !cursor_only) =>
                {
                    m
                }
                _ => {
                    if only.is_some() {
                        return Err(Error::NotFound("conversation"));
                    }
                    if out.cursor.0.remove(&id).is_some() {
                        out.limited.push(id);
                    }
                    continue;
                }
            };
            let head = self.head(id).await?;
            let from = cursor
                .0
                .get(&id)
                .copied()
                .unwrap_or(0)
                .max(member.joined_seq);
            if head.last_seq <= from {
                out.cursor.0.insert(id, from.max(head.last_seq));
                continue;
            }
            if head.last_seq - from > self.limits.window {
                out.cursor.0.insert(id, head.last_seq);
                out.limited.push(id);
                continue;
            }
            if out.items.len() >= limit {
                out.has_more = true;
                out.cursor.0.insert(id, from);
                continue;
            }
            let room = limit - out.items.len();
            let entries = self.entries_forward(id, from, head.last_seq, room).await?;
            let mut reached = from;
            for (seq, entry) in entries {
                reached = seq;
                if self.visible(&mut memo, me, &entry).await? {
                    let mut entry = entry;
                    if let Entry::Message(m) = &mut entry {
                        m.seq = seq;
                    }
                    out.items.push(LogItem {
                        conversation_id: id,
                        seq,
                        entry,
                    });
                }
            }
            if reached < head.last_seq {
                out.has_more = true;
            }
            out.cursor.0.insert(id, reached);
        }
        Ok(out)
    }
}

fn created_item(id: u64, creator: u64, now: u64) -> LogItem {
    LogItem {
        conversation_id: id,
        seq: 1,
        entry: Entry::Event(Event {
            kind: EventKind::Created,
            actor: creator,
            target_seq: 0,
            user: 0,
            emoji: String::new(),
            text: String::new(),
            at_ms: now,
        }),
    }
}

/// Whether `user` is in conversation `conversation` (any state).
pub(crate) async fn is_member<S: Store>(store: &S, conversation: u64, user: u64) -> Result<bool> {
    Ok(store
        .get(&MEMBERS, &k(conversation), &k(user))
        .await?
        .is_some())
}

/// Whether the attachment use of message `message_id`, number `seq`, of conversation
/// `conversation` is live (the message is stored and not deleted), and, for a
/// `viewer`, whether they may see it (a member who joined before it and did not
/// decline the conversation). For the media service, which does not import chat.
pub(crate) async fn attachment_visible<S: Store>(
    store: &S,
    conversation: u64,
    message_id: u64,
    seq: u64,
    viewer: Option<u64>,
) -> Result<bool> {
    let entry = store
        .get(&LOG, &log_partition(conversation, seq), &seq_key(seq))
        .await?;
    let message = match entry {
        Some(v) => match decode::<Entry>("chat log entry", &v)? {
            Entry::Message(m) if !m.deleted && m.message_id == message_id => m,
            _ => return Ok(false),
        },
        None => return Ok(false),
    };
    let Some(viewer) = viewer else {
        return Ok(true);
    };
    // As the log shows it: to members who joined before it and did not decline, who
    // are among its recipients and do not block its sender (nor are blocked).
    let member = match store.get(&MEMBERS, &k(conversation), &k(viewer)).await? {
        Some(v) => decode::<MemberRec>("chat member", &v)?,
        None => return Ok(false),
    };
    if member.state == MemberState::Declined || member.joined_seq >= seq {
        return Ok(false);
    }
    if !message.addressed_to(viewer) {
        return Ok(false);
    }
    Ok(viewer == message.sender_id
        || !tables::graph::blocked_either_way(store, viewer, message.sender_id).await?)
}

impl<S: Store + Clone + 'static> crate::workflows::Erase for Chat<S> {
    /// A deleted account's conversation list and waiting requests, its MLS key packages
    /// (nobody can add it to a group any more), its presence and its send transaction
    /// ids. Its messages stay in the conversations, under a deleted profile.
    fn erase_user(&self, user: u64) -> futures::future::LocalBoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let mut rows = 0;
            for table in [
                &KEY_PACKAGES,
                &USER_REQUESTS,
                &USER_CONVERSATIONS,
                &PRESENCE,
                &TXNS,
            ] {
                rows += tables::clear_partition(&self.store, table, &k(user)).await?;
            }
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_bytes_and_bad_bytes_are_refused() {
        let c = SyncCursor([(7u64, 42u64), (3, 1)].into_iter().collect());
        assert_eq!(SyncCursor::from_bytes(&c.to_bytes()).ok(), Some(c));
        assert_eq!(
            SyncCursor::from_bytes(&[]).ok(),
            Some(SyncCursor::default())
        );
        assert!(SyncCursor::from_bytes(&[1, 2, 3]).is_err());
        assert!(SyncCursor::from_bytes(&[9; 17]).is_err());
    }
}

#[cfg(test)]
mod head_tests {
    use super::Head;

    #[test]
    fn heads_stored_before_changes_were_timed_still_read() {
        let old: Head =
            serde_json::from_str(r#"{"last_seq":9,"changed":[[3,77]]}"#).expect("old head");
        assert_eq!(old.changed, vec![(3, 77, 0)]);
        let new: Head =
            serde_json::from_str(r#"{"last_seq":9,"changed":[[3,77,5]]}"#).expect("new head");
        assert_eq!(new.changed, vec![(3, 77, 5)]);
        let again: Head =
            serde_json::from_str(&serde_json::to_string(&new).expect("json")).expect("round");
        assert_eq!(again.changed, new.changed);
    }
}
