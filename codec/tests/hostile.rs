//! Hostile input: every malformed byte sequence gets a typed error, never a panic.

mod common;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use proptest::prelude::*;
use selfie_codec::{CodecError, Encoder, ErrorCode, Frame, FrameDecoder, Limits, decode_datagram};
use selfie_protocol::{
    Body, Envelope, EnvelopeArgs, EnvelopeT, chat, control, finish_size_prefixed_envelope_buffer,
    posts,
};

fn decode_one(wire: &[u8]) -> Result<Option<Frame>, CodecError> {
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    dec.push(Bytes::copy_from_slice(wire));
    dec.next_frame()
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(Limits::DEFAULT);
    vec![
        enc.encode(|b| common::samples::hello(b, 1))
            .expect("fits")
            .to_vec(),
        enc.encode(|b| common::samples::chat_message(b, 2))
            .expect("fits")
            .to_vec(),
        enc.encode(|b| common::samples::feed_page(b, 3))
            .expect("fits")
            .to_vec(),
    ]
}

/// Reads every field of a verified frame: a frame that verified must never make an
/// accessor panic.
fn touch(frame: &Frame) {
    let _ = frame.envelope().unpack();
    let _ = selfie_protocol::op_name(&frame.envelope());
    let _ = selfie_protocol::is_idempotent(&frame.envelope());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), split in any::<usize>()) {
        let mut dec = FrameDecoder::new(Limits::DEFAULT);
        let at = if data.is_empty() { 0 } else { split % data.len() };
        dec.push(Bytes::copy_from_slice(&data[..at]));
        dec.push(Bytes::copy_from_slice(&data[at..]));
        while let Ok(Some(f)) = dec.next_frame() {
            touch(&f);
        }
        let _ = Frame::verify(Bytes::copy_from_slice(&data), &Limits::DEFAULT).map(|f| touch(&f));
        if let Ok(d) = decode_datagram(Bytes::copy_from_slice(&data), &Limits::DEFAULT) {
            let _ = d.datagram().unpack();
        }
    }

    #[test]
    fn corrupted_valid_frames_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12),
    ) {
        let mut wire = valid_frames().swap_remove(which);
        for (pos, byte) in flips {
            // Keep the length prefix intact so the corruption reaches the verifier.
            let pos = 4 + pos % (wire.len() - 4);
            wire[pos] = byte;
        }
        match decode_one(&wire) {
            Ok(Some(f)) => touch(&f),
            Ok(None) => prop_assert!(false, "a whole frame must decode or fail"),
            Err(e) => prop_assert!(e.code() != ErrorCode::Unknown),
        }
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_reported(which in 0usize..3, cut in any::<usize>()) {
        let wire = valid_frames().swap_remove(which);
        let cut = 1 + cut % (wire.len() - 1);
        let mut dec = FrameDecoder::new(Limits::DEFAULT);
        dec.push(Bytes::copy_from_slice(&wire[..cut]));
        prop_assert!(dec.next_frame().expect("incomplete, not invalid").is_none());
        let err = dec.finish().expect_err("stream ended inside a frame");
        let truncated = matches!(err, CodecError::Truncated { .. });
        prop_assert!(truncated);
        prop_assert_eq!(err.code(), ErrorCode::TruncatedFrame);
        let err = Frame::verify(Bytes::copy_from_slice(&wire[..cut]), &Limits::DEFAULT).expect_err("truncated");
        prop_assert_eq!(err.code(), ErrorCode::TruncatedFrame);
    }
}

#[test]
fn a_four_gib_length_prefix_is_refused_at_once() {
    let mut wire = vec![0xFF, 0xFF, 0xFF, 0xFF];
    wire.extend_from_slice(&[0u8; 64]);
    let err = decode_one(&wire).expect_err("too large");
    assert_eq!(
        err,
        CodecError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: Limits::DEFAULT.max_frame_bytes
        }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    // Even with only the prefix received.
    let err = decode_one(&wire[..4]).expect_err("too large");
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn a_frame_one_byte_over_the_limit_is_refused_and_one_at_the_limit_is_not() {
    let limits = Limits {
        max_frame_bytes: 1024,
        ..Limits::DEFAULT
    };
    let mut enc = Encoder::new(Limits::DEFAULT);
    let wire = enc
        .encode(|b| common::samples::feed_page(b, 1))
        .expect("fits")
        .to_vec();
    let body_len = wire.len() - 4;
    let mut dec = FrameDecoder::new(Limits {
        max_frame_bytes: body_len - 1,
        ..limits
    });
    dec.push(Bytes::from(wire.clone()));
    assert!(matches!(
        dec.next_frame(),
        Err(CodecError::FrameTooLarge { .. })
    ));
    let mut dec = FrameDecoder::new(Limits {
        max_frame_bytes: body_len,
        ..limits
    });
    dec.push(Bytes::from(wire));
    assert!(dec.next_frame().expect("at the limit").is_some());
}

#[test]
fn the_encoder_refuses_to_produce_an_oversize_frame() {
    let mut enc = Encoder::new(Limits {
        max_frame_bytes: 512,
        ..Limits::DEFAULT
    });
    let err = enc
        .encode(|b| common::samples::feed_page(b, 1))
        .expect_err("too big");
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn deep_nesting_is_refused() {
    // A quote of a quote of a quote ... 100 levels deep.
    let mut post = posts::PostT::default();
    for i in 0..100 {
        let mut outer = posts::PostT::default();
        outer.post_id = i;
        outer.quoted = Some(Box::new(post));
        post = outer;
    }
    let mut response = posts::PostResponseT::default();
    response.post = Some(Box::new(post));
    let mut service = posts::PostsT::default();
    service.op = posts::PostsOpT::PostResponse(Box::new(response));
    let mut env = EnvelopeT::default();
    env.id = 1;
    env.body = selfie_protocol::BodyT::Posts(Box::new(service));
    let mut enc = Encoder::new(Limits::DEFAULT);
    let wire = enc.encode_object(&env).expect("small").to_vec();
    let err = decode_one(&wire).expect_err("too deep");
    assert_eq!(err, CodecError::NestingTooDeep);
    assert_eq!(err.code(), ErrorCode::NestingTooDeep);
}

#[test]
fn too_many_tables_are_refused() {
    let limits = Limits {
        max_tables: 50,
        ..Limits::DEFAULT
    };
    let mut enc = Encoder::new(Limits::DEFAULT);
    let wire = enc
        .encode(|b| common::samples::feed_page(b, 1))
        .expect("fits");
    let err = Frame::verify(Bytes::copy_from_slice(wire), &limits).expect_err("over the limit");
    assert_eq!(err, CodecError::TooManyTables);
}

fn raw_envelope(
    build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> EnvelopeArgs<'static>,
) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let args = build(&mut b);
    let env = Envelope::create(&mut b, &args);
    finish_size_prefixed_envelope_buffer(&mut b, env);
    b.finished_data().to_vec()
}

#[test]
fn an_unknown_service_tag_is_a_typed_error() {
    let wire = raw_envelope(|b| {
        let ack = control::Ack::create(b, &control::AckArgs {});
        EnvelopeArgs {
            id: 1,
            body_type: Body(200),
            body: Some(ack.as_union_value()),
            ..Default::default()
        }
    });
    let err = decode_one(&wire).expect_err("unknown service");
    assert_eq!(err, CodecError::UnknownMessage { body: 200, op: 0 });
    assert_eq!(err.code(), ErrorCode::UnknownMessage);
}

#[test]
fn an_unknown_operation_tag_is_a_typed_error() {
    let wire = raw_envelope(|b| {
        let ack = control::Ack::create(b, &control::AckArgs {});
        let chat = chat::Chat::create(
            b,
            &chat::ChatArgs {
                op_type: chat::ChatOp(250),
                op: Some(ack.as_union_value()),
            },
        );
        EnvelopeArgs {
            id: 1,
            body_type: Body::Chat,
            body: Some(chat.as_union_value()),
            ..Default::default()
        }
    });
    let err = decode_one(&wire).expect_err("unknown op");
    assert_eq!(
        err,
        CodecError::UnknownMessage {
            body: Body::Chat.0,
            op: 250
        }
    );
}

#[test]
fn a_union_tag_without_a_value_is_a_typed_error() {
    let wire = raw_envelope(|_| EnvelopeArgs {
        id: 1,
        body_type: Body::Chat,
        body: None,
        ..Default::default()
    });
    let err = decode_one(&wire).expect_err("inconsistent union");
    assert_eq!(err.code(), ErrorCode::InvalidUnion);
}

#[test]
fn an_envelope_without_a_body_or_operation_is_a_typed_error() {
    let wire = raw_envelope(|_| EnvelopeArgs {
        id: 1,
        ..Default::default()
    });
    assert_eq!(
        decode_one(&wire).expect_err("no body"),
        CodecError::MissingField { field: "body" }
    );
    let wire = raw_envelope(|b| {
        let chat = chat::Chat::create(b, &chat::ChatArgs::default());
        EnvelopeArgs {
            id: 1,
            body_type: Body::Chat,
            body: Some(chat.as_union_value()),
            ..Default::default()
        }
    });
    assert_eq!(
        decode_one(&wire).expect_err("no op"),
        CodecError::MissingField { field: "op" }
    );
}

#[test]
fn invalid_utf8_in_a_string_is_a_typed_error() {
    let mut enc = Encoder::new(Limits::DEFAULT);
    let mut wire = enc
        .encode(|b| common::samples::hello(b, 1))
        .expect("fits")
        .to_vec();
    let needle = b"selfie-ios";
    let at = wire
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("app name is in the frame");
    wire[at] = 0xFF;
    wire[at + 1] = 0xFE;
    let err = decode_one(&wire).expect_err("bad utf-8");
    assert_eq!(err, CodecError::InvalidUtf8);
    assert_eq!(err.code(), ErrorCode::InvalidUtf8);
}

#[test]
fn a_wrong_file_identifier_is_refused() {
    let mut wire = valid_frames().swap_remove(0);
    wire[8..12].copy_from_slice(b"NOPE");
    let err = decode_one(&wire).expect_err("not ours");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
}

#[test]
fn a_length_prefix_that_disagrees_with_the_frame_is_refused() {
    let mut wire = valid_frames().swap_remove(1);
    wire.push(0);
    let err = Frame::verify(Bytes::from(wire), &Limits::DEFAULT).expect_err("trailing byte");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
}

#[test]
fn a_tiny_frame_is_refused_without_reading_past_it() {
    for len in 0u32..8 {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&len.to_le_bytes());
        wire.extend_from_slice(&vec![0u8; len as usize]);
        let err = decode_one(&wire).expect_err("too small");
        assert_eq!(err.code(), ErrorCode::MalformedFrame, "len {len}");
    }
}

#[test]
fn the_decoder_stays_failed_after_an_error() {
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    dec.push(Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF]));
    assert!(dec.next_frame().is_err());
    let mut enc = Encoder::new(Limits::DEFAULT);
    dec.push(Bytes::copy_from_slice(
        enc.encode(|b| selfie_codec::build::ack(b, 1))
            .expect("fits"),
    ));
    assert!(dec.next_frame().is_err(), "framing is lost after an error");
}

#[test]
fn oversize_and_malformed_datagrams_are_typed_errors() {
    let big = Bytes::from(vec![0u8; Limits::DEFAULT.max_datagram_bytes + 1]);
    assert_eq!(
        decode_datagram(big, &Limits::DEFAULT)
            .expect_err("too big")
            .code(),
        ErrorCode::DatagramTooLarge
    );
    assert_eq!(
        decode_datagram(Bytes::from_static(&[1, 2, 3]), &Limits::DEFAULT)
            .expect_err("short")
            .code(),
        ErrorCode::TruncatedFrame
    );
    // A stream frame is not a datagram.
    let frame = Bytes::from(valid_frames().swap_remove(0));
    assert_eq!(
        decode_datagram(frame.slice(4..), &Limits::DEFAULT)
            .expect_err("wrong root")
            .code(),
        ErrorCode::MalformedFrame
    );
}

#[test]
fn error_frames_carry_their_code_and_message() {
    let mut enc = Encoder::new(Limits::DEFAULT);
    let wire = enc
        .encode_bytes(|b| {
            selfie_codec::build::error(b, 42, ErrorCode::RateLimited, "slow down", 250)
        })
        .expect("fits");
    let frame = Frame::verify(wire, &Limits::DEFAULT).expect("valid");
    let env = frame.envelope();
    assert_eq!(env.id(), 42);
    let err = env
        .body_as_control()
        .and_then(|c| c.op_as_error())
        .expect("an error frame");
    assert_eq!(err.code(), ErrorCode::RateLimited);
    assert_eq!(err.message(), Some("slow down"));
    assert_eq!(err.retry_after_ms(), 250);
}
