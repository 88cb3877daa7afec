//! Accounts: registration, login, refresh-token rotation, logout and sessions, over the
//! storage traits.
//!
//! - Usernames and e-mail addresses are claimed with `insert_if_absent`, so no race can
//!   give one name two owners (on the CQL backend this is a lightweight transaction).
//! - Login checks the password with Argon2id off the shard threads; an unknown account and
//!   a wrong password cost the same time and give the same error.
//! - A login creates a session (device) with a refresh-token *family*. Refreshing spends
//!   the presented token (claimed once, again with `insert_if_absent`) and returns a new
//!   one; presenting an already spent token means it was stolen or replayed, so the whole
//!   session is revoked (its access tokens stop verifying at once).
//! - Refresh tokens are 256-bit random strings; only their SHA-256 is stored.
//!
//! - Logins are throttled per address and per account ([`LoginThrottle`]); accounts with
//!   a confirmed TOTP second factor need a current code or a single-use recovery code.
//!
//! - Password change and account deletion re-authenticate (password, and the second
//!   factor when enrolled: `second_factor`); password reset by e-mail lives in `reset`.
//!   E-mail verification is not built yet (the protocol has no resend operation).

use std::sync::Arc;

use bytes::Bytes;
use selfie_storage::id::IdGenerator;
use selfie_storage::{Clock, Scan, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mail::Mailer;
use super::password::PasswordHasher;
use super::throttle::LoginThrottle;
use super::tokens::AccessTokens;
use super::totp;
use crate::tables::auth::*;
pub use crate::tables::auth::{REFRESH_TTL, RESET_TTL};
use crate::tables::{decode, encode, id_value, key as key_u64, name_key as key_str};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Account {
    pub(super) user_id: u64,
    pub(super) username: String,
    pub(super) email: String,
    pub(super) password_hash: String,
    pub(super) created_at_ms: u64,
    #[serde(default)]
    pub(super) second_factor: Option<SecondFactor>,
    /// Deleted accounts keep their username reserved (no impersonation by
    /// re-registration) and nothing else.
    #[serde(default)]
    pub(super) deleted: bool,
}

/// TOTP state of an account: pending until the first code confirms it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SecondFactor {
    pub(super) secret: Vec<u8>,
    pub(super) confirmed: bool,
    pub(super) last_step: Option<u64>,
    pub(super) recovery: Vec<[u8; 32]>,
}

/// A login session (device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub session_id: u64,
    /// Device name given at login.
    pub device_name: String,
    /// When it was created.
    pub created_at_ms: u64,
    /// Last refresh.
    pub last_seen_at_ms: u64,
    /// Revoked sessions stay listed until they expire, marked.
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshRecord {
    user_id: u64,
    session_id: u64,
}

/// Tokens handed to a client after register, login or refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedTokens {
    /// The user.
    pub user_id: u64,
    /// The session.
    pub session_id: u64,
    /// Short-lived access token (PASETO).
    pub access_token: String,
    /// Long-lived, single-use refresh token.
    pub refresh_token: String,
}

/// The accounts service of one shard.
pub struct Accounts<S> {
    pub(super) store: S,
    pub(super) tokens: AccessTokens,
    pub(super) hasher: PasswordHasher,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) ids: std::cell::RefCell<IdGenerator>,
    pub(super) throttle: LoginThrottle,
    pub(super) mailer: Option<Arc<dyn Mailer>>,
}

pub(super) fn sha256(token: &str) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(token.as_bytes()))
}

fn valid_username(u: &str) -> bool {
    (3..=30).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && u.as_bytes()[0].is_ascii_alphanumeric()
}

pub(super) fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !e.contains(char::is_whitespace)
        })
}

impl<S: Store> Accounts<S> {
    /// The service for one shard (`node`, `shard` make its ids unique). `throttle` is
    /// the node's login throttle: one instance shared by every shard, so that an attacker
    /// gains nothing by spreading guesses over connections.
    pub fn new(
        store: S,
        tokens: AccessTokens,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        node: u16,
        shard: u16,
        throttle: LoginThrottle,
    ) -> Result<Self> {
        let ids =
            IdGenerator::new(node, shard).map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            tokens,
            hasher,
            clock,
            ids: std::cell::RefCell::new(ids),
            throttle,
            mailer: None,
        })
    }

    /// Sends password-reset codes through `mailer` (without one, resets are unavailable).
    pub fn with_mailer(mut self, mailer: Arc<dyn Mailer>) -> Self {
        self.mailer = Some(mailer);
        self
    }

    fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next(self.clock.now_ms()).0
    }

    /// Creates an account and signs it in on `device_name`.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: String,
        device_name: &str,
    ) -> Result<IssuedTokens> {
        if !valid_username(username) {
            return Err(Error::InvalidArgument { field: "username" });
        }
        if !valid_email(email) {
            return Err(Error::InvalidArgument { field: "email" });
        }
        let password_hash = self.hasher.hash(password).await?;
        let user_id = self.next_id();
        let id_bytes = user_id.to_be_bytes();
        if !self
            .store
            .insert_if_absent(
                &USERNAMES,
                &key_str(&username.to_ascii_lowercase()),
                &[],
                &id_bytes,
                None,
            )
            .await?
        {
            return Err(Error::Taken { field: "username" });
        }
        if !self
            .store
            .insert_if_absent(
                &EMAILS,
                &key_str(&email.to_ascii_lowercase()),
                &[],
                &id_bytes,
                None,
            )
            .await?
        {
            // Give the username back.
            self.store
                .delete(&USERNAMES, &key_str(&username.to_ascii_lowercase()), &[])
                .await?;
            return Err(Error::Taken { field: "email" });
        }
        let account = Account {
            user_id,
            username: username.to_string(),
            email: email.to_string(),
            password_hash,
            created_at_ms: self.clock.now_ms(),
            second_factor: None,
            deleted: false,
        };
        let record = encode("account", &account)?;
        self.store
            .put(&ACCOUNTS, &key_u64(user_id), &[], &record, None)
            .await?;
        self.open_session(user_id, device_name).await
    }

    pub(super) async fn account_by_identifier(&self, identifier: &str) -> Result<Option<Account>> {
        let lower = identifier.to_ascii_lowercase();
        let table = if lower.contains('@') {
            &EMAILS
        } else {
            &USERNAMES
        };
        let Some(id) = self.store.get(table, &key_str(&lower), &[]).await? else {
            return Ok(None);
        };
        let id = id_value(&id).ok_or(Error::Corrupt("account"))?;
        let Some(record) = self.store.get(&ACCOUNTS, &key_u64(id), &[]).await? else {
            return Ok(None);
        };
        decode("account", &record).map(Some)
    }

    /// Signs in with a username or e-mail and a password, from address `ip` (throttled
    /// per address and per account, see [`LoginThrottle`]).
    pub async fn login(
        &self,
        identifier: &str,
        password: String,
        device_name: &str,
        ip: std::net::IpAddr,
    ) -> Result<IssuedTokens> {
        self.login_with_second_factor(identifier, password, None, None, device_name, ip)
            .await
    }

    /// [`Accounts::login`] for accounts with a second factor: a current TOTP code, or a
    /// single-use recovery code. Without either, a right password gives
    /// `SecondFactorRequired` (only after the password matched, so 2FA status leaks to no
    /// one without the password).
    pub async fn login_with_second_factor(
        &self,
        identifier: &str,
        password: String,
        totp_code: Option<&str>,
        recovery_code: Option<&str>,
        device_name: &str,
        ip: std::net::IpAddr,
    ) -> Result<IssuedTokens> {
        let key = identifier.to_ascii_lowercase();
        self.throttle
            .check(&key, ip, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        if let Some(fleet) = self.throttle.fleet() {
            fleet.check(&key, ip).await.map_err(Error::Throttled)?;
        }
        let account = self
            .account_by_identifier(identifier)
            .await?
            .filter(|a| !a.deleted);
        let stored = account.as_ref().map(|a| a.password_hash.clone());
        // Same Argon2 work whether or not the account exists.
        let ok = self.hasher.verify(password, stored).await? && account.is_some();
        let Some(mut account) = account.filter(|_| ok) else {
            self.note_attempt(&key, false).await;
            return Err(Error::InvalidCredentials);
        };
        if let Some(sf) = account.second_factor.as_mut().filter(|sf| sf.confirmed) {
            let passed = match (totp_code, recovery_code) {
                (Some(code), _) => {
                    match totp::verify(&sf.secret, code, self.clock.now_ms() / 1000, sf.last_step) {
                        Ok(step) => {
                            sf.last_step = Some(step);
                            true
                        }
                        Err(_) => false,
                    }
                }
                (None, Some(code)) => totp::use_recovery_code(&mut sf.recovery, code).is_ok(),
                (None, None) => {
                    // Not a failed guess: the password was right.
                    return Err(Error::SecondFactorRequired);
                }
            };
            self.note_attempt(&key, passed).await;
            if !passed {
                return Err(Error::SecondFactorInvalid);
            }
            // The used step / recovery code is spent for good.
            self.save(&account).await?;
        } else {
            self.note_attempt(&key, true).await;
        }
        self.open_session(account.user_id, device_name).await
    }

    /// Records a login attempt's outcome with the node's throttle and the fleet's.
    pub(super) async fn note_attempt(&self, key: &str, success: bool) {
        self.throttle.record(key, success, self.clock.now_ms());
        if let Some(fleet) = self.throttle.fleet() {
            fleet.record(key, success).await;
        }
    }

    pub(super) async fn load(&self, user_id: u64) -> Result<Account> {
        let record = self
            .store
            .get(&ACCOUNTS, &key_u64(user_id), &[])
            .await?
            .ok_or(Error::InvalidCredentials)?;
        decode("account", &record)
    }

    pub(super) async fn save(&self, account: &Account) -> Result<()> {
        let record = encode("account", account)?;
        self.store
            .put(&ACCOUNTS, &key_u64(account.user_id), &[], &record, None)
            .await?;
        Ok(())
    }

    /// Changes the password (current password, and second factor when enabled) and
    /// signs out every other session.
    pub async fn change_password(
        &self,
        user_id: u64,
        session_id: u64,
        current: String,
        new: String,
        code: Option<&str>,
    ) -> Result<usize> {
        PasswordHasher::check_policy(&new)?;
        let mut account = self.reauthenticate_fully(user_id, current, code).await?;
        account.password_hash = self.hasher.hash(new).await?;
        self.save(&account).await?;
        self.revoke_others(user_id, session_id).await
    }

    /// Deletes the account (password, and second factor when enabled): every session is
    /// revoked, credentials and e-mail are erased (the address may register again), the
    /// username stays reserved so that no one can impersonate the former owner.
    pub async fn delete_account(
        &self,
        user_id: u64,
        password: String,
        code: Option<&str>,
    ) -> Result<()> {
        self.confirm_deletion(user_id, password, code).await?;
        self.erase(user_id).await
    }

    /// The first step of a deletion: the owner proves it is them (password and, when
    /// enrolled, a second factor). The caller then removes the user's data from the
    /// other services and finishes with [`Accounts::erase`]; until then the account
    /// and its sessions stay, so a deletion interrupted by a failure can be retried.
    pub async fn confirm_deletion(
        &self,
        user_id: u64,
        password: String,
        code: Option<&str>,
    ) -> Result<()> {
        self.reauthenticate_fully(user_id, password, code)
            .await
            .map(|_| ())
    }

    /// The last step of a deletion: every session is revoked, the e-mail, password and
    /// second factor are erased; the username stays reserved.
    pub async fn erase(&self, user_id: u64) -> Result<()> {
        let mut account = self.load(user_id).await?;
        for s in self.sessions(user_id).await? {
            if !s.revoked {
                self.revoke(user_id, s.session_id).await?;
            }
        }
        self.store
            .delete(&EMAILS, &key_str(&account.email.to_ascii_lowercase()), &[])
            .await?;
        account.deleted = true;
        account.email = String::new();
        account.password_hash = String::new();
        account.second_factor = None;
        self.save(&account).await
    }

    async fn open_session(&self, user_id: u64, device_name: &str) -> Result<IssuedTokens> {
        let session_id = self.next_id();
        let now = self.clock.now_ms();
        let session = Session {
            session_id,
            device_name: device_name.chars().take(64).collect(),
            created_at_ms: now,
            last_seen_at_ms: now,
            revoked: false,
        };
        let record = encode("session", &session)?;
        self.store
            .put(
                &SESSIONS,
                &key_u64(user_id),
                &key_u64(session_id),
                &record,
                None,
            )
            .await?;
        self.issue(user_id, session_id).await
    }

    async fn issue(&self, user_id: u64, session_id: u64) -> Result<IssuedTokens> {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let refresh_token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let record = encode(
            "refresh token",
            &RefreshRecord {
                user_id,
                session_id,
            },
        )?;
        self.store
            .put(&REFRESH_TOKENS, &sha256(&refresh_token), &[], &record, None)
            .await?;
        Ok(IssuedTokens {
            user_id,
            session_id,
            access_token: self.tokens.issue(user_id, session_id, &[])?,
            refresh_token,
        })
    }

    async fn session(&self, user_id: u64, session_id: u64) -> Result<Option<Session>> {
        match self
            .store
            .get(&SESSIONS, &key_u64(user_id), &key_u64(session_id))
            .await?
        {
            Some(r) => decode("session", &r).map(Some),
            None => Ok(None),
        }
    }

    /// Spends a refresh token and returns new tokens for the same session. A token that
    /// was already spent revokes the session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        let hash = sha256(refresh_token);
        let record = self
            .store
            .get(&REFRESH_TOKENS, &hash, &[])
            .await?
            .ok_or(Error::TokenInvalid)?;
        let r: RefreshRecord = decode("account", &record)?;
        let session = self
            .session(r.user_id, r.session_id)
            .await?
            .ok_or(Error::TokenInvalid)?;
        if session.revoked {
            return Err(Error::SessionRevoked);
        }
        // Exactly one use: whoever claims the spent marker first may rotate.
        if !self
            .store
            .insert_if_absent(&REFRESH_SPENT, &hash, &[], b"", None)
            .await?
        {
            self.revoke(r.user_id, r.session_id).await?;
            return Err(Error::TokenReused);
        }
        let mut session = session;
        session.last_seen_at_ms = self.clock.now_ms();
        let bytes = encode("session", &session)?;
        self.store
            .put(
                &SESSIONS,
                &key_u64(r.user_id),
                &key_u64(r.session_id),
                &bytes,
                None,
            )
            .await?;
        self.issue(r.user_id, r.session_id).await
    }

    /// Revokes one session of `user_id`: its refresh tokens stop working and its access
    /// tokens stop verifying at once.
    pub async fn revoke(&self, user_id: u64, session_id: u64) -> Result<()> {
        let mut session = self
            .session(user_id, session_id)
            .await?
            .ok_or(Error::NotFound("session"))?;
        session.revoked = true;
        let bytes = encode("session", &session)?;
        self.store
            .put(
                &SESSIONS,
                &key_u64(user_id),
                &key_u64(session_id),
                &bytes,
                None,
            )
            .await?;
        self.tokens.revoked().revoke(session_id);
        Ok(())
    }

    /// Revokes every session of `user_id` except `keep`.
    pub async fn revoke_others(&self, user_id: u64, keep: u64) -> Result<usize> {
        let mut n = 0;
        for s in self.sessions(user_id).await? {
            if s.session_id != keep && !s.revoked {
                self.revoke(user_id, s.session_id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The sessions of `user_id`, oldest first.
    pub async fn sessions(&self, user_id: u64) -> Result<Vec<Session>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&SESSIONS, &key_u64(user_id), &Scan::all(200).after(cursor))
                .await?;
            for row in &page.rows {
                out.push(decode("session", &row.value)?);
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }
}
