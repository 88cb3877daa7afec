//! The conformance suite against the embedded (fjall) backend.

use std::sync::Arc;

use selfie_storage::conformance::{self, TABLES};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{StoreError, SystemClock};

fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(dir, TABLES, Arc::new(SystemClock)).expect("open embedded store")
}

macro_rules! conformance {
    ($($name:ident $(($arg:expr))?),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() -> Result<(), StoreError> {
            let dir = tempfile::tempdir()?;
            let store = open(dir.path());
            conformance::$name(&store $(, $arg)?).await
        }
    )*};
}

conformance!(
    point_operations,
    ordering_and_reverse_scans,
    pagination_and_bounds,
    ttl_expiry,
    batch_atomicity,
    concurrent_insert_if_absent,
    conditional_tables,
    commits,
    queued_commits,
    counters,
    large_partition(50_000),
    typed_errors,
);

#[tokio::test]
async fn restart_persistence() -> Result<(), StoreError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    conformance::restart_persistence(open(&path), || async move { Ok(open(&path)) }).await
}
