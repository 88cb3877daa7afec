//! Facts about messages that every layer needs: which service a body belongs to, the
//! stream priority it travels at, whether it is safe to replay (0-RTT), and bounded
//! names for metrics and logs.

use crate::{Body, Envelope};
use crate::{
    ads, analytics, auth, chat, control, feed, graph, media, moderation, notifications, payments,
    posts, recommend, search, stories, users,
};

/// A product service: the first level of the envelope's `body` union.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Service {
    Control,
    Auth,
    Users,
    Graph,
    Posts,
    Feed,
    Stories,
    Chat,
    Media,
    Notifications,
    Search,
    Recommend,
    Moderation,
    Admin,
    Payments,
    Ads,
    Analytics,
}

impl Service {
    /// Every service, in schema order.
    pub const ALL: [Service; 17] = [
        Service::Control,
        Service::Auth,
        Service::Users,
        Service::Graph,
        Service::Posts,
        Service::Feed,
        Service::Stories,
        Service::Chat,
        Service::Media,
        Service::Notifications,
        Service::Search,
        Service::Recommend,
        Service::Moderation,
        Service::Admin,
        Service::Payments,
        Service::Ads,
        Service::Analytics,
    ];

    /// The service a body type belongs to; `None` for `NONE` or a tag this build does
    /// not know (a newer peer).
    pub fn of(body: Body) -> Option<Service> {
        Some(match body {
            Body::Control => Service::Control,
            Body::Auth => Service::Auth,
            Body::Users => Service::Users,
            Body::Graph => Service::Graph,
            Body::Posts => Service::Posts,
            Body::Feed => Service::Feed,
            Body::Stories => Service::Stories,
            Body::Chat => Service::Chat,
            Body::Media => Service::Media,
            Body::Notifications => Service::Notifications,
            Body::Search => Service::Search,
            Body::Recommend => Service::Recommend,
            Body::Moderation => Service::Moderation,
            Body::Admin => Service::Admin,
            Body::Payments => Service::Payments,
            Body::Ads => Service::Ads,
            Body::Analytics => Service::Analytics,
            _ => return None,
        })
    }

    /// A stable lower-case name, for metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Control => "control",
            Service::Auth => "auth",
            Service::Users => "users",
            Service::Graph => "graph",
            Service::Posts => "posts",
            Service::Feed => "feed",
            Service::Stories => "stories",
            Service::Chat => "chat",
            Service::Media => "media",
            Service::Notifications => "notifications",
            Service::Search => "search",
            Service::Recommend => "recommend",
            Service::Moderation => "moderation",
            Service::Admin => "admin",
            Service::Payments => "payments",
            Service::Ads => "ads",
            Service::Analytics => "analytics",
        }
    }
}

/// Stream priority classes, highest first: control > chat > notifications >
/// feed/stories (and other interactive requests) > media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Bulk media bytes.
    Media = -1,
    /// Feeds, stories and the other request/response services (QUIC's default, 0, so
    /// that most streams need no priority call at all).
    Content = 0,
    /// Notifications.
    Notifications = 1,
    /// Chat messages and events.
    Chat = 2,
    /// Session control: `Hello`, `Ping`, `GoAway`, errors.
    Control = 3,
}

impl Priority {
    /// The value for `quinn::SendStream::set_priority` (higher is sent first; streams
    /// start at 0).
    pub fn quic_priority(self) -> i32 {
        self as i32
    }
}

/// The priority of a stream that carries `body`.
pub fn priority_of(body: Body) -> Priority {
    match Service::of(body) {
        Some(Service::Control) => Priority::Control,
        Some(Service::Chat) => Priority::Chat,
        Some(Service::Notifications) => Priority::Notifications,
        Some(Service::Media) => Priority::Media,
        _ => Priority::Content,
    }
}

/// Whether a request only reads, so that replaying it (TLS 0-RTT early data, RFC 8446
/// §8, or a retry after a lost response) cannot change state. Everything else must be
/// sent after the handshake completes. Unknown operations are never idempotent.
pub fn is_idempotent(env: &Envelope<'_>) -> bool {
    macro_rules! op_in {
        ($table:expr, $op:ident, [$($variant:ident),* $(,)?]) => {
            $table.is_some_and(|t| matches!(t.op_type(), $($op::$variant)|*))
        };
    }
    match env.body_type() {
        Body::Control => {
            use control::ControlOp;
            op_in!(env.body_as_control(), ControlOp, [Ping])
        }
        Body::Auth => {
            use auth::AuthOp;
            op_in!(env.body_as_auth(), AuthOp, [SessionsListRequest])
        }
        Body::Users => {
            use users::UsersOp;
            op_in!(
                env.body_as_users(),
                UsersOp,
                [GetProfileRequest, GetSettingsRequest, LookupUsersRequest]
            )
        }
        Body::Graph => {
            use graph::GraphOp;
            op_in!(
                env.body_as_graph(),
                GraphOp,
                [
                    FollowRequestsListRequest,
                    FollowersListRequest,
                    FollowingListRequest,
                    BlocksListRequest,
                    MutesListRequest,
                    ListsGetRequest,
                    ListMembersRequest,
                    RelationshipsRequest,
                    CloseFriendsListRequest,
                ]
            )
        }
        Body::Posts => {
            use posts::PostsOp;
            op_in!(
                env.body_as_posts(),
                PostsOp,
                [
                    PostHistoryRequest,
                    GetPostRequest,
                    GetPostsRequest,
                    UserPostsRequest,
                    CommentsListRequest,
                    ReactionsListRequest,
                ]
            )
        }
        Body::Feed => {
            use feed::FeedOp;
            op_in!(env.body_as_feed(), FeedOp, [FeedPageRequest])
        }
        Body::Stories => {
            use stories::StoriesOp;
            op_in!(
                env.body_as_stories(),
                StoriesOp,
                [StoryTrayRequest, UserStoriesRequest, StoryViewersRequest]
            )
        }
        Body::Chat => {
            use chat::ChatOp;
            op_in!(
                env.body_as_chat(),
                ChatOp,
                [
                    GetConversationRequest,
                    ConversationsListRequest,
                    HistoryRequest,
                    SyncRequest
                ]
            )
        }
        Body::Media => {
            use media::MediaOp;
            op_in!(
                env.body_as_media(),
                MediaOp,
                [UploadResumeRequest, GetMediaRequest, DownloadRequest]
            )
        }
        Body::Notifications => {
            use notifications::NotificationsOp;
            op_in!(
                env.body_as_notifications(),
                NotificationsOp,
                [NotificationsListRequest, PreferencesRequest]
            )
        }
        Body::Search => {
            use search::SearchOp;
            op_in!(
                env.body_as_search(),
                SearchOp,
                [SearchRequest, TypeaheadRequest, TrendingRequest]
            )
        }
        Body::Recommend => {
            use recommend::RecommendOp;
            op_in!(
                env.body_as_recommend(),
                RecommendOp,
                [SuggestedUsersRequest]
            )
        }
        Body::Moderation => {
            use moderation::ModerationOp;
            op_in!(env.body_as_moderation(), ModerationOp, [LabelsRequest])
        }
        Body::Payments => {
            use payments::PaymentsOp;
            op_in!(
                env.body_as_payments(),
                PaymentsOp,
                [
                    GetIntentRequest,
                    TransactionsRequest,
                    TiersRequest,
                    WalletRequest
                ]
            )
        }
        Body::Ads => {
            use ads::AdsOp;
            op_in!(
                env.body_as_ads(),
                AdsOp,
                [CampaignsListRequest, CampaignStatsRequest]
            )
        }
        Body::Analytics => {
            use analytics::AnalyticsOp;
            op_in!(env.body_as_analytics(), AnalyticsOp, [InsightsRequest])
        }
        // Admin operations are never replayable; unknown services neither.
        _ => false,
    }
}

/// The operation's bounded name (`"SendMessageRequest"`), for metrics and logs; `None`
/// when the service or the operation is unknown to this build.
pub fn op_name(env: &Envelope<'_>) -> Option<&'static str> {
    match env.body_type() {
        Body::Control => env.body_as_control()?.op_type().variant_name(),
        Body::Auth => env.body_as_auth()?.op_type().variant_name(),
        Body::Users => env.body_as_users()?.op_type().variant_name(),
        Body::Graph => env.body_as_graph()?.op_type().variant_name(),
        Body::Posts => env.body_as_posts()?.op_type().variant_name(),
        Body::Feed => env.body_as_feed()?.op_type().variant_name(),
        Body::Stories => env.body_as_stories()?.op_type().variant_name(),
        Body::Chat => env.body_as_chat()?.op_type().variant_name(),
        Body::Media => env.body_as_media()?.op_type().variant_name(),
        Body::Notifications => env.body_as_notifications()?.op_type().variant_name(),
        Body::Search => env.body_as_search()?.op_type().variant_name(),
        Body::Recommend => env.body_as_recommend()?.op_type().variant_name(),
        Body::Moderation => env.body_as_moderation()?.op_type().variant_name(),
        Body::Admin => env.body_as_admin()?.op_type().variant_name(),
        Body::Payments => env.body_as_payments()?.op_type().variant_name(),
        Body::Ads => env.body_as_ads()?.op_type().variant_name(),
        Body::Analytics => env.body_as_analytics()?.op_type().variant_name(),
        _ => None,
    }
    .filter(|name| *name != "NONE")
}
