//! The Selfie edge: the thread-per-core QUIC server every client byte passes through.
//!
//! It will own the shard runtime (one pinned `current_thread` tokio runtime, reuseport
//! UDP socket and quinn endpoint per core), connection and session lifecycle, stream
//! routing to the co-located service shards, admission control and rate limits, drain,
//! and the ops HTTP endpoints. It must not hold domain logic (that is `selfie-services`)
//! nor storage code (that is `selfie-storage`).
//!
//! Status: not built yet (issue 3); this crate only reserves its place in the workspace.
