//! The `Graph` service on the wire. Every operation acts as the session's user.
//!
//! Every change to a pair of users runs on the owner shard of the *pair* (the caller and
//! the other user), so that concurrent operations on one pair — a follow racing an
//! unfollow, a block or a follower's removal, from either side — meet on one shard, where
//! the graph serialises them (on a fleet it also takes a Redis lease on the pair). One
//! user's close-friend updates and list creations meet on the user's shard; a list's
//! changes on the list's shard.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use selfie_protocol::common::UserSummaryT;
use selfie_protocol::graph::{self as pg, GraphOp, GraphOpT};
use selfie_storage::Store;

use super::lists::{ListUpdate, Lists, MAX_CHANGE, UserList};
use super::{FollowState, Graph, IdPage, MAX_CLOSE_FRIENDS_CHANGE, MAX_RELATIONSHIPS};
use crate::plane::{Call, ids, make, op, page_request, page_t, pair_key, service_table};
use crate::{Error, Result};

/// The graph service (and user lists) of one shard, on the wire.
#[derive(Clone)]
pub struct GraphWire<S> {
    /// The graph.
    pub graph: Rc<Graph<S>>,
    /// User lists.
    pub lists: Rc<Lists<S>>,
}

service_table! {
    impl[S: Store + Clone + 'static] GraphWire<S>;
    body body_as_graph, ops GraphOp, answers GraphOpT in Graph(pg::GraphT);
    FollowRequest => follow, owner |t, me| pair_key(me?, t.op_as_follow_request()?.target_id());
    UnfollowRequest => unfollow, owner |t, me| pair_key(me?, t.op_as_unfollow_request()?.target_id());
    FollowRequestApproveRequest => approve,
        owner |t, me| pair_key(me?, t.op_as_follow_request_approve_request()?.requester_id());
    FollowRequestDenyRequest => deny,
        owner |t, me| pair_key(me?, t.op_as_follow_request_deny_request()?.requester_id());
    FollowRequestCancelRequest => cancel,
        owner |t, me| pair_key(me?, t.op_as_follow_request_cancel_request()?.target_id());
    BlockRequest => block, owner |t, me| pair_key(me?, t.op_as_block_request()?.target_id());
    UnblockRequest => unblock, owner |t, me| pair_key(me?, t.op_as_unblock_request()?.target_id());
    MuteRequest => mute, owner |t, me| pair_key(me?, t.op_as_mute_request()?.target_id());
    UnmuteRequest => unmute, owner |t, me| pair_key(me?, t.op_as_unmute_request()?.target_id());
    RemoveFollowerRequest => remove_follower,
        owner |t, me| pair_key(me?, t.op_as_remove_follower_request()?.follower_id());
    FollowersListRequest => followers;
    FollowingListRequest => following;
    FollowRequestsListRequest => requests;
    BlocksListRequest => blocks;
    MutesListRequest => mutes;
    RelationshipsRequest => relationships;
    CloseFriendsUpdateRequest => set_close_friends, owner |_t, me| pair_key(me?, me?);
    CloseFriendsListRequest => close_friends;
    ListCreateRequest => list_create, owner |_t, me| pair_key(me?, me?);
    ListUpdateRequest => list_update, owner |t, _me| t.op_as_list_update_request()?.list_id();
    ListDeleteRequest => list_delete, owner |t, _me| t.op_as_list_delete_request()?.list_id();
    ListsGetRequest => lists_of;
    ListMembersAddRequest => list_add, owner |t, _me| t.op_as_list_members_add_request()?.list_id();
    ListMembersRemoveRequest => list_remove,
        owner |t, _me| t.op_as_list_members_remove_request()?.list_id();
    ListMembersRequest => list_members;
}

impl<S: Store + Clone + 'static> GraphWire<S> {
    fn users(call: &Call, page: IdPage) -> Result<Bytes> {
        let users = page
            .ids
            .into_iter()
            .map(|user_id| make!(UserSummaryT { user_id }));
        let list = make!(pg::UserListResponseT {
            users: Some(users.collect()),
            page: page_t(page.cursor),
            total_count: 0,
        });
        Self::answer(call, GraphOpT::UserListResponse(Box::new(list)))
    }

    fn list(call: &Call, l: UserList, members: i64) -> Result<Bytes> {
        let list = Some(Box::new(list_t(l, members)));
        Self::answer(
            call,
            GraphOpT::ListResponse(Box::new(make!(pg::ListResponseT { list }))),
        )
    }
}

fn list_t(l: UserList, members: i64) -> pg::UserListT {
    make!(pg::UserListT {
        list_id: l.list_id,
        owner_id: l.owner_id,
        name: Some(l.name),
        description: Some(l.description),
        private: l.private,
        members_count: members.max(0) as u64,
        created_at_ms: l.created_at_ms,
    })
}

/// A change between the caller and the one user the request names, answered `Ack`.
macro_rules! pair_changes {
    ($($name:ident: $op:ident.$id:ident => $method:ident;)*) => {$(
        async fn $name<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
            let other = op!(call, body_as_graph.$op).$id();
            w.graph.$method(call.user()?, other).await?;
            call.ack()
        }
    )*};
}

pair_changes! {
    unfollow: op_as_unfollow_request.target_id => unfollow;
    approve: op_as_follow_request_approve_request.requester_id => approve;
    deny: op_as_follow_request_deny_request.requester_id => deny;
    cancel: op_as_follow_request_cancel_request.target_id => cancel_request;
    block: op_as_block_request.target_id => block;
    unblock: op_as_unblock_request.target_id => unblock;
    unmute: op_as_unmute_request.target_id => unmute;
    remove_follower: op_as_remove_follower_request.follower_id => remove_follower;
}

/// A page of one of the caller's own lists of users.
macro_rules! own_pages {
    ($($name:ident: $op:ident => $method:ident;)*) => {$(
        async fn $name<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
            let (limit, cursor) = page_request(op!(call, body_as_graph.$op).page());
            let page = w.graph.$method(call.user()?, limit, cursor).await?;
            GraphWire::<S>::users(&call, page)
        }
    )*};
}

own_pages! {
    blocks: op_as_blocks_list_request => blocks;
    mutes: op_as_mutes_list_request => mutes;
    close_friends: op_as_close_friends_list_request => close_friends;
}

async fn follow<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_follow_request);
    let state = match w.graph.follow(me, r.target_id()).await? {
        FollowState::Following => pg::FollowState::Following,
        FollowState::Requested => pg::FollowState::Requested,
    };
    let answer = make!(pg::FollowResponseT { state });
    GraphWire::<S>::answer(&call, GraphOpT::FollowResponse(Box::new(answer)))
}

async fn mute<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_mute_request);
    if r.mute_reposts_only() {
        // Reposts-only mutes need feeds, which do not exist yet.
        return Err(Error::InvalidArgument {
            field: "mute_reposts_only",
        });
    }
    let duration = (r.duration_ms() != 0).then(|| Duration::from_millis(r.duration_ms()));
    w.graph.mute(me, r.target_id(), duration).await?;
    call.ack()
}

async fn followers<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_followers_list_request);
    let (limit, cursor) = page_request(r.page());
    let page = w.graph.followers(me, r.user_id(), limit, cursor).await?;
    GraphWire::<S>::users(&call, page)
}

async fn following<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_following_list_request);
    let (limit, cursor) = page_request(r.page());
    let page = w.graph.following(me, r.user_id(), limit, cursor).await?;
    GraphWire::<S>::users(&call, page)
}

async fn requests<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_graph.op_as_follow_requests_list_request);
    let (limit, cursor) = page_request(r.page());
    let me = call.user()?;
    let page = match r.direction() {
        pg::Direction::Outgoing => w.graph.requests_sent(me, limit, cursor).await?,
        _ => w.graph.requests(me, limit, cursor).await?,
    };
    GraphWire::<S>::users(&call, page)
}

async fn relationships<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_relationships_request);
    let list = w
        .graph
        .relationships(me, &ids(r.user_ids(), MAX_RELATIONSHIPS))
        .await?;
    let entries = list.into_iter().map(|(user_id, r)| {
        make!(pg::RelationshipEntryT {
            user_id,
            following: r.following,
            followed_by: r.followed_by,
            follow_requested: r.requested,
            blocking: r.blocking,
            blocked_by: r.blocked_by,
            muting: r.muting,
        })
    });
    let entries = Some(entries.collect());
    let answer = make!(pg::RelationshipsResponseT { entries });
    GraphWire::<S>::answer(&call, GraphOpT::RelationshipsResponse(Box::new(answer)))
}

async fn set_close_friends<S: Store + Clone + 'static>(
    w: GraphWire<S>,
    call: Call,
) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_close_friends_update_request);
    let (add, remove) = (
        ids(r.add(), MAX_CLOSE_FRIENDS_CHANGE),
        ids(r.remove(), MAX_CLOSE_FRIENDS_CHANGE),
    );
    w.graph.update_close_friends(me, &add, &remove).await?;
    call.ack()
}

async fn list_create<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_list_create_request);
    let name = r.name().unwrap_or_default();
    let description = r.description().unwrap_or_default();
    let list = w.lists.create(me, name, description, r.private()).await?;
    GraphWire::<S>::list(&call, list, 0)
}

async fn list_update<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_graph.op_as_list_update_request);
    let update = ListUpdate {
        name: r.name().map(str::to_string),
        description: r.description().map(str::to_string),
        private: r.private(),
    };
    let list = w.lists.update(call.user()?, r.list_id(), update).await?;
    let members = w.lists.members_count(r.list_id()).await?;
    GraphWire::<S>::list(&call, list, members)
}

async fn list_delete<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_list_delete_request);
    w.lists.delete(me, r.list_id()).await?;
    call.ack()
}

async fn lists_of<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_graph.op_as_lists_get_request);
    let (limit, cursor) = page_request(r.page());
    let me = call.user()?;
    let owner = if r.owner_id() == 0 { me } else { r.owner_id() };
    let (found, next) = w.lists.of_owner(me, owner, limit, cursor).await?;
    let lists = found.into_iter().map(|(l, n)| list_t(l, n));
    let answer = make!(pg::ListsResponseT {
        lists: Some(lists.collect()),
        page: page_t(next),
    });
    GraphWire::<S>::answer(&call, GraphOpT::ListsResponse(Box::new(answer)))
}

async fn list_add<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_list_members_add_request);
    let users = ids(r.user_ids(), MAX_CHANGE);
    w.lists.add_members(me, r.list_id(), &users).await?;
    call.ack()
}

async fn list_remove<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_list_members_remove_request);
    let users = ids(r.user_ids(), MAX_CHANGE);
    w.lists.remove_members(me, r.list_id(), &users).await?;
    call.ack()
}

async fn list_members<S: Store + Clone + 'static>(w: GraphWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_graph.op_as_list_members_request);
    let (limit, cursor) = page_request(r.page());
    let page = w.lists.members(me, r.list_id(), limit, cursor).await?;
    GraphWire::<S>::users(&call, page)
}
