//! Password reset by e-mail: a single-use code, valid for
//! [`RESET_TTL`](crate::tables::auth::RESET_TTL), mailed to the account's verified
//! address. Starting a reset answers the same whether or not the address has an account
//! (nothing to enumerate) and costs the same storage work; the code is stored as a keyed
//! hash; requests are throttled per address and per e-mail, and code attempts like
//! logins (per account, by user id), on the node and the fleet.

use selfie_storage::Store;
use subtle::ConstantTimeEq;

use super::accounts::{Accounts, typed_code, valid_email};
use super::mail::Mail;
use super::throttle::{account_key, unknown_key};
use crate::tables::auth::RESETS;
use crate::tables::key as key_u64;
use crate::{Error, Result};

impl<S: Store> Accounts<S> {
    /// Starts a password reset for the account with `email`: a single-use code, valid for
    /// [`RESET_TTL`](crate::tables::auth::RESET_TTL), is mailed to that address. The
    /// answer is the same whether or not the address belongs to an account (nothing to
    /// enumerate), and the mail goes out after the answer; unknown addresses cost the
    /// same storage work (no timing difference). Throttled per address and per e-mail,
    /// on this node and the fleet; the two most recent codes work.
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
        self.check_key(&key, ip).await?;
        // Every request counts towards the lockout, so codes cannot be requested in bulk.
        self.note_attempt(&key, false).await;
        let account = self
            .account_by_identifier(email)
            .await?
            .map(|v| v.account)
            .filter(|a| !a.deleted && a.email.eq_ignore_ascii_case(email));
        // The same storage work with or without an account (user 0 is nobody), so the
        // answer's timing tells nothing either.
        let user_id = account.as_ref().map_or(0, |a| a.user_id);
        let code = typed_code();
        let fresh = self.code_hash("reset", user_id, &code);
        // The new code and the one before it both work (a request by someone else cannot
        // void a code the owner is about to type). Written over exactly what was read, so
        // a code spent meanwhile by a finished reset never comes back.
        let mut stored = false;
        for _ in 0..8 {
            let previous = self.store.get(&RESETS, &key_u64(user_id), &[]).await?;
            let mut hashes = fresh.to_vec();
            if let Some(p) = previous.as_deref().and_then(|p| p.get(..32)) {
                hashes.extend_from_slice(p);
            }
            let k = key_u64(user_id);
            stored = match &previous {
                None => {
                    self.store
                        .insert_if_absent(&RESETS, &k, &[], &hashes, None)
                        .await?
                }
                Some(p) => {
                    self.store
                        .compare_and_set(&RESETS, &k, &[], p, Some(&hashes), None)
                        .await?
                }
            };
            if stored {
                break;
            }
        }
        if !stored {
            return Err(Error::Busy);
        }
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
    /// out every session and clears login lockouts. Wrong codes count like failed logins
    /// of the account.
    pub async fn password_reset_finish(
        &self,
        email: &str,
        code: &str,
        new_password: String,
        ip: std::net::IpAddr,
    ) -> Result<()> {
        self.throttle
            .check_address(ip, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        let account = self
            .account_by_identifier(email)
            .await?
            .map(|v| v.account)
            .filter(|a| !a.deleted && a.email.eq_ignore_ascii_case(email));
        let user_id = account.as_ref().map_or(0, |a| a.user_id);
        let key = match &account {
            Some(a) => account_key(a.user_id),
            None => unknown_key(email),
        };
        self.check_key(&key, ip).await?;
        let stored = self.store.get(&RESETS, &key_u64(user_id), &[]).await?;
        let presented = self.code_hash("reset", user_id, &code.trim().to_ascii_uppercase());
        let matches = stored.as_deref().is_some_and(|s| {
            s.chunks(32).fold(false, |hit, h| {
                hit | bool::from(h.ct_eq(presented.as_slice()))
            })
        });
        let (Some(account), true) = (account, matches) else {
            self.note_attempt(&key, false).await;
            return Err(Error::InvalidCredentials);
        };
        // The new password is checked and hashed before the code is spent, so a refused
        // password or a busy hasher leaves the code usable.
        let hash = self.hasher.hash(new_password).await?;
        // Single use: whoever removes the codes first is the one reset.
        let Some(stored) = stored else {
            return Err(Error::InvalidCredentials);
        };
        if !self
            .store
            .compare_and_set(&RESETS, &key_u64(account.user_id), &[], &stored, None, None)
            .await?
        {
            return Err(Error::InvalidCredentials);
        }
        // The new hash first, then every session goes: a login racing the reset either
        // sees the new hash and gives way, or has its session swept.
        self.update(account.user_id, |a| {
            a.password_hash = hash.clone();
            Ok(())
        })
        .await?;
        self.revoke_all(account.user_id).await?;
        self.note_attempt(&key, true).await;
        Ok(())
    }
}
