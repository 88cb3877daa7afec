//! Typed codec errors, each mapped to one protocol error code.

use flatbuffers::InvalidFlatbuffer;
use selfie_protocol::ErrorCode;

/// Why bytes were refused. Messages carry sizes and limits, never payload contents.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The length prefix (or a datagram) exceeds the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Claimed length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// A datagram exceeds the configured limit.
    #[error("datagram of {len} bytes exceeds the limit of {max} bytes")]
    DatagramTooLarge {
        /// Received length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended (or a buffer stopped) inside a frame.
    #[error("truncated frame: {have} of {need} bytes received")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// Structurally invalid FlatBuffer (offsets out of range, misalignment, bad length
    /// prefix, wrong file identifier).
    #[error("malformed frame: {reason}")]
    Malformed {
        /// Which check failed.
        reason: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in a string field")]
    InvalidUtf8,
    /// Tables nest deeper than [`crate::Limits::max_depth`].
    #[error("tables nest deeper than the limit")]
    NestingTooDeep,
    /// More tables than [`crate::Limits::max_tables`].
    #[error("more tables than the limit")]
    TooManyTables,
    /// Apparent size over [`crate::Limits::max_apparent_size`].
    #[error("apparent size exceeds the limit")]
    ApparentSizeTooLarge,
    /// A union's type tag and value disagree.
    #[error("inconsistent union field {field}")]
    InvalidUnion {
        /// The union field.
        field: String,
    },
    /// A required part of the message is absent (e.g. the envelope has no body).
    #[error("missing field {field}")]
    MissingField {
        /// The field that is absent.
        field: &'static str,
    },
    /// The service or operation tag is not one this build knows (a newer peer, or junk).
    #[error("unknown message: body tag {body}, operation tag {op}")]
    UnknownMessage {
        /// The envelope's body (service) tag.
        body: u8,
        /// The service table's operation tag (0 when the service is unknown).
        op: u8,
    },
}

impl CodecError {
    /// The protocol error code sent to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::DatagramTooLarge { .. } => ErrorCode::DatagramTooLarge,
            CodecError::Truncated { .. } => ErrorCode::TruncatedFrame,
            CodecError::Malformed { .. } => ErrorCode::MalformedFrame,
            CodecError::InvalidUtf8 => ErrorCode::InvalidUtf8,
            CodecError::NestingTooDeep => ErrorCode::NestingTooDeep,
            CodecError::TooManyTables | CodecError::ApparentSizeTooLarge => {
                ErrorCode::TooManyTables
            }
            CodecError::InvalidUnion { .. } => ErrorCode::InvalidUnion,
            CodecError::MissingField { .. } => ErrorCode::MissingField,
            CodecError::UnknownMessage { .. } => ErrorCode::UnknownMessage,
        }
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CodecError::FrameTooLarge { .. } => "frame_too_large",
            CodecError::DatagramTooLarge { .. } => "datagram_too_large",
            CodecError::Truncated { .. } => "truncated",
            CodecError::Malformed { .. } => "malformed",
            CodecError::InvalidUtf8 => "invalid_utf8",
            CodecError::NestingTooDeep => "nesting_too_deep",
            CodecError::TooManyTables => "too_many_tables",
            CodecError::ApparentSizeTooLarge => "apparent_size_too_large",
            CodecError::InvalidUnion { .. } => "invalid_union",
            CodecError::MissingField { .. } => "missing_field",
            CodecError::UnknownMessage { .. } => "unknown_message",
        }
    }
}

impl From<InvalidFlatbuffer> for CodecError {
    fn from(e: InvalidFlatbuffer) -> Self {
        match e {
            InvalidFlatbuffer::MissingRequiredField { .. } => CodecError::MissingField {
                field: "required field",
            },
            InvalidFlatbuffer::InconsistentUnion { field, .. } => CodecError::InvalidUnion {
                field: field.into_owned(),
            },
            InvalidFlatbuffer::Utf8Error { .. } => CodecError::InvalidUtf8,
            InvalidFlatbuffer::MissingNullTerminator { .. } => CodecError::Malformed {
                reason: "string without NUL terminator",
            },
            InvalidFlatbuffer::Unaligned { .. } => CodecError::Malformed {
                reason: "unaligned scalar",
            },
            InvalidFlatbuffer::RangeOutOfBounds { .. } => CodecError::Malformed {
                reason: "offset out of bounds",
            },
            InvalidFlatbuffer::SignedOffsetOutOfBounds { .. } => CodecError::Malformed {
                reason: "vtable offset out of bounds",
            },
            InvalidFlatbuffer::TooManyTables => CodecError::TooManyTables,
            InvalidFlatbuffer::ApparentSizeTooLarge => CodecError::ApparentSizeTooLarge,
            InvalidFlatbuffer::DepthLimitReached => CodecError::NestingTooDeep,
        }
    }
}
