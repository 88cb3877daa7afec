//! Posts: create (text, media ids, hashtags and mentions parsed), edit with visible
//! history, delete; comments with one level of replies; reactions; reposts; per-post
//! audience and reply policy.
//!
//! Who may read a post is decided in one place ([`Posts::can_read`]): the author always;
//! nobody across a block or for a deleted author; otherwise by the post's audience —
//! public (for a private author: approved followers only), followers, mentioned only,
//! close friends (the author's list, followers or not). Everything that touches a post
//! (reading, history, comments, reactions, reposts) goes through it, and a post the viewer
//! may not read is `NotFound` — its existence is not revealed.
//!
//! Who may comment on a readable post is the stricter of the post's reply policy and the
//! author's `who_can_comment` setting; a mention only links (and later notifies) a user
//! whose `who_can_mention` setting admits the author.
//!
//! Media ids are stored as given (at most [`MAX_MEDIA`]): the media service that owns
//! uploads does not exist yet, so ownership of the referenced objects is not checked here.

use std::sync::Arc;

use bytes::Bytes;
use selfie_storage::id::IdGenerator;
use selfie_storage::key::{KeyBuilder, KeyReader};
use selfie_storage::{Clock, Cursor, Scan, Store, StoreError, Table, TableKind};
use serde::{Deserialize, Serialize};

use crate::graph;
use crate::users;

rows! {
    POSTS, "posts", ["post_id"], [], "posts";
    HISTORY, "posts_history", ["post_id"], ["edited_at_ms"], "earlier versions of edited posts";
    USER_POSTS, "posts_by_user", ["author_id"], ["post_id"], "a user's posts, newest last";
    COMMENTS, "posts_comments", ["post_id"], ["comment_id"], "comments and replies";
    REACTIONS, "posts_reactions", ["post_id"], ["user_id"], "one reaction per user per post";
}

/// Per-post counters: `reactions`, `comments`, `reposts`, `quotes`.
pub static COUNTS: Table = Table {
    name: "posts_counts",
    kind: TableKind::Counters,
    partition: &["post_id"],
    clustering: &["which"],
    default_ttl: None,
    doc: "post counters",
};

rows! {
    REPOSTS, "posts_reposts", ["post_id"], ["user_id"], "who reposted a post, and the repost's id";
    COMMENT_POSTS, "posts_comment_posts", ["comment_id"], [], "the post of each live comment";
    REACTION_KINDS, "posts_reaction_kinds", ["post_id"], ["emoji"], "the emoji used on a post";
}

/// The tables of reposts, comment lookups and per-emoji reaction kinds (migration 8).
pub static INTERACTION_TABLES: &[&Table] = &[&REPOSTS, &COMMENT_POSTS, &REACTION_KINDS];

/// Most emoji kinds listed with a post's reactions.
pub const MAX_REACTION_KINDS: usize = 50;

/// Most posts in one batch read.
pub const MAX_BATCH: usize = 100;

/// Per-author counters: `posts`.
pub static AUTHOR_COUNTS: Table = Table {
    name: "posts_author_counts",
    kind: TableKind::Counters,
    partition: &["author_id"],
    clustering: &["which"],
    default_ttl: None,
    doc: "per-author post counts",
};

/// The tables of the posts service in its first migration.
pub static TABLES: &[&Table] = &[
    &POSTS,
    &HISTORY,
    &USER_POSTS,
    &COMMENTS,
    &REACTIONS,
    &COUNTS,
];

/// Longest post, in characters.
pub const MAX_POST_CHARS: usize = 500;
/// Longest comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 500;
/// Most media objects on one post.
pub const MAX_MEDIA: usize = 10;

/// Who may comment on a post (besides its author, who always may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReplyPolicy {
    /// Anyone who can read it.
    #[default]
    Everyone,
    /// The author's followers.
    Followers,
    /// The users mentioned in it.
    Mentioned,
    /// Nobody.
    Nobody,
}

/// A new post, for [`Posts::publish`].
#[derive(Debug, Clone)]
pub struct NewPost {
    /// Text (may be empty when there is media).
    pub text: String,
    /// Media objects, in display order.
    pub media_ids: Vec<u64>,
    /// Audience.
    pub audience: Audience,
    /// Who may comment.
    pub reply_policy: ReplyPolicy,
    /// The quoted post, for a quote post.
    pub quote_of: Option<u64>,
    /// Marked sensitive by the author.
    pub sensitive: bool,
}

impl NewPost {
    /// A public text post.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            media_ids: Vec::new(),
            audience: Audience::Public,
            reply_policy: ReplyPolicy::Everyone,
            quote_of: None,
            sensitive: false,
        }
    }
}

/// Changes to a post, for [`Posts::edit_with`]; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PostEdit {
    /// New text.
    pub text: Option<String>,
    /// New media.
    pub media_ids: Option<Vec<u64>>,
    /// New sensitive flag.
    pub sensitive: Option<bool>,
}

/// Who may see a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// Anyone not blocked (for a public author).
    Public,
    /// The author's followers.
    Followers,
    /// Only the users mentioned in it.
    MentionedOnly,
    /// The author's close friends.
    CloseFriends,
}

/// A post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// Id (time-ordered).
    pub post_id: u64,
    /// Author.
    pub author_id: u64,
    /// Text.
    pub text: String,
    /// `#hashtags`, lower case, in order of appearance.
    pub hashtags: Vec<String>,
    /// Mentioned users that exist.
    pub mentions: Vec<u64>,
    /// Audience.
    pub audience: Audience,
    /// The quoted post, for a quote post.
    pub quote_of: Option<u64>,
    /// The reposted post, for a repost.
    pub repost_of: Option<u64>,
    /// Creation time.
    pub created_at_ms: u64,
    /// Last edit, 0 when never edited.
    pub edited_at_ms: u64,
    /// Deleted posts keep their id (replies and quotes point at them) and nothing else.
    pub deleted: bool,
    /// Media objects, in display order.
    #[serde(default)]
    pub media_ids: Vec<u64>,
    /// Who may comment.
    #[serde(default)]
    pub reply_policy: ReplyPolicy,
    /// Marked sensitive by the author.
    #[serde(default)]
    pub sensitive: bool,
    /// How many times it was edited.
    #[serde(default)]
    pub edit_count: u32,
}

/// An earlier version of an edited post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The text then.
    pub text: String,
    /// The media then.
    #[serde(default)]
    pub media_ids: Vec<u64>,
    /// When it was replaced.
    pub replaced_at_ms: u64,
}

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

/// A user's reaction, for [`Posts::reactions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// Who reacted.
    pub user_id: u64,
    /// With what.
    pub emoji: String,
}

/// How a viewer stands towards an author, for [`Posts::can_read`].
#[derive(Debug, Clone, Copy)]
enum AuthorView {
    /// The viewer is the author.
    Own,
    /// A block either way, or a deleted author: nothing is visible.
    Hidden,
    /// Anyone else.
    Other {
        private: bool,
        follows: bool,
        close_friend: bool,
    },
}

impl AuthorView {
    /// The rule: the author always; nobody across a block or for a deleted author; for a
    /// private author only followers; otherwise by the post's audience.
    fn allows(self, viewer: u64, post: &Post) -> bool {
        match self {
            AuthorView::Own => true,
            AuthorView::Hidden => false,
            AuthorView::Other { .. } if post.deleted => false,
            AuthorView::Other {
                private,
                follows,
                close_friend,
            } => match post.audience {
                Audience::MentionedOnly => post.mentions.contains(&viewer),
                Audience::CloseFriends => close_friend,
                Audience::Followers => follows,
                Audience::Public => !private || follows,
            },
        }
    }
}

/// Posts errors.
#[derive(Debug, thiserror::Error)]
pub enum PostsError {
    /// No such post, or not visible to the viewer.
    #[error("no such post")]
    NotFound,
    /// Only the author may do this.
    #[error("forbidden")]
    Forbidden,
    /// Concurrent changes kept interfering: retry.
    #[error("busy")]
    Busy,
    /// The post's reply policy or the author's settings do not admit the viewer's comment.
    #[error("comments are limited")]
    CommentsLimited,
    /// Bad text, audience, reply depth or target.
    #[error("invalid {field}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("corrupt record")]
    Corrupt,
}

fn k(id: u64) -> Bytes {
    KeyBuilder::new().u64(id).build()
}

fn counter(which: &str) -> Bytes {
    KeyBuilder::new().str(which).build()
}

/// The counter of one emoji's reactions (`r:` keeps them apart from the named counters).
fn emoji_counter(emoji: &str) -> Bytes {
    KeyBuilder::new().str(&format!("r:{emoji}")).build()
}

/// How many posts (and reposts) `author` has.
pub(crate) async fn author_posts_count<S: Store>(
    store: &S,
    author: u64,
) -> Result<i64, StoreError> {
    store
        .counter_get(&AUTHOR_COUNTS, &k(author), &counter("posts"))
        .await
}

/// `#tags` (lower case, deduplicated) and `@names` (as written) in `text`.
pub fn parse_tags(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut tags, mut names) = (Vec::new(), Vec::new());
    for word in text.split(|c: char| c.is_whitespace()) {
        let clean = |w: &str| -> String {
            w.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect::<String>()
                .trim_end_matches('.')
                .to_string()
        };
        if let Some(t) = word.strip_prefix('#') {
            let t = clean(t).to_lowercase();
            if !t.is_empty() && !tags.contains(&t) {
                tags.push(t);
            }
        } else if let Some(n) = word.strip_prefix('@') {
            let n = clean(n);
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    (tags, names)
}

/// The posts service of one shard.
pub struct Posts<S> {
    store: S,
    clock: Arc<dyn Clock>,
    ids: std::cell::RefCell<IdGenerator>,
    /// One change at a time per (post, user) for reactions and reposts (the edge routes
    /// a post's interactions to one shard), so per-emoji counts stay exact on a node. The
    /// totals are claimed with insert-if-absent and stay exact across nodes too; two
    /// nodes changing one user's reaction at once could only skew the per-emoji split.
    locks: crate::graph::KeyedLocks,
}

impl<S: Store> Posts<S> {
    /// Over `store`; `node`/`shard` make its ids unique.
    pub fn new(store: S, clock: Arc<dyn Clock>, node: u16, shard: u16) -> Result<Self, PostsError> {
        let ids = IdGenerator::new(node, shard)
            .map_err(|_| PostsError::InvalidArgument { field: "shard" })?;
        Ok(Self {
            store,
            clock,
            ids: std::cell::RefCell::new(ids),
            locks: Default::default(),
        })
    }

    fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next(self.clock.now_ms()).0
    }

    async fn load(&self, post_id: u64) -> Result<Option<Post>, PostsError> {
        match self.store.get(&POSTS, &k(post_id), &[]).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|_| PostsError::Corrupt),
            None => Ok(None),
        }
    }

    async fn save(&self, post: &Post) -> Result<(), PostsError> {
        let b = serde_json::to_vec(post).map_err(|_| PostsError::Corrupt)?;
        self.store
            .put(&POSTS, &k(post.post_id), &[], &b, None)
            .await?;
        Ok(())
    }

    /// The users `author` may mention among `names`: existing, not deleted, with no
    /// block between them (a blocked user is neither notified nor shown the post), and
    /// whose `who_can_mention` setting admits the author.
    async fn resolve_mentions(
        &self,
        author: u64,
        names: &[String],
    ) -> Result<Vec<u64>, PostsError> {
        let mut ids = Vec::new();
        for name in names {
            if let Some(id) = users::id_by_username(&self.store, name).await? {
                let live = users::load(&self.store, id)
                    .await
                    .map_err(|_| PostsError::Corrupt)?
                    .is_some_and(|p| !p.deleted);
                if live
                    && !ids.contains(&id)
                    && !graph::blocked_either_way(&self.store, author, id).await?
                    && self.admits(id, author, |s| s.who_can_mention).await?
                {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// Whether `owner`'s setting (picked by `which`) admits `actor`.
    async fn admits(
        &self,
        owner: u64,
        actor: u64,
        which: fn(&users::Settings) -> users::Permission,
    ) -> Result<bool, PostsError> {
        let settings = users::load_settings(&self.store, owner)
            .await
            .map_err(|_| PostsError::Corrupt)?;
        Ok(users::permits(&self.store, owner, actor, which(&settings)).await?)
    }

    /// Whether `viewer` may comment on `post`, which they can read.
    async fn may_comment(&self, viewer: u64, post: &Post) -> Result<bool, PostsError> {
        let author = post.author_id;
        if viewer == author {
            return Ok(true);
        }
        let by_policy = match post.reply_policy {
            ReplyPolicy::Everyone => true,
            ReplyPolicy::Followers => self
                .store
                .get(&graph::FOLLOWING, &k(viewer), &k(author))
                .await?
                .is_some(),
            ReplyPolicy::Mentioned => post.mentions.contains(&viewer),
            ReplyPolicy::Nobody => false,
        };
        Ok(by_policy && self.admits(author, viewer, |s| s.who_can_comment).await?)
    }

    fn check_media(ids: &[u64]) -> Result<Vec<u64>, PostsError> {
        let mut out: Vec<u64> = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == 0 || out.contains(&id) {
                return Err(PostsError::InvalidArgument { field: "media_ids" });
            }
            out.push(id);
        }
        if out.len() > MAX_MEDIA {
            return Err(PostsError::InvalidArgument { field: "media_ids" });
        }
        Ok(out)
    }

    fn check_text(text: &str, has_media: bool) -> Result<(), PostsError> {
        if (text.trim().is_empty() && !has_media) || text.chars().count() > MAX_POST_CHARS {
            return Err(PostsError::InvalidArgument { field: "text" });
        }
        Ok(())
    }

    /// What decides `viewer`'s access to `author`'s posts, read once per author (a
    /// page of one author's posts shares it).
    async fn author_view(&self, viewer: u64, author: u64) -> Result<AuthorView, PostsError> {
        if author == viewer {
            return Ok(AuthorView::Own);
        }
        if graph::blocked_either_way(&self.store, viewer, author).await? {
            return Ok(AuthorView::Hidden);
        }
        let profile = users::load(&self.store, author)
            .await
            .map_err(|_| PostsError::Corrupt)?;
        if profile.as_ref().is_some_and(|p| p.deleted) {
            return Ok(AuthorView::Hidden);
        }
        let follows = self
            .store
            .get(&graph::FOLLOWING, &k(viewer), &k(author))
            .await?
            .is_some();
        Ok(AuthorView::Other {
            private: profile.is_some_and(|p| p.private),
            follows,
            close_friend: graph::is_close_friend(&self.store, author, viewer).await?,
        })
    }

    /// Whether `viewer` may read `post` (the single authorization rule for posts).
    pub async fn can_read(&self, viewer: u64, post: &Post) -> Result<bool, PostsError> {
        Ok(self
            .author_view(viewer, post.author_id)
            .await?
            .allows(viewer, post))
    }

    async fn readable(&self, viewer: u64, post_id: u64) -> Result<Post, PostsError> {
        let post = self.load(post_id).await?.ok_or(PostsError::NotFound)?;
        if self.can_read(viewer, &post).await? {
            Ok(post)
        } else {
            Err(PostsError::NotFound)
        }
    }

    /// A readable post that is not deleted (its author sees the tombstone, but nobody
    /// edits, quotes, comments on or reacts to it).
    async fn live(&self, viewer: u64, post_id: u64) -> Result<Post, PostsError> {
        let post = self.readable(viewer, post_id).await?;
        if post.deleted {
            return Err(PostsError::NotFound);
        }
        Ok(post)
    }

    /// Publishes a text post (or a quote of `quote_of`); see [`Posts::publish`].
    pub async fn create(
        &self,
        author: u64,
        text: &str,
        audience: Audience,
        quote_of: Option<u64>,
    ) -> Result<Post, PostsError> {
        self.publish(
            author,
            NewPost {
                audience,
                quote_of,
                ..NewPost::text(text)
            },
        )
        .await
    }

    /// Publishes a post (or a quote of `quote_of`, which the author must be able to read).
    pub async fn publish(&self, author: u64, new: NewPost) -> Result<Post, PostsError> {
        let media_ids = Self::check_media(&new.media_ids)?;
        Self::check_text(&new.text, !media_ids.is_empty())?;
        if let Some(q) = new.quote_of {
            self.live(author, q).await?;
        }
        let (hashtags, names) = parse_tags(&new.text);
        let post = Post {
            post_id: self.next_id(),
            author_id: author,
            hashtags,
            mentions: self.resolve_mentions(author, &names).await?,
            text: new.text,
            audience: new.audience,
            quote_of: new.quote_of,
            repost_of: None,
            created_at_ms: self.clock.now_ms(),
            edited_at_ms: 0,
            deleted: false,
            media_ids,
            reply_policy: new.reply_policy,
            sensitive: new.sensitive,
            edit_count: 0,
        };
        self.save(&post).await?;
        self.store
            .put(&USER_POSTS, &k(author), &k(post.post_id), b"", None)
            .await?;
        self.store
            .counter_add(&AUTHOR_COUNTS, &k(author), &counter("posts"), 1)
            .await?;
        let quote_of = post.quote_of;
        if let Some(q) = quote_of {
            self.store
                .counter_add(&COUNTS, &k(q), &counter("quotes"), 1)
                .await?;
        }
        Ok(post)
    }

    /// Edits the text of the author's own post; see [`Posts::edit_with`].
    pub async fn edit(&self, author: u64, post_id: u64, text: &str) -> Result<Post, PostsError> {
        let edit = PostEdit {
            text: Some(text.to_string()),
            ..PostEdit::default()
        };
        self.edit_with(author, post_id, edit).await
    }

    /// Edits the author's own post; the previous text and media join the visible history.
    pub async fn edit_with(
        &self,
        author: u64,
        post_id: u64,
        edit: PostEdit,
    ) -> Result<Post, PostsError> {
        let mut post = self.live(author, post_id).await?;
        if post.author_id != author || post.repost_of.is_some() {
            return Err(PostsError::Forbidden);
        }
        let media_ids = match &edit.media_ids {
            Some(ids) => Self::check_media(ids)?,
            None => post.media_ids.clone(),
        };
        let text = edit.text.unwrap_or_else(|| post.text.clone());
        Self::check_text(&text, !media_ids.is_empty())?;
        let now = self.clock.now_ms();
        let old = serde_json::to_vec(&Version {
            text: post.text.clone(),
            media_ids: post.media_ids.clone(),
            replaced_at_ms: now,
        })
        .map_err(|_| PostsError::Corrupt)?;
        self.store
            .put(&HISTORY, &k(post_id), &k(now), &old, None)
            .await?;
        let (hashtags, names) = parse_tags(&text);
        post.mentions = self.resolve_mentions(author, &names).await?;
        post.text = text;
        post.hashtags = hashtags;
        post.media_ids = media_ids;
        post.sensitive = edit.sensitive.unwrap_or(post.sensitive);
        post.edited_at_ms = now;
        post.edit_count = post.edit_count.saturating_add(1);
        self.save(&post).await?;
        Ok(post)
    }

    /// Earlier versions of a post the viewer may read, oldest first.
    pub async fn history(&self, viewer: u64, post_id: u64) -> Result<Vec<Version>, PostsError> {
        self.readable(viewer, post_id).await?;
        let page = self
            .store
            .scan(&HISTORY, &k(post_id), &Scan::all(1000))
            .await?;
        page.rows
            .iter()
            .map(|r| serde_json::from_slice(&r.value).map_err(|_| PostsError::Corrupt))
            .collect()
    }

    /// Deletes the author's own post (text and history go; the id stays as a tombstone).
    pub async fn delete(&self, author: u64, post_id: u64) -> Result<(), PostsError> {
        let mut post = self.readable(author, post_id).await?;
        if post.author_id != author {
            return Err(PostsError::Forbidden);
        }
        // Deleting a repost is undoing it (its bookkeeping lives with the original).
        if let Some(original) = post.repost_of
            && !post.deleted
        {
            return self.undo_repost(author, original).await;
        }
        post.deleted = true;
        post.text.clear();
        post.hashtags.clear();
        post.mentions.clear();
        post.media_ids.clear();
        self.save(&post).await?;
        loop {
            let page = self
                .store
                .scan(&HISTORY, &k(post_id), &Scan::all(500))
                .await?;
            if page.rows.is_empty() {
                break;
            }
            for r in page.rows {
                self.store
                    .delete(&HISTORY, &k(post_id), &r.clustering)
                    .await?;
            }
        }
        if self
            .store
            .delete_if_present(&USER_POSTS, &k(author), &k(post_id))
            .await?
        {
            self.store
                .counter_add(&AUTHOR_COUNTS, &k(author), &counter("posts"), -1)
                .await?;
        }
        Ok(())
    }

    /// A post as the viewer may see it.
    pub async fn get(&self, viewer: u64, post_id: u64) -> Result<Post, PostsError> {
        self.readable(viewer, post_id).await
    }

    /// Comments on a readable post; `parent_id` 0 for top level, else a top-level comment
    /// of the same post (one level of replies).
    pub async fn comment(
        &self,
        viewer: u64,
        post_id: u64,
        parent_id: u64,
        text: &str,
    ) -> Result<Comment, PostsError> {
        let post = self.live(viewer, post_id).await?;
        if post.repost_of.is_some() {
            return Err(PostsError::InvalidArgument { field: "post_id" });
        }
        if !self.may_comment(viewer, &post).await? {
            return Err(PostsError::CommentsLimited);
        }
        if text.trim().is_empty() || text.chars().count() > MAX_COMMENT_CHARS {
            return Err(PostsError::InvalidArgument { field: "text" });
        }
        if parent_id != 0 {
            let parent = self
                .store
                .get(&COMMENTS, &k(post_id), &k(parent_id))
                .await?
                .ok_or(PostsError::InvalidArgument { field: "parent_id" })?;
            let parent: Comment =
                serde_json::from_slice(&parent).map_err(|_| PostsError::Corrupt)?;
            if parent.parent_id != 0 || parent.deleted {
                return Err(PostsError::InvalidArgument { field: "parent_id" });
            }
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
        let b = serde_json::to_vec(&c).map_err(|_| PostsError::Corrupt)?;
        self.store
            .put(&COMMENTS, &k(post_id), &k(c.comment_id), &b, None)
            .await?;
        self.store
            .put(&COMMENT_POSTS, &k(c.comment_id), &[], &k(post_id), None)
            .await?;
        self.store
            .counter_add(&COUNTS, &k(post_id), &counter("comments"), 1)
            .await?;
        Ok(c)
    }

    /// A page of a readable post's comments, oldest first (hiding blocked authors).
    pub async fn comments(
        &self,
        viewer: u64,
        post_id: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Comment>, Option<Cursor>), PostsError> {
        self.readable(viewer, post_id).await?;
        let page = self
            .store
            .scan(&COMMENTS, &k(post_id), &Scan::all(limit).after(cursor))
            .await?;
        let mut out = Vec::new();
        for r in &page.rows {
            let c: Comment = serde_json::from_slice(&r.value).map_err(|_| PostsError::Corrupt)?;
            if !graph::blocked_either_way(&self.store, viewer, c.author_id).await? {
                out.push(c);
            }
        }
        Ok((out, page.cursor))
    }

    /// Sets the viewer's reaction on a readable post (one per user; a new one replaces).
    pub async fn react(&self, viewer: u64, post_id: u64, emoji: &str) -> Result<(), PostsError> {
        self.live(viewer, post_id).await?;
        // An emoji: short, no control characters or spaces, and not plain ASCII text.
        if emoji.is_empty()
            || emoji.chars().count() > 8
            || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
            || emoji.is_ascii()
        {
            return Err(PostsError::InvalidArgument { field: "emoji" });
        }
        let _one = self.locks.lock((post_id, viewer)).await;
        self.store
            .put(&REACTION_KINDS, &k(post_id), &counter(emoji), b"", None)
            .await?;
        // A first reaction is claimed (the total moves exactly once, whichever node
        // wins); a later one replaces the emoji. If the reaction vanishes between the two
        // (an unreact on another node), claim again.
        for _ in 0..4 {
            if self
                .store
                .insert_if_absent(&REACTIONS, &k(post_id), &k(viewer), emoji.as_bytes(), None)
                .await?
            {
                self.store
                    .counter_add(&COUNTS, &k(post_id), &counter("reactions"), 1)
                    .await?;
                self.store
                    .counter_add(&COUNTS, &k(post_id), &emoji_counter(emoji), 1)
                    .await?;
                return Ok(());
            }
            let Some(before) = self.store.get(&REACTIONS, &k(post_id), &k(viewer)).await? else {
                continue;
            };
            if before.as_ref() == emoji.as_bytes() {
                return Ok(());
            }
            self.store
                .put(&REACTIONS, &k(post_id), &k(viewer), emoji.as_bytes(), None)
                .await?;
            self.store
                .counter_add(&COUNTS, &k(post_id), &emoji_counter(emoji), 1)
                .await?;
            let old = String::from_utf8_lossy(&before).into_owned();
            self.drop_emoji(post_id, &old).await?;
            return Ok(());
        }
        Err(PostsError::Busy)
    }

    /// One reaction with `emoji` fewer; the kind goes when none is left.
    async fn drop_emoji(&self, post_id: u64, emoji: &str) -> Result<(), PostsError> {
        self.store
            .counter_add(&COUNTS, &k(post_id), &emoji_counter(emoji), -1)
            .await?;
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
    pub async fn unreact(&self, viewer: u64, post_id: u64) -> Result<(), PostsError> {
        let _one = self.locks.lock((post_id, viewer)).await;
        let Some(old) = self.store.get(&REACTIONS, &k(post_id), &k(viewer)).await? else {
            return Ok(());
        };
        if self
            .store
            .delete_if_present(&REACTIONS, &k(post_id), &k(viewer))
            .await?
        {
            let old = String::from_utf8_lossy(&old).into_owned();
            self.drop_emoji(post_id, &old).await?;
            self.store
                .counter_add(&COUNTS, &k(post_id), &counter("reactions"), -1)
                .await?;
        }
        Ok(())
    }

    /// The reactions on a post the viewer may read: counts per emoji (most used first, at
    /// most [`MAX_REACTION_KINDS`]) and a page of who reacted with what (optionally one
    /// emoji only), leaving out users across a block with the viewer.
    pub async fn reactions(
        &self,
        viewer: u64,
        post_id: u64,
        only: Option<&str>,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<(String, i64)>, Vec<Reaction>, Option<Cursor>), PostsError> {
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
                || graph::blocked_either_way(&self.store, viewer, user_id).await?
            {
                continue;
            }
            entries.push(Reaction { user_id, emoji });
        }
        Ok((counts, entries, page.cursor))
    }

    /// The viewer's reaction on a post, if any.
    pub async fn viewer_reaction(
        &self,
        viewer: u64,
        post_id: u64,
    ) -> Result<Option<String>, PostsError> {
        Ok(self
            .store
            .get(&REACTIONS, &k(post_id), &k(viewer))
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Whether the viewer reposted a post.
    pub async fn viewer_reposted(&self, viewer: u64, post_id: u64) -> Result<bool, PostsError> {
        Ok(self
            .store
            .get(&REPOSTS, &k(post_id), &k(viewer))
            .await?
            .is_some())
    }

    /// Edits the viewer's own comment.
    pub async fn edit_comment(
        &self,
        viewer: u64,
        comment_id: u64,
        text: &str,
    ) -> Result<Comment, PostsError> {
        let _one = self.locks.lock((comment_id, 0)).await;
        let (post_id, mut c) = self.find_comment(viewer, comment_id).await?;
        if c.author_id != viewer {
            return Err(PostsError::Forbidden);
        }
        self.live(viewer, post_id).await?;
        if text.trim().is_empty() || text.chars().count() > MAX_COMMENT_CHARS {
            return Err(PostsError::InvalidArgument { field: "text" });
        }
        c.text = text.to_string();
        c.edited_at_ms = self.clock.now_ms();
        let b = serde_json::to_vec(&c).map_err(|_| PostsError::Corrupt)?;
        self.store
            .put(&COMMENTS, &k(post_id), &k(comment_id), &b, None)
            .await?;
        Ok(c)
    }

    /// Deletes a comment: its author may, and so may the post's author (on their own
    /// post). It stays as a tombstone for its replies.
    pub async fn delete_comment(&self, viewer: u64, comment_id: u64) -> Result<(), PostsError> {
        let _one = self.locks.lock((comment_id, 0)).await;
        let (post_id, mut c) = self.find_comment(viewer, comment_id).await?;
        let post = self.readable(viewer, post_id).await?;
        if c.author_id != viewer && post.author_id != viewer {
            return Err(PostsError::Forbidden);
        }
        // The index entry goes first and only once: the count drops exactly once.
        if !self
            .store
            .delete_if_present(&COMMENT_POSTS, &k(comment_id), &[])
            .await?
        {
            return Err(PostsError::NotFound);
        }
        c.deleted = true;
        c.text.clear();
        let b = serde_json::to_vec(&c).map_err(|_| PostsError::Corrupt)?;
        self.store
            .put(&COMMENTS, &k(post_id), &k(comment_id), &b, None)
            .await?;
        self.store
            .counter_add(&COUNTS, &k(post_id), &counter("comments"), -1)
            .await?;
        Ok(())
    }

    /// A live comment and its post, if the viewer may read the post (`NotFound` otherwise).
    async fn find_comment(
        &self,
        viewer: u64,
        comment_id: u64,
    ) -> Result<(u64, Comment), PostsError> {
        let post_id = self
            .store
            .get(&COMMENT_POSTS, &k(comment_id), &[])
            .await?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or(PostsError::NotFound)?;
        let post = self.readable(viewer, post_id).await?;
        let c: Comment = self
            .store
            .get(&COMMENTS, &k(post_id), &k(comment_id))
            .await?
            .map(|b| serde_json::from_slice(&b).map_err(|_| PostsError::Corrupt))
            .transpose()?
            .ok_or(PostsError::NotFound)?;
        // Across a block a comment does not exist — except for the post's author, who can
        // still remove a blocked user's comment from their post.
        if c.deleted
            || (viewer != post.author_id
                && graph::blocked_either_way(&self.store, viewer, c.author_id).await?)
        {
            return Err(PostsError::NotFound);
        }
        Ok((post_id, c))
    }

    /// The posts among `ids` the viewer may read, in request order (at most
    /// [`MAX_BATCH`]; the others are left out).
    pub async fn get_many(&self, viewer: u64, ids: &[u64]) -> Result<Vec<Post>, PostsError> {
        if ids.len() > MAX_BATCH {
            return Err(PostsError::InvalidArgument { field: "post_ids" });
        }
        let mut out: Vec<Post> = Vec::with_capacity(ids.len());
        for &id in ids {
            if out.iter().any(|p| p.post_id == id) {
                continue;
            }
            match self.readable(viewer, id).await {
                Ok(p) => out.push(p),
                Err(PostsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Reposts a public post the viewer may read (followers-only posts stay with their
    /// audience).
    pub async fn repost(&self, viewer: u64, post_id: u64) -> Result<Post, PostsError> {
        let original = self.load(post_id).await?.ok_or(PostsError::NotFound)?;
        let view = self.author_view(viewer, original.author_id).await?;
        if original.deleted || !view.allows(viewer, &original) {
            return Err(PostsError::NotFound);
        }
        let private = matches!(view, AuthorView::Other { private: true, .. });
        if original.audience != Audience::Public || private || original.repost_of.is_some() {
            return Err(PostsError::InvalidArgument { field: "post_id" });
        }
        let _one = self.locks.lock((post_id, viewer)).await;
        let repost_id = self.next_id();
        if !self
            .store
            .insert_if_absent(&REPOSTS, &k(post_id), &k(viewer), &k(repost_id), None)
            .await?
        {
            // Reposting twice is one repost: the first is the answer.
            let first = self
                .store
                .get(&REPOSTS, &k(post_id), &k(viewer))
                .await?
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map(u64::from_be_bytes)
                .ok_or(PostsError::Corrupt)?;
            return self.load(first).await?.ok_or(PostsError::Corrupt);
        }
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
        self.save(&post).await?;
        self.store
            .put(&USER_POSTS, &k(viewer), &k(post.post_id), b"", None)
            .await?;
        self.store
            .counter_add(&AUTHOR_COUNTS, &k(viewer), &counter("posts"), 1)
            .await?;
        self.store
            .counter_add(&COUNTS, &k(post_id), &counter("reposts"), 1)
            .await?;
        Ok(post)
    }

    /// Undoes the viewer's repost of `post_id` (the repost disappears from their posts).
    pub async fn undo_repost(&self, viewer: u64, post_id: u64) -> Result<(), PostsError> {
        let _one = self.locks.lock((post_id, viewer)).await;
        let Some(v) = self.store.get(&REPOSTS, &k(post_id), &k(viewer)).await? else {
            return Ok(());
        };
        let repost_id = <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| PostsError::Corrupt)?;
        if !self
            .store
            .delete_if_present(&REPOSTS, &k(post_id), &k(viewer))
            .await?
        {
            return Ok(());
        }
        if let Some(mut shell) = self.load(repost_id).await? {
            shell.deleted = true;
            self.save(&shell).await?;
        }
        if self
            .store
            .delete_if_present(&USER_POSTS, &k(viewer), &k(repost_id))
            .await?
        {
            self.store
                .counter_add(&AUTHOR_COUNTS, &k(viewer), &counter("posts"), -1)
                .await?;
        }
        self.store
            .counter_add(&COUNTS, &k(post_id), &counter("reposts"), -1)
            .await?;
        Ok(())
    }

    /// A counter of a post: `reactions`, `comments`, `reposts` or `quotes`.
    pub async fn count(&self, post_id: u64, which: &str) -> Result<i64, PostsError> {
        Ok(self
            .store
            .counter_get(&COUNTS, &k(post_id), &counter(which))
            .await?)
    }

    /// How many posts (and reposts) `author` has.
    pub async fn posts_count(&self, author: u64) -> Result<i64, PostsError> {
        Ok(author_posts_count(&self.store, author).await?)
    }

    /// The author's posts the viewer may read, newest first.
    pub async fn by_user(
        &self,
        viewer: u64,
        author: u64,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Post>, Option<Cursor>), PostsError> {
        let page = self
            .store
            .scan(
                &USER_POSTS,
                &k(author),
                &Scan::all(limit).reversed().after(cursor),
            )
            .await?;
        let view = self.author_view(viewer, author).await?;
        let mut out = Vec::new();
        for r in &page.rows {
            let Some(id) = KeyReader::new(&r.clustering).u64() else {
                continue;
            };
            if let Some(p) = self.load(id).await?
                && view.allows(viewer, &p)
            {
                out.push(p);
            }
        }
        Ok((out, page.cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashtags_and_mentions_are_parsed() {
        let (tags, names) =
            parse_tags("Sunset at #Harbour with @ana_k and @ben. #harbour #film! @ana_k");
        assert_eq!(tags, vec!["harbour", "film"]);
        assert_eq!(names, vec!["ana_k", "ben"]);
        assert_eq!(parse_tags("# @ nothing"), (vec![], vec![]));
    }
}
