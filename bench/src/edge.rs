//! Edge scenarios, each run side by side with a raw quinn baseline in the same
//! invocation:
//!
//! - `rpc`: K connections × M requests in flight (a `Ping` request through the edge:
//!   verify, admission, dispatch, encode) vs raw quinn echo of the same request bytes on
//!   the same connections/streams pattern;
//! - `connect`: new connections per second (QUIC handshake + `Hello`/`Welcome` vs a bare
//!   QUIC handshake);
//! - `idle`: N idle connections; server memory per connection (RSS delta / N).
//!
//! Servers run as child processes (`selfie serve`, `selfie-bench echo-server`), so that
//! their CPU time (from `/proc/<pid>/stat`) and memory are theirs alone; the load
//! generator runs on one current-thread runtime in this process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use selfie_client::{Client, ClientConfig, Trust};
use selfie_codec::{Encoder, Limits, build};

use crate::report::{Latencies, Line};

/// The CPUs server children are started on (`--server-cpus`), if set.
static SERVER_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

/// Starts every later server child on `cpus`.
pub fn set_server_cpus(cpus: Vec<usize>) {
    let _ = SERVER_CPUS.set(cpus);
}

/// `0-3,6` → [0, 1, 2, 3, 6].
pub fn parse_cpus(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => cpus.push(part.parse()?),
        }
    }
    anyhow::ensure!(!cpus.is_empty(), "no CPUs in {list:?}");
    Ok(cpus)
}

/// A CPU mask of `cpus` (those beyond the mask's size are ignored).
fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is plain bits; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: `c` is within the set's size.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
    }
    set
}

/// Pins this process (its threads started later inherit it) to `cpus`.
pub fn pin_this_process(cpus: &[usize]) -> anyhow::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: a valid set of the size passed, for this process.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    anyhow::ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A server child process and what it printed about itself.
pub struct ServerProcess {
    child: Child,
    /// UDP address.
    pub addr: SocketAddr,
    /// Certificate SHA-256 (hex).
    pub fingerprint: String,
    /// HTTPS address (`[web]`), when the server has one.
    pub web: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> anyhow::Result<Self> {
        if let Some(cpus) = SERVER_CPUS.get() {
            use std::os::unix::process::CommandExt;
            let set = cpu_set(cpus);
            // SAFETY: between fork and exec only `sched_setaffinity` runs (async-signal
            // safe), on a set built before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start server process")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint, mut web) = (None, None, None);
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.split("udp://").nth(1) {
                addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("https on tcp://") {
                web = rest.split(',').next().and_then(|a| a.parse().ok());
            }
            if let Some(f) = line.strip_prefix("certificate sha-256: ") {
                fingerprint = Some(f.trim().to_string());
            }
            if addr.is_some() && fingerprint.is_some() {
                break;
            }
        }
        // Keep draining stdout so that the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        match (addr, fingerprint) {
            (Some(addr), Some(fingerprint)) => Ok(Self {
                child,
                addr,
                fingerprint,
                web,
                _dir: dir,
            }),
            _ => {
                let _ = child.kill();
                bail!("server did not print its address and certificate")
            }
        }
    }

    /// `selfie serve` with `shards` shards and limits raised for load testing.
    pub fn edge(shards: usize) -> anyhow::Result<Self> {
        Self::edge_with(shards, &[])
    }

    /// [`ServerProcess::edge`] with extra `SELFIE_*` settings.
    pub fn edge_with(shards: usize, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let exe = sibling_exe("selfie")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            &shards.to_string(),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("SELFIE_OPS_LISTEN", "127.0.0.1:0")
        .env("SELFIE_LOG_LEVEL", "warn")
        .env("SELFIE_SERVER_PIN_CORES", "false")
        .env("SELFIE_LIMITS_CONNECTION_REQUESTS_PER_SECOND", "100000000")
        .env("SELFIE_LIMITS_CONNECTION_REQUEST_BURST", "100000000")
        .env("SELFIE_LIMITS_IP_REQUESTS_PER_SECOND", "100000000")
        .env("SELFIE_LIMITS_IP_REQUEST_BURST", "100000000")
        .env("SELFIE_CHAT_SEND_BURST", "100000000")
        .env("SELFIE_CHAT_SENDS_PER_MINUTE", "100000000")
        .env(
            "SELFIE_LIMITS_RETRY_ABOVE_HANDSHAKES_PER_SECOND",
            "100000000",
        )
        // Every bench client connects (and registers) from one address.
        .env("SELFIE_LIMITS_MAX_CONNECTIONS_PER_ADDRESS", "100000000")
        .env("SELFIE_AUTH_REGISTER_BURST", "100000000")
        .env("SELFIE_AUTH_REGISTER_PER_HOUR", "100000000")
        .env("SELFIE_LIMITS_IDLE_TIMEOUT_MS", "120000");
        for (k, v) in settings {
            cmd.env(k, v);
        }
        Self::spawn(cmd, dir)
    }

    /// The raw quinn echo baseline (`selfie-bench echo-server`).
    pub fn echo() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["echo-server", "--data-dir"]).arg(dir.path());
        Self::spawn(cmd, dir)
    }

    /// CPU time (user + system) the process has used.
    pub fn cpu(&self) -> Duration {
        proc_cpu(self.child.id()).unwrap_or_default()
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// Trust for clients of this server.
    pub fn trust(&self) -> anyhow::Result<Trust> {
        Ok(Trust::pinned_hex(&self.fingerprint)?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling_exe(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{} not found: build it first (cargo build --release -p selfie-edge)",
            path.display()
        )
    }
}

pub(crate) fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // utime and stime are in USER_HZ, which is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// Arguments shared by the edge scenarios.
#[derive(clap::Args, Clone)]
pub struct RpcArgs {
    /// Connections.
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub(crate) in_flight: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Edge shards (the baseline echo server is one thread).
    #[arg(long, default_value_t = 1)]
    pub(crate) shards: usize,
    /// Also run the edge with two shards and report 2 ÷ 1 shard throughput.
    #[arg(long)]
    pub(crate) scaling: bool,
    /// Also run the same pings over WebTransport and the WebSocket fallback (browsers'
    /// transports), on the same edge process as the native run.
    #[arg(long)]
    pub(crate) browser: bool,
    /// Also print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

fn ping_frame() -> Bytes {
    let mut enc = Encoder::new(Limits::DEFAULT);
    enc.encode_bytes(|b| build::ping(b, 1, 0))
        .unwrap_or_default()
}

pub(crate) async fn edge_rpc(
    server: &ServerProcess,
    args: &RpcArgs,
    name: &str,
) -> anyhow::Result<(Line, Duration)> {
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse()?)?;
    let prepared = ClientConfig::new(server.addr, server.trust()?).prepared()?;
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(Rc::new(
            Client::connect_on(&endpoint, prepared.clone()).await?,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu0 = server.cpu();
    let start = Instant::now();
    let tasks = clients
        .iter()
        .flat_map(|c| (0..args.in_flight).map(move |_| c.clone()))
        .map(|c| async move {
            let mut lat = Latencies::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                c.ping().await?;
                lat.record(t.elapsed());
                n += 1;
            }
            anyhow::Ok((n, lat))
        });
    let results = futures::future::join_all(tasks).await;
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu0);
    let (ops, lat) = merge(results)?;
    Ok((
        Line {
            name: name.into(),
            ops,
            elapsed,
            lat,
        },
        cpu,
    ))
}

pub(crate) async fn echo_rpc(
    server: &ServerProcess,
    args: &RpcArgs,
) -> anyhow::Result<(Line, Duration)> {
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse()?)?;
    let config = selfie_client::quic_client_config(&server.trust()?)?;
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        conns.push(
            endpoint
                .connect_with(config.clone(), server.addr, "localhost")?
                .await?,
        );
    }
    let request = ping_frame();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu0 = server.cpu();
    let start = Instant::now();
    let tasks = conns
        .iter()
        .flat_map(|c| (0..args.in_flight).map(move |_| c.clone()))
        .map(|c| {
            let request = request.clone();
            async move {
                let mut lat = Latencies::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (mut send, mut recv) = c.open_bi().await?;
                    send.write_all(&request).await?;
                    send.finish()?;
                    let response = recv.read_to_end(64 * 1024).await?;
                    anyhow::ensure!(response.len() == request.len(), "echo mismatch");
                    lat.record(t.elapsed());
                    n += 1;
                }
                anyhow::Ok((n, lat))
            }
        });
    let results = futures::future::join_all(tasks).await;
    let elapsed = start.elapsed();
    let cpu = server.cpu().saturating_sub(cpu0);
    let (ops, lat) = merge(results)?;
    Ok((
        Line {
            name: "raw quinn echo (baseline)".into(),
            ops,
            elapsed,
            lat,
        },
        cpu,
    ))
}

/// Sums the operation counts and merges the latencies of load tasks.
pub(crate) fn merge(
    results: Vec<anyhow::Result<(u64, Latencies)>>,
) -> anyhow::Result<(u64, Latencies)> {
    let mut lat = Latencies::new();
    let mut ops = 0;
    for r in results {
        let (n, l) = r?;
        ops += n;
        lat.merge(&l);
    }
    Ok((ops, lat))
}

pub(crate) fn cpu_per_op(cpu: Duration, ops: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / ops.max(1) as f64
}

pub(crate) fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `rpc`: edge vs raw quinn, same connections, in-flight requests and request bytes.
pub fn rpc(args: RpcArgs) -> anyhow::Result<()> {
    let rt = current_thread()?;
    println!(
        "rpc: {} connections x {} in flight, {} s per run, request {} bytes",
        args.connections,
        args.in_flight,
        args.seconds,
        ping_frame().len()
    );
    let echo = ServerProcess::echo()?;
    let (base, base_cpu) = rt.block_on(echo_rpc(&echo, &args))?;
    drop(echo);
    let edge = if args.browser {
        ServerProcess::edge_with(args.shards, &[("SELFIE_WEB_LISTEN", "127.0.0.1:0")])?
    } else {
        ServerProcess::edge(args.shards)?
    };
    let label = format!(
        "edge ping ({} shard{})",
        args.shards,
        if args.shards == 1 { "" } else { "s" }
    );
    let (ours, our_cpu) = rt.block_on(edge_rpc(&edge, &args, &label))?;
    let mut browser = Vec::new();
    if args.browser {
        browser.push(rt.block_on(crate::browser::webtransport_rpc(&edge, &args))?);
        browser.push(rt.block_on(crate::browser::websocket_rpc(&edge, &args))?);
    }
    drop(edge);
    let mut lines = vec![(base, base_cpu), (ours, our_cpu)];
    if args.scaling {
        for shards in [1, 2] {
            if shards == args.shards {
                continue;
            }
            let edge = ServerProcess::edge(shards)?;
            let label = format!(
                "edge ping ({shards} shard{})",
                if shards == 1 { "" } else { "s" }
            );
            lines.push(rt.block_on(edge_rpc(&edge, &args, &label))?);
        }
    }
    for (l, cpu) in &lines {
        println!(
            "{}  server CPU {:.2} µs/req",
            l.text(),
            cpu_per_op(*cpu, l.ops)
        );
    }
    let (b, bc) = &lines[0];
    let (o, oc) = &lines[1];
    println!(
        "ratios (edge ÷ raw quinn): throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, server CPU per request {:.2}x",
        o.rate() / b.rate(),
        o.lat.p(0.5) as f64 / b.lat.p(0.5).max(1) as f64,
        o.lat.p(0.99) as f64 / b.lat.p(0.99).max(1) as f64,
        cpu_per_op(*oc, o.ops) / cpu_per_op(*bc, b.ops).max(f64::EPSILON),
    );
    for (l, cpu) in &browser {
        println!(
            "{}  server CPU {:.2} µs/req",
            l.text(),
            cpu_per_op(*cpu, l.ops)
        );
        println!(
            "ratios ({} ÷ native edge): throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, server CPU per request {:.2}x; throughput ÷ raw quinn {:.2}x",
            l.name,
            l.rate() / o.rate(),
            l.lat.p(0.5) as f64 / o.lat.p(0.5).max(1) as f64,
            l.lat.p(0.99) as f64 / o.lat.p(0.99).max(1) as f64,
            cpu_per_op(*cpu, l.ops) / cpu_per_op(*oc, o.ops).max(f64::EPSILON),
            l.rate() / b.rate(),
        );
    }
    lines.extend(browser);
    if args.scaling {
        let one = lines.iter().find(|(l, _)| l.name.contains("(1 shard)"));
        let two = lines.iter().find(|(l, _)| l.name.contains("(2 shards)"));
        if let (Some((one, _)), Some((two, _))) = (one, two) {
            println!(
                "scaling: 2 shards ÷ 1 shard throughput {:.2}x",
                two.rate() / one.rate()
            );
        }
    }
    if args.json {
        let v: Vec<_> = lines.iter().map(|(l, _)| l.json()).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Arguments of `connect`.
#[derive(clap::Args, Clone)]
pub struct ConnectArgs {
    /// Connection attempts in flight.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Edge shards.
    #[arg(long, default_value_t = 1)]
    pub(crate) shards: usize,
    /// Also print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn connect_loop(
    server: &ServerProcess,
    args: &ConnectArgs,
    edge: bool,
    name: &str,
) -> anyhow::Result<Line> {
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse()?)?;
    let trust = server.trust()?;
    let quic = selfie_client::quic_client_config(&trust)?;
    let prepared = ClientConfig::new(server.addr, trust).prepared()?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let tasks = (0..args.concurrency).map(|_| {
        let (endpoint, prepared, quic) = (endpoint.clone(), prepared.clone(), quic.clone());
        async move {
            let mut lat = Latencies::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if edge {
                    let c = Client::connect_on(&endpoint, prepared.clone()).await?;
                    lat.record(t.elapsed());
                    c.close();
                } else {
                    let c = endpoint
                        .connect_with(quic.clone(), server.addr, "localhost")?
                        .await?;
                    lat.record(t.elapsed());
                    c.close(quinn::VarInt::from_u32(0), b"");
                }
                n += 1;
            }
            anyhow::Ok((n, lat))
        }
    });
    let results = futures::future::join_all(tasks).await;
    let elapsed = start.elapsed();
    let (ops, lat) = merge(results)?;
    Ok(Line {
        name: name.into(),
        ops,
        elapsed,
        lat,
    })
}

/// `connect`: new connections per second, edge (handshake + Hello/Welcome) vs raw quinn.
pub fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let rt = current_thread()?;
    println!(
        "connect: {} in flight, {} s per run",
        args.concurrency, args.seconds
    );
    let echo = ServerProcess::echo()?;
    let base = rt.block_on(connect_loop(
        &echo,
        &args,
        false,
        "raw quinn handshake (baseline)",
    ))?;
    drop(echo);
    let edge = ServerProcess::edge(args.shards)?;
    let ours = rt.block_on(connect_loop(
        &edge,
        &args,
        true,
        "edge handshake + Hello/Welcome",
    ))?;
    println!("{}\n{}", base.text(), ours.text());
    println!(
        "ratios (edge ÷ raw quinn): connections/s {:.2}x, p50 {:.2}x, p99 {:.2}x",
        ours.rate() / base.rate(),
        ours.lat.p(0.5) as f64 / base.lat.p(0.5).max(1) as f64,
        ours.lat.p(0.99) as f64 / base.lat.p(0.99).max(1) as f64,
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&[base.json(), ours.json()])?
        );
    }
    Ok(())
}

/// Arguments of `tls-sessions`.
#[derive(clap::Args, Clone)]
pub struct SessionArgs {
    /// Sessions held (the edge's `RESUMABLE_SESSIONS` by default).
    #[arg(long, default_value_t = selfie_edge::tls::RESUMABLE_SESSIONS)]
    sessions: usize,
    /// Returning clients measured per store.
    #[arg(long, default_value_t = 20_000)]
    returns: usize,
}

/// `tls-sessions`: what a returning client's resumption costs the session store once
/// it is full (each handshake stores one single-use session; clients that never
/// return fill it): rustls's `ServerSessionMemoryCache` against the edge's
/// `SessionCache`, the same keys and sessions, in this process.
pub fn tls_sessions(args: SessionArgs) -> anyhow::Result<()> {
    use rustls::server::StoresServerSessions;
    // 32-byte random-looking ids and 150-byte sessions, like rustls's own.
    let key = |i: u64| {
        let mut k = [0u8; 32];
        for (j, c) in k.chunks_mut(8).enumerate() {
            let v = (i ^ ((j as u64) << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            c.copy_from_slice(&v.to_le_bytes());
        }
        k.to_vec()
    };
    // Each handshake stores a session; a returning client takes the one its last
    // connection got, `lag` handshakes (of others) later.
    let run = |name: &str, store: &dyn StoresServerSessions, lag: u64| -> anyhow::Result<Line> {
        let n = args.sessions as u64;
        for i in 0..n {
            store.put(key(i), vec![0x5A; 150]);
        }
        let mut lat = Latencies::new();
        let start = Instant::now();
        for i in n..n + args.returns as u64 {
            let t = Instant::now();
            store.put(key(i), vec![0x5A; 150]);
            anyhow::ensure!(
                store.take(&key(i - lag)).is_some(),
                "session {} was lost",
                i - lag
            );
            lat.record(t.elapsed());
        }
        Ok(Line {
            name: name.into(),
            ops: args.returns as u64,
            elapsed: start.elapsed(),
            lat,
        })
    };
    println!(
        "tls-sessions: {} sessions held, {} returning clients per line (a put and a take each)",
        args.sessions, args.returns
    );
    let half = args.sessions as u64 / 2;
    for (what, lag) in [("at once", 0), ("after half the cache", half)] {
        let base = run(
            &format!("rustls cache, back {what}"),
            &*rustls::server::ServerSessionMemoryCache::new(args.sessions),
            lag,
        )?;
        let ours = run(
            &format!("edge cache, back {what}"),
            &*selfie_edge::tls::SessionCache::new(args.sessions),
            lag,
        )?;
        println!("{}\n{}", base.text(), ours.text());
        println!(
            "mean per returning client ({what}): rustls {:.2} µs, edge {:.2} µs",
            base.elapsed.as_secs_f64() * 1e6 / base.ops as f64,
            ours.elapsed.as_secs_f64() * 1e6 / ours.ops as f64,
        );
    }
    Ok(())
}

/// Arguments of `idle`.
#[derive(clap::Args, Clone)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connection attempts in flight while opening them.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Edge shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
}

async fn open_idle(
    server: &ServerProcess,
    args: &IdleArgs,
    edge: bool,
) -> anyhow::Result<(u64, u64, Vec<Box<dyn std::any::Any>>)> {
    // Several client sockets, so that one socket's buffers are not the limit.
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| selfie_client::endpoint("127.0.0.1:0".parse().expect("addr")))
        .collect::<Result<_, _>>()?;
    let trust = server.trust()?;
    let quic = selfie_client::quic_client_config(&trust)?;
    let prepared = ClientConfig::new(server.addr, trust).prepared()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss();
    let mut held: Vec<Box<dyn std::any::Any>> = Vec::with_capacity(args.connections);
    let mut next = 0usize;
    while next < args.connections {
        let batch = (args.connections - next).min(args.concurrency);
        let opened = futures::future::join_all((0..batch).map(|i| {
            let endpoint = endpoints[(next + i) % endpoints.len()].clone();
            let (prepared, quic) = (prepared.clone(), quic.clone());
            async move {
                let held: Box<dyn std::any::Any> = if edge {
                    Box::new(Client::connect_on(&endpoint, prepared).await?)
                } else {
                    Box::new(
                        endpoint
                            .connect_with(quic, server.addr, "localhost")?
                            .await?,
                    )
                };
                anyhow::Ok(held)
            }
        }))
        .await;
        for o in opened {
            held.push(o?);
        }
        next += batch;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss();
    Ok((before, after, held))
}

/// `idle`: server memory per idle connection, edge vs raw quinn.
pub fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let rt = current_thread()?;
    println!("idle: {} connections", args.connections);
    let mut report = Vec::new();
    for (edge, name) in [
        (false, "raw quinn (baseline)"),
        (true, "edge (Hello/Welcome session)"),
    ] {
        let server = if edge {
            ServerProcess::edge(args.shards)?
        } else {
            ServerProcess::echo()?
        };
        let (before, after, held) = rt.block_on(open_idle(&server, &args, edge))?;
        let per = after.saturating_sub(before) as f64 / args.connections as f64;
        println!(
            "{name:<32} RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per connection",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per / 1024.0
        );
        report.push(per);
        drop(held);
    }
    println!(
        "ratio (edge ÷ raw quinn) memory per connection: {:.2}x",
        report[1] / report[0].max(1.0)
    );
    Ok(())
}

/// Arguments of the hidden `echo-server` subcommand.
#[derive(clap::Args, Clone)]
pub struct EchoArgs {
    /// UDP address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the development certificate lives.
    #[arg(long)]
    data_dir: PathBuf,
}

/// Where the media scenario's durable baseline writes: one file, opened twice. Bytes
/// whose memory, offset and length are page-aligned go through `direct` (`O_DIRECT`,
/// as the edge writes an upload's chunks, where the filesystem takes it), the rest
/// through the page cache.
struct Sink {
    buffered: std::fs::File,
    direct: Option<std::fs::File>,
}

impl Sink {
    fn create(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let buffered = std::fs::File::create(path)?;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Self { buffered, direct })
    }

    fn write_durably(&self, data: &[u8], offset: u64, cached: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        const PAGE: usize = selfie_services::media::blob::DIRECT_ALIGN;
        let aligned = !cached
            && (data.as_ptr() as usize).is_multiple_of(PAGE)
            && data.len().is_multiple_of(PAGE)
            && offset.is_multiple_of(PAGE as u64);
        let file = match &self.direct {
            Some(direct) if aligned => direct,
            _ => &self.buffered,
        };
        file.write_all_at(data, offset)?;
        file.sync_data()
    }
}

/// The media scenario's baseline streams: `SINK` reads the bytes (and, when durable,
/// writes them at their offset in `sink` and fsyncs: flag 1 with `O_DIRECT` where the
/// bytes allow it, flag 2 through the page cache) and answers their count; `SRCE`
/// writes the asked number of bytes from memory.
async fn bulk(
    sink: &Arc<Sink>,
    head: Vec<u8>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<()> {
    let (durable, cached) = (head[4] != 0, head[4] == 2);
    let n = u64::from_be_bytes(head[5..crate::media::HEADER].try_into()?);
    if head.starts_with(crate::media::SOURCE) {
        let piece = Bytes::from(vec![0x5a; 256 * 1024]);
        let mut left = n;
        while left > 0 {
            let len = left.min(piece.len() as u64) as usize;
            send.write_chunk(piece.slice(..len)).await?;
            left -= len as u64;
        }
        send.finish()?;
        return Ok(());
    }
    // Room for the largest chunk the edge takes, so the buffer keeps its alignment.
    let mut data = selfie_services::media::DirectBuf::with_capacity(16 << 20);
    data.extend_from_slice(&head[crate::media::HEADER..]);
    let mut count = data.len() as u64;
    while let Some(c) = recv.read_chunk(1 << 20, true).await? {
        count += c.bytes.len() as u64;
        if durable {
            data.extend_from_slice(&c.bytes);
        }
    }
    if durable {
        let sink = sink.clone();
        tokio::task::spawn_blocking(move || sink.write_durably(data.as_slice(), n, cached))
            .await??;
    }
    send.write_all(&count.to_be_bytes()).await?;
    send.finish()?;
    Ok(())
}

/// The raw quinn baseline server: one thread, the edge's TLS and transport settings,
/// echoing each bidirectional stream — except the `fanout` scenario's two requests:
/// `SUBSCRIBE` opens a push stream (uni) to the connection, `PUBLISH:<bytes>` writes the
/// bytes once on every push stream.
pub fn echo_server(args: EchoArgs) -> anyhow::Result<()> {
    let identity = selfie_edge::tls::load_identity(&Default::default(), Path::new(&args.data_dir))?;
    let mut server_config = selfie_edge::tls::quic_server_config(&identity, false)?;
    // The edge's transport settings, built by the edge's own function, with the idle
    // timeout the bench gives the edge (`SELFIE_LIMITS_IDLE_TIMEOUT_MS` above).
    let mut limits = selfie_edge::Config::default().limits;
    limits.idle_timeout_ms = 120_000;
    let transport = selfie_edge::transport_config(&limits)?;
    server_config.transport_config(Arc::new(transport));
    let rt = current_thread()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let endpoint = quinn::Endpoint::server(server_config, args.listen)?;
        println!("echo listening on udp://{}", endpoint.local_addr()?);
        println!("certificate sha-256: {}", identity.fingerprint());
        let pushes: Rc<std::cell::RefCell<Vec<quinn::SendStream>>> = Rc::default();
        let sink = Arc::new(Sink::create(&args.data_dir.join("sink.bin"))?);
        while let Some(incoming) = endpoint.accept().await {
            let (pushes, sink) = (pushes.clone(), sink.clone());
            tokio::task::spawn_local(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let (conn, pushes) = (conn.clone(), pushes.clone());
                    let sink = sink.clone();
                    tokio::task::spawn_local(async move {
                        // The media scenario's streams are told apart by their header.
                        let (mut data, mut ended) = (Vec::new(), false);
                        while data.len() < crate::media::HEADER && !ended {
                            match recv.read_chunk(64 * 1024, true).await {
                                Ok(Some(c)) => data.extend_from_slice(&c.bytes),
                                Ok(None) => ended = true,
                                Err(_) => return,
                            }
                        }
                        if data.len() >= crate::media::HEADER
                            && (data.starts_with(crate::media::SINK)
                                || data.starts_with(crate::media::SOURCE))
                        {
                            let _ = bulk(&sink, data, &mut send, &mut recv).await;
                            return;
                        }
                        if !ended {
                            let Ok(rest) = recv.read_to_end(64 * 1024).await else {
                                return;
                            };
                            data.extend_from_slice(&rest);
                        }
                        if data == crate::fanout::SUBSCRIBE {
                            // A stream is announced with its first byte (as the edge's
                            // push streams start with their header).
                            if let Ok(mut push) = conn.open_uni().await
                                && push.write_all(b"+").await.is_ok()
                            {
                                pushes.borrow_mut().push(push);
                            }
                        } else if let Some(event) = data.strip_prefix(crate::fanout::PUBLISH) {
                            let event = Bytes::copy_from_slice(event);
                            // One write per push stream; the streams are taken out while
                            // written, so no borrow is held across an await.
                            let mut streams = std::mem::take(&mut *pushes.borrow_mut());
                            for s in &mut streams {
                                let _ = s.write_chunk(event.clone()).await;
                            }
                            pushes.borrow_mut().extend(streams);
                        } else {
                            let _ = send.write_all(&data).await;
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
        anyhow::Ok(())
    })
}
