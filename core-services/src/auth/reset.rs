//! Password reset by e-mail: a single-use code, valid for
//! [`RESET_TTL`](crate::tables::auth::RESET_TTL), mailed to the
//! account's address. Starting a reset answers the same whether or not the address has
//! an account (nothing to enumerate) and costs the same storage work; the code is hashed
//! at rest; requests and attempts are throttled like logins, on the node and the fleet.

use selfie_storage::Store;
use subtle::ConstantTimeEq;

use super::accounts::{Accounts, sha256, valid_email};
use super::mail::Mail;
use crate::tables::auth::RESETS;
use crate::tables::key as key_u64;
use crate::{Error, Result};

/// A reset code: 10 characters of an unambiguous alphabet (~50 bits), so that with the
/// attempt throttling an online guess is hopeless.
fn reset_code() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

impl<S: Store> Accounts<S> {
    /// Starts a password reset for the account with `email`: a single-use code, valid for
    /// [`RESET_TTL`], is mailed to that address. The answer is the same whether or not
    /// the address belongs to an account (nothing to enumerate), and the mail goes out
    /// after the answer; unknown addresses cost the same storage work (no timing
    /// difference). Throttled per address and per e-mail like logins, on this node and
    /// the fleet; the two most recent codes work.
    pub async fn password_reset_start(&self, email: &str, ip: std::net::IpAddr) -> Result<()> {
        let Some(mailer) = self.mailer.clone() else {
            return Err(Error::Unavailable(
                "password reset (no mail relay configured)",
            ));
        };
        if !valid_email(email) {
            return Err(Error::InvalidArgument { field: "email" });
        }
        // Requests have their own throttle key: asking for codes never locks out the
        // owner's attempts to use one.
        let key = format!("reset-start:{}", email.to_ascii_lowercase());
        self.reset_throttle(&key, ip).await?;
        // Every request counts towards the lockout, so codes cannot be requested in bulk.
        self.note_attempt(&key, false).await;
        let account = self
            .account_by_identifier(email)
            .await?
            .filter(|a| !a.deleted && a.email.eq_ignore_ascii_case(email));
        let code = reset_code();
        // The same storage work with or without an account (user 0 is nobody), so the
        // answer's timing tells nothing either.
        let (user_id, previous) = match &account {
            Some(a) => (
                a.user_id,
                self.store.get(&RESETS, &key_u64(a.user_id), &[]).await?,
            ),
            None => (0, self.store.get(&RESETS, &key_u64(0), &[]).await?),
        };
        // The new code and the one before it both work (a request by someone else cannot
        // void a code the owner is about to type).
        let mut hashes = sha256(&code).to_vec();
        if let Some(p) = previous.as_deref().and_then(|p| p.get(..32)) {
            hashes.extend_from_slice(p);
        }
        self.store
            .put(&RESETS, &key_u64(user_id), &[], &hashes, None)
            .await?;
        let Some(account) = account else {
            return Ok(());
        };
        let mail = Mail {
            to: account.email.clone(),
            subject: "Your Selfie password reset code".into(),
            body: format!(
                "Someone (hopefully you) asked to reset the password of @{}.\n\n\
                 Your code: {code}\n\nIt works once, for 30 minutes. If you did not ask, \
                 ignore this message: your password stays as it is.\n",
                account.username
            ),
        };
        tokio::spawn(async move {
            if let Err(e) = mailer.send(mail).await {
                tracing::warn!(error = %e, "password reset mail not sent");
            }
        });
        Ok(())
    }

    /// Finishes a password reset: the code mailed to `email` sets `new_password`, signs
    /// out every session and clears login lockouts. Wrong codes count like failed logins.
    pub async fn password_reset_finish(
        &self,
        email: &str,
        code: &str,
        new_password: String,
        ip: std::net::IpAddr,
    ) -> Result<()> {
        let key = format!("reset:{}", email.to_ascii_lowercase());
        self.reset_throttle(&key, ip).await?;
        let account = self
            .account_by_identifier(email)
            .await?
            .filter(|a| !a.deleted && a.email.eq_ignore_ascii_case(email));
        let stored = match &account {
            Some(a) => self.store.get(&RESETS, &key_u64(a.user_id), &[]).await?,
            None => None,
        };
        let presented = sha256(&code.trim().to_ascii_uppercase());
        let matches = stored.as_deref().is_some_and(|s| {
            s.chunks(32).fold(false, |hit, h| {
                hit | bool::from(h.ct_eq(presented.as_ref()))
            })
        });
        let (Some(mut account), true) = (account, matches) else {
            self.note_attempt(&key, false).await;
            return Err(Error::InvalidCredentials);
        };
        // The new password is checked and hashed before the code is spent, so a refused
        // password or a busy hasher leaves the code usable.
        let hash = self.hasher.hash(new_password).await?;
        // Single use: whoever deletes the code first is the one reset.
        if !self
            .store
            .delete_if_present(&RESETS, &key_u64(account.user_id), &[])
            .await?
        {
            return Err(Error::InvalidCredentials);
        }
        account.password_hash = hash;
        self.save(&account).await?;
        for s in self.sessions(account.user_id).await? {
            if !s.revoked {
                self.revoke(account.user_id, s.session_id).await?;
            }
        }
        self.note_attempt(&key, true).await;
        self.note_attempt(&account.username.to_ascii_lowercase(), true)
            .await;
        self.note_attempt(&account.email.to_ascii_lowercase(), true)
            .await;
        Ok(())
    }

    /// The node's and the fleet's throttle for a password-reset key.
    async fn reset_throttle(&self, key: &str, ip: std::net::IpAddr) -> Result<()> {
        self.throttle
            .check(key, ip, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        if let Some(fleet) = self.throttle.fleet() {
            fleet.check(key, ip).await.map_err(Error::Throttled)?;
        }
        Ok(())
    }
}
