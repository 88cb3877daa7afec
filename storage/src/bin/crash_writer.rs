//! Test helper for `tests/crash_safety.rs`: writes atomic batches to an embedded store as
//! fast as it can and prints `ack <n>` after each acknowledgement, until it is killed.
//!
//! Usage: `selfie-storage-crash-writer DIR FIRST_BATCH`

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use selfie_storage::conformance::CRASH;
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Mutation, Store, SystemClock};

/// Rows per batch.
const ROWS: u64 = 4;
/// Concurrent writers (so that group commit batches several writes per fsync).
const WRITERS: u64 = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: crash_writer DIR FIRST_BATCH")?;
    let first: u64 = args
        .next()
        .ok_or("usage: crash_writer DIR FIRST_BATCH")?
        .parse()?;
    let store = EmbeddedStore::open(&dir, &[&CRASH], Arc::new(SystemClock))?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        let writers = (0..WRITERS).map(|w| {
            let store = store.clone();
            async move {
                let mut n = first + w;
                loop {
                    let partition = KeyBuilder::new().u64(n).build();
                    let mutations: Vec<Mutation> = (0..ROWS)
                        .map(|r| Mutation::Put {
                            clustering: KeyBuilder::new().u64(r).build(),
                            value: Bytes::from(n.to_be_bytes().to_vec()),
                            ttl: None,
                        })
                        .collect();
                    store.batch(&CRASH, &partition, &mutations).await?;
                    // Printed only after the acknowledgement: what the parent reads was
                    // acknowledged as durable.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {n}")?;
                    out.flush()?;
                    n += WRITERS;
                }
                #[allow(unreachable_code)]
                Ok::<(), Box<dyn std::error::Error>>(())
            }
        });
        futures::future::try_join_all(writers).await.map(|_| ())
    })
}
