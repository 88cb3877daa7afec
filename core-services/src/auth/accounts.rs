//! Accounts: registration, login, refresh-token rotation, logout and sessions, over the
//! storage traits.
//!
//! - Usernames and verified e-mail addresses are claimed with `insert_if_absent`, so no
//!   race can give one name two owners (on the CQL backend this is a lightweight
//!   transaction). An address is claimed when its owner types the code mailed to it
//!   (`verify_email`), not at registration: registering answers the same whether or not
//!   the address is taken (its owner gets a warning instead of a code), so registration
//!   tells no one which addresses have accounts.
//! - Account records change only by compare-and-set on the whole record (`update`):
//!   two logins cannot spend one TOTP step or one recovery code, and a login cannot
//!   write back a password hash that a reset replaced meanwhile.
//! - Login checks the password with Argon2id off the shard threads; an unknown account and
//!   a wrong password cost the same time and give the same error.
//! - A login creates a session (device) with a refresh-token *family*. Refreshing spends
//!   the presented token (claimed once, again with `insert_if_absent`) and returns a new
//!   one; presenting an already spent token means it was stolen or replayed, so the whole
//!   session is revoked (its access tokens stop verifying at once).
//! - Revocation is durable and monotonic: an insert-only marker per session, which a
//!   refresh checks *after* claiming its token (so a refresh racing a logout cannot bring
//!   the session back), and a by-time index from which a node starting up reloads the
//!   revocations its access tokens must honour ([`load_recent_revocations`]). A login
//!   re-reads the account after creating its session: if a reset, password change or
//!   deletion finished meanwhile, the new session is revoked (their own sweep of the
//!   sessions sees it otherwise).
//! - Refresh tokens are 256-bit random strings; only their SHA-256 is stored. Reset,
//!   verification and recovery codes are short, so they are stored as keyed hashes
//!   (HMAC-SHA-256 under a key derived from the token signing key, with the user id):
//!   a copy of the database alone does not let anyone test guesses offline.
//! - Every credential check is throttled ([`LoginThrottle`]): per address, and per
//!   account by user id — logins, password re-entry, second-factor codes, e-mail codes.
//!   Registrations are throttled per address.
//!
//! Password change and account deletion re-authenticate (password, and the second
//! factor when enrolled: `second_factor`); password reset by e-mail lives in `reset`.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Cell, Clock, Commit, Scan, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::mail::{Mail, Mailer};
use super::password::PasswordHasher;
use super::throttle::{LoginThrottle, account_key, unknown_key};
use super::tokens::{AccessTokens, RevokedSessions};
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
    /// Whether `email` is verified (and so claimed). Accounts from before verification
    /// existed claimed their address at registration.
    #[serde(default = "verified")]
    pub(super) email_verified: bool,
    pub(super) password_hash: String,
    pub(super) created_at_ms: u64,
    #[serde(default)]
    pub(super) second_factor: Option<SecondFactor>,
    /// Deleted accounts keep their username reserved (no impersonation by
    /// re-registration) and nothing else.
    #[serde(default)]
    pub(super) deleted: bool,
}

fn verified() -> bool {
    true
}

/// TOTP state of an account: pending until the first code confirms it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SecondFactor {
    pub(super) secret: Vec<u8>,
    pub(super) confirmed: bool,
    pub(super) last_step: Option<u64>,
    /// Keyed hashes of the unused recovery codes.
    pub(super) recovery: Vec<[u8; 32]>,
}

/// An account record as read: its stored bytes (for compare-and-set) and its contents.
pub(super) struct Versioned {
    pub(super) bytes: Bytes,
    pub(super) account: Account,
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
    /// Revoked sessions stay listed until they expire, marked (from the revocation
    /// markers, or a stored `true` from records written before the markers existed,
    /// which a refresh turns into a marker).
    #[serde(default, skip_serializing)]
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
    /// Key of the keyed code hashes, derived from the token signing key.
    code_key: [u8; 32],
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

/// A short code typed by a person (reset and verification codes): 10 characters of an
/// unambiguous alphabet, uniformly drawn (~50 bits, hopeless to guess online under the
/// throttle).
pub(super) fn typed_code() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The hour bucket of [`REVOCATIONS`].
fn hour(ms: u64) -> Bytes {
    key_u64(ms / 3_600_000)
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
        let mut mac = Hmac::<Sha256>::new_from_slice(&tokens.secret_key_bytes())
            .map_err(|_| Error::Internal("code hash key"))?;
        mac.update(b"selfie/1 code hashes");
        let code_key = mac.finalize().into_bytes().into();
        Ok(Self {
            store,
            tokens,
            hasher,
            clock,
            ids: std::cell::RefCell::new(ids),
            throttle,
            mailer: None,
            code_key,
        })
    }

    /// Sends password-reset and verification mail through `mailer` (without one, resets
    /// are unavailable and addresses stay unverified).
    pub fn with_mailer(mut self, mailer: Arc<dyn Mailer>) -> Self {
        self.mailer = Some(mailer);
        self
    }

    fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next(self.clock.now_ms()).0
    }

    /// The keyed hash of a short code for `purpose` and `user_id` (the code normalised
    /// by the caller).
    pub(super) fn code_hash(&self, purpose: &str, user_id: u64, code: &str) -> [u8; 32] {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail here.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.code_key) else {
            return [0; 32];
        };
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(&user_id.to_be_bytes());
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Creates an account and signs it in on `device_name`, from address `ip`
    /// (registrations are throttled per address: each costs an Argon2 hash). A code to
    /// verify `email` is mailed to it; the answer is the same whether or not the address
    /// belongs to another account (whose owner is told instead).
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: String,
        device_name: &str,
        ip: std::net::IpAddr,
    ) -> Result<IssuedTokens> {
        if !valid_username(username) {
            return Err(Error::InvalidArgument { field: "username" });
        }
        if !valid_email(email) {
            return Err(Error::InvalidArgument { field: "email" });
        }
        self.throttle
            .check_registration(ip, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        if let Some(fleet) = self.throttle.fleet() {
            fleet
                .check_registration(ip)
                .await
                .map_err(Error::Throttled)?;
        }
        let password_hash = self.hasher.hash(password).await?;
        let user_id = self.next_id();
        let id_bytes = user_id.to_be_bytes();
        let name_key = key_str(&username.to_ascii_lowercase());
        if !self
            .store
            .insert_if_absent(&USERNAMES, &name_key, &[], &id_bytes, None)
            .await?
        {
            return Err(Error::Taken { field: "username" });
        }
        let account = Account {
            user_id,
            username: username.to_string(),
            email: email.to_string(),
            email_verified: false,
            password_hash,
            created_at_ms: self.clock.now_ms(),
            second_factor: None,
            deleted: false,
        };
        let record = encode("account", &account)?;
        if !self
            .store
            .insert_if_absent(&ACCOUNTS, &key_u64(user_id), &[], &record, None)
            .await?
        {
            return Err(Error::Internal("a fresh user id was already taken"));
        }
        self.start_email_verification(&account).await?;
        self.open_session(user_id, device_name).await
    }

    /// Stores a fresh verification code for the account's address and mails it — or,
    /// when another account holds that address, mails its owner a warning instead. The
    /// same storage work either way; the mail goes out after the answer.
    async fn start_email_verification(&self, account: &Account) -> Result<()> {
        let code = typed_code();
        let mut row = self.code_hash("email", account.user_id, &code).to_vec();
        row.extend_from_slice(account.email.as_bytes());
        self.store
            .put(&EMAIL_CODES, &key_u64(account.user_id), &[], &row, None)
            .await?;
        let owner = self
            .store
            .get(&EMAILS, &key_str(&account.email.to_ascii_lowercase()), &[])
            .await?
            .and_then(|v| id_value(&v));
        let Some(mailer) = self.mailer.clone() else {
            return Ok(());
        };
        let mail = match owner {
            Some(id) if id != account.user_id => Mail {
                to: account.email.clone(),
                subject: "Someone tried to sign up with your address".into(),
                body: "Someone tried to create a Selfie account with this e-mail address, \
                       which already has one. If it was you, sign in instead (or reset \
                       your password). If not, you need not do anything: the address stays \
                       yours.\n"
                    .into(),
            },
            _ => Mail {
                to: account.email.clone(),
                subject: "Your Selfie verification code".into(),
                body: format!(
                    "Welcome to Selfie, @{}.\n\nYour code to verify this address: {code}\n\n\
                     It works once, for 24 hours.\n",
                    account.username
                ),
            },
        };
        tokio::spawn(async move {
            if let Err(e) = mailer.send(mail).await {
                tracing::warn!(error = %e, "verification mail not sent");
            }
        });
        Ok(())
    }

    /// Verifies the caller's e-mail address with the code mailed to it: the address is
    /// claimed for the account (logins and resets by address work from then on). Wrong
    /// codes count as failed credential checks.
    pub async fn verify_email(&self, user_id: u64, code: &str) -> Result<()> {
        let key = account_key(user_id);
        self.check_account(&key).await?;
        let stored = self.store.get(&EMAIL_CODES, &key_u64(user_id), &[]).await?;
        let presented = self.code_hash("email", user_id, &code.trim().to_ascii_uppercase());
        let Some(row) = stored.filter(|r| {
            r.get(..32)
                .is_some_and(|h| bool::from(h.ct_eq(presented.as_slice())))
        }) else {
            self.note_attempt(&key, false).await;
            return Err(Error::InvalidCredentials);
        };
        let email = String::from_utf8_lossy(&row[32..]).into_owned();
        // Single use.
        if !self
            .store
            .compare_and_set(&EMAIL_CODES, &key_u64(user_id), &[], &row, None, None)
            .await?
        {
            return Err(Error::InvalidCredentials);
        }
        self.note_attempt(&key, true).await;
        let claim = key_str(&email.to_ascii_lowercase());
        if !self
            .store
            .insert_if_absent(&EMAILS, &claim, &[], &user_id.to_be_bytes(), None)
            .await?
        {
            let owner = self.store.get(&EMAILS, &claim, &[]).await?;
            if owner.as_deref().and_then(id_value) != Some(user_id) {
                return Err(Error::Taken { field: "email" });
            }
        }
        let verified = self
            .update(user_id, |a| {
                if a.deleted {
                    return Err(Error::InvalidCredentials);
                }
                a.email = email.clone();
                a.email_verified = true;
                Ok(())
            })
            .await;
        if verified.is_err() {
            // Deleted meanwhile (or the record is gone): the address is not kept.
            let ours = user_id.to_be_bytes();
            self.store
                .compare_and_set(&EMAILS, &claim, &[], &ours, None, None)
                .await?;
        }
        verified.map(|_| ())
    }

    /// Mails a fresh verification code to the account's address (the earlier one stops
    /// working): for a mail that was lost or a code that expired. Throttled per account
    /// (five, then a lockout that doubles) and per address; `Forbidden` once verified.
    pub async fn resend_verification(&self, user_id: u64, ip: std::net::IpAddr) -> Result<()> {
        if self.mailer.is_none() {
            return Err(Error::Unavailable("e-mail (no mail relay configured)"));
        }
        let key = format!("verify-resend:{user_id}");
        self.check_key(&key, ip).await?;
        // Every request counts towards the lockout: codes cannot be mailed in bulk.
        self.note_attempt(&key, false).await;
        let account = self.load(user_id).await?.account;
        if account.deleted {
            return Err(Error::InvalidCredentials);
        }
        if account.email_verified {
            return Err(Error::Forbidden("the address is already verified"));
        }
        self.start_email_verification(&account).await
    }

    /// The account `identifier` (username, or verified e-mail address) names, with the
    /// same storage work whether or not there is one.
    pub(super) async fn account_by_identifier(
        &self,
        identifier: &str,
    ) -> Result<Option<Versioned>> {
        let lower = identifier.to_ascii_lowercase();
        let table = if lower.contains('@') {
            &EMAILS
        } else {
            &USERNAMES
        };
        let id = self.store.get(table, &key_str(&lower), &[]).await?;
        let id = match id {
            Some(v) => id_value(&v).ok_or(Error::Corrupt("account"))?,
            None => 0,
        };
        // User 0 is nobody: reading it costs what reading an account costs.
        let record = self.store.get(&ACCOUNTS, &key_u64(id), &[]).await?;
        match record {
            Some(bytes) if id != 0 => Ok(Some(Versioned {
                account: decode("account", &bytes)?,
                bytes,
            })),
            _ => Ok(None),
        }
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
        self.throttle
            .check_address(ip, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        let found = self
            .account_by_identifier(identifier)
            .await?
            .filter(|v| !v.account.deleted);
        let key = match &found {
            Some(v) => account_key(v.account.user_id),
            None => unknown_key(identifier),
        };
        self.throttle
            .check_account(&key, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        if let Some(fleet) = self.throttle.fleet()
            && let Err(t) = fleet.check(&key, ip).await
        {
            self.throttle.abandon(&key);
            return Err(Error::Throttled(t));
        }
        let stored = found.as_ref().map(|v| v.account.password_hash.clone());
        // Same Argon2 work whether or not the account exists.
        let ok = self.hasher.verify(password, stored).await? && found.is_some();
        let Some(mut current) = found.filter(|_| ok) else {
            self.note_attempt(&key, false).await;
            return Err(Error::InvalidCredentials);
        };
        let password_hash = current.account.password_hash.clone();
        let confirmed = |a: &Account| a.second_factor.as_ref().is_some_and(|sf| sf.confirmed);
        if confirmed(&current.account) {
            if totp_code.is_none() && recovery_code.is_none() {
                // Not a failed guess: the password was right.
                self.throttle.abandon(&key);
                return Err(Error::SecondFactorRequired);
            }
            // Spend the step or the recovery code with a compare-and-set: of two logins
            // with one code, one wins and the other sees it spent.
            loop {
                let mut account = current.account.clone();
                let passed = match &mut account.second_factor {
                    Some(sf) => {
                        self.second_factor_passes(sf, account.user_id, totp_code, recovery_code)
                    }
                    None => false,
                };
                if !passed {
                    self.note_attempt(&key, false).await;
                    return Err(Error::SecondFactorInvalid);
                }
                if self.save_if_unchanged(&current.bytes, &account).await? {
                    break;
                }
                current = self.load(account.user_id).await?;
                if current.account.deleted || current.account.password_hash != password_hash {
                    return Err(Error::InvalidCredentials);
                }
                if !confirmed(&current.account) {
                    break;
                }
            }
        }
        self.note_attempt(&key, true).await;
        let user_id = current.account.user_id;
        let tokens = self.open_session(user_id, device_name).await?;
        // A reset, password change or deletion that finished while this login ran has
        // already swept the sessions, perhaps before this one was written: re-read the
        // account now that the session exists, and give way if it changed.
        let now = self.load(user_id).await?.account;
        if now.deleted || now.password_hash != password_hash {
            self.revoke(user_id, tokens.session_id).await?;
            return Err(Error::InvalidCredentials);
        }
        Ok(tokens)
    }

    /// Checks a TOTP code (or else a recovery code) against `sf`, spending it in `sf`.
    pub(super) fn second_factor_passes(
        &self,
        sf: &mut SecondFactor,
        user_id: u64,
        totp_code: Option<&str>,
        recovery_code: Option<&str>,
    ) -> bool {
        if let Some(code) = totp_code {
            let now = self.clock.now_ms() / 1000;
            if let Ok(step) = totp::verify(&sf.secret, code, now, sf.last_step) {
                sf.last_step = Some(step);
                return true;
            }
        }
        let Some(code) = recovery_code.or(totp_code) else {
            return false;
        };
        let normal = totp::normalize_recovery_code(code);
        let h = self.code_hash("recovery", user_id, &normal);
        // Codes handed out before they were keyed are stored as plain SHA-256.
        totp::spend_recovery_code(&mut sf.recovery, &h).is_ok()
            || totp::spend_recovery_code(&mut sf.recovery, &Sha256::digest(&normal).into()).is_ok()
    }

    /// The account's lockout, on this node and the fleet.
    pub(super) async fn check_account(&self, key: &str) -> Result<()> {
        self.throttle
            .check_account(key, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        if let Some(fleet) = self.throttle.fleet()
            && let Err(t) = fleet.check_account(key).await
        {
            self.throttle.abandon(key);
            return Err(Error::Throttled(t));
        }
        Ok(())
    }

    /// The node's and the fleet's throttle for `key` (an account's, or a request kind's
    /// such as reset starts) and address `ip`.
    pub(super) async fn check_key(&self, key: &str, ip: std::net::IpAddr) -> Result<()> {
        self.throttle
            .check(key, ip, self.clock.now_ms())
            .map_err(Error::Throttled)?;
        if let Some(fleet) = self.throttle.fleet()
            && let Err(t) = fleet.check(key, ip).await
        {
            self.throttle.abandon(key);
            return Err(Error::Throttled(t));
        }
        Ok(())
    }

    /// Records a credential check's outcome with the node's throttle and the fleet's.
    pub(super) async fn note_attempt(&self, key: &str, success: bool) {
        self.throttle.record(key, success, self.clock.now_ms());
        if let Some(fleet) = self.throttle.fleet() {
            fleet.record(key, success).await;
        }
    }

    /// The account record and its stored bytes.
    pub(super) async fn load(&self, user_id: u64) -> Result<Versioned> {
        let bytes = self
            .store
            .get(&ACCOUNTS, &key_u64(user_id), &[])
            .await?
            .ok_or(Error::InvalidCredentials)?;
        Ok(Versioned {
            account: decode("account", &bytes)?,
            bytes,
        })
    }

    /// Writes `account` if the stored record is still `old`; `false` when it changed.
    pub(super) async fn save_if_unchanged(&self, old: &Bytes, account: &Account) -> Result<bool> {
        let record = encode("account", account)?;
        let key = key_u64(account.user_id);
        Ok(self
            .store
            .compare_and_set(&ACCOUNTS, &key, &[], old, Some(&record), None)
            .await?)
    }

    /// Applies `change` to the current record and writes it with compare-and-set,
    /// reading again and reapplying when another writer got in between.
    pub(super) async fn update(
        &self,
        user_id: u64,
        mut change: impl FnMut(&mut Account) -> Result<()>,
    ) -> Result<Account> {
        for _ in 0..16 {
            let current = self.load(user_id).await?;
            let mut account = current.account;
            change(&mut account)?;
            if self.save_if_unchanged(&current.bytes, &account).await? {
                return Ok(account);
            }
        }
        Err(Error::Busy)
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
        let mut checked = self.reauthenticate_fully(user_id, current, code).await?;
        checked.account.password_hash = self.hasher.hash(new).await?;
        if !self
            .save_if_unchanged(&checked.bytes, &checked.account)
            .await?
        {
            return Err(Error::Busy);
        }
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
        let checked = self.reauthenticate_fully(user_id, password, code).await?;
        // A spent step or recovery code is spent for good.
        if !self
            .save_if_unchanged(&checked.bytes, &checked.account)
            .await?
        {
            return Err(Error::Busy);
        }
        Ok(())
    }

    /// The last step of a deletion: the address claim is released, the e-mail,
    /// password and second factor are erased (the username stays reserved), then every
    /// session is revoked — in that order, so that a login racing the deletion either
    /// sees the erased account or has its session swept.
    pub async fn erase(&self, user_id: u64) -> Result<()> {
        let account = self.load(user_id).await?.account;
        if account.email_verified && !account.email.is_empty() {
            let claim = key_str(&account.email.to_ascii_lowercase());
            let ours = user_id.to_be_bytes();
            // Only the claim this account holds.
            self.store
                .compare_and_set(&EMAILS, &claim, &[], &ours, None, None)
                .await?;
        }
        self.update(user_id, |a| {
            a.deleted = true;
            a.email = String::new();
            a.email_verified = false;
            a.password_hash = String::new();
            a.second_factor = None;
            Ok(())
        })
        .await?;
        self.revoke_all(user_id).await?;
        Ok(())
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

    /// Whether the session has been revoked (its durable marker).
    async fn is_revoked(&self, user_id: u64, session_id: u64) -> Result<bool> {
        Ok(self
            .store
            .get(&REVOKED, &key_u64(user_id), &key_u64(session_id))
            .await?
            .is_some())
    }

    /// Spends a refresh token and returns new tokens for the same session. A token that
    /// was already spent revokes the session. The revocation marker is read after the
    /// token is claimed: a revocation that lands before the claim is seen, and one that
    /// lands after it refuses the next refresh (and the access token at once).
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedTokens> {
        let hash = sha256(refresh_token);
        let record = self
            .store
            .get(&REFRESH_TOKENS, &hash, &[])
            .await?
            .ok_or(Error::TokenInvalid)?;
        let r: RefreshRecord = decode("refresh token", &record)?;
        // Exactly one use: whoever claims the spent marker first may rotate.
        if !self
            .store
            .insert_if_absent(&REFRESH_SPENT, &hash, &[], b"", None)
            .await?
        {
            self.revoke(r.user_id, r.session_id).await?;
            return Err(Error::TokenReused);
        }
        if self.is_revoked(r.user_id, r.session_id).await? {
            return Err(Error::SessionRevoked);
        }
        let mut session = self
            .session(r.user_id, r.session_id)
            .await?
            .ok_or(Error::TokenInvalid)?;
        if session.revoked {
            // Revoked before revocations had markers: give it one, and refuse.
            self.revoke(r.user_id, r.session_id).await?;
            return Err(Error::SessionRevoked);
        }
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
    /// tokens stop verifying at once, on every node, for good.
    pub async fn revoke(&self, user_id: u64, session_id: u64) -> Result<()> {
        if self.session(user_id, session_id).await?.is_none() {
            return Err(Error::NotFound("session"));
        }
        let now = self.clock.now_ms();
        let by_time = KeyBuilder::new().u64(now).u64(session_id).build();
        let marker = Commit::new()
            .put(
                Cell::new(&REVOKED, key_u64(user_id), key_u64(session_id)),
                Bytes::new(),
                None,
            )
            .put(
                Cell::new(&REVOCATIONS, hour(now), by_time),
                Bytes::new(),
                None,
            );
        self.store.commit(&marker).await?;
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

    /// Revokes every session of `user_id`.
    pub(super) async fn revoke_all(&self, user_id: u64) -> Result<usize> {
        self.revoke_others(user_id, 0).await
    }

    /// The sessions of `user_id`, oldest first, revoked ones marked.
    pub async fn sessions(&self, user_id: u64) -> Result<Vec<Session>> {
        let mut revoked = std::collections::HashSet::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&REVOKED, &key_u64(user_id), &Scan::all(1000).after(cursor))
                .await?;
            revoked.extend(page.rows.into_iter().map(|r| r.clustering));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .scan(&SESSIONS, &key_u64(user_id), &Scan::all(200).after(cursor))
                .await?;
            for row in &page.rows {
                let mut s: Session = decode("session", &row.value)?;
                s.revoked |= revoked.contains(&row.clustering);
                out.push(s);
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }
}

/// Reloads the revocations of the last `window` into `revoked` (a node starting up: its
/// access tokens must stay refused although the node missed the announcements). Returns
/// how many were loaded.
pub async fn load_recent_revocations<S: Store>(
    store: &S,
    revoked: &RevokedSessions,
    now_ms: u64,
    window: std::time::Duration,
) -> Result<usize> {
    let from = now_ms.saturating_sub(window.as_millis() as u64);
    let mut n = 0;
    for h in from / 3_600_000..=now_ms / 3_600_000 {
        let mut scan = Scan::all(1000);
        scan.start = std::ops::Bound::Included(KeyBuilder::new().u64(from).build());
        loop {
            let page = store.scan(&REVOCATIONS, &key_u64(h), &scan).await?;
            for row in &page.rows {
                let session = row
                    .clustering
                    .get(8..16)
                    .and_then(id_value)
                    .ok_or(Error::Corrupt("revocation"))?;
                revoked.revoke_from_fleet(session);
                n += 1;
            }
            match page.cursor {
                Some(c) => scan.cursor = Some(c),
                None => break,
            }
        }
    }
    Ok(n)
}
