//! `sdk` scenario: the client SDK's own overhead per request. One edge (`selfie serve`
//! child process), one signed-in account, the same profile read sent three ways over
//! one connection each, in interleaved rounds:
//!
//! - raw frames: the request built with the FlatBuffers builder, the answer read in
//!   place (what the bench harness and the edge tests do);
//! - typed SDK: `client.users().profile(id)` (the object API packed and unpacked);
//! - mobile SDK: `SelfieClient::profile` of `selfie-ffi` called from Rust (the
//!   reconnecting client, token refresh check, and the conversion to the UniFFI records
//!   the Kotlin and Swift bindings receive; the JNA / Swift crossing is not included).
//!
//! The server does the same work in each; the client process's CPU per request is what
//! the SDK adds.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use selfie_client::{Client, ClientConfig};
use selfie_ffi::{AuthTokens, SelfieClient, SelfieConfig, TokenStore};
use selfie_protocol::{Body, Envelope, EnvelopeArgs, users as pu};

use crate::edge::{ServerProcess, cpu_per_op, current_thread, proc_cpu};
use crate::report::{Latencies, Line};

/// Arguments of the `sdk` scenario.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Seconds per run.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds (each runs every mode once, interleaved).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Print the lines as JSON too.
    #[arg(long)]
    json: bool,
}

struct Tokens(Mutex<Option<AuthTokens>>);

impl TokenStore for Tokens {
    fn load(&self) -> Option<AuthTokens> {
        self.0.lock().ok()?.clone()
    }
    fn save(&self, tokens: AuthTokens) {
        if let Ok(mut t) = self.0.lock() {
            *t = Some(tokens);
        }
    }
    fn clear(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = None;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Typed,
    Mobile,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "profile read, raw frames",
            Mode::Typed => "profile read, typed SDK",
            Mode::Mobile => "profile read, mobile SDK (ffi)",
        }
    }
}

async fn raw(client: &Client, user: u64) -> anyhow::Result<()> {
    let frame = client
        .request(|b, id| {
            let r = pu::GetProfileRequest::create(
                b,
                &pu::GetProfileRequestArgs {
                    user_id: user,
                    ..Default::default()
                },
            );
            let op = pu::Users::create(
                b,
                &pu::UsersArgs {
                    op_type: pu::UsersOp::GetProfileRequest,
                    op: Some(r.as_union_value()),
                },
            );
            Envelope::create(
                b,
                &EnvelopeArgs {
                    id,
                    body_type: Body::Users,
                    body: Some(op.as_union_value()),
                    ..Default::default()
                },
            )
        })
        .await?;
    let got = frame
        .envelope()
        .body_as_users()
        .and_then(|u| u.op_as_get_profile_response())
        .and_then(|r| r.profile())
        .and_then(|p| p.user())
        .map(|u| u.user_id());
    anyhow::ensure!(got == Some(user), "wrong profile");
    Ok(())
}

async fn one(mode: Mode, c: &Clients, user: u64) -> anyhow::Result<()> {
    match mode {
        Mode::Raw => raw(&c.raw, user).await,
        Mode::Typed => {
            let p = c.typed.users().profile(user).await?;
            anyhow::ensure!(p.user.map(|u| u.user_id) == Some(user), "wrong profile");
            Ok(())
        }
        Mode::Mobile => {
            let p = c.mobile.profile(user).await?;
            anyhow::ensure!(p.user.map(|u| u.user_id) == Some(user), "wrong profile");
            Ok(())
        }
    }
}

struct Clients {
    raw: Client,
    typed: Client,
    mobile: Arc<SelfieClient>,
}

async fn run_mode(
    mode: Mode,
    c: &Clients,
    user: u64,
    args: &Args,
) -> anyhow::Result<(Line, Duration)> {
    let lat = Rc::new(RefCell::new(Latencies::new()));
    let ops = Rc::new(RefCell::new(0u64));
    let cpu0 = proc_cpu(std::process::id()).unwrap_or_default();
    let start = Instant::now();
    let until = start + Duration::from_secs(args.seconds);
    let workers = (0..args.in_flight).map(|_| {
        let (lat, ops) = (lat.clone(), ops.clone());
        async move {
            while Instant::now() < until {
                let t = Instant::now();
                one(mode, c, user).await?;
                lat.borrow_mut().record(t.elapsed());
                *ops.borrow_mut() += 1;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(workers).await?;
    let elapsed = start.elapsed();
    let cpu = proc_cpu(std::process::id())
        .unwrap_or_default()
        .saturating_sub(cpu0);
    let lat = Rc::try_unwrap(lat)
        .map_err(|_| anyhow::anyhow!("latencies still shared"))?
        .into_inner();
    let ops = *ops.borrow();
    Ok((
        Line {
            name: mode.name().into(),
            ops,
            elapsed,
            lat,
        },
        cpu,
    ))
}

/// Runs the scenario and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = current_thread()?;
    let server = ServerProcess::edge(1)?;
    println!(
        "sdk: one profile read, {} in flight, {} s per run, {} rounds (raw, typed, mobile interleaved)",
        args.in_flight, args.seconds, args.rounds
    );
    rt.block_on(async {
        let base = ClientConfig::new(server.addr, server.trust()?).prepared()?;
        let anon = Client::connect(base.clone()).await?;
        let signed = anon
            .accounts()
            .register("bench", "bench@example.com", "bench correct horse battery")
            .await
            .context("register")?;
        let user = signed.user.user_id;
        let mut config = base.clone();
        config.access_token = signed.tokens.access_token.clone();
        let clients = Clients {
            raw: Client::connect(config.clone()).await?,
            typed: Client::connect(config).await?,
            mobile: SelfieClient::connect(
                SelfieConfig {
                    servers: vec![server.addr.to_string()],
                    server_name: None,
                    certificate_sha256: Some(server.fingerprint.clone()),
                    ca_certificates_pem: None,
                    device_id: "bench".into(),
                    app_name: "selfie-bench".into(),
                    app_version: env!("CARGO_PKG_VERSION").into(),
                    data_dir: None,
                    keep_connected_in_background: false,
                    connect_timeout_ms: 10_000,
                },
                Arc::new(Tokens(Mutex::new(Some(signed.tokens.clone().into())))),
            )
            .await?,
        };
        let modes = [Mode::Raw, Mode::Typed, Mode::Mobile];
        // Warm up every path once.
        for m in modes {
            one(m, &clients, user).await?;
        }
        let mut totals: Vec<(Line, Duration)> = Vec::new();
        for round in 0..args.rounds {
            let mut this_round = Vec::new();
            for m in modes {
                let (line, cpu) = run_mode(m, &clients, user, &args).await?;
                this_round.push((line, cpu));
            }
            let raw = &this_round[0];
            for (l, cpu) in &this_round {
                println!(
                    "round {}: {}  client CPU {:.2} µs/req",
                    round + 1,
                    l.text(),
                    cpu_per_op(*cpu, l.ops)
                );
            }
            for (l, cpu) in &this_round[1..] {
                println!(
                    "round {}: ratios ({} ÷ raw frames): throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, client CPU per request {:.2}x",
                    round + 1,
                    l.name,
                    l.rate() / raw.0.rate(),
                    l.lat.p(0.5) as f64 / raw.0.lat.p(0.5).max(1) as f64,
                    l.lat.p(0.99) as f64 / raw.0.lat.p(0.99).max(1) as f64,
                    cpu_per_op(*cpu, l.ops) / cpu_per_op(raw.1, raw.0.ops).max(f64::EPSILON),
                );
            }
            if totals.is_empty() {
                totals = this_round;
            } else {
                for (t, (l, cpu)) in totals.iter_mut().zip(this_round) {
                    t.0.ops += l.ops;
                    t.0.elapsed += l.elapsed;
                    t.0.lat.merge(&l.lat);
                    t.1 += cpu;
                }
            }
        }
        println!("all rounds:");
        for (l, cpu) in &totals {
            println!("{}  client CPU {:.2} µs/req", l.text(), cpu_per_op(*cpu, l.ops));
        }
        if args.json {
            let v: Vec<_> = totals.iter().map(|(l, _)| l.json()).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        anyhow::Ok(())
    })
}
