//! The ScyllaDB backend (CQL), for fleets. Tested against a real CQL server
//! (`storage/cql-server/`, Apache Cassandra), never a mock.
//!
//! **Schema.** Derived from the same [`Table`] declarations as the embedded backend: a
//! rows table is `(p blob, c blob, v blob, PRIMARY KEY ((p), c))` clustered by `c`
//! ascending; a counters table has `n counter` instead of `v`. Keys are the
//! order-preserving encodings of [`crate::key`], and CQL orders `blob` clustering
//! columns bytewise, so scans return rows in the same order as fjall. Typed key columns
//! would make `cqlsh` output friendlier, but one generic shape lets every table share
//! one set of prepared queries and keeps both backends byte-for-byte identical.
//!
//! **Queries.** All prepared at connect time, with `LOCAL_QUORUM` (configurable);
//! `insert_if_absent` is a lightweight transaction (`IF NOT EXISTS`, serial consistency
//! `LOCAL_SERIAL`); TTLs are `USING TTL`; `batch` is an unlogged single-partition batch,
//! which Cassandra and ScyllaDB apply atomically and in isolation. Pagination uses the
//! clustering key as the cursor (`c > ?`), so pages are stable and need no server-side
//! paging state. The driver is shard-aware on ScyllaDB by default.
//!
//! **Migrations.** [`migrate`] applies numbered [`Migration`]s once each and records them
//! in `selfie_migrations`; `selfie migrate` runs it.
//!
//! Do not mix lightweight transactions and plain writes on the same rows: use
//! `insert_if_absent` for claim rows (usernames, idempotency keys) only.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row as CqlRow};

use crate::store::{check_key, check_kind, check_value, effective_ttl};
use crate::{Mutation, Page, Row, Scan, Store, StoreError, Table, TableKind};

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding every table.
    pub keyspace: String,
    /// Replication settings used when [`migrate`] creates the keyspace.
    pub replication: String,
    /// Consistency of reads and writes.
    pub consistency: Consistency,
}

impl CqlConfig {
    /// Parses `cql://host1:9042,host2:9042/keyspace?rf=3&dc=dc1&consistency=local_quorum`.
    ///
    /// `rf` (default 1) and `dc` choose the replication used to create the keyspace:
    /// `NetworkTopologyStrategy` with `dc`, else `SimpleStrategy` (single-DC tests).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Cql(format!("invalid CQL URL: {why}"));
        let rest = url
            .strip_prefix("cql://")
            .or_else(|| url.strip_prefix("scylla://"))
            .ok_or_else(|| bad("expected cql://hosts/keyspace"))?;
        let (hosts, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("missing /keyspace"))?;
        let (keyspace, query) = rest.split_once('?').unwrap_or((rest, ""));
        let valid_ks = !keyspace.is_empty()
            && keyspace.len() <= 48
            && keyspace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && keyspace.as_bytes()[0].is_ascii_lowercase();
        if !valid_ks {
            return Err(bad("keyspace must match [a-z][a-z0-9_]{0,47}"));
        }
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:9042")
                }
            })
            .collect();
        if nodes.is_empty() {
            return Err(bad("no hosts"));
        }
        let (mut rf, mut dc, mut consistency) = (1u32, None, Consistency::LocalQuorum);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("query must be k=v"))?;
            match k {
                "rf" => {
                    rf = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=9).contains(n))
                        .ok_or_else(|| bad("rf must be 1..=9"))?
                }
                "dc" if v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    dc = Some(v.to_string())
                }
                "consistency" => {
                    consistency = match v {
                        "one" => Consistency::One,
                        "local_one" => Consistency::LocalOne,
                        "quorum" => Consistency::Quorum,
                        "local_quorum" => Consistency::LocalQuorum,
                        "all" => Consistency::All,
                        _ => return Err(bad("unknown consistency")),
                    }
                }
                _ => return Err(bad("unknown parameter")),
            }
        }
        let replication = match dc {
            Some(dc) => format!("{{'class': 'NetworkTopologyStrategy', '{dc}': {rf}}}"),
            None => format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"),
        };
        Ok(Self {
            nodes,
            keyspace: keyspace.to_string(),
            replication,
            consistency,
        })
    }
}

/// A numbered schema change: the tables it introduces and any extra CQL statements
/// (with `{ks}` standing for the keyspace).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing, never reused.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// Tables created (`IF NOT EXISTS`) by this migration.
    pub tables: &'static [&'static Table],
    /// Further statements, run in order after the tables are created.
    pub statements: &'static [&'static str],
}

/// The `CREATE TABLE` statement for a declaration.
pub fn create_table_cql(keyspace: &str, table: &Table) -> String {
    let value = match table.kind {
        TableKind::Rows => "v blob",
        TableKind::Counters => "n counter",
    };
    let ttl = match (table.kind, table.default_ttl) {
        (TableKind::Rows, Some(d)) => format!(" AND default_time_to_live = {}", d.as_secs().max(1)),
        _ => String::new(),
    };
    let comment = format!(
        "{} | partition ({}) clustering ({})",
        table.doc,
        table.partition.join(", "),
        table.clustering.join(", ")
    )
    .replace('\'', "''");
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{name} (p blob, c blob, {value}, PRIMARY KEY ((p), c)) \
         WITH CLUSTERING ORDER BY (c ASC) AND comment = '{comment}'{ttl}",
        name = table.name
    )
}

fn cql_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Cql(e.to_string())
}

/// Creates the keyspace if needed and applies every migration not yet recorded, in
/// version order. Safe to run concurrently from several nodes (DDL is idempotent and
/// each version is recorded once). Returns the versions applied by this call.
pub async fn migrate(
    session: &Session,
    config: &CqlConfig,
    migrations: &[Migration],
) -> Result<Vec<u32>, StoreError> {
    let ks = &config.keyspace;
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                config.replication
            ),
            &[],
        )
        .await
        .map_err(cql_err)?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.selfie_migrations \
                 (version int PRIMARY KEY, name text, applied_at timestamp)"
            ),
            &[],
        )
        .await
        .map_err(cql_err)?;
    session.await_schema_agreement().await.map_err(cql_err)?;
    let applied: Vec<i32> = session
        .query_unpaged(format!("SELECT version FROM {ks}.selfie_migrations"), &[])
        .await
        .map_err(cql_err)?
        .into_rows_result()
        .map_err(cql_err)?
        .rows::<(i32,)>()
        .map_err(cql_err)?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(cql_err)?;
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by_key(|m| m.version);
    let mut done = Vec::new();
    for m in sorted {
        let version = i32::try_from(m.version).map_err(cql_err)?;
        if applied.contains(&version) {
            continue;
        }
        for t in m.tables {
            t.validate()?;
            session
                .query_unpaged(create_table_cql(ks, t), &[])
                .await
                .map_err(cql_err)?;
        }
        for s in m.statements {
            session
                .query_unpaged(s.replace("{ks}", ks), &[])
                .await
                .map_err(cql_err)?;
        }
        session.await_schema_agreement().await.map_err(cql_err)?;
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.selfie_migrations (version, name, applied_at) \
                     VALUES (?, ?, toTimestamp(now()))"
                ),
                (version, m.name),
            )
            .await
            .map_err(cql_err)?;
        done.push(m.version);
    }
    Ok(done)
}

/// Opens a driver session to the configured nodes.
pub async fn connect(config: &CqlConfig) -> Result<Session, StoreError> {
    SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .map_err(cql_err)
}

/// Index of a scan statement: lower bound (none, >=, >) × upper (none, <=, <) × order.
fn scan_index(lower: &Bound<Bytes>, upper: &Bound<Bytes>, reverse: bool) -> usize {
    let l = match lower {
        Bound::Unbounded => 0,
        Bound::Included(_) => 1,
        Bound::Excluded(_) => 2,
    };
    let u = match upper {
        Bound::Unbounded => 0,
        Bound::Included(_) => 1,
        Bound::Excluded(_) => 2,
    };
    (l * 3 + u) * 2 + usize::from(reverse)
}

struct RowStatements {
    insert: PreparedStatement,
    insert_if_absent: PreparedStatement,
    delete_if_present: PreparedStatement,
    get: PreparedStatement,
    delete: PreparedStatement,
    scans: Vec<PreparedStatement>,
}

struct CounterStatements {
    add: PreparedStatement,
    get: PreparedStatement,
}

enum Statements {
    Rows(Box<RowStatements>),
    Counters(Box<CounterStatements>),
}

/// The CQL store. Cheap to clone.
#[derive(Clone)]
pub struct CqlStore {
    session: Arc<Session>,
    statements: Arc<HashMap<&'static str, Statements>>,
}

impl CqlStore {
    /// Prepares every statement for `tables` (which must exist: run [`migrate`] first).
    pub async fn new(
        session: Arc<Session>,
        config: &CqlConfig,
        tables: &[&'static Table],
    ) -> Result<Self, StoreError> {
        let ks = &config.keyspace;
        let prepare = |cql: String| {
            let session = session.clone();
            let consistency = config.consistency;
            async move {
                let mut p = session.prepare(cql).await.map_err(cql_err)?;
                p.set_consistency(consistency);
                p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
                Ok::<_, StoreError>(p)
            }
        };
        let mut statements = HashMap::new();
        for t in tables {
            t.validate()?;
            let name = format!("{ks}.{}", t.name);
            let s = match t.kind {
                TableKind::Rows => {
                    let mut scans = Vec::with_capacity(18);
                    for lower in ["", " AND c >= ?", " AND c > ?"] {
                        for upper in ["", " AND c <= ?", " AND c < ?"] {
                            for order in ["ASC", "DESC"] {
                                scans.push(
                                    prepare(format!(
                                        "SELECT c, v FROM {name} WHERE p = ?{lower}{upper} \
                                         ORDER BY c {order} LIMIT ?"
                                    ))
                                    .await?,
                                );
                            }
                        }
                    }
                    let mut get =
                        prepare(format!("SELECT v FROM {name} WHERE p = ? AND c = ?")).await?;
                    get.set_is_idempotent(true);
                    Statements::Rows(Box::new(RowStatements {
                        insert: prepare(format!(
                            "INSERT INTO {name} (p, c, v) VALUES (?, ?, ?) USING TTL ?"
                        ))
                        .await?,
                        insert_if_absent: prepare(format!(
                            "INSERT INTO {name} (p, c, v) VALUES (?, ?, ?) IF NOT EXISTS USING TTL ?"
                        ))
                        .await?,
                        get,
                        delete_if_present: prepare(format!(
                            "DELETE FROM {name} WHERE p = ? AND c = ? IF EXISTS"
                        ))
                        .await?,
                        delete: prepare(format!("DELETE FROM {name} WHERE p = ? AND c = ?")).await?,
                        scans,
                    }))
                }
                TableKind::Counters => Statements::Counters(Box::new(CounterStatements {
                    add: prepare(format!("UPDATE {name} SET n = n + ? WHERE p = ? AND c = ?"))
                        .await?,
                    get: prepare(format!("SELECT n FROM {name} WHERE p = ? AND c = ?")).await?,
                })),
            };
            statements.insert(t.name, s);
        }
        Ok(Self {
            session,
            statements: Arc::new(statements),
        })
    }

    /// Connects, migrates `migrations`, and prepares statements for `tables`.
    pub async fn open(
        config: &CqlConfig,
        migrations: &[Migration],
        tables: &[&'static Table],
    ) -> Result<Self, StoreError> {
        let session = Arc::new(connect(config).await?);
        migrate(&session, config, migrations).await?;
        Self::new(session, config, tables).await
    }

    /// The driver session (for health checks and operator tools).
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn rows(&self, table: &Table) -> Result<&RowStatements, StoreError> {
        check_kind(table, TableKind::Rows)?;
        match self.statements.get(table.name) {
            Some(Statements::Rows(s)) => Ok(s),
            _ => Err(StoreError::InvalidTable { name: table.name }),
        }
    }

    /// Executes a statement that returns rows.
    async fn query_rows(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<scylla::response::query_result::QueryRowsResult, StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(cql_err)?
            .into_rows_result()
            .map_err(cql_err)
    }

    fn counters(&self, table: &Table) -> Result<&CounterStatements, StoreError> {
        check_kind(table, TableKind::Counters)?;
        match self.statements.get(table.name) {
            Some(Statements::Counters(s)) => Ok(s),
            _ => Err(StoreError::InvalidTable { name: table.name }),
        }
    }
}

/// The `[applied]` column of a lightweight transaction's result. The other columns (the
/// existing row, when not applied) vary, so the row is read generically.
fn applied(result: &scylla::response::query_result::QueryRowsResult) -> Result<bool, StoreError> {
    let row = result.first_row::<CqlRow>().map_err(cql_err)?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        _ => Err(StoreError::Cql("LWT result without [applied]".into())),
    }
}

fn ttl_secs(table: &Table, ttl: Option<Duration>) -> Result<i32, StoreError> {
    // TTL 0 in CQL means "no TTL"; effective_ttl caps TTLs at 20 years (< i32::MAX s).
    Ok(effective_ttl(table, ttl)?.map_or(0, |s| s as i32))
}

impl Store for CqlStore {
    async fn put(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let s = self.rows(table)?;
        check_key(partition, clustering)?;
        check_value(value)?;
        let ttl = ttl_secs(table, ttl)?;
        self.session
            .execute_unpaged(&s.insert, (partition, clustering, value, ttl))
            .await
            .map_err(cql_err)?;
        Ok(())
    }

    async fn get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
        let s = self.rows(table)?;
        check_key(partition, clustering)?;
        let result = self.query_rows(&s.get, (partition, clustering)).await?;
        let row = result
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(cql_err)?;
        // A row written with an empty blob reads back as empty (not null) in CQL.
        Ok(row.map(|(v,)| Bytes::from(v.unwrap_or_default())))
    }

    async fn delete(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<(), StoreError> {
        let s = self.rows(table)?;
        check_key(partition, clustering)?;
        self.session
            .execute_unpaged(&s.delete, (partition, clustering))
            .await
            .map_err(cql_err)?;
        Ok(())
    }

    async fn scan(
        &self,
        table: &'static Table,
        partition: &[u8],
        scan: &Scan,
    ) -> Result<Page, StoreError> {
        let s = self.rows(table)?;
        check_key(partition, &[])?;
        let Some((lower, upper)) = scan.effective_bounds() else {
            return Ok(Page {
                rows: Vec::new(),
                cursor: None,
            });
        };
        let stmt = &s.scans[scan_index(&lower, &upper, scan.reverse)];
        let limit = scan.page_rows();
        // One extra row tells whether another page exists.
        let fetch = (limit + 1) as i32;
        let mut values: Vec<CqlValue> = vec![CqlValue::Blob(partition.to_vec())];
        for b in [&lower, &upper] {
            if let Bound::Included(c) | Bound::Excluded(c) = b {
                values.push(CqlValue::Blob(c.to_vec()));
            }
        }
        values.push(CqlValue::Int(fetch));
        let result = self.query_rows(stmt, values).await?;
        let mut rows = Vec::with_capacity(limit.min(64));
        let mut more = false;
        for r in result
            .rows::<(Vec<u8>, Option<Vec<u8>>)>()
            .map_err(cql_err)?
        {
            let (c, v) = r.map_err(cql_err)?;
            if rows.len() == limit {
                more = true;
                break;
            }
            rows.push(Row {
                clustering: Bytes::from(c),
                value: Bytes::from(v.unwrap_or_default()),
            });
        }
        Ok(Page::new(rows, more))
    }

    async fn batch(
        &self,
        table: &'static Table,
        partition: &[u8],
        mutations: &[Mutation],
    ) -> Result<(), StoreError> {
        let s = self.rows(table)?;
        if mutations.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(mutations.len());
        for m in mutations {
            match m {
                Mutation::Put {
                    clustering,
                    value,
                    ttl,
                } => {
                    check_key(partition, clustering)?;
                    check_value(value)?;
                    batch.append_statement(BatchStatement::PreparedStatement(s.insert.clone()));
                    values.push(vec![
                        CqlValue::Blob(partition.to_vec()),
                        CqlValue::Blob(clustering.to_vec()),
                        CqlValue::Blob(value.to_vec()),
                        CqlValue::Int(ttl_secs(table, *ttl)?),
                    ]);
                }
                Mutation::Delete { clustering } => {
                    check_key(partition, clustering)?;
                    batch.append_statement(BatchStatement::PreparedStatement(s.delete.clone()));
                    values.push(vec![
                        CqlValue::Blob(partition.to_vec()),
                        CqlValue::Blob(clustering.to_vec()),
                    ]);
                }
            }
        }
        batch.set_consistency(
            s.insert
                .get_consistency()
                .unwrap_or(Consistency::LocalQuorum),
        );
        self.session.batch(&batch, values).await.map_err(cql_err)?;
        Ok(())
    }

    async fn insert_if_absent(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let s = self.rows(table)?;
        check_key(partition, clustering)?;
        check_value(value)?;
        let ttl = ttl_secs(table, ttl)?;
        let result = self
            .query_rows(&s.insert_if_absent, (partition, clustering, value, ttl))
            .await?;
        applied(&result)
    }

    async fn delete_if_present(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<bool, StoreError> {
        let s = self.rows(table)?;
        check_key(partition, clustering)?;
        let result = self
            .query_rows(&s.delete_if_present, (partition, clustering))
            .await?;
        applied(&result)
    }

    async fn counter_add(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        delta: i64,
    ) -> Result<(), StoreError> {
        let s = self.counters(table)?;
        check_key(partition, clustering)?;
        self.session
            .execute_unpaged(
                &s.add,
                (scylla::value::Counter(delta), partition, clustering),
            )
            .await
            .map_err(cql_err)?;
        Ok(())
    }

    async fn counter_get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<i64, StoreError> {
        let s = self.counters(table)?;
        check_key(partition, clustering)?;
        let result = self.query_rows(&s.get, (partition, clustering)).await?;
        let row = result
            .maybe_first_row::<(Option<scylla::value::Counter>,)>()
            .map_err(cql_err)?;
        Ok(row.and_then(|(n,)| n).map_or(0, |c| c.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_options() {
        let c = CqlConfig::from_url("cql://127.0.0.1:9042/selfie").expect("valid");
        assert_eq!(c.nodes, vec!["127.0.0.1:9042"]);
        assert_eq!(c.keyspace, "selfie");
        assert!(c.replication.contains("SimpleStrategy"));
        let c = CqlConfig::from_url("cql://a,b:9043/prod?rf=3&dc=eu_west&consistency=quorum")
            .expect("valid");
        assert_eq!(c.nodes, vec!["a:9042", "b:9043"]);
        assert!(c.replication.contains("'eu_west': 3"));
        assert_eq!(c.consistency, Consistency::Quorum);
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "http://x/ks",
            "cql://x",
            "cql:///ks",
            "cql://x/Bad-Name",
            "cql://x/ks?rf=0",
            "cql://x/ks?dc=a'b",
            "cql://x/ks?what=1",
        ] {
            assert!(CqlConfig::from_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn scan_statements_are_indexed_uniquely() {
        let bounds = [
            Bound::Unbounded,
            Bound::Included(Bytes::new()),
            Bound::Excluded(Bytes::new()),
        ];
        let mut seen = std::collections::HashSet::new();
        for l in &bounds {
            for u in &bounds {
                for r in [false, true] {
                    assert!(seen.insert(scan_index(l, u, r)));
                }
            }
        }
        assert_eq!(seen.into_iter().max(), Some(17));
    }
}
