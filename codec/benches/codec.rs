//! Codec micro-benchmarks: encode, decode+verify and decode-only (no verifier) for a
//! chat message, a feed page of 20 posts, and `Hello`. Results: `bench/RESULTS.md`.
//!
//! Run: `cargo bench -p selfie-codec --bench codec`

#[path = "../tests/common/samples.rs"]
mod samples;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flatbuffers::WIPOffset;
use selfie_codec::{Builder, Encoder, Frame, FrameDecoder, Limits};
use selfie_protocol::Envelope;

type Sample = fn(&mut Builder, u64) -> WIPOffset<Envelope<'static>>;
type Reader = fn(&Envelope<'_>) -> usize;

const SAMPLES: [(&str, Sample, Reader); 3] = [
    ("chat_message", samples::chat_message, read_chat),
    ("feed_page_20", samples::feed_page, read_feed),
    ("hello", samples::hello, read_hello),
];

/// Reads what a receiver of the message uses, so "decode" includes field access.
fn read_chat(env: &Envelope<'_>) -> usize {
    let Some(ev) = env.body_as_chat().and_then(|c| c.op_as_chat_event()) else {
        return 0;
    };
    let m = ev.message().expect("sample has a message");
    m.text().map_or(0, str::len) + m.client_msg_id().map_or(0, str::len) + m.seq() as usize
}

fn read_feed(env: &Envelope<'_>) -> usize {
    let Some(page) = env.body_as_feed().and_then(|f| f.op_as_feed_page()) else {
        return 0;
    };
    let mut n = 0;
    for item in page.items().into_iter().flatten() {
        let Some(post) = item.post() else { continue };
        n += post.text().map_or(0, str::len);
        n += post.author().and_then(|a| a.username()).map_or(0, str::len);
        n += post.media().map_or(0, |m| m.len());
        n += post.counts().map_or(0, |c| c.reactions() as usize);
    }
    n
}

fn read_hello(env: &Envelope<'_>) -> usize {
    let Some(h) = env.body_as_control().and_then(|c| c.op_as_hello()) else {
        return 0;
    };
    h.access_token().map_or(0, str::len)
        + h.client().and_then(|c| c.app_version()).map_or(0, str::len)
        + h.version().map_or(0, |v| v.major() as usize)
}

fn codec(c: &mut Criterion) {
    for (name, sample, read) in SAMPLES {
        let mut enc = Encoder::new(Limits::DEFAULT);
        let wire = Bytes::copy_from_slice(enc.encode(|b| sample(b, 1)).expect("fits"));
        eprintln!("{name}: frame of {} bytes", wire.len());
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(wire.len() as u64));

        group.bench_function("encode", |b| {
            b.iter(|| {
                let out = enc.encode(|fbb| sample(fbb, black_box(1))).expect("fits");
                black_box(out.len());
            })
        });

        let mut dec = FrameDecoder::new(Limits::DEFAULT);
        group.bench_function("decode_verify", |b| {
            b.iter(|| {
                dec.push(black_box(wire.clone()));
                let frame = dec.next_frame().expect("valid").expect("whole");
                black_box(read(&frame.envelope()));
            })
        });

        let verified = Frame::verify(wire.clone(), &Limits::DEFAULT).expect("valid");
        assert!(read(&verified.envelope()) > 0);
        group.bench_function("decode_only", |b| {
            b.iter(|| {
                // What every layer after the edge pays: reading an already verified frame
                // in place, without the verifier.
                let env = black_box(&verified).envelope();
                black_box(read(&env));
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
