//! Signed, expiring HTTPS URLs for media, for browsers and CDNs.
//!
//! A URL is minted for one viewer of one object, after the media service has checked
//! that the viewer may see it, and names both:
//!
//! ```text
//! https://media.example/media/<media_id>/<viewer>/<expires_s>/<signature>/<rendition>
//! ```
//!
//! The signature is HMAC-SHA-256, truncated to 128 bits, over the object, the viewer, the
//! expiry and the URL's **scope**, under a key derived from the fleet's token signing key
//! (so every node of a fleet verifies what any node minted). The scope is the rendition
//! itself (`large`, `poster`, `original`), except for an HLS ladder, whose scope is its
//! directory `hls/`: a playlist names its rungs and segments relatively (`360p.m3u8`,
//! `360p_000.ts`), and they resolve under the same signed directory. So a URL to one
//! rendition never opens another (an owner's shared `large` URL never becomes the
//! original with its metadata), and a ladder's URL opens the ladder's files only.
//!
//! A URL is a capability until it expires (anyone holding it may use it, as with any
//! CDN's signed URLs), so it is minted per viewer, short-lived, and checked again when
//! served: the object must still exist and the viewer must still be allowed to see it.
//! Verification compares signatures in constant time and touches no storage: a forged
//! or expired URL costs one HMAC.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the truncated signature.
const SIGNATURE_BYTES: usize = 16;
/// Longest rendition name a URL may carry.
const MAX_RENDITION: usize = 128;
/// The path prefix of media URLs.
pub const PREFIX: &str = "/media/";

/// Why a URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a media URL of the expected shape.
    #[error("malformed media URL")]
    Malformed,
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// The URL has expired.
    #[error("expired")]
    Expired,
}

impl UrlError {
    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            UrlError::Malformed => "malformed",
            UrlError::BadSignature => "bad_signature",
            UrlError::Expired => "expired",
        }
    }
}

/// What a verified URL grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The object.
    pub media_id: u64,
    /// The viewer it was minted for.
    pub viewer: u64,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
    /// The rendition asked for ("original", "large", "hls/master.m3u8", ...).
    pub rendition: String,
}

/// What a URL to `rendition` may open: the rendition itself, or for an HLS ladder's file
/// the ladder's directory.
pub fn scope(rendition: &str) -> &str {
    if rendition.starts_with(HLS_DIR) {
        HLS_DIR
    } else {
        rendition
    }
}

/// The directory of a video's HLS ladder.
const HLS_DIR: &str = "hls/";

/// Mints and verifies media URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
    base: String,
    ttl_ms: u64,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("UrlSigner")
            .field("base", &self.base)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl UrlSigner {
    /// A signer for URLs under `base` (`https://host[:port]`, no path) that live `ttl`,
    /// keyed from `secret` (the fleet's token signing key).
    pub fn new(secret: &[u8], base: &str, ttl: std::time::Duration) -> Self {
        // HMAC takes keys of any length: this never fails.
        let mut mac = HmacSha256::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"selfie media urls v1");
        let key: [u8; 32] = mac.finalize().into_bytes().into();
        Self {
            key,
            base: base.trim_end_matches('/').to_string(),
            ttl_ms: u64::try_from(ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1_000),
        }
    }

    /// How long minted URLs live, ms.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn mac(&self, media_id: u64, viewer: u64, expires_s: u64, rendition: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&media_id.to_be_bytes());
        mac.update(&viewer.to_be_bytes());
        mac.update(&expires_s.to_be_bytes());
        mac.update(scope(rendition).as_bytes());
        mac
    }

    /// A URL to `rendition` of `media_id` for `viewer`, and when it expires (Unix ms).
    /// Expiries are whole seconds, rounded up to the next minute so that URLs minted
    /// close together are the same (browser and CDN caches see one URL).
    pub fn mint(&self, media_id: u64, viewer: u64, rendition: &str, now_ms: u64) -> (String, u64) {
        let expires_s = now_ms.saturating_add(self.ttl_ms).div_ceil(60_000) * 60;
        let sig = self
            .mac(media_id, viewer, expires_s, rendition)
            .finalize()
            .into_bytes();
        let sig = hex::encode(&sig[..SIGNATURE_BYTES]);
        let url = format!(
            "{}{PREFIX}{media_id}/{viewer}/{expires_s}/{sig}/{rendition}",
            self.base
        );
        (url, expires_s.saturating_mul(1000))
    }

    /// Checks a request path (`/media/...`, without the query) at `now_ms`.
    pub fn verify(&self, path: &str, now_ms: u64) -> Result<Grant, UrlError> {
        let rest = path.strip_prefix(PREFIX).ok_or(UrlError::Malformed)?;
        let mut parts = rest.splitn(5, '/');
        let mut number = || -> Result<u64, UrlError> {
            let p = parts.next().ok_or(UrlError::Malformed)?;
            // Canonical decimal only: one URL per grant.
            if p.is_empty() || p.len() > 20 || (p.len() > 1 && p.starts_with('0')) {
                return Err(UrlError::Malformed);
            }
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::Malformed);
            }
            p.parse().map_err(|_| UrlError::Malformed)
        };
        let media_id = number()?;
        let viewer = number()?;
        let expires_s = number()?;
        let sig = parts.next().ok_or(UrlError::Malformed)?;
        let rendition = parts.next().ok_or(UrlError::Malformed)?;
        if rendition.is_empty()
            || rendition.len() > MAX_RENDITION
            || !rendition
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
        {
            return Err(UrlError::Malformed);
        }
        // Lower-case hex only: one URL per grant.
        if sig.len() != 2 * SIGNATURE_BYTES
            || !sig
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(UrlError::Malformed);
        }
        let sig = hex::decode(sig).map_err(|_| UrlError::Malformed)?;
        self.mac(media_id, viewer, expires_s, rendition)
            .verify_truncated_left(&sig)
            .map_err(|_| UrlError::BadSignature)?;
        let expires_ms = expires_s.saturating_mul(1000);
        if now_ms >= expires_ms {
            return Err(UrlError::Expired);
        }
        Ok(Grant {
            media_id,
            viewer,
            expires_ms,
            rendition: rendition.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn signer() -> UrlSigner {
        UrlSigner::new(
            b"fleet key",
            "https://m.example:8443/",
            Duration::from_secs(600),
        )
    }

    fn path(url: &str) -> &str {
        url.strip_prefix("https://m.example:8443")
            .expect("minted under the base")
    }

    #[test]
    fn a_minted_url_verifies_until_it_expires() {
        let s = signer();
        let now = 1_700_000_000_000;
        let (url, expires) = s.mint(42, 7, "hls/master.m3u8", now);
        assert!(expires >= now + 600_000 && expires < now + 660_000);
        let g = s.verify(path(&url), now).expect("valid");
        assert_eq!(
            g,
            Grant {
                media_id: 42,
                viewer: 7,
                expires_ms: expires,
                rendition: "hls/master.m3u8".into()
            }
        );
        assert_eq!(
            s.verify(path(&url), expires - 1).map(|g| g.media_id),
            Ok(42)
        );
        assert_eq!(s.verify(path(&url), expires), Err(UrlError::Expired));
    }

    #[test]
    fn the_directory_is_signed_so_a_playlist_resolves_its_segments() {
        let s = signer();
        let now = 1_700_000_000_000;
        let (url, _) = s.mint(42, 7, "hls/master.m3u8", now);
        let segment = path(&url).replace("master.m3u8", "360p_000.ts");
        assert_eq!(
            s.verify(&segment, now).map(|g| g.rendition),
            Ok("hls/360p_000.ts".into())
        );
        // The ladder's directory only: not the poster, not the original.
        for other in ["poster", "original", "large"] {
            let p = path(&url).replace("hls/master.m3u8", other);
            assert_eq!(s.verify(&p, now), Err(UrlError::BadSignature), "{other}");
        }
    }

    /// Attack: an owner shares a URL to a rendition (no metadata); rewriting it to the
    /// original (with its GPS location) or another rendition is refused.
    #[test]
    fn a_url_opens_only_its_rendition() {
        let s = signer();
        let now = 1_700_000_000_000;
        let (url, _) = s.mint(42, 7, "large", now);
        for other in ["original", "small", "hls/master.m3u8"] {
            let p = path(&url).replace("/large", &format!("/{other}"));
            assert_eq!(s.verify(&p, now), Err(UrlError::BadSignature), "{other}");
        }
        // The signature in upper case is the same bytes, but not the one URL of the grant.
        let mut parts: Vec<String> = path(&url).split('/').map(str::to_string).collect();
        parts[5] = parts[5].to_uppercase();
        let upper = parts.join("/");
        assert_ne!(upper, path(&url));
        assert_eq!(s.verify(&upper, now), Err(UrlError::Malformed));
    }

    /// Attack: changing any signed part of the URL (another object, another viewer, a
    /// later expiry) or signing with another fleet's key is refused.
    #[test]
    fn tampered_urls_are_refused() {
        let s = signer();
        let now = 1_700_000_000_000;
        let (url, expires) = s.mint(42, 7, "large", now);
        let p = path(&url);
        let expires_s = (expires / 1000).to_string();
        for forged in [
            p.replacen("/42/", "/43/", 1),
            p.replacen("/7/", "/8/", 1),
            p.replacen(&expires_s, &(expires / 1000 + 60).to_string(), 1),
        ] {
            assert_eq!(
                s.verify(&forged, now),
                Err(UrlError::BadSignature),
                "{forged}"
            );
        }
        let other = UrlSigner::new(
            b"another key",
            "https://m.example:8443",
            Duration::from_secs(600),
        );
        assert_eq!(other.verify(p, now), Err(UrlError::BadSignature));
        // A flipped signature digit.
        let sig_at = p.rfind('/').expect("rendition") - 1;
        let mut b = p.as_bytes().to_vec();
        b[sig_at] = if b[sig_at] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(b).expect("ascii");
        assert_eq!(s.verify(&flipped, now), Err(UrlError::BadSignature));
    }

    #[test]
    fn malformed_paths_are_refused_before_any_mac() {
        let s = signer();
        let now = 1;
        for p in [
            "/media/",
            "/media/1/2/3",
            "/media/1/2/3/00/large",
            "/other/1/2/3/00112233445566778899aabbccddeeff/large",
            "/media/01/2/3/00112233445566778899aabbccddeeff/large",
            "/media/+1/2/3/00112233445566778899aabbccddeeff/large",
            "/media/1/2/99999999999999999999999/00112233445566778899aabbccddeeff/large",
            "/media/1/2/3/00112233445566778899aabbccddeeff/",
            "/media/1/2/3/00112233445566778899aabbccddeeff/a%2F..",
            "/media/1/2/3/00112233445566778899aabbccddeefg/large",
        ] {
            assert_eq!(s.verify(p, now), Err(UrlError::Malformed), "{p}");
        }
    }
}
