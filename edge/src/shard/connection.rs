//! One connection: the QUIC handshake, the control stream (`Hello` → `Welcome`, then
//! `Ping`, `GoAway`), datagrams, the loop that accepts request streams, and drain.

use super::link::{Link, LinkError, RecvHalf, SendHalf};
use super::request::start_request;
use super::webtransport;
use super::ws::StreamError;
use super::*;

/// State of one established session.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) conn: Link,
    /// The client's address when it connected: the per-IP rate-limit key (reading the
    /// live address takes the connection's lock on every request).
    pub(super) ip: IpAddr,
    pub(super) session: SessionInfo,
    pub(super) limiter: DefaultDirectRateLimiter,
    /// Requests this connection has already taken from its address's bucket and not
    /// yet made, and how many it takes next time (see [`IP_LEASE`]).
    pub(super) ip_tokens: Cell<u32>,
    pub(super) ip_lease: Cell<u32>,
    /// Datagrams handed to the services (typing, presence) from this connection.
    pub(super) datagram_limiter: DefaultDirectRateLimiter,
    pub(super) inflight: Cell<u32>,
    pub(super) protocol_errors: Cell<u32>,
    /// Open subscriptions: id -> the task writing its push stream.
    pub(super) subscriptions: RefCell<HashMap<u64, tokio::task::JoinHandle<()>>>,
    /// Subscriptions being set up (their slot is taken before the service answers).
    pub(super) joining: Cell<usize>,
    pub(super) next_subscription: Cell<u64>,
    /// The WebTransport session, for a browser's connection (`h3`).
    pub(super) wt: Option<webtransport::WtSession>,
    /// Set once a close with a WebTransport capsule is under way.
    pub(super) closing: Rc<Cell<bool>>,
    /// Whether QUIC allows this connection its full stream allowance yet (it starts
    /// with [`crate::INITIAL_STREAMS`]).
    pub(super) streams_raised: Cell<bool>,
    /// Requests started since the instant: the burst [`Conn::note_busy`] watches.
    pub(super) burst: Cell<(Instant, u32)>,
}

/// The most requests a connection takes from its address's bucket at a time, so that a
/// busy connection consults the shared, keyed bucket once per this many requests rather
/// than for each. The lease grows with use (1, 2, 4, ... this many) and falls back to
/// one when the bucket is short, so a connection making a few requests takes only what
/// it makes, and one that closes leaves fewer unused than it made. Taken in advance,
/// never on credit: over any window an address makes at most what its bucket allowed
/// plus what its busy connections took before it (under `IP_LEASE` each).
pub(super) const IP_LEASE: u32 = 16;

/// The window in which [`Conn::note_busy`] counts a burst of requests.
const BURST_WINDOW: Duration = Duration::from_secs(1);

impl Conn {
    /// Called with each new request (started at `now`): a connection that has half of
    /// its initial stream allowance in flight, or that started that many requests
    /// within a second (quick requests on a long round trip free their streams only
    /// when the client acknowledges the answers, so a client can be held by the
    /// allowance without the edge ever seeing many in flight), is told by QUIC that it
    /// may open the full allowance (a `MAX_STREAMS` frame). Idle connections keep the
    /// small allowance, and with it quinn's smaller stream maps.
    pub(super) fn note_busy(&self, limits: &crate::config::LimitsConfig, now: Instant) {
        if self.streams_raised.get() {
            return;
        }
        let (since, n) = self.burst.get();
        let (since, n) = if now.saturating_duration_since(since) > BURST_WINDOW {
            (now, 1)
        } else {
            (since, n + 1)
        };
        self.burst.set((since, n));
        let half = crate::INITIAL_STREAMS / 2;
        if self.inflight.get() >= half || n >= half {
            self.streams_raised.set(true);
            if let Link::Quic(c) = &self.conn {
                c.set_max_concurrent_bi_streams(VarInt::from_u32(crate::full_stream_allowance(
                    limits,
                )));
            }
        }
    }
}

/// Datagrams per second one connection may hand to the services (typing and presence
/// are latest-wins: a client needs a few a second at most).
const DATAGRAMS_PER_SECOND: u32 = 10;
/// Datagrams one connection may hand over at once.
const DATAGRAM_BURST: u32 = 20;

/// Subscriptions one connection may hold at once.
pub(super) const MAX_SUBSCRIPTIONS: usize = 64;

impl Drop for Conn {
    fn drop(&mut self) {
        for (_, task) in self.subscriptions.borrow_mut().drain() {
            task.abort();
        }
    }
}

impl Conn {
    /// Closes the connection with `code`, counted: for a browser's WebTransport session
    /// with a `CLOSE_WEBTRANSPORT_SESSION` capsule first (its page reads the code).
    pub(super) fn close(&self, shard: &Shard, code: ErrorCode, reason: &str) {
        count_close(shard, code);
        self.end(u32::from(code.0), reason.as_bytes());
    }

    /// Closes the connection (not counted): see [`Conn::close`].
    pub(super) fn end(&self, code: u32, reason: &[u8]) {
        match &self.wt {
            Some(wt) => {
                self.closing.set(true);
                wt.close(&self.conn, code, reason);
            }
            None => self.conn.close(code, reason),
        }
    }

    /// The stream error code that carries `code` to this client: the number itself, or
    /// for a WebTransport session its mapping into HTTP/3's range (so that a browser
    /// reads `streamErrorCode = code`).
    pub(super) fn code(&self, code: ErrorCode) -> VarInt {
        let n = u32::from(code.0);
        match &self.wt {
            Some(wt) => wt.prefixes().stream_error(n),
            None => VarInt::from_u32(n),
        }
    }

    /// Records a violation that does not close the connection by itself (only past the
    /// limit of protocol errors).
    pub(super) fn tolerated_violation(&self, shard: &Shard, code: ErrorCode) {
        shard.count_protocol_error(code);
        let n = self.protocol_errors.get() + 1;
        self.protocol_errors.set(n);
        if n > shard.shared.config.limits.max_protocol_errors {
            self.close(shard, code, "too many protocol errors");
        }
    }

    /// Records a protocol violation; closes the connection past the limit.
    pub(super) fn violation(&self, shard: &Shard, code: ErrorCode) {
        shard.count_protocol_error(code);
        let n = self.protocol_errors.get() + 1;
        self.protocol_errors.set(n);
        if n > shard.shared.config.limits.max_protocol_errors || code.closes_connection() {
            self.close(shard, code, "protocol violation");
        }
    }
}

pub(super) fn close_for(shard: &Shard, conn: &Link, code: ErrorCode, reason: &str) {
    count_close(shard, code);
    conn.close(u32::from(code.0), reason.as_bytes());
}

fn count_close(shard: &Shard, code: ErrorCode) {
    shard
        .shared
        .metrics
        .connections_closed_total
        .get_or_create(&CodeLabels {
            shard: shard.id as u16,
            code: code.label(),
        })
        .inc();
}

/// Closes a connection when the task serving it ends, however it ends: the tasks that
/// watch its other streams (HTTP/3 control, the `CONNECT` stream, refused
/// unidirectional streams) hold it too, and must not keep it open past its session.
/// When a close with a WebTransport capsule is under way (`closing`), that close ends
/// the connection itself, moments later: the capsule must not be cut off.
struct CloseOnDrop(Link, Rc<Cell<bool>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if !self.1.get() {
            self.0.close(0, b"session ended");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("timed out waiting for Hello")]
    HelloTimeout,
    #[error("stream: {0}")]
    Stream(#[from] LinkError),
    #[error("frame: {0}")]
    Codec(#[from] CodecError),
    #[error("refused: {0:?}")]
    Refused(ErrorCode),
}

/// Reads bytes into `dec` until a frame is complete; `Ok(None)` at a clean end of stream.
pub(super) async fn read_frame(
    recv: &mut RecvHalf,
    dec: &mut FrameDecoder,
) -> Result<Option<Frame>, ConnError> {
    loop {
        if let Some(frame) = dec.next_frame()? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(64 * 1024).await? {
            Some(chunk) => dec.push(chunk),
            None => {
                dec.finish()?;
                return Ok(None);
            }
        }
    }
}

pub(super) async fn serve_connection(
    shard: &Rc<Shard>,
    conn_id: u64,
    incoming: Incoming,
) -> Result<(), ConnError> {
    let limits = &shard.shared.config.limits;
    let handshake_deadline = Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
    let connecting = incoming.accept()?;
    // The handshake's futures are boxed (here and below): they are done with once the
    // session runs, and unboxed they would size the connection's task, which lives as
    // long as the connection does, for their largest state.
    let conn = match Box::pin(tokio::time::timeout_at(
        handshake_deadline.into(),
        connecting,
    ))
    .await
    {
        Ok(c) => c?,
        Err(_) => {
            count_connection(shard, "handshake_timeout");
            return Err(ConnError::HelloTimeout);
        }
    };
    let closing = Rc::new(Cell::new(false));
    let _closer = CloseOnDrop(Link::Quic(conn.clone()), closing.clone());
    // The handshake proved the address: it may now hold one of its slots.
    let Some(_address) = AddressSlot::take(&shard.shared, conn.remote_address().ip()) else {
        count_connection(shard, "refused_address");
        close_for(
            shard,
            &Link::Quic(conn),
            ErrorCode::TooManyConnections,
            "too many connections from this address",
        );
        return Err(ConnError::Refused(ErrorCode::TooManyConnections));
    };
    count_connection(shard, "accepted");

    // A browser's connection first becomes a WebTransport session (within the same
    // deadline); a native one may open no unidirectional streams.
    let wt = if webtransport::alpn(&conn).as_deref() == Some(webtransport::H3_ALPN) {
        let count = |outcome| {
            shard
                .shared
                .metrics
                .webtransport_sessions_total
                .get_or_create(&OutcomeLabels {
                    shard: shard.id as u16,
                    outcome,
                })
                .inc();
        };
        let decided = Cell::new(false);
        let accepted = Box::pin(tokio::time::timeout_at(
            handshake_deadline.into(),
            webtransport::accept(&conn, &shard.shared.origins, |outcome| {
                decided.set(true);
                count(outcome);
            }),
        ))
        .await
        .unwrap_or(Err(webtransport::Refused { label: "timeout" }));
        if let Err(refused) = &accepted
            && !decided.get()
        {
            // Refused before a request was read (timeout, malformed, closed).
            count(refused.label);
        }
        match accepted {
            Ok(wt) => Some(wt),
            Err(refused) => {
                if refused.label == "timeout" {
                    close_for(
                        shard,
                        &Link::Quic(conn),
                        ErrorCode::HandshakeTimeout,
                        "no CONNECT in time",
                    );
                }
                return Err(ConnError::Refused(ErrorCode::HelloRequired));
            }
        }
    } else {
        tokio::task::spawn_local(webtransport::refuse_uni_streams(conn.clone()));
        None
    };
    let ip = conn.remote_address().ip().to_canonical();
    run_session(
        shard,
        conn_id,
        Link::Quic(conn),
        wt,
        ip,
        handshake_deadline,
        closing,
    )
    .await
}

/// A session on an established connection, whatever its transport: `Hello` →
/// `Welcome` within the handshake deadline, then requests, the control stream and
/// datagrams until the client leaves or the edge drains.
pub(super) async fn run_session(
    shard: &Rc<Shard>,
    conn_id: u64,
    conn: Link,
    wt: Option<webtransport::WtSession>,
    ip: IpAddr,
    handshake_deadline: Instant,
    closing: Rc<Cell<bool>>,
) -> Result<(), ConnError> {
    let _closer = CloseOnDrop(conn.clone(), closing.clone());
    let limits = &shard.shared.config.limits;

    // The control stream: Hello -> Welcome, within the handshake deadline.
    let hello = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .ok_or(ConnError::Stream(LinkError::Ws(StreamError::Closed)))?;
        if let Some(wt) = &wt
            && let Err(code) = wt.read_stream_header(&mut recv).await
        {
            recv.stop(VarInt::from_u32(code));
            return Err(ConnError::Refused(ErrorCode::HelloRequired));
        }
        let mut dec = FrameDecoder::new(shard.limits);
        let frame = read_frame(&mut recv, &mut dec).await?;
        Ok::<_, ConnError>((send, recv, dec, frame))
    };
    let (mut ctl_send, ctl_recv, ctl_dec, frame) =
        match Box::pin(tokio::time::timeout_at(handshake_deadline.into(), hello)).await {
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
    ctl_send.set_priority(selfie_protocol::Priority::Control.quic_priority());
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
            Box::pin(async {
                if let Some(bytes) = shard.error_frame(hello_id, &e) {
                    let _ = ctl_send.write_all(&bytes).await;
                    ctl_send.finish().await;
                }
                // Give the error frame a moment to leave before the close.
                let _ = tokio::time::timeout(Duration::from_secs(1), ctl_send.stopped()).await;
            })
            .await;
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
    let state = Rc::new(Conn {
        id: conn_id,
        ip,
        conn: conn.clone(),
        limiter: RateLimiter::direct_with_clock(
            Quota::per_second(per_second(limits.connection_requests_per_second))
                .allow_burst(per_second(limits.connection_request_burst)),
            selfie_services::rate::clock(),
        ),
        ip_tokens: Cell::new(0),
        ip_lease: Cell::new(1),
        datagram_limiter: RateLimiter::direct_with_clock(
            Quota::per_second(per_second(DATAGRAMS_PER_SECOND))
                .allow_burst(per_second(DATAGRAM_BURST)),
            selfie_services::rate::clock(),
        ),
        session,
        inflight: Cell::new(0),
        protocol_errors: Cell::new(0),
        subscriptions: RefCell::new(HashMap::new()),
        joining: Cell::new(0),
        next_subscription: Cell::new(1),
        wt,
        closing,
        streams_raised: Cell::new(false),
        burst: Cell::new((Instant::now(), 0)),
    });
    // Registered before `Welcome` is written: a revocation announced meanwhile finds the
    // connection (one announced before `Hello` was checked refused the token there).
    if let Some(p) = &state.session.principal {
        let mut sessions = shard.sessions.borrow_mut();
        let entry = sessions.entry(p.session_id).or_default();
        entry.retain(|w| w.strong_count() > 0);
        entry.push(Rc::downgrade(&state));
    }
    let welcome = shard.encode(|b| {
        let node_id = b.create_string(&shard.shared.config.server.node_id);
        let v = state.session.version.to_wire();
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
                user_id: state.session.principal.as_ref().map_or(0, |p| p.user_id),
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
        Box::pin(ctl_send.write_all(&bytes)).await?;
    }

    // Datagrams and the control stream run in their own tasks, so that the accept loop
    // below polls only for new request streams (starting each, and answering the pings
    // that came whole, in `start_request`) and the drain signal.
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
                let Some((send, recv)) = stream else {
                    return Ok(());
                };
                // A debug-level span: free unless debug logging is on for this module.
                let span = tracing::debug_span!("request", stream = %send.id());
                start_request(shard, &state, send, recv, span);
                // quinn's `accept_bi` spends no coop budget, and pings are answered in
                // this loop: yield now and then to the shard's other connections.
                tokio::task::consume_budget().await;
            }
        }
    }
    // Drain: tell the client where to go, finish in-flight requests, then close (boxed,
    // like the handshake: only a draining connection needs its state).
    Box::pin(async {
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
    })
    .await;
    state.end(u32::from(ErrorCode::Draining.0), b"draining");
    Ok(())
}

/// Datagrams of one connection: verified and counted (presence and typing handlers plug
/// in here with the chat issue).
async fn datagram_loop(shard: Rc<Shard>, state: Rc<Conn>) {
    while let Some(bytes) = state.conn.read_datagram().await {
        let bytes = match &state.wt {
            None => Some(bytes),
            Some(wt) => wt.datagram_payload(bytes),
        };
        let Some(bytes) = bytes else {
            // Not this session's (another session id, or no valid prefix).
            state.tolerated_violation(&shard, ErrorCode::MalformedFrame);
            shard
                .shared
                .metrics
                .datagrams_total
                .get_or_create(&OutcomeLabels {
                    shard: shard.id as u16,
                    outcome: "malformed",
                })
                .inc();
            continue;
        };
        let outcome = match selfie_codec::decode_datagram(bytes, &shard.limits) {
            Ok(frame) => {
                let user = state.session.principal.as_ref().map(|p| p.user_id);
                match (user, shard.registry.datagrams()) {
                    (None, _) => "anonymous",
                    (Some(_), None) => "unhandled",
                    (Some(_), Some(_)) if state.datagram_limiter.check().is_err() => "rate_limited",
                    (Some(user), Some(handler)) => match handler.datagram(user, frame).await {
                        Ok(()) => "ok",
                        Err(e) => {
                            debug!(error = %e, "datagram refused");
                            "refused"
                        }
                    },
                }
            }
            Err(e) => {
                // Datagrams have no stream to answer on, and one of a type this build
                // does not know (a newer client's) must not end the session: a bad one
                // is dropped and counted, and only repeated ones close the connection
                // (protocol/README.md, "Datagrams").
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
    send: Rc<tokio::sync::Mutex<SendHalf>>,
    mut recv: RecvHalf,
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
                state.end(0, b"control stream closed");
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

/// Frames on the control stream after `Welcome`: `Ping` is answered (rate-limited and
/// counted like any request); anything else is a protocol violation.
async fn on_control(
    shard: &Rc<Shard>,
    state: &Rc<Conn>,
    send: &mut SendHalf,
    frame: Frame,
) -> Result<(), ConnError> {
    let started = Instant::now();
    let env = frame.envelope();
    match env.body_as_control().and_then(|c| c.op_as_ping()) {
        Some(ping) => {
            let answer = match super::request::admit_rate(shard, state) {
                Ok(()) => shard.pong(env.id(), ping.nonce(), started),
                Err(reply) => {
                    super::request::record(shard, "control", reply.code.label(), started);
                    if let Some(bytes) = shard.error_frame(env.id(), &reply) {
                        send.write_all(&bytes).await?;
                    }
                    return Ok(());
                }
            };
            if let Some(bytes) = answer {
                send.write_all(&bytes).await?;
            }
            super::request::record_ok(shard, Service::Control, started);
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
