//! io_uring file I/O for the embedded blob store and the staging area: one I/O thread
//! per node owns a ring and runs the data path's system calls there — opens, positioned
//! reads and writes, `fsync`/`fdatasync`, renames and unlinks of blob puts, blob reads
//! and staged chunk writes — many in flight at once,
//! so uploads' chunk writes and downloads' reads never block a shard thread and never
//! take a thread of the blocking pool each.
//!
//! Callers on any thread (any runtime) send a request through a channel and wake the
//! ring through an `eventfd` it polls; the answer comes back on a oneshot. A request
//! owns everything the kernel reads or writes (path, buffer, file descriptor) until its
//! completion has been reaped, so nothing it points at can move or close under the
//! kernel. Multi-step requests (open, write, sync; open, read) run their steps inside the
//! ring thread, one round trip from the caller. [`Io`] is the choice made at start
//! (`media.blob_io`): the portable `std::fs` path on the blocking pool, or io_uring when
//! a probe ring works (io_uring is often forbidden by container seccomp profiles);
//! [`Io::name`] reports which.
//!
//! Measured (`selfie-bench blobs`, 2-core VM, buffered I/O): staged chunk writes with
//! `fdatasync` 0.8–1.1× std's throughput with a lower p99, durable puts 0.87×, 256 KiB
//! page-cached reads 0.64–0.74× (one ring thread copies what several blocking threads
//! copy in parallel) with a lower p99. So `std` stays the default; O_DIRECT writes and a
//! ring per shard are what would make io_uring pay.
//!
//! Not here: `stat`, directory creation, sweeps and whole-file reads of staged uploads
//! stay on the blocking pool (rare, metadata only), and so does hashing a staged upload
//! (CPU-bound). If the ring fails for good, its thread answers every request with an
//! error (leaking the memory of those in flight rather than freeing what the kernel
//! may still use) and media file I/O fails until the node restarts with `std`.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use io_uring::{IoUring, opcode, types};
use serde::{Deserialize, Serialize};

/// Requests in flight in the ring at once (more wait in the thread's backlog).
const DEPTH: u32 = 256;
/// `user_data` of the eventfd poll.
const WAKE: u64 = u64::MAX;

/// Which file I/O the embedded blob store uses (`media.blob_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobIo {
    /// io_uring when the kernel allows it, else `std`.
    Auto,
    /// io_uring, or refuse to start.
    IoUring,
    /// `std::fs` on the blocking pool (the default: `selfie-bench blobs` measured it
    /// ahead on page-cached reads and durable puts on a 2-core VM).
    #[default]
    Std,
}

/// The file I/O chosen at start.
#[derive(Clone)]
pub enum Io {
    /// `std::fs` on tokio's blocking pool.
    Std,
    /// A ring on its own thread.
    Uring(Arc<Uring>),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Io {
    /// The I/O `choice` asks for: `Auto` falls back to `Std` (logged) when no ring can be
    /// made; `IoUring` fails instead.
    pub fn select(choice: BlobIo) -> std::io::Result<Io> {
        match choice {
            BlobIo::Std => Ok(Io::Std),
            BlobIo::IoUring => Ok(Io::Uring(Uring::start()?)),
            BlobIo::Auto => match Uring::start() {
                Ok(u) => Ok(Io::Uring(u)),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable: media files use std::fs");
                    Ok(Io::Std)
                }
            },
        }
    }

    /// `io_uring` or `std`.
    pub fn name(&self) -> &'static str {
        match self {
            Io::Std => "std",
            Io::Uring(_) => "io_uring",
        }
    }
}

/// What a request asks the kernel to do. Each variant owns what the kernel touches.
enum Op {
    Open {
        path: CString,
        flags: i32,
        mode: u32,
    },
    Sync {
        fd: Arc<OwnedFd>,
        data_only: bool,
    },
    Rename {
        from: CString,
        to: CString,
    },
    Unlink {
        path: CString,
    },
    /// Open, then read until `len` bytes or the end, in the ring thread (one round trip).
    ReadFile {
        path: CString,
        fd: Option<OwnedFd>,
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    },
    /// Open, write all of `buf` at `offset`, then `fsync` (`Some(false)`) or
    /// `fdatasync` (`Some(true)`), in the ring thread (one round trip).
    WriteFile {
        path: CString,
        flags: i32,
        mode: u32,
        fd: Option<OwnedFd>,
        offset: u64,
        buf: Bytes,
        sync: Option<bool>,
    },
}

/// A completed request.
enum Done {
    Fd(OwnedFd),
    Read(Vec<u8>),
    Unit,
}

struct Request {
    op: Op,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Done>>,
}

/// A ring on its own thread (see the module docs).
pub struct Uring {
    tx: std::sync::Mutex<Option<mpsc::Sender<Request>>>,
    wake: Arc<OwnedFd>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn signal(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

impl Uring {
    /// Makes a ring and its thread, and checks that the ring runs a request.
    pub fn start() -> std::io::Result<Arc<Uring>> {
        let ring = IoUring::new(DEPTH)?;
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let (tx, rx) = mpsc::channel();
        let thread_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name("selfie-media-uring".into())
            .spawn(move || run(ring, rx, thread_wake))?;
        let uring = Arc::new(Uring {
            tx: std::sync::Mutex::new(Some(tx)),
            wake,
            thread: std::sync::Mutex::new(Some(thread)),
        });
        // A seccomp profile may allow io_uring_setup and refuse what follows: probe an
        // unlink of a path that cannot exist, which must fail with ENOENT from the ring.
        let probe = futures::executor::block_on(
            uring.unlink(Path::new("/proc/selfie-io-uring-probe/none")),
        );
        match probe {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(uring),
            Err(e) => Err(e),
            Ok(()) => Err(std::io::Error::other("io_uring probe unlinked a file")),
        }
    }

    async fn call(&self, op: Op) -> std::io::Result<Done> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let tx = tx
                .as_ref()
                .ok_or_else(|| std::io::Error::other("io_uring thread stopped"))?;
            tx.send(Request { op, reply })
                .map_err(|_| std::io::Error::other("io_uring thread stopped"))?;
        }
        signal(&self.wake);
        answer
            .await
            .map_err(|_| std::io::Error::other("io_uring thread stopped"))?
    }

    /// Opens `path` with `flags` (`O_CLOEXEC` added) and `mode`.
    pub async fn open(&self, path: &Path, flags: i32, mode: u32) -> std::io::Result<Arc<OwnedFd>> {
        let path = cstring(path)?;
        let flags = flags | libc::O_CLOEXEC;
        match self.call(Op::Open { path, flags, mode }).await? {
            Done::Fd(fd) => Ok(Arc::new(fd)),
            _ => Err(std::io::Error::other("io_uring: unexpected answer")),
        }
    }

    /// `fsync` (or `fdatasync` when `data_only`).
    pub async fn sync(&self, fd: &Arc<OwnedFd>, data_only: bool) -> std::io::Result<()> {
        let fd = fd.clone();
        self.call(Op::Sync { fd, data_only }).await.map(|_| ())
    }

    /// Renames `from` to `to` (replacing it).
    pub async fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let (from, to) = (cstring(from)?, cstring(to)?);
        self.call(Op::Rename { from, to }).await.map(|_| ())
    }

    /// Up to `len` bytes of the file `path` from `offset` (fewer only at its end): open
    /// and reads in the ring thread, one round trip.
    pub async fn read_file(
        &self,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> std::io::Result<Vec<u8>> {
        let op = Op::ReadFile {
            path: cstring(path)?,
            fd: None,
            offset,
            len,
            buf: Vec::with_capacity(len),
        };
        match self.call(op).await? {
            Done::Read(b) => Ok(b),
            _ => Err(std::io::Error::other("io_uring: unexpected answer")),
        }
    }

    /// Opens `path` with `flags` and `mode`, writes all of `buf` at `offset`, then
    /// `fsync`s (`Some(false)`) or `fdatasync`s (`Some(true)`) it: one round trip.
    pub async fn write_file(
        &self,
        path: &Path,
        flags: i32,
        mode: u32,
        offset: u64,
        buf: Bytes,
        sync: Option<bool>,
    ) -> std::io::Result<()> {
        let op = Op::WriteFile {
            path: cstring(path)?,
            flags,
            mode,
            fd: None,
            offset,
            buf,
            sync,
        };
        self.call(op).await.map(|_| ())
    }

    /// Removes the file `path`.
    pub async fn unlink(&self, path: &Path) -> std::io::Result<()> {
        let path = cstring(path)?;
        self.call(Op::Unlink { path }).await.map(|_| ())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Closing the channel and waking the thread lets it finish what is in flight.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        signal(&self.wake);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The submission entry of `op`, pointing into memory `op` owns.
fn entry(op: &mut Op) -> io_uring::squeue::Entry {
    let cwd = types::Fd(libc::AT_FDCWD);
    match op {
        Op::Open { path, flags, mode } => opcode::OpenAt::new(cwd, path.as_ptr())
            .flags(*flags)
            .mode(*mode)
            .build(),
        Op::Sync { fd, data_only } => {
            let mut e = opcode::Fsync::new(types::Fd(fd.as_raw_fd()));
            if *data_only {
                e = e.flags(types::FsyncFlags::DATASYNC);
            }
            e.build()
        }
        Op::Rename { from, to } => {
            opcode::RenameAt::new(cwd, from.as_ptr(), cwd, to.as_ptr()).build()
        }
        Op::Unlink { path } => opcode::UnlinkAt::new(cwd, path.as_ptr()).build(),
        Op::ReadFile { path, fd: None, .. } => opcode::OpenAt::new(cwd, path.as_ptr())
            .flags(libc::O_RDONLY | libc::O_CLOEXEC)
            .build(),
        Op::ReadFile {
            fd: Some(fd),
            offset,
            len,
            buf,
            ..
        } => {
            let want = u32::try_from(*len - buf.len()).unwrap_or(u32::MAX);
            // SAFETY: `buf` holds `len` bytes of capacity; the read fills its spare part.
            let at = unsafe { buf.as_mut_ptr().add(buf.len()) };
            opcode::Read::new(types::Fd(fd.as_raw_fd()), at, want)
                .offset(*offset + buf.len() as u64)
                .build()
        }
        Op::WriteFile {
            path,
            flags,
            mode,
            fd: None,
            ..
        } => opcode::OpenAt::new(cwd, path.as_ptr())
            .flags(*flags | libc::O_CLOEXEC)
            .mode(*mode)
            .build(),
        Op::WriteFile {
            fd: Some(fd),
            offset,
            buf,
            sync,
            ..
        } => {
            if buf.is_empty() {
                let mut e = opcode::Fsync::new(types::Fd(fd.as_raw_fd()));
                if *sync == Some(true) {
                    e = e.flags(types::FsyncFlags::DATASYNC);
                }
                e.build()
            } else {
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                opcode::Write::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), len)
                    .offset(*offset)
                    .build()
            }
        }
    }
}

/// Moves a multi-step request on after a completion: `None` when its next step is to
/// be submitted, else its answer.
fn advance(op: &mut Op, result: i32) -> Option<std::io::Result<Done>> {
    if result < 0 {
        return Some(Err(std::io::Error::from_raw_os_error(-result)));
    }
    match op {
        Op::ReadFile { fd, len, buf, .. } => {
            if fd.is_none() {
                // SAFETY: a non-negative result of an open is a new descriptor we own.
                *fd = Some(unsafe { OwnedFd::from_raw_fd(result) });
            } else {
                let n = (result as usize).min(*len - buf.len());
                // SAFETY: the kernel wrote `n` bytes right after the buffer's contents.
                unsafe { buf.set_len(buf.len() + n) };
                if n == 0 {
                    return Some(Ok(Done::Read(std::mem::take(buf))));
                }
            }
            (buf.len() == *len).then(|| Ok(Done::Read(std::mem::take(buf))))
        }
        Op::WriteFile {
            fd,
            offset,
            buf,
            sync,
            ..
        } => {
            if fd.is_none() {
                // SAFETY: a non-negative result of an open is a new descriptor we own.
                *fd = Some(unsafe { OwnedFd::from_raw_fd(result) });
            } else if buf.is_empty() {
                // The sync completed.
                return Some(Ok(Done::Unit));
            } else {
                let n = result as usize;
                if n == 0 {
                    return Some(Err(std::io::ErrorKind::WriteZero.into()));
                }
                let _ = buf.split_to(n.min(buf.len()));
                *offset += n as u64;
            }
            (buf.is_empty() && sync.is_none()).then_some(Ok(Done::Unit))
        }
        _ => None,
    }
}

/// The answer to `op` from its completion's `result`.
fn finish(op: Op, result: i32) -> std::io::Result<Done> {
    if result < 0 {
        return Err(std::io::Error::from_raw_os_error(-result));
    }
    Ok(match op {
        // SAFETY: a non-negative result of an open is a new descriptor we now own.
        Op::Open { .. } => Done::Fd(unsafe { OwnedFd::from_raw_fd(result) }),
        Op::Sync { .. } | Op::Rename { .. } | Op::Unlink { .. } => Done::Unit,
        Op::ReadFile { .. } | Op::WriteFile { .. } => {
            return Err(std::io::Error::other("io_uring: multi-step request"));
        }
    })
}

/// The I/O thread: submits requests as they come, reaps completions, answers them.
fn run(mut ring: IoUring, rx: mpsc::Receiver<Request>, wake: Arc<OwnedFd>) {
    // Requests the kernel may still be reading or writing. Never dropped while any is in
    // flight: if this thread unwinds or gives up, they leak rather than free memory the
    // kernel could still write into.
    let mut slots: std::mem::ManuallyDrop<Vec<Option<Request>>> =
        std::mem::ManuallyDrop::new(Vec::new());
    let mut free: Vec<usize> = Vec::new();
    let mut backlog: VecDeque<Request> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut closed = false;
    let mut wake_armed = false;
    loop {
        if !wake_armed {
            let poll = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(WAKE);
            // SAFETY: the eventfd outlives the ring (both owned by this thread).
            if unsafe { ring.submission().push(&poll) }.is_ok() {
                wake_armed = true;
            }
        }
        // Take what was sent.
        loop {
            match rx.try_recv() {
                Ok(r) => backlog.push_back(r),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        while in_flight < DEPTH as usize - 1 {
            let Some(mut req) = backlog.pop_front() else {
                break;
            };
            if req.reply.is_closed() {
                // Its caller is gone: never submitted, nothing to do.
                continue;
            }
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            let sqe = entry(&mut req.op).user_data(slot as u64);
            // SAFETY: everything the entry points at is owned by `req`, which stays in
            // `slots` (never moved: only the boxed data it owns is pointed at) until the
            // completion is reaped.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                free.push(slot);
                backlog.push_front(req);
                break;
            }
            slots[slot] = Some(req);
            in_flight += 1;
        }
        if closed && in_flight == 0 && backlog.is_empty() {
            // Nothing is in flight: the requests' memory may go.
            // SAFETY: `slots` is not used again.
            unsafe { std::mem::ManuallyDrop::drop(&mut slots) };
            return;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Transient (completions to reap first, or memory short): reap what
                // completed below, and back off a little when nothing did.
                Some(libc::EBUSY | libc::EAGAIN | libc::ENOMEM) => {
                    if ring.completion().is_empty() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                _ => {
                    tracing::error!(error = %e, "io_uring submit failed; failing its requests");
                    for req in slots.iter_mut().filter_map(Option::take) {
                        // The kernel may still use an in-flight request's memory: its
                        // buffers leak, only the answer goes.
                        let Request { op, reply } = req;
                        std::mem::forget(op);
                        let _ = reply.send(Err(std::io::Error::other("io_uring failed")));
                    }
                    for req in backlog.drain(..) {
                        let _ = req
                            .reply
                            .send(Err(std::io::Error::other("io_uring failed")));
                    }
                    return;
                }
            }
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, result) in done {
            if data == WAKE {
                wake_armed = false;
                let mut counter = [0u8; 8];
                // SAFETY: reads 8 bytes into a live buffer from our eventfd (non-blocking).
                let _ = unsafe {
                    libc::read(wake.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len())
                };
                continue;
            }
            let Some(slot) = usize::try_from(data).ok().and_then(|i| slots.get_mut(i)) else {
                continue;
            };
            let Some(req) = slot.as_mut() else {
                continue;
            };
            if matches!(req.op, Op::ReadFile { .. } | Op::WriteFile { .. }) {
                if let Some(answer) = advance(&mut req.op, result) {
                    if let Some(req) = slot.take() {
                        free.push(data as usize);
                        in_flight -= 1;
                        let _ = req.reply.send(answer);
                    }
                } else {
                    // Its next step, in the same slot (still owned by the request).
                    let sqe = entry(&mut req.op).user_data(data);
                    // SAFETY: as at the first submission.
                    if unsafe { ring.submission().push(&sqe) }.is_err() {
                        // The queue is full: submit what is queued, then push again.
                        let _ = ring.submit();
                        // SAFETY: as above.
                        if unsafe { ring.submission().push(&sqe) }.is_err()
                            && let Some(req) = slot.take()
                        {
                            free.push(data as usize);
                            in_flight -= 1;
                            let _ = req
                                .reply
                                .send(Err(std::io::Error::other("io_uring queue full")));
                        }
                    }
                }
                continue;
            }
            let Some(req) = slot.take() else {
                continue;
            };
            free.push(data as usize);
            in_flight -= 1;
            let _ = req.reply.send(finish(req.op, result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_reads_syncs_renames_and_unlinks_through_the_ring() {
        let ring = Uring::start().expect("io_uring on this kernel");
        let dir = tempfile::tempdir().expect("dir");
        let a = dir.path().join("a");
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let create = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        ring.write_file(&a, create, 0o644, 0, Bytes::from(data.clone()), Some(false))
            .await
            .expect("written and synced");
        let b = dir.path().join("b");
        ring.rename(&a, &b).await.expect("renamed");
        assert!(!a.exists());
        let d = ring
            .open(dir.path(), libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .await
            .expect("directory");
        ring.sync(&d, false).await.expect("directory synced");
        let all = ring.read_file(&b, 0, 4 << 20).await.expect("read");
        assert_eq!(all, data, "short at the end only");
        let mid = ring.read_file(&b, 1000, 10).await.expect("read");
        assert_eq!(mid, &data[1000..1010]);
        let past = ring.read_file(&b, 5 << 20, 10).await.expect("read");
        assert!(past.is_empty());
        // A write at an offset into an existing file, data only synced.
        ring.write_file(
            &b,
            libc::O_WRONLY,
            0,
            10,
            Bytes::from_static(b"xyz"),
            Some(true),
        )
        .await
        .expect("written");
        assert_eq!(
            ring.read_file(&b, 9, 5).await.expect("read"),
            [data[9], b'x', b'y', b'z', data[13]]
        );
        // Many at once, from several tasks.
        let reads = (0..300u64).map(|i| {
            let (ring, b) = (ring.clone(), b.clone());
            async move { ring.read_file(&b, 100_000 + i * 1000, 100).await }
        });
        for (i, r) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let i = 100_000 + i * 1000;
            assert_eq!(r.expect("read"), &data[i..i + 100]);
        }
        ring.unlink(&b).await.expect("unlinked");
        let e = ring.read_file(&b, 0, 1).await.expect_err("gone");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
