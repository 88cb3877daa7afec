//! The conformance suite against a real CQL server (Apache Cassandra from
//! `storage/cql-server/`, started by `scripts/test`; the address comes from
//! `SELFIE_CQL_NODES`, e.g. `127.0.0.1:9042`). Every run uses a fresh keyspace.

use std::sync::{Arc, OnceLock};

use selfie_storage::StoreError;
use selfie_storage::conformance::{self, TABLES};
use selfie_storage::cql::{self, CqlConfig, CqlStore, Migration};

static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "conformance tables",
    tables: TABLES,
    statements: &[],
}];

fn config() -> CqlConfig {
    static KEYSPACE: OnceLock<String> = OnceLock::new();
    let nodes = std::env::var("SELFIE_CQL_NODES").unwrap_or_else(|_| {
        panic!(
            "SELFIE_CQL_NODES is not set: run the tests with scripts/test, which starts a CQL \
             server (storage/cql-server/start.sh), or start one and export its address"
        )
    });
    let ks = KEYSPACE.get_or_init(|| format!("conformance_{:08x}", rand::random::<u32>()));
    CqlConfig::from_url(&format!("cql://{nodes}/{ks}")).expect("valid CQL URL")
}

/// Connects; the first test of the run creates the keyspace and tables.
async fn open() -> Result<CqlStore, StoreError> {
    static MIGRATED: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let config = config();
    let session = Arc::new(cql::connect(&config).await?);
    {
        let mut migrated = MIGRATED.lock().await;
        if !*migrated {
            cql::migrate(&session, &config, MIGRATIONS).await?;
            *migrated = true;
        }
    }
    CqlStore::new(session, &config, TABLES).await
}

macro_rules! conformance {
    ($($name:ident $(($arg:expr))?),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() -> Result<(), StoreError> {
            let store = open().await?;
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
    large_partition(10_000),
    typed_errors,
);

#[tokio::test]
async fn restart_persistence() -> Result<(), StoreError> {
    conformance::restart_persistence(open().await?, open).await
}

#[tokio::test]
async fn migrations_apply_once_and_match_the_declarations() -> Result<(), StoreError> {
    let store = open().await?;
    let config = config();
    // Already applied by `open`: nothing to do the second time.
    assert!(
        cql::migrate(store.session(), &config, MIGRATIONS)
            .await?
            .is_empty()
    );
    // The server's schema is what the declarations say.
    for table in TABLES {
        let rows = store
            .session()
            .query_unpaged(
                "SELECT column_name, kind, type, clustering_order FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ?",
                (config.keyspace.as_str(), table.name),
            )
            .await
            .map_err(|e| StoreError::Cql(e.to_string()))?
            .into_rows_result()
            .map_err(|e| StoreError::Cql(e.to_string()))?;
        let mut cols: Vec<(String, String, String, String)> = rows
            .rows::<(String, String, String, String)>()
            .map_err(|e| StoreError::Cql(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Cql(e.to_string()))?;
        cols.sort();
        let value = match table.kind {
            selfie_storage::TableKind::Rows => ("v", "regular", "blob"),
            selfie_storage::TableKind::Counters => ("n", "regular", "counter"),
        };
        let mut want = vec![
            (
                "c".to_string(),
                "clustering".to_string(),
                "blob".to_string(),
                "asc".to_string(),
            ),
            (
                "p".to_string(),
                "partition_key".to_string(),
                "blob".to_string(),
                "none".to_string(),
            ),
            (
                value.0.to_string(),
                value.1.to_string(),
                value.2.to_string(),
                "none".to_string(),
            ),
        ];
        want.sort();
        assert_eq!(cols, want, "schema of {}", table.name);
    }
    Ok(())
}

/// A driver whose timestamps run `behind` the real clock: what a node (or coordinator)
/// with a slow clock writes.
struct SlowClock(std::time::Duration);

impl scylla::policies::timestamp_generator::TimestampGenerator for SlowClock {
    fn next_timestamp(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(self.0).as_micros() as i64
    }
}

#[tokio::test]
async fn a_node_with_a_slow_clock_cannot_be_shadowed_on_a_conditional_table()
-> Result<(), StoreError> {
    use selfie_storage::Store;
    use selfie_storage::conformance::CLAIMS;
    let fast = open().await?;
    let config = config();
    let slow_session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&config.nodes)
        .timestamp_generator(Arc::new(SlowClock(std::time::Duration::from_secs(30))))
        .build()
        .await
        .map_err(|e| StoreError::Cql(e.to_string()))?;
    let slow = CqlStore::new(Arc::new(slow_session), &config, TABLES).await?;
    let p = rand::random::<u64>().to_be_bytes();
    // A reset code claimed conditionally, then spent by the slow node: it must be gone
    // (a plain delete would carry a timestamp older than the claim and be ignored).
    assert!(
        fast.insert_if_absent(&CLAIMS, &p, b"code", b"1", None)
            .await?
    );
    slow.delete(&CLAIMS, &p, b"code").await?;
    assert_eq!(
        fast.get(&CLAIMS, &p, b"code").await?,
        None,
        "delete shadowed"
    );
    // A put from the slow node over a claimed row lands too.
    assert!(
        fast.insert_if_absent(&CLAIMS, &p, b"name", b"1", None)
            .await?
    );
    slow.put(&CLAIMS, &p, b"name", b"2", None).await?;
    assert_eq!(
        fast.get(&CLAIMS, &p, b"name").await?.as_deref(),
        Some(&b"2"[..]),
        "put shadowed"
    );
    Ok(())
}

#[tokio::test]
async fn the_repair_pass_finishes_a_commit_cut_short() -> Result<(), StoreError> {
    use bytes::Bytes;
    use selfie_storage::conformance::{CLAIMS, COUNTERS, ROWS};
    use selfie_storage::{Cell, Commit, Condition, Store};
    let store = open().await?;
    let p = Bytes::copy_from_slice(&rand::random::<u64>().to_be_bytes());
    let claim = Cell::new(&CLAIMS, p.clone(), &b"a"[..]);
    let index = Cell::new(&ROWS, p.clone(), &b"a"[..]);
    let count = Cell::new(&COUNTERS, p.clone(), &b"n"[..]);
    let follow = Commit::new()
        .when(Condition::Absent {
            row: claim.clone(),
            value: Bytes::from_static(b"1"),
            ttl: None,
        })
        .put(index.clone(), &b"1"[..], None)
        .add(count.clone(), 1, Some((&CLAIMS, p.clone())));
    // What a node leaves when it dies right after the claim: the pending record and the
    // claimed row, nothing else.
    let pending = Cell::new(
        &cql::PENDING_COMMITS,
        selfie_storage::key::KeyBuilder::new().u64(3).build(),
        selfie_storage::key::KeyBuilder::new()
            .u64(1)
            .u64(rand::random())
            .build(),
    );
    store
        .put(
            pending.table,
            &pending.partition,
            &pending.clustering,
            &cql::pending::encode(&follow),
            None,
        )
        .await?;
    assert!(
        store
            .insert_if_absent(&CLAIMS, &p, b"a", b"1", None)
            .await?
    );
    // The counter was also off before (a lost change of an older commit).
    store.counter_add(&COUNTERS, &p, b"n", 5).await?;
    let repaired = store.repair(std::time::Duration::from_secs(60)).await?;
    assert!(repaired.commits >= 1, "{repaired:?}");
    assert_eq!(
        store.get(&ROWS, &p, b"a").await?.as_deref(),
        Some(&b"1"[..]),
        "the missing row is written"
    );
    assert_eq!(
        store.counter_get(&COUNTERS, &p, b"n").await?,
        1,
        "the counter counts the claimed rows"
    );
    assert_eq!(
        store
            .get(pending.table, &pending.partition, &pending.clustering)
            .await?,
        None,
        "the pending record is cleared"
    );
    // A commit that never took effect (the row was never claimed) writes nothing.
    let q = Bytes::copy_from_slice(&rand::random::<u64>().to_be_bytes());
    let never = Commit::new()
        .when(Condition::Absent {
            row: Cell::new(&CLAIMS, q.clone(), &b"a"[..]),
            value: Bytes::from_static(b"1"),
            ttl: None,
        })
        .put(Cell::new(&ROWS, q.clone(), &b"a"[..]), &b"1"[..], None);
    store
        .put(
            pending.table,
            &pending.partition,
            &selfie_storage::key::KeyBuilder::new()
                .u64(2)
                .u64(rand::random())
                .build(),
            &cql::pending::encode(&never),
            None,
        )
        .await?;
    store.repair(std::time::Duration::from_secs(60)).await?;
    assert_eq!(store.get(&ROWS, &q, b"a").await?, None);

    // A release cut short after its condition (the claim is gone) and before its
    // tombstone: the repair writes the tombstone over the live record.
    let r = Bytes::copy_from_slice(&rand::random::<u64>().to_be_bytes());
    store.put(&ROWS, &r, b"a", b"live", None).await?;
    let release = Commit::new()
        .when(Condition::Present {
            row: Cell::new(&CLAIMS, r.clone(), &b"a"[..]),
        })
        .put(
            Cell::new(&ROWS, r.clone(), &b"a"[..]),
            &b"tombstone"[..],
            None,
        );
    store
        .put(
            pending.table,
            &pending.partition,
            &selfie_storage::key::KeyBuilder::new()
                .u64(3)
                .u64(rand::random())
                .build(),
            &cql::pending::encode(&release),
            None,
        )
        .await?;
    store.repair(std::time::Duration::from_secs(60)).await?;
    assert_eq!(
        store.get(&ROWS, &r, b"a").await?.as_deref(),
        Some(&b"tombstone"[..]),
        "the release's tombstone is written over the live record"
    );
    Ok(())
}
