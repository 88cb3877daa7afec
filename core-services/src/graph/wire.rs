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
use crate::plane::{Call, ids, make, page_request, page_t, pair_key, service_table};
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
    FollowRequest(op_as_follow_request) => follow, owner |r, me| pair_key(me?, r.target_id());
    UnfollowRequest(op_as_unfollow_request) => unfollow,
        owner |r, me| pair_key(me?, r.target_id());
    FollowRequestApproveRequest(op_as_follow_request_approve_request) => approve,
        owner |r, me| pair_key(me?, r.requester_id());
    FollowRequestDenyRequest(op_as_follow_request_deny_request) => deny,
        owner |r, me| pair_key(me?, r.requester_id());
    FollowRequestCancelRequest(op_as_follow_request_cancel_request) => cancel,
        owner |r, me| pair_key(me?, r.target_id());
    BlockRequest(op_as_block_request) => block, owner |r, me| pair_key(me?, r.target_id());
    UnblockRequest(op_as_unblock_request) => unblock, owner |r, me| pair_key(me?, r.target_id());
    MuteRequest(op_as_mute_request) => mute, owner |r, me| pair_key(me?, r.target_id());
    UnmuteRequest(op_as_unmute_request) => unmute, owner |r, me| pair_key(me?, r.target_id());
    RemoveFollowerRequest(op_as_remove_follower_request) => remove_follower,
        owner |r, me| pair_key(me?, r.follower_id());
    FollowersListRequest(op_as_followers_list_request) => followers;
    FollowingListRequest(op_as_following_list_request) => following;
    FollowRequestsListRequest(op_as_follow_requests_list_request) => requests;
    BlocksListRequest(op_as_blocks_list_request) => blocks;
    MutesListRequest(op_as_mutes_list_request) => mutes;
    RelationshipsRequest(op_as_relationships_request) => relationships;
    CloseFriendsUpdateRequest(op_as_close_friends_update_request) => set_close_friends,
        owner |_r, me| pair_key(me?, me?);
    CloseFriendsListRequest(op_as_close_friends_list_request) => close_friends;
    ListCreateRequest(op_as_list_create_request) => list_create, owner |_r, me| pair_key(me?, me?);
    ListUpdateRequest(op_as_list_update_request) => list_update, owner |r, _me| r.list_id();
    ListDeleteRequest(op_as_list_delete_request) => list_delete, owner |r, _me| r.list_id();
    ListsGetRequest(op_as_lists_get_request) => lists_of;
    ListMembersAddRequest(op_as_list_members_add_request) => list_add, owner |r, _me| r.list_id();
    ListMembersRemoveRequest(op_as_list_members_remove_request) => list_remove,
        owner |r, _me| r.list_id();
    ListMembersRequest(op_as_list_members_request) => list_members;
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
    ($($name:ident($Request:ident).$id:ident => $method:ident;)*) => {$(
        async fn $name(self, call: &Call, r: pg::$Request<'_>) -> Result<Bytes> {
            self.graph.$method(call.user()?, r.$id()).await?;
            call.ack()
        }
    )*};
}

/// A page of users: one of the caller's own lists, or (given the user it names) a list
/// of the user the request names.
macro_rules! user_pages {
    ($($name:ident($Request:ident) => $method:ident($($of:ident)?);)*) => {$(
        async fn $name(self, call: &Call, r: pg::$Request<'_>) -> Result<Bytes> {
            let (limit, cursor) = page_request(r.page());
            let me = call.user()?;
            let page = self.graph.$method(me, $(r.$of(),)? limit, cursor).await?;
            Self::users(call, page)
        }
    )*};
}

impl<S: Store + Clone + 'static> GraphWire<S> {
    pair_changes! {
        unfollow(UnfollowRequest).target_id => unfollow;
        approve(FollowRequestApproveRequest).requester_id => approve;
        deny(FollowRequestDenyRequest).requester_id => deny;
        cancel(FollowRequestCancelRequest).target_id => cancel_request;
        block(BlockRequest).target_id => block;
        unblock(UnblockRequest).target_id => unblock;
        unmute(UnmuteRequest).target_id => unmute;
        remove_follower(RemoveFollowerRequest).follower_id => remove_follower;
    }

    user_pages! {
        followers(FollowersListRequest) => followers(user_id);
        following(FollowingListRequest) => following(user_id);
        blocks(BlocksListRequest) => blocks();
        mutes(MutesListRequest) => mutes();
        close_friends(CloseFriendsListRequest) => close_friends();
    }

    async fn follow(self, call: &Call, r: pg::FollowRequest<'_>) -> Result<Bytes> {
        let state = match self.graph.follow(call.user()?, r.target_id()).await? {
            FollowState::Following => pg::FollowState::Following,
            FollowState::Requested => pg::FollowState::Requested,
        };
        let answer = make!(pg::FollowResponseT { state });
        Self::answer(call, GraphOpT::FollowResponse(Box::new(answer)))
    }

    async fn mute(self, call: &Call, r: pg::MuteRequest<'_>) -> Result<Bytes> {
        if r.mute_reposts_only() {
            // Reposts-only mutes need feeds, which do not exist yet.
            return Err(Error::InvalidArgument {
                field: "mute_reposts_only",
            });
        }
        let duration = (r.duration_ms() != 0).then(|| Duration::from_millis(r.duration_ms()));
        self.graph
            .mute(call.user()?, r.target_id(), duration)
            .await?;
        call.ack()
    }

    async fn requests(self, call: &Call, r: pg::FollowRequestsListRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let me = call.user()?;
        let page = match r.direction() {
            pg::Direction::Outgoing => self.graph.requests_sent(me, limit, cursor).await?,
            _ => self.graph.requests(me, limit, cursor).await?,
        };
        Self::users(call, page)
    }

    async fn relationships(self, call: &Call, r: pg::RelationshipsRequest<'_>) -> Result<Bytes> {
        let wanted = ids(r.user_ids(), MAX_RELATIONSHIPS);
        let list = self.graph.relationships(call.user()?, &wanted).await?;
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
        Self::answer(call, GraphOpT::RelationshipsResponse(Box::new(answer)))
    }

    async fn set_close_friends(
        self,
        call: &Call,
        r: pg::CloseFriendsUpdateRequest<'_>,
    ) -> Result<Bytes> {
        let add = ids(r.add(), MAX_CLOSE_FRIENDS_CHANGE);
        let remove = ids(r.remove(), MAX_CLOSE_FRIENDS_CHANGE);
        self.graph
            .update_close_friends(call.user()?, &add, &remove)
            .await?;
        call.ack()
    }

    async fn list_create(self, call: &Call, r: pg::ListCreateRequest<'_>) -> Result<Bytes> {
        let name = r.name().unwrap_or_default();
        let description = r.description().unwrap_or_default();
        let me = call.user()?;
        let list = self
            .lists
            .create(me, name, description, r.private())
            .await?;
        Self::list(call, list, 0)
    }

    async fn list_update(self, call: &Call, r: pg::ListUpdateRequest<'_>) -> Result<Bytes> {
        let update = ListUpdate {
            name: r.name().map(str::to_string),
            description: r.description().map(str::to_string),
            private: r.private(),
        };
        let list = self.lists.update(call.user()?, r.list_id(), update).await?;
        let members = self.lists.members_count(r.list_id()).await?;
        Self::list(call, list, members)
    }

    async fn list_delete(self, call: &Call, r: pg::ListDeleteRequest<'_>) -> Result<Bytes> {
        self.lists.delete(call.user()?, r.list_id()).await?;
        call.ack()
    }

    async fn lists_of(self, call: &Call, r: pg::ListsGetRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let me = call.user()?;
        let owner = if r.owner_id() == 0 { me } else { r.owner_id() };
        let (found, next) = self.lists.of_owner(me, owner, limit, cursor).await?;
        let lists = found.into_iter().map(|(l, n)| list_t(l, n));
        let answer = make!(pg::ListsResponseT {
            lists: Some(lists.collect()),
            page: page_t(next),
        });
        Self::answer(call, GraphOpT::ListsResponse(Box::new(answer)))
    }

    async fn list_add(self, call: &Call, r: pg::ListMembersAddRequest<'_>) -> Result<Bytes> {
        let users = ids(r.user_ids(), MAX_CHANGE);
        self.lists
            .add_members(call.user()?, r.list_id(), &users)
            .await?;
        call.ack()
    }

    async fn list_remove(self, call: &Call, r: pg::ListMembersRemoveRequest<'_>) -> Result<Bytes> {
        let users = ids(r.user_ids(), MAX_CHANGE);
        self.lists
            .remove_members(call.user()?, r.list_id(), &users)
            .await?;
        call.ack()
    }

    async fn list_members(self, call: &Call, r: pg::ListMembersRequest<'_>) -> Result<Bytes> {
        let (limit, cursor) = page_request(r.page());
        let me = call.user()?;
        let page = self.lists.members(me, r.list_id(), limit, cursor).await?;
        Self::users(call, page)
    }
}
