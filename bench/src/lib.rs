//! `selfie-bench`: scenarios that load an edge through the client SDK and report
//! HdrHistogram percentiles as ratios against a baseline run side by side (raw quinn
//! echo on the same machine).
//!
//! Status: the load generator is not built yet (issue 3). Codec micro-benchmarks live in
//! `codec/benches` and their results in `bench/RESULTS.md`.
