//! The `Users` and `Graph` services on the wire. Every operation needs a signed-in
//! session and acts as its user (the principal from the access token): a client can never
//! act for another user, whatever ids it sends.
//!
//! Graph changes are routed to the owner shard of the *pair* of users (the caller and
//! the other user), so that concurrent operations on one pair — a follow racing an
//! unfollow, a block or a follower's removal, from either side — meet on one shard, where
//! the graph serialises them. On a fleet the graph also takes a short Redis lease on the
//! pair (`Graph::with_fleet_locks`), so that two nodes changing one pair take turns too.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use flatbuffers::WIPOffset;
use futures::future::LocalBoxFuture;
use selfie_codec::{Builder, Encoder, Frame, Limits, build};
use selfie_protocol::graph::{self as pg, GraphOp};
use selfie_protocol::users::{self as pu, UsersOp};
use selfie_protocol::{Body, Envelope, ErrorCode, common};
use selfie_services::graph::lists::{ListUpdate, Lists, UserList};
use selfie_services::graph::{FollowState, Graph, GraphError, IdPage};
use selfie_services::users::{
    Link, Permission, Profile, ProfileUpdate, Settings, SettingsUpdate, Users, UsersError,
};
use selfie_storage::{Cursor, Store};

use super::{encode, envelope, page_info, page_request, signed_in};
use crate::service::{ErrorReply, RequestContext, Service};

fn graph_error(e: &GraphError) -> ErrorReply {
    let (code, msg) = match e {
        GraphError::SelfTarget => (ErrorCode::InvalidArgument, "not allowed on yourself"),
        GraphError::NotFound => (ErrorCode::NotFound, "no such user"),
        GraphError::Blocked => (ErrorCode::Blocked, "blocked"),
        GraphError::Forbidden => (ErrorCode::Forbidden, "this list is private"),
        GraphError::NoSuchRequest => (ErrorCode::NotFound, "no such request"),
        GraphError::InvalidArgument { .. } => (ErrorCode::InvalidArgument, "invalid argument"),
        GraphError::Busy => (ErrorCode::Unavailable, "busy; try again"),
        GraphError::Storage(_) | GraphError::Users(UsersError::Storage(_)) => {
            (ErrorCode::StorageFailure, "storage unavailable")
        }
        GraphError::Users(_) | GraphError::Corrupt => (ErrorCode::Internal, "internal error"),
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
    GetByName(String),
    Update(ProfileUpdate),
    Settings,
    UpdateSettings(SettingsUpdate),
    Lookup(Vec<u64>, Vec<String>),
}

fn permission_of(p: pu::Permission) -> Option<Permission> {
    match p {
        pu::Permission::Everyone => Some(Permission::Everyone),
        pu::Permission::Followers => Some(Permission::Followers),
        pu::Permission::Following => Some(Permission::Following),
        pu::Permission::Nobody => Some(Permission::Nobody),
        _ => None,
    }
}

fn wire_permission(p: Permission) -> pu::Permission {
    match p {
        Permission::Everyone => pu::Permission::Everyone,
        Permission::Followers => pu::Permission::Followers,
        Permission::Following => pu::Permission::Following,
        Permission::Nobody => pu::Permission::Nobody,
    }
}

/// Reads a users request; `Err` for a request whose enum values are out of range.
fn parse_users(env: &Envelope<'_>) -> Option<Result<UsersCall, ErrorReply>> {
    let u = env.body_as_users()?;
    let invalid =
        |field: &str| ErrorReply::new(ErrorCode::InvalidArgument, format!("invalid {field}"));
    Some(Ok(match u.op_type() {
        UsersOp::GetProfileRequest => {
            let r = u.op_as_get_profile_request()?;
            match r.username() {
                Some(name) if r.user_id() == 0 => UsersCall::GetByName(name.to_string()),
                _ => UsersCall::Get(r.user_id()),
            }
        }
        UsersOp::UpdateProfileRequest => {
            let r = u.op_as_update_profile_request()?;
            UsersCall::Update(ProfileUpdate {
                display_name: r.display_name().map(str::to_string),
                bio: r.bio().map(str::to_string),
                private: r.private(),
                avatar_media_id: r.avatar_media_id(),
                banner_media_id: r.banner_media_id(),
                // One more than allowed is enough to be refused.
                links: r.links().map(|v| {
                    v.iter()
                        .take(selfie_services::users::MAX_LINKS + 1)
                        .map(|l| Link {
                            title: l.title().unwrap_or_default().to_string(),
                            url: l.url().unwrap_or_default().to_string(),
                        })
                        .collect()
                }),
                pronouns: r.pronouns().map(str::to_string),
                location: r.location().map(str::to_string),
            })
        }
        UsersOp::GetSettingsRequest => UsersCall::Settings,
        UsersOp::UpdateSettingsRequest => {
            let r = u.op_as_update_settings_request()?;
            let perm = |p: Option<pu::Permission>, field| match p {
                None => Ok(None),
                Some(p) => permission_of(p).map(Some).ok_or_else(|| invalid(field)),
            };
            let update = (|| {
                Ok(SettingsUpdate {
                    who_can_message: perm(r.who_can_message(), "who_can_message")?,
                    who_can_mention: perm(r.who_can_mention(), "who_can_mention")?,
                    who_can_comment: perm(r.who_can_comment(), "who_can_comment")?,
                    show_read_receipts: r.show_read_receipts(),
                    show_activity_status: r.show_activity_status(),
                    show_sensitive_media: r.show_sensitive_media(),
                    language: r.language().map(str::to_string),
                    timezone: r.timezone().map(str::to_string),
                    email_notifications: r.email_notifications(),
                })
            })();
            return Some(update.map(UsersCall::UpdateSettings));
        }
        UsersOp::LookupUsersRequest => {
            let r = u.op_as_lookup_users_request()?;
            let cap = selfie_services::users::MAX_LOOKUP + 1;
            UsersCall::Lookup(
                r.user_ids()
                    .map(|v| v.iter().take(cap).collect())
                    .unwrap_or_default(),
                r.usernames()
                    .map(|v| v.iter().take(cap).map(str::to_string).collect())
                    .unwrap_or_default(),
            )
        }
        _ => return None,
    }))
}

fn summary(b: &mut Builder, p: &Profile) -> WIPOffset<common::UserSummary<'static>> {
    let (username, display) = (
        b.create_string(&p.username),
        b.create_string(&p.display_name),
    );
    common::UserSummary::create(
        b,
        &common::UserSummaryArgs {
            user_id: p.user_id,
            username: Some(username),
            display_name: Some(display),
            avatar_media_id: p.avatar_media_id,
            private: p.private,
            deleted: p.deleted,
            ..Default::default()
        },
    )
}

fn users_frame(
    b: &mut Builder,
    id: u64,
    op_type: UsersOp,
    op: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> WIPOffset<Envelope<'static>> {
    let body = pu::Users::create(
        b,
        &pu::UsersArgs {
            op_type,
            op: Some(op),
        },
    );
    envelope(b, id, Body::Users, body.as_union_value())
}

/// What a profile read shows besides the profile itself.
struct ProfileExtras {
    followers: i64,
    following: i64,
    posts: i64,
    rel: selfie_services::graph::Relationship,
}

fn profile_frame(
    b: &mut Builder,
    id: u64,
    p: &Profile,
    x: &ProfileExtras,
) -> WIPOffset<Envelope<'static>> {
    let user = summary(b, p);
    let bio = b.create_string(&p.bio);
    let (pronouns, location) = (b.create_string(&p.pronouns), b.create_string(&p.location));
    let links: Vec<_> = p
        .links
        .iter()
        .map(|l| {
            let (title, url) = (b.create_string(&l.title), b.create_string(&l.url));
            pu::ProfileLink::create(
                b,
                &pu::ProfileLinkArgs {
                    title: Some(title),
                    url: Some(url),
                },
            )
        })
        .collect();
    let links = b.create_vector(&links);
    let rel = x.rel;
    let relationship = pu::Relationship::create(
        b,
        &pu::RelationshipArgs {
            following: rel.following,
            followed_by: rel.followed_by,
            follow_requested: rel.requested,
            follow_request_received: rel.request_received,
            blocking: rel.blocking,
            blocked_by: rel.blocked_by,
            muting: rel.muting,
            close_friend: rel.close_friend,
        },
    );
    let profile = pu::Profile::create(
        b,
        &pu::ProfileArgs {
            user: Some(user),
            bio: Some(bio),
            banner_media_id: p.banner_media_id,
            links: Some(links),
            created_at_ms: p.created_at_ms,
            followers_count: x.followers.max(0) as u64,
            following_count: x.following.max(0) as u64,
            posts_count: x.posts.max(0) as u64,
            relationship: Some(relationship),
            pronouns: Some(pronouns),
            location: Some(location),
        },
    );
    let r = pu::GetProfileResponse::create(
        b,
        &pu::GetProfileResponseArgs {
            profile: Some(profile),
        },
    );
    users_frame(b, id, UsersOp::GetProfileResponse, r.as_union_value())
}

fn settings_frame(b: &mut Builder, id: u64, s: &Settings) -> WIPOffset<Envelope<'static>> {
    let (language, timezone) = (b.create_string(&s.language), b.create_string(&s.timezone));
    let settings = pu::Settings::create(
        b,
        &pu::SettingsArgs {
            who_can_message: wire_permission(s.who_can_message),
            who_can_mention: wire_permission(s.who_can_mention),
            who_can_comment: wire_permission(s.who_can_comment),
            show_read_receipts: s.show_read_receipts,
            show_activity_status: s.show_activity_status,
            show_sensitive_media: s.show_sensitive_media,
            language: Some(language),
            timezone: Some(timezone),
            email_notifications: s.email_notifications,
        },
    );
    let r = pu::SettingsResponse::create(
        b,
        &pu::SettingsResponseArgs {
            settings: Some(settings),
        },
    );
    users_frame(b, id, UsersOp::SettingsResponse, r.as_union_value())
}

impl<S: Store + 'static> Service for UsersApi<S> {
    fn owner_key(&self, _caller: Option<u64>, _env: &Envelope<'_>) -> Option<u64> {
        None
    }

    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>> {
        let env = frame.envelope();
        let id = env.id();
        let call = parse_users(&env);
        let (users, graph, encoder) =
            (self.users.clone(), self.graph.clone(), self.encoder.clone());
        Box::pin(async move {
            let me = signed_in(&ctx)?;
            let call = call.ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    "this users operation is not available yet",
                )
            })??;
            let uerr = |e: UsersError| users_error(&e);
            let profile = match call {
                UsersCall::Get(user_id) => users.get(me, user_id).await.map_err(uerr)?,
                UsersCall::GetByName(name) => {
                    users.get_by_username(me, &name).await.map_err(uerr)?
                }
                UsersCall::Update(update) => users.update(me, update).await.map_err(uerr)?,
                UsersCall::Settings => {
                    let s = users.settings(me).await.map_err(uerr)?;
                    return encode(&encoder, &|b| settings_frame(b, id, &s));
                }
                UsersCall::UpdateSettings(update) => {
                    let s = users.update_settings(me, update).await.map_err(uerr)?;
                    return encode(&encoder, &|b| settings_frame(b, id, &s));
                }
                UsersCall::Lookup(ids, names) => {
                    let found = users.lookup(me, &ids, &names).await.map_err(uerr)?;
                    return encode(&encoder, &|b| {
                        let list: Vec<_> = found.iter().map(|p| summary(b, p)).collect();
                        let list = b.create_vector(&list);
                        let r = pu::LookupUsersResponse::create(
                            b,
                            &pu::LookupUsersResponseArgs { users: Some(list) },
                        );
                        users_frame(b, id, UsersOp::LookupUsersResponse, r.as_union_value())
                    });
                }
            };
            let target = profile.user_id;
            let (followers, following) = graph.counts(target).await.map_err(|e| graph_error(&e))?;
            let extras = ProfileExtras {
                followers,
                following,
                posts: users.posts_count(target).await.map_err(uerr)?,
                rel: graph
                    .relationship(me, target)
                    .await
                    .map_err(|e| graph_error(&e))?,
            };
            encode(&encoder, &|b| profile_frame(b, id, &profile, &extras))
        })
    }
}

/// One key for the unordered pair {a, b}: both users' operations on the pair meet on its
/// owner shard.
fn pair_key(a: u64, b: u64) -> u64 {
    let (lo, hi) = (a.min(b), a.max(b));
    lo.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31) ^ hi
}

/// The shard key of a graph request, read straight from the request (the handler parses
/// it fully later, on the owner shard).
fn graph_owner(caller: Option<u64>, env: &Envelope<'_>) -> Option<u64> {
    let g = env.body_as_graph()?;
    // Every change to one pair of users, whoever of the two makes it, runs on the pair's
    // owner shard, where the graph serialises it.
    let pair = |t: u64| caller.map(|me| pair_key(me, t));
    match g.op_type() {
        GraphOp::FollowRequest => pair(g.op_as_follow_request()?.target_id()),
        GraphOp::UnfollowRequest => pair(g.op_as_unfollow_request()?.target_id()),
        GraphOp::FollowRequestApproveRequest => {
            pair(g.op_as_follow_request_approve_request()?.requester_id())
        }
        GraphOp::FollowRequestDenyRequest => {
            pair(g.op_as_follow_request_deny_request()?.requester_id())
        }
        GraphOp::FollowRequestCancelRequest => {
            pair(g.op_as_follow_request_cancel_request()?.target_id())
        }
        GraphOp::BlockRequest => pair(g.op_as_block_request()?.target_id()),
        GraphOp::UnblockRequest => pair(g.op_as_unblock_request()?.target_id()),
        GraphOp::MuteRequest => pair(g.op_as_mute_request()?.target_id()),
        GraphOp::UnmuteRequest => pair(g.op_as_unmute_request()?.target_id()),
        GraphOp::RemoveFollowerRequest => pair(g.op_as_remove_follower_request()?.follower_id()),
        // One user's close-friend updates and list creations meet on one shard (their size
        // limits hold); a list's changes meet on the list's shard.
        GraphOp::CloseFriendsUpdateRequest | GraphOp::ListCreateRequest => pair(caller?),
        GraphOp::ListUpdateRequest => Some(g.op_as_list_update_request()?.list_id()),
        GraphOp::ListDeleteRequest => Some(g.op_as_list_delete_request()?.list_id()),
        GraphOp::ListMembersAddRequest => Some(g.op_as_list_members_add_request()?.list_id()),
        GraphOp::ListMembersRemoveRequest => Some(g.op_as_list_members_remove_request()?.list_id()),
        _ => None,
    }
}

/// The graph service on the wire.
pub struct GraphApi<S> {
    graph: Rc<Graph<S>>,
    lists: Rc<Lists<S>>,
    encoder: Rc<RefCell<Encoder>>,
}

impl<S: Store + 'static> GraphApi<S> {
    /// Over one shard's graph service and user lists.
    pub fn new(graph: Rc<Graph<S>>, lists: Rc<Lists<S>>) -> Self {
        Self {
            graph,
            lists,
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
    Mute(u64, Option<std::time::Duration>),
    Unmute(u64),
    RemoveFollower(u64),
    Followers(u64, usize, Option<Cursor>),
    Following(u64, usize, Option<Cursor>),
    Requests(usize, Option<Cursor>),
    RequestsSent(usize, Option<Cursor>),
    Blocks(usize, Option<Cursor>),
    Mutes(usize, Option<Cursor>),
    Relationships(Vec<u64>),
    CloseFriendsUpdate(Vec<u64>, Vec<u64>),
    CloseFriends(usize, Option<Cursor>),
    ListCreate {
        name: String,
        description: String,
        private: bool,
    },
    ListUpdate(u64, ListUpdate),
    ListDelete(u64),
    ListsOf(u64, usize, Option<Cursor>),
    ListAdd(u64, Vec<u64>),
    ListRemove(u64, Vec<u64>),
    ListMembers(u64, usize, Option<Cursor>),
    /// A well-formed request this edge refuses (with `InvalidArgument`).
    Refuse(&'static str),
}

/// One more than a list change allows is enough to be refused.
fn list_ids(v: Option<flatbuffers::Vector<'_, u64>>) -> Vec<u64> {
    v.map(|v| {
        v.iter()
            .take(selfie_services::graph::lists::MAX_CHANGE + 1)
            .collect()
    })
    .unwrap_or_default()
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
        GraphOp::MuteRequest => {
            let r = g.op_as_mute_request()?;
            if r.mute_reposts_only() {
                return Some(GraphCall::Refuse(
                    "reposts-only mutes are not supported yet (they come with feeds)",
                ));
            }
            let duration =
                (r.duration_ms() != 0).then(|| std::time::Duration::from_millis(r.duration_ms()));
            GraphCall::Mute(r.target_id(), duration)
        }
        GraphOp::RemoveFollowerRequest => {
            GraphCall::RemoveFollower(g.op_as_remove_follower_request()?.follower_id())
        }
        GraphOp::BlocksListRequest => {
            let (limit, cursor) = page_request(g.op_as_blocks_list_request()?.page());
            GraphCall::Blocks(limit, cursor)
        }
        GraphOp::MutesListRequest => {
            let (limit, cursor) = page_request(g.op_as_mutes_list_request()?.page());
            GraphCall::Mutes(limit, cursor)
        }
        GraphOp::CloseFriendsUpdateRequest => {
            let r = g.op_as_close_friends_update_request()?;
            // One more than allowed is enough to be refused.
            let cap = selfie_services::graph::MAX_CLOSE_FRIENDS_CHANGE + 1;
            let ids = |v: Option<flatbuffers::Vector<'_, u64>>| {
                v.map(|v| v.iter().take(cap).collect()).unwrap_or_default()
            };
            GraphCall::CloseFriendsUpdate(ids(r.add()), ids(r.remove()))
        }
        GraphOp::ListCreateRequest => {
            let r = g.op_as_list_create_request()?;
            GraphCall::ListCreate {
                name: r.name().unwrap_or_default().to_string(),
                description: r.description().unwrap_or_default().to_string(),
                private: r.private(),
            }
        }
        GraphOp::ListUpdateRequest => {
            let r = g.op_as_list_update_request()?;
            GraphCall::ListUpdate(
                r.list_id(),
                ListUpdate {
                    name: r.name().map(str::to_string),
                    description: r.description().map(str::to_string),
                    private: r.private(),
                },
            )
        }
        GraphOp::ListDeleteRequest => {
            GraphCall::ListDelete(g.op_as_list_delete_request()?.list_id())
        }
        GraphOp::ListsGetRequest => {
            let r = g.op_as_lists_get_request()?;
            let (limit, cursor) = page_request(r.page());
            GraphCall::ListsOf(r.owner_id(), limit, cursor)
        }
        GraphOp::ListMembersAddRequest => {
            let r = g.op_as_list_members_add_request()?;
            GraphCall::ListAdd(r.list_id(), list_ids(r.user_ids()))
        }
        GraphOp::ListMembersRemoveRequest => {
            let r = g.op_as_list_members_remove_request()?;
            GraphCall::ListRemove(r.list_id(), list_ids(r.user_ids()))
        }
        GraphOp::ListMembersRequest => {
            let r = g.op_as_list_members_request()?;
            let (limit, cursor) = page_request(r.page());
            GraphCall::ListMembers(r.list_id(), limit, cursor)
        }
        GraphOp::CloseFriendsListRequest => {
            let (limit, cursor) = page_request(g.op_as_close_friends_list_request()?.page());
            GraphCall::CloseFriends(limit, cursor)
        }
        GraphOp::RelationshipsRequest => GraphCall::Relationships(
            g.op_as_relationships_request()?
                .user_ids()
                .map(|v| {
                    v.iter()
                        .take(selfie_services::graph::MAX_RELATIONSHIPS + 1)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        GraphOp::UnmuteRequest => GraphCall::Unmute(g.op_as_unmute_request()?.target_id()),
        GraphOp::FollowersListRequest => {
            let r = g.op_as_followers_list_request()?;
            let (limit, cursor) = page_request(r.page());
            GraphCall::Followers(r.user_id(), limit, cursor)
        }
        GraphOp::FollowingListRequest => {
            let r = g.op_as_following_list_request()?;
            let (limit, cursor) = page_request(r.page());
            GraphCall::Following(r.user_id(), limit, cursor)
        }
        GraphOp::FollowRequestsListRequest => {
            let r = g.op_as_follow_requests_list_request()?;
            let (limit, cursor) = page_request(r.page());
            match r.direction() {
                pg::Direction::Outgoing => GraphCall::RequestsSent(limit, cursor),
                _ => GraphCall::Requests(limit, cursor),
            }
        }
        _ => return None,
    })
}

fn graph_frame(
    b: &mut Builder,
    id: u64,
    op_type: GraphOp,
    op: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> WIPOffset<Envelope<'static>> {
    let body = pg::Graph::create(
        b,
        &pg::GraphArgs {
            op_type,
            op: Some(op),
        },
    );
    envelope(b, id, Body::Graph, body.as_union_value())
}

fn user_list(b: &mut Builder, l: &UserList, members: i64) -> WIPOffset<pg::UserList<'static>> {
    let (name, description) = (b.create_string(&l.name), b.create_string(&l.description));
    pg::UserList::create(
        b,
        &pg::UserListArgs {
            list_id: l.list_id,
            owner_id: l.owner_id,
            name: Some(name),
            description: Some(description),
            private: l.private,
            members_count: members.max(0) as u64,
            created_at_ms: l.created_at_ms,
        },
    )
}

fn list_response(
    b: &mut Builder,
    id: u64,
    l: &UserList,
    members: i64,
) -> WIPOffset<Envelope<'static>> {
    let list = user_list(b, l, members);
    let r = pg::ListResponse::create(b, &pg::ListResponseArgs { list: Some(list) });
    graph_frame(b, id, GraphOp::ListResponse, r.as_union_value())
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
    let info = page_info(b, &page.cursor);
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
    fn owner_key(&self, caller: Option<u64>, env: &Envelope<'_>) -> Option<u64> {
        graph_owner(caller, env)
    }

    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>> {
        let env = frame.envelope();
        let id = env.id();
        let call = parse_graph(&env);
        let (graph, lists, encoder) =
            (self.graph.clone(), self.lists.clone(), self.encoder.clone());
        Box::pin(async move {
            let me = signed_in(&ctx)?;
            let call = call.ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::Unavailable,
                    "this graph operation is not available yet",
                )
            })?;
            let err = |e: GraphError| graph_error(&e);
            let ack = |encoder: &RefCell<Encoder>| encode(encoder, &|b| build::ack(b, id));
            // A change that answers with a plain acknowledgement.
            let done = |r: Result<(), GraphError>| r.map_err(err).and_then(|()| ack(&encoder));
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
                GraphCall::Unfollow(t) => done(graph.unfollow(me, t).await),
                GraphCall::Approve(r) => done(graph.approve(me, r).await),
                GraphCall::Deny(r) => done(graph.deny(me, r).await),
                GraphCall::Cancel(t) => done(graph.cancel_request(me, t).await),
                GraphCall::Block(t) => done(graph.block(me, t).await),
                GraphCall::Unblock(t) => done(graph.unblock(me, t).await),
                GraphCall::Mute(t, duration) => done(graph.mute(me, t, duration).await),
                GraphCall::Unmute(t) => done(graph.unmute(me, t).await),
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
                GraphCall::RemoveFollower(f) => done(graph.remove_follower(me, f).await),
                GraphCall::Requests(limit, cursor) => {
                    let page = graph.requests(me, limit, cursor).await.map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::RequestsSent(limit, cursor) => {
                    let page = graph.requests_sent(me, limit, cursor).await.map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::Blocks(limit, cursor) => {
                    let page = graph.blocks(me, limit, cursor).await.map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::CloseFriendsUpdate(add, remove) => {
                    done(graph.update_close_friends(me, &add, &remove).await)
                }
                GraphCall::ListCreate {
                    name,
                    description,
                    private,
                } => {
                    let list = lists
                        .create(me, &name, &description, private)
                        .await
                        .map_err(err)?;
                    encode(&encoder, &|b| list_response(b, id, &list, 0))
                }
                GraphCall::ListUpdate(list_id, update) => {
                    let list = lists.update(me, list_id, update).await.map_err(err)?;
                    let n = lists.members_count(list_id).await.map_err(err)?;
                    encode(&encoder, &|b| list_response(b, id, &list, n))
                }
                GraphCall::ListDelete(list_id) => done(lists.delete(me, list_id).await),
                GraphCall::ListsOf(owner, limit, cursor) => {
                    let owner = if owner == 0 { me } else { owner };
                    let (found, next) = lists
                        .of_owner(me, owner, limit, cursor)
                        .await
                        .map_err(err)?;
                    encode(&encoder, &|b| {
                        let items: Vec<_> =
                            found.iter().map(|(l, n)| user_list(b, l, *n)).collect();
                        let items = b.create_vector(&items);
                        let info = page_info(b, &next);
                        let r = pg::ListsResponse::create(
                            b,
                            &pg::ListsResponseArgs {
                                lists: Some(items),
                                page: Some(info),
                            },
                        );
                        graph_frame(b, id, GraphOp::ListsResponse, r.as_union_value())
                    })
                }
                GraphCall::ListAdd(list_id, users) => {
                    done(lists.add_members(me, list_id, &users).await)
                }
                GraphCall::ListRemove(list_id, users) => {
                    done(lists.remove_members(me, list_id, &users).await)
                }
                GraphCall::ListMembers(list_id, limit, cursor) => {
                    let page = lists
                        .members(me, list_id, limit, cursor)
                        .await
                        .map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::Refuse(message) => {
                    Err(ErrorReply::new(ErrorCode::InvalidArgument, message))
                }
                GraphCall::CloseFriends(limit, cursor) => {
                    let page = graph.close_friends(me, limit, cursor).await.map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::Mutes(limit, cursor) => {
                    let page = graph.mutes(me, limit, cursor).await.map_err(err)?;
                    encode(&encoder, &|b| list_frame(b, id, &page))
                }
                GraphCall::Relationships(ids) => {
                    let list = graph.relationships(me, &ids).await.map_err(err)?;
                    encode(&encoder, &|b| {
                        let entries: Vec<_> = list
                            .iter()
                            .map(|(user_id, r)| {
                                pg::RelationshipEntry::create(
                                    b,
                                    &pg::RelationshipEntryArgs {
                                        user_id: *user_id,
                                        following: r.following,
                                        followed_by: r.followed_by,
                                        follow_requested: r.requested,
                                        blocking: r.blocking,
                                        blocked_by: r.blocked_by,
                                        muting: r.muting,
                                    },
                                )
                            })
                            .collect();
                        let entries = b.create_vector(&entries);
                        let r = pg::RelationshipsResponse::create(
                            b,
                            &pg::RelationshipsResponseArgs {
                                entries: Some(entries),
                            },
                        );
                        let body = pg::Graph::create(
                            b,
                            &pg::GraphArgs {
                                op_type: GraphOp::RelationshipsResponse,
                                op: Some(r.as_union_value()),
                            },
                        );
                        envelope(b, id, Body::Graph, body.as_union_value())
                    })
                }
            }
        })
    }
}
