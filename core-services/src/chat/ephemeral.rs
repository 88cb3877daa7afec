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
//!   every [`PRESENCE_WRITE_EVERY`] unless the status changes, and at most
//!   [`PRESENCE_CHANGES`] changes per [`PRESENCE_WINDOW`]) and reaches the partners of
//!   the user's direct conversations where both sides are active members (never a
//!   pending or declined request, never across a block). `Invisible` is stored and shown
//!   as `Offline` and keeps the last activity it had.
//!   A status older than [`PRESENCE_STALE_MS`] reads as `Offline`: devices repeat theirs
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
/// Presence changes (a write and a fan-out each) one user may make per
/// [`PRESENCE_WINDOW`] on a shard; more are refused with `RateLimited`.
pub const PRESENCE_CHANGES: u32 = 10;
/// The window of [`PRESENCE_CHANGES`].
pub const PRESENCE_WINDOW: Duration = Duration::from_secs(60);
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
    presence: HashMap<u64, PresenceMemo>,
}

/// What a shard remembers of a user's last presence write.
struct PresenceMemo {
    status: u8,
    written: Instant,
    /// When the current rate window started.
    window_start: Instant,
    /// Status changes in the current window.
    changes: u32,
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
            // Whatever the state it says (a client flipping start and stop gets past the
            // repeat check above) and whether or not `me` is a member; a refused signal
            // is not remembered (its retry is not taken for a repeat).
            self.rates.check(me, super::Costly::Typing)?;
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
            let now = Instant::now();
            if memo.presence.len() >= MEMO_MAX {
                // Forget only users whose rate window is over: clearing everyone would
                // hand a user flapping their status a fresh window.
                memo.presence
                    .retain(|_, p| now.duration_since(p.window_start) < PRESENCE_WINDOW);
                if memo.presence.len() >= MEMO_MAX {
                    memo.presence.clear();
                }
            }
            if let Some(p) = memo.presence.get_mut(&me) {
                let since = now.duration_since(p.written);
                if p.status == shown && since < PRESENCE_WRITE_EVERY {
                    return Ok(());
                }
                // A change costs a write and a fan-out: at most PRESENCE_CHANGES per
                // window, whatever the status alternates between (keep-alives of the same
                // status are already spaced by PRESENCE_WRITE_EVERY).
                if p.status != shown {
                    let in_window = now.duration_since(p.window_start);
                    if in_window >= PRESENCE_WINDOW {
                        p.window_start = now;
                        p.changes = 0;
                    }
                    if p.changes >= PRESENCE_CHANGES {
                        return Err(Error::RateLimited(
                            PRESENCE_WINDOW.saturating_sub(in_window),
                        ));
                    }
                    p.changes += 1;
                }
                p.status = shown;
                p.written = now;
            } else {
                memo.presence.insert(
                    me,
                    PresenceMemo {
                        status: shown,
                        written: now,
                        window_start: now,
                        changes: 0,
                    },
                );
            }
        }
        let now = self.now();
        // Invisible keeps the last activity it had: hiding must not say "active now".
        let last_active_ms = if status == status::INVISIBLE {
            match self.store.get(&PRESENCE, &k(me), &[]).await? {
                // Hidden already: a repeat says nothing new (no write, no fan-out).
                Some(v) => {
                    let stored: Presence = decode("presence", &v)?;
                    if stored.status == status::OFFLINE {
                        return Ok(());
                    }
                    stored.last_active_ms
                }
                None => 0,
            }
        } else {
            now
        };
        let row = Presence {
            status: shown,
            last_active_ms,
        };
        self.store
            .put(&PRESENCE, &k(me), &[], &encode("presence", &row)?, None)
            .await?;
        let settings = tables::users::settings(&self.store, me).await?;
        if !settings.show_activity_status {
            return Ok(());
        }
        let targets = self.presence_audience(me).await?;
        let delivery = self.delivery()?.clone();
        let frame = super::wire::presence_frame(&delivery, me, shown, last_active_ms)?;
        self.signal(&delivery, &targets, frame).await;
        Ok(())
    }

    /// Who receives `me`'s presence: the partners of `me`'s direct conversations where
    /// both sides are active members (not a pending or declined request), who show
    /// activity status themselves and have no block with `me`.
    pub async fn presence_audience(&self, me: u64) -> Result<Vec<u64>> {
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
            let members = self.members(id).await?;
            let active = |u: u64| {
                members
                    .iter()
                    .any(|(m, r)| *m == u && r.state == MemberState::Active)
            };
            if !active(me) {
                continue;
            }
            for (user, _) in &members {
                if *user != me && active(*user) && self.shares_presence(me, *user).await? {
                    targets.push(*user);
                }
            }
        }
        Ok(targets)
    }

    /// Whether `a` and `b` may see each other's presence at all: both show activity
    /// status and there is no block either way.
    async fn shares_presence(&self, a: u64, b: u64) -> Result<bool> {
        Ok(tables::users::settings(&self.store, a)
            .await?
            .show_activity_status
            && tables::users::settings(&self.store, b)
                .await?
                .show_activity_status
            && !tables::graph::blocked_either_way(&self.store, a, b).await?)
    }

    /// `user`'s presence as `viewer` may see it (`None` when either side hides it or a
    /// block stands between them). Callers show it only to fellow active members.
    pub async fn presence_for(&self, viewer: u64, user: u64) -> Result<Option<Presence>> {
        if viewer != user && !self.shares_presence(viewer, user).await? {
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
