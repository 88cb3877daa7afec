//! `fanout` scenario: one publish to N connected subscribers, through the edge's delivery
//! plane, next to the same fan-out done by raw quinn in the same run.
//!
//! - **Edge** (`selfie serve` child process, embedded storage): N connections of one
//!   user subscribe to one post's live counters (`SubscriptionKind.Post`); each round,
//!   another user reacts to the post (or takes the reaction back), which publishes one
//!   `PostCountsEvent`; every subscriber must receive it before the next round.
//! - **Raw quinn** (`selfie-bench echo-server`): N connections each ask for a push stream
//!   (one server-initiated uni stream per connection, as the edge's); each round, one
//!   request makes the server write the same event bytes once on every push stream.
//!
//! Reported per round: time from the trigger (the request that causes the event) to the
//! first and to the last delivery, deliveries per second (N ÷ trigger-to-last), and every
//! delivery's latency as HdrHistogram percentiles; server CPU per delivery. The edge's
//! trigger includes its durable write of the reaction (group-committed fsync): the
//! first-to-last spread is the fan-out alone.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use selfie_client::{Client, ClientConfig, Subscription};
use selfie_protocol::auth::{AuthOpT, AuthT, RegisterRequestT};
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::posts::{
    CreatePostRequestT, PostsOpT, PostsT, ReactRequestT, UnreactRequestT,
};
use selfie_protocol::{BodyT, EnvelopeT, common};

use crate::edge::ServerProcess;
use crate::report::Latencies;

/// Arguments of the `fanout` scenario.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Subscribers (one connection each).
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Publishes measured.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Edge shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

/// The request prefixes the raw quinn baseline server understands: a push stream,
/// announced by one byte.
pub const SUBSCRIBE: &[u8] = b"SUBSCRIBE";
/// Followed by the event bytes to write on every push stream.
pub const PUBLISH: &[u8] = b"PUBLISH:";

/// One round's measurements.
struct Round {
    first: Duration,
    last: Duration,
}

/// A run's report.
struct Report {
    name: String,
    rounds: Vec<Round>,
    lat: Latencies,
    deliveries: u64,
    cpu: Duration,
}

impl Report {
    fn median(&self, f: impl Fn(&Round) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.rounds.iter().map(f).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    fn print(&self, n: usize) {
        let last = self.median(|r| r.last);
        println!(
            "{:<30} trigger->first {:>7} µs  trigger->last {:>8} µs  spread {:>8} µs  {:>9.0} deliveries/s  per delivery p50 {:>7} µs p99 {:>7} µs  server CPU {:.2} µs/delivery",
            self.name,
            self.median(|r| r.first).as_micros(),
            last.as_micros(),
            self.median(|r| r.last.saturating_sub(r.first)).as_micros(),
            n as f64 / last.as_secs_f64().max(1e-9),
            self.lat.p(0.5),
            self.lat.p(0.99),
            self.cpu.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64,
        );
    }
}

/// When each subscriber received the current round's event.
type Arrivals = Rc<RefCell<Vec<Instant>>>;

async fn wait_for(arrivals: &Arrivals, n: usize, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    while arrivals.borrow().len() < n {
        if Instant::now() > until {
            bail!("only {} of {n} deliveries arrived", arrivals.borrow().len());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

fn record(report: &mut Report, t0: Instant, arrivals: &Arrivals) {
    let mut a = arrivals.borrow_mut();
    a.sort();
    for t in a.iter() {
        report.lat.record(t.duration_since(t0));
    }
    report.deliveries += a.len() as u64;
    report.rounds.push(Round {
        first: a.first().map_or(Duration::ZERO, |t| t.duration_since(t0)),
        last: a.last().map_or(Duration::ZERO, |t| t.duration_since(t0)),
    });
    a.clear();
}

pub(crate) fn envelope(id: u64, body: BodyT) -> EnvelopeT {
    let mut e = EnvelopeT::default();
    e.id = id;
    e.body = body;
    e
}

pub(crate) fn posts(op: PostsOpT) -> BodyT {
    let mut t = PostsT::default();
    t.op = op;
    BodyT::Posts(Box::new(t))
}

pub(crate) async fn register(anon: &Client, name: &str) -> anyhow::Result<String> {
    let mut r = RegisterRequestT::default();
    r.username = Some(name.into());
    r.email = Some(format!("{name}@example.com"));
    r.password = Some("fanout bench password".into());
    let mut t = AuthT::default();
    t.op = AuthOpT::RegisterRequest(Box::new(r));
    let body = BodyT::Auth(Box::new(t));
    let f = anon
        .request(|b, id| envelope(id, body.clone()).pack(b))
        .await?;
    Ok(f.envelope()
        .body_as_auth()
        .and_then(|a| a.op_as_register_response())
        .and_then(|r| r.tokens())
        .and_then(|t| t.access_token())
        .context("access token")?
        .to_string())
}

async fn edge_run(server: &ServerProcess, args: &Args) -> anyhow::Result<Report> {
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")))
        .collect::<Result<_, _>>()?;
    let base = ClientConfig::new(server.addr, server.trust()?).prepared()?;
    let anon = Client::connect_on(&endpoints[0], base.clone()).await?;
    let signed_in = |token: String| {
        let mut c = base.clone();
        c.access_token = Some(token);
        c
    };
    let author =
        Client::connect_on(&endpoints[0], signed_in(register(&anon, "author").await?)).await?;
    let reactor =
        Client::connect_on(&endpoints[0], signed_in(register(&anon, "fan").await?)).await?;
    let reader = register(&anon, "reader").await?;
    let mut create = CreatePostRequestT::default();
    create.text = Some("fan-out".into());
    create.audience = common::Audience::Public;
    let body = posts(PostsOpT::CreatePostRequest(Box::new(create)));
    let post_id = author
        .request(|b, id| envelope(id, body.clone()).pack(b))
        .await?
        .envelope()
        .body_as_posts()
        .and_then(|p| p.op_as_post_response())
        .and_then(|r| r.post())
        .map(|p| p.post_id())
        .context("post")?;
    // N subscribers, each reading its push stream in its own task.
    let arrivals: Arrivals = Rc::default();
    let mut held = Vec::with_capacity(args.subscribers);
    let mut started = 0;
    while started < args.subscribers {
        let batch = (args.subscribers - started).min(64);
        let opened = futures::future::join_all((0..batch).map(|i| {
            let endpoint = endpoints[(started + i) % endpoints.len()].clone();
            let config = signed_in(reader.clone());
            async move {
                let c = Client::connect_on(&endpoint, config).await?;
                let mut s = c.subscribe(SubscriptionKind::Post, post_id, None).await?;
                s.next().await.context("snapshot")?;
                anyhow::Ok((c, s))
            }
        }))
        .await;
        for o in opened {
            let (c, s) = o?;
            held.push(c);
            tokio::task::spawn_local(read_pushes(s, arrivals.clone()));
        }
        started += batch;
    }
    let mut report = Report {
        name: format!(
            "edge ({} shard{})",
            args.shards,
            if args.shards == 1 { "" } else { "s" }
        ),
        rounds: Vec::new(),
        lat: Latencies::new(),
        deliveries: 0,
        cpu: Duration::ZERO,
    };
    let cpu0 = server.cpu();
    for round in 0..args.rounds + 1 {
        let body = if round % 2 == 0 {
            let mut r = ReactRequestT::default();
            r.target_kind = common::ObjectKind::Post;
            r.target_id = post_id;
            r.emoji = Some("🔥".into());
            posts(PostsOpT::ReactRequest(Box::new(r)))
        } else {
            let mut r = UnreactRequestT::default();
            r.target_kind = common::ObjectKind::Post;
            r.target_id = post_id;
            posts(PostsOpT::UnreactRequest(Box::new(r)))
        };
        let t0 = Instant::now();
        reactor
            .request(|b, id| envelope(id, body.clone()).pack(b))
            .await?;
        wait_for(&arrivals, args.subscribers, Duration::from_secs(60)).await?;
        if round == 0 {
            arrivals.borrow_mut().clear(); // warm-up
            continue;
        }
        record(&mut report, t0, &arrivals);
    }
    report.cpu = server.cpu().saturating_sub(cpu0);
    drop(held);
    Ok(report)
}

async fn read_pushes(mut s: Subscription, arrivals: Arrivals) {
    while s.next().await.is_some() {
        arrivals.borrow_mut().push(Instant::now());
    }
}

/// The event bytes the baseline pushes: a `PostCountsEvent` frame like the edge's.
fn event_bytes() -> Bytes {
    let mut ev = selfie_protocol::posts::PostCountsEventT::default();
    ev.post_id = 1;
    ev.reactions_delta = 1;
    let body = posts(PostsOpT::PostCountsEvent(Box::new(ev)));
    let mut enc = selfie_codec::Encoder::new(selfie_codec::Limits::DEFAULT);
    enc.encode_bytes(|b| envelope(1, body.clone()).pack(b))
        .unwrap_or_default()
}

async fn raw_run(server: &ServerProcess, args: &Args) -> anyhow::Result<Report> {
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")))
        .collect::<Result<_, _>>()?;
    let quic = selfie_client::quic_client_config(&server.trust()?)?;
    let arrivals: Arrivals = Rc::default();
    let event = event_bytes();
    let mut held = Vec::with_capacity(args.subscribers);
    let mut started = 0;
    while started < args.subscribers {
        let batch = (args.subscribers - started).min(64);
        let opened = futures::future::join_all((0..batch).map(|i| {
            let endpoint = endpoints[(started + i) % endpoints.len()].clone();
            let quic = quic.clone();
            async move {
                let c = endpoint
                    .connect_with(quic, server.addr, "localhost")?
                    .await?;
                let (mut send, mut recv) = c.open_bi().await?;
                send.write_all(SUBSCRIBE).await?;
                send.finish()?;
                let mut pushes = c.accept_uni().await?;
                let mut header = [0u8; 1];
                pushes.read_exact(&mut header).await?;
                recv.read_to_end(64).await?;
                anyhow::Ok((c, pushes))
            }
        }))
        .await;
        for o in opened {
            let (c, mut pushes) = o?;
            held.push(c);
            let (arrivals, len) = (arrivals.clone(), event.len());
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; len];
                while pushes.read_exact(&mut buf).await.is_ok() {
                    arrivals.borrow_mut().push(Instant::now());
                }
            });
        }
        started += batch;
    }
    let trigger = held.first().context("a connection")?.clone();
    let mut publish = PUBLISH.to_vec();
    publish.extend_from_slice(&event);
    let mut report = Report {
        name: "raw quinn (baseline)".into(),
        rounds: Vec::new(),
        lat: Latencies::new(),
        deliveries: 0,
        cpu: Duration::ZERO,
    };
    let cpu0 = server.cpu();
    for round in 0..args.rounds + 1 {
        let t0 = Instant::now();
        let (mut send, mut recv) = trigger.open_bi().await?;
        send.write_all(&publish).await?;
        send.finish()?;
        recv.read_to_end(64).await?;
        wait_for(&arrivals, args.subscribers, Duration::from_secs(60)).await?;
        if round == 0 {
            arrivals.borrow_mut().clear();
            continue;
        }
        record(&mut report, t0, &arrivals);
    }
    report.cpu = server.cpu().saturating_sub(cpu0);
    Ok(report)
}

/// Raw quinn writing one event to `subscribers` connections, `rounds` times: the median
/// trigger-to-last-delivery and the per-delivery p99 (µs), for other scenarios' baselines.
pub(crate) async fn raw_baseline(
    server: &ServerProcess,
    subscribers: usize,
    rounds: usize,
) -> anyhow::Result<(Duration, u64)> {
    let args = Args {
        subscribers,
        rounds,
        shards: 1,
    };
    let r = raw_run(server, &args).await?;
    Ok((r.median(|x| x.last), r.lat.p(0.99)))
}

/// Runs the scenario and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    println!(
        "fanout: one publish to {} subscribers, {} rounds, {} edge shard(s)",
        args.subscribers, args.rounds, args.shards
    );
    let echo = ServerProcess::echo()?;
    let base = local.block_on(&rt, raw_run(&echo, &args))?;
    drop(echo);
    let edge = ServerProcess::edge(args.shards)?;
    let ours = local.block_on(&rt, edge_run(&edge, &args))?;
    drop(edge);
    base.print(args.subscribers);
    ours.print(args.subscribers);
    let ratio = |f: &dyn Fn(&Report) -> f64| f(&ours) / f(&base).max(f64::EPSILON);
    println!(
        "ratios (edge ÷ raw quinn): trigger->last {:.2}x, spread {:.2}x, per-delivery p99 {:.2}x, server CPU per delivery {:.2}x",
        ratio(&|r| r.median(|x| x.last).as_secs_f64()),
        ratio(&|r| r.median(|x| x.last.saturating_sub(x.first)).as_secs_f64()),
        ratio(&|r| r.lat.p(0.99) as f64),
        ratio(&|r| r.cpu.as_secs_f64() / r.deliveries.max(1) as f64),
    );
    Ok(())
}
