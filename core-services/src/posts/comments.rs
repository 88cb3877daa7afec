//! Comments and replies (one level): who may comment is the stricter of the post's reply
//! policy and its author's `who_can_comment` setting; a comment is edited by its author and
//! deleted by its author or the post's author, leaving a tombstone that keeps its replies
//! in place. Across a block a comment does not exist, except for the post's author.

use bytes::Bytes;
use selfie_storage::{Cell, Commit, Condition, Cursor, Scan, Store};
use serde::{Deserialize, Serialize};

use super::{Count, MAX_COMMENT_CHARS, Post, Posts, ReplyPolicy};
use crate::tables::notifications::{Kind, Target};
use crate::tables::posts::{COMMENT_POSTS, COMMENTS};
use crate::tables::{self, decode, encode, id_value, key as k};
use crate::{Error, Result};

/// A comment (or a reply to one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Id.
    pub comment_id: u64,
    /// The post.
    pub post_id: u64,
    /// The comment replied to, 0 for a top-level comment.
    pub parent_id: u64,
    /// Author.
    pub author_id: u64,
    /// Text.
    pub text: String,
    /// Creation time.
    pub created_at_ms: u64,
    /// Last edit, 0 when never edited.
    #[serde(default)]
    pub edited_at_ms: u64,
    /// Deleted by its author or the post's author (kept as a tombstone for its replies).
    #[serde(default)]
    pub deleted: bool,
}

impl<S: Store + 'static> Posts<S> {
    /// Whether `viewer` may comment on `post`, which they can read.
    async fn may_comment(&self, viewer: u64, post: &Post) -> Result<bool> {
        let author = post.author_id;
        if viewer == author {
            return Ok(true);
        }
        let by_policy = match post.reply_policy {
            ReplyPolicy::Everyone => true,
            ReplyPolicy::Followers => tables::graph::follows(&self.store, viewer, author).await?,
            ReplyPolicy::Mentioned => post.mentions.contains(&viewer),
            ReplyPolicy::Nobody => false,
        };
        Ok(by_policy && self.admits(author, viewer, |s| s.who_can_comment).await?)
    }

    /// Comments on a readable post; `parent_id` 0 for top level, else a top-level comment
    /// of the same post (one level of replies).
    pub async fn comment(
        &self,
        viewer: u64,
        post_id: u64,
        parent_id: u64,
        text: &str,
    ) -> Result<Comment> {
        self.comment_once(viewer, post_id, parent_id, text, None)
            .await
    }

    /// [`Posts::comment`] with the client's idempotency key: a retry with the same key
    /// returns the first comment instead of adding another.
    pub async fn comment_once(
        &self,
        viewer: u64,
        post_id: u64,
        parent_id: u64,
        text: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Comment> {
        let remembered = match idempotency_key {
            Some(key) => Some(super::idempotency_cell(viewer, "comment", key)?),
            None => None,
        };
        if let Some(cell) = &remembered
            && let Some(first) = self.first_created(cell).await?
        {
            return self.created_comment(post_id, first).await;
        }
        let post = self.live(viewer, post_id).await?;
        if post.repost_of.is_some() {
            return Err(Error::InvalidArgument { field: "post_id" });
        }
        if !self.may_comment(viewer, &post).await? {
            return Err(Error::Forbidden("comments are limited on this post"));
        }
        if text.trim().is_empty() || text.chars().count() > MAX_COMMENT_CHARS {
            return Err(Error::InvalidArgument { field: "text" });
        }
        let mut parent_author = None;
        if parent_id != 0 {
            let parent = self
                .store
                .get(&COMMENTS, &k(post_id), &k(parent_id))
                .await?
                .ok_or(Error::InvalidArgument { field: "parent_id" })?;
            let parent: Comment = decode("comment", &parent)?;
            if parent.parent_id != 0 || parent.deleted {
                return Err(Error::InvalidArgument { field: "parent_id" });
            }
            parent_author = Some(parent.author_id);
        }
        let c = Comment {
            comment_id: self.next_id(),
            post_id,
            parent_id,
            author_id: viewer,
            text: text.to_string(),
            created_at_ms: self.clock.now_ms(),
            edited_at_ms: 0,
            deleted: false,
        };
        // The comment, its index entry and the count: one commit (all or nothing on the
        // embedded store). The count includes no tombstones, so CQL cannot recount it
        // from the rows; a commit cut short there leaves it off by one.
        let indexed = Cell::new(&COMMENT_POSTS, k(c.comment_id), Bytes::new());
        let commit = match &remembered {
            Some(cell) => Commit::new()
                .when(Condition::Absent {
                    row: cell.clone(),
                    value: k(c.comment_id),
                    ttl: None,
                })
                .put(indexed, k(post_id), None),
            None => Commit::new().when(Condition::Absent {
                row: indexed,
                value: k(post_id),
                ttl: None,
            }),
        };
        let commit = commit
            .put(
                Cell::new(&COMMENTS, k(post_id), k(c.comment_id)),
                encode("comment", &c)?,
                None,
            )
            .add(Self::count_cell(post_id, Count::Comments), 1, None);
        if !self.store.commit(&commit).await? {
            let Some(cell) = &remembered else {
                return Err(Error::Internal("a fresh comment id was already taken"));
            };
            let first = self.first_created(cell).await?.ok_or(Error::Busy)?;
            return self.created_comment(post_id, first).await;
        }
        self.engaged(post.author_id, viewer, Kind::Comment, Target::Post(post_id))
            .await?;
        if let Some(a) = parent_author
            && a != post.author_id
        {
            self.engaged(a, viewer, Kind::Reply, Target::Comment(parent_id))
                .await?;
        }
        self.notify(post_id, Count::Comments, 1).await?;
        Ok(c)
    }

    /// The comment a create with the same idempotency key made (on CQL its rows follow
    /// its claim, so wait for them a little).
    async fn created_comment(&self, post_id: u64, comment_id: u64) -> Result<Comment> {
        for _ in 0..20 {
            let on = self
                .store
                .get(&COMMENT_POSTS, &k(comment_id), &[])
                .await?
                .and_then(|v| id_value(&v));
            if let Some(on) = on {
                if on != post_id {
                    // The key was first used for a comment on another post.
                    return Err(Error::InvalidArgument {
                        field: "idempotency_key",
                    });
                }
                if let Some(b) = self
                    .store
                    .get(&COMMENTS, &k(post_id), &k(comment_id))
                    .await?
                {
                    return decode("comment", &b);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Deleted since (or its commit never finished).
        Err(Error::NotFound("comment"))
    }

    /// A page of a readable post's comments, oldest first, leaving out those of authors
    /// across a block with the viewer and of deleted accounts.
    pub async fn comments(
        &self,
        viewer: u64,
        post_id: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Comment>, Option<Cursor>)> {
        self.readable(viewer, post_id).await?;
        let page = self
            .store
            .scan(&COMMENTS, &k(post_id), &Scan::all(limit).after(cursor))
            .await?;
        let mut out = Vec::new();
        for r in &page.rows {
            let c: Comment = decode("comment", &r.value)?;
            if !tables::graph::blocked_either_way(&self.store, viewer, c.author_id).await?
                && tables::users::live_profile(&self.store, c.author_id)
                    .await?
                    .is_some()
            {
                out.push(c);
            }
        }
        Ok((out, page.cursor))
    }

    /// Edits the viewer's own comment.
    pub async fn edit_comment(&self, viewer: u64, comment_id: u64, text: &str) -> Result<Comment> {
        let _one = self.locks.lock((comment_id, 0)).await;
        let (post_id, mut c) = self.find_comment(viewer, comment_id).await?;
        if c.author_id != viewer {
            return Err(Error::Forbidden("only the author may do this"));
        }
        self.live(viewer, post_id).await?;
        if text.trim().is_empty() || text.chars().count() > MAX_COMMENT_CHARS {
            return Err(Error::InvalidArgument { field: "text" });
        }
        c.text = text.to_string();
        c.edited_at_ms = self.clock.now_ms();
        let b = encode("comment", &c)?;
        self.store
            .put(&COMMENTS, &k(post_id), &k(comment_id), &b, None)
            .await?;
        Ok(c)
    }

    /// Deletes a comment: its author may, and so may the post's author (on their own
    /// post). It stays as a tombstone for its replies.
    pub async fn delete_comment(&self, viewer: u64, comment_id: u64) -> Result<()> {
        let _one = self.locks.lock((comment_id, 0)).await;
        let (post_id, mut c) = self.find_comment(viewer, comment_id).await?;
        let post = self.readable(viewer, post_id).await?;
        if c.author_id != viewer && post.author_id != viewer {
            return Err(Error::Forbidden("only the author may do this"));
        }
        // The index entry goes only once, with the tombstone and the count.
        c.deleted = true;
        c.text.clear();
        let commit = Commit::new()
            .when(Condition::Present {
                row: Cell::new(&COMMENT_POSTS, k(comment_id), Bytes::new()),
            })
            .put(
                Cell::new(&COMMENTS, k(post_id), k(comment_id)),
                encode("comment", &c)?,
                None,
            )
            .add(Self::count_cell(post_id, Count::Comments), -1, None);
        if !self.store.commit(&commit).await? {
            return Err(Error::NotFound("post"));
        }
        self.notify(post_id, Count::Comments, -1).await?;
        Ok(())
    }

    /// A live comment and its post, if the viewer may read the post (`NotFound` otherwise).
    async fn find_comment(&self, viewer: u64, comment_id: u64) -> Result<(u64, Comment)> {
        let post_id = self
            .store
            .get(&COMMENT_POSTS, &k(comment_id), &[])
            .await?
            .and_then(|v| id_value(&v))
            .ok_or(Error::NotFound("post"))?;
        let post = self.readable(viewer, post_id).await?;
        let c: Comment = self
            .store
            .get(&COMMENTS, &k(post_id), &k(comment_id))
            .await?
            .map(|b| decode("comment", &b))
            .transpose()?
            .ok_or(Error::NotFound("post"))?;
        // Across a block a comment does not exist — except for the post's author, who can
        // still remove a blocked user's comment from their post.
        if c.deleted
            || (viewer != post.author_id
                && tables::graph::blocked_either_way(&self.store, viewer, c.author_id).await?)
        {
            return Err(Error::NotFound("post"));
        }
        Ok((post_id, c))
    }
}
