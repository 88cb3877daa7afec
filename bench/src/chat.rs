//! `chat` scenario: messages from sender to recipient through a real edge (`selfie
//! serve` child process, embedded storage: each message is stored durably, group
//! committed, before it is pushed), next to the raw quinn echo round trip in the same
//! run.
//!
//! - **Sustained 1:1** (`--pairs` conversations): each sender keeps `--window` sends in
//!   flight; a message's latency runs from the start of its send to its arrival on the
//!   recipient's `AllConversations` push stream (matched by transaction id). Reported:
//!   messages per second (all arrived ÷ elapsed) and latency percentiles.
//! - **Baseline**: the same number of connections and requests in flight against the raw
//!   quinn echo server, each request a message-sized frame; latency is the round trip.
//! - **Group** (`--group` members, each on its own connection and subscribed): one
//!   message per round; time from the send to the first and to the last member's push.
//!
//! Server CPU per message is the child process's CPU time over the sustained phase.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use selfie_client::chat::push_event;
use selfie_client::{Client, ClientConfig, Subscription};
use selfie_protocol::auth::{AuthOpT, AuthT, RegisterRequestT};
use selfie_protocol::chat::ChatEventKind;
use selfie_protocol::{BodyT, EnvelopeT};

use crate::edge::ServerProcess;
use crate::report::{Latencies, Line};

/// Arguments of the `chat` scenario.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Conversations (a sender and a recipient connection each).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 400)]
    messages: usize,
    /// Sends each sender keeps in flight (closed loop, when `--rate` is 0).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Messages per second offered by all senders together, each sender on its own
    /// schedule whatever the answers (open loop: the latency at that load, not at
    /// saturation); 0 for the closed loop of `--window`. The baseline is paced the same.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Members of the group (0: skip the group phase).
    #[arg(long, default_value_t = 100)]
    group: usize,
    /// Messages sent to the group.
    #[arg(long, default_value_t = 20)]
    group_rounds: usize,
    /// Edge shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

/// When each transaction id was sent, and when it arrived.
#[derive(Default)]
struct Clock {
    sent: HashMap<String, Instant>,
    lat: Option<Latencies>,
    arrived: usize,
    last: Option<Instant>,
}

type Shared = Rc<RefCell<Clock>>;

/// Open-loop sends one sender keeps in flight at most.
const MAX_IN_FLIGHT: usize = 100;

/// Makes sender `p`'s `args.messages` calls of `one(i)`: `args.window` in flight (closed
/// loop), or, with `args.rate`, each when its turn comes on a fixed schedule from
/// `start` (open loop; senders staggered across one interval), however many are then in
/// flight.
async fn drive<F, Fut>(args: &Args, p: usize, start: Instant, one: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use futures::StreamExt;
    if args.rate == 0 {
        let next = std::cell::Cell::new(0usize);
        let lanes = (0..args.window).map(|_| async {
            loop {
                let i = next.get();
                if i >= args.messages {
                    return anyhow::Ok(());
                }
                next.set(i + 1);
                one(i).await?;
            }
        });
        for r in futures::future::join_all(lanes).await {
            r?;
        }
        return Ok(());
    }
    let interval = Duration::from_secs_f64(args.pairs as f64 / args.rate as f64);
    let offset = interval.mul_f64(p as f64 / args.pairs as f64);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for i in 0..args.messages {
        let due = start + offset + interval.mul_f64(i as f64);
        let sleep = tokio::time::sleep_until(due.into());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                Some(r) = in_flight.next(), if !in_flight.is_empty() => r?,
            }
        }
        // The edge allows 128 requests in flight per connection: past this the load is
        // more than it serves, and the achieved rate falls below the offered one.
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(r) = in_flight.next().await {
                r?;
            }
        }
        in_flight.push(one(i));
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    Ok(())
}

fn envelope(id: u64, body: BodyT) -> EnvelopeT {
    let mut e = EnvelopeT::default();
    e.id = id;
    e.body = body;
    e
}

async fn register(anon: &Client, name: &str) -> anyhow::Result<(u64, String)> {
    let mut r = RegisterRequestT::default();
    r.username = Some(name.into());
    r.email = Some(format!("{name}@example.com"));
    r.password = Some("chat bench password".into());
    let mut t = AuthT::default();
    t.op = AuthOpT::RegisterRequest(Box::new(r));
    let body = BodyT::Auth(Box::new(t));
    let f = anon
        .request(|b, id| envelope(id, body.clone()).pack(b))
        .await?;
    let env = f.envelope();
    let tokens = env
        .body_as_auth()
        .and_then(|a| a.op_as_register_response())
        .and_then(|r| r.tokens())
        .context("tokens")?;
    Ok((
        tokens.user_id(),
        tokens.access_token().context("access token")?.to_string(),
    ))
}

/// Reads a recipient's pushes, timing each message by its transaction id.
async fn read_messages(mut s: Subscription, clock: Shared) {
    while let Some(frame) = s.next().await {
        let Some(e) = push_event(&frame) else {
            continue;
        };
        if e.kind != ChatEventKind::MessageCreated {
            continue;
        }
        let Some(txn) = e.message.and_then(|m| m.client_msg_id) else {
            continue;
        };
        let now = Instant::now();
        let mut c = clock.borrow_mut();
        if let Some(t0) = c.sent.remove(&txn) {
            c.arrived += 1;
            c.last = Some(now);
            if let Some(lat) = c.lat.as_mut() {
                lat.record(now.duration_since(t0));
            }
        }
    }
}

async fn wait_arrived(clock: &Shared, n: usize, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    while clock.borrow().arrived < n {
        if Instant::now() > until {
            bail!("only {} of {n} messages arrived", clock.borrow().arrived);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

struct Sustained {
    line: Line,
    cpu: Duration,
}

struct Group {
    first: Latencies,
    last: Latencies,
}

async fn connect_many(
    endpoints: &[quinn::Endpoint],
    base: &ClientConfig,
    tokens: &[String],
) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::with_capacity(tokens.len());
    for (chunk_no, chunk) in tokens.chunks(64).enumerate() {
        let opened = futures::future::join_all(chunk.iter().enumerate().map(|(i, t)| {
            let mut c = base.clone();
            c.access_token = Some(t.clone());
            let endpoint = endpoints[(chunk_no * 64 + i) % endpoints.len()].clone();
            async move { Client::connect_on(&endpoint, c).await }
        }))
        .await;
        for c in opened {
            out.push(c?);
        }
    }
    Ok(out)
}

async fn edge_run(
    server: &ServerProcess,
    args: &Args,
) -> anyhow::Result<(Sustained, Option<Group>)> {
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")))
        .collect::<Result<_, _>>()?;
    let base = ClientConfig::new(server.addr, server.trust()?).prepared()?;
    let anon = Client::connect_on(&endpoints[0], base.clone()).await?;
    let users = 2 * args.pairs + if args.group > 0 { args.group + 1 } else { 0 };
    let mut accounts = Vec::with_capacity(users);
    for i in 0..users {
        accounts.push(register(&anon, &format!("chat{i}")).await?);
    }
    let tokens: Vec<String> = accounts.iter().map(|(_, t)| t.clone()).collect();
    let clients = connect_many(&endpoints, &base, &tokens).await?;
    // Sustained 1:1: recipients subscribe, senders open the conversations.
    let clock: Shared = Rc::default();
    let mut conversations = Vec::with_capacity(args.pairs);
    for p in 0..args.pairs {
        let (sender, recipient) = (&clients[2 * p], &clients[2 * p + 1]);
        let sub = recipient.chat().subscribe().await?;
        tokio::task::spawn_local(read_messages(sub, clock.clone()));
        let c = sender.chat().direct(accounts[2 * p + 1].0).await?;
        conversations.push(c.conversation_id);
    }
    // Warm-up: one message per conversation.
    for (p, id) in conversations.iter().enumerate() {
        let txn = format!("warm-{p}");
        clock.borrow_mut().sent.insert(txn.clone(), Instant::now());
        clients[2 * p].chat().send(*id, &txn, "warm-up").await?;
    }
    wait_arrived(&clock, args.pairs, Duration::from_secs(60)).await?;
    {
        let mut c = clock.borrow_mut();
        c.arrived = 0;
        c.lat = Some(Latencies::new());
    }
    let cpu0 = server.cpu();
    let start = Instant::now();
    let senders = conversations.iter().enumerate().map(|(p, id)| {
        let (client, clock, id) = (&clients[2 * p], clock.clone(), *id);
        drive(args, p, start, move |i| {
            let clock = clock.clone();
            async move {
                let txn = format!("{p}-{i}");
                clock.borrow_mut().sent.insert(txn.clone(), Instant::now());
                client
                    .chat()
                    .send(id, &txn, "a chat message of ordinary length")
                    .await?;
                anyhow::Ok(())
            }
        })
    });
    for r in futures::future::join_all(senders).await {
        r?;
    }
    let total = args.pairs * args.messages;
    wait_arrived(&clock, total, Duration::from_secs(120)).await?;
    let cpu = server.cpu().saturating_sub(cpu0);
    let elapsed = clock
        .borrow()
        .last
        .map_or(Duration::ZERO, |l| l.duration_since(start));
    let lat = clock.borrow_mut().lat.take().unwrap_or_else(Latencies::new);
    let sustained = Sustained {
        line: Line {
            name: format!(
                "edge chat send→push ({} shard{})",
                args.shards,
                if args.shards == 1 { "" } else { "s" }
            ),
            ops: total as u64,
            elapsed,
            lat,
        },
        cpu,
    };
    // The group: one sender, `group` members subscribed on their own connections.
    let group = if args.group > 0 {
        let members = &clients[2 * args.pairs..];
        let member_ids: Vec<u64> = accounts[2 * args.pairs + 1..].iter().map(|a| a.0).collect();
        let arrivals: Rc<RefCell<Vec<Instant>>> = Rc::default();
        for m in &members[1..] {
            let mut sub = m.chat().subscribe().await?;
            let arrivals = arrivals.clone();
            tokio::task::spawn_local(async move {
                while let Some(frame) = sub.next().await {
                    if push_event(&frame).is_some_and(|e| e.kind == ChatEventKind::MessageCreated) {
                        arrivals.borrow_mut().push(Instant::now());
                    }
                }
            });
        }
        let g = members[0]
            .chat()
            .group(&member_ids, "bench group", "bench-group")
            .await?;
        let mut first = Latencies::new();
        let mut last = Latencies::new();
        for round in 0..args.group_rounds + 1 {
            arrivals.borrow_mut().clear();
            let t0 = Instant::now();
            members[0]
                .chat()
                .send(g.conversation_id, &format!("g-{round}"), "to everyone")
                .await?;
            let until = Instant::now() + Duration::from_secs(60);
            while arrivals.borrow().len() < member_ids.len() {
                if Instant::now() > until {
                    bail!(
                        "group message reached {} of {}",
                        arrivals.borrow().len(),
                        member_ids.len()
                    );
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            if round == 0 {
                continue; // warm-up
            }
            let a = arrivals.borrow();
            if let (Some(f), Some(l)) = (a.iter().min(), a.iter().max()) {
                first.record(f.duration_since(t0));
                last.record(l.duration_since(t0));
            }
        }
        Some(Group { first, last })
    } else {
        None
    };
    drop(clients);
    Ok((sustained, group))
}

/// A message-sized request frame for the baseline.
fn message_frame() -> Vec<u8> {
    let r = selfie_client::chat::text_message(1, "0-0", "a chat message of ordinary length");
    let mut chat = selfie_protocol::chat::ChatT::default();
    chat.op = selfie_protocol::chat::ChatOpT::SendMessageRequest(Box::new(r));
    let mut enc = selfie_codec::Encoder::new(selfie_codec::Limits::DEFAULT);
    enc.encode_bytes(|b| envelope(1, BodyT::Chat(Box::new(chat.clone()))).pack(b))
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

async fn raw_run(server: &ServerProcess, args: &Args) -> anyhow::Result<Sustained> {
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")))
        .collect::<Result<_, _>>()?;
    let quic = selfie_client::quic_client_config(&server.trust()?)?;
    let mut conns = Vec::with_capacity(args.pairs);
    for p in 0..args.pairs {
        let c = endpoints[p % endpoints.len()]
            .connect_with(quic.clone(), server.addr, "localhost")?
            .await?;
        conns.push(c);
    }
    let frame = message_frame();
    let lat = Rc::new(RefCell::new(Latencies::new()));
    let cpu0 = server.cpu();
    let start = Instant::now();
    let senders = conns.iter().enumerate().map(|(p, c)| {
        let (frame, lat) = (&frame, lat.clone());
        drive(args, p, start, move |_| {
            let lat = lat.clone();
            async move {
                let t0 = Instant::now();
                let (mut send, mut recv) = c.open_bi().await?;
                send.write_all(frame).await?;
                send.finish()?;
                recv.read_to_end(64 * 1024).await?;
                lat.borrow_mut().record(t0.elapsed());
                anyhow::Ok(())
            }
        })
    });
    for r in futures::future::join_all(senders).await {
        r?;
    }
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu0);
    let lat = Rc::try_unwrap(lat)
        .map(RefCell::into_inner)
        .unwrap_or_else(|_| Latencies::new());
    Ok(Sustained {
        line: Line {
            name: "raw quinn echo round trip".into(),
            ops: (args.pairs * args.messages) as u64,
            elapsed,
            lat,
        },
        cpu,
    })
}

/// The disk's own floor for a durable message: a record-sized append and `fsync` of a
/// file in the same file system as the edge's data, one at a time, at the scenario's
/// rate (or 1,000/s in the closed loop), `samples` of them.
fn fsync_run(args: &Args, samples: usize) -> anyhow::Result<Line> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("journal"))?;
    let rate = if args.rate == 0 { 1000 } else { args.rate };
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let record = [7u8; 300];
    let mut lat = Latencies::new();
    let start = Instant::now();
    for i in 0..samples {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t0 = Instant::now();
        file.write_all(&record)?;
        file.sync_all()?;
        lat.record(t0.elapsed());
    }
    Ok(Line {
        name: "disk append + fsync (floor)".into(),
        ops: samples as u64,
        elapsed: start.elapsed(),
        lat,
    })
}

/// Runs the scenario and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let load = if args.rate == 0 {
        format!("{} in flight per sender", args.window)
    } else {
        format!("{} messages/s offered (open loop)", args.rate)
    };
    println!(
        "chat: {} conversations × {} messages, {load}; group of {} × {} messages; {} edge shard(s)",
        args.pairs, args.messages, args.group, args.group_rounds, args.shards
    );
    let disk = fsync_run(&args, (args.pairs * args.messages).min(5000))?;
    let echo = ServerProcess::echo()?;
    let base = local.block_on(&rt, raw_run(&echo, &args))?;
    drop(echo);
    let edge = ServerProcess::edge(args.shards)?;
    let (ours, group) = local.block_on(&rt, edge_run(&edge, &args))?;
    drop(edge);
    let per = |s: &Sustained| s.cpu.as_secs_f64() * 1e6 / s.line.ops.max(1) as f64;
    println!("{}", disk.text());
    println!("{}  server CPU {:.1} µs/msg", base.line.text(), per(&base));
    println!("{}  server CPU {:.1} µs/msg", ours.line.text(), per(&ours));
    println!(
        "ratios (edge chat ÷ raw echo): throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x, server CPU per message {:.2}x",
        ours.line.rate() / base.line.rate().max(f64::EPSILON),
        ours.line.lat.p(0.5) as f64 / base.line.lat.p(0.5).max(1) as f64,
        ours.line.lat.p(0.99) as f64 / base.line.lat.p(0.99).max(1) as f64,
        ours.line.lat.p(0.999) as f64 / base.line.lat.p(0.999).max(1) as f64,
        per(&ours) / per(&base).max(f64::EPSILON),
    );
    if let Some(g) = group {
        println!(
            "group of {}: send→first member p50 {} µs p99 {} µs; send→last member p50 {} µs p99 {} µs",
            args.group,
            g.first.p(0.5),
            g.first.p(0.99),
            g.last.p(0.5),
            g.last.p(0.99)
        );
    }
    Ok(())
}
