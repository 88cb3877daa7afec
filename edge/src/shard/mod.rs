//! One shard: a pinned OS thread running a tokio `current_thread` runtime, with its own
//! reuseport UDP socket, quinn endpoint, service instances and mailbox. Nothing mutable
//! is shared with other shards on the request path: per-shard state lives in `Rc`/`Cell`
//! here; other shards are reached only through their bounded mailboxes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use quinn::{Endpoint, EndpointConfig, Incoming, VarInt};
use selfie_codec::{CodecError, Encoder, Frame, FrameDecoder, Limits, build};
use selfie_protocol::control::{ControlOp, GoAway, GoAwayArgs, GoAwayReason, Welcome, WelcomeArgs};
use selfie_protocol::{ErrorCode, Service, priority_of};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{CodeLabels, Metrics, OutcomeLabels, RequestLabels, ShardLabel};
use crate::session::{self, Authenticator, SessionInfo};
use crate::steering::ShardCidGenerator;
use crate::{ErrorReply, ServiceFactory};
use selfie_services::plane::{Mailbox, Plane, Registry, RequestContext, ShardId, serve_mailbox};

mod connection;
mod link;
mod request;
mod web;
mod webtransport;
mod ws;

pub use webtransport::{H3_ALPN, Origins};

use connection::serve_connection;

/// What every shard shares (`Send + Sync`, read-mostly): the configuration, metrics, the
/// authenticator, the service plane (every shard's mailbox), and the drain signal.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Token verification.
    pub auth: Arc<dyn Authenticator>,
    /// Builds each shard's services.
    pub factory: ServiceFactory,
    /// The node's service plane.
    pub plane: Arc<Plane>,
    /// The number of shards.
    pub shards: usize,
    /// Last loop tick of each shard (Unix ms), for `/livez`.
    pub heartbeats: Vec<AtomicU64>,
    /// Shards serving (for `/readyz`).
    pub running: AtomicUsize,
    /// Open connections on all shards. Draining shards keep serving their mailboxes
    /// until it reaches zero, since any open connection may still forward to them.
    pub connections: AtomicUsize,
    /// Open connections per client address, node-wide (`limits.max_connections_per_address`).
    pub per_address: std::sync::Mutex<HashMap<IpAddr, usize>>,
    /// Drain signal.
    pub drain: watch::Receiver<bool>,
    /// Browser origins that may open WebTransport sessions.
    pub origins: Origins,
    /// The web client served by the HTTPS listener, when `web.client_dir` is set.
    pub webapp: Option<crate::webapp::WebApp>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Shard-local state.
struct Shard {
    id: ShardId,
    shared: Arc<Shared>,
    registry: Rc<Registry>,
    limits: Limits,
    encoder: RefCell<Encoder>,
    /// Where the shard's own small frames (pongs, acks, refusals) are copied: no
    /// allocation per frame in steady state.
    arena: RefCell<selfie_codec::FrameArena>,
    /// `Pong`s copied from one encoded once (`None`: built each time).
    pong: Option<selfie_codec::PongTemplate>,
    /// A monotonic instant and the wall clock (Unix ms) read with it: `Pong`s tell the
    /// time from the request's own clock read (see [`Shard::wall_ms`]).
    wall: Cell<(Instant, u64)>,
    connections: Cell<usize>,
    next_connection: Cell<u64>,
    ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    handshake_window: Cell<(u64, u32)>,
    label: ShardLabel,
    hot: HotMetrics,
    /// Authenticated connections by login session, to close them when it is revoked.
    sessions: RefCell<HashMap<u64, Vec<std::rc::Weak<connection::Conn>>>>,
    /// Open HTTPS connections (`[web]`).
    web_open: Cell<usize>,
    /// Bumped by every request the shard admits (see [`busy_poll_idle`]).
    activity: Cell<u64>,
    /// The busy-poll task's waker while it waits for the next admitted request.
    busy_poll_waker: Cell<Option<std::task::Waker>>,
}

/// Metric handles resolved once per shard, so that the request path does no family
/// lookups (each `get_or_create` takes a lock and hashes the labels).
struct HotMetrics {
    streams: Counter,
    received: Counter,
    sent: Counter,
    forwarded: Counter,
    requests: RefCell<HashMap<RequestKey, (Counter, Histogram)>>,
    /// Successful requests' handles by service index (see `request::record_ok`).
    ok: [std::cell::OnceCell<(Counter, Histogram)>; Service::ALL.len()],
}

/// (service, result code) of a request, for [`HotMetrics::requests`].
type RequestKey = (&'static str, &'static str);

impl HotMetrics {
    fn new(metrics: &Metrics, label: &ShardLabel) -> Self {
        Self {
            streams: metrics.streams_total.get_or_create(label).clone(),
            received: metrics.received_bytes_total.get_or_create(label).clone(),
            sent: metrics.sent_bytes_total.get_or_create(label).clone(),
            forwarded: metrics.forwarded_total.get_or_create(label).clone(),
            requests: RefCell::new(HashMap::new()),
            ok: [const { std::cell::OnceCell::new() }; Service::ALL.len()],
        }
    }
}

impl Shard {
    /// A request was admitted: restarts the busy-poll window (see [`busy_poll_idle`]).
    fn note_activity(&self) {
        self.activity.set(self.activity.get().wrapping_add(1));
        if let Some(waker) = self.busy_poll_waker.take() {
            waker.wake();
        }
    }

    fn encode(
        &self,
        f: impl FnOnce(
            &mut selfie_codec::Builder,
        ) -> flatbuffers::WIPOffset<selfie_protocol::Envelope<'static>>,
    ) -> Option<Bytes> {
        let mut arena = self.arena.borrow_mut();
        self.encoder.borrow_mut().encode_in(&mut arena, f).ok()
    }

    /// The `Pong` answering ping `id` with `nonce`, stamped with the server's time at
    /// `now`.
    fn pong(&self, id: u64, nonce: u64, now: Instant) -> Option<Bytes> {
        let time = self.wall_ms(now);
        match &self.pong {
            Some(template) => {
                let mut arena = self.arena.borrow_mut();
                Some(template.write_in(&mut arena, id, nonce, time))
            }
            None => self.encode(|b| build::pong(b, id, nonce, time)),
        }
    }

    /// The wall clock (Unix ms) at `now`, from the last wall-clock read and the
    /// monotonic time between: one clock read a second instead of one per ping, and a
    /// step of the wall clock shows within a second. `now` may be older than the last
    /// read (a request that started before it): counted back from it, and the anchor is
    /// only ever moved to a fresh reading.
    fn wall_ms(&self, now: Instant) -> u64 {
        const RESYNC: Duration = Duration::from_secs(1);
        let (mut at, mut ms) = self.wall.get();
        if now.saturating_duration_since(at) >= RESYNC {
            (at, ms) = (Instant::now(), now_ms());
            self.wall.set((at, ms));
        }
        match now.checked_duration_since(at) {
            Some(since) => ms + since.as_millis() as u64,
            None => ms.saturating_sub(at.duration_since(now).as_millis() as u64),
        }
    }

    fn error_frame(&self, id: u64, e: &ErrorReply) -> Option<Bytes> {
        self.encode(|b| build::error_on_field(b, id, e.code, &e.message, e.retry_after_ms, e.field))
    }

    fn count_protocol_error(&self, code: ErrorCode) {
        self.shared
            .metrics
            .protocol_errors_total
            .get_or_create(&CodeLabels {
                shard: self.id as u16,
                code: code.label(),
            })
            .inc();
    }
}

/// This shard's HTTPS listener (`[web]`) and its TLS configuration.
pub type WebListener = (std::net::TcpListener, Arc<rustls::ServerConfig>);

/// Runs shard `id` on the current thread until it has drained.
pub fn run(
    id: ShardId,
    socket: std::net::UdpSocket,
    server_config: quinn::ServerConfig,
    web: Option<WebListener>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(id, socket, server_config, web, shared, mailbox))
}

/// Keeps the shard polling its sockets for `window` after each admitted request instead
/// of parking in `epoll_wait` at once: a packet that comes within the window is read
/// without a wake-up of the thread (`bench/RESULTS.md`, "Busy polling before parking":
/// on two vCPUs, 0.79–0.86× → 0.84–0.94× of raw quinn's request throughput, at 0–13%
/// more CPU per request).
///
/// Each turn yields to the runtime. tokio (1.54, `current_thread`) defers a yielded
/// task's wake-up until it has polled its I/O driver and timers with a zero timeout, and
/// runs every other ready task first; tokio does not promise that order, and without it
/// this would spin without reading the sockets (the request path does not depend on it,
/// only the wake-ups saved). Once a whole window passes with no admitted request the task
/// waits until [`Shard::note_activity`] wakes it, so an idle shard parks. The CPU it costs
/// is about min(1, requests/s × window) of a core per shard: a shard whose requests come
/// less than a window apart never parks and reads as busy.
async fn busy_poll_idle(shard: Rc<Shard>, window: Duration) {
    let seconds = shard
        .shared
        .metrics
        .busy_poll_seconds_total
        .get_or_create(&shard.label)
        .clone();
    let windows = shard
        .shared
        .metrics
        .busy_polls_total
        .get_or_create(&shard.label)
        .clone();
    // Polling time is added at least this often, so that the figure follows a shard
    // that never parks.
    const FLUSH: Duration = Duration::from_millis(1);
    let mut seen = shard.activity.get();
    loop {
        // Parked until the next admitted request.
        std::future::poll_fn(|cx| {
            if shard.activity.get() != seen {
                std::task::Poll::Ready(())
            } else {
                shard.busy_poll_waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await;
        seen = shard.activity.get();
        let mut flushed = Instant::now();
        let mut until = flushed + window;
        loop {
            tokio::task::yield_now().await;
            let now = Instant::now();
            let activity = shard.activity.get();
            if activity != seen {
                seen = activity;
                until = now + window;
                if now.duration_since(flushed) >= FLUSH {
                    seconds.inc_by(now.duration_since(flushed).as_secs_f64());
                    flushed = now;
                }
            } else if now >= until {
                seconds.inc_by(now.duration_since(flushed).as_secs_f64());
                windows.inc();
                break;
            }
        }
    }
}

fn per_second(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

async fn serve(
    id: ShardId,
    socket: std::net::UdpSocket,
    server_config: quinn::ServerConfig,
    web: Option<WebListener>,
    shared: Arc<Shared>,
    mailbox: Mailbox,
) -> std::io::Result<()> {
    let limits_cfg = &shared.config.limits;
    let limits = Limits {
        max_frame_bytes: limits_cfg.max_frame_bytes,
        ..Limits::DEFAULT
    };
    let shard = Rc::new(Shard {
        id,
        registry: Rc::new((shared.factory)(id)),
        limits,
        encoder: RefCell::new(Encoder::new(limits)),
        arena: RefCell::default(),
        pong: selfie_codec::PongTemplate::new(limits),
        wall: Cell::new((Instant::now(), now_ms())),
        connections: Cell::new(0),
        next_connection: Cell::new(1),
        ip_limiter: RateLimiter::keyed(
            Quota::per_second(per_second(limits_cfg.ip_requests_per_second))
                .allow_burst(per_second(limits_cfg.ip_request_burst)),
        ),
        handshake_window: Cell::new((0, 0)),
        sessions: RefCell::new(HashMap::new()),
        web_open: Cell::new(0),
        activity: Cell::new(0),
        busy_poll_waker: Cell::new(None),
        hot: HotMetrics::new(&shared.metrics, &ShardLabel { shard: id as u16 }),
        label: ShardLabel { shard: id as u16 },
        shared: shared.clone(),
    });
    let mut endpoint_config = EndpointConfig::default();
    let shard_byte = u8::try_from(id).map_err(|_| std::io::Error::other("at most 256 shards"))?;
    endpoint_config.cid_generator(move || Box::new(ShardCidGenerator::new(shard_byte)));
    let endpoint = Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;

    // Work posted here by other shards: forwarded requests, typed calls, deliveries.
    tokio::task::spawn_local(serve_mailbox(
        mailbox,
        shard.registry.clone(),
        shared.plane.clone(),
    ));

    let busy_poll = Duration::from_micros(shared.config.server.busy_poll_us);
    if !busy_poll.is_zero() {
        tokio::task::spawn_local(busy_poll_idle(shard.clone(), busy_poll));
    }

    // Liveness: the loop ticks.
    let tick_shard = shard.clone();
    tokio::task::spawn_local(async move {
        let mut ticks = 0u64;
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            every.tick().await;
            if let Some(h) = tick_shard.shared.heartbeats.get(tick_shard.id) {
                h.store(now_ms(), Ordering::Relaxed);
            }
            tick_shard.ip_limiter.retain_recent();
            ticks += 1;
            if ticks.is_multiple_of(SWEEP_EVERY_TICKS) {
                sweep_sessions(&tick_shard);
            }
        }
    });

    // Revoked login sessions: close their connections on this shard at once.
    if let Some(mut revoked) = shared.auth.revocations() {
        let rev_shard = shard.clone();
        tokio::task::spawn_local(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match revoked.recv().await {
                    Ok(session_id) => {
                        let conns = rev_shard.sessions.borrow_mut().remove(&session_id);
                        for conn in conns.into_iter().flatten().filter_map(|w| w.upgrade()) {
                            // A short grace lets the answer to the revoking request itself
                            // (a logout on this very connection) leave first.
                            let shard = rev_shard.clone();
                            tokio::task::spawn_local(async move {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                conn.close(&shard, ErrorCode::SessionRevoked, "session revoked");
                            });
                        }
                    }
                    // Announcements were missed: look at every session now.
                    Err(RecvError::Lagged(_)) => sweep_sessions(&rev_shard),
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }
    // HTTPS (`[web]`): signed media URLs, on this thread like everything else.
    let web_task = web
        .map(|(listener, tls)| tokio::task::spawn_local(web::serve(shard.clone(), listener, tls)));
    shared.running.fetch_add(1, Ordering::SeqCst);
    info!(shard = id, addr = %endpoint.local_addr()?, "shard serving");
    let mut drain = shared.drain.clone();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                admit(&shard, incoming);
            }
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    break;
                }
            }
        }
    }
    // Drain: refuse new connections, let open ones finish (they watch the same signal).
    shared.running.fetch_sub(1, Ordering::SeqCst);
    let refusing = endpoint.clone();
    let refuse_shard = shard.clone();
    let refuser = tokio::task::spawn_local(async move {
        while let Some(incoming) = refusing.accept().await {
            admit(&refuse_shard, incoming);
        }
    });
    let deadline =
        Duration::from_millis(shared.config.server.drain_deadline_ms) + Duration::from_secs(2);
    // Wait for this shard's connections, then for every shard's (they may still forward
    // requests here), then for forwarded requests still running here.
    let _ = tokio::time::timeout(deadline, async {
        while shard.connections.get() > 0
            || shared.connections.load(Ordering::SeqCst) > 0
            || shard.registry.jobs_inflight() > 0
            || shard.web_open.get() > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    refuser.abort();
    if let Some(t) = web_task {
        t.abort();
    }
    endpoint.set_server_config(None);
    endpoint.close(
        VarInt::from_u32(u32::from(ErrorCode::Draining.0)),
        b"draining",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    info!(shard = id, "shard drained");
    Ok(())
}

/// Ticks (of 500 ms) between two sweeps of the open sessions.
const SWEEP_EVERY_TICKS: u64 = 4;

/// Closes this shard's connections whose login session was revoked (an announcement
/// this shard missed) or whose access token has expired since `Hello`, and forgets
/// closed ones.
fn sweep_sessions(shard: &Rc<Shard>) {
    let now = now_ms();
    let auth = shard.shared.auth.clone();
    let mut closing = Vec::new();
    shard.sessions.borrow_mut().retain(|&session_id, conns| {
        conns.retain(|w| w.strong_count() > 0);
        if auth.is_revoked(session_id) {
            closing.extend(conns.drain(..).map(|w| (w, ErrorCode::SessionRevoked)));
        } else {
            conns.retain(|w| {
                let expired = w
                    .upgrade()
                    .and_then(|c| c.session.expires_at_ms)
                    .is_some_and(|t| t <= now);
                if expired {
                    closing.push((w.clone(), ErrorCode::TokenExpired));
                }
                !expired
            });
        }
        !conns.is_empty()
    });
    for (conn, code) in closing {
        if let Some(conn) = conn.upgrade() {
            let reason = if code == ErrorCode::SessionRevoked {
                "session revoked"
            } else {
                "access token expired"
            };
            conn.close(shard, code, reason);
        }
    }
}

/// One connection's place in [`Shared::per_address`], given back when dropped. Taken
/// once the handshake has completed, so only addresses that answered count (spoofed
/// Initials cannot fill another address's slots).
pub(super) struct AddressSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl AddressSlot {
    /// Takes a slot for `ip` (canonical: IPv4-mapped IPv6 counts as IPv4), or `None`
    /// when the address holds its limit already.
    pub(super) fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let ip = ip.to_canonical();
        let limit = shared.config.limits.max_connections_per_address;
        let mut map = shared.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn count_connection(shard: &Shard, outcome: &'static str) {
    shard
        .shared
        .metrics
        .connections_total
        .get_or_create(&OutcomeLabels {
            shard: shard.id as u16,
            outcome,
        })
        .inc();
}

/// Runs a WebSocket session ([`web`]'s upgrade) as a connection of this shard: counted
/// like a QUIC one (limits, the open-connections gauge, drain waits for it).
async fn serve_session(
    shard: &Rc<Shard>,
    link: link::Link,
    ip: IpAddr,
    handshake_deadline: Instant,
) {
    shard.connections.set(shard.connections.get() + 1);
    shard.shared.connections.fetch_add(1, Ordering::SeqCst);
    let conn_id = shard.next_connection.get();
    shard.next_connection.set(conn_id + 1);
    let active = shard
        .shared
        .metrics
        .connections_active
        .get_or_create(&shard.label)
        .clone();
    active.inc();
    let kind = link.kind();
    if let Err(e) = connection::run_session(
        shard,
        conn_id,
        link,
        None,
        ip,
        handshake_deadline,
        Rc::default(),
    )
    .await
    {
        debug!(error = %e, kind, "session ended");
    }
    active.dec();
    shard
        .connections
        .set(shard.connections.get().saturating_sub(1));
    shard.shared.connections.fetch_sub(1, Ordering::SeqCst);
}

/// Admission control for a new connection attempt.
fn admit(shard: &Rc<Shard>, incoming: Incoming) {
    let limits = &shard.shared.config.limits;
    if *shard.shared.drain.borrow() {
        count_connection(shard, "refused_draining");
        incoming.refuse();
        return;
    }
    if shard.connections.get() >= limits.max_connections_per_shard {
        count_connection(shard, "refused_limit");
        incoming.refuse();
        return;
    }
    // Above the handshake-rate threshold, clients must prove their address first.
    let second = now_ms() / 1000;
    let (window, count) = shard.handshake_window.get();
    let count = if window == second { count + 1 } else { 1 };
    shard.handshake_window.set((second, count));
    if count > limits.retry_above_handshakes_per_second
        && !incoming.remote_address_validated()
        && incoming.may_retry()
    {
        count_connection(shard, "retry");
        let _ = incoming.retry();
        return;
    }
    shard.connections.set(shard.connections.get() + 1);
    shard.shared.connections.fetch_add(1, Ordering::SeqCst);
    let conn_id = shard.next_connection.get();
    shard.next_connection.set(conn_id + 1);
    let shard = shard.clone();
    let span = info_span!("connection", shard = shard.id, conn = conn_id, peer = %incoming.remote_address());
    tokio::task::spawn_local(
        async move {
            let active = shard
                .shared
                .metrics
                .connections_active
                .get_or_create(&shard.label)
                .clone();
            active.inc();
            if let Err(e) = serve_connection(&shard, conn_id, incoming).await {
                debug!(error = %e, "connection ended");
            }
            active.dec();
            shard
                .connections
                .set(shard.connections.get().saturating_sub(1));
            shard.shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
        .instrument(span),
    );
}
