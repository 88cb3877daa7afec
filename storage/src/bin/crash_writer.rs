//! Test helper for `tests/crash_safety.rs`: writes atomic batches (`ack <n>`) and
//! commits (`commit <n>`: a claim, four rows and a counter) to an embedded store as fast
//! as it can, printing each after its acknowledgement, until it is killed.
//!
//! Usage: `selfie-storage-crash-writer DIR FIRST_BATCH`

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use selfie_storage::conformance::{CRASH, CRASH_CLAIMS, CRASH_COUNTS};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Cell, Commit, Condition, Mutation, Store, SystemClock};

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
    let store = EmbeddedStore::open(
        &dir,
        &[&CRASH, &CRASH_CLAIMS, &CRASH_COUNTS],
        Arc::new(SystemClock),
    )?;
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
                    // Odd writers commit: the claim, the rows and the count together.
                    let what = if w % 2 == 0 {
                        store.batch(&CRASH, &partition, &mutations).await?;
                        "ack"
                    } else {
                        let mut commit = Commit::new()
                            .when(Condition::Absent {
                                row: Cell::new(&CRASH_CLAIMS, Bytes::new(), partition.clone()),
                                value: Bytes::new(),
                                ttl: None,
                            })
                            .add(
                                Cell::new(
                                    &CRASH_COUNTS,
                                    Bytes::new(),
                                    Bytes::from_static(b"claims"),
                                ),
                                1,
                                Some((&CRASH_CLAIMS, Bytes::new())),
                            );
                        for m in mutations {
                            if let Mutation::Put {
                                clustering, value, ..
                            } = m
                            {
                                commit = commit.put(
                                    Cell::new(&CRASH, partition.clone(), clustering),
                                    value,
                                    None,
                                );
                            }
                        }
                        store.commit(&commit).await?;
                        "commit"
                    };
                    // Printed only after the acknowledgement: what the parent reads was
                    // acknowledged as durable.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{what} {n}")?;
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
