//! The Selfie domain: auth, users, graph, posts, feed, stories, chat, media,
//! notifications, search, recommend, moderation, admin, payments, ads, analytics.
//!
//! Each service is a shard-local state machine over the `selfie-storage` traits. This
//! crate must not depend on quinn, the edge, or any socket type: the edge hands it
//! verified envelopes and the authenticated caller, and sends back what it returns.
//!
//! Built so far: [`auth`] — access tokens verified without a storage round trip (PASETO
//! v4), Argon2id password hashing on a bounded pool off the shard threads, TOTP second
//! factors with recovery codes, and the account flows on top of them (register, login,
//! refresh-token rotation with reuse detection, sessions and revocation, throttling,
//! password change, deletion); [`users`] (profiles, private accounts) and [`graph`]
//! (follows, requests, blocks, timed mutes, close friends, user lists, exact counts),
//! [`posts`] (media ids, audiences, reply policies, history, comments, reactions,
//! reposts, quotes). [`schema`] lists the tables `selfie migrate` creates. Feeds, stories,
//! chat and the rest come next.

/// Declares `Rows` tables: `NAME, "table", [partition columns], [clustering columns],
/// "doc";` (the services' own tables; counters are declared by hand).
macro_rules! rows {
    ($($name:ident, $table:literal, [$($p:literal),*], [$($c:literal),*], $doc:literal;)*) => {$(
        #[doc = $doc]
        pub static $name: selfie_storage::Table = selfie_storage::Table {
            name: $table,
            kind: selfie_storage::TableKind::Rows,
            partition: &[$($p),*],
            clustering: &[$($c),*],
            default_ttl: None,
            doc: $doc,
        };
    )*};
}

pub mod auth;
pub mod graph;

/// A boxed future that can cross threads (for the fleet-wide hooks services accept).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub mod posts;
pub mod schema;
pub mod users;
