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
    Call, Delivery, Subscription, Topic, envelope, ids, make, op, page_request, page_t,
    service_table, user_ref, wire_enum,
};
use crate::{Error, Result};

/// The posts service of one shard, on the wire.
#[derive(Clone)]
pub struct PostsWire<S>(pub Rc<Posts<S>>);

service_table! {
    impl[S: Store + Clone + 'static] PostsWire<S>;
    body body_as_posts, ops PostsOp, answers PostsOpT in Posts(pp::PostsT),
        subscribe subscribe;
    CreatePostRequest => create;
    EditPostRequest => edit;
    PostHistoryRequest => history;
    DeletePostRequest => delete;
    GetPostRequest => get;
    GetPostsRequest => get_many;
    UserPostsRequest => by_user;
    CreateCommentRequest => comment;
    CommentsListRequest => comments;
    EditCommentRequest => edit_comment, owner |t, _me| t.op_as_edit_comment_request()?.comment_id();
    DeleteCommentRequest => delete_comment, owner |t, _me| t.op_as_delete_comment_request()?.comment_id();
    ReactRequest => react, owner |t, _me| t.op_as_react_request()?.target_id();
    UnreactRequest => unreact, owner |t, _me| t.op_as_unreact_request()?.target_id();
    ReactionsListRequest => reactions;
    RepostRequest => repost, owner |t, _me| t.op_as_repost_request()?.post_id();
    UndoRepostRequest => undo_repost, owner |t, _me| t.op_as_undo_repost_request()?.post_id();
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

/// What the viewer did to a post (shown on single reads).
#[derive(Default)]
struct Viewer {
    reaction: Option<String>,
    reposted: bool,
}

/// A post on the wire (moved, not copied).
fn post_t(p: Post, counts: Option<[i64; 4]>, viewer: Viewer) -> pp::PostT {
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

    fn comment(call: &Call, c: Comment) -> Result<Bytes> {
        let comment = Some(Box::new(comment_t(c)));
        Self::answer(
            call,
            PostsOpT::CommentResponse(Box::new(make!(pp::CommentResponseT { comment }))),
        )
    }
}

async fn create<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_create_post_request);
    let new = NewPost {
        text: r.text().unwrap_or_default().to_string(),
        media_ids: ids(r.media_ids(), super::MAX_MEDIA),
        audience: audience(r.audience())?,
        reply_policy: reply_policy(r.reply_policy())?,
        quote_of: (r.quote_of() != 0).then_some(r.quote_of()),
        sensitive: r.sensitive(),
    };
    let post = w.0.publish(me, new).await?;
    PostsWire::<S>::post(&call, post_t(post, None, Viewer::default()))
}

async fn edit<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_edit_post_request);
    let edit = PostEdit {
        text: r.text().map(str::to_string),
        media_ids: r.media_ids().map(|v| ids(Some(v), super::MAX_MEDIA)),
        sensitive: r.sensitive(),
    };
    let post = w.0.edit_with(me, r.post_id(), edit).await?;
    PostsWire::<S>::post(&call, post_t(post, None, Viewer::default()))
}

async fn history<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_post_history_request);
    let versions = w.0.history(me, r.post_id()).await?;
    let versions = versions.into_iter().map(|v| {
        make!(pp::PostVersionT {
            text: Some(v.text),
            media_ids: Some(v.media_ids),
            edited_at_ms: v.replaced_at_ms,
        })
    });
    let versions = Some(versions.collect());
    let history = make!(pp::PostHistoryResponseT { versions });
    PostsWire::<S>::answer(&call, PostsOpT::PostHistoryResponse(Box::new(history)))
}

async fn get<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let id = op!(call, body_as_posts.op_as_get_post_request).post_id();
    let post = w.0.get(me, id).await?;
    let counts = w.0.counts(id).await?;
    let viewer = Viewer {
        reaction: w.0.viewer_reaction(me, id).await?,
        reposted: w.0.viewer_reposted(me, id).await?,
    };
    PostsWire::<S>::post(&call, post_t(post, Some(counts), viewer))
}

async fn get_many<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let wanted = ids(
        op!(call, body_as_posts.op_as_get_posts_request).post_ids(),
        super::MAX_BATCH,
    );
    let list = w.0.get_many(me, &wanted).await?;
    PostsWire::<S>::page(&call, list, None)
}

async fn by_user<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_posts.op_as_user_posts_request);
    let (limit, cursor) = page_request(r.page());
    let me = call.user()?;
    let (list, next) = w.0.by_user(me, r.user_id(), limit, cursor).await?;
    PostsWire::<S>::page(&call, list, next)
}

async fn comment<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_create_comment_request);
    let text = r.text().unwrap_or_default();
    let c = w.0.comment(me, r.post_id(), r.parent_id(), text).await?;
    PostsWire::<S>::comment(&call, c)
}

async fn comments<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_posts.op_as_comments_list_request);
    let (limit, cursor) = page_request(r.page());
    let me = call.user()?;
    let (list, next) = w.0.comments(me, r.post_id(), limit, cursor).await?;
    let page = make!(pp::CommentsListResponseT {
        comments: Some(list.into_iter().map(comment_t).collect()),
        page: page_t(next),
    });
    PostsWire::<S>::answer(&call, PostsOpT::CommentsListResponse(Box::new(page)))
}

async fn edit_comment<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_edit_comment_request);
    let text = r.text().unwrap_or_default();
    let c = w.0.edit_comment(me, r.comment_id(), text).await?;
    PostsWire::<S>::comment(&call, c)
}

/// A change to the post or comment the request names, answered `Ack`.
macro_rules! post_changes {
    ($($name:ident: $op:ident.$id:ident => $method:ident;)*) => {$(
        async fn $name<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
            let id = op!(call, body_as_posts.$op).$id();
            w.0.$method(call.user()?, id).await?;
            call.ack()
        }
    )*};
}

post_changes! {
    delete: op_as_delete_post_request.post_id => delete;
    delete_comment: op_as_delete_comment_request.comment_id => delete_comment;
    undo_repost: op_as_undo_repost_request.post_id => undo_repost;
}

async fn react<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_react_request);
    post_target(r.target_kind())?;
    let emoji = r.emoji().unwrap_or_default();
    w.0.react(me, r.target_id(), emoji).await?;
    call.ack()
}

async fn unreact<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_unreact_request);
    post_target(r.target_kind())?;
    w.0.unreact(me, r.target_id()).await?;
    call.ack()
}

async fn reactions<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_posts.op_as_reactions_list_request);
    post_target(r.target_kind())?;
    let (limit, cursor) = page_request(r.page());
    let only = r.emoji().filter(|e| !e.is_empty());
    let (counts, entries, next) =
        w.0.reactions(me, r.target_id(), only, limit, cursor)
            .await?;
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
    PostsWire::<S>::answer(&call, PostsOpT::ReactionsListResponse(Box::new(list)))
}

async fn repost<S: Store + Clone + 'static>(w: PostsWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let id = op!(call, body_as_posts.op_as_repost_request).post_id();
    let post = w.0.repost(me, id).await?;
    PostsWire::<S>::post(&call, post_t(post, None, Viewer::default()))
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
    let post_id = op!(call, body_as_control.op_as_subscribe_request).target_id();
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
    Ok(Subscription {
        initial: vec![snapshot],
        events,
    })
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
