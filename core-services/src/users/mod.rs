//! Users: profiles and the private-account flag.
//!
//! A profile is readable by anyone the owner has not blocked and who has not blocked the
//! owner; for everyone else it does not exist (`NotFound`, not `Forbidden`, so that a
//! block is not revealed). A private account's profile stays visible; its content and
//! lists are for approved followers only (enforced by the graph and content services).

use bytes::Bytes;
use selfie_storage::key::KeyBuilder;
use selfie_storage::{Store, StoreError, Table, TableKind};
use serde::{Deserialize, Serialize};

/// user id → profile.
pub static PROFILES: Table = Table {
    name: "users_profiles",
    kind: TableKind::Rows,
    partition: &["user_id"],
    clustering: &[],
    default_ttl: None,
    doc: "profiles",
};

/// Every table of the users service.
pub static TABLES: &[&Table] = &[&PROFILES];

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 64;
/// Longest bio, in characters.
pub const MAX_BIO: usize = 300;

/// A profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The user.
    pub user_id: u64,
    /// Unique handle.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Bio.
    pub bio: String,
    /// Private account: follows need approval; content and lists for followers only.
    pub private: bool,
    /// The account was deleted: the profile is anonymised and hidden, its content too.
    #[serde(default)]
    pub deleted: bool,
}

/// Changes to a profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New bio.
    pub bio: Option<String>,
    /// New private flag.
    pub private: Option<bool>,
}

/// Users errors.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// No such user (or hidden from the viewer by a block).
    #[error("no such user")]
    NotFound,
    /// A field is too long.
    #[error("invalid {field}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("corrupt profile")]
    Corrupt,
}

pub(crate) fn key(user_id: u64) -> Bytes {
    KeyBuilder::new().u64(user_id).build()
}

/// Reads a profile without any visibility check (for services that check themselves).
pub(crate) async fn load<S: Store>(store: &S, user_id: u64) -> Result<Option<Profile>, UsersError> {
    match store.get(&PROFILES, &key(user_id), &[]).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| UsersError::Corrupt),
        None => Ok(None),
    }
}

/// The users service of one shard.
pub struct Users<S> {
    store: S,
}

impl<S: Store> Users<S> {
    /// Over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// Creates the profile of a new account (idempotent).
    pub async fn create(&self, user_id: u64, username: &str) -> Result<Profile, UsersError> {
        let profile = Profile {
            user_id,
            username: username.to_string(),
            display_name: username.to_string(),
            bio: String::new(),
            private: false,
            deleted: false,
        };
        let bytes = serde_json::to_vec(&profile).map_err(|_| UsersError::Corrupt)?;
        if !self
            .store
            .insert_if_absent(&PROFILES, &key(user_id), &[], &bytes, None)
            .await?
        {
            return load(&self.store, user_id)
                .await?
                .ok_or(UsersError::NotFound);
        }
        Ok(profile)
    }

    /// The profile of `user_id` as `viewer` may see it.
    pub async fn get(&self, viewer: u64, user_id: u64) -> Result<Profile, UsersError> {
        if crate::graph::blocked_either_way(&self.store, viewer, user_id).await? {
            return Err(UsersError::NotFound);
        }
        load(&self.store, user_id)
            .await?
            .filter(|p| !p.deleted)
            .ok_or(UsersError::NotFound)
    }

    /// Anonymises and hides the profile of a deleted account (its username stays
    /// reserved by the accounts service).
    pub async fn mark_deleted(&self, user_id: u64) -> Result<(), UsersError> {
        let Some(mut profile) = load(&self.store, user_id).await? else {
            return Ok(());
        };
        profile.deleted = true;
        profile.display_name.clear();
        profile.bio.clear();
        let bytes = serde_json::to_vec(&profile).map_err(|_| UsersError::Corrupt)?;
        self.store
            .put(&PROFILES, &key(user_id), &[], &bytes, None)
            .await?;
        Ok(())
    }

    /// Updates the caller's own profile.
    pub async fn update(&self, user_id: u64, update: ProfileUpdate) -> Result<Profile, UsersError> {
        let mut profile = load(&self.store, user_id)
            .await?
            .ok_or(UsersError::NotFound)?;
        if let Some(name) = update.display_name {
            if name.chars().count() > MAX_DISPLAY_NAME || name.trim().is_empty() {
                return Err(UsersError::InvalidArgument {
                    field: "display_name",
                });
            }
            profile.display_name = name;
        }
        if let Some(bio) = update.bio {
            if bio.chars().count() > MAX_BIO {
                return Err(UsersError::InvalidArgument { field: "bio" });
            }
            profile.bio = bio;
        }
        if let Some(private) = update.private {
            profile.private = private;
        }
        let bytes = serde_json::to_vec(&profile).map_err(|_| UsersError::Corrupt)?;
        self.store
            .put(&PROFILES, &key(user_id), &[], &bytes, None)
            .await?;
        Ok(profile)
    }
}
