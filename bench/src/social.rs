//! `social` scenario: through a real edge (`selfie serve` child process, embedded storage)
//! with the real SDK — register N users, build a follow graph, post, then read profiles
//! and posts. Reports throughput and latency percentiles per operation.

use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use selfie_client::{Client, ClientConfig};
use selfie_codec::Frame;
use selfie_protocol::{
    Body, Envelope, EnvelopeArgs, auth as pa, common, graph as pg, posts as pp, users as pu,
};

use crate::edge::ServerProcess;
use crate::report::{Latencies, Line};

/// Arguments of the `social` scenario.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Users to register.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Accounts each user follows.
    #[arg(long, default_value_t = 10)]
    follows: usize,
    /// Posts per user.
    #[arg(long, default_value_t = 2)]
    posts: usize,
    /// Profile and post reads per user.
    #[arg(long, default_value_t = 10)]
    reads: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Edge shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

fn env(
    b: &mut selfie_codec::Builder,
    id: u64,
    body_type: Body,
    body: flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>,
) -> flatbuffers::WIPOffset<Envelope<'static>> {
    Envelope::create(
        b,
        &EnvelopeArgs {
            id,
            body_type,
            body: Some(body),
            ..Default::default()
        },
    )
}

async fn timed<F: std::future::Future<Output = Result<Frame, selfie_client::ClientError>>>(
    lat: &std::cell::RefCell<Latencies>,
    f: F,
) -> anyhow::Result<Frame> {
    let t = Instant::now();
    let r = f.await?;
    lat.borrow_mut().record(t.elapsed());
    Ok(r)
}

async fn phase<T, Fut>(
    name: &str,
    items: Vec<T>,
    concurrency: usize,
    f: impl Fn(T, Rc<std::cell::RefCell<Latencies>>) -> Fut,
) -> anyhow::Result<Line>
where
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let lat = Rc::new(std::cell::RefCell::new(Latencies::new()));
    let n = items.len() as u64;
    let start = Instant::now();
    {
        let mut results = futures::stream::iter(items.into_iter().map(|i| f(i, lat.clone())))
            .buffer_unordered(concurrency);
        while let Some(r) = results.next().await {
            r?;
        }
    }
    let elapsed = start.elapsed();
    let lat = Rc::try_unwrap(lat)
        .map_err(|_| anyhow::anyhow!("latencies still shared"))?
        .into_inner();
    Ok(Line {
        name: name.into(),
        ops: n,
        elapsed,
        lat,
    })
}

/// Runs the scenario and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = ServerProcess::edge(args.shards)?;
    println!(
        "social: {} users, {} follows and {} posts each, {} reads each, {} in flight, {} shard(s)",
        args.users, args.follows, args.posts, args.reads, args.concurrency, args.shards
    );
    let lines = rt.block_on(async {
        let endpoint = selfie_client::endpoint("127.0.0.1:0".parse()?)?;
        let base = ClientConfig::new(server.addr, server.trust()?).prepared()?;
        let anon = Rc::new(Client::connect_on(&endpoint, base.clone()).await?);
        let mut lines = Vec::new();
        // Register.
        let tokens = Rc::new(std::cell::RefCell::new(Vec::new()));
        let t2 = tokens.clone();
        lines.push(
            phase(
                "register (Argon2id, OWASP)",
                (0..args.users).collect(),
                args.concurrency.min(8),
                |i, lat| {
                    let (anon, tokens) = (anon.clone(), t2.clone());
                    async move {
                        let name = format!("bench{i}");
                        let f = timed(
                            &lat,
                            anon.request(|b, id| {
                                let (u, e, p) = (
                                    b.create_string(&name),
                                    b.create_string(&format!("{name}@example.com")),
                                    b.create_string("bench password 1"),
                                );
                                let r = pa::RegisterRequest::create(
                                    b,
                                    &pa::RegisterRequestArgs {
                                        username: Some(u),
                                        email: Some(e),
                                        password: Some(p),
                                        ..Default::default()
                                    },
                                );
                                let body = pa::Auth::create(
                                    b,
                                    &pa::AuthArgs {
                                        op_type: pa::AuthOp::RegisterRequest,
                                        op: Some(r.as_union_value()),
                                    },
                                );
                                env(b, id, Body::Auth, body.as_union_value())
                            }),
                        )
                        .await?;
                        let t = f
                            .envelope()
                            .body_as_auth()
                            .and_then(|a| a.op_as_register_response())
                            .and_then(|r| r.tokens())
                            .context("tokens")?;
                        tokens
                            .borrow_mut()
                            .push((t.user_id(), t.access_token().context("access")?.to_string()));
                        Ok(())
                    }
                },
            )
            .await?,
        );
        let tokens = tokens.borrow().clone();
        // One session per user.
        let mut clients = Vec::new();
        for (user_id, token) in &tokens {
            let mut c = base.clone();
            c.access_token = Some(token.clone());
            clients.push((*user_id, Rc::new(Client::connect_on(&endpoint, c).await?)));
        }
        let ids: Vec<u64> = clients.iter().map(|(id, _)| *id).collect();
        let pick = |i: usize, j: usize| ids[(i * 7919 + j * 104_729 + 1) % ids.len()];
        // Follow graph.
        let work: Vec<(usize, usize)> = (0..clients.len())
            .flat_map(|i| (0..args.follows).map(move |j| (i, j)))
            .collect();
        lines.push(
            phase("follow", work, args.concurrency, |(i, j), lat| {
                let (client, target, me) = (clients[i].1.clone(), pick(i, j), clients[i].0);
                async move {
                    if target == me {
                        return Ok(());
                    }
                    timed(
                        &lat,
                        client.request(|b, id| {
                            let r = pg::FollowRequest::create(
                                b,
                                &pg::FollowRequestArgs { target_id: target },
                            );
                            let body = pg::Graph::create(
                                b,
                                &pg::GraphArgs {
                                    op_type: pg::GraphOp::FollowRequest,
                                    op: Some(r.as_union_value()),
                                },
                            );
                            env(b, id, Body::Graph, body.as_union_value())
                        }),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await?,
        );
        // Posts.
        let post_ids = Rc::new(std::cell::RefCell::new(Vec::new()));
        let p2 = post_ids.clone();
        let work: Vec<(usize, usize)> = (0..clients.len())
            .flat_map(|i| (0..args.posts).map(move |j| (i, j)))
            .collect();
        lines.push(
            phase("create post", work, args.concurrency, |(i, j), lat| {
                let (client, posts) = (clients[i].1.clone(), p2.clone());
                async move {
                    let f = timed(
                        &lat,
                        client.request(|b, id| {
                            let t = b.create_string(&format!("post {j} from user {i} #bench"));
                            let r = pp::CreatePostRequest::create(
                                b,
                                &pp::CreatePostRequestArgs {
                                    text: Some(t),
                                    audience: common::Audience::Public,
                                    ..Default::default()
                                },
                            );
                            let body = pp::Posts::create(
                                b,
                                &pp::PostsArgs {
                                    op_type: pp::PostsOp::CreatePostRequest,
                                    op: Some(r.as_union_value()),
                                },
                            );
                            env(b, id, Body::Posts, body.as_union_value())
                        }),
                    )
                    .await?;
                    let id = f
                        .envelope()
                        .body_as_posts()
                        .and_then(|p| p.op_as_post_response())
                        .and_then(|r| r.post())
                        .map(|p| p.post_id())
                        .context("post")?;
                    posts.borrow_mut().push(id);
                    Ok(())
                }
            })
            .await?,
        );
        let post_ids = post_ids.borrow().clone();
        // Reads.
        let work: Vec<(usize, usize)> = (0..clients.len())
            .flat_map(|i| (0..args.reads).map(move |j| (i, j)))
            .collect();
        lines.push(
            phase(
                "read profile",
                work.clone(),
                args.concurrency,
                |(i, j), lat| {
                    let (client, target) = (clients[i].1.clone(), pick(i, j + 1000));
                    async move {
                        timed(
                            &lat,
                            client.request(|b, id| {
                                let r = pu::GetProfileRequest::create(
                                    b,
                                    &pu::GetProfileRequestArgs {
                                        user_id: target,
                                        username: None,
                                    },
                                );
                                let body = pu::Users::create(
                                    b,
                                    &pu::UsersArgs {
                                        op_type: pu::UsersOp::GetProfileRequest,
                                        op: Some(r.as_union_value()),
                                    },
                                );
                                env(b, id, Body::Users, body.as_union_value())
                            }),
                        )
                        .await
                        .map(|_| ())
                    }
                },
            )
            .await?,
        );
        lines.push(
            phase("read post", work, args.concurrency, |(i, j), lat| {
                let (client, post) = (
                    clients[i].1.clone(),
                    post_ids[(i * 31 + j * 17) % post_ids.len()],
                );
                async move {
                    timed(
                        &lat,
                        client.request(|b, id| {
                            let r = pp::GetPostRequest::create(
                                b,
                                &pp::GetPostRequestArgs { post_id: post },
                            );
                            let body = pp::Posts::create(
                                b,
                                &pp::PostsArgs {
                                    op_type: pp::PostsOp::GetPostRequest,
                                    op: Some(r.as_union_value()),
                                },
                            );
                            env(b, id, Body::Posts, body.as_union_value())
                        }),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await?,
        );
        anyhow::Ok(lines)
    })?;
    for l in &lines {
        println!("{}", l.text());
    }
    Ok(())
}
