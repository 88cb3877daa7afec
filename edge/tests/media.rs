//! Media through real edges and real SDK clients: chunked uploads that resume after a
//! killed connection with the same SHA-256, parallel chunks, chat answered during a large
//! upload, typed refusals of corrupted chunks, exceeded quotas and hostile or mislabelled
//! files, renditions that are upright and carry no EXIF, ranged downloads, and media
//! served only to the viewers of what uses it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use selfie_client::media::{UploadOptions, push_info};
use selfie_client::{Client, ClientError};
use selfie_protocol::BodyT;
use selfie_protocol::ErrorCode;
use selfie_protocol::common::{Audience, MediaKind};
use selfie_protocol::graph::{FollowRequestT, GraphOpT};
use selfie_protocol::media::MediaState;
use selfie_protocol::posts::{CreatePostRequestT, DeletePostRequestT, PostsOpT};
use sha2::{Digest, Sha256};
use support::{Node, call, graph, posts, sign_up};

const CHUNK: u32 = 256 * 1024;

/// A node with small chunks (so small files have several) and a 100 MiB quota.
fn node() -> Node {
    let mut p = support::parts();
    p.media.chunk_bytes = CHUNK;
    p.media.max_image_bytes = 64 << 20;
    p.media.quota_bytes = 100 << 20;
    let t = support::tokens(&p);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(p.throttle);
    support::start_with(&p, t, throttle)
}

/// A PNG of noise (does not compress): about `3 * side²` bytes.
fn noise_png(side: u32) -> Vec<u8> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let [a, b, c, ..] = seed.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 9) as u8, 200])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .expect("jpeg");
    out
}

/// `jpeg` with an EXIF segment: orientation 6 (rotate 90°) and a GPS latitude.
fn jpeg_with_exif(width: u32, height: u32) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&2u16.to_be_bytes());
    // Orientation (SHORT) = 6.
    tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
    // GPS IFD pointer (LONG) = 38.
    tiff.extend_from_slice(&[0x88, 0x25, 0, 4, 0, 0, 0, 1, 0, 0, 0, 38]);
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    // GPS IFD: GPSLatitudeRef (ASCII, 2) = "N".
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 2, b'N', 0, 0, 0]);
    tiff.extend_from_slice(&[0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let base = jpeg(width, height);
    let mut out = base[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&base[2..]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A decompression bomb's header: a tiny PNG claiming 50,000 × 50,000 pixels.
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = 50_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // A zlib stream of a few zero bytes (what a bomb's long runs compress to).
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

async fn upload(c: &Client, kind: MediaKind, bytes: &[u8]) -> Result<u64, ClientError> {
    let info = c
        .media()
        .upload(
            kind,
            Bytes::copy_from_slice(bytes),
            &UploadOptions::default(),
        )
        .await?;
    Ok(info.media_id)
}

async fn ready(c: &Client, media_id: u64) -> selfie_protocol::media::MediaInfoT {
    let m = c
        .media()
        .wait_ready(media_id, Duration::from_secs(60))
        .await
        .expect("processed");
    assert_eq!(m.state, MediaState::Ready, "{m:?}");
    m
}

#[tokio::test]
async fn an_upload_resumes_after_a_killed_connection_with_the_same_digest() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let photo = noise_png(640);
    assert!(photo.len() > 4 * CHUNK as usize, "{}", photo.len());
    let sha: [u8; 32] = Sha256::digest(&photo).into();
    let status = ana
        .client
        .media()
        .init(MediaKind::Image, photo.len() as u64, sha, "noise")
        .await
        .expect("init");
    assert_eq!((status.offset, status.chunk_size), (0, CHUNK));
    // Three chunks arrive, then the connection dies in the middle of the fourth.
    let chunk = CHUNK as usize;
    for i in 0..3 {
        let piece = Bytes::copy_from_slice(&photo[i * chunk..(i + 1) * chunk]);
        let s = ana
            .client
            .media()
            .send_chunk(status.upload_id, (i * chunk) as u64, piece)
            .await
            .expect("chunk");
        assert_eq!(s.offset, ((i + 1) * chunk) as u64);
    }
    let fourth = Bytes::copy_from_slice(&photo[3 * chunk..4 * chunk]);
    let media = ana.client.media();
    let cut = tokio::time::timeout(
        Duration::from_millis(1),
        media.send_chunk(status.upload_id, (3 * chunk) as u64, fourth),
    );
    let _ = cut.await;
    ana.client.close();
    // A new session asks where the upload stands and sends the rest, in parallel.
    let again = Client::connect(support::config(&node, Some(ana.token.clone())))
        .await
        .expect("reconnected");
    let resumed = again
        .media()
        .resume(status.upload_id)
        .await
        .expect("resume");
    assert!(
        resumed.offset == 3 * CHUNK as u64 || resumed.offset == 4 * CHUNK as u64,
        "{}",
        resumed.offset
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let progress = {
        let seen = seen.clone();
        std::sync::Arc::new(move |done: u64, total: u64| {
            seen.lock().expect("progress").push((done, total));
        })
    };
    let options = UploadOptions {
        parallel: 4,
        progress: Some(progress),
        ..UploadOptions::default()
    };
    let info = again
        .media()
        .upload_resume(status.upload_id, Bytes::from(photo.clone()), &options)
        .await
        .expect("completed");
    assert_eq!(info.media_id, status.media_id);
    assert_eq!(info.sha256.as_deref(), Some(&sha[..]));
    assert_eq!(info.mime_type.as_deref(), Some("image/png"));
    let total = photo.len() as u64;
    assert!(
        seen.lock()
            .expect("progress")
            .iter()
            .all(|&(d, t)| d <= t && t == total)
    );
    // Completing again answers with the same object.
    let twice = again
        .media()
        .complete(status.upload_id, sha)
        .await
        .expect("idempotent");
    assert_eq!(twice.media_id, info.media_id);
    let m = ready(&again, info.media_id).await;
    assert_eq!((m.width, m.height), (640, 640));
    assert!(!m.blurhash.unwrap_or_default().is_empty());
    // The original downloads byte for byte; a range is that slice.
    let (h, original) = again
        .media()
        .download(info.media_id, "original", 0, 0)
        .await
        .expect("download");
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&original)), sha);
    assert_eq!((h.total_size, h.length), (total, total));
    let (h, slice) = again
        .media()
        .download(info.media_id, "original", 1000, 70_000)
        .await
        .expect("range");
    assert_eq!((h.range_start, h.length), (1000, 69_000));
    assert_eq!(&slice[..], &photo[1000..70_000]);
    let bad = again
        .media()
        .download(info.media_id, "original", 10, total + 1)
        .await
        .expect_err("past the end");
    assert_eq!(code(&bad), Some(ErrorCode::InvalidArgument));
    // The large rendition is a JPEG no larger than the original.
    let (h, large) = again
        .media()
        .download(info.media_id, "large", 0, 0)
        .await
        .expect("rendition");
    assert_eq!(h.mime_type.as_deref(), Some("image/jpeg"));
    let img = image::load_from_memory(&large).expect("decodes");
    assert_eq!((img.width(), img.height()), (640, 640));
}

#[tokio::test]
async fn a_chat_request_is_answered_during_a_large_upload() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    // 48 MiB of noise (refused at the end: it is no image), 8 chunks in flight.
    let mut big = vec![0u8; 48 << 20];
    let mut seed = 7u64;
    for b in big.iter_mut() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        *b = (seed >> 56) as u8;
    }
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    let options = UploadOptions {
        parallel: 8,
        progress: Some(std::sync::Arc::new(move |_, _| {
            if let Some(tx) = first_tx.lock().expect("tx").take() {
                let _ = tx.send(());
            }
        })),
        ..UploadOptions::default()
    };
    let media = ana.client.media();
    let upload = media.upload(MediaKind::Image, Bytes::from(big), &options);
    tokio::pin!(upload);
    // Once the first chunk is in, a chat request goes out on the same connection.
    tokio::select! {
        _ = &mut upload => panic!("the upload ended before its first chunk was reported"),
        r = first_rx => r.expect("progress"),
    }
    let chat_api = ana.client.chat();
    let chat = chat_api.list(selfie_protocol::chat::ConversationFolder::Inbox, 10, None);
    tokio::pin!(chat);
    tokio::select! {
        biased;
        answer = &mut chat => { answer.expect("chat answered"); }
        _ = &mut upload => panic!("the chat request waited for the upload"),
    }
    let refused = upload.await.expect_err("noise is not an image");
    assert_eq!(code(&refused), Some(ErrorCode::UnsupportedMediaType));
}

#[tokio::test]
async fn corrupt_chunks_quotas_and_hostile_files_get_typed_errors() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let media = ana.client.media();
    let photo = noise_png(300);
    let sha: [u8; 32] = Sha256::digest(&photo).into();
    let s = media
        .init(MediaKind::Image, photo.len() as u64, sha, "")
        .await
        .expect("init");
    let first = Bytes::copy_from_slice(&photo[..CHUNK as usize]);
    // A chunk whose bytes do not match its digest is refused and not recorded.
    let mut flipped = first.to_vec();
    flipped[100] ^= 1;
    let e = media
        .send_chunk_with(
            s.upload_id,
            0,
            Bytes::from(flipped),
            Sha256::digest(&first).to_vec(),
        )
        .await
        .expect_err("corrupt");
    assert_eq!(code(&e), Some(ErrorCode::ChecksumMismatch));
    assert_eq!(media.resume(s.upload_id).await.expect("resume").offset, 0);
    // A chunk off the grid or of the wrong length is refused.
    let e = media
        .send_chunk(s.upload_id, 7, first.slice(..1000))
        .await
        .expect_err("misaligned");
    assert_eq!(code(&e), Some(ErrorCode::InvalidArgument));
    // Completing before every chunk is in is refused; an abort forgets the upload.
    let e = media
        .complete(s.upload_id, sha)
        .await
        .expect_err("incomplete");
    assert_eq!(code(&e), Some(ErrorCode::InvalidArgument));
    media.abort(s.upload_id).await.expect("aborted");
    let e = media.resume(s.upload_id).await.expect_err("gone");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    // Bytes that are not what was declared: the whole object's digest is checked.
    let other: [u8; 32] = Sha256::digest(b"something else").into();
    let s = media
        .init(MediaKind::Image, photo.len() as u64, other, "")
        .await
        .expect("init");
    let e = media
        .upload_resume(
            s.upload_id,
            Bytes::from(photo.clone()),
            &UploadOptions::default(),
        )
        .await
        .expect_err("wrong digest");
    assert_eq!(code(&e), Some(ErrorCode::ChecksumMismatch));
    // Another user cannot touch the upload.
    let ben = sign_up(&node, &anon, "ben").await;
    let e = ben
        .client
        .media()
        .resume(s.upload_id)
        .await
        .expect_err("not his");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    // The quota counts uploads in progress at their declared size.
    let e = media
        .init(MediaKind::Image, 65 << 20, sha, "")
        .await
        .expect_err("over the kind's limit");
    assert_eq!(code(&e), Some(ErrorCode::PayloadTooLarge));
    let big = media
        .init(MediaKind::Image, 60 << 20, sha, "")
        .await
        .expect("within the quota");
    let e = media
        .init(MediaKind::Image, 60 << 20, sha, "")
        .await
        .expect_err("over the quota");
    assert_eq!(code(&e), Some(ErrorCode::QuotaExceeded));
    media.abort(big.upload_id).await.expect("aborted");
    // Hostile or mislabelled files: a PNG declared as a video, a decompression bomb, a
    // truncated JPEG, bytes of no known type.
    let e = upload(&ana.client, MediaKind::Video, &photo)
        .await
        .expect_err("png as video");
    assert_eq!(code(&e), Some(ErrorCode::UnsupportedMediaType));
    let e = upload(&ana.client, MediaKind::Image, &png_bomb())
        .await
        .expect_err("bomb");
    assert_eq!(code(&e), Some(ErrorCode::UnsupportedMediaType));
    let whole = jpeg(64, 64);
    let e = upload(&ana.client, MediaKind::Image, &whole[..whole.len() / 2])
        .await
        .expect_err("truncated");
    assert_eq!(code(&e), Some(ErrorCode::UnsupportedMediaType));
    let e = upload(&ana.client, MediaKind::Image, b"#!/bin/sh\nrm -rf /\n")
        .await
        .expect_err("a script");
    assert_eq!(code(&e), Some(ErrorCode::UnsupportedMediaType));
    // None of it is held against the quota: a 60 MiB upload fits again.
    let again = media
        .init(MediaKind::Image, 60 << 20, sha, "")
        .await
        .expect("quota released");
    media.abort(again.upload_id).await.expect("aborted");
}

#[tokio::test]
async fn renditions_are_upright_and_carry_no_exif() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let mut pushes = ana.client.media().subscribe().await.expect("subscribed");
    let photo = jpeg_with_exif(40, 20);
    let id = upload(&ana.client, MediaKind::Image, &photo)
        .await
        .expect("uploaded");
    // The owner hears of the processing.
    let frame = tokio::time::timeout(Duration::from_secs(60), pushes.next())
        .await
        .expect("in time")
        .expect("a push");
    let pushed = push_info(&frame).expect("media info");
    assert_eq!((pushed.media_id, pushed.state), (id, MediaState::Ready));
    let m = ready(&ana.client, id).await;
    // Orientation 6 turns the 40 × 20 picture upright: 20 × 40.
    assert_eq!((m.width, m.height), (20, 40));
    let names: Vec<String> = m
        .renditions
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    assert_eq!(names, ["original", "small", "medium", "large"]);
    let (_, original) = ana
        .client
        .media()
        .download(id, "original", 0, 0)
        .await
        .expect("original");
    assert!(
        original.windows(4).any(|w| w == b"Exif"),
        "the owner's original is untouched"
    );
    for name in ["small", "medium", "large"] {
        let (_, r) = ana
            .client
            .media()
            .download(id, name, 0, 0)
            .await
            .expect("rendition");
        assert!(!r.windows(4).any(|w| w == b"Exif"), "{name} carries EXIF");
        let img = image::load_from_memory(&r).expect("decodes");
        assert_eq!((img.width(), img.height()), (20, 40), "{name}");
    }
}

async fn follow(c: &Client, target: u64) {
    let mut r = FollowRequestT::default();
    r.target_id = target;
    call(c, graph(GraphOpT::FollowRequest(Box::new(r))))
        .await
        .expect("followed");
}

async fn post_with(c: &Client, media: Vec<u64>, audience: Audience) -> Result<u64, ClientError> {
    let mut r = CreatePostRequestT::default();
    r.media_ids = Some(media);
    r.audience = audience;
    match call(c, posts(PostsOpT::CreatePostRequest(Box::new(r)))).await? {
        BodyT::Posts(p) => match p.op {
            PostsOpT::PostResponse(r) => Ok(r.post.expect("post").post_id),
            other => panic!("not a post: {other:?}"),
        },
        other => panic!("not a posts answer: {other:?}"),
    }
}

#[tokio::test]
async fn media_is_served_only_to_the_readers_of_what_uses_it() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    follow(&ben.client, ana.id).await;
    let photo = support::photo(&ana.client).await;
    // Before any post uses it, only Ana sees it.
    let e = ben.client.media().get(photo).await.expect_err("unused");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    // Nobody else may post Ana's photo; no post takes an id that is not a ready object.
    let e = post_with(&cat.client, vec![photo], Audience::Public)
        .await
        .expect_err("not hers");
    assert_eq!(code(&e), Some(ErrorCode::InvalidArgument));
    let e = post_with(&ana.client, vec![photo + 1], Audience::Public)
        .await
        .expect_err("no such object");
    assert_eq!(code(&e), Some(ErrorCode::InvalidArgument));
    let post = post_with(&ana.client, vec![photo], Audience::Followers)
        .await
        .expect("posted");
    // A follower gets the renditions, never the original; a stranger gets nothing.
    let seen = ben.client.media().get(photo).await.expect("follower");
    let names: Vec<String> = seen
        .renditions
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    assert!(!names.iter().any(|n| n == "original"), "{names:?}");
    assert!(seen.sha256.unwrap_or_default().is_empty());
    let (h, _) = ben
        .client
        .media()
        .download(photo, "", 0, 0)
        .await
        .expect("large");
    assert_eq!(h.rendition.as_deref(), Some("large"));
    let e = ben
        .client
        .media()
        .download(photo, "original", 0, 0)
        .await
        .expect_err("original");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    for e in [
        cat.client.media().get(photo).await.expect_err("stranger"),
        cat.client
            .media()
            .download(photo, "large", 0, 0)
            .await
            .expect_err("stranger"),
    ] {
        assert_eq!(code(&e), Some(ErrorCode::NotFound));
    }
    // In use, it cannot be deleted; once its post is deleted it is released.
    let e = ana.client.media().delete(photo).await.expect_err("in use");
    assert_eq!(code(&e), Some(ErrorCode::Conflict));
    let mut d = DeletePostRequestT::default();
    d.post_id = post;
    call(&ana.client, posts(PostsOpT::DeletePostRequest(Box::new(d))))
        .await
        .expect("deleted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match ana.client.media().get(photo).await {
            Err(e) if code(&e) == Some(ErrorCode::NotFound) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("not released: {other:?}"),
        }
    }
    let e = ben
        .client
        .media()
        .download(photo, "large", 0, 0)
        .await
        .expect_err("gone");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
}

/// A `seconds`-long H.264/AAC QuickTime movie of ffmpeg's test pattern, `width` ×
/// `height`, carrying a GPS location in its metadata (as a phone writes it).
fn clip(dir: &std::path::Path, seconds: u32, width: u32, height: u32) -> Vec<u8> {
    let path = dir.join("clip.mp4");
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc=duration={seconds}:size={width}x{height}:rate=25"
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=duration={seconds}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-metadata", "location=+48.8584+002.2945/"])
        .args(["-f", "mov"])
        .arg(&path)
        .output()
        .expect("ffmpeg runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("clip")
}

fn ffprobe(path: impl AsRef<std::ffi::OsStr>) -> serde_json::Value {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test]
async fn a_video_becomes_an_hls_ladder_and_a_poster_without_its_location() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let video = clip(dir.path(), 3, 640, 480);
    let id = upload(&ana.client, MediaKind::Video, &video)
        .await
        .expect("uploaded");
    let m = ready(&ana.client, id).await;
    assert_eq!((m.width, m.height), (640, 480));
    assert!(
        (2_900..=3_200).contains(&m.duration_ms),
        "{}",
        m.duration_ms
    );
    assert!(
        !m.blurhash.unwrap_or_default().is_empty(),
        "a placeholder from the poster"
    );
    let renditions = m.renditions.unwrap_or_default();
    let names: Vec<String> = renditions.iter().filter_map(|r| r.name.clone()).collect();
    assert!(names.iter().any(|n| n == "hls/master.m3u8"), "{names:?}");
    assert!(names.iter().any(|n| n == "hls/360p.m3u8"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("hls/720p")),
        "no rung above the source: {names:?}"
    );
    // Everything downloads into one directory, where the ladder plays from the master.
    let hls = dir.path().join("hls");
    std::fs::create_dir(&hls).expect("dir");
    for name in names.iter().filter(|n| n.starts_with("hls/")) {
        let (_, bytes) = ana
            .client
            .media()
            .download(id, name, 0, 0)
            .await
            .expect("rendition");
        std::fs::write(dir.path().join(name), &bytes).expect("written");
    }
    let master = std::fs::read_to_string(hls.join("master.m3u8")).expect("master");
    assert!(master.contains("RESOLUTION=480x360\n360p.m3u8"), "{master}");
    let played = ffprobe(hls.join("360p.m3u8"));
    let streams = played["streams"].as_array().expect("streams");
    let video_stream = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .expect("a video stream");
    assert_eq!(video_stream["codec_name"], "h264");
    assert_eq!(video_stream["height"], 360);
    assert!(
        streams.iter().any(|s| s["codec_type"] == "audio"),
        "audio kept"
    );
    let seconds: f64 = played["format"]["duration"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("duration");
    assert!((2.5..3.5).contains(&seconds), "{seconds}");
    // A player streams the ladder from its signed HTTPS URL: the master playlist names
    // its rungs, and they their segments, relatively, under the same signed directory.
    let (url, _) = ana
        .client
        .media()
        .url(id, "hls/master.m3u8")
        .await
        .expect("minted");
    let streamed = ffprobe(&url);
    let streamed_video = streamed["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["codec_type"] == "video"))
        .expect("a video stream over HTTPS");
    assert_eq!(streamed_video["codec_name"], "h264");
    assert_eq!(streamed_video["height"], 360);
    // The location the phone wrote is in the owner's original only.
    let (_, original) = ana
        .client
        .media()
        .download(id, "original", 0, 0)
        .await
        .expect("original");
    assert_eq!(original.as_ref(), video.as_slice());
    assert!(original.windows(8).any(|w| w == b"+48.8584"));
    let first_segment = names
        .iter()
        .find(|n| n.starts_with("hls/360p_") && n.ends_with(".ts"))
        .expect("a segment");
    let segment = std::fs::read(dir.path().join(first_segment)).expect("segment");
    assert!(
        !segment.windows(8).any(|w| w == b"+48.8584"),
        "no location in a segment"
    );
    // The poster is a JPEG of the source's size.
    let (_, poster) = ana
        .client
        .media()
        .download(id, "poster", 0, 0)
        .await
        .expect("poster");
    let img = image::load_from_memory(&poster).expect("a decodable poster");
    assert_eq!((img.width(), img.height()), (640, 480));
    // A file that sniffs as a movie but does not decode (cut before its index) is refused
    // when the upload completes, after ffprobe reads it.
    let cut = &video[..video.len() / 2];
    let refused = upload(&ana.client, MediaKind::Video, cut)
        .await
        .expect_err("half a movie is not a video");
    assert_eq!(code(&refused), Some(ErrorCode::UnsupportedMediaType));
}

#[tokio::test]
async fn default_sized_chunks_larger_than_the_stream_window_arrive_whole() {
    let p = support::parts();
    let t = support::tokens(&p);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(p.throttle);
    let node = support::start_with(&p, t, throttle);
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let photo = noise_png(1400);
    assert!(photo.len() > 4 << 20, "more than two default chunks");
    let id = upload(&ana.client, MediaKind::Image, &photo)
        .await
        .expect("uploaded");
    let (_, original) = ana
        .client
        .media()
        .download(id, "original", 0, 0)
        .await
        .expect("original");
    assert_eq!(original.as_ref(), photo.as_slice());
}

#[tokio::test]
async fn signed_https_urls_serve_ranges_to_their_viewer_and_refuse_the_rest() {
    let mut p = support::parts();
    p.media.chunk_bytes = CHUNK;
    let t = support::tokens(&p);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(p.throttle);
    let node = support::start_with(&p, t, throttle);
    let origin = format!("https://{}", node.edge.web_addr.expect("[web] listener"));
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    let cat = sign_up(&node, &anon, "cat").await;
    follow(&ben.client, ana.id).await;
    let photo = support::photo(&ana.client).await;
    let post = post_with(&ana.client, vec![photo], Audience::Followers)
        .await
        .expect("posted");
    let web = support::https_client();

    // A follower's URL serves the large rendition, the same bytes as over QUIC.
    let (url, expires) = ben.client.media().url(photo, "").await.expect("minted");
    assert!(
        url.starts_with(&format!("{origin}/media/{photo}/{}/", ben.id)),
        "{url}"
    );
    assert!(url.ends_with("/large"), "{url}");
    assert!(expires > 0);
    let (_, quic) = ben
        .client
        .media()
        .download(photo, "large", 0, 0)
        .await
        .expect("over QUIC");
    let r = web.get(&url).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "image/jpeg");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "default-src 'none'; sandbox");
    // Caches may keep it as long as the URL lives, no longer.
    let cache = h["cache-control"].to_str().expect("ascii");
    let max_age: u64 = cache
        .strip_prefix("public, max-age=")
        .and_then(|c| c.strip_suffix(", immutable"))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{cache}"));
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(max_age <= expires / 1000 - now_s + 1, "{max_age}");
    assert!(max_age >= 3000, "{max_age}");
    let etag = h["etag"].to_str().expect("ascii").to_string();
    assert_eq!(r.bytes().await.expect("body"), quic);

    // Ranges: a slice, a suffix, and one past the end.
    let total = quic.len();
    let r = web
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .expect("ranged");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{total}").as_str()
    );
    assert_eq!(r.bytes().await.expect("body"), quic.slice(10..20));
    let r = web
        .get(&url)
        .header("range", "bytes=-7")
        .send()
        .await
        .expect("suffix");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body"), quic.slice(total - 7..));
    let r = web
        .get(&url)
        .header("range", format!("bytes={total}-"))
        .send()
        .await
        .expect("past the end");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{total}").as_str()
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    // A cached copy is still good; a Range for other bytes than `If-Range` names is
    // answered whole.
    let r = web
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional");
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.headers().contains_key("cache-control"));
    let r = web
        .get(&url)
        .header("range", "bytes=0-0")
        .header("if-range", "\"something-else\"")
        .send()
        .await
        .expect("if-range");
    assert_eq!(r.status(), 200);
    let r = web
        .get(&url)
        .header("range", "bytes=0-0")
        .header("if-range", &etag)
        .send()
        .await
        .expect("if-range");
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.expect("body"), quic.slice(0..1));
    let r = web.head(&url).send().await.expect("HEAD");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], total.to_string().as_str());

    // Only the owner gets a URL to the original; a stranger gets none at all.
    let e = ben
        .client
        .media()
        .url(photo, "original")
        .await
        .expect_err("not his");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    let e = cat
        .client
        .media()
        .url(photo, "")
        .await
        .expect_err("stranger");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    let (own, _) = ana
        .client
        .media()
        .url(photo, "original")
        .await
        .expect("owner");
    let original = web
        .get(&own)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(original.as_ref(), support::png(64, 48).as_slice());

    // Attacks: Ben's URL renamed to Ana's (for her original), or to the original
    // under his own signature; a later expiry; another key; an expired URL.
    let ana_path = format!("/media/{photo}/{}/", ana.id);
    let ben_path = format!("/media/{photo}/{}/", ben.id);
    let forged = [
        url.replacen(&ben_path, &ana_path, 1)
            .replacen("/large", "/original", 1),
        url.replacen(
            &format!("/{}/", expires / 1000),
            &format!("/{}/", expires / 1000 + 3600),
            1,
        ),
    ];
    for f in &forged {
        assert_ne!(f, &url);
        assert_eq!(web.get(f).send().await.expect("GET").status(), 403, "{f}");
    }
    let not_his = url.replacen("/large", "/original", 1);
    assert_eq!(web.get(&not_his).send().await.expect("GET").status(), 403);
    let (not_his, _) = signer_for_test(&p, &origin).mint(photo, ben.id, "original", now_ms());
    assert_eq!(web.get(&not_his).send().await.expect("GET").status(), 404);
    let now = now_ms();
    let ttl = Duration::from_secs(3600);
    let signer = signer_for_test(&p, &origin);
    let (expired, _) = signer.mint(photo, ben.id, "large", now - 3 * 3600 * 1000);
    assert_eq!(web.get(&expired).send().await.expect("GET").status(), 403);
    let (fresh, _) = signer.mint(photo, ben.id, "large", now);
    assert_eq!(web.get(&fresh).send().await.expect("GET").status(), 200);
    let stranger = selfie_services::media::urls::UrlSigner::new(b"another fleet", &origin, ttl);
    let (other, _) = stranger.mint(photo, ben.id, "large", now);
    assert_eq!(web.get(&other).send().await.expect("GET").status(), 403);
    // A URL minted for Cat (who may not see the photo) by someone with the key is
    // refused when served: the viewer's right is checked again.
    let (cats, _) = signer.mint(photo, cat.id, "large", now);
    assert_eq!(web.get(&cats).send().await.expect("GET").status(), 404);
    // Other methods and paths.
    let r = web.post(&url).send().await.expect("POST");
    assert_eq!(r.status(), 405);
    let r = web
        .get(format!("{origin}/etc/passwd"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 404);

    // Once the post is deleted and the photo released, the unexpired URL stops working.
    let mut d = DeletePostRequestT::default();
    d.post_id = post;
    call(&ana.client, posts(PostsOpT::DeletePostRequest(Box::new(d))))
        .await
        .expect("deleted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = web.get(&url).send().await.expect("GET").status();
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(tokio::time::Instant::now() < deadline, "still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every answer was counted by status.
    let metrics = node.edge.metrics().encode();
    for status in ["200", "206", "304", "403", "404", "405", "416"] {
        assert!(
            metrics.contains(&format!("status=\"{status}\"")),
            "{status} not counted"
        );
    }
    let sent: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("selfie_edge_web_sent_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(sent >= 3 * total as u64, "{sent}");
    assert!(
        metrics.contains("selfie_media_store_info{store=\"local-std\",file_io=\"std\"} 1"),
        "the blob store in use is reported"
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A signer with the test fleet's key (as any node of the fleet has).
fn signer_for_test(p: &support::Parts, origin: &str) -> selfie_services::media::urls::UrlSigner {
    selfie_services::media::urls::UrlSigner::new(&p.secret_key, origin, Duration::from_secs(3600))
}

/// Attack: a client asks for a large answer and reads nothing (slowloris on the way
/// out). Its connection is cut once its reader has stalled for the header timeout,
/// instead of holding a connection and the answer's buffers for as long as it likes.
#[tokio::test]
async fn an_https_reader_that_stalls_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut p = support::parts();
    p.web.header_timeout_ms = 1_000;
    let t = support::tokens(&p);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(p.throttle);
    let node = support::start_with(&p, t, throttle);
    let web_addr = node.edge.web_addr.expect("[web] listener");
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    // A noise PNG of about 6.4 MiB: more than the kernel's largest send buffer (4 MiB)
    // and a tiny receive window together take.
    let original = noise_png(1500);
    let id = upload(&ana.client, MediaKind::Image, &original)
        .await
        .expect("uploaded");
    ready(&ana.client, id).await;
    let (url, _) = ana
        .client
        .media()
        .url(id, "original")
        .await
        .expect("minted");
    let path = url
        .strip_prefix(&format!("https://{web_addr}"))
        .expect("under the origin")
        .to_string();

    // A TCP socket with a tiny receive buffer, then TLS pinned to the node's certificate.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&web_addr.into()).expect("connected");
    socket.set_nonblocking(true).expect("nonblocking");
    let tcp = tokio::net::TcpStream::from_std(socket.into()).expect("tokio");
    let trust = selfie_client::Trust::pinned_hex(&node.edge.fingerprint).expect("pin");
    let tls = selfie_client::tls_client_config(&trust, &[b"http/1.1"]).expect("tls");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = connector.connect(name, tcp).await.expect("handshake");
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("sent");
    let mut head = [0u8; 512];
    let n = conn.read(&mut head).await.expect("answer begins");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // Read nothing for three header timeouts: the server gives up on this reader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = n;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not cut");
    assert!(
        got < original.len(),
        "{got} of {} bytes arrived",
        original.len()
    );
    let metrics = node.edge.metrics().encode();
    assert!(
        metrics.contains("outcome=\"cut_stalled\""),
        "the cut is counted"
    );
}

/// Deleting an account erases its media for everyone: a follower who could fetch the
/// photo of a public post (over QUIC and by a signed URL) gets nothing afterwards.
#[tokio::test]
async fn a_deleted_accounts_media_is_gone_for_everyone() {
    use selfie_protocol::auth::{AccountDeleteRequestT, AuthOpT};
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let ben = sign_up(&node, &anon, "ben").await;
    follow(&ben.client, ana.id).await;
    let photo = support::photo(&ana.client).await;
    post_with(&ana.client, vec![photo], Audience::Public)
        .await
        .expect("posted");
    let (url, _) = ben.client.media().url(photo, "").await.expect("minted");
    let web = support::https_client();
    assert_eq!(web.get(&url).send().await.expect("GET").status(), 200);
    let mut r = AccountDeleteRequestT::default();
    r.password = Some(ana.password.clone());
    call(
        &ana.client,
        support::auth(AuthOpT::AccountDeleteRequest(Box::new(r))),
    )
    .await
    .expect("account deleted");
    let e = ben.client.media().get(photo).await.expect_err("erased");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    let e = ben
        .client
        .media()
        .download(photo, "large", 0, 0)
        .await
        .expect_err("erased");
    assert_eq!(code(&e), Some(ErrorCode::NotFound));
    assert_eq!(web.get(&url).send().await.expect("GET").status(), 404);
}

/// A GIF of `frames` frames, `width` × `height`.
fn gif(frames: u32, width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .expect("repeat");
        let frames = (0..frames).map(|i| {
            let img = image::RgbaImage::from_fn(width, height, |x, _| {
                image::Rgba([(x * 4 + i * 60) as u8, (i * 80) as u8, 200, 255])
            });
            image::Frame::from_parts(img, 0, 0, image::Delay::from_numer_denom_ms(100, 1))
        });
        enc.encode_frames(frames).expect("gif");
    }
    out
}

/// An animated GIF also becomes a silent H.264 MP4 that players loop (and its first
/// frame the still renditions); a single-frame GIF does not.
#[tokio::test]
async fn an_animated_gif_becomes_an_mp4_and_a_still_one_does_not() {
    let node = node();
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    let animated = upload(&ana.client, MediaKind::Gif, &gif(6, 41, 30))
        .await
        .expect("uploaded");
    let m = ready(&ana.client, animated).await;
    let renditions = m.renditions.unwrap_or_default();
    let mp4 = renditions
        .iter()
        .find(|r| r.name.as_deref() == Some("mp4"))
        .expect("an mp4 rendition");
    assert_eq!(mp4.mime_type.as_deref(), Some("video/mp4"));
    assert_eq!((mp4.width, mp4.height), (40, 30), "even sides");
    assert!(
        renditions
            .iter()
            .any(|r| r.name.as_deref() == Some("small"))
    );
    let (_, bytes) = ana
        .client
        .media()
        .download(animated, "mp4", 0, 0)
        .await
        .expect("downloaded");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("a.mp4");
    std::fs::write(&path, &bytes).expect("written");
    let probed = ffprobe(&path);
    let streams = probed["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "video only: {streams:?}");
    assert_eq!(streams[0]["codec_name"], "h264");
    let seconds: f64 = probed["format"]["duration"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("duration");
    assert!(
        (0.4..0.8).contains(&seconds),
        "six frames of 100 ms: {seconds}"
    );

    let still = upload(&ana.client, MediaKind::Gif, &gif(1, 40, 30))
        .await
        .expect("uploaded");
    let m = ready(&ana.client, still).await;
    let names: Vec<String> = m
        .renditions
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    assert!(!names.iter().any(|n| n == "mp4"), "{names:?}");
    assert!(names.iter().any(|n| n == "small"), "{names:?}");
}

/// A writer that never takes a byte: a client that stops reading its download.
struct NeverWrites;

impl tokio::io::AsyncWrite for NeverWrites {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Pending
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A download its client stops reading is abandoned once the idle timeout passes without
/// room for its next piece (the stream reset, its open file and pieces let go), while
/// the same connection stays served: a stalled download cannot pin the node's files.
#[tokio::test]
async fn a_download_its_client_stops_reading_is_abandoned_after_the_idle_timeout() {
    let mut p = support::parts();
    p.idle_timeout_ms = 2_000;
    let node = support::start_parts(&p);
    let anon = Client::connect(support::config(&node, None))
        .await
        .expect("session");
    let ana = sign_up(&node, &anon, "ana").await;
    // Larger than the client's stream window (1 MiB), so the server blocks on it.
    let photo = noise_png(1000);
    assert!(photo.len() > 2 << 20, "{} bytes", photo.len());
    let id = upload(&ana.client, MediaKind::Image, &photo)
        .await
        .expect("uploaded");
    let timeouts = || async {
        let body = reqwest::get(format!("http://{}/metrics", node.edge.ops_addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        body.lines()
            .filter(|l| {
                l.starts_with("selfie_edge_requests_total")
                    && l.contains("service=\"media\"")
                    && l.contains("code=\"Timeout\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    assert_eq!(timeouts().await, 0);
    let media = ana.client.media();
    let mut never = NeverWrites;
    let stalled = media.download_to(id, "original", 0, 0, &mut never);
    // Pings keep the connection busy meanwhile (and must keep being answered).
    let keep_busy = async {
        for _ in 0..24 {
            ana.client.ping().await.expect("answered during the stall");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        r = stalled => panic!("a download into a writer that takes nothing ended: {r:?}"),
        () = keep_busy => {}
    }
    assert_eq!(timeouts().await, 1, "the stalled download was abandoned");
    // The connection still serves downloads.
    let (_, original) = media
        .download(id, "original", 0, 0)
        .await
        .expect("another download");
    assert_eq!(original.as_ref(), photo.as_slice());
    // The pieces were counted by where they came from (process-wide counters: other
    // tests of this binary add theirs), and the open files are reported.
    let body = reqwest::get(format!("http://{}/metrics", node.edge.ops_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {body}"))
    };
    let pieces = value("selfie_media_download_pieces_cached_total")
        + value("selfie_media_download_pieces_read_total");
    assert!(pieces >= 4, "{pieces} pieces counted");
    let _open = value("selfie_media_download_files_open ");
}
