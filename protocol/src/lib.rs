//! The Selfie wire protocol: one contract for every client and every service.
//!
//! This crate owns the FlatBuffers schemas (`protocol/schema/*.fbs`), the Rust code that
//! `flatc` 25.12.19 generates from them (committed under `src/generated`, re-exported
//! here by namespace), the protocol version, the ALPN, the error-code table and the few
//! facts about messages that every layer needs (stream priority, idempotency).
//!
//! The one idea: every frame is an [`Envelope`] whose `body` names a *service* table
//! ([`control::Control`], [`chat::Chat`], ...), and each service table holds a union of that
//! service's operations. Requests and their responses share the envelope `id`.
//!
//! Generated code is never edited by hand: change a schema, run `protocol/generate.sh`,
//! commit both. A test fails when the committed output differs from a fresh generation.
//!
//! This crate must not depend on any I/O, async runtime or framing code: framing and
//! verification limits live in `selfie-codec`.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

/// Everything `flatc` generated, by namespace (`generated::selfie::chat`, ...).
#[rustfmt::skip]
#[allow(
    missing_docs,
    unused_imports,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unsafe_op_in_unsafe_fn,
    mismatched_lifetime_syntaxes,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod generated;

/// proptest strategies for every object-API type (feature `arbitrary`).
#[cfg(feature = "arbitrary")]
#[rustfmt::skip]
#[allow(missing_docs, clippy::all)]
#[path = "generated/arbitrary.rs"]
pub mod arbitrary;

/// Which requests are idempotent, generated from the schemas' `(idempotent)` marks.
#[rustfmt::skip]
#[path = "generated/idempotent.rs"]
mod idempotent;

mod errors;
mod facts;

pub use errors::ErrorClass;
pub use facts::{Priority, Service, op_name, priority_of, priority_of_service};
pub use idempotent::{declared_answer, is_idempotent, operation};

pub use generated::selfie::control::ErrorCode;
pub use generated::selfie::datagram::{Datagram, DatagramArgs, DatagramBody, DatagramT};
pub use generated::selfie::{
    Body, BodyT, Envelope, EnvelopeArgs, EnvelopeT, admin, ads, analytics, auth, chat, common,
    control, datagram, feed, graph, media, moderation, notifications, payments, posts, recommend,
    search, stories, users,
};
pub use generated::selfie::{
    ENVELOPE_IDENTIFIER, finish_size_prefixed_envelope_buffer,
    size_prefixed_root_as_envelope_unchecked, size_prefixed_root_as_envelope_with_opts,
};

/// File identifier of [`Datagram`] buffers (`datagram.fbs`).
pub const DATAGRAM_IDENTIFIER: &str = "SLFD";

/// A protocol version: `major` changes are incompatible, `minor` ones only append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible revision.
    pub major: u16,
    /// Compatible (append-only) revision.
    pub minor: u16,
}

impl Version {
    /// A version from its parts.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self { major, minor }
    }

    /// The wire struct for `Hello` / `Welcome`.
    pub fn to_wire(self) -> common::ProtocolVersion {
        common::ProtocolVersion::new(self.major, self.minor)
    }
}

impl From<&common::ProtocolVersion> for Version {
    fn from(v: &common::ProtocolVersion) -> Self {
        Self::new(v.major(), v.minor())
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// ALPN for native clients (RFC 7301). Browsers use `h3` + WebTransport.
pub const ALPN: &[u8] = b"selfie/1";

/// The protocol version this build speaks. Minor versions only append fields and
/// operations; a new major version is incompatible.
pub const PROTOCOL_VERSION: Version = Version::new(1, 9);

/// The oldest version this build still accepts.
pub const MIN_SUPPORTED_VERSION: Version = Version::new(1, 0);

/// Picks the version for a session from a client's `Hello`.
///
/// The client offers its newest `version` and the oldest `min_version` it can speak
/// (absent means "only `version`"). The server answers with the newest version both
/// sides speak, or [`ErrorCode::UnsupportedVersion`] when the ranges do not overlap.
/// Within one major version the server speaks the smaller minor of the two.
pub fn negotiate(client: Version, client_min: Option<Version>) -> Result<Version, ErrorCode> {
    let client_min = client_min.unwrap_or(client);
    if client_min > client {
        return Err(ErrorCode::UnsupportedVersion);
    }
    // The newest version both sides speak: ours when the client is newer, else theirs.
    let best = client.min(PROTOCOL_VERSION);
    if best < MIN_SUPPORTED_VERSION || best < client_min {
        return Err(ErrorCode::UnsupportedVersion);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u16, minor: u16) -> Version {
        Version::new(major, minor)
    }

    #[test]
    fn reads_are_idempotent_and_writes_are_not_as_the_schemas_mark_them() {
        use crate::posts::{PostsOpT, PostsT};
        let check = |op: PostsOpT| {
            let env = EnvelopeT {
                body: BodyT::Posts(Box::new(PostsT { op })),
                ..Default::default()
            };
            let mut b = flatbuffers::FlatBufferBuilder::new();
            let e = env.pack(&mut b);
            b.finish(e, None);
            is_idempotent(&flatbuffers::root::<Envelope>(b.finished_data()).expect("valid"))
        };
        assert!(check(PostsOpT::GetPostRequest(Box::default())));
        assert!(check(PostsOpT::CommentsListRequest(Box::default())));
        assert!(!check(PostsOpT::CreatePostRequest(Box::default())));
        assert!(!check(PostsOpT::ReactRequest(Box::default())));
    }

    #[test]
    fn requests_name_their_answers_as_the_schemas_mark_them() {
        use crate::control::{ControlOpT, ControlT};
        use crate::posts::{PostsOpT, PostsT};
        let with = |body: BodyT, f: &dyn Fn(&Envelope<'_>)| {
            let env = EnvelopeT {
                body,
                ..Default::default()
            };
            let mut b = flatbuffers::FlatBufferBuilder::new();
            let e = env.pack(&mut b);
            b.finish(e, None);
            f(&flatbuffers::root::<Envelope>(b.finished_data()).expect("valid"));
        };
        let posts = |op| BodyT::Posts(Box::new(PostsT { op }));
        with(posts(PostsOpT::GetPostRequest(Box::default())), &|e| {
            assert_eq!(declared_answer(e), Some("PostResponse"));
            assert_eq!(operation(e), Some(("Posts", "GetPostRequest")));
        });
        with(posts(PostsOpT::ReactRequest(Box::default())), &|e| {
            assert_eq!(declared_answer(e), Some("Ack"));
        });
        // Answers and control messages answer nothing themselves.
        with(posts(PostsOpT::PostResponse(Box::default())), &|e| {
            assert_eq!(declared_answer(e), None);
        });
        let control = |op| BodyT::Control(Box::new(ControlT { op }));
        with(control(ControlOpT::Ping(Box::default())), &|e| {
            assert_eq!(declared_answer(e), None);
        });
        with(control(ControlOpT::Ack(Box::default())), &|e| {
            assert_eq!(operation(e), Some(("Control", "Ack")));
        });
    }

    #[test]
    fn same_version_is_accepted() {
        assert_eq!(negotiate(PROTOCOL_VERSION, None), Ok(PROTOCOL_VERSION));
    }

    #[test]
    fn newer_minor_client_gets_the_server_version() {
        assert_eq!(negotiate(v(1, 9), Some(v(1, 0))), Ok(PROTOCOL_VERSION));
    }

    #[test]
    fn newer_major_client_that_still_speaks_ours_is_accepted() {
        assert_eq!(negotiate(v(2, 0), Some(v(1, 0))), Ok(PROTOCOL_VERSION));
    }

    #[test]
    fn an_older_minor_client_is_served_at_its_own_version() {
        assert_eq!(negotiate(v(1, 0), None), Ok(v(1, 0)));
    }

    #[test]
    fn unknown_major_version_is_refused() {
        assert_eq!(negotiate(v(2, 0), None), Err(ErrorCode::UnsupportedVersion));
        assert_eq!(negotiate(v(0, 9), None), Err(ErrorCode::UnsupportedVersion));
    }

    #[test]
    fn inverted_range_is_refused() {
        assert_eq!(
            negotiate(v(1, 0), Some(v(1, 3))),
            Err(ErrorCode::UnsupportedVersion)
        );
    }
}
