//! `selfie-bench`: load generator with scenarios, HdrHistogram percentiles, and
//! baselines run side by side in the same invocation, reported as ratios.
//!
//! Scenarios so far:
//! - `storage`: timeline appends and 20-row page reads through `selfie-storage`
//!   (embedded or CQL) and, for the embedded backend, the same operations on raw fjall.
//!
//! The edge scenarios (`rpc`, `connect`, `idle`) arrive with the edge (issue 3).
//! Results and command lines are recorded in `bench/RESULTS.md`.

mod report;
mod storage;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "selfie-bench", version, about = "Selfie load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Timeline append and page-read through the storage layer vs raw fjall.
    Storage(storage::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Storage(args) => storage::run(args),
    }
}
