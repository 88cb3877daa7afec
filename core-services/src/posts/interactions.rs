//! Reactions (one per user per post, counted per emoji) and reposts (once per user,
//! undoable). A post's interactions are routed to the post's owner shard, where one
//! user's changes to one post take turns; totals are claimed with insert-if-absent, so
//! they stay exact across nodes too.

use bytes::Bytes;
use selfie_storage::key::KeyReader;
use selfie_storage::{Cell, Commit, Condition, Cursor, Scan, Store};

use super::{Audience, AuthorView, Count, MAX_REACTION_KINDS, Post, Posts, ReplyPolicy, counter};
use crate::tables::notifications::{Kind, Target};
use crate::tables::posts::{COUNTS, REACTION_KINDS, REACTIONS, REPOSTS, USER_POSTS};
use crate::tables::{self, id_value, key as k, name_key};
use crate::{Error, Result};

/// A user's reaction, for [`Posts::reactions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// Who reacted.
    pub user_id: u64,
    /// With what.
    pub emoji: String,
}

/// The counter of one emoji's reactions (`r:` keeps them apart from the named counters).
fn emoji_counter(emoji: &str) -> Bytes {
    name_key(&format!("r:{emoji}"))
}

impl<S: Store + 'static> Posts<S> {
    /// Sets the viewer's reaction on a readable post (one per user; a new one replaces).
    pub async fn react(&self, viewer: u64, post_id: u64, emoji: &str) -> Result<()> {
        let post = self.live(viewer, post_id).await?;
        // An emoji: short, no control characters or spaces, and not plain ASCII text.
        if emoji.is_empty()
            || emoji.chars().count() > 8
            || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
            || emoji.is_ascii()
        {
            return Err(Error::InvalidArgument { field: "emoji" });
        }
        let _one = self.locks.lock((post_id, viewer)).await;
        self.store
            .put(&REACTION_KINDS, &k(post_id), &counter(emoji), b"", None)
            .await?;
        // A first reaction is claimed (the total moves exactly once, whichever node
        // wins); a later one replaces the emoji. If the reaction vanishes between the two
        // (an unreact on another node), claim again.
        let row = Cell::new(&REACTIONS, k(post_id), k(viewer));
        let emoji_cell = Cell::new(&COUNTS, k(post_id), emoji_counter(emoji));
        for _ in 0..4 {
            // The reaction and its counters in one commit (the total recounted from the
            // reactions if a failure cuts it short on CQL).
            let first = Commit::new()
                .when(Condition::Absent {
                    row: row.clone(),
                    value: Bytes::copy_from_slice(emoji.as_bytes()),
                    ttl: None,
                })
                .add(
                    Self::count_cell(post_id, Count::Reactions),
                    1,
                    Some((&REACTIONS, k(post_id))),
                )
                .add(emoji_cell.clone(), 1, None);
            if self.store.commit(&first).await? {
                self.engaged(
                    post.author_id,
                    viewer,
                    Kind::Reaction,
                    Target::Post(post_id),
                )
                .await?;
                self.notify(post_id, Count::Reactions, 1).await?;
                return Ok(());
            }
            let Some(before) = self.store.get(&REACTIONS, &k(post_id), &k(viewer)).await? else {
                continue;
            };
            if before.as_ref() == emoji.as_bytes() {
                return Ok(());
            }
            let old = String::from_utf8_lossy(&before).into_owned();
            let replace = Commit::new()
                .when(Condition::Equals {
                    row: row.clone(),
                    expected: before.clone(),
                    new: Some(Bytes::copy_from_slice(emoji.as_bytes())),
                    ttl: None,
                })
                .add(emoji_cell.clone(), 1, None)
                .add(
                    Cell::new(&COUNTS, k(post_id), emoji_counter(&old)),
                    -1,
                    None,
                );
            if self.store.commit(&replace).await? {
                self.forget_unused_emoji(post_id, &old).await?;
                return Ok(());
            }
        }
        Err(Error::Busy)
    }

    /// Forgets the kind `emoji` once no reaction uses it.
    async fn forget_unused_emoji(&self, post_id: u64, emoji: &str) -> Result<()> {
        if self
            .store
            .counter_get(&COUNTS, &k(post_id), &emoji_counter(emoji))
            .await?
            <= 0
        {
            self.store
                .delete(&REACTION_KINDS, &k(post_id), &counter(emoji))
                .await?;
        }
        Ok(())
    }

    /// Removes the viewer's reaction.
    pub async fn unreact(&self, viewer: u64, post_id: u64) -> Result<()> {
        let _one = self.locks.lock((post_id, viewer)).await;
        let Some(old) = self.store.get(&REACTIONS, &k(post_id), &k(viewer)).await? else {
            return Ok(());
        };
        let emoji = String::from_utf8_lossy(&old).into_owned();
        let remove = Commit::new()
            .when(Condition::Equals {
                row: Cell::new(&REACTIONS, k(post_id), k(viewer)),
                expected: old,
                new: None,
                ttl: None,
            })
            .add(
                Self::count_cell(post_id, Count::Reactions),
                -1,
                Some((&REACTIONS, k(post_id))),
            )
            .add(
                Cell::new(&COUNTS, k(post_id), emoji_counter(&emoji)),
                -1,
                None,
            );
        if self.store.commit(&remove).await? {
            self.forget_unused_emoji(post_id, &emoji).await?;
            self.notify(post_id, Count::Reactions, -1).await?;
        }
        Ok(())
    }

    /// The reactions on a post the viewer may read: counts per emoji (most used first, at
    /// most [`MAX_REACTION_KINDS`]) and a page of who reacted with what (optionally one
    /// emoji only), leaving out users across a block with the viewer and deleted accounts.
    pub async fn reactions(
        &self,
        viewer: u64,
        post_id: u64,
        only: Option<&str>,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<(String, i64)>, Vec<Reaction>, Option<Cursor>)> {
        self.readable(viewer, post_id).await?;
        // Kinds in use (a kind goes when its last reaction does); the most used listed.
        let kinds = self
            .store
            .scan(
                &REACTION_KINDS,
                &k(post_id),
                &Scan::all(4 * MAX_REACTION_KINDS),
            )
            .await?;
        let mut counts = Vec::new();
        for r in &kinds.rows {
            let Some(emoji) = KeyReader::new(&r.clustering).str() else {
                continue;
            };
            let n = self
                .store
                .counter_get(&COUNTS, &k(post_id), &emoji_counter(&emoji))
                .await?;
            if n > 0 {
                counts.push((emoji, n));
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts.truncate(MAX_REACTION_KINDS);
        let page = self
            .store
            .scan(&REACTIONS, &k(post_id), &Scan::all(limit).after(cursor))
            .await?;
        let mut entries = Vec::new();
        for r in &page.rows {
            let Some(user_id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            let emoji = String::from_utf8_lossy(&r.value).into_owned();
            if only.is_some_and(|o| o != emoji)
                || tables::graph::blocked_either_way(&self.store, viewer, user_id).await?
                || tables::users::live_profile(&self.store, user_id)
                    .await?
                    .is_none()
            {
                continue;
            }
            entries.push(Reaction { user_id, emoji });
        }
        Ok((counts, entries, page.cursor))
    }

    /// The viewer's reaction on a post, if any.
    pub async fn viewer_reaction(&self, viewer: u64, post_id: u64) -> Result<Option<String>> {
        Ok(self
            .store
            .get(&REACTIONS, &k(post_id), &k(viewer))
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Whether the viewer reposted a post.
    pub async fn viewer_reposted(&self, viewer: u64, post_id: u64) -> Result<bool> {
        Ok(self
            .store
            .get(&REPOSTS, &k(post_id), &k(viewer))
            .await?
            .is_some())
    }

    /// Reposts a public post the viewer may read (followers-only posts stay with their
    /// audience).
    pub async fn repost(&self, viewer: u64, post_id: u64) -> Result<Post> {
        crate::tables::users::refuse_deleted(&self.store, viewer).await?;
        let original = self.load(post_id).await?.ok_or(Error::NotFound("post"))?;
        let view = self.author_view(viewer, original.author_id).await?;
        if original.deleted || !view.allows(viewer, &original) {
            return Err(Error::NotFound("post"));
        }
        let private = matches!(view, AuthorView::Other { private: true, .. });
        if original.audience != Audience::Public || private || original.repost_of.is_some() {
            return Err(Error::InvalidArgument { field: "post_id" });
        }
        let _one = self.locks.lock((post_id, viewer)).await;
        let repost_id = self.next_id();
        let post = Post {
            post_id: repost_id,
            author_id: viewer,
            text: String::new(),
            hashtags: Vec::new(),
            mentions: Vec::new(),
            audience: Audience::Public,
            quote_of: None,
            repost_of: Some(post_id),
            created_at_ms: self.clock.now_ms(),
            edited_at_ms: 0,
            deleted: false,
            media_ids: Vec::new(),
            reply_policy: ReplyPolicy::Nobody,
            sensitive: false,
            edit_count: 0,
        };
        // The claim, the repost's shell, its place in the viewer's posts and both
        // counters: one commit (see `Posts::publish`).
        let commit = Commit::new()
            .when(Condition::Absent {
                row: Cell::new(&REPOSTS, k(post_id), k(viewer)),
                value: k(repost_id),
                ttl: None,
            })
            .put(
                Cell::new(&super::POSTS, k(repost_id), Bytes::new()),
                crate::tables::encode("post", &post)?,
                None,
            )
            .put(
                Cell::new(&USER_POSTS, k(viewer), k(repost_id)),
                Bytes::new(),
                None,
            )
            .add(
                Self::author_posts_cell(viewer),
                1,
                Some((&USER_POSTS, k(viewer))),
            )
            .add(
                Self::count_cell(post_id, Count::Reposts),
                1,
                Some((&REPOSTS, k(post_id))),
            );
        let commit = self.with_job(commit, &post);
        if !self.store.commit(&commit).await? {
            // Reposting twice is one repost: the first is the answer.
            let first = self
                .store
                .get(&REPOSTS, &k(post_id), &k(viewer))
                .await?
                .and_then(|v| id_value(&v))
                .ok_or(Error::Corrupt("repost"))?;
            return self.load(first).await?.ok_or(Error::Corrupt("repost"));
        }
        self.fan_out(&post);
        self.engaged(
            original.author_id,
            viewer,
            Kind::Repost,
            Target::Post(post_id),
        )
        .await?;
        self.notify(post_id, Count::Reposts, 1).await?;
        Ok(post)
    }

    /// Undoes the viewer's repost of `post_id` (the repost disappears from their posts).
    pub async fn undo_repost(&self, viewer: u64, post_id: u64) -> Result<()> {
        let _one = self.locks.lock((post_id, viewer)).await;
        let Some(v) = self.store.get(&REPOSTS, &k(post_id), &k(viewer)).await? else {
            return Ok(());
        };
        let repost_id = id_value(&v).ok_or(Error::Corrupt("repost"))?;
        let mut commit = Commit::new()
            .when(Condition::Equals {
                row: Cell::new(&REPOSTS, k(post_id), k(viewer)),
                expected: v,
                new: None,
                ttl: None,
            })
            .delete(Cell::new(&USER_POSTS, k(viewer), k(repost_id)))
            .add(
                Self::author_posts_cell(viewer),
                -1,
                Some((&USER_POSTS, k(viewer))),
            )
            .add(
                Self::count_cell(post_id, Count::Reposts),
                -1,
                Some((&REPOSTS, k(post_id))),
            );
        if let Some(mut shell) = self.load(repost_id).await? {
            shell.deleted = true;
            commit = commit.put(
                Cell::new(&super::POSTS, k(repost_id), Bytes::new()),
                crate::tables::encode("post", &shell)?,
                None,
            );
        }
        if self.store.commit(&commit).await? {
            self.notify(post_id, Count::Reposts, -1).await?;
        }
        Ok(())
    }

    /// A counter of a post: `reactions`, `comments`, `reposts` or `quotes`.
    pub async fn count(&self, post_id: u64, which: &str) -> Result<i64> {
        Ok(self
            .store
            .counter_get(&COUNTS, &k(post_id), &counter(which))
            .await?)
    }
}
