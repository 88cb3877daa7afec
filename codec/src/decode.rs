//! Decoding: stream reassembly, verification, and the verified zero-copy views.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use flatbuffers::VerifierOptions;
use selfie_protocol::{
    Body, DATAGRAM_IDENTIFIER, Datagram, DatagramBody, ENVELOPE_IDENTIFIER, Envelope, op_name,
    size_prefixed_root_as_envelope_unchecked, size_prefixed_root_as_envelope_with_opts,
};

use crate::{CodecError, Limits, PREFIX_LEN};

/// Root offset (u32) plus file identifier (4 bytes): the smallest possible FlatBuffer.
const MIN_BUFFER: usize = 8;

/// A verified stream frame: the length prefix and the `Envelope` bytes, exactly as
/// received.
///
/// Cloning is cheap (a reference count). Accessors read the buffer in place; the
/// verification done at construction is what makes that sound, so a `Frame` can only
/// be made by [`Frame::verify`] or [`FrameDecoder`].
#[derive(Clone)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Verifies one whole frame (length prefix included) against `limits`.
    pub fn verify(bytes: Bytes, limits: &Limits) -> Result<Frame, CodecError> {
        Self::verify_with(bytes, limits, &limits.verifier_options())
    }

    fn verify_with(
        bytes: Bytes,
        limits: &Limits,
        opts: &VerifierOptions,
    ) -> Result<Frame, CodecError> {
        if bytes.len() < PREFIX_LEN {
            return Err(CodecError::Truncated {
                have: bytes.len(),
                need: PREFIX_LEN,
            });
        }
        let claimed = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        if claimed > limits.max_frame_bytes as u64 {
            return Err(CodecError::FrameTooLarge {
                len: claimed,
                max: limits.max_frame_bytes,
            });
        }
        let body_len = bytes.len() - PREFIX_LEN;
        if claimed != body_len as u64 {
            return Err(if claimed > body_len as u64 {
                CodecError::Truncated {
                    have: bytes.len(),
                    need: PREFIX_LEN + claimed as usize,
                }
            } else {
                CodecError::Malformed {
                    reason: "length prefix shorter than the frame",
                }
            });
        }
        if body_len < MIN_BUFFER {
            return Err(CodecError::Malformed {
                reason: "frame shorter than a FlatBuffer header",
            });
        }
        if &bytes[PREFIX_LEN + 4..PREFIX_LEN + 8] != ENVELOPE_IDENTIFIER.as_bytes() {
            return Err(CodecError::Malformed {
                reason: "wrong file identifier",
            });
        }
        // Pings and pongs as this crate builds them: recognised by their bytes (see
        // `known`), the verifier's walk skipped.
        if crate::known::is_known(&bytes, opts) {
            return Ok(Frame { bytes });
        }
        Self::verify_envelope(bytes, opts)
    }

    /// The verifier's walk and the known-type check, for a frame whose prefix and
    /// identifier were checked.
    pub(crate) fn verify_envelope(
        bytes: Bytes,
        opts: &VerifierOptions,
    ) -> Result<Frame, CodecError> {
        let env = size_prefixed_root_as_envelope_with_opts(opts, &bytes)?;
        check_known(&env)?;
        Ok(Frame { bytes })
    }

    /// A copy of this frame whose envelope `id` is `id`: FlatBuffers' in-place mutation
    /// of a scalar that is present in the buffer (what `flatc --gen-mutable` generates
    /// for C++). The delivery plane uses it to stamp a push with its topic sequence once
    /// per node, after the event was encoded once by its publisher. `None` when the frame
    /// was built without an `id` (a default 0 is not stored, so there is nothing to patch),
    /// or when the patched copy no longer verifies under `limits` (a crafted buffer whose
    /// `id` bytes overlap other data): the copy is verified again, since `Frame`'s readers
    /// rely on it.
    pub fn with_id(&self, id: u64, limits: &Limits) -> Option<Frame> {
        let buf = self.bytes.get(PREFIX_LEN..)?;
        let u16_at = |at: usize| -> Option<usize> {
            Some(usize::from(u16::from_le_bytes(
                buf.get(at..at + 2)?.try_into().ok()?,
            )))
        };
        let root = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
        let soffset = i32::from_le_bytes(buf.get(root..root + 4)?.try_into().ok()?);
        let vtable = usize::try_from(i64::try_from(root).ok()? - i64::from(soffset)).ok()?;
        // The vtable: its length, the table's length, then one offset per field; `id` is
        // the envelope's first field.
        if u16_at(vtable)? < 6 {
            return None;
        }
        let field = u16_at(vtable + 4)?;
        if field == 0 {
            return None;
        }
        let at = PREFIX_LEN + root + field;
        let mut out = bytes::BytesMut::from(&self.bytes[..]);
        out.get_mut(at..at + 8)?.copy_from_slice(&id.to_le_bytes());
        let stamped = Frame::verify(out.freeze(), limits).ok()?;
        (stamped.id() == id).then_some(stamped)
    }

    /// The envelope, read in place.
    pub fn envelope(&self) -> Envelope<'_> {
        // SAFETY: `self.bytes` passed `size_prefixed_root_as_envelope_with_opts` when this
        // frame was made, and `Bytes` is immutable, so every offset the accessors follow
        // was checked to be in bounds, aligned and well-typed.
        unsafe { size_prefixed_root_as_envelope_unchecked(&self.bytes) }
    }

    /// The request id of the envelope.
    pub fn id(&self) -> u64 {
        self.envelope().id()
    }

    /// The wire bytes (prefix included), e.g. to forward the frame without re-encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Gives back the wire bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env = self.envelope();
        f.debug_struct("Frame")
            .field("id", &env.id())
            .field("op", &op_name(&env))
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Rejects bodies and operations this build does not know. The FlatBuffers verifier
/// accepts unknown union tags (for forward compatibility); dispatch must not.
fn check_known(env: &Envelope<'_>) -> Result<(), CodecError> {
    let body = env.body_type();
    if body == Body::NONE {
        return Err(CodecError::MissingField { field: "body" });
    }
    // The verifier skips the value of an unknown union tag, so nothing behind it may be
    // read: report the tag alone.
    if selfie_protocol::Service::of(body).is_none() {
        return Err(CodecError::UnknownMessage {
            body: body.0,
            op: 0,
        });
    }
    if op_name(env).is_none() {
        let op = raw_op_tag(env);
        return Err(if op == 0 {
            CodecError::MissingField { field: "op" }
        } else {
            CodecError::UnknownMessage { body: body.0, op }
        });
    }
    Ok(())
}

/// The operation tag of a known service's table (every service table stores its union
/// tag, `op_type`, as field 0).
fn raw_op_tag(env: &Envelope<'_>) -> u8 {
    env.body()
        .map(|t| {
            // SAFETY: the body tag names a known service, so the verifier checked this
            // table against that service's schema, whose field 0 is the `op_type` ubyte.
            unsafe { t.get::<u8>(4, Some(0)).unwrap_or(0) }
        })
        .unwrap_or(0)
}

/// Reassembles frames from a stream's bytes, whatever their fragmentation.
///
/// Push chunks as they arrive ([`FrameDecoder::push`]), then pull frames
/// ([`FrameDecoder::next_frame`]) until it returns `Ok(None)`. A frame that arrives in
/// one chunk is sliced out of it without a copy; a frame split over chunks is copied
/// once, into a buffer allocated only when all its bytes have arrived.
///
/// After an error the stream is unusable (its framing is lost): close it with
/// [`CodecError::code`].
pub struct FrameDecoder {
    limits: Limits,
    opts: VerifierOptions,
    /// The oldest buffered chunk. Kept apart from `tail` so that the common case (one
    /// request per stream, arriving in one chunk) never allocates a queue.
    head: Bytes,
    /// Later chunks, in order.
    tail: VecDeque<Bytes>,
    buffered: usize,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            opts: limits.verifier_options(),
            limits,
            head: Bytes::new(),
            tail: VecDeque::new(),
            buffered: 0,
            failed: false,
        }
    }

    /// Adds received bytes. Cheap: the chunk is kept by reference.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.buffered += chunk.len();
        if self.head.is_empty() {
            self.head = chunk;
        } else {
            self.tail.push_back(chunk);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Takes the bytes received past the last frame returned (raw bytes that follow a
    /// header frame, such as a media chunk's), in order, leaving the decoder empty.
    pub fn take_rest(&mut self) -> Vec<Bytes> {
        let mut rest = Vec::with_capacity(1 + self.tail.len());
        if !self.head.is_empty() {
            rest.push(std::mem::take(&mut self.head));
        }
        rest.extend(self.tail.drain(..));
        self.buffered = 0;
        rest
    }

    /// The next complete, verified frame; `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        if self.failed {
            return Err(CodecError::Malformed {
                reason: "stream framing already lost",
            });
        }
        let result = self.next_frame_inner();
        if result.is_err() {
            self.failed = true;
            self.head = Bytes::new();
            self.tail.clear();
            self.buffered = 0;
        }
        result
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, CodecError> {
        let Some(prefix) = self.peek_prefix() else {
            return Ok(None);
        };
        let claimed = u64::from(u32::from_le_bytes(prefix));
        // Checked before anything is buffered or allocated for the frame.
        if claimed > self.limits.max_frame_bytes as u64 {
            return Err(CodecError::FrameTooLarge {
                len: claimed,
                max: self.limits.max_frame_bytes,
            });
        }
        let need = PREFIX_LEN + claimed as usize;
        if self.buffered < need {
            return Ok(None);
        }
        let bytes = self.take(need);
        Frame::verify_with(bytes, &self.limits, &self.opts).map(Some)
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let need = match self.peek_prefix() {
            Some(p) => PREFIX_LEN.saturating_add(u32::from_le_bytes(p) as usize),
            None => PREFIX_LEN,
        };
        Err(CodecError::Truncated {
            have: self.buffered,
            need,
        })
    }

    fn peek_prefix(&self) -> Option<[u8; PREFIX_LEN]> {
        if self.buffered < PREFIX_LEN {
            return None;
        }
        let mut prefix = [0u8; PREFIX_LEN];
        let mut filled = 0;
        for chunk in std::iter::once(&self.head).chain(&self.tail) {
            let n = (PREFIX_LEN - filled).min(chunk.len());
            prefix[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == PREFIX_LEN {
                break;
            }
        }
        Some(prefix)
    }

    /// Removes the first `n` buffered bytes (`n <= self.buffered`).
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        if self.head.len() >= n {
            let out = self.head.split_to(n);
            self.refill();
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n && !self.head.is_empty() {
            let k = (n - out.len()).min(self.head.len());
            out.extend_from_slice(&self.head[..k]);
            self.head.advance(k);
            self.refill();
        }
        out.freeze()
    }

    /// Moves the next queued chunk to `head` once `head` is used up.
    fn refill(&mut self) {
        if self.head.is_empty()
            && let Some(next) = self.tail.pop_front()
        {
            self.head = next;
        }
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(Limits::DEFAULT)
    }
}

/// A verified datagram, read in place (see [`Frame`]).
#[derive(Clone)]
pub struct DatagramFrame {
    bytes: Bytes,
}

impl DatagramFrame {
    /// The datagram message, read in place.
    pub fn datagram(&self) -> Datagram<'_> {
        // SAFETY: verified by `decode_datagram` with the `Datagram` verifier; `Bytes` is
        // immutable.
        unsafe { flatbuffers::root_unchecked::<Datagram>(&self.bytes) }
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl std::fmt::Debug for DatagramFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.datagram();
        f.debug_struct("DatagramFrame")
            .field("seq", &d.seq())
            .field("body", &d.body_type())
            .finish()
    }
}

/// Verifies one QUIC datagram (no length prefix: the datagram is the frame).
pub fn decode_datagram(bytes: Bytes, limits: &Limits) -> Result<DatagramFrame, CodecError> {
    if bytes.len() > limits.max_datagram_bytes {
        return Err(CodecError::DatagramTooLarge {
            len: bytes.len(),
            max: limits.max_datagram_bytes,
        });
    }
    if bytes.len() < MIN_BUFFER {
        return Err(CodecError::Truncated {
            have: bytes.len(),
            need: MIN_BUFFER,
        });
    }
    if &bytes[4..8] != DATAGRAM_IDENTIFIER.as_bytes() {
        return Err(CodecError::Malformed {
            reason: "wrong file identifier",
        });
    }
    let d = flatbuffers::root_with_opts::<Datagram>(&limits.verifier_options(), &bytes)?;
    match d.body_type() {
        DatagramBody::NONE => return Err(CodecError::MissingField { field: "body" }),
        t if t.variant_name().is_none() => {
            return Err(CodecError::UnknownMessage { body: t.0, op: 0 });
        }
        _ => {}
    }
    Ok(DatagramFrame { bytes })
}
