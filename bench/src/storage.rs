//! `storage` scenario: home-timeline appends and newest-20 page reads.
//!
//! Workload: `timelines` partitions; every append adds one row (clustering key: a
//! Snowflake id, value: 64 bytes, like a timeline entry pointing at a post) to a random
//! timeline, `concurrency` appends in flight; then `reads` reads of the newest 20 rows of
//! a random timeline, one at a time. Each write is durable (fsync) before it counts.
//!
//! Baseline (embedded only): the same operations directly on fjall in the same run, with
//! the same durability: rows inserted in groups of `concurrency` as one fjall batch, one
//! `persist(SyncAll)` per group, and reads as a reverse prefix scan over a snapshot.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use fjall::{Database, KeyspaceCreateOptions, PersistMode, Readable};
use futures::StreamExt;
use selfie_storage::cql::{CqlConfig, CqlStore, Migration};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Clock, Scan, Store, SystemClock, Table, TableKind};

use crate::report::{Latencies, Line};

static TIMELINE: Table = Table {
    name: "bench_timeline",
    kind: TableKind::Rows,
    partition: &["user_id"],
    clustering: &["entry_id"],
    default_ttl: None,
    conditional: false,
    doc: "benchmark home timelines",
};

/// Arguments of the `storage` scenario.
#[derive(clap::Args)]
pub struct Args {
    /// Rows to append (the table size reads run against).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Number of timelines (partitions).
    #[arg(long, default_value_t = 1_000)]
    timelines: u64,
    /// Appends in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Page reads (newest 20 rows of a random timeline).
    #[arg(long, default_value_t = 100_000)]
    reads: u64,
    /// Run against a CQL server instead (e.g. cql://127.0.0.1:9042/bench); no baseline.
    #[arg(long)]
    cql_url: Option<String>,
    /// Directory for the embedded data (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Also print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn timeline_key(user: u64) -> Bytes {
    KeyBuilder::new().u64(user).build()
}

const VALUE: [u8; 64] = [42; 64];

/// Appends through a [`Store`], `concurrency` in flight.
async fn store_appends<S: Store>(store: &S, args: &Args) -> anyhow::Result<Line> {
    let mut ids = IdGenerator::new(1, 0).context("id generator")?;
    let work: Vec<(Bytes, Bytes)> = (0..args.rows)
        .map(|_| {
            let user = rand::random_range(0..args.timelines);
            let id = ids.next(SystemClock.now_ms());
            (timeline_key(user), KeyBuilder::new().u64(id.0).build())
        })
        .collect();
    let start = Instant::now();
    let mut lat = Latencies::new();
    let mut results = futures::stream::iter(work.iter().map(|(p, c)| async move {
        let t = Instant::now();
        store
            .put(&TIMELINE, p, c, &VALUE, None)
            .await
            .map(|()| t.elapsed())
    }))
    .buffer_unordered(args.concurrency);
    while let Some(r) = results.next().await {
        lat.record(r?);
    }
    Ok(Line {
        name: "append (storage layer)".into(),
        ops: args.rows,
        elapsed: start.elapsed(),
        lat,
    })
}

async fn store_reads<S: Store>(store: &S, args: &Args) -> anyhow::Result<Line> {
    let mut lat = Latencies::new();
    let start = Instant::now();
    let mut rows = 0usize;
    for _ in 0..args.reads {
        let p = timeline_key(rand::random_range(0..args.timelines));
        let t = Instant::now();
        let page = store.scan(&TIMELINE, &p, &Scan::all(20).reversed()).await?;
        lat.record(t.elapsed());
        rows += page.rows.len();
    }
    anyhow::ensure!(rows > 0, "reads returned nothing");
    Ok(Line {
        name: "read newest 20 (storage layer)".into(),
        ops: args.reads,
        elapsed: start.elapsed(),
        lat,
    })
}

fn raw_key(user: u64, entry: u64) -> Vec<u8> {
    // The natural fjall layout: user | entry, big-endian.
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&user.to_be_bytes());
    k.extend_from_slice(&entry.to_be_bytes());
    k
}

fn raw_append(
    dir: &std::path::Path,
    args: &Args,
) -> anyhow::Result<(Line, Database, fjall::Keyspace)> {
    let db = Database::builder(dir).open()?;
    let ks = db.keyspace("timeline", KeyspaceCreateOptions::default)?;
    let mut ids = IdGenerator::new(1, 0).context("id generator")?;
    let mut lat = Latencies::new();
    let start = Instant::now();
    let mut done = 0;
    while done < args.rows {
        let group = (args.rows - done).min(args.concurrency as u64);
        let t = Instant::now();
        // The strongest simple baseline: the group as one fjall batch, one fsync.
        let mut batch = db.batch();
        for _ in 0..group {
            let user = rand::random_range(0..args.timelines);
            let id = ids.next(SystemClock.now_ms());
            batch.insert(&ks, raw_key(user, id.0), VALUE.to_vec());
        }
        batch.commit()?;
        db.persist(PersistMode::SyncAll)?;
        let d = t.elapsed();
        for _ in 0..group {
            lat.record(d);
        }
        done += group;
    }
    let append = Line {
        name: "append (raw fjall)".into(),
        ops: args.rows,
        elapsed: start.elapsed(),
        lat,
    };
    Ok((append, db, ks))
}

/// Page reads alternating between raw fjall and the store, on the same random timelines,
/// so that both see the same machine state (compactions, cache, noise).
fn interleaved_reads(
    rt: &tokio::runtime::Runtime,
    db: &Database,
    ks: &fjall::Keyspace,
    store: &EmbeddedStore,
    args: &Args,
) -> anyhow::Result<(Line, Line)> {
    let (mut raw_lat, mut our_lat) = (Latencies::new(), Latencies::new());
    let (mut raw_time, mut our_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let (mut raw_rows, mut our_rows) = (0usize, 0usize);
    for i in 0..args.reads {
        let user = rand::random_range(0..args.timelines);
        let mut raw = || -> anyhow::Result<()> {
            let t = Instant::now();
            let page: Vec<(fjall::Slice, fjall::Slice)> = db
                .snapshot()
                .prefix(ks, user.to_be_bytes())
                .rev()
                .take(20)
                .map(|g| g.into_inner())
                .collect::<Result<_, _>>()?;
            let d = t.elapsed();
            raw_lat.record(d);
            raw_time += d;
            raw_rows += page.len();
            Ok(())
        };
        let p = timeline_key(user);
        let mut ours = || -> anyhow::Result<()> {
            let t = Instant::now();
            let page = rt.block_on(store.scan(&TIMELINE, &p, &Scan::all(20).reversed()))?;
            let d = t.elapsed();
            our_lat.record(d);
            our_time += d;
            our_rows += page.rows.len();
            Ok(())
        };
        // Alternate which goes first.
        if i % 2 == 0 {
            raw()?;
            ours()?;
        } else {
            ours()?;
            raw()?;
        }
    }
    anyhow::ensure!(
        raw_rows == our_rows,
        "raw fjall and the store returned different rows"
    );
    Ok((
        Line {
            name: "read newest 20 (raw fjall)".into(),
            ops: args.reads,
            elapsed: raw_time,
            lat: raw_lat,
        },
        Line {
            name: "read newest 20 (storage layer)".into(),
            ops: args.reads,
            elapsed: our_time,
            lat: our_lat,
        },
    ))
}

/// Runs the scenario and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut lines = Vec::new();
    println!(
        "storage: {} rows over {} timelines, {} appends in flight, {} page reads",
        args.rows, args.timelines, args.concurrency, args.reads
    );
    if let Some(url) = &args.cql_url {
        let config = CqlConfig::from_url(url)?;
        static TABLES: &[&Table] = &[&TIMELINE];
        let migrations = [Migration {
            version: 1,
            name: "bench timeline",
            tables: TABLES,
            statements: &[],
        }];
        rt.block_on(async {
            let store = CqlStore::open(&config, &migrations, &[&TIMELINE]).await?;
            lines.push(store_appends(&store, &args).await?);
            lines.push(store_reads(&store, &args).await?);
            anyhow::Ok(())
        })?;
        for l in &mut lines {
            l.name = l.name.replace("storage layer", "CQL");
        }
    } else {
        let tmp = tempfile::tempdir()?;
        let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
        let (raw_append, db, ks) = raw_append(&base.join("raw"), &args)?;
        let store = EmbeddedStore::open(base.join("store"), &[&TIMELINE], Arc::new(SystemClock))?;
        let append = rt.block_on(store_appends(&store, &args))?;
        let (raw_read, read) = interleaved_reads(&rt, &db, &ks, &store, &args)?;
        let ratio =
            |ours: &Line, raw: &Line, q: f64| ours.lat.p(q) as f64 / raw.lat.p(q).max(1) as f64;
        println!(
            "ratios (storage layer ÷ raw fjall): append throughput {:.2}x (raw/ours time {:.2}), \
             append p99 {:.2}x; read throughput {:.2}x, read p50 {:.2}x, read p99 {:.2}x",
            append.rate() / raw_append.rate(),
            raw_append.rate() / append.rate(),
            ratio(&append, &raw_append, 0.99),
            read.rate() / raw_read.rate(),
            ratio(&read, &raw_read, 0.5),
            ratio(&read, &raw_read, 0.99),
        );
        lines.extend([raw_append, append, raw_read, read]);
    }
    for l in &lines {
        println!("{}", l.text());
    }
    if args.json {
        let v: Vec<_> = lines.iter().map(Line::json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
