//! Protocol adapters for the domain services: decode a verified request, call the
//! shard-local service, encode the answer. No domain logic here.

pub mod auth;
pub mod posts;
pub mod social;

use std::cell::RefCell;

use bytes::Bytes;
use flatbuffers::{UnionWIPOffset, WIPOffset};
use selfie_codec::{Builder, Encoder};
use selfie_protocol::{Body, Envelope, EnvelopeArgs, ErrorCode, common};
use selfie_storage::Cursor;

use crate::service::{ErrorReply, RequestContext};

/// Most items per page of any list.
const PAGE_MAX: usize = 100;

/// The signed-in user of a request (`Unauthenticated` for an anonymous session).
pub(crate) fn signed_in(ctx: &RequestContext) -> Result<u64, ErrorReply> {
    ctx.principal
        .as_ref()
        .map(|p| p.user_id)
        .ok_or_else(|| ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"))
}

/// A page request's size (20 by default, 1..=100) and cursor.
pub(crate) fn page_request(page: Option<common::PageRequest<'_>>) -> (usize, Option<Cursor>) {
    let limit = page
        .map_or(20, |p| usize::from(p.limit()))
        .clamp(1, PAGE_MAX);
    let cursor = page
        .and_then(|p| p.cursor())
        .map(|c| Cursor(Bytes::copy_from_slice(c.bytes())));
    (limit, cursor)
}

/// The page reply for where the next page starts (`None`: the end).
pub(crate) fn page_info(
    b: &mut Builder,
    cursor: &Option<Cursor>,
) -> WIPOffset<common::PageInfo<'static>> {
    let next = cursor.as_ref().map(|c| b.create_vector(&c.0));
    common::PageInfo::create(
        b,
        &common::PageInfoArgs {
            next_cursor: next,
            has_more: cursor.is_some(),
        },
    )
}

/// Encodes an answer with the shard's reusable encoder.
pub(crate) fn encode(
    encoder: &RefCell<Encoder>,
    f: &dyn Fn(&mut Builder) -> WIPOffset<Envelope<'static>>,
) -> Result<Bytes, ErrorReply> {
    encoder
        .borrow_mut()
        .encode_bytes(f)
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))
}

/// An envelope around a service table (`body`) of kind `body_type`, answering request `id`.
pub(crate) fn envelope(
    b: &mut Builder,
    id: u64,
    body_type: Body,
    body: WIPOffset<UnionWIPOffset>,
) -> WIPOffset<Envelope<'static>> {
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type,
            body: Some(body),
            ..Default::default()
        },
    )
}
