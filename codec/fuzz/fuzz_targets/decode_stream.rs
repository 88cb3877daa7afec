//! Feeds arbitrary bytes, in arbitrary fragments, to the stream decoder and reads every
//! field of every frame that verifies. Any panic, overflow or out-of-bounds read is a bug.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use selfie_codec::{Frame, FrameDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the fragment size, so the fuzzer explores reassembly too.
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    for chunk in rest.chunks(step) {
        dec.push(Bytes::copy_from_slice(chunk));
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => touch(&frame),
                Ok(None) => break,
                Err(e) => {
                    let _ = e.code();
                    return;
                }
            }
        }
    }
    let _ = dec.finish();
    if let Ok(frame) = Frame::verify(Bytes::copy_from_slice(rest), &Limits::DEFAULT) {
        touch(&frame);
    }
});

fn touch(frame: &Frame) {
    let env = frame.envelope();
    let _ = env.unpack();
    let _ = selfie_protocol::op_name(&env);
    let _ = selfie_protocol::is_idempotent(&env);
}
