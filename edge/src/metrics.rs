//! Prometheus metrics: `selfie_edge_*` with base units and bounded labels (shard,
//! service, error code name; never user ids). Counters are atomics shared with the ops
//! thread; each shard only touches its own label values, so there is no contention.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: shard only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// Shard index.
    pub shard: u16,
}

/// Labels: shard and outcome (`accepted`, `refused_limit`, `refused_draining`, `retry`,
/// `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Shard index.
    pub shard: u16,
    /// Outcome.
    pub outcome: &'static str,
}

/// Labels: shard, service and result code (`ok` or an error code name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Shard index.
    pub shard: u16,
    /// Protocol service (`chat`, `control`, ...; `unknown` when it could not be read).
    pub service: &'static str,
    /// `ok` or the error code's name.
    pub code: &'static str,
}

/// Labels: shard and error code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// Shard index.
    pub shard: u16,
    /// The error code's name.
    pub code: &'static str,
}

/// Labels: shard and HTTP status (the few the HTTPS listener answers with).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Shard index.
    pub shard: u16,
    /// HTTP status code.
    pub status: u16,
}

/// The fleet bridge's counters (`crate::fleet`), one set per process.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Revocations of this node shared with the fleet.
    pub sent: Counter,
    /// Revocations of other nodes applied here.
    pub received: Counter,
    /// Redis operations of the bridge that failed.
    pub errors: Counter,
}

/// The fleet bridge's counters, registered by every [`Metrics`].
pub static FLEET: std::sync::LazyLock<FleetCounters> =
    std::sync::LazyLock::new(FleetCounters::default);

/// Labels: build information.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    protocol: String,
}

/// Every edge metric.
pub struct Metrics {
    /// Open connections.
    pub connections_active: Family<ShardLabel, Gauge>,
    /// Incoming connections by outcome.
    pub connections_total: Family<OutcomeLabels, Counter>,
    /// Completed `Hello`s by outcome (`welcome` or a refusal code).
    pub sessions_total: Family<OutcomeLabels, Counter>,
    /// WebTransport `CONNECT`s by outcome (`accepted`, `bad_origin`, `not_found`,
    /// `bad_request`, `closed`, `timeout`).
    pub webtransport_sessions_total: Family<OutcomeLabels, Counter>,
    /// WebSocket fallback upgrades by outcome (`accepted`, `bad_origin`,
    /// `bad_request`, `refused_limit`, `refused_address`).
    pub websocket_sessions_total: Family<OutcomeLabels, Counter>,
    /// Request streams opened by clients.
    pub streams_total: Family<ShardLabel, Counter>,
    /// Wall-clock seconds of shards' busy-poll windows (`busy_poll_us`): polling their
    /// sockets instead of parking, and the requests served meanwhile.
    pub busy_poll_seconds_total: Family<ShardLabel, Counter<f64, AtomicU64>>,
    /// Busy-poll windows that ended with the shard parking (no request came within it).
    pub busy_polls_total: Family<ShardLabel, Counter>,
    /// Requests by service and result.
    pub requests_total: Family<RequestLabels, Counter>,
    /// Request latency, from the first byte read to the response written.
    pub request_duration_seconds: Family<RequestLabels, Histogram>,
    /// Requests run on another shard (owner routing).
    pub forwarded_total: Family<ShardLabel, Counter>,
    /// Protocol violations by code (malformed frames, floods, ...).
    pub protocol_errors_total: Family<CodeLabels, Counter>,
    /// Connections closed by the server for misbehaviour, by code.
    pub connections_closed_total: Family<CodeLabels, Counter>,
    /// Application bytes received on request streams.
    pub received_bytes_total: Family<ShardLabel, Counter>,
    /// Application bytes sent on request streams.
    pub sent_bytes_total: Family<ShardLabel, Counter>,
    /// Datagrams received.
    pub datagrams_total: Family<OutcomeLabels, Counter>,
    /// Typing and presence datagrams sent to subscribers (`sent`, or `dropped`: too
    /// large for the path, or the connection refused it).
    pub datagrams_sent_total: Family<OutcomeLabels, Counter>,
    /// HTTPS connections by outcome (`accepted`, `refused_limit`, `tls_failed`).
    pub web_connections_total: Family<OutcomeLabels, Counter>,
    /// HTTPS requests by status.
    pub web_requests_total: Family<StatusLabels, Counter>,
    /// HTTPS request latency, from the request's headers read to the answer's headers.
    pub web_request_duration_seconds: Family<StatusLabels, Histogram>,
    /// Body bytes sent over HTTPS.
    pub web_sent_bytes_total: Family<ShardLabel, Counter>,
    /// Collectors may be added after start (the node's media); scrapes lock it briefly.
    registry: std::sync::Mutex<Registry>,
}

/// The node's media metrics, read at each scrape: the blob store in use, and the local
/// cache's hits, misses, fills, evictions and bytes (fleets on an object store).
struct MediaCollector(Arc<selfie_services::media::MediaNode>);

impl std::fmt::Debug for MediaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaCollector")
    }
}

/// Labels: the media blob store and file I/O in use.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MediaStoreLabels {
    store: &'static str,
    file_io: &'static str,
}

impl prometheus_client::collector::Collector for MediaCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use std::sync::atomic::Ordering::Relaxed;
        let info = ConstGauge::new(1i64);
        let labels = MediaStoreLabels {
            store: self.0.blobs().backend(),
            file_io: self.0.file_io(),
        };
        let mut m = encoder.encode_descriptor(
            "selfie_media_store_info",
            "The media blob store and file I/O in use",
            None,
            info.metric_type(),
        )?;
        info.encode(m.encode_family(&labels)?)?;
        let (cached, read, open) = selfie_services::media::blob::download_stats();
        for (name, help, value) in [
            (
                "selfie_media_download_pieces_cached",
                "Download pieces copied from the page cache on a shard (RWF_NOWAIT)",
                cached,
            ),
            (
                "selfie_media_download_pieces_read",
                "Download pieces read from an open file on the blocking pool",
                read,
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let open = ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "selfie_media_download_files_open",
            "Downloads holding their blob's file open",
            None,
            open.metric_type(),
        )?)?;
        let Some(cache) = self.0.cache() else {
            return Ok(());
        };
        let stats = cache.stats();
        for (name, help, value) in [
            (
                "selfie_media_cache_hits",
                "Blob reads served from the node's cache",
                stats.hits.load(Relaxed),
            ),
            (
                "selfie_media_cache_misses",
                "Blob reads that found nothing cached",
                stats.misses.load(Relaxed),
            ),
            (
                "selfie_media_cache_fills",
                "Whole blobs fetched from the object store into the cache",
                stats.fills.load(Relaxed),
            ),
            (
                "selfie_media_cache_evictions",
                "Blobs evicted from the cache to stay within its capacity",
                stats.evictions.load(Relaxed),
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let bytes = ConstGauge::new(i64::try_from(cache.cached_bytes()).unwrap_or(i64::MAX));
        bytes.encode(encoder.encode_descriptor(
            "selfie_media_cache_bytes",
            "Bytes held in the node's media cache",
            None,
            bytes.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Metrics {
    /// Creates and registers every metric, the service plane's included.
    pub fn new(plane: &selfie_services::plane::Plane) -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Self {
            connections_active: Family::default(),
            connections_total: Family::default(),
            sessions_total: Family::default(),
            webtransport_sessions_total: Family::default(),
            websocket_sessions_total: Family::default(),
            streams_total: Family::default(),
            busy_poll_seconds_total: Family::default(),
            busy_polls_total: Family::default(),
            requests_total: Family::default(),
            request_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
            }),
            forwarded_total: Family::default(),
            protocol_errors_total: Family::default(),
            connections_closed_total: Family::default(),
            received_bytes_total: Family::default(),
            sent_bytes_total: Family::default(),
            datagrams_total: Family::default(),
            datagrams_sent_total: Family::default(),
            web_connections_total: Family::default(),
            web_requests_total: Family::default(),
            web_request_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
            }),
            web_sent_bytes_total: Family::default(),
            registry: std::sync::Mutex::new(Registry::default()),
        };
        let r = &mut registry;
        r.register(
            "selfie_edge_connections_active",
            "Open QUIC connections",
            m.connections_active.clone(),
        );
        r.register(
            "selfie_edge_connections",
            "Incoming connections by outcome",
            m.connections_total.clone(),
        );
        r.register(
            "selfie_edge_sessions",
            "Hello outcomes",
            m.sessions_total.clone(),
        );
        r.register(
            "selfie_edge_webtransport_sessions",
            "WebTransport CONNECT outcomes",
            m.webtransport_sessions_total.clone(),
        );
        r.register(
            "selfie_edge_websocket_sessions",
            "WebSocket fallback upgrade outcomes",
            m.websocket_sessions_total.clone(),
        );
        r.register(
            "selfie_edge_streams",
            "Request streams opened by clients",
            m.streams_total.clone(),
        );
        r.register(
            "selfie_edge_busy_poll_seconds",
            "Wall-clock seconds in busy-poll windows (polling instead of parking)",
            m.busy_poll_seconds_total.clone(),
        );
        r.register(
            "selfie_edge_busy_polls",
            "Busy-poll windows that ended with the shard parking",
            m.busy_polls_total.clone(),
        );
        r.register(
            "selfie_edge_requests",
            "Requests by service and result code",
            m.requests_total.clone(),
        );
        r.register(
            "selfie_edge_request_duration_seconds",
            "Request latency at the edge",
            m.request_duration_seconds.clone(),
        );
        r.register(
            "selfie_edge_forwarded",
            "Requests forwarded to their owner shard",
            m.forwarded_total.clone(),
        );
        r.register(
            "selfie_edge_protocol_errors",
            "Protocol violations by code",
            m.protocol_errors_total.clone(),
        );
        r.register(
            "selfie_edge_connections_closed",
            "Connections closed by the server for misbehaviour, by code",
            m.connections_closed_total.clone(),
        );
        r.register(
            "selfie_edge_received_bytes",
            "Bytes received on request streams",
            m.received_bytes_total.clone(),
        );
        r.register(
            "selfie_edge_sent_bytes",
            "Bytes sent on request streams",
            m.sent_bytes_total.clone(),
        );
        r.register(
            "selfie_edge_datagrams",
            "Datagrams received by outcome",
            m.datagrams_total.clone(),
        );
        r.register(
            "selfie_edge_datagrams_sent",
            "Typing and presence datagrams sent to subscribers, by outcome",
            m.datagrams_sent_total.clone(),
        );
        r.register(
            "selfie_edge_web_connections",
            "HTTPS connections by outcome",
            m.web_connections_total.clone(),
        );
        r.register(
            "selfie_edge_web_requests",
            "HTTPS requests by status",
            m.web_requests_total.clone(),
        );
        r.register(
            "selfie_edge_web_request_duration_seconds",
            "HTTPS request latency to the answer's headers",
            m.web_request_duration_seconds.clone(),
        );
        r.register(
            "selfie_edge_web_sent_bytes",
            "Body bytes sent over HTTPS",
            m.web_sent_bytes_total.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                protocol: selfie_protocol::PROTOCOL_VERSION.to_string(),
            })
            .set(1);
        r.register("selfie_build_info", "Build information", build);
        plane.metrics.register(r);
        r.register(
            "selfie_fleet_revocations_sent",
            "Session revocations of this node shared with the fleet",
            FLEET.sent.clone(),
        );
        r.register(
            "selfie_fleet_revocations_received",
            "Session revocations of other nodes applied here",
            FLEET.received.clone(),
        );
        r.register(
            "selfie_fleet_errors",
            "Redis operations of the fleet bridge that failed",
            FLEET.errors.clone(),
        );
        Arc::new(Self {
            registry: std::sync::Mutex::new(registry),
            ..m
        })
    }

    /// Exports the node's media metrics (`selfie_media_*`).
    pub fn observe_media(&self, media: Arc<selfie_services::media::MediaNode>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(MediaCollector(media)));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
