//! HTTPS on TCP (`[web]`), served on every shard like QUIC: each shard accepts on its
//! own `SO_REUSEPORT` listener and serves its connections on its own thread (HTTP/1.1
//! over rustls, by hyper). It serves signed media URLs (`GET`/`HEAD /media/...`) for
//! browsers and CDNs: the media service checks the signature, the expiry and the
//! viewer's right ([`selfie_services::media::Media::signed`]); this module speaks HTTP:
//! single byte ranges (`206`, `416`), `ETag` with `If-None-Match` and `If-Range`,
//! `Cache-Control` bounded by the URL's expiry, and headers that keep browsers from
//! running anything it serves. It also serves the built web client (`web.client_dir`,
//! [`crate::webapp`], with a CSP that runs only its own scripts) and upgrades `GET /ws`
//! to the WebSocket fallback ([`super::ws`]), whose session is then a connection of the
//! shard like a QUIC one.
//!
//! Protection: at most `web.max_connections_per_shard` connections, and per client
//! address the QUIC connection cap (`limits.max_connections_per_address`, one count for
//! both) and request rate (which TLS handshakes spend too); TLS and each request's
//! headers within `web.header_timeout_ms`, and an answer whose reader takes nothing for
//! that long is cut (slow readers cannot pin connections); heads at most 16 KiB; all
//! counted in `selfie_edge_web_*`. On drain the listener stops accepting, open
//! connections finish their current answer, and the shard waits for them up to the
//! drain deadline.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use selfie_protocol::ErrorCode;
use tracing::{Instrument, debug, info_span, warn};

use super::{AddressSlot, Shard, now_ms};
use crate::metrics::{OutcomeLabels, StatusLabels};

/// Where the WebSocket fallback is upgraded ([`super::ws`]).
pub const WEBSOCKET_PATH: &str = "/ws";

/// Largest request head (request line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest time a cache may keep an answer, whatever the URL's expiry.
const MAX_CACHE_SECONDS: u64 = 24 * 3600;

/// An answer's body: nothing, a short text, or blob bytes read on this shard (not
/// `Send`: it never leaves the shard's thread).
enum Body {
    Empty,
    Full(Option<Bytes>),
    Stream(selfie_services::plane::ByteStream),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => s
                .poll_next_unpin(cx)
                .map(|piece| piece.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Empty | Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty | Body::Full(None) => SizeHint::with_exact(0),
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

/// Accepts and serves HTTPS connections on `listener` until the edge drains.
pub(super) async fn serve(
    shard: Rc<Shard>,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return warn!(shard = shard.id, error = %e, "HTTPS listener unusable"),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut drain = shard.shared.drain.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    break;
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                debug!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let limits = &shard.shared.config.web;
        if shard.web_open.get() >= limits.max_connections_per_shard {
            count_connection(&shard, "refused_limit");
            continue;
        }
        // A TLS handshake costs a request of the address's rate.
        let ip = peer.ip().to_canonical();
        if shard.ip_limiter.check_key(&ip).is_err() {
            count_connection(&shard, "refused_rate");
            continue;
        }
        let Some(slot) = AddressSlot::take(&shard.shared, ip) else {
            count_connection(&shard, "refused_address");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        shard.web_open.set(shard.web_open.get() + 1);
        let guard = OpenGuard(shard.clone());
        let (shard, acceptor) = (shard.clone(), acceptor.clone());
        let span = info_span!("https", shard = shard.id, peer = %peer);
        tokio::task::spawn_local(
            async move {
                let _guard = (guard, slot);
                serve_connection(shard, acceptor, tcp, ip).await;
            }
            .instrument(span),
        );
    }
}

/// Gives back a connection's place when its task ends.
struct OpenGuard(Rc<Shard>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.web_open.set(self.0.web_open.get().saturating_sub(1));
    }
}

/// When the connection's current answer last made progress, and whether one is being
/// written: a reader that takes nothing for the header timeout is cut.
#[derive(Default)]
struct Progress {
    sending: Cell<usize>,
    last: Cell<Option<Instant>>,
}

fn count_connection(shard: &Shard, outcome: &'static str) {
    shard
        .shared
        .metrics
        .web_connections_total
        .get_or_create(&OutcomeLabels {
            shard: shard.id as u16,
            outcome,
        })
        .inc();
}

async fn serve_connection(
    shard: Rc<Shard>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    ip: IpAddr,
) {
    let timeout = Duration::from_millis(shard.shared.config.web.header_timeout_ms);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return count_connection(&shard, "tls_failed"),
    };
    count_connection(&shard, "accepted");
    let progress = Rc::new(Progress::default());
    let service_shard = shard.clone();
    let service_progress = progress.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shard = service_shard.clone();
        let progress = service_progress.clone();
        async move { Ok::<_, Infallible>(answer(&shard, ip, req, progress).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut drain = shard.shared.drain.clone();
    let draining = async {
        loop {
            if *drain.borrow() || drain.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "HTTPS connection ended");
            }
        }
        () = stalled(&progress, timeout) => {
            count_connection(&shard, "cut_stalled");
        }
        () = draining => {
            // Finish the answer in flight, then close (the shard waits up to its drain
            // deadline; a stalled reader is cut as ever).
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn => {}
                () = stalled(&progress, timeout) => count_connection(&shard, "cut_stalled"),
            }
        }
    }
}

/// `GET /ws`: the WebSocket fallback. Checked like a WebTransport `CONNECT` (allowed
/// origins, drain, the shard's connection limit), answered `101`, then the upgraded
/// socket carries one session, counted as a connection like a QUIC one.
fn websocket(shard: &Rc<Shard>, ip: IpAddr, req: Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let count = |outcome: &'static str| {
        shard
            .shared
            .metrics
            .websocket_sessions_total
            .get_or_create(&OutcomeLabels {
                shard: shard.id as u16,
                outcome,
            })
            .inc();
    };
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let upgrade = header(header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = header(header::SEC_WEBSOCKET_KEY).map(str::to_owned);
    let version = header(header::SEC_WEBSOCKET_VERSION) == Some("13");
    let (Some(key), true, true, &Method::GET) = (key, upgrade, version, req.method()) else {
        count("bad_request");
        return plain(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade (version 13) only\n",
        );
    };
    if !shard.shared.origins.allows(header(header::ORIGIN)) {
        count("bad_origin");
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let limits = &shard.shared.config.limits;
    if *shard.shared.drain.borrow() || shard.connections.get() >= limits.max_connections_per_shard {
        count("refused_limit");
        return plain(StatusCode::SERVICE_UNAVAILABLE, "try another edge\n");
    }
    let Some(slot) = AddressSlot::take(&shard.shared, ip) else {
        count("refused_address");
        return plain(StatusCode::TOO_MANY_REQUESTS, "too many connections\n");
    };
    count("accepted");
    let accept = derive_accept_key(key.as_bytes());
    let max_message = limits.max_frame_bytes + 64 * 1024;
    let max_streams = (limits.max_concurrent_streams + crate::STREAM_MARGIN) as usize;
    let handshake_deadline = Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let session_shard = shard.clone();
    tokio::task::spawn_local(
        async move {
            let shard = session_shard;
            let _slot = slot;
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message));
            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                Some(config),
            )
            .await;
            let link = super::ws::WsLink::start(socket, max_streams, max_message, idle);
            super::serve_session(&shard, super::link::Link::Ws(link), ip, handshake_deadline).await;
        }
        .instrument(info_span!("websocket", shard = shard.id, peer = %ip)),
    );
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(empty())
        .unwrap_or_else(|_| internal())
}

/// Resolves when an answer is being written and its reader has taken nothing for
/// `timeout`.
async fn stalled(progress: &Progress, timeout: Duration) {
    let mut every = tokio::time::interval(timeout / 4);
    loop {
        every.tick().await;
        let stuck = progress.sending.get() > 0
            && progress.last.get().is_some_and(|t| t.elapsed() >= timeout);
        if stuck {
            return;
        }
    }
}

/// Answers one request, counting it.
async fn answer(
    shard: &Rc<Shard>,
    ip: IpAddr,
    req: Request<Incoming>,
    progress: Rc<Progress>,
) -> Response<Body> {
    let started = Instant::now();
    let mut response = if req.uri().path() == WEBSOCKET_PATH {
        websocket(shard, ip, req)
    } else {
        route(shard, ip, &req, progress).await
    };
    let status = response.status();
    if !matches!(
        status,
        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        // Refusals and errors are never cached (a 416 or a 403 is about this request).
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let labels = StatusLabels {
        shard: shard.id as u16,
        status: response.status().as_u16(),
    };
    let m = &shard.shared.metrics;
    m.web_requests_total.get_or_create(&labels).inc();
    m.web_request_duration_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn route(
    shard: &Rc<Shard>,
    ip: IpAddr,
    req: &Request<Incoming>,
    progress: Rc<Progress>,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    // The address's request rate is the one QUIC requests share.
    if shard.ip_limiter.check_key(&ip.to_canonical()).is_err() {
        let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "slow down\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    if !path.starts_with(selfie_services::media::urls::PREFIX) {
        return match shard.shared.webapp.as_ref().and_then(|app| app.get(path)) {
            Some(asset) => app_file(req, asset, head),
            None => plain(StatusCode::NOT_FOUND, "not found\n"),
        };
    }
    let Some(media) = shard.registry.raw_streams().cloned() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "media unavailable\n");
    };
    let signed = match media.signed(path.to_string()).await {
        Ok(s) => s,
        Err(e) => {
            if e.is_server_fault() {
                warn!(error = %e, "signed media request failed");
            }
            return error_response(&e);
        }
    };
    let t = &signed.target;
    let etag = format!("\"{}\"", t.etag);
    let remaining_s = signed.expires_ms.saturating_sub(now_ms()) / 1000;
    // Shared caches (a CDN) may keep renditions until the URL expires; an original,
    // which keeps the uploader's metadata, only the owner's own browser.
    let audience = if t.name == "original" {
        "private"
    } else {
        "public"
    };
    let cache = format!(
        "{audience}, max-age={}, immutable",
        remaining_s.min(MAX_CACHE_SECONDS)
    );
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        )
        .header("cross-origin-resource-policy", "cross-origin")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            "content-range, content-length, etag",
        );
    let headers = req.headers();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag))
    {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(empty())
            .unwrap_or_else(|_| internal());
    }
    builder = builder.header(header::CONTENT_TYPE, t.mime.as_str());
    let total = t.total;
    // A `Range` counts only when `If-Range` (if any) names these bytes.
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| {
            headers
                .get(header::IF_RANGE)
                .is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag))
        })
        .map_or(Ranged::Whole, |v| parse_range(v, total));
    let (status, start, end) = match range {
        Ranged::Whole => (StatusCode::OK, 0, total),
        Ranged::Part(start, end) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start, end)
        }
        Ranged::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{total}"))
                .body(empty())
                .unwrap_or_else(|_| internal());
        }
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, end - start);
    if head || start == end {
        return builder.body(empty()).unwrap_or_else(|_| internal());
    }
    let sent = shard
        .shared
        .metrics
        .web_sent_bytes_total
        .get_or_create(&shard.label)
        .clone();
    // The first piece is read before the headers go: a blob that cannot be read is an
    // error status, not a 200 cut short.
    let mut body = signed.body(start, end);
    let first = match body.next().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            warn!(error = %e, media = t.media_id, rendition = %t.name, "media blob unreadable");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "unavailable\n");
        }
        None => {
            warn!(media = t.media_id, rendition = %t.name, "media blob shorter than recorded");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "unavailable\n");
        }
    };
    progress.sending.set(progress.sending.get() + 1);
    progress.last.set(Some(Instant::now()));
    let done = SendingGuard(progress.clone());
    let body = futures::stream::once(async move { Ok(first) })
        .chain(body)
        .inspect(move |piece| {
            let _ = &done;
            match piece {
                Ok(b) => {
                    sent.inc_by(b.len() as u64);
                    progress.last.set(Some(Instant::now()));
                }
                Err(e) => warn!(error = %e, "media blob read failed mid-answer"),
            }
        })
        .boxed_local();
    builder
        .body(Body::Stream(body))
        .unwrap_or_else(|_| internal())
}

/// Marks an answer's body as no longer being written when it is dropped (finished,
/// failed or cut).
struct SendingGuard(Rc<Progress>);

impl Drop for SendingGuard {
    fn drop(&mut self) {
        self.0.sending.set(self.0.sending.get().saturating_sub(1));
    }
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, as RFC 9110 asks).
fn etag_matches(header: &str, etag: &str) -> bool {
    let weak = |v: &str| v.strip_prefix("W/").unwrap_or(v).to_string();
    let etag = weak(etag);
    header
        .split(',')
        .map(str::trim)
        .any(|v| v == "*" || weak(v) == etag)
}

/// What a `Range` header asks for, for a representation of `total` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No usable range: the whole representation (also for several ranges, which a
    /// server may answer whole).
    Whole,
    /// Bytes `start..end`.
    Part(u64, u64),
    /// A range that starts past the end.
    Unsatisfiable,
}

fn parse_range(value: &str, total: u64) -> Ranged {
    // The unit is case-insensitive (RFC 9110 §14.1).
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .and_then(|_| value.get(6..))
    else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // `bytes=-N`: the last N bytes.
        return match number(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if total == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(total.saturating_sub(n), total),
            None => Ranged::Whole,
        };
    }
    let Some(start) = number(first) else {
        // A first position too large for any file starts past the end.
        if first.bytes().all(|b| b.is_ascii_digit()) {
            return Ranged::Unsatisfiable;
        }
        return Ranged::Whole;
    };
    let end = if last.is_empty() {
        total
    } else {
        match number(last) {
            Some(l) if l >= start => l.saturating_add(1).min(total),
            _ => return Ranged::Whole,
        }
    };
    if start >= total {
        Ranged::Unsatisfiable
    } else {
        Ranged::Part(start, end)
    }
}

/// A file of the web client: revalidated by `ETag` (`no-cache`), never framed, and with
/// a policy that runs only its own scripts and lets it reach the edge (WebTransport,
/// WebSocket) and signed media URLs.
fn app_file(req: &Request<Incoming>, asset: &crate::webapp::Asset, head: bool) -> Response<Body> {
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &asset.etag));
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, empty())
    } else if head {
        (StatusCode::OK, empty())
    } else {
        (StatusCode::OK, Body::Full(Some(asset.bytes.clone())))
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CONTENT_LENGTH, asset.bytes.len())
        .header(header::ETAG, asset.etag.as_str())
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; \
             img-src 'self' https: data: blob:; media-src 'self' https: blob:; \
             connect-src 'self' https: wss:; object-src 'none'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
        )
        .body(body)
        .unwrap_or_else(|_| internal())
}

fn empty() -> Body {
    Body::Empty
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Body::Full(Some(Bytes::from_static(text.as_bytes()))))
        .unwrap_or_else(|_| internal())
}

fn internal() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

/// The HTTP answer to a refusal of the media service.
fn error_response(e: &selfie_services::Error) -> Response<Body> {
    let (status, text) = match e.code() {
        ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden\n"),
        ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not found\n"),
        ErrorCode::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "slow down\n"),
        ErrorCode::InvalidArgument => (StatusCode::BAD_REQUEST, "bad request\n"),
        ErrorCode::Unavailable | ErrorCode::Overloaded => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    };
    let mut r = plain(status, text);
    let retry = e.retry_after_ms();
    if retry > 0
        && let Ok(v) = HeaderValue::from_str(&retry.div_ceil(1000).to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use Ranged::*;
        let t = 1000;
        assert_eq!(parse_range("bytes=0-499", t), Part(0, 500));
        assert_eq!(parse_range("bytes=500-", t), Part(500, 1000));
        assert_eq!(parse_range("bytes=-100", t), Part(900, 1000));
        assert_eq!(parse_range("bytes=-5000", t), Part(0, 1000));
        assert_eq!(parse_range("bytes=900-5000", t), Part(900, 1000));
        assert_eq!(parse_range("bytes=999-999", t), Part(999, 1000));
        assert_eq!(parse_range("bytes=1000-", t), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", t), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("Bytes=0-1", t), Part(0, 2));
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", t),
            Unsatisfiable
        );
        // Unusable ranges are ignored: the whole representation.
        for v in [
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=-",
            "bytes=",
            "bytés=0-1",
        ] {
            assert_eq!(parse_range(v, t), Whole, "{v}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("W/\"a\"", "\"a\""));
        assert!(etag_matches("\"b\", \"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
        assert!(!etag_matches("W/W/\"a\"", "\"a\""));
    }
}
