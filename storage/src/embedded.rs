//! The embedded backend: fjall (a pure-Rust LSM tree) in a data directory.
//!
//! Layout: one fjall keyspace per declared table. A row's fjall key is
//! `u16 BE partition length | partition | clustering`, so one partition is one
//! contiguous, ordered key range. A row's fjall value is a one-byte header (0: no
//! expiry, 1: followed by the expiry as Unix milliseconds, u64 BE) and the value.
//! Counters are 8-byte big-endian `i64`.
//!
//! **Durability policy (group commit).** Every write goes to one writer thread. It takes
//! all writes waiting in its queue (up to [`GROUP_MAX`]), applies each one as an atomic
//! fjall batch, then makes the journal durable once with `fsync`
//! (`PersistMode::SyncAll`), and only then acknowledges every write of the group. A write
//! is therefore acknowledged only when it is on disk, and concurrent writers share one
//! `fsync`. A batch is one journal entry: after a crash it is either wholly there or
//! wholly absent. The one exception is [`Store::put_unsynced`], acknowledged once
//! applied (before its group's `fsync`, which still makes it durable in journal order):
//! for rows whose loss only costs a retry.
//!
//! **Linearizability.** The single writer applies conditional writes and commits
//! (`insert_if_absent`, `compare_and_set`, [`Commit`]s) and counter increments in queue
//! order, reading state that includes every earlier write, so they are linearizable
//! within the process. A commit (its condition, its rows in any tables, its counters) is
//! one fjall batch: one journal entry, made durable by the group's one `fsync`.
//!
//! **Restart time.** The journal is capped at 64 MiB ([`MAX_JOURNALING`]) and memtables at
//! 8 MiB per table: past the cap fjall flushes memtables to segments and drops old
//! journals, so a restart replays at most that much whatever the data size.
//!
//! **TTL.** Expired rows are invisible to reads at once (checked against the injected
//! [`Clock`]) and are purged in the background by a fjall compaction filter.
//!
//! Reads run on the caller's thread: they hit fjall's memtables and block cache. This
//! store is shared by the shards of one node (fjall is internally concurrent); it must
//! not be opened twice on one directory (fjall locks it).

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use lsm_tree::compaction::{CompactionFilter, Factory, ItemAccessor, Verdict};
use tokio::sync::{mpsc, oneshot};

use crate::store::{check_key, check_kind, check_no_batch, check_value, effective_ttl};
use crate::{
    Cell, Clock, Commit, Condition, Mutation, Page, Queued, Row, Scan, Store, StoreError, Table,
    TableKind, Write,
};

/// Most writes made durable by one `fsync`.
pub const GROUP_MAX: usize = 512;
/// Writes that may wait for the writer before callers are made to wait (backpressure).
const QUEUE: usize = 8192;

const NO_EXPIRY: u8 = 0;
const EXPIRES: u8 = 1;

/// The embedded store. Cheap to clone; all clones share one database and one writer.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    tables: HashMap<&'static str, Keyspace>,
    clock: Arc<dyn Clock>,
    writer: Option<mpsc::Sender<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    db: Database,
}

struct Command {
    op: WriteOp,
    /// Acknowledged only after the group's fsync (`false`: once applied, before it).
    synced: bool,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

enum WriteOp {
    /// Atomic puts (`Some`) and deletes (`None`) in one keyspace.
    Batch {
        keyspace: Keyspace,
        items: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
    /// A condition on one row, then writes: one atomic fjall batch.
    Commit(Box<CommitOp>),
    CounterAdd {
        keyspace: Keyspace,
        key: Vec<u8>,
        delta: i64,
    },
}

/// A [`Commit`] with its keys and values encoded for fjall.
#[derive(Default)]
struct CommitOp {
    condition: Option<(Keyspace, Vec<u8>, Check)>,
    items: Vec<(Keyspace, Vec<u8>, Option<Vec<u8>>)>,
    adds: Vec<(Keyspace, Vec<u8>, i64)>,
}

/// What the condition's row must be, and what it becomes.
enum Check {
    /// Absent; then this stored value.
    Absent(Vec<u8>),
    /// Present; then deleted.
    Present,
    /// Holding exactly this value; then the stored value, or deleted.
    Equals(Vec<u8>, Option<Vec<u8>>),
}

/// The journal size at which fjall flushes memtables and drops old journals: it bounds
/// what a restart must replay (fjall's default, 512 MiB, let a write-heavy node replay
/// for seconds). 64 MiB is fjall's smallest.
const MAX_JOURNALING: u64 = 64 * 1024 * 1024;
/// Memtable size per table (fjall's default is 64 MiB): smaller memtables flush sooner,
/// so old journals can go sooner too.
const MAX_MEMTABLE: u64 = 8 * 1024 * 1024;

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with the given tables.
    pub fn open(
        dir: impl AsRef<Path>,
        tables: &[&'static Table],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir.as_ref())?;
        let mut ttl_tables = Vec::new();
        for t in tables {
            t.validate()?;
            if t.kind == TableKind::Rows {
                ttl_tables.push(t.name.to_string());
            }
        }
        let filter_clock = clock.clone();
        let db = Database::builder(dir.as_ref())
            .with_compaction_filter_factories(Arc::new(move |name: &str| {
                ttl_tables.iter().any(|t| t == name).then(|| {
                    Arc::new(TtlPurge {
                        clock: filter_clock.clone(),
                    }) as Arc<dyn Factory>
                })
            }))
            .max_journaling_size(MAX_JOURNALING)
            .open()?;
        let mut map = HashMap::new();
        for t in tables {
            let options = || KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE);
            map.insert(t.name, db.keyspace(t.name, options)?);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_db = db.clone();
        let writer_clock = clock.clone();
        let thread = std::thread::Builder::new()
            .name("selfie-storage-writer".into())
            .spawn(move || writer_loop(writer_db, rx, writer_clock))?;
        Ok(Self {
            inner: Arc::new(Inner {
                tables: map,
                clock,
                writer: Some(tx),
                thread: Mutex::new(Some(thread)),
                db,
            }),
        })
    }

    fn keyspace(&self, table: &Table) -> Result<&Keyspace, StoreError> {
        self.inner
            .tables
            .get(table.name)
            .ok_or(StoreError::InvalidTable { name: table.name })
    }

    async fn submit(&self, op: WriteOp) -> Result<bool, StoreError> {
        self.submit_with(op, true).await
    }

    async fn submit_with(&self, op: WriteOp, synced: bool) -> Result<bool, StoreError> {
        let (reply, rx) = oneshot::channel();
        let writer = self.inner.writer.as_ref().ok_or(StoreError::Closed)?;
        writer
            .send(Command { op, synced, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A checked, encoded put of one row (for [`Store::put`] and `put_unsynced`).
    fn put_op(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<WriteOp, StoreError> {
        check_kind(table, TableKind::Rows)?;
        check_key(partition, clustering)?;
        let value = self.encode_value(table, value, ttl)?;
        let keyspace = self.keyspace(table)?.clone();
        Ok(WriteOp::Batch {
            keyspace,
            items: vec![(row_key(partition, clustering), Some(value))],
        })
    }

    fn encode_value(
        &self,
        table: &Table,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Vec<u8>, StoreError> {
        check_value(value)?;
        let mut out = Vec::with_capacity(value.len() + 9);
        match effective_ttl(table, ttl)? {
            None => out.push(NO_EXPIRY),
            Some(secs) => {
                out.push(EXPIRES);
                let at = self.inner.clock.now_ms() + u64::from(secs) * 1000;
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
        out.extend_from_slice(value);
        Ok(out)
    }

    fn cell(&self, cell: &Cell) -> Result<(Keyspace, Vec<u8>), StoreError> {
        Ok((
            self.keyspace(cell.table)?.clone(),
            row_key(&cell.partition, &cell.clustering),
        ))
    }

    /// Encodes a checked commit for the writer.
    fn commit_op(&self, commit: &Commit) -> Result<CommitOp, StoreError> {
        let mut op = CommitOp::default();
        if let Some(c) = &commit.condition {
            let (ks, key) = self.cell(c.row())?;
            let table = c.row().table;
            let check = match c {
                Condition::Absent { value, ttl, .. } => {
                    Check::Absent(self.encode_value(table, value, *ttl)?)
                }
                Condition::Present { .. } => Check::Present,
                Condition::Equals {
                    expected, new, ttl, ..
                } => Check::Equals(
                    expected.to_vec(),
                    new.as_ref()
                        .map(|n| self.encode_value(table, n, *ttl))
                        .transpose()?,
                ),
            };
            op.condition = Some((ks, key, check));
        }
        for w in &commit.writes {
            match w {
                Write::Put { row, value, ttl } => {
                    let (ks, key) = self.cell(row)?;
                    op.items
                        .push((ks, key, Some(self.encode_value(row.table, value, *ttl)?)));
                }
                Write::Delete { row } => {
                    let (ks, key) = self.cell(row)?;
                    op.items.push((ks, key, None));
                }
                Write::Add { counter, delta, .. } => {
                    let (ks, key) = self.cell(counter)?;
                    op.adds.push((ks, key, *delta));
                }
            }
        }
        Ok(op)
    }

    /// Forces a major compaction of `table` (TTL purge included). Blocking; for tests and
    /// operator tools.
    pub fn compact(&self, table: &Table) -> Result<(), StoreError> {
        let ks = self.keyspace(table)?;
        ks.rotate_memtable_and_wait()?;
        ks.major_compact()?;
        Ok(())
    }

    /// Rows physically present in `table`, expired or not (tests, diagnostics).
    pub fn physical_len(&self, table: &Table) -> Result<usize, StoreError> {
        Ok(self.keyspace(table)?.len()?)
    }

    /// Bytes on disk.
    pub fn disk_space(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.disk_space()?)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has drained; wait for it so that the
        // directory is unlocked when the last handle is gone.
        self.writer.take();
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

fn writer_loop(db: Database, mut rx: mpsc::Receiver<Command>, clock: Arc<dyn Clock>) {
    let mut group: Vec<(Command, Result<bool, StoreError>)> = Vec::with_capacity(GROUP_MAX);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        // Consecutive plain batches are committed together as one fjall batch (one journal
        // entry): a superset of atomic batches is still atomic. Conditional writes flush
        // it first, so that they read every earlier write.
        let mut combined = db.batch();
        let mut pending: Vec<Command> = Vec::new();
        while let Some(cmd) = next.take() {
            if let WriteOp::Batch { keyspace, items } = &cmd.op {
                for (key, value) in items {
                    match value {
                        Some(v) => combined.insert(keyspace, key.as_slice(), v.as_slice()),
                        None => combined.remove(keyspace, key.as_slice()),
                    }
                }
                pending.push(cmd);
            } else {
                flush(&mut combined, &db, &mut pending, &mut group);
                let result = apply(&db, &cmd.op, clock.now_ms());
                group.push((cmd, result));
            }
            if group.len() + pending.len() < GROUP_MAX {
                next = rx.try_recv().ok();
            }
        }
        flush(&mut combined, &db, &mut pending, &mut group);
        // Unsynced writes are applied and visible: acknowledged before the fsync (which
        // makes them durable with the rest, in journal order).
        let mut i = 0;
        while i < group.len() {
            if group[i].0.synced {
                i += 1;
            } else {
                let (cmd, result) = group.swap_remove(i);
                let _ = cmd.reply.send(result);
            }
        }
        // One fsync for the whole group, then the acknowledgements.
        let persisted = db.persist(PersistMode::SyncAll);
        for (cmd, result) in group.drain(..) {
            let result = match (&persisted, result) {
                (Ok(()), r) => r,
                (Err(e), _) => Err(StoreError::Io(std::io::Error::other(format!(
                    "journal fsync failed: {e}"
                )))),
            };
            let _ = cmd.reply.send(result);
        }
    }
}

/// Commits the combined batch and records its commands' result.
fn flush(
    combined: &mut fjall::OwnedWriteBatch,
    db: &Database,
    pending: &mut Vec<Command>,
    group: &mut Vec<(Command, Result<bool, StoreError>)>,
) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::replace(combined, db.batch());
    let result = batch.commit();
    for cmd in pending.drain(..) {
        let r = match &result {
            Ok(()) => Ok(true),
            Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                "commit failed: {e}"
            )))),
        };
        group.push((cmd, r));
    }
}

fn apply(db: &Database, op: &WriteOp, now_ms: u64) -> Result<bool, StoreError> {
    match op {
        WriteOp::Batch { keyspace, items } => {
            let mut batch = db.batch();
            for (key, value) in items {
                match value {
                    Some(v) => batch.insert(keyspace, key.as_slice(), v.as_slice()),
                    None => batch.remove(keyspace, key.as_slice()),
                }
            }
            batch.commit()?;
            Ok(true)
        }
        WriteOp::Commit(c) => apply_commit(db, c, now_ms),
        WriteOp::CounterAdd {
            keyspace,
            key,
            delta,
        } => {
            let current = match keyspace.get(key)? {
                Some(v) => decode_counter(&v).ok_or(StoreError::Corrupt {
                    table: "counter",
                    reason: "counter is not 8 bytes",
                })?,
                None => 0,
            };
            let next = current.wrapping_add(*delta);
            keyspace.insert(key.as_slice(), next.to_be_bytes().to_vec())?;
            Ok(true)
        }
    }
}

/// Checks a commit's condition against the current state and applies it and its writes
/// as one batch (one journal entry). Runs on the writer thread, after every earlier
/// write, so the check and the writes are atomic together.
fn apply_commit(db: &Database, c: &CommitOp, now_ms: u64) -> Result<bool, StoreError> {
    let mut batch = db.batch();
    if let Some((ks, key, check)) = &c.condition {
        let stored = ks.get(key)?;
        let live = stored
            .as_deref()
            .and_then(|v| value_offset(v, now_ms).map(|at| &v[at..]));
        let then = match (check, live) {
            (Check::Absent(value), None) => Some(value),
            (Check::Present, Some(_)) => None,
            (Check::Equals(expected, new), Some(v)) if v == expected.as_slice() => new.as_ref(),
            _ => return Ok(false),
        };
        match then {
            Some(v) => batch.insert(ks, key.as_slice(), v.as_slice()),
            None => batch.remove(ks, key.as_slice()),
        }
    }
    for (ks, key, value) in &c.items {
        match value {
            Some(v) => batch.insert(ks, key.as_slice(), v.as_slice()),
            None => batch.remove(ks, key.as_slice()),
        }
    }
    // Each counter once, with every change the commit makes to it.
    let mut counters: Vec<(&Keyspace, &[u8], i64)> = Vec::with_capacity(c.adds.len());
    for (ks, key, delta) in &c.adds {
        if let Some(e) = counters
            .iter_mut()
            .find(|e| e.0 == ks && e.1 == key.as_slice())
        {
            e.2 = e.2.wrapping_add(*delta);
            continue;
        }
        let current = match ks.get(key)? {
            Some(v) => decode_counter(&v).ok_or(StoreError::Corrupt {
                table: "counter",
                reason: "counter is not 8 bytes",
            })?,
            None => 0,
        };
        counters.push((ks, key, current.wrapping_add(*delta)));
    }
    for (ks, key, n) in counters {
        batch.insert(ks, key, n.to_be_bytes().to_vec());
    }
    batch.commit()?;
    Ok(true)
}

/// Offset of the value in a stored row, or `None` when it has expired (or is corrupt).
fn value_offset(stored: &[u8], now_ms: u64) -> Option<usize> {
    match *stored.first()? {
        NO_EXPIRY => Some(1),
        EXPIRES => {
            let at = stored.get(1..9)?;
            let at = u64::from_be_bytes(at.try_into().ok()?);
            (at > now_ms).then_some(9)
        }
        _ => None,
    }
}

/// The value of a stored row, or `None` when it has expired.
#[cfg(test)]
fn decode_value(stored: &[u8], now_ms: u64) -> Option<&[u8]> {
    match stored.split_first()? {
        (&NO_EXPIRY, rest) => Some(rest),
        (&EXPIRES, rest) => {
            let (at, value) = rest.split_first_chunk::<8>()?;
            (u64::from_be_bytes(*at) > now_ms).then_some(value)
        }
        _ => None,
    }
}

fn decode_counter(stored: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(*stored.first_chunk::<8>()?))
}

fn row_key(partition: &[u8], clustering: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + partition.len() + clustering.len());
    // check_key bounds the partition to MAX_PARTITION_KEY (< u16::MAX).
    key.extend_from_slice(&(partition.len() as u16).to_be_bytes());
    key.extend_from_slice(partition);
    key.extend_from_slice(clustering);
    key
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

struct TtlPurge {
    clock: Arc<dyn Clock>,
}

// The filter runs on fjall's compaction workers.
impl Factory for TtlPurge {
    fn name(&self) -> &str {
        "selfie-ttl"
    }

    fn make_filter(
        &self,
        _ctx: &lsm_tree::compaction::filter::Context,
    ) -> Box<dyn CompactionFilter> {
        Box::new(TtlFilter {
            now_ms: self.clock.now_ms(),
        })
    }
}

impl std::panic::RefUnwindSafe for TtlPurge {}

struct TtlFilter {
    now_ms: u64,
}

impl CompactionFilter for TtlFilter {
    fn filter_item(
        &mut self,
        item: ItemAccessor<'_>,
        _ctx: &lsm_tree::compaction::filter::Context,
    ) -> lsm_tree::Result<Verdict> {
        let value = item.value()?;
        if value.first() == Some(&EXPIRES) && value_offset(&value, self.now_ms).is_none() {
            Ok(Verdict::Remove)
        } else {
            Ok(Verdict::Keep)
        }
    }
}

impl Store for EmbeddedStore {
    async fn put(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let op = self.put_op(table, partition, clustering, value, ttl)?;
        self.submit(op).await.map(|_| ())
    }

    async fn put_unsynced(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let op = self.put_op(table, partition, clustering, value, ttl)?;
        self.submit_with(op, false).await.map(|_| ())
    }

    async fn get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<Option<Bytes>, StoreError> {
        check_kind(table, TableKind::Rows)?;
        check_key(partition, clustering)?;
        let stored = self.keyspace(table)?.get(row_key(partition, clustering))?;
        let now = self.inner.clock.now_ms();
        Ok(stored.and_then(|v| {
            let at = value_offset(&v, now)?;
            Some(Bytes::from(v).slice(at..))
        }))
    }

    async fn delete(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<(), StoreError> {
        check_key(partition, clustering)?;
        let keyspace = self.keyspace(table)?.clone();
        self.submit(WriteOp::Batch {
            keyspace,
            items: vec![(row_key(partition, clustering), None)],
        })
        .await
        .map(|_| ())
    }

    async fn scan(
        &self,
        table: &'static Table,
        partition: &[u8],
        scan: &Scan,
    ) -> Result<Page, StoreError> {
        check_kind(table, TableKind::Rows)?;
        check_key(partition, &[])?;
        let keyspace = self.keyspace(table)?;
        let Some((start, end)) = scan.effective_bounds() else {
            return Ok(Page {
                rows: Vec::new(),
                cursor: None,
            });
        };
        let prefix = row_key(partition, &[]);
        let lower = match start {
            Bound::Unbounded => Bound::Included(prefix.clone()),
            Bound::Included(c) => Bound::Included(row_key(partition, &c)),
            Bound::Excluded(c) => Bound::Excluded(row_key(partition, &c)),
        };
        let upper = match end {
            Bound::Unbounded => prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Included(c) => Bound::Included(row_key(partition, &c)),
            Bound::Excluded(c) => Bound::Excluded(row_key(partition, &c)),
        };
        let limit = scan.page_rows();
        let now = self.inner.clock.now_ms();
        // A snapshot: a scan never sees part of a batch (`Keyspace::range` reads the
        // latest state item by item, which can interleave with a committing batch).
        let iter = self
            .inner
            .db
            .snapshot()
            .range::<Vec<u8>, _>(keyspace, (lower, upper));
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = if scan.reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        let mut rows = Vec::with_capacity(limit.min(64));
        let mut more = false;
        for guard in iter {
            let (key, value) = guard.into_inner()?;
            let Some(at) = value_offset(&value, now) else {
                continue;
            };
            if rows.len() == limit {
                more = true;
                break;
            }
            // Zero-copy: fjall's slices are `Bytes` (feature `bytes_1`).
            rows.push(Row {
                clustering: Bytes::from(key).slice(prefix.len()..),
                value: Bytes::from(value).slice(at..),
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
        check_kind(table, TableKind::Rows)?;
        check_no_batch(table)?;
        let mut items = Vec::with_capacity(mutations.len());
        for m in mutations {
            match m {
                Mutation::Put {
                    clustering,
                    value,
                    ttl,
                } => {
                    check_key(partition, clustering)?;
                    items.push((
                        row_key(partition, clustering),
                        Some(self.encode_value(table, value, *ttl)?),
                    ));
                }
                Mutation::Delete { clustering } => {
                    check_key(partition, clustering)?;
                    items.push((row_key(partition, clustering), None));
                }
            }
        }
        let keyspace = self.keyspace(table)?.clone();
        self.submit(WriteOp::Batch { keyspace, items })
            .await
            .map(|_| ())
    }

    async fn insert_if_absent(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let row = Cell::new(
            table,
            Bytes::copy_from_slice(partition),
            Bytes::copy_from_slice(clustering),
        );
        let value = Bytes::copy_from_slice(value);
        self.commit(&Commit::new().when(Condition::Absent { row, value, ttl }))
            .await
    }

    async fn delete_if_present(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<bool, StoreError> {
        let row = Cell::new(
            table,
            Bytes::copy_from_slice(partition),
            Bytes::copy_from_slice(clustering),
        );
        self.commit(&Commit::new().when(Condition::Present { row }))
            .await
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
        let row = Cell::new(
            table,
            Bytes::copy_from_slice(partition),
            Bytes::copy_from_slice(clustering),
        );
        let condition = Condition::Equals {
            row,
            expected: Bytes::copy_from_slice(expected),
            new: new.map(Bytes::copy_from_slice),
            ttl,
        };
        self.commit(&Commit::new().when(condition)).await
    }

    async fn commit(&self, commit: &Commit) -> Result<bool, StoreError> {
        commit.check()?;
        let op = self.commit_op(commit)?;
        self.submit(WriteOp::Commit(Box::new(op))).await
    }

    async fn commit_queued(&self, commit: &Commit) -> Result<Queued, StoreError> {
        commit.check()?;
        let op = self.commit_op(commit)?;
        let (reply, rx) = oneshot::channel();
        let writer = self.inner.writer.as_ref().ok_or(StoreError::Closed)?;
        // In the writer's queue, in order: it applies commands as they were sent.
        writer
            .send(Command {
                op: WriteOp::Commit(Box::new(op)),
                synced: true,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Queued::Pending(rx))
    }

    async fn counter_add(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
        delta: i64,
    ) -> Result<(), StoreError> {
        check_kind(table, TableKind::Counters)?;
        check_key(partition, clustering)?;
        let keyspace = self.keyspace(table)?.clone();
        self.submit(WriteOp::CounterAdd {
            keyspace,
            key: row_key(partition, clustering),
            delta,
        })
        .await
        .map(|_| ())
    }

    async fn counter_get(
        &self,
        table: &'static Table,
        partition: &[u8],
        clustering: &[u8],
    ) -> Result<i64, StoreError> {
        check_kind(table, TableKind::Counters)?;
        check_key(partition, clustering)?;
        match self.keyspace(table)?.get(row_key(partition, clustering))? {
            Some(v) => decode_counter(&v).ok_or(StoreError::Corrupt {
                table: table.name,
                reason: "counter is not 8 bytes",
            }),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(&[0, 3, 1, 2]), Some(vec![0, 3, 1, 3]));
        assert_eq!(prefix_end(&[0, 3, 0xFF]), Some(vec![0, 4]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn expired_values_decode_as_absent() {
        let mut v = vec![EXPIRES];
        v.extend_from_slice(&100u64.to_be_bytes());
        v.extend_from_slice(b"x");
        assert_eq!(decode_value(&v, 99), Some(&b"x"[..]));
        assert_eq!(decode_value(&v, 100), None);
        assert_eq!(decode_value(&[NO_EXPIRY, b'y'], u64::MAX), Some(&b"y"[..]));
        assert_eq!(decode_value(&[7], 0), None);
        assert_eq!(decode_value(&[EXPIRES, 1, 2], 0), None);
    }
}
