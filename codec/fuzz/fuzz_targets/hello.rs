//! The control stream's first frame, as the edge reads it before a session exists
//! (`edge/src/session.rs::on_hello` minus the token check): arbitrary bytes, in arbitrary
//! fragments, are reassembled, verified, and if they are a `Hello`, every field the edge
//! reads is read and the version negotiated. Any panic is a bug.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use selfie_codec::{FrameDecoder, Limits};
use selfie_protocol::{Version, negotiate};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let mut dec = FrameDecoder::new(Limits::DEFAULT);
    for chunk in rest.chunks(usize::from(step).max(1)) {
        dec.push(Bytes::copy_from_slice(chunk));
        let frame = match dec.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => continue,
            Err(e) => {
                let _ = (e.code(), e.code().closes_connection());
                return;
            }
        };
        let env = frame.envelope();
        let Some(hello) = env.body_as_control().and_then(|c| c.op_as_hello()) else {
            return;
        };
        if let Some(v) = hello.version().map(Version::from) {
            let _ = negotiate(v, hello.min_version().map(Version::from));
        }
        let _ = hello.access_token().map(str::len);
        let _ = hello.resume_token().map(|t| t.len());
        if let Some(features) = hello.features() {
            for f in features {
                let _ = f.len();
            }
        }
        return;
    }
});
