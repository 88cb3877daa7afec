//! Typing and presence: latest-wins signals that travel as QUIC datagrams and are never
//! part of a conversation's log.
//!
//! A session sends `Typing` and `Presence` datagrams; the edge hands them here (through
//! [`crate::plane::Datagrams`]) after its per-connection rate limit. They are published
//! on each recipient's `Presence` topic, whose subscribers get them as datagrams again
//! (the topic's sequence becomes the datagram's `seq`, so a receiver keeps the newest).
//!
//! - **Typing** reaches the conversation's other active members who have no block with
//!   the typist; a repeat of the same state within [`TYPING_REPEAT`] is dropped.
//! - **Presence** is stored as the user's last status and activity (written at most
//!   every [`PRESENCE_WRITE_EVERY`] unless the status changes) and reaches the people the
//!   user has direct conversations with. `Invisible` is stored and shown as `Offline`.
//!   A status older than [`PRESENCE_STALE`] reads as `Offline`: devices repeat theirs
//!   while in the foreground.
//! - **Privacy**: a user who turned `show_activity_status` off sends no presence to
//!   anyone and shows none; such a user sees nobody's either (checked on every read).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use selfie_protocol::control::SubscriptionKind;
use selfie_storage::Store;
use serde::{Deserialize, Serialize};

use super::{Chat, MemberState};
use crate::plane::Topic;
use crate::tables::chat::PRESENCE;
use crate::tables::{self, decode, encode, key as k};
use crate::{Error, Result};

/// The same typing state again within this is dropped.
pub const TYPING_REPEAT: Duration = Duration::from_secs(2);
/// A user's presence row is rewritten at most this often unless the status changes.
pub const PRESENCE_WRITE_EVERY: Duration = Duration::from_secs(30);
/// An `Online` (or `Away`, `Busy`) status older than this reads as `Offline`.
pub const PRESENCE_STALE_MS: u64 = 90_000;
/// Direct conversations whose partners a presence change reaches, at most.
const PRESENCE_FANOUT: usize = 500;
/// Entries the shard-local memos hold before they are cleared.
const MEMO_MAX: usize = 16_384;

/// Presence statuses, as the protocol numbers them.
pub mod status {
    /// Not connected (or hidden).
    pub const OFFLINE: u8 = 0;
    /// Online.
    pub const ONLINE: u8 = 1;
    /// Hidden: stored and shown as offline.
    pub const INVISIBLE: u8 = 4;
    /// The highest known status.
    pub const MAX: u8 = 4;
}

/// A user's stored presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The status (the protocol's numbers).
    pub status: u8,
    /// When the user was last active.
    pub last_active_ms: u64,
}

/// Shard-local memory of recent signals (bounded; cleared when full).
#[derive(Default)]
pub(super) struct Memo {
    typing: HashMap<(u64, u64), (bool, Instant)>,
    presence: HashMap<u64, (u8, Instant)>,
}

impl<S: Store + 'static> Chat<S> {
    /// `me` started or stopped typing in `id`.
    pub async fn typing(&self, me: u64, id: u64, typing: bool) -> Result<()> {
        {
            let mut memo = self.memo.borrow_mut();
            if memo.typing.len() >= MEMO_MAX {
                memo.typing.clear();
            }
            let now = Instant::now();
            if let Some((was, at)) = memo.typing.get(&(me, id))
                && *was == typing
                && now.duration_since(*at) < TYPING_REPEAT
            {
                return Ok(());
            }
            memo.typing.insert((me, id), (typing, now));
        }
        let member = self
            .member(id, me)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        if member.state != MemberState::Active {
            return Err(Error::NotFound("conversation"));
        }
        let mut targets = Vec::new();
        let mut memo = HashMap::new();
        for (user, m) in self.members(id).await? {
            if user != me
                && m.state == MemberState::Active
                && self.sees(&mut memo, user, me).await?
            {
                targets.push(user);
            }
        }
        let delivery = self.delivery()?.clone();
        let frame = super::wire::typing_frame(&delivery, id, me, typing, self.now())?;
        self.signal(&delivery, &targets, frame).await;
        Ok(())
    }

    /// `me`'s devices say `status`.
    pub async fn presence(&self, me: u64, status: u8) -> Result<()> {
        if status > status::MAX {
            return Err(Error::InvalidArgument { field: "status" });
        }
        let shown = if status == status::INVISIBLE {
            status::OFFLINE
        } else {
            status
        };
        {
            let mut memo = self.memo.borrow_mut();
            if memo.presence.len() >= MEMO_MAX {
                memo.presence.clear();
            }
            let now = Instant::now();
            if let Some((was, at)) = memo.presence.get(&me)
                && *was == shown
                && now.duration_since(*at) < PRESENCE_WRITE_EVERY
            {
                return Ok(());
            }
            memo.presence.insert(me, (shown, now));
        }
        let now = self.now();
        let row = Presence {
            status: shown,
            last_active_ms: now,
        };
        self.store
            .put(&PRESENCE, &k(me), &[], &encode("presence", &row)?, None)
            .await?;
        let settings = tables::users::settings(&self.store, me).await?;
        if !settings.show_activity_status {
            return Ok(());
        }
        let mut targets = Vec::new();
        for (id, _) in self.user_conversations(me).await?.into_iter() {
            if targets.len() >= PRESENCE_FANOUT {
                break;
            }
            let Some(rec) = self.conversation(id).await? else {
                continue;
            };
            if rec.kind != super::Kind::Direct {
                continue;
            }
            for (user, m) in self.members(id).await? {
                if user != me
                    && m.state == MemberState::Active
                    && tables::users::settings(&self.store, user)
                        .await?
                        .show_activity_status
                    && !tables::graph::blocked_either_way(&self.store, me, user).await?
                {
                    targets.push(user);
                }
            }
        }
        let delivery = self.delivery()?.clone();
        let frame = super::wire::presence_frame(&delivery, me, shown, now)?;
        self.signal(&delivery, &targets, frame).await;
        Ok(())
    }

    /// `user`'s presence as `viewer` may see it (`None` when either side hides it).
    pub async fn presence_for(&self, viewer: u64, user: u64) -> Result<Option<Presence>> {
        let mine = tables::users::settings(&self.store, viewer).await?;
        let theirs = tables::users::settings(&self.store, user).await?;
        if !mine.show_activity_status || !theirs.show_activity_status {
            return Ok(None);
        }
        let Some(v) = self.store.get(&PRESENCE, &k(user), &[]).await? else {
            return Ok(None);
        };
        let mut p: Presence = decode("presence", &v)?;
        if p.status != status::OFFLINE
            && self.now().saturating_sub(p.last_active_ms) > PRESENCE_STALE_MS
        {
            p.status = status::OFFLINE;
        }
        Ok(Some(p))
    }

    async fn signal(
        &self,
        delivery: &Rc<crate::plane::Delivery>,
        users: &[u64],
        frame: bytes::Bytes,
    ) {
        let sends = users.iter().map(|u| {
            let topic = Topic::new(SubscriptionKind::Presence, *u);
            delivery.publish(topic, frame.clone())
        });
        // Latest wins: a lost signal is superseded by the next one.
        for r in futures::future::join_all(sends).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "signal lost");
            }
        }
    }
}
