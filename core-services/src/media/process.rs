//! What the server does to uploaded bytes, off the shard threads: sniffing the real type,
//! refusing hostile images before they are decoded (a header that claims more pixels than
//! allowed, a truncated JPEG), and making renditions.
//!
//! Images are decoded by the `image` crate under pixel and allocation limits, turned
//! upright by their EXIF orientation, and re-encoded as JPEG renditions (150, 640 and
//! 1080 px on the longer side, never upscaled): re-encoding carries no metadata, so EXIF
//! (GPS included) never reaches a viewer. A BlurHash placeholder is computed from a small
//! thumbnail.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::tables::media::Kind;

/// Most pixels on either side of an image.
pub const MAX_SIDE: u32 = 12_000;
/// Most pixels of an image (about 50 megapixels).
pub const MAX_PIXELS: u64 = 50_000_000;
/// Most memory a decoder may allocate.
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// The renditions of an image: name and longest side.
pub const IMAGE_RENDITIONS: &[(&str, u32)] = &[("small", 150), ("medium", 640), ("large", 1080)];

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a type this server accepts.
    #[error("unsupported type")]
    Unsupported,
    /// Of another kind than the upload declared.
    #[error("declared {declared:?} but the bytes are {sniffed}")]
    WrongKind {
        /// The kind declared.
        declared: Kind,
        /// The type the bytes are.
        sniffed: &'static str,
    },
    /// More pixels than allowed (a decompression bomb, or simply too large).
    #[error("image too large ({width}x{height})")]
    TooManyPixels {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
    },
    /// The bytes end before the image does.
    #[error("truncated image")]
    Truncated,
    /// A video longer than allowed.
    #[error("video too long")]
    TooLong,
    /// The decoder could not read it.
    #[error("undecodable image")]
    Undecodable,
    /// Reading it took longer than allowed (a file built to be slow to parse).
    #[error("too slow to read")]
    TooSlow,
    /// More frames a second than allowed (a file built to be slow to decode).
    #[error("frame rate too high ({fps} frames a second)")]
    TooManyFrames {
        /// The frame rate it claims (rounded up).
        fps: u32,
    },
}

/// The accepted type of `head` (the first bytes of an object) for an upload declared as
/// `declared`: its MIME type and the kind it really is.
pub fn sniff(head: &[u8], declared: Kind) -> Result<(&'static str, Kind), Refusal> {
    let t = infer::get(head).ok_or(Refusal::Unsupported)?;
    let mime = t.mime_type();
    let kind = match mime {
        "image/jpeg" | "image/png" | "image/webp" => Kind::Image,
        "image/gif" => Kind::Gif,
        "video/mp4" | "video/quicktime" | "video/webm" => Kind::Video,
        _ => return Err(Refusal::Unsupported),
    };
    // A GIF may be uploaded as an image.
    let fits = kind == declared || (declared == Kind::Image && kind == Kind::Gif);
    if !fits {
        return Err(Refusal::WrongKind {
            declared,
            sniffed: mime,
        });
    }
    Ok((mime, kind))
}

/// Cheap checks of a whole image before it is accepted: its header's dimensions within
/// the limits (no pixel is decoded), and a JPEG that ends with its end marker.
pub fn precheck_image(bytes: &[u8], mime: &str) -> Result<(u32, u32), Refusal> {
    if mime == "image/jpeg" {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end < 4 || bytes[end - 2..end] != [0xFF, 0xD9] {
            return Err(Refusal::Truncated);
        }
    }
    let (width, height) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| Refusal::Undecodable)?
        .into_dimensions()
        .map_err(|_| Refusal::Undecodable)?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Refusal::TooManyPixels { width, height });
    }
    Ok((width, height))
}

/// A rendition made from an image.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Its name.
    pub name: &'static str,
    /// JPEG bytes.
    pub bytes: Vec<u8>,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// What processing an image yields.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// Upright width.
    pub width: u32,
    /// Upright height.
    pub height: u32,
    /// The placeholder.
    pub blurhash: String,
    /// The renditions, smallest first.
    pub renditions: Vec<Rendered>,
}

/// The BlurHash placeholder of `img` (4 × 3 components, from a 32-pixel thumbnail).
pub fn blurhash_of(img: &DynamicImage) -> String {
    let thumb = img.thumbnail(32, 32).to_rgba8();
    blurhash::encode(4, 3, thumb.width(), thumb.height(), thumb.as_raw()).unwrap_or_default()
}

/// Decodes `bytes` under the limits, applies the EXIF orientation and makes the
/// renditions and the placeholder. CPU-heavy: call it on a blocking thread.
pub fn process_image(bytes: &[u8]) -> Result<ProcessedImage, Refusal> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| Refusal::Undecodable)?;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => Refusal::TooManyPixels {
            width: 0,
            height: 0,
        },
        _ => Refusal::Undecodable,
    })?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => Refusal::TooManyPixels {
            width: 0,
            height: 0,
        },
        _ => Refusal::Undecodable,
    })?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let mut renditions = Vec::new();
    for &(name, side) in IMAGE_RENDITIONS {
        let scaled = if width.max(height) > side {
            img.thumbnail(side, side)
        } else {
            img.clone()
        };
        let rgb = scaled.to_rgb8();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&rgb)
            .map_err(|_| Refusal::Undecodable)?;
        renditions.push(Rendered {
            name,
            bytes: out,
            width: rgb.width(),
            height: rgb.height(),
        });
    }
    Ok(ProcessedImage {
        width,
        height,
        blurhash: blurhash_of(&img),
        renditions,
    })
}

/// Whether `bytes` (a GIF) holds more than one frame: only the first two are decoded.
pub fn is_animated_gif(bytes: &[u8]) -> bool {
    use image::AnimationDecoder;
    image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes))
        .map(|d| d.into_frames().take(2).filter(Result::is_ok).count() == 2)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    }

    #[test]
    fn the_bytes_decide_the_type_not_the_claim() {
        let p = png(4, 4);
        assert_eq!(sniff(&p, Kind::Image), Ok(("image/png", Kind::Image)));
        assert!(matches!(
            sniff(&p, Kind::Video),
            Err(Refusal::WrongKind { .. })
        ));
        assert_eq!(
            sniff(b"hello world", Kind::Image),
            Err(Refusal::Unsupported)
        );
    }

    #[test]
    fn renditions_are_never_upscaled_and_keep_the_aspect() {
        let out = process_image(&png(2000, 1000)).expect("processed");
        let sizes: Vec<_> = out.renditions.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(sizes, vec![(150, 75), (640, 320), (1080, 540)]);
        assert!(!out.blurhash.is_empty());
        let small = process_image(&png(100, 50)).expect("processed");
        assert!(
            small
                .renditions
                .iter()
                .all(|r| (r.width, r.height) == (100, 50))
        );
    }
}
