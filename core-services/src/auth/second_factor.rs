//! Re-authentication and the TOTP second factor: enrolment (confirmed by a first code,
//! which also hands out single-use recovery codes), disabling it, and regenerating the
//! recovery codes. Sensitive changes re-check the password, and the second factor when
//! one is enabled; every such check is throttled per account like a login (a stolen
//! session cannot guess the password, nor, with it, the code: a lockout is cleared only
//! when every factor the account has passed), and every change is a compare-and-set of
//! the account record.

use selfie_storage::Store;

use super::accounts::{Accounts, SecondFactor, Versioned};
use super::throttle::account_key;
use super::totp;
use crate::{Error, Result};

impl<S: Store> Accounts<S> {
    /// Checks the password (throttled per account). A failure is recorded; a success is
    /// not yet: the caller records it once every factor has passed.
    async fn check_password(&self, user_id: u64, password: String) -> Result<Versioned> {
        let key = account_key(user_id);
        self.check_account(&key).await?;
        let current = self.load(user_id).await?;
        let hash = current.account.password_hash.clone();
        let ok = !current.account.deleted && self.hasher.verify(password, Some(hash)).await?;
        if !ok {
            self.note_attempt(&key, false).await;
            return Err(Error::InvalidCredentials);
        }
        Ok(current)
    }

    /// Re-authentication with the password only. The success clears the account's
    /// lockout only when the account has no confirmed second factor: otherwise the
    /// password alone is not every factor, and clearing would let a caller who has the
    /// password reset the count of guessed codes between guesses.
    pub(super) async fn reauthenticate(&self, user_id: u64, password: String) -> Result<Versioned> {
        let checked = self.check_password(user_id, password).await?;
        let two_factors = checked
            .account
            .second_factor
            .as_ref()
            .is_some_and(|sf| sf.confirmed);
        if two_factors {
            self.throttle.abandon(&account_key(user_id));
        } else {
            self.note_attempt(&account_key(user_id), true).await;
        }
        Ok(checked)
    }

    /// Re-authentication with the second factor too, when the account has one (a TOTP
    /// code or a recovery code, spent in the returned record: the caller saves it with
    /// compare-and-set, so it is spent once).
    pub(super) async fn reauthenticate_fully(
        &self,
        user_id: u64,
        password: String,
        code: Option<&str>,
    ) -> Result<Versioned> {
        let key = account_key(user_id);
        let mut checked = self.check_password(user_id, password).await?;
        if let Some(sf) = checked
            .account
            .second_factor
            .as_mut()
            .filter(|sf| sf.confirmed)
        {
            let Some(code) = code else {
                self.throttle.abandon(&key);
                return Err(Error::SecondFactorRequired);
            };
            if !self.second_factor_passes(sf, user_id, Some(code), None) {
                self.note_attempt(&key, false).await;
                return Err(Error::SecondFactorInvalid);
            }
        }
        self.note_attempt(&key, true).await;
        Ok(checked)
    }

    /// Writes a re-authenticated record back; `Busy` if it changed meanwhile.
    async fn save_checked(&self, checked: &Versioned) -> Result<()> {
        if self
            .save_if_unchanged(&checked.bytes, &checked.account)
            .await?
        {
            Ok(())
        } else {
            Err(Error::Busy)
        }
    }

    /// Starts TOTP enrolment (after re-entering the password): returns the `otpauth://`
    /// URI and the base32 secret. Nothing is required at login until it is confirmed.
    pub async fn totp_enrol(
        &self,
        user_id: u64,
        password: String,
        issuer: &str,
    ) -> Result<(String, String)> {
        let mut checked = self.reauthenticate(user_id, password).await?;
        let account = &mut checked.account;
        if account
            .second_factor
            .as_ref()
            .is_some_and(|sf| sf.confirmed)
        {
            return Err(Error::SecondFactorState);
        }
        let secret = totp::new_secret();
        let (uri, b32) = totp::enrolment(&secret, issuer, &account.username)
            .map_err(|_| Error::Corrupt("account"))?;
        account.second_factor = Some(SecondFactor {
            secret,
            confirmed: false,
            last_step: None,
            recovery: Vec::new(),
        });
        self.save_checked(&checked).await?;
        Ok((uri, b32))
    }

    /// New recovery codes for `user_id`: the codes to show once, and their keyed hashes.
    fn new_recovery_codes(&self, user_id: u64) -> (Vec<String>, Vec<[u8; 32]>) {
        let codes = totp::recovery_codes();
        let hashes = codes
            .iter()
            .map(|c| self.code_hash("recovery", user_id, &totp::normalize_recovery_code(c)))
            .collect();
        (codes, hashes)
    }

    /// Confirms enrolment with a first code; returns the recovery codes (shown once).
    /// Wrong codes count as failed credential checks.
    pub async fn totp_confirm(&self, user_id: u64, code: &str) -> Result<Vec<String>> {
        let key = account_key(user_id);
        self.check_account(&key).await?;
        let mut current = self.load(user_id).await?;
        let now = self.clock.now_ms() / 1000;
        let sf = current
            .account
            .second_factor
            .as_mut()
            .filter(|sf| !sf.confirmed)
            .ok_or(Error::SecondFactorState)?;
        let Ok(step) = totp::verify(&sf.secret, code, now, sf.last_step) else {
            self.note_attempt(&key, false).await;
            return Err(Error::SecondFactorInvalid);
        };
        let (codes, hashes) = self.new_recovery_codes(user_id);
        sf.confirmed = true;
        sf.last_step = Some(step);
        sf.recovery = hashes;
        self.save_checked(&current).await?;
        self.note_attempt(&key, true).await;
        Ok(codes)
    }

    /// Turns the second factor off: needs the password and a current code (or a
    /// recovery code).
    pub async fn totp_disable(&self, user_id: u64, password: String, code: &str) -> Result<()> {
        let mut checked = self
            .reauthenticate_fully(user_id, password, Some(code))
            .await?;
        if !checked
            .account
            .second_factor
            .as_ref()
            .is_some_and(|sf| sf.confirmed)
        {
            return Err(Error::SecondFactorState);
        }
        checked.account.second_factor = None;
        self.save_checked(&checked).await
    }

    /// Replaces every recovery code with a fresh set (shown once): needs the password and
    /// a current code (or one of the old recovery codes).
    pub async fn regenerate_recovery_codes(
        &self,
        user_id: u64,
        password: String,
        code: &str,
    ) -> Result<Vec<String>> {
        let mut checked = self
            .reauthenticate_fully(user_id, password, Some(code))
            .await?;
        let (codes, hashes) = self.new_recovery_codes(user_id);
        let sf = checked
            .account
            .second_factor
            .as_mut()
            .filter(|sf| sf.confirmed)
            .ok_or(Error::SecondFactorState)?;
        sf.recovery = hashes;
        self.save_checked(&checked).await?;
        Ok(codes)
    }
}
