//! Second factor: TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) and single-use
//! recovery codes.
//!
//! Sans-IO: the caller passes the current Unix time and the last step it accepted for the
//! account, so that a code can be used once only (a replayed code within its window is
//! refused) and tests need no clock. Codes are compared in constant time.

use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

/// Seconds per TOTP step.
pub const STEP_SECONDS: u64 = 30;
/// Steps accepted either side of now (clock drift between phone and server).
pub const SKEW_STEPS: u64 = 1;
/// Recovery codes issued at enrolment.
pub const RECOVERY_CODES: usize = 10;

/// Second-factor errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// Wrong code (or not within the window).
    #[error("invalid second-factor code")]
    Invalid,
    /// The code was already used.
    #[error("second-factor code already used")]
    Replayed,
    /// The stored secret is unusable.
    #[error("second-factor secret is corrupt")]
    CorruptSecret,
}

/// A new 160-bit TOTP secret (RFC 4226 recommends 160 bits).
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::fill(&mut secret[..]);
    secret
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<TOTP, TotpError> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        0,
        STEP_SECONDS,
        secret.to_vec(),
        Some(issuer.replace(':', "")),
        account.replace(':', ""),
    )
    .map_err(|_| TotpError::CorruptSecret)
}

/// What an authenticator app needs: the `otpauth://` URI (QR code) and the secret in
/// base32 for manual entry.
pub fn enrolment(
    secret: &[u8],
    issuer: &str,
    account: &str,
) -> Result<(String, String), TotpError> {
    let t = totp(secret, issuer, account)?;
    Ok((
        t.get_url(),
        Secret::Raw(secret.to_vec()).to_encoded().to_string(),
    ))
}

/// Checks `code` at `now_unix`. Returns the matched step, which the caller stores as the
/// account's last used step; steps at or before `last_used_step` are refused.
pub fn verify(
    secret: &[u8],
    code: &str,
    now_unix: u64,
    last_used_step: Option<u64>,
) -> Result<u64, TotpError> {
    let t = totp(secret, "selfie", "account")?;
    let now_step = now_unix / STEP_SECONDS;
    let code = code.trim().as_bytes();
    let mut matched = None;
    // Check every step of the window (no early exit: constant work per attempt).
    for step in now_step.saturating_sub(SKEW_STEPS)..=now_step + SKEW_STEPS {
        let expected = t.generate(step * STEP_SECONDS);
        if bool::from(expected.as_bytes().ct_eq(code)) {
            matched = Some(step);
        }
    }
    let step = matched.ok_or(TotpError::Invalid)?;
    if last_used_step.is_some_and(|last| step <= last) {
        return Err(TotpError::Replayed);
    }
    Ok(step)
}

/// New recovery codes to show the user once. Each has ~50 bits of entropy: 10 characters
/// drawn uniformly from a 31-character alphabet, shown as `xxxxx-xxxxx`. The caller
/// stores only keyed hashes of them ([`normalize_recovery_code`] first).
pub fn recovery_codes() -> Vec<String> {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..10)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect()
}

/// A recovery code as it is hashed: trimmed, lower case, without the dash.
pub fn normalize_recovery_code(code: &str) -> String {
    code.trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| *c != '-')
        .collect()
}

/// Spends the recovery code whose hash is `presented`: on a match it is removed from
/// `hashes` (single use). Every stored hash is compared, in constant time.
pub fn spend_recovery_code(
    hashes: &mut Vec<[u8; 32]>,
    presented: &[u8; 32],
) -> Result<(), TotpError> {
    let mut found = None;
    for (i, stored) in hashes.iter().enumerate() {
        if bool::from(stored.ct_eq(presented)) {
            found = Some(i);
        }
    }
    let i = found.ok_or(TotpError::Invalid)?;
    hashes.swap_remove(i);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits).
    #[test]
    fn rfc_6238_test_vectors() {
        let t = TOTP::new_unchecked(
            Algorithm::SHA1,
            8,
            0,
            30,
            b"12345678901234567890".to_vec(),
            None,
            String::new(),
        );
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(t.generate(time), code, "T = {time}");
        }
    }

    #[test]
    fn a_current_code_verifies_once_and_neighbouring_steps_are_tolerated() {
        let secret = new_secret();
        let t = totp(&secret, "selfie", "ada").expect("totp");
        let now = 1_800_000_000;
        let code = t.generate(now);
        let step = verify(&secret, &code, now, None).expect("valid");
        assert_eq!(step, now / STEP_SECONDS);
        assert_eq!(
            verify(&secret, &code, now, Some(step)),
            Err(TotpError::Replayed)
        );
        // The previous step's code still works 30 s later (drift), once.
        let late = t.generate(now - STEP_SECONDS);
        assert!(verify(&secret, &late, now, None).is_ok());
        // Two steps away: refused.
        let old = t.generate(now - 2 * STEP_SECONDS);
        assert_eq!(verify(&secret, &old, now, None), Err(TotpError::Invalid));
        if code != "000000" {
            assert_eq!(
                verify(&secret, "000000", now, None),
                Err(TotpError::Invalid)
            );
        }
    }

    #[test]
    fn enrolment_gives_an_otpauth_uri_and_base32_secret() {
        let secret = new_secret();
        let (uri, b32) = enrolment(&secret, "Selfie", "ada@example.com").expect("uri");
        assert!(
            uri.starts_with("otpauth://totp/Selfie:ada%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={b32}")), "{uri}");
        assert_eq!(b32.len(), 32);
    }

    #[test]
    fn recovery_codes_work_once_each_and_are_uniform() {
        let hash = |c: &str| -> [u8; 32] {
            sha2::Sha256::digest(normalize_recovery_code(c).as_bytes()).into()
        };
        let codes = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut hashes: Vec<[u8; 32]> = codes.iter().map(|c| hash(c)).collect();
        assert!(spend_recovery_code(&mut hashes, &hash(&codes[3].to_uppercase())).is_ok());
        assert_eq!(
            spend_recovery_code(&mut hashes, &hash(&codes[3])),
            Err(TotpError::Invalid)
        );
        assert_eq!(hashes.len(), RECOVERY_CODES - 1);
        // Every character of the alphabet turns up as often as any other, within four
        // standard deviations: random bytes `% 31` would give 8 characters 9/8 the
        // share of the others.
        let mut seen = std::collections::HashMap::new();
        for _ in 0..4_000 {
            for c in recovery_codes().concat().chars().filter(|c| *c != '-') {
                *seen.entry(c).or_insert(0u32) += 1;
            }
        }
        assert_eq!(seen.len(), 31, "every character is used");
        let (min, max) = (seen.values().min().copied(), seen.values().max().copied());
        let (min, max) = (min.unwrap_or(0), max.unwrap_or(0));
        // 400,000 draws over 31 characters: 12,903 each on average, sd ≈ 112.
        assert!(min > 12_450 && max < 13_350, "min {min}, max {max}");
    }
}
