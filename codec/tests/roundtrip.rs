//! Property tests: every message type round-trips with arbitrary field values, and a
//! stream of frames cut at arbitrary points decodes to the same frames.

mod common;

use std::cell::RefCell;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use selfie_codec::{
    CodecError, Encoder, Frame, FrameArena, FrameDecoder, Limits, PongTemplate, decode_datagram,
};
use selfie_protocol::EnvelopeT;
use selfie_protocol::arbitrary;

/// Nesting depth for generated messages: deep enough to reach every leaf field of every
/// operation (envelope → service → operation → nested tables).
const DEPTH: u32 = 5;

/// Splits `wire` at `cuts` (positions taken modulo the length) into chunks.
fn split(wire: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if wire.is_empty() { 0 } else { c % wire.len() })
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([wire.len()]) {
        if p > start {
            chunks.push(Bytes::copy_from_slice(&wire[start..p]));
            start = p;
        }
    }
    chunks
}

fn decode_all(chunks: Vec<Bytes>) -> Result<Vec<Frame>, CodecError> {
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    let mut frames = Vec::new();
    for chunk in chunks {
        dec.push(chunk);
        while let Some(f) = dec.next_frame()? {
            frames.push(f);
        }
    }
    dec.finish()?;
    Ok(frames)
}

#[test]
fn every_operation_round_trips_with_arbitrary_field_values() {
    let ops = arbitrary::every_operation(DEPTH);
    assert!(ops.len() > 200, "schema lists {} operations", ops.len());
    let enc = RefCell::new(Encoder::new(Limits::DEFAULT));
    for (name, strategy) in ops {
        let mut runner = TestRunner::new(Config {
            cases: 16,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (strategy, proptest::collection::vec(any::<usize>(), 0..4));
        runner
            .run(&strategy, |(env, cuts)| {
                let mut enc = enc.borrow_mut();
                let wire = enc
                    .encode_object(&env)
                    .expect("generated messages fit a frame");
                let frames = decode_all(split(wire, &cuts))
                    .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                prop_assert_eq!(frames.len(), 1);
                let back: EnvelopeT = frames[0].envelope().unpack();
                prop_assert_eq!(&back, &env, "{}", name);
                // Re-encoding the decoded value gives the same message again.
                let again = enc.encode_object(&back).expect("fits");
                let frame = Frame::verify(Bytes::copy_from_slice(again), &Limits::DEFAULT)
                    .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                prop_assert_eq!(frame.envelope().unpack(), env);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_datagram_type_round_trips() {
    let enc = RefCell::new(Encoder::new(Limits::DEFAULT));
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    for (name, body) in arbitrary::selfie_datagram_datagram_body_variants(DEPTH) {
        let strategy = (arbitrary::selfie_datagram_datagram(0), body);
        runner
            .run(&strategy, |(mut d, body)| {
                d.body = body;
                let mut enc = enc.borrow_mut();
                let wire = enc.encode_datagram_object(&d).expect("small enough");
                let frame = decode_datagram(Bytes::copy_from_slice(wire), &Limits::DEFAULT)
                    .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                prop_assert_eq!(frame.datagram().unpack(), d);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

proptest! {
    #![proptest_config(Config { cases: 96, failure_persistence: None, ..Config::default() })]

    #[test]
    fn a_stream_cut_at_arbitrary_points_decodes_to_the_same_frames(
        envs in proptest::collection::vec(arbitrary::selfie_envelope(DEPTH), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut enc = Encoder::new(Limits::DEFAULT);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for env in &envs {
            let frame = enc.encode_object(env).expect("fits");
            wire.extend_from_slice(frame);
            match Frame::verify(Bytes::copy_from_slice(frame), &Limits::DEFAULT) {
                Ok(f) => expected.push(Ok(f.envelope().unpack())),
                // Envelopes with no body are valid FlatBuffers but not valid messages.
                Err(e) => expected.push(Err(e)),
            }
        }
        let got = decode_all(split(&wire, &cuts));
        let first_err = expected.iter().position(|e| e.is_err());
        match (got, first_err) {
            (Ok(frames), None) => {
                let got: Vec<EnvelopeT> = frames.iter().map(|f| f.envelope().unpack()).collect();
                let want: Vec<EnvelopeT> = expected.into_iter().map(|e| e.expect("ok")).collect();
                prop_assert_eq!(got, want);
            }
            (Err(e), Some(i)) => {
                let want = expected[i].clone().expect_err("is an error");
                prop_assert_eq!(e, want);
            }
            (got, first_err) => prop_assert!(false, "got {:?}, first error at {:?}", got.map(|f| f.len()), first_err),
        }
    }

    #[test]
    fn one_frame_per_chunk_or_all_in_one_chunk_gives_the_same_frames(
        envs in proptest::collection::vec(arbitrary::every_operation(2).remove(0).1, 1..6),
    ) {
        let mut enc = Encoder::new(Limits::DEFAULT);
        let mut each = Vec::new();
        let mut all = Vec::new();
        for env in &envs {
            let f = enc.encode_object(env).expect("fits");
            all.extend_from_slice(f);
            each.push(Bytes::copy_from_slice(f));
        }
        let a = decode_all(each).expect("valid");
        let b = decode_all(vec![Bytes::from(all)]).expect("valid");
        prop_assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(x.as_bytes(), y.as_bytes());
        }
    }
}

#[test]
fn frames_that_arrive_whole_are_sliced_without_copying() {
    let mut enc = Encoder::new(Limits::DEFAULT);
    let mut wire = Vec::new();
    for id in 1..=3 {
        wire.extend_from_slice(
            enc.encode(|b| common::samples::chat_message(b, id))
                .expect("fits"),
        );
    }
    let wire = Bytes::from(wire);
    let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
    let frames = decode_all(vec![wire.clone()]).expect("valid");
    assert_eq!(frames.len(), 3);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.id(), i as u64 + 1);
        assert!(
            range.contains(&(f.as_bytes().as_ptr() as usize)),
            "frame {i} was copied"
        );
    }
}

/// Stamping a push's sequence changes its `id` and nothing else: the copy verifies, and
/// unpacking both gives the same message apart from the id (every operation).
#[test]
fn a_frame_restamped_with_an_id_keeps_every_other_field() {
    let enc = RefCell::new(Encoder::new(Limits::DEFAULT));
    for (name, strategy) in arbitrary::every_operation(DEPTH) {
        let mut runner = TestRunner::new(Config {
            cases: 4,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (strategy, 1u64.., any::<u64>());
        runner
            .run(&strategy, |(mut env, placeholder, seq)| {
                env.id = placeholder;
                let Ok(bytes) = enc.borrow_mut().encode_bytes(|b| env.pack(b)) else {
                    return Ok(()); // over the frame limit: not a frame
                };
                let frame = Frame::verify(bytes, &Limits::DEFAULT).expect("valid");
                let stamped = frame.with_id(seq, &Limits::DEFAULT).expect("id present");
                let again =
                    Frame::verify(Bytes::copy_from_slice(stamped.as_bytes()), &Limits::DEFAULT)
                        .expect("still valid");
                prop_assert_eq!(again.id(), seq);
                let mut back = again.envelope().unpack();
                back.id = placeholder;
                prop_assert_eq!(back, env);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn a_frame_without_an_id_cannot_be_restamped() {
    let mut enc = Encoder::new(Limits::DEFAULT);
    let bytes = enc
        .encode_bytes(|b| selfie_codec::build::ack(b, 0))
        .expect("encoded");
    let frame = Frame::verify(bytes, &Limits::DEFAULT).expect("valid");
    assert!(
        frame.with_id(7, &Limits::DEFAULT).is_none(),
        "a default id is not stored"
    );
}

proptest! {
    #![proptest_config(Config { cases: 256, failure_persistence: None, ..Config::default() })]

    /// A `Pong` from the template reads back as the numbers written into it, and is the
    /// builder's own bytes whenever the builder writes all three fields (none is zero).
    #[test]
    fn a_templated_pong_is_the_built_pong(
        id in prop_oneof![Just(0u64), any::<u64>()],
        nonce in prop_oneof![Just(0u64), any::<u64>()],
        time in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let template = PongTemplate::new(Limits::DEFAULT).expect("template");
        let mut arena = FrameArena::default();
        let wire = template.write_in(&mut arena, id, nonce, time);
        let mut enc = Encoder::new(Limits::DEFAULT);
        let built = enc
            .encode(|b| selfie_codec::build::pong(b, id, nonce, time))
            .expect("fits")
            .to_vec();
        if id != 0 && nonce != 0 && time != 0 {
            prop_assert_eq!(&wire[..], &built[..]);
        }
        let mut dec = FrameDecoder::new(Limits::DEFAULT);
        dec.push(wire);
        let frame = dec.next_frame().expect("valid").expect("one frame");
        prop_assert!(dec.next_frame().expect("nothing more").is_none());
        let env = frame.envelope();
        prop_assert_eq!(env.id(), id);
        let pong = env.body_as_control().and_then(|c| c.op_as_pong()).expect("a pong");
        prop_assert_eq!((pong.nonce(), pong.server_time_ms()), (nonce, time));
    }
}
