//! The `Media` service on the wire. Upload bookkeeping (init, resume, complete, abort),
//! deletion and alt text run on the caller's owner shard, where their quota is reserved;
//! chunks and downloads carry raw bytes beside their header frames and run on the shard
//! that received them ([`RawStreams`]); the `Media` subscription carries the caller's
//! processing states.

use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::media::{self as pm, MediaOp, MediaOpT};
use selfie_protocol::{Body, common};
use selfie_storage::Store;

use super::{ChunkHeader, Media, NewUpload, UploadStatus};
use crate::plane::{
    ByteStream, Call, Delivery, RawDownload, RawStreams, Subscription, Topic, envelope, make,
    service_table,
};
use crate::tables::media::{Kind, Media as Object, State};
use crate::{Error, Result};

/// The media service of one shard, on the wire.
#[derive(Clone)]
pub struct MediaWire<S>(pub Rc<Media<S>>);

service_table! {
    impl[S: Store + Clone + 'static] MediaWire<S>;
    body body_as_media, ops MediaOp, answers MediaOpT in Media(pm::MediaT),
        subscribe subscribe;
    UploadInitRequest(op_as_upload_init_request) => init, owner |_r, me| me?;
    UploadResumeRequest(op_as_upload_resume_request) => resume, owner |_r, me| me?;
    UploadCompleteRequest(op_as_upload_complete_request) => complete, owner |_r, me| me?;
    UploadAbortRequest(op_as_upload_abort_request) => abort, owner |_r, me| me?;
    GetMediaRequest(op_as_get_media_request) => get;
    DeleteMediaRequest(op_as_delete_media_request) => delete, owner |_r, me| me?;
    SetAltTextRequest(op_as_set_alt_text_request) => alt_text, owner |_r, me| me?;
    MediaUrlRequest(op_as_media_url_request) => url;
}

fn kind(k: common::MediaKind) -> Result<Kind> {
    match k {
        common::MediaKind::Image => Ok(Kind::Image),
        common::MediaKind::Video => Ok(Kind::Video),
        common::MediaKind::Gif => Ok(Kind::Gif),
        _ => Err(Error::InvalidArgument { field: "kind" }),
    }
}

fn wire_kind(k: Kind) -> common::MediaKind {
    match k {
        Kind::Image => common::MediaKind::Image,
        Kind::Video => common::MediaKind::Video,
        Kind::Gif => common::MediaKind::Gif,
    }
}

fn wire_state(s: State) -> pm::MediaState {
    match s {
        State::Uploading => pm::MediaState::Uploading,
        State::Processing => pm::MediaState::Processing,
        State::Ready => pm::MediaState::Ready,
        State::Failed => pm::MediaState::Failed,
        State::Rejected => pm::MediaState::Rejected,
        // Never sent: tombstones are gone for every reader (`tables::media::load`).
        State::Deleting | State::Collecting => pm::MediaState::Failed,
    }
}

/// An object on the wire; the original is listed for its owner only.
fn info_t(m: &Object, owner_view: bool) -> pm::MediaInfoT {
    let mut renditions: Vec<pm::RenditionT> = m
        .renditions
        .iter()
        .map(|r| {
            make!(pm::RenditionT {
                name: Some(r.name.clone()),
                mime_type: Some(r.mime.clone()),
                width: r.width,
                height: r.height,
                size_bytes: r.size,
            })
        })
        .collect();
    if owner_view {
        renditions.insert(
            0,
            make!(pm::RenditionT {
                name: Some("original".into()),
                mime_type: Some(m.mime.clone()),
                width: m.width,
                height: m.height,
                size_bytes: m.size,
            }),
        );
    }
    make!(pm::MediaInfoT {
        media_id: m.media_id,
        owner_id: m.owner_id,
        kind: wire_kind(m.kind),
        mime_type: Some(m.mime.clone()),
        size_bytes: m.size,
        sha256: hex::decode(&m.sha256).ok(),
        width: m.width,
        height: m.height,
        duration_ms: m.duration_ms,
        blurhash: Some(m.blurhash.clone()),
        alt_text: Some(m.alt_text.clone()),
        state: wire_state(m.state),
        renditions: Some(renditions),
        created_at_ms: m.created_at_ms,
    })
}

/// A `MediaInfoResponse` push for the owner's `Media` topic.
pub(super) fn info_event(delivery: &Delivery, m: &Object) -> Result<Bytes> {
    delivery.encode_event(|b, placeholder| {
        let info = make!(pm::MediaInfoResponseT {
            media: Some(Box::new(info_t(m, true)))
        });
        let t = make!(pm::MediaT {
            op: MediaOpT::MediaInfoResponse(Box::new(info)),
        })
        .pack(b);
        envelope(b, placeholder, Body::Media, t.as_union_value())
    })
}

fn status_t(s: UploadStatus) -> MediaOpT {
    MediaOpT::UploadStatus(Box::new(make!(pm::UploadStatusT {
        upload_id: s.upload_id,
        media_id: s.media_id,
        offset: s.offset,
        size_bytes: s.size,
        chunk_size: s.chunk_bytes,
        expires_at_ms: s.expires_at_ms,
    })))
}

impl<S: Store + Clone + 'static> MediaWire<S> {
    fn info(call: &Call, m: &Object, owner_view: bool) -> Result<Bytes> {
        let media = Some(Box::new(info_t(m, owner_view)));
        Self::answer(
            call,
            MediaOpT::MediaInfoResponse(Box::new(make!(pm::MediaInfoResponseT { media }))),
        )
    }

    async fn init(self, call: &Call, r: pm::UploadInitRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let new = NewUpload {
            kind: kind(r.kind())?,
            size: r.size_bytes(),
            sha256: r.sha256().map(|v| v.bytes().to_vec()).unwrap_or_default(),
            alt_text: r.alt_text().unwrap_or_default().to_string(),
        };
        let status = self.0.init(me, new).await?;
        Self::answer(call, status_t(status))
    }

    async fn resume(self, call: &Call, r: pm::UploadResumeRequest<'_>) -> Result<Bytes> {
        let status = self.0.resume(call.user()?, r.upload_id()).await?;
        Self::answer(call, status_t(status))
    }

    async fn complete(self, call: &Call, r: pm::UploadCompleteRequest<'_>) -> Result<Bytes> {
        let sha = r.sha256().map(|v| v.bytes()).unwrap_or_default();
        let media = self.0.complete(call.user()?, r.upload_id(), sha).await?;
        Self::info(call, &media, true)
    }

    async fn abort(self, call: &Call, r: pm::UploadAbortRequest<'_>) -> Result<Bytes> {
        self.0.abort(call.user()?, r.upload_id()).await?;
        call.ack()
    }

    async fn get(self, call: &Call, r: pm::GetMediaRequest<'_>) -> Result<Bytes> {
        let me = call.user()?;
        let media = self.0.get(me, r.media_id()).await?;
        Self::info(call, &media, media.owner_id == me)
    }

    async fn url(self, call: &Call, r: pm::MediaUrlRequest<'_>) -> Result<Bytes> {
        let rendition = r.rendition().unwrap_or_default();
        let (url, expires_at_ms) = self.0.url(call.user()?, r.media_id(), rendition).await?;
        Self::answer(
            call,
            MediaOpT::MediaUrlResponse(Box::new(make!(pm::MediaUrlResponseT {
                url: Some(url),
                expires_at_ms,
            }))),
        )
    }

    async fn delete(self, call: &Call, r: pm::DeleteMediaRequest<'_>) -> Result<Bytes> {
        self.0.delete(call.user()?, r.media_id()).await?;
        call.ack()
    }

    async fn alt_text(self, call: &Call, r: pm::SetAltTextRequest<'_>) -> Result<Bytes> {
        let alt = r.alt_text().unwrap_or_default();
        let media = self.0.set_alt_text(call.user()?, r.media_id(), alt).await?;
        Self::info(call, &media, true)
    }
}

impl<S: Store + Clone + 'static> RawStreams for MediaWire<S> {
    fn upload(&self, call: Call, body: ByteStream) -> LocalBoxFuture<'static, Result<Bytes>> {
        let media = self.0.clone();
        Box::pin(async move {
            let me = call.user()?;
            let header = {
                let h = call.op(|e| e.body_as_media()?.op_as_upload_chunk_header())?;
                ChunkHeader {
                    upload_id: h.upload_id(),
                    offset: h.offset(),
                    length: h.length(),
                    sha256: h.sha256().map(|v| v.bytes().to_vec()).unwrap_or_default(),
                }
            };
            let status = media.chunk(me, header, body).await?;
            Self::answer(&call, status_t(status))
        })
    }

    fn download(&self, call: Call) -> LocalBoxFuture<'static, Result<RawDownload>> {
        let media = self.0.clone();
        Box::pin(async move {
            let me = call.user()?;
            let (id, rendition, start, end) = {
                let r = call.op(|e| e.body_as_media()?.op_as_download_request())?;
                let rendition = r.rendition().unwrap_or_default().to_string();
                (r.media_id(), rendition, r.range_start(), r.range_end())
            };
            let d = media.download(me, id, &rendition, start, end).await?;
            let header = Self::answer(
                &call,
                MediaOpT::DownloadHeader(Box::new(make!(pm::DownloadHeaderT {
                    media_id: d.media_id,
                    rendition: Some(d.rendition),
                    mime_type: Some(d.mime),
                    total_size: d.total,
                    range_start: d.start,
                    length: d.length,
                    etag: Some(d.etag),
                }))),
            )?;
            Ok(RawDownload {
                header,
                body: d.body,
            })
        })
    }

    fn signed(&self, path: String) -> LocalBoxFuture<'static, Result<super::Signed>> {
        let media = self.0.clone();
        Box::pin(async move { media.signed(&path).await })
    }
}

async fn subscribe<S: Store + Clone + 'static>(
    w: MediaWire<S>,
    kind: SubscriptionKind,
    call: Call,
) -> Result<Subscription> {
    if kind != SubscriptionKind::Media {
        return Err(Error::Unavailable("this subscription"));
    }
    let me = call.user()?;
    let target = call
        .op(|e| e.body_as_control()?.op_as_subscribe_request())?
        .target_id();
    if target != 0 && target != me {
        return Err(Error::Forbidden("only your own media"));
    }
    let events =
        w.0.delivery()?
            .subscribe(Topic::new(SubscriptionKind::Media, me))
            .await?;
    Ok(Subscription::new(Vec::new(), events))
}
