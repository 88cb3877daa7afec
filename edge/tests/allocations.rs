//! Allocations on the request path, counted with a counting global allocator (this test
//! binary only), never timed: the edge answers requests in steady state with no more
//! allocations per request than a raw quinn echo server (the same TLS and transport
//! settings, in the same process) makes for the same streams.
//!
//! Only the servers' threads are counted: the edge's shards (`selfie-shard-*`) and the
//! echo server's thread (`raw-echo`); the load generator runs on the test thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use selfie_client::{Client, ClientConfig, Trust};
use selfie_edge::{Config, Edge, Plane, Registry};

struct Counting;

static COUNT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations count: decided once per thread from its name.
    static COUNTED: Cell<Option<bool>> = const { Cell::new(None) };
    /// Set while deciding, so that an allocation made by `thread::current` is skipped.
    static DECIDING: Cell<bool> = const { Cell::new(false) };
}

fn counted_thread() -> bool {
    COUNTED
        .try_with(|c| match c.get() {
            Some(v) => v,
            None => {
                if DECIDING.with(|d| d.replace(true)) {
                    return false;
                }
                let v = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("selfie-shard-") || n == "raw-echo");
                DECIDING.with(|d| d.set(false));
                c.set(Some(v));
                v
            }
        })
        .unwrap_or(false)
}

fn record() {
    if counted_thread() {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests per measured round, and concurrent requesters (on one connection): one at a
/// time, so that quinn packs the same packets for both servers (with several in flight,
/// how requests share packets, and so quinn's own allocations, depends on timing).
const REQUESTS: u64 = 1_000;
const IN_FLIGHT: u64 = 1;

/// A service that answers every call with an `Ack`, encoded as services do.
struct Probe;

impl selfie_edge::Service for Probe {
    fn owner_key(&self, _: Option<u64>, _: &selfie_protocol::Envelope<'_>) -> Option<u64> {
        None
    }

    fn handle(
        &self,
        call: selfie_edge::Call,
    ) -> LocalBoxFuture<'static, selfie_services::Result<Bytes>> {
        Box::pin(async move { call.ack() })
    }
}

fn edge(dir: &std::path::Path) -> Edge {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.server.shards = 1;
    config.server.pin_cores = false;
    config.server.data_dir = dir.to_path_buf();
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    // Room for the measured rate: this test counts allocations, not refusals.
    config.limits.connection_requests_per_second = 1_000_000;
    config.limits.connection_request_burst = 1_000_000;
    config.limits.ip_requests_per_second = 1_000_000;
    config.limits.ip_request_burst = 1_000_000;
    let plane = Plane::new(config.shard_count(), config.delivery.plane());
    let shards = plane.clone();
    let factory: selfie_edge::ServiceFactory = Arc::new(move |shard| {
        let mut r = Registry::new(shard, &shards);
        // Under a service anonymous sessions may call.
        r.register(selfie_protocol::Service::Auth, Rc::new(Probe));
        r
    });
    Edge::start(config, plane, factory, Arc::new(selfie_edge::AnonymousOnly)).expect("edge")
}

/// The raw quinn baseline: a task per stream that echoes what it reads.
fn echo(dir: &std::path::Path) -> (std::net::SocketAddr, String) {
    let identity = selfie_edge::tls::load_identity(&Default::default(), dir).expect("identity");
    let mut server_config =
        selfie_edge::tls::quic_server_config(&identity, false).expect("server config");
    let transport = selfie_edge::transport_config(&Config::default().limits).expect("transport");
    server_config.transport_config(Arc::new(transport));
    let fingerprint = identity.fingerprint();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("raw-echo".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let endpoint =
                    quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr"))
                        .expect("endpoint");
                tx.send(endpoint.local_addr().expect("addr")).expect("send");
                while let Some(incoming) = endpoint.accept().await {
                    tokio::task::spawn_local(async move {
                        let Ok(conn) = incoming.await else { return };
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            tokio::task::spawn_local(async move {
                                while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
                                    if send.write_chunk(chunk.bytes).await.is_err() {
                                        return;
                                    }
                                }
                                let _ = send.finish();
                            });
                        }
                    });
                }
            });
        })
        .expect("echo thread");
    (rx.recv().expect("echo address"), fingerprint)
}

/// Server allocations per request made by `one`: the fewest over three rounds of
/// `REQUESTS`, after two warm-up rounds. Timing adds allocations (an ACK sent alone when
/// the machine is busy, a timer's tick), never removes them: the fewest is the steady
/// state.
async fn per_request<F, Fut>(one: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let round = || async {
        let each = REQUESTS / IN_FLIGHT;
        futures::future::join_all((0..IN_FLIGHT).map(|_| async {
            for _ in 0..each {
                one().await;
            }
        }))
        .await;
    };
    round().await;
    round().await;
    let mut fewest = f64::MAX;
    for _ in 0..3 {
        let before = COUNT.load(Ordering::Relaxed);
        round().await;
        let after = COUNT.load(Ordering::Relaxed);
        fewest = fewest.min((after - before) as f64 / REQUESTS as f64);
    }
    fewest
}

#[tokio::test(flavor = "current_thread")]
async fn the_edge_allocates_no_more_per_request_than_raw_quinn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let edge = edge(&dir.path().join("edge"));
    let (echo_addr, echo_fingerprint) = echo(&dir.path().join("echo"));

    let client = Client::connect(ClientConfig::new(
        edge.addr,
        Trust::pinned_hex(&edge.fingerprint).expect("pin"),
    ))
    .await
    .expect("connect");
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let trust = Trust::pinned_hex(&echo_fingerprint).expect("pin");
    let echo_conn = endpoint
        .connect_with(
            selfie_client::quic_client_config(&trust).expect("client config"),
            echo_addr,
            "localhost",
        )
        .expect("connect")
        .await
        .expect("handshake");
    // The same requests on both: a frame on a new stream, read to its end.
    let frame = |env: selfie_protocol::EnvelopeT| {
        let mut enc = selfie_codec::Encoder::new(selfie_codec::Limits::DEFAULT);
        Bytes::copy_from_slice(enc.encode_object(&env).expect("encodes"))
    };
    let ping = {
        let mut enc = selfie_codec::Encoder::new(selfie_codec::Limits::DEFAULT);
        enc.encode_bytes(|b| selfie_codec::build::ping(b, 1, 0))
            .expect("ping")
    };
    let mut logout = selfie_protocol::EnvelopeT::default();
    logout.id = 2;
    logout.body = selfie_protocol::BodyT::Auth(Box::new({
        let mut auth = selfie_protocol::auth::AuthT::default();
        auth.op = selfie_protocol::auth::AuthOpT::LogoutRequest(Box::default());
        auth
    }));
    let call = frame(logout);
    let one = |conn: quinn::Connection, request: Bytes| async move {
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        send.write_chunk(request).await.expect("write");
        send.finish().expect("finish");
        let answer = recv.read_to_end(64 * 1024).await.expect("answer");
        assert!(!answer.is_empty());
    };
    let edge_conn = client.connection().clone();
    let edge_ping = per_request(|| one(edge_conn.clone(), ping.clone())).await;
    let edge_call = per_request(|| one(edge_conn.clone(), call.clone())).await;
    let echo = per_request(|| one(echo_conn.clone(), ping.clone())).await;
    eprintln!(
        "server allocations per request: edge ping {edge_ping:.2}, edge service call \
         {edge_call:.2}, raw quinn echo {echo:.2}"
    );
    // The edge's own path (read, admission, rate limits, answer, metrics) allocates
    // nothing, and a `Ping` that came whole with its stream is answered by the accept
    // loop without a task: one allocation fewer than the echo (a task per stream).
    assert!(
        edge_ping <= echo - 0.95,
        "the edge allocates {edge_ping:.2} per ping, raw quinn {echo:.2} per echo"
    );
    // A service call adds one allocation: the handler's boxed future (services are
    // trait objects). The answer is encoded into the shard's arena.
    assert!(
        edge_call <= echo + 1.05,
        "the edge allocates {edge_call:.2} per service call, raw quinn {echo:.2} per echo"
    );
}
