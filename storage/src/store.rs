//! The data model and the operations every backend implements.

use std::future::Future;
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;

/// The most rows one [`Store::scan`] returns; bounded pages keep every request bounded.
pub const MAX_PAGE_ROWS: usize = 1000;

/// What a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Rows with an opaque value (and an optional TTL).
    Rows,
    /// 64-bit counters, changed only by [`Store::counter_add`].
    Counters,
}

/// A table declaration: the single source of truth for both backends' schemas.
///
/// Key parts are documented by name: the bytes are built with [`crate::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Table name: `[a-z][a-z0-9_]*`, at most 48 characters (CQL's limit).
    pub name: &'static str,
    /// Rows or counters.
    pub kind: TableKind,
    /// Names of the partition key parts, in order (documentation and CQL comments).
    pub partition: &'static [&'static str],
    /// Names of the clustering key parts, in order.
    pub clustering: &'static [&'static str],
    /// TTL applied to rows written without one; `None` means rows live until deleted.
    pub default_ttl: Option<Duration>,
    /// Rows claimed or swapped conditionally (`insert_if_absent`, `delete_if_present`,
    /// `compare_and_set`, a [`Commit`]'s condition) — only allowed on such tables. On
    /// CQL every write to them is then a lightweight transaction, plain `put`s and
    /// `delete`s included: Paxos timestamps and coordinator timestamps must never mix
    /// on one row, or a coordinator with a slow clock writes a delete that an earlier
    /// conditional insert shadows.
    pub conditional: bool,
    /// What the table is for.
    pub doc: &'static str,
}

impl Table {
    /// Checks the declaration (name syntax and length).
    pub fn validate(&self) -> Result<(), StoreError> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self.name.as_bytes()[0].is_ascii_lowercase()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(StoreError::InvalidTable { name: self.name })
        }
    }
}

/// One row of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The clustering key.
    pub clustering: Bytes,
    /// The stored value.
    pub value: Bytes,
}

/// A write inside an atomic single-partition [`Store::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Insert or overwrite a row.
    Put {
        /// Clustering key.
        clustering: Bytes,
        /// Value.
        value: Bytes,
        /// Time to live; `None` uses the table's default.
        ttl: Option<Duration>,
    },
    /// Delete a row (absent rows are fine).
    Delete {
        /// Clustering key.
        clustering: Bytes,
    },
}

/// A row's address: table, partition key, clustering key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The table.
    pub table: &'static Table,
    /// Partition key.
    pub partition: Bytes,
    /// Clustering key.
    pub clustering: Bytes,
}

impl Cell {
    /// The row (or counter) at `partition`, `clustering` of `table`.
    pub fn new(
        table: &'static Table,
        partition: impl Into<Bytes>,
        clustering: impl Into<Bytes>,
    ) -> Self {
        Self {
            table,
            partition: partition.into(),
            clustering: clustering.into(),
        }
    }
}

/// What must hold for a [`Commit`] to apply; it is also the commit's first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No live row at `row`: insert `value` there (a claim).
    Absent {
        /// The row claimed.
        row: Cell,
        /// Its value.
        value: Bytes,
        /// Time to live; `None` uses the table's default.
        ttl: Option<Duration>,
    },
    /// A live row at `row`: delete it (a release).
    Present {
        /// The row released.
        row: Cell,
    },
    /// A live row at `row` whose value is exactly `expected`: replace it with `new`, or
    /// delete it when `new` is `None` (a versioned write).
    Equals {
        /// The row.
        row: Cell,
        /// The value it must hold.
        expected: Bytes,
        /// What it becomes.
        new: Option<Bytes>,
        /// Time to live of `new`; `None` uses the table's default.
        ttl: Option<Duration>,
    },
}

impl Condition {
    /// The row the condition is on.
    pub fn row(&self) -> &Cell {
        match self {
            Condition::Absent { row, .. }
            | Condition::Present { row }
            | Condition::Equals { row, .. } => row,
        }
    }
}

/// One write of a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or overwrite a row.
    Put {
        /// The row.
        row: Cell,
        /// Its value.
        value: Bytes,
        /// Time to live; `None` uses the table's default.
        ttl: Option<Duration>,
    },
    /// Delete a row (absent rows are fine).
    Delete {
        /// The row.
        row: Cell,
    },
    /// Add `delta` to a counter.
    Add {
        /// The counter (in a `Counters` table).
        counter: Cell,
        /// The change.
        delta: i64,
        /// The partition whose live rows the counter counts, if it is such a count
        /// (`table`, partition key): on CQL, a counter change lost to a failure is then
        /// repaired by counting those rows again.
        counts: Option<(&'static Table, Bytes)>,
    },
}

/// Writes that belong together, over any tables: an optional condition, then the
/// writes. On the embedded backend a commit is atomic and durable as one (one journal
/// entry, one `fsync`): after a crash it is wholly there or wholly absent. On CQL the
/// condition is a lightweight transaction and the writes follow in order; a commit cut
/// short by a failure is finished by the repair pass (`CqlStore::repair`): its writes
/// are applied again when its condition took effect, and its counters that count rows
/// ([`Write::Add::counts`]) are recounted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Commit {
    /// Checked first; when it does not hold nothing is written.
    pub condition: Option<Condition>,
    /// Applied when the condition holds (or there is none).
    pub writes: Vec<Write>,
}

impl Commit {
    /// A commit of `writes` with no condition.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same commit, applied only when `condition` holds.
    pub fn when(mut self, condition: Condition) -> Self {
        self.condition = Some(condition);
        self
    }

    /// Adds a put.
    pub fn put(mut self, row: Cell, value: impl Into<Bytes>, ttl: Option<Duration>) -> Self {
        self.writes.push(Write::Put {
            row,
            value: value.into(),
            ttl,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, row: Cell) -> Self {
        self.writes.push(Write::Delete { row });
        self
    }

    /// Adds a counter change; `counts` names the partition whose rows it counts.
    pub fn add(
        mut self,
        counter: Cell,
        delta: i64,
        counts: Option<(&'static Table, Bytes)>,
    ) -> Self {
        self.writes.push(Write::Add {
            counter,
            delta,
            counts,
        });
        self
    }

    /// Checks kinds, keys, values and TTLs before anything is written.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if let Some(c) = &self.condition {
            let row = c.row();
            check_conditional(row.table)?;
            check_key(&row.partition, &row.clustering)?;
            match c {
                Condition::Absent { value, ttl, .. } => {
                    check_value(value)?;
                    effective_ttl(row.table, *ttl)?;
                }
                Condition::Equals {
                    expected, new, ttl, ..
                } => {
                    check_value(expected)?;
                    if let Some(n) = new {
                        check_value(n)?;
                        effective_ttl(row.table, *ttl)?;
                    }
                }
                Condition::Present { .. } => {}
            }
        }
        let on_condition = |row: &Cell| self.condition.as_ref().is_some_and(|c| c.row() == row);
        for w in &self.writes {
            if let Write::Put { row, .. } | Write::Delete { row } = w
                && on_condition(row)
            {
                return Err(StoreError::Conditional {
                    table: row.table.name,
                    why: "row is written twice in one commit",
                });
            }
            match w {
                Write::Put { row, value, ttl } => {
                    check_kind(row.table, TableKind::Rows)?;
                    check_key(&row.partition, &row.clustering)?;
                    check_value(value)?;
                    effective_ttl(row.table, *ttl)?;
                }
                Write::Delete { row } => {
                    check_kind(row.table, TableKind::Rows)?;
                    check_key(&row.partition, &row.clustering)?;
                }
                Write::Add {
                    counter, counts, ..
                } => {
                    check_kind(counter.table, TableKind::Counters)?;
                    check_key(&counter.partition, &counter.clustering)?;
                    if let Some((t, p)) = counts {
                        check_kind(t, TableKind::Rows)?;
                        check_key(p, &[])?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// An opaque position in a partition: the clustering key of the last row returned.
/// The next page continues strictly after it (before it, for reverse scans).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(pub Bytes);

/// A bounded, paginated range scan within one partition.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Lower bound on the clustering key.
    pub start: Bound<Bytes>,
    /// Upper bound on the clustering key.
    pub end: Bound<Bytes>,
    /// Newest (greatest) first when true.
    pub reverse: bool,
    /// Rows per page, capped at [`MAX_PAGE_ROWS`].
    pub limit: usize,
    /// Continue after this cursor (from a previous [`Page`]).
    pub cursor: Option<Cursor>,
}

impl Scan {
    /// The whole partition, ascending, `limit` rows per page.
    pub fn all(limit: usize) -> Self {
        Self {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit,
            cursor: None,
        }
    }

    /// The same scan, descending.
    pub fn reversed(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// The same scan, continuing after `cursor`.
    pub fn after(mut self, cursor: Option<Cursor>) -> Self {
        self.cursor = cursor;
        self
    }

    /// The effective bounds once the cursor is applied, or `None` when the range is
    /// empty.
    pub fn effective_bounds(&self) -> Option<(Bound<Bytes>, Bound<Bytes>)> {
        let (mut start, mut end) = (self.start.clone(), self.end.clone());
        if let Some(Cursor(c)) = &self.cursor {
            if self.reverse {
                end = tighter_upper(end, Bound::Excluded(c.clone()));
            } else {
                start = tighter_lower(start, Bound::Excluded(c.clone()));
            }
        }
        let empty = match (&start, &end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        };
        (!empty).then_some((start, end))
    }

    /// The page size actually used.
    pub fn page_rows(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE_ROWS)
    }
}

fn tighter_lower(a: Bound<Bytes>, b: Bound<Bytes>) -> Bound<Bytes> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x > y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

fn tighter_upper(a: Bound<Bytes>, b: Bound<Bytes>) -> Bound<Bytes> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x < y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Rows in scan order.
    pub rows: Vec<Row>,
    /// Where the next page starts; `None` when the range is exhausted.
    pub cursor: Option<Cursor>,
}

impl Page {
    /// A page of `rows` in scan order; `more` says whether rows follow, in which case the
    /// cursor is the last row's clustering key.
    pub fn new(rows: Vec<Row>, more: bool) -> Self {
        let cursor = if more {
            rows.last().map(|r| Cursor(r.clustering.clone()))
        } else {
            None
        };
        Page { rows, cursor }
    }
}

/// Storage errors. Messages name the table and the limit, never row contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A table declaration is invalid.
    #[error("invalid table name {name:?}")]
    InvalidTable {
        /// The name.
        name: &'static str,
    },
    /// The table is not of the kind the operation needs (rows vs counters).
    #[error("table {table} is not a {expected:?} table")]
    WrongKind {
        /// The table.
        table: &'static str,
        /// The kind the operation needs.
        expected: TableKind,
    },
    /// A key or value exceeds a limit.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A TTL outside what the backends support (1 s to 20 years, whole seconds on CQL).
    #[error("invalid TTL {0:?}")]
    InvalidTtl(Duration),
    /// Stored bytes could not be decoded (corruption or a foreign writer).
    #[error("corrupt row in table {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// The embedded engine failed.
    #[error("embedded storage: {0}")]
    Embedded(#[from] fjall::Error),
    /// The CQL backend failed.
    #[error("cql: {0}")]
    Cql(String),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The store is shutting down (its writer is gone).
    #[error("store is closed")]
    Closed,
    /// Filesystem error (data directory).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A conditional write on a table not declared [`Table::conditional`], or a batch
    /// on one that is.
    #[error("table {table} {why}")]
    Conditional {
        /// The table.
        table: &'static str,
        /// What was wrong.
        why: &'static str,
    },
}

impl StoreError {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::InvalidTable { .. } => "invalid_table",
            StoreError::WrongKind { .. } => "wrong_kind",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::InvalidTtl(_) => "invalid_ttl",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Embedded(_) => "embedded",
            StoreError::Cql(_) => "cql",
            StoreError::Redis(_) => "redis",
            StoreError::Closed => "closed",
            StoreError::Io(_) => "io",
            StoreError::Conditional { .. } => "conditional",
        }
    }
}

/// Longest partition key, in bytes.
pub const MAX_PARTITION_KEY: usize = 1024;
/// Longest clustering key, in bytes.
pub const MAX_CLUSTERING_KEY: usize = 1024;
/// Largest value, in bytes. Media never goes through here (it has a blob store).
pub const MAX_VALUE: usize = 1 << 20;
/// Longest TTL (CQL's limit is 20 years).
pub const MAX_TTL: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

pub(crate) fn check_key(partition: &[u8], clustering: &[u8]) -> Result<(), StoreError> {
    if partition.len() > MAX_PARTITION_KEY {
        return Err(StoreError::TooLarge {
            what: "partition key",
            len: partition.len(),
            max: MAX_PARTITION_KEY,
        });
    }
    if clustering.len() > MAX_CLUSTERING_KEY {
        return Err(StoreError::TooLarge {
            what: "clustering key",
            len: clustering.len(),
            max: MAX_CLUSTERING_KEY,
        });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE {
        return Err(StoreError::TooLarge {
            what: "value",
            len: value.len(),
            max: MAX_VALUE,
        });
    }
    Ok(())
}

/// Resolves a row's TTL (explicit, else the table default) and checks it. TTLs are whole
/// seconds on every backend (CQL's granularity), rounded up.
pub(crate) fn effective_ttl(
    table: &Table,
    ttl: Option<Duration>,
) -> Result<Option<u32>, StoreError> {
    match ttl.or(table.default_ttl) {
        None => Ok(None),
        Some(d) if d.is_zero() || d > MAX_TTL => Err(StoreError::InvalidTtl(d)),
        Some(d) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            Ok(Some(
                u32::try_from(secs).map_err(|_| StoreError::InvalidTtl(d))?,
            ))
        }
    }
}

pub(crate) fn check_kind(table: &Table, expected: TableKind) -> Result<(), StoreError> {
    if table.kind == expected {
        Ok(())
    } else {
        Err(StoreError::WrongKind {
            table: table.name,
            expected,
        })
    }
}

/// Conditional writes need a conditional table.
pub(crate) fn check_conditional(table: &Table) -> Result<(), StoreError> {
    check_kind(table, TableKind::Rows)?;
    if table.conditional {
        Ok(())
    } else {
        Err(StoreError::Conditional {
            table: table.name,
            why: "is not declared conditional",
        })
    }
}

/// Batches are for plain tables: a conditional table's writes go through commits.
pub(crate) fn check_no_batch(table: &Table) -> Result<(), StoreError> {
    if table.conditional {
        Err(StoreError::Conditional {
            table: table.name,
            why: "is conditional: use a commit, not a batch",
        })
    } else {
        Ok(())
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, injectable for tests.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A commit accepted by [`Store::commit_queued`]: its durable outcome to come.
#[derive(Debug)]
pub enum Queued {
    /// Already known (the backend committed it whole).
    Done(Result<bool, StoreError>),
    /// Queued in the embedded writer; the answer comes once the group is on disk.
    Pending(tokio::sync::oneshot::Receiver<Result<bool, StoreError>>),
}

impl Queued {
    /// The commit's outcome once durable: `false` when its condition did not hold.
    pub async fn outcome(self) -> Result<bool, StoreError> {
        match self {
            Queued::Done(r) => r,
            Queued::Pending(rx) => rx.await.map_err(|_| StoreError::Closed)?,
        }
    }
}

/// The operations every durable backend implements, with the same semantics (checked by
/// [`crate::conformance`]).
///
/// - Every write is acknowledged only once durable (per the backend's policy).
/// - A row whose TTL has passed is invisible to every read.
/// - `batch` is atomic and isolated within its partition.
/// - `insert_if_absent`, `delete_if_present`, `compare_and_set` and a [`Commit`]'s
///   condition are linearizable: among concurrent callers exactly one wins. They are
///   allowed on [`Table::conditional`] tables only, and `batch` is not.
pub trait Store {
    /// Inserts or overwrites a row. `ttl: None` uses the table's default.
    fn put(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// [`Store::put`] of a row whose loss in a crash only costs a retry (an upload's
    /// record of a chunk whose bytes are already durable: lost, the chunk is sent
    /// again): acknowledged once applied and visible to reads, without waiting for the
    /// backend's durability point. Like every write it is never torn, and it never
    /// outlives a crash that loses a write acknowledged before it. Backends without a
    /// cheaper path make it a plain `put`.
    fn put_unsynced(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<(), StoreError>> {
        self.put(table, partition, clustering, value, ttl)
    }

    /// Reads one row's value.
    fn get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>>;

    /// Deletes one row.
    fn delete(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// One page of rows of a partition, in clustering order (or reverse).
    fn scan(
        &self,
        table: &'static Table,
        partition: &[u8],
        scan: &Scan,
    ) -> impl Future<Output = Result<Page, StoreError>>;

    /// Applies all mutations atomically within one partition.
    fn batch(
        &self,
        table: &'static Table,
        partition: &[u8],
        mutations: &[Mutation],
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// Inserts the row only if no live row has this key; `true` when inserted.
    fn insert_if_absent(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StoreError>>;

    /// Deletes the row only if a live row has this key; `true` when it did. Linearizable
    /// with `insert_if_absent`, so edges claimed with one and released with the other
    /// keep exact counts.
    fn delete_if_present(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>>;

    /// Replaces the row's value with `new` (deletes the row when `new` is `None`) only
    /// if a live row holds exactly `expected`; `true` when it did. A versioned write:
    /// read, change, and write back only if nobody wrote in between.
    fn compare_and_set(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool, StoreError>>;

    /// Applies `commit` (see [`Commit`] for what each backend guarantees); `false` when
    /// its condition did not hold and nothing was written.
    fn commit(&self, commit: &Commit) -> impl Future<Output = Result<bool, StoreError>>;

    /// [`Store::commit`] in two steps, for callers that pipeline commits on one key: the
    /// future resolves once the commit is queued, in order, behind every commit queued
    /// before it (so a commit queued later is applied after it and its condition sees
    /// its writes), and [`Queued::outcome`] once it is durable. Backends without one
    /// ordered writer (CQL) make the whole commit in the first step.
    fn commit_queued(&self, commit: &Commit) -> impl Future<Output = Result<Queued, StoreError>> {
        async move { Ok(Queued::Done(self.commit(commit).await)) }
    }

    /// Adds `delta` (possibly negative) to a counter.
    fn counter_add(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        delta: i64,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// Reads a counter (0 when never written).
    fn counter_get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> impl Future<Output = Result<i64, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn cursor_tightens_the_start_of_a_forward_scan() {
        let scan = Scan {
            start: Bound::Included(b(b"a")),
            ..Scan::all(10)
        }
        .after(Some(Cursor(b(b"c"))));
        assert_eq!(
            scan.effective_bounds(),
            Some((Bound::Excluded(b(b"c")), Bound::Unbounded))
        );
    }

    #[test]
    fn cursor_tightens_the_end_of_a_reverse_scan() {
        let scan = Scan {
            end: Bound::Excluded(b(b"z")),
            ..Scan::all(10)
        }
        .reversed()
        .after(Some(Cursor(b(b"m"))));
        assert_eq!(
            scan.effective_bounds(),
            Some((Bound::Unbounded, Bound::Excluded(b(b"m"))))
        );
    }

    #[test]
    fn a_cursor_past_the_end_gives_an_empty_range() {
        let scan = Scan {
            end: Bound::Included(b(b"c")),
            ..Scan::all(10)
        }
        .after(Some(Cursor(b(b"c"))));
        assert_eq!(scan.effective_bounds(), None);
    }

    #[test]
    fn ttl_is_rounded_up_to_whole_seconds_and_bounded() {
        let t = Table {
            name: "t",
            kind: TableKind::Rows,
            partition: &[],
            clustering: &[],
            default_ttl: None,
            conditional: false,
            doc: "",
        };
        assert_eq!(effective_ttl(&t, None).ok(), Some(None));
        assert_eq!(
            effective_ttl(&t, Some(Duration::from_millis(1500))).ok(),
            Some(Some(2))
        );
        assert!(effective_ttl(&t, Some(Duration::ZERO)).is_err());
        assert!(effective_ttl(&t, Some(MAX_TTL * 2)).is_err());
    }
}
