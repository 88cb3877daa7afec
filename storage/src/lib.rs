//! Selfie storage: tables of partitions of ordered rows (the ScyllaDB model), declared
//! once, with an embedded backend (default), a ScyllaDB backend for fleets, and Redis
//! for presence, cross-node fan-out and global rate limits.
//!
//! It must not depend on the protocol, the codec or the edge.
//!
//! Status: not built yet (issue 4); this crate only reserves its place in the workspace.
