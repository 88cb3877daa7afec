//! The product's CQL schema history: every migration `selfie migrate` applies, in
//! version order. Services add their tables here as they land (a new migration each
//! time; never edit an applied one). The embedded backend needs no migrations: it opens
//! the same table declarations directly.

use crate::cql::Migration;

/// Every migration, oldest first. Empty until the first service stores data: running
/// `selfie migrate` then creates the keyspace and its `selfie_migrations` ledger.
pub static MIGRATIONS: &[Migration] = &[];
