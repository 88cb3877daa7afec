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
//! **Conditional tables.** Lightweight transactions and plain writes must never mix on
//! one row (Paxos ballots and coordinator timestamps are different clocks: a plain
//! delete from a coordinator whose clock is behind is shadowed by an earlier conditional
//! insert). So conditional writes are refused on tables not declared
//! [`Table::conditional`], and on those that are, `put` and `delete` are lightweight
//! transactions too (an update-if-exists / insert-if-not-exists pair, a delete-if-exists).
//!
//! **Commits.** A [`Commit`] of several rows is recorded in [`PENDING_COMMITS`] first and
//! cleared when done; [`CqlStore::repair`] finishes the ones a failure cut short.

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

use crate::store::{
    check_conditional, check_key, check_kind, check_no_batch, check_value, effective_ttl,
};
use crate::{
    Cell, Commit, Condition, Mutation, Page, Row, Scan, Store, StoreError, Table, TableKind, Write,
};

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
    session
        .query_unpaged(create_table_cql(ks, &PENDING_COMMITS), &[])
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
    update_if_exists: PreparedStatement,
    update_if_equals: PreparedStatement,
    delete_if_equals: PreparedStatement,
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

/// Commits cut short, until the repair pass has finished them: partition = a bucket
/// (0..[`PENDING_BUCKETS`]), clustering = (written at, Unix ms; a random tie-breaker),
/// value = the encoded commit. Created by [`migrate`] in every keyspace.
pub static PENDING_COMMITS: Table = Table {
    name: "selfie_pending_commits",
    kind: TableKind::Rows,
    partition: &["bucket"],
    clustering: &["written_at_ms", "nonce"],
    default_ttl: None,
    conditional: false,
    doc: "multi-row commits in flight, finished by the repair pass after a failure",
};

/// Buckets of [`PENDING_COMMITS`] (spread over nodes, scanned one by one).
pub const PENDING_BUCKETS: u8 = 16;

/// The CQL store. Cheap to clone.
#[derive(Clone)]
pub struct CqlStore {
    session: Arc<Session>,
    statements: Arc<HashMap<&'static str, Statements>>,
    tables: Arc<HashMap<&'static str, &'static Table>>,
    /// Set by [`CqlStore::drop_keyspace_when_dropped`]: shared by every clone.
    reaper: Option<Arc<KeyspaceReaper>>,
}

/// Drops a keyspace when dropped itself (the last clone of a test store).
struct KeyspaceReaper {
    nodes: Vec<String>,
    keyspace: String,
}

impl Drop for KeyspaceReaper {
    fn drop(&mut self) {
        // The store's own session runs on the runtime that is dropping it (possibly a
        // current-thread one, blocked here): a fresh session on a thread of its own.
        let nodes = std::mem::take(&mut self.nodes);
        let ks = std::mem::take(&mut self.keyspace);
        let worker = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let drop = async {
                    let session = SessionBuilder::new()
                        .known_nodes(&nodes)
                        .connection_timeout(Duration::from_secs(10))
                        .build()
                        .await
                        .map_err(|e| e.to_string())?;
                    session
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                };
                tokio::time::timeout(Duration::from_secs(120), drop)
                    .await
                    .map_err(|_| "timed out".to_string())?
            })
        });
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "dropping a test keyspace failed"),
            Err(_) => tracing::warn!("dropping a test keyspace panicked"),
        }
    }
}

/// What a [`CqlStore::repair`] pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Commits finished (their rows filled in, their counters recounted).
    pub commits: usize,
    /// Counters set to the number of rows they count.
    pub counters_fixed: usize,
    /// Counter changes of cut-short commits that count nothing and so cannot be
    /// recounted (they may be off by that change).
    pub unrepairable: usize,
    /// Pending entries that could not be read (dropped).
    pub corrupt: usize,
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
        let mut known = HashMap::new();
        let pending: &'static Table = &PENDING_COMMITS;
        for t in tables.iter().copied().chain([pending]) {
            t.validate()?;
            if known.insert(t.name, t).is_some() {
                continue;
            }
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
                        update_if_exists: prepare(format!(
                            "UPDATE {name} USING TTL ? SET v = ? WHERE p = ? AND c = ? IF EXISTS"
                        ))
                        .await?,
                        update_if_equals: prepare(format!(
                            "UPDATE {name} USING TTL ? SET v = ? WHERE p = ? AND c = ? IF v = ?"
                        ))
                        .await?,
                        delete_if_equals: prepare(format!(
                            "DELETE FROM {name} WHERE p = ? AND c = ? IF v = ?"
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
            tables: Arc::new(known),
            reaper: None,
        })
    }

    /// Drops `config`'s keyspace, with all its data, when the last clone of this store
    /// is dropped (blocking that drop until the server answers, at most two minutes).
    ///
    /// For tests, which open a fresh keyspace each: every table holds server memory
    /// (about a megabyte of heap) until its keyspace is dropped, and a suite's worth of
    /// keyspaces left behind runs a test server out of heap. Never for production stores.
    #[must_use]
    pub fn drop_keyspace_when_dropped(mut self, config: &CqlConfig) -> Self {
        self.reaper = Some(Arc::new(KeyspaceReaper {
            nodes: config.nodes.clone(),
            keyspace: config.keyspace.clone(),
        }));
        self
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
        if table.conditional {
            return self
                .put_conditionally(s, partition, clustering, value, ttl)
                .await;
        }
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
        if table.conditional {
            self.query_rows(&s.delete_if_present, (partition, clustering))
                .await?;
            return Ok(());
        }
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
        check_no_batch(table)?;
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
        check_conditional(table)?;
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
        check_conditional(table)?;
        check_key(partition, clustering)?;
        let result = self
            .query_rows(&s.delete_if_present, (partition, clustering))
            .await?;
        applied(&result)
    }

    async fn compare_and_set(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let s = self.rows(table)?;
        check_conditional(table)?;
        check_key(partition, clustering)?;
        check_value(expected)?;
        let result = match new {
            Some(v) => {
                check_value(v)?;
                let ttl = ttl_secs(table, ttl)?;
                self.query_rows(
                    &s.update_if_equals,
                    (ttl, v, partition, clustering, expected),
                )
                .await?
            }
            None => {
                self.query_rows(&s.delete_if_equals, (partition, clustering, expected))
                    .await?
            }
        };
        applied(&result)
    }

    async fn commit(&self, commit: &Commit) -> Result<bool, StoreError> {
        commit.check()?;
        // A commit of more than one step is recorded first, so that the repair pass can
        // finish it if this node fails half-way.
        let pending = if commit.writes.is_empty() {
            None
        } else {
            Some(self.record_pending(commit).await?)
        };
        if let Some(condition) = &commit.condition
            && !self.apply_condition(condition).await?
        {
            if let Some(key) = pending {
                self.delete(&PENDING_COMMITS, &key.0, &key.1).await?;
            }
            return Ok(false);
        }
        for w in &commit.writes {
            self.apply_write(w).await?;
        }
        if let Some(key) = pending {
            self.delete(&PENDING_COMMITS, &key.0, &key.1).await?;
        }
        Ok(true)
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

impl CqlStore {
    /// A `put` on a conditional table, as lightweight transactions only: update the row
    /// if it exists, else insert it if it does not (again, if another writer raced).
    async fn put_conditionally(
        &self,
        s: &RowStatements,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: i32,
    ) -> Result<(), StoreError> {
        for _ in 0..8 {
            let updated = self
                .query_rows(&s.update_if_exists, (ttl, value, partition, clustering))
                .await?;
            if applied(&updated)? {
                return Ok(());
            }
            let inserted = self
                .query_rows(&s.insert_if_absent, (partition, clustering, value, ttl))
                .await?;
            if applied(&inserted)? {
                return Ok(());
            }
        }
        Err(StoreError::Cql(
            "conditional put kept racing with deletes".into(),
        ))
    }

    async fn apply_condition(&self, c: &Condition) -> Result<bool, StoreError> {
        let r = c.row();
        match c {
            Condition::Absent { value, ttl, .. } => {
                self.insert_if_absent(r.table, &r.partition, &r.clustering, value, *ttl)
                    .await
            }
            Condition::Present { .. } => {
                self.delete_if_present(r.table, &r.partition, &r.clustering)
                    .await
            }
            Condition::Equals {
                expected, new, ttl, ..
            } => {
                self.compare_and_set(
                    r.table,
                    &r.partition,
                    &r.clustering,
                    expected,
                    new.as_deref(),
                    *ttl,
                )
                .await
            }
        }
    }

    async fn apply_write(&self, w: &Write) -> Result<(), StoreError> {
        match w {
            Write::Put { row, value, ttl } => {
                self.put(row.table, &row.partition, &row.clustering, value, *ttl)
                    .await
            }
            Write::Delete { row } => {
                self.delete(row.table, &row.partition, &row.clustering)
                    .await
            }
            Write::Add { counter, delta, .. } => {
                self.counter_add(
                    counter.table,
                    &counter.partition,
                    &counter.clustering,
                    *delta,
                )
                .await
            }
        }
    }

    /// Records a commit about to run; returns its key in [`PENDING_COMMITS`].
    async fn record_pending(&self, commit: &Commit) -> Result<(Bytes, Bytes), StoreError> {
        let bucket = rand::random::<u8>() % PENDING_BUCKETS;
        let p = crate::key::KeyBuilder::new().u64(u64::from(bucket)).build();
        let c = crate::key::KeyBuilder::new()
            .u64(unix_ms())
            .u64(rand::random())
            .build();
        let value = pending::encode(commit);
        self.put(&PENDING_COMMITS, &p, &c, &value, None).await?;
        Ok((p, c))
    }

    /// Finishes the commits that were cut short (recorded more than `older_than` ago and
    /// never cleared): when a commit's condition shows its effect, the rows it should
    /// have written are written (a creating commit's only where missing; a releasing or
    /// replacing one's also over an existing row, e.g. a tombstone) and
    /// the rows it should have removed are removed; every counter it changed that
    /// counts rows is set to the number of those rows. Run by every node at start and
    /// then periodically; concurrent passes are harmless.
    pub async fn repair(&self, older_than: Duration) -> Result<Repaired, StoreError> {
        let mut done = Repaired::default();
        let cutoff = crate::key::KeyBuilder::new()
            .u64(unix_ms().saturating_sub(older_than.as_millis() as u64))
            .build();
        for bucket in 0..PENDING_BUCKETS {
            let p = crate::key::KeyBuilder::new().u64(u64::from(bucket)).build();
            let mut scan = Scan::all(100);
            scan.end = Bound::Excluded(cutoff.clone());
            loop {
                let page = Store::scan(self, &PENDING_COMMITS, &p, &scan).await?;
                for row in &page.rows {
                    match pending::decode(&row.value, &self.tables) {
                        Some(commit) => self.finish(&commit, &mut done).await?,
                        None => done.corrupt += 1,
                    }
                    self.delete(&PENDING_COMMITS, &p, &row.clustering).await?;
                }
                match page.cursor {
                    Some(c) => scan.cursor = Some(c),
                    None => break,
                }
            }
        }
        Ok(done)
    }

    async fn finish(&self, commit: &Commit, done: &mut Repaired) -> Result<(), StoreError> {
        let row_is = |v: Option<Bytes>, want: Option<&Bytes>| v.as_ref() == want;
        let took_effect = match &commit.condition {
            None => true,
            Some(c) => {
                let r = c.row();
                let now = self.get(r.table, &r.partition, &r.clustering).await?;
                match c {
                    Condition::Absent { value, .. } => row_is(now, Some(value)),
                    Condition::Present { .. } => now.is_none(),
                    Condition::Equals { new, .. } => row_is(now, new.as_ref()),
                }
            }
        };
        // A commit that creates (`Absent`) fills in only rows still missing: a later
        // commit may have changed them since. One that releases or replaces (`Present`,
        // `Equals`) writes what it ends with, a tombstone say, even over an existing row:
        // its condition showing its effect means nothing has re-created what it ended.
        let overwrite = matches!(
            commit.condition,
            Some(Condition::Present { .. } | Condition::Equals { .. })
        );
        for w in &commit.writes {
            match w {
                Write::Put { row, value, ttl } if took_effect => {
                    let now = self.get(row.table, &row.partition, &row.clustering).await?;
                    if overwrite || now.is_none() {
                        self.put(row.table, &row.partition, &row.clustering, value, *ttl)
                            .await?;
                    }
                }
                // Only a commit whose condition still shows it: otherwise a later commit
                // may have written the row again.
                Write::Delete { row } if took_effect && commit.condition.is_some() => {
                    self.delete(row.table, &row.partition, &row.clustering)
                        .await?;
                }
                Write::Add {
                    counter,
                    counts: Some((table, partition)),
                    ..
                } if self.recount(counter, table, partition).await? => done.counters_fixed += 1,
                Write::Add { counts: None, .. } => done.unrepairable += 1,
                _ => {}
            }
        }
        done.commits += 1;
        Ok(())
    }

    /// Sets `counter` to the number of live rows of `partition` in `table`; `true` when
    /// it was off. Counts again until two counts agree with the counter, so a change
    /// made meanwhile is not lost.
    async fn recount(
        &self,
        counter: &Cell,
        table: &'static Table,
        partition: &[u8],
    ) -> Result<bool, StoreError> {
        let mut fixed = false;
        for _ in 0..5 {
            let mut rows = 0i64;
            let mut scan = Scan::all(crate::MAX_PAGE_ROWS);
            loop {
                let page = Store::scan(self, table, partition, &scan).await?;
                rows += page.rows.len() as i64;
                match page.cursor {
                    Some(c) => scan.cursor = Some(c),
                    None => break,
                }
            }
            let now = self
                .counter_get(counter.table, &counter.partition, &counter.clustering)
                .await?;
            if now == rows {
                return Ok(fixed);
            }
            self.counter_add(
                counter.table,
                &counter.partition,
                &counter.clustering,
                rows - now,
            )
            .await?;
            fixed = true;
        }
        Ok(fixed)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The encoding of a pending commit: length-prefixed fields, tables by name.
pub mod pending {
    use std::collections::HashMap;
    use std::time::Duration;

    use bytes::Bytes;

    use crate::{Cell, Commit, Condition, Table, Write};

    const VERSION: u8 = 1;

    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }

    fn cell(out: &mut Vec<u8>, c: &Cell) {
        bytes(out, c.table.name.as_bytes());
        bytes(out, &c.partition);
        bytes(out, &c.clustering);
    }

    fn ttl(out: &mut Vec<u8>, t: Option<Duration>) {
        let ms = t.map_or(u64::MAX, |d| {
            d.as_millis().min(u128::from(u64::MAX - 1)) as u64
        });
        out.extend_from_slice(&ms.to_be_bytes());
    }

    /// Encodes `commit`.
    pub fn encode(commit: &Commit) -> Vec<u8> {
        let mut out = vec![VERSION];
        match &commit.condition {
            None => out.push(0),
            Some(Condition::Absent { row, value, ttl: t }) => {
                out.push(1);
                cell(&mut out, row);
                bytes(&mut out, value);
                ttl(&mut out, *t);
            }
            Some(Condition::Present { row }) => {
                out.push(2);
                cell(&mut out, row);
            }
            Some(Condition::Equals {
                row,
                expected,
                new,
                ttl: t,
            }) => {
                out.push(3);
                cell(&mut out, row);
                bytes(&mut out, expected);
                match new {
                    Some(n) => {
                        out.push(1);
                        bytes(&mut out, n);
                    }
                    None => out.push(0),
                }
                ttl(&mut out, *t);
            }
        }
        out.extend_from_slice(&(commit.writes.len() as u32).to_be_bytes());
        for w in &commit.writes {
            match w {
                Write::Put { row, value, ttl: t } => {
                    out.push(1);
                    cell(&mut out, row);
                    bytes(&mut out, value);
                    ttl(&mut out, *t);
                }
                Write::Delete { row } => {
                    out.push(2);
                    cell(&mut out, row);
                }
                Write::Add {
                    counter,
                    delta,
                    counts,
                } => {
                    out.push(3);
                    cell(&mut out, counter);
                    out.extend_from_slice(&delta.to_be_bytes());
                    match counts {
                        Some((t, p)) => {
                            out.push(1);
                            bytes(&mut out, t.name.as_bytes());
                            bytes(&mut out, p);
                        }
                        None => out.push(0),
                    }
                }
            }
        }
        out
    }

    struct Reader<'a> {
        rest: &'a [u8],
        tables: &'a HashMap<&'static str, &'static Table>,
    }

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, tail) = self.rest.split_at_checked(n)?;
            self.rest = tail;
            Some(head)
        }
        fn u8(&mut self) -> Option<u8> {
            self.take(1).map(|b| b[0])
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<Bytes> {
            let n = self.u32()? as usize;
            self.take(n).map(Bytes::copy_from_slice)
        }
        fn table(&mut self) -> Option<&'static Table> {
            let name = self.bytes()?;
            let name = std::str::from_utf8(&name).ok()?;
            self.tables.get(name).copied()
        }
        fn cell(&mut self) -> Option<Cell> {
            Some(Cell::new(self.table()?, self.bytes()?, self.bytes()?))
        }
        fn ttl(&mut self) -> Option<Option<Duration>> {
            let ms = self.u64()?;
            Some((ms != u64::MAX).then(|| Duration::from_millis(ms)))
        }
    }

    /// Decodes a commit written by [`encode`], resolving tables by name in `tables`;
    /// `None` when it is corrupt or names an unknown table.
    pub fn decode(b: &[u8], tables: &HashMap<&'static str, &'static Table>) -> Option<Commit> {
        let mut r = Reader { rest: b, tables };
        if r.u8()? != VERSION {
            return None;
        }
        let condition = match r.u8()? {
            0 => None,
            1 => Some(Condition::Absent {
                row: r.cell()?,
                value: r.bytes()?,
                ttl: r.ttl()?,
            }),
            2 => Some(Condition::Present { row: r.cell()? }),
            3 => {
                let row = r.cell()?;
                let expected = r.bytes()?;
                let new = match r.u8()? {
                    0 => None,
                    _ => Some(r.bytes()?),
                };
                Some(Condition::Equals {
                    row,
                    expected,
                    new,
                    ttl: r.ttl()?,
                })
            }
            _ => return None,
        };
        let n = r.u32()? as usize;
        let mut writes = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            writes.push(match r.u8()? {
                1 => Write::Put {
                    row: r.cell()?,
                    value: r.bytes()?,
                    ttl: r.ttl()?,
                },
                2 => Write::Delete { row: r.cell()? },
                3 => {
                    let counter = r.cell()?;
                    let delta = r.u64()? as i64;
                    let counts = match r.u8()? {
                        0 => None,
                        _ => Some((r.table()?, r.bytes()?)),
                    };
                    Write::Add {
                        counter,
                        delta,
                        counts,
                    }
                }
                _ => return None,
            });
        }
        r.rest.is_empty().then_some(Commit { condition, writes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_commits_round_trip() {
        static CLAIMS: Table = Table {
            name: "claims",
            kind: TableKind::Rows,
            partition: &["p"],
            clustering: &["c"],
            default_ttl: None,
            conditional: true,
            doc: "",
        };
        static COUNTS: Table = Table {
            name: "counts",
            kind: TableKind::Counters,
            partition: &["p"],
            clustering: &["which"],
            default_ttl: None,
            conditional: false,
            doc: "",
        };
        let tables: HashMap<&'static str, &'static Table> =
            [("claims", &CLAIMS), ("counts", &COUNTS)].into();
        let commit = Commit::new()
            .when(Condition::Equals {
                row: Cell::new(&CLAIMS, &b"a"[..], &b"b"[..]),
                expected: Bytes::from_static(b"old"),
                new: Some(Bytes::from_static(b"new")),
                ttl: Some(Duration::from_secs(5)),
            })
            .put(Cell::new(&CLAIMS, &b"x"[..], &b""[..]), &b"v"[..], None)
            .delete(Cell::new(&CLAIMS, &b"y"[..], &b"z"[..]))
            .add(
                Cell::new(&COUNTS, &b"x"[..], &b"n"[..]),
                -3,
                Some((&CLAIMS, Bytes::from_static(b"x"))),
            );
        let encoded = pending::encode(&commit);
        assert_eq!(pending::decode(&encoded, &tables), Some(commit));
        assert_eq!(
            pending::decode(&encoded[..encoded.len() - 1], &tables),
            None
        );
        assert_eq!(pending::decode(&encoded, &HashMap::new()), None);
    }

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
