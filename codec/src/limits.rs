//! Decoding limits. They bound what a peer can make us buffer or walk.

use flatbuffers::VerifierOptions;

/// Limits applied to every frame and datagram before it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body (the bytes after the length prefix) accepted or produced.
    pub max_frame_bytes: usize,
    /// Largest datagram accepted or produced. QUIC datagrams must fit one packet.
    pub max_datagram_bytes: usize,
    /// Deepest table nesting the verifier walks.
    pub max_depth: usize,
    /// Most tables the verifier visits in one buffer.
    pub max_tables: usize,
    /// Largest "apparent" size: bytes visited if shared sub-objects were copied out. It
    /// stops a small buffer whose offsets point many times at one big vector.
    pub max_apparent_size: usize,
}

impl Limits {
    /// Defaults sized for the product's messages: a feed page of 20 posts is ~10 KiB,
    /// media bytes never travel inside frames.
    pub const DEFAULT: Limits = Limits {
        max_frame_bytes: 256 * 1024,
        max_datagram_bytes: 1200,
        max_depth: 32,
        max_tables: 8 * 1024,
        max_apparent_size: 1024 * 1024,
    };

    /// The FlatBuffers verifier options for these limits.
    pub fn verifier_options(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: self.max_depth,
            max_tables: self.max_tables,
            max_apparent_size: self.max_apparent_size,
            ignore_missing_null_terminator: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
