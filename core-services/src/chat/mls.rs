//! The MLS (RFC 9420) delivery service of encrypted conversations. The server never
//! decrypts anything: clients do the MLS work (the SDK with `openmls`), and this module
//!
//! - keeps **key packages**: a device uploads some, and one last-resort package
//!   (RFC 9420, section 16.8: built with the `last_resort` extension, so the device
//!   keeps its private key after use); a claim hands out one per device of each user
//!   named (each once: a conditional delete, so two claimers never get the same one),
//!   the last-resort package only when the device has no other left, and never deletes
//!   it (a device that uploaded none has its last ordinary package kept the same way).
//!   Claims are rate limited per claimer and checked for every user before any package
//!   is handed out;
//! - **orders commits** per group: a commit names the epoch it was made in and is
//!   accepted only while the group is in that epoch, which then moves on by one. Of two
//!   commits racing for an epoch exactly one is accepted; the other is refused with
//!   `Conflict` (its author processes the winner and tries again), so members never
//!   fork. Application messages must be in the current epoch too;
//! - **fans out** commits (log entries every member receives, in order) and Welcomes
//!   (log entries only their recipients see).
//!
//! Membership on the server (who receives the conversation's entries) is changed with
//! the ordinary member operations, next to the MLS commit that changes the group: add
//! before committing an Add (so the newcomer receives the Welcome), remove after
//! committing a Remove (so the removed member receives the commit that ends them).

use bytes::Bytes;
use selfie_storage::key::{KeyBuilder, KeyReader};
use selfie_storage::{Scan, Store};

use super::{Chat, Entry, Head, MemberState, Message, MessageKind, Mls, Sent, mls_content};
use crate::tables::chat::{KEY_PACKAGE_CLAIMS, KEY_PACKAGES};
use crate::tables::{self, key as k};
use crate::{Error, Result};

/// Largest key package accepted.
pub const MAX_KEY_PACKAGE_BYTES: usize = 8 * 1024;
/// Most key packages in one upload.
const MAX_UPLOAD: usize = 100;
/// Most key packages one user keeps on the server.
const MAX_STORED: usize = 500;
/// Most users in one claim.
const MAX_CLAIM: usize = 50;
/// Key package bytes one claim hands out at most (its answer fits one frame).
const CLAIM_BYTES: usize = 160 * 1024;
/// Devices of one user a claim hands packages out for, at most.
const MAX_DEVICES: usize = 16;
/// Bytes counted per handed-out package besides its own and its device id's (the
/// answer's table, vector slot and user id).
const ENTRY_OVERHEAD: usize = 48;
/// Longest device id.
const MAX_DEVICE_ID: usize = 64;
// One user's packages always fit a claim's answer: nobody is left out for good.
const _: () =
    assert!(MAX_DEVICES * (MAX_KEY_PACKAGE_BYTES + MAX_DEVICE_ID + ENTRY_OVERHEAD) <= CLAIM_BYTES);

/// A key package handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackage {
    /// Whose.
    pub user_id: u64,
    /// Which of their devices.
    pub device_id: String,
    /// The TLS-serialized key package.
    pub key_package: Vec<u8>,
}

/// A package's row: (device, last resort?, digest), so that a device's rows are
/// together and its last-resort package comes after all its others.
fn package_key(device: &str, package: &[u8], last_resort: bool) -> Bytes {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(package);
    KeyBuilder::new()
        .str(device)
        .u64(u64::from(last_resort))
        .bytes(&digest[..16])
        .build()
}

/// Whether a package row is a last-resort package.
fn is_last_resort(clustering: &[u8]) -> bool {
    let mut r = KeyReader::new(clustering);
    r.str().is_some() && r.u64() == Some(1)
}

impl<S: Store + 'static> Chat<S> {
    /// Stores `packages` of `me`'s device `device`, and `last_resort` as its
    /// last-resort package (replacing the one it had).
    pub async fn upload_key_packages(
        &self,
        me: u64,
        device: &str,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<()> {
        if device.is_empty() || device.len() > MAX_DEVICE_ID {
            return Err(Error::InvalidArgument { field: "device_id" });
        }
        let bad = |p: &[u8]| p.is_empty() || p.len() > MAX_KEY_PACKAGE_BYTES;
        if (packages.is_empty() && last_resort.is_none())
            || packages.len() > MAX_UPLOAD
            || packages.iter().any(|p| bad(p))
            || last_resort.is_some_and(bad)
        {
            return Err(Error::InvalidArgument { field: "packages" });
        }
        let stored = self
            .store
            .scan(&KEY_PACKAGES, &k(me), &Scan::all(MAX_STORED + 1))
            .await?;
        if stored.rows.len() + packages.len() + usize::from(last_resort.is_some()) > MAX_STORED {
            return Err(Error::Forbidden("too many key packages stored"));
        }
        for p in packages {
            // Conditional table: an identical package uploaded twice is stored once.
            let key = package_key(device, p, false);
            self.store
                .insert_if_absent(&KEY_PACKAGES, &k(me), &key, p, None)
                .await?;
        }
        if let Some(p) = last_resort {
            // The new one first, then the device's earlier ones go: the device always
            // has one.
            let key = package_key(device, p, true);
            self.store
                .insert_if_absent(&KEY_PACKAGES, &k(me), &key, p, None)
                .await?;
            for row in &stored.rows {
                let same_device = KeyReader::new(&row.clustering).str().as_deref() == Some(device);
                if same_device && is_last_resort(&row.clustering) && row.clustering != key {
                    self.store
                        .delete(&KEY_PACKAGES, &k(me), &row.clustering)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// [`Chat::claim_key_packages_within`]'s packages only (tests, tools).
    pub async fn claim_key_packages(&self, me: u64, users: &[u64]) -> Result<Vec<KeyPackage>> {
        Ok(self.claim_key_packages_within(me, users).await?.0)
    }

    /// One key package of each device of each of `users` (who must accept messages
    /// from `me`), for as many whole users as fit one answer (160 KiB), and the users
    /// left out (claim them again). Every user is checked before any package is handed
    /// out, so a refused claim uses up nothing.
    pub async fn claim_key_packages_within(
        &self,
        me: u64,
        users: &[u64],
    ) -> Result<(Vec<KeyPackage>, Vec<u64>)> {
        if users.is_empty() || users.len() > MAX_CLAIM {
            return Err(Error::InvalidArgument { field: "user_ids" });
        }
        self.rates.check(me, super::Costly::Claim)?;
        // Each user once: a repeated id would hand out (and use up) another package.
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        for &user in &users {
            if user == me {
                continue;
            }
            if tables::graph::blocked_either_way(&self.store, me, user).await? {
                return Err(Error::Blocked);
            }
            let settings = tables::users::settings(&self.store, user).await?;
            if !tables::users::permits(&self.store, user, me, settings.who_can_message).await? {
                return Err(Error::Forbidden(
                    "this user does not accept messages from you",
                ));
            }
        }
        let mut out = Vec::with_capacity(users.len());
        let mut budget = CLAIM_BYTES;
        for (i, &user) in users.iter().enumerate() {
            match self.claim_devices(me, user, &mut budget).await? {
                Some(packages) => out.extend(packages),
                None => return Ok((out, users[i..].to_vec())),
            }
        }
        Ok((out, Vec::new()))
    }

    /// One key package of each of `user`'s devices: a device's first package is handed
    /// out and deleted (a conditional delete, so two claimers never get the same one),
    /// except a device's last, which stays as its last resort. `claimer` takes one
    /// ordinary package of a device per [`tables::chat::CLAIM_WINDOW`] (on any node),
    /// and the last resort meanwhile: nobody drains another user's packages.
    /// `None` (handing out nothing) when the user's packages might exceed what is left of
    /// `budget`: the answer must fit one frame, and the caller claims the user again.
    async fn claim_devices(
        &self,
        claimer: u64,
        user: u64,
        budget: &mut usize,
    ) -> Result<Option<Vec<KeyPackage>>> {
        let stored = self
            .store
            .scan(&KEY_PACKAGES, &k(user), &Scan::all(MAX_STORED + 1))
            .await?;
        // Rows are ordered by (device, digest): each device's rows are together.
        let mut devices: Vec<(String, Vec<&selfie_storage::Row>)> = Vec::new();
        for row in &stored.rows {
            let device = KeyReader::new(&row.clustering)
                .str()
                .ok_or(Error::Corrupt("key package"))?;
            match devices.last_mut() {
                Some((d, rows)) if *d == device => rows.push(row),
                _ => devices.push((device, vec![row])),
            }
        }
        devices.truncate(MAX_DEVICES);
        // The most this user's answer can take (whichever package of a device is handed
        // out), with each entry's framing.
        let cost = |device: &str, row: &selfie_storage::Row| {
            row.value.len() + device.len() + ENTRY_OVERHEAD
        };
        let most: usize = devices
            .iter()
            .map(|(d, rows)| rows.iter().map(|r| cost(d, r)).max().unwrap_or(0))
            .sum();
        if most > *budget {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (device, rows) in devices {
            // Whether `claimer` may take one of the device's ordinary packages: once per
            // CLAIM_WINDOW, fleet-wide (the mark goes in before the package goes out).
            let (mut fresh, mut fresh_taken) = (None, false);
            for (i, row) in rows.iter().enumerate() {
                // A last-resort package (marked, or the device's last) stays; any other
                // is handed out once (lost to another claimer: the device's next one).
                let last_resort = is_last_resort(&row.clustering) || i + 1 == rows.len();
                if !last_resort {
                    let allowed = match fresh {
                        Some(allowed) => allowed,
                        None => {
                            let allowed = claimer == user
                                || self
                                    .store
                                    .insert_if_absent(
                                        &KEY_PACKAGE_CLAIMS,
                                        &k(user),
                                        &KeyBuilder::new().u64(claimer).str(&device).build(),
                                        &[1],
                                        None,
                                    )
                                    .await?;
                            *fresh.insert(allowed)
                        }
                    };
                    if !allowed
                        || !self
                            .store
                            .delete_if_present(&KEY_PACKAGES, &k(user), &row.clustering)
                            .await?
                    {
                        continue;
                    }
                    fresh_taken = true;
                }
                // Every ordinary package went to other claimers: the mark goes too
                // (this claimer took none, and may take one next time).
                if last_resort && fresh == Some(true) && !fresh_taken && claimer != user {
                    self.store
                        .delete_if_present(
                            &KEY_PACKAGE_CLAIMS,
                            &k(user),
                            &KeyBuilder::new().u64(claimer).str(&device).build(),
                        )
                        .await?;
                }
                *budget -= cost(&device, row);
                out.push(KeyPackage {
                    user_id: user,
                    device_id: device.clone(),
                    key_package: row.value.to_vec(),
                });
                break;
            }
        }
        Ok(Some(out))
    }

    /// Accepts an MLS commit made in `epoch` (and its Welcome for `recipients`, members
    /// already) when the group is still in that epoch.
    pub async fn mls_commit(
        &self,
        me: u64,
        id: u64,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Vec<u8>,
        recipients: Vec<u64>,
    ) -> Result<Sent> {
        if commit.is_empty() || commit.len() > super::MAX_MLS_BYTES {
            return Err(Error::InvalidArgument { field: "commit" });
        }
        if welcome.len() > super::MAX_MLS_BYTES || welcome.is_empty() != recipients.is_empty() {
            return Err(Error::InvalidArgument { field: "welcome" });
        }
        // The same commit sent again (its answer was lost) is recognised among the
        // head's recent sends and answered as the first time, before the epoch check
        // would refuse it.
        let hash = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(&commit);
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            super::txn_hash(me, &format!("mls-commit:{hex}"))
        };
        let _g = self.locks.lock((id, 0)).await;
        let (rec, member) = self.membership(id, me).await?;
        if !rec.encrypted {
            return Err(Error::InvalidArgument {
                field: "conversation_id",
            });
        }
        if member.state != MemberState::Active {
            return Err(Error::Forbidden("answer the message request first"));
        }
        for &r in &recipients {
            if self.member(id, r).await?.is_none() {
                return Err(Error::InvalidArgument {
                    field: "welcome_recipients",
                });
            }
        }
        let welcome_to = recipients.clone();
        let now = self.now();
        let message = |content_type, data, recipients| {
            Entry::Message(Message {
                message_id: self.next_id(),
                seq: 0,
                sender_id: me,
                client_msg_id: String::new(),
                kind: MessageKind::Mls,
                text: String::new(),
                media_ids: Vec::new(),
                reply_to_seq: 0,
                ref_id: 0,
                thread_seq: 0,
                forwarded: false,
                created_at_ms: now,
                edited_at_ms: 0,
                edit_count: 0,
                deleted: false,
                reactions: Vec::new(),
                mls: Some(Mls {
                    epoch,
                    content_type,
                    data,
                    recipients,
                }),
            })
        };
        let mut entries = vec![message(mls_content::COMMIT, commit, Vec::new())];
        if !welcome.is_empty() {
            entries.push(message(mls_content::WELCOME, welcome, recipients));
        }
        let first_id = match &entries[0] {
            Entry::Message(m) => m.message_id,
            Entry::Event(_) => 0,
        };
        // The members checked above may have changed on another node since: the head
        // names those removed even where their rows have not caught up.
        let check = |h: &Head| {
            if h.left.contains(&me) {
                Err(Error::NotFound("conversation"))
            } else if welcome_to.iter().any(|r| h.left.contains(r)) {
                Err(Error::InvalidArgument {
                    field: "welcome_recipients",
                })
            } else if h.mls_epoch == epoch {
                Ok(())
            } else {
                Err(Error::Stale("another commit took this epoch"))
            }
        };
        let appended = self
            .append_once(
                id,
                entries.clone(),
                Some(hash),
                &check,
                |h, seqs| {
                    h.mls_epoch = epoch + 1;
                    h.recent.push((hash, seqs[0]));
                    let extra = h.recent.len().saturating_sub(super::RECENT_TXNS);
                    h.recent.drain(..extra);
                },
                |_| Ok(Vec::new()),
            )
            .await?;
        let seqs = match appended {
            super::Appended::Done(seqs) => seqs,
            super::Appended::Exists => {
                let head = self.head(id).await?;
                let seq = head
                    .recent
                    .iter()
                    .find(|(h, _)| *h == hash)
                    .map(|(_, s)| *s)
                    .ok_or(Error::Busy)?;
                return match self.entry(id, seq).await? {
                    Some(Entry::Message(m)) => Ok(Sent {
                        message_id: m.message_id,
                        seq,
                        created_at_ms: m.created_at_ms,
                        duplicate: true,
                    }),
                    _ => Err(Error::Busy),
                };
            }
        };
        for (seq, entry) in seqs.iter().zip(entries) {
            self.push_entry(id, vec![*seq], entry).await?;
        }
        Ok(Sent {
            message_id: first_id,
            seq: seqs[0],
            created_at_ms: now,
            duplicate: false,
        })
    }
}
