//! TTL on the embedded backend with an injected clock: expired rows are invisible at
//! once and physically purged by compaction (the background TTL filter).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Clock, Scan, Store, StoreError, Table, TableKind};

struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

static STORIES: Table = Table {
    name: "stories",
    kind: TableKind::Rows,
    partition: &["author"],
    clustering: &["story_id"],
    default_ttl: Some(Duration::from_secs(24 * 3600)),
    conditional: false,
    doc: "stories expire after a day",
};

#[tokio::test]
async fn expired_rows_are_invisible_at_once_and_purged_by_compaction() -> Result<(), StoreError> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock(AtomicU64::new(1_800_000_000_000)));
    let store = EmbeddedStore::open(dir.path(), &[&STORIES], clock.clone())?;
    let p = KeyBuilder::new().u64(42).build();
    for i in 0..500u64 {
        store
            .put(
                &STORIES,
                &p,
                &KeyBuilder::new().u64(i).build(),
                b"story",
                None,
            )
            .await?;
    }
    // One row outlives the others.
    store
        .put(
            &STORIES,
            &p,
            &KeyBuilder::new().u64(1_000).build(),
            b"keeps",
            Some(Duration::from_secs(3 * 24 * 3600)),
        )
        .await?;
    assert_eq!(
        store.scan(&STORIES, &p, &Scan::all(1000)).await?.rows.len(),
        501
    );

    // A day and a second later: invisible to every read, but still on disk.
    clock.0.fetch_add(24 * 3600 * 1000 + 1000, Ordering::SeqCst);
    let page = store.scan(&STORIES, &p, &Scan::all(1000)).await?;
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0].value.as_ref(), b"keeps");
    assert_eq!(
        store
            .get(&STORIES, &p, &KeyBuilder::new().u64(7).build())
            .await?,
        None
    );
    assert_eq!(store.physical_len(&STORIES)?, 501);

    // Compaction runs the TTL filter: the expired rows are gone from disk.
    store.compact(&STORIES)?;
    assert_eq!(store.physical_len(&STORIES)?, 1);
    assert_eq!(
        store.scan(&STORIES, &p, &Scan::all(1000)).await?.rows.len(),
        1
    );
    Ok(())
}
