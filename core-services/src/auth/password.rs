//! Password hashing: Argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane), on a
//! bounded blocking pool so that the tens of milliseconds each hash takes never stall a
//! shard's event loop.
//!
//! Verifying against an unknown account runs the same Argon2 computation on a dummy hash,
//! so "no such user" and "wrong password" take the same time; callers return one error
//! for both. Comparisons of hash outputs are constant-time (`password-hash`'s `Output`).

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// Shortest accepted password (NIST SP 800-63B: at least 8).
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest accepted password; bounds the work an attacker can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Password errors. None of them contains the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Shorter than [`MIN_PASSWORD_BYTES`].
    #[error("password too short (at least {MIN_PASSWORD_BYTES} bytes)")]
    TooShort,
    /// Longer than [`MAX_PASSWORD_BYTES`].
    #[error("password too long (at most {MAX_PASSWORD_BYTES} bytes)")]
    TooLong,
    /// Every hashing slot stayed busy for the whole wait: shed load.
    #[error("password hashing is overloaded")]
    Overloaded,
    /// A stored hash is not a valid PHC string.
    #[error("stored password hash is corrupt")]
    CorruptHash,
    /// The hashing task failed.
    #[error("password hashing failed")]
    Internal,
}

/// A random 128-bit salt (from the OS generator, through `rand`).
fn new_salt() -> Result<SaltString, PasswordError> {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    SaltString::encode_b64(&bytes).map_err(|_| PasswordError::Internal)
}

/// Hashes and verifies passwords on a bounded pool.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    wait: Duration,
    dummy: Arc<String>,
}

impl PasswordHasher {
    /// OWASP parameters, at most `max_parallel` hashes at once; callers wait up to
    /// `wait` for a slot.
    pub fn new(max_parallel: usize, wait: Duration) -> Result<Self, PasswordError> {
        let params = Params::new(19 * 1024, 2, 1, None).map_err(|_| PasswordError::Internal)?;
        Self::with_params(params, max_parallel, wait)
    }

    /// Custom Argon2 parameters (tests use cheaper ones).
    pub fn with_params(
        params: Params,
        max_parallel: usize,
        wait: Duration,
    ) -> Result<Self, PasswordError> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let salt = new_salt()?;
        let dummy = argon
            .hash_password(b"selfie dummy password for unknown accounts", &salt)
            .map_err(|_| PasswordError::Internal)?
            .to_string();
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(max_parallel.max(1))),
            wait,
            dummy: Arc::new(dummy),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Checks the length policy.
    pub fn check_policy(password: &str) -> Result<(), PasswordError> {
        match password.len() {
            n if n < MIN_PASSWORD_BYTES => Err(PasswordError::TooShort),
            n if n > MAX_PASSWORD_BYTES => Err(PasswordError::TooLong),
            _ => Ok(()),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Overloaded)?
            .map_err(|_| PasswordError::Internal)?;
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|_| PasswordError::Internal)
    }

    /// Hashes a new password (after the policy check); returns a PHC string with its
    /// own random salt.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        Self::check_policy(&password)?;
        let argon = self.argon();
        self.run(move || {
            let salt = new_salt()?;
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| PasswordError::Internal)
        })
        .await?
    }

    /// Whether `password` matches `stored` (a PHC string). With `stored = None` (no such
    /// account) the same work is done against a dummy hash and the answer is `false`.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy.as_str().to_string());
        // Over-long input is refused before hashing, but only after the same wait for
        // a slot, so that its timing tells nothing either.
        let too_long = password.len() > MAX_PASSWORD_BYTES;
        let argon = self.argon();
        let matched = self
            .run(move || {
                let hash = PasswordHash::new(&stored).map_err(|_| PasswordError::CorruptHash)?;
                let input: &[u8] = if too_long { b"" } else { password.as_bytes() };
                Ok::<_, PasswordError>(argon.verify_password(input, &hash).is_ok())
            })
            .await??;
        Ok(known && matched && !too_long)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        // Same algorithm, tiny cost: these tests check behaviour, not strength.
        PasswordHasher::with_params(
            Params::new(64, 1, 1, None).expect("params"),
            2,
            Duration::from_secs(5),
        )
        .expect("hasher")
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_own_hash_only() {
        let h = cheap();
        let stored = h
            .hash("correct horse battery".into())
            .await
            .expect("hashed");
        assert!(stored.starts_with("$argon2id$v=19$"));
        assert!(
            h.verify("correct horse battery".into(), Some(stored.clone()))
                .await
                .expect("ok")
        );
        assert!(
            !h.verify("correct horse battery!".into(), Some(stored.clone()))
                .await
                .expect("ok")
        );
        // Salted: the same password hashes differently each time.
        assert_ne!(
            stored,
            h.hash("correct horse battery".into())
                .await
                .expect("hashed")
        );
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let h = cheap();
        assert!(!h.verify("whatever1234".into(), None).await.expect("ok"));
    }

    #[tokio::test]
    async fn the_length_policy_is_enforced() {
        let h = cheap();
        assert_eq!(h.hash("short".into()).await, Err(PasswordError::TooShort));
        assert_eq!(
            h.hash("x".repeat(MAX_PASSWORD_BYTES + 1)).await,
            Err(PasswordError::TooLong)
        );
        let stored = h.hash("long enough".into()).await.expect("hashed");
        assert!(
            !h.verify("x".repeat(MAX_PASSWORD_BYTES + 1), Some(stored))
                .await
                .expect("ok")
        );
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_a_typed_error() {
        let h = cheap();
        assert_eq!(
            h.verify("long enough".into(), Some("not a phc string".into()))
                .await,
            Err(PasswordError::CorruptHash)
        );
    }

    #[tokio::test]
    async fn the_owasp_parameters_are_the_default() {
        let h = PasswordHasher::new(1, Duration::from_secs(30)).expect("hasher");
        let stored = h
            .hash("correct horse battery".into())
            .await
            .expect("hashed");
        assert!(stored.contains("m=19456,t=2,p=1"), "{stored}");
    }

    #[tokio::test]
    async fn a_saturated_pool_sheds_load_instead_of_queueing_forever() {
        let h = PasswordHasher::with_params(
            Params::new(64, 1, 1, None).expect("params"),
            1,
            Duration::from_millis(1),
        )
        .expect("hasher");
        let permit = h.permits.clone().acquire_owned().await.expect("permit");
        assert_eq!(
            h.hash("long enough".into()).await,
            Err(PasswordError::Overloaded)
        );
        drop(permit);
        assert!(h.hash("long enough".into()).await.is_ok());
    }
}
