//! The floor every service stands on: table declarations, the records more than one
//! service reads, their loaders and key helpers. Nothing here imports a service, so the
//! services import each other's data through this module and never each other (posts
//! read profiles and blocks; users read post counts; the graph reads profiles).
//!
//! Table names, columns and docs are the CQL schema (`crate::schema`): changing one
//! here needs a migration.

use bytes::Bytes;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Store, Table, TableKind};

use crate::Error;

/// Declares `Rows` tables: `NAME, "table", [partition columns], [clustering columns],
/// "doc";` — `NAME (conditional), ...` for tables whose rows are claimed or swapped
/// conditionally (every write to them is then conditional on CQL; see
/// [`selfie_storage::Table::conditional`]).
macro_rules! rows {
    ($($name:ident $(($flag:ident))?, $table:literal, [$($p:literal),*], [$($c:literal),*],
        $doc:literal;)*) => {$(
        #[doc = $doc]
        pub static $name: selfie_storage::Table = selfie_storage::Table {
            name: $table,
            kind: selfie_storage::TableKind::Rows,
            partition: &[$($p),*],
            clustering: &[$($c),*],
            default_ttl: None,
            conditional: rows!(@conditional $($flag)?),
            doc: $doc,
        };
    )*};
    (@conditional conditional) => { true };
    (@conditional) => { false };
}

/// Declares a `Counters` table: `NAME, "table", "partition column", "doc"` (clustered by
/// the counter's name, `which`).
macro_rules! counters {
    ($name:ident, $table:literal, $p:literal, $doc:literal) => {
        #[doc = $doc]
        pub static $name: selfie_storage::Table = selfie_storage::Table {
            name: $table,
            kind: selfie_storage::TableKind::Counters,
            partition: &[$p],
            clustering: &["which"],
            default_ttl: None,
            conditional: false,
            doc: $doc,
        };
    };
}

/// Deletes every row of one partition of `table`, page by page (a conditional table's
/// rows one by one, as its writes must be), and returns how many went: how a service
/// erases what it keeps for a deleted account. Idempotent.
pub async fn clear_partition<S: Store>(
    store: &S,
    table: &'static Table,
    partition: &[u8],
) -> Result<usize, Error> {
    let mut removed = 0;
    let mut cursor = None;
    loop {
        let page = store
            .scan(
                table,
                partition,
                &selfie_storage::Scan::all(500).after(cursor),
            )
            .await?;
        if table.conditional {
            for r in &page.rows {
                store
                    .delete_if_present(table, partition, &r.clustering)
                    .await?;
            }
        } else if !page.rows.is_empty() {
            let deletes: Vec<selfie_storage::Mutation> = page
                .rows
                .iter()
                .map(|r| selfie_storage::Mutation::Delete {
                    clustering: r.clustering.clone(),
                })
                .collect();
            store.batch(table, partition, &deletes).await?;
        }
        removed += page.rows.len();
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(removed),
        }
    }
}

/// The key of an id (user, post, list, session...).
pub fn key(id: u64) -> Bytes {
    KeyBuilder::new().u64(id).build()
}

/// The key of a name (a counter's `which`, a lower-case username or address).
pub fn name_key(name: &str) -> Bytes {
    KeyBuilder::new().str(name).build()
}

/// An id stored as 8 big-endian bytes.
pub fn id_value(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// Decodes a stored JSON record of `what`.
pub fn decode<T: serde::de::DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(b).map_err(|_| Error::Corrupt(what))
}

/// Encodes a record for storage.
pub fn encode<T: serde::Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|_| Error::Corrupt(what))
}

/// Who may see a post or a story (the posts service owns the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Audience {
    /// Anyone not blocked (for a public author).
    Public,
    /// The author's followers.
    Followers,
    /// Only the users mentioned in it.
    MentionedOnly,
    /// The author's close friends.
    CloseFriends,
}

/// Accounts: credentials, sessions, refresh tokens, password resets.
pub mod auth {
    use std::time::Duration;

    use super::*;

    /// Lifetime of a refresh token.
    pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
    /// How long a password-reset code works.
    pub const RESET_TTL: Duration = Duration::from_secs(30 * 60);

    rows! {
        USERNAMES (conditional), "auth_usernames", ["username_lower"], [], "username claims";
        EMAILS (conditional), "auth_emails", ["email_lower"], [], "e-mail claims";
        ACCOUNTS (conditional), "auth_accounts", ["user_id"], [], "accounts (credentials)";
        SESSIONS, "auth_sessions", ["user_id"], ["session_id"], "login sessions (devices)";
    }

    /// SHA-256 of a refresh token → its session; expires with the token.
    pub static REFRESH_TOKENS: Table = Table {
        name: "auth_refresh_tokens",
        kind: TableKind::Rows,
        partition: &["token_sha256"],
        clustering: &[],
        default_ttl: Some(REFRESH_TTL),
        conditional: false,
        doc: "refresh tokens",
    };

    /// Spent refresh tokens (claimed once on use).
    pub static REFRESH_SPENT: Table = Table {
        name: "auth_refresh_spent",
        kind: TableKind::Rows,
        partition: &["token_sha256"],
        clustering: &[],
        default_ttl: Some(REFRESH_TTL),
        conditional: true,
        doc: "spent refresh tokens (reuse detection)",
    };

    /// user id → the pending password-reset codes' hashes (expire on their own).
    pub static RESETS: Table = Table {
        name: "auth_password_resets",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &[],
        default_ttl: Some(RESET_TTL),
        conditional: true,
        doc: "pending password-reset codes (keyed hashes of the two most recent), 30 minutes",
    };

    /// How long a revoked session's marker is kept: past the life of every refresh token
    /// issued before the revocation.
    pub const REVOKED_TTL: Duration = Duration::from_secs(31 * 24 * 3600);

    /// Revoked sessions: insert-only markers (a refresh checks them after claiming its
    /// token, so no refresh can undo a revocation).
    pub static REVOKED: Table = Table {
        name: "auth_revoked_sessions",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["session_id"],
        default_ttl: Some(REVOKED_TTL),
        conditional: false,
        doc: "revoked sessions (markers)",
    };

    /// Revocations by hour, so that a node starting up refuses the access tokens of
    /// sessions revoked while it was down (kept a day: access tokens live minutes).
    pub static REVOCATIONS: Table = Table {
        name: "auth_revocations_by_time",
        kind: TableKind::Rows,
        partition: &["hour"],
        clustering: &["revoked_at_ms", "session_id"],
        default_ttl: Some(Duration::from_secs(24 * 3600)),
        conditional: false,
        doc: "recent revocations, by hour",
    };

    /// How long an e-mail verification code works.
    pub const EMAIL_CODE_TTL: Duration = Duration::from_secs(24 * 3600);

    /// user id → the keyed hash of the pending e-mail verification code, and the address
    /// it verifies.
    pub static EMAIL_CODES: Table = Table {
        name: "auth_email_codes",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &[],
        default_ttl: Some(EMAIL_CODE_TTL),
        conditional: true,
        doc: "pending e-mail verification codes (keyed hash and address), 24 hours",
    };

    /// The durable-revocation and e-mail verification tables (a later migration).
    pub static VERIFICATION_TABLES: &[&Table] = &[&REVOKED, &REVOCATIONS, &EMAIL_CODES];

    /// The tables of the first migration.
    pub static TABLES: &[&Table] = &[
        &USERNAMES,
        &EMAILS,
        &ACCOUNTS,
        &SESSIONS,
        &REFRESH_TOKENS,
        &REFRESH_SPENT,
    ];

    /// The password-reset table (a later migration).
    pub static RESET_TABLES: &[&Table] = &[&RESETS];

    /// The id owning `username` (any case), if claimed.
    pub async fn user_by_username<S: Store>(
        store: &S,
        username: &str,
    ) -> Result<Option<u64>, Error> {
        if username.is_empty() || username.len() > 64 {
            return Ok(None);
        }
        let k = name_key(&username.to_ascii_lowercase());
        Ok(store
            .get(&USERNAMES, &k, &[])
            .await?
            .and_then(|v| id_value(&v)))
    }
}

/// Profiles and settings.
pub mod users {
    use serde::{Deserialize, Serialize};

    use super::*;

    rows! {
        PROFILES (conditional), "users_profiles", ["user_id"], [], "profiles";
        SETTINGS, "users_settings", ["user_id"], [], "per-user settings";
    }

    /// The tables of the first migration.
    pub static TABLES: &[&Table] = &[&PROFILES];

    /// A link shown on a profile.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Link {
        /// Label.
        pub title: String,
        /// An absolute `http`/`https` URL.
        pub url: String,
    }

    /// A profile.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Profile {
        /// The user.
        pub user_id: u64,
        /// Unique handle.
        pub username: String,
        /// Display name.
        pub display_name: String,
        /// Bio.
        pub bio: String,
        /// Private account: follows need approval; content and lists for followers only.
        pub private: bool,
        /// The account was deleted: the profile is anonymised and hidden, its content too.
        #[serde(default)]
        pub deleted: bool,
        /// Avatar media id, 0 for none.
        #[serde(default)]
        pub avatar_media_id: u64,
        /// Banner media id, 0 for none.
        #[serde(default)]
        pub banner_media_id: u64,
        /// Links, in the owner's order.
        #[serde(default)]
        pub links: Vec<Link>,
        /// Pronouns.
        #[serde(default)]
        pub pronouns: String,
        /// Location.
        #[serde(default)]
        pub location: String,
        /// When the profile was created (0 for profiles older than the field).
        #[serde(default)]
        pub created_at_ms: u64,
    }

    /// Who may do something to a user (message, mention, comment).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
    pub enum Permission {
        /// Anyone not blocked.
        #[default]
        Everyone,
        /// Users who follow the owner.
        Followers,
        /// Users the owner follows.
        Following,
        /// Nobody but the owner.
        Nobody,
    }

    fn yes() -> bool {
        true
    }

    /// A user's settings.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Settings {
        /// Who may start a conversation.
        #[serde(default)]
        pub who_can_message: Permission,
        /// Whose mentions reach the user (others are not linked or notified).
        #[serde(default)]
        pub who_can_mention: Permission,
        /// Who may comment on the user's posts.
        #[serde(default)]
        pub who_can_comment: Permission,
        /// Send read receipts.
        #[serde(default = "yes")]
        pub show_read_receipts: bool,
        /// Show online/last-seen status.
        #[serde(default = "yes")]
        pub show_activity_status: bool,
        /// Show media marked sensitive without a warning.
        #[serde(default)]
        pub show_sensitive_media: bool,
        /// BCP 47 language tag, empty for the client's default.
        #[serde(default)]
        pub language: String,
        /// IANA time zone name, empty for the client's default.
        #[serde(default)]
        pub timezone: String,
        /// Send e-mail notifications.
        #[serde(default = "yes")]
        pub email_notifications: bool,
    }

    impl Default for Settings {
        fn default() -> Self {
            Self {
                who_can_message: Permission::Everyone,
                who_can_mention: Permission::Everyone,
                who_can_comment: Permission::Everyone,
                show_read_receipts: true,
                show_activity_status: true,
                show_sensitive_media: false,
                language: String::new(),
                timezone: String::new(),
                email_notifications: true,
            }
        }
    }

    /// Refuses a write by an account being deleted (its profile is marked first), so that
    /// nothing it writes during the deletion outlives the erasers.
    pub async fn refuse_deleted<S: Store>(store: &S, user_id: u64) -> Result<(), Error> {
        match profile(store, user_id).await? {
            Some(p) if p.deleted => Err(Error::Forbidden("this account is deleted")),
            _ => Ok(()),
        }
    }

    /// Reads a profile without any visibility check (for services that check themselves).
    pub async fn profile<S: Store>(store: &S, user_id: u64) -> Result<Option<Profile>, Error> {
        store
            .get(&PROFILES, &key(user_id), &[])
            .await?
            .map(|b| decode("profile", &b))
            .transpose()
    }

    /// A live (not deleted) profile, if any.
    pub async fn live_profile<S: Store>(store: &S, user_id: u64) -> Result<Option<Profile>, Error> {
        Ok(profile(store, user_id).await?.filter(|p| !p.deleted))
    }

    /// A user's settings (the defaults until they change any).
    pub async fn settings<S: Store>(store: &S, user_id: u64) -> Result<Settings, Error> {
        match store.get(&SETTINGS, &key(user_id), &[]).await? {
            Some(b) => decode("settings", &b),
            None => Ok(Settings::default()),
        }
    }

    /// Whether `actor` passes `owner`'s `permission` (the owner always does). Blocks are
    /// checked by the caller.
    pub async fn permits<S: Store>(
        store: &S,
        owner: u64,
        actor: u64,
        permission: Permission,
    ) -> Result<bool, Error> {
        Ok(owner == actor
            || match permission {
                Permission::Everyone => true,
                Permission::Followers => graph::follows(store, actor, owner).await?,
                Permission::Following => graph::follows(store, owner, actor).await?,
                Permission::Nobody => false,
            })
    }
}

/// The follow graph.
pub mod graph {
    use super::*;

    rows! {
        FOLLOWING (conditional), "graph_following", ["user_id"], ["followed_id"], "who a user follows";
        FOLLOWERS, "graph_followers", ["user_id"], ["follower_id"], "who follows a user";
        REQUESTS_IN (conditional), "graph_requests_in", ["user_id"], ["requester_id"], "follow requests received";
        REQUESTS_OUT (conditional), "graph_requests_out", ["user_id"], ["target_id"], "follow requests sent";
        BLOCKS, "graph_blocks", ["user_id"], ["blocked_id"], "who a user blocks";
        BLOCKED_BY, "graph_blocked_by", ["user_id"], ["blocker_id"], "who blocks a user";
        MUTES, "graph_mutes", ["user_id"], ["muted_id"], "who a user mutes";
        CLOSE_FRIENDS (conditional), "graph_close_friends", ["user_id"], ["friend_id"], "a user's close friends";
        CLOSE_FRIEND_OF, "graph_close_friend_of", ["user_id"], ["owner_id"], "whose close friend a user is";
    }
    counters!(
        COUNTS,
        "graph_counts",
        "user_id",
        "follower and following counts"
    );

    /// The tables of the first migration.
    pub static TABLES: &[&Table] = &[
        &FOLLOWING,
        &FOLLOWERS,
        &REQUESTS_IN,
        &REQUESTS_OUT,
        &BLOCKS,
        &BLOCKED_BY,
        &MUTES,
        &COUNTS,
    ];

    /// The close-friends tables (a later migration).
    pub static CLOSE_FRIENDS_TABLES: &[&Table] = &[&CLOSE_FRIENDS, &CLOSE_FRIEND_OF];

    rows! {
        LISTS, "graph_lists", ["list_id"], [], "user lists";
        OWNER_LISTS (conditional), "graph_lists_by_owner", ["owner_id"], ["list_id"], "a user's lists";
        MEMBERS (conditional), "graph_list_members", ["list_id"], ["member_id"], "members of a list";
        MEMBER_OF, "graph_list_member_of", ["member_id"], ["list_id"], "the lists a user is on";
    }
    counters!(
        LIST_COUNTS,
        "graph_list_counts",
        "id",
        "list member counts and per-owner list counts"
    );

    /// The user-list tables (a later migration).
    pub static LIST_TABLES: &[&Table] = &[&LISTS, &OWNER_LISTS, &MEMBERS, &MEMBER_OF, &LIST_COUNTS];

    /// Whether `a` follows `b`.
    pub async fn follows<S: Store>(store: &S, a: u64, b: u64) -> Result<bool, Error> {
        Ok(store.get(&FOLLOWING, &key(a), &key(b)).await?.is_some())
    }

    /// Whether `owner` counts `viewer` among their close friends.
    pub async fn is_close_friend<S: Store>(
        store: &S,
        owner: u64,
        viewer: u64,
    ) -> Result<bool, Error> {
        Ok(store
            .get(&CLOSE_FRIENDS, &key(owner), &key(viewer))
            .await?
            .is_some())
    }

    /// Whether `a` blocks `b` or `b` blocks `a`.
    pub async fn blocked_either_way<S: Store>(store: &S, a: u64, b: u64) -> Result<bool, Error> {
        Ok(a != b
            && (store.get(&BLOCKS, &key(a), &key(b)).await?.is_some()
                || store.get(&BLOCKS, &key(b), &key(a)).await?.is_some()))
    }
}

/// Posts and their interactions.
pub mod posts {
    use super::*;

    rows! {
        POSTS, "posts", ["post_id"], [], "posts";
        HISTORY, "posts_history", ["post_id"], ["edited_at_ms"], "earlier versions of edited posts";
        USER_POSTS (conditional), "posts_by_user", ["author_id"], ["post_id"], "a user's posts, newest last";
        COMMENTS, "posts_comments", ["post_id"], ["comment_id"], "comments and replies";
        REACTIONS (conditional), "posts_reactions", ["post_id"], ["user_id"], "one reaction per user per post";
        REPOSTS (conditional), "posts_reposts", ["post_id"], ["user_id"], "who reposted a post, and the repost's id";
        COMMENT_POSTS (conditional), "posts_comment_posts", ["comment_id"], [], "the post of each live comment";
        REACTION_KINDS, "posts_reaction_kinds", ["post_id"], ["emoji"], "the emoji used on a post";
    }
    counters!(COUNTS, "posts_counts", "post_id", "post counters");
    counters!(
        AFFINITY,
        "posts_affinity",
        "user_id",
        "how often a user reacted to, commented on, replied to, reposted or quoted each author"
    );
    counters!(
        AUTHOR_COUNTS,
        "posts_author_counts",
        "author_id",
        "per-author post counts"
    );

    /// The tables of the first migration.
    pub static TABLES: &[&Table] = &[
        &POSTS,
        &HISTORY,
        &USER_POSTS,
        &COMMENTS,
        &REACTIONS,
        &COUNTS,
    ];

    /// How long a post stays in its hashtags' feeds.
    pub const HASHTAG_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

    /// (hashtag; post id) → the author: the posts of each hashtag, newest last, 30 days.
    pub static BY_HASHTAG: Table = Table {
        name: "posts_by_hashtag",
        kind: TableKind::Rows,
        partition: &["hashtag"],
        clustering: &["post_id"],
        default_ttl: Some(HASHTAG_TTL),
        conditional: false,
        doc: "posts by hashtag (lower case), newest last, 30 days",
    };

    /// The hashtag index (a later migration).
    pub static HASHTAG_TABLES: &[&Table] = &[&BY_HASHTAG];

    /// The tables of reposts, comment lookups and per-emoji reaction kinds (migration 8).
    pub static INTERACTION_TABLES: &[&Table] = &[&REPOSTS, &COMMENT_POSTS, &REACTION_KINDS];

    /// How long a create's idempotency key is remembered.
    pub const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    /// (user, kind of object, client key) → the id the first create with that key made.
    pub static IDEMPOTENCY: Table = Table {
        name: "posts_idempotency",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["kind", "key"],
        default_ttl: Some(IDEMPOTENCY_TTL),
        conditional: true,
        doc: "idempotency keys of creates: the id the first one made, 24 hours",
    };

    /// The idempotency table (a later migration).
    pub static IDEMPOTENCY_TABLES: &[&Table] = &[&IDEMPOTENCY];

    /// How many posts (and reposts) `author` has.
    pub async fn author_count<S: Store>(store: &S, author: u64) -> Result<i64, Error> {
        Ok(store
            .counter_get(&AUTHOR_COUNTS, &key(author), &name_key("posts"))
            .await?)
    }
}

/// Chat: conversations, their logs, members and per-user state (see `crate::chat`).
pub mod chat {
    use super::*;

    /// Log entries per partition of [`LOG`] (a conversation's partitions stay bounded).
    pub const LOG_BUCKET: u64 = 1024;

    rows! {
        CONVERSATIONS (conditional), "chat_conversations", ["conversation_id"], [], "conversations: kind, title, avatar, encryption";
        HEADS (conditional), "chat_heads", ["conversation_id"], [], "each conversation's newest sequence number, last activity and recent sends (versioned)";
        LOG, "chat_log", ["conversation_id", "bucket"], ["seq"], "each conversation's log: messages (in their current state) and events, 1,024 sequence numbers per partition";
        MEMBERS (conditional), "chat_members", ["conversation_id"], ["user_id"], "members: role, state, joined, read and delivered positions";
        USER_CONVERSATIONS (conditional), "chat_user_conversations", ["user_id"], ["conversation_id"], "a user's conversations (not waiting requests: chat_user_requests) and per-user state (mute, archive, pin)";
        DIRECT (conditional), "chat_direct", ["pair"], [], "the one direct conversation of each pair of users";
        TXNS, "chat_txns", ["sender_id"], ["conversation_id", "client_msg_id"], "client transaction ids of sends: the message each made";
        EDITS, "chat_edits", ["conversation_id"], ["seq", "replaced_at_ms"], "earlier versions of edited messages";
    }

    /// user id → the user's last presence (status, last activity); written at most
    /// every [`crate::chat::PRESENCE_WRITE_EVERY`] per user unless the status changes.
    pub static PRESENCE: Table = Table {
        name: "chat_presence",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &[],
        default_ttl: None,
        conditional: false,
        doc: "users' last presence: status and last activity",
    };

    /// (user; device, last resort?, package hash) → an MLS key package, consumed when
    /// claimed, except a device's last-resort package (marked, or else its last), which
    /// stays (RFC 9420, 16.8).
    pub static KEY_PACKAGES: Table = Table {
        name: "chat_mls_key_packages",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["device_id", "package_sha256"],
        default_ttl: None,
        conditional: true,
        doc: "MLS key packages waiting to be claimed",
    };

    /// (conversation, member) → the member's read and delivered positions: apart from
    /// the membership rows, which change rarely and are scanned on every push.
    pub static RECEIPTS: Table = Table {
        name: "chat_receipts",
        kind: TableKind::Rows,
        partition: &["conversation_id"],
        clustering: &["user_id"],
        default_ttl: None,
        conditional: true,
        doc: "members' read and delivered positions",
    };

    /// (user, conversation) → a message request waiting for `user`'s answer: apart from
    /// [`USER_CONVERSATIONS`], so that a flood of requests never pushes a user's own
    /// conversations out of the lists and syncs that consider the newest of them.
    pub static USER_REQUESTS: Table = Table {
        name: "chat_user_requests",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["conversation_id"],
        default_ttl: None,
        conditional: true,
        doc: "message requests waiting for each user's answer",
    };

    /// The requests table (a later migration).
    pub static REQUEST_TABLES: &[&Table] = &[&USER_REQUESTS];

    /// The receipts table (a later migration).
    pub static RECEIPT_TABLES: &[&Table] = &[&RECEIPTS];

    /// The MLS table (a later migration).
    pub static MLS_TABLES: &[&Table] = &[&KEY_PACKAGES];

    /// How long a claimer, having taken one of a device's key packages, gets only that
    /// device's last resort (see [`KEY_PACKAGE_CLAIMS`]).
    pub const CLAIM_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

    /// (user; claimer, device) → a mark that the claimer took one of the device's
    /// ordinary packages within [`CLAIM_WINDOW`]: until it expires the claimer gets the
    /// last resort, so no one drains a user's packages, whichever node it claims on.
    pub static KEY_PACKAGE_CLAIMS: Table = Table {
        name: "chat_mls_key_package_claims",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["claimer_id", "device_id"],
        default_ttl: Some(CLAIM_WINDOW),
        conditional: true,
        doc: "recent claims of each device's key packages, by claimer",
    };

    /// The key package claims table (a later migration).
    pub static CLAIM_TABLES: &[&Table] = &[&KEY_PACKAGE_CLAIMS];

    /// The presence table (a later migration).
    pub static PRESENCE_TABLES: &[&Table] = &[&PRESENCE];

    /// The chat tables (a later migration).
    pub static TABLES: &[&Table] = &[
        &CONVERSATIONS,
        &HEADS,
        &LOG,
        &MEMBERS,
        &USER_CONVERSATIONS,
        &DIRECT,
        &TXNS,
        &EDITS,
    ];

    /// The partition of `conversation`'s log holding `seq`.
    pub fn log_partition(conversation: u64, seq: u64) -> Bytes {
        KeyBuilder::new()
            .u64(conversation)
            .u64(seq / LOG_BUCKET)
            .build()
    }
}

/// Feeds: home timelines, the authors merged at read time, pending fan-outs and what
/// readers hid (see `crate::feed`).
pub mod feed {
    use std::time::Duration;

    use super::*;

    /// How long a home timeline entry lives (the timeline is also trimmed by length).
    pub const HOME_TTL: Duration = Duration::from_secs(60 * 24 * 3600);
    /// How long an author stays on the large-authors list after their last post without
    /// fan-out: long enough that every such post is merged while it can still be read.
    pub const LARGE_TTL: Duration = HOME_TTL;
    /// How long a "not interested" lasts.
    pub const HIDDEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

    /// (reader; entry post id) → the entry's author (for a repost, the reposter).
    pub static HOME: Table = Table {
        name: "feed_home",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["post_id"],
        default_ttl: Some(HOME_TTL),
        conditional: false,
        doc: "home timelines: the posts fanned out to each reader, newest last, bounded",
    };

    /// (all; author) → the time of the author's last post that was not fanned out.
    pub static LARGE_AUTHORS: Table = Table {
        name: "feed_large_authors",
        kind: TableKind::Rows,
        partition: &["bucket"],
        clustering: &["author_id"],
        default_ttl: Some(LARGE_TTL),
        conditional: false,
        doc: "authors whose posts are merged into timelines at read time instead of fanned out",
    };

    /// (worker: node and shard; post id) → the post's author: fan-outs not finished yet,
    /// written with the post and resumed by the worker after a restart.
    pub static FANOUT_JOBS: Table = Table {
        name: "feed_fanout_jobs",
        kind: TableKind::Rows,
        partition: &["worker"],
        clustering: &["post_id"],
        default_ttl: None,
        conditional: false,
        doc: "pending fan-outs of new posts, per node and shard",
    };

    /// (reader; kind, id) → nothing: posts and authors the reader is not interested in.
    pub static HIDDEN: Table = Table {
        name: "feed_not_interested",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["kind", "id"],
        default_ttl: Some(HIDDEN_TTL),
        conditional: false,
        doc: "posts and authors a reader marked not interested, 90 days",
    };

    /// The feed tables (a later migration).
    pub static TABLES: &[&Table] = &[&HOME, &LARGE_AUTHORS, &FANOUT_JOBS, &HIDDEN];

    /// (reader; snapshot) → a ranked "For you" list, served page by page for an hour.
    pub static FOR_YOU: Table = Table {
        name: "feed_for_you",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["snapshot_id"],
        default_ttl: Some(Duration::from_secs(3600)),
        conditional: false,
        doc: "ranked For you snapshots, one hour",
    };

    /// (reader; post) → nothing: posts served on a "For you" page, kept out of refreshes.
    pub static SEEN: Table = Table {
        name: "feed_seen",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["post_id"],
        default_ttl: Some(Duration::from_secs(3 * 24 * 3600)),
        conditional: false,
        doc: "posts served to each reader's For you feed, three days",
    };

    /// The ranking tables (a later migration).
    pub static RANK_TABLES: &[&Table] = &[&FOR_YOU, &SEEN, &crate::tables::posts::AFFINITY];

    /// The partition of a fan-out worker (one per node number and shard).
    pub fn worker(node: u16, shard: u16) -> Bytes {
        KeyBuilder::new()
            .u64(u64::from(node))
            .u64(u64::from(shard))
            .build()
    }

    /// What a fan-out job delivers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum JobKind {
        /// A post or repost, to home timelines.
        Post,
        /// A story, to story trays.
        Story,
    }

    /// A pending fan-out: a post or story and its author.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Job {
        /// The post or story.
        pub id: u64,
        /// Its author.
        pub author: u64,
        /// Which.
        pub kind: JobKind,
    }

    impl Job {
        /// The job's row for `worker`: value = author, then a kind byte for stories.
        pub fn row(&self, worker: &Bytes) -> (selfie_storage::Cell, Bytes) {
            let mut v = self.author.to_be_bytes().to_vec();
            if self.kind == JobKind::Story {
                v.push(1);
            }
            (
                selfie_storage::Cell::new(&FANOUT_JOBS, worker.clone(), key(self.id)),
                Bytes::from(v),
            )
        }

        /// A job read back from its row.
        pub fn parse(clustering: &[u8], value: &[u8]) -> Option<Self> {
            let id = selfie_storage::key::KeyReader::new(clustering).u64()?;
            let author = id_value(value.get(..8)?)?;
            let kind = match value.get(8) {
                None => JobKind::Post,
                Some(1) => JobKind::Story,
                Some(_) => return None,
            };
            Some(Self { id, author, kind })
        }
    }
}

/// Stories: 24-hour posts, their viewers, trays and highlights (see `crate::stories`).
pub mod stories {
    use serde::{Deserialize, Serialize};

    use super::*;

    /// The default (and longest) life of a story.
    pub const STORY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    rows! {
        STORIES, "stories", ["story_id"], [], "stories, each with a TTL of its life";
        BY_AUTHOR, "stories_by_author", ["author_id"], ["story_id"], "each author's live stories, with their TTL";
        SEEN, "stories_seen", ["story_id"], ["viewer_id"], "who saw each story, when, and their reaction; expires with the story";
        TRAY, "stories_tray", ["user_id"], ["author_id"], "each reader's tray: followed authors with live stories, fanned out, expiring with the newest";
        HIGHLIGHTS, "stories_highlights", ["author_id"], ["story_id"], "stories authors keep past their expiry";
    }
    counters!(
        AFFINITY,
        "stories_affinity",
        "user_id",
        "how often a reader viewed, reacted and replied to each author's stories"
    );

    /// The stories tables (a later migration).
    pub static TABLES: &[&Table] = &[&STORIES, &BY_AUTHOR, &SEEN, &TRAY, &HIGHLIGHTS, &AFFINITY];

    /// A story.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Story {
        /// Id (time-ordered).
        pub story_id: u64,
        /// Author.
        pub author_id: u64,
        /// The photo or video.
        pub media_id: u64,
        /// Caption.
        pub caption: String,
        /// A link (https), or empty.
        pub link_url: String,
        /// Who may see it: public, followers or close friends.
        pub audience: Audience,
        /// Mentioned users.
        pub mentions: Vec<u64>,
        /// Creation time.
        pub created_at_ms: u64,
        /// When it vanishes (unless highlighted).
        pub expires_at_ms: u64,
    }

    /// A stored story (live or not: the caller checks its expiry).
    pub async fn load<S: Store>(store: &S, story_id: u64) -> Result<Option<Story>, Error> {
        store
            .get(&STORIES, &key(story_id), &[])
            .await?
            .map(|b| decode("story", &b))
            .transpose()
    }

    /// `author`'s highlight `story_id` (kept past its expiry), if kept.
    pub async fn highlight<S: Store>(
        store: &S,
        author: u64,
        story_id: u64,
    ) -> Result<Option<Story>, Error> {
        store
            .get(&HIGHLIGHTS, &key(author), &key(story_id))
            .await?
            .map(|b| decode("story", &b))
            .transpose()
    }

    /// A tray row's value: the newest story and when it expires.
    pub fn tray_value(story_id: u64, expires_at_ms: u64) -> Bytes {
        let mut v = story_id.to_be_bytes().to_vec();
        v.extend_from_slice(&expires_at_ms.to_be_bytes());
        Bytes::from(v)
    }
}

/// In-app notifications: inboxes, aggregation groups, read positions, preferences,
/// push tokens (see `crate::notifications`), and the [`Notifier`] other services raise
/// notifications through.
pub mod notifications {
    use std::rc::Rc;

    use serde::{Deserialize, Serialize};

    use super::*;

    /// How long a notification is kept.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

    /// (user; notification id) → a notification (one row per group, moved to the top
    /// with a new id when the group grows).
    pub static INBOX: Table = Table {
        name: "notifications_inbox",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["notification_id"],
        default_ttl: Some(TTL),
        conditional: false,
        doc: "each user's notifications, newest last, 90 days",
    };

    /// (user; group key) → the group's current notification (versioned).
    pub static GROUPS: Table = Table {
        name: "notifications_groups",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["group_key"],
        default_ttl: Some(TTL),
        conditional: true,
        doc: "aggregation groups: the current notification of each (kind, target)",
    };

    /// (user; group key, actor) → nothing: who is already counted in a group.
    pub static GROUP_ACTORS: Table = Table {
        name: "notifications_group_actors",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["group_key", "actor_id"],
        default_ttl: Some(TTL),
        conditional: true,
        doc: "the actors counted in each aggregation group",
    };

    rows! {
        STATE (conditional), "notifications_state", ["user_id"], [], "each user's read position and preferences (versioned)";
        PUSH_TOKENS, "notifications_push_tokens", ["user_id"], ["platform", "token"], "device push tokens (APNs, FCM, Web Push) for the device-push seam";
    }

    /// The notifications tables (a later migration).
    pub static TABLES: &[&Table] = &[&INBOX, &GROUPS, &GROUP_ACTORS, &STATE, &PUSH_TOKENS];

    /// (user; notification id) → nothing: notifications marked read one by one (apart
    /// from the inbox rows, which a growing group deletes and rewrites).
    pub static READ: Table = Table {
        name: "notifications_read",
        kind: TableKind::Rows,
        partition: &["user_id"],
        clustering: &["notification_id"],
        default_ttl: Some(TTL),
        conditional: false,
        doc: "notifications marked read by id, 90 days",
    };

    /// The read-flags table (a later migration).
    pub static READ_TABLES: &[&Table] = &[&READ];

    /// What happened.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Kind {
        /// Someone followed the recipient.
        Follow,
        /// Someone asked to follow the (private) recipient.
        FollowRequest,
        /// The recipient's follow request was approved.
        FollowAccepted,
        /// A reaction to the recipient's post.
        Reaction,
        /// A comment on the recipient's post.
        Comment,
        /// A reply to the recipient's comment.
        Reply,
        /// The recipient was mentioned in a post.
        Mention,
        /// The recipient's post was reposted.
        Repost,
        /// The recipient's post was quoted.
        Quote,
        /// A reaction to the recipient's story.
        StoryReaction,
        /// The recipient was mentioned in a story.
        StoryMention,
    }

    impl Kind {
        /// Every kind, in the wire enum's order.
        pub const ALL: [Kind; 11] = [
            Kind::Follow,
            Kind::FollowRequest,
            Kind::FollowAccepted,
            Kind::Reaction,
            Kind::Comment,
            Kind::Reply,
            Kind::Mention,
            Kind::Repost,
            Kind::Quote,
            Kind::StoryReaction,
            Kind::StoryMention,
        ];
    }

    /// What a notification is about.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Target {
        /// The recipient themselves (follows).
        Account,
        /// A post.
        Post(u64),
        /// A comment.
        Comment(u64),
        /// A story.
        Story(u64),
    }

    /// One thing to tell a user.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Note {
        /// Who is told.
        pub recipient: u64,
        /// Who did it.
        pub actor: u64,
        /// What.
        pub kind: Kind,
        /// About what.
        pub target: Target,
    }

    /// How services raise notifications without knowing the notifications service: a
    /// handle the registry wires (none in tests that do not need one). Raising is
    /// fire-and-forget: it never fails the action that caused it.
    #[derive(Clone, Default)]
    pub struct Notifier(Option<Rc<dyn Fn(Note)>>);

    impl Notifier {
        /// A notifier that hands notes to `f`.
        pub fn new(f: impl Fn(Note) + 'static) -> Self {
            Self(Some(Rc::new(f)))
        }

        /// Raises `note` (nothing when the actor is the recipient).
        pub fn send(&self, note: Note) {
            if let Some(f) = &self.0
                && note.actor != note.recipient
            {
                f(note);
            }
        }
    }
}

/// Fleet membership (see `crate::lease`).
pub mod fleet {
    use selfie_storage::{Table, TableKind};

    /// node number → the node holding it (node id and process instance), with a TTL
    /// that the holder keeps renewing.
    pub static NODE_NUMBERS: Table = Table {
        name: "fleet_node_numbers",
        kind: TableKind::Rows,
        partition: &["node_number"],
        clustering: &[],
        default_ttl: None,
        conditional: true,
        doc: "node number leases: the live node holding each number",
    };

    /// The fleet tables (a later migration).
    pub static TABLES: &[&Table] = &[&NODE_NUMBERS];
}

/// Media: objects, uploads in progress, what references each object, the processing
/// queue, content-addressed blob references and per-user usage (see `crate::media`).
/// Other services check and attach media through [`media::attach`] and release it with
/// [`media::detach`].
pub mod media {
    use selfie_storage::Cell;
    use serde::{Deserialize, Serialize};

    use super::*;

    /// How long an unfinished upload (and its staged bytes) is kept.
    pub const UPLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    rows! {
        MEDIA(conditional), "media", ["media_id"], [], "media objects: owner, type, size, digest, state, renditions (versioned writes order removals across nodes)";
        UPLOADS, "media_uploads", ["upload_id"], [], "uploads in progress, expiring with the upload";
        CHUNKS, "media_upload_chunks", ["upload_id"], ["chunk"], "the durably received chunks of each upload and their SHA-256";
        OPEN, "media_uploads_open", ["owner_id"], ["upload_id"], "each user's unfinished uploads and their declared sizes (quota)";
        REFS, "media_refs", ["media_id"], ["ref_kind", "ref_id"], "what uses each media object (posts, stories, profiles)";
        JOBS, "media_jobs", ["node"], ["media_id"], "media waiting to be processed on each node";
        BLOBS, "media_blobs", ["sha256"], ["media_id"], "the media objects whose original is each content-addressed blob";
        REMOVALS, "media_removals", ["node"], ["media_id"], "media being removed on each node (finished at its start when cut short)";
        UNUSED, "media_unused", ["node"], ["media_id"], "media completed on each node, looked at a day later: removed if nothing uses it";
        BLOB_CLAIMS(conditional), "media_blob_claims", ["sha256"], [], "a removal deleting the original of a digest (short-lived): uploads of the same bytes wait";
        OWNED, "media_owned", ["owner_id"], ["media_id"], "each user's media objects (erased with the account)";
    }
    counters!(
        USAGE,
        "media_usage",
        "owner_id",
        "bytes of media each user holds"
    );

    /// The media tables (a later migration).
    pub static TABLES: &[&Table] = &[
        &MEDIA, &UPLOADS, &CHUNKS, &OPEN, &REFS, &JOBS, &BLOBS, &USAGE,
    ];

    /// Media removals in progress (a later migration).
    pub static REMOVAL_TABLES: &[&Table] = &[&REMOVALS];

    /// Media never used, to collect, and claims on deleting originals (a later
    /// migration).
    pub static UNUSED_TABLES: &[&Table] = &[&UNUSED, &BLOB_CLAIMS];

    /// Each user's objects (a later migration).
    pub static OWNED_TABLES: &[&Table] = &[&OWNED];

    /// Where a media object is processed and stored.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum State {
        /// Bytes still arriving.
        Uploading,
        /// Received and checked; renditions being made.
        Processing,
        /// Usable.
        Ready,
        /// Processing failed (a server fault, e.g. a transcoder crash).
        Failed,
        /// The bytes were refused (wrong type, a bomb, undecodable).
        Rejected,
        /// Being deleted, its uses being looked at a last time: gone for everyone but
        /// its remover ([`load`] answers `None`), and put back if a use is found. Left
        /// behind by a removal cut short, it is finished by the next removal (the
        /// owner's, or its node's restart).
        Deleting,
        /// Being deleted, nothing using it: its files are going. Never put back; any
        /// removal that finds it finishes it.
        Collecting,
    }

    impl State {
        /// Whether the object is being deleted (a tombstone, gone for readers).
        pub fn deleting(self) -> bool {
            matches!(self, State::Deleting | State::Collecting)
        }
    }

    /// What a media object is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Kind {
        /// A photo (JPEG, PNG, WebP).
        Image,
        /// A video (MP4, QuickTime, WebM).
        Video,
        /// An animated GIF.
        Gif,
    }

    /// A derived file of a media object (a resized image, a poster frame, a playlist).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Rendition {
        /// "small", "medium", "large", "poster", "hls/master.m3u8", "hls/360p_000.ts", ...
        pub name: String,
        /// Its type.
        pub mime: String,
        /// Pixels.
        pub width: u32,
        /// Pixels.
        pub height: u32,
        /// Bytes.
        pub size: u64,
        /// Its key in the blob store.
        pub key: String,
    }

    /// A media object.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Media {
        /// Id (time-ordered).
        pub media_id: u64,
        /// Who uploaded it.
        pub owner_id: u64,
        /// What it is.
        pub kind: Kind,
        /// The type sniffed from its bytes (never the client's claim).
        pub mime: String,
        /// Bytes of the original.
        pub size: u64,
        /// SHA-256 of the original, hex: its key in the blob store.
        pub sha256: String,
        /// Pixels (after orientation).
        pub width: u32,
        /// Pixels (after orientation).
        pub height: u32,
        /// Length of a video.
        pub duration_ms: u32,
        /// Placeholder for images.
        pub blurhash: String,
        /// Description for screen readers.
        pub alt_text: String,
        /// Processing state.
        pub state: State,
        /// Why it failed or was refused, for its owner.
        pub reason: String,
        /// Derived files.
        pub renditions: Vec<Rendition>,
        /// Upload time.
        pub created_at_ms: u64,
    }

    impl Media {
        /// The blob key of the original.
        pub fn original_key(&self) -> String {
            original_key(&self.sha256)
        }
    }

    /// The blob key of an original with this digest (hex).
    pub fn original_key(sha256_hex: &str) -> String {
        format!("sha256/{sha256_hex}")
    }

    /// What a media object is used by.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Use {
        /// A post's media.
        Post(u64),
        /// A story.
        Story(u64),
        /// A profile's avatar or banner (the user).
        Profile(u64),
        /// A chat message's attachment: (conversation, message id). Its row holds the
        /// message's number once the message is stored ([`settle`]).
        Chat(u64, u64),
        /// A group's avatar (the conversation); its end is recorded (a new avatar).
        ChatAvatar(u64),
    }

    impl Use {
        fn cell(self, media_id: u64) -> Cell {
            let c = match self {
                Use::Post(id) => KeyBuilder::new().u64(1).u64(id),
                Use::Story(id) => KeyBuilder::new().u64(2).u64(id),
                Use::Profile(id) => KeyBuilder::new().u64(3).u64(id),
                Use::Chat(conversation, message) => {
                    KeyBuilder::new().u64(4).u64(conversation).u64(message)
                }
                Use::ChatAvatar(conversation) => KeyBuilder::new().u64(5).u64(conversation),
            };
            Cell::new(&REFS, key(media_id), c.build())
        }

        /// Decodes a `REFS` clustering key.
        pub fn from_clustering(c: &[u8]) -> Option<Use> {
            let kind = id_value(c.get(..8)?)?;
            let id = id_value(c.get(8..16)?)?;
            Some(match kind {
                1 => Use::Post(id),
                2 => Use::Story(id),
                3 => Use::Profile(id),
                4 => Use::Chat(id, id_value(c.get(16..24)?)?),
                5 => Use::ChatAvatar(id),
                _ => return None,
            })
        }
    }

    /// A stored media object (`None` for one being deleted).
    pub async fn load<S: Store>(store: &S, media_id: u64) -> Result<Option<Media>, Error> {
        Ok(load_raw(store, media_id)
            .await?
            .map(|(_, m)| m)
            .filter(|m| !m.state.deleting()))
    }

    /// A stored media record as it is, tombstones ([`State::deleting`]) included, with
    /// its encoded bytes (for versioned writes).
    pub async fn load_raw<S: Store>(
        store: &S,
        media_id: u64,
    ) -> Result<Option<(bytes::Bytes, Media)>, Error> {
        match store.get(&MEDIA, &key(media_id), &[]).await? {
            Some(b) => {
                let m = decode("media", &b)?;
                Ok(Some((b, m)))
            }
            None => Ok(None),
        }
    }

    /// Writes a ready image record of `owner`'s with id `media_id` and no bytes: a
    /// placeholder for benchmarks and tests of what uses media (posts, stories,
    /// profiles), never reached by clients (uploads go through `crate::media`).
    pub async fn seed<S: Store>(store: &S, owner: u64, media_id: u64) -> Result<(), Error> {
        let m = Media {
            media_id,
            owner_id: owner,
            kind: Kind::Image,
            mime: "image/jpeg".into(),
            size: 0,
            sha256: "00".repeat(32),
            width: 1,
            height: 1,
            duration_ms: 0,
            blurhash: String::new(),
            alt_text: String::new(),
            state: State::Ready,
            reason: String::new(),
            renditions: Vec::new(),
            created_at_ms: 0,
        };
        store
            .put(&MEDIA, &key(media_id), &[], &encode("media", &m)?, None)
            .await?;
        Ok(())
    }

    /// Checks that every id in `ids` is a ready media object of `owner` of one of the
    /// `kinds`: what posts, stories and profiles accept. Unknown ids, another user's media
    /// and media not yet processed are all `InvalidArgument` on `field` (whose media it
    /// is, is not revealed).
    pub async fn check<S: Store>(
        store: &S,
        owner: u64,
        ids: &[u64],
        kinds: &[Kind],
        field: &'static str,
    ) -> Result<Vec<Media>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            match load(store, id).await? {
                Some(m)
                    if m.owner_id == owner
                        && m.state == State::Ready
                        && kinds.contains(&m.kind) =>
                {
                    out.push(m)
                }
                _ => return Err(Error::InvalidArgument { field }),
            }
        }
        Ok(out)
    }

    /// Checks that every id in `ids` is a ready media object that `by` uses: what a
    /// forwarded chat message carries (the original message's attachments, which the
    /// forwarder may read; never ids the original merely names).
    pub async fn check_used_by<S: Store>(
        store: &S,
        ids: &[u64],
        by: Use,
        field: &'static str,
    ) -> Result<(), Error> {
        for &id in ids {
            let c = by.cell(id);
            let used = store
                .get(&REFS, &c.partition, &c.clustering)
                .await?
                .is_some();
            let ready = load(store, id)
                .await?
                .is_some_and(|m| m.state == State::Ready);
            if !(used && ready) {
                return Err(Error::InvalidArgument { field });
            }
        }
        Ok(())
    }

    /// The writes that note on the uses of a chat message (recorded by [`attach`]
    /// before the message was stored) the number it got: part of the message's own
    /// commit, so a stored message always has them.
    pub fn settled(ids: &[u64], user: Use, seq: u64) -> Vec<selfie_storage::Write> {
        ids.iter()
            .map(|&id| selfie_storage::Write::Put {
                row: user.cell(id),
                value: key(seq),
                ttl: None,
            })
            .collect()
    }

    /// Records that `user` uses `ids` (already [`check`]ed): the objects stay while
    /// something uses them, and viewers of `user` may download them. Each object is
    /// looked up again once its use is recorded: one deleted since the check (its
    /// deleter marks it [`State::Deleting`] before it looks at its uses a second time)
    /// is `InvalidArgument` on `field`, and the uses this call added are taken back
    /// (uses recorded before it, e.g. by the post being edited, stay).
    pub async fn attach<S: Store>(
        store: &S,
        ids: &[u64],
        user: Use,
        field: &'static str,
    ) -> Result<(), Error> {
        let mut added = Vec::with_capacity(ids.len());
        for &id in ids {
            let c = user.cell(id);
            if store
                .get(&REFS, &c.partition, &c.clustering)
                .await?
                .is_none()
            {
                added.push(id);
            }
            store
                .put(&REFS, &c.partition, &c.clustering, &[], None)
                .await?;
        }
        for &id in ids {
            let ready = load(store, id)
                .await?
                .is_some_and(|m| m.state == State::Ready);
            if !ready {
                detach(store, &added, user).await?;
                return Err(Error::InvalidArgument { field });
            }
        }
        Ok(())
    }

    /// Where services hand media they stopped using, for the media service to delete what
    /// nothing uses any more (fire and forget: an object missed stays with its owner).
    pub type Release = std::rc::Rc<dyn Fn(Vec<u64>)>;

    /// Records that `user` no longer uses `ids`; the media service deletes the objects
    /// nothing uses any more when they are released to it ([`Release`]).
    pub async fn detach<S: Store>(store: &S, ids: &[u64], user: Use) -> Result<(), Error> {
        for &id in ids {
            let c = user.cell(id);
            store.delete(&REFS, &c.partition, &c.clustering).await?;
        }
        Ok(())
    }
}
