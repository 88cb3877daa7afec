//! One request stream: admission (concurrency, rate limits, session rights), dispatch to
//! the owner shard's service, subscriptions, metrics.

use super::connection::{Conn, ConnError, IP_LEASE, MAX_SUBSCRIPTIONS, read_frame};
use super::link::{RecvHalf, SendHalf};
use super::*;

/// Milliseconds until a rate limiter would allow the next request (at least 1).
fn retry_after_ms(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u32 {
    selfie_services::rate::wait_until(not_until)
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

/// The per-connection and per-address request rates: `Err` with the refusal when either
/// is exceeded. Every request, control-stream `Ping`s included, passes here; an admitted
/// one restarts the shard's busy-poll window (refused ones do not: a flood of streams
/// that are refused keeps no shard polling).
pub(super) fn admit_rate(shard: &Shard, state: &Conn) -> Result<(), ErrorReply> {
    let verdict = check_rates(shard, state);
    if verdict.is_ok() {
        shard.note_activity();
    }
    verdict
}

fn check_rates(shard: &Shard, state: &Conn) -> Result<(), ErrorReply> {
    if let Err(not_until) = state.limiter.check() {
        return Err(
            ErrorReply::new(ErrorCode::RateLimited, "connection request rate exceeded")
                .retry_after(retry_after_ms(&not_until)),
        );
    }
    // The address's bucket, a lease of requests at a time (see `IP_LEASE`); one by one
    // when the bucket is short.
    if let Some(left) = state.ip_tokens.get().checked_sub(1) {
        state.ip_tokens.set(left);
        return Ok(());
    }
    let lease = state.ip_lease.get().clamp(1, IP_LEASE);
    if let Some(n) = std::num::NonZeroU32::new(lease)
        && let Ok(Ok(())) = shard.ip_limiter.check_key_n(&state.ip, n)
    {
        state.ip_tokens.set(lease - 1);
        state.ip_lease.set((lease * 2).min(IP_LEASE));
        return Ok(());
    }
    state.ip_lease.set(1);
    if let Err(not_until) = shard.ip_limiter.check_key(&state.ip) {
        return Err(
            ErrorReply::new(ErrorCode::RateLimited, "address request rate exceeded")
                .retry_after(retry_after_ms(&not_until)),
        );
    }
    Ok(())
}

/// Answers `reply` on the stream, then records the violation (which may close the
/// connection): a closing violation first waits briefly for the answer to be delivered,
/// since a close discards unsent stream data. Boxed, as [`respond_error`] is.
fn refuse_and_violate<'a>(
    shard: &'a Shard,
    state: &'a Conn,
    send: &'a mut SendHalf,
    id: u64,
    reply: &'a ErrorReply,
    label: &'static str,
    started: Instant,
) -> futures::future::LocalBoxFuture<'a, ()> {
    Box::pin(async move {
        respond_error(shard, state, send, id, reply, label, started).await;
        if reply.code.closes_connection() {
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        }
        state.violation(shard, reply.code);
    })
}

/// A request stream from its start: its halves, its decoder, the one clock read and its
/// in-flight slot.
struct RequestStream {
    send: SendHalf,
    recv: RecvHalf,
    dec: FrameDecoder,
    started: Instant,
    guard: InflightGuard,
}

/// How a request's task starts: decided in the accept loop, in the order the streams
/// arrived.
enum Start {
    /// Over the connection's limit of requests in flight: refused unread.
    OverLimit,
    /// Nothing read yet.
    Unread,
    /// The first frame, read by [`start_request`] (`Ok(None)`: the stream ended without
    /// one).
    Read(Result<Option<Frame>, ConnError>),
}

/// Each request stream the accept loop takes starts here. When its whole request came
/// with it and is a `Ping` (keep-alives and RTT probes, the most frequent request), it is
/// answered here, without a task (an answer that must wait for room gets one task of its
/// own); otherwise its task is spawned, with what was read.
pub(super) fn start_request(
    shard: &Rc<Shard>,
    state: &Rc<Conn>,
    send: SendHalf,
    recv: RecvHalf,
    span: tracing::Span,
) {
    let _entered = span.enter();
    let started = Instant::now();
    shard.hot.streams.inc();
    state.inflight.set(state.inflight.get() + 1);
    let guard = InflightGuard(state.clone());
    let limits = &shard.shared.config.limits;
    state.note_busy(limits, started);
    let mut stream = RequestStream {
        send,
        recv,
        dec: FrameDecoder::new(shard.limits),
        started,
        guard,
    };
    // Over the limit: refused before a byte is read (nothing buffered for it), the
    // streams over it and not the ones before them.
    let mut start = if state.inflight.get() > limits.max_concurrent_streams {
        Start::OverLimit
    } else {
        Start::Unread
    };
    // A WebTransport stream names its session first: read in the task.
    if matches!(start, Start::Unread) && state.wt.is_none() {
        // Dropped when not complete: what it read is kept in the decoder.
        if let Some(read) =
            futures::FutureExt::now_or_never(read_frame(&mut stream.recv, &mut stream.dec))
        {
            start = Start::Read(read);
        }
        if let Start::Read(Ok(Some(frame))) = start {
            match ping_at_once(shard, state, stream, frame) {
                Ping::Answered => return,
                Ping::Blocked(pong) => {
                    let (shard, state) = (shard.clone(), state.clone());
                    tokio::task::spawn_local(
                        async move { pong.finish(&shard, &state).await }.instrument(span.clone()),
                    );
                    return;
                }
                Ping::Other(back, frame) => {
                    stream = back;
                    start = Start::Read(Ok(Some(frame)));
                }
            }
        }
    }
    drop(_entered);
    // Under tokio's boxing threshold (2 KiB in debug builds, 16 KiB in release), so the
    // task is the request's one allocation; rare paths are boxed inside `serve_request`
    // to keep it so (`tests/allocations.rs` fails when it grows past). Spawned as it is,
    // not inside an `async` block, which would hold a second copy of its arguments.
    tokio::task::spawn_local(
        serve_request(shard.clone(), state.clone(), stream, start).instrument(span),
    );
}

/// What [`ping_at_once`] did with a request.
enum Ping {
    /// Answered or refused at once (or nothing could be encoded: counted, nothing sent).
    Answered,
    /// A `Ping` whose answer has to wait for room on the stream.
    Blocked(BlockedPong),
    /// Not a `Ping`: the stream and the frame, handed back.
    Other(RequestStream, Frame),
}

/// A `Ping`'s answer (or refusal) that could not be written at once.
struct BlockedPong {
    send: SendHalf,
    rest: Bytes,
    len: u64,
    started: Instant,
    refused: Option<ErrorCode>,
    _guard: InflightGuard,
}

impl BlockedPong {
    /// Writes the answer when the stream has room (or abandons it after the idle
    /// timeout), then counts it as [`ping_at_once`] counts one written at once.
    async fn finish(mut self, shard: &Shard, state: &Conn) {
        answer(shard, state, &mut self.send, self.rest).await;
        count_ping(shard, self.refused, self.started, self.len);
    }
}

/// Finishes a [`Ping::Blocked`] answer (nothing to do for the other variants).
async fn finish_blocked(ping: Ping, shard: &Shard, state: &Conn) {
    if let Ping::Blocked(pong) = ping {
        pong.finish(shard, state).await;
    }
}

/// Counts a `Ping`'s answer as `serve_request` counts an answer or a refusal.
fn count_ping(shard: &Shard, refused: Option<ErrorCode>, started: Instant, len: u64) {
    match refused {
        None => {
            shard.hot.sent.inc_by(len);
            record_ok(shard, Service::Control, started);
        }
        Some(code) => record(shard, Service::Control.name(), code.label(), started),
    }
}

/// Answers a `Ping` without waiting when it can, as [`serve_request`] answers a request
/// (admission, the answer's priority, metrics), or hands the stream and the frame back
/// when the request is not a `Ping`. A refusal's or an answer's write that has to wait
/// is handed back too ([`Ping::Blocked`]), for the caller's task to finish.
fn ping_at_once(shard: &Rc<Shard>, state: &Rc<Conn>, stream: RequestStream, frame: Frame) -> Ping {
    let env = frame.envelope();
    let Some(nonce) = env
        .body_as_control()
        .and_then(|c| c.op_as_ping())
        .map(|p| p.nonce())
    else {
        return Ping::Other(stream, frame);
    };
    let id = env.id();
    let RequestStream {
        mut send,
        mut recv,
        dec,
        started,
        guard,
    } = stream;
    shard.hot.received.inc_by(frame.as_bytes().len() as u64);
    send.set_priority(selfie_protocol::Priority::Control.quic_priority());
    let verdict = admit_rate(shard, state).and_then(|()| {
        if state.session.may_call(Service::Control) {
            Ok(())
        } else {
            Err(ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"))
        }
    });
    drop(dec);
    recv.take_end();
    drop(recv);
    let (bytes, refused) = match verdict.and_then(|()| {
        shard
            .pong(id, nonce, started)
            .ok_or_else(|| ErrorReply::new(ErrorCode::Internal, "encode failed"))
    }) {
        Ok(bytes) => (Some(bytes), None),
        Err(reply) => {
            debug!(code = %reply.code, "request refused");
            (shard.error_frame(id, &reply), Some(reply.code))
        }
    };
    let Some(bytes) = bytes else {
        count_ping(shard, refused, started, 0);
        return Ping::Answered;
    };
    let len = bytes.len() as u64;
    // Refusals too are written here when they can be: a flood of pings refused by the
    // rate limits must not pile up tasks that each hold an in-flight slot.
    match send.try_write_last(bytes) {
        Ok(_) => {
            count_ping(shard, refused, started, len);
            Ping::Answered
        }
        Err(rest) => Ping::Blocked(BlockedPong {
            send,
            rest,
            len,
            started,
            refused,
            _guard: guard,
        }),
    }
}

/// A request's task: refuses it when it came over the limit, reads its frame (unless
/// [`start_request`] did), admits it, calls its service and answers.
async fn serve_request(shard: Rc<Shard>, state: Rc<Conn>, mut stream: RequestStream, start: Start) {
    // The arguments are the task's state: used in place, not moved into locals (which
    // would be a second copy in the task).
    let (shard, state) = (&shard, &state);
    let (send, recv, started) = (&mut stream.send, &mut stream.recv, stream.started);
    let limits = &shard.shared.config.limits;
    let read = match start {
        Start::OverLimit => {
            recv.stop(state.code(ErrorCode::TooManyStreams));
            let reply = ErrorReply::new(ErrorCode::TooManyStreams, "too many requests in flight")
                .retry_after(10);
            respond_error(shard, state, send, 0, &reply, "unknown", started).await;
            return;
        }
        Start::Read(read) => Ok(read),
        Start::Unread => {
            let dec = &mut stream.dec;
            let deadline = Duration::from_millis(limits.request_read_timeout_ms);
            let read = async {
                // A WebTransport stream names its session before its first frame (boxed:
                // a browser's path, kept out of every request's task).
                if let Some(wt) = &state.wt
                    && let Err(code) = Box::pin(wt.read_stream_header(recv)).await
                {
                    recv.stop(VarInt::from_u32(code));
                    return Err(ConnError::Codec(CodecError::Malformed {
                        reason: "not a stream of this WebTransport session",
                    }));
                }
                read_frame(recv, dec).await
            };
            // Usually the whole request came with the stream: read at once, no timer
            // armed. Otherwise the deadline from the request's one clock read (no second
            // read for the timer), boxed with its timer: a slow client's path.
            let mut read = std::pin::pin!(read);
            match futures::FutureExt::now_or_never(read.as_mut()) {
                Some(read) => Ok(read),
                None => Box::pin(tokio::time::timeout_at((started + deadline).into(), read)).await,
            }
        }
    };
    let (send, recv) = (&mut stream.send, &mut stream.recv);
    let read = match read {
        Ok(read) => read,
        Err(_) => {
            // Half a request, then silence: whatever was buffered goes now.
            recv.stop(state.code(ErrorCode::Timeout));
            let reply = ErrorReply::new(ErrorCode::Timeout, "request not received in time");
            respond_error(shard, state, send, 0, &reply, "unknown", started).await;
            return;
        }
    };
    let frame = match read {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            // An empty request stream.
            let reply = ErrorReply::new(ErrorCode::TruncatedFrame, "empty request");
            refuse_and_violate(shard, state, send, 0, &reply, "unknown", started).await;
            return;
        }
        Err(ConnError::Codec(e)) => {
            recv.stop(state.code(e.code()));
            let reply = ErrorReply::new(e.code(), e.to_string());
            refuse_and_violate(shard, state, send, 0, &reply, "unknown", started).await;
            return;
        }
        Err(_) => return,
    };
    let (stream, frame) = match ping_at_once(shard, state, stream, frame) {
        Ping::Answered => return,
        Ping::Other(stream, frame) => (stream, frame),
        // The whole value moved into a box: a rare path, kept out of every request's
        // task (a partial move would keep the `Ping`'s storage in it across the await).
        blocked => return Box::pin(finish_blocked(blocked, shard, state)).await,
    };
    let RequestStream {
        mut send,
        mut recv,
        dec,
        started,
        guard: _guard,
    } = stream;
    shard.hot.received.inc_by(frame.as_bytes().len() as u64);
    let env = frame.envelope();
    let id = env.id();
    let body = env.body_type();
    // Streams start at priority 0 (Content): skip the call (it takes the connection lock).
    let priority = priority_of(body).quic_priority();
    if priority != 0 {
        send.set_priority(priority);
    }
    let Some(service) = Service::of(body) else {
        // Unreachable: the codec refuses unknown services.
        return;
    };
    let label = service.name();
    // Admission: per-connection and per-IP rates, session rights.
    let verdict = admit_rate(shard, state).and_then(|()| {
        if state.session.may_call(service) {
            Ok(())
        } else {
            Err(ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"))
        }
    });
    if let Err(reply) = verdict {
        respond_error(shard, state, &mut send, id, &reply, label, started).await;
        return;
    }
    if service == Service::Media {
        use selfie_protocol::media::MediaOp;
        let op = env.body_as_media().map(|m| m.op_type());
        if let Some(op @ (MediaOp::UploadChunkHeader | MediaOp::DownloadRequest)) = op {
            let upload = op == MediaOp::UploadChunkHeader;
            let raw = Raw {
                send,
                recv,
                dec,
                frame,
                started,
            };
            // Boxed: a rare path, kept out of every request's task (see `serve_request`).
            Box::pin(serve_raw(shard, state, raw, upload)).await;
            return;
        }
    }
    // Neither is needed past here: dropped now, they are not kept in the task's state
    // across the awaits below.
    drop(dec);
    recv.take_end();
    drop(recv);
    let result = if service == Service::Control {
        // (`Ping`s were answered by `ping_at_once`.)
        let control = env.body_as_control();
        if let Some(req) = control.and_then(|c| c.op_as_subscribe_request()) {
            Box::pin(subscribe(shard, state, id, req.kind(), frame.clone())).await
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
            // `Hello` again, `Welcome`, a push header...: a protocol violation, which
            // closes the connection once the answer is delivered.
            let reply = ErrorReply::new(ErrorCode::UnexpectedMessage, "not a request");
            refuse_and_violate(shard, state, &mut send, id, &reply, label, started).await;
            return;
        }
    } else {
        match shard.registry.get(service) {
            None => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "service not available on this edge",
            )),
            Some(svc) => {
                let owner = svc
                    .owner_key(state.session.principal.as_ref().map(|p| p.user_id), &env)
                    .map(|k| shard.shared.plane.shards().owner_of(k));
                let ctx = context(shard, state, owner.unwrap_or(shard.id));
                let answer = match owner {
                    Some(o) if o != shard.id => {
                        shard.hot.forwarded.inc();
                        let plane = &shard.shared.plane;
                        plane.shards().forward(o, service, ctx, frame.clone()).await
                    }
                    _ => svc.handle(shard.registry.call(ctx, frame.clone())).await,
                };
                answer.map_err(|e| reply_to(&e))
            }
        }
    };
    match result {
        Ok(bytes) => {
            // `write_chunks` hands quinn the `Bytes` itself: no copy into its buffer (and
            // no clone, which would allocate for a `Bytes` made from a `Vec`).
            let len = bytes.len() as u64;
            answer(shard, state, &mut send, bytes).await;
            shard.hot.sent.inc_by(len);
            record_ok(shard, service, started);
        }
        Err(reply) => respond_error(shard, state, &mut send, id, &reply, label, started).await,
    }
}

/// A request whose bytes travel raw beside its frames: its streams, the decoder (holding
/// whatever arrived after the header frame) and the header frame.
struct Raw {
    send: SendHalf,
    recv: RecvHalf,
    dec: FrameDecoder,
    frame: Frame,
    started: Instant,
}

/// Serves a media chunk (the header frame, then its bytes up to the end of the request
/// stream) or a download (the `DownloadHeader` frame, then the bytes) on this shard.
async fn serve_raw(shard: &Rc<Shard>, state: &Rc<Conn>, raw: Raw, upload: bool) {
    use futures::StreamExt;
    let Raw {
        mut send,
        recv,
        mut dec,
        frame,
        started,
    } = raw;
    let (id, label) = (frame.id(), Service::Media.name());
    let Some(handler) = shard.registry.raw_streams().cloned() else {
        let reply = ErrorReply::new(ErrorCode::Unavailable, "media not available on this edge");
        respond_error(shard, state, &mut send, id, &reply, label, started).await;
        return;
    };
    let call = shard.registry.call(context(shard, state, shard.id), frame);
    if upload {
        // What the decoder read past the header, then the rest of the stream.
        let rest = futures::stream::iter(dec.take_rest().into_iter().map(Ok));
        let more = futures::stream::unfold(Some(recv), |recv| async move {
            let mut recv = recv?;
            match recv.read_chunk(64 * 1024).await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(recv))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        });
        let received = shard.hot.received.clone();
        let body = rest
            .chain(more)
            .inspect(move |piece| {
                if let Ok(b) = piece {
                    received.inc_by(b.len() as u64);
                }
            })
            .boxed_local();
        match handler.upload(call, body).await {
            Ok(bytes) => {
                let len = bytes.len() as u64;
                answer(shard, state, &mut send, bytes).await;
                shard.hot.sent.inc_by(len);
                record_ok(shard, Service::Media, started);
            }
            Err(e) => {
                respond_error(shard, state, &mut send, id, &reply_to(&e), label, started).await
            }
        }
        return;
    }
    drop(recv);
    match handler.download(call).await {
        Ok(download) => {
            let mut sent = download.header.len() as u64;
            if send.write_chunk(download.header).await.is_err() {
                return;
            }
            // A client that stops reading is dropped after the idle timeout, with the
            // download's open file and buffered pieces.
            let stall = Duration::from_millis(shard.shared.config.limits.idle_timeout_ms);
            let mut body = download.body;
            while let Some(piece) = body.next().await {
                match piece {
                    Ok(bytes) => {
                        sent += bytes.len() as u64;
                        match send.write_chunk_within(bytes, stall).await {
                            Some(Ok(())) => {}
                            Some(Err(_)) => {
                                shard.hot.sent.inc_by(sent);
                                return;
                            }
                            None => {
                                debug!("download not read in time: abandoned");
                                send.reset(state.code(ErrorCode::Timeout)).await;
                                shard.count_protocol_error(ErrorCode::Timeout);
                                shard.hot.sent.inc_by(sent);
                                record(shard, label, ErrorCode::Timeout.label(), started);
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "download failed");
                        send.reset(state.code(ErrorCode::Internal)).await;
                        shard.hot.sent.inc_by(sent);
                        record(shard, label, ErrorCode::Internal.label(), started);
                        return;
                    }
                }
            }
            send.finish().await;
            shard.hot.sent.inc_by(sent);
            record_ok(shard, Service::Media, started);
        }
        Err(e) => respond_error(shard, state, &mut send, id, &reply_to(&e), label, started).await,
    }
}

/// Who asked, for a service handling the request on `on`.
fn context(shard: &Shard, state: &Conn, on: ShardId) -> RequestContext {
    RequestContext {
        principal: state.session.principal.clone(),
        origin_shard: shard.id,
        shard: on,
        connection: state.id,
        peer_ip: state.ip,
    }
}

/// A service's error as the client sees it; faults of the server are logged here with
/// their details, which the reply leaves out (refusals a client can cause at will, such as
/// an operation this build does not offer, are not).
fn reply_to(e: &selfie_services::Error) -> ErrorReply {
    if e.is_server_fault() {
        warn!(error = %e, "request failed");
    }
    ErrorReply::from(e)
}

/// Opens a subscription: the service checks that the caller may follow the target and
/// joins its topic on the delivery plane; a task writes the push stream (header, the
/// service's first frames, then the topic's events). A subscriber that falls behind, or
/// whose topic lost events, has its stream reset with `ResyncRequired`.
async fn subscribe(
    shard: &Rc<Shard>,
    state: &Rc<Conn>,
    id: u64,
    kind: selfie_protocol::control::SubscriptionKind,
    frame: Frame,
) -> Result<Bytes, ErrorReply> {
    use selfie_protocol::control::{
        PushStreamHeader, PushStreamHeaderArgs, SubscribeResponse, SubscribeResponseArgs,
    };
    use selfie_services::plane::SubscriberEvent;
    let service = selfie_services::plane::subscription_service(kind)
        .ok_or_else(|| ErrorReply::new(ErrorCode::InvalidArgument, "unknown subscription kind"))?;
    if !state.session.may_call(service) {
        return Err(ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"));
    }
    // The slot is reserved before the service is asked (which awaits), so a burst of
    // subscribes cannot overshoot the limit.
    if state.subscriptions.borrow().len() + state.joining.get() >= MAX_SUBSCRIPTIONS {
        return Err(
            ErrorReply::new(ErrorCode::TooManyStreams, "too many subscriptions").retry_after(1000),
        );
    }
    let svc = shard.registry.get(service).ok_or_else(|| {
        ErrorReply::new(ErrorCode::Unavailable, "service not available on this edge")
    })?;
    let call = shard.registry.call(context(shard, state, shard.id), frame);
    state.joining.set(state.joining.get() + 1);
    let sub = svc.subscribe(kind, call).await;
    state.joining.set(state.joining.get() - 1);
    let selfie_services::plane::Subscription {
        initial,
        events,
        hold,
    } = sub.map_err(|e| reply_to(&e))?;
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
    let priority = selfie_protocol::priority_of_service(service).quic_priority();
    // Typing and presence go out as datagrams, not on the push stream.
    let mut datagrams = (kind == selfie_protocol::control::SubscriptionKind::Presence)
        .then(|| selfie_codec::Encoder::new(shard.limits));
    let datagram_metrics = shard.shared.metrics.datagrams_sent_total.clone();
    let shard_label = shard.id as u16;
    let conn = state.conn.clone();
    let wt = state.wt.as_ref().map(|wt| wt.prefixes());
    let weak = Rc::downgrade(state);
    let task = tokio::task::spawn_local(async move {
        let resync = u32::from(ErrorCode::ResyncRequired.0);
        let resync = wt
            .as_ref()
            .map_or(VarInt::from_u32(resync), |wt| wt.stream_error(resync));
        // However the stream ends (unsubscribe aborts the task instead), the slot goes.
        let pushed = async {
            let opened = match &wt {
                None => conn.open_uni().await,
                Some(wt) => wt.open_uni(&conn).await,
            };
            let Some(mut send) = opened else {
                return;
            };
            send.set_priority(priority);
            for bytes in std::iter::once(header).chain(initial) {
                if send.write_chunk(bytes).await.is_err() {
                    return;
                }
            }
            loop {
                match events.next().await {
                    SubscriberEvent::Event(bytes) if datagrams.is_some() => {
                        let sent = datagrams
                            .as_mut()
                            .and_then(|enc| signal_datagram(enc, bytes))
                            .map(|d| match &wt {
                                None => d,
                                Some(wt) => wt.datagram(&d),
                            })
                            .is_some_and(|d| conn.send_datagram(d));
                        let outcome = if sent { "sent" } else { "dropped" };
                        datagram_metrics
                            .get_or_create(&crate::metrics::OutcomeLabels {
                                shard: shard_label,
                                outcome,
                            })
                            .inc();
                    }
                    SubscriberEvent::Event(bytes) => {
                        tokio::select! {
                            written = send.write_chunk(bytes) => if written.is_err() { return },
                            () = events.overflowed() => {
                                send.reset(resync).await;
                                return;
                            }
                        }
                    }
                    SubscriberEvent::Resync => {
                        send.reset(resync).await;
                        return;
                    }
                }
            }
        };
        pushed.await;
        // What the service registered for this subscription ends with it.
        drop(hold);
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

/// A typing or presence event of the delivery plane as the datagram a client receives:
/// the topic's sequence becomes the datagram's `seq` (receivers keep the newest).
fn signal_datagram(enc: &mut selfie_codec::Encoder, bytes: Bytes) -> Option<Bytes> {
    use selfie_protocol::chat::ChatEventKind;
    use selfie_protocol::datagram::{
        Datagram, DatagramArgs, DatagramBody, Presence, PresenceArgs, Typing, TypingArgs,
    };
    let frame = Frame::verify(bytes, &selfie_codec::Limits::DEFAULT).ok()?;
    let env = frame.envelope();
    let e = env.body_as_chat()?.op_as_chat_event()?;
    let seq = env.id();
    let data = enc
        .encode_datagram(|b| {
            let (body_type, body) = match e.kind() {
                ChatEventKind::Typing => {
                    let t = Typing::create(
                        b,
                        &TypingArgs {
                            conversation_id: e.conversation_id(),
                            user_id: e.actor_id(),
                            typing: e.typing(),
                            at_ms: e.at_ms(),
                        },
                    );
                    (DatagramBody::Typing, t.as_union_value())
                }
                _ => {
                    let p = Presence::create(
                        b,
                        &PresenceArgs {
                            user_id: e.actor_id(),
                            status: e.presence(),
                            last_active_ms: e.last_active_ms(),
                            platform: Default::default(),
                        },
                    );
                    (DatagramBody::Presence, p.as_union_value())
                }
            };
            Datagram::create(
                b,
                &DatagramArgs {
                    seq,
                    body_type,
                    body: Some(body),
                },
            )
        })
        .ok()?;
    Some(Bytes::copy_from_slice(data))
}

/// Writes a whole answer and ends the stream; an answer the client has not taken within
/// the idle timeout is abandoned (`Timeout`), so that a client that never reads cannot
/// hold the request's task, stream and bytes (its frame's arena block among them).
async fn answer(shard: &Shard, state: &Conn, send: &mut SendHalf, bytes: Bytes) {
    let deadline = Duration::from_millis(shard.shared.config.limits.idle_timeout_ms);
    let handed = send
        .write_last_within(bytes, deadline, state.code(ErrorCode::Timeout))
        .await;
    if handed == super::link::Handed::Abandoned {
        debug!("answer not taken in time: abandoned");
        shard.count_protocol_error(ErrorCode::Timeout);
    }
}

/// Counts a successful request of `service` (the common case: its metric handles are
/// found by the service's index, without hashing the labels).
pub(super) fn record_ok(shard: &Shard, service: Service, started: Instant) {
    let Some(slot) = shard.hot.ok.get(service as usize) else {
        return record(shard, service.name(), "ok", started);
    };
    let (count, latency) = slot.get_or_init(|| request_metrics(shard, service.name(), "ok"));
    count.inc();
    latency.observe(started.elapsed().as_secs_f64());
}

/// Counts a request (or control `Ping`) under `service` and its result `code`.
pub(super) fn record(shard: &Shard, service: &'static str, code: &'static str, started: Instant) {
    let mut cache = shard.hot.requests.borrow_mut();
    let (count, latency) = cache
        .entry((service, code))
        .or_insert_with(|| request_metrics(shard, service, code));
    count.inc();
    latency.observe(started.elapsed().as_secs_f64());
}

/// This shard's request count and latency handles for `service` and `code`.
fn request_metrics(
    shard: &Shard,
    service: &'static str,
    code: &'static str,
) -> (Counter, Histogram) {
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
}

/// Answers `reply` and counts it. Boxed: a refusal's future holds an answer's write, and
/// unboxed it would size every request's task (moved into place at each spawn).
fn respond_error<'a>(
    shard: &'a Shard,
    state: &'a Conn,
    send: &'a mut SendHalf,
    id: u64,
    reply: &'a ErrorReply,
    service: &'static str,
    started: Instant,
) -> futures::future::LocalBoxFuture<'a, ()> {
    Box::pin(async move {
        // Floods produce many refusals; server faults were logged with their details
        // where they happened.
        debug!(code = %reply.code, "request refused");
        if let Some(bytes) = shard.error_frame(id, reply) {
            answer(shard, state, send, bytes).await;
        }
        record(shard, service, reply.code.label(), started);
    })
}
