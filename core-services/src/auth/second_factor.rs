//! Re-authentication and the TOTP second factor: enrolment (confirmed by a first code,
//! which also hands out single-use recovery codes), disabling it, and regenerating the
//! recovery codes. Sensitive changes re-check the password, and the second factor when
//! one is enabled.

use selfie_storage::Store;

use super::accounts::{Account, Accounts, SecondFactor};
use super::totp;
use crate::{Error, Result};

impl<S: Store> Accounts<S> {
    /// Re-authentication for sensitive changes.
    pub(super) async fn reauthenticate(&self, user_id: u64, password: String) -> Result<Account> {
        let account = self.load(user_id).await?;
        if account.deleted
            || !self
                .hasher
                .verify(password, Some(account.password_hash.clone()))
                .await?
        {
            return Err(Error::InvalidCredentials);
        }
        Ok(account)
    }

    /// Re-authentication with the second factor too, when the account has one.
    pub(super) async fn reauthenticate_fully(
        &self,
        user_id: u64,
        password: String,
        code: Option<&str>,
    ) -> Result<Account> {
        let mut account = self.reauthenticate(user_id, password).await?;
        if let Some(sf) = account.second_factor.as_mut().filter(|sf| sf.confirmed) {
            let code = code.ok_or(Error::SecondFactorRequired)?;
            let now = self.clock.now_ms() / 1000;
            match totp::verify(&sf.secret, code, now, sf.last_step) {
                Ok(step) => sf.last_step = Some(step),
                Err(_) => totp::use_recovery_code(&mut sf.recovery, code)
                    .map_err(|_| Error::SecondFactorInvalid)?,
            }
        }
        Ok(account)
    }

    /// Starts TOTP enrolment (after re-entering the password): returns the `otpauth://`
    /// URI and the base32 secret. Nothing is required at login until it is confirmed.
    pub async fn totp_enrol(
        &self,
        user_id: u64,
        password: String,
        issuer: &str,
    ) -> Result<(String, String)> {
        let mut account = self.reauthenticate(user_id, password).await?;
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
        self.save(&account).await?;
        Ok((uri, b32))
    }

    /// Confirms enrolment with a first code; returns the recovery codes (shown once).
    pub async fn totp_confirm(&self, user_id: u64, code: &str) -> Result<Vec<String>> {
        let mut account = self.load(user_id).await?;
        let now = self.clock.now_ms() / 1000;
        let sf = account
            .second_factor
            .as_mut()
            .filter(|sf| !sf.confirmed)
            .ok_or(Error::SecondFactorState)?;
        let step = totp::verify(&sf.secret, code, now, sf.last_step)
            .map_err(|_| Error::SecondFactorInvalid)?;
        let (codes, hashes) = totp::recovery_codes();
        sf.confirmed = true;
        sf.last_step = Some(step);
        sf.recovery = hashes;
        self.save(&account).await?;
        Ok(codes)
    }

    /// Turns the second factor off: needs the password and a current code (or a
    /// recovery code).
    pub async fn totp_disable(&self, user_id: u64, password: String, code: &str) -> Result<()> {
        let mut account = self.reauthenticate(user_id, password).await?;
        let now = self.clock.now_ms() / 1000;
        let sf = account
            .second_factor
            .as_mut()
            .filter(|sf| sf.confirmed)
            .ok_or(Error::SecondFactorState)?;
        let ok = totp::verify(&sf.secret, code, now, sf.last_step).is_ok()
            || totp::use_recovery_code(&mut sf.recovery, code).is_ok();
        if !ok {
            return Err(Error::SecondFactorInvalid);
        }
        account.second_factor = None;
        self.save(&account).await
    }

    /// Replaces every recovery code with a fresh set (shown once): needs the password and
    /// a current code (or one of the old recovery codes).
    pub async fn regenerate_recovery_codes(
        &self,
        user_id: u64,
        password: String,
        code: &str,
    ) -> Result<Vec<String>> {
        let mut account = self
            .reauthenticate_fully(user_id, password, Some(code))
            .await?;
        let sf = account
            .second_factor
            .as_mut()
            .filter(|sf| sf.confirmed)
            .ok_or(Error::SecondFactorState)?;
        let (codes, hashes) = totp::recovery_codes();
        sf.recovery = hashes;
        self.save(&account).await?;
        Ok(codes)
    }
}
