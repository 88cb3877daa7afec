//! Configuration: embedded defaults, then a TOML file, then `SELFIE_*` environment
//! variables, then command-line overrides — each layer overriding the one before.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Environment
//! variables are `SELFIE_<SECTION>_<KEY>` in upper case (`SELFIE_SERVER_LISTEN`,
//! `SELFIE_STORAGE_CQL_URL`); variables whose second word is not a section name are not
//! configuration and are ignored (`SELFIE_CQL_NODES` belongs to the test harness).
//! Command-line overrides are `section.key=value`. Values are parsed as TOML when they
//! parse (numbers, booleans), else taken as strings.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// QUIC listener and shards.
    pub server: ServerConfig,
    /// TLS certificate.
    pub tls: TlsConfig,
    /// Protection limits.
    pub limits: LimitsConfig,
    /// Ops HTTP endpoints.
    pub ops: OpsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Storage backends.
    pub storage: StorageConfig,
    /// Access tokens.
    pub auth: AuthConfig,
    /// Outgoing mail (verification and password-reset codes).
    pub mail: MailConfig,
    /// The live delivery plane (subscriptions).
    pub delivery: DeliveryConfig,
    /// Chat.
    pub chat: ChatConfig,
    /// Feeds.
    pub feed: FeedConfig,
    /// Media: upload limits, quota, chunk size, processing workers.
    pub media: selfie_services::media::MediaConfig,
    /// HTTPS on TCP: signed media URLs for browsers and CDNs.
    pub web: WebConfig,
}

/// HTTPS on TCP (`[web]`): each shard accepts on its own reuseport listener and serves
/// signed media URLs (`GET`/`HEAD /media/...`) with `Range`, `ETag` and `Cache-Control`,
/// the web client (`client_dir`) and the WebSocket fallback (`/ws`); browsers' origins
/// and WebTransport on the QUIC port are configured here too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// TCP address of the HTTPS listener (the QUIC port's number on TCP is the usual
    /// choice). Absent: no HTTPS, and media URLs are refused as unavailable.
    pub listen: Option<SocketAddr>,
    /// The https origin minted URLs name (`https://media.example.com`, no path), e.g. a
    /// CDN in front of the fleet. Absent: `https://<listen address>` (then `listen` must
    /// name one address, not 0.0.0.0).
    pub public_url: Option<String>,
    /// How long a minted media URL works, seconds (60..=604800).
    pub media_url_ttl_s: u64,
    /// Open HTTPS connections per shard; more are closed at once.
    pub max_connections_per_shard: usize,
    /// Time allowed for a TLS handshake and for a request's headers (also the idle
    /// time of a kept-alive connection), ms.
    pub header_timeout_ms: u64,
    /// WebTransport for browsers on the QUIC port (ALPN `h3`), beside native clients.
    pub webtransport: bool,
    /// Browser origins (`https://app.example.com`) allowed to open WebTransport
    /// sessions, besides this edge's own web origin; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// The built web client (`client-sdk/web/dist/app`, from `npm run build`) to serve
    /// at `/`; absent: none.
    pub client_dir: Option<std::path::PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_url: None,
            media_url_ttl_s: 3600,
            max_connections_per_shard: 10_000,
            header_timeout_ms: 10_000,
            webtransport: true,
            allowed_origins: Vec::new(),
            client_dir: None,
        }
    }
}

impl WebConfig {
    /// The origin of minted URLs, given the address the listener bound.
    pub fn origin(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("https://{bound}"),
        }
    }
}

/// Feeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Authors with more followers than this are not fanned out: their posts are merged
    /// into readers' home feeds at read time.
    pub fanout_threshold: u64,
    /// At most one "new posts" push per reader per this many milliseconds.
    pub push_interval_ms: u64,
    /// Entries kept per home timeline.
    pub home_max: usize,
    /// "For you": most items in a row from one author.
    pub max_consecutive: usize,
    /// "For you": the age, in seconds, at which a post's recency score halves.
    pub half_life_s: u64,
    /// "For you": weight of the reader's affinity with the author, within 0..=100 (0:
    /// affinity does not count).
    pub affinity_weight: f64,
    /// "For you": weight of the post's engagement, within 0..=100.
    pub engagement_weight: f64,
}

impl Default for FeedConfig {
    fn default() -> Self {
        let d = selfie_services::feed::FeedConfig::default();
        Self {
            fanout_threshold: d.fanout_threshold,
            push_interval_ms: d.push_interval.as_millis() as u64,
            home_max: d.home_max,
            max_consecutive: d.max_consecutive,
            half_life_s: d.half_life.as_secs(),
            affinity_weight: d.affinity_weight,
            engagement_weight: d.engagement_weight,
        }
    }
}

impl FeedConfig {
    /// The feed service's settings.
    pub fn settings(&self) -> selfie_services::feed::FeedConfig {
        selfie_services::feed::FeedConfig {
            fanout_threshold: self.fanout_threshold,
            push_interval: std::time::Duration::from_millis(self.push_interval_ms),
            home_max: self.home_max.clamp(1, 100_000),
            max_consecutive: self.max_consecutive.max(1),
            half_life: std::time::Duration::from_secs(self.half_life_s.max(60)),
            affinity_weight: self.affinity_weight,
            engagement_weight: self.engagement_weight,
            ..Default::default()
        }
    }
}

/// Chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// A device more than this many entries behind in a conversation is told to refetch
    /// it (`SyncResponse.limited`) instead of being replayed the gap.
    pub sync_window: u64,
    /// Most events in one sync response.
    pub sync_max_events: usize,
    /// Messages one user may send at once (per shard) after a quiet spell.
    pub send_burst: u32,
    /// Messages one user may send per minute (per shard), sustained.
    pub sends_per_minute: u32,
}

impl Default for ChatConfig {
    fn default() -> Self {
        let d = selfie_services::chat::SyncLimits::default();
        Self {
            sync_window: d.window,
            sync_max_events: d.max_events,
            send_burst: d.send.burst,
            sends_per_minute: d.send.per_minute,
        }
    }
}

impl ChatConfig {
    /// The chat service's sync limits and send rate.
    pub fn limits(&self) -> selfie_services::chat::SyncLimits {
        selfie_services::chat::SyncLimits {
            window: self.sync_window.max(1),
            max_events: self.sync_max_events.clamp(1, 10_000),
            send: selfie_services::chat::SendRate {
                burst: self.send_burst.max(1),
                per_minute: self.sends_per_minute.max(1),
            },
        }
    }
}

/// The live delivery plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Events queued per subscriber before a slow one is cut off with `ResyncRequired`.
    pub subscriber_queue: usize,
    /// How long a publisher waits for room in the owner shard's mailbox (or the fleet's
    /// outgoing queue) before the event is dropped and its subscribers resync.
    pub publish_wait_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let d = selfie_services::plane::DeliveryConfig::default();
        Self {
            subscriber_queue: d.subscriber_queue,
            publish_wait_ms: d.publish_wait.as_millis() as u64,
        }
    }
}

impl DeliveryConfig {
    /// The plane's settings.
    pub fn plane(&self) -> selfie_services::plane::DeliveryConfig {
        selfie_services::plane::DeliveryConfig {
            subscriber_queue: self.subscriber_queue.max(1),
            publish_wait: std::time::Duration::from_millis(self.publish_wait_ms),
        }
    }
}

/// Outgoing mail through an SMTP relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `smtp://host:25` (plain, for a local relay), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS) or `smtps://user:pass@host:465`. Absent: no verification or reset codes
    /// go out, so addresses stay unverified and password resets are unavailable.
    pub smtp_url: Option<String>,
    /// The `From:` address.
    pub from: String,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Selfie <no-reply@localhost>".into(),
        }
    }
}

/// Access tokens (PASETO v4.public, verified at the edge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token issuer (`iss`): one per deployment.
    pub issuer: String,
    /// Lifetime of access tokens, in seconds (short: refresh tokens renew them).
    pub access_token_ttl_s: u64,
    /// Hex file holding the 64-byte Ed25519 signing key, shared by the fleet. Absent: a
    /// key is generated in `<data_dir>/auth/` on first start (single node).
    pub key_file: Option<PathBuf>,
    /// Registrations one address may make at once (each costs an Argon2 hash).
    pub register_burst: u32,
    /// Sustained registrations per address per hour.
    pub register_per_hour: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "selfie".into(),
            access_token_ttl_s: 900,
            key_file: None,
            register_burst: 5,
            register_per_hour: 20,
        }
    }
}

/// The longest busy-poll window a shard may be given ([`ServerConfig::busy_poll_us`]).
pub const MAX_BUSY_POLL_US: u64 = 10_000;

/// QUIC listener and shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// UDP address every shard binds (`SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Number of shards; 0 means one per available core.
    pub shards: usize,
    /// Pin each shard thread to a core.
    pub pin_cores: bool,
    /// This node's id in the fleet (logs, presence, `Welcome.node_id`).
    pub node_id: String,
    /// This node's number in the fleet, 0..=255: it is part of every id the node
    /// generates (Snowflake layout), so no two live nodes may share one. The node holds
    /// it by a lease in the storage backend (`selfie_services::lease`): a configured
    /// number is claimed or the node refuses to start; unset, the first free one is
    /// taken.
    pub node_number: Option<u16>,
    /// Seconds one renewal of the node-number lease lasts (renewed every third of it; a
    /// killed node's number frees itself after this long).
    pub node_lease_s: u64,
    /// Data directory (dev certificate, embedded storage).
    pub data_dir: PathBuf,
    /// Milliseconds that drain waits for in-flight requests before closing connections.
    pub drain_deadline_ms: u64,
    /// Microseconds a shard keeps polling its sockets after an admitted request before
    /// it parks in `epoll_wait` (0: park at once; at most 10,000). A packet that comes
    /// within the window is read without waking the thread (a wake-up costs several µs,
    /// more on a VM); the price is about min(1, requests/s × window) of a core per
    /// shard, so a shard whose requests come less than a window apart reads as busy.
    pub busy_poll_us: u64,
}

/// TLS certificate: both paths, or neither for a generated development certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// Protection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one shard accepts before refusing new ones.
    pub max_connections_per_shard: usize,
    /// Concurrent requests (bidirectional streams) a client may have in flight. Memory
    /// grows with it: quinn reserves ~85 bytes per allowed stream per connection.
    pub max_concurrent_streams: u32,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Time allowed for the QUIC handshake plus `Hello`.
    pub handshake_timeout_ms: u64,
    /// Idle timeout of a connection.
    pub idle_timeout_ms: u64,
    /// Sustained requests per second per connection.
    pub connection_requests_per_second: u32,
    /// Burst of requests per connection.
    pub connection_request_burst: u32,
    /// Sustained requests per second per client IP (per shard).
    pub ip_requests_per_second: u32,
    /// Burst of requests per client IP.
    pub ip_request_burst: u32,
    /// New connections per second per shard above which clients must prove their
    /// address (QUIC Retry, RFC 9000 §8.1).
    pub retry_above_handshakes_per_second: u32,
    /// Protocol errors a connection may cause before it is closed.
    pub max_protocol_errors: u32,
    /// Time a request stream has to deliver its whole request frame, from when it was
    /// opened (a client that sends half a frame and stalls holds nothing longer).
    pub request_read_timeout_ms: u64,
    /// Open connections one client address may hold on this node (IPv4-mapped IPv6
    /// addresses count as their IPv4 address). Mind carrier-grade NATs when lowering it.
    pub max_connections_per_address: usize,
}

/// Ops HTTP endpoints (`/metrics`, `/livez`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// TCP address of the ops server.
    pub listen: SocketAddr,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// An `EnvFilter` directive (`info`, `selfie_edge=debug`, ...).
    pub level: String,
}

/// Storage backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `embedded` (default) or `cql`.
    pub backend: String,
    /// CQL URL (`cql://host:9042/keyspace?rf=3&dc=dc1`), for the `cql` backend and
    /// `selfie migrate`.
    pub cql_url: Option<String>,
    /// Redis URL for fleets: session revocations and login throttling shared by every
    /// node (`selfie_edge::fleet`); presence and fan-out build on it.
    pub redis_url: Option<String>,
    /// Media blobs in an S3-compatible object store, for fleets
    /// (`s3://KEY:SECRET@host:port/bucket?region=us-east-1&tls=true`); unset, they are
    /// files under `<data_dir>/media`.
    pub media_url: Option<String>,
    /// Bytes of each node's local cache in front of `media_url`.
    pub media_cache_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4460)),
            shards: 0,
            pin_cores: true,
            node_id: "edge-1".into(),
            node_number: None,
            node_lease_s: 30,
            data_dir: PathBuf::from(".selfie"),
            drain_deadline_ms: 10_000,
            busy_poll_us: 100,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections_per_shard: 100_000,
            max_concurrent_streams: 128,
            max_frame_bytes: selfie_codec::Limits::DEFAULT.max_frame_bytes,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            connection_requests_per_second: 500,
            connection_request_burst: 1_000,
            ip_requests_per_second: 5_000,
            ip_request_burst: 10_000,
            retry_above_handshakes_per_second: 2_000,
            max_protocol_errors: 8,
            request_read_timeout_ms: 10_000,
            max_connections_per_address: 1_000,
        }
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9460)),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "pretty".into(),
            level: "info".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            cql_url: None,
            redis_url: None,
            media_url: None,
            media_cache_bytes: 4 << 30,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Invalid TOML, an unknown key, or a value of the wrong type.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where it came from (file, environment variable, flag).
        origin: String,
        /// What was wrong.
        message: String,
    },
}

/// Every section of [`Config`] (`SELFIE_<SECTION>_<KEY>` is read for these; a test
/// checks the list against the struct).
const SECTIONS: [&str; 13] = [
    "server", "tls", "limits", "ops", "log", "storage", "auth", "mail", "delivery", "chat", "feed",
    "media", "web",
];

fn scalar(raw: &str) -> Value {
    // `key = <raw>` parses as TOML when it is a number, boolean, array...; else a string.
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

fn set(
    root: &mut Table,
    section: &str,
    key: &str,
    value: Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let entry = root
        .entry(section.to_string())
        .or_insert_with(|| Value::Table(Table::new()));
    match entry {
        Value::Table(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(ConfigError::Invalid {
            origin: origin.into(),
            message: format!("[{section}] is not a table"),
        }),
    }
}

/// Loads the configuration: defaults < `file` < environment (`env`) < `overrides`.
pub fn load(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[String],
) -> Result<Config, ConfigError> {
    let mut root = Table::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        root = text.parse::<Table>().map_err(|e| ConfigError::Invalid {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
        // Check the file alone first, so that its errors name the file.
        Config::deserialize(Value::Table(root.clone())).map_err(|e| ConfigError::Invalid {
            origin: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("SELFIE_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS
            .iter()
            .find(|s| lower.starts_with(&format!("{s}_")))
        else {
            continue;
        };
        let key = &lower[section.len() + 1..];
        set(&mut root, section, key, scalar(&raw), &name)?;
        Config::deserialize(Value::Table(root.clone())).map_err(|e| ConfigError::Invalid {
            origin: format!("environment variable {name}"),
            message: e.to_string(),
        })?;
    }
    for o in overrides {
        let origin = format!("--set {o}");
        let (path, raw) = o.split_once('=').ok_or_else(|| ConfigError::Invalid {
            origin: origin.clone(),
            message: "expected section.key=value".into(),
        })?;
        let (section, key) = path.split_once('.').ok_or_else(|| ConfigError::Invalid {
            origin: origin.clone(),
            message: "expected section.key=value".into(),
        })?;
        set(&mut root, section, key, scalar(raw), &origin)?;
        Config::deserialize(Value::Table(root.clone())).map_err(|e| ConfigError::Invalid {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
    }
    let config = Config::deserialize(Value::Table(root)).map_err(|e| ConfigError::Invalid {
        origin: "configuration".into(),
        message: e.to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

impl Config {
    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            origin: "configuration".into(),
            message,
        };
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(bad("tls.cert and tls.key go together".into()));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return Err(bad(format!(
                "log.format must be pretty or json, not {:?}",
                self.log.format
            )));
        }
        match self.storage.backend.as_str() {
            "embedded" => {}
            "cql" if self.storage.cql_url.is_some() => {}
            "cql" => return Err(bad("storage.backend = \"cql\" needs storage.cql_url".into())),
            other => {
                return Err(bad(format!(
                    "storage.backend must be embedded or cql, not {other:?}"
                )));
            }
        }
        if let Some(url) = &self.storage.cql_url {
            selfie_storage::cql::CqlConfig::from_url(url).map_err(|e| bad(e.to_string()))?;
        }
        if self.server.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(bad(format!(
                "server.busy_poll_us must be at most {MAX_BUSY_POLL_US} (a longer window only burns CPU)"
            )));
        }
        if self.limits.max_frame_bytes < 1024 || self.limits.max_frame_bytes > 16 << 20 {
            return Err(bad(
                "limits.max_frame_bytes must be within 1 KiB..16 MiB".into()
            ));
        }
        if self.limits.request_read_timeout_ms == 0 || self.limits.max_connections_per_address == 0
        {
            return Err(bad(
                "limits.request_read_timeout_ms and limits.max_connections_per_address must be at least 1"
                    .into(),
            ));
        }
        if !(3..=3600).contains(&self.server.node_lease_s) {
            return Err(bad("server.node_lease_s must be within 3..=3600".into()));
        }
        if self
            .server
            .node_number
            .is_some_and(|n| n > selfie_storage::id::MAX_NODE)
        {
            return Err(bad(format!(
                "server.node_number must be within 0..={}",
                selfie_storage::id::MAX_NODE
            )));
        }
        if self.auth.access_token_ttl_s == 0 || self.auth.access_token_ttl_s > 24 * 3600 {
            return Err(bad(
                "auth.access_token_ttl_s must be within 1..=86400".into()
            ));
        }
        if !(1..=65_536).contains(&self.delivery.subscriber_queue)
            || self.delivery.publish_wait_ms > 60_000
        {
            return Err(bad(
                "delivery.subscriber_queue must be within 1..=65536 and delivery.publish_wait_ms at most 60000".into(),
            ));
        }
        if ![self.feed.affinity_weight, self.feed.engagement_weight]
            .iter()
            .all(|w| (0.0..=100.0).contains(w))
        {
            return Err(bad(
                "feed.affinity_weight and feed.engagement_weight must be within 0..=100".into(),
            ));
        }
        self.media.validate().map_err(bad)?;
        if self.storage.media_cache_bytes < selfie_services::media::cache::MIN_CAPACITY {
            return Err(bad(format!(
                "storage.media_cache_bytes must be at least {}",
                selfie_services::media::cache::MIN_CAPACITY
            )));
        }
        if let Some(url) = &self.storage.media_url {
            selfie_services::media::s3::parse_url(url)
                .map_err(|_| bad("storage.media_url must be s3://KEY:SECRET@host[:port]/bucket[?region=..&tls=..]".into()))?;
        }
        if !(60..=7 * 24 * 3600).contains(&self.web.media_url_ttl_s)
            || self.web.max_connections_per_shard == 0
            || self.web.header_timeout_ms == 0
        {
            return Err(bad(
                "web.media_url_ttl_s must be within 60..=604800, web.max_connections_per_shard and web.header_timeout_ms at least 1"
                    .into(),
            ));
        }
        if let Some(u) = &self.web.public_url {
            let parsed = url::Url::parse(u).ok();
            let origin_only = parsed.as_ref().is_some_and(|p| {
                p.scheme() == "https"
                    && p.host().is_some()
                    && p.path() == "/"
                    && p.query().is_none()
                    && p.fragment().is_none()
                    && p.username().is_empty()
                    && p.password().is_none()
            });
            if !origin_only {
                return Err(bad(format!(
                    "web.public_url must be an https origin like https://media.example.com, not {u:?}"
                )));
            }
        } else if self.web.listen.is_some_and(|a| a.ip().is_unspecified()) {
            return Err(bad(
                "web.listen on every address (0.0.0.0 or ::) needs web.public_url, the origin clients reach"
                    .into(),
            ));
        }
        if self.limits.max_concurrent_streams == 0 || self.server.node_id.is_empty() {
            return Err(bad(
                "limits.max_concurrent_streams and server.node_id must be set".into(),
            ));
        }
        Ok(())
    }

    /// Shards to start: the configured number, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.server.shards > 0 {
            self.server.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The configuration as TOML with secrets (URL passwords) redacted.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.storage.cql_url = c.storage.cql_url.as_deref().map(redact_url);
        c.storage.redis_url = c.storage.redis_url.as_deref().map(redact_url);
        c.storage.media_url = c.storage.media_url.as_deref().map(redact_url);
        c.mail.smtp_url = c.mail.smtp_url.as_deref().map(redact_url);
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// Replaces the password of `scheme://user:password@host/...` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".into()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_any_input() {
        let c = load(None, env(&[]), &[]).expect("defaults are valid");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn cli_overrides_env_which_overrides_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("selfie.toml");
        std::fs::write(
            &path,
            "[server]\nshards = 2\nnode_id = \"from-file\"\n[log]\nlevel = \"debug\"\n",
        )
        .expect("write");
        let c = load(
            Some(&path),
            env(&[
                ("SELFIE_SERVER_SHARDS", "3"),
                ("SELFIE_SERVER_NODE_ID", "from-env"),
            ]),
            &["server.shards=4".into()],
        )
        .expect("valid");
        assert_eq!(c.server.shards, 4);
        assert_eq!(c.server.node_id, "from-env");
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn unknown_keys_are_refused_wherever_they_come_from() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("selfie.toml");
        std::fs::write(&path, "[server]\nshardz = 2\n").expect("write");
        let err = load(Some(&path), env(&[]), &[]).expect_err("typo");
        assert!(err.to_string().contains("shardz"), "{err}");
        let err = load(None, env(&[("SELFIE_SERVER_LISTN", "x")]), &[]).expect_err("typo");
        assert!(err.to_string().contains("SELFIE_SERVER_LISTN"), "{err}");
        assert!(load(None, env(&[]), &["nosuch.key=1".into()]).is_err());
        // Not configuration: ignored.
        assert!(load(None, env(&[("SELFIE_CQL_NODES", "127.0.0.1:9042")]), &[]).is_ok());
        // Every section can be set from the environment.
        let sections = toml::Value::try_from(Config::default()).expect("serializes");
        let names: Vec<&String> = sections.as_table().expect("a table").keys().collect();
        assert_eq!(names.len(), SECTIONS.len(), "{names:?}");
        for name in names {
            assert!(
                SECTIONS.contains(&name.as_str()),
                "{name} is not in SECTIONS"
            );
        }
        let c = load(
            None,
            env(&[
                ("SELFIE_FEED_PUSH_INTERVAL_MS", "50"),
                ("SELFIE_CHAT_SYNC_WINDOW", "7"),
            ]),
            &[],
        )
        .expect("feed and chat from the environment");
        assert_eq!((c.feed.push_interval_ms, c.chat.sync_window), (50, 7));
    }

    #[test]
    fn wrong_types_and_inconsistent_values_are_refused() {
        assert!(load(None, env(&[("SELFIE_SERVER_SHARDS", "many")]), &[]).is_err());
        assert!(load(None, env(&[]), &["storage.backend=cql".into()]).is_err());
        assert!(load(None, env(&[]), &["log.format=xml".into()]).is_err());
        assert!(load(None, env(&[]), &["tls.cert=/x.pem".into()]).is_err());
        assert!(load(None, env(&[]), &["server.busy_poll_us=10001".into()]).is_err());
        assert!(load(None, env(&[]), &["server.busy_poll_us=10000".into()]).is_ok());
        assert!(load(None, env(&[("SELFIE_SERVER_BUSY_POLL_US", "0")]), &[]).is_ok());
        for weight in ["-1.0", "101.0", "nan", "inf"] {
            let set = format!("feed.engagement_weight={weight}");
            assert!(load(None, env(&[]), &[set]).is_err(), "{weight}");
        }
        let c = load(
            None,
            env(&[("SELFIE_FEED_AFFINITY_WEIGHT", "2.5")]),
            &["feed.engagement_weight=0".into()],
        )
        .expect("weights");
        let s = c.feed.settings();
        assert_eq!((s.affinity_weight, s.engagement_weight), (2.5, 0.0));
    }

    #[test]
    fn media_urls_need_an_https_origin_clients_can_reach() {
        let web = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            load(None, env(&[]), &sets)
        };
        assert!(web(&["web.listen=\"127.0.0.1:4460\""]).is_ok());
        // Every address: the URLs need the origin clients use.
        assert!(web(&["web.listen=\"0.0.0.0:4460\""]).is_err());
        assert!(
            web(&[
                "web.listen=\"0.0.0.0:4460\"",
                "web.public_url=\"https://media.example.com\""
            ])
            .is_ok()
        );
        for bad in [
            "http://media.example.com",
            "https://media.example.com/path",
            "https://user:pass@media.example.com",
            "https://media.example.com/#x",
            "https://media.example.com/?a=b",
            "media.example.com",
        ] {
            let set = format!("web.public_url=\"{bad}\"");
            assert!(web(&[set.as_str()]).is_err(), "{bad}");
        }
        assert!(web(&["web.media_url_ttl_s=10"]).is_err());
        assert!(web(&["web.max_connections_per_shard=0"]).is_err());
    }

    #[test]
    fn printed_configuration_hides_passwords() {
        let c = load(
            None,
            env(&[(
                "SELFIE_STORAGE_REDIS_URL",
                "redis://app:hunter2@cache:6379/0",
            )]),
            &[],
        )
        .expect("valid");
        let out = c.redacted_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("redis://app:***@cache:6379/0"), "{out}");
    }
}
