//! The product's CQL schema history: every migration `selfie migrate` applies, in
//! version order. A service adds its tables with a new migration; an applied migration
//! is never edited. The embedded backend needs no migrations: it opens the same table
//! declarations directly.

use selfie_storage::Table;
use selfie_storage::cql::Migration;

/// Every migration, oldest first.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "accounts: usernames, e-mails, accounts, sessions, refresh tokens",
        tables: crate::tables::auth::TABLES,
        statements: &[],
    },
    Migration {
        version: 2,
        name: "users: profiles",
        tables: crate::tables::users::TABLES,
        statements: &[],
    },
    Migration {
        version: 3,
        name: "graph: follows, requests, blocks, mutes, counts",
        tables: crate::tables::graph::TABLES,
        statements: &[],
    },
    Migration {
        version: 4,
        name: "posts: posts, history, by user, comments, reactions, counts",
        tables: crate::tables::posts::TABLES,
        statements: &[],
    },
    Migration {
        version: 5,
        // The per-author post count starts here: no deployment holds posts from before
        // this migration (it landed before any release), so nothing needs a backfill.
        name: "users: settings; posts: per-author counts",
        tables: &[
            &crate::tables::users::SETTINGS,
            &crate::tables::posts::AUTHOR_COUNTS,
        ],
        statements: &[],
    },
    Migration {
        version: 6,
        name: "graph: close friends",
        tables: crate::tables::graph::CLOSE_FRIENDS_TABLES,
        statements: &[],
    },
    Migration {
        version: 7,
        name: "graph: user lists",
        tables: crate::tables::graph::LIST_TABLES,
        statements: &[],
    },
    Migration {
        version: 8,
        // Like migration 5, this starts its bookkeeping fresh: no deployment holds
        // comments, reposts or reactions from before it (it landed before any release).
        name: "posts: reposts by user, comment index, reaction kinds",
        tables: crate::tables::posts::INTERACTION_TABLES,
        statements: &[],
    },
    Migration {
        version: 9,
        name: "accounts: password resets",
        tables: crate::tables::auth::RESET_TABLES,
        statements: &[],
    },
    Migration {
        version: 10,
        name: "accounts: durable revocations, e-mail verification",
        tables: crate::tables::auth::VERIFICATION_TABLES,
        statements: &[],
    },
    Migration {
        version: 11,
        name: "fleet: node number leases",
        tables: crate::tables::fleet::TABLES,
        statements: &[],
    },
    Migration {
        version: 12,
        name: "posts: idempotency keys of creates",
        tables: crate::tables::posts::IDEMPOTENCY_TABLES,
        statements: &[],
    },
    Migration {
        version: 13,
        name: "chat: conversations, logs, members, per-user state, transaction ids, edits",
        tables: crate::tables::chat::TABLES,
        statements: &[],
    },
    Migration {
        version: 14,
        name: "chat: presence",
        tables: crate::tables::chat::PRESENCE_TABLES,
        statements: &[],
    },
    Migration {
        version: 15,
        name: "chat: MLS key packages",
        tables: crate::tables::chat::MLS_TABLES,
        statements: &[],
    },
    Migration {
        version: 16,
        name: "chat: read and delivered positions apart from membership",
        tables: crate::tables::chat::RECEIPT_TABLES,
        statements: &[],
    },
    Migration {
        // No deployment holds chat data from before it (it landed before any release).
        // A request made before it would stay in `chat_user_conversations`: answerable,
        // but listed in no folder.
        version: 17,
        name: "chat: message requests apart from users' conversations",
        tables: crate::tables::chat::REQUEST_TABLES,
        statements: &[],
    },
    Migration {
        version: 18,
        name: "feed: home timelines, large authors, pending fan-outs, not interested",
        tables: crate::tables::feed::TABLES,
        statements: &[],
    },
    Migration {
        version: 19,
        name: "stories: stories, by author, viewers, trays, highlights, affinity",
        tables: crate::tables::stories::TABLES,
        statements: &[],
    },
    Migration {
        version: 20,
        name: "notifications: inboxes, groups, read state and preferences, push tokens",
        tables: crate::tables::notifications::TABLES,
        statements: &[],
    },
    Migration {
        version: 21,
        name: "feed: For you snapshots, seen posts; posts: reader-author affinity",
        tables: crate::tables::feed::RANK_TABLES,
        statements: &[],
    },
    Migration {
        version: 22,
        name: "notifications: read flags apart from the inbox rows",
        tables: crate::tables::notifications::READ_TABLES,
        statements: &[],
    },
    Migration {
        version: 23,
        name: "posts: hashtag index",
        tables: crate::tables::posts::HASHTAG_TABLES,
        statements: &[],
    },
    Migration {
        version: 24,
        name: "media: objects, uploads, chunks, open uploads, refs, jobs, blobs, usage",
        tables: crate::tables::media::TABLES,
        statements: &[],
    },
    Migration {
        version: 25,
        name: "media: removals in progress on each node",
        tables: crate::tables::media::REMOVAL_TABLES,
        statements: &[],
    },
    Migration {
        version: 26,
        name: "media: objects to collect if never used, claims on deleting originals",
        tables: crate::tables::media::UNUSED_TABLES,
        statements: &[],
    },
    Migration {
        version: 27,
        name: "media: each user's objects",
        tables: crate::tables::media::OWNED_TABLES,
        statements: &[],
    },
    Migration {
        version: 28,
        name: "chat: recent key package claims by claimer",
        tables: crate::tables::chat::CLAIM_TABLES,
        statements: &[],
    },
];

/// Every table of every service (for opening the embedded store).
pub fn tables() -> Vec<&'static Table> {
    MIGRATIONS
        .iter()
        .flat_map(|m| m.tables.iter().copied())
        .collect()
}
