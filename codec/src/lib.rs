//! Selfie framing: how protocol messages travel on QUIC streams and datagrams.
//!
//! A *frame* is a size-prefixed FlatBuffer `Envelope`: a little-endian `u32` length,
//! then that many bytes of FlatBuffer (root offset, the `SLF1` file identifier, tables).
//! A datagram carries exactly one `Datagram` FlatBuffer with no prefix.
//!
//! The one idea: bytes are **verified once, here, with explicit limits** (frame size,
//! nesting depth, table count, apparent size) and then handed on as a [`Frame`]: a
//! cheap, `Send` handle over the received [`bytes::Bytes`] whose accessors read the
//! buffer in place, with no copy and no second verification. Everything downstream
//! (dispatch, mailboxes between shards, services) works on verified frames.
//!
//! - [`FrameDecoder`] accepts a stream's bytes in any fragmentation and yields frames.
//!   It never allocates for bytes it has not received: a length prefix is checked
//!   against [`Limits::max_frame_bytes`] before anything is buffered.
//! - [`Encoder`] builds frames with one reusable `FlatBufferBuilder` (no allocation per
//!   frame in steady state).
//! - Pings and pongs laid out as this crate builds them are recognised by their bytes
//!   (a layout verified once, differing only inside `u64` fields) instead of walked by
//!   the verifier; [`PongTemplate`] makes pongs by copying one encoded once.
//! - [`decode_datagram`] / [`Encoder::encode_datagram`] handle QUIC datagrams.
//! - Every failure is a [`CodecError`] that maps to a protocol [`ErrorCode`].
//!
//! This crate is pure: no sockets, no async runtime, no clock. It must not depend on
//! tokio or quinn.

mod decode;
mod encode;
mod error;
mod known;
mod limits;

pub use decode::{DatagramFrame, Frame, FrameDecoder, decode_datagram};
pub use encode::{Builder, Encoder, FrameArena, PongTemplate, build};
pub use error::CodecError;
pub use limits::Limits;

pub use selfie_protocol::ErrorCode;

/// Bytes of the length prefix in front of every stream frame.
pub const PREFIX_LEN: usize = 4;
