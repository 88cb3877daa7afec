//! One conformance suite for every blob store: the local files (the embedded default),
//! a real S3-compatible server (SeaweedFS, started by `scripts/test`, at
//! `SELFIE_S3_URL`), and the S3 store behind a node's local cache. Then the cache's own
//! promises: a hundred concurrent misses of one blob cost one origin fetch, it stays
//! within its capacity, and a delete is not served from it afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use selfie_services::media::s3::PART_BYTES;
use selfie_services::media::{BlobStore, CachedBlobs, LocalBlobs, S3Blobs};
use selfie_services::{BoxFuture, Error, Result};
use sha2::{Digest, Sha256};

fn s3() -> S3Blobs {
    let url = std::env::var("SELFIE_S3_URL").expect(
        "SELFIE_S3_URL is not set: run the tests with scripts/test (it starts an S3 server)",
    );
    S3Blobs::open(&url).expect("s3 store")
}

/// Keys of this run only (the bucket is shared by every test run on the server).
fn prefix() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x = rand::random::<u64>() | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

async fn read_all(store: &dyn BlobStore, key: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let piece = store
            .read(key.to_string(), out.len() as u64, 3 << 20)
            .await
            .expect("read");
        assert!(!piece.is_empty(), "{key} ended early at {}", out.len());
        out.extend_from_slice(&piece);
    }
    out
}

/// What every blob store must do.
async fn conformance(store: &dyn BlobStore, scratch: &std::path::Path) {
    let p = prefix();
    let backend = store.backend();

    // Put, whole and ranged reads, reads past the end, sizes.
    let key = format!("r/{p}/small.jpg");
    let bytes = random_bytes(100_000);
    store
        .put(key.clone(), Bytes::from(bytes.clone()))
        .await
        .expect("put");
    assert_eq!(store.size(key.clone()).await.expect("size"), Some(100_000));
    assert!(
        read_all(store, &key, 100_000).await == bytes,
        "{backend}: whole read"
    );
    let mid = store.read(key.clone(), 1_000, 500).await.expect("range");
    assert!(mid[..] == bytes[1_000..1_500], "{backend}: ranged read");
    let tail = store.read(key.clone(), 99_900, 1_000).await.expect("tail");
    assert_eq!(
        &tail[..],
        &bytes[99_900..],
        "{backend}: a read past the end"
    );
    let past = store.read(key.clone(), 100_000, 10).await.expect("at end");
    assert!(past.is_empty(), "{backend}: a read at the end");

    // A rewrite replaces the bytes.
    let again = random_bytes(1_234);
    store
        .put(key.clone(), Bytes::from(again.clone()))
        .await
        .expect("rewrite");
    assert!(
        read_all(store, &key, 1_234).await == again,
        "{backend}: rewritten"
    );

    // Absent keys.
    let missing = format!("r/{p}/missing");
    assert_eq!(store.size(missing.clone()).await.expect("size"), None);
    assert!(
        store.read(missing.clone(), 0, 10).await.is_err(),
        "{backend}"
    );
    store
        .delete(missing)
        .await
        .expect("deleting nothing is fine");

    // A file moved in: large enough for a multipart upload, read back across the parts.
    let big = random_bytes(2 * PART_BYTES + 12_345);
    let digest = hex::encode(Sha256::digest(&big));
    let key = format!("sha256/{digest}");
    let from = scratch.join(format!("{p}.upload"));
    std::fs::write(&from, &big).expect("staged");
    store
        .put_file(key.clone(), from.clone())
        .await
        .expect("put_file");
    assert!(!from.exists(), "{backend}: the staged file was left behind");
    assert_eq!(
        store.size(key.clone()).await.expect("size"),
        Some(big.len() as u64)
    );
    let across = store
        .read(key.clone(), PART_BYTES as u64 - 10, 20)
        .await
        .expect("across a part boundary");
    assert!(
        across[..] == big[PART_BYTES - 10..PART_BYTES + 10],
        "{backend}: across parts"
    );
    let back = read_all(store, &key, big.len() as u64).await;
    assert_eq!(hex::encode(Sha256::digest(&back)), digest, "{backend}");
    // The same content again: the staged copy goes, the blob stays as it was.
    std::fs::write(&from, &big).expect("staged");
    store
        .put_file(key.clone(), from.clone())
        .await
        .expect("dedup");
    assert!(
        !from.exists(),
        "{backend}: a duplicate's staged file was left"
    );
    assert_eq!(
        store.size(key.clone()).await.expect("size"),
        Some(big.len() as u64)
    );

    // Copied out to a file (what the transcoder reads).
    let out = scratch.join(format!("{p}.copy"));
    store
        .copy_to_file(key.clone(), big.len() as u64, out.clone())
        .await
        .expect("copy out");
    assert!(
        std::fs::read(&out).expect("copied") == big,
        "{backend}: copied out"
    );

    // Deletes.
    store.delete(key.clone()).await.expect("delete");
    assert_eq!(store.size(key.clone()).await.expect("size"), None);
    assert!(store.read(key, 0, 10).await.is_err(), "{backend}");
    store
        .delete(format!("r/{p}/small.jpg"))
        .await
        .expect("delete");

    // Keys the server would never make are refused before any I/O.
    for bad in ["../etc/passwd", "/abs", "Upper", "a b", "r/../../x", ""] {
        let r = store.put(bad.to_string(), Bytes::from_static(b"x")).await;
        assert!(r.is_err(), "{backend} took the key {bad:?}");
        assert!(store.size(bad.to_string()).await.is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn local_files_conform() {
    let dir = tempfile::tempdir().expect("dir");
    let store = LocalBlobs::open(dir.path().join("blobs")).expect("store");
    conformance(&store, dir.path()).await;
}

#[tokio::test]
async fn local_files_on_io_uring_conform() {
    use selfie_services::media::uring::{BlobIo, Io};
    let dir = tempfile::tempdir().expect("dir");
    let io = Io::select(BlobIo::IoUring).expect("io_uring on this kernel");
    let store = LocalBlobs::open_with(dir.path().join("blobs"), io).expect("store");
    assert_eq!(store.backend(), "local-io_uring");
    conformance(&store, dir.path()).await;
}

/// Chunks staged through the ring, in parallel and out of order, read back whole.
#[tokio::test]
async fn staging_on_io_uring_writes_chunks_at_their_offsets() {
    use selfie_services::media::Staging;
    use selfie_services::media::uring::{BlobIo, Io};
    let dir = tempfile::tempdir().expect("dir");
    let io = Io::select(BlobIo::IoUring).expect("io_uring on this kernel");
    let staging = Staging::open_with(dir.path().join("staging"), io).expect("staging");
    let data = random_bytes(8 * 65_536 + 123);
    let writes = data
        .chunks(65_536)
        .enumerate()
        .rev()
        .map(|(i, c)| staging.write_at(7, (i * 65_536) as u64, c.to_vec()));
    for r in futures::future::join_all(writes).await {
        r.expect("written");
    }
    assert_eq!(staging.read_all(7).await.expect("read"), data);
    let (digest, head) = staging
        .digest(7, data.len() as u64)
        .await
        .expect("digest")
        .expect("whole");
    assert_eq!(digest.to_vec(), Sha256::digest(&data).to_vec());
    assert_eq!(head, &data[..64 * 1024]);
}

#[tokio::test]
async fn s3_conforms() {
    let dir = tempfile::tempdir().expect("dir");
    conformance(&s3(), dir.path()).await;
}

#[tokio::test]
async fn s3_behind_the_cache_conforms() {
    let dir = tempfile::tempdir().expect("dir");
    let cached =
        CachedBlobs::open(Arc::new(s3()), dir.path().join("cache"), 64 << 20).expect("cache");
    conformance(&cached, dir.path()).await;
}

#[tokio::test]
async fn wrong_credentials_are_refused_by_the_server() {
    let url = std::env::var("SELFIE_S3_URL").expect("SELFIE_S3_URL");
    let (at, key, _) = selfie_services::media::s3::parse_url(&url).expect("url");
    let wrong = format!(
        "s3://{key}:not-the-secret@{}/{}?region={}&tls={}",
        at.endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://"),
        at.bucket,
        at.region,
        at.endpoint.starts_with("https://")
    );
    let store = S3Blobs::open(&wrong).expect("store");
    let r = store
        .put(format!("r/{}/x", prefix()), Bytes::from_static(b"x"))
        .await;
    assert!(matches!(r, Err(Error::Storage(_))), "{r:?}");
}

/// An origin that counts the requests reaching it.
struct Counting {
    inner: Arc<dyn BlobStore>,
    reads: AtomicUsize,
    sizes: AtomicUsize,
}

impl BlobStore for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn put_file(&self, key: String, from: std::path::PathBuf) -> BoxFuture<'_, Result<()>> {
        self.inner.put_file(key, from)
    }
    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        self.inner.put(key, bytes)
    }
    fn read(&self, key: String, start: u64, len: usize) -> BoxFuture<'_, Result<Bytes>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(key, start, len)
    }
    fn size(&self, key: String) -> BoxFuture<'_, Result<Option<u64>>> {
        self.sizes.fetch_add(1, Ordering::SeqCst);
        self.inner.size(key)
    }
    fn delete(&self, key: String) -> BoxFuture<'_, Result<()>> {
        self.inner.delete(key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_fetches_once_for_a_hundred_concurrent_misses() {
    let dir = tempfile::tempdir().expect("dir");
    let origin = Arc::new(Counting {
        inner: Arc::new(s3()),
        reads: AtomicUsize::new(0),
        sizes: AtomicUsize::new(0),
    });
    let cache = Arc::new(
        CachedBlobs::open(origin.clone(), dir.path().join("cache"), 256 << 20).expect("cache"),
    );
    let key = format!("r/{}/hls/720p_000.ts", prefix());
    let bytes = random_bytes(3 << 20);
    cache
        .put(key.clone(), Bytes::from(bytes.clone()))
        .await
        .expect("put");
    let readers: Vec<_> = (0..100)
        .map(|i| {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let start = (i * 30_000) as u64;
                (start, cache.read(key, start, 64 * 1024).await)
            })
        })
        .collect();
    for r in readers {
        let (start, got) = r.await.expect("task");
        let got = got.expect("read");
        let s = start as usize;
        assert!(got[..] == bytes[s..s + 64 * 1024], "read at {s}");
    }
    let stats = cache.stats();
    assert_eq!(stats.fills.load(Ordering::SeqCst), 1, "one origin fetch");
    assert_eq!(origin.sizes.load(Ordering::SeqCst), 1, "one origin lookup");
    assert_eq!(
        origin.reads.load(Ordering::SeqCst),
        1,
        "a 3 MiB blob is fetched in one request"
    );
    assert_eq!(
        stats.hits.load(Ordering::SeqCst) + stats.misses.load(Ordering::SeqCst),
        100
    );
    // Deleted: gone from the origin and not served from the cache.
    cache.delete(key.clone()).await.expect("delete");
    assert!(cache.read(key.clone(), 0, 10).await.is_err());
    assert_eq!(origin.inner.size(key).await.expect("size"), None);
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let dir = tempfile::tempdir().expect("dir");
    let origin_dir = tempfile::tempdir().expect("dir");
    let origin: Arc<dyn BlobStore> =
        Arc::new(LocalBlobs::open(origin_dir.path().to_path_buf()).expect("origin"));
    let capacity = 8 << 20;
    let cache = CachedBlobs::open(origin, dir.path().join("cache"), capacity).expect("cache");
    let p = prefix();
    // Blobs of an eighth of the capacity each: sixteen of them are twice the capacity.
    for i in 0..16 {
        let key = format!("r/{p}/{i}");
        let bytes = random_bytes((capacity / 8) as usize);
        cache
            .put(key.clone(), Bytes::from(bytes.clone()))
            .await
            .expect("put");
        let got = cache.read(key, 0, bytes.len()).await.expect("read");
        assert_eq!(got.len(), bytes.len());
        assert!(cache.cached_bytes() <= capacity, "{}", cache.cached_bytes());
    }
    let stats = cache.stats();
    assert_eq!(stats.fills.load(Ordering::SeqCst), 16);
    assert_eq!(stats.evictions.load(Ordering::SeqCst), 8);
    // The newest are cached, the oldest went (and are fetched again when read).
    let before = stats.fills.load(Ordering::SeqCst);
    cache.read(format!("r/{p}/15"), 0, 10).await.expect("read");
    assert_eq!(
        stats.fills.load(Ordering::SeqCst),
        before,
        "the newest was cached"
    );
    cache.read(format!("r/{p}/0"), 0, 10).await.expect("read");
    assert_eq!(
        stats.fills.load(Ordering::SeqCst),
        before + 1,
        "the oldest was evicted"
    );
    // Larger than an eighth of the capacity: read through, never cached.
    let key = format!("r/{p}/large");
    let bytes = random_bytes((capacity / 4) as usize);
    cache
        .put(key.clone(), Bytes::from(bytes.clone()))
        .await
        .expect("put");
    let got = cache.read(key.clone(), 100, 1000).await.expect("read");
    assert!(got[..] == bytes[100..1100], "read through");
    assert_eq!(stats.fills.load(Ordering::SeqCst), before + 1);
    let files = std::fs::read_dir(dir.path().join("cache"))
        .expect("cache dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
        .count();
    assert!(files <= 8, "{files} files cached");
}

/// An origin whose reads never answer (a stalled store, or a slow one under a client
/// that goes away).
struct Stalled(Arc<dyn BlobStore>);

impl BlobStore for Stalled {
    fn backend(&self) -> &'static str {
        "stalled"
    }
    fn put_file(&self, key: String, from: std::path::PathBuf) -> BoxFuture<'_, Result<()>> {
        self.0.put_file(key, from)
    }
    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        self.0.put(key, bytes)
    }
    fn read(&self, _: String, _: u64, _: usize) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(futures::future::pending())
    }
    fn size(&self, key: String) -> BoxFuture<'_, Result<Option<u64>>> {
        self.0.size(key)
    }
    fn delete(&self, key: String) -> BoxFuture<'_, Result<()>> {
        self.0.delete(key)
    }
}

#[tokio::test]
async fn a_fill_given_up_leaves_no_file_and_no_bytes_counted() {
    let dir = tempfile::tempdir().expect("dir");
    let origin_dir = tempfile::tempdir().expect("dir");
    let origin: Arc<dyn BlobStore> =
        Arc::new(LocalBlobs::open(origin_dir.path().to_path_buf()).expect("origin"));
    let cache = Arc::new(
        CachedBlobs::open(
            Arc::new(Stalled(origin)),
            dir.path().join("cache"),
            64 << 20,
        )
        .expect("cache"),
    );
    let key = format!("r/{}/clip", prefix());
    cache
        .put(key.clone(), Bytes::from(random_bytes(1 << 20)))
        .await
        .expect("put");
    let tmp = dir.path().join("cache").join("tmp");
    let in_tmp = || std::fs::read_dir(&tmp).expect("tmp").count();
    // A download starts a fill and its client goes away while the origin is slow.
    let reading = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.read(key, 0, 1000).await })
    };
    for _ in 0..100 {
        if in_tmp() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(in_tmp(), 1, "the fill began");
    assert_eq!(
        cache.cached_bytes(),
        1 << 20,
        "its bytes are counted while it runs"
    );
    reading.abort();
    assert!(reading.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(in_tmp(), 0, "the partial file was left behind");
    assert_eq!(
        cache.cached_bytes(),
        0,
        "the bytes of a fill given up stay counted"
    );
}

/// Defect: every ranged read of a blob too large to cache took the key's fill lock
/// (one reader at a time) and asked the origin its size again. Now the size is asked
/// once; reads go to the origin side by side; a put forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_too_large_to_cache_are_read_from_the_origin_without_asking_their_size_again() {
    let dir = tempfile::tempdir().expect("dir");
    let origin_dir = tempfile::tempdir().expect("dir");
    let origin = Arc::new(Counting {
        inner: Arc::new(LocalBlobs::open(origin_dir.path().to_path_buf()).expect("origin")),
        reads: AtomicUsize::new(0),
        sizes: AtomicUsize::new(0),
    });
    // 1 MiB of cache: blobs over 128 KiB are not cached.
    let cache = Arc::new(
        CachedBlobs::open(origin.clone(), dir.path().join("cache"), 1 << 20).expect("cache"),
    );
    let key = "r/1/hls/720p_000.ts".to_string();
    let bytes = random_bytes(512 * 1024);
    cache
        .put(key.clone(), Bytes::from(bytes.clone()))
        .await
        .expect("put");
    let readers: Vec<_> = (0..32)
        .map(|i| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move { cache.read(key, i * 1000, 1000).await })
        })
        .collect();
    for (i, r) in futures::future::join_all(readers)
        .await
        .into_iter()
        .enumerate()
    {
        let got = r.expect("task").expect("read");
        assert_eq!(got.as_ref(), &bytes[i * 1000..i * 1000 + 1000]);
    }
    let sizes = origin.sizes.load(Ordering::SeqCst);
    assert_eq!(sizes, 1, "its size is asked once for 32 reads");
    assert_eq!(origin.reads.load(Ordering::SeqCst), 32, "read through");
    // Replaced by a small blob under the same key: cached again.
    let small = random_bytes(1000);
    cache
        .put(key.clone(), Bytes::from(small.clone()))
        .await
        .expect("put");
    assert_eq!(cache.read(key.clone(), 0, 1000).await.expect("read"), small);
    let reads = origin.reads.load(Ordering::SeqCst);
    assert_eq!(cache.read(key, 0, 1000).await.expect("read"), small);
    assert_eq!(
        origin.reads.load(Ordering::SeqCst),
        reads,
        "served from the cache"
    );
}

/// Page-aligned chunks go to the disk with `O_DIRECT` where the filesystem takes it,
/// the unaligned tail through the page cache; a chunk rewritten the other way (a retry
/// from an unaligned buffer, then an aligned one) leaves the last bytes written, and
/// reads see them whichever way they came, on both I/O paths.
#[tokio::test]
async fn staging_mixes_direct_and_buffered_writes_of_one_file() {
    use selfie_services::media::uring::{BlobIo, Io};
    use selfie_services::media::{DirectBuf, Staging};
    const CHUNK: usize = 256 * 1024;
    for io in [
        Io::select(BlobIo::Std).expect("std"),
        Io::select(BlobIo::IoUring).expect("io_uring on this kernel"),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let staging = Staging::open_with(dir.path().join("staging"), io).expect("staging");
        let aligned = |bytes: &[u8]| {
            let mut buf = DirectBuf::with_capacity(bytes.len());
            buf.extend_from_slice(bytes);
            assert_eq!(buf.as_slice().as_ptr() as usize % 4096, 0, "aligned start");
            buf
        };
        let first = random_bytes(3 * CHUNK + 1000);
        for (i, c) in first.chunks(CHUNK).enumerate() {
            staging
                .write_at(9, (i * CHUNK) as u64, aligned(c))
                .await
                .expect("written");
        }
        assert_eq!(staging.read_all(9).await.expect("read"), first);
        // Chunk 1 again from a plain `Vec` (the system allocator's blocks of this size
        // carry a header before them, so it is almost never page-aligned: buffered),
        // then chunk 2 again aligned (direct) after the read above cached its pages.
        let second = random_bytes(2 * CHUNK);
        let plain = second[..CHUNK].to_vec();
        staging
            .write_at(9, CHUNK as u64, plain)
            .await
            .expect("rewritten");
        staging
            .write_at(9, 2 * CHUNK as u64, aligned(&second[CHUNK..]))
            .await
            .expect("rewritten");
        let mut expected = first.clone();
        expected[CHUNK..3 * CHUNK].copy_from_slice(&second);
        assert_eq!(staging.read_all(9).await.expect("read"), expected);
        let (digest, _) = staging
            .digest(9, expected.len() as u64)
            .await
            .expect("digest")
            .expect("whole");
        assert_eq!(digest.to_vec(), Sha256::digest(&expected).to_vec());
        // ext4, xfs and btrfs take `O_DIRECT`; tmpfs before Linux 6.6 does not (then
        // every write above went through the page cache, and the bytes still match).
        if !on_tmpfs(dir.path()) {
            assert!(staging.direct(), "{}: O_DIRECT refused", staging.io_name());
        }
        // Writes from a buffer that is not page-aligned go through the page cache.
        let dir = tempfile::tempdir().expect("dir");
        let staging = Staging::open(dir.path()).expect("staging");
        let buffered = staging.direct_writes(false);
        assert!(!buffered.direct());
        buffered
            .write_at(1, 0, aligned(&first[..CHUNK]))
            .await
            .expect("written");
        assert_eq!(buffered.read_all(1).await.expect("read"), &first[..CHUNK]);
    }
}

/// Whether `path` is on a tmpfs.
fn on_tmpfs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string and `stat` a buffer the call fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut stat) } == 0) && stat.f_type == libc::TMPFS_MAGIC
}

/// A chunk's write holds what orders it (the upload's lock, shared) until its bytes are
/// written, even when the request waiting for it goes away: a completion that takes
/// the lock exclusively afterwards reads the whole chunk, never half of it.
#[tokio::test]
async fn a_write_given_up_by_its_caller_keeps_its_guard_until_it_is_done() {
    use selfie_services::media::Staging;
    use selfie_services::media::uring::{BlobIo, Io};
    for io in [
        Io::select(BlobIo::Std).expect("std"),
        Io::select(BlobIo::IoUring).expect("io_uring on this kernel"),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let staging = Staging::open_with(dir.path().join("staging"), io).expect("staging");
        let lock = Arc::new(tokio::sync::RwLock::new(()));
        let data = random_bytes(8 << 20);
        let shared = lock.clone().read_owned().await;
        let mut write = Box::pin(staging.write_holding(3, 0, data.clone(), shared));
        // Started, then abandoned while the bytes are being written.
        let _ = futures::poll!(&mut write);
        drop(write);
        let _exclusive = lock.write().await;
        assert_eq!(
            staging.read_all(3).await.expect("read"),
            data,
            "{}",
            staging.io_name()
        );
    }
}
