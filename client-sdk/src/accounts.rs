//! Accounts, profiles, the graph and posts in the client: typed requests over one
//! session ([`Client::accounts`], [`Client::users`], [`Client::graph`],
//! [`Client::posts`]), domain types in and out (the protocol's object API), errors as
//! [`ClientError`] with the protocol's [`ErrorCode`](selfie_protocol::ErrorCode).
//!
//! A session is authenticated when it is opened (the access token travels in `Hello`):
//! after [`AccountsApi::register`] or [`AccountsApi::login`], open a new [`Client`]
//! with the returned access token (or let `ReconnectingClient::set_access_token` do
//! it).

use std::time::Duration;

use selfie_protocol::auth::{self as pa, AuthOpT};
use selfie_protocol::common;
use selfie_protocol::graph::{self as pg, GraphOpT};
use selfie_protocol::posts::{self as pp, PostsOpT};
use selfie_protocol::users::{self as pu, UsersOpT};
use selfie_protocol::{BodyT, auth, graph, posts, users};

use crate::{Client, ClientError};

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("expected {what}"))
}

/// Sends one operation of a service whose table is `{ op: XOp }` and returns the
/// answer's operation (`NONE` for an `Ack`).
macro_rules! service_call {
    ($client:expr, $variant:ident, $table:ty, $none:expr, $op:expr) => {{
        let mut t = <$table>::default();
        t.op = $op;
        match $client.call(BodyT::$variant(Box::new(t))).await? {
            BodyT::$variant(t) => Ok(t.op),
            BodyT::Control(_) => Ok($none),
            _ => Err(unexpected(concat!("a ", stringify!($variant), " answer"))),
        }
    }};
}

fn page(limit: u16, cursor: Option<Vec<u8>>) -> Option<Box<common::PageRequestT>> {
    let mut p = common::PageRequestT::default();
    p.limit = limit;
    p.cursor = cursor;
    Some(Box::new(p))
}

/// A new account's or a login's answer: who, and the tokens to open sessions with.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// Access and refresh tokens.
    pub tokens: pa::AuthTokensT,
    /// The account.
    pub user: common::UserSummaryT,
}

/// Typed account requests (the `Auth` service).
pub struct AccountsApi<'a>(&'a Client);
/// Typed profile and settings requests (the `Users` service).
pub struct UsersApi<'a>(&'a Client);
/// Typed follow, block, mute and list requests (the `Graph` service).
pub struct GraphApi<'a>(&'a Client);
/// Typed post requests (the `Posts` service).
pub struct PostsApi<'a>(&'a Client);

impl Client {
    /// This session's account requests.
    pub fn accounts(&self) -> AccountsApi<'_> {
        AccountsApi(self)
    }

    /// This session's profile requests.
    pub fn users(&self) -> UsersApi<'_> {
        UsersApi(self)
    }

    /// This session's graph requests.
    pub fn graph(&self) -> GraphApi<'_> {
        GraphApi(self)
    }

    /// This session's post requests.
    pub fn posts(&self) -> PostsApi<'_> {
        PostsApi(self)
    }
}

impl AccountsApi<'_> {
    /// Sends an `Auth` operation and returns the answer's operation.
    pub async fn call(&self, op: AuthOpT) -> Result<AuthOpT, ClientError> {
        service_call!(self.0, Auth, auth::AuthT, AuthOpT::NONE, op)
    }

    /// Creates an account.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> Result<SignedIn, ClientError> {
        let mut r = pa::RegisterRequestT::default();
        r.username = Some(username.into());
        r.email = Some(email.into());
        r.password = Some(password.into());
        match self.call(AuthOpT::RegisterRequest(Box::new(r))).await? {
            AuthOpT::RegisterResponse(r) => signed_in(r.tokens, r.user),
            _ => Err(unexpected("RegisterResponse")),
        }
    }

    /// Logs in by username or e-mail; `totp_code` when the account has 2FA (without it
    /// such an account answers `SecondFactorRequired`).
    pub async fn login(
        &self,
        identifier: &str,
        password: &str,
        totp_code: Option<&str>,
    ) -> Result<SignedIn, ClientError> {
        let mut r = pa::LoginRequestT::default();
        r.identifier = Some(identifier.into());
        r.password = Some(password.into());
        r.totp_code = totp_code.map(Into::into);
        match self.call(AuthOpT::LoginRequest(Box::new(r))).await? {
            AuthOpT::LoginResponse(r) => signed_in(r.tokens, r.user),
            _ => Err(unexpected("LoginResponse")),
        }
    }

    /// New tokens for a refresh token (the old refresh token stops working).
    pub async fn refresh(&self, refresh_token: &str) -> Result<pa::AuthTokensT, ClientError> {
        let mut r = pa::RefreshRequestT::default();
        r.refresh_token = Some(refresh_token.into());
        match self.call(AuthOpT::RefreshRequest(Box::new(r))).await? {
            AuthOpT::RefreshResponse(r) => r.tokens.map(|t| *t).ok_or_else(|| unexpected("tokens")),
            _ => Err(unexpected("RefreshResponse")),
        }
    }

    /// Ends this session.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.call(AuthOpT::LogoutRequest(Box::default())).await?;
        Ok(())
    }

    /// The account's sessions (devices).
    pub async fn sessions(&self) -> Result<Vec<pa::SessionInfoT>, ClientError> {
        match self
            .call(AuthOpT::SessionsListRequest(Box::default()))
            .await?
        {
            AuthOpT::SessionsListResponse(r) => Ok(r.sessions.unwrap_or_default()),
            _ => Err(unexpected("SessionsListResponse")),
        }
    }

    /// Ends one of the account's sessions.
    pub async fn revoke_session(&self, session_id: u64) -> Result<(), ClientError> {
        let mut r = pa::SessionRevokeRequestT::default();
        r.session_id = session_id;
        self.call(AuthOpT::SessionRevokeRequest(Box::new(r)))
            .await?;
        Ok(())
    }

    /// Starts TOTP enrollment: the secret and `otpauth://` URI to show the user.
    pub async fn totp_enroll(
        &self,
        password: &str,
    ) -> Result<pa::TotpEnrollResponseT, ClientError> {
        let mut r = pa::TotpEnrollRequestT::default();
        r.password = Some(password.into());
        match self.call(AuthOpT::TotpEnrollRequest(Box::new(r))).await? {
            AuthOpT::TotpEnrollResponse(r) => Ok(*r),
            _ => Err(unexpected("TotpEnrollResponse")),
        }
    }

    /// Confirms enrollment with a current code; returns the recovery codes.
    pub async fn totp_confirm(&self, code: &str) -> Result<Vec<String>, ClientError> {
        let mut r = pa::TotpConfirmRequestT::default();
        r.code = Some(code.into());
        match self.call(AuthOpT::TotpConfirmRequest(Box::new(r))).await? {
            AuthOpT::TotpConfirmResponse(r) => Ok(r.recovery_codes.unwrap_or_default()),
            _ => Err(unexpected("TotpConfirmResponse")),
        }
    }
}

fn signed_in(
    tokens: Option<Box<pa::AuthTokensT>>,
    user: Option<Box<common::UserSummaryT>>,
) -> Result<SignedIn, ClientError> {
    Ok(SignedIn {
        tokens: *tokens.ok_or_else(|| unexpected("tokens"))?,
        user: *user.ok_or_else(|| unexpected("user"))?,
    })
}

impl UsersApi<'_> {
    /// Sends a `Users` operation and returns the answer's operation.
    pub async fn call(&self, op: UsersOpT) -> Result<UsersOpT, ClientError> {
        service_call!(self.0, Users, users::UsersT, UsersOpT::NONE, op)
    }

    /// A profile by id (with the caller's relationship to it).
    pub async fn profile(&self, user_id: u64) -> Result<pu::ProfileT, ClientError> {
        let mut r = pu::GetProfileRequestT::default();
        r.user_id = user_id;
        self.get_profile(r).await
    }

    /// A profile by username.
    pub async fn profile_by_name(&self, username: &str) -> Result<pu::ProfileT, ClientError> {
        let mut r = pu::GetProfileRequestT::default();
        r.username = Some(username.into());
        self.get_profile(r).await
    }

    async fn get_profile(&self, r: pu::GetProfileRequestT) -> Result<pu::ProfileT, ClientError> {
        match self.call(UsersOpT::GetProfileRequest(Box::new(r))).await? {
            UsersOpT::GetProfileResponse(r) => {
                r.profile.map(|p| *p).ok_or_else(|| unexpected("profile"))
            }
            _ => Err(unexpected("GetProfileResponse")),
        }
    }

    /// Changes the caller's profile (absent fields stay as they are).
    pub async fn update_profile(
        &self,
        update: pu::UpdateProfileRequestT,
    ) -> Result<pu::ProfileT, ClientError> {
        match self
            .call(UsersOpT::UpdateProfileRequest(Box::new(update)))
            .await?
        {
            UsersOpT::GetProfileResponse(r) => {
                r.profile.map(|p| *p).ok_or_else(|| unexpected("profile"))
            }
            _ => Err(unexpected("GetProfileResponse")),
        }
    }
}

impl GraphApi<'_> {
    /// Sends a `Graph` operation and returns the answer's operation.
    pub async fn call(&self, op: GraphOpT) -> Result<GraphOpT, ClientError> {
        service_call!(self.0, Graph, graph::GraphT, GraphOpT::NONE, op)
    }

    /// Follows `user_id` (a private account answers `Requested`).
    pub async fn follow(&self, user_id: u64) -> Result<pg::FollowState, ClientError> {
        let mut r = pg::FollowRequestT::default();
        r.target_id = user_id;
        match self.call(GraphOpT::FollowRequest(Box::new(r))).await? {
            GraphOpT::FollowResponse(r) => Ok(r.state),
            _ => Err(unexpected("FollowResponse")),
        }
    }

    /// Stops following `user_id`.
    pub async fn unfollow(&self, user_id: u64) -> Result<(), ClientError> {
        let mut r = pg::UnfollowRequestT::default();
        r.target_id = user_id;
        self.call(GraphOpT::UnfollowRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Blocks `user_id`.
    pub async fn block(&self, user_id: u64) -> Result<(), ClientError> {
        let mut r = pg::BlockRequestT::default();
        r.target_id = user_id;
        self.call(GraphOpT::BlockRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Unblocks `user_id`.
    pub async fn unblock(&self, user_id: u64) -> Result<(), ClientError> {
        let mut r = pg::UnblockRequestT::default();
        r.target_id = user_id;
        self.call(GraphOpT::UnblockRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Mutes `user_id` (their posts and stories leave the caller's feeds and tray) for
    /// `duration`, or until unmuted when `None`.
    pub async fn mute(&self, user_id: u64, duration: Option<Duration>) -> Result<(), ClientError> {
        let mut r = pg::MuteRequestT::default();
        r.target_id = user_id;
        // 0 on the wire means "until unmuted": a timed mute is at least 1 ms.
        r.duration_ms = duration.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.call(GraphOpT::MuteRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Unmutes `user_id`.
    pub async fn unmute(&self, user_id: u64) -> Result<(), ClientError> {
        let mut r = pg::UnmuteRequestT::default();
        r.target_id = user_id;
        self.call(GraphOpT::UnmuteRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Removes `follower_id` from the caller's followers.
    pub async fn remove_follower(&self, follower_id: u64) -> Result<(), ClientError> {
        let mut r = pg::RemoveFollowerRequestT::default();
        r.follower_id = follower_id;
        self.call(GraphOpT::RemoveFollowerRequest(Box::new(r)))
            .await?;
        Ok(())
    }

    /// One page of pending follow requests: to the caller (`Incoming`) or by it.
    pub async fn follow_requests(
        &self,
        direction: pg::Direction,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pg::UserListResponseT, ClientError> {
        let mut r = pg::FollowRequestsListRequestT::default();
        r.direction = direction;
        r.page = page(limit, cursor);
        self.user_list(GraphOpT::FollowRequestsListRequest(Box::new(r)))
            .await
    }

    /// Approves `requester_id`'s request to follow the caller (a private account).
    pub async fn approve(&self, requester_id: u64) -> Result<(), ClientError> {
        let mut r = pg::FollowRequestApproveRequestT::default();
        r.requester_id = requester_id;
        self.call(GraphOpT::FollowRequestApproveRequest(Box::new(r)))
            .await?;
        Ok(())
    }

    /// Denies `requester_id`'s request to follow the caller.
    pub async fn deny(&self, requester_id: u64) -> Result<(), ClientError> {
        let mut r = pg::FollowRequestDenyRequestT::default();
        r.requester_id = requester_id;
        self.call(GraphOpT::FollowRequestDenyRequest(Box::new(r)))
            .await?;
        Ok(())
    }

    /// Adds `add` to and removes `remove` from the caller's close friends (who see
    /// close-friends posts and stories).
    pub async fn close_friends(&self, add: &[u64], remove: &[u64]) -> Result<(), ClientError> {
        let mut r = pg::CloseFriendsUpdateRequestT::default();
        r.add = (!add.is_empty()).then(|| add.to_vec());
        r.remove = (!remove.is_empty()).then(|| remove.to_vec());
        self.call(GraphOpT::CloseFriendsUpdateRequest(Box::new(r)))
            .await?;
        Ok(())
    }

    /// One page of the accounts following `user_id`.
    pub async fn followers(
        &self,
        user_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pg::UserListResponseT, ClientError> {
        let mut r = pg::FollowersListRequestT::default();
        r.user_id = user_id;
        r.page = page(limit, cursor);
        self.user_list(GraphOpT::FollowersListRequest(Box::new(r)))
            .await
    }

    /// One page of the accounts `user_id` follows.
    pub async fn following(
        &self,
        user_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pg::UserListResponseT, ClientError> {
        let mut r = pg::FollowingListRequestT::default();
        r.user_id = user_id;
        r.page = page(limit, cursor);
        self.user_list(GraphOpT::FollowingListRequest(Box::new(r)))
            .await
    }

    async fn user_list(&self, op: GraphOpT) -> Result<pg::UserListResponseT, ClientError> {
        match self.call(op).await? {
            GraphOpT::UserListResponse(r) => Ok(*r),
            _ => Err(unexpected("UserListResponse")),
        }
    }
}

impl PostsApi<'_> {
    /// Sends a `Posts` operation and returns the answer's operation.
    pub async fn call(&self, op: PostsOpT) -> Result<PostsOpT, ClientError> {
        service_call!(self.0, Posts, posts::PostsT, PostsOpT::NONE, op)
    }

    /// Publishes a post (give it an `idempotency_key` to make a retry safe).
    pub async fn create(&self, request: pp::CreatePostRequestT) -> Result<pp::PostT, ClientError> {
        self.post(PostsOpT::CreatePostRequest(Box::new(request)))
            .await
    }

    /// A post by id.
    pub async fn get(&self, post_id: u64) -> Result<pp::PostT, ClientError> {
        let mut r = pp::GetPostRequestT::default();
        r.post_id = post_id;
        self.post(PostsOpT::GetPostRequest(Box::new(r))).await
    }

    /// Deletes one of the caller's posts.
    pub async fn delete(&self, post_id: u64) -> Result<(), ClientError> {
        let mut r = pp::DeletePostRequestT::default();
        r.post_id = post_id;
        self.call(PostsOpT::DeletePostRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Reacts with `emoji` to `post_id` (replacing the caller's earlier reaction to it).
    pub async fn react(&self, post_id: u64, emoji: &str) -> Result<(), ClientError> {
        let mut r = pp::ReactRequestT::default();
        r.target_kind = common::ObjectKind::Post;
        r.target_id = post_id;
        r.emoji = Some(emoji.to_string());
        self.call(PostsOpT::ReactRequest(Box::new(r))).await?;
        Ok(())
    }

    /// Comments on `post_id`, in reply to comment `parent_id` when given;
    /// `idempotency_key` makes a retry comment once.
    pub async fn comment(
        &self,
        post_id: u64,
        parent_id: Option<u64>,
        text: &str,
        idempotency_key: Option<&str>,
    ) -> Result<pp::CommentT, ClientError> {
        let mut r = pp::CreateCommentRequestT::default();
        r.post_id = post_id;
        r.parent_id = parent_id.unwrap_or(0);
        r.text = Some(text.to_string());
        r.idempotency_key = idempotency_key.map(str::to_string);
        match self
            .call(PostsOpT::CreateCommentRequest(Box::new(r)))
            .await?
        {
            PostsOpT::CommentResponse(c) => {
                c.comment.map(|c| *c).ok_or_else(|| unexpected("comment"))
            }
            _ => Err(unexpected("CommentResponse")),
        }
    }

    /// Reposts `post_id` (a public post the caller may read) to the caller's followers;
    /// returns the repost.
    pub async fn repost(&self, post_id: u64) -> Result<pp::PostT, ClientError> {
        let mut r = pp::RepostRequestT::default();
        r.post_id = post_id;
        self.post(PostsOpT::RepostRequest(Box::new(r))).await
    }

    /// Takes back the caller's repost of `post_id`.
    pub async fn undo_repost(&self, post_id: u64) -> Result<(), ClientError> {
        let mut r = pp::UndoRepostRequestT::default();
        r.post_id = post_id;
        self.call(PostsOpT::UndoRepostRequest(Box::new(r))).await?;
        Ok(())
    }

    /// One page of `user_id`'s posts, newest first.
    pub async fn by_user(
        &self,
        user_id: u64,
        limit: u16,
        cursor: Option<Vec<u8>>,
    ) -> Result<pp::PostsResponseT, ClientError> {
        let mut r = pp::UserPostsRequestT::default();
        r.user_id = user_id;
        r.page = page(limit, cursor);
        match self.call(PostsOpT::UserPostsRequest(Box::new(r))).await? {
            PostsOpT::PostsResponse(r) => Ok(*r),
            _ => Err(unexpected("PostsResponse")),
        }
    }

    async fn post(&self, op: PostsOpT) -> Result<pp::PostT, ClientError> {
        match self.call(op).await? {
            PostsOpT::PostResponse(r) => r.post.map(|p| *p).ok_or_else(|| unexpected("post")),
            _ => Err(unexpected("PostResponse")),
        }
    }
}
