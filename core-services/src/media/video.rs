//! Videos: probed by `ffprobe` when an upload completes (a file that is not a decodable
//! video, or one too long or too large, is refused), then transcoded by `ffmpeg` into an
//! HLS ladder (360p, 720p; never above the source) and a JPEG poster frame. Animated
//! GIFs also become a silent H.264 MP4 ([`gif_to_mp4`]).
//!
//! Both run as child processes, never in the server: each under `nice` and `prlimit`
//! (address space capped), with two encoder threads, and a wall-clock limit, killed when
//! it runs over; metadata (a phone's GPS
//! location atom included) is dropped from every output. The input is read with the
//! demuxer of its sniffed type only (`-f`), never one ffmpeg guesses (a playlist or a
//! concat list could name other files), and with the `file` protocol only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::process::Refusal;
use crate::{Error, Result};

/// Longest video accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 60);
/// Largest side of a video accepted.
pub const MAX_SIDE: u32 = 4096;
/// The rungs of the ladder: name, height, video bitrate (kbit/s).
pub const LADDER: &[(&str, u32, u32)] = &[("360p", 360, 800), ("720p", 720, 2_800)];
/// Address space a transcoder may use.
const MAX_CHILD_BYTES: u64 = 3 << 30;
/// Threads of one encoder.
const ENCODER_THREADS: u32 = 2;
/// Seconds of HLS segments.
const SEGMENT_SECONDS: u32 = 4;

/// What `ffprobe` says of a video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Length.
    pub duration: Duration,
}

/// The ffmpeg demuxer for a sniffed video type.
fn demuxer(mime: &str) -> Result<&'static str> {
    match mime {
        "video/mp4" | "video/quicktime" => Ok("mov"),
        "video/webm" => Ok("matroska"),
        _ => Err(Refusal::Unsupported.into()),
    }
}

/// Options that come before `-i`: the sniffed type's demuxer, local files only.
fn input_options(c: &mut Command, mime: &str) -> Result<()> {
    c.args(["-protocol_whitelist", "file", "-f", demuxer(mime)?]);
    Ok(())
}

/// `program` at a low CPU priority (the shards' threads come first) under the address
/// space limit.
fn limited(program: &str) -> Command {
    let mut c = Command::new("nice");
    c.args(["-n", "10", "prlimit"])
        .arg(format!("--as={MAX_CHILD_BYTES}"))
        .arg("--")
        .arg(program)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

async fn run(mut c: Command, within: Duration) -> Result<std::process::Output> {
    let child = c.output();
    match tokio::time::timeout(within, child).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "video tool did not start");
            Err(Error::Unavailable("video processing"))
        }
        Err(_) => Err(Error::Internal("video tool ran over its time")),
    }
}

/// How long `ffprobe` may take over one file.
const PROBE_TIME: Duration = Duration::from_secs(30);

/// Probes `path` (sniffed as `mime`): a video stream's size and the container's
/// duration, within the limits.
pub async fn probe(path: &Path, mime: &str) -> Result<Probe> {
    let mut c = limited("ffprobe");
    input_options(&mut c, mime)?;
    c.args([
        "-v",
        "error",
        "-select_streams",
        "v:0",
        // Packets counted (demuxed, not decoded): the frame count the header may not
        // say (`avg_frame_rate` is "0/0" in many WebM and Matroska files). At most one
        // more than the longest video may have at `MAX_FPS`, so that a file of many
        // tiny packets is not read to its end: one that reaches the cap is refused.
        "-count_packets",
        "-read_intervals",
    ])
    .arg(format!("%+#{}", MAX_PACKETS + 1))
    .args([
        "-show_entries",
        "stream=width,height,avg_frame_rate,nb_read_packets:format=duration",
        "-of",
        "json",
    ])
    .arg(path);
    // A file that takes longer than this to read is refused (and its upload ended), so
    // that it cannot hold a check again and again.
    let out = match run(c, PROBE_TIME).await {
        Err(Error::Internal(_)) => return Err(Refusal::TooSlow.into()),
        out => out?,
    };
    if !out.status.success() {
        return Err(Refusal::Undecodable.into());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|_| Error::from(Refusal::Undecodable))?;
    let stream = v["streams"]
        .get(0)
        .ok_or(Error::from(Refusal::Undecodable))?;
    let side = |k: &str| stream[k].as_u64().and_then(|n| u32::try_from(n).ok());
    let (Some(width), Some(height)) = (side("width"), side("height")) else {
        return Err(Refusal::Undecodable.into());
    };
    let seconds = v["format"]["duration"]
        .as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or(Error::from(Refusal::Undecodable))?;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Refusal::TooManyPixels { width, height }.into());
    }
    // Decoding work grows with the frames: a stream averaging thousands a second is
    // refused before any is decoded. (The average, not `r_frame_rate`, which is the
    // time base's guess: 1000/1 for many WebM and variable-rate files.) Where the
    // container does not say its rate ("0/0", as WebM and Matroska often do), the
    // packets counted over the duration: more than a second's worth at `MAX_FPS`, at a
    // higher rate than it, is refused too.
    let declared = stream["avg_frame_rate"].as_str().and_then(frame_rate);
    let counted = stream["nb_read_packets"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > u64::from(MAX_FPS))
        .map(|n| {
            if n > MAX_PACKETS {
                f64::INFINITY
            } else {
                n as f64 / seconds
            }
        });
    if let Some(fps) = declared.into_iter().chain(counted).reduce(f64::max)
        && fps > f64::from(MAX_FPS)
    {
        return Err(Refusal::TooManyFrames {
            fps: fps.ceil().min(f64::from(u32::MAX)) as u32,
        }
        .into());
    }
    let duration =
        Duration::try_from_secs_f64(seconds).map_err(|_| Error::from(Refusal::TooLong))?;
    if duration > MAX_DURATION {
        return Err(Refusal::TooLong.into());
    }
    Ok(Probe {
        width,
        height,
        duration,
    })
}

/// Most frames a second a video may have (high-speed phone footage is 240).
pub const MAX_FPS: u32 = 240;

/// Most packets the probe counts: the frames of the longest video at `MAX_FPS` (a packet
/// is usually a frame; a few codecs pack more than one in some).
const MAX_PACKETS: u64 = MAX_FPS as u64 * MAX_DURATION.as_secs();

/// A frame rate as ffprobe writes it (`30000/1001`); `None` when unknown (`0/0`).
fn frame_rate(s: &str) -> Option<f64> {
    let (num, den) = s.split_once('/')?;
    let (num, den) = (
        num.trim().parse::<f64>().ok()?,
        den.trim().parse::<f64>().ok()?,
    );
    (den > 0.0 && num.is_finite() && den.is_finite()).then(|| num / den)
}

/// How long converting one animated GIF may take.
const GIF_TIME: Duration = Duration::from_secs(120);
/// Longest animation converted (a GIF's frames beyond it are cut).
const GIF_MAX_SECONDS: u32 = 60;

/// An animated GIF as a silent H.264 MP4 (`mp4`): what players loop for a GIF, at a
/// fraction of its bytes, without metadata, at its size (rounded down to even sides, as
/// H.264 wants), at most a minute long. Read with the GIF demuxer only.
pub async fn gif_to_mp4(input: &Path, dir: &Path) -> Result<Output> {
    let out_path = dir.join("animation.mp4");
    let mut c = limited("ffmpeg");
    c.args(["-nostdin", "-v", "error", "-y"])
        .args(["-protocol_whitelist", "file", "-f", "gif"])
        .args([
            "-threads",
            &ENCODER_THREADS.to_string(),
            "-filter_threads",
            "1",
            "-i",
        ])
        .arg(input)
        .args(["-map", "0:v:0", "-map_metadata", "-1", "-an"])
        .args(["-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"])
        .args(["-pix_fmt", "yuv420p", "-movflags", "+faststart"])
        .args(["-threads", &ENCODER_THREADS.to_string()])
        .args(["-t", &GIF_MAX_SECONDS.to_string()])
        .arg(&out_path);
    let out = run(c, GIF_TIME).await?;
    if !out.status.success() {
        tracing::warn!(
            stderr = %String::from_utf8_lossy(&out.stderr).chars().take(500).collect::<String>(),
            "ffmpeg failed on a GIF"
        );
        return Err(Refusal::Undecodable.into());
    }
    let probe = probe(&out_path, "video/mp4").await?;
    Ok(Output {
        name: "mp4".into(),
        mime: "video/mp4",
        width: probe.width,
        height: probe.height,
        path: out_path,
    })
}

/// A file made from a video: its rendition name (`hls/master.m3u8`, `hls/360p_000.ts`,
/// `poster`), type, size in pixels (0 for playlists and segments) and where it is.
#[derive(Debug, Clone)]
pub struct Output {
    /// Rendition name.
    pub name: String,
    /// Type.
    pub mime: &'static str,
    /// Pixels (poster and playlists of a rung).
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// The file.
    pub path: PathBuf,
}

/// Transcodes `input` (probed as `probe`) into `dir`: each rung's playlist and segments,
/// a master playlist naming them, and a poster. Segment names are relative, so the
/// files work from any base URL or directory.
pub async fn transcode(input: &Path, mime: &str, probe: Probe, dir: &Path) -> Result<Vec<Output>> {
    let within = (probe.duration * 10).clamp(Duration::from_secs(60), Duration::from_secs(1800));
    let mut rungs: Vec<(&str, u32, u32)> = LADDER
        .iter()
        .copied()
        .filter(|&(_, h, _)| h <= probe.height)
        .collect();
    if rungs.is_empty() {
        rungs.push(("360p", probe.height & !1, LADDER[0].2));
    }
    let mut outputs = Vec::new();
    let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
    for &(name, height, kbps) in &rungs {
        let width = ((u64::from(probe.width) * u64::from(height) / u64::from(probe.height)) as u32
            + 1)
            & !1;
        let mut c = limited("ffmpeg");
        c.args(["-nostdin", "-v", "error", "-y"]);
        input_options(&mut c, mime)?;
        // The decoder's threads too (before `-i`), and the scaler's.
        c.args(["-threads", &ENCODER_THREADS.to_string()])
            .args(["-filter_threads", "1"])
            .arg("-i")
            .arg(input)
            .args(["-map", "0:v:0", "-map", "0:a:0?", "-map_metadata", "-1"])
            .args(["-vf", &format!("scale={width}:{height}")])
            .args([
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
            ])
            // Two encoder threads per rung: a node's few workers never take every core.
            .args(["-threads", &ENCODER_THREADS.to_string()])
            .args([
                "-b:v",
                &format!("{kbps}k"),
                "-maxrate",
                &format!("{}k", kbps * 3 / 2),
            ])
            .args([
                "-bufsize",
                &format!("{}k", kbps * 2),
                "-c:a",
                "aac",
                "-b:a",
                "96k",
            ])
            .args(["-f", "hls", "-hls_time", &SEGMENT_SECONDS.to_string()])
            .args(["-hls_playlist_type", "vod", "-hls_segment_filename"])
            .arg(dir.join(format!("{name}_%03d.ts")))
            .arg(dir.join(format!("{name}.m3u8")));
        let out = run(c, within).await?;
        if !out.status.success() {
            tracing::warn!(
                stderr = %String::from_utf8_lossy(&out.stderr).chars().take(500).collect::<String>(),
                "ffmpeg failed"
            );
            return Err(Refusal::Undecodable.into());
        }
        let bandwidth = (kbps + 96) * 1000;
        master.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={width}x{height}\n{name}.m3u8\n"
        ));
        outputs.push(Output {
            name: format!("hls/{name}.m3u8"),
            mime: "application/vnd.apple.mpegurl",
            width,
            height,
            path: dir.join(format!("{name}.m3u8")),
        });
    }
    // Every segment ffmpeg wrote.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| Error::Internal("transcoder output unreadable"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .collect();
    segments.sort();
    for path in segments {
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        outputs.push(Output {
            name: format!("hls/{file}"),
            mime: "video/mp2t",
            width: 0,
            height: 0,
            path: path.clone(),
        });
    }
    let master_path = dir.join("master.m3u8");
    tokio::fs::write(&master_path, master)
        .await
        .map_err(|_| Error::Internal("master playlist not written"))?;
    outputs.insert(
        0,
        Output {
            name: "hls/master.m3u8".into(),
            mime: "application/vnd.apple.mpegurl",
            width: probe.width,
            height: probe.height,
            path: master_path,
        },
    );
    // The poster: a frame from the first second, at most 720 pixels high.
    let poster = dir.join("poster.jpg");
    let mut c = limited("ffmpeg");
    let at = if probe.duration > Duration::from_secs(2) {
        "1"
    } else {
        "0"
    };
    c.args(["-nostdin", "-v", "error", "-y", "-ss", at]);
    input_options(&mut c, mime)?;
    c.args(["-threads", &ENCODER_THREADS.to_string()])
        .args(["-filter_threads", "1"])
        .arg("-i")
        .arg(input)
        .args([
            "-frames:v",
            "1",
            "-map_metadata",
            "-1",
            "-vf",
            "scale=-2:'min(720,ih)'",
        ])
        .arg(&poster);
    let out = run(c, Duration::from_secs(60)).await?;
    if !out.status.success() {
        return Err(Refusal::Undecodable.into());
    }
    let (pw, ph) = image::image_dimensions(&poster).unwrap_or((0, 0));
    outputs.push(Output {
        name: "poster".into(),
        mime: "image/jpeg",
        width: pw,
        height: ph,
        path: poster,
    });
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::frame_rate;

    #[test]
    fn frame_rates_as_ffprobe_writes_them() {
        assert_eq!(frame_rate("25/1"), Some(25.0));
        assert!(frame_rate("30000/1001").is_some_and(|f| (f - 29.97).abs() < 0.01));
        assert_eq!(frame_rate("0/0"), None);
        assert_eq!(frame_rate("1/0"), None);
        assert_eq!(frame_rate("nonsense"), None);
        assert_eq!(frame_rate("inf/1"), None);
    }
}
