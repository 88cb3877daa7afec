//! The edge's `Authenticator` over the accounts service's access tokens: `Hello` carries a
//! PASETO token that is verified here, in memory, on the shard that received it.

use std::path::Path;
use std::time::Duration;

use selfie_protocol::ErrorCode;
use selfie_services::auth::tokens::{AccessTokens, TokenError};

use crate::config::AuthConfig;
use crate::session::{Authenticator, Principal};

/// Verifies access tokens minted by the accounts service.
#[derive(Debug, Clone)]
pub struct TokenAuthenticator {
    tokens: AccessTokens,
}

impl TokenAuthenticator {
    /// Over `tokens` (the same key the accounts service signs with).
    pub fn new(tokens: AccessTokens) -> Self {
        Self { tokens }
    }

    /// The token service (to mint tokens in the same process, and to revoke sessions).
    pub fn tokens(&self) -> &AccessTokens {
        &self.tokens
    }
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&self, token: &str) -> Result<Principal, ErrorCode> {
        self.authenticate_until(token).map(|(p, _)| p)
    }

    fn is_revoked(&self, session_id: u64) -> bool {
        self.tokens.revoked().contains(session_id)
    }

    fn authenticate_until(&self, token: &str) -> Result<(Principal, Option<u64>), ErrorCode> {
        match self.tokens.verify(token) {
            Ok(c) => Ok((
                Principal {
                    user_id: c.user_id,
                    session_id: c.session_id,
                    roles: c.roles,
                },
                Some(c.expires_at_ms),
            )),
            Err(TokenError::Expired) => Err(ErrorCode::TokenExpired),
            Err(TokenError::Revoked) => Err(ErrorCode::TokenRevoked),
            Err(TokenError::Invalid | TokenError::Issue) => Err(ErrorCode::TokenInvalid),
        }
    }

    fn revocations(&self) -> Option<tokio::sync::broadcast::Receiver<u64>> {
        Some(self.tokens.revoked().subscribe())
    }
}

/// Loads the token signing key (64 bytes, hex) from `auth.key_file`, or, when none is
/// configured, from `<data_dir>/auth/token-key.hex`, creating it (mode 0600) on first
/// start. Every node of a fleet must share one key file.
pub fn load_tokens(config: &AuthConfig, data_dir: &Path) -> anyhow::Result<AccessTokens> {
    let ttl = Duration::from_secs(config.access_token_ttl_s);
    let path = match &config.key_file {
        Some(p) => p.clone(),
        None => data_dir.join("auth").join("token-key.hex"),
    };
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        let bytes = decode_hex(text.trim())
            .ok_or_else(|| anyhow::anyhow!("{}: not a hex-encoded key", path.display()))?;
        return AccessTokens::from_secret_key(&bytes, &config.issuer, ttl)
            .map_err(|_| anyhow::anyhow!("{}: not an Ed25519 secret key", path.display()));
    }
    if config.key_file.is_some() {
        anyhow::bail!("auth.key_file {} does not exist", path.display());
    }
    let tokens = AccessTokens::generate(&config.issuer, ttl).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::tls::write_private(
        &path,
        crate::tls::hex(&tokens.secret_key_bytes()).as_bytes(),
    )?;
    Ok(tokens)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_then_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = AuthConfig::default();
        let a = load_tokens(&config, dir.path()).expect("created");
        let token = a.issue(1, 2, &[]).expect("issued");
        let b = load_tokens(&config, dir.path()).expect("loaded");
        assert_eq!(b.verify(&token).map(|c| c.user_id), Ok(1));
        let auth = TokenAuthenticator::new(b);
        assert_eq!(auth.authenticate(&token).map(|p| p.session_id), Ok(2));
        assert_eq!(
            auth.authenticate("v4.public.garbage"),
            Err(ErrorCode::TokenInvalid)
        );
    }
}
