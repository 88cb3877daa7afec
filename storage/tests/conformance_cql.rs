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
