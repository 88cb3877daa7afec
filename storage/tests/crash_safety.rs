//! Crash safety of the embedded backend: a writer process is SIGKILLed at random moments,
//! 24 times; after each restart every acknowledged batch and commit is present in full,
//! no partial batch or commit is visible, and the counter the commits move equals the
//! rows they claimed (a count and its rows are written together or not at all).
//!
//! What this cannot catch: SIGKILL ends the process but not the kernel's page cache, so a
//! missing `fsync` would pass here. Why the design is safe against power loss anyway
//! (`src/embedded.rs`, "Durability policy"): every write goes through the one writer
//! thread, which appends its group to fjall's journal and then calls
//! `Database::persist(PersistMode::SyncAll)` (`fsync` of the journal) before it answers
//! any write of the group; if that call fails, every write of the group is answered
//! with an error, never acknowledged. A power-cut test (dm-flakey or a loop device that
//! drops unsynced writes) needs root and a block device, which CI machines do not give.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use selfie_storage::conformance::{CRASH, CRASH_CLAIMS, CRASH_COUNTS};
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::key::{KeyBuilder, KeyReader};
use selfie_storage::{Scan, Store, SystemClock};

const ROUNDS: u64 = 24;
const ROWS: usize = 4;

/// Every batch number present in the store, checking each is complete.
async fn check(store: &EmbeddedStore, candidates: impl Iterator<Item = u64>) -> BTreeSet<u64> {
    let mut present = BTreeSet::new();
    for n in candidates {
        let p = KeyBuilder::new().u64(n).build();
        let page = store.scan(&CRASH, &p, &Scan::all(100)).await.expect("scan");
        if page.rows.is_empty() {
            continue;
        }
        assert_eq!(page.rows.len(), ROWS, "batch {n} is partial after a crash");
        for (i, row) in page.rows.iter().enumerate() {
            assert_eq!(KeyReader::new(&row.clustering).u64(), Some(i as u64));
            assert_eq!(row.value.as_ref(), n.to_be_bytes(), "batch {n} row {i}");
        }
        present.insert(n);
    }
    present
}

#[tokio::test]
async fn acknowledged_batches_survive_sigkill_and_no_partial_batch_is_visible() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acked_total = 0usize;
    for round in 0..ROUNDS {
        let first = round * 1_000_000;
        let mut child = Command::new(env!("CARGO_BIN_EXE_selfie-storage-crash-writer"))
            .arg(dir.path())
            .arg(first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .strip_prefix("ack ")
                    .or_else(|| line.strip_prefix("commit "))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    if acked.is_empty() {
                        let _ = tx.send(());
                    }
                    acked.push(n);
                }
            }
            acked
        });
        // Kill at a random moment once writes are flowing.
        rx.recv_timeout(Duration::from_secs(60))
            .expect("writer acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rand::random_range(1..120)));
        child.kill().expect("SIGKILL the writer");
        child.wait().expect("reap the writer");
        let acked = reader.join().expect("reader thread");
        assert!(!acked.is_empty());
        acked_total += acked.len();

        let store = EmbeddedStore::open(
            dir.path(),
            &[&CRASH, &CRASH_CLAIMS, &CRASH_COUNTS],
            Arc::new(SystemClock),
        )
        .expect("reopen");
        let max = acked.iter().copied().max().unwrap_or(first) + 64;
        let present = check(&store, first..=max).await;
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|n| !present.contains(n))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged batches lost: {missing:?}"
        );
        // Every commit's rows have their claim (odd writers commit: `first + w + k·8`)...
        for &n in &present {
            if (n - first) % 2 == 1 {
                let claimed = store
                    .get(&CRASH_CLAIMS, &[], &KeyBuilder::new().u64(n).build())
                    .await
                    .expect("get claim");
                assert!(
                    claimed.is_some(),
                    "round {round}: commit {n}'s rows without its claim"
                );
            }
        }
        // ...every claim has its rows, and the count is exactly the claims.
        let mut claims = 0i64;
        let mut scan = Scan::all(1000);
        loop {
            let page = store
                .scan(&CRASH_CLAIMS, &[], &scan)
                .await
                .expect("scan claims");
            for row in &page.rows {
                let n = KeyReader::new(&row.clustering).u64().expect("claim key");
                let whole =
                    present.contains(&n) || !check(&store, std::iter::once(n)).await.is_empty();
                assert!(whole, "round {round}: claim {n} without its rows");
                claims += 1;
            }
            match page.cursor {
                Some(c) => scan = Scan::all(1000).after(Some(c)),
                None => break,
            }
        }
        let counted = store
            .counter_get(&CRASH_COUNTS, &[], b"claims")
            .await
            .expect("counter");
        assert_eq!(
            counted, claims,
            "round {round}: the count drifted from its rows"
        );
        drop(store);
    }
    eprintln!("{ROUNDS} SIGKILL rounds, {acked_total} acknowledged batches, none lost or partial");
}
