//! Writes the fuzzers' seed corpus: valid frames for every operation of the schema (two
//! samples each, from the protocol's proptest strategies, with a fixed seed so the output
//! is reproducible) — `frame/` as sent, `stream/` behind the fragment-size byte the
//! stream targets read first — and valid datagrams (`datagram/`). `codec/fuzz/seeds/`
//! holds the committed output; `scripts/fuzz` starts every run from it.
//!
//! Usage: `cargo run -p selfie-codec --example fuzz_seeds -- codec/fuzz/seeds`

use std::path::PathBuf;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use selfie_codec::{Encoder, Limits};
use selfie_protocol::arbitrary;

const DEPTH: u32 = 5;
const SAMPLES: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    let streams = out.join("stream");
    let frames = out.join("frame");
    let datagrams = out.join("datagram");
    std::fs::create_dir_all(&streams)?;
    std::fs::create_dir_all(&frames)?;
    std::fs::create_dir_all(&datagrams)?;
    let seed = [7u8; 32];
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let mut enc = Encoder::new(Limits::DEFAULT);
    let mut written = 0;
    for (name, strategy) in arbitrary::every_operation(DEPTH) {
        for i in 0..SAMPLES {
            let env = strategy
                .new_tree(&mut runner)
                .map_err(|e| e.to_string())?
                .current();
            let Ok(wire) = enc.encode_object(&env) else {
                continue;
            };
            // The stream targets read a first byte choosing the fragment size: 255 hands
            // the frame over in large pieces, 7 in small ones.
            let step = if i == 0 { 255u8 } else { 7 };
            let mut bytes = vec![step];
            bytes.extend_from_slice(wire);
            let file = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            std::fs::write(streams.join(format!("{file}_{i}")), bytes)?;
            std::fs::write(frames.join(format!("{file}_{i}")), wire)?;
            written += 2;
        }
    }
    let strategy = arbitrary::selfie_datagram_datagram(DEPTH);
    for i in 0..16 {
        let d = strategy
            .new_tree(&mut runner)
            .map_err(|e| e.to_string())?
            .current();
        if let Ok(wire) = enc.encode_datagram_object(&d) {
            std::fs::write(datagrams.join(format!("datagram_{i}")), wire)?;
            written += 1;
        }
    }
    println!("{written} seeds in {}", out.display());
    Ok(())
}
