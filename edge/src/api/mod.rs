//! Protocol adapters for the domain services: decode a verified request, call the
//! shard-local service, encode the answer. No domain logic here.

pub mod auth;
pub mod posts;
pub mod social;

use flatbuffers::{UnionWIPOffset, WIPOffset};
use selfie_codec::Builder;
use selfie_protocol::{Body, Envelope, EnvelopeArgs};

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
