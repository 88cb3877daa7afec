//! Arbitrary bytes as a QUIC datagram: verify, then read every field if it verified.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use selfie_codec::{Limits, decode_datagram};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decode_datagram(Bytes::copy_from_slice(data), &Limits::DEFAULT) {
        let _ = d.datagram().unpack();
    }
});
