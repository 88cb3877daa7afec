//! The Selfie domain: auth, users, graph, posts, feed, stories, chat, media,
//! notifications, search, recommend, moderation, admin, payments, ads, analytics — and
//! the service plane they stand on.
//!
//! Each service is a shard-local state machine over the `selfie-storage` traits, with its
//! wire table beside it (`<service>/wire.rs`: operation → handler, owner key), reading
//! verified frames in place. The [`plane`] carries requests and typed calls between
//! shards and pushes events to subscribers; [`registry`] builds one shard's services;
//! [`workflows`] hold what spans services (registration, account deletion, the profile
//! view); [`tables`] is the floor of table declarations and shared records that keeps the
//! services from importing each other. One error kind, [`Error`], maps to protocol codes.
//!
//! This crate knows frames and protocol types but must not depend on quinn, the edge, or
//! any socket type: the edge moves the bytes.
//!
//! Built so far: [`auth`] (register, login with TOTP and recovery codes, refresh-token
//! rotation with reuse detection, sessions and revocation, throttling, password change
//! and reset, deletion), [`users`] (profiles, settings, private accounts), [`graph`]
//! (follows, requests, blocks, timed mutes, close friends, user lists, exact counts),
//! [`posts`] (media ids, audiences, reply policies, history, comments, reactions, reposts,
//! quotes, live counters), [`chat`] (direct and group conversations, message requests,
//! exactly-once sends, edits, deletions, reactions, threads, forwarding, receipts, sync
//! from a device cursor, live pushes), [`feed`] (home timelines by fan-out on write with a hybrid read path
//! for large accounts, per-user feeds, "not interested", live "new posts" pushes), [`stories`] (24-hour stories, trays by fan-out,
//! viewers, reactions, replies as chat messages, highlights), [`notifications`] (aggregated
//! in-app notifications with read state, preferences, live pushes, a device-push seam),
//! [`media`] (resumable chunked uploads checked by SHA-256, type sniffing, quotas, image
//! renditions, ranged downloads for permitted viewers, content-addressed blobs).
//! [`schema`] lists the tables `selfie migrate` creates.

pub mod auth;
pub mod chat;
mod error;
pub mod feed;
pub mod graph;
pub mod lease;
pub mod locks;
pub mod media;
pub mod notifications;
pub mod plane;
pub mod posts;
pub mod rate;
mod registry;
pub mod schema;
pub mod stories;
pub mod tables;
pub mod users;
pub mod workflows;

pub use error::{Error, ErrorReply, Result};
pub use registry::{Deps, registry};

/// A boxed future that can cross threads (for the fleet-wide hooks services accept).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
