//! `selfie`: the edge server binary.
//!
//! - `selfie serve` — run the edge (embedded defaults with no configuration at all);
//! - `selfie config check` / `selfie config print` — validate / show the effective
//!   configuration (secrets redacted);
//! - `selfie migrate` — apply the CQL schema migrations to `storage.cql_url`.

/// mimalloc instead of glibc's malloc: the request path allocates per request (frames,
/// futures), and glibc's arena bookkeeping (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`) was ~12% of the edge's CPU under `selfie-bench rpc`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use selfie_edge::{Config, Edge, config};
use selfie_services::auth::password::PasswordHasher;
use selfie_services::auth::throttle::LoginThrottle;
use selfie_services::plane::Plane;
use selfie_storage::any::AnyStore;
use selfie_storage::{Clock, SystemClock};

#[derive(Parser)]
#[command(name = "selfie", version, about = "Selfie edge server")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "SELFIE_CONFIG")]
    config: Option<PathBuf>,
    /// Override a setting: `section.key=value` (repeatable; wins over file and environment).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge.
    Serve {
        /// UDP address to listen on (shorthand for --set server.listen=...).
        #[arg(long)]
        listen: Option<String>,
        /// Number of shards, 0 for one per core (shorthand for --set server.shards=...).
        #[arg(long)]
        shards: Option<usize>,
        /// Data directory (shorthand for --set server.data_dir=...).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Apply CQL schema migrations to `storage.cql_url`.
    Migrate,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration and exit.
    Check,
    /// Print the effective configuration (secrets redacted).
    Print,
}

fn load(cli: &Cli, extra: Vec<String>) -> anyhow::Result<Config> {
    let mut overrides = cli.overrides.clone();
    overrides.extend(extra);
    Ok(config::load(
        cli.config.as_deref(),
        std::env::vars(),
        &overrides,
    )?)
}

/// Dependencies whose INFO lines are their own business (fjall's lsm-tree logs every
/// table ingestion); they speak at WARN unless the filter names them.
const QUIET: [&str; 3] = ["lsm_tree", "fjall", "scylla"];

/// The log filter: `RUST_LOG` when set, else `log.level`; a plain level (no `target=`
/// directive) keeps the chatty dependencies at WARN.
fn log_filter(level: &str) -> String {
    if level.contains('=') {
        return level.to_string();
    }
    std::iter::once(level.to_string())
        .chain(QUIET.iter().map(|t| format!("{t}=warn")))
        .collect::<Vec<_>>()
        .join(",")
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(&config.log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints a line of `selfie serve`'s status to stdout, ignoring a closed stdout: a
/// supervisor that stopped reading must not turn the `SIGTERM` drain into a panic
/// (`println!` panics on a broken pipe, and did, skipping the drain).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn main() -> anyhow::Result<()> {
    // Every TLS configuration of the edge names its provider; this makes the libraries
    // that take the process default (object_store's S3 client) use the same one.
    let _ = selfie_edge::tls::crypto_provider()
        .as_ref()
        .clone()
        .install_default();
    let cli = Cli::parse();
    match &cli.command {
        Command::Config { action } => {
            let config = load(&cli, Vec::new())?;
            match action {
                ConfigAction::Check => println!("configuration is valid"),
                ConfigAction::Print => print!("{}", config.redacted_toml()),
            }
            Ok(())
        }
        Command::Migrate => {
            let config = load(&cli, Vec::new())?;
            init_logs(&config);
            let url = config
                .storage
                .cql_url
                .as_deref()
                .context("storage.cql_url is not set (e.g. SELFIE_STORAGE_CQL_URL=cql://127.0.0.1:9042/selfie)")?;
            let cql = selfie_storage::cql::CqlConfig::from_url(url)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let applied = rt.block_on(async {
                let session = selfie_storage::cql::connect(&cql).await?;
                selfie_storage::cql::migrate(&session, &cql, selfie_services::schema::MIGRATIONS)
                    .await
            })?;
            if applied.is_empty() {
                println!("schema of {} is up to date", cql.keyspace);
            } else {
                println!("applied migrations {applied:?} to {}", cql.keyspace);
            }
            Ok(())
        }
        Command::Serve {
            listen,
            shards,
            data_dir,
        } => {
            let mut extra = Vec::new();
            if let Some(l) = listen {
                extra.push(format!("server.listen=\"{l}\""));
            }
            if let Some(s) = shards {
                extra.push(format!("server.shards={s}"));
            }
            if let Some(d) = data_dir {
                extra.push(format!("server.data_dir=\"{}\"", d.display()));
            }
            let config = load(&cli, extra)?;
            init_logs(&config);
            let files = raise_open_file_limit();
            tracing::info!(open_files = files, "open file limit");
            // Storage: embedded by default, CQL when configured. The CQL driver's
            // connection tasks run on their own runtime, kept as long as the process.
            let mut storage_rt = None;
            let store = match config.storage.backend.as_str() {
                "cql" => {
                    let rt = storage_rt.insert(
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(1)
                            .thread_name("selfie-storage-io")
                            .enable_all()
                            .build()?,
                    );
                    let url = config
                        .storage
                        .cql_url
                        .as_deref()
                        .context("storage.cql_url")?;
                    let cql = selfie_storage::cql::CqlConfig::from_url(url)?;
                    let tables = selfie_services::schema::tables();
                    let store = rt.block_on(selfie_storage::cql::CqlStore::open(
                        &cql,
                        selfie_services::schema::MIGRATIONS,
                        &tables,
                    ))?;
                    // Commits cut short by a failure (on any node) are finished here: at
                    // start, then every minute (rows filled in, counts recounted).
                    let repairing = store.clone();
                    rt.spawn(async move {
                        let mut every = tokio::time::interval(Duration::from_secs(60));
                        loop {
                            every.tick().await;
                            // Only commits older than any live writer could still be
                            // finishing (driver timeouts × steps), so a slow commit is
                            // never recounted under its own feet.
                            match repairing.repair(Duration::from_secs(300)).await {
                                Ok(r) if r.commits > 0 || r.corrupt > 0 => tracing::info!(
                                    commits = r.commits,
                                    counters_fixed = r.counters_fixed,
                                    unrepairable = r.unrepairable,
                                    corrupt = r.corrupt,
                                    "finished commits cut short"
                                ),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, "commit repair pass failed"),
                            }
                        }
                    });
                    AnyStore::Cql(store)
                }
                _ => AnyStore::Embedded(selfie_storage::embedded::EmbeddedStore::open(
                    config.server.data_dir.join("storage"),
                    &selfie_services::schema::tables(),
                    Arc::new(SystemClock),
                )?),
            };
            // Access tokens in `Hello` are verified with the deployment's signing key,
            // the same key the accounts service signs with.
            let tokens = selfie_edge::auth::load_tokens(&config.auth, &config.server.data_dir)?;
            let auth = Arc::new(selfie_edge::auth::TokenAuthenticator::new(tokens.clone()));
            // The node number, held by a lease in the backend for as long as this process
            // runs (no two live nodes may mint ids with one number).
            let mut lease = Lease::start(&store, &config)?;
            say!("node number {}", lease.number);
            // Sessions revoked while this node was down stay refused: reload the durable
            // revocations young enough to still have live access tokens (plus clock skew).
            let window = tokens.ttl() + Duration::from_secs(300);
            let loaded = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(selfie_services::auth::accounts::load_recent_revocations(
                    &store,
                    tokens.revoked(),
                    SystemClock.now_ms(),
                    window,
                ))
                .context("reloading session revocations")?;
            tracing::info!(loaded, "session revocations reloaded");
            let hasher = PasswordHasher::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                Duration::from_secs(2),
            )?;
            let plane = Plane::new(config.shard_count(), config.delivery.plane());
            // One login throttle for the node, shared by its shards; with Redis, a second
            // layer shared by the fleet, which also spreads session revocations and the
            // delivery plane's events.
            let mut throttle =
                LoginThrottle::new(selfie_services::auth::throttle::ThrottleConfig {
                    register_burst: config.auth.register_burst,
                    register_per_hour: config.auth.register_per_hour,
                    ..Default::default()
                });
            let fleet = match config.storage.redis_url.as_deref() {
                Some(url) => {
                    let fleet = selfie_edge::fleet::Fleet::start(
                        url,
                        "selfie:",
                        tokens.revoked().clone(),
                        throttle.config(),
                        plane.clone(),
                    )?;
                    throttle = throttle.with_fleet(fleet.login_throttle());
                    Some(fleet)
                }
                None => None,
            };
            // Password-reset codes go out through the configured SMTP relay, if any.
            let mailer: Option<Arc<dyn selfie_services::auth::mail::Mailer>> =
                match config.mail.smtp_url.as_deref() {
                    Some(url) => Some(Arc::new(selfie_edge::mail::SmtpMailer::new(
                        url,
                        &config.mail.from,
                    )?)),
                    None => None,
                };
            if config.storage.backend == "cql" && config.storage.media_url.is_none() {
                tracing::warn!(
                    "media blobs are local files on this node: other nodes of a fleet cannot serve them (set storage.media_url)"
                );
            }
            let media = selfie_services::media::MediaNode::open(
                &config.server.data_dir.join("media"),
                config.storage.media_url.as_deref(),
                config.storage.media_cache_bytes,
                config.media,
            )?;
            // Media URLs are signed under a key derived from the fleet's token key, so
            // any node verifies what another minted.
            let url_secret = tokens.secret_key_bytes();
            let deps = selfie_services::Deps {
                store,
                clock: Arc::new(SystemClock),
                node: lease.number,
                tokens,
                hasher,
                throttle,
                mailer,
                graph_locks: fleet.as_ref().map(|f| f.graph_locks()),
                access_ttl: Duration::from_secs(config.auth.access_token_ttl_s),
                plane: plane.clone(),
                chat: config.chat.limits(),
                feed: config.feed.settings(),
                media: Some(media.clone()),
            };
            let factory: selfie_edge::ServiceFactory = Arc::new(move |shard| {
                selfie_services::registry(shard, &deps).unwrap_or_else(|e| {
                    tracing::error!(shard, error = %e, "services unavailable on this shard");
                    selfie_services::plane::Registry::new(shard, &deps.plane)
                })
            });
            let edge = Edge::start(config, plane, factory, auth)?;
            say!(
                "selfie edge listening on udp://{} ({} shards), ops on http://{}",
                edge.addr,
                edge.shards,
                edge.ops_addr
            );
            if let (Some(bound), Some(origin)) =
                (edge.web_addr, edge.serve_media(&media, &url_secret))
            {
                say!("https on tcp://{bound}, media URLs under {origin}");
            }
            drop(url_secret);
            // The signal handlers exist before the last status line: a supervisor that
            // sends SIGTERM as soon as it reads it gets a drain, not the default action.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (mut term, mut int) = {
                use tokio::signal::unix::{SignalKind, signal};
                let _runtime = rt.enter();
                (
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                )
            };
            say!("certificate sha-256: {}", edge.fingerprint);
            let lost = rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => false,
                    _ = int.recv() => false,
                    () = lease.lost() => true,
                }
            });
            if lost {
                tracing::error!(
                    number = lease.number,
                    "lost the node-number lease; draining to stop minting ids"
                );
            }
            say!("draining");
            edge.drain();
            edge.join();
            lease.release();
            drop(fleet);
            drop(storage_rt);
            if lost {
                anyhow::bail!("the node-number lease was lost (storage unreachable or taken over)");
            }
            say!("drained; bye");
            Ok(())
        }
    }
}

/// This process's node-number lease: claimed at start, renewed on its own thread, given
/// back after the drain.
struct Lease {
    number: u16,
    lost: Option<tokio::sync::oneshot::Receiver<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    fn start(store: &AnyStore, config: &Config) -> anyhow::Result<Lease> {
        use selfie_services::lease::{LeaseError, NodeLease};
        let ttl = Duration::from_secs(config.server.node_lease_s);
        let drain = Duration::from_millis(config.server.drain_deadline_ms) + Duration::from_secs(2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let lease = rt
            .block_on(NodeLease::claim(
                store.clone(),
                config.server.node_number,
                &config.server.node_id,
                ttl,
            ))
            .context("claiming a node number")?;
        let number = lease.number();
        let (lost_tx, lost) = tokio::sync::oneshot::channel();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("selfie-lease".into())
            .spawn(move || {
                rt.block_on(async move {
                    // The lease runs `ttl` from the *start* of the last renewal that
                    // succeeded. The node must have drained before then, so it gives up
                    // once `ttl - drain - margin` has passed without one (at least a
                    // third of `ttl`).
                    let give_up = ttl
                        .saturating_sub(drain + Duration::from_secs(3))
                        .max(ttl / 3);
                    let mut last_ok = tokio::time::Instant::now();
                    let mut every = tokio::time::interval(ttl / 6);
                    every.tick().await;
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            _ = every.tick() => {}
                        }
                        let sent = tokio::time::Instant::now();
                        match tokio::time::timeout(ttl / 6, lease.renew()).await {
                            Ok(Ok(())) => last_ok = sent,
                            Ok(Err(LeaseError::Lost(_))) => {
                                let _ = lost_tx.send(());
                                return;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "node-number lease not renewed");
                            }
                            Err(_) => tracing::warn!("node-number lease renewal timed out"),
                        }
                        if last_ok.elapsed() >= give_up {
                            let _ = lost_tx.send(());
                            return;
                        }
                    }
                    if let Err(e) = lease.release().await {
                        tracing::warn!(error = %e, "node-number lease not released");
                    }
                });
            })?;
        Ok(Lease {
            number,
            lost: Some(lost),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Resolves when the lease is lost (never while it is held).
    async fn lost(&mut self) {
        match self.lost.as_mut() {
            // A loss reported, or the renewal thread gone without being told to stop
            // (it panicked): either way nothing renews the lease any more.
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Gives the number back and waits for the renewal thread.
    fn release(mut self) {
        self.stop_renewing();
    }

    fn stop_renewing(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Lease {
    /// Every exit path (an error after the claim included) gives the number back.
    fn drop(&mut self) {
        self.stop_renewing();
    }
}

/// Raises the soft limit on open files to the hard one (often 1,024 against 524,288 or
/// more): a node holds a socket per HTTPS client, a file per download in progress, the
/// store's segment files. Returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid rlimit, read from the kernel, with the soft limit at the hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}
