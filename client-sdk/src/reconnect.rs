//! A client that outlives its connections: it reconnects with exponential backoff and
//! full jitter, honours `GoAway` (stops using a draining connection, waits the server's
//! `reconnect_after_ms`, moves to the hinted host or the next known one), and retries a
//! request transparently only when the request is idempotent (a read: replaying it
//! cannot change state). Everything else is returned to the caller, who retries with
//! the operation's idempotency key.
//!
//! A reconnect made for an idempotent request sends it with `Hello` in TLS 1.3 0-RTT
//! early data when the server's session ticket allows (one round trip for a returning
//! client's read). A session the server refuses (its token, its version) is not retried.
//! The client can start without a connection (`new`, `with_names`: names resolved on
//! first use), take a new access token (`set_access_token`), close its connection
//! (`disconnect`) and move it to a new socket (`rebind`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flatbuffers::WIPOffset;
use quinn::Endpoint;
use selfie_codec::{Builder, Encoder, Frame};
use selfie_protocol::{Envelope, ErrorCode};
use tokio::sync::Mutex;

use crate::{Client, ClientConfig, ClientError};

/// Exponential backoff with full jitter (each delay uniform in `0..=cap`).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Cap of the first delay.
    pub initial: Duration,
    /// Largest cap.
    pub max: Duration,
    /// Attempts before giving up.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            attempts: 8,
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based), given a uniform sample in `[0, 1)`.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
            .min(self.max);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// The longest a `GoAway`'s `reconnect_after_ms` is honoured.
const MAX_GOAWAY_WAIT: Duration = Duration::from_secs(60);

/// Whether the server refused the session itself (its token, or the protocol version):
/// trying again with the same `Hello` cannot help.
fn refused_session(e: &ClientError) -> bool {
    e.code().is_some_and(|c| {
        matches!(c.class(), selfie_protocol::ErrorClass::Auth) || c == ErrorCode::UnsupportedVersion
    })
}

/// Whether a failed request may be sent again on a new connection.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connection(_) | ClientError::Stream(_) | ClientError::Timeout => true,
        ClientError::Server { code, .. } => matches!(
            *code,
            ErrorCode::Draining | ErrorCode::Unavailable | ErrorCode::Overloaded
        ),
        _ => false,
    }
}

/// A client over a changing connection.
pub struct ReconnectingClient {
    /// The configuration new connections use (the access token changes on login).
    config: std::sync::Mutex<ClientConfig>,
    /// The servers' addresses: given, or resolved from `names` when first needed (an
    /// app may start without a network, before DNS answers).
    servers: std::sync::Mutex<Vec<SocketAddr>>,
    names: Vec<String>,
    endpoint: Endpoint,
    current: Mutex<Option<Arc<Client>>>,
    next_server: AtomicUsize,
    backoff: Backoff,
    reconnects: AtomicU64,
    zero_rtt: AtomicU64,
    encoder: std::sync::Mutex<Encoder>,
}

impl ReconnectingClient {
    /// Connects to the first reachable of `servers` (tried in order, then round robin).
    pub async fn connect(
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        backoff: Backoff,
    ) -> Result<Self, ClientError> {
        let this = Self::new(config, servers, backoff)?;
        this.client().await?;
        Ok(this)
    }

    /// A client that connects on first use (an app started offline works from its
    /// local store until then).
    pub fn new(
        config: ClientConfig,
        servers: Vec<SocketAddr>,
        backoff: Backoff,
    ) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::Config("no servers".into()));
        }
        let config = config.prepared()?;
        let bind: SocketAddr = if servers[0].is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|e: std::net::AddrParseError| ClientError::Config(e.to_string()))?;
        Ok(Self {
            encoder: std::sync::Mutex::new(Encoder::new(config.limits)),
            config: std::sync::Mutex::new(config),
            servers: std::sync::Mutex::new(servers),
            names: Vec::new(),
            endpoint: crate::endpoint(bind)?,
            current: Mutex::new(None),
            next_server: AtomicUsize::new(0),
            backoff,
            reconnects: AtomicU64::new(0),
            zero_rtt: AtomicU64::new(0),
        })
    }

    /// A client for servers named `host:port`, resolved when a connection is first
    /// needed (and again while none resolves); connects on first use.
    pub fn with_names(
        config: ClientConfig,
        names: Vec<String>,
        backoff: Backoff,
    ) -> Result<Self, ClientError> {
        if names.is_empty() {
            return Err(ClientError::Config("no servers".into()));
        }
        let mut this = Self::new(
            config,
            vec![
                "0.0.0.0:0"
                    .parse()
                    .map_err(|e: std::net::AddrParseError| ClientError::Config(e.to_string()))?,
            ],
            backoff,
        )?;
        this.servers = std::sync::Mutex::new(Vec::new());
        this.names = names;
        Ok(this)
    }

    /// The servers' addresses (resolving their names first if need be).
    pub async fn servers(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let known = self.servers_now();
        if !known.is_empty() {
            return Ok(known);
        }
        let mut found = Vec::new();
        let mut last = None;
        for name in &self.names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => last = Some(e),
            }
        }
        if found.is_empty() {
            return Err(ClientError::Stream(format!(
                "resolving {}: {}",
                self.names.join(", "),
                last.map_or_else(|| "no addresses".to_string(), |e| e.to_string())
            )));
        }
        if let Ok(mut s) = self.servers.lock() {
            s.clone_from(&found);
        }
        Ok(found)
    }

    fn servers_now(&self) -> Vec<SocketAddr> {
        self.servers.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn config_now(&self) -> ClientConfig {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Opens sessions with `token` from now on (after a login, a refresh or a logout):
    /// the current connection is closed, and the next request opens one with it.
    pub async fn set_access_token(&self, token: Option<String>) {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .access_token = token;
        self.disconnect().await;
    }

    /// Closes the current connection (an app going to the background); the next
    /// request opens a new one.
    pub async fn disconnect(&self) {
        if let Some(c) = self.current.lock().await.take() {
            c.close();
        }
    }

    /// The connection in use, if one is open (none after [`Self::disconnect`]).
    pub async fn current(&self) -> Option<Arc<Client>> {
        self.current.lock().await.clone()
    }

    /// Moves every connection of this client to a new local socket, as when the device
    /// changes network: QUIC migrates the session (RFC 9000 §9).
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), ClientError> {
        self.endpoint
            .rebind(socket)
            .map_err(|e| ClientError::Stream(e.to_string()))
    }

    /// The local address's IP and port (for choosing a socket to rebind to).
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.endpoint.local_addr().ok().map(|a| a.ip())
    }

    /// The local port in use.
    pub fn local_port(&self) -> Option<u16> {
        self.endpoint.local_addr().ok().map(|a| a.port())
    }

    /// Sends any operation (see [`Client::call`]) with [`Self::request`]'s retry rule.
    pub async fn call(
        &self,
        body: selfie_protocol::BodyT,
    ) -> Result<selfie_protocol::BodyT, ClientError> {
        let frame = self.request(crate::envelope(body)).await?;
        Ok(frame.envelope().unpack().body)
    }

    /// Connections made after the first one.
    pub fn reconnects(&self) -> u64 {
        // Counts every connection made; the first is not a reconnect.
        self.reconnects.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// The address of the server in use.
    pub async fn server(&self) -> Option<SocketAddr> {
        self.current
            .lock()
            .await
            .as_ref()
            .map(|c| c.connection().remote_address())
    }

    /// A usable connection: the current one unless it is closed or has received
    /// `GoAway`, else a new one (after the server's requested delay, with backoff).
    pub async fn client(&self) -> Result<Arc<Client>, ClientError> {
        Ok(self.client_for(None).await?.0)
    }

    /// [`Self::client`], and when a new connection is needed and `early` is given (an
    /// idempotent request), the request travels with `Hello` in 0-RTT early data where
    /// the server's session ticket allows: a returning client's read costs one round
    /// trip. The request's answer comes back with the connection in that case.
    async fn client_for(
        &self,
        early: Option<&Bytes>,
    ) -> Result<(Arc<Client>, Option<Result<Frame, ClientError>>), ClientError> {
        let mut current = self.current.lock().await;
        let mut wait = Duration::ZERO;
        let mut hint = None;
        if let Some(c) = current.as_ref() {
            let goaway = c.goaway_now();
            if c.connection().close_reason().is_none() && goaway.is_none() {
                return Ok((c.clone(), None));
            }
            if let Some(g) = goaway {
                wait = Duration::from_millis(u64::from(g.reconnect_after_ms)).min(MAX_GOAWAY_WAIT);
                hint = g
                    .reconnect_host
                    .as_deref()
                    .and_then(|h| h.parse::<SocketAddr>().ok());
            }
            // Leave the draining server: start from the next one.
            let from = c.connection().remote_address();
            if let Some(i) = self.servers_now().iter().position(|s| *s == from) {
                self.next_server.store(i + 1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(wait).await;
        let servers = self.servers().await?;
        let mut last = ClientError::Timeout;
        for attempt in 0..self.backoff.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff.delay(attempt - 1, rand_unit())).await;
            }
            let server = match hint.take() {
                Some(h) => h,
                None => servers[self.next_server.fetch_add(1, Ordering::Relaxed) % servers.len()],
            };
            let mut config = self.config_now();
            config.server = server;
            let connected = match early {
                Some(request) => {
                    Client::connect_with_request_bytes(&self.endpoint, config, request.clone())
                        .await
                        .map(|(c, answer)| (c, Some(answer)))
                }
                None => Client::connect_on(&self.endpoint, config)
                    .await
                    .map(|c| (c, None)),
            };
            match connected {
                Ok((c, answer)) => {
                    let c = Arc::new(c);
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    if c.used_0rtt() {
                        self.zero_rtt.fetch_add(1, Ordering::Relaxed);
                    }
                    *current = Some(c.clone());
                    // Next time, start from the server that worked.
                    if let Some(i) = servers.iter().position(|s| *s == server) {
                        self.next_server.store(i, Ordering::Relaxed);
                    }
                    return Ok((c, answer));
                }
                Err(e) if refused_session(&e) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Connections resumed with 0-RTT early data accepted by the server.
    pub fn zero_rtt_resumes(&self) -> u64 {
        self.zero_rtt.load(Ordering::Relaxed)
    }

    /// Sends a request; on a lost or draining connection an idempotent request is sent
    /// again on a new connection, any other request fails with the error.
    pub async fn request(
        &self,
        f: impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>>,
    ) -> Result<Frame, ClientError> {
        let bytes = {
            let mut enc = self
                .encoder
                .lock()
                .map_err(|_| ClientError::Protocol("encoder poisoned".into()))?;
            enc.encode_bytes(|b| f(b, 1))?
        };
        self.send(bytes).await
    }

    /// Encodes a request the way [`Self::request`] sends it (for callers that may send
    /// the same bytes again, see [`Self::send`]).
    pub fn encode(
        &self,
        f: impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>>,
    ) -> Result<Bytes, ClientError> {
        let mut enc = self
            .encoder
            .lock()
            .map_err(|_| ClientError::Protocol("encoder poisoned".into()))?;
        Ok(enc.encode_bytes(|b| f(b, 1))?)
    }

    /// Whether encoded request bytes are an idempotent operation (safe to send again).
    pub fn is_idempotent(&self, bytes: &Bytes) -> bool {
        let limits = self.config_now().limits;
        selfie_codec::Frame::verify(bytes.clone(), &limits)
            .map(|f| selfie_protocol::is_idempotent(&f.envelope()))
            .unwrap_or(false)
    }

    /// Sends an encoded request (from [`Self::encode`]) with [`Self::request`]'s rules.
    pub async fn send(&self, bytes: Bytes) -> Result<Frame, ClientError> {
        let limits = self.config_now().limits;
        let idempotent = selfie_codec::Frame::verify(bytes.clone(), &limits)
            .map(|f| selfie_protocol::is_idempotent(&f.envelope()))
            .unwrap_or(false);
        let mut attempt = 0;
        loop {
            let (client, early) = self.client_for(idempotent.then_some(&bytes)).await?;
            let answer = match early {
                Some(answer) => answer,
                None => client.request_bytes(&bytes).await,
            };
            match answer {
                Err(e) if idempotent && retryable(&e) && attempt < self.backoff.attempts => {
                    // Not at once: the server may be overloaded, or asked for a pause.
                    let hint = match &e {
                        ClientError::Server { retry_after_ms, .. } => {
                            Duration::from_millis(u64::from(*retry_after_ms))
                        }
                        _ => Duration::ZERO,
                    };
                    tokio::time::sleep(
                        hint.max(self.backoff.delay(attempt, rand_unit()))
                            .min(self.backoff.max),
                    )
                    .await;
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying an idempotent request on a new connection");
                }
                other => return other,
            }
        }
    }
}

fn rand_unit() -> f64 {
    // Jitter needs no cryptographic quality: a time-seeded xorshift is enough and keeps
    // the SDK's dependencies small.
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x2545_F491_4F6C_DD1D, |d| d.as_nanos() as u64 | 1),
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_caps_grow_exponentially_up_to_the_maximum_and_jitter_stays_below() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            attempts: 10,
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(9, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        for _ in 0..1000 {
            let u = rand_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(retryable(&ClientError::Timeout));
        assert!(retryable(&ClientError::Server {
            code: ErrorCode::Draining,
            message: String::new(),
            retry_after_ms: 0
        }));
        assert!(!retryable(&ClientError::Server {
            code: ErrorCode::Forbidden,
            message: String::new(),
            retry_after_ms: 0
        }));
    }
}
