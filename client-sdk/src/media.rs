//! Media in the client ([`MediaApi`], from [`Client::media`]): uploads in parallel chunks
//! at media priority (each chunk with its SHA-256, so a corrupted one is refused and sent
//! again), resumable from the server's durable offset after a reconnect, with a progress
//! callback; ranged downloads into memory or any `AsyncWrite`; object info, alt text,
//! deletion, and the `Media` subscription that reports processing states.
//!
//! ```no_run
//! # async fn demo(client: &selfie_client::Client, photo: bytes::Bytes) -> Result<(), selfie_client::ClientError> {
//! use selfie_client::media::UploadOptions;
//! use selfie_protocol::common::MediaKind;
//! let media = client.media();
//! let info = media.upload(MediaKind::Image, photo, &UploadOptions::default()).await?;
//! let ready = media.wait_ready(info.media_id, std::time::Duration::from_secs(30)).await?;
//! let (_header, large) = media.download(ready.media_id, "large", 0, 0).await?;
//! # let _ = large; Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use selfie_codec::{Frame, FrameDecoder};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::media::{self as pm, MediaOpT};
use selfie_protocol::{Body, BodyT, EnvelopeT, common};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{Client, ClientError, Subscription, read_frame, server_error, stream_err};

/// The most [`MediaApi::download`] reserves up front from a download's announced length
/// (beyond it, the buffer grows as bytes arrive).
pub const PRESIZE_LIMIT: u64 = 256 << 20;

/// Typed media requests over one session.
pub struct MediaApi<'a>(&'a Client);

impl Client {
    /// This session's media requests.
    pub fn media(&self) -> MediaApi<'_> {
        MediaApi(self)
    }
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what}"))
}

/// Called with (bytes durably received, total) as an upload advances.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to upload.
#[derive(Clone)]
pub struct UploadOptions {
    /// Chunks in flight at once on the connection.
    pub parallel: usize,
    /// Description for screen readers.
    pub alt_text: String,
    /// Told of progress, when set.
    pub progress: Option<Progress>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            parallel: 4,
            alt_text: String::new(),
            progress: None,
        }
    }
}

fn media_frame(
    op: MediaOpT,
) -> impl FnOnce(
    &mut selfie_codec::Builder,
    u64,
) -> flatbuffers::WIPOffset<selfie_protocol::Envelope<'static>> {
    move |b, id| {
        let mut m = pm::MediaT::default();
        m.op = op;
        let mut e = EnvelopeT::default();
        e.id = id;
        e.body = BodyT::Media(Box::new(m));
        e.pack(b)
    }
}

fn media_op(frame: &Frame) -> Result<MediaOpT, ClientError> {
    match frame.envelope().unpack().body {
        BodyT::Media(m) => Ok(m.op),
        BodyT::Control(_) => Ok(MediaOpT::NONE),
        _ => Err(unexpected("a media answer")),
    }
}

fn status(op: MediaOpT) -> Result<pm::UploadStatusT, ClientError> {
    match op {
        MediaOpT::UploadStatus(s) => Ok(*s),
        _ => Err(unexpected("UploadStatus")),
    }
}

fn info(op: MediaOpT) -> Result<pm::MediaInfoT, ClientError> {
    match op {
        MediaOpT::MediaInfoResponse(r) => r.media.map(|m| *m).ok_or(unexpected("media")),
        _ => Err(unexpected("MediaInfoResponse")),
    }
}

impl MediaApi<'_> {
    /// Sends a media operation and returns the answer's operation (`NONE` for an `Ack`).
    pub async fn call(&self, op: MediaOpT) -> Result<MediaOpT, ClientError> {
        let frame = self.0.request(media_frame(op)).await?;
        media_op(&frame)
    }

    /// Starts an upload of `size` bytes hashing to `sha256`.
    pub async fn init(
        &self,
        kind: common::MediaKind,
        size: u64,
        sha256: [u8; 32],
        alt_text: &str,
    ) -> Result<pm::UploadStatusT, ClientError> {
        let mut r = pm::UploadInitRequestT::default();
        r.kind = kind;
        r.size_bytes = size;
        r.sha256 = Some(sha256.to_vec());
        r.alt_text = Some(alt_text.to_string());
        status(self.call(MediaOpT::UploadInitRequest(Box::new(r))).await?)
    }

    /// Where an upload stands: its `offset` is where to go on from.
    pub async fn resume(&self, upload_id: u64) -> Result<pm::UploadStatusT, ClientError> {
        let mut r = pm::UploadResumeRequestT::default();
        r.upload_id = upload_id;
        status(
            self.call(MediaOpT::UploadResumeRequest(Box::new(r)))
                .await?,
        )
    }

    /// Sends one chunk on its own stream at media priority: the header frame, then the
    /// bytes.
    pub async fn send_chunk(
        &self,
        upload_id: u64,
        offset: u64,
        bytes: Bytes,
    ) -> Result<pm::UploadStatusT, ClientError> {
        let sha = Sha256::digest(&bytes).to_vec();
        self.send_chunk_with(upload_id, offset, bytes, sha).await
    }

    /// [`MediaApi::send_chunk`] with the SHA-256 given (tests send wrong ones).
    pub async fn send_chunk_with(
        &self,
        upload_id: u64,
        offset: u64,
        bytes: Bytes,
        sha256: Vec<u8>,
    ) -> Result<pm::UploadStatusT, ClientError> {
        let mut h = pm::UploadChunkHeaderT::default();
        h.upload_id = upload_id;
        h.offset = offset;
        h.length = u32::try_from(bytes.len()).map_err(|_| unexpected("a smaller chunk"))?;
        h.sha256 = Some(sha256);
        let (_, header) = self
            .0
            .encode(media_frame(MediaOpT::UploadChunkHeader(Box::new(h))))?;
        let (mut send, mut recv) = self.0.conn.open_bi().await?;
        let _ = send.set_priority(selfie_protocol::priority_of(Body::Media).quic_priority());
        send.write_all_chunks(&mut [header, bytes])
            .await
            .map_err(stream_err)?;
        send.finish().map_err(stream_err)?;
        let mut dec = FrameDecoder::new(self.0.limits);
        let frame = read_frame(&mut recv, &mut dec)
            .await?
            .ok_or_else(|| ClientError::Protocol("no answer to a chunk".into()))?;
        server_error(&frame)?;
        status(media_op(&frame)?)
    }

    /// Finishes an upload; the answer is the object (`Processing`, then `Ready`).
    pub async fn complete(
        &self,
        upload_id: u64,
        sha256: [u8; 32],
    ) -> Result<pm::MediaInfoT, ClientError> {
        let mut r = pm::UploadCompleteRequestT::default();
        r.upload_id = upload_id;
        r.sha256 = Some(sha256.to_vec());
        info(
            self.call(MediaOpT::UploadCompleteRequest(Box::new(r)))
                .await?,
        )
    }

    /// Abandons an upload.
    pub async fn abort(&self, upload_id: u64) -> Result<(), ClientError> {
        let mut r = pm::UploadAbortRequestT::default();
        r.upload_id = upload_id;
        self.call(MediaOpT::UploadAbortRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// Uploads `bytes` as a new object: init, chunks (`parallel` at once), complete.
    pub async fn upload(
        &self,
        kind: common::MediaKind,
        bytes: Bytes,
        options: &UploadOptions,
    ) -> Result<pm::MediaInfoT, ClientError> {
        let sha = sha256_of(bytes.clone()).await;
        let status = self
            .init(kind, bytes.len() as u64, sha, &options.alt_text)
            .await?;
        self.upload_from(&status, bytes, sha, 0, options).await
    }

    /// Goes on with an upload interrupted (by a dropped connection, on this or a new
    /// session): asks the server for its durable offset and sends the rest of `bytes`.
    pub async fn upload_resume(
        &self,
        upload_id: u64,
        bytes: Bytes,
        options: &UploadOptions,
    ) -> Result<pm::MediaInfoT, ClientError> {
        let status = self.resume(upload_id).await?;
        let offset = status.offset;
        let sha = sha256_of(bytes.clone()).await;
        self.upload_from(&status, bytes, sha, offset, options).await
    }

    async fn upload_from(
        &self,
        status: &pm::UploadStatusT,
        bytes: Bytes,
        sha: [u8; 32],
        from: u64,
        options: &UploadOptions,
    ) -> Result<pm::MediaInfoT, ClientError> {
        let total = bytes.len() as u64;
        if total != status.size_bytes || status.chunk_size == 0 {
            return Err(ClientError::Protocol(
                "upload does not match its bytes".into(),
            ));
        }
        let upload_id = status.upload_id;
        let progress = options.progress.clone();
        let parallel = options.parallel.max(1);
        let mut sent = digested_chunks(bytes, status.chunk_size, from, parallel)
            .map(|(offset, piece, digest)| self.send_chunk_with(upload_id, offset, piece, digest))
            .buffer_unordered(parallel);
        while let Some(done) = sent.next().await {
            let s = done?;
            if let Some(p) = &progress {
                p(s.offset, total);
            }
        }
        drop(sent);
        // A node checks a few completions at once, one or two per user: a completion
        // refused as `Overloaded` (several uploads finishing together) is tried again,
        // backing off, for up to half a minute.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut wait = Duration::from_millis(50);
        loop {
            match self.complete(upload_id, sha).await {
                Err(ClientError::Server {
                    code: selfie_protocol::ErrorCode::Overloaded,
                    retry_after_ms,
                    ..
                }) if tokio::time::Instant::now() + wait < deadline => {
                    let hint = Duration::from_millis(u64::from(retry_after_ms));
                    tokio::time::sleep(wait.max(hint)).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                done => return done,
            }
        }
    }

    /// An object (as this user may see it).
    pub async fn get(&self, media_id: u64) -> Result<pm::MediaInfoT, ClientError> {
        let mut r = pm::GetMediaRequestT::default();
        r.media_id = media_id;
        info(self.call(MediaOpT::GetMediaRequest(Box::new(r))).await?)
    }

    /// A signed HTTPS URL to `rendition` of an object (`""`: the original for its owner,
    /// `large` for others; `hls/master.m3u8` for a video's ladder), for a browser, a
    /// player or a CDN, and when it expires (Unix ms). It works for anyone holding it
    /// until then, so keep it to the user it was minted for.
    pub async fn url(&self, media_id: u64, rendition: &str) -> Result<(String, u64), ClientError> {
        let mut r = pm::MediaUrlRequestT::default();
        r.media_id = media_id;
        r.rendition = Some(rendition.to_string());
        match self.call(MediaOpT::MediaUrlRequest(Box::new(r))).await? {
            MediaOpT::MediaUrlResponse(u) => Ok((u.url.unwrap_or_default(), u.expires_at_ms)),
            _ => Err(unexpected("MediaUrlResponse")),
        }
    }

    /// Waits until an object leaves `Processing` (polling; the `Media` subscription pushes
    /// the same states), at most `within`.
    pub async fn wait_ready(
        &self,
        media_id: u64,
        within: Duration,
    ) -> Result<pm::MediaInfoT, ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = self.get(media_id).await?;
            if m.state != pm::MediaState::Processing && m.state != pm::MediaState::Uploading {
                return Ok(m);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Changes an object's alt text.
    pub async fn set_alt_text(
        &self,
        media_id: u64,
        alt_text: &str,
    ) -> Result<pm::MediaInfoT, ClientError> {
        let mut r = pm::SetAltTextRequestT::default();
        r.media_id = media_id;
        r.alt_text = Some(alt_text.to_string());
        info(self.call(MediaOpT::SetAltTextRequest(Box::new(r))).await?)
    }

    /// Deletes an object nothing uses.
    pub async fn delete(&self, media_id: u64) -> Result<(), ClientError> {
        let mut r = pm::DeleteMediaRequestT::default();
        r.media_id = media_id;
        self.call(MediaOpT::DeleteMediaRequest(Box::new(r)))
            .await
            .map(|_| ())
    }

    /// Downloads bytes `start..end` (`end` 0: to the end) of `rendition` (`""`: the
    /// original for its owner, `large` for others) into `out`; returns the header.
    pub async fn download_to<W: AsyncWrite + Unpin>(
        &self,
        media_id: u64,
        rendition: &str,
        start: u64,
        end: u64,
        out: &mut W,
    ) -> Result<pm::DownloadHeaderT, ClientError> {
        self.download_into(media_id, rendition, start, end, out, |_, _| {})
            .await
    }

    /// [`MediaApi::download_to`], calling `announced` with the header before any byte
    /// is written (to size the output).
    async fn download_into<W: AsyncWrite + Unpin>(
        &self,
        media_id: u64,
        rendition: &str,
        start: u64,
        end: u64,
        out: &mut W,
        announced: impl FnOnce(&pm::DownloadHeaderT, &mut W),
    ) -> Result<pm::DownloadHeaderT, ClientError> {
        let mut r = pm::DownloadRequestT::default();
        r.media_id = media_id;
        r.rendition = Some(rendition.to_string());
        r.range_start = start;
        r.range_end = end;
        let (_, request) = self
            .0
            .encode(media_frame(MediaOpT::DownloadRequest(Box::new(r))))?;
        let (mut send, mut recv) = self.0.conn.open_bi().await?;
        send.write_all(&request).await.map_err(stream_err)?;
        send.finish().map_err(stream_err)?;
        let mut dec = FrameDecoder::new(self.0.limits);
        let frame = read_frame(&mut recv, &mut dec)
            .await?
            .ok_or_else(|| ClientError::Protocol("no answer to a download".into()))?;
        server_error(&frame)?;
        let header = match media_op(&frame)? {
            MediaOpT::DownloadHeader(h) => *h,
            _ => return Err(unexpected("DownloadHeader")),
        };
        if end != 0 && header.length > end.saturating_sub(start) {
            return Err(ClientError::Protocol(
                "more bytes announced than asked".into(),
            ));
        }
        announced(&header, out);
        let mut left = header.length;
        for piece in dec.take_rest() {
            left = left
                .checked_sub(piece.len() as u64)
                .ok_or_else(|| ClientError::Protocol("more bytes than announced".into()))?;
            out.write_all(&piece).await.map_err(stream_err)?;
        }
        while let Some(chunk) = recv
            .read_chunk(256 * 1024, true)
            .await
            .map_err(stream_err)?
        {
            left = left
                .checked_sub(chunk.bytes.len() as u64)
                .ok_or_else(|| ClientError::Protocol("more bytes than announced".into()))?;
            out.write_all(&chunk.bytes).await.map_err(stream_err)?;
        }
        if left != 0 {
            return Err(ClientError::Protocol("download ended early".into()));
        }
        out.flush().await.map_err(stream_err)?;
        Ok(header)
    }

    /// [`MediaApi::download_to`] into memory (sized from the announced length, up to
    /// [`PRESIZE_LIMIT`] at once).
    pub async fn download(
        &self,
        media_id: u64,
        rendition: &str,
        start: u64,
        end: u64,
    ) -> Result<(pm::DownloadHeaderT, Bytes), ClientError> {
        // Sized once from the announced length (bounded, as the length is the server's
        // word, and no more than the range asked): growing by doubling copied each byte
        // about once more on average and faulted in fresh pages at each growth, which on
        // a phone is battery.
        let mut buf = Vec::new();
        let header = self
            .download_into(media_id, rendition, start, end, &mut buf, |h, buf| {
                buf.reserve_exact(h.length.min(PRESIZE_LIMIT) as usize)
            })
            .await?;
        Ok((header, Bytes::from(buf)))
    }

    /// Subscribes to this user's media: a `MediaInfoResponse` for each state change.
    pub async fn subscribe(&self) -> Result<Subscription, ClientError> {
        self.0.subscribe(SubscriptionKind::Media, 0, None).await
    }
}

/// The SHA-256 of `bytes`, computed on tokio's blocking pool (a video's digest would
/// stall the caller's thread for seconds).
async fn sha256_of(bytes: Bytes) -> [u8; 32] {
    let copy = bytes.clone();
    match tokio::task::spawn_blocking(move || Sha256::digest(&copy).into()).await {
        Ok(d) => d,
        // The blocking pool is shutting down with the runtime: hash here.
        Err(_) => Sha256::digest(&bytes).into(),
    }
}

/// The chunks of `bytes` from the one holding `from` on, each with its SHA-256, computed
/// ahead on tokio's blocking pool: up to `parallel + 1` digests (and at most one more
/// than the machine has cores) are under way while the chunks before them are on the
/// wire, so a chunk waits for its hash only when the
/// network outruns the hashing (one chunk in flight otherwise serialises hash, send
/// and answer). A chunk is a slice of `bytes`, never a copy.
pub fn digested_chunks(
    bytes: Bytes,
    chunk_size: u32,
    from: u64,
    parallel: usize,
) -> impl futures::Stream<Item = (u64, Bytes, Vec<u8>)> {
    let total = bytes.len() as u64;
    let chunk = u64::from(chunk_size.max(1));
    let offsets = (from / chunk * chunk..total).step_by(chunk as usize);
    futures::stream::iter(offsets)
        .map(move |offset| {
            let end = (offset + chunk).min(total);
            let piece = bytes.slice(offset as usize..end as usize);
            // Spawned now, so the hash runs while earlier chunks are sent.
            let hashing = {
                let piece = piece.clone();
                tokio::task::spawn_blocking(move || Sha256::digest(&piece).to_vec())
            };
            async move {
                let digest = match hashing.await {
                    Ok(d) => d,
                    // The blocking pool is shutting down with the runtime: hash here.
                    Err(_) => Sha256::digest(&piece).to_vec(),
                };
                (offset, piece, digest)
            }
        })
        .buffered(parallel.clamp(1, cores()) + 1)
}

/// The cores this process may use (4 when unknown).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get())
}

/// The object a `Media` subscription's push carries (its new processing state).
pub fn push_info(frame: &Frame) -> Option<pm::MediaInfoT> {
    match frame.envelope().unpack().body {
        BodyT::Media(m) => match m.op {
            MediaOpT::MediaInfoResponse(r) => r.media.map(|m| *m),
            _ => None,
        },
        _ => None,
    }
}
