//! User lists: named sets of accounts a user curates (for list timelines, later), public
//! or private.
//!
//! Who may do what: only the owner changes a list or its members. A private list exists
//! for its owner alone (`NotFound` for everyone else). A public list is visible to anyone
//! the owner has not blocked and who has not blocked the owner — and, when the owner's
//! account is private, only to its approved followers (whom a private account curates is
//! its content). Members are added only if
//! they exist and have no block with the owner; a block made later hides the member from
//! the list (members are filtered by blocks with the owner and with the viewer at read
//! time, so a block never has to rewrite other users' lists). A deleted account's lists
//! and memberships go with it.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::KeyReader;
use selfie_storage::{Clock, Cursor, Scan, Store};
use serde::{Deserialize, Serialize};

use super::IdPage;
use crate::locks::KeyedLocks;
use crate::tables::graph::{
    FOLLOWING, LIST_COUNTS, LISTS, MEMBER_OF, MEMBERS, OWNER_LISTS, blocked_either_way,
};
use crate::tables::{decode, encode, key as k, name_key, users::live_profile};
use crate::{Error, Result};

/// Most lists one user owns.
pub const MAX_LISTS: i64 = 100;
/// Most members of one list.
pub const MAX_MEMBERS: i64 = 5_000;
/// Most users added or removed in one request.
pub const MAX_CHANGE: usize = 100;
/// Longest list name, in characters.
pub const MAX_NAME: usize = 50;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 300;

/// A list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// Id.
    pub list_id: u64,
    /// Owner.
    pub owner_id: u64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Visible to its owner only.
    pub private: bool,
    /// Creation time.
    pub created_at_ms: u64,
}

/// Changes to a list; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ListUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New private flag.
    pub private: Option<bool>,
}

fn which(name: &str) -> Bytes {
    name_key(name)
}

fn check_text(value: &str, max: usize, empty_ok: bool, field: &'static str) -> Result<()> {
    let n = value.chars().count();
    if n > max || (!empty_ok && value.trim().is_empty()) || value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument { field });
    }
    Ok(())
}

async fn load<S: Store>(store: &S, list_id: u64) -> Result<Option<UserList>> {
    store
        .get(&LISTS, &k(list_id), &[])
        .await?
        .map(|b| decode("list", &b))
        .transpose()
}

async fn drop_list<S: Store>(store: &S, list: &UserList) -> Result<()> {
    loop {
        let page = store
            .scan(&MEMBERS, &k(list.list_id), &Scan::all(500))
            .await?;
        if page.rows.is_empty() {
            break;
        }
        for r in page.rows {
            if let Some(member) = KeyReader::new(&r.clustering).u64() {
                store
                    .delete(&MEMBER_OF, &k(member), &k(list.list_id))
                    .await?;
            }
            store
                .delete(&MEMBERS, &k(list.list_id), &r.clustering)
                .await?;
        }
    }
    // The member counter goes back to zero (counters cannot be deleted on every backend).
    let left = store
        .counter_get(&LIST_COUNTS, &k(list.list_id), &which("members"))
        .await?;
    if left != 0 {
        store
            .counter_add(&LIST_COUNTS, &k(list.list_id), &which("members"), -left)
            .await?;
    }
    store.delete(&LISTS, &k(list.list_id), &[]).await?;
    if store
        .delete_if_present(&OWNER_LISTS, &k(list.owner_id), &k(list.list_id))
        .await?
    {
        store
            .counter_add(&LIST_COUNTS, &k(list.owner_id), &which("lists"), -1)
            .await?;
    }
    Ok(())
}

async fn drop_member<S: Store>(store: &S, list_id: u64, member: u64) -> Result<()> {
    if store
        .delete_if_present(&MEMBERS, &k(list_id), &k(member))
        .await?
    {
        store
            .counter_add(&LIST_COUNTS, &k(list_id), &which("members"), -1)
            .await?;
    }
    store.delete(&MEMBER_OF, &k(member), &k(list_id)).await?;
    Ok(())
}

/// Removes a deleted account's lists and its memberships in others' lists.
pub async fn remove_user<S: Store>(store: &S, user: u64) -> Result<usize> {
    let mut removed = 0;
    loop {
        let page = store.scan(&OWNER_LISTS, &k(user), &Scan::all(100)).await?;
        if page.rows.is_empty() {
            break;
        }
        for r in page.rows {
            if let Some(id) = KeyReader::new(&r.clustering).u64()
                && let Some(list) = load(store, id).await?
            {
                drop_list(store, &list).await?;
            }
            // Whatever the record said, this entry goes (so the loop always ends).
            store.delete(&OWNER_LISTS, &k(user), &r.clustering).await?;
            removed += 1;
        }
    }
    loop {
        let page = store.scan(&MEMBER_OF, &k(user), &Scan::all(500)).await?;
        if page.rows.is_empty() {
            break;
        }
        for r in page.rows {
            match KeyReader::new(&r.clustering).u64() {
                Some(list_id) => drop_member(store, list_id, user).await?,
                None => store.delete(&MEMBER_OF, &k(user), &r.clustering).await?,
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// User lists of one shard.
pub struct Lists<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: RefCell<IdGenerator>,
    /// One change at a time per owner (creations) and per list (the edge routes them to
    /// one shard), so the limits hold and a deletion leaves no member behind.
    locks: KeyedLocks,
}

/// Lock keys: an owner's creations, a list's changes.
const OWNER: u64 = 0;
const LIST: u64 = 1;

impl<S: Store> Lists<S> {
    /// Over `store`; `node`/`shard` make list ids unique.
    pub fn new(store: S, clock: Arc<dyn Clock>, node: u16, shard: u16) -> Result<Self> {
        let ids =
            IdGenerator::new(node, shard).map_err(|_| Error::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: RefCell::new(ids),
            locks: KeyedLocks::default(),
        })
    }

    async fn save(&self, list: &UserList) -> Result<()> {
        let b = encode("list", list)?;
        self.store
            .put(&LISTS, &k(list.list_id), &[], &b, None)
            .await?;
        Ok(())
    }

    /// The list as `viewer` may see it (`NotFound` when private to someone else, across a
    /// block, or of a deleted owner).
    async fn visible(&self, viewer: u64, list_id: u64) -> Result<UserList> {
        let list = load(&self.store, list_id)
            .await?
            .ok_or(Error::NotFound("list"))?;
        if list.owner_id == viewer {
            return Ok(list);
        }
        if list.private || !self.may_see_owner(viewer, list.owner_id).await? {
            return Err(Error::NotFound("list"));
        }
        Ok(list)
    }

    /// Whether `viewer` may see `owner`'s public lists: no block either way, a live
    /// account, and for a private account an approved follower.
    async fn may_see_owner(&self, viewer: u64, owner: u64) -> Result<bool> {
        if viewer == owner {
            return Ok(true);
        }
        if blocked_either_way(&self.store, viewer, owner).await? {
            return Ok(false);
        }
        let Some(profile) = live_profile(&self.store, owner).await? else {
            return Ok(false);
        };
        Ok(!profile.private
            || self
                .store
                .get(&FOLLOWING, &k(viewer), &k(owner))
                .await?
                .is_some())
    }

    /// The list, if `me` owns it (`Forbidden` for a visible list of someone else).
    async fn owned(&self, me: u64, list_id: u64) -> Result<UserList> {
        let list = self.visible(me, list_id).await?;
        if list.owner_id != me {
            return Err(Error::Forbidden("only the owner may change a list"));
        }
        Ok(list)
    }

    /// Creates a list owned by `me` (at most [`MAX_LISTS`]).
    pub async fn create(
        &self,
        me: u64,
        name: &str,
        description: &str,
        private: bool,
    ) -> Result<UserList> {
        check_text(name, MAX_NAME, false, "name")?;
        check_text(description, MAX_DESCRIPTION, true, "description")?;
        let _owner = self.locks.lock((OWNER, me)).await;
        let owned = self
            .store
            .counter_get(&LIST_COUNTS, &k(me), &which("lists"))
            .await?;
        if owned >= MAX_LISTS {
            return Err(Error::InvalidArgument { field: "lists" });
        }
        let now = self.clock.now_ms();
        let list = UserList {
            list_id: self.ids.borrow_mut().next(now).0,
            owner_id: me,
            name: name.to_string(),
            description: description.to_string(),
            private,
            created_at_ms: now,
        };
        self.save(&list).await?;
        self.store
            .put(&OWNER_LISTS, &k(me), &k(list.list_id), b"", None)
            .await?;
        self.store
            .counter_add(&LIST_COUNTS, &k(me), &which("lists"), 1)
            .await?;
        Ok(list)
    }

    /// Renames, redescribes or changes the visibility of `me`'s list.
    pub async fn update(&self, me: u64, list_id: u64, update: ListUpdate) -> Result<UserList> {
        let _list = self.locks.lock((LIST, list_id)).await;
        let mut list = self.owned(me, list_id).await?;
        if let Some(name) = update.name {
            check_text(&name, MAX_NAME, false, "name")?;
            list.name = name;
        }
        if let Some(d) = update.description {
            check_text(&d, MAX_DESCRIPTION, true, "description")?;
            list.description = d;
        }
        list.private = update.private.unwrap_or(list.private);
        self.save(&list).await?;
        Ok(list)
    }

    /// Deletes `me`'s list and its memberships.
    pub async fn delete(&self, me: u64, list_id: u64) -> Result<()> {
        let _list = self.locks.lock((LIST, list_id)).await;
        let list = self.owned(me, list_id).await?;
        drop_list(&self.store, &list).await
    }

    /// Adds users to `me`'s list: each must exist and have no block with `me`.
    pub async fn add_members(&self, me: u64, list_id: u64, users: &[u64]) -> Result<()> {
        if users.len() > MAX_CHANGE {
            return Err(Error::InvalidArgument { field: "user_ids" });
        }
        let _list = self.locks.lock((LIST, list_id)).await;
        let list = self.owned(me, list_id).await?;
        for &u in users {
            if blocked_either_way(&self.store, me, u).await?
                || live_profile(&self.store, u).await?.is_none()
            {
                return Err(Error::NotFound("user"));
            }
        }
        for &u in users {
            let count = self
                .store
                .counter_get(&LIST_COUNTS, &k(list.list_id), &which("members"))
                .await?;
            if count >= MAX_MEMBERS {
                return Err(Error::InvalidArgument { field: "user_ids" });
            }
            if self
                .store
                .insert_if_absent(&MEMBERS, &k(list.list_id), &k(u), b"", None)
                .await?
            {
                self.store
                    .put(&MEMBER_OF, &k(u), &k(list.list_id), b"", None)
                    .await?;
                self.store
                    .counter_add(&LIST_COUNTS, &k(list.list_id), &which("members"), 1)
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes users from `me`'s list.
    pub async fn remove_members(&self, me: u64, list_id: u64, users: &[u64]) -> Result<()> {
        if users.len() > MAX_CHANGE {
            return Err(Error::InvalidArgument { field: "user_ids" });
        }
        let _list = self.locks.lock((LIST, list_id)).await;
        let list = self.owned(me, list_id).await?;
        for &u in users {
            drop_member(&self.store, list.list_id, u).await?;
        }
        Ok(())
    }

    /// A list as `viewer` may see it, with its member count.
    pub async fn get(&self, viewer: u64, list_id: u64) -> Result<(UserList, i64)> {
        let list = self.visible(viewer, list_id).await?;
        let n = self.members_count(list_id).await?;
        Ok((list, n))
    }

    /// How many members a list has (blocked ones included).
    pub async fn members_count(&self, list_id: u64) -> Result<i64> {
        Ok(self
            .store
            .counter_get(&LIST_COUNTS, &k(list_id), &which("members"))
            .await?)
    }

    /// `owner`'s lists that `viewer` may see (private ones for the owner only), oldest
    /// first, each with its member count.
    pub async fn of_owner(
        &self,
        viewer: u64,
        owner: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<(UserList, i64)>, Option<Cursor>)> {
        if !self.may_see_owner(viewer, owner).await? {
            return Err(Error::NotFound("list"));
        }
        let page = self
            .store
            .scan(&OWNER_LISTS, &k(owner), &Scan::all(limit).after(cursor))
            .await?;
        let mut out = Vec::new();
        for r in &page.rows {
            let Some(id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            if let Some(list) = load(&self.store, id).await?
                && (viewer == owner || !list.private)
            {
                let n = self.members_count(id).await?;
                out.push((list, n));
            }
        }
        Ok((out, page.cursor))
    }

    /// Members of a list `viewer` may see, leaving out users with a block with the owner
    /// or with the viewer.
    pub async fn members(
        &self,
        viewer: u64,
        list_id: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<IdPage> {
        let list = self.visible(viewer, list_id).await?;
        let page = self
            .store
            .scan(&MEMBERS, &k(list_id), &Scan::all(limit).after(cursor))
            .await?;
        let mut ids = Vec::new();
        for r in &page.rows {
            let Some(id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            if !blocked_either_way(&self.store, list.owner_id, id).await?
                && !blocked_either_way(&self.store, viewer, id).await?
            {
                ids.push(id);
            }
        }
        Ok(IdPage {
            ids,
            cursor: page.cursor,
        })
    }
}
