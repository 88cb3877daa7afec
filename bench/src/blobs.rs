//! `blobs` scenario: the embedded media store's file I/O, io_uring against the portable
//! `std::fs` path, side by side in one run on one current-thread runtime (as a shard
//! drives them).
//!
//! Three operations per engine, in alternating rounds (std, io_uring, std, ...) so that
//! both see the same disk and page-cache state:
//! - **staged chunk writes**: one upload of `--mib` MiB in `--chunk-kib` chunks,
//!   `--parallel` in flight, each written at its offset and `fdatasync`ed before it
//!   counts (what an upload chunk costs before it is acknowledged);
//! - **blob puts**: `--mib` MiB as 1 MiB objects, each written to a temporary file,
//!   `fsync`ed, renamed into place and its directory `fsync`ed;
//! - **ranged reads**: `--reads` reads of `--read-kib` at random offsets of those
//!   objects (what a download piece costs; warm page cache).

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use selfie_services::media::uring::{BlobIo, Io};
use selfie_services::media::{BlobStore, LocalBlobs, Staging};

use crate::report::{Latencies, Line};

/// Arguments of the `blobs` scenario.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// MiB written per operation and engine, per round.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Bytes of a staged chunk, KiB.
    #[arg(long, default_value_t = 2048)]
    chunk_kib: usize,
    /// Operations in flight.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Ranged reads per engine, per round.
    #[arg(long, default_value_t = 4096)]
    reads: usize,
    /// Bytes per ranged read, KiB.
    #[arg(long, default_value_t = 256)]
    read_kib: usize,
    /// Rounds (each runs both engines).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory to write in (on the disk under test); default: a temporary directory.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Totals of one operation on one engine over the rounds.
struct Totals {
    name: String,
    ops: u64,
    bytes: u64,
    elapsed: std::time::Duration,
    lat: Latencies,
}

impl Totals {
    fn new(name: String) -> Self {
        Self {
            name,
            ops: 0,
            bytes: 0,
            elapsed: std::time::Duration::ZERO,
            lat: Latencies::new(),
        }
    }

    fn add(&mut self, line: Line, bytes: u64) {
        self.ops += line.ops;
        self.bytes += bytes;
        self.elapsed += line.elapsed;
        self.lat.merge(&line.lat);
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn line(self) -> Line {
        Line {
            name: self.name,
            ops: self.ops,
            elapsed: self.elapsed,
            lat: self.lat,
        }
    }
}

/// Runs `ops` futures made by `op(i)`, `parallel` at a time, timing each.
async fn timed<F, Fut>(name: &str, ops: usize, parallel: usize, op: F) -> anyhow::Result<Line>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = selfie_services::Result<()>>,
{
    let mut lat = Latencies::new();
    let started = Instant::now();
    let mut runs = futures::stream::iter((0..ops).map(|i| {
        let f = op(i);
        async move {
            let t = Instant::now();
            f.await.map(|()| t.elapsed())
        }
    }))
    .buffer_unordered(parallel.max(1));
    while let Some(r) = runs.next().await {
        lat.record(r.with_context(|| format!("{name} failed"))?);
    }
    Ok(Line {
        name: name.to_string(),
        ops: ops as u64,
        elapsed: started.elapsed(),
        lat,
    })
}

fn noise(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// One round of the three operations on `io`, under `dir`.
async fn round(
    io: Io,
    dir: &std::path::Path,
    args: &Args,
    data: &Bytes,
    round: usize,
) -> anyhow::Result<[(Line, u64); 3]> {
    let engine = io.name();
    let root = dir.join(format!("{engine}-{round}"));
    let staging = Staging::open_with(root.join("staging"), io.clone())?;
    let store = LocalBlobs::open_with(root.join("blobs"), io)?;
    let chunk = args.chunk_kib << 10;
    let total = args.mib << 20;
    let chunks = total.div_ceil(chunk);
    let write = timed("staged chunk write", chunks, args.parallel, |i| {
        let start = i * chunk;
        let bytes = data.slice(start..(start + chunk).min(total)).to_vec();
        staging.write_at(1, start as u64, bytes)
    })
    .await?;
    let object = 1 << 20;
    let objects = total / object;
    let put = timed("blob put", objects, args.parallel, |i| {
        let bytes = data.slice(i * object..(i + 1) * object);
        store.put(format!("r/{i}/large.jpg"), bytes)
    })
    .await?;
    let read_len = args.read_kib << 10;
    let reads = timed("ranged read", args.reads, args.parallel, |i| {
        let key = format!("r/{}/large.jpg", (i * 7919) % objects.max(1));
        let at = ((i * 104_729) % (object - read_len.min(object)).max(1)) as u64;
        let store = &store;
        async move {
            let b = store.read(key, at, read_len).await?;
            if b.len() == read_len {
                Ok(())
            } else {
                Err(selfie_services::Error::Internal("short read"))
            }
        }
    })
    .await?;
    staging.remove(1).await?;
    let _ = std::fs::remove_dir_all(&root);
    Ok([
        (write, total as u64),
        (put, (objects * object) as u64),
        (reads, (args.reads * read_len) as u64),
    ])
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let uring = Io::select(BlobIo::IoUring).context("io_uring unavailable on this machine")?;
    let engines = [Io::Std, uring];
    let data = noise(args.mib << 20, 0x9E37_79B9_7F4A_7C15);
    println!(
        "blobs: {} MiB per operation, {} KiB chunks, {} in flight, {} reads of {} KiB, {} rounds, in {}",
        args.mib,
        args.chunk_kib,
        args.parallel,
        args.reads,
        args.read_kib,
        args.rounds,
        tmp.path().display()
    );
    let ops = ["staged chunk write", "blob put", "ranged read"];
    let mut totals: Vec<Vec<Totals>> = engines
        .iter()
        .map(|io| {
            ops.iter()
                .map(|op| Totals::new(format!("{op} ({})", io.name())))
                .collect()
        })
        .collect();
    for r in 0..args.rounds {
        for (e, io) in engines.iter().enumerate() {
            let lines = rt.block_on(round(io.clone(), tmp.path(), &args, &data, r))?;
            for (o, (line, bytes)) in lines.into_iter().enumerate() {
                totals[e][o].add(line, bytes);
            }
        }
    }
    let mut json = Vec::new();
    let mut ratios = Vec::new();
    for o in 0..ops.len() {
        let std_rate = totals[0][o].mib_per_s();
        let uring_rate = totals[1][o].mib_per_s();
        ratios.push(format!(
            "{} {:.2}x (p50 {:.2}x, p99 {:.2}x)",
            ops[o],
            uring_rate / std_rate.max(f64::EPSILON),
            totals[1][o].lat.p(0.5) as f64 / totals[0][o].lat.p(0.5).max(1) as f64,
            totals[1][o].lat.p(0.99) as f64 / totals[0][o].lat.p(0.99).max(1) as f64,
        ));
    }
    for engine in totals {
        for t in engine {
            let mib = t.mib_per_s();
            let line = t.line();
            println!("{}  {:>8.1} MiB/s", line.text(), mib);
            let mut j = line.json();
            j["mib_per_second"] = serde_json::json!(mib);
            json.push(j);
        }
    }
    println!("ratios (io_uring ÷ std): {}", ratios.join("; "));
    println!(
        "{}",
        serde_json::json!({ "scenario": "blobs", "lines": json })
    );
    Ok(())
}
