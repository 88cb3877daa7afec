//! `media` scenario: bulk bytes through a real edge (`selfie serve` child process) next to
//! raw quinn moving the same bytes in the same run.
//!
//! - **Upload** (`--rounds` objects of `--mib` MiB): `init`, then every chunk (the edge's
//!   `chunk_bytes`) with `--parallel` in flight, each on its own stream as the SDK sends
//!   it (a header frame with the chunk's SHA-256, then the raw bytes); the edge checks
//!   the digest, writes the chunk at its offset and fsyncs it before answering. Each
//!   round ends with an `abort`, so no processing runs meanwhile. Reported: MiB/s and
//!   per-chunk latency percentiles.
//! - **Baselines**: raw quinn streams of the same sizes and parallelism to the bench's
//!   echo server, which (a) reads them into memory and answers, and (b) writes each one
//!   at its offset in a file and fsyncs it before answering (the durable baseline:
//!   with `O_DIRECT`, as the edge writes chunks, and with `--buffered` also through
//!   the page cache).
//! - **`--buffered`**: the edge's uploads once more with `media.direct_writes = false`
//!   (every chunk through the page cache), in the same run.
//! - **Complete**: one full upload of a `--mib` MiB noise PNG (the whole-object SHA-256,
//!   the sniff and header checks, the content-addressed store), timed once.
//! - **Download**: that object's `original` downloaded `--downloads` times by its owner
//!   (a `DownloadHeader`, then the bytes read from the blob store in pieces), next to
//!   raw quinn streams of the same size written from memory by the echo server.
//! - **S3** (`--s3-url`): the same phases against an edge whose blobs live in an
//!   S3-compatible store behind its local cache (`storage.media_url`), in the same run:
//!   `complete` then stores the original in S3, the first download fills the cache.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use selfie_client::{Client, ClientConfig};
use selfie_protocol::common::MediaKind;
use selfie_protocol::media::MediaState;
use sha2::{Digest, Sha256};

use crate::edge::ServerProcess;
use crate::report::{Latencies, Line};

/// First bytes of a baseline upload stream: `SINK`, the durable flag (0 memory, 1
/// `O_DIRECT` + fsync, 2 page cache + fsync), the
/// offset (u64, big-endian), then the bytes. The answer is the byte count (u64).
pub const SINK: &[u8; 4] = b"SINK";
/// First bytes of a baseline download stream: `SRCE` and the byte count (u64); the
/// answer is that many bytes.
pub const SOURCE: &[u8; 4] = b"SRCE";
/// Bytes of a baseline request header.
pub const HEADER: usize = 13;

/// Arguments of the `media` scenario.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Size of each object, MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Objects uploaded (each measured; aborted afterwards).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Chunks in flight.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Bytes per chunk (the edge's `media.chunk_bytes`).
    #[arg(long, default_value_t = 2 << 20)]
    chunk_bytes: u32,
    /// Downloads of the completed object (over QUIC, then over HTTPS by signed URL).
    #[arg(long, default_value_t = 10)]
    downloads: usize,
    /// Size of the image completed, processed and downloaded, MiB (a noise PNG; the
    /// uploads above are `--mib`).
    #[arg(long, default_value_t = 32)]
    image_mib: usize,
    /// Also run the edge with its blobs in this S3-compatible store behind its local
    /// cache (`storage.media_url`, e.g. `s3://KEY:SECRET@127.0.0.1:8333/bucket?tls=false`),
    /// next to the local files, in the same run.
    #[arg(long)]
    s3_url: Option<String>,
    /// Also upload through an edge with `media.direct_writes = false`, and add a raw
    /// baseline writing through the page cache, in the same run.
    #[arg(long)]
    buffered: bool,
}

/// What one phase moved: bytes, time, and per-request latencies.
struct Moved {
    line: Line,
    bytes: u64,
    cpu: Duration,
}

impl Moved {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.line.elapsed.as_secs_f64()
    }

    fn text(&self) -> String {
        format!(
            "{}  {:>7.1} MiB/s  server CPU {:.2} s/GiB",
            self.line.text(),
            self.mib_per_s(),
            self.cpu.as_secs_f64() / (self.bytes as f64 / (1u64 << 30) as f64)
        )
    }
}

/// Incompressible bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A PNG of noise of about `mib` MiB (it does not compress).
fn noise_png(mib: usize) -> anyhow::Result<Vec<u8>> {
    let side = (((mib << 20) / 3) as f64).sqrt() as u32;
    let raw = noise((side * side * 3) as usize, 0x9E37_79B9_7F4A_7C15);
    let img = image::RgbImage::from_raw(side, side, raw).context("image")?;
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

fn chunks(total: usize, chunk: usize) -> Vec<(u64, usize)> {
    (0..total)
        .step_by(chunk)
        .map(|o| (o as u64, chunk.min(total - o)))
        .collect()
}

async fn edge_uploads(client: &Client, args: &Args, object: &Bytes) -> anyhow::Result<Latencies> {
    let media = client.media();
    let mut lat = Latencies::new();
    let sha: [u8; 32] = Sha256::digest(object).into();
    for _ in 0..args.rounds {
        let status = media
            .init(MediaKind::Image, object.len() as u64, sha, "")
            .await?;
        anyhow::ensure!(
            status.chunk_size == args.chunk_bytes,
            "the edge's chunks are {} bytes",
            status.chunk_size
        );
        // As the SDK's `upload` sends them: each chunk's digest computed ahead, while the
        // chunks before it are in flight; a chunk's latency runs from its send.
        let parallel = args.parallel.max(1);
        let mut sent =
            selfie_client::media::digested_chunks(object.clone(), status.chunk_size, 0, parallel)
                .map(|(offset, piece, digest)| {
                    let media = &media;
                    async move {
                        let t = Instant::now();
                        media
                            .send_chunk_with(status.upload_id, offset, piece, digest)
                            .await?;
                        anyhow::Ok(t.elapsed())
                    }
                })
                .buffer_unordered(parallel);
        while let Some(done) = sent.next().await {
            lat.record(done?);
        }
        drop(sent);
        media.abort(status.upload_id).await?;
    }
    Ok(lat)
}

async fn raw_uploads(
    conn: &quinn::Connection,
    args: &Args,
    object: &Bytes,
    durable: u8,
) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::new();
    for round in 0..args.rounds {
        // Each round writes a new region of the sink's file, as each upload a new file.
        let base = (round * object.len()) as u64;
        let mut sent = futures::stream::iter(chunks(object.len(), args.chunk_bytes as usize))
            .map(|(offset, len)| {
                let piece = object.slice(offset as usize..offset as usize + len);
                async move {
                    let t = Instant::now();
                    let mut header = SINK.to_vec();
                    header.push(durable);
                    header.extend_from_slice(&(base + offset).to_be_bytes());
                    let (mut send, mut recv) = conn.open_bi().await?;
                    send.write_all_chunks(&mut [Bytes::from(header), piece])
                        .await?;
                    send.finish()?;
                    let answer = recv.read_to_end(8).await?;
                    anyhow::ensure!(
                        answer == (len as u64).to_be_bytes(),
                        "the sink took a different count"
                    );
                    anyhow::Ok(t.elapsed())
                }
            })
            .buffer_unordered(args.parallel.max(1));
        while let Some(done) = sent.next().await {
            lat.record(done?);
        }
    }
    Ok(lat)
}

async fn raw_downloads(
    conn: &quinn::Connection,
    args: &Args,
    size: u64,
) -> anyhow::Result<Latencies> {
    let mut lat = Latencies::new();
    for _ in 0..args.downloads {
        let t = Instant::now();
        let mut header = SOURCE.to_vec();
        header.push(0);
        header.extend_from_slice(&size.to_be_bytes());
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&header).await?;
        send.finish()?;
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
            got += chunk.bytes.len() as u64;
        }
        anyhow::ensure!(got == size, "the source sent {got} of {size} bytes");
        lat.record(t.elapsed());
    }
    Ok(lat)
}

fn moved(
    name: &str,
    lat: Latencies,
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    cpu: Duration,
) -> Moved {
    Moved {
        line: Line {
            name: name.into(),
            ops,
            elapsed,
            lat,
        },
        bytes,
        cpu,
    }
}

async fn baseline(
    echo: &ServerProcess,
    args: &Args,
    object: &Bytes,
    download: u64,
) -> anyhow::Result<Baseline> {
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse()?)?;
    let config = selfie_client::quic_client_config(&echo.trust()?)?;
    let conn = endpoint
        .connect_with(config, echo.addr, "localhost")?
        .await?;
    let chunks_per_object = chunks(object.len(), args.chunk_bytes as usize).len() as u64;
    let uploaded = (object.len() * args.rounds) as u64;
    let mut out = Vec::new();
    let mut kinds = vec![
        ("raw quinn upload (memory)", 0),
        ("raw quinn upload + O_DIRECT + fsync", 1),
    ];
    if args.buffered {
        kinds.push(("raw quinn upload + page cache + fsync", 2));
    }
    for (name, durable) in kinds {
        let (cpu0, t) = (echo.cpu(), Instant::now());
        let lat = raw_uploads(&conn, args, object, durable).await?;
        let (elapsed, cpu) = (t.elapsed(), echo.cpu().saturating_sub(cpu0));
        out.push(moved(
            name,
            lat,
            chunks_per_object * args.rounds as u64,
            uploaded,
            elapsed,
            cpu,
        ));
    }
    let (cpu0, t) = (echo.cpu(), Instant::now());
    let lat = raw_downloads(&conn, args, download).await?;
    let (elapsed, cpu) = (t.elapsed(), echo.cpu().saturating_sub(cpu0));
    let source = moved(
        "raw quinn download (memory)",
        lat,
        args.downloads as u64,
        download * args.downloads as u64,
        elapsed,
        cpu,
    );
    let mut out = out.into_iter();
    let (Some(memory), Some(durable)) = (out.next(), out.next()) else {
        bail!("the baseline's upload phases did not run");
    };
    Ok(Baseline {
        memory,
        durable,
        cached: out.next(),
        source,
    })
}

/// The raw quinn lines of one run.
struct Baseline {
    memory: Moved,
    durable: Moved,
    /// Through the page cache (`--buffered`).
    cached: Option<Moved>,
    source: Moved,
}

async fn register(anon: &Client) -> anyhow::Result<String> {
    use selfie_protocol::auth::{AuthOpT, AuthT, RegisterRequestT};
    use selfie_protocol::{BodyT, EnvelopeT};
    let mut r = RegisterRequestT::default();
    r.username = Some("media_bench".into());
    r.email = Some("media_bench@example.com".into());
    r.password = Some("media bench password".into());
    let mut t = AuthT::default();
    t.op = AuthOpT::RegisterRequest(Box::new(r));
    let f = anon
        .request(|b, id| {
            let mut e = EnvelopeT::default();
            e.id = id;
            e.body = BodyT::Auth(Box::new(t));
            e.pack(b)
        })
        .await?;
    let env = f.envelope();
    let token = env
        .body_as_auth()
        .and_then(|a| a.op_as_register_response())
        .and_then(|r| r.tokens())
        .and_then(|t| t.access_token())
        .context("tokens")?;
    Ok(token.to_string())
}

struct EdgeRun {
    upload: Moved,
    complete: Duration,
    /// The first download (with S3: the node's cache fetching the object).
    first_download: Duration,
    download: Moved,
    /// The same downloads over HTTPS by a signed URL (HTTP/1.1, one connection).
    https: Option<Moved>,
    size: u64,
}

/// `downloads` GETs of a signed URL to the original, on one kept-alive HTTPS connection
/// pinned to the edge's certificate.
async fn https_downloads(
    server: &ServerProcess,
    media: &selfie_client::media::MediaApi<'_>,
    media_id: u64,
    size: usize,
    downloads: usize,
    blobs: &str,
) -> anyhow::Result<Option<Moved>> {
    if server.web.is_none() {
        return Ok(None);
    }
    let (url, _) = media.url(media_id, "original").await?;
    let tls = selfie_client::tls_client_config(&server.trust()?, &[b"http/1.1"])?;
    let web = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .build()?;
    let get = || async {
        let body = web
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        anyhow::ensure!(body.len() == size, "a short HTTPS download");
        anyhow::Ok(())
    };
    // Warm the connection (TLS handshake) first.
    get().await?;
    let mut lat = Latencies::new();
    let (cpu0, t) = (server.cpu(), Instant::now());
    for _ in 0..downloads {
        let t = Instant::now();
        get().await?;
        lat.record(t.elapsed());
    }
    let (elapsed, cpu) = (t.elapsed(), server.cpu().saturating_sub(cpu0));
    Ok(Some(moved(
        &format!("edge HTTPS download (original){blobs}"),
        lat,
        downloads as u64,
        (size * downloads) as u64,
        elapsed,
        cpu,
    )))
}

async fn edge(
    server: &ServerProcess,
    args: &Args,
    object: &Bytes,
    png: Bytes,
    blobs: &str,
) -> anyhow::Result<EdgeRun> {
    let endpoint = selfie_client::endpoint("127.0.0.1:0".parse()?)?;
    let base = ClientConfig::new(server.addr, server.trust()?).prepared()?;
    let anon = Client::connect_on(&endpoint, base.clone()).await?;
    let token = register(&anon).await?;
    let mut config = base.clone();
    config.access_token = Some(token);
    let client = Rc::new(Client::connect_on(&endpoint, config).await?);
    let chunks_per_object = chunks(object.len(), args.chunk_bytes as usize).len() as u64;

    let (cpu0, t) = (server.cpu(), Instant::now());
    let lat = edge_uploads(&client, args, object).await?;
    let (elapsed, cpu) = (t.elapsed(), server.cpu().saturating_sub(cpu0));
    let upload = moved(
        &format!("edge upload (sha-256, fsync){blobs}"),
        lat,
        chunks_per_object * args.rounds as u64,
        (object.len() * args.rounds) as u64,
        elapsed,
        cpu,
    );

    // One whole upload, to time `complete` and to have an object to download.
    let media = client.media();
    let sha: [u8; 32] = Sha256::digest(&png).into();
    let status = media
        .init(MediaKind::Image, png.len() as u64, sha, "")
        .await?;
    for (offset, len) in chunks(png.len(), status.chunk_size as usize) {
        media
            .send_chunk(
                status.upload_id,
                offset,
                png.slice(offset as usize..offset as usize + len),
            )
            .await?;
    }
    let t = Instant::now();
    let info = media.complete(status.upload_id, sha).await?;
    let complete = t.elapsed();
    let ready = media
        .wait_ready(info.media_id, Duration::from_secs(300))
        .await?;
    if ready.state != MediaState::Ready {
        bail!("the object was not processed: {:?}", ready.state);
    }
    let t = Instant::now();
    let (_, bytes) = media.download(info.media_id, "original", 0, 0).await?;
    anyhow::ensure!(bytes.len() == png.len(), "a short download");
    let first_download = t.elapsed();
    let mut lat = Latencies::new();
    let (cpu0, t) = (server.cpu(), Instant::now());
    for _ in 0..args.downloads {
        let t = Instant::now();
        let (_, bytes) = media.download(info.media_id, "original", 0, 0).await?;
        anyhow::ensure!(bytes.len() == png.len(), "a short download");
        lat.record(t.elapsed());
    }
    let (elapsed, cpu) = (t.elapsed(), server.cpu().saturating_sub(cpu0));
    let download = moved(
        &format!("edge download (original){blobs}"),
        lat,
        args.downloads as u64,
        png.len() as u64 * args.downloads as u64,
        elapsed,
        cpu,
    );
    let https = https_downloads(
        server,
        &media,
        info.media_id,
        png.len(),
        args.downloads,
        blobs,
    )
    .await?;
    Ok(EdgeRun {
        upload,
        complete,
        first_download,
        download,
        https,
        size: png.len() as u64,
    })
}

/// Runs the scenario and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    println!(
        "media: {} × {} MiB uploads in {} KiB chunks, {} in flight; {} downloads",
        args.rounds,
        args.mib,
        args.chunk_bytes / 1024,
        args.parallel,
        args.downloads
    );
    let object = Bytes::from(noise(args.mib << 20, 0x2545_F491_4F6C_DD1D));
    let png = Bytes::from(noise_png(args.image_mib)?);
    let settings = [
        ("SELFIE_WEB_LISTEN", "127.0.0.1:0".to_string()),
        ("SELFIE_MEDIA_CHUNK_BYTES", args.chunk_bytes.to_string()),
        ("SELFIE_MEDIA_MAX_IMAGE_BYTES", (1u64 << 32).to_string()),
        ("SELFIE_MEDIA_QUOTA_BYTES", (1u64 << 40).to_string()),
    ];
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = ServerProcess::edge_with(1, &settings)?;
    let ours = local.block_on(&rt, edge(&server, &args, &object, png.clone(), ""))?;
    drop(server);
    let s3 = match &args.s3_url {
        Some(url) => {
            let mut with_s3 = settings.clone();
            with_s3.push(("SELFIE_STORAGE_MEDIA_URL", url.as_str()));
            let server = ServerProcess::edge_with(1, &with_s3)?;
            let run = local.block_on(
                &rt,
                edge(&server, &args, &object, png.clone(), ", S3 + cache"),
            )?;
            drop(server);
            Some(run)
        }
        None => None,
    };
    let buffered = if args.buffered {
        let mut cached = settings.clone();
        cached.push(("SELFIE_MEDIA_DIRECT_WRITES", "false"));
        let server = ServerProcess::edge_with(1, &cached)?;
        let lat_args = Args {
            downloads: 1,
            ..args.clone()
        };
        let run = local.block_on(
            &rt,
            edge(&server, &lat_args, &object, png.clone(), ", page cache"),
        )?;
        drop(server);
        Some(run.upload)
    } else {
        None
    };
    let echo = ServerProcess::echo()?;
    let Baseline {
        memory,
        durable,
        cached,
        source,
    } = local.block_on(&rt, baseline(&echo, &args, &object, ours.size))?;
    drop(echo);
    println!("{}", memory.text());
    println!("{}", durable.text());
    if let Some(cached) = &cached {
        println!("{}", cached.text());
    }
    println!("{}", ours.upload.text());
    if let Some(buffered) = &buffered {
        println!("{}", buffered.text());
        println!(
            "O_DIRECT ÷ page cache: edge {:.2}x, raw quinn {:.2}x",
            ours.upload.mib_per_s() / buffered.mib_per_s().max(f64::EPSILON),
            cached.as_ref().map_or(0.0, |c| durable.mib_per_s()
                / c.mib_per_s().max(f64::EPSILON)),
        );
    }
    println!("{}", source.text());
    println!("{}", ours.download.text());
    if let Some(https) = &ours.https {
        println!("{}", https.text());
        println!(
            "HTTPS download ÷ QUIC download {:.2}x (÷ raw quinn {:.2}x), p50 {:.2}x",
            https.mib_per_s() / ours.download.mib_per_s().max(f64::EPSILON),
            https.mib_per_s() / source.mib_per_s().max(f64::EPSILON),
            https.line.lat.p(0.5) as f64 / ours.download.line.lat.p(0.5).max(1) as f64,
        );
    }
    println!(
        "complete of a {:.1} MiB image (whole SHA-256, sniff, header checks, store): {} ms; first download {} ms",
        ours.size as f64 / (1 << 20) as f64,
        ours.complete.as_millis(),
        ours.first_download.as_millis()
    );
    if let Some(s3) = &s3 {
        println!("{}", s3.upload.text());
        println!("{}", s3.download.text());
        println!(
            "S3 + cache: complete {} ms (the original stored in S3, multipart), first download {} ms (the cache fetching it), then from the cache; download ÷ local files {:.2}x",
            s3.complete.as_millis(),
            s3.first_download.as_millis(),
            s3.download.mib_per_s() / ours.download.mib_per_s().max(f64::EPSILON)
        );
    }
    println!(
        "ratios: upload edge ÷ raw quinn + fsync {:.2}x (÷ memory {:.2}x), chunk p50 {:.2}x, p99 {:.2}x; download edge ÷ raw quinn {:.2}x, p50 {:.2}x",
        ours.upload.mib_per_s() / durable.mib_per_s().max(f64::EPSILON),
        ours.upload.mib_per_s() / memory.mib_per_s().max(f64::EPSILON),
        ours.upload.line.lat.p(0.5) as f64 / durable.line.lat.p(0.5).max(1) as f64,
        ours.upload.line.lat.p(0.99) as f64 / durable.line.lat.p(0.99).max(1) as f64,
        ours.download.mib_per_s() / source.mib_per_s().max(f64::EPSILON),
        ours.download.line.lat.p(0.5) as f64 / source.line.lat.p(0.5).max(1) as f64,
    );
    Ok(())
}
