//! Selfie storage: one data model, three backends.
//!
//! The one idea: every table is a set of **partitions of ordered rows** — ScyllaDB's
//! model. A row is addressed by a partition key and a clustering key, both byte strings
//! produced by the order-preserving [`key`] encoding, so that byte order *is* key order
//! on every backend (fjall compares keys bytewise; CQL compares `blob` clustering columns
//! bytewise too). Tables are declared once ([`Table`]) and the same operations
//! ([`Store`]) run against:
//!
//! - [`embedded::EmbeddedStore`] (default, zero set-up): fjall in a data directory, group
//!   commit with fsync before acknowledgement;
//! - [`cql::CqlStore`] (fleets): ScyllaDB (or Cassandra) over CQL, with versioned
//!   migrations, prepared statements, `LOCAL_QUORUM`, `USING TTL` and lightweight
//!   transactions;
//! - [`redis`] for what is live rather than durable: presence, the cross-node event bus,
//!   global rate limits.
//!
//! One conformance suite ([`conformance`]) runs the same test bodies against both
//! durable backends.
//!
//! Time-ordered ids ([`id`]) are a shared utility: Snowflake-style, time | node | shard |
//! sequence, so clustering by id is clustering by time.
//!
//! This crate must not depend on the protocol, the codec or the edge: it stores bytes,
//! it does not know what they mean.

pub mod any;
pub mod conformance;
pub mod cql;
pub mod embedded;
pub mod id;
pub mod key;
pub mod redis;
mod store;

pub use store::{
    Cell, Clock, Commit, Condition, Cursor, MAX_PAGE_ROWS, Mutation, Page, Queued, Row, Scan,
    Store, StoreError, SystemClock, Table, TableKind, Write,
};
