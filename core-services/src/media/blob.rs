//! Where media bytes live: the blob store (finished objects and their renditions, by key)
//! and the staging area (uploads in progress, one file per upload, written at offsets).
//!
//! The embedded default keeps blobs as files under the data directory: a blob is written
//! to a temporary file, fsynced, renamed into place and its directory fsynced, so an
//! acknowledged blob survives a crash; originals are keyed by their SHA-256 and so stored
//! once however many users upload them. File I/O that can wait for the disk never runs
//! on a shard thread: it goes through `std::fs` on tokio's blocking pool, or through the
//! node's io_uring thread ([`super::uring`], `media.blob_io`); the store reports which in
//! [`BlobStore::backend`] (`local-std` or `local-io_uring`). The one exception is a
//! download's piece already in the page cache ([`Piecewise`]): the shard copies it with
//! `preadv2(RWF_NOWAIT)`, which does not wait for the data (what the page cache lacks
//! is read on the blocking pool, and so is the rest of that download), saving two
//! thread hand-offs per piece. Staged uploads are local to
//! the node that received them, so on a fleet an upload resumes on the same node only.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::uring::{Io, Uring};
use crate::{BoxFuture, Error, Result};

/// A store of immutable blobs by key (`sha256/<hex>`, `r/<media id>/<rendition>`).
pub trait BlobStore: Send + Sync {
    /// Which implementation runs (reported at start and in metrics).
    fn backend(&self) -> &'static str;

    /// Moves the local file `from` into the store as `key`, durably. If `key` exists
    /// already (the same content), `from` is removed instead.
    fn put_file(&self, key: String, from: PathBuf) -> BoxFuture<'_, Result<()>>;

    /// Stores `bytes` as `key`, durably.
    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Up to `len` bytes of `key` from `start` (fewer at the end).
    fn read(&self, key: String, start: u64, len: usize) -> BoxFuture<'_, Result<Bytes>>;

    /// The size of `key`, `None` when absent.
    fn size(&self, key: String) -> BoxFuture<'_, Result<Option<u64>>>;

    /// The local file holding `key`, for a download that keeps it open and reads its
    /// pieces in turn ([`Piecewise`]); `None` when the store has no such file, or when
    /// its file I/O must go through its own path (io_uring), and pieces are read by key.
    fn local_file(&self, key: &str) -> Option<PathBuf> {
        let _ = key;
        None
    }

    /// Removes `key` (absent is fine).
    fn delete(&self, key: String) -> BoxFuture<'_, Result<()>>;

    /// Copies the `size` bytes of `key` into the local file `to` (for tools that need a
    /// file, such as the transcoder), piece by piece.
    fn copy_to_file(&self, key: String, size: u64, to: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut file = tokio::fs::File::create(&to).await.map_err(io)?;
            let mut at = 0u64;
            while at < size {
                let piece = self.read(key.clone(), at, 8 << 20).await?;
                if piece.is_empty() {
                    return Err(Error::Internal("blob shorter than recorded"));
                }
                tokio::io::AsyncWriteExt::write_all(&mut file, &piece)
                    .await
                    .map_err(io)?;
                at += piece.len() as u64;
            }
            tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(io)
        })
    }
}

/// A file I/O failure: a missing file is `NotFound` (permanent, as the object store
/// says it); anything else (a full or failing disk) is a storage failure, which callers
/// retry (processing backs off and tries again, then at the next start).
fn io(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        return Error::NotFound("blob");
    }
    tracing::warn!(error = %e, "media file i/o failed");
    Error::Storage(selfie_storage::StoreError::Io(e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::Internal("media i/o task failed"))?
        .map_err(io)
}

/// Checks a blob key: lower-case letters, digits, `/`, `-`, `_`, `.` only, no `..`, no
/// leading `/` (keys are made by the server; this keeps a bug from escaping the root).
pub(super) fn checked(key: &str) -> Result<&str> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('/')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/-_.".contains(&b));
    if ok {
        Ok(key)
    } else {
        Err(Error::Internal("invalid blob key"))
    }
}

/// fsyncs a directory (so a rename or a new file in it is durable).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Blobs as files under a root directory (the embedded default).
pub struct LocalBlobs {
    root: PathBuf,
    io: Io,
}

impl LocalBlobs {
    /// A store under `root` (created if missing) on `std::fs`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(root, Io::Std)
    }

    /// A store under `root` (created if missing) doing its file I/O with `io`.
    pub fn open_with(root: impl Into<PathBuf>, io_path: Io) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp")).map_err(io)?;
        Ok(Self { root, io: io_path })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs").join(checked(key)?))
    }

    fn temp(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()))
    }
}

/// Renames `tmp` to `dest` (its parent created) and fsyncs the directories touched.
fn install(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    if !parent.exists() {
        std::fs::create_dir_all(parent)?;
        if let Some(grand) = parent.parent() {
            sync_dir(grand)?;
        }
    }
    std::fs::rename(tmp, dest)?;
    sync_dir(parent)
}

/// [`install`] through the ring: the parent directory is created (rarely) on the
/// blocking pool; the rename and the directory's fsync go through the ring.
async fn install_uring(ring: &Uring, tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let dir = match ring.open(&parent, dir_flags, 0).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let created = parent.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&created)?;
                match created.parent() {
                    Some(grand) => sync_dir(grand),
                    None => Ok(()),
                }
            })
            .await
            .map_err(|_| std::io::Error::other("blocking task failed"))??;
            ring.open(&parent, dir_flags, 0).await?
        }
        Err(e) => return Err(e),
    };
    ring.rename(tmp, dest).await?;
    ring.sync(&dir, false).await
}

/// Whether `path` exists, asked through the ring.
async fn exists_uring(ring: &Uring, path: &Path) -> std::io::Result<bool> {
    match ring.open(path, libc::O_PATH, 0).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl BlobStore for LocalBlobs {
    fn backend(&self) -> &'static str {
        match self.io {
            Io::Std => "local-std",
            Io::Uring(_) => "local-io_uring",
        }
    }

    fn put_file(&self, key: String, from: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let dest = self.path(&key)?;
            if let Io::Uring(ring) = &self.io {
                let done: std::io::Result<()> = async {
                    if exists_uring(ring, &dest).await? {
                        return ring.unlink(&from).await;
                    }
                    let f = ring.open(&from, libc::O_RDONLY, 0).await?;
                    ring.sync(&f, false).await?;
                    install_uring(ring, &from, &dest).await
                }
                .await;
                return done.map_err(io);
            }
            blocking(move || {
                if dest.exists() {
                    return std::fs::remove_file(&from);
                }
                std::fs::File::open(&from)?.sync_all()?;
                install(&from, &dest)
            })
            .await
        })
    }

    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let dest = self.path(&key)?;
            let tmp = self.temp();
            if let Io::Uring(ring) = &self.io {
                let done: std::io::Result<()> = async {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
                    ring.write_file(&tmp, flags, 0o644, 0, bytes, Some(false))
                        .await?;
                    install_uring(ring, &tmp, &dest).await
                }
                .await;
                return done.map_err(io);
            }
            blocking(move || {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                install(&tmp, &dest)
            })
            .await
        })
    }

    fn read(&self, key: String, start: u64, len: usize) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let path = self.path(&key)?;
            if let Io::Uring(ring) = &self.io {
                let done = ring.read_file(&path, start, len).await;
                return done.map(Bytes::from).map_err(io);
            }
            blocking(move || {
                let mut f = std::fs::File::open(path)?;
                f.seek(SeekFrom::Start(start))?;
                let mut buf = Vec::with_capacity(len);
                f.take(len as u64).read_to_end(&mut buf)?;
                Ok(Bytes::from(buf))
            })
            .await
        })
    }

    fn local_file(&self, key: &str) -> Option<PathBuf> {
        match self.io {
            Io::Std => self.path(key).ok(),
            Io::Uring(_) => None,
        }
    }

    fn size(&self, key: String) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(async move {
            let path = self.path(&key)?;
            blocking(move || match std::fs::metadata(path) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await
        })
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let path = self.path(&key)?;
            if let Io::Uring(ring) = &self.io {
                return match ring.unlink(&path).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                    _ => Ok(()),
                };
            }
            blocking(move || match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
            .await
        })
    }
}

/// Alignment of `O_DIRECT` writes: 4 KiB, the page size on x86-64 and a multiple of the
/// logical block size of the disks we run on (512 B or 4 KiB). Where a filesystem asks
/// for more, the start-up probe fails or a write answers `EINVAL`, and chunks go
/// through the page cache instead.
pub const DIRECT_ALIGN: usize = 4096;

/// A chunk's bytes in memory that starts at a [`DIRECT_ALIGN`] boundary, so that
/// [`Staging::write_at`] can write it with `O_DIRECT` (from the buffer to the disk, no
/// page-cache copy). Filled with [`DirectBuf::extend_from_slice`] up to the capacity it
/// was made with; past that it stays correct but may lose its alignment, and a write
/// checks the alignment it has, not the one it was made with.
pub struct DirectBuf {
    buf: Vec<u8>,
    start: usize,
}

impl DirectBuf {
    /// An empty buffer for up to `capacity` bytes, its start aligned.
    pub fn with_capacity(capacity: usize) -> Self {
        let buf = Vec::with_capacity(capacity + DIRECT_ALIGN - 1);
        let start = (DIRECT_ALIGN - buf.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        let mut buf = buf;
        buf.resize(start, 0);
        Self { buf, start }
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as [`Bytes`], without a copy (their address, and so their alignment,
    /// kept).
    pub fn into_bytes(self) -> Bytes {
        let start = self.start;
        Bytes::from(self.buf).slice(start..)
    }
}

impl From<Vec<u8>> for DirectBuf {
    fn from(buf: Vec<u8>) -> Self {
        Self { buf, start: 0 }
    }
}

/// Whether `bytes` written at `offset` meet `O_DIRECT`'s rules: the memory, the offset
/// and the length all multiples of [`DIRECT_ALIGN`] (an upload's last chunk usually
/// is not, and is written through the page cache).
fn direct_ok(bytes: &[u8], offset: u64) -> bool {
    !bytes.is_empty()
        && (bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && bytes.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

/// Whether files under `dir` take `O_DIRECT` writes (tmpfs before Linux 6.6 refuses
/// them, some network filesystems too): a probe file is written, synced and removed.
/// What it found is logged.
fn probe_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".direct-probe-{}-{n}", std::process::id()));
    let written = (|| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let mut block = DirectBuf::with_capacity(DIRECT_ALIGN);
        block.extend_from_slice(&[0u8; DIRECT_ALIGN]);
        f.write_all_at(block.as_slice(), 0)?;
        f.sync_data()
    })();
    let _ = std::fs::remove_file(&path);
    match written {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "upload chunks are written with O_DIRECT");
            true
        }
        Err(e) => {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "O_DIRECT writes refused here; upload chunks go through the page cache"
            );
            false
        }
    }
}

/// Writes `bytes` at `offset` of `path` (created if missing, its directory then synced)
/// and `fdatasync`s it; `direct`: with `O_DIRECT`.
fn write_file_at(
    path: &Path,
    dir: &Path,
    offset: u64,
    bytes: &[u8],
    direct: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = !path.exists();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)?;
    f.write_all_at(bytes, offset)?;
    f.sync_data()?;
    if created {
        sync_dir(dir)?;
    }
    Ok(())
}

/// [`write_file_at`] through the ring.
async fn uring_write(
    ring: &Uring,
    path: &Path,
    dir: &Path,
    offset: u64,
    data: Bytes,
    direct: bool,
) -> std::io::Result<()> {
    let extra = if direct { libc::O_DIRECT } else { 0 };
    let write =
        |flags: i32| ring.write_file(path, flags | extra, 0o644, offset, data.clone(), Some(true));
    // Created here (not by a concurrent chunk) when the exclusive create wins.
    let created = match write(libc::O_WRONLY).await {
        Ok(()) => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match write(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL).await {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    write(libc::O_WRONLY).await?;
                    false
                }
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if created {
        let d = ring
            .open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .await?;
        ring.sync(&d, false).await?;
    }
    Ok(())
}

/// Uploads in progress: one sparse file per upload, chunks written at their offsets.
///
/// A chunk that is page-aligned in memory, offset and length (every chunk of an upload
/// but, usually, its last: [`DirectBuf`]) is written with `O_DIRECT` where the
/// filesystem takes it, then `fdatasync`ed. On the virtual disks of the machines we
/// measure on, a buffered 2 MiB `pwrite` into a fresh file costs 5.4–8 ms and the
/// direct one ~1 ms (`bench/RESULTS.md`); an upload's bytes are read once more (the
/// whole-object SHA-256 at completion) and then moved to the blob store, so caching
/// them evicts pages that readers use for nothing. Whether a chunk goes direct depends
/// on its offset and length only (with `media.chunk_bytes` a multiple of 4 KiB, as the
/// default 2 MiB is, every chunk but a short last one; otherwise none), so one range is
/// never written both ways, and writes are kept apart from the completion's read of
/// the file by the upload's lock: the kernel's flush and invalidation of the range
/// around a direct write leave nothing stale to read. A direct write refused with
/// `EINVAL` (a filesystem with larger alignment rules) is written again through the
/// page cache.
pub struct Staging {
    dir: PathBuf,
    io: Io,
    direct: bool,
}

impl Staging {
    /// Staging under `dir` (created if missing) on `std::fs`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(dir, Io::Std)
    }

    /// Staging under `dir` (created if missing), writing chunks with `io`, and with
    /// `O_DIRECT` where the filesystem takes it.
    pub fn open_with(dir: impl Into<PathBuf>, io_path: Io) -> Result<Self> {
        Self::open_configured(dir, io_path, true)
    }

    /// [`Staging::open_with`], trying `O_DIRECT` (a probe write) only when
    /// `direct_writes` is on (`media.direct_writes`).
    pub fn open_configured(
        dir: impl Into<PathBuf>,
        io_path: Io,
        direct_writes: bool,
    ) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io)?;
        let direct = direct_writes && probe_direct(&dir);
        Ok(Self {
            dir,
            io: io_path,
            direct,
        })
    }

    /// Whether page-aligned chunks are written with `O_DIRECT` here.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Turns `O_DIRECT` writes off when `on` is false (`media.direct_writes`); on, they
    /// are used only where the filesystem takes them.
    pub fn direct_writes(mut self, on: bool) -> Self {
        self.direct &= on;
        self
    }

    /// Its file I/O: `std` or `io_uring`.
    pub fn io_name(&self) -> &'static str {
        self.io.name()
    }

    /// The file of `upload_id`.
    pub fn path(&self, upload_id: u64) -> PathBuf {
        self.dir.join(format!("{upload_id:016x}"))
    }

    /// Creates the (empty) file of `upload_id` and makes its directory entry durable,
    /// so that chunks written to it later never sit in a file a crash could lose.
    pub async fn create(&self, upload_id: u64) -> Result<()> {
        let (path, dir) = (self.path(upload_id), self.dir.clone());
        blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            sync_dir(&dir)
        })
        .await
    }

    /// A scratch directory for processing `media_id` (the caller creates and removes it).
    pub fn work_dir(&self, media_id: u64) -> PathBuf {
        self.dir.join(format!("{media_id:016x}.work"))
    }

    /// Writes `bytes` at `offset` of the upload's file and makes them durable (the file's
    /// data, and the directory entry when the file is new); with `O_DIRECT` when the
    /// bytes, the offset and the filesystem allow it (see [`Staging`]).
    pub async fn write_at(
        &self,
        upload_id: u64,
        offset: u64,
        bytes: impl Into<DirectBuf>,
    ) -> Result<()> {
        self.write_holding(upload_id, offset, bytes, ()).await
    }

    /// [`Staging::write_at`], holding `guard` until the write has ended — also when the
    /// caller stops waiting (its future dropped): the write runs to its end on tokio's
    /// blocking pool or the ring thread either way, and whatever orders it against the
    /// file's other writers and readers must last as long as it does. The guard comes
    /// back with the answer.
    pub async fn write_holding<G: Send + 'static>(
        &self,
        upload_id: u64,
        offset: u64,
        bytes: impl Into<DirectBuf>,
        guard: G,
    ) -> Result<G> {
        let bytes = bytes.into();
        let (path, dir) = (self.path(upload_id), self.dir.clone());
        let direct = self.direct && direct_ok(bytes.as_slice(), offset);
        let (written, guard) = if let Io::Uring(ring) = &self.io {
            let ring = ring.clone();
            let write = async move {
                let data = bytes.into_bytes();
                let direct = direct && direct_ok(&data, offset);
                let written =
                    match uring_write(&ring, &path, &dir, offset, data.clone(), direct).await {
                        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                            uring_write(&ring, &path, &dir, offset, data, false).await
                        }
                        done => done,
                    };
                (written, guard)
            };
            // A task of its own: the ring's write and the guard end together.
            tokio::spawn(write).await
        } else {
            tokio::task::spawn_blocking(move || {
                let written = match write_file_at(&path, &dir, offset, bytes.as_slice(), direct) {
                    Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        write_file_at(&path, &dir, offset, bytes.as_slice(), false)
                    }
                    done => done,
                };
                (written, guard)
            })
            .await
        }
        .map_err(|_| Error::Internal("media i/o task failed"))?;
        written.map_err(io)?;
        Ok(guard)
    }

    /// SHA-256 of the upload's first `len` bytes, and its first up to 64 KiB (to sniff
    /// its type); `None` when the file is shorter.
    pub async fn digest(&self, upload_id: u64, len: u64) -> Result<Option<([u8; 32], Vec<u8>)>> {
        let path = self.path(upload_id);
        blocking(move || {
            let mut f = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if f.metadata()?.len() < len {
                return Ok(None);
            }
            let mut hasher = Sha256::new();
            let mut head = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    return Ok(None);
                }
                if head.len() < 64 * 1024 {
                    let k = n.min(64 * 1024 - head.len());
                    head.extend_from_slice(&buf[..k]);
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            Ok(Some((hasher.finalize().into(), head)))
        })
        .await
    }

    /// Reads the whole staged upload (for processing images, whose size is bounded).
    pub async fn read_all(&self, upload_id: u64) -> Result<Vec<u8>> {
        let path = self.path(upload_id);
        blocking(move || std::fs::read(path)).await
    }

    /// Removes the upload's file (absent is fine).
    pub async fn remove(&self, upload_id: u64) -> Result<()> {
        let path = self.path(upload_id);
        blocking(move || match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }

    /// Removes staged files last written before `before` (abandoned uploads, whose rows
    /// have expired) and processing work directories left by a crash; returns how many
    /// went. An entry that cannot be read or removed is skipped (logged), not the end
    /// of the sweep.
    pub async fn sweep(&self, before: std::time::SystemTime) -> Result<usize> {
        let dir = self.dir.clone();
        blocking(move || {
            let mut removed = 0;
            for entry in std::fs::read_dir(dir)? {
                let old = entry.and_then(|e| {
                    let meta = e.metadata()?;
                    Ok((e.path(), meta.is_dir(), meta.modified()? < before))
                });
                let (path, is_dir, old) = match old {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(error = %e, "staged entry unreadable; skipped");
                        continue;
                    }
                };
                if !old {
                    continue;
                }
                let gone = if is_dir {
                    // Only processing work directories live here as directories.
                    path.extension().is_some_and(|x| x == "work")
                        && std::fs::remove_dir_all(&path).is_ok()
                } else {
                    std::fs::remove_file(&path).is_ok()
                };
                if gone {
                    removed += 1;
                } else {
                    tracing::warn!(path = %path.display(), "stale staged entry not removed");
                }
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../../b",
            "A",
            "x y",
            "sha256/..",
            "a\\b",
        ] {
            assert!(checked(bad).is_err(), "{bad}");
        }
        assert!(checked("sha256/00ff").is_ok());
        assert!(checked("r/123/large.jpg").is_ok());
    }

    /// A download's pieces are the blob's bytes whether the page cache holds them (read
    /// on the calling thread), holds none (the blocking pool) or holds part of a piece
    /// (then the rest of the download goes to the blocking pool). Where the file system
    /// refuses `RWF_NOWAIT` or ignores the eviction (tmpfs), only the bytes are checked.
    #[tokio::test]
    async fn a_download_reads_the_same_bytes_from_the_page_cache_or_the_disk() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().expect("dir");
        let store: std::sync::Arc<dyn BlobStore> =
            std::sync::Arc::new(LocalBlobs::open(dir.path()).expect("store"));
        let key = "r/1/original";
        let bytes: Vec<u8> = (0..(3 << 20) + 123).map(|_| rand::random::<u8>()).collect();
        store
            .put(key.to_string(), Bytes::from(bytes.clone()))
            .await
            .expect("put");
        let path = store.local_file(key).expect("a local file");
        let file = std::fs::File::open(&path).expect("open");
        let probe = |file: &std::fs::File, len: usize| {
            let mut out = vec![std::mem::MaybeUninit::uninit(); len];
            read_cached(file, 0, &mut out)
        };
        let cold = |blob: &Piecewise| match &blob.source {
            Source::File(open) => open.cold.get(),
            Source::Store { .. } => panic!("a local blob is read from its file"),
        };
        let whole = |blob: Piecewise| async move {
            let mut got = Vec::new();
            loop {
                let piece = blob.read(got.len() as u64, 256 * 1024).await.expect("read");
                if piece.is_empty() {
                    return (got, cold(&blob));
                }
                got.extend_from_slice(&piece);
            }
        };
        let advise = |advice| {
            // SAFETY: a plain advice call on an open descriptor.
            let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, advice) };
            assert_eq!(r, 0);
        };
        // Just written, so in the page cache.
        let nowait = probe(&file, 4096) == Some(4096);
        let (got, went_cold) = whole(Piecewise::new(&store, key)).await;
        assert!(got == bytes, "cached");
        if nowait {
            // Every piece came from the page cache but the empty read at the end.
            let blob = Piecewise::new(&store, key);
            for at in (0..bytes.len() as u64).step_by(256 * 1024) {
                blob.read(at, 256 * 1024).await.expect("read");
                assert!(!cold(&blob) || at + 256 * 1024 >= bytes.len() as u64);
            }
        } else {
            eprintln!("RWF_NOWAIT reads refused here: only the bytes are checked");
            assert!(went_cold);
        }
        // Dropped from the page cache (its pages are clean after the fsync).
        advise(libc::POSIX_FADV_DONTNEED);
        let evicted = matches!(probe(&file, 4096), Some(n) if n < 4096);
        let (got, went_cold) = whole(Piecewise::new(&store, key)).await;
        assert!(got == bytes, "from disk");
        if nowait && evicted {
            assert!(
                went_cold,
                "the rest of the download went to the blocking pool"
            );
        }
        // Part of the first piece cached (readahead off for this handle).
        advise(libc::POSIX_FADV_DONTNEED);
        advise(libc::POSIX_FADV_RANDOM);
        let mut head = vec![0; 10_000];
        file.read_exact_at(&mut head, 0).expect("head");
        if nowait && evicted {
            let cached = probe(&file, 1 << 20).expect("answered");
            assert!((10_000..1 << 20).contains(&cached), "{cached} bytes cached");
        }
        let blob = Piecewise::new(&store, key);
        let first = blob.read(0, 1 << 20).await.expect("first piece");
        assert!(first[..] == bytes[..1 << 20], "partly cached");
        let second = blob.read(1 << 20, 1 << 20).await.expect("second piece");
        assert!(second[..] == bytes[1 << 20..2 << 20], "after it");
        // The end, and a missing blob.
        let end = blob.read(bytes.len() as u64, 10).await.expect("at the end");
        assert!(end.is_empty());
        let missing = Piecewise::new(&store, "r/1/missing").read(0, 10).await;
        assert!(matches!(missing, Err(Error::NotFound(_))));
    }

    /// Defect: a full or failing disk failed an object for good (an internal error);
    /// it is a storage failure now, which processing tries again.
    #[test]
    fn disk_failures_are_storage_failures_and_missing_files_not_found() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(matches!(io(full), Error::Storage(_)));
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(matches!(io(missing), Error::NotFound(_)));
    }

    /// Defect: the sweep stopped at the first entry it could not remove (a directory),
    /// and work directories left by a crash were never removed.
    #[tokio::test]
    async fn the_sweep_removes_old_files_and_work_directories_past_anything_else() {
        let dir = tempfile::tempdir().expect("dir");
        let staging = Staging::open(dir.path()).expect("staging");
        std::fs::create_dir(dir.path().join("stray")).expect("a stray directory");
        std::fs::write(dir.path().join("stray").join("f"), b"x").expect("file");
        staging
            .write_at(1, 0, b"abc".to_vec())
            .await
            .expect("staged");
        let work = staging.work_dir(9);
        std::fs::create_dir(&work).expect("work dir");
        std::fs::write(work.join("segment.ts"), b"x").expect("file");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        assert_eq!(staging.sweep(later).await.expect("swept"), 2);
        assert!(!staging.path(1).exists() && !work.exists());
        assert!(
            dir.path().join("stray").exists(),
            "only work directories go"
        );
        let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        staging
            .write_at(2, 0, b"abc".to_vec())
            .await
            .expect("staged");
        assert_eq!(staging.sweep(earlier).await.expect("swept"), 0);
    }
}

/// A download's blob, opened once and read piece by piece: a local file is opened on the
/// blocking pool at the first piece and kept open (up to [`MAX_OPEN_DOWNLOADS`] per
/// process; past that, pieces are read by key as other stores do); each piece is first
/// copied from the page cache on the caller's thread (`preadv2` with `RWF_NOWAIT`, which
/// does not wait for the data), and what the page cache did not hold is read on the
/// blocking pool, as is the rest of that download (a miss can start readahead on the
/// calling thread, so a cold file is not probed again piece after piece).
#[derive(Clone)]
pub struct Piecewise {
    source: Source,
}

#[derive(Clone)]
enum Source {
    File(std::rc::Rc<OpenFile>),
    Store {
        blobs: std::sync::Arc<dyn BlobStore>,
        key: String,
    },
}

struct OpenFile {
    path: PathBuf,
    file: tokio::sync::OnceCell<std::sync::Arc<std::fs::File>>,
    /// A piece was not wholly in the page cache: read the rest on the blocking pool.
    cold: std::cell::Cell<bool>,
    _slot: OpenSlot,
}

/// Downloads that may keep their blob's file open at once, per process (each holds one
/// descriptor while it lasts, a stalled one too).
pub const MAX_OPEN_DOWNLOADS: usize = 4096;

static OPEN_DOWNLOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Download pieces copied from the page cache on the calling thread.
static PIECES_CACHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Download pieces (or their uncached rest) read from an open file on the blocking pool.
static PIECES_READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How downloads read their pieces, this process: (copied from the page cache on a
/// shard, read on the blocking pool, downloads holding their file open now).
pub fn download_stats() -> (u64, u64, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        PIECES_CACHED.load(Relaxed),
        PIECES_READ.load(Relaxed),
        OPEN_DOWNLOADS.load(Relaxed),
    )
}

/// One of the [`MAX_OPEN_DOWNLOADS`], given back on drop.
struct OpenSlot;

impl OpenSlot {
    fn take() -> Option<Self> {
        use std::sync::atomic::Ordering;
        let before = OPEN_DOWNLOADS.fetch_add(1, Ordering::Relaxed);
        if before >= MAX_OPEN_DOWNLOADS {
            OPEN_DOWNLOADS.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Self)
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        OPEN_DOWNLOADS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Piecewise {
    /// `key` of `blobs`, its file kept open when it has one (and a slot is free).
    pub fn new(blobs: &std::sync::Arc<dyn BlobStore>, key: &str) -> Self {
        let file = blobs.local_file(key).and_then(|path| {
            OpenSlot::take().map(|slot| OpenFile {
                path,
                file: Default::default(),
                cold: Default::default(),
                _slot: slot,
            })
        });
        let source = match file {
            Some(f) => Source::File(std::rc::Rc::new(f)),
            None => Source::Store {
                blobs: blobs.clone(),
                key: key.to_string(),
            },
        };
        Self { source }
    }

    /// Up to `len` bytes from `start` (fewer at the end).
    pub async fn read(&self, start: u64, len: usize) -> Result<Bytes> {
        let open = match &self.source {
            Source::Store { blobs, key } => return blobs.read(key.clone(), start, len).await,
            Source::File(open) => open,
        };
        let file = open
            .file
            .get_or_try_init(|| {
                let path = open.path.clone();
                async move { blocking(move || open_for_reading(&path)).await }
            })
            .await?
            .clone();
        let mut buf = Vec::with_capacity(len);
        if !open.cold.get() {
            if let Some(n) = read_cached(&file, start, &mut buf.spare_capacity_mut()[..len]) {
                debug_assert!(n <= len);
                // SAFETY: `read_cached` initialised the first `n` bytes of the spare
                // capacity (at most `len`, which the capacity holds).
                unsafe { buf.set_len(n) };
                if n == len {
                    PIECES_CACHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(Bytes::from(buf));
                }
            }
            open.cold.set(true);
        }
        PIECES_READ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        blocking(move || {
            let mut at = buf.len();
            buf.resize(len, 0);
            while at < len {
                match file.read_at(&mut buf[at..], start + at as u64) {
                    Ok(0) => break,
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(at);
            Ok(Bytes::from(buf))
        })
        .await
    }
}

/// Opens a blob for reading, without updating its access time when the process may
/// (its own files), so that a read from the page cache never writes the inode.
fn open_for_reading(path: &Path) -> std::io::Result<std::sync::Arc<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path);
    let file = match noatime {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => std::fs::File::open(path)?,
        other => other?,
    };
    Ok(std::sync::Arc::new(file))
}

/// Whether the kernel answered `RWF_NOWAIT` reads in this process (cleared for good on
/// `EOPNOTSUPP`/`ENOSYS`/`EINVAL`: older kernels and some file systems).
static NOWAIT_READS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Copies bytes at `start` of `file` into `out` if the page cache holds them, never
/// waiting for the disk: `Some(bytes copied)` (possibly fewer than asked, or 0), `None`
/// when the kernel will not read without waiting.
fn read_cached(
    file: &std::fs::File,
    start: u64,
    out: &mut [std::mem::MaybeUninit<u8>],
) -> Option<usize> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    if !NOWAIT_READS.load(Ordering::Relaxed) || out.is_empty() {
        return None;
    }
    let offset = libc::off_t::try_from(start).ok()?;
    let iov = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    // SAFETY: `iov` describes `out`, writable for its length for the call's duration;
    // the file descriptor is open for as long as `file` is borrowed.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Some(n as usize);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(0),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
            NOWAIT_READS.store(false, Ordering::Relaxed);
            None
        }
        _ => None,
    }
}
