//! Feed scenarios.
//!
//! - `post-fanout` (through a real edge, `selfie serve` child process, embedded
//!   storage): N followers of one author, each on its own connection with its home feed
//!   subscribed (`SubscriptionKind.HomeFeed`); each round the author posts, and the
//!   round ends when every follower got its "new posts" push. Reported: the time from the
//!   post's request to the first and the last follower's push (the last one bounds the
//!   fan-out: a follower is pushed after its timeline row is durable), timeline writes
//!   per second (N ÷ trigger-to-last), per-follower latency percentiles and server CPU
//!   per follower. Side by side in the same run: raw quinn writing one event to N
//!   connections (`fanout`'s baseline), the network's own floor. With `--large` the
//!   author is above the fan-out threshold: nothing is written per follower, and the
//!   pushes go through the watches of the followers' owner shards.
//! - `feed-read` (in process, embedded store): U users following F accounts each, P
//!   posts fanned out to their followers' timelines with the feed's own `deliver`; then
//!   home-page reads of random readers (first page, then the next page from its cursor),
//!   with and without what the wire adds (counts and the reader's own reaction and
//!   repost). Side by side: the least a page needs, done raw on the same store (a
//!   20-row reverse scan of the timeline and the 20 posts read by id).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use rand::Rng;
use selfie_client::{Client, ClientConfig, Subscription};
use selfie_protocol::graph::{FollowRequestT, GraphOpT, GraphT};
use selfie_protocol::posts::{CreatePostRequestT, PostsOpT};
use selfie_protocol::{BodyT, common};
use selfie_services::feed::{Feed, FeedConfig, fanout_queue};
use selfie_services::graph::Graph;
use selfie_services::posts::{Audience, Posts};
use selfie_services::users::Users;
use selfie_storage::embedded::EmbeddedStore;
use selfie_storage::{Scan, Store, SystemClock};

use crate::edge::ServerProcess;
use crate::fanout::{envelope, posts, register};
use crate::report::{Latencies, Line};

/// Arguments of the `post-fanout` scenario.
#[derive(clap::Args, Clone)]
pub struct FanoutArgs {
    /// Followers of the author (one connection each, home feed subscribed).
    #[arg(long, default_value_t = 10_000)]
    followers: usize,
    /// Posts measured.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Edge shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Registrations in flight while setting up.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Make the author a large account (`feed.fanout_threshold` = 10): its posts are not
    /// fanned out, and connected followers are pushed through their owner shards'
    /// watches (one activity event per watching shard, each reader re-checked).
    #[arg(long)]
    large: bool,
}

/// The fan-out threshold of `post-fanout --large`.
const LARGE_THRESHOLD: usize = 10;

type Arrivals = Rc<RefCell<Vec<Instant>>>;

async fn read_pushes(mut s: Subscription, arrivals: Arrivals) {
    while s.next().await.is_some() {
        arrivals.borrow_mut().push(Instant::now());
    }
}

async fn wait_for(arrivals: &Arrivals, n: usize, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    while arrivals.borrow().len() < n {
        anyhow::ensure!(
            Instant::now() < until,
            "only {} of {n} pushes arrived",
            arrivals.borrow().len()
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(())
}

/// The medians of a run's rounds and its per-follower latencies.
struct FanoutReport {
    first: Vec<Duration>,
    last: Vec<Duration>,
    lat: Latencies,
    pushes: u64,
    cpu: Duration,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn post_fanout_edge(
    server: &ServerProcess,
    args: &FanoutArgs,
) -> anyhow::Result<FanoutReport> {
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")))
        .collect::<Result<_, _>>()?;
    let base = ClientConfig::new(server.addr, server.trust()?).prepared()?;
    let anon = Rc::new(Client::connect_on(&endpoints[0], base.clone()).await?);
    let signed_in = |token: String| {
        let mut c = base.clone();
        c.access_token = Some(token);
        c
    };
    let author_token = register(&anon, "author").await?;
    let author = Client::connect_on(&endpoints[0], signed_in(author_token.clone())).await?;
    let author_id = {
        // The author's id, from a first post's author field.
        let mut create = CreatePostRequestT::default();
        create.text = Some("hello".into());
        create.audience = common::Audience::Public;
        let body = posts(PostsOpT::CreatePostRequest(Box::new(create)));
        author
            .request(|b, id| envelope(id, body.clone()).pack(b))
            .await?
            .envelope()
            .body_as_posts()
            .and_then(|p| p.op_as_post_response())
            .and_then(|r| r.post())
            .and_then(|p| p.author())
            .map(|a| a.user_id())
            .context("author")?
    };
    let t = Instant::now();
    let tokens: Vec<String> = futures::stream::iter((0..args.followers).map(|i| {
        let anon = anon.clone();
        async move { register(&anon, &format!("follower{i}")).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "registered {} followers in {:.1} s",
        args.followers,
        t.elapsed().as_secs_f64()
    );
    let arrivals: Arrivals = Rc::default();
    let mut held = Vec::with_capacity(args.followers);
    let opened = futures::stream::iter(tokens.into_iter().enumerate().map(|(i, token)| {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let config = signed_in(token);
        async move {
            let c = Client::connect_on(&endpoint, config).await?;
            let mut f = FollowRequestT::default();
            f.target_id = author_id;
            let mut g = GraphT::default();
            g.op = GraphOpT::FollowRequest(Box::new(f));
            let body = BodyT::Graph(Box::new(g));
            c.request(|b, id| envelope(id, body.clone()).pack(b))
                .await?;
            let s = c.feed().subscribe(None).await?;
            anyhow::Ok((c, s))
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    for o in opened {
        let (c, s) = o?;
        held.push(c);
        tokio::task::spawn_local(read_pushes(s, arrivals.clone()));
    }
    eprintln!("{} followers connected and subscribed", held.len());
    if args.large {
        // The author's next post puts it on the large-authors list (not fanned out past
        // twice the threshold); once the shards' copies of the list are stale, each
        // follower reads a page, as an app does, which starts watching the author.
        let mut create = CreatePostRequestT::default();
        create.text = Some("now large".into());
        create.audience = common::Audience::Public;
        let body = posts(PostsOpT::CreatePostRequest(Box::new(create)));
        author
            .request(|b, id| envelope(id, body.clone()).pack(b))
            .await?;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let t = Instant::now();
        let pages = futures::stream::iter(
            held.iter()
                .map(|c| async move { c.feed().home(20, None).await }),
        )
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
        for p in pages {
            p?;
        }
        eprintln!(
            "{} followers read a page (watching the author) in {:.1} s",
            held.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let mut report = FanoutReport {
        first: Vec::new(),
        last: Vec::new(),
        lat: Latencies::new(),
        pushes: 0,
        cpu: Duration::ZERO,
    };
    let cpu0 = server.cpu();
    for round in 0..args.rounds + 1 {
        // Past the push interval: each round's push goes out at once.
        tokio::time::sleep(Duration::from_millis(200)).await;
        arrivals.borrow_mut().clear();
        let mut create = CreatePostRequestT::default();
        create.text = Some(format!("round {round}"));
        create.audience = common::Audience::Public;
        let body = posts(PostsOpT::CreatePostRequest(Box::new(create)));
        let t0 = Instant::now();
        author
            .request(|b, id| envelope(id, body.clone()).pack(b))
            .await?;
        wait_for(&arrivals, args.followers, Duration::from_secs(120)).await?;
        if round == 0 {
            continue; // warm-up
        }
        let mut a = arrivals.borrow_mut();
        a.sort();
        for t in a.iter() {
            report.lat.record(t.duration_since(t0));
        }
        report.pushes += a.len() as u64;
        report
            .first
            .push(a.first().map_or(Duration::ZERO, |t| t.duration_since(t0)));
        report
            .last
            .push(a.last().map_or(Duration::ZERO, |t| t.duration_since(t0)));
    }
    report.cpu = server.cpu().saturating_sub(cpu0);
    drop(held);
    Ok(report)
}

/// Runs `post-fanout` and prints the report.
pub fn post_fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    println!(
        "post-fanout: one author, {} connected followers, {} posts, {} edge shard(s)",
        args.followers, args.rounds, args.shards
    );
    let echo = ServerProcess::echo()?;
    let base = local.block_on(
        &rt,
        crate::fanout::raw_baseline(&echo, args.followers, args.rounds),
    )?;
    drop(echo);
    let threshold = if args.large {
        LARGE_THRESHOLD.to_string()
    } else {
        // Above the followers: every post is fanned out.
        (args.followers + 1).max(50_000).to_string()
    };
    let edge = ServerProcess::edge_with(
        args.shards,
        &[
            ("SELFIE_FEED_PUSH_INTERVAL_MS", "50"),
            ("SELFIE_FEED_FANOUT_THRESHOLD", &threshold),
        ],
    )?;
    let ours = local.block_on(&rt, post_fanout_edge(&edge, &args))?;
    drop(edge);
    let n = args.followers as f64;
    let last = median(&ours.last);
    println!(
        "{:<34} trigger->first {:>8} µs  trigger->last {:>9} µs  {:>9.0} {}/s  per follower p50 {:>8} µs p99 {:>8} µs  server CPU {:.2} µs/follower",
        format!(
            "edge {} ({} shards)",
            if args.large {
                "large-author push"
            } else {
                "post fan-out"
            },
            args.shards
        ),
        median(&ours.first).as_micros(),
        last.as_micros(),
        n / last.as_secs_f64().max(1e-9),
        if args.large {
            "pushes"
        } else {
            "timeline writes+pushes"
        },
        ours.lat.p(0.5),
        ours.lat.p(0.99),
        ours.cpu.as_secs_f64() * 1e6 / ours.pushes.max(1) as f64,
    );
    let (base_last, base_p99) = base;
    println!(
        "{:<34} trigger->last {:>9} µs  per delivery p99 {:>8} µs",
        "raw quinn: one event to N",
        base_last.as_micros(),
        base_p99
    );
    println!(
        "ratio (edge ÷ raw quinn): trigger->last {:.1}x",
        last.as_secs_f64() / base_last.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Arguments of the `feed-read` scenario.
#[derive(clap::Args, Clone)]
pub struct ReadArgs {
    /// Users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Accounts each user follows (random).
    #[arg(long, default_value_t = 10)]
    follows: usize,
    /// Posts stored (by random authors), each fanned out to its author's followers.
    #[arg(long, default_value_t = 1_000_000)]
    posts: u64,
    /// Page reads measured (random readers).
    #[arg(long, default_value_t = 20_000)]
    reads: u64,
    /// Writes in flight while seeding.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Directory for the data (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

async fn feed_read_run(args: &ReadArgs, dir: &std::path::Path) -> anyhow::Result<Vec<Line>> {
    let store = EmbeddedStore::open(
        dir,
        &selfie_services::schema::tables(),
        Arc::new(SystemClock),
    )?;
    let users = Users::new(store.clone());
    let graph = Graph::new(store.clone());
    let posts = Rc::new(Posts::new(store.clone(), Arc::new(SystemClock), 1, 0)?);
    let (_hook, jobs) = fanout_queue(1, 0);
    let feed = Feed::new(
        store.clone(),
        posts.clone(),
        Arc::new(SystemClock),
        jobs,
        FeedConfig::default(),
    );
    let t = Instant::now();
    futures::stream::iter((1..=args.users).map(|u| {
        let users = &users;
        async move { users.create(u, &format!("user{u}")).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut rng = rand::rng();
    let mut followers: Vec<Vec<u64>> = vec![Vec::new(); args.users as usize + 1];
    let mut edges = Vec::new();
    for u in 1..=args.users {
        let mut chosen = Vec::new();
        while chosen.len() < args.follows.min(args.users as usize - 1) {
            let a = rng.random_range(1..=args.users);
            if a != u && !chosen.contains(&a) {
                chosen.push(a);
                followers[a as usize].push(u);
                edges.push((u, a));
            }
        }
    }
    futures::stream::iter(edges.into_iter().map(|(u, a)| {
        let graph = &graph;
        async move { graph.follow(u, a).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "{} users, {} follows each, in {:.1} s",
        args.users,
        args.follows,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let authors: Vec<u64> = (0..args.posts)
        .map(|_| rng.random_range(1..=args.users))
        .collect();
    let followers = Rc::new(followers);
    let mut done = 0u64;
    let mut stream = futures::stream::iter(authors.into_iter().enumerate().map(|(i, author)| {
        let (posts, feed, followers) = (posts.clone(), &feed, followers.clone());
        async move {
            let p = posts
                .create(author, &format!("post {i} #bench"), Audience::Public, None)
                .await?;
            let mut readers = followers[author as usize].clone();
            readers.push(author);
            feed.deliver(&readers, p.post_id, author).await
        }
    }))
    .buffer_unordered(args.concurrency);
    while let Some(r) = stream.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(100_000) {
            eprintln!(
                "{done} posts fanned out ({:.0}/s)",
                done as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
    drop(stream);
    eprintln!(
        "{} posts stored and fanned out in {:.1} s",
        args.posts,
        t.elapsed().as_secs_f64()
    );
    let readers: Vec<u64> = (0..args.reads)
        .map(|_| rng.random_range(1..=args.users))
        .collect();
    let mut lines = Vec::new();
    // Raw floor: the timeline's newest 20 rows and the 20 posts they name.
    let mut lat = Latencies::new();
    let t = Instant::now();
    for &r in &readers {
        let t0 = Instant::now();
        let page = store
            .scan(
                &selfie_services::tables::feed::HOME,
                &selfie_services::tables::key(r),
                &Scan::all(20).reversed(),
            )
            .await?;
        for row in &page.rows {
            store
                .get(&selfie_services::tables::posts::POSTS, &row.clustering, &[])
                .await?;
        }
        lat.record(t0.elapsed());
    }
    lines.push(Line {
        name: "raw: 20-row scan + 20 post gets".into(),
        ops: args.reads,
        elapsed: t.elapsed(),
        lat,
    });
    for (name, with_wire, second) in [
        ("home page 1 (items)", false, false),
        ("home page 1 (+ counts, viewer)", true, false),
        ("home page 2 (items, from cursor)", false, true),
    ] {
        let mut lat = Latencies::new();
        let t = Instant::now();
        for &r in &readers {
            let at = if second {
                feed.home(r, None, 20).await?.next
            } else {
                None
            };
            let t0 = Instant::now();
            let page = feed.home(r, at, 20).await?;
            if with_wire {
                for item in &page.items {
                    let id = item.post.post_id;
                    posts.counts(id).await?;
                    posts.viewer_reaction(r, id).await?;
                    posts.viewer_reposted(r, id).await?;
                }
            }
            lat.record(t0.elapsed());
        }
        lines.push(Line {
            name: name.into(),
            ops: args.reads,
            elapsed: t.elapsed(),
            lat,
        });
    }
    // The write path alone: one post fanned out to every user's timeline by the feed's
    // worker (paged reads of the followers, batched durable timeline writes), no pushes.
    let star = args.users + 1;
    users.create(star, "star").await?;
    futures::stream::iter((1..=args.users).map(|u| {
        let graph = &graph;
        async move { graph.follow(u, star).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let (hook, jobs) = fanout_queue(2, 0);
    let star_posts =
        Rc::new(Posts::new(store.clone(), Arc::new(SystemClock), 2, 0)?.with_fanout(hook));
    let worker = Feed::new(
        store.clone(),
        star_posts.clone(),
        Arc::new(SystemClock),
        jobs,
        FeedConfig::default(),
    );
    let mut lat = Latencies::new();
    let t = Instant::now();
    let rounds = 5;
    for i in 0..rounds {
        star_posts
            .create(star, &format!("to everyone {i}"), Audience::Public, None)
            .await?;
        let t0 = Instant::now();
        worker.fan_out_pending().await?;
        lat.record(t0.elapsed());
    }
    lines.push(Line {
        name: format!("fan-out of a post to {} timelines", args.users),
        ops: rounds,
        elapsed: t.elapsed(),
        lat,
    });
    Ok(lines)
}

/// Runs `feed-read` and prints the report.
pub fn feed_read(args: ReadArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    println!(
        "feed-read: {} users following {} each, {} posts fanned out, {} page reads of 20",
        args.users, args.follows, args.posts, args.reads
    );
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let lines = local.block_on(&rt, feed_read_run(&args, &dir))?;
    for l in &lines {
        println!("{}", l.text());
    }
    if let [raw, first, ..] = lines.as_slice() {
        println!(
            "ratio (home page 1 ÷ raw floor): p50 {:.2}x, p99 {:.2}x",
            first.lat.p(0.5) as f64 / raw.lat.p(0.5).max(1) as f64,
            first.lat.p(0.99) as f64 / raw.lat.p(0.99).max(1) as f64,
        );
    }
    if let Some(fan) = lines.last() {
        println!(
            "fan-out write rate: {:.0} timeline writes/s (median of {} posts to {} followers)",
            args.users as f64 / (fan.lat.p(0.5) as f64 / 1e6).max(1e-9),
            fan.ops,
            args.users
        );
    }
    Ok(())
}

/// Arguments of the `stories-tray` scenario.
#[derive(clap::Args, Clone)]
pub struct TrayArgs {
    /// Users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Accounts each user follows (random).
    #[arg(long, default_value_t = 50)]
    follows: usize,
    /// Users with live stories.
    #[arg(long, default_value_t = 2_000)]
    storytellers: u64,
    /// Stories each of them posts.
    #[arg(long, default_value_t = 2)]
    stories_each: usize,
    /// Tray reads measured (random readers).
    #[arg(long, default_value_t = 20_000)]
    reads: u64,
    /// Writes in flight while seeding.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

async fn stories_tray_run(args: &TrayArgs, dir: &std::path::Path) -> anyhow::Result<Vec<Line>> {
    use selfie_services::stories::{NewStory, Stories};
    let store = EmbeddedStore::open(
        dir,
        &selfie_services::schema::tables(),
        Arc::new(SystemClock),
    )?;
    let users = Users::new(store.clone());
    let graph = Graph::new(store.clone());
    let (hook, jobs) = fanout_queue(1, 0);
    let posts =
        Rc::new(Posts::new(store.clone(), Arc::new(SystemClock), 1, 0)?.with_fanout(hook.clone()));
    let feed = Rc::new(Feed::new(
        store.clone(),
        posts.clone(),
        Arc::new(SystemClock),
        jobs,
        FeedConfig::default(),
    ));
    let stories = Stories::new(
        store.clone(),
        Arc::new(SystemClock),
        1,
        0,
        posts,
        feed.clone(),
    )?
    .with_fanout(hook);
    let t = Instant::now();
    futures::stream::iter((1..=args.users).map(|u| {
        let users = &users;
        async move { users.create(u, &format!("user{u}")).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let mut rng = rand::rng();
    let mut edges = Vec::new();
    for u in 1..=args.users {
        let mut chosen: Vec<u64> = Vec::new();
        while chosen.len() < args.follows.min(args.users as usize - 1) {
            let a = rng.random_range(1..=args.users);
            if a != u && !chosen.contains(&a) {
                chosen.push(a);
                edges.push((u, a));
            }
        }
    }
    futures::stream::iter(edges.into_iter().map(|(u, a)| {
        let graph = &graph;
        async move { graph.follow(u, a).await }
    }))
    .buffer_unordered(args.concurrency)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    // Each storyteller's photo (a placeholder record: this measures trays, not media).
    for u in 1..=args.storytellers.min(args.users) {
        selfie_services::tables::media::seed(&store, u, u).await?;
    }
    let creates = (1..=args.storytellers.min(args.users))
        .flat_map(|u| (0..args.stories_each).map(move |_| u))
        .map(|u| {
            let stories = &stories;
            async move {
                stories
                    .create(
                        u,
                        NewStory {
                            media_id: u,
                            caption: "bench".into(),
                            link_url: String::new(),
                            audience: Audience::Followers,
                            duration: None,
                            mentions: Vec::new(),
                            idempotency_key: None,
                        },
                    )
                    .await
            }
        });
    futures::stream::iter(creates)
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let fanned = feed.fan_out_pending().await?;
    eprintln!(
        "{} users following {} each, {} stories fanned out to trays in {:.1} s",
        args.users,
        args.follows,
        fanned,
        t.elapsed().as_secs_f64()
    );
    let readers: Vec<u64> = (0..args.reads)
        .map(|_| rng.random_range(1..=args.users))
        .collect();
    let mut lines = Vec::new();
    // Raw floor: the tray partition, each author's live stories, each story read.
    let mut lat = Latencies::new();
    let t = Instant::now();
    for &r in &readers {
        let t0 = Instant::now();
        let tray = store
            .scan(
                &selfie_services::tables::stories::TRAY,
                &selfie_services::tables::key(r),
                &Scan::all(1000),
            )
            .await?;
        for row in &tray.rows {
            let live = store
                .scan(
                    &selfie_services::tables::stories::BY_AUTHOR,
                    &row.clustering,
                    &Scan::all(100),
                )
                .await?;
            for s in &live.rows {
                store
                    .get(
                        &selfie_services::tables::stories::STORIES,
                        &s.clustering,
                        &[],
                    )
                    .await?;
            }
        }
        lat.record(t0.elapsed());
    }
    lines.push(Line {
        name: "raw: tray scan + stories reads".into(),
        ops: args.reads,
        elapsed: t.elapsed(),
        lat,
    });
    let mut lat = Latencies::new();
    let t = Instant::now();
    let mut entries = 0usize;
    for &r in &readers {
        let t0 = Instant::now();
        let (page, _) = stories.tray(r, 0, 20).await?;
        entries += page.len();
        lat.record(t0.elapsed());
    }
    lines.push(Line {
        name: "stories tray (first 20 authors)".into(),
        ops: args.reads,
        elapsed: t.elapsed(),
        lat,
    });
    eprintln!(
        "{:.1} authors per tray on average",
        entries as f64 / args.reads.max(1) as f64
    );
    Ok(lines)
}

/// Runs `stories-tray` and prints the report.
pub fn stories_tray(args: TrayArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    println!(
        "stories-tray: {} users following {} each, {} × {} stories, {} tray reads",
        args.users, args.follows, args.storytellers, args.stories_each, args.reads
    );
    let tmp = tempfile::tempdir()?;
    let lines = local.block_on(&rt, stories_tray_run(&args, tmp.path()))?;
    for l in &lines {
        println!("{}", l.text());
    }
    if let [raw, tray] = lines.as_slice() {
        println!(
            "ratio (tray ÷ raw floor): p50 {:.2}x, p99 {:.2}x",
            tray.lat.p(0.5) as f64 / raw.lat.p(0.5).max(1) as f64,
            tray.lat.p(0.99) as f64 / raw.lat.p(0.99).max(1) as f64,
        );
    }
    Ok(())
}
