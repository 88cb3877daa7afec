//! The `Posts` service on the wire. Every operation acts as the session's user; what a
//! user may see or touch is decided by the posts service's single read rule.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use flatbuffers::WIPOffset;
use futures::future::LocalBoxFuture;
use selfie_codec::{Builder, Encoder, Frame, Limits, build};
use selfie_protocol::posts::{self as pp, PostsOp};
use selfie_protocol::{Body, Envelope, ErrorCode, common};
use selfie_services::posts::{
    Audience, Comment, NewPost, Post, PostEdit, Posts, PostsError, ReplyPolicy,
};
use selfie_storage::{Cursor, Store};

use super::{encode, page_info, page_request, signed_in};
use crate::service::{ErrorReply, RequestContext, Service};

fn posts_error(e: &PostsError) -> ErrorReply {
    match e {
        PostsError::NotFound => ErrorReply::new(ErrorCode::NotFound, "no such post"),
        PostsError::Forbidden => {
            ErrorReply::new(ErrorCode::Forbidden, "only the author may do this")
        }
        PostsError::Busy => ErrorReply::new(ErrorCode::Unavailable, "busy; try again"),
        PostsError::CommentsLimited => {
            ErrorReply::new(ErrorCode::Forbidden, "comments are limited on this post")
        }
        PostsError::InvalidArgument { field } => {
            ErrorReply::new(ErrorCode::InvalidArgument, format!("invalid {field}"))
        }
        PostsError::Storage(_) => ErrorReply::new(ErrorCode::StorageFailure, "storage unavailable"),
        PostsError::Corrupt => ErrorReply::new(ErrorCode::Internal, "internal error"),
    }
}

fn audience_of(a: common::Audience) -> Option<Audience> {
    match a {
        common::Audience::Public => Some(Audience::Public),
        common::Audience::Followers => Some(Audience::Followers),
        common::Audience::MentionedOnly => Some(Audience::MentionedOnly),
        common::Audience::CloseFriends => Some(Audience::CloseFriends),
        _ => None,
    }
}

fn wire_audience(a: Audience) -> common::Audience {
    match a {
        Audience::Public => common::Audience::Public,
        Audience::Followers => common::Audience::Followers,
        Audience::MentionedOnly => common::Audience::MentionedOnly,
        Audience::CloseFriends => common::Audience::CloseFriends,
    }
}

fn reply_policy_of(p: pp::ReplyPolicy) -> Option<ReplyPolicy> {
    match p {
        pp::ReplyPolicy::Everyone => Some(ReplyPolicy::Everyone),
        pp::ReplyPolicy::Followers => Some(ReplyPolicy::Followers),
        pp::ReplyPolicy::Mentioned => Some(ReplyPolicy::Mentioned),
        pp::ReplyPolicy::Nobody => Some(ReplyPolicy::Nobody),
        _ => None,
    }
}

fn wire_reply_policy(p: ReplyPolicy) -> pp::ReplyPolicy {
    match p {
        ReplyPolicy::Everyone => pp::ReplyPolicy::Everyone,
        ReplyPolicy::Followers => pp::ReplyPolicy::Followers,
        ReplyPolicy::Mentioned => pp::ReplyPolicy::Mentioned,
        ReplyPolicy::Nobody => pp::ReplyPolicy::Nobody,
    }
}

/// Most media ids read from one request (the service allows fewer; more is refused).
const MEDIA_READ_MAX: usize = 64;

fn media_ids(v: Option<flatbuffers::Vector<'_, u64>>) -> Option<Vec<u64>> {
    v.map(|v| v.iter().take(MEDIA_READ_MAX + 1).collect())
}

enum Call {
    Create {
        new: NewPost,
        audience: Option<Audience>,
        reply_policy: Option<ReplyPolicy>,
    },
    Edit {
        post_id: u64,
        edit: PostEdit,
    },
    History(u64),
    Delete(u64),
    Get(u64),
    Comment {
        post_id: u64,
        parent_id: u64,
        text: String,
    },
    Comments {
        post_id: u64,
        limit: usize,
        cursor: Option<Cursor>,
    },
    React {
        post_id: u64,
        emoji: String,
    },
    Unreact(u64),
    Repost(u64),
    UndoRepost(u64),
    GetMany(Vec<u64>),
    EditComment {
        comment_id: u64,
        text: String,
    },
    DeleteComment(u64),
    Reactions {
        post_id: u64,
        only: Option<String>,
        limit: usize,
        cursor: Option<Cursor>,
    },
    ByUser {
        user_id: u64,
        limit: usize,
        cursor: Option<Cursor>,
    },
}

fn parse(env: &Envelope<'_>) -> Option<Call> {
    let p = env.body_as_posts()?;
    let text = |t: Option<&str>| t.unwrap_or_default().to_string();
    Some(match p.op_type() {
        PostsOp::CreatePostRequest => {
            let r = p.op_as_create_post_request()?;
            Call::Create {
                new: NewPost {
                    media_ids: media_ids(r.media_ids()).unwrap_or_default(),
                    quote_of: (r.quote_of() != 0).then_some(r.quote_of()),
                    sensitive: r.sensitive(),
                    ..NewPost::text(text(r.text()))
                },
                audience: audience_of(r.audience()),
                reply_policy: reply_policy_of(r.reply_policy()),
            }
        }
        PostsOp::EditPostRequest => {
            let r = p.op_as_edit_post_request()?;
            Call::Edit {
                post_id: r.post_id(),
                edit: PostEdit {
                    text: r.text().map(str::to_string),
                    media_ids: media_ids(r.media_ids()),
                    sensitive: r.sensitive(),
                },
            }
        }
        PostsOp::PostHistoryRequest => Call::History(p.op_as_post_history_request()?.post_id()),
        PostsOp::DeletePostRequest => Call::Delete(p.op_as_delete_post_request()?.post_id()),
        PostsOp::GetPostRequest => Call::Get(p.op_as_get_post_request()?.post_id()),
        PostsOp::CreateCommentRequest => {
            let r = p.op_as_create_comment_request()?;
            Call::Comment {
                post_id: r.post_id(),
                parent_id: r.parent_id(),
                text: text(r.text()),
            }
        }
        PostsOp::CommentsListRequest => {
            let r = p.op_as_comments_list_request()?;
            let (limit, cursor) = page_request(r.page());
            Call::Comments {
                post_id: r.post_id(),
                limit,
                cursor,
            }
        }
        PostsOp::ReactRequest => {
            let r = p.op_as_react_request()?;
            if r.target_kind() != common::ObjectKind::Post {
                return None;
            }
            Call::React {
                post_id: r.target_id(),
                emoji: text(r.emoji()),
            }
        }
        PostsOp::UnreactRequest => {
            let r = p.op_as_unreact_request()?;
            if r.target_kind() != common::ObjectKind::Post {
                return None;
            }
            Call::Unreact(r.target_id())
        }
        PostsOp::RepostRequest => Call::Repost(p.op_as_repost_request()?.post_id()),
        PostsOp::UndoRepostRequest => Call::UndoRepost(p.op_as_undo_repost_request()?.post_id()),
        PostsOp::GetPostsRequest => Call::GetMany(
            p.op_as_get_posts_request()?
                .post_ids()
                .map(|v| {
                    // One more than allowed is enough to be refused.
                    v.iter()
                        .take(selfie_services::posts::MAX_BATCH + 1)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        PostsOp::EditCommentRequest => {
            let r = p.op_as_edit_comment_request()?;
            Call::EditComment {
                comment_id: r.comment_id(),
                text: text(r.text()),
            }
        }
        PostsOp::DeleteCommentRequest => {
            Call::DeleteComment(p.op_as_delete_comment_request()?.comment_id())
        }
        PostsOp::ReactionsListRequest => {
            let r = p.op_as_reactions_list_request()?;
            if r.target_kind() != common::ObjectKind::Post {
                return None;
            }
            let (limit, cursor) = page_request(r.page());
            Call::Reactions {
                post_id: r.target_id(),
                only: r.emoji().filter(|e| !e.is_empty()).map(str::to_string),
                limit,
                cursor,
            }
        }
        PostsOp::UserPostsRequest => {
            let r = p.op_as_user_posts_request()?;
            let (limit, cursor) = page_request(r.page());
            Call::ByUser {
                user_id: r.user_id(),
                limit,
                cursor,
            }
        }
        _ => return None,
    })
}

fn wrap(
    b: &mut Builder,
    id: u64,
    op_type: PostsOp,
    op: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> WIPOffset<Envelope<'static>> {
    let body = pp::Posts::create(
        b,
        &pp::PostsArgs {
            op_type,
            op: Some(op),
        },
    );
    super::envelope(b, id, Body::Posts, body.as_union_value())
}

/// A page of posts (without counts or the viewer's own state).
fn posts_page(
    b: &mut Builder,
    id: u64,
    list: &[Post],
    next: &Option<Cursor>,
) -> WIPOffset<Envelope<'static>> {
    let items: Vec<_> = list
        .iter()
        .map(|p| post_table(b, p, None, &ViewerState::default()))
        .collect();
    let items = b.create_vector(&items);
    let info = page_info(b, next);
    let r = pp::PostsResponse::create(
        b,
        &pp::PostsResponseArgs {
            posts: Some(items),
            page: Some(info),
        },
    );
    wrap(b, id, PostsOp::PostsResponse, r.as_union_value())
}

/// What the viewer did to a post (shown on single reads).
#[derive(Default)]
struct ViewerState<'a> {
    reaction: Option<&'a str>,
    reposted: bool,
}

fn post_table(
    b: &mut Builder,
    p: &Post,
    counts: Option<[i64; 4]>,
    viewer: &ViewerState<'_>,
) -> WIPOffset<pp::Post<'static>> {
    let text = b.create_string(&p.text);
    let reaction = viewer.reaction.map(|r| b.create_string(r));
    let tags: Vec<_> = p.hashtags.iter().map(|t| b.create_string(t)).collect();
    let tags = b.create_vector(&tags);
    let mentions = b.create_vector(&p.mentions);
    let media: Vec<_> = p
        .media_ids
        .iter()
        .map(|&media_id| {
            common::MediaRef::create(
                b,
                &common::MediaRefArgs {
                    media_id,
                    ..Default::default()
                },
            )
        })
        .collect();
    let media = b.create_vector(&media);
    let author = common::UserSummary::create(
        b,
        &common::UserSummaryArgs {
            user_id: p.author_id,
            ..Default::default()
        },
    );
    let counts = counts.map(|[reactions, comments, reposts, quotes]| {
        pp::PostCounts::create(
            b,
            &pp::PostCountsArgs {
                reactions: reactions.max(0) as u64,
                comments: comments.max(0) as u64,
                reposts: reposts.max(0) as u64,
                quotes: quotes.max(0) as u64,
                views: 0,
            },
        )
    });
    pp::Post::create(
        b,
        &pp::PostArgs {
            post_id: p.post_id,
            author: Some(author),
            text: Some(text),
            hashtags: Some(tags),
            mentions: Some(mentions),
            audience: wire_audience(p.audience),
            created_at_ms: p.created_at_ms,
            edited_at_ms: p.edited_at_ms,
            quote_of: p.quote_of.or(p.repost_of).unwrap_or(0),
            counts,
            deleted: p.deleted,
            media: Some(media),
            reply_policy: wire_reply_policy(p.reply_policy),
            edit_count: p.edit_count,
            sensitive: p.sensitive,
            viewer_reaction: reaction,
            viewer_reposted: viewer.reposted,
            ..Default::default()
        },
    )
}

fn comment_table(b: &mut Builder, c: &Comment) -> WIPOffset<pp::Comment<'static>> {
    let text = b.create_string(&c.text);
    let author = common::UserSummary::create(
        b,
        &common::UserSummaryArgs {
            // A tombstone does not say whose comment it was.
            user_id: if c.deleted { 0 } else { c.author_id },
            ..Default::default()
        },
    );
    pp::Comment::create(
        b,
        &pp::CommentArgs {
            comment_id: c.comment_id,
            post_id: c.post_id,
            parent_id: c.parent_id,
            author: Some(author),
            text: Some(text),
            created_at_ms: c.created_at_ms,
            edited_at_ms: c.edited_at_ms,
            deleted: c.deleted,
            ..Default::default()
        },
    )
}

/// The posts service of one shard, on the wire.
pub struct PostsApi<S> {
    posts: Rc<Posts<S>>,
    encoder: Rc<RefCell<Encoder>>,
}

impl<S: Store + 'static> PostsApi<S> {
    /// Over one shard's posts service.
    pub fn new(posts: Posts<S>) -> Self {
        Self {
            posts: Rc::new(posts),
            encoder: Rc::new(RefCell::new(Encoder::new(Limits::DEFAULT))),
        }
    }
}

impl<S: Store + 'static> Service for PostsApi<S> {
    fn owner_key(&self, _caller: Option<u64>, env: &Envelope<'_>) -> Option<u64> {
        // Read straight from the request (the handler parses it fully on the owner shard).
        let p = env.body_as_posts()?;
        match p.op_type() {
            // A post's reactions and reposts meet on the post's shard, where one user's
            // changes to one post take turns.
            PostsOp::ReactRequest => Some(p.op_as_react_request()?.target_id()),
            PostsOp::UnreactRequest => Some(p.op_as_unreact_request()?.target_id()),
            PostsOp::RepostRequest => Some(p.op_as_repost_request()?.post_id()),
            PostsOp::UndoRepostRequest => Some(p.op_as_undo_repost_request()?.post_id()),
            // One comment's edit and deletion meet on one shard and take turns.
            PostsOp::EditCommentRequest => Some(p.op_as_edit_comment_request()?.comment_id()),
            PostsOp::DeleteCommentRequest => Some(p.op_as_delete_comment_request()?.comment_id()),
            _ => None,
        }
    }

    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>> {
        let env = frame.envelope();
        let id = env.id();
        let call = parse(&env);
        let (posts, encoder) = (self.posts.clone(), self.encoder.clone());
        Box::pin(async move {
            let me = signed_in(&ctx)?;
            let call = call.ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    "this posts operation is not available yet",
                )
            })?;
            let err = |e: PostsError| posts_error(&e);
            let enc =
                |f: &dyn Fn(&mut Builder) -> WIPOffset<Envelope<'static>>| encode(&encoder, f);
            let one = |p: &Post, counts: Option<[i64; 4]>| {
                enc(&|b| {
                    let post = post_table(b, p, counts, &ViewerState::default());
                    let r = pp::PostResponse::create(b, &pp::PostResponseArgs { post: Some(post) });
                    wrap(b, id, PostsOp::PostResponse, r.as_union_value())
                })
            };
            match call {
                Call::Create {
                    mut new,
                    audience,
                    reply_policy,
                } => {
                    new.audience = audience.ok_or_else(|| {
                        ErrorReply::new(ErrorCode::InvalidArgument, "invalid audience")
                    })?;
                    new.reply_policy = reply_policy.ok_or_else(|| {
                        ErrorReply::new(ErrorCode::InvalidArgument, "invalid reply_policy")
                    })?;
                    one(&posts.publish(me, new).await.map_err(err)?, None)
                }
                Call::Edit { post_id, edit } => one(
                    &posts.edit_with(me, post_id, edit).await.map_err(err)?,
                    None,
                ),
                Call::Get(post_id) => {
                    let p = posts.get(me, post_id).await.map_err(err)?;
                    let mut counts = [0; 4];
                    for (slot, which) in
                        counts
                            .iter_mut()
                            .zip(["reactions", "comments", "reposts", "quotes"])
                    {
                        *slot = posts.count(post_id, which).await.map_err(err)?;
                    }
                    let reaction = posts.viewer_reaction(me, post_id).await.map_err(err)?;
                    let reposted = posts.viewer_reposted(me, post_id).await.map_err(err)?;
                    enc(&|b| {
                        let viewer = ViewerState {
                            reaction: reaction.as_deref(),
                            reposted,
                        };
                        let post = post_table(b, &p, Some(counts), &viewer);
                        let r =
                            pp::PostResponse::create(b, &pp::PostResponseArgs { post: Some(post) });
                        wrap(b, id, PostsOp::PostResponse, r.as_union_value())
                    })
                }
                Call::GetMany(ids) => {
                    let list = posts.get_many(me, &ids).await.map_err(err)?;
                    enc(&|b| posts_page(b, id, &list, &None))
                }
                Call::UndoRepost(post_id) => {
                    posts.undo_repost(me, post_id).await.map_err(err)?;
                    enc(&|b| build::ack(b, id))
                }
                Call::EditComment { comment_id, text } => {
                    let c = posts
                        .edit_comment(me, comment_id, &text)
                        .await
                        .map_err(err)?;
                    enc(&|b| {
                        let comment = comment_table(b, &c);
                        let r = pp::CommentResponse::create(
                            b,
                            &pp::CommentResponseArgs {
                                comment: Some(comment),
                            },
                        );
                        wrap(b, id, PostsOp::CommentResponse, r.as_union_value())
                    })
                }
                Call::DeleteComment(comment_id) => {
                    posts.delete_comment(me, comment_id).await.map_err(err)?;
                    enc(&|b| build::ack(b, id))
                }
                Call::Reactions {
                    post_id,
                    only,
                    limit,
                    cursor,
                } => {
                    let (counts, entries, next) = posts
                        .reactions(me, post_id, only.as_deref(), limit, cursor)
                        .await
                        .map_err(err)?;
                    enc(&|b| {
                        let counts: Vec<_> = counts
                            .iter()
                            .map(|(emoji, n)| {
                                let e = b.create_string(emoji);
                                common::ReactionCount::create(
                                    b,
                                    &common::ReactionCountArgs {
                                        emoji: Some(e),
                                        count: (*n).max(0) as u64,
                                    },
                                )
                            })
                            .collect();
                        let counts = b.create_vector(&counts);
                        let entries: Vec<_> = entries
                            .iter()
                            .map(|r| {
                                let user = common::UserSummary::create(
                                    b,
                                    &common::UserSummaryArgs {
                                        user_id: r.user_id,
                                        ..Default::default()
                                    },
                                );
                                let e = b.create_string(&r.emoji);
                                pp::ReactionEntry::create(
                                    b,
                                    &pp::ReactionEntryArgs {
                                        user: Some(user),
                                        emoji: Some(e),
                                        created_at_ms: 0,
                                    },
                                )
                            })
                            .collect();
                        let entries = b.create_vector(&entries);
                        let info = page_info(b, &next);
                        let r = pp::ReactionsListResponse::create(
                            b,
                            &pp::ReactionsListResponseArgs {
                                counts: Some(counts),
                                entries: Some(entries),
                                page: Some(info),
                            },
                        );
                        wrap(b, id, PostsOp::ReactionsListResponse, r.as_union_value())
                    })
                }
                Call::Repost(post_id) => one(&posts.repost(me, post_id).await.map_err(err)?, None),
                Call::History(post_id) => {
                    let versions = posts.history(me, post_id).await.map_err(err)?;
                    enc(&|b| {
                        let list: Vec<_> = versions
                            .iter()
                            .map(|v| {
                                let text = b.create_string(&v.text);
                                let media = b.create_vector(&v.media_ids);
                                pp::PostVersion::create(
                                    b,
                                    &pp::PostVersionArgs {
                                        text: Some(text),
                                        media_ids: Some(media),
                                        edited_at_ms: v.replaced_at_ms,
                                    },
                                )
                            })
                            .collect();
                        let list = b.create_vector(&list);
                        let r = pp::PostHistoryResponse::create(
                            b,
                            &pp::PostHistoryResponseArgs {
                                versions: Some(list),
                            },
                        );
                        wrap(b, id, PostsOp::PostHistoryResponse, r.as_union_value())
                    })
                }
                Call::Delete(post_id) => {
                    posts.delete(me, post_id).await.map_err(err)?;
                    enc(&|b| build::ack(b, id))
                }
                Call::Comment {
                    post_id,
                    parent_id,
                    text,
                } => {
                    let c = posts
                        .comment(me, post_id, parent_id, &text)
                        .await
                        .map_err(err)?;
                    enc(&|b| {
                        let comment = comment_table(b, &c);
                        let r = pp::CommentResponse::create(
                            b,
                            &pp::CommentResponseArgs {
                                comment: Some(comment),
                            },
                        );
                        wrap(b, id, PostsOp::CommentResponse, r.as_union_value())
                    })
                }
                Call::Comments {
                    post_id,
                    limit,
                    cursor,
                } => {
                    let (list, next) = posts
                        .comments(me, post_id, limit, cursor)
                        .await
                        .map_err(err)?;
                    enc(&|b| {
                        let items: Vec<_> = list.iter().map(|c| comment_table(b, c)).collect();
                        let items = b.create_vector(&items);
                        let info = page_info(b, &next);
                        let r = pp::CommentsListResponse::create(
                            b,
                            &pp::CommentsListResponseArgs {
                                comments: Some(items),
                                page: Some(info),
                            },
                        );
                        wrap(b, id, PostsOp::CommentsListResponse, r.as_union_value())
                    })
                }
                Call::React { post_id, emoji } => {
                    posts.react(me, post_id, &emoji).await.map_err(err)?;
                    enc(&|b| build::ack(b, id))
                }
                Call::Unreact(post_id) => {
                    posts.unreact(me, post_id).await.map_err(err)?;
                    enc(&|b| build::ack(b, id))
                }
                Call::ByUser {
                    user_id,
                    limit,
                    cursor,
                } => {
                    let (list, next) = posts
                        .by_user(me, user_id, limit, cursor)
                        .await
                        .map_err(err)?;
                    enc(&|b| posts_page(b, id, &list, &next))
                }
            }
        })
    }
}
