//! The Selfie client SDK: what apps, tests and the bench harness use to talk to an edge.
//!
//! [`Client::connect`] opens one QUIC connection (ALPN `selfie/1`), trusting the server
//! by a pinned certificate SHA-256 (development certificates) or by CA roots, and runs
//! the control-stream handshake (`Hello` → `Welcome`). Each [`Client::request`] is one
//! bidirectional stream carrying one envelope; a `control.Error` answer becomes
//! [`ClientError::Server`] with its code. Control frames the server pushes later
//! (`GoAway`) are surfaced by [`Client::next_control_frame`] and [`Client::goaway`].
//!
//! Depends on `selfie-protocol`, `selfie-codec`, quinn, fjall (the device's local chat
//! store) and openmls (MLS) only; never on server crates.
//!
//! Chat ([`chat`]): typed requests ([`Client::chat`]) and an offline-first
//! [`chat::ChatStore`] (synced conversations, a durable outbox, gap-free resume);
//! end-to-end encrypted groups with MLS ([`mls::MlsDevice`], openmls).
//!
//! Subscriptions ([`Client::subscribe`]) arrive as server-initiated unidirectional
//! streams and are read as a [`Subscription`] (a `futures::Stream` of frames, each live
//! event carrying its topic sequence in its `id`); [`Subscription::end`] says why one
//! ended — [`SubscriptionEnd::Resync`] when the server cut a subscriber that fell behind
//! or whose topic lost events. Datagrams ([`Client::send_datagram`],
//! [`Client::recv_datagram`]) carry typing and presence ([`chat::ChatApi::typing`],
//! [`chat::signal`]).
//! [`ReconnectingClient`] reconnects with backoff and jitter, honours `GoAway`, and
//! replays only idempotent requests.
//!
//! [`Client::connect_with_request`] resumes with TLS 1.3 0-RTT when it can and sends
//! `Hello` and the request in early data, but only an idempotent request: a replayed
//! first flight must not change state. (The edge only acts on early data once the
//! handshake has completed, which a replayed flight never does.)

pub mod accounts;
pub mod chat;
pub mod feed;
pub mod media;
pub mod mls;
pub mod notifications;
pub mod offline;
mod reconnect;
pub mod stories;

pub use reconnect::{Backoff, ReconnectingClient};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::WIPOffset;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use selfie_codec::{
    Builder, CodecError, DatagramFrame, Encoder, Frame, FrameDecoder, Limits, build,
};
use selfie_protocol::control::{self, ControlOp, GoAwayT, WelcomeT};
use selfie_protocol::{Envelope, ErrorCode, Version};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, mpsc, watch};

/// How the client decides to trust the server.
#[derive(Clone)]
pub enum Trust {
    /// Exactly this leaf certificate (SHA-256 of its DER), e.g. the development
    /// certificate whose hash `selfie serve` prints.
    PinnedSha256([u8; 32]),
    /// Any certificate for `server_name` chaining to these roots.
    Roots(Arc<rustls::RootCertStore>),
}

impl Trust {
    /// Parses a hex SHA-256 fingerprint.
    pub fn pinned_hex(hex: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Config("certificate pin must be 64 hex digits".into());
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut pin = [0u8; 32];
        for (i, b) in pin.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Trust::PinnedSha256(pin))
    }
}

/// Connection settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Edge address.
    pub server: SocketAddr,
    /// TLS server name.
    pub server_name: String,
    /// Trust decision.
    pub trust: Trust,
    /// Access token for an authenticated session.
    pub access_token: Option<String>,
    /// Application name and version sent in `Hello`.
    pub app: (String, String),
    /// Stable per-install device id.
    pub device_id: String,
    /// Protocol version offered (tests use other values).
    pub version: Version,
    /// Frame limits applied to what the server sends.
    pub limits: Limits,
    /// Time allowed for QUIC handshake plus `Welcome`.
    pub connect_timeout: Duration,
    /// The QUIC/TLS client configuration, built once by [`ClientConfig::prepared`] and
    /// reused by every connection made with this configuration (building it per
    /// connection costs more than a handshake's worth of CPU).
    pub quic: Option<quinn::ClientConfig>,
}

impl ClientConfig {
    /// Defaults for `server` trusted by `trust`.
    pub fn new(server: SocketAddr, trust: Trust) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            trust,
            access_token: None,
            app: ("selfie-rust".into(), env!("CARGO_PKG_VERSION").into()),
            device_id: String::new(),
            version: selfie_protocol::PROTOCOL_VERSION,
            limits: Limits::DEFAULT,
            connect_timeout: Duration::from_secs(10),
            quic: None,
        }
    }

    /// The same configuration with its QUIC/TLS configuration built, for making many
    /// connections.
    pub fn prepared(mut self) -> Result<Self, ClientError> {
        self.quic = Some(quic_client_config(&self.trust)?);
        Ok(self)
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The QUIC connection could not be made or was lost. A close by the server carries
    /// its error code ([`ClientError::close_code`]).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Connecting failed before a connection existed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// A stream failed.
    #[error("stream: {0}")]
    Stream(String),
    /// The server sent bytes that are not a valid frame.
    #[error("frame: {0}")]
    Codec(#[from] CodecError),
    /// The server answered with a typed error.
    #[error("server error {code}: {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// Its message.
        message: String,
        /// Retry hint (0 when none).
        retry_after_ms: u32,
    },
    /// The server broke the protocol (e.g. no `Welcome`).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Timed out.
    #[error("timed out")]
    Timeout,
}

impl ClientError {
    /// The protocol error code behind this error: a server `Error` frame's code, or the
    /// application code the server closed the connection with.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => self.close_code(),
        }
    }

    /// The application error code of a connection the server closed.
    pub fn close_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                u16::try_from(c.error_code.into_inner()).ok().map(ErrorCode)
            }
            _ => None,
        }
    }
}

fn stream_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Stream(e.to_string())
}

/// Checks the server's leaf certificate against a pinned SHA-256 (TLS 1.3 signatures are
/// still verified).
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        // Not secret material: a plain comparison of the public certificate's hash.
        if digest.as_slice() == self.pin {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate does not match the pinned SHA-256".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 client configuration that trusts what `trust` says, offering `alpn`: the
/// QUIC connection's, or an HTTPS client's for the edge's signed media URLs (pinned
/// development certificates included).
pub fn tls_client_config(
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ClientError> {
    // aws-lc-rs, as the edge: its default key exchange is post-quantum X25519MLKEM768
    // (what browsers offer too), and the build holds no other provider.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut tls = match trust {
        Trust::PinnedSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
        Trust::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    };
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// The quinn client configuration for `trust`.
pub fn quic_client_config(trust: &Trust) -> Result<quinn::ClientConfig, ClientError> {
    let mut tls = tls_client_config(trust, &[selfie_protocol::ALPN])?;
    tls.enable_early_data = true;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.stream_receive_window(quinn::VarInt::from_u32(1 << 20));
    transport.receive_window(quinn::VarInt::from_u32(8 << 20));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A client endpoint on an ephemeral loopback/any port, for [`Client::connect_on`].
pub fn endpoint(bind: SocketAddr) -> Result<Endpoint, ClientError> {
    Endpoint::client(bind).map_err(stream_err)
}

/// A connected session.
pub struct Client {
    endpoint: Endpoint,
    conn: Connection,
    welcome: WelcomeT,
    control_send: Mutex<SendStream>,
    control_frames: Mutex<mpsc::Receiver<Frame>>,
    goaway: watch::Receiver<Option<GoAwayT>>,
    next_id: AtomicU64,
    encoder: std::sync::Mutex<Encoder>,
    limits: Limits,
    subscriptions: Subscriptions,
    zero_rtt: bool,
}

/// Push channels by subscription id. Whichever side comes first (the push stream's
/// header, or the `SubscribeResponse`) creates the channel.
type Subscriptions = Arc<std::sync::Mutex<HashMap<u64, PushSlot>>>;

/// Both halves of a subscription's channel until each side has taken its own: the push
/// stream reader takes the sender, `subscribe` the receiver; the entry goes when both
/// are gone.
struct PushSlot {
    tx: Option<mpsc::Sender<Push>>,
    rx: Option<mpsc::Receiver<Push>>,
}

/// What a push stream reader hands its subscription.
enum Push {
    Event(Frame),
    End(SubscriptionEnd),
}

/// Why a subscription's events ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionEnd {
    /// The server finished the push stream (after an unsubscribe, or the service ended it).
    Finished,
    /// The subscription fell behind, or its topic lost events on the way: nothing more
    /// comes. Subscribe again (from your cursor, or for a fresh snapshot) to continue.
    Resync,
    /// The stream or the connection failed, with the server's code when it gave one.
    Failed(Option<ErrorCode>),
}

/// Events per subscription buffered in the client before the server is slowed down
/// (QUIC flow control pushes back once the channel is full).
const PUSH_BUFFER: usize = 256;

fn with_slot<R>(subs: &Subscriptions, id: u64, f: impl FnOnce(&mut PushSlot) -> R) -> Option<R> {
    let mut map = subs.lock().ok()?;
    let slot = map.entry(id).or_insert_with(|| {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        PushSlot {
            tx: Some(tx),
            rx: Some(rx),
        }
    });
    let r = f(slot);
    if slot.tx.is_none() && slot.rx.is_none() {
        map.remove(&id);
    }
    Some(r)
}

/// One subscription's events, in order. Ends when the server ends the push stream or
/// the connection closes; [`Subscription::end`] then says why. Events of a live topic
/// carry the topic's sequence in their envelope `id` (1, 2, 3, …; frames with `id` 0 are
/// the service's snapshot or replay), so a jump shows that something was missed.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Push>,
    end: Option<SubscriptionEnd>,
}

impl Subscription {
    /// The server-assigned id (for [`Client::unsubscribe`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next event, or `None` at the end.
    pub async fn next(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// Why the events ended (`None` while they flow).
    pub fn end(&self) -> Option<&SubscriptionEnd> {
        self.end.as_ref()
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        if self.end.is_some() {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Push::Event(f))) => Poll::Ready(Some(f)),
            Poll::Ready(Some(Push::End(end))) => {
                self.end = Some(end);
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.end = Some(SubscriptionEnd::Failed(None));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        self.poll_event(cx)
    }
}

/// Reads one push stream: its header names the subscription, then frames follow.
async fn read_push_stream(mut recv: RecvStream, limits: Limits, subs: Subscriptions) {
    let mut dec = FrameDecoder::new(limits);
    let Ok(Some(header)) = read_frame(&mut recv, &mut dec).await else {
        return;
    };
    let Some(id) = header
        .envelope()
        .body_as_control()
        .and_then(|c| c.op_as_push_stream_header())
        .map(|h| h.subscription_id())
    else {
        return;
    };
    let Some(Some(tx)) = with_slot(&subs, id, |slot| slot.tx.take()) else {
        return;
    };
    // The end comes after the buffered events.
    let end = loop {
        match dec.next_frame() {
            Ok(Some(frame)) => {
                if tx.send(Push::Event(frame)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            // A server that breaks framing gets no more of our memory.
            Err(e) => {
                let _ = recv.stop(quinn::VarInt::from_u32(u32::from(e.code().0)));
                break SubscriptionEnd::Failed(Some(e.code()));
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => dec.push(chunk.bytes),
            Ok(None) => match dec.finish() {
                Ok(()) => break SubscriptionEnd::Finished,
                Err(e) => break SubscriptionEnd::Failed(Some(e.code())),
            },
            Err(quinn::ReadError::Reset(code)) => {
                let code = u16::try_from(code.into_inner()).ok().map(ErrorCode);
                break match code {
                    Some(ErrorCode::ResyncRequired) => SubscriptionEnd::Resync,
                    other => SubscriptionEnd::Failed(other),
                };
            }
            Err(quinn::ReadError::ConnectionLost(e)) => {
                break SubscriptionEnd::Failed(ClientError::Connection(e).close_code());
            }
            Err(_) => break SubscriptionEnd::Failed(None),
        }
    };
    let _ = tx.send(Push::End(end)).await;
}

impl Client {
    /// Connects on a new endpoint bound to an ephemeral port.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let bind: SocketAddr = if config.server.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(stream_err)?;
        let endpoint = endpoint(bind)?;
        Self::connect_on(&endpoint, config).await
    }

    /// Connects on an existing endpoint (many connections can share one socket).
    pub async fn connect_on(
        endpoint: &Endpoint,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        Ok(Self::connect_inner(endpoint, config, None).await?.0)
    }

    /// Connects and sends one request as early as the protocol allows: when a session
    /// ticket from an earlier connection to this server is cached (same prepared
    /// [`ClientConfig`]) and the request is idempotent, it travels in TLS 1.3 0-RTT
    /// early data together with `Hello`, saving a round trip. A request that is not
    /// idempotent is never sent early (a replayed flight must not change state); it is
    /// sent once the session is established. Returns the client and the response.
    pub async fn connect_with_request(
        endpoint: &Endpoint,
        config: ClientConfig,
        f: impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>>,
    ) -> Result<(Client, Frame), ClientError> {
        let mut encoder = Encoder::new(config.limits);
        let request = encoder.encode_bytes(|b| f(b, 1))?;
        let (client, answer) = Self::connect_with_request_bytes(endpoint, config, request).await?;
        Ok((client, answer?))
    }

    /// [`Client::connect_with_request`] with the request already encoded; the
    /// connection is returned even when the request's answer is an error.
    pub async fn connect_with_request_bytes(
        endpoint: &Endpoint,
        config: ClientConfig,
        request: Bytes,
    ) -> Result<(Client, Result<Frame, ClientError>), ClientError> {
        let (client, early) = Self::connect_inner(endpoint, config, Some(request.clone())).await?;
        let answer = match early {
            Some(mut recv) => {
                let mut dec = FrameDecoder::new(client.limits);
                match read_frame(&mut recv, &mut dec).await {
                    Ok(Some(frame)) => server_error(&frame).map(|()| frame),
                    Ok(None) => Err(ClientError::Protocol(
                        "stream ended without a response".into(),
                    )),
                    Err(e) => Err(e),
                }
            }
            None => client.request_bytes(&request).await,
        };
        Ok((client, answer))
    }

    /// Whether this connection was resumed with 0-RTT early data accepted by the server.
    pub fn used_0rtt(&self) -> bool {
        self.zero_rtt
    }

    async fn connect_inner(
        endpoint: &Endpoint,
        config: ClientConfig,
        early: Option<Bytes>,
    ) -> Result<(Client, Option<RecvStream>), ClientError> {
        let quic = match &config.quic {
            Some(q) => q.clone(),
            None => quic_client_config(&config.trust)?,
        };
        let deadline = Instant::now() + config.connect_timeout;
        let connecting = endpoint.connect_with(quic, config.server, &config.server_name)?;
        let (conn, zero_rtt) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, Some(accepted)),
            Err(connecting) => (
                tokio::time::timeout_at(deadline.into(), connecting)
                    .await
                    .map_err(|_| ClientError::Timeout)??,
                None,
            ),
        };
        let mut encoder = Encoder::new(config.limits);
        let hello = encoder.encode_bytes(|b| hello(b, &config))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&hello).await.map_err(stream_err)?;
        // Only an idempotent request may ride in early data.
        let early = early.filter(|bytes| {
            zero_rtt.is_some()
                && Frame::verify(bytes.clone(), &config.limits)
                    .is_ok_and(|f| selfie_protocol::is_idempotent(&f.envelope()))
        });
        let mut early_stream = None;
        if let Some(bytes) = &early {
            let (mut s, r) = conn.open_bi().await?;
            s.write_all(bytes).await.map_err(stream_err)?;
            s.finish().map_err(stream_err)?;
            early_stream = Some(r);
        }
        let mut accepted_0rtt = false;
        if let Some(accepted) = zero_rtt {
            accepted_0rtt = tokio::time::timeout_at(deadline.into(), accepted)
                .await
                .map_err(|_| ClientError::Timeout)?;
            if !accepted_0rtt {
                // The server refused early data: those streams are gone. Start over on
                // the now established connection.
                (send, recv) = conn.open_bi().await?;
                send.write_all(&hello).await.map_err(stream_err)?;
                early_stream = None;
            }
        }
        let mut dec = FrameDecoder::new(config.limits);
        let frame = tokio::time::timeout_at(deadline.into(), read_frame(&mut recv, &mut dec))
            .await
            .map_err(|_| ClientError::Timeout)?;
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(ClientError::Protocol(
                    "control stream closed before Welcome".into(),
                ));
            }
            Err(e) => {
                // A refused Hello: report the server's close code if that is what happened.
                if let Some(reason) = conn.close_reason() {
                    return Err(ClientError::Connection(reason));
                }
                return Err(e);
            }
        };
        server_error(&frame)?;
        let welcome = frame
            .envelope()
            .body_as_control()
            .and_then(|c| c.op_as_welcome())
            .map(|w| w.unpack())
            .ok_or_else(|| ClientError::Protocol("expected Welcome".into()))?;
        let (frames_tx, frames_rx) = mpsc::channel(16);
        let (goaway_tx, goaway_rx) = watch::channel(None);
        tokio::spawn(async move {
            // Control frames after Welcome: Pong, GoAway, session errors.
            while let Ok(Some(frame)) = read_frame(&mut recv, &mut dec).await {
                if let Some(g) = frame
                    .envelope()
                    .body_as_control()
                    .and_then(|c| c.op_as_go_away())
                {
                    let _ = goaway_tx.send(Some(g.unpack()));
                }
                if frames_tx.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let subscriptions: Subscriptions = Arc::default();
        let (push_conn, push_subs, limits) = (conn.clone(), subscriptions.clone(), config.limits);
        tokio::spawn(async move {
            while let Ok(recv) = push_conn.accept_uni().await {
                tokio::spawn(read_push_stream(recv, limits, push_subs.clone()));
            }
        });
        let client = Client {
            zero_rtt: accepted_0rtt,
            subscriptions,
            endpoint: endpoint.clone(),
            conn,
            welcome,
            control_send: Mutex::new(send),
            control_frames: Mutex::new(frames_rx),
            goaway: goaway_rx,
            next_id: AtomicU64::new(1),
            encoder: std::sync::Mutex::new(encoder),
            limits: config.limits,
        };
        Ok((client, early_stream))
    }

    /// The server's `Welcome`.
    pub fn welcome(&self) -> &WelcomeT {
        &self.welcome
    }

    /// The QUIC connection (stats, close reason, datagrams).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn encode(
        &self,
        f: impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>>,
    ) -> Result<(u64, Bytes), ClientError> {
        let id = self.next_id();
        let mut enc = self
            .encoder
            .lock()
            .map_err(|_| ClientError::Protocol("encoder poisoned".into()))?;
        Ok((id, enc.encode_bytes(|b| f(b, id))?))
    }

    /// Sends one request (built by `f` with the request id) on its own stream and
    /// returns the response frame; a `control.Error` answer is [`ClientError::Server`].
    pub async fn request(
        &self,
        f: impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>>,
    ) -> Result<Frame, ClientError> {
        let (_, bytes) = self.encode(f)?;
        self.request_bytes(&bytes).await
    }

    /// Sends any operation (the protocol's `Body` union, object API) and returns the
    /// answer's body: the table-driven way to reach every service, which the typed
    /// per-service APIs ([`Client::accounts`], [`Client::feed`], ...) build on.
    pub async fn call(
        &self,
        body: selfie_protocol::BodyT,
    ) -> Result<selfie_protocol::BodyT, ClientError> {
        let frame = self.request(envelope(body)).await?;
        Ok(frame.envelope().unpack().body)
    }

    /// Sends raw bytes as a request stream and reads one response frame (tests and
    /// tools that need to send what the encoder would refuse).
    pub async fn request_bytes(&self, bytes: &[u8]) -> Result<Frame, ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_all(bytes).await.map_err(stream_err)?;
        send.finish().map_err(stream_err)?;
        let mut dec = FrameDecoder::new(self.limits);
        let frame = match read_frame(&mut recv, &mut dec).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(ClientError::Protocol(
                    "stream ended without a response".into(),
                ));
            }
            Err(e) => {
                if let Some(reason) = self.conn.close_reason() {
                    return Err(ClientError::Connection(reason));
                }
                return Err(e);
            }
        };
        // The end usually arrives with the answer: read it if it is there (never waiting
        // for it), so that dropping the stream does not send the server a
        // `STOP_SENDING` (a frame, and its retransmission state, per request).
        let _ = futures::FutureExt::now_or_never(recv.read_chunk(1, true));
        server_error(&frame)?;
        Ok(frame)
    }

    /// A `Ping` request; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        let frame = self.request(|b, id| build::ping(b, id, 0)).await?;
        frame
            .envelope()
            .body_as_control()
            .and_then(|c| c.op_as_pong())
            .ok_or_else(|| ClientError::Protocol("expected Pong".into()))?;
        Ok(start.elapsed())
    }

    /// Sends a `Ping` on the control stream (its `Pong` arrives on
    /// [`Client::next_control_frame`]).
    pub async fn ping_control(&self) -> Result<(), ClientError> {
        let (_, bytes) = self.encode(|b, id| build::ping(b, id, 0))?;
        self.control_send
            .lock()
            .await
            .write_all(&bytes)
            .await
            .map_err(stream_err)
    }

    /// The next frame the server sent on the control stream, if it comes within `within`.
    pub async fn next_control_frame(&self, within: Duration) -> Result<Frame, ClientError> {
        let mut rx = self.control_frames.lock().await;
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(ClientError::Protocol("control stream closed".into())),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Waits for a `GoAway` from the server.
    pub async fn goaway(&self, within: Duration) -> Result<GoAwayT, ClientError> {
        let mut rx = self.goaway.clone();
        let got = tokio::time::timeout(within, rx.wait_for(Option::is_some))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Protocol("control stream closed".into()))?;
        got.clone().ok_or(ClientError::Timeout)
    }

    /// Opens a subscription (`kind`, `target_id`, resuming after `since_cursor` when
    /// given); events arrive on the returned [`Subscription`].
    pub async fn subscribe(
        &self,
        kind: control::SubscriptionKind,
        target_id: u64,
        since_cursor: Option<&[u8]>,
    ) -> Result<Subscription, ClientError> {
        let frame = self
            .request(|b, id| {
                let since = since_cursor.map(|c| b.create_vector(c));
                let req = control::SubscribeRequest::create(
                    b,
                    &control::SubscribeRequestArgs {
                        kind,
                        target_id,
                        since_cursor: since,
                    },
                );
                build::control(b, id, ControlOp::SubscribeRequest, req.as_union_value())
            })
            .await?;
        let id = frame
            .envelope()
            .body_as_control()
            .and_then(|c| c.op_as_subscribe_response())
            .map(|r| r.subscription_id())
            .ok_or_else(|| ClientError::Protocol("expected SubscribeResponse".into()))?;
        match with_slot(&self.subscriptions, id, |slot| slot.rx.take()) {
            Some(Some(rx)) => Ok(Subscription { id, rx, end: None }),
            _ => Err(ClientError::Protocol(format!(
                "subscription {id} opened twice"
            ))),
        }
    }

    /// Ends a subscription; its [`Subscription`] then ends.
    pub async fn unsubscribe(&self, subscription_id: u64) -> Result<(), ClientError> {
        self.request(|b, id| {
            let req = control::UnsubscribeRequest::create(
                b,
                &control::UnsubscribeRequestArgs { subscription_id },
            );
            build::control(b, id, ControlOp::UnsubscribeRequest, req.as_union_value())
        })
        .await
        .map(|_| ())
    }

    /// Sends a datagram (presence, typing): unreliable, latest wins.
    pub fn send_datagram(
        &self,
        f: impl FnOnce(&mut Builder) -> WIPOffset<selfie_protocol::Datagram<'static>>,
    ) -> Result<(), ClientError> {
        let bytes = {
            let mut enc = self
                .encoder
                .lock()
                .map_err(|_| ClientError::Protocol("encoder poisoned".into()))?;
            Bytes::copy_from_slice(enc.encode_datagram(f)?)
        };
        self.conn.send_datagram(bytes).map_err(stream_err)
    }

    /// Sends raw bytes as a datagram (tests and tools).
    pub fn send_datagram_bytes(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.conn.send_datagram(bytes).map_err(stream_err)
    }

    /// The next datagram from the server, verified.
    pub async fn recv_datagram(&self) -> Result<DatagramFrame, ClientError> {
        let bytes = self.conn.read_datagram().await?;
        Ok(selfie_codec::decode_datagram(bytes, &self.limits)?)
    }

    /// The `GoAway` received so far, if any.
    pub fn goaway_now(&self) -> Option<GoAwayT> {
        self.goaway.borrow().clone()
    }

    /// Moves the connection to a new local socket (as when a phone changes network);
    /// the session and in-flight requests continue (RFC 9000 §9).
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), ClientError> {
        self.endpoint.rebind(socket).map_err(stream_err)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
    }
}

/// Builds a request envelope (the given request id) around `body`, for
/// [`Client::request`] and its kin.
pub fn envelope(
    body: selfie_protocol::BodyT,
) -> impl FnOnce(&mut Builder, u64) -> WIPOffset<Envelope<'static>> {
    move |b, id| {
        let mut e = selfie_protocol::EnvelopeT::default();
        e.id = id;
        e.body = body;
        e.pack(b)
    }
}

fn hello(b: &mut Builder, config: &ClientConfig) -> WIPOffset<Envelope<'static>> {
    let app_name = b.create_string(&config.app.0);
    let app_version = b.create_string(&config.app.1);
    let device_id = b.create_string(&config.device_id);
    let client = control::ClientInfo::create(
        b,
        &control::ClientInfoArgs {
            app_name: Some(app_name),
            app_version: Some(app_version),
            platform: selfie_protocol::common::Platform::Unknown,
            device_id: Some(device_id),
            ..Default::default()
        },
    );
    let token = config.access_token.as_deref().map(|t| b.create_string(t));
    let v = config.version.to_wire();
    let hello = control::Hello::create(
        b,
        &control::HelloArgs {
            version: Some(&v),
            min_version: Some(&v),
            client: Some(client),
            access_token: token,
            ..Default::default()
        },
    );
    build::control(b, 0, ControlOp::Hello, hello.as_union_value())
}

fn server_error(frame: &Frame) -> Result<(), ClientError> {
    match frame
        .envelope()
        .body_as_control()
        .and_then(|c| c.op_as_error())
    {
        Some(e) => Err(ClientError::Server {
            code: e.code(),
            message: e.message().unwrap_or_default().to_string(),
            retry_after_ms: e.retry_after_ms(),
        }),
        None => Ok(()),
    }
}

async fn read_frame(
    recv: &mut RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Option<Frame>, ClientError> {
    loop {
        if let Some(frame) = dec.next_frame()? {
            return Ok(Some(frame));
        }
        match recv.read_chunk(64 * 1024, true).await.map_err(stream_err)? {
            Some(chunk) => dec.push(chunk.bytes),
            None => {
                dec.finish()?;
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_from_hex() {
        let hex = "730f88069336bc66ada8d024b11726bd13f02f84a7a5af52fde4678842fa61f2";
        assert!(matches!(Trust::pinned_hex(hex), Ok(Trust::PinnedSha256(p)) if p[0] == 0x73));
        assert!(Trust::pinned_hex("abc").is_err());
        assert!(Trust::pinned_hex(&"zz".repeat(32)).is_err());
    }
}
