//! Frames of a few fixed shapes — `Ping` and `Pong`, as this crate's builders make them
//! — recognised by their bytes, so that the hottest frames skip the FlatBuffers verifier.
//!
//! A shape is a frame encoded once (with marker values in its `u64` fields) and verified
//! once. A received frame whose bytes equal a shape's everywhere except inside those
//! fields' eight bytes has the same offsets, vtables, union tags and lengths as the
//! verified one: only scalar values differ, and no value of a `u64` can make a buffer
//! invalid. So it is as valid as the shape, and is accepted without walking it again.
//! Anything else (another builder's layout, any other byte changed) goes through the
//! verifier as before.

use std::sync::LazyLock;

use flatbuffers::VerifierOptions;
use selfie_protocol::control::{ControlOp, Ping, PingArgs};

use crate::encode::build;
use crate::{Encoder, Limits};

/// One recognised layout: its bytes, and where its `u64` fields are (sorted, apart).
struct Shape {
    bytes: Vec<u8>,
    holes: Vec<usize>,
}

impl Shape {
    fn matches(&self, frame: &[u8]) -> bool {
        if frame.len() != self.bytes.len() {
            return false;
        }
        let mut from = 0;
        for &hole in &self.holes {
            if frame.get(from..hole) != self.bytes.get(from..hole) {
                return false;
            }
            from = hole + 8;
        }
        frame.get(from..) == self.bytes.get(from..)
    }
}

/// The least permissive options the shapes were verified under: a caller's options at
/// least this permissive accept them too (the verifier's limits only ever refuse more
/// as they shrink).
const CHECKED_UNDER: VerifierOptions = VerifierOptions {
    max_depth: 8,
    max_tables: 8,
    max_apparent_size: 1024,
    ignore_missing_null_terminator: false,
};

/// Markers for the (up to) three `u64` fields of a shape (and of the `PongTemplate`):
/// distinct, non-zero (so that the builder writes each field) and unlike anything else
/// in a small frame.
pub(crate) const MARKS: [u64; 3] = [
    0x9e37_79b9_7f4a_7c15,
    0xbf58_476d_1ce4_e5b9,
    0x94d0_49bb_1331_11eb,
];

static SHAPES: LazyLock<Vec<Shape>> = LazyLock::new(shapes);

/// Pings and pongs with each of their three numbers zero (the builder leaves the field
/// out) or not: eight layouts of each.
fn shapes() -> Vec<Shape> {
    let mut enc = Encoder::new(Limits::DEFAULT);
    let mut out = Vec::new();
    for present in 0u8..8 {
        let value = |i: usize| {
            if present & (1 << i) != 0 { MARKS[i] } else { 0 }
        };
        let (id, a, b) = (value(0), value(1), value(2));
        let ping = enc.encode(|fbb| ping(fbb, id, a, b)).map(<[u8]>::to_vec);
        out.extend(ping.ok().and_then(|bytes| shape(bytes, [id, a, b])));
        let pong = enc
            .encode(|fbb| build::pong(fbb, id, a, b))
            .map(<[u8]>::to_vec);
        out.extend(pong.ok().and_then(|bytes| shape(bytes, [id, a, b])));
    }
    out
}

/// A `Ping` as `build::ping` lays it out, with a nonce of its own (`build::ping` uses the
/// request id).
fn ping(
    fbb: &mut crate::Builder,
    id: u64,
    nonce: u64,
    sent_at_ms: u64,
) -> flatbuffers::WIPOffset<selfie_protocol::Envelope<'static>> {
    let op = Ping::create(fbb, &PingArgs { nonce, sent_at_ms });
    build::control(fbb, id, ControlOp::Ping, op.as_union_value())
}

/// `bytes` as a shape, when it verifies and each non-zero value in `values` is found in
/// it exactly once (anything else: not a shape, and such frames are simply verified).
fn shape(bytes: Vec<u8>, values: [u64; 3]) -> Option<Shape> {
    // The whole check a received frame gets (the length prefix matched by the encoder).
    crate::decode::Frame::verify_envelope(bytes::Bytes::copy_from_slice(&bytes), &CHECKED_UNDER)
        .ok()?;
    let mut holes = Vec::new();
    for value in values.into_iter().filter(|v| *v != 0) {
        holes.push(find_once(&bytes, value)?);
    }
    holes.sort_unstable();
    if holes.windows(2).any(|w| w[0] + 8 > w[1]) {
        return None;
    }
    Some(Shape { bytes, holes })
}

/// Where `value`'s little-endian bytes are in `bytes`, when they are there exactly once.
pub(crate) fn find_once(bytes: &[u8], value: u64) -> Option<usize> {
    let mark = value.to_le_bytes();
    let mut hits = bytes
        .windows(mark.len())
        .enumerate()
        .filter(|(_, w)| *w == mark)
        .map(|(i, _)| i);
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// Whether `frame` (length prefix included) is one of the known shapes, so valid under
/// `opts` without verifying it.
pub(crate) fn is_known(frame: &[u8], opts: &VerifierOptions) -> bool {
    // (`ignore_missing_null_terminator` does not matter: the shapes hold no strings.)
    let permissive = opts.max_depth >= CHECKED_UNDER.max_depth
        && opts.max_tables >= CHECKED_UNDER.max_tables
        && opts.max_apparent_size >= CHECKED_UNDER.max_apparent_size;
    permissive && frame.len() <= 256 && SHAPES.iter().any(|s| s.matches(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use selfie_protocol::size_prefixed_root_as_envelope_with_opts;

    fn ping_bytes(id: u64, nonce: u64, sent: u64) -> Vec<u8> {
        Encoder::new(Limits::DEFAULT)
            .encode(|fbb| ping(fbb, id, nonce, sent))
            .expect("fits")
            .to_vec()
    }

    #[test]
    fn every_ping_and_pong_layout_is_a_shape() {
        assert_eq!(SHAPES.len(), 16);
        let opts = Limits::DEFAULT.verifier_options();
        assert!(is_known(&ping_bytes(7, 7, 0), &opts), "the SDK's ping");
        let pong = Encoder::new(Limits::DEFAULT)
            .encode(|b| build::pong(b, 7, 7, 1_700_000_000_000))
            .expect("fits")
            .to_vec();
        assert!(is_known(&pong, &opts), "the edge's pong");
        let ack = Encoder::new(Limits::DEFAULT)
            .encode(|b| build::ack(b, 7))
            .expect("fits")
            .to_vec();
        assert!(!is_known(&ack, &opts), "not a shape");
        let strict = VerifierOptions {
            max_tables: 2,
            ..opts
        };
        assert!(
            !is_known(&ping_bytes(7, 7, 0), &strict),
            "stricter options verify"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever bytes of a ping or pong (any of their layouts) are changed, to
        /// whatever values, a frame recognised as a shape is one the verifier accepts
        /// too; and every ping and pong, whatever its numbers, is recognised.
        #[test]
        fn a_recognised_frame_is_one_the_verifier_accepts(
            pong in any::<bool>(),
            id in prop_oneof![Just(0u64), any::<u64>()],
            nonce in prop_oneof![Just(0u64), any::<u64>()],
            time in prop_oneof![Just(0u64), any::<u64>()],
            changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let opts = Limits::DEFAULT.verifier_options();
            let mut frame = if pong {
                Encoder::new(Limits::DEFAULT)
                    .encode(|b| build::pong(b, id, nonce, time))
                    .expect("fits")
                    .to_vec()
            } else {
                ping_bytes(id, nonce, time)
            };
            prop_assert!(is_known(&frame, &opts));
            for (at, byte) in changes {
                let at = at % frame.len();
                frame[at] = byte;
            }
            if is_known(&frame, &opts) {
                prop_assert!(
                    size_prefixed_root_as_envelope_with_opts(&opts, &frame).is_ok(),
                    "recognised but invalid"
                );
            }
        }
    }
}
