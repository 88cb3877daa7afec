//! `selfie-bench`: load generator with scenarios, HdrHistogram percentiles, and
//! baselines run side by side in the same invocation, reported as ratios.
//!
//! Scenarios:
//! - `storage`: timeline appends and 20-row page reads through `selfie-storage`
//!   (embedded or CQL) and, for the embedded backend, the same operations on raw fjall;
//! - `rpc`, `connect`, `idle`: the edge (a `selfie serve` child process) against a raw
//!   quinn echo server with the same TLS and transport settings;
//! - `fanout`: one publish to N subscribers through the delivery plane vs the same
//!   fan-out written by raw quinn;
//! - `chat`: messages sender → edge → durable store → recipient push, sustained and to a
//!   group, next to the raw quinn echo round trip;
//! - `post-fanout`: a post to N connected followers (timeline writes and live pushes)
//!   next to raw quinn writing one event to N connections; `feed-read`: home-feed pages
//!   over a seeded store next to the raw reads a page needs; `stories-tray`: tray reads
//!   likewise;
//! - `media`: chunked uploads (SHA-256 checked, fsynced) and downloads through the edge
//!   next to raw quinn bulk streams to memory and to a file with fsync;
//! - `blobs`: the embedded blob store's file I/O (staged chunk writes with fdatasync,
//!   durable blob puts, ranged reads), io_uring next to `std::fs`.
//!
//! Results and command lines are recorded in `bench/RESULTS.md`.

mod blobs;
mod browser;
mod chat;
mod edge;
mod fanout;
mod feed;
mod media;
mod publish;
mod report;
mod sdk;
mod social;
mod storage;

/// The same allocator as the `selfie` binary (mimalloc), so that the raw quinn
/// baseline (the `echo-server` subcommand) is measured with it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "selfie-bench", version, about = "Selfie load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// CPUs the servers run on (e.g. `0-7` or `0,2,4`), so that the load generator does
    /// not share them; both the edge and the raw quinn baseline get the same set.
    #[arg(long, global = true)]
    server_cpus: Option<String>,
    /// CPUs this load generator runs on.
    #[arg(long, global = true)]
    client_cpus: Option<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Timeline append and page-read through the storage layer vs raw fjall.
    Storage(storage::Args),
    /// Request/response through the edge vs a raw quinn echo server.
    Rpc(edge::RpcArgs),
    /// New connections per second, edge vs raw quinn.
    Connect(edge::ConnectArgs),
    /// Server memory per idle connection, edge vs raw quinn.
    Idle(edge::IdleArgs),
    /// Resumable TLS sessions, full: rustls's memory cache vs the edge's session cache.
    TlsSessions(edge::SessionArgs),
    /// Accounts, follow graph, posts and reads through a real edge.
    Social(social::Args),
    /// Edge vs baseline over several runs, written as JSON and SVG plots.
    Report(publish::Args),
    /// The client SDK's overhead per request: raw frames vs typed SDK vs mobile SDK.
    Sdk(sdk::Args),
    /// One publish to N subscribers, edge delivery plane vs raw quinn.
    Fanout(fanout::Args),
    /// Chat messages through the edge vs the raw quinn echo round trip.
    Chat(chat::Args),
    /// A post to N connected followers: fan-out to timelines and live pushes.
    PostFanout(feed::FanoutArgs),
    /// Home-feed page reads over a seeded store, vs the raw reads a page needs.
    FeedRead(feed::ReadArgs),
    /// Story tray reads over a seeded store, vs the raw reads a tray needs.
    StoriesTray(feed::TrayArgs),
    /// Chunked uploads and downloads through the edge vs raw quinn bulk streams.
    Media(media::Args),
    /// The embedded blob store's file I/O: io_uring vs std::fs.
    Blobs(blobs::Args),
    /// The raw quinn echo baseline server (started by the other scenarios).
    #[command(hide = true)]
    EchoServer(edge::EchoArgs),
}

fn main() -> anyhow::Result<()> {
    // As the `selfie` binary: the in-process nodes' S3 clients take the process default.
    let _ = selfie_edge::tls::crypto_provider()
        .as_ref()
        .clone()
        .install_default();
    let cli = Cli::parse();
    if let Some(cpus) = &cli.server_cpus {
        edge::set_server_cpus(edge::parse_cpus(cpus)?);
    }
    if let Some(cpus) = &cli.client_cpus {
        edge::pin_this_process(&edge::parse_cpus(cpus)?)?;
    }
    match cli.scenario {
        Scenario::Storage(args) => storage::run(args),
        Scenario::Rpc(args) => edge::rpc(args),
        Scenario::Connect(args) => edge::connect(args),
        Scenario::Idle(args) => edge::idle(args),
        Scenario::TlsSessions(args) => edge::tls_sessions(args),
        Scenario::Social(args) => social::run(args),
        Scenario::Sdk(args) => sdk::run(args),
        Scenario::Report(args) => publish::run(args),
        Scenario::Fanout(args) => fanout::run(args),
        Scenario::Chat(args) => chat::run(args),
        Scenario::PostFanout(args) => feed::post_fanout(args),
        Scenario::FeedRead(args) => feed::feed_read(args),
        Scenario::StoriesTray(args) => feed::stories_tray(args),
        Scenario::Media(args) => media::run(args),
        Scenario::Blobs(args) => blobs::run(args),
        Scenario::EchoServer(args) => edge::echo_server(args),
    }
}
