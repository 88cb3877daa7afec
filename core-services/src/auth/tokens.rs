//! Access tokens: PASETO v4.public, signed with Ed25519, verified at the edge without a
//! storage round trip.
//!
//! Claims: `iss` (the deployment), `sub` (user id), `sid` (login session id), `roles`,
//! `iat`/`nbf`/`exp`. The implicit assertion binds every token to the protocol (`selfie/1`)
//! so that a token minted for another purpose with the same key never verifies here.
//! Tokens are short-lived (minutes); revoking a session takes effect at once through
//! [`RevokedSessions`], which the accounts service feeds (and, on a fleet, the event bus).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::errors::{ClaimValidationError, Error as PasetoError};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{Public, public};

/// Bound into every token as the PASETO implicit assertion.
const IMPLICIT: &[u8] = b"selfie/1 access";

/// What a verified access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user.
    pub user_id: u64,
    /// The login session (device).
    pub session_id: u64,
    /// Roles (`admin`, `moderator`, ...).
    pub roles: Vec<String>,
    /// When the token stops verifying (Unix milliseconds).
    pub expires_at_ms: u64,
}

/// Why a token was refused. Deliberately coarse: the caller learns what to do (refresh,
/// sign in again), not why a forgery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Valid signature, but past its expiry: refresh it.
    #[error("access token expired")]
    Expired,
    /// Malformed, tampered, signed by another key, or for another issuer.
    #[error("access token invalid")]
    Invalid,
    /// Its session was revoked (logout, password change, "sign out other devices").
    #[error("access token revoked")]
    Revoked,
    /// Minting failed (clock or signing error).
    #[error("cannot issue an access token")]
    Issue,
}

/// Sessions whose tokens must no longer be accepted, shared by every shard. Written on
/// revocation (rare), read on `Hello` (not per request). Each revocation is also
/// announced ([`RevokedSessions::subscribe`]) so that the edge closes the session's open
/// connections at once. An entry is kept for `retention` (the access-token lifetime plus
/// a margin for clock skew): after that every token of the session has expired anyway.
///
/// On a fleet, revocations made on this node are handed to the fleet bridge
/// ([`RevokedSessions::local_revocations`]) and those of other nodes come back through
/// [`RevokedSessions::revoke_from_fleet`], which does not hand them on again.
#[derive(Debug, Clone)]
pub struct RevokedSessions {
    inner: Arc<RwLock<Revoked>>,
    announce: tokio::sync::broadcast::Sender<u64>,
    local: tokio::sync::broadcast::Sender<u64>,
    retention: Duration,
}

#[derive(Debug, Default)]
struct Revoked {
    /// Session id → when it was revoked (Unix ms).
    at: HashMap<u64, u64>,
    last_prune_ms: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Margin added to the token lifetime for clocks that disagree.
const SKEW: Duration = Duration::from_secs(120);

impl Default for RevokedSessions {
    fn default() -> Self {
        Self::with_retention(Duration::from_secs(3600))
    }
}

impl RevokedSessions {
    /// Remembers each revocation for `retention`.
    pub fn with_retention(retention: Duration) -> Self {
        Self {
            inner: Arc::default(),
            // Lagging listeners miss announcements but never the set itself, which
            // `Hello` always checks.
            announce: tokio::sync::broadcast::channel(1024).0,
            local: tokio::sync::broadcast::channel(4096).0,
            retention,
        }
    }

    /// How long a revocation is remembered.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Marks a session revoked on this node: remembered, announced to the shards, and
    /// handed to the fleet bridge.
    pub fn revoke(&self, session_id: u64) {
        if self.insert(session_id) {
            let _ = self.local.send(session_id);
        }
    }

    /// Marks a session revoked by another node (remembered and announced, not handed on).
    pub fn revoke_from_fleet(&self, session_id: u64) {
        self.insert(session_id);
    }

    /// Returns whether the session is new to the set.
    fn insert(&self, session_id: u64) -> bool {
        let now = unix_ms();
        let fresh = match self.inner.write() {
            Ok(mut r) => {
                let retention = self.retention.as_millis() as u64;
                if now.saturating_sub(r.last_prune_ms) > 60_000 {
                    r.at.retain(|_, at| now.saturating_sub(*at) < retention);
                    r.last_prune_ms = now;
                }
                r.at.insert(session_id, now).is_none()
            }
            Err(_) => true,
        };
        let _ = self.announce.send(session_id);
        fresh
    }

    /// Revocations from now on (this node's and the fleet's).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<u64> {
        self.announce.subscribe()
    }

    /// Revocations made on this node from now on, for the fleet bridge.
    pub fn local_revocations(&self) -> tokio::sync::broadcast::Receiver<u64> {
        self.local.subscribe()
    }

    /// Whether a session was revoked. A poisoned lock counts as revoked (fail closed).
    pub fn contains(&self, session_id: u64) -> bool {
        self.inner
            .read()
            .map_or(true, |r| r.at.contains_key(&session_id))
    }

    /// How many revocations are remembered.
    pub fn len(&self) -> usize {
        self.inner.read().map_or(0, |r| r.at.len())
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Mints and verifies access tokens.
#[derive(Clone)]
pub struct AccessTokens {
    secret: AsymmetricSecretKey<V4>,
    public: AsymmetricPublicKey<V4>,
    issuer: String,
    ttl: Duration,
    revoked: RevokedSessions,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("AccessTokens")
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    /// A fresh signing key (one node, or tests). Fleets load one shared key with
    /// [`AccessTokens::from_secret_key`].
    pub fn generate(issuer: &str, ttl: Duration) -> Result<Self, TokenError> {
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| TokenError::Issue)?;
        Ok(Self {
            secret: pair.secret,
            public: pair.public,
            issuer: issuer.to_string(),
            ttl,
            revoked: RevokedSessions::with_retention(ttl + SKEW),
        })
    }

    /// From a 64-byte Ed25519 secret key (seed followed by public key).
    pub fn from_secret_key(bytes: &[u8], issuer: &str, ttl: Duration) -> Result<Self, TokenError> {
        let secret = AsymmetricSecretKey::<V4>::from(bytes).map_err(|_| TokenError::Invalid)?;
        let public =
            AsymmetricPublicKey::<V4>::try_from(&secret).map_err(|_| TokenError::Invalid)?;
        Ok(Self {
            secret,
            public,
            issuer: issuer.to_string(),
            ttl,
            revoked: RevokedSessions::with_retention(ttl + SKEW),
        })
    }

    /// The 64-byte secret key, to store it (operators keep it in a secret store; every
    /// node of a fleet needs the same key).
    pub fn secret_key_bytes(&self) -> Vec<u8> {
        self.secret.as_bytes().to_vec()
    }

    /// The revocation set these tokens are checked against.
    pub fn revoked(&self) -> &RevokedSessions {
        &self.revoked
    }

    /// Lifetime of new tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mints a token for `user_id`'s session `session_id`.
    pub fn issue(
        &self,
        user_id: u64,
        session_id: u64,
        roles: &[String],
    ) -> Result<String, TokenError> {
        self.issue_with_ttl(user_id, session_id, roles, self.ttl)
    }

    /// Mints a token valid from `not_before` to `expires` (Unix seconds): for tokens with
    /// a lifetime other than the default, and for tests of expiry.
    pub fn issue_valid_between(
        &self,
        user_id: u64,
        session_id: u64,
        roles: &[String],
        not_before: i64,
        expires: i64,
    ) -> Result<String, TokenError> {
        let rfc3339 = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|d| {
                    d.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .ok_or(TokenError::Issue)
        };
        let mut claims = Claims::new().map_err(|_| TokenError::Issue)?;
        claims
            .issued_at(&rfc3339(not_before)?)
            .map_err(|_| TokenError::Issue)?;
        claims
            .not_before(&rfc3339(not_before)?)
            .map_err(|_| TokenError::Issue)?;
        claims
            .expiration(&rfc3339(expires)?)
            .map_err(|_| TokenError::Issue)?;
        self.sign(claims, user_id, session_id, roles)
    }

    fn issue_with_ttl(
        &self,
        user_id: u64,
        session_id: u64,
        roles: &[String],
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let claims = Claims::new_expires_in(&ttl).map_err(|_| TokenError::Issue)?;
        self.sign(claims, user_id, session_id, roles)
    }

    fn sign(
        &self,
        mut claims: Claims,
        user_id: u64,
        session_id: u64,
        roles: &[String],
    ) -> Result<String, TokenError> {
        claims.issuer(&self.issuer).map_err(|_| TokenError::Issue)?;
        claims
            .subject(&user_id.to_string())
            .map_err(|_| TokenError::Issue)?;
        claims
            .add_additional("sid", session_id.to_string())
            .map_err(|_| TokenError::Issue)?;
        claims
            .add_additional("roles", roles.to_vec())
            .map_err(|_| TokenError::Issue)?;
        public::sign(&self.secret, &claims, None, Some(IMPLICIT)).map_err(|_| TokenError::Issue)
    }

    /// Verifies a token: signature, issuer, validity period, revocation.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Invalid)?;
        let mut rules = ClaimsValidationRules::new();
        rules.validate_issuer_with(&self.issuer);
        let trusted = public::verify(&self.public, &untrusted, &rules, None, Some(IMPLICIT))
            .map_err(|e| match e {
                PasetoError::ClaimValidation(ClaimValidationError::Exp) => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let claims = trusted.payload_claims().ok_or(TokenError::Invalid)?;
        let number = |name: &str| -> Result<u64, TokenError> {
            claims
                .get_claim(name)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
                .ok_or(TokenError::Invalid)
        };
        let user_id = number("sub")?;
        let session_id = number("sid")?;
        // Validation above required a well-formed `exp`.
        let expires_at_ms = claims
            .get_claim("exp")
            .and_then(|v| v.as_str())
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
            .ok_or(TokenError::Invalid)?;
        let roles = claims
            .get_claim("roles")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if self.revoked.contains(session_id) {
            return Err(TokenError::Revoked);
        }
        Ok(AccessClaims {
            user_id,
            session_id,
            roles,
            expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AccessTokens {
        AccessTokens::generate("selfie-test", Duration::from_secs(900)).expect("key")
    }

    #[test]
    fn an_issued_token_verifies_to_its_claims() {
        let t = tokens();
        let token = t.issue(42, 7, &["moderator".into()]).expect("issued");
        assert!(token.starts_with("v4.public."));
        let claims = t.verify(&token).expect("verifies");
        assert_eq!(
            (claims.user_id, claims.session_id, claims.roles),
            (42, 7, vec!["moderator".to_string()])
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let ttl = 900_000;
        assert!(
            (now + ttl - 5_000..=now + ttl + 1_000).contains(&claims.expires_at_ms),
            "{} vs {}",
            claims.expires_at_ms,
            now + ttl
        );
    }

    #[test]
    fn a_tampered_token_is_invalid() {
        let t = tokens();
        let token = t.issue(42, 7, &[]).expect("issued");
        // Flip one character of the payload/signature.
        let mut bytes = token.into_bytes();
        let i = bytes.len() - 10;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(t.verify(&tampered), Err(TokenError::Invalid));
        assert_eq!(t.verify("not a token"), Err(TokenError::Invalid));
        assert_eq!(t.verify(""), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_from_another_key_or_issuer_is_invalid() {
        let t = tokens();
        let other_key = tokens();
        let token = other_key.issue(1, 1, &[]).expect("issued");
        assert_eq!(t.verify(&token), Err(TokenError::Invalid));
        let other_issuer = AccessTokens::from_secret_key(
            t.secret.as_bytes(),
            "elsewhere",
            Duration::from_secs(60),
        )
        .expect("key");
        let token = other_issuer.issue(1, 1, &[]).expect("issued");
        assert_eq!(t.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_says_so() {
        let t = tokens();
        // A validly signed token whose validity period is over (2025-01-01, 15 minutes).
        let token = t
            .issue_valid_between(1, 1, &[], 1_735_689_600, 1_735_690_500)
            .expect("issued");
        assert_eq!(t.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn a_revoked_session_is_refused_at_once() {
        let t = tokens();
        let token = t.issue(5, 99, &[]).expect("issued");
        assert!(t.verify(&token).is_ok());
        t.revoked().revoke(99);
        assert_eq!(t.verify(&token), Err(TokenError::Revoked));
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let t = tokens();
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
