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
use quinn::{Connection, Endpoint, EndpointConfig, Incoming, RecvStream, SendStream, VarInt};
use selfie_codec::{CodecError, Encoder, Frame, FrameDecoder, Limits, build};
use selfie_protocol::control::{ControlOp, GoAway, GoAwayArgs, GoAwayReason, Welcome, WelcomeArgs};
use selfie_protocol::{ErrorCode, Service, priority_of};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{CodeLabels, Metrics, OutcomeLabels, RequestLabels, ShardLabel};
use crate::service::{ErrorReply, Registry, RequestContext, ServiceFactory, ShardId, owner_shard};
use crate::session::{self, Authenticator, SessionInfo};
use crate::steering::ShardCidGenerator;

/// A request sent to its owner shard.
pub struct Mail {
    service: Service,
    ctx: RequestContext,
    frame: Frame,
    reply: oneshot::Sender<Result<Bytes, ErrorReply>>,
}

/// The handle every shard has on all shards (`Send + Sync`, read-mostly): their
/// mailboxes for [`Shards::invoke_on`], plus configuration, metrics and the drain signal.
pub struct Shards {
    /// The configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Token verification.
    pub auth: Arc<dyn Authenticator>,
    /// Builds each shard's services.
    pub factory: ServiceFactory,
    /// Every shard's mailbox, by shard index.
    pub mailboxes: Vec<mpsc::Sender<Mail>>,
    /// Last loop tick of each shard (Unix ms), for `/livez`.
    pub heartbeats: Vec<AtomicU64>,
    /// Shards serving (for `/readyz`).
    pub running: AtomicUsize,
    /// Open connections on all shards. Draining shards keep serving their mailboxes
    /// until it reaches zero, since any open connection may still forward to them.
    pub connections: AtomicUsize,
    /// Drain signal.
    pub drain: watch::Receiver<bool>,
}

impl Shards {
    /// `invoke_on`: runs a request on `shard` through its bounded mailbox and returns its
    /// answer. A full mailbox is answered with `Overloaded` rather than waiting.
    pub async fn invoke_on(
        &self,
        shard: ShardId,
        service: Service,
        ctx: RequestContext,
        frame: Frame,
    ) -> Result<Bytes, ErrorReply> {
        let mailbox = self
            .mailboxes
            .get(shard)
            .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "no such shard"))?;
        let (reply, rx) = oneshot::channel();
        mailbox
            .try_send(Mail {
                service,
                ctx,
                frame,
                reply,
            })
            .map_err(|_| {
                let mut e = ErrorReply::new(ErrorCode::Overloaded, "owner shard is overloaded");
                e.retry_after_ms = 50;
                e
            })?;
        rx.await
            .map_err(|_| ErrorReply::new(ErrorCode::Unavailable, "owner shard stopped"))?
    }
}

/// Mailbox depth per shard.
pub const MAILBOX: usize = 4096;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Shard-local state.
struct Shard {
    id: ShardId,
    shared: Arc<Shards>,
    registry: Registry,
    limits: Limits,
    encoder: RefCell<Encoder>,
    connections: Cell<usize>,
    next_connection: Cell<u64>,
    ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    handshake_window: Cell<(u64, u32)>,
    mail_inflight: Cell<usize>,
    label: ShardLabel,
    hot: HotMetrics,
}

/// Metric handles resolved once per shard, so that the request path does no family
/// lookups (each `get_or_create` takes a lock and hashes the labels).
struct HotMetrics {
    streams: Counter,
    received: Counter,
    sent: Counter,
    forwarded: Counter,
    requests: RefCell<HashMap<RequestKey, (Counter, Histogram)>>,
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
        }
    }
}

impl Shard {
    fn encode(
        &self,
        f: impl FnOnce(
            &mut selfie_codec::Builder,
        ) -> flatbuffers::WIPOffset<selfie_protocol::Envelope<'static>>,
    ) -> Option<Bytes> {
        self.encoder.borrow_mut().encode_bytes(f).ok()
    }

    fn error_frame(&self, id: u64, e: &ErrorReply) -> Option<Bytes> {
        self.encode(|b| build::error(b, id, e.code, &e.message, e.retry_after_ms))
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

/// Runs shard `id` on the current thread until it has drained.
pub fn run(
    id: ShardId,
    socket: std::net::UdpSocket,
    server_config: quinn::ServerConfig,
    shared: Arc<Shards>,
    mailbox: mpsc::Receiver<Mail>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(id, socket, server_config, shared, mailbox))
}

fn per_second(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

async fn serve(
    id: ShardId,
    socket: std::net::UdpSocket,
    server_config: quinn::ServerConfig,
    shared: Arc<Shards>,
    mut mailbox: mpsc::Receiver<Mail>,
) -> std::io::Result<()> {
    let limits_cfg = &shared.config.limits;
    let limits = Limits {
        max_frame_bytes: limits_cfg.max_frame_bytes,
        ..Limits::DEFAULT
    };
    let shard = Rc::new(Shard {
        id,
        registry: (shared.factory)(id),
        limits,
        encoder: RefCell::new(Encoder::new(limits)),
        connections: Cell::new(0),
        next_connection: Cell::new(1),
        ip_limiter: RateLimiter::keyed(
            Quota::per_second(per_second(limits_cfg.ip_requests_per_second))
                .allow_burst(per_second(limits_cfg.ip_request_burst)),
        ),
        handshake_window: Cell::new((0, 0)),
        mail_inflight: Cell::new(0),
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

    // Requests forwarded here by other shards.
    let mail_shard = shard.clone();
    tokio::task::spawn_local(async move {
        while let Some(mail) = mailbox.recv().await {
            let shard = mail_shard.clone();
            tokio::task::spawn_local(async move {
                let result = match shard.registry.get(mail.service) {
                    Some(svc) => svc.handle(mail.ctx, mail.frame).await,
                    None => Err(ErrorReply::new(
                        ErrorCode::Unavailable,
                        "service not available",
                    )),
                };
                let _ = mail.reply.send(result);
            });
        }
    });

    // Liveness: the loop ticks.
    let tick_shard = shard.clone();
    tokio::task::spawn_local(async move {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            every.tick().await;
            if let Some(h) = tick_shard.shared.heartbeats.get(tick_shard.id) {
                h.store(now_ms(), Ordering::Relaxed);
            }
            tick_shard.ip_limiter.retain_recent();
        }
    });

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
    endpoint.set_server_config(None);
    shared.running.fetch_sub(1, Ordering::SeqCst);
    let deadline =
        Duration::from_millis(shared.config.server.drain_deadline_ms) + Duration::from_secs(2);
    // Wait for this shard's connections, then for every shard's (they may still forward
    // requests here), then for forwarded requests still running here.
    let _ = tokio::time::timeout(deadline, async {
        while shard.connections.get() > 0
            || shared.connections.load(Ordering::SeqCst) > 0
            || shard.mail_inflight.get() > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    endpoint.close(
        VarInt::from_u32(u32::from(ErrorCode::Draining.0)),
        b"draining",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    info!(shard = id, "shard drained");
    Ok(())
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
        }
        .instrument(span),
    );
}

/// State of one established session.
struct Conn {
    id: u64,
    conn: Connection,
    /// The client's address when it connected: the per-IP rate-limit key (reading the
    /// live address takes the connection's lock on every request).
    ip: IpAddr,
    session: SessionInfo,
    limiter: DefaultDirectRateLimiter,
    inflight: Cell<u32>,
    protocol_errors: Cell<u32>,
    /// Open subscriptions: id -> the task writing its push stream.
    subscriptions: RefCell<HashMap<u64, tokio::task::JoinHandle<()>>>,
    next_subscription: Cell<u64>,
}

/// Subscriptions one connection may hold at once.
const MAX_SUBSCRIPTIONS: usize = 64;

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, task) in self.subscriptions.borrow_mut().drain() {
            task.abort();
        }
    }
}

impl Conn {
    /// Records a violation that does not close the connection by itself (only past the
    /// limit of protocol errors).
    fn tolerated_violation(&self, shard: &Shard, code: ErrorCode) {
        shard.count_protocol_error(code);
        let n = self.protocol_errors.get() + 1;
        self.protocol_errors.set(n);
        if n > shard.shared.config.limits.max_protocol_errors {
            close_for(shard, &self.conn, code, "too many protocol errors");
        }
    }

    /// Records a protocol violation; closes the connection past the limit.
    fn violation(&self, shard: &Shard, code: ErrorCode) {
        shard.count_protocol_error(code);
        let n = self.protocol_errors.get() + 1;
        self.protocol_errors.set(n);
        if n > shard.shared.config.limits.max_protocol_errors || code.closes_connection() {
            close_for(shard, &self.conn, code, "protocol violation");
        }
    }
}

fn close_for(shard: &Shard, conn: &Connection, code: ErrorCode, reason: &str) {
    shard
        .shared
        .metrics
        .connections_closed_total
        .get_or_create(&CodeLabels {
            shard: shard.id as u16,
            code: code.label(),
        })
        .inc();
    conn.close(VarInt::from_u32(u32::from(code.0)), reason.as_bytes());
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("timed out waiting for Hello")]
    HelloTimeout,
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("frame: {0}")]
    Codec(#[from] CodecError),
    #[error("refused: {0:?}")]
    Refused(ErrorCode),
}

/// Reads bytes into `dec` until a frame is complete; `Ok(None)` at a clean end of stream.
async fn read_frame(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Option<Frame>, ConnError> {
    loop {
        if let Some(frame) = dec.next_frame()? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(chunk) => dec.push(chunk.bytes),
            None => {
                dec.finish()?;
                return Ok(None);
            }
        }
    }
}

async fn serve_connection(
    shard: &Rc<Shard>,
    conn_id: u64,
    incoming: Incoming,
) -> Result<(), ConnError> {
    let limits = &shard.shared.config.limits;
    let handshake_deadline = Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
    let connecting = incoming.accept()?;
    let conn = match tokio::time::timeout_at(handshake_deadline.into(), connecting).await {
        Ok(c) => c?,
        Err(_) => {
            count_connection(shard, "handshake_timeout");
            return Err(ConnError::HelloTimeout);
        }
    };
    count_connection(shard, "accepted");

    // The control stream: Hello -> Welcome, within the handshake deadline.
    let hello = async {
        let (send, mut recv) = conn.accept_bi().await?;
        let mut dec = FrameDecoder::new(shard.limits);
        let frame = read_frame(&mut recv, &mut dec).await?;
        Ok::<_, ConnError>((send, recv, dec, frame))
    };
    let (mut ctl_send, ctl_recv, ctl_dec, frame) =
        match tokio::time::timeout_at(handshake_deadline.into(), hello).await {
            Ok(Ok(v)) => v,
            Ok(Err(ConnError::Codec(e))) => {
                shard.count_protocol_error(e.code());
                close_for(shard, &conn, e.code(), "malformed Hello");
                return Err(ConnError::Codec(e));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                close_for(
                    shard,
                    &conn,
                    ErrorCode::HandshakeTimeout,
                    "no Hello in time",
                );
                return Err(ConnError::HelloTimeout);
            }
        };
    let _ = ctl_send.set_priority(selfie_protocol::Priority::Control.quic_priority());
    let session_result = match frame
        .as_ref()
        .and_then(|f| f.envelope().body_as_control())
        .and_then(|c| c.op_as_hello())
    {
        Some(hello) => session::on_hello(&hello, shard.shared.auth.as_ref()),
        None => Err(session::Refusal {
            code: ErrorCode::HelloRequired,
            message: "the first frame must be Hello".into(),
        }),
    };
    let hello_id = frame.as_ref().map_or(0, Frame::id);
    let session = match session_result {
        Ok(s) => s,
        Err(refusal) => {
            shard
                .shared
                .metrics
                .sessions_total
                .get_or_create(&OutcomeLabels {
                    shard: shard.id as u16,
                    outcome: refusal.code.label(),
                })
                .inc();
            let e = ErrorReply::new(refusal.code, refusal.message);
            if let Some(bytes) = shard.error_frame(hello_id, &e) {
                let _ = ctl_send.write_all(&bytes).await;
                let _ = ctl_send.finish();
            }
            // Give the error frame a moment to leave before the close.
            let _ = tokio::time::timeout(Duration::from_millis(200), ctl_send.stopped()).await;
            close_for(shard, &conn, refusal.code, "hello refused");
            return Err(ConnError::Refused(refusal.code));
        }
    };
    shard
        .shared
        .metrics
        .sessions_total
        .get_or_create(&OutcomeLabels {
            shard: shard.id as u16,
            outcome: "welcome",
        })
        .inc();
    let welcome = shard.encode(|b| {
        let node_id = b.create_string(&shard.shared.config.server.node_id);
        let v = session.version.to_wire();
        let lim = selfie_protocol::control::Limits::create(
            b,
            &selfie_protocol::control::LimitsArgs {
                max_frame_bytes: limits.max_frame_bytes as u32,
                max_concurrent_streams: limits.max_concurrent_streams,
                max_datagram_bytes: shard.limits.max_datagram_bytes as u16,
                requests_per_second: limits.connection_requests_per_second,
                request_burst: limits.connection_request_burst,
                idle_timeout_ms: limits.idle_timeout_ms as u32,
                max_upload_bytes: 0,
            },
        );
        let w = Welcome::create(
            b,
            &WelcomeArgs {
                version: Some(&v),
                session_id: (shard.id as u64) << 48 | conn_id,
                user_id: session.principal.as_ref().map_or(0, |p| p.user_id),
                server_time_ms: now_ms(),
                limits: Some(lim),
                shard: shard.id as u16,
                node_id: Some(node_id),
                heartbeat_interval_ms: (limits.idle_timeout_ms / 3) as u32,
                ..Default::default()
            },
        );
        build::control(b, hello_id, ControlOp::Welcome, w.as_union_value())
    });
    if let Some(bytes) = welcome {
        ctl_send.write_all(&bytes).await?;
    }

    let state = Rc::new(Conn {
        id: conn_id,
        ip: conn.remote_address().ip(),
        conn: conn.clone(),
        limiter: RateLimiter::direct(
            Quota::per_second(per_second(limits.connection_requests_per_second))
                .allow_burst(per_second(limits.connection_request_burst)),
        ),
        session,
        inflight: Cell::new(0),
        protocol_errors: Cell::new(0),
        subscriptions: RefCell::new(HashMap::new()),
        next_subscription: Cell::new(1),
    });
    // Datagrams and the control stream run in their own tasks, so that the accept loop
    // below polls only for new request streams and the drain signal.
    tokio::task::spawn_local(datagram_loop(shard.clone(), state.clone()));
    let ctl_send = Rc::new(tokio::sync::Mutex::new(ctl_send));
    tokio::task::spawn_local(control_loop(
        shard.clone(),
        state.clone(),
        ctl_send.clone(),
        ctl_recv,
        ctl_dec,
    ));
    let mut drain = shard.shared.drain.clone();
    let drained = async move {
        let _ = drain.wait_for(|d| *d).await;
    };
    tokio::pin!(drained);
    loop {
        tokio::select! {
            biased;
            () = &mut drained => break,
            stream = conn.accept_bi() => {
                let (send, recv) = match stream {
                    Ok(s) => s,
                    Err(_) => return Ok(()),
                };
                let (shard, state) = (shard.clone(), state.clone());
                // A debug-level span: free unless debug logging is on for this module.
                let span = tracing::debug_span!("request", stream = %send.id());
                tokio::task::spawn_local(
                    async move { serve_request(&shard, &state, send, recv).await }.instrument(span),
                );
            }
        }
    }
    // Drain: tell the client where to go, finish in-flight requests, then close.
    let deadline_ms = shard.shared.config.server.drain_deadline_ms;
    if let Some(bytes) = shard.encode(|b| {
        let message = b.create_string("server is draining; reconnect");
        let g = GoAway::create(
            b,
            &GoAwayArgs {
                reason: GoAwayReason::Draining,
                message: Some(message),
                reconnect_after_ms: 100 + rand::random_range(0..900),
                deadline_ms: deadline_ms as u32,
                ..Default::default()
            },
        );
        build::control(b, 0, ControlOp::GoAway, g.as_union_value())
    }) {
        let _ = ctl_send.lock().await.write_all(&bytes).await;
    }
    let drain_deadline = Instant::now() + Duration::from_millis(deadline_ms);
    let _ = tokio::time::timeout_at(drain_deadline.into(), async {
        while state.inflight.get() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Closing discards unsent stream data: give the GoAway a grace period to reach the
    // client, which closes (or moves away) on its own when it has it.
    let grace = Instant::now() + Duration::from_millis(1000);
    let _ = tokio::time::timeout_at(grace.min(drain_deadline).into(), conn.closed()).await;
    conn.close(
        VarInt::from_u32(u32::from(ErrorCode::Draining.0)),
        b"draining",
    );
    Ok(())
}

/// Datagrams of one connection: verified and counted (presence and typing handlers plug
/// in here with the chat issue).
async fn datagram_loop(shard: Rc<Shard>, state: Rc<Conn>) {
    while let Ok(bytes) = state.conn.read_datagram().await {
        let outcome = match selfie_codec::decode_datagram(bytes, &shard.limits) {
            Ok(_) => "ok",
            Err(e) => {
                // Datagrams have no stream to answer on and are cheap to drop: a bad one
                // is counted, and only repeated ones close the connection.
                state.tolerated_violation(&shard, e.code());
                e.label()
            }
        };
        shard
            .shared
            .metrics
            .datagrams_total
            .get_or_create(&OutcomeLabels {
                shard: shard.id as u16,
                outcome,
            })
            .inc();
    }
}

/// The control stream after `Welcome`. Its end ends the session.
async fn control_loop(
    shard: Rc<Shard>,
    state: Rc<Conn>,
    send: Rc<tokio::sync::Mutex<SendStream>>,
    mut recv: RecvStream,
    mut dec: FrameDecoder,
) {
    loop {
        match read_frame(&mut recv, &mut dec).await {
            Ok(Some(frame)) => {
                let mut send = send.lock().await;
                if on_control(&shard, &state, &mut send, frame).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                state
                    .conn
                    .close(VarInt::from_u32(0), b"control stream closed");
                return;
            }
            Err(ConnError::Codec(e)) => {
                state.violation(&shard, e.code());
                return;
            }
            Err(_) => return,
        }
    }
}

/// Frames on the control stream after `Welcome`: `Ping` is answered; anything else is a
/// protocol violation.
async fn on_control(
    shard: &Rc<Shard>,
    state: &Rc<Conn>,
    send: &mut SendStream,
    frame: Frame,
) -> Result<(), ConnError> {
    let env = frame.envelope();
    match env.body_as_control().and_then(|c| c.op_as_ping()) {
        Some(ping) => {
            if let Some(bytes) = shard.encode(|b| build::pong(b, env.id(), ping.nonce(), now_ms()))
            {
                send.write_all(&bytes).await?;
            }
        }
        None => {
            let e = ErrorReply::new(
                ErrorCode::UnexpectedMessage,
                "only Ping is allowed on the control stream",
            );
            if let Some(bytes) = shard.error_frame(env.id(), &e) {
                send.write_all(&bytes).await?;
            }
            state.violation(shard, ErrorCode::UnexpectedMessage);
        }
    }
    Ok(())
}

/// Milliseconds until a rate limiter would allow the next request (at least 1).
fn retry_after_ms(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u32 {
    let now = governor::clock::Clock::now(&governor::clock::DefaultClock::default());
    not_until
        .wait_time_from(now)
        .as_millis()
        .clamp(1, u128::from(u32::MAX)) as u32
}

/// Decrements the in-flight count when a request ends, however it ends.
struct InflightGuard(Rc<Conn>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get().saturating_sub(1));
    }
}

async fn serve_request(
    shard: &Rc<Shard>,
    state: &Rc<Conn>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let started = Instant::now();
    shard.hot.streams.inc();
    state.inflight.set(state.inflight.get() + 1);
    let _guard = InflightGuard(state.clone());
    let mut dec = FrameDecoder::new(shard.limits);
    let frame = match read_frame(&mut recv, &mut dec).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            // An empty request stream.
            respond_error(
                shard,
                &mut send,
                0,
                &ErrorReply::new(ErrorCode::TruncatedFrame, "empty request"),
                "unknown",
                started,
            )
            .await;
            state.violation(shard, ErrorCode::TruncatedFrame);
            return;
        }
        Err(ConnError::Codec(e)) => {
            let reply = ErrorReply::new(e.code(), e.to_string());
            respond_error(shard, &mut send, 0, &reply, "unknown", started).await;
            let _ = recv.stop(VarInt::from_u32(u32::from(e.code().0)));
            state.violation(shard, e.code());
            return;
        }
        Err(_) => return,
    };
    shard.hot.received.inc_by(frame.as_bytes().len() as u64);
    let env = frame.envelope();
    let id = env.id();
    let body = env.body_type();
    // Streams start at priority 0 (Content): skip the call (it takes the connection lock).
    let priority = priority_of(body).quic_priority();
    if priority != 0 {
        let _ = send.set_priority(priority);
    }
    let Some(service) = Service::of(body) else {
        // Unreachable: the codec refuses unknown services.
        return;
    };
    let label = service.name();
    let refuse = |code: ErrorCode, message: &str, retry_after_ms: u32| ErrorReply {
        code,
        message: message.into(),
        retry_after_ms,
    };
    // Admission: concurrency, per-connection and per-IP rates, session rights.
    let limits = &shard.shared.config.limits;
    let verdict = if state.inflight.get() > limits.max_concurrent_streams {
        Err(refuse(
            ErrorCode::TooManyStreams,
            "too many requests in flight",
            10,
        ))
    } else if let Err(not_until) = state.limiter.check() {
        Err(refuse(
            ErrorCode::RateLimited,
            "connection request rate exceeded",
            retry_after_ms(&not_until),
        ))
    } else if let Err(not_until) = shard.ip_limiter.check_key(&state.ip) {
        Err(refuse(
            ErrorCode::RateLimited,
            "address request rate exceeded",
            retry_after_ms(&not_until),
        ))
    } else if !state.session.may_call(service) {
        Err(refuse(ErrorCode::Unauthenticated, "sign in first", 0))
    } else {
        Ok(())
    };
    if let Err(reply) = verdict {
        respond_error(shard, &mut send, id, &reply, label, started).await;
        return;
    }
    let result = if service == Service::Control {
        let control = env.body_as_control();
        if let Some(ping) = control.and_then(|c| c.op_as_ping()) {
            shard
                .encode(|b| build::pong(b, id, ping.nonce(), now_ms()))
                .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "encode failed"))
        } else if let Some(req) = control.and_then(|c| c.op_as_subscribe_request()) {
            subscribe(shard, state, id, &req)
        } else if let Some(req) = control.and_then(|c| c.op_as_unsubscribe_request()) {
            let task = state
                .subscriptions
                .borrow_mut()
                .remove(&req.subscription_id());
            match task {
                Some(task) => {
                    task.abort();
                    shard
                        .encode(|b| build::ack(b, id))
                        .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "encode failed"))
                }
                None => Err(ErrorReply::new(ErrorCode::NotFound, "no such subscription")),
            }
        } else {
            Err(ErrorReply::new(
                ErrorCode::UnexpectedMessage,
                "not a request",
            ))
        }
    } else {
        match shard.registry.get(service) {
            None => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "service not available on this edge",
            )),
            Some(svc) => {
                let owner = svc
                    .owner_key(&env)
                    .map(|k| owner_shard(k, shard.shared.mailboxes.len()));
                let ctx = RequestContext {
                    principal: state.session.principal.clone(),
                    origin_shard: shard.id,
                    shard: owner.unwrap_or(shard.id),
                    connection: state.id,
                    peer_ip: state.ip,
                };
                match owner {
                    Some(o) if o != shard.id => {
                        shard.hot.forwarded.inc();
                        shard.shared.invoke_on(o, service, ctx, frame.clone()).await
                    }
                    _ => svc.handle(ctx, frame.clone()).await,
                }
            }
        }
    };
    match result {
        Ok(bytes) => {
            // `write_chunk` hands quinn the `Bytes` itself: no copy into its buffer.
            if send.write_chunk(bytes.clone()).await.is_ok() {
                let _ = send.finish();
            }
            shard.hot.sent.inc_by(bytes.len() as u64);
            record(shard, label, "ok", started);
        }
        Err(reply) => respond_error(shard, &mut send, id, &reply, label, started).await,
    }
}

/// Opens a subscription: the owning service produces push frames; a task writes them on
/// a server-initiated unidirectional stream that starts with `PushStreamHeader`.
fn subscribe(
    shard: &Rc<Shard>,
    state: &Rc<Conn>,
    id: u64,
    req: &selfie_protocol::control::SubscribeRequest<'_>,
) -> Result<Bytes, ErrorReply> {
    use selfie_protocol::control::{
        PushStreamHeader, PushStreamHeaderArgs, SubscribeResponse, SubscribeResponseArgs,
    };
    let kind = req.kind();
    let service = crate::service::subscription_service(kind)
        .ok_or_else(|| ErrorReply::new(ErrorCode::InvalidArgument, "unknown subscription kind"))?;
    if !state.session.may_call(service) {
        return Err(ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"));
    }
    if state.subscriptions.borrow().len() >= MAX_SUBSCRIPTIONS {
        let mut e = ErrorReply::new(ErrorCode::TooManyStreams, "too many subscriptions");
        e.retry_after_ms = 1000;
        return Err(e);
    }
    let svc = shard.registry.get(service).ok_or_else(|| {
        ErrorReply::new(ErrorCode::Unavailable, "service not available on this edge")
    })?;
    let ctx = RequestContext {
        principal: state.session.principal.clone(),
        origin_shard: shard.id,
        shard: shard.id,
        connection: state.id,
        peer_ip: state.ip,
    };
    let mut events = svc.subscribe(ctx, req)?;
    let sub_id = state.next_subscription.get();
    state.next_subscription.set(sub_id + 1);
    let header = shard
        .encode(|b| {
            let h = PushStreamHeader::create(
                b,
                &PushStreamHeaderArgs {
                    subscription_id: sub_id,
                    kind,
                },
            );
            build::control(b, 0, ControlOp::PushStreamHeader, h.as_union_value())
        })
        .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "encode failed"))?;
    let priority = match service {
        Service::Chat => selfie_protocol::Priority::Chat,
        Service::Notifications => selfie_protocol::Priority::Notifications,
        _ => selfie_protocol::Priority::Content,
    }
    .quic_priority();
    let conn = state.conn.clone();
    let weak = Rc::downgrade(state);
    let task = tokio::task::spawn_local(async move {
        use futures::StreamExt;
        let Ok(mut send) = conn.open_uni().await else {
            return;
        };
        let _ = send.set_priority(priority);
        if send.write_all(&header).await.is_err() {
            return;
        }
        while let Some(event) = events.next().await {
            if send.write_all(&event).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
        if let Some(state) = weak.upgrade() {
            state.subscriptions.borrow_mut().remove(&sub_id);
        }
    });
    state.subscriptions.borrow_mut().insert(sub_id, task);
    shard
        .encode(|b| {
            let r = SubscribeResponse::create(
                b,
                &SubscribeResponseArgs {
                    subscription_id: sub_id,
                },
            );
            build::control(b, id, ControlOp::SubscribeResponse, r.as_union_value())
        })
        .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "encode failed"))
}

fn record(shard: &Shard, service: &'static str, code: &'static str, started: Instant) {
    let mut cache = shard.hot.requests.borrow_mut();
    let (count, latency) = cache.entry((service, code)).or_insert_with(|| {
        let labels = RequestLabels {
            shard: shard.id as u16,
            service,
            code,
        };
        let m = &shard.shared.metrics;
        (
            m.requests_total.get_or_create(&labels).clone(),
            m.request_duration_seconds.get_or_create(&labels).clone(),
        )
    });
    count.inc();
    latency.observe(started.elapsed().as_secs_f64());
}

async fn respond_error(
    shard: &Shard,
    send: &mut SendStream,
    id: u64,
    reply: &ErrorReply,
    service: &'static str,
    started: Instant,
) {
    // Floods produce many refusals: only server faults are worth a warning.
    if reply.code.class() == selfie_protocol::ErrorClass::Server {
        warn!(code = %reply.code, message = %reply.message, "request failed");
    } else {
        debug!(code = %reply.code, "request refused");
    }
    if let Some(bytes) = shard.error_frame(id, reply)
        && send.write_chunk(bytes).await.is_ok()
    {
        let _ = send.finish();
    }
    record(shard, service, reply.code.label(), started);
}
