//! The Selfie domain: auth, users, graph, posts, feed, stories, chat, media,
//! notifications, search, recommend, moderation, admin, payments, ads, analytics.
//!
//! Each service is a shard-local state machine over the `selfie-storage` traits. This
//! crate must not depend on quinn, the edge, or any socket type: the edge hands it
//! verified envelopes and the authenticated caller, and sends back what it returns.
//!
//! Status: not built yet (issue 5); this crate only reserves its place in the workspace.
