//! Media: resumable uploads, checks of what the bytes really are, processing into
//! renditions, ranged downloads for the viewers who may see them, and the release of
//! objects nothing uses.
//!
//! **Uploads** (as tus does): `init` declares the kind, size and SHA-256 and reserves
//! quota; the bytes then arrive in fixed-size chunks, in any order and in parallel, each
//! checked against its own SHA-256 and made durable (fsync) before its row is written, so
//! `resume` reports the longest durable prefix after any interruption; `complete` hashes
//! the whole object, sniffs its real type from the bytes (the client's claim is never
//! trusted), refuses hostile images before decoding a pixel, and stores the original
//! content-addressed (deduplicated). Abandoned uploads expire with their rows (24 h);
//! staged files older than that are swept hourly. A node lends chunk buffers and
//! completion checks without queueing (`Overloaded` when taken; one user holds at most
//! 8 buffers and 2 checks; the SDK retries a completion refused so).
//!
//! **Races**: the writers of one object's record (processing, alt text, removal) take
//! a node-wide lock and write with versioned writes (compare-and-set) over the record
//! as they read it, so writers on different nodes never overwrite each other. A removal
//! first swaps the record for a tombstone (`Deleting`) and then looks at the object's
//! uses again (a use found puts it back), and [`t::attach`] looks the object up after
//! recording a use, so a use and a delete never both win; with no use the tombstone
//! becomes `Collecting` (never put back) before the files go, and only the removal that
//! deletes it counts the bytes out of the quota. The last reference to an original is
//! deleted under a fleet-wide claim on its digest that uploads of the same bytes wait
//! for. A removal cut short is finished by the next one or at start.
//!
//! **Processing** runs off the shard threads, on the blocking pool, a few at a time per
//! node, from a durable queue (`media_jobs`, one partition per node, replayed at start):
//! images become upright JPEG renditions without metadata and a BlurHash (an animated
//! GIF also a silent H.264 `mp4` players loop); videos
//! (probed by `ffprobe` when the upload completes: at most 10 minutes and 4096 pixels a
//! side) become an HLS ladder (`hls/master.m3u8`, 360p and 720p rungs never above the
//! source, 4-second segments) and a poster frame with its BlurHash, transcoded by
//! `ffmpeg` child processes under an address-space limit and a time limit, every output
//! without metadata ([`video`]). The owner's `Media` subscription receives each state
//! change.
//!
//! **Who may see what**: an object's owner always; anyone else only through what uses it
//! (`media_refs`): a post or story the viewer may read, a chat message the viewer may
//! read (a member who joined before it), or a profile the viewer is not blocked from. Others never get the original, only renditions. Posts, stories and
//! profiles accept only ids of ready objects of their author ([`crate::tables::media`]).
//!
//! **Blob stores**: files under the data directory (the embedded default, [`blob`]), or
//! any S3-compatible object store for fleets ([`s3`]) behind each node's bounded local
//! cache, which fetches a blob once for many concurrent misses ([`cache`]). One
//! conformance suite (`core-services/tests/blobs.rs`) runs on both.
//!
//! **Collection**: an object that nothing uses any more is removed when its last use
//! is released (a post or story deleted), and one that nothing uses a day after its
//! upload (uploaded, never posted) by its node's hourly sweep (`media_unused`).
//!
//! **HTTPS delivery**: a viewer who may see an object asks for a signed, expiring URL
//! to one of its renditions ([`urls`]); the edge's HTTPS listener serves it with
//! `Range`, `ETag` and `Cache-Control`, checking the signature first, then that the
//! object still exists (every request) and that the viewer may still see it (at most
//! every 10 s per viewer and object, so an HLS playback asks once) ([`Media::signed`]).
//!
//! **File I/O** of the embedded store and the staging area runs on `std::fs` on the
//! blocking pool, or through a node-wide io_uring thread ([`uring`], `media.blob_io`;
//! the choice is logged at start). `std` is the default because it measured faster on
//! page-cached reads and durable puts (`selfie-bench blobs`).
//!
//! **Account deletion** erases the account's media ([`Media::erase_owner`], through
//! `media_owned`): unfinished uploads go, and every object is removed whatever uses it;
//! uploads racing it remove themselves. Objects completed before `media_owned` existed
//! are not found (no backfill).

pub mod blob;
pub mod cache;
pub mod fair;
pub mod process;
pub mod s3;
pub mod uring;
pub mod urls;
pub mod video;
mod wire;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use selfie_protocol::control::SubscriptionKind;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Clock, Scan, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::blob::{BlobStore, DirectBuf, LocalBlobs, Staging};
pub use self::cache::{CacheStats, CachedBlobs};
pub use self::s3::S3Blobs;
pub use self::wire::MediaWire;
use crate::locks::KeyedLocks;
use crate::plane::{ByteStream, Delivery, Topic};
use crate::posts::Posts;
use crate::tables::media::{self as t, Kind, Media as Object, Rendition, State, Use};
use crate::tables::{decode, encode, id_value, key};
use crate::{Error, Result};

/// Limits of the media service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest image upload, bytes.
    pub max_image_bytes: u64,
    /// Largest GIF upload, bytes.
    pub max_gif_bytes: u64,
    /// Largest video upload, bytes.
    pub max_video_bytes: u64,
    /// Bytes of media one user may hold (uploads in progress count at their size).
    pub quota_bytes: u64,
    /// Bytes per upload chunk.
    pub chunk_bytes: u32,
    /// Unfinished uploads one user may have at once.
    pub max_open_uploads: usize,
    /// Media processed at once on a node.
    pub workers: usize,
    /// File I/O of the embedded blob store and the staging area: `std` (the default:
    /// measured faster on buffered I/O, `bench/RESULTS.md`), `auto` (io_uring when the
    /// kernel allows it, else `std`) or `io_uring` (or refuse to start).
    pub blob_io: uring::BlobIo,
    /// Write an upload's page-aligned chunks with `O_DIRECT` (the default) where the
    /// filesystem takes it; `false` writes every chunk through the page cache.
    pub direct_writes: bool,
}

impl MediaConfig {
    /// Checks the limits against what the service can run with.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&self.chunk_bytes) {
            return Err(format!(
                "media.chunk_bytes must be within {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}"
            ));
        }
        if !(1..=64).contains(&self.workers) || self.max_open_uploads == 0 {
            return Err(
                "media.workers must be within 1..=64 and media.max_open_uploads at least 1".into(),
            );
        }
        if self.max_image_bytes == 0 || self.max_gif_bytes == 0 || self.max_video_bytes == 0 {
            return Err("media.max_*_bytes must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_image_bytes: 30 << 20,
            max_gif_bytes: 15 << 20,
            max_video_bytes: 1 << 30,
            quota_bytes: 10 << 30,
            chunk_bytes: 2 << 20,
            max_open_uploads: 8,
            workers: 2,
            blob_io: uring::BlobIo::Std,
            direct_writes: true,
        }
    }
}

/// Chunks' bytes in memory at once on a node, in chunks of `chunk_bytes`: counted as
/// they arrive, so a sender that trickles holds only what it sent.
const CHUNK_BUFFERS: usize = 64;
/// Chunks being received at once on a node (a slot is cheap; their bytes are counted
/// apart, in [`CHUNK_BUFFERS`]): a few accounts sending slowly fill only their share.
const CHUNK_SLOTS: usize = 1024;
/// Chunks one user may be sending at once on a node (parallel chunks of their uploads).
const CHUNK_BUFFERS_PER_USER: usize = 8;
/// Smallest and largest configurable chunk.
const MIN_CHUNK_BYTES: u32 = 64 * 1024;
const MAX_CHUNK_BYTES: u32 = 16 << 20;
/// Checks of completed uploads (a whole-file digest, then a whole image read or an
/// `ffprobe`) at once on a node, and of one user's.
const CHECKS: usize = 4;
const CHECKS_PER_USER: usize = 2;
/// Times a writer of an object's record (a removal, processing, an alt text) reads it
/// again after a versioned write found it written meanwhile (on another node).
const REMOVE_ATTEMPTS: usize = 4;
/// How long a chunk's body may stall between two pieces.
const PIECE_IDLE: Duration = Duration::from_secs(15);
/// How long a claim on deleting an original lives (a node that dies holding one).
const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Times processing is tried on a node run before its job waits for the next start.
const PROCESS_ATTEMPTS: u32 = 5;
/// How long an object may stay unused after its upload before it is collected.
pub const UNUSED_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often a node collects objects that were never used.
const UNUSED_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long after its id was made a post or story that uses media may still be being
/// written (its use is recorded before its commit): until then a use whose owner is not
/// found yet still counts.
const ATTACH_GRACE_MS: u64 = 10 * 60 * 1000;
/// Uses looked at per page when deciding whether a viewer may see an object.
const MAX_REFS_CHECKED: usize = 50;
/// Pages of uses looked at at most (a much forwarded photo has many).
const MAX_REF_PAGES: usize = 20;
/// How long a viewer found allowed to see an object is not asked again when signed URLs
/// of it are served (a right lost meanwhile takes effect after it; a deleted object at
/// once).
const URL_VIEW_MEMO_MS: u64 = 10_000;
/// Viewers remembered per shard for signed URLs.
const URL_VIEW_MEMO: usize = 4096;
/// Bytes per piece of a download read from the blob store.
const DOWNLOAD_PIECE: usize = 256 * 1024;
/// Pieces of one download read ahead of the one being sent.
const READ_AHEAD: usize = 2;
/// How long a chunk's bytes may take to arrive.
const CHUNK_DEADLINE: Duration = Duration::from_secs(120);
/// Most characters of alt text.
pub const MAX_ALT_CHARS: usize = 1_500;
/// Pages of 200 rows an account's erasure goes through at most in one call.
const ERASE_PAGES: usize = 10_000;

/// Read-write locks by key, shared by a node's shards.
#[derive(Default)]
struct NodeLocks(Mutex<HashMap<u64, Arc<tokio::sync::RwLock<()>>>>);

impl NodeLocks {
    fn get(&self, k: u64) -> Arc<tokio::sync::RwLock<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(k).or_default().clone()
    }
}

/// A pool of permits lent without queueing, of which one user holds at most a share.
struct Shares {
    permits: tokio::sync::Semaphore,
    /// Permits held by each user (only users holding some have an entry).
    held: Mutex<HashMap<u64, usize>>,
    per_user: usize,
}

/// One permit of a [`Shares`] pool held by a user, given back on drop.
struct Share<'a> {
    pool: &'a Shares,
    owner: u64,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut held = self.pool.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.owner);
            }
        }
    }
}

impl Shares {
    fn new(permits: usize, per_user: usize) -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(permits),
            held: Mutex::default(),
            per_user,
        }
    }

    /// A permit for `owner`: `Overloaded` at once (never a wait the client cannot see)
    /// when all are taken or `owner` holds their share.
    fn take(&self, owner: u64) -> Result<Share<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(&owner).is_some_and(|&n| n >= self.per_user) {
            return Err(Error::Overloaded);
        }
        // Only a user who gets a permit gets an entry (refusals leave nothing behind).
        let permit = self.permits.try_acquire().map_err(|_| Error::Overloaded)?;
        *held.entry(owner).or_insert(0) += 1;
        Ok(Share {
            pool: self,
            owner,
            _permit: permit,
        })
    }
}

/// How long a chunk may go without a byte before, when the node's chunk memory runs
/// out, it is cut to make room for one that is moving.
const STALL_EVICT: Duration = Duration::from_secs(2);

/// Chunks being received on a node, with when each last got bytes and how many it
/// holds: when their memory runs out, the one holding bytes and stalled longest (no byte
/// for [`STALL_EVICT`]) is cut. A sender that sends most of a chunk fast, then a byte
/// less often than that, holds the memory only until someone needs it.
#[derive(Default)]
struct Receiving {
    next: std::sync::atomic::AtomicU64,
    /// Each chunk's last byte, the bytes it holds, and how to cut it.
    chunks: Mutex<HashMap<u64, Moving>>,
}

/// A chunk being received: when it last got bytes, how many it holds, how to cut it.
type Moving = (std::time::Instant, usize, Arc<tokio::sync::Notify>);

/// One chunk in [`Receiving`], out of it when dropped.
struct InFlight<'a> {
    of: &'a Receiving,
    id: u64,
    cut: Arc<tokio::sync::Notify>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.of.lock().remove(&self.id);
    }
}

impl Receiving {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Moving>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self) -> InFlight<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cut = Arc::new(tokio::sync::Notify::new());
        self.lock()
            .insert(id, (std::time::Instant::now(), 0, cut.clone()));
        InFlight { of: self, id, cut }
    }

    fn progressed(&self, id: u64, bytes: usize) {
        if let Some((at, held, _)) = self.lock().get_mut(&id) {
            *at = std::time::Instant::now();
            *held += bytes;
        }
    }

    /// Cuts the chunk (other than `me`, and holding bytes) that has gone longest
    /// without a byte, if that is at least [`STALL_EVICT`]; whether there was one.
    fn cut_stalled(&self, me: u64) -> bool {
        let mut chunks = self.lock();
        let stalled = chunks
            .iter()
            .filter(|(id, (at, held, _))| **id != me && *held > 0 && at.elapsed() >= STALL_EVICT)
            .min_by_key(|(_, (at, _, _))| *at)
            .map(|(id, _)| *id);
        match stalled.and_then(|id| chunks.remove(&id)) {
            Some((_, _, cut)) => {
                cut.notify_one();
                true
            }
            None => false,
        }
    }
}

/// What a node's shards share: the blob store, the staging area, the limits, the locks
/// that order chunks against completion and blob releases, and the processing pool.
pub struct MediaNode {
    blobs: Arc<dyn BlobStore>,
    staging: Staging,
    config: MediaConfig,
    uploads: NodeLocks,
    digests: NodeLocks,
    /// Orders the writers of one object's record on this node (processing, alt text,
    /// removal); across nodes they are ordered by versioned writes.
    objects: NodeLocks,
    /// Chunks being received, at most a share per user.
    buffers: Shares,
    /// Bytes of chunks received and not yet written (permits are bytes).
    chunk_memory: tokio::sync::Semaphore,
    /// The chunks being received, to cut stalled ones when that memory runs out.
    receiving: Receiving,
    /// Completion checks (whole-file digest, type and header checks, `ffprobe`).
    checks: Shares,
    /// Processing workers, taken in turn by the users waiting for them.
    workers: fair::FairPool,
    /// Objects being processed on this node.
    running: Mutex<std::collections::HashSet<u64>>,
    /// Signs HTTPS URLs, when the node serves them.
    urls: std::sync::OnceLock<urls::UrlSigner>,
    /// The local cache in front of an object store (fleets), for its metrics.
    cache: Option<Arc<CachedBlobs>>,
}

impl MediaNode {
    /// Media on `blobs`, with uploads staged under `staging`.
    pub fn new(blobs: Arc<dyn BlobStore>, staging: Staging, config: MediaConfig) -> Arc<Self> {
        Self::build(blobs, staging, config, None)
    }

    fn build(
        blobs: Arc<dyn BlobStore>,
        staging: Staging,
        config: MediaConfig,
        cache: Option<Arc<CachedBlobs>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            blobs,
            staging,
            config,
            uploads: NodeLocks::default(),
            digests: NodeLocks::default(),
            objects: NodeLocks::default(),
            buffers: Shares::new(CHUNK_SLOTS, CHUNK_BUFFERS_PER_USER),
            chunk_memory: tokio::sync::Semaphore::new(
                CHUNK_BUFFERS.saturating_mul(config.chunk_bytes as usize),
            ),
            receiving: Receiving::default(),
            checks: Shares::new(CHECKS, CHECKS_PER_USER),
            workers: fair::FairPool::new(config.workers),
            running: Mutex::default(),
            urls: std::sync::OnceLock::new(),
            cache,
        })
    }

    /// Blobs in the S3-compatible store at `url` (see [`s3`]) behind a local cache of
    /// `cache_bytes` under `dir/cache`, or under `dir` when `url` is `None`; uploads are
    /// staged under `dir/staging` either way.
    pub fn open(
        dir: &std::path::Path,
        url: Option<&str>,
        cache_bytes: u64,
        config: MediaConfig,
    ) -> Result<Arc<Self>> {
        let Some(url) = url else {
            return Self::local(dir, config);
        };
        let origin: Arc<dyn BlobStore> = Arc::new(S3Blobs::open(url)?);
        let cache = Arc::new(CachedBlobs::open(origin, dir.join("cache"), cache_bytes)?);
        let staging =
            Staging::open_configured(dir.join("staging"), Self::io(config)?, config.direct_writes)?;
        let blobs: Arc<dyn BlobStore> = cache.clone();
        Ok(Self::build(blobs, staging, config, Some(cache)))
    }

    /// The embedded default: blobs and staging under `dir` (`<data>/media`).
    pub fn local(dir: &std::path::Path, config: MediaConfig) -> Result<Arc<Self>> {
        let io_path = Self::io(config)?;
        let blobs = Arc::new(LocalBlobs::open_with(dir.to_path_buf(), io_path.clone())?);
        let staging = Staging::open_configured(dir.join("staging"), io_path, config.direct_writes)?;
        Ok(Self::new(blobs, staging, config))
    }

    /// The file I/O `config` asks for, reported once.
    fn io(config: MediaConfig) -> Result<uring::Io> {
        let io_path = uring::Io::select(config.blob_io).map_err(|e| {
            tracing::error!(error = %e, "media.blob_io = \"io_uring\" but io_uring is unavailable");
            Error::Unavailable("io_uring (media.blob_io)")
        })?;
        tracing::info!(io = io_path.name(), "media file i/o");
        Ok(io_path)
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The limits.
    pub fn config(&self) -> MediaConfig {
        self.config
    }

    /// The local cache in front of the object store, when blobs live in one.
    pub fn cache(&self) -> Option<&Arc<CachedBlobs>> {
        self.cache.as_ref()
    }

    /// The file I/O of the staging area (and of the local blob store): `std` or
    /// `io_uring`.
    pub fn file_io(&self) -> &'static str {
        self.staging.io_name()
    }

    /// Serves signed HTTPS URLs minted and checked by `signer` (set once, at start,
    /// when the node has a `[web]` listener; later calls are ignored).
    pub fn serve_urls(&self, signer: urls::UrlSigner) {
        let _ = self.urls.set(signer);
    }
}

/// An upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Upload {
    upload_id: u64,
    media_id: u64,
    owner_id: u64,
    kind: Kind,
    size: u64,
    sha256: [u8; 32],
    chunk_bytes: u32,
    alt_text: String,
    /// The node whose staging holds the bytes.
    node: u16,
    created_at_ms: u64,
    expires_at_ms: u64,
    /// Set once completed: a repeated `complete` answers with the object.
    completed: bool,
}

impl Upload {
    fn ttl(&self, now: u64) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(now).max(1_000))
    }
}

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    /// The upload.
    pub upload_id: u64,
    /// The object it will become.
    pub media_id: u64,
    /// Bytes durably received from the start (the next chunk to send starts here).
    pub offset: u64,
    /// Declared size.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk_bytes: u32,
    /// When the upload is forgotten.
    pub expires_at_ms: u64,
}

/// An upload as declared by its client.
#[derive(Debug, Clone)]
pub struct NewUpload {
    /// What it claims to be.
    pub kind: Kind,
    /// Total bytes.
    pub size: u64,
    /// SHA-256 of the whole object.
    pub sha256: Vec<u8>,
    /// Alt text.
    pub alt_text: String,
}

/// One chunk's header.
#[derive(Debug, Clone)]
pub struct ChunkHeader {
    /// The upload.
    pub upload_id: u64,
    /// Where it starts (a multiple of the chunk size).
    pub offset: u64,
    /// Its length.
    pub length: u32,
    /// Its SHA-256.
    pub sha256: Vec<u8>,
}

/// What a download sends.
pub struct Download {
    /// The object.
    pub media_id: u64,
    /// The rendition sent.
    pub rendition: String,
    /// Its type.
    pub mime: String,
    /// Its whole size.
    pub total: u64,
    /// First byte sent.
    pub start: u64,
    /// Bytes sent.
    pub length: u64,
    /// Stable for these bytes.
    pub etag: String,
    /// The bytes.
    pub body: ByteStream,
}

/// One stored blob of an object: a rendition or the original.
#[derive(Debug, Clone)]
pub struct Target {
    /// The object.
    pub media_id: u64,
    /// The rendition ("original", "large", "hls/master.m3u8", ...).
    pub name: String,
    key: String,
    /// Its type.
    pub mime: String,
    /// Its size.
    pub total: u64,
    /// Stable for these bytes (renditions and originals never change).
    pub etag: String,
}

impl Target {
    /// Its bytes from `start` to `end` (exclusive), read in pieces: the next piece is
    /// read while the one before it is being sent ([`READ_AHEAD`] at a time).
    fn body(&self, blobs: &Arc<dyn BlobStore>, start: u64, end: u64) -> ByteStream {
        let blob = blob::Piecewise::new(blobs, &self.key);
        let pieces = (start..end)
            .step_by(DOWNLOAD_PIECE)
            .map(move |at| (at, (end - at).min(DOWNLOAD_PIECE as u64) as usize));
        futures::stream::iter(pieces)
            .map(move |(at, want)| {
                let blob = blob.clone();
                async move {
                    match blob.read(at, want).await {
                        Ok(b) if b.len() == want => Ok(b),
                        // Shorter than its record says.
                        Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    }
                }
            })
            .buffered(READ_AHEAD)
            .boxed_local()
    }
}

/// What a signed URL serves: one blob, readable by range, until the URL expires.
pub struct Signed {
    /// The blob.
    pub target: Target,
    blobs: Arc<dyn BlobStore>,
    /// When the URL stops working (Unix ms): caches must not keep it longer.
    pub expires_ms: u64,
}

impl Signed {
    /// Its bytes from `start` to `end` (exclusive; within `target.total`).
    pub fn body(&self, start: u64, end: u64) -> ByteStream {
        self.target
            .body(&self.blobs, start, end.min(self.target.total))
    }
}

/// The media service of one shard.
pub struct Media<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: RefCell<IdGenerator>,
    node_number: u16,
    shard: u16,
    node: Arc<MediaNode>,
    posts: Rc<Posts<S>>,
    delivery: Option<Rc<Delivery>>,
    locks: KeyedLocks,
    limits: crate::rate::PerUser,
    /// Pages of uses looked through past the first, per viewer (an object used by
    /// thousands costs a viewer who sees none of them a walk through all of them); a
    /// viewer out of pages is not shown the object until the bucket refills.
    walks: crate::rate::PerUser,
    /// Viewers found allowed to see an object when a signed URL was served, until when
    /// (Unix ms): the segments of one HLS playback ask once, not once each.
    url_views: RefCell<HashMap<(u64, u64), u64>>,
}

fn sha(v: &[u8], field: &'static str) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(v).map_err(|_| Error::InvalidArgument { field })
}

impl<S: Store + Clone + 'static> Media<S> {
    /// The media service of shard `shard` of node `node_number`.
    pub fn new(
        store: S,
        clock: Arc<dyn Clock>,
        node_number: u16,
        shard: u16,
        node: Arc<MediaNode>,
        posts: Rc<Posts<S>>,
    ) -> Result<Self> {
        let ids = IdGenerator::new(node_number, shard)
            .map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: RefCell::new(ids),
            node_number,
            shard,
            node,
            posts,
            delivery: None,
            locks: KeyedLocks::default(),
            // Uploads are expensive (disk, CPU): 60 a minute, 20 at once.
            limits: crate::rate::PerUser::new(60, 20),
            // 50 uses a page: a viewer may look through 3,000 uses a minute beyond the
            // first 50 of each object (a burst of 1,500).
            walks: crate::rate::PerUser::new(60, 30),
            url_views: RefCell::new(HashMap::new()),
        })
    }

    /// Pushes state changes to owners through `delivery`.
    pub fn with_delivery(mut self, delivery: Rc<Delivery>) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// The delivery plane, for subscriptions.
    pub fn delivery(&self) -> Result<&Rc<Delivery>> {
        self.delivery
            .as_ref()
            .ok_or(Error::Unavailable("live media events"))
    }

    fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next(self.clock.now_ms()).0
    }

    /// Starts the node's background work on its first shard: the processing of media left
    /// in the queue by a restart, and the hourly sweep of abandoned staged uploads.
    pub fn start(self: &Rc<Self>) {
        if self.shard != 0 {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = me.replay_jobs().await {
                tracing::warn!(error = %e, "media jobs not replayed");
            }
            if let Err(e) = me.replay_removals().await {
                tracing::warn!(error = %e, "media removals not finished");
            }
            loop {
                let cutoff = std::time::SystemTime::now() - t::UPLOAD_TTL;
                match me.node.staging.sweep(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "abandoned uploads swept"),
                    Err(e) => tracing::warn!(error = %e, "staging sweep failed"),
                }
                match me.collect_unused().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "media never used collected"),
                    Err(e) => tracing::warn!(error = %e, "unused media sweep failed"),
                }
                tokio::time::sleep(UNUSED_SWEEP_EVERY).await;
            }
        });
    }

    async fn replay_jobs(self: &Rc<Self>) -> Result<()> {
        let part = KeyBuilder::new().u64(u64::from(self.node_number)).build();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&t::JOBS, &part, &Scan::all(500).after(cursor))
                .await?;
            for row in &page.rows {
                if let Some(id) = id_value(&row.clustering) {
                    self.spawn_processing(id);
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(()),
            }
        }
    }

    fn max_bytes(&self, kind: Kind) -> u64 {
        let c = &self.node.config;
        match kind {
            Kind::Image => c.max_image_bytes,
            Kind::Gif => c.max_gif_bytes,
            Kind::Video => c.max_video_bytes,
        }
    }

    /// Whether `owner`'s account is deleted (or being deleted).
    async fn owner_gone(&self, owner: u64) -> Result<bool> {
        Ok(crate::tables::users::profile(&self.store, owner)
            .await?
            .is_some_and(|p| p.deleted))
    }

    async fn load_upload(&self, owner: u64, upload_id: u64) -> Result<Upload> {
        let upload: Upload = match self.store.get(&t::UPLOADS, &key(upload_id), &[]).await? {
            Some(b) => decode("upload", &b)?,
            None => return Err(Error::NotFound("upload")),
        };
        if upload.owner_id != owner {
            return Err(Error::NotFound("upload"));
        }
        if upload.node != self.node_number {
            return Err(Error::Unavailable("this upload on this node"));
        }
        Ok(upload)
    }

    /// Bytes of media `owner` holds, and the sizes of their unfinished uploads.
    async fn usage(&self, owner: u64) -> Result<(u64, Vec<u64>)> {
        let held = self
            .store
            .counter_get(&t::USAGE, &key(owner), &crate::tables::name_key("bytes"))
            .await?;
        let open = self
            .store
            .scan(
                &t::OPEN,
                &key(owner),
                &Scan::all(self.node.config.max_open_uploads + 1),
            )
            .await?;
        let sizes = open
            .rows
            .iter()
            .filter_map(|r| id_value(&r.value))
            .collect();
        Ok((u64::try_from(held).unwrap_or(0), sizes))
    }

    /// Starts an upload: checks the declared size against the kind's limit and the
    /// owner's quota (uploads in progress count), and reserves it.
    pub async fn init(&self, owner: u64, new: NewUpload) -> Result<UploadStatus> {
        self.limits.check(owner)?;
        // An account being deleted starts nothing new (its erasure may be under way).
        if self.owner_gone(owner).await? {
            return Err(Error::NotFound("user"));
        }
        if new.size == 0 {
            return Err(Error::InvalidArgument {
                field: "size_bytes",
            });
        }
        if new.size > self.max_bytes(new.kind) {
            return Err(Error::TooLarge("upload"));
        }
        let digest = sha(&new.sha256, "sha256")?;
        if new.alt_text.chars().count() > MAX_ALT_CHARS {
            return Err(Error::InvalidArgument { field: "alt_text" });
        }
        // One reservation at a time per owner on this node (the edge runs an owner's
        // inits on one shard), so two inits cannot both fit in the last free bytes.
        let _guard = self.locks.lock((owner, 0)).await;
        let (held, open) = self.usage(owner).await?;
        if open.len() >= self.node.config.max_open_uploads {
            return Err(Error::QuotaExceeded);
        }
        let pending: u64 = open.iter().sum();
        if held.saturating_add(pending).saturating_add(new.size) > self.node.config.quota_bytes {
            return Err(Error::QuotaExceeded);
        }
        let now = self.clock.now_ms();
        let chunk_bytes = u64::from(self.node.config.chunk_bytes).min(new.size).max(1) as u32;
        let upload = Upload {
            upload_id: self.next_id(),
            media_id: self.next_id(),
            owner_id: owner,
            kind: new.kind,
            size: new.size,
            sha256: digest,
            chunk_bytes,
            alt_text: new.alt_text,
            node: self.node_number,
            created_at_ms: now,
            expires_at_ms: now + t::UPLOAD_TTL.as_millis() as u64,
            completed: false,
        };
        let ttl = Some(t::UPLOAD_TTL);
        // Reserved first, checked again after: an init of the same owner on another node
        // (or shard) did the same, so of two that raced for the last room at least one
        // sees the other's reservation and takes its own back. The owner's quota and
        // open uploads hold fleet-wide.
        let open_row = (key(owner), key(upload.upload_id));
        self.store
            .put(
                &t::OPEN,
                &open_row.0,
                &open_row.1,
                &new.size.to_be_bytes(),
                ttl,
            )
            .await?;
        let (held, open) = self.usage(owner).await?;
        let pending: u64 = open.iter().sum();
        let over = open.len() > self.node.config.max_open_uploads
            || held.saturating_add(pending) > self.node.config.quota_bytes;
        // The staged file exists (and its directory entry is durable) before any chunk:
        // a chunk acknowledged never sits in a file a crash could lose.
        let created = if over {
            Err(Error::QuotaExceeded)
        } else {
            self.node.staging.create(upload.upload_id).await
        };
        if let Err(e) = created {
            self.store
                .delete(&t::OPEN, &open_row.0, &open_row.1)
                .await?;
            return Err(e);
        }
        self.store
            .put(
                &t::UPLOADS,
                &key(upload.upload_id),
                &[],
                &encode("upload", &upload)?,
                ttl,
            )
            .await?;
        Ok(self.status(&upload, 0))
    }

    fn status(&self, u: &Upload, offset: u64) -> UploadStatus {
        UploadStatus {
            upload_id: u.upload_id,
            media_id: u.media_id,
            offset,
            size: u.size,
            chunk_bytes: u.chunk_bytes,
            expires_at_ms: u.expires_at_ms,
        }
    }

    /// The longest prefix of `u` whose chunks are all durable.
    async fn durable_prefix(&self, u: &Upload) -> Result<u64> {
        let mut next = 0u64;
        let mut cursor = None;
        'pages: loop {
            let page = self
                .store
                .scan(
                    &t::CHUNKS,
                    &key(u.upload_id),
                    &Scan::all(1000).after(cursor),
                )
                .await?;
            for row in &page.rows {
                match id_value(&row.clustering) {
                    Some(i) if i == next => next += 1,
                    _ => break 'pages,
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok((next * u64::from(u.chunk_bytes)).min(u.size))
    }

    /// Where an upload stands (after a reconnect: resume from `offset`).
    pub async fn resume(&self, owner: u64, upload_id: u64) -> Result<UploadStatus> {
        let upload = self.load_upload(owner, upload_id).await?;
        let offset = if upload.completed {
            upload.size
        } else {
            self.durable_prefix(&upload).await?
        };
        Ok(self.status(&upload, offset))
    }

    /// Receives one chunk: `body` must carry exactly `header.length` bytes hashing to
    /// `header.sha256`. The chunk is durable (fsync) before it is recorded and answered.
    pub async fn chunk(
        &self,
        owner: u64,
        header: ChunkHeader,
        mut body: ByteStream,
    ) -> Result<UploadStatus> {
        let upload = self.load_upload(owner, header.upload_id).await?;
        let digest = sha(&header.sha256, "sha256")?;
        let chunk = u64::from(upload.chunk_bytes);
        let index = header.offset / chunk;
        let expected = upload.size.saturating_sub(header.offset).min(chunk);
        if !header.offset.is_multiple_of(chunk) || header.offset >= upload.size {
            return Err(Error::InvalidArgument { field: "offset" });
        }
        if u64::from(header.length) != expected {
            return Err(Error::InvalidArgument { field: "length" });
        }
        if upload.completed {
            return Err(Error::Stale("upload already completed"));
        }
        let _slot = self.node.buffers.take(owner)?;
        // Aligned for an `O_DIRECT` write, and hashed as the pieces arrive (the digest is
        // ready when the last piece is, not one pass over the chunk later).
        let mut bytes = DirectBuf::with_capacity(expected as usize);
        let mut hasher = Sha256::new();
        // The node's chunk memory, taken as the bytes come (`Overloaded` when it is all
        // held) and given back when the chunk is written or refused.
        let mut memory: Option<tokio::sync::SemaphorePermit<'_>> = None;
        let receiving = &self.node.receiving;
        let this = receiving.enter();
        let read = async {
            loop {
                let next = tokio::select! {
                    biased;
                    // Cut to make room for a chunk that is moving (see `Receiving`).
                    () = this.cut.notified() => return Err(Error::Overloaded),
                    next = tokio::time::timeout(PIECE_IDLE, body.next()) => next,
                };
                let piece = match next {
                    Ok(Some(piece)) => piece,
                    Ok(None) => break,
                    Err(_) => return Err(Error::InvalidArgument { field: "chunk" }),
                };
                let piece = piece.map_err(|_| Error::InvalidArgument { field: "chunk" })?;
                if (bytes.len() + piece.len()) as u64 > expected {
                    return Err(Error::TooLarge("chunk"));
                }
                let n = u32::try_from(piece.len()).map_err(|_| Error::TooLarge("chunk"))?;
                let memory_left = || self.node.chunk_memory.try_acquire_many(n).ok();
                let mut more = memory_left();
                // All of it held: room is made by cutting chunks that have stalled.
                for _ in 0..3 {
                    if more.is_some() || !receiving.cut_stalled(this.id) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    more = memory_left();
                }
                let more = more.ok_or(Error::Overloaded)?;
                receiving.progressed(this.id, piece.len());
                match &mut memory {
                    Some(held) => held.merge(more),
                    None => memory = Some(more),
                }
                hasher.update(&piece);
                bytes.extend_from_slice(&piece);
            }
            Ok(())
        };
        tokio::time::timeout(CHUNK_DEADLINE, read)
            .await
            .map_err(|_| Error::InvalidArgument { field: "chunk" })??;
        // Read whole: no longer a chunk to cut (its memory goes with its write).
        drop(this);
        if bytes.len() as u64 != expected {
            return Err(Error::InvalidArgument { field: "chunk" });
        }
        if <[u8; 32]>::from(hasher.finalize()) != digest {
            return Err(Error::ChecksumMismatch("chunk"));
        }
        // Chunks write while completion waits (it hashes the file); one that comes after
        // completion (or an abort) writes nothing. The write holds the share of the lock
        // (handed back when it is done), so that it ends before a completion starts even
        // if this request's future is dropped while it runs.
        let shared = self.node.uploads.get(upload.upload_id).read_owned().await;
        if self.load_upload(owner, upload.upload_id).await?.completed {
            return Err(Error::Stale("upload already completed"));
        }
        // The same bytes sent again (a retry whose answer was lost) are stored already:
        // answered without writing them (or an fsync) a second time.
        let stored = self
            .store
            .get(&t::CHUNKS, &key(upload.upload_id), &key(index))
            .await?;
        if stored.is_some_and(|row| row[..] == digest[..]) {
            drop(shared);
            let offset = self.durable_prefix(&upload).await?;
            return Ok(self.status(&upload, offset));
        }
        let now = self.clock.now_ms();
        let _shared = self
            .node
            .staging
            .write_holding(upload.upload_id, header.offset, bytes, shared)
            .await?;
        // The bytes are durable now; their record need not wait for a second fsync: lost
        // in a crash, the chunk is missing from the resume offset and sent again (and
        // `complete`'s own write makes the records durable before anything relies on
        // them for good).
        self.store
            .put_unsynced(
                &t::CHUNKS,
                &key(upload.upload_id),
                &key(index),
                &digest,
                Some(upload.ttl(now)),
            )
            .await?;
        let offset = self.durable_prefix(&upload).await?;
        Ok(self.status(&upload, offset))
    }

    /// Finishes an upload: every chunk durable, the whole object's SHA-256 as declared
    /// (and as `sha256`, when given), its real type accepted for the declared kind, an
    /// image's header within the limits. The original is stored (once per content) and
    /// queued for processing; the answer is the object, `Processing`.
    pub async fn complete(
        self: &Rc<Self>,
        owner: u64,
        upload_id: u64,
        sha256: &[u8],
    ) -> Result<Object> {
        let upload = self.load_upload(owner, upload_id).await?;
        if !sha256.is_empty() && sha(sha256, "sha256")? != upload.sha256 {
            return Err(Error::ChecksumMismatch("upload"));
        }
        let lock = self.node.uploads.get(upload_id);
        let _exclusive = lock.write().await;
        // Read again under the lock: a completion that ran meanwhile answers for both.
        let mut upload = self.load_upload(owner, upload_id).await?;
        if upload.completed {
            return t::load(&self.store, upload.media_id)
                .await?
                .ok_or(Error::NotFound("media"));
        }
        // The whole file is read from here on: a few checks per node, two per user (the
        // client retries the completion after `Overloaded`), each one rate limited like
        // inits (a refused one costs no token).
        let _check = self.node.checks.take(owner)?;
        self.limits.check(owner)?;
        if self.durable_prefix(&upload).await? < upload.size {
            return Err(Error::InvalidArgument {
                field: "incomplete upload",
            });
        }
        let staging = &self.node.staging;
        let mut staged = staging.digest(upload_id, upload.size).await?;
        if staged.is_none() {
            // A completion cut short after storing the original (which takes the staged
            // file) and before making the object: the bytes are back from the blob
            // store, and checked again like any.
            // Only when this upload's own reference to the blob is there: it was
            // written after this upload's bytes matched the digest, so the declared
            // digest alone gets nobody someone else's bytes.
            let hex = hex::encode(upload.sha256);
            let original = t::original_key(&hex);
            let ours = self
                .store
                .get(
                    &t::BLOBS,
                    &crate::tables::name_key(&hex),
                    &key(upload.media_id),
                )
                .await?
                .is_some();
            if ours && self.node.blobs.size(original.clone()).await? == Some(upload.size) {
                self.node
                    .blobs
                    .copy_to_file(original, upload.size, staging.path(upload_id))
                    .await?;
                staged = staging.digest(upload_id, upload.size).await?;
            }
        }
        let (digest, head) = staged.ok_or(Error::InvalidArgument {
            field: "incomplete upload",
        })?;
        if digest != upload.sha256 {
            // Every chunk matched the digest its sender declared for it, so these are the
            // bytes the client sent: its whole-object digest or its chunks are wrong, and
            // resending chunks would only repeat the check. The upload ends here.
            self.forget_upload(&upload).await?;
            return Err(Error::ChecksumMismatch("upload"));
        }
        let checked = match self.check_bytes(&upload, &head).await {
            Ok(v) => v,
            Err(e @ Error::UnsupportedMedia(_)) => {
                // Refused bytes are not kept: the upload ends here.
                self.forget_upload(&upload).await?;
                return Err(e);
            }
            // Busy or a fault of ours: the upload stays, for another completion.
            Err(e) => return Err(e),
        };
        // The size was checked against the declared kind; the bytes may be another (a GIF
        // declared as an image), whose own limit holds too.
        if upload.size > self.max_bytes(checked.kind) {
            self.forget_upload(&upload).await?;
            return Err(Error::TooLarge("upload"));
        }
        let hex = hex::encode(digest);
        let media = Object {
            media_id: upload.media_id,
            owner_id: owner,
            kind: checked.kind,
            mime: checked.mime.to_string(),
            size: upload.size,
            sha256: hex.clone(),
            width: checked.width,
            height: checked.height,
            duration_ms: checked.duration_ms,
            blurhash: String::new(),
            alt_text: upload.alt_text.clone(),
            state: State::Processing,
            reason: String::new(),
            renditions: Vec::new(),
            created_at_ms: self.clock.now_ms(),
        };
        // The blob's reference first, then the blob: a concurrent release of the same
        // content (under the same digest lock) sees the reference and keeps the file.
        {
            let dlock = self.node.digests.get(digest_key(&digest));
            let _g = dlock.write().await;
            let part = crate::tables::name_key(&hex);
            self.store
                .put(&t::BLOBS, &part, &key(media.media_id), &[], None)
                .await?;
            // A removal on another node may be deleting this same original (see
            // `collect`): stored only once it is done.
            self.no_blob_claim(&part).await?;
            self.node
                .blobs
                .put_file(t::original_key(&hex), staging.path(upload_id))
                .await?;
        }
        let node = KeyBuilder::new().u64(u64::from(self.node_number)).build();
        self.store
            .put(&t::JOBS, &node, &key(media.media_id), &[], None)
            .await?;
        // Looked at again a day later: collected then if nothing uses it.
        self.store
            .put(&t::UNUSED, &node, &key(media.media_id), &[], None)
            .await?;
        // Indexed by owner before it exists, so that erasing the account finds it.
        self.store
            .put(&t::OWNED, &key(owner), &key(media.media_id), &[], None)
            .await?;
        // One commit makes the object, counts its bytes against the owner and ends the
        // upload: a completion cut short by a storage fault is wholly done (a retry
        // finds the upload completed) or not at all (a retry does it), and the bytes are
        // never counted twice.
        upload.completed = true;
        let now = self.clock.now_ms();
        let commit = selfie_storage::Commit::new()
            .when(selfie_storage::Condition::Absent {
                row: selfie_storage::Cell::new(&t::MEDIA, key(media.media_id), Bytes::new()),
                value: encode("media", &media)?.into(),
                ttl: None,
            })
            .add(
                selfie_storage::Cell::new(&t::USAGE, key(owner), crate::tables::name_key("bytes")),
                i64::try_from(upload.size).unwrap_or(i64::MAX),
                None,
            )
            .put(
                selfie_storage::Cell::new(&t::UPLOADS, key(upload_id), Bytes::new()),
                encode("upload", &upload)?,
                Some(upload.ttl(now)),
            )
            .delete(selfie_storage::Cell::new(
                &t::OPEN,
                key(owner),
                key(upload_id),
            ));
        if !self.store.commit(&commit).await? {
            // The object exists already: a completion before this one made it and was
            // cut short after (on CQL a commit's writes land after its condition). What
            // it left undone is done here (each write the same whoever makes it); its
            // bytes may go uncounted on CQL (a lost counter change has nothing to be
            // counted again from).
            let made = t::load(&self.store, media.media_id)
                .await?
                .ok_or(Error::NotFound("media"))?;
            self.store
                .put(
                    &t::UPLOADS,
                    &key(upload_id),
                    &[],
                    &encode("upload", &upload)?,
                    Some(upload.ttl(now)),
                )
                .await?;
            self.store
                .delete(&t::OPEN, &key(owner), &key(upload_id))
                .await?;
            if self.owner_gone(owner).await? {
                self.remove(made.media_id, Some(owner), true).await?;
                return Err(Error::NotFound("user"));
            }
            // (Uploads complete on their own node, whose processing of an object is
            // one at a time: see `spawn_processing`.)
            if made.state == State::Processing {
                self.spawn_processing(made.media_id);
            }
            return Ok(made);
        }
        // An account erased while this completed (its erasure may have looked before
        // this object existed): the object goes now rather than outlive the account.
        if self.owner_gone(owner).await? {
            self.remove(media.media_id, Some(owner), true).await?;
            return Err(Error::NotFound("user"));
        }
        self.spawn_processing(media.media_id);
        Ok(media)
    }

    /// The real type of the upload whose first bytes are `head`, and its size in pixels
    /// and length: an image's from its header, a video's from `ffprobe`.
    async fn check_bytes(&self, upload: &Upload, head: &[u8]) -> Result<Checked> {
        let (mime, kind) = process::sniff(head, upload.kind)?;
        if kind == Kind::Video {
            let p = video::probe(&self.node.staging.path(upload.upload_id), mime).await?;
            return Ok(Checked {
                mime,
                kind,
                width: p.width,
                height: p.height,
                duration_ms: u32::try_from(p.duration.as_millis()).unwrap_or(u32::MAX),
            });
        }
        let bytes = self.node.staging.read_all(upload.upload_id).await?;
        let (width, height) =
            tokio::task::spawn_blocking(move || process::precheck_image(&bytes, mime))
                .await
                .map_err(|_| Error::Internal("media check task failed"))??;
        Ok(Checked {
            mime,
            kind,
            width,
            height,
            duration_ms: 0,
        })
    }

    /// Drops an upload: its rows and staged bytes.
    async fn forget_upload(&self, upload: &Upload) -> Result<()> {
        self.store
            .delete(&t::OPEN, &key(upload.owner_id), &key(upload.upload_id))
            .await?;
        self.store
            .delete(&t::UPLOADS, &key(upload.upload_id), &[])
            .await?;
        self.node.staging.remove(upload.upload_id).await
    }

    /// Abandons an upload (its reservation is released).
    pub async fn abort(&self, owner: u64, upload_id: u64) -> Result<()> {
        let lock = self.node.uploads.get(upload_id);
        let _exclusive = lock.write().await;
        let upload = self.load_upload(owner, upload_id).await?;
        if upload.completed {
            return Err(Error::Stale("upload already completed"));
        }
        self.forget_upload(&upload).await
    }

    /// Writes `media` over its record if that still holds `raw`; `false` when it does
    /// not (written meanwhile, or gone).
    async fn replace(&self, raw: &[u8], media: &Object) -> Result<bool> {
        Ok(self
            .store
            .compare_and_set(
                &t::MEDIA,
                &key(media.media_id),
                &[],
                raw,
                Some(&encode("media", media)?),
                None,
            )
            .await?)
    }

    fn spawn_processing(self: &Rc<Self>, media_id: u64)
    where
        S: 'static,
    {
        // One processing of an object at a time on a node (its renditions' keys are
        // its own: a second run would write, or clean up, the first's files).
        {
            let mut running = self.node.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(media_id) {
                return;
            }
        }
        let me = self.clone();
        tokio::task::spawn_local(async move {
            struct Done<'a>(&'a Mutex<std::collections::HashSet<u64>>, u64);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    let mut running = self.0.lock().unwrap_or_else(|p| p.into_inner());
                    running.remove(&self.1);
                }
            }
            let _done = Done(&me.node.running, media_id);
            // A storage failure (the database or the object store away) leaves the job
            // queued: tried again a few times, backing off, then at the next start.
            let mut wait = Duration::from_secs(2);
            for attempt in 1..=PROCESS_ATTEMPTS {
                match me.process(media_id).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(media_id, attempt, error = %e, "media processing failed");
                    }
                }
                if attempt < PROCESS_ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 4;
                }
            }
        });
    }

    /// Processes a queued object: renditions and placeholder, then `Ready` (or
    /// `Rejected` with the reason); the job row goes last, so a crash replays it. The
    /// result is written under the object's lock into its record as it is then: an
    /// object deleted meanwhile stays deleted (what was made for it goes), an alt text
    /// changed meanwhile stays changed.
    async fn process(&self, media_id: u64) -> Result<()> {
        let job = (
            KeyBuilder::new().u64(u64::from(self.node_number)).build(),
            key(media_id),
        );
        let media = match t::load(&self.store, media_id).await? {
            Some(m) if m.state == State::Processing => m,
            _ => {
                self.store.delete(&t::JOBS, &job.0, &job.1).await?;
                return Ok(());
            }
        };
        let done = {
            // One user's many uploads take turns with everyone else's.
            let _worker = self.node.workers.acquire(media.owner_id).await;
            match media.kind {
                Kind::Video => self.process_video(&media).await,
                Kind::Image | Kind::Gif => self.process_image(&media).await,
            }
        };
        // A tool that failed to start or ran over, or an original that is gone, fails the
        // object; storage errors (the database, the object store or the disk away) leave
        // the job to be tried again.
        let done = match done {
            Err(e @ (Error::Internal(_) | Error::Unavailable(_) | Error::NotFound(_))) => Err(e),
            Err(e) => return Err(e),
            Ok(made) => Ok(made),
        };
        let lock = self.node.objects.get(media_id);
        let _exclusive = lock.write().await;
        for _ in 0..REMOVE_ATTEMPTS {
            let current = t::load_raw(&self.store, media_id).await?;
            let Some((raw, mut media)) = current.filter(|(_, m)| m.state == State::Processing)
            else {
                // Deleted (or being deleted) while it was processed: nothing made for it
                // is kept.
                if let Ok(Ok(made)) = &done {
                    for r in &made.renditions {
                        self.node.blobs.delete(r.key.clone()).await?;
                    }
                }
                self.store.delete(&t::JOBS, &job.0, &job.1).await?;
                return Ok(());
            };
            match &done {
                Err(e) => {
                    tracing::warn!(media_id, error = %e, "media processing failed");
                    media.state = State::Failed;
                    media.reason = e.to_string();
                }
                Ok(Ok(made)) => {
                    media.renditions = made.renditions.clone();
                    media.blurhash = made.blurhash.clone();
                    if let Some((w, h)) = made.upright {
                        (media.width, media.height) = (w, h);
                    }
                    media.state = State::Ready;
                }
                Ok(Err(refusal)) => {
                    media.state = State::Rejected;
                    media.reason = refusal.to_string();
                }
            }
            // Written over the record as read, or read again (an alt text changed on
            // another node, a removal begun there).
            if self.replace(&raw, &media).await? {
                self.notify(&media).await;
                self.store.delete(&t::JOBS, &job.0, &job.1).await?;
                return Ok(());
            }
        }
        Err(Error::Stale("media changed while being processed"))
    }

    /// An image's renditions and placeholder (or why it was refused); its upright size is
    /// written into `media`.
    async fn process_image(
        &self,
        media: &Object,
    ) -> Result<std::result::Result<Made, process::Refusal>> {
        let size = usize::try_from(media.size).map_err(|_| Error::TooLarge("media"))?;
        let original = self.node.blobs.read(media.original_key(), 0, size).await?;
        let gif = media.kind == Kind::Gif;
        let kept = original.clone();
        let done = tokio::task::spawn_blocking(move || {
            process::process_image(&kept).map(|p| (p, gif && process::is_animated_gif(&kept)))
        })
        .await
        .map_err(|_| Error::Internal("media processing task failed"))?;
        let (p, animated) = match done {
            Ok(p) => p,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let mut renditions = Vec::new();
        for r in p.renditions {
            let key = format!("r/{}/{}.jpg", media.media_id, r.name);
            let size = r.bytes.len() as u64;
            self.node
                .blobs
                .put(key.clone(), Bytes::from(r.bytes))
                .await?;
            renditions.push(Rendition {
                name: r.name.to_string(),
                mime: "image/jpeg".into(),
                width: r.width,
                height: r.height,
                size,
                key,
            });
        }
        if animated {
            // The animation as a video players loop; its first frame's renditions above
            // stay the placeholder and the still.
            let work = self.node.staging.work_dir(media.media_id);
            let _ = tokio::fs::remove_dir_all(&work).await;
            tokio::fs::create_dir_all(&work)
                .await
                .map_err(|_| Error::Internal("media work directory not created"))?;
            let made = async {
                let input = work.join("original.gif");
                tokio::fs::write(&input, &original)
                    .await
                    .map_err(|_| Error::Internal("media work file not written"))?;
                let mp4 = video::gif_to_mp4(&input, &work).await?;
                let key = format!("r/{}/{}", media.media_id, mp4.name);
                self.node.blobs.put_file(key.clone(), mp4.path).await?;
                let size = self
                    .node
                    .blobs
                    .size(key.clone())
                    .await?
                    .ok_or(Error::Internal("animation not stored"))?;
                Ok::<_, Error>(Rendition {
                    name: mp4.name,
                    mime: mp4.mime.into(),
                    width: mp4.width,
                    height: mp4.height,
                    size,
                    key,
                })
            }
            .await;
            let _ = tokio::fs::remove_dir_all(&work).await;
            match made {
                Ok(r) => renditions.push(r),
                // A GIF whose frames decode but that ffmpeg cannot convert keeps its still
                // renditions; storage failures are tried again.
                Err(Error::UnsupportedMedia(refusal)) => {
                    tracing::warn!(media = media.media_id, %refusal, "GIF animation not converted");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Ok(Made {
            renditions,
            blurhash: p.blurhash,
            upright: Some((p.width, p.height)),
        }))
    }

    /// A video's HLS ladder and poster (or why it was refused), transcoded in a work
    /// directory that goes afterwards.
    async fn process_video(
        &self,
        media: &Object,
    ) -> Result<std::result::Result<Made, process::Refusal>> {
        let work = self.node.staging.work_dir(media.media_id);
        let _ = tokio::fs::remove_dir_all(&work).await;
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(|_| Error::Internal("media work directory not created"))?;
        let result = self.transcode_in(media, &work).await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        match result {
            Err(Error::UnsupportedMedia(refusal)) => Ok(Err(refusal)),
            other => other.map(Ok),
        }
    }

    async fn transcode_in(&self, media: &Object, work: &std::path::Path) -> Result<Made> {
        let input = work.join("original");
        self.node
            .blobs
            .copy_to_file(media.original_key(), media.size, input.clone())
            .await?;
        let probe = video::probe(&input, &media.mime).await?;
        let outputs = video::transcode(&input, &media.mime, probe, work).await?;
        let mut renditions = Vec::new();
        let mut blurhash = String::new();
        for o in outputs {
            let key = format!("r/{}/{}", media.media_id, o.name);
            if o.name == "poster" {
                let path = o.path.clone();
                blurhash = tokio::task::spawn_blocking(move || {
                    image::open(path).map(|img| process::blurhash_of(&img))
                })
                .await
                .map_err(|_| Error::Internal("media processing task failed"))?
                .unwrap_or_default();
            }
            // Moved into the store from its file (segments and rungs are never read
            // whole into memory); the size is the stored blob's (a retried job finds
            // the blob of its first run in place).
            self.node
                .blobs
                .put_file(key.clone(), o.path.clone())
                .await?;
            let size = self
                .node
                .blobs
                .size(key.clone())
                .await?
                .ok_or(Error::Internal("transcoder output not stored"))?;
            renditions.push(Rendition {
                name: o.name,
                mime: o.mime.into(),
                width: o.width,
                height: o.height,
                size,
                key,
            });
        }
        Ok(Made {
            renditions,
            blurhash,
            upright: None,
        })
    }

    /// Tells the owner's `Media` subscribers about `media`.
    async fn notify(&self, media: &Object) {
        let Some(delivery) = &self.delivery else {
            return;
        };
        let sent = match wire::info_event(delivery, media) {
            Ok(frame) => {
                delivery
                    .publish(Topic::new(SubscriptionKind::Media, media.owner_id), frame)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "media event not published");
        }
    }

    /// Whether `viewer` may see `media`: its owner, or through a post, story or profile
    /// that uses it and that the viewer may read.
    pub async fn may_view(&self, viewer: u64, media: &Object) -> Result<bool> {
        if viewer == media.owner_id {
            return Ok(true);
        }
        if media.state != State::Ready {
            return Ok(false);
        }
        // Conversations the viewer is found not to be a member of are not asked again.
        let mut unseen = std::collections::HashSet::new();
        let mut cursor = None;
        for page in 0..MAX_REF_PAGES {
            // Out of pages for now: not shown, answered like a missing object (a
            // `RateLimited` here would tell a stranger the object exists and is used
            // widely). Only views walking past the first page of unseen uses are cut.
            if page > 0 && self.walks.check(viewer).is_err() {
                tracing::debug!(viewer, media = media.media_id, "media view walk cut short");
                return Ok(false);
            }
            let refs = self
                .store
                .scan(
                    &t::REFS,
                    &key(media.media_id),
                    &Scan::all(MAX_REFS_CHECKED).after(cursor),
                )
                .await?;
            for row in &refs.rows {
                let seen = match Use::from_clustering(&row.clustering) {
                    Some(Use::Post(id)) => match self.posts.stored(id).await? {
                        Some(post) => !post.deleted && self.posts.can_read(viewer, &post).await?,
                        None => false,
                    },
                    Some(Use::Story(id)) => {
                        // Stories use their author's media only: the owner is the author.
                        let now = self.clock.now_ms();
                        let live = crate::tables::stories::load(&self.store, id)
                            .await?
                            .filter(|s| s.expires_at_ms > now);
                        let story = match live {
                            Some(s) => Some(s),
                            None => {
                                crate::tables::stories::highlight(&self.store, media.owner_id, id)
                                    .await?
                            }
                        };
                        match story {
                            Some(s) => self.posts.access(viewer, s.author_id).await?.admits(
                                viewer,
                                s.audience,
                                &s.mentions,
                            ),
                            None => false,
                        }
                    }
                    Some(Use::Profile(user)) => !self.posts.access(viewer, user).await?.hidden(),
                    // A group's avatar: its members (any state: a request shows it).
                    Some(Use::ChatAvatar(conversation)) => {
                        !unseen.contains(&conversation)
                            && crate::chat::is_member(&self.store, conversation, viewer).await?
                    }
                    // A member of the conversation who may read the message.
                    Some(Use::Chat(conversation, message)) => match id_value(&row.value) {
                        Some(_) if unseen.contains(&conversation) => false,
                        Some(_)
                            if !crate::chat::is_member(&self.store, conversation, viewer)
                                .await? =>
                        {
                            unseen.insert(conversation);
                            false
                        }
                        Some(seq) => {
                            crate::chat::attachment_visible(
                                &self.store,
                                conversation,
                                message,
                                seq,
                                Some(viewer),
                            )
                            .await?
                        }
                        None => false,
                    },
                    None => false,
                };
                if seen {
                    return Ok(true);
                }
            }
            match refs.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(false)
    }

    /// An object as `viewer` may see it (`NotFound` otherwise, without saying whether it
    /// exists).
    pub async fn get(&self, viewer: u64, media_id: u64) -> Result<Object> {
        let mut media = t::load(&self.store, media_id)
            .await?
            .ok_or(Error::NotFound("media"))?;
        if !self.may_view(viewer, &media).await? {
            return Err(Error::NotFound("media"));
        }
        if viewer != media.owner_id {
            media.sha256.clear();
            media.reason.clear();
        }
        Ok(media)
    }

    /// Changes an object's alt text.
    pub async fn set_alt_text(&self, owner: u64, media_id: u64, alt: &str) -> Result<Object> {
        if alt.chars().count() > MAX_ALT_CHARS {
            return Err(Error::InvalidArgument { field: "alt_text" });
        }
        let lock = self.node.objects.get(media_id);
        let _exclusive = lock.write().await;
        for _ in 0..REMOVE_ATTEMPTS {
            let found = t::load_raw(&self.store, media_id)
                .await?
                .filter(|(_, m)| m.owner_id == owner && !m.state.deleting());
            let Some((raw, mut media)) = found else {
                return Err(Error::NotFound("media"));
            };
            media.alt_text = alt.to_string();
            if self.replace(&raw, &media).await? {
                return Ok(media);
            }
        }
        Err(Error::Stale("media changed meanwhile"))
    }

    /// Deletes an object of the caller's that nothing uses (`Stale` while a post, story
    /// or profile does).
    pub async fn delete(&self, owner: u64, media_id: u64) -> Result<()> {
        match self.remove(media_id, Some(owner), false).await? {
            Removal::Removed => Ok(()),
            Removal::Missing => Err(Error::NotFound("media")),
            Removal::InUse => Err(Error::Stale("media in use")),
        }
    }

    /// Erases everything `owner` holds (their account is being deleted): unfinished
    /// uploads are abandoned and every object is removed, whatever uses it (posts,
    /// stories, profiles, chat messages then show it as gone). Idempotent: a call cut
    /// short is finished by the next. Returns how many objects went.
    pub async fn erase_owner(&self, owner: u64) -> Result<usize> {
        let part = key(owner);
        // Each pass deletes the rows it reads (or fails): a bound keeps a bug from spinning.
        for _ in 0..ERASE_PAGES {
            let open = self.store.scan(&t::OPEN, &part, &Scan::all(200)).await?;
            if open.rows.is_empty() {
                break;
            }
            for row in &open.rows {
                let Some(upload_id) = id_value(&row.clustering) else {
                    self.store.delete(&t::OPEN, &part, &row.clustering).await?;
                    continue;
                };
                let lock = self.node.uploads.get(upload_id);
                let _exclusive = lock.write().await;
                match self.load_upload(owner, upload_id).await {
                    Ok(upload) if !upload.completed => self.forget_upload(&upload).await?,
                    Ok(_) | Err(Error::NotFound(_)) => {
                        self.store.delete(&t::OPEN, &part, &row.clustering).await?;
                    }
                    // Staged on another node: its record goes, so nothing can complete it
                    // (that node's sweep removes the file).
                    Err(Error::Unavailable(_)) => {
                        self.store.delete(&t::UPLOADS, &key(upload_id), &[]).await?;
                        self.store.delete(&t::OPEN, &part, &row.clustering).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut removed = 0;
        for _ in 0..ERASE_PAGES {
            let page = self.store.scan(&t::OWNED, &part, &Scan::all(200)).await?;
            if page.rows.is_empty() {
                return Ok(removed);
            }
            for row in &page.rows {
                let Some(media_id) = id_value(&row.clustering) else {
                    self.store.delete(&t::OWNED, &part, &row.clustering).await?;
                    continue;
                };
                match self.remove(media_id, Some(owner), true).await? {
                    Removal::Removed => removed += 1,
                    // Gone already (or never completed: an upload completing now sees
                    // the deleted owner and removes its object itself).
                    Removal::Missing | Removal::InUse => {
                        self.store.delete(&t::OWNED, &part, &row.clustering).await?;
                    }
                }
            }
        }
        Err(Error::Stale("media still being erased"))
    }

    /// Releases objects that their users stopped using: each one nothing uses any more
    /// is deleted.
    pub async fn release(&self, ids: &[u64]) -> Result<()> {
        for &id in ids {
            self.remove(id, None, false).await?;
        }
        Ok(())
    }

    /// Removes an object (of `owner`'s, when given) unless something uses it.
    ///
    /// Removals of one object are ordered by its lock on a node and by versioned writes
    /// across nodes. The record is first swapped for a tombstone ([`State::Deleting`],
    /// gone for readers and for [`t::attach`]); the uses are then looked at a second
    /// time, so a use recorded meanwhile is either seen here (and the record is put back)
    /// or sees the tombstone (and is refused). With no use, the tombstone becomes
    /// [`State::Collecting`], which is never put back; the files go next and the record
    /// last: only the removal that deletes it counts the bytes out of the quota. A
    /// removal cut short leaves the tombstone and a `media_removals` row; the next
    /// removal of the object, or the node's next start, finishes it. `force` removes it
    /// whatever uses it (its owner's account is being erased); the tombstone still
    /// refuses uses recorded meanwhile.
    async fn remove(&self, media_id: u64, owner: Option<u64>, force: bool) -> Result<Removal> {
        let lock = self.node.objects.get(media_id);
        let _exclusive = lock.write().await;
        let node = KeyBuilder::new().u64(u64::from(self.node_number)).build();
        let id = key(media_id);
        let mut marked = false;
        for _ in 0..REMOVE_ATTEMPTS {
            let found = t::load_raw(&self.store, media_id)
                .await?
                .filter(|(_, m)| owner.is_none_or(|o| o == m.owner_id));
            let Some((raw, media)) = found else {
                if marked {
                    self.store.delete(&t::REMOVALS, &node, &id).await?;
                }
                return Ok(Removal::Missing);
            };
            let collecting = if media.state == State::Collecting {
                // Files going (another removal's, or one cut short): finish it.
                raw
            } else {
                let (tombstone, before) = if media.state == State::Deleting {
                    (raw, None)
                } else {
                    if !force && self.in_use(&media).await? {
                        if marked {
                            self.store.delete(&t::REMOVALS, &node, &id).await?;
                        }
                        return Ok(Removal::InUse);
                    }
                    let mut dead = media.clone();
                    dead.state = State::Deleting;
                    let dead = Bytes::from(encode("media", &dead)?);
                    self.store.put(&t::REMOVALS, &node, &id, &[], None).await?;
                    marked = true;
                    if !self
                        .store
                        .compare_and_set(&t::MEDIA, &id, &[], &raw, Some(&dead), None)
                        .await?
                    {
                        // Written meanwhile (on another node): look again.
                        continue;
                    }
                    (dead, Some(raw))
                };
                let used = match if force {
                    Ok(false)
                } else {
                    self.in_use(&media).await
                } {
                    Ok(used) => used,
                    Err(e) => {
                        // Best effort: the object as it was (else the tombstone stays,
                        // and the next removal or start looks at its uses again).
                        if let Some(before) = &before {
                            let back = self
                                .store
                                .compare_and_set(
                                    &t::MEDIA,
                                    &id,
                                    &[],
                                    &tombstone,
                                    Some(before),
                                    None,
                                )
                                .await;
                            if back.is_ok_and(|put| put) {
                                let _ = self.store.delete(&t::REMOVALS, &node, &id).await;
                            }
                        }
                        return Err(e);
                    }
                };
                if used {
                    // Put back as it was; a tombstone left behind comes back as the
                    // ready object its use needs (only ready objects are ever attached).
                    let back = match before {
                        Some(b) => b,
                        None => {
                            let mut m = media.clone();
                            m.state = State::Ready;
                            Bytes::from(encode("media", &m)?)
                        }
                    };
                    if !self
                        .store
                        .compare_and_set(&t::MEDIA, &id, &[], &tombstone, Some(&back), None)
                        .await?
                    {
                        // Another removal found no use and collects it: the use seen
                        // here came after the tombstone and is being refused.
                        continue;
                    }
                    self.store.delete(&t::REMOVALS, &node, &id).await?;
                    return Ok(Removal::InUse);
                }
                let mut last = media.clone();
                last.state = State::Collecting;
                let last = Bytes::from(encode("media", &last)?);
                if !self
                    .store
                    .compare_and_set(&t::MEDIA, &id, &[], &tombstone, Some(&last), None)
                    .await?
                {
                    continue;
                }
                last
            };
            self.collect(&media).await?;
            let won = self
                .store
                .compare_and_set(&t::MEDIA, &id, &[], &collecting, None, None)
                .await?;
            if won {
                self.store
                    .counter_add(
                        &t::USAGE,
                        &key(media.owner_id),
                        &crate::tables::name_key("bytes"),
                        -i64::try_from(media.size).unwrap_or(i64::MAX),
                    )
                    .await?;
                self.store
                    .delete(&t::OWNED, &key(media.owner_id), &id)
                    .await?;
                if force {
                    // The uses that did not keep it go with it.
                    self.drop_refs(media_id).await?;
                }
            }
            self.store.delete(&t::REMOVALS, &node, &id).await?;
            return Ok(if won {
                Removal::Removed
            } else {
                Removal::Missing
            });
        }
        if marked {
            self.store.delete(&t::REMOVALS, &node, &id).await?;
        }
        Err(Error::Stale("media changed while being removed"))
    }

    /// Removes the objects completed on this node more than [`UNUSED_TTL`] ago that
    /// nothing uses (uploaded and never posted, or whose uses all ended); returns how
    /// many went. Objects in use are let go of (a later release collects them).
    pub async fn collect_unused(&self) -> Result<usize> {
        let node = KeyBuilder::new().u64(u64::from(self.node_number)).build();
        let now = self.clock.now_ms();
        let ttl = UNUSED_TTL.as_millis() as u64;
        let mut removed = 0;
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&t::UNUSED, &node, &Scan::all(200).after(cursor))
                .await?;
            for row in &page.rows {
                let Some(id) = id_value(&row.clustering) else {
                    self.store
                        .delete(&t::UNUSED, &node, &row.clustering)
                        .await?;
                    continue;
                };
                // Rows are in id order (the upload's start); an object completes after
                // it starts, so none past this one is due yet.
                if selfie_storage::id::Id(id).unix_ms().saturating_add(ttl) > now {
                    return Ok(removed);
                }
                // A day from its completion (an upload may take a day to finish).
                let completed = t::load_raw(&self.store, id)
                    .await?
                    .map(|(_, m)| m.created_at_ms);
                if completed.is_some_and(|at| at.saturating_add(ttl) > now) {
                    continue;
                }
                match self.remove(id, None, false).await {
                    Ok(Removal::Removed) => removed += 1,
                    Ok(_) => {}
                    Err(e) => {
                        // Looked at again by the next sweep; the others go on.
                        tracing::warn!(media_id = id, error = %e, "unused media not removed");
                        continue;
                    }
                }
                self.store
                    .delete(&t::UNUSED, &node, &row.clustering)
                    .await?;
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(removed),
            }
        }
    }

    /// Finishes the removals that this node's last run left half done (one that fails
    /// again stays for the next start; the others go on).
    async fn replay_removals(&self) -> Result<()> {
        let node = KeyBuilder::new().u64(u64::from(self.node_number)).build();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&t::REMOVALS, &node, &Scan::all(500).after(cursor))
                .await?;
            for row in &page.rows {
                if let Some(id) = id_value(&row.clustering)
                    && let Err(e) = self.remove(id, None, false).await
                {
                    tracing::warn!(media_id = id, error = %e, "media removal not finished");
                    continue;
                }
                self.store
                    .delete(&t::REMOVALS, &node, &row.clustering)
                    .await?;
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(()),
            }
        }
    }

    /// Deletes every use row of an object removed by force.
    async fn drop_refs(&self, media_id: u64) -> Result<()> {
        for _ in 0..ERASE_PAGES {
            let page = self
                .store
                .scan(&t::REFS, &key(media_id), &Scan::all(200))
                .await?;
            if page.rows.is_empty() {
                return Ok(());
            }
            for row in &page.rows {
                self.store
                    .delete(&t::REFS, &key(media_id), &row.clustering)
                    .await?;
            }
        }
        Err(Error::Stale("media uses still being dropped"))
    }

    /// Whether anything still uses `media`. Uses that ended without being recorded as
    /// ended (a story that expired out of the highlights, a post whose commit failed
    /// after its use was recorded) are dropped on the way.
    async fn in_use(&self, media: &Object) -> Result<bool> {
        let now = self.clock.now_ms();
        let young = |id: u64| {
            selfie_storage::id::Id(id)
                .unix_ms()
                .saturating_add(ATTACH_GRACE_MS)
                > now
        };
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(
                    &t::REFS,
                    &key(media.media_id),
                    &Scan::all(200).after(cursor),
                )
                .await?;
            for row in &page.rows {
                let live = match Use::from_clustering(&row.clustering) {
                    Some(Use::Post(id)) => match self.posts.stored(id).await? {
                        Some(post) => !post.deleted,
                        None => young(id),
                    },
                    Some(Use::Story(id)) => {
                        match crate::tables::stories::load(&self.store, id).await? {
                            Some(s) if s.expires_at_ms > now => true,
                            Some(_) => {
                                crate::tables::stories::highlight(&self.store, media.owner_id, id)
                                    .await?
                                    .is_some()
                            }
                            None => {
                                young(id)
                                    || crate::tables::stories::highlight(
                                        &self.store,
                                        media.owner_id,
                                        id,
                                    )
                                    .await?
                                    .is_some()
                            }
                        }
                    }
                    // Until its message is stored (its number noted), a chat use is
                    // live while the message may still be being sent.
                    Some(Use::Chat(conversation, message)) => match id_value(&row.value) {
                        Some(seq) => {
                            crate::chat::attachment_visible(
                                &self.store,
                                conversation,
                                message,
                                seq,
                                None,
                            )
                            .await?
                        }
                        None => young(message),
                    },
                    // Profiles and groups record the end of each use (a new avatar, a
                    // cleared one).
                    Some(Use::Profile(_) | Use::ChatAvatar(_)) | None => true,
                };
                if live {
                    return Ok(true);
                }
                self.store
                    .delete(&t::REFS, &key(media.media_id), &row.clustering)
                    .await?;
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(false),
            }
        }
    }

    /// Deletes the files of an object being removed (each step can be run again): its
    /// renditions and its reference to the original, and the original too when no other
    /// object shares it.
    async fn collect(&self, media: &Object) -> Result<()> {
        for r in &media.renditions {
            self.node.blobs.delete(r.key.clone()).await?;
        }
        let hex = &media.sha256;
        if let Ok(bytes) = hex::decode(hex)
            && let Ok(digest) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            let dlock = self.node.digests.get(digest_key(&digest));
            let _g = dlock.write().await;
            let part = crate::tables::name_key(hex);
            self.store
                .delete(&t::BLOBS, &part, &key(media.media_id))
                .await?;
            let others = self.store.scan(&t::BLOBS, &part, &Scan::all(1)).await?;
            // The last reference gone: the original goes under a claim on its digest
            // (fleet-wide), looking at the references once more while holding it. An
            // upload of the same bytes on another node records its reference and then
            // waits for any claim before it stores the original, so either its
            // reference is seen here or its original is stored after this delete.
            // (Another removal holding the claim deletes the original itself.)
            let claim = rand::random::<u64>().to_be_bytes();
            if others.rows.is_empty()
                && self
                    .store
                    .insert_if_absent(&t::BLOB_CLAIMS, &part, &[], &claim, Some(CLAIM_TTL))
                    .await?
            {
                let deleted = async {
                    let others = self.store.scan(&t::BLOBS, &part, &Scan::all(1)).await?;
                    if others.rows.is_empty() {
                        self.node.blobs.delete(t::original_key(hex)).await?;
                    }
                    Ok::<_, Error>(())
                }
                .await;
                // Only this claim (one that outlived its TTL may be another's now).
                self.store
                    .compare_and_set(&t::BLOB_CLAIMS, &part, &[], &claim, None, None)
                    .await?;
                deleted?;
            }
        }
        Ok(())
    }

    /// Waits while a removal elsewhere holds a claim on deleting the original of
    /// `part` (a digest), at most the claim's lifetime.
    async fn no_blob_claim(&self, part: &[u8]) -> Result<()> {
        let deadline = tokio::time::Instant::now() + CLAIM_TTL;
        while self.store.get(&t::BLOB_CLAIMS, part, &[]).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Overloaded);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Which stored blob `rendition` of `media` is for `viewer` (`""`: the original for
    /// its owner, `large` for others; only the owner gets the original).
    async fn target(&self, media: &Object, viewer: u64, rendition: &str) -> Result<Target> {
        let owner = viewer == media.owner_id;
        let name = match rendition {
            "" if owner => "original",
            "" => "large",
            n => n,
        };
        if name == "original" {
            if !owner {
                return Err(Error::NotFound("rendition"));
            }
            let hex = t::load(&self.store, media.media_id)
                .await?
                .map(|m| m.sha256)
                .unwrap_or_default();
            return Ok(Target {
                media_id: media.media_id,
                name: name.to_string(),
                key: t::original_key(&hex),
                mime: media.mime.clone(),
                total: media.size,
                etag: hex,
            });
        }
        let r = media
            .renditions
            .iter()
            .find(|r| r.name == name)
            .ok_or(Error::NotFound("rendition"))?;
        Ok(Target {
            media_id: media.media_id,
            name: r.name.clone(),
            key: r.key.clone(),
            mime: r.mime.clone(),
            total: r.size,
            etag: format!("{:x}-{}-{}", media.media_id, r.name, r.size),
        })
    }

    /// A ranged download of `rendition` of an object (`""`: the original for its owner,
    /// `large` for others; only the owner gets the original). `end` 0 means to the end.
    pub async fn download(
        &self,
        viewer: u64,
        media_id: u64,
        rendition: &str,
        start: u64,
        end: u64,
    ) -> Result<Download> {
        let media = self.get(viewer, media_id).await?;
        let target = self.target(&media, viewer, rendition).await?;
        let total = target.total;
        let end = if end == 0 { total } else { end };
        if start > end || end > total || (start == end && total != 0) {
            return Err(Error::InvalidArgument { field: "range" });
        }
        let body = target.body(&self.node.blobs, start, end);
        Ok(Download {
            media_id,
            rendition: target.name,
            mime: target.mime,
            total,
            start,
            length: end - start,
            etag: target.etag,
            body,
        })
    }

    /// An object as [`Media::get`] gives it to `viewer`, with the viewer's right
    /// remembered for [`URL_VIEW_MEMO_MS`] (signed URLs: an HLS playback fetches many
    /// segments). The object itself is read every time: a deleted one is gone at once.
    async fn url_viewable(&self, viewer: u64, media_id: u64) -> Result<Object> {
        let mut media = t::load(&self.store, media_id)
            .await?
            .ok_or(Error::NotFound("media"))?;
        if viewer == media.owner_id {
            return Ok(media);
        }
        let now = self.clock.now_ms();
        let known = self
            .url_views
            .borrow()
            .get(&(media_id, viewer))
            .is_some_and(|&until| until > now);
        if !known {
            if !self.may_view(viewer, &media).await? {
                return Err(Error::NotFound("media"));
            }
            let mut views = self.url_views.borrow_mut();
            if views.len() >= URL_VIEW_MEMO {
                views.retain(|_, &mut until| until > now);
                if views.len() >= URL_VIEW_MEMO {
                    views.clear();
                }
            }
            views.insert((media_id, viewer), now + URL_VIEW_MEMO_MS);
        }
        media.sha256.clear();
        media.reason.clear();
        Ok(media)
    }

    /// A signed HTTPS URL to `rendition` of an object for `viewer` (who must be allowed
    /// to see it), and when it expires (Unix ms); see [`urls`]. `Unavailable` when this
    /// node serves no HTTPS.
    pub async fn url(&self, viewer: u64, media_id: u64, rendition: &str) -> Result<(String, u64)> {
        let signer = self
            .node
            .urls
            .get()
            .ok_or(Error::Unavailable("media URLs (no [web] listener)"))?;
        let media = self.get(viewer, media_id).await?;
        if media.state != State::Ready {
            return Err(Error::NotFound("rendition"));
        }
        let target = self.target(&media, viewer, rendition).await?;
        Ok(signer.mint(media_id, viewer, &target.name, self.clock.now_ms()))
    }

    /// What the signed URL path `path` (`/media/...`) serves now: the signature and
    /// expiry are checked first (no storage read for a forged or expired URL), then the
    /// object must still exist and the URL's viewer still be allowed to see it.
    pub async fn signed(&self, path: &str) -> Result<Signed> {
        let signer = self
            .node
            .urls
            .get()
            .ok_or(Error::Unavailable("media URLs"))?;
        let grant = signer
            .verify(path, self.clock.now_ms())
            .map_err(|e| match e {
                urls::UrlError::Malformed => Error::NotFound("media URL"),
                urls::UrlError::BadSignature => Error::Forbidden("bad signature"),
                urls::UrlError::Expired => Error::Forbidden("expired URL"),
            })?;
        let media = self.url_viewable(grant.viewer, grant.media_id).await?;
        if media.state != State::Ready {
            return Err(Error::NotFound("rendition"));
        }
        let target = self.target(&media, grant.viewer, &grant.rendition).await?;
        Ok(Signed {
            target,
            blobs: self.node.blobs.clone(),
            expires_ms: grant.expires_ms,
        })
    }

    /// Uploads `bytes` in one go (init, chunks, complete) as `owner`: for tests, tools
    /// and seeding; clients use the chunked protocol.
    pub async fn upload_bytes(
        self: &Rc<Self>,
        owner: u64,
        kind: Kind,
        bytes: &[u8],
    ) -> Result<(UploadStatus, Object)> {
        let status = self
            .init(
                owner,
                NewUpload {
                    kind,
                    size: bytes.len() as u64,
                    sha256: Sha256::digest(bytes).to_vec(),
                    alt_text: String::new(),
                },
            )
            .await?;
        for (i, piece) in bytes.chunks(status.chunk_bytes as usize).enumerate() {
            let header = ChunkHeader {
                upload_id: status.upload_id,
                offset: i as u64 * u64::from(status.chunk_bytes),
                length: piece.len() as u32,
                sha256: Sha256::digest(piece).to_vec(),
            };
            let body = futures::stream::iter([Ok(Bytes::copy_from_slice(piece))]).boxed_local();
            self.chunk(owner, header, body).await?;
        }
        let media = self.complete(owner, status.upload_id, &[]).await?;
        Ok((status, media))
    }

    /// Waits (at most `within`) until `media_id` leaves `Processing`; for tests and tools.
    pub async fn settled(&self, media_id: u64, within: Duration) -> Result<Object> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let media = t::load(&self.store, media_id)
                .await?
                .ok_or(Error::NotFound("media"))?;
            if media.state != State::Processing || tokio::time::Instant::now() >= deadline {
                return Ok(media);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What [`Media::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Removed,
    Missing,
    InUse,
}

/// What processing made.
struct Made {
    renditions: Vec<Rendition>,
    blurhash: String,
    /// An image's size once turned upright.
    upright: Option<(u32, u32)>,
}

/// What the checks at completion found.
struct Checked {
    mime: &'static str,
    kind: Kind,
    width: u32,
    height: u32,
    duration_ms: u32,
}

/// A lock key for a digest.
fn digest_key(d: &[u8; 32]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    u64::from_be_bytes(k)
}
