//! The request path's view of a verified frame: the service it names and how the edge
//! routes, prioritises and classifies it (`Service::of`, `priority_of`, `op_name`,
//! `is_idempotent`), then the object-API round trip: whatever verifies must unpack and
//! re-encode to a frame that verifies, and encoding that again gives the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use selfie_codec::{Encoder, Frame, Limits};
use selfie_protocol::{Service, is_idempotent, op_name, priority_of};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::verify(Bytes::copy_from_slice(data), &Limits::DEFAULT) else {
        return;
    };
    let env = frame.envelope();
    let body = env.body_type();
    let _ = Service::of(body).map(|s| s.name());
    let _ = priority_of(body).quic_priority();
    let _ = (op_name(&env), is_idempotent(&env));
    let object = env.unpack();
    let mut enc = Encoder::new(Limits::DEFAULT);
    // A re-encoding may exceed the frame limit by alignment padding: then there is
    // nothing to compare.
    // Compared as bytes (a float field may hold NaN, which equals nothing).
    let Ok(first) = enc.encode_object(&object).map(<[u8]>::to_vec) else {
        return;
    };
    let back = Frame::verify(Bytes::from(first.clone()), &Limits::DEFAULT)
        .expect("a re-encoded frame verifies");
    let again = enc
        .encode_object(&back.envelope().unpack())
        .expect("the same value encodes again");
    assert!(
        again == first.as_slice(),
        "the round trip changed the value"
    );
});
