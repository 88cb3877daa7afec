//! Encoding with one reusable builder per encoder.

use bytes::{BufMut, Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use selfie_protocol::{
    DATAGRAM_IDENTIFIER, Datagram, DatagramT, Envelope, EnvelopeT,
    finish_size_prefixed_envelope_buffer,
};

use crate::{CodecError, Limits, PREFIX_LEN};

/// Builds frames and datagrams with one `FlatBufferBuilder` that is reset, not freed,
/// between messages: once it has grown to the largest message, encoding allocates
/// nothing.
///
/// ```
/// use selfie_codec::{Encoder, Frame, Limits, build};
/// let mut enc = Encoder::new(Limits::DEFAULT);
/// let wire = enc.encode_bytes(|b| build::ping(b, 7, 1234)).unwrap();
/// let frame = Frame::verify(wire, &Limits::DEFAULT).unwrap();
/// assert_eq!(frame.id(), 7);
/// ```
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
    limits: Limits,
}

/// The builder type handed to encoding closures.
pub type Builder = FlatBufferBuilder<'static>;

impl Encoder {
    /// An encoder whose output is checked against `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(1024),
            limits,
        }
    }

    /// Builds one envelope with `f` and returns the frame (length prefix included),
    /// borrowed from the builder until the next call.
    ///
    /// Fails with [`CodecError::FrameTooLarge`] when the result exceeds the limit: a
    /// peer would refuse it anyway.
    pub fn encode<F>(&mut self, f: F) -> Result<&[u8], CodecError>
    where
        F: FnOnce(&mut Builder) -> WIPOffset<Envelope<'static>>,
    {
        self.fbb.reset();
        let root = f(&mut self.fbb);
        finish_size_prefixed_envelope_buffer(&mut self.fbb, root);
        let data = self.fbb.finished_data();
        let body = data.len() - PREFIX_LEN;
        if body > self.limits.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len: body as u64,
                max: self.limits.max_frame_bytes,
            });
        }
        Ok(data)
    }

    /// Like [`Encoder::encode`], appending the frame to `out` (e.g. a send buffer that
    /// batches several frames into one stream write).
    pub fn encode_into<F>(&mut self, out: &mut BytesMut, f: F) -> Result<(), CodecError>
    where
        F: FnOnce(&mut Builder) -> WIPOffset<Envelope<'static>>,
    {
        let data = self.encode(f)?;
        out.put_slice(data);
        Ok(())
    }

    /// Like [`Encoder::encode`], copied into an owned [`Bytes`] (for mailboxes and
    /// queues that outlive the builder).
    pub fn encode_bytes<F>(&mut self, f: F) -> Result<Bytes, CodecError>
    where
        F: FnOnce(&mut Builder) -> WIPOffset<Envelope<'static>>,
    {
        self.encode(f).map(Bytes::copy_from_slice)
    }

    /// Like [`Encoder::encode_bytes`], with small frames carved out of `arena`'s shared
    /// block instead of an allocation each (see [`FrameArena`]).
    pub fn encode_in<F>(&mut self, arena: &mut FrameArena, f: F) -> Result<Bytes, CodecError>
    where
        F: FnOnce(&mut Builder) -> WIPOffset<Envelope<'static>>,
    {
        self.encode(f).map(|data| arena.copy(data))
    }

    /// Encodes an owned envelope (object API). Convenient for tests and cold paths; hot
    /// paths build in place with [`Encoder::encode`].
    pub fn encode_object(&mut self, env: &EnvelopeT) -> Result<&[u8], CodecError> {
        self.encode(|b| env.pack(b))
    }

    /// Builds one datagram with `f` (no length prefix).
    pub fn encode_datagram<F>(&mut self, f: F) -> Result<&[u8], CodecError>
    where
        F: FnOnce(&mut Builder) -> WIPOffset<Datagram<'static>>,
    {
        self.fbb.reset();
        let root = f(&mut self.fbb);
        self.fbb.finish(root, Some(DATAGRAM_IDENTIFIER));
        let data = self.fbb.finished_data();
        if data.len() > self.limits.max_datagram_bytes {
            return Err(CodecError::DatagramTooLarge {
                len: data.len(),
                max: self.limits.max_datagram_bytes,
            });
        }
        Ok(data)
    }

    /// Encodes an owned datagram (object API).
    pub fn encode_datagram_object(&mut self, d: &DatagramT) -> Result<&[u8], CodecError> {
        self.encode_datagram(|b| d.pack(b))
    }

    /// The limits this encoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new(Limits::DEFAULT)
    }
}

/// Builders for the frames every layer sends (control traffic and errors).
pub mod build {
    use flatbuffers::WIPOffset;
    use selfie_protocol::control::{
        Ack, AckArgs, Control, ControlArgs, ControlOp, Error, ErrorArgs, Ping, PingArgs, Pong,
        PongArgs,
    };
    use selfie_protocol::{Body, Envelope, EnvelopeArgs, ErrorCode};

    use super::Builder;

    /// Wraps a control operation into an envelope.
    pub fn control(
        b: &mut Builder,
        id: u64,
        op_type: ControlOp,
        op: WIPOffset<flatbuffers::UnionWIPOffset>,
    ) -> WIPOffset<Envelope<'static>> {
        let body = Control::create(
            b,
            &ControlArgs {
                op_type,
                op: Some(op),
            },
        );
        Envelope::create(
            b,
            &EnvelopeArgs {
                id,
                body_type: Body::Control,
                body: Some(body.as_union_value()),
                ..Default::default()
            },
        )
    }

    /// An `Error` response to request `id`.
    pub fn error(
        b: &mut Builder,
        id: u64,
        code: ErrorCode,
        message: &str,
        retry_after_ms: u32,
    ) -> WIPOffset<Envelope<'static>> {
        error_on_field(b, id, code, message, retry_after_ms, None)
    }

    /// An `Error` response to request `id` naming the request field at fault.
    pub fn error_on_field(
        b: &mut Builder,
        id: u64,
        code: ErrorCode,
        message: &str,
        retry_after_ms: u32,
        field: Option<&str>,
    ) -> WIPOffset<Envelope<'static>> {
        let message = b.create_string(message);
        let field = field.map(|f| b.create_string(f));
        let err = Error::create(
            b,
            &ErrorArgs {
                code,
                message: Some(message),
                retry_after_ms,
                field,
            },
        );
        control(b, id, ControlOp::Error, err.as_union_value())
    }

    /// An `Ack` (empty success) for request `id`.
    pub fn ack(b: &mut Builder, id: u64) -> WIPOffset<Envelope<'static>> {
        let ack = Ack::create(b, &AckArgs {});
        control(b, id, ControlOp::Ack, ack.as_union_value())
    }

    /// A `Ping` with request id `id`.
    pub fn ping(b: &mut Builder, id: u64, sent_at_ms: u64) -> WIPOffset<Envelope<'static>> {
        let ping = Ping::create(
            b,
            &PingArgs {
                nonce: id,
                sent_at_ms,
            },
        );
        control(b, id, ControlOp::Ping, ping.as_union_value())
    }

    /// The `Pong` answering a `Ping`.
    pub fn pong(
        b: &mut Builder,
        id: u64,
        nonce: u64,
        server_time_ms: u64,
    ) -> WIPOffset<Envelope<'static>> {
        let pong = Pong::create(
            b,
            &PongArgs {
                nonce,
                server_time_ms,
            },
        );
        control(b, id, ControlOp::Pong, pong.as_union_value())
    }
}

/// Owned copies of small frames without an allocation per frame: frames are copied into
/// one shared block and handed out as [`Bytes`] views of it. Once every view of the block
/// is dropped (its frames were sent and acknowledged), the block is reused in place; while
/// some view is still held, the next block is a new allocation.
///
/// What it retains: each frame still held keeps its whole block alive, so N frames held
/// for long (answers a client does not read) can keep N blocks. Callers bound how many
/// frames are held and for how long (the edge abandons an answer not taken in time), and
/// blocks are small; frames over [`FrameArena::MAX_SMALL`] bytes are always copied into
/// their own allocation.
pub struct FrameArena {
    buf: BytesMut,
    block: usize,
}

impl FrameArena {
    /// The largest frame carved out of a block.
    pub const MAX_SMALL: usize = 1024;

    /// An arena of `block`-byte blocks (at least `MAX_SMALL`); nothing is allocated
    /// before the first frame.
    pub fn new(block: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            block: block.max(Self::MAX_SMALL),
        }
    }

    /// `data` as an owned [`Bytes`].
    pub fn copy(&mut self, data: &[u8]) -> Bytes {
        self.copy_patched(data, |_| {})
    }

    /// `data` as an owned [`Bytes`], changed by `patch` (which sees the copy) first.
    pub fn copy_patched(&mut self, data: &[u8], patch: impl FnOnce(&mut [u8])) -> Bytes {
        if data.len() > Self::MAX_SMALL {
            let mut own = BytesMut::from(data);
            patch(&mut own);
            return own.freeze();
        }
        if self.buf.capacity() < data.len() {
            // Reclaims the whole block when no view of it is left; otherwise a new one.
            self.buf.reserve(self.block);
        }
        let from = self.buf.len();
        self.buf.extend_from_slice(data);
        if let Some(copy) = self.buf.get_mut(from..) {
            patch(copy);
        }
        self.buf.split().freeze()
    }
}

/// `Pong` frames without a builder: one is encoded once, and each answer is a copy of it
/// with its request id, nonce and server time written where that one holds them. A
/// `Pong` answers every ping (the hottest request there is), and building it costs three
/// vtables; a copy and three stores cost next to nothing.
///
/// The copy is byte for byte what [`build::pong`] makes when the three numbers are not
/// zero; a zero is written where the builder would leave its field out, which every
/// reader takes for the same value.
///
/// ```
/// use selfie_codec::{FrameArena, Frame, Limits, PongTemplate};
/// let pong = PongTemplate::new(Limits::DEFAULT).unwrap();
/// let wire = pong.write_in(&mut FrameArena::default(), 7, 9, 1_700_000_000_000);
/// let frame = Frame::verify(wire, &Limits::DEFAULT).unwrap();
/// assert_eq!(frame.id(), 7);
/// ```
pub struct PongTemplate {
    frame: Vec<u8>,
    /// Where the request id, the nonce and the server time are, in `frame`.
    at: [usize; 3],
}

impl PongTemplate {
    /// Encodes the template; `None` if its numbers cannot be found in it exactly once
    /// (callers then build each `Pong`).
    pub fn new(limits: Limits) -> Option<Self> {
        use crate::known::{MARKS, find_once};
        let mut enc = Encoder::new(limits);
        let frame = enc
            .encode(|b| build::pong(b, MARKS[0], MARKS[1], MARKS[2]))
            .ok()?
            .to_vec();
        let at = [
            find_once(&frame, MARKS[0])?,
            find_once(&frame, MARKS[1])?,
            find_once(&frame, MARKS[2])?,
        ];
        Some(Self { frame, at })
    }

    /// The `Pong` answering request `id` with `nonce`, at `server_time_ms`, carved out of
    /// `arena`.
    pub fn write_in(
        &self,
        arena: &mut FrameArena,
        id: u64,
        nonce: u64,
        server_time_ms: u64,
    ) -> Bytes {
        arena.copy_patched(&self.frame, |copy| {
            for (at, value) in self.at.into_iter().zip([id, nonce, server_time_ms]) {
                if let Some(slot) = copy.get_mut(at..at + 8) {
                    slot.copy_from_slice(&value.to_le_bytes());
                }
            }
        })
    }
}

impl Default for FrameArena {
    /// 4 KiB blocks (dozens of pongs, acks or small answers each).
    fn default() -> Self {
        Self::new(4 * 1024)
    }
}
