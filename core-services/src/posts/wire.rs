//! The `Posts` service on the wire. Every operation acts as the session's user; what a
//! user may see or touch is decided by the posts service's single read rule. A post's
//! interactions (reactions, reposts) and one comment's edits run on the owner shard of
//! the post or comment, where they take turns.

use std::rc::Rc;

use bytes::Bytes;
use selfie_protocol::control::SubscriptionKind;
use selfie_protocol::posts::{self as pp, PostsOp, PostsOpT};
use selfie_protocol::{Body, common};
use selfie_storage::{Cursor, Store};

use super::{Audience, Comment, NewPost, Post, PostEdit, Posts, ReplyPolicy};
use crate::plane::{
    Call, Delivery, Subscription, Topic, envelope, ids, make, page_request, page_t, service_table,
    user_ref, wire_enum,
};
use crate::{Error, Result};

/// The posts service of one shard, on the wire.
#[derive(Clone)]
pub struct PostsWire<S>(pub Rc<Posts<S>>);

service_table! {
    impl[S: Store + Clone + 'static] PostsWire<S>;
    body body_as_posts, ops PostsOp, answers PostsOpT in Posts(pp::PostsT),
        subscribe subscribe;
    CreatePostRequest(op_as_create_post_request) => create;
    EditPostRequest(op_as_edit_post_request) => edit;
    PostHistoryRequest(op_as_post_history_request) => history;
    DeletePostRequest(op_as_delete_post_request) => delete;
    GetPostRequest(op_as_get_post_request) => get;
    GetPostsRequest(op_as_get_posts_request) => get_many;
    UserPostsRequest(op_as_user_posts_request) => by_user;
    CreateCommentRequest(op_as_create_comment_request) => comment;
    CommentsListRequest(op_as_comments_list_request) => comments;
    EditCommentRequest(op_as_edit_comment_request) => edit_comment, owner |r, _me| r.comment_id();
    DeleteCommentRequest(op_as_delete_comment_request) => delete_comment,
        owner |r, _me| r.comment_id();
    ReactRequest(op_as_react_request) => react, owner |r, _me| r.target_id();
    UnreactRequest(op_as_unreact_request) => unreact, owner |r, _me| r.target_id();
    ReactionsListRequest(op_as_reactions_list_request) => reactions;
    RepostRequest(op_as_repost_request) => repost, owner |r, _me| r.post_id();
    UndoRepostRequest(op_as_undo_repost_request) => undo_repost, owner |r, _me| r.post_id();
}

use common::Audience as WireAudience;
use pp::ReplyPolicy as WireReplyPolicy;
wire_enum!(audience, wire_audience: Audience <=> WireAudience, "audience"
    { Public, Followers, MentionedOnly, CloseFriends });
wire_enum!(reply_policy, wire_reply_policy: ReplyPolicy <=> WireReplyPolicy, "reply_policy"
    { Everyone, Followers, Mentioned, Nobody });

/// Only posts take reactions here.
fn post_target(kind: common::ObjectKind) -> Result<()> {
    let field = "target_kind";
    (kind == common::ObjectKind::Post)
        .then_some(())
        .ok_or(Error::InvalidArgument { field })
}

/// What the viewer did to a post (shown on single reads and in feeds).
#[derive(Default)]
pub(crate) struct Viewer {
    pub(crate) reaction: Option<String>,
    pub(crate) reposted: bool,
}

/// A post on the wire (moved, not copied).
pub(crate) fn post_t(p: Post, counts: Option<[i64; 4]>, viewer: Viewer) -> pp::PostT {
    let media = p
        .media_ids
        .iter()
        .map(|&media_id| make!(common::MediaRefT { media_id }));
    make!(pp::PostT {
        post_id: p.post_id,
        author: user_ref(p.author_id),
        text: Some(p.text),
        hashtags: Some(p.hashtags),
        mentions: Some(p.mentions),
        media: Some(media.collect()),
        audience: wire_audience(p.audience),
        reply_policy: wire_reply_policy(p.reply_policy),
        created_at_ms: p.created_at_ms,
        edited_at_ms: p.edited_at_ms,
        edit_count: p.edit_count,
        quote_of: p.quote_of.or(p.repost_of).unwrap_or(0),
        counts: counts.map(counts_t),
        viewer_reaction: viewer.reaction,
        viewer_reposted: viewer.reposted,
        sensitive: p.sensitive,
        deleted: p.deleted,
    })
}

fn counts_t([reactions, comments, reposts, quotes]: [i64; 4]) -> Box<pp::PostCountsT> {
    let n = |v: i64| v.max(0) as u64;
    Box::new(make!(pp::PostCountsT {
        reactions: n(reactions),
        comments: n(comments),
        reposts: n(reposts),
        quotes: n(quotes),
        views: 0,
    }))
}

fn comment_t(c: Comment) -> pp::CommentT {
    make!(pp::CommentT {
        comment_id: c.comment_id,
        post_id: c.post_id,
        parent_id: c.parent_id,
        // A tombstone does not say whose comment it was.
        author: user_ref(if c.deleted { 0 } else { c.author_id }),
        text: Some(c.text),
        created_at_ms: c.created_at_ms,
        edited_at_ms: c.edited_at_ms,
        deleted: c.deleted,
    })
}

/// A change to the post or comment the request names, answered `Ack`.
macro_rules! post_changes {
    ($($name:ident($Request:ident).$id:ident => $method:ident;)*) => {$(
        async fn $name(self, call: &Call, r: pp::$Request<'_>) -> Result<Bytes> {
            self.0.$method(call.user()?, r.$id()).await?;
            call.ack()
        }
    )*};
}

impl<S: Store + Clone + 'static> PostsWire<S> {
    fn post(call: &Call, post: pp::PostT) -> Result<Bytes> {
        let post = Some(Box::new(post));
        Self::answer(
            call,
            PostsOpT::PostResponse(Box::new(make!(pp::PostResponseT { post }))),
        )
    }

    fn page(call: &Call, list: Vec<Post>, next: Option<Cursor>) -> Result<Bytes> {
        let posts = list.into_iter().map(|p| post_t(p, None, Viewer::default()));
        let page = make!(pp::PostsResponseT {
            posts: Some(posts.collect()),
            page: page_t(next),
        });
        Self::answer(call, PostsOpT::PostsResponse(Box::new(page)))
    }

    fn one_comment(call: &Call, c: Comment) -> Result<Bytes> {
        let comment = Some(Box::new(comment_t(c)));
        Self::answer(
            call,
            PostsOpT::CommentResponse(Box::new(make!(pp::CommentResponseT { comment }))),
        )
    }

    post_changes! {
        delete(DeletePostRequest).post_id => delete;
        delete_comment(DeleteCommentRequest).comment_id => delete_comment;
        undo_repost(UndoRepostRequest).post_id => undo_repost;
    }

    async fn create(self, call: &Call, r: pp::CreatePostRequest<'_>) -> Result<Bytes> {
        let new = NewPost {
            text: r.text().unwrap_or_default().to_string(),
            media_ids: ids(r.media_ids(), super::MAX_MEDIA),
            audience: audience(r.audience())?,
            reply_policy: reply_policy(r.reply_policy())?,
            quote_of: (r.quote_of() != 0).then_some(r.quote_of()),
            sensitive: r.sensitive(),
            idempotency_key: r.idempotency_key().map(str::to_string),
        };
        let post = self.0.publish(call.user()?, new).await?;
        Self::post(call, post_t(post, None, Viewer::default()))
    }

    async fn edit(self, call: &Call, r: pp::EditPostRequest<'_>) -> Result<Bytes> {
        let edit = PostEdit {
            text: r.text().map(str::to_string),
            media_ids: r.media_ids().map(|v| ids(Some(v), super::MAX_MEDIA)),
            sensitive: r.sensitive(),
        };
        let post = self.0.edit_with(call.user()?, r.post_id(), edit).await?;
        Self::post(call, post_t(post, None, Viewer::default()))
    }

    async fn history(self, call: &Call, r: pp::PostHistoryRequest<'_>) -> Result<Bytes> {
        let versions = self.0.history(call.user()?, r.post_id()).await?;
        let versions = versions.into_iter().map(|v| {
            make!(pp::PostVersionT {
                text: Some(v.text),
                media_ids: Some(v.media_ids),
                edited_at_ms: v.replaced_at_ms,
            })
        });
        let versions = Some(versions.collect());
        let history = make!(pp::PostHistoryResponseT { versions });
        Self::answer(call, PostsOpT::PostHistoryResponse(Box::new(history)))
    }

    async fn get(self, call: &Call, r: pp::GetPostRequest<'_>) -> Result<Bytes> {
        let (me, id) = (call.user()?, r.post_id());
        let post = self.0.get(me, id).await?;
        let counts = self.0.counts(id).await?;
        let viewer = Viewer {
            reaction: self.0.viewer_reaction(me, id).await?,
            reposted: self.0.viewer_reposted(me, id).await?,
        };
        Self::post(call, post_t(post, Some(counts), viewer))
    }

    async fn get_many(self, call: &Call, r: pp::GetPostsRequest<'_>) -> Result<Bytes> {
        let wanted = ids(r.post_ids(), super::MAX_BATCH);
        let list = self.0.get_many(call.user()?, &wanted).await?;
        Self::page(call, list, None)
    }

    async fn by_user(self, call: &Call, r: pp::UserPostsRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let me = call.user()?;
        let (list, next) = self.0.by_user(me, r.user_id(), limit, cursor).await?;
        Self::page(call, list, next)
    }

    async fn comment(self, call: &Call, r: pp::CreateCommentRequest<'_>) -> Result<Bytes> {
        let text = r.text().unwrap_or_default();
        let me = call.user()?;
        let key = r.idempotency_key();
        let c = self
            .0
            .comment_once(me, r.post_id(), r.parent_id(), text, key);
        let c = c.await?;
        Self::one_comment(call, c)
    }

    async fn comments(self, call: &Call, r: pp::CommentsListRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let me = call.user()?;
        let (list, next) = self.0.comments(me, r.post_id(), limit, cursor).await?;
        let page = make!(pp::CommentsListResponseT {
            comments: Some(list.into_iter().map(comment_t).collect()),
            page: page_t(next),
        });
        Self::answer(call, PostsOpT::CommentsListResponse(Box::new(page)))
    }

    async fn edit_comment(self, call: &Call, r: pp::EditCommentRequest<'_>) -> Result<Bytes> {
        let text = r.text().unwrap_or_default();
        let c = self
            .0
            .edit_comment(call.user()?, r.comment_id(), text)
            .await?;
        Self::one_comment(call, c)
    }

    async fn react(self, call: &Call, r: pp::ReactRequest<'_>) -> Result<Bytes> {
        post_target(r.target_kind())?;
        let emoji = r.emoji().unwrap_or_default();
        self.0.react(call.user()?, r.target_id(), emoji).await?;
        call.ack()
    }

    async fn unreact(self, call: &Call, r: pp::UnreactRequest<'_>) -> Result<Bytes> {
        post_target(r.target_kind())?;
        self.0.unreact(call.user()?, r.target_id()).await?;
        call.ack()
    }

    async fn reactions(self, call: &Call, r: pp::ReactionsListRequest<'_>) -> Result<Bytes> {
        post_target(r.target_kind())?;
        let (limit, cursor) = page_request(r.page());
        let only = r.emoji().filter(|e| !e.is_empty());
        let me = call.user()?;
        let reactions = self.0.reactions(me, r.target_id(), only, limit, cursor);
        let (counts, entries, next) = reactions.await?;
        let counts = counts.into_iter().map(|(emoji, n)| {
            make!(common::ReactionCountT {
                emoji: Some(emoji),
                count: n.max(0) as u64,
            })
        });
        let entries = entries.into_iter().map(|r| {
            make!(pp::ReactionEntryT {
                user: user_ref(r.user_id),
                emoji: Some(r.emoji),
                created_at_ms: 0,
            })
        });
        let list = make!(pp::ReactionsListResponseT {
            counts: Some(counts.collect()),
            entries: Some(entries.collect()),
            page: page_t(next),
        });
        Self::answer(call, PostsOpT::ReactionsListResponse(Box::new(list)))
    }

    async fn repost(self, call: &Call, r: pp::RepostRequest<'_>) -> Result<Bytes> {
        let post = self.0.repost(call.user()?, r.post_id()).await?;
        Self::post(call, post_t(post, None, Viewer::default()))
    }
}

/// A post's live counters: who may read the post may follow them (checked here, once:
/// the events carry counts only; see `AUTHORIZATION.md`). The first frame is the
/// snapshot, read on the topic's owner shard after the subscription is live, with the
/// last event it includes (`as_of_seq`); then one frame per change, each with the counts
/// after it. On one node the counts a client shows never go back; on a fleet, two changes
/// made on two nodes at the same instant can leave the newest event one change behind
/// until the next one.
async fn subscribe<S: Store + Clone + 'static>(
    w: PostsWire<S>,
    kind: SubscriptionKind,
    call: Call,
) -> Result<Subscription> {
    if kind != SubscriptionKind::Post {
        return Err(Error::Unavailable("this subscription"));
    }
    let me = call.user()?;
    let post_id = call
        .op(|e| e.body_as_control()?.op_as_subscribe_request())?
        .target_id();
    w.0.get(me, post_id).await?;
    let delivery = w.0.delivery()?.clone();
    let events = delivery.subscribe(Topic::new(kind, post_id)).await?;
    let owner = delivery.owner(Topic::new(kind, post_id));
    let (counts, as_of) = if owner == delivery.shard() {
        w.0.snapshot(post_id).await?
    } else {
        let shards = delivery.plane().shards();
        shards
            .invoke_on(owner, move |posts: Rc<Posts<S>>| async move {
                posts.snapshot(post_id).await
            })
            .await??
    };
    let snapshot = counts_event(&delivery, post_id, counts, [0; 4], Some(as_of))?;
    Ok(Subscription::new(vec![snapshot], events))
}

/// A `PostCountsEvent` frame: a change to publish (`id` the placeholder that the topic's
/// sequence replaces), or a snapshot that includes the events up to `snapshot_of`
/// (`id` 0).
pub(super) fn counts_event(
    delivery: &Delivery,
    post_id: u64,
    counts: [i64; 4],
    [reactions_delta, comments_delta, reposts_delta, quotes_delta]: [i32; 4],
    snapshot_of: Option<u64>,
) -> Result<Bytes> {
    delivery.encode_event(|b, placeholder| {
        let event = make!(pp::PostCountsEventT {
            post_id,
            counts: Some(counts_t(counts)),
            reactions_delta,
            comments_delta,
            reposts_delta,
            quotes_delta,
            as_of_seq: snapshot_of.unwrap_or(0),
        });
        let t = make!(pp::PostsT {
            op: PostsOpT::PostCountsEvent(Box::new(event)),
        })
        .pack(b);
        let id = if snapshot_of.is_some() {
            0
        } else {
            placeholder
        };
        envelope(b, id, Body::Posts, t.as_union_value())
    })
}
