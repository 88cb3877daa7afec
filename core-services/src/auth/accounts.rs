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
//! Not built yet (accounts issue): password change and reset, account deletion, e-mail
//! verification.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Clock, Scan, Store, StoreError, Table, TableKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use subtle::ConstantTimeEq;

use super::mail::{Mail, Mailer};
use super::password::{PasswordError, PasswordHasher};
use super::throttle::{LoginThrottle, Throttled};
use super::tokens::{AccessTokens, TokenError};
use super::totp;

/// `username` (lower case) → user id, claimed once.
pub static USERNAMES: Table = Table {
    name: "auth_usernames",
    kind: TableKind::Rows,
    partition: &["username_lower"],
    clustering: &[],
    default_ttl: None,
    doc: "username claims",
};

/// `email` (lower case) → user id, claimed once.
pub static EMAILS: Table = Table {
    name: "auth_emails",
    kind: TableKind::Rows,
    partition: &["email_lower"],
    clustering: &[],
    default_ttl: None,
    doc: "e-mail claims",
};

/// user id → account record.
pub static ACCOUNTS: Table = Table {
    name: "auth_accounts",
    kind: TableKind::Rows,
    partition: &["user_id"],
    clustering: &[],
    default_ttl: None,
    doc: "accounts (credentials)",
};

/// user id, session id → session record.
pub static SESSIONS: Table = Table {
    name: "auth_sessions",
    kind: TableKind::Rows,
    partition: &["user_id"],
    clustering: &["session_id"],
    default_ttl: None,
    doc: "login sessions (devices)",
};

/// SHA-256 of a refresh token → its session; expires with the token.
pub static REFRESH_TOKENS: Table = Table {
    name: "auth_refresh_tokens",
    kind: TableKind::Rows,
    partition: &["token_sha256"],
    clustering: &[],
    default_ttl: Some(REFRESH_TTL),
    doc: "refresh tokens",
};

/// Spent refresh tokens (claimed once on use).
pub static REFRESH_SPENT: Table = Table {
    name: "auth_refresh_spent",
    kind: TableKind::Rows,
    partition: &["token_sha256"],
    clustering: &[],
    default_ttl: Some(REFRESH_TTL),
    doc: "spent refresh tokens (reuse detection)",
};

/// Every table of the accounts service.
pub static TABLES: &[&Table] = &[
    &USERNAMES,
    &EMAILS,
    &ACCOUNTS,
    &SESSIONS,
    &REFRESH_TOKENS,
    &REFRESH_SPENT,
];

/// Lifetime of a refresh token.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Account errors, each mapping to one protocol error code.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Username or e-mail syntax.
    #[error("invalid {field}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
    },
    /// The username or e-mail is taken.
    #[error("{field} is already taken")]
    Taken {
        /// The field.
        field: &'static str,
    },
    /// Unknown account or wrong password (one error for both).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The password was right; the account needs a TOTP or recovery code too.
    #[error("second factor required")]
    SecondFactorRequired,
    /// Wrong, reused or missing second-factor code.
    #[error("second factor invalid")]
    SecondFactorInvalid,
    /// The operation needs a pending or confirmed second factor that is not there (or
    /// one is already enabled).
    #[error("second factor not in the required state")]
    SecondFactorState,
    /// The refresh token is unknown or expired.
    #[error("refresh token invalid")]
    TokenInvalid,
    /// The refresh token was already used: the session has been revoked.
    #[error("refresh token reused; session revoked")]
    TokenReused,
    /// The session was revoked.
    #[error("session revoked")]
    SessionRevoked,
    /// No such session for this user.
    #[error("no such session")]
    NoSuchSession,
    /// Too many login attempts from this address, or the account is locked for a while.
    #[error("too many attempts")]
    Throttled(Throttled),
    /// Password policy or hashing capacity.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The deployment cannot do this (no mail relay configured for password resets).
    #[error("unavailable")]
    Unavailable,
    /// A stored record could not be decoded.
    #[error("corrupt account record")]
    Corrupt,
    /// Token minting failed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    user_id: u64,
    username: String,
    email: String,
    password_hash: String,
    created_at_ms: u64,
    #[serde(default)]
    second_factor: Option<SecondFactor>,
    /// Deleted accounts keep their username reserved (no impersonation by
    /// re-registration) and nothing else.
    #[serde(default)]
    deleted: bool,
}

/// TOTP state of an account: pending until the first code confirms it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecondFactor {
    secret: Vec<u8>,
    confirmed: bool,
    last_step: Option<u64>,
    recovery: Vec<[u8; 32]>,
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
    store: S,
    tokens: AccessTokens,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    ids: std::cell::RefCell<IdGenerator>,
    throttle: LoginThrottle,
    mailer: Option<Arc<dyn Mailer>>,
}

/// user id → the pending password-reset code's hash (one at a time; expires on its own).
pub static RESETS: Table = Table {
    name: "auth_password_resets",
    kind: TableKind::Rows,
    partition: &["user_id"],
    clustering: &[],
    default_ttl: Some(RESET_TTL),
    doc: "pending password-reset codes (SHA-256 of the two most recent), 30 minutes",
};

/// The password-reset table (a later migration than [`TABLES`]).
pub static RESET_TABLES: &[&Table] = &[&RESETS];

/// How long a password-reset code works.
pub const RESET_TTL: Duration = Duration::from_secs(30 * 60);

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

fn key_u64(v: u64) -> Bytes {
    KeyBuilder::new().u64(v).build()
}

fn key_str(v: &str) -> Bytes {
    KeyBuilder::new().str(v).build()
}

fn sha256(token: &str) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(token.as_bytes()))
}

fn valid_username(u: &str) -> bool {
    (3..=30).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && u.as_bytes()[0].is_ascii_alphanumeric()
}

fn valid_email(e: &str) -> bool {
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
    ) -> Result<Self, AccountError> {
        let ids = IdGenerator::new(node, shard)
            .map_err(|_| AccountError::InvalidArgument { field: "shard" })?;
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

    /// Starts a password reset for the account with `email`: a single-use code, valid for
    /// [`RESET_TTL`], is mailed to that address. The answer is the same whether or not
    /// the address belongs to an account (nothing to enumerate), and the mail goes out
    /// after the answer; unknown addresses cost the same storage work (no timing
    /// difference). Throttled per address and per e-mail like logins, on this node and
    /// the fleet; the two most recent codes work.
    pub async fn password_reset_start(
        &self,
        email: &str,
        ip: std::net::IpAddr,
    ) -> Result<(), AccountError> {
        let Some(mailer) = self.mailer.clone() else {
            return Err(AccountError::Unavailable);
        };
        if !valid_email(email) {
            return Err(AccountError::InvalidArgument { field: "email" });
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
    ) -> Result<(), AccountError> {
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
            return Err(AccountError::InvalidCredentials);
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
            return Err(AccountError::InvalidCredentials);
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
    ) -> Result<IssuedTokens, AccountError> {
        if !valid_username(username) {
            return Err(AccountError::InvalidArgument { field: "username" });
        }
        if !valid_email(email) {
            return Err(AccountError::InvalidArgument { field: "email" });
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
            return Err(AccountError::Taken { field: "username" });
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
            return Err(AccountError::Taken { field: "email" });
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
        let record = serde_json::to_vec(&account).map_err(|_| AccountError::Corrupt)?;
        self.store
            .put(&ACCOUNTS, &key_u64(user_id), &[], &record, None)
            .await?;
        self.open_session(user_id, device_name).await
    }

    async fn account_by_identifier(
        &self,
        identifier: &str,
    ) -> Result<Option<Account>, AccountError> {
        let lower = identifier.to_ascii_lowercase();
        let table = if lower.contains('@') {
            &EMAILS
        } else {
            &USERNAMES
        };
        let Some(id) = self.store.get(table, &key_str(&lower), &[]).await? else {
            return Ok(None);
        };
        let id = u64::from_be_bytes(id.as_ref().try_into().map_err(|_| AccountError::Corrupt)?);
        let Some(record) = self.store.get(&ACCOUNTS, &key_u64(id), &[]).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&record)
            .map(Some)
            .map_err(|_| AccountError::Corrupt)
    }

    /// Signs in with a username or e-mail and a password, from address `ip` (throttled
    /// per address and per account, see [`LoginThrottle`]).
    pub async fn login(
        &self,
        identifier: &str,
        password: String,
        device_name: &str,
        ip: std::net::IpAddr,
    ) -> Result<IssuedTokens, AccountError> {
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
    ) -> Result<IssuedTokens, AccountError> {
        let key = identifier.to_ascii_lowercase();
        self.throttle
            .check(&key, ip, self.clock.now_ms())
            .map_err(AccountError::Throttled)?;
        if let Some(fleet) = self.throttle.fleet() {
            fleet
                .check(&key, ip)
                .await
                .map_err(AccountError::Throttled)?;
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
            return Err(AccountError::InvalidCredentials);
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
                    return Err(AccountError::SecondFactorRequired);
                }
            };
            self.note_attempt(&key, passed).await;
            if !passed {
                return Err(AccountError::SecondFactorInvalid);
            }
            // The used step / recovery code is spent for good.
            self.save(&account).await?;
        } else {
            self.note_attempt(&key, true).await;
        }
        self.open_session(account.user_id, device_name).await
    }

    /// The node's and the fleet's throttle for a password-reset key.
    async fn reset_throttle(&self, key: &str, ip: std::net::IpAddr) -> Result<(), AccountError> {
        self.throttle
            .check(key, ip, self.clock.now_ms())
            .map_err(AccountError::Throttled)?;
        if let Some(fleet) = self.throttle.fleet() {
            fleet
                .check(key, ip)
                .await
                .map_err(AccountError::Throttled)?;
        }
        Ok(())
    }

    /// Records a login attempt's outcome with the node's throttle and the fleet's.
    async fn note_attempt(&self, key: &str, success: bool) {
        self.throttle.record(key, success, self.clock.now_ms());
        if let Some(fleet) = self.throttle.fleet() {
            fleet.record(key, success).await;
        }
    }

    async fn load(&self, user_id: u64) -> Result<Account, AccountError> {
        let record = self
            .store
            .get(&ACCOUNTS, &key_u64(user_id), &[])
            .await?
            .ok_or(AccountError::InvalidCredentials)?;
        serde_json::from_slice(&record).map_err(|_| AccountError::Corrupt)
    }

    async fn save(&self, account: &Account) -> Result<(), AccountError> {
        let record = serde_json::to_vec(account).map_err(|_| AccountError::Corrupt)?;
        self.store
            .put(&ACCOUNTS, &key_u64(account.user_id), &[], &record, None)
            .await?;
        Ok(())
    }

    /// Re-authentication for sensitive changes.
    async fn reauthenticate(
        &self,
        user_id: u64,
        password: String,
    ) -> Result<Account, AccountError> {
        let account = self.load(user_id).await?;
        if account.deleted
            || !self
                .hasher
                .verify(password, Some(account.password_hash.clone()))
                .await?
        {
            return Err(AccountError::InvalidCredentials);
        }
        Ok(account)
    }

    /// Re-authentication with the second factor too, when the account has one.
    async fn reauthenticate_fully(
        &self,
        user_id: u64,
        password: String,
        code: Option<&str>,
    ) -> Result<Account, AccountError> {
        let mut account = self.reauthenticate(user_id, password).await?;
        if let Some(sf) = account.second_factor.as_mut().filter(|sf| sf.confirmed) {
            let code = code.ok_or(AccountError::SecondFactorRequired)?;
            let now = self.clock.now_ms() / 1000;
            match totp::verify(&sf.secret, code, now, sf.last_step) {
                Ok(step) => sf.last_step = Some(step),
                Err(_) => totp::use_recovery_code(&mut sf.recovery, code)
                    .map_err(|_| AccountError::SecondFactorInvalid)?,
            }
        }
        Ok(account)
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
    ) -> Result<usize, AccountError> {
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
    ) -> Result<(), AccountError> {
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
    ) -> Result<(), AccountError> {
        self.reauthenticate_fully(user_id, password, code)
            .await
            .map(|_| ())
    }

    /// The last step of a deletion: every session is revoked, the e-mail, password and
    /// second factor are erased; the username stays reserved.
    pub async fn erase(&self, user_id: u64) -> Result<(), AccountError> {
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

    /// Starts TOTP enrolment (after re-entering the password): returns the `otpauth://`
    /// URI and the base32 secret. Nothing is required at login until it is confirmed.
    pub async fn totp_enrol(
        &self,
        user_id: u64,
        password: String,
        issuer: &str,
    ) -> Result<(String, String), AccountError> {
        let mut account = self.reauthenticate(user_id, password).await?;
        if account
            .second_factor
            .as_ref()
            .is_some_and(|sf| sf.confirmed)
        {
            return Err(AccountError::SecondFactorState);
        }
        let secret = totp::new_secret();
        let (uri, b32) = totp::enrolment(&secret, issuer, &account.username)
            .map_err(|_| AccountError::Corrupt)?;
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
    pub async fn totp_confirm(
        &self,
        user_id: u64,
        code: &str,
    ) -> Result<Vec<String>, AccountError> {
        let mut account = self.load(user_id).await?;
        let now = self.clock.now_ms() / 1000;
        let sf = account
            .second_factor
            .as_mut()
            .filter(|sf| !sf.confirmed)
            .ok_or(AccountError::SecondFactorState)?;
        let step = totp::verify(&sf.secret, code, now, sf.last_step)
            .map_err(|_| AccountError::SecondFactorInvalid)?;
        let (codes, hashes) = totp::recovery_codes();
        sf.confirmed = true;
        sf.last_step = Some(step);
        sf.recovery = hashes;
        self.save(&account).await?;
        Ok(codes)
    }

    /// Turns the second factor off: needs the password and a current code (or a
    /// recovery code).
    pub async fn totp_disable(
        &self,
        user_id: u64,
        password: String,
        code: &str,
    ) -> Result<(), AccountError> {
        let mut account = self.reauthenticate(user_id, password).await?;
        let now = self.clock.now_ms() / 1000;
        let sf = account
            .second_factor
            .as_mut()
            .filter(|sf| sf.confirmed)
            .ok_or(AccountError::SecondFactorState)?;
        let ok = totp::verify(&sf.secret, code, now, sf.last_step).is_ok()
            || totp::use_recovery_code(&mut sf.recovery, code).is_ok();
        if !ok {
            return Err(AccountError::SecondFactorInvalid);
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
    ) -> Result<Vec<String>, AccountError> {
        let mut account = self
            .reauthenticate_fully(user_id, password, Some(code))
            .await?;
        let sf = account
            .second_factor
            .as_mut()
            .filter(|sf| sf.confirmed)
            .ok_or(AccountError::SecondFactorState)?;
        let (codes, hashes) = totp::recovery_codes();
        sf.recovery = hashes;
        self.save(&account).await?;
        Ok(codes)
    }

    async fn open_session(
        &self,
        user_id: u64,
        device_name: &str,
    ) -> Result<IssuedTokens, AccountError> {
        let session_id = self.next_id();
        let now = self.clock.now_ms();
        let session = Session {
            session_id,
            device_name: device_name.chars().take(64).collect(),
            created_at_ms: now,
            last_seen_at_ms: now,
            revoked: false,
        };
        let record = serde_json::to_vec(&session).map_err(|_| AccountError::Corrupt)?;
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

    async fn issue(&self, user_id: u64, session_id: u64) -> Result<IssuedTokens, AccountError> {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let refresh_token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let record = serde_json::to_vec(&RefreshRecord {
            user_id,
            session_id,
        })
        .map_err(|_| AccountError::Corrupt)?;
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

    async fn session(
        &self,
        user_id: u64,
        session_id: u64,
    ) -> Result<Option<Session>, AccountError> {
        match self
            .store
            .get(&SESSIONS, &key_u64(user_id), &key_u64(session_id))
            .await?
        {
            Some(r) => serde_json::from_slice(&r)
                .map(Some)
                .map_err(|_| AccountError::Corrupt),
            None => Ok(None),
        }
    }

    /// Spends a refresh token and returns new tokens for the same session. A token that
    /// was already spent revokes the session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens, AccountError> {
        let hash = sha256(refresh_token);
        let record = self
            .store
            .get(&REFRESH_TOKENS, &hash, &[])
            .await?
            .ok_or(AccountError::TokenInvalid)?;
        let r: RefreshRecord =
            serde_json::from_slice(&record).map_err(|_| AccountError::Corrupt)?;
        let session = self
            .session(r.user_id, r.session_id)
            .await?
            .ok_or(AccountError::TokenInvalid)?;
        if session.revoked {
            return Err(AccountError::SessionRevoked);
        }
        // Exactly one use: whoever claims the spent marker first may rotate.
        if !self
            .store
            .insert_if_absent(&REFRESH_SPENT, &hash, &[], b"", None)
            .await?
        {
            self.revoke(r.user_id, r.session_id).await?;
            return Err(AccountError::TokenReused);
        }
        let mut session = session;
        session.last_seen_at_ms = self.clock.now_ms();
        let bytes = serde_json::to_vec(&session).map_err(|_| AccountError::Corrupt)?;
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
    pub async fn revoke(&self, user_id: u64, session_id: u64) -> Result<(), AccountError> {
        let mut session = self
            .session(user_id, session_id)
            .await?
            .ok_or(AccountError::NoSuchSession)?;
        session.revoked = true;
        let bytes = serde_json::to_vec(&session).map_err(|_| AccountError::Corrupt)?;
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
    pub async fn revoke_others(&self, user_id: u64, keep: u64) -> Result<usize, AccountError> {
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
    pub async fn sessions(&self, user_id: u64) -> Result<Vec<Session>, AccountError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&SESSIONS, &key_u64(user_id), &Scan::all(200).after(cursor))
                .await?;
            for row in &page.rows {
                out.push(serde_json::from_slice(&row.value).map_err(|_| AccountError::Corrupt)?);
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }
}
