//! A node's bounded local cache in front of a remote blob store (S3, for fleets).
//!
//! Blobs are written once (originals are content-addressed, renditions are made once per
//! object); a write or a delete through the cache drops its copy first, so the cache
//! never serves bytes its node replaced. Reads of a blob not
//! cached fetch it whole from the origin into a local file, once: concurrent misses of
//! one key wait for that fetch under the key's lock and then read the file (as Pingora's
//! cache lock does), so a hundred viewers opening one new video cost one origin fetch.
//! Blobs larger than an eighth of the capacity are not kept (ranged reads go to the
//! origin); the least recently read blobs are evicted past the capacity. What is cached
//! is forgotten at restart (the folder is emptied).
//!
//! It must not: serve a blob it has not fully fetched (files are written aside and
//! renamed into place), or let one key's fetch hold up another's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::blob::{BlobStore, checked};
use crate::{BoxFuture, Error, Result};

/// Bytes fetched from the origin per request while filling the cache.
const FILL_PIECE: usize = 8 << 20;
/// Blobs fetched from the origin at once (other misses wait their turn).
const FETCHES: usize = 8;
/// The smallest capacity a cache may be given.
pub const MIN_CAPACITY: u64 = 1 << 20;

/// Hits, misses and origin fetches of a [`CachedBlobs`] (for metrics and tests).
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Reads served from a cached file.
    pub hits: AtomicU64,
    /// Reads that found nothing cached (and waited for, or made, a fetch).
    pub misses: AtomicU64,
    /// Whole blobs fetched from the origin.
    pub fills: AtomicU64,
    /// Blobs evicted to stay within the capacity.
    pub evictions: AtomicU64,
}

struct Entry {
    size: u64,
    /// Tick of its last read (least recently read goes first).
    used: u64,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    bytes: u64,
    tick: u64,
}

/// A remote blob store with a bounded local read cache.
pub struct CachedBlobs {
    origin: Arc<dyn BlobStore>,
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    fills: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Origin fetches at once.
    fetching: tokio::sync::Semaphore,
    stats: Arc<CacheStats>,
    /// Blobs found too large to cache (over a eighth of the capacity): read straight
    /// from the origin, without the fill lock or another size request.
    large: Mutex<std::collections::HashSet<String>>,
}

/// Keys remembered as too large to cache (forgotten all at once beyond it).
const LARGE_KEYS: usize = 4096;

/// A fill in progress: its partial file and its counted bytes, both given back on drop
/// unless it finished.
struct Filling<'a> {
    cache: &'a CachedBlobs,
    tmp: PathBuf,
    size: u64,
    done: bool,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = std::fs::remove_file(&self.tmp);
        let mut index = self.cache.index.lock().unwrap_or_else(|p| p.into_inner());
        index.bytes -= self.size;
    }
}

fn io(e: std::io::Error) -> Error {
    tracing::warn!(error = %e, "media cache i/o failed");
    Error::Internal("media cache i/o failed")
}

impl CachedBlobs {
    /// `origin` with a cache of at most `capacity` bytes under `dir` (emptied first).
    pub fn open(origin: Arc<dyn BlobStore>, dir: PathBuf, capacity: u64) -> Result<Self> {
        if capacity < MIN_CAPACITY {
            return Err(Error::InvalidArgument {
                field: "media cache bytes",
            });
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        std::fs::create_dir_all(dir.join("tmp")).map_err(io)?;
        Ok(Self {
            origin,
            dir,
            capacity,
            index: Mutex::default(),
            fills: Mutex::default(),
            fetching: tokio::sync::Semaphore::new(FETCHES),
            stats: Arc::default(),
            large: Mutex::default(),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    /// Bytes cached now.
    pub fn cached_bytes(&self) -> u64 {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    fn file(&self, key: &str) -> Result<PathBuf> {
        // Flat names: `/` cannot appear in a checked key's file name otherwise.
        Ok(self.dir.join(checked(key)?.replace('/', "%")))
    }

    /// Marks `key` read; its size when cached.
    fn touch(&self, key: &str) -> Option<u64> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.tick += 1;
        let tick = index.tick;
        index.entries.get_mut(key).map(|e| {
            e.used = tick;
            e.size
        })
    }

    fn fill_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if fills.len() > 1024 {
            fills.retain(|_, l| Arc::strong_count(l) > 1);
        }
        fills.entry(key.to_string()).or_default().clone()
    }

    async fn read_cached(&self, key: &str, start: u64, len: usize) -> Result<Option<Bytes>> {
        if self.touch(key).is_none() {
            return Ok(None);
        }
        let mut f = match tokio::fs::File::open(self.file(key)?).await {
            Ok(f) => f,
            // Evicted meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        f.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
        let mut buf = Vec::with_capacity(len.min(FILL_PIECE));
        f.take(len as u64).read_to_end(&mut buf).await.map_err(io)?;
        Ok(Some(Bytes::from(buf)))
    }

    /// Counts `size` more bytes (a fill about to start) and evicts the least recently
    /// read blobs (never `key`) until the cache is within its capacity again; the
    /// returned guard gives the bytes back unless the fill finishes. Evicted files are
    /// moved aside under the index lock, so a refill of the same key that lands right
    /// after is never the file deleted. Synchronous: nothing can cancel it halfway.
    fn reserve(&self, key: &str, size: u64) -> Filling<'_> {
        let mut aside = Vec::new();
        {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index.bytes += size;
            while index.bytes > self.capacity {
                let Some(oldest) = index
                    .entries
                    .iter()
                    .filter(|(k, _)| k.as_str() != key)
                    .min_by_key(|(_, e)| e.used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(e) = index.entries.remove(&oldest) {
                    index.bytes -= e.size;
                }
                let to = self.temp();
                if let Ok(file) = self.file(&oldest)
                    && std::fs::rename(file, &to).is_ok()
                {
                    aside.push(to);
                }
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        for f in aside {
            let _ = std::fs::remove_file(f);
        }
        Filling {
            cache: self,
            tmp: self.temp(),
            size,
            done: false,
        }
    }

    fn temp(&self) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    /// Fetches `key` (of `size` bytes) whole into the cache. Its bytes are counted
    /// before the fetch (fills running at once never take the cache past its capacity)
    /// and given back, with the partial file, if the fetch fails or is dropped.
    async fn fill(&self, key: &str, size: u64) -> Result<()> {
        let _fetching = self
            .fetching
            .acquire()
            .await
            .map_err(|_| Error::Internal("media cache closed"))?;
        let mut filling = self.reserve(key, size);
        let mut out = tokio::fs::File::create(&filling.tmp).await.map_err(io)?;
        let mut at = 0u64;
        while at < size {
            let piece = self.origin.read(key.to_string(), at, FILL_PIECE).await?;
            if piece.is_empty() {
                return Err(Error::Internal("blob shorter than its size"));
            }
            out.write_all(&piece).await.map_err(io)?;
            at += piece.len() as u64;
        }
        out.flush().await.map_err(io)?;
        drop(out);
        tokio::fs::rename(&filling.tmp, self.file(key)?)
            .await
            .map_err(io)?;
        filling.done = true;
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.tick += 1;
        let tick = index.tick;
        if let Some(old) = index
            .entries
            .insert(key.to_string(), Entry { size, used: tick })
        {
            // Cannot happen under the key's fill lock; counted once all the same.
            index.bytes -= old.size;
        }
        Ok(())
    }

    fn is_large(&self, key: &str) -> bool {
        self.large
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }

    fn remember_large(&self, key: &str) {
        let mut large = self.large.lock().unwrap_or_else(|p| p.into_inner());
        if large.len() >= LARGE_KEYS {
            large.clear();
        }
        large.insert(key.to_string());
    }

    /// Drops the cached copy of `key` (under its fill lock: before it is written or
    /// deleted at the origin).
    async fn evict(&self, key: &str) -> Result<()> {
        self.large
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let file = self.file(key)?;
        {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = index.entries.remove(key) {
                index.bytes -= e.size;
            }
        }
        match tokio::fs::remove_file(file).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }
}

impl BlobStore for CachedBlobs {
    fn backend(&self) -> &'static str {
        self.origin.backend()
    }

    fn put_file(&self, key: String, from: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let lock = self.fill_lock(&key);
            let _filling = lock.lock().await;
            self.evict(&key).await?;
            self.origin.put_file(key, from).await
        })
    }

    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let lock = self.fill_lock(&key);
            let _filling = lock.lock().await;
            self.evict(&key).await?;
            self.origin.put(key, bytes).await
        })
    }

    fn read(&self, key: String, start: u64, len: usize) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            if let Some(b) = self.read_cached(&key, start, len).await? {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(b);
            }
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            // Too large to cache: ranged reads go to the origin side by side.
            if self.is_large(&key) {
                return self.origin.read(key, start, len).await;
            }
            let lock = self.fill_lock(&key);
            {
                let _filling = lock.lock().await;
                // Filled while this read waited: no second fetch.
                if let Some(b) = self.read_cached(&key, start, len).await? {
                    return Ok(b);
                }
                // Found too large while this read waited: no second size request.
                if !self.is_large(&key) {
                    let size = self
                        .origin
                        .size(key.clone())
                        .await?
                        .ok_or(Error::NotFound("blob"))?;
                    if size <= self.capacity / 8 {
                        self.fill(&key, size).await?;
                        if let Some(b) = self.read_cached(&key, start, len).await? {
                            return Ok(b);
                        }
                    } else {
                        self.remember_large(&key);
                    }
                }
            }
            self.origin.read(key, start, len).await
        })
    }

    fn size(&self, key: String) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(async move {
            match self.touch(&key) {
                Some(size) => Ok(Some(size)),
                None => self.origin.size(key).await,
            }
        })
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let lock = self.fill_lock(&key);
            let _filling = lock.lock().await;
            self.evict(&key).await?;
            self.origin.delete(key).await
        })
    }
}
