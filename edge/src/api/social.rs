//! The `Users` and `Graph` services on the wire. Every operation needs a signed-in
//! session and acts as its user (the principal from the access token): a client can never
//! act for another user, whatever ids it sends.
//!
//! Graph requests are routed to the owner shard of the *other* user of the pair, so that
//! concurrent operations on one pair in one direction meet on one shard (the graph
//! serialises them there).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use flatbuffers::WIPOffset;
use futures::future::LocalBoxFuture;
use selfie_codec::{Builder, Encoder, Frame, Limits, build};
use selfie_protocol::graph::{self as pg, GraphOp};
use selfie_protocol::users::{self as pu, UsersOp};
use selfie_protocol::{Body, Envelope, ErrorCode, common};
use selfie_services::graph::{FollowState, Graph, GraphError, IdPage};
use selfie_services::users::{Profile, ProfileUpdate, Users, UsersError};
use selfie_storage::{Cursor, Store};

use super::envelope;
use crate::service::{ErrorReply, RequestContext, Service};

/// Most users per list page.
const PAGE_MAX: usize = 100;

fn graph_error(e: &GraphError) -> ErrorReply {
    let (code, msg) = match e {
        GraphError::SelfTarget => (ErrorCode::InvalidArgument, "not allowed on yourself"),
        GraphError::NotFound => (ErrorCode::NotFound, "no such user"),
        GraphError::Blocked => (ErrorCode::Blocked, "blocked"),
        GraphError::Forbidden => (ErrorCode::Forbidden, "this list is private"),
        GraphError::NoSuchRequest => (ErrorCode::NotFound, "no such request"),
        GraphError::Storage(_) | GraphError::Users(UsersError::Storage(_)) => {
            (ErrorCode::StorageFailure, "storage unavailable")
        }
        GraphError::Users(_) => (ErrorCode::Internal, "internal error"),
    };
    ErrorReply::new(code, msg)
}

fn users_error(e: &UsersError) -> ErrorReply {
    match e {
        UsersError::NotFound => ErrorReply::new(ErrorCode::NotFound, "no such user"),
        UsersError::InvalidArgument { field } => {
            ErrorReply::new(ErrorCode::InvalidArgument, format!("invalid {field}"))
        }
        UsersError::Storage(_) => ErrorReply::new(ErrorCode::StorageFailure, "storage unavailable"),
        UsersError::Corrupt => ErrorReply::new(ErrorCode::Internal, "internal error"),
    }
}

fn principal(ctx: &RequestContext) -> Result<u64, ErrorReply> {
    ctx.principal
        .as_ref()
        .map(|p| p.user_id)
        .ok_or_else(|| ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"))
}

fn encode(
    encoder: &RefCell<Encoder>,
    f: &dyn Fn(&mut Builder) -> WIPOffset<Envelope<'static>>,
) -> Result<Bytes, ErrorReply> {
    encoder
        .borrow_mut()
        .encode_bytes(f)
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))
}

/// The users service on the wire.
pub struct UsersApi<S> {
    users: Rc<Users<S>>,
    graph: Rc<Graph<S>>,
    encoder: Rc<RefCell<Encoder>>,
}

impl<S: Store + 'static> UsersApi<S> {
    /// Over one shard's users and graph services.
    pub fn new(users: Rc<Users<S>>, graph: Rc<Graph<S>>) -> Self {
        Self {
            users,
            graph,
            encoder: Rc::new(RefCell::new(Encoder::new(Limits::DEFAULT))),
        }
    }
}

enum UsersCall {
    Get(u64),
    Update(ProfileUpdate),
}

fn profile_frame(
    b: &mut Builder,
    id: u64,
    p: &Profile,
    counts: (i64, i64),
    rel: selfie_services::graph::Relationship,
) -> WIPOffset<Envelope<'static>> {
    let (username, display, bio) = (
        b.create_string(&p.username),
        b.create_string(&p.display_name),
        b.create_string(&p.bio),
    );
    let user = common::UserSummary::create(
        b,
        &common::UserSummaryArgs {
            user_id: p.user_id,
            username: Some(username),
            display_name: Some(display),
            private: p.private,
            ..Default::default()
        },
    );
    let relationship = pu::Relationship::create(
        b,
        &pu::RelationshipArgs {
            following: rel.following,
            followed_by: rel.followed_by,
            follow_requested: rel.requested,
            blocking: rel.blocking,
            blocked_by: rel.blocked_by,
            muting: rel.muting,
            ..Default::default()
        },
    );
    let profile = pu::Profile::create(
        b,
        &pu::ProfileArgs {
            user: Some(user),
            bio: Some(bio),
            followers_count: counts.0.max(0) as u64,
            following_count: counts.1.max(0) as u64,
            relationship: Some(relationship),
            ..Default::default()
        },
    );
    let r = pu::GetProfileResponse::create(
        b,
        &pu::GetProfileResponseArgs {
            profile: Some(profile),
        },
    );
    let body = pu::Users::create(
        b,
        &pu::UsersArgs {
            op_type: UsersOp::GetProfileResponse,
            op: Some(r.as_union_value()),
        },
    );
    envelope(b, id, Body::Users, body.as_union_value())
}

impl<S: Store + 'static> Service for UsersApi<S> {
    fn owner_key(&self, _env: &Envelope<'_>) -> Option<u64> {
        None
    }

    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>> {
        let env = frame.envelope();
        let id = env.id();
        let call = env.body_as_users().and_then(|u| match u.op_type() {
            UsersOp::GetProfileRequest => u
                .op_as_get_profile_request()
                .map(|r| UsersCall::Get(r.user_id())),
            UsersOp::UpdateProfileRequest => u.op_as_update_profile_request().map(|r| {
                UsersCall::Update(ProfileUpdate {
                    display_name: r.display_name().map(str::to_string),
                    bio: r.bio().map(str::to_string),
                    private: r.private(),
                })
            }),
            _ => None,
        });
        let (users, graph, encoder) =
            (self.users.clone(), self.graph.clone(), self.encoder.clone());
        Box::pin(async move {
            let me = principal(&ctx)?;
            let call = call.ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    "this users operation is not available yet",
                )
            })?;
            let (profile, target) = match call {
                UsersCall::Get(user_id) => (
                    users.get(me, user_id).await.map_err(|e| users_error(&e))?,
                    user_id,
                ),
                UsersCall::Update(update) => (
                    users
                        .update(me, update)
                        .await
                        .map_err(|e| users_error(&e))?,
                    me,
                ),
            };
            let counts = graph.counts(target).await.map_err(|e| graph_error(&e))?;
            let rel = graph
                .relationship(me, target)
                .await
                .map_err(|e| graph_error(&e))?;
            encode(&encoder, &|b| profile_frame(b, id, &profile, counts, rel))
        })
    }
}

/// The graph service on the wire.
pub struct GraphApi<S> {
    graph: Rc<Graph<S>>,
    encoder: Rc<RefCell<Encoder>>,
}

impl<S: Store + 'static> GraphApi<S> {
    /// Over one shard's graph service.
    pub fn new(graph: Rc<Graph<S>>) -> Self {
        Self {
            graph,
            encoder: Rc::new(RefCell::new(Encoder::new(Limits::DEFAULT))),
        }
    }
}

enum GraphCall {
    Follow(u64),
    Unfollow(u64),
    Approve(u64),
    Deny(u64),
    Cancel(u64),
    Block(u64),
    Unblock(u64),
    Mute(u64),
    Unmute(u64),
    Followers(u64, usize, Option<Cursor>),
    Following(u64, usize, Option<Cursor>),
    Requests(usize, Option<Cursor>),
}

fn page_args(page: Option<common::PageRequest<'_>>) -> (usize, Option<Cursor>) {
    let limit = page
        .map_or(20, |p| usize::from(p.limit()))
        .clamp(1, PAGE_MAX);
    let cursor = page
        .and_then(|p| p.cursor())
        .map(|c| Cursor(Bytes::copy_from_slice(c.bytes())));
    (limit, cursor)
}

fn parse_graph(env: &Envelope<'_>) -> Option<GraphCall> {
    let g = env.body_as_graph()?;
    Some(match g.op_type() {
        GraphOp::FollowRequest => GraphCall::Follow(g.op_as_follow_request()?.target_id()),
        GraphOp::UnfollowRequest => GraphCall::Unfollow(g.op_as_unfollow_request()?.target_id()),
        GraphOp::FollowRequestApproveRequest => {
            GraphCall::Approve(g.op_as_follow_request_approve_request()?.requester_id())
        }
        GraphOp::FollowRequestDenyRequest => {
            GraphCall::Deny(g.op_as_follow_request_deny_request()?.requester_id())
        }
        GraphOp::FollowRequestCancelRequest => {
            GraphCall::Cancel(g.op_as_follow_request_cancel_request()?.target_id())
        }
        GraphOp::BlockRequest => GraphCall::Block(g.op_as_block_request()?.target_id()),
        GraphOp::UnblockRequest => GraphCall::Unblock(g.op_as_unblock_request()?.target_id()),
        GraphOp::MuteRequest => GraphCall::Mute(g.op_as_mute_request()?.target_id()),
        GraphOp::UnmuteRequest => GraphCall::Unmute(g.op_as_unmute_request()?.target_id()),
        GraphOp::FollowersListRequest => {
            let r = g.op_as_followers_list_request()?;
            let (limit, cursor) = page_args(r.page());
            GraphCall::Followers(r.user_id(), limit, cursor)
        }
        GraphOp::FollowingListRequest => {
            let r = g.op_as_following_list_request()?;
            let (limit, cursor) = page_args(r.page());
            GraphCall::Following(r.user_id(), limit, cursor)
        }
        GraphOp::FollowRequestsListRequest => {
            let (limit, cursor) = page_args(g.op_as_follow_requests_list_request()?.page());
            GraphCall::Requests(limit, cursor)
        }
        _ => return None,
    })
}

fn list_frame(b: &mut Builder, id: u64, page: &IdPage) -> WIPOffset<Envelope<'static>> {
    let users: Vec<_> = page
        .ids
        .iter()
        .map(|&user_id| {
            common::UserSummary::create(
                b,
                &common::UserSummaryArgs {
                    user_id,
                    ..Default::default()
                },
            )
        })
        .collect();
    let users = b.create_vector(&users);
    let next = page.cursor.as_ref().map(|c| b.create_vector(&c.0));
    let info = common::PageInfo::create(
        b,
        &common::PageInfoArgs {
            next_cursor: next,
            has_more: page.cursor.is_some(),
        },
    );
    let r = pg::UserListResponse::create(
        b,
        &pg::UserListResponseArgs {
            users: Some(users),
            page: Some(info),
            total_count: 0,
        },
    );
    let body = pg::Graph::create(
        b,
        &pg::GraphArgs {
            op_type: GraphOp::UserListResponse,
            op: Some(r.as_union_value()),
        },
    );
    envelope(b, id, Body::Graph, body.as_union_value())
}

impl<S: Store + 'static> Service for GraphApi<S> {
    fn owner_key(&self, env: &Envelope<'_>) -> Option<u64> {
        match parse_graph(env)? {
            GraphCall::Follow(t)
            | GraphCall::Unfollow(t)
            | GraphCall::Approve(t)
            | GraphCall::Deny(t)
            | GraphCall::Cancel(t)
            | GraphCall::Block(t)
            | GraphCall::Unblock(t)
            | GraphCall::Mute(t)
            | GraphCall::Unmute(t)
            | GraphCall::Followers(t, ..)
            | GraphCall::Following(t, ..) => Some(t),
            GraphCall::Requests(..) => None,
        }
    }

    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>> {
        let env = frame.envelope();
        let id = env.id();
        let call = parse_graph(&env);
        let (graph, encoder) = (self.graph.clone(), self.encoder.clone());
        Box::pin(async move {
            let me = principal(&ctx)?;
            let call = call.ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    "this graph operation is not available yet",
                )
            })?;
            let err = |e: GraphError| graph_error(&e);
            let ack = |encoder: &RefCell<Encoder>| encode(encoder, &|b| build::ack(b, id));
            match call {
                GraphCall::Follow(t) => {
                    let state = graph.follow(me, t).await.map_err(err)?;
                    encode(&encoder, &|b| {
                        let r = pg::FollowResponse::create(
                            b,
                            &pg::FollowResponseArgs {
                                state: match state {
                                    FollowState::Following => pg::FollowState::Following,
                                    FollowState::Requested => pg::FollowState::Requested,
                                },
                            },
                        );
                        let body = pg::Graph::create(
                            b,
                            &pg::GraphArgs {
                                op_type: GraphOp::FollowResponse,
                                op: Some(r.as_union_value()),
                            },
                        );
                        envelope(b, id, Body::Graph, body.as_union_value())
                    })
                }
                GraphCall::Unfollow(t) => graph
                    .unfollow(me, t)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Approve(r) => graph
                    .approve(me, r)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Deny(r) => graph
                    .deny(me, r)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Cancel(t) => graph
                    .cancel_request(me, t)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Block(t) => graph
                    .block(me, t)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Unblock(t) => graph
                    .unblock(me, t)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Mute(t) => graph
                    .mute(me, t)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Unmute(t) => graph
                    .unmute(me, t)
                    .await
                    .map_err(err)
                    .and_then(|()| ack(&encoder)),
                GraphCall::Followers(user, limit, cursor) => {
                    let page = graph
                        .followers(me, user, limit, cursor)
                        .await
                        .map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::Following(user, limit, cursor) => {
                    let page = graph
                        .following(me, user, limit, cursor)
                        .await
                        .map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::Requests(limit, cursor) => {
                    let page = graph.requests(me, limit, cursor).await.map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
            }
        })
    }
}
