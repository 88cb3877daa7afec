//! The Selfie edge: the thread-per-core QUIC server every client byte passes through.
//!
//! The one idea: **one shard per core, shared-nothing.** Each shard is a pinned thread
//! with a tokio `current_thread` runtime, its own `SO_REUSEPORT` UDP socket and quinn
//! endpoint, and its own instance of every service (a [`Registry`] of the service plane,
//! `selfie_services::plane`). Connection ids name their shard and a BPF program steers
//! packets by them ([`steering`]), so a client whose address changes stays on its shard.
//! A request for a key owned by another shard travels through that shard's bounded
//! mailbox (`Shards::forward`) carrying the verified frame's `Bytes`, and its answer comes
//! back on the original stream; the same mailboxes carry typed calls between shards and
//! the delivery plane's fan-out. Subscriptions are push streams fed by the delivery
//! plane.
//!
//! A connection starts with a control stream (`Hello` → `Welcome`, [`session`]); each
//! request is a bidirectional stream carrying one verified `Envelope`; admission control,
//! rate limits and typed errors guard every step ([`shard`]). On SIGTERM the edge drains:
//! `/readyz` turns 503, new connections are refused, clients get `GoAway`, in-flight
//! requests finish, connections close at the deadline ([`Edge::drain`]).
//!
//! This crate is transport, sessions and dispatch: it holds no domain logic and no wire
//! adapters (each service owns its table in `selfie-services`) and no storage code; it
//! must not be imported by either.

pub mod auth;
pub mod config;
pub mod fleet;
pub mod mail;
pub mod metrics;
pub mod ops;
pub mod session;
pub mod shard;
pub mod steering;
pub mod tls;
pub mod webapp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

pub use config::Config;
pub use selfie_services::ErrorReply;
pub use selfie_services::plane::{Call, Plane, Registry, RequestContext, Service, ShardId};
pub use session::{AnonymousOnly, Authenticator, Principal};

/// Builds a shard's registry; called once on each shard thread.
pub type ServiceFactory = Arc<dyn Fn(ShardId) -> Registry + Send + Sync>;

/// Requests QUIC lets a client open beyond the application's limit: with this margin
/// the edge itself (not QUIC flow control) answers a client over the limit, with a typed
/// `TooManyStreams`, while the memory QUIC reserves stays close to the limit.
pub const STREAM_MARGIN: u32 = 8;

/// Requests a new connection may have open at once before it shows it is busy. quinn
/// keeps a stream-map entry per *allowed* stream on every connection (measured with
/// heaptrack: ~10.5 KiB of a connection's ~40 KiB heap at 136 allowed streams; the maps
/// grow with the entries, so about a quarter of that at 32), so connections start with
/// this allowance and are raised to the full one ([`full_stream_allowance`]) once 16
/// requests are in flight on them or 16 started within a second (`Conn::note_busy`).
pub const INITIAL_STREAMS: u32 = 32;

/// The bidirectional streams QUIC allows a busy connection: the application's limit
/// plus [`STREAM_MARGIN`].
pub fn full_stream_allowance(limits: &config::LimitsConfig) -> u32 {
    limits.max_concurrent_streams.saturating_add(STREAM_MARGIN)
}

/// The QUIC transport settings of an edge with `limits` — and of the raw-quinn baseline
/// that `bench/` measures it against, which must be configured the same way.
pub fn transport_config(limits: &config::LimitsConfig) -> anyhow::Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(
        full_stream_allowance(limits).min(INITIAL_STREAMS),
    ));
    // Native clients open no unidirectional streams (pushes are the server's); browsers
    // open three for HTTP/3 (control and the two QPACK streams).
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(3));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_millis(
        limits.idle_timeout_ms,
    ))?));
    transport.datagram_receive_buffer_size(Some(64 * 1024));
    // Windows sized deliberately (quinn's defaults assume 100 Mbit/s × 100 ms).
    transport.stream_receive_window(quinn::VarInt::from_u32(1 << 20));
    transport.receive_window(quinn::VarInt::from_u32(8 << 20));
    transport.send_window(8 << 20);
    Ok(transport)
}

/// A running edge.
pub struct Edge {
    /// The UDP address clients connect to.
    pub addr: SocketAddr,
    /// The ops HTTP address.
    pub ops_addr: SocketAddr,
    /// The HTTPS address (`[web]`), when enabled.
    pub web_addr: Option<SocketAddr>,
    /// SHA-256 of the server certificate (hex), for clients that pin it.
    pub fingerprint: String,
    /// The number of shards.
    pub shards: usize,
    shared: Arc<shard::Shared>,
    drain: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    ops_shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    ops_thread: Option<JoinHandle<()>>,
}

impl Edge {
    /// Binds every shard and the ops port and starts serving. `plane` is the node's
    /// service plane (one mailbox per shard, the delivery plane); `factory` builds each
    /// shard's registry on its thread.
    pub fn start(
        config: Config,
        plane: Arc<Plane>,
        factory: ServiceFactory,
        auth: Arc<dyn Authenticator>,
    ) -> anyhow::Result<Edge> {
        config.validate()?;
        let shards = config.shard_count();
        anyhow::ensure!(
            plane.shards().count() == shards,
            "the plane has {} shards, the configuration {shards}",
            plane.shards().count()
        );
        let identity = tls::load_identity(&config.tls, &config.server.data_dir)?;
        let fingerprint = identity.fingerprint();
        let mut server_config = tls::quic_server_config(&identity, config.web.webtransport)?;
        let limits = &config.limits;
        server_config.transport_config(Arc::new(transport_config(limits)?));
        server_config.max_incoming(limits.max_connections_per_shard.max(1));

        let sockets = steering::bind_group(config.server.listen, shards)?;
        let addr = sockets
            .first()
            .map(std::net::UdpSocket::local_addr)
            .transpose()?
            .ok_or_else(|| anyhow::anyhow!("no shard socket"))?;
        // HTTPS on TCP (`[web]`): one reuseport listener per shard.
        let (web_listeners, web_addr) = match config.web.listen {
            Some(listen) => {
                let listeners = bind_tcp_group(listen, shards)?;
                let bound = listeners
                    .first()
                    .map(std::net::TcpListener::local_addr)
                    .transpose()?;
                (listeners.into_iter().map(Some).collect(), bound)
            }
            None => ((0..shards).map(|_| None).collect::<Vec<_>>(), None),
        };
        let web_tls = tls::https_server_config(&identity)?;
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut mailboxes = Vec::with_capacity(shards);
        for id in 0..shards {
            mailboxes.push(
                plane
                    .shards()
                    .take_mailbox(id)
                    .ok_or_else(|| anyhow::anyhow!("shard {id}'s mailbox is already taken"))?,
            );
        }
        let shared = Arc::new(shard::Shared {
            metrics: metrics::Metrics::new(&plane),
            auth,
            factory,
            plane,
            shards,
            heartbeats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            running: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            per_address: Default::default(),
            drain: drain_rx,
            webapp: match (&config.web.client_dir, web_addr) {
                (Some(dir), Some(_)) => Some(webapp::WebApp::load(
                    dir,
                    addr.port(),
                    (config.tls.cert.is_none() && config.web.webtransport)
                        .then_some(fingerprint.as_str()),
                )?),
                (Some(_), None) => anyhow::bail!("web.client_dir needs web.listen"),
                _ => None,
            },
            origins: shard::Origins::new(
                &config.web.allowed_origins,
                web_addr
                    .map(|a| format!("https://{a}"))
                    .into_iter()
                    .chain(config.web.public_url.clone()),
            ),
            config: config.clone(),
        });
        let cores = if config.server.pin_cores {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut threads = Vec::with_capacity(shards);
        let per_shard = sockets.into_iter().zip(mailboxes).zip(web_listeners);
        for (id, ((socket, rx), web)) in per_shard.enumerate() {
            let shared = shared.clone();
            let server_config = server_config.clone();
            let web = web.map(|l| (l, web_tls.clone()));
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("selfie-shard-{id}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        if let Err(e) = shard::run(id, socket, server_config, web, shared, rx) {
                            error!(shard = id, error = %e, "shard failed");
                        }
                    })?,
            );
        }
        // Ops HTTP on its own thread.
        let listener = std::net::TcpListener::bind(config.ops.listen)?;
        listener.set_nonblocking(true)?;
        let ops_addr = listener.local_addr()?;
        let (ops_shutdown, ops_stop) = tokio::sync::oneshot::channel::<()>();
        let router = ops::router(shared.clone());
        let ops_thread = std::thread::Builder::new()
            .name("selfie-ops".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return error!(error = %e, "ops runtime"),
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return error!("ops listener");
                    };
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = ops_stop.await;
                        })
                        .await;
                });
            })?;
        info!(%addr, %ops_addr, ?web_addr, shards, fingerprint = %fingerprint, "edge started");
        Ok(Edge {
            addr,
            ops_addr,
            web_addr,
            fingerprint,
            shards,
            shared,
            drain: drain_tx,
            threads,
            ops_shutdown: Some(ops_shutdown),
            ops_thread: Some(ops_thread),
        })
    }

    /// Attaches the node's media: its metrics are exported (`selfie_media_*`), and it
    /// mints signed URLs that this edge's HTTPS listener serves, keyed from `secret`
    /// (the fleet's token signing key, so that every node verifies them). Returns the
    /// URLs' origin, or `None` when the edge has no `[web]` listener.
    pub fn serve_media(
        &self,
        media: &Arc<selfie_services::media::MediaNode>,
        secret: &[u8],
    ) -> Option<String> {
        self.shared.metrics.observe_media(media.clone());
        let web = &self.shared.config.web;
        let origin = web.origin(self.web_addr?);
        media.serve_urls(selfie_services::media::urls::UrlSigner::new(
            secret,
            &origin,
            Duration::from_secs(web.media_url_ttl_s),
        ));
        Some(origin)
    }

    /// The metrics registry (tests, embedding).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.shared.metrics
    }

    /// Starts draining: `/readyz` turns 503, new connections are refused, clients get
    /// `GoAway`, in-flight requests finish, connections close at the deadline.
    pub fn drain(&self) {
        let _ = self.drain.send(true);
    }

    /// Waits for every shard to finish draining, then stops the ops server.
    pub fn join(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(tx) = self.ops_shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.ops_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Edge {
    /// A dropped edge drains and stops, so that no shard thread outlives its handle.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.drain();
            self.stop_threads();
        }
    }
}

/// `count` TCP listeners sharing `addr` with `SO_REUSEPORT` (the kernel spreads new
/// connections over them); port 0 binds the first to a free port and the rest to it.
fn bind_tcp_group(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("bound socket has no inet address"))?;
        addr.set_port(bound.port());
        listeners.push(std::net::TcpListener::from(socket));
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect: the edge allowed twice its application limit of streams and the bench's
    /// raw-quinn baseline another number; both now come from `transport_config`, which
    /// allows a new connection `INITIAL_STREAMS` (raised to the limit plus a small margin
    /// when it is busy), and three client-opened unidirectional streams (HTTP/3's control
    /// and QPACK streams for WebTransport; a native client's are stopped at once).
    #[test]
    fn quic_allows_the_initial_allowance_then_the_limit_plus_the_margin() {
        let limits = config::LimitsConfig::default();
        assert_eq!(
            full_stream_allowance(&limits),
            limits.max_concurrent_streams + STREAM_MARGIN
        );
        let t = format!("{:?}", transport_config(&limits).expect("config"));
        let bidi = quinn::VarInt::from_u32(INITIAL_STREAMS);
        assert!(
            t.contains(&format!("max_concurrent_bidi_streams: {bidi:?}")),
            "{t}"
        );
        let three = quinn::VarInt::from_u32(3);
        assert!(
            t.contains(&format!("max_concurrent_uni_streams: {three:?}")),
            "{t}"
        );
    }
}
