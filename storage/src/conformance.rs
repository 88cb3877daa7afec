//! The conformance suite: one set of test bodies that every durable backend must pass.
//!
//! `storage/tests/conformance_embedded.rs` and `storage/tests/conformance_cql.rs` run
//! each function here against their backend. Every case works in its own random
//! partition, so cases can share tables and run concurrently. Open the store with
//! [`TABLES`].

use std::future::Future;
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;

use crate::key::KeyBuilder;
use crate::{Cell, Commit, Condition, Cursor, Mutation, Scan, Store, StoreError, Table, TableKind};

/// Plain rows.
pub static ROWS: Table = Table {
    name: "conformance_rows",
    kind: TableKind::Rows,
    partition: &["case", "partition"],
    clustering: &["id"],
    default_ttl: None,
    conditional: false,
    doc: "rows for the conformance suite",
};

/// Rows claimed and swapped conditionally.
pub static CLAIMS: Table = Table {
    name: "conformance_claims",
    kind: TableKind::Rows,
    partition: &["case"],
    clustering: &["id"],
    default_ttl: None,
    conditional: true,
    doc: "conditional rows for the conformance suite",
};

/// Rows that expire after 2 s unless written with another TTL.
pub static EPHEMERAL: Table = Table {
    name: "conformance_ephemeral",
    kind: TableKind::Rows,
    partition: &["case"],
    clustering: &["id"],
    default_ttl: Some(Duration::from_secs(2)),
    conditional: false,
    doc: "rows with a default TTL",
};

/// Counters.
pub static COUNTERS: Table = Table {
    name: "conformance_counters",
    kind: TableKind::Counters,
    partition: &["case"],
    clustering: &["name"],
    default_ttl: None,
    conditional: false,
    doc: "counters for the conformance suite",
};

/// The table of the crash-safety test (`tests/crash_safety.rs` and its writer process,
/// `src/bin/crash_writer.rs`): partition = batch number, rows 0..4 hold that number.
pub static CRASH: Table = Table {
    name: "crash",
    kind: TableKind::Rows,
    partition: &["batch"],
    clustering: &["row"],
    default_ttl: None,
    conditional: false,
    doc: "crash-safety test rows",
};

/// Crash-safety test: rows claimed by commits (`tests/crash_safety.rs`).
pub static CRASH_CLAIMS: Table = Table {
    name: "crash_claims",
    kind: TableKind::Rows,
    partition: &["all"],
    clustering: &["commit"],
    default_ttl: None,
    conditional: true,
    doc: "crash-safety test claims",
};

/// Crash-safety test: the count of [`CRASH_CLAIMS`], moved by the same commits.
pub static CRASH_COUNTS: Table = Table {
    name: "crash_counts",
    kind: TableKind::Counters,
    partition: &["all"],
    clustering: &["name"],
    default_ttl: None,
    conditional: false,
    doc: "crash-safety test counters",
};

/// Every table the suite uses.
pub static TABLES: &[&Table] = &[&ROWS, &CLAIMS, &EPHEMERAL, &COUNTERS];

type Result<T = ()> = std::result::Result<T, StoreError>;

fn partition() -> Bytes {
    KeyBuilder::new()
        .str("case")
        .u64(rand::random::<u64>())
        .build()
}

fn ck(i: u64) -> Bytes {
    KeyBuilder::new().u64(i).build()
}

async fn scan_all<S: Store>(
    store: &S,
    table: &'static Table,
    p: &[u8],
    scan: Scan,
) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = store.scan(table, p, &scan.clone().after(cursor)).await?;
        assert!(
            page.rows.len() <= scan.page_rows(),
            "page larger than its limit"
        );
        out.extend(page.rows.into_iter().map(|r| r.clustering));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Waits (polling, bounded) until `check` holds; a timeout turns a hang into a failure.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        assert!(start.elapsed() < limit, "{what}: not true after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// put / get / overwrite / delete of single rows.
pub async fn point_operations<S: Store>(store: &S) -> Result {
    let p = partition();
    assert_eq!(store.get(&ROWS, &p, &ck(1)).await?, None);
    store.put(&ROWS, &p, &ck(1), b"one", None).await?;
    assert_eq!(
        store.get(&ROWS, &p, &ck(1)).await?.as_deref(),
        Some(&b"one"[..])
    );
    store.put(&ROWS, &p, &ck(1), b"uno", None).await?;
    assert_eq!(
        store.get(&ROWS, &p, &ck(1)).await?.as_deref(),
        Some(&b"uno"[..])
    );
    // An empty value is a value, not an absence.
    store.put(&ROWS, &p, &ck(2), b"", None).await?;
    assert_eq!(
        store.get(&ROWS, &p, &ck(2)).await?.as_deref(),
        Some(&b""[..])
    );
    // An unsynced put is visible as soon as it is acknowledged.
    store.put_unsynced(&ROWS, &p, &ck(3), b"tres", None).await?;
    assert_eq!(
        store.get(&ROWS, &p, &ck(3)).await?.as_deref(),
        Some(&b"tres"[..])
    );
    store.delete(&ROWS, &p, &ck(1)).await?;
    assert_eq!(store.get(&ROWS, &p, &ck(1)).await?, None);
    store.delete(&ROWS, &p, &ck(99)).await?;
    // Another partition sees nothing.
    assert_eq!(store.get(&ROWS, &partition(), &ck(2)).await?, None);
    Ok(())
}

/// Rows come back in clustering order forwards and backwards, whatever the insert order.
pub async fn ordering_and_reverse_scans<S: Store>(store: &S) -> Result {
    let p = partition();
    let mut ids: Vec<u64> = (0..200).map(|i| i * 7919 % 1009 + (i << 40)).collect();
    // Insert in a scrambled order.
    ids.sort_by_key(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let pr = &p;
    join_all(
        ids.iter()
            .map(|&i| async move { store.put(&ROWS, pr, &ck(i), &i.to_be_bytes(), None).await }),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    ids.sort_unstable();
    let want: Vec<Bytes> = ids.iter().map(|&i| ck(i)).collect();
    assert_eq!(scan_all(store, &ROWS, &p, Scan::all(1000)).await?, want);
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(
        scan_all(store, &ROWS, &p, Scan::all(1000).reversed()).await?,
        rev
    );
    // Values come with their rows.
    let page = store.scan(&ROWS, &p, &Scan::all(3)).await?;
    for row in &page.rows {
        let id = crate::key::KeyReader::new(&row.clustering)
            .u64()
            .expect("u64 key");
        assert_eq!(row.value.as_ref(), id.to_be_bytes());
    }
    Ok(())
}

/// Pages of any size concatenate to the whole range; bounds are honoured.
pub async fn pagination_and_bounds<S: Store>(store: &S) -> Result {
    let p = partition();
    let pr = &p;
    join_all((0..95u64).map(|i| async move { store.put(&ROWS, pr, &ck(i), b"v", None).await }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<Bytes> = (0..95).map(ck).collect();
    for size in [1, 7, 10, 94, 95, 96, 5000] {
        assert_eq!(
            scan_all(store, &ROWS, &p, Scan::all(size)).await?,
            all,
            "page size {size}"
        );
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(
            scan_all(store, &ROWS, &p, Scan::all(size).reversed()).await?,
            rev
        );
    }
    // A full page exactly at the end has no cursor only when nothing follows.
    let page = store.scan(&ROWS, &p, &Scan::all(95)).await?;
    assert_eq!((page.rows.len(), page.cursor), (95, None));
    let page = store.scan(&ROWS, &p, &Scan::all(94)).await?;
    assert_eq!(page.cursor, Some(Cursor(ck(93))));

    let range = |start, end| Scan {
        start,
        end,
        ..Scan::all(4)
    };
    let inc = |i| Bound::Included(ck(i));
    let exc = |i| Bound::Excluded(ck(i));
    let ids = |v: Vec<Bytes>| -> Vec<u64> {
        v.iter()
            .map(|k| crate::key::KeyReader::new(k).u64().expect("u64 key"))
            .collect()
    };
    assert_eq!(
        ids(scan_all(store, &ROWS, &p, range(inc(10), exc(20))).await?),
        (10..20).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(scan_all(store, &ROWS, &p, range(exc(10), inc(20))).await?),
        (11..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(scan_all(store, &ROWS, &p, range(inc(90), Bound::Unbounded)).await?),
        (90..95).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(scan_all(store, &ROWS, &p, range(Bound::Unbounded, exc(3)).reversed()).await?),
        vec![2, 1, 0]
    );
    assert!(
        scan_all(store, &ROWS, &p, range(inc(50), exc(50)))
            .await?
            .is_empty()
    );
    assert!(
        scan_all(store, &ROWS, &p, range(inc(60), inc(50)))
            .await?
            .is_empty()
    );
    // An empty partition.
    let empty = store.scan(&ROWS, &partition(), &Scan::all(10)).await?;
    assert!(empty.rows.is_empty() && empty.cursor.is_none());
    Ok(())
}

/// Rows with a TTL are visible, then invisible to every read once expired; an expired
/// key can be inserted again with `insert_if_absent`.
pub async fn ttl_expiry<S: Store>(store: &S) -> Result {
    let p = partition();
    store
        .put(&CLAIMS, &p, &ck(1), b"short", Some(Duration::from_secs(1)))
        .await?;
    store.put(&CLAIMS, &p, &ck(2), b"forever", None).await?;
    store
        .put(&EPHEMERAL, &p, &ck(3), b"default ttl", None)
        .await?;
    assert!(store.get(&CLAIMS, &p, &ck(1)).await?.is_some());
    assert!(store.get(&EPHEMERAL, &p, &ck(3)).await?.is_some());
    eventually("ttl row expires", Duration::from_secs(15), || async {
        Ok(store.get(&CLAIMS, &p, &ck(1)).await?.is_none()
            && store.get(&EPHEMERAL, &p, &ck(3)).await?.is_none())
    })
    .await?;
    let page = store.scan(&CLAIMS, &p, &Scan::all(10)).await?;
    assert_eq!(page.rows.len(), 1, "expired rows are invisible to scans");
    assert_eq!(page.rows[0].clustering, ck(2));
    assert!(
        store
            .insert_if_absent(&CLAIMS, &p, &ck(1), b"again", None)
            .await?
    );
    assert_eq!(
        store.get(&CLAIMS, &p, &ck(1)).await?.as_deref(),
        Some(&b"again"[..])
    );
    Ok(())
}

/// A batch applies all its puts and deletes together; concurrent readers never see half
/// of one.
pub async fn batch_atomicity<S: Store>(store: &S) -> Result {
    let p = partition();
    const ROWS_PER_BATCH: u64 = 12;
    let generation = |g: u64| -> Vec<Mutation> {
        let mut m: Vec<Mutation> = (0..ROWS_PER_BATCH)
            .map(|i| Mutation::Put {
                clustering: ck(i),
                value: Bytes::from(g.to_be_bytes().to_vec()),
                ttl: None,
            })
            .collect();
        // Each generation also moves a marker row.
        m.push(Mutation::Delete {
            clustering: ck(1000 + g),
        });
        m.push(Mutation::Put {
            clustering: ck(1001 + g),
            value: Bytes::from_static(b"marker"),
            ttl: None,
        });
        m
    };
    store.batch(&ROWS, &p, &generation(0)).await?;
    let writer = async {
        for g in 1..=20 {
            store.batch(&ROWS, &p, &generation(g)).await?;
        }
        Ok::<_, StoreError>(())
    };
    let reader = async {
        for _ in 0..40 {
            let page = store.scan(&ROWS, &p, &Scan::all(100)).await?;
            let gens: Vec<&Bytes> = page
                .rows
                .iter()
                .filter(|r| r.clustering < ck(1000))
                .map(|r| &r.value)
                .collect();
            assert_eq!(gens.len() as u64, ROWS_PER_BATCH);
            assert!(gens.windows(2).all(|w| w[0] == w[1]), "saw a partial batch");
            let markers = page
                .rows
                .iter()
                .filter(|r| r.clustering >= ck(1000))
                .count();
            assert_eq!(markers, 1, "saw a partial batch (marker rows)");
            tokio::task::yield_now().await;
        }
        Ok::<_, StoreError>(())
    };
    let (w, r) = futures::join!(writer, reader);
    w?;
    r?;
    let page = store.scan(&ROWS, &p, &Scan::all(100)).await?;
    assert!(
        page.rows
            .iter()
            .filter(|r| r.clustering < ck(1000))
            .all(|r| r.value.as_ref() == 20u64.to_be_bytes())
    );
    Ok(())
}

/// Many concurrent `insert_if_absent` on one key: exactly one wins, and its value stays.
pub async fn concurrent_insert_if_absent<S: Store>(store: &S) -> Result {
    let p = partition();
    let key = KeyBuilder::new().str("username").str("ada").build();
    let results = join_all((0..24u64).map(|i| {
        let key = key.clone();
        let p = p.clone();
        async move {
            let won = store
                .insert_if_absent(&CLAIMS, &p, &key, &i.to_be_bytes(), None)
                .await?;
            Ok::<_, StoreError>((i, won))
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let winners: Vec<u64> = results
        .iter()
        .filter(|(_, won)| *won)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one winner, got {winners:?}");
    assert_eq!(
        store.get(&CLAIMS, &p, &key).await?.as_deref(),
        Some(&winners[0].to_be_bytes()[..])
    );
    assert!(
        !store
            .insert_if_absent(&CLAIMS, &p, &key, b"late", None)
            .await?
    );
    Ok(())
}

/// Conditional writes only on conditional tables, batches only on the others; on a
/// conditional table plain puts and deletes still work (as conditional writes on CQL),
/// and `compare_and_set` swaps or deletes only the value it was given.
pub async fn conditional_tables<S: Store>(store: &S) -> Result {
    let p = partition();
    let refused = |r: Result<bool>| matches!(r, Err(StoreError::Conditional { .. }));
    assert!(refused(
        store.insert_if_absent(&ROWS, &p, &ck(1), b"x", None).await
    ));
    assert!(refused(store.delete_if_present(&ROWS, &p, &ck(1)).await));
    assert!(refused(
        store
            .compare_and_set(&ROWS, &p, &ck(1), b"x", None, None)
            .await
    ));
    let put = Mutation::Put {
        clustering: ck(1),
        value: Bytes::from_static(b"x"),
        ttl: None,
    };
    assert!(matches!(
        store.batch(&CLAIMS, &p, &[put]).await,
        Err(StoreError::Conditional { .. })
    ));
    // Plain writes on a conditional table: create, overwrite, delete.
    store.put(&CLAIMS, &p, &ck(1), b"v1", None).await?;
    store.put(&CLAIMS, &p, &ck(1), b"v2", None).await?;
    assert_eq!(
        store.get(&CLAIMS, &p, &ck(1)).await?.as_deref(),
        Some(&b"v2"[..])
    );
    assert!(
        !store
            .compare_and_set(&CLAIMS, &p, &ck(1), b"v1", Some(b"v3"), None)
            .await?,
        "a stale expected value changes nothing"
    );
    assert!(
        store
            .compare_and_set(&CLAIMS, &p, &ck(1), b"v2", Some(b"v3"), None)
            .await?
    );
    assert!(
        !store
            .compare_and_set(&CLAIMS, &p, &ck(2), b"", Some(b"x"), None)
            .await?,
        "an absent row equals nothing"
    );
    assert!(
        store
            .compare_and_set(&CLAIMS, &p, &ck(1), b"v3", None, None)
            .await?
    );
    assert_eq!(store.get(&CLAIMS, &p, &ck(1)).await?, None);
    store.put(&CLAIMS, &p, &ck(1), b"again", None).await?;
    store.delete(&CLAIMS, &p, &ck(1)).await?;
    assert_eq!(store.get(&CLAIMS, &p, &ck(1)).await?, None);
    Ok(())
}

/// A commit applies its condition and its writes over several tables together, or
/// nothing when the condition does not hold; concurrent claims of one row move its
/// counter exactly once.
pub async fn commits<S: Store>(store: &S) -> Result {
    let p = partition();
    let claim = Cell::new(&CLAIMS, p.clone(), ck(1));
    let index = Cell::new(&ROWS, p.clone(), ck(7));
    let count = Cell::new(&COUNTERS, p.clone(), ck(0));
    let follow = |value: &'static [u8]| {
        Commit::new()
            .when(Condition::Absent {
                row: claim.clone(),
                value: Bytes::from_static(value),
                ttl: None,
            })
            .put(index.clone(), &b"indexed"[..], None)
            .add(count.clone(), 1, Some((&CLAIMS, p.clone())))
    };
    assert!(store.commit(&follow(b"first")).await?);
    assert!(
        !store.commit(&follow(b"second")).await?,
        "the row is claimed"
    );
    assert_eq!(
        store.get(&CLAIMS, &p, &ck(1)).await?.as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(
        store.get(&ROWS, &p, &ck(7)).await?.as_deref(),
        Some(&b"indexed"[..])
    );
    assert_eq!(store.counter_get(&COUNTERS, &p, &ck(0)).await?, 1);
    // Swapping the claimed value; a stale one is refused.
    let swap = |from: &'static [u8], to: &'static [u8]| {
        Commit::new()
            .when(Condition::Equals {
                row: claim.clone(),
                expected: Bytes::from_static(from),
                new: Some(Bytes::from_static(to)),
                ttl: None,
            })
            .add(count.clone(), 10, None)
            .add(count.clone(), -10, None)
    };
    assert!(!store.commit(&swap(b"nope", b"x")).await?);
    assert!(store.commit(&swap(b"first", b"swapped")).await?);
    assert_eq!(store.counter_get(&COUNTERS, &p, &ck(0)).await?, 1);
    // Releasing it undoes the rest.
    let unfollow = Commit::new()
        .when(Condition::Present { row: claim.clone() })
        .delete(index.clone())
        .add(count.clone(), -1, Some((&CLAIMS, p.clone())));
    assert!(store.commit(&unfollow).await?);
    assert!(!store.commit(&unfollow).await?, "already released");
    assert_eq!(store.get(&ROWS, &p, &ck(7)).await?, None);
    assert_eq!(store.counter_get(&COUNTERS, &p, &ck(0)).await?, 0);
    // Without a condition every write applies.
    let plain = Commit::new()
        .put(Cell::new(&ROWS, p.clone(), ck(8)), &b"a"[..], None)
        .add(count.clone(), 2, None);
    assert!(store.commit(&plain).await?);
    assert_eq!(store.counter_get(&COUNTERS, &p, &ck(0)).await?, 2);
    // A commit that writes its condition's row again is refused before anything.
    let twice = follow(b"x").put(claim.clone(), &b"y"[..], None);
    assert!(matches!(
        store.commit(&twice).await,
        Err(StoreError::Conditional { .. })
    ));
    // Concurrent claims of one fresh row: one wins, the counter moves once.
    let q = partition();
    let results = join_all((0..16u64).map(|i| {
        let q = q.clone();
        async move {
            let c = Commit::new()
                .when(Condition::Absent {
                    row: Cell::new(&CLAIMS, q.clone(), ck(1)),
                    value: Bytes::copy_from_slice(&i.to_be_bytes()),
                    ttl: None,
                })
                .add(Cell::new(&COUNTERS, q.clone(), ck(0)), 1, None);
            store.commit(&c).await
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<bool>>>()?;
    assert_eq!(results.iter().filter(|w| **w).count(), 1);
    assert_eq!(store.counter_get(&COUNTERS, &q, &ck(0)).await?, 1);
    Ok(())
}

/// Queued commits apply in the order they were queued: a commit queued behind another,
/// whose condition expects the other's write, holds once both are durable; one that
/// expects a value already replaced fails, and takes nothing with it.
pub async fn queued_commits<S: Store>(store: &S) -> Result {
    let p = partition();
    let head = Cell::new(&CLAIMS, p.clone(), ck(1));
    let log = |n: u64| Cell::new(&ROWS, p.clone(), ck(n));
    assert!(
        store
            .commit(&Commit::new().when(Condition::Absent {
                row: head.clone(),
                value: Bytes::from_static(b"0"),
                ttl: None,
            }))
            .await?
    );
    // Each step expects the head the step before it writes, queued before that one is
    // durable (the way a conversation's sends chain).
    let step = |from: u64, to: u64| {
        Commit::new()
            .when(Condition::Equals {
                row: head.clone(),
                expected: Bytes::from(from.to_string()),
                new: Some(Bytes::from(to.to_string())),
                ttl: None,
            })
            .put(log(to), Bytes::from(format!("entry {to}")), None)
    };
    let mut queued = Vec::new();
    for n in 1..=8u64 {
        queued.push(store.commit_queued(&step(n - 1, n)).await?);
    }
    // A stale one, queued last: the head has moved on by then.
    let stale = store.commit_queued(&step(3, 99)).await?;
    for q in queued {
        assert!(q.outcome().await?, "a chained commit failed");
    }
    assert!(!stale.outcome().await?, "a stale commit held");
    assert_eq!(
        store.get(&CLAIMS, &p, &ck(1)).await?.as_deref(),
        Some(&b"8"[..])
    );
    for n in 1..=8u64 {
        assert_eq!(
            store.get(&ROWS, &p, &ck(n)).await?,
            Some(Bytes::from(format!("entry {n}")))
        );
    }
    assert_eq!(store.get(&ROWS, &p, &ck(99)).await?, None);
    Ok(())
}

/// Counters stay exact under concurrent increments and decrements.
pub async fn counters<S: Store>(store: &S) -> Result {
    let p = partition();
    let name = KeyBuilder::new().str("followers").build();
    assert_eq!(store.counter_get(&COUNTERS, &p, &name).await?, 0);
    join_all(
        (0..200).map(|i| store.counter_add(&COUNTERS, &p, &name, if i % 4 == 3 { -1 } else { 2 })),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    assert_eq!(store.counter_get(&COUNTERS, &p, &name).await?, 150 * 2 - 50);
    Ok(())
}

/// A partition of many rows scans completely and in order, page by page.
pub async fn large_partition<S: Store>(store: &S, rows: u64) -> Result {
    let p = partition();
    let value = vec![7u8; 100];
    for chunk in (0..rows).collect::<Vec<_>>().chunks(200) {
        let (pr, value) = (&p, &value);
        join_all(
            chunk
                .iter()
                .map(|&i| async move { store.put(&ROWS, pr, &ck(i), value, None).await }),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    }
    let got = scan_all(store, &ROWS, &p, Scan::all(1000)).await?;
    assert_eq!(got.len() as u64, rows);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let newest = store.scan(&ROWS, &p, &Scan::all(20).reversed()).await?;
    assert_eq!(
        newest.rows.first().map(|r| r.clustering.clone()),
        Some(ck(rows - 1))
    );
    Ok(())
}

/// Misuse is a typed error, not a panic or a silent write.
pub async fn typed_errors<S: Store>(store: &S) -> Result {
    let p = partition();
    let err = store
        .counter_add(&ROWS, &p, &ck(1), 1)
        .await
        .expect_err("rows table");
    assert!(matches!(err, StoreError::WrongKind { .. }), "{err}");
    let err = store
        .put(&COUNTERS, &p, &ck(1), b"x", None)
        .await
        .expect_err("counter table");
    assert!(matches!(err, StoreError::WrongKind { .. }), "{err}");
    let big_key = vec![1u8; crate::store::MAX_CLUSTERING_KEY + 1];
    let err = store
        .put(&ROWS, &p, &big_key, b"x", None)
        .await
        .expect_err("key too large");
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    let big_value = vec![1u8; crate::store::MAX_VALUE + 1];
    let err = store
        .put(&ROWS, &p, &ck(1), &big_value, None)
        .await
        .expect_err("value too large");
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    let err = store
        .put(&ROWS, &p, &ck(1), b"x", Some(Duration::ZERO))
        .await
        .expect_err("zero ttl");
    assert!(matches!(err, StoreError::InvalidTtl(_)), "{err}");
    assert_eq!(
        store.get(&ROWS, &p, &ck(1)).await?,
        None,
        "nothing was written"
    );
    Ok(())
}

/// Data written through one store handle is there after it is closed and the store is
/// opened again (a process restart for the embedded backend, a new session for CQL).
pub async fn restart_persistence<S, F, Fut>(first: S, reopen: F) -> Result
where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S>>,
{
    let p = partition();
    for i in 0..50 {
        // Every other row unsynced: the synced writes after it make it durable too.
        if i % 2 == 0 {
            first.put(&ROWS, &p, &ck(i), &i.to_be_bytes(), None).await?;
        } else {
            first
                .put_unsynced(&ROWS, &p, &ck(i), &i.to_be_bytes(), None)
                .await?;
        }
    }
    first
        .batch(&ROWS, &p, &[Mutation::Delete { clustering: ck(0) }])
        .await?;
    first.counter_add(&COUNTERS, &p, &ck(0), 42).await?;
    drop(first);
    let second = reopen().await?;
    let rows = scan_all(&second, &ROWS, &p, Scan::all(1000)).await?;
    assert_eq!(rows, (1..50).map(ck).collect::<Vec<_>>());
    assert_eq!(second.counter_get(&COUNTERS, &p, &ck(0)).await?, 42);
    Ok(())
}
